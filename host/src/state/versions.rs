//! Each plugin's version history, kept in the replicated state beside its active deployment
//! (`__keel/history/{name}`), so that every node lists the same versions and a rollback is
//! the re-proposal of a recorded `Deploy` (docs/plugins.md, "Life cycle").

use std::sync::Arc;

use keel_plugin::KvView;
use keel_raft::{Deploy, Entry};
use serde::{Deserialize, Serialize};

use super::apply::Applier;
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

    /// Records that `name` was undeployed at `e`; whether it was active.
    pub(super) fn note_undeploy(&mut self, e: &Entry, name: &str) -> Result<bool, ApplyError> {
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

/// What the applied state says about one plugin: its active deployment and its history.
#[derive(Clone, Debug, Default)]
pub struct PluginRecord {
    /// The active version (`None`: undeployed).
    pub active: Option<Deploy>,
    /// Its activations (empty for one deployed before histories were kept).
    pub history: History,
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
    Ok(PluginRecord { active, history })
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
