//! The Raft state machine: `become_<role>`, `step` by message, `tick` by role.
//!
//! References: "§N" is the extended Raft paper (Ongaro & Ousterhout, 2014); "thesis §N" is
//! Ongaro's dissertation "Consensus: Bridging Theory and Practice" (2014).

use std::collections::{BTreeMap, BTreeSet, VecDeque};

use rand_chacha::ChaCha8Rng;
use rand_core::{RngCore, SeedableRng};
use serde::Serialize;

use crate::config::Config;
use crate::error::{
    CompactError, ConfigChangeError, ConfigError, ProposeError, ReadError, StepError,
};
use crate::log::RaftLog;
use crate::message::{Message, MessageBody};
use crate::progress::{Progress, ReplicationState};
use crate::ready::{Event, ReadState, Ready};
use crate::testkit::Bug;
use crate::types::{
    ClusterConfig, Entry, HardState, Index, NodeId, Record, Role, SnapshotMeta, Term,
};

/// What a node had on disk when it (re)started.
#[derive(Clone, Debug, Default)]
pub struct InitialState {
    /// Term and vote.
    pub hard_state: HardState,
    /// Where the latest snapshot stands (the applied state the log is compacted up to); for
    /// a node that never took one, index 0 with the bootstrap configuration (or an empty one
    /// for a node waiting to be added). Only metadata: the image lives in storage and never
    /// passes through the core (issue #16).
    pub snapshot: SnapshotMeta,
    /// Log entries after the snapshot, in order, without holes.
    pub entries: Vec<Entry>,
    /// Highest index the state machine has durably applied.
    pub applied: Index,
}

impl InitialState {
    /// A brand-new node of a brand-new cluster with these voters.
    pub fn bootstrap(config: ClusterConfig) -> Self {
        InitialState {
            snapshot: SnapshotMeta {
                index: 0,
                term: 0,
                config,
            },
            ..InitialState::default()
        }
    }
}

/// How a read should be confirmed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ReadMode {
    /// ReadIndex (thesis §6.4): one heartbeat round to a majority confirms leadership.
    ReadIndex,
    /// Leader lease (thesis §6.4.1): no round trip while a majority of voters acknowledged
    /// a heartbeat sent less than `lease_ticks` ago; otherwise a ReadIndex round. Relies on
    /// the voters' refusal to vote within the minimum election timeout (§4.2.3, needs
    /// CheckQuorum) and on clock rates that differ by less than the margin of
    /// [`Config::lease_ticks_for`].
    Lease,
}

/// A snapshot of the core's state, for status pages and tests.
#[derive(Clone, Debug, Serialize)]
pub struct Status {
    /// This node.
    pub id: NodeId,
    /// Role.
    pub role: Role,
    /// Current term.
    pub term: Term,
    /// Vote in the current term.
    pub vote: Option<NodeId>,
    /// Known leader.
    pub leader: Option<NodeId>,
    /// Commit index.
    pub commit: Index,
    /// Highest index the driver reported applied.
    pub applied: Index,
    /// Highest index durable locally.
    pub persisted: Index,
    /// Last log index.
    pub last_index: Index,
    /// Snapshot index (log compacted up to here).
    pub snapshot_index: Index,
    /// Configuration in effect and the index of its entry.
    pub config: ClusterConfig,
    /// Index of the configuration entry in effect.
    pub config_index: Index,
    /// Leader only: each follower's progress.
    pub progress: BTreeMap<NodeId, Progress>,
    /// Messages refused because they carried another cluster's UUID.
    pub foreign_cluster_messages: u64,
    /// Leader only: ticks left in the leader lease (0: lease reads take a ReadIndex round).
    pub lease_ticks_left: u32,
}

#[derive(Debug)]
struct PendingRead {
    round: u64,
    index: Index,
    ctx: u64,
    /// The follower that forwarded it, or `None` for a local read.
    from: Option<NodeId>,
}

/// One node's Raft core. Feed it inputs ([`Raft::step`], [`Raft::tick`], [`Raft::propose`],
/// [`Raft::read_index`], [`Raft::persisted`], [`Raft::applied`]) and run what
/// [`Raft::ready`] returns; see [`Ready`] for the handshake.
#[derive(Debug)]
pub struct Raft {
    cfg: Config,
    rng: ChaCha8Rng,
    role: Role,
    term: Term,
    vote: Option<NodeId>,
    leader: Option<NodeId>,
    log: RaftLog,
    config: ClusterConfig,
    config_index: Index,
    /// Leader only: every other member's progress.
    progress: BTreeMap<NodeId, Progress>,
    /// (Pre)candidate only: votes received, by voter.
    votes: BTreeMap<NodeId, bool>,
    election_elapsed: u32,
    heartbeat_elapsed: u32,
    /// Ticks since this core started: the clock leases are dated by.
    ticks: u64,
    /// Leader: a TimeoutNow went out this term, so voters may now grant a transfer vote
    /// despite their own lease (thesis §3.10): no lease reads until the term ends.
    lease_void: bool,
    /// Ticks left in which this restarted node refuses votes as if it had just heard from a
    /// leader: it may have, before it crashed, and a leader's lease counts on it (§4.2.3).
    restart_vote_guard: u32,
    randomized_timeout: u32,
    transferee: Option<NodeId>,
    read_round: u64,
    /// Reads are waiting for the next round: it goes out with the next Ready, once for all
    /// of them.
    read_round_wanted: bool,
    pending_reads: VecDeque<PendingRead>,
    /// Leader: reads that wait for the first commit of the term (thesis §6.4 step 1).
    reads_awaiting_commit: Vec<(u64, Option<NodeId>, ReadMode)>,
    /// Follower: reads forwarded to the leader, by context.
    forwarded_reads: BTreeSet<u64>,
    /// Latest snapshot point, offered to followers that need compacted entries (the driver
    /// streams the image of its applied state, which is at or past it).
    snapshot: SnapshotMeta,
    applied: Index,
    foreign_cluster_messages: u64,
    // Outputs, drained by `ready()`.
    messages: Vec<Message>,
    persisted_messages: Vec<Message>,
    read_states: Vec<ReadState>,
    events: Vec<Event>,
    snapshot_to_install: Option<SnapshotMeta>,
    saved_hard_state: HardState,
    last_state: (Role, Term, Option<NodeId>),
    needs_broadcast: bool,
}

impl Raft {
    /// Restores a node from what it had on disk (or a bootstrap state).
    pub fn new(cfg: Config, init: InitialState) -> Result<Raft, ConfigError> {
        cfg.validate()?;
        let log = RaftLog::restore(init.snapshot.clone(), init.entries, init.applied);
        let (config_index, config) = log.config_at(log.last_index());
        let rng = ChaCha8Rng::seed_from_u64(cfg.seed);
        let mut raft = Raft {
            rng,
            role: Role::Follower,
            term: init.hard_state.term,
            vote: init.hard_state.vote,
            leader: None,
            log,
            config,
            config_index,
            progress: BTreeMap::new(),
            votes: BTreeMap::new(),
            election_elapsed: 0,
            heartbeat_elapsed: 0,
            ticks: 0,
            lease_void: false,
            // A node that never had a term has never acknowledged any leader.
            restart_vote_guard: if init.hard_state.term > 0 {
                cfg.election_ticks
            } else {
                0
            },
            randomized_timeout: cfg.election_ticks,
            transferee: None,
            read_round: 0,
            read_round_wanted: false,
            pending_reads: VecDeque::new(),
            reads_awaiting_commit: Vec::new(),
            forwarded_reads: BTreeSet::new(),
            snapshot: init.snapshot,
            applied: init.applied,
            foreign_cluster_messages: 0,
            messages: Vec::new(),
            persisted_messages: Vec::new(),
            read_states: Vec::new(),
            events: Vec::new(),
            snapshot_to_install: None,
            saved_hard_state: init.hard_state,
            last_state: (Role::Follower, init.hard_state.term, None),
            needs_broadcast: false,
            cfg,
        };
        raft.reset_election_timer();
        Ok(raft)
    }

    // ---------------------------------------------------------------- accessors

    /// This node's id.
    pub fn id(&self) -> NodeId {
        self.cfg.id
    }
    /// Current role.
    pub fn role(&self) -> Role {
        self.role
    }
    /// Current term.
    pub fn term(&self) -> Term {
        self.term
    }
    /// Known leader of the current term.
    pub fn leader(&self) -> Option<NodeId> {
        self.leader
    }
    /// Commit index.
    pub fn commit_index(&self) -> Index {
        self.log.committed
    }
    /// Last log index (including entries not yet durable).
    pub fn last_index(&self) -> Index {
        self.log.last_index()
    }
    /// The configuration in effect (the latest in the log, thesis §4.1).
    pub fn config(&self) -> &ClusterConfig {
        &self.config
    }
    /// An entry still in the in-memory log.
    pub fn entry(&self, index: Index) -> Option<&Entry> {
        self.log.entry(index)
    }
    /// Term of an entry, if known (also at the snapshot index).
    pub fn entry_term(&self, index: Index) -> Option<Term> {
        self.log.term(index)
    }
    /// First index still in the in-memory log.
    pub fn first_index(&self) -> Index {
        self.log.first_index()
    }

    /// The core's state, for status pages and tests.
    pub fn status(&self) -> Status {
        Status {
            id: self.cfg.id,
            role: self.role,
            term: self.term,
            vote: self.vote,
            leader: self.leader,
            commit: self.log.committed,
            applied: self.applied,
            persisted: self.log.persisted,
            last_index: self.log.last_index(),
            snapshot_index: self.log.base.index,
            config: self.config.clone(),
            config_index: self.config_index,
            progress: self.progress.clone(),
            foreign_cluster_messages: self.foreign_cluster_messages,
            lease_ticks_left: self.lease_ticks_left(),
        }
    }

    /// Ends the vote refusal a restarted node starts with (testkit only): for harnesses
    /// that start a node with a log to stand for one that has been up for a while.
    #[cfg(feature = "testkit")]
    pub fn end_restart_vote_guard(&mut self) {
        self.restart_vote_guard = 0;
    }

    #[cfg(feature = "testkit")]
    fn bug(&self, bug: crate::testkit::Bug) -> bool {
        self.cfg.bugs.0.contains(&bug)
    }
    #[cfg(not(feature = "testkit"))]
    #[inline(always)]
    fn bug(&self, _: Bug) -> bool {
        false
    }

    // ---------------------------------------------------------------- inputs

    /// Advances the logical clock by one tick.
    pub fn tick(&mut self) {
        self.ticks += 1;
        self.restart_vote_guard = self.restart_vote_guard.saturating_sub(1);
        if self.role == Role::Leader {
            self.tick_leader();
        } else {
            self.tick_election();
        }
    }

    fn tick_election(&mut self) {
        self.election_elapsed = self.election_elapsed.saturating_add(1);
        // §5.2: "If a follower receives no communication over a period of time called the
        // election timeout, then it assumes there is no viable leader and begins an election".
        if self.promotable() && self.election_elapsed >= self.randomized_timeout {
            self.campaign(if self.cfg.pre_vote {
                Campaign::PreVote
            } else {
                Campaign::Election
            });
        }
    }

    fn tick_leader(&mut self) {
        self.heartbeat_elapsed += 1;
        self.election_elapsed += 1;
        if self.election_elapsed >= self.cfg.election_ticks {
            self.election_elapsed = 0;
            // Thesis §6.2 (CheckQuorum): "a leader steps down if an election timeout elapses
            // without a successful round of heartbeats to a majority of its cluster".
            if self.cfg.check_quorum && !self.quorum_recently_active() {
                self.become_follower(self.term, None);
                return;
            }
            // Thesis §3.10: "if the transfer does not complete after about one election
            // timeout, the leader aborts the transfer and resumes accepting client requests".
            self.transferee = None;
        }
        let election_ticks = self.cfg.election_ticks;
        let mut retry = Vec::new();
        for (&id, pr) in self.progress.iter_mut() {
            if let ReplicationState::Snapshot { .. } = pr.state {
                pr.snapshot_ticks += 1;
                if pr.snapshot_ticks >= election_ticks {
                    // The snapshot (or its answer) was lost: start over.
                    pr.become_probe();
                    retry.push(id);
                }
            }
        }
        for id in retry {
            self.send_append(id, true);
        }
        if self.heartbeat_elapsed >= self.cfg.heartbeat_ticks {
            self.heartbeat_elapsed = 0;
            self.broadcast_heartbeat();
        }
    }

    /// Proposes a record. On success returns the `(index, term)` it will commit at — if it
    /// commits at all: the caller learns the outcome when an entry at that index is applied
    /// (same term: this record; another term: it was lost and may be retried).
    pub fn propose(
        &mut self,
        record: Record,
        timestamp_ms: u64,
    ) -> Result<(Index, Term), ProposeError> {
        match self.role {
            Role::Leader => {}
            Role::Follower => {
                return Err(ProposeError::NotLeader {
                    leader: self.leader,
                });
            }
            Role::Candidate | Role::PreCandidate => return Err(ProposeError::Retry),
        }
        if let Some(to) = self.transferee {
            // Thesis §3.10: "the prior leader stops accepting new client requests".
            return Err(ProposeError::TransferInProgress { to });
        }
        let uncommitted = self.log.last_index() - self.log.committed;
        if uncommitted >= self.cfg.max_uncommitted_entries {
            return Err(ProposeError::Busy { uncommitted });
        }
        if let Record::Config(new) = &record {
            self.check_config_change(new)?;
        }
        Ok(self.append_own(record, timestamp_ms))
    }

    /// Thesis §4.1 single-server changes, with the fix of §4.1 (and the 2015 raft-dev
    /// erratum): a leader may not append a configuration change until it has committed an
    /// entry of its own term, and only one change may be uncommitted at a time.
    fn check_config_change(&self, new: &ClusterConfig) -> Result<(), ConfigChangeError> {
        if !self.committed_in_current_term() {
            return Err(ConfigChangeError::TermNotCommitted);
        }
        if self.config_index > self.log.committed {
            return Err(ConfigChangeError::Pending {
                index: self.config_index,
            });
        }
        if new.voters.is_empty() {
            return Err(ConfigChangeError::NoVoters);
        }
        if let Some(&both) = new.voters.intersection(&new.learners).next() {
            return Err(ConfigChangeError::VoterAndLearner(both));
        }
        let changed = new.voters.symmetric_difference(&self.config.voters).count();
        if changed > 1 {
            return Err(ConfigChangeError::TooManyVoterChanges { changed });
        }
        Ok(())
    }

    fn append_own(&mut self, record: Record, timestamp_ms: u64) -> (Index, Term) {
        let index = self.log.last_index() + 1;
        let is_config = matches!(record, Record::Config(_));
        self.log.append(Entry {
            index,
            term: self.term,
            // The log's clock never runs back, whatever the leader's wall clock does.
            timestamp_ms: timestamp_ms.max(self.log.last_timestamp()),
            record,
        });
        if is_config {
            self.refresh_config();
        }
        self.needs_broadcast = true;
        if self.single_voter_self() {
            // Nothing to wait for but our own disk.
            self.maybe_commit();
        }
        (index, self.term)
    }

    /// Requests a linearizable read. The answer comes as a [`ReadState`] with the same
    /// `ctx`; read the state machine once it has applied up to the answer's index.
    pub fn read_index(&mut self, ctx: u64, mode: ReadMode) -> Result<(), ReadError> {
        if mode == ReadMode::Lease && !self.cfg.check_quorum {
            return Err(ReadError::LeaseNeedsCheckQuorum);
        }
        match self.role {
            Role::Leader => {
                self.leader_read(ctx, None, mode);
                Ok(())
            }
            _ if mode == ReadMode::Lease => Err(ReadError::NotLeader {
                leader: self.leader,
            }),
            Role::Follower => match self.leader {
                Some(leader) => {
                    self.forwarded_reads.insert(ctx);
                    self.send(leader, MessageBody::ReadIndex { ctx });
                    Ok(())
                }
                None => Err(ReadError::NoLeader),
            },
            Role::Candidate | Role::PreCandidate => Err(ReadError::NoLeader),
        }
    }

    fn leader_read(&mut self, ctx: u64, from: Option<NodeId>, mode: ReadMode) {
        // Thesis §6.4 step 1: the leader must have committed an entry of its term, so that
        // its commit index is at least that of any previous leader.
        if !self.committed_in_current_term() && !self.bug(Bug::ReadIndexWithoutNoop) {
            self.reads_awaiting_commit.push((ctx, from, mode));
            return;
        }
        let index = self.log.committed;
        // Thesis §6.4.1: a lease read skips the round only while the lease holds; a lapsed
        // lease (an isolated leader, before its CheckQuorum check) falls back to ReadIndex.
        let lease =
            mode == ReadMode::Lease && (self.lease_ticks_left() > 0 || self.bug(Bug::LeaseByRole));
        if lease || self.single_voter_self() {
            self.answer_read(ctx, from, Some(index));
            return;
        }
        // Thesis §6.4 step 3: confirm leadership with a round of heartbeats to a majority.
        // The round is sent after this read was recorded, with the next Ready, and serves
        // every read recorded before it (as etcd-raft batches ReadIndex requests).
        self.pending_reads.push_back(PendingRead {
            round: self.read_round + 1,
            index,
            ctx,
            from,
        });
        self.read_round_wanted = true;
    }

    /// Ticks left in the leader lease at this tick: `s + lease_ticks - now`, where `s` is the
    /// latest tick at which heartbeats went out that a majority of voters acknowledged
    /// (the leader counts as acknowledging at once). A voter that acknowledged a heartbeat
    /// sent at `s` refuses votes for `election_ticks` of its ticks after receiving it
    /// (§4.2.3; restarted voters too), so no other leader can be elected before the lease
    /// ends, given bounded clock-rate differences (docs/raft.md, "Leader leases").
    fn lease_ticks_left(&self) -> u32 {
        if self.role != Role::Leader
            || self.lease_void
            || !self.cfg.check_quorum
            || self.cfg.lease_ticks == 0
        {
            return 0;
        }
        let Some(since) = self.quorum_value(Some(self.ticks), |p| p.lease_acked_tick) else {
            return 0;
        };
        let end = since + u64::from(self.cfg.lease_ticks);
        u32::try_from(end.saturating_sub(self.ticks)).unwrap_or(u32::MAX)
    }

    fn answer_read(&mut self, ctx: u64, from: Option<NodeId>, index: Option<Index>) {
        match from {
            None => self.read_states.push(ReadState { ctx, index }),
            Some(f) => self.send(f, MessageBody::ReadIndexResponse { ctx, index }),
        }
    }

    /// Asks the leader to hand leadership to `to` (thesis §3.10). Returns false if this node
    /// is not the leader or `to` is not another voter.
    pub fn transfer_leadership(&mut self, to: NodeId) -> bool {
        if self.role != Role::Leader || to == self.cfg.id || !self.config.voters.contains(&to) {
            return false;
        }
        self.transferee = Some(to);
        self.election_elapsed = 0;
        let caught_up = self
            .progress
            .get(&to)
            .is_some_and(|pr| pr.match_index == self.log.last_index());
        if caught_up {
            self.send_timeout_now(to);
        } else {
            self.send_append(to, true);
        }
        true
    }

    /// The driver reports its log durable up to `(index, term)` (step 3 of the handshake).
    pub fn persisted(&mut self, index: Index, term: Term) {
        if self.log.persisted_to(index, term) && self.role == Role::Leader {
            // §10.2.1: the leader's own write counts toward commit only once durable.
            self.maybe_commit();
        }
    }

    /// The driver reports the state machine applied up to `index`.
    pub fn applied(&mut self, index: Index) {
        self.applied = self.applied.max(index);
    }

    /// Compacts the log up to `index`, which must be applied and durable in the driver's
    /// applied state: that state is the snapshot (thesis §5.1: a snapshot covers a committed
    /// prefix), and the driver streams an image of it to followers that need it.
    pub fn compact(&mut self, index: Index) -> Result<(), CompactError> {
        if index > self.applied || index > self.log.committed {
            return Err(CompactError::NotApplied {
                index,
                applied: self.applied,
            });
        }
        if index <= self.log.base.index {
            return Err(CompactError::Stale {
                index,
                current: self.log.base.index,
            });
        }
        let term = self.log.term(index).ok_or(CompactError::Stale {
            index,
            current: self.log.base.index,
        })?;
        let (_, config) = self.log.config_at(index);
        let meta = SnapshotMeta {
            index,
            term,
            config,
        };
        self.log.compact(meta.clone());
        self.snapshot = meta;
        Ok(())
    }

    /// Processes one message from a peer.
    pub fn step(&mut self, m: Message) -> Result<(), StepError> {
        if m.cluster != self.cfg.cluster {
            self.foreign_cluster_messages += 1;
            return Err(StepError::ForeignCluster {
                from: m.from,
                expected: self.cfg.cluster,
                got: m.cluster,
            });
        }
        if m.to != self.cfg.id {
            return Err(StepError::WrongNode {
                to: m.to,
                me: self.cfg.id,
            });
        }
        let mut term = m.term;
        if term > self.term {
            if let MessageBody::RequestVote { transfer, .. } = m.body {
                // Thesis §4.2.3: "if a server receives a RequestVote request within the minimum
                // election timeout of hearing from a current leader, it does not update its
                // term or grant its vote" — unless the leader itself asked (§3.10).
                // A restarted voter cannot know whether it heard from a leader just before it
                // crashed, so it refuses for a whole minimum election timeout after starting:
                // a leader lease counts on its refusal (thesis §6.4.1).
                let restarted =
                    self.restart_vote_guard > 0 && !self.bug(Bug::VoteRightAfterRestart);
                let in_lease = self.cfg.check_quorum
                    && ((self.leader.is_some() && self.election_elapsed < self.cfg.election_ticks)
                        || restarted);
                if in_lease && !transfer {
                    return Ok(());
                }
            }
            match m.body {
                // §9.6: a pre-vote changes no one's term; a granted pre-vote carries the term
                // the candidate proposed, not a newer one.
                MessageBody::RequestVote { pre_vote: true, .. } => {}
                MessageBody::RequestVoteResponse {
                    pre_vote: true,
                    granted: true,
                } => {}
                _ if self.role == Role::Leader && self.bug(Bug::LeaderIgnoresHigherTerm) => {
                    term = self.term;
                }
                _ => {
                    // §5.1: "If a server receives a request with a higher term, it updates its
                    // term; a leader or candidate reverts to follower state."
                    let leader = match m.body {
                        MessageBody::AppendEntries { .. }
                        | MessageBody::Heartbeat { .. }
                        | MessageBody::InstallSnapshot { .. } => Some(m.from),
                        _ => None,
                    };
                    self.become_follower(term, leader);
                }
            }
        } else if term < self.term {
            // §5.1: "If a server receives a request with a stale term number, it rejects the
            // request." A stale leader is told our term so that it steps down (it may have
            // been partitioned away and would otherwise keep pinging with its old term).
            match m.body {
                MessageBody::AppendEntries { .. }
                | MessageBody::Heartbeat { .. }
                | MessageBody::InstallSnapshot { .. } => {
                    self.send(
                        m.from,
                        MessageBody::AppendEntriesResponse {
                            success: false,
                            index: 0,
                            hint_term: 0,
                            hint_index: 0,
                        },
                    );
                }
                MessageBody::RequestVote { pre_vote: true, .. } => {
                    self.send(
                        m.from,
                        MessageBody::RequestVoteResponse {
                            pre_vote: true,
                            granted: false,
                        },
                    );
                }
                _ => {}
            }
            return Ok(());
        }
        let from = m.from;
        match m.body {
            MessageBody::RequestVote {
                pre_vote,
                last_index,
                last_term,
                ..
            } => self.handle_vote_request(from, term, pre_vote, last_index, last_term),
            MessageBody::RequestVoteResponse { pre_vote, granted } => {
                self.handle_vote_response(from, pre_vote, granted)
            }
            MessageBody::AppendEntries {
                prev_index,
                prev_term,
                entries,
                commit,
            } => {
                if self.follow(from) {
                    self.handle_append(from, prev_index, prev_term, entries, commit);
                }
            }
            MessageBody::Heartbeat {
                commit,
                read_round,
                sent_tick,
            } => {
                if self.follow(from) {
                    self.log.commit_to(commit);
                    self.send(
                        from,
                        MessageBody::HeartbeatResponse {
                            read_round,
                            sent_tick,
                        },
                    );
                }
            }
            MessageBody::InstallSnapshot { snapshot } => {
                if self.follow(from) {
                    self.handle_snapshot(from, snapshot);
                }
            }
            MessageBody::AppendEntriesResponse {
                success,
                index,
                hint_term,
                hint_index,
            } => self.handle_append_response(from, success, index, hint_term, hint_index),
            MessageBody::HeartbeatResponse {
                read_round,
                sent_tick,
            } => self.handle_heartbeat_response(from, read_round, sent_tick),
            MessageBody::TimeoutNow => {
                // Thesis §3.10: the target "starts an election immediately", skipping PreVote
                // (the leader vouches for it).
                if self.role != Role::Leader && self.promotable() {
                    self.campaign(Campaign::Transfer);
                }
            }
            MessageBody::ReadIndex { ctx } => {
                if self.role == Role::Leader {
                    self.leader_read(ctx, Some(from), ReadMode::ReadIndex);
                } else {
                    self.send(from, MessageBody::ReadIndexResponse { ctx, index: None });
                }
            }
            MessageBody::ReadIndexResponse { ctx, index } => {
                if self.forwarded_reads.remove(&ctx) {
                    self.read_states.push(ReadState { ctx, index });
                }
            }
        }
        Ok(())
    }

    /// Collects everything the driver must do; see [`Ready`] for the handshake.
    pub fn ready(&mut self) -> Ready {
        if std::mem::take(&mut self.read_round_wanted) && self.role == Role::Leader {
            self.read_round += 1;
            self.broadcast_heartbeat();
        }
        if self.needs_broadcast {
            self.needs_broadcast = false;
            if self.role == Role::Leader {
                let peers: Vec<NodeId> = self.progress.keys().copied().collect();
                for id in peers {
                    self.send_append(id, false);
                }
            }
        }
        let hs = self.hard_state();
        let hard_state = (hs != self.saved_hard_state).then(|| {
            self.saved_hard_state = hs;
            hs
        });
        Ready {
            messages: std::mem::take(&mut self.messages),
            hard_state,
            snapshot: self.snapshot_to_install.take(),
            entries: self.log.take_unstable(),
            persisted_messages: std::mem::take(&mut self.persisted_messages),
            committed_entries: self.log.take_committed(self.cfg.max_apply_batch),
            read_states: std::mem::take(&mut self.read_states),
            events: std::mem::take(&mut self.events),
        }
    }

    /// Whether [`Raft::ready`] would return anything.
    pub fn has_ready(&self) -> bool {
        self.needs_broadcast
            || self.read_round_wanted
            || !self.messages.is_empty()
            || !self.persisted_messages.is_empty()
            || !self.read_states.is_empty()
            || !self.events.is_empty()
            || self.snapshot_to_install.is_some()
            || self.log.unstable <= self.log.last_index()
            || self.log.committed.min(self.log.persisted) > self.log.handed_out
            || self.saved_hard_state != self.hard_state()
    }

    /// What must be durable now.
    fn hard_state(&self) -> HardState {
        let mut hs = HardState {
            term: self.term,
            vote: self.vote,
        };
        if self.bug(Bug::VoteNotPersisted) {
            // Broken on purpose: the vote is never written.
            hs.vote = None;
        }
        hs
    }

    // ---------------------------------------------------------------- roles

    fn promotable(&self) -> bool {
        // Learners and detached nodes (design §7) never campaign.
        self.config.voters.contains(&self.cfg.id)
    }

    fn single_voter_self(&self) -> bool {
        self.config.voters.len() == 1 && self.config.voters.contains(&self.cfg.id)
    }

    fn reset_election_timer(&mut self) {
        self.election_elapsed = 0;
        self.heartbeat_elapsed = 0;
        // §5.2: "election timeouts are chosen randomly from a fixed interval".
        let et = self.cfg.election_ticks;
        self.randomized_timeout = et + (self.rng.next_u32() % et);
    }

    fn reset(&mut self, term: Term) {
        if term != self.term {
            self.term = term;
            self.vote = None;
        }
        self.leader = None;
        self.reset_election_timer();
        self.votes.clear();
        self.progress.clear();
        self.transferee = None;
        self.fail_reads();
    }

    fn fail_reads(&mut self) {
        for r in std::mem::take(&mut self.pending_reads) {
            self.answer_read(r.ctx, r.from, None);
        }
        for (ctx, from, _) in std::mem::take(&mut self.reads_awaiting_commit) {
            self.answer_read(ctx, from, None);
        }
        for ctx in std::mem::take(&mut self.forwarded_reads) {
            self.read_states.push(ReadState { ctx, index: None });
        }
    }

    fn become_follower(&mut self, term: Term, leader: Option<NodeId>) {
        self.reset(term);
        self.role = Role::Follower;
        self.leader = leader;
        self.note_state();
    }

    /// Accepts `from` as this term's leader (§5.2: a candidate that hears from a leader of
    /// its term "recognizes the leader as legitimate and returns to follower state").
    /// Returns false if this node is itself the leader of the term (impossible in a correct
    /// cluster: Election Safety).
    fn follow(&mut self, from: NodeId) -> bool {
        match self.role {
            Role::Leader => false,
            Role::Follower if self.leader == Some(from) => {
                self.election_elapsed = 0;
                true
            }
            _ => {
                self.become_follower(self.term, Some(from));
                true
            }
        }
    }

    fn campaign(&mut self, kind: Campaign) {
        let pre = kind == Campaign::PreVote;
        let request_term = if pre {
            // Thesis §9.6: first ask whether an election could be won; only then increment
            // the term, so a node that cannot win never disrupts the cluster.
            self.reset(self.term);
            self.role = Role::PreCandidate;
            self.term + 1
        } else {
            // §5.2: "a follower increments its current term and transitions to candidate
            // state. It then votes for itself".
            self.reset(self.term + 1);
            self.role = Role::Candidate;
            self.vote = Some(self.cfg.id);
            self.term
        };
        self.note_state();
        self.votes.insert(self.cfg.id, true);
        if self.tally() == Some(true) {
            return self.won_election(pre);
        }
        let (last_index, last_term) = (self.log.last_index(), self.log.last_term());
        let voters: Vec<NodeId> = self
            .config
            .voters
            .iter()
            .copied()
            .filter(|&v| v != self.cfg.id)
            .collect();
        for v in voters {
            self.send_with_term(
                v,
                request_term,
                MessageBody::RequestVote {
                    pre_vote: pre,
                    last_index,
                    last_term,
                    transfer: kind == Campaign::Transfer,
                },
            );
        }
    }

    fn won_election(&mut self, pre: bool) {
        if pre {
            self.campaign(Campaign::Election);
        } else {
            self.become_leader();
        }
    }

    /// `Some(true)` won, `Some(false)` lost, `None` undecided.
    fn tally(&self) -> Option<bool> {
        let granted = self
            .config
            .voters
            .iter()
            .filter(|v| self.votes.get(v) == Some(&true))
            .count();
        let rejected = self
            .config
            .voters
            .iter()
            .filter(|v| self.votes.get(v) == Some(&false))
            .count();
        let quorum = self.config.quorum();
        if granted >= quorum {
            Some(true)
        } else if rejected > self.config.voters.len() - quorum {
            Some(false)
        } else {
            None
        }
    }

    fn become_leader(&mut self) {
        self.reset(self.term);
        self.role = Role::Leader;
        self.leader = Some(self.cfg.id);
        self.lease_void = false;
        let next = self.log.last_index() + 1;
        self.progress = self
            .config
            .members()
            .filter(|&id| id != self.cfg.id)
            .map(|id| (id, Progress::new(next)))
            .collect();
        self.note_state();
        // Thesis §6.4 / §8: "each leader commit[s] a blank no-op entry into the log at the
        // start of its term", so that it learns which entries are committed.
        let ts = self.log.last_timestamp();
        self.append_own(Record::Noop, ts);
    }

    fn note_state(&mut self) {
        let now = (self.role, self.term, self.leader);
        if now != self.last_state {
            self.last_state = now;
            self.events.push(Event::State {
                role: self.role,
                term: self.term,
                leader: self.leader,
            });
        }
    }

    // ---------------------------------------------------------------- votes

    fn handle_vote_request(
        &mut self,
        from: NodeId,
        term: Term,
        pre: bool,
        last_index: Index,
        last_term: Term,
    ) {
        // §5.2: "each server will vote for at most one candidate in a given term, on a
        // first-come-first-served basis". A pre-vote for a later term promises nothing.
        let can_vote = self.vote == Some(from)
            || (self.vote.is_none() && self.leader.is_none())
            || (pre && term > self.term)
            || self.bug(Bug::DoubleVote);
        // §5.4.1: "the voter denies its vote if its own log is more up-to-date than that of
        // the candidate".
        let up_to_date =
            self.log.is_up_to_date(last_index, last_term) || self.bug(Bug::SkipUpToDateCheck);
        let granted = can_vote && up_to_date;
        if granted && !pre {
            self.vote = Some(from);
            // §5.2: a follower that grants a vote resets its election timer.
            self.election_elapsed = 0;
        }
        let reply_term = if granted && pre { term } else { self.term };
        self.send_with_term(
            from,
            reply_term,
            MessageBody::RequestVoteResponse {
                pre_vote: pre,
                granted,
            },
        );
    }

    fn handle_vote_response(&mut self, from: NodeId, pre: bool, granted: bool) {
        let expected = if pre {
            Role::PreCandidate
        } else {
            Role::Candidate
        };
        if self.role != expected {
            return;
        }
        self.votes.insert(from, granted);
        match self.tally() {
            Some(true) => self.won_election(pre),
            Some(false) => self.become_follower(self.term, None),
            None => {}
        }
    }

    // ---------------------------------------------------------------- replication: follower

    fn handle_append(
        &mut self,
        from: NodeId,
        prev_index: Index,
        prev_term: Term,
        entries: Vec<Entry>,
        commit: Index,
    ) {
        if prev_index < self.log.committed {
            // Everything up to our commit index already matches the leader (Log Matching).
            let index = self.log.committed;
            self.send(from, ack(index));
            return;
        }
        if !self.log.matches(prev_index, prev_term) {
            // §5.3: "If a follower's log is inconsistent with the leader's, the AppendEntries
            // consistency check will fail", with a hint to skip a whole term at a time.
            let (hint_index, hint_term) = self
                .log
                .find_conflict_by_term(prev_index.min(self.log.last_index()), prev_term);
            self.send(
                from,
                MessageBody::AppendEntriesResponse {
                    success: false,
                    index: prev_index,
                    hint_term,
                    hint_index,
                },
            );
            return;
        }
        let last_new = prev_index + entries.len() as Index;
        let keep_matching = !self.bug(Bug::TruncateMatchingSuffix);
        // A configuration entry added or truncated away changes the configuration in effect.
        // Only the merged entries are looked at: scanning back to the last configuration on
        // every append made a follower's cost grow with its log.
        if let Some(first_changed) = self.log.merge(entries, keep_matching)
            && (first_changed <= self.config_index || self.log.has_config_from(first_changed))
        {
            self.refresh_config();
        }
        // Fig. 2: "If leaderCommit > commitIndex, set commitIndex = min(leaderCommit, index of
        // last new entry)".
        self.log.commit_to(commit.min(last_new));
        self.send(from, ack(last_new));
    }

    fn handle_snapshot(&mut self, from: NodeId, snapshot: SnapshotMeta) {
        let meta = &snapshot;
        if meta.index <= self.log.committed {
            let index = self.log.committed;
            self.send(from, ack(index));
            return;
        }
        if self.log.matches(meta.index, meta.term) {
            // §7: "If existing log entry has same index and term as snapshot's last included
            // entry, retain log entries following it": everything up to it is committed.
            self.log.commit_to(meta.index);
            let index = meta.index;
            self.send(from, ack(index));
            return;
        }
        // §7: "Discard the entire log ... Reset state machine using snapshot contents".
        let index = meta.index;
        self.log.install_snapshot(meta.clone());
        self.refresh_config();
        self.applied = self.applied.max(index);
        self.snapshot = snapshot.clone();
        self.snapshot_to_install = Some(snapshot);
        self.send(from, ack(index));
    }

    fn refresh_config(&mut self) {
        let (index, config) = self.log.config_at(self.log.last_index());
        self.config_index = index;
        if config == self.config {
            return; // same membership, e.g. now carried by a snapshot
        }
        self.config = config.clone();
        if self.role == Role::Leader {
            let next = self.log.last_index() + 1;
            let me = self.cfg.id;
            self.progress.retain(|id, _| config.contains(*id));
            for id in config.members().filter(|&id| id != me) {
                self.progress
                    .entry(id)
                    .or_insert_with(|| Progress::new(next));
            }
            if self.transferee.is_some_and(|t| !config.voters.contains(&t)) {
                self.transferee = None;
            }
        }
        self.events.push(Event::Config { index, config });
    }

    // ---------------------------------------------------------------- replication: leader

    fn handle_append_response(
        &mut self,
        from: NodeId,
        success: bool,
        index: Index,
        hint_term: Term,
        hint_index: Index,
    ) {
        if self.role != Role::Leader {
            return;
        }
        let last_index = self.log.last_index();
        let probe_from = if hint_term > 0 {
            self.log.find_conflict_by_term(hint_index, hint_term).0 + 1
        } else {
            hint_index + 1
        };
        let Some(pr) = self.progress.get_mut(&from) else {
            return;
        };
        pr.recent_active = true;
        if !success {
            if pr.maybe_decrease(index, probe_from) {
                self.send_append(from, true);
            }
            return;
        }
        if !pr.maybe_update(index) {
            return;
        }
        match pr.state {
            ReplicationState::Probe => pr.become_replicate(),
            ReplicationState::Snapshot { index: snap } if pr.match_index >= snap => {
                pr.become_probe();
                pr.become_replicate();
            }
            _ => {}
        }
        let caught_up = pr.match_index == last_index;
        self.maybe_commit();
        if self.role != Role::Leader {
            return; // the commit removed us from the configuration
        }
        if caught_up && self.transferee == Some(from) {
            self.send_timeout_now(from);
        }
        self.send_append(from, false);
    }

    fn handle_heartbeat_response(&mut self, from: NodeId, read_round: u64, sent_tick: u64) {
        if self.role != Role::Leader {
            return;
        }
        let last_index = self.log.last_index();
        let max_inflight = self.cfg.max_inflight;
        let Some(pr) = self.progress.get_mut(&from) else {
            return;
        };
        pr.recent_active = true;
        pr.read_round_acked = pr.read_round_acked.max(read_round);
        pr.lease_acked_tick = pr.lease_acked_tick.max(Some(sent_tick));
        // A lost append leaves the pipeline full or the probe waiting: make room for one.
        if pr.state == ReplicationState::Replicate && pr.is_paused(max_inflight) {
            pr.inflight.pop_front();
        }
        pr.probe_sent = false;
        if pr.match_index < last_index {
            self.send_append(from, true);
        }
        self.advance_reads();
    }

    /// Releases the ReadIndex requests whose round a majority has acknowledged.
    fn advance_reads(&mut self) {
        if self.pending_reads.is_empty() {
            return;
        }
        let Some(confirmed) =
            self.quorum_value(Some(self.read_round), |p| Some(p.read_round_acked))
        else {
            return;
        };
        while self
            .pending_reads
            .front()
            .is_some_and(|r| r.round <= confirmed)
        {
            if let Some(r) = self.pending_reads.pop_front() {
                self.answer_read(r.ctx, r.from, Some(r.index));
            }
        }
    }

    /// The highest value that a majority of voters have reached: `own` for this node, `of`
    /// of each other voter's progress (`None`: nothing yet). `None` if no majority has any.
    fn quorum_value(&self, own: Option<u64>, of: impl Fn(&Progress) -> Option<u64>) -> Option<u64> {
        let mut values: Vec<u64> = self
            .config
            .voters
            .iter()
            .filter_map(|v| {
                if *v == self.cfg.id {
                    own
                } else {
                    self.progress.get(v).and_then(&of)
                }
            })
            .collect();
        values.sort_unstable_by(|a, b| b.cmp(a));
        values.get(self.config.quorum() - 1).copied()
    }

    /// Advances the commit index to the highest index durable on a majority of voters —
    /// counting only entries of the current term (§5.4.2: "Raft never commits log entries
    /// from previous terms by counting replicas").
    fn maybe_commit(&mut self) {
        let own = if self.bug(Bug::LeaderCountsSelfBeforePersist) {
            self.log.last_index()
        } else {
            self.log.persisted
        };
        let Some(candidate) = self.quorum_value(Some(own), |p| Some(p.match_index)) else {
            return;
        };
        if candidate <= self.log.committed {
            return;
        }
        let own_term = self.log.term(candidate) == Some(self.term);
        if !own_term && !self.bug(Bug::CommitPreviousTermByCounting) {
            return;
        }
        self.log.commit_to(candidate);
        self.after_commit();
    }

    fn after_commit(&mut self) {
        if self.committed_in_current_term() && !self.reads_awaiting_commit.is_empty() {
            for (ctx, from, mode) in std::mem::take(&mut self.reads_awaiting_commit) {
                self.leader_read(ctx, from, mode);
            }
        }
        // Thesis §4.2.2: a leader removed from the configuration steps down once the entry
        // removing it is committed (until then it manages the cluster without counting
        // itself).
        if self.config_index <= self.log.committed && !self.config.voters.contains(&self.cfg.id) {
            self.become_follower(self.term, None);
        }
    }

    fn committed_in_current_term(&self) -> bool {
        self.log.term(self.log.committed) == Some(self.term)
    }

    fn quorum_recently_active(&mut self) -> bool {
        let me = self.cfg.id;
        let active = self
            .config
            .voters
            .iter()
            .filter(|v| **v == me || self.progress.get(v).is_some_and(|p| p.recent_active))
            .count();
        for pr in self.progress.values_mut() {
            pr.recent_active = false;
        }
        active >= self.config.quorum()
    }

    /// Sends `to` what it lacks: entries (pipelined in the replicate state), or the
    /// snapshot if they are compacted away. With `allow_empty`, a probe goes out even when
    /// there is nothing new, to find the match point.
    fn send_append(&mut self, to: NodeId, allow_empty: bool) {
        let max_inflight = self.cfg.max_inflight;
        let max_entries = self.cfg.max_entries_per_message;
        let last = self.log.last_index();
        loop {
            let Some(pr) = self.progress.get(&to) else {
                return;
            };
            if pr.is_paused(max_inflight) {
                return;
            }
            let next = pr.next_index;
            let replicate = pr.state == ReplicationState::Replicate;
            // With nothing new, an empty append still goes out when asked (`allow_empty`):
            // it makes a follower whose last acknowledgement was lost acknowledge again, or
            // else its match index, and the commit index it is told, would never advance.
            if next > last && !allow_empty {
                return;
            }
            let prev_index = next - 1;
            let (Some(prev_term), Some(entries)) = (
                self.log.term(prev_index),
                self.log
                    .slice_bytes(next, last, max_entries, self.cfg.max_bytes_per_message),
            ) else {
                // §7: the entries are compacted; the follower needs the snapshot.
                let snapshot = self.snapshot.clone();
                if let Some(pr) = self.progress.get_mut(&to) {
                    pr.become_snapshot(snapshot.index);
                }
                self.send(to, MessageBody::InstallSnapshot { snapshot });
                return;
            };
            let sent_to = entries.last().map_or(prev_index, |e| e.index);
            let commit = self.log.committed;
            if let Some(pr) = self.progress.get_mut(&to) {
                pr.sent(sent_to);
            }
            self.send(
                to,
                MessageBody::AppendEntries {
                    prev_index,
                    prev_term,
                    entries,
                    commit,
                },
            );
            if !replicate || sent_to == prev_index {
                return;
            }
        }
    }

    fn send_timeout_now(&mut self, to: NodeId) {
        // Thesis §3.10: the target's vote requests bypass the voters' lease, so this term's
        // lease can no longer be trusted, even if the transfer is later abandoned.
        self.lease_void = true;
        self.send(to, MessageBody::TimeoutNow);
    }

    fn broadcast_heartbeat(&mut self) {
        let round = self.read_round;
        let committed = self.log.committed;
        let beats: Vec<(NodeId, Index)> = self
            .progress
            .iter()
            .map(|(&id, pr)| (id, pr.match_index.min(committed)))
            .collect();
        let sent_tick = self.ticks;
        for (id, commit) in beats {
            self.send(
                id,
                MessageBody::Heartbeat {
                    commit,
                    read_round: round,
                    sent_tick,
                },
            );
        }
    }

    // ---------------------------------------------------------------- output

    fn send(&mut self, to: NodeId, body: MessageBody) {
        let term = self.term;
        self.send_with_term(to, term, body);
    }

    fn send_with_term(&mut self, to: NodeId, term: Term, body: MessageBody) {
        // Messages that promise something about this node's durable state wait until the
        // Ready's writes are durable; the leader's replication traffic and pre-votes do not
        // (the leader's term and vote were made durable before it asked for votes).
        let immediate = matches!(
            body,
            MessageBody::AppendEntries { .. }
                | MessageBody::Heartbeat { .. }
                | MessageBody::InstallSnapshot { .. }
                | MessageBody::TimeoutNow
                | MessageBody::RequestVote { pre_vote: true, .. }
                | MessageBody::RequestVoteResponse { pre_vote: true, .. }
                | MessageBody::ReadIndex { .. }
                | MessageBody::ReadIndexResponse { .. }
        );
        let m = Message {
            from: self.cfg.id,
            to,
            cluster: self.cfg.cluster,
            term,
            body,
        };
        if immediate {
            self.messages.push(m);
        } else {
            self.persisted_messages.push(m);
        }
    }
}

/// How an election starts.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Campaign {
    /// Ask first (thesis §9.6).
    PreVote,
    /// A real election in a new term.
    Election,
    /// A real election the leader asked for (thesis §3.10): skips PreVote and the
    /// receivers' leader lease.
    Transfer,
}

fn ack(index: Index) -> MessageBody {
    MessageBody::AppendEntriesResponse {
        success: true,
        index,
        hint_term: 0,
        hint_index: 0,
    }
}
