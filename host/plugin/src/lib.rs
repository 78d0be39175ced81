//! Keel's plugin runtime: replicated state machines as WebAssembly components,
//! run identically on every node (design §4).
//!
//! A plugin implements the `keel:plugin/state-machine` world (`wit/keel-plugin.wit`):
//! it exports `apply` and `query` (and optionally `validate`) and keeps all of its
//! state in a host-owned KV namespace. This crate compiles and caches plugins, links a
//! deterministic WASI, and runs every call on a **fresh instance** under a fuel budget
//! and a memory limit, so a plugin cannot keep hidden state or diverge between
//! replicas. It knows nothing of Raft or of the storage engine: the node passes a
//! read view ([`KvView`]) and commits the writes that [`Plugin::apply`] hands back.
//!
//! # Loading and applying
//!
//! ```no_run
//! use keel_plugin::{ApplyContext, KvView, Limits, MemoryKv, PluginId, Runtime, RuntimeConfig};
//! use std::sync::Arc;
//!
//! # fn main() -> Result<(), keel_plugin::PluginError> {
//! let runtime = Runtime::new(RuntimeConfig {
//!     cache_dir: Some("/var/lib/keel/plugin-cache".into()),
//!     ..RuntimeConfig::default()
//! })?;
//! let wasm = std::fs::read("kv.wasm").unwrap_or_default();
//! let kv = runtime.load(PluginId::new("kv", "1"), &wasm, Limits::default())?;
//!
//! // The node's view of the plugin's namespace (here: in memory).
//! let state = Arc::new(MemoryKv::new());
//! let ctx = ApplyContext { index: 7, term: 2, timestamp_ms: 1_700_000_000_000, client_id: None, attachments: Vec::new() };
//! let outcome = kv.apply(state.clone(), &ctx, br#"{"op":"put","key":"a","value":"1"}"#)?;
//! // `Err` from `apply` itself: a node-local failure, fail-stop. Otherwise the outcome
//! // is the same on every node: record `result`, commit `writes` with last_applied.
//! state.commit(&outcome.writes);
//! assert_eq!(outcome.result?, br#"{"prev":null}"#);
//!
//! let answer = kv.query(state.clone(), br#"{"op":"get","key":"a"}"#)?;
//! assert_eq!(answer, br#"{"value":"1"}"#);
//! # Ok(()) }
//! ```
//!
//! # Failures
//! Every way a plugin can misbehave (an error result, a trap or panic, running out of
//! fuel, hitting the memory limit, exiting, an oversized answer) is a
//! [`PluginError`] for which [`PluginError::is_deterministic`] holds: every node
//! records the same failure and discards the call's writes. A plugin that cannot load
//! (not a component, garbage, missing exports, imports Keel does not provide) fails
//! [`Runtime::load`] with a clear error. Nothing a plugin does panics the host.
//!
//! # Several commands per log entry
//! [`Plugin::apply_batch`] runs the commands of one log entry on one fresh instance
//! (same outcomes as one `apply` each, one instantiation instead of many).
//!
//! See `docs/plugins.md` for the determinism rules, the instance policy and its cost.

mod batch;
mod bindings;
mod blobs;
mod cache;
mod error;
mod kv;
mod runtime;
mod store;
mod wasi;

pub use blobs::{BlobRef, BlobSource, MAX_BLOB_READ};
pub use error::{PluginError, PluginId, StorageError};
pub use kv::{
    Entries, KvView, MAX_BATCH_BYTES, MAX_KEY_BYTES, MAX_RANGE_ITEMS, MAX_VALUE_BYTES, MemoryKv,
    Writes, merge_writes, stored_needed,
};
pub use runtime::{
    ApplyContext, ApplyOutcome, CodeSource, Limits, MAX_FUEL, MAX_MEMORY_BYTES, MAX_RESULT_BYTES,
    Plugin, Runtime, RuntimeConfig,
};
