//! The typed log and the small value types every layer shares.
//!
//! The core treats payloads as opaque: it never looks inside a command, a deployment or a
//! referenced blob. It does look at [`Record::Config`], because membership is consensus.

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};

/// A node's identity. Stable across restarts and address changes (design §7).
pub type NodeId = u64;
/// A Raft term. Terms start at 0.
pub type Term = u64;
/// A log index. The first entry has index 1; index 0 means "nothing".
pub type Index = u64;

/// The cluster's identity, created at bootstrap and carried by every message (design §7).
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize,
)]
pub struct ClusterId(pub u128);

impl std::fmt::Display for ClusterId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // UUID layout, so operators can grep for it.
        let b = self.0.to_be_bytes();
        write!(
            f,
            "{:02x}{:02x}{:02x}{:02x}-{:02x}{:02x}-{:02x}{:02x}-{:02x}{:02x}-{:02x}{:02x}{:02x}{:02x}{:02x}{:02x}",
            b[0],
            b[1],
            b[2],
            b[3],
            b[4],
            b[5],
            b[6],
            b[7],
            b[8],
            b[9],
            b[10],
            b[11],
            b[12],
            b[13],
            b[14],
            b[15]
        )
    }
}

/// One log entry: a position, the leader's wall clock when it was proposed, and a record.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Entry {
    /// Position in the log (1-based).
    pub index: Index,
    /// Term of the leader that created the entry.
    pub term: Term,
    /// The leader's wall clock (ms since the Unix epoch) at proposal, so that every replica's
    /// plugin sees the same "now" (design §3). Non-decreasing along the log.
    pub timestamp_ms: u64,
    /// What the entry means.
    pub record: Record,
}

/// What a log entry means (design §3).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Record {
    /// Committed by every new leader at the start of its term (thesis §6.4, §8).
    Noop,
    /// An application command for one plugin.
    Command(Command),
    /// A new cluster configuration; takes effect as soon as it is in a log (thesis §4.1).
    Config(ClusterConfig),
    /// A plugin version becomes active at this index on every node.
    Deploy(Deploy),
    /// Several client commands proposed together, applied in order as if each had an entry
    /// of its own. The entry, which every node sees alike, is the unit that lets one plugin's
    /// commands share a fresh instance (docs/plugins.md); the leader fills it with whatever
    /// queued while it was busy (log-level group commit). Last, so older logs still decode.
    Batch(Vec<Command>),
    /// Opens a client session (thesis §6.3): the session's id is this entry's index, unique
    /// in the cluster for ever.
    OpenSession,
    /// Expires every session last used before `before_ms` (the log's clock, thesis §6.3), on
    /// every node alike. The leader proposes one now and then.
    ExpireSessions {
        /// Sessions whose last command's entry is older than this (ms since the epoch) go.
        before_ms: u64,
    },
    /// Deactivates a plugin at this index on every node: its commands and queries are then
    /// refused as for an unknown plugin; its state and version history are kept. Last, so
    /// older logs still decode (postcard numbers variants in order).
    Undeploy {
        /// Plugin name.
        plugin: String,
    },
    /// Deactivates a plugin, as [`Record::Undeploy`], and deletes its state: its namespace,
    /// the blobs it retains, its counters (its version history stays). Last, so older logs
    /// still decode.
    DropState {
        /// Plugin name.
        plugin: String,
    },
}

impl Record {
    /// Bytes of command bodies the entry holds itself (not by reference): roughly what it
    /// costs in memory beyond a few dozen bytes.
    pub fn inline_bytes(&self) -> usize {
        match self {
            Record::Command(c) => c.payload.inline_bytes(),
            Record::Batch(cmds) => cmds.iter().map(|c| c.payload.inline_bytes()).sum(),
            _ => 0,
        }
    }

    /// The blobs this record names (design §6): a deployment's plugin binary, the payloads
    /// of reference-only commands. A node applies the record only once it holds them all.
    pub fn blobs(&self) -> Vec<[u8; 32]> {
        match self {
            Record::Deploy(d) => vec![d.sha256],
            Record::Command(c) => c.payload.blobs(),
            Record::Batch(cmds) => cmds.iter().flat_map(|c| c.payload.blobs()).collect(),
            _ => Vec::new(),
        }
    }
}

/// An application command addressed to one plugin.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Command {
    /// Plugin name.
    pub plugin: String,
    /// Client session for exactly-once application (Raft paper §8), if the client sent one.
    pub client: Option<ClientSerial>,
    /// The command bytes, inline or by reference.
    pub payload: Payload,
}

/// A client's identity and the serial number of one of its requests.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct ClientSerial {
    /// Chosen by the client; unique per client.
    pub client_id: u64,
    /// Increases with every new request of that client; a retry reuses it.
    pub serial: u64,
}

/// Application bytes, carried inline or as a reference to a content-addressed blob
/// (design §6), with any blobs the command attaches.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Payload {
    /// The bytes themselves.
    Inline(Vec<u8>),
    /// Only the hash and length; the bytes live in the blob store.
    Ref {
        /// SHA-256 of the bytes.
        sha256: [u8; 32],
        /// Length of the bytes.
        len: u64,
    },
    /// A body (`Inline` or `Ref`, never `Attached` again) and the blobs the command
    /// attaches (`Keel-Attach`), in the order the client named them. Last, so older logs
    /// still decode.
    Attached {
        /// The command's own bytes.
        body: Box<Payload>,
        /// The blobs it attaches, each on a majority of voters before the proposal.
        attachments: Vec<BlobRef>,
    },
}

/// A blob a record names: its SHA-256 and length.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct BlobRef {
    /// SHA-256 of the bytes.
    pub sha256: [u8; 32],
    /// Length of the bytes.
    pub len: u64,
}

impl Payload {
    /// Bytes held inline (a reference holds none).
    pub fn inline_bytes(&self) -> usize {
        match self {
            Payload::Inline(b) => b.len(),
            Payload::Ref { .. } => 0,
            Payload::Attached { body, .. } => body.inline_bytes(),
        }
    }

    /// The command's own bytes: this payload, or the body of an `Attached` one.
    pub fn body(&self) -> &Payload {
        match self {
            Payload::Attached { body, .. } => body,
            other => other,
        }
    }

    /// The blobs the command attaches (empty unless `Attached`).
    pub fn attachments(&self) -> &[BlobRef] {
        match self {
            Payload::Attached { attachments, .. } => attachments,
            _ => &[],
        }
    }

    /// The referenced body blob's hash, if the body is by reference.
    pub fn blob_ref(&self) -> Option<[u8; 32]> {
        match self.body() {
            Payload::Ref { sha256, .. } => Some(*sha256),
            _ => None,
        }
    }

    /// Every blob the payload names: the body's, then the attachments.
    pub fn blobs(&self) -> Vec<[u8; 32]> {
        self.blob_ref()
            .into_iter()
            .chain(self.attachments().iter().map(|a| a.sha256))
            .collect()
    }
}

/// Activates a plugin version at this entry's index on every node.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Deploy {
    /// Plugin name.
    pub plugin: String,
    /// Version label chosen by the deployer.
    pub version: String,
    /// SHA-256 of the component bytes (which travel as a blob, design §6).
    pub sha256: [u8; 32],
    /// Fuel budget of one `apply` call; the same on every node, so exhaustion is deterministic.
    pub fuel_per_apply: u64,
    /// Linear-memory limit per instance, in bytes.
    pub memory_limit: u64,
}

/// Cluster membership (thesis ch. 4): voters, learners, and where to reach each node.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClusterConfig {
    /// Nodes whose votes and acknowledgements count.
    pub voters: BTreeSet<NodeId>,
    /// Nodes that receive the log but do not vote (thesis §4.2.1).
    pub learners: BTreeSet<NodeId>,
    /// Node id → address. A node may come back on another address; its id is its identity.
    pub addresses: BTreeMap<NodeId, String>,
}

impl ClusterConfig {
    /// A configuration of voters only, with no addresses.
    pub fn with_voters(voters: impl IntoIterator<Item = NodeId>) -> Self {
        ClusterConfig {
            voters: voters.into_iter().collect(),
            ..ClusterConfig::default()
        }
    }

    /// Whether `id` is a voter or a learner.
    pub fn contains(&self, id: NodeId) -> bool {
        self.voters.contains(&id) || self.learners.contains(&id)
    }

    /// Voters and learners, in id order.
    pub fn members(&self) -> impl Iterator<Item = NodeId> + '_ {
        self.voters.union(&self.learners).copied()
    }

    /// The number of votes that make a majority of the voters.
    pub fn quorum(&self) -> usize {
        self.voters.len() / 2 + 1
    }
}

/// What must be durable before a node sends any message that depends on it (§5.1, Fig. 2:
/// "updated on stable storage before responding to RPCs").
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct HardState {
    /// Latest term this node has seen.
    pub term: Term,
    /// Candidate this node voted for in `term`, if any.
    pub vote: Option<NodeId>,
}

/// Where a snapshot stands in the log, and the configuration as of that point.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SnapshotMeta {
    /// Last entry the snapshot covers. Always a committed entry.
    pub index: Index,
    /// Term of that entry.
    pub term: Term,
    /// Latest configuration at or before `index`.
    pub config: ClusterConfig,
}

/// A node's role (thesis §3.3, plus PreCandidate for PreVote, §9.6).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Role {
    /// Follows a leader, or waits for one (where every server starts, §3.3).
    #[default]
    Follower,
    /// Asks for pre-votes without disturbing anyone's term (§9.6).
    PreCandidate,
    /// Asks for votes in a new term.
    Candidate,
    /// Accepts proposals and replicates the log.
    Leader,
}
