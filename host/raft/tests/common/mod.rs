//! A tiny in-process cluster of keel-raft cores, driven exactly per the `Ready` handshake:
//! send `messages`; write hard state, snapshot and entries to the node's `Disk`; then send
//! `persisted_messages` and report `persisted(Ready::persist_point())`; apply
//! `committed_entries` and report `applied`.
//!
//! The network is one FIFO queue. Nothing moves until a test says so: `deliver()` hands every
//! queued message to its receiver, `stabilize()` repeats ready-handling and delivery until the
//! cluster is quiet. Every step is also written to a trace (`take_trace`) in the stable,
//! one-line-per-fact format the transcript tests print.

// Each test binary uses a different part of the harness.
#![allow(dead_code)]

use std::collections::{BTreeMap, BTreeSet, VecDeque};

use keel_raft::testkit::{Bug, Bugs};
use keel_raft::{
    ClusterConfig, ClusterId, Command, Config, Entry, Event, HardState, Index, InitialState,
    Message, MessageBody, NodeId, Payload, ProposeError, Raft, ReadMode, ReadState, Record, Role,
    SnapshotMeta, Term,
};

/// The cluster UUID every test node belongs to.
pub(crate) const CLUSTER: ClusterId = ClusterId(0x6b65_656c_0000_0000_0000_0000_0000_0001);

/// A message from `from` to `to` in the test cluster.
pub(crate) fn msg(from: NodeId, to: NodeId, term: Term, body: MessageBody) -> Message {
    Message {
        from,
        to,
        cluster: CLUSTER,
        term,
        body,
    }
}

/// An application command carrying `data`.
pub(crate) fn command(data: &str) -> Record {
    Record::Command(Command {
        plugin: "test".into(),
        client: None,
        payload: Payload::Inline(data.as_bytes().to_vec()),
    })
}

/// An entry at `index` of `term` carrying a command named after its position.
pub(crate) fn entry(index: Index, term: Term) -> Entry {
    Entry {
        index,
        term,
        timestamp_ms: 0,
        record: command(&format!("{index}/{term}")),
    }
}

/// What a node has durably written.
#[derive(Clone, Debug, Default)]
pub(crate) struct Disk {
    pub(crate) hard_state: HardState,
    pub(crate) snapshot: SnapshotMeta,
    pub(crate) entries: Vec<Entry>,
}

/// One Ready's writes, held back while a node's disk is "slow" (`hold_writes`).
#[derive(Debug)]
struct Write {
    hard_state: Option<HardState>,
    snapshot: Option<SnapshotMeta>,
    entries: Vec<Entry>,
    persisted_messages: Vec<Message>,
    persist_point: Option<(Index, Term)>,
}

/// One node: its core, its disk, and what its state machine and clients have seen.
pub(crate) struct Node {
    /// `None` while crashed.
    pub(crate) raft: Option<Raft>,
    cfg: Config,
    pub(crate) disk: Disk,
    /// The state machine: entries applied since the last snapshot it was reset to.
    pub(crate) applied: Vec<Entry>,
    pub(crate) read_states: Vec<ReadState>,
    pub(crate) events: Vec<Event>,
    hold_writes: bool,
    pending_writes: VecDeque<Write>,
}

/// Builds a [`Cluster`] with named settings (defaults: PreVote and CheckQuorum on, election
/// timeout 10 ticks, heartbeat 1 tick, every node's seed its id).
pub(crate) struct ClusterBuilder {
    voters: Vec<NodeId>,
    learners: Vec<NodeId>,
    joining: Vec<NodeId>,
    pre_vote: bool,
    check_quorum: bool,
    election_ticks: u32,
    max_entries_per_message: usize,
    max_inflight: usize,
    max_uncommitted_entries: u64,
    bugs: Vec<Bug>,
    logs: BTreeMap<NodeId, Vec<Term>>,
}

impl ClusterBuilder {
    /// `n` voters with ids `1..=n`.
    pub(crate) fn voters(n: u64) -> Self {
        ClusterBuilder {
            voters: (1..=n).collect(),
            learners: Vec::new(),
            joining: Vec::new(),
            pre_vote: true,
            check_quorum: true,
            election_ticks: 10,
            max_entries_per_message: 256,
            max_inflight: 64,
            max_uncommitted_entries: 100_000,
            bugs: Vec::new(),
            logs: BTreeMap::new(),
        }
    }

    /// Voters with exactly these ids.
    pub(crate) fn voter_ids(ids: &[NodeId]) -> Self {
        let mut b = ClusterBuilder::voters(0);
        b.voters = ids.to_vec();
        b
    }

    pub(crate) fn learners(mut self, ids: &[NodeId]) -> Self {
        self.learners = ids.to_vec();
        self
    }
    /// Nodes that run but are in no configuration yet (waiting to be added, design §7).
    pub(crate) fn joining(mut self, ids: &[NodeId]) -> Self {
        self.joining = ids.to_vec();
        self
    }
    pub(crate) fn pre_vote(mut self, on: bool) -> Self {
        self.pre_vote = on;
        self
    }
    pub(crate) fn check_quorum(mut self, on: bool) -> Self {
        self.check_quorum = on;
        self
    }
    pub(crate) fn election_ticks(mut self, ticks: u32) -> Self {
        self.election_ticks = ticks;
        self
    }
    pub(crate) fn max_entries_per_message(mut self, n: usize) -> Self {
        self.max_entries_per_message = n;
        self
    }
    pub(crate) fn max_inflight(mut self, n: usize) -> Self {
        self.max_inflight = n;
        self
    }
    pub(crate) fn max_uncommitted_entries(mut self, n: u64) -> Self {
        self.max_uncommitted_entries = n;
        self
    }
    /// Switches on a deliberately broken variant on every node.
    pub(crate) fn bug(mut self, bug: Bug) -> Self {
        self.bugs.push(bug);
        self
    }
    pub(crate) fn bugs(mut self, bugs: &[Bug]) -> Self {
        self.bugs.extend_from_slice(bugs);
        self
    }
    /// Starts `node` with a log of entries of these terms (index 1, 2, …) already on disk,
    /// and its current term set to the last of them.
    pub(crate) fn log(mut self, node: NodeId, terms: &[Term]) -> Self {
        self.logs.insert(node, terms.to_vec());
        self
    }

    pub(crate) fn build(self) -> Cluster {
        let config = ClusterConfig {
            voters: self.voters.iter().copied().collect(),
            learners: self.learners.iter().copied().collect(),
            addresses: BTreeMap::new(),
        };
        let mut nodes = BTreeMap::new();
        let members: Vec<NodeId> = self.voters.iter().chain(&self.learners).copied().collect();
        for &id in members.iter().chain(&self.joining) {
            let initial_config = if members.contains(&id) {
                config.clone()
            } else {
                ClusterConfig::default()
            };
            let mut cfg = Config::new(id, CLUSTER);
            cfg.pre_vote = self.pre_vote;
            cfg.check_quorum = self.check_quorum;
            cfg.election_ticks = self.election_ticks;
            cfg.max_entries_per_message = self.max_entries_per_message;
            cfg.max_inflight = self.max_inflight;
            cfg.max_uncommitted_entries = self.max_uncommitted_entries;
            cfg.bugs = Bugs(self.bugs.clone());
            let terms = self.logs.get(&id).cloned().unwrap_or_default();
            let entries: Vec<Entry> = terms
                .iter()
                .enumerate()
                .map(|(i, &t)| entry(i as Index + 1, t))
                .collect();
            let disk = Disk {
                hard_state: HardState {
                    term: terms.last().copied().unwrap_or(0),
                    vote: None,
                },
                snapshot: InitialState::bootstrap(initial_config).snapshot,
                entries,
            };
            let mut node = Node {
                raft: None,
                cfg,
                disk,
                applied: Vec::new(),
                read_states: Vec::new(),
                events: Vec::new(),
                hold_writes: false,
                pending_writes: VecDeque::new(),
            };
            node.boot();
            if !terms.is_empty()
                && let Some(raft) = node.raft.as_mut()
            {
                // The log stands for a node that has been up for a while, not one that just
                // restarted (which would refuse votes for an election timeout, §4.2.3).
                raft.end_restart_vote_guard();
            }
            nodes.insert(id, node);
        }
        Cluster {
            nodes,
            in_flight: VecDeque::new(),
            isolated: BTreeSet::new(),
            drop_rules: Vec::new(),
            delivered: Vec::new(),
            trace: Vec::new(),
        }
    }
}

impl Node {
    /// (Re)creates the core from what is on disk; the state machine restarts from the
    /// snapshot.
    fn boot(&mut self) {
        let init = InitialState {
            hard_state: self.disk.hard_state,
            snapshot: self.disk.snapshot.clone(),
            entries: self.disk.entries.clone(),
            applied: self.disk.snapshot.index,
        };
        self.applied.clear();
        self.pending_writes.clear();
        self.raft = Some(Raft::new(self.cfg.clone(), init).expect("valid test config"));
    }
}

/// A drop rule: messages it matches vanish in the network.
type DropRule = Box<dyn Fn(&Message) -> bool>;

/// N cores, a FIFO network, and a disk per node.
pub(crate) struct Cluster {
    pub(crate) nodes: BTreeMap<NodeId, Node>,
    in_flight: VecDeque<Message>,
    isolated: BTreeSet<NodeId>,
    drop_rules: Vec<DropRule>,
    /// Every message handed to a receiver, in order.
    pub(crate) delivered: Vec<Message>,
    trace: Vec<String>,
}

impl Cluster {
    // ------------------------------------------------------------ access

    pub(crate) fn raft(&self, id: NodeId) -> &Raft {
        self.nodes[&id].raft.as_ref().expect("node is running")
    }
    pub(crate) fn raft_mut(&mut self, id: NodeId) -> &mut Raft {
        self.node_mut(id).raft.as_mut().expect("node is running")
    }
    pub(crate) fn node(&self, id: NodeId) -> &Node {
        &self.nodes[&id]
    }
    fn node_mut(&mut self, id: NodeId) -> &mut Node {
        self.nodes.get_mut(&id).expect("node exists")
    }
    pub(crate) fn role(&self, id: NodeId) -> Role {
        self.raft(id).role()
    }
    pub(crate) fn term(&self, id: NodeId) -> Term {
        self.raft(id).term()
    }
    pub(crate) fn commit(&self, id: NodeId) -> Index {
        self.raft(id).commit_index()
    }
    /// The terms of the entries in `id`'s in-memory log, from its first index.
    pub(crate) fn log_terms(&self, id: NodeId) -> Vec<Term> {
        let r = self.raft(id);
        (r.first_index()..=r.last_index())
            .filter_map(|i| r.entry_term(i))
            .collect()
    }
    /// The single leader among running nodes, if exactly one claims the highest term.
    pub(crate) fn leader(&self) -> Option<NodeId> {
        let leaders: Vec<(Term, NodeId)> = self
            .nodes
            .iter()
            .filter_map(|(&id, n)| {
                n.raft
                    .as_ref()
                    .filter(|r| r.role() == Role::Leader)
                    .map(|r| (r.term(), id))
            })
            .collect();
        leaders.iter().max().map(|&(_, id)| id)
    }

    // ------------------------------------------------------------ inputs

    /// Ticks `id` `n` times, handling its Ready after each tick (messages go into the
    /// network; nothing is delivered).
    pub(crate) fn tick(&mut self, id: NodeId, n: u32) {
        for _ in 0..n {
            self.raft_mut(id).tick();
            self.handle_ready(id);
        }
    }

    /// Ticks every running node once per round and stabilizes after each round.
    pub(crate) fn tick_all(&mut self, rounds: u32) {
        for _ in 0..rounds {
            let ids: Vec<NodeId> = self.running();
            for id in ids {
                self.raft_mut(id).tick();
            }
            self.stabilize();
        }
    }

    /// One heartbeat round of leader `id`: it ticks once and the cluster stabilizes. Followers
    /// learn the latest commit index from heartbeats (the core sends nothing extra when the
    /// commit index moves), and paused probes are retried.
    pub(crate) fn heartbeat(&mut self, id: NodeId) {
        self.tick(id, 1);
        self.stabilize();
    }

    /// Ticks `id` until it starts a (pre-)campaign, then stabilizes; returns whether it won.
    pub(crate) fn elect(&mut self, id: NodeId) -> bool {
        self.campaign(id);
        self.stabilize();
        self.role(id) == Role::Leader
    }

    /// Ticks `id` until it leaves the follower role; panics if it never does.
    pub(crate) fn campaign(&mut self, id: NodeId) {
        for _ in 0..1000 {
            self.raft_mut(id).tick();
            self.handle_ready(id);
            if self.role(id) != Role::Follower {
                return;
            }
        }
        panic!("node {id} never campaigned");
    }

    pub(crate) fn propose(
        &mut self,
        id: NodeId,
        data: &str,
    ) -> Result<(Index, Term), ProposeError> {
        self.raft_mut(id).propose(command(data), 0)
    }

    pub(crate) fn propose_config(
        &mut self,
        id: NodeId,
        voters: &[NodeId],
        learners: &[NodeId],
    ) -> Result<(Index, Term), ProposeError> {
        let config = ClusterConfig {
            voters: voters.iter().copied().collect(),
            learners: learners.iter().copied().collect(),
            addresses: BTreeMap::new(),
        };
        self.raft_mut(id).propose(Record::Config(config), 0)
    }

    pub(crate) fn read_index(
        &mut self,
        id: NodeId,
        ctx: u64,
        mode: ReadMode,
    ) -> Result<(), keel_raft::ReadError> {
        self.raft_mut(id).read_index(ctx, mode)
    }

    /// Snapshots `id`'s state machine at `index` and compacts its log.
    pub(crate) fn compact(
        &mut self,
        id: NodeId,
        index: Index,
    ) -> Result<(), keel_raft::CompactError> {
        self.raft_mut(id).compact(index)?;
        // A real driver persists its snapshot too; the harness keeps the disk in step.
        let r = self.raft(id);
        let meta = SnapshotMeta {
            index,
            term: r.entry_term(index).expect("compacted index is known"),
            config: self.disk_config_at(id, index),
        };
        let node = self.node_mut(id);
        node.disk.entries.retain(|e| e.index > index);
        node.disk.snapshot = meta;
        Ok(())
    }

    fn disk_config_at(&self, id: NodeId, index: Index) -> ClusterConfig {
        let disk = &self.node(id).disk;
        disk.entries
            .iter()
            .rev()
            .filter(|e| e.index <= index)
            .find_map(|e| match &e.record {
                Record::Config(c) => Some(c.clone()),
                _ => None,
            })
            .unwrap_or_else(|| disk.snapshot.config.clone())
    }

    /// Puts a message into the network as if a peer had sent it.
    pub(crate) fn send(&mut self, m: Message) {
        self.in_flight.push_back(m);
    }

    /// Steps `m` straight into its receiver (no network faults), runs the receiver's Ready,
    /// and returns what the receiver sent (taken out of the network).
    pub(crate) fn exchange(&mut self, m: Message) -> Vec<Message> {
        let to = m.to;
        self.delivered.push(m.clone());
        self.raft_mut(to).step(m).expect("message accepted");
        self.handle_ready(to);
        let (out, keep): (Vec<Message>, Vec<Message>) =
            self.in_flight.drain(..).partition(|m| m.from == to);
        self.in_flight = keep.into();
        out
    }

    /// Removes and returns every message in the network, undelivered.
    pub(crate) fn take_in_flight(&mut self) -> Vec<Message> {
        self.in_flight.drain(..).collect()
    }

    pub(crate) fn in_flight(&self) -> impl Iterator<Item = &Message> {
        self.in_flight.iter()
    }

    // ------------------------------------------------------------ faults

    /// Cuts `id` off: messages to or from it are dropped until `heal`.
    pub(crate) fn isolate(&mut self, id: NodeId) {
        self.isolated.insert(id);
    }
    /// Restores every link and removes every drop rule. Messages sent across the partition
    /// while it stood are lost, not delivered late.
    pub(crate) fn heal(&mut self) {
        let in_flight: Vec<Message> = self.in_flight.drain(..).collect();
        for m in in_flight {
            if self.dropped(&m) {
                self.trace.push(format!("  drop: {m}"));
            } else {
                self.in_flight.push_back(m);
            }
        }
        self.isolated.clear();
        self.drop_rules.clear();
    }
    /// Drops every message matching `rule` until `heal`.
    pub(crate) fn drop_if(&mut self, rule: impl Fn(&Message) -> bool + 'static) {
        self.drop_rules.push(Box::new(rule));
    }
    /// `id`'s disk becomes slow: its writes (and the messages and `persisted` calls that wait
    /// for them) are held until `release_writes`.
    pub(crate) fn hold_writes(&mut self, id: NodeId) {
        self.node_mut(id).hold_writes = true;
    }
    pub(crate) fn release_writes(&mut self, id: NodeId) {
        self.node_mut(id).hold_writes = false;
        while let Some(w) = self.node_mut(id).pending_writes.pop_front() {
            self.complete_write(id, w);
        }
    }
    /// Stops `id`, losing its unwritten state (a slow disk comes back normal); messages to it
    /// are dropped while it is down.
    pub(crate) fn crash(&mut self, id: NodeId) {
        self.trace.push(format!("> {id} crashes"));
        let node = self.node_mut(id);
        node.raft = None;
        node.pending_writes.clear();
        node.hold_writes = false;
    }
    /// Crashes `id` (if running) and starts it again from its disk.
    pub(crate) fn restart(&mut self, id: NodeId) {
        self.crash(id);
        self.trace.push(format!("> {id} restarts"));
        self.node_mut(id).boot();
    }

    // ------------------------------------------------------------ the driver

    fn running(&self) -> Vec<NodeId> {
        self.nodes
            .iter()
            .filter(|(_, n)| n.raft.is_some())
            .map(|(&id, _)| id)
            .collect()
    }

    fn dropped(&self, m: &Message) -> bool {
        self.isolated.contains(&m.from)
            || self.isolated.contains(&m.to)
            || self.drop_rules.iter().any(|rule| rule(m))
            || self.nodes.get(&m.to).is_none_or(|n| n.raft.is_none())
    }

    /// Runs one Ready of `id` through the handshake. Returns whether there was one.
    pub(crate) fn handle_ready(&mut self, id: NodeId) -> bool {
        let Some(raft) = self.nodes.get_mut(&id).and_then(|n| n.raft.as_mut()) else {
            return false;
        };
        if !raft.has_ready() {
            return false;
        }
        let rd = raft.ready();
        self.trace.push(format!("> {id} handling Ready"));
        for e in &rd.events {
            self.trace.push(format!("  event: {}", fmt_event(e)));
        }
        // 1. Send at once (the leader's appends overlap its own write, §10.2.1).
        for m in &rd.messages {
            self.trace.push(format!("  send: {m}"));
        }
        self.in_flight.extend(rd.messages.iter().cloned());
        let persist_point = rd.persist_point();
        let write = Write {
            hard_state: rd.hard_state,
            snapshot: rd.snapshot,
            entries: rd.entries,
            persisted_messages: rd.persisted_messages,
            persist_point,
        };
        let node = self.node_mut(id);
        node.read_states.extend(rd.read_states.iter().cloned());
        node.events.extend(rd.events);
        if node.hold_writes {
            node.pending_writes.push_back(write);
        } else {
            // 2-3. Write, then send what promised the write, then report it durable.
            self.complete_write(id, write);
        }
        // 4. Apply, then report applied.
        let node = self.node_mut(id);
        let last_applied = rd.committed_entries.last().map(|e| e.index);
        node.applied.extend(rd.committed_entries.iter().cloned());
        if let Some(i) = last_applied {
            node.raft.as_mut().expect("running").applied(i);
        }
        for e in &rd.committed_entries {
            self.trace.push(format!("  apply: {}", fmt_entry(e)));
        }
        for r in &rd.read_states {
            match r.index {
                Some(i) => self.trace.push(format!("  read: ctx={} index={i}", r.ctx)),
                None => self.trace.push(format!("  read: ctx={} failed", r.ctx)),
            }
        }
        true
    }

    fn complete_write(&mut self, id: NodeId, w: Write) {
        let node = self.node_mut(id);
        let mut lines = Vec::new();
        if let Some(hs) = w.hard_state {
            node.disk.hard_state = hs;
            lines.push(format!(
                "  write: term={} vote={}",
                hs.term,
                hs.vote.map_or("-".to_string(), |v| v.to_string())
            ));
        }
        if let Some(snap) = w.snapshot {
            // The core dropped its whole log for the snapshot (§7); the disk does the same,
            // and the state machine restarts from the image.
            lines.push(format!("  write: snapshot {}/{}", snap.index, snap.term));
            node.disk.entries.clear();
            node.disk.snapshot = snap;
            node.applied.clear();
        }
        if let Some(first) = w.entries.first() {
            node.disk.entries.retain(|e| e.index < first.index);
            lines.push(format!("  write: {}", fmt_entries(&w.entries)));
            node.disk.entries.extend(w.entries);
        }
        for m in &w.persisted_messages {
            lines.push(format!("  send: {m}"));
        }
        self.trace.extend(lines);
        self.in_flight.extend(w.persisted_messages);
        if let (Some((index, term)), Some(raft)) =
            (w.persist_point, self.node_mut(id).raft.as_mut())
        {
            raft.persisted(index, term);
        }
    }

    /// Handles every node's Ready until none has one.
    pub(crate) fn handle_readies(&mut self) {
        loop {
            let mut any = false;
            for id in self.running() {
                any |= self.handle_ready(id);
            }
            if !any {
                return;
            }
        }
    }

    /// Delivers every message now in the network (to `only`, if given); returns how many
    /// arrived. Messages sent while delivering wait for the next call.
    pub(crate) fn deliver(&mut self, only: Option<NodeId>) -> usize {
        let batch: Vec<Message> = self.in_flight.drain(..).collect();
        let mut arrived = 0;
        let mut by_receiver: BTreeMap<NodeId, Vec<Message>> = BTreeMap::new();
        for m in batch {
            if only.is_some_and(|to| to != m.to) {
                self.in_flight.push_back(m);
                continue;
            }
            if self.dropped(&m) {
                self.trace.push(format!("  drop: {m}"));
                continue;
            }
            by_receiver.entry(m.to).or_default().push(m);
        }
        for (to, msgs) in by_receiver {
            self.trace.push(format!("> {to} receiving messages"));
            for m in msgs {
                self.trace.push(format!("  {m}"));
                self.delivered.push(m.clone());
                arrived += 1;
                if let Err(e) = self.raft_mut(to).step(m) {
                    self.trace.push(format!("  refused: {e}"));
                }
            }
        }
        arrived
    }

    /// How many messages are in the network.
    pub(crate) fn in_flight_len(&self) -> usize {
        self.in_flight.len()
    }

    /// Delivers only the `i`th message in the network (reordering), unless it is dropped.
    pub(crate) fn deliver_nth(&mut self, i: usize) {
        let Some(m) = self.in_flight.remove(i) else {
            return;
        };
        if self.dropped(&m) {
            return;
        }
        let to = m.to;
        self.delivered.push(m.clone());
        if let Err(e) = self.raft_mut(to).step(m) {
            self.trace.push(format!("  refused: {e}"));
        }
    }

    /// Loses the `i`th message in the network.
    pub(crate) fn drop_nth(&mut self, i: usize) {
        self.in_flight.remove(i);
    }

    /// Sends the `i`th message in the network a second time.
    pub(crate) fn duplicate_nth(&mut self, i: usize) {
        if let Some(m) = self.in_flight.get(i).cloned() {
            self.in_flight.push_back(m);
        }
    }

    /// Handles Readies and delivers messages until the cluster is quiet.
    pub(crate) fn stabilize(&mut self) {
        for _ in 0..10_000 {
            self.handle_readies();
            if self.in_flight.is_empty() {
                return;
            }
            assert!(
                self.in_flight.len() < 100_000,
                "message storm: the cluster never quiets"
            );
            self.deliver(None);
        }
        panic!("cluster did not stabilize");
    }

    /// The trace since the last call.
    pub(crate) fn take_trace(&mut self) -> Vec<String> {
        std::mem::take(&mut self.trace)
    }
}

// ---------------------------------------------------------------- formatting

pub(crate) fn fmt_ids(ids: &BTreeSet<NodeId>) -> String {
    let v: Vec<String> = ids.iter().map(|i| i.to_string()).collect();
    format!("({})", v.join(","))
}

pub(crate) fn fmt_record(r: &Record) -> String {
    match r {
        Record::Noop => "noop".into(),
        Record::Command(c) => match &c.payload {
            Payload::Inline(b) => format!("cmd {:?}", String::from_utf8_lossy(b)),
            Payload::Ref { len, .. } => format!("cmd ref len={len}"),
            Payload::Attached { attachments, .. } => {
                format!("cmd attaching {}", attachments.len())
            }
        },
        Record::Config(c) => format!(
            "config voters={} learners={}",
            fmt_ids(&c.voters),
            fmt_ids(&c.learners)
        ),
        Record::Deploy(d) => format!("deploy {}@{}", d.plugin, d.version),
        Record::Batch(cs) => format!("batch of {}", cs.len()),
        Record::OpenSession => "open session".into(),
        Record::ExpireSessions { before_ms } => format!("expire sessions before {before_ms}"),
        Record::Undeploy { plugin } => format!("undeploy {plugin}"),
        Record::DropState { plugin } => format!("drop-state {plugin}"),
    }
}

pub(crate) fn fmt_entry(e: &Entry) -> String {
    format!("{}/{} {}", e.index, e.term, fmt_record(&e.record))
}

fn fmt_entries(es: &[Entry]) -> String {
    match (es.first(), es.last()) {
        (Some(a), Some(b)) if es.len() > 1 => {
            format!("entries {}/{}..={}/{}", a.index, a.term, b.index, b.term)
        }
        (Some(a), _) => format!("entry {}", fmt_entry(a)),
        _ => String::new(),
    }
}

pub(crate) fn fmt_event(e: &Event) -> String {
    match e {
        Event::State { role, term, leader } => format!(
            "{role:?} term={term} leader={}",
            leader.map_or("-".to_string(), |l| l.to_string())
        ),
        Event::Config { index, config } => format!(
            "config@{index} voters={} learners={}",
            fmt_ids(&config.voters),
            fmt_ids(&config.learners)
        ),
    }
}
