# Comprehensions over headers and data, `every` over path segments, a function
# with several definitions.
package envoy.authz

import rego.v1

segments := [s | some s in input.parsed_path; s != ""]

safe_segment(s) if regex.match(`^[a-z0-9]+$`, s)

reserved(s) if s in data.reserved

reserved(s) if startswith(s, "_")

x_headers := {k | some k, _ in input.attributes.request.http.headers; startswith(k, "x-app-")}

default allow := false

allow if {
	count(segments) > 0
	every s in segments {
		safe_segment(s)
		not reserved(s)
	}
	count(x_headers) <= 2
}
