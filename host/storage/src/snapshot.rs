//! Snapshot images: a point-in-time copy of every plugin namespace, the session table and the
//! configuration at a committed index, streamed in chunks.
//!
//! An image is a sequence of frames, each a `u32` little-endian length and a postcard
//! encoding: `Header{magic, version, meta}`, then every `Kv` in (namespace, key) order, then
//! every `Session` in client-id order, then `End{kv, sessions, crc32 of all bytes before
//! End}`. Chunks hold whole frames. Both stores produce byte-identical images for the same
//! state. Images are produced and read as streams ([`SnapshotChunks`], [`read_image`]): no
//! step holds a whole one in memory (issue #16).

use std::io::Read;

use keel_raft::SnapshotMeta;
use serde::{Deserialize, Serialize};

use crate::{KvRecord, Session, StateView, StorageError};

const MAGIC: [u8; 8] = *b"KEELSNAP";
/// 2: sessions carry `last_ms`. 3: frames are length-prefixed, so they can be read from a
/// stream.
const VERSION: u32 = 3;
/// Records fetched from the view per scan call.
const SCAN_BATCH: usize = 256;

#[derive(Serialize, Deserialize)]
enum Frame {
    Header {
        magic: [u8; 8],
        version: u32,
        meta: SnapshotMeta,
    },
    Kv {
        namespace: String,
        key: Vec<u8>,
        value: Vec<u8>,
    },
    Session {
        client_id: u64,
        session: Session,
    },
    End {
        kv: u64,
        sessions: u64,
        crc: u32,
    },
}

/// A decoded image, ready to install.
#[derive(Debug, Default)]
pub(crate) struct Image {
    pub(crate) kv: Vec<KvRecord>,
    pub(crate) sessions: Vec<(u64, Session)>,
}

enum Phase {
    Header,
    Kv { after: Option<(String, Vec<u8>)> },
    Sessions { after: Option<u64> },
    End,
    Done,
}

/// The chunks of a snapshot image of `view`, each about `chunk_bytes` long (a single frame larger
/// than that gets a chunk of its own). Reads the view lazily: the view's read transaction holds
/// the point in time while writes go on.
///
/// ```
/// use keel_storage::{MemStorage, SnapshotChunks, Storage};
/// let store = MemStorage::new();
/// let chunks: Vec<Vec<u8>> = SnapshotChunks::new(store.view()?, 64 * 1024)
///     .collect::<Result<_, _>>()?;
/// assert!(!chunks.is_empty());
/// # Ok::<(), keel_storage::StorageError>(())
/// ```
pub struct SnapshotChunks<V> {
    view: V,
    meta: SnapshotMeta,
    chunk_bytes: usize,
    phase: Phase,
    hasher: crc32fast::Hasher,
    kv: u64,
    sessions: u64,
}

impl<V: StateView> SnapshotChunks<V> {
    /// Streams the image of `view`, in chunks of about `chunk_bytes`.
    pub fn new(view: V, chunk_bytes: usize) -> Self {
        let applied = view.applied();
        let meta = SnapshotMeta {
            index: applied.last_applied.index,
            term: applied.last_applied.term,
            config: applied.config.clone(),
        };
        SnapshotChunks {
            view,
            meta,
            chunk_bytes: chunk_bytes.max(1),
            phase: Phase::Header,
            hasher: crc32fast::Hasher::new(),
            kv: 0,
            sessions: 0,
        }
    }

    /// The view back (to stream the same image again from the start).
    pub fn into_view(self) -> V {
        self.view
    }

    /// Where the snapshot stands: the view's `last_applied` and configuration.
    pub fn meta(&self) -> &SnapshotMeta {
        &self.meta
    }

    fn push(&mut self, out: &mut Vec<u8>, frame: &Frame) -> Result<(), StorageError> {
        let start = out.len();
        out.extend_from_slice(&[0; 4]);
        let encoded = postcard::to_extend(frame, std::mem::take(out)).map_err(|source| {
            StorageError::Encode {
                what: format!("snapshot frame at {}", self.meta.index),
                source,
            }
        })?;
        *out = encoded;
        let len =
            u32::try_from(out.len() - start - 4).map_err(|_| StorageError::SnapshotImage {
                index: self.meta.index,
                reason: "a record over 4 GiB".into(),
            })?;
        out[start..start + 4].copy_from_slice(&len.to_le_bytes());
        if !matches!(frame, Frame::End { .. }) {
            self.hasher.update(&out[start..]);
        }
        Ok(())
    }

    fn fill(&mut self, out: &mut Vec<u8>) -> Result<(), StorageError> {
        while out.len() < self.chunk_bytes {
            match std::mem::replace(&mut self.phase, Phase::Done) {
                Phase::Header => {
                    let frame = Frame::Header {
                        magic: MAGIC,
                        version: VERSION,
                        meta: self.meta.clone(),
                    };
                    self.push(out, &frame)?;
                    self.phase = Phase::Kv { after: None };
                }
                Phase::Kv { after } => {
                    let batch = self.view.scan_kv(
                        after.as_ref().map(|(n, k)| (n.as_str(), k.as_slice())),
                        SCAN_BATCH,
                    )?;
                    let next = batch.last().map(|r| (r.namespace.clone(), r.key.clone()));
                    let full = batch.len() == SCAN_BATCH;
                    for r in batch {
                        self.kv += 1;
                        self.push(
                            out,
                            &Frame::Kv {
                                namespace: r.namespace,
                                key: r.key,
                                value: r.value,
                            },
                        )?;
                    }
                    self.phase = if full {
                        Phase::Kv { after: next }
                    } else {
                        Phase::Sessions { after: None }
                    };
                }
                Phase::Sessions { after } => {
                    let batch = self.view.scan_sessions(after, SCAN_BATCH)?;
                    let next = batch.last().map(|(id, _)| *id);
                    let full = batch.len() == SCAN_BATCH;
                    for (client_id, session) in batch {
                        self.sessions += 1;
                        self.push(out, &Frame::Session { client_id, session })?;
                    }
                    self.phase = if full {
                        Phase::Sessions { after: next }
                    } else {
                        Phase::End
                    };
                }
                Phase::End => {
                    let crc = self.hasher.clone().finalize();
                    self.push(
                        out,
                        &Frame::End {
                            kv: self.kv,
                            sessions: self.sessions,
                            crc,
                        },
                    )?;
                    self.phase = Phase::Done;
                }
                Phase::Done => return Ok(()),
            }
        }
        Ok(())
    }
}

impl<V: StateView> Iterator for SnapshotChunks<V> {
    type Item = Result<Vec<u8>, StorageError>;

    fn next(&mut self) -> Option<Self::Item> {
        if matches!(self.phase, Phase::Done) {
            return None;
        }
        let mut out = Vec::with_capacity(self.chunk_bytes.min(1 << 20));
        match self.fill(&mut out) {
            // Stop after an error: a half image must not be mistaken for a whole one.
            Err(e) => {
                self.phase = Phase::Done;
                Some(Err(e))
            }
            Ok(()) if out.is_empty() => None,
            Ok(()) => Some(Ok(out)),
        }
    }
}

/// Largest frame a reader accepts: far above any record Keel writes (an entry is at most
/// `max_entry_bytes`), low enough that a damaged length cannot make it allocate without bound.
const MAX_FRAME: usize = 256 << 20;

/// One record of an image, in the order the image holds them.
#[derive(Debug)]
pub(crate) enum ImageRecord {
    Kv(KvRecord),
    Session(u64, Session),
}

/// Reads an image from `r` in one pass, verifying as it goes, and hands each record to `sink`
/// in order; memory stays at one frame whatever the image's size. The image is whole and
/// intact only if this returns `Ok`: on an error the caller must discard what `sink` got
/// (an install drops its transaction). Returns where the image stands.
pub(crate) fn read_image(
    r: &mut dyn Read,
    mut sink: impl FnMut(ImageRecord) -> Result<(), StorageError>,
) -> Result<SnapshotMeta, StorageError> {
    let bad = |index, reason: String| StorageError::SnapshotImage { index, reason };
    let mut hasher = crc32fast::Hasher::new();
    let mut meta: Option<SnapshotMeta> = None;
    let (mut kv, mut sessions, mut at) = (0u64, 0u64, 0u64);
    let mut buf = Vec::new();
    loop {
        let index = meta.as_ref().map_or(0, |m| m.index);
        let mut len = [0u8; 4];
        read_exact(r, &mut len)
            .map_err(|e| bad(index, format!("image ends or fails at byte {at}: {e}")))?;
        let n = u32::from_le_bytes(len) as usize;
        if n > MAX_FRAME {
            return Err(bad(index, format!("frame of {n} bytes at byte {at}")));
        }
        // Grown as the bytes arrive, never sized from the length alone: a damaged (or
        // hostile) length in a short image must not allocate `MAX_FRAME` up front.
        buf.clear();
        let got = (&mut *r)
            .take(n as u64)
            .read_to_end(&mut buf)
            .map_err(|e| bad(index, format!("image fails at byte {at}: {e}")))?;
        if got < n {
            return Err(bad(
                index,
                format!(
                    "image ends at byte {}, inside a frame of {n} bytes",
                    at + 4 + got as u64
                ),
            ));
        }
        let frame: Frame = postcard::from_bytes(&buf)
            .map_err(|e| bad(index, format!("undecodable frame at byte {at}: {e}")))?;
        at += 4 + n as u64;
        match frame {
            Frame::Header {
                magic,
                version,
                meta: m,
            } if meta.is_none() => {
                if magic != MAGIC || version != VERSION {
                    return Err(bad(
                        m.index,
                        format!("not a version-{VERSION} Keel snapshot image"),
                    ));
                }
                meta = Some(m);
            }
            _ if meta.is_none() => return Err(bad(0, "does not start with a header".into())),
            Frame::Header { .. } => return Err(bad(index, "second header".into())),
            Frame::Kv {
                namespace,
                key,
                value,
            } => {
                kv += 1;
                sink(ImageRecord::Kv(KvRecord {
                    namespace,
                    key,
                    value,
                }))?;
            }
            Frame::Session { client_id, session } => {
                sessions += 1;
                sink(ImageRecord::Session(client_id, session))?;
            }
            Frame::End {
                kv: want_kv,
                sessions: want_sessions,
                crc,
            } => {
                if crc != hasher.clone().finalize() {
                    return Err(bad(index, "checksum mismatch".into()));
                }
                if kv != want_kv || sessions != want_sessions {
                    return Err(bad(index, "record counts do not match".into()));
                }
                let mut extra = [0u8; 1];
                if r.read(&mut extra).map_err(|e| bad(index, e.to_string()))? != 0 {
                    return Err(bad(index, "bytes after the end frame".into()));
                }
                return meta.ok_or_else(|| bad(0, "no header".into()));
            }
        }
        hasher.update(&len);
        hasher.update(&buf);
    }
}

/// Reads a whole image without keeping it: is it intact, and where does it stand?
///
/// ```
/// use keel_storage::{MemStorage, SnapshotChunks, Storage, verify_image};
/// let store = MemStorage::new();
/// let image: Vec<u8> = SnapshotChunks::new(store.view()?, 64 * 1024)
///     .collect::<Result<Vec<_>, _>>()?
///     .concat();
/// assert_eq!(verify_image(&mut image.as_slice())?.index, 0);
/// assert!(verify_image(&mut &image[..image.len() - 1]).is_err());
/// # Ok::<(), keel_storage::StorageError>(())
/// ```
pub fn verify_image(r: &mut dyn Read) -> Result<SnapshotMeta, StorageError> {
    read_image(r, |_| Ok(()))
}

fn read_exact(r: &mut dyn Read, buf: &mut [u8]) -> std::io::Result<()> {
    r.read_exact(buf)
}

/// Decodes and verifies a whole image into memory.
#[cfg(test)]
fn decode(r: &mut dyn Read) -> Result<Image, StorageError> {
    let mut image = Image::default();
    read_image(r, |rec| {
        match rec {
            ImageRecord::Kv(kv) => image.kv.push(kv),
            ImageRecord::Session(id, s) => image.sessions.push((id, s)),
        }
        Ok(())
    })?;
    Ok(image)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_truncated_or_altered_image_is_refused() {
        let store = crate::MemStorage::new();
        let view = crate::Storage::view(&store).expect("view");
        let data: Vec<u8> = SnapshotChunks::new(view, 1024)
            .collect::<Result<Vec<_>, _>>()
            .expect("image")
            .concat();
        assert!(decode(&mut data.as_slice()).is_ok());
        for cut in 0..data.len() {
            assert!(
                decode(&mut &data[..cut]).is_err(),
                "prefix of {cut} bytes accepted"
            );
        }
        let mut longer = data.clone();
        longer.push(0);
        assert!(decode(&mut longer.as_slice()).is_err());
        for at in 0..data.len() {
            let mut flipped = data.clone();
            flipped[at] ^= 0x40;
            assert!(
                decode(&mut flipped.as_slice()).is_err(),
                "a flipped bit at byte {at} accepted"
            );
        }
    }
}
