//! The compiled-code cache: compile once, load precompiled after, never trust a
//! damaged file.

mod common;

use common::{apply, rust_guests};
use keel_plugin::{CodeSource, Limits, MemoryKv, PluginId, Runtime, RuntimeConfig};
use std::path::Path;
use std::sync::Arc;

fn node(cache: &Path) -> Runtime {
    Runtime::new(RuntimeConfig {
        cache_dir: Some(cache.to_path_buf()),
        ..RuntimeConfig::default()
    })
    .expect("runtime")
}

fn load(rt: &Runtime) -> keel_plugin::Plugin {
    rt.load(
        PluginId::new("kv", "1"),
        &rust_guests().kv,
        Limits::default(),
    )
    .expect("load kv")
}

fn works(plugin: &keel_plugin::Plugin) {
    let out = apply(
        plugin,
        &Arc::new(MemoryKv::new()),
        1,
        r#"{"op":"put","key":"a","value":"1"}"#,
    );
    assert_eq!(out.result.ok(), Some(br#"{"prev":null}"#.to_vec()));
}

#[test]
fn a_component_is_compiled_once_then_loaded_from_the_cache() {
    let dir = tempfile::tempdir().expect("tempdir");
    let first = load(&node(dir.path()));
    assert_eq!(first.code_source(), CodeSource::Compiled);
    // A restarted node (new engine) finds the artifact.
    let second = load(&node(dir.path()));
    assert_eq!(second.code_source(), CodeSource::Cache);
    assert_eq!(first.sha256(), second.sha256());
    works(&second);

    let entries: Vec<_> = std::fs::read_dir(dir.path())
        .expect("read cache")
        .flatten()
        .collect();
    assert_eq!(entries.len(), 1, "one artifact, no temporary files left");
    let name = entries[0].file_name().into_string().expect("utf-8 name");
    assert!(
        name.starts_with(first.sha256()) && name.ends_with(".cwasm"),
        "{name}"
    );
}

#[test]
fn a_damaged_cache_entry_is_recompiled_not_loaded() {
    let dir = tempfile::tempdir().expect("tempdir");
    load(&node(dir.path()));
    let entry = std::fs::read_dir(dir.path())
        .expect("read cache")
        .flatten()
        .next()
        .expect("one entry")
        .path();
    let mut bytes = std::fs::read(&entry).expect("read entry");
    let middle = bytes.len() / 2;
    bytes[middle] ^= 0xff;
    std::fs::write(&entry, &bytes).expect("damage entry");

    let plugin = load(&node(dir.path()));
    assert_eq!(plugin.code_source(), CodeSource::Compiled);
    works(&plugin);
    // ... and the entry was rewritten whole.
    assert_eq!(load(&node(dir.path())).code_source(), CodeSource::Cache);
}
