# Deny reasons as a partial set, the decision as a partial object.
package envoy.authz

import rego.v1

deny contains "admin paths need x-user root" if {
	input.parsed_path[0] == "admin"
	input.attributes.request.http.headers["x-user"] != "root"
}

deny contains "writes need a tenant" if {
	input.attributes.request.http.method != "GET"
	not input.attributes.request.http.headers["x-tenant"]
}

deny contains sprintf("method %s not allowed", [m]) if {
	m := input.attributes.request.http.method
	not m in {"GET", "POST"}
}

result["allowed"] := count(deny) == 0

result["body"] := concat("; ", sort(deny)) if count(deny) > 0

result["http_status"] := 403 if count(deny) > 0
