//! Start-up's HTTP exchange in memory: one HTTP/2 and one HTTP/1.1 request served
//! by a listener's [`HttpServer`] to a client on the other end of an in-memory
//! pipe, before the sidecar reports ready. The first real request then finds the
//! HTTP libraries' code mapped and run once (see [`crate::footprint`], which unmaps
//! start-up code), instead of paying for it while a client waits.
//!
//! Nothing leaves the process: no socket, no app, no policy. The handler answers
//! 204 itself, so no decision is logged and no request is counted.

use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response, StatusCode, Version};
use http_body_util::{BodyExt, Empty};
use hyper::body::Incoming;
use hyper::client::conn::{http1, http2};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};

use super::listener::HttpServer;
use super::reply::{self, BoxError};

/// An exchange that takes longer is abandoned (it only warms).
const BOUND: Duration = Duration::from_secs(1);

/// Serves one HTTP/2 and one HTTP/1.1 request on `server` in memory. A failure
/// only means less was warmed; it is logged at debug.
pub async fn exchange(server: &HttpServer) {
    for version in [Version::HTTP_2, Version::HTTP_11] {
        match tokio::time::timeout(BOUND, once(server, version)).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => tracing::debug!(?version, error = %e, "HTTP warm-up failed"),
            Err(_) => tracing::debug!(?version, "HTTP warm-up timed out"),
        }
    }
}

async fn once(server: &HttpServer, version: Version) -> Result<(), BoxError> {
    let (client_io, server_io) = tokio::io::duplex(64 * 1024);
    let serving = server.serve(server_io, |_req| async {
        let mut resp = Response::new(reply::full(Bytes::new()));
        *resp.status_mut() = StatusCode::NO_CONTENT;
        Ok(resp)
    });
    let asking = async move {
        let status = request(TokioIo::new(client_io), version).await?;
        if status == StatusCode::NO_CONTENT {
            Ok(())
        } else {
            Err(BoxError::from(format!("warm-up answered {status}")))
        }
    };
    // The server ends when the client, done, closes its end.
    let ((), asked) = tokio::join!(serving, asking);
    asked
}

/// One request shaped like a caller's (a bearer token, an accept header) over `io`.
async fn request(
    io: TokioIo<tokio::io::DuplexStream>,
    version: Version,
) -> Result<StatusCode, BoxError> {
    let req = Request::builder()
        .uri("http://localhost/warm-up")
        .header(http::header::USER_AGENT, "portcullis-warm-up")
        .header(http::header::ACCEPT, "*/*")
        .header(http::header::AUTHORIZATION, "Bearer warm-up")
        .body(Empty::<Bytes>::new())?;
    if version == Version::HTTP_2 {
        let (mut send, conn) = http2::Builder::new(TokioExecutor::new())
            .timer(TokioTimer::new())
            .handshake(io)
            .await?;
        let driving = tokio::spawn(conn);
        let resp = send.send_request(req).await?;
        drop(send);
        status_of(resp, driving).await
    } else {
        let (mut send, conn) = http1::handshake(io).await?;
        let driving = tokio::spawn(conn);
        let mut req = req;
        *req.uri_mut() = http::Uri::from_static("/warm-up");
        req.headers_mut().insert(
            http::header::HOST,
            http::HeaderValue::from_static("localhost"),
        );
        let resp = send.send_request(req).await?;
        drop(send);
        status_of(resp, driving).await
    }
}

/// Reads the response to its end, then waits for the client connection to close
/// (its sender is gone).
async fn status_of(
    resp: Response<Incoming>,
    driving: tokio::task::JoinHandle<Result<(), hyper::Error>>,
) -> Result<StatusCode, BoxError> {
    let status = resp.status();
    resp.into_body().collect().await?;
    let _ = driving.await;
    Ok(status)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::LimitsConfig;
    use crate::direction::Direction;
    use crate::proxy::drain::DrainTrigger;

    #[tokio::test]
    async fn both_versions_are_answered_in_memory() {
        let (_trigger, drain) = DrainTrigger::new();
        let server = HttpServer::new(&LimitsConfig::default(), drain, Direction::Inbound);
        for version in [Version::HTTP_2, Version::HTTP_11] {
            once(&server, version).await.unwrap();
        }
    }
}
