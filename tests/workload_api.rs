//! The SPIFFE Workload API source against a small stand-in for the SPIRE agent:
//! `SpiffeWorkloadAPI/FetchX509SVID` served over HTTP/2 on a Unix socket, with
//! hand-encoded protobuf, refusing calls without the `workload.spiffe.io: true`
//! header as SPIRE does. The agent rotates the SVID on the open stream, drops the
//! stream, and starts late; the sidecar follows each time.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::convert::Infallible;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use common::*;
use http_body::Frame;
use http_body_util::StreamBody;
use hyper_util::rt::{TokioExecutor, TokioIo};
use portcullis::config::{IdentityConfig, WorkloadApiIdentity};
use portcullis::identity::dev_ca::IssuedSvid;
use portcullis::identity::{SpiffeId, TrustDomain};
use tokio::net::UnixListener;
use tokio::sync::{mpsc, watch};

const ALLOW_ALL: &str = "package envoy.authz\nimport rego.v1\ndefault allow := true\n";

fn varint(mut n: usize, out: &mut Vec<u8>) {
    while n >= 0x80 {
        out.push((n as u8 & 0x7f) | 0x80);
        n >>= 7;
    }
    out.push(n as u8);
}

fn field(num: u8, bytes: &[u8], out: &mut Vec<u8>) {
    out.push((num << 3) | 2);
    varint(bytes.len(), out);
    out.extend_from_slice(bytes);
}

fn der_certs(pem: &str) -> Vec<u8> {
    rustls_pemfile::certs(&mut pem.as_bytes())
        .flat_map(|c| c.unwrap().to_vec())
        .collect()
}

/// `X509SVIDResponse{svids: [X509SVID{spiffe_id, x509_svid, x509_svid_key, bundle}]}`
/// in a gRPC frame. `key_from` lets a test send a key that does not match.
fn svid_message(svid: &IssuedSvid, key_from: &IssuedSvid) -> Bytes {
    let key = match rustls_pemfile::private_key(&mut key_from.key_pem.as_bytes())
        .unwrap()
        .unwrap()
    {
        rustls_pki_types::PrivateKeyDer::Pkcs8(k) => k.secret_pkcs8_der().to_vec(),
        other => panic!("not PKCS#8: {other:?}"),
    };
    let mut entry = Vec::new();
    field(1, svid.id.to_string().as_bytes(), &mut entry);
    field(2, &der_certs(&svid.cert_pem), &mut entry);
    field(3, &key, &mut entry);
    field(4, &der_certs(&svid.bundle_pem), &mut entry);
    let mut msg = Vec::new();
    field(1, &entry, &mut msg);
    let mut frame = vec![0];
    frame.extend_from_slice(&(msg.len() as u32).to_be_bytes());
    frame.extend_from_slice(&msg);
    Bytes::from(frame)
}

/// The stand-in agent. `current` is pushed to every stream on change; `kick`
/// ends every open stream with UNAVAILABLE, as an agent restart would.
struct Agent {
    current: watch::Sender<Bytes>,
    kick: watch::Sender<u64>,
    calls: Arc<AtomicUsize>,
    refused: Arc<AtomicUsize>,
}

type Body = StreamBody<tokio_stream_shim::Stream>;

mod tokio_stream_shim {
    //! An mpsc receiver as a body stream.
    use super::*;
    pub struct Stream(pub mpsc::Receiver<Frame<Bytes>>);
    impl futures_util::Stream for Stream {
        type Item = Result<Frame<Bytes>, Infallible>;
        fn poll_next(
            mut self: std::pin::Pin<&mut Self>,
            cx: &mut std::task::Context<'_>,
        ) -> std::task::Poll<Option<Self::Item>> {
            self.0.poll_recv(cx).map(|f| f.map(Ok))
        }
    }
}

fn trailers(code: &str, message: &str) -> Frame<Bytes> {
    let mut t = http::HeaderMap::new();
    t.insert("grpc-status", code.parse().unwrap());
    t.insert("grpc-message", message.parse().unwrap());
    Frame::trailers(t)
}

impl Agent {
    fn serve(path: &Path, first: Bytes) -> Arc<Agent> {
        let agent = Arc::new(Agent {
            current: watch::channel(first).0,
            kick: watch::channel(0).0,
            calls: Arc::new(AtomicUsize::new(0)),
            refused: Arc::new(AtomicUsize::new(0)),
        });
        let listener = UnixListener::bind(path).unwrap();
        let a = agent.clone();
        tokio::spawn(async move {
            loop {
                let (s, _) = listener.accept().await.unwrap();
                let a = a.clone();
                tokio::spawn(async move {
                    let svc = hyper::service::service_fn(
                        move |r: http::Request<hyper::body::Incoming>| {
                            let a = a.clone();
                            async move { Ok::<_, Infallible>(a.handle(r)) }
                        },
                    );
                    let _ = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
                        .serve_connection(TokioIo::new(s), svc)
                        .await;
                });
            }
        });
        agent
    }

    fn handle(&self, r: http::Request<hyper::body::Incoming>) -> http::Response<Body> {
        let (tx, rx) = mpsc::channel(8);
        let resp = http::Response::builder()
            .header("content-type", "application/grpc")
            .body(StreamBody::new(tokio_stream_shim::Stream(rx)))
            .unwrap();
        if r.uri().path() != "/SpiffeWorkloadAPI/FetchX509SVID" {
            let _ = tx.try_send(trailers("12", "unimplemented"));
            return resp;
        }
        if r.headers()
            .get("workload.spiffe.io")
            .and_then(|v| v.to_str().ok())
            != Some("true")
        {
            self.refused.fetch_add(1, Ordering::SeqCst);
            let _ = tx.try_send(trailers("3", "security header missing from request"));
            return resp;
        }
        self.calls.fetch_add(1, Ordering::SeqCst);
        let mut current = self.current.subscribe();
        let mut kick = self.kick.subscribe();
        tokio::spawn(async move {
            let first = current.borrow_and_update().clone();
            if tx.send(Frame::data(first)).await.is_err() {
                return;
            }
            loop {
                tokio::select! {
                    r = current.changed() => {
                        if r.is_err() { return; }
                        let next = current.borrow_and_update().clone();
                        if tx.send(Frame::data(next)).await.is_err() { return; }
                    }
                    _ = kick.changed() => {
                        let _ = tx.send(trailers("14", "agent restarting")).await;
                        return;
                    }
                }
            }
        });
        resp
    }
}

fn issue(pki: &Pki, id: &str) -> IssuedSvid {
    pki.ca
        .issue(&SpiffeId::parse(id).unwrap(), Duration::from_secs(3600))
        .unwrap()
}

fn serial_of(svid: &IssuedSvid) -> Vec<u8> {
    let leaf = rustls_pemfile::certs(&mut svid.cert_pem.as_bytes())
        .next()
        .unwrap()
        .unwrap();
    portcullis::identity::leaf_info(&leaf).unwrap().serial
}

async fn wait_for_serial(running: &portcullis::run::Running, serial: &[u8], what: &str) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if running
            .identity
            .current()
            .is_some_and(|l| l.svid.serial == serial)
        {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{what}: SVID not installed within 10s"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn workload_config(
    pki: &Pki,
    socket: &Path,
    app: std::net::SocketAddr,
) -> portcullis::config::Config {
    let policies = policy_dir(pki, &[("authz.rego", ALLOW_ALL)]);
    let mut cfg = config(pki, &policies, app);
    cfg.identity = IdentityConfig::WorkloadApi(WorkloadApiIdentity {
        socket: format!("unix://{}", socket.display()),
    });
    cfg
}

fn socket_path(pki: &Pki) -> PathBuf {
    pki.path("agent.sock")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn follows_rotations_and_reconnects() {
    let pki = Pki::new();
    pki.issue("frontend", FRONTEND);
    let a = issue(&pki, SERVER_ID);
    let socket = socket_path(&pki);
    let agent = Agent::serve(&socket, svid_message(&a, &a));
    let app = echo_app().await;
    let running = start(workload_config(&pki, &socket, app)).await;

    // The first SVID is there when start-up returns, and serves mTLS.
    wait_for_serial(&running, &serial_of(&a), "first").await;
    assert_eq!(admin_get(running.admin_addr, "/ready").await.0, 200);
    let client = pki.client("frontend", &[b"http/1.1"]);
    let (r, _) = call(&client, running.inbound_addr, req("GET", "/x", &[], "")).await;
    assert_eq!(r.status(), 200);

    // Rotation pushed on the open stream.
    let b = issue(&pki, SERVER_ID);
    agent.current.send_replace(svid_message(&b, &b));
    wait_for_serial(&running, &serial_of(&b), "rotation").await;
    assert_eq!(
        agent.calls.load(Ordering::SeqCst),
        1,
        "rotation came over the same stream"
    );

    // A candidate whose key does not match is refused; the current one stays.
    let bad = issue(&pki, SERVER_ID);
    agent.current.send_replace(svid_message(&bad, &a));
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        running.identity.current().unwrap().svid.serial,
        serial_of(&b)
    );

    // The agent drops the stream: the source reconnects and takes the new SVID.
    agent.kick.send_modify(|k| *k += 1);
    let deadline = Instant::now() + Duration::from_secs(10);
    while agent.calls.load(Ordering::SeqCst) < 2 {
        assert!(Instant::now() < deadline, "the source never reconnected");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let c = issue(&pki, SERVER_ID);
    agent.current.send_replace(svid_message(&c, &c));
    wait_for_serial(&running, &serial_of(&c), "after reconnect").await;
    assert_eq!(
        agent.refused.load(Ordering::SeqCst),
        0,
        "every call carried workload.spiffe.io: true"
    );
    let (r, _) = call(&client, running.inbound_addr, req("GET", "/y", &[], "")).await;
    assert_eq!(r.status(), 200);

    running.shutdown();
    tokio::time::timeout(Duration::from_secs(20), running.wait())
        .await
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn waits_for_an_agent_that_starts_late() {
    let pki = Pki::new();
    let a = issue(&pki, SERVER_ID);
    let socket = socket_path(&pki);
    let app = echo_app().await;
    let s = socket.clone();
    let msg = svid_message(&a, &a);
    let late = tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(800)).await;
        Agent::serve(&s, msg)
    });
    let t0 = Instant::now();
    let running = start(workload_config(&pki, &socket, app)).await;
    wait_for_serial(&running, &serial_of(&a), "late agent").await;
    assert!(t0.elapsed() < Duration::from_secs(5), "{:?}", t0.elapsed());
    assert_eq!(admin_get(running.admin_addr, "/ready").await.0, 200);
    let agent = late.await.unwrap();
    assert_eq!(agent.calls.load(Ordering::SeqCst), 1);
    running.shutdown();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_svid_of_another_trust_domain_is_never_installed() {
    let pki = Pki::new();
    let other = tempfile::tempdir().unwrap();
    let other_ca = portcullis::identity::dev_ca::DevCa::init(
        &TrustDomain::parse("other.org").unwrap(),
        other.path(),
    )
    .unwrap();
    let foreign = other_ca
        .issue(
            &SpiffeId::parse("spiffe://other.org/ns/default/sa/backend").unwrap(),
            Duration::from_secs(3600),
        )
        .unwrap();
    let socket = socket_path(&pki);
    let _agent = Agent::serve(&socket, svid_message(&foreign, &foreign));
    let app = echo_app().await;
    let mut cfg = workload_config(&pki, &socket, app);
    cfg.shutdown.grace_period = Duration::ZERO;
    let running = tokio::time::timeout(Duration::from_secs(15), start(cfg))
        .await
        .unwrap();
    assert!(running.identity.current().is_none());
    let (status, body) = admin_get(running.admin_addr, "/ready").await;
    assert_eq!(status, 503, "{body}");
    running.shutdown();
}
