//! Each plugin's version history, kept in the replicated state beside its active deployment
//! (`__keel/history/{name}`), so that every node lists the same versions and a rollback is
//! the re-proposal of a recorded `Deploy` (docs/plugins.md, "Life cycle").

use std::sync::Arc;

use keel_plugin::KvView;
use keel_raft::{Deploy, Entry};
use serde::{Deserialize, Serialize};

use super::apply::Applier;
use super::layer::RETAIN_PREFIX;
use super::registry::{ApplyError, SYSTEM_NAMESPACE};

/// Versions kept per plugin in the state. A constant, not a setting: the history is part of
/// the state hash, so every node must trim it alike (`plugin_history` only limits how far
/// back listings and rollbacks reach).
pub const HISTORY_KEPT: usize = 64;

/// One activation of a plugin version.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Version {
    /// What was activated.
    pub deploy: Deploy,
    /// The log index it became active at.
    pub index: u64,
    /// The log's clock then (ms since the epoch).
    pub at_ms: u64,
}

/// A plugin's activations, oldest first, and whether it is undeployed now.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct History {
    /// Oldest first; at most [`HISTORY_KEPT`].
    pub versions: Vec<Version>,
    /// The index of the `Undeploy` that deactivated it, if it is not active.
    pub undeployed_at: Option<u64>,
}

/// The state key of `name`'s history.
pub fn history_key(name: &str) -> Vec<u8> {
    format!("history/{name}").into_bytes()
}

fn decode(key: &[u8], bytes: &[u8]) -> Result<History, ApplyError> {
    postcard::from_bytes(bytes).map_err(|e| ApplyError::BadDeployment {
        key: String::from_utf8_lossy(key).into_owned(),
        detail: e.to_string(),
    })
}

impl Applier<'_> {
    fn history(&self, name: &str) -> Result<History, ApplyError> {
        let key = history_key(name);
        match self.get(SYSTEM_NAMESPACE, &key)? {
            Some(bytes) => decode(&key, &bytes),
            None => Ok(History::default()),
        }
    }

    fn set_history(&mut self, name: &str, h: &History) {
        let value = postcard::to_allocvec(h).unwrap_or_default();
        self.write(SYSTEM_NAMESPACE, history_key(name), Some(value));
    }

    /// Records that `d` became active at `e`.
    pub(super) fn note_deploy(&mut self, e: &Entry, d: &Deploy) -> Result<(), ApplyError> {
        let mut h = self.history(&d.plugin)?;
        h.versions.push(Version {
            deploy: d.clone(),
            index: e.index,
            at_ms: e.timestamp_ms,
        });
        let over = h.versions.len().saturating_sub(HISTORY_KEPT);
        h.versions.drain(..over);
        h.undeployed_at = None;
        self.set_history(&d.plugin, &h);
        Ok(())
    }

    /// Deactivates `name` at `e` (its state and history are kept); whether it was active.
    pub(super) fn undeploy(&mut self, e: &Entry, name: &str) -> Result<bool, ApplyError> {
        let was_active = self.note_undeploy(e, name)?;
        self.deployed.insert(name.to_owned(), None);
        self.write(
            SYSTEM_NAMESPACE,
            format!("plugin/{name}").into_bytes(),
            None,
        );
        Ok(was_active)
    }

    /// Deletes `name`'s whole namespace, its retains and its counters at `e` (`keel
    /// undeploy --drop-state`); its version history stays. Returns the keys deleted and the
    /// blobs released. Every key goes through the batch, so this costs memory in proportion
    /// to the namespace's key count (docs/plugins.md).
    pub(super) fn drop_state(&mut self, e: &Entry, name: &str) -> Result<(u64, u64), ApplyError> {
        let keys = self.keys_under(name, b"")?;
        let retains = self.keys_under(
            SYSTEM_NAMESPACE,
            format!("{RETAIN_PREFIX}{name}/").as_bytes(),
        )?;
        let counts = (keys.len() as u64, retains.len() as u64);
        for key in keys {
            self.write(name, key, None);
        }
        for key in retains {
            self.write(SYSTEM_NAMESPACE, key, None);
        }
        self.stats.remove(name);
        // Earlier commands of this batch undo nothing now either.
        if let Some(journal) = &mut self.journal {
            journal.retain(|r| r.name() != name);
        }
        self.write(SYSTEM_NAMESPACE, stats_key(name), None);
        self.dropped.push(name.to_owned());
        tracing::info!(target: "keel::txn", plugin = name, index = e.index, keys = counts.0,
            released = counts.1, "plugin state dropped");
        Ok(counts)
    }

    /// Every key of `ns` starting with `prefix`, as the batch sees it so far.
    fn keys_under(&self, ns: &str, prefix: &[u8]) -> Result<Vec<Vec<u8>>, ApplyError> {
        const PAGE: usize = 1_000;
        let end = prefix_end(prefix);
        let mut keys = Vec::new();
        let mut start = prefix.to_vec();
        loop {
            let page = self.overlay().range(ns, &start, end.as_deref(), PAGE)?;
            let full = page.len() >= PAGE;
            for (k, _) in page {
                start = k.clone();
                start.push(0);
                keys.push(k);
            }
            if !full {
                return Ok(keys);
            }
        }
    }

    /// Adds this batch's command counts to each plugin's counters in the state.
    pub(super) fn write_stats(&mut self) -> Result<(), ApplyError> {
        for (name, delta) in std::mem::take(&mut self.stats) {
            let key = stats_key(&name);
            let mut stats: PluginStats = self
                .get(SYSTEM_NAMESPACE, &key)?
                .and_then(|b| postcard::from_bytes(&b).ok())
                .unwrap_or_default();
            stats.add(delta);
            let value = postcard::to_allocvec(&stats).unwrap_or_default();
            self.write(SYSTEM_NAMESPACE, key, Some(value));
        }
        Ok(())
    }

    /// Records that `name` was undeployed at `e`; whether it was active.
    fn note_undeploy(&mut self, e: &Entry, name: &str) -> Result<bool, ApplyError> {
        let active = self
            .get(SYSTEM_NAMESPACE, format!("plugin/{name}").as_bytes())?
            .is_some();
        if active {
            let mut h = self.history(name)?;
            h.undeployed_at = Some(e.index);
            self.set_history(name, &h);
        }
        Ok(active)
    }
}

/// The state key of `name`'s command counters.
pub fn stats_key(name: &str) -> Vec<u8> {
    format!("stats/{name}").into_bytes()
}

/// Longest failure message kept in [`PluginStats::last_error`].
const ERROR_KEPT: usize = 1_024;

/// The commands a plugin has run, counted in the replicated state (`__keel/stats/{name}`),
/// so every node reports the same and a restart loses nothing. Written once per applied
/// batch per plugin, not per command.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PluginStats {
    /// Commands it ran, answered or failed.
    pub applied: u64,
    /// Of those, the ones that failed (the plugin's error, a trap, fuel or memory).
    pub failed: u64,
    /// The latest failure: its entry's index and the message (cut at 1 KiB).
    pub last_error: Option<(u64, String)>,
}

impl PluginStats {
    pub(super) fn count<T, E: std::fmt::Display>(&mut self, index: u64, result: &Result<T, E>) {
        self.applied += 1;
        if let Err(e) = result {
            self.failed += 1;
            let mut message = e.to_string();
            if message.len() > ERROR_KEPT {
                let mut cut = ERROR_KEPT;
                while !message.is_char_boundary(cut) {
                    cut -= 1;
                }
                message.truncate(cut);
            }
            self.last_error = Some((index, message));
        }
    }

    fn add(&mut self, later: PluginStats) {
        self.applied += later.applied;
        self.failed += later.failed;
        if later.last_error.is_some() {
            self.last_error = later.last_error;
        }
    }
}

/// What the applied state says about one plugin: its active deployment, its history and
/// its counters.
#[derive(Clone, Debug, Default)]
pub struct PluginRecord {
    /// The active version (`None`: undeployed).
    pub active: Option<Deploy>,
    /// Its activations (empty for one deployed before histories were kept).
    pub history: History,
    /// Commands run and failed.
    pub stats: PluginStats,
}

/// Reads one plugin's record from the `__keel` namespace of the applied state.
pub fn plugin_record(view: &Arc<dyn KvView>, name: &str) -> anyhow::Result<PluginRecord> {
    let active = match view
        .get(format!("plugin/{name}").as_bytes())
        .map_err(kv_error)?
    {
        Some(b) => Some(postcard::from_bytes::<Deploy>(&b)?),
        None => None,
    };
    let key = history_key(name);
    let history = match view.get(&key).map_err(kv_error)? {
        Some(b) => decode(&key, &b)?,
        None => History::default(),
    };
    // Counters are informative: one that does not decode reads as none.
    let stats = view
        .get(&stats_key(name))
        .map_err(kv_error)?
        .and_then(|b| postcard::from_bytes(&b).ok())
        .unwrap_or_default();
    Ok(PluginRecord {
        active,
        history,
        stats,
    })
}

fn kv_error(e: keel_plugin::StorageError) -> anyhow::Error {
    anyhow::anyhow!("reading the applied state: {e}")
}

/// Every plugin the applied state knows (active or with a history), by name.
pub fn plugin_names(view: &Arc<dyn KvView>) -> anyhow::Result<Vec<String>> {
    let mut names = std::collections::BTreeSet::new();
    for prefix in ["plugin/", "history/"] {
        super::layer::for_each_under(view, prefix, |name, _| {
            names.insert(String::from_utf8_lossy(name).into_owned());
        })?;
    }
    Ok(names.into_iter().collect())
}

/// The first key past every key starting with `prefix` (`None`: there is none, or the
/// prefix is empty).
fn prefix_end(prefix: &[u8]) -> Option<Vec<u8>> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return Some(end);
        }
    }
    None
}
