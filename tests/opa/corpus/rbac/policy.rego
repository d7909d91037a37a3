# HTTP API authorization with roles and grants in data.
package httpapi.authz

import rego.v1

user := input.attributes.request.http.headers["x-user"]

default allow := false

allow if {
	some role in data.rbac.user_roles[user]
	some grant in data.rbac.role_grants[role]
	input.attributes.request.http.method == grant.method
	glob.match(grant.path, ["/"], concat("/", array.concat([""], input.parsed_path)))
}

allow if user in data.rbac.superusers
