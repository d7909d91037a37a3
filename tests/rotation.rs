//! Certificate rotation on a running sidecar: new handshakes present the new serial,
//! a connection opened before keeps working, and a mismatched key is refused while the
//! last good pair stays in use; rotation every second under load loses no request.
//! Also the development CA's renewal at half-life.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::*;
use portcullis::config::{DevCaIdentity, FilesIdentity, IdentityConfig};
use portcullis::identity::{leaf_info, SpiffeId};

const ALLOW_ALL: &str = "package envoy.authz\nimport rego.v1\ndefault allow := true\n";

/// The PKI's server identity as files, polled every `poll`.
fn server_files(pki: &Pki, poll: Duration) -> IdentityConfig {
    IdentityConfig::Files(FilesIdentity {
        cert: pki.path("server/tls.crt"),
        key: pki.path("server/tls.key"),
        bundle: pki.path("server/ca.crt"),
        poll_interval: poll,
        ..FilesIdentity::default()
    })
}

/// Opens an mTLS connection; returns the server's certificate serial and an HTTP sender.
async fn connect(
    cfg: &Arc<rustls::ClientConfig>,
    addr: SocketAddr,
) -> (
    Vec<u8>,
    hyper::client::conn::http1::SendRequest<http_body_util::Full<bytes::Bytes>>,
) {
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let tls = tokio_rustls::TlsConnector::from(cfg.clone())
        .connect(
            rustls_pki_types::ServerName::try_from("backend").unwrap(),
            tcp,
        )
        .await
        .unwrap();
    let leaf = tls.get_ref().1.peer_certificates().unwrap()[0].clone();
    let serial = leaf_info(&leaf).unwrap().serial;
    let (sender, conn) = hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(tls))
        .await
        .unwrap();
    tokio::spawn(conn);
    (serial, sender)
}

async fn serial_of_new_connection(cfg: &Arc<rustls::ClientConfig>, addr: SocketAddr) -> Vec<u8> {
    connect(cfg, addr).await.0
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn file_rotation_keeps_old_connections_and_refuses_mismatched_keys() {
    let pki = Pki::new();
    pki.issue("frontend", FRONTEND);
    let policies = policy_dir(&pki, &[("authz.rego", ALLOW_ALL)]);
    let app = echo_app().await;
    let mut cfg = config(&pki, &policies, app);
    cfg.identity = server_files(&pki, Duration::from_millis(100));
    let sidecar = start(cfg).await;
    let addr = sidecar.inbound_addr;
    let client = pki.client("frontend", &[b"http/1.1"]);

    let (serial1, mut old) = connect(&client, addr).await;
    let resp = old
        .send_request(req("GET", "/before", &[], ""))
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    drop(split(resp).await);

    // Rotate: a new pair written over the old files.
    pki.issue("server", SERVER_ID);
    let deadline = Instant::now() + Duration::from_secs(10);
    let serial2 = loop {
        let s = serial_of_new_connection(&client, addr).await;
        if s != serial1 {
            break s;
        }
        assert!(
            Instant::now() < deadline,
            "new handshakes never presented the new certificate"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    // The connection opened before the rotation still works.
    let resp = old
        .send_request(req("GET", "/after", &[], ""))
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    drop(split(resp).await);

    // A key that does not match the certificate: refused, the last good pair stays.
    let errors = |t: &str| {
        metric(
            t,
            "portcullis_identity_reloads_total",
            &[("result", "error")],
        )
    };
    let before = errors(&admin_get(sidecar.admin_addr, "/metrics").await.1);
    let stranger = pki
        .ca
        .issue(
            &SpiffeId::parse(SERVER_ID).unwrap(),
            Duration::from_secs(3600),
        )
        .unwrap();
    let tmp = pki.path("server/.tls.key.tmp");
    std::fs::write(&tmp, stranger.key_pem.as_bytes()).unwrap();
    std::fs::rename(&tmp, pki.path("server/tls.key")).unwrap();
    tokio::time::sleep(Duration::from_millis(600)).await;
    let after = errors(&admin_get(sidecar.admin_addr, "/metrics").await.1);
    assert!(
        after > before,
        "the mismatched pair was not refused ({before} → {after})"
    );
    for _ in 0..3 {
        assert_eq!(serial_of_new_connection(&client, addr).await, serial2);
    }
    let (status, _) = admin_get(sidecar.admin_addr, "/ready").await;
    assert_eq!(status, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dev_ca_identity_renews_at_half_life() {
    let pki = Pki::new();
    pki.issue("frontend", FRONTEND);
    let policies = policy_dir(&pki, &[("authz.rego", ALLOW_ALL)]);
    let app = echo_app().await;
    let mut cfg = config(&pki, &policies, app);
    // The sidecar's own CA directory holds the same CA the client trusts.
    cfg.identity = IdentityConfig::DevCa(DevCaIdentity {
        dir: pki.path("ca"),
        spiffe_id: Some(SpiffeId::parse(SERVER_ID).unwrap()),
        ttl: Duration::from_secs(2),
    });
    let sidecar = start(cfg).await;
    let client = pki.client("frontend", &[b"http/1.1"]);
    let first = serial_of_new_connection(&client, sidecar.inbound_addr).await;
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        tokio::time::sleep(Duration::from_millis(200)).await;
        if serial_of_new_connection(&client, sidecar.inbound_addr).await != first {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the dev CA identity was never renewed"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn rotation_every_second_under_load_loses_no_request() {
    let pki = Pki::new();
    pki.issue("frontend", FRONTEND);
    let policies = policy_dir(&pki, &[("authz.rego", ALLOW_ALL)]);
    let app = echo_app().await;
    let mut cfg = config(&pki, &policies, app);
    cfg.identity = server_files(&pki, Duration::from_millis(100));
    let sidecar = start(cfg).await;
    let addr = sidecar.inbound_addr;
    let client = pki.client("frontend", &[b"http/1.1"]);

    // Four clients, each sending requests back to back and opening a new mTLS
    // connection every fifth request, for six seconds.
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let load: Vec<_> = (0..4)
        .map(|_| {
            let (client, stop) = (client.clone(), stop.clone());
            tokio::spawn(async move {
                let (mut ok, mut failed) = (0u32, Vec::new());
                let mut serials = std::collections::BTreeSet::new();
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    let (serial, mut s) = connect(&client, addr).await;
                    serials.insert(serial);
                    for i in 0..5 {
                        match s.send_request(req("GET", &format!("/r{i}"), &[], "")).await {
                            Ok(r) if r.status() == 200 => {
                                drop(split(r).await);
                                ok += 1;
                            }
                            Ok(r) => failed.push(r.status().to_string()),
                            Err(e) => failed.push(e.to_string()),
                        }
                    }
                }
                (ok, failed, serials)
            })
        })
        .collect();

    // Rotate every second: each time a new certificate and key written in place.
    let successes = |t: &str| {
        metric(
            t,
            "portcullis_identity_reloads_total",
            &[("result", "success")],
        )
    };
    let before = successes(&admin_get(sidecar.admin_addr, "/metrics").await.1);
    for _ in 0..6 {
        tokio::time::sleep(Duration::from_secs(1)).await;
        pki.issue("server", SERVER_ID);
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    stop.store(true, std::sync::atomic::Ordering::Relaxed);

    let (mut ok, mut serials) = (0, std::collections::BTreeSet::new());
    for task in load {
        let (n, failed, s) = task.await.unwrap();
        assert!(
            failed.is_empty(),
            "requests failed during rotation: {failed:?}"
        );
        ok += n;
        serials.extend(s);
    }
    let after = successes(&admin_get(sidecar.admin_addr, "/metrics").await.1);
    println!(
        "{ok} requests, 0 failed, {} certificates seen by new handshakes, {} reloads",
        serials.len(),
        after - before
    );
    assert!(ok > 100, "too little load to mean anything: {ok} requests");
    assert!(after - before >= 5.0, "{before} → {after} reloads");
    assert!(
        serials.len() >= 5,
        "new handshakes saw {} certificates",
        serials.len()
    );
}

/// Shutdown stops the background loops too: once the sidecar has stopped, nothing
/// still holds its identity (the file poller used to be a detached task that kept
/// polling, and kept the identity alive, after the sidecar was gone).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_stops_the_identity_poller() {
    let pki = Pki::new();
    let policies = policy_dir(&pki, &[("authz.rego", ALLOW_ALL)]);
    let app = echo_app().await;
    let mut cfg = config(&pki, &policies, app);
    cfg.identity = server_files(&pki, Duration::from_millis(50));
    let sidecar = start(cfg).await;
    assert!(
        sidecar.tasks.running().contains(&"identity-files"),
        "{:?}",
        sidecar.tasks.running()
    );
    let identity = sidecar.identity.clone();
    sidecar.shutdown();
    sidecar.wait().await;
    // Give an escaped task a few poll intervals to show itself.
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(Arc::strong_count(&identity), 1);
}
