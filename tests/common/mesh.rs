//! Two sidecars in one process joined by explicit outbound routes (no iptables,
//! no privileges): app → route listener → mTLS (HTTP/2, pooled) → peer inbound → app.
//! Sidecar A holds the frontend's SVID, sidecar B the backend's.

use std::net::SocketAddr;

use super::*;
use portcullis::config::{OutboundMode, Route, RouteProtocol};
use portcullis::identity::SpiffeId;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

pub const POLICIES: &str = r#"
package envoy.authz
import rego.v1
default allow := false
allow if {
    input.attributes.source.principal == "spiffe://cluster.local/ns/default/sa/frontend"
    input.parsed_path[0] != "forbidden"
}
# Opaque TCP connections from the frontend.
allow if {
    not input.attributes.request
    input.attributes.source.principal == "spiffe://cluster.local/ns/default/sa/frontend"
}
"#;

pub const OUTBOUND: &str = r#"
package portcullis.outbound
import rego.v1
default allow := false
allow if {
    input.attributes.destination.principal == "spiffe://cluster.local/ns/default/sa/backend"
    input.attributes.request.http.path != "/egress-denied"
}
allow if {
    not input.attributes.request
    input.attributes.destination.principal == "spiffe://cluster.local/ns/default/sa/backend"
}
"#;

/// Sidecar B (backend) in front of `app`, and sidecar A (frontend) with routes to B.
pub async fn mesh(
    app: SocketAddr,
    routes: Vec<(RouteProtocol, &str)>,
) -> (Pki, portcullis::run::Running, portcullis::run::Running) {
    mesh_with(app, routes, |_| {}).await
}

/// [`mesh`], with B's configuration adjusted by `tweak_b`.
pub async fn mesh_with(
    app: SocketAddr,
    routes: Vec<(RouteProtocol, &str)>,
    tweak_b: impl FnOnce(&mut portcullis::config::Config),
) -> (Pki, portcullis::run::Running, portcullis::run::Running) {
    mesh_tweaked(app, routes, |_| {}, tweak_b).await
}

/// [`mesh`], with A's and B's configurations adjusted.
pub async fn mesh_tweaked(
    app: SocketAddr,
    routes: Vec<(RouteProtocol, &str)>,
    tweak_a: impl FnOnce(&mut portcullis::config::Config),
    tweak_b: impl FnOnce(&mut portcullis::config::Config),
) -> (Pki, portcullis::run::Running, portcullis::run::Running) {
    let pki = Pki::new();
    pki.issue("frontend", FRONTEND);
    let policies = policy_dir(
        &pki,
        &[("authz.rego", POLICIES), ("outbound.rego", OUTBOUND)],
    );
    let mut b_cfg = config(&pki, &policies, app);
    tweak_b(&mut b_cfg);
    let b = start(b_cfg).await;

    let mut cfg = config(&pki, &policies, "127.0.0.1:9".parse().unwrap());
    cfg.identity = pki.files_identity("frontend");
    cfg.outbound.mode = OutboundMode::Routes;
    cfg.outbound.routes = routes
        .into_iter()
        .map(|(protocol, id)| Route {
            listen: "127.0.0.1:0".parse().unwrap(),
            upstream: b.inbound_addr,
            spiffe_id: SpiffeId::parse(id).unwrap(),
            protocol,
        })
        .collect();
    tweak_a(&mut cfg);
    let a = start(cfg).await;
    (pki, a, b)
}

pub async fn plain_get(addr: SocketAddr, path: &str) -> (u16, String) {
    let mut s = plain_h1(addr).await;
    let resp = s.send_request(req("GET", path, &[], "")).await.unwrap();
    let (p, b) = split(resp).await;
    (p.status().as_u16(), b)
}

/// mTLS handshakes sidecar A has made so far (the registry is the process's; B
/// counts its side as `inbound`).
pub fn outbound_handshakes(text: &str) -> f64 {
    metric(
        text,
        "portcullis_tls_handshakes_total",
        &[("direction", "outbound")],
    )
}

/// Connects through `route`, sends `msg` and reads the echo back.
pub async fn echo_through(route: SocketAddr, msg: &[u8]) -> tokio::net::TcpStream {
    let mut s = tokio::net::TcpStream::connect(route).await.unwrap();
    s.write_all(msg).await.unwrap();
    let mut buf = vec![0u8; msg.len()];
    tokio::time::timeout(std::time::Duration::from_secs(10), s.read_exact(&mut buf))
        .await
        .expect("echo in time")
        .unwrap();
    assert_eq!(buf, msg);
    s
}
