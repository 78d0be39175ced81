//! Storage benchmark (issues 3, 14): durable appends of 128-byte entries at batch sizes 1, 16
//! and 256, with every commit two-phase (the old default) and with one-phase appends (the
//! default since issue 14), next to the raw fsync rate of the same disk measured in the same
//! run; fsyncs per commit counted under redb; apply throughput. Not a test.
//!
//! ```text
//! cargo run --release -p keel-storage --example storage_bench [-- DIR [SECONDS_PER_CASE]]
//! ```
//! DIR defaults to a fresh directory under the system temp dir (pass a directory on the disk
//! you care about); each case runs for SECONDS_PER_CASE (default 4), half of it in raw syncs
//! interleaved with the case, so that the comparison holds on a noisy shared disk.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use keel_raft::{Command, Entry, HardState, Payload, Record};
use keel_storage::{
    ApplyBatch, KvWrite, LogId, LogWrite, RedbStorage, Storage, StorageError, StorageOptions,
};

/// Each case alternates this many slices of raw syncs and of the case itself, so that both
/// see the same disk weather on a shared machine.
const ROUNDS: u32 = 40;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let dir: PathBuf = match args.next() {
        Some(d) => d.into(),
        None => std::env::temp_dir().join(format!("keel-storage-bench-{}", std::process::id())),
    };
    let secs: f64 = args.next().map(|s| s.parse()).transpose()?.unwrap_or(4.0);
    let per_case = Duration::from_secs_f64(secs);
    std::fs::create_dir_all(&dir)?;
    println!(
        "directory: {}  ({secs} s per case, raw syncs interleaved in {ROUNDS} rounds)",
        dir.display()
    );

    let mut raw = RawSync::new(&dir, false)?;
    let mut raw_full = RawSync::new(&dir, true)?;
    let (n, t) = raw_full.run(per_case / 2)?;
    println!(
        "raw write+fsync of 128 B (alone):  {:>7.0} /s",
        n as f64 / t
    );

    for two_phase in [true, false] {
        println!(
            "\ndurable appends, 128-byte entries, {}: {:.2} fsyncs per commit (counted over 200)",
            if two_phase {
                "every commit two-phase (two_phase_commit: true)"
            } else {
                "one-phase appends (default)"
            },
            fsyncs_per_commit(&dir, two_phase)?
        );
        println!("  batch   commits/s   entries/s   raw fdatasync/s   commits vs raw");
        for batch in [1usize, 16, 256] {
            let r = appends(&dir, batch, two_phase, per_case, &mut raw)?;
            println!(
                "  {batch:>5} {:>11.0} {:>11.0} {:>17.0}   {:>5.0}%",
                r.commits,
                r.entries,
                r.raw,
                100.0 * r.commits / r.raw
            );
        }
    }

    println!("\nback to back, slices of each mode alternating (same disk weather):");
    println!("  batch   two-phase commits/s   one-phase commits/s   one-phase / two-phase");
    for batch in [1usize, 16] {
        let (two, one) = back_to_back(&dir, batch, per_case)?;
        println!("  {batch:>5} {two:>21.0} {one:>21.0} {:>21.2}", one / two);
    }

    println!(
        "\napply throughput (non-durable commits, 64-byte values, 1 durable append per 16 batches):"
    );
    println!("  writes/batch   batches/s   KV writes/s");
    for writes in [16usize, 256, 4096] {
        let (batches, kv) = applies(&dir, writes, per_case)?;
        println!("  {writes:>12} {batches:>11.0} {kv:>13.0}");
    }
    drop((raw, raw_full));
    std::fs::remove_dir_all(&dir).ok();
    Ok(())
}

/// Write+sync of 128 bytes to a small file in a loop: the physical limit for durable commits.
struct RawSync {
    file: std::fs::File,
    full: bool,
}

impl RawSync {
    fn new(dir: &Path, full: bool) -> std::io::Result<Self> {
        let path = dir.join(if full { "raw-fsync" } else { "raw-fdatasync" });
        let file = std::fs::OpenOptions::new()
            .create(true)
            .truncate(true)
            .write(true)
            .open(&path)?;
        Ok(RawSync { file, full })
    }

    /// Syncs for `d`; returns (syncs, seconds).
    fn run(&mut self, d: Duration) -> std::io::Result<(u64, f64)> {
        let buf = [7u8; 128];
        let start = Instant::now();
        let mut n = 0u64;
        while start.elapsed() < d {
            // Overwrite the same bytes, as a commit slot would.
            std::io::Seek::seek(&mut self.file, std::io::SeekFrom::Start(0))?;
            self.file.write_all(&buf)?;
            if self.full {
                self.file.sync_all()?
            } else {
                self.file.sync_data()?
            }
            n += 1;
        }
        Ok((n, start.elapsed().as_secs_f64()))
    }
}

struct AppendRates {
    commits: f64,
    entries: f64,
    raw: f64,
}

fn entry(index: u64) -> Entry {
    Entry {
        index,
        term: 1,
        timestamp_ms: index,
        // 128 bytes of payload: a typical small command.
        record: Record::Command(Command {
            plugin: "bench".into(),
            client: None,
            payload: Payload::Inline(vec![0xAB; 128]),
        }),
    }
}

fn fresh_store(
    dir: &Path,
    options: StorageOptions,
) -> Result<(PathBuf, RedbStorage), StorageError> {
    let sub = dir.join("db");
    let _ = std::fs::remove_dir_all(&sub);
    let store = RedbStorage::open(&sub, options)?;
    Ok((sub, store))
}

/// A file backend counting `sync_data` calls.
#[derive(Debug)]
struct Counting {
    inner: redb::backends::FileBackend,
    syncs: std::sync::Arc<std::sync::atomic::AtomicU64>,
}

impl redb::StorageBackend for Counting {
    fn len(&self) -> std::io::Result<u64> {
        self.inner.len()
    }
    fn read(&self, offset: u64, out: &mut [u8]) -> std::io::Result<()> {
        self.inner.read(offset, out)
    }
    fn set_len(&self, len: u64) -> std::io::Result<()> {
        self.inner.set_len(len)
    }
    fn sync_data(&self) -> std::io::Result<()> {
        self.syncs
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        self.inner.sync_data()
    }
    fn write(&self, offset: u64, data: &[u8]) -> std::io::Result<()> {
        self.inner.write(offset, data)
    }
}

/// fsyncs per batch-1 append over 200 appends (the file's growth included).
fn fsyncs_per_commit(dir: &Path, two_phase: bool) -> Result<f64, Box<dyn std::error::Error>> {
    let sub = dir.join("count");
    let _ = std::fs::remove_dir_all(&sub);
    std::fs::create_dir_all(&sub)?;
    let path = sub.join(keel_storage::DATA_FILE);
    let file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(&path)?;
    let syncs = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
    let backend = Counting {
        inner: redb::backends::FileBackend::new(file)?,
        syncs: std::sync::Arc::clone(&syncs),
    };
    let options = StorageOptions {
        two_phase_commit: two_phase,
        ..StorageOptions::default()
    };
    let store = RedbStorage::open_with_backend(path, backend, options)?;
    let before = syncs.load(std::sync::atomic::Ordering::Relaxed);
    for i in 1..=200 {
        store.persist(LogWrite {
            entries: &[entry(i)],
            ..LogWrite::default()
        })?;
    }
    let n = syncs.load(std::sync::atomic::Ordering::Relaxed) - before;
    drop(store);
    let _ = std::fs::remove_dir_all(&sub);
    Ok(n as f64 / 200.0)
}

/// Durable appends of `batch` entries per commit on a two-phase and a one-phase store, in
/// alternating slices; returns (two-phase commits/s, one-phase commits/s).
fn back_to_back(
    dir: &Path,
    batch: usize,
    per_case: Duration,
) -> Result<(f64, f64), Box<dyn std::error::Error>> {
    let mut stores = Vec::new();
    for (name, two_phase_commit) in [("ab-two", true), ("ab-one", false)] {
        let sub = dir.join(name);
        let _ = std::fs::remove_dir_all(&sub);
        let options = StorageOptions {
            two_phase_commit,
            ..StorageOptions::default()
        };
        let store = RedbStorage::open(&sub, options)?;
        store.persist(LogWrite {
            hard_state: Some(HardState {
                term: 1,
                vote: Some(1),
            }),
            ..LogWrite::default()
        })?;
        stores.push((sub, store, 1u64, 0u64, 0.0f64));
    }
    let slice = per_case / ROUNDS;
    for _ in 0..ROUNDS {
        for (_, store, next, commits, secs) in stores.iter_mut() {
            let start = Instant::now();
            while start.elapsed() < slice {
                let entries: Vec<Entry> = (*next..*next + batch as u64).map(entry).collect();
                store.persist(LogWrite {
                    entries: &entries,
                    ..LogWrite::default()
                })?;
                *next += batch as u64;
                *commits += 1;
            }
            *secs += start.elapsed().as_secs_f64();
        }
    }
    let rates: Vec<f64> = stores
        .iter()
        .map(|(_, _, _, commits, secs)| *commits as f64 / secs)
        .collect();
    for (sub, store, ..) in stores {
        drop(store);
        let _ = std::fs::remove_dir_all(&sub);
    }
    Ok((rates[0], rates[1]))
}

/// Durable appends of `batch` entries per commit, alternating with raw syncs.
fn appends(
    dir: &Path,
    batch: usize,
    two_phase: bool,
    per_case: Duration,
    raw: &mut RawSync,
) -> Result<AppendRates, Box<dyn std::error::Error>> {
    let options = StorageOptions {
        two_phase_commit: two_phase,
        ..StorageOptions::default()
    };
    let (sub, store) = fresh_store(dir, options)?;
    store.persist(LogWrite {
        hard_state: Some(HardState {
            term: 1,
            vote: Some(1),
        }),
        ..LogWrite::default()
    })?;
    let slice = per_case / ROUNDS;
    let (mut next, mut commits, mut secs) = (1u64, 0u64, 0.0);
    let (mut raw_n, mut raw_secs) = (0u64, 0.0);
    for _ in 0..ROUNDS {
        let (n, t) = raw.run(slice)?;
        raw_n += n;
        raw_secs += t;
        let start = Instant::now();
        while start.elapsed() < slice {
            let entries: Vec<Entry> = (next..next + batch as u64).map(entry).collect();
            store.persist(LogWrite {
                entries: &entries,
                ..LogWrite::default()
            })?;
            next += batch as u64;
            commits += 1;
        }
        secs += start.elapsed().as_secs_f64();
    }
    drop(store);
    let _ = std::fs::remove_dir_all(&sub);
    Ok(AppendRates {
        commits: commits as f64 / secs,
        entries: (next - 1) as f64 / secs,
        raw: raw_n as f64 / raw_secs,
    })
}

/// Returns (batches/s, KV writes/s). Each batch applies one log entry carrying `writes` puts;
/// every 16th batch a durable append follows, as the log would in a loaded node.
fn applies(dir: &Path, writes: usize, per_case: Duration) -> Result<(f64, f64), StorageError> {
    let (sub, store) = fresh_store(dir, StorageOptions::default())?;
    const AHEAD: u64 = 1024;
    let ahead: Vec<Entry> = (1..=AHEAD).map(entry).collect();
    store.persist(LogWrite {
        entries: &ahead,
        ..LogWrite::default()
    })?;
    let mut last = AHEAD;
    let mut applied = 0u64;
    let start = Instant::now();
    while start.elapsed() < per_case {
        applied += 1;
        let batch = ApplyBatch {
            last_applied: LogId {
                index: applied,
                term: 1,
            },
            writes: (0..writes)
                .map(|i| KvWrite {
                    namespace: "bench".into(),
                    key: format!(
                        "key-{:08}",
                        (applied as usize * 7919 + i * 104_729) % 1_000_000
                    )
                    .into_bytes(),
                    value: Some(vec![0x5A; 64]),
                })
                .collect(),
            ..ApplyBatch::default()
        };
        store.apply(&batch)?;
        if applied.is_multiple_of(16) || applied + 1 > last {
            let more: Vec<Entry> = (last + 1..=last + 16).map(entry).collect();
            store.persist(LogWrite {
                entries: &more,
                ..LogWrite::default()
            })?;
            last += 16;
        }
    }
    let secs = start.elapsed().as_secs_f64();
    drop(store);
    let _ = std::fs::remove_dir_all(&sub);
    Ok((
        applied as f64 / secs,
        (applied * writes as u64) as f64 / secs,
    ))
}
