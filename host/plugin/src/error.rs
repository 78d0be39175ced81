//! The one error type of the plugin layer.

use std::fmt;

/// Names a plugin version in every error and log line: `name@version`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct PluginId {
    /// The plugin's name (its KV namespace and URL segment).
    pub name: String,
    /// The deployed version, as the `Deploy` record names it.
    pub version: String,
}

impl PluginId {
    /// A plugin id.
    pub fn new(name: impl Into<String>, version: impl Into<String>) -> Self {
        PluginId {
            name: name.into(),
            version: version.into(),
        }
    }
}

impl fmt::Display for PluginId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}@{}", self.name, self.version)
    }
}

/// A failure a [`KvView`](crate::KvView) reports: the node's storage broke, which is
/// never the plugin's fault.
pub type StorageError = Box<dyn std::error::Error + Send + Sync + 'static>;

/// Everything that can go wrong loading or calling a plugin.
///
/// Most variants are *deterministic*: given the same wasm, limits, command and KV
/// state, every node hits the same one with the same message, so a node may record it
/// as the command's result (see [`PluginError::is_deterministic`]). The others
/// (`Deadline`, `Storage`, `Host`) depend on the node, and an apply that hits one
/// must stop the node rather than record anything (design §8).
#[derive(Debug, thiserror::Error)]
pub enum PluginError {
    /// The bytes are a core wasm module, not a component.
    #[error("plugin {plugin}: a core wasm module, not a component (build for wasm32-wasip2)")]
    NotAComponent {
        /// The plugin.
        plugin: PluginId,
    },
    /// The bytes are not valid wasm (or WAT) at all, or do not validate.
    #[error("plugin {plugin}: invalid wasm: {detail}")]
    InvalidWasm {
        /// The plugin.
        plugin: PluginId,
        /// The parser's or validator's message.
        detail: String,
    },
    /// The component imports something Keel does not provide (a socket, a file, an
    /// unknown interface), so it cannot run deterministically.
    #[error("plugin {plugin}: imports something Keel does not provide: {detail}")]
    UnsatisfiedImport {
        /// The plugin.
        plugin: PluginId,
        /// Which import, as wasmtime's linker names it.
        detail: String,
    },
    /// The component lacks an export of the `keel:plugin/state-machine` world, or
    /// exports it with the wrong type.
    #[error("plugin {plugin}: does not implement keel:plugin/state-machine: {detail}")]
    MissingExport {
        /// The plugin.
        plugin: PluginId,
        /// What is missing or mistyped.
        detail: String,
    },
    /// The limits in the `Deploy` record are outside what this host supports.
    #[error("plugin {plugin}: limits out of range: {detail}")]
    BadLimits {
        /// The plugin.
        plugin: PluginId,
        /// Which limit and the allowed range.
        detail: String,
    },
    /// The plugin answered with an error result; its writes are discarded.
    #[error("plugin {plugin}: {message}")]
    Rejected {
        /// The plugin.
        plugin: PluginId,
        /// The plugin's error string.
        message: String,
    },
    /// The call used up its fuel budget (instructions plus KV work).
    #[error("plugin {plugin}: ran out of fuel (budget {budget})")]
    FuelExhausted {
        /// The plugin.
        plugin: PluginId,
        /// The per-call budget from the `Deploy` record.
        budget: u64,
    },
    /// The instance tried to grow its memory past the limit.
    #[error("plugin {plugin}: exceeded its memory limit of {limit} bytes")]
    MemoryLimit {
        /// The plugin.
        plugin: PluginId,
        /// The per-instance limit from the `Deploy` record.
        limit: u64,
    },
    /// The guest trapped: a panic, `unreachable`, an out-of-bounds access, stack
    /// exhaustion, or a refused WASI operation.
    #[error("plugin {plugin}: trapped: {reason}")]
    Trap {
        /// The plugin.
        plugin: PluginId,
        /// The trap, without addresses or backtrace (those stay in the logs).
        reason: String,
    },
    /// The guest called `wasi:cli/exit`.
    #[error("plugin {plugin}: exited with status {status}")]
    Exited {
        /// The plugin.
        plugin: PluginId,
        /// The exit status.
        status: i32,
    },
    /// The answer (or error string) is larger than the host accepts.
    #[error("plugin {plugin}: answer of {len} bytes exceeds the limit of {limit}")]
    ResultTooLarge {
        /// The plugin.
        plugin: PluginId,
        /// The answer's length.
        len: usize,
        /// The limit ([`MAX_RESULT_BYTES`](crate::MAX_RESULT_BYTES)).
        limit: usize,
    },
    /// The wall-clock backstop (epoch interruption) stopped the call. Fuel should
    /// always stop a runaway first, so this means a host problem: fail-stop.
    #[error("plugin {plugin}: still running after {seconds} s; stopped by the backstop")]
    Deadline {
        /// The plugin.
        plugin: PluginId,
        /// The backstop in seconds.
        seconds: u64,
    },
    /// The node's storage failed while the plugin read it.
    #[error("plugin {plugin}: storage failed during the call: {source}")]
    Storage {
        /// The plugin.
        plugin: PluginId,
        /// The storage error.
        #[source]
        source: StorageError,
    },
    /// The call reads or retains a blob this node does not hold yet (one the command
    /// attaches or the plugin retains): not the plugin's fault. Apply waits for the blob
    /// and runs the entry again; a query is answered "try again".
    #[error("plugin {plugin}: blob {sha256} is not on this node yet")]
    BlobMissing {
        /// The plugin.
        plugin: PluginId,
        /// The blob, 64 hex digits.
        sha256: String,
    },
    /// The host could not run the call (for example the instance pool is exhausted).
    #[error("plugin {plugin}: host failure: {detail}")]
    Host {
        /// The plugin.
        plugin: PluginId,
        /// What failed.
        detail: String,
    },
}

impl PluginError {
    /// Whether every node running the same plugin on the same input gets this same
    /// error, so it may be recorded as the command's result. `false` means the cause is
    /// local to this node: an apply must fail-stop the node instead.
    pub fn is_deterministic(&self) -> bool {
        !matches!(
            self,
            PluginError::Deadline { .. }
                | PluginError::Storage { .. }
                | PluginError::Host { .. }
                | PluginError::BlobMissing { .. }
        )
    }

    /// The plugin the error is about.
    pub fn plugin(&self) -> &PluginId {
        match self {
            PluginError::NotAComponent { plugin }
            | PluginError::InvalidWasm { plugin, .. }
            | PluginError::UnsatisfiedImport { plugin, .. }
            | PluginError::MissingExport { plugin, .. }
            | PluginError::BadLimits { plugin, .. }
            | PluginError::Rejected { plugin, .. }
            | PluginError::FuelExhausted { plugin, .. }
            | PluginError::MemoryLimit { plugin, .. }
            | PluginError::Trap { plugin, .. }
            | PluginError::Exited { plugin, .. }
            | PluginError::ResultTooLarge { plugin, .. }
            | PluginError::Deadline { plugin, .. }
            | PluginError::Storage { plugin, .. }
            | PluginError::BlobMissing { plugin, .. }
            | PluginError::Host { plugin, .. } => plugin,
        }
    }
}
