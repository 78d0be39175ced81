//! The driver's side of the blob store (design §6): apply waiting for a blob, the resend
//! sweep that fetches what this node will need, and what garbage collection must keep.

use std::collections::BTreeSet;
use std::sync::Arc;

use keel_raft::Index;

use super::Driver;
use crate::blobs::{self, Keep};
use crate::state;

/// How often the resend sweep looks at the log (ms).
const SWEEP_EVERY_MS: u64 = 1_000;
/// How often it also looks at the blobs the applied state retains (ms): a scan of the
/// retain table, so less often than the log; at once after a snapshot install.
const SWEEP_RETAINED_EVERY_MS: u64 = 10_000;
/// Entries it looks at, from the first not applied.
const SWEEP_SCAN: u64 = 100_000;
/// Blob fetches it keeps going at once.
const SWEEP_FETCHES: usize = 4;

impl Driver {
    /// Entry `index` is next to apply and names blob `hash`, which is not here: apply waits
    /// (it never fails a record for a missing blob), says so in the status, and fetches it
    /// from the peers beside the driver; `Input::BlobFetched` resumes it.
    pub(super) fn wait_for_blob(&mut self, index: Index, hash: [u8; 32]) {
        if self.fetching.is_some_and(|(h, _, _)| h == hash) {
            return;
        }
        tracing::warn!(target: "keel::txn", index, blob = %blobs::hex(&hash), "apply waits for a blob, fetching it from peers");
        self.fetching = Some((hash, index, self.io.mono_ms()));
        if self.sweeping.insert(hash) {
            self.io.fetch_blob(hash);
        }
    }

    /// What this node must keep: the blobs named by an entry of its log (from the first
    /// index on, applied or not: after a crash it applies again from its last flush), by an
    /// active plugin, by a version in a plugin's history (a rollback needs its bytes), or
    /// retained by a plugin's state; and where the blobs its compacted entries named were
    /// named last.
    pub(super) fn blobs_needed(&self) -> anyhow::Result<Keep> {
        let mut needed: BTreeSet<[u8; 32]> = (self.raft.first_index()..=self.raft.last_index())
            .filter_map(|i| self.raft.entry(i))
            .flat_map(|e| e.record.blobs())
            .collect();
        for name in self.registry.names() {
            if let Some(hash) = self
                .registry
                .get(&name)
                .and_then(|p| blobs::parse_hex(p.sha256()))
            {
                needed.insert(hash);
            }
        }
        let system = self.system_view()?;
        for name in state::plugin_names(&system)? {
            let record = state::plugin_record(&system, &name)?;
            needed.extend(record.active.map(|d| d.sha256));
            needed.extend(record.history.versions.iter().map(|v| v.deploy.sha256));
        }
        // Blobs a plugin's state retains (`keel:plugin/blobs`): kept for as long as any
        // plugin holds a retain, whatever the log says.
        needed.extend(state::retained_blobs(&system)?);
        Ok(Keep {
            snapshot: self.snapshot_index,
            needed,
            named_at: self.named_at.map().clone(),
        })
    }

    fn system_view(&self) -> anyhow::Result<Arc<dyn keel_plugin::KvView>> {
        let unflushed = Arc::clone(&self.unflushed.read().unwrap_or_else(|e| e.into_inner()));
        Ok(state::query_view(
            self.storage.view()?,
            unflushed,
            state::SYSTEM_NAMESPACE.into(),
        ))
    }

    /// Entries up to `upto` are about to be compacted away: note where each blob they name
    /// was named last (garbage collection compares that with the members' snapshots), and
    /// write the record before the purge is queued.
    pub(super) fn note_compacted(&mut self, upto: Index) {
        for i in self.raft.first_index()..=upto {
            if let Some(e) = self.raft.entry(i) {
                for hash in e.record.blobs() {
                    self.named_at.note(hash, i);
                }
            }
        }
        // A blob no longer here has nothing to collect.
        let blobs = self.blobs.clone();
        self.named_at.retain(|h| blobs.has(h));
        self.named_at.save(upto);
    }

    /// Design §6, the resend sweep: the blobs named from `applied + 1` to the end of this
    /// node's log, and (after a snapshot install, and every [`SWEEP_RETAINED_EVERY_MS`]) the
    /// blobs the applied state retains, that this node lacks are fetched from the peers now,
    /// beside the Raft loop, not when apply or a query reaches them, so a follower that was
    /// down, cut off or given a snapshot heals by itself. At most [`SWEEP_FETCHES`] fetches
    /// at a time (each on its own thread, hash-checked, paced by `blob_fetch_bytes_per_sec`).
    pub(super) fn maybe_sweep(&mut self) {
        let now = self.io.mono_ms();
        if now.saturating_sub(self.last_sweep_ms) < SWEEP_EVERY_MS {
            return;
        }
        self.last_sweep_ms = now;
        let (from, to) = (self.applied + 1, self.raft.last_index());
        let mut i = from.max(self.raft.first_index());
        while i <= to && i < from + SWEEP_SCAN && self.sweeping.len() < SWEEP_FETCHES {
            if let Some(e) = self.raft.entry(i) {
                for hash in e.record.blobs() {
                    if !self.blobs.has(&hash) && self.sweeping.insert(hash) {
                        tracing::info!(target: "keel::txn", index = i, blob = %blobs::hex(&hash), "resend sweep: fetching a blob the log names");
                        self.metrics.blob_sweep_fetches.inc();
                        self.io.fetch_blob(hash);
                    }
                }
            }
            i += 1;
        }
        let retained_due = self
            .last_retained_sweep_ms
            .is_none_or(|t| now.saturating_sub(t) >= SWEEP_RETAINED_EVERY_MS);
        if retained_due && self.sweeping.len() < SWEEP_FETCHES {
            self.sweep_retained(now);
        }
    }

    /// The retained half of the sweep. Stops at [`SWEEP_FETCHES`] and looks again at the
    /// next round (the scan is due again until a round found nothing more to start).
    fn sweep_retained(&mut self, now: u64) {
        let retained = match self.system_view().and_then(|v| state::retained_blobs(&v)) {
            Ok(r) => r,
            Err(e) => {
                tracing::warn!(target: "keel::txn", error = %e, "resend sweep: cannot list retained blobs");
                return;
            }
        };
        let mut complete = true;
        for hash in retained {
            if self.blobs.has(&hash) || self.sweeping.contains(&hash) {
                continue;
            }
            if self.sweeping.len() >= SWEEP_FETCHES {
                complete = false;
                break;
            }
            self.sweeping.insert(hash);
            tracing::info!(target: "keel::txn", blob = %blobs::hex(&hash), "resend sweep: fetching a blob the state retains");
            self.metrics.blob_sweep_fetches.inc();
            self.io.fetch_blob(hash);
        }
        if complete {
            self.last_retained_sweep_ms = Some(now);
        }
    }
}
