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

use crate::blobs::{Blobs, hex};

/// Reserved namespace holding the deployed plugins (name → `Deploy`), so the set of active
/// plugins is part of the replicated state, snapshots and restarts included.
pub const SYSTEM_NAMESPACE: &str = "__keel";

/// The example kv plugin, built from `plugins/kv` and embedded in the binary.
pub static BUILTIN_KV: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/kv.wasm"));

/// The outcome of one command, identical on every node.
pub type CommandResult = Result<Vec<u8>, String>;

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
    /// A deployment record in the applied state does not decode: this node cannot tell
    /// which plugin it names, so it stops rather than answer "unknown plugin" where the
    /// other replicas apply (design §8).
    #[error(
        "deployment record {SYSTEM_NAMESPACE}/{key} in the applied state does not decode \
         ({detail}); refusing to go on without a plugin the other replicas have"
    )]
    BadDeployment {
        /// The record's key.
        key: String,
        /// The decoder's complaint.
        detail: String,
    },
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
/// Every deployment record is read and decoded before any plugin is loaded: one that does
/// not decode stops the node (design §8) instead of leaving its plugin unknown here while
/// the other replicas apply its commands.
pub fn reload(
    runtime: &Runtime,
    blobs: &Blobs,
    registry: &Registry,
    view: &dyn StateView,
) -> Result<(), ApplyError> {
    for d in deployments(view)? {
        let plugin = load(runtime, blobs, &d)?;
        registry.set(d.plugin.clone(), Arc::new(plugin));
    }
    Ok(())
}

/// Deployment records read from storage at a time.
const DEPLOYMENTS_PAGE: usize = 1_000;

/// Every deployment the applied state holds, in key order, page by page (there is no cap
/// on their number: stopping at one would drop the plugins past it on this node only).
pub fn deployments(view: &dyn StateView) -> Result<Vec<Deploy>, ApplyError> {
    let mut out = Vec::new();
    let mut after: Option<Vec<u8>> = None;
    loop {
        // The first key after the last one read: that key with a zero byte appended.
        let start = after.take().map(|mut k| {
            k.push(0);
            k
        });
        let page = view.range(
            SYSTEM_NAMESPACE,
            KvRange {
                prefix: b"plugin/",
                start: start.as_deref(),
                end: None,
                limit: DEPLOYMENTS_PAGE,
            },
        )?;
        let full = page.len() >= DEPLOYMENTS_PAGE;
        for (key, value) in page {
            let d =
                postcard::from_bytes::<Deploy>(&value).map_err(|e| ApplyError::BadDeployment {
                    key: String::from_utf8_lossy(&key).into_owned(),
                    detail: e.to_string(),
                })?;
            out.push(d);
            after = Some(key);
        }
        if !full {
            return Ok(out);
        }
    }
}

/// Applied state not yet written to storage (write-back): the merged effect of the batches
/// applied since the last flush. Storage plus this is the applied state.
///
/// Writing every applied batch to redb made each durable log commit also flush the KV
/// pages those applies dirtied — about one 4 KiB leaf per command with random keys, most of
/// the ~160 KiB a commit wrote (docs/benchmarks.md). Kept here and flushed in one
/// transaction every `apply_flush_ms`, a hot page is written once per flush instead. Losing it in
/// a crash loses nothing: storage's `last_applied` stays where the last flush left it and
/// the log, which is durable, is applied again from there.
///
/// A flush runs beside the driver (on the log writer), so the layer being written stays
/// readable below the one that takes new applies until storage holds it: readers see
/// this layer, then `flushing`, then storage.
#[derive(Clone, Debug, Default)]
pub struct Unflushed {
    writes: BTreeMap<(String, Vec<u8>), Option<Vec<u8>>>,
    /// `None`: expired (hides a stored session).
    sessions: BTreeMap<u64, Option<Session>>,
    last_applied: Option<LogId>,
    config: Option<keel_raft::ClusterConfig>,
    /// The layer a flush under way is writing to storage (never itself flushing).
    flushing: Option<Arc<Unflushed>>,
}

impl Unflushed {
    /// Adds an applied batch on top (later writes win).
    pub fn absorb(&mut self, batch: ApplyBatch) {
        for w in batch.writes {
            self.writes.insert((w.namespace, w.key), w.value);
        }
        self.sessions.extend(batch.sessions);
        self.last_applied = Some(batch.last_applied);
        if batch.config.is_some() {
            self.config = batch.config;
        }
    }

    /// Nothing applied since the last flush started.
    pub fn is_empty(&self) -> bool {
        self.last_applied.is_none()
    }

    /// Keys and sessions held, the layer being flushed included.
    pub fn len(&self) -> usize {
        self.writes.len() + self.sessions.len() + self.flushing.as_ref().map_or(0, |f| f.len())
    }

    /// Starts a flush: the layer in `slot` becomes the one being flushed, under a new empty
    /// one, and is returned for writing to storage. `None` if there is nothing to flush or a
    /// flush is already under way. Moves no data: the old layer is shared as it is.
    pub fn freeze(slot: &mut Arc<Unflushed>) -> Option<Arc<Unflushed>> {
        if slot.is_empty() || slot.flushing.is_some() {
            return None;
        }
        let frozen = Arc::clone(slot);
        *slot = Arc::new(Unflushed {
            flushing: Some(Arc::clone(&frozen)),
            ..Unflushed::default()
        });
        Some(frozen)
    }

    /// Whether a flush is under way.
    pub fn is_flushing_any(&self) -> bool {
        self.flushing.is_some()
    }

    /// Whether `layer` is the one this flush is writing.
    pub fn is_flushing(&self, layer: &Arc<Unflushed>) -> bool {
        self.flushing
            .as_ref()
            .is_some_and(|f| Arc::ptr_eq(f, layer))
    }

    /// Storage now holds the layer being flushed: readers no longer need it.
    pub fn flushed(&mut self) {
        self.flushing = None;
    }

    fn get(&self, k: &(String, Vec<u8>)) -> Option<&Option<Vec<u8>>> {
        self.writes
            .get(k)
            .or_else(|| self.flushing.as_ref()?.writes.get(k))
    }

    /// `Some(None)`: expired here, whatever storage holds.
    fn session(&self, client: u64) -> Option<&Option<Session>> {
        self.sessions
            .get(&client)
            .or_else(|| self.flushing.as_ref()?.sessions.get(&client))
    }

    /// Sessions this layer and the flushing one hold or expired (newer wins).
    fn sessions(&self) -> BTreeMap<u64, &Option<Session>> {
        let mut out: BTreeMap<u64, &Option<Session>> = self
            .flushing
            .iter()
            .flat_map(|f| f.sessions.iter().map(|(c, s)| (*c, s)))
            .collect();
        out.extend(self.sessions.iter().map(|(c, s)| (*c, s)));
        out
    }

    /// This layer's writes in a range over the flushing layer's (newer wins).
    fn pending<'a>(
        &'a self,
        ns: &'a str,
        start: &'a [u8],
        end: Option<&'a [u8]>,
    ) -> BTreeMap<&'a [u8], &'a Option<Vec<u8>>> {
        let mut out: BTreeMap<_, _> = self
            .flushing
            .iter()
            .flat_map(|f| Unflushed::in_range(&f.writes, ns, start, end))
            .collect();
        out.extend(Unflushed::in_range(&self.writes, ns, start, end));
        out
    }

    /// This layer (not the one being flushed) as one storage batch, to flush.
    pub fn to_batch(&self) -> Option<ApplyBatch> {
        Some(ApplyBatch {
            last_applied: self.last_applied?,
            config: self.config.clone(),
            writes: self
                .writes
                .iter()
                .map(|((namespace, key), value)| KvWrite {
                    namespace: namespace.clone(),
                    key: key.clone(),
                    value: value.clone(),
                })
                .collect(),
            sessions: self.sessions.iter().map(|(c, s)| (*c, s.clone())).collect(),
        })
    }

    fn in_range<'a>(
        map: &'a BTreeMap<(String, Vec<u8>), Option<Vec<u8>>>,
        ns: &'a str,
        start: &'a [u8],
        end: Option<&'a [u8]>,
    ) -> impl Iterator<Item = (&'a [u8], &'a Option<Vec<u8>>)> + 'a {
        map.range((ns.to_owned(), start.to_vec())..)
            .take_while(move |((n, k), _)| n == ns && end.is_none_or(|e| k.as_slice() < e))
            .map(|((_, k), v)| (k.as_slice(), v))
    }
}

/// The state as of the entry being applied: the storage view, the applied state not yet
/// flushed, and the batch's writes so far, newest last.
struct Overlay {
    base: Box<dyn StateView + Send>,
    unflushed: Arc<Unflushed>,
    writes: BTreeMap<(String, Vec<u8>), Option<Vec<u8>>>,
    sessions: BTreeMap<u64, Option<Session>>,
}

impl Overlay {
    fn get(&self, ns: &str, key: &[u8]) -> Result<Option<Vec<u8>>, StorageError> {
        let k = (ns.to_owned(), key.to_vec());
        if let Some(v) = self.writes.get(&k).or_else(|| self.unflushed.get(&k)) {
            return Ok(v.clone());
        }
        self.base.get(ns, key)
    }

    fn session(&self, client: u64) -> Result<Option<Session>, StorageError> {
        match self
            .sessions
            .get(&client)
            .or_else(|| self.unflushed.session(client))
        {
            Some(s) => Ok(s.clone()),
            None => self.base.session(client),
        }
    }

    /// Ids of the sessions last used before `before_ms`, over every layer.
    fn sessions_unused_since(&self, before_ms: u64) -> Result<Vec<u64>, StorageError> {
        let mut upper = self.unflushed.sessions();
        upper.extend(self.sessions.iter().map(|(c, s)| (*c, s)));
        let old = |s: &Session| s.last_ms < before_ms;
        let mut out: Vec<u64> = upper
            .iter()
            .filter_map(|(c, s)| s.as_ref().filter(|s| old(s)).map(|_| *c))
            .collect();
        let mut after = None;
        loop {
            let page = self.base.scan_sessions(after, 1_000)?;
            let Some(last) = page.last() else { break };
            after = Some(last.0);
            // Stored sessions a newer layer rewrote or expired were judged above.
            out.extend(
                page.iter()
                    .filter(|(c, s)| !upper.contains_key(c) && old(s))
                    .map(|(c, _)| *c),
            );
        }
        out.sort_unstable();
        Ok(out)
    }

    fn range(
        &self,
        ns: &str,
        start: &[u8],
        end: Option<&[u8]>,
        limit: usize,
    ) -> Result<keel_storage::KvPairs, StorageError> {
        let mut pending = self.unflushed.pending(ns, start, end);
        pending.extend(Unflushed::in_range(&self.writes, ns, start, end));
        let pending: Vec<_> = pending.into_iter().collect();
        let stored = self.base.range(
            ns,
            KvRange {
                prefix: b"",
                start: Some(start),
                end,
                limit: keel_plugin::stored_needed(limit, &pending),
            },
        )?;
        Ok(keel_plugin::merge_writes(stored, pending, limit))
    }
}

/// One plugin's namespace of an [`Overlay`], as the plugin runtime sees it.
struct Namespace {
    overlay: Arc<Mutex<Overlay>>,
    name: String,
}

impl KvView for Namespace {
    fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>, keel_plugin::StorageError> {
        let o = self.overlay.lock().unwrap_or_else(|e| e.into_inner());
        o.get(&self.name, key).map_err(plugin_storage_error)
    }

    fn range(
        &self,
        start: &[u8],
        end: Option<&[u8]>,
        limit: usize,
    ) -> Result<Vec<(Vec<u8>, Vec<u8>)>, keel_plugin::StorageError> {
        let o = self.overlay.lock().unwrap_or_else(|e| e.into_inner());
        o.range(&self.name, start, end, limit)
            .map_err(plugin_storage_error)
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

/// One client command's outcome: where it sits in the log and what it came to.
#[derive(Debug)]
pub struct CommandOutcome {
    /// Its entry's index.
    pub index: u64,
    /// Its entry's term.
    pub term: u64,
    /// Its place within the entry (0 unless the entry is a [`Record::Batch`]).
    pub position: u32,
    /// The plugin's answer, identical on every node.
    pub result: CommandResult,
    /// Refused without running: the command's session is unknown or expired (thesis
    /// §6.3). Whether an earlier command of that session was applied cannot be told.
    pub unknown_session: bool,
}

/// What applying a batch produced: the storage batch to commit and each command's result.
pub struct Applied {
    /// To commit with [`keel_storage::Storage::apply`].
    pub batch: ApplyBatch,
    /// Every client command of the batch, in log order.
    pub results: Vec<CommandOutcome>,
    /// Plugins deployed by this batch, to activate once it is committed.
    pub deployed: Vec<(String, Arc<Plugin>)>,
}

/// Runs a batch of committed entries through the plugins.
pub fn apply_batch(
    runtime: &Runtime,
    blobs: &Blobs,
    registry: &Registry,
    base: Box<dyn StateView + Send>,
    unflushed: Arc<Unflushed>,
    entries: &[Entry],
) -> Result<Applied, ApplyError> {
    let mut applier = Applier {
        registry,
        overlay: Arc::new(Mutex::new(Overlay {
            base,
            unflushed,
            writes: BTreeMap::new(),
            sessions: BTreeMap::new(),
        })),
        batch: ApplyBatch::default(),
        results: Vec::new(),
        deployed: BTreeMap::new(),
    };
    for e in entries {
        applier.batch.last_applied = LogId::of(e);
        match &e.record {
            Record::Noop => {}
            Record::Config(c) => applier.batch.config = Some(c.clone()),
            Record::Deploy(d) => {
                let plugin = Arc::new(load(runtime, blobs, d)?);
                applier.deployed.insert(d.plugin.clone(), plugin);
                let key = format!("plugin/{}", d.plugin).into_bytes();
                let value = postcard::to_allocvec(d).unwrap_or_default();
                applier.write(SYSTEM_NAMESPACE, key, Some(value));
                // The deployer's answer (`PUT /v1/plugins/{name}`).
                let answer = serde_json::json!({
                    "plugin": d.plugin,
                    "version": d.version,
                    "sha256": hex(&d.sha256),
                    "index": e.index,
                });
                applier.answer_entry(e, answer.to_string());
            }
            Record::Command(cmd) => applier.commands(e, std::slice::from_ref(cmd))?,
            Record::Batch(cmds) => applier.commands(e, cmds)?,
            Record::OpenSession => applier.open_session(e),
            Record::ExpireSessions { before_ms } => {
                let expired = applier.overlay().sessions_unused_since(*before_ms)?;
                for client in expired {
                    applier.set_session(client, None);
                }
            }
        }
    }
    Ok(Applied {
        batch: applier.batch,
        results: applier.results,
        deployed: applier.deployed.into_iter().collect(),
    })
}

/// The state of one [`apply_batch`] call.
struct Applier<'a> {
    registry: &'a Registry,
    overlay: Arc<Mutex<Overlay>>,
    batch: ApplyBatch,
    results: Vec<CommandOutcome>,
    /// Deployed earlier in this batch: active for the entries after theirs.
    deployed: BTreeMap<String, Arc<Plugin>>,
}

/// One plugin's commands of an entry: `(position, context, bytes)` each.
type Group<'e> = (Arc<Plugin>, Vec<(usize, ApplyContext, &'e [u8])>);

/// What one command of an entry comes to before any plugin runs.
enum Plan {
    /// Decided without the plugin (a stored answer, a stale serial, an unknown plugin).
    Answer(CommandResult),
    /// A retry of the command at this position of the same entry: its answer.
    SameAs(usize),
    /// Runs in its plugin's group.
    Run,
}

impl Applier<'_> {
    fn overlay(&self) -> std::sync::MutexGuard<'_, Overlay> {
        self.overlay.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn write(&mut self, namespace: &str, key: Vec<u8>, value: Option<Vec<u8>>) {
        self.overlay()
            .writes
            .insert((namespace.to_owned(), key.clone()), value.clone());
        self.batch.writes.push(KvWrite {
            namespace: namespace.to_owned(),
            key,
            value,
        });
    }

    fn session(&self, client: u64) -> Result<Option<Session>, StorageError> {
        self.overlay().session(client)
    }

    fn set_session(&mut self, client: u64, session: Option<Session>) {
        self.overlay().sessions.insert(client, session.clone());
        self.batch.sessions.push((client, session));
    }

    /// Thesis §6.3: the session's id is the index of the entry that opened it.
    fn open_session(&mut self, e: &Entry) {
        self.set_session(
            e.index,
            Some(Session {
                serial: 0,
                result: Vec::new(),
                last_ms: e.timestamp_ms,
            }),
        );
        self.answer_entry(e, format!("{{\"client_id\":{}}}", e.index));
    }

    /// The answer to whoever proposed a whole entry (a session, a deployment).
    fn answer_entry(&mut self, e: &Entry, json: String) {
        self.results.push(CommandOutcome {
            index: e.index,
            term: e.term,
            position: 0,
            result: Ok(json.into_bytes()),
            unknown_session: false,
        });
    }

    /// The commands of one entry, in order. Each plugin's commands run together on one
    /// fresh instance ([`Plugin::apply_batch`]): plugins have disjoint namespaces, so the
    /// grouping changes no answer, and it is a function of the entry alone, the same on
    /// every node.
    fn commands(&mut self, e: &Entry, cmds: &[keel_raft::Command]) -> Result<(), ApplyError> {
        let mut plans = Vec::with_capacity(cmds.len());
        let mut groups: BTreeMap<&str, Group<'_>> = BTreeMap::new();
        // Sessions as this entry leaves them: client → (serial, position that set it).
        let mut in_entry: HashMap<u64, (u64, usize)> = HashMap::new();
        let mut unknown: Vec<usize> = Vec::new();
        for (pos, cmd) in cmds.iter().enumerate() {
            // Raft paper §8: a retried serial gets the stored answer, never a second apply.
            if let Some(cs) = cmd.client {
                if let Some(&(serial, at)) = in_entry.get(&cs.client_id) {
                    if cs.serial == serial {
                        plans.push(Plan::SameAs(at));
                        continue;
                    }
                    if cs.serial < serial {
                        plans.push(Plan::Answer(Err(stale(cs.serial, serial))));
                        continue;
                    }
                } else {
                    // Thesis §6.3: a command of a session that was never opened, or has
                    // expired, is refused: it may be a retry of one applied long ago.
                    let Some(s) = self.session(cs.client_id)? else {
                        unknown.push(pos);
                        plans.push(Plan::Answer(Err(format!(
                            "session {} is unknown or expired",
                            cs.client_id
                        ))));
                        continue;
                    };
                    if cs.serial == s.serial {
                        plans.push(Plan::Answer(decode_result(&s.result)));
                        continue;
                    }
                    if cs.serial < s.serial {
                        plans.push(Plan::Answer(Err(stale(cs.serial, s.serial))));
                        continue;
                    }
                }
                in_entry.insert(cs.client_id, (cs.serial, pos));
            }
            let plugin = self
                .deployed
                .get(&cmd.plugin)
                .cloned()
                .or_else(|| self.registry.get(&cmd.plugin));
            let plan = match (&cmd.payload, plugin) {
                (_, None) => Plan::Answer(Err(format!("unknown plugin {:?}", cmd.plugin))),
                (Payload::Ref { .. }, Some(_)) => {
                    Plan::Answer(Err("reference-only payloads are not supported yet".into()))
                }
                (Payload::Inline(bytes), Some(plugin)) => {
                    let ctx = ApplyContext {
                        index: e.index,
                        term: e.term,
                        timestamp_ms: e.timestamp_ms,
                        client_id: cmd.client.map(|c| c.client_id.to_string()),
                    };
                    let group = groups
                        .entry(cmd.plugin.as_str())
                        .or_insert_with(|| (plugin, Vec::new()));
                    group.1.push((pos, ctx, bytes.as_slice()));
                    Plan::Run
                }
            };
            plans.push(plan);
        }

        // Run each plugin's group; record its writes in command order.
        let mut ran: HashMap<usize, CommandResult> = HashMap::new();
        for (name, (plugin, group)) in groups {
            let view = Arc::new(Namespace {
                overlay: self.overlay.clone(),
                name: name.to_owned(),
            });
            let calls: Vec<(ApplyContext, &[u8])> =
                group.iter().map(|(_, c, b)| (c.clone(), *b)).collect();
            let outcomes = plugin.apply_batch(view, &calls).map_err(ApplyError::Host)?;
            for ((pos, _, _), outcome) in group.iter().zip(outcomes) {
                for (key, value) in outcome.writes {
                    self.write(name, key, value);
                }
                ran.insert(*pos, outcome.result.map_err(|e| e.to_string()));
            }
        }

        let mut answers: Vec<CommandResult> = Vec::with_capacity(cmds.len());
        for (pos, plan) in plans.into_iter().enumerate() {
            let result = match plan {
                Plan::Answer(r) => r,
                Plan::SameAs(at) => answers[at].clone(),
                Plan::Run => ran
                    .remove(&pos)
                    .unwrap_or_else(|| Err("internal: command did not run".into())),
            };
            if let Some(cs) = cmds[pos].client {
                let fresh = in_entry.get(&cs.client_id) == Some(&(cs.serial, pos));
                if fresh {
                    let session = Session {
                        serial: cs.serial,
                        result: encode_result(&result),
                        last_ms: e.timestamp_ms,
                    };
                    self.set_session(cs.client_id, Some(session));
                }
            }
            answers.push(result.clone());
            self.results.push(CommandOutcome {
                index: e.index,
                term: e.term,
                position: pos as u32,
                result,
                unknown_session: unknown.contains(&pos),
            });
        }
        Ok(())
    }
}

fn stale(serial: u64, at: u64) -> String {
    format!("stale serial {serial} (session is at {at})")
}

/// Activates plugins once the batch that deployed them is committed.
pub fn activate(registry: &Registry, deployed: Vec<(String, Arc<Plugin>)>) {
    for (name, plugin) in deployed {
        registry.set(name, plugin);
    }
}

/// A plugin's namespace of the applied state, for queries: a storage view with what was
/// applied since it was last flushed on top (taken together: see `NodeHandle::applied_view`).
pub fn query_view(
    view: Box<dyn StateView + Send>,
    unflushed: Arc<Unflushed>,
    name: String,
) -> Arc<dyn KvView> {
    Arc::new(Namespace {
        overlay: Arc::new(Mutex::new(Overlay {
            base: view,
            unflushed,
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
            h.update(s.last_ms.to_le_bytes());
            h.update((s.result.len() as u64).to_le_bytes());
            h.update(&s.result);
        }
    }
    Ok(hex(&h.finalize()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use keel_raft::{ClientSerial, Command};
    use keel_storage::{MemStorage, Storage};

    fn kv() -> (Runtime, Registry) {
        let runtime = Runtime::new(keel_plugin::RuntimeConfig::default()).expect("runtime");
        let blobs = Blobs::new(None, &[BUILTIN_KV]);
        let registry = Registry::default();
        let deploy = Deploy {
            plugin: "kv".into(),
            version: "test".into(),
            sha256: Sha256::digest(BUILTIN_KV).into(),
            fuel_per_apply: 100_000_000,
            memory_limit: 64 << 20,
        };
        let plugin = load(&runtime, &blobs, &deploy).expect("the built-in kv loads");
        registry.set("kv".into(), Arc::new(plugin));
        (runtime, registry)
    }

    fn put(key: &str, value: &str, client: Option<(u64, u64)>) -> Command {
        Command {
            plugin: "kv".into(),
            client: client.map(|(client_id, serial)| ClientSerial { client_id, serial }),
            payload: Payload::Inline(
                format!(r#"{{"op":"put","key":"{key}","value":"{value}"}}"#).into_bytes(),
            ),
        }
    }

    fn entry(index: u64, record: Record) -> Entry {
        Entry {
            index,
            term: 1,
            timestamp_ms: 1,
            record,
        }
    }

    /// Storage whose log holds a no-op at index 1, applied with `batch`.
    fn applied_at_1(batch: ApplyBatch) -> MemStorage {
        let s = MemStorage::new();
        s.persist(keel_storage::LogWrite {
            entries: &[entry(1, Record::Noop)],
            ..Default::default()
        })
        .expect("persist");
        s.apply(&ApplyBatch {
            last_applied: LogId { index: 1, term: 1 },
            ..batch
        })
        .expect("apply");
        s
    }

    /// Storage where clients 5, 7, 8 and 9 have open sessions (opened at log time 0).
    fn with_sessions() -> MemStorage {
        applied_at_1(ApplyBatch {
            sessions: [5, 7, 8, 9]
                .into_iter()
                .map(|c| (c, Some(Session::default())))
                .collect(),
            ..Default::default()
        })
    }

    fn run(runtime: &Runtime, registry: &Registry, entries: &[Entry]) -> Applied {
        let view = Box::new(with_sessions().view().expect("view"));
        apply_batch(
            runtime,
            &Blobs::new(None, &[BUILTIN_KV]),
            registry,
            view,
            Arc::default(),
            entries,
        )
        .expect("applies")
    }

    fn answers(a: &Applied) -> Vec<String> {
        a.results
            .iter()
            .map(|o| match &o.result {
                Ok(b) => String::from_utf8_lossy(b).into_owned(),
                Err(e) => format!("error: {e}"),
            })
            .collect()
    }

    #[test]
    fn a_batched_entry_answers_as_one_entry_per_command_would() {
        let (runtime, registry) = kv();
        let cmds = vec![
            put("a", "1", Some((7, 1))),
            put("a", "2", None),
            Command {
                plugin: "nope".into(),
                client: None,
                payload: Payload::Inline(b"{}".to_vec()),
            },
            put("a", "3", Some((8, 1))),
            Command {
                plugin: "kv".into(),
                client: None,
                payload: Payload::Inline(b"not json".to_vec()),
            },
            put("b", "4", Some((7, 2))),
        ];
        let batched = run(
            &runtime,
            &registry,
            &[entry(1, Record::Batch(cmds.clone()))],
        );
        let single: Vec<Entry> = cmds
            .iter()
            .enumerate()
            .map(|(i, c)| entry(i as u64 + 1, Record::Command(c.clone())))
            .collect();
        let single = run(&runtime, &registry, &single);
        assert_eq!(answers(&batched), answers(&single));
        assert_eq!(
            answers(&batched)[..2],
            [
                r#"{"prev":null}"#.to_string(),
                r#"{"prev":"1"}"#.to_string()
            ]
        );
        assert!(answers(&batched)[2].contains("unknown plugin"));
        let final_state = |a: &Applied| {
            let mut m = BTreeMap::new();
            for w in &a.batch.writes {
                m.insert((w.namespace.clone(), w.key.clone()), w.value.clone());
            }
            let sessions: BTreeMap<u64, Option<Session>> =
                a.batch.sessions.iter().cloned().collect();
            (m, sessions)
        };
        assert_eq!(final_state(&batched), final_state(&single));
        let positions: Vec<u32> = batched.results.iter().map(|o| o.position).collect();
        assert_eq!(positions, [0, 1, 2, 3, 4, 5]);
    }

    #[test]
    fn a_serial_repeated_inside_one_entry_is_applied_once() {
        // Raft paper §8, within an entry: a client that retried before its first attempt was
        // applied can land twice in one batch. Applying both would answer {"prev":"x"} to the
        // retry; the session must hand back the first answer instead.
        let (runtime, registry) = kv();
        let cmds = vec![
            put("k", "x", Some((5, 3))),
            put("k", "x", Some((5, 3))),
            put("k", "y", Some((5, 2))),
            put("k", "z", Some((5, 4))),
        ];
        let a = run(&runtime, &registry, &[entry(1, Record::Batch(cmds))]);
        let got = answers(&a);
        assert_eq!(got[0], r#"{"prev":null}"#);
        assert_eq!(got[1], got[0], "the retry gets the stored answer");
        assert!(got[2].contains("stale serial 2"), "{}", got[2]);
        assert_eq!(got[3], r#"{"prev":"x"}"#, "the duplicate wrote nothing");
        let last = a.batch.sessions.last().expect("a session");
        assert_eq!((last.0, last.1.as_ref().map(|s| s.serial)), (5, Some(4)));
    }

    #[test]
    fn a_serial_already_in_the_session_table_is_answered_from_it() {
        let (runtime, registry) = kv();
        let first = entry(1, Record::Command(put("k", "x", Some((9, 1)))));
        let retry = entry(
            2,
            Record::Batch(vec![put("k", "x", Some((9, 1))), put("j", "y", None)]),
        );
        let a = run(&runtime, &registry, &[first, retry]);
        let got = answers(&a);
        assert_eq!(got[1], got[0]);
        assert_eq!(
            a.batch.writes.iter().filter(|w| w.key == b"k").count(),
            1,
            "the retried put was not applied again"
        );
    }

    fn at(index: u64, timestamp_ms: u64, record: Record) -> Entry {
        Entry {
            index,
            term: 1,
            timestamp_ms,
            record,
        }
    }

    /// Thesis §6.3: sessions are opened through the log, expire by the log's clock on every
    /// node alike, and a command of an unknown or expired session is refused, not applied
    /// (it may be the retry of one applied before the expiry).
    #[test]
    fn sessions_open_and_expire_by_the_log_and_an_expired_one_is_refused() {
        let (runtime, registry) = kv();
        let storage = with_sessions(); // 5, 7, 8, 9 opened at log time 0
        let entries = [
            at(2, 1_000, Record::OpenSession),
            at(3, 2_000, Record::Command(put("k", "a", Some((2, 1))))),
            at(4, 2_500, Record::Command(put("k", "b", Some((7, 1))))),
            // Unused since before 2,200: the stored 5, 8, 9 and the session opened at 2.
            at(5, 3_000, Record::ExpireSessions { before_ms: 2_200 }),
            at(6, 3_100, Record::Command(put("k", "c", Some((2, 1))))),
            at(7, 3_200, Record::Command(put("k", "d", Some((9, 1))))),
            at(8, 3_300, Record::Command(put("k", "e", Some((7, 2))))),
            at(9, 3_400, Record::Command(put("k", "f", Some((424_242, 1))))),
        ];
        let a = apply_batch(
            &runtime,
            &Blobs::new(None, &[BUILTIN_KV]),
            &registry,
            Box::new(storage.view().expect("view")),
            Arc::default(),
            &entries,
        )
        .expect("applies");
        let got = answers(&a);
        assert_eq!(got[0], r#"{"client_id":2}"#, "the id is the entry's index");
        assert_eq!(got[1], r#"{"prev":null}"#);
        assert_eq!(got[2], r#"{"prev":"a"}"#);
        // Session 2 was last used at 2,000 < 2,200: its retry is refused, not re-applied
        // (which would answer {"prev":"b"}).
        let refused: Vec<bool> = a.results.iter().map(|o| o.unknown_session).collect();
        assert_eq!(refused, [false, false, false, true, true, false, true]);
        assert!(
            got[3].contains("session 2 is unknown or expired"),
            "{}",
            got[3]
        );
        assert_eq!(got[5], r#"{"prev":"b"}"#, "7 was used at 2,500 and lives");
        let ks: Vec<_> = a.batch.writes.iter().filter(|w| w.key == b"k").collect();
        assert_eq!(ks.len(), 3, "refused commands write nothing");
        // Storage ends as the replicas must: 7 alone, at serial 2.
        storage
            .persist(keel_storage::LogWrite {
                entries: &entries,
                ..Default::default()
            })
            .expect("persist");
        storage.apply(&a.batch).expect("flush");
        let view = storage.view().expect("view");
        let left = view.scan_sessions(None, 100).expect("scan");
        assert_eq!(
            left.iter().map(|(c, s)| (*c, s.serial)).collect::<Vec<_>>(),
            [(7, 2)]
        );
        assert_eq!(left[0].1.last_ms, 3_300);
    }

    #[test]
    fn expiry_sees_sessions_in_every_layer() {
        let (runtime, registry) = kv();
        let storage = with_sessions();
        // 7 was used again, in the layer not yet flushed; 8 expired there already.
        let mut upper = Unflushed::default();
        upper.absorb(ApplyBatch {
            last_applied: LogId { index: 2, term: 1 },
            sessions: vec![
                (
                    7,
                    Some(Session {
                        serial: 1,
                        result: vec![0],
                        last_ms: 5_000,
                    }),
                ),
                (8, None),
            ],
            ..Default::default()
        });
        let a = apply_batch(
            &runtime,
            &Blobs::new(None, &[BUILTIN_KV]),
            &registry,
            Box::new(storage.view().expect("view")),
            Arc::new(upper),
            &[at(3, 6_000, Record::ExpireSessions { before_ms: 4_000 })],
        )
        .expect("applies");
        let expired: Vec<u64> = a
            .batch
            .sessions
            .iter()
            .filter(|(_, s)| s.is_none())
            .map(|(c, _)| *c)
            .collect();
        assert_eq!(
            expired,
            [5, 9],
            "7 is fresh above storage; 8 is gone already"
        );
    }

    fn builtin_deploy(name: &str) -> Deploy {
        Deploy {
            plugin: name.into(),
            version: "test".into(),
            sha256: Sha256::digest(BUILTIN_KV).into(),
            fuel_per_apply: 100_000_000,
            memory_limit: 64 << 20,
        }
    }

    /// Storage whose applied state holds these deployment records (`plugin/{name}` → value).
    fn with_deployments(records: Vec<(String, Vec<u8>)>) -> MemStorage {
        applied_at_1(ApplyBatch {
            writes: records
                .into_iter()
                .map(|(name, value)| KvWrite {
                    namespace: SYSTEM_NAMESPACE.into(),
                    key: format!("plugin/{name}").into_bytes(),
                    value: Some(value),
                })
                .collect(),
            ..Default::default()
        })
    }

    /// Design §8: a node that cannot read a deployment refuses to go on (it used to skip
    /// the record, then answer "unknown plugin" where the other replicas applied).
    #[test]
    fn a_deployment_record_that_does_not_decode_stops_the_reload_and_is_named() {
        let runtime = Runtime::new(keel_plugin::RuntimeConfig::default()).expect("runtime");
        let good = postcard::to_allocvec(&builtin_deploy("kv")).expect("encode");
        let torn = good[..good.len() / 2].to_vec();
        let storage = with_deployments(vec![("kv".into(), good), ("zz-torn".into(), torn)]);
        let err = reload(
            &runtime,
            &Blobs::new(None, &[BUILTIN_KV]),
            &Registry::default(),
            &storage.view().expect("view"),
        )
        .expect_err("an undecodable deployment must stop the reload");
        let msg = err.to_string();
        assert!(msg.contains("__keel/plugin/zz-torn"), "{msg}");
        assert!(msg.contains("does not decode"), "{msg}");
    }

    /// No cap on the number of deployments: the reload used to stop at 10,000 records,
    /// leaving every plugin past them unknown on this node only.
    #[test]
    fn every_deployment_record_is_read_however_many_there_are() {
        let n = 10_001;
        let records = (0..n)
            .map(|i| {
                let name = format!("p{i:05}");
                let value = postcard::to_allocvec(&builtin_deploy(&name)).expect("encode");
                (name, value)
            })
            .collect();
        let storage = with_deployments(records);
        let got = deployments(&storage.view().expect("view")).expect("deployments");
        assert_eq!(got.len(), n);
        assert_eq!(got.first().map(|d| d.plugin.as_str()), Some("p00000"));
        assert_eq!(got.last().map(|d| d.plugin.as_str()), Some("p10000"));
    }

    fn kv_write(key: &str, value: Option<&str>) -> KvWrite {
        KvWrite {
            namespace: "kv".into(),
            key: key.as_bytes().to_vec(),
            value: value.map(|v| v.as_bytes().to_vec()),
        }
    }

    /// Storage with a..d applied at index 1, and a log reaching index 3.
    fn stored() -> MemStorage {
        let s = MemStorage::new();
        let log: Vec<Entry> = (1..=3).map(|i| entry(i, Record::Noop)).collect();
        s.persist(keel_storage::LogWrite {
            entries: &log,
            ..Default::default()
        })
        .expect("persist");
        s.apply(&ApplyBatch {
            last_applied: LogId { index: 1, term: 1 },
            writes: ["a", "b", "c", "d"]
                .iter()
                .map(|k| kv_write(k, Some(k)))
                .collect(),
            ..Default::default()
        })
        .expect("apply");
        s
    }

    fn unflushed() -> Unflushed {
        let mut u = Unflushed::default();
        u.absorb(ApplyBatch {
            last_applied: LogId { index: 2, term: 1 },
            writes: vec![
                kv_write("b", None),
                kv_write("c", Some("C2")),
                kv_write("e", Some("E")),
            ],
            sessions: vec![(
                4,
                Some(Session {
                    serial: 9,
                    result: vec![0],
                    last_ms: 0,
                }),
            )],
            ..Default::default()
        });
        u
    }

    fn pairs(v: Vec<(Vec<u8>, Vec<u8>)>) -> Vec<String> {
        v.into_iter()
            .map(|(k, v)| {
                format!(
                    "{}={}",
                    String::from_utf8_lossy(&k),
                    String::from_utf8_lossy(&v)
                )
            })
            .collect()
    }

    #[test]
    fn reads_layer_the_batch_over_the_unflushed_state_over_storage() {
        let storage = stored();
        let overlay = Overlay {
            base: Box::new(storage.view().expect("view")),
            unflushed: Arc::new(unflushed()),
            writes: [
                (("kv".to_string(), b"d".to_vec()), None),
                (("kv".to_string(), b"f".to_vec()), Some(b"F".to_vec())),
                (("other".to_string(), b"a".to_vec()), Some(b"no".to_vec())),
            ]
            .into(),
            sessions: BTreeMap::new(),
        };
        assert_eq!(
            overlay.get("kv", b"b").expect("get"),
            None,
            "deleted unflushed"
        );
        assert_eq!(overlay.get("kv", b"c").expect("get"), Some(b"C2".to_vec()));
        assert_eq!(overlay.get("kv", b"a").expect("get"), Some(b"a".to_vec()));
        let all = overlay.range("kv", b"", None, 100).expect("range");
        assert_eq!(pairs(all), ["a=a", "c=C2", "e=E", "f=F"]);
        // Deletes in both upper layers hide stored pairs without shortening the page.
        let two = overlay.range("kv", b"b", None, 2).expect("range");
        assert_eq!(pairs(two), ["c=C2", "e=E"]);
        let bounded = overlay.range("kv", b"a", Some(b"e"), 100).expect("range");
        assert_eq!(pairs(bounded), ["a=a", "c=C2"]);
        assert_eq!(
            overlay.session(4).expect("session").map(|s| s.serial),
            Some(9)
        );
    }

    #[test]
    fn a_layer_being_flushed_stays_readable_under_new_applies_until_storage_has_it() {
        let storage = stored();
        let mut slot = Arc::new(unflushed());
        let frozen = Unflushed::freeze(&mut slot).expect("something to flush");
        assert!(
            Unflushed::freeze(&mut slot).is_none(),
            "one flush at a time"
        );
        Arc::make_mut(&mut slot).absorb(ApplyBatch {
            last_applied: LogId { index: 3, term: 1 },
            writes: vec![kv_write("c", Some("C3")), kv_write("e", None)],
            ..Default::default()
        });
        let read = |slot: &Arc<Unflushed>, storage: &MemStorage| {
            let overlay = Overlay {
                base: Box::new(storage.view().expect("view")),
                unflushed: Arc::clone(slot),
                writes: BTreeMap::new(),
                sessions: BTreeMap::new(),
            };
            let pairs = pairs(overlay.range("kv", b"", None, 100).expect("range"));
            let session = overlay.session(4).expect("session").map(|s| s.serial);
            (pairs, session)
        };
        // Before the flush commits: b deleted and the session from the frozen layer, c and e
        // from the new one.
        let expected = (
            vec!["a=a".to_string(), "c=C3".into(), "d=d".into()],
            Some(9),
        );
        assert_eq!(read(&slot, &storage), expected);
        // The writer commits it; until the driver drops the layer, it is read twice: same.
        storage
            .apply(&frozen.to_batch().expect("a batch"))
            .expect("flush");
        assert_eq!(read(&slot, &storage), expected);
        // A report about another layer (one a snapshot install dropped) changes nothing.
        assert!(!slot.is_flushing(&Arc::new(unflushed())));
        assert!(slot.is_flushing(&frozen));
        Arc::make_mut(&mut slot).flushed();
        assert_eq!(read(&slot, &storage), expected);
        assert_eq!(slot.len(), 2, "only the newer layer is left in memory");
        assert_eq!(
            slot.to_batch().expect("newer layer").last_applied.index,
            3,
            "the next flush writes only the newer layer"
        );
    }

    #[test]
    fn a_flush_leaves_the_same_state_in_storage() {
        let storage = stored();
        let u = unflushed();
        let through = Overlay {
            base: Box::new(storage.view().expect("view")),
            unflushed: Arc::new(u.clone()),
            writes: BTreeMap::new(),
            sessions: BTreeMap::new(),
        }
        .range("kv", b"", None, 100)
        .expect("range");
        storage
            .apply(&u.to_batch().expect("a batch"))
            .expect("flush");
        let view = storage.view().expect("view");
        assert_eq!(view.applied().last_applied.index, 2);
        let flushed = Overlay {
            base: Box::new(view),
            unflushed: Arc::default(),
            writes: BTreeMap::new(),
            sessions: BTreeMap::new(),
        };
        assert_eq!(
            pairs(flushed.range("kv", b"", None, 100).expect("range")),
            pairs(through)
        );
        assert_eq!(
            flushed.session(4).expect("session").map(|s| s.serial),
            Some(9)
        );
        assert!(Unflushed::default().to_batch().is_none());
    }
}
