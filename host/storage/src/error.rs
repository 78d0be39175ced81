//! The one error type of the storage layer.
//!
//! Every variant names the failing piece (file, table, index) so that a fail-stop message is
//! enough to start an investigation (design §8).

use std::path::PathBuf;

use keel_raft::{HardState, Index, Term};

use crate::Identity;

/// Everything that can go wrong in storage. The node treats every variant as fatal (design §8):
/// it stops instead of continuing on a state it cannot vouch for. Validation variants
/// ([`StorageError::EntryTooLarge`], [`StorageError::LogGap`], …) are refused before anything is
/// written.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StorageError {
    /// The data file could not be opened (missing, locked by another process, unreadable, or
    /// rejected by redb's integrity check at open).
    #[error("cannot open Keel data file {path}: {source}")]
    Open {
        /// The data file.
        path: PathBuf,
        /// What redb reported (boxed: redb's error is large, and errors are rare).
        #[source]
        source: Box<redb::Error>,
    },
    /// The newest commit of the data file fails its checksums, and it cannot have been torn by
    /// the machine going down (see `docs/storage.md`, "Durable commits"): it may hold a vote or log
    /// entries this node acknowledged, so the file is not opened at the commit before it.
    #[error(
        "{path}: the newest commit fails its checksums and {why}; it may hold a vote or log \
         entries this node acknowledged, so it is not rolled back: the node must not start on \
         this file (docs/storage.md, \"What the operator sees\")"
    )]
    NewestCommitDamaged {
        /// The data file.
        path: PathBuf,
        /// Why it cannot be a torn write.
        why: &'static str,
    },
    /// The boot record beside the data file could not be written (see `docs/storage.md`).
    #[error("cannot write the boot record {path}: {source}")]
    BootRecord {
        /// The file or directory.
        path: PathBuf,
        /// What the OS reported.
        #[source]
        source: std::io::Error,
    },
    /// Another process (a running node?) has the data file open.
    #[error("{path} is in use by another process (is a node running on it?)")]
    InUse {
        /// The data file.
        path: PathBuf,
    },
    /// The file is a database, but not one Keel wrote (or one of a format this build cannot read).
    #[error("{path} is not a Keel data file: {reason}")]
    Foreign {
        /// The data file.
        path: PathBuf,
        /// Why it was refused.
        reason: String,
    },
    /// A read, write or commit failed after the file was open: I/O errors, a full disk, pages
    /// failing their checksum.
    #[error("{path}: {op} failed: {source}")]
    Redb {
        /// The data file.
        path: PathBuf,
        /// What was being done, naming the table where there is one.
        op: &'static str,
        /// What redb reported (boxed: redb's error is large, and errors are rare).
        #[source]
        source: Box<redb::Error>,
    },
    /// A stored value could not be decoded.
    #[error("{path}: stored {what} is undecodable: {source}")]
    Decode {
        /// The data file.
        path: PathBuf,
        /// Which value: table and key.
        what: String,
        /// What postcard reported.
        #[source]
        source: postcard::Error,
    },
    /// A value could not be encoded (only for values serde cannot express; a bug, not bad input).
    #[error("cannot encode {what}: {source}")]
    Encode {
        /// Which value.
        what: String,
        /// What postcard reported.
        #[source]
        source: postcard::Error,
    },
    /// A stored log entry does not match its checksum: the file was altered after it was opened
    /// (redb verifies page checksums only at open).
    #[error("{path}: log entry {index} fails its checksum")]
    Checksum {
        /// The data file.
        path: PathBuf,
        /// Index of the damaged entry.
        index: Index,
    },
    /// A stored log entry sits under a key that is not its own index.
    #[error("{path}: log slot {slot} holds entry {index}")]
    Misplaced {
        /// The data file.
        path: PathBuf,
        /// Key it was stored under.
        slot: Index,
        /// Index the entry itself claims.
        index: Index,
    },
    /// An entry is larger than the configured maximum; nothing was written.
    #[error("log entry {index} is {size} bytes encoded, over the {max}-byte limit")]
    EntryTooLarge {
        /// The refused entry.
        index: Index,
        /// Its encoded size.
        size: usize,
        /// The configured maximum.
        max: usize,
    },
    /// The entries to append do not continue the log (a hole, or indices not consecutive).
    #[error("log entry {got} does not continue the log: expected an index in 1..={expected}")]
    LogGap {
        /// Highest index the next entry could have.
        expected: Index,
        /// Index it had.
        got: Index,
    },
    /// An append would overwrite an entry that is already applied (hence committed).
    #[error("refusing to overwrite log entry {index}: entries up to {last_applied} are applied")]
    OverwriteApplied {
        /// First entry the write would replace.
        index: Index,
        /// Last applied index.
        last_applied: Index,
    },
    /// The hard state to persist is older than the stored one (term went backwards, or the vote
    /// of the current term changed).
    #[error("refusing to move hard state back from {stored:?} to {new:?}")]
    HardStateRegressed {
        /// What is stored.
        stored: HardState,
        /// What was asked for.
        new: HardState,
    },
    /// The node identity differs from the one stored at bootstrap.
    #[error("data file belongs to {stored}, not {given}")]
    IdentityMismatch {
        /// What is stored.
        stored: Identity,
        /// What was asked for.
        given: Identity,
    },
    /// An apply batch does not follow `last_applied`, or names an entry the log does not hold.
    #[error("cannot apply up to {index} (term {term}): {reason}")]
    ApplyRefused {
        /// Index the batch applies up to.
        index: Index,
        /// Term the batch claims for it.
        term: Term,
        /// Why it was refused.
        reason: &'static str,
    },
    /// A log purge beyond `last_applied`, or at a position the log does not hold.
    #[error("cannot purge the log up to {index} (term {term}): {reason}")]
    PurgeRefused {
        /// Index asked for.
        index: Index,
        /// Term asked for.
        term: Term,
        /// Why it was refused.
        reason: &'static str,
    },
    /// A snapshot image is malformed or does not match its metadata; nothing was installed.
    #[error("snapshot image at {index}: {reason}")]
    SnapshotImage {
        /// Index the snapshot claims to stand at.
        index: Index,
        /// What is wrong.
        reason: String,
    },
    /// A write failure injected into a [`crate::MemStorage`] by a test or the simulator.
    #[error("memory store: injected write failure")]
    Injected,
}

impl StorageError {
    /// Whether the underlying cause is a full disk (ENOSPC / quota), for a more useful
    /// fail-stop message.
    pub fn is_disk_full(&self) -> bool {
        let source = match self {
            StorageError::Open { source, .. } | StorageError::Redb { source, .. } => source,
            _ => return false,
        };
        match &**source {
            redb::Error::Io(e) => matches!(
                e.kind(),
                std::io::ErrorKind::StorageFull | std::io::ErrorKind::QuotaExceeded
            ),
            _ => false,
        }
    }
}
