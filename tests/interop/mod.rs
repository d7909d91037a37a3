//! The interoperability suite's shared parts: finding the third-party tools, starting
//! third-party apps (Python's http.server, grpcio, websockets, Node's `http`, nginx) as
//! child processes, running third-party clients (curl, httpx, grpcio, websockets) with a
//! timeout on every wait, the PKI and policy every case uses, and the compatibility
//! table the suite writes to `target/interop-table.md`.
//!
//! A missing tool makes the case print `SKIP <test>: <why>` and pass. Apps announce
//! `LISTENING <port>` on stdout (see `apps.py`, `node_app.js`), so no port is guessed.
#![allow(dead_code)]
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, ChildStdout, Command};

use crate::common::*;
use crate::sidecar_proc::{free_port, have};
use portcullis::identity::SpiffeId;

/// The longest any single client run or app start-up may take.
pub const WAIT: Duration = Duration::from_secs(60);

/// The reason the interop policies give for `/interop.Echo/Forbidden`:
/// non-ASCII and `%` so that gRPC's percent-encoding is exercised.
pub const REASON: &str = "orders are closed: caf\u{e9} \u{2713} 100%";

/// Lets the frontend in, except on the forbidden gRPC method, with a reason for every deny.
pub const POLICY: &str = r#"
package envoy.authz
import rego.v1
default allow := {"allowed": false, "reason": "unknown caller"}
allow := {"allowed": true} if {
    trusted
    not forbidden
}
allow := {"allowed": false, "reason": "orders are closed: café ✓ 100%"} if {
    trusted
    forbidden
}
trusted if input.attributes.source.principal == "spiffe://cluster.local/ns/default/sa/frontend"
forbidden if input.attributes.request.http.path == "/interop.Echo/Forbidden"
"#;

/// The outbound side of the same rule: mesh peers only, the forbidden path denied.
pub const OUTBOUND: &str = r#"
package portcullis.outbound
import rego.v1
default allow := {"allowed": false, "reason": "not a mesh peer"}
allow := {"allowed": true} if {
    mesh
    not forbidden
}
allow := {"allowed": false, "reason": "orders are closed: café ✓ 100%"} if {
    mesh
    forbidden
}
mesh if startswith(input.attributes.destination.principal, "spiffe://cluster.local/")
forbidden if input.attributes.request.http.path == "/interop.Echo/Forbidden"
"#;

pub fn repo() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

pub fn script(name: &str) -> PathBuf {
    repo().join("tests/interop").join(name)
}

/// Prints why `test` skips when `tool` is missing; the caller then returns.
pub fn or_skip<T>(test: &str, tool: Result<T, String>) -> Option<T> {
    tool.map_err(|why| println!("SKIP {test}: {why}")).ok()
}

/// A command-line tool on PATH.
pub fn tool(name: &str) -> Result<PathBuf, String> {
    if have(name) {
        Ok(PathBuf::from(name))
    } else {
        Err(format!("{name} is not installed (.ci/run installs it)"))
    }
}

/// Whether an optional tool (one column of a row) is installed; says so when not.
pub fn optional(name: &str) -> bool {
    tool(name)
        .map_err(|why| println!("({why}: its column stays empty)"))
        .is_ok()
}

/// The suite's Python (`PORTCULLIS_PYTHON`, else `bench/.venv`), if it imports `modules`.
pub fn python_with(modules: &[&str]) -> Result<PathBuf, String> {
    let py = match std::env::var_os("PORTCULLIS_PYTHON") {
        Some(p) => PathBuf::from(p),
        None => repo().join("bench/.venv/bin/python"),
    };
    if !py.is_file() {
        return Err(format!(
            "no Python venv at {} (.ci/run creates it; or set PORTCULLIS_PYTHON)",
            py.display()
        ));
    }
    let imports = std::process::Command::new(&py)
        .arg("-c")
        .arg(format!("import sys, {}", modules.join(", ")).trim_end_matches(", "))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status();
    match imports {
        Ok(s) if s.success() => Ok(py),
        _ => Err(format!(
            "{} cannot import {}",
            py.display(),
            modules.join(", ")
        )),
    }
}

/// The PKI of every case: the sidecar's SVID also names `localhost` (curl, httpx and
/// grpcio check a host name; a URI-SAN-only SVID fails that check), and the frontend's
/// SVID is the client certificate.
pub fn pki() -> Pki {
    let pki = Pki::new();
    pki.ca
        .issue_with_dns(
            &SpiffeId::parse(SERVER_ID).unwrap(),
            Duration::from_secs(3600),
            &["localhost".to_owned()],
        )
        .unwrap()
        .write(&pki.path("server"))
        .unwrap();
    pki.issue("frontend", FRONTEND);
    pki
}

pub fn policies(pki: &Pki) -> PathBuf {
    policy_dir(pki, &[("authz.rego", POLICY), ("outbound.rego", OUTBOUND)])
}

/// A sidecar (in this process) in strict mTLS in front of `app`.
pub async fn sidecar(pki: &Pki, app: SocketAddr) -> portcullis::run::Running {
    start(config(pki, &policies(pki), app)).await
}

/// A third-party app running as a child process; killed on drop.
pub struct App {
    pub name: &'static str,
    pub addr: SocketAddr,
    /// What `GET /hello` answers.
    pub hello: &'static str,
    /// The app's own log (nginx's access log, Python's stderr).
    pub log: PathBuf,
    _child: Child,
    _stdout: Option<ChildStdout>,
}

impl App {
    pub fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(5)..].join(" | ")
    }
}

/// Starts `cmd`, which must print `LISTENING <port>` first.
async fn announced(name: &'static str, hello: &'static str, mut cmd: Command, dir: &Path) -> App {
    let log = dir.join(format!("{}.log", name.replace(' ', "_")));
    let mut child = cmd
        .stdout(Stdio::piped())
        .stderr(std::fs::File::create(&log).unwrap())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let first = tokio::time::timeout(WAIT, lines.next_line()).await;
    let port = match first {
        Ok(Ok(Some(line))) => line.strip_prefix("LISTENING ").and_then(|p| p.parse().ok()),
        _ => None,
    };
    let Some(port) = port else {
        panic!(
            "{name} did not start: {}",
            std::fs::read_to_string(&log).unwrap_or_default()
        );
    };
    App {
        name,
        addr: SocketAddr::from(([127, 0, 0, 1], port)),
        hello,
        log,
        _child: child,
        _stdout: Some(lines.into_inner().into_inner()),
    }
}

/// One of `apps.py`'s apps: `http`, `sse`, `grpc`, `ws`.
pub async fn python_app(py: &Path, kind: &str, dir: &Path) -> App {
    let (name, hello) = match kind {
        "http" => ("Python http.server", "hello from python http.server\n"),
        "sse" => ("SSE app", ""),
        "grpc" => ("grpcio server", ""),
        _ => ("websockets server", ""),
    };
    let mut cmd = Command::new(py);
    cmd.arg(script("apps.py")).arg(kind);
    announced(name, hello, cmd, dir).await
}

pub async fn node_app(dir: &Path) -> App {
    let mut cmd = Command::new("node");
    cmd.arg(script("node_app.js"));
    announced("Node http", "hello from node http\n", cmd, dir).await
}

/// nginx (HTTP/1.1 only, its default) serving `/hello` and the files in `files`.
pub async fn nginx_app(dir: &Path, files: &[(&str, &[u8])]) -> App {
    let dir = dir.join("nginx");
    std::fs::create_dir_all(dir.join("html")).unwrap();
    for (name, bytes) in files {
        std::fs::write(dir.join("html").join(name), bytes).unwrap();
    }
    let port = free_port();
    let d = dir.display();
    let conf = format!(
        "daemon off;\nmaster_process off;\npid {d}/nginx.pid;\nerror_log {d}/error.log warn;\n\
         events {{ worker_connections 1024; }}\n\
         http {{\n  access_log {d}/access.log;\n  client_body_temp_path {d}/body;\n\
         proxy_temp_path {d}/proxy;\n  fastcgi_temp_path {d}/fcgi;\n  uwsgi_temp_path {d}/uwsgi;\n\
         scgi_temp_path {d}/scgi;\n  server {{\n    listen 127.0.0.1:{port};\n    root {d}/html;\n\
         location = /hello {{ default_type text/plain; return 200 \"hello from nginx\\n\"; }}\n  }}\n}}\n"
    );
    std::fs::write(dir.join("nginx.conf"), conf).unwrap();
    let child = Command::new("nginx")
        .arg("-e")
        .arg(dir.join("error.log"))
        .arg("-p")
        .arg(&dir)
        .arg("-c")
        .arg(dir.join("nginx.conf"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    wait_listening(addr).await;
    App {
        name: "nginx",
        addr,
        hello: "hello from nginx\n",
        log: dir.join("access.log"),
        _child: child,
        _stdout: None,
    }
}

/// Waits (bounded) until `addr` accepts connections.
pub async fn wait_listening(addr: SocketAddr) {
    let up = tokio::time::timeout(WAIT, async {
        while tokio::net::TcpStream::connect(addr).await.is_err() {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await;
    assert!(up.is_ok(), "{addr} never listened");
}

/// Runs `cmd` to completion within `limit`; kills it otherwise.
pub async fn run(mut cmd: Command, limit: Duration) -> Result<std::process::Output, String> {
    let child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .map_err(|e| format!("cannot start {cmd:?}: {e}"))?;
    match tokio::time::timeout(limit, child.wait_with_output()).await {
        Ok(Ok(out)) => Ok(out),
        Ok(Err(e)) => Err(format!("{e}")),
        Err(_) => Err(format!("no answer within {limit:?}")),
    }
}

/// Runs one of `clients.py`'s clients against `target`; its JSON report.
pub async fn py_client(
    py: &Path,
    kind: &str,
    target: &str,
    tls: Option<&Pki>,
    extra: &[&str],
) -> Result<serde_json::Value, String> {
    let mut cmd = Command::new(py);
    cmd.arg(script("clients.py"))
        .args([kind, "--target", target])
        .args(extra);
    if let Some(pki) = tls {
        let f = pki.path("frontend");
        cmd.arg("--ca")
            .arg(f.join("ca.crt"))
            .arg("--cert")
            .arg(f.join("tls.crt"))
            .arg("--key")
            .arg(f.join("tls.key"));
    }
    let out = run(cmd, WAIT).await?;
    serde_json::from_slice(&out.stdout).map_err(|_| {
        let err = String::from_utf8_lossy(&out.stderr);
        format!("{kind} client failed: {}", last_line(&err))
    })
}

/// Every check in a `clients.py` report that is not ok, as one line (empty: all ok).
pub fn failed_checks(report: &serde_json::Value, skip: &[&str]) -> String {
    let Some(map) = report.as_object() else {
        return format!("not a report: {report}");
    };
    map.iter()
        .filter(|(name, _)| !skip.contains(&name.as_str()))
        .filter(|(_, v)| v["ok"] != serde_json::Value::Bool(true))
        .map(|(name, v)| format!("{name}: {}", v["detail"].as_str().unwrap_or("?")))
        .collect::<Vec<_>>()
        .join("; ")
}

pub fn last_line(text: &str) -> &str {
    text.trim().lines().last().unwrap_or("")
}

/// What curl saw.
pub struct Curl {
    pub status: u16,
    /// `%{http_version}`: `1.1` or `2`.
    pub version: String,
    pub body: Vec<u8>,
}

/// The curl arguments for an mTLS call to the sidecar at `sidecar` as `localhost`.
pub fn curl_mtls(pki: &Pki, sidecar: SocketAddr, path: &str) -> Vec<String> {
    let f = pki.path("frontend");
    let s = |p: PathBuf| p.display().to_string();
    vec![
        "--cacert".into(),
        s(f.join("ca.crt")),
        "--cert".into(),
        s(f.join("tls.crt")),
        "--key".into(),
        s(f.join("tls.key")),
        "--resolve".into(),
        format!("localhost:{}:127.0.0.1", sidecar.port()),
        format!("https://localhost:{}{path}", sidecar.port()),
    ]
}

/// Runs curl with `args`, the body going to `out` (read back unless `keep_body` is false).
pub async fn curl(args: &[String], out: &Path, keep_body: bool) -> Result<Curl, String> {
    let mut cmd = Command::new("curl");
    cmd.args(["-sS", "--max-time", "50", "-o"])
        .arg(out)
        .args(["-w", "%{http_code} %{http_version}"])
        .args(args);
    let res = run(cmd, WAIT).await?;
    let meta = String::from_utf8_lossy(&res.stdout).into_owned();
    let (status, version) = meta.split_once(' ').unwrap_or(("0", ""));
    let status = status.parse().unwrap_or(0);
    if status == 0 {
        let err = String::from_utf8_lossy(&res.stderr);
        return Err(format!("curl: {}", last_line(&err)));
    }
    let body = if keep_body {
        std::fs::read(out).unwrap_or_default()
    } else {
        Vec::new()
    };
    Ok(Curl {
        status,
        version: version.to_owned(),
        body,
    })
}

/// `GET /hello` must answer 200 with the app's text over HTTP `version`.
pub fn expect_hello(app: &App, got: Result<Curl, String>, version: &str) -> Result<String, String> {
    let got = got?;
    let body = String::from_utf8_lossy(&got.body);
    if got.status != 200 || body != app.hello || got.version != version {
        return Err(format!(
            "{} over HTTP/{} ({}); app log: {}",
            got.status,
            got.version,
            body.trim(),
            app.log_tail()
        ));
    }
    Ok(format!("200 over HTTP/{}", got.version))
}

/// The SHA-256 of `n` bytes of the apps' pattern (`i % 251`).
pub fn pattern_sha256(n: usize) -> String {
    let mut ctx = aws_lc_rs::digest::Context::new(&aws_lc_rs::digest::SHA256);
    let block: Vec<u8> = (0..251 * 261).map(|i| (i % 251) as u8).collect();
    let mut left = n;
    while left > 0 {
        let k = left.min(block.len());
        ctx.update(&block[..k]);
        left -= k;
    }
    hex::encode(ctx.finish().as_ref())
}

pub fn sha256_file(path: &Path) -> String {
    let bytes = std::fs::read(path).unwrap_or_default();
    hex::encode(aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, &bytes).as_ref())
}

/// Streams `GET /events` from the SSE app through the sidecar with curl (`flags` pick
/// the HTTP version), releases the app's remaining events only after the client has
/// seen the first one, and checks every event arrives once, in order. A proxy that
/// buffers the stream never delivers the first event: the case then fails when the
/// app gives up (20 s) and sends `event: timeout` instead.
pub async fn sse_through(
    pki: &Pki,
    sidecar: SocketAddr,
    app: &App,
    flags: &[&str],
) -> Result<String, String> {
    let mut cmd = Command::new("curl");
    cmd.args(["-sSN", "--max-time", "50"])
        .args(flags)
        .args(curl_mtls(pki, sidecar, "/events"))
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    sse_read(cmd, app).await
}

/// [`sse_through`] for a prepared curl command.
pub async fn sse_read(mut cmd: Command, app: &App) -> Result<String, String> {
    let mut child = cmd.spawn().map_err(|e| format!("curl: {e}"))?;
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let mut data = Vec::new();
    let first = tokio::time::timeout(WAIT, async {
        while let Ok(Some(line)) = lines.next_line().await {
            if let Some(d) = line.strip_prefix("data: ") {
                return Some(d.to_owned());
            }
        }
        None
    })
    .await;
    match first {
        Ok(Some(d)) => data.push(d),
        Ok(None) => return Err("the stream ended before the first event".into()),
        Err(_) => return Err("the first event never arrived".into()),
    }
    // Only now may the app send the rest.
    match tokio::time::timeout(WAIT, admin_get(app.addr, "/release")).await {
        Ok((200, _)) => {}
        Ok((status, _)) => return Err(format!("release answered {status}")),
        Err(_) => return Err("the app did not answer the release".into()),
    }
    let rest = tokio::time::timeout(WAIT, async {
        while let Ok(Some(line)) = lines.next_line().await {
            if let Some(d) = line.strip_prefix("data: ") {
                data.push(d.to_owned());
            }
        }
    })
    .await;
    if rest.is_err() {
        return Err(format!("the stream did not end: {data:?}"));
    }
    let want = ["first", "event 1", "event 2", "event 3", "event 4"];
    if data != want {
        return Err(format!("events {data:?}"));
    }
    Ok("first event before the app sent the rest; 5 events in order".into())
}

// ---- the compatibility table ----

/// Columns of the table, in order.
pub const APPS: [&str; 6] = [
    "nginx",
    "Python http.server",
    "Node http",
    "grpcio server",
    "websockets server",
    "SSE app",
];

/// Rows of the table, in order.
pub const CLIENTS: [&str; 10] = [
    "curl, HTTP/1.1 over mTLS",
    "curl, HTTP/2 over mTLS",
    "httpx, HTTP/2, 300 concurrent streams",
    "grpcio client, mTLS",
    "websockets client, wss",
    "Envoy 1.40 calling, protocol chosen by Envoy (auto_config)",
    "Envoy 1.40 called, Envoy's TLS defaults (no ALPN)",
    "Envoy 1.40 called, ALPN h2 + http/1.1 (as Istio)",
    "curl HTTP/1.1, 50 MB down + 10 MB up",
    "curl HTTP/2, 50 MB down + 10 MB up",
];

fn target_dir() -> PathBuf {
    let tmp = Path::new(env!("CARGO_TARGET_TMPDIR"));
    tmp.parent().unwrap_or(tmp).to_owned()
}

/// Where [`record`] writes the table.
pub fn table_path() -> PathBuf {
    target_dir().join("interop-table.md")
}

/// Collects the cells one test produced; [`Cells::finish`] writes them, prints the
/// table and fails the test if any cell failed.
#[derive(Default)]
pub struct Cells {
    failures: Vec<String>,
}

impl Cells {
    pub fn record(&mut self, client: &str, app: &str, outcome: Result<String, String>) {
        let cell = match &outcome {
            Ok(_) => "pass".to_owned(),
            Err(why) => {
                self.failures.push(format!("{client} x {app}: {why}"));
                format!("FAIL: {}", short(why))
            }
        };
        println!(
            "{client} x {app}: {}",
            outcome.unwrap_or_else(|e| format!("FAIL: {e}"))
        );
        write_cell(client, app, &cell);
    }

    pub fn finish(self) {
        let table = render_table();
        println!("{table}");
        assert!(
            self.failures.is_empty(),
            "failed cells:\n{}",
            self.failures.join("\n")
        );
    }
}

/// The first clause of a failure, short enough for a table cell.
fn short(why: &str) -> String {
    let first = why
        .split("; ")
        .next()
        .unwrap_or(why)
        .replace(['|', '\n'], " ");
    match first.char_indices().nth(90) {
        Some((at, _)) => format!("{}…", &first[..at]),
        None => first,
    }
}

fn cells_dir() -> PathBuf {
    target_dir().join("interop-table")
}

fn write_cell(client: &str, app: &str, cell: &str) {
    let dir = cells_dir();
    std::fs::create_dir_all(&dir).unwrap();
    let (Some(r), Some(c)) = (
        CLIENTS.iter().position(|x| *x == client),
        APPS.iter().position(|x| *x == app),
    ) else {
        panic!("{client} x {app} is not in the table");
    };
    let path = dir.join(format!("{r}-{c}"));
    let tmp = dir.join(format!("{r}-{c}.{}", std::process::id()));
    std::fs::write(&tmp, cell).unwrap();
    std::fs::rename(tmp, path).unwrap();
}

/// Renders every recorded cell as a Markdown table and writes it to [`table_path`].
pub fn render_table() -> String {
    let dir = cells_dir();
    let mut out = String::from("| client \\ app |");
    for app in APPS {
        out.push_str(&format!(" {app} |"));
    }
    out.push_str("\n|---|");
    out.push_str(&"---|".repeat(APPS.len()));
    out.push('\n');
    for (r, client) in CLIENTS.iter().enumerate() {
        out.push_str(&format!("| {client} |"));
        for c in 0..APPS.len() {
            let cell = std::fs::read_to_string(dir.join(format!("{r}-{c}")))
                .unwrap_or_else(|_| "·".into());
            out.push_str(&format!(" {cell} |"));
        }
        out.push('\n');
    }
    out.push_str("\n`pass`: every check of the case held; `·`: not applicable or not run.\n");
    static RENDERS: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    let n = RENDERS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let tmp = target_dir().join(format!("interop-table.md.{}.{n}", std::process::id()));
    if std::fs::write(&tmp, &out).is_ok() {
        let _ = std::fs::rename(tmp, table_path());
    }
    out
}
