//! The active plugins: loading a deployed version, reloading them all from the applied
//! state after a restart or a snapshot install, activating those a batch deployed.

use std::collections::BTreeMap;
use std::sync::{Arc, RwLock};

use keel_plugin::{Limits, Plugin, PluginError, PluginId, Runtime};
use keel_raft::Deploy;
use keel_storage::{KvRange, StateView, StorageError};

use super::apply::Activation;
use crate::auth::AuthTable;
use crate::blobs::{Blobs, hex};

/// Reserved namespace holding the deployed plugins (name → `Deploy`), so the set of active
/// plugins is part of the replicated state, snapshots and restarts included.
pub const SYSTEM_NAMESPACE: &str = "__keel";

/// The example kv plugin, built from `plugins/kv` and embedded in the binary.
pub static BUILTIN_KV: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/kv.wasm"));

/// The outcome of one command, identical on every node.
pub type CommandResult = Result<Vec<u8>, String>;

/// The active plugins, shared by the apply path and the query handlers; and the auth table
/// (issue #13), which is derived from the applied state at the same points (a restart, a
/// snapshot install, a committed batch), so every request is checked against the table as
/// of this node's applied index.
#[derive(Clone, Default)]
pub struct Registry {
    plugins: Arc<RwLock<BTreeMap<String, Arc<Plugin>>>>,
    auth: Arc<RwLock<Arc<AuthTable>>>,
    journal: Arc<std::sync::Mutex<super::Journal>>,
}

impl Registry {
    /// A registry whose dry-run journal keeps `journal_bytes` (0: none).
    pub fn with_journal(journal_bytes: usize) -> Registry {
        Registry {
            journal: Arc::new(std::sync::Mutex::new(super::Journal::new(journal_bytes))),
            ..Registry::default()
        }
    }

    /// The dry-run journal. The driver adds a batch's records while it holds the write lock
    /// of the applied state's top layer, and a dry run reads them under its read lock, so
    /// the records it takes match the state it rewinds.
    pub fn journal(&self) -> std::sync::MutexGuard<'_, super::Journal> {
        self.journal.lock().unwrap_or_else(|e| e.into_inner())
    }

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

    /// The auth table as of the last committed batch.
    pub fn auth(&self) -> Arc<AuthTable> {
        self.auth.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    pub(super) fn set_auth(&self, table: Arc<AuthTable>) {
        *self.auth.write().unwrap_or_else(|e| e.into_inner()) = table;
    }

    pub(super) fn remove(&self, name: &str) {
        self.plugins
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .remove(name);
    }

    pub(super) fn set(&self, name: String, plugin: Arc<Plugin>) {
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
    /// A command's payload blob is not here, or its bytes no longer match its hash (it was
    /// quarantined). Not the command's fault: the driver fetches it and applies the batch
    /// again (design §6: a record is never failed for a missing blob).
    #[error("blob {} of a reference-only command is not on this node", hex(.0))]
    BlobGone([u8; 32]),
    /// An auth record in the applied state does not decode: this node cannot tell who may
    /// do what, and stops rather than enforce another table than the other replicas.
    #[error("auth table in the applied state: {0}")]
    BadAuth(String),
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
    // The store checked the bytes against the hash (or they are built in).
    runtime
        .load_hashed(
            PluginId::new(d.plugin.clone(), d.version.clone()),
            &bytes,
            &hex(&d.sha256),
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
    let deployed = deployments(view)?;
    // A snapshot installed over this node's state may have undeployed some.
    for name in registry.names() {
        if !deployed.iter().any(|d| d.plugin == name) {
            registry.remove(&name);
        }
    }
    for d in deployed {
        let plugin = load(runtime, blobs, &d)?;
        registry.set(d.plugin.clone(), Arc::new(plugin));
    }
    registry.set_auth(Arc::new(super::auth::load_auth(view)?));
    Ok(())
}

/// System-namespace records (deployments, the auth table) read from storage at a time.
pub(super) const DEPLOYMENTS_PAGE: usize = 1_000;

/// Every deployment the applied state holds, in key order, page by page (there is no cap
/// on their number: stopping at one would drop the plugins past it on this node only).
pub fn deployments(view: &dyn StateView) -> Result<Vec<Deploy>, ApplyError> {
    let mut out = Vec::new();
    scan_system(view, b"plugin/", |key, value| {
        let d = postcard::from_bytes::<Deploy>(&value).map_err(|e| ApplyError::BadDeployment {
            key: String::from_utf8_lossy(&key).into_owned(),
            detail: e.to_string(),
        })?;
        out.push(d);
        Ok(())
    })?;
    Ok(out)
}

/// Calls `f` with every key and value of the system namespace under `prefix`, in key
/// order, [`DEPLOYMENTS_PAGE`] records read from storage at a time.
pub(super) fn scan_system(
    view: &dyn StateView,
    prefix: &[u8],
    mut f: impl FnMut(Vec<u8>, Vec<u8>) -> Result<(), ApplyError>,
) -> Result<(), ApplyError> {
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
                prefix,
                start: start.as_deref(),
                end: None,
                limit: DEPLOYMENTS_PAGE,
            },
        )?;
        let full = page.len() >= DEPLOYMENTS_PAGE;
        for (key, value) in page {
            after = Some(key.clone());
            f(key, value)?;
        }
        if !full {
            return Ok(());
        }
    }
}

/// Activates (or deactivates: `None`) plugins, and the auth table, once the batch that
/// changed them is committed.
pub fn activate(registry: &Registry, activation: Activation) {
    for (name, plugin) in activation.plugins {
        match plugin {
            Some(plugin) => registry.set(name, plugin),
            None => registry.remove(&name),
        }
    }
    if let Some(table) = activation.auth {
        registry.set_auth(table);
    }
}
