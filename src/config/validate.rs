//! What the types alone cannot express, checked per section after parsing: required
//! and non-empty values, bounds, unique names and listen addresses, trust domains.
//! Each check returns the field path and the message; the locator adds the line.
//! Sections are checked in file order and the first failure is reported.

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::time::Duration;

use super::jwt::{JwksSource, JwtConfig, TokenLocation};
use super::model::{
    AdminConfig, Config, IdentityConfig, InboundConfig, LimitsConfig, LogConfig, OutboundMode,
};
use super::policy::PolicyConfig;
use crate::identity::spiffe_id::TrustDomain;

/// Largest request body the policy may be given (`policy.body.max_bytes`).
pub const MAX_BODY_BYTES: usize = 16 * 1024 * 1024;
/// Smallest accepted `limits.max_header_bytes`.
pub const MIN_HEADER_BYTES: usize = 1024;
/// Largest accepted `limits.max_connections`: far above any pod's need, and below
/// what the connection semaphore can hold.
const MAX_CONNECTIONS: usize = 1 << 24;
const LOG_LEVELS: [&str; 5] = ["trace", "debug", "info", "warn", "error"];

/// A failed check: the field path and what is wrong.
type Invalid = (String, String);

/// Checks what the types cannot express; returns the field path and message.
pub(super) fn validate(c: &Config) -> Result<(), Invalid> {
    identity(c)?;
    inbound(&c.inbound)?;
    outbound(c)?;
    listen_addresses(c)?;
    policy(&c.policy)?;
    jwt(&c.jwt)?;
    limits(&c.limits)?;
    log_level(&c.log)?;
    admin(&c.admin)?;
    shadow(&c.policy)?;
    let s = c.log.sample_allows;
    if !(0.0..=1.0).contains(&s) {
        return fail("log.sample_allows", format!("{s} is not in [0, 1]"));
    }
    Ok(())
}

fn fail<T>(path: impl Into<String>, msg: impl Into<String>) -> Result<T, Invalid> {
    Err((path.into(), msg.into()))
}

fn nonzero(path: &str, d: Duration) -> Result<(), Invalid> {
    if d.is_zero() {
        return fail(path, "must be greater than zero");
    }
    Ok(())
}

fn http_url(path: &str, url: &str) -> Result<(), Invalid> {
    let rest = url
        .strip_prefix("https://")
        .or_else(|| url.strip_prefix("http://"));
    match rest {
        Some(r) if !r.is_empty() && !r.starts_with('/') => {}
        _ => {
            return fail(
                path,
                format!("\"{url}\" must be an http:// or https:// URL"),
            )
        }
    }
    // Neither bundles nor key sets are signed in transit: plain HTTP only where the
    // traffic cannot leave the pod.
    let plain_host = url
        .parse::<http::Uri>()
        .ok()
        .filter(|u| u.scheme_str() == Some("http"))
        .and_then(|u| u.host().map(|h| h.trim_matches(['[', ']']).to_owned()));
    match plain_host {
        Some(h) if !crate::fetch::is_loopback(&h) => fail(
            path,
            format!("\"{url}\": plain http:// is only allowed to a loopback host; use https://"),
        ),
        _ => Ok(()),
    }
}

fn header_name(path: &str, name: &str) -> Result<(), Invalid> {
    if http::HeaderName::from_bytes(name.as_bytes()).is_err() {
        return fail(path, format!("\"{name}\" is not a valid header name"));
    }
    Ok(())
}

fn identity(c: &Config) -> Result<(), Invalid> {
    match &c.identity {
        IdentityConfig::Files(f) => {
            nonzero("identity.files.poll_interval", f.poll_interval)?;
            for (p, v) in [("cert", &f.cert), ("key", &f.key), ("bundle", &f.bundle)] {
                if v.as_os_str().is_empty() {
                    return fail(format!("identity.files.{p}"), "must not be empty");
                }
            }
        }
        IdentityConfig::WorkloadApi(w) => {
            if !(w.socket.starts_with("unix://") || w.socket.starts_with("tcp://")) {
                return fail(
                    "identity.workload_api.socket",
                    format!("\"{}\" must start with unix:// or tcp://", w.socket),
                );
            }
        }
        IdentityConfig::DevCa(ca) => {
            nonzero("identity.dev_ca.ttl", ca.ttl)?;
            if let Some(id) = &ca.spiffe_id {
                if id.trust_domain_name() != c.trust_domain.as_str() {
                    return fail(
                        "identity.dev_ca.spiffe_id",
                        format!("\"{id}\" is not in trust_domain \"{}\"", c.trust_domain),
                    );
                }
                if id.is_root() {
                    return fail(
                        "identity.dev_ca.spiffe_id",
                        format!("\"{id}\" has no path; a workload ID needs one"),
                    );
                }
            }
        }
    }
    Ok(())
}

fn inbound(inbound: &InboundConfig) -> Result<(), Invalid> {
    for (list, ports) in [
        ("opaque_ports", &inbound.opaque_ports),
        ("loopback_ports", &inbound.loopback_ports),
    ] {
        if let Some(i) = ports.iter().position(|p| *p == 0) {
            return fail(format!("inbound.{list}[{i}]"), "port 0 is not a port");
        }
    }
    if inbound.port_protocols.contains_key(&0) {
        return fail("inbound.port_protocols", "port 0 is not a port");
    }
    Ok(())
}

/// Trust domains whose peers are accepted and which routes may name: own,
/// federated (files identity) and `inbound.trusted_domains`.
fn known_trust_domains(c: &Config) -> BTreeSet<&TrustDomain> {
    let mut set: BTreeSet<&TrustDomain> = c.inbound.trusted_domains.iter().collect();
    set.insert(&c.trust_domain);
    if let IdentityConfig::Files(f) = &c.identity {
        set.extend(f.federated_bundles.keys());
    }
    set
}

fn outbound(c: &Config) -> Result<(), Invalid> {
    let out = &c.outbound;
    match out.mode {
        OutboundMode::Routes if out.routes.is_empty() => {
            return fail(
                "outbound.routes",
                "at least one route is required when outbound.mode is \"routes\"",
            );
        }
        OutboundMode::Transparent if !out.routes.is_empty() => {
            return fail(
                "outbound.routes",
                "routes are only used when outbound.mode is \"routes\"; set mode: routes",
            );
        }
        _ => {}
    }
    let check_routes_td = !matches!(c.identity, IdentityConfig::WorkloadApi(_));
    let known = known_trust_domains(c);
    for (i, r) in out.routes.iter().enumerate() {
        let path = format!("outbound.routes[{i}].spiffe_id");
        if r.spiffe_id.is_root() {
            return fail(
                path,
                format!("\"{}\" has no path; a workload ID needs one", r.spiffe_id),
            );
        }
        if check_routes_td && !known.contains(&r.spiffe_id.trust_domain()) {
            return fail(
                path,
                format!(
                    "\"{}\" is outside trust_domain \"{}\" and the federated trust domains",
                    r.spiffe_id, c.trust_domain
                ),
            );
        }
    }
    Ok(())
}

/// No two listeners on the same port of the same (or an unspecified) address.
fn listen_addresses(c: &Config) -> Result<(), Invalid> {
    let out = &c.outbound;
    let mut listens: Vec<(String, SocketAddr)> = vec![
        ("inbound.listen".into(), c.inbound.listen),
        ("admin.listen".into(), c.admin.listen),
    ];
    if out.mode == OutboundMode::Transparent {
        listens.insert(1, ("outbound.listen".into(), out.listen));
    }
    for (i, r) in out.routes.iter().enumerate() {
        listens.push((format!("outbound.routes[{i}].listen"), r.listen));
    }
    for (i, (path, addr)) in listens.iter().enumerate() {
        for (other_path, other) in &listens[..i] {
            let clash = addr.port() == other.port()
                && (addr.ip() == other.ip()
                    || addr.ip().is_unspecified()
                    || other.ip().is_unspecified());
            if clash {
                return fail(
                    path.clone(),
                    format!("{addr} conflicts with {other_path} ({other})"),
                );
            }
        }
    }
    Ok(())
}

/// The `policy` section except `shadow` (checked after `log` and `admin`).
fn policy(pol: &PolicyConfig) -> Result<(), Invalid> {
    for (path, q) in [
        ("policy.inbound_query", &pol.inbound_query),
        ("policy.outbound_query", &pol.outbound_query),
    ] {
        if !q.starts_with("data.") || q.len() == "data.".len() {
            return fail(
                path,
                format!("\"{q}\" must be a rule path starting with \"data.\""),
            );
        }
    }
    if pol.body.max_bytes > MAX_BODY_BYTES {
        return fail(
            "policy.body.max_bytes",
            format!(
                "{} is more than the maximum {MAX_BODY_BYTES} (16 MiB)",
                pol.body.max_bytes
            ),
        );
    }
    if pol.body.enabled && pol.body.max_bytes == 0 {
        return fail(
            "policy.body.max_bytes",
            "must be greater than zero when body.enabled",
        );
    }
    if let Some(b) = &pol.bundle {
        http_url("policy.bundle.url", &b.url)?;
        nonzero("policy.bundle.poll", b.poll)?;
    }
    nonzero("policy.eval_timeout", pol.eval_timeout)?;
    nonzero("policy.watch_interval", pol.watch_interval)?;
    if pol.decision_cache > 1 << 20 {
        return fail(
            "policy.decision_cache",
            format!(
                "{} is more than the maximum {}",
                pol.decision_cache,
                1 << 20
            ),
        );
    }
    if pol.max_instructions == 0 {
        return fail("policy.max_instructions", "must be greater than zero");
    }
    Ok(())
}

fn shadow(pol: &PolicyConfig) -> Result<(), Invalid> {
    let Some(shadow) = &pol.shadow else {
        return Ok(());
    };
    if shadow.dir.is_some() == shadow.bundle.is_some() {
        return fail("policy.shadow", "give exactly one of dir and bundle");
    }
    if !(0.0..=1.0).contains(&shadow.fraction) {
        return fail(
            "policy.shadow.fraction",
            format!("{} is not in [0, 1]", shadow.fraction),
        );
    }
    if shadow.queue == 0 {
        return fail("policy.shadow.queue", "must be at least 1");
    }
    Ok(())
}

fn jwt(jwt: &JwtConfig) -> Result<(), Invalid> {
    let mut names = BTreeSet::new();
    for (i, p) in jwt.providers.iter().enumerate() {
        let base = format!("jwt.providers[{i}]");
        if p.name.trim().is_empty() {
            return fail(format!("{base}.name"), "must not be empty");
        }
        if !names.insert(p.name.as_str()) {
            return fail(
                format!("{base}.name"),
                format!("duplicate provider name \"{}\"", p.name),
            );
        }
        if p.issuer.trim().is_empty() {
            return fail(format!("{base}.issuer"), "must not be empty");
        }
        jwks(&base, &p.jwks)?;
        if p.from.is_empty() {
            return fail(
                format!("{base}.from"),
                "at least one token location is required",
            );
        }
        for (j, loc) in p.from.iter().enumerate() {
            match loc {
                TokenLocation::Header { name, .. } => {
                    header_name(&format!("{base}.from[{j}].header"), name)?
                }
                TokenLocation::Query(q) if q.is_empty() => {
                    return fail(format!("{base}.from[{j}].query"), "must not be empty")
                }
                TokenLocation::Cookie(c) if c.is_empty() => {
                    return fail(format!("{base}.from[{j}].cookie"), "must not be empty")
                }
                _ => {}
            }
        }
        for (j, c) in p.claims_to_headers.iter().enumerate() {
            if c.claim.is_empty() {
                return fail(
                    format!("{base}.claims_to_headers[{j}].claim"),
                    "must not be empty",
                );
            }
            header_name(&format!("{base}.claims_to_headers[{j}].header"), &c.header)?;
        }
        if p.payload_in_metadata.is_empty() {
            return fail(format!("{base}.payload_in_metadata"), "must not be empty");
        }
    }
    Ok(())
}

/// One provider's key source (`base` is the provider's path).
fn jwks(base: &str, jwks: &JwksSource) -> Result<(), Invalid> {
    match jwks {
        JwksSource::Url { url, refresh, ca } => {
            http_url(&format!("{base}.jwks.url"), url)?;
            nonzero(&format!("{base}.jwks.refresh"), *refresh)?;
            if ca.as_ref().is_some_and(|c| c.as_os_str().is_empty()) {
                return fail(format!("{base}.jwks.ca"), "must not be empty");
            }
        }
        JwksSource::File { path } if path.as_os_str().is_empty() => {
            return fail(format!("{base}.jwks.file"), "must not be empty");
        }
        JwksSource::Inline(json) if json.trim().is_empty() => {
            return fail(format!("{base}.jwks.inline"), "must not be empty");
        }
        _ => {}
    }
    Ok(())
}

fn limits(l: &LimitsConfig) -> Result<(), Invalid> {
    nonzero("limits.header_timeout", l.header_timeout)?;
    nonzero("limits.idle_timeout", l.idle_timeout)?;
    nonzero("limits.connect_timeout", l.connect_timeout)?;
    nonzero("limits.upstream_timeout", l.upstream_timeout)?;
    if l.max_header_bytes < MIN_HEADER_BYTES {
        return fail(
            "limits.max_header_bytes",
            format!(
                "{} is less than the minimum {MIN_HEADER_BYTES}",
                l.max_header_bytes
            ),
        );
    }
    for (path, v) in [
        ("limits.max_headers", l.max_headers),
        ("limits.max_connections", l.max_connections),
        (
            "limits.max_concurrent_streams",
            l.max_concurrent_streams as usize,
        ),
    ] {
        if v == 0 {
            return fail(path, "must be greater than zero");
        }
    }
    if l.max_connections > MAX_CONNECTIONS {
        return fail(
            "limits.max_connections",
            format!(
                "{} is more than the maximum {MAX_CONNECTIONS}",
                l.max_connections
            ),
        );
    }
    Ok(())
}

fn log_level(log: &LogConfig) -> Result<(), Invalid> {
    if !LOG_LEVELS.contains(&log.level.as_str()) {
        return fail(
            "log.level",
            format!(
                "\"{}\" is not one of \"trace\", \"debug\", \"info\", \"warn\", \"error\"",
                log.level
            ),
        );
    }
    Ok(())
}

fn admin(admin: &AdminConfig) -> Result<(), Invalid> {
    for (i, id) in admin.tap.allowed_principals.iter().enumerate() {
        if let Err(e) = crate::identity::SpiffeId::parse(id) {
            return fail(format!("admin.tap.allowed_principals[{i}]"), e.to_string());
        }
    }
    Ok(())
}
