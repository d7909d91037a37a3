//! TCP between sidecars: each connection of a `tcp` route is one HTTP/2 `CONNECT`
//! stream (a tunnel) on the pooled mTLS connection to the peer; against real
//! sockets, rustls and the sidecars' own listeners.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::net::SocketAddr;

use common::mesh::*;
use common::*;
use portcullis::config::{OutboundMode, Route, RouteProtocol};
use portcullis::identity::SpiffeId;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tcp_route_rides_the_pooled_connection_and_pinning_is_enforced() {
    // These tests count handshakes: one at a time.
    let _serial = METRICS_SERIAL.lock().await;
    let app = tcp_echo(b"").await;
    let wrong = "spiffe://cluster.local/ns/default/sa/someone-else";
    let (_pki, a, _b) = mesh(
        app,
        vec![(RouteProtocol::Tcp, SERVER_ID), (RouteProtocol::Tcp, wrong)],
    )
    .await;
    let route = a.route_addrs[0];
    // The first connection finds the pooled connection (opened at start-up, or now).
    drop(echo_through(route, b"\x00\x01first").await);
    let before = outbound_handshakes(&admin_get(a.admin_addr, "/metrics").await.1);
    // Each later app connection is one tunnel (an HTTP/2 CONNECT stream) on it: no
    // TCP connection or handshake of its own, one after the other and side by side.
    for _ in 0..3 {
        drop(echo_through(route, b"\x00\x01binary protocol").await);
    }
    let open: Vec<_> = futures_util::future::join_all(
        (0..8u8).map(|i| async move { echo_through(route, &[0, 2, i, b'x']).await }),
    )
    .await;
    let after = outbound_handshakes(&admin_get(a.admin_addr, "/metrics").await.1);
    assert_eq!(after - before, 0.0, "tunnels need no handshake");
    drop(open);

    // A route pinned to an ID the peer does not have: the handshake fails, nothing flows.
    let mut s = tokio::net::TcpStream::connect(a.route_addrs[1])
        .await
        .unwrap();
    let _ = s.write_all(b"hello").await;
    let mut buf = [0u8; 5];
    let n = tokio::time::timeout(std::time::Duration::from_secs(5), s.read(&mut buf))
        .await
        .unwrap()
        .unwrap_or(0);
    assert_eq!(n, 0, "a mis-pinned route must not carry bytes");
    let text = admin_get(a.admin_addr, "/metrics").await.1;
    assert!(
        metric(
            &text,
            "portcullis_tls_handshake_failures_total",
            &[("direction", "outbound"), ("reason", "not_authorized")]
        ) >= 1.0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tunnels_beyond_a_connections_share_get_connections_of_their_own() {
    let _serial = METRICS_SERIAL.lock().await;
    let app = tcp_echo(b"").await;
    let at_start = outbound_handshakes(&portcullis::metrics::global().render());
    let (_pki, a, _b) = mesh(app, vec![(RouteProtocol::Tcp, SERVER_ID)]).await;
    let route = a.route_addrs[0];
    // The pooled connection, opened while A starts (no tunnel has been used yet, so
    // all 64 places are free).
    let mut text = String::new();
    for _ in 0..100 {
        text = portcullis::metrics::global().render();
        if outbound_handshakes(&text) - at_start >= 1.0 {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    assert_eq!(outbound_handshakes(&text) - at_start, 1.0);
    let (before, resumed_before) = (
        outbound_handshakes(&text),
        metric(
            &text,
            "portcullis_tls_resumed_handshakes_total",
            &[("direction", "outbound")],
        ),
    );
    // 70 connections open at once: 64 ride the pooled connection, the other six
    // get mTLS connections of their own (ALPN `portcullis-tcp`; the first is a full
    // handshake, the next five resume its session).
    let mut open = Vec::new();
    for i in 0..70u8 {
        open.push(echo_through(route, &[0, 3, i]).await);
    }
    for (i, s) in open.iter_mut().enumerate() {
        let msg = [0, 4, i as u8];
        s.write_all(&msg).await.unwrap();
        let mut buf = [0u8; 3];
        s.read_exact(&mut buf).await.unwrap();
        assert_eq!(buf, msg);
    }
    let text = portcullis::metrics::global().render();
    assert_eq!(outbound_handshakes(&text) - before, 6.0);
    assert_eq!(
        metric(
            &text,
            "portcullis_tls_resumed_handshakes_total",
            &[("direction", "outbound")]
        ) - resumed_before,
        5.0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_tunnel_does_not_stall_the_others() {
    // Handshakes are counted process-wide: one mesh at a time.
    let _serial = METRICS_SERIAL.lock().await;
    // The app never reads its first connection; it echoes every later one.
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let app = l.local_addr().unwrap();
    tokio::spawn(async move {
        let mut stalled = Vec::new();
        while let Ok((mut s, _)) = l.accept().await {
            if stalled.is_empty() {
                stalled.push(s);
                continue;
            }
            tokio::spawn(async move {
                let (mut r, mut w) = s.split();
                let _ = tokio::io::copy(&mut r, &mut w).await;
            });
        }
    });
    let (_pki, a, _b) = mesh(app, vec![(RouteProtocol::Tcp, SERVER_ID)]).await;
    let route = a.route_addrs[0];
    // Up to 256 MiB into the stalled tunnel: more than the kernel buffers on the way
    // (loopback receive buffers grow to `tcp_rmem`'s maximum, 32 MiB here) and the
    // stream windows together. The writer blocks for good.
    let mut stalled = tokio::net::TcpStream::connect(route).await.unwrap();
    let writer = tokio::spawn(async move {
        let chunk = vec![0x5au8; 64 * 1024];
        for _ in 0..4096 {
            if stalled.write_all(&chunk).await.is_err() {
                break;
            }
        }
    });
    tokio::time::sleep(std::time::Duration::from_secs(3)).await;
    assert!(!writer.is_finished(), "the stalled tunnel took every byte");
    // Other tunnels on the same pooled connection still carry their bytes, both ways
    // and more than one stream window's worth.
    let big = vec![7u8; 600 * 1024];
    let mut s = tokio::net::TcpStream::connect(route).await.unwrap();
    let (mut r, mut w) = s.split();
    let sent = async {
        w.write_all(&big).await.unwrap();
    };
    let got = async {
        let mut buf = vec![0u8; big.len()];
        r.read_exact(&mut buf).await.unwrap();
        buf
    };
    let (_, got) = tokio::time::timeout(
        std::time::Duration::from_secs(10),
        futures_util::future::join(sent, got),
    )
    .await
    .expect("a second tunnel is not held up by the stalled one");
    assert!(got == big);
    writer.abort();
}

/// A `CONNECT` with the tunnel marker over `alpn` from a client holding the
/// frontend's SVID, straight to B: the status, and the tunnel if B answered 2xx.
async fn marked_connect(
    pki: &Pki,
    b: SocketAddr,
    alpn: &[u8],
) -> (
    u16,
    Option<hyper_util::rt::TokioIo<hyper::upgrade::Upgraded>>,
) {
    let tls = tls_connect(&pki.client("frontend", &[alpn]), b).await;
    let (mut sender, conn) = hyper::client::conn::http2::handshake(
        hyper_util::rt::TokioExecutor::new(),
        hyper_util::rt::TokioIo::new(tls),
    )
    .await
    .unwrap();
    tokio::spawn(conn);
    let r = http::Request::builder()
        .method("CONNECT")
        .uri("127.0.0.1:9")
        .header("x-portcullis-tunnel", "tcp")
        .body(http_body_util::Full::new(bytes::Bytes::new()))
        .unwrap();
    let resp = sender.send_request(r).await.unwrap();
    let status = resp.status().as_u16();
    if !resp.status().is_success() {
        return (status, None);
    }
    let io = hyper::upgrade::on(resp).await.ok();
    (status, io.map(hyper_util::rt::TokioIo::new))
}

/// Writes `probe` on the tunnel, if there is one, and returns what comes back
/// within a second.
async fn probe_tunnel(
    io: Option<hyper_util::rt::TokioIo<hyper::upgrade::Upgraded>>,
    probe: &[u8],
) -> Vec<u8> {
    let Some(mut io) = io else {
        return Vec::new();
    };
    io.write_all(probe).await.unwrap();
    let mut got = vec![0u8; 64];
    let n = tokio::time::timeout(std::time::Duration::from_secs(1), io.read(&mut got))
        .await
        .map_or(0, |r| r.unwrap_or(0));
    got.truncate(n);
    got
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tunnel_markers_from_anyone_but_a_tunnelling_peer_open_nothing() {
    // Handshakes are counted process-wide: one mesh at a time.
    let _serial = METRICS_SERIAL.lock().await;
    // A raw TCP app: a tunnel reaches it with the caller's bytes; a CONNECT taken as
    // an HTTP request reaches it as a request head, which it cannot answer as HTTP.
    let app = tcp_echo(b"app:").await;
    let (pki, a, b) = mesh(app, vec![(RouteProtocol::Http, SERVER_ID)]).await;
    let probe = b"\x00\x01probe";
    // The control: a client that negotiates tunnels gets one.
    let (status, io) = marked_connect(&pki, b.inbound_addr, b"portcullis-h2t").await;
    let got = probe_tunnel(io, probe).await;
    assert_eq!((status, got.as_slice()), (200, &b"app:\x00\x01probe"[..]));
    // Any other HTTP/2 client, a portcullis peer of the version before tunnels
    // included: the marker is stripped and the CONNECT is an HTTP request.
    for alpn in [&b"h2"[..], b"portcullis-h2"] {
        let (status, io) = marked_connect(&pki, b.inbound_addr, alpn).await;
        let got = probe_tunnel(io, probe).await;
        assert!(
            !got.starts_with(b"app:\x00"),
            "{}: {status} {got:?}",
            String::from_utf8_lossy(alpn)
        );
    }
    // An app behind A: its marker is stripped by A and again by B.
    let mut s = plain_h1(a.route_addrs[0]).await;
    let r = http::Request::builder()
        .method("CONNECT")
        .uri("127.0.0.1:9")
        .header("host", "127.0.0.1:9")
        .header("x-portcullis-tunnel", "tcp")
        .body(http_body_util::Full::new(bytes::Bytes::new()))
        .unwrap();
    let resp = s.send_request(r).await.unwrap();
    if resp.status().is_success() {
        let io = hyper::upgrade::on(resp).await.ok();
        let got = probe_tunnel(io.map(hyper_util::rt::TokioIo::new), probe).await;
        assert!(!got.starts_with(b"app:\x00"), "{got:?}");
    }
}

/// A peer sidecar of the version before tunnels in front of an opaque port, as far
/// as A can tell: it offers `portcullis-h2` and `portcullis-tcp` and relays every
/// connection raw, whatever its ALPN, to an app that echoes each chunk after
/// `old:`. Counts the connections whose first bytes were the HTTP/2 preface.
async fn old_peer_on_an_opaque_port(
    pki: &Pki,
) -> (SocketAddr, std::sync::Arc<std::sync::atomic::AtomicUsize>) {
    let provider = portcullis::identity::tls::crypto_provider();
    let svid = pki.svid("server");
    let mut cfg = portcullis::identity::tls::server_config(
        &svid,
        &provider,
        portcullis::identity::verifier::PeerAuthorization::AnyTrusted,
        "inbound",
    )
    .unwrap();
    cfg.alpn_protocols = vec![b"portcullis-h2".to_vec(), b"portcullis-tcp".to_vec()];
    let acceptor = tokio_rustls::TlsAcceptor::from(std::sync::Arc::new(cfg));
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    let prefaces = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let seen = prefaces.clone();
    tokio::spawn(async move {
        while let Ok((s, _)) = l.accept().await {
            let acceptor = acceptor.clone();
            let seen = seen.clone();
            tokio::spawn(async move {
                let Ok(mut tls) = acceptor.accept(s).await else {
                    return;
                };
                let mut buf = [0u8; 1024];
                let mut first = true;
                while let Ok(n) = tls.read(&mut buf).await {
                    if n == 0 {
                        break;
                    }
                    if first && buf[..n].starts_with(b"PRI * HTTP/2.0") {
                        seen.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                    }
                    first = false;
                    if tls.write_all(&[b"old:", &buf[..n]].concat()).await.is_err() {
                        break;
                    }
                }
            });
        }
    });
    (addr, prefaces)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_peer_without_tunnels_gets_a_connection_per_tcp_connection() {
    // Handshakes are counted process-wide: one mesh at a time.
    let _serial = METRICS_SERIAL.lock().await;
    let pki = Pki::new();
    pki.issue("frontend", FRONTEND);
    let policies = policy_dir(
        &pki,
        &[("authz.rego", POLICIES), ("outbound.rego", OUTBOUND)],
    );
    let (old, prefaces) = old_peer_on_an_opaque_port(&pki).await;
    let mut cfg = config(&pki, &policies, "127.0.0.1:9".parse().unwrap());
    cfg.identity = pki.files_identity("frontend");
    cfg.outbound.mode = OutboundMode::Routes;
    cfg.outbound.routes = vec![Route {
        listen: "127.0.0.1:0".parse().unwrap(),
        upstream: old,
        spiffe_id: SpiffeId::parse(SERVER_ID).unwrap(),
        protocol: RouteProtocol::Tcp,
    }];
    let a = start(cfg).await;
    for i in 0..3u8 {
        let mut s = tokio::net::TcpStream::connect(a.route_addrs[0])
            .await
            .unwrap();
        s.write_all(&[0, i]).await.unwrap();
        let mut buf = [0u8; 6];
        tokio::time::timeout(std::time::Duration::from_secs(5), s.read_exact(&mut buf))
            .await
            .expect("relayed over a connection of its own")
            .unwrap();
        assert_eq!(&buf, &[b'o', b'l', b'd', b':', 0, i]);
    }
    // Its app never saw HTTP/2 on the route's behalf (no pooled connection tried).
    assert_eq!(prefaces.load(std::sync::atomic::Ordering::SeqCst), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tunnels_beyond_the_peers_limit_get_connections_of_their_own() {
    // Handshakes are counted process-wide: one mesh at a time.
    let _serial = METRICS_SERIAL.lock().await;
    // B allows 8 streams per connection, so 4 tunnels; the next ones it refuses
    // (503) and A gives them mTLS connections of their own.
    let app = tcp_echo(b"").await;
    let (_pki, a, _b) = mesh_with(app, vec![(RouteProtocol::Tcp, SERVER_ID)], |cfg| {
        cfg.limits.max_concurrent_streams = 8;
    })
    .await;
    let route = a.route_addrs[0];
    drop(echo_through(route, b"\x00first").await);
    let before = outbound_handshakes(&portcullis::metrics::global().render());
    let mut open = Vec::new();
    for i in 0..6u8 {
        open.push(echo_through(route, &[0, 5, i]).await);
    }
    let after = outbound_handshakes(&portcullis::metrics::global().render());
    assert_eq!(after - before, 2.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_first_protocol_speaks_first_through_a_tunnel() {
    // Handshakes are counted process-wide: one mesh at a time.
    let _serial = METRICS_SERIAL.lock().await;
    // The app greets before the client sends anything (SMTP, MySQL); B declares
    // its port opaque, so the tunnel is relayed without waiting for client bytes.
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let app = l.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = l.accept().await {
            tokio::spawn(async move {
                let _ = s.write_all(b"220 ready\r\n").await;
                let (mut r, mut w) = s.split();
                let _ = tokio::io::copy(&mut r, &mut w).await;
            });
        }
    });
    let (_pki, a, _b) = mesh_with(
        app,
        vec![
            (RouteProtocol::Tcp, SERVER_ID),
            (RouteProtocol::Http, SERVER_ID),
        ],
        |cfg| {
            cfg.inbound.opaque_ports = vec![app.port()];
        },
    )
    .await;
    // HTTP to the opaque port on the same pooled connection: refused, not parsed
    // for the app.
    let (status, body) = plain_get(a.route_addrs[1], "/").await;
    assert_eq!(status, 421, "{body}");
    let before = outbound_handshakes(&portcullis::metrics::global().render());
    for _ in 0..2 {
        let mut s = tokio::net::TcpStream::connect(a.route_addrs[0])
            .await
            .unwrap();
        let mut greeting = [0u8; 11];
        tokio::time::timeout(
            std::time::Duration::from_secs(5),
            s.read_exact(&mut greeting),
        )
        .await
        .expect("the greeting arrives before the client writes")
        .unwrap();
        assert_eq!(&greeting, b"220 ready\r\n");
        s.write_all(b"QUIT\r\n").await.unwrap();
        let mut back = [0u8; 6];
        s.read_exact(&mut back).await.unwrap();
        assert_eq!(&back, b"QUIT\r\n");
    }
    // Both rode the pooled connection as tunnels.
    let after = outbound_handshakes(&portcullis::metrics::global().render());
    assert_eq!(after - before, 0.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_through_a_tcp_route_one_connection_per_request() {
    // Handshakes are counted process-wide: one mesh at a time.
    let _serial = METRICS_SERIAL.lock().await;
    // A load generator without keep-alive: 16 at a time, each HTTP request on a
    // connection (a tunnel) of its own, decided and answered by B.
    let app = echo_app().await;
    let (_pki, a, _b) = mesh(app, vec![(RouteProtocol::Tcp, SERVER_ID)]).await;
    let route = a.route_addrs[0];
    let workers = (0..16).map(|_| async move {
        let mut failed = 0;
        for _ in 0..50 {
            if !echo_or_http(route).await {
                failed += 1;
            }
        }
        failed
    });
    let failed: usize = futures_util::future::join_all(workers)
        .await
        .into_iter()
        .sum();
    assert_eq!(failed, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tunnel_b_is_done_with_waits_for_the_peer_to_end_it() {
    // Handshakes are counted process-wide: one mesh at a time.
    let _serial = METRICS_SERIAL.lock().await;
    // B answers a request with `connection: close` and is done with the tunnel; it
    // ends its half and waits for the peer's, as TCP closes. A tunnel reset instead
    // (dropped with a half open) makes frames still on the way from the peer
    // protocol errors, and 1,024 of those close the pooled connection.
    let app = echo_app().await;
    let (pki, _a, b) = mesh(app, vec![]).await;
    let (status, io) = marked_connect(&pki, b.inbound_addr, b"portcullis-h2t").await;
    assert_eq!(status, 200);
    let mut io = io.unwrap();
    io.write_all(b"GET /x HTTP/1.1\r\nhost: backend\r\nconnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut got = Vec::new();
    io.read_to_end(&mut got).await.unwrap();
    assert!(
        got.starts_with(b"HTTP/1.1 200"),
        "{}",
        String::from_utf8_lossy(&got)
    );
    // Time for a reset to arrive, if B sent one; then this side ends its half.
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    io.shutdown()
        .await
        .expect("the stream is still open for this side to end");
}

/// One HTTP/1.1 request through `route`, read to the end of its response, then the
/// connection dropped (as a load generator without keep-alive does): answered 200?
async fn echo_or_http(route: SocketAddr) -> bool {
    let Ok(mut s) = tokio::net::TcpStream::connect(route).await else {
        return false;
    };
    if s.write_all(b"GET /n HTTP/1.1\r\nhost: backend\r\n\r\n")
        .await
        .is_err()
    {
        return false;
    }
    let mut got = Vec::new();
    let read = async {
        let mut buf = [0u8; 4096];
        loop {
            let n = s.read(&mut buf).await.ok()?;
            if n == 0 {
                return None;
            }
            got.extend_from_slice(&buf[..n]);
            let text = String::from_utf8_lossy(&got).to_ascii_lowercase();
            let Some(end) = text.find("\r\n\r\n") else {
                continue;
            };
            let len: usize = text
                .lines()
                .find_map(|l| l.strip_prefix("content-length:"))
                .and_then(|v| v.trim().parse().ok())?;
            if got.len() >= end + 4 + len {
                return Some(got.starts_with(b"HTTP/1.1 200"));
            }
        }
    };
    let ok = tokio::time::timeout(std::time::Duration::from_secs(10), read).await;
    matches!(ok, Ok(Some(true)))
}
