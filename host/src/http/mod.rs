//! The HTTP server: the client API (`docs/http-api.md`), deploys and blobs (`deploy`), and
//! the receiving end of the peer transport (`peer`; the sending end is [`crate::peer`],
//! design §1).

mod auth;
mod backup;
pub mod blob_gc;
pub mod blobs;
pub mod dashboard;
pub mod deploy;
pub mod dry_run;
mod limits;
mod listen;
pub mod peer;
pub mod plugins;

use std::convert::Infallible;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper::header::{CONTENT_LENGTH, CONTENT_TYPE, HeaderValue, LOCATION, RETRY_AFTER};
use hyper::{Method, Request, Response, StatusCode};
use keel_raft::{ClientSerial, Payload, ReadMode, Role};
use keel_storage::{StateView, Storage};
use tokio::net::TcpListener;
use tokio::sync::oneshot;

use crate::blobs::parse_hex;
use crate::driver::{CommandReply, Input, MemberChange, MemberReply, NodeHandle, ReadRefused};
use crate::state;
pub(crate) use limits::{MAX_JSON_BODY, read_body};

/// Response body type: a whole buffer or a stream (server-sent events).
pub type Body = BoxBody<Bytes, Infallible>;

/// Serves clients and peers until the listener fails (over TLS when the process has a TLS
/// setup, `crate::tls`).
pub async fn serve(listener: TcpListener, node: NodeHandle) -> std::io::Result<()> {
    listen::serve(listener, node).await
}

async fn route(node: NodeHandle, req: Request<Incoming>) -> Response<Body> {
    let path = req.uri().path().to_string();
    let parts: Vec<&str> = path.trim_matches('/').split('/').collect();
    // Authentication and roles (issue #13) before any body is read.
    let caller = match auth::gate(&node, &req, &parts).await {
        Ok(caller) => caller,
        Err(refused) => {
            node.metrics.http(refused.status().as_u16());
            return refused;
        }
    };
    let response = match (req.method(), parts.as_slice()) {
        (&Method::POST, ["v1", "raft"]) => peer::peer_messages(&node, req).await,
        (&Method::POST, ["v1", "raft", "stream"]) => peer::peer_stream(&node, req).await,
        (&Method::POST, ["v1", "raft", "snapshot"]) => peer::peer_snapshot(&node, req).await,
        (&Method::GET, ["v1", "snapshot"]) => backup::save(&node).await,
        (&Method::POST, ["v1", "plugins", plugin, "commands"]) => {
            let plugin = plugin.to_string();
            command(&node, req, plugin, &caller).await
        }
        (&Method::POST, ["v1", "plugins", plugin, "query"]) => {
            let plugin = plugin.to_string();
            query(&node, req, plugin, &caller).await
        }
        (&Method::POST, ["v1", "sessions"]) => open_session(&node, &path, &caller).await,
        (_, ["v1", "auth", ..]) => auth::route(&node, req, &caller, &parts).await,
        (&Method::GET, ["v1", "plugins"]) => plugins::list(&node).await,
        (&Method::GET, ["v1", "plugins", name]) => plugins::show(&node, name).await,
        (&Method::POST, ["v1", "plugins", name, "rollback"]) => {
            let name = name.to_string();
            plugins::rollback(&node, req, &name, &path).await
        }
        (&Method::DELETE, ["v1", "plugins", name]) => {
            let drop_state = req
                .uri()
                .query()
                .is_some_and(|q| q.split('&').any(|kv| kv == "drop_state=true"));
            // A follower redirects to the leader with the query string kept.
            let target = req
                .uri()
                .path_and_query()
                .map_or(path.as_str(), |p| p.as_str());
            plugins::undeploy(&node, name, drop_state, target).await
        }
        (&Method::POST, ["v1", "plugins", name, "dry-run"]) => {
            let name = name.to_string();
            dry_run::dry_run(&node, req, &name).await
        }
        (&Method::PUT, ["v1", "plugins", name]) => {
            let name = name.to_string();
            deploy::deploy(&node, req, &name, &path).await
        }
        (&Method::PUT, ["v1", "blobs"]) => {
            let streamed = req
                .headers()
                .get(blobs::KIND_HEADER)
                .is_some_and(|v| v.as_bytes() == b"data");
            if streamed {
                blobs::put_streamed(&node, req).await
            } else {
                blobs::upload(&node, req).await
            }
        }
        (&Method::PUT, ["v1", "blobs", hash]) => {
            let data = req
                .headers()
                .get(blobs::KIND_HEADER)
                .is_some_and(|v| v.as_bytes() == b"data");
            match (parse_hex(hash), data) {
                (Some(hash), true) => blobs::put_data(&node, req, hash).await,
                (_, false) => {
                    let hash = hash.to_string();
                    deploy::put_blob(&node, req, &hash).await
                }
                (None, true) => error(StatusCode::BAD_REQUEST, "a blob is named by 64 hex digits"),
            }
        }
        (&Method::GET, ["v1", "blobs", hash]) => blobs::get(&node, &req, hash, false).await,
        (&Method::HEAD, ["v1", "blobs", hash]) => blobs::get(&node, &req, hash, true).await,
        (&Method::GET, ["v1", "status"]) => {
            let status = node
                .status
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .clone();
            json(StatusCode::OK, &status)
        }
        (&Method::GET, ["v1", "state-hash"]) => state_hash(&node).await,
        (&Method::GET, ["v1", "events"]) => events(&node),
        (&Method::POST, ["v1", "admin", "transfer-leadership", to]) => match to.parse() {
            Ok(to) => {
                if let Err(e) = node.submit(Input::Transfer(to)) {
                    return retry_later(&e.to_string());
                }
                json(
                    StatusCode::ACCEPTED,
                    &serde_json::json!({"transfer_to": to}),
                )
            }
            Err(_) => error(StatusCode::BAD_REQUEST, "node id must be a number"),
        },
        (&Method::POST, ["v1", "admin", "members"]) => add_member(&node, req).await,
        (&Method::POST, ["v1", "admin", "members", id, "promote"]) => match id.parse() {
            Ok(id) => change_members(&node, MemberChange::Promote(id), &path).await,
            Err(_) => error(StatusCode::BAD_REQUEST, "node id must be a number"),
        },
        (&Method::DELETE, ["v1", "admin", "members", id]) => match id.parse() {
            Ok(id) => change_members(&node, MemberChange::Remove(id), &path).await,
            Err(_) => error(StatusCode::BAD_REQUEST, "node id must be a number"),
        },
        (&Method::GET, ["healthz"]) => text(StatusCode::OK, "ok\n"),
        (&Method::GET, ["metrics"]) => {
            let mut r = text(StatusCode::OK, &node.metrics.render());
            r.headers_mut().insert(
                CONTENT_TYPE,
                HeaderValue::from_static(
                    "application/openmetrics-text; version=1.0.0; charset=utf-8",
                ),
            );
            r
        }
        (&Method::GET, [""] | ["dashboard.js" | "dashboard.css"] | ["v1", "cluster"]) => {
            dashboard::serve(&node, &path).await
        }
        _ => error(StatusCode::NOT_FOUND, "no such endpoint"),
    };
    node.metrics.http(response.status().as_u16());
    response
}

// ------------------------------------------------------------------------- bodies

pub(crate) fn full(
    status: StatusCode,
    content_type: &'static str,
    body: impl Into<Bytes>,
) -> Response<Body> {
    let mut r = Response::new(Full::new(body.into()).boxed());
    *r.status_mut() = status;
    r.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
    r
}

fn text(status: StatusCode, body: &str) -> Response<Body> {
    full(status, "text/plain; charset=utf-8", body.to_string())
}

pub(crate) fn json(status: StatusCode, value: &impl serde::Serialize) -> Response<Body> {
    full(
        status,
        "application/json",
        serde_json::to_vec(value).unwrap_or_default(),
    )
}

pub(crate) fn error(status: StatusCode, message: &str) -> Response<Body> {
    json(status, &serde_json::json!({ "error": message }))
}

/// 504: not applied in time; it may still be (retry with the same serial to find out).
fn outcome_unknown() -> Response<Body> {
    json(
        StatusCode::GATEWAY_TIMEOUT,
        &serde_json::json!({"error": "timeout", "outcome": "unknown"}),
    )
}

pub(crate) fn retry_later(message: &str) -> Response<Body> {
    let mut r = error(StatusCode::SERVICE_UNAVAILABLE, message);
    r.headers_mut()
        .insert(RETRY_AFTER, HeaderValue::from_static("1"));
    r
}

fn redirect(node: &NodeHandle, leader: Option<u64>, path_and_query: &str) -> Response<Body> {
    let url = leader.and_then(|l| {
        let status = node.status.lock().unwrap_or_else(|e| e.into_inner());
        status
            .members
            .get(&l)
            .cloned()
            .or_else(|| node.config.peers.get(&l).cloned())
    });
    match url.and_then(|u| HeaderValue::from_str(&format!("{u}{path_and_query}")).ok()) {
        Some(location) => {
            let mut r = error(StatusCode::TEMPORARY_REDIRECT, "not the leader");
            r.headers_mut().insert(LOCATION, location);
            r
        }
        None => retry_later("no leader known yet"),
    }
}

/// 404 only when this node has applied its whole log: until then the plugin may be deployed
/// by an entry it has not applied yet (a new leader catching up, a slow plugin call ahead
/// of it), so the client retries. Not the commit index: after a restart it starts at the
/// applied index and lags entries that were committed before the restart.
fn unknown_plugin(node: &NodeHandle, plugin: &str) -> Response<Body> {
    let (applied, last) = {
        let s = node.status.lock().unwrap_or_else(|e| e.into_inner());
        (s.applied_index, s.last_log_index)
    };
    if applied < last {
        return retry_later(&format!(
            "plugin {plugin:?} is not active here yet; applying the log"
        ));
    }
    error(StatusCode::NOT_FOUND, &format!("unknown plugin {plugin:?}"))
}

/// A request refused before it reaches the node, with the status it gets.
#[derive(Debug)]
pub(crate) enum Refusal {
    /// 400.
    BadRequest(String),
    /// 413, with the limit and the setting that sets it.
    TooLarge(usize, &'static str),
    /// 408: the body stopped arriving (`body_timeout_ms`).
    Stalled(Duration),
}

impl Refusal {
    pub(crate) fn response(self) -> Response<Body> {
        match self {
            Refusal::BadRequest(m) => error(StatusCode::BAD_REQUEST, &m),
            Refusal::TooLarge(max, limit) => error(
                StatusCode::PAYLOAD_TOO_LARGE,
                &format!("body larger than {max} bytes ({limit})"),
            ),
            Refusal::Stalled(d) => error(
                StatusCode::REQUEST_TIMEOUT,
                &format!(
                    "no byte of the body for {} ms (body_timeout_ms)",
                    d.as_millis()
                ),
            ),
        }
    }
}

pub(crate) fn header_u64(req: &Request<Incoming>, name: &str) -> Result<Option<u64>, Refusal> {
    match req.headers().get(name) {
        None => Ok(None),
        Some(v) => parse_u64(v.as_bytes())
            .map(Some)
            .ok_or_else(|| Refusal::BadRequest(format!("{name} must be an unsigned integer"))),
    }
}

/// A header value that holds an unsigned integer (`Keel-Client-Id`, `Keel-Serial`,
/// `Keel-Timeout-Ms`, `keel-snapshot-offset`, `Content-Length`), spaces around it allowed.
pub fn parse_u64(value: &[u8]) -> Option<u64> {
    std::str::from_utf8(value).ok()?.trim().parse().ok()
}

// ------------------------------------------------------------------------- clients

async fn command(
    node: &NodeHandle,
    req: Request<Incoming>,
    plugin: String,
    caller: &crate::auth::Caller,
) -> Response<Body> {
    let path = req
        .uri()
        .path_and_query()
        .map(|p| p.as_str().to_string())
        .unwrap_or_default();
    let (client_id, serial, timeout_ms) = match (
        header_u64(&req, "keel-client-id"),
        header_u64(&req, "keel-serial"),
        header_u64(&req, "keel-timeout-ms"),
    ) {
        (Ok(c), Ok(s), Ok(t)) => (c, s, t.unwrap_or(node.config.default_timeout_ms)),
        (Err(r), _, _) | (_, Err(r), _) | (_, _, Err(r)) => return r.response(),
    };
    let client = match (client_id, serial) {
        (Some(_), Some(0)) => {
            return error(StatusCode::BAD_REQUEST, "Keel-Serial starts at 1");
        }
        (Some(client_id), Some(serial)) => Some(ClientSerial { client_id, serial }),
        (None, None) => None,
        _ => {
            return error(
                StatusCode::BAD_REQUEST,
                "Keel-Client-Id and Keel-Serial go together",
            );
        }
    };
    if let Some(elsewhere) = not_leader(node, &path) {
        return elsewhere;
    }
    if let Some(c) = client
        && let Err(refused) = auth::session_owned(node, caller, c.client_id).await
    {
        return refused;
    }
    if node.registry.get(&plugin).is_none() {
        return unknown_plugin(node, &plugin);
    }
    let attach = req
        .headers()
        .get("keel-attach")
        .map(|v| v.to_str().map(str::to_owned));
    let attach = match attach {
        Some(Err(_)) => return error(StatusCode::BAD_REQUEST, "Keel-Attach is not ASCII"),
        Some(Ok(a)) => Some(a),
        None => None,
    };
    // Design §6: a body larger than `ref_threshold_bytes` goes by reference, streamed to a
    // majority of voters first (up to `max_blob_bytes`); the entry holds its hash.
    let declared = header_u64(&req, CONTENT_LENGTH.as_str()).ok().flatten();
    if let Some(n) = declared.filter(|&n| n > node.config.max_blob_bytes) {
        return error(
            StatusCode::PAYLOAD_TOO_LARGE,
            &format!(
                "a {n}-byte command; the limit is {} (max_blob_bytes)",
                node.config.max_blob_bytes
            ),
        );
    }
    let payload = if declared.is_some_and(|n| n > node.config.ref_threshold_bytes) {
        match blobs::store_on_majority(node, req.into_body()).await {
            Ok((sha256, len)) => Payload::Ref { sha256, len },
            Err(r) => return r,
        }
    } else {
        match read_body(
            node,
            req.into_body(),
            node.config.max_body_bytes,
            "max_body_bytes",
        )
        .await
        {
            Ok(b) if b.is_empty() => return error(StatusCode::BAD_REQUEST, "empty command"),
            Ok(b) if b.len() as u64 > node.config.ref_threshold_bytes => {
                // Sent without a length: in memory already (bounded by max_body_bytes).
                let stored = node.blobs.store(&b);
                match stored {
                    Ok(sha256) => match blobs::place(node, sha256, b.len() as u64).await {
                        (held, voters, _) if held * 2 > voters => Payload::Ref {
                            sha256,
                            len: b.len() as u64,
                        },
                        (held, voters, failures) => {
                            return retry_later(&format!(
                                "the command's body reached {held} of {voters} voters: {}",
                                failures.join("; ")
                            ));
                        }
                    },
                    Err(e) => return error(StatusCode::INSUFFICIENT_STORAGE, &e.to_string()),
                }
            }
            Ok(b) => Payload::Inline(b.to_vec()),
            Err(r) => return r.response(),
        }
    };
    if matches!(payload, Payload::Ref { len: 0, .. }) {
        return error(StatusCode::BAD_REQUEST, "empty command");
    }
    let payload = match blobs::attachments(node, attach.as_deref()).await {
        Ok(a) if a.is_empty() => payload,
        Ok(attachments) => Payload::Attached {
            body: Box::new(payload),
            attachments,
        },
        Err(r) => return r,
    };
    node.metrics.plugin_command(&plugin);
    let (tx, rx) = oneshot::channel();
    let input = Input::Propose {
        plugin,
        client,
        payload,
        reply: tx,
    };
    if let Err(e) = node.submit(input) {
        return retry_later(&e.to_string());
    }
    answer(node, rx, timeout_ms, &path).await
}

/// Where a request that only the leader may serve goes instead: 307 to the leader from a
/// follower, 503 during an election; `None` on the leader.
pub(crate) fn not_leader(node: &NodeHandle, path: &str) -> Option<Response<Body>> {
    let status = node.status.lock().unwrap_or_else(|e| e.into_inner());
    match status.role {
        Role::Leader => None,
        Role::Follower => {
            let leader = status.leader_id;
            drop(status);
            Some(redirect(node, leader, path))
        }
        _ => Some(retry_later("election in progress")),
    }
}

/// `POST /v1/sessions`: a new client session (thesis §6.3), answered once applied with
/// `{"client_id": N}` (N is the opening entry's index, unique for ever). A user's session
/// is then claimed for that user, through the log, before its id is answered.
async fn open_session(
    node: &NodeHandle,
    path: &str,
    caller: &crate::auth::Caller,
) -> Response<Body> {
    if let Some(elsewhere) = not_leader(node, path) {
        return elsewhere;
    }
    let (tx, rx) = oneshot::channel();
    if let Err(e) = node.submit(Input::OpenSession(tx)) {
        return retry_later(&e.to_string());
    }
    let opened = answer(node, rx, node.config.default_timeout_ms, path).await;
    let Some(user) = caller.user() else {
        return opened;
    };
    if opened.status() != StatusCode::OK {
        return opened;
    }
    let Ok(body) = opened.into_body().collect().await.map(|b| b.to_bytes());
    let client_id = serde_json::from_slice::<serde_json::Value>(&body)
        .ok()
        .and_then(|v| v["client_id"].as_u64());
    let Some(client_id) = client_id else {
        return error(StatusCode::INTERNAL_SERVER_ERROR, "a session without an id");
    };
    let claim = crate::auth::Op::ClaimSession {
        client_id,
        user: user.to_string(),
    };
    match auth::propose(node, &claim, path).await {
        Ok(_) => json(
            StatusCode::OK,
            &serde_json::json!({ "client_id": client_id }),
        ),
        Err(r) => r,
    }
}

/// The HTTP answer to a command (or session opening) once the driver replies.
pub(crate) async fn answer(
    node: &NodeHandle,
    rx: oneshot::Receiver<CommandReply>,
    timeout_ms: u64,
    path: &str,
) -> Response<Body> {
    match tokio::time::timeout(Duration::from_millis(timeout_ms), rx).await {
        Ok(Ok(CommandReply::Done {
            index,
            term,
            position,
            result,
        })) => {
            let mut r = match result {
                Ok(bytes) => full(StatusCode::OK, "application/octet-stream", bytes),
                Err(e) => json(
                    StatusCode::UNPROCESSABLE_ENTITY,
                    &serde_json::json!({ "error": e }),
                ),
            };
            let h = r.headers_mut();
            h.insert("keel-index", HeaderValue::from(index));
            h.insert("keel-term", HeaderValue::from(term));
            h.insert("keel-position", HeaderValue::from(position));
            r
        }
        Ok(Ok(CommandReply::NotLeader(leader))) => redirect(node, leader, path),
        Ok(Ok(CommandReply::Retry(reason))) => retry_later(&reason),
        Ok(Ok(CommandReply::OutcomeUnknown(detail))) => json(
            StatusCode::GATEWAY_TIMEOUT,
            &serde_json::json!({"error": "outcome_unknown", "outcome": "unknown", "detail": detail}),
        ),
        Ok(Ok(CommandReply::SessionUnknown(detail))) => json(
            StatusCode::GONE,
            &serde_json::json!({ "error": "session_unknown", "detail": detail }),
        ),
        Ok(Err(_)) => retry_later("node is stopping"),
        Err(_) => outcome_unknown(),
    }
}

/// The fuel a query may use on an async worker before it is run again on a blocking
/// thread with the plugin's whole budget: a few milliseconds of guest code at most, some
/// hundred times what a key lookup takes.
const INLINE_QUERY_FUEL: u64 = 2_000_000;

async fn query(
    node: &NodeHandle,
    req: Request<Incoming>,
    plugin: String,
    caller: &crate::auth::Caller,
) -> Response<Body> {
    let path = req
        .uri()
        .path_and_query()
        .map(|p| p.as_str().to_string())
        .unwrap_or_default();
    let consistency = req
        .uri()
        .query()
        .unwrap_or("")
        .split('&')
        .find_map(|kv| kv.strip_prefix("consistency="))
        .unwrap_or("linearizable")
        .to_string();
    let mode = match consistency.as_str() {
        "linearizable" => Some(ReadMode::ReadIndex),
        "lease" => Some(ReadMode::Lease),
        "stale" => None,
        other => {
            return error(
                StatusCode::BAD_REQUEST,
                &format!("consistency {other:?}: use linearizable, lease or stale"),
            );
        }
    };
    let Some(plugin_impl) = node.registry.get(&plugin) else {
        return unknown_plugin(node, &plugin);
    };
    let body = match read_body(
        node,
        req.into_body(),
        node.config.max_body_bytes,
        "max_body_bytes",
    )
    .await
    {
        Ok(b) => b,
        Err(r) => return r.response(),
    };
    if let Some(mode) = mode {
        // Thesis §6.4: confirm leadership (a follower asks its leader), then wait until the
        // local state machine has applied up to the read index.
        let (tx, rx) = oneshot::channel();
        if let Err(e) = node.submit(Input::Read { mode, reply: tx }) {
            return retry_later(&e.to_string());
        }
        match tokio::time::timeout(Duration::from_millis(node.config.default_timeout_ms), rx).await
        {
            Ok(Ok(Ok(_index))) => {
                // A token revoked at or before the read index is refused here too.
                let need = crate::auth::Need::Grant(crate::auth::Grant::Query(plugin.clone()));
                if let Some(refused) = auth::no_longer_allowed(node, caller, &need) {
                    return refused;
                }
            }
            Ok(Ok(Err(ReadRefused::NotLeader(leader)))) => return redirect(node, leader, &path),
            Ok(Ok(Err(ReadRefused::Retry))) | Ok(Err(_)) => {
                return retry_later("no leader to confirm the read");
            }
            Err(_) => {
                return json(
                    StatusCode::GATEWAY_TIMEOUT,
                    &serde_json::json!({"error": "timeout confirming the read"}),
                );
            }
        }
    }
    // Waits for a free slot rather than failing: the pool's remaining instances belong to
    // the apply path.
    let Ok(_slot) = node.query_slots.clone().acquire_owned().await else {
        return retry_later("node is stopping");
    };
    // Most queries take microseconds: run them here, with a slice of the fuel budget (blob
    // calls, which may hash a whole blob, count as beyond it), which spares the hand-off to
    // a blocking thread and back — under read load, those wake-ups were a third of the
    // leader's CPU.
    // A query that needs more runs again below, off the async workers, with everything: a
    // query writes nothing, so running it twice answers as running it once.
    let inline = node.applied_view().map(|(view, unflushed)| {
        let kv = state::query_view(Box::new(view), unflushed, plugin.clone());
        plugin_impl.query_within(kv, &body, INLINE_QUERY_FUEL)
    });
    match inline {
        Ok(Ok(Some(bytes))) => return full(StatusCode::OK, "application/octet-stream", bytes),
        Ok(Err(e)) if e.is_deterministic() => {
            return error(StatusCode::UNPROCESSABLE_ENTITY, &e.to_string());
        }
        // Out of its slice, a blob to read, or this node could not run it: again, fully.
        _ => {}
    }
    let handle = node.clone();
    let answer = tokio::task::spawn_blocking(move || {
        let (view, unflushed) = handle.applied_view().map_err(|e| (false, e.to_string()))?;
        let kv = state::query_view_with_blobs(
            Box::new(view),
            unflushed,
            plugin,
            Some(handle.blobs.clone()),
        );
        plugin_impl
            .query(kv, &body)
            .map_err(|e| (e.is_deterministic(), e.to_string()))
    })
    .await;
    match answer {
        Ok(Ok(bytes)) => full(StatusCode::OK, "application/octet-stream", bytes),
        // The plugin refused the query: its answer, the same on every node.
        Ok(Err((true, e))) => error(StatusCode::UNPROCESSABLE_ENTITY, &e),
        // This node could not run it (resources, storage): not the plugin's fault.
        Ok(Err((false, e))) => retry_later(&e),
        Err(e) => error(StatusCode::INTERNAL_SERVER_ERROR, &e.to_string()),
    }
}

/// `POST /v1/admin/members` with `{"id": N, "url": "http://…"}`: adds a learner.
async fn add_member(node: &NodeHandle, req: Request<Incoming>) -> Response<Body> {
    #[derive(serde::Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Add {
        id: u64,
        url: String,
    }
    let path = req.uri().path().to_string();
    let body = match read_body(node, req.into_body(), MAX_JSON_BODY, "JSON bodies").await {
        Ok(b) => b,
        Err(r) => return r.response(),
    };
    let scheme = member_scheme(node.config.tls.is_some());
    match serde_json::from_slice::<Add>(&body) {
        Ok(Add { id, url }) if id > 0 && member_url_fits(&url, scheme) => {
            change_members(node, MemberChange::AddLearner { id, url }, &path).await
        }
        Ok(_) => error(
            StatusCode::BAD_REQUEST,
            &format!(
                "id must be positive and url a {scheme}://HOST:PORT URL (this cluster's peers speak {scheme})"
            ),
        ),
        Err(e) => error(
            StatusCode::BAD_REQUEST,
            &format!("expected {{\"id\": N, \"url\": \"http://…\"}}: {e}"),
        ),
    }
}

/// The scheme members of this cluster are reached by: `https` when it runs TLS.
fn member_scheme(tls: bool) -> &'static str {
    if tls { "https" } else { "http" }
}

/// A new member's URL: the cluster's scheme and a host (a TLS cluster's members are
/// `https://`; a plaintext member in it could never be reached).
fn member_url_fits(url: &str, scheme: &str) -> bool {
    url.strip_prefix(scheme)
        .and_then(|rest| rest.strip_prefix("://"))
        .is_some_and(|host| !host.is_empty() && !host.starts_with('/'))
}

/// Proposes a membership change on the leader and answers once it is applied.
async fn change_members(node: &NodeHandle, change: MemberChange, path: &str) -> Response<Body> {
    let (tx, rx) = oneshot::channel();
    if let Err(e) = node.submit(Input::Members { change, reply: tx }) {
        return retry_later(&e.to_string());
    }
    let timeout = Duration::from_millis(node.config.default_timeout_ms);
    match tokio::time::timeout(timeout, rx).await {
        Ok(Ok(MemberReply::Done { index, config })) => json(
            StatusCode::OK,
            &serde_json::json!({
                "index": index,
                "voters": config.voters,
                "learners": config.learners,
                "members": config.addresses,
            }),
        ),
        Ok(Ok(MemberReply::NotLeader(leader))) => redirect(node, leader, path),
        Ok(Ok(MemberReply::Retry(why))) => retry_later(&why),
        Ok(Ok(MemberReply::Refused(why))) => error(StatusCode::CONFLICT, &why),
        Ok(Err(_)) => retry_later("node is stopping"),
        Err(_) => outcome_unknown(),
    }
}

/// The hash of the applied state as stored, after writing through what is not yet.
async fn state_hash(node: &NodeHandle) -> Response<Body> {
    node.flush().await;
    let storage = node.storage.clone();
    let result = tokio::task::spawn_blocking(move || {
        let view = storage.view()?;
        let index = view.applied().last_applied.index;
        state::state_hash(&view).map(|h| (index, h))
    })
    .await;
    match result {
        Ok(Ok((index, hash))) => json(
            StatusCode::OK,
            &serde_json::json!({"applied_index": index, "hash": hash}),
        ),
        Ok(Err(e)) => error(StatusCode::INTERNAL_SERVER_ERROR, &e.to_string()),
        Err(e) => error(StatusCode::INTERNAL_SERVER_ERROR, &e.to_string()),
    }
}

/// Server-sent events: one `data:` line of JSON per role, term, leader or config change.
fn events(node: &NodeHandle) -> Response<Body> {
    let rx = node.events.subscribe();
    let first = serde_json::to_string(&*node.status.lock().unwrap_or_else(|e| e.into_inner()))
        .unwrap_or_default();
    let start = futures_util::stream::once(async move {
        Ok(Frame::data(Bytes::from(format!("data: {first}\n\n"))))
    });
    let rest = futures_util::stream::unfold(rx, |mut rx| async move {
        loop {
            match rx.recv().await {
                Ok(s) => return Some((Ok(Frame::data(Bytes::from(format!("data: {s}\n\n")))), rx)),
                Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => continue,
                Err(tokio::sync::broadcast::error::RecvError::Closed) => return None,
            }
        }
    });
    use futures_util::StreamExt;
    let body = BodyExt::boxed(StreamBody::new(start.chain(rest)));
    let mut r = Response::new(body);
    r.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("text/event-stream"));
    r
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_new_members_url_speaks_the_clusters_scheme() {
        assert!(member_url_fits(
            "http://10.0.0.4:7001",
            member_scheme(false)
        ));
        assert!(!member_url_fits(
            "https://10.0.0.4:7001",
            member_scheme(false)
        ));
        assert!(member_url_fits(
            "https://node-4.example:7001",
            member_scheme(true)
        ));
        assert!(!member_url_fits(
            "http://node-4.example:7001",
            member_scheme(true)
        ));
        assert!(!member_url_fits("https://", "https"));
        assert!(!member_url_fits("ftp://x", "http"));
    }
}
