//! The sidecar's own answers: the body type of the data path, local text replies,
//! and typed refusals.
//!
//! A [`Refusal`] is a request turned away before (or instead of) a decision: bad
//! framing, a bad path, an invalid token, a body over the limit. It is counted in
//! `portcullis_rejected_requests_total{direction,reason}` by [`Refusal::count`], the
//! only place that counter moves, and answered by [`Refusal::answer`] as a text reply
//! marked with [`LocalReply`], which the HTTP server turns into a gRPC status for
//! gRPC callers (see [`super::grpc`]).

use bytes::Bytes;
use http::header::{HeaderName, HeaderValue, CONTENT_TYPE};
use http::{Response, StatusCode};
use http_body_util::{combinators::UnsyncBoxBody, BodyExt, Full};

use crate::direction::Direction;
use crate::metrics;

/// Boxed error type carried by proxied bodies.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;
/// The body type used everywhere on the data path.
pub type ProxyBody = UnsyncBoxBody<Bytes, BoxError>;

/// A small local response body.
pub fn full(body: impl Into<Bytes>) -> ProxyBody {
    Full::new(body.into())
        .map_err(|e| match e {})
        .boxed_unsync()
}

/// Marks a response the sidecar produced itself, with what a gRPC caller is told.
#[derive(Debug, Clone)]
pub struct LocalReply {
    /// The reason, for `grpc-message`.
    pub message: String,
    /// A status chosen by the policy (`grpc_status` in the result object).
    pub grpc_status: Option<u8>,
}

/// A local response with a text body, marked as the sidecar's own answer (the text
/// is what a gRPC caller is told, see [`super::grpc`]).
pub fn text_response(status: StatusCode, body: impl Into<Bytes>) -> Response<ProxyBody> {
    let body: Bytes = body.into();
    let message = String::from_utf8_lossy(&body).trim_end().to_owned();
    let mut r = Response::new(full(body));
    *r.status_mut() = status;
    r.headers_mut().insert(
        CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    r.extensions_mut().insert(LocalReply {
        message,
        grpc_status: None,
    });
    r
}

/// A request refused before any decision.
#[derive(Debug)]
pub struct Refusal {
    pub status: StatusCode,
    /// Label for `portcullis_rejected_requests_total{reason}`.
    pub reason: &'static str,
    pub body: String,
    /// One extra response header (`WWW-Authenticate` on a 401).
    pub header: Option<(HeaderName, HeaderValue)>,
}

impl Refusal {
    pub fn new(status: StatusCode, reason: &'static str, body: impl Into<String>) -> Refusal {
        Refusal {
            status,
            reason,
            body: body.into(),
            header: None,
        }
    }

    /// Framing that two parsers could read differently (request smuggling), found by
    /// the header checks or by the connection's head scanner.
    pub fn ambiguous_framing(why: &str) -> Refusal {
        Refusal::new(
            StatusCode::BAD_REQUEST,
            "ambiguous_framing",
            format!("ambiguous request: {why}\n"),
        )
    }

    /// Counts a refusal of `direction` for `reason`. Refusals answered by someone
    /// else (the HTTP parser, the head deadline, the connection limit) are counted
    /// here too.
    pub fn count(direction: Direction, reason: &'static str) {
        metrics::global()
            .rejected_requests
            .with_label_values(&[direction.as_str(), reason])
            .inc();
    }

    /// Counts the refusal and answers it.
    pub fn answer(self, direction: Direction) -> Response<ProxyBody> {
        Refusal::count(direction, self.reason);
        let mut resp = text_response(self.status, self.body);
        if let Some((name, value)) = self.header {
            resp.headers_mut().insert(name, value);
        }
        resp
    }
}

/// Why a request handler stopped before forwarding.
pub enum Early {
    /// Refused before the policy: counted and answered by the caller.
    Refused(Refusal),
    /// Already answered and recorded (a policy deny, an unreachable peer).
    Answered(Box<Response<ProxyBody>>),
}

impl From<Refusal> for Early {
    fn from(r: Refusal) -> Early {
        Early::Refused(r)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::header::WWW_AUTHENTICATE;

    fn refused(reason: &str) -> u64 {
        metrics::global()
            .rejected_requests
            .with_label_values(&["admin", reason])
            .get()
    }

    #[test]
    fn a_refusal_is_counted_once_and_answered_for_http_and_grpc_callers() {
        let before = refused("unit_refusal");
        let mut r = Refusal::new(StatusCode::UNAUTHORIZED, "unit_refusal", "token expired\n");
        r.header = Some((WWW_AUTHENTICATE, HeaderValue::from_static("Bearer")));
        let resp = r.answer(Direction::Admin);
        assert_eq!(refused("unit_refusal"), before + 1);
        assert_eq!(resp.status(), StatusCode::UNAUTHORIZED);
        assert_eq!(resp.headers()[WWW_AUTHENTICATE], "Bearer");
        assert_eq!(resp.headers()[CONTENT_TYPE], "text/plain; charset=utf-8");
        let grpc = crate::proxy::grpc::answer_as_grpc(resp);
        assert_eq!(grpc.status(), StatusCode::OK);
        assert_eq!(grpc.headers()["grpc-status"], "16");
        assert_eq!(grpc.headers()["grpc-message"], "token expired");
    }

    #[test]
    fn ambiguous_framing_has_one_wording() {
        let r = Refusal::ambiguous_framing("both Content-Length and Transfer-Encoding");
        assert_eq!(r.status, StatusCode::BAD_REQUEST);
        assert_eq!(r.reason, "ambiguous_framing");
        assert_eq!(
            r.body,
            "ambiguous request: both Content-Length and Transfer-Encoding\n"
        );
    }
}
