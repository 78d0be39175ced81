//! The receiving end of the peer transport (`crate::peer` sends): `POST /v1/raft/stream`
//! frames, `POST /v1/raft` batches, and `POST /v1/raft/snapshot` images, decoded, checked
//! for the sender and the cluster UUID, and queued for the driver.

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::{Request, Response, StatusCode};
use keel_raft::{Message, NodeId};

use super::limits::BodyError;
use super::{Body, Refusal, error, retry_later};
use crate::driver::{Input, NodeHandle, SubmitError};
use crate::peer::wire::{FrameError, Frames, Head, MAX_PEER_FRAME, MAX_UNPROVEN_FRAME, Next};
use crate::tls::Transport;

/// `POST /v1/raft/stream`: reads frames until the peer closes the stream. Each frame's
/// length is checked before it is buffered; until the stream has proven it comes from the
/// cluster (`crate::peer::wire`), frames are small and the body may not stall.
pub async fn peer_stream(node: &NodeHandle, req: Request<Incoming>) -> Response<Body> {
    let sender = sender_of(&req);
    let mut body = req.into_body();
    let mut frames = Frames::new(matches!(sender, Sender::Only(_)));
    let stall = super::limits::body_timeout(node);
    loop {
        // A proven peer's stream is idle between messages by design (a follower's stream
        // to another follower carries nothing until an election).
        let within = (!frames.proven).then_some(stall);
        match super::limits::next_data(node, &mut body, within).await {
            Ok(Some(data)) => frames.push(&data),
            Ok(None) => break,
            Err(BodyError::Stalled(d)) => return Refusal::Stalled(d).response(),
            Err(BodyError::Broken(_)) => break, // the peer went away mid-frame; it reconnects
        }
        loop {
            match frames.poll_frame() {
                Ok(Next::More) => break,
                Ok(Next::Check(head)) => match vouch(node, head, sender) {
                    Ok(()) => frames.vouch(),
                    Err(refused) => return refused.response(),
                },
                Ok(Next::Frame(frame)) => {
                    if let Err(refused) = deliver(node, &frame, sender) {
                        return refused.response();
                    }
                    frames.vouch();
                }
                Err(e) => return frame_refused(node, e),
            }
        }
    }
    if frames.held() > 0 {
        return error(StatusCode::BAD_REQUEST, "peer stream ended inside a frame");
    }
    no_content()
}

/// `POST /v1/raft`: one batch of messages (peers that do not stream), bounded like a frame.
pub async fn peer_messages(node: &NodeHandle, req: Request<Incoming>) -> Response<Body> {
    let sender = sender_of(&req);
    let mut body = req.into_body();
    let mut frames = Frames::new(matches!(sender, Sender::Only(_)));
    let declared = hyper::body::Body::size_hint(&body).lower();
    let Ok(len) = u32::try_from(declared) else {
        return frame_refused(
            node,
            FrameError::TooLarge {
                len: usize::MAX,
                limit: MAX_PEER_FRAME,
            },
        );
    };
    // The body is one frame without the length prefix: given one, the same checks apply.
    frames.push(&len.to_le_bytes());
    let stall = super::limits::body_timeout(node);
    let mut got = 0u64;
    loop {
        match frames.poll_frame() {
            Ok(Next::Frame(frame)) => {
                return match deliver(node, &frame, sender) {
                    Ok(()) => no_content(),
                    Err(refused) => refused.response(),
                };
            }
            Ok(Next::Check(head)) => match vouch(node, head, sender) {
                Ok(()) => frames.vouch(),
                Err(refused) => return refused.response(),
            },
            Ok(Next::More) => {}
            Err(e) => return frame_refused(node, e),
        }
        match super::limits::next_data(node, &mut body, Some(stall)).await {
            Ok(Some(data)) if got + data.len() as u64 <= u64::from(len) => {
                got += data.len() as u64;
                frames.push(&data);
            }
            Ok(Some(_)) => return error(StatusCode::BAD_REQUEST, "body longer than declared"),
            Ok(None) => return error(StatusCode::BAD_REQUEST, "a peer batch needs a length"),
            Err(e) => return Refusal::from(e).response(),
        }
    }
}

/// The answer to a frame that may not be read, counted.
fn frame_refused(node: &NodeHandle, e: FrameError) -> Response<Body> {
    node.metrics.peer_frames_refused.inc();
    match e {
        FrameError::TooLarge { len, limit } => {
            tracing::warn!(target: "keel::msg", len, limit, "refused an oversized peer frame");
            error(
                StatusCode::PAYLOAD_TOO_LARGE,
                &format!("peer frame of {len} bytes; the limit is {limit} on this stream"),
            )
        }
        FrameError::Malformed => error(
            StatusCode::BAD_REQUEST,
            &format!(
                "a peer frame over {MAX_UNPROVEN_FRAME} bytes must start with a message of this cluster"
            ),
        ),
    }
}

/// Checks a large frame's first message header on a stream not yet proven: the sender the
/// connection allows and this cluster (in plaintext, knowing the UUID is the proof).
fn vouch(node: &NodeHandle, head: Head, sender: Sender) -> Result<(), Refused> {
    let allowed = match sender {
        Sender::Anyone => true,
        Sender::Only(id) => head.from == id,
        Sender::Nobody => false,
    };
    if !allowed {
        node.metrics.peer_identity_refused.inc();
        return Err(Refused::Foreign(format!(
            "message from node {} on a connection whose certificate does not name it",
            head.from
        )));
    }
    if head.cluster != node.cluster {
        node.metrics.foreign_cluster.inc();
        return Err(Refused::Foreign(format!(
            "message from node {} belongs to cluster {}, not {}",
            head.from, head.cluster, node.cluster
        )));
    }
    Ok(())
}

/// Largest envelope (the `InstallSnapshot` message before the image): a configuration with
/// its addresses.
const MAX_ENVELOPE: usize = 1 << 20;

/// Images being received, by staging file: one transfer per file at a time.
static RECEIVING: std::sync::Mutex<Vec<std::path::PathBuf>> = std::sync::Mutex::new(Vec::new());

/// `POST /v1/raft/snapshot`: an `InstallSnapshot` message (`u32` length, postcard), then
/// the image from byte `keel-snapshot-offset` on (issue #16). The image goes to a staging
/// file as it arrives; once whole and verified, the message and the image go to the driver
/// together. A sender whose offset is not what is staged is told what is (409, `have`), and
/// resumes from there.
pub async fn peer_snapshot(node: &NodeHandle, req: Request<Incoming>) -> Response<Body> {
    let sender = sender_of(&req);
    let offset: u64 = req
        .headers()
        .get("keel-snapshot-offset")
        .and_then(|v| super::parse_u64(v.as_bytes()))
        .unwrap_or(0);
    let mut body = req.into_body();
    let mut frames = Frames::new(matches!(sender, Sender::Only(_)));
    let stall = super::limits::body_timeout(node);
    // The envelope first, a frame bounded before it is buffered.
    let message = loop {
        match frames.poll_frame() {
            Ok(Next::More) => {}
            Ok(Next::Check(head)) => match vouch(node, head, sender) {
                Ok(()) => frames.vouch(),
                Err(refused) => return refused.response(),
            },
            Ok(Next::Frame(envelope)) if envelope.len() > MAX_ENVELOPE => {
                return error(StatusCode::PAYLOAD_TOO_LARGE, "snapshot envelope too large");
            }
            Ok(Next::Frame(envelope)) => match check(node, &envelope, sender) {
                Ok(mut batch) if batch.len() == 1 => break batch.remove(0),
                Ok(_) => return error(StatusCode::BAD_REQUEST, "one message per snapshot"),
                Err(refused) => return refused.response(),
            },
            Err(e) => return frame_refused(node, e),
        }
        match super::limits::next_data(node, &mut body, Some(stall)).await {
            Ok(Some(data)) => frames.push(&data),
            Ok(None) => {
                return error(
                    StatusCode::BAD_REQUEST,
                    "snapshot request ended in its envelope",
                );
            }
            Err(e) => return Refusal::from(e).response(),
        }
    };
    let buf = frames.into_rest();
    let keel_raft::MessageBody::InstallSnapshot { snapshot: meta } = &message.body else {
        return error(StatusCode::BAD_REQUEST, "not an InstallSnapshot message");
    };
    let dir = node
        .config
        .data_dir
        .join(crate::peer::snapshot::STAGING_DIR);
    let mut staging = match crate::peer::snapshot::Staging::file(&dir, message.from, meta) {
        Ok(s) => s,
        Err(e) => return error(StatusCode::INTERNAL_SERVER_ERROR, &format!("staging: {e}")),
    };
    let key = dir.join(format!("{}-{}-{}", message.from, meta.index, meta.term));
    {
        let mut receiving = RECEIVING.lock().unwrap_or_else(|e| e.into_inner());
        if receiving.contains(&key) {
            return error(StatusCode::CONFLICT, "this image is being received already");
        }
        receiving.push(key.clone());
    }
    let _done = Receiving(key);
    if offset != staging.have() {
        let mut r = super::json(
            StatusCode::CONFLICT,
            &serde_json::json!({"error": "resume from the bytes held", "have": staging.have()}),
        );
        r.headers_mut()
            .insert("keel-snapshot-have", staging.have().into());
        return r;
    }
    let mut at = offset;
    if !buf.is_empty() {
        if let Err(e) = staging.accept(at, &buf) {
            return error(StatusCode::BAD_REQUEST, &e.to_string());
        }
        at += buf.len() as u64;
    }
    loop {
        match super::limits::next_data(node, &mut body, Some(stall)).await {
            Ok(None) => break,
            // The sender went away or stalled: the partial file stays for it to resume.
            Err(e) => return Refusal::from(e).response(),
            Ok(Some(data)) => {
                if let Err(e) = staging.accept(at, &data) {
                    return error(StatusCode::BAD_REQUEST, &e.to_string());
                }
                at += data.len() as u64;
            }
        }
    }
    let mut staged = match tokio::task::spawn_blocking(move || staging.finish()).await {
        Ok(Ok(staged)) => staged,
        Ok(Err(e)) => {
            tracing::warn!(target: "keel::msg", from = message.from, "snapshot image refused: {e}");
            return error(
                StatusCode::UNPROCESSABLE_ENTITY,
                &format!("snapshot image refused: {e}"),
            );
        }
        Err(_) => return error(StatusCode::INTERNAL_SERVER_ERROR, "snapshot check stopped"),
    };
    tracing::info!(target: "keel::msg", from = message.from, index = staged.meta().index, bytes = at, "snapshot image received");
    // Answered once the driver has installed the image (or the core refused it): until then
    // the sender counts the transfer as in flight and starts no other.
    let done = staged.on_done();
    match node.submit(Input::Snapshot {
        message,
        image: staged,
    }) {
        Ok(()) => {
            let _ = done.await;
            no_content()
        }
        // The image is dropped (deleted); the core asks again.
        Err(SubmitError::Full(_)) => retry_later("driver busy"),
        Err(SubmitError::Stopping) => retry_later("node is stopping"),
    }
}

/// Removes a transfer from [`RECEIVING`] when its request ends, however it ends.
struct Receiving(std::path::PathBuf);

impl Drop for Receiving {
    fn drop(&mut self) {
        RECEIVING
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .retain(|k| *k != self.0);
    }
}

/// Why a batch from a peer was not delivered.
enum Refused {
    Malformed,
    Foreign(String),
    /// A node outside this node's configuration asks for votes: it was removed (or never
    /// added), and is told so instead of campaigning unheard for ever.
    NotAMember(String),
    Stopping,
}

impl Refused {
    fn response(self) -> Response<Body> {
        match self {
            Refused::Malformed => error(StatusCode::BAD_REQUEST, "malformed peer message batch"),
            Refused::Foreign(why) => error(StatusCode::FORBIDDEN, &why),
            Refused::NotAMember(why) => error(StatusCode::GONE, &why),
            Refused::Stopping => retry_later("node is stopping"),
        }
    }
}

/// Who may send on this connection: over TLS, only the node its certificate names (the
/// listener has already refused TLS connections without one); in plaintext, anyone.
fn sender_of(req: &Request<Incoming>) -> Sender {
    match req.extensions().get::<Transport>() {
        Some(Transport {
            tls: true,
            peer: Some(id),
        }) => Sender::Only(*id),
        Some(Transport { tls: true, .. }) => Sender::Nobody,
        _ => Sender::Anyone,
    }
}

#[derive(Clone, Copy)]
enum Sender {
    Anyone,
    Only(NodeId),
    Nobody,
}

/// Decodes one batch, checks its sender and cluster, and hands it to the driver.
fn deliver(node: &NodeHandle, bytes: &[u8], sender: Sender) -> Result<(), Refused> {
    let batch = check(node, bytes, sender)?;
    if batch
        .iter()
        .any(|m| matches!(m.body, keel_raft::MessageBody::InstallSnapshot { .. }))
    {
        // The core takes one only with its image (`POST /v1/raft/snapshot`).
        return Err(Refused::Malformed);
    }
    match node.submit(Input::Peer(batch)) {
        Ok(()) => Ok(()),
        // Dropped like a lost packet: the sender's next heartbeat or append tries again.
        Err(SubmitError::Full(queued)) => {
            tracing::debug!(target: "keel::msg", queued, "driver busy, peer batch dropped");
            Ok(())
        }
        Err(SubmitError::Stopping) => Err(Refused::Stopping),
    }
}

/// Decodes one batch and checks its sender and cluster.
fn check(node: &NodeHandle, bytes: &[u8], sender: Sender) -> Result<Vec<Message>, Refused> {
    let batch = crate::peer::wire::decode_batch(bytes).map_err(|_| Refused::Malformed)?;
    // Issue #13: a certificate binds a node id; node 3's certificate cannot vote, append
    // or answer as node 2. The whole batch goes: one forged message taints the connection.
    let forged = match sender {
        Sender::Anyone => None,
        Sender::Only(id) => batch
            .iter()
            .find(|m| m.from != id)
            .map(|m| (m.from, Some(id))),
        Sender::Nobody => batch.first().map(|m| (m.from, None)),
    };
    if let Some((from, cert)) = forged {
        node.metrics.peer_identity_refused.inc();
        tracing::warn!(target: "keel::msg", from, cert = ?cert, "refused peer messages sent as another node than the certificate names");
        return Err(Refused::Foreign(match cert {
            Some(id) => format!(
                "message from node {from} on a connection whose certificate names node {id}"
            ),
            None => format!("message from node {from} on a connection without a node certificate"),
        }));
    }
    // Design §7: every message carries the cluster UUID; a foreign one is refused whole.
    if let Some(m) = batch.iter().find(|m| m.cluster != node.cluster) {
        node.metrics.foreign_cluster.inc();
        tracing::warn!(target: "keel::msg", from = m.from, cluster = %m.cluster, "refused message from another cluster");
        return Err(Refused::Foreign(format!(
            "message from node {} belongs to cluster {}, not {}",
            m.from, m.cluster, node.cluster
        )));
    }
    if let Some(from) = campaigning_outsider(node, &batch) {
        return Err(Refused::NotAMember(format!(
            "node {from} is not in the configuration of node {}: it was removed from the \
             cluster (or never added)",
            node.config.id
        )));
    }
    Ok(batch)
}

/// A node that asks for (pre-)votes though it is not in this node's configuration, which
/// this node knows (it has members): the Raft rules ignore it (thesis §4.2.3), so it would
/// never learn why nobody answers.
fn campaigning_outsider(node: &NodeHandle, batch: &[Message]) -> Option<NodeId> {
    let status = node.status.lock().unwrap_or_else(|e| e.into_inner());
    if status.members.is_empty() {
        return None;
    }
    batch
        .iter()
        .find(|m| {
            matches!(m.body, keel_raft::MessageBody::RequestVote { .. })
                && !status.members.contains_key(&m.from)
        })
        .map(|m| m.from)
}

fn no_content() -> Response<Body> {
    let mut r = Response::new(Full::new(Bytes::new()).boxed());
    *r.status_mut() = StatusCode::NO_CONTENT;
    r
}
