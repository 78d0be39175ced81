//! Write errors and a full disk, injected under redb through a custom `StorageBackend`: they
//! surface as typed errors, every later write fails too (the node fail-stops), and the file
//! reopens at the last durable commit.

mod common;

use std::fs::OpenOptions;
use std::io;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicU8, Ordering};

use common::{batch, entries};
use keel_raft::HardState;
use keel_storage::{
    DATA_FILE, LogId, LogWrite, MemStorage, RedbStorage, Storage, StorageError, StorageOptions,
};
use redb::StorageBackend;
use redb::backends::FileBackend;

const HEALTHY: u8 = 0;
const DISK_FULL: u8 = 1;
const SYNC_FAILS: u8 = 2;

/// A file backend whose writes (or syncs) fail while the switch says so.
#[derive(Debug)]
struct Faulty {
    inner: FileBackend,
    mode: Arc<AtomicU8>,
}

impl Faulty {
    fn check(&self, op_is_sync: bool) -> io::Result<()> {
        match self.mode.load(Ordering::SeqCst) {
            DISK_FULL if !op_is_sync => Err(io::Error::from(io::ErrorKind::StorageFull)),
            SYNC_FAILS if op_is_sync => Err(io::Error::other("injected fsync failure (EIO)")),
            _ => Ok(()),
        }
    }
}

impl StorageBackend for Faulty {
    fn len(&self) -> io::Result<u64> {
        self.inner.len()
    }
    fn read(&self, offset: u64, out: &mut [u8]) -> io::Result<()> {
        self.inner.read(offset, out)
    }
    fn set_len(&self, len: u64) -> io::Result<()> {
        self.check(false)?;
        self.inner.set_len(len)
    }
    fn sync_data(&self) -> io::Result<()> {
        self.check(true)?;
        self.inner.sync_data()
    }
    fn write(&self, offset: u64, data: &[u8]) -> io::Result<()> {
        self.check(false)?;
        self.inner.write(offset, data)
    }
    fn close(&self) -> io::Result<()> {
        self.inner.close()
    }
}

fn open_faulty(dir: &Path) -> (RedbStorage, Arc<AtomicU8>) {
    let path = dir.join(DATA_FILE);
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(&path)
        .expect("file");
    let mode = Arc::new(AtomicU8::new(HEALTHY));
    let backend = Faulty {
        inner: FileBackend::new(file).expect("backend"),
        mode: Arc::clone(&mode),
    };
    let store =
        RedbStorage::open_with_backend(path, backend, StorageOptions::default()).expect("open");
    (store, mode)
}

fn fail_stop_then_reopen_at_last_durable_commit(mode_to_inject: u8) -> StorageError {
    let dir = tempfile::tempdir().expect("tempdir");
    let (durable, err) = {
        let (store, mode) = open_faulty(dir.path());
        store
            .persist(LogWrite {
                hard_state: Some(HardState {
                    term: 2,
                    vote: Some(1),
                }),
                entries: &entries(1, 50, 2),
                ..LogWrite::default()
            })
            .expect("healthy persist");
        store
            .apply(&batch(&entries(1, 20, 2)))
            .expect("healthy apply");
        store
            .persist(LogWrite {
                entries: &entries(51, 60, 2),
                ..LogWrite::default()
            })
            .expect("healthy persist");
        let durable = store.recover().expect("recover");

        mode.store(mode_to_inject, Ordering::SeqCst);
        // Enough data that the commit must write pages, not only the header.
        let err = store
            .persist(LogWrite {
                hard_state: Some(HardState {
                    term: 3,
                    vote: None,
                }),
                entries: &entries(61, 400, 3),
                ..LogWrite::default()
            })
            .expect_err("write under an injected fault");
        assert!(
            err.to_string().contains(DATA_FILE),
            "error does not name the file: {err}"
        );

        // The fault clears, but the store stays failed: the node must stop, not carry on.
        mode.store(HEALTHY, Ordering::SeqCst);
        assert!(
            store
                .persist(LogWrite {
                    entries: &entries(61, 61, 3),
                    ..LogWrite::default()
                })
                .is_err()
        );
        (durable, err)
    };
    let store =
        RedbStorage::open(dir.path(), StorageOptions::default()).expect("reopen after the fault");
    let r = store.recover().expect("recover");
    assert_eq!(r.hard_state, durable.hard_state);
    assert_eq!(r.log.last, LogId { index: 60, term: 2 });
    assert_eq!(r.applied.last_applied, LogId { index: 20, term: 2 });
    assert_eq!(
        store.entries(1, 100, None).expect("entries"),
        entries(1, 60, 2)
    );
    err
}

#[test]
fn a_full_disk_is_a_typed_error_and_the_file_keeps_its_last_durable_commit() {
    let err = fail_stop_then_reopen_at_last_durable_commit(DISK_FULL);
    assert!(err.is_disk_full(), "not reported as a full disk: {err:?}");
    assert!(matches!(err, StorageError::Redb { .. }), "{err:?}");
}

#[test]
fn a_failed_fsync_is_a_typed_error_and_the_file_keeps_its_last_durable_commit() {
    let err = fail_stop_then_reopen_at_last_durable_commit(SYNC_FAILS);
    assert!(!err.is_disk_full(), "{err:?}");
    assert!(matches!(err, StorageError::Redb { .. }), "{err:?}");
}

#[test]
fn the_memory_store_injects_write_failures_for_the_simulator() {
    let s = MemStorage::new();
    s.persist(LogWrite {
        entries: &entries(1, 3, 1),
        ..LogWrite::default()
    })
    .expect("persist");
    s.fail_writes(true);
    let err = s
        .persist(LogWrite {
            entries: &entries(4, 4, 1),
            ..LogWrite::default()
        })
        .expect_err("injected");
    assert!(matches!(err, StorageError::Injected), "{err}");
    assert!(s.apply(&batch(&entries(1, 1, 1))).is_err());
    assert_eq!(
        s.log_bounds().expect("reads still work").last,
        LogId { index: 3, term: 1 }
    );
    s.fail_writes(false);
    s.persist(LogWrite {
        entries: &entries(4, 4, 1),
        ..LogWrite::default()
    })
    .expect("healthy again");
}
