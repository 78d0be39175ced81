//! Request bodies read with their limits checked before anything is buffered (issue #13):
//! a declared `Content-Length` over the limit is refused before the first byte is read, a
//! body that grows past it is cut off there, and a sender that stops sending for
//! `body_timeout_ms` is cut off too (a slow client cannot hold a connection for ever).
//!
//! JSON bodies are parsed by `serde_json`, whose parser refuses nesting deeper than 128
//! arrays or objects for every target type (a struct, `serde_json::Value`, ignored fields)
//! with "recursion limit exceeded": a 400 here. The JSON bodies the API takes are at most
//! 64 KiB, so neither depth nor size can grow the parse beyond a few times that.

use std::time::Duration;

use bytes::{Bytes, BytesMut};
use http_body_util::BodyExt;
use hyper::body::{Body as _, Incoming};

use super::Refusal;
use crate::driver::NodeHandle;

/// Largest JSON request body (users, tokens, members, rollbacks).
pub(crate) const MAX_JSON_BODY: usize = 64 << 10;

/// Why the next piece of a body did not come.
#[derive(Debug)]
pub(crate) enum BodyError {
    /// Nothing arrived for the body timeout.
    Stalled(Duration),
    /// The connection broke or the framing was wrong.
    Broken(String),
}

impl From<BodyError> for Refusal {
    fn from(e: BodyError) -> Refusal {
        match e {
            BodyError::Stalled(d) => Refusal::Stalled(d),
            BodyError::Broken(m) => Refusal::BadRequest(format!("malformed body: {m}")),
        }
    }
}

/// How long a body may go without a byte (`body_timeout_ms`).
pub(crate) fn body_timeout(node: &NodeHandle) -> Duration {
    Duration::from_millis(node.config.body_timeout_ms.max(1))
}

/// The body's next data, `None` at its end; `within` bounds the wait (`None`: no bound,
/// for a proven peer's stream, idle between messages by design).
pub(crate) async fn next_data(
    node: &NodeHandle,
    body: &mut Incoming,
    within: Option<Duration>,
) -> Result<Option<Bytes>, BodyError> {
    loop {
        let frame = match within {
            Some(d) => match tokio::time::timeout(d, body.frame()).await {
                Ok(f) => f,
                Err(_) => {
                    node.metrics.timed_out("body");
                    return Err(BodyError::Stalled(d));
                }
            },
            None => body.frame().await,
        };
        match frame {
            None => return Ok(None),
            Some(Err(e)) => return Err(BodyError::Broken(e.to_string())),
            Some(Ok(f)) => {
                if let Ok(data) = f.into_data() {
                    return Ok(Some(data));
                }
                // Trailers: nothing to keep.
            }
        }
    }
}

/// Reads a body of at most `max` bytes (`limit` names the setting, for the 413).
pub(crate) async fn read_body(
    node: &NodeHandle,
    mut body: Incoming,
    max: usize,
    limit: &'static str,
) -> Result<Bytes, Refusal> {
    // Content-Length, when sent, is the lower bound: refused before any byte is read.
    if body.size_hint().lower() > max as u64 {
        return Err(Refusal::TooLarge(max, limit));
    }
    let within = body_timeout(node);
    let mut out = BytesMut::new();
    while let Some(data) = next_data(node, &mut body, Some(within)).await? {
        if out.len() + data.len() > max {
            return Err(Refusal::TooLarge(max, limit));
        }
        if out.is_empty() && body.is_end_stream() {
            return Ok(data); // the usual case: one piece, no copy
        }
        out.extend_from_slice(&data);
    }
    Ok(out.freeze())
}
