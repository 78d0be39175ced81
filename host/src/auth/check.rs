//! What each route needs, and whether a caller has it.

use std::collections::BTreeSet;

use hyper::Method;

use super::{AuthTable, Grant};

/// What a request needs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Need {
    /// Anyone: `/healthz`, the dashboard's files, `POST /v1/auth/init` (which refuses once
    /// the cluster has users), unknown routes (404).
    Open,
    /// The peer transport (`/v1/raft*`, blob pushes by hash): authenticated by the peer
    /// mechanism (mutual TLS, the cluster id in every message), never by a client token.
    PeerTransport,
    /// One permission.
    Grant(Grant),
    /// One of these permissions.
    AnyOf(Vec<Grant>),
    /// A `command` or `deploy` permission on some plugin (blob uploads).
    SomeWrite,
    /// A `command` permission on some plugin (opening a session).
    SomeCommand,
    /// A `query` or `command` permission on some plugin (reading a blob by its hash).
    SomeRead,
    /// Any valid token (`GET /v1/auth/whoami`).
    Token,
}

impl std::fmt::Display for Need {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Need::Open => f.write_str("nothing"),
            Need::PeerTransport => f.write_str("a cluster node's identity"),
            Need::Grant(g) => write!(f, "{g}"),
            Need::AnyOf(gs) => {
                let names: Vec<String> = gs.iter().map(Grant::to_string).collect();
                write!(f, "one of {}", names.join(", "))
            }
            Need::SomeWrite => f.write_str("command:PLUGIN or deploy:PLUGIN for some plugin"),
            Need::SomeCommand => f.write_str("command:PLUGIN for some plugin"),
            Need::SomeRead => f.write_str("query:PLUGIN or command:PLUGIN for some plugin"),
            Need::Token => f.write_str("a valid token"),
        }
    }
}

/// A route's rule: what a user needs, and whether a cluster node may use it without one
/// (nodes read each other's status and blobs, and stream uploads to each other).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Rule {
    /// What a user's token must grant.
    pub need: Need,
    /// A cluster node is let through.
    pub peers: bool,
}

impl Rule {
    fn user(need: Need) -> Rule {
        Rule { need, peers: false }
    }
    fn peer_or(need: Need) -> Rule {
        Rule { need, peers: true }
    }
}

/// The rule of a route. `peer_upload`: a `PUT /v1/blobs` that says it is a peer's
/// streamed copy (`keel-blob-kind: data`); `metrics_auth`: the config protects `/metrics`.
pub fn rule(method: &Method, parts: &[&str], peer_upload: bool, metrics_auth: bool) -> Rule {
    let g = |g: Grant| Rule::user(Need::Grant(g));
    let status = Rule::peer_or(Need::Grant(Grant::ReadStatus));
    match (method, parts) {
        (&Method::POST, ["v1", "raft"] | ["v1", "raft", "stream"] | ["v1", "raft", "snapshot"]) => {
            Rule::user(Need::PeerTransport)
        }
        // A backup holds every plugin's state.
        (&Method::GET, ["v1", "snapshot"]) => g(Grant::Admin),
        (&Method::PUT, ["v1", "blobs", _]) => Rule::user(Need::PeerTransport),
        (&Method::PUT, ["v1", "blobs"]) if peer_upload => Rule::peer_or(Need::SomeWrite),
        (&Method::PUT, ["v1", "blobs"]) => Rule::user(Need::SomeWrite),
        (&Method::GET | &Method::HEAD, ["v1", "blobs", _]) => Rule::peer_or(Need::SomeRead),
        (&Method::POST, ["v1", "plugins", p, "commands"]) => g(Grant::Command(p.to_string())),
        (&Method::POST, ["v1", "plugins", p, "query"]) => g(Grant::Query(p.to_string())),
        (&Method::POST, ["v1", "sessions"]) => Rule::user(Need::SomeCommand),
        (&Method::GET, ["v1", "plugins"]) => status,
        (&Method::GET, ["v1", "plugins", p]) => Rule::peer_or(Need::AnyOf(vec![
            Grant::ReadStatus,
            Grant::Deploy(p.to_string()),
        ])),
        (&Method::PUT | &Method::DELETE, ["v1", "plugins", p])
        | (&Method::POST, ["v1", "plugins", p, "rollback" | "dry-run"]) => {
            g(Grant::Deploy(p.to_string()))
        }
        (&Method::GET, ["v1", "status" | "state-hash" | "events" | "cluster"]) => status,
        (_, ["v1", "admin", ..]) => g(Grant::Admin),
        (&Method::POST, ["v1", "auth", "init"]) => Rule::user(Need::Open),
        (&Method::GET, ["v1", "auth", "whoami"]) => Rule::user(Need::Token),
        (_, ["v1", "auth", ..]) => g(Grant::Admin),
        (&Method::GET, ["metrics"]) if metrics_auth => status,
        _ => Rule::user(Need::Open),
    }
}

/// Who is calling, once let through.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Caller {
    /// Authentication is off (no users yet), or the route is open.
    Anyone,
    /// A cluster node (a node certificate, or the cluster id on a plaintext connection).
    Peer,
    /// A user, by one of its tokens.
    User {
        /// The user's name.
        name: String,
        /// The token's id (never its secret).
        token_id: String,
    },
}

impl Caller {
    /// The user's name, if a user is calling.
    pub fn user(&self) -> Option<&str> {
        match self {
            Caller::User { name, .. } => Some(name),
            _ => None,
        }
    }
}

/// Why a request was refused.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Denied {
    /// 401: no `Authorization: Bearer` header (or another scheme).
    NoToken(Need),
    /// 401: a token the table does not hold (never issued, revoked, or its user removed).
    BadToken(Need),
    /// 401: a token past its expiry (`keel token create --ttl`).
    Expired {
        /// The token's id.
        token_id: String,
        /// When it expired (ms since the epoch).
        at_ms: u64,
    },
    /// 403: a valid token whose user lacks the permission.
    Missing {
        /// The user.
        user: String,
        /// What it lacks.
        need: Need,
    },
}

/// The token of an `Authorization: Bearer …` header value; `None` for another scheme.
pub fn bearer(header: &str) -> Option<&str> {
    let (scheme, token) = header.trim().split_once(' ')?;
    scheme
        .eq_ignore_ascii_case("bearer")
        .then_some(token.trim())
        .filter(|t| !t.is_empty())
}

/// Whether `grants` satisfy `need`. `admin` implies `read-status`; `*` stands for every
/// plugin.
pub fn satisfies(grants: &BTreeSet<Grant>, need: &Need) -> bool {
    let has = |g: &Grant| -> bool {
        let any = |p: &str, wild: Grant| grants.contains(g) || (p != "*" && grants.contains(&wild));
        match g {
            Grant::Query(p) => any(p, Grant::Query("*".into())),
            Grant::Command(p) => any(p, Grant::Command("*".into())),
            Grant::Deploy(p) => any(p, Grant::Deploy("*".into())),
            Grant::Admin => grants.contains(&Grant::Admin),
            Grant::ReadStatus => {
                grants.contains(&Grant::ReadStatus) || grants.contains(&Grant::Admin)
            }
        }
    };
    match need {
        Need::Open | Need::Token => true,
        Need::PeerTransport => false,
        Need::Grant(g) => has(g),
        Need::AnyOf(gs) => gs.iter().any(has),
        Need::SomeWrite => grants
            .iter()
            .any(|g| matches!(g, Grant::Command(_) | Grant::Deploy(_))),
        Need::SomeCommand => grants.iter().any(|g| matches!(g, Grant::Command(_))),
        Need::SomeRead => grants
            .iter()
            .any(|g| matches!(g, Grant::Query(_) | Grant::Command(_))),
    }
}

/// The check of one request against the table. `peer`: the connection is a cluster node's;
/// `bearer`: the token presented, if any. Expiry is judged by this node's clock.
pub fn check(
    table: &AuthTable,
    rule: &Rule,
    peer: bool,
    bearer: Option<&str>,
) -> Result<Caller, Denied> {
    let now_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64);
    check_at(table, rule, peer, bearer, now_ms)
}

/// [`check`] at the clock reading `now_ms`.
pub fn check_at(
    table: &AuthTable,
    rule: &Rule,
    peer: bool,
    bearer: Option<&str>,
    now_ms: u64,
) -> Result<Caller, Denied> {
    if !table.enabled() || matches!(rule.need, Need::Open | Need::PeerTransport) {
        return Ok(Caller::Anyone);
    }
    if peer && rule.peers {
        return Ok(Caller::Peer);
    }
    let Some(token) = bearer else {
        return Err(Denied::NoToken(rule.need.clone()));
    };
    let Some((id, record)) = table.token_by_hash(&super::token_hash(token)) else {
        return Err(Denied::BadToken(rule.need.clone()));
    };
    if let Some(at_ms) = record.expires_ms.filter(|at| *at <= now_ms) {
        return Err(Denied::Expired {
            token_id: id.to_string(),
            at_ms,
        });
    }
    let caller = Caller::User {
        name: record.user.clone(),
        token_id: id.to_string(),
    };
    if satisfies(&table.grants_of(&record.user), &rule.need) {
        Ok(caller)
    } else {
        Err(Denied::Missing {
            user: record.user.clone(),
            need: rule.need.clone(),
        })
    }
}
