"""Envoy bootstrap configurations for the benchmark and the interop test.

Written for this project (Envoy v3 API, 1.40). The inbound side is the Envoy
equivalent of a portcullis inbound sidecar running the example policy in
policies/ (authz.rego + data.yaml):

- mTLS: the client certificate must chain to the mesh CA and carry a URI SAN in
  the trust domain (match_typed_subject_alt_names, URI prefix);
- jwt_authn: the ES256 provider (issuer, audience, local JWKS), a missing token is
  allowed, an invalid one is answered 401 (portcullis does the same);
- rbac: the role bindings of policies/data.yaml as RBAC policies;
- path normalisation and slash merging, XFCC set from the verified peer.

The outbound side listens on a local port for the app's plain HTTP and reaches
the peer over mTLS with HTTP/2 (ALPN h2), pinning the peer's SPIFFE ID.

Configurations are JSON (a YAML superset Envoy accepts with a .json name).
"""

import json

TRUST_DOMAIN = "cluster.local"


def _addr(host, port):
    return {"socket_address": {"address": host, "port_value": port}}


def _tls_files(d):
    return {
        "certificate_chain": {"filename": f"{d}/tls.crt"},
        "private_key": {"filename": f"{d}/tls.key"},
    }


def _uri_matcher(match):
    return [{"san_type": "URI", "matcher": match}]


def _methods(ms):
    return {"or_rules": {"rules": [{"header": {"name": ":method", "string_match": {"exact": m}}} for m in ms]}}


def _prefixes(globs):
    """'/api/**' -> the path /api itself or anything under /api/."""
    rules = []
    for g in globs:
        base = g[: -len("/**")] if g.endswith("/**") else g
        rules.append({"url_path": {"path": {"exact": base}}})
        rules.append({"url_path": {"path": {"prefix": base + "/"}}})
    return {"or_rules": {"rules": rules}}


def rbac_from_data(data):
    """RBAC policies equivalent to authz.rego over data.yaml's `rbac` section."""
    rbac = data["rbac"]
    roles = rbac["roles"]
    policies = {}

    def grants(role):
        return [{"and_rules": {"rules": [_methods(g["methods"]), _prefixes(g["paths"])]}} for g in roles[role]]

    # Workload bindings: principal -> roles.
    for i, (principal, bound) in enumerate(sorted(rbac.get("bindings", {}).items())):
        perms = [p for r in bound for p in grants(r)]
        policies[f"binding-{i}"] = {
            "permissions": [{"or_rules": {"rules": perms}}],
            "principals": [{"authenticated": {"principal_name": {"exact": principal}}}],
        }
    # End-user roles from the verified JWT `role` claim, for mesh callers only.
    for i, (claim, bound) in enumerate(sorted(rbac.get("jwt_roles", {}).items())):
        perms = [p for r in bound for p in grants(r)]
        policies[f"jwt-role-{i}"] = {
            "permissions": [{"or_rules": {"rules": perms}}],
            "principals": [
                {
                    "and_ids": {
                        "ids": [
                            {"authenticated": {"principal_name": {"prefix": f"spiffe://{TRUST_DOMAIN}/"}}},
                            {
                                "metadata": {
                                    "filter": "envoy.filters.http.jwt_authn",
                                    "path": [{"key": "jwt_payload"}, {"key": "role"}],
                                    "value": {"string_match": {"exact": claim}},
                                }
                            },
                        ]
                    }
                }
            ],
        }
    # Public paths: GET/HEAD for anyone.
    if rbac.get("public_paths"):
        policies["public"] = {
            "permissions": [
                {
                    "and_rules": {
                        "rules": [
                            _methods(["GET", "HEAD"]),
                            {"or_rules": {"rules": [{"url_path": {"path": {"exact": p}}} for p in rbac["public_paths"]]}},
                        ]
                    }
                }
            ],
            "principals": [{"any": True}],
        }
    return {"action": "ALLOW", "policies": policies}


def _admin(port):
    return {"address": _addr("127.0.0.1", port)}


def inbound(*, listen_port, admin_port, app_port, pki_dir, jwt=None, rbac=None, peer_match=None):
    """An inbound sidecar: mTLS listener -> [jwt_authn] -> [rbac] -> router -> app.

    pki_dir: the directory with the sidecar's tls.crt, tls.key, ca.crt.
    jwt: {"issuer", "audiences", "jwks"(text)} or None. rbac: the RBAC config or None.
    peer_match: the SAN matcher for client certificates (default: URI prefix of the trust domain).
    """
    match = peer_match or {"prefix": f"spiffe://{TRUST_DOMAIN}/"}
    http_filters = []
    if jwt:
        http_filters.append(
            {
                "name": "envoy.filters.http.jwt_authn",
                "typed_config": {
                    "@type": "type.googleapis.com/envoy.extensions.filters.http.jwt_authn.v3.JwtAuthentication",
                    "providers": {
                        "corp": {
                            "issuer": jwt["issuer"],
                            "audiences": jwt["audiences"],
                            "local_jwks": {"inline_string": jwt["jwks"]},
                            "from_headers": [{"name": "authorization", "value_prefix": "Bearer "}],
                            "forward": False,
                            "payload_in_metadata": "jwt_payload",
                            # Like portcullis, verify a repeated token's signature once
                            # (Envoy's verified-token cache; claims still checked).
                            "jwt_cache_config": {"jwt_cache_size": 1024},
                        }
                    },
                    "rules": [
                        {
                            "match": {"prefix": "/"},
                            "requires": {
                                "requires_any": {
                                    "requirements": [{"provider_name": "corp"}, {"allow_missing": {}}]
                                }
                            },
                        }
                    ],
                },
            }
        )
    if rbac:
        http_filters.append(
            {
                "name": "envoy.filters.http.rbac",
                "typed_config": {
                    "@type": "type.googleapis.com/envoy.extensions.filters.http.rbac.v3.RBAC",
                    "rules": rbac,
                },
            }
        )
    http_filters.append(
        {
            "name": "envoy.filters.http.router",
            "typed_config": {"@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"},
        }
    )
    hcm = {
        "@type": "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager",
        "stat_prefix": "inbound",
        "codec_type": "AUTO",
        "normalize_path": True,
        "merge_slashes": True,
        "forward_client_cert_details": "SANITIZE_SET",
        "set_current_client_cert_details": {"uri": True},
        "route_config": {
            "name": "inbound",
            "virtual_hosts": [
                {"name": "app", "domains": ["*"], "routes": [{"match": {"prefix": "/"}, "route": {"cluster": "app"}}]}
            ],
        },
        "http_filters": http_filters,
    }
    tls = {
        "name": "envoy.transport_sockets.tls",
        "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.DownstreamTlsContext",
            "require_client_certificate": True,
            "common_tls_context": {
                "alpn_protocols": ["h2", "http/1.1"],
                "tls_certificates": [_tls_files(pki_dir)],
                "validation_context": {
                    "trusted_ca": {"filename": f"{pki_dir}/ca.crt"},
                    "match_typed_subject_alt_names": _uri_matcher(match),
                },
            },
        },
    }
    return {
        "admin": _admin(admin_port),
        "static_resources": {
            "listeners": [
                {
                    "name": "inbound",
                    "address": _addr("127.0.0.1", listen_port),
                    "filter_chains": [
                        {
                            "transport_socket": tls,
                            "filters": [{"name": "envoy.filters.network.http_connection_manager", "typed_config": hcm}],
                        }
                    ],
                }
            ],
            "clusters": [
                {
                    "name": "app",
                    "type": "STATIC",
                    "connect_timeout": "5s",
                    "load_assignment": {
                        "cluster_name": "app",
                        "endpoints": [{"lb_endpoints": [{"endpoint": {"address": _addr("127.0.0.1", app_port)}}]}],
                    },
                }
            ],
        },
    }


def outbound(*, listen_port, admin_port, upstream_port, pki_dir, peer_id):
    """An outbound sidecar: plain HTTP listener -> mTLS HTTP/2 to the peer, pinned to peer_id."""
    hcm = {
        "@type": "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager",
        "stat_prefix": "outbound",
        "codec_type": "AUTO",
        "route_config": {
            "name": "outbound",
            "virtual_hosts": [
                {"name": "peer", "domains": ["*"], "routes": [{"match": {"prefix": "/"}, "route": {"cluster": "peer"}}]}
            ],
        },
        "http_filters": [
            {
                "name": "envoy.filters.http.router",
                "typed_config": {"@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"},
            }
        ],
    }
    tls = {
        "name": "envoy.transport_sockets.tls",
        "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.UpstreamTlsContext",
            "common_tls_context": {
                "alpn_protocols": ["h2"],
                "tls_certificates": [_tls_files(pki_dir)],
                "validation_context": {
                    "trusted_ca": {"filename": f"{pki_dir}/ca.crt"},
                    "match_typed_subject_alt_names": _uri_matcher({"exact": peer_id}),
                },
            },
        },
    }
    return {
        "admin": _admin(admin_port),
        "static_resources": {
            "listeners": [
                {
                    "name": "outbound",
                    "address": _addr("127.0.0.1", listen_port),
                    "filter_chains": [
                        {"filters": [{"name": "envoy.filters.network.http_connection_manager", "typed_config": hcm}]}
                    ],
                }
            ],
            "clusters": [
                {
                    "name": "peer",
                    "type": "STATIC",
                    "connect_timeout": "5s",
                    "typed_extension_protocol_options": {
                        "envoy.extensions.upstreams.http.v3.HttpProtocolOptions": {
                            "@type": "type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions",
                            "explicit_http_config": {"http2_protocol_options": {}},
                        }
                    },
                    "transport_socket": tls,
                    "load_assignment": {
                        "cluster_name": "peer",
                        "endpoints": [{"lb_endpoints": [{"endpoint": {"address": _addr("127.0.0.1", upstream_port)}}]}],
                    },
                }
            ],
        },
    }


def outbound_tcp(*, listen_port, admin_port, upstream_port, pki_dir, peer_id):
    """An outbound sidecar for opaque TCP: each client connection -> a new mTLS
    connection to the peer (pinned to peer_id), bytes relayed (tcp_proxy). The
    upstream TLS context keeps Envoy's default session cache, so it resumes."""
    cfg = outbound(listen_port=listen_port, admin_port=admin_port, upstream_port=upstream_port,
                   pki_dir=pki_dir, peer_id=peer_id)
    tcp = {
        "@type": "type.googleapis.com/envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy",
        "stat_prefix": "outbound_tcp",
        "cluster": "peer",
    }
    res = cfg["static_resources"]
    res["listeners"][0]["filter_chains"] = [{"filters": [{"name": "envoy.filters.network.tcp_proxy", "typed_config": tcp}]}]
    cluster = res["clusters"][0]
    cluster.pop("typed_extension_protocol_options")
    cluster["transport_socket"]["typed_config"]["common_tls_context"].pop("alpn_protocols")
    return cfg


def write(path, cfg):
    with open(path, "w") as f:
        json.dump(cfg, f, indent=1)
