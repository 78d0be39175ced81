//! Builds the example kv plugin for `wasm32-wasip2` and embeds it in the `keel` binary, so
//! that `keel dev` runs a working cluster with no files beside it.
//!
//! The guest builds in its own target directory (`<target>/wasm-guests`, shared with the
//! plugin tests): a nested cargo on the outer build's directory would wait on its lock.

use std::path::PathBuf;
use std::process::Command;

fn main() {
    // Read at run time, not compiled in (`env!`): one target directory shared by two
    // checkouts (CI's clone and a developer's tree) may reuse this script's binary, which
    // must then build the plugin of the checkout being built, not of the one that built it.
    let manifest_dir = PathBuf::from(
        std::env::var_os("CARGO_MANIFEST_DIR").expect("cargo sets CARGO_MANIFEST_DIR"),
    );
    let root = manifest_dir.join("..");
    for watched in [
        "plugins/kv/src",
        "plugins/kv/Cargo.toml",
        "guest-sdk/src",
        "guest-sdk/Cargo.toml",
        "wit",
    ] {
        println!("cargo:rerun-if-changed={}", root.join(watched).display());
    }
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| root.join("target"))
        .join("wasm-guests");
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let mut cmd = Command::new(cargo);
    for var in [
        "CARGO_TARGET_DIR",
        "CARGO_BUILD_TARGET",
        "RUSTFLAGS",
        "CARGO_ENCODED_RUSTFLAGS",
        "CARGO_MAKEFLAGS",
    ] {
        cmd.env_remove(var);
    }
    let status = cmd
        .args([
            "build",
            "--release",
            "--target",
            "wasm32-wasip2",
            "-p",
            "keel-plugin-kv",
            "--manifest-path",
        ])
        .arg(root.join("plugins/Cargo.toml"))
        .arg("--target-dir")
        .arg(&target)
        .status();
    match status {
        Ok(s) if s.success() => {}
        other => panic!(
            "building the embedded kv plugin failed ({other:?}); is the wasm32-wasip2 target installed? \
             run scripts/install-toolchains.sh"
        ),
    }
    let wasm = target.join("wasm32-wasip2/release/keel_plugin_kv.wasm");
    let out =
        PathBuf::from(std::env::var_os("OUT_DIR").expect("cargo sets OUT_DIR")).join("kv.wasm");
    std::fs::copy(&wasm, &out).unwrap_or_else(|e| panic!("copy {}: {e}", wasm.display()));
}
