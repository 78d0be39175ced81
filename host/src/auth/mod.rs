//! Client authentication and roles (issue #13): users, roles and tokens in the replicated
//! state, and the permission check every client request passes.
//!
//! The table is changed only through the log: a change is a command to the reserved
//! plugin name [`AUTH_PLUGIN`] (no deploy can take it: plugin names cannot start with
//! `_`), applied by the host into the system namespace (`__keel/auth/…`, see
//! [`crate::state`]), so snapshots, restarts and new members carry it like plugin versions.
//! Every node keeps the applied table in memory ([`crate::state::Registry::auth`]) and
//! checks requests against it. A token's secret never enters the log: only its SHA-256.

pub mod bootstrap;
mod check;
mod table;

pub use check::*;
pub use table::*;

#[cfg(test)]
mod tests;

use sha2::{Digest, Sha256};

/// The plugin name auth changes are proposed under.
pub const AUTH_PLUGIN: &str = "_auth";

/// A fresh token: `keel_ID_SECRET`, the id (12 hex digits) to name it in `token list` and
/// `token revoke`, the secret 256 random bits. Returns `(id, token)`.
pub fn new_token() -> Result<(String, String), getrandom::Error> {
    let mut id = [0u8; 6];
    let mut secret = [0u8; 32];
    getrandom::fill(&mut id)?;
    getrandom::fill(&mut secret)?;
    let id = crate::blobs::hex(&id);
    let token = format!("keel_{id}_{}", crate::blobs::hex(&secret));
    Ok((id, token))
}

/// What the table stores of a token: the SHA-256 of the whole token string.
pub fn token_hash(token: &str) -> [u8; 32] {
    Sha256::digest(token.as_bytes()).into()
}

/// The id part of a token (`keel_ID_SECRET`), to say which token was refused without
/// printing the secret.
pub fn token_id_of(token: &str) -> Option<&str> {
    let rest = token.strip_prefix("keel_")?;
    let (id, _) = rest.split_once('_')?;
    (id.len() == 12 && id.bytes().all(|b| b.is_ascii_hexdigit())).then_some(id)
}

/// The bootstrap change: user `root` with every permission, and this token.
pub fn init_op(token_id: String, sha256: String) -> Op {
    Op::Init {
        user: "root".into(),
        token_id,
        sha256,
    }
}
