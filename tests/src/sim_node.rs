//! One simulated node: the real driver (`keel::driver::Driver`), the real apply path and
//! plugin runtime running the real kv plugin, and `MemStorage`, wired to the simulator
//! through [`SimIo`]. The driver's effects (sends, writes, apply batches, snapshot builds,
//! snapshot transfers, blob fetches) are recorded in order; the simulator decides when each completes.

use std::collections::{BTreeMap, VecDeque};
use std::sync::{Arc, Mutex, OnceLock, RwLock};

use keel::blobs::Blobs;
use keel::config::NodeConfig;
use keel::driver::{
    ApplyJob, CommandReply, Driver, DriverBug, DriverParts, Input, Io, NodeStatus, NodeStore,
    ReadReply, WriterJob, WriterOut,
};
use keel::metrics::Metrics;
use keel::state::{self, Registry, Unflushed};
use keel_plugin::Runtime;
use keel_raft::{ClusterId, Entry, Message, NodeId, Raft, SnapshotMeta};
use keel_storage::{ApplyBatch, LogId, LogWrite, MemStorage, StateView, Storage, StorageError};
use tokio::sync::{broadcast, oneshot};

use crate::kv::Key;

/// The dry-run journal runs in the simulator too: it reads what every write overwrites on
/// the apply path, which must change no answer and no state.
const SIM_JOURNAL_BYTES: usize = 1 << 20;

/// One plugin runtime for every simulated node of the process: the engine and the compiled
/// kv plugin are shared (plugins are deterministic, so sharing changes no outcome).
pub(crate) fn runtime() -> &'static Runtime {
    static RUNTIME: OnceLock<Runtime> = OnceLock::new();
    RUNTIME.get_or_init(|| {
        Runtime::new(keel_plugin::RuntimeConfig {
            max_concurrent_calls: 64,
            ..keel_plugin::RuntimeConfig::default()
        })
        .unwrap_or_else(|e| panic!("plugin runtime: {e}"))
    })
}

/// Something the driver did, in the order it did it.
pub(crate) enum Effect {
    /// A message that may leave now.
    Send(Message),
    /// Entries handed to the log writer (checked as written, Log Matching).
    Wrote(Vec<Entry>),
    /// A snapshot installed (written at once, with the entries beside it).
    Installed(SnapshotMeta, Vec<Entry>),
    /// The writer has jobs queued: an fsync is due.
    Queued,
    /// An apply batch for the worker.
    Apply(ApplyJob),
    /// A snapshot to stream: the message and a view of the image.
    SendSnapshot(Message, Box<dyn StateView + Send>),
    /// A blob fetch.
    Fetch([u8; 32]),
    /// An input produced at once (by a writer round the driver waited for).
    Input(Input),
}

#[derive(Default)]
pub(crate) struct Effects {
    pub(crate) out: VecDeque<Effect>,
    pub(crate) writer_queue: Vec<WriterJob>,
}

/// The store as the driver sees it: `MemStorage`, with snapshot installs reported.
pub(crate) struct SimStore {
    pub(crate) mem: Arc<MemStorage>,
    fx: Arc<Mutex<Effects>>,
}

impl NodeStore for SimStore {
    fn view(&self) -> Result<Box<dyn StateView + Send>, StorageError> {
        Ok(Box::new(Storage::view(&*self.mem)?))
    }
    fn persist(&self, write: LogWrite<'_>) -> Result<LogId, StorageError> {
        if let Some(snap) = write.snapshot {
            lock(&self.fx)
                .out
                .push_back(Effect::Installed(snap.meta.clone(), write.entries.to_vec()));
        }
        Storage::persist(&*self.mem, write)
    }
    fn apply(&self, batch: &ApplyBatch) -> Result<(), StorageError> {
        Storage::apply(&*self.mem, batch)
    }
    fn purge(&self, meta: &SnapshotMeta) -> Result<(), StorageError> {
        Storage::purge(&*self.mem, meta)
    }
}

pub(crate) fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// The driver's world in the simulator.
struct SimIo {
    fx: Arc<Mutex<Effects>>,
    store: Arc<SimStore>,
    metrics: Arc<Metrics>,
    clock: Arc<Mutex<u64>>,
}

/// Collects a writer round's results as effects.
pub(crate) struct Collect(pub(crate) Vec<Effect>);

impl WriterOut for Collect {
    fn send(&mut self, m: Message) {
        self.0.push(Effect::Send(m));
    }
    fn input(&mut self, input: Input) {
        self.0.push(Effect::Input(input));
    }
}

impl Io for SimIo {
    fn wall_ms(&self) -> u64 {
        *lock(&self.clock)
    }
    fn mono_ms(&self) -> u64 {
        *lock(&self.clock)
    }
    fn send(&mut self, m: Message) {
        lock(&self.fx).out.push_back(Effect::Send(m));
    }
    fn write(&mut self, job: WriterJob) {
        let mut fx = lock(&self.fx);
        if let WriterJob::Write(w) = &job
            && !w.entries.is_empty()
        {
            fx.out.push_back(Effect::Wrote(w.entries.clone()));
        }
        fx.writer_queue.push(job);
        fx.out.push_back(Effect::Queued);
    }
    fn wait_idle(&mut self) {
        // The driver blocks until the disk is done: the round runs now.
        let jobs = std::mem::take(&mut lock(&self.fx).writer_queue);
        let mut out = Collect(Vec::new());
        let result = keel::driver::writer_round(jobs, &*self.store, &self.metrics, &mut out);
        let mut fx = lock(&self.fx);
        if let Err(e) = result {
            // Storage failures are not simulated; surface one as a harness error.
            panic!("storage refused a write: {e}");
        }
        fx.out.extend(out.0);
    }
    fn apply(&mut self, job: ApplyJob) {
        lock(&self.fx).out.push_back(Effect::Apply(job));
    }
    fn send_snapshot(&mut self, (m, view): keel::peer::SnapshotJob) {
        lock(&self.fx).out.push_back(Effect::SendSnapshot(m, view));
    }
    fn fetch_blob(&mut self, hash: [u8; 32]) {
        lock(&self.fx).out.push_back(Effect::Fetch(hash));
    }
    fn connect(&mut self, _peers: &BTreeMap<NodeId, String>) {}
}

/// A reply the simulator waits for on behalf of a client.
pub(crate) enum Waiting {
    Session(oneshot::Receiver<CommandReply>),
    /// A write, and what it expects (the plugin answers a successful CAS with the new value).
    Write(oneshot::Receiver<CommandReply>, Option<u64>),
    Read(oneshot::Receiver<ReadReply>, Key),
}

/// A simulated node: the running driver (none while crashed) and what survives a crash.
pub(crate) struct SimNode {
    pub(crate) driver: Option<Driver>,
    /// The disk: survives crashes, minus applies that were not durable.
    pub(crate) mem: Arc<MemStorage>,
    pub(crate) store: Arc<SimStore>,
    pub(crate) fx: Arc<Mutex<Effects>>,
    pub(crate) registry: Registry,
    pub(crate) blobs: Blobs,
    pub(crate) unflushed: Arc<RwLock<Arc<Unflushed>>>,
    pub(crate) events: Option<broadcast::Receiver<String>>,
    /// The driver's published status (what `GET /v1/status` shows).
    pub(crate) status: Arc<Mutex<NodeStatus>>,
    /// When each blob was stored here (virtual ms): garbage collection's grace period.
    pub(crate) blob_times: std::collections::HashMap<[u8; 32], u64>,
    pub(crate) metrics: Arc<Metrics>,
    pub(crate) fsync_scheduled: bool,
    /// A stalled disk completes no fsync before this time.
    pub(crate) stalled_until: u64,
    pub(crate) restarts: u64,
    /// This node's tick period: its clock's rate.
    pub(crate) tick_ms: u64,
    /// While frozen the node processes nothing; its clock runs on, and it catches up the
    /// ticks it missed when it thaws, before anything else (as the real driver does).
    pub(crate) frozen_until: u64,
    pub(crate) frozen: bool,
    pub(crate) missed_ticks: u64,
    /// Ticks this node has made as leader of its current term.
    pub(crate) leader_ticks: u32,
    /// Apply batches handed to the worker, in order; the front one is being applied.
    pub(crate) applying: VecDeque<ApplyJob>,
    /// (client, attempt, reply) the clients wait for.
    pub(crate) waiting: Vec<(usize, u64, Waiting)>,
}

impl SimNode {
    pub(crate) fn new(tick_ms: u64) -> SimNode {
        let mem = Arc::new(MemStorage::new());
        let fx = Arc::new(Mutex::new(Effects::default()));
        SimNode {
            driver: None,
            store: Arc::new(SimStore {
                mem: mem.clone(),
                fx: fx.clone(),
            }),
            mem,
            fx,
            registry: Registry::with_journal(SIM_JOURNAL_BYTES),
            blobs: Blobs::new(None, &[state::BUILTIN_KV]),
            unflushed: Arc::default(),
            events: None,
            status: Arc::default(),
            blob_times: Default::default(),
            metrics: Arc::new(Metrics::default()),
            fsync_scheduled: false,
            stalled_until: 0,
            restarts: 0,
            tick_ms,
            frozen_until: 0,
            frozen: false,
            missed_ticks: 0,
            leader_ticks: 0,
            applying: VecDeque::new(),
            waiting: Vec::new(),
        }
    }

    pub(crate) fn raft(&self) -> Option<&Raft> {
        self.driver.as_ref().map(Driver::raft)
    }

    /// Starts the real driver on this node's disk, as `keel serve` does after a (re)start:
    /// plugins reloaded from storage, the core restored from the applied state and the log.
    /// Returns what the core was restored with, for the invariant checker.
    pub(crate) fn start(
        &mut self,
        cfg: NodeConfig,
        core: impl FnOnce(&NodeConfig) -> keel_raft::Config,
        cluster: ClusterId,
        clock: Arc<Mutex<u64>>,
        bug: Option<DriverBug>,
    ) -> Result<(SnapshotMeta, Vec<Entry>, u64), String> {
        // Everything in memory is new; only the disk survived.
        self.fx = Arc::new(Mutex::new(Effects::default()));
        self.store = Arc::new(SimStore {
            mem: self.mem.clone(),
            fx: self.fx.clone(),
        });
        self.registry = Registry::with_journal(SIM_JOURNAL_BYTES);
        // The blob store is on disk in `keel serve` (written durably): it survives too.
        self.unflushed = Arc::default();
        self.status = Arc::default();
        self.metrics = Arc::new(Metrics::default());
        let init = keel::driver::open_state(
            &*self.mem,
            &cfg,
            cluster,
            runtime(),
            &self.blobs,
            &self.registry,
        )
        .map_err(|e| e.to_string())?;
        let restored = (init.snapshot.clone(), init.entries.clone(), init.applied);
        let (applied, snapshot_index) = (init.applied, init.snapshot.index);
        let raft = Raft::new(core(&cfg), init).map_err(|e| e.to_string())?;
        let (events, rx) = broadcast::channel(1024);
        self.events = Some(rx);
        let io = SimIo {
            fx: self.fx.clone(),
            store: self.store.clone(),
            metrics: self.metrics.clone(),
            clock,
        };
        self.driver = Some(Driver::new(DriverParts {
            cfg: Arc::new(cfg),
            raft,
            applied,
            snapshot_index,
            storage: self.store.clone(),
            io: Box::new(io),
            runtime: runtime().clone(),
            blobs: self.blobs.clone(),
            registry: self.registry.clone(),
            status: self.status.clone(),
            events,
            metrics: self.metrics.clone(),
            unflushed: self.unflushed.clone(),
            bug,
        }));
        Ok(restored)
    }

    /// Loses everything not durable: the driver with its replies, queued writes, apply
    /// batches under way, and applies storage had not made durable.
    pub(crate) fn crash(&mut self) {
        self.driver = None;
        self.mem.crash();
        *lock(&self.fx) = Effects::default();
        self.fsync_scheduled = false;
        self.applying.clear();
        self.waiting.clear();
        self.events = None;
        self.leader_ticks = 0;
        self.frozen = false;
        self.missed_ticks = 0;
        self.restarts += 1;
    }

    /// The kv plugin's answer to a `get`, read as the HTTP layer reads: storage plus the
    /// applied state not yet flushed, taken together.
    pub(crate) fn query(&self, key: Key) -> Result<Option<u64>, String> {
        let plugin = self.registry.get("kv").ok_or("kv is not active")?;
        let (view, unflushed) = {
            let slot = self.unflushed.read().unwrap_or_else(|e| e.into_inner());
            let view = Storage::view(&*self.mem).map_err(|e| e.to_string())?;
            (view, Arc::clone(&slot))
        };
        let kv = state::query_view(Box::new(view), unflushed, "kv".into());
        let q = serde_json::json!({"op": "get", "key": format!("k{key}")});
        let out = plugin
            .query(kv, q.to_string().as_bytes())
            .map_err(|e| e.to_string())?;
        let v: serde_json::Value = serde_json::from_slice(&out).map_err(|e| e.to_string())?;
        parse_value(&v["value"])
    }

    /// The real state hash of everything applied (after a flush).
    pub(crate) fn state_hash(&self) -> Result<String, String> {
        let view = Storage::view(&*self.mem).map_err(|e| e.to_string())?;
        state::state_hash(&view).map_err(|e| e.to_string())
    }

    /// A dry run of the active kv against this node's own journal (issue #12): the same
    /// version, from the rewound state, must differ nowhere, or the journal does not undo
    /// what the node applied (through batches, flushes, restarts and snapshot installs).
    pub(crate) fn replay_own_journal(&self) -> Result<Option<state::DryRunReport>, String> {
        let Some(kv) = self.registry.get("kv") else {
            return Ok(None);
        };
        let slot = self.unflushed.read().unwrap_or_else(|e| e.into_inner());
        let view = Storage::view(&*self.mem).map_err(|e| e.to_string())?;
        let (records, available) = self.registry.journal().last("kv", usize::MAX);
        let unflushed = Arc::clone(&slot);
        drop(slot);
        state::dry_run(
            &kv,
            &records,
            available,
            Box::new(view),
            unflushed,
            self.blobs.clone(),
        )
        .map(Some)
        .map_err(|e| e.to_string())
    }
}

/// A kv value as the simulator's clients write them (decimal strings), or null.
pub(crate) fn parse_value(v: &serde_json::Value) -> Result<Option<u64>, String> {
    match v {
        serde_json::Value::Null => Ok(None),
        serde_json::Value::String(s) => s.parse().map(Some).map_err(|e| format!("{s:?}: {e}")),
        other => Err(format!("unexpected value {other}")),
    }
}
