//! The node's blob store (design §6): plugin binaries by SHA-256, in `data_dir/blobs`.
//!
//! A blob is written durably before anything that names it is proposed, and a node that
//! applies a `Deploy` record (or installs a snapshot) naming a blob it lacks fetches it from
//! its peers and checks the hash before using it. The leader places a plugin's bytes on a
//! majority before proposing its `Deploy` (`net::deploy`), so a committed deployment can
//! always be fetched from someone while a majority is up.

use std::collections::HashMap;
use std::io::Write as _;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use sha2::{Digest, Sha256};

/// Largest blob fetched from a peer.
pub const MAX_BLOB_BYTES: usize = 256 << 20;

/// SHA-256 of `bytes`.
pub fn sha256(bytes: &[u8]) -> [u8; 32] {
    Sha256::digest(bytes).into()
}

/// Lower-case hex.
pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// A blob hash from its hex form.
pub fn parse_hex(s: &str) -> Option<[u8; 32]> {
    if s.len() != 64 {
        return None;
    }
    let mut out = [0u8; 32];
    for (i, byte) in out.iter_mut().enumerate() {
        *byte = u8::from_str_radix(s.get(2 * i..2 * i + 2)?, 16).ok()?;
    }
    Some(out)
}

/// Content-addressed blobs this node can read. Cheap to clone (shared).
#[derive(Clone, Default)]
pub struct Blobs {
    builtin: Arc<HashMap<[u8; 32], Arc<Vec<u8>>>>,
    dir: Option<PathBuf>,
    /// Where to fetch a missing blob: the other members' URLs.
    peers: Arc<Mutex<Vec<String>>>,
}

impl Blobs {
    /// Blobs stored under `dir`, plus `builtin` ones compiled into the binary.
    pub fn new(dir: Option<PathBuf>, builtin: &[&[u8]]) -> Blobs {
        Blobs {
            builtin: Arc::new(
                builtin
                    .iter()
                    .map(|b| (sha256(b), Arc::new(b.to_vec())))
                    .collect(),
            ),
            dir,
            peers: Arc::default(),
        }
    }

    /// The peers to fetch from (the driver keeps it in step with the membership).
    pub fn set_peers(&self, urls: Vec<String>) {
        *self.peers.lock().unwrap_or_else(|e| e.into_inner()) = urls;
    }

    /// Stores `bytes` durably (written, synced, then renamed into place and the directory
    /// synced) and returns their hash.
    pub fn store(&self, bytes: &[u8]) -> std::io::Result<[u8; 32]> {
        let hash = sha256(bytes);
        let Some(dir) = &self.dir else {
            return Ok(hash);
        };
        let path = dir.join(hex(&hash));
        if path.exists() {
            return Ok(hash);
        }
        std::fs::create_dir_all(dir)?;
        let tmp = dir.join(format!(".{}.tmp", hex(&hash)));
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
        std::fs::rename(&tmp, &path)?;
        std::fs::File::open(dir)?.sync_all()?;
        Ok(hash)
    }

    /// Whether this node holds the blob (built in, or a file by that name: [`Blobs::local`]
    /// checks its bytes when read). Cheap: reads nothing.
    pub fn has(&self, hash: &[u8; 32]) -> bool {
        self.builtin.contains_key(hash)
            || self
                .dir
                .as_ref()
                .is_some_and(|dir| dir.join(hex(hash)).is_file())
    }

    /// The blob if this node holds it (built in or stored).
    pub fn local(&self, hash: &[u8; 32]) -> Option<Arc<Vec<u8>>> {
        if let Some(b) = self.builtin.get(hash) {
            return Some(b.clone());
        }
        let bytes = std::fs::read(self.dir.as_ref()?.join(hex(hash))).ok()?;
        (sha256(&bytes) == *hash).then(|| Arc::new(bytes))
    }

    /// The blob, fetched from a peer (and stored) if this node lacks it. Blocks: a few
    /// rounds over the peers with a pause between them.
    pub fn get(&self, hash: &[u8; 32]) -> Option<Arc<Vec<u8>>> {
        if let Some(b) = self.local(hash) {
            return Some(b);
        }
        for round in 0..5 {
            let peers = self.peers.lock().unwrap_or_else(|e| e.into_inner()).clone();
            for url in peers {
                match fetch(&url, hash) {
                    Ok(bytes) => {
                        if let Err(e) = self.store(&bytes) {
                            tracing::warn!(target: "keel::txn", error = %e, "storing a fetched blob");
                        }
                        tracing::info!(target: "keel::txn", blob = %hex(hash), from = %url, "fetched blob");
                        return Some(Arc::new(bytes));
                    }
                    Err(e) => {
                        tracing::warn!(target: "keel::txn", blob = %hex(hash), from = %url, error = %e, "blob fetch failed");
                    }
                }
            }
            std::thread::sleep(Duration::from_millis(200 << round));
        }
        None
    }
}

/// `GET {url}/v1/blobs/{hash}`, checked against the hash. Runs on a thread of its own with
/// its own small runtime, so it may be called from anywhere (the driver thread, or inside
/// the async start-up).
fn fetch(url: &str, hash: &[u8; 32]) -> anyhow::Result<Vec<u8>> {
    let target = format!("{url}/v1/blobs/{}", hex(hash));
    let want = *hash;
    std::thread::spawn(move || -> anyhow::Result<Vec<u8>> {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        rt.block_on(async move {
            let client =
                hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
                    .build_http::<Full<Bytes>>();
            let req = hyper::Request::get(&target).body(Full::new(Bytes::new()))?;
            let resp = tokio::time::timeout(Duration::from_secs(30), client.request(req)).await??;
            anyhow::ensure!(resp.status().is_success(), "{target}: {}", resp.status());
            let body = Limited::new(resp.into_body(), MAX_BLOB_BYTES)
                .collect()
                .await
                .map_err(|e| anyhow::anyhow!("{target}: {e}"))?
                .to_bytes();
            anyhow::ensure!(sha256(&body) == want, "{target}: hash mismatch");
            Ok(body.to_vec())
        })
    })
    .join()
    .map_err(|_| anyhow::anyhow!("blob fetch thread panicked"))?
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_stored_blob_is_read_back_by_hash_and_a_corrupt_one_is_not() {
        let dir = tempfile::tempdir().expect("tempdir");
        let blobs = Blobs::new(Some(dir.path().to_path_buf()), &[b"built in"]);
        let hash = blobs.store(b"plugin bytes").expect("store");
        assert_eq!(parse_hex(&hex(&hash)), Some(hash));
        assert_eq!(
            blobs.local(&hash).as_deref().map(Vec::as_slice),
            Some(&b"plugin bytes"[..])
        );
        assert!(blobs.local(&sha256(b"built in")).is_some());
        // Bytes changed on disk are refused, not served.
        std::fs::write(dir.path().join(hex(&hash)), b"tampered").expect("write");
        assert!(blobs.local(&hash).is_none());
        assert!(parse_hex("xyz").is_none());
    }
}
