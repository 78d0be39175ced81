//! The dry-run journal (issue #12, docs/plugins.md "Dry-run upgrades"): for the last
//! commands each plugin ran, what they were, what they answered and wrote, and what every
//! key they wrote held before. With it `keel deploy --dry-run` rewinds a plugin's namespace
//! to before the first of its last N commands and replays them against a new version.
//!
//! Kept in memory on each node, within a byte budget (`dry_run_journal_bytes`), oldest
//! first out: the applied state holds what the commands did, this only how to undo it, so
//! it is neither replicated nor in snapshots. A restart or a snapshot install starts it
//! empty; a plugin's state dropped (`keel undeploy --drop-state`) forgets its records.

use std::collections::VecDeque;
use std::sync::Arc;

use keel_plugin::{ApplyContext, Plugin, Writes};

use super::registry::CommandResult;

/// One command as its plugin ran it.
#[derive(Clone)]
pub struct Journaled {
    /// Its entry's index.
    pub index: u64,
    /// Its place within the entry.
    pub position: u32,
    /// The version that ran it.
    pub plugin: Arc<Plugin>,
    /// What the plugin was told about it.
    pub ctx: ApplyContext,
    /// The command's bytes.
    pub command: Vec<u8>,
    /// What it answered.
    pub result: CommandResult,
    /// What it wrote, in order.
    pub writes: Writes,
    /// Blobs it retained (+n) or released (-n).
    pub retains: Vec<([u8; 32], i64)>,
    /// What each key of `writes` held just before that write, in the same order.
    pub before: Writes,
}

impl Journaled {
    /// The plugin's name.
    pub fn name(&self) -> &str {
        &self.plugin.id().name
    }

    /// What the record costs in memory, roughly.
    fn bytes(&self) -> usize {
        let writes = |w: &Writes| -> usize {
            w.iter()
                .map(|(k, v)| k.len() + v.as_ref().map_or(0, Vec::len) + 48)
                .sum()
        };
        256 + self.command.len()
            + writes(&self.writes)
            + writes(&self.before)
            + self.result.as_ref().map_or_else(String::len, Vec::len)
    }
}

/// Records, oldest first, within a byte budget.
#[derive(Default)]
pub struct Journal {
    budget: usize,
    bytes: usize,
    records: VecDeque<(usize, Arc<Journaled>)>,
}

impl Journal {
    /// An empty journal keeping at most `budget` bytes (0: keeps nothing).
    pub fn new(budget: usize) -> Journal {
        Journal {
            budget,
            ..Journal::default()
        }
    }

    /// Whether records are kept at all (the apply path only gathers them then).
    pub fn is_on(&self) -> bool {
        self.budget > 0
    }

    /// Adds a committed batch's records, dropping the oldest past the budget.
    pub fn push(&mut self, records: Vec<Journaled>) {
        for r in records {
            let size = r.bytes();
            self.bytes += size;
            self.records.push_back((size, Arc::new(r)));
        }
        while self.bytes > self.budget {
            match self.records.pop_front() {
                Some((size, _)) => self.bytes -= size,
                None => break,
            }
        }
    }

    /// Forgets every record (a snapshot replaced the state they undo).
    pub fn clear(&mut self) {
        self.records.clear();
        self.bytes = 0;
    }

    /// Forgets `plugin`'s records (its state was dropped: they no longer undo it).
    pub fn forget(&mut self, plugin: &str) {
        self.records.retain(|(_, r)| r.name() != plugin);
        self.bytes = self.records.iter().map(|(s, _)| s).sum();
    }

    /// `plugin`'s last `n` records, oldest first, and how many it has in all. Eviction is
    /// oldest first, so a plugin's records are always its latest commands without a gap.
    pub fn last(&self, plugin: &str, n: usize) -> (Vec<Arc<Journaled>>, usize) {
        let all: Vec<Arc<Journaled>> = self
            .records
            .iter()
            .filter(|(_, r)| r.name() == plugin)
            .map(|(_, r)| Arc::clone(r))
            .collect();
        let available = all.len();
        let skip = available.saturating_sub(n);
        (all.into_iter().skip(skip).collect(), available)
    }

    /// Bytes held.
    pub fn bytes(&self) -> usize {
        self.bytes
    }
}
