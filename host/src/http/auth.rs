//! Client authentication over HTTP (issue #13; docs/security.md): the check every request
//! passes before its body is read, and the `/v1/auth/…` endpoints that change the table
//! through the log.
//!
//! Tokens are read from `Authorization: Bearer …` and never logged: a refusal names the
//! token's id (`keel_ID_…`) at most.

use std::time::Duration;

use hyper::header::{AUTHORIZATION, HeaderValue, WWW_AUTHENTICATE};
use hyper::{Method, Request, Response, StatusCode};
use keel_raft::{Payload, ReadMode};
use tokio::sync::oneshot;

use super::{Body, error, json, not_leader, redirect, retry_later};
use crate::auth::{
    AUTH_PLUGIN, Caller, Denied, Grant, Need, Op, bearer, check, init_op, new_token, rule,
    satisfies, token_id_of,
};
use crate::driver::{CommandReply, Input, NodeHandle};
use crate::state::SYSTEM_NAMESPACE;

/// Whether the request comes from a cluster node: a TLS connection with a node
/// certificate, or, on a plaintext connection, the cluster id in `keel-cluster` (the same
/// proof the peer transport accepts there).
fn from_peer<B>(node: &NodeHandle, req: &Request<B>) -> bool {
    let transport = req.extensions().get::<crate::tls::Transport>().copied();
    match transport {
        Some(t) if t.tls => t.peer.is_some(),
        _ => req
            .headers()
            .get(super::blobs::CLUSTER_HEADER)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|c| c.eq_ignore_ascii_case(&node.config.cluster_id)),
    }
}

/// The check of one request, before its body is read. A token this node does not know, or
/// a permission its user lacks here, may come with an entry this node has not applied yet
/// (a token just created, a role just granted): it catches up to the leader's commit index
/// (a read barrier) and looks again before answering 401 or 403.
pub(super) async fn gate<B>(
    node: &NodeHandle,
    req: &Request<B>,
    parts: &[&str],
) -> Result<Caller, Response<Body>> {
    let peer_upload = req
        .headers()
        .get(super::blobs::KIND_HEADER)
        .is_some_and(|v| v.as_bytes() == b"data");
    let rule = rule(req.method(), parts, peer_upload, node.config.metrics_auth);
    let peer = from_peer(node, req);
    let header = req
        .headers()
        .get(AUTHORIZATION)
        .and_then(|v| v.to_str().ok());
    let token = header.and_then(bearer);
    let first = check(&node.registry.auth(), &rule, peer, token);
    let outcome = match first {
        Err(Denied::BadToken(_) | Denied::Missing { .. }) if barrier(node).await => {
            check(&node.registry.auth(), &rule, peer, token)
        }
        other => other,
    };
    outcome.map_err(|denied| {
        node.metrics.auth_refused.inc();
        let id = token.and_then(token_id_of).unwrap_or("-");
        tracing::info!(target: "keel::auth", method = %req.method(), path = req.uri().path(), token = id, "refused: {denied:?}");
        refusal(denied, header.is_some() && token.is_none())
    })
}

/// 401 or 403 with a JSON body naming what is missing.
fn refusal(denied: Denied, other_scheme: bool) -> Response<Body> {
    let (status, body) = match denied {
        Denied::NoToken(need) => (
            StatusCode::UNAUTHORIZED,
            serde_json::json!({
                "error": "unauthenticated",
                "detail": if other_scheme {
                    "this cluster takes Authorization: Bearer TOKEN only"
                } else {
                    "this cluster requires a token: Authorization: Bearer TOKEN"
                },
                "needs": need.to_string(),
            }),
        ),
        Denied::BadToken(need) => (
            StatusCode::UNAUTHORIZED,
            serde_json::json!({
                "error": "unauthenticated",
                "detail": "unknown token: never issued, revoked, or its user removed",
                "needs": need.to_string(),
            }),
        ),
        Denied::Expired { token_id, at_ms } => (
            StatusCode::UNAUTHORIZED,
            serde_json::json!({
                "error": "unauthenticated",
                "detail": format!("token {token_id} expired at {at_ms} ms since the epoch; create a new one"),
                "token_id": token_id,
                "expired_ms": at_ms,
            }),
        ),
        Denied::Missing { user, need } => (
            StatusCode::FORBIDDEN,
            serde_json::json!({
                "error": "forbidden",
                "detail": format!("user {user} lacks {need}"),
                "user": user,
                "missing": need.to_string(),
            }),
        ),
    };
    let mut r = json(status, &body);
    if status == StatusCode::UNAUTHORIZED {
        r.headers_mut().insert(
            WWW_AUTHENTICATE,
            HeaderValue::from_static("Bearer realm=\"keel\""),
        );
    }
    r
}

/// Catches this node up to the leader's commit index; whether it did within 2 s.
async fn barrier(node: &NodeHandle) -> bool {
    let (tx, rx) = oneshot::channel();
    if node
        .submit(Input::Read {
            mode: ReadMode::ReadIndex,
            reply: tx,
        })
        .is_err()
    {
        return false;
    }
    matches!(
        tokio::time::timeout(Duration::from_secs(2), rx).await,
        Ok(Ok(Ok(_)))
    )
}

/// After a read barrier: the refusal, if the caller may no longer do `need` as of the
/// index the read waited for (a token revoked by then is refused here too, on every node).
pub(super) fn no_longer_allowed(
    node: &NodeHandle,
    caller: &Caller,
    need: &Need,
) -> Option<Response<Body>> {
    let table = node.registry.auth();
    let Caller::User { name, token_id } = caller else {
        // Let in because authentication was off here: it may have come on by the read index
        // (an init this node had not applied yet).
        let now_on = *caller == Caller::Anyone && table.enabled();
        return now_on.then(|| {
            node.metrics.auth_refused.inc();
            refusal(Denied::NoToken(need.clone()), false)
        });
    };
    let denied = if table.tokens.get(token_id).is_none_or(|t| &t.user != name) {
        Denied::BadToken(need.clone())
    } else if !satisfies(&table.grants_of(name), need) {
        Denied::Missing {
            user: name.clone(),
            need: need.clone(),
        }
    } else {
        return None;
    };
    node.metrics.auth_refused.inc();
    Some(refusal(denied, false))
}

/// A command naming session `client_id` comes from the session's owner (issue #13:
/// exactly-once sessions belong to the user who opened them).
pub(super) async fn session_owned(
    node: &NodeHandle,
    caller: &Caller,
    client_id: u64,
) -> Result<(), Response<Body>> {
    let Some(user) = caller.user() else {
        return Ok(());
    };
    let handle = node.clone();
    let owner = tokio::task::spawn_blocking(move || {
        let (view, unflushed) = handle.applied_view()?;
        let system = crate::state::query_view(Box::new(view), unflushed, SYSTEM_NAMESPACE.into());
        crate::state::session_owner(&system, client_id)
    })
    .await;
    match owner {
        Ok(Ok(Some(owner))) if owner == user => Ok(()),
        Ok(Ok(Some(_))) => Err(json(
            StatusCode::FORBIDDEN,
            &serde_json::json!({"error": "forbidden", "detail": format!("session {client_id} belongs to another user"), "user": user}),
        )),
        Ok(Ok(None)) => {
            let caught_up = {
                let s = node.status.lock().unwrap_or_else(|e| e.into_inner());
                s.applied_index >= s.last_log_index
            };
            if !caught_up {
                // Its claim may be in an entry not applied here yet (a new leader).
                return Err(retry_later("this node is still applying the log"));
            }
            Err(json(
                StatusCode::FORBIDDEN,
                &serde_json::json!({"error": "forbidden", "detail": format!("session {client_id} belongs to no user (opened before authentication was on, or never claimed): open a new session"), "user": user}),
            ))
        }
        Ok(Err(e)) => Err(retry_later(&e.to_string())),
        Err(e) => Err(error(StatusCode::INTERNAL_SERVER_ERROR, &e.to_string())),
    }
}

/// Proposes one auth change on the leader and waits for it to be applied here: the
/// change's answer (200), or why it was refused (409).
pub(super) async fn propose(
    node: &NodeHandle,
    op: &Op,
    path: &str,
) -> Result<serde_json::Value, Response<Body>> {
    if let Some(elsewhere) = not_leader(node, path) {
        return Err(elsewhere);
    }
    let payload = serde_json::to_vec(op)
        .map_err(|e| error(StatusCode::INTERNAL_SERVER_ERROR, &e.to_string()))?;
    let (tx, rx) = oneshot::channel();
    let input = Input::Propose {
        plugin: AUTH_PLUGIN.to_string(),
        client: None,
        payload: Payload::Inline(payload),
        reply: tx,
    };
    node.submit(input)
        .map_err(|e| retry_later(&e.to_string()))?;
    let timeout = Duration::from_millis(node.config.default_timeout_ms);
    match tokio::time::timeout(timeout, rx).await {
        Ok(Ok(CommandReply::Done {
            result: Ok(bytes),
            index,
            ..
        })) => {
            let mut v: serde_json::Value = serde_json::from_slice(&bytes).unwrap_or_default();
            v["index"] = index.into();
            Ok(v)
        }
        Ok(Ok(CommandReply::Done {
            result: Err(why), ..
        })) => Err(error(StatusCode::CONFLICT, &why)),
        Ok(Ok(CommandReply::NotLeader(leader))) => Err(redirect(node, leader, path)),
        Ok(Ok(CommandReply::Retry(why))) => Err(retry_later(&why)),
        Ok(Ok(CommandReply::OutcomeUnknown(detail) | CommandReply::SessionUnknown(detail))) => {
            Err(json(
                StatusCode::GATEWAY_TIMEOUT,
                &serde_json::json!({"error": "outcome_unknown", "detail": detail}),
            ))
        }
        Ok(Err(_)) => Err(retry_later("node is stopping")),
        Err(_) => Err(json(
            StatusCode::GATEWAY_TIMEOUT,
            &serde_json::json!({"error": "timeout", "outcome": "unknown"}),
        )),
    }
}

/// The `/v1/auth/…` routes (the gate has run: admin for all but `init` and `whoami`).
pub(super) async fn route(
    node: &NodeHandle,
    req: Request<hyper::body::Incoming>,
    caller: &Caller,
    parts: &[&str],
) -> Response<Body> {
    let path = req.uri().path().to_string();
    let method = req.method().clone();
    let body =
        match super::read_body(node, req.into_body(), super::MAX_JSON_BODY, "JSON bodies").await {
            Ok(b) => b,
            Err(r) => return r.response(),
        };
    let table = node.registry.auth();
    let op = match (&method, parts) {
        (&Method::GET, ["v1", "auth"]) => return json(StatusCode::OK, &table.describe()),
        (&Method::GET, ["v1", "auth", "whoami"]) => return whoami(node, caller),
        (&Method::POST, ["v1", "auth", "init"]) => return init(node, &body, &path).await,
        (&Method::POST, ["v1", "auth", "users"]) => {
            #[derive(serde::Deserialize)]
            #[serde(deny_unknown_fields)]
            struct Add {
                user: String,
                #[serde(default)]
                roles: Vec<String>,
            }
            match serde_json::from_slice::<Add>(&body) {
                Ok(Add { user, roles }) => Op::UserAdd { user, roles },
                Err(e) => {
                    return bad(&format!(
                        "expected {{\"user\": NAME, \"roles\": [ROLE…]}}: {e}"
                    ));
                }
            }
        }
        (&Method::DELETE, ["v1", "auth", "users", user]) => Op::UserRemove {
            user: user.to_string(),
        },
        (&Method::PUT, ["v1", "auth", "users", user, "roles", role]) => Op::UserGrant {
            user: user.to_string(),
            role: role.to_string(),
        },
        (&Method::DELETE, ["v1", "auth", "users", user, "roles", role]) => Op::UserRevoke {
            user: user.to_string(),
            role: role.to_string(),
        },
        (&Method::PUT | &Method::DELETE, ["v1", "auth", "roles", role, "grants", grant]) => {
            let grant = match Grant::parse(grant) {
                Ok(g) => g,
                Err(e) => return bad(&e),
            };
            let role = role.to_string();
            if method == Method::PUT {
                Op::RoleGrant { role, grant }
            } else {
                Op::RoleRevoke { role, grant }
            }
        }
        (&Method::DELETE, ["v1", "auth", "roles", role]) => Op::RoleRemove {
            role: role.to_string(),
        },
        (&Method::POST, ["v1", "auth", "tokens"]) => return create_token(node, &body, &path).await,
        (&Method::DELETE, ["v1", "auth", "tokens", id]) => Op::TokenRevoke {
            token_id: id.to_string(),
        },
        _ => return error(StatusCode::NOT_FOUND, "no such endpoint"),
    };
    match propose(node, &op, &path).await {
        Ok(answer) => json(StatusCode::OK, &answer),
        Err(r) => r,
    }
}

fn bad(why: &str) -> Response<Body> {
    error(StatusCode::BAD_REQUEST, why)
}

fn whoami(node: &NodeHandle, caller: &Caller) -> Response<Body> {
    let table = node.registry.auth();
    match caller {
        Caller::User { name, token_id } => json(
            StatusCode::OK,
            &serde_json::json!({
                "user": name,
                "token_id": token_id,
                "roles": table.users.get(name),
                "grants": table.grants_of(name).iter().map(Grant::to_string).collect::<Vec<_>>(),
            }),
        ),
        _ => json(
            StatusCode::OK,
            &serde_json::json!({"user": null, "enabled": table.enabled()}),
        ),
    }
}

/// `POST /v1/auth/tokens` `{"user": U, "label": L, "ttl_ms": N}`: a new token for U (working
/// for N ms if given, else until revoked). The secret is made here, only its hash goes into
/// the log, and the answer is the one place it appears.
async fn create_token(node: &NodeHandle, body: &[u8], path: &str) -> Response<Body> {
    #[derive(serde::Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Create {
        user: String,
        #[serde(default)]
        label: String,
        #[serde(default)]
        ttl_ms: Option<u64>,
    }
    let Create {
        user,
        label,
        ttl_ms,
    } = match serde_json::from_slice(body) {
        Ok(c) => c,
        Err(e) => {
            return bad(&format!(
                "expected {{\"user\": NAME, \"label\": TEXT, \"ttl_ms\": N (optional)}}: {e}"
            ));
        }
    };
    let (token_id, token) = match new_token() {
        Ok(t) => t,
        Err(e) => {
            return error(
                StatusCode::INTERNAL_SERVER_ERROR,
                &format!("no randomness: {e}"),
            );
        }
    };
    let op = Op::TokenCreate {
        user,
        token_id,
        sha256: Op::hash_hex(&token),
        label,
        ttl_ms,
    };
    match propose(node, &op, path).await {
        Ok(mut answer) => {
            answer["token"] = token.into();
            json(StatusCode::OK, &answer)
        }
        Err(r) => r,
    }
}

/// `POST /v1/auth/init`: turns authentication on with a first user, `root`, holding every
/// permission, and its token. Refused (409) once the cluster has users. The body may name
/// the token by its hash (`{"token_id", "sha256"}`: a node started with
/// `--init-admin-token-file` made it); otherwise the token is made here and answered.
async fn init(node: &NodeHandle, body: &[u8], path: &str) -> Response<Body> {
    #[derive(serde::Deserialize, Default)]
    #[serde(deny_unknown_fields)]
    struct Init {
        token_id: Option<String>,
        sha256: Option<String>,
    }
    let given: Init = if body.is_empty() {
        Init::default()
    } else {
        match serde_json::from_slice(body) {
            Ok(i) => i,
            Err(e) => {
                return bad(&format!(
                    "expected {{}} or {{\"token_id\", \"sha256\"}}: {e}"
                ));
            }
        }
    };
    // Once on, authentication stays on (the last admin cannot be removed): answered here,
    // so that this open route cannot be used to write log entries.
    let table = node.registry.auth();
    if table.enabled() {
        let same = match (&given.token_id, &given.sha256) {
            (Some(id), Some(sha)) => table
                .tokens
                .get(id)
                .is_some_and(|t| t.sha256.eq_ignore_ascii_case(sha)),
            _ => false,
        };
        return if same {
            json(StatusCode::OK, &serde_json::json!({"already": true}))
        } else {
            error(
                StatusCode::CONFLICT,
                "auth is initialised already: this cluster has users",
            )
        };
    }
    let (op, token) = match given {
        Init {
            token_id: Some(token_id),
            sha256: Some(sha256),
        } => (init_op(token_id, sha256), None),
        Init {
            token_id: None,
            sha256: None,
        } => match new_token() {
            Ok((id, token)) => (init_op(id, Op::hash_hex(&token)), Some(token)),
            Err(e) => {
                return error(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    &format!("no randomness: {e}"),
                );
            }
        },
        _ => return bad("token_id and sha256 go together"),
    };
    match propose(node, &op, path).await {
        Ok(mut answer) => {
            if let Some(token) = token {
                answer["token"] = token.into();
            }
            json(StatusCode::OK, &answer)
        }
        Err(r) => r,
    }
}
