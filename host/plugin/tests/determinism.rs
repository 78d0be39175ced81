//! Replicas cannot diverge through guest state or ambient WASI: every call runs on a
//! fresh instance, and clocks, randomness, environment and filesystem are fixed by the
//! log entry.

mod common;

use common::{apply, ctx, guest_dir, rust_guests};
use keel_plugin::{Limits, MemoryKv, Plugin, PluginId, Runtime, RuntimeConfig};
use serde_json::Value;
use std::sync::Arc;

/// A node of its own: its own runtime (engine, pool, cache), as after a restart.
fn node() -> Runtime {
    Runtime::new(RuntimeConfig {
        cache_dir: Some(guest_dir().join("compiled-cache")),
        ..RuntimeConfig::default()
    })
    .expect("runtime")
}

fn misbehave_on(rt: &Runtime) -> Plugin {
    rt.load(
        PluginId::new("misbehave", "1"),
        &rust_guests().misbehave,
        Limits::default(),
    )
    .expect("load misbehave")
}

fn answers(plugin: &Plugin, from: u64, to: u64, command: &str) -> Vec<Vec<u8>> {
    let state = Arc::new(MemoryKv::new());
    (from..=to)
        .map(|i| {
            apply(plugin, &state, i, command)
                .result
                .expect("hidden-counter succeeds")
        })
        .collect()
}

#[test]
fn a_counter_kept_in_a_guest_global_never_survives_to_the_next_apply() {
    // Node A has applied entries 1..=40 on one long-lived plugin; node B restarts
    // after entry 20 and applies 21..=40 on a new one. With any instance reuse, A
    // would answer 21..40 differently from B.
    let command = r#"{"op":"hidden-counter"}"#;
    let a = answers(&misbehave_on(&node()), 1, 40, command);
    let b = answers(&misbehave_on(&node()), 21, 40, command);
    assert!(
        a.iter().all(|x| x.as_slice() == br#"{"calls":1}"#),
        "{:?}",
        String::from_utf8_lossy(&a[39])
    );
    assert_eq!(a[20..], b[..]);
}

fn ambient(plugin: &Plugin, index: u64, term: u64) -> Value {
    let mut c = ctx(index);
    c.term = term;
    let out = plugin
        .apply(Arc::new(MemoryKv::new()), &c, br#"{"op":"ambient"}"#)
        .expect("apply");
    serde_json::from_slice(&out.result.expect("ambient succeeds")).expect("json")
}

#[test]
fn clocks_randomness_environment_and_files_are_fixed_by_the_entry() {
    let (a, b) = (misbehave_on(&node()), misbehave_on(&node()));
    let seen = ambient(&a, 7, 3);
    assert_eq!(
        seen["wall_ms"],
        ctx(7).timestamp_ms,
        "wall clock = the leader's timestamp"
    );
    assert_eq!(
        seen["monotonic_elapsed_ns"], 0,
        "the monotonic clock does not advance"
    );
    assert_eq!(seen["env_vars"], 0);
    assert_eq!(seen["args"], 0);
    assert_eq!(seen["read_root"], false, "no preopened directories");
    let mut expected = ctx(7);
    expected.term = 3;
    assert_eq!(seen["ctx_seed"], expected.seed());

    assert_eq!(
        ambient(&b, 7, 3),
        seen,
        "another node sees exactly the same"
    );
    assert_ne!(
        ambient(&a, 7, 4)["random"],
        seen["random"],
        "randomness follows the seed"
    );
    assert_ne!(ambient(&a, 8, 3)["random"], seen["random"]);
}

#[test]
fn the_seed_depends_on_index_and_term() {
    let seed = |index, term| {
        let mut c = ctx(index);
        c.term = term;
        c.seed()
    };
    assert_eq!(seed(5, 2), seed(5, 2));
    assert_ne!(seed(5, 2), seed(5, 3));
    assert_ne!(seed(5, 2), seed(6, 2));
    assert_ne!(seed(2, 5), seed(5, 2));
}

#[test]
fn guest_output_goes_to_the_log_and_the_call_succeeds() {
    let plugin = misbehave_on(&node());
    let out = apply(&plugin, &Arc::new(MemoryKv::new()), 1, r#"{"op":"print"}"#);
    assert_eq!(out.result.ok(), Some(br#""ok""#.to_vec()));
}

#[test]
fn failures_are_identical_on_two_nodes() {
    let (a, b) = (misbehave_on(&node()), misbehave_on(&node()));
    for command in [
        r#"{"op":"loop"}"#,
        r#"{"op":"alloc"}"#,
        r#"{"op":"panic"}"#,
        r#"{"op":"recurse"}"#,
        r#"{"op":"exit"}"#,
    ] {
        let run = |p: &Plugin| {
            let out = apply(p, &Arc::new(MemoryKv::new()), 1, command);
            (
                out.result.expect_err(command).to_string(),
                out.writes,
                out.fuel_used,
            )
        };
        assert_eq!(run(&a), run(&b), "{command}");
    }
}
