//! Refusals answered the way gRPC clients understand them.
//!
//! A gRPC client reads the call's outcome from `grpc-status` and `grpc-message`, not
//! from the HTTP status: a plain `403` reaches it as an opaque transport error. So a
//! request with `content-type: application/grpc*` that the sidecar answers itself
//! (policy deny, invalid token, no identity or policy, upstream failure, limits) gets
//! HTTP 200 with a trailers-only response: one header block carrying `grpc-status`,
//! mapped from the HTTP status as gRPC's HTTP-to-gRPC table does (or set by the
//! policy's `grpc_status`), and `grpc-message` with the reason, percent-encoded.
//!
//! Responses from the app are never rewritten. Metrics and decision logs keep the
//! HTTP-level status, recorded before the conversion.

use http::header::{HeaderValue, CONTENT_LENGTH, CONTENT_TYPE};
use http::{HeaderMap, Response, StatusCode};

pub use super::reply::LocalReply;
use super::reply::{full, ProxyBody};

/// gRPC status codes used here.
pub mod code {
    pub const UNKNOWN: u8 = 2;
    pub const PERMISSION_DENIED: u8 = 7;
    pub const UNIMPLEMENTED: u8 = 12;
    pub const INTERNAL: u8 = 13;
    pub const UNAVAILABLE: u8 = 14;
    pub const UNAUTHENTICATED: u8 = 16;
}

/// True for a gRPC request (`application/grpc`, `application/grpc+proto`, …,
/// `application/grpc-web*`).
pub fn is_grpc(headers: &HeaderMap) -> bool {
    headers
        .get(CONTENT_TYPE)
        .map(|v| {
            let b = v.as_bytes();
            b.len() >= 16 && b[..16].eq_ignore_ascii_case(b"application/grpc")
        })
        .unwrap_or(false)
}

/// gRPC's mapping of an HTTP status to a gRPC status code (the table in gRPC's
/// "HTTP to gRPC Status Code Mapping").
pub fn status_for(http: StatusCode) -> u8 {
    match http.as_u16() {
        400 => code::INTERNAL,
        401 => code::UNAUTHENTICATED,
        403 => code::PERMISSION_DENIED,
        404 => code::UNIMPLEMENTED,
        429 | 502 | 503 | 504 => code::UNAVAILABLE,
        _ => code::UNKNOWN,
    }
}

/// Percent-encodes a `grpc-message` (bytes outside 0x20..=0x7E, and `%`), as the gRPC
/// HTTP/2 protocol specifies.
pub fn encode_message(msg: &str) -> String {
    let mut out = String::with_capacity(msg.len());
    for &b in msg.as_bytes() {
        if (0x20..=0x7e).contains(&b) && b != b'%' {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// Turns a local reply into a trailers-only gRPC response; any other response (the
/// app's) is returned as it is.
pub fn answer_as_grpc(resp: Response<ProxyBody>) -> Response<ProxyBody> {
    let Some(local) = resp.extensions().get::<LocalReply>().cloned() else {
        return resp;
    };
    let (mut parts, _) = resp.into_parts();
    let status = local
        .grpc_status
        .unwrap_or_else(|| status_for(parts.status));
    parts.status = StatusCode::OK;
    parts.headers.remove(CONTENT_LENGTH);
    parts
        .headers
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/grpc"));
    parts
        .headers
        .insert("grpc-status", HeaderValue::from(u16::from(status)));
    let message = encode_message(local.message.trim_end());
    if let Ok(v) = HeaderValue::from_str(&message) {
        parts.headers.insert("grpc-message", v);
    }
    // An empty body that ends the stream: hyper sends one HEADERS frame with
    // END_STREAM, which is gRPC's trailers-only form.
    Response::from_parts(parts, full(bytes::Bytes::new()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body::Body as _;

    #[test]
    fn mapping_follows_grpc() {
        let s = |c| status_for(StatusCode::from_u16(c).unwrap());
        assert_eq!(s(400), code::INTERNAL);
        assert_eq!(s(401), code::UNAUTHENTICATED);
        assert_eq!(s(403), code::PERMISSION_DENIED);
        assert_eq!(s(404), code::UNIMPLEMENTED);
        for c in [429, 502, 503, 504] {
            assert_eq!(s(c), code::UNAVAILABLE);
        }
        for c in [408, 413, 431, 500] {
            assert_eq!(s(c), code::UNKNOWN);
        }
    }

    #[test]
    fn grpc_content_types() {
        let h = |v: &'static str| {
            let mut m = HeaderMap::new();
            m.insert(CONTENT_TYPE, HeaderValue::from_static(v));
            is_grpc(&m)
        };
        assert!(h("application/grpc"));
        assert!(h("application/grpc+proto"));
        assert!(h("Application/GRPC; charset=x"));
        assert!(!h("application/json"));
        assert!(!h("application/grp"));
        assert!(!is_grpc(&HeaderMap::new()));
    }

    #[test]
    fn message_is_percent_encoded() {
        assert_eq!(encode_message("no: 100% é\n"), "no: 100%25 %C3%A9%0A");
    }

    #[test]
    fn local_replies_become_trailers_only() {
        let mut r = super::super::reply::text_response(
            StatusCode::FORBIDDEN,
            "access denied: role reporting may only read\n",
        );
        r.extensions_mut().insert(LocalReply {
            message: "role reporting may only read".into(),
            grpc_status: None,
        });
        let g = answer_as_grpc(r);
        assert_eq!(g.status(), StatusCode::OK);
        assert_eq!(g.headers()["grpc-status"], "7");
        assert_eq!(g.headers()["grpc-message"], "role reporting may only read");
        assert_eq!(g.headers()[CONTENT_TYPE], "application/grpc");
        assert!(g.body().is_end_stream());
        // The app's own responses pass unchanged.
        let app = Response::new(full("x"));
        assert_eq!(answer_as_grpc(app).status(), StatusCode::OK);
    }
}
