# Builtins HTTP-authorization policies use: digests, HMAC signatures, CIDRs.
package envoy.authz

import rego.v1

headers := input.attributes.request.http.headers

default allow := false

allow if {
	sig := crypto.hmac.sha256(input.attributes.request.http.path, "shared-secret")
	crypto.hmac.equal(sig, headers["x-signature"])
}

allow if {
	net.cidr_contains("10.0.0.0/8", headers["x-real-ip"])
	crypto.sha256(headers["x-user"]) == data.hashes.alice
}

allow if {
	count(net.cidr_contains_matches(["192.168.0.0/16", "172.16.0.0/12"], headers["x-real-ip"])) > 0
	crypto.md5(headers["x-user"]) == data.hashes.bob_md5
}

# A request path whose language meets a glob-like pattern of internal paths.
allow if {
	regex.globs_match(input.attributes.request.http.path, "/int.*/[a-c]+")
}
