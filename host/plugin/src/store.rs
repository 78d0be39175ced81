//! Per-call host state: what a guest's imports act on, and the limits it runs under.

use crate::bindings::keel::plugin::{blobs, kv, log};
use crate::blobs::{BlobRef, MAX_BLOB_READ, parse_sha, sha_hex};
use crate::error::StorageError;
use crate::kv::{KvView, Layered, MAX_RANGE_ITEMS, TooLarge, WriteBuffer};
use std::collections::BTreeMap;
use std::sync::Arc;
use wasmtime::component::ResourceTable;
use wasmtime::{ResourceLimiter, Result};
use wasmtime_wasi::{WasiCtx, WasiCtxView, WasiView};

/// Host work charged per KV call, on top of one unit per byte moved, so a plugin that
/// loops over cheap host calls still runs out of budget.
const KV_CALL_COST: u64 = 1_000;
/// Longest log line forwarded to tracing.
const MAX_LOG_LINE: usize = 4 << 10;
/// Most table elements one instance may have (function tables: big for Python).
const MAX_TABLE_ELEMENTS: usize = 100_000;

/// What the call may do to the KV store.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Mode {
    /// `apply`: reads and buffered writes.
    Apply,
    /// `query` / `validate`: reads only.
    ReadOnly,
}

/// Why a host function stopped the guest. Stored in the state (the trap itself only
/// carries a marker) so the caller can classify the failure exactly.
#[derive(Debug)]
pub(crate) enum Abort {
    /// The node's storage failed: not the plugin's fault, not deterministic.
    Storage(StorageError),
    /// KV work exceeded the call's budget.
    HostBudget,
    /// A blob the call may use is not on this node yet: not deterministic, the node waits
    /// for it.
    BlobMissing([u8; 32]),
}

/// Marker error a host function returns to trap the guest; see [`HostState::abort`].
#[derive(Debug, thiserror::Error)]
#[error("stopped by the host")]
pub(crate) struct Aborted;

/// Memory limit across all of an instance's linear memories, remembering whether the
/// guest hit it (a grow failure the guest turns into a trap is then reported as
/// `MemoryLimit`, not as the trap).
pub(crate) struct Limiter {
    pub(crate) limit: u64,
    used: u64,
    pub(crate) hit: bool,
}

impl Limiter {
    pub(crate) fn new(limit: u64) -> Self {
        Limiter {
            limit,
            used: 0,
            hit: false,
        }
    }
}

impl ResourceLimiter for Limiter {
    fn memory_growing(
        &mut self,
        current: usize,
        desired: usize,
        _max: Option<usize>,
    ) -> Result<bool> {
        // Called for every memory at creation (current = 0) and on each grow.
        let grow = desired.saturating_sub(current) as u64;
        if self.used.saturating_add(grow) > self.limit {
            self.hit = true;
            return Ok(false);
        }
        self.used += grow;
        Ok(true)
    }

    fn table_growing(
        &mut self,
        _current: usize,
        desired: usize,
        _max: Option<usize>,
    ) -> Result<bool> {
        Ok(desired <= MAX_TABLE_ELEMENTS)
    }
}

/// The `T` of every plugin `Store`: created for one call, dropped with it.
pub(crate) struct HostState {
    pub(crate) plugin: Arc<str>,
    pub(crate) wasi: WasiCtx,
    pub(crate) table: ResourceTable,
    pub(crate) limiter: Limiter,
    view: Arc<dyn KvView>,
    mode: Mode,
    pub(crate) writes: WriteBuffer,
    /// Writes of earlier commands of the same batch (read-only to this command).
    pub(crate) earlier: WriteBuffer,
    host_budget: u64,
    host_used: u64,
    /// A run with a slice of the budget (`Plugin::query_within`): blob calls, which may
    /// hash a whole blob, count as beyond it.
    sliced: bool,
    pub(crate) abort: Option<Abort>,
    /// The blobs the current command attaches.
    pub(crate) attachments: Vec<BlobRef>,
    /// Retains (+) and releases (-) of the current command.
    pub(crate) retains: BTreeMap<[u8; 32], i64>,
    /// Those of the earlier successful commands of the batch.
    pub(crate) earlier_retains: BTreeMap<[u8; 32], i64>,
}

impl HostState {
    pub(crate) fn new(
        plugin: Arc<str>,
        wasi: WasiCtx,
        view: Arc<dyn KvView>,
        mode: Mode,
        fuel: u64,
        memory: u64,
    ) -> Self {
        HostState {
            plugin,
            wasi,
            table: ResourceTable::new(),
            limiter: Limiter::new(memory),
            view,
            mode,
            writes: WriteBuffer::default(),
            earlier: WriteBuffer::default(),
            host_budget: fuel,
            host_used: 0,
            sliced: false,
            abort: None,
            attachments: Vec::new(),
            retains: BTreeMap::new(),
            earlier_retains: BTreeMap::new(),
        }
    }

    /// Starts the next command of a batch: its own budget, writes and limit flag.
    pub(crate) fn next_command(&mut self, attachments: &[BlobRef]) {
        self.host_used = 0;
        self.limiter.hit = false;
        self.writes = WriteBuffer::default();
        self.retains = BTreeMap::new();
        self.attachments = attachments.to_vec();
    }

    /// The current command's retain changes, non-zero ones only, as an outcome carries them.
    pub(crate) fn take_retains(&mut self) -> Vec<([u8; 32], i64)> {
        std::mem::take(&mut self.retains)
            .into_iter()
            .filter(|(_, d)| *d != 0)
            .collect()
    }

    /// Retains the plugin holds on `sha` now: the replicated count, the batch's earlier
    /// commands' and this command's changes.
    fn retain_count(&mut self, sha: &[u8; 32]) -> Result<u64> {
        let stored = match self.view.blobs().map(|b| b.retained(sha)) {
            None => 0,
            Some(Ok(n)) => n,
            Some(Err(e)) => return Err(self.abort(Abort::Storage(e))),
        };
        let delta = self.earlier_retains.get(sha).copied().unwrap_or(0)
            + self.retains.get(sha).copied().unwrap_or(0);
        Ok((stored as i64).saturating_add(delta).max(0) as u64)
    }

    /// Whether the call may use `sha`: the command attaches it or the plugin retains it.
    fn may_use(&mut self, sha: &[u8; 32]) -> Result<bool> {
        if self.attachments.iter().any(|a| &a.sha256 == sha) {
            return Ok(true);
        }
        Ok(self.retain_count(sha)? > 0)
    }

    /// What this command reads: its own writes over the batch's over the view.
    fn layered(&self) -> Layered<'_> {
        Layered {
            upper: &self.earlier,
            lower: self.view.as_ref(),
        }
    }

    /// Records why the guest is being stopped and returns the trap that stops it.
    /// Lowers the call's budget for host work to `fuel`, a slice of the plugin's budget
    /// (never raises it).
    pub(crate) fn limit_host_work(&mut self, fuel: u64) {
        if fuel < self.host_budget {
            self.host_budget = fuel;
            self.sliced = true;
        }
    }

    /// Charges a blob call; within a slice, stops the run as out of budget (the caller
    /// runs it again with everything).
    fn charge_blob_call(&mut self) -> Result<()> {
        if self.sliced {
            return Err(self.abort(Abort::HostBudget));
        }
        self.charge(0)
    }

    fn abort(&mut self, why: Abort) -> wasmtime::Error {
        self.abort = Some(why);
        wasmtime::Error::new(Aborted)
    }

    /// Charges KV work against the call's budget.
    fn charge(&mut self, bytes: usize) -> Result<()> {
        self.host_used = self
            .host_used
            .saturating_add(KV_CALL_COST)
            .saturating_add(bytes as u64);
        if self.host_used > self.host_budget {
            return Err(self.abort(Abort::HostBudget));
        }
        Ok(())
    }

    fn write(&mut self, key: Vec<u8>, value: Option<Vec<u8>>) -> Result<Result<(), kv::KvError>> {
        self.charge(key.len() + value.as_ref().map_or(0, Vec::len))?;
        if self.mode == Mode::ReadOnly {
            return Ok(Err(kv::KvError::ReadOnly));
        }
        Ok(self.writes.put(key, value).map_err(|r| match r {
            TooLarge::Key => kv::KvError::KeyTooLarge,
            TooLarge::Value => kv::KvError::ValueTooLarge,
            TooLarge::Batch => kv::KvError::BatchTooLarge,
        }))
    }
}

impl WasiView for HostState {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView {
            ctx: &mut self.wasi,
            table: &mut self.table,
        }
    }
}

impl kv::Host for HostState {
    fn get(&mut self, key: Vec<u8>) -> Result<Option<Vec<u8>>> {
        self.charge(key.len())?;
        match self.writes.get(&self.layered(), &key) {
            Ok(value) => {
                self.charge(value.as_ref().map_or(0, Vec::len))?;
                Ok(value)
            }
            Err(e) => Err(self.abort(Abort::Storage(e))),
        }
    }

    fn set(&mut self, key: Vec<u8>, value: Vec<u8>) -> Result<Result<(), kv::KvError>> {
        self.write(key, Some(value))
    }

    fn delete(&mut self, key: Vec<u8>) -> Result<Result<(), kv::KvError>> {
        self.write(key, None)
    }

    fn range(
        &mut self,
        start: Vec<u8>,
        end: Option<Vec<u8>>,
        limit: u32,
    ) -> Result<Vec<kv::Entry>> {
        self.charge(start.len() + end.as_ref().map_or(0, Vec::len))?;
        let limit = limit.min(MAX_RANGE_ITEMS) as usize;
        match self
            .writes
            .range(&self.layered(), &start, end.as_deref(), limit)
        {
            Ok(items) => {
                let bytes = items.iter().map(|(k, v)| k.len() + v.len()).sum();
                self.charge(bytes)?;
                Ok(items
                    .into_iter()
                    .map(|(key, value)| kv::Entry { key, value })
                    .collect())
            }
            Err(e) => Err(self.abort(Abort::Storage(e))),
        }
    }
}

impl log::Host for HostState {
    fn log(&mut self, level: log::Level, message: String) -> Result<()> {
        let mut end = message.len().min(MAX_LOG_LINE);
        while !message.is_char_boundary(end) {
            end -= 1;
        }
        let text = &message[..end];
        let plugin = &*self.plugin;
        match level {
            log::Level::Trace => tracing::trace!(target: "keel::plugin", plugin, "{text}"),
            log::Level::Debug => tracing::debug!(target: "keel::plugin", plugin, "{text}"),
            log::Level::Info => tracing::info!(target: "keel::plugin", plugin, "{text}"),
            log::Level::Warn => tracing::warn!(target: "keel::plugin", plugin, "{text}"),
            log::Level::Error => tracing::error!(target: "keel::plugin", plugin, "{text}"),
        }
        Ok(())
    }
}

impl crate::bindings::keel::plugin::types::Host for HostState {}

impl blobs::Host for HostState {
    fn attachments(&mut self) -> Result<Vec<blobs::Blob>> {
        self.charge(self.attachments.len() * 64)?;
        Ok(self
            .attachments
            .iter()
            .map(|a| blobs::Blob {
                sha256: sha_hex(&a.sha256),
                len: a.len,
            })
            .collect())
    }

    fn read(
        &mut self,
        sha256: String,
        offset: u64,
        len: u32,
    ) -> Result<Result<Vec<u8>, blobs::BlobError>> {
        self.charge_blob_call()?;
        let Some(sha) = parse_sha(&sha256) else {
            return Ok(Err(blobs::BlobError::Unknown));
        };
        if !self.may_use(&sha)? {
            return Ok(Err(blobs::BlobError::Unknown));
        }
        let len = len.min(MAX_BLOB_READ) as usize;
        let bytes = self.view.blobs().and_then(|b| b.read(&sha, offset, len));
        match bytes {
            Some(bytes) => {
                self.charge(bytes.len())?;
                Ok(Ok(bytes))
            }
            // Every node holds what a command attaches or a plugin retains before it
            // applies: this one does not yet, so it must wait, not answer differently.
            None => Err(self.abort(Abort::BlobMissing(sha))),
        }
    }

    fn retain(&mut self, sha256: String) -> Result<Result<(), blobs::BlobError>> {
        self.charge_blob_call()?;
        if self.mode == Mode::ReadOnly {
            return Ok(Err(blobs::BlobError::ReadOnly));
        }
        let Some(sha) = parse_sha(&sha256) else {
            return Ok(Err(blobs::BlobError::Unknown));
        };
        if !self.may_use(&sha)? {
            return Ok(Err(blobs::BlobError::Unknown));
        }
        *self.retains.entry(sha).or_default() += 1;
        Ok(Ok(()))
    }

    fn release(&mut self, sha256: String) -> Result<Result<(), blobs::BlobError>> {
        self.charge_blob_call()?;
        if self.mode == Mode::ReadOnly {
            return Ok(Err(blobs::BlobError::ReadOnly));
        }
        let Some(sha) = parse_sha(&sha256) else {
            return Ok(Err(blobs::BlobError::NotRetained));
        };
        if self.retain_count(&sha)? == 0 {
            return Ok(Err(blobs::BlobError::NotRetained));
        }
        *self.retains.entry(sha).or_default() -= 1;
        Ok(Ok(()))
    }

    fn retained(&mut self, sha256: String) -> Result<u64> {
        self.charge_blob_call()?;
        match parse_sha(&sha256) {
            Some(sha) => self.retain_count(&sha),
            None => Ok(0),
        }
    }
}
