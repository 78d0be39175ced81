//! The leader's view of each follower (thesis §3.5 nextIndex/matchIndex, plus the
//! probe / replicate / snapshot flow control of etcd-io/raft's tracker).

use std::collections::VecDeque;

use serde::Serialize;

use crate::types::Index;

/// How the leader is currently sending to one follower.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub enum ReplicationState {
    /// Match index unknown: one append at a time until one succeeds.
    Probe,
    /// The follower keeps up: appends are pipelined up to the in-flight limit.
    Replicate,
    /// The follower needs a snapshot at this index; nothing else is sent meanwhile.
    Snapshot {
        /// Index of the snapshot sent.
        index: Index,
    },
}

/// One follower's replication progress, as seen by the leader.
#[derive(Clone, Debug, Serialize)]
pub struct Progress {
    /// Highest index known replicated (and durable) on the follower.
    pub match_index: Index,
    /// Next index to send.
    pub next_index: Index,
    /// Flow-control state.
    pub state: ReplicationState,
    /// Probe: an append is in flight, wait for its answer (or the next heartbeat).
    #[serde(skip)]
    pub(crate) probe_sent: bool,
    /// Replicate: last index of each append in flight, oldest first.
    #[serde(skip)]
    pub(crate) inflight: VecDeque<Index>,
    /// Heard from since the last CheckQuorum round (thesis §6.2).
    #[serde(skip)]
    pub(crate) recent_active: bool,
    /// Ticks spent in the snapshot state (to retry a lost snapshot).
    #[serde(skip)]
    pub(crate) snapshot_ticks: u32,
    /// Highest ReadIndex round this follower acknowledged in the current term.
    #[serde(skip)]
    pub(crate) read_round_acked: u64,
    /// The leader's tick at which it sent the latest heartbeat this follower acknowledged
    /// in the current term (the leader lease, thesis §6.4.1).
    #[serde(skip)]
    pub(crate) lease_acked_tick: Option<u64>,
}

impl Progress {
    pub(crate) fn new(next_index: Index) -> Self {
        Progress {
            match_index: 0,
            next_index,
            state: ReplicationState::Probe,
            probe_sent: false,
            inflight: VecDeque::new(),
            recent_active: false,
            snapshot_ticks: 0,
            read_round_acked: 0,
            lease_acked_tick: None,
        }
    }

    /// Whether the leader should hold back appends to this follower for now.
    pub(crate) fn is_paused(&self, max_inflight: usize) -> bool {
        match self.state {
            ReplicationState::Probe => self.probe_sent,
            ReplicationState::Replicate => self.inflight.len() >= max_inflight,
            ReplicationState::Snapshot { .. } => true,
        }
    }

    /// Records an append of entries up to `last` just sent.
    pub(crate) fn sent(&mut self, last: Index) {
        match self.state {
            ReplicationState::Replicate => {
                if last >= self.next_index {
                    self.next_index = last + 1;
                    self.inflight.push_back(last);
                }
            }
            ReplicationState::Probe => self.probe_sent = true,
            ReplicationState::Snapshot { .. } => {}
        }
    }

    /// A successful append answer matched up to `index`. Returns whether it was news.
    pub(crate) fn maybe_update(&mut self, index: Index) -> bool {
        let updated = index > self.match_index;
        if updated {
            self.match_index = index;
            self.probe_sent = false;
        }
        self.next_index = self.next_index.max(index + 1);
        while self.inflight.front().is_some_and(|&i| i <= index) {
            self.inflight.pop_front();
        }
        updated
    }

    /// A rejected append at `rejected`; the follower hints the leader to probe from
    /// `probe_from` next. Returns false for a stale rejection that should be ignored.
    pub(crate) fn maybe_decrease(&mut self, rejected: Index, probe_from: Index) -> bool {
        if self.state == ReplicationState::Replicate {
            // A rejection of an index at or below the match is from an old message.
            if rejected <= self.match_index {
                return false;
            }
            // The follower missed something in the pipeline: fall back to probing.
            self.become_probe();
            self.next_index = self.match_index + 1;
            self.next_index = self.next_index.max(probe_from.min(rejected));
            return true;
        }
        // Probe: only the answer to the append just sent counts.
        if self.next_index == 0 || self.next_index - 1 != rejected {
            return false;
        }
        self.next_index = (probe_from.min(rejected)).max(self.match_index + 1).max(1);
        self.probe_sent = false;
        true
    }

    pub(crate) fn become_probe(&mut self) {
        // After a snapshot, resume right after it; otherwise right after the match.
        let after = match self.state {
            ReplicationState::Snapshot { index } => index.max(self.match_index) + 1,
            _ => self.match_index + 1,
        };
        self.state = ReplicationState::Probe;
        self.next_index = after;
        self.probe_sent = false;
        self.inflight.clear();
        self.snapshot_ticks = 0;
    }

    pub(crate) fn become_replicate(&mut self) {
        self.state = ReplicationState::Replicate;
        self.next_index = self.match_index + 1;
        self.probe_sent = false;
        self.inflight.clear();
    }

    pub(crate) fn become_snapshot(&mut self, index: Index) {
        self.state = ReplicationState::Snapshot { index };
        self.probe_sent = false;
        self.inflight.clear();
        self.snapshot_ticks = 0;
    }
}
