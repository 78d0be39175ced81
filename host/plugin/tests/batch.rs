//! The commands of one log entry on one fresh instance (`Plugin::apply_batch`): the
//! same outcomes as applying them one by one, guest state confined to the entry.

mod common;

use common::{ctx, guest_dir, load, rust_guests};
use keel_plugin::{
    ApplyContext, ApplyOutcome, Limits, MemoryKv, Plugin, PluginError, PluginId, Runtime,
    RuntimeConfig,
};
use std::sync::Arc;

/// Applies one entry's commands as a batch and commits the writes in order.
fn entry(
    plugin: &Plugin,
    state: &Arc<MemoryKv>,
    index: u64,
    commands: &[&str],
) -> Vec<ApplyOutcome> {
    let batch: Vec<(ApplyContext, &[u8])> = commands
        .iter()
        .map(|c| (ctx(index), c.as_bytes()))
        .collect();
    let outcomes = plugin
        .apply_batch(state.clone(), &batch)
        .expect("no node-local failure");
    for o in &outcomes {
        state.commit(&o.writes);
    }
    outcomes
}

fn answers(outcomes: &[ApplyOutcome]) -> Vec<String> {
    outcomes
        .iter()
        .map(|o| match &o.result {
            Ok(bytes) => String::from_utf8_lossy(bytes).into_owned(),
            Err(e) => format!("error: {e}"),
        })
        .collect()
}

#[test]
fn a_batch_gives_the_outcomes_of_applying_its_commands_one_by_one() {
    let counter = load("counter", &rust_guests().counter);
    let commands = [
        r#"{"op":"add","name":"c","by":1}"#,
        r#"{"op":"add","name":"c","by":2}"#,
        r#"{"op":"add","name":"c","by":9223372036854775807}"#,
        r#"{"op":"add","name":"d","by":7}"#,
        r#"{"op":"reset","name":"c"}"#,
        r#"{"op":"add","name":"c","by":5}"#,
    ];
    let batched_state = Arc::new(MemoryKv::new());
    let batched = entry(&counter, &batched_state, 1, &commands);

    let single_state = Arc::new(MemoryKv::new());
    let single: Vec<_> = commands
        .iter()
        .map(|c| common::apply(&counter, &single_state, 1, c))
        .collect();

    assert_eq!(answers(&batched), answers(&single));
    assert_eq!(
        answers(&batched)[..3],
        [
            r#"{"value":1}"#,
            r#"{"value":3}"#,
            "error: plugin counter@1: counter c would overflow"
        ]
    );
    let writes = |o: &[ApplyOutcome]| o.iter().map(|o| o.writes.clone()).collect::<Vec<_>>();
    assert_eq!(writes(&batched), writes(&single));
    assert_eq!(batched_state.dump(), single_state.dump());
}

#[test]
fn guest_state_lives_for_one_entry_and_is_the_same_on_every_node() {
    let node = || {
        Runtime::new(RuntimeConfig {
            cache_dir: Some(guest_dir().join("compiled-cache")),
            ..RuntimeConfig::default()
        })
        .expect("runtime")
    };
    let plugin = |rt: &Runtime| {
        rt.load(
            PluginId::new("misbehave", "1"),
            &rust_guests().misbehave,
            Limits::default(),
        )
        .expect("load")
    };
    let hidden = [r#"{"op":"hidden-counter"}"#; 3];
    let (a, b) = (plugin(&node()), plugin(&node()));
    let (sa, sb) = (Arc::new(MemoryKv::new()), Arc::new(MemoryKv::new()));
    // Node A applies entries 1 and 2; node B (restarted) only entry 2.
    let a1 = answers(&entry(&a, &sa, 1, &hidden));
    let a2 = answers(&entry(&a, &sa, 2, &hidden));
    let b2 = answers(&entry(&b, &sb, 2, &hidden));
    assert_eq!(a1, [r#"{"calls":1}"#, r#"{"calls":2}"#, r#"{"calls":3}"#]);
    assert_eq!(a2, a1, "a new entry starts on a fresh instance");
    assert_eq!(b2, a2, "a restarted node computes the same");
}

#[test]
fn a_trap_fails_only_its_command_and_the_rest_run_on_a_new_instance() {
    let misbehave = load("misbehave", &rust_guests().misbehave);
    let state = Arc::new(MemoryKv::new());
    let outcomes = entry(
        &misbehave,
        &state,
        1,
        &[
            r#"{"op":"hidden-counter"}"#,
            r#"{"op":"put","key":"x","value":"1"}"#,
            r#"{"op":"panic"}"#,
            r#"{"op":"hidden-counter"}"#,
            r#"{"op":"put","key":"y","value":"2"}"#,
        ],
    );
    let got = answers(&outcomes);
    assert_eq!(got[0], r#"{"calls":1}"#);
    assert!(
        matches!(outcomes[2].result, Err(PluginError::Trap { .. })),
        "{}",
        got[2]
    );
    assert_eq!(
        got[3], r#"{"calls":1}"#,
        "the trapped instance was replaced"
    );
    let keys: Vec<_> = state.dump().into_iter().map(|(k, _)| k).collect();
    assert_eq!(keys, [b"x".to_vec(), b"y".to_vec()]);
}
