//! The node's blob store (design §6): content-addressed bytes outside the log — plugin
//! binaries and the payloads of reference-only commands — by SHA-256, in `data_dir/blobs`
//! (or in memory, for the simulator and unit tests).
//!
//! Blobs are written as streams: hashed while they are written to a temporary file, synced,
//! then renamed into place, so no blob is ever held whole in memory on the way in. A blob is
//! durable on a majority of voters before anything that names it is proposed (the HTTP
//! layer places it); a node that must apply a record naming a blob it lacks fetches it from
//! its peers, streamed and checked against the hash, beside the Raft loop. A blob whose
//! bytes no longer hash to its name (a flipped bit on disk) is moved to `quarantine/` when
//! read and fetched again; it is never handed to a plugin.

use std::collections::HashMap;
use std::io::{Read as _, Write as _};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use sha2::{Digest, Sha256};

mod gc;
mod store;
pub use gc::{Keep, NamedAt, collectable};
pub use store::{BlobSink, BlobStore, DirStore, MemStore};

/// Largest blob a node accepts or fetches, unless configured otherwise.
pub const MAX_BLOB_BYTES: u64 = 1 << 30;

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
    // Digits only: `from_str_radix` also takes a sign ("+f" is 15), which would give one
    // blob many names (found by tests/fuzz.rs).
    if s.len() != 64 || !s.bytes().all(|b| b.is_ascii_hexdigit()) {
        return None;
    }
    let mut out = [0u8; 32];
    for (i, byte) in out.iter_mut().enumerate() {
        *byte = u8::from_str_radix(s.get(2 * i..2 * i + 2)?, 16).ok()?;
    }
    Some(out)
}

/// Content-addressed blobs this node can read. Cheap to clone (shared).
#[derive(Clone)]
pub struct Blobs {
    builtin: Arc<HashMap<[u8; 32], Arc<Vec<u8>>>>,
    /// Where the bytes are kept.
    store: Arc<dyn BlobStore>,
    /// The node's own directory beside the blobs, for bookkeeping (`None` in memory).
    dir: Option<PathBuf>,
    /// Where to fetch a missing blob: the other members' URLs.
    peers: Arc<Mutex<Vec<String>>>,
    /// This node's cluster id, sent with fetches (`keel-cluster`): peers with
    /// authentication on serve blobs to a cluster node without a token.
    cluster: Arc<Mutex<String>>,
    /// Paces fetches to `blob_fetch_bytes_per_sec`.
    pacer: Arc<Pacer>,
    /// Held by [`Blobs::touch`] and by garbage collection's last look at an age, so a blob
    /// touched after a round listed it (attached again, probed by a leader) is never deleted
    /// on that round's stale view.
    gc_guard: Arc<Mutex<()>>,
}

/// Fetches' bandwidth budget: each chunk is given the next free slot of time its size needs
/// at the configured rate, and the fetch sleeps until then. No burst is saved up while idle.
/// (Fifteen lines; a rate-limiter crate would count cells of at most `u32` and bring its
/// own clock.)
#[derive(Default)]
struct Pacer {
    bytes_per_sec: std::sync::atomic::AtomicU64,
    next_free: Mutex<Option<std::time::Instant>>,
}

impl Pacer {
    /// How long to wait, from `now`, before going on after `bytes` more.
    fn delay(&self, bytes: u64, now: std::time::Instant) -> Duration {
        let rate = self
            .bytes_per_sec
            .load(std::sync::atomic::Ordering::Relaxed);
        if rate == 0 {
            return Duration::ZERO;
        }
        let mut next = lock(&self.next_free);
        let start = next.map_or(now, |n| n.max(now));
        *next = Some(start + Duration::from_secs_f64(bytes as f64 / rate as f64));
        start - now
    }
}

/// A blob being written: bytes go to a temporary file (or a buffer, in memory) and into
/// the hash as they arrive. [`BlobWriter::finish`] makes it durable under its hash.
pub struct BlobWriter {
    hasher: Sha256,
    len: u64,
    limit: u64,
    /// `None` once finished.
    sink: Option<Box<dyn BlobSink>>,
}

/// Why a blob could not be written.
#[derive(Debug, thiserror::Error)]
pub enum BlobError {
    /// More bytes than the limit.
    #[error("blob larger than {0} bytes")]
    TooLarge(u64),
    /// The bytes do not hash to the name they were sent under.
    #[error("the bytes hash to {got}, not {want}")]
    HashMismatch {
        /// The expected hash.
        want: String,
        /// What the bytes hash to.
        got: String,
    },
    /// The disk failed.
    #[error("blob store: {0}")]
    Io(#[from] std::io::Error),
}

impl BlobWriter {
    /// Appends bytes.
    pub fn write(&mut self, chunk: &[u8]) -> Result<(), BlobError> {
        self.len += chunk.len() as u64;
        if self.len > self.limit {
            return Err(BlobError::TooLarge(self.limit));
        }
        self.hasher.update(chunk);
        if let Some(sink) = &mut self.sink {
            sink.write_all(chunk)?;
        }
        Ok(())
    }

    /// Bytes written so far.
    pub fn len(&self) -> u64 {
        self.len
    }

    /// Whether nothing was written.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Makes the blob durable under its hash (synced, renamed into place, directory
    /// synced) and returns `(hash, len)`. With `expect`, bytes that hash to anything else
    /// are discarded.
    pub fn finish(mut self, expect: Option<[u8; 32]>) -> Result<([u8; 32], u64), BlobError> {
        let hash: [u8; 32] = std::mem::take(&mut self.hasher).finalize().into();
        if let Some(want) = expect
            && want != hash
        {
            return Err(BlobError::HashMismatch {
                want: hex(&want),
                got: hex(&hash),
            });
        }
        if let Some(sink) = self.sink.take() {
            sink.commit(&hash)?;
        }
        Ok((hash, self.len))
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// Bytes read per step when hashing or streaming a stored blob.
const CHUNK: usize = 1 << 20;

impl Blobs {
    /// Blobs stored under `dir` (in memory if `None`), plus `builtin` ones compiled into the
    /// binary.
    pub fn new(dir: Option<PathBuf>, builtin: &[&'static [u8]]) -> Blobs {
        Blobs {
            builtin: Arc::new(
                builtin
                    .iter()
                    .map(|b| (static_sha256(b), Arc::new(b.to_vec())))
                    .collect(),
            ),
            store: match &dir {
                Some(d) => Arc::new(DirStore::new(d.clone())),
                None => Arc::new(MemStore::default()),
            },
            dir,
            gc_guard: Arc::default(),
            peers: Arc::default(),
            cluster: Arc::default(),
            pacer: Arc::default(),
        }
    }

    /// Fetches' bandwidth budget, bytes per second shared by all of them (0: no limit).
    pub fn set_fetch_budget(&self, bytes_per_sec: u64) {
        self.pacer
            .bytes_per_sec
            .store(bytes_per_sec, std::sync::atomic::Ordering::Relaxed);
    }

    /// The cluster id fetches present to peers.
    pub fn set_cluster(&self, cluster: &str) {
        *lock(&self.cluster) = cluster.to_string();
    }

    /// The peers to fetch from (the driver keeps it in step with the membership).
    pub fn set_peers(&self, urls: Vec<String>) {
        *lock(&self.peers) = urls;
    }

    /// Starts writing a blob of at most `limit` bytes.
    pub fn writer(&self, limit: u64) -> Result<BlobWriter, BlobError> {
        Ok(BlobWriter {
            hasher: Sha256::new(),
            len: 0,
            limit,
            sink: Some(self.store.put()?),
        })
    }

    /// Stores `bytes` durably and returns their hash.
    pub fn store(&self, bytes: &[u8]) -> Result<[u8; 32], BlobError> {
        let hash = sha256(bytes);
        if self.has(&hash) {
            self.touch(&hash);
            return Ok(hash);
        }
        let mut w = self.writer(u64::MAX)?;
        w.write(bytes)?;
        w.finish(Some(hash)).map(|(h, _)| h)
    }

    /// A file of this node's own bookkeeping beside the blobs (`None` in memory). Its name
    /// is not a hash, so it is never taken for a blob.
    pub fn bookkeeping_path(&self, name: &str) -> Option<PathBuf> {
        self.dir.as_ref().map(|d| d.join(name))
    }

    /// Whether this node holds the blob (built in, or stored: [`Blobs::local`] checks its
    /// bytes when read). Cheap: reads nothing.
    pub fn has(&self, hash: &[u8; 32]) -> bool {
        self.len_of(hash).is_some()
    }

    /// The blob's length, if this node holds it.
    pub fn len_of(&self, hash: &[u8; 32]) -> Option<u64> {
        match self.builtin.get(hash) {
            Some(b) => Some(b.len() as u64),
            None => self.store.len(hash),
        }
    }

    /// The whole blob if this node holds it and its bytes hash to its name. A stored blob
    /// that does not is quarantined (and so no longer held: the sweep fetches it again).
    pub fn local(&self, hash: &[u8; 32]) -> Option<Arc<Vec<u8>>> {
        if let Some(b) = self.builtin.get(hash) {
            return Some(b.clone());
        }
        let mut bytes = Vec::new();
        self.store.open(hash, 0)?.read_to_end(&mut bytes).ok()?;
        if sha256(&bytes) != *hash {
            self.store.quarantine(hash);
            return None;
        }
        Some(Arc::new(bytes))
    }

    /// Whether the stored bytes still hash to the name, read a chunk at a time; a blob that
    /// does not is quarantined.
    pub fn verify(&self, hash: &[u8; 32]) -> bool {
        if self.builtin.contains_key(hash) {
            return true;
        }
        let Some(mut r) = self.store.open(hash, 0) else {
            return false;
        };
        let mut hasher = Sha256::new();
        let mut buf = vec![0u8; CHUNK];
        loop {
            match r.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => hasher.update(&buf[..n]),
                Err(_) => return false,
            }
        }
        let ok = <[u8; 32]>::from(hasher.finalize()) == *hash;
        if !ok {
            self.store.quarantine(hash);
        }
        ok
    }

    /// Up to `len` bytes of the blob from `offset` (no hash check: callers that hand bytes
    /// on check the whole blob first, with [`Blobs::verify`] or [`Blobs::local`]).
    pub fn read_range(&self, hash: &[u8; 32], offset: u64, len: usize) -> Option<Vec<u8>> {
        if let Some(b) = self.builtin.get(hash) {
            let start = usize::try_from(offset).ok()?.min(b.len());
            let end = start.saturating_add(len).min(b.len());
            return Some(b[start..end].to_vec());
        }
        let mut out = Vec::with_capacity(len.min(CHUNK));
        self.store
            .open(hash, offset)?
            .take(len as u64)
            .read_to_end(&mut out)
            .ok()?;
        Some(out)
    }

    /// Every stored blob (not the built-in ones) with its age: since it was stored, or last
    /// placed again ([`Blobs::touch`]). In memory, ages are zero.
    pub fn list(&self) -> Vec<([u8; 32], Duration)> {
        self.store.list()
    }

    /// Marks a blob as placed again now (a new upload of the same bytes): the grace period of
    /// garbage collection starts over.
    pub fn touch(&self, hash: &[u8; 32]) {
        let _guard = lock(&self.gc_guard);
        self.store.touch(hash);
    }

    /// Deletes what is left of uploads and fetches of a process killed mid-write, untouched
    /// for `grace` (a writer that fails removes its own); returns how many went.
    pub fn remove_stale_uploads(&self, grace: Duration) -> usize {
        self.store.remove_stale_puts(grace)
    }

    /// Deletes a blob (garbage collection decided nothing needs it).
    pub fn remove(&self, hash: &[u8; 32]) {
        self.store.delete(hash);
    }

    /// Deletes a blob garbage collection chose, unless it was touched within `grace` since
    /// (checked under the guard [`Blobs::touch`] takes): a leader that attaches a blob
    /// touches its own copy and, by probing them, the members' before it proposes the entry,
    /// and the entry is in no log yet, so the age is all that protects the blob meanwhile
    /// (design §6 rule 1). Returns whether it went.
    pub fn remove_if_untouched(&self, hash: &[u8; 32], grace: Duration) -> bool {
        let _guard = lock(&self.gc_guard);
        match self.store.age(hash) {
            Some(age) if age >= grace => {
                self.store.delete(hash);
                true
            }
            _ => false,
        }
    }

    /// The blob, fetched from a peer (streamed into the store, checked against the hash)
    /// if this node lacks it. Blocks: a few rounds over the peers with a pause between.
    pub fn get(&self, hash: &[u8; 32]) -> Option<Arc<Vec<u8>>> {
        if self.fetch(hash) {
            return self.local(hash);
        }
        None
    }

    /// Makes sure this node holds the blob, fetching it from a peer if not (see
    /// [`Blobs::get`]); returns whether it is here now. Holds nothing whole in memory.
    pub fn fetch(&self, hash: &[u8; 32]) -> bool {
        self.fetch_rounds(hash, 5)
    }

    /// [`Blobs::fetch`], asking each peer once: for a blob a client names, which may exist
    /// nowhere.
    pub fn fetch_once(&self, hash: &[u8; 32]) -> bool {
        self.fetch_rounds(hash, 1)
    }

    fn fetch_rounds(&self, hash: &[u8; 32], rounds: u32) -> bool {
        if self.has(hash) && self.verify(hash) {
            return true;
        }
        for round in 0..rounds {
            let peers = lock(&self.peers).clone();
            for url in peers {
                match fetch_from(self, &url, hash) {
                    Ok(len) => {
                        tracing::info!(target: "keel::txn", blob = %hex(hash), from = %url, len, "fetched blob");
                        return true;
                    }
                    Err(e) => {
                        tracing::warn!(target: "keel::txn", blob = %hex(hash), from = %url, error = %e, "blob fetch failed");
                    }
                }
            }
            if round + 1 < rounds {
                std::thread::sleep(Duration::from_millis(200 << round));
            }
        }
        false
    }
}

/// SHA-256 of bytes compiled into the binary, computed once per process (a node, and every
/// simulated node, starts with the built-in kv plugin: a quarter of a megabyte to hash).
pub fn static_sha256(bytes: &'static [u8]) -> [u8; 32] {
    static KNOWN: Mutex<Vec<(usize, usize, [u8; 32])>> = Mutex::new(Vec::new());
    // A 'static slice never moves: its address and length name it for the process's life.
    let key = (bytes.as_ptr() as usize, bytes.len());
    if let Some(&(_, _, h)) = lock(&KNOWN).iter().find(|(p, l, _)| (*p, *l) == key) {
        return h;
    }
    let h = sha256(bytes);
    lock(&KNOWN).push((key.0, key.1, h));
    h
}

/// A name for a temporary file no other writer uses.
fn unique() -> String {
    use std::sync::atomic::{AtomicU64, Ordering};
    static NEXT: AtomicU64 = AtomicU64::new(0);
    format!(
        "{}-{}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    )
}

/// `GET {url}/v1/blobs/{hash}`, streamed into the store and checked against the hash. Runs
/// on a thread of its own with its own small runtime, so it may be called from anywhere.
fn fetch_from(blobs: &Blobs, url: &str, hash: &[u8; 32]) -> anyhow::Result<u64> {
    let target = format!("{url}/v1/blobs/{}", hex(hash));
    let (want, blobs) = (*hash, blobs.clone());
    let cluster = lock(&blobs.cluster).clone();
    std::thread::spawn(move || -> anyhow::Result<u64> {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        rt.block_on(async move {
            let client = crate::tls::client::<Full<Bytes>>();
            let req = hyper::Request::get(&target)
                .header(crate::http::blobs::CLUSTER_HEADER, cluster)
                .body(Full::new(Bytes::new()))?;
            let resp = tokio::time::timeout(Duration::from_secs(30), client.request(req)).await??;
            anyhow::ensure!(resp.status().is_success(), "{target}: {}", resp.status());
            let mut body = resp.into_body();
            let mut w = blobs.writer(MAX_BLOB_BYTES)?;
            // Each frame within 30 s: a stalled peer is given up, not waited on for ever.
            while let Some(frame) = tokio::time::timeout(Duration::from_secs(30), body.frame())
                .await?
                .transpose()
                .map_err(|e| anyhow::anyhow!("{target}: {e}"))?
            {
                if let Ok(data) = frame.into_data() {
                    w.write(&data)?;
                    let wait = blobs
                        .pacer
                        .delay(data.len() as u64, std::time::Instant::now());
                    if !wait.is_zero() {
                        tokio::time::sleep(wait).await;
                    }
                }
            }
            let (_, len) = w.finish(Some(want))?;
            Ok(len)
        })
    })
    .join()
    .map_err(|_| anyhow::anyhow!("blob fetch thread panicked"))?
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Design §6 rule 1 against garbage collection: a round lists an old, unneeded blob;
    /// before it deletes it, a leader attaches the blob again (and touches it). The round
    /// must not delete it on what it listed.
    #[test]
    fn a_blob_touched_after_a_collection_round_listed_it_is_not_deleted_by_that_round() {
        let dir = tempfile::tempdir().expect("tempdir");
        let blobs = Blobs::new(Some(dir.path().to_path_buf()), &[]);
        let hash = blobs.store(b"attached again").expect("store");
        let age_back = |secs| {
            let f = std::fs::File::options()
                .append(true)
                .open(dir.path().join(hex(&hash)))
                .expect("open");
            f.set_modified(std::time::SystemTime::now() - Duration::from_secs(secs))
                .expect("set mtime");
        };
        let grace = Duration::from_secs(600);
        age_back(3600);
        let listed = collectable(&blobs.list(), &Keep::default(), u64::MAX, grace);
        assert_eq!(listed, vec![hash], "old and unneeded: chosen");
        blobs.touch(&hash);
        assert!(!blobs.remove_if_untouched(&hash, grace));
        assert!(blobs.has(&hash), "touched after the round listed it: kept");
        age_back(3600);
        assert!(blobs.remove_if_untouched(&hash, grace));
        assert!(!blobs.has(&hash));
    }

    #[test]
    fn a_stored_blob_is_read_back_by_hash_and_a_corrupt_one_is_quarantined_not_served() {
        let dir = tempfile::tempdir().expect("tempdir");
        let blobs = Blobs::new(Some(dir.path().to_path_buf()), &[b"built in"]);
        let hash = blobs.store(b"plugin bytes").expect("store");
        assert_eq!(parse_hex(&hex(&hash)), Some(hash));
        assert_eq!(
            blobs.local(&hash).as_deref().map(Vec::as_slice),
            Some(&b"plugin bytes"[..])
        );
        assert!(blobs.local(&sha256(b"built in")).is_some());
        assert_eq!(blobs.read_range(&hash, 7, 3).as_deref(), Some(&b"byt"[..]));
        // Bytes changed on disk are refused, not served, and moved aside.
        std::fs::write(dir.path().join(hex(&hash)), b"tampered").expect("write");
        assert!(blobs.local(&hash).is_none());
        assert!(!blobs.has(&hash), "quarantined: to be fetched again");
        assert_eq!(
            std::fs::read_dir(dir.path().join("quarantine"))
                .expect("quarantine")
                .count(),
            1
        );
        assert!(parse_hex("xyz").is_none());
    }

    /// Found by tests/fuzz.rs: a sign inside a pair of digits ("+0") was read as a digit,
    /// so one blob answered to many names.
    #[test]
    fn a_blob_name_is_64_hex_digits_and_nothing_else() {
        let name = "00".repeat(32);
        assert_eq!(parse_hex(&name), Some([0; 32]));
        for bad in ["+0", "0+", "-0", " 0", "0 ", "0x"] {
            let named = format!("{bad}{}", &name[2..]);
            assert_eq!(parse_hex(&named), None, "{named}");
        }
        assert_eq!(parse_hex(&"FF".repeat(32)), Some([0xff; 32]));
    }

    #[test]
    fn a_streamed_blob_is_hashed_as_written_and_refused_under_a_wrong_name_or_past_its_limit() {
        let dir = tempfile::tempdir().expect("tempdir");
        let blobs = Blobs::new(Some(dir.path().to_path_buf()), &[]);
        let mut w = blobs.writer(1 << 20).expect("writer");
        for _ in 0..64 {
            w.write(&[7u8; 1024]).expect("write");
        }
        let (hash, len) = w.finish(None).expect("finish");
        assert_eq!((hash, len), (sha256(&[7u8; 65536]), 65536));
        assert!(blobs.verify(&hash));
        assert_eq!(blobs.len_of(&hash), Some(65536));

        let mut w = blobs.writer(1 << 20).expect("writer");
        w.write(b"other bytes").expect("write");
        assert!(matches!(
            w.finish(Some(hash)),
            Err(BlobError::HashMismatch { .. })
        ));
        let mut w = blobs.writer(10).expect("writer");
        assert!(matches!(w.write(&[0; 11]), Err(BlobError::TooLarge(10))));
        drop(w);
        // Nothing half-written is left behind, under a blob's name or a temporary one.
        let names: Vec<String> = std::fs::read_dir(dir.path())
            .expect("dir")
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .collect();
        assert_eq!(names, vec![hex(&hash)]);
    }

    #[test]
    fn the_fetch_budget_spaces_chunks_at_its_rate_and_no_budget_never_waits() {
        let (pacer, now) = (Pacer::default(), std::time::Instant::now());
        assert_eq!(pacer.delay(1 << 30, now), Duration::ZERO);
        pacer
            .bytes_per_sec
            .store(1 << 20, std::sync::atomic::Ordering::Relaxed);
        // The first MiB goes now; the next waits for the first's second, the one after
        // for two; once that time has passed, nothing is saved up.
        assert_eq!(pacer.delay(1 << 20, now), Duration::ZERO);
        assert_eq!(pacer.delay(1 << 20, now), Duration::from_secs(1));
        assert_eq!(pacer.delay(1 << 19, now), Duration::from_secs(2));
        let later = now + Duration::from_secs(10);
        assert_eq!(pacer.delay(1 << 20, later), Duration::ZERO);
    }

    #[test]
    fn an_in_memory_store_keeps_what_it_is_given() {
        let blobs = Blobs::new(None, &[]);
        let hash = blobs.store(b"payload").expect("store");
        assert!(blobs.has(&hash) && blobs.verify(&hash));
        assert_eq!(
            blobs.read_range(&hash, 3, 100).as_deref(),
            Some(&b"load"[..])
        );
    }
}
