# Tests for authz.rego (run with `portcullis policy test policies/` or `opa test policies/`).
package envoy.authz_test

import rego.v1

import data.envoy.authz

frontend := "spiffe://cluster.local/ns/default/sa/frontend"

reporting := "spiffe://cluster.local/ns/default/sa/reporting"

rbac := {
	"roles": {
		"reader": [{"methods": ["GET", "HEAD"], "paths": ["/api/**"]}],
		"writer": [{"methods": ["POST", "PUT", "PATCH"], "paths": ["/api/**"]}],
		"admin": [{"methods": ["GET", "DELETE"], "paths": ["/api/**"]}],
	},
	"bindings": {frontend: ["reader", "writer"], reporting: ["reader"]},
	"jwt_roles": {"admin": ["admin"]},
	"public_paths": ["/healthz"],
}

mesh := {"trust_domain": "cluster.local"}

req(principal, method, path) := {
	"attributes": {
		"source": {"principal": principal},
		"request": {"http": {"method": method, "path": path}},
	},
	"parsed_path": split(trim_prefix(path, "/"), "/"),
}

anonymous(method, path) := {
	"attributes": {"request": {"http": {"method": method, "path": path}}},
	"parsed_path": split(trim_prefix(path, "/"), "/"),
}

with_jwt(r, claims) := object.union(r, {"attributes": {"metadataContext": {"filterMetadata": {"envoy.filters.http.jwt_authn": {"jwt_payload": claims}}}}})

test_reader_may_get if {
	d := authz.allow with input as req(reporting, "GET", "/api/orders")
		with data.rbac as rbac
		with data.mesh as mesh
	d.allowed == true
	d.headers["x-portcullis-role"] == "reader"
}

test_reader_may_not_post if {
	d := authz.allow with input as req(reporting, "POST", "/api/orders")
		with data.rbac as rbac
		with data.mesh as mesh
	d.allowed == false
	d.http_status == 403
	contains(d.reason, "do not permit POST /api/orders")
}

test_writer_may_post if {
	d := authz.allow with input as req(frontend, "POST", "/api/orders")
		with data.rbac as rbac
		with data.mesh as mesh
	d.allowed == true
}

test_delete_needs_admin_jwt if {
	d := authz.allow with input as req(frontend, "DELETE", "/api/orders/1")
		with data.rbac as rbac
		with data.mesh as mesh
	d.allowed == false
}

test_admin_jwt_may_delete if {
	r := with_jwt(req(frontend, "DELETE", "/api/orders/1"), {"sub": "alice", "role": "admin"})
	d := authz.allow with input as r
		with data.rbac as rbac
		with data.mesh as mesh
	d.allowed == true
	d.headers["x-portcullis-role"] == "admin"
}

test_viewer_jwt_may_not_delete if {
	r := with_jwt(req(frontend, "DELETE", "/api/orders/1"), {"sub": "bob", "role": "viewer"})
	d := authz.allow with input as r
		with data.rbac as rbac
		with data.mesh as mesh
	d.allowed == false
}

test_jwt_alone_is_not_enough if {
	r := with_jwt(anonymous("DELETE", "/api/orders/1"), {"sub": "alice", "role": "admin"})
	d := authz.allow with input as r
		with data.rbac as rbac
		with data.mesh as mesh
	d.allowed == false
	d.reason == "no peer identity (mTLS required)"
}

test_health_is_public if {
	d := authz.allow with input as anonymous("GET", "/healthz")
		with data.rbac as rbac
		with data.mesh as mesh
	d.allowed == true
}

test_anonymous_denied if {
	d := authz.allow with input as anonymous("GET", "/api/orders")
		with data.rbac as rbac
		with data.mesh as mesh
	d.allowed == false
}

test_foreign_trust_domain_denied if {
	d := authz.allow with input as req("spiffe://evil.example/ns/default/sa/frontend", "GET", "/api/orders")
		with data.rbac as rbac
		with data.mesh as mesh
	d.allowed == false
	contains(d.reason, "outside trust domain")
}

test_unbound_workload_denied if {
	d := authz.allow with input as req("spiffe://cluster.local/ns/default/sa/other", "GET", "/api/orders")
		with data.rbac as rbac
		with data.mesh as mesh
	d.allowed == false
	d.reason == "spiffe://cluster.local/ns/default/sa/other has no role"
}

test_tcp_connection_denied if {
	d := authz.allow with input as {"attributes": {"source": {"principal": frontend}}}
		with data.rbac as rbac
		with data.mesh as mesh
	d.allowed == false
	d.reason == "no HTTP request"
}
