//! Deploying a plugin (design §6): `PUT /v1/plugins/{name}` on the leader, and the blob
//! endpoints peers use to pass plugin binaries around.
//!
//! The leader, in order: compiles the component (a bad one is refused before anything is
//! stored), stores the bytes durably, pushes them to every other member (each stores them
//! durably and compiles them into its artifact cache before answering), and only once a
//! majority of voters holds them proposes the `Deploy` record, which names the bytes by
//! SHA-256. So a committed deployment can always be fetched from a majority, and applying it
//! costs each node a cached load, not a compile. A node that still lacks the bytes when it
//! applies the record (it was down during the push, or joins later) fetches them from a peer
//! (`Blobs::get`).

use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::{Request, Response, StatusCode};
use keel_plugin::{Limits, PluginId};
use keel_raft::Deploy;
use tokio::sync::oneshot;

use crate::blobs::{hex, parse_hex};
use crate::driver::{Input, NodeHandle};
use crate::http::{Body, Refusal, answer, error, not_leader, read_body, retry_later};

/// Default fuel per apply of a deployed plugin (`Keel-Fuel` overrides).
pub const DEFAULT_FUEL: u64 = 100_000_000;
/// Default memory limit per instance (`Keel-Memory-Bytes` overrides).
pub const DEFAULT_MEMORY: u64 = 128 << 20;

/// `PUT /v1/plugins/{name}`: the body is the component.
pub async fn deploy(
    node: &NodeHandle,
    req: Request<Incoming>,
    name: &str,
    path: &str,
) -> Response<Body> {
    if let Some(elsewhere) = not_leader(node, path) {
        return elsewhere;
    }
    if !valid_name(name) {
        return error(
            StatusCode::BAD_REQUEST,
            "a plugin name is 1-64 of [a-z0-9_-], not starting with '_'",
        );
    }
    let defaults = Limits {
        fuel: DEFAULT_FUEL,
        memory_bytes: DEFAULT_MEMORY,
    };
    let limits = match requested_limits(&req, defaults) {
        Ok(l) => l,
        Err(r) => return r.response(),
    };
    let version = req
        .headers()
        .get("keel-version")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    // The plugin folder sends this: bytes already active are not deployed again, so a
    // restart, or the same file dropped into several nodes' folders, proposes nothing.
    let unless_active = req.headers().contains_key("keel-unless-active");
    let bytes = match read_component(node, req.into_body()).await {
        Ok(b) => b,
        Err(r) => return r.response(),
    };
    let sha256 = crate::blobs::sha256(&bytes);
    if unless_active
        && let Ok(rec) = super::plugins::record(node, name).await
        && let Some(active) = &rec.active
        && active.sha256 == sha256
        && (active.fuel_per_apply, active.memory_limit) == (limits.fuel, limits.memory_bytes)
        && version.as_ref().is_none_or(|v| *v == active.version)
    {
        let mut same = super::plugins::describe(name, &rec, 1);
        same["unchanged"] = serde_json::json!(true);
        return crate::http::json(StatusCode::OK, &same);
    }
    let version = version.unwrap_or_else(|| format!("sha-{}", &hex(&sha256)[..12]));

    // 1. Compile: the same engine on every node, so what fails here would fail everywhere.
    let runtime = node.runtime.clone();
    let (id, wasm) = (PluginId::new(name, version.clone()), bytes.clone());
    match tokio::task::spawn_blocking(move || runtime.load(id, &wasm, limits)).await {
        Ok(Ok(_)) => {}
        Ok(Err(e)) => return error(StatusCode::BAD_REQUEST, &e.to_string()),
        Err(e) => return error(StatusCode::INTERNAL_SERVER_ERROR, &e.to_string()),
    }
    // 2. Durable here.
    let blobs = node.blobs.clone();
    let wasm = bytes.clone();
    match tokio::task::spawn_blocking(move || blobs.store(&wasm)).await {
        Ok(Ok(_)) => {}
        Ok(Err(e)) => return error(StatusCode::INTERNAL_SERVER_ERROR, &format!("storing: {e}")),
        Err(e) => return error(StatusCode::INTERNAL_SERVER_ERROR, &e.to_string()),
    }
    // 3. Durable on a majority of voters (this node counts if it votes).
    let (members, voters, me) = {
        let s = node.status.lock().unwrap_or_else(|e| e.into_inner());
        (s.members.clone(), s.voters.clone(), s.node_id)
    };
    let pushes = members
        .iter()
        .filter(|(id, _)| **id != me)
        .map(|(id, url)| {
            let (id, url, bytes) = (*id, url.clone(), bytes.clone());
            let cluster = node.config.cluster_id.clone();
            async move { (id, push(&url, &sha256, bytes, &cluster, limits).await) }
        });
    let results = futures_util::future::join_all(pushes).await;
    let (held, voters, failures) = super::blobs::tally(results, &voters, me);
    if held * 2 <= voters {
        return retry_later(&format!(
            "the plugin reached {held} of {voters} voters, not a majority: {}",
            failures.join("; ")
        ));
    }
    // 4. Propose; answered once applied here.
    let (tx, rx) = oneshot::channel();
    let deploy = Deploy {
        plugin: name.to_owned(),
        version,
        sha256,
        fuel_per_apply: limits.fuel,
        memory_limit: limits.memory_bytes,
    };
    if let Err(e) = node.submit(Input::Deploy { deploy, reply: tx }) {
        return retry_later(&e.to_string());
    }
    answer(node, rx, node.config.default_timeout_ms, path).await
}

/// The limits a request asks for (`Keel-Fuel`, `Keel-Memory-Bytes`), each `default`'s when
/// absent.
pub(super) fn requested_limits(
    req: &Request<Incoming>,
    default: Limits,
) -> Result<Limits, Refusal> {
    Ok(Limits {
        fuel: header_number(req, "keel-fuel", default.fuel)?,
        memory_bytes: header_number(req, "keel-memory-bytes", default.memory_bytes)?,
    })
}

/// A component sent as a request body, at most `max_plugin_bytes`.
pub(super) async fn read_component(node: &NodeHandle, body: Incoming) -> Result<Bytes, Refusal> {
    read_body(node, body, node.config.max_plugin_bytes, "max_plugin_bytes").await
}

/// A numeric header, or `default` when absent.
fn header_number(req: &Request<Incoming>, name: &str, default: u64) -> Result<u64, Refusal> {
    crate::http::header_u64(req, name).map(|v| v.unwrap_or(default))
}

fn valid_name(name: &str) -> bool {
    (1..=64).contains(&name.len())
        && !name.starts_with('_')
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || b == b'-')
}

/// `PUT {url}/v1/blobs/{hash}`.
async fn push(
    url: &str,
    hash: &[u8; 32],
    bytes: Bytes,
    cluster: &str,
    limits: Limits,
) -> anyhow::Result<()> {
    let client = crate::tls::client::<Full<Bytes>>();
    let req = Request::put(format!("{url}/v1/blobs/{}", hex(hash)))
        .header(super::blobs::CLUSTER_HEADER, cluster)
        .header("keel-fuel", limits.fuel)
        .header("keel-memory-bytes", limits.memory_bytes)
        .body(Full::new(bytes))?;
    // Compiling a large plugin (componentize-py: ~8 s) happens before the answer.
    let resp = tokio::time::timeout(Duration::from_secs(120), client.request(req)).await??;
    let status = resp.status();
    if status.is_success() {
        return Ok(());
    }
    let body = crate::client::read_capped(resp.into_body(), 64 << 10, "a peer").await?;
    anyhow::bail!("{status} {}", String::from_utf8_lossy(&body))
}

/// `PUT /v1/blobs/{hash}` from a peer: checked, stored durably, compiled into the artifact
/// cache (so applying the deployment later is a cached load), then 204.
pub async fn put_blob(node: &NodeHandle, req: Request<Incoming>, hash: &str) -> Response<Body> {
    let Some(hash) = parse_hex(hash) else {
        return error(StatusCode::BAD_REQUEST, "a blob is named by 64 hex digits");
    };
    let limits = match (
        header_number(&req, "keel-fuel", DEFAULT_FUEL),
        header_number(&req, "keel-memory-bytes", DEFAULT_MEMORY),
    ) {
        (Ok(fuel), Ok(memory_bytes)) => Limits { fuel, memory_bytes },
        (Err(r), _) | (_, Err(r)) => return r.response(),
    };
    if let Some(refused) = super::blobs::foreign(node, &req) {
        return refused;
    }
    let bytes = match read_body(
        node,
        req.into_body(),
        node.config.max_plugin_bytes,
        "max_plugin_bytes",
    )
    .await
    {
        Ok(b) => b,
        Err(r) => return r.response(),
    };
    if crate::blobs::sha256(&bytes) != hash {
        return error(
            StatusCode::BAD_REQUEST,
            "the body does not hash to the blob's name",
        );
    }
    let (blobs, runtime) = (node.blobs.clone(), node.runtime.clone());
    let stored = tokio::task::spawn_blocking(move || -> Result<(), String> {
        blobs.store(&bytes).map_err(|e| format!("storing: {e}"))?;
        // The leader's checks again, and the compiled artifact cached for the apply.
        let id = PluginId::new("blob", hex(&hash));
        runtime
            .load(id, &bytes, limits)
            .map(drop)
            .map_err(|e| e.to_string())
    })
    .await;
    match stored {
        Ok(Ok(())) => crate::http::full(StatusCode::NO_CONTENT, "text/plain", Bytes::new()),
        Ok(Err(e)) => error(StatusCode::BAD_REQUEST, &e),
        Err(e) => error(StatusCode::INTERNAL_SERVER_ERROR, &e.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plugin_names_are_lowercase_words_and_cannot_take_the_system_namespace() {
        for ok in ["kv", "counter-2", "my_sm", "a"] {
            assert!(valid_name(ok), "{ok}");
        }
        for bad in ["", "__keel", "_x", "KV", "a/b", "a b", &"x".repeat(65)] {
            assert!(!valid_name(bad), "{bad}");
        }
    }
}
