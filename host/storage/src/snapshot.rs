//! Snapshot images: a point-in-time copy of every plugin namespace, the session table and the
//! configuration at a committed index, streamed in chunks.
//!
//! An image is a sequence of postcard-encoded frames:
//! `Header{magic, version, meta}`, then every `Kv` in (namespace, key) order, then every
//! `Session` in client-id order, then `End{kv, sessions, crc32 of all bytes before End}`.
//! Chunks hold whole frames, so a receiver may also decode chunk by chunk. Both stores produce
//! byte-identical images for the same state.

use keel_raft::{Snapshot, SnapshotMeta};
use serde::{Deserialize, Serialize};

use crate::{KvRecord, Session, StateView, StorageError};

const MAGIC: [u8; 8] = *b"KEELSNAP";
/// 2: sessions carry `last_ms`.
const VERSION: u32 = 2;
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
    pub(crate) meta: SnapshotMeta,
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

    /// Where the snapshot stands: the view's `last_applied` and configuration.
    pub fn meta(&self) -> &SnapshotMeta {
        &self.meta
    }

    /// Collects every chunk into a [`Snapshot`] for the core.
    pub fn into_snapshot(mut self) -> Result<Snapshot, StorageError> {
        let mut data = Vec::new();
        for chunk in &mut self {
            data.extend_from_slice(&chunk?);
        }
        Ok(Snapshot {
            meta: self.meta,
            data,
        })
    }

    fn push(&mut self, out: &mut Vec<u8>, frame: &Frame) -> Result<(), StorageError> {
        let start = out.len();
        let encoded = postcard::to_extend(frame, std::mem::take(out)).map_err(|source| {
            StorageError::Encode {
                what: format!("snapshot frame at {}", self.meta.index),
                source,
            }
        })?;
        *out = encoded;
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

/// Decodes and verifies a whole image (the concatenated chunks).
pub(crate) fn decode(data: &[u8]) -> Result<Image, StorageError> {
    let mut index = 0;
    let bad = |index, reason: String| StorageError::SnapshotImage { index, reason };
    let mut rest = data;
    let mut image = Image::default();
    let mut hasher = crc32fast::Hasher::new();
    let mut first = true;
    loop {
        let (frame, tail): (Frame, &[u8]) = postcard::take_from_bytes(rest).map_err(|e| {
            bad(
                index,
                format!("undecodable frame at byte {}: {e}", data.len() - rest.len()),
            )
        })?;
        let consumed = &rest[..rest.len() - tail.len()];
        rest = tail;
        match frame {
            Frame::Header {
                magic,
                version,
                meta,
            } if first => {
                if magic != MAGIC || version != VERSION {
                    return Err(bad(
                        meta.index,
                        format!("not a version-{VERSION} Keel snapshot image"),
                    ));
                }
                index = meta.index;
                image.meta = meta;
            }
            _ if first => return Err(bad(0, "does not start with a header".into())),
            Frame::Header { .. } => return Err(bad(index, "second header".into())),
            Frame::Kv {
                namespace,
                key,
                value,
            } => image.kv.push(KvRecord {
                namespace,
                key,
                value,
            }),
            Frame::Session { client_id, session } => image.sessions.push((client_id, session)),
            Frame::End { kv, sessions, crc } => {
                if crc != hasher.clone().finalize() {
                    return Err(bad(index, "checksum mismatch".into()));
                }
                if kv != image.kv.len() as u64 || sessions != image.sessions.len() as u64 {
                    return Err(bad(index, "record counts do not match".into()));
                }
                if !rest.is_empty() {
                    return Err(bad(
                        index,
                        format!("{} bytes after the end frame", rest.len()),
                    ));
                }
                return Ok(image);
            }
        }
        hasher.update(consumed);
        first = false;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_truncated_or_altered_image_is_refused() {
        let store = crate::MemStorage::new();
        let view = crate::Storage::view(&store).expect("view");
        let snap = SnapshotChunks::new(view, 1024)
            .into_snapshot()
            .expect("image");
        assert!(decode(&snap.data).is_ok());
        for cut in 0..snap.data.len() {
            assert!(
                decode(&snap.data[..cut]).is_err(),
                "prefix of {cut} bytes accepted"
            );
        }
        let mut longer = snap.data.clone();
        longer.push(0);
        assert!(decode(&longer).is_err());
    }
}
