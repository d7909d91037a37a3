//! RequestAuthentication → `jwt.providers` entries for the configuration
//! fragment, and the `istio.authn` module that tells policies which issuers
//! apply to this workload (Istio only authenticates a token for the workloads a
//! RequestAuthentication selects, so claims from other issuers are not used).

use std::fmt::Write as _;

use super::model::{JwtRule, RequestAuthenticationSpec};
use super::rego_gen::{body, quote, selection_lines, GENERATED};
use super::{ImportError, Resource};

/// One validated RequestAuthentication.
pub struct RequestAuthn {
    pub resource: String,
    pub namespace: String,
    pub root: bool,
    pub labels: Vec<(String, String)>,
    /// Provider YAML entries (each a list item, already indented by two spaces).
    pub providers: Vec<String>,
    pub issuers: Vec<String>,
}

/// Validates `res` and translates its `jwtRules`.
pub fn parse(res: &Resource, root_namespace: &str) -> Result<RequestAuthn, ImportError> {
    let spec: RequestAuthenticationSpec = res.spec()?;
    if spec.target_ref.is_some() || spec.target_refs.is_some() {
        return Err(res.unsupported(
            "spec.targetRef",
            "targets gateways and waypoints; a portcullis sidecar is selected with spec.selector",
        ));
    }
    let mut providers = Vec::new();
    let mut issuers = Vec::new();
    for (i, rule) in spec.jwt_rules.iter().enumerate() {
        let name = format!("{}-{}-{i}", res.namespace, res.name);
        providers.push(provider(res, &format!("spec.jwtRules[{i}]"), &name, rule)?);
        issuers.push(rule.issuer.clone());
    }
    Ok(RequestAuthn {
        resource: res.label(),
        namespace: res.namespace.clone(),
        root: res.namespace == root_namespace,
        labels: spec
            .selector
            .map(|s| s.match_labels.into_iter().collect())
            .unwrap_or_default(),
        providers,
        issuers,
    })
}

fn provider(res: &Resource, at: &str, name: &str, r: &JwtRule) -> Result<String, ImportError> {
    let refuse = |field: &str, why: &str| res.unsupported(&format!("{at}.{field}"), why);
    if r.issuer.is_empty() {
        return Err(res.invalid(&format!("{at}.issuer"), "is required"));
    }
    if r.output_payload_to_header.is_some() {
        return Err(refuse(
            "outputPayloadToHeader",
            "portcullis copies single claims (outputClaimToHeaders), not the whole payload",
        ));
    }
    if r.timeout.is_some() {
        return Err(refuse(
            "timeout",
            "portcullis's JWKS fetch timeout is not configurable per provider",
        ));
    }
    if r.space_delimited_claims.is_some() {
        return Err(refuse(
            "spaceDelimitedClaims",
            "portcullis matches claims as JSON strings and lists",
        ));
    }
    let jwks =
        match (&r.jwks_uri, &r.jwks) {
            (Some(_), Some(_)) => {
                return Err(res.invalid(&format!("{at}.jwks"), "set jwksUri or jwks, not both"))
            }
            (Some(uri), None) => format!("{{url: {}}}", quote(uri)),
            (None, Some(inline)) => format!("{{inline: {}}}", quote(inline)),
            (None, None) => return Err(refuse(
                "jwksUri",
                "OpenID discovery from the issuer is not done by portcullis: set jwksUri or jwks",
            )),
        };
    let mut y = format!(
        "  # {} {at}\n  - name: {}\n    issuer: {}\n",
        res.label(),
        quote(name),
        quote(&r.issuer)
    );
    if !r.audiences.is_empty() {
        let a: Vec<String> = r.audiences.iter().map(|s| quote(s)).collect();
        let _ = writeln!(y, "    audiences: [{}]", a.join(", "));
    }
    let _ = writeln!(y, "    jwks: {jwks}");
    let mut from = Vec::new();
    for h in &r.from_headers {
        if h.name.is_empty() {
            return Err(res.invalid(&format!("{at}.fromHeaders"), "a header needs a name"));
        }
        from.push(format!(
            "{{header: {}, prefix: {}}}",
            quote(&h.name.to_ascii_lowercase()),
            quote(&h.prefix)
        ));
    }
    from.extend(
        r.from_params
            .iter()
            .map(|p| format!("{{query: {}}}", quote(p))),
    );
    from.extend(
        r.from_cookies
            .iter()
            .map(|c| format!("{{cookie: {}}}", quote(c))),
    );
    if !from.is_empty() {
        let _ = writeln!(y, "    from: [{}]", from.join(", "));
    }
    if r.forward_original_token {
        y.push_str("    forward: true\n");
    }
    if !r.output_claim_to_headers.is_empty() {
        let c: Vec<String> = r
            .output_claim_to_headers
            .iter()
            .map(|c| {
                format!(
                    "{{claim: {}, header: {}}}",
                    quote(&c.claim),
                    quote(&c.header)
                )
            })
            .collect();
        let _ = writeln!(y, "    claims_to_headers: [{}]", c.join(", "));
    }
    Ok(y)
}

/// The `istio.authn` module: `issuers`, the issuers whose tokens count for this workload.
pub fn module(all: &[RequestAuthn]) -> String {
    let mut out = format!(
        "{GENERATED}\n#\n# Issuers whose verified tokens count for this workload: those of the\n\
         # RequestAuthentications that select it. Claims of other issuers are ignored.\n\
         package istio.authn\n\nimport rego.v1\n\nimport data.istio.workload\n"
    );
    let mut any = false;
    for ra in all {
        for iss in &ra.issuers {
            any = true;
            let _ = write!(out, "\n# {}\nissuers contains {}", ra.resource, quote(iss));
            out.push_str(&body(&selection_lines(&ra.namespace, ra.root, &ra.labels)));
        }
    }
    if !any {
        out.push_str("\n# No RequestAuthentication was imported.\nissuers := set()\n");
    }
    out
}
