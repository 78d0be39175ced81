//! The engine, its configuration for determinism, loading, and calling plugins.

use crate::bindings::keel::plugin::types::ApplyContext as WitContext;
use crate::bindings::{StateMachine, StateMachineIndices};
use crate::cache::{Cache, sha256_hex};
use crate::error::PluginId;
use crate::kv::{KvView, Writes};
use crate::store::{Abort, HostState, Mode};
use crate::{PluginError, wasi};
use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use wasmtime::component::{Component, ComponentExportIndex, Instance, InstancePre, Linker};
use wasmtime::{
    Config, Enabled, Engine, InstanceAllocationStrategy, PoolingAllocationConfig, Store, Trap,
};

/// Largest answer (or error string) a call may return, in bytes.
pub const MAX_RESULT_BYTES: usize = 4 << 20;
/// Largest per-instance memory limit a `Deploy` record may ask for (the pool's slot).
pub const MAX_MEMORY_BYTES: u64 = 1 << 30;
/// Largest per-call fuel budget a `Deploy` record may ask for. Chosen so that fuel always
/// runs out long before the wall-clock backstop (30 s) fires: a call cut by the backstop
/// stops its node, and the node would stop again at the same entry after a restart.
/// Measured (docs/plugins.md): 10^10 fuel of `{"op":"loop"}` takes 3.0 s when three nodes
/// share two cores (~3.4·10^9 fuel/s each), a tenth of the backstop; 10^11 took over 30 s
/// and stopped a node.
pub const MAX_FUEL: u64 = 10_000_000_000;
/// Epoch ticks of the wall-clock backstop are this long.
const TICK: Duration = Duration::from_millis(10);
/// Wasm stack limit: fixed, so stack exhaustion happens at the same depth everywhere
/// (for one wasmtime version and CPU architecture).
const MAX_WASM_STACK: usize = 512 << 10;

/// Per-plugin limits, fixed by the `Deploy` record so every node enforces the same.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Fuel per call: roughly one unit per wasm instruction; KV calls are charged
    /// separately against the same amount (1,000 per call plus 1 per byte).
    pub fuel: u64,
    /// Bytes of linear memory one instance may have, all memories together.
    pub memory_bytes: u64,
}

impl Default for Limits {
    /// 100 M fuel (≈ 0.1–0.3 s of guest code), 128 MiB.
    fn default() -> Self {
        Limits {
            fuel: 100_000_000,
            memory_bytes: 128 << 20,
        }
    }
}

/// How a [`Runtime`] is set up on this node. None of these settings can change a
/// plugin's results; they only trade memory for speed and set the backstop.
#[derive(Debug, Clone)]
pub struct RuntimeConfig {
    /// Where compiled components are cached; `None` compiles on every load.
    pub cache_dir: Option<PathBuf>,
    /// How many plugin calls may run at once (instances in the pool).
    pub max_concurrent_calls: u32,
    /// Wall-clock backstop for one call. Fuel stops runaway plugins
    /// deterministically long before this; hitting it means a host problem.
    pub backstop: Duration,
}

impl Default for RuntimeConfig {
    fn default() -> Self {
        RuntimeConfig {
            cache_dir: None,
            max_concurrent_calls: 16,
            backstop: Duration::from_secs(30),
        }
    }
}

/// What the node knows about the entry being applied.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ApplyContext {
    /// Raft log index.
    pub index: u64,
    /// Raft term.
    pub term: u64,
    /// The leader's timestamp for the entry, ms since the Unix epoch.
    pub timestamp_ms: u64,
    /// The client id the command came with, if any.
    pub client_id: Option<String>,
    /// The blobs the command attaches (`keel:plugin/blobs`), in the order named; the node
    /// holds each before it applies.
    pub attachments: Vec<crate::BlobRef>,
}

impl ApplyContext {
    /// The deterministic seed the plugin sees: `splitmix64(index ^ splitmix64(term))`.
    pub fn seed(&self) -> u64 {
        splitmix64(self.index ^ splitmix64(self.term))
    }
}

impl ApplyContext {
    pub(crate) fn to_wit(&self) -> WitContext {
        WitContext {
            index: self.index,
            term: self.term,
            timestamp_ms: self.timestamp_ms,
            seed: self.seed(),
            client_id: self.client_id.clone(),
        }
    }
}

fn splitmix64(x: u64) -> u64 {
    let mut z = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// What one `apply` did.
#[derive(Debug)]
pub struct ApplyOutcome {
    /// The command's answer, or its deterministic failure (every node records the same;
    /// [`PluginError::is_deterministic`] holds for every `Err` here).
    pub result: Result<Vec<u8>, PluginError>,
    /// The writes to commit with this entry's `last_applied`; empty when `result` is
    /// an error (a failed command changes nothing).
    pub writes: Writes,
    /// Blob retains (+n) and releases (-n) to commit with the writes, by SHA-256; empty
    /// when `result` is an error.
    pub retains: Vec<([u8; 32], i64)>,
    /// Fuel the guest used (wasm instructions; KV charges not included). A failed
    /// call counts as its whole budget.
    pub fuel_used: u64,
}

/// Where a loaded plugin's compiled code came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CodeSource {
    /// Compiled now (and cached if there is a cache).
    Compiled,
    /// Loaded from the on-disk cache.
    Cache,
}

/// Stops the epoch ticker when the last runtime or plugin goes.
struct Ticker {
    stop: Arc<AtomicBool>,
}

impl Drop for Ticker {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

/// Compiled components kept in memory per runtime.
const MAX_LOADED: usize = 32;

/// The plugin runtime of one node: one engine, one linker, one cache.
#[derive(Clone)]
pub struct Runtime {
    engine: Engine,
    linker: Arc<Linker<HostState>>,
    cache: Option<Cache>,
    /// Components compiled or loaded by this runtime, by sha256: a snapshot install reloads
    /// every plugin, and the simulator starts many nodes on one runtime.
    loaded: Arc<Mutex<HashMap<String, Component>>>,
    ticker: Arc<Ticker>,
    backstop: Duration,
}

impl Runtime {
    /// Creates the engine (see `engine_config` for the determinism settings), the
    /// linker, and a thread that advances the backstop clock.
    pub fn new(config: RuntimeConfig) -> Result<Self, PluginError> {
        let setup = |detail: String| PluginError::Host {
            plugin: PluginId::new("-", "-"),
            detail,
        };
        let engine = Engine::new(&engine_config(config.max_concurrent_calls))
            .map_err(|e| setup(format!("engine: {e:#}")))?;
        let mut linker = Linker::new(&engine);
        wasi::add_to_linker(&mut linker).map_err(|e| setup(format!("wasi: {e:#}")))?;
        StateMachine::add_to_linker::<HostState, wasmtime::component::HasSelf<HostState>>(
            &mut linker,
            |s| s,
        )
        .map_err(|e| setup(format!("keel:plugin imports: {e:#}")))?;

        let stop = Arc::new(AtomicBool::new(false));
        let ticker_engine = engine.clone();
        let ticker_stop = stop.clone();
        std::thread::Builder::new()
            .name("keel-plugin-epoch".into())
            .spawn(move || {
                while !ticker_stop.load(Ordering::Relaxed) {
                    std::thread::sleep(TICK);
                    ticker_engine.increment_epoch();
                }
            })
            .map_err(|e| setup(format!("epoch thread: {e}")))?;

        Ok(Runtime {
            cache: config.cache_dir.map(|dir| Cache::new(dir, &engine)),
            engine,
            linker: Arc::new(linker),
            loaded: Arc::default(),
            ticker: Arc::new(Ticker { stop }),
            backstop: config.backstop,
        })
    }

    /// Compiles (or loads from the cache) and links a plugin version, then
    /// instantiates it once to prove it fits the pool and the limits.
    ///
    /// Accepts a binary component or its WAT text. Every error here is deterministic
    /// for the same bytes and limits, except [`PluginError::Host`].
    pub fn load(&self, id: PluginId, wasm: &[u8], limits: Limits) -> Result<Plugin, PluginError> {
        self.load_hashed(id, wasm, &sha256_hex(wasm), limits)
    }

    /// [`Runtime::load`] for bytes whose SHA-256 (hex) the caller has already checked, as a
    /// content-addressed blob store does: spares hashing the binary again on every load.
    pub fn load_hashed(
        &self,
        id: PluginId,
        wasm: &[u8],
        sha256: &str,
        limits: Limits,
    ) -> Result<Plugin, PluginError> {
        if limits.memory_bytes > MAX_MEMORY_BYTES || limits.fuel > MAX_FUEL || limits.fuel == 0 {
            return Err(PluginError::BadLimits {
                plugin: id,
                detail: format!(
                    "fuel must be 1..={MAX_FUEL} and memory at most {MAX_MEMORY_BYTES} bytes, got {limits:?}"
                ),
            });
        }
        // A core module starts with the wasm magic and version 1; a component with
        // the same magic and a different layer field.
        if wasm.len() >= 8 && wasm[..4] == *b"\0asm" && wasm[4..8] == [1, 0, 0, 0] {
            return Err(PluginError::NotAComponent { plugin: id });
        }

        let sha256 = sha256.to_string();
        let in_memory = self
            .loaded
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(&sha256)
            .cloned();
        let cached = in_memory.or_else(|| {
            self.cache
                .as_ref()
                .and_then(|c| c.load(&self.engine, &sha256))
        });
        let (component, source) = match cached {
            Some(c) => (c, CodeSource::Cache),
            None => {
                let c =
                    Component::new(&self.engine, wasm).map_err(|e| PluginError::InvalidWasm {
                        plugin: id.clone(),
                        detail: format!("{e:#}"),
                    })?;
                if let Some(cache) = &self.cache {
                    cache.store(&sha256, &c);
                }
                (c, CodeSource::Compiled)
            }
        };

        {
            let mut loaded = self.loaded.lock().unwrap_or_else(|e| e.into_inner());
            // Bounded: a node that deploys version after version keeps only recent ones.
            if loaded.len() >= MAX_LOADED && !loaded.contains_key(&sha256) {
                loaded.clear();
            }
            loaded.insert(sha256.clone(), component.clone());
        }
        let pre = self.linker.instantiate_pre(&component).map_err(|e| {
            PluginError::UnsatisfiedImport {
                plugin: id.clone(),
                detail: format!("{e:#}"),
            }
        })?;
        let indices = StateMachineIndices::new(&pre).map_err(|e| PluginError::MissingExport {
            plugin: id.clone(),
            detail: format!("{e:#}"),
        })?;
        let validate = component.get_export_index(None, "validate");

        let plugin = Plugin {
            inner: Arc::new(Inner {
                label: Arc::from(id.to_string()),
                id,
                engine: self.engine.clone(),
                pre,
                indices,
                validate,
                limits,
                backstop: self.backstop,
                sha256,
                source,
                _ticker: self.ticker.clone(),
            }),
        };
        // One trial instantiation: a plugin too big for the pool or the memory limit
        // fails here, at deploy time, not on its first command.
        let view: Arc<dyn KvView> = Arc::new(crate::MemoryKv::new());
        plugin.run(view, Mode::ReadOnly, 0, 0, |_, _, _| Ok(()))?;
        Ok(plugin)
    }

    /// The cache directory, if any.
    pub fn cache_dir(&self) -> Option<&std::path::Path> {
        self.cache.as_ref().map(Cache::dir)
    }
}

/// The engine settings. Everything that could make two nodes compute different
/// results is pinned here.
fn engine_config(max_concurrent_calls: u32) -> Config {
    let mut c = Config::new();
    c.wasm_component_model(true)
        // No component-model async, no fibers per store: the sync call path is about
        // twice as fast (measured: ~3,600 vs ~6,600 instructions for a no-op call).
        .concurrency_support(false)
        // NaN bit patterns differ between CPUs unless canonicalized.
        .cranelift_nan_canonicalization(true)
        // Relaxed SIMD stays available but computes the same on every CPU.
        .wasm_relaxed_simd(true)
        .relaxed_simd_deterministic(true)
        // Threads: wasmtime is built without its `threads` feature, so shared memory
        // and atomics.wait cannot even be enabled.
        .wasm_memory64(false)
        // Deterministic budget per call; the epoch is only the fail-stop backstop.
        .consume_fuel(true)
        .epoch_interruption(true)
        .max_wasm_stack(MAX_WASM_STACK)
        .memory_init_cow(true)
        .parallel_compilation(true);

    // A pool sized for `max_concurrent_calls` live instances: instantiation is then a
    // slot reuse, not mmap/munmap, and a slot's memory is reset by rewriting only its
    // dirty pages (PAGEMAP_SCAN, Linux ≥ 6.7) instead of unmapping it.
    let n = max_concurrent_calls.max(1);
    let mut pool = PoolingAllocationConfig::new();
    pool.total_component_instances(n)
        .max_core_instances_per_component(64)
        .total_core_instances(n * 64)
        .max_memories_per_component(4)
        .max_memories_per_module(1)
        .total_memories(n * 4)
        .max_memory_size(MAX_MEMORY_BYTES as usize)
        .max_tables_per_component(64)
        .total_tables(n * 64)
        .table_elements(100_000)
        .max_core_instance_size(8 << 20)
        .max_component_instance_size(8 << 20)
        .linear_memory_keep_resident(8 << 20)
        .table_keep_resident(1 << 20)
        .pagemap_scan(Enabled::Auto);
    c.allocation_strategy(InstanceAllocationStrategy::Pooling(pool));
    c
}

/// One loaded plugin version. Cheap to clone; calls may run concurrently.
#[derive(Clone)]
pub struct Plugin {
    inner: Arc<Inner>,
}

struct Inner {
    id: PluginId,
    label: Arc<str>,
    engine: Engine,
    pre: InstancePre<HostState>,
    indices: StateMachineIndices,
    validate: Option<ComponentExportIndex>,
    limits: Limits,
    backstop: Duration,
    sha256: String,
    source: CodeSource,
    _ticker: Arc<Ticker>,
}

impl Plugin {
    /// The plugin's name and version.
    pub fn id(&self) -> &PluginId {
        &self.inner.id
    }

    /// Lowercase hex SHA-256 of the wasm it was loaded from.
    pub fn sha256(&self) -> &str {
        &self.inner.sha256
    }

    /// Whether the code was compiled by this load or came from the cache.
    pub fn code_source(&self) -> CodeSource {
        self.inner.source
    }

    /// The limits every call runs under.
    pub fn limits(&self) -> Limits {
        self.inner.limits
    }

    /// Whether the plugin exports the optional `validate`.
    pub fn has_validate(&self) -> bool {
        self.inner.validate.is_some()
    }

    /// Applies a committed command on a fresh instance.
    ///
    /// `view` is the plugin's namespace as of the previous entry. `Ok` carries the
    /// outcome to record, identical on every node; `Err` is a node-local failure
    /// ([`PluginError::is_deterministic`] is `false`): stop the node, record nothing.
    pub fn apply(
        &self,
        view: Arc<dyn KvView>,
        ctx: &ApplyContext,
        command: &[u8],
    ) -> Result<ApplyOutcome, PluginError> {
        let wit_ctx = ctx.to_wit();
        let run = self.run(
            view,
            Mode::Apply,
            ctx.timestamp_ms,
            ctx.seed(),
            |store, _, sm| {
                store.data_mut().next_command(&ctx.attachments);
                sm.call_apply(store, &wit_ctx, command)
            },
        );
        match run {
            Ok((answer, mut state, fuel_used)) => {
                let result = self.answer(answer);
                let retains = state.take_retains();
                let (writes, retains) = if result.is_ok() {
                    (state.writes.into_writes(), retains)
                } else {
                    (Writes::new(), Vec::new())
                };
                Ok(ApplyOutcome {
                    result,
                    writes,
                    retains,
                    fuel_used,
                })
            }
            Err(e) if e.is_deterministic() => Ok(ApplyOutcome {
                result: Err(e),
                writes: Writes::new(),
                retains: Vec::new(),
                fuel_used: self.inner.limits.fuel,
            }),
            Err(e) => Err(e),
        }
    }

    /// Answers a read-only query on a fresh instance; KV writes are refused. Clocks
    /// read 0 and the seed is 0, so the answer depends only on the KV state.
    pub fn query(&self, view: Arc<dyn KvView>, query: &[u8]) -> Result<Vec<u8>, PluginError> {
        let (answer, _, _) = self.run(view, Mode::ReadOnly, 0, 0, |store, _, sm| {
            sm.call_query(store, query)
        })?;
        self.answer(answer)
    }

    /// [`Plugin::query`] with at most `fuel` (of guest fuel, and of host KV work) instead of
    /// the plugin's whole budget: `Ok(None)` when that ran out. A query writes nothing and
    /// its answer depends only on the state, so running it again with the whole budget gives
    /// what one run would have: a node answers the common short query on the thread it is on
    /// and still bounds how long it holds that thread.
    pub fn query_within(
        &self,
        view: Arc<dyn KvView>,
        query: &[u8],
        fuel: u64,
    ) -> Result<Option<Vec<u8>>, PluginError> {
        let fuel = fuel.min(self.inner.limits.fuel);
        let ran = self.run_with(view, Mode::ReadOnly, 0, 0, fuel, |store, _, sm| {
            sm.call_query(store, query)
        });
        match ran {
            Ok((answer, _, _)) => self.answer(answer).map(Some),
            Err(PluginError::FuelExhausted { .. }) if fuel < self.inner.limits.fuel => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Runs the plugin's optional `validate` on a fresh instance (read-only KV).
    /// A plugin without it accepts every command.
    pub fn validate(&self, view: Arc<dyn KvView>, command: &[u8]) -> Result<(), PluginError> {
        let Some(index) = self.inner.validate else {
            return Ok(());
        };
        let (verdict, _, _) = self.run(view, Mode::ReadOnly, 0, 0, |store, instance, _| {
            let f =
                instance.get_typed_func::<(&[u8],), (Result<(), String>,)>(&mut *store, index)?;
            let (verdict,) = f.call(&mut *store, (command,))?;
            Ok(verdict)
        })?;
        verdict.map_err(|message| self.rejected(message))
    }

    /// Instantiates a fresh instance and drops it: what every call pays before the
    /// guest runs. For health checks and benchmarks.
    pub fn probe(&self) -> Result<(), PluginError> {
        let view: Arc<dyn KvView> = Arc::new(crate::MemoryKv::new());
        self.run(view, Mode::ReadOnly, 0, 0, |_, _, _| Ok(()))?;
        Ok(())
    }

    /// Benchmark hook, not for nodes: runs `apply` `n` times on ONE instance (writes
    /// discarded) to separate the call's own cost from instantiation. Reusing an
    /// instance is exactly what the instance policy forbids (hidden state).
    #[doc(hidden)]
    pub fn bench_reused_instance(
        &self,
        view: Arc<dyn KvView>,
        ctx: &ApplyContext,
        command: &[u8],
        n: u32,
    ) -> Result<Duration, PluginError> {
        let wit_ctx = ctx.to_wit();
        let (elapsed, _, _) = self.run(
            view,
            Mode::Apply,
            ctx.timestamp_ms,
            ctx.seed(),
            |store, _, sm| {
                let started = Instant::now();
                for _ in 0..n {
                    // Budgets are per call; reset them as `apply_batch` does.
                    store.data_mut().next_command(&ctx.attachments);
                    store.set_fuel(self.inner.limits.fuel)?;
                    let _ = sm.call_apply(&mut *store, &wit_ctx, command)?;
                }
                Ok(started.elapsed())
            },
        )?;
        Ok(elapsed)
    }

    fn rejected(&self, message: String) -> PluginError {
        if message.len() > MAX_RESULT_BYTES {
            return PluginError::ResultTooLarge {
                plugin: self.inner.id.clone(),
                len: message.len(),
                limit: MAX_RESULT_BYTES,
            };
        }
        PluginError::Rejected {
            plugin: self.inner.id.clone(),
            message,
        }
    }

    pub(crate) fn answer(&self, answer: Result<Vec<u8>, String>) -> Result<Vec<u8>, PluginError> {
        match answer {
            Ok(bytes) if bytes.len() > MAX_RESULT_BYTES => Err(PluginError::ResultTooLarge {
                plugin: self.inner.id.clone(),
                len: bytes.len(),
                limit: MAX_RESULT_BYTES,
            }),
            Ok(bytes) => Ok(bytes),
            Err(message) => Err(self.rejected(message)),
        }
    }

    /// A new store holding `state`, limits armed, with a fresh instance in it.
    pub(crate) fn fresh_instance(
        &self,
        state: HostState,
    ) -> Result<(Store<HostState>, Instance, StateMachine), PluginError> {
        let inner = &*self.inner;
        let mut store = Store::new(&inner.engine, state);
        store.limiter(|s| &mut s.limiter);
        self.arm(&mut store)?;
        let loaded = inner
            .pre
            .instantiate(&mut store)
            .and_then(|instance| Ok((instance, inner.indices.load(&mut store, &instance)?)));
        match loaded {
            Ok((instance, sm)) => Ok((store, instance, sm)),
            Err(e) => {
                let mut state = store.into_data();
                Err(self.classify(&e, &mut state, true))
            }
        }
    }

    /// Refills the per-call fuel budget and restarts the backstop clock.
    pub(crate) fn arm(&self, store: &mut Store<HostState>) -> Result<(), PluginError> {
        let inner = &*self.inner;
        store
            .set_fuel(inner.limits.fuel)
            .map_err(|e| self.host(format!("set fuel: {e}")))?;
        let ticks = (inner.backstop.as_millis() / TICK.as_millis()).max(1) as u64;
        store.set_epoch_deadline(ticks);
        store.epoch_deadline_trap();
        Ok(())
    }

    /// The host state for one call (or one batch).
    pub(crate) fn state(
        &self,
        view: Arc<dyn KvView>,
        mode: Mode,
        timestamp_ms: u64,
        seed: u64,
    ) -> HostState {
        let inner = &*self.inner;
        HostState::new(
            inner.label.clone(),
            wasi::context(&inner.label, timestamp_ms, seed),
            view,
            mode,
            inner.limits.fuel,
            inner.limits.memory_bytes,
        )
    }

    /// Fuel consumed since the last [`Plugin::arm`].
    pub(crate) fn fuel_used(&self, store: &Store<HostState>) -> u64 {
        let budget = self.inner.limits.fuel;
        budget - store.get_fuel().unwrap_or(0).min(budget)
    }

    /// One call: fresh store and instance, limits armed, `f` run, failure classified.
    /// Returns `f`'s value, the final host state (buffered writes) and fuel used.
    fn run<R>(
        &self,
        view: Arc<dyn KvView>,
        mode: Mode,
        timestamp_ms: u64,
        seed: u64,
        f: impl FnOnce(&mut Store<HostState>, &Instance, &StateMachine) -> wasmtime::Result<R>,
    ) -> Result<(R, HostState, u64), PluginError> {
        let fuel = self.inner.limits.fuel;
        self.run_with(view, mode, timestamp_ms, seed, fuel, f)
    }

    /// [`Plugin::run`] with `fuel` (at most the plugin's budget) for the guest and for host
    /// work.
    fn run_with<R>(
        &self,
        view: Arc<dyn KvView>,
        mode: Mode,
        timestamp_ms: u64,
        seed: u64,
        fuel: u64,
        f: impl FnOnce(&mut Store<HostState>, &Instance, &StateMachine) -> wasmtime::Result<R>,
    ) -> Result<(R, HostState, u64), PluginError> {
        let mut state = self.state(view, mode, timestamp_ms, seed);
        state.limit_host_work(fuel);
        let (mut store, instance, sm) = self.fresh_instance(state)?;
        if fuel < self.inner.limits.fuel {
            store
                .set_fuel(fuel)
                .map_err(|e| self.host(format!("set fuel: {e}")))?;
        }
        let result = f(&mut store, &instance, &sm);
        let fuel_used = self.fuel_used(&store);
        let mut state = store.into_data();
        match result {
            Ok(value) => Ok((value, state, fuel_used)),
            Err(e) => Err(self.call_failed(&e, &mut state)),
        }
    }

    /// Classifies a failed call and logs the detail the error leaves out.
    pub(crate) fn call_failed(&self, e: &wasmtime::Error, state: &mut HostState) -> PluginError {
        let err = self.classify(e, state, false);
        tracing::debug!(target: "keel::plugin", plugin = %self.inner.label, error = %err, detail = ?e, "plugin call failed");
        err
    }

    /// Maps a wasmtime error to the failure every node agrees on.
    pub(crate) fn classify(
        &self,
        e: &wasmtime::Error,
        state: &mut HostState,
        instantiating: bool,
    ) -> PluginError {
        let plugin = self.inner.id.clone();
        match state.abort.take() {
            Some(Abort::Storage(source)) => return PluginError::Storage { plugin, source },
            Some(Abort::BlobMissing(sha)) => {
                return PluginError::BlobMissing {
                    plugin,
                    sha256: crate::blobs::sha_hex(&sha),
                };
            }
            Some(Abort::HostBudget) => {
                return PluginError::FuelExhausted {
                    plugin,
                    budget: self.inner.limits.fuel,
                };
            }
            None => {}
        }
        if state.limiter.hit {
            return PluginError::MemoryLimit {
                plugin,
                limit: state.limiter.limit,
            };
        }
        if let Some(trap) = e.downcast_ref::<Trap>() {
            return match trap {
                Trap::OutOfFuel => PluginError::FuelExhausted {
                    plugin,
                    budget: self.inner.limits.fuel,
                },
                Trap::Interrupt => PluginError::Deadline {
                    plugin,
                    seconds: self.inner.backstop.as_secs(),
                },
                other => PluginError::Trap {
                    plugin,
                    reason: other.to_string(),
                },
            };
        }
        if let Some(exit) = e.downcast_ref::<wasmtime_wasi::I32Exit>() {
            return PluginError::Exited {
                plugin,
                status: exit.0,
            };
        }
        if let Some(refusal) = e.downcast_ref::<wasi::WasiRefusal>() {
            return PluginError::Trap {
                plugin,
                reason: refusal.0.to_string(),
            };
        }
        if instantiating {
            // Not a trap: the pool is exhausted or similar, which is about this node.
            self.host(format!("instantiate: {e:#}"))
        } else {
            // Anything else during a call is the guest breaking the canonical ABI
            // (invalid UTF-8, bad pointers): a fact of the guest, the same everywhere.
            PluginError::Trap {
                plugin,
                reason: e.root_cause().to_string(),
            }
        }
    }

    fn host(&self, detail: String) -> PluginError {
        PluginError::Host {
            plugin: self.inner.id.clone(),
            detail,
        }
    }
}
