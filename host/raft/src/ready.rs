//! What the core asks its driver to do.

use crate::message::Message;
use crate::types::{ClusterConfig, Entry, HardState, Index, NodeId, Role, SnapshotMeta, Term};

/// Everything the driver must do after feeding the core inputs. Obtain it with
/// [`crate::Raft::ready`]; each call returns only what is new since the last one.
///
/// # The handshake
///
/// The driver MUST, in this order:
/// 1. Send [`Ready::messages`] — at once, even before step 2 finishes: they are the leader's
///    appends and heartbeats, which may go out in parallel with the leader's own disk write
///    (thesis §10.2.1), and pre-votes and read forwarding, which promise nothing.
/// 2. Durably write, in one atomic step, [`Ready::hard_state`] (if any), [`Ready::snapshot`]
///    (if any: it replaces the state machine and the whole log — the core kept nothing after
///    it) and [`Ready::entries`]
///    (truncating any stored entries at or after `entries[0].index` first). Writes of
///    successive `Ready`s must become durable in order.
/// 3. Only then send [`Ready::persisted_messages`]: votes and append acknowledgements, which
///    promise that step 2 is durable (§5.1 Fig. 2: persist "before responding to RPCs"), and
///    call [`crate::Raft::persisted`] with the last entry written (or the snapshot's
///    `(index, term)` when no entries were written).
/// 4. Apply [`Ready::committed_entries`] in order, then call [`crate::Raft::applied`].
///
/// [`Ready::read_states`] and [`Ready::events`] may be handled at any time.
///
/// The driver must NOT skip step 2 for anything it goes on to acknowledge: a crash may
/// lose only what was never reported persisted.
#[derive(Debug, Default)]
pub struct Ready {
    /// Send now.
    pub messages: Vec<Message>,
    /// Persist (term and vote), if changed.
    pub hard_state: Option<HardState>,
    /// Install and persist, replacing the state machine: the image the driver received
    /// with the `InstallSnapshot` message that produced this.
    pub snapshot: Option<SnapshotMeta>,
    /// Persist, after truncating any stored entries from `entries[0].index` on.
    pub entries: Vec<Entry>,
    /// Send after the writes above are durable.
    pub persisted_messages: Vec<Message>,
    /// Apply, in order. Every one is committed and durable on this node.
    pub committed_entries: Vec<Entry>,
    /// Answers to read requests.
    pub read_states: Vec<ReadState>,
    /// Role, term, leader and configuration changes, in the order they happened.
    pub events: Vec<Event>,
}

impl Ready {
    /// Whether there is nothing to do.
    pub fn is_empty(&self) -> bool {
        self.messages.is_empty()
            && self.hard_state.is_none()
            && self.snapshot.is_none()
            && self.entries.is_empty()
            && self.persisted_messages.is_empty()
            && self.committed_entries.is_empty()
            && self.read_states.is_empty()
            && self.events.is_empty()
    }

    /// The `(index, term)` to report to [`crate::Raft::persisted`] once step 2 is durable.
    pub fn persist_point(&self) -> Option<(Index, Term)> {
        if let Some(e) = self.entries.last() {
            return Some((e.index, e.term));
        }
        self.snapshot.as_ref().map(|s| (s.index, s.term))
    }
}

/// The answer to a read request (thesis §6.4): once the state machine has applied up to
/// `index`, reading it is linearizable.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ReadState {
    /// The caller's request context.
    pub ctx: u64,
    /// The index to wait for; `None` if the read failed (leadership lost, no leader): the
    /// caller should retry, possibly elsewhere.
    pub index: Option<Index>,
}

/// A state change the node reports to clients and logs (design §8).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Event {
    /// Role, term or known leader changed.
    State {
        /// New role.
        role: Role,
        /// Current term.
        term: Term,
        /// Known leader.
        leader: Option<NodeId>,
    },
    /// The configuration in effect changed (it is in the log, not necessarily committed).
    Config {
        /// Index of the configuration entry.
        index: Index,
        /// The configuration.
        config: ClusterConfig,
    },
}
