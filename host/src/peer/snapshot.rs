//! Snapshot images between nodes (issue #16): the receiver's staging area, where an image
//! arrives chunk by chunk, is verified whole, and waits for the driver to install it.
//!
//! The core only ever sees an `InstallSnapshot` message with the snapshot's position
//! (`SnapshotMeta`); the image travels beside it. The leader's driver streams the image of
//! its applied state straight from a storage read transaction ([`keel_storage::SnapshotChunks`]);
//! the receiver writes it to a staging file, checks every frame and the checksum, and only
//! then hands the message to its driver with the [`StagedImage`]. A broken connection
//! leaves the partial file: the sender asks how much is there and goes on from that byte
//! (the image of one read transaction is the same bytes every time). Nothing on either side
//! holds more than a chunk in memory.

use std::fs::File;
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use keel_raft::{NodeId, SnapshotMeta};

/// Where images arrive, under the data directory.
pub const STAGING_DIR: &str = "snapshots-incoming";

/// A verified image, waiting to be installed. Dropping it deletes its file.
#[derive(Debug)]
pub struct StagedImage {
    meta: SnapshotMeta,
    bytes: Staged,
    /// Told when the image is dropped: installed, or refused by the core.
    done: Option<tokio::sync::oneshot::Sender<()>>,
}

#[derive(Debug)]
enum Staged {
    File(PathBuf),
    /// The simulator stages in memory.
    Memory(Arc<Vec<u8>>),
}

impl StagedImage {
    /// Where the image stands.
    pub fn meta(&self) -> &SnapshotMeta {
        &self.meta
    }

    /// A receiver told when this image has been installed or dropped (the transfer counts
    /// as in flight until then, so the sender does not start another meanwhile).
    pub fn on_done(&mut self) -> tokio::sync::oneshot::Receiver<()> {
        let (tx, rx) = tokio::sync::oneshot::channel();
        self.done = Some(tx);
        rx
    }

    /// The image, from its first byte.
    pub fn open(&self) -> std::io::Result<Box<dyn Read + Send>> {
        match &self.bytes {
            Staged::File(path) => Ok(Box::new(std::io::BufReader::with_capacity(
                1 << 20,
                File::open(path)?,
            ))),
            Staged::Memory(bytes) => Ok(Box::new(std::io::Cursor::new(ArcBytes(bytes.clone())))),
        }
    }
}

impl Drop for StagedImage {
    fn drop(&mut self) {
        if let Staged::File(path) = &self.bytes {
            let _ = std::fs::remove_file(path);
        }
        if let Some(done) = self.done.take() {
            let _ = done.send(());
        }
    }
}

struct ArcBytes(Arc<Vec<u8>>);

impl AsRef<[u8]> for ArcBytes {
    fn as_ref(&self) -> &[u8] {
        &self.0
    }
}

/// Why a chunk was not taken.
#[derive(Debug, PartialEq, Eq)]
pub enum ChunkRefused {
    /// It starts past what is held: a chunk went missing. The sender resumes from `have`.
    Gap {
        /// Bytes held.
        have: u64,
    },
}

/// One image arriving from one sender.
pub struct Staging {
    from: NodeId,
    meta: SnapshotMeta,
    have: u64,
    sink: Sink,
}

enum Sink {
    File { path: PathBuf, file: File },
    Memory(Vec<u8>),
}

impl Staging {
    /// The staging file for `meta` from `from` in `dir`, continuing a partial one if there is
    /// one (its length is what a resuming sender skips).
    pub fn file(dir: &Path, from: NodeId, meta: &SnapshotMeta) -> std::io::Result<Staging> {
        std::fs::create_dir_all(dir)?;
        let path = dir.join(partial_name(from, meta));
        // A sender streams one image at a time: its older partial ones will not be resumed.
        let prefix = format!("from-{from}-");
        for e in std::fs::read_dir(dir)?.flatten() {
            let name = e.file_name();
            let name = name.to_string_lossy();
            if name.starts_with(&prefix) && name.ends_with(".partial") && e.path() != path {
                let _ = std::fs::remove_file(e.path());
            }
        }
        let mut file = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .read(true)
            .write(true)
            .open(&path)?;
        let have = file.seek(SeekFrom::End(0))?;
        Ok(Staging {
            from,
            meta: meta.clone(),
            have,
            sink: Sink::File { path, file },
        })
    }

    /// Stages in memory (the simulator).
    pub fn memory(from: NodeId, meta: &SnapshotMeta) -> Staging {
        Staging {
            from,
            meta: meta.clone(),
            have: 0,
            sink: Sink::Memory(Vec::new()),
        }
    }

    /// The sender of the image.
    pub fn from(&self) -> NodeId {
        self.from
    }

    /// Bytes held, from the image's start.
    pub fn have(&self) -> u64 {
        self.have
    }

    /// Takes `bytes`, found at `offset` in the image. What is already held is skipped (a
    /// duplicate, or a resent chunk); a chunk that starts past the end of what is held is
    /// refused, so the image can never have a hole.
    pub fn accept(&mut self, offset: u64, bytes: &[u8]) -> Result<(), StageError> {
        if offset > self.have {
            return Err(StageError::Refused(ChunkRefused::Gap { have: self.have }));
        }
        let skip = usize::try_from(self.have - offset).unwrap_or(usize::MAX);
        let Some(new) = bytes.get(skip..) else {
            return Ok(()); // all of it held already
        };
        match &mut self.sink {
            Sink::File { file, .. } => file.write_all(new).map_err(StageError::Io)?,
            Sink::Memory(buf) => buf.extend_from_slice(new),
        }
        self.have += new.len() as u64;
        Ok(())
    }

    /// Reads the whole image back and verifies it (every frame, the record counts, the
    /// checksum, and that it stands where the message says); a defect discards it.
    pub fn finish(self) -> Result<StagedImage, StageError> {
        let Staging { meta, sink, .. } = self;
        let (bytes, verified) = match sink {
            Sink::File { path, mut file } => {
                let done = file.flush().and_then(|()| file.seek(SeekFrom::Start(0)));
                let ready = path.with_extension("image");
                let verified = done.map_err(StageError::Io).and_then(|_| {
                    let mut r = std::io::BufReader::with_capacity(1 << 20, &mut file);
                    keel_storage::verify_image(&mut r).map_err(StageError::Image)
                });
                drop(file);
                let bytes = match &verified {
                    Ok(_) => std::fs::rename(&path, &ready)
                        .map(|()| Staged::File(ready))
                        .map_err(StageError::Io),
                    Err(_) => {
                        let _ = std::fs::remove_file(&path);
                        Ok(Staged::File(path))
                    }
                };
                (bytes?, verified)
            }
            Sink::Memory(buf) => {
                let verified =
                    keel_storage::verify_image(&mut buf.as_slice()).map_err(StageError::Image);
                (Staged::Memory(Arc::new(buf)), verified)
            }
        };
        let image = StagedImage {
            meta,
            bytes,
            done: None,
        };
        let found = verified?;
        if found != image.meta {
            return Err(StageError::Image(
                keel_storage::StorageError::SnapshotImage {
                    index: image.meta.index,
                    reason: format!(
                        "image stands at {}@t{}, the message says {}@t{}",
                        found.index, found.term, image.meta.index, image.meta.term
                    ),
                },
            ));
        }
        Ok(image)
    }
}

/// Why staging failed.
#[derive(Debug)]
pub enum StageError {
    /// A chunk out of place.
    Refused(ChunkRefused),
    /// The staging file.
    Io(std::io::Error),
    /// The image is damaged, or not the one the message names.
    Image(keel_storage::StorageError),
}

impl std::fmt::Display for StageError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            StageError::Refused(ChunkRefused::Gap { have }) => {
                write!(f, "chunk past the {have} bytes held")
            }
            StageError::Io(e) => write!(f, "staging file: {e}"),
            StageError::Image(e) => write!(f, "{e}"),
        }
    }
}

/// Removes what a previous run left in the staging directory (partial and unused images).
pub fn clear_staging(dir: &Path) {
    if let Ok(entries) = std::fs::read_dir(dir) {
        for e in entries.flatten() {
            let _ = std::fs::remove_file(e.path());
        }
    }
}

fn partial_name(from: NodeId, meta: &SnapshotMeta) -> String {
    format!("from-{from}-{}-{}.partial", meta.index, meta.term)
}

#[cfg(test)]
mod tests {
    use super::*;
    use keel_storage::{MemStorage, SnapshotChunks, Storage};

    fn image() -> (SnapshotMeta, Vec<u8>) {
        let store = MemStorage::new();
        let chunks = SnapshotChunks::new(Storage::view(&store).expect("view"), 8);
        let meta = chunks.meta().clone();
        let data = chunks
            .collect::<Result<Vec<_>, _>>()
            .expect("image")
            .concat();
        (meta, data)
    }

    #[test]
    fn duplicates_are_skipped_and_gaps_refused() {
        let (meta, data) = image();
        let mut s = Staging::memory(1, &meta);
        s.accept(0, &data[..5]).expect("first");
        s.accept(0, &data[..5]).expect("duplicate");
        s.accept(3, &data[3..8]).expect("overlap");
        assert_eq!(s.have(), 8);
        assert!(matches!(
            s.accept(10, &data[10..]),
            Err(StageError::Refused(ChunkRefused::Gap { have: 8 }))
        ));
        s.accept(8, &data[8..]).expect("rest");
        let staged = s.finish().expect("verified");
        let mut back = Vec::new();
        staged
            .open()
            .expect("open")
            .read_to_end(&mut back)
            .expect("read");
        assert_eq!(back, data);
    }

    #[test]
    fn a_damaged_or_mislabelled_image_is_refused_and_its_file_removed() {
        let (meta, data) = image();
        let dir = std::env::temp_dir().join(format!("keel-staging-{}", std::process::id()));
        let mut bad = data.clone();
        let mid = bad.len() / 2;
        bad[mid] ^= 1;
        let mut s = Staging::file(&dir, 2, &meta).expect("staging");
        s.accept(0, &bad).expect("bytes");
        assert!(matches!(s.finish(), Err(StageError::Image(_))));
        assert_eq!(std::fs::read_dir(&dir).expect("dir").count(), 0);
        let mut other = meta.clone();
        other.term += 1;
        let mut s = Staging::file(&dir, 2, &other).expect("staging");
        s.accept(0, &data).expect("bytes");
        assert!(matches!(s.finish(), Err(StageError::Image(_))));
        // A partial file is continued, and a verified image survives until dropped.
        let mut s = Staging::file(&dir, 2, &meta).expect("staging");
        s.accept(0, &data[..4]).expect("bytes");
        drop(s);
        let mut s = Staging::file(&dir, 2, &meta).expect("staging");
        assert_eq!(s.have(), 4);
        s.accept(4, &data[4..]).expect("rest");
        let staged = s.finish().expect("verified");
        assert_eq!(std::fs::read_dir(&dir).expect("dir").count(), 1);
        drop(staged);
        assert_eq!(std::fs::read_dir(&dir).expect("dir").count(), 0);
        let _ = std::fs::remove_dir_all(&dir);
    }
}
