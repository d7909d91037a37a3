//! Kubelet probes rewritten by `inject` to the admin port: the real sidecar binary,
//! started with the `PORTCULLIS_APP_PROBES` the injector writes, runs the app's
//! original probes against the app on localhost — past strict mTLS, which would
//! refuse the kubelet's plain requests on the app port.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;
mod sidecar_proc;

use common::*;

const ALLOW_NONE: &str = "package envoy.authz\nimport rego.v1\ndefault allow := false\n";

#[tokio::test]
async fn rewritten_probes_reach_the_app_through_the_admin_port() {
    let pki = Pki::new();
    let policies = policy_dir(&pki, &[("authz.rego", ALLOW_NONE)]);
    let app = echo_app().await;
    let closed = sidecar_proc::free_port();
    let probes = format!(
        r#"{{"web/livez": {{"httpGet": {{"path": "/healthz", "port": {port}}}}},
            "web/readyz": {{"tcpSocket": {{"port": {port}}}}},
            "db/livez": {{"tcpSocket": {{"port": {closed}}}, "timeoutSeconds": 1}}}}"#,
        port = app.port()
    );
    let sidecar = sidecar_proc::start_with_env(
        &pki,
        &policies,
        app,
        "",
        &[("PORTCULLIS_APP_PROBES", probes.as_str())],
    )
    .await;
    // The app is healthy: HTTP and TCP probes pass, although the policy denies every
    // request and the inbound port refuses plaintext.
    assert_eq!(
        admin_get(sidecar.admin, "/app-health/web/livez").await.0,
        200
    );
    assert_eq!(
        admin_get(sidecar.admin, "/app-health/web/readyz").await.0,
        200
    );
    // Nothing listens there: the probe fails as the kubelet's would.
    let (status, body) = admin_get(sidecar.admin, "/app-health/db/livez").await;
    assert_eq!(status, 503, "{body}");
    // A probe inject did not write is not a proxy to anything.
    assert_eq!(
        admin_get(sidecar.admin, "/app-health/web/other").await.0,
        404
    );
    assert_eq!(
        admin_get(sidecar.admin, "/app-health/../metrics").await.0,
        404
    );
}
