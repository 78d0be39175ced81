//! `keel serve --join URL`: a new node learns the cluster it joins from one member, as
//! `etcd --initial-cluster-state existing` users expect to, without copying every member's
//! address into its config. A node that heard from a leader whose address it does not know
//! could not answer it and sat at index 0 for ever (issue #15).

use std::time::Duration;

use anyhow::{Context, bail};

use crate::client::Client;
use crate::config::NodeConfig;

/// `cfg` made ready to join the cluster the member at `url` belongs to: its UUID, and every
/// member's address (this node's own added). Only for a fresh data directory: a node that
/// already holds a log knows its cluster, and must restart even with that member down.
pub async fn through(mut cfg: NodeConfig, url: &str) -> anyhow::Result<NodeConfig> {
    if cfg.data_dir.join("db").exists() {
        // A restart: the cluster is the one the data directory belongs to (the members'
        // addresses are in its log), whether or not the member at `url` is up.
        let storage = keel_storage::RedbStorage::open_existing(
            &cfg.data_dir.join("db"),
            keel_storage::StorageOptions::default(),
        )
        .with_context(|| format!("--join: opening {}", cfg.data_dir.display()))?;
        let recovered = keel_storage::Storage::recover(&storage)?;
        if let Some(identity) = recovered.identity {
            cfg.cluster_id = identity.cluster.to_string();
        }
        cfg.join = true;
        tracing::info!(target: "keel::raft", data_dir = %cfg.data_dir.display(), cluster = %cfg.cluster_id, "--join: the data directory holds a node of this cluster already; restarting it");
        return Ok(cfg);
    }
    let mut client = Client::new(vec![url.to_string()]).with_deadline(Duration::from_secs(30));
    // With client authentication on, a plaintext member answers its status only to a token
    // with `read-status` (over TLS this node's certificate is enough): `$KEEL_TOKEN` or
    // the file `$KEEL_TOKEN_FILE`, as for the CLI.
    let token = crate::cli::resolve_token(
        None,
        std::env::var(crate::cli::TOKEN_VAR).ok().as_deref(),
        std::env::var(crate::cli::TOKEN_FILE_VAR).ok().as_deref(),
        None,
    )?;
    if let Some(token) = token {
        client = client.with_token(&token);
    }
    let answer = client
        .get("/v1/status")
        .await
        .with_context(|| format!("--join: asking {url} for the membership"))?;
    if !answer.status.is_success() {
        bail!(
            "--join: {url} answered {}: {}",
            answer.status,
            String::from_utf8_lossy(&answer.body)
        );
    }
    let status: serde_json::Value = serde_json::from_slice(&answer.body)
        .with_context(|| format!("--join: {url}'s /v1/status is not JSON"))?;
    apply(&mut cfg, &status, url)?;
    Ok(cfg)
}

/// Takes the UUID and the members from a member's `/v1/status`.
fn apply(cfg: &mut NodeConfig, status: &serde_json::Value, url: &str) -> anyhow::Result<()> {
    let cluster = status["cluster_id"]
        .as_str()
        .with_context(|| format!("--join: {url}'s status names no cluster_id"))?;
    let members = crate::cli::members_of(status);
    if members.is_empty() {
        bail!("--join: {url} knows no members (is it a member itself?)");
    }
    if let Some((_, other, _)) = members
        .iter()
        .find(|(id, u, _)| *id == cfg.id && *u != cfg.url())
    {
        bail!(
            "--join: node {} is a member already, at {other} (this node is {})",
            cfg.id,
            cfg.url()
        );
    }
    cfg.cluster_id = cluster.to_string();
    cfg.peers = members.into_iter().map(|(id, u, _)| (id, u)).collect();
    cfg.peers.insert(cfg.id, cfg.url());
    cfg.join = true;
    cfg.check()?;
    tracing::info!(target: "keel::raft", cluster = %cfg.cluster_id, members = ?cfg.peers, "--join: joining; add this node with `keel member add {} {}`", cfg.id, cfg.url());
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_joiner_takes_the_uuid_and_every_members_address_and_keeps_its_own() {
        let mut cfg = NodeConfig {
            id: 4,
            ..NodeConfig::default()
        };
        let status = serde_json::json!({
            "cluster_id": "0123abcd-0000-4000-8000-00000000beef",
            "members": {"1": "http://10.0.0.1:7001", "2": "http://10.0.0.2:7001", "3": "http://10.0.0.3:7001"},
            "learners": [],
        });
        apply(&mut cfg, &status, "http://10.0.0.1:7001").expect("joins");
        assert_eq!(cfg.cluster_id, "0123abcd-0000-4000-8000-00000000beef");
        assert_eq!(cfg.peers.len(), 4);
        assert_eq!(cfg.peers[&4], cfg.url());
        assert!(cfg.join);
    }

    #[test]
    fn a_joiner_whose_id_is_taken_elsewhere_is_refused() {
        let mut cfg = NodeConfig {
            id: 2,
            ..NodeConfig::default()
        };
        let status = serde_json::json!({
            "cluster_id": "0123abcd-0000-4000-8000-00000000beef",
            "members": {"1": "http://10.0.0.1:7001", "2": "http://10.0.0.2:7001"},
        });
        let err = apply(&mut cfg, &status, "http://10.0.0.1:7001").expect_err("refused");
        assert!(err.to_string().contains("member already"), "{err}");
    }
}
