//! The real binary as a child process: the demo with curl as the client, a 100 MB
//! upload with bounded sidecar memory, `promtool check metrics`, and the command
//! line's configuration errors.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::io::{BufRead, BufReader, Write};
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::*;

const BIN: &str = env!("CARGO_BIN_EXE_portcullis");

use portcullis_testkit::ports::free_port;

fn have(tool: &str) -> bool {
    Command::new("sh")
        .arg("-c")
        .arg(format!("command -v {tool}"))
        .stdout(Stdio::null())
        .status()
        .map(|s| s.success())
        .unwrap_or(false)
}

/// Kills the child when dropped, so a failing test leaves no process behind.
struct Proc(Child);
impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn wait_ready(admin: SocketAddr) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while Instant::now() < deadline {
        if let Ok(out) = Command::new("curl")
            .args(["-s", "-o", "/dev/null", "-w", "%{http_code}"])
            .arg(format!("http://{admin}/ready"))
            .output()
        {
            if out.stdout == b"200" {
                return;
            }
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    panic!("sidecar at {admin} never became ready");
}

fn curl(args: &[&str]) -> (String, String) {
    let out = Command::new("curl").args(args).output().unwrap();
    (
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn demo_with_curl_as_the_client() {
    if !have("curl") {
        eprintln!(
            "SKIP demo_with_curl_as_the_client: curl is not installed (apt-get install curl)"
        );
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let (port, admin, app) = (free_port(), free_port(), free_port());
    let d = dir.path().to_str().unwrap();
    let child = Command::new(BIN)
        .args(["demo", "--dir", d])
        .args(["--listen", &format!("127.0.0.1:{port}")])
        .args(["--admin", &format!("127.0.0.1:{admin}")])
        .args(["--app", &format!("127.0.0.1:{app}")])
        .args(["--client-route", &format!("127.0.0.1:{}", free_port())])
        .current_dir(dir.path())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    let mut child = Proc(child);
    wait_ready(format!("127.0.0.1:{admin}").parse().unwrap());
    // The printed commands are the ones a user pastes: run them as printed.
    let stdout = child.0.stdout.take().unwrap();
    let lines: Vec<String> = BufReader::new(stdout)
        .lines()
        .map_while(Result::ok)
        .take_while(|l| !l.starts_with("Ctrl-C"))
        .collect();
    let commands: Vec<&String> = lines.iter().filter(|l| l.starts_with("curl ")).collect();
    assert_eq!(commands.len(), 4, "{lines:#?}");
    let run = |cmd: &str| {
        let out = Command::new("sh")
            .arg("-c")
            .arg(format!("{cmd} -s -S -w '\\n%{{http_code}}'"))
            .output()
            .unwrap();
        (
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let (allowed, err) = run(commands[0]);
    assert!(allowed.trim_end().ends_with("200"), "{allowed} {err}");
    assert!(allowed.contains("x-forwarded-client-cert"), "{allowed}");
    assert!(allowed.contains("URI=spiffe://cluster.local/ns/default/sa/frontend"));
    let (denied, err) = run(commands[1]);
    assert!(denied.trim_end().ends_with("403"), "{denied} {err}");
    // The reason the example policy gives, in the body of the 403.
    assert!(
        denied.contains("sa/reporting do not permit POST /api/orders"),
        "{denied}"
    );
    let (plain, err) = run(commands[2]);
    assert!(plain.trim_end().ends_with("000"), "{plain} {err}");
    // The client app's plain call through its own outbound sidecar arrives over mTLS
    // as frontend.
    let (routed, err) = run(commands[3]);
    assert!(routed.trim_end().ends_with("200"), "{routed} {err}");
    assert!(
        routed.contains("URI=spiffe://cluster.local/ns/default/sa/frontend"),
        "{routed}"
    );

    // Without a client certificate the TLS handshake is refused.
    let (out, err) = curl(&[
        "-s",
        "-S",
        "--cacert",
        &format!("{d}/frontend/ca.crt"),
        &format!("https://localhost:{port}/api/orders"),
    ]);
    assert!(out.is_empty(), "{out}");
    assert!(!err.is_empty());
}

#[test]
fn demo_check_mode_passes() {
    let dir = tempfile::tempdir().unwrap();
    let out = Command::new(BIN)
        .args(["demo", "--check", "--dir", dir.path().to_str().unwrap()])
        .args(["--client-route", &format!("127.0.0.1:{}", free_port())])
        .args(["--listen", &format!("127.0.0.1:{}", free_port())])
        .args(["--admin", &format!("127.0.0.1:{}", free_port())])
        .args(["--app", &format!("127.0.0.1:{}", free_port())])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("allowed call:   200"));
    assert!(stdout.contains("denied call:    403"));
    assert!(stdout.contains("plaintext call: refused"));
    // The operating tools: shadow counter, explained deny, explain and replay.
    assert!(stdout.contains("shadow policy:  frontend's read counted as allow_to_deny"));
    assert!(stdout.contains("explanation:    "), "{stdout}");
    assert!(stdout.contains("policy explain: denied at m in grant.methods"));
    assert!(stdout.contains("client app call: 200 OK through its outbound sidecar"));
    // frontend's two reads (direct and through its sidecar) would be denied.
    assert!(stdout.contains("policy replay:  2 allow→deny with policies-next"));
    // Its sidecars stop at once: no background task had to be aborted.
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!stderr.contains("did not stop in time"), "{stderr}");
}

fn write_config(
    dir: &Path,
    pki: &Pki,
    policies: &Path,
    inbound: u16,
    admin: u16,
    app: SocketAddr,
) -> std::path::PathBuf {
    let p = dir.join("portcullis.yaml");
    let text = format!(
        "trust_domain: cluster.local\n\
         identity:\n  files:\n    cert: {s}/tls.crt\n    key: {s}/tls.key\n    bundle: {s}/ca.crt\n\
         inbound:\n  listen: 127.0.0.1:{inbound}\n  app: {app}\n\
         outbound:\n  listen: 127.0.0.1:0\n\
         admin:\n  listen: 127.0.0.1:{admin}\n\
         policy:\n  dir: {policies}\n\
         log:\n  decisions: false\n",
        s = pki.path("server").display(),
        policies = policies.display(),
    );
    std::fs::write(&p, text).unwrap();
    p
}

/// Peak resident memory of a process, in KiB.
/// A kB figure of `/proc/PID/status` (`VmHWM`, `RssFile`).
fn status_kib(pid: u32, key: &str) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix(key)?.strip_prefix(':'))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap()
}

/// A policy directory whose policy allows everything.
fn allow_all(pki: &Pki) -> std::path::PathBuf {
    policy_dir(
        pki,
        &[(
            "authz.rego",
            "package envoy.authz\nimport rego.v1\ndefault allow := true\n",
        )],
    )
}

/// `portcullis run --config cfg` with `env`, once its admin port reports ready.
async fn run_until_ready(cfg: &Path, admin: u16, env: &[(&str, &str)]) -> Proc {
    let child = Command::new(BIN)
        .args(["run", "--config", cfg.to_str().unwrap()])
        .envs(env.iter().copied())
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    let child = Proc(child);
    let admin_addr: SocketAddr = format!("127.0.0.1:{admin}").parse().unwrap();
    tokio::task::spawn_blocking(move || wait_ready(admin_addr))
        .await
        .unwrap();
    child
}

/// A sidecar in front of an echo app, with a policy allowing everything and a
/// `frontend` SVID issued for clients.
struct Allowing {
    pki: Pki,
    policies: std::path::PathBuf,
    inbound: u16,
    admin: u16,
    child: Proc,
}

async fn allowing_sidecar(env: &[(&str, &str)]) -> Allowing {
    let pki = Pki::new();
    pki.issue("frontend", FRONTEND);
    let policies = allow_all(&pki);
    let app = echo_app().await;
    let (inbound, admin) = (free_port(), free_port());
    let cfg = write_config(pki.dir.path(), &pki, &policies, inbound, admin, app);
    let child = run_until_ready(&cfg, admin, env).await;
    Allowing {
        pki,
        policies,
        inbound,
        admin,
        child,
    }
}

/// The lines of `/proc/PID/maps` that map a file whose path ends with `suffix`.
fn mappings_of(pid: u32, suffix: &str) -> usize {
    let maps = std::fs::read_to_string(format!("/proc/{pid}/maps")).unwrap();
    maps.lines().filter(|l| l.ends_with(suffix)).count()
}

/// `portcullis run` maps its code (and its shared libraries') a page at a time and
/// drops start-up's pages before it reports ready; `PORTCULLIS_RELEASE_STARTUP_PAGES=off`
/// is the control.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn run_maps_its_code_a_page_at_a_time_and_drops_start_up_pages() {
    let pki = Pki::new();
    let policies = allow_all(&pki);
    let app = echo_app().await;
    let exe = std::fs::canonicalize(BIN).unwrap();
    let exe = exe.to_string_lossy();
    let mut seen = Vec::new();
    for off in [false, true] {
        let (inbound, admin) = (free_port(), free_port());
        let dir = tempfile::tempdir().unwrap();
        let cfg = write_config(dir.path(), &pki, &policies, inbound, admin, app);
        let env = [(
            "PORTCULLIS_RELEASE_STARTUP_PAGES",
            if off { "off" } else { "on" },
        )];
        let child = run_until_ready(&cfg, admin, &env).await;
        let pid = child.0.id();
        seen.push((
            mappings_of(pid, &exe),
            status_kib(pid, "RssFile"),
            mappings_of(pid, "/libc.so.6"),
        ));
    }
    let ((split, rss_split, libc_split), (whole, rss_whole, libc_whole)) = (seen[0], seen[1]);
    // The C library's code too, where it is a shared object.
    if libc_whole > 0 {
        assert!(
            libc_split > 50 * libc_whole,
            "{libc_split} mappings of libc, {libc_whole} with the measures off"
        );
    }
    // A few thousand pages of code and constants, each its own mapping; the control
    // has the loader's handful.
    assert!(split > 1000, "{split} mappings of the binary");
    assert!(
        whole < 20,
        "{whole} mappings of the binary with the measures off"
    );
    // Start-up's code left the resident set (the warm-ups mapped back what they use).
    assert!(
        rss_split * 2 < rss_whole,
        "RssFile {rss_split} kB, {rss_whole} kB with the measures off"
    );
}

/// The last release of start-up's pages comes a second after the first decision,
/// not ten seconds after start: a sidecar that starts under load reaches its peak
/// without them. A port probe is no decision and releases nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn start_up_pages_leave_a_second_after_the_first_request() {
    if !have("curl") {
        eprintln!("SKIP: curl is not installed (the client of this test)");
        return;
    }
    let s = allowing_sidecar(&[]).await;
    let pid = s.child.0.id();
    let rss_file = move || status_kib(pid, "RssFile");
    // A port probe (what a TCP readiness check does): connect, close.
    drop(std::net::TcpStream::connect(("127.0.0.1", s.inbound)).unwrap());
    let ready = rss_file();
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let probed = rss_file();
    assert!(
        probed * 10 > ready * 9,
        "RssFile {ready} -> {probed} kB after a port probe: released without a request"
    );
    let codes = blocking_curl_load(&s.pki, s.inbound, 1, 3).await;
    assert_eq!(codes, ["200"; 3]);
    let served = rss_file();
    // Well inside the ten seconds after start that would release them anyway.
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let released = rss_file();
    assert!(
        released * 3 < served * 2,
        "RssFile {served} kB after the first requests, {released} kB 2.5 s later"
    );
}

/// The series a request through the data path moves.
const DATA_PATH_SERIES: [&str; 7] = [
    "portcullis_requests_total",
    "portcullis_jwt_validations_total",
    "portcullis_request_duration_seconds_count",
    "portcullis_policy_evaluation_duration_seconds_count",
    "portcullis_policy_decision_cache_total",
    "portcullis_tls_handshakes_total",
    "portcullis_rejected_requests_total",
];

/// A JWT provider whose keys are inline: one P-256 key made for the test.
fn jwt_section() -> String {
    use aws_lc_rs::signature::{EcdsaKeyPair, KeyPair as _, ECDSA_P256_SHA256_FIXED_SIGNING};
    use base64::Engine;
    let b64 = |b: &[u8]| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(b);
    let kp = EcdsaKeyPair::generate(&ECDSA_P256_SHA256_FIXED_SIGNING).unwrap();
    let point = kp.public_key().as_ref();
    let jwks = serde_json::json!({"keys": [{"kty": "EC", "crv": "P-256", "kid": "k1",
        "x": b64(&point[1..33]), "y": b64(&point[33..])}]});
    format!(
        "jwt:\n  providers:\n    - name: corp\n      issuer: https://issuer.test\n      \
         jwks: {{inline: '{jwks}'}}\n"
    )
}

/// The warm-ups before readiness (an mTLS handshake, every policy query, a made-up
/// token per JWT provider, an HTTP/2 and an HTTP/1.1 request, all in memory) count
/// nothing and log no decision: the first client's request is the first one counted
/// and logged (the control).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn warm_ups_before_ready_count_and_log_nothing() {
    let pki = Pki::new();
    pki.issue("frontend", FRONTEND);
    let policies = allow_all(&pki);
    let app = echo_app().await;
    let (inbound, admin) = (free_port(), free_port());
    let dir = tempfile::tempdir().unwrap();
    let cfg = write_config(dir.path(), &pki, &policies, inbound, admin, app);
    let log = dir.path().join("decisions.log");
    let text = std::fs::read_to_string(&cfg).unwrap().replace(
        "decisions: false\n",
        &format!("decisions: true\n  decision_file: {}\n", log.display()),
    ) + &jwt_section();
    std::fs::write(&cfg, text).unwrap();
    let _child = run_until_ready(&cfg, admin, &[]).await;
    let admin_addr: SocketAddr = format!("127.0.0.1:{admin}").parse().unwrap();
    let lines = |p: &Path| {
        std::fs::read_to_string(p)
            .map(|t| t.lines().count())
            .unwrap_or(0)
    };

    let (_, ready) = admin_get(admin_addr, "/metrics").await;
    for name in DATA_PATH_SERIES {
        assert_eq!(
            metric(&ready, name, &[]),
            0.0,
            "{name} moved before any client"
        );
    }
    assert_eq!(lines(&log), 0, "a decision was logged before any client");

    let client = pki.client("frontend", &[b"http/1.1"]);
    let addr: SocketAddr = format!("127.0.0.1:{inbound}").parse().unwrap();
    let (resp, _) = call(&client, addr, req("GET", "/first", &[], "")).await;
    assert_eq!(resp.status(), 200);
    let (_, after) = admin_get(admin_addr, "/metrics").await;
    for name in [
        "portcullis_requests_total",
        "portcullis_tls_handshakes_total",
    ] {
        assert_eq!(metric(&after, name, &[]), 1.0, "{name} after one request");
    }
    // The decision log is written off the request path.
    let deadline = Instant::now() + Duration::from_secs(5);
    while lines(&log) == 0 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(lines(&log), 1, "one decision logged for one request");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upload_of_100_mb_streams_with_bounded_memory_and_metrics_pass_promtool() {
    let Allowing {
        pki,
        inbound,
        admin,
        child,
        ..
    } = allowing_sidecar(&[]).await;
    let idle_kib = status_kib(child.0.id(), "VmHWM");

    // 100 MiB in 64 KiB chunks, streamed.
    const CHUNK: usize = 64 * 1024;
    const CHUNKS: usize = 1600;
    let c = pki.client("frontend", &[b"http/1.1"]);
    let frames = (0..CHUNKS).map(|_| {
        Ok::<_, std::convert::Infallible>(http_body::Frame::data(bytes::Bytes::from_static(
            &[b'z'; CHUNK],
        )))
    });
    let body = http_body_util::StreamBody::new(futures_util::stream::iter(frames));
    let r = http::Request::builder()
        .method("POST")
        .uri("/upload")
        .header("host", "backend")
        .body(body)
        .unwrap();
    let tcp = tokio::net::TcpStream::connect(("127.0.0.1", inbound))
        .await
        .unwrap();
    let tls = tokio_rustls::TlsConnector::from(c)
        .connect(
            rustls_pki_types::ServerName::try_from("backend").unwrap(),
            tcp,
        )
        .await
        .unwrap();
    let (mut sender, conn) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(tls))
            .await
            .unwrap();
    tokio::spawn(conn);
    let resp = sender.send_request(r).await.unwrap();
    assert_eq!(resp.status(), 200);
    let (_, body) = split(resp).await;
    let echoed: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(echoed["body_bytes"], (CHUNK * CHUNKS) as u64);
    let peak_kib = status_kib(child.0.id(), "VmHWM");
    eprintln!("sidecar peak RSS: idle {idle_kib} KiB, after 100 MiB upload {peak_kib} KiB");
    assert!(
        peak_kib < idle_kib + 32 * 1024,
        "sidecar memory grew by {} KiB for a streamed upload",
        peak_kib - idle_kib
    );

    // The exposition passes promtool's linter.
    let (_, metrics_text) =
        admin_get(format!("127.0.0.1:{admin}").parse().unwrap(), "/metrics").await;
    assert!(metrics_text.contains("portcullis_requests_total{"));
    if !have("promtool") {
        eprintln!("SKIP promtool check: promtool is not installed (Debian package prometheus; .ci/run installs it)");
        return;
    }
    let mut p = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    p.stdin
        .take()
        .unwrap()
        .write_all(metrics_text.as_bytes())
        .unwrap();
    let out = p.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "promtool: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// CPU time (user + system, in clock ticks) of a process (`tid == pid` reads the
/// main thread alone when `thread` is set).
fn cpu_ticks(pid: u32, thread: bool) -> u64 {
    let path = if thread {
        format!("/proc/{pid}/task/{pid}/stat")
    } else {
        format!("/proc/{pid}/stat")
    };
    let stat = std::fs::read_to_string(path).unwrap();
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .unwrap()
        .1
        .split_whitespace()
        .collect();
    fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap()
}

/// `count` GETs from each of `clients` curl processes (one kept-alive mTLS connection
/// each); returns the status codes seen.
fn curl_load(cert: &Path, key: &Path, inbound: u16, clients: usize, count: usize) -> Vec<String> {
    let url = format!("https://127.0.0.1:{inbound}/work");
    let procs: Vec<_> = (0..clients)
        .map(|_| {
            Command::new("curl")
                .args(["-s", "-k", "-w", "%{http_code}\n"])
                .arg("--cert")
                .arg(cert)
                .arg("--key")
                .arg(key)
                // Each URL with its own `-o`: curl pairs them in order.
                .args((0..count).flat_map(|_| ["-o", "/dev/null", url.as_str()]))
                .stdout(Stdio::piped())
                .spawn()
                .unwrap()
        })
        .collect();
    procs
        .into_iter()
        .flat_map(|p| {
            let out = p.wait_with_output().unwrap();
            String::from_utf8_lossy(&out.stdout)
                .lines()
                .map(str::to_owned)
                .collect::<Vec<_>>()
        })
        .collect()
}

/// [`curl_load`] off the test's runtime, which serves the app.
async fn blocking_curl_load(pki: &Pki, inbound: u16, clients: usize, count: usize) -> Vec<String> {
    let (cert, key) = (pki.path("frontend/tls.crt"), pki.path("frontend/tls.key"));
    tokio::task::spawn_blocking(move || curl_load(&cert, &key, inbound, clients, count))
        .await
        .unwrap()
}

/// With one worker (`TOKIO_WORKER_THREADS=1`, or a pod limited to one CPU) the
/// sidecar runs everything on its main thread: curl's mTLS requests are served there,
/// and an edited policy (read by the watcher on a blocking thread) still takes
/// effect. With two workers, the control, the main thread does almost none of it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_worker_serves_on_the_main_thread_and_still_reloads() {
    if !have("curl") {
        eprintln!("SKIP one_worker_serves_on_the_main_thread_and_still_reloads: curl is not installed (apt-get install curl)");
        return;
    }
    for workers in ["1", "2"] {
        let Allowing {
            pki,
            policies,
            inbound,
            child,
            ..
        } = allowing_sidecar(&[("TOKIO_WORKER_THREADS", workers)]).await;
        let pid = child.0.id();

        let (main0, all0) = (cpu_ticks(pid, true), cpu_ticks(pid, false));
        let seen = blocking_curl_load(&pki, inbound, 4, 300).await;
        assert_eq!(seen.len(), 1200, "workers={workers}");
        assert!(
            seen.iter().all(|c| c == "200"),
            "workers={workers}: {seen:?}"
        );
        let (main, all) = (cpu_ticks(pid, true) - main0, cpu_ticks(pid, false) - all0);
        eprintln!("workers={workers}: main thread {main} of {all} ticks");
        assert!(
            all >= 10,
            "too little CPU to tell threads apart: {all} ticks"
        );
        if workers == "1" {
            assert!(
                main * 10 >= all * 8,
                "workers=1: main thread {main} of {all} ticks"
            );
        } else {
            assert!(
                main * 10 <= all * 2,
                "workers=2: main thread {main} of {all} ticks"
            );
        }

        // A denying policy takes effect without a restart.
        std::fs::write(
            policies.join("authz.rego"),
            "package envoy.authz\nimport rego.v1\ndefault allow := false\n",
        )
        .unwrap();
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            let seen = blocking_curl_load(&pki, inbound, 1, 1).await;
            if seen == ["403"] {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "workers={workers}: still {seen:?}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

#[test]
fn check_config_names_file_line_and_field() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("bad.yaml");
    std::fs::write(&p, "inbound:\n  listen: 0.0.0.0:15006\n  mtls: strickt\n").unwrap();
    let out = Command::new(BIN)
        .args(["run", "--check-config", "--config", p.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("bad.yaml:3:"), "{err}");
    assert!(err.contains("inbound.mtls"), "{err}");
    assert!(err.contains("strickt"), "{err}");

    let good = dir.path().join("good.yaml");
    std::fs::write(&good, "inbound:\n  mtls: permissive\n").unwrap();
    let out = Command::new(BIN)
        .args(["run", "--check-config", "--config", good.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn ca_commands_issue_svids_and_reject_bad_arguments() {
    let dir = tempfile::tempdir().unwrap();
    let ca = dir.path().join("ca");
    let ok = Command::new(BIN)
        .args([
            "ca",
            "init",
            "--trust-domain",
            "example.org",
            "--out",
            ca.to_str().unwrap(),
        ])
        .output()
        .unwrap();
    assert!(
        ok.status.success(),
        "{}",
        String::from_utf8_lossy(&ok.stderr)
    );
    let issue = |id: &str, ttl: &str| {
        Command::new(BIN)
            .args([
                "ca",
                "issue",
                "--ca",
                ca.to_str().unwrap(),
                "--spiffe-id",
                id,
                "--ttl",
                ttl,
            ])
            .args(["--out", dir.path().join("web").to_str().unwrap()])
            .output()
            .unwrap()
    };
    let out = issue("spiffe://example.org/ns/default/sa/web", "24h");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for f in ["tls.crt", "tls.key", "ca.crt"] {
        assert!(dir.path().join("web").join(f).exists());
    }
    for (id, ttl, needle) in [
        ("spiffe://Example.org/x", "1h", "--spiffe-id"),
        ("spiffe://other.org/ns/a/sa/b", "1h", "trust domain"),
        ("spiffe://example.org/ns/a/sa/b", "0s", "--ttl"),
        ("not-an-id", "1h", "--spiffe-id"),
    ] {
        let out = issue(id, ttl);
        assert!(!out.status.success(), "{id} {ttl}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains(needle), "{id} {ttl}: {err}");
    }
}
