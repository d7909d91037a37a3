//! Two pods on one machine: network namespaces joined by a bridge, each pod running
//! an app and a sidecar (as UID 1337) behind the rules `portcullis iptables --apply`
//! installs. A third namespace has an app and no sidecar.
//!
//! Shows: app A calling `http://<pod B IP>:8080/` plainly reaches app B through both
//! sidecars; the bytes on B's interface are TLS; app B sees A's SPIFFE ID in XFCC;
//! a path B's policy denies gets 403 at A; egress to a non-mesh address is refused by
//! A's outbound policy; the pod without a sidecar is refused by B (strict mTLS).
//!
//! Needs root, iproute2, iptables, tcpdump, setpriv and curl; `.ci/run` provides them.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use common::*;

const BIN: &str = env!("CARGO_BIN_EXE_portcullis");
const A_ID: &str = "spiffe://cluster.local/ns/default/sa/pod-a";
const B_ID: &str = "spiffe://cluster.local/ns/default/sa/pod-b";

fn missing_prerequisite() -> Option<String> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        return Some("not running as root (network namespaces and iptables need it)".into());
    }
    for tool in [
        "ip",
        "iptables-restore",
        "ip6tables-restore",
        "tcpdump",
        "setpriv",
        "curl",
    ] {
        let found = Command::new("sh")
            .arg("-c")
            .arg(format!("command -v {tool}"))
            .stdout(Stdio::null())
            .status()
            .map(|s| s.success())
            .unwrap_or(false);
        if !found {
            return Some(format!("{tool} is not installed"));
        }
    }
    None
}

fn run(args: &[&str]) -> Output {
    let out = Command::new(args[0]).args(&args[1..]).output().unwrap();
    assert!(
        out.status.success(),
        "{args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// Namespaces and processes, torn down on drop (also when a test assertion fails).
struct Topology {
    suffix: String,
    children: Vec<Child>,
}

impl Topology {
    fn ns(&self, pod: &str) -> String {
        format!("pc{}-{pod}", self.suffix)
    }

    fn new() -> Topology {
        let suffix = format!("{}", std::process::id() % 100000);
        let t = Topology {
            suffix,
            children: Vec::new(),
        };
        let sw = t.ns("sw");
        run(&["ip", "netns", "add", &sw]);
        run(&["ip", "-n", &sw, "link", "add", "br0", "type", "bridge"]);
        run(&["ip", "-n", &sw, "link", "set", "br0", "up"]);
        for (pod, ip, ip6) in [
            ("a", "10.77.0.1", "fd77::1"),
            ("b", "10.77.0.2", "fd77::2"),
            ("c", "10.77.0.3", "fd77::3"),
        ] {
            let ns = t.ns(pod);
            run(&["ip", "netns", "add", &ns]);
            let port = format!("v{pod}");
            run(&[
                "ip", "-n", &sw, "link", "add", &port, "type", "veth", "peer", "name", "eth0",
                "netns", &ns,
            ]);
            run(&["ip", "-n", &sw, "link", "set", &port, "master", "br0", "up"]);
            // Dual stack: IPv6 must not be a way around the sidecar.
            for (addr, extra) in [
                (format!("{ip}/24"), None),
                (format!("{ip6}/64"), Some("nodad")),
            ] {
                let mut args = vec!["ip", "-n", &ns, "addr", "add", &addr, "dev", "eth0"];
                args.extend(extra);
                run(&args);
            }
            run(&["ip", "-n", &ns, "link", "set", "eth0", "up"]);
            run(&["ip", "-n", &ns, "link", "set", "lo", "up"]);
        }
        t
    }

    /// Starts `cmd` inside a pod's namespace, optionally as the proxy UID.
    fn spawn(&mut self, pod: &str, as_proxy: bool, cmd: &[&str], log: &Path) -> usize {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", &self.ns(pod)]);
        if as_proxy {
            c.args([
                "setpriv",
                "--reuid",
                "1337",
                "--regid",
                "1337",
                "--clear-groups",
            ]);
        }
        c.args(cmd);
        let log = std::fs::File::create(log).unwrap();
        c.stdout(log.try_clone().unwrap()).stderr(log);
        self.children.push(c.spawn().unwrap());
        self.children.len() - 1
    }

    /// Waits up to `within` for child `i` to exit; its exit status if it did.
    fn wait_exit(&mut self, i: usize, within: Duration) -> Option<std::process::ExitStatus> {
        let deadline = Instant::now() + within;
        while Instant::now() < deadline {
            if let Ok(Some(status)) = self.children[i].try_wait() {
                return Some(status);
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        None
    }

    fn exec(&self, pod: &str, cmd: &[&str]) -> Output {
        Command::new("ip")
            .args(["netns", "exec", &self.ns(pod)])
            .args(cmd)
            .output()
            .unwrap()
    }

    fn wait_ready(&self, pod: &str) {
        let deadline = Instant::now() + Duration::from_secs(30);
        while Instant::now() < deadline {
            let out = self.exec(
                pod,
                &[
                    "curl",
                    "-s",
                    "-o",
                    "/dev/null",
                    "-w",
                    "%{http_code}",
                    "http://127.0.0.1:15000/ready",
                ],
            );
            if out.stdout == b"200" {
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        panic!("sidecar in pod {pod} never became ready");
    }
}

impl Drop for Topology {
    fn drop(&mut self) {
        for c in &mut self.children {
            // SAFETY: sending SIGTERM to a child we spawned.
            unsafe { libc::kill(c.id() as i32, libc::SIGTERM) };
        }
        for c in &mut self.children {
            let deadline = Instant::now() + Duration::from_secs(5);
            while Instant::now() < deadline {
                if let Ok(Some(_)) = c.try_wait() {
                    break;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            let _ = c.kill();
            let _ = c.wait();
        }
        for pod in ["a", "b", "c", "sw"] {
            let _ = Command::new("ip")
                .args(["netns", "del", &self.ns(pod)])
                .output();
        }
    }
}

const B_INBOUND: &str = r#"
package envoy.authz
import rego.v1
default allow := false
allow if {
    input.attributes.source.principal == "spiffe://cluster.local/ns/default/sa/pod-a"
    input.parsed_path[0] != "forbidden"
}
"#;

const A_OUTBOUND: &str = r#"
package portcullis.outbound
import rego.v1
default allow := false
# Peers inside the mesh, identified by their verified SPIFFE ID.
allow if startswith(input.attributes.destination.principal, "spiffe://cluster.local/")

# One path on one address outside the mesh, passed through as plain HTTP.
allow if {
    input.attributes.destination.address.socketAddress.address == "10.77.0.3"
    input.attributes.request.http.path == "/egress-ok"
}
"#;

fn pod_dir(pki: &Pki, name: &str, id: &str, policies: &[(&str, &str)]) -> PathBuf {
    let dir = pki.issue(name, id);
    for (f, text) in policies {
        std::fs::write(dir.join(f), text).unwrap();
    }
    let config = format!(
        "trust_domain: cluster.local\n\
         identity:\n  files:\n    cert: {d}/tls.crt\n    key: {d}/tls.key\n    bundle: {d}/ca.crt\n\
         inbound:\n  listen: 0.0.0.0:15006\n  original_destination: true\n  mtls: strict\n  loopback_ports: [8083]\n\
         outbound:\n  listen: 127.0.0.1:15001\n  mode: transparent\n  mesh_networks: [10.77.0.1/32, 10.77.0.2/32]\n\
         admin:\n  listen: 0.0.0.0:15000\n\
         policy:\n  dir: {d}\n\
         log:\n  format: text\n  decisions: false\n",
        d = dir.display()
    );
    std::fs::write(dir.join("portcullis.yaml"), &config).unwrap();
    // The same with every destination outside the mesh refused before the policy.
    std::fs::write(
        dir.join("portcullis-no-egress.yaml"),
        config.replace(
            "  mode: transparent\n",
            "  mode: transparent\n  non_mesh: deny\n",
        ),
    )
    .unwrap();
    // The sidecar runs as UID 1337 and must read its files.
    for entry in std::fs::read_dir(&dir).unwrap() {
        std::os::unix::fs::chown(entry.unwrap().path(), Some(1337), Some(1337)).unwrap();
    }
    std::os::unix::fs::chown(&dir, Some(1337), Some(1337)).unwrap();
    dir
}

/// `curl URL` inside a pod: (status code, body, curl's exit code).
fn curl(t: &Topology, pod: &str, url: &str) -> (String, String, Option<i32>) {
    let out = t.exec(
        pod,
        &["curl", "-s", "-m", "10", "-w", "\n%{http_code}", url],
    );
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let (body, code) = text
        .rsplit_once('\n')
        .map(|(b, c)| (b.to_owned(), c.to_owned()))
        .unwrap_or_default();
    (code, body, out.status.code())
}

/// `curl -X POST URL` inside a pod: the status code.
fn post(t: &Topology, pod: &str, url: &str) -> String {
    let out = t.exec(
        pod,
        &[
            "curl",
            "-s",
            "-o",
            "/dev/null",
            "-m",
            "5",
            "-w",
            "%{http_code}",
            "-X",
            "POST",
            url,
        ],
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A pod's rule set as `iptables-save` (or `ip6tables-save`) prints it.
fn saved(t: &Topology, pod: &str, tool: &str) -> String {
    String::from_utf8_lossy(&t.exec(pod, &[tool]).stdout).into_owned()
}

#[test]
fn two_pods_with_transparent_interception() {
    if let Some(why) = missing_prerequisite() {
        eprintln!("SKIP two_pods_with_transparent_interception: {why}");
        return;
    }
    let pki = Pki::new();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(pki.dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let a_dir = pod_dir(&pki, "pod-a", A_ID, &[("outbound.rego", A_OUTBOUND)]);
    let b_dir = pod_dir(&pki, "pod-b", B_ID, &[("authz.rego", B_INBOUND)]);
    let logs = pki.path("logs");
    std::fs::create_dir_all(&logs).unwrap();

    let mut t = Topology::new();
    // Applied twice (an init container that restarted): one copy of every rule.
    for pod in ["a", "b", "a", "b"] {
        let out = t.exec(pod, &[BIN, "iptables", "--apply"]);
        assert!(
            out.status.success(),
            "iptables in pod {pod}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let v4 = saved(&t, "a", "iptables-save");
    assert_eq!(
        v4.matches("-A PREROUTING -p tcp -j PORTCULLIS_INBOUND")
            .count(),
        1,
        "{v4}"
    );
    assert_eq!(
        v4.matches("-A OUTPUT -p tcp -j PORTCULLIS_OUTPUT").count(),
        1,
        "{v4}"
    );
    assert_eq!(v4.matches("--uid-owner 1337").count(), 1, "{v4}");
    let v6 = saved(&t, "a", "ip6tables-save");
    assert_eq!(
        v6.matches("-A INPUT -p tcp -j PORTCULLIS_INBOUND6").count(),
        1,
        "{v6}"
    );
    t.spawn(
        "b",
        false,
        &[BIN, "echo", "--listen", "[::]:8080"],
        &logs.join("app-b.log"),
    );
    // Pod B's other apps: one bound to the pod IP only, one to localhost only (an
    // admin port meant to stay inside the pod), and one on localhost that the
    // sidecar is told to reach there (`inbound.loopback_ports`).
    for (listen, log) in [
        ("10.77.0.2:8081", "app-b-pod-ip.log"),
        ("127.0.0.1:8082", "app-b-localhost.log"),
        ("127.0.0.1:8083", "app-b-loopback-port.log"),
    ] {
        t.spawn(
            "b",
            false,
            &[BIN, "echo", "--listen", listen],
            &logs.join(log),
        );
    }
    t.spawn(
        "c",
        false,
        &[BIN, "echo", "--listen", "0.0.0.0:8080"],
        &logs.join("app-c.log"),
    );
    let mut sidecars = Vec::new();
    for (pod, dir) in [("a", &a_dir), ("b", &b_dir)] {
        let cfg = dir.join("portcullis.yaml");
        sidecars.push(t.spawn(
            pod,
            true,
            &[BIN, "run", "--config", cfg.to_str().unwrap()],
            &logs.join(format!("sidecar-{pod}.log")),
        ));
    }
    let (sidecar_a, sidecar_b) = (sidecars[0], sidecars[1]);
    t.wait_ready("a");
    t.wait_ready("b");

    // Capture what crosses B's interface while A's app talks to B's app.
    let pcap = pki.path("b.pcap");
    t.spawn(
        "b",
        false,
        &[
            "tcpdump",
            "-i",
            "eth0",
            "-U",
            "-Z",
            "root",
            "-w",
            pcap.to_str().unwrap(),
            "tcp port 8080 and host 10.77.0.1",
        ],
        &logs.join("tcpdump.log"),
    );
    std::thread::sleep(Duration::from_millis(1500));

    // 1. Plain HTTP from app A reaches app B through both sidecars, with A's identity.
    let (code, body, _) = curl(&t, "a", "http://10.77.0.2:8080/hello");
    let sidecar_log = |p: &str| {
        std::fs::read_to_string(logs.join(format!("sidecar-{p}.log"))).unwrap_or_default()
    };
    assert_eq!(
        code,
        "200",
        "body: {body}\nA: {}\nB: {}",
        sidecar_log("a"),
        sidecar_log("b")
    );
    let echoed: serde_json::Value = serde_json::from_str(&body).unwrap();
    let xfcc = echoed["headers"]["x-forwarded-client-cert"]
        .as_str()
        .unwrap();
    assert!(xfcc.starts_with(&format!("By={B_ID};")), "{xfcc}");
    assert!(xfcc.ends_with(&format!("URI={A_ID}")), "{xfcc}");
    assert_eq!(echoed["path"], "/hello");
    assert_eq!(echoed["version"], "HTTP/1.1");

    // 1b. Transparent inbound forwards to where the app listens: an app bound to the
    //     pod IP only is reached; a localhost-only app is not reachable from another
    //     pod through the sidecar (502 at A's app), unless its port is listed in
    //     `inbound.loopback_ports`.
    let (code, body, _) = curl(&t, "a", "http://10.77.0.2:8081/pod-ip");
    assert_eq!(code, "200", "app on the pod IP: {body}");
    let echoed: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(echoed["path"], "/pod-ip");
    let (code, body, _) = curl(&t, "a", "http://10.77.0.2:8082/private");
    assert_eq!(
        code, "502",
        "a localhost-only app must stay private: {body}"
    );
    let (code, body, _) = curl(&t, "a", "http://10.77.0.2:8083/loopback");
    assert_eq!(code, "200", "a loopback_ports app: {body}");
    // Inside pod B, the localhost-only app is still there for B's own processes.
    let (code, _, _) = curl(&t, "b", "http://127.0.0.1:8082/private");
    assert_eq!(code, "200");

    // 2. A path B's policy denies: 403 at A.
    let (code, _, _) = curl(&t, "a", "http://10.77.0.2:8080/forbidden");
    assert_eq!(code, "403");

    // 3. Egress to a non-mesh address: A's outbound policy refuses it, except the one
    //    path it lets through, which leaves A as plain HTTP (no identity attached).
    let (code, body, _) = curl(&t, "a", "http://10.77.0.3:8080/hello");
    assert_eq!(code, "403", "{body}");
    let (code, body, _) = curl(&t, "a", "http://10.77.0.3:8080/egress-ok");
    assert_eq!(code, "200", "{body}");
    let echoed: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert!(
        echoed["headers"].get("x-forwarded-client-cert").is_none(),
        "{body}"
    );

    // 4. A pod without a sidecar is refused by B in strict mode (no HTTP answer).
    let (code, _, exit) = curl(&t, "c", "http://10.77.0.2:8080/hello");
    assert_eq!(code, "000");
    assert_ne!(exit, Some(0));

    // 4b. IPv6 is refused both ways rather than let past the sidecars: app B listens
    //     on both families, yet neither A's app nor the sidecar-less pod reaches it.
    let (code, _, exit) = curl(&t, "a", "http://[fd77::2]:8080/hello");
    assert_eq!(code, "000");
    assert_eq!(exit, Some(7), "curl exit: connection refused expected");
    let (code, _, exit) = curl(&t, "c", "http://[fd77::2]:8080/hello");
    assert_eq!(code, "000");
    assert_eq!(exit, Some(7), "curl exit: connection refused expected");
    // ...while loopback IPv6 inside a pod is untouched.
    let (code, _, _) = curl(&t, "b", "http://[::1]:8080/hello");
    assert_eq!(code, "200");

    // Requests from A to B used one mTLS connection per destination address from A's
    // sidecar (ports 8080, 8081, 8082 and 8083).
    let (_, metrics, _) = curl(&t, "a", "http://127.0.0.1:15000/metrics");
    assert!(
        metrics.contains("portcullis_tls_handshakes_total{direction=\"outbound\"} 4\n"),
        "{metrics}"
    );

    // 5. The bytes on B's interface were TLS: a handshake record, no plaintext request.
    std::thread::sleep(Duration::from_millis(500));
    if let Some(dump) = t.children.last_mut() {
        // SAFETY: signalling our own child so tcpdump flushes and exits.
        unsafe { libc::kill(dump.id() as i32, libc::SIGINT) };
        let _ = dump.wait();
    }
    let captured = std::fs::read(&pcap).unwrap();
    assert!(
        captured.len() > 1000,
        "capture too small: {} bytes",
        captured.len()
    );
    let has = |needle: &[u8]| captured.windows(needle.len()).any(|w| w == needle);
    assert!(
        has(&[0x16, 0x03, 0x01]),
        "no TLS handshake record on the wire"
    );
    assert!(!has(b"GET /hello"), "plaintext request on the wire");
    assert!(
        !has(b"x-forwarded-client-cert"),
        "plaintext headers on the wire"
    );

    // 6. The admin port is reachable from the pod network for probes and scrapes,
    //    but `/shutdown` only from inside the pod: from C it is refused...
    assert_eq!(post(&t, "c", "http://10.77.0.2:15000/shutdown"), "403");
    let (code, _, _) = curl(&t, "c", "http://10.77.0.2:15000/ready");
    assert_eq!(code, "200");
    // ...from B itself it stops B's sidecar (as a Job's last step would).
    assert_eq!(post(&t, "b", "http://127.0.0.1:15000/shutdown"), "200");
    let exited = t.wait_exit(sidecar_b, Duration::from_secs(20));
    assert!(
        exited.is_some_and(|s| s.success()),
        "B's sidecar: {exited:?}\n{}",
        sidecar_log("b")
    );

    // 7. With `outbound.non_mesh: deny`, A refuses every destination outside the
    //    mesh before its policy is asked, even the path the policy lets through.
    // SAFETY: signalling our own child.
    unsafe { libc::kill(t.children[sidecar_a].id() as i32, libc::SIGTERM) };
    assert!(t.wait_exit(sidecar_a, Duration::from_secs(20)).is_some());
    let cfg = a_dir.join("portcullis-no-egress.yaml");
    t.spawn(
        "a",
        true,
        &[BIN, "run", "--config", cfg.to_str().unwrap()],
        &logs.join("sidecar-a-no-egress.log"),
    );
    t.wait_ready("a");
    let (code, body, _) = curl(&t, "a", "http://10.77.0.3:8080/egress-ok");
    assert_eq!(code, "403", "{body}");
    assert!(body.contains("outside the mesh"), "{body}");

    // 8. `--cleanup` removes every rule and chain of both families.
    let out = t.exec("a", &[BIN, "iptables", "--cleanup"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for tool in ["iptables-save", "ip6tables-save"] {
        let after = saved(&t, "a", tool);
        assert!(!after.contains("PORTCULLIS"), "{tool}: {after}");
    }
}
