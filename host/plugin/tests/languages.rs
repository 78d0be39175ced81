//! The kv plugin in Rust, Python (componentize-py) and JavaScript (componentize-js)
//! is one state machine: the same commands give the same answers and leave
//! byte-identical KV state. Python/JS are skipped with a message when their
//! toolchain is missing (see scripts/install-toolchains.sh).

mod common;

use common::{apply, javascript_kv, load, python_kv, query, rust_guests};
use keel_plugin::{MemoryKv, Plugin};
use std::sync::Arc;

/// One command sequence covering every command and edge of the contract.
const COMMANDS: &[&str] = &[
    r#"{"op":"put","key":"a","value":"1"}"#,
    r#"{"op":"put","key":"a","value":"2"}"#,
    r#"{"op":"cas","key":"a","expect":"1","value":"3"}"#,
    r#"{"op":"cas","key":"a","expect":"2","value":"3"}"#,
    r#"{"op":"cas","key":"new","expect":null,"value":"fresh"}"#,
    r#"{"op":"cas","key":"new","expect":null,"value":"again"}"#,
    r#"{"op":"put","key":"users/ünï","value":"ça va \"quoted\" \\ \n line"}"#,
    r#"{"op":"put","key":"users/bob","value":""}"#,
    r#"{"op":"put","key":"users/alice","value":"{\"json\":[1,2]}"}"#,
    r#"{"op":"put","key":"usersz","value":"outside the prefix"}"#,
    r#"{"op":"delete","key":"new"}"#,
    r#"{"op":"delete","key":"missing"}"#,
    r#"{"op":"put","key":"emoji","value":"🦀🐍🟨"}"#,
];

const QUERIES: &[&str] = &[
    r#"{"op":"get","key":"a"}"#,
    r#"{"op":"get","key":"missing"}"#,
    r#"{"op":"range","prefix":"users/","limit":2}"#,
    r#"{"op":"range","prefix":"users/","limit":50}"#,
    r#"{"op":"range","prefix":"","limit":100}"#,
    r#"{"op":"range","prefix":"users/"}"#,
];

/// Runs the sequence; returns every answer and the final state.
fn run(plugin: &Plugin) -> (Vec<String>, keel_plugin::Entries) {
    let state = Arc::new(MemoryKv::new());
    let mut answers = Vec::new();
    for (i, c) in COMMANDS.iter().enumerate() {
        let out = apply(plugin, &state, i as u64 + 1, c);
        let answer = out.result.unwrap_or_else(|e| panic!("{c}: {e}"));
        answers.push(String::from_utf8(answer).expect("UTF-8"));
    }
    for q in QUERIES {
        answers.push(query(plugin, &state, q));
    }
    (answers, state.dump())
}

fn same_as_rust(name: &str, wasm: Option<&[u8]>) {
    let Some(wasm) = wasm else { return };
    let expected = run(&load("kv", &rust_guests().kv));
    let got = run(&load(name, wasm));
    for (i, (want, have)) in expected.0.iter().zip(&got.0).enumerate() {
        assert_eq!(want, have, "{name}: answer {i} differs");
    }
    assert_eq!(expected.1, got.1, "{name}: KV state differs");
    assert_eq!(expected.1.len(), 6);
}

#[test]
fn the_python_kv_plugin_matches_the_rust_one_byte_for_byte() {
    same_as_rust("kv-py", python_kv());
}

#[test]
fn the_javascript_kv_plugin_matches_the_rust_one_byte_for_byte() {
    same_as_rust("kv-js", javascript_kv());
}

#[test]
fn python_and_javascript_reject_a_malformed_command_without_writing() {
    for (name, wasm) in [("kv-py", python_kv()), ("kv-js", javascript_kv())] {
        let Some(wasm) = wasm else { continue };
        let plugin = load(name, wasm);
        let state = Arc::new(MemoryKv::new());
        let out = apply(&plugin, &state, 1, r#"{"op":"put","key":"a"}"#);
        let err = out.result.expect_err(name);
        assert!(err.is_deterministic());
        assert!(err.to_string().contains("invalid command"), "{name}: {err}");
        assert!(state.dump().is_empty(), "{name}");
    }
}
