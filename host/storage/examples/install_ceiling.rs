//! How fast can a follower install a snapshot on this machine? (issue #16: the goal is
//! catch-up at >= 100 MB/s.) Measures, on the same disk in the same run, for a state of
//! 1 KB values:
//!
//! 1. Keel's install: `RedbStorage::persist` of a streamed image (what a follower does once
//!    the image is staged);
//! 2. redb alone: the same records inserted in key order into one table in one write
//!    transaction and committed, with Keel's cache size and with a 4x larger one;
//! 3. the disk: the image's bytes written sequentially and fsynced.
//!
//! Not a test. `cargo run --release -p keel-storage --example install_ceiling [-- DIR [MB]]`

use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Instant;

use keel_raft::{Entry, Record};
use keel_storage::{
    ApplyBatch, KvWrite, LogId, LogWrite, RedbStorage, SnapshotChunks, SnapshotImage, Storage,
    StorageOptions,
};
use redb::{Database, TableDefinition};

const VALUE: usize = 1_000;
const KV: TableDefinition<'_, (&str, &[u8]), &[u8]> = TableDefinition::new("kv");

fn key(i: u64) -> Vec<u8> {
    format!("key/{i:012}").into_bytes()
}

fn value(i: u64) -> Vec<u8> {
    let mut v = vec![b'v'; VALUE];
    v[..8].copy_from_slice(&i.to_le_bytes());
    v
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let dir: PathBuf = match args.next() {
        Some(d) => d.into(),
        None => std::env::temp_dir().join(format!("keel-install-{}", std::process::id())),
    };
    let mb: u64 = args.next().map(|s| s.parse()).transpose()?.unwrap_or(300);
    let n = mb * 1_000_000 / VALUE as u64;
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir)?;
    // As a node runs it (`storage_cache_bytes`, 64 MiB by default).
    let options = StorageOptions {
        cache_bytes: 64 << 20,
        ..StorageOptions::default()
    };
    println!(
        "{n} records of {VALUE} B ({mb} MB of values), redb cache {} MiB, in {}",
        options.cache_bytes >> 20,
        dir.display()
    );

    // The source state, and its image on disk (as a follower has it once staged).
    let src = RedbStorage::open(&dir.join("src"), options.clone())?;
    // One no-op entry per apply batch: each batch moves `last_applied` on by one.
    let batches = n.div_ceil(10_000);
    let noops: Vec<Entry> = (1..=batches)
        .map(|index| Entry {
            index,
            term: 1,
            timestamp_ms: 0,
            record: Record::Noop,
        })
        .collect();
    src.persist(LogWrite {
        entries: &noops,
        ..Default::default()
    })?;
    let mut i = 0;
    while i < n {
        let end = (i + 10_000).min(n);
        src.apply(&ApplyBatch {
            writes: (i..end)
                .map(|j| KvWrite {
                    namespace: "kv".into(),
                    key: key(j),
                    value: Some(value(j)),
                })
                .collect(),
            last_applied: LogId {
                index: i / 10_000 + 1,
                term: 1,
            },
            ..Default::default()
        })?;
        i = end;
    }
    let chunks = SnapshotChunks::new(src.view()?, 1 << 20);
    let meta = chunks.meta().clone();
    let image_path = dir.join("image");
    let mut image = std::io::BufWriter::new(std::fs::File::create(&image_path)?);
    let mut image_bytes = 0u64;
    for chunk in chunks {
        let chunk = chunk?;
        image_bytes += chunk.len() as u64;
        image.write_all(&chunk)?;
    }
    image.into_inner()?.sync_all()?;
    drop(src);
    let mbs = |secs: f64| image_bytes as f64 / 1e6 / secs;
    println!("image: {:.1} MB", image_bytes as f64 / 1e6);

    // 1. Keel's install.
    let dst = RedbStorage::open(&dir.join("dst"), options.clone())?;
    let started = Instant::now();
    dst.persist(LogWrite {
        snapshot: Some(&SnapshotImage::new(
            meta,
            std::io::BufReader::new(std::fs::File::open(&image_path)?),
        )),
        ..Default::default()
    })?;
    let keel = started.elapsed().as_secs_f64();
    drop(dst);

    // 2. redb alone.
    let raw = |cache: usize, name: &str| -> Result<f64, Box<dyn std::error::Error>> {
        let db = Database::builder()
            .set_cache_size(cache)
            .create(dir.join(name))?;
        let started = Instant::now();
        let txn = db.begin_write()?;
        {
            let mut t = txn.open_table(KV)?;
            for j in 0..n {
                t.insert(("kv", key(j).as_slice()), value(j).as_slice())?;
            }
        }
        txn.commit()?;
        Ok(started.elapsed().as_secs_f64())
    };
    let redb_same = raw(options.cache_bytes, "raw-same.redb")?;
    let redb_big = raw(options.cache_bytes * 4, "raw-big.redb")?;

    // 3. The disk.
    let started = Instant::now();
    sequential(&dir.join("seq"), image_bytes)?;
    let disk = started.elapsed().as_secs_f64();

    println!("                                     seconds    MB/s   vs disk");
    for (what, secs) in [
        ("Keel install (persist of the image)", keel),
        ("redb alone, same cache", redb_same),
        ("redb alone, 4x cache", redb_big),
        ("sequential write + fsync", disk),
    ] {
        println!(
            "{what:<36} {secs:>7.2} {:>7.1} {:>8.2}",
            mbs(secs),
            disk / secs
        );
    }
    println!(
        "Keel install / redb alone (same cache): {:.2}",
        redb_same / keel
    );
    std::fs::remove_dir_all(&dir)?;
    Ok(())
}

fn sequential(path: &Path, bytes: u64) -> std::io::Result<()> {
    let mut f = std::fs::File::create(path)?;
    let block = vec![7u8; 1 << 20];
    let mut left = bytes;
    while left > 0 {
        let n = left.min(block.len() as u64) as usize;
        f.write_all(&block[..n])?;
        left -= n as u64;
    }
    f.sync_all()
}
