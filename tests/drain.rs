//! SIGTERM during load, on the real binary: requests in flight when the signal
//! arrives all complete, new connections are refused once draining has started,
//! `/ready` turns 503, and the process exits cleanly.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;
mod sidecar_proc;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use common::*;
use http_body_util::Full;
use hyper_util::rt::TokioIo;
use tokio::net::{TcpListener, TcpStream};

const ALLOW_ALL: &str = "package envoy.authz\nimport rego.v1\ndefault allow := true\n";
const IN_FLIGHT: usize = 6;
const APP_DELAY: Duration = Duration::from_millis(1500);

/// An app that takes `APP_DELAY` per request and counts requests it has started.
async fn slow_app(started: Arc<AtomicUsize>) -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let (s, _) = l.accept().await.unwrap();
            let started = started.clone();
            tokio::spawn(async move {
                let svc =
                    hyper::service::service_fn(move |_r: http::Request<hyper::body::Incoming>| {
                        let started = started.clone();
                        async move {
                            started.fetch_add(1, Ordering::SeqCst);
                            tokio::time::sleep(APP_DELAY).await;
                            Ok::<_, std::convert::Infallible>(http::Response::new(Full::new(
                                Bytes::from_static(b"done"),
                            )))
                        }
                    });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(s), svc)
                    .await;
            });
        }
    });
    addr
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_drains_in_flight_requests_and_refuses_new_connections() {
    drains_on_sigterm("2").await;
}

/// The same with one worker, as in a pod limited to one CPU: the sidecar then runs
/// on its main thread alone (a different scheduler), and still drains.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_drains_with_one_worker_thread() {
    drains_on_sigterm("1").await;
}

async fn drains_on_sigterm(workers: &str) {
    let pki = Pki::new();
    pki.issue("frontend", FRONTEND);
    let policies = policy_dir(&pki, &[("authz.rego", ALLOW_ALL)]);
    let started = Arc::new(AtomicUsize::new(0));
    let app = slow_app(started.clone()).await;
    let mut sidecar = sidecar_proc::start_with_env(
        &pki,
        &policies,
        app,
        "shutdown:\n  grace_period: 20s\n",
        &[("TOKIO_WORKER_THREADS", workers)],
    )
    .await;
    let client = pki.client("frontend", &[b"http/1.1"]);

    // Requests in flight: each on its own mTLS connection, held by the slow app.
    let mut tasks = Vec::new();
    for i in 0..IN_FLIGHT {
        let client = client.clone();
        let inbound = sidecar.inbound;
        tasks.push(tokio::spawn(async move {
            let (r, body) =
                call(&client, inbound, req("GET", &format!("/work/{i}"), &[], "")).await;
            (r.status().as_u16(), body)
        }));
    }
    let deadline = Instant::now() + Duration::from_secs(10);
    while started.load(Ordering::SeqCst) < IN_FLIGHT {
        assert!(Instant::now() < deadline, "requests never reached the app");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }

    let pid = sidecar.proc.0.id() as libc::pid_t;
    // SAFETY: kill(2) with a child's pid and a valid signal number.
    assert_eq!(unsafe { libc::kill(pid, libc::SIGTERM) }, 0);
    let signalled = Instant::now();

    // New connections are refused once draining has started (well before the
    // in-flight requests can have finished).
    let mut refused = false;
    while signalled.elapsed() < APP_DELAY / 2 {
        if TcpStream::connect(sidecar.inbound).await.is_err() {
            refused = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(
        refused,
        "inbound still accepted connections {:?} after SIGTERM",
        signalled.elapsed()
    );
    let (status, body) = admin_get(sidecar.admin, "/ready").await;
    assert_eq!(status, 503, "{body}");
    assert!(body.contains("draining"), "{body}");

    // Every request that was in flight completes normally.
    for t in tasks {
        let (status, body) = tokio::time::timeout(Duration::from_secs(15), t)
            .await
            .unwrap()
            .unwrap();
        assert_eq!((status, body.as_str()), (200, "done"));
    }
    assert_eq!(
        started.load(Ordering::SeqCst),
        IN_FLIGHT,
        "no request was retried or added"
    );

    // Then the process exits on its own, successfully.
    let deadline = Instant::now() + Duration::from_secs(15);
    let status = loop {
        if let Some(s) = sidecar.proc.0.try_wait().unwrap() {
            break s;
        }
        assert!(
            Instant::now() < deadline,
            "sidecar did not exit after draining"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert!(status.success(), "{status:?}");
}
