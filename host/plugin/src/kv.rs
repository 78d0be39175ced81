//! The plugin's view of its KV namespace, and the per-call write buffer.
//!
//! The node hands each call a [`KvView`]: reads of the plugin's namespace as of the
//! previous entry. The plugin's writes never touch the view; they go to a
//! [`WriteBuffer`] that later reads of the same call see (read-your-writes), and that
//! `apply` returns as one batch for the node to commit together with `last_applied`.

use crate::error::StorageError;
use std::collections::BTreeMap;
use std::ops::Bound;
use std::sync::RwLock;

/// Longest key a plugin may write (bytes).
pub const MAX_KEY_BYTES: usize = 4 << 10;
/// Longest value a plugin may write (bytes).
pub const MAX_VALUE_BYTES: usize = 1 << 20;
/// Most key and value bytes one call may have buffered at once.
pub const MAX_BATCH_BYTES: usize = 64 << 20;
/// Most entries one `range` call returns, whatever limit the plugin asks for.
pub const MAX_RANGE_ITEMS: u32 = 10_000;

/// Read access to one plugin's KV namespace, as of the state before the call.
///
/// Keys are relative to the namespace; the implementation scopes them (a plugin can
/// neither see nor name another plugin's keys). Both methods must be deterministic
/// functions of the committed state: an `Err` means the node's storage failed, and the
/// call then fails with [`PluginError::Storage`](crate::PluginError::Storage), which
/// the node treats as fatal.
pub trait KvView: Send + Sync {
    /// The value under `key`.
    fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>, StorageError>;

    /// Up to `limit` entries with `start <= key < end` (unbounded above when `end` is
    /// `None`), in ascending bytewise key order.
    fn range(
        &self,
        start: &[u8],
        end: Option<&[u8]>,
        limit: usize,
    ) -> Result<Entries, StorageError>;

    /// The node's blobs for this plugin's calls (`keel:plugin/blobs`); `None` (the
    /// default): the plugin sees no attachments and every blob call is refused.
    fn blobs(&self) -> Option<&dyn crate::BlobSource> {
        None
    }
}

/// Key-value pairs in ascending key order, as `range` returns them.
pub type Entries = Vec<(Vec<u8>, Vec<u8>)>;

/// Writes one call made: `(key, Some(value))` sets, `(key, None)` deletes; ascending by
/// key, at most one entry per key.
pub type Writes = Vec<(Vec<u8>, Option<Vec<u8>>)>;

/// An in-memory [`KvView`] for tests, simulators and benchmarks.
#[derive(Debug, Default)]
pub struct MemoryKv {
    map: RwLock<BTreeMap<Vec<u8>, Vec<u8>>>,
}

impl MemoryKv {
    /// An empty namespace.
    pub fn new() -> Self {
        Self::default()
    }

    /// Applies a call's writes, as the node would on commit.
    pub fn commit(&self, writes: &Writes) {
        let mut map = self.map.write().unwrap_or_else(|e| e.into_inner());
        for (k, v) in writes {
            match v {
                Some(v) => map.insert(k.clone(), v.clone()),
                None => map.remove(k),
            };
        }
    }

    /// Every entry, ascending: compare replicas byte for byte.
    pub fn dump(&self) -> Vec<(Vec<u8>, Vec<u8>)> {
        let map = self.map.read().unwrap_or_else(|e| e.into_inner());
        map.iter().map(|(k, v)| (k.clone(), v.clone())).collect()
    }
}

impl KvView for MemoryKv {
    fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>, StorageError> {
        let map = self.map.read().unwrap_or_else(|e| e.into_inner());
        Ok(map.get(key).cloned())
    }

    fn range(
        &self,
        start: &[u8],
        end: Option<&[u8]>,
        limit: usize,
    ) -> Result<Entries, StorageError> {
        let map = self.map.read().unwrap_or_else(|e| e.into_inner());
        Ok(map
            .range::<[u8], _>((
                Bound::Included(start),
                end.map_or(Bound::Unbounded, Bound::Excluded),
            ))
            .take(limit)
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect())
    }
}

/// Which limit a refused write exceeded; mirrors the WIT `kv-error`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum TooLarge {
    Key,
    Value,
    Batch,
}

/// One call's buffered writes over a [`KvView`].
#[derive(Debug, Default)]
pub(crate) struct WriteBuffer {
    writes: BTreeMap<Vec<u8>, Option<Vec<u8>>>,
    bytes: usize,
}

fn entry_bytes(key: &[u8], value: &Option<Vec<u8>>) -> usize {
    key.len() + value.as_ref().map_or(0, Vec::len)
}

impl WriteBuffer {
    /// Buffers a set (`Some`) or delete (`None`), within the size limits.
    pub(crate) fn put(&mut self, key: Vec<u8>, value: Option<Vec<u8>>) -> Result<(), TooLarge> {
        if key.len() > MAX_KEY_BYTES {
            return Err(TooLarge::Key);
        }
        if value.as_ref().is_some_and(|v| v.len() > MAX_VALUE_BYTES) {
            return Err(TooLarge::Value);
        }
        let old = self.writes.get(&key).map_or(0, |v| entry_bytes(&key, v));
        let bytes = self.bytes - old + entry_bytes(&key, &value);
        if bytes > MAX_BATCH_BYTES {
            return Err(TooLarge::Batch);
        }
        self.bytes = bytes;
        self.writes.insert(key, value);
        Ok(())
    }

    /// `key` as this call sees it: its own write if any, else the view.
    pub(crate) fn get(
        &self,
        view: &dyn KvView,
        key: &[u8],
    ) -> Result<Option<Vec<u8>>, StorageError> {
        match self.writes.get(key) {
            Some(v) => Ok(v.clone()),
            None => view.get(key),
        }
    }

    /// A range as this call sees it: the view merged with this call's writes.
    pub(crate) fn range(
        &self,
        view: &dyn KvView,
        start: &[u8],
        end: Option<&[u8]>,
        limit: usize,
    ) -> Result<Entries, StorageError> {
        let bounds = (
            Bound::Included(start),
            end.map_or(Bound::Unbounded, Bound::Excluded),
        );
        let own: Vec<_> = self
            .writes
            .range::<[u8], _>(bounds)
            .map(|(k, v)| (k.as_slice(), v))
            .collect();
        let stored = view.range(start, end, stored_needed(limit, &own))?;
        Ok(merge_writes(stored, own, limit))
    }

    /// Adds writes already accepted (by an earlier command of the same batch).
    pub(crate) fn absorb(&mut self, writes: &Writes) {
        for (key, value) in writes {
            let old = self.writes.get(key).map_or(0, |v| entry_bytes(key, v));
            self.bytes = self.bytes - old + entry_bytes(key, value);
            self.writes.insert(key.clone(), value.clone());
        }
    }

    /// The buffered writes, ascending by key.
    pub(crate) fn into_writes(self) -> Writes {
        self.writes.into_iter().collect()
    }
}

/// How many stored pairs a range must read so that, after `own` writes are merged over them,
/// `limit` pairs remain: each delete can hide at most one stored pair.
pub fn stored_needed(limit: usize, own: &[(&[u8], &Option<Vec<u8>>)]) -> usize {
    limit.saturating_add(own.iter().filter(|(_, v)| v.is_none()).count())
}

/// Merges writes (`own`, ascending by key; `None` deletes) over `stored` pairs (ascending by
/// key, read with [`stored_needed`]): the first `limit` pairs of the result.
pub fn merge_writes<'a>(
    stored: Entries,
    own: impl IntoIterator<Item = (&'a [u8], &'a Option<Vec<u8>>)>,
    limit: usize,
) -> Entries {
    let own = own.into_iter();
    let mut merged = Vec::with_capacity(limit.min(stored.len() + own.size_hint().0));
    let mut stored = stored.into_iter().peekable();
    let mut own = own.peekable();
    while merged.len() < limit {
        let take_own = match (stored.peek(), own.peek()) {
            (None, None) => break,
            (Some(_), None) => false,
            (None, Some(_)) => true,
            (Some((sk, _)), Some((ok, _))) => {
                if sk.as_slice() == *ok {
                    stored.next(); // shadowed by the write
                    true
                } else {
                    *ok < sk.as_slice()
                }
            }
        };
        if take_own {
            if let Some((k, Some(v))) = own.next() {
                merged.push((k.to_vec(), v.clone()));
            }
        } else if let Some(kv) = stored.next() {
            merged.push(kv);
        }
    }
    merged
}

/// A buffer seen over a view, itself a view: the writes of earlier commands of a batch
/// over the stored state.
pub(crate) struct Layered<'a> {
    pub(crate) upper: &'a WriteBuffer,
    pub(crate) lower: &'a dyn KvView,
}

impl KvView for Layered<'_> {
    fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>, StorageError> {
        self.upper.get(self.lower, key)
    }

    fn range(
        &self,
        start: &[u8],
        end: Option<&[u8]>,
        limit: usize,
    ) -> Result<Entries, StorageError> {
        self.upper.range(self.lower, start, end, limit)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn kv(pairs: &[(&str, &str)]) -> MemoryKv {
        let m = MemoryKv::new();
        let writes: Writes = pairs
            .iter()
            .map(|(k, v)| (k.as_bytes().to_vec(), Some(v.as_bytes().to_vec())))
            .collect();
        m.commit(&writes);
        m
    }

    fn keys(items: &[(Vec<u8>, Vec<u8>)]) -> Vec<String> {
        items
            .iter()
            .map(|(k, _)| String::from_utf8_lossy(k).into_owned())
            .collect()
    }

    #[test]
    fn reads_see_the_calls_own_writes_and_deletes() -> Result<(), StorageError> {
        let view = kv(&[("a", "1"), ("b", "2")]);
        let mut buf = WriteBuffer::default();
        assert_eq!(buf.put(b"a".to_vec(), Some(b"9".to_vec())), Ok(()));
        assert_eq!(buf.put(b"b".to_vec(), None), Ok(()));
        assert_eq!(buf.get(&view, b"a")?, Some(b"9".to_vec()));
        assert_eq!(buf.get(&view, b"b")?, None);
        assert_eq!(
            view.get(b"a")?,
            Some(b"1".to_vec()),
            "the view itself is untouched"
        );
        Ok(())
    }

    #[test]
    fn range_merges_writes_and_still_fills_the_limit_past_deletes() -> Result<(), StorageError> {
        let view = kv(&[("a", "1"), ("b", "2"), ("c", "3"), ("d", "4"), ("e", "5")]);
        let mut buf = WriteBuffer::default();
        assert_eq!(buf.put(b"a".to_vec(), None), Ok(()));
        assert_eq!(buf.put(b"b".to_vec(), None), Ok(()));
        assert_eq!(buf.put(b"bb".to_vec(), Some(b"new".to_vec())), Ok(()));
        assert_eq!(buf.put(b"d".to_vec(), Some(b"44".to_vec())), Ok(()));
        let got = buf.range(&view, b"", None, 3)?;
        assert_eq!(keys(&got), ["bb", "c", "d"]);
        assert_eq!(got[2].1, b"44".to_vec());
        let bounded = buf.range(&view, b"c", Some(b"e"), 10)?;
        assert_eq!(keys(&bounded), ["c", "d"]);
        Ok(())
    }

    #[test]
    fn oversized_writes_are_refused_and_the_batch_is_bounded() {
        let mut buf = WriteBuffer::default();
        assert_eq!(
            buf.put(vec![0; MAX_KEY_BYTES + 1], None),
            Err(TooLarge::Key)
        );
        assert_eq!(
            buf.put(b"k".to_vec(), Some(vec![0; MAX_VALUE_BYTES + 1])),
            Err(TooLarge::Value)
        );
        let mut refused = None;
        for i in 0..=(MAX_BATCH_BYTES / MAX_VALUE_BYTES) {
            if let Err(e) = buf.put(i.to_be_bytes().to_vec(), Some(vec![0; MAX_VALUE_BYTES])) {
                refused = Some(e);
                break;
            }
        }
        assert_eq!(refused, Some(TooLarge::Batch));
        // Overwriting a key replaces its bytes instead of adding to them.
        let mut buf = WriteBuffer::default();
        for _ in 0..1000 {
            assert_eq!(
                buf.put(b"k".to_vec(), Some(vec![0; MAX_VALUE_BYTES])),
                Ok(())
            );
        }
    }
}
