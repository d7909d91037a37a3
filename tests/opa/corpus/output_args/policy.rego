# The output-argument call form: a relation (walk), a builtin and an extension.
package envoy.authz

import rego.v1

import input.attributes.request.http as req

app_headers contains name if {
	walk(req.headers, [[name], _])
	startswith(name, "x-app-")
}

claims := payload if {
	[_, token] := split(req.headers.authorization, " ")
	io.jwt.decode(token, [_, payload, _])
}

default allow := false

allow if {
	count(app_headers, n)
	n >= 2
}

allow if {
	claims.role == "guest"
	split(req.path, "/", parts)
	parts[1] == "public"
}
