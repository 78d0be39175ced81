//! The deterministic simulator: N real nodes — the driver `keel serve` runs, its apply path,
//! the plugin runtime with the real kv plugin, `MemStorage` — over simulated disks and a
//! simulated network, a virtual clock, seeded faults, and clients whose history is checked
//! for linearizability. Raft's safety properties (§5.2 Figure 3) are checked after every
//! step; the replicas' state hashes at the end.

use std::cmp::Reverse;
use std::collections::{BTreeMap, BTreeSet, BinaryHeap, VecDeque};
use std::fmt::Write as _;
use std::sync::{Arc, Mutex};

use keel::config::NodeConfig;
use keel::driver::{CommandReply, Driver, DriverBug, Input, MemberChange, ReadRefused};
use keel::state;
use keel_raft::testkit::{Bug, Bugs};
use keel_raft::{ClientSerial, ClusterId, Index, Message, NodeId, Payload, ReadMode, Role, Term};
use rand_chacha::ChaCha8Rng;
use rand_core::{RngCore, SeedableRng};
use tokio::sync::oneshot::{self, error::TryRecvError};

use crate::invariants::{Invariants, Violation};
use crate::kv::{Op, OpResult};
use crate::linearizability::{self, Call, Verdict};
use crate::sim_node::{Effect, SimNode, Waiting, lock, parse_value, runtime};

mod transfer;

/// Virtual milliseconds.
pub type Time = u64;

/// Nominal tick; each node's clock runs at its own rate within ±`TICK_DRIFT_MS` of it (10%,
/// inside the 25% clock-rate margin the leader lease allows: docs/raft.md).
const TICK_MS: Time = 10;
const TICK_DRIFT_MS: Time = 1;
const CLUSTER: ClusterId = ClusterId(0x6b65_656c_5f73_696d);
/// Blob garbage collection runs on each node about this often, and spares blobs younger
/// than the grace period (virtual ms).
const BLOB_GC_EVERY_MS: Time = 400;
const BLOB_GC_GRACE_MS: Time = 300;

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
    /// Deliberately broken driver, likewise.
    pub driver_bug: Option<DriverBug>,
    /// Upper bound of one apply batch's time in the plugin (ms); now and then a batch takes
    /// far longer (a slow plugin), which the Raft loop must not notice.
    pub apply_max_ms: Time,
    /// How often the driver flushes the applied state to storage (ms).
    pub apply_flush_ms: Time,
    /// Share of writes whose body goes by reference (design §6): placed in the blob stores
    /// of a majority, as `PUT /v1/blobs` does, then proposed as `Payload::Ref`.
    pub ref_writes: f64,
    /// Share of writes that attach a blob (`Keel-Attach`): the blob placed on a majority
    /// first, the command proposed as `Payload::Attached`; every node must hold it to apply
    /// (the kv plugin ignores it), so apply waits, the sweep fetches, GC keeps it.
    pub attach_writes: f64,
    /// Deliberately broken placement: a reference-only write's blob is placed on the node
    /// it is sent to only (the check that every committed record's blobs are on a majority
    /// must catch it).
    pub place_on_one: bool,
    /// Deliberately broken garbage collection: a node deletes what its own snapshot covers,
    /// ignoring members whose snapshots are older (the lagging-follower case, design §6).
    pub gc_ignores_laggers: bool,
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
            driver_bug: None,
            apply_max_ms: [1, 5, 20][(r.next_u32() % 3) as usize],
            apply_flush_ms: [20, 100][(r.next_u32() % 2) as usize],
            ref_writes: [0.0, 0.3, 1.0][(r.next_u32() % 3) as usize],
            attach_writes: 0.0,
            place_on_one: false,
            gc_ignores_laggers: false,
            trace: false,
        };
        let partitions_only = r.next_u32() % 4 == 0;
        // Drawn last, so the draws above (and the seeds' runs without attachments) are as
        // they were before attachments existed.
        cfg.attach_writes = [0.0, 0.3][(r.next_u32() % 2) as usize];
        if partitions_only {
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
    /// Snapshot images received whole and handed to a driver.
    pub snapshots_staged: u64,
    /// Snapshot transfers resumed after a lost or reordered chunk.
    pub snapshot_resumes: u64,
    /// Commands replayed from the nodes' dry-run journals at the end (issue #12).
    pub journal_replayed: u64,
}

#[derive(Debug)]
enum Ev {
    Deliver(Message),
    Tick(NodeId),
    /// The disk finishes the writes queued on the log writer (events carry the node's
    /// restart count: what a crash interrupted never completes).
    Fsync(NodeId, u64),
    /// The apply worker finishes the batch at the front.
    ApplyDone(NodeId, u64),
    /// A chunk of a snapshot image arrives (transfer id, chunk).
    Chunk(u64, usize),
    /// A blob fetch finishes.
    BlobFetched(NodeId, u64, [u8; 32]),
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
    /// A node's blob garbage collection round.
    BlobGc(NodeId),
}

#[derive(Debug, Clone)]
enum Reply {
    Done(OpResult),
    /// A session opened: the client's id in the real session table.
    Session(u64),
    Redirect(Option<NodeId>),
    Retry,
}

struct Client {
    ops: Vec<Op>,
    next: usize,
    serial: u64,
    /// The session the client's writes go in (thesis §6.3), once opened.
    session: Option<u64>,
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
    /// The virtual clock the drivers read.
    clock: Arc<Mutex<u64>>,
    seq: u64,
    queue: BinaryHeap<Reverse<(Time, u64)>>,
    events: std::collections::HashMap<u64, Ev>,
    nodes: BTreeMap<NodeId, SimNode>,
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
    inv: Invariants,
    transcript: VecDeque<String>,
    steps: u64,
    violation: Option<Violation>,
    /// Snapshot images on their way, by id.
    transfers: std::collections::HashMap<u64, transfer::Transfer>,
    /// Images being staged: (receiver, sender, index, term).
    staging:
        std::collections::HashMap<(NodeId, NodeId, Index, Term), keel::peer::snapshot::Staging>,
    snapshots_staged: u64,
    snapshot_resumes: u64,
    journal_replayed: u64,
}

impl Sim {
    /// Builds a cluster of fresh nodes and clients.
    pub fn new(cfg: SimConfig) -> Sim {
        let mut rng = ChaCha8Rng::seed_from_u64(cfg.seed);
        let ids: Vec<NodeId> = (1..=cfg.nodes as NodeId).collect();
        let mut nodes = BTreeMap::new();
        for &id in &ids {
            let tick_ms = TICK_MS - TICK_DRIFT_MS + rng.next_u64() % (2 * TICK_DRIFT_MS + 1);
            nodes.insert(id, SimNode::new(tick_ms));
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
                    session: None,
                    target: ids[(rng.next_u32() as usize) % ids.len()],
                    in_flight: None,
                    attempt: 0,
                }
            })
            .collect();
        let mut sim = Sim {
            rng,
            now: 0,
            clock: Arc::new(Mutex::new(0)),
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
            inv: Invariants::default(),
            transcript: VecDeque::new(),
            steps: 0,
            violation: None,
            transfers: Default::default(),
            staging: Default::default(),
            snapshots_staged: 0,
            snapshot_resumes: 0,
            journal_replayed: 0,
            cfg,
        };
        for id in ids {
            sim.start_node(id);
            let offset = sim.rand(TICK_MS);
            sim.schedule(offset, Ev::Tick(id));
            let gc = BLOB_GC_EVERY_MS + sim.rand(BLOB_GC_EVERY_MS);
            sim.schedule(gc, Ev::BlobGc(id));
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
            *lock(&self.clock) = at;
            let Some(ev) = self.events.remove(&seq) else {
                continue;
            };
            self.steps += 1;
            self.handle(ev);
            if self.violation.is_none() {
                self.check_step();
            }
            if !self.faults_on
                && self.clients_done()
                && self.converged()
                && self.retained_blobs_missing().is_empty()
            {
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
            snapshots_staged: self.snapshots_staged,
            snapshot_resumes: self.snapshot_resumes,
            journal_replayed: self.journal_replayed,
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

    /// The node's configuration, as `keel serve` would read it (virtual milliseconds).
    fn node_config(&self, id: NodeId) -> NodeConfig {
        NodeConfig {
            id,
            cluster_id: "6b65656c-0000-4000-8000-73696d000000".into(),
            peers: self
                .nodes
                .keys()
                .map(|&n| (n, format!("sim://n{n}")))
                .collect(),
            tick_ms: TICK_MS,
            election_ticks: 10,
            heartbeat_ticks: 2,
            snapshot_every: self.cfg.snapshot_every,
            builtin_kv: true,
            apply_flush_ms: self.cfg.apply_flush_ms,
            ..NodeConfig::default()
        }
    }

    fn start_node(&mut self, id: NodeId) {
        let cfg = self.node_config(id);
        let sim_cfg = self.cfg.clone();
        let clock = self.clock.clone();
        let Some(node) = self.nodes.get_mut(&id) else {
            return;
        };
        let restarts = node.restarts;
        let core = |nc: &NodeConfig| {
            let seed = sim_cfg
                .seed
                .wrapping_mul(31)
                .wrapping_add(id * 7919 + restarts * 104_729);
            let mut c = keel::driver::core_config(nc, CLUSTER, seed);
            c.pre_vote = sim_cfg.pre_vote;
            c.check_quorum = sim_cfg.check_quorum;
            c.max_inflight = sim_cfg.max_inflight;
            c.max_entries_per_message = sim_cfg.max_entries_per_message;
            c.bugs = Bugs(sim_cfg.bug.into_iter().collect());
            c
        };
        match node.start(cfg, core, CLUSTER, clock, sim_cfg.driver_bug) {
            Ok((snapshot, entries, applied)) => {
                self.inv.node_restarted(id, &snapshot, &entries, applied);
                self.settle(id);
            }
            Err(e) => self.fail(Violation::Harness(format!("node {id} cannot start: {e}"))),
        }
    }

    fn count_leader_tick(&mut self, id: NodeId) {
        let Some(node) = self.nodes.get_mut(&id) else {
            return;
        };
        let leading = node.raft().is_some_and(|r| r.role() == Role::Leader);
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
        self.nodes.get(&id).is_some_and(|n| n.driver.is_some())
    }

    fn restarts(&self, id: NodeId) -> u64 {
        self.nodes.get(&id).map_or(0, |n| n.restarts)
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

    // ------------------------------------------------------------------ the driver

    /// Calls the node's driver as its thread would: the input (or ticks), then the end of
    /// the round (proposals, the Ready handshake), then whatever that set in motion.
    fn call(&mut self, id: NodeId, f: impl FnOnce(&mut Driver) -> anyhow::Result<()>) {
        let Some(driver) = self.nodes.get_mut(&id).and_then(|n| n.driver.as_mut()) else {
            return;
        };
        let result = f(driver).and_then(|()| driver.step_end());
        if let Err(e) = result {
            // `keel serve` would fail-stop here: in the simulator that is a finding.
            self.fail(Violation::Harness(format!("n{id} fail-stop: {e:#}")));
            return;
        }
        self.settle(id);
    }

    /// Carries out the node's effects in the order the driver produced them, feeding inputs
    /// they produce at once back to it, then answers the clients it replied to.
    fn settle(&mut self, id: NodeId) {
        loop {
            let Some(node) = self.nodes.get_mut(&id) else {
                return;
            };
            let effects: Vec<Effect> = lock(&node.fx).out.drain(..).collect();
            if effects.is_empty() {
                break;
            }
            let mut inputs = Vec::new();
            for effect in effects {
                if self.violation.is_some() {
                    return;
                }
                match effect {
                    Effect::Send(m) => self.send(m),
                    Effect::Input(input) => inputs.push(input),
                    other => self.effect(id, other),
                }
            }
            for input in inputs {
                self.call(id, |d| d.input(input));
            }
        }
        self.trace_events(id);
        self.poll_replies(id);
    }

    fn effect(&mut self, id: NodeId, effect: Effect) {
        let (role, term) = self
            .nodes
            .get(&id)
            .and_then(SimNode::raft)
            .map_or((Role::Follower, 0), |r| (r.role(), r.term()));
        let restarts = self.restarts(id);
        match effect {
            // Log Matching and Leader Append-Only are checked on what the node writes.
            Effect::Wrote(entries) => {
                if let Err(v) = self.inv.on_write(id, role, term, None, &entries) {
                    self.fail(v);
                }
                if role == Role::Leader {
                    for e in &entries {
                        self.check_blobs_placed(id, e);
                    }
                }
            }
            Effect::Installed(snapshot, entries) => {
                if let Err(v) = self.inv.on_write(id, role, term, Some(&snapshot), &entries) {
                    self.fail(v);
                }
            }
            Effect::Queued => {
                let Some(node) = self.nodes.get_mut(&id) else {
                    return;
                };
                if !node.fsync_scheduled {
                    node.fsync_scheduled = true;
                    let stall = node.stalled_until.saturating_sub(self.now);
                    let d = stall.max(1 + self.rand(self.cfg.fsync_max_ms));
                    self.schedule(d, Ev::Fsync(id, restarts));
                }
            }
            Effect::Apply(job) => {
                let Some(node) = self.nodes.get_mut(&id) else {
                    return;
                };
                node.applying.push_back(job);
                if node.applying.len() == 1 {
                    let d = self.apply_time();
                    self.schedule(d, Ev::ApplyDone(id, restarts));
                }
            }
            Effect::SendSnapshot(m, view) => self.send_snapshot(m, view),
            Effect::Fetch(hash) => {
                let d = 5 + self.rand(50);
                self.schedule(d, Ev::BlobFetched(id, restarts, hash));
            }
            Effect::Send(_) | Effect::Input(_) => {}
        }
    }

    /// How long the worker spends on one batch: mostly quick; during faults now and then a
    /// slow plugin call of up to two election timeouts.
    fn apply_time(&mut self) -> Time {
        if self.faults_on && self.chance(0.02) {
            50 + self.rand(20 * TICK_MS)
        } else {
            self.rand(self.cfg.apply_max_ms + 1)
        }
    }

    /// The group commit: every job queued on the node's log writer, through the real
    /// writer's round (merge, one durable write, then the acknowledgements).
    fn fsync(&mut self, id: NodeId) {
        let Some(node) = self.nodes.get_mut(&id) else {
            return;
        };
        node.fsync_scheduled = false;
        if node.driver.is_none() {
            return;
        }
        let jobs = std::mem::take(&mut lock(&node.fx).writer_queue);
        let mut out = crate::sim_node::Collect(Vec::new());
        if let Err(e) = keel::driver::writer_round(jobs, &*node.store, &node.metrics, &mut out) {
            self.fail(Violation::Harness(format!("n{id} storage: {e}")));
            return;
        }
        let mut inputs = Vec::new();
        for effect in out.0 {
            match effect {
                Effect::Send(m) => self.send(m),
                Effect::Input(i) => inputs.push(i),
                _ => {}
            }
        }
        for input in inputs {
            self.call(id, |d| d.input(input));
        }
    }

    /// The worker finished the front batch: checked (State Machine Safety) and run through
    /// the real plugin, unless a snapshot install made it stale.
    fn apply_done(&mut self, id: NodeId) {
        let Some(node) = self.nodes.get_mut(&id) else {
            return;
        };
        let Some(job) = node.applying.pop_front() else {
            return;
        };
        let more = !node.applying.is_empty();
        let current = node
            .driver
            .as_ref()
            .is_some_and(|d| d.apply_epoch() == job.epoch());
        let restarts = node.restarts;
        if more {
            let d = self.apply_time();
            self.schedule(d, Ev::ApplyDone(id, restarts));
        }
        if !current {
            return; // computed for a state a snapshot replaced; the driver drops it too
        }
        let mut term_bound = 0;
        let mut leaders = Vec::new();
        for (&nid, n) in &self.nodes {
            if let Some(r) = n.raft() {
                term_bound = term_bound.max(r.term());
                if r.role() == Role::Leader {
                    leaders.push((nid, r.term()));
                }
            }
        }
        for e in job.entries() {
            if let Err(v) = self.inv.on_apply(id, e, term_bound, &leaders) {
                self.fail(v);
                return;
            }
        }
        let Some(node) = self.nodes.get(&id) else {
            return;
        };
        let named: Vec<(u64, [u8; 32])> = job
            .entries()
            .iter()
            .flat_map(|e| {
                named_blobs(&e.record)
                    .into_iter()
                    .map(move |h| (e.index, h))
            })
            .collect();
        let done = keel::driver::run_job(job, runtime(), &node.blobs, &node.registry);
        // Design §6: a node applies a record only once it holds every blob the record names
        // (a by-reference body and every attachment).
        if done.applied()
            && let Some((index, hash)) = named.iter().find(|(_, h)| !node.blobs.has(h))
        {
            self.fail(Violation::Harness(format!(
                "n{id} applied entry {index} without blob {}",
                keel::blobs::hex(&hash[..4])
            )));
            return;
        }
        self.call(id, |d| d.input(Input::Applied(Box::new(done))));
    }

    /// A blob fetch as `Blobs::fetch` does it: from any peer that is up, reachable and holds
    /// it (checked by hash on the way in, as the store does).
    fn fetch_blob(&mut self, id: NodeId, hash: [u8; 32]) -> bool {
        if self.nodes.get(&id).is_some_and(|n| n.blobs.has(&hash)) {
            return true;
        }
        let source = self
            .nodes
            .iter()
            .filter(|(p, n)| **p != id && n.driver.is_some() && self.connected(**p, id))
            .find_map(|(_, n)| n.blobs.local(&hash));
        let Some(bytes) = source else {
            return false;
        };
        let now = self.now;
        let stored = self.nodes.get_mut(&id).map(|n| {
            n.blob_times.insert(hash, now);
            n.blobs.store(&bytes)
        });
        self.trace(|| format!("n{id} fetched blob {}", keel::blobs::hex(&hash[..4])));
        matches!(stored, Some(Ok(h)) if h == hash)
    }

    /// `PUT /v1/blobs` as the HTTP layer does it for a reference-only command sent to
    /// `target`: stored there and pushed to the members it reaches; `true` once a majority
    /// of the voters it knows holds it.
    fn place_blob(&mut self, target: NodeId, bytes: &[u8]) -> bool {
        let Some(voters) = self
            .nodes
            .get(&target)
            .and_then(SimNode::raft)
            .map(|r| r.config().voters.clone())
        else {
            return false;
        };
        let reach: Vec<NodeId> = if self.cfg.place_on_one {
            vec![target]
        } else {
            self.nodes
                .iter()
                .filter(|(p, n)| {
                    n.driver.is_some() && (**p == target || self.connected(**p, target))
                })
                .map(|(&p, _)| p)
                .collect()
        };
        let now = self.now;
        for p in &reach {
            if let Some(n) = self.nodes.get_mut(p) {
                let _ = n.blobs.store(bytes);
                // Placed again: the grace period starts over (as `Blobs::touch` does).
                n.blob_times.insert(keel::blobs::sha256(bytes), now);
            }
        }
        let held = voters.iter().filter(|v| reach.contains(v)).count();
        self.cfg.place_on_one || held * 2 > voters.len()
    }

    /// Design §6: every blob a record names is durable on a majority of the nodes before the
    /// record is proposed (checked when the leader writes it), so a committed record can
    /// always be resolved while a majority is up.
    fn check_blobs_placed(&mut self, leader: NodeId, e: &keel_raft::Entry) {
        let Some(voters) = self
            .nodes
            .get(&leader)
            .and_then(SimNode::raft)
            .map(|r| r.config().voters.clone())
        else {
            return;
        };
        for hash in e.record.blobs() {
            let held = voters
                .iter()
                .filter(|v| self.nodes.get(v).is_some_and(|n| n.blobs.has(&hash)))
                .count();
            if held * 2 <= voters.len() {
                self.fail(Violation::Harness(format!(
                    "n{leader} proposed entry {} naming blob {} that only {held} of its {} voters hold",
                    e.index,
                    keel::blobs::hex(&hash[..4]),
                    voters.len()
                )));
                return;
            }
        }
    }

    fn trace_events(&mut self, id: NodeId) {
        let mut lines = Vec::new();
        if let Some(rx) = self.nodes.get_mut(&id).and_then(|n| n.events.as_mut()) {
            while let Ok(json) = rx.try_recv() {
                lines.push(json);
            }
        }
        for line in lines {
            self.trace(|| format!("n{id} {line}"));
        }
    }

    /// Answers the clients whose replies the node's driver has sent.
    fn poll_replies(&mut self, id: NodeId) {
        let Some(node) = self.nodes.get_mut(&id) else {
            return;
        };
        let mut answered = Vec::new();
        let mut still = Vec::new();
        for (c, attempt, mut w) in std::mem::take(&mut node.waiting) {
            let got = match &mut w {
                Waiting::Session(rx) => match rx.try_recv() {
                    Ok(r) => Some(session_reply(r)),
                    Err(TryRecvError::Empty) => None,
                    Err(TryRecvError::Closed) => continue,
                },
                Waiting::Write(rx, expect) => match rx.try_recv() {
                    Ok(r) => Some(write_reply(r, *expect)),
                    Err(TryRecvError::Empty) => None,
                    Err(TryRecvError::Closed) => continue,
                },
                Waiting::Read(rx, key) => match rx.try_recv() {
                    Ok(Ok(_)) => Some(node.query(*key).map(|v| Reply::Done(OpResult::Get(v)))),
                    Ok(Err(ReadRefused::NotLeader(l))) => Some(Ok(Reply::Redirect(l))),
                    Ok(Err(ReadRefused::Retry)) => Some(Ok(Reply::Retry)),
                    Err(TryRecvError::Empty) => None,
                    Err(TryRecvError::Closed) => continue,
                },
            };
            match got {
                Some(r) => answered.push((c, attempt, r)),
                None => still.push((c, attempt, w)),
            }
        }
        node.waiting = still;
        for (c, attempt, r) in answered {
            match r {
                Ok(reply) => {
                    let d = 1 + self.rand(3);
                    self.schedule(d, Ev::Reply(c, attempt, reply));
                }
                Err(e) => self.fail(Violation::Harness(format!("n{id} answered client{c}: {e}"))),
            }
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
                } else if self.up(id) {
                    self.call(id, |d| {
                        d.ticks(1);
                        Ok(())
                    });
                    self.count_leader_tick(id);
                }
            }
            Ev::Deliver(m) if self.frozen(m.to) => {
                let after = self.thaw_delay(m.to);
                self.schedule(after, Ev::Deliver(m));
            }
            Ev::Fsync(id, r) | Ev::ApplyDone(id, r) | Ev::BlobFetched(id, r, _)
                if r != self.restarts(id) => {} // cut short by a crash
            ev @ (Ev::Fsync(id, _) | Ev::ApplyDone(id, _) | Ev::BlobFetched(id, _, _))
                if self.frozen(id) =>
            {
                let after = self.thaw_delay(id);
                self.schedule(after, ev);
            }
            Ev::Deliver(m) => self.deliver(m),
            Ev::Fsync(id, _) => self.fsync(id),
            Ev::ApplyDone(id, _) => self.apply_done(id),
            Ev::Chunk(t, i) => self.deliver_chunk(t, i),
            Ev::BlobFetched(id, r, hash) => {
                let found = self.fetch_blob(id, hash);
                self.call(id, |d| d.input(Input::BlobFetched { hash, found }));
                if !found {
                    // As the real fetcher: it keeps trying, a second apart.
                    self.schedule(1_000, Ev::BlobFetched(id, r, hash));
                }
            }
            Ev::Thaw(id) => {
                let missed = self.nodes.get_mut(&id).map_or(0, |n| {
                    n.frozen = false;
                    std::mem::take(&mut n.missed_ticks)
                });
                self.trace(|| format!("n{id} thaws, {missed} ticks late"));
                // As the real driver's clock does: every missed tick, before anything else.
                for _ in 0..missed {
                    self.call(id, |d| {
                        d.ticks(1);
                        Ok(())
                    });
                    self.count_leader_tick(id);
                }
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
            Ev::BlobGc(id) => {
                self.schedule(BLOB_GC_EVERY_MS, Ev::BlobGc(id));
                if self.up(id) && !self.frozen(id) {
                    self.blob_gc(id);
                }
            }
        }
    }

    /// One garbage collection round on `id`, as `http::blob_gc` runs it: every member's
    /// snapshot index (all must answer), the blobs the driver says to keep, the real rule
    /// (`keel::blobs::collectable`).
    fn blob_gc(&mut self, id: NodeId) {
        let Some(members) = self
            .nodes
            .get(&id)
            .and_then(SimNode::raft)
            .map(|r| r.config().members().collect::<Vec<_>>())
        else {
            return;
        };
        let mut watermark = u64::MAX;
        for m in &members {
            let reachable = *m == id || (self.up(*m) && self.connected(id, *m));
            let Some(node) = self.nodes.get(m).filter(|_| reachable) else {
                return; // a member that cannot be asked may be the lagging one
            };
            let snapshot = lock(&node.status).snapshot_index;
            if self.cfg.gc_ignores_laggers && *m != id {
                continue;
            }
            watermark = watermark.min(snapshot);
        }
        let (tx, mut rx) = oneshot::channel();
        self.call(id, |d| d.input(Input::BlobsNeeded(tx)));
        let Ok(keep) = rx.try_recv() else {
            return;
        };
        let now = self.now;
        let Some(node) = self.nodes.get_mut(&id) else {
            return;
        };
        let stored: Vec<([u8; 32], std::time::Duration)> = node
            .blobs
            .list()
            .into_iter()
            .map(|(h, _)| {
                let born = *node.blob_times.entry(h).or_insert(now);
                (h, std::time::Duration::from_millis(now - born))
            })
            .collect();
        let grace = std::time::Duration::from_millis(BLOB_GC_GRACE_MS);
        let doomed = keel::blobs::collectable(&stored, &keep, watermark, grace);
        for h in &doomed {
            node.blobs.remove(h);
            node.blob_times.remove(h);
        }
        if !doomed.is_empty() {
            let n = doomed.len();
            self.trace(|| {
                format!(
                    "n{id} collects {n} blobs (snapshot {}, watermark {watermark})",
                    keep.snapshot
                )
            });
        }
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
        self.call(to, |d| d.input(Input::Peer(vec![m])));
    }

    // ------------------------------------------------------------------ clients

    /// Whether some node has the kv plugin active: clients start once its deployment is
    /// applied (a command before it would be refused as naming an unknown plugin).
    fn kv_deployed(&self) -> bool {
        self.nodes.values().any(|n| {
            n.driver
                .as_ref()
                .is_some_and(|d| d.registry().get("kv").is_some())
        })
    }

    fn client_send(&mut self, c: usize) {
        if self.clients[c].next >= self.clients[c].ops.len() {
            return;
        }
        if self.clients[c].in_flight.is_none() && !self.kv_deployed() {
            self.schedule(20, Ev::ClientSend(c));
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
        if !self.up(target) || self.frozen(target) {
            return; // lost, or unanswered while frozen; the timeout retries elsewhere
        }
        let serial = self.clients[c].serial;
        let lease = matches!(op, Op::Get { .. }) && self.chance(self.cfg.lease_reads);
        let (input, waiting) = match (op, self.clients[c].session) {
            (Op::Get { key }, _) => {
                let mode = if lease {
                    ReadMode::Lease
                } else {
                    ReadMode::ReadIndex
                };
                let (tx, rx) = oneshot::channel();
                (Input::Read { mode, reply: tx }, Waiting::Read(rx, key))
            }
            // Writes go in a session of the real session table (exactly-once, §6.3).
            (_, None) => {
                let (tx, rx) = oneshot::channel();
                (Input::OpenSession(tx), Waiting::Session(rx))
            }
            (_, Some(client_id)) => {
                let (tx, rx) = oneshot::channel();
                let bytes = command_json(&op).into_bytes();
                let payload = if self.chance(self.cfg.ref_writes) {
                    if !self.place_blob(target, &bytes) {
                        // 503 from the upload: no majority reachable; the client retries.
                        let d = 1 + self.rand(3);
                        self.schedule(d, Ev::Reply(c, attempt, Reply::Retry));
                        return;
                    }
                    Payload::Ref {
                        sha256: keel::blobs::sha256(&bytes),
                        len: bytes.len() as u64,
                    }
                } else {
                    Payload::Inline(bytes)
                };
                let payload = if self.cfg.attach_writes > 0.0 && self.chance(self.cfg.attach_writes)
                {
                    let blob = format!("attached by client {client_id} serial {serial}");
                    // Half the inline puts that attach a blob keep it (the kv plugin retains
                    // it): the state then needs it whatever the log says, and a node that
                    // installs a snapshot must fetch it by itself (design §6's sweep).
                    let payload = match (&op, payload) {
                        (Op::Put { .. }, Payload::Inline(_)) if self.chance(0.5) => {
                            let mut json: serde_json::Value =
                                serde_json::from_str(&command_json(&op)).unwrap_or_default();
                            json["keep"] = serde_json::Value::Bool(true);
                            Payload::Inline(json.to_string().into_bytes())
                        }
                        (_, payload) => payload,
                    };
                    if !self.place_blob(target, blob.as_bytes()) {
                        let d = 1 + self.rand(3);
                        self.schedule(d, Ev::Reply(c, attempt, Reply::Retry));
                        return;
                    }
                    self.trace(|| {
                        format!(
                            "client{c} attaches blob {}",
                            keel::blobs::hex(&keel::blobs::sha256(blob.as_bytes())[..4])
                        )
                    });
                    Payload::Attached {
                        body: Box::new(payload),
                        attachments: vec![keel_raft::BlobRef {
                            sha256: keel::blobs::sha256(blob.as_bytes()),
                            len: blob.len() as u64,
                        }],
                    }
                } else {
                    payload
                };
                let input = Input::Propose {
                    plugin: "kv".into(),
                    client: Some(ClientSerial { client_id, serial }),
                    payload,
                    reply: tx,
                };
                let expect = match op {
                    Op::Cas { expect, .. } => expect,
                    _ => None,
                };
                (input, Waiting::Write(rx, expect))
            }
        };
        let how = match (&waiting, lease) {
            (Waiting::Session(_), _) => " (opening a session)",
            (_, true) => " lease",
            _ => "",
        };
        self.trace(|| format!("client{c} -> n{target} {op:?}{how} serial={serial}"));
        if let Some(node) = self.nodes.get_mut(&target) {
            node.waiting.push((c, attempt, waiting));
        }
        self.call(target, |d| d.input(input));
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
            Reply::Session(client_id) => {
                self.trace(|| format!("client{c} session {client_id}"));
                self.clients[c].session = Some(client_id);
                self.clients[c].attempt += 1;
                self.schedule(1, Ev::ClientSend(c));
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
                // Half the time elsewhere, as a client with several endpoints does: the node
                // may be one a membership change removed, which stays leaderless for ever.
                if self.rand(2) == 0 {
                    let n = self.cfg.nodes as u64;
                    self.clients[c].target = 1 + self.rand(n);
                }
                self.clients[c].attempt += 1;
                let d = 20 + self.rand(50);
                self.schedule(d, Ev::ClientSend(c));
            }
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
                // Single-server membership changes (thesis §4.1) through the real path:
                // remove a voter, add a removed node back as a learner, promote a learner
                // (refused until it has caught up, as etcd does).
                let Some(l) = self.some_leader() else { return };
                let Some(config) = self
                    .nodes
                    .get(&l)
                    .and_then(SimNode::raft)
                    .map(|r| r.config().clone())
                else {
                    return;
                };
                let target = ids[self.rand(n) as usize];
                let change = if config.learners.contains(&target) {
                    MemberChange::Promote(target)
                } else if !config.contains(target) {
                    MemberChange::AddLearner {
                        id: target,
                        url: format!("sim://n{target}"),
                    }
                } else if config.voters.len() > 3 {
                    MemberChange::Remove(target)
                } else {
                    return;
                };
                self.trace(|| format!("n{l} membership change {change:?}"));
                let (tx, _rx) = oneshot::channel();
                self.call(l, |d| d.input(Input::Members { change, reply: tx }));
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
                if let Some(l) = self.some_leader() {
                    let to = ids[self.rand(n) as usize];
                    self.trace(|| format!("n{l} transfer leadership to n{to}"));
                    self.call(l, |d| d.input(Input::Transfer(to)));
                }
            }
            _ => {}
        }
    }

    /// A live node that believes it leads (the lowest id, if several do in different terms).
    fn some_leader(&self) -> Option<NodeId> {
        self.nodes
            .iter()
            .find(|(_, n)| n.raft().is_some_and(|r| r.role() == Role::Leader))
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

    /// Loses everything not reported durable (see `SimNode::crash`).
    fn crash(&mut self, id: NodeId) {
        if let Some(node) = self.nodes.get_mut(&id) {
            node.crash();
        }
        self.drop_staging(id);
        self.trace(|| format!("n{id} crash"));
    }

    // ------------------------------------------------------------------ checks

    fn check_step(&mut self) {
        let leaders: Vec<(NodeId, Term, Index)> = self
            .nodes
            .iter()
            .filter_map(|(&id, n)| {
                let r = n.raft()?;
                (r.role() == Role::Leader).then(|| (id, r.term(), r.last_index()))
            })
            .collect();
        for (id, term, last) in leaders {
            let Some(raft) = self.nodes.get(&id).and_then(SimNode::raft) else {
                continue;
            };
            if let Err(v) = self.inv.on_leader(id, term, last, raft) {
                self.fail(v);
                return;
            }
        }
    }

    /// The members of the leader's configuration (nodes a membership change removed are
    /// left out: nobody replicates to them).
    fn members(&self) -> Option<(Index, Vec<NodeId>)> {
        let r = self
            .nodes
            .values()
            .filter_map(SimNode::raft)
            .find(|r| r.role() == Role::Leader)?;
        Some((r.last_index(), r.config().members().collect()))
    }

    /// One leader leads, and every member is up and applied exactly the leader's log end.
    fn converged(&self) -> bool {
        let Some((leader_last, members)) = self.members() else {
            return false;
        };
        members.iter().all(|id| {
            self.nodes.get(id).is_some_and(|n| {
                n.driver.as_ref().is_some_and(|d| {
                    d.raft().commit_index() == leader_last && d.applied() == leader_last
                })
            })
        })
    }

    /// `n<id>:<blob>` for each blob a member's applied state retains that it does not hold.
    fn retained_blobs_missing(&self) -> Vec<String> {
        let members = self.members().map(|(_, m)| m).unwrap_or_default();
        let mut missing = Vec::new();
        for id in members {
            let Some(n) = self.nodes.get(&id) else {
                continue;
            };
            let Ok(view) = keel_storage::Storage::view(&*n.mem) else {
                continue;
            };
            let unflushed = Arc::clone(&n.unflushed.read().unwrap_or_else(|e| e.into_inner()));
            let system =
                state::query_view(Box::new(view), unflushed, state::SYSTEM_NAMESPACE.into());
            for hash in state::retained_blobs(&system).unwrap_or_default() {
                if !n.blobs.has(&hash) {
                    missing.push(format!("n{id}:{}", keel::blobs::hex(&hash[..4])));
                }
            }
        }
        missing
    }

    fn node_summary(&self) -> String {
        self.nodes
            .iter()
            .map(|(id, n)| match n.driver.as_ref() {
                Some(d) => {
                    let r = d.raft();
                    format!(
                        "n{id}:{:?}/t{} last={} commit={} applied={}",
                        r.role(),
                        r.term(),
                        r.last_index(),
                        r.commit_index(),
                        d.applied()
                    )
                }
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
        // Design §6's sweep: after healing, every member holds every blob its state retains
        // (one that installed a snapshot fetched them with no apply or query asking).
        let missing = self.retained_blobs_missing();
        if !missing.is_empty() {
            self.fail(Violation::Liveness(format!(
                "retained blobs missing after healing: {}",
                missing.join(", ")
            )));
            return;
        }
        // Replicas hold the same state: the real state hash, after a flush, as
        // `GET /v1/state-hash` computes it.
        let members = self.members().map(|(_, m)| m).unwrap_or_default();
        let mut hashes = BTreeMap::new();
        for id in members {
            let (tx, _rx) = oneshot::channel();
            self.call(id, |d| d.input(Input::Flush(tx)));
            match self.nodes.get(&id).map(SimNode::state_hash) {
                Some(Ok(h)) => {
                    hashes.insert(id, h);
                }
                Some(Err(e)) => {
                    self.fail(Violation::Harness(format!("n{id} state hash: {e}")));
                    return;
                }
                None => {}
            }
        }
        if hashes.values().collect::<BTreeSet<_>>().len() != 1 {
            self.fail(Violation::Divergence(format!(
                "replicas applied the same index but hold different state: {hashes:?}"
            )));
            return;
        }
        // Each node's dry-run journal undoes exactly what it applied: replaying it with the
        // same version from the rewound state differs nowhere.
        let mut replayed = 0;
        for (&id, node) in &self.nodes {
            match node.replay_own_journal() {
                Ok(Some(r)) if r.commands_differ > 0 => {
                    let first = r.differences.first().map(|d| format!("{d:?}"));
                    self.fail(Violation::Divergence(format!(
                        "n{id}: its dry-run journal does not undo what it applied: {} of {} \
                         replayed commands differ; first: {first:?}",
                        r.commands_differ, r.replayed
                    )));
                    return;
                }
                Ok(Some(r)) => replayed += r.replayed as u64,
                Ok(None) => {}
                Err(e) => {
                    self.fail(Violation::Harness(format!("n{id} dry run: {e}")));
                    return;
                }
            }
        }
        self.journal_replayed += replayed;
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

/// A write as the kv plugin takes it (keys `k0`..`k2`, values as decimal strings).
fn command_json(op: &Op) -> String {
    let json = match *op {
        Op::Put { key, value } => {
            serde_json::json!({"op": "put", "key": format!("k{key}"), "value": value.to_string()})
        }
        Op::Cas { key, expect, value } => serde_json::json!({
            "op": "cas",
            "key": format!("k{key}"),
            "expect": expect.map(|v| v.to_string()),
            "value": value.to_string(),
        }),
        Op::Get { key } => serde_json::json!({"op": "get", "key": format!("k{key}")}),
    };
    json.to_string()
}

/// A write's reply as the client sees it. A plugin error or an unknown session is a
/// finding: the simulator's commands are valid and its sessions never expire.
fn write_reply(r: CommandReply, expect: Option<u64>) -> Result<Reply, String> {
    match r {
        CommandReply::Done {
            result: Ok(bytes), ..
        } => {
            let v: serde_json::Value =
                serde_json::from_slice(&bytes).map_err(|e| format!("kv answered {e}"))?;
            if v.get("ok").is_some() {
                // The plugin answers a success with the value now there; the specification
                // with the value found, which was the expected one.
                let ok = v["ok"].as_bool().unwrap_or(false);
                let found = if ok {
                    expect
                } else {
                    parse_value(&v["current"])?
                };
                Ok(Reply::Done(OpResult::Cas(ok, found)))
            } else {
                Ok(Reply::Done(OpResult::Put(parse_value(&v["prev"])?)))
            }
        }
        CommandReply::Done { result: Err(e), .. } => Err(format!("command failed: {e}")),
        CommandReply::SessionUnknown(e) => Err(format!("session unknown: {e}")),
        CommandReply::NotLeader(l) => Ok(Reply::Redirect(l)),
        CommandReply::Retry(_) | CommandReply::OutcomeUnknown(_) => Ok(Reply::Retry),
    }
}

fn session_reply(r: CommandReply) -> Result<Reply, String> {
    match r {
        CommandReply::Done {
            result: Ok(bytes), ..
        } => {
            let v: serde_json::Value =
                serde_json::from_slice(&bytes).map_err(|e| format!("session answer {e}"))?;
            v["client_id"]
                .as_u64()
                .map(Reply::Session)
                .ok_or_else(|| format!("session answer without an id: {v}"))
        }
        CommandReply::NotLeader(l) => Ok(Reply::Redirect(l)),
        _ => Ok(Reply::Retry),
    }
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
            snapshots_staged: 0,
            snapshot_resumes: 0,
            journal_replayed: 0,
        }
    })
}

/// Every blob a record names, worked out here rather than with `Record::blobs`, so that a
/// node code path that forgets some (attachments, say) is caught, not shared.
fn named_blobs(record: &keel_raft::Record) -> Vec<[u8; 32]> {
    let payloads: Vec<&Payload> = match record {
        keel_raft::Record::Command(c) => vec![&c.payload],
        keel_raft::Record::Batch(cmds) => cmds.iter().map(|c| &c.payload).collect(),
        keel_raft::Record::Deploy(d) => return vec![d.sha256],
        _ => Vec::new(),
    };
    let mut out = Vec::new();
    for p in payloads {
        let (body, attachments) = match p {
            Payload::Attached { body, attachments } => (&**body, attachments.as_slice()),
            other => (other, &[][..]),
        };
        if let Payload::Ref { sha256, .. } = body {
            out.push(*sha256);
        }
        out.extend(attachments.iter().map(|a| a.sha256));
    }
    out
}
