//! Design §6, garbage collection: the rule deciding which of a node's blobs may go, and the
//! bookkeeping it needs — per blob, the last log index that named it among the entries this
//! node has compacted away ([`NamedAt`]).

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::time::Duration;

use super::{hex, parse_hex};

/// What a node must keep, as its driver sees it when asked (`Input::BlobsNeeded`).
#[derive(Debug, Default, Clone)]
pub struct Keep {
    /// This node's snapshot index.
    pub snapshot: u64,
    /// Blobs named by an entry of its log (first index to last), by an active plugin or a
    /// version in a plugin's history, or retained by a plugin's state.
    pub needed: BTreeSet<[u8; 32]>,
    /// For blobs named only by entries this node compacted: the last index that named one.
    pub named_at: BTreeMap<[u8; 32], u64>,
}

/// Which of this node's blobs may go. `stored` are its blobs with their age (since stored
/// or last placed again); `watermark` the lowest snapshot index among all members (every
/// one of them answered).
///
/// A blob no entry of this node's log names is named, if at all, by entries at or below its
/// snapshot: at `named_at` if this node compacted them, or else somewhere up to its snapshot
/// index. Once every member's snapshot is at or past that index, no member applies those
/// entries again (one further behind gets a snapshot instead), so nobody needs the blob.
/// Comparing with the index that named it, not with this node's own snapshot, lets the
/// node whose snapshot is furthest ahead collect in a cluster gone quiet. A lagging member
/// whose log still names the blob holds the watermark below that index: nothing it needs
/// goes. Blobs younger than `grace` may belong to an upload whose entry is not in this log
/// yet.
pub fn collectable(
    stored: &[([u8; 32], Duration)],
    keep: &Keep,
    watermark: u64,
    grace: Duration,
) -> Vec<[u8; 32]> {
    stored
        .iter()
        .filter(|(h, age)| {
            let named = keep.named_at.get(h).copied().unwrap_or(keep.snapshot);
            *age >= grace && !keep.needed.contains(h) && named <= watermark
        })
        .map(|(h, _)| *h)
        .collect()
}

/// Per blob, the last log index that named it, noted as entries are compacted away, and
/// kept in a small file so it survives a restart. Losing it (no file, a torn write) is safe:
/// a blob it does not know counts as named at the node's snapshot index, the conservative
/// bound, so the file is written without a sync.
#[derive(Debug, Default)]
pub struct NamedAt {
    path: Option<PathBuf>,
    map: BTreeMap<[u8; 32], u64>,
}

impl NamedAt {
    /// The record kept at `path` (in memory only if `None`), if it covers every entry
    /// compacted up to `snapshot` (the node's snapshot index as storage holds it): a record
    /// written before the last compaction misses what that compaction dropped, and a blob
    /// named again there would look named earlier than it was, so it is not used.
    pub fn load(path: Option<PathBuf>, snapshot: u64) -> NamedAt {
        let map = path
            .as_ref()
            .and_then(|p| std::fs::read_to_string(p).ok())
            .and_then(|s| serde_json::from_str::<Saved>(&s).ok())
            .filter(|saved| saved.upto >= snapshot)
            .map(|saved| {
                saved
                    .named
                    .into_iter()
                    .filter_map(|(h, i)| Some((parse_hex(&h)?, i)))
                    .collect()
            })
            .unwrap_or_default();
        NamedAt { path, map }
    }

    /// Forgets everything (a snapshot was installed: what it covers was named somewhere up
    /// to its index, which is the bound used for unknown blobs).
    pub fn clear(&mut self) {
        self.map.clear();
    }

    /// Entry `index` named `hash`.
    pub fn note(&mut self, hash: [u8; 32], index: u64) {
        let at = self.map.entry(hash).or_insert(index);
        *at = (*at).max(index);
    }

    /// Forgets blobs `keep` says no (this node no longer holds them: nothing to collect).
    pub fn retain(&mut self, keep: impl Fn(&[u8; 32]) -> bool) {
        self.map.retain(|h, _| keep(h));
    }

    /// What is known.
    pub fn map(&self) -> &BTreeMap<[u8; 32], u64> {
        &self.map
    }

    /// Writes the record, which covers the entries compacted up to `upto` (a temporary
    /// file renamed into place; written before the compaction's purge, so a record that
    /// survives a crash is never older than the log it describes). A failure only costs
    /// precision.
    pub fn save(&self, upto: u64) {
        let Some(path) = &self.path else {
            return;
        };
        let saved = Saved {
            upto,
            named: self.map.iter().map(|(h, i)| (hex(h), *i)).collect(),
        };
        let tmp = path.with_extension("tmp");
        let written = serde_json::to_vec(&saved)
            .map_err(std::io::Error::other)
            .and_then(|bytes| {
                if let Some(dir) = path.parent() {
                    std::fs::create_dir_all(dir)?;
                }
                std::fs::write(&tmp, bytes)
            })
            .and_then(|()| std::fs::rename(&tmp, path));
        if let Err(e) = written {
            tracing::warn!(target: "keel::txn", error = %e, "cannot record where blobs were named");
        }
    }
}

#[derive(serde::Serialize, serde::Deserialize)]
struct Saved {
    /// The compaction point the record covers.
    upto: u64,
    named: BTreeMap<String, u64>,
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Design §6 GC: the lagging-follower case. Nodes 1 and 2 applied past the entry naming
    /// blob `a` and compacted it (snapshot 100); node 3's snapshot is at 40, its log still
    /// names `a`. Nodes 1 and 2 must keep `a` until node 3's snapshot passes theirs.
    #[test]
    fn garbage_collection_keeps_what_a_lagging_member_may_still_apply() {
        let (a, b, c) = ([1u8; 32], [2u8; 32], [3u8; 32]);
        let old = Duration::from_secs(3600);
        let stored = [(a, old), (b, old), (c, Duration::from_secs(1))];
        let grace = Duration::from_secs(600);
        // Node 1 does not know where `a` was named: its snapshot index bounds it.
        let keep = Keep {
            snapshot: 100,
            needed: BTreeSet::from([b]),
            named_at: BTreeMap::new(),
        };
        // The lowest member snapshot is 40: nothing goes.
        assert!(collectable(&stored, &keep, 40, grace).is_empty());
        // Once every member's snapshot is at 100 or past: `a` goes; `b` is named by the log,
        // `c` is younger than the grace period.
        assert_eq!(collectable(&stored, &keep, 100, grace), vec![a]);
        assert_eq!(collectable(&stored, &keep, 250, grace), vec![a]);
        // Known to be named last at 60: still kept while a member's snapshot is at 40.
        let keep = Keep {
            named_at: BTreeMap::from([(a, 60)]),
            ..keep
        };
        assert!(collectable(&stored, &keep, 40, grace).is_empty());
    }

    /// The liveness gap: in a cluster gone quiet, node 1's snapshot (200) is ahead of the
    /// others' (150 and 180); blob `a` was named last at 120, which every member's snapshot
    /// has passed. Compared with node 1's own snapshot, `a` would stay until the others
    /// snapshot again (maybe never); compared with where it was named, it goes now.
    #[test]
    fn the_node_furthest_ahead_collects_what_every_member_has_snapshotted_past() {
        let a = [1u8; 32];
        let stored = [(a, Duration::from_secs(3600))];
        let keep = Keep {
            snapshot: 200,
            needed: BTreeSet::new(),
            named_at: BTreeMap::from([(a, 120)]),
        };
        assert_eq!(
            collectable(&stored, &keep, 150, Duration::from_secs(600)),
            vec![a]
        );
    }

    #[test]
    fn where_blobs_were_named_survives_a_restart_unless_a_later_compaction_missed_it() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("named-at.json");
        let mut named = NamedAt::load(Some(path.clone()), 0);
        named.note([1; 32], 7);
        named.note([1; 32], 5);
        named.note([2; 32], 9);
        named.retain(|h| *h != [2; 32]);
        named.save(10);
        let again = NamedAt::load(Some(path.clone()), 10);
        assert_eq!(again.map(), &BTreeMap::from([([1; 32], 7)]));
        // Storage compacted to 20 after the record was written (its note was lost in a
        // crash): the record is not used.
        assert!(NamedAt::load(Some(path.clone()), 20).map().is_empty());
        std::fs::write(&path, b"{torn").expect("write");
        assert!(NamedAt::load(Some(path), 0).map().is_empty());
    }
}
