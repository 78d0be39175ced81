//! Shared test support: builds the guest plugins from source once per test process
//! and hands out one runtime with an on-disk compiled-code cache.
//!
//! Guests build in `<target>/wasm-guests/`, a target directory of their own, so the
//! nested cargo never waits for the lock of the `cargo test` that runs us. Rust guests
//! rely on cargo's own incremental build; the Python and JavaScript components are
//! cached by a hash of their sources, the WIT and the tool version, since the tools
//! take seconds to minutes. A missing Python/JS toolchain skips those tests with a
//! message, unless `KEEL_REQUIRE_GUEST_TOOLCHAINS=1`.
#![allow(dead_code, unreachable_pub, missing_docs)]

use keel_plugin::{
    ApplyContext, ApplyOutcome, Limits, MemoryKv, Plugin, PluginId, Runtime, RuntimeConfig,
};
use sha2::{Digest, Sha256};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Arc, Mutex, OnceLock};

pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// `<target>/wasm-guests`, found from this test executable (`<target>/debug/deps/x`).
pub fn guest_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("test executable path");
    let target = exe
        .ancestors()
        .nth(3)
        .map(Path::to_path_buf)
        .unwrap_or_else(|| repo_root().join("target"));
    target.join("wasm-guests")
}

fn cargo() -> Command {
    let mut c = Command::new(std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into()));
    // Nothing of the outer build may leak into the guest build.
    for var in [
        "CARGO_TARGET_DIR",
        "CARGO_BUILD_TARGET",
        "RUSTFLAGS",
        "CARGO_ENCODED_RUSTFLAGS",
    ] {
        c.env_remove(var);
    }
    c
}

/// The Rust guests, compiled from `plugins/`.
pub struct RustGuests {
    pub kv: Vec<u8>,
    pub counter: Vec<u8>,
    pub misbehave: Vec<u8>,
    pub docstore: Vec<u8>,
}

pub fn rust_guests() -> &'static RustGuests {
    static GUESTS: OnceLock<RustGuests> = OnceLock::new();
    GUESTS.get_or_init(|| {
        let target = guest_dir();
        let status = cargo()
            .args(["build", "--release", "--target", "wasm32-wasip2", "--manifest-path"])
            .arg(repo_root().join("plugins/Cargo.toml"))
            .arg("--target-dir")
            .arg(&target)
            .status()
            .expect("run cargo to build the guest plugins");
        assert!(
            status.success(),
            "building the Rust guest plugins failed (is the wasm32-wasip2 target installed? run scripts/install-toolchains.sh)"
        );
        let read = |name: &str| {
            let path = target.join("wasm32-wasip2/release").join(format!("{name}.wasm"));
            std::fs::read(&path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()))
        };
        RustGuests {
            kv: read("keel_plugin_kv"),
            counter: read("keel_plugin_counter"),
            misbehave: read("keel_plugin_misbehave"),
            docstore: read("keel_plugin_docstore"),
        }
    })
}

/// A component built by an external tool from `sources`, cached by content.
/// `None` (with a message) when the tool is missing and not required.
fn external_guest(
    name: &str,
    tool: &str,
    version_args: &[&str],
    sources: &[PathBuf],
    build: impl FnOnce(&Path) -> Command,
) -> Option<Vec<u8>> {
    let version = match Command::new(tool).args(version_args).output() {
        Ok(out) if out.status.success() => out.stdout,
        _ => {
            let msg = format!("{tool} not found: run scripts/install-toolchains.sh");
            if std::env::var("KEEL_REQUIRE_GUEST_TOOLCHAINS").is_ok_and(|v| v == "1") {
                panic!("{msg}");
            }
            eprintln!("SKIPPED {name}: {msg}");
            return None;
        }
    };
    let mut h = Sha256::new();
    h.update(&version);
    for path in sources
        .iter()
        .chain([&repo_root().join("wit/keel-plugin.wit")])
    {
        h.update(path.to_string_lossy().as_bytes());
        h.update(std::fs::read(path).unwrap_or_else(|e| panic!("read {}: {e}", path.display())));
    }
    let hash: String = h
        .finalize()
        .iter()
        .take(8)
        .map(|b| format!("{b:02x}"))
        .collect();
    let dir = guest_dir().join("external");
    let out = dir.join(format!("{name}-{hash}.wasm"));
    if let Ok(bytes) = std::fs::read(&out) {
        return Some(bytes);
    }
    std::fs::create_dir_all(&dir).expect("create the guest output directory");
    let tmp = dir.join(format!("{name}-{hash}.{}.tmp.wasm", std::process::id()));
    let started = std::time::Instant::now();
    let output = build(&tmp)
        .output()
        .unwrap_or_else(|e| panic!("run {tool}: {e}"));
    assert!(
        output.status.success(),
        "building {name} with {tool} failed:\n{}\n{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    eprintln!("built {name} with {tool} in {:?}", started.elapsed());
    std::fs::rename(&tmp, &out).expect("move the built guest into place");
    Some(std::fs::read(&out).expect("read the built guest"))
}

/// `plugins/kv-py`, built with componentize-py.
pub fn python_kv() -> Option<&'static [u8]> {
    static GUEST: OnceLock<Option<Vec<u8>>> = OnceLock::new();
    GUEST
        .get_or_init(|| {
            let src = repo_root().join("plugins/kv-py");
            external_guest(
                "kv-py",
                "componentize-py",
                &["--version"],
                &[src.join("app.py")],
                |out| {
                    let mut c = Command::new("componentize-py");
                    c.arg("-d")
                        .arg(repo_root().join("wit"))
                        .args([
                            "-w",
                            "keel:plugin/state-machine",
                            "componentize",
                            "app",
                            "-p",
                        ])
                        .arg(&src)
                        .arg("-o")
                        .arg(out);
                    c
                },
            )
        })
        .as_deref()
}

/// `plugins/kv-js`, built with jco (componentize-js) from its own node_modules.
pub fn javascript_kv() -> Option<&'static [u8]> {
    static GUEST: OnceLock<Option<Vec<u8>>> = OnceLock::new();
    GUEST
        .get_or_init(|| {
            let src = repo_root().join("plugins/kv-js");
            let jco = src.join("node_modules/.bin/jco");
            let jco = jco.to_string_lossy().into_owned();
            let sources = [src.join("kv.js"), src.join("package-lock.json")];
            external_guest("kv-js", &jco, &["--version"], &sources, |out| {
                let mut c = Command::new(&jco);
                c.arg("componentize")
                    .arg(src.join("kv.js"))
                    .arg("--wit")
                    .arg(repo_root().join("wit"))
                    .args(["--world-name", "keel:plugin/state-machine"])
                    .args(["--disable", "all"])
                    .arg("-o")
                    .arg(out);
                c
            })
        })
        .as_deref()
}

/// One runtime per test process, caching compiled code beside the guests.
pub fn runtime() -> &'static Runtime {
    static RUNTIME: OnceLock<Runtime> = OnceLock::new();
    RUNTIME.get_or_init(|| {
        Runtime::new(RuntimeConfig {
            cache_dir: Some(guest_dir().join("compiled-cache")),
            ..RuntimeConfig::default()
        })
        .expect("create the plugin runtime")
    })
}

/// Loads with default limits on the shared runtime, once per (name, wasm) per process:
/// tests running in parallel threads would otherwise compile a big guest twice.
pub fn load(name: &str, wasm: &[u8]) -> Plugin {
    static LOADED: Mutex<BTreeMap<(String, Vec<u8>), Plugin>> = Mutex::new(BTreeMap::new());
    let key = (name.to_string(), Sha256::digest(wasm).to_vec());
    let mut loaded = LOADED.lock().unwrap_or_else(|e| e.into_inner());
    loaded
        .entry(key)
        .or_insert_with(|| {
            runtime()
                .load(PluginId::new(name, "1"), wasm, Limits::default())
                .unwrap_or_else(|e| panic!("load {name}: {e}"))
        })
        .clone()
}

pub fn ctx(index: u64) -> ApplyContext {
    ApplyContext {
        index,
        term: 1,
        timestamp_ms: 1_700_000_000_000 + index,
        client_id: None,
        attachments: Vec::new(),
    }
}

/// Applies `command` at `index` and commits its writes to `state`, as a node would.
pub fn apply(plugin: &Plugin, state: &Arc<MemoryKv>, index: u64, command: &str) -> ApplyOutcome {
    let outcome = plugin
        .apply(state.clone(), &ctx(index), command.as_bytes())
        .unwrap_or_else(|e| panic!("node-local failure applying {command}: {e}"));
    state.commit(&outcome.writes);
    outcome
}

/// The answer of a successful apply, as a string.
pub fn answer(outcome: ApplyOutcome) -> String {
    match outcome.result {
        Ok(bytes) => String::from_utf8(bytes).expect("UTF-8 answer"),
        Err(e) => panic!("command failed: {e}"),
    }
}

pub fn query(plugin: &Plugin, state: &Arc<MemoryKv>, q: &str) -> String {
    let bytes = plugin
        .query(state.clone(), q.as_bytes())
        .unwrap_or_else(|e| panic!("query {q}: {e}"));
    String::from_utf8(bytes).expect("UTF-8 answer")
}
