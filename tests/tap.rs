//! `portcullis tap` and the admin `/tap` stream: the real `tap` command filters a
//! running sidecar's decisions; a stalled subscriber never holds requests up (its
//! missed events are counted); the endpoint refuses a caller that is not on
//! loopback (from a network namespace the test creates).

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::io::BufRead;
use std::net::SocketAddr;
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use common::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const POLICY: &str = "package envoy.authz\n\nimport rego.v1\n\ndefault allow := false\n\nallow if input.attributes.request.http.method == \"GET\"\n";

async fn sidecar(admin: &str) -> (Pki, portcullis::run::Running) {
    sidecar_allowing(admin, &[]).await
}

async fn sidecar_allowing(admin: &str, allowed: &[&str]) -> (Pki, portcullis::run::Running) {
    let pki = Pki::new();
    pki.issue("frontend", FRONTEND);
    let policies = policy_dir(&pki, &[("authz.rego", POLICY)]);
    let app = echo_app().await;
    let mut cfg = config(&pki, &policies, app);
    cfg.log.decisions = false;
    cfg.admin.listen = admin.parse().unwrap();
    cfg.admin.tap.allowed_principals = allowed.iter().map(|s| s.to_string()).collect();
    let running = start(cfg).await;
    (pki, running)
}

/// The child's standard output, line by line, as it comes.
fn stdout_lines(child: &mut Child) -> mpsc::Receiver<String> {
    let (tx, rx) = mpsc::channel::<String>();
    let out = child.0.stdout.take().unwrap();
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(out).lines() {
            let Ok(line) = line else { break };
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    rx
}

/// Kills the child on drop.
struct Child(std::process::Child);

impl Drop for Child {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[tokio::test]
async fn the_tap_command_prints_only_matching_decisions() {
    let (pki, s) = sidecar("127.0.0.1:0").await;
    let mut child = Child(
        Command::new(env!("CARGO_BIN_EXE_portcullis"))
            .args(["tap", "--admin", &s.admin_addr.to_string()])
            .args([
                "--direction",
                "in",
                "--decision",
                "deny",
                "--path-prefix",
                "/api",
            ])
            .args(["--principal", FRONTEND])
            .stdout(Stdio::piped())
            .spawn()
            .unwrap(),
    );
    let rx = stdout_lines(&mut child);
    let c = pki.client("frontend", &[b"http/1.1"]);
    let addr = s.inbound_addr;
    // Until the tap is connected, a marker deny is sent again.
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let (r, _) = call(&c, addr, req("POST", "/api/start", &[], "")).await;
        assert_eq!(r.status(), 403);
        if let Ok(line) = rx.recv_timeout(Duration::from_millis(100)) {
            assert!(line.contains("/api/start"), "{line}");
            break;
        }
        assert!(Instant::now() < deadline, "tap printed nothing");
    }
    while rx.try_recv().is_ok() {}
    for (method, path, status) in [
        ("GET", "/api/allowed", 200),
        ("POST", "/other", 403),
        ("POST", "/api/wanted", 403),
        ("POST", "/api/end", 403),
    ] {
        let (r, _) = call(&c, addr, req(method, path, &[], "")).await;
        assert_eq!(r.status(), status);
    }
    let mut seen = Vec::new();
    while let Ok(line) = rx.recv_timeout(Duration::from_secs(20)) {
        let end = line.contains("/api/end");
        seen.push(line);
        if end {
            break;
        }
    }
    // Stray start markers may still arrive first; nothing else may.
    let seen: Vec<&String> = seen.iter().filter(|l| !l.contains("/api/start")).collect();
    assert_eq!(seen.len(), 2, "{seen:?}");
    let wanted = seen[0];
    assert!(wanted.contains(" inbound "), "{wanted}");
    assert!(wanted.contains(FRONTEND), "{wanted}");
    assert!(wanted.contains("POST /api/wanted deny 403"), "{wanted}");
    assert!(seen[1].contains("/api/end"));
}

async fn admin_metrics(admin: SocketAddr) -> String {
    admin_get(admin, "/metrics").await.1
}

#[tokio::test]
async fn a_stalled_reader_loses_events_and_requests_go_on() {
    let (pki, s) = sidecar("127.0.0.1:0").await;
    let admin = s.admin_addr;
    // A subscriber with a tiny receive window that never reads.
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(2048).unwrap();
    let mut stalled = socket.connect(admin).await.unwrap();
    stalled
        .write_all(b"GET /tap HTTP/1.1\r\nhost: admin\r\n\r\n")
        .await
        .unwrap();
    let c = pki.client("frontend", &[b"http/1.1"]);
    let published = |t: &str| metric(t, "portcullis_tap_events_total", &[]);
    // Wait until the subscription is in place (events are published only then).
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let before = published(&admin_metrics(admin).await);
        let (r, _) = call(&c, s.inbound_addr, req("GET", "/warm", &[], "")).await;
        assert_eq!(r.status(), 200);
        if published(&admin_metrics(admin).await) > before {
            break;
        }
        assert!(Instant::now() < deadline, "tap never subscribed");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let dropped_before = metric(
        &admin_metrics(admin).await,
        "portcullis_tap_dropped_total",
        &[],
    );
    // Far more events than the ring and the socket buffers hold; every request is
    // answered while the subscriber reads nothing.
    let mut sender = h1(&c, s.inbound_addr).await;
    for i in 0..2000 {
        let path = format!("/load/{i}/{}", "x".repeat(4000));
        let resp = sender
            .send_request(req("GET", &path, &[], ""))
            .await
            .unwrap();
        let (r, _) = split(resp).await;
        assert_eq!(r.status(), 200, "request {i}");
    }
    // Once the subscriber reads again, the events it missed are counted.
    let reader = tokio::spawn(async move {
        let mut buf = vec![0u8; 64 * 1024];
        while let Ok(n) = stalled.read(&mut buf).await {
            if n == 0 {
                break;
            }
        }
    });
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let dropped = metric(
            &admin_metrics(admin).await,
            "portcullis_tap_dropped_total",
            &[],
        );
        if dropped > dropped_before {
            break;
        }
        assert!(Instant::now() < deadline, "no dropped events counted");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    reader.abort();
}

/// A network namespace joined to the host by a veth pair; removed on drop.
struct Netns {
    name: String,
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .status();
    }
}

fn sh(args: &[&str]) -> bool {
    Command::new(args[0])
        .args(&args[1..])
        .status()
        .is_ok_and(|s| s.success())
}

#[tokio::test]
async fn tap_from_another_address_needs_mtls_and_an_allowed_principal() {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 || !sh(&["sh", "-c", "command -v ip && command -v curl"]) {
        println!("SKIP: needs root, ip and curl for a network namespace");
        return;
    }
    let id = std::process::id() % 10000;
    let ns = Netns {
        name: format!("pcxtap{id}"),
    };
    let (host_if, ns_if) = (format!("pcxth{id}"), format!("pcxtn{id}"));
    let octet = 1 + id % 250;
    let host_ip = format!("10.253.{octet}.1");
    let ns_ip = format!("10.253.{octet}.2");
    assert!(sh(&["ip", "netns", "add", &ns.name]));
    assert!(sh(&[
        "ip", "link", "add", &host_if, "type", "veth", "peer", "name", &ns_if, "netns", &ns.name
    ]));
    assert!(sh(&[
        "ip",
        "addr",
        "add",
        &format!("{host_ip}/30"),
        "dev",
        &host_if
    ]));
    assert!(sh(&["ip", "link", "set", &host_if, "up"]));
    let in_ns = |args: &[&str]| {
        let mut v = vec!["ip", "netns", "exec", &ns.name];
        v.extend_from_slice(args);
        sh(&v)
    };
    assert!(in_ns(&[
        "ip",
        "addr",
        "add",
        &format!("{ns_ip}/30"),
        "dev",
        &ns_if
    ]));
    assert!(in_ns(&["ip", "link", "set", &ns_if, "up"]));
    assert!(in_ns(&["ip", "link", "set", "lo", "up"]));

    let (pki, s) = sidecar_allowing(&format!("{host_ip}:0"), &[FRONTEND]).await;
    pki.issue(
        "reporting",
        "spiffe://cluster.local/ns/default/sa/reporting",
    );
    let port = s.admin_addr.port();
    let metrics = curl_from(&ns.name, &host_ip, port, "/metrics").await;
    assert!(
        metrics.ends_with("\n200"),
        "the pod network reaches the admin port: {metrics}"
    );
    let tap = curl_from(&ns.name, &host_ip, port, "/tap").await;
    assert_eq!(tap, "only from localhost\n\n403");

    // Over mTLS, an allowed SPIFFE ID may tap from the pod network; another may not.
    let tap_as = |name: &str| {
        let dir = pki.path(name);
        let mut cmd = Command::new("ip");
        cmd.args([
            "netns",
            "exec",
            &ns.name,
            env!("CARGO_BIN_EXE_portcullis"),
            "tap",
        ])
        .args(["--admin", &format!("{host_ip}:{port}")])
        // Other tests of this process publish too.
        .args(["--path-prefix", "/over-mtls"])
        .arg("--cert")
        .arg(dir.join("tls.crt"))
        .arg("--key")
        .arg(dir.join("tls.key"))
        .arg("--bundle")
        .arg(dir.join("ca.crt"))
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
        cmd
    };
    let refused = tokio::task::spawn_blocking({
        let mut cmd = tap_as("reporting");
        move || cmd.output().unwrap()
    })
    .await
    .unwrap();
    assert!(!refused.status.success());
    assert!(
        String::from_utf8_lossy(&refused.stderr).contains("403"),
        "{}",
        String::from_utf8_lossy(&refused.stderr)
    );

    let mut child = Child(tap_as("frontend").spawn().unwrap());
    let rx = stdout_lines(&mut child);
    let c = pki.client("frontend", &[b"http/1.1"]);
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let (r, _) = call(&c, s.inbound_addr, req("GET", "/over-mtls", &[], "")).await;
        assert_eq!(r.status(), 200);
        if let Ok(line) = rx.recv_timeout(Duration::from_millis(100)) {
            assert!(line.contains("GET /over-mtls allow 200"), "{line}");
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the allowed principal saw nothing"
        );
    }
}

/// `curl` from inside the namespace; returns the body and the status code.
async fn curl_from(ns: &str, host: &str, port: u16, path: &str) -> String {
    let (ns, url) = (ns.to_owned(), format!("http://{host}:{port}{path}"));
    tokio::task::spawn_blocking(move || {
        let out = Command::new("ip")
            .args(["netns", "exec", &ns, "curl", "-s", "-m", "10"])
            .args(["-w", "\n%{http_code}"])
            .arg(url)
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).into_owned()
    })
    .await
    .unwrap()
}

#[tokio::test]
async fn with_log_explain_a_tapped_deny_shows_the_failed_expression() {
    let pki = Pki::new();
    pki.issue("frontend", FRONTEND);
    let policies = policy_dir(&pki, &[("authz.rego", POLICY)]);
    let app = echo_app().await;
    let mut cfg = config(&pki, &policies, app);
    cfg.log.decisions = true;
    cfg.log.decision_file = Some(pki.path("decisions.log"));
    cfg.log.explain = portcullis::config::ExplainLogging::Denies;
    let s = start(cfg).await;
    let mut child = Child(
        Command::new(env!("CARGO_BIN_EXE_portcullis"))
            .args(["tap", "--admin", &s.admin_addr.to_string()])
            .args(["--path-prefix", "/explained"])
            .stdout(Stdio::piped())
            .spawn()
            .unwrap(),
    );
    let rx = stdout_lines(&mut child);
    let c = pki.client("frontend", &[b"http/1.1"]);
    let deadline = Instant::now() + Duration::from_secs(20);
    let first = loop {
        let (r, _) = call(&c, s.inbound_addr, req("POST", "/explained", &[], "")).await;
        assert_eq!(r.status(), 403);
        if let Ok(line) = rx.recv_timeout(Duration::from_millis(200)) {
            break line;
        }
        assert!(Instant::now() < deadline, "tap printed nothing");
    };
    assert!(first.contains("POST /explained deny 403"), "{first}");
    let detail = rx.recv_timeout(Duration::from_secs(10)).unwrap();
    assert!(
        detail
            .trim_start()
            .ends_with("authz.rego:7: \"POST\" != \"GET\""),
        "{detail}"
    );
}
