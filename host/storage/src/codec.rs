//! Encodings of stored values.
//!
//! Log entries are stored as `crc32 (4 bytes, LE) ‖ postcard(Entry)`. redb checksums its pages,
//! but verifies them only at open (with `set_check_integrity_on_open`, which Keel uses); the
//! per-entry checksum also catches a value damaged after open, on every read, for 4 bytes and a
//! few ns per entry (`tests/t40_corruption.rs` shows a plain redb open serves a flipped byte).

use std::path::Path;

use keel_raft::{Entry, Index};
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::StorageError;

/// Encodes an entry for the log table, refusing it if larger than `max` bytes.
pub(crate) fn encode_entry(entry: &Entry, max: usize) -> Result<Vec<u8>, StorageError> {
    // Room for the checksum first, so the entry is encoded straight into its final buffer.
    let mut out =
        postcard::to_extend(entry, vec![0u8; 4]).map_err(|source| StorageError::Encode {
            what: format!("log entry {}", entry.index),
            source,
        })?;
    let size = out.len() - 4;
    if size > max {
        return Err(StorageError::EntryTooLarge {
            index: entry.index,
            size,
            max,
        });
    }
    let crc = crc32fast::hash(&out[4..]);
    out[..4].copy_from_slice(&crc.to_le_bytes());
    Ok(out)
}

/// Decodes a log table value stored under `slot`, checking its checksum and index.
pub(crate) fn decode_entry(path: &Path, slot: Index, bytes: &[u8]) -> Result<Entry, StorageError> {
    let checksum_error = || StorageError::Checksum {
        path: path.to_path_buf(),
        index: slot,
    };
    let (crc, body) = match bytes.split_first_chunk::<4>() {
        Some((crc, body)) => (u32::from_le_bytes(*crc), body),
        None => return Err(checksum_error()),
    };
    if crc32fast::hash(body) != crc {
        return Err(checksum_error());
    }
    let entry: Entry = postcard::from_bytes(body).map_err(|source| StorageError::Decode {
        path: path.to_path_buf(),
        what: format!("log entry {slot}"),
        source,
    })?;
    if entry.index != slot {
        return Err(StorageError::Misplaced {
            path: path.to_path_buf(),
            slot,
            index: entry.index,
        });
    }
    Ok(entry)
}

/// Encoded size of an entry as stored (for `max_bytes` limits on reads).
pub(crate) fn stored_size(bytes: &[u8]) -> u64 {
    bytes.len() as u64
}

/// Encodes a metadata or session value.
pub(crate) fn encode<T: Serialize>(
    value: &T,
    what: impl FnOnce() -> String,
) -> Result<Vec<u8>, StorageError> {
    postcard::to_stdvec(value).map_err(|source| StorageError::Encode {
        what: what(),
        source,
    })
}

/// Decodes a metadata or session value, naming it in the error.
pub(crate) fn decode<T: DeserializeOwned>(
    path: &Path,
    what: impl FnOnce() -> String,
    bytes: &[u8],
) -> Result<T, StorageError> {
    postcard::from_bytes(bytes).map_err(|source| StorageError::Decode {
        path: path.to_path_buf(),
        what: what(),
        source,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use keel_raft::{Command, Payload, Record};

    fn entry(index: Index) -> Entry {
        Entry {
            index,
            term: 3,
            timestamp_ms: 1_700_000_000_000,
            record: Record::Command(Command {
                plugin: "counter".into(),
                client: None,
                payload: Payload::Inline(vec![7; 40]),
            }),
        }
    }

    #[test]
    fn every_single_flipped_bit_of_an_entry_is_caught() {
        let path = Path::new("test.redb");
        let bytes = encode_entry(&entry(5), 1024).expect("fits");
        assert_eq!(decode_entry(path, 5, &bytes).expect("intact"), entry(5));
        for byte in 0..bytes.len() {
            for bit in 0..8 {
                let mut damaged = bytes.clone();
                damaged[byte] ^= 1 << bit;
                assert!(
                    decode_entry(path, 5, &damaged).is_err(),
                    "flip of bit {bit} in byte {byte} went unnoticed"
                );
            }
        }
    }

    #[test]
    fn an_entry_under_the_wrong_slot_is_refused() {
        let bytes = encode_entry(&entry(5), 1024).expect("fits");
        let err = decode_entry(Path::new("f"), 6, &bytes).expect_err("misplaced");
        assert!(
            matches!(
                err,
                StorageError::Misplaced {
                    slot: 6,
                    index: 5,
                    ..
                }
            ),
            "{err}"
        );
    }

    #[test]
    fn an_oversized_entry_is_refused_with_its_size() {
        let err = encode_entry(&entry(9), 16).expect_err("too large");
        assert!(
            matches!(err, StorageError::EntryTooLarge { index: 9, max: 16, size } if size > 16),
            "{err}"
        );
    }
}
