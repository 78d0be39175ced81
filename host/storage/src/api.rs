//! The storage contract: what the driver writes and reads, implemented by
//! [`crate::RedbStorage`] and [`crate::MemStorage`] and checked by one conformance suite.

use std::fmt;

use keel_raft::{ClusterConfig, ClusterId, Entry, HardState, Index, NodeId, SnapshotMeta, Term};
use serde::{Deserialize, Serialize};

use crate::StorageError;

/// Position of an entry: index and term. `LogId::default()` (0, 0) means "nothing".
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize,
)]
pub struct LogId {
    /// Log index.
    pub index: Index,
    /// Term of the entry at that index.
    pub term: Term,
}

impl LogId {
    /// The position of `entry`.
    pub fn of(entry: &Entry) -> LogId {
        LogId {
            index: entry.index,
            term: entry.term,
        }
    }
}

impl fmt::Display for LogId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}@t{}", self.index, self.term)
    }
}

/// Who this data file belongs to: fixed at bootstrap, checked on every open (design §7).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Identity {
    /// The cluster's UUID.
    pub cluster: ClusterId,
    /// This node's id.
    pub node: NodeId,
}

impl fmt::Display for Identity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "node {} of cluster {}", self.node, self.cluster)
    }
}

/// Where the log stands. Entries `snapshot.index + 1 ..= last.index` are stored; the ones
/// up to `snapshot.index` were purged (or never stored, if a snapshot was installed).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct LogBounds {
    /// The position the stored log starts after: the last purged entry, or (0, 0).
    pub snapshot: LogId,
    /// The last stored entry; equals `snapshot` when no entry is stored.
    pub last: LogId,
}

impl LogBounds {
    /// Index of the first stored entry (may exceed `last.index` when the log is empty).
    pub fn first_index(&self) -> Index {
        self.snapshot.index + 1
    }
}

/// The applied state machine's position: `last_applied` and the configuration as of it.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct AppliedState {
    /// The last applied entry (or snapshot point).
    pub last_applied: LogId,
    /// The latest configuration at or before `last_applied`.
    pub config: ClusterConfig,
}

/// Everything a restarting node reads, taken from one consistent read.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RecoveredState {
    /// Cluster and node id, if the node was bootstrapped.
    pub identity: Option<Identity>,
    /// Term and vote.
    pub hard_state: HardState,
    /// Where the log stands.
    pub log: LogBounds,
    /// Metadata of the last snapshot point (purge or install); index 0 if none.
    pub snapshot: SnapshotMeta,
    /// Where the state machine stands. Replay starts at `applied.last_applied.index + 1`.
    pub applied: AppliedState,
}

/// A snapshot to install: where it stands, and its image (as [`crate::SnapshotChunks`]
/// produced it) to be read once, in order, inside the install's transaction. A defect
/// anywhere in the image fails the whole write, which then changes nothing.
pub struct SnapshotImage {
    /// Where the snapshot stands; the image's header must say the same.
    pub meta: SnapshotMeta,
    reader: std::cell::RefCell<Box<dyn std::io::Read + Send>>,
}

impl SnapshotImage {
    /// The snapshot at `meta` whose image `reader` streams.
    pub fn new(meta: SnapshotMeta, reader: impl std::io::Read + Send + 'static) -> Self {
        SnapshotImage {
            meta,
            reader: std::cell::RefCell::new(Box::new(reader)),
        }
    }

    /// Reads the image, record by record, checking it stands where `meta` says: the same
    /// index, term and members. The members' addresses may differ (a backup restored onto
    /// new machines is installed with their new addresses): a node's id is its identity,
    /// its address is not, and `meta`'s are the ones stored.
    pub(crate) fn read(
        &self,
        sink: impl FnMut(crate::snapshot::ImageRecord) -> Result<(), StorageError>,
    ) -> Result<(), StorageError> {
        let mut reader = self.reader.borrow_mut();
        let found = crate::snapshot::read_image(&mut **reader, sink)?;
        let same_point = found.index == self.meta.index
            && found.term == self.meta.term
            && found.config.voters == self.meta.config.voters
            && found.config.learners == self.meta.config.learners;
        if !same_point {
            return Err(StorageError::SnapshotImage {
                index: self.meta.index,
                reason: format!(
                    "image stands at {}@t{} with voters {:?} and learners {:?}, metadata says \
                     {}@t{} with voters {:?} and learners {:?}",
                    found.index,
                    found.term,
                    found.config.voters,
                    found.config.learners,
                    self.meta.index,
                    self.meta.term,
                    self.meta.config.voters,
                    self.meta.config.learners
                ),
            });
        }
        Ok(())
    }
}

impl fmt::Debug for SnapshotImage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SnapshotImage")
            .field("meta", &self.meta)
            .finish_non_exhaustive()
    }
}

/// One durable write of a Ready: applied in this order, in ONE commit.
///
/// 1. `hard_state`, if any;
/// 2. `snapshot`, if any: replaces the state machine, sets `last_applied` to its point, and
///    discards the log up to it (keeping a suffix that agrees with it, thesis §5.4.1 / paper §7);
/// 3. `entries`: appended; when the first one's index is at or below the last stored index, the
///    stored suffix from that index is truncated first (a new leader overwrites uncommitted
///    entries, paper §5.3).
#[derive(Clone, Copy, Debug, Default)]
pub struct LogWrite<'a> {
    /// New term/vote to persist.
    pub hard_state: Option<HardState>,
    /// Snapshot to install.
    pub snapshot: Option<&'a SnapshotImage>,
    /// Entries to append, consecutive.
    pub entries: &'a [Entry],
}

impl LogWrite<'_> {
    /// Nothing to write: persisting it commits nothing (and costs no fsync).
    pub fn is_empty(&self) -> bool {
        self.hard_state.is_none() && self.snapshot.is_none() && self.entries.is_empty()
    }
}

/// One key's change in a plugin namespace.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KvWrite {
    /// Plugin name.
    pub namespace: String,
    /// Key within the namespace.
    pub key: Vec<u8>,
    /// New value; `None` deletes the key.
    pub value: Option<Vec<u8>>,
}

/// A client's session (Raft paper §8): the last serial applied and the result returned for it,
/// so that a retry gets the stored answer instead of a second application.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Session {
    /// Last applied serial of this client (0: opened, nothing applied yet).
    pub serial: u64,
    /// Result bytes returned for it.
    pub result: Vec<u8>,
    /// Log time (the entry's leader timestamp, ms) of the session's last command or of its
    /// opening: expiry is decided on it, the same on every node (thesis §6.3).
    pub last_ms: u64,
}

/// A batch of applied committed entries, written in ONE transaction: after any crash the state
/// is exactly that of the entries up to some `last_applied` — never half a batch.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ApplyBatch {
    /// The last entry of the batch; must be in the log, after the current `last_applied`.
    pub last_applied: LogId,
    /// The configuration as of `last_applied`, if the batch changed it.
    pub config: Option<ClusterConfig>,
    /// Plugins' KV changes, in application order (a later write to a key wins).
    pub writes: Vec<KvWrite>,
    /// Session updates, by client id, in application order; `None` removes (expiry).
    pub sessions: Vec<(u64, Option<Session>)>,
}

/// An ordered scan of one namespace: keys starting with `prefix`, from `start` (inclusive; or
/// the first key with the prefix) up to `end` (exclusive; or no bound), at most `limit` pairs.
/// The plugin runtime's `range(start, end, limit)` is `prefix: b""`.
#[derive(Clone, Copy, Debug, Default)]
pub struct KvRange<'a> {
    /// Only keys with this prefix.
    pub prefix: &'a [u8],
    /// First key to return, inclusive; keys before it are skipped.
    pub start: Option<&'a [u8]>,
    /// Upper bound, exclusive.
    pub end: Option<&'a [u8]>,
    /// Maximum number of pairs returned.
    pub limit: usize,
}

impl KvRange<'_> {
    /// Where the scan starts: the later of `prefix` and `start`.
    pub(crate) fn first_key(&self) -> &[u8] {
        match self.start {
            Some(s) if s > self.prefix => s,
            _ => self.prefix,
        }
    }

    /// Whether `key` (at or after [`Self::first_key`]) is in the range. Once a key in order
    /// is not, no later one is: both conditions are prefixes of the key order.
    pub(crate) fn admits(&self, key: &[u8]) -> bool {
        key.starts_with(self.prefix) && self.end.is_none_or(|end| key < end)
    }
}

/// Key-value pairs of one namespace, in key order.
pub type KvPairs = Vec<(Vec<u8>, Vec<u8>)>;

/// One key-value pair of some namespace, as produced by a full scan.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KvRecord {
    /// Plugin name.
    pub namespace: String,
    /// Key.
    pub key: Vec<u8>,
    /// Value.
    pub value: Vec<u8>,
}

/// A consistent, read-only view of the applied state at one `last_applied`. The plugin runtime
/// reads through it (the node wraps it with the pending writes of the batch being applied);
/// snapshots are built from it while writes go on.
pub trait StateView {
    /// The position and configuration this view stands at.
    fn applied(&self) -> &AppliedState;
    /// One key of one namespace.
    fn get(&self, namespace: &str, key: &[u8]) -> Result<Option<Vec<u8>>, StorageError>;
    /// An ordered scan within one namespace.
    fn range(&self, namespace: &str, range: KvRange<'_>) -> Result<KvPairs, StorageError>;
    /// A client's session.
    fn session(&self, client_id: u64) -> Result<Option<Session>, StorageError>;
    /// Namespaces holding at least one key, with their key counts, in name order.
    fn namespaces(&self) -> Result<Vec<(String, u64)>, StorageError>;
    /// Up to `limit` pairs of all namespaces in (namespace, key) order, strictly after `after`.
    fn scan_kv(
        &self,
        after: Option<(&str, &[u8])>,
        limit: usize,
    ) -> Result<Vec<KvRecord>, StorageError>;
    /// Up to `limit` sessions in client-id order, strictly after `after`.
    fn scan_sessions(
        &self,
        after: Option<u64>,
        limit: usize,
    ) -> Result<Vec<(u64, Session)>, StorageError>;
}

/// A boxed view is a view: the node holds views of any store as `Box<dyn StateView + Send>`.
impl<T: StateView + ?Sized> StateView for Box<T> {
    fn applied(&self) -> &AppliedState {
        (**self).applied()
    }
    fn get(&self, namespace: &str, key: &[u8]) -> Result<Option<Vec<u8>>, StorageError> {
        (**self).get(namespace, key)
    }
    fn range(&self, namespace: &str, range: KvRange<'_>) -> Result<KvPairs, StorageError> {
        (**self).range(namespace, range)
    }
    fn session(&self, client_id: u64) -> Result<Option<Session>, StorageError> {
        (**self).session(client_id)
    }
    fn namespaces(&self) -> Result<Vec<(String, u64)>, StorageError> {
        (**self).namespaces()
    }
    fn scan_kv(
        &self,
        after: Option<(&str, &[u8])>,
        limit: usize,
    ) -> Result<Vec<KvRecord>, StorageError> {
        (**self).scan_kv(after, limit)
    }
    fn scan_sessions(
        &self,
        after: Option<u64>,
        limit: usize,
    ) -> Result<Vec<(u64, Session)>, StorageError> {
        (**self).scan_sessions(after, limit)
    }
}

/// A node's storage. Two implementations: [`crate::RedbStorage`] (one file per node) and
/// [`crate::MemStorage`] (the simulator). All methods take `&self` so the persist path and the
/// apply path may run on different threads; writes are serialised inside.
///
/// To ensure correctness the store refuses, with a typed error and before writing anything:
/// holes in the log, overwriting applied entries, applying entries it does not hold, purging
/// beyond `last_applied`, and a hard state going backwards.
pub trait Storage: Send + Sync {
    /// The read view type.
    type View: StateView + Send + 'static;

    /// Everything a restarting node needs, from one consistent read.
    fn recover(&self) -> Result<RecoveredState, StorageError>;
    /// Records the node's identity at bootstrap (durably); a different stored identity is refused.
    fn set_identity(&self, identity: Identity) -> Result<(), StorageError>;
    /// Records, durably, the configuration a brand-new cluster starts from (the core's index-0
    /// snapshot), so that snapshot images and restarts carry the membership even when no
    /// configuration entry was ever applied. Only while nothing is applied; repeating it with
    /// the same configuration is a no-op.
    fn bootstrap(&self, config: &ClusterConfig) -> Result<(), StorageError>;
    /// The stored term and vote.
    fn hard_state(&self) -> Result<HardState, StorageError>;
    /// First/last positions; O(log n).
    fn log_bounds(&self) -> Result<LogBounds, StorageError>;
    /// Term of the entry at `index`: also answers for the snapshot point; `None` if the log does
    /// not hold that index (purged or beyond the end).
    fn term(&self, index: Index) -> Result<Option<Term>, StorageError>;
    /// Entries `lo..hi`, stopping early once `max_bytes` of encoded entries were returned
    /// (always at least one). Indices outside the stored log are not returned.
    fn entries(
        &self,
        lo: Index,
        hi: Index,
        max_bytes: Option<u64>,
    ) -> Result<Vec<Entry>, StorageError>;
    /// Writes one Ready durably, in one commit; returns the last log position afterwards.
    fn persist(&self, write: LogWrite<'_>) -> Result<LogId, StorageError>;
    /// Applies a batch of committed entries in one transaction (may be non-durable: see
    /// `docs/storage.md`).
    fn apply(&self, batch: &ApplyBatch) -> Result<(), StorageError>;
    /// Discards log entries up to `meta.index` after a snapshot point; `meta.index` must be
    /// applied and `meta.term` its term.
    fn purge(&self, meta: &SnapshotMeta) -> Result<(), StorageError>;
    /// Makes every earlier commit durable (for a clean shutdown).
    fn sync(&self) -> Result<(), StorageError>;
    /// A consistent read view of the applied state at the current `last_applied`.
    fn view(&self) -> Result<Self::View, StorageError>;
}
