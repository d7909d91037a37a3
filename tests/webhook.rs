//! `portcullis webhook` as a child process: real AdmissionReview v1 JSON over TLS;
//! the JSON patch it answers, applied with the json-patch crate, gives exactly what
//! `portcullis inject` writes for the same pod. Malformed reviews get a 400 with
//! the reason and the webhook keeps serving.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod k8s_schema;

use std::io::Write;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use base64::Engine as _;
use bytes::Bytes;
use futures_util::StreamExt as _;
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;
use serde_json::{json, Value};
use tokio::net::TcpStream;

const BIN: &str = env!("CARGO_BIN_EXE_portcullis");

struct Proc(Child);
impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

use portcullis_testkit::ports::free_port;

struct Client {
    tls: Arc<rustls::ClientConfig>,
    port: u16,
}

impl Client {
    async fn post(&self, method: &str, path: &str, body: Vec<u8>) -> (u16, Vec<u8>) {
        self.send(method, path, Full::new(Bytes::from(body))).await
    }

    async fn send<B>(&self, method: &str, path: &str, body: B) -> (u16, Vec<u8>)
    where
        B: http_body::Body<Data = Bytes> + Send + 'static,
        B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    {
        let tcp = TcpStream::connect(("127.0.0.1", self.port)).await.unwrap();
        let tls = tokio_rustls::TlsConnector::from(self.tls.clone())
            .connect(
                rustls_pki_types::ServerName::try_from("localhost").unwrap(),
                tcp,
            )
            .await
            .unwrap();
        let (mut s, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tls))
            .await
            .unwrap();
        tokio::spawn(conn);
        let req = http::Request::builder()
            .method(method)
            .uri(path)
            .header("host", "portcullis-webhook.portcullis-system.svc")
            .header("content-type", "application/json")
            .body(body)
            .unwrap();
        let resp = s.send_request(req).await.unwrap();
        let status = resp.status().as_u16();
        (
            status,
            resp.into_body()
                .collect()
                .await
                .unwrap()
                .to_bytes()
                .to_vec(),
        )
    }
}

/// A pod as the API server sends it in a CREATE review: defaults filled in.
fn pod() -> Value {
    json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {
            "generateName": "orders-7d4b9c-", "namespace": "shop",
            "labels": {"app": "orders", "pod-template-hash": "7d4b9c"},
            "annotations": {"portcullis.io/exclude-inbound-ports": "9090"},
            "ownerReferences": [{"apiVersion": "apps/v1", "kind": "ReplicaSet", "name": "orders-7d4b9c",
                                 "uid": "0c1f4a4e-1111-4c5e-9d1e-2b9a0f6c7e11", "controller": true, "blockOwnerDeletion": true}]
        },
        "spec": {
            "serviceAccountName": "orders", "serviceAccount": "orders",
            "restartPolicy": "Always", "dnsPolicy": "ClusterFirst", "schedulerName": "default-scheduler",
            "terminationGracePeriodSeconds": 30, "enableServiceLinks": true, "preemptionPolicy": "PreemptLowerPriority",
            "priority": 0, "securityContext": {},
            "tolerations": [{"key": "node.kubernetes.io/not-ready", "operator": "Exists", "effect": "NoExecute", "tolerationSeconds": 300}],
            "volumes": [{"name": "kube-api-access-abcde", "projected": {"defaultMode": 420, "sources": [
                {"serviceAccountToken": {"expirationSeconds": 3607, "path": "token"}}]}}],
            "containers": [{
                "name": "api", "image": "registry.example/orders:2.1", "imagePullPolicy": "IfNotPresent",
                "ports": [{"name": "http", "containerPort": 8080, "protocol": "TCP"}],
                "livenessProbe": {"httpGet": {"path": "/healthz", "port": "http", "scheme": "HTTP"},
                                  "periodSeconds": 10, "timeoutSeconds": 1, "successThreshold": 1, "failureThreshold": 3},
                "readinessProbe": {"grpc": {"port": 8080, "service": ""}, "periodSeconds": 10, "timeoutSeconds": 1,
                                   "successThreshold": 1, "failureThreshold": 3},
                "resources": {}, "terminationMessagePath": "/dev/termination-log", "terminationMessagePolicy": "File",
                "volumeMounts": [{"name": "kube-api-access-abcde", "readOnly": true,
                                  "mountPath": "/var/run/secrets/kubernetes.io/serviceaccount"}]
            }]
        }
    })
}

fn review(uid: &str, object: Value) -> Vec<u8> {
    serde_json::to_vec(&json!({
        "apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview",
        "request": {
            "uid": uid,
            "kind": {"group": "", "version": "v1", "kind": "Pod"},
            "resource": {"group": "", "version": "v1", "resource": "pods"},
            "requestKind": {"group": "", "version": "v1", "kind": "Pod"},
            "requestResource": {"group": "", "version": "v1", "resource": "pods"},
            "namespace": "shop", "operation": "CREATE",
            "userInfo": {"username": "system:serviceaccount:kube-system:replicaset-controller",
                         "uid": "5b1c", "groups": ["system:serviceaccounts", "system:authenticated"]},
            "object": object, "oldObject": null, "dryRun": false,
            "options": {"apiVersion": "meta.k8s.io/v1", "kind": "CreateOptions"}
        }
    }))
    .unwrap()
}

fn inject_cli(obj: &Value) -> Value {
    let mut child = Command::new(BIN)
        .args(["inject", "-f", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(serde_json::to_string(obj).unwrap().as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success());
    k8s_schema::docs(&String::from_utf8(out.stdout).unwrap()).remove(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admission_reviews_over_tls() {
    let dir = tempfile::tempdir().unwrap();
    let ck = rcgen::generate_simple_self_signed(vec!["localhost".to_owned()]).unwrap();
    std::fs::write(dir.path().join("tls.crt"), ck.cert.pem()).unwrap();
    std::fs::write(dir.path().join("tls.key"), ck.signing_key.serialize_pem()).unwrap();
    let port = free_port();
    let child = Command::new(BIN)
        .args(["webhook", "--listen", &format!("127.0.0.1:{port}")])
        .arg("--tls-cert")
        .arg(dir.path().join("tls.crt"))
        .arg("--tls-key")
        .arg(dir.path().join("tls.key"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut child = Proc(child);

    let mut roots = rustls::RootCertStore::empty();
    roots.add(ck.cert.der().clone()).unwrap();
    let provider = portcullis::identity::tls::crypto_provider();
    let tls = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    let client = Client {
        tls: Arc::new(tls),
        port,
    };

    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if TcpStream::connect(("127.0.0.1", port)).await.is_ok() {
            break;
        }
        assert!(Instant::now() < deadline, "webhook never listened");
        assert!(child.0.try_wait().unwrap().is_none(), "webhook exited");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(client.post("GET", "/healthz", vec![]).await.0, 200);

    // The patch, applied, is what `inject` writes.
    let before = pod();
    let (status, body) = client
        .post(
            "POST",
            "/mutate",
            review("705ab4f5-6393-11e8-b7cc-42010a800002", before.clone()),
        )
        .await;
    assert_eq!(status, 200, "{}", String::from_utf8_lossy(&body));
    let answer: Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(answer["apiVersion"], "admission.k8s.io/v1");
    assert_eq!(answer["kind"], "AdmissionReview");
    let resp = &answer["response"];
    assert_eq!(resp["uid"], "705ab4f5-6393-11e8-b7cc-42010a800002");
    assert_eq!(resp["allowed"], true);
    assert_eq!(resp["patchType"], "JSONPatch");
    let patch = base64::engine::general_purpose::STANDARD
        .decode(resp["patch"].as_str().unwrap())
        .unwrap();
    let patch: json_patch::Patch = serde_json::from_slice(&patch).unwrap();
    let mut after = before.clone();
    json_patch::patch(&mut after, &patch).unwrap();
    assert_eq!(after, inject_cli(&before));
    assert_eq!(after["spec"]["initContainers"][1]["name"], "portcullis");
    assert_eq!(
        after["spec"]["containers"][0]["readinessProbe"]["httpGet"]["path"],
        "/app-health/api/readyz"
    );
    k8s_schema::validate(&after).unwrap();

    // Already injected (reinvocation) and opted-out pods: allowed, no patch.
    let mut opted_out = pod();
    opted_out["metadata"]["labels"]["portcullis.io/inject"] = json!("false");
    for obj in [after.clone(), opted_out] {
        let (status, body) = client.post("POST", "/mutate", review("u2", obj)).await;
        assert_eq!(status, 200);
        let v: Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(v["response"]["allowed"], true);
        assert!(v["response"].get("patch").is_none(), "{v}");
    }

    // A pod that cannot be injected is denied with the reason.
    let mut bad = pod();
    bad["metadata"]["annotations"]["portcullis.io/exclude-outbound-ports"] = json!("80,99999");
    let (_, body) = client.post("POST", "/mutate", review("u3", bad)).await;
    let v: Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(v["response"]["allowed"], false);
    assert_eq!(v["response"]["uid"], "u3");
    assert!(
        v["response"]["status"]["message"]
            .as_str()
            .unwrap()
            .contains("99999"),
        "{v}"
    );

    // Malformed reviews: 400 with the reason; an oversized body: 413.
    for (body, needle) in [
        (b"{not json".to_vec(), "not JSON"),
        (br#"{"apiVersion":"admission.k8s.io/v1beta1","kind":"AdmissionReview","request":{"uid":"x"}}"#.to_vec(), "expected apiVersion admission.k8s.io/v1"),
        (br#"{"apiVersion":"admission.k8s.io/v1","kind":"AdmissionReview","request":{"kind":{"kind":"Pod"}}}"#.to_vec(), "request.uid"),
        (br#"[1,2,3]"#.to_vec(), "expected apiVersion"),
    ] {
        let (status, text) = client.post("POST", "/mutate", body).await;
        let text = String::from_utf8_lossy(&text);
        assert_eq!(status, 400, "{text}");
        assert!(text.contains(needle), "{needle}: {text}");
    }
    // Over the limit, and the client is still sending when the answer is ready: one
    // byte past the limit, then, after a pause, 8 MiB more. The webhook reads the
    // rest before it answers (a close with the upload unread can reach the client as
    // a reset instead of the 413), so the 413 comes after the last chunk was sent.
    let sent_all = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let flag = sent_all.clone();
    let chunks = [4 * 1024 * 1024 + 1, 8 * 1024 * 1024];
    let frames = futures_util::stream::iter(chunks.into_iter().enumerate()).then(move |(i, n)| {
        let flag = flag.clone();
        async move {
            if i > 0 {
                tokio::time::sleep(Duration::from_millis(300)).await;
                flag.store(true, std::sync::atomic::Ordering::SeqCst);
            }
            Ok::<_, std::convert::Infallible>(http_body::Frame::data(Bytes::from(vec![b' '; n])))
        }
    });
    let (status, _) = client
        .send("POST", "/mutate", http_body_util::StreamBody::new(frames))
        .await;
    assert_eq!(status, 413);
    assert!(
        sent_all.load(std::sync::atomic::Ordering::SeqCst),
        "answered before the upload ended"
    );
    assert_eq!(client.post("GET", "/mutate", vec![]).await.0, 405);
    // Still serving.
    assert_eq!(client.post("GET", "/healthz", vec![]).await.0, 200);
    assert!(child.0.try_wait().unwrap().is_none());
}

#[test]
fn refuses_to_start_without_a_usable_certificate() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("tls.crt"), "not a certificate").unwrap();
    let out = Command::new(BIN)
        .args(["webhook", "--listen", "127.0.0.1:0"])
        .arg("--tls-cert")
        .arg(dir.path().join("tls.crt"))
        .arg("--tls-key")
        .arg(dir.path().join("missing.key"))
        .output()
        .unwrap();
    assert!(!out.status.success());
    let e = String::from_utf8_lossy(&out.stderr);
    assert!(e.contains("missing.key") || e.contains("tls.crt"), "{e}");
}
