//! The driver: the one place where the Raft core, storage, plugins, timers and the network
//! meet (design §2).
//!
//! One dedicated thread owns the core and runs the Ready handshake (see `keel_raft::Ready`).
//! Everything else talks to it through a channel. Committed entries run through the plugins
//! on the apply worker (`crate::apply_worker`), one batch at a time, so a slow plugin never
//! holds up ticks, heartbeats or votes. Durable writes go to
//! the log writer (`crate::log_writer`), which syncs while this thread applies and proposes;
//! whatever queues meanwhile becomes one durable commit (group commit), and the leader's
//! appends leave before its own write starts (thesis §10.2.1). Flushes of the applied state
//! and snapshot builds run beside it too, so the driver never waits on a disk.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::mpsc::{Receiver, RecvTimeoutError, Sender};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use keel_plugin::Runtime;
use keel_raft::{
    ClientSerial, ClusterConfig, ClusterId, Command, Config, Deploy, Event, Index, InitialState,
    Message, NodeId, Payload, ProposeError, Raft, ReadError, ReadMode, Ready, Record, Role,
    Snapshot, Term,
};
use keel_storage::{Identity, LogWrite, RedbStorage, SnapshotChunks, StateView, Storage};
use serde::Serialize;
use tokio::sync::{broadcast, oneshot};

use crate::apply::{self, Applied, CommandOutcome, CommandResult, Registry, Unflushed};
use crate::apply_worker::{ApplyDone, ApplyJob, ApplyWorker};
use crate::blobs::{self, Blobs};
use crate::config::NodeConfig;
use crate::log_writer::{LogWriter, Write};
use crate::metrics::Metrics;
use crate::transport::Outboxes;

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
    /// A client command.
    Propose {
        /// Plugin name.
        plugin: String,
        /// Exactly-once session, if any.
        client: Option<ClientSerial>,
        /// Command bytes.
        payload: Vec<u8>,
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
    /// A snapshot of the applied state, built beside the driver.
    SnapshotBuilt(Result<Snapshot, keel_storage::StorageError>),
    /// The apply worker finished a batch.
    Applied(Box<ApplyDone>),
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
    /// Follower, PreCandidate, Candidate or Leader.
    pub role: String,
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
}

/// The handle the HTTP layer holds.
#[derive(Clone)]
pub struct NodeHandle {
    /// Inputs to the driver.
    pub inputs: Sender<Input>,
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

    /// Asks the driver to flush the applied state to storage, and waits for it.
    pub async fn flush(&self) {
        let (tx, rx) = oneshot::channel();
        if self.inputs.send(Input::Flush(tx)).is_ok() {
            let _ = rx.await;
        }
    }
}

/// Flush sooner when this many keys and sessions are waiting.
const FLUSH_AT: usize = 50_000;

/// Plugin instances live at once: queries plus the one apply in progress.
const PLUGIN_INSTANCES: u32 = 64;
/// Of those, how many queries may use at once.
const QUERY_SLOTS: usize = 48;

type Reply = oneshot::Sender<CommandReply>;

/// Bounds on one batched entry: well under storage's 4 MiB entry limit, and a single
/// command (at most `max_body_bytes`, 1 MiB by default) always fits.
const MAX_BATCH_BYTES: usize = 2 << 20;
const MAX_BATCH_COMMANDS: usize = 1024;

/// Why a node could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// Bad configuration.
    #[error("{0}")]
    Config(#[from] crate::config::ConfigError),
    /// Storage could not be opened or recovered.
    #[error("storage: {0}")]
    Storage(#[from] keel_storage::StorageError),
    /// The data directory belongs to another cluster or node.
    #[error("data dir belongs to {found}, but this node is {expected}")]
    ForeignData {
        /// What the directory holds.
        found: Identity,
        /// What the config says.
        expected: Identity,
    },
    /// The data directory could not be created.
    #[error("data dir {path}: {source}")]
    DataDir {
        /// The directory.
        path: std::path::PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The plugin runtime failed.
    #[error("plugins: {0}")]
    Plugin(String),
    /// `start` was called outside a tokio runtime (peer senders need one).
    #[error("no tokio runtime to run peer senders on: {0}")]
    NoRuntime(tokio::runtime::TryCurrentError),
    /// The driver thread could not be started.
    #[error("starting the driver thread: {0}")]
    Thread(std::io::Error),
    /// The core refused its configuration.
    #[error("raft: {0}")]
    Raft(#[from] keel_raft::ConfigError),
}

/// Where the next snapshot stands (see `Driver::maybe_snapshot`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum SnapshotState {
    Idle,
    /// Waiting for storage to hold the applied state (a flush under way).
    AwaitingFlush,
    /// Being built on its own thread.
    Building,
}

struct Driver {
    cfg: Arc<NodeConfig>,
    raft: Raft,
    storage: Arc<RedbStorage>,
    runtime: Runtime,
    blobs: Blobs,
    registry: Registry,
    outboxes: Outboxes,
    writer: LogWriter,
    status: Arc<Mutex<NodeStatus>>,
    events: broadcast::Sender<String>,
    metrics: Arc<Metrics>,
    /// Commands waiting to be proposed together, and their encoded size.
    pending: Vec<(Command, Reply)>,
    pending_bytes: usize,
    /// index → (term, one reply per command of the entry) of proposals made here.
    proposals: HashMap<Index, (Term, Vec<Option<Reply>>)>,
    /// read ctx → reply, while the core confirms it.
    reads: HashMap<u64, oneshot::Sender<ReadReply>>,
    /// Confirmed reads waiting for the state machine to catch up.
    reads_waiting: Vec<(Index, oneshot::Sender<ReadReply>)>,
    next_ctx: u64,
    /// Highest index whose batch the driver has absorbed (the replies are answered).
    applied: Index,
    apply_worker: ApplyWorker,
    /// Committed entries not yet handed to the apply worker.
    apply_queue: VecDeque<keel_raft::Entry>,
    /// Last index of the batch the worker is applying, if one is.
    applying: Option<Index>,
    /// Bumped by a snapshot install: results of batches started before it are dropped.
    apply_epoch: u64,
    snapshot_index: Index,
    snapshot_state: SnapshotState,
    /// The driver's own input channel, for threads it starts to report back on.
    inputs: Sender<Input>,
    deploy_in_flight: Option<Index>,
    /// The plugin blob a queued `Deploy` waits for (design §6), fetched beside the driver;
    /// nothing from that entry on is applied until it is here.
    fetching: Option<[u8; 32]>,
    unflushed: Arc<RwLock<Arc<Unflushed>>>,
    last_flush: Instant,
    last_session_sweep: Instant,
    /// Membership changes proposed here: index → (term, reply).
    member_changes: HashMap<Index, (Term, oneshot::Sender<MemberReply>)>,
    /// The peers that senders run for, with their URLs.
    peers: BTreeMap<NodeId, String>,
    /// Peers a configuration entry removed, kept connected until that entry is applied: a
    /// leader that removes itself learns that the entry committed only from their
    /// acknowledgements (thesis §4.2.2). id → (entry index, URL).
    leaving: BTreeMap<NodeId, (Index, String)>,
    /// Where peer sender tasks run (they are started as members appear).
    tokio: tokio::runtime::Handle,
}

/// Opens storage, restores the core and starts the driver thread.
/// Must be called from within a tokio runtime: peer senders run on it.
pub fn start(cfg: NodeConfig) -> Result<NodeHandle, StartError> {
    let tokio = tokio::runtime::Handle::try_current().map_err(StartError::NoRuntime)?;
    cfg.check()?;
    let cluster = cfg.cluster()?;
    std::fs::create_dir_all(&cfg.data_dir).map_err(|source| StartError::DataDir {
        path: cfg.data_dir.clone(),
        source,
    })?;
    let storage = Arc::new(RedbStorage::open(
        &cfg.data_dir.join("db"),
        keel_storage::StorageOptions {
            two_phase_commit: cfg.two_phase_commit,
            ..keel_storage::StorageOptions::default()
        },
    )?);
    let identity = Identity {
        cluster,
        node: cfg.id,
    };
    let recovered = storage.recover()?;
    match recovered.identity {
        Some(found) if found != identity => {
            return Err(StartError::ForeignData {
                found,
                expected: identity,
            });
        }
        Some(_) => {}
        None => storage.set_identity(identity)?,
    }
    let runtime = Runtime::new(keel_plugin::RuntimeConfig {
        cache_dir: Some(cfg.data_dir.join("plugin-cache")),
        max_concurrent_calls: PLUGIN_INSTANCES,
        ..keel_plugin::RuntimeConfig::default()
    })
    .map_err(|e| StartError::Plugin(e.to_string()))?;
    let blobs = Blobs::new(Some(cfg.data_dir.join("blobs")), &[apply::BUILTIN_KV]);
    // Until the driver knows the membership: the configured peers, to fetch missing blobs.
    blobs.set_peers(
        cfg.peers
            .iter()
            .filter(|(id, _)| **id != cfg.id)
            .map(|(_, url)| url.clone())
            .collect(),
    );
    let registry = Registry::default();
    let view = storage.view()?;
    apply::reload(&runtime, &blobs, &registry, &view)
        .map_err(|e| StartError::Plugin(e.to_string()))?;

    let fresh = recovered.log.last.index == 0
        && recovered.hard_state.term == 0
        && recovered.snapshot.index == 0;
    let init = if fresh && cfg.join {
        // Design §7: a node that joins waits, detached, for a leader to add it; it learns
        // the membership from the log or a snapshot.
        InitialState::default()
    } else if fresh {
        let config = ClusterConfig {
            voters: cfg.peers.keys().copied().collect(),
            learners: Default::default(),
            addresses: cfg.peers.clone(),
        };
        // Storage keeps it too: snapshot images and restarts must carry the membership even
        // if no configuration entry is ever applied (Raft §7: a snapshot holds the latest
        // configuration).
        storage.bootstrap(&config)?;
        InitialState::bootstrap(config)
    } else {
        // The core keeps a snapshot to send to followers that are too far behind; rebuild it
        // from the applied state, which a restart never loses (design §4).
        let snapshot = SnapshotChunks::new(storage.view()?, 1 << 20).into_snapshot()?;
        let applied = snapshot.meta.index;
        let entries = if recovered.log.last.index > applied {
            storage.entries(applied + 1, recovered.log.last.index + 1, None)?
        } else {
            Vec::new()
        };
        InitialState {
            hard_state: recovered.hard_state,
            snapshot: Snapshot {
                meta: snapshot.meta,
                data: snapshot.data,
            },
            entries,
            applied,
        }
    };
    let applied = init.applied;
    let snapshot_index = init.snapshot.meta.index;
    let mut core_cfg = Config::new(cfg.id, cluster);
    core_cfg.election_ticks = cfg.election_ticks;
    core_cfg.heartbeat_ticks = cfg.heartbeat_ticks;
    core_cfg.lease_ticks = Config::lease_ticks_for(cfg.election_ticks);
    core_cfg.seed = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(cfg.id, |d| d.as_nanos() as u64)
        ^ cfg.id;
    let raft = Raft::new(core_cfg, init)?;

    let cfg = Arc::new(cfg);
    let status = Arc::new(Mutex::new(NodeStatus::default()));
    let (events, _) = broadcast::channel(256);
    let metrics = Arc::new(Metrics::default());
    let (tx, rx) = std::sync::mpsc::channel();
    let handle = NodeHandle {
        inputs: tx.clone(),
        status: status.clone(),
        events: events.clone(),
        registry: registry.clone(),
        storage: storage.clone(),
        metrics: metrics.clone(),
        config: cfg.clone(),
        cluster,
        query_slots: Arc::new(tokio::sync::Semaphore::new(QUERY_SLOTS)),
        unflushed: Arc::default(),
        runtime: runtime.clone(),
        blobs: blobs.clone(),
    };
    let outboxes = Outboxes::default();
    let apply_worker =
        ApplyWorker::start(runtime.clone(), blobs.clone(), registry.clone(), tx.clone())
            .map_err(StartError::Thread)?;
    let writer = LogWriter::start(
        storage.clone(),
        outboxes.clone(),
        tx.clone(),
        metrics.clone(),
    )
    .map_err(StartError::Thread)?;
    let mut driver = Driver {
        cfg,
        raft,
        storage,
        runtime,
        blobs,
        registry,
        outboxes,
        writer,
        status,
        events,
        metrics,
        pending: Vec::new(),
        pending_bytes: 0,
        proposals: HashMap::new(),
        reads: HashMap::new(),
        reads_waiting: Vec::new(),
        next_ctx: 1,
        applied,
        apply_worker,
        apply_queue: VecDeque::new(),
        applying: None,
        apply_epoch: 0,
        snapshot_index,
        snapshot_state: SnapshotState::Idle,
        inputs: tx.clone(),
        deploy_in_flight: None,
        fetching: None,
        unflushed: handle.unflushed.clone(),
        last_flush: Instant::now(),
        last_session_sweep: Instant::now(),
        member_changes: HashMap::new(),
        peers: BTreeMap::new(),
        leaving: BTreeMap::new(),
        tokio,
    };
    driver.connect_peers(0);
    driver.publish_status();
    std::thread::Builder::new()
        .name("keel-driver".into())
        .spawn(move || driver.run(rx))
        .map_err(StartError::Thread)?;
    Ok(handle)
}

/// Entries per apply batch: big enough to amortise a storage view and plugin instances,
/// small enough that one batch's replies are not held back long.
const MAX_APPLY_BATCH: usize = 4096;

/// Design §8: never continue on a state we cannot vouch for.
pub(crate) fn fail_stop(e: &anyhow::Error) -> ! {
    tracing::error!(target: "keel::raft", error = %e, "fail-stop");
    eprintln!("keel: fail-stop: {e}");
    std::process::exit(2);
}

/// The cut-off of an expiry proposed now: `ttl_ms` before the log's clock (design §5), that
/// is before the timestamp the `ExpireSessions` entry itself will carry (the core never lets
/// the log's clock run back), not before this node's wall clock, which may be behind the
/// clock of the leader before it (sessions would then outlive their TTL by the difference).
fn session_cutoff(raft: &Raft, wall_ms: u64, ttl_ms: u64) -> u64 {
    // As `Raft::propose` stamps it: the wall clock, never below the last entry's stamp.
    let log_ms = raft.entry(raft.last_index()).map_or(0, |e| e.timestamp_ms);
    wall_ms.max(log_ms).saturating_sub(ttl_ms)
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// The core's clock: one tick per `period` of the monotonic clock. Ticks missed while the
/// driver thread was busy are made up, not skipped, so that the core's count of ticks never
/// runs behind real time; a leader lease (thesis §6.4.1) is only as safe as that count.
struct TickClock {
    period: Duration,
    start: Instant,
    done: u64,
}

impl TickClock {
    fn new(period: Duration) -> Self {
        TickClock {
            period,
            start: Instant::now(),
            done: 0,
        }
    }

    /// Ticks due now that have not been made.
    fn due(&self) -> u64 {
        let elapsed = self.start.elapsed().as_nanos();
        let due = elapsed / self.period.as_nanos().max(1);
        u64::try_from(due)
            .unwrap_or(u64::MAX)
            .saturating_sub(self.done)
    }

    fn until_next(&self) -> Duration {
        let next_ns = self.period.as_nanos() * u128::from(self.done + 1);
        let next = Duration::from_nanos(u64::try_from(next_ns).unwrap_or(u64::MAX));
        next.saturating_sub(self.start.elapsed())
    }
}

impl Driver {
    /// Makes every tick that is due. After a long stall only the last `2 × election_ticks`
    /// are made one by one (every timer has expired by then; more would change nothing).
    fn catch_up_ticks(&mut self, clock: &mut TickClock) {
        let due = clock.due();
        if due == 0 {
            return;
        }
        let cap = u64::from(self.cfg.election_ticks) * 2;
        if due > cap {
            tracing::warn!(target: "keel::raft", missed_ticks = due, "driver thread was held up");
        }
        for _ in 0..due.min(cap) {
            self.raft.tick();
        }
        clock.done += due;
        self.maybe_deploy_builtin();
        self.maybe_expire_sessions();
    }

    fn run(&mut self, rx: Receiver<Input>) {
        let mut clock = TickClock::new(Duration::from_millis(self.cfg.tick_ms));
        loop {
            match rx.recv_timeout(clock.until_next()) {
                Ok(input) => {
                    // The ticks due go in before the input: a leader whose thread was held
                    // up must see its lease lapse before it answers a lease read.
                    self.catch_up_ticks(&mut clock);
                    self.input(input);
                }
                Err(RecvTimeoutError::Timeout) => {}
                Err(RecvTimeoutError::Disconnected) => return,
            }
            // Everything that queued meanwhile joins this batch (bounded, to keep ticks).
            for input in rx.try_iter().take(8192) {
                self.input(input);
            }
            self.catch_up_ticks(&mut clock);
            if self.last_flush.elapsed() >= Duration::from_millis(self.cfg.apply_flush_ms) {
                self.start_flush();
            }
            self.propose_pending();
            if let Err(e) = self.process_ready() {
                fail_stop(&e);
            }
        }
    }

    fn input(&mut self, input: Input) {
        match input {
            Input::Peer(msgs) => {
                for m in msgs {
                    tracing::debug!(target: "keel::msg", "recv {m}");
                    if let Err(e) = self.raft.step(m) {
                        self.metrics.foreign_cluster.inc();
                        tracing::warn!(target: "keel::msg", error = %e, "message refused");
                    }
                }
            }
            Input::Propose { reply, .. }
            | Input::Deploy { reply, .. }
            | Input::OpenSession(reply)
                if self.raft.role() == Role::Leader
                    && self.apply_lag() > self.cfg.max_apply_lag =>
            {
                // Backpressure instead of an unbounded queue behind a slow plugin.
                let lag = self.apply_lag();
                let _ = reply.send(CommandReply::Retry(format!(
                    "apply is {lag} entries behind the log; retry shortly"
                )));
            }
            Input::Propose {
                plugin,
                client,
                payload,
                reply,
            } => {
                let size = plugin.len() + payload.len() + 32;
                if self.pending_bytes + size > MAX_BATCH_BYTES
                    || self.pending.len() >= MAX_BATCH_COMMANDS
                {
                    self.propose_pending();
                }
                self.pending_bytes += size;
                let command = Command {
                    plugin,
                    client,
                    payload: Payload::Inline(payload),
                };
                self.pending.push((command, reply));
            }
            Input::Deploy { deploy, reply } => self.propose_for(Record::Deploy(deploy), reply),
            Input::OpenSession(reply) => self.propose_for(Record::OpenSession, reply),
            Input::Read { mode, reply } => {
                let ctx = self.next_ctx;
                self.next_ctx += 1;
                match self.raft.read_index(ctx, mode) {
                    Ok(()) => {
                        self.reads.insert(ctx, reply);
                    }
                    Err(ReadError::NotLeader { leader }) => {
                        let _ = reply.send(Err(ReadRefused::NotLeader(leader)));
                    }
                    Err(_) => {
                        let _ = reply.send(Err(ReadRefused::Retry));
                    }
                }
            }
            Input::Persisted(index, term) => self.raft.persisted(index, term),
            Input::Flushed(layer) => {
                {
                    let mut slot = self.unflushed.write().unwrap_or_else(|e| e.into_inner());
                    if slot.is_flushing(&layer) {
                        Arc::make_mut(&mut slot).flushed();
                    }
                }
                if self.snapshot_state == SnapshotState::AwaitingFlush
                    && let Err(e) = self.build_snapshot()
                {
                    fail_stop(&e);
                }
            }
            Input::BlobFetched { hash, found } => {
                if found && self.fetching == Some(hash) {
                    self.fetching = None;
                    if let Err(e) = self.dispatch_apply() {
                        fail_stop(&e);
                    }
                }
            }
            Input::SnapshotBuilt(built) => match built {
                Ok(snap) => self.snapshot_built(snap),
                Err(e) => fail_stop(&e.into()),
            },
            Input::Applied(done) => {
                if let Err(e) = self.applied_batch(*done) {
                    fail_stop(&e);
                }
            }
            Input::Members { change, reply } => self.change_members(change, reply),
            Input::Flush(done) => {
                self.flush();
                let _ = done.send(());
            }
            Input::Transfer(to) => {
                let ok = self.raft.transfer_leadership(to);
                tracing::info!(target: "keel::raft", to, ok, "leadership transfer requested");
            }
        }
    }

    /// Proposes one record whose applied outcome answers `reply` (a session, a deployment).
    fn propose_for(&mut self, record: Record, reply: Reply) {
        self.propose_answered(record, vec![reply]);
    }

    /// Proposes `record`; its applied outcomes answer `replies`, one per position in the
    /// entry. A refusal answers them all at once. Returns the index on success.
    fn propose_answered(&mut self, record: Record, replies: Vec<Reply>) -> Option<Index> {
        match self.raft.propose(record, now_ms()) {
            Ok((index, term)) => {
                self.proposals
                    .insert(index, (term, replies.into_iter().map(Some).collect()));
                Some(index)
            }
            Err(ProposeError::NotLeader { leader }) => {
                for reply in replies {
                    let _ = reply.send(CommandReply::NotLeader(leader));
                }
                None
            }
            Err(e) => {
                for reply in replies {
                    let _ = reply.send(CommandReply::Retry(e.to_string()));
                }
                None
            }
        }
    }

    /// Everything that queued since the last proposal becomes one entry: one log record,
    /// one storage row and one plugin instance per plugin for the lot, on every node.
    fn propose_pending(&mut self) {
        if self.pending.is_empty() {
            return;
        }
        self.pending_bytes = 0;
        let (mut commands, replies): (Vec<Command>, Vec<_>) =
            std::mem::take(&mut self.pending).into_iter().unzip();
        let n = commands.len();
        let record = if n == 1 {
            Record::Command(commands.remove(0))
        } else {
            Record::Batch(commands)
        };
        if let Some(index) = self.propose_answered(record, replies) {
            tracing::debug!(target: "keel::txn", index, commands = n, "proposed");
            self.metrics.proposals.inc_by(n as u64);
        }
    }

    /// The Ready handshake, until the core has nothing more to do.
    fn process_ready(&mut self) -> anyhow::Result<()> {
        while self.raft.has_ready() {
            let rd = self.raft.ready();
            self.handle_ready(rd)?;
        }
        self.publish_status();
        Ok(())
    }

    fn handle_ready(&mut self, rd: Ready) -> anyhow::Result<()> {
        let point = rd.persist_point();
        for ev in &rd.events {
            self.event(ev);
        }
        // 1. Leader appends and pre-votes leave now, in parallel with our own write.
        for m in rd.messages {
            self.outboxes.send(m);
        }
        let installs = rd.snapshot.is_some();
        if let Some(snap) = &rd.snapshot {
            // 2 and 3 here, in this thread: a snapshot replaces the applied state, which
            // the driver owns. Earlier writes go first (they must be durable in order).
            self.writer.wait_idle();
            // The part of the applied state not yet flushed goes too (it is all at or below
            // the commit index, which the snapshot is past): drop it in the same step, so no
            // reader sees the old storage without it.
            let mut slot = self.unflushed.write().unwrap_or_else(|e| e.into_inner());
            self.storage.persist(LogWrite {
                hard_state: rd.hard_state,
                snapshot: Some(snap),
                entries: &rd.entries,
            })?;
            *slot = Arc::default();
            drop(slot);
            self.metrics.fsyncs.inc();
            tracing::info!(target: "keel::raft", index = snap.meta.index, "installed snapshot");
            self.metrics.snapshots_installed.inc();
            self.applied = snap.meta.index;
            self.snapshot_index = snap.meta.index;
            // The snapshot replaces everything committed so far: what is queued or being
            // applied was computed on (or for) the state it replaced, and the replies
            // waiting on covered entries are answered now.
            self.apply_epoch += 1;
            self.applying = None;
            self.apply_queue.clear();
            self.fetching = None;
            self.answer_covered(snap.meta.index);
            let view = self.storage.view()?;
            apply::reload(&self.runtime, &self.blobs, &self.registry, &view)?;
            for m in rd.persisted_messages {
                self.outboxes.send(m);
            }
            if let Some((index, term)) = point {
                self.raft.persisted(index, term);
            }
        } else if rd.hard_state.is_some()
            || !rd.entries.is_empty()
            || !rd.persisted_messages.is_empty()
        {
            // 2 and 3 on the log writer: durable in order, then the acknowledgements, then
            // `Input::Persisted` back here. Meanwhile this thread applies and proposes.
            self.writer.submit(Write {
                hard_state: rd.hard_state,
                entries: rd.entries,
                then_send: rd.persisted_messages,
            });
        }
        // 4. Apply (the core hands out only entries durable here), on the apply worker.
        if !rd.committed_entries.is_empty() {
            self.apply_queue.extend(rd.committed_entries);
            self.dispatch_apply()?;
        }
        for rs in rd.read_states {
            let Some(reply) = self.reads.remove(&rs.ctx) else {
                continue;
            };
            match rs.index {
                Some(i) if i <= self.applied => {
                    let _ = reply.send(Ok(i));
                }
                Some(i) => self.reads_waiting.push((i, reply)),
                None => {
                    let _ = reply.send(Err(ReadRefused::Retry));
                }
            }
        }
        if installs {
            self.release_reads();
        }
        Ok(())
    }

    /// Entries committed but not yet applied here.
    fn apply_lag(&self) -> u64 {
        self.raft.commit_index().saturating_sub(self.applied)
    }

    /// Hands the queued entries to the apply worker, unless a batch is in flight: each batch
    /// must see the state the previous one left.
    ///
    /// Design §6: a `Deploy` whose plugin blob is not here waits for it, fetched on a
    /// thread of its own (the entries after it wait too: apply stays in log order).
    fn dispatch_apply(&mut self) -> anyhow::Result<()> {
        if self.applying.is_some() || self.fetching.is_some() || self.apply_queue.is_empty() {
            return Ok(());
        }
        // Only the entries of the next batch: the rest of the queue is looked at when its turn
        // comes (a full scan per batch would cost O(queue) on every dispatch under load).
        let missing = self
            .apply_queue
            .iter()
            .take(MAX_APPLY_BATCH)
            .position(|e| matches!(&e.record, Record::Deploy(d) if !self.blobs.has(&d.sha256)));
        if missing == Some(0) {
            if let Some(Record::Deploy(d)) = self.apply_queue.front().map(|e| e.record.clone()) {
                self.fetch_blob(&d)?;
            }
            return Ok(());
        }
        let n = self
            .apply_queue
            .len()
            .min(MAX_APPLY_BATCH)
            .min(missing.unwrap_or(usize::MAX));
        let entries: Vec<keel_raft::Entry> = self.apply_queue.drain(..n).collect();
        let job = ApplyJob {
            epoch: self.apply_epoch,
            view: Box::new(self.storage.view()?),
            unflushed: Arc::clone(&self.unflushed.read().unwrap_or_else(|e| e.into_inner())),
            entries,
        };
        self.applying = job.entries.last().map(|e| e.index);
        if !self.apply_worker.submit(job) {
            anyhow::bail!("the apply worker stopped");
        }
        Ok(())
    }

    /// The worker's result: absorbed into the applied state, then the next batch goes out.
    fn applied_batch(&mut self, done: ApplyDone) -> anyhow::Result<()> {
        if done.epoch != self.apply_epoch {
            return Ok(()); // computed before a snapshot install replaced the state
        }
        self.applying = None;
        self.metrics.apply_seconds.observe(done.took.as_secs_f64());
        self.absorb(&done.entries, done.result?)?;
        self.dispatch_apply()
    }

    fn absorb(&mut self, entries: &[keel_raft::Entry], applied: Applied) -> anyhow::Result<()> {
        apply::activate(&self.registry, applied.deployed);
        let last = applied.batch.last_applied;
        let waiting = {
            let mut slot = self.unflushed.write().unwrap_or_else(|e| e.into_inner());
            let unflushed = Arc::make_mut(&mut slot);
            unflushed.absorb(applied.batch);
            unflushed.len()
        };
        if waiting >= FLUSH_AT {
            self.flush();
        }
        tracing::debug!(target: "keel::txn", last = %last, n = entries.len(), "applied");
        self.metrics.applied.inc_by(entries.len() as u64);
        // The status says applied before any client hears its answer, so a client's next
        // request never meets a status from before its own command (e.g. "plugin not
        // active yet" while the deploy it waited for is applied).
        self.applied = last.index;
        self.raft.applied(last.index);
        {
            // Only the indices: the whole status is published once per loop iteration.
            let mut status = self.status.lock().unwrap_or_else(|e| e.into_inner());
            status.applied_index = self.applied;
            status.commit_index = self.raft.commit_index();
            status.last_log_index = self.raft.last_index();
        }
        for out in applied.results {
            let Some((t, replies)) = self.proposals.get_mut(&out.index) else {
                continue;
            };
            if *t != out.term {
                continue;
            }
            if let Some(reply) = replies
                .get_mut(out.position as usize)
                .and_then(Option::take)
            {
                let _ = reply.send(match out {
                    CommandOutcome {
                        unknown_session: true,
                        result,
                        ..
                    } => CommandReply::SessionUnknown(result.err().unwrap_or_default()),
                    out => CommandReply::Done {
                        index: out.index,
                        term: out.term,
                        position: out.position,
                        result: out.result,
                    },
                });
            }
        }
        for e in entries {
            if let Some((term, reply)) = self.member_changes.remove(&e.index) {
                let _ = reply.send(match &e.record {
                    Record::Config(config) if e.term == term => MemberReply::Done {
                        index: e.index,
                        config: config.clone(),
                    },
                    _ => MemberReply::Retry("the change was replaced by a new leader".into()),
                });
            }
            // Proposals whose index was taken by another record (a no-op of a new leader).
            for reply in self
                .proposals
                .remove(&e.index)
                .into_iter()
                .flat_map(|(_, replies)| replies.into_iter().flatten())
            {
                let _ = reply.send(CommandReply::Retry(
                    "the entry was replaced by a new leader".into(),
                ));
            }
            if self.deploy_in_flight == Some(e.index) {
                self.deploy_in_flight = None;
            }
        }
        if self
            .leaving
            .values()
            .any(|(index, _)| *index <= self.applied)
        {
            self.connect_peers(self.applied);
        }
        self.release_reads();
        self.maybe_snapshot()?;
        Ok(())
    }

    /// Hands what was applied since the last flush to the log writer, which writes it to
    /// storage in one transaction (non-durable: the next durable log commit carries it to
    /// disk) while this thread goes on. Readers see it as a layer of its own until then
    /// (`Unflushed::freeze`); `Input::Flushed` drops that layer. One flush at a time.
    /// Returns whether a flush is under way.
    fn start_flush(&mut self) -> bool {
        self.last_flush = Instant::now();
        let mut slot = self.unflushed.write().unwrap_or_else(|e| e.into_inner());
        if let Some(layer) = Unflushed::freeze(&mut slot) {
            self.writer.flush(layer);
        }
        slot.is_flushing_any()
    }

    /// Writes the whole applied state through to storage before returning (for the state
    /// hash, a clean stop, and a layer grown too large): the same freeze-and-write as
    /// `start_flush`, then waiting for the writer. Readers keep seeing each layer until
    /// storage holds it, so no lock is held across the writes. (A storage failure stops the
    /// process on the writer.)
    fn flush(&mut self) {
        // A flush under way is in storage once this returns; its layer can go.
        self.writer.wait_idle();
        {
            let mut slot = self.unflushed.write().unwrap_or_else(|e| e.into_inner());
            if slot.is_flushing_any() {
                Arc::make_mut(&mut slot).flushed();
            }
        }
        if self.start_flush() {
            self.writer.wait_idle();
            let mut slot = self.unflushed.write().unwrap_or_else(|e| e.into_inner());
            Arc::make_mut(&mut slot).flushed();
        }
    }

    /// Fetches a plugin blob from the peers until one has it, beside the driver; reports
    /// with `Input::BlobFetched`.
    fn fetch_blob(&mut self, d: &Deploy) -> anyhow::Result<()> {
        let hash = d.sha256;
        if self.fetching == Some(hash) {
            return Ok(());
        }
        tracing::warn!(target: "keel::txn", plugin = %d.plugin, version = %d.version, blob = %blobs::hex(&hash), "apply waits for the plugin's blob, fetching it from peers");
        self.fetching = Some(hash);
        let (blobs, inputs) = (self.blobs.clone(), self.inputs.clone());
        std::thread::Builder::new()
            .name("keel-blob-fetch".into())
            .spawn(move || {
                loop {
                    let found = blobs.get(&hash).is_some();
                    if !found {
                        tracing::warn!(target: "keel::txn", blob = %blobs::hex(&hash), "no peer has the blob yet; apply keeps waiting");
                    }
                    // Also how the thread learns that the driver has stopped.
                    if inputs.send(Input::BlobFetched { hash, found }).is_err() || found {
                        return;
                    }
                    std::thread::sleep(Duration::from_secs(1));
                }
            })?;
        Ok(())
    }

    /// Entries up to `index` arrived in an installed snapshot and will never be applied
    /// here one by one: the replies waiting on them are answered now (their outcome cannot
    /// be told: the entry may or may not be the one the leader committed) and their slots
    /// freed, instead of waiting out the client's timeout.
    fn answer_covered(&mut self, index: Index) {
        let why = format!(
            "entry replaced by a snapshot up to index {index} before it was applied here; outcome unknown, retry with the same serial"
        );
        self.proposals.retain(|&i, (_, replies)| {
            if i > index {
                return true;
            }
            for reply in replies.drain(..).flatten() {
                let _ = reply.send(CommandReply::OutcomeUnknown(why.clone()));
            }
            false
        });
        let covered: Vec<Index> = self
            .member_changes
            .keys()
            .copied()
            .filter(|&i| i <= index)
            .collect();
        for i in covered {
            if let Some((_, reply)) = self.member_changes.remove(&i) {
                let _ = reply.send(MemberReply::Retry(format!(
                    "{why} (the configuration in force is in /v1/status)"
                )));
            }
        }
        if self.deploy_in_flight.is_some_and(|i| i <= index) {
            self.deploy_in_flight = None;
        }
    }

    fn release_reads(&mut self) {
        let applied = self.applied;
        let (ready, waiting): (Vec<_>, Vec<_>) = self
            .reads_waiting
            .drain(..)
            .partition(|(i, _)| *i <= applied);
        self.reads_waiting = waiting;
        for (i, reply) in ready {
            let _ = reply.send(Ok(i));
        }
    }

    /// Snapshots are built from the applied (hence committed) state as storage holds it
    /// after a flush (thesis §5.1: a snapshot covers a committed prefix), on a thread of
    /// their own from a read transaction, so neither the driver nor writes wait for one.
    /// Steps: start a flush here; `Input::Flushed` builds; `Input::SnapshotBuilt` compacts.
    fn maybe_snapshot(&mut self) -> anyhow::Result<()> {
        if self.snapshot_state != SnapshotState::Idle
            || self.applied < self.snapshot_index + self.cfg.snapshot_every
        {
            return Ok(());
        }
        self.snapshot_state = SnapshotState::AwaitingFlush;
        if !self.start_flush() {
            // Storage holds everything applied already.
            self.build_snapshot()?;
        }
        Ok(())
    }

    fn build_snapshot(&mut self) -> anyhow::Result<()> {
        let view = self.storage.view()?;
        if view.applied().last_applied.index <= self.snapshot_index {
            self.snapshot_state = SnapshotState::Idle;
            return Ok(());
        }
        self.snapshot_state = SnapshotState::Building;
        let inputs = self.inputs.clone();
        std::thread::Builder::new()
            .name("keel-snapshot".into())
            .spawn(move || {
                let built = SnapshotChunks::new(view, 1 << 20).into_snapshot();
                let _ = inputs.send(Input::SnapshotBuilt(built));
            })?;
        Ok(())
    }

    fn snapshot_built(&mut self, snap: Snapshot) {
        self.snapshot_state = SnapshotState::Idle;
        let meta = snap.meta.clone();
        // Refused as stale if a leader's snapshot was installed meanwhile.
        if self.raft.compact(meta.index, snap.data).is_ok() {
            tracing::info!(target: "keel::raft", index = meta.index, "snapshot taken, log compacted");
            self.snapshot_index = meta.index;
            self.writer.purge(meta);
        }
    }

    /// Thesis §6.3: sessions expire by the log's clock, so every node drops the same ones at
    /// the same entry. The leader proposes the cut-off now and then (a tenth of the TTL).
    fn maybe_expire_sessions(&mut self) {
        let ttl = self.cfg.session_ttl_ms;
        if ttl == 0 || self.raft.role() != Role::Leader {
            return;
        }
        let every = Duration::from_millis((ttl / 10).max(100));
        if self.last_session_sweep.elapsed() < every {
            return;
        }
        self.last_session_sweep = Instant::now();
        let now = now_ms();
        let record = Record::ExpireSessions {
            before_ms: session_cutoff(&self.raft, now, ttl),
        };
        if let Ok((index, _)) = self.raft.propose(record, now) {
            tracing::debug!(target: "keel::txn", index, "proposed session expiry");
        }
    }

    /// A new cluster gets the embedded kv plugin, deployed through the log like any other.
    fn maybe_deploy_builtin(&mut self) {
        if !self.cfg.builtin_kv
            || self.raft.role() != Role::Leader
            || self.deploy_in_flight.is_some()
            || self.registry.get("kv").is_some()
        {
            return;
        }
        let sha256 = blobs::sha256(apply::BUILTIN_KV);
        let deploy = Deploy {
            plugin: "kv".into(),
            version: format!("builtin-{}", &blobs::hex(&sha256)[..12]),
            sha256,
            fuel_per_apply: 100_000_000,
            memory_limit: 128 << 20,
        };
        if let Ok((index, _)) = self.raft.propose(Record::Deploy(deploy), now_ms()) {
            tracing::info!(target: "keel::txn", index, "proposed deployment of the built-in kv plugin");
            self.deploy_in_flight = Some(index);
        }
    }

    /// Proposes a single-server change against the configuration in force (thesis §4.1: it
    /// takes effect as soon as it is in the log; the core refuses a second one until the
    /// first is committed).
    fn change_members(&mut self, change: MemberChange, reply: oneshot::Sender<MemberReply>) {
        let mut config = self.raft.config().clone();
        let invalid = match &change {
            MemberChange::AddLearner { id, url } => {
                if config.contains(*id) {
                    Some(MemberReply::Refused(format!(
                        "node {id} is already a member"
                    )))
                } else {
                    config.learners.insert(*id);
                    config.addresses.insert(*id, url.clone());
                    None
                }
            }
            MemberChange::Promote(id) => {
                if !config.learners.contains(id) {
                    Some(MemberReply::Refused(format!("node {id} is not a learner")))
                } else if let Some(behind) = self.learner_behind(*id) {
                    Some(MemberReply::Refused(behind))
                } else {
                    config.learners.remove(id);
                    config.voters.insert(*id);
                    None
                }
            }
            MemberChange::Remove(id) => {
                if config.contains(*id) {
                    config.voters.remove(id);
                    config.learners.remove(id);
                    config.addresses.remove(id);
                    None
                } else {
                    Some(MemberReply::Refused(format!("node {id} is not a member")))
                }
            }
        };
        if let Some(answer) = invalid {
            let _ = reply.send(answer);
            return;
        }
        match self.raft.propose(Record::Config(config), now_ms()) {
            Ok((index, term)) => {
                tracing::info!(target: "keel::raft", index, ?change, "membership change proposed");
                self.member_changes.insert(index, (term, reply));
            }
            Err(ProposeError::NotLeader { leader }) => {
                let _ = reply.send(MemberReply::NotLeader(leader));
            }
            Err(ProposeError::Config(keel_raft::ConfigChangeError::NoVoters)) => {
                let _ = reply.send(MemberReply::Refused(
                    "the last voter cannot be removed".into(),
                ));
            }
            Err(e) => {
                let _ = reply.send(MemberReply::Retry(e.to_string()));
            }
        }
    }

    /// Why learner `id` may not become a voter yet, on the leader: an empty voter is one
    /// more failure the cluster cannot take (issue #15). Like etcd, it must hold at least
    /// 90% of the committed log. Elsewhere `None`: the proposal then fails as not-leader.
    fn learner_behind(&self, id: NodeId) -> Option<String> {
        if self.raft.role() != Role::Leader {
            return None;
        }
        let status = self.raft.status();
        let matched = status.progress.get(&id).map_or(0, |p| p.match_index);
        let commit = status.commit;
        (matched == 0 || commit.saturating_sub(matched) > commit / 10).then(|| {
            format!(
                "node {id} is not caught up: it holds the log to index {matched} of {commit} \
                 committed; promote it once it has caught up (keel status shows its lag)"
            )
        })
    }

    /// Every member's address but ours: from the configuration in force, falling back to the
    /// config file's peers (a joining node knows the cluster only from there).
    fn member_addresses(&self) -> BTreeMap<NodeId, String> {
        let config = self.raft.config();
        let mut out: BTreeMap<NodeId, String> = if config.members().next().is_some() {
            config
                .members()
                .filter_map(|id| self.member_url(id).map(|u| (id, u)))
                .collect()
        } else {
            self.cfg.peers.clone()
        };
        out.remove(&self.cfg.id);
        out
    }

    /// Starts a sender for each new member and stops those of members that left, once the
    /// entry that removed them (at `config_index`) is applied.
    fn connect_peers(&mut self, config_index: Index) {
        let mut members = self.member_addresses();
        for (id, url) in &self.peers {
            if !members.contains_key(id) {
                self.leaving
                    .entry(*id)
                    .or_insert_with(|| (config_index, url.clone()));
            }
        }
        let applied = self.applied;
        self.leaving
            .retain(|id, (index, _)| !members.contains_key(id) && *index > applied);
        for (id, (_, url)) in &self.leaving {
            members.insert(*id, url.clone());
        }
        self.peers = members.clone();
        self.blobs.set_peers(members.values().cloned().collect());
        for (id, rx) in self.outboxes.connect(&members) {
            let url = members[&id].clone();
            tracing::info!(target: "keel::msg", peer = id, %url, "connecting to peer");
            self.tokio
                .spawn(crate::transport::peer_sender(url, rx, self.metrics.clone()));
        }
    }

    fn event(&mut self, ev: &Event) {
        let json = match ev {
            Event::State { role, term, leader } => {
                tracing::info!(target: "keel::raft", ?role, term, ?leader, "state");
                if *role != Role::Leader {
                    self.deploy_in_flight = None;
                }
                serde_json::json!({"type": "state", "role": format!("{role:?}"), "term": term, "leader": leader})
            }
            Event::Config { index, config } => {
                tracing::info!(target: "keel::raft", index, ?config, "configuration");
                self.connect_peers(*index);
                serde_json::json!({"type": "config", "index": index, "voters": config.voters, "learners": config.learners})
            }
        };
        let _ = self.events.send(json.to_string());
    }

    fn publish_status(&mut self) {
        let s = self.raft.status();
        let leader_url = s.leader.and_then(|l| self.member_url(l));
        let members = s
            .config
            .members()
            .map(|id| (id, self.member_url(id).unwrap_or_default()))
            .collect();
        self.metrics.term.set(s.term as i64);
        self.metrics.commit_index.set(s.commit as i64);
        self.metrics.applied_index.set(self.applied as i64);
        self.metrics.apply_lag.set(self.apply_lag() as i64);
        self.metrics
            .is_leader
            .set(i64::from(s.role == Role::Leader));
        let status = NodeStatus {
            node_id: s.id,
            role: format!("{:?}", s.role),
            term: s.term,
            leader_id: s.leader,
            leader_url,
            commit_index: s.commit,
            applied_index: self.applied,
            last_log_index: s.last_index,
            cluster_id: self.cfg.cluster_id.clone(),
            members,
            voters: s.config.voters.iter().copied().collect(),
            learners: s.config.learners.iter().copied().collect(),
            plugins: self.registry.names(),
            apply_lag: self.apply_lag(),
            lease_ms_left: u64::from(s.lease_ticks_left) * self.cfg.tick_ms,
        };
        *self.status.lock().unwrap_or_else(|e| e.into_inner()) = status;
    }

    fn member_url(&self, id: NodeId) -> Option<String> {
        self.raft
            .config()
            .addresses
            .get(&id)
            .cloned()
            .or_else(|| self.cfg.peers.get(&id).cloned())
    }
}

#[cfg(test)]
#[path = "node_tests.rs"]
mod tests;
