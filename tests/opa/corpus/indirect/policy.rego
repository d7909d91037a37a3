# Input fields read through data and builtins: the header name comes from data,
# object.get reads another. The decision cache must key on both.
package envoy.authz

import rego.v1

import data.config

headers := input.attributes.request.http.headers

default allow := false

allow if {
	headers[config.user_header] in config.allowed_users
	object.get(headers, config.tenant_header, "none") in config.tenants
}

allow if {
	some name in config.bypass_headers
	headers[name] == "yes"
}
