//! `keel inspect`: what a data directory holds, for operators.

use std::fmt;
use std::path::Path;

use keel_raft::{HardState, Index};

use crate::{
    Identity, LogBounds, LogId, RedbStorage, StateView, Storage, StorageError, StorageOptions,
};

/// What [`inspect`] found in a data directory. `Display` prints one `name: value` per line.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct InspectReport {
    /// The data file.
    pub path: std::path::PathBuf,
    /// Cluster and node, if bootstrapped.
    pub identity: Option<Identity>,
    /// Term and vote.
    pub hard_state: HardState,
    /// Where the log stands.
    pub log: LogBounds,
    /// The first stored entry's position, if any entry is stored.
    pub first: Option<LogId>,
    /// Last applied position.
    pub last_applied: LogId,
    /// Index of the last snapshot point (purge or install), 0 if none.
    pub snapshot_index: Index,
    /// Plugin namespaces with their key counts.
    pub namespaces: Vec<(String, u64)>,
}

/// Reads the report of the data directory `dir`. Refuses a missing, corrupt or foreign file
/// with an error naming it. Opening verifies every page (and, after a crash, finishes redb's
/// recovery), exactly as a node starting on this directory would; it fails while a node has
/// the directory open.
pub fn inspect(dir: &Path) -> Result<InspectReport, StorageError> {
    let store = RedbStorage::open_existing(dir, StorageOptions::default())?;
    let recovered = store.recover()?;
    let namespaces = store.view()?.namespaces()?;
    let first_index = recovered.log.first_index();
    let first = match store.term(first_index)? {
        Some(term) if first_index <= recovered.log.last.index => Some(LogId {
            index: first_index,
            term,
        }),
        _ => None,
    };
    Ok(InspectReport {
        path: store.path().to_path_buf(),
        identity: recovered.identity,
        hard_state: recovered.hard_state,
        log: recovered.log,
        first,
        last_applied: recovered.applied.last_applied,
        snapshot_index: recovered.snapshot.index,
        namespaces,
    })
}

impl fmt::Display for InspectReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "data file:     {}", self.path.display())?;
        match self.identity {
            Some(id) => {
                writeln!(f, "cluster:       {}", id.cluster)?;
                writeln!(f, "node id:       {}", id.node)?;
            }
            None => {
                writeln!(f, "cluster:       (not bootstrapped)")?;
                writeln!(f, "node id:       (not bootstrapped)")?;
            }
        }
        writeln!(f, "term:          {}", self.hard_state.term)?;
        match self.hard_state.vote {
            Some(v) => writeln!(f, "vote:          {v}")?,
            None => writeln!(f, "vote:          (none)")?,
        }
        if let Some(first) = self.first {
            writeln!(f, "log first:     {first}")?;
            writeln!(f, "log last:      {}", self.log.last)?;
        } else {
            writeln!(
                f,
                "log:           empty (next index {})",
                self.log.first_index()
            )?;
        }
        writeln!(f, "last applied:  {}", self.last_applied)?;
        writeln!(f, "snapshot:      {}", self.snapshot_index)?;
        if self.namespaces.is_empty() {
            writeln!(f, "namespaces:    (none)")?;
        } else {
            writeln!(f, "namespaces:")?;
            for (name, count) in &self.namespaces {
                writeln!(f, "  {name}: {count} keys")?;
            }
        }
        Ok(())
    }
}
