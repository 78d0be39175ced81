//! `keel new NAME --lang rust|python|js` writes a project that builds with one command into
//! a component the host loads, that passes its own test (`keel test`), and that runs on a
//! cluster once dropped into one node's plugin folder. Rust always; Python and
//! JavaScript when their toolchains are installed (scripts/install-toolchains.sh), else
//! skipped with a message, unless `KEEL_REQUIRE_GUEST_TOOLCHAINS=1`.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use keel::client::Client;

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

/// A built project: its directory and its component.
type Built = (PathBuf, Vec<u8>);

/// The built `demo.wasm` of each language's new project, built once per test run (the
/// cluster test reuses them); `None` when the language's toolchain is missing.
fn built(lang: &'static str) -> Option<Built> {
    static BUILT: OnceLock<Mutex<BTreeMap<&'static str, Option<Built>>>> = OnceLock::new();
    let cache = BUILT.get_or_init(Default::default);
    let mut cache = cache.lock().unwrap_or_else(|e| e.into_inner());
    cache.entry(lang).or_insert_with(|| build(lang)).clone()
}

/// Makes the `lang` project under a directory kept for the whole run, and builds it with
/// the command its README gives.
fn build(lang: &'static str) -> Option<Built> {
    let dir = tempfile::tempdir().expect("tempdir").keep();
    let at = new_project(&dir, lang);
    let wasm = match lang {
        "rust" => {
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
            target.join("wasm32-wasip2/release/demo.wasm")
        }
        "python" => {
            if Command::new("componentize-py")
                .arg("--version")
                .output()
                .is_err()
            {
                missing("componentize-py");
                return None;
            }
            let mut sh = Command::new("sh");
            sh.arg(at.join("build.sh"));
            run(sh, "build.sh");
            at.join("demo.wasm")
        }
        _ => {
            // The componentize-js that plugins/kv-js pins (`npm ci` there): the project's
            // package-lock pins the same; its `npm run build` runs this.
            let cjs = repo_root().join("plugins/kv-js/node_modules/.bin/componentize-js");
            if !cjs.exists() {
                missing("componentize-js (npm ci in plugins/kv-js)");
                return None;
            }
            let mut build = Command::new(&cjs);
            build.current_dir(&at).args([
                "plugin.js",
                "--wit",
                "wit",
                "--world-name",
                "keel:plugin/state-machine",
                "-d",
                "stdio",
                "random",
                "clocks",
                "http",
                "fetch-event",
                "-o",
                "demo.wasm",
            ]);
            run(build, "componentize-js (npm run build)");
            at.join("demo.wasm")
        }
    };
    let bytes = std::fs::read(&wasm).unwrap_or_else(|e| panic!("{}: {e}", wasm.display()));
    Some((at, bytes))
}

/// The project's own test, as its README runs it: `keel test demo.wasm test.json`.
fn own_test(at: &Path, wasm: &[u8]) {
    let file = at.join("built.wasm");
    std::fs::write(&file, wasm).expect("write");
    let out = Command::new(env!("CARGO_BIN_EXE_keel"))
        .arg("test")
        .arg(&file)
        .arg(at.join("test.json"))
        .output()
        .expect("run keel test");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "keel test failed:\n{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(text.contains("ok   deterministic"), "{text}");
}

fn builds_and_passes_its_own_test(lang: &'static str) {
    if let Some((at, wasm)) = built(lang) {
        own_test(&at, &wasm);
        check(&wasm);
    }
}

#[test]
fn a_new_rust_project_builds_with_cargo_and_passes_its_own_test() {
    builds_and_passes_its_own_test("rust");
}

#[test]
fn a_new_python_project_builds_with_componentize_py_and_passes_its_own_test() {
    builds_and_passes_its_own_test("python");
}

#[test]
fn a_new_javascript_project_builds_with_componentize_js_and_passes_its_own_test() {
    builds_and_passes_its_own_test("js");
}

/// Issue #12: each template, dropped into one node's plugin folder of a 3-node cluster, is
/// deployed cluster-wide; a command submitted on another node is applied, and a third
/// node answers the query.
#[test]
fn each_template_dropped_into_one_nodes_folder_serves_commands_on_the_others() {
    let cluster = common::start_nodes(3, |cfg| cfg.plugin_debounce_ms = 300);
    let rt = common::rt();
    rt.block_on(common::wait_for_leader(
        &cluster.urls,
        Duration::from_secs(30),
    ));
    let folder = keel::config::NodeConfig::load(&cluster.configs[0])
        .expect("config")
        .plugins_dir();
    std::fs::create_dir_all(&folder).expect("plugin folder");
    for lang in ["rust", "python", "js"] {
        let Some((_, wasm)) = built(lang) else {
            continue;
        };
        let name = format!("demo-{lang}");
        // Renamed in: a complete file at once.
        let part = folder.join(format!(".{name}.wasm.part"));
        std::fs::write(&part, &wasm).expect("write");
        std::fs::rename(&part, folder.join(format!("{name}.wasm"))).expect("rename");
        let marker = folder.join(format!("{name}.wasm.deployed"));
        let start = Instant::now();
        while !marker.exists() {
            let failed = folder.join(format!("{name}.wasm.failed"));
            assert!(
                !failed.exists(),
                "{lang}: {}",
                std::fs::read_to_string(&failed).unwrap_or_default()
            );
            assert!(
                start.elapsed() < Duration::from_secs(90),
                "{lang}: never deployed"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        rt.block_on(async {
            let mut on_two =
                Client::new(vec![cluster.urls[1].clone()]).with_deadline(Duration::from_secs(30));
            let cmd = br#"{"op":"add","name":"visits","by":5}"#.to_vec();
            // Node 2 may apply the deploy a moment after node 1 wrote its marker.
            let start = Instant::now();
            let a = loop {
                let a = on_two.submit(&name, cmd.clone()).await.expect("submit");
                if a.status.as_u16() != 404 || start.elapsed() > Duration::from_secs(30) {
                    break a;
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            };
            assert_eq!(
                a.status.as_u16(),
                200,
                "{lang}: {}",
                String::from_utf8_lossy(&a.body)
            );
            assert_eq!(String::from_utf8_lossy(&a.body), r#"{"value":5}"#, "{lang}");
            let mut on_three =
                Client::new(vec![cluster.urls[2].clone()]).with_deadline(Duration::from_secs(30));
            let q = on_three
                .query(
                    &name,
                    br#"{"op":"get","name":"visits"}"#.to_vec(),
                    "linearizable",
                )
                .await
                .expect("query");
            assert_eq!(String::from_utf8_lossy(&q.body), r#"{"value":5}"#, "{lang}");

            // The SDK's blob helpers at work: a blob attached on node 2, retained by the
            // plugin, read back whole by a query on node 3.
            let doc = format!("a document for the {lang} template\n").repeat(5_000);
            let sha = common::upload_blob(&mut on_two, doc.clone().into_bytes()).await;
            let keep = br#"{"op":"keep","name":"docs"}"#.to_vec();
            let a = on_two
                .submit_with(&name, keep, &[("keel-attach", sha)])
                .await
                .expect("keep");
            assert_eq!(
                String::from_utf8_lossy(&a.body),
                r#"{"kept":1}"#,
                "{lang}: {}",
                a.status
            );
            let q = on_three
                .query(
                    &name,
                    br#"{"op":"kept","name":"docs"}"#.to_vec(),
                    "linearizable",
                )
                .await
                .expect("query");
            let want = serde_json::json!({"blobs": 1, "bytes": doc.len(), "first": b'a'});
            let got: serde_json::Value = serde_json::from_slice(&q.body)
                .unwrap_or_else(|_| panic!("{lang}: {}", String::from_utf8_lossy(&q.body)));
            assert_eq!(got, want, "{lang}");
        });
    }
}
