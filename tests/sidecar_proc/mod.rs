//! The real sidecar binary as a child process, for the k8s tests (Prometheus
//! scrape, SIGTERM drain): configuration file, readiness wait, kill on drop.
#![allow(dead_code)]
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::common::{admin_get, Pki};

pub const BIN: &str = env!("CARGO_BIN_EXE_portcullis");

/// Kills the child when dropped.
pub struct Proc(pub Child);
impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

pub use portcullis_testkit::ports::free_port;

/// A running sidecar and its addresses.
pub struct Sidecar {
    pub proc: Proc,
    pub inbound: SocketAddr,
    pub admin: SocketAddr,
}

/// Starts `portcullis run` serving `app` with the PKI's server SVID and `policies`.
pub async fn start(pki: &Pki, policies: &Path, app: SocketAddr, extra: &str) -> Sidecar {
    start_with_env(pki, policies, app, extra, &[]).await
}

/// [`start`] with extra environment variables for the sidecar.
pub async fn start_with_env(
    pki: &Pki,
    policies: &Path,
    app: SocketAddr,
    extra: &str,
    env: &[(&str, &str)],
) -> Sidecar {
    let (inbound, admin, outbound) = (free_port(), free_port(), free_port());
    let p = pki.dir.path().join("portcullis.yaml");
    let text = format!(
        "trust_domain: cluster.local\n\
         identity:\n  files:\n    cert: {s}/tls.crt\n    key: {s}/tls.key\n    bundle: {s}/ca.crt\n\
         inbound:\n  listen: 127.0.0.1:{inbound}\n  app: {app}\n\
         admin:\n  listen: 127.0.0.1:{admin}\n\
         outbound:\n  listen: 127.0.0.1:{outbound}\n\
         policy:\n  dir: {policies}\n\
         log:\n  decisions: false\n{extra}",
        s = pki.path("server").display(),
        policies = policies.display(),
    );
    std::fs::write(&p, text).unwrap();
    let child = Command::new(BIN)
        .args(["run", "--config", p.to_str().unwrap()])
        .envs(env.iter().copied())
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    let mut proc = Proc(child);
    let admin: SocketAddr = format!("127.0.0.1:{admin}").parse().unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if tokio::net::TcpStream::connect(admin).await.is_ok()
            && admin_get(admin, "/ready").await.0 == 200
        {
            break;
        }
        assert!(
            proc.0.try_wait().unwrap().is_none(),
            "sidecar exited during start-up"
        );
        assert!(Instant::now() < deadline, "sidecar never became ready");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    Sidecar {
        proc,
        inbound: format!("127.0.0.1:{inbound}").parse().unwrap(),
        admin,
    }
}

pub fn have(tool: &str) -> bool {
    Command::new("sh")
        .arg("-c")
        .arg(format!("command -v {tool}"))
        .stdout(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}
