# An else chain choosing a tier, parsed_query, and an object result.
package envoy.authz

import rego.v1

tier := "admin" if {
	input.attributes.request.http.headers["x-user"] == "alice"
} else := "member" if {
	input.attributes.request.http.headers["x-user"] in {"bob", "carol"}
} else := "anonymous"

limit := 100 if tier == "admin"

limit := 10 if tier == "member"

limit := 0 if tier == "anonymous"

requested := to_number(input.parsed_query.n[0]) if input.parsed_query.n

requested := 1 if not input.parsed_query.n

allow := {"allowed": true, "headers": {"x-tier": tier}} if {
	requested <= limit
} else := {"allowed": false, "http_status": 429, "body": sprintf("%s may ask for %d", [tier, limit])}
