//! The plugin life cycle over HTTP (docs/plugins.md, "Life cycle"): `GET /v1/plugins`,
//! `GET /v1/plugins/{name}`, `POST /v1/plugins/{name}/rollback` and
//! `DELETE /v1/plugins/{name}`. Listings read this node's applied state; rollback and
//! undeploy go through the leader's log like a deploy.

use std::sync::Arc;

use hyper::body::Incoming;
use hyper::{Request, Response, StatusCode};
use keel_plugin::KvView;
use keel_raft::Deploy;
use serde_json::{Value, json};
use tokio::sync::oneshot;

use crate::blobs::hex;
use crate::driver::{Input, NodeHandle};
use crate::http::{Body, answer, error, json as json_response, not_leader, read_body, retry_later};
use crate::state::{self, PluginRecord, SYSTEM_NAMESPACE};

/// The `__keel` namespace of this node's applied state.
fn system_view(node: &NodeHandle) -> anyhow::Result<Arc<dyn KvView>> {
    let (view, unflushed) = node.applied_view()?;
    Ok(state::query_view(
        Box::new(view),
        unflushed,
        SYSTEM_NAMESPACE.to_owned(),
    ))
}

/// One plugin's record as this node has applied it.
pub async fn record(node: &NodeHandle, name: &str) -> anyhow::Result<PluginRecord> {
    let (node, name) = (node.clone(), name.to_owned());
    tokio::task::spawn_blocking(move || state::plugin_record(&system_view(&node)?, &name)).await?
}

/// The JSON form of one plugin: the active version, its limits, the index it became active
/// at, and the latest `keep` versions, newest first.
pub fn describe(name: &str, rec: &PluginRecord, keep: usize) -> Value {
    let version = |d: &Deploy| {
        json!({
            "version": d.version,
            "sha256": hex(&d.sha256),
            "fuel_per_apply": d.fuel_per_apply,
            "memory_limit": d.memory_limit,
        })
    };
    let history: Vec<Value> = rec
        .history
        .versions
        .iter()
        .rev()
        .take(keep)
        .map(|v| {
            let mut j = version(&v.deploy);
            j["index"] = json!(v.index);
            j["at_ms"] = json!(v.at_ms);
            j
        })
        .collect();
    let mut out = json!({
        "plugin": name,
        "active": rec.active.is_some(),
        "undeployed_at": rec.history.undeployed_at,
        "history": history,
        "commands": {
            "applied": rec.stats.applied,
            "failed": rec.stats.failed,
        },
        "last_error": rec.stats.last_error.as_ref().map(|(index, message)| {
            json!({ "index": index, "message": message })
        }),
    });
    if let Some(d) = &rec.active {
        out["current"] = version(d);
        // The latest activation of these bytes and limits is the one in force.
        let at = rec.history.versions.iter().rev().find(|v| &v.deploy == d);
        out["current"]["index"] = json!(at.map(|v| v.index));
        out["current"]["at_ms"] = json!(at.map(|v| v.at_ms));
    }
    out
}

/// `GET /v1/plugins`: every plugin this node knows, active or not.
pub async fn list(node: &NodeHandle) -> Response<Body> {
    let keep = node.config.plugin_history;
    let handle = node.clone();
    let listed = tokio::task::spawn_blocking(move || -> anyhow::Result<Vec<Value>> {
        let view = system_view(&handle)?;
        let mut out = Vec::new();
        for name in state::plugin_names(&view)? {
            let rec = state::plugin_record(&view, &name)?;
            out.push(describe(&name, &rec, keep));
        }
        Ok(out)
    })
    .await;
    match listed {
        Ok(Ok(plugins)) => json_response(StatusCode::OK, &json!({ "plugins": plugins })),
        Ok(Err(e)) => error(StatusCode::INTERNAL_SERVER_ERROR, &format!("{e:#}")),
        Err(e) => error(StatusCode::INTERNAL_SERVER_ERROR, &e.to_string()),
    }
}

/// `GET /v1/plugins/{name}`.
pub async fn show(node: &NodeHandle, name: &str) -> Response<Body> {
    match record(node, name).await {
        Ok(rec) if rec.active.is_none() && rec.history.versions.is_empty() => {
            error(StatusCode::NOT_FOUND, &format!("unknown plugin {name:?}"))
        }
        Ok(rec) => json_response(
            StatusCode::OK,
            &describe(name, &rec, node.config.plugin_history),
        ),
        Err(e) => error(StatusCode::INTERNAL_SERVER_ERROR, &format!("{e:#}")),
    }
}

/// The body of `POST /v1/plugins/{name}/rollback` (all optional).
#[derive(Debug, Default, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct RollbackTo {
    /// A version label, or a prefix of a sha256 (8 hex digits at least).
    version: Option<String>,
}

/// The version a rollback goes to: `to` if given (the newest activation with that label or
/// hash prefix), else the newest whose bytes differ from the active ones; only among the
/// latest `keep` versions.
pub fn rollback_target(rec: &PluginRecord, to: Option<&str>, keep: usize) -> Option<Deploy> {
    let recent = rec.history.versions.iter().rev().take(keep);
    let mut recent = recent.map(|v| &v.deploy);
    match to {
        Some(to) => recent
            .find(|d| d.version == to || (to.len() >= 8 && hex(&d.sha256).starts_with(to)))
            .cloned(),
        None => match &rec.active {
            Some(active) => recent.find(|d| d.sha256 != active.sha256).cloned(),
            None => recent.next().cloned(),
        },
    }
}

/// `POST /v1/plugins/{name}/rollback`: re-activates a recorded version at a new index.
pub async fn rollback(
    node: &NodeHandle,
    req: Request<Incoming>,
    name: &str,
    path: &str,
) -> Response<Body> {
    if let Some(elsewhere) = not_leader(node, path) {
        return elsewhere;
    }
    let body = match read_body(req.into_body(), 4096).await {
        Ok(b) => b,
        Err(r) => return r.response(),
    };
    let to: RollbackTo = if body.is_empty() {
        RollbackTo::default()
    } else {
        match serde_json::from_slice(&body) {
            Ok(t) => t,
            Err(e) => return error(StatusCode::BAD_REQUEST, &format!("rollback body: {e}")),
        }
    };
    let rec = match record(node, name).await {
        Ok(r) => r,
        Err(e) => return error(StatusCode::INTERNAL_SERVER_ERROR, &format!("{e:#}")),
    };
    let keep = node.config.plugin_history;
    let Some(deploy) = rollback_target(&rec, to.version.as_deref(), keep) else {
        let what = match &to.version {
            Some(v) => format!("version {v:?} is not among the latest {keep} of {name:?}"),
            None => format!("{name:?} has no earlier version to roll back to"),
        };
        return error(StatusCode::NOT_FOUND, &what);
    };
    // The bytes were placed on a majority when first deployed and are never deleted while
    // the version is in the history; a node that lacks them fetches them before applying.
    let (tx, rx) = oneshot::channel();
    if let Err(e) = node.submit(Input::Deploy { deploy, reply: tx }) {
        return retry_later(&e.to_string());
    }
    answer(node, rx, node.config.default_timeout_ms, path).await
}

/// `DELETE /v1/plugins/{name}`: undeploys; the plugin's state and history are kept.
pub async fn undeploy(
    node: &NodeHandle,
    name: &str,
    drop_state: bool,
    path: &str,
) -> Response<Body> {
    if let Some(elsewhere) = not_leader(node, path) {
        return elsewhere;
    }
    match record(node, name).await {
        // An undeployed plugin's state can still be dropped.
        Ok(rec) if rec.active.is_none() && (!drop_state || rec.history.versions.is_empty()) => {
            return error(
                StatusCode::NOT_FOUND,
                &format!("plugin {name:?} is not active"),
            );
        }
        Ok(_) => {}
        Err(e) => return error(StatusCode::INTERNAL_SERVER_ERROR, &format!("{e:#}")),
    }
    let (tx, rx) = oneshot::channel();
    let input = Input::Undeploy {
        plugin: name.to_owned(),
        drop_state,
        reply: tx,
    };
    if let Err(e) = node.submit(input) {
        return retry_later(&e.to_string());
    }
    answer(node, rx, node.config.default_timeout_ms, path).await
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::{History, Version};

    fn deploy(version: &str, byte: u8) -> Deploy {
        Deploy {
            plugin: "kv".into(),
            version: version.into(),
            sha256: [byte; 32],
            fuel_per_apply: 1,
            memory_limit: 1,
        }
    }

    #[test]
    fn a_rollback_goes_to_the_newest_other_bytes_or_the_named_version_within_the_kept_ones() {
        let versions: Vec<Version> = [("v1", 1), ("v2", 2), ("v2b", 2), ("v3", 3)]
            .iter()
            .enumerate()
            .map(|(i, (v, b))| Version {
                deploy: deploy(v, *b),
                index: i as u64 + 1,
                at_ms: 0,
            })
            .collect();
        let rec = PluginRecord {
            active: Some(deploy("v3", 3)),
            history: History {
                versions,
                undeployed_at: None,
            },
            stats: Default::default(),
        };
        let to = |v: Option<&str>, keep| rollback_target(&rec, v, keep).map(|d| d.version);
        assert_eq!(to(None, 8).as_deref(), Some("v2b"));
        assert_eq!(to(Some("v1"), 8).as_deref(), Some("v1"));
        assert_eq!(to(Some("v1"), 3), None, "past the kept versions");
        assert_eq!(to(Some("0101010101"), 8).as_deref(), Some("v1"));
        assert_eq!(to(Some("nope"), 8), None);
        assert_eq!(to(None, 1), None, "only the active one is kept");
    }
}
