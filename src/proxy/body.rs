//! Bounded request-body buffering for policies that ask for the body.
//!
//! Up to `max_bytes` are read for the policy; everything read is replayed in front
//! of the rest of the stream, so the app receives the whole body, streamed.

use super::forward::{BoxError, ProxyBody};
use bytes::{Bytes, BytesMut};
use http_body::Frame;
use http_body_util::{BodyExt, StreamBody};

/// The policy's view of the body and the body to forward.
pub struct Buffered {
    /// At most `max_bytes` of the body.
    pub prefix: Bytes,
    /// True when the body was longer than `max_bytes`.
    pub truncated: bool,
    /// The whole body, for forwarding.
    pub body: ProxyBody,
}

/// Reads frames until more than `max_bytes` are held or the body ends.
pub async fn buffer_prefix(mut body: ProxyBody, max_bytes: usize) -> Result<Buffered, BoxError> {
    let mut frames: Vec<Frame<Bytes>> = Vec::new();
    let mut held = BytesMut::new();
    while held.len() <= max_bytes {
        match body.frame().await {
            None => break,
            Some(Err(e)) => return Err(e),
            Some(Ok(frame)) => {
                if let Some(data) = frame.data_ref() {
                    held.extend_from_slice(data);
                }
                let trailers = frame.is_trailers();
                frames.push(frame);
                if trailers {
                    break;
                }
            }
        }
    }
    let truncated = held.len() > max_bytes;
    let prefix = held.freeze();
    let prefix = prefix.slice(..prefix.len().min(max_bytes));
    let replay = futures_util::stream::iter(frames.into_iter().map(Ok::<_, BoxError>));
    let rest = http_body_util::BodyStream::new(body);
    let chained = futures_util::StreamExt::chain(replay, rest);
    Ok(Buffered {
        prefix,
        truncated,
        body: StreamBody::new(chained).boxed_unsync(),
    })
}
