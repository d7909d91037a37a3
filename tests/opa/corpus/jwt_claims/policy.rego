# Claims read without verification (the output-argument call form), scopes
# checked with `every`, a set comprehension.
package envoy.authz

import rego.v1

bearer := t if {
	v := input.attributes.request.http.headers.authorization
	startswith(v, "Bearer ")
	t := substring(v, 7, -1)
}

claims := payload if {
	io.jwt.decode(bearer, [_, payload, _])
}

scopes := {s | some s in claims.scope}

default allow := false

allow if {
	claims.role == "admin"
}

allow if {
	input.attributes.request.http.method == "GET"
	every s in ["read"] {
		s in scopes
	}
}
