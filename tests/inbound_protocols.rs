//! Protocols through the inbound sidecar: gRPC (unary and streaming, trailers end to
//! end) and WebSocket upgrades, against real apps on loopback.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use common::*;
use http::{HeaderMap, HeaderValue, Request, Response};
use http_body::Frame;
use http_body_util::{combinators::UnsyncBoxBody, BodyExt, Full, StreamBody};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

const ALLOW_ALL: &str = "package envoy.authz\nimport rego.v1\ndefault allow := true\n";

type Body = UnsyncBoxBody<Bytes, Infallible>;

/// A gRPC-shaped echo service: every request message comes straight back as it
/// arrives, then trailers `grpc-status: 0`.
async fn grpc_echo(req: Request<Incoming>) -> Result<Response<Body>, Infallible> {
    let (tx, rx) = tokio::sync::mpsc::channel::<Frame<Bytes>>(16);
    let mut body = req.into_body();
    tokio::spawn(async move {
        while let Some(Ok(frame)) = body.frame().await {
            if let Ok(data) = frame.into_data() {
                let _ = tx.send(Frame::data(data)).await;
            }
        }
        let mut trailers = HeaderMap::new();
        trailers.insert("grpc-status", HeaderValue::from_static("0"));
        trailers.insert("grpc-message", HeaderValue::from_static("echoed"));
        let _ = tx.send(Frame::trailers(trailers)).await;
    });
    let stream = futures_util::stream::unfold(rx, |mut rx| async move {
        rx.recv().await.map(|f| (Ok::<_, Infallible>(f), rx))
    });
    let mut resp = Response::new(StreamBody::new(stream).boxed_unsync());
    resp.headers_mut()
        .insert("content-type", HeaderValue::from_static("application/grpc"));
    Ok(resp)
}

async fn grpc_app() -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let (s, _) = l.accept().await.unwrap();
            tokio::spawn(async move {
                let _ = hyper::server::conn::http2::Builder::new(executor())
                    .serve_connection(TokioIo::new(s), hyper::service::service_fn(grpc_echo))
                    .await;
            });
        }
    });
    addr
}

fn grpc_message(payload: &[u8]) -> Bytes {
    let mut b = BytesMut::with_capacity(5 + payload.len());
    b.extend_from_slice(&[0]);
    b.extend_from_slice(&(payload.len() as u32).to_be_bytes());
    b.extend_from_slice(payload);
    b.freeze()
}

async fn grpc_client(pki: &Pki, addr: SocketAddr) -> hyper::client::conn::http2::SendRequest<Body> {
    let c = pki.client("frontend", &[b"h2"]);
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let tls = tokio_rustls::TlsConnector::from(c)
        .connect(
            rustls_pki_types::ServerName::try_from("backend").unwrap(),
            tcp,
        )
        .await
        .unwrap();
    let (s, conn) = hyper::client::conn::http2::handshake(executor(), TokioIo::new(tls))
        .await
        .unwrap();
    tokio::spawn(conn);
    s
}

fn grpc_request(body: Body) -> Request<Body> {
    Request::builder()
        .method("POST")
        .uri("https://backend/echo.Echo/Say")
        .header("content-type", "application/grpc")
        .header("te", "trailers")
        .body(body)
        .unwrap()
}

#[tokio::test]
async fn grpc_unary_and_streaming_keep_trailers() {
    let pki = Pki::new();
    pki.issue("frontend", FRONTEND);
    let policies = policy_dir(&pki, &[("authz.rego", ALLOW_ALL)]);
    let app = grpc_app().await;
    let sidecar = start(config(&pki, &policies, app)).await;
    let mut client = grpc_client(&pki, sidecar.inbound_addr).await;

    // Unary.
    let msg = grpc_message(b"hello");
    let resp = client
        .send_request(grpc_request(
            Full::new(msg.clone())
                .map_err(|e| match e {})
                .boxed_unsync(),
        ))
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let collected = resp.into_body().collect().await.unwrap();
    let trailers = collected.trailers().cloned().expect("trailers");
    assert_eq!(trailers["grpc-status"], "0");
    assert_eq!(trailers["grpc-message"], "echoed");
    assert_eq!(collected.to_bytes(), msg);

    // Bidirectional streaming: each reply arrives before the next message is sent.
    let (tx, rx) = tokio::sync::mpsc::channel::<Frame<Bytes>>(4);
    let stream = futures_util::stream::unfold(rx, |mut rx| async move {
        rx.recv().await.map(|f| (Ok::<_, Infallible>(f), rx))
    });
    let resp = client
        .send_request(grpc_request(StreamBody::new(stream).boxed_unsync()))
        .await
        .unwrap();
    let mut body = resp.into_body();
    for i in 0..3u8 {
        let m = grpc_message(&[b'a' + i; 10]);
        tx.send(Frame::data(m.clone())).await.unwrap();
        let frame = tokio::time::timeout(Duration::from_secs(5), body.frame())
            .await
            .expect("reply streamed before the request ended")
            .unwrap()
            .unwrap();
        assert_eq!(frame.into_data().unwrap(), m);
    }
    drop(tx);
    let mut trailers = None;
    while let Some(f) = body.frame().await {
        if let Ok(t) = f.unwrap().into_trailers() {
            trailers = Some(t);
        }
    }
    assert_eq!(
        trailers.expect("trailers after streaming")["grpc-status"],
        "0"
    );
}

/// A WebSocket echo app with just enough of RFC 6455 to echo text frames.
async fn websocket_app() -> SocketAddr {
    async fn handle(mut req: Request<Incoming>) -> Result<Response<Full<Bytes>>, Infallible> {
        let key = req.headers()["sec-websocket-key"].as_bytes().to_vec();
        let mut input = key.clone();
        input.extend_from_slice(b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11");
        let digest =
            aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA1_FOR_LEGACY_USE_ONLY, &input);
        use base64::Engine;
        let accept = base64::engine::general_purpose::STANDARD.encode(digest.as_ref());
        let on_upgrade = hyper::upgrade::on(&mut req);
        tokio::spawn(async move {
            let mut io = TokioIo::new(on_upgrade.await.unwrap());
            loop {
                let mut head = [0u8; 2];
                if io.read_exact(&mut head).await.is_err() {
                    return;
                }
                let len = (head[1] & 0x7f) as usize;
                let mut mask = [0u8; 4];
                io.read_exact(&mut mask).await.unwrap();
                let mut payload = vec![0u8; len];
                io.read_exact(&mut payload).await.unwrap();
                for (i, b) in payload.iter_mut().enumerate() {
                    *b ^= mask[i % 4];
                }
                let mut out = vec![0x81, len as u8];
                out.extend_from_slice(&payload);
                io.write_all(&out).await.unwrap();
            }
        });
        let resp = Response::builder()
            .status(101)
            .header("connection", "upgrade")
            .header("upgrade", "websocket")
            .header("sec-websocket-accept", accept)
            .body(Full::new(Bytes::new()))
            .unwrap();
        Ok(resp)
    }
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let (s, _) = l.accept().await.unwrap();
            tokio::spawn(async move {
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(s), hyper::service::service_fn(handle))
                    .with_upgrades()
                    .await;
            });
        }
    });
    addr
}

#[tokio::test]
async fn websocket_echo_through_the_sidecar() {
    let pki = Pki::new();
    pki.issue("frontend", FRONTEND);
    let policies = policy_dir(&pki, &[("authz.rego", ALLOW_ALL)]);
    let app = websocket_app().await;
    let sidecar = start(config(&pki, &policies, app)).await;
    let c = pki.client("frontend", &[b"http/1.1"]);
    let mut sender = h1(&c, sidecar.inbound_addr).await;
    let r = req(
        "GET",
        "/ws",
        &[
            ("connection", "Upgrade"),
            ("upgrade", "websocket"),
            ("sec-websocket-version", "13"),
            ("sec-websocket-key", "dGhlIHNhbXBsZSBub25jZQ=="),
        ],
        "",
    );
    let resp = sender.send_request(r).await.unwrap();
    assert_eq!(resp.status(), 101);
    assert_eq!(
        resp.headers()["sec-websocket-accept"],
        "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="
    );
    let mut io = TokioIo::new(hyper::upgrade::on(resp).await.unwrap());
    for text in ["hello", "through the sidecar"] {
        let mask = [1u8, 2, 3, 4];
        let mut frame = vec![0x81, 0x80 | text.len() as u8];
        frame.extend_from_slice(&mask);
        frame.extend(text.bytes().enumerate().map(|(i, b)| b ^ mask[i % 4]));
        io.write_all(&frame).await.unwrap();
        let mut head = [0u8; 2];
        io.read_exact(&mut head).await.unwrap();
        assert_eq!(head[0], 0x81);
        let mut payload = vec![0u8; head[1] as usize];
        io.read_exact(&mut payload).await.unwrap();
        assert_eq!(payload, text.as_bytes());
    }
}
