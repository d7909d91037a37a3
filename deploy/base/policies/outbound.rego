# Outbound (egress) authorization.
#
# Query: data.portcullis.outbound.allow — a boolean. Destinations inside the
# mesh (the peer proved a SPIFFE ID of our trust domain) are allowed; anything
# else must be on the egress allow-list in data.egress (data.yaml), by HTTP host
# or by address and port.
package portcullis.outbound

import rego.v1

default allow := false

allow if startswith(
	input.attributes.destination.principal,
	sprintf("spiffe://%s/", [data.mesh.trust_domain]),
)

allow if {
	some pattern in data.egress.hosts
	glob.match(pattern, ["."], host)
}

allow if {
	some entry in data.egress.addresses
	net.cidr_contains(entry.cidr, input.attributes.destination.address.socketAddress.address)
	input.attributes.destination.address.socketAddress.portValue in entry.ports
}

# The HTTP host without a port, lower-cased.
host := lower(trim_suffix(h, sprintf(":%s", [split(h, ":")[1]]))) if {
	h := input.attributes.request.http.host
	contains(h, ":")
} else := lower(input.attributes.request.http.host)
