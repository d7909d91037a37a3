//! What the proxy knows about a request or connection when it asks the policy.

use std::net::SocketAddr;

/// Everything the proxy knows about a request or connection when it asks the policy.
#[derive(Debug, Clone)]
pub struct InputFacts<'a> {
    /// The peer that opened the connection.
    pub source_address: SocketAddr,
    /// The peer's verified SPIFFE ID, if it presented an SVID.
    pub source_principal: Option<&'a str>,
    /// Where the connection was going.
    pub destination_address: SocketAddr,
    /// The destination's SPIFFE ID (our own inbound, the verified peer outbound).
    pub destination_principal: Option<&'a str>,
    /// HTTP request attributes; `None` for opaque TCP (no `attributes.request` at all).
    pub http: Option<HttpFacts<'a>>,
    /// `(payload_in_metadata name, verified claims)` from JWT authentication.
    pub jwt: Option<(&'a str, &'a serde_json::Value)>,
}

/// HTTP request attributes, as forwarded upstream.
#[derive(Debug, Clone)]
pub struct HttpFacts<'a> {
    /// Request id (`x-request-id` or generated).
    pub id: &'a str,
    /// Method, e.g. `GET`.
    pub method: &'a str,
    /// Path and query exactly as forwarded.
    pub path: &'a str,
    /// Host / `:authority`.
    pub host: &'a str,
    /// `http` or `https`.
    pub scheme: &'a str,
    /// `HTTP/1.1` or `HTTP/2`.
    pub protocol: &'a str,
    /// Request headers (names are already lower-case in `http::HeaderMap`).
    pub headers: &'a http::HeaderMap,
    /// Content length when known.
    pub size: Option<u64>,
    /// Buffered body, when the policy asked for bodies.
    pub body: Option<&'a [u8]>,
    /// Whether `body` was cut at the buffer limit.
    pub truncated_body: bool,
    /// The request's content type, used to produce `parsed_body`.
    pub content_type: Option<&'a str>,
}

impl<'a> HttpFacts<'a> {
    /// A request without a body over mTLS HTTP/2 (`https`), as most decisions see
    /// one: `size` 0, nothing buffered.
    pub fn bodiless(
        id: &'a str,
        method: &'a str,
        path: &'a str,
        host: &'a str,
        headers: &'a http::HeaderMap,
    ) -> HttpFacts<'a> {
        HttpFacts {
            id,
            method,
            path,
            host,
            scheme: "https",
            protocol: "HTTP/2",
            headers,
            size: Some(0),
            body: None,
            truncated_body: false,
            content_type: None,
        }
    }
}
