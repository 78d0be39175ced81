//! Where blob bytes are kept (issue #11): a small trait, so an object store can back a node
//! later, with the node-local directory as the embedded default and memory for the
//! simulator and unit tests. A store keeps bytes under names it is given; hashing, checking
//! and fetching are [`super::Blobs`]'s, the same whatever the store.

use std::collections::HashMap;
use std::io::{Read, Seek as _, SeekFrom, Write};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use super::{hex, lock, parse_hex, unique};

/// Bytes by SHA-256. Every call may block (disk, network): callers keep them off the Raft
/// loop.
pub trait BlobStore: Send + Sync {
    /// Starts a new blob; its bytes are written as they arrive, and it exists under a name
    /// only once [`BlobSink::commit`]ted (a sink dropped before is discarded).
    fn put(&self) -> std::io::Result<Box<dyn BlobSink>>;
    /// The blob's bytes from `offset` to the end, if it is here.
    fn open(&self, hash: &[u8; 32], offset: u64) -> Option<Box<dyn Read + Send>>;
    /// The blob's length, if it is here.
    fn len(&self, hash: &[u8; 32]) -> Option<u64>;
    /// Deletes the blob (nothing if absent).
    fn delete(&self, hash: &[u8; 32]);
    /// Every blob with its age: since it was stored or last [`BlobStore::touch`]ed.
    fn list(&self) -> Vec<([u8; 32], Duration)>;
    /// Marks the blob as placed again now (garbage collection's grace starts over).
    fn touch(&self, hash: &[u8; 32]);
    /// How long since the blob was stored or last touched, if it is here.
    fn age(&self, hash: &[u8; 32]) -> Option<Duration>;
    /// Moves bytes that do not match their name out of the way (kept for inspection).
    fn quarantine(&self, hash: &[u8; 32]);
    /// Drops the leftovers of puts never committed nor discarded (a process killed
    /// mid-write) untouched for `grace`; returns how many.
    fn remove_stale_puts(&self, grace: Duration) -> usize;
}

/// A blob being written.
pub trait BlobSink: Write + Send {
    /// Makes the bytes durable under `hash` (the caller checked they hash to it).
    fn commit(self: Box<Self>, hash: &[u8; 32]) -> std::io::Result<()>;
}

/// The embedded default: one file per blob, named by its hash in hex, in a directory of
/// the node's. Written to a temporary file, synced, renamed into place, directory synced.
pub struct DirStore {
    dir: PathBuf,
}

impl DirStore {
    /// Blobs under `dir` (created when the first is written).
    pub fn new(dir: PathBuf) -> DirStore {
        DirStore { dir }
    }

    fn path(&self, hash: &[u8; 32]) -> PathBuf {
        self.dir.join(hex(hash))
    }
}

struct DirSink {
    file: Option<std::fs::File>,
    tmp: PathBuf,
    dir: PathBuf,
}

impl Write for DirSink {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        match &mut self.file {
            Some(f) => f.write(buf),
            None => Err(std::io::Error::other("blob already committed")),
        }
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl BlobSink for DirSink {
    fn commit(mut self: Box<Self>, hash: &[u8; 32]) -> std::io::Result<()> {
        let f = self
            .file
            .take()
            .ok_or_else(|| std::io::Error::other("blob already committed"))?;
        f.sync_all()?;
        drop(f);
        std::fs::rename(&self.tmp, self.dir.join(hex(hash)))?;
        std::fs::File::open(&self.dir)?.sync_all()
    }
}

impl Drop for DirSink {
    /// An uncommitted blob (refused, or its sender went away) leaves no file behind.
    fn drop(&mut self) {
        if self.file.take().is_some() {
            let _ = std::fs::remove_file(&self.tmp);
        }
    }
}

/// Temporary files of puts under way are named so; no hash is.
const PUT_PREFIX: &str = ".upload-";

impl BlobStore for DirStore {
    fn put(&self) -> std::io::Result<Box<dyn BlobSink>> {
        std::fs::create_dir_all(&self.dir)?;
        let tmp = self.dir.join(format!("{PUT_PREFIX}{}.tmp", unique()));
        Ok(Box::new(DirSink {
            file: Some(std::fs::File::create(&tmp)?),
            tmp,
            dir: self.dir.clone(),
        }))
    }

    fn open(&self, hash: &[u8; 32], offset: u64) -> Option<Box<dyn Read + Send>> {
        let mut f = std::fs::File::open(self.path(hash)).ok()?;
        f.seek(SeekFrom::Start(offset)).ok()?;
        Some(Box::new(f))
    }

    fn len(&self, hash: &[u8; 32]) -> Option<u64> {
        std::fs::metadata(self.path(hash))
            .ok()
            .filter(|m| m.is_file())
            .map(|m| m.len())
    }

    fn delete(&self, hash: &[u8; 32]) {
        let _ = std::fs::remove_file(self.path(hash));
    }

    fn list(&self) -> Vec<([u8; 32], Duration)> {
        let now = SystemTime::now();
        std::fs::read_dir(&self.dir)
            .map(|d| {
                d.flatten()
                    .filter_map(|e| {
                        let hash = parse_hex(&e.file_name().to_string_lossy())?;
                        let modified = e.metadata().ok()?.modified().ok()?;
                        Some((hash, now.duration_since(modified).unwrap_or_default()))
                    })
                    .collect()
            })
            .unwrap_or_default()
    }

    fn touch(&self, hash: &[u8; 32]) {
        if let Ok(f) = std::fs::File::options().append(true).open(self.path(hash)) {
            let _ = f.set_modified(SystemTime::now());
        }
    }

    fn age(&self, hash: &[u8; 32]) -> Option<Duration> {
        let modified = std::fs::metadata(self.path(hash)).ok()?.modified().ok()?;
        Some(
            SystemTime::now()
                .duration_since(modified)
                .unwrap_or_default(),
        )
    }

    fn quarantine(&self, hash: &[u8; 32]) {
        let q = self.dir.join("quarantine");
        let moved = std::fs::create_dir_all(&q).and_then(|()| {
            std::fs::rename(
                self.path(hash),
                q.join(format!("{}-{}", hex(hash), unique())),
            )
        });
        tracing::error!(target: "keel::txn", blob = %hex(hash), moved = moved.is_ok(), "blob bytes do not match their hash; quarantined, to be fetched again");
    }

    fn remove_stale_puts(&self, grace: Duration) -> usize {
        let now = SystemTime::now();
        let Ok(entries) = std::fs::read_dir(&self.dir) else {
            return 0;
        };
        let mut gone = 0;
        for e in entries.flatten() {
            let name = e.file_name();
            let name = name.to_string_lossy();
            // A live transfer writes its file all the time, so it is never this old.
            let stale = e
                .metadata()
                .and_then(|m| m.modified())
                .is_ok_and(|t| now.duration_since(t).unwrap_or_default() >= grace);
            if name.starts_with(PUT_PREFIX)
                && name.ends_with(".tmp")
                && stale
                && std::fs::remove_file(e.path()).is_ok()
            {
                gone += 1;
            }
        }
        gone
    }
}

/// Blobs in memory (the simulator, unit tests). Ages are always zero: the simulator keeps
/// its own clock of when each blob came.
#[derive(Default, Clone)]
pub struct MemStore {
    blobs: Arc<Mutex<MemMap>>,
}

type MemMap = HashMap<[u8; 32], Arc<Vec<u8>>>;

struct MemSink {
    buf: Vec<u8>,
    store: MemStore,
}

impl Write for MemSink {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.buf.extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl BlobSink for MemSink {
    fn commit(self: Box<Self>, hash: &[u8; 32]) -> std::io::Result<()> {
        let MemSink { buf, store } = *self;
        lock(&store.blobs).insert(*hash, Arc::new(buf));
        Ok(())
    }
}

impl BlobStore for MemStore {
    fn put(&self) -> std::io::Result<Box<dyn BlobSink>> {
        Ok(Box::new(MemSink {
            buf: Vec::new(),
            store: self.clone(),
        }))
    }

    fn open(&self, hash: &[u8; 32], offset: u64) -> Option<Box<dyn Read + Send>> {
        let bytes = lock(&self.blobs).get(hash)?.clone();
        let mut cursor = std::io::Cursor::new(ArcBytes(bytes));
        cursor.set_position(offset);
        Some(Box::new(cursor))
    }

    fn len(&self, hash: &[u8; 32]) -> Option<u64> {
        lock(&self.blobs).get(hash).map(|b| b.len() as u64)
    }

    fn delete(&self, hash: &[u8; 32]) {
        lock(&self.blobs).remove(hash);
    }

    fn list(&self) -> Vec<([u8; 32], Duration)> {
        lock(&self.blobs)
            .keys()
            .map(|h| (*h, Duration::ZERO))
            .collect()
    }

    fn touch(&self, _: &[u8; 32]) {}

    fn age(&self, hash: &[u8; 32]) -> Option<Duration> {
        lock(&self.blobs)
            .contains_key(hash)
            .then_some(Duration::ZERO)
    }

    fn quarantine(&self, hash: &[u8; 32]) {
        self.delete(hash);
    }

    fn remove_stale_puts(&self, _: Duration) -> usize {
        0
    }
}

/// Shared bytes a cursor can read without copying them.
struct ArcBytes(Arc<Vec<u8>>);

impl AsRef<[u8]> for ArcBytes {
    fn as_ref(&self) -> &[u8] {
        &self.0
    }
}
