//! Starting a node for `keel serve`: open storage, recover, restore the core, start the
//! threads the driver's effects run on, and the driver's own loop, paced by the monotonic
//! clock.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc::{Receiver, RecvTimeoutError};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use keel_plugin::Runtime;
use keel_raft::{ClusterConfig, ClusterId, Config, InitialState, Raft};
use keel_storage::{Identity, RedbStorage, Storage};
use tokio::sync::broadcast;

use super::apply_worker::ApplyWorker;
use super::io::{NodeStore, ThreadIo};
use super::log_writer::LogWriter;
use super::{Driver, DriverParts, Input, NodeHandle, NodeStatus, fail_stop};
use crate::blobs::Blobs;
use crate::config::NodeConfig;
use crate::metrics::Metrics;
use crate::peer::Outboxes;
use crate::state::{self, Registry};

/// Plugin instances live at once: queries plus the one apply in progress.
const PLUGIN_INSTANCES: u32 = 64;
/// Of those, how many queries may use at once.
const QUERY_SLOTS: usize = 48;

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

/// Checks that `storage` belongs to this node, reloads the plugins it records, and returns
/// the state to restore the core with: a new cluster's bootstrap configuration, a joining
/// node's empty state, or what a restart recovers. Shared by `keel serve` and the simulator.
pub fn open_state<S: Storage>(
    storage: &S,
    cfg: &NodeConfig,
    cluster: ClusterId,
    runtime: &Runtime,
    blobs: &Blobs,
    registry: &Registry,
) -> Result<InitialState, StartError> {
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
    let view = storage.view()?;
    state::reload(runtime, blobs, registry, &view)
        .map_err(|e| StartError::Plugin(e.to_string()))?;

    let fresh = recovered.log.last.index == 0
        && recovered.hard_state.term == 0
        && recovered.snapshot.index == 0;
    Ok(if fresh && cfg.join {
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
        // The applied state, which a restart never loses (design §4), is the snapshot: the
        // core keeps only where it stands, and nothing here reads the state itself.
        let snapshot = super::upkeep::applied_meta(&storage.view()?);
        let applied = snapshot.index;
        let entries = if recovered.log.last.index > applied {
            storage.entries(applied + 1, recovered.log.last.index + 1, None)?
        } else {
            Vec::new()
        };
        InitialState {
            hard_state: recovered.hard_state,
            snapshot,
            entries,
            applied,
        }
    })
}

/// The core's configuration from the node's; `seed` varies election timeouts.
pub fn core_config(cfg: &NodeConfig, cluster: ClusterId, seed: u64) -> Config {
    let mut core = Config::new(cfg.id, cluster);
    core.election_ticks = cfg.election_ticks;
    core.heartbeat_ticks = cfg.heartbeat_ticks;
    core.lease_ticks = Config::lease_ticks_for(cfg.election_ticks);
    core.seed = seed;
    core
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
    // Images staged by a previous run were never installed: the core asks again.
    crate::peer::snapshot::clear_staging(&cfg.data_dir.join(crate::peer::snapshot::STAGING_DIR));
    let storage = Arc::new(RedbStorage::open(
        &cfg.data_dir.join("db"),
        keel_storage::StorageOptions {
            two_phase_commit: cfg.two_phase_commit,
            cache_bytes: usize::try_from(cfg.storage_cache_bytes).unwrap_or(usize::MAX),
            ..keel_storage::StorageOptions::default()
        },
    )?);
    let runtime = Runtime::new(keel_plugin::RuntimeConfig {
        cache_dir: Some(cfg.data_dir.join("plugin-cache")),
        max_concurrent_calls: PLUGIN_INSTANCES,
        ..keel_plugin::RuntimeConfig::default()
    })
    .map_err(|e| StartError::Plugin(e.to_string()))?;
    let blobs = Blobs::new(Some(cfg.data_dir.join("blobs")), &[state::BUILTIN_KV]);
    blobs.set_fetch_budget(cfg.blob_fetch_bytes_per_sec);
    blobs.set_cluster(&cfg.cluster_id);
    // Until the driver knows the membership: the configured peers, to fetch missing blobs.
    blobs.set_peers(
        cfg.peers
            .iter()
            .filter(|(id, _)| **id != cfg.id)
            .map(|(_, url)| url.clone())
            .collect(),
    );
    let registry = Registry::with_journal(cfg.dry_run_journal_bytes);
    let init = open_state(&*storage, &cfg, cluster, &runtime, &blobs, &registry)?;
    let (applied, snapshot_index) = (init.applied, init.snapshot.index);
    let seed = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(cfg.id, |d| d.as_nanos() as u64)
        ^ cfg.id;
    let raft = Raft::new(core_config(&cfg, cluster, seed), init)?;

    let cfg = Arc::new(cfg);
    let status = Arc::new(Mutex::new(NodeStatus::default()));
    let (events, _) = broadcast::channel(256);
    let metrics = Arc::new(Metrics::default());
    let (tx, rx) = std::sync::mpsc::channel();
    let handle = NodeHandle {
        inputs: tx.clone(),
        queued: Arc::default(),
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
    let store: Arc<dyn NodeStore> = storage;
    let writer = LogWriter::start(store.clone(), outboxes.clone(), tx.clone(), metrics.clone())
        .map_err(StartError::Thread)?;
    let io = ThreadIo {
        inputs: tx,
        outboxes,
        writer,
        apply_worker,
        blobs: blobs.clone(),
        metrics: metrics.clone(),
        tokio,
        started: Instant::now(),
    };
    let tick = Duration::from_millis(cfg.tick_ms);
    let driver = Driver::new(DriverParts {
        cfg,
        raft,
        applied,
        snapshot_index,
        storage: store,
        io: Box::new(io),
        runtime,
        blobs,
        registry,
        status,
        events,
        metrics,
        unflushed: handle.unflushed.clone(),
        bug: None,
    });
    std::thread::Builder::new()
        .name("keel-driver".into())
        .spawn({
            let queued = handle.queued.clone();
            move || run(driver, &rx, &queued, tick)
        })
        .map_err(StartError::Thread)?;
    Ok(handle)
}

/// The driver thread's loop: inputs as they come, ticks as the clock says.
fn run(mut driver: Driver, rx: &Receiver<Input>, queued: &AtomicUsize, tick: Duration) {
    let ok = |r: anyhow::Result<()>| {
        if let Err(e) = r {
            fail_stop(&e);
        }
    };
    let taken = |input: &Input| {
        if input.is_external() {
            queued.fetch_sub(1, Ordering::Relaxed);
        }
    };
    let mut clock = TickClock::new(tick);
    loop {
        match rx.recv_timeout(clock.until_next()) {
            Ok(input) => {
                taken(&input);
                // The ticks due go in before the input: a leader whose thread was held
                // up must see its lease lapse before it answers a lease read.
                clock.catch_up(&mut driver);
                ok(driver.input(input));
            }
            Err(RecvTimeoutError::Timeout) => {}
            Err(RecvTimeoutError::Disconnected) => return,
        }
        // Everything that queued meanwhile joins this batch (bounded, to keep ticks).
        for input in rx.try_iter().take(8192) {
            taken(&input);
            ok(driver.input(input));
        }
        clock.catch_up(&mut driver);
        ok(driver.step_end());
    }
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

impl TickClock {
    /// Makes every tick that is due. After a long stall only the last `2 × election_ticks`
    /// are made one by one (every timer has expired by then; more would change nothing).
    fn catch_up(&mut self, driver: &mut Driver) {
        let due = self.due();
        if due == 0 {
            return;
        }
        let cap = u64::from(driver.cfg.election_ticks) * 2;
        if due > cap {
            tracing::warn!(target: "keel::raft", missed_ticks = due, "driver thread was held up");
        }
        driver.ticks(due.min(cap));
        self.done += due;
    }
}
