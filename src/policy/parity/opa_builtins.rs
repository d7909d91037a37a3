//! OPA's builtins and how portcullis provides each: the list of every OPA
//! builtin, the list of those refused at load (with why), and the README table.

use std::collections::BTreeMap;

/// Builtins OPA has and portcullis does not: a call is refused at load with this
/// explanation rather than failing (and denying) at evaluation time.
pub const OPA_BUILTINS_REFUSED: &[(&str, &str)] = &[
    (
        "crypto.x509.parse_and_verify_certificates_with_options",
        "not implemented",
    ),
    ("crypto.x509.parse_certificate_request", "not implemented"),
    ("crypto.x509.parse_keypair", "not implemented"),
    ("crypto.parse_private_keys", "not implemented"),
    ("graphql.is_valid", "no GraphQL parser"),
    ("graphql.parse", "no GraphQL parser"),
    ("graphql.parse_and_verify", "no GraphQL parser"),
    ("graphql.parse_query", "no GraphQL parser"),
    ("graphql.parse_schema", "no GraphQL parser"),
    ("graphql.schema_is_valid", "no GraphQL parser"),
    (
        "net.lookup_ip_addr",
        "the sidecar does not resolve names while deciding",
    ),
    (
        "providers.aws.sign_req",
        "the sidecar does not sign outgoing requests while deciding",
    ),
    (
        "rego.parse_module",
        "regorus' syntax tree differs from OPA's",
    ),
    ("any", "deprecated in OPA; Rego v1 refuses it"),
    ("all", "deprecated in OPA; Rego v1 refuses it"),
    ("re_match", "deprecated in OPA: use regex.match"),
    ("set_diff", "deprecated in OPA: use the `-` operator"),
    (
        "net.cidr_overlap",
        "deprecated in OPA: use net.cidr_contains",
    ),
    ("cast_array", "deprecated in OPA"),
    ("cast_boolean", "deprecated in OPA"),
    ("cast_null", "deprecated in OPA"),
    ("cast_object", "deprecated in OPA"),
    ("cast_set", "deprecated in OPA"),
    ("cast_string", "deprecated in OPA"),
    (
        "crypto.x509.parse_and_verify_certificates",
        "its result is Go's x509.Certificate as JSON: raw DER fields, Go's enum numbers, pkix.Name and key internals, which portcullis does not reproduce",
    ),
    (
        "rego.metadata.chain",
        "supported only with annotations of title, description, custom and scope (rule, document, package)",
    ),
    (
        "rego.metadata.rule",
        "supported only with annotations of title, description, custom and scope (rule, document, package)",
    ),
];

/// Every OPA (1.x) builtin function called by name (operators such as `==` and
/// `+` and OPA's `internal.*` helpers left out), for the README table.
pub const OPA_BUILTINS: &[&str] = &[
    "abs",
    "all",
    "any",
    "array.concat",
    "array.flatten",
    "array.reverse",
    "array.slice",
    "base64.decode",
    "base64.encode",
    "base64.is_valid",
    "base64url.decode",
    "base64url.encode",
    "base64url.encode_no_pad",
    "bits.and",
    "bits.lsh",
    "bits.negate",
    "bits.or",
    "bits.rsh",
    "bits.xor",
    "cast_array",
    "cast_boolean",
    "cast_null",
    "cast_object",
    "cast_set",
    "cast_string",
    "ceil",
    "concat",
    "contains",
    "count",
    "crypto.hmac.equal",
    "crypto.hmac.md5",
    "crypto.hmac.sha1",
    "crypto.hmac.sha256",
    "crypto.hmac.sha512",
    "crypto.md5",
    "crypto.parse_private_keys",
    "crypto.sha1",
    "crypto.sha256",
    "crypto.x509.parse_and_verify_certificates",
    "crypto.x509.parse_and_verify_certificates_with_options",
    "crypto.x509.parse_certificate_request",
    "crypto.x509.parse_certificates",
    "crypto.x509.parse_keypair",
    "crypto.x509.parse_rsa_private_key",
    "endswith",
    "floor",
    "format_int",
    "glob.match",
    "glob.quote_meta",
    "graph.reachable",
    "graph.reachable_paths",
    "graphql.is_valid",
    "graphql.parse",
    "graphql.parse_and_verify",
    "graphql.parse_query",
    "graphql.parse_schema",
    "graphql.schema_is_valid",
    "hex.decode",
    "hex.encode",
    "http.send",
    "indexof",
    "indexof_n",
    "intersection",
    "io.jwt.decode",
    "io.jwt.decode_verify",
    "io.jwt.encode_sign",
    "io.jwt.encode_sign_raw",
    "io.jwt.verify_eddsa",
    "io.jwt.verify_es256",
    "io.jwt.verify_es384",
    "io.jwt.verify_es512",
    "io.jwt.verify_hs256",
    "io.jwt.verify_hs384",
    "io.jwt.verify_hs512",
    "io.jwt.verify_ps256",
    "io.jwt.verify_ps384",
    "io.jwt.verify_ps512",
    "io.jwt.verify_rs256",
    "io.jwt.verify_rs384",
    "io.jwt.verify_rs512",
    "is_array",
    "is_boolean",
    "is_null",
    "is_number",
    "is_object",
    "is_set",
    "is_string",
    "json.filter",
    "json.is_valid",
    "json.marshal",
    "json.marshal_with_options",
    "json.match_schema",
    "json.patch",
    "json.remove",
    "json.unmarshal",
    "json.verify_schema",
    "lower",
    "max",
    "min",
    "net.cidr_contains",
    "net.cidr_contains_matches",
    "net.cidr_expand",
    "net.cidr_intersects",
    "net.cidr_is_valid",
    "net.cidr_merge",
    "net.cidr_overlap",
    "net.lookup_ip_addr",
    "numbers.range",
    "numbers.range_step",
    "object.filter",
    "object.get",
    "object.keys",
    "object.remove",
    "object.subset",
    "object.union",
    "object.union_n",
    "opa.runtime",
    "print",
    "product",
    "providers.aws.sign_req",
    "rand.intn",
    "re_match",
    "regex.find_all_string_submatch_n",
    "regex.find_n",
    "regex.globs_match",
    "regex.is_valid",
    "regex.match",
    "regex.replace",
    "regex.split",
    "regex.template_match",
    "rego.metadata.chain",
    "rego.metadata.rule",
    "rego.parse_module",
    "replace",
    "round",
    "semver.compare",
    "semver.is_valid",
    "set_diff",
    "sort",
    "split",
    "sprintf",
    "startswith",
    "strings.any_prefix_match",
    "strings.any_suffix_match",
    "strings.count",
    "strings.render_template",
    "strings.replace_n",
    "strings.reverse",
    "strings.split_n",
    "substring",
    "sum",
    "time.add_date",
    "time.clock",
    "time.date",
    "time.diff",
    "time.format",
    "time.now_ns",
    "time.parse_duration_ns",
    "time.parse_ns",
    "time.parse_rfc3339_ns",
    "time.weekday",
    "to_number",
    "trace",
    "trim",
    "trim_left",
    "trim_prefix",
    "trim_right",
    "trim_space",
    "trim_suffix",
    "type_name",
    "union",
    "units.parse",
    "units.parse_bytes",
    "upper",
    "urlquery.decode",
    "urlquery.decode_object",
    "urlquery.encode",
    "urlquery.encode_object",
    "uuid.parse",
    "uuid.rfc4122",
    "walk",
    "yaml.is_valid",
    "yaml.marshal",
    "yaml.unmarshal",
];

/// How portcullis provides the OPA builtin `name`: `Ok` with who implements it,
/// or `Err` with why a call to it is refused at load.
pub fn builtin_support(name: &str) -> Result<&'static str, String> {
    if name == "print" || regorus::unstable::BUILTINS.contains_key(name) {
        return Ok("regorus");
    }
    if crate::policy::builtins::arity(name).is_some()
        || matches!(name, "rego.metadata.rule" | "rego.metadata.chain")
    {
        return Ok("portcullis");
    }
    Err(OPA_BUILTINS_REFUSED
        .iter()
        .find(|(n, _)| *n == name)
        .map_or_else(|| "not provided".to_string(), |(_, why)| (*why).to_string()))
}

/// The README's table of OPA builtins, one row per namespace.
pub fn builtin_table() -> String {
    let mut rows: BTreeMap<&str, (Vec<&str>, Vec<String>)> = BTreeMap::new();
    for name in OPA_BUILTINS {
        let namespace = match name.rsplit_once('.') {
            Some((ns, _)) if !ns.is_empty() => ns,
            _ => "(top level)",
        };
        let row = rows.entry(namespace).or_default();
        match builtin_support(name) {
            Ok(_) => row.0.push(name),
            Err(why) => row.1.push(format!("`{name}` ({why})")),
        }
    }
    let mut out =
        String::from("| namespace | supported | refused at load (why) |\n|---|---|---|\n");
    for (ns, (ok, refused)) in rows {
        let ok: Vec<String> = ok.iter().map(|n| format!("`{n}`")).collect();
        out.push_str(&format!(
            "| {ns} | {} | {} |\n",
            ok.join(", "),
            refused.join(", ")
        ));
    }
    out
}
