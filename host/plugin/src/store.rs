//! Per-call host state: what a guest's imports act on, and the limits it runs under.

use crate::bindings::keel::plugin::{kv, log};
use crate::error::StorageError;
use crate::kv::{KvView, Layered, MAX_RANGE_ITEMS, TooLarge, WriteBuffer};
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
    pub(crate) abort: Option<Abort>,
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
            abort: None,
        }
    }

    /// Starts the next command of a batch: its own budget, writes and limit flag.
    pub(crate) fn next_command(&mut self) {
        self.host_used = 0;
        self.limiter.hit = false;
        self.writes = WriteBuffer::default();
    }

    /// What this command reads: its own writes over the batch's over the view.
    fn layered(&self) -> Layered<'_> {
        Layered {
            upper: &self.earlier,
            lower: self.view.as_ref(),
        }
    }

    /// Records why the guest is being stopped and returns the trap that stops it.
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
