//! Backups: `keel snapshot save FILE` and `keel snapshot restore FILE` (issue #16), as
//! operators know them from `etcdctl snapshot save/restore`.
//!
//! A backup is a tar file (the `tar` crate: a format every operator can list and unpack):
//!
//! - `keel-backup.json`: what it is (format, cluster, index, term, the image's length, the
//!   blobs and their lengths);
//! - `state.keelsnap`: a snapshot image of the applied state (`keel_storage::SnapshotChunks`:
//!   every plugin's keys, the sessions, the membership; its own CRC and record counts);
//! - `blobs/<sha256>`: every blob the state needs (plugin binaries of active and earlier
//!   versions, blobs plugins retain, payloads the log still names), each checked against its
//!   name on restore. Blobs built into the binary (the embedded kv plugin) are not copied.
//!
//! Both ends stream: the node writes the image to a file in its data directory first (a tar
//! entry needs its length up front), then streams the archive; `save` writes it to disk as
//! it arrives and verifies it whole before the file takes its name. Nothing holds the state
//! in memory.

use std::io::{Read, Write};
use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use keel_raft::{ClusterConfig, HardState, SnapshotMeta};
use keel_storage::{Identity, LogWrite, SnapshotChunks, SnapshotImage, StateView, Storage};
use serde::{Deserialize, Serialize};

use crate::blobs::{self, Blobs};

/// The manifest's name in the archive.
const MANIFEST: &str = "keel-backup.json";
/// The image's name in the archive.
const IMAGE: &str = "state.keelsnap";
/// Backup format version.
const FORMAT: u32 = 1;

/// What a backup holds.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct Manifest {
    /// Backup format version.
    pub format: u32,
    /// The cluster it was taken from.
    pub cluster_id: String,
    /// Where the state stands.
    pub index: u64,
    /// The term of that entry.
    pub term: u64,
    /// Bytes of the image.
    pub image_bytes: u64,
    /// The blobs, by SHA-256 (hex), with their lengths.
    pub blobs: Vec<(String, u64)>,
}

/// Writes a backup of `view` (and of the blobs in `needed` this node holds) to `out`,
/// staging the image in `scratch` (a file path in the data directory, removed after).
pub fn write(
    view: Box<dyn StateView + Send>,
    cluster_id: &str,
    blobs: &Blobs,
    needed: &std::collections::BTreeSet<[u8; 32]>,
    scratch: &Path,
    out: impl Write,
) -> anyhow::Result<Manifest> {
    let _remove = Scratch(scratch);
    let chunks = SnapshotChunks::new(view, 1 << 20);
    let meta = chunks.meta().clone();
    let mut file = std::io::BufWriter::new(
        std::fs::File::create(scratch).with_context(|| format!("{}", scratch.display()))?,
    );
    let mut image_bytes = 0u64;
    for chunk in chunks {
        let chunk = chunk?;
        image_bytes += chunk.len() as u64;
        file.write_all(&chunk)?;
    }
    file.flush()?;
    drop(file);
    // Blobs built into the binary come with any `keel` of the same build.
    let builtin = blobs::static_sha256(crate::state::BUILTIN_KV);
    let held: Vec<([u8; 32], u64)> = needed
        .iter()
        .filter(|h| **h != builtin)
        .filter_map(|h| Some((*h, blobs.len_of(h)?)))
        .collect();
    let manifest = Manifest {
        format: FORMAT,
        cluster_id: cluster_id.to_string(),
        index: meta.index,
        term: meta.term,
        image_bytes,
        blobs: held.iter().map(|(h, l)| (blobs::hex(h), *l)).collect(),
    };
    let mut tar = tar::Builder::new(out);
    let json = serde_json::to_vec_pretty(&manifest)?;
    append(&mut tar, MANIFEST, json.len() as u64, json.as_slice())?;
    append(&mut tar, IMAGE, image_bytes, std::fs::File::open(scratch)?)?;
    for (hash, len) in &held {
        // Checked against its name first: a damaged blob must not go into a backup.
        if !blobs.verify(hash) {
            bail!("blob {} is damaged on this node", blobs::hex(hash));
        }
        let reader = BlobReader {
            blobs,
            hash: *hash,
            at: 0,
        };
        append(
            &mut tar,
            &format!("blobs/{}", blobs::hex(hash)),
            *len,
            reader,
        )?;
    }
    tar.into_inner()?.flush()?;
    Ok(manifest)
}

fn append<W: Write>(
    tar: &mut tar::Builder<W>,
    name: &str,
    len: u64,
    data: impl Read,
) -> anyhow::Result<()> {
    let mut header = tar::Header::new_gnu();
    header.set_size(len);
    header.set_mode(0o600);
    header.set_cksum();
    tar.append_data(&mut header, name, data)
        .with_context(|| format!("writing {name} into the backup"))
}

/// Removes the staged image however the backup ends.
struct Scratch<'a>(&'a Path);

impl Drop for Scratch<'_> {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(self.0);
    }
}

/// A stored blob, read a chunk at a time.
struct BlobReader<'a> {
    blobs: &'a Blobs,
    hash: [u8; 32],
    at: u64,
}

impl Read for BlobReader<'_> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let bytes = self
            .blobs
            .read_range(&self.hash, self.at, buf.len().min(1 << 20))
            .ok_or_else(|| std::io::Error::other("blob removed while being read"))?;
        buf[..bytes.len()].copy_from_slice(&bytes);
        self.at += bytes.len() as u64;
        Ok(bytes.len())
    }
}

/// Reads a whole backup: the manifest, the image (verified), every blob (checked against its
/// name), in the archive's order. `image` gets the image's bytes, `blob` each blob's.
fn read(
    file: &Path,
    mut image: impl FnMut(&mut dyn Read) -> anyhow::Result<SnapshotMeta>,
    mut blob: impl FnMut([u8; 32], &mut dyn Read) -> anyhow::Result<()>,
) -> anyhow::Result<(Manifest, SnapshotMeta)> {
    let f = std::fs::File::open(file).with_context(|| format!("{}", file.display()))?;
    let mut archive = tar::Archive::new(std::io::BufReader::with_capacity(1 << 20, f));
    let mut manifest: Option<Manifest> = None;
    let mut meta: Option<SnapshotMeta> = None;
    let mut seen = Vec::new();
    for entry in archive.entries()? {
        let mut entry = entry?;
        let name = entry.path()?.to_string_lossy().into_owned();
        match name.as_str() {
            MANIFEST if manifest.is_none() => {
                let mut json = Vec::new();
                entry.by_ref().take(1 << 20).read_to_end(&mut json)?;
                let m: Manifest = serde_json::from_slice(&json).context("the manifest")?;
                if m.format != FORMAT {
                    bail!("backup format {} (this keel reads {FORMAT})", m.format);
                }
                manifest = Some(m);
            }
            IMAGE if manifest.is_some() && meta.is_none() => meta = Some(image(&mut entry)?),
            _ if name.starts_with("blobs/") && meta.is_some() => {
                let hash = blobs::parse_hex(&name["blobs/".len()..])
                    .with_context(|| format!("{name}: not a blob name"))?;
                blob(hash, &mut entry)?;
                seen.push(blobs::hex(&hash));
            }
            _ => bail!("unexpected {name:?} in the backup (or out of order)"),
        }
    }
    let (Some(manifest), Some(meta)) = (manifest, meta) else {
        bail!("not a whole Keel backup (no manifest or no image)");
    };
    if (meta.index, meta.term) != (manifest.index, manifest.term) {
        bail!(
            "the image stands at {}@t{}, the manifest says {}@t{}",
            meta.index,
            meta.term,
            manifest.index,
            manifest.term
        );
    }
    let listed: Vec<&String> = manifest.blobs.iter().map(|(h, _)| h).collect();
    if listed != seen.iter().collect::<Vec<_>>() {
        bail!("the blobs in the backup are not the ones its manifest lists");
    }
    Ok((manifest, meta))
}

/// Checks a backup file whole: the image's frames, counts and checksum, every blob's hash.
pub fn verify(file: &Path) -> anyhow::Result<Manifest> {
    let (manifest, _) = read(
        file,
        |r| Ok(keel_storage::verify_image(r)?),
        |hash, r| {
            if sha256_of(r)? != hash {
                bail!("blob {} does not hash to its name", blobs::hex(&hash));
            }
            Ok(())
        },
    )?;
    Ok(manifest)
}

fn sha256_of(r: &mut dyn Read) -> anyhow::Result<[u8; 32]> {
    use sha2::Digest;
    let mut h = sha2::Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = r.read(&mut buf)?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
    }
    Ok(h.finalize().into())
}

/// Restores a backup into `data_dir`, which must not hold a node yet, for node `id` of the
/// cluster `cluster_id`. The node starts at the backup's index and term with the backup's
/// membership (every restored member is restored from the same file), as a fresh cluster
/// if `cluster_id` is new. `peers` (the node config's, as etcd's `--initial-cluster`)
/// gives members' addresses, overriding the backup's: the cluster comes back on new
/// addresses. Naming a node that is not a member is refused.
pub fn restore(
    file: &Path,
    data_dir: &Path,
    id: keel_raft::NodeId,
    cluster_id: keel_raft::ClusterId,
    peers: &std::collections::BTreeMap<keel_raft::NodeId, String>,
) -> anyhow::Result<(Manifest, ClusterConfig)> {
    let db = data_dir.join("db");
    if db.exists() {
        bail!(
            "{} holds a node already: restore into a new data directory",
            data_dir.display()
        );
    }
    std::fs::create_dir_all(data_dir)?;
    let staged: PathBuf = data_dir.join("restore.keelsnap");
    let store = Blobs::new(Some(data_dir.join("blobs")), &[]);
    let (manifest, mut meta) = read(
        file,
        |r| {
            let mut f = std::fs::File::create(&staged)?;
            std::io::copy(r, &mut f)?;
            f.sync_all()?;
            Ok(keel_storage::verify_image(&mut std::io::BufReader::new(
                std::fs::File::open(&staged)?,
            ))?)
        },
        |hash, r| {
            let mut w = store.writer(u64::MAX)?;
            let mut buf = vec![0u8; 1 << 20];
            loop {
                let n = r.read(&mut buf)?;
                if n == 0 {
                    break;
                }
                w.write(&buf[..n])?;
            }
            w.finish(Some(hash))
                .with_context(|| format!("blob {}", blobs::hex(&hash)))?;
            Ok(())
        },
    )?;
    if !meta.config.voters.contains(&id) {
        bail!(
            "node {id} is not a voter of the backup's membership {:?}",
            meta.config.voters
        );
    }
    // The addresses the node's config gives override the backup's for those members: a
    // cluster restored onto new machines comes up at its new addresses.
    for (member, url) in peers {
        let known = meta.config.voters.contains(member) || meta.config.learners.contains(member);
        if !known {
            bail!(
                "the config's peers name node {member}, which is not a member of the backup's \
                 cluster (voters {:?}, learners {:?})",
                meta.config.voters,
                meta.config.learners
            );
        }
        meta.config.addresses.insert(*member, url.clone());
    }
    let storage = keel_storage::RedbStorage::open(&db, keel_storage::StorageOptions::default())?;
    storage.set_identity(Identity {
        cluster: cluster_id,
        node: id,
    })?;
    let image = SnapshotImage::new(
        meta.clone(),
        std::io::BufReader::with_capacity(1 << 20, std::fs::File::open(&staged)?),
    );
    // The term of the snapshot's entry: a node never stands in a term before its log's.
    storage.persist(LogWrite {
        hard_state: Some(HardState {
            term: meta.term,
            vote: None,
        }),
        snapshot: Some(&image),
        entries: &[],
    })?;
    storage.close()?;
    std::fs::remove_file(&staged)?;
    Ok((manifest, meta.config))
}
