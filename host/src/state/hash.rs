//! The state hash: one digest of the whole applied state, to compare replicas.

use keel_storage::{StateView, StorageError};
use sha2::{Digest, Sha256};

use crate::blobs::hex;

/// A hash of the whole applied state (every namespace and session), to compare replicas.
pub fn state_hash(view: &dyn StateView) -> Result<String, StorageError> {
    let mut h = Sha256::new();
    let mut after: Option<(String, Vec<u8>)> = None;
    loop {
        let page = view.scan_kv(
            after.as_ref().map(|(n, k)| (n.as_str(), k.as_slice())),
            1_000,
        )?;
        let Some(last) = page.last() else { break };
        after = Some((last.namespace.clone(), last.key.clone()));
        for r in &page {
            for part in [r.namespace.as_bytes(), &r.key, &r.value] {
                h.update((part.len() as u64).to_le_bytes());
                h.update(part);
            }
        }
    }
    let mut after_session = None;
    loop {
        let page = view.scan_sessions(after_session, 1_000)?;
        let Some(last) = page.last() else { break };
        after_session = Some(last.0);
        for (id, s) in &page {
            h.update(id.to_le_bytes());
            h.update(s.serial.to_le_bytes());
            h.update(s.last_ms.to_le_bytes());
            h.update((s.result.len() as u64).to_le_bytes());
            h.update(&s.result);
        }
    }
    Ok(hex(&h.finalize()))
}
