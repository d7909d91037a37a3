# Inbound authorization for the demo services, OPA-Envoy style.
#
# Query: data.envoy.authz.allow (the configured default). It always yields an
# OPA-Envoy result OBJECT, so denials carry a status and a reason:
#
#   permitted: {"allowed": true, "headers": {"x-portcullis-role": "<roles>"}}
#   denied:    {"allowed": false, "http_status": 403, "body": "...", "reason": "..."}
#
# Who may do what lives in data.rbac (data.yaml): workload SPIFFE IDs are bound
# to roles, roles grant methods on path prefixes ("/api/**": /api and below).
# Prefixes rather than glob.match keep a decision fast: regorus compiles the
# glob on every call (≈2x the evaluation time). End users add roles through the
# `role` claim of their verified JWT (jwt_authn metadata), e.g. `admin` may DELETE.
package envoy.authz

import rego.v1

allow := {"allowed": true, "headers": {"x-portcullis-role": concat(",", sort(granted))}} if {
	count(granted) > 0
} else := {
	"allowed": false,
	"http_status": 403,
	"body": sprintf("forbidden: %s\n", [reason]),
	"reason": reason,
}

# --- request facts -----------------------------------------------------------

principal := input.attributes.source.principal

method := input.attributes.request.http.method

# The decoded request path without the query, rebuilt from parsed_path.
request_path := concat("/", array.concat([""], input.parsed_path))

# With a trailing slash, so "/api/**" matches "/api" and "/api/x" but not "/apix".
request_path_slash := concat("", [request_path, "/"])

jwt := input.attributes.metadataContext.filterMetadata["envoy.filters.http.jwt_authn"].jwt_payload

# The caller is a workload of our own trust domain.
in_mesh if startswith(principal, sprintf("spiffe://%s/", [data.mesh.trust_domain]))

# --- roles ---------------------------------------------------------------------

caller_roles contains role if {
	in_mesh
	some role in data.rbac.bindings[principal]
}

caller_roles contains role if {
	in_mesh
	some role in data.rbac.jwt_roles[jwt.role]
}

# Roles whose grants permit this method on this path, plus "public".
granted contains role if {
	some role in caller_roles
	some grant in data.rbac.roles[role]
	method in grant.methods
	some prefix in grant.paths
	startswith(request_path_slash, trim_suffix(prefix, "**"))
}

granted contains "public" if {
	method in {"GET", "HEAD"}
	request_path in data.rbac.public_paths
}

# --- why not -------------------------------------------------------------------

reason := "no HTTP request" if {
	not method
} else := "no peer identity (mTLS required)" if {
	not principal
} else := sprintf("%s is outside trust domain %s", [principal, data.mesh.trust_domain]) if {
	not in_mesh
} else := sprintf("%s has no role", [principal]) if {
	count(caller_roles) == 0
} else := sprintf("roles %v of %s do not permit %s %s", [sort(caller_roles), principal, method, request_path])
