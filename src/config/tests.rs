//! Unit tests of loading, defaults, error messages and locations.

use std::path::{Path, PathBuf};
use std::time::Duration;

use super::jwt::default_token_locations;
use super::*;

fn parse(text: &str) -> Config {
    Config::from_yaml_str(text, "conf.yaml").unwrap_or_else(|e| panic!("{e}"))
}

fn err(text: &str) -> String {
    match Config::from_yaml_str(text, "conf.yaml") {
        Ok(c) => panic!("parsed: {c:?}"),
        Err(e) => e.to_string(),
    }
}

fn invalid(text: &str) -> (Option<usize>, Option<usize>, String, String) {
    match Config::from_yaml_str(text, "conf.yaml") {
        Ok(c) => panic!("parsed: {c:?}"),
        Err(ConfigError::Invalid {
            line,
            column,
            path,
            message,
            ..
        }) => (line, column, path, message),
        Err(e) => panic!("{e}"),
    }
}

#[test]
fn empty_document_gives_defaults() {
    for text in ["", "\n", "# only a comment\n# and another\n", "---\n"] {
        let c = parse(text);
        assert_eq!(c.trust_domain.as_str(), "cluster.local");
        assert!(matches!(c.identity, IdentityConfig::DevCa(_)));
        assert_eq!(c.inbound.listen, "0.0.0.0:15006".parse().unwrap());
        assert_eq!(c.inbound.mtls, MtlsMode::Strict);
        assert_eq!(c.inbound.app, "127.0.0.1:8080".parse().unwrap());
        assert_eq!(c.outbound.listen, "127.0.0.1:15001".parse().unwrap());
        assert_eq!(c.outbound.mode, OutboundMode::Transparent);
        assert_eq!(
            c.outbound.mesh_networks,
            vec!["10.0.0.0/8".parse().unwrap()]
        );
        assert_eq!(c.outbound.non_mesh, NonMeshAction::Passthrough);
        assert_eq!(c.policy.dir, PathBuf::from("policies"));
        assert_eq!(c.policy.inbound_query, "data.envoy.authz.allow");
        assert_eq!(c.policy.outbound_query, "data.portcullis.outbound.allow");
        assert_eq!(c.policy.dry_run, DryRun::default());
        assert_eq!(c.policy.eval_timeout, Duration::from_millis(50));
        assert_eq!(c.policy.max_instructions, 1_000_000);
        assert!(c.policy.bundle.is_none());
        assert!(c.jwt.providers.is_empty());
        assert_eq!(c.admin.listen, "0.0.0.0:15000".parse().unwrap());
        assert_eq!(c.limits.header_timeout, Duration::from_secs(10));
        assert_eq!(c.limits.max_header_bytes, 65536);
        assert_eq!(c.limits.upstream_timeout, Duration::from_secs(30));
        assert_eq!(c.log.format, LogFormat::Json);
        assert_eq!(c.log.level, "info");
        assert!(c.log.decisions);
        assert_eq!(c.log.sample_allows, 1.0);
        assert_eq!(c.shutdown.grace_period, Duration::from_secs(15));
        assert_eq!(
            c.dev_ca_spiffe_id().unwrap().as_str(),
            "spiffe://cluster.local/ns/default/sa/default"
        );
    }
}

#[test]
fn null_sections_are_defaults() {
    let c = parse("inbound:\n  # nothing yet\noutbound:\nidentity:\n  files:\n");
    assert_eq!(c.inbound.listen.port(), 15006);
    match c.identity {
        IdentityConfig::Files(f) => {
            assert_eq!(f.cert, PathBuf::from("/var/run/secrets/spiffe.io/tls.crt"));
            assert_eq!(f.poll_interval, Duration::from_secs(1));
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn bad_enum_values_name_file_line_column_and_path() {
    assert_eq!(
        err("trust_domain: cluster.local\ninbound:\n  mtls: strickt\n"),
        "conf.yaml:3:9: inbound.mtls: unknown variant \"strickt\", expected one of \"strict\", \"permissive\""
    );
    let (l, c, p, m) = invalid("outbound:\n  mode: magic\n");
    assert_eq!((l, c, p.as_str()), (Some(2), Some(9), "outbound.mode"));
    assert!(m.contains("\"transparent\", \"routes\""), "{m}");
    let (l, _, p, _) = invalid("outbound:\n  non_mesh: drop\n");
    assert_eq!((l, p.as_str()), (Some(2), "outbound.non_mesh"));
    let (l, _, p, _) = invalid("log: {format: xml}\n");
    assert_eq!((l, p.as_str()), (Some(1), "log.format"));
    let (l, _, p, _) = invalid(
        "outbound:\n  mode: routes\n  routes:\n    - listen: 127.0.0.1:9001\n      upstream: 10.0.0.9:15006\n      spiffe_id: spiffe://cluster.local/x\n      protocol: udp\n",
    );
    assert_eq!((l, p.as_str()), (Some(7), "outbound.routes[0].protocol"));
}

#[test]
fn unknown_key_at_depth() {
    let e = err("inbound:\n  mtlss: strict\n");
    assert!(
        e.starts_with("conf.yaml:2:3: inbound.mtlss: unknown field \"mtlss\""),
        "{e}"
    );
    let (l, _, p, m) = invalid("policy:\n  body:\n    enabled: true\n    max_byte: 10\n");
    assert_eq!((l, p.as_str()), (Some(4), "policy.body.max_byte"));
    assert!(m.starts_with("unknown field \"max_byte\""), "{m}");
    let (_, _, p, _) = invalid("identity:\n  files:\n    certs: /x\n");
    assert_eq!(p, "identity.files.certs");
    let (_, _, p, _) = invalid("colour: blue\n");
    assert_eq!(p, "colour");
}

#[test]
fn two_identity_sources() {
    let (l, _, p, m) = invalid("identity:\n  files: {cert: /a}\n  dev_ca: {dir: /tmp/ca}\n");
    assert_eq!(p, "identity");
    assert!(l.is_some());
    assert_eq!(
        m,
        "exactly one identity source may be set, found files and dev_ca"
    );
    let c = parse("identity:\n  workload_api: {socket: \"unix:///tmp/agent.sock\"}\n");
    assert!(c.dev_ca_spiffe_id().is_none());
    match c.identity {
        IdentityConfig::WorkloadApi(w) => assert_eq!(w.socket, "unix:///tmp/agent.sock"),
        other => panic!("{other:?}"),
    }
}

#[test]
fn bad_spiffe_id_in_routes() {
    let (l, c, p, m) = invalid(
        "outbound:\n  mode: routes\n  routes:\n    - listen: 127.0.0.1:9001\n      upstream: 10.0.0.9:15006\n      spiffe_id: spiffe://Cluster.local/x\n",
    );
    assert_eq!(p, "outbound.routes[0].spiffe_id");
    assert_eq!((l, c), (Some(6), Some(18)));
    assert!(m.contains("spiffe://Cluster.local/x"), "{m}");
}

#[test]
fn bad_duration_and_socket_address() {
    let (l, c, p, m) = invalid("limits:\n  header_timeout: 10 parsecs\n");
    assert_eq!(
        (l, c, p.as_str()),
        (Some(2), Some(19), "limits.header_timeout")
    );
    assert!(m.starts_with("invalid duration \"10 parsecs\""), "{m}");
    let (l, _, p, _) = invalid("shutdown: {grace_period: soon}\n");
    assert_eq!((l, p.as_str()), (Some(1), "shutdown.grace_period"));
    let (l, c, p, m) = invalid("admin:\n  listen: localhost:15000\n");
    assert_eq!((l, c, p.as_str()), (Some(2), Some(11), "admin.listen"));
    assert!(m.contains("socket address"), "{m}");
    let c =
        parse("limits: {header_timeout: 250ms, idle_timeout: 5m}\nshutdown: {grace_period: 0s}\n");
    assert_eq!(c.limits.header_timeout, Duration::from_millis(250));
    assert_eq!(c.limits.idle_timeout, Duration::from_secs(300));
    assert_eq!(c.shutdown.grace_period, Duration::ZERO);
}

#[test]
fn dry_run_forms() {
    let c = parse("policy: {dry_run: true}\n");
    assert_eq!(
        c.policy.dry_run,
        DryRun {
            inbound: true,
            outbound: true
        }
    );
    let c = parse("policy:\n  dry_run:\n    outbound: true\n");
    assert_eq!(
        c.policy.dry_run,
        DryRun {
            inbound: false,
            outbound: true
        }
    );
    let c = parse("policy: {dry_run: {inbound: true, outbound: false}}\n");
    assert_eq!(
        c.policy.dry_run,
        DryRun {
            inbound: true,
            outbound: false
        }
    );
    let (_, _, p, _) = invalid("policy: {dry_run: {sideways: true}}\n");
    assert_eq!(p, "policy.dry_run.sideways");
    let (_, _, p, _) = invalid("policy: {dry_run: maybe}\n");
    assert_eq!(p, "policy.dry_run");
}

const PROVIDER: &str = "jwt:\n  providers:\n    - name: corp\n      issuer: https://idp.example\n";

#[test]
fn jwks_forms() {
    let c = parse(&format!(
        "{PROVIDER}      jwks: {{url: https://idp.example/jwks.json}}\n"
    ));
    let p = &c.jwt.providers[0];
    assert_eq!(
        p.jwks,
        JwksSource::Url {
            url: "https://idp.example/jwks.json".into(),
            refresh: Duration::from_secs(300),
            ca: None,
        }
    );
    let c = parse(&format!(
        "{PROVIDER}      jwks: {{url: https://idp.example/jwks.json, ca: /etc/idp-ca.pem}}\n"
    ));
    assert!(
        matches!(&c.jwt.providers[0].jwks, JwksSource::Url { ca: Some(ca), .. } if ca.as_os_str() == "/etc/idp-ca.pem")
    );
    let (_, _, at, m) = invalid(&format!("{PROVIDER}      jwks: {{file: /a, ca: /b}}\n"));
    assert_eq!(at, "jwt.providers[0].jwks");
    assert!(m.contains("only allowed with"), "{m}");
    let p = &parse(&format!(
        "{PROVIDER}      jwks: {{url: https://idp.example/jwks.json}}\n"
    ))
    .jwt
    .providers[0];
    assert_eq!(p.from, default_token_locations());
    assert_eq!(p.clock_skew, Duration::from_secs(60));
    assert_eq!(p.payload_in_metadata, "jwt_payload");
    let c = parse(&format!(
        "{PROVIDER}      jwks: {{url: http://127.0.0.1:8081/jwks, refresh: 1m}}\n"
    ));
    assert!(
        matches!(c.jwt.providers[0].jwks, JwksSource::Url { refresh, .. } if refresh == Duration::from_secs(60))
    );
    let c = parse(&format!("{PROVIDER}      jwks: {{file: /etc/jwks.json}}\n"));
    assert_eq!(
        c.jwt.providers[0].jwks,
        JwksSource::File {
            path: "/etc/jwks.json".into()
        }
    );
    let c = parse(&format!(
        "{PROVIDER}      jwks:\n        inline: '{{\"keys\": []}}'\n"
    ));
    assert_eq!(
        c.jwt.providers[0].jwks,
        JwksSource::Inline("{\"keys\": []}".into())
    );

    let (_, _, p, m) = invalid(&format!("{PROVIDER}      jwks: {{file: /a, inline: x}}\n"));
    assert_eq!(p, "jwt.providers[0].jwks");
    assert!(m.contains("only one of"), "{m}");
    let (_, _, p, _) = invalid(&format!("{PROVIDER}      jwks: {{}}\n"));
    assert_eq!(p, "jwt.providers[0].jwks");
    let (l, _, p, m) = invalid(&format!("{PROVIDER}      jwks: {{url: ftp://idp/jwks}}\n"));
    assert_eq!((l, p.as_str()), (Some(5), "jwt.providers[0].jwks.url"));
    assert!(m.contains("http:// or https://"), "{m}");
    let (_, _, p, m) = invalid("jwt:\n  providers:\n    - name: corp\n      issuer: x\n");
    assert_eq!(p, "jwt.providers[0]");
    assert!(m.contains("missing field \"jwks\""), "{m}");
}

#[test]
fn token_location_forms() {
    let c = parse(&format!(
        "{PROVIDER}      jwks: {{file: /j}}\n      from:\n        - {{header: authorization, prefix: \"Bearer \"}}\n        - header: x-token\n        - query: access_token\n        - cookie: session\n"
    ));
    assert_eq!(
        c.jwt.providers[0].from,
        vec![
            TokenLocation::Header {
                name: "authorization".into(),
                prefix: "Bearer ".into()
            },
            TokenLocation::Header {
                name: "x-token".into(),
                prefix: String::new()
            },
            TokenLocation::Query("access_token".into()),
            TokenLocation::Cookie("session".into()),
        ]
    );
    let (_, _, p, m) = invalid(&format!(
        "{PROVIDER}      jwks: {{file: /j}}\n      from: [{{query: a, prefix: b}}]\n"
    ));
    assert_eq!(p, "jwt.providers[0].from[0]");
    assert!(m.contains("`prefix`") || m.contains("\"prefix\""), "{m}");
    let (_, _, p, _) = invalid(&format!(
        "{PROVIDER}      jwks: {{file: /j}}\n      from: [{{header: \"bad header\"}}]\n"
    ));
    assert_eq!(p, "jwt.providers[0].from[0].header");
}

#[test]
fn semantic_errors() {
    let cases: &[(&str, &str, &str)] = &[
        ("outbound: {mode: routes}\n", "outbound.routes", "at least one route"),
        (
            "outbound:\n  mode: routes\n  routes: [{listen: 127.0.0.1:9001, upstream: 10.0.0.9:15006, spiffe_id: spiffe://other.org/x}]\n",
            "outbound.routes[0].spiffe_id",
            "outside trust_domain",
        ),
        (
            "outbound:\n  routes: [{listen: 127.0.0.1:9001, upstream: 10.0.0.9:15006, spiffe_id: spiffe://cluster.local/x}]\n",
            "outbound.routes",
            "only used when",
        ),
        ("admin: {listen: 127.0.0.1:15006}\n", "admin.listen", "conflicts with inbound.listen"),
        (
            "outbound:\n  mode: routes\n  routes:\n    - {listen: 127.0.0.1:9001, upstream: 10.0.0.9:15006, spiffe_id: spiffe://cluster.local/a}\n    - {listen: 127.0.0.1:9001, upstream: 10.0.0.8:15006, spiffe_id: spiffe://cluster.local/b}\n",
            "outbound.routes[1].listen",
            "conflicts with outbound.routes[0].listen",
        ),
        (
            "jwt:\n  providers:\n    - {name: a, issuer: x, jwks: {file: /j}}\n    - {name: a, issuer: y, jwks: {file: /k}}\n",
            "jwt.providers[1].name",
            "duplicate provider name",
        ),
        ("jwt:\n  providers:\n    - {name: a, issuer: \"\", jwks: {file: /j}}\n", "jwt.providers[0].issuer", "must not be empty"),
        ("log: {sample_allows: 1.5}\n", "log.sample_allows", "not in [0, 1]"),
        ("log: {level: verbose}\n", "log.level", "not one of"),
        ("policy: {body: {max_bytes: 16777217}}\n", "policy.body.max_bytes", "maximum"),
        ("limits: {max_header_bytes: 512}\n", "limits.max_header_bytes", "minimum"),
        ("limits: {max_connections: 99999999999}\n", "limits.max_connections", "maximum"),
        ("limits: {header_timeout: 0s}\n", "limits.header_timeout", "greater than zero"),
        ("policy: {inbound_query: envoy.authz.allow}\n", "policy.inbound_query", "data."),
        ("policy: {bundle: {url: file:///x.tar.gz}}\n", "policy.bundle.url", "http://"),
        ("policy: {bundle: {url: http://bundles.example/b.tar.gz}}\n", "policy.bundle.url", "loopback"),
        (
            "identity: {dev_ca: {spiffe_id: spiffe://other.org/ns/a/sa/b}}\n",
            "identity.dev_ca.spiffe_id",
            "not in trust_domain",
        ),
        ("identity: {workload_api: {socket: /tmp/agent.sock}}\n", "identity.workload_api.socket", "unix://"),
    ];
    for (text, path, needle) in cases {
        let (_, _, p, m) = invalid(text);
        assert_eq!(&p, path, "{text}");
        assert!(m.contains(needle), "{text}: {m}");
    }
    // Locations found after parsing.
    let (l, c, _, _) = invalid("log:\n  format: text\n  sample_allows: 2\n");
    assert_eq!((l, c), (Some(3), Some(18)));
    let (l, c, _, _) = invalid(
        "outbound:\n  mode: routes\n  routes:\n    - listen: 127.0.0.1:9001\n      upstream: 10.0.0.9:15006\n      spiffe_id: spiffe://cluster.local/a\n    - listen: 127.0.0.1:9001\n      upstream: 10.0.0.9:15006\n      spiffe_id: spiffe://cluster.local/b\n",
    );
    assert_eq!((l, c), (Some(7), Some(15)));
    // Federated and trusted trust domains are allowed in routes.
    parse("identity:\n  files:\n    federated_bundles: {partner.org: /b.pem}\noutbound:\n  mode: routes\n  routes: [{listen: 127.0.0.1:9001, upstream: 10.0.0.9:15006, spiffe_id: spiffe://partner.org/x}]\n");
    parse("inbound: {trusted_domains: [partner.org]}\noutbound:\n  mode: routes\n  routes: [{listen: 127.0.0.1:9001, upstream: 10.0.0.9:15006, spiffe_id: spiffe://partner.org/x}]\n");
    // Error display without a location.
    let e = ConfigError::Invalid {
        file: "f.yaml".into(),
        line: None,
        column: None,
        path: "a.b".into(),
        message: "bad".into(),
    };
    assert_eq!(e.to_string(), "f.yaml: a.b: bad");
}

#[test]
fn syntax_error_has_location() {
    let e = err("inbound:\n  listen: [\n");
    assert!(e.starts_with("conf.yaml:"), "{e}");
    let e = Config::load(Path::new("/nonexistent/portcullis.yaml")).unwrap_err();
    assert!(matches!(e, ConfigError::Io { .. }));
    assert!(e
        .to_string()
        .starts_with("/nonexistent/portcullis.yaml: cannot read"));
}

#[test]
fn every_example_loads() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("examples");
    let mut n = 0;
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "yaml") {
            Config::load(&path).unwrap_or_else(|e| panic!("{e}"));
            n += 1;
        }
    }
    assert!(n >= 6, "found {n} examples in {}", dir.display());
}
