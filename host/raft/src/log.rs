//! The core's view of its log: a snapshot base plus the entries after it, and three cursors
//! (persisted, committed, handed out for apply).
//!
//! To ensure correctness:
//! - There is never a hole: `entries[i].index == base.index + 1 + i`.
//! - `committed` never goes backwards, and no committed entry is ever truncated (§5.4: the
//!   Leader Completeness and State Machine Safety properties depend on it). A request to do
//!   so is an invariant failure and panics: the node must fail-stop, not diverge.
//! - `persisted` is the longest prefix the driver has reported durable *and* that has not
//!   been overwritten since.

use crate::types::{ClusterConfig, Entry, Index, Record, SnapshotMeta, Term};

#[derive(Debug, Clone)]
pub(crate) struct RaftLog {
    /// Everything up to and including `base.index` is compacted into a snapshot.
    pub(crate) base: SnapshotMeta,
    entries: Vec<Entry>,
    /// Highest index known committed.
    pub(crate) committed: Index,
    /// Highest index handed to the driver for apply.
    pub(crate) handed_out: Index,
    /// Highest index reported durable by the driver.
    pub(crate) persisted: Index,
    /// First index not yet handed to the driver for persisting.
    pub(crate) unstable: Index,
}

impl RaftLog {
    /// A log restored from durable state: everything given is already persisted.
    pub(crate) fn restore(base: SnapshotMeta, entries: Vec<Entry>, applied: Index) -> Self {
        let last = base.index + entries.len() as Index;
        // Applied entries were committed; commit is otherwise not durable (§5.1 Fig. 2:
        // commitIndex is volatile state).
        let committed = applied.max(base.index).min(last);
        RaftLog {
            entries,
            committed,
            handed_out: committed,
            persisted: last,
            unstable: last + 1,
            base,
        }
    }

    pub(crate) fn first_index(&self) -> Index {
        self.base.index + 1
    }

    pub(crate) fn last_index(&self) -> Index {
        self.base.index + self.entries.len() as Index
    }

    pub(crate) fn last_term(&self) -> Term {
        self.entries.last().map_or(self.base.term, |e| e.term)
    }

    /// Term of the entry at `index`, if the log still knows it.
    pub(crate) fn term(&self, index: Index) -> Option<Term> {
        if index == self.base.index {
            return Some(self.base.term);
        }
        self.entry(index).map(|e| e.term)
    }

    pub(crate) fn entry(&self, index: Index) -> Option<&Entry> {
        if index <= self.base.index {
            return None;
        }
        self.entries.get((index - self.base.index - 1) as usize)
    }

    pub(crate) fn matches(&self, index: Index, term: Term) -> bool {
        self.term(index) == Some(term)
    }

    /// §5.4.1: "If the logs have last entries with different terms, then the log with the
    /// later term is more up-to-date. If the logs end with the same term, then whichever log
    /// is longer is more up-to-date."
    pub(crate) fn is_up_to_date(&self, last_index: Index, last_term: Term) -> bool {
        last_term > self.last_term()
            || (last_term == self.last_term() && last_index >= self.last_index())
    }

    /// Entries in `[from, to]`, at most `max` of them. `None` if `from` is compacted.
    pub(crate) fn slice(&self, from: Index, to: Index, max: usize) -> Option<Vec<Entry>> {
        if from <= self.base.index {
            return None;
        }
        let to = to.min(self.last_index());
        if from > to {
            return Some(Vec::new());
        }
        let lo = (from - self.base.index - 1) as usize;
        let hi = ((to - self.base.index) as usize).min(lo.saturating_add(max));
        Some(self.entries[lo..hi].to_vec())
    }

    /// Like [`Log::slice`], and stops before the entry that would take the entries'
    /// encoded size ([`Entry::encoded_len_bound`]) over `max_bytes`; the first entry always
    /// goes.
    pub(crate) fn slice_bytes(
        &self,
        from: Index,
        to: Index,
        max: usize,
        max_bytes: usize,
    ) -> Option<Vec<Entry>> {
        if from <= self.base.index {
            return None;
        }
        let to = to.min(self.last_index());
        if from > to {
            return Some(Vec::new());
        }
        let lo = (from - self.base.index - 1) as usize;
        let hi = ((to - self.base.index) as usize).min(lo.saturating_add(max));
        let mut bytes = 0usize;
        let mut end = lo;
        for e in &self.entries[lo..hi] {
            bytes = bytes.saturating_add(e.encoded_len_bound());
            if end > lo && bytes > max_bytes {
                break;
            }
            end += 1;
        }
        Some(self.entries[lo..end].to_vec())
    }

    /// Appends entries that follow the last one (the leader's own proposals).
    pub(crate) fn append(&mut self, entry: Entry) {
        debug_assert_eq!(entry.index, self.last_index() + 1, "log hole");
        self.entries.push(entry);
    }

    /// §5.3 receiver rule: "If an existing entry conflicts with a new one (same index but
    /// different terms), delete the existing entry and all that follow it. Append any new
    /// entries not already in the log." Returns the index of the first entry that changed,
    /// if any did. The caller has checked that the entries follow a matching entry.
    /// `keep_matching` is false only in a deliberately broken testkit variant.
    pub(crate) fn merge(&mut self, entries: Vec<Entry>, keep_matching: bool) -> Option<Index> {
        let mut first_new = None;
        for (i, e) in entries.iter().enumerate() {
            if e.index <= self.base.index {
                continue; // compacted, hence committed, hence identical
            }
            if !(keep_matching && self.matches(e.index, e.term)) {
                first_new = Some((i, e.index));
                break;
            }
        }
        let (pos, index) = first_new?;
        self.truncate_from(index);
        self.entries.extend(entries.into_iter().skip(pos));
        Some(index)
    }

    /// Drops `index` and everything after it.
    fn truncate_from(&mut self, index: Index) {
        assert!(
            index > self.committed,
            "invariant violated: truncating committed entry {index} (commit {})",
            self.committed
        );
        self.entries
            .truncate((index - self.base.index - 1) as usize);
        self.unstable = self.unstable.min(index);
        self.persisted = self.persisted.min(index - 1);
    }

    /// The entries not yet handed to the driver for persisting; marks them handed out.
    pub(crate) fn take_unstable(&mut self) -> Vec<Entry> {
        let from = self.unstable;
        self.unstable = self.last_index() + 1;
        self.slice(from, self.last_index(), usize::MAX)
            .unwrap_or_default()
    }

    /// The driver reports the log durable up to `(index, term)`. Ignored when that entry has
    /// since been overwritten (the write it acknowledges is stale) or not yet handed out.
    pub(crate) fn persisted_to(&mut self, index: Index, term: Term) -> bool {
        if index < self.unstable && index > self.persisted && self.matches(index, term) {
            self.persisted = index;
            return true;
        }
        false
    }

    /// Raises the commit index to `index` (capped at the log's end); never lowers it.
    pub(crate) fn commit_to(&mut self, index: Index) {
        self.committed = self.committed.max(index.min(self.last_index()));
    }

    /// Committed entries that are also durable here and not yet handed out for apply;
    /// marks them handed out.
    pub(crate) fn take_committed(&mut self, max: usize) -> Vec<Entry> {
        let to = self.committed.min(self.persisted);
        if to <= self.handed_out {
            return Vec::new();
        }
        let out = self.slice(self.handed_out + 1, to, max).unwrap_or_default();
        self.handed_out += out.len() as Index;
        out
    }

    /// For a follower's rejection hint (etcd-io/raft `findConflictByTerm`): the largest index
    /// `<= index` whose term is `<= term`, with that term. Lets the leader skip a whole term
    /// of conflicting entries per round trip instead of one entry (thesis §5.3 optimisation).
    pub(crate) fn find_conflict_by_term(&self, index: Index, term: Term) -> (Index, Term) {
        let mut i = index.min(self.last_index());
        while i > self.base.index {
            match self.term(i) {
                Some(t) if t <= term => return (i, t),
                _ => i -= 1,
            }
        }
        (self.base.index, self.base.term)
    }

    /// Replaces everything with a snapshot (§7: "discard the entire log"), unless the log
    /// already holds the snapshot's last entry, in which case only the prefix goes.
    pub(crate) fn install_snapshot(&mut self, meta: SnapshotMeta) {
        self.entries.clear();
        self.committed = meta.index;
        self.handed_out = meta.index;
        self.persisted = self.persisted.min(meta.index.saturating_sub(1));
        self.unstable = meta.index + 1;
        self.base = meta;
    }

    /// Drops entries up to `meta.index`, which the caller's snapshot now covers.
    pub(crate) fn compact(&mut self, meta: SnapshotMeta) {
        let drop = (meta.index - self.base.index) as usize;
        self.entries.drain(..drop.min(self.entries.len()));
        self.base = meta;
    }

    /// The latest configuration in the log at or before `index`, with its index
    /// (thesis §4.1: a server uses the latest configuration in its log, committed or not).
    pub(crate) fn config_at(&self, index: Index) -> (Index, ClusterConfig) {
        let to = index.min(self.last_index());
        let mut i = to;
        while i > self.base.index {
            if let Some(Entry {
                record: Record::Config(c),
                ..
            }) = self.entry(i)
            {
                return (i, c.clone());
            }
            i -= 1;
        }
        (self.base.index, self.base.config.clone())
    }

    /// Whether any entry from `index` to the end is a configuration.
    pub(crate) fn has_config_from(&self, index: Index) -> bool {
        let from = index.max(self.first_index());
        (from..=self.last_index()).any(|i| {
            matches!(
                self.entry(i),
                Some(Entry {
                    record: Record::Config(_),
                    ..
                })
            )
        })
    }

    /// Timestamp of the last entry, so the leader's clock as seen by plugins never runs back.
    pub(crate) fn last_timestamp(&self) -> u64 {
        self.entries.last().map_or(0, |e| e.timestamp_ms)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(index: Index, term: Term) -> Entry {
        Entry {
            index,
            term,
            timestamp_ms: 0,
            record: Record::Noop,
        }
    }

    /// An append carries entries up to its byte budget, and always the first one (an entry
    /// larger than the budget travels alone rather than never).
    #[test]
    fn a_slice_stops_at_its_byte_budget_but_always_takes_one_entry() {
        use crate::types::{Command, Payload};
        let big = |index| Entry {
            index,
            term: 1,
            timestamp_ms: 0,
            record: Record::Command(Command {
                plugin: "kv".into(),
                client: None,
                payload: Payload::Inline(vec![7; 1000]),
            }),
        };
        let log = RaftLog::restore(SnapshotMeta::default(), (1..=10).map(big).collect(), 0);
        let one = big(1).encoded_len_bound();
        let take = |budget| log.slice_bytes(1, 10, 256, budget).map(|v| v.len());
        assert_eq!(take(1), Some(1), "the first entry goes whatever the budget");
        assert_eq!(take(one), Some(1));
        assert_eq!(take(3 * one + 1), Some(3));
        assert_eq!(take(usize::MAX), Some(10));
        assert_eq!(
            log.slice_bytes(1, 10, 4, usize::MAX).map(|v| v.len()),
            Some(4)
        );
    }

    /// §5.3 truncation must also forget durability: the overwritten entries were durable, the
    /// new ones at the same indices are not until the driver says so, and only durable
    /// committed entries may be applied.
    #[test]
    fn overwritten_entries_no_longer_count_as_persisted() {
        let entries = (1..=10).map(|i| entry(i, 1)).collect();
        let mut log = RaftLog::restore(SnapshotMeta::default(), entries, 0);
        assert_eq!(log.persisted, 10);
        log.commit_to(5);
        assert_eq!(log.take_committed(100).len(), 5);

        // A new leader's entries conflict from index 8 on.
        let changed = log.merge(vec![entry(8, 2), entry(9, 2)], true);
        assert_eq!(changed, Some(8));
        assert_eq!(log.last_index(), 9);
        assert_eq!(
            log.persisted, 7,
            "entries 8 and 9 are new and not yet durable"
        );

        // Committed up to 9, but only 6..=7 are durable here: nothing beyond may be applied.
        log.commit_to(9);
        let applied: Vec<Index> = log.take_committed(100).iter().map(|e| e.index).collect();
        assert_eq!(applied, vec![6, 7]);

        // Once the driver reports the new entries durable, they may be applied.
        let unstable: Vec<Index> = log.take_unstable().iter().map(|e| e.index).collect();
        assert_eq!(unstable, vec![8, 9]);
        assert!(log.persisted_to(9, 2));
        let applied: Vec<Index> = log.take_committed(100).iter().map(|e| e.index).collect();
        assert_eq!(applied, vec![8, 9]);
    }

    #[test]
    fn a_stale_persist_report_for_an_overwritten_entry_is_ignored() {
        let mut log = RaftLog::restore(SnapshotMeta::default(), Vec::new(), 0);
        log.append(entry(1, 1));
        log.append(entry(2, 1));
        let _ = log.take_unstable();
        log.merge(vec![entry(2, 2)], true);
        // The report for the old (2, term 1) write arrives late: it proves nothing about (2, 2).
        assert!(!log.persisted_to(2, 1));
        assert!(log.persisted < 2);
    }

    /// The persisted cursor only moves forward, and only over entries the driver was given.
    #[test]
    fn persist_reports_never_move_durability_backwards_or_past_what_was_handed_out() {
        let entries = (1..=10).map(|i| entry(i, 1)).collect();
        let mut log = RaftLog::restore(SnapshotMeta::default(), entries, 0);
        // A late report of an earlier write changes nothing.
        assert!(!log.persisted_to(5, 1));
        assert_eq!(log.persisted, 10);
        // Nor does a repeat of the latest one.
        assert!(!log.persisted_to(10, 1));
        // An entry not yet handed to the driver cannot have been written.
        log.append(entry(11, 1));
        assert!(!log.persisted_to(11, 1));
        assert_eq!(log.persisted, 10);
        assert_eq!(log.take_unstable().len(), 1);
        assert!(log.persisted_to(11, 1));
        assert_eq!(log.persisted, 11);
    }

    /// After a snapshot install the driver reports the snapshot point durable; that report
    /// must count, or nothing after it could be applied until later entries are written.
    #[test]
    fn an_installed_snapshot_counts_as_persisted_once_reported() {
        let entries = (1..=3).map(|i| entry(i, 1)).collect();
        let mut log = RaftLog::restore(SnapshotMeta::default(), entries, 0);
        let meta = SnapshotMeta {
            index: 20,
            term: 4,
            config: ClusterConfig::default(),
        };
        log.install_snapshot(meta);
        assert_eq!((log.committed, log.last_index()), (20, 20));
        assert!(log.take_unstable().is_empty());
        assert!(log.persisted < 20);
        assert!(log.persisted_to(20, 4));
        assert_eq!(log.persisted, 20);
    }
}
