//! The peer transport's sending side: Raft messages to other nodes over HTTP/1.1 (design
//! §1); `crate::http::peer` is the receiving side.
//!
//! Each node keeps one long-lived `POST /v1/raft/stream` request open to each peer and
//! writes its messages into the request body as they are produced: a stream of frames
//! (`u32` little-endian length, then a postcard `Vec<Message>` of whatever queued). Nothing
//! waits for a round trip, so appends are pipelined — the core bounds how many are in flight
//! (thesis §10.2.1 style `Replicate` progress) — and batched. Answers travel the same way in
//! the other direction, on the peer's own stream. Snapshots go on a request of their own
//! (`POST /v1/raft/snapshot`), the image streamed from a storage read transaction in
//! chunks with a bounded queue between the reader and the connection, so a large one never
//! holds up the appends and heartbeats behind it, nor grows memory ([`snapshot`]).
//!
//! A lost frame is simply lost: Raft retries what matters. When a peer stops reading (a
//! paused process), at most [`STREAM_FRAMES`] frames wait for it; later messages are dropped
//! and counted rather than piling up in memory.

use std::collections::{BTreeMap, HashMap};
use std::convert::Infallible;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use hyper::body::Frame;
use hyper::header::CONTENT_TYPE;
use hyper::{Request, StatusCode};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use keel_raft::{Message, MessageBody, NodeId};
use tokio::sync::mpsc;

use crate::metrics::Metrics;

pub mod snapshot;
pub mod wire;

/// Largest frame, or one-shot batch, accepted from an authenticated peer (issue #13). What
/// a sender builds: frames cut at [`FRAME_TARGET`] bytes, except one message alone, and the
/// largest message is an append of `keel_raft::Config::max_bytes_per_message` (4 MiB) of
/// entries, or a single entry, which storage caps at its `max_entry_bytes` (4 MiB): a
/// frame never needs more than 8 MiB and some bytes; twice that is the margin.
pub const MAX_PEER_FRAME: usize = 16 << 20;
/// Largest frame accepted before the sender has proven it belongs to the cluster: a
/// plaintext stream's frames are refused beyond this unless their first message's header
/// (read from the frame's first bytes) names this cluster and an acceptable sender.
pub const MAX_UNPROVEN_FRAME: usize = 64 << 10;
/// A sender starts a new frame rather than grow one past this many bytes.
const FRAME_TARGET: usize = 8 << 20;
/// Frames that may wait for a slow peer before new ones are dropped.
const STREAM_FRAMES: usize = 256;
/// Messages in one frame at most (more wait for the next frame).
const FRAME_MESSAGES: usize = 4096;
/// Chunks of a snapshot image.
const SNAPSHOT_CHUNK: usize = 1 << 20;
/// Chunks read ahead of the connection: the sender's memory for one image.
const SNAPSHOT_READ_AHEAD: usize = 4;
/// A snapshot transfer that moves no byte for this long is abandoned (the core asks again).
const SNAPSHOT_STALL: Duration = Duration::from_secs(30);

/// A snapshot to send: the `InstallSnapshot` message and a read view of the applied state
/// it describes.
pub type SnapshotJob = (Message, Box<dyn keel_storage::StateView + Send>);

/// What [`Outboxes::connect`] hands a new peer's sender task.
pub struct PeerQueues {
    /// Messages.
    pub messages: mpsc::UnboundedReceiver<Message>,
    /// Snapshots.
    pub snapshots: mpsc::Receiver<SnapshotJob>,
}
/// Pause before reconnecting to a peer that is down or refused us.
const RECONNECT_AFTER: Duration = Duration::from_millis(50);

/// One queue per peer, drained by that peer's sender task ([`peer_sender`]). Shared: the
/// driver sends what may leave at once and connects and drops peers as the membership
/// changes; the log writer sends what may leave only once durable.
#[derive(Clone, Default)]
pub struct Outboxes(
    Arc<Mutex<HashMap<NodeId, Outbox>>>,
    /// When each node without an address was last reported (to log it every 10 s, not per
    /// message).
    Arc<Mutex<HashMap<NodeId, std::time::Instant>>>,
);

struct Outbox {
    messages: mpsc::UnboundedSender<Message>,
    snapshots: mpsc::Sender<SnapshotJob>,
}

impl Outboxes {
    /// Queues a snapshot for its peer; dropped when one is queued already (the sender
    /// takes the newest when it is free, and the core asks again if this one is lost).
    pub fn send_snapshot(&self, job: SnapshotJob) {
        tracing::debug!(target: "keel::msg", "send {}", job.0);
        if let Some(outbox) = self.lock().get(&job.0.to) {
            let _ = outbox.snapshots.try_send(job);
        }
    }

    /// Queues `m` for its peer (dropped if that peer is not, or no longer, a member).
    pub fn send(&self, m: Message) {
        tracing::debug!(target: "keel::msg", "send {m}");
        if let Some(outbox) = self.lock().get(&m.to) {
            let _ = outbox.messages.send(m);
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
    pub fn connect(&self, members: &BTreeMap<NodeId, String>) -> Vec<(NodeId, PeerQueues)> {
        let mut map = self.lock();
        map.retain(|id, _| members.contains_key(id));
        let mut new = Vec::new();
        for &id in members.keys() {
            if let std::collections::hash_map::Entry::Vacant(slot) = map.entry(id) {
                let (tx, rx) = mpsc::unbounded_channel();
                let (stx, srx) = mpsc::channel(1);
                slot.insert(Outbox {
                    messages: tx,
                    snapshots: stx,
                });
                new.push((
                    id,
                    PeerQueues {
                        messages: rx,
                        snapshots: srx,
                    },
                ));
            }
        }
        new
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<NodeId, Outbox>> {
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
    queues: PeerQueues,
    metrics: std::sync::Arc<Metrics>,
    not_a_member: NotAMember,
) {
    let PeerQueues {
        messages: mut outbox,
        snapshots,
    } = queues;
    // Over TLS when the URL is https://, presenting this node's certificate (crate::tls).
    let http = crate::tls::connector();
    let streams: Client<_, FrameBody> = Client::builder(TokioExecutor::new()).build(http.clone());
    tokio::spawn(snapshot_sender(url.clone(), snapshots, http));
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
                            let body = crate::client::read_capped(resp.into_body(), 64 << 10, &url).await.unwrap_or_default();
                            let said: serde_json::Value = serde_json::from_slice(&body).unwrap_or_default();
                            not_a_member(said["error"].as_str().unwrap_or("not a member").to_string());
                            tokio::time::sleep(Duration::from_secs(1)).await;
                        }
                        Ok(Ok(resp)) if resp.status() == StatusCode::FORBIDDEN => {
                            let body = crate::client::read_capped(resp.into_body(), 64 << 10, &url).await.unwrap_or_default();
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
                        // Snapshots come through `Outboxes::send_snapshot`, with their image.
                        if !matches!(m.body, MessageBody::InstallSnapshot { .. }) {
                            batch.push(m);
                        }
                        if batch.len() < FRAME_MESSAGES {
                            next = outbox.try_recv().ok();
                        }
                    }
                    for batch in split_frames(batch, &metrics) {
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
}

/// Cuts a batch into frames of at most [`FRAME_TARGET`] bytes (one message may be a frame
/// of its own beyond that), so that every frame fits the receiver's [`MAX_PEER_FRAME`]. A
/// message that could never fit is dropped and counted: the receiver would refuse it.
fn split_frames(batch: Vec<Message>, metrics: &Metrics) -> Vec<Vec<Message>> {
    let mut frames = Vec::new();
    let mut current = Vec::new();
    let mut bytes = 0usize;
    for m in batch {
        let size = postcard::serialize_with_flavor(&m, postcard::ser_flavors::Size::default())
            .unwrap_or(usize::MAX);
        if size > MAX_PEER_FRAME - 16 {
            tracing::warn!(target: "keel::msg", to = m.to, size, "a peer message larger than any frame a peer accepts: dropped");
            metrics.peer_dropped.inc();
            continue;
        }
        if !current.is_empty() && bytes + size > FRAME_TARGET {
            frames.push(std::mem::take(&mut current));
            bytes = 0;
        }
        bytes += size;
        current.push(m);
    }
    if !current.is_empty() {
        frames.push(current);
    }
    frames
}

/// One frame: `u32` little-endian length, then the postcard `Vec<Message>`.
pub fn encode_frame(batch: &[Message]) -> Option<Bytes> {
    let mut out = vec![0u8; 4];
    out = postcard::to_extend(batch, out).ok()?;
    let len = u32::try_from(out.len() - 4).ok()?;
    out[..4].copy_from_slice(&len.to_le_bytes());
    Some(Bytes::from(out))
}

/// Sends snapshots to one peer, one at a time, each as a `POST /v1/raft/snapshot` whose
/// body is the message and then the image, read from the view on a blocking thread a few
/// chunks ahead of the connection. A job that queued while one was sent is the newest the
/// core asked for; older ones were dropped at the queue.
///
/// A transfer that breaks keeps its view (a read transaction: the same image, byte for
/// byte) for the core's next request, and the receiver's partial file lets it go on from
/// the byte the receiver holds instead of from the start.
async fn snapshot_sender(
    url: String,
    mut jobs: mpsc::Receiver<SnapshotJob>,
    http: crate::tls::Connector,
) {
    let client: Client<_, FrameBody> = Client::builder(TokioExecutor::new())
        .pool_idle_timeout(crate::tls::POOL_IDLE)
        .pool_timer(hyper_util::rt::TokioTimer::new())
        .build(http);
    let target = format!("{url}/v1/raft/snapshot");
    let mut pinned: Option<(Message, Box<dyn keel_storage::StateView + Send>, Instant)> = None;
    while let Some((mut message, mut view)) = jobs.recv().await {
        let Some(wanted) = snapshot_index(&message) else {
            continue;
        };
        if let Some((old, old_view, since)) = pinned.take()
            && snapshot_index(&old).is_some_and(|i| i >= wanted)
            && since.elapsed() < PIN_FOR
        {
            // Same image as the broken transfer: resumable. Only the envelope is new.
            message.body = old.body;
            view = old_view;
        }
        let index = snapshot_index(&message).unwrap_or(wanted);
        let mut offset = 0u64;
        let mut view = Some(view);
        // The second attempt goes on from the bytes the receiver says it holds (409).
        for _attempt in 0..2 {
            let Some(v) = view.take() else { break };
            let (tx, rx) = mpsc::channel(SNAPSHOT_READ_AHEAD);
            let Ok(envelope) = postcard::to_allocvec(&vec![message.clone()]) else {
                break;
            };
            let producer = tokio::task::spawn_blocking(move || produce(v, envelope, offset, tx));
            let Ok(req) = Request::post(&target)
                .header(CONTENT_TYPE, "application/x-keel-snapshot")
                .header("keel-snapshot-offset", offset)
                .body(FrameBody(rx))
            else {
                break;
            };
            let outcome = client.request(req).await;
            // The view comes back from the reader thread, for a resend of the same image.
            view = producer.await.ok();
            match outcome {
                Ok(resp) if resp.status().is_success() => {
                    tracing::info!(target: "keel::msg", peer = %url, index, "snapshot sent and installed");
                    view = None;
                    // Requests the core made while this one was in flight are answered by
                    // it (the follower's acknowledgement is on its way); the core asks
                    // again if it still needs one.
                    while jobs.try_recv().is_ok() {}
                    break;
                }
                Ok(resp) if resp.status() == StatusCode::CONFLICT => {
                    let have = resp
                        .headers()
                        .get("keel-snapshot-have")
                        .and_then(|v| v.to_str().ok()?.parse().ok());
                    match have {
                        Some(have) => offset = have,
                        None => break, // being received already
                    }
                }
                Ok(resp) => {
                    let status = resp.status();
                    let body = crate::client::read_capped(resp.into_body(), 64 << 10, &url)
                        .await
                        .unwrap_or_default();
                    tracing::warn!(target: "keel::msg", peer = %url, index, %status, answer = %String::from_utf8_lossy(&body), "snapshot refused");
                    view = None;
                    break;
                }
                Err(e) => {
                    tracing::warn!(target: "keel::msg", peer = %url, index, "snapshot not delivered: {e}");
                    break;
                }
            }
        }
        if let Some(v) = view {
            pinned = Some((message, v, Instant::now()));
        }
    }
}

/// How long a broken transfer's view is kept for a resume.
const PIN_FOR: Duration = Duration::from_secs(120);

fn snapshot_index(m: &Message) -> Option<keel_raft::Index> {
    match &m.body {
        MessageBody::InstallSnapshot { snapshot } => Some(snapshot.index),
        _ => None,
    }
}

/// The body of a snapshot request: the envelope (unless resuming), then the image from
/// byte `offset`, chunk by chunk into `tx`. Returns the view, for a resend.
fn produce(
    view: Box<dyn keel_storage::StateView + Send>,
    envelope: Vec<u8>,
    offset: u64,
    tx: mpsc::Sender<Bytes>,
) -> Box<dyn keel_storage::StateView + Send> {
    let mut head = (envelope.len() as u32).to_le_bytes().to_vec();
    head.extend_from_slice(&envelope);
    let send = |bytes: Vec<u8>| {
        // A stalled connection ends the transfer instead of holding the view for ever.
        let deadline = std::time::Instant::now() + SNAPSHOT_STALL;
        let mut item = Bytes::from(bytes);
        loop {
            match tx.try_send(item) {
                Ok(()) => return true,
                Err(mpsc::error::TrySendError::Closed(_)) => return false,
                Err(mpsc::error::TrySendError::Full(back)) => {
                    if std::time::Instant::now() > deadline {
                        return false;
                    }
                    item = back;
                    std::thread::sleep(Duration::from_millis(2));
                }
            }
        }
    };
    // The envelope goes first on a resume too: the receiver checks sender and cluster on
    // every request.
    if !send(head) {
        return view;
    }
    let mut chunks = keel_storage::SnapshotChunks::new(view, SNAPSHOT_CHUNK);
    let mut at = 0u64;
    for chunk in chunks.by_ref() {
        let chunk = match chunk {
            Ok(c) => c,
            Err(e) => {
                // The body ends short: the receiver's check refuses the image.
                tracing::warn!(target: "keel::msg", "reading the snapshot image failed: {e}");
                break;
            }
        };
        let end = at + chunk.len() as u64;
        if end > offset {
            let skip = offset.saturating_sub(at) as usize;
            if !send(chunk[skip..].to_vec()) {
                break;
            }
        }
        at = end;
    }
    chunks.into_view()
}

#[cfg(test)]
mod tests {
    use super::*;
    use keel_raft::{ClusterId, Command, Entry, Payload, Record};

    fn append(entries: usize, bytes: usize) -> Message {
        let entries = (1..=entries as u64)
            .map(|index| Entry {
                index,
                term: 1,
                timestamp_ms: 0,
                record: Record::Command(Command {
                    plugin: "kv".into(),
                    client: None,
                    payload: Payload::Inline(vec![1; bytes]),
                }),
            })
            .collect();
        Message {
            from: 1,
            to: 2,
            cluster: ClusterId(7),
            term: 1,
            body: MessageBody::AppendEntries {
                prev_index: 0,
                prev_term: 0,
                entries,
                commit: 0,
            },
        }
    }

    /// Whatever queued, every frame the sender builds fits what a receiver accepts: cut at
    /// FRAME_TARGET, one message alone beyond it, nothing lost on the way.
    #[test]
    fn frames_are_cut_to_fit_the_receivers_limit() {
        let metrics = Metrics::default();
        // Twelve appends of 4 MiB each (the core's budget), and small messages between.
        let mut batch = Vec::new();
        for _ in 0..12 {
            batch.push(append(4, 1 << 20));
            batch.push(append(0, 0));
        }
        let frames = split_frames(batch.clone(), &metrics);
        assert!(frames.len() >= 6, "{} frames", frames.len());
        for f in &frames {
            let encoded = encode_frame(f).expect("encodes");
            assert!(encoded.len() - 4 <= MAX_PEER_FRAME);
            assert!(f.len() == 1 || encoded.len() - 4 <= FRAME_TARGET);
        }
        assert_eq!(frames.concat(), batch, "the messages, in order");
        // One message no receiver would take is dropped and counted, not sent.
        let frames = split_frames(vec![append(1, MAX_PEER_FRAME)], &metrics);
        assert!(frames.is_empty());
        assert_eq!(metrics.peer_dropped.get(), 1);
    }
}
