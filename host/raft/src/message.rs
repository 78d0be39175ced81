//! Messages between nodes. Every message carries the cluster UUID (design §7) and the
//! sender's term (§5.1: "if one server's current term is smaller than the other's, then it
//! updates its current term to the larger value").

use serde::{Deserialize, Serialize};

use crate::types::{ClusterId, Entry, Index, NodeId, SnapshotMeta, Term};

/// One message from `from` to `to`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Message {
    /// Sender.
    pub from: NodeId,
    /// Receiver.
    pub to: NodeId,
    /// The cluster both must belong to; a mismatch is refused and counted.
    pub cluster: ClusterId,
    /// The sender's term (for a pre-vote request: the term it would campaign in).
    pub term: Term,
    /// What the message says.
    pub body: MessageBody,
}

/// What a message says.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum MessageBody {
    /// RequestVote RPC (§5.2), or a pre-vote request when `pre_vote` (thesis §9.6).
    RequestVote {
        /// A pre-vote: no one changes term or vote because of it.
        pre_vote: bool,
        /// Index of the candidate's last entry (§5.4.1 up-to-date check).
        last_index: Index,
        /// Term of the candidate's last entry.
        last_term: Term,
        /// Sent because the leader asked for a transfer (thesis §3.10): receivers must not
        /// ignore it on the grounds that they recently heard from a leader (§4.2.3).
        transfer: bool,
    },
    /// Answer to [`MessageBody::RequestVote`].
    RequestVoteResponse {
        /// Answer to a pre-vote request.
        pre_vote: bool,
        /// Whether the vote was granted.
        granted: bool,
    },
    /// AppendEntries RPC (§5.3). Also the heartbeat when `entries` is empty.
    AppendEntries {
        /// Index of the entry immediately preceding `entries`.
        prev_index: Index,
        /// Term of that entry.
        prev_term: Term,
        /// Entries to store (empty for a heartbeat).
        entries: Vec<Entry>,
        /// Leader's commit index.
        commit: Index,
    },
    /// Answer to [`MessageBody::AppendEntries`].
    AppendEntriesResponse {
        /// Whether the follower's log matched at `prev_index`.
        success: bool,
        /// On success: the follower's log matches the leader's up to here. On rejection:
        /// the `prev_index` that was rejected.
        index: Index,
        /// On rejection, a hint to skip back fast (thesis §5.3 "the follower can include the
        /// term of the conflicting entry and the first index it stores for that term"):
        /// the follower's term at `hint_index` (0 if its log is shorter).
        hint_term: Term,
        /// On rejection: the largest index at or below `index` whose term is at most the
        /// leader's `prev_term` (etcd-io/raft's `findConflictByTerm`).
        hint_index: Index,
    },
    /// Leader heartbeat: asserts leadership, carries the commit index (capped at what the
    /// follower is known to match) and the ReadIndex round it confirms (thesis §6.4).
    Heartbeat {
        /// `min(leader commit, follower match)`: never commits what the follower may lack.
        commit: Index,
        /// Latest ReadIndex round started by the leader.
        read_round: u64,
        /// The leader's tick count when it sent this heartbeat: echoed back, it dates the
        /// follower's acknowledgement for the leader lease (thesis §6.4.1).
        sent_tick: u64,
    },
    /// Answer to [`MessageBody::Heartbeat`].
    HeartbeatResponse {
        /// Echo of the heartbeat's read round.
        read_round: u64,
        /// Echo of the heartbeat's `sent_tick`.
        sent_tick: u64,
    },
    /// InstallSnapshot RPC (§7). Only the snapshot's position and configuration: the
    /// transport streams the image beside the message, and the receiving driver hands the
    /// message to its core only once the whole image is staged and verified (issue #16).
    InstallSnapshot {
        /// Where the snapshot stands.
        snapshot: SnapshotMeta,
    },
    /// Leadership transfer: start an election now (thesis §3.10).
    TimeoutNow,
    /// A follower forwards a linearizable read to its leader (thesis §6.4).
    ReadIndex {
        /// The follower's request context, returned unchanged.
        ctx: u64,
    },
    /// The leader's answer to [`MessageBody::ReadIndex`].
    ReadIndexResponse {
        /// The request context.
        ctx: u64,
        /// The read is linearizable once the follower has applied up to here; `None` when
        /// the leader could not serve it (not leader, or its term has no committed entry yet).
        index: Option<Index>,
    },
}

impl MessageBody {
    /// A short name, for traces and metrics.
    pub fn kind(&self) -> &'static str {
        match self {
            MessageBody::RequestVote { pre_vote: true, .. } => "PreVote",
            MessageBody::RequestVote { .. } => "RequestVote",
            MessageBody::RequestVoteResponse { pre_vote: true, .. } => "PreVoteResp",
            MessageBody::RequestVoteResponse { .. } => "RequestVoteResp",
            MessageBody::AppendEntries { .. } => "AppendEntries",
            MessageBody::Heartbeat { .. } => "Heartbeat",
            MessageBody::HeartbeatResponse { .. } => "HeartbeatResp",
            MessageBody::AppendEntriesResponse { .. } => "AppendEntriesResp",
            MessageBody::InstallSnapshot { .. } => "InstallSnapshot",
            MessageBody::TimeoutNow => "TimeoutNow",
            MessageBody::ReadIndex { .. } => "ReadIndex",
            MessageBody::ReadIndexResponse { .. } => "ReadIndexResp",
        }
    }
}

impl std::fmt::Display for Message {
    /// One line per message, stable for transcripts: `1->2 t3 AppendEntries prev=4/2 n=3 c=4`.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{}->{} t{} {}",
            self.from,
            self.to,
            self.term,
            self.body.kind()
        )?;
        match &self.body {
            MessageBody::RequestVote {
                last_index,
                last_term,
                transfer,
                ..
            } => {
                write!(f, " last={last_index}/{last_term}")?;
                if *transfer {
                    write!(f, " transfer")?;
                }
                Ok(())
            }
            MessageBody::RequestVoteResponse { granted, .. } => {
                write!(f, " {}", if *granted { "granted" } else { "rejected" })
            }
            MessageBody::AppendEntries {
                prev_index,
                prev_term,
                entries,
                commit,
            } => {
                write!(f, " prev={prev_index}/{prev_term}")?;
                if let (Some(a), Some(b)) = (entries.first(), entries.last()) {
                    write!(f, " entries={}..={}", a.index, b.index)?;
                }
                write!(f, " commit={commit}")
            }
            MessageBody::Heartbeat {
                commit, read_round, ..
            } => {
                write!(f, " commit={commit} read={read_round}")
            }
            MessageBody::HeartbeatResponse { read_round, .. } => write!(f, " read={read_round}"),
            MessageBody::AppendEntriesResponse {
                success,
                index,
                hint_term,
                hint_index,
                ..
            } => {
                if *success {
                    write!(f, " ok match={index}")
                } else {
                    write!(f, " reject prev={index} hint={hint_index}/{hint_term}")
                }
            }
            MessageBody::InstallSnapshot { snapshot } => {
                write!(f, " snap={}/{}", snapshot.index, snapshot.term)
            }
            MessageBody::TimeoutNow => Ok(()),
            MessageBody::ReadIndex { ctx } => write!(f, " ctx={ctx}"),
            MessageBody::ReadIndexResponse { ctx, index } => match index {
                Some(i) => write!(f, " ctx={ctx} index={i}"),
                None => write!(f, " ctx={ctx} refused"),
            },
        }
    }
}
