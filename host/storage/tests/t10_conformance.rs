//! The storage conformance suite (after openraft's `testing/log/suite.rs`): one function per
//! property, each run against both stores by the `suite!` list at the bottom.

mod common;

use common::{IntoSnapshot, Snapshot, batch, entries, entry};
use keel_raft::{ClusterConfig, ClusterId, HardState, SnapshotMeta};
use keel_storage::{
    ApplyBatch, Identity, KvRange, KvWrite, LogBounds, LogId, LogWrite, MemStorage, RedbStorage,
    Session, SnapshotChunks, StateView, Storage, StorageError, StorageOptions,
};

/// A store under test, and how to restart it.
trait Harness {
    type S: Storage;
    fn new() -> Self;
    fn store(&self) -> &Self::S;
    /// Stop and start again as after a crash: durable writes survive.
    fn restart(&mut self);
}

struct RedbH {
    dir: tempfile::TempDir,
    store: Option<RedbStorage>,
}

impl Harness for RedbH {
    type S = RedbStorage;
    fn new() -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = RedbStorage::open(dir.path(), options()).expect("open");
        RedbH {
            dir,
            store: Some(store),
        }
    }
    fn store(&self) -> &RedbStorage {
        self.store.as_ref().expect("open")
    }
    fn restart(&mut self) {
        drop(self.store.take());
        self.store = Some(RedbStorage::open(self.dir.path(), options()).expect("reopen"));
    }
}

/// The old default: every durable commit two-phase.
struct RedbTwoPhaseH(RedbH);

fn two_phase() -> StorageOptions {
    StorageOptions {
        two_phase_commit: true,
        ..options()
    }
}

impl Harness for RedbTwoPhaseH {
    type S = RedbStorage;
    fn new() -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = RedbStorage::open(dir.path(), two_phase()).expect("open");
        RedbTwoPhaseH(RedbH {
            dir,
            store: Some(store),
        })
    }
    fn store(&self) -> &RedbStorage {
        self.0.store()
    }
    fn restart(&mut self) {
        drop(self.0.store.take());
        self.0.store = Some(RedbStorage::open(self.0.dir.path(), two_phase()).expect("reopen"));
    }
}

struct MemH(MemStorage);

impl Harness for MemH {
    type S = MemStorage;
    fn new() -> Self {
        MemH(MemStorage::with_options(options()))
    }
    fn store(&self) -> &MemStorage {
        &self.0
    }
    fn restart(&mut self) {
        self.0.crash();
    }
}

fn options() -> StorageOptions {
    StorageOptions {
        max_entry_bytes: 1024,
        ..StorageOptions::default()
    }
}

fn append<S: Storage>(s: &S, entries: &[keel_raft::Entry]) -> LogId {
    s.persist(LogWrite {
        entries,
        ..LogWrite::default()
    })
    .expect("persist")
}

fn id(index: u64, term: u64) -> LogId {
    LogId { index, term }
}

fn all_kv<V: StateView>(v: &V) -> Vec<keel_storage::KvRecord> {
    v.scan_kv(None, usize::MAX).expect("scan kv")
}

fn all_sessions<V: StateView>(v: &V) -> Vec<(u64, Session)> {
    v.scan_sessions(None, usize::MAX).expect("scan sessions")
}

// ---- log -------------------------------------------------------------------------------------

fn an_empty_store_reports_nothing<H: Harness>() {
    let h = H::new();
    let r = h.store().recover().expect("recover");
    assert_eq!(r.identity, None);
    assert_eq!(r.hard_state, HardState::default());
    assert_eq!(r.log, LogBounds::default());
    assert_eq!(r.log.first_index(), 1);
    assert_eq!(r.applied.last_applied, LogId::default());
    assert_eq!(h.store().term(0).expect("term"), Some(0));
    assert_eq!(h.store().term(1).expect("term"), None);
    assert!(h.store().entries(1, 10, None).expect("entries").is_empty());
}

fn an_appended_batch_reads_back_with_its_bounds<H: Harness>() {
    let h = H::new();
    let s = h.store();
    assert_eq!(append(s, &entries(1, 10, 2)), id(10, 2));
    assert_eq!(s.entries(1, 11, None).expect("entries"), entries(1, 10, 2));
    assert_eq!(s.entries(4, 7, None).expect("entries"), entries(4, 6, 2));
    assert_eq!(
        s.log_bounds().expect("bounds"),
        LogBounds {
            snapshot: id(0, 0),
            last: id(10, 2)
        }
    );
    assert_eq!(s.term(10).expect("term"), Some(2));
    assert_eq!(s.term(11).expect("term"), None);
    assert_eq!(append(s, &entries(11, 12, 3)), id(12, 3));
    assert_eq!(s.log_bounds().expect("bounds").last, id(12, 3));
}

fn entries_stops_at_max_bytes_but_returns_at_least_one<H: Harness>() {
    let h = H::new();
    append(h.store(), &entries(1, 10, 1));
    assert_eq!(h.store().entries(1, 11, Some(1)).expect("entries").len(), 1);
    let two = h.store().entries(1, 3, None).expect("entries");
    let size_of_two = two
        .iter()
        .map(|e| postcard::to_stdvec(e).expect("enc").len() as u64 + 4)
        .sum();
    assert_eq!(
        h.store()
            .entries(1, 11, Some(size_of_two))
            .expect("entries"),
        two
    );
}

fn a_conflicting_suffix_is_truncated_before_appending<H: Harness>() {
    let h = H::new();
    let s = h.store();
    append(s, &entries(1, 5, 1));
    // A new leader of term 2 overwrites the uncommitted entries from 3 on (paper §5.3).
    assert_eq!(append(s, &entries(3, 4, 2)), id(4, 2));
    let mut expected = entries(1, 2, 1);
    expected.extend(entries(3, 4, 2));
    assert_eq!(s.entries(1, 100, None).expect("entries"), expected);
    assert_eq!(s.term(5).expect("term"), None);
}

fn a_gap_in_the_log_is_refused_and_nothing_is_written<H: Harness>() {
    let h = H::new();
    let s = h.store();
    append(s, &entries(1, 3, 1));
    let err = s
        .persist(LogWrite {
            hard_state: Some(HardState {
                term: 5,
                vote: None,
            }),
            entries: &entries(5, 6, 5),
            ..LogWrite::default()
        })
        .expect_err("gap");
    assert!(
        matches!(
            err,
            StorageError::LogGap {
                expected: 4,
                got: 5
            }
        ),
        "{err}"
    );
    let mut holes = entries(4, 4, 1);
    holes.push(entry(6, 1));
    let err = s
        .persist(LogWrite {
            entries: &holes,
            ..LogWrite::default()
        })
        .expect_err("hole in batch");
    assert!(
        matches!(
            err,
            StorageError::LogGap {
                expected: 5,
                got: 6
            }
        ),
        "{err}"
    );
    assert_eq!(s.hard_state().expect("hs"), HardState::default());
    assert_eq!(s.log_bounds().expect("bounds").last, id(3, 1));
}

fn an_oversized_entry_is_refused_before_anything_is_written<H: Harness>() {
    let h = H::new();
    let s = h.store();
    let mut batch = entries(1, 2, 1);
    let mut huge = entry(3, 1);
    huge.record = keel_raft::Record::Command(keel_raft::Command {
        plugin: "alpha".into(),
        client: None,
        payload: keel_raft::Payload::Inline(vec![0; 2000]),
    });
    batch.push(huge);
    let err = s
        .persist(LogWrite {
            hard_state: Some(HardState {
                term: 1,
                vote: Some(1),
            }),
            entries: &batch,
            ..LogWrite::default()
        })
        .expect_err("too large");
    assert!(
        matches!(
            err,
            StorageError::EntryTooLarge {
                index: 3,
                max: 1024,
                ..
            }
        ),
        "{err}"
    );
    assert_eq!(s.log_bounds().expect("bounds"), LogBounds::default());
    assert_eq!(s.hard_state().expect("hs"), HardState::default());
}

fn an_applied_entry_is_never_overwritten<H: Harness>() {
    let h = H::new();
    let s = h.store();
    append(s, &entries(1, 5, 1));
    s.apply(&batch(&entries(1, 3, 1))).expect("apply");
    let err = s
        .persist(LogWrite {
            entries: &entries(3, 4, 2),
            ..LogWrite::default()
        })
        .expect_err("applied");
    assert!(
        matches!(
            err,
            StorageError::OverwriteApplied {
                index: 3,
                last_applied: 3
            }
        ),
        "{err}"
    );
    append(s, &entries(4, 4, 2));
    assert_eq!(s.log_bounds().expect("bounds").last, id(4, 2));
}

// ---- hard state and identity ------------------------------------------------------------------

fn hard_state_round_trips_and_never_goes_back<H: Harness>() {
    let h = H::new();
    let s = h.store();
    let hs = |term, vote| HardState { term, vote };
    let write = |st| {
        s.persist(LogWrite {
            hard_state: Some(st),
            ..LogWrite::default()
        })
    };
    write(hs(3, None)).expect("term 3");
    write(hs(3, Some(2))).expect("vote in term 3");
    assert_eq!(s.hard_state().expect("hs"), hs(3, Some(2)));
    assert!(matches!(
        write(hs(3, Some(1))),
        Err(StorageError::HardStateRegressed { .. })
    ));
    assert!(matches!(
        write(hs(3, None)),
        Err(StorageError::HardStateRegressed { .. })
    ));
    assert!(matches!(
        write(hs(2, Some(2))),
        Err(StorageError::HardStateRegressed { .. })
    ));
    write(hs(4, None)).expect("term 4");
    assert_eq!(s.recover().expect("recover").hard_state, hs(4, None));
}

fn identity_is_set_once<H: Harness>() {
    let h = H::new();
    let s = h.store();
    let me = Identity {
        cluster: ClusterId(0x1234),
        node: 7,
    };
    s.set_identity(me).expect("set");
    s.set_identity(me).expect("same again");
    let other = Identity {
        cluster: ClusterId(0x1234),
        node: 8,
    };
    let err = s.set_identity(other).expect_err("different");
    assert!(
        matches!(err, StorageError::IdentityMismatch { .. }),
        "{err}"
    );
    assert_eq!(s.recover().expect("recover").identity, Some(me));
}

// ---- apply ------------------------------------------------------------------------------------

fn an_apply_batch_lands_whole<H: Harness>() {
    let h = H::new();
    let s = h.store();
    append(s, &entries(1, 6, 1));
    let mut b = batch(&entries(1, 6, 1));
    b.config = Some(ClusterConfig::with_voters([1, 2, 3]));
    s.apply(&b).expect("apply");
    let v = s.view().expect("view");
    assert_eq!(v.applied().last_applied, id(6, 1));
    assert_eq!(v.applied().config, ClusterConfig::with_voters([1, 2, 3]));
    assert_eq!(v.get("alpha", b"k06").expect("get"), Some(b"6@1".to_vec()));
    assert_eq!(v.get("beta", b"k05").expect("get"), Some(b"5@1".to_vec()));
    // Entry 3 deleted key (3*7)%17 = 4 of beta: never written, still absent; entry 6 deleted
    // (6*7)%17 = 8 of alpha.
    assert_eq!(v.get("alpha", b"k08").expect("get"), None);
    assert_eq!(
        v.session(1).expect("session"),
        Some(Session {
            serial: 6,
            result: 6u64.to_le_bytes().to_vec(),
            last_ms: 6,
        })
    );
    assert_eq!(s.recover().expect("recover").applied.last_applied, id(6, 1));
    // A later batch without a config keeps it.
    append(s, &entries(7, 7, 1));
    s.apply(&batch(&entries(7, 7, 1))).expect("apply");
    assert_eq!(
        s.view().expect("view").applied().config,
        ClusterConfig::with_voters([1, 2, 3])
    );
}

fn an_apply_batch_that_does_not_follow_is_refused_whole<H: Harness>() {
    let h = H::new();
    let s = h.store();
    append(s, &entries(1, 4, 2));
    s.apply(&batch(&entries(1, 2, 2))).expect("apply");
    let before = all_kv(&s.view().expect("view"));
    for (bad, why) in [
        (batch(&entries(5, 5, 2)), "beyond the log"),
        (batch(&entries(2, 2, 2)), "not after last_applied"),
        (batch(&entries(3, 3, 9)), "wrong term"),
    ] {
        let err = s.apply(&bad).expect_err(why);
        assert!(
            matches!(err, StorageError::ApplyRefused { .. }),
            "{why}: {err}"
        );
    }
    let v = s.view().expect("view");
    assert_eq!(v.applied().last_applied, id(2, 2));
    assert_eq!(all_kv(&v), before);
}

fn a_view_is_a_point_in_time<H: Harness>() {
    let h = H::new();
    let s = h.store();
    append(s, &entries(1, 4, 1));
    s.apply(&batch(&entries(1, 2, 1))).expect("apply");
    let old = s.view().expect("view");
    let old_kv = all_kv(&old);
    s.apply(&batch(&entries(3, 4, 1))).expect("apply");
    assert_eq!(old.applied().last_applied, id(2, 1));
    assert_eq!(all_kv(&old), old_kv);
    assert_eq!(s.view().expect("view").applied().last_applied, id(4, 1));
    assert_ne!(all_kv(&s.view().expect("view")), old_kv);
}

fn range_scans_stay_in_their_namespace_and_order<H: Harness>() {
    let h = H::new();
    let s = h.store();
    append(s, &entries(1, 1, 1));
    let put = |ns: &str, k: &str| KvWrite {
        namespace: ns.into(),
        key: k.into(),
        value: Some(k.as_bytes().to_vec()),
    };
    s.apply(&ApplyBatch {
        last_applied: id(1, 1),
        writes: vec![
            put("a", "user/1"),
            put("a", "user/3"),
            put("a", "user/2"),
            put("a", "usex"),
            put("a", "zzz"),
            put("ab", "user/0"),
            put("", "user/9"),
            KvWrite {
                namespace: "a".into(),
                key: b"user/3".to_vec(),
                value: None,
            },
        ],
        ..ApplyBatch::default()
    })
    .expect("apply");
    let v = s.view().expect("view");
    let keys = |r: Vec<(Vec<u8>, Vec<u8>)>| {
        r.into_iter()
            .map(|(k, _)| String::from_utf8(k).expect("utf8"))
            .collect::<Vec<_>>()
    };
    let all = KvRange {
        prefix: b"",
        start: None,
        end: None,
        limit: 100,
    };
    assert_eq!(
        keys(v.range("a", all).expect("range")),
        ["user/1", "user/2", "usex", "zzz"]
    );
    let users = KvRange {
        prefix: b"user/",
        start: None,
        end: None,
        limit: 100,
    };
    assert_eq!(
        keys(v.range("a", users).expect("range")),
        ["user/1", "user/2"]
    );
    let from2 = KvRange {
        prefix: b"user/",
        start: Some(b"user/2"),
        end: None,
        limit: 100,
    };
    assert_eq!(keys(v.range("a", from2).expect("range")), ["user/2"]);
    let one = KvRange {
        prefix: b"",
        start: Some(b"user/15"),
        end: None,
        limit: 1,
    };
    assert_eq!(keys(v.range("a", one).expect("range")), ["user/2"]);
    // The plugin runtime's form: start..end, no prefix.
    let window = KvRange {
        prefix: b"",
        start: Some(b"user/1"),
        end: Some(b"usex"),
        limit: 100,
    };
    assert_eq!(
        keys(v.range("a", window).expect("range")),
        ["user/1", "user/2"]
    );
    let empty = KvRange {
        prefix: b"",
        start: Some(b"user/2"),
        end: Some(b"user/2"),
        limit: 100,
    };
    assert!(v.range("a", empty).expect("range").is_empty());
    assert_eq!(keys(v.range("ab", all).expect("range")), ["user/0"]);
    assert!(v.range("b", all).expect("range").is_empty());
    assert_eq!(
        v.namespaces().expect("ns"),
        [(String::new(), 1), ("a".into(), 4), ("ab".into(), 1)]
    );
}

fn sessions_keep_the_last_result_per_client<H: Harness>() {
    let h = H::new();
    let s = h.store();
    append(s, &entries(1, 12, 1));
    s.apply(&batch(&entries(1, 12, 1))).expect("apply");
    let v = s.view().expect("view");
    let sessions = all_sessions(&v);
    // Clients are index % 5; the last entry of each client wins.
    let expected: Vec<(u64, Session)> = [(0, 10), (1, 11), (2, 12), (3, 8), (4, 9)]
        .into_iter()
        .map(|(c, i): (u64, u64)| {
            (
                c,
                Session {
                    serial: i,
                    result: i.to_le_bytes().to_vec(),
                    last_ms: i,
                },
            )
        })
        .collect();
    assert_eq!(sessions, expected);
    assert_eq!(v.scan_sessions(Some(2), 1).expect("scan"), expected[3..4]);
    assert_eq!(v.session(9).expect("session"), None);
}

// ---- purge and snapshots ----------------------------------------------------------------------

fn a_purge_drops_the_prefix_and_remembers_its_point<H: Harness>() {
    let h = H::new();
    let s = h.store();
    append(s, &entries(1, 8, 1));
    s.apply(&batch(&entries(1, 6, 1))).expect("apply");
    let meta = |index, term| SnapshotMeta {
        index,
        term,
        config: ClusterConfig::default(),
    };
    let err = s.purge(&meta(7, 1)).expect_err("beyond applied");
    assert!(
        matches!(err, StorageError::PurgeRefused { index: 7, .. }),
        "{err}"
    );
    let err = s.purge(&meta(5, 3)).expect_err("wrong term");
    assert!(
        matches!(err, StorageError::PurgeRefused { index: 5, .. }),
        "{err}"
    );
    s.purge(&meta(5, 1)).expect("purge");
    assert_eq!(
        s.log_bounds().expect("bounds"),
        LogBounds {
            snapshot: id(5, 1),
            last: id(8, 1)
        }
    );
    assert_eq!(s.term(5).expect("term"), Some(1));
    assert_eq!(s.term(4).expect("term"), None);
    assert_eq!(s.entries(1, 100, None).expect("entries"), entries(6, 8, 1));
    s.purge(&meta(3, 1))
        .expect("behind the purge point: nothing to do");
    assert_eq!(s.recover().expect("recover").snapshot, meta(5, 1));
    // The log continues after a purge; entries before the purge point cannot be rewritten.
    append(s, &entries(9, 9, 1));
    let err = s
        .persist(LogWrite {
            entries: &entries(4, 4, 2),
            ..LogWrite::default()
        })
        .expect_err("purged");
    assert!(
        matches!(err, StorageError::OverwriteApplied { .. }),
        "{err}"
    );
}

/// Builds a store at `last_applied` = 10 with some state, for snapshot tests.
fn populated<H: Harness>() -> H {
    let h = H::new();
    append(h.store(), &entries(1, 12, 1));
    let mut b = batch(&entries(1, 10, 1));
    b.config = Some(ClusterConfig::with_voters([1, 2]));
    h.store().apply(&b).expect("apply");
    h
}

fn a_snapshot_streams_a_point_in_time_while_applies_go_on<H: Harness>() {
    let h = populated::<H>();
    let s = h.store();
    let view = s.view().expect("view");
    let (kv, sessions) = (all_kv(&view), all_sessions(&view));
    let mut chunks = SnapshotChunks::new(view, 16);
    assert_eq!(chunks.meta().index, 10);
    let mut data = Vec::new();
    let mut count = 0;
    // Pull one chunk, then apply, and so on: the image must not see the later applies.
    for chunk in chunks.by_ref() {
        data.extend(chunk.expect("chunk"));
        count += 1;
        if count == 1 {
            s.apply(&batch(&entries(11, 11, 1)))
                .expect("apply during snapshot");
        }
        if count == 3 {
            s.apply(&batch(&entries(12, 12, 1)))
                .expect("apply during snapshot");
        }
    }
    assert!(count > 3, "expected several chunks, got {count}");
    let snap = Snapshot {
        meta: chunks.meta().clone(),
        data,
    };
    let target = H::new();
    target
        .store()
        .persist(LogWrite {
            snapshot: Some(&snap.image()),
            ..LogWrite::default()
        })
        .expect("install");
    let v = target.store().view().expect("view");
    assert_eq!(all_kv(&v), kv);
    assert_eq!(all_sessions(&v), sessions);
    assert_eq!(v.applied().last_applied, id(10, 1));
    assert_eq!(v.applied().config, ClusterConfig::with_voters([1, 2]));
}

fn installing_a_snapshot_replaces_state_and_conflicting_log<H: Harness>() {
    let source = populated::<H>();
    let snap = SnapshotChunks::new(source.store().view().expect("view"), 4096)
        .into_snapshot_for_test()
        .expect("snapshot");
    let target = H::new();
    let t = target.store();
    append(t, &entries(1, 15, 3)); // disagrees with the snapshot at index 10 (term 3 vs 1)
    t.apply(&batch(&entries(1, 2, 3))).expect("apply");
    t.apply(&ApplyBatch {
        last_applied: id(3, 3),
        writes: vec![KvWrite {
            namespace: "gone".into(),
            key: b"x".to_vec(),
            value: Some(b"y".to_vec()),
        }],
        ..ApplyBatch::default()
    })
    .expect("apply");
    t.persist(LogWrite {
        snapshot: Some(&snap.image()),
        ..LogWrite::default()
    })
    .expect("install");
    let r = t.recover().expect("recover");
    assert_eq!(
        r.log,
        LogBounds {
            snapshot: id(10, 1),
            last: id(10, 1)
        }
    );
    assert_eq!(r.snapshot, snap.meta);
    assert_eq!(r.applied.last_applied, id(10, 1));
    assert!(t.entries(1, 100, None).expect("entries").is_empty());
    let (sv, tv) = (
        source.store().view().expect("view"),
        t.view().expect("view"),
    );
    assert_eq!(all_kv(&tv), all_kv(&sv));
    assert_eq!(all_sessions(&tv), all_sessions(&sv));
    assert_eq!(tv.get("gone", b"x").expect("get"), None);
}

fn installing_a_snapshot_keeps_a_log_suffix_that_agrees<H: Harness>() {
    let source = populated::<H>();
    let snap = SnapshotChunks::new(source.store().view().expect("view"), 4096)
        .into_snapshot_for_test()
        .expect("snapshot");
    let target = H::new();
    let t = target.store();
    append(t, &entries(1, 12, 1)); // agrees at index 10
    t.persist(LogWrite {
        hard_state: Some(HardState {
            term: 2,
            vote: None,
        }),
        snapshot: Some(&snap.image()),
        entries: &entries(13, 14, 2),
    })
    .expect("install with entries");
    let r = t.recover().expect("recover");
    assert_eq!(
        r.log,
        LogBounds {
            snapshot: id(10, 1),
            last: id(14, 2)
        }
    );
    assert_eq!(r.hard_state.term, 2);
    let mut expected = entries(11, 12, 1);
    expected.extend(entries(13, 14, 2));
    assert_eq!(t.entries(1, 100, None).expect("entries"), expected);
}

fn a_damaged_or_stale_snapshot_is_refused_whole<H: Harness>() {
    let source = populated::<H>();
    let snap = SnapshotChunks::new(source.store().view().expect("view"), 4096)
        .into_snapshot_for_test()
        .expect("snapshot");
    let target = H::new();
    let t = target.store();
    append(t, &entries(1, 3, 1));
    let mut damaged = snap.clone();
    let mid = damaged.data.len() / 2;
    damaged.data[mid] ^= 0x40;
    let mut mislabelled = snap.clone();
    mislabelled.meta.index = 11;
    let mut other_members = snap.clone();
    other_members.meta.config.voters.insert(7);
    for (bad, why) in [
        (damaged, "damaged"),
        (mislabelled, "meta mismatch"),
        (other_members, "members mismatch"),
    ] {
        let err = t
            .persist(LogWrite {
                hard_state: Some(HardState {
                    term: 9,
                    vote: None,
                }),
                snapshot: Some(&bad.image()),
                entries: &[],
            })
            .expect_err(why);
        assert!(
            matches!(err, StorageError::SnapshotImage { .. }),
            "{why}: {err}"
        );
    }
    assert_eq!(t.hard_state().expect("hs"), HardState::default());
    assert_eq!(t.log_bounds().expect("bounds").last, id(3, 1));
    t.persist(LogWrite {
        snapshot: Some(&snap.image()),
        ..LogWrite::default()
    })
    .expect("install");
    let err = t
        .persist(LogWrite {
            snapshot: Some(&snap.image()),
            ..LogWrite::default()
        })
        .expect_err("stale");
    assert!(matches!(err, StorageError::SnapshotImage { .. }), "{err}");
}

/// A backup restored onto new machines (`keel snapshot restore` with the node config's
/// `peers`): the image is installed under metadata naming the same members at other
/// addresses, and those addresses are the ones stored.
fn a_snapshot_installs_with_its_members_at_new_addresses<H: Harness>() {
    let source = populated::<H>();
    let mut snap = SnapshotChunks::new(source.store().view().expect("view"), 4096)
        .into_snapshot_for_test()
        .expect("snapshot");
    for id in snap.meta.config.voters.clone() {
        snap.meta
            .config
            .addresses
            .insert(id, format!("http://10.9.9.{id}:7001"));
    }
    let target = H::new();
    let t = target.store();
    t.persist(LogWrite {
        snapshot: Some(&snap.image()),
        ..LogWrite::default()
    })
    .expect("install at new addresses");
    let v = t.view().expect("view");
    assert_eq!(v.applied().config, snap.meta.config);
    assert_eq!(t.recover().expect("recover").snapshot, snap.meta);
}

fn persist_and_apply_may_run_on_different_threads<H: Harness>() {
    let h = H::new();
    let s = h.store();
    append(s, &entries(1, 1, 1));
    std::thread::scope(|scope| {
        scope.spawn(|| {
            for i in 2..=200 {
                append(s, &entries(i, i, 1));
            }
        });
        scope.spawn(|| {
            // Apply whatever is in the log, as a separate apply thread would.
            let mut applied = 0;
            while applied < 200 {
                let last = s.log_bounds().expect("bounds").last.index;
                if last > applied {
                    s.apply(&batch(
                        &s.entries(applied + 1, last + 1, None).expect("entries"),
                    ))
                    .expect("apply");
                    applied = last;
                } else {
                    std::thread::yield_now();
                }
            }
        });
    });
    let v = s.view().expect("view");
    assert_eq!(v.applied().last_applied, id(200, 1));
    assert_eq!(
        v.get("alpha", b"k13").expect("get"),
        Some(b"200@1".to_vec())
    );
}

// ---- restart ----------------------------------------------------------------------------------

fn everything_durable_survives_a_restart<H: Harness>() {
    let mut h = H::new();
    let me = Identity {
        cluster: ClusterId(77),
        node: 3,
    };
    h.store().set_identity(me).expect("identity");
    h.store()
        .persist(LogWrite {
            hard_state: Some(HardState {
                term: 4,
                vote: Some(3),
            }),
            entries: &entries(1, 9, 4),
            ..LogWrite::default()
        })
        .expect("persist");
    h.store().apply(&batch(&entries(1, 5, 4))).expect("apply");
    h.store().sync().expect("sync");
    let before = (
        h.store().recover().expect("recover"),
        all_kv(&h.store().view().expect("view")),
    );
    h.restart();
    let after = (
        h.store().recover().expect("recover"),
        all_kv(&h.store().view().expect("view")),
    );
    assert_eq!(after, before);
    assert_eq!(after.0.identity, Some(me));
    assert_eq!(
        h.store().entries(1, 100, None).expect("entries"),
        entries(1, 9, 4)
    );
}

fn an_empty_write_returns_the_last_position<H: Harness>() {
    let h = H::new();
    assert_eq!(append(h.store(), &[]), id(0, 0));
    append(h.store(), &entries(1, 4, 1));
    assert_eq!(append(h.store(), &[]), id(4, 1));
}

fn a_durable_write_makes_earlier_applies_durable<H: Harness>() {
    let mut h = H::new();
    append(h.store(), &entries(1, 4, 1));
    h.store().apply(&batch(&entries(1, 2, 1))).expect("apply");
    append(h.store(), &entries(5, 5, 1)); // durable: carries the apply with it
    h.restart();
    assert_eq!(
        h.store().recover().expect("recover").applied.last_applied,
        id(2, 1)
    );
}

/// Raft §7: a snapshot holds the latest configuration. A cluster that never applied a
/// configuration entry must still put its bootstrap membership in snapshots and restarts.
fn the_bootstrap_configuration_is_in_snapshots_and_survives_a_restart<H: Harness>() {
    let mut h = H::new();
    let config = ClusterConfig {
        voters: [1, 2, 3].into(),
        learners: Default::default(),
        addresses: [(1, "http://a".to_string())].into(),
    };
    h.store().bootstrap(&config).expect("bootstrap");
    h.store()
        .bootstrap(&config)
        .expect("the same again is a no-op");
    h.restart();
    assert_eq!(h.store().recover().expect("recover").applied.config, config);
    append(h.store(), &entries(1, 3, 1));
    h.store().apply(&batch(&entries(1, 3, 1))).expect("apply");
    let snap = SnapshotChunks::new(h.store().view().expect("view"), 100)
        .into_snapshot_for_test()
        .expect("snapshot");
    assert_eq!(snap.meta.config, config, "the image carries the membership");
    let other = ClusterConfig {
        voters: [9].into(),
        ..ClusterConfig::default()
    };
    assert!(matches!(
        h.store().bootstrap(&other),
        Err(StorageError::ApplyRefused { .. })
    ));
    assert_eq!(h.store().recover().expect("recover").applied.config, config);
}

macro_rules! suite {
    ($($name:ident),* $(,)?) => {
        mod redb {
            $( #[test] fn $name() { super::$name::<super::RedbH>(); } )*
        }
        mod redb_two_phase {
            $( #[test] fn $name() { super::$name::<super::RedbTwoPhaseH>(); } )*
        }
        mod mem {
            $( #[test] fn $name() { super::$name::<super::MemH>(); } )*
        }
    };
}

suite!(
    an_empty_store_reports_nothing,
    an_appended_batch_reads_back_with_its_bounds,
    entries_stops_at_max_bytes_but_returns_at_least_one,
    a_conflicting_suffix_is_truncated_before_appending,
    a_gap_in_the_log_is_refused_and_nothing_is_written,
    an_oversized_entry_is_refused_before_anything_is_written,
    an_applied_entry_is_never_overwritten,
    hard_state_round_trips_and_never_goes_back,
    identity_is_set_once,
    an_apply_batch_lands_whole,
    an_apply_batch_that_does_not_follow_is_refused_whole,
    a_view_is_a_point_in_time,
    range_scans_stay_in_their_namespace_and_order,
    sessions_keep_the_last_result_per_client,
    a_purge_drops_the_prefix_and_remembers_its_point,
    a_snapshot_streams_a_point_in_time_while_applies_go_on,
    installing_a_snapshot_replaces_state_and_conflicting_log,
    installing_a_snapshot_keeps_a_log_suffix_that_agrees,
    a_damaged_or_stale_snapshot_is_refused_whole,
    a_snapshot_installs_with_its_members_at_new_addresses,
    persist_and_apply_may_run_on_different_threads,
    everything_durable_survives_a_restart,
    an_empty_write_returns_the_last_position,
    a_durable_write_makes_earlier_applies_durable,
    the_bootstrap_configuration_is_in_snapshots_and_survives_a_restart,
);

/// Both stores produce the same image byte for byte from the same history.
#[test]
fn both_stores_produce_identical_snapshot_images() {
    fn image<S: Storage>(s: &S) -> Snapshot {
        SnapshotChunks::new(s.view().expect("view"), 100)
            .into_snapshot_for_test()
            .expect("snapshot")
    }
    let (r, m) = (populated::<RedbH>(), populated::<MemH>());
    assert_eq!(image(r.store()), image(m.store()));
}
