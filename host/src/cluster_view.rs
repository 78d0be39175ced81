//! What every member says, side by side: the data behind `keel status`, `keel members` and
//! the dashboard's `GET /v1/cluster`, gathered with the client (each member's
//! `/v1/status`, at once, each bounded).

use std::time::Duration;

use anyhow::Context;
use serde::Serialize;

use crate::client::{CallError, Client};

/// One member as `keel status` shows it.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct MemberStatus {
    /// Node id.
    pub id: u64,
    /// Its URL (from the membership).
    pub url: String,
    /// Whether it votes (else a learner).
    pub voter: bool,
    /// Leader, Follower, Learner, Candidate, PreCandidate; `None` if it did not answer.
    pub role: Option<String>,
    /// Its term.
    pub term: Option<u64>,
    /// Its commit index.
    pub commit_index: Option<u64>,
    /// Its applied index.
    pub applied_index: Option<u64>,
    /// The leader's commit index minus this member's applied index.
    pub lag: Option<u64>,
    /// Blobs its resend sweep is fetching (design §6).
    pub blobs_sweeping: Option<u64>,
    /// The blob its apply waits for, if any (`sha256`, `index`, `waiting_ms`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub waiting_for_blob: Option<serde_json::Value>,
    /// Set when it is not a member of the configuration any more (it was removed).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub removed: Option<serde_json::Value>,
    /// It answered `/v1/status`.
    pub healthy: bool,
    /// Why not, if it did not.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// The whole cluster as `keel status` shows it.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct ClusterStatus {
    /// The leader, if a member says it leads.
    pub leader: Option<u64>,
    /// The leader's commit index (the highest commit index seen without one).
    pub commit_index: u64,
    /// Every voter and learner, by id.
    pub members: Vec<MemberStatus>,
}

/// One `GET /v1/status`, bounded by `limit`.
pub async fn node_status(url: &str, limit: Duration) -> anyhow::Result<serde_json::Value> {
    let mut c = Client::new(vec![url.to_string()]).with_deadline(limit);
    let a = c.get("/v1/status").await?;
    anyhow::ensure!(a.status.is_success(), "HTTP {}", a.status);
    serde_json::from_slice(&a.body).context("a status that is not JSON")
}

/// The membership as one node sees it, from the leader if that node knows one (the leader's
/// is the newest): `(status, url it came from)`.
pub async fn membership(
    endpoints: &[String],
    limit: Duration,
) -> anyhow::Result<(serde_json::Value, String)> {
    let mut last_error = None;
    for url in endpoints {
        match node_status(url, limit).await {
            Ok(seed) => {
                if seed["role"] != "Leader"
                    && let Some(leader) = seed["leader_url"].as_str()
                    && let Ok(status) = node_status(leader, limit).await
                {
                    return Ok((status, leader.to_string()));
                }
                return Ok((seed, url.clone()));
            }
            Err(e) => last_error = Some(e),
        }
    }
    Err(match last_error {
        Some(e) if e.downcast_ref::<CallError>().is_some() => e,
        Some(e) => e.context(format!("no status from {endpoints:?}")),
        None => anyhow::anyhow!("no endpoints given"),
    })
}

/// The members of a `/v1/status` answer: `(id, url, voter)`.
pub fn members_of(status: &serde_json::Value) -> Vec<(u64, String, bool)> {
    let learners: Vec<u64> = status["learners"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(serde_json::Value::as_u64)
        .collect();
    let mut out: Vec<(u64, String, bool)> = status["members"]
        .as_object()
        .into_iter()
        .flatten()
        .filter_map(|(id, url)| {
            let id: u64 = id.parse().ok()?;
            Some((
                id,
                url.as_str().unwrap_or("").to_string(),
                !learners.contains(&id),
            ))
        })
        .collect();
    out.sort_by_key(|m| m.0);
    out
}

/// Asks every member for its status (at once, each bounded by `limit`) and puts the answers
/// side by side.
pub async fn cluster_status(
    endpoints: &[String],
    limit: Duration,
) -> anyhow::Result<ClusterStatus> {
    let (seed, _) = membership(endpoints, limit).await?;
    let members = members_of(&seed);
    let answers = futures_util::future::join_all(
        members
            .iter()
            .map(|(_, url, _)| async move { node_status(url, limit).await }),
    )
    .await;
    Ok(combine(&members, answers))
}

/// The rows of `keel status` from each member's `/v1/status` answer (or failure).
pub fn combine(
    members: &[(u64, String, bool)],
    answers: Vec<anyhow::Result<serde_json::Value>>,
) -> ClusterStatus {
    let answered: Vec<Option<&serde_json::Value>> =
        answers.iter().map(|a| a.as_ref().ok()).collect();
    // The leader of the highest term any member reports.
    let leader = answered
        .iter()
        .flatten()
        .filter(|s| s["role"] == "Leader")
        .max_by_key(|s| s["term"].as_u64().unwrap_or(0));
    let commit_index = match leader {
        Some(l) => l["commit_index"].as_u64().unwrap_or(0),
        None => answered
            .iter()
            .flatten()
            .filter_map(|s| s["commit_index"].as_u64())
            .max()
            .unwrap_or(0),
    };
    let rows = members
        .iter()
        .zip(&answers)
        .map(|((id, url, voter), answer)| match answer {
            Ok(s) => {
                let applied = s["applied_index"].as_u64();
                let role = match s["role"].as_str() {
                    // A learner's core runs as a follower that never campaigns.
                    Some("Follower") if !voter => "Learner".to_string(),
                    Some(r) => r.to_string(),
                    None => "?".to_string(),
                };
                MemberStatus {
                    id: *id,
                    url: url.clone(),
                    voter: *voter,
                    role: Some(role),
                    term: s["term"].as_u64(),
                    commit_index: s["commit_index"].as_u64(),
                    applied_index: applied,
                    lag: applied.map(|a| commit_index.saturating_sub(a)),
                    blobs_sweeping: s["blobs_sweeping"].as_u64(),
                    waiting_for_blob: Some(s["waiting_for_blob"].clone()).filter(|w| !w.is_null()),
                    removed: Some(s["removed"].clone()).filter(|r| !r.is_null()),
                    healthy: true,
                    error: None,
                }
            }
            Err(e) => MemberStatus {
                id: *id,
                url: url.clone(),
                voter: *voter,
                healthy: false,
                error: Some(format!("{e:#}")),
                ..MemberStatus::default()
            },
        })
        .collect();
    ClusterStatus {
        leader: leader.and_then(|l| l["node_id"].as_u64()),
        commit_index,
        members: rows,
    }
}
