//! A real Prometheus server scrapes a running sidecar (the real binary as a child
//! process); after allowed and denied traffic, a query through Prometheus's HTTP
//! API returns `portcullis_requests_total` with the expected labels. Skipped, with
//! the reason printed, when `prometheus` is not installed.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;
mod sidecar_proc;

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::*;
use serde_json::Value;
use sidecar_proc::{free_port, have, Proc};

const POLICY: &str = "package envoy.authz\nimport rego.v1\ndefault allow := false\nallow if input.attributes.request.http.path == \"/allowed\"\n";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prometheus_scrapes_the_sidecar() {
    if !have("prometheus") {
        eprintln!("SKIP prometheus_scrapes_the_sidecar: prometheus is not installed (Debian package prometheus; .ci/run installs it)");
        return;
    }
    let pki = Pki::new();
    pki.issue("frontend", FRONTEND);
    let policies = policy_dir(&pki, &[("authz.rego", POLICY)]);
    let app = echo_app().await;
    let sidecar = sidecar_proc::start(&pki, &policies, app, "").await;

    let client = pki.client("frontend", &[b"http/1.1"]);
    for _ in 0..3 {
        let (r, _) = call(&client, sidecar.inbound, req("GET", "/allowed", &[], "")).await;
        assert_eq!(r.status(), 200);
    }
    let (r, _) = call(&client, sidecar.inbound, req("GET", "/secret", &[], "")).await;
    assert_eq!(r.status(), 403);

    // Prometheus, scraping every second, storage in a temp dir.
    let dir = tempfile::tempdir().unwrap();
    let web = free_port();
    let cfg = dir.path().join("prometheus.yml");
    std::fs::write(
        &cfg,
        format!(
            "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\n\
             scrape_configs:\n  - job_name: portcullis\n    metrics_path: /metrics\n    static_configs:\n      - targets: ['{}']\n",
            sidecar.admin
        ),
    )
    .unwrap();
    let child = Command::new("prometheus")
        .arg(format!("--config.file={}", cfg.display()))
        .arg(format!(
            "--storage.tsdb.path={}",
            dir.path().join("data").display()
        ))
        .arg(format!("--web.listen-address=127.0.0.1:{web}"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut prom = Proc(child);
    let web: std::net::SocketAddr = format!("127.0.0.1:{web}").parse().unwrap();

    let query = "/api/v1/query?query=portcullis_requests_total%7Bjob%3D%22portcullis%22%7D";
    let deadline = Instant::now() + Duration::from_secs(60);
    let result = loop {
        assert!(prom.0.try_wait().unwrap().is_none(), "prometheus exited");
        if tokio::net::TcpStream::connect(web).await.is_ok() {
            let (status, body) = admin_get(web, query).await;
            if status == 200 {
                let v: Value = serde_json::from_str(&body).unwrap();
                let series = v["data"]["result"].as_array().cloned().unwrap_or_default();
                if series.len() >= 2 {
                    break series;
                }
            }
        }
        assert!(
            Instant::now() < deadline,
            "no portcullis_requests_total in Prometheus after 60s"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    };
    let find = |decision: &str, class: &str| {
        result.iter().find(|s| {
            let m = &s["metric"];
            m["__name__"] == "portcullis_requests_total"
                && m["direction"] == "inbound"
                && m["decision"] == decision
                && m["status_class"] == class
                && m["instance"] == sidecar.admin.to_string()
        })
    };
    let allowed = find("allow", "2xx").unwrap_or_else(|| panic!("{result:#?}"));
    assert_eq!(allowed["value"][1], "3");
    let denied = find("deny", "4xx").unwrap_or_else(|| panic!("{result:#?}"));
    assert_eq!(denied["value"][1], "1");

    // The target is healthy in Prometheus's own view.
    let (_, targets) = admin_get(web, "/api/v1/targets").await;
    let t: Value = serde_json::from_str(&targets).unwrap();
    assert_eq!(t["data"]["activeTargets"][0]["health"], "up", "{t}");
}
