//! The Rust example plugins through the real host: the kv JSON contract other tools
//! depend on, the counter, validation, and all-or-nothing writes.

mod common;

use common::{answer, apply, load, query, rust_guests};
use keel_plugin::{MemoryKv, PluginError};
use std::sync::Arc;

#[test]
fn kv_plugin_answers_exactly_the_documented_json_contract() {
    let kv = load("kv", &rust_guests().kv);
    let state = Arc::new(MemoryKv::new());
    let mut i = 0;
    let mut run = |cmd: &str| {
        i += 1;
        answer(apply(&kv, &state, i, cmd))
    };
    assert_eq!(
        run(r#"{"op":"put","key":"a","value":"1"}"#),
        r#"{"prev":null}"#
    );
    assert_eq!(
        run(r#"{"op":"put","key":"a","value":"2"}"#),
        r#"{"prev":"1"}"#
    );
    assert_eq!(
        run(r#"{"op":"cas","key":"a","expect":"1","value":"3"}"#),
        r#"{"ok":false,"current":"2"}"#
    );
    assert_eq!(
        run(r#"{"op":"cas","key":"a","expect":"2","value":"3"}"#),
        r#"{"ok":true,"current":"3"}"#
    );
    assert_eq!(
        run(r#"{"op":"cas","key":"b","expect":null,"value":"x"}"#),
        r#"{"ok":true,"current":"x"}"#
    );
    assert_eq!(
        run(r#"{"op":"cas","key":"b","expect":null,"value":"y"}"#),
        r#"{"ok":false,"current":"x"}"#
    );
    assert_eq!(run(r#"{"op":"delete","key":"b"}"#), r#"{"prev":"x"}"#);
    assert_eq!(run(r#"{"op":"delete","key":"b"}"#), r#"{"prev":null}"#);
    for (k, v) in [
        ("p/2", "two"),
        ("p/1", "one"),
        ("p/3", "three"),
        ("q", "no"),
    ] {
        run(&format!(r#"{{"op":"put","key":"{k}","value":"{v}"}}"#));
    }

    assert_eq!(
        query(&kv, &state, r#"{"op":"get","key":"a"}"#),
        r#"{"value":"3"}"#
    );
    assert_eq!(
        query(&kv, &state, r#"{"op":"get","key":"b"}"#),
        r#"{"value":null}"#
    );
    assert_eq!(
        query(&kv, &state, r#"{"op":"range","prefix":"p/","limit":2}"#),
        r#"{"items":[["p/1","one"],["p/2","two"]]}"#
    );
    assert_eq!(
        query(&kv, &state, r#"{"op":"range","prefix":"p/","limit":10}"#),
        r#"{"items":[["p/1","one"],["p/2","two"],["p/3","three"]]}"#
    );
    // The state is the strings' UTF-8 bytes, nothing else.
    let keys: Vec<_> = state.dump().into_iter().map(|(k, _)| k).collect();
    assert_eq!(keys, [&b"a"[..], b"p/1", b"p/2", b"p/3", b"q"]);
}

#[test]
fn a_malformed_command_fails_deterministically_and_writes_nothing() {
    let kv = load("kv", &rust_guests().kv);
    let state = Arc::new(MemoryKv::new());
    let outcome = apply(&kv, &state, 1, r#"{"op":"put","key":"a"}"#);
    match outcome.result {
        Err(e @ PluginError::Rejected { .. }) => {
            assert!(e.is_deterministic());
            assert!(
                e.to_string().starts_with("plugin kv@1: invalid command:"),
                "{e}"
            );
        }
        other => panic!("expected a rejection, got {other:?}"),
    }
    assert!(outcome.writes.is_empty());
}

#[test]
fn writes_of_a_failed_apply_are_discarded_and_successful_ones_returned_in_key_order() {
    let misbehave = load("misbehave", &rust_guests().misbehave);
    let state = Arc::new(MemoryKv::new());
    let failed = apply(
        &misbehave,
        &state,
        1,
        r#"{"op":"write-then-fail","count":5}"#,
    );
    assert!(matches!(failed.result, Err(PluginError::Rejected { .. })));
    assert!(failed.writes.is_empty());
    assert!(state.dump().is_empty());

    let kv = load("kv", &rust_guests().kv);
    let ok = apply(&kv, &state, 2, r#"{"op":"put","key":"k","value":"v"}"#);
    assert_eq!(ok.writes, vec![(b"k".to_vec(), Some(b"v".to_vec()))]);
    assert!(ok.fuel_used > 0);
}

#[test]
fn a_query_cannot_write() {
    let misbehave = load("misbehave", &rust_guests().misbehave);
    let state = Arc::new(MemoryKv::new());
    let err = misbehave
        .query(state.clone(), br#""key""#)
        .expect_err("the write must be refused");
    assert_eq!(
        err.to_string(),
        "plugin misbehave@1: kv: writes are not allowed here"
    );
    assert!(state.dump().is_empty());
}

#[test]
fn counter_plugin_counts_and_refuses_overflow_without_changing_state() {
    let counter = load("counter", &rust_guests().counter);
    let state = Arc::new(MemoryKv::new());
    assert_eq!(
        answer(apply(
            &counter,
            &state,
            1,
            r#"{"op":"add","name":"c","by":5}"#
        )),
        r#"{"value":5}"#
    );
    assert_eq!(
        answer(apply(
            &counter,
            &state,
            2,
            r#"{"op":"add","name":"c","by":-7}"#
        )),
        r#"{"value":-2}"#
    );
    let overflow = apply(
        &counter,
        &state,
        3,
        &format!(r#"{{"op":"add","name":"c","by":{}}}"#, i64::MIN),
    );
    assert!(
        matches!(overflow.result, Err(PluginError::Rejected { ref message, .. }) if message == "counter c would overflow")
    );
    assert_eq!(
        query(&counter, &state, r#"{"op":"get","name":"c"}"#),
        r#"{"value":-2}"#
    );
    assert_eq!(
        answer(apply(&counter, &state, 4, r#"{"op":"reset","name":"c"}"#)),
        r#"{"value":0}"#
    );
    assert!(state.dump().is_empty());
}

#[test]
fn validate_refuses_a_bad_command_before_it_is_proposed() {
    let counter = load("counter", &rust_guests().counter);
    let state = Arc::new(MemoryKv::new());
    assert!(counter.has_validate());
    assert!(
        counter
            .validate(state.clone(), br#"{"op":"add","name":"ok","by":1}"#)
            .is_ok()
    );
    let err = counter
        .validate(state.clone(), br#"{"op":"add","name":"","by":1}"#)
        .expect_err("empty name");
    assert_eq!(
        err.to_string(),
        "plugin counter@1: a counter name has 1 to 64 bytes"
    );
    assert!(counter.validate(state, b"not json").is_err());
}

/// `query_within` (how a node answers short queries on the thread it is on): within its
/// slice it answers exactly what `query` answers; past it, `None` (never a wrong or partial
/// answer, never an error a full run would not give), so the caller runs it again fully.
#[test]
fn a_query_within_a_slice_answers_as_a_full_one_or_says_it_ran_out() {
    let kv = load("kv", &rust_guests().kv);
    let state = Arc::new(MemoryKv::new());
    for i in 0..300 {
        apply(
            &kv,
            &state,
            i + 1,
            &format!(
                r#"{{"op":"put","key":"p/{i:04}","value":"{}"}}"#,
                "v".repeat(100)
            ),
        );
    }
    let short = br#"{"op":"get","key":"p/0007"}"#;
    let long = br#"{"op":"range","prefix":"p/","limit":300}"#;
    let full = |q: &[u8]| kv.query(state.clone(), q).expect("full query");
    assert_eq!(
        kv.query_within(state.clone(), short, 2_000_000)
            .expect("no error"),
        Some(full(short))
    );
    assert_eq!(
        kv.query_within(state.clone(), long, 2_000)
            .expect("no error"),
        None,
        "a range over 300 keys fits in 2,000 fuel"
    );
    assert_eq!(
        kv.query_within(state.clone(), long, u64::MAX)
            .expect("no error"),
        Some(full(long))
    );
    // A refusal is the same refusal within a slice.
    let bad = b"not json";
    let refused = kv
        .query(state.clone(), bad)
        .expect_err("refused")
        .to_string();
    let within = kv
        .query_within(state.clone(), bad, 2_000_000)
        .expect_err("refused")
        .to_string();
    assert_eq!(within, refused);
}
