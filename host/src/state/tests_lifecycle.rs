//! Tests of the plugin life cycle in the apply path: the dry-run journal and replay,
//! dropping a plugin's state, and the per-plugin counters.

use std::sync::Arc;

use keel_plugin::{Limits, PluginId, Runtime};
use keel_raft::{Command, Entry, Payload, Record};
use keel_storage::{ApplyBatch, KvWrite, LogWrite, MemStorage, StateView, Storage};

use super::tests::{answers, applied_at_1, builtin_deploy, entry, kv, kv_write, put};
use super::*;
use crate::blobs::Blobs;

/// kv 0.1.0 as built from an older source: a rebuild that must answer as today's kv does.
static KV_0_1_0: &[u8] = include_bytes!("../../plugin/tests/fixtures/kv-wit-0.1.0.wasm");

fn blobs() -> Blobs {
    Blobs::new(None, &[BUILTIN_KV])
}

/// Applies `entries` over `storage` as the driver does: commit the batch, activate it, add
/// its journal records.
fn commit(
    runtime: &Runtime,
    registry: &Registry,
    storage: &MemStorage,
    entries: &[Entry],
) -> Vec<String> {
    storage
        .persist(LogWrite {
            entries,
            ..Default::default()
        })
        .expect("persist");
    let view = Box::new(storage.view().expect("view"));
    let applied =
        apply_batch(runtime, &blobs(), registry, view, Arc::default(), entries).expect("applies");
    let got = answers(&applied);
    storage.apply(&applied.batch).expect("apply");
    for name in &applied.deployed.dropped {
        registry.journal().forget(name);
    }
    activate(registry, applied.deployed);
    registry.journal().push(applied.journal);
    got
}

fn cmd(plugin: &str, body: &str) -> Command {
    Command {
        plugin: plugin.into(),
        client: None,
        payload: Payload::Inline(body.as_bytes().to_vec()),
    }
}

/// kv with `a` = 0 stored, then five commands over four entries (one a batch of two).
fn five_commands() -> (Runtime, Registry, MemStorage) {
    let (runtime, registry) = kv();
    let storage = applied_at_1(ApplyBatch {
        writes: vec![kv_write("a", Some("0"))],
        ..Default::default()
    });
    let entries = [
        entry(2, Record::Command(put("a", "1", None))),
        entry(
            3,
            Record::Batch(vec![put("a", "2", None), put("b", "x", None)]),
        ),
        entry(4, Record::Command(put("a", "3", None))),
        entry(
            5,
            Record::Command(cmd("kv", r#"{"op":"delete","key":"b"}"#)),
        ),
    ];
    commit(&runtime, &registry, &storage, &entries);
    (runtime, registry, storage)
}

fn replay(
    candidate: &keel_plugin::Plugin,
    registry: &Registry,
    storage: &MemStorage,
    records: Option<Vec<Arc<Journaled>>>,
    last: usize,
) -> DryRunReport {
    let (found, available) = registry.journal().last("kv", last);
    let records = records.unwrap_or(found);
    let view = Box::new(storage.view().expect("view"));
    dry_run(
        candidate,
        &records,
        available,
        view,
        Arc::default(),
        blobs(),
    )
    .expect("replays")
}

#[test]
fn a_dry_run_rewinds_to_before_the_first_replayed_command_and_a_rebuild_differs_nowhere() {
    let (runtime, registry, storage) = five_commands();
    let rebuild = runtime
        .load(PluginId::new("kv", "0.1.0"), KV_0_1_0, Limits::default())
        .expect("loads");
    // From the middle of the batched entry: `a` must read 2 again, and `b` be absent, or
    // the first answers ({"prev":…}) differ from the recorded ones.
    let r = replay(&rebuild, &registry, &storage, None, 3);
    assert_eq!((r.replayed, r.available), (3, 5));
    assert_eq!((r.from_index, r.to_index), (Some(3), Some(5)));
    assert_eq!(
        (r.answers_differ, r.writes_differ, r.commands_differ),
        (0, 0, 0),
        "{r:?}"
    );
    let all = replay(&rebuild, &registry, &storage, None, 100);
    assert_eq!(
        (all.replayed, all.from_index, all.commands_differ),
        (5, Some(2), 0)
    );
    // Nothing was written: the stored state is as the commands left it.
    assert_eq!(
        storage.view().expect("read").get("kv", b"a").expect("read"),
        Some(b"3".to_vec())
    );
}

#[test]
fn a_candidate_that_answers_or_writes_otherwise_is_counted_and_shown_side_by_side() {
    let (runtime, registry, storage) = five_commands();
    let (mut records, _) = registry.journal().last("kv", 5);
    // As if the version that ran them had answered the second otherwise and written
    // another value in the fourth: the candidate (today's kv) differs there, and only there.
    let mut second = (*records[1]).clone();
    second.result = Ok(br#"{"prev":"something else"}"#.to_vec());
    records[1] = Arc::new(second);
    let mut fourth = (*records[3]).clone();
    fourth.writes = vec![(b"a".to_vec(), Some(b"33".to_vec()))];
    records[3] = Arc::new(fourth);
    let candidate = registry.get("kv").expect("kv");
    let r = replay(&candidate, &registry, &storage, Some(records), 5);
    assert_eq!(
        (r.answers_differ, r.writes_differ, r.commands_differ),
        (1, 1, 2),
        "{r:?}"
    );
    assert_eq!(r.differences.len(), 2);
    let d = &r.differences[0];
    assert_eq!((d.index, d.position), (3, 0));
    assert_eq!(
        d.current.answer.as_deref(),
        Some(r#"{"prev":"something else"}"#)
    );
    assert_eq!(d.candidate.answer.as_deref(), Some(r#"{"prev":"1"}"#));
    let d = &r.differences[1];
    assert_eq!(d.index, 4);
    assert_eq!(d.current.writes.get("a"), Some(&Some("33".to_string())));
    assert_eq!(d.candidate.writes.get("a"), Some(&Some("3".to_string())));
    let _ = runtime;
}

#[test]
fn the_journal_keeps_the_latest_records_within_its_budget_and_forgets_a_dropped_plugin() {
    let (runtime, registry, storage) = five_commands();
    let full = registry.journal().bytes();
    assert!(full > 0);
    let small = Registry::with_journal(full / 2);
    let (_, records) = (0, registry.journal().last("kv", 100).0);
    small
        .journal()
        .push(records.iter().map(|r| (**r).clone()).collect());
    let (kept, available) = small.journal().last("kv", 100);
    assert!(available < 5 && available > 0, "{available}");
    assert_eq!(kept.last().map(|r| r.index), Some(5), "the newest stay");
    assert!(small.journal().bytes() <= full / 2);
    registry.journal().forget("kv");
    assert_eq!(registry.journal().last("kv", 100).1, 0);
    assert!(
        !Registry::default().journal().is_on(),
        "off unless given a budget"
    );
    let _ = (runtime, storage);
}

#[test]
fn dropping_a_plugins_state_deletes_its_namespace_and_retains_and_undeploys_it() {
    let (runtime, registry) = kv();
    let sha = [7u8; 32];
    let storage = applied_at_1(ApplyBatch {
        writes: vec![KvWrite {
            namespace: SYSTEM_NAMESPACE.into(),
            key: retain_key("app", &sha),
            value: Some(1u64.to_be_bytes().to_vec()),
        }],
        ..Default::default()
    });
    let app_put = |k: &str| {
        let mut c = put(k, "v", None);
        c.plugin = "app".into();
        c
    };
    commit(
        &runtime,
        &registry,
        &storage,
        &[
            entry(2, Record::Deploy(builtin_deploy("app"))),
            entry(3, Record::Batch(vec![app_put("k1"), app_put("k2")])),
        ],
    );
    assert_eq!(registry.journal().last("app", 10).1, 2);
    let got = commit(
        &runtime,
        &registry,
        &storage,
        &[
            entry(4, Record::Command(app_put("k3"))),
            entry(
                5,
                Record::DropState {
                    plugin: "app".into(),
                },
            ),
            entry(6, Record::Command(app_put("k4"))),
        ],
    );
    assert!(
        got[1].contains(r#""keys_deleted":3"#) && got[1].contains(r#""blobs_released":1"#),
        "{got:?}"
    );
    assert!(got[1].contains(r#""undeployed":true"#), "{got:?}");
    assert_eq!(got[2], r#"error: unknown plugin "app""#);
    let view = storage.view().expect("view");
    for k in ["k1", "k2", "k3"] {
        assert_eq!(view.get("app", k.as_bytes()).expect("read"), None, "{k}");
    }
    assert_eq!(
        view.get(SYSTEM_NAMESPACE, &retain_key("app", &sha))
            .expect("read"),
        None
    );
    assert_eq!(
        view.get(SYSTEM_NAMESPACE, &stats_key("app")).expect("read"),
        None
    );
    assert!(
        view.get(SYSTEM_NAMESPACE, &history_key("app"))
            .expect("read")
            .is_some(),
        "history stays"
    );
    assert!(registry.get("app").is_none());
    assert_eq!(
        registry.journal().last("app", 10).1,
        0,
        "its records undo nothing now"
    );
}

#[test]
fn each_plugin_counts_its_commands_and_keeps_its_last_failure_in_the_state() {
    let (runtime, registry) = kv();
    let storage = applied_at_1(ApplyBatch::default());
    commit(
        &runtime,
        &registry,
        &storage,
        &[
            entry(2, Record::Command(put("a", "1", None))),
            entry(3, Record::Command(cmd("kv", "not json"))),
        ],
    );
    commit(
        &runtime,
        &registry,
        &storage,
        &[entry(
            4,
            Record::Batch(vec![put("b", "1", None), put("c", "1", None)]),
        )],
    );
    let view: Arc<dyn keel_plugin::KvView> = query_view(
        Box::new(storage.view().expect("view")),
        Arc::default(),
        SYSTEM_NAMESPACE.into(),
    );
    let rec = plugin_record(&view, "kv").expect("record");
    assert_eq!((rec.stats.applied, rec.stats.failed), (4, 1));
    let (index, message) = rec.stats.last_error.expect("a failure");
    assert_eq!(index, 3);
    assert!(message.contains("invalid"), "{message}");
}
