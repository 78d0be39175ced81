//! `POST /v1/plugins/{name}/dry-run?last=N`: the body is a candidate version of the plugin;
//! the answer says how its answers and KV writes differ from the active version's over the
//! plugin's last N commands (docs/plugins.md, "Dry-run upgrades"). Runs on this node alone,
//! on a blocking thread, and writes nothing: no proposal, no blob stored.

use hyper::body::Incoming;
use hyper::{Request, Response, StatusCode};
use keel_plugin::{Limits, PluginId};
use keel_storage::Storage;

use super::deploy::{DEFAULT_FUEL, DEFAULT_MEMORY, read_component, requested_limits};
use crate::driver::NodeHandle;
use crate::http::{Body, error, json};
use crate::state;

/// Commands replayed when `last` is not given.
pub const DEFAULT_LAST: usize = 100;

/// `POST /v1/plugins/{name}/dry-run`.
pub async fn dry_run(node: &NodeHandle, req: Request<Incoming>, name: &str) -> Response<Body> {
    let last = match req
        .uri()
        .query()
        .unwrap_or("")
        .split('&')
        .find_map(|kv| kv.strip_prefix("last="))
    {
        None => DEFAULT_LAST,
        Some(n) => match n.parse::<usize>() {
            Ok(n) if n > 0 => n,
            _ => return error(StatusCode::BAD_REQUEST, "last must be a positive integer"),
        },
    };
    let record = match super::plugins::record(node, name).await {
        Ok(rec) if rec.active.is_none() && rec.history.versions.is_empty() => {
            return error(StatusCode::NOT_FOUND, &format!("unknown plugin {name:?}"));
        }
        Ok(rec) => rec,
        Err(e) => return error(StatusCode::INTERNAL_SERVER_ERROR, &format!("{e:#}")),
    };
    // The candidate runs with the limits it would be deployed with: the request's, else
    // the active version's.
    let defaults = record.active.as_ref().map_or(
        Limits {
            fuel: DEFAULT_FUEL,
            memory_bytes: DEFAULT_MEMORY,
        },
        |d| Limits {
            fuel: d.fuel_per_apply,
            memory_bytes: d.memory_limit,
        },
    );
    let limits = match requested_limits(&req, defaults) {
        Ok(l) => l,
        Err(r) => return r.response(),
    };
    let bytes = match read_component(node, req.into_body()).await {
        Ok(b) => b,
        Err(r) => return r.response(),
    };
    let (handle, name) = (node.clone(), name.to_owned());
    let ran = tokio::task::spawn_blocking(move || {
        let version = format!(
            "candidate-{}",
            &crate::blobs::hex(&crate::blobs::sha256(&bytes))[..12]
        );
        let candidate = handle
            .runtime
            .load(PluginId::new(name.clone(), version), &bytes, limits)
            .map_err(|e| {
                (
                    StatusCode::BAD_REQUEST,
                    format!("the candidate does not load: {e}"),
                )
            })?;
        // The records and the state they lead to, taken together (see `Registry::journal`).
        let (view, unflushed, records, available) = {
            let slot = handle.unflushed.read().unwrap_or_else(|e| e.into_inner());
            let view = handle
                .storage
                .view()
                .map_err(|e| (StatusCode::SERVICE_UNAVAILABLE, e.to_string()))?;
            let (records, available) = handle.registry.journal().last(&name, last);
            (view, std::sync::Arc::clone(&slot), records, available)
        };
        state::dry_run(
            &candidate,
            &records,
            available,
            Box::new(view),
            unflushed,
            handle.blobs.clone(),
        )
        .map_err(|e| (StatusCode::SERVICE_UNAVAILABLE, format!("replaying: {e}")))
    })
    .await;
    match ran {
        Ok(Ok(report)) => json(StatusCode::OK, &report),
        Ok(Err((status, e))) => error(status, &e),
        Err(e) => error(StatusCode::INTERNAL_SERVER_ERROR, &e.to_string()),
    }
}
