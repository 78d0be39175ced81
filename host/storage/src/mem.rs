//! The memory store, for the simulator: same contract and same refusals as [`crate::RedbStorage`]
//! (both run the conformance suite), plus the failure modes the simulator needs: a crash that
//! drops non-durable applies, and injected write failures.

use std::collections::BTreeMap;
use std::ops::Bound;
use std::sync::{Arc, Mutex, MutexGuard};

use keel_raft::{ClusterConfig, Entry, HardState, Index, SnapshotMeta, Term};

use crate::plan::{self, PersistPlan};
use crate::snapshot::ImageRecord;
use crate::{
    AppliedState, ApplyBatch, Identity, KvPairs, KvRange, KvRecord, LogBounds, LogId, LogWrite,
    RecoveredState, Session, StateView, Storage, StorageError, StorageOptions,
};

/// The applied state machine; shared with views by `Arc`, copied on write only while a view (or
/// the pre-crash image) still holds the old one.
#[derive(Clone, Debug, Default)]
struct MemState {
    kv: BTreeMap<String, BTreeMap<Vec<u8>, Vec<u8>>>,
    sessions: BTreeMap<u64, Session>,
    applied: AppliedState,
}

#[derive(Debug, Default)]
struct Inner {
    identity: Option<Identity>,
    hard_state: HardState,
    snapshot: SnapshotMeta,
    log: BTreeMap<Index, Entry>,
    state: Arc<MemState>,
    /// The state as of the last durable write, while later applies are not yet durable
    /// (mirrors redb's `Durability::None`).
    durable_state: Option<Arc<MemState>>,
    fail_writes: bool,
}

/// An in-memory [`Storage`] for the simulator and tests.
#[derive(Debug, Default)]
pub struct MemStorage {
    options: StorageOptions,
    inner: Mutex<Inner>,
}

impl MemStorage {
    /// An empty store with default options.
    pub fn new() -> Self {
        Self::with_options(StorageOptions::default())
    }

    /// An empty store.
    pub fn with_options(options: StorageOptions) -> Self {
        MemStorage {
            options,
            inner: Mutex::new(Inner::default()),
        }
    }

    /// Simulates a crash: applies made since the last durable write are lost, exactly as with
    /// [`crate::RedbStorage`] when `durable_applies` is off. Everything else survives.
    pub fn crash(&self) {
        let mut inner = self.lock();
        if let Some(durable) = inner.durable_state.take() {
            inner.state = durable;
        }
    }

    /// Makes every later write fail with [`StorageError::Injected`] (a full or failing disk), or
    /// stops doing so.
    pub fn fail_writes(&self, fail: bool) {
        self.lock().fail_writes = fail;
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        // A panic while holding the lock can only come from a bug in this file; the data it
        // guards is still a consistent value (every write is assembled before it is stored).
        self.inner
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn writable(&self) -> Result<MutexGuard<'_, Inner>, StorageError> {
        let inner = self.lock();
        if inner.fail_writes {
            return Err(StorageError::Injected);
        }
        Ok(inner)
    }
}

impl Inner {
    fn bounds(&self) -> LogBounds {
        let snapshot = LogId {
            index: self.snapshot.index,
            term: self.snapshot.term,
        };
        let last = self
            .log
            .values()
            .next_back()
            .map(LogId::of)
            .unwrap_or(snapshot);
        LogBounds { snapshot, last }
    }

    fn term(&self, index: Index) -> Option<Term> {
        if index == self.snapshot.index {
            return Some(self.snapshot.term);
        }
        self.log.get(&index).map(|e| e.term)
    }

    /// A durable write: whatever was applied before it is durable too.
    fn made_durable(&mut self) {
        self.durable_state = None;
    }
}

impl Storage for MemStorage {
    type View = MemView;

    fn recover(&self) -> Result<RecoveredState, StorageError> {
        let inner = self.lock();
        Ok(RecoveredState {
            identity: inner.identity,
            hard_state: inner.hard_state,
            log: inner.bounds(),
            snapshot: inner.snapshot.clone(),
            applied: inner.state.applied.clone(),
        })
    }

    fn set_identity(&self, identity: Identity) -> Result<(), StorageError> {
        let mut inner = self.writable()?;
        match inner.identity {
            Some(stored) if stored != identity => Err(StorageError::IdentityMismatch {
                stored,
                given: identity,
            }),
            _ => {
                inner.identity = Some(identity);
                inner.made_durable();
                Ok(())
            }
        }
    }

    fn bootstrap(&self, config: &ClusterConfig) -> Result<(), StorageError> {
        let mut inner = self.writable()?;
        plan::check_bootstrap(&inner.state.applied, config)?;
        if inner.state.applied.last_applied.index == 0 {
            Arc::make_mut(&mut inner.state).applied.config = config.clone();
        }
        inner.made_durable();
        Ok(())
    }

    fn hard_state(&self) -> Result<HardState, StorageError> {
        Ok(self.lock().hard_state)
    }

    fn log_bounds(&self) -> Result<LogBounds, StorageError> {
        Ok(self.lock().bounds())
    }

    fn term(&self, index: Index) -> Result<Option<Term>, StorageError> {
        Ok(self.lock().term(index))
    }

    fn entries(
        &self,
        lo: Index,
        hi: Index,
        max_bytes: Option<u64>,
    ) -> Result<Vec<Entry>, StorageError> {
        let inner = self.lock();
        let mut out = Vec::new();
        let mut bytes = 0u64;
        for entry in inner.log.range(lo..hi.max(lo)).map(|(_, e)| e) {
            let size = crate::codec::encode_entry(entry, usize::MAX)?.len() as u64;
            if let Some(max) = max_bytes
                && !out.is_empty()
                && bytes + size > max
            {
                break;
            }
            bytes += size;
            out.push(entry.clone());
        }
        Ok(out)
    }

    fn persist(&self, write: LogWrite<'_>) -> Result<LogId, StorageError> {
        if write.is_empty() {
            return Ok(self.lock().bounds().last);
        }
        let encoded = plan::encode_entries(write.entries, self.options.max_entry_bytes)?;
        let mut inner = self.writable()?;
        let plan = plan::plan_persist(
            &write,
            encoded,
            inner.hard_state,
            inner.bounds(),
            inner.state.applied.last_applied,
            |i| Ok(inner.term(i)),
        )?;
        let PersistPlan {
            hard_state,
            snapshot,
            keep_suffix,
            truncate_from,
            entries: _,
            last,
        } = plan;
        // The whole image is read and verified before anything changes: a defect in it fails
        // the write, which then changes nothing (as redb's dropped transaction does).
        let snapshot = match snapshot {
            Some(image) => {
                let mut decoded = crate::snapshot::Image::default();
                image.read(|rec| {
                    match rec {
                        ImageRecord::Kv(kv) => decoded.kv.push(kv),
                        ImageRecord::Session(id, s) => decoded.sessions.push((id, s)),
                    }
                    Ok(())
                })?;
                Some((image.meta.clone(), decoded))
            }
            None => None,
        };
        if let Some(hs) = hard_state {
            inner.hard_state = hs;
        }
        if let Some((meta, image)) = snapshot {
            inner.log = if keep_suffix {
                inner.log.split_off(&(meta.index + 1))
            } else {
                BTreeMap::new()
            };
            let mut state = MemState::default();
            for r in image.kv {
                state
                    .kv
                    .entry(r.namespace)
                    .or_default()
                    .insert(r.key, r.value);
            }
            state.sessions = image.sessions.into_iter().collect();
            state.applied = AppliedState {
                last_applied: LogId {
                    index: meta.index,
                    term: meta.term,
                },
                config: meta.config.clone(),
            };
            inner.state = Arc::new(state);
            inner.snapshot = meta;
        }
        if let Some(from) = truncate_from {
            inner.log.split_off(&from);
        }
        for entry in write.entries {
            inner.log.insert(entry.index, entry.clone());
        }
        inner.made_durable();
        Ok(last)
    }

    fn apply(&self, batch: &ApplyBatch) -> Result<(), StorageError> {
        let mut inner = self.writable()?;
        plan::check_apply(batch, inner.state.applied.last_applied, |i| {
            Ok(inner.term(i))
        })?;
        if inner.durable_state.is_none() && !self.options.durable_applies {
            inner.durable_state = Some(Arc::clone(&inner.state));
        }
        let state = Arc::make_mut(&mut inner.state);
        for w in &batch.writes {
            match &w.value {
                Some(v) => {
                    state
                        .kv
                        .entry(w.namespace.clone())
                        .or_default()
                        .insert(w.key.clone(), v.clone());
                }
                None => {
                    if let Some(ns) = state.kv.get_mut(&w.namespace) {
                        ns.remove(&w.key);
                        if ns.is_empty() {
                            state.kv.remove(&w.namespace);
                        }
                    }
                }
            }
        }
        for (client, session) in &batch.sessions {
            match session {
                Some(s) => state.sessions.insert(*client, s.clone()),
                None => state.sessions.remove(client),
            };
        }
        state.applied.last_applied = batch.last_applied;
        if let Some(config) = &batch.config {
            state.applied.config = config.clone();
        }
        Ok(())
    }

    fn purge(&self, meta: &SnapshotMeta) -> Result<(), StorageError> {
        let mut inner = self.writable()?;
        if !plan::check_purge(
            meta,
            inner.bounds(),
            inner.state.applied.last_applied,
            |i| Ok(inner.term(i)),
        )? {
            return Ok(());
        }
        inner.log = inner.log.split_off(&(meta.index + 1));
        inner.snapshot = meta.clone();
        inner.made_durable();
        Ok(())
    }

    fn sync(&self) -> Result<(), StorageError> {
        self.writable()?.made_durable();
        Ok(())
    }

    fn view(&self) -> Result<MemView, StorageError> {
        Ok(MemView {
            state: Arc::clone(&self.lock().state),
        })
    }
}

/// A read view of a [`MemStorage`]: the state as of one `last_applied`, unaffected by later
/// applies.
#[derive(Clone, Debug)]
pub struct MemView {
    state: Arc<MemState>,
}

impl StateView for MemView {
    fn applied(&self) -> &AppliedState {
        &self.state.applied
    }

    fn get(&self, namespace: &str, key: &[u8]) -> Result<Option<Vec<u8>>, StorageError> {
        Ok(self
            .state
            .kv
            .get(namespace)
            .and_then(|ns| ns.get(key))
            .cloned())
    }

    fn range(&self, namespace: &str, range: KvRange<'_>) -> Result<KvPairs, StorageError> {
        let Some(ns) = self.state.kv.get(namespace) else {
            return Ok(Vec::new());
        };
        Ok(ns
            .range::<[u8], _>((Bound::Included(range.first_key()), Bound::Unbounded))
            .take_while(|(k, _)| range.admits(k))
            .take(range.limit)
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect())
    }

    fn session(&self, client_id: u64) -> Result<Option<Session>, StorageError> {
        Ok(self.state.sessions.get(&client_id).cloned())
    }

    fn namespaces(&self) -> Result<Vec<(String, u64)>, StorageError> {
        Ok(self
            .state
            .kv
            .iter()
            .map(|(n, ns)| (n.clone(), ns.len() as u64))
            .collect())
    }

    fn scan_kv(
        &self,
        after: Option<(&str, &[u8])>,
        limit: usize,
    ) -> Result<Vec<KvRecord>, StorageError> {
        let mut out = Vec::new();
        let namespaces = match after {
            None => self.state.kv.range::<str, _>(..),
            Some((n, _)) => self
                .state
                .kv
                .range::<str, _>((Bound::Included(n), Bound::Unbounded)),
        };
        for (name, ns) in namespaces {
            let keys = match after {
                Some((n, k)) if n == name => {
                    ns.range::<[u8], _>((Bound::Excluded(k), Bound::Unbounded))
                }
                _ => ns.range::<[u8], _>(..),
            };
            for (key, value) in keys {
                if out.len() == limit {
                    return Ok(out);
                }
                out.push(KvRecord {
                    namespace: name.clone(),
                    key: key.clone(),
                    value: value.clone(),
                });
            }
        }
        Ok(out)
    }

    fn scan_sessions(
        &self,
        after: Option<u64>,
        limit: usize,
    ) -> Result<Vec<(u64, Session)>, StorageError> {
        let lower = after.map_or(Bound::Unbounded, Bound::Excluded);
        Ok(self
            .state
            .sessions
            .range((lower, Bound::Unbounded))
            .take(limit)
            .map(|(id, s)| (*id, s.clone()))
            .collect())
    }
}

#[cfg(test)]
mod tests {
    use keel_raft::{Entry, Record};

    use super::*;

    fn noops(lo: Index, hi: Index) -> Vec<Entry> {
        (lo..=hi)
            .map(|index| Entry {
                index,
                term: 1,
                timestamp_ms: 0,
                record: Record::Noop,
            })
            .collect()
    }

    fn apply_to(s: &MemStorage, index: Index) {
        s.apply(&ApplyBatch {
            last_applied: LogId { index, term: 1 },
            ..ApplyBatch::default()
        })
        .expect("apply");
    }

    #[test]
    fn a_crash_loses_exactly_the_applies_after_the_last_durable_write() {
        let s = MemStorage::new();
        s.persist(LogWrite {
            entries: &noops(1, 6),
            ..LogWrite::default()
        })
        .expect("persist");
        apply_to(&s, 2);
        s.persist(LogWrite {
            entries: &noops(7, 7),
            ..LogWrite::default()
        })
        .expect("persist");
        apply_to(&s, 4);
        apply_to(&s, 5);
        s.crash();
        let r = s.recover().expect("recover");
        assert_eq!(r.applied.last_applied.index, 2);
        assert_eq!(r.log.last.index, 7);
        // The lost applies replay from the log.
        apply_to(&s, 5);
        s.sync().expect("sync");
        s.crash();
        assert_eq!(s.recover().expect("recover").applied.last_applied.index, 5);
    }

    #[test]
    fn an_empty_write_is_no_durable_commit() {
        let s = MemStorage::new();
        s.persist(LogWrite {
            entries: &noops(1, 3),
            ..LogWrite::default()
        })
        .expect("persist");
        apply_to(&s, 2);
        s.persist(LogWrite::default()).expect("empty");
        s.crash();
        assert_eq!(s.recover().expect("recover").applied.last_applied.index, 0);
    }

    #[test]
    fn with_durable_applies_a_crash_loses_nothing() {
        let s = MemStorage::with_options(StorageOptions {
            durable_applies: true,
            ..StorageOptions::default()
        });
        s.persist(LogWrite {
            entries: &noops(1, 3),
            ..LogWrite::default()
        })
        .expect("persist");
        apply_to(&s, 3);
        s.crash();
        assert_eq!(s.recover().expect("recover").applied.last_applied.index, 3);
    }
}
