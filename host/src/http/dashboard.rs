//! The dashboard every node serves at `/` (`docs/http-api.md#dashboard`): static assets
//! compiled into the binary, and `GET /v1/cluster`, which asks every member for its status
//! on the page's behalf. The browser cannot ask the other members itself (they are other
//! origins, and the API sends no CORS headers), so a follower's page shows the whole
//! cluster through this one endpoint.

use std::time::Duration;

use anyhow::anyhow;
use bytes::Bytes;
use http_body_util::Full;
use hyper::header::{CACHE_CONTROL, HeaderValue};
use hyper::{Request, Response, StatusCode};
use hyper_util::client::legacy::Client as HttpClient;

use crate::tls::Connector;
use serde::Serialize;

use super::{Body, full, json};
use crate::cluster_view::{self, ClusterStatus};
use crate::driver::NodeHandle;

const INDEX_HTML: &str = include_str!("../../assets/dashboard/index.html");
const DASHBOARD_JS: &str = include_str!("../../assets/dashboard/dashboard.js");
const DASHBOARD_CSS: &str = include_str!("../../assets/dashboard/dashboard.css");

/// A member that has not answered within this long is shown as unhealthy: long enough for
/// a busy node, short enough that the page notices a dead one within a couple of polls.
pub const MEMBER_TIMEOUT: Duration = Duration::from_millis(1500);

/// `GET /v1/cluster`: every member as this node's membership lists it.
#[derive(Clone, Debug, Serialize)]
pub struct ClusterView {
    /// The node that answered.
    pub served_by: u64,
    /// The cluster UUID.
    pub cluster_id: String,
    /// Leader, its commit index and one row per member (as `keel status -o json`).
    #[serde(flatten)]
    pub status: ClusterStatus,
    /// The active plugins.
    pub plugins: Vec<PluginView>,
}

/// One active plugin.
#[derive(Clone, Debug, Serialize)]
pub struct PluginView {
    /// Its name.
    pub name: String,
    /// The deployed version label.
    pub version: String,
    /// Hex SHA-256 of its component.
    pub sha256: String,
    /// Commands accepted for it, summed over the members that answered (each counts those
    /// it accepted as leader, so the sum survives a change of leader).
    pub commands_total: u64,
}

/// Serves the dashboard's assets and `GET /v1/cluster`.
pub(crate) async fn serve(node: &NodeHandle, path: &str) -> Response<Body> {
    match path.trim_matches('/') {
        "dashboard.js" => asset("text/javascript; charset=utf-8", DASHBOARD_JS),
        "dashboard.css" => asset("text/css; charset=utf-8", DASHBOARD_CSS),
        "v1/cluster" => json(StatusCode::OK, &cluster(node).await),
        _ => asset("text/html; charset=utf-8", INDEX_HTML),
    }
}

fn asset(content_type: &'static str, body: &'static str) -> Response<Body> {
    let mut r = full(StatusCode::OK, content_type, body);
    // The page must match the binary serving it (and its API) after an upgrade.
    r.headers_mut()
        .insert(CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    r
}

/// Asks every member (at once, each bounded by [`MEMBER_TIMEOUT`]) for its status and
/// metrics; this node answers for itself without a request.
pub async fn cluster(node: &NodeHandle) -> ClusterView {
    let local = node
        .status
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .clone();
    let local_json = serde_json::to_value(&local).unwrap_or_default();
    let members = cluster_view::members_of(&local_json);
    let http: HttpClient<Connector, Full<Bytes>> = crate::tls::client();
    let cluster = node.config.cluster_id.as_str();
    let answers = futures_util::future::join_all(members.iter().map(|(id, url, _)| {
        let http = &http;
        let local_json = &local_json;
        async move {
            if *id == local.node_id {
                return (Ok(local_json.clone()), Some(node.metrics.render()));
            }
            let (status, metrics) = futures_util::future::join(
                get(http, format!("{url}/v1/status"), cluster),
                get(http, format!("{url}/metrics"), cluster),
            )
            .await;
            let status = status.and_then(|b| Ok(serde_json::from_slice(&b)?));
            let metrics = metrics
                .ok()
                .map(|b| String::from_utf8_lossy(&b).into_owned());
            (status, metrics)
        }
    }))
    .await;
    let mut counts: Vec<(String, u64)> = Vec::new();
    let mut statuses = Vec::with_capacity(answers.len());
    for (status, metrics) in answers {
        for (plugin, n) in metrics.as_deref().map(plugin_commands).unwrap_or_default() {
            match counts.iter_mut().find(|(p, _)| *p == plugin) {
                Some((_, total)) => *total += n,
                None => counts.push((plugin, n)),
            }
        }
        statuses.push(status);
    }
    let plugins = local
        .plugins
        .iter()
        .map(|name| {
            let (version, sha256) = node
                .registry
                .get(name)
                .map(|p| (p.id().version.clone(), p.sha256().to_string()))
                .unwrap_or_default();
            PluginView {
                name: name.clone(),
                version,
                sha256,
                commands_total: counts
                    .iter()
                    .find(|(p, _)| p == name)
                    .map_or(0, |(_, n)| *n),
            }
        })
        .collect();
    ClusterView {
        served_by: local.node_id,
        cluster_id: local.cluster_id.clone(),
        status: cluster_view::combine(&members, statuses),
        plugins,
    }
}

/// One GET, answered with 2xx within [`MEMBER_TIMEOUT`] (body included), or why not.
/// `GET url` as a cluster node (`keel-cluster`: peers let it through when auth is on).
async fn get(
    http: &HttpClient<Connector, Full<Bytes>>,
    url: String,
    cluster: &str,
) -> anyhow::Result<Bytes> {
    let req = Request::get(&url)
        .header(super::blobs::CLUSTER_HEADER, cluster)
        .body(Full::new(Bytes::new()))?;
    let answer = async {
        let resp = http.request(req).await?;
        anyhow::ensure!(resp.status().is_success(), "HTTP {}", resp.status());
        // Statuses and metrics pages are small: a member cannot make this node buffer more.
        crate::client::read_capped(resp.into_body(), 4 << 20, &url).await
    };
    tokio::time::timeout(MEMBER_TIMEOUT, answer)
        .await
        .map_err(|_| anyhow!("no answer from {url} within {MEMBER_TIMEOUT:?}"))?
}

/// `keel_plugin_commands_total{plugin="…"} N` lines of a metrics text: `(plugin, N)`.
fn plugin_commands(metrics: &str) -> Vec<(String, u64)> {
    metrics
        .lines()
        .filter_map(|line| {
            let rest = line.strip_prefix("keel_plugin_commands_total{plugin=\"")?;
            let (plugin, value) = rest.split_once("\"}")?;
            let n = value.trim().parse::<f64>().ok()?;
            Some((plugin.to_string(), n as u64))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plugin_counters_are_read_from_the_metrics_text() {
        let m = crate::metrics::Metrics::default();
        m.plugin_command("kv");
        m.plugin_command("kv");
        m.plugin_command("other-1");
        let mut got = plugin_commands(&m.render());
        got.sort();
        assert_eq!(got, vec![("kv".to_string(), 2), ("other-1".to_string(), 1)]);
    }
}
