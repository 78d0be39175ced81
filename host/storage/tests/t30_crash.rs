//! Crash consistency under SIGKILL (issue 3): a child process appends and applies under load
//! and is killed at random moments; after each kill the parent reopens the file and checks
//!
//! - every batch the child reported durable is there (the one in flight may or may not be);
//! - the hard state never went backwards;
//! - the applied state equals a replay of the log up to `last_applied`, and `last_applied` is
//!   at least what was applied before the last durable commit (applies are non-durable);
//!
//! then restarts the child on the same file. The child is this test binary, re-run with
//! `KEEL_CRASH_CHILD` set (see `crash_child`). `KEEL_CRASH_KILLS` overrides the kill count.

mod common;

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Write};
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use common::{IntoSnapshot, Snapshot, batch, effects, entries, entry};
use keel_raft::{HardState, SnapshotMeta};
use keel_storage::{
    BOOT_FILE, DATA_FILE, LogId, LogWrite, MemStorage, RedbStorage, Session, SnapshotChunks,
    StateView, Storage, StorageOptions,
};

const CHILD_ENV: &str = "KEEL_CRASH_CHILD";
const SEED_ENV: &str = "KEEL_CRASH_SEED";
const NO_SEAL_ENV: &str = "KEEL_CRASH_NO_SEAL";

/// splitmix64: small, deterministic, good enough to pick workloads and kill times.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    /// Uniform in `lo..=hi`.
    fn range(&mut self, lo: u64, hi: u64) -> u64 {
        lo + self.next() % (hi - lo + 1)
    }
}

/// What the child prints; every line ends with " ." so a line cut by the kill is recognisable.
#[derive(Debug, PartialEq)]
enum Event {
    Open,
    /// About to persist entries `first..first+n` of `term` with hard state (hs_term, vote).
    Begin {
        first: u64,
        n: u64,
        term: u64,
        hs: HardState,
    },
    /// The persist returned: durable.
    Done,
    /// About to apply up to `index`.
    ApplyBegin {
        index: u64,
    },
    /// The apply committed (non-durably).
    Applied {
        index: u64,
    },
    /// A purge up to `index` returned (durable).
    Purged {
        index: u64,
    },
    /// About to install a snapshot at `index`.
    Install {
        index: u64,
    },
    /// The install returned (durable).
    Installed {
        index: u64,
    },
}

fn parse(line: &str) -> Option<Event> {
    // The first line shares its start with libtest's "test crash_child ... ".
    let line = &line[line.find("@@ ")?..];
    let words: Vec<&str> = line
        .strip_prefix("@@ ")?
        .strip_suffix(" .")?
        .split(' ')
        .collect();
    let n = |i: usize| words.get(i).and_then(|w| w.parse::<u64>().ok());
    Some(match words.first().copied()? {
        "OPEN" => Event::Open,
        "BEGIN" => Event::Begin {
            first: n(1)?,
            n: n(2)?,
            term: n(3)?,
            hs: HardState {
                term: n(4)?,
                vote: n(5).filter(|v| *v != 0),
            },
        },
        "DONE" => Event::Done,
        "APPLY" => Event::ApplyBegin { index: n(1)? },
        "APPLIED" => Event::Applied { index: n(1)? },
        "PURGED" => Event::Purged { index: n(1)? },
        "INSTALL" => Event::Install { index: n(1)? },
        "INSTALLED" => Event::Installed { index: n(1)? },
        _ => return None,
    })
}

fn say(out: &mut std::io::StdoutLock<'_>, line: std::fmt::Arguments<'_>) {
    // Written and flushed before the child goes on: the parent must see it if it happened.
    let _ = writeln!(out, "@@ {line} .");
    let _ = out.flush();
}

/// The child: runs until killed. Ignored in a normal run; the parent runs it explicitly.
#[test]
#[ignore = "child process of crash_consistency_under_sigkill"]
fn crash_child() {
    let Ok(dir) = std::env::var(CHILD_ENV) else {
        return;
    };
    let seed = std::env::var(SEED_ENV)
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(1);
    let mut rng = Rng(seed);
    let options = StorageOptions {
        seal_after: if std::env::var_os(NO_SEAL_ENV).is_some() {
            None
        } else {
            StorageOptions::default().seal_after
        },
        ..StorageOptions::default()
    };
    let store = RedbStorage::open(Path::new(&dir), options).expect("child open");
    let r = store.recover().expect("child recover");
    let (mut hs, mut last, mut applied) = (r.hard_state, r.log.last, r.applied.last_applied);
    let mut out = std::io::stdout().lock();
    say(&mut out, format_args!("OPEN"));
    loop {
        // Persist: mostly appends in the current term; sometimes a new term whose leader
        // overwrites the uncommitted tail, as in paper §5.3.
        let roll = rng.range(0, 99);
        let mut first = last.index + 1;
        if hs.term == 0 || roll < 15 {
            hs = HardState {
                term: hs.term + 1,
                vote: Some(rng.range(1, 3)),
            };
            if roll < 10 && last.index > applied.index {
                first = rng.range(applied.index + 1, last.index);
            }
        }
        let n = rng.range(1, 24);
        let appended = entries(first, first + n - 1, hs.term);
        say(
            &mut out,
            format_args!(
                "BEGIN {first} {n} {} {} {}",
                hs.term,
                hs.term,
                hs.vote.unwrap_or(0)
            ),
        );
        last = store
            .persist(LogWrite {
                hard_state: Some(hs),
                entries: &appended,
                ..LogWrite::default()
            })
            .expect("persist");
        say(&mut out, format_args!("DONE"));

        // Now and then, install a snapshot a few entries ahead of last_applied, as a follower
        // receiving one from its leader would (its log agrees, so the suffix is kept).
        if rng.range(0, 24) == 0 && applied.index > 0 && last.index > applied.index {
            let index = rng.range(applied.index + 1, last.index);
            let snap = image_ahead(&store, applied.index, index);
            say(&mut out, format_args!("INSTALL {index}"));
            let image = snap.image();
            store
                .persist(LogWrite {
                    snapshot: Some(&image),
                    ..LogWrite::default()
                })
                .expect("install");
            applied = LogId {
                index,
                term: snap.meta.term,
            };
            say(&mut out, format_args!("INSTALLED {index}"));
        }

        // Apply: up to a few entries short of the end (those stay uncommitted), in batches of
        // one transaction each.
        let target = last.index.saturating_sub(rng.range(0, 6));
        while applied.index < target {
            let upto = (applied.index + rng.range(1, 16)).min(target);
            let es = store
                .entries(applied.index + 1, upto + 1, None)
                .expect("read log");
            let b = batch(&es);
            say(&mut out, format_args!("APPLY {upto}"));
            store.apply(&b).expect("apply");
            applied = b.last_applied;
            say(&mut out, format_args!("APPLIED {upto}"));
        }

        // Purge now and then, keeping some applied entries in the log.
        if rng.range(0, 19) == 0 && applied.index > 10 {
            let index = applied.index - 10;
            let term = store
                .term(index)
                .expect("term")
                .expect("applied entry in log");
            store
                .purge(&SnapshotMeta {
                    index,
                    term,
                    ..SnapshotMeta::default()
                })
                .expect("purge");
            say(&mut out, format_args!("PURGED {index}"));
        }
    }
}

/// The image a leader would send at `index`: this store's own image, plus the entries up to
/// `index` applied on a memory store.
fn image_ahead(store: &RedbStorage, applied: u64, index: u64) -> Snapshot {
    let own = SnapshotChunks::new(store.view().expect("view"), 4096)
        .into_snapshot_for_test()
        .expect("image");
    let mem = MemStorage::new();
    let image = own.image();
    mem.persist(LogWrite {
        snapshot: Some(&image),
        ..LogWrite::default()
    })
    .expect("seed");
    let es = store
        .entries(applied + 1, index + 1, None)
        .expect("read log");
    mem.persist(LogWrite {
        entries: &es,
        ..LogWrite::default()
    })
    .expect("append");
    mem.apply(&batch(&es)).expect("apply");
    SnapshotChunks::new(mem.view().expect("view"), 4096)
        .into_snapshot_for_test()
        .expect("image")
}

/// The parent's knowledge: the log as reported, and what was applied.
#[derive(Default)]
struct Model {
    /// index → term, for every entry ever reported durable (committed prefix never changes).
    log: BTreeMap<u64, u64>,
    hs: HardState,
    /// `last_applied` as of the last durable commit: a lower bound after a crash.
    applied_floor: u64,
    /// Last `last_applied` the child reported (not necessarily durable).
    applied_reported: u64,
    purged: u64,
}

impl Model {
    fn with_batch(&self, first: u64, n: u64, term: u64) -> BTreeMap<u64, u64> {
        let mut log = self.log.clone();
        log.split_off(&first);
        log.extend((first..first + n).map(|i| (i, term)));
        log
    }
}

#[derive(Default)]
struct Counts {
    kills: u32,
    durable_batches: u64,
    in_flight_landed: u32,
    in_flight_lost: u32,
    applies_lost: u64,
    installs: u32,
}

/// Runs the child on `dir` until it has opened the store and `ms` more milliseconds, then
/// kills it with SIGKILL; returns what it reported. `no_seal`: the child never seals.
fn run_and_kill(dir: &Path, seed: u64, ms: u64, no_seal: bool, round: u32) -> Vec<Event> {
    let exe = std::env::current_exe().expect("current exe");
    let mut cmd = Command::new(&exe);
    cmd.args([
        "crash_child",
        "--exact",
        "--ignored",
        "--nocapture",
        "--test-threads=1",
    ])
    .env(CHILD_ENV, dir)
    .env(SEED_ENV, seed.to_string())
    .stdout(Stdio::piped())
    .stderr(Stdio::piped());
    if no_seal {
        cmd.env(NO_SEAL_ENV, "1");
    }
    let mut child = cmd.spawn().expect("spawn child");
    let stdout = child.stdout.take().expect("piped");
    let (open_tx, open_rx) = mpsc::channel();
    let reader = std::thread::spawn(move || {
        let mut events = Vec::new();
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            if let Some(e) = parse(&line) {
                if e == Event::Open {
                    let _ = open_tx.send(());
                }
                events.push(e);
            }
        }
        events
    });
    if open_rx.recv_timeout(Duration::from_secs(30)).is_err() {
        let _ = child.kill();
        let out = child.wait_with_output().expect("child output");
        panic!(
            "round {round}: child did not open: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    std::thread::sleep(Duration::from_millis(ms));
    child.kill().expect("SIGKILL");
    let status = child.wait().expect("wait");
    let events = reader.join().expect("reader");
    assert!(
        !status.success(),
        "round {round}: the child exited by itself: {status}"
    );
    events
}

#[test]
fn crash_consistency_under_sigkill() {
    let kills: u32 = std::env::var("KEEL_CRASH_KILLS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(100);
    let dir = tempfile::tempdir().expect("tempdir");
    let base_seed = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(7);
    eprintln!("crash test base seed {base_seed}");
    let mut rng = Rng(base_seed);
    let mut model = Model::default();
    let mut counts = Counts::default();
    let started = Instant::now();
    for round in 0..kills {
        let events = run_and_kill(
            dir.path(),
            base_seed ^ u64::from(round),
            rng.range(1, 120),
            false,
            round,
        );
        counts.kills += 1;
        check_after_kill(dir.path(), round, &events, &mut model, &mut counts);
    }
    eprintln!(
        "crash test: {} SIGKILLs in {:.1?}; {} batches reported durable, all verified; in-flight persist landed {} / lost {}; {} non-durable applied entries rolled back and replayable; {} snapshots installed; log purged up to {}",
        counts.kills,
        started.elapsed(),
        counts.durable_batches,
        counts.in_flight_landed,
        counts.in_flight_lost,
        counts.applies_lost,
        counts.installs,
        model.purged,
    );
    assert!(counts.kills >= 50);
    assert!(
        counts.durable_batches > u64::from(counts.kills),
        "too little work between kills"
    );
}

fn check_after_kill(
    dir: &Path,
    round: u32,
    events: &[Event],
    model: &mut Model,
    counts: &mut Counts,
) {
    let mut pending: Option<(u64, u64, u64, HardState)> = None;
    let mut apply_in_flight = None;
    let mut install_in_flight = None;
    for e in events {
        match *e {
            Event::Open => {}
            Event::Begin { first, n, term, hs } => pending = Some((first, n, term, hs)),
            Event::Done => {
                let (first, n, term, hs) = pending.take().expect("DONE without BEGIN");
                model.log = model.with_batch(first, n, term);
                model.hs = hs;
                model.applied_floor = model.applied_reported;
                counts.durable_batches += 1;
            }
            Event::ApplyBegin { index } => apply_in_flight = Some(index),
            Event::Applied { index } => {
                model.applied_reported = index;
                apply_in_flight = None;
            }
            Event::Purged { index } => {
                model.purged = index;
                model.applied_floor = model.applied_reported;
            }
            Event::Install { index } => install_in_flight = Some(index),
            Event::Installed { index } => {
                model.applied_reported = index;
                model.applied_floor = index;
                model.purged = index;
                install_in_flight = None;
                counts.installs += 1;
            }
        }
    }

    let store = RedbStorage::open(dir, StorageOptions::default())
        .unwrap_or_else(|e| panic!("round {round}: reopen after SIGKILL failed: {e}"));
    let r = store.recover().expect("recover");

    // Hard state: the last durable one, or the one in flight; never older.
    let hs_ok = r.hard_state == model.hs || pending.is_some_and(|p| p.3 == r.hard_state);
    assert!(
        hs_ok,
        "round {round}: hard state {:?}, last durable {:?}",
        r.hard_state, model.hs
    );

    // Log: exactly the reported log, or the reported log plus the batch in flight.
    let stored = store
        .entries(r.log.first_index(), r.log.last.index + 1, None)
        .expect("log");
    let stored_terms: BTreeMap<u64, u64> = stored.iter().map(|e| (e.index, e.term)).collect();
    for e in &stored {
        assert_eq!(
            *e,
            entry(e.index, e.term),
            "round {round}: entry {} content",
            e.index
        );
    }
    let matches = |log: &BTreeMap<u64, u64>| {
        let tail: BTreeMap<u64, u64> = log
            .range(r.log.first_index()..)
            .map(|(i, t)| (*i, *t))
            .collect();
        tail == stored_terms && log.keys().next_back().copied().unwrap_or(0) == r.log.last.index
    };
    if matches(&model.log) {
        if pending.is_some() {
            counts.in_flight_lost += 1;
        }
    } else {
        let (first, n, term, hs) = pending
            .unwrap_or_else(|| panic!("round {round}: stored log differs from the reported one"));
        let landed = model.with_batch(first, n, term);
        assert!(
            matches(&landed),
            "round {round}: stored log is neither the reported one nor it plus the batch in flight"
        );
        model.log = landed;
        model.hs = hs;
        counts.in_flight_landed += 1;
    }
    model.hs = r.hard_state;

    // Applied state: a replay of the log up to last_applied, which is at least the durable floor.
    let applied = r.applied.last_applied.index;
    let ceiling = [apply_in_flight, install_in_flight]
        .into_iter()
        .flatten()
        .fold(model.applied_reported, u64::max);
    assert!(
        applied >= model.applied_floor && applied <= ceiling,
        "round {round}: last_applied {applied} outside [{}, {ceiling}]",
        model.applied_floor
    );
    let applied_term = if applied == 0 {
        0
    } else {
        model.log.get(&applied).copied().unwrap_or(u64::MAX)
    };
    assert_eq!(
        r.applied.last_applied.term, applied_term,
        "round {round}: term of last_applied"
    );
    let mut kv: BTreeMap<(String, Vec<u8>), Vec<u8>> = BTreeMap::new();
    let mut sessions: BTreeMap<u64, Session> = BTreeMap::new();
    for (index, term) in model.log.range(1..=applied) {
        let (writes, ss) = effects(&entry(*index, *term));
        for w in writes {
            match w.value {
                Some(v) => kv.insert((w.namespace, w.key), v),
                None => kv.remove(&(w.namespace, w.key)),
            };
        }
        for (c, s) in ss {
            match s {
                Some(s) => sessions.insert(c, s),
                None => sessions.remove(&c),
            };
        }
    }
    let view = store.view().expect("view");
    let stored_kv: BTreeMap<(String, Vec<u8>), Vec<u8>> = view
        .scan_kv(None, usize::MAX)
        .expect("kv")
        .into_iter()
        .map(|r| ((r.namespace, r.key), r.value))
        .collect();
    assert!(
        stored_kv == kv,
        "round {round}: state at {applied} differs from the replay of the log"
    );
    let stored_sessions: BTreeMap<u64, Session> = view
        .scan_sessions(None, usize::MAX)
        .expect("sessions")
        .into_iter()
        .collect();
    assert!(
        stored_sessions == sessions,
        "round {round}: sessions at {applied} differ from the replay"
    );
    assert!(
        r.log.snapshot.index <= applied,
        "round {round}: purged beyond last_applied"
    );

    counts.applies_lost += model.applied_reported.saturating_sub(applied);
    model.applied_reported = applied;
    model.applied_floor = applied;
    drop(view);
    store.close().expect("close");
}

/// Copies the data file and the boot record of `from` into a new directory: the files a
/// restarted node finds (the original stays as the kill left it).
fn copy_store(from: &Path) -> tempfile::TempDir {
    let to = tempfile::tempdir().expect("tempdir");
    for f in [DATA_FILE, BOOT_FILE] {
        std::fs::copy(from.join(f), to.path().join(f)).expect("copy");
    }
    to
}

/// Issue 14: damage after the fsync to the newest commit of a node killed with SIGKILL (its
/// newest entry, in every copy of it in the file), with one-phase appends and no seal. The
/// restarted node must never open without that entry or with an older vote: the open fails,
/// naming the file (or, if the damage missed the live pages, opens it whole).
#[test]
fn a_newest_commit_damaged_after_sigkill_is_never_rolled_back() {
    let base_seed = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(11);
    eprintln!("damage test base seed {base_seed}");
    let mut rng = Rng(base_seed);
    let dir = tempfile::tempdir().expect("tempdir");
    let (mut refused, mut intact) = (0, 0);
    for round in 0..20 {
        run_and_kill(
            dir.path(),
            base_seed ^ u64::from(round),
            rng.range(20, 120),
            true,
            round,
        );
        // What the restarted node would find undamaged.
        let (hs, last) = {
            let copy = copy_store(dir.path());
            let s = RedbStorage::open(copy.path(), StorageOptions::default())
                .unwrap_or_else(|e| panic!("round {round}: undamaged reopen failed: {e}"));
            let r = s.recover().expect("recover");
            (r.hard_state, r.log.last)
        };
        let copy = copy_store(dir.path());
        let path = copy.path().join(DATA_FILE);
        let mut bytes = std::fs::read(&path).expect("read");
        let needle = format!("payload {}@{}", last.index, last.term).into_bytes();
        let mut hits = 0;
        let mut from = 0;
        while let Some(at) = bytes[from..]
            .windows(needle.len())
            .position(|w| w == needle)
        {
            bytes[from + at] ^= 0x01;
            from += at + needle.len();
            hits += 1;
        }
        assert!(
            hits > 0,
            "round {round}: entry {last} not found in the file"
        );
        std::fs::write(&path, &bytes).expect("write");
        match RedbStorage::open(copy.path(), StorageOptions::default()).and_then(|s| s.recover()) {
            Err(e) => {
                assert!(e.to_string().contains(DATA_FILE), "round {round}: {e}");
                refused += 1;
            }
            Ok(r) => {
                assert!(
                    r.log.last == last && r.hard_state == hs,
                    "round {round}: reopened at {} with {:?}, was {last} with {hs:?}",
                    r.log.last,
                    r.hard_state
                );
                intact += 1;
            }
        }
        // The next round goes on from the undamaged files.
    }
    eprintln!("damaged newest commit after SIGKILL: {refused} opens refused, {intact} intact");
    assert!(refused > 0);
}
