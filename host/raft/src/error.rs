//! The core's errors: one enum per input that can fail.

use crate::types::{ClusterId, Index, NodeId};

/// A proposal the core cannot accept now.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ProposeError {
    /// This node follows another (or none yet): the client should go to the leader.
    #[error("not the leader (leader: {leader:?})")]
    NotLeader {
        /// The leader, if this node knows it.
        leader: Option<NodeId>,
    },
    /// An election is under way: try again shortly.
    #[error("election in progress, retry")]
    Retry,
    /// Leadership is being handed over (thesis §3.10): proposals wait for the new leader.
    #[error("leadership transfer to {to} in progress")]
    TransferInProgress {
        /// The node taking over.
        to: NodeId,
    },
    /// Too many uncommitted entries: back off.
    #[error("too many uncommitted entries ({uncommitted}), back off")]
    Busy {
        /// Entries not yet committed.
        uncommitted: u64,
    },
    /// A configuration change is refused.
    #[error("configuration change refused: {0}")]
    Config(#[from] ConfigChangeError),
}

/// Why a configuration change is refused (thesis §4.1).
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ConfigChangeError {
    /// The leader has not yet committed an entry of its own term.
    #[error("the leader has not committed an entry of its term yet")]
    TermNotCommitted,
    /// The previous change (at this index) is not committed yet.
    #[error("the change at index {index} is not committed yet")]
    Pending {
        /// Index of the uncommitted configuration entry.
        index: Index,
    },
    /// More than one voter added or removed at once.
    #[error("{changed} voters would change at once; only one at a time is safe")]
    TooManyVoterChanges {
        /// How many voters would change.
        changed: usize,
    },
    /// A configuration with no voters.
    #[error("a configuration needs at least one voter")]
    NoVoters,
    /// A node listed as both voter and learner.
    #[error("node {0} is both voter and learner")]
    VoterAndLearner(NodeId),
}

/// A message the core refuses.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum StepError {
    /// The message belongs to another cluster (design §7).
    #[error("message from node {from} belongs to cluster {got}, this node to {expected}")]
    ForeignCluster {
        /// Sender.
        from: NodeId,
        /// This node's cluster.
        expected: ClusterId,
        /// The message's cluster.
        got: ClusterId,
    },
    /// The message is addressed to another node.
    #[error("message for node {to} delivered to node {me}")]
    WrongNode {
        /// The addressee.
        to: NodeId,
        /// This node.
        me: NodeId,
    },
}

/// A read the core cannot start.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ReadError {
    /// No leader is known to forward the read to.
    #[error("no leader known")]
    NoLeader,
    /// Lease reads are only safe with CheckQuorum on.
    #[error("lease reads need check_quorum")]
    LeaseNeedsCheckQuorum,
    /// Lease reads are served by the leader only.
    #[error("not the leader (leader: {leader:?})")]
    NotLeader {
        /// The leader, if known.
        leader: Option<NodeId>,
    },
}

/// A snapshot the core cannot take.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum CompactError {
    /// Snapshots are only built from applied (hence committed) entries.
    #[error("snapshot index {index} is beyond the applied index {applied}")]
    NotApplied {
        /// Requested snapshot index.
        index: Index,
        /// Highest index reported applied.
        applied: Index,
    },
    /// The log is already compacted past this index.
    #[error("snapshot index {index} is not after the current snapshot {current}")]
    Stale {
        /// Requested snapshot index.
        index: Index,
        /// Current snapshot index.
        current: Index,
    },
}

/// An invalid [`crate::Config`].
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ConfigError {
    /// Node id 0 means "none" in messages.
    #[error("node id 0 is reserved")]
    ZeroNodeId,
    /// Heartbeats must be more frequent than elections.
    #[error("heartbeat_ticks ({heartbeat_ticks}) must be in 1..election_ticks ({election_ticks})")]
    Timing {
        /// Configured heartbeat interval.
        heartbeat_ticks: u32,
        /// Configured election timeout.
        election_ticks: u32,
    },
    /// A limit of zero would stall replication.
    #[error(
        "max_inflight, max_entries_per_message, max_bytes_per_message and max_apply_batch must be > 0"
    )]
    ZeroLimit,
    /// The lease must end before voters stop refusing votes (thesis §6.4.1).
    #[error("lease_ticks ({lease_ticks}) must be below election_ticks - 1 ({election_ticks} - 1)")]
    LeaseTooLong {
        /// Configured lease.
        lease_ticks: u32,
        /// Configured minimum election timeout.
        election_ticks: u32,
    },
}
