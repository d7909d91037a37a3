//! Hot reload of the policy directory: under load with good and broken
//! revisions alternating, through a Kubernetes ConfigMap-style `..data` link
//! swap, and by `SIGHUP` to the real binary.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::*;

/// Good revision `n` allows `/v<n>` only (and says so in a header); every other
/// path is denied with a body naming the revision.
fn good(n: u32) -> String {
    format!(
        r#"package envoy.authz

import rego.v1

allow := {{"allowed": true, "headers": {{"x-rev": "{n}"}}}} if {{
	input.parsed_path[0] == "v{n}"
}} else := {{"allowed": false, "http_status": 403, "body": "denied by rev {n}"}}
"#
    )
}

fn broken(n: u32) -> String {
    format!("package envoy.authz\n\nimport rego.v1\n\n# broken {n}\nallow if {{ input.x = = 1\n")
}

/// Replaces `dir/name` atomically (write a hidden temporary, then rename).
fn replace(dir: &Path, name: &str, text: &str) {
    let tmp = dir.join(format!(".{name}.tmp"));
    std::fs::write(&tmp, text).unwrap();
    std::fs::rename(&tmp, dir.join(name)).unwrap();
}

async fn metrics(admin: std::net::SocketAddr) -> String {
    admin_get(admin, "/metrics").await.1
}

async fn wait_for<F: FnMut() -> bool>(what: &str, timeout: Duration, mut f: F) {
    let deadline = Instant::now() + timeout;
    while !f() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

#[derive(Default)]
struct Tally {
    sent: AtomicU64,
    allowed: AtomicU64,
    denied: AtomicU64,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn reload_under_load_switches_exactly_at_good_revisions() {
    let _serial = common::METRICS_SERIAL.lock().await;
    let pki = Pki::new();
    pki.issue("frontend", FRONTEND);
    let dir = policy_dir(&pki, &[("authz.rego", &good(1))]);
    let app = echo_app().await;
    let mut cfg = config(&pki, &dir, app);
    cfg.policy.watch_interval = Duration::from_millis(10);
    let sidecar = start(cfg).await;
    let store = sidecar.policy.clone();
    let addr = sidecar.inbound_addr;
    let client = pki.client("frontend", &[b"http/1.1"]);

    // `confirmed`: the newest revision known to be active; `pending`: the newest
    // one written. Any response must come from a revision in between.
    let confirmed = Arc::new(AtomicU32::new(1));
    let pending = Arc::new(AtomicU32::new(1));
    let stop = Arc::new(AtomicBool::new(false));
    let tally = Arc::new(Tally::default());
    let deadline = Instant::now() + Duration::from_secs(60);

    let mut loaders = Vec::new();
    for worker in 0..4u32 {
        let (client, confirmed, pending, stop, tally) = (
            client.clone(),
            confirmed.clone(),
            pending.clone(),
            stop.clone(),
            tally.clone(),
        );
        loaders.push(tokio::spawn(async move {
            let mut sender = h1(&client, addr).await;
            let mut last_seen = 0u32;
            let mut i = 0u32;
            while !stop.load(Ordering::SeqCst) && Instant::now() < deadline {
                i += 1;
                let low = confirmed.load(Ordering::SeqCst);
                // Mostly the current revision's path, sometimes the previous or next.
                let k = match (i + worker) % 4 {
                    0 => low.saturating_sub(1).max(1),
                    1 => low + 1,
                    _ => low,
                };
                let resp = sender
                    .send_request(req("GET", &format!("/v{k}"), &[], ""))
                    .await
                    .unwrap_or_else(|e| panic!("request {i} to /v{k} failed: {e}"));
                let (parts, body) = split(resp).await;
                let high = pending.load(Ordering::SeqCst);
                tally.sent.fetch_add(1, Ordering::Relaxed);
                let seen = match parts.status().as_u16() {
                    200 => {
                        let echoed: serde_json::Value = serde_json::from_str(&body).unwrap();
                        let rev: u32 = echoed["headers"]["x-rev"]
                            .as_str()
                            .unwrap_or_else(|| panic!("no x-rev: {body}"))
                            .parse()
                            .unwrap();
                        assert_eq!(rev, k, "/v{k} allowed by revision {rev}");
                        tally.allowed.fetch_add(1, Ordering::Relaxed);
                        rev
                    }
                    403 => {
                        let rev: u32 = body
                            .strip_prefix("denied by rev ")
                            .unwrap_or_else(|| panic!("403 not from the policy: {body:?}"))
                            .trim()
                            .parse()
                            .unwrap();
                        assert_ne!(rev, k, "/v{k} denied by its own revision");
                        tally.denied.fetch_add(1, Ordering::Relaxed);
                        rev
                    }
                    s => panic!("request {i} to /v{k}: unexpected status {s}: {body}"),
                };
                assert!(
                    low <= seen && seen <= high,
                    "/v{k} decided by revision {seen}, active revisions were {low}..={high}"
                );
                assert!(
                    seen >= last_seen,
                    "revision went back from {last_seen} to {seen}"
                );
                last_seen = seen;
            }
        }));
    }

    let errors_before = metric(
        &metrics(sidecar.admin_addr).await,
        "portcullis_policy_reloads_total",
        &[("result", "error")],
    );
    let mut revision = store.revision();
    for step in 0..100u32 {
        let n = step / 2 + 2; // good revisions 2..=51, a broken one after each
        let by_watcher = (step / 2) % 2 == 0;
        if step % 2 == 0 {
            pending.store(n, Ordering::SeqCst);
            replace(&dir, "authz.rego", &good(n));
            if !by_watcher {
                let s = store.clone();
                tokio::task::spawn_blocking(move || s.reload())
                    .await
                    .unwrap()
                    .unwrap_or_else(|e| panic!("good revision {n} rejected: {e}"));
            }
            let old = revision.clone();
            wait_for(&format!("revision {n}"), Duration::from_secs(10), || {
                store.revision() != old
            })
            .await;
            revision = store.revision();
            confirmed.store(n, Ordering::SeqCst);
        } else {
            let admin = sidecar.admin_addr;
            let errors_now = metric(
                &metrics(admin).await,
                "portcullis_policy_reloads_total",
                &[("result", "error")],
            );
            replace(&dir, "authz.rego", &broken(n));
            if by_watcher {
                // The watcher tries it, fails, and keeps the last good revision.
                let deadline = Instant::now() + Duration::from_secs(10);
                loop {
                    let errors = metric(
                        &metrics(admin).await,
                        "portcullis_policy_reloads_total",
                        &[("result", "error")],
                    );
                    if errors > errors_now {
                        break;
                    }
                    assert!(Instant::now() < deadline, "broken revision never attempted");
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
            } else {
                let s = store.clone();
                let err = tokio::task::spawn_blocking(move || s.reload())
                    .await
                    .unwrap()
                    .err()
                    .unwrap_or_else(|| panic!("broken revision {n} accepted"));
                assert!(err.to_string().contains("authz.rego:6:"), "{err}");
            }
            assert_eq!(
                store.revision(),
                revision,
                "broken revision replaced a good one"
            );
        }
        // Let some traffic through on every revision.
        tokio::time::sleep(Duration::from_millis(3)).await;
    }
    tokio::time::sleep(Duration::from_millis(50)).await;
    stop.store(true, Ordering::SeqCst);
    for l in loaders {
        l.await.unwrap();
    }

    let sent = tally.sent.load(Ordering::Relaxed);
    let allowed = tally.allowed.load(Ordering::Relaxed);
    let denied = tally.denied.load(Ordering::Relaxed);
    eprintln!("{sent} requests: {allowed} allowed, {denied} denied");
    assert!(sent >= 200, "too little load: {sent}");
    assert!(allowed > 0 && denied > 0);

    // The final state: revision 51, whose revision label is exported.
    let (r, _) = call(&client, addr, req("GET", "/v51", &[], "")).await;
    assert_eq!(r.status(), 200);
    let text = metrics(sidecar.admin_addr).await;
    assert_eq!(
        metric(
            &text,
            "portcullis_policy_revision_info",
            &[("revision", &store.revision())]
        ),
        1.0
    );
    assert!(
        metric(
            &text,
            "portcullis_policy_reloads_total",
            &[("result", "error")]
        ) >= errors_before + 50.0
    );
}

#[tokio::test]
async fn configmap_symlink_swap_is_detected() {
    let _serial = common::METRICS_SERIAL.lock().await;
    let pki = Pki::new();
    pki.issue("frontend", FRONTEND);
    let dir = pki.path("configmap");
    let policy = |path: &str| {
        format!(
            "package envoy.authz\nimport rego.v1\ndefault allow := false\nallow if {{\n  input.parsed_path[0] == \"{path}\"\n  input.attributes.source.principal in data.callers\n}}\n"
        )
    };
    let version = |name: &str, path: &str| {
        let d = dir.join(name);
        std::fs::create_dir_all(&d).unwrap();
        std::fs::write(d.join("authz.rego"), policy(path)).unwrap();
        std::fs::write(d.join("data.yaml"), format!("callers: [\"{FRONTEND}\"]\n")).unwrap();
    };
    // The layout the kubelet writes: visible names link through `..data`.
    version("..2026_01_01", "a");
    std::os::unix::fs::symlink("..2026_01_01", dir.join("..data")).unwrap();
    std::os::unix::fs::symlink("..data/authz.rego", dir.join("authz.rego")).unwrap();
    std::os::unix::fs::symlink("..data/data.yaml", dir.join("data.yaml")).unwrap();

    let app = echo_app().await;
    let mut cfg = config(&pki, &dir, app);
    cfg.policy.watch_interval = Duration::from_millis(20);
    let sidecar = start(cfg).await;
    let c = pki.client("frontend", &[b"http/1.1"]);
    let addr = sidecar.inbound_addr;
    // Both linked files were loaded (the data too: the rule needs it).
    assert_eq!(
        call(&c, addr, req("GET", "/a", &[], "")).await.0.status(),
        200
    );
    assert_eq!(
        call(&c, addr, req("GET", "/b", &[], "")).await.0.status(),
        403
    );
    let first = sidecar.policy.revision();

    // An update: a new timestamped directory, then `..data` swapped atomically.
    version("..2026_01_02", "b");
    std::os::unix::fs::symlink("..2026_01_02", dir.join("..data_tmp")).unwrap();
    std::fs::rename(dir.join("..data_tmp"), dir.join("..data")).unwrap();
    std::fs::remove_dir_all(dir.join("..2026_01_01")).unwrap();

    let store = sidecar.policy.clone();
    wait_for("the swapped revision", Duration::from_secs(10), || {
        store.revision() != first
    })
    .await;
    assert_eq!(
        call(&c, addr, req("GET", "/b", &[], "")).await.0.status(),
        200
    );
    assert_eq!(
        call(&c, addr, req("GET", "/a", &[], "")).await.0.status(),
        403
    );

    // A data-only change is a change too.
    let second = store.revision();
    std::fs::write(dir.join("..2026_01_02/data.yaml"), "callers: []\n").unwrap();
    wait_for("the data change", Duration::from_secs(10), || {
        store.revision() != second
    })
    .await;
    assert_eq!(
        call(&c, addr, req("GET", "/b", &[], "")).await.0.status(),
        403
    );
}

use portcullis_testkit::ports::free_port;

/// `SIGHUP` to the real binary reloads the directory even when the watcher
/// would not look for an hour.
#[test]
fn sighup_reloads_policy() {
    use std::io::{Read, Write};
    let pki = Pki::new();
    let policies = pki.path("policies");
    std::fs::create_dir_all(&policies).unwrap();
    std::fs::write(policies.join("authz.rego"), good(1)).unwrap();
    let admin = free_port();
    let config = format!(
        "identity:\n  files: {{cert: {s}/tls.crt, key: {s}/tls.key, bundle: {s}/ca.crt}}\ninbound: {{listen: 127.0.0.1:{i}, app: 127.0.0.1:{a}}}\noutbound: {{listen: 127.0.0.1:{o}}}\nadmin: {{listen: 127.0.0.1:{admin}}}\npolicy: {{dir: {p}, watch_interval: 1h}}\nlog: {{decisions: false, level: warn}}\n",
        s = pki.path("server").display(),
        i = free_port(),
        a = free_port(),
        o = free_port(),
        p = policies.display(),
    );
    let config_path = pki.path("config.yaml");
    std::fs::write(&config_path, config).unwrap();
    let child = std::process::Command::new(env!("CARGO_BIN_EXE_portcullis"))
        .args(["run", "--config"])
        .arg(&config_path)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    struct Kill(std::process::Child);
    impl Drop for Kill {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
    let child = Kill(child);
    let reloads = || -> Option<f64> {
        let mut s = std::net::TcpStream::connect(("127.0.0.1", admin)).ok()?;
        s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
        s.write_all(b"GET /metrics HTTP/1.1\r\nhost: admin\r\nconnection: close\r\n\r\n")
            .ok()?;
        let mut text = String::new();
        s.read_to_string(&mut text).ok()?;
        Some(metric(
            &text,
            "portcullis_policy_reloads_total",
            &[("result", "success")],
        ))
    };
    let deadline = Instant::now() + Duration::from_secs(20);
    let before = loop {
        if let Some(n) = reloads() {
            break n;
        }
        assert!(Instant::now() < deadline, "sidecar never answered");
        std::thread::sleep(Duration::from_millis(50));
    };
    std::fs::write(policies.join("authz.rego"), good(2)).unwrap();
    let pid = i32::try_from(child.0.id()).unwrap();
    // SAFETY: sending a signal to our own child process.
    assert_eq!(unsafe { libc::kill(pid, libc::SIGHUP) }, 0);
    let deadline = Instant::now() + Duration::from_secs(10);
    while reloads() != Some(before + 1.0) {
        assert!(Instant::now() < deadline, "SIGHUP did not reload");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Modules OPA refuses, or that call an OPA builtin portcullis lacks, are refused
/// at reload with `file:line:col` and why; the last good revision keeps deciding.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_modules_never_load() {
    let pki = Pki::new();
    pki.issue("frontend", FRONTEND);
    let dir = policy_dir(&pki, &[("authz.rego", &good(1))]);
    let app = echo_app().await;
    let mut cfg = config(&pki, &dir, app);
    cfg.policy.watch_interval = Duration::from_secs(3600);
    let sidecar = start(cfg).await;
    let client = pki.client("frontend", &[b"http/1.1"]);
    let before = sidecar.policy.revision();
    let head = "package envoy.authz\n\nimport rego.v1\n\n";
    for (rule, at, why) in [
        (
            "allow if { input.parsed_path[0] == y }",
            "authz.rego:5:36",
            "var `y` is unsafe",
        ),
        (
            "allow if { every k, v in input.parsed_path { v != \"\" } }",
            "authz.rego:5:18",
            "declared var `k` unused",
        ),
        (
            "allow if { crypto.x509.parse_certificate_request(input.x) }",
            "authz.rego:5:12",
            "OPA builtin `crypto.x509.parse_certificate_request`",
        ),
        (
            "allow if { startswith(input.parsed_path[0], \"v\", \"x\", \"y\") }",
            "authz.rego:5:12",
            "`startswith` takes 2 argument(s)",
        ),
    ] {
        replace(&dir, "authz.rego", &format!("{head}{rule}\n"));
        let store = sidecar.policy.clone();
        let err = tokio::task::spawn_blocking(move || store.reload())
            .await
            .unwrap()
            .unwrap_err()
            .to_string();
        assert!(err.contains(at) && err.contains(why), "{rule}: {err}");
        assert_eq!(sidecar.policy.revision(), before, "{rule}");
        let (r, _) = call(&client, sidecar.inbound_addr, req("GET", "/v1", &[], "")).await;
        assert_eq!(r.status(), 200, "{rule}");
        let (r, _) = call(&client, sidecar.inbound_addr, req("GET", "/v2", &[], "")).await;
        assert_eq!(r.status(), 403, "{rule}");
    }
    sidecar.shutdown();
    sidecar.wait().await;
}
