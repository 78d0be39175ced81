//! The malicious-plugin corpus: every way a plugin can misbehave is contained with a
//! clear, deterministic error, and the host keeps serving other plugins.

mod common;

use common::{apply, ctx, load, runtime, rust_guests};
use keel_plugin::{
    KvView, Limits, MAX_RESULT_BYTES, MemoryKv, PluginError, PluginId, Runtime, RuntimeConfig,
    StorageError,
};
use std::sync::Arc;
use std::time::{Duration, Instant};

fn misbehave() -> keel_plugin::Plugin {
    load("misbehave", &rust_guests().misbehave)
}

/// Applies a misbehave command that must fail; returns the deterministic failure.
fn failure(command: &str) -> PluginError {
    let state = Arc::new(MemoryKv::new());
    let outcome = apply(&misbehave(), &state, 1, command);
    assert!(
        outcome.writes.is_empty(),
        "{command}: a failed call writes nothing"
    );
    let err = outcome.result.expect_err(command);
    assert!(err.is_deterministic(), "{command}: {err}");
    err
}

fn load_error(name: &str, wasm: &[u8]) -> PluginError {
    match runtime().load(PluginId::new(name, "1"), wasm, Limits::default()) {
        Ok(_) => panic!("{name} must not load"),
        Err(e) => e,
    }
}

#[test]
fn an_infinite_loop_runs_out_of_fuel() {
    let started = Instant::now();
    let err = failure(r#"{"op":"loop"}"#);
    assert!(
        matches!(
            err,
            PluginError::FuelExhausted {
                budget: 100_000_000,
                ..
            }
        ),
        "{err}"
    );
    assert_eq!(
        err.to_string(),
        "plugin misbehave@1: ran out of fuel (budget 100000000)"
    );
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "fuel, not the backstop, stopped it"
    );
}

#[test]
fn unbounded_allocation_hits_the_memory_limit() {
    let err = failure(r#"{"op":"alloc"}"#);
    assert!(
        matches!(err, PluginError::MemoryLimit { limit, .. } if limit == 128 << 20),
        "{err}"
    );
}

#[test]
fn unbounded_recursion_exhausts_the_stack_and_traps() {
    let err = failure(r#"{"op":"recurse"}"#);
    let PluginError::Trap { reason, .. } = &err else {
        panic!("{err}")
    };
    assert!(reason.contains("call stack exhausted"), "{reason}");
}

#[test]
fn a_panic_is_a_trap() {
    let err = failure(r#"{"op":"panic"}"#);
    let PluginError::Trap { reason, .. } = &err else {
        panic!("{err}")
    };
    assert!(reason.contains("unreachable"), "{reason}");
}

#[test]
fn an_oversized_answer_is_refused() {
    // Encoding megabytes of JSON takes more than the default budget.
    let limits = Limits {
        fuel: 5_000_000_000,
        ..Limits::default()
    };
    let plugin = runtime()
        .load(
            PluginId::new("misbehave", "1"),
            &rust_guests().misbehave,
            limits,
        )
        .expect("load");
    let command = format!(r#"{{"op":"big","len":{}}}"#, MAX_RESULT_BYTES + 1);
    let outcome = apply(&plugin, &Arc::new(MemoryKv::new()), 1, &command);
    let err = outcome.result.expect_err("too big");
    assert!(
        matches!(err, PluginError::ResultTooLarge { len, limit, .. } if len == MAX_RESULT_BYTES + 3 && limit == MAX_RESULT_BYTES),
        "{err}"
    );
}

#[test]
fn exiting_is_a_failure_with_its_status() {
    // The guest calls `exit(3)`; WASI 0.2's `exit(result)` can only say failure (1).
    let err = failure(r#"{"op":"exit"}"#);
    assert!(
        matches!(err, PluginError::Exited { status: 1, .. }),
        "{err}"
    );
}

#[test]
fn sleeping_is_refused_instead_of_blocking_the_apply_loop() {
    let started = Instant::now();
    let err = failure(r#"{"op":"sleep"}"#);
    let PluginError::Trap { reason, .. } = &err else {
        panic!("{err}")
    };
    assert!(reason.contains("cannot sleep"), "{reason}");
    assert!(started.elapsed() < Duration::from_secs(10));
}

#[test]
fn a_component_importing_something_keel_does_not_provide_fails_to_load() {
    let evil = r#"(component
        (import "evil:net/socket@0.1.0" (instance (export "connect" (func (param "host" string)))))
    )"#;
    let err = load_error("evil", evil.as_bytes());
    assert!(
        matches!(err, PluginError::UnsatisfiedImport { .. }),
        "{err}"
    );
    assert!(err.to_string().contains("evil:net/socket"), "{err}");
}

#[test]
fn the_network_is_unreachable_deterministically() {
    let state = Arc::new(MemoryKv::new());
    let out = apply(&misbehave(), &state, 1, r#"{"op":"net"}"#);
    assert_eq!(
        out.result.ok(),
        Some(br#""connect failed: PermissionDenied""#.to_vec())
    );
}

#[test]
fn a_core_module_is_not_a_component() {
    // `(module)` in binary form.
    let err = load_error("core", b"\0asm\x01\0\0\0");
    assert_eq!(
        err.to_string(),
        "plugin core@1: a core wasm module, not a component (build for wasm32-wasip2)"
    );
}

#[test]
fn garbage_bytes_are_invalid_wasm() {
    let err = load_error("garbage", &[0xde, 0xad, 0xbe, 0xef, 0, 1, 2, 3, 0xff]);
    assert!(matches!(err, PluginError::InvalidWasm { .. }), "{err}");
    assert!(
        err.to_string()
            .starts_with("plugin garbage@1: invalid wasm:"),
        "{err}"
    );
}

#[test]
fn a_component_without_the_world_exports_fails_to_load() {
    let err = load_error("empty", b"(component)");
    assert!(matches!(err, PluginError::MissingExport { .. }), "{err}");
    assert!(err.to_string().contains("apply"), "{err}");
}

#[test]
fn limits_beyond_the_hosts_range_are_refused() {
    let limits = Limits {
        fuel: 1,
        memory_bytes: 4 << 30,
    };
    let err = runtime()
        .load(PluginId::new("kv", "1"), &rust_guests().kv, limits)
        .err()
        .expect("4 GiB is beyond the pool's slot");
    assert!(matches!(err, PluginError::BadLimits { .. }), "{err}");
}

#[test]
fn the_host_keeps_serving_other_plugins_between_misbehaving_calls() {
    let kv = load("kv", &rust_guests().kv);
    let bad = misbehave();
    let state = Arc::new(MemoryKv::new());
    let bad_state = Arc::new(MemoryKv::new());
    let commands = [
        r#"{"op":"loop"}"#,
        r#"{"op":"alloc"}"#,
        r#"{"op":"panic"}"#,
        r#"{"op":"recurse"}"#,
    ];
    for (i, c) in commands.iter().enumerate() {
        let index = i as u64 + 1;
        assert!(apply(&bad, &bad_state, index, c).result.is_err());
        let put = format!(r#"{{"op":"put","key":"k{i}","value":"v"}}"#);
        assert_eq!(
            apply(&kv, &state, index, &put).result.ok(),
            Some(br#"{"prev":null}"#.to_vec())
        );
    }
    assert_eq!(state.dump().len(), commands.len());
    // The misbehaving plugin itself still serves well-formed commands.
    assert!(
        apply(&bad, &bad_state, 9, r#"{"op":"put","key":"x","value":"y"}"#)
            .result
            .is_ok()
    );
}

#[test]
fn the_wall_clock_backstop_is_reported_as_node_local() {
    let rt = Runtime::new(RuntimeConfig {
        backstop: Duration::from_millis(200),
        ..RuntimeConfig::default()
    })
    .expect("runtime");
    let limits = Limits {
        fuel: keel_plugin::MAX_FUEL,
        ..Limits::default()
    };
    let plugin = rt
        .load(
            PluginId::new("misbehave", "1"),
            &rust_guests().misbehave,
            limits,
        )
        .expect("load");
    let err = plugin
        .apply(Arc::new(MemoryKv::new()), &ctx(1), br#"{"op":"loop"}"#)
        .expect_err("the backstop stops the loop and apply reports it as node-local");
    assert!(matches!(err, PluginError::Deadline { .. }), "{err}");
    assert!(!err.is_deterministic());
}

/// A view whose storage is broken.
struct BrokenStorage;

impl KvView for BrokenStorage {
    fn get(&self, _key: &[u8]) -> Result<Option<Vec<u8>>, StorageError> {
        Err("disk on fire".into())
    }
    fn range(
        &self,
        _: &[u8],
        _: Option<&[u8]>,
        _: usize,
    ) -> Result<keel_plugin::Entries, StorageError> {
        Err("disk on fire".into())
    }
}

#[test]
fn a_storage_failure_is_node_local_not_a_command_result() {
    let kv = load("kv", &rust_guests().kv);
    let err = kv
        .apply(
            Arc::new(BrokenStorage),
            &ctx(1),
            br#"{"op":"put","key":"a","value":"1"}"#,
        )
        .expect_err("storage failures are not recorded as results");
    assert!(matches!(err, PluginError::Storage { .. }), "{err}");
    assert!(!err.is_deterministic());
    assert_eq!(
        err.to_string(),
        "plugin kv@1: storage failed during the call: disk on fire"
    );
}
