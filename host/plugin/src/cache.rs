//! Compiled-component cache on disk.
//!
//! Compiling a component is slow (≈ 0.1 s for a Rust plugin, seconds for Python), so
//! each artifact is compiled once per machine and kept under
//! `<dir>/<wasm sha256>-<engine key>.cwasm`, where the engine key hashes the wasmtime
//! version and every engine setting that affects code generation
//! (`Engine::precompile_compatibility_hash`). A file starts with the SHA-256 of the
//! rest, so a torn or corrupted file is detected and recompiled, never loaded.

use sha2::{Digest, Sha256};
use std::hash::{Hash, Hasher};
use std::path::{Path, PathBuf};
use wasmtime::Engine;
use wasmtime::component::Component;

/// wasmtime's major version, also part of the key (belt and braces: the engine hash
/// already changes with the version).
const WASMTIME: &str = "wasmtime48";

/// A directory of precompiled components for one engine.
#[derive(Debug, Clone)]
pub(crate) struct Cache {
    dir: PathBuf,
    engine_key: String,
}

impl Cache {
    pub(crate) fn new(dir: PathBuf, engine: &Engine) -> Self {
        // DefaultHasher::new() uses fixed keys: stable within one build, which is
        // all a local cache needs (a new toolchain at worst recompiles once).
        let mut h = std::collections::hash_map::DefaultHasher::new();
        engine.precompile_compatibility_hash().hash(&mut h);
        Cache {
            dir,
            engine_key: format!("{WASMTIME}-{:016x}", h.finish()),
        }
    }

    fn path(&self, wasm_sha256: &str) -> PathBuf {
        self.dir
            .join(format!("{wasm_sha256}-{}.cwasm", self.engine_key))
    }

    /// The cached component for this wasm, if a sound one is on disk.
    pub(crate) fn load(&self, engine: &Engine, wasm_sha256: &str) -> Option<Component> {
        let path = self.path(wasm_sha256);
        let bytes = std::fs::read(&path).ok()?;
        let (digest, artifact) = bytes.split_at_checked(32)?;
        if Sha256::digest(artifact).as_slice() != digest {
            tracing::warn!(target: "keel::plugin", path = %path.display(), "corrupt compiled-plugin cache entry; recompiling");
            return None;
        }
        // SAFETY: `deserialize` trusts its input to be an artifact wasmtime produced.
        // This one is: we wrote it (`store`) from `Component::serialize` into the
        // node's own data directory, keyed by this engine's compatibility hash, and
        // its checksum matched, so it is byte for byte what we wrote. Anyone able to
        // write that directory could replace the node binary as well.
        #[allow(unsafe_code)]
        let loaded = unsafe { Component::deserialize(engine, artifact) };
        match loaded {
            Ok(component) => Some(component),
            Err(e) => {
                tracing::warn!(target: "keel::plugin", path = %path.display(), error = %e, "unusable compiled-plugin cache entry; recompiling");
                None
            }
        }
    }

    /// Stores a compiled component. Failures only cost a recompile later, so they are
    /// logged, not returned.
    pub(crate) fn store(&self, wasm_sha256: &str, component: &Component) {
        if let Err(e) = self.try_store(wasm_sha256, component) {
            tracing::warn!(target: "keel::plugin", dir = %self.dir.display(), error = %e, "cannot write the compiled-plugin cache");
        }
    }

    fn try_store(&self, wasm_sha256: &str, component: &Component) -> anyhow::Result<()> {
        let artifact = component.serialize()?;
        std::fs::create_dir_all(&self.dir)?;
        let path = self.path(wasm_sha256);
        // Write then rename: readers see the old file, no file, or the whole new one.
        let tmp = path.with_extension(format!("tmp{}", std::process::id()));
        let mut bytes = Sha256::digest(&artifact).to_vec();
        bytes.extend_from_slice(&artifact);
        std::fs::write(&tmp, &bytes)?;
        std::fs::rename(&tmp, &path)?;
        Ok(())
    }

    /// The directory.
    pub(crate) fn dir(&self) -> &Path {
        &self.dir
    }
}

/// Lowercase hex SHA-256.
pub(crate) fn sha256_hex(bytes: &[u8]) -> String {
    Sha256::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}
