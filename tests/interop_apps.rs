//! Large bodies through the sidecar to and from real apps, as a user checks them: the
//! SHA-256 of a 50 MB download and of a 10 MB upload (curl over mTLS, HTTP/1.1 and
//! HTTP/2, against nginx, Python's http.server and Node's `http`), and the real
//! sidecar binary's peak RSS during such transfers, which must not grow with the body.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;
mod interop;
mod sidecar_proc;

use std::path::Path;

use common::*;
use interop::*;

const DOWN: usize = 50_000_000;
const UP: usize = 10_000_000;

/// A 10 MB upload file (random bytes) and its SHA-256.
fn upload_file(pki: &Pki) -> (std::path::PathBuf, String) {
    let mut bytes = vec![0u8; UP];
    aws_lc_rs::rand::fill(&mut bytes).unwrap();
    let path = pki.path("upload.bin");
    std::fs::write(&path, &bytes).unwrap();
    (path.clone(), sha256_file(&path))
}

/// Downloads `path` (DOWN bytes of the pattern) through the sidecar and checks its hash.
async fn download(
    pki: &Pki,
    sidecar: std::net::SocketAddr,
    flag: &str,
    path: &str,
) -> Result<(), String> {
    let out = pki.path("download.bin");
    let mut args = vec![flag.to_owned()];
    args.extend(curl_mtls(pki, sidecar, path));
    let got = curl(&args, &out, false).await?;
    let sha = sha256_file(&out);
    let _ = std::fs::remove_file(&out);
    if got.status != 200 {
        return Err(format!("download: {}", got.status));
    }
    if sha != pattern_sha256(DOWN) {
        return Err(format!("download: sha256 {sha} differs"));
    }
    Ok(())
}

/// Uploads the file through the sidecar; the app answers the SHA-256 it received.
async fn upload(
    pki: &Pki,
    sidecar: std::net::SocketAddr,
    flag: &str,
    file: &Path,
    sha: &str,
) -> Result<(), String> {
    let mut args = vec![
        flag.to_owned(),
        "-H".into(),
        "content-type: application/octet-stream".into(),
        "--data-binary".into(),
        format!("@{}", file.display()),
    ];
    args.extend(curl_mtls(pki, sidecar, "/upload"));
    let got = curl(&args, &pki.path("upload-answer.json"), true).await?;
    let answer: serde_json::Value = serde_json::from_slice(&got.body).unwrap_or_default();
    if got.status != 200 || answer["sha256"] != sha || answer["bytes"] != UP {
        return Err(format!(
            "upload: {} {}",
            got.status,
            String::from_utf8_lossy(&got.body)
        ));
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fifty_mb_down_and_ten_mb_up_keep_their_bytes() {
    let test = "fifty_mb_down_and_ten_mb_up_keep_their_bytes";
    let (Some(py), Some(_)) = (or_skip(test, python_with(&[])), or_skip(test, tool("curl"))) else {
        return;
    };
    let pki = pki();
    let (file, sha) = upload_file(&pki);
    let mut apps = Vec::new();
    if optional("nginx") {
        let big: Vec<u8> = (0..DOWN).map(|i| (i % 251) as u8).collect();
        apps.push(nginx_app(pki.dir.path(), &[("big.bin", &big)]).await);
    }
    apps.push(python_app(&py, "http", pki.dir.path()).await);
    if optional("node") {
        apps.push(node_app(pki.dir.path()).await);
    }
    let mut cells = Cells::default();
    for app in &apps {
        let s = sidecar(&pki, app.addr).await;
        for (row, flag) in [(CLIENTS[8], "--http1.1"), (CLIENTS[9], "--http2")] {
            let outcome = if app.name == "nginx" {
                // Static files only: nginx has no upload handler without extra modules.
                download(&pki, s.inbound_addr, flag, "/big.bin")
                    .await
                    .map(|()| "50 MB down: sha256 matches (no upload handler)".to_owned())
            } else {
                let path = format!("/bytes?n={DOWN}");
                match download(&pki, s.inbound_addr, flag, &path).await {
                    Ok(()) => upload(&pki, s.inbound_addr, flag, &file, &sha)
                        .await
                        .map(|()| "50 MB down, 10 MB up: sha256 matches".to_owned()),
                    Err(e) => Err(e),
                }
            };
            let outcome = outcome.map_err(|e| format!("{e}; app log: {}", app.log_tail()));
            cells.record(row, app.name, outcome);
        }
        s.shutdown();
    }
    cells.finish();
}

/// Peak resident memory (VmHWM) of a process, in bytes.
fn peak_rss(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let kb: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap();
    kb * 1024
}

/// The real binary, per HTTP version (1.1, then 2): warmed up with a 1 MB download,
/// then 50 MB down and 10 MB up. A proxy that buffered bodies would grow by the
/// body size; the sidecar streams, so its peak grows by far less than that.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sidecar_peak_rss_stays_bounded_during_large_transfers() {
    let test = "sidecar_peak_rss_stays_bounded_during_large_transfers";
    let (Some(py), Some(_)) = (or_skip(test, python_with(&[])), or_skip(test, tool("curl"))) else {
        return;
    };
    let pki = pki();
    let (file, sha) = upload_file(&pki);
    let app = python_app(&py, "http", pki.dir.path()).await;
    let s = sidecar_proc::start(&pki, &policies(&pki), app.addr, "").await;
    let pid = s.proc.0.id();
    // One phase per HTTP version, so that each is judged on its own.
    for flag in ["--http1.1", "--http2"] {
        // Warm up first: TLS, pools and the HTTP version's buffers are not body-sized.
        let mut args = vec![flag.to_owned()];
        args.extend(curl_mtls(&pki, s.inbound, "/bytes?n=1000000"));
        let warm = curl(&args, &pki.path("warm.bin"), false).await.unwrap();
        assert_eq!(warm.status, 200, "{flag} warm-up");
        let before = peak_rss(pid);
        let path = format!("/bytes?n={DOWN}");
        download(&pki, s.inbound, flag, &path).await.unwrap();
        upload(&pki, s.inbound, flag, &file, &sha).await.unwrap();
        let after = peak_rss(pid);
        let growth = after.saturating_sub(before);
        println!(
            "sidecar VmHWM {flag}: {} KiB before, {} KiB after 50 MB down + 10 MB up: +{} KiB",
            before / 1024,
            after / 1024,
            growth / 1024
        );
        assert!(
            growth < (DOWN / 5) as u64,
            "{flag}: peak RSS grew by {growth} bytes for a {DOWN}-byte body: bodies are buffered"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn through_tcp_tunnels_to_python_keeps_its_bytes() {
    // curl → sidecar A's `tcp` route → a tunnel on A's pooled mTLS connection → B →
    // Python's http.server: 50 MB down and 10 MB up (more than 150 stream windows
    // each way), then twenty more connections, all on the one pooled connection.
    let test = "through_tcp_tunnels_to_python_keeps_its_bytes";
    let (Some(py), Some(_)) = (or_skip(test, python_with(&[])), or_skip(test, tool("curl"))) else {
        return;
    };
    let _serial = METRICS_SERIAL.lock().await;
    let pki = pki();
    let (file, sha) = upload_file(&pki);
    let app = python_app(&py, "http", pki.dir.path()).await;
    let (_mesh_pki, a, _b) = common::mesh::mesh(
        app.addr,
        vec![(portcullis::config::RouteProtocol::Tcp, SERVER_ID)],
    )
    .await;
    let handshakes = || {
        metric(
            &portcullis::metrics::global().render(),
            "portcullis_tls_handshakes_total",
            &[("direction", "outbound")],
        )
    };
    let url = |path: &str| format!("http://127.0.0.1:{}{path}", a.route_addrs[0].port());
    let out = pki.path("tunnel-down.bin");
    let got = curl(&[url(&format!("/bytes?n={DOWN}"))], &out, false).await;
    let down = sha256_file(&out);
    assert_eq!(got.map(|c| c.status), Ok(200), "{}", app.log_tail());
    assert_eq!(down, pattern_sha256(DOWN));
    let before = handshakes();
    let args = [
        "-H".to_owned(),
        "content-type: application/octet-stream".into(),
        "--data-binary".into(),
        format!("@{}", file.display()),
        url("/upload"),
    ];
    let got = curl(&args, &pki.path("tunnel-up.json"), true)
        .await
        .unwrap();
    let answer: serde_json::Value = serde_json::from_slice(&got.body).unwrap_or_default();
    assert_eq!(
        (got.status, &answer["sha256"]),
        (200, &serde_json::json!(sha))
    );
    for _ in 0..20 {
        let got = curl(&[url("/hello")], &pki.path("tunnel-hello"), true)
            .await
            .unwrap();
        assert_eq!(
            (got.status, String::from_utf8_lossy(&got.body).as_ref()),
            (200, app.hello)
        );
    }
    assert_eq!(handshakes() - before, 0.0, "every connection rode a tunnel");
}
