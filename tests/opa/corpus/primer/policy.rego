# The OPA-Envoy primer's shape: a result object assembled from partial rules,
# a bearer token verified with io.jwt.decode_verify, an import alias.
package envoy.authz

import rego.v1

import input.attributes.request.http as http_request

default allow := false

allow if {
	http_request.method == "GET"
	glob.match("/public/*", ["/"], http_request.path)
}

allow if {
	is_token_valid
	action_allowed
}

is_token_valid if {
	token.valid
	token.payload.iss == "https://idp.test"
}

action_allowed if {
	http_request.method == "GET"
	token.payload.role == "guest"
	glob.match("/api/*", ["/"], http_request.path)
}

action_allowed if {
	http_request.method in {"POST", "DELETE"}
	token.payload.role == "admin"
	startswith(http_request.path, "/api/")
}

token := {"valid": valid, "payload": payload} if {
	[_, encoded] := split(http_request.headers.authorization, " ")
	[valid, _, payload] := io.jwt.decode_verify(encoded, {"cert": data.keys.cert, "aud": "orders", "time": time.now_ns()})
}

result["allowed"] := allow

result["headers"] := {"x-ext-auth-allow": "yes"} if allow

result["http_status"] := 403 if not allow

result["body"] := "unauthorized request" if not allow
