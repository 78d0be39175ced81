//! The auth table (users, roles, tokens), its stored form, and the changes the log carries.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fmt;

use serde::{Deserialize, Serialize};

use crate::blobs::{hex, parse_hex};

/// One permission a role grants.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub enum Grant {
    /// Run queries on a plugin (`*`: every plugin).
    Query(String),
    /// Submit commands to a plugin (and open sessions, upload blobs for it).
    Command(String),
    /// Deploy, roll back and undeploy a plugin.
    Deploy(String),
    /// Members, leadership transfer, users, roles and tokens.
    Admin,
    /// `/v1/status`, the event stream, the state hash, the plugin list, the dashboard.
    ReadStatus,
}

impl Grant {
    /// Parses `query:PLUGIN`, `command:PLUGIN`, `deploy:PLUGIN`, `admin`, `read-status`.
    pub fn parse(s: &str) -> Result<Grant, String> {
        let plugin = |p: &str| -> Result<String, String> {
            if p == "*" || valid_plugin(p) {
                Ok(p.to_string())
            } else {
                Err(format!("{p:?} is neither a plugin name nor *"))
            }
        };
        match s.split_once(':') {
            Some(("query", p)) => Ok(Grant::Query(plugin(p)?)),
            Some(("command", p)) => Ok(Grant::Command(plugin(p)?)),
            Some(("deploy", p)) => Ok(Grant::Deploy(plugin(p)?)),
            None if s == "admin" => Ok(Grant::Admin),
            None if s == "read-status" => Ok(Grant::ReadStatus),
            _ => Err(format!(
                "unknown permission {s:?}: use query:PLUGIN, command:PLUGIN, deploy:PLUGIN \
                 (PLUGIN may be *), admin or read-status"
            )),
        }
    }
}

impl fmt::Display for Grant {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Grant::Query(p) => write!(f, "query:{p}"),
            Grant::Command(p) => write!(f, "command:{p}"),
            Grant::Deploy(p) => write!(f, "deploy:{p}"),
            Grant::Admin => f.write_str("admin"),
            Grant::ReadStatus => f.write_str("read-status"),
        }
    }
}

impl TryFrom<String> for Grant {
    type Error = String;
    fn try_from(s: String) -> Result<Grant, String> {
        Grant::parse(&s)
    }
}

impl From<Grant> for String {
    fn from(g: Grant) -> String {
        g.to_string()
    }
}

/// Plugin names as deploys accept them (lowercase words, not starting with `_`).
fn valid_plugin(name: &str) -> bool {
    (1..=64).contains(&name.len())
        && !name.starts_with('_')
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || b == b'-')
}

/// User and role names: 1 to 64 of `a-z A-Z 0-9 . _ @ -`.
pub fn valid_name(name: &str) -> bool {
    (1..=64).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'@' | b'-'))
}

/// A token as the table keeps it: whose it is, never its secret.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TokenRecord {
    /// The user the token speaks for.
    pub user: String,
    /// SHA-256 of the token, hex.
    pub sha256: String,
    /// A label chosen at creation (what the token is for).
    #[serde(default)]
    pub label: String,
    /// The log's clock when it was created (ms since the epoch).
    pub created_ms: u64,
    /// When it stops working (ms since the epoch, `created_ms` + the TTL it was made
    /// with); never if absent. Checked against each node's clock at every request, like
    /// etcd's token TTL: expiry changes nothing in the replicated state.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires_ms: Option<u64>,
}

/// The users, roles and tokens as of one applied index.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct AuthTable {
    /// Role → what it grants.
    pub roles: BTreeMap<String, BTreeSet<Grant>>,
    /// User → its roles.
    pub users: BTreeMap<String, BTreeSet<String>>,
    /// Token id → token.
    pub tokens: BTreeMap<String, TokenRecord>,
    /// Token hash → token id, for the lookup of every request.
    by_hash: HashMap<[u8; 32], String>,
}

/// Where the table lives in the system namespace.
pub const KEY_PREFIX: &str = "auth/";
const USER: &str = "auth/user/";
const ROLE: &str = "auth/role/";
const TOKEN: &str = "auth/token/";
/// Session owners: `auth/session/ID` → user name. Not in the in-memory table (there may be
/// many sessions); read from the applied state when a command names a session.
pub const SESSION: &str = "auth/session/";

/// The system-namespace key holding the owner of session `client_id`.
pub fn session_key(client_id: u64) -> Vec<u8> {
    format!("{SESSION}{client_id:020}").into_bytes()
}

/// A key and its new value (`None`: deleted) in the system namespace.
pub type Write = (Vec<u8>, Option<Vec<u8>>);

impl AuthTable {
    /// Authentication is on once the cluster has a user.
    pub fn enabled(&self) -> bool {
        !self.users.is_empty()
    }

    /// The token with this SHA-256: `(id, record)`.
    pub fn token_by_hash(&self, hash: &[u8; 32]) -> Option<(&str, &TokenRecord)> {
        let id = self.by_hash.get(hash)?;
        self.tokens.get(id).map(|t| (id.as_str(), t))
    }

    /// Every permission `user` holds through its roles.
    pub fn grants_of(&self, user: &str) -> BTreeSet<Grant> {
        self.users
            .get(user)
            .into_iter()
            .flatten()
            .filter_map(|role| self.roles.get(role))
            .flatten()
            .cloned()
            .collect()
    }

    /// Rebuilds the table from its stored records (`key` relative to the system namespace).
    /// A record that does not decode is an error: a node must not enforce a different table
    /// from the other replicas.
    pub fn from_records<'a>(
        records: impl IntoIterator<Item = (&'a [u8], &'a [u8])>,
    ) -> Result<AuthTable, String> {
        let mut t = AuthTable::default();
        for (key, value) in records {
            let k = String::from_utf8_lossy(key);
            let bad = |e: serde_json::Error| format!("auth record {k}: {e}");
            if let Some(name) = k.strip_prefix(USER) {
                let roles: BTreeSet<String> = serde_json::from_slice(value).map_err(bad)?;
                t.users.insert(name.to_string(), roles);
            } else if let Some(name) = k.strip_prefix(ROLE) {
                let grants: BTreeSet<Grant> = serde_json::from_slice(value).map_err(bad)?;
                t.roles.insert(name.to_string(), grants);
            } else if let Some(id) = k.strip_prefix(TOKEN) {
                let token: TokenRecord = serde_json::from_slice(value).map_err(bad)?;
                t.insert_token(id.to_string(), token)?;
            }
        }
        Ok(t)
    }

    fn insert_token(&mut self, id: String, token: TokenRecord) -> Result<(), String> {
        let hash = parse_hex(&token.sha256)
            .ok_or_else(|| format!("token {id}: its hash is not 64 hex digits"))?;
        self.by_hash.insert(hash, id.clone());
        self.tokens.insert(id, token);
        Ok(())
    }

    fn remove_token(&mut self, id: &str) -> Option<TokenRecord> {
        let token = self.tokens.remove(id)?;
        if let Some(hash) = parse_hex(&token.sha256) {
            self.by_hash.remove(&hash);
        }
        Some(token)
    }

    /// Whether some user would still hold `admin` (the table must never lock everyone out).
    fn has_admin(&self) -> bool {
        self.users
            .keys()
            .any(|u| self.grants_of(u).contains(&Grant::Admin))
    }

    /// The table as `GET /v1/auth` shows it (token hashes left out).
    pub fn describe(&self) -> serde_json::Value {
        let tokens: Vec<_> = self
            .tokens
            .iter()
            .map(|(id, t)| {
                serde_json::json!({"id": id, "user": t.user, "label": t.label, "created_ms": t.created_ms, "expires_ms": t.expires_ms})
            })
            .collect();
        serde_json::json!({
            "enabled": self.enabled(),
            "users": self.users,
            "roles": self.roles.iter().map(|(r, g)| (r.clone(), g.iter().map(Grant::to_string).collect::<Vec<_>>())).collect::<BTreeMap<_, _>>(),
            "tokens": tokens,
        })
    }

    /// Applies one change: the same on every node (a function of the table, the change
    /// and the entry's clock). Returns the answer for whoever proposed it and the records
    /// to write; a refused change writes nothing and leaves the table as it was.
    pub fn apply(
        &mut self,
        op: &Op,
        now_ms: u64,
    ) -> Result<(serde_json::Value, Vec<Write>), String> {
        let mut next = self.clone();
        let answer = next.change(op, now_ms)?;
        let mut writes = Vec::new();
        next.diff(self, &mut writes);
        *self = next;
        Ok((answer, writes))
    }

    fn change(&mut self, op: &Op, now_ms: u64) -> Result<serde_json::Value, String> {
        use serde_json::json;
        match op {
            Op::Init {
                user,
                token_id,
                sha256,
            } => {
                if self.enabled() {
                    // The same bootstrap again (a node restarted with its token file):
                    // nothing to do.
                    if self
                        .tokens
                        .get(token_id)
                        .is_some_and(|t| &t.sha256 == sha256)
                    {
                        return Ok(json!({"user": user, "token_id": token_id, "already": true}));
                    }
                    return Err("auth is initialised already: this cluster has users".into());
                }
                check_name(user)?;
                let all: BTreeSet<Grant> = [
                    Grant::Admin,
                    Grant::ReadStatus,
                    Grant::Query("*".into()),
                    Grant::Command("*".into()),
                    Grant::Deploy("*".into()),
                ]
                .into();
                self.roles.insert("root".into(), all);
                self.users.insert(user.clone(), ["root".to_string()].into());
                self.new_token(token_id, user, sha256, "init", now_ms, None)?;
                Ok(json!({"user": user, "role": "root", "token_id": token_id}))
            }
            Op::UserAdd { user, roles } => {
                if !self.enabled() {
                    return Err("initialise auth first (keel auth init): a first user without admin would lock everyone out".into());
                }
                check_name(user)?;
                if self.users.contains_key(user) {
                    return Err(format!("user {user} exists"));
                }
                for r in roles {
                    self.known_role(r)?;
                }
                self.users
                    .insert(user.clone(), roles.iter().cloned().collect());
                Ok(json!({"user": user, "roles": roles}))
            }
            Op::UserRemove { user } => {
                if self.users.remove(user).is_none() {
                    return Err(format!("no user {user}"));
                }
                let ids: Vec<String> = self
                    .tokens
                    .iter()
                    .filter(|(_, t)| &t.user == user)
                    .map(|(id, _)| id.clone())
                    .collect();
                for id in &ids {
                    self.remove_token(id);
                }
                self.keep_an_admin()?;
                Ok(json!({"user": user, "removed": true, "tokens_revoked": ids}))
            }
            Op::UserGrant { user, role } => {
                self.known_role(role)?;
                let roles = self
                    .users
                    .get_mut(user)
                    .ok_or_else(|| format!("no user {user}"))?;
                roles.insert(role.clone());
                Ok(json!({"user": user, "roles": roles.clone()}))
            }
            Op::UserRevoke { user, role } => {
                let roles = self
                    .users
                    .get_mut(user)
                    .ok_or_else(|| format!("no user {user}"))?;
                if !roles.remove(role) {
                    return Err(format!("user {user} does not have role {role}"));
                }
                let roles = roles.clone();
                self.keep_an_admin()?;
                Ok(json!({"user": user, "roles": roles}))
            }
            Op::RoleGrant { role, grant } => {
                check_name(role)?;
                let grants = self.roles.entry(role.clone()).or_default();
                grants.insert(grant.clone());
                Ok(
                    json!({"role": role, "grants": grants.iter().map(Grant::to_string).collect::<Vec<_>>()}),
                )
            }
            Op::RoleRevoke { role, grant } => {
                let grants = self
                    .roles
                    .get_mut(role)
                    .ok_or_else(|| format!("no role {role}"))?;
                if !grants.remove(grant) {
                    return Err(format!("role {role} does not grant {grant}"));
                }
                let left: Vec<String> = grants.iter().map(Grant::to_string).collect();
                self.keep_an_admin()?;
                Ok(json!({"role": role, "grants": left}))
            }
            Op::RoleRemove { role } => {
                if self.roles.remove(role).is_none() {
                    return Err(format!("no role {role}"));
                }
                let mut from = Vec::new();
                for (user, roles) in self.users.iter_mut() {
                    if roles.remove(role) {
                        from.push(user.clone());
                    }
                }
                self.keep_an_admin()?;
                Ok(json!({"role": role, "removed": true, "taken_from": from}))
            }
            Op::TokenCreate {
                user,
                token_id,
                sha256,
                label,
                ttl_ms,
            } => {
                if !self.users.contains_key(user) {
                    return Err(format!("no user {user}"));
                }
                let expires_ms = match ttl_ms {
                    None => None,
                    Some(0) => return Err("a token's TTL is at least 1 ms".into()),
                    Some(ttl) => Some(now_ms.saturating_add(*ttl)),
                };
                self.new_token(token_id, user, sha256, label, now_ms, expires_ms)?;
                Ok(json!({"user": user, "token_id": token_id, "expires_ms": expires_ms}))
            }
            Op::TokenRevoke { token_id } => match self.remove_token(token_id) {
                Some(t) => Ok(json!({"token_id": token_id, "user": t.user, "revoked": true})),
                None => Err(format!("no token {token_id}")),
            },
            // Needs the sessions of the applied state: the apply path handles it.
            Op::ClaimSession { .. } => Err("a session claim is applied with the sessions".into()),
        }
    }

    fn new_token(
        &mut self,
        id: &str,
        user: &str,
        sha256: &str,
        label: &str,
        now_ms: u64,
        expires_ms: Option<u64>,
    ) -> Result<(), String> {
        if id.is_empty() || id.len() > 64 || !id.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err("a token id is hex digits".into());
        }
        if self.tokens.contains_key(id) {
            return Err(format!("token {id} exists"));
        }
        if label.len() > 200 {
            return Err("a token label is at most 200 bytes".into());
        }
        let record = TokenRecord {
            user: user.to_string(),
            sha256: sha256.to_ascii_lowercase(),
            label: label.to_string(),
            created_ms: now_ms,
            expires_ms,
        };
        let hash = parse_hex(&record.sha256).ok_or("a token hash is 64 hex digits")?;
        if self.by_hash.contains_key(&hash) {
            return Err("a token with this hash exists".into());
        }
        self.insert_token(id.to_string(), record)
    }

    fn known_role(&self, role: &str) -> Result<(), String> {
        if self.roles.contains_key(role) {
            Ok(())
        } else {
            Err(format!(
                "no role {role} (keel role grant {role} PERMISSION creates it)"
            ))
        }
    }

    fn keep_an_admin(&self) -> Result<(), String> {
        if self.has_admin() {
            Ok(())
        } else {
            Err("refused: no user would hold admin any more (the cluster would be locked)".into())
        }
    }

    /// The records that differ between `old` and `self`, as writes.
    pub(super) fn diff(&self, old: &AuthTable, out: &mut Vec<Write>) {
        fn records<V: Serialize + PartialEq>(
            prefix: &str,
            new: &BTreeMap<String, V>,
            old: &BTreeMap<String, V>,
            out: &mut Vec<Write>,
        ) {
            for (k, v) in new {
                if old.get(k) != Some(v) {
                    let value = serde_json::to_vec(v).unwrap_or_default();
                    out.push((format!("{prefix}{k}").into_bytes(), Some(value)));
                }
            }
            for k in old.keys().filter(|k| !new.contains_key(*k)) {
                out.push((format!("{prefix}{k}").into_bytes(), None));
            }
        }
        records(USER, &self.users, &old.users, out);
        records(ROLE, &self.roles, &old.roles, out);
        records(TOKEN, &self.tokens, &old.tokens, out);
    }
}

fn check_name(name: &str) -> Result<(), String> {
    if valid_name(name) {
        Ok(())
    } else {
        Err(format!(
            "{name:?}: a name is 1 to 64 of a-z A-Z 0-9 . _ @ -"
        ))
    }
}

/// A change to the table, as the log carries it (JSON, the payload of a command to
/// [`super::AUTH_PLUGIN`]). Never a token's secret: its hash.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case", deny_unknown_fields)]
pub enum Op {
    /// The first user, with role `root` (every permission), and its token. Only while the
    /// cluster has no users (or the same token again).
    Init {
        /// The user.
        user: String,
        /// The token's id.
        token_id: String,
        /// The token's SHA-256, hex.
        sha256: String,
    },
    /// A new user with these (existing) roles.
    UserAdd {
        /// The user.
        user: String,
        /// Its roles.
        #[serde(default)]
        roles: Vec<String>,
    },
    /// Removes a user and revokes its tokens.
    UserRemove {
        /// The user.
        user: String,
    },
    /// Gives a user a role.
    UserGrant {
        /// The user.
        user: String,
        /// The role.
        role: String,
    },
    /// Takes a role from a user.
    UserRevoke {
        /// The user.
        user: String,
        /// The role.
        role: String,
    },
    /// Adds a permission to a role (creating the role).
    RoleGrant {
        /// The role.
        role: String,
        /// The permission.
        grant: Grant,
    },
    /// Takes a permission from a role.
    RoleRevoke {
        /// The role.
        role: String,
        /// The permission.
        grant: Grant,
    },
    /// Removes a role and takes it from every user who has it (refused if no user would
    /// hold `admin` afterwards).
    RoleRemove {
        /// The role.
        role: String,
    },
    /// A new token for a user.
    TokenCreate {
        /// The user.
        user: String,
        /// The token's id.
        token_id: String,
        /// The token's SHA-256, hex.
        sha256: String,
        /// What it is for.
        #[serde(default)]
        label: String,
        /// How long it works, from the entry's clock; for ever if absent.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        ttl_ms: Option<u64>,
    },
    /// Revokes a token: refused on every node from this entry on.
    TokenRevoke {
        /// The token's id.
        token_id: String,
    },
    /// Gives a session (just opened) to the user who opened it.
    ClaimSession {
        /// The session.
        client_id: u64,
        /// Its owner.
        user: String,
    },
}

impl Op {
    /// The hash form of a token for [`Op::Init`] and [`Op::TokenCreate`].
    pub fn hash_hex(token: &str) -> String {
        hex(&super::token_hash(token))
    }
}
