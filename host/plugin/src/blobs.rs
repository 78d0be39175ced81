//! What a plugin may do with blobs (design §6, WIT `keel:plugin/blobs`): read the blobs its
//! command attaches and those it retains, and retain or release them. The node supplies the
//! bytes and the replicated retain counts through [`BlobSource`]; this crate keeps the
//! rules that make every replica read the same bytes.

use crate::StorageError;

/// Most bytes one `read` call returns.
pub const MAX_BLOB_READ: u32 = 1 << 20;

/// A blob named in a command: its SHA-256 and length.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct BlobRef {
    /// SHA-256 of the bytes.
    pub sha256: [u8; 32],
    /// Length in bytes.
    pub len: u64,
}

/// The node's blobs as one plugin's calls see them: passed with the plugin's KV view
/// ([`crate::KvView::blobs`]).
pub trait BlobSource: Send + Sync {
    /// Up to `len` bytes of the blob from `offset`, checked against its hash; `None` if
    /// this node does not hold it (or holds it damaged: then no longer).
    fn read(&self, sha256: &[u8; 32], offset: u64, len: usize) -> Option<Vec<u8>>;
    /// The blob's length, if this node holds it.
    fn len(&self, sha256: &[u8; 32]) -> Option<u64>;
    /// How many retains the plugin holds on the blob, in the replicated state as of the
    /// call (earlier entries, and earlier plugins' groups of the same entry).
    fn retained(&self, sha256: &[u8; 32]) -> Result<u64, StorageError>;
}

/// Parses 64 hex digits (either case).
pub(crate) fn parse_sha(s: &str) -> Option<[u8; 32]> {
    if s.len() != 64 {
        return None;
    }
    let mut out = [0u8; 32];
    for (i, pair) in s.as_bytes().chunks(2).enumerate() {
        let hi = (pair[0] as char).to_digit(16)?;
        let lo = (pair[1] as char).to_digit(16)?;
        out[i] = (hi * 16 + lo) as u8;
    }
    Some(out)
}

/// 64 lowercase hex digits.
pub(crate) fn sha_hex(sha: &[u8; 32]) -> String {
    sha.iter().map(|b| format!("{b:02x}")).collect()
}
