#
# Istio's matching rules over portcullis's OPA-Envoy input document, shared by
# every imported AuthorizationPolicy (istio/authz/...).
package istio.lib

import rego.v1

# The request is HTTP (opaque TCP connections have no attributes.request).
http if input.attributes.request.http

# Istio's string match: "*" matches any non-empty value, "abc*" a prefix,
# "*abc" a suffix (a leading "*" wins), anything else the exact value.
string_match(pattern, value) if {
	pattern == "*"
	value != ""
}

string_match(pattern, value) if {
	pattern != "*"
	startswith(pattern, "*")
	endswith(value, substring(pattern, 1, -1))
}

string_match(pattern, value) if {
	not startswith(pattern, "*")
	endswith(pattern, "*")
	startswith(value, trim_suffix(pattern, "*"))
}

string_match(pattern, value) if {
	not startswith(pattern, "*")
	not endswith(pattern, "*")
	pattern == value
}

any_match(patterns, value) if {
	some p in patterns
	string_match(p, value)
}

# The peer's verified SPIFFE ID (mTLS only), and Istio's form of it without "spiffe://".
peer_id := p if {
	p := input.attributes.source.principal
	startswith(p, "spiffe://")
}

principal := trim_prefix(peer_id, "spiffe://")

# source.principals / notPrincipals / when source.principal.
principal_in(patterns) if any_match(patterns, principal)

# source.namespaces / when source.namespace: Istio matches the SPIFFE ID against
# ".*/ns/<namespace>/.*", a "*" in the namespace matching anything.
namespace_in(patterns) if {
	some p in patterns
	regex.match(concat("", ["^.*/ns/", replace(p, "*", ".*"), "/.*$"]), peer_id)
}

# source.serviceAccounts ("<namespace>/<service account>").
service_account_in(accounts) if {
	some a in accounts
	parts := split(a, "/")
	endswith(peer_id, concat("", ["/ns/", parts[0], "/sa/", parts[1]]))
}

# source.ipBlocks / when source.ip: the direct peer's address. remoteIpBlocks /
# remote.ip: the same address (portcullis does not trust X-Forwarded-For).
source_ip := input.attributes.source.address.socketAddress.address

ip_in(cidrs, ip) if {
	some c in cidrs
	net.cidr_contains(c, ip)
}

destination_ip := input.attributes.destination.address.socketAddress.address

destination_port := input.attributes.destination.address.socketAddress.portValue

# operation.ports / when destination.port.
port_in(ports) if destination_port in ports

# operation.methods: exact, prefix or suffix as written (case-sensitive).
method_in(patterns) if any_match(patterns, input.attributes.request.http.method)

# operation.hosts: the Host (:authority) header, compared case-insensitively.
host_in(patterns) if any_match(patterns, lower(input.attributes.request.http.host))

# operation.paths: the normalised path without the query. Templates ({*}, {**})
# arrive as regular expressions compiled by the importer.
path := split(input.attributes.request.http.path, "?")[0]

path_in(patterns, templates) if any_match(patterns, path)

path_in(patterns, templates) if {
	some t in templates
	regex.match(t, path)
}

# when request.headers[name]: "*" means the header is present (even empty).
header_in(name, patterns) if {
	"*" in patterns
	input.attributes.request.http.headers[name]
}

header_in(name, patterns) if any_match(patterns, input.attributes.request.http.headers[name])

# The verified JWT payload, when its issuer has a RequestAuthentication that
# selects this workload (istio/authn.rego).
claims := c if {
	c := input.attributes.metadataContext.filterMetadata["envoy.filters.http.jwt_authn"].jwt_payload
	c.iss in data.istio.authn.issuers
}

# requestPrincipals / request.auth.principal: "<iss>/<sub>".
request_principal := concat("/", [claims.iss, claims.sub]) if {
	is_string(claims.iss)
	is_string(claims.sub)
}

request_principal_in(patterns) if any_match(patterns, request_principal)

# A claim's string values: the string itself, or the strings of a list.
claim_strings(v) := [v] if is_string(v)

claim_strings(v) := [s | some s in v; is_string(s)] if is_array(v)

# request.auth.claims[a][b]...: any of the claim's strings matches.
claim_in(path, patterns) if {
	some s in claim_strings(object.get(claims, path, null))
	any_match(patterns, s)
}

# request.auth.audiences: any `aud` value matches.
audience_in(patterns) if claim_in(["aud"], patterns)

# request.auth.presenter: the `azp` claim.
presenter_in(patterns) if {
	is_string(claims.azp)
	any_match(patterns, claims.azp)
}
