//! The driver's upkeep: flushing the applied state to storage, snapshots, session expiry,
//! and the built-in plugin's deployment.

use std::sync::Arc;

use keel_raft::{Deploy, Raft, Record, Role, SnapshotMeta};

use super::{Driver, SnapshotState, WriterJob};

use crate::blobs;
use crate::state::{self, Unflushed};

/// The cut-off of an expiry proposed now: `ttl_ms` before the log's clock (design §5), that
/// is before the timestamp the `ExpireSessions` entry itself will carry (the core never lets
/// the log's clock run back), not before this node's wall clock, which may be behind the
/// clock of the leader before it (sessions would then outlive their TTL by the difference).
pub(super) fn session_cutoff(raft: &Raft, wall_ms: u64, ttl_ms: u64) -> u64 {
    // As `Raft::propose` stamps it: the wall clock, never below the last entry's stamp.
    let log_ms = raft.entry(raft.last_index()).map_or(0, |e| e.timestamp_ms);
    wall_ms.max(log_ms).saturating_sub(ttl_ms)
}

impl Driver {
    /// Hands what was applied since the last flush to the log writer, which writes it to
    /// storage in one transaction (non-durable: the next durable log commit carries it to
    /// disk) while this thread goes on. Readers see it as a layer of its own until then
    /// (`Unflushed::freeze`); `Input::Flushed` drops that layer. One flush at a time.
    /// Returns whether a flush is under way.
    pub(super) fn start_flush(&mut self) -> bool {
        self.last_flush_ms = self.io.mono_ms();
        let mut slot = self.unflushed.write().unwrap_or_else(|e| e.into_inner());
        if let Some(layer) = Unflushed::freeze(&mut slot) {
            self.io.write(WriterJob::Flush(layer));
        }
        slot.is_flushing_any()
    }

    /// Writes the whole applied state through to storage before returning (for the state
    /// hash, a clean stop, and a layer grown too large): the same freeze-and-write as
    /// `start_flush`, then waiting for the writer. Readers keep seeing each layer until
    /// storage holds it, so no lock is held across the writes. (A storage failure stops the
    /// process on the writer.)
    pub(super) fn flush(&mut self) {
        // A flush under way is in storage once this returns; its layer can go.
        self.io.wait_idle();
        {
            let mut slot = self.unflushed.write().unwrap_or_else(|e| e.into_inner());
            if slot.is_flushing_any() {
                Arc::make_mut(&mut slot).flushed();
            }
        }
        if self.start_flush() {
            self.io.wait_idle();
            let mut slot = self.unflushed.write().unwrap_or_else(|e| e.into_inner());
            Arc::make_mut(&mut slot).flushed();
        }
    }

    /// The applied state as storage holds it after a flush is the snapshot (thesis §5.1: a
    /// snapshot covers a committed prefix): compacting is dropping the log up to it. No
    /// image is built here; one is streamed from a read transaction when a follower needs
    /// it ([`Driver::send_snapshot`]). Steps: start a flush here; `Input::Flushed` compacts.
    pub(super) fn maybe_snapshot(&mut self) -> anyhow::Result<()> {
        let due = self.applied >= self.snapshot_index + self.cfg.snapshot_every
            || self.bytes_since_snapshot >= self.cfg.snapshot_every_bytes;
        if self.snapshot_state != SnapshotState::Idle || !due {
            return Ok(());
        }
        self.snapshot_state = SnapshotState::AwaitingFlush;
        if !self.start_flush() {
            // Storage holds everything applied already.
            self.compact()?;
        }
        Ok(())
    }

    pub(super) fn compact(&mut self) -> anyhow::Result<()> {
        self.snapshot_state = SnapshotState::Idle;
        let meta = applied_meta(&*self.storage.view()?);
        if meta.index <= self.snapshot_index {
            return Ok(());
        }
        // Refused as stale if a leader's snapshot was installed meanwhile.
        self.note_compacted(meta.index);
        if self.raft.compact(meta.index).is_ok() {
            tracing::info!(target: "keel::raft", index = meta.index, "snapshot taken, log compacted");
            self.snapshot_index = meta.index;
            self.bytes_since_snapshot = 0;
            self.io.write(WriterJob::Purge(meta));
        }
        Ok(())
    }

    /// Paper §7, issue #16: the core names the point a follower needs; the image sent is
    /// the applied state as storage holds it now, at or past that point (it only moves
    /// forward, and everything applied is committed), read from one read transaction for
    /// the whole transfer. The message says where that image stands.
    pub(super) fn send_snapshot(&mut self, mut m: keel_raft::Message) -> anyhow::Result<()> {
        let view = self.storage.view()?;
        let meta = applied_meta(&*view);
        if let keel_raft::MessageBody::InstallSnapshot { snapshot } = &mut m.body {
            if meta.index < snapshot.index {
                tracing::warn!(target: "keel::raft", wanted = snapshot.index, have = meta.index, "storage is behind the snapshot point; not sent");
                return Ok(());
            }
            if self.bug != Some(super::DriverBug::StaleSnapshotMeta) {
                *snapshot = meta;
            }
        }
        self.io.send_snapshot((m, view));
        Ok(())
    }

    /// Thesis §6.3: sessions expire by the log's clock, so every node drops the same ones at
    /// the same entry. The leader proposes the cut-off now and then (a tenth of the TTL).
    pub(super) fn maybe_expire_sessions(&mut self) {
        let ttl = self.cfg.session_ttl_ms;
        if ttl == 0 || self.raft.role() != Role::Leader {
            return;
        }
        let every = (ttl / 10).max(100);
        if self.io.mono_ms().saturating_sub(self.last_session_sweep_ms) < every {
            return;
        }
        self.last_session_sweep_ms = self.io.mono_ms();
        let now = self.io.wall_ms();
        let record = Record::ExpireSessions {
            before_ms: session_cutoff(&self.raft, now, ttl),
        };
        if let Ok((index, _)) = self.raft.propose(record, now) {
            tracing::debug!(target: "keel::txn", index, "proposed session expiry");
        }
    }

    /// A new cluster gets the embedded kv plugin, deployed through the log like any other.
    pub(super) fn maybe_deploy_builtin(&mut self) {
        if !self.cfg.builtin_kv
            || self.raft.role() != Role::Leader
            || self.deploy_in_flight.is_some()
            || self.registry.get("kv").is_some()
        {
            return;
        }
        let sha256 = blobs::static_sha256(state::BUILTIN_KV);
        let deploy = Deploy {
            plugin: "kv".into(),
            version: format!("builtin-{}", &blobs::hex(&sha256)[..12]),
            sha256,
            fuel_per_apply: 100_000_000,
            memory_limit: 128 << 20,
        };
        if let Ok((index, _)) = self.raft.propose(Record::Deploy(deploy), self.io.wall_ms()) {
            tracing::info!(target: "keel::txn", index, "proposed deployment of the built-in kv plugin");
            self.deploy_in_flight = Some(index);
        }
    }
}

/// Where a view of the applied state stands, as snapshot metadata.
pub(crate) fn applied_meta(view: &dyn keel_storage::StateView) -> SnapshotMeta {
    let applied = view.applied();
    SnapshotMeta {
        index: applied.last_applied.index,
        term: applied.last_applied.term,
        config: applied.config.clone(),
    }
}
