//! Validation shared by both stores, so that they refuse exactly the same writes.
//!
//! Each function looks at the current state (read inside the write transaction, so it cannot
//! change underneath) and either returns what to write or a typed error; nothing is written
//! until it has returned `Ok`.

use keel_raft::{Entry, HardState, Index, SnapshotMeta, Term};

use crate::{ApplyBatch, LogBounds, LogId, LogWrite, SnapshotImage, StorageError, codec};

/// What a [`LogWrite`] turns into.
pub(crate) struct PersistPlan<'a> {
    /// Hard state to store.
    pub(crate) hard_state: Option<HardState>,
    /// Snapshot to install (its image is read, and verified, as it is written).
    pub(crate) snapshot: Option<&'a SnapshotImage>,
    /// With a snapshot: whether the stored log agrees with it at its index, so the suffix after
    /// it is kept (paper §7); otherwise the whole log is discarded.
    pub(crate) keep_suffix: bool,
    /// Remove stored entries from this index on before appending.
    pub(crate) truncate_from: Option<Index>,
    /// Encoded entries to insert.
    pub(crate) entries: Vec<(Index, Vec<u8>)>,
    /// Last log position after the write.
    pub(crate) last: LogId,
}

/// Encodes the entries of a write and checks sizes and contiguity; done before any transaction.
pub(crate) fn encode_entries(
    entries: &[Entry],
    max: usize,
) -> Result<Vec<(Index, Vec<u8>)>, StorageError> {
    let mut out = Vec::with_capacity(entries.len());
    for pair in entries.windows(2) {
        if pair[1].index != pair[0].index + 1 {
            return Err(StorageError::LogGap {
                expected: pair[0].index + 1,
                got: pair[1].index,
            });
        }
    }
    for entry in entries {
        out.push((entry.index, codec::encode_entry(entry, max)?));
    }
    Ok(out)
}

/// Plans a [`LogWrite`] against the current state. `term_at` answers for the stored log.
pub(crate) fn plan_persist<'a>(
    write: &LogWrite<'a>,
    entries: Vec<(Index, Vec<u8>)>,
    stored_hs: HardState,
    bounds: LogBounds,
    last_applied: LogId,
    mut term_at: impl FnMut(Index) -> Result<Option<Term>, StorageError>,
) -> Result<PersistPlan<'a>, StorageError> {
    if let Some(new) = write.hard_state {
        check_hard_state(stored_hs, new)?;
    }
    let mut bounds = bounds;
    let mut last_applied = last_applied;
    let mut keep_suffix = false;
    let snapshot = match write.snapshot {
        None => None,
        Some(snap) => {
            let meta = &snap.meta;
            if meta.index <= last_applied.index {
                return Err(StorageError::SnapshotImage {
                    index: meta.index,
                    reason: format!("not newer than last_applied {last_applied}"),
                });
            }
            let id = LogId {
                index: meta.index,
                term: meta.term,
            };
            keep_suffix =
                meta.index <= bounds.last.index && term_at(meta.index)? == Some(meta.term);
            bounds = LogBounds {
                snapshot: id,
                last: if keep_suffix { bounds.last } else { id },
            };
            last_applied = id;
            Some(snap)
        }
    };
    let mut truncate_from = None;
    let mut last = bounds.last;
    if let (Some(first), Some(tail)) = (write.entries.first(), write.entries.last()) {
        if first.index <= last_applied.index || first.index <= bounds.snapshot.index {
            return Err(StorageError::OverwriteApplied {
                index: first.index,
                last_applied: last_applied.index.max(bounds.snapshot.index),
            });
        }
        if first.index > bounds.last.index + 1 {
            return Err(StorageError::LogGap {
                expected: bounds.last.index + 1,
                got: first.index,
            });
        }
        if first.index <= bounds.last.index {
            truncate_from = Some(first.index);
        }
        last = LogId::of(tail);
    }
    Ok(PersistPlan {
        hard_state: write.hard_state,
        snapshot,
        keep_suffix,
        truncate_from,
        entries,
        last,
    })
}

/// A bootstrap configuration is recorded only before anything is applied.
pub(crate) fn check_bootstrap(
    applied: &crate::AppliedState,
    config: &keel_raft::ClusterConfig,
) -> Result<(), StorageError> {
    if applied.last_applied.index != 0 && applied.config != *config {
        return Err(StorageError::ApplyRefused {
            index: 0,
            term: 0,
            reason: "a bootstrap configuration after entries were applied",
        });
    }
    Ok(())
}

/// Term never goes back; within a term, a cast vote never changes (paper §5.1, Fig. 2).
fn check_hard_state(stored: HardState, new: HardState) -> Result<(), StorageError> {
    let regressed = new.term < stored.term
        || (new.term == stored.term && stored.vote.is_some() && new.vote != stored.vote);
    if regressed {
        return Err(StorageError::HardStateRegressed { stored, new });
    }
    Ok(())
}

/// Checks an apply batch: it moves `last_applied` forward to an entry the log holds.
pub(crate) fn check_apply(
    batch: &ApplyBatch,
    last_applied: LogId,
    mut term_at: impl FnMut(Index) -> Result<Option<Term>, StorageError>,
) -> Result<(), StorageError> {
    let LogId { index, term } = batch.last_applied;
    let refuse = |reason| {
        Err(StorageError::ApplyRefused {
            index,
            term,
            reason,
        })
    };
    if index <= last_applied.index {
        return refuse("not after last_applied");
    }
    match term_at(index)? {
        None => refuse("the log does not hold that entry"),
        Some(t) if t != term => refuse("the log holds another term at that index"),
        Some(_) => Ok(()),
    }
}

/// Checks a purge: up to an applied entry the log holds. Returns `false` when there is nothing
/// to do (already purged that far).
pub(crate) fn check_purge(
    meta: &SnapshotMeta,
    bounds: LogBounds,
    last_applied: LogId,
    mut term_at: impl FnMut(Index) -> Result<Option<Term>, StorageError>,
) -> Result<bool, StorageError> {
    let refuse = |reason| {
        Err(StorageError::PurgeRefused {
            index: meta.index,
            term: meta.term,
            reason,
        })
    };
    if meta.index <= bounds.snapshot.index {
        return Ok(false);
    }
    if meta.index > last_applied.index {
        return refuse("beyond last_applied");
    }
    match term_at(meta.index)? {
        Some(t) if t == meta.term => Ok(true),
        Some(_) => refuse("the log holds another term at that index"),
        None => refuse("the log does not hold that entry"),
    }
}
