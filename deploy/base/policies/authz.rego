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
#
# Written for the regorus VM, where every rule call costs about as much as a
# builtin: the rules on the permit path read the input directly instead of
# calling one-line helper rules (those below serve only the deny reason).
# Comprehensions are avoided on purpose: in regorus 0.14 a set comprehension in
# a rule body with an `else` ran away (instruction limit) when the request had
# no HTTP attributes.
package envoy.authz

import rego.v1

allow := {"allowed": true, "headers": {"x-portcullis-role": concat(",", sort(roles))}} if {
	roles := granted
	count(roles) > 0
} else := {
	"allowed": false,
	"http_status": 403,
	"body": sprintf("forbidden: %s\n", [reason]),
	"reason": reason,
}

# --- roles ---------------------------------------------------------------------

# Roles whose grants permit this method on this path, plus "public".
granted contains role if {
	m := input.attributes.request.http.method

	# The decoded request path without the query, from parsed_path, with a
	# trailing slash so "/api/**" matches "/api" and "/api/x" but not "/apix".
	path_slash := concat("", ["/", concat("/", input.parsed_path), "/"])
	some role in caller_roles
	some grant in data.rbac.roles[role]
	m in grant.methods
	some prefix in grant.paths
	startswith(path_slash, trim_suffix(prefix, "**"))
}

granted contains "public" if {
	input.attributes.request.http.method in {"GET", "HEAD"}
	concat("", ["/", concat("/", input.parsed_path)]) in data.rbac.public_paths
}

# Workload roles, for callers that are workloads of our own trust domain.
caller_roles contains role if {
	p := input.attributes.source.principal
	startswith(p, sprintf("spiffe://%s/", [data.mesh.trust_domain]))
	some role in data.rbac.bindings[p]
}

# End-user roles from the verified JWT, for the same callers only.
caller_roles contains role if {
	p := input.attributes.source.principal
	startswith(p, sprintf("spiffe://%s/", [data.mesh.trust_domain]))
	# The claim itself, not the whole payload: decisions are cached on what the
	# policy reads, and the payload's exp/iat change with every token.
	some role in data.rbac.jwt_roles[input.attributes.metadataContext.filterMetadata["envoy.filters.http.jwt_authn"].jwt_payload.role]
}

# --- request facts (for the deny reason) ---------------------------------------

principal := input.attributes.source.principal

method := input.attributes.request.http.method

# The decoded request path without the query, rebuilt from parsed_path.
request_path := concat("", ["/", concat("/", input.parsed_path)])

# The caller is a workload of our own trust domain.
in_mesh if startswith(principal, sprintf("spiffe://%s/", [data.mesh.trust_domain]))

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
