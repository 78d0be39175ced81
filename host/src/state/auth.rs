//! The auth table in the applied state (issue #13): loading it after a restart or a
//! snapshot install, and applying the changes the log carries (commands to
//! [`crate::auth::AUTH_PLUGIN`]) into the system namespace.

use std::sync::Arc;

use keel_plugin::KvView;
use keel_raft::Entry;
use keel_storage::StateView;

use super::apply::Applier;
use super::registry::{ApplyError, CommandResult, SYSTEM_NAMESPACE};
use crate::auth::{AuthTable, Op, session_key};

/// The auth table of the applied state `view`.
pub fn load_auth(view: &dyn StateView) -> Result<AuthTable, ApplyError> {
    let mut records: Vec<(Vec<u8>, Vec<u8>)> = Vec::new();
    // Users, roles and tokens; not the session owners under the same prefix (many, and
    // read one at a time when a command names its session).
    for prefix in ["auth/user/", "auth/role/", "auth/token/"] {
        super::registry::scan_system(view, prefix.as_bytes(), |k, v| {
            records.push((k, v));
            Ok(())
        })?;
    }
    AuthTable::from_records(records.iter().map(|(k, v)| (&k[..], &v[..])))
        .map_err(ApplyError::BadAuth)
}

/// The user a session belongs to, in the system namespace `system` of the applied state.
pub fn session_owner(system: &Arc<dyn KvView>, client_id: u64) -> anyhow::Result<Option<String>> {
    let owner = system
        .get(&session_key(client_id))
        .map_err(|e| anyhow::anyhow!("reading the applied state: {e}"))?;
    Ok(owner.map(|o| String::from_utf8_lossy(&o).into_owned()))
}

impl Applier<'_> {
    /// One change to the auth table. A change that does not decode or is refused (an
    /// unknown user, a second init) is that command's error, the same on every node.
    pub(super) fn auth_change(
        &mut self,
        e: &Entry,
        bytes: &[u8],
    ) -> Result<CommandResult, ApplyError> {
        let op: Op = match serde_json::from_slice(bytes) {
            Ok(op) => op,
            Err(err) => return Ok(Err(format!("not an auth change: {err}"))),
        };
        if let Op::ClaimSession { client_id, user } = &op {
            return self.claim_session(*client_id, user);
        }
        let table = self
            .auth
            .get_or_insert_with(|| (*self.registry.auth()).clone());
        let (answer, writes) = match table.apply(&op, e.timestamp_ms) {
            Ok(done) => done,
            Err(refused) => return Ok(Err(refused)),
        };
        for (key, value) in writes {
            self.write(SYSTEM_NAMESPACE, key, value);
        }
        Ok(Ok(answer.to_string().into_bytes()))
    }

    /// Gives a session to the user who opened it: only an open session that has no owner
    /// yet (the same owner again is a retry).
    fn claim_session(&mut self, client_id: u64, user: &str) -> Result<CommandResult, ApplyError> {
        if self.session(client_id)?.is_none() {
            return Ok(Err(format!("session {client_id} is unknown or expired")));
        }
        let key = session_key(client_id);
        match self.get(SYSTEM_NAMESPACE, &key)? {
            Some(owner) if owner == user.as_bytes() => {}
            Some(_) => return Ok(Err(format!("session {client_id} belongs to another user"))),
            None => self.write(SYSTEM_NAMESPACE, key, Some(user.as_bytes().to_vec())),
        }
        let answer = serde_json::json!({"client_id": client_id, "user": user});
        Ok(Ok(answer.to_string().into_bytes()))
    }

    /// An expired session's owner goes with it.
    pub(super) fn forget_owner(&mut self, client_id: u64) -> Result<(), ApplyError> {
        let key = session_key(client_id);
        if self.get(SYSTEM_NAMESPACE, &key)?.is_some() {
            self.write(SYSTEM_NAMESPACE, key, None);
        }
        Ok(())
    }
}
