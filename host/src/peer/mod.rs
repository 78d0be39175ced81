//! The peer transport's sending side: Raft messages to other nodes over HTTP/1.1 (design
//! §1); `crate::http::peer` is the receiving side.
//!
//! Each node keeps one long-lived `POST /v1/raft/stream` request open to each peer and
//! writes its messages into the request body as they are produced: a stream of frames
//! (`u32` little-endian length, then a postcard `Vec<Message>` of whatever queued). Nothing
//! waits for a round trip, so appends are pipelined — the core bounds how many are in flight
//! (thesis §10.2.1 style `Replicate` progress) — and batched. Answers travel the same way in
//! the other direction, on the peer's own stream. Snapshots go on a request of their own,
//! streamed in chunks, so a large one never holds up the appends and heartbeats behind it.
//!
//! A lost frame is simply lost: Raft retries what matters. When a peer stops reading (a
//! paused process), at most [`STREAM_FRAMES`] frames wait for it; later messages are dropped
//! and counted rather than piling up in memory.

use std::collections::{BTreeMap, HashMap};
use std::convert::Infallible;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::BodyExt;
use hyper::body::Frame;
use hyper::header::CONTENT_TYPE;
use hyper::{Request, StatusCode};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use keel_raft::{Message, MessageBody, NodeId};
use tokio::sync::mpsc;

use crate::metrics::Metrics;

/// Largest frame, or one-shot batch, accepted from a peer (snapshots travel one-shot).
pub const MAX_PEER_BODY: usize = 512 << 20;
/// Frames that may wait for a slow peer before new ones are dropped.
const STREAM_FRAMES: usize = 256;
/// Messages in one frame at most (more wait for the next frame).
const FRAME_MESSAGES: usize = 4096;
/// Chunks of a snapshot request body.
const SNAPSHOT_CHUNK: usize = 1 << 20;
/// Pause before reconnecting to a peer that is down or refused us.
const RECONNECT_AFTER: Duration = Duration::from_millis(50);

/// One queue per peer, drained by that peer's sender task ([`peer_sender`]). Shared: the
/// driver sends what may leave at once and connects and drops peers as the membership
/// changes; the log writer sends what may leave only once durable.
#[derive(Clone, Default)]
pub struct Outboxes(
    Arc<Mutex<HashMap<NodeId, mpsc::UnboundedSender<Message>>>>,
    /// When each node without an address was last reported (to log it every 10 s, not per
    /// message).
    Arc<Mutex<HashMap<NodeId, std::time::Instant>>>,
);

impl Outboxes {
    /// Queues `m` for its peer (dropped if that peer is not, or no longer, a member).
    pub fn send(&self, m: Message) {
        tracing::debug!(target: "keel::msg", "send {m}");
        if let Some(outbox) = self.lock().get(&m.to) {
            let _ = outbox.send(m);
            return;
        }
        // An answer to a node this one has no address for: it hears from it (a leader
        // adding it, say) and cannot answer. Said, not silent.
        let mut warned = self.1.lock().unwrap_or_else(|e| e.into_inner());
        let due = warned
            .get(&m.to)
            .is_none_or(|t| t.elapsed() >= Duration::from_secs(10));
        if due {
            warned.insert(m.to, std::time::Instant::now());
            tracing::warn!(
                target: "keel::raft",
                to = m.to,
                "node {} is not in this node's address book: messages to it are dropped; \
                 start a joining node with `--join URL` (or list every member in `peers`)",
                m.to
            );
        }
    }

    /// Keeps the peers in `members` (dropping the others' queues ends their senders) and
    /// returns those of `members` that have no queue yet, each with a new one.
    pub fn connect(
        &self,
        members: &BTreeMap<NodeId, String>,
    ) -> Vec<(NodeId, mpsc::UnboundedReceiver<Message>)> {
        let mut map = self.lock();
        map.retain(|id, _| members.contains_key(id));
        let mut new = Vec::new();
        for &id in members.keys() {
            if let std::collections::hash_map::Entry::Vacant(slot) = map.entry(id) {
                let (tx, rx) = mpsc::unbounded_channel();
                slot.insert(tx);
                new.push((id, rx));
            }
        }
        new
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<NodeId, mpsc::UnboundedSender<Message>>> {
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// The request body of a stream: frames handed over by the sender task.
struct FrameBody(mpsc::Receiver<Bytes>);

impl hyper::body::Body for FrameBody {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        self.0
            .poll_recv(cx)
            .map(|frame| frame.map(|b| Ok(Frame::data(b))))
    }
}

/// Called with what a peer said when it refused us as a non-member (HTTP 410).
pub type NotAMember = std::sync::Arc<dyn Fn(String) + Send + Sync>;

/// Sends one peer's outbox for as long as the node runs.
pub async fn peer_sender(
    url: String,
    mut outbox: mpsc::UnboundedReceiver<Message>,
    metrics: std::sync::Arc<Metrics>,
    not_a_member: NotAMember,
) {
    // Over TLS when the URL is https://, presenting this node's certificate (crate::tls).
    let http = crate::tls::connector();
    let streams: Client<_, FrameBody> = Client::builder(TokioExecutor::new()).build(http.clone());
    let (snapshots, snapshot_rx) = mpsc::channel::<Message>(1);
    tokio::spawn(snapshot_sender(url.clone(), snapshot_rx, http));
    let target = format!("{url}/v1/raft/stream");
    'connect: loop {
        let (frames, rx) = mpsc::channel::<Bytes>(STREAM_FRAMES);
        let Ok(req) = Request::post(&target)
            .header(CONTENT_TYPE, "application/x-keel-raft-stream")
            .body(FrameBody(rx))
        else {
            return;
        };
        // The response comes only when the stream ends: the peer went away, restarted, or
        // refused us (another cluster).
        let mut ended = tokio::spawn(streams.request(req));
        loop {
            tokio::select! {
                outcome = &mut ended => {
                    match outcome {
                        Ok(Ok(resp)) if resp.status() == StatusCode::GONE => {
                            let body = resp.into_body().collect().await.map(|b| b.to_bytes()).unwrap_or_default();
                            let said: serde_json::Value = serde_json::from_slice(&body).unwrap_or_default();
                            not_a_member(said["error"].as_str().unwrap_or("not a member").to_string());
                            tokio::time::sleep(Duration::from_secs(1)).await;
                        }
                        Ok(Ok(resp)) if resp.status() == StatusCode::FORBIDDEN => {
                            let body = resp.into_body().collect().await.map(|b| b.to_bytes()).unwrap_or_default();
                            tracing::warn!(target: "keel::msg", peer = %url, answer = %String::from_utf8_lossy(&body), "peer refused our stream");
                            tokio::time::sleep(Duration::from_secs(1)).await;
                        }
                        _ => tokio::time::sleep(RECONNECT_AFTER).await,
                    }
                    // What queued while the peer was unreachable is stale (Raft resends what
                    // still matters); dropping it keeps a long outage from growing the queue.
                    let mut stale = 0;
                    while outbox.try_recv().is_ok() {
                        stale += 1;
                    }
                    metrics.peer_dropped.inc_by(stale);
                    continue 'connect;
                }
                first = outbox.recv() => {
                    let Some(first) = first else { return };
                    let mut batch = Vec::with_capacity(16);
                    let mut next = Some(first);
                    while let Some(m) = next.take() {
                        if matches!(m.body, MessageBody::InstallSnapshot { .. }) {
                            // One at a time: the core resends if this one is dropped.
                            if snapshots.try_send(m).is_err() {
                                metrics.peer_dropped.inc();
                            }
                        } else {
                            batch.push(m);
                        }
                        if batch.len() < FRAME_MESSAGES {
                            next = outbox.try_recv().ok();
                        }
                    }
                    if batch.is_empty() {
                        continue;
                    }
                    let n = batch.len() as u64;
                    let Some(frame) = encode_frame(&batch) else { continue };
                    match frames.try_send(frame) {
                        Ok(()) => {}
                        Err(mpsc::error::TrySendError::Full(_)) => {
                            metrics.peer_dropped.inc_by(n);
                        }
                        Err(mpsc::error::TrySendError::Closed(_)) => {
                            metrics.peer_dropped.inc_by(n);
                            continue 'connect;
                        }
                    }
                }
            }
        }
    }
}

fn encode_frame(batch: &[Message]) -> Option<Bytes> {
    let mut out = vec![0u8; 4];
    out = postcard::to_extend(batch, out).ok()?;
    let len = u32::try_from(out.len() - 4).ok()?;
    out[..4].copy_from_slice(&len.to_le_bytes());
    Some(Bytes::from(out))
}

/// Sends snapshots, each as one `POST /v1/raft` whose body goes out in chunks.
async fn snapshot_sender(
    url: String,
    mut rx: mpsc::Receiver<Message>,
    http: crate::tls::Connector,
) {
    type Chunks = http_body_util::StreamBody<
        futures_util::stream::Iter<std::vec::IntoIter<Result<Frame<Bytes>, Infallible>>>,
    >;
    let client: Client<_, Chunks> = Client::builder(TokioExecutor::new()).build(http);
    let target = format!("{url}/v1/raft");
    while let Some(m) = rx.recv().await {
        let Ok(encoded) = postcard::to_allocvec(&vec![m]) else {
            continue;
        };
        let encoded = Bytes::from(encoded);
        let chunks: Vec<_> = (0..encoded.len())
            .step_by(SNAPSHOT_CHUNK)
            .map(|at| {
                let end = (at + SNAPSHOT_CHUNK).min(encoded.len());
                Ok(Frame::data(encoded.slice(at..end)))
            })
            .collect();
        let body = http_body_util::StreamBody::new(futures_util::stream::iter(chunks));
        let Ok(req) = Request::post(&target)
            .header(CONTENT_TYPE, "application/octet-stream")
            .body(body)
        else {
            continue;
        };
        match tokio::time::timeout(Duration::from_secs(60), client.request(req)).await {
            Ok(Ok(resp)) if resp.status().is_success() => {}
            Ok(Ok(resp)) => {
                tracing::warn!(target: "keel::msg", peer = %url, status = %resp.status(), "snapshot refused");
            }
            _ => {
                tracing::warn!(target: "keel::msg", peer = %url, "snapshot not delivered");
            }
        }
    }
}
