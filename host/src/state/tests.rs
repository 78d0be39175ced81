//! Tests of the apply path, the write-back layer and the registry.

use std::collections::BTreeMap;
use std::sync::Arc;

use keel_plugin::Runtime;
use keel_raft::{ClientSerial, Command, Deploy, Entry, Payload, Record};
use keel_storage::{ApplyBatch, KvWrite, LogId, MemStorage, Session, StateView, Storage};
use sha2::{Digest, Sha256};

use super::layer::Overlay;
use super::*;
use crate::blobs::Blobs;

pub(super) fn kv() -> (Runtime, Registry) {
    let runtime = Runtime::new(keel_plugin::RuntimeConfig::default()).expect("runtime");
    let blobs = Blobs::new(None, &[BUILTIN_KV]);
    // The dry-run journal on, as in `keel serve`: it must change no answer.
    let registry = Registry::with_journal(1 << 20);
    let deploy = Deploy {
        plugin: "kv".into(),
        version: "test".into(),
        sha256: Sha256::digest(BUILTIN_KV).into(),
        fuel_per_apply: 100_000_000,
        memory_limit: 64 << 20,
    };
    let plugin = load(&runtime, &blobs, &deploy).expect("the built-in kv loads");
    registry.set("kv".into(), Arc::new(plugin));
    (runtime, registry)
}

pub(super) fn put(key: &str, value: &str, client: Option<(u64, u64)>) -> Command {
    Command {
        plugin: "kv".into(),
        client: client.map(|(client_id, serial)| ClientSerial { client_id, serial }),
        payload: Payload::Inline(
            format!(r#"{{"op":"put","key":"{key}","value":"{value}"}}"#).into_bytes(),
        ),
    }
}

pub(super) fn entry(index: u64, record: Record) -> Entry {
    Entry {
        index,
        term: 1,
        timestamp_ms: 1,
        record,
    }
}

/// Storage whose log holds a no-op at index 1, applied with `batch`.
pub(super) fn applied_at_1(batch: ApplyBatch) -> MemStorage {
    let s = MemStorage::new();
    s.persist(keel_storage::LogWrite {
        entries: &[entry(1, Record::Noop)],
        ..Default::default()
    })
    .expect("persist");
    s.apply(&ApplyBatch {
        last_applied: LogId { index: 1, term: 1 },
        ..batch
    })
    .expect("apply");
    s
}

/// Storage where clients 5, 7, 8 and 9 have open sessions (opened at log time 0).
fn with_sessions() -> MemStorage {
    applied_at_1(ApplyBatch {
        sessions: [5, 7, 8, 9]
            .into_iter()
            .map(|c| (c, Some(Session::default())))
            .collect(),
        ..Default::default()
    })
}

fn run(runtime: &Runtime, registry: &Registry, entries: &[Entry]) -> Applied {
    let view = Box::new(with_sessions().view().expect("view"));
    apply_batch(
        runtime,
        &Blobs::new(None, &[BUILTIN_KV]),
        registry,
        view,
        Arc::default(),
        entries,
    )
    .expect("applies")
}

pub(super) fn answers(a: &Applied) -> Vec<String> {
    a.results
        .iter()
        .map(|o| match &o.result {
            Ok(b) => String::from_utf8_lossy(b).into_owned(),
            Err(e) => format!("error: {e}"),
        })
        .collect()
}

#[test]
fn a_batched_entry_answers_as_one_entry_per_command_would() {
    let (runtime, registry) = kv();
    let cmds = vec![
        put("a", "1", Some((7, 1))),
        put("a", "2", None),
        Command {
            plugin: "nope".into(),
            client: None,
            payload: Payload::Inline(b"{}".to_vec()),
        },
        put("a", "3", Some((8, 1))),
        Command {
            plugin: "kv".into(),
            client: None,
            payload: Payload::Inline(b"not json".to_vec()),
        },
        put("b", "4", Some((7, 2))),
    ];
    let batched = run(
        &runtime,
        &registry,
        &[entry(1, Record::Batch(cmds.clone()))],
    );
    let single: Vec<Entry> = cmds
        .iter()
        .enumerate()
        .map(|(i, c)| entry(i as u64 + 1, Record::Command(c.clone())))
        .collect();
    let single = run(&runtime, &registry, &single);
    assert_eq!(answers(&batched), answers(&single));
    assert_eq!(
        answers(&batched)[..2],
        [
            r#"{"prev":null}"#.to_string(),
            r#"{"prev":"1"}"#.to_string()
        ]
    );
    assert!(answers(&batched)[2].contains("unknown plugin"));
    let final_state = |a: &Applied| {
        let mut m = BTreeMap::new();
        // The counters name the failing command's entry, which batching changes.
        for w in a.batch.writes.iter().filter(|w| w.key != stats_key("kv")) {
            m.insert((w.namespace.clone(), w.key.clone()), w.value.clone());
        }
        let sessions: BTreeMap<u64, Option<Session>> = a.batch.sessions.iter().cloned().collect();
        (m, sessions)
    };
    assert_eq!(final_state(&batched), final_state(&single));
    let positions: Vec<u32> = batched.results.iter().map(|o| o.position).collect();
    assert_eq!(positions, [0, 1, 2, 3, 4, 5]);
}

#[test]
fn a_serial_repeated_inside_one_entry_is_applied_once() {
    // Raft paper §8, within an entry: a client that retried before its first attempt was
    // applied can land twice in one batch. Applying both would answer {"prev":"x"} to the
    // retry; the session must hand back the first answer instead.
    let (runtime, registry) = kv();
    let cmds = vec![
        put("k", "x", Some((5, 3))),
        put("k", "x", Some((5, 3))),
        put("k", "y", Some((5, 2))),
        put("k", "z", Some((5, 4))),
    ];
    let a = run(&runtime, &registry, &[entry(1, Record::Batch(cmds))]);
    let got = answers(&a);
    assert_eq!(got[0], r#"{"prev":null}"#);
    assert_eq!(got[1], got[0], "the retry gets the stored answer");
    assert!(got[2].contains("stale serial 2"), "{}", got[2]);
    assert_eq!(got[3], r#"{"prev":"x"}"#, "the duplicate wrote nothing");
    let last = a.batch.sessions.last().expect("a session");
    assert_eq!((last.0, last.1.as_ref().map(|s| s.serial)), (5, Some(4)));
}

#[test]
fn a_serial_already_in_the_session_table_is_answered_from_it() {
    let (runtime, registry) = kv();
    let first = entry(1, Record::Command(put("k", "x", Some((9, 1)))));
    let retry = entry(
        2,
        Record::Batch(vec![put("k", "x", Some((9, 1))), put("j", "y", None)]),
    );
    let a = run(&runtime, &registry, &[first, retry]);
    let got = answers(&a);
    assert_eq!(got[1], got[0]);
    assert_eq!(
        a.batch.writes.iter().filter(|w| w.key == b"k").count(),
        1,
        "the retried put was not applied again"
    );
}

fn at(index: u64, timestamp_ms: u64, record: Record) -> Entry {
    Entry {
        index,
        term: 1,
        timestamp_ms,
        record,
    }
}

/// Thesis §6.3: sessions are opened through the log, expire by the log's clock on every
/// node alike, and a command of an unknown or expired session is refused, not applied
/// (it may be the retry of one applied before the expiry).
#[test]
fn sessions_open_and_expire_by_the_log_and_an_expired_one_is_refused() {
    let (runtime, registry) = kv();
    let storage = with_sessions(); // 5, 7, 8, 9 opened at log time 0
    let entries = [
        at(2, 1_000, Record::OpenSession),
        at(3, 2_000, Record::Command(put("k", "a", Some((2, 1))))),
        at(4, 2_500, Record::Command(put("k", "b", Some((7, 1))))),
        // Unused since before 2,200: the stored 5, 8, 9 and the session opened at 2.
        at(5, 3_000, Record::ExpireSessions { before_ms: 2_200 }),
        at(6, 3_100, Record::Command(put("k", "c", Some((2, 1))))),
        at(7, 3_200, Record::Command(put("k", "d", Some((9, 1))))),
        at(8, 3_300, Record::Command(put("k", "e", Some((7, 2))))),
        at(9, 3_400, Record::Command(put("k", "f", Some((424_242, 1))))),
    ];
    let a = apply_batch(
        &runtime,
        &Blobs::new(None, &[BUILTIN_KV]),
        &registry,
        Box::new(storage.view().expect("view")),
        Arc::default(),
        &entries,
    )
    .expect("applies");
    let got = answers(&a);
    assert_eq!(got[0], r#"{"client_id":2}"#, "the id is the entry's index");
    assert_eq!(got[1], r#"{"prev":null}"#);
    assert_eq!(got[2], r#"{"prev":"a"}"#);
    // Session 2 was last used at 2,000 < 2,200: its retry is refused, not re-applied
    // (which would answer {"prev":"b"}).
    let refused: Vec<bool> = a.results.iter().map(|o| o.unknown_session).collect();
    assert_eq!(refused, [false, false, false, true, true, false, true]);
    assert!(
        got[3].contains("session 2 is unknown or expired"),
        "{}",
        got[3]
    );
    assert_eq!(got[5], r#"{"prev":"b"}"#, "7 was used at 2,500 and lives");
    let ks: Vec<_> = a.batch.writes.iter().filter(|w| w.key == b"k").collect();
    assert_eq!(ks.len(), 3, "refused commands write nothing");
    // Storage ends as the replicas must: 7 alone, at serial 2.
    storage
        .persist(keel_storage::LogWrite {
            entries: &entries,
            ..Default::default()
        })
        .expect("persist");
    storage.apply(&a.batch).expect("flush");
    let view = storage.view().expect("view");
    let left = view.scan_sessions(None, 100).expect("scan");
    assert_eq!(
        left.iter().map(|(c, s)| (*c, s.serial)).collect::<Vec<_>>(),
        [(7, 2)]
    );
    assert_eq!(left[0].1.last_ms, 3_300);
}

#[test]
fn expiry_sees_sessions_in_every_layer() {
    let (runtime, registry) = kv();
    let storage = with_sessions();
    // 7 was used again, in the layer not yet flushed; 8 expired there already.
    let mut upper = Unflushed::default();
    upper.absorb(ApplyBatch {
        last_applied: LogId { index: 2, term: 1 },
        sessions: vec![
            (
                7,
                Some(Session {
                    serial: 1,
                    result: vec![0],
                    last_ms: 5_000,
                }),
            ),
            (8, None),
        ],
        ..Default::default()
    });
    let a = apply_batch(
        &runtime,
        &Blobs::new(None, &[BUILTIN_KV]),
        &registry,
        Box::new(storage.view().expect("view")),
        Arc::new(upper),
        &[at(3, 6_000, Record::ExpireSessions { before_ms: 4_000 })],
    )
    .expect("applies");
    let expired: Vec<u64> = a
        .batch
        .sessions
        .iter()
        .filter(|(_, s)| s.is_none())
        .map(|(c, _)| *c)
        .collect();
    assert_eq!(
        expired,
        [5, 9],
        "7 is fresh above storage; 8 is gone already"
    );
}

pub(super) fn builtin_deploy(name: &str) -> Deploy {
    Deploy {
        plugin: name.into(),
        version: "test".into(),
        sha256: Sha256::digest(BUILTIN_KV).into(),
        fuel_per_apply: 100_000_000,
        memory_limit: 64 << 20,
    }
}

/// Storage whose applied state holds these deployment records (`plugin/{name}` → value).
fn with_deployments(records: Vec<(String, Vec<u8>)>) -> MemStorage {
    applied_at_1(ApplyBatch {
        writes: records
            .into_iter()
            .map(|(name, value)| KvWrite {
                namespace: SYSTEM_NAMESPACE.into(),
                key: format!("plugin/{name}").into_bytes(),
                value: Some(value),
            })
            .collect(),
        ..Default::default()
    })
}

/// Design §8: a node that cannot read a deployment refuses to go on (it used to skip
/// the record, then answer "unknown plugin" where the other replicas applied).
#[test]
fn a_deployment_record_that_does_not_decode_stops_the_reload_and_is_named() {
    let runtime = Runtime::new(keel_plugin::RuntimeConfig::default()).expect("runtime");
    let good = postcard::to_allocvec(&builtin_deploy("kv")).expect("encode");
    let torn = good[..good.len() / 2].to_vec();
    let storage = with_deployments(vec![("kv".into(), good), ("zz-torn".into(), torn)]);
    let err = reload(
        &runtime,
        &Blobs::new(None, &[BUILTIN_KV]),
        &Registry::default(),
        &storage.view().expect("view"),
    )
    .expect_err("an undecodable deployment must stop the reload");
    let msg = err.to_string();
    assert!(msg.contains("__keel/plugin/zz-torn"), "{msg}");
    assert!(msg.contains("does not decode"), "{msg}");
}

/// No cap on the number of deployments: the reload used to stop at 10,000 records,
/// leaving every plugin past them unknown on this node only.
#[test]
fn every_deployment_record_is_read_however_many_there_are() {
    let n = 10_001;
    let records = (0..n)
        .map(|i| {
            let name = format!("p{i:05}");
            let value = postcard::to_allocvec(&builtin_deploy(&name)).expect("encode");
            (name, value)
        })
        .collect();
    let storage = with_deployments(records);
    let got = deployments(&storage.view().expect("view")).expect("deployments");
    assert_eq!(got.len(), n);
    assert_eq!(got.first().map(|d| d.plugin.as_str()), Some("p00000"));
    assert_eq!(got.last().map(|d| d.plugin.as_str()), Some("p10000"));
}

pub(super) fn kv_write(key: &str, value: Option<&str>) -> KvWrite {
    KvWrite {
        namespace: "kv".into(),
        key: key.as_bytes().to_vec(),
        value: value.map(|v| v.as_bytes().to_vec()),
    }
}

/// Storage with a..d applied at index 1, and a log reaching index 3.
fn stored() -> MemStorage {
    let s = MemStorage::new();
    let log: Vec<Entry> = (1..=3).map(|i| entry(i, Record::Noop)).collect();
    s.persist(keel_storage::LogWrite {
        entries: &log,
        ..Default::default()
    })
    .expect("persist");
    s.apply(&ApplyBatch {
        last_applied: LogId { index: 1, term: 1 },
        writes: ["a", "b", "c", "d"]
            .iter()
            .map(|k| kv_write(k, Some(k)))
            .collect(),
        ..Default::default()
    })
    .expect("apply");
    s
}

fn unflushed() -> Unflushed {
    let mut u = Unflushed::default();
    u.absorb(ApplyBatch {
        last_applied: LogId { index: 2, term: 1 },
        writes: vec![
            kv_write("b", None),
            kv_write("c", Some("C2")),
            kv_write("e", Some("E")),
        ],
        sessions: vec![(
            4,
            Some(Session {
                serial: 9,
                result: vec![0],
                last_ms: 0,
            }),
        )],
        ..Default::default()
    });
    u
}

fn pairs(v: Vec<(Vec<u8>, Vec<u8>)>) -> Vec<String> {
    v.into_iter()
        .map(|(k, v)| {
            format!(
                "{}={}",
                String::from_utf8_lossy(&k),
                String::from_utf8_lossy(&v)
            )
        })
        .collect()
}

#[test]
fn reads_layer_the_batch_over_the_unflushed_state_over_storage() {
    let storage = stored();
    let overlay = Overlay {
        base: Box::new(storage.view().expect("view")),
        unflushed: Arc::new(unflushed()),
        writes: [
            (("kv".to_string(), b"d".to_vec()), None),
            (("kv".to_string(), b"f".to_vec()), Some(b"F".to_vec())),
            (("other".to_string(), b"a".to_vec()), Some(b"no".to_vec())),
        ]
        .into(),
        sessions: BTreeMap::new(),
    };
    assert_eq!(
        overlay.get("kv", b"b").expect("get"),
        None,
        "deleted unflushed"
    );
    assert_eq!(overlay.get("kv", b"c").expect("get"), Some(b"C2".to_vec()));
    assert_eq!(overlay.get("kv", b"a").expect("get"), Some(b"a".to_vec()));
    let all = overlay.range("kv", b"", None, 100).expect("range");
    assert_eq!(pairs(all), ["a=a", "c=C2", "e=E", "f=F"]);
    // Deletes in both upper layers hide stored pairs without shortening the page.
    let two = overlay.range("kv", b"b", None, 2).expect("range");
    assert_eq!(pairs(two), ["c=C2", "e=E"]);
    let bounded = overlay.range("kv", b"a", Some(b"e"), 100).expect("range");
    assert_eq!(pairs(bounded), ["a=a", "c=C2"]);
    assert_eq!(
        overlay.session(4).expect("session").map(|s| s.serial),
        Some(9)
    );
}

#[test]
fn a_layer_being_flushed_stays_readable_under_new_applies_until_storage_has_it() {
    let storage = stored();
    let mut slot = Arc::new(unflushed());
    let frozen = Unflushed::freeze(&mut slot).expect("something to flush");
    assert!(
        Unflushed::freeze(&mut slot).is_none(),
        "one flush at a time"
    );
    Arc::make_mut(&mut slot).absorb(ApplyBatch {
        last_applied: LogId { index: 3, term: 1 },
        writes: vec![kv_write("c", Some("C3")), kv_write("e", None)],
        ..Default::default()
    });
    let read = |slot: &Arc<Unflushed>, storage: &MemStorage| {
        let overlay = Overlay {
            base: Box::new(storage.view().expect("view")),
            unflushed: Arc::clone(slot),
            writes: BTreeMap::new(),
            sessions: BTreeMap::new(),
        };
        let pairs = pairs(overlay.range("kv", b"", None, 100).expect("range"));
        let session = overlay.session(4).expect("session").map(|s| s.serial);
        (pairs, session)
    };
    // Before the flush commits: b deleted and the session from the frozen layer, c and e
    // from the new one.
    let expected = (
        vec!["a=a".to_string(), "c=C3".into(), "d=d".into()],
        Some(9),
    );
    assert_eq!(read(&slot, &storage), expected);
    // The writer commits it; until the driver drops the layer, it is read twice: same.
    storage
        .apply(&frozen.to_batch().expect("a batch"))
        .expect("flush");
    assert_eq!(read(&slot, &storage), expected);
    // A report about another layer (one a snapshot install dropped) changes nothing.
    assert!(!slot.is_flushing(&Arc::new(unflushed())));
    assert!(slot.is_flushing(&frozen));
    Arc::make_mut(&mut slot).flushed();
    assert_eq!(read(&slot, &storage), expected);
    assert_eq!(slot.len(), 2, "only the newer layer is left in memory");
    assert_eq!(
        slot.to_batch().expect("newer layer").last_applied.index,
        3,
        "the next flush writes only the newer layer"
    );
}

#[test]
fn a_flush_leaves_the_same_state_in_storage() {
    let storage = stored();
    let u = unflushed();
    let through = Overlay {
        base: Box::new(storage.view().expect("view")),
        unflushed: Arc::new(u.clone()),
        writes: BTreeMap::new(),
        sessions: BTreeMap::new(),
    }
    .range("kv", b"", None, 100)
    .expect("range");
    storage
        .apply(&u.to_batch().expect("a batch"))
        .expect("flush");
    let view = storage.view().expect("view");
    assert_eq!(view.applied().last_applied.index, 2);
    let flushed = Overlay {
        base: Box::new(view),
        unflushed: Arc::default(),
        writes: BTreeMap::new(),
        sessions: BTreeMap::new(),
    };
    assert_eq!(
        pairs(flushed.range("kv", b"", None, 100).expect("range")),
        pairs(through)
    );
    assert_eq!(
        flushed.session(4).expect("session").map(|s| s.serial),
        Some(9)
    );
    assert!(Unflushed::default().to_batch().is_none());
}

/// Design §6: a command by reference is applied with the same bytes as inline, so the plugin
/// answers the same; a payload blob whose bytes no longer match its hash is never handed to
/// the plugin: the batch stops with `BlobGone` (the driver fetches it again and retries)
/// and the damaged file is quarantined.
#[test]
fn a_command_by_reference_applies_like_inline_and_a_damaged_blob_is_never_applied() {
    let (runtime, registry) = kv();
    let dir = tempfile::tempdir().expect("tempdir");
    let blobs = Blobs::new(Some(dir.path().to_path_buf()), &[BUILTIN_KV]);
    let body = br#"{"op":"put","key":"doc","value":"by reference"}"#;
    let sha256 = blobs.store(body).expect("store");
    let by_ref = Command {
        plugin: "kv".into(),
        client: None,
        payload: Payload::Ref {
            sha256,
            len: body.len() as u64,
        },
    };
    let apply = |blobs: &Blobs, cmd: Command| {
        apply_batch(
            &runtime,
            blobs,
            &registry,
            Box::new(with_sessions().view().expect("view")),
            Arc::default(),
            &[entry(2, Record::Command(cmd))],
        )
    };
    let inline = apply(&blobs, put("doc", "by reference", None)).expect("inline");
    let referenced = apply(&blobs, by_ref.clone()).expect("by reference");
    assert_eq!(answers(&inline), answers(&referenced));
    assert_eq!(inline.batch.writes, referenced.batch.writes);

    std::fs::write(
        dir.path().join(crate::blobs::hex(&sha256)),
        b"{\"op\":\"delete\"}",
    )
    .expect("damage the blob");
    match apply(&blobs, by_ref) {
        Err(ApplyError::BlobGone(h)) => assert_eq!(h, sha256),
        Err(e) => panic!("expected BlobGone, got {e}"),
        Ok(a) => panic!("a damaged blob was applied: {:?}", answers(&a)),
    }
    assert!(!blobs.has(&sha256), "quarantined, to be fetched again");
}

/// Issue #11: a reference-only command costs the log a few dozen bytes whatever its
/// payload's size (the goal: at most 200 bytes per command).
#[test]
fn a_reference_only_entry_is_under_200_bytes_whatever_the_payload() {
    for len in [1u64 << 16, 1 << 20, 16 << 20, 1 << 30] {
        let e = Entry {
            index: u64::MAX / 3,
            term: u64::MAX / 5,
            timestamp_ms: 1_800_000_000_000,
            record: Record::Command(Command {
                plugin: "documents".into(),
                client: Some(ClientSerial {
                    client_id: u64::MAX / 7,
                    serial: u64::MAX / 11,
                }),
                payload: Payload::Ref {
                    sha256: [0xab; 32],
                    len,
                },
            }),
        };
        let bytes = postcard::to_allocvec(&e).expect("encodes").len();
        assert!(bytes <= 200, "{len}-byte payload: {bytes}-byte entry");
    }
}

/// An undeploy takes effect at its entry, within the batch too: the command before it runs,
/// the one after is refused as for an unknown plugin; the history records both versions'
/// activation and the undeploy, and activating the batch leaves the plugin out.
#[test]
fn an_undeploy_takes_effect_at_its_entry_and_the_history_is_kept() {
    let (runtime, registry) = kv();
    let mut app_put = put("k", "v", None);
    app_put.plugin = "app".into();
    let entries = [
        entry(1, Record::Deploy(builtin_deploy("app"))),
        entry(2, Record::Command(app_put.clone())),
        entry(
            3,
            Record::Undeploy {
                plugin: "app".into(),
            },
        ),
        entry(4, Record::Command(app_put)),
    ];
    let applied = run(&runtime, &registry, &entries);
    let got = answers(&applied);
    assert!(got[1].contains("prev"), "{got:?}");
    assert!(got[2].contains(r#""undeployed":true"#), "{got:?}");
    assert_eq!(got[3], r#"error: unknown plugin "app""#);
    let history = applied
        .batch
        .writes
        .iter()
        .rev()
        .find(|w| w.key == history_key("app"))
        .and_then(|w| w.value.clone())
        .expect("a history");
    let history: History = postcard::from_bytes(&history).expect("decodes");
    assert_eq!(history.versions.len(), 1);
    assert_eq!(history.versions[0].index, 1);
    assert_eq!(history.undeployed_at, Some(3));
    activate(&registry, applied.deployed);
    assert!(registry.get("app").is_none() && registry.get("kv").is_some());
}

fn auth(op: &crate::auth::Op) -> Command {
    Command {
        plugin: crate::auth::AUTH_PLUGIN.into(),
        client: None,
        payload: Payload::Inline(serde_json::to_vec(op).expect("json")),
    }
}

#[test]
fn auth_changes_apply_in_the_system_namespace_and_reload_from_it() {
    use crate::auth::{Op, init_op};
    let (runtime, registry) = kv();
    let (id, token) = crate::auth::new_token().expect("random");
    let claim = |client_id, user: &str| Op::ClaimSession {
        client_id,
        user: user.into(),
    };
    let entries = [at(
        2,
        5,
        Record::Batch(vec![
            auth(&init_op(id, Op::hash_hex(&token))),
            auth(&claim(5, "root")),
            auth(&claim(5, "eve")),
            auth(&claim(42, "root")),
            Command {
                plugin: "_auth".into(),
                client: None,
                payload: Payload::Inline(b"not json".to_vec()),
            },
            put("k", "v", None),
        ]),
    )];
    let applied = run(&runtime, &registry, &entries);
    let got = answers(&applied);
    assert!(got[0].contains(r#""user":"root""#), "{got:?}");
    assert!(got[1].contains(r#""client_id":5"#), "{got:?}");
    assert!(got[2].contains("belongs to another user"), "{got:?}");
    assert!(got[3].contains("unknown or expired"), "{got:?}");
    assert!(got[4].starts_with("error: not an auth change"), "{got:?}");
    assert!(
        !got[5].starts_with("error"),
        "the plugin's command runs: {got:?}"
    );
    let table = applied
        .deployed
        .auth
        .clone()
        .expect("the batch changed the table");
    assert!(table.enabled());
    // What the batch wrote is what a restart (or a snapshot install) reads back.
    let storage = with_sessions();
    storage
        .persist(keel_storage::LogWrite {
            entries: &entries,
            ..Default::default()
        })
        .expect("persist");
    storage
        .apply(&ApplyBatch {
            last_applied: LogId { index: 2, term: 1 },
            ..applied.batch.clone()
        })
        .expect("commit");
    let view = storage.view().expect("view");
    assert_eq!(load_auth(&view).expect("loads"), *table);
    assert_eq!(
        view.get(SYSTEM_NAMESPACE, &crate::auth::session_key(5))
            .expect("read"),
        Some(b"root".to_vec())
    );
    activate(&registry, applied.deployed);
    assert!(registry.auth().enabled());
    // An expired session's owner goes with it.
    let expire = [at(3, 10, Record::ExpireSessions { before_ms: 10 })];
    let applied = apply_batch(
        &runtime,
        &Blobs::new(None, &[BUILTIN_KV]),
        &registry,
        Box::new(storage.view().expect("view")),
        Arc::default(),
        &expire,
    )
    .expect("applies");
    assert!(applied.batch.writes.iter().any(|w| {
        w.namespace == SYSTEM_NAMESPACE && w.key == crate::auth::session_key(5) && w.value.is_none()
    }));
}
