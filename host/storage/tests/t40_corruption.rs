//! Damaged files: flipped bytes, truncation, foreign files. Opening must fail with an error
//! naming the file, never panic, never serve data other than what was written.

mod common;

use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::Path;

use common::{batch, entries};
use keel_raft::HardState;
use keel_storage::{
    BOOT_FILE, DATA_FILE, LogWrite, RecoveredState, RedbStorage, StateView, Storage, StorageError,
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

/// After a byte flipped at `at`: the open either refuses with an error naming the file
/// (`true`) or serves exactly what was written (`false`); it never panics.
fn refused_or_unchanged<T: PartialEq + std::fmt::Debug, E: std::fmt::Display>(
    read: impl FnOnce() -> Result<T, E>,
    expected: &T,
    at: usize,
) -> bool {
    match catch_unwind(AssertUnwindSafe(read)) {
        Err(_) => panic!("panicked on a flipped byte at offset {at}"),
        Ok(Err(e)) => {
            assert!(
                e.to_string().contains(DATA_FILE),
                "error does not name the file: {e}"
            );
            true
        }
        Ok(Ok(got)) => {
            assert!(
                got == *expected,
                "flipped byte at offset {at} changed the data served: {got:?}"
            );
            false
        }
    }
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
        if refused_or_unchanged(|| read_all(dir.path()), &expected, at) {
            refused += 1;
        } else {
            harmless += 1;
        }
    }
    eprintln!(
        "{} bytes: {refused} flips refused at open, {harmless} harmless",
        pristine.len()
    );
    assert!(refused > 0 && harmless > 0);
}

/// The same over a file left as a crash leaves it, its newest commit one-phase and unsealed
/// (appends after the vote, then applies): in the same boot no flip may make the open roll
/// back to an older commit.
#[test]
fn a_flipped_byte_anywhere_of_an_unsealed_file_fails_the_open_or_changes_nothing() {
    let options = StorageOptions {
        seal_after: None,
        ..StorageOptions::default()
    };
    let dir = tempfile::tempdir().expect("tempdir");
    let s = RedbStorage::open(dir.path(), options.clone()).expect("open");
    s.persist(LogWrite {
        hard_state: Some(HardState {
            term: 3,
            vote: Some(1),
        }),
        entries: &entries(1, 20, 3),
        ..LogWrite::default()
    })
    .expect("persist");
    s.apply(&batch(&entries(1, 15, 3))).expect("apply");
    for i in 21..=40 {
        s.persist(LogWrite {
            entries: &entries(i, i, 3),
            ..LogWrite::default()
        })
        .expect("persist");
    }
    let pristine = std::fs::read(dir.path().join(DATA_FILE)).expect("read");
    let boot = std::fs::read(dir.path().join(BOOT_FILE)).expect("boot record");
    std::mem::forget(s);
    let copy = |bytes: &[u8]| {
        let c = tempfile::tempdir().expect("tempdir");
        std::fs::write(c.path().join(DATA_FILE), bytes).expect("write");
        std::fs::write(c.path().join(BOOT_FILE), &boot).expect("write");
        c
    };
    let expected = read_all(copy(&pristine).path()).expect("intact");
    assert_eq!(expected.0.log.last.index, 40);
    let (mut refused, mut harmless) = (0, 0);
    let positions = (0..pristine.len()).step_by(241).chain((0..512).step_by(3));
    for at in positions {
        let mut bytes = pristine.clone();
        bytes[at] ^= 0x10;
        let c = copy(&bytes);
        if refused_or_unchanged(|| read_all(c.path()), &expected, at) {
            refused += 1;
        } else {
            harmless += 1;
        }
    }
    eprintln!(
        "{} bytes, unsealed: {refused} flips refused at open, {harmless} harmless",
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

/// Writes term 1 / vote 1 with entries 1..=10, then entry 11 alone (carrying `MARKER`) —
/// with `vote_in_newest`, together with a new term and vote — and leaves the store as a crash
/// leaves it (a clean close would add a later two-phase commit). With `seal_wait`, waits that
/// long first (the seal thread may run). Returns a copy of the files as a restarted node would
/// find them on disk, the newest commit damaged: the crashed process still holds its lock.
fn damaged_newest_commit(
    options: &StorageOptions,
    vote_in_newest: bool,
    seal_wait: Option<std::time::Duration>,
) -> tempfile::TempDir {
    damaged_newest_commit_with(options, vote_in_newest, seal_wait, flip_marker)
}

/// Flips a byte of the newest entry: a page of the newest commit.
fn flip_marker(bytes: &mut [u8]) {
    let at = bytes
        .windows(MARKER.len())
        .position(|w| w == MARKER)
        .expect("marker on disk");
    bytes[at] ^= 0x01;
}

/// Flips a byte of the newest commit's slot in redb's header (format: god byte at 9, its low
/// bit names the primary slot; slots of 128 bytes at 64 and 192).
fn flip_primary_slot(bytes: &mut [u8]) {
    let slot = 64 + 128 * usize::from(bytes[9] & 1);
    bytes[slot + 40] ^= 0x01;
}

fn damaged_newest_commit_with(
    options: &StorageOptions,
    vote_in_newest: bool,
    seal_wait: Option<std::time::Duration>,
    damage: fn(&mut [u8]),
) -> tempfile::TempDir {
    let dir = tempfile::tempdir().expect("tempdir");
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
    let mut newest = entries(11, 11, 1);
    newest[0].record = keel_raft::Record::Command(keel_raft::Command {
        plugin: "alpha".into(),
        client: None,
        payload: keel_raft::Payload::Inline(MARKER.to_vec()),
    });
    s.persist(LogWrite {
        hard_state: vote_in_newest.then_some(HardState {
            term: 2,
            vote: Some(3),
        }),
        entries: &newest,
        ..LogWrite::default()
    })
    .expect("persist");
    if let Some(wait) = seal_wait {
        std::thread::sleep(wait);
    }
    let mut bytes = std::fs::read(dir.path().join(DATA_FILE)).expect("read");
    damage(&mut bytes);
    let copy = tempfile::tempdir().expect("tempdir");
    std::fs::write(copy.path().join(DATA_FILE), &bytes).expect("write");
    if let Ok(boot) = std::fs::read(dir.path().join(BOOT_FILE)) {
        std::fs::write(copy.path().join(BOOT_FILE), boot).expect("write");
    }
    std::mem::forget(s);
    copy
}

fn open_copy(dir: &Path, options: &StorageOptions) -> Result<(bool, RecoveredState), StorageError> {
    catch_unwind(AssertUnwindSafe(|| {
        let s = RedbStorage::open(dir, options.clone())?;
        Ok((s.rolled_back(), s.recover()?))
    }))
    .expect("no panic")
}

fn unsealed() -> StorageOptions {
    StorageOptions {
        seal_after: None,
        ..StorageOptions::default()
    }
}

/// Damage after the fsync of the newest commit, a one-phase one (the default for appends):
/// redb alone would reopen the commit before it, and the node would forget entry 11, which
/// it may have acknowledged. The machine has not restarted, so it cannot be a torn write:
/// the open fails, naming the file, and leaves the file as it was.
#[test]
fn damage_to_the_newest_one_phase_commit_fails_the_open_in_the_same_boot() {
    let copy = damaged_newest_commit(&unsealed(), false, None);
    let before = std::fs::read(copy.path().join(DATA_FILE)).expect("read");
    let err = open_copy(copy.path(), &unsealed()).expect_err("damage refused");
    assert!(
        matches!(err, StorageError::NewestCommitDamaged { .. }),
        "{err}"
    );
    assert!(err.to_string().contains(DATA_FILE), "{err}");
    assert!(err.to_string().contains("not restarted"), "{err}");
    // Refused again, and nothing rolled back on disk: the evidence stays for the operator.
    let again = open_copy(copy.path(), &unsealed()).expect_err("still refused");
    assert!(
        matches!(again, StorageError::NewestCommitDamaged { .. }),
        "{again}"
    );
    let after = std::fs::read(copy.path().join(DATA_FILE)).expect("read");
    assert!(before == after, "a refused open changed the file");
}

/// The same for damage to the newest commit's slot in the header, where redb picks the commit
/// to open before any repair starts.
#[test]
fn damage_to_the_newest_commit_slot_fails_the_open_in_the_same_boot() {
    let copy = damaged_newest_commit_with(&unsealed(), false, None, flip_primary_slot);
    let before = std::fs::read(copy.path().join(DATA_FILE)).expect("read");
    let err = open_copy(copy.path(), &unsealed()).expect_err("damage refused");
    assert!(
        matches!(err, StorageError::NewestCommitDamaged { .. }),
        "{err}"
    );
    assert!(err.to_string().contains(DATA_FILE), "{err}");
    let after = std::fs::read(copy.path().join(DATA_FILE)).expect("read");
    assert!(before == after, "a refused open changed the file");
    // After a machine restart it may be a torn header write: the commit before is reopened.
    std::fs::write(
        copy.path().join(BOOT_FILE),
        "00000000-1111-2222-3333-444444444444\n",
    )
    .expect("another boot");
    let (rolled_back, r) = open_copy(copy.path(), &unsealed()).expect("torn: opens");
    assert!(rolled_back);
    assert_eq!(r.log.last.index, 10);
}

/// Without a readable boot record nothing tells a torn write from damage: refused too.
#[test]
fn damage_to_the_newest_commit_fails_the_open_without_a_boot_record() {
    let copy = damaged_newest_commit(&unsealed(), false, None);
    std::fs::remove_file(copy.path().join(BOOT_FILE)).expect("rm boot record");
    let err = open_copy(copy.path(), &unsealed()).expect_err("damage refused");
    assert!(
        matches!(err, StorageError::NewestCommitDamaged { .. }),
        "{err}"
    );
    assert!(err.to_string().contains("unknown"), "{err}");
}

/// After a machine restart the newest one-phase commit may have been torn by the power loss —
/// its fsync never returned, so nothing in it was acknowledged — and the commit before it is
/// reopened, reported by `rolled_back`. The vote is never part of what is rolled back.
#[test]
fn a_newest_commit_torn_by_a_machine_restart_is_rolled_back_and_reported() {
    let copy = damaged_newest_commit(&unsealed(), false, None);
    std::fs::write(
        copy.path().join(BOOT_FILE),
        "00000000-1111-2222-3333-444444444444\n",
    )
    .expect("another boot");
    let (rolled_back, r) = open_copy(copy.path(), &unsealed()).expect("torn: opens");
    assert!(rolled_back, "the roll-back is reported");
    assert_eq!(r.log.last.index, 10, "the torn entry is gone");
    assert_eq!(
        r.hard_state,
        HardState {
            term: 1,
            vote: Some(1)
        }
    );
    // The open recorded this boot: reopening is an ordinary open now.
    let (rolled_back, _) = open_copy(copy.path(), &unsealed()).expect("reopen");
    assert!(!rolled_back);
}

/// A new term or vote is written with a two-phase commit even by default: damage to it is
/// reported by redb itself, before and after a restart alike, so a vote is never forgotten.
#[test]
fn damage_to_a_newest_commit_holding_a_vote_fails_the_open_even_after_a_restart() {
    let copy = damaged_newest_commit(&unsealed(), true, None);
    std::fs::write(
        copy.path().join(BOOT_FILE),
        "00000000-1111-2222-3333-444444444444\n",
    )
    .expect("another boot");
    let err = open_copy(copy.path(), &unsealed()).expect_err("damage refused");
    assert!(
        matches!(&err, StorageError::Open { source, .. }
            if matches!(**source, redb::Error::Corrupted(_))),
        "{err}"
    );
    assert!(err.to_string().contains(DATA_FILE), "{err}");
}

/// Once appends pause, the seal thread makes an empty two-phase commit: the damaged one-phase
/// commit is then no longer the newest, and redb reports the damage itself.
#[test]
fn a_sealed_one_phase_commit_is_reported_damaged_by_redb() {
    let options = StorageOptions {
        seal_after: Some(std::time::Duration::from_millis(5)),
        ..StorageOptions::default()
    };
    let copy = damaged_newest_commit(&options, false, Some(std::time::Duration::from_millis(300)));
    std::fs::write(
        copy.path().join(BOOT_FILE),
        "00000000-1111-2222-3333-444444444444\n",
    )
    .expect("another boot");
    let err = open_copy(copy.path(), &options).expect_err("damage refused");
    assert!(
        matches!(&err, StorageError::Open { source, .. }
            if matches!(**source, redb::Error::Corrupted(_))),
        "{err}"
    );
}

/// The old mode, every durable commit two-phase, reports damage to the newest commit too.
#[test]
fn damage_to_the_newest_commit_fails_the_open_with_two_phase_commit() {
    let options = StorageOptions {
        two_phase_commit: true,
        ..StorageOptions::default()
    };
    let copy = damaged_newest_commit(&options, false, None);
    let err = open_copy(copy.path(), &options).expect_err("damage refused");
    assert!(
        matches!(&err, StorageError::Open { source, .. }
            if matches!(**source, redb::Error::Corrupted(_))),
        "{err}"
    );
    assert!(err.to_string().contains(DATA_FILE), "{err}");
}
