//! `keel new NAME --lang rust|python|js` writes a project that builds with one command into
//! a component the host loads, whose commands and query work. Rust always; Python and
//! JavaScript when their toolchains are installed (scripts/install-toolchains.sh), else
//! skipped with a message, unless `KEEL_REQUIRE_GUEST_TOOLCHAINS=1`.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;

use keel_plugin::{ApplyContext, Limits, MemoryKv, PluginId, Runtime, RuntimeConfig};

mod common;

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// Runs `keel new demo --lang LANG` into a fresh directory; returns it.
fn new_project(dir: &Path, lang: &str) -> PathBuf {
    let at = dir.join(lang);
    let out = Command::new(env!("CARGO_BIN_EXE_keel"))
        .args(["new", "demo", "--lang", lang, "--dir"])
        .arg(&at)
        .output()
        .expect("run keel new");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    at
}

fn run(mut cmd: Command, what: &str) {
    let out = cmd.output().unwrap_or_else(|e| panic!("{what}: {e}"));
    assert!(
        out.status.success(),
        "{what} failed:\n{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A toolchain is missing: skip, unless the run requires every guest toolchain.
fn missing(what: &str) {
    let msg = format!("{what} is not installed (scripts/install-toolchains.sh)");
    if std::env::var("KEEL_REQUIRE_GUEST_TOOLCHAINS").is_ok_and(|v| v == "1") {
        panic!("{msg}");
    }
    eprintln!("SKIPPED: {msg}");
}

/// Loads the component and runs the skeleton's commands and query.
fn check(wasm: &[u8]) {
    let runtime = Runtime::new(RuntimeConfig::default()).expect("runtime");
    let plugin = runtime
        .load(PluginId::new("demo", "1"), wasm, Limits::default())
        .unwrap_or_else(|e| panic!("the template's component does not load: {e}"));
    let state = Arc::new(MemoryKv::new());
    for (i, by) in [5, 3].iter().enumerate() {
        let ctx = ApplyContext {
            index: i as u64 + 1,
            term: 1,
            timestamp_ms: 1,
            client_id: None,
            attachments: Vec::new(),
        };
        let cmd = format!(r#"{{"op":"add","name":"visits","by":{by}}}"#);
        let out = plugin
            .apply(state.clone(), &ctx, cmd.as_bytes())
            .expect("apply");
        assert!(out.result.is_ok(), "{cmd}: {:?}", out.result);
        state.commit(&out.writes);
    }
    let answer = plugin
        .query(state.clone(), br#"{"op":"get","name":"visits"}"#)
        .expect("query");
    assert_eq!(String::from_utf8_lossy(&answer), r#"{"value":8}"#);
}

#[test]
fn a_new_rust_project_builds_with_cargo_and_runs() {
    let dir = tempfile::tempdir().expect("tempdir");
    let at = new_project(dir.path(), "rust");
    let target = common::guest_target();
    let mut cargo = common::guest_cargo();
    cargo
        .current_dir(&at)
        .args([
            "build",
            "--release",
            "--target",
            "wasm32-wasip2",
            "--target-dir",
        ])
        .arg(&target);
    run(cargo, "cargo build of the new project");
    let wasm = std::fs::read(target.join("wasm32-wasip2/release/demo.wasm")).expect("demo.wasm");
    check(&wasm);
}

#[test]
fn a_new_python_project_builds_with_componentize_py_and_runs() {
    if Command::new("componentize-py")
        .arg("--version")
        .output()
        .is_err()
    {
        return missing("componentize-py");
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let at = new_project(dir.path(), "python");
    let mut sh = Command::new("sh");
    sh.arg(at.join("build.sh"));
    run(sh, "build.sh");
    check(&std::fs::read(at.join("demo.wasm")).expect("demo.wasm"));
}

#[test]
fn a_new_javascript_project_builds_with_jco_and_runs() {
    // The jco that plugins/kv-js pins (`npm ci` there): the project pins the same.
    let jco = repo_root().join("plugins/kv-js/node_modules/.bin/jco");
    if !jco.exists() {
        return missing("jco (npm ci in plugins/kv-js)");
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let at = new_project(dir.path(), "js");
    let mut build = Command::new(&jco);
    build.current_dir(&at).args([
        "componentize",
        "plugin.js",
        "--wit",
        "wit",
        "--world-name",
        "keel:plugin/state-machine",
        "--disable",
        "all",
        "-o",
        "demo.wasm",
    ]);
    run(build, "jco componentize (npm run build)");
    check(&std::fs::read(at.join("demo.wasm")).expect("demo.wasm"));
}
