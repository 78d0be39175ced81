//! What makes one-phase commits safe for Raft (see `docs/storage.md`, "Durable commits"):
//!
//! - [`HeaderLast`], the data file's backend: it writes redb's header after every other page of
//!   a commit, so that a killed process leaves its commits whole in the page cache and only a
//!   machine going down can tear one;
//! - the **boot record** (`keel.redb.boot`): the boot of the machine in which the data file was
//!   last opened for writing. If the newest commit fails its checksums and the machine has not
//!   restarted since, it was not torn: the damage came after its fsync, and the commit may have
//!   been acknowledged;
//! - the **open verdict**: redb's repair callback (a page of the newest commit fails) and the
//!   header watch of [`HeaderLast`] (the newest commit's slot fails) tell when redb is about to
//!   fall back to the commit before; Keel refuses that unless the commit may have been torn;
//! - the **sealer**: a thread that, once no append has come for a while, makes an empty
//!   two-phase commit, so that an acknowledged one-phase commit stays the newest only briefly.

use std::io::{self, Write};
use std::ops::Bound;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex, PoisonError};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use redb::backends::FileBackend;
use redb::{BackendError, Database, RepairSession, StorageBackend};

use crate::StorageError;

/// Name of the boot record beside the data file.
pub const BOOT_FILE: &str = "keel.redb.boot";

const BOOT_ID: &str = "/proc/sys/kernel/random/boot_id";

/// The machine's current boot id (Linux); `None` elsewhere, which makes every fall-back refused.
pub(crate) fn current_boot() -> Option<String> {
    let id = std::fs::read_to_string(BOOT_ID).ok()?;
    valid_boot_id(id.trim())
}

/// A boot id is a UUID; anything else (a damaged record) counts as unknown.
fn valid_boot_id(s: &str) -> Option<String> {
    let ok = s.len() == 36 && s.chars().all(|c| c.is_ascii_hexdigit() || c == '-');
    ok.then(|| s.to_string())
}

/// The boot recorded by the last writer of `dir`'s data file, if readable.
pub(crate) fn recorded_boot(dir: &Path) -> Option<String> {
    let text = std::fs::read_to_string(dir.join(BOOT_FILE)).ok()?;
    valid_boot_id(text.trim())
}

/// Records `boot` durably before this process makes any one-phase commit: write a temporary
/// file, sync it, rename it over the record, sync the directory.
pub(crate) fn record_boot(dir: &Path, boot: &str) -> Result<(), StorageError> {
    let path = dir.join(BOOT_FILE);
    let tmp = dir.join(format!("{BOOT_FILE}.new"));
    let io = |p: &Path| {
        let p = p.to_path_buf();
        move |source| StorageError::BootRecord { path: p, source }
    };
    {
        let mut f = std::fs::File::create(&tmp).map_err(io(&tmp))?;
        f.write_all(format!("{boot}\n").as_bytes())
            .map_err(io(&tmp))?;
        f.sync_data().map_err(io(&tmp))?;
    }
    std::fs::rename(&tmp, &path).map_err(io(&path))?;
    std::fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io(dir))
}

/// Whether the newest commit may have been torn by the machine going down: only if the boot it
/// was written in is known and differs from the current one.
pub(crate) fn torn_possible(recorded: Option<&str>, current: Option<&str>) -> bool {
    matches!((recorded, current), (Some(r), Some(c)) if r != c)
}

/// What one open saw: redb falling back from the newest commit, through its repair callback
/// (the commit's pages fail their checksums) or through the header (its commit slot does).
#[derive(Clone, Default)]
pub(crate) struct Verdict {
    fell_back: Arc<AtomicBool>,
}

impl Verdict {
    /// A repair callback that notes a fall-back from the newest commit, and aborts it unless
    /// `allow_fall_back`.
    ///
    /// redb (4.x, `Database::do_repair`) calls back at progress 0.0 and 0.6 on every repair,
    /// and at 0.3 only after the newest commit failed verification, just before it swaps to the
    /// commit before. `t40_corruption.rs` pins this: if a redb upgrade changes it, the test of a
    /// damaged newest commit fails.
    pub(crate) fn callback(&self, allow_fall_back: bool) -> impl Fn(&mut RepairSession) + 'static {
        let fell_back = Arc::clone(&self.fell_back);
        move |session: &mut RepairSession| {
            let p = session.progress();
            if p > 0.2 && p < 0.5 {
                fell_back.store(true, Ordering::SeqCst);
                if !allow_fall_back {
                    session.abort();
                }
            }
        }
    }

    /// Whether redb found the newest commit damaged (and fell back, or was stopped).
    pub(crate) fn fell_back(&self) -> bool {
        self.fell_back.load(Ordering::SeqCst)
    }

    fn note_fall_back(&self) {
        self.fell_back.store(true, Ordering::SeqCst);
    }
}

#[derive(Default)]
struct SealState {
    /// When the last one-phase commit not yet followed by a two-phase one was made.
    unsealed_since: Option<Instant>,
    stop: bool,
}

#[derive(Default)]
struct SealShared {
    state: Mutex<SealState>,
    wake: Condvar,
}

/// Seals one-phase commits with an empty two-phase commit once appends pause for `idle`.
/// Dropping it stops the thread (after a seal in progress).
pub(crate) struct Sealer {
    shared: Arc<SealShared>,
    thread: Option<JoinHandle<()>>,
}

impl Sealer {
    pub(crate) fn start(db: Arc<Database>, path: Arc<PathBuf>, idle: Duration) -> Self {
        let shared = Arc::new(SealShared::default());
        let s = Arc::clone(&shared);
        let thread = std::thread::Builder::new()
            .name("keel-storage-seal".into())
            .spawn(move || seal_loop(&db, &path, &s, idle))
            .ok();
        if thread.is_none() {
            tracing::warn!(target: "keel::txn", "cannot start the seal thread; one-phase commits stay unsealed until the next two-phase one");
        }
        Sealer { shared, thread }
    }

    /// A one-phase commit just returned.
    pub(crate) fn note_one_phase(&self) {
        let mut st = self
            .shared
            .state
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        st.unsealed_since = Some(Instant::now());
        self.shared.wake.notify_one();
    }
}

impl Drop for Sealer {
    fn drop(&mut self) {
        self.shared
            .state
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .stop = true;
        self.shared.wake.notify_one();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn seal_loop(db: &Database, path: &Path, shared: &SealShared, idle: Duration) {
    let lock = || shared.state.lock().unwrap_or_else(PoisonError::into_inner);
    let mut st = lock();
    loop {
        if st.stop {
            return;
        }
        let Some(since) = st.unsealed_since else {
            st = shared.wake.wait(st).unwrap_or_else(PoisonError::into_inner);
            continue;
        };
        let quiet = since.elapsed();
        if quiet < idle {
            st = shared
                .wake
                .wait_timeout(st, idle - quiet)
                .unwrap_or_else(PoisonError::into_inner)
                .0;
            continue;
        }
        st.unsealed_since = None;
        drop(st);
        // A commit that lands between here and the seal's begin_write is sealed too (the seal
        // commits after it) and asks for another seal: harmless.
        let sealed = db
            .begin_write()
            .map_err(redb::Error::from)
            .and_then(|mut txn| {
                txn.set_two_phase_commit(true);
                txn.commit().map_err(redb::Error::from)
            });
        if let Err(e) = sealed {
            // redb refuses every later write after an I/O error, so the node's own next write
            // reports it and fail-stops; nothing more to do here.
            tracing::error!(target: "keel::txn", path = %path.display(), error = %e, "seal commit failed");
            return;
        }
        st = lock();
    }
}

/// The data file's backend: redb's own file backend, except that writes to the super-header
/// (the first page, holding the commit slots) are held back until the next `sync_data`, and
/// issued after every other write of the commit.
///
/// redb's write buffer writes a commit's pages in no particular order before its fsync, the
/// header possibly first; a process killed in between would leave a header naming pages that
/// never reached the file, a commit torn without the machine going down. Written last, the
/// header names only pages already in the OS's page cache, so only a machine crash can tear a
/// commit, which is what the boot record tells apart.
///
/// It also watches the open: redb picks the commit slot to open in the header, before any
/// repair callback, and silently takes the other slot when the primary one's own checksum
/// fails (`select_primary_slot`). The first header write of an open is redb's repaired header.
/// If it names the other slot primary while the slot read as primary fails its checksum, redb
/// is falling back from the newest commit, and unless that is allowed the write is refused:
/// the open fails and the file stays as it was. (If the slot read verifies, redb is rolling
/// forward to a newer commit whose phase one was durable — a two-phase commit cut between its
/// two fsyncs — which loses nothing.)
pub(crate) struct HeaderLast {
    inner: FileBackend,
    /// Held-back writes to the super-header, in order.
    held: Mutex<Vec<(u64, Vec<u8>)>>,
    /// Until the first header write of the open: the header read, whether another primary
    /// slot is allowed, and where to report it.
    open_watch: Arc<Mutex<Option<OpenWatch>>>,
}

/// Ends the watch of a [`HeaderLast`] once the open is over.
pub(crate) struct OpenDone(Arc<Mutex<Option<OpenWatch>>>);

impl OpenDone {
    pub(crate) fn done(self) {
        *self.0.lock().unwrap_or_else(PoisonError::into_inner) = None;
    }
}

struct OpenWatch {
    /// The super-header as first read by the open.
    read: Option<Vec<u8>>,
    allow_fall_back: bool,
    verdict: Verdict,
}

impl std::fmt::Debug for HeaderLast {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HeaderLast")
            .field("inner", &self.inner)
            .finish_non_exhaustive()
    }
}

/// redb's super-header lives in the first page.
const HEADER_PAGE: u64 = 4096;
/// redb's file format (redb 4, `header.rs`): the god byte follows the 9-byte magic number, and
/// its lowest bit names the primary commit slot; two slots of 128 bytes follow at 64 and 192,
/// each ending with the XXH3-128 (seed 0) of its first 112 bytes, little-endian.
const GOD_BYTE: usize = 9;
const PRIMARY_BIT: u8 = 1;
const SLOT_0: usize = 64;
const SLOT_LEN: usize = 128;
const SLOT_SUM: usize = SLOT_LEN - 16;

/// Whether commit slot `slot` (0 or 1) of a super-header passes its checksum.
fn slot_verifies(header: &[u8], slot: usize) -> bool {
    let at = SLOT_0 + slot * SLOT_LEN;
    let Some(bytes) = header.get(at..at + SLOT_LEN) else {
        return false;
    };
    let (body, sum) = bytes.split_at(SLOT_SUM);
    let Ok(sum) = <[u8; 16]>::try_from(sum) else {
        return false;
    };
    xxhash_rust::xxh3::xxh3_128_with_seed(body, 0) == u128::from_le_bytes(sum)
}

impl HeaderLast {
    pub(crate) fn new(
        inner: FileBackend,
        allow_fall_back: bool,
        verdict: Verdict,
    ) -> (Self, OpenDone) {
        let watch = Arc::new(Mutex::new(Some(OpenWatch {
            read: None,
            allow_fall_back,
            verdict,
        })));
        let backend = HeaderLast {
            inner,
            held: Mutex::new(Vec::new()),
            open_watch: Arc::clone(&watch),
        };
        (backend, OpenDone(watch))
    }

    fn watch(&self) -> std::sync::MutexGuard<'_, Option<OpenWatch>> {
        self.open_watch
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    /// Checks the first header write of the open against the header read.
    fn check_open(&self, offset: u64, data: &[u8]) -> io::Result<()> {
        let mut watch = self.watch();
        let Some(w) = watch.as_ref() else {
            return Ok(());
        };
        let Some(&written) = (offset == 0).then(|| data.get(GOD_BYTE)).flatten() else {
            return Ok(());
        };
        let fell_back = w.read.as_deref().is_some_and(|read| {
            let primary = read.get(GOD_BYTE).map(|g| g & PRIMARY_BIT);
            let swapped = primary.is_some_and(|p| p != written & PRIMARY_BIT);
            swapped && !primary.is_some_and(|p| slot_verifies(read, usize::from(p)))
        });
        let refuse = fell_back && !w.allow_fall_back;
        if fell_back {
            w.verdict.note_fall_back();
        }
        *watch = None;
        if refuse {
            return Err(io::Error::other(
                "the newest commit slot fails its checksum: refusing to fall back",
            ));
        }
        Ok(())
    }

    fn held(&self) -> std::sync::MutexGuard<'_, Vec<(u64, Vec<u8>)>> {
        self.held.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn release(&self) -> io::Result<()> {
        let mut held = self.held();
        for (offset, data) in held.iter() {
            self.inner.write(*offset, data)?;
        }
        held.clear();
        Ok(())
    }
}

impl StorageBackend for HeaderLast {
    fn len(&self) -> io::Result<u64> {
        self.inner.len()
    }

    fn read(&self, offset: u64, out: &mut [u8]) -> io::Result<()> {
        self.inner.read(offset, out)?;
        if offset == 0
            && out.len() >= SLOT_0 + 2 * SLOT_LEN
            && let Some(w) = self.watch().as_mut()
            && w.read.is_none()
        {
            w.read = Some(out.to_vec());
        }
        // Serve held-back header bytes as if written.
        let end = offset + out.len() as u64;
        for (at, data) in self.held().iter() {
            let (lo, hi) = (offset.max(*at), end.min(*at + data.len() as u64));
            if lo < hi {
                let (o, d) = ((lo - offset) as usize, (lo - at) as usize);
                let n = (hi - lo) as usize;
                out[o..o + n].copy_from_slice(&data[d..d + n]);
            }
        }
        Ok(())
    }

    fn set_len(&self, len: u64) -> io::Result<()> {
        self.inner.set_len(len)
    }

    fn sync_data(&self) -> io::Result<()> {
        self.release()?;
        self.inner.sync_data()
    }

    fn write(&self, offset: u64, data: &[u8]) -> io::Result<()> {
        if offset < HEADER_PAGE {
            self.check_open(offset, data)?;
            let mut held = self.held();
            // A later write of the same bytes replaces an earlier one: one header write per sync.
            match held
                .iter_mut()
                .find(|(o, d)| *o == offset && d.len() == data.len())
            {
                Some((_, d)) => d.copy_from_slice(data),
                None => held.push((offset, data.to_vec())),
            }
            return Ok(());
        }
        self.inner.write(offset, data)
    }

    fn close(&self) -> io::Result<()> {
        self.release()?;
        self.inner.close()
    }

    fn try_lock_range(&self, start: Bound<u64>, end: Bound<u64>) -> Result<bool, BackendError> {
        self.inner.try_lock_range(start, end)
    }

    fn try_lock_shared_range(
        &self,
        start: Bound<u64>,
        end: Bound<u64>,
    ) -> Result<bool, BackendError> {
        self.inner.try_lock_shared_range(start, end)
    }

    fn lock_range(&self, start: Bound<u64>, end: Bound<u64>) -> Result<(), BackendError> {
        self.inner.lock_range(start, end)
    }

    fn lock_shared_range(&self, start: Bound<u64>, end: Bound<u64>) -> Result<(), BackendError> {
        self.inner.lock_shared_range(start, end)
    }

    fn unlock_range(&self, start: Bound<u64>, end: Bound<u64>) -> Result<(), BackendError> {
        self.inner.unlock_range(start, end)
    }

    fn query_lock_range(&self, start: Bound<u64>, end: Bound<u64>) -> Result<bool, BackendError> {
        self.inner.query_lock_range(start, end)
    }
}

impl Drop for HeaderLast {
    fn drop(&mut self) {
        // A header write not followed by a sync (none in redb today) still reaches the file.
        let _ = self.release();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The slot layout and checksum above are redb's: a fresh file's slots verify, and a flipped
    /// byte in one fails it.
    #[test]
    fn slot_checksums_are_redbs() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("t.redb");
        {
            let db = Database::create(&path).expect("create");
            for _ in 0..3 {
                let txn = db.begin_write().expect("write");
                txn.commit().expect("commit");
            }
        }
        let mut header = std::fs::read(&path).expect("read");
        header.truncate(4096);
        assert!(slot_verifies(&header, 0) && slot_verifies(&header, 1));
        header[SLOT_0 + 8] ^= 1;
        assert!(!slot_verifies(&header, 0) && slot_verifies(&header, 1));
    }

    #[test]
    fn only_a_known_other_boot_makes_a_torn_commit_possible() {
        let a = "5d6a1d8e-2c1f-4c55-9f1a-0e6c2b8a9d11";
        let b = "0f0e4b7a-8d2c-4b1e-a6f3-3c9d1e2f4a55";
        assert!(torn_possible(Some(a), Some(b)));
        assert!(!torn_possible(Some(a), Some(a)));
        assert!(!torn_possible(None, Some(b)));
        assert!(!torn_possible(Some(a), None));
        assert_eq!(valid_boot_id("not a boot id"), None);
    }
}
