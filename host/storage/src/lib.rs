//! Keel's durable storage: the log, hard state, plugin state and snapshots of one node, on
//! [redb](https://docs.rs/redb) — plus a memory store with the same contract for the simulator.
//!
//! The driver uses a [`Storage`] in three ways (design §1, §2):
//!
//! 1. **Persist a Ready**, in one durable commit: [`Storage::persist`] with a [`LogWrite`]
//!    (hard state, snapshot image to install, entries to append — a conflicting suffix is truncated).
//! 2. **Apply committed entries**, in one transaction per batch: [`Storage::apply`] with an
//!    [`ApplyBatch`] (plugins' KV writes, client sessions, `last_applied`, config).
//! 3. **Read**: [`Storage::view`] gives a consistent [`StateView`] for plugin queries and for
//!    [`SnapshotChunks`]; [`Storage::recover`] gives everything a restarting node needs.
//!
//! ```
//! use keel_raft::{Entry, HardState, Record};
//! use keel_storage::{ApplyBatch, KvRange, KvWrite, LogId, LogWrite, MemStorage, StateView, Storage};
//!
//! let store = MemStorage::new(); // or RedbStorage::open(dir, StorageOptions::default())?
//! let entries = [Entry { index: 1, term: 1, timestamp_ms: 0, record: Record::Noop }];
//! let last = store.persist(LogWrite {
//!     hard_state: Some(HardState { term: 1, vote: Some(1) }),
//!     snapshot: None,
//!     entries: &entries,
//! })?;
//! assert_eq!(last, LogId { index: 1, term: 1 });
//!
//! // Entry 1 committed: apply it with the plugin's buffered writes.
//! store.apply(&ApplyBatch {
//!     last_applied: last,
//!     writes: vec![KvWrite { namespace: "counter".into(), key: b"n".to_vec(), value: Some(b"1".to_vec()) }],
//!     ..ApplyBatch::default()
//! })?;
//! let view = store.view()?;
//! assert_eq!(view.get("counter", b"n")?, Some(b"1".to_vec()));
//! assert_eq!(view.range("counter", KvRange { prefix: b"", start: None, end: None, limit: 10 })?.len(), 1);
//! # Ok::<(), keel_storage::StorageError>(())
//! ```
//!
//! For the simulator, [`MemStorage`] keeps the same contract and refuses the same writes (one
//! conformance suite runs against both), and models the failures: [`MemStorage::crash`] loses
//! exactly the applies made since the last durable write, as redb does, and
//! [`MemStorage::fail_writes`] makes writes fail as a full disk would.
//!
//! Durability and crash behaviour are argued in `docs/storage.md`.

mod api;
mod codec;
mod error;
mod guard;
mod inspect;
mod mem;
mod plan;
mod redb_store;
mod snapshot;

pub use api::{
    AppliedState, ApplyBatch, Identity, KvPairs, KvRange, KvRecord, KvWrite, LogBounds, LogId,
    LogWrite, RecoveredState, Session, SnapshotImage, StateView, Storage,
};
pub use error::StorageError;
pub use guard::BOOT_FILE;
pub use inspect::{InspectReport, inspect};
pub use mem::{MemStorage, MemView};
pub use redb_store::{DATA_FILE, RedbStorage, RedbView};
pub use snapshot::{SnapshotChunks, verify_image};

/// A log entry as stored on disk (checksum, then postcard; at most `max` bytes), and back,
/// checked against the slot it was read from. Public for the host's fuzz tests, which feed
/// the decoder damaged and random bytes (issue #13); storage uses them internally.
#[doc(hidden)]
pub mod log_codec {
    use keel_raft::{Entry, Index};

    use crate::StorageError;

    /// The stored form of `entry`.
    pub fn encode(entry: &Entry, max: usize) -> Result<Vec<u8>, StorageError> {
        crate::codec::encode_entry(entry, max)
    }

    /// The entry stored as `bytes` under `slot`.
    pub fn decode(slot: Index, bytes: &[u8]) -> Result<Entry, StorageError> {
        crate::codec::decode_entry(std::path::Path::new("<log>"), slot, bytes)
    }
}

/// Knobs of a store.
#[derive(Clone, Debug)]
pub struct StorageOptions {
    /// Largest encoded log entry accepted; larger ones are refused before anything is written.
    pub max_entry_bytes: usize,
    /// Commit applies durably (fsync each apply batch). Off by default: the log is durable, so a
    /// restart replays from the last durable `last_applied` (see `docs/storage.md`).
    pub durable_applies: bool,
    /// Every durable commit two-phase (redb: fsync, flip the commit slot, fsync): two fsyncs per
    /// log append. Off by default: appends then make ONE fsync (redb's one-phase commit with
    /// checksums), while new terms/votes, snapshots, purges and syncs stay two-phase, and a
    /// damaged newest commit still fails the open unless it can be a torn write (see
    /// `docs/storage.md`, "Durable commits").
    pub two_phase_commit: bool,
    /// With one-phase appends: once no durable commit came for this long, seal the last one
    /// with an empty two-phase commit, so that an acknowledged one-phase commit is the newest
    /// (the only one a fall-back could undo) only briefly. `None`: never (tests).
    pub seal_after: Option<std::time::Duration>,
    /// redb page cache size.
    pub cache_bytes: usize,
}

impl Default for StorageOptions {
    fn default() -> Self {
        StorageOptions {
            max_entry_bytes: 4 << 20,
            durable_applies: false,
            two_phase_commit: false,
            seal_after: Some(std::time::Duration::from_millis(50)),
            cache_bytes: 256 << 20,
        }
    }
}
