//! Applying committed entries: plugins run each command against the state as of the entry
//! before it (earlier entries of the same batch included), and the whole batch — plugins' KV
//! writes, client sessions, deployments, `last_applied` — is committed in one storage
//! transaction (design §4: nothing half-applied survives a crash).

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};

use keel_plugin::{ApplyContext, BlobRef, Plugin, PluginError, Runtime};
use keel_raft::{Entry, Payload, Record};
use keel_storage::{ApplyBatch, KvWrite, LogId, Session, StateView, StorageError};

use crate::blobs::{Blobs, hex};

use super::layer::*;
use super::registry::*;

/// The stored form of a session result: `0` + answer, or `1` + error text.
pub(super) fn encode_result(r: &CommandResult) -> Vec<u8> {
    match r {
        Ok(b) => [&[0u8][..], b].concat(),
        Err(e) => [&[1u8][..], e.as_bytes()].concat(),
    }
}

pub(super) fn decode_result(b: &[u8]) -> CommandResult {
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
    /// What the batch changed in memory (plugins deployed or undeployed, the auth table), to
    /// activate once it is committed ([`activate`]).
    pub deployed: Activation,
    /// The dry-run journal's records of the batch's commands (empty when it is off), to add
    /// once the batch is committed ([`Registry::journal`]).
    pub journal: Vec<super::Journaled>,
}

/// What a committed batch changes in the registry.
#[derive(Default)]
pub struct Activation {
    /// Plugins deployed (`Some`) or undeployed (`None`).
    pub plugins: Vec<(String, Option<Arc<Plugin>>)>,
    /// The auth table as the batch leaves it, if the batch changed it.
    pub auth: Option<Arc<crate::auth::AuthTable>>,
    /// Plugins whose state the batch dropped.
    pub dropped: Vec<String>,
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
        blobs,
        overlay: Arc::new(Mutex::new(Overlay {
            base,
            unflushed,
            writes: BTreeMap::new(),
            sessions: BTreeMap::new(),
        })),
        batch: ApplyBatch::default(),
        results: Vec::new(),
        deployed: BTreeMap::new(),
        auth: None,
        journal: registry.journal().is_on().then(Vec::new),
        stats: BTreeMap::new(),
        dropped: Vec::new(),
    };
    for e in entries {
        applier.batch.last_applied = LogId::of(e);
        match &e.record {
            Record::Noop => {}
            Record::Config(c) => applier.batch.config = Some(c.clone()),
            Record::Deploy(d) => {
                let plugin = Arc::new(load(runtime, blobs, d)?);
                applier.deployed.insert(d.plugin.clone(), Some(plugin));
                let key = format!("plugin/{}", d.plugin).into_bytes();
                let value = postcard::to_allocvec(d).unwrap_or_default();
                applier.write(SYSTEM_NAMESPACE, key, Some(value));
                applier.note_deploy(e, d)?;
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
                    applier.forget_owner(client)?;
                }
            }
            Record::Undeploy { plugin } => {
                let was_active = applier.undeploy(e, plugin)?;
                let answer = serde_json::json!({
                    "plugin": plugin,
                    "undeployed": was_active,
                    "index": e.index,
                });
                applier.answer_entry(e, answer.to_string());
            }
            Record::DropState { plugin } => {
                let was_active = applier.undeploy(e, plugin)?;
                let (keys, released) = applier.drop_state(e, plugin)?;
                let answer = serde_json::json!({
                    "plugin": plugin,
                    "undeployed": was_active,
                    "keys_deleted": keys,
                    "blobs_released": released,
                    "index": e.index,
                });
                applier.answer_entry(e, answer.to_string());
            }
        }
    }
    applier.write_stats()?;
    Ok(Applied {
        batch: applier.batch,
        results: applier.results,
        deployed: Activation {
            plugins: applier.deployed.into_iter().collect(),
            auth: applier.auth.map(Arc::new),
            dropped: applier.dropped,
        },
        journal: applier.journal.unwrap_or_default(),
    })
}

/// The state of one [`apply_batch`] call.
pub(super) struct Applier<'a> {
    pub(super) registry: &'a Registry,
    blobs: &'a Blobs,
    overlay: Arc<Mutex<Overlay>>,
    batch: ApplyBatch,
    results: Vec<CommandOutcome>,
    /// Deployed (or undeployed: `None`) earlier in this batch: so for the entries after
    /// theirs.
    pub(super) deployed: BTreeMap<String, Option<Arc<Plugin>>>,
    /// The auth table as this batch leaves it so far, once an entry changed it.
    pub(super) auth: Option<crate::auth::AuthTable>,
    /// The dry-run journal's records, if it is on.
    pub(super) journal: Option<Vec<super::Journaled>>,
    /// Per plugin: commands run, failed, and the last failure, in this batch.
    pub(super) stats: BTreeMap<String, super::PluginStats>,
    /// Plugins whose state this batch dropped.
    pub(super) dropped: Vec<String>,
}

/// One plugin's commands of an entry: `(position, context, bytes)` each.
pub(super) type Group<'e> = (Arc<Plugin>, Vec<(usize, ApplyContext, &'e [u8])>);

/// What one command of an entry comes to before any plugin runs.
pub(super) enum Plan {
    /// Decided without the plugin (a stored answer, a stale serial, an unknown plugin).
    Answer(CommandResult),
    /// A retry of the command at this position of the same entry: its answer.
    SameAs(usize),
    /// Runs in its plugin's group.
    Run,
}

impl Applier<'_> {
    pub(super) fn overlay(&self) -> std::sync::MutexGuard<'_, Overlay> {
        self.overlay.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub(super) fn get(&self, ns: &str, key: &[u8]) -> Result<Option<Vec<u8>>, StorageError> {
        self.overlay().get(ns, key)
    }

    pub(super) fn write(&mut self, namespace: &str, key: Vec<u8>, value: Option<Vec<u8>>) {
        self.overlay()
            .writes
            .insert((namespace.to_owned(), key.clone()), value.clone());
        self.batch.writes.push(KvWrite {
            namespace: namespace.to_owned(),
            key,
            value,
        });
    }

    pub(super) fn session(&self, client: u64) -> Result<Option<Session>, StorageError> {
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
        // Reference-only payloads (design §6): the plugin sees the same bytes as inline. The
        // driver applies an entry only once its blobs are here; one lost or damaged since
        // stops the batch (it is fetched and the batch applied again), never the command.
        let mut resolved: HashMap<[u8; 32], Arc<Vec<u8>>> = HashMap::new();
        for cmd in cmds {
            if let Payload::Ref { sha256, len } = cmd.payload.body()
                && !resolved.contains_key(sha256)
            {
                let bytes = self
                    .blobs
                    .local(sha256)
                    .filter(|b| b.len() as u64 == *len)
                    .ok_or(ApplyError::BlobGone(*sha256))?;
                resolved.insert(*sha256, bytes);
            }
            // Attachments are read lazily by the plugin; they must be here all the same.
            for a in cmd.payload.attachments() {
                if self.blobs.len_of(&a.sha256) != Some(a.len) {
                    return Err(ApplyError::BlobGone(a.sha256));
                }
            }
        }
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
            let plugin = match self.deployed.get(&cmd.plugin) {
                Some(p) => p.clone(),
                None => self.registry.get(&cmd.plugin),
            };
            let bytes: &[u8] = match cmd.payload.body() {
                Payload::Inline(bytes) => bytes,
                Payload::Ref { sha256, .. } => resolved.get(sha256).map_or(&[], |b| b.as_slice()),
                // Never nested (the node builds payloads): no bytes.
                Payload::Attached { .. } => &[],
            };
            let plan = match plugin {
                // A change to the auth table: applied by the host, never by a plugin.
                None if cmd.plugin == crate::auth::AUTH_PLUGIN => {
                    Plan::Answer(self.auth_change(e, bytes)?)
                }
                None => Plan::Answer(Err(format!("unknown plugin {:?}", cmd.plugin))),
                Some(plugin) => {
                    let ctx = ApplyContext {
                        index: e.index,
                        term: e.term,
                        timestamp_ms: e.timestamp_ms,
                        client_id: cmd.client.map(|c| c.client_id.to_string()),
                        attachments: cmd
                            .payload
                            .attachments()
                            .iter()
                            .map(|a| BlobRef {
                                sha256: a.sha256,
                                len: a.len,
                            })
                            .collect(),
                    };
                    let group = groups
                        .entry(cmd.plugin.as_str())
                        .or_insert_with(|| (plugin, Vec::new()));
                    group.1.push((pos, ctx, bytes));
                    Plan::Run
                }
            };
            plans.push(plan);
        }

        // Run each plugin's group; record its writes in command order.
        let mut ran: HashMap<usize, CommandResult> = HashMap::new();
        for (name, (plugin, group)) in groups {
            let view = Arc::new(Namespace::new(
                self.overlay.clone(),
                name.to_owned(),
                Some(self.blobs.clone()),
            ));
            let calls: Vec<(ApplyContext, &[u8])> =
                group.iter().map(|(_, c, b)| (c.clone(), *b)).collect();
            let outcomes = plugin.apply_batch(view, &calls).map_err(|e| match e {
                // A blob the plugin may read is missing or was found damaged: wait for it
                // and apply the batch again, as for a payload blob.
                PluginError::BlobMissing { ref sha256, .. } => crate::blobs::parse_hex(sha256)
                    .map_or(ApplyError::Host(e), ApplyError::BlobGone),
                e => ApplyError::Host(e),
            })?;
            for ((pos, ctx, bytes), outcome) in group.iter().zip(outcomes) {
                let stats = self.stats.entry(name.to_owned()).or_default();
                stats.count(e.index, &outcome.result);
                // The dry-run journal needs what each key held just before each write.
                let journaling = self.journal.is_some();
                let mut before = Vec::new();
                let writes = journaling.then(|| outcome.writes.clone());
                for (key, value) in outcome.writes {
                    if journaling {
                        before.push((key.clone(), self.get(name, &key)?));
                    }
                    self.write(name, key, value);
                }
                if let (Some(journal), Some(writes)) = (&mut self.journal, writes) {
                    journal.push(super::Journaled {
                        index: e.index,
                        position: *pos as u32,
                        plugin: plugin.clone(),
                        ctx: ctx.clone(),
                        command: bytes.to_vec(),
                        result: outcome
                            .result
                            .as_ref()
                            .map(Vec::clone)
                            .map_err(|e| e.to_string()),
                        writes,
                        retains: outcome.retains.clone(),
                        before,
                    });
                }
                // Retain counts change with the command's writes, in the same batch.
                for (sha, delta) in outcome.retains {
                    let key = retain_key(name, &sha);
                    let now = decode_count(self.get(SYSTEM_NAMESPACE, &key)?.as_deref());
                    let next = (now as i64).saturating_add(delta).max(0) as u64;
                    let value = (next > 0).then(|| next.to_be_bytes().to_vec());
                    self.write(SYSTEM_NAMESPACE, key, value);
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

pub(super) fn stale(serial: u64, at: u64) -> String {
    format!("stale serial {serial} (session is at {at})")
}
