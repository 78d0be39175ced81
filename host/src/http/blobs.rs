//! Blobs over HTTP (design §6): uploads (`PUT /v1/blobs`), reads (`GET`/`HEAD
//! /v1/blobs/{sha256}`, with ranges), pushes from peers (`PUT /v1/blobs/{sha256}`), and the
//! placement rule: a blob is durable on a majority of voters before anything that names it
//! is proposed, so a committed record can always be resolved while a majority is up.
//!
//! Bytes are streamed everywhere: into the store (hashed as written), out of it, and to the
//! peers, a chunk at a time, so a node holds no blob whole in memory.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::combinators::BoxBody;
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
    node: &NodeHandle,
    body: Incoming,
    limit: u64,
    expect: Option<[u8; 32]>,
) -> Result<([u8; 32], u64), Response<Body>> {
    receive_copying(
        node,
        body,
        limit,
        expect,
        Vec::new(),
        &AtomicBool::new(false),
    )
    .await
}

/// Writes what arrives on `rx` into the store on a blocking thread until `rx` closes.
async fn receive_from(
    blobs: &Blobs,
    mut rx: mpsc::Receiver<Bytes>,
    limit: u64,
    expect: Option<[u8; 32]>,
) -> Result<([u8; 32], u64), Response<Body>> {
    let blobs = blobs.clone();
    let writer = tokio::task::spawn_blocking(move || -> Result<([u8; 32], u64), BlobError> {
        let mut w = blobs.writer(limit)?;
        while let Some(chunk) = rx.blocking_recv() {
            w.write(&chunk)?;
        }
        w.finish(expect)
    });
    let written = writer
        .await
        .map_err(|e| error(StatusCode::INTERNAL_SERVER_ERROR, &e.to_string()))?;
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
    place_with(node, hash, len, false).await
}

/// [`place`], first asking each member whether it holds the blob already (`HEAD`), so a
/// blob placed before (an attachment named again) is not sent again.
pub(crate) async fn place_probed(
    node: &NodeHandle,
    hash: [u8; 32],
    len: u64,
) -> (usize, usize, Vec<String>) {
    place_with(node, hash, len, true).await
}

async fn place_with(
    node: &NodeHandle,
    hash: [u8; 32],
    len: u64,
    probe: bool,
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
                if probe {
                    let head = Request::head(format!("{url}/v1/blobs/{}", hex(&hash)))
                        .header(CLUSTER_HEADER, &cluster)
                        .body(http_body_util::Empty::new().map_err(|e| match e {}).boxed());
                    if let Ok(head) = head
                        && let Ok(Ok(resp)) =
                            tokio::time::timeout(Duration::from_secs(5), client.request(head)).await
                        && resp.status() == StatusCode::OK
                    {
                        return (id, Ok(()));
                    }
                }
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

/// How long an upload waits for one member to take a chunk before it stops streaming to
/// that member (which then gets the blob from a push by name or the resend sweep): a
/// stalled follower must not hold up a majority that keeps up.
const PEER_STALL: Duration = Duration::from_secs(5);

/// How long the members may take, once they have every byte of an upload, to make it
/// durable and answer.
const PUSH_SETTLE: Duration = Duration::from_secs(30);

/// Stores a body and places it on a majority of voters; `(hash, len)` once it is there, or
/// the response to give instead. The bytes go to the other members while they arrive (one
/// stream per member, each chunk written locally and sent on at once), so a large upload
/// costs about one transfer, not a transfer then a push.
pub(crate) async fn store_on_majority(
    node: &NodeHandle,
    body: Incoming,
) -> Result<([u8; 32], u64), Response<Body>> {
    let (members, voters, me) = {
        let s = node.status.lock().unwrap_or_else(|e| e.into_inner());
        (s.members.clone(), s.voters.clone(), s.node_id)
    };
    let complete = Arc::new(AtomicBool::new(false));
    let mut copies = Vec::new();
    let mut pushes = Vec::new();
    for (&id, url) in members.iter().filter(|(id, _)| **id != me) {
        let (tx, rx) = mpsc::channel::<Bytes>(8);
        copies.push(tx);
        let push = push_stream(
            url.clone(),
            node.config.cluster_id.clone(),
            rx,
            complete.clone(),
        );
        pushes.push((id, tokio::spawn(push)));
    }
    let received = receive_copying(
        node,
        body,
        node.config.max_blob_bytes,
        None,
        copies,
        &complete,
    )
    .await;
    // The members have had every byte by now; what is left is their fsync and answer.
    let deadline = tokio::time::Instant::now() + PUSH_SETTLE;
    let mut results = Vec::new();
    for (id, push) in pushes {
        let abort = push.abort_handle();
        let r = match tokio::time::timeout_at(deadline, push).await {
            Ok(Ok(r)) => r,
            Ok(Err(e)) => Err(e.to_string()),
            Err(_) => {
                abort.abort();
                Err("timed out".to_string())
            }
        };
        results.push((id, r));
    }
    let (hash, len) = received?;
    let results = results
        .into_iter()
        .map(|(id, r)| {
            let r = r.and_then(|(h, n)| {
                if (h, n) == (hash, len) {
                    Ok(())
                } else {
                    Err(format!(
                        "stored {} ({n} bytes), not {}",
                        hex(&h),
                        hex(&hash)
                    ))
                }
            });
            (id, r)
        })
        .collect();
    let (mut held, mut voters_n, mut failures) = tally(results, &voters, me);
    if held * 2 <= voters_n {
        // Those that fell behind or failed mid-stream get it by name (a member that has it
        // answers at once).
        (held, voters_n, failures) = place(node, hash, len).await;
    }
    if held * 2 <= voters_n {
        return Err(retry_later(&format!(
            "blob {} reached {held} of {voters_n} voters, not a majority: {}",
            hex(&hash),
            failures.join("; ")
        )));
    }
    Ok((hash, len))
}

/// [`receive`], and every chunk also sent to each of `copies` as it comes; a copy that does
/// not take a chunk within [`PEER_STALL`] is dropped (its stream then breaks off, see
/// [`push_stream`]). `complete` is set once the whole body was read.
async fn receive_copying(
    node: &NodeHandle,
    mut body: Incoming,
    limit: u64,
    expect: Option<[u8; 32]>,
    mut copies: Vec<mpsc::Sender<Bytes>>,
    complete: &AtomicBool,
) -> Result<([u8; 32], u64), Response<Body>> {
    use hyper::body::Body as _;
    // A declared length over the limit is refused before a byte is read (issue #13).
    if body.size_hint().lower() > limit {
        return Err(error(
            StatusCode::PAYLOAD_TOO_LARGE,
            &format!("a blob larger than {limit} bytes (max_blob_bytes)"),
        ));
    }
    let (tx, rx) = mpsc::channel::<Bytes>(8);
    let local = receive_from(&node.blobs, rx, limit, expect);
    let within = super::limits::body_timeout(node);
    let forward = async move {
        loop {
            let data = match super::limits::next_data(node, &mut body, Some(within)).await {
                Ok(Some(d)) => d,
                Ok(None) => break,
                Err(e) => return Err(format!("{e:?}")),
            };
            let sends = copies.iter().map(|c| {
                let c = c.clone();
                let d = data.clone();
                async move {
                    matches!(
                        tokio::time::timeout(PEER_STALL, c.send(d)).await,
                        Ok(Ok(()))
                    )
                }
            });
            let kept = futures_util::future::join_all(sends).await;
            let mut kept = kept.into_iter();
            copies.retain(|_| kept.next().unwrap_or(false));
            if tx.send(data).await.is_err() {
                // The local writer stopped (its error says why): the copies break off too.
                return Ok(());
            }
        }
        complete.store(true, Ordering::Release);
        Ok(())
    };
    let (written, forwarded) = tokio::join!(local, forward);
    if let Err(e) = forwarded {
        return Err(error(
            StatusCode::BAD_REQUEST,
            &format!("body broken off: {e}"),
        ));
    }
    written
}

/// Streams what arrives on `rx` to the member at `url` as an unnamed payload blob; the
/// `(hash, len)` it stored. If `rx` closes before `complete` is set, the request body ends
/// with an error, so the member stores nothing.
async fn push_stream(
    url: String,
    cluster: String,
    rx: mpsc::Receiver<Bytes>,
    complete: Arc<AtomicBool>,
) -> Result<([u8; 32], u64), String> {
    let frames = futures_util::stream::unfold(
        (rx, complete, false),
        |(mut rx, complete, ended)| async move {
            if ended {
                return None;
            }
            match rx.recv().await {
                Some(b) => Some((Ok(Frame::data(b)), (rx, complete, false))),
                None if complete.load(Ordering::Acquire) => None,
                None => Some((
                    Err(std::io::Error::other(
                        "the upload stopped streaming to this member",
                    )),
                    (rx, complete, true),
                )),
            }
        },
    );
    let body: BoxBody<Bytes, std::io::Error> = StreamBody::new(frames).boxed();
    let req = Request::put(format!("{url}/v1/blobs"))
        .header(CLUSTER_HEADER, cluster)
        .header(KIND_HEADER, "data")
        .body(body)
        .map_err(|e| e.to_string())?;
    let client = crate::tls::client::<BoxBody<Bytes, std::io::Error>>();
    let resp = client.request(req).await.map_err(|e| e.to_string())?;
    let status = resp.status();
    let bytes = resp
        .into_body()
        .collect()
        .await
        .map_err(|e| e.to_string())?
        .to_bytes();
    if !status.is_success() {
        return Err(format!("{status}: {}", String::from_utf8_lossy(&bytes)));
    }
    let v: serde_json::Value = serde_json::from_slice(&bytes).map_err(|e| e.to_string())?;
    let hash = v["sha256"]
        .as_str()
        .and_then(parse_hex)
        .ok_or("no sha256 in the answer")?;
    let len = v["len"].as_u64().ok_or("no len in the answer")?;
    Ok((hash, len))
}

/// `PUT /v1/blobs` from a peer streaming an upload as it arrives (`keel-blob-kind: data`):
/// stored under the hash of what came, which the answer names for the leader to compare.
pub async fn put_streamed(node: &NodeHandle, req: Request<Incoming>) -> Response<Body> {
    if let Some(refused) = foreign(node, &req) {
        return refused;
    }
    match receive(node, req.into_body(), node.config.max_blob_bytes, None).await {
        Ok((hash, len)) => json(
            StatusCode::OK,
            &serde_json::json!({"sha256": hex(&hash), "len": len}),
        ),
        Err(r) => r,
    }
}

/// Most blobs one command may attach.
pub const MAX_ATTACHMENTS: usize = 64;

/// The blob names of a `Keel-Attach` header value (`<sha256>[,<sha256>…]`, empty: none),
/// at most [`MAX_ATTACHMENTS`]; the 400's message otherwise.
pub fn attach_names(header: &str) -> Result<Vec<[u8; 32]>, String> {
    let header = header.trim();
    if header.is_empty() {
        return Ok(Vec::new());
    }
    let mut out = Vec::new();
    for name in header.split(',').map(str::trim) {
        let Some(sha256) = parse_hex(name) else {
            return Err(format!(
                "Keel-Attach: {name:?} is not a blob name (64 hex digits)"
            ));
        };
        if out.contains(&sha256) {
            continue; // named twice: attached once
        }
        if out.len() == MAX_ATTACHMENTS {
            return Err(format!(
                "Keel-Attach: at most {MAX_ATTACHMENTS} blobs per command"
            ));
        }
        out.push(sha256);
    }
    Ok(out)
}

/// The blobs a command's `Keel-Attach` header names (`<sha256>[,<sha256>…]`), each made
/// durable on a majority of voters before the command is proposed (design §6 rule 1): held
/// here, fetched from a peer if another node took the upload, then placed (members that
/// hold it already say so to a `HEAD`). The response to give instead, if one is refused.
pub(crate) async fn attachments(
    node: &NodeHandle,
    header: Option<&str>,
) -> Result<Vec<keel_raft::BlobRef>, Response<Body>> {
    let names =
        attach_names(header.unwrap_or("")).map_err(|e| error(StatusCode::BAD_REQUEST, &e))?;
    let mut out: Vec<keel_raft::BlobRef> = Vec::new();
    for sha256 in names {
        let name = hex(&sha256);
        // Before anything else: the entry is in no log until it is proposed, so only a
        // fresh age keeps garbage collection off this copy meanwhile.
        node.blobs.touch(&sha256);
        if !node.blobs.has(&sha256) {
            let blobs = node.blobs.clone();
            let fetched = tokio::task::spawn_blocking(move || blobs.fetch_once(&sha256)).await;
            if !matches!(fetched, Ok(true)) {
                return Err(error(
                    StatusCode::BAD_REQUEST,
                    &format!(
                        "Keel-Attach: no node holds blob {name}; upload it first (PUT /v1/blobs)"
                    ),
                ));
            }
        }
        let Some(len) = node.blobs.len_of(&sha256) else {
            return Err(retry_later(&format!(
                "blob {name} went away while attached"
            )));
        };
        let (held, voters, failures) = place_probed(node, sha256, len).await;
        if held * 2 <= voters {
            return Err(retry_later(&format!(
                "attached blob {name} reached {held} of {voters} voters: {}",
                failures.join("; ")
            )));
        }
        // Named twice: attached once.
        if !out.iter().any(|a| a.sha256 == sha256) {
            out.push(keel_raft::BlobRef { sha256, len });
        }
    }
    Ok(out)
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
        // Placed again: garbage collection's grace period starts over. The body is read to
        // its end (and dropped): answering before it would close the connection under a
        // sender still writing, which sees a failed push, not this 204.
        node.blobs.touch(&hash);
        let mut body = req.into_body();
        let mut seen = 0u64;
        let within = super::limits::body_timeout(node);
        while let Ok(Some(data)) = super::limits::next_data(node, &mut body, Some(within)).await {
            seen += data.len() as u64;
            if seen > node.config.max_blob_bytes {
                break;
            }
        }
        return super::full(StatusCode::NO_CONTENT, "text/plain", Bytes::new());
    }
    match receive(
        node,
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

/// The cluster a request says it comes from (`keel-cluster`), empty if none.
fn cluster_of(req: &Request<Incoming>) -> &str {
    req.headers()
        .get(CLUSTER_HEADER)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
}

/// Whether the request names this node's cluster: a member's.
fn from_member(node: &NodeHandle, req: &Request<Incoming>) -> bool {
    cluster_of(req).eq_ignore_ascii_case(&node.config.cluster_id)
}

/// 403 unless a peer's push names this node's cluster.
pub(crate) fn foreign(node: &NodeHandle, req: &Request<Incoming>) -> Option<Response<Body>> {
    if from_member(node, req) {
        return None;
    }
    let cluster = cluster_of(req);
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
    // A leader probing whether this member holds a blob it is about to attach: a yes must
    // keep holding until the entry naming it reaches this log, so the grace period starts
    // over (touched before it is looked up, so garbage collection cannot delete it between
    // the look and the touch).
    if head && from_member(node, req) {
        node.blobs.touch(&hash);
    }
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
pub fn parse_range(v: &HeaderValue, len: u64) -> Option<(u64, u64)> {
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
