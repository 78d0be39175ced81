//! Damaged files: flipped bytes, truncation, foreign files. Opening must fail with an error
//! naming the file, never panic, never serve data other than what was written.

mod common;

use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::Path;

use common::{batch, entries};
use keel_raft::HardState;
use keel_storage::{
    DATA_FILE, LogWrite, RecoveredState, RedbStorage, StateView, Storage, StorageError,
    StorageOptions,
};

const MARKER: &[u8] = b"KEEL-CORRUPTION-MARKER-0123456789";

/// Everything readable from a store: what a restarted node would act on.
fn read_all(
    dir: &Path,
) -> Result<
    (
        RecoveredState,
        Vec<keel_raft::Entry>,
        Vec<keel_storage::KvRecord>,
    ),
    StorageError,
> {
    let s = RedbStorage::open(dir, StorageOptions::default())?;
    let r = s.recover()?;
    let log = s.entries(r.log.first_index(), r.log.last.index + 1, None)?;
    let kv = s.view()?.scan_kv(None, usize::MAX)?;
    Ok((r, log, kv))
}

fn populate(dir: &Path) {
    let s = RedbStorage::open(dir, StorageOptions::default()).expect("open");
    s.persist(LogWrite {
        hard_state: Some(HardState {
            term: 3,
            vote: Some(1),
        }),
        entries: &entries(1, 40, 3),
        ..LogWrite::default()
    })
    .expect("persist");
    s.apply(&batch(&entries(1, 30, 3))).expect("apply");
    s.close().expect("close");
}

/// The finding that decides the per-entry checksum: redb alone, opened the ordinary way, serves
/// a value whose byte was flipped on disk; only its integrity check (which Keel runs at every
/// open) notices.
#[test]
fn redb_serves_a_flipped_value_byte_unless_the_integrity_check_runs() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("plain.redb");
    let table: redb::TableDefinition<'_, u64, &[u8]> = redb::TableDefinition::new("t");
    {
        let db = redb::Database::create(&path).expect("create");
        let txn = db.begin_write().expect("write");
        txn.open_table(table)
            .expect("table")
            .insert(1, MARKER)
            .expect("insert");
        txn.commit().expect("commit");
    }
    let mut bytes = std::fs::read(&path).expect("read");
    let at = bytes
        .windows(MARKER.len())
        .position(|w| w == MARKER)
        .expect("marker on disk");
    bytes[at + 3] ^= 0x01;
    std::fs::write(&path, &bytes).expect("write");

    let served = {
        let db = redb::Database::open(&path).expect("plain open does not check");
        let txn = redb::ReadableDatabase::begin_read(&db).expect("read");
        let t = txn.open_table(table).expect("table");
        redb::ReadableTable::get(&t, 1)
            .expect("get")
            .expect("present")
            .value()
            .to_vec()
    };
    assert_ne!(
        served, MARKER,
        "redb noticed the flipped byte on a plain open"
    );

    let checked = redb::Database::builder()
        .set_check_integrity_on_open(true)
        .open(&path);
    assert!(
        checked.is_err(),
        "the integrity check missed the flipped byte"
    );
}

/// Flip one byte at a time over the whole file: every open either fails naming the file, or
/// yields exactly the data written (the byte was in unused space). Never a panic.
#[test]
fn a_flipped_byte_anywhere_fails_the_open_or_changes_nothing() {
    let dir = tempfile::tempdir().expect("tempdir");
    populate(dir.path());
    let expected = read_all(dir.path()).expect("intact");
    let path = dir.path().join(DATA_FILE);
    let pristine = std::fs::read(&path).expect("read");
    let (mut refused, mut harmless) = (0, 0);
    // Every 241st byte (prime, so offsets within pages vary), plus every 3rd byte of the
    // header, where the commit slots live.
    let positions = (0..pristine.len()).step_by(241).chain((0..512).step_by(3));
    for at in positions {
        let mut bytes = pristine.clone();
        bytes[at] ^= 0x10;
        std::fs::write(&path, &bytes).expect("write");
        match catch_unwind(AssertUnwindSafe(|| read_all(dir.path()))) {
            Err(_) => panic!("panicked on a flipped byte at offset {at}"),
            Ok(Err(e)) => {
                assert!(
                    e.to_string().contains(DATA_FILE),
                    "error does not name the file: {e}"
                );
                refused += 1;
            }
            Ok(Ok(got)) => {
                assert!(
                    got == expected,
                    "flipped byte at offset {at} changed the data served"
                );
                harmless += 1;
            }
        }
    }
    eprintln!(
        "{} bytes: {refused} flips refused at open, {harmless} harmless",
        pristine.len()
    );
    assert!(refused > 0 && harmless > 0);
}

#[test]
fn a_truncated_file_fails_the_open_naming_the_file() {
    let dir = tempfile::tempdir().expect("tempdir");
    populate(dir.path());
    let path = dir.path().join(DATA_FILE);
    let pristine = std::fs::read(&path).expect("read");
    for len in [0, 1, 100, 4096, pristine.len() / 2, pristine.len() - 1] {
        std::fs::write(&path, &pristine[..len]).expect("truncate");
        match catch_unwind(AssertUnwindSafe(|| read_all(dir.path()))) {
            Err(_) => panic!("panicked on a file truncated to {len} bytes"),
            Ok(Ok(_)) => panic!("a file truncated to {len} bytes opened"),
            Ok(Err(e)) => assert!(
                e.to_string().contains(DATA_FILE),
                "error does not name the file: {e}"
            ),
        }
    }
}

#[test]
fn a_foreign_file_is_refused() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join(DATA_FILE);
    std::fs::write(&path, b"this is a text file, not a database\n".repeat(200)).expect("write");
    let err = RedbStorage::open(dir.path(), StorageOptions::default()).expect_err("text file");
    assert!(err.to_string().contains(DATA_FILE), "{err}");

    std::fs::remove_file(&path).expect("rm");
    {
        let db = redb::Database::create(&path).expect("create");
        let txn = db.begin_write().expect("write");
        let other: redb::TableDefinition<'_, &str, u64> = redb::TableDefinition::new("accounts");
        txn.open_table(other)
            .expect("table")
            .insert("alice", 5)
            .expect("insert");
        txn.commit().expect("commit");
    }
    let err = RedbStorage::open(dir.path(), StorageOptions::default()).expect_err("foreign redb");
    assert!(matches!(err, StorageError::Foreign { .. }), "{err}");
    assert!(err.to_string().contains("accounts"), "{err}");
}

/// Why two-phase commit is on by default: damage to the pages of the newest commit. With
/// one-phase commit redb cannot tell it from a commit torn by power loss, and silently opens
/// the commit before — a node would forget its latest vote and log entries it acknowledged.
/// With two-phase commit the newest commit is known complete, so the damage is reported.
#[test]
fn damage_to_the_newest_commit_is_refused_with_two_phase_commit_and_rolled_back_without() {
    for two_phase_commit in [true, false] {
        let dir = tempfile::tempdir().expect("tempdir");
        let options = StorageOptions {
            two_phase_commit,
            ..StorageOptions::default()
        };
        {
            let s = RedbStorage::open(dir.path(), options.clone()).expect("open");
            s.persist(LogWrite {
                hard_state: Some(HardState {
                    term: 1,
                    vote: Some(1),
                }),
                entries: &entries(1, 10, 1),
                ..LogWrite::default()
            })
            .expect("persist");
            let mut newest = entries(11, 11, 2);
            newest[0].record = keel_raft::Record::Command(keel_raft::Command {
                plugin: "alpha".into(),
                client: None,
                payload: keel_raft::Payload::Inline(MARKER.to_vec()),
            });
            s.persist(LogWrite {
                hard_state: Some(HardState {
                    term: 2,
                    vote: Some(3),
                }),
                entries: &newest,
                ..LogWrite::default()
            })
            .expect("persist");
            // Left as a crash leaves it: a clean close would add a later two-phase commit.
            std::mem::forget(s);
        }
        // The crashed process still holds its lock on the file: examine a copy, as a restarted
        // node would find it on disk.
        let mut bytes = std::fs::read(dir.path().join(DATA_FILE)).expect("read");
        let at = bytes
            .windows(MARKER.len())
            .position(|w| w == MARKER)
            .expect("marker on disk");
        bytes[at] ^= 0x01;
        let copy = tempfile::tempdir().expect("tempdir");
        std::fs::write(copy.path().join(DATA_FILE), &bytes).expect("write");

        let opened = catch_unwind(AssertUnwindSafe(|| {
            RedbStorage::open(copy.path(), options.clone()).and_then(|s| s.recover())
        }))
        .expect("no panic");
        if two_phase_commit {
            let err = opened.expect_err("two-phase: damage reported");
            assert!(
                matches!(&err, StorageError::Open { source, .. }
                    if matches!(**source, redb::Error::Corrupted(_))),
                "{err}"
            );
            assert!(err.to_string().contains(DATA_FILE), "{err}");
        } else {
            let r = opened.expect("one-phase: opens");
            assert_eq!(
                r.hard_state,
                HardState {
                    term: 1,
                    vote: Some(1)
                },
                "one-phase: rolled back the vote"
            );
            assert_eq!(
                r.log.last.index, 10,
                "one-phase: rolled back the newest entry"
            );
        }
    }
}
