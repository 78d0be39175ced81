//! Blobs over HTTP (design §6): uploads (`PUT /v1/blobs`), reads (`GET`/`HEAD
//! /v1/blobs/{sha256}`, with ranges), pushes from peers (`PUT /v1/blobs/{sha256}`), and the
//! placement rule: a blob is durable on a majority of voters before anything that names it
//! is proposed, so a committed record can always be resolved while a majority is up.
//!
//! Bytes are streamed everywhere: into the store (hashed as written), out of it, and to the
//! peers, a chunk at a time, so a node holds no blob whole in memory.

use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper::header::{CONTENT_LENGTH, CONTENT_RANGE, CONTENT_TYPE, HeaderValue, RANGE};
use hyper::{Request, Response, StatusCode};
use tokio::sync::mpsc;

use super::{Body, error, json, retry_later};
use crate::blobs::{BlobError, Blobs, hex, parse_hex};
use crate::driver::NodeHandle;

/// The header a blob push carries: the pusher's cluster (a foreign one gets 403).
pub(crate) const CLUSTER_HEADER: &str = "keel-cluster";
/// `data` for a payload blob; absent for a plugin binary (compiled on arrival).
pub(crate) const KIND_HEADER: &str = "keel-blob-kind";

/// Bytes per chunk when streaming a stored blob.
const CHUNK: usize = 256 << 10;

/// Streams `body` into the store (at most `limit` bytes; with `expect`, checked against
/// that hash) on a blocking thread, the network and the disk overlapping.
pub(crate) async fn receive(
    blobs: &Blobs,
    mut body: Incoming,
    limit: u64,
    expect: Option<[u8; 32]>,
) -> Result<([u8; 32], u64), Response<Body>> {
    let (tx, mut rx) = mpsc::channel::<Bytes>(8);
    let blobs = blobs.clone();
    let writer = tokio::task::spawn_blocking(move || -> Result<([u8; 32], u64), BlobError> {
        let mut w = blobs.writer(limit)?;
        while let Some(chunk) = rx.blocking_recv() {
            w.write(&chunk)?;
        }
        w.finish(expect)
    });
    let mut broken = None;
    while let Some(frame) = body.frame().await {
        match frame {
            Ok(f) => {
                if let Ok(data) = f.into_data()
                    && tx.send(data).await.is_err()
                {
                    break; // the writer stopped: its error says why
                }
            }
            Err(e) => {
                broken = Some(e.to_string());
                break;
            }
        }
    }
    drop(tx);
    let written = writer
        .await
        .map_err(|e| error(StatusCode::INTERNAL_SERVER_ERROR, &e.to_string()))?;
    if let Some(e) = broken {
        // The writer is dropped unfinished: nothing is left behind.
        return Err(error(
            StatusCode::BAD_REQUEST,
            &format!("body broken off: {e}"),
        ));
    }
    written.map_err(|e| match e {
        BlobError::TooLarge(_) => error(StatusCode::PAYLOAD_TOO_LARGE, &e.to_string()),
        BlobError::HashMismatch { .. } => error(StatusCode::BAD_REQUEST, &e.to_string()),
        BlobError::Io(_) => error(StatusCode::INSUFFICIENT_STORAGE, &e.to_string()),
    })
}

/// A stored blob's bytes `[start, end)` as a streamed body.
fn stream(blobs: &Blobs, hash: [u8; 32], start: u64, end: u64) -> Body {
    let (tx, rx) = mpsc::channel::<Bytes>(4);
    let blobs = blobs.clone();
    tokio::task::spawn_blocking(move || {
        let mut at = start;
        while at < end {
            let n = usize::try_from(end - at).unwrap_or(CHUNK).min(CHUNK);
            let Some(chunk) = blobs.read_range(&hash, at, n).filter(|c| !c.is_empty()) else {
                return; // the body ends short: the reader's hash check fails
            };
            at += chunk.len() as u64;
            if tx.blocking_send(Bytes::from(chunk)).is_err() {
                return; // the reader went away
            }
        }
    });
    let frames = futures_util::stream::unfold(rx, |mut rx| async move {
        rx.recv()
            .await
            .map(|b| (Ok::<_, std::convert::Infallible>(Frame::data(b)), rx))
    });
    StreamBody::new(frames).boxed()
}

/// Places a blob this node holds on the other members (streamed, in parallel) and returns
/// how many voters hold it now, with the failures; the caller decides whether that is a
/// majority.
pub(crate) async fn place(
    node: &NodeHandle,
    hash: [u8; 32],
    len: u64,
) -> (usize, usize, Vec<String>) {
    let (members, voters, me) = {
        let s = node.status.lock().unwrap_or_else(|e| e.into_inner());
        (s.members.clone(), s.voters.clone(), s.node_id)
    };
    // A generous bound: 30 s plus what 10 MB/s takes.
    let timeout = Duration::from_secs(30 + len / (10 << 20));
    let pushes = members
        .iter()
        .filter(|(id, _)| **id != me)
        .map(|(id, url)| {
            let (id, url) = (*id, url.clone());
            let cluster = node.config.cluster_id.clone();
            let body = stream(&node.blobs, hash, 0, len);
            async move {
                let client = crate::tls::client::<Body>();
                let req = Request::put(format!("{url}/v1/blobs/{}", hex(&hash)))
                    .header(CLUSTER_HEADER, cluster)
                    .header(KIND_HEADER, "data")
                    .header(CONTENT_LENGTH, len)
                    .body(body);
                let result = match req {
                    Err(e) => Err(e.to_string()),
                    Ok(req) => match tokio::time::timeout(timeout, client.request(req)).await {
                        Err(_) => Err("timed out".to_string()),
                        Ok(Err(e)) => Err(e.to_string()),
                        Ok(Ok(resp)) if resp.status().is_success() => Ok(()),
                        Ok(Ok(resp)) => Err(resp.status().to_string()),
                    },
                };
                (id, result)
            }
        });
    let results = futures_util::future::join_all(pushes).await;
    tally(results, &voters, me)
}

/// How many `voters` hold a blob after pushes with these `results` (this node, `me`, holds
/// it), out of how many, and the failures as text.
pub(crate) fn tally<E: std::fmt::Display>(
    results: Vec<(u64, Result<(), E>)>,
    voters: &[u64],
    me: u64,
) -> (usize, usize, Vec<String>) {
    let held = voters
        .iter()
        .filter(|v| **v == me || results.iter().any(|(id, r)| id == *v && r.is_ok()))
        .count();
    let failures = results
        .into_iter()
        .filter_map(|(id, r)| r.err().map(|e| format!("node {id}: {e}")))
        .collect();
    (held, voters.len(), failures)
}

/// Stores a body and places it on a majority of voters; `(hash, len)` once it is there, or
/// the response to give instead.
pub(crate) async fn store_on_majority(
    node: &NodeHandle,
    body: Incoming,
) -> Result<([u8; 32], u64), Response<Body>> {
    let (hash, len) = receive(&node.blobs, body, node.config.max_blob_bytes, None).await?;
    let (held, voters, failures) = place(node, hash, len).await;
    if held * 2 <= voters {
        return Err(retry_later(&format!(
            "blob {} reached {held} of {voters} voters, not a majority: {}",
            hex(&hash),
            failures.join("; ")
        )));
    }
    Ok((hash, len))
}

/// `PUT /v1/blobs`: stores the body (any size up to `max_blob_bytes`) and answers once it is
/// durable on a majority of voters.
pub async fn upload(node: &NodeHandle, req: Request<Incoming>) -> Response<Body> {
    let declared = req
        .headers()
        .get(CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok()?.parse::<u64>().ok());
    if let Some(n) = declared.filter(|&n| n > node.config.max_blob_bytes) {
        return error(
            StatusCode::PAYLOAD_TOO_LARGE,
            &format!(
                "a {n}-byte blob; the limit is {}",
                node.config.max_blob_bytes
            ),
        );
    }
    match store_on_majority(node, req.into_body()).await {
        Ok((hash, len)) => json(
            StatusCode::OK,
            &serde_json::json!({"sha256": hex(&hash), "len": len}),
        ),
        Err(r) => r,
    }
}

/// `PUT /v1/blobs/{sha256}` from a peer placing a payload blob: streamed into the store and
/// checked against its name, then 204.
pub async fn put_data(node: &NodeHandle, req: Request<Incoming>, hash: [u8; 32]) -> Response<Body> {
    if let Some(refused) = foreign(node, &req) {
        return refused;
    }
    if node.blobs.has(&hash) && node.blobs.verify(&hash) {
        // Placed again: garbage collection's grace period starts over.
        node.blobs.touch(&hash);
        return super::full(StatusCode::NO_CONTENT, "text/plain", Bytes::new());
    }
    match receive(
        &node.blobs,
        req.into_body(),
        node.config.max_blob_bytes,
        Some(hash),
    )
    .await
    {
        Ok(_) => super::full(StatusCode::NO_CONTENT, "text/plain", Bytes::new()),
        Err(r) => r,
    }
}

/// 403 unless a peer's push names this node's cluster.
pub(crate) fn foreign(node: &NodeHandle, req: &Request<Incoming>) -> Option<Response<Body>> {
    let cluster = req
        .headers()
        .get(CLUSTER_HEADER)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    if cluster.eq_ignore_ascii_case(&node.config.cluster_id) {
        return None;
    }
    node.metrics.foreign_cluster.inc();
    Some(error(
        StatusCode::FORBIDDEN,
        &format!(
            "blob from cluster {cluster:?}, this is {}",
            node.config.cluster_id
        ),
    ))
}

/// `GET` / `HEAD /v1/blobs/{sha256}`: the bytes, streamed, if this node holds them
/// (`Range: bytes=a-b` answers 206 with that part).
pub async fn get(
    node: &NodeHandle,
    req: &Request<Incoming>,
    hash: &str,
    head: bool,
) -> Response<Body> {
    let Some(hash) = parse_hex(hash) else {
        return error(StatusCode::BAD_REQUEST, "a blob is named by 64 hex digits");
    };
    let Some(len) = node.blobs.len_of(&hash) else {
        return error(StatusCode::NOT_FOUND, "no such blob here");
    };
    let range = match req.headers().get(RANGE).map(|v| parse_range(v, len)) {
        None => None,
        Some(Some(r)) => Some(r),
        Some(None) => {
            let mut r = error(
                StatusCode::RANGE_NOT_SATISFIABLE,
                "bad or unsatisfiable range",
            );
            if let Ok(v) = HeaderValue::from_str(&format!("bytes */{len}")) {
                r.headers_mut().insert(CONTENT_RANGE, v);
            }
            return r;
        }
    };
    let (start, end) = range.unwrap_or((0, len));
    let body = if head {
        http_body_util::Empty::new()
            .map_err(|never| match never {})
            .boxed()
    } else {
        stream(&node.blobs, hash, start, end)
    };
    let mut r = Response::new(body);
    let headers = r.headers_mut();
    headers.insert(
        CONTENT_TYPE,
        HeaderValue::from_static("application/octet-stream"),
    );
    headers.insert(CONTENT_LENGTH, HeaderValue::from(end - start));
    if range.is_some() {
        *r.status_mut() = StatusCode::PARTIAL_CONTENT;
        if let Ok(v) = HeaderValue::from_str(&format!("bytes {start}-{}/{len}", end - 1)) {
            r.headers_mut().insert(CONTENT_RANGE, v);
        }
    }
    r
}

/// `bytes=a-b`, `bytes=a-` or `bytes=-n` as `[start, end)` within `len`; `None` if malformed
/// or outside the blob. One range only.
fn parse_range(v: &HeaderValue, len: u64) -> Option<(u64, u64)> {
    let spec = v.to_str().ok()?.trim().strip_prefix("bytes=")?;
    let (a, b) = spec.split_once('-')?;
    let (start, end) = match (a.trim(), b.trim()) {
        ("", n) => {
            let n: u64 = n.parse().ok()?;
            (len.checked_sub(n.min(len))?, len)
        }
        (a, "") => (a.parse().ok()?, len),
        (a, b) => (
            a.parse().ok()?,
            b.parse::<u64>().ok()?.checked_add(1)?.min(len),
        ),
    };
    (start < end && end <= len).then_some((start, end))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges_are_read_as_rfc_9110_says_and_bad_ones_refused() {
        let r = |s: &str| parse_range(&HeaderValue::from_str(s).expect("header"), 100);
        assert_eq!(r("bytes=0-9"), Some((0, 10)));
        assert_eq!(r("bytes=90-"), Some((90, 100)));
        assert_eq!(r("bytes=-10"), Some((90, 100)));
        assert_eq!(r("bytes=95-200"), Some((95, 100)));
        assert_eq!(r("bytes=100-"), None);
        assert_eq!(r("bytes=5-1"), None);
        assert_eq!(r("items=0-1"), None);
        assert_eq!(r("bytes=a-b"), None);
    }
}
