//! What the rest of the node says to the driver, and what it answers: the inputs, the
//! replies, the status, and the handle the HTTP layer holds.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc::Sender;
use std::sync::{Arc, Mutex, RwLock};

use keel_plugin::Runtime;
use keel_raft::{
    ClientSerial, ClusterConfig, ClusterId, Deploy, Index, Message, NodeId, Payload, ReadMode,
    Role, Term,
};
use keel_storage::{RedbStorage, Storage};
use serde::Serialize;
use tokio::sync::{broadcast, oneshot};

use super::apply_worker::ApplyDone;
use crate::blobs::Blobs;
use crate::config::NodeConfig;
use crate::metrics::Metrics;
use crate::state::{CommandResult, Registry, Unflushed};

/// What a client's command came to.
#[derive(Debug)]
pub enum CommandReply {
    /// Applied at `index` in `term`, with the plugin's answer.
    Done {
        /// Log index.
        index: Index,
        /// Term.
        term: Term,
        /// Place within the entry: commands that queue together share one entry.
        position: u32,
        /// The plugin's result (or its deterministic failure).
        result: CommandResult,
    },
    /// Not the leader (the client should go there).
    NotLeader(Option<NodeId>),
    /// The command's session is unknown or expired (thesis §6.3): refused, in the log, on
    /// every node alike. The client must open a new session; whether an earlier command of
    /// the old one was applied cannot be told.
    SessionUnknown(String),
    /// Election under way, backpressure, or the entry was overwritten: retry (same serial).
    Retry(String),
    /// Whether it was applied cannot be told here (its entry was covered by a snapshot
    /// installed from the leader): as after a timeout, a retry with the same serial is safe.
    OutcomeUnknown(String),
}

/// What a linearizable read came to: once `Ok`, the local state is at least as new as
/// every write acknowledged before the read began.
pub type ReadReply = Result<Index, ReadRefused>;

/// Why a read could not be confirmed here.
#[derive(Debug)]
pub enum ReadRefused {
    /// Lease reads must go to the leader.
    NotLeader(Option<NodeId>),
    /// No leader, or leadership changed mid-read: retry.
    Retry,
}

/// An input for the driver thread.
pub enum Input {
    /// Messages from a peer.
    Peer(Vec<Message>),
    /// Member `per` refused this node's vote requests: this node is not in its
    /// configuration (removed, or never added).
    NotAMember {
        /// The member that said so.
        per: NodeId,
        /// Its words.
        detail: String,
    },
    /// A client command.
    Propose {
        /// Plugin name.
        plugin: String,
        /// Exactly-once session, if any.
        client: Option<ClientSerial>,
        /// Command bytes, inline or by reference to a blob a majority of voters holds.
        payload: Payload,
        /// Where the outcome goes.
        reply: oneshot::Sender<CommandReply>,
    },
    /// Deploy a plugin whose bytes a majority already holds (design §6); answered once
    /// the `Deploy` record is applied here.
    Deploy {
        /// The record.
        deploy: Deploy,
        /// Where the outcome goes.
        reply: oneshot::Sender<CommandReply>,
    },
    /// Undeploy a plugin (`Record::Undeploy`, or `Record::DropState` with its state);
    /// answered once applied here.
    Undeploy {
        /// Plugin name.
        plugin: String,
        /// Delete its state too.
        drop_state: bool,
        /// Where the outcome goes.
        reply: oneshot::Sender<CommandReply>,
    },
    /// Open a client session (thesis §6.3); answered with its id once applied.
    OpenSession(oneshot::Sender<CommandReply>),
    /// A read that must be confirmed by the log (ReadIndex or lease).
    Read {
        /// How to confirm it.
        mode: ReadMode,
        /// Where the outcome goes.
        reply: oneshot::Sender<ReadReply>,
    },
    /// Hand leadership to another voter (thesis §3.10).
    Transfer(NodeId),
    /// Write the applied state through to storage now; answered once it is there.
    Flush(oneshot::Sender<()>),
    /// The log writer made the log durable up to this entry (handshake step 3).
    Persisted(Index, Term),
    /// The log writer wrote this layer of the applied state to storage.
    Flushed(Arc<Unflushed>),
    /// A fetch of a plugin blob that apply waits for ended (`found`: it is here now).
    BlobFetched {
        /// The blob.
        hash: [u8; 32],
        /// Whether it is here now (otherwise the fetch goes on).
        found: bool,
    },
    /// An `InstallSnapshot` message from a peer, with its image, received whole and verified
    /// (issue #16).
    Snapshot {
        /// The message.
        message: keel_raft::Message,
        /// The image it names.
        image: crate::peer::snapshot::StagedImage,
    },
    /// The apply worker finished a batch.
    Applied(Box<ApplyDone>),
    /// For blob garbage collection: this node's snapshot index and the blobs it must keep
    /// (named by its log from the first index on, or by its active plugins).
    BlobsNeeded(oneshot::Sender<crate::blobs::Keep>),
    /// Change the membership, one server at a time (thesis §4.1).
    Members {
        /// The change.
        change: MemberChange,
        /// Answered once the new configuration is committed and applied.
        reply: oneshot::Sender<MemberReply>,
    },
}

/// One single-server membership change (thesis §4.1; learners §4.2.1).
#[derive(Clone, Debug)]
pub enum MemberChange {
    /// Add a node as a learner: it receives the log but neither votes nor counts.
    AddLearner {
        /// Its id (unique in the cluster, never reused).
        id: NodeId,
        /// Its URL.
        url: String,
    },
    /// Make a learner a voter.
    Promote(NodeId),
    /// Remove a voter or learner.
    Remove(NodeId),
}

/// What a membership change came to.
#[derive(Debug)]
pub enum MemberReply {
    /// Committed and applied at `index`: the new voters and learners.
    Done {
        /// The configuration entry's index.
        index: Index,
        /// The configuration now in force.
        config: ClusterConfig,
    },
    /// Not the leader.
    NotLeader(Option<NodeId>),
    /// Election, transfer, or another change in flight: retry.
    Retry(String),
    /// The change does not apply to this membership (unknown id, already a member, …).
    Refused(String),
}

/// What `GET /v1/status` shows.
#[derive(Clone, Debug, Default, Serialize)]
pub struct NodeStatus {
    /// This node.
    pub node_id: NodeId,
    /// Follower, PreCandidate, Candidate or Leader (as a string in JSON).
    pub role: Role,
    /// Current term.
    pub term: Term,
    /// Known leader.
    pub leader_id: Option<NodeId>,
    /// The leader's URL, if known.
    pub leader_url: Option<String>,
    /// Commit index.
    pub commit_index: Index,
    /// Applied index.
    pub applied_index: Index,
    /// Last log index.
    pub last_log_index: Index,
    /// The cluster UUID.
    pub cluster_id: String,
    /// Voters and learners with their URLs.
    pub members: BTreeMap<NodeId, String>,
    /// Voting members.
    pub voters: Vec<NodeId>,
    /// Non-voting members (thesis §4.2.1).
    pub learners: Vec<NodeId>,
    /// Active plugins.
    pub plugins: Vec<String>,
    /// Entries committed here but not applied yet (queued or in the apply worker).
    pub apply_lag: u64,
    /// Leader only: how long its lease still holds, in ms (0: `lease` reads take a
    /// ReadIndex round until a heartbeat round renews it; thesis §6.4.1).
    pub lease_ms_left: u64,
    /// The blob apply waits for, if it does (design §6: never failed, waited for).
    pub waiting_for_blob: Option<BlobWait>,
    /// Blobs the resend sweep is fetching.
    pub blobs_sweeping: usize,
    /// Index of the snapshot the log starts after (entries up to it are never applied here
    /// again; blob garbage collection reads it from every member).
    pub snapshot_index: Index,
    /// Serving plaintext by the config's `"insecure": true` (docs/security.md).
    pub insecure: bool,
    /// Set when a member refused this node's vote requests because this node is not in its
    /// configuration (it was removed); cleared once a leader is heard again.
    pub removed: Option<Removed>,
    /// Nodes this one hears from but has no address for, so cannot answer (start a joining
    /// node with `--join URL`, or list every member in `peers`).
    pub cannot_answer: Vec<NodeId>,
}

/// What a member said when it refused this node as a non-member.
#[derive(Clone, Debug, Serialize)]
pub struct Removed {
    /// The member that said so.
    pub per: NodeId,
    /// Its words.
    pub detail: String,
}

/// Apply waits for a blob this node lacks.
#[derive(Clone, Debug, Serialize)]
pub struct BlobWait {
    /// Its SHA-256, hex.
    pub blob: String,
    /// The entry that names it.
    pub index: Index,
    /// For how long.
    pub waiting_ms: u64,
}

/// Inputs from outside the node (client requests, peer batches) that may wait for the driver
/// at once; past it clients get 503 and peer batches are dropped (Raft tolerates lost
/// messages), instead of a queue that grows without bound while the driver is held up.
pub const MAX_QUEUED_INPUTS: usize = 10_000;

/// Why an input was not queued.
#[derive(Debug, thiserror::Error)]
pub enum SubmitError {
    /// The driver has stopped.
    #[error("node is stopping")]
    Stopping,
    /// Too many inputs wait already.
    #[error("{0} requests are queued for the driver; retry shortly")]
    Full(usize),
}

impl Input {
    /// Whether it comes from outside the node (and counts against [`MAX_QUEUED_INPUTS`]);
    /// the driver's own threads report back without limit (the driver waits for some of
    /// them, so bounding those could deadlock it).
    pub fn is_external(&self) -> bool {
        !matches!(
            self,
            Input::Persisted(..)
                | Input::Flushed(_)
                | Input::BlobFetched { .. }
                | Input::Applied(_)
        )
    }
}

/// The handle the HTTP layer holds.
#[derive(Clone)]
pub struct NodeHandle {
    /// Inputs to the driver; send external ones with [`NodeHandle::submit`].
    pub inputs: Sender<Input>,
    /// External inputs queued and not yet taken by the driver.
    pub queued: Arc<AtomicUsize>,
    /// Latest status, refreshed by the driver.
    pub status: Arc<Mutex<NodeStatus>>,
    /// State-change events, as JSON (for `GET /v1/events`).
    pub events: broadcast::Sender<String>,
    /// Active plugins.
    pub registry: Registry,
    /// The store (for queries and the state hash).
    pub storage: Arc<RedbStorage>,
    /// Metrics.
    pub metrics: Arc<Metrics>,
    /// The configuration.
    pub config: Arc<NodeConfig>,
    /// This node's cluster.
    pub cluster: ClusterId,
    /// Applied state not yet written to storage; see [`NodeHandle::applied_view`].
    pub unflushed: Arc<RwLock<Arc<Unflushed>>>,
    /// Queries running at once. Fewer than the plugin runtime's instance pool, so that the
    /// apply path always finds an instance (it fail-stops if it does not).
    pub query_slots: Arc<tokio::sync::Semaphore>,
    /// The plugin runtime (the deploy endpoint compiles with it before proposing).
    pub runtime: Runtime,
    /// This node's blob store.
    pub blobs: Blobs,
}

impl NodeHandle {
    /// The applied state as of one index: a storage view and what was applied since the last
    /// flush, taken under the read lock so that no flush falls between the two (the pair is
    /// then a point in time: a flush moves writes from the second into the first).
    pub fn applied_view(
        &self,
    ) -> Result<(keel_storage::RedbView, Arc<Unflushed>), keel_storage::StorageError> {
        let slot = self.unflushed.read().unwrap_or_else(|e| e.into_inner());
        let view = self.storage.view()?;
        Ok((view, Arc::clone(&slot)))
    }

    /// Queues an input from outside the node, unless [`MAX_QUEUED_INPUTS`] wait already.
    pub fn submit(&self, input: Input) -> Result<(), SubmitError> {
        let queued = self.queued.fetch_add(1, Ordering::Relaxed);
        if queued >= MAX_QUEUED_INPUTS {
            self.queued.fetch_sub(1, Ordering::Relaxed);
            self.metrics.inputs_refused.inc();
            return Err(SubmitError::Full(queued));
        }
        self.inputs.send(input).map_err(|_| {
            self.queued.fetch_sub(1, Ordering::Relaxed);
            SubmitError::Stopping
        })
    }

    /// Asks the driver to flush the applied state to storage, and waits for it.
    pub async fn flush(&self) {
        let (tx, rx) = oneshot::channel();
        if self.submit(Input::Flush(tx)).is_ok() {
            let _ = rx.await;
        }
    }
}
