# Tests for outbound.rego (run with `portcullis policy test policies/` or `opa test policies/`).
package portcullis.outbound_test

import rego.v1

import data.portcullis.outbound

egress := {
	"hosts": ["api.github.com", "*.googleapis.com"],
	"addresses": [{"cidr": "10.96.0.10/32", "ports": [53]}],
}

mesh := {"trust_domain": "cluster.local"}

dest(address, port) := {"attributes": {"destination": {"address": {"socketAddress": {"address": address, "portValue": port}}}}}

test_mesh_peer_allowed if {
	r := object.union(dest("10.1.0.9", 8080), {"attributes": {"destination": {"principal": "spiffe://cluster.local/ns/default/sa/backend"}}})
	outbound.allow with input as r with data.egress as egress with data.mesh as mesh
}

test_foreign_peer_denied if {
	r := object.union(dest("10.1.0.9", 8080), {"attributes": {"destination": {"principal": "spiffe://other.example/ns/x/sa/y"}}})
	not outbound.allow with input as r with data.egress as egress with data.mesh as mesh
}

test_unknown_address_denied if {
	not outbound.allow with input as dest("93.184.216.34", 443) with data.egress as egress with data.mesh as mesh
}

test_allowed_host if {
	r := object.union(dest("140.82.112.5", 443), {"attributes": {"request": {"http": {"host": "API.github.com:443"}}}})
	outbound.allow with input as r with data.egress as egress with data.mesh as mesh
}

test_wildcard_host if {
	r := object.union(dest("142.250.1.1", 443), {"attributes": {"request": {"http": {"host": "storage.googleapis.com"}}}})
	outbound.allow with input as r with data.egress as egress with data.mesh as mesh
}

test_wildcard_is_one_label if {
	r := object.union(dest("142.250.1.1", 443), {"attributes": {"request": {"http": {"host": "a.b.googleapis.com"}}}})
	not outbound.allow with input as r with data.egress as egress with data.mesh as mesh
}

test_allowed_address_and_port if {
	outbound.allow with input as dest("10.96.0.10", 53) with data.egress as egress with data.mesh as mesh
}

test_allowed_address_wrong_port if {
	not outbound.allow with input as dest("10.96.0.10", 80) with data.egress as egress with data.mesh as mesh
}
