//! The applied state as readers and the apply path see it: storage, then the write-back
//! layer not yet flushed ([`Unflushed`]), then the writes of the batch being applied
//! (`Overlay`); [`query_view`] is a plugin's namespace of it for queries.

use std::collections::{BTreeMap, HashSet};
use std::sync::{Arc, Mutex};

use keel_plugin::{BlobSource, KvView};

use super::registry::SYSTEM_NAMESPACE;
use crate::blobs::{Blobs, hex};
use keel_storage::{ApplyBatch, KvRange, KvWrite, LogId, Session, StateView, StorageError};

/// Applied state not yet written to storage (write-back): the merged effect of the batches
/// applied since the last flush. Storage plus this is the applied state.
///
/// Writing every applied batch to redb made each durable log commit also flush the KV
/// pages those applies dirtied — about one 4 KiB leaf per command with random keys, most of
/// the ~160 KiB a commit wrote (docs/benchmarks.md). Kept here and flushed in one
/// transaction every `apply_flush_ms`, a hot page is written once per flush instead. Losing it in
/// a crash loses nothing: storage's `last_applied` stays where the last flush left it and
/// the log, which is durable, is applied again from there.
///
/// A flush runs beside the driver (on the log writer), so the layer being written stays
/// readable below the one that takes new applies until storage holds it: readers see
/// this layer, then `flushing`, then storage.
#[derive(Clone, Debug, Default)]
pub struct Unflushed {
    writes: BTreeMap<(String, Vec<u8>), Option<Vec<u8>>>,
    /// `None`: expired (hides a stored session).
    sessions: BTreeMap<u64, Option<Session>>,
    last_applied: Option<LogId>,
    config: Option<keel_raft::ClusterConfig>,
    /// Bytes of keys and values absorbed (overwrites counted again): what the layer costs in
    /// memory, at most.
    bytes: usize,
    /// The layer a flush under way is writing to storage (never itself flushing).
    flushing: Option<Arc<Unflushed>>,
}

impl Unflushed {
    /// Adds an applied batch on top (later writes win).
    pub fn absorb(&mut self, batch: ApplyBatch) {
        for w in batch.writes {
            self.bytes += w.namespace.len() + w.key.len() + w.value.as_ref().map_or(0, Vec::len);
            self.writes.insert((w.namespace, w.key), w.value);
        }
        self.sessions.extend(batch.sessions);
        self.last_applied = Some(batch.last_applied);
        if batch.config.is_some() {
            self.config = batch.config;
        }
    }

    /// Nothing applied since the last flush started.
    pub fn is_empty(&self) -> bool {
        self.last_applied.is_none()
    }

    /// Keys and sessions held, the layer being flushed included.
    pub fn len(&self) -> usize {
        self.writes.len() + self.sessions.len() + self.flushing.as_ref().map_or(0, |f| f.len())
    }

    /// Bytes of keys and values held, the layer being flushed included (an upper bound).
    pub fn bytes(&self) -> usize {
        self.bytes + self.flushing.as_ref().map_or(0, |f| f.bytes())
    }

    /// Starts a flush: the layer in `slot` becomes the one being flushed, under a new empty
    /// one, and is returned for writing to storage. `None` if there is nothing to flush or a
    /// flush is already under way. Moves no data: the old layer is shared as it is.
    pub fn freeze(slot: &mut Arc<Unflushed>) -> Option<Arc<Unflushed>> {
        if slot.is_empty() || slot.flushing.is_some() {
            return None;
        }
        let frozen = Arc::clone(slot);
        *slot = Arc::new(Unflushed {
            flushing: Some(Arc::clone(&frozen)),
            ..Unflushed::default()
        });
        Some(frozen)
    }

    /// Whether a flush is under way.
    pub fn is_flushing_any(&self) -> bool {
        self.flushing.is_some()
    }

    /// Whether `layer` is the one this flush is writing.
    pub fn is_flushing(&self, layer: &Arc<Unflushed>) -> bool {
        self.flushing
            .as_ref()
            .is_some_and(|f| Arc::ptr_eq(f, layer))
    }

    /// Storage now holds the layer being flushed: readers no longer need it.
    pub fn flushed(&mut self) {
        self.flushing = None;
    }

    fn get(&self, k: &(String, Vec<u8>)) -> Option<&Option<Vec<u8>>> {
        self.writes
            .get(k)
            .or_else(|| self.flushing.as_ref()?.writes.get(k))
    }

    /// `Some(None)`: expired here, whatever storage holds.
    fn session(&self, client: u64) -> Option<&Option<Session>> {
        self.sessions
            .get(&client)
            .or_else(|| self.flushing.as_ref()?.sessions.get(&client))
    }

    /// Sessions this layer and the flushing one hold or expired (newer wins).
    fn sessions(&self) -> BTreeMap<u64, &Option<Session>> {
        let mut out: BTreeMap<u64, &Option<Session>> = self
            .flushing
            .iter()
            .flat_map(|f| f.sessions.iter().map(|(c, s)| (*c, s)))
            .collect();
        out.extend(self.sessions.iter().map(|(c, s)| (*c, s)));
        out
    }

    /// This layer's writes in a range over the flushing layer's (newer wins).
    fn pending<'a>(
        &'a self,
        ns: &'a str,
        start: &'a [u8],
        end: Option<&'a [u8]>,
    ) -> BTreeMap<&'a [u8], &'a Option<Vec<u8>>> {
        let mut out: BTreeMap<_, _> = self
            .flushing
            .iter()
            .flat_map(|f| Unflushed::in_range(&f.writes, ns, start, end))
            .collect();
        out.extend(Unflushed::in_range(&self.writes, ns, start, end));
        out
    }

    /// This layer (not the one being flushed) as one storage batch, to flush.
    pub fn to_batch(&self) -> Option<ApplyBatch> {
        Some(ApplyBatch {
            last_applied: self.last_applied?,
            config: self.config.clone(),
            writes: self
                .writes
                .iter()
                .map(|((namespace, key), value)| KvWrite {
                    namespace: namespace.clone(),
                    key: key.clone(),
                    value: value.clone(),
                })
                .collect(),
            sessions: self.sessions.iter().map(|(c, s)| (*c, s.clone())).collect(),
        })
    }

    fn in_range<'a>(
        map: &'a BTreeMap<(String, Vec<u8>), Option<Vec<u8>>>,
        ns: &'a str,
        start: &'a [u8],
        end: Option<&'a [u8]>,
    ) -> impl Iterator<Item = (&'a [u8], &'a Option<Vec<u8>>)> + 'a {
        map.range((ns.to_owned(), start.to_vec())..)
            .take_while(move |((n, k), _)| n == ns && end.is_none_or(|e| k.as_slice() < e))
            .map(|((_, k), v)| (k.as_slice(), v))
    }
}

/// The state as of the entry being applied: the storage view, the applied state not yet
/// flushed, and the batch's writes so far, newest last.
pub(super) struct Overlay {
    pub(super) base: Box<dyn StateView + Send>,
    pub(super) unflushed: Arc<Unflushed>,
    pub(super) writes: BTreeMap<(String, Vec<u8>), Option<Vec<u8>>>,
    pub(super) sessions: BTreeMap<u64, Option<Session>>,
}

impl Overlay {
    pub(super) fn get(&self, ns: &str, key: &[u8]) -> Result<Option<Vec<u8>>, StorageError> {
        let k = (ns.to_owned(), key.to_vec());
        if let Some(v) = self.writes.get(&k).or_else(|| self.unflushed.get(&k)) {
            return Ok(v.clone());
        }
        self.base.get(ns, key)
    }

    pub(super) fn session(&self, client: u64) -> Result<Option<Session>, StorageError> {
        match self
            .sessions
            .get(&client)
            .or_else(|| self.unflushed.session(client))
        {
            Some(s) => Ok(s.clone()),
            None => self.base.session(client),
        }
    }

    /// Ids of the sessions last used before `before_ms`, over every layer.
    pub(super) fn sessions_unused_since(&self, before_ms: u64) -> Result<Vec<u64>, StorageError> {
        let mut upper = self.unflushed.sessions();
        upper.extend(self.sessions.iter().map(|(c, s)| (*c, s)));
        let old = |s: &Session| s.last_ms < before_ms;
        let mut out: Vec<u64> = upper
            .iter()
            .filter_map(|(c, s)| s.as_ref().filter(|s| old(s)).map(|_| *c))
            .collect();
        let mut after = None;
        loop {
            let page = self.base.scan_sessions(after, 1_000)?;
            let Some(last) = page.last() else { break };
            after = Some(last.0);
            // Stored sessions a newer layer rewrote or expired were judged above.
            out.extend(
                page.iter()
                    .filter(|(c, s)| !upper.contains_key(c) && old(s))
                    .map(|(c, _)| *c),
            );
        }
        out.sort_unstable();
        Ok(out)
    }

    pub(super) fn range(
        &self,
        ns: &str,
        start: &[u8],
        end: Option<&[u8]>,
        limit: usize,
    ) -> Result<keel_storage::KvPairs, StorageError> {
        let mut pending = self.unflushed.pending(ns, start, end);
        pending.extend(Unflushed::in_range(&self.writes, ns, start, end));
        let pending: Vec<_> = pending.into_iter().collect();
        let stored = self.base.range(
            ns,
            KvRange {
                prefix: b"",
                start: Some(start),
                end,
                limit: keel_plugin::stored_needed(limit, &pending),
            },
        )?;
        Ok(keel_plugin::merge_writes(stored, pending, limit))
    }
}

/// One plugin's namespace of an [`Overlay`], as the plugin runtime sees it, with the node's
/// blobs (`keel:plugin/blobs`) when the caller gives them.
pub(super) struct Namespace {
    pub(super) overlay: Arc<Mutex<Overlay>>,
    pub(super) name: String,
    pub(super) blobs: Option<Blobs>,
    /// Blobs whose bytes were checked against their hash during this view's life: each is
    /// read whole once before any part of it reaches the plugin, so a damaged file is
    /// quarantined (and fetched again) instead of read differently from the other nodes.
    pub(super) verified: Mutex<HashSet<[u8; 32]>>,
}

impl Namespace {
    pub(super) fn new(overlay: Arc<Mutex<Overlay>>, name: String, blobs: Option<Blobs>) -> Self {
        Namespace {
            overlay,
            name,
            blobs,
            verified: Mutex::new(HashSet::new()),
        }
    }
}

/// Where the count of `plugin`'s retains on a blob lives in the system namespace.
pub fn retain_key(plugin: &str, sha256: &[u8; 32]) -> Vec<u8> {
    format!("{RETAIN_PREFIX}{plugin}/{}", hex(sha256)).into_bytes()
}

/// The prefix of every retain count's key (`retain/<plugin>/<sha256>` → u64 big-endian).
pub const RETAIN_PREFIX: &str = "retain/";

/// Calls `f` with the rest of the key and the value of every entry of `view` whose key
/// starts with `prefix` (a prefix ending in `/`), in key order, a page of 1,000 at a time.
pub fn for_each_under(
    view: &Arc<dyn KvView>,
    prefix: &str,
    mut f: impl FnMut(&[u8], &[u8]),
) -> anyhow::Result<()> {
    let mut start = prefix.as_bytes().to_vec();
    let mut end = start.clone();
    // The first key past the prefix: its last byte, '/', plus one.
    if let Some(last) = end.last_mut() {
        *last += 1;
    }
    loop {
        let page = view
            .range(&start, Some(&end), 1_000)
            .map_err(|e| anyhow::anyhow!("reading the applied state: {e}"))?;
        let Some((last, _)) = page.last() else {
            return Ok(());
        };
        let mut next = last.clone();
        next.push(0);
        for (k, v) in &page {
            f(&k[prefix.len()..], v);
        }
        if page.len() < 1_000 {
            return Ok(());
        }
        start = next;
    }
}

/// Every blob some plugin retains, from the system namespace `system`.
pub fn retained_blobs(system: &Arc<dyn KvView>) -> anyhow::Result<Vec<[u8; 32]>> {
    let mut out = Vec::new();
    // Keys are `<plugin>/<sha256>` under the prefix.
    for_each_under(system, RETAIN_PREFIX, |rest, value| {
        let sha = rest
            .rsplit(|b| *b == b'/')
            .next()
            .and_then(|h| std::str::from_utf8(h).ok())
            .and_then(crate::blobs::parse_hex);
        if let Some(sha) = sha
            && decode_count(Some(value)) > 0
        {
            out.push(sha);
        }
    })?;
    Ok(out)
}

/// A retain count as stored (absent: 0).
pub fn decode_count(value: Option<&[u8]>) -> u64 {
    value
        .and_then(|v| <[u8; 8]>::try_from(v).ok())
        .map_or(0, u64::from_be_bytes)
}

impl KvView for Namespace {
    fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>, keel_plugin::StorageError> {
        let o = self.overlay.lock().unwrap_or_else(|e| e.into_inner());
        o.get(&self.name, key).map_err(plugin_storage_error)
    }

    fn range(
        &self,
        start: &[u8],
        end: Option<&[u8]>,
        limit: usize,
    ) -> Result<Vec<(Vec<u8>, Vec<u8>)>, keel_plugin::StorageError> {
        let o = self.overlay.lock().unwrap_or_else(|e| e.into_inner());
        o.range(&self.name, start, end, limit)
            .map_err(plugin_storage_error)
    }

    fn blobs(&self) -> Option<&dyn BlobSource> {
        self.blobs.as_ref().map(|_| self as &dyn BlobSource)
    }
}

impl BlobSource for Namespace {
    fn read(&self, sha256: &[u8; 32], offset: u64, len: usize) -> Option<Vec<u8>> {
        let blobs = self.blobs.as_ref()?;
        let mut verified = self.verified.lock().unwrap_or_else(|e| e.into_inner());
        if !verified.contains(sha256) {
            if !blobs.verify(sha256) {
                return None;
            }
            verified.insert(*sha256);
        }
        drop(verified);
        let total = blobs.len_of(sha256)?;
        if offset >= total {
            return Some(Vec::new());
        }
        blobs.read_range(sha256, offset, len)
    }

    fn len(&self, sha256: &[u8; 32]) -> Option<u64> {
        self.blobs.as_ref()?.len_of(sha256)
    }

    fn retained(&self, sha256: &[u8; 32]) -> Result<u64, keel_plugin::StorageError> {
        let o = self.overlay.lock().unwrap_or_else(|e| e.into_inner());
        let value = o
            .get(SYSTEM_NAMESPACE, &retain_key(&self.name, sha256))
            .map_err(plugin_storage_error)?;
        Ok(decode_count(value.as_deref()))
    }
}

pub(super) fn plugin_storage_error(e: StorageError) -> keel_plugin::StorageError {
    Box::new(e)
}

/// A plugin's namespace of the applied state, for queries: a storage view with what was
/// applied since it was last flushed on top (taken together: see `NodeHandle::applied_view`).
pub fn query_view(
    view: Box<dyn StateView + Send>,
    unflushed: Arc<Unflushed>,
    name: String,
) -> Arc<dyn KvView> {
    query_view_with_blobs(view, unflushed, name, None)
}

/// [`query_view`], with the node's blobs for the plugin's `keel:plugin/blobs` calls.
pub fn query_view_with_blobs(
    view: Box<dyn StateView + Send>,
    unflushed: Arc<Unflushed>,
    name: String,
    blobs: Option<Blobs>,
) -> Arc<dyn KvView> {
    let overlay = Arc::new(Mutex::new(Overlay {
        base: view,
        unflushed,
        writes: BTreeMap::new(),
        sessions: BTreeMap::new(),
    }));
    Arc::new(Namespace::new(overlay, name, blobs))
}
