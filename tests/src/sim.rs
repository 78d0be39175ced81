//! The deterministic simulator: N real cores over simulated disks and a simulated network,
//! a virtual clock, seeded faults, and clients whose history is checked for
//! linearizability. Raft's safety properties (§5.2 Figure 3) are checked after every step.

use std::cmp::Reverse;
use std::collections::{BTreeMap, BTreeSet, BinaryHeap, VecDeque};
use std::fmt::Write as _;

use keel_raft::testkit::{Bug, Bugs};
use keel_raft::{
    ClientSerial, ClusterConfig, ClusterId, Command, Config, Entry, Event, HardState, Index,
    InitialState, Message, NodeId, Payload, ProposeError, Raft, ReadMode, Ready, Record, Role,
    Snapshot, Term,
};
use rand_chacha::ChaCha8Rng;
use rand_core::{RngCore, SeedableRng};

use crate::invariants::{Invariants, Violation};
use crate::kv::{KvState, Op, OpResult, WriteCommand};
use crate::linearizability::{self, Call, Verdict};

/// Virtual milliseconds.
pub type Time = u64;

/// Nominal tick; each node's clock runs at its own rate within ±`TICK_DRIFT_MS` of it (10%,
/// inside the 25% clock-rate margin the leader lease allows: docs/raft.md).
const TICK_MS: Time = 10;
const TICK_DRIFT_MS: Time = 1;
const CLUSTER: ClusterId = ClusterId(0x6b65_656c_5f73_696d);

/// What a run does.
#[derive(Clone, Debug)]
pub struct SimConfig {
    /// The seed: the whole run is a function of it.
    pub seed: u64,
    /// Cluster size.
    pub nodes: usize,
    /// Concurrent clients.
    pub clients: usize,
    /// Operations per client.
    pub ops_per_client: usize,
    /// Read-only clients, with three times as many operations each: reads are cheap (never
    /// in the log) and are what a stale leader can get wrong.
    pub readers: usize,
    /// Faults are injected until this virtual time; then the network heals, crashed nodes
    /// restart, and every pending operation must complete within `liveness_ms`.
    pub fault_ms: Time,
    /// Bound on the quiet phase (liveness).
    pub liveness_ms: Time,
    /// Message drop probability while faults are on.
    pub drop: f64,
    /// Message duplication probability while faults are on.
    pub duplicate: f64,
    /// Crash and restart nodes.
    pub crashes: bool,
    /// Partition the network.
    pub partitions: bool,
    /// Pause messages matching a pattern, release them later.
    pub pauses: bool,
    /// Network partitions only, the leader most often (the Jepsen-style run that found
    /// stale lease reads): no crashes, stalls, drops or membership changes to keep the
    /// cluster from serving, so stale leaders meet busy clients.
    pub partitions_only: bool,
    /// PreVote on the cores.
    pub pre_vote: bool,
    /// CheckQuorum on the cores.
    pub check_quorum: bool,
    /// Share of reads that use the leader lease (thesis §6.4.1); the rest use ReadIndex.
    /// Reads go to any node; followers forward ReadIndex reads and redirect lease reads.
    pub lease_reads: f64,
    /// Take a snapshot every this many applied entries.
    pub snapshot_every: u64,
    /// Entries per append message (1 lets old-term entries travel without the no-op).
    pub max_entries_per_message: usize,
    /// Appends in flight per follower.
    pub max_inflight: usize,
    /// Upper bound of one fsync's latency (ms): slow disks widen crash windows.
    pub fsync_max_ms: Time,
    /// Mean gap between injected faults (ms); small values make fault storms.
    pub fault_gap_ms: Time,
    /// Deliberately broken core, for proving the checks have teeth.
    pub bug: Option<Bug>,
    /// Print the transcript as it happens.
    pub trace: bool,
}

impl SimConfig {
    /// All faults on, sizes drawn from the seed.
    pub fn mixed(seed: u64, nodes: usize) -> Self {
        let mut r = ChaCha8Rng::seed_from_u64(seed ^ 0x5eed);
        let mut cfg = SimConfig {
            seed,
            nodes,
            clients: 3 + (r.next_u32() % 3) as usize,
            ops_per_client: 20 + (r.next_u32() % 20) as usize,
            readers: 2,
            fault_ms: 1_500 + (r.next_u32() % 2_000) as u64,
            liveness_ms: 30_000,
            drop: [0.0, 0.02, 0.1][(r.next_u32() % 3) as usize],
            duplicate: [0.0, 0.02, 0.05][(r.next_u32() % 3) as usize],
            crashes: true,
            partitions: true,
            pauses: true,
            partitions_only: false,
            pre_vote: true,
            check_quorum: true,
            lease_reads: [0.0, 0.5, 0.9][(r.next_u32() % 3) as usize],
            snapshot_every: [5, 20, 1_000][(r.next_u32() % 3) as usize],
            max_entries_per_message: [1, 4, 16][(r.next_u32() % 3) as usize],
            max_inflight: [1, 8][(r.next_u32() % 2) as usize],
            fsync_max_ms: [3, 30][(r.next_u32() % 2) as usize],
            fault_gap_ms: [250, 250, 60][(r.next_u32() % 3) as usize],
            bug: None,
            trace: false,
        };
        if r.next_u32() % 4 == 0 {
            cfg.partitions_only = true;
            cfg.crashes = false;
            cfg.pauses = false;
            cfg.drop = 0.0;
            cfg.duplicate = 0.0;
            cfg.fault_gap_ms = 250;
        }
        cfg
    }
}

/// The outcome of one run.
#[derive(Debug)]
pub struct Outcome {
    /// Events processed.
    pub steps: u64,
    /// The first violation, if any.
    pub violation: Option<Violation>,
    /// The transcript (last lines, or all with `trace`).
    pub transcript: Vec<String>,
    /// Operations completed.
    pub completed_ops: usize,
}

#[derive(Debug)]
enum Ev {
    Deliver(Message),
    Tick(NodeId),
    Fsync(NodeId),
    ClientSend(usize),
    ClientTimeout(usize, u64),
    Reply(usize, u64, Reply),
    Fault,
    Heal,
    Restart(NodeId),
    Crash(NodeId),
    Release,
    /// A frozen node (GC pause, a stuck driver thread) runs again.
    Thaw(NodeId),
}

#[derive(Debug, Clone)]
enum Reply {
    Done(OpResult),
    Redirect(Option<NodeId>),
    Retry,
}

/// One pending disk write, per the Ready handshake.
#[derive(Debug, Default)]
struct Write {
    hard_state: Option<HardState>,
    snapshot: Option<Snapshot>,
    entries: Vec<Entry>,
    then_send: Vec<Message>,
    point: Option<(Index, Term)>,
}

/// What survives a crash.
#[derive(Debug, Clone, Default)]
struct Disk {
    hard_state: HardState,
    snapshot: Snapshot,
    entries: Vec<Entry>,
    state: KvState,
    applied: Index,
}

struct Node {
    raft: Option<Raft>,
    disk: Disk,
    queue: VecDeque<Write>,
    fsync_scheduled: bool,
    /// A stalled disk completes no fsync before this time.
    stalled_until: Time,
    restarts: u64,
    /// This node's tick period: its clock's rate.
    tick_ms: Time,
    /// While frozen the node processes nothing; its clock runs on, and it catches up the
    /// ticks it missed when it thaws, before anything else (as the real driver does).
    frozen_until: Time,
    /// Set from the freeze until its Thaw event has run (not merely until `frozen_until`:
    /// an event at the same instant must not reach the node before its missed ticks).
    frozen: bool,
    missed_ticks: u32,
    /// Ticks this node has made as leader of its current term (CheckQuorum checks come every
    /// `election_ticks` of them).
    leader_ticks: u32,
    /// index → (client, op id, term) of proposals made here.
    proposals: BTreeMap<Index, (usize, u64, Term)>,
    /// read ctx → (client, op id, key)
    reads: BTreeMap<u64, (usize, u64, Op)>,
    /// Reads confirmed at an index this node has not applied yet.
    reads_waiting: Vec<(Index, usize, u64, Op)>,
}

struct Client {
    ops: Vec<Op>,
    next: usize,
    serial: u64,
    target: NodeId,
    /// (op id, invoke time) of the operation in flight.
    in_flight: Option<(u64, Time)>,
    attempt: u64,
}

/// A simulation.
pub struct Sim {
    cfg: SimConfig,
    rng: ChaCha8Rng,
    now: Time,
    seq: u64,
    queue: BinaryHeap<Reverse<(Time, u64)>>,
    events: std::collections::HashMap<u64, Ev>,
    nodes: BTreeMap<NodeId, Node>,
    /// Partition groups: nodes in different groups cannot talk. Empty = healed.
    groups: BTreeMap<NodeId, u32>,
    /// Single links cut (both directions), on top of the groups: connectivity that is not
    /// transitive (a and b both reach c but not each other).
    cut_links: BTreeSet<(NodeId, NodeId)>,
    /// Isolate this leader two ticks after its next CheckQuorum check: it then keeps its
    /// role for almost two election timeouts while the others elect a new leader, the
    /// longest window an isolated leader has (thesis §6.4.1: its lease must end first).
    isolate_after_check: Option<NodeId>,
    paused: Vec<(Time, Message)>,
    pause_pattern: Option<(Option<NodeId>, Option<NodeId>, &'static str)>,
    faults_on: bool,
    clients: Vec<Client>,
    history: Vec<Call>,
    next_ctx: u64,
    inv: Invariants,
    transcript: VecDeque<String>,
    steps: u64,
    violation: Option<Violation>,
}

impl Sim {
    /// Builds a cluster of fresh nodes and clients.
    pub fn new(cfg: SimConfig) -> Sim {
        let mut rng = ChaCha8Rng::seed_from_u64(cfg.seed);
        let ids: Vec<NodeId> = (1..=cfg.nodes as NodeId).collect();
        let mut nodes = BTreeMap::new();
        let bootstrap = InitialState::bootstrap(ClusterConfig::with_voters(ids.iter().copied()));
        for &id in &ids {
            let tick_ms = TICK_MS - TICK_DRIFT_MS + rng.next_u64() % (2 * TICK_DRIFT_MS + 1);
            nodes.insert(
                id,
                Node {
                    raft: None,
                    disk: Disk {
                        snapshot: bootstrap.snapshot.clone(),
                        ..Disk::default()
                    },
                    queue: VecDeque::new(),
                    fsync_scheduled: false,
                    stalled_until: 0,
                    restarts: 0,
                    tick_ms,
                    frozen_until: 0,
                    frozen: false,
                    missed_ticks: 0,
                    leader_ticks: 0,
                    proposals: BTreeMap::new(),
                    reads: BTreeMap::new(),
                    reads_waiting: Vec::new(),
                },
            );
        }
        let mut value = 0;
        let clients = (0..cfg.clients + cfg.readers)
            .map(|c| {
                let reader = c >= cfg.clients;
                let count = if reader {
                    3 * cfg.ops_per_client
                } else {
                    cfg.ops_per_client
                };
                let ops = (0..count)
                    .map(|_| {
                        value += 1;
                        let key = (rng.next_u32() % 3) as u8;
                        let v = (c as u64 + 1) * 1_000_000 + value;
                        let pick = if reader { 5 } else { rng.next_u32() % 10 };
                        match pick {
                            0..=3 => Op::Put { key, value: v },
                            4..=6 => Op::Get { key },
                            _ => Op::Cas {
                                key,
                                // Expect a recent value sometimes, nothing sometimes.
                                expect: if value > 1 && rng.next_u32() % 2 == 0 {
                                    Some(v - 1)
                                } else {
                                    None
                                },
                                value: v,
                            },
                        }
                    })
                    .collect();
                Client {
                    ops,
                    next: 0,
                    serial: 0,
                    target: ids[(rng.next_u32() as usize) % ids.len()],
                    in_flight: None,
                    attempt: 0,
                }
            })
            .collect();
        let mut sim = Sim {
            rng,
            now: 0,
            seq: 0,
            queue: BinaryHeap::new(),
            events: std::collections::HashMap::new(),
            nodes,
            groups: BTreeMap::new(),
            cut_links: BTreeSet::new(),
            isolate_after_check: None,
            paused: Vec::new(),
            pause_pattern: None,
            faults_on: true,
            clients,
            history: Vec::new(),
            next_ctx: 1,
            inv: Invariants::default(),
            transcript: VecDeque::new(),
            steps: 0,
            violation: None,
            cfg,
        };
        for id in ids {
            sim.start_node(id);
            let offset = sim.rand(TICK_MS);
            sim.schedule(offset, Ev::Tick(id));
        }
        for c in 0..sim.clients.len() {
            let at = 50 + sim.rand(200);
            sim.schedule(at, Ev::ClientSend(c));
        }
        let first_fault = 100 + sim.rand(300);
        sim.schedule(first_fault, Ev::Fault);
        let heal_at = sim.cfg.fault_ms;
        sim.schedule(heal_at, Ev::Heal);
        sim
    }

    /// Runs to the end and checks everything.
    pub fn run(mut self) -> Outcome {
        let deadline = self.cfg.fault_ms + self.cfg.liveness_ms;
        while self.violation.is_none() {
            let Some(Reverse((at, seq))) = self.queue.pop() else {
                break;
            };
            if at > deadline {
                break;
            }
            self.now = at;
            let Some(ev) = self.events.remove(&seq) else {
                continue;
            };
            self.steps += 1;
            self.handle(ev);
            if self.violation.is_none() {
                self.check_step();
            }
            if !self.faults_on && self.clients_done() && self.converged() {
                break;
            }
        }
        if self.violation.is_none() {
            self.final_checks();
        }
        Outcome {
            steps: self.steps,
            violation: self.violation,
            transcript: self.transcript.into_iter().collect(),
            completed_ops: self.history.iter().filter(|c| c.result.is_some()).count(),
        }
    }

    // ------------------------------------------------------------------ plumbing

    fn rand(&mut self, n: u64) -> u64 {
        if n == 0 { 0 } else { self.rng.next_u64() % n }
    }

    fn chance(&mut self, p: f64) -> bool {
        p > 0.0 && (self.rng.next_u64() as f64 / u64::MAX as f64) < p
    }

    fn schedule(&mut self, after: Time, ev: Ev) {
        self.seq += 1;
        self.events.insert(self.seq, ev);
        self.queue.push(Reverse((self.now + after, self.seq)));
    }

    fn trace(&mut self, line: impl FnOnce() -> String) {
        let line = format!("t={:>6} {}", self.now, line());
        if self.cfg.trace {
            println!("{line}");
        }
        self.transcript.push_back(line);
        if !self.cfg.trace && self.transcript.len() > 400 {
            self.transcript.pop_front();
        }
    }

    fn fail(&mut self, v: Violation) {
        if self.violation.is_none() {
            let text = v.to_string();
            self.trace(|| format!("VIOLATION {text}"));
            self.violation = Some(v);
        }
    }

    fn core_config(&self, id: NodeId, restarts: u64) -> Config {
        let mut c = Config::new(id, CLUSTER);
        c.seed = self
            .cfg
            .seed
            .wrapping_mul(31)
            .wrapping_add(id * 7919 + restarts * 104_729);
        c.election_ticks = 10;
        c.heartbeat_ticks = 2;
        c.pre_vote = self.cfg.pre_vote;
        c.check_quorum = self.cfg.check_quorum;
        c.max_inflight = self.cfg.max_inflight;
        c.max_entries_per_message = self.cfg.max_entries_per_message;
        c.bugs = Bugs(self.cfg.bug.into_iter().collect());
        c
    }

    fn start_node(&mut self, id: NodeId) {
        let (restarts, disk) = {
            let n = &self.nodes[&id];
            (n.restarts, n.disk.clone())
        };
        let cfg = self.core_config(id, restarts);
        let init = InitialState {
            hard_state: disk.hard_state,
            snapshot: disk.snapshot.clone(),
            entries: disk.entries.clone(),
            applied: disk.applied,
        };
        match Raft::new(cfg, init) {
            Ok(raft) => {
                self.inv
                    .node_restarted(id, &disk.snapshot, &disk.entries, disk.applied);
                if let Some(n) = self.nodes.get_mut(&id) {
                    n.raft = Some(raft);
                }
            }
            Err(e) => self.fail(Violation::Harness(format!("node {id} cannot start: {e}"))),
        }
    }

    fn count_leader_tick(&mut self, id: NodeId) {
        let Some(node) = self.nodes.get_mut(&id) else {
            return;
        };
        let leading = node.raft.as_ref().is_some_and(|r| r.role() == Role::Leader);
        node.leader_ticks = if leading { node.leader_ticks + 1 } else { 0 };
        let ticks = node.leader_ticks;
        if leading && self.isolate_after_check == Some(id) && ticks % 10 == 2 && self.faults_on {
            self.isolate_after_check = None;
            self.groups.clear();
            self.groups.insert(id, 1);
            self.trace(|| format!("isolate n{id} (leader, 2 ticks after its CheckQuorum check)"));
        }
    }

    fn frozen(&self, id: NodeId) -> bool {
        self.nodes.get(&id).is_some_and(|n| n.frozen)
    }

    /// Time until just after `id` thaws (its Thaw event runs first).
    fn thaw_delay(&self, id: NodeId) -> Time {
        self.nodes
            .get(&id)
            .map_or(0, |n| n.frozen_until.saturating_sub(self.now))
            + 1
    }

    fn up(&self, id: NodeId) -> bool {
        self.nodes.get(&id).is_some_and(|n| n.raft.is_some())
    }

    fn connected(&self, a: NodeId, b: NodeId) -> bool {
        self.groups.get(&a).copied().unwrap_or(0) == self.groups.get(&b).copied().unwrap_or(0)
            && !self.cut_links.contains(&(a.min(b), a.max(b)))
    }

    /// How long a crashed node stays down: half the time it comes straight back (a process
    /// supervisor), which is when what it promised before the crash matters most.
    fn downtime(&mut self) -> Time {
        if self.rand(2) == 0 {
            10 + self.rand(40)
        } else {
            50 + self.rand(600)
        }
    }

    // ------------------------------------------------------------------ events

    fn handle(&mut self, ev: Ev) {
        match ev {
            Ev::Tick(id) => {
                let period = self.nodes.get(&id).map_or(TICK_MS, |n| n.tick_ms);
                self.schedule(period, Ev::Tick(id));
                if self.frozen(id) {
                    if let Some(n) = self.nodes.get_mut(&id) {
                        n.missed_ticks += 1;
                    }
                } else if let Some(raft) = self.raft(id) {
                    raft.tick();
                    self.count_leader_tick(id);
                    self.drive(id);
                }
            }
            Ev::Deliver(m) if self.frozen(m.to) => {
                let after = self.thaw_delay(m.to);
                self.schedule(after, Ev::Deliver(m));
            }
            Ev::Fsync(id) if self.frozen(id) => {
                let after = self.thaw_delay(id);
                self.schedule(after, Ev::Fsync(id));
            }
            Ev::Deliver(m) => self.deliver(m),
            Ev::Fsync(id) => self.fsync(id),
            Ev::Thaw(id) => {
                let missed = self.nodes.get_mut(&id).map_or(0, |n| {
                    n.frozen = false;
                    std::mem::take(&mut n.missed_ticks)
                });
                self.trace(|| format!("n{id} thaws, {missed} ticks late"));
                for _ in 0..missed {
                    if let Some(raft) = self.raft(id) {
                        raft.tick();
                        self.count_leader_tick(id);
                    }
                }
                self.drive(id);
            }
            Ev::ClientSend(c) => self.client_send(c),
            Ev::ClientTimeout(c, attempt) => {
                if self.clients[c].attempt == attempt && self.clients[c].in_flight.is_some() {
                    self.trace(|| format!("client{c} timeout"));
                    let n = self.cfg.nodes as u64;
                    self.clients[c].target = 1 + self.rand(n);
                    self.client_send(c);
                }
            }
            Ev::Reply(c, attempt, reply) => self.client_reply(c, attempt, reply),
            Ev::Fault => {
                if self.faults_on {
                    self.inject_fault();
                    let gap = self.cfg.fault_gap_ms;
                    let next = gap / 5 + self.rand(gap * 8 / 5);
                    self.schedule(next, Ev::Fault);
                }
            }
            Ev::Heal => {
                self.faults_on = false;
                self.groups.clear();
                self.cut_links.clear();
                self.isolate_after_check = None;
                self.pause_pattern = None;
                self.trace(|| "heal: network whole, faults off".into());
                self.release_paused();
                let down: Vec<NodeId> = self
                    .nodes
                    .keys()
                    .copied()
                    .filter(|&id| !self.up(id))
                    .collect();
                for id in down {
                    self.schedule(1, Ev::Restart(id));
                }
            }
            Ev::Restart(id) => {
                if !self.up(id) {
                    self.trace(|| format!("n{id} restart"));
                    self.start_node(id);
                    self.drive(id);
                }
            }
            Ev::Crash(id) => {
                if self.faults_on && self.up(id) {
                    self.crash(id);
                    let back = self.downtime();
                    self.schedule(back, Ev::Restart(id));
                }
            }
            Ev::Release => self.release_paused(),
        }
    }

    fn raft(&mut self, id: NodeId) -> Option<&mut Raft> {
        self.nodes.get_mut(&id).and_then(|n| n.raft.as_mut())
    }

    fn send(&mut self, m: Message) {
        if !self.up(m.from) {
            return;
        }
        if self.faults_on {
            if !self.connected(m.from, m.to) || self.chance(self.cfg.drop) {
                return;
            }
            if let Some((from, to, kind)) = self.pause_pattern
                && from.is_none_or(|f| f == m.from)
                && to.is_none_or(|t| t == m.to)
                && m.body.kind() == kind
            {
                self.paused.push((self.now, m));
                return;
            }
            if self.chance(self.cfg.duplicate) {
                let later = 1 + self.rand(40);
                self.schedule(later, Ev::Deliver(m.clone()));
            }
        }
        // Mostly short delays; sometimes long ones, which reorder messages.
        let delay = if self.faults_on && self.chance(0.1) {
            5 + self.rand(60)
        } else {
            1 + self.rand(4)
        };
        self.schedule(delay, Ev::Deliver(m));
    }

    fn deliver(&mut self, m: Message) {
        if !self.up(m.to) || (self.faults_on && !self.connected(m.from, m.to)) {
            return;
        }
        let to = m.to;
        if self.cfg.trace {
            let line = m.to_string();
            self.trace(|| format!("deliver {line}"));
        }
        if let Some(raft) = self.raft(to)
            && let Err(e) = raft.step(m)
        {
            let e = e.to_string();
            self.fail(Violation::Harness(format!("step refused: {e}")));
        }
        self.drive(to);
    }

    /// Runs the Ready handshake until the node has nothing more to do.
    fn drive(&mut self, id: NodeId) {
        loop {
            let Some(raft) = self.raft(id) else { return };
            if !raft.has_ready() {
                return;
            }
            let rd = raft.ready();
            self.handle_ready(id, rd);
            if self.violation.is_some() {
                return;
            }
        }
    }

    fn handle_ready(&mut self, id: NodeId, rd: Ready) {
        let (role, term) = match self.nodes[&id].raft.as_ref() {
            Some(r) => (r.role(), r.term()),
            None => return,
        };
        for ev in &rd.events {
            match ev {
                Event::State { role, term, leader } => {
                    let (role, term, leader) = (*role, *term, *leader);
                    self.trace(|| format!("n{id} {role:?} term={term} leader={leader:?}"));
                }
                Event::Config { index, config } => {
                    let voters = config.voters.clone();
                    let index = *index;
                    self.trace(|| format!("n{id} config@{index} voters={voters:?}"));
                }
            }
        }
        let point = rd.persist_point();
        // 1. Send at once.
        for m in rd.messages {
            self.send(m);
        }
        // Log Matching and Leader Append-Only are checked on what the node writes.
        if let Err(v) = self
            .inv
            .on_write(id, role, term, rd.snapshot.as_ref(), &rd.entries)
        {
            self.fail(v);
            return;
        }
        // 2. Queue the write; it becomes durable at the next fsync.
        let write = Write {
            hard_state: rd.hard_state,
            snapshot: rd.snapshot,
            entries: rd.entries,
            then_send: rd.persisted_messages,
            point,
        };
        let empty =
            write.hard_state.is_none() && write.snapshot.is_none() && write.entries.is_empty();
        let Some(node) = self.nodes.get_mut(&id) else {
            return;
        };
        if empty && node.queue.is_empty() {
            for m in write.then_send {
                self.send(m);
            }
        } else {
            node.queue.push_back(write);
            if !node.fsync_scheduled {
                node.fsync_scheduled = true;
                let stall = node.stalled_until.saturating_sub(self.now);
                let d = stall.max(1 + self.rand(self.cfg.fsync_max_ms));
                self.schedule(d, Ev::Fsync(id));
            }
        }
        // 4. Apply.
        for e in rd.committed_entries {
            self.apply(id, e);
            if self.violation.is_some() {
                return;
            }
        }
        for rs in rd.read_states {
            self.read_confirmed(id, rs.ctx, rs.index);
        }
        self.maybe_snapshot(id);
    }

    /// Group commit: everything queued becomes durable, in order.
    fn fsync(&mut self, id: NodeId) {
        let Some(node) = self.nodes.get_mut(&id) else {
            return;
        };
        node.fsync_scheduled = false;
        if node.raft.is_none() {
            return;
        }
        let writes: Vec<Write> = node.queue.drain(..).collect();
        let mut points = Vec::new();
        let mut sends = Vec::new();
        for w in writes {
            if let Some(hs) = w.hard_state {
                node.disk.hard_state = hs;
            }
            if let Some(snap) = w.snapshot {
                node.disk.state = KvState::decode(&snap.data).unwrap_or_default();
                node.disk.applied = snap.meta.index;
                node.disk.entries.clear();
                node.disk.snapshot = snap;
            }
            if let Some(first) = w.entries.first() {
                let keep = first
                    .index
                    .saturating_sub(node.disk.snapshot.meta.index + 1)
                    as usize;
                node.disk.entries.truncate(keep);
                node.disk.entries.extend(w.entries);
            }
            points.extend(w.point);
            sends.extend(w.then_send);
        }
        // 3. Only now: the messages that promise durability, and the persisted report.
        for m in sends {
            self.send(m);
        }
        if let Some(raft) = self.raft(id) {
            for (i, t) in points {
                raft.persisted(i, t);
            }
        }
        self.drive(id);
    }

    fn apply(&mut self, id: NodeId, e: Entry) {
        let mut term_bound = 0;
        let mut leaders = Vec::new();
        for (&nid, n) in &self.nodes {
            if let Some(r) = n.raft.as_ref() {
                term_bound = term_bound.max(r.term());
                if r.role() == Role::Leader {
                    leaders.push((nid, r.term()));
                }
            }
        }
        if let Err(v) = self.inv.on_apply(id, &e, term_bound, &leaders) {
            self.fail(v);
            return;
        }
        let Some(node) = self.nodes.get_mut(&id) else {
            return;
        };
        let mut answer = None;
        if let Record::Command(cmd) = &e.record {
            let op = match &cmd.payload {
                Payload::Inline(b) => postcard::from_bytes::<WriteCommand>(b).ok().map(|w| w.op),
                Payload::Ref { .. } => None,
            };
            if let Some(op) = op {
                let client = cmd.client.map(|c| (c.client_id, c.serial));
                let result = node.disk.state.apply(client, &op);
                answer = Some(result);
            }
        }
        node.disk.applied = e.index;
        if let Some(raft) = node.raft.as_mut() {
            raft.applied(e.index);
        }
        if let Some((c, op_id, term)) = node.proposals.remove(&e.index) {
            let reply = match answer {
                Some(r) if term == e.term => Reply::Done(r),
                _ => Reply::Retry, // overwritten by another leader's entry: retry, same serial
            };
            let d = 1 + self.rand(3);
            self.schedule(d, Ev::Reply(c, op_id, reply));
        }
        self.serve_waiting_reads(id);
    }

    fn maybe_snapshot(&mut self, id: NodeId) {
        let every = self.cfg.snapshot_every;
        let Some(node) = self.nodes.get_mut(&id) else {
            return;
        };
        let Some(raft) = node.raft.as_mut() else {
            return;
        };
        let applied = node.disk.applied;
        if applied >= node.disk.snapshot.meta.index + every && raft.commit_index() >= applied {
            let data = node.disk.state.encode();
            if raft.compact(applied, data.clone()).is_ok() {
                let term = raft.entry_term(applied).unwrap_or_default();
                let config = node.disk.snapshot.meta.config.clone();
                let keep_from = (applied - node.disk.snapshot.meta.index) as usize;
                let tail = node
                    .disk
                    .entries
                    .split_off(keep_from.min(node.disk.entries.len()));
                let (_, cfg_now) = latest_config(&node.disk.entries, config);
                node.disk.entries = tail;
                node.disk.snapshot = Snapshot {
                    meta: keel_raft::SnapshotMeta {
                        index: applied,
                        term,
                        config: cfg_now,
                    },
                    data,
                };
            }
        }
    }

    // ------------------------------------------------------------------ clients

    fn client_send(&mut self, c: usize) {
        if self.clients[c].next >= self.clients[c].ops.len() {
            return;
        }
        let op = self.clients[c].ops[self.clients[c].next];
        if self.clients[c].in_flight.is_none() {
            if matches!(op, Op::Get { .. }) {
                // Reads spread over the nodes (a load balancer's view): some reach a leader
                // that has been cut off and does not know it yet.
                let n = self.cfg.nodes as u64;
                self.clients[c].target = 1 + self.rand(n);
            }
            self.clients[c].serial += 1;
            let id = self.history.len() as u64;
            self.history.push(Call {
                op,
                invoke: self.now,
                complete: u64::MAX,
                result: None,
            });
            self.clients[c].in_flight = Some((id, self.now));
        }
        self.clients[c].attempt += 1;
        let attempt = self.clients[c].attempt;
        let target = self.clients[c].target;
        let patience = 150 + self.rand(350);
        self.schedule(patience, Ev::ClientTimeout(c, attempt));
        if !self.up(target) {
            return; // the request is lost; the timeout retries elsewhere
        }
        if self.frozen(target) {
            return; // a frozen node answers nothing; the timeout retries elsewhere
        }
        let serial = self.clients[c].serial;
        let now = self.now;
        let lease = matches!(op, Op::Get { .. }) && self.chance(self.cfg.lease_reads);
        let reply = match op {
            Op::Get { .. } => {
                let ctx = self.next_ctx;
                self.next_ctx += 1;
                let mode = if lease {
                    ReadMode::Lease
                } else {
                    ReadMode::ReadIndex
                };
                let Some(raft) = self.raft(target) else {
                    return;
                };
                match raft.read_index(ctx, mode) {
                    Ok(()) => {
                        if let Some(n) = self.nodes.get_mut(&target) {
                            n.reads.insert(ctx, (c, attempt, op));
                        }
                        None
                    }
                    Err(_) => Some(Reply::Redirect(raft.leader())),
                }
            }
            _ => {
                let payload = postcard::to_allocvec(&WriteCommand { op }).unwrap_or_default();
                let record = Record::Command(Command {
                    plugin: "kv".into(),
                    client: Some(ClientSerial {
                        client_id: c as u64 + 1,
                        serial,
                    }),
                    payload: Payload::Inline(payload),
                });
                let Some(raft) = self.raft(target) else {
                    return;
                };
                match raft.propose(record, now) {
                    Ok((index, term)) => {
                        if let Some(n) = self.nodes.get_mut(&target) {
                            n.proposals.insert(index, (c, attempt, term));
                        }
                        None
                    }
                    Err(ProposeError::NotLeader { leader }) => Some(Reply::Redirect(leader)),
                    Err(_) => Some(Reply::Retry),
                }
            }
        };
        let how = if lease { " lease" } else { "" };
        self.trace(|| format!("client{c} -> n{target} {op:?}{how} serial={serial}"));
        if let Some(r) = reply {
            let d = 1 + self.rand(3);
            self.schedule(d, Ev::Reply(c, attempt, r));
        }
        self.drive(target);
    }

    fn client_reply(&mut self, c: usize, attempt: u64, reply: Reply) {
        if self.clients[c].attempt != attempt {
            return; // an answer to an abandoned attempt
        }
        let Some((id, _)) = self.clients[c].in_flight else {
            return;
        };
        match reply {
            Reply::Done(result) => {
                let call = &mut self.history[id as usize];
                call.complete = self.now;
                call.result = Some(result);
                let op = call.op;
                self.trace(|| format!("client{c} done {op:?} -> {result:?}"));
                self.clients[c].in_flight = None;
                self.clients[c].next += 1;
                self.clients[c].attempt += 1;
                // A third of the operations start at a node picked at random (clients of a
                // real cluster spread over its nodes), so reads reach stale leaders too.
                if self.rand(3) == 0 {
                    let n = self.cfg.nodes as u64;
                    self.clients[c].target = 1 + self.rand(n);
                }
                // Think time spreads each client's operations over the whole fault phase;
                // back to back they would all be done before most faults happen.
                let ops = self.clients[c].ops.len().max(1) as u64;
                let d = self.rand(2 * self.cfg.fault_ms / ops);
                self.schedule(d, Ev::ClientSend(c));
            }
            Reply::Redirect(leader) => {
                let n = self.cfg.nodes as u64;
                self.clients[c].target = leader.unwrap_or_else(|| 1 + self.rng.next_u64() % n);
                let d = if leader.is_some() {
                    1
                } else {
                    20 + self.rand(30)
                };
                self.clients[c].attempt += 1;
                self.schedule(d, Ev::ClientSend(c));
            }
            Reply::Retry => {
                self.clients[c].attempt += 1;
                let d = 20 + self.rand(50);
                self.schedule(d, Ev::ClientSend(c));
            }
        }
    }

    fn read_confirmed(&mut self, id: NodeId, ctx: u64, index: Option<Index>) {
        let Some(node) = self.nodes.get_mut(&id) else {
            return;
        };
        let Some((c, attempt, op)) = node.reads.remove(&ctx) else {
            return;
        };
        match index {
            Some(i) => {
                node.reads_waiting.push((i, c, attempt, op));
                self.serve_waiting_reads(id);
            }
            None => {
                let d = 1 + self.rand(3);
                self.schedule(d, Ev::Reply(c, attempt, Reply::Retry));
            }
        }
    }

    fn serve_waiting_reads(&mut self, id: NodeId) {
        let Some(node) = self.nodes.get_mut(&id) else {
            return;
        };
        let applied = node.disk.applied;
        let (ready, waiting): (Vec<_>, Vec<_>) =
            node.reads_waiting.drain(..).partition(|r| r.0 <= applied);
        node.reads_waiting = waiting;
        let mut replies = Vec::new();
        for (_, c, attempt, op) in ready {
            let value = node.disk.state.map.get(&op.key()).copied();
            replies.push((c, attempt, Reply::Done(OpResult::Get(value))));
        }
        for (c, attempt, r) in replies {
            let d = 1 + self.rand(3);
            self.schedule(d, Ev::Reply(c, attempt, r));
        }
    }

    fn clients_done(&self) -> bool {
        self.clients.iter().all(|c| c.next >= c.ops.len())
    }

    // ------------------------------------------------------------------ faults

    fn inject_fault(&mut self) {
        let ids: Vec<NodeId> = self.nodes.keys().copied().collect();
        let n = ids.len() as u64;
        if self.cfg.partitions_only {
            match self.rand(4) {
                0 | 1 => {
                    if let Some(l) = self.some_leader() {
                        self.isolate_after_check = Some(l);
                    }
                }
                2 => {
                    let victim = ids[self.rand(n) as usize];
                    self.groups.clear();
                    self.groups.insert(victim, 1);
                    self.trace(|| format!("isolate n{victim}"));
                }
                _ => {
                    self.groups.clear();
                    self.trace(|| "heal partitions".into());
                }
            }
            return;
        }
        match self.rand(12) {
            11 if self.cfg.partitions => {
                // Cut one link, most often one of the leader's.
                let a = self.leader_or_random(n, &ids);
                let b = ids[self.rand(n) as usize];
                if a != b {
                    self.cut_links.insert((a.min(b), a.max(b)));
                    self.trace(|| format!("cut n{a} <-> n{b}"));
                }
            }
            10 => {
                // Single-server membership change (thesis §4.1): demote a voter to learner
                // or promote a learner back, through the leader.
                let leader = self.some_leader();
                let target = ids[self.rand(n) as usize];
                let now = self.now;
                if let Some(l) = leader {
                    let Some(raft) = self.raft(l) else { return };
                    let mut config = raft.config().clone();
                    if config.voters.contains(&target) {
                        if config.voters.len() <= 2 {
                            return;
                        }
                        config.voters.remove(&target);
                        config.learners.insert(target);
                    } else {
                        config.learners.remove(&target);
                        config.voters.insert(target);
                    }
                    let voters = config.voters.clone();
                    let result = raft.propose(Record::Config(config), now);
                    self.trace(|| format!("n{l} proposes voters={voters:?}: {result:?}"));
                    self.drive(l);
                }
            }
            9 => {
                // A disk stall (fsync hiccup), most often the leader's.
                let victim = self.leader_or_random(n, &ids);
                let until = self.now + 100 + self.rand(500);
                if let Some(node) = self.nodes.get_mut(&victim) {
                    node.stalled_until = until;
                }
                self.trace(|| format!("n{victim} disk stalls until t={until}"));
                // Half the time it dies before the stall ends, with writes it never made
                // durable: whatever it counted, acknowledged or voted must not depend on them
                // (§5.1 Fig. 2, thesis §10.2.1).
                if self.cfg.crashes && self.rand(2) == 0 {
                    let at = 1 + self.rand(until - self.now);
                    self.schedule(at, Ev::Crash(victim));
                }
            }
            0 | 1 if self.cfg.partitions => {
                // Split into two groups at random.
                self.groups.clear();
                for &id in &ids {
                    let g = self.rand(2) as u32;
                    self.groups.insert(id, g);
                }
                let groups = self.groups.clone();
                self.trace(|| format!("partition {groups:?}"));
            }
            2 if self.cfg.partitions && self.rand(2) == 0 => {
                // An isolated leader must stop serving lease reads before the others can
                // elect a new one (thesis §6.4.1): cut it off where its role outlives its
                // lease the longest.
                if let Some(l) = self.some_leader() {
                    self.isolate_after_check = Some(l);
                }
            }
            2 if self.cfg.partitions => {
                let victim = self.leader_or_random(n, &ids);
                self.groups.clear();
                self.groups.insert(victim, 1);
                self.trace(|| format!("isolate n{victim}"));
            }
            3 => {
                self.groups.clear();
                self.cut_links.clear();
                self.trace(|| "heal partitions".into());
            }
            4 | 5 if self.cfg.crashes => {
                // Half the time the leader: losing it mid-replication is where the
                // persistence and commit rules matter most.
                let victim = self.leader_or_random(n, &ids);
                if self.up(victim) {
                    self.crash(victim);
                    let back = self.downtime();
                    self.schedule(back, Ev::Restart(victim));
                }
            }
            6 if self.cfg.pauses && self.pause_pattern.is_none() => {
                let kinds = [
                    "AppendEntriesResp",
                    "AppendEntries",
                    "RequestVoteResp",
                    "HeartbeatResp",
                    "Heartbeat",
                ];
                let kind = kinds[self.rand(kinds.len() as u64) as usize];
                let from = if self.rand(2) == 0 {
                    Some(ids[self.rand(n) as usize])
                } else {
                    None
                };
                let to = if self.rand(2) == 0 {
                    Some(ids[self.rand(n) as usize])
                } else {
                    None
                };
                self.pause_pattern = Some((from, to, kind));
                self.trace(|| format!("pause {kind} from={from:?} to={to:?}"));
                let later = 50 + self.rand(400);
                self.schedule(later, Ev::Release);
            }
            7 => {
                // Freeze a node (a GC pause, a driver thread stuck in a plugin call), most
                // often the leader, for up to two election timeouts: its clock runs on, so it
                // thaws with its timers expired and leases lapsed. (Ticking a node without
                // time passing would be a clock jump, which no lease can survive.)
                let victim = self.leader_or_random(n, &ids);
                if self.up(victim) && !self.frozen(victim) {
                    let for_ms = 50 + self.rand(20 * TICK_MS);
                    if let Some(node) = self.nodes.get_mut(&victim) {
                        node.frozen_until = self.now + for_ms;
                        node.frozen = true;
                    }
                    self.schedule(for_ms, Ev::Thaw(victim));
                    self.trace(|| format!("n{victim} frozen for {for_ms} ms"));
                }
            }
            8 => {
                // Leadership transfer, if someone leads.
                let leader = self.some_leader();
                if let Some(l) = leader {
                    let to = ids[self.rand(n) as usize];
                    if let Some(raft) = self.raft(l)
                        && raft.transfer_leadership(to)
                    {
                        self.trace(|| format!("n{l} transfer leadership to n{to}"));
                    }
                    self.drive(l);
                }
            }
            _ => {}
        }
    }

    /// A live node that believes it leads (the lowest id, if several do in different terms).
    fn some_leader(&self) -> Option<NodeId> {
        self.nodes
            .iter()
            .find(|(_, n)| n.raft.as_ref().is_some_and(|r| r.role() == Role::Leader))
            .map(|(&id, _)| id)
    }

    /// The leader half the time (if there is one), else any node.
    fn leader_or_random(&mut self, n: u64, ids: &[NodeId]) -> NodeId {
        let leader = self.some_leader();
        let random = ids[self.rand(n) as usize];
        match leader {
            Some(l) if self.rand(2) == 0 => l,
            _ => random,
        }
    }

    fn release_paused(&mut self) {
        self.pause_pattern = None;
        let held = std::mem::take(&mut self.paused);
        if !held.is_empty() {
            let count = held.len();
            self.trace(|| format!("release {count} paused messages"));
        }
        for (_, m) in held {
            let d = 1 + self.rand(20);
            self.schedule(d, Ev::Deliver(m));
        }
    }

    /// Loses everything not reported durable: the core, queued writes, in-flight proposals.
    fn crash(&mut self, id: NodeId) {
        let Some(node) = self.nodes.get_mut(&id) else {
            return;
        };
        node.raft = None;
        node.queue.clear();
        node.fsync_scheduled = false;
        node.proposals.clear();
        node.reads.clear();
        node.reads_waiting.clear();
        node.leader_ticks = 0;
        node.frozen = false;
        node.missed_ticks = 0;
        node.restarts += 1;
        self.trace(|| format!("n{id} crash"));
    }

    // ------------------------------------------------------------------ checks

    fn check_step(&mut self) {
        let leaders: Vec<(NodeId, Term, Index)> = self
            .nodes
            .iter()
            .filter_map(|(&id, n)| {
                let r = n.raft.as_ref()?;
                (r.role() == Role::Leader).then(|| (id, r.term(), r.last_index()))
            })
            .collect();
        for (id, term, last) in leaders {
            let Some(raft) = self.nodes[&id].raft.as_ref() else {
                continue;
            };
            if let Err(v) = self.inv.on_leader(id, term, last, raft) {
                self.fail(v);
                return;
            }
        }
    }

    /// Every node is up, one leader leads, and everyone applied exactly its log's end.
    fn converged(&self) -> bool {
        let Some(leader_last) = self
            .nodes
            .values()
            .filter_map(|n| n.raft.as_ref())
            .find(|r| r.role() == Role::Leader)
            .map(|r| r.last_index())
        else {
            return false;
        };
        self.nodes.values().all(|n| {
            n.raft
                .as_ref()
                .is_some_and(|r| r.commit_index() == leader_last && n.disk.applied == leader_last)
        })
    }

    fn node_summary(&self) -> String {
        self.nodes
            .iter()
            .map(|(id, n)| match n.raft.as_ref() {
                Some(r) => format!(
                    "n{id}:{:?}/t{} last={} commit={} applied={}",
                    r.role(),
                    r.term(),
                    r.last_index(),
                    r.commit_index(),
                    n.disk.applied
                ),
                None => format!("n{id}:down"),
            })
            .collect::<Vec<_>>()
            .join(" ")
    }

    fn final_checks(&mut self) {
        // Liveness: after healing, every operation completed within the bound.
        if !self.clients_done() {
            let pending: Vec<String> = self
                .clients
                .iter()
                .enumerate()
                .filter(|(_, c)| c.next < c.ops.len())
                .map(|(i, c)| format!("client{i} op {}/{}", c.next, c.ops.len()))
                .collect();
            let nodes = self.node_summary();
            self.fail(Violation::Liveness(format!(
                "{} ms after healing, still pending: {}; nodes: {nodes}",
                self.cfg.liveness_ms,
                pending.join(", "),
            )));
            return;
        }
        if !self.converged() {
            let nodes = self.node_summary();
            self.fail(Violation::Liveness(format!(
                "replicas did not converge after healing: {nodes}"
            )));
            return;
        }
        // Replicas hold the same state.
        let states: BTreeSet<Vec<u8>> =
            self.nodes.values().map(|n| n.disk.state.encode()).collect();
        if states.len() != 1 {
            self.fail(Violation::Divergence(
                "replicas applied the same index but hold different state".into(),
            ));
            return;
        }
        match linearizability::check(&self.history, 2_000_000) {
            Verdict::Linearizable | Verdict::Unknown => {}
            Verdict::Violation { key } => {
                let mut calls = String::new();
                for c in self.history.iter().filter(|c| c.op.key() == key) {
                    let _ = writeln!(
                        calls,
                        "  {:?} [{}, {}] -> {:?}",
                        c.op, c.invoke, c.complete, c.result
                    );
                }
                self.fail(Violation::Linearizability(format!("key {key}:\n{calls}")));
            }
        }
    }
}

fn latest_config(entries: &[Entry], base: ClusterConfig) -> (Index, ClusterConfig) {
    entries
        .iter()
        .rev()
        .find_map(|e| match &e.record {
            Record::Config(c) => Some((e.index, c.clone())),
            _ => None,
        })
        .unwrap_or((0, base))
}

/// Runs one seed. A panic inside the core (it asserts its own invariants) is a violation.
pub fn run_seed(cfg: SimConfig) -> Outcome {
    let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| Sim::new(cfg).run()));
    result.unwrap_or_else(|panic| {
        let msg = panic
            .downcast_ref::<String>()
            .cloned()
            .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
            .unwrap_or_default();
        Outcome {
            steps: 0,
            violation: Some(Violation::Harness(format!("panic: {msg}"))),
            transcript: Vec::new(),
            completed_ops: 0,
        }
    })
}
