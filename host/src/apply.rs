//! Applying committed entries: plugins run each command against the state as of the entry
//! before it (earlier entries of the same batch included), and the whole batch — plugins' KV
//! writes, client sessions, deployments, `last_applied` — is committed in one storage
//! transaction (design §4: nothing half-applied survives a crash).

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex, RwLock};

use keel_plugin::{ApplyContext, KvView, Limits, Plugin, PluginError, PluginId, Runtime};
use keel_raft::{Deploy, Entry, Payload, Record};
use keel_storage::{ApplyBatch, KvRange, KvWrite, LogId, Session, StateView, StorageError};
use sha2::{Digest, Sha256};

/// Reserved namespace holding the deployed plugins (name → `Deploy`), so the set of active
/// plugins is part of the replicated state, snapshots and restarts included.
pub const SYSTEM_NAMESPACE: &str = "__keel";

/// The example kv plugin, built from `plugins/kv` and embedded in the binary.
pub static BUILTIN_KV: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/kv.wasm"));

/// The outcome of one command, identical on every node.
pub type CommandResult = Result<Vec<u8>, String>;

/// Content-addressed plugin binaries this node can load (design §6: bytes travel by hash).
#[derive(Default)]
pub struct Blobs {
    by_hash: HashMap<[u8; 32], Arc<Vec<u8>>>,
    dir: Option<std::path::PathBuf>,
}

impl Blobs {
    /// Blobs stored under `dir`, plus the built-in ones.
    pub fn new(dir: Option<std::path::PathBuf>) -> Blobs {
        let mut b = Blobs {
            by_hash: HashMap::new(),
            dir,
        };
        b.add(BUILTIN_KV.to_vec());
        b
    }

    /// Adds a blob; returns its hash.
    pub fn add(&mut self, bytes: Vec<u8>) -> [u8; 32] {
        let hash: [u8; 32] = Sha256::digest(&bytes).into();
        self.by_hash.insert(hash, Arc::new(bytes));
        hash
    }

    fn get(&self, hash: &[u8; 32]) -> Option<Arc<Vec<u8>>> {
        if let Some(b) = self.by_hash.get(hash) {
            return Some(b.clone());
        }
        let path = self.dir.as_ref()?.join(hex(hash));
        let bytes = std::fs::read(path).ok()?;
        let actual: [u8; 32] = Sha256::digest(&bytes).into();
        (actual == *hash).then(|| Arc::new(bytes))
    }
}

/// Lower-case hex.
pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// The active plugins, shared by the apply path and the query handlers.
#[derive(Clone, Default)]
pub struct Registry {
    plugins: Arc<RwLock<BTreeMap<String, Arc<Plugin>>>>,
}

impl Registry {
    /// The active version of `name`.
    pub fn get(&self, name: &str) -> Option<Arc<Plugin>> {
        self.plugins
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .get(name)
            .cloned()
    }

    /// Names of the active plugins.
    pub fn names(&self) -> Vec<String> {
        self.plugins
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .keys()
            .cloned()
            .collect()
    }

    fn set(&self, name: String, plugin: Arc<Plugin>) {
        self.plugins
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .insert(name, plugin);
    }
}

/// Why the apply path must stop the node (never a plugin's fault: those are results).
#[derive(Debug, thiserror::Error)]
pub enum ApplyError {
    /// Storage failed.
    #[error("storage: {0}")]
    Storage(#[from] StorageError),
    /// A plugin failed in a way that is not the same on every node (host resources).
    #[error("plugin host failure: {0}")]
    Host(PluginError),
    /// A deployed plugin's bytes are not on this node.
    #[error("plugin {plugin} {version}: blob {hash} is not on this node")]
    MissingBlob {
        /// Plugin.
        plugin: String,
        /// Version.
        version: String,
        /// Hex SHA-256.
        hash: String,
    },
}

/// Loads a deployed plugin.
pub fn load(runtime: &Runtime, blobs: &Blobs, d: &Deploy) -> Result<Plugin, ApplyError> {
    let bytes = blobs
        .get(&d.sha256)
        .ok_or_else(|| ApplyError::MissingBlob {
            plugin: d.plugin.clone(),
            version: d.version.clone(),
            hash: hex(&d.sha256),
        })?;
    let limits = Limits {
        fuel: d.fuel_per_apply,
        memory_bytes: d.memory_limit,
    };
    runtime
        .load(
            PluginId::new(d.plugin.clone(), d.version.clone()),
            &bytes,
            limits,
        )
        .map_err(ApplyError::Host)
}

/// Reloads the registry from the applied state (after a restart or a snapshot install).
pub fn reload(
    runtime: &Runtime,
    blobs: &Blobs,
    registry: &Registry,
    view: &dyn StateView,
) -> Result<(), ApplyError> {
    let deployed = view.range(
        SYSTEM_NAMESPACE,
        KvRange {
            prefix: b"plugin/",
            start: None,
            end: None,
            limit: 10_000,
        },
    )?;
    for (_, value) in deployed {
        if let Ok(d) = postcard::from_bytes::<Deploy>(&value) {
            let plugin = load(runtime, blobs, &d)?;
            registry.set(d.plugin.clone(), Arc::new(plugin));
        }
    }
    Ok(())
}

/// The state as of the entry being applied: the storage view plus the batch's writes so far.
struct Overlay {
    base: Box<dyn StateView + Send>,
    writes: BTreeMap<(String, Vec<u8>), Option<Vec<u8>>>,
    sessions: BTreeMap<u64, Session>,
}

/// One plugin's namespace of an [`Overlay`], as the plugin runtime sees it.
struct Namespace {
    overlay: Arc<Mutex<Overlay>>,
    name: String,
}

impl KvView for Namespace {
    fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>, keel_plugin::StorageError> {
        let o = self.overlay.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(v) = o.writes.get(&(self.name.clone(), key.to_vec())) {
            return Ok(v.clone());
        }
        o.base.get(&self.name, key).map_err(plugin_storage_error)
    }

    fn range(
        &self,
        start: &[u8],
        end: Option<&[u8]>,
        limit: usize,
    ) -> Result<Vec<(Vec<u8>, Vec<u8>)>, keel_plugin::StorageError> {
        let o = self.overlay.lock().unwrap_or_else(|e| e.into_inner());
        let in_range = |k: &[u8]| k >= start && end.is_none_or(|e| k < e);
        let pending: BTreeMap<&[u8], &Option<Vec<u8>>> = o
            .writes
            .iter()
            .filter(|((ns, k), _)| *ns == self.name && in_range(k))
            .map(|((_, k), v)| (k.as_slice(), v))
            .collect();
        // Each pending delete can hide at most one stored pair: ask for that many more.
        let base = o
            .base
            .range(
                &self.name,
                KvRange {
                    prefix: b"",
                    start: Some(start),
                    end,
                    limit: limit.saturating_add(pending.len()),
                },
            )
            .map_err(plugin_storage_error)?;
        let mut merged: BTreeMap<Vec<u8>, Vec<u8>> = base
            .into_iter()
            .filter(|(k, _)| in_range(k) && !pending.contains_key(k.as_slice()))
            .collect();
        for (k, v) in pending {
            if let Some(v) = v {
                merged.insert(k.to_vec(), v.clone());
            }
        }
        Ok(merged.into_iter().take(limit).collect())
    }
}

fn plugin_storage_error(e: StorageError) -> keel_plugin::StorageError {
    Box::new(e)
}

/// The stored form of a session result: `0` + answer, or `1` + error text.
fn encode_result(r: &CommandResult) -> Vec<u8> {
    match r {
        Ok(b) => [&[0u8][..], b].concat(),
        Err(e) => [&[1u8][..], e.as_bytes()].concat(),
    }
}

fn decode_result(b: &[u8]) -> CommandResult {
    match b.split_first() {
        Some((0, rest)) => Ok(rest.to_vec()),
        Some((_, rest)) => Err(String::from_utf8_lossy(rest).into_owned()),
        None => Ok(Vec::new()),
    }
}

/// What applying a batch produced: the storage batch to commit and each entry's result.
pub struct Applied {
    /// To commit with [`keel_storage::Storage::apply`].
    pub batch: ApplyBatch,
    /// `(index, term, result)` of every command entry.
    pub results: Vec<(u64, u64, CommandResult)>,
    /// Plugins deployed by this batch, to activate once it is committed.
    pub deployed: Vec<(String, Arc<Plugin>)>,
}

/// Runs a batch of committed entries through the plugins.
pub fn apply_batch(
    runtime: &Runtime,
    blobs: &Blobs,
    registry: &Registry,
    base: Box<dyn StateView + Send>,
    entries: &[Entry],
) -> Result<Applied, ApplyError> {
    let overlay = Arc::new(Mutex::new(Overlay {
        base,
        writes: BTreeMap::new(),
        sessions: BTreeMap::new(),
    }));
    let mut batch = ApplyBatch::default();
    let mut results = Vec::new();
    let mut deployed: BTreeMap<String, Arc<Plugin>> = BTreeMap::new();
    for e in entries {
        batch.last_applied = LogId::of(e);
        match &e.record {
            Record::Noop => {}
            Record::Config(c) => batch.config = Some(c.clone()),
            Record::Deploy(d) => {
                let plugin = Arc::new(load(runtime, blobs, d)?);
                deployed.insert(d.plugin.clone(), plugin);
                let key = format!("plugin/{}", d.plugin).into_bytes();
                let value = postcard::to_allocvec(d).unwrap_or_default();
                overlay
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .writes
                    .insert((SYSTEM_NAMESPACE.into(), key.clone()), Some(value.clone()));
                batch.writes.push(KvWrite {
                    namespace: SYSTEM_NAMESPACE.into(),
                    key,
                    value: Some(value),
                });
            }
            Record::Command(cmd) => {
                // Raft paper §8: a retried serial gets the stored answer, never a second apply.
                if let Some(cs) = cmd.client {
                    let o = overlay.lock().unwrap_or_else(|e| e.into_inner());
                    let stored = match o.sessions.get(&cs.client_id) {
                        Some(s) => Some(s.clone()),
                        None => o.base.session(cs.client_id)?,
                    };
                    drop(o);
                    if let Some(s) = stored {
                        if s.serial == cs.serial {
                            results.push((e.index, e.term, decode_result(&s.result)));
                            continue;
                        }
                        if cs.serial < s.serial {
                            let r = Err(format!(
                                "stale serial {} (session is at {})",
                                cs.serial, s.serial
                            ));
                            results.push((e.index, e.term, r));
                            continue;
                        }
                    }
                }
                let plugin = deployed
                    .get(&cmd.plugin)
                    .cloned()
                    .or_else(|| registry.get(&cmd.plugin));
                let result = match (&cmd.payload, plugin) {
                    (_, None) => Err(format!("unknown plugin {:?}", cmd.plugin)),
                    (Payload::Ref { .. }, Some(_)) => {
                        Err("reference-only payloads are not supported yet".into())
                    }
                    (Payload::Inline(bytes), Some(plugin)) => {
                        let ctx = ApplyContext {
                            index: e.index,
                            term: e.term,
                            timestamp_ms: e.timestamp_ms,
                            client_id: cmd.client.map(|c| c.client_id.to_string()),
                        };
                        let view = Arc::new(Namespace {
                            overlay: overlay.clone(),
                            name: cmd.plugin.clone(),
                        });
                        let outcome = plugin.apply(view, &ctx, bytes).map_err(ApplyError::Host)?;
                        let mut o = overlay.lock().unwrap_or_else(|e| e.into_inner());
                        for (key, value) in outcome.writes {
                            o.writes
                                .insert((cmd.plugin.clone(), key.clone()), value.clone());
                            batch.writes.push(KvWrite {
                                namespace: cmd.plugin.clone(),
                                key,
                                value,
                            });
                        }
                        outcome.result.map_err(|e| e.to_string())
                    }
                };
                if let Some(cs) = cmd.client {
                    let session = Session {
                        serial: cs.serial,
                        result: encode_result(&result),
                    };
                    overlay
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .sessions
                        .insert(cs.client_id, session.clone());
                    batch.sessions.push((cs.client_id, session));
                }
                results.push((e.index, e.term, result));
            }
        }
    }
    Ok(Applied {
        batch,
        results,
        deployed: deployed.into_iter().collect(),
    })
}

/// Activates plugins once the batch that deployed them is committed.
pub fn activate(registry: &Registry, deployed: Vec<(String, Arc<Plugin>)>) {
    for (name, plugin) in deployed {
        registry.set(name, plugin);
    }
}

/// A plugin's namespace of a committed-state view, for queries: a namespace with nothing
/// pending on top.
pub fn query_view(view: Box<dyn StateView + Send>, name: String) -> Arc<dyn KvView> {
    Arc::new(Namespace {
        overlay: Arc::new(Mutex::new(Overlay {
            base: view,
            writes: BTreeMap::new(),
            sessions: BTreeMap::new(),
        })),
        name,
    })
}

/// A hash of the whole applied state (every namespace and session), to compare replicas.
pub fn state_hash(view: &dyn StateView) -> Result<String, StorageError> {
    let mut h = Sha256::new();
    let mut after: Option<(String, Vec<u8>)> = None;
    loop {
        let page = view.scan_kv(
            after.as_ref().map(|(n, k)| (n.as_str(), k.as_slice())),
            1_000,
        )?;
        let Some(last) = page.last() else { break };
        after = Some((last.namespace.clone(), last.key.clone()));
        for r in &page {
            for part in [r.namespace.as_bytes(), &r.key, &r.value] {
                h.update((part.len() as u64).to_le_bytes());
                h.update(part);
            }
        }
    }
    let mut after_session = None;
    loop {
        let page = view.scan_sessions(after_session, 1_000)?;
        let Some(last) = page.last() else { break };
        after_session = Some(last.0);
        for (id, s) in &page {
            h.update(id.to_le_bytes());
            h.update(s.serial.to_le_bytes());
            h.update((s.result.len() as u64).to_le_bytes());
            h.update(&s.result);
        }
    }
    Ok(hex(&h.finalize()))
}
