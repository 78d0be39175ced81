//! Plugin benchmark (not a test):
//!
//! ```sh
//! cargo run --release -p keel-plugin --example plugin_bench
//! ```
//!
//! Measures, for the Rust kv plugin and (when their toolchains are installed) the
//! Python and JavaScript ones: first load (compile) vs cached load, instantiation of
//! a fresh instance, and the amortised cost of one `apply` (one kv get + one kv set)
//! under Keel's instance policy (a fresh instance per call), next to the same call on
//! a reused instance (what the policy costs). Arguments: `[applies] [rust-only]`.

#[path = "../tests/common/mod.rs"]
mod common;

use keel_plugin::{
    ApplyContext, CodeSource, Limits, MemoryKv, Plugin, PluginId, Runtime, RuntimeConfig,
};
use std::sync::Arc;
use std::time::{Duration, Instant};

fn per(d: Duration, n: u32) -> String {
    let ns = d.as_nanos() as f64 / f64::from(n);
    if ns >= 1e6 {
        format!("{:.2} ms", ns / 1e6)
    } else {
        format!("{:.2} µs", ns / 1e3)
    }
}

fn bench(name: &str, wasm: &[u8], applies: u32) {
    let cache = tempfile::tempdir().expect("tempdir");
    let node = || {
        Runtime::new(RuntimeConfig {
            cache_dir: Some(cache.path().to_path_buf()),
            ..RuntimeConfig::default()
        })
        .expect("runtime")
    };
    let id = PluginId::new(name, "1");
    let load = |rt: &Runtime| -> (Plugin, Duration) {
        let t = Instant::now();
        let p = rt.load(id.clone(), wasm, Limits::default()).expect("load");
        (p, t.elapsed())
    };
    let (_, compile) = load(&node());
    let rt = node();
    let (plugin, cached) = load(&rt);
    assert_eq!(plugin.code_source(), CodeSource::Cache);

    let n_inst = (applies / 2).max(10);
    for _ in 0..n_inst.min(100) {
        plugin.probe().expect("probe");
    }
    let t = Instant::now();
    for _ in 0..n_inst {
        plugin.probe().expect("probe");
    }
    let inst = t.elapsed();

    let state = Arc::new(MemoryKv::new());
    let ctx = |i: u64| ApplyContext {
        index: i,
        term: 1,
        timestamp_ms: 1_700_000_000_000,
        client_id: None,
        attachments: Vec::new(),
    };
    // Keys over 10,000 (like the load scripts), 100-byte values: a get and a set each.
    let value = "v".repeat(100);
    let cmd = |i: u64| {
        format!(
            r#"{{"op":"put","key":"key-{:010}","value":"{value}"}}"#,
            i % 10_000
        )
    };
    for i in 1..=u64::from(applies.min(1000)) {
        let out = plugin
            .apply(state.clone(), &ctx(i), cmd(i).as_bytes())
            .expect("apply");
        state.commit(&out.writes);
    }
    let t = Instant::now();
    let mut fuel = 0;
    for i in 1..=u64::from(applies) {
        let out = plugin
            .apply(state.clone(), &ctx(i), cmd(i).as_bytes())
            .expect("apply");
        out.result.as_ref().expect("put succeeds");
        fuel += out.fuel_used;
        state.commit(&out.writes);
    }
    let fresh = t.elapsed();
    // One log entry carrying 16 commands: one fresh instance per entry.
    const PER_ENTRY: u64 = 16;
    let entries = (u64::from(applies) / PER_ENTRY).max(1);
    let t = Instant::now();
    for e in 0..entries {
        let cmds: Vec<String> = (0..PER_ENTRY).map(|j| cmd(e * PER_ENTRY + j)).collect();
        let batch: Vec<(ApplyContext, &[u8])> =
            cmds.iter().map(|c| (ctx(e + 1), c.as_bytes())).collect();
        for out in plugin.apply_batch(state.clone(), &batch).expect("batch") {
            out.result.as_ref().expect("put succeeds");
            state.commit(&out.writes);
        }
    }
    let batched = t.elapsed();
    let reused = plugin
        .bench_reused_instance(state.clone(), &ctx(1), cmd(7).as_bytes(), applies)
        .expect("reused");

    println!(
        "{name:>6}: wasm {:>6} KiB | compile {:>9} | cached load {:>9} | instantiate {:>9} | apply, fresh instance (policy) {:>9} = {:>7.0}/s | apply, 16 per entry {:>9} | apply, reused instance {:>9} | fuel/apply {}",
        wasm.len() / 1024,
        per(compile, 1),
        per(cached, 1),
        per(inst, n_inst),
        per(fresh, applies),
        f64::from(applies) / fresh.as_secs_f64(),
        per(batched, (entries * PER_ENTRY) as u32),
        per(reused, applies),
        fuel / u64::from(applies),
    );
}

fn main() {
    let applies: u32 = std::env::args()
        .nth(1)
        .and_then(|a| a.parse().ok())
        .unwrap_or(20_000);
    bench("rust", &common::rust_guests().kv, applies);
    match common::python_kv() {
        Some(wasm) => bench("python", wasm, applies / 20),
        None => println!("python: skipped (componentize-py missing)"),
    }
    match common::javascript_kv() {
        Some(wasm) => bench("js", wasm, applies / 20),
        None => println!("    js: skipped (jco missing)"),
    }
}
