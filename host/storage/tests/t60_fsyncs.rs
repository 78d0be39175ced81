//! How many fsyncs each kind of write costs, counted under redb by a `StorageBackend` that
//! passes through to the file: the default makes ONE per log append (issue 14), the old
//! two-phase mode two; new terms/votes stay two-phase in both.

mod common;

use std::fs::OpenOptions;
use std::io;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use common::{batch, entries};
use keel_raft::HardState;
use keel_storage::{DATA_FILE, LogWrite, RedbStorage, Storage, StorageOptions};
use redb::StorageBackend;
use redb::backends::FileBackend;

/// A file backend that counts `sync_data` calls (fsync/fdatasync), and `set_len` calls: when
/// the file grows, redb may make the new length durable with a sync of its own, a cost of the
/// file's size (amortised over many commits), not of a commit.
#[derive(Debug)]
struct Counting {
    inner: FileBackend,
    syncs: Arc<AtomicU64>,
    growths: Arc<AtomicU64>,
}

impl StorageBackend for Counting {
    fn len(&self) -> io::Result<u64> {
        self.inner.len()
    }
    fn read(&self, offset: u64, out: &mut [u8]) -> io::Result<()> {
        self.inner.read(offset, out)
    }
    fn set_len(&self, len: u64) -> io::Result<()> {
        self.growths.fetch_add(1, Ordering::SeqCst);
        self.inner.set_len(len)
    }
    fn sync_data(&self) -> io::Result<()> {
        self.syncs.fetch_add(1, Ordering::SeqCst);
        self.inner.sync_data()
    }
    fn write(&self, offset: u64, data: &[u8]) -> io::Result<()> {
        self.inner.write(offset, data)
    }
    fn close(&self) -> io::Result<()> {
        self.inner.close()
    }
}

struct Counts {
    syncs: Arc<AtomicU64>,
    growths: Arc<AtomicU64>,
}

fn open_counting(dir: &Path, options: StorageOptions) -> (RedbStorage, Counts) {
    let path = dir.join(DATA_FILE);
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(&path)
        .expect("file");
    let counts = Counts {
        syncs: Arc::new(AtomicU64::new(0)),
        growths: Arc::new(AtomicU64::new(0)),
    };
    let backend = Counting {
        inner: FileBackend::new(file).expect("backend"),
        syncs: Arc::clone(&counts.syncs),
        growths: Arc::clone(&counts.growths),
    };
    let store = RedbStorage::open_with_backend(path, backend, options).expect("open");
    (store, counts)
}

/// fsyncs made by `f`; asserts that it made `per_commit` per commit, plus at most one per
/// growth of the file.
fn syncs_of(counts: &Counts, commits: u64, per_commit: u64, f: impl FnOnce()) -> u64 {
    let (s0, g0) = (
        counts.syncs.load(Ordering::SeqCst),
        counts.growths.load(Ordering::SeqCst),
    );
    f();
    let syncs = counts.syncs.load(Ordering::SeqCst) - s0;
    let growths = counts.growths.load(Ordering::SeqCst) - g0;
    eprintln!("{commits} commits: {syncs} fsyncs, file grown {growths} times");
    assert!(
        syncs >= commits * per_commit && syncs <= commits * per_commit + growths,
        "{commits} commits made {syncs} fsyncs (file grown {growths} times), expected {per_commit} each"
    );
    syncs
}

/// Appends entries 2..=101 one commit each, after a first commit holding a new vote, then
/// applies 10 entries non-durably, checking the fsyncs per commit of each.
fn count(options: StorageOptions, per_append: u64) {
    let dir = tempfile::tempdir().expect("tempdir");
    let (store, syncs) = open_counting(dir.path(), options);
    syncs_of(&syncs, 1, 2, || {
        store
            .persist(LogWrite {
                hard_state: Some(HardState {
                    term: 1,
                    vote: Some(1),
                }),
                entries: &entries(1, 1, 1),
                ..LogWrite::default()
            })
            .expect("persist");
    });
    syncs_of(&syncs, 100, per_append, || {
        for i in 2..=101 {
            store
                .persist(LogWrite {
                    // The driver may repeat an unchanged hard state: still one fsync.
                    hard_state: (i % 10 == 0).then_some(HardState {
                        term: 1,
                        vote: Some(1),
                    }),
                    entries: &entries(i, i, 1),
                    ..LogWrite::default()
                })
                .expect("persist");
        }
    });
    syncs_of(&syncs, 10, 0, || {
        for i in 1..=10 {
            store.apply(&batch(&entries(i, i, 1))).expect("apply");
        }
    });
}

#[test]
fn by_default_a_log_append_makes_one_fsync_and_a_new_vote_two() {
    count(
        StorageOptions {
            // No seal while counting: it runs only once appends pause.
            seal_after: None,
            ..StorageOptions::default()
        },
        1,
    );
}

#[test]
fn with_two_phase_commit_every_log_append_makes_two_fsyncs() {
    count(
        StorageOptions {
            two_phase_commit: true,
            ..StorageOptions::default()
        },
        2,
    );
}

#[test]
fn the_seal_after_a_pause_is_one_two_phase_commit() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (store, syncs) = open_counting(
        dir.path(),
        StorageOptions {
            seal_after: Some(std::time::Duration::from_millis(20)),
            ..StorageOptions::default()
        },
    );
    // One append, then one two-phase seal, then nothing.
    syncs_of(&syncs, 1, 3, || {
        store
            .persist(LogWrite {
                entries: &entries(1, 1, 1),
                ..LogWrite::default()
            })
            .expect("persist");
        std::thread::sleep(std::time::Duration::from_millis(300));
    });
}
