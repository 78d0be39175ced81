//! Blob garbage collection (design §6), beside the node: every `blob_gc_interval_ms` it asks
//! every member for its snapshot index, asks the driver which blobs this node must keep, and
//! deletes the others that are older than the grace period — only when every member answered
//! (a member that cannot be asked may be the lagging one). The rule itself, and why it keeps
//! what a lagging follower still needs, is [`crate::blobs::collectable`].

use std::time::Duration;

use tokio::sync::oneshot;

use crate::blobs::{self, hex};
use crate::driver::{Input, NodeHandle};

/// Runs until the node stops.
pub async fn run(node: NodeHandle) {
    let every = node.config.blob_gc_interval_ms;
    if every == 0 {
        return;
    }
    loop {
        tokio::time::sleep(Duration::from_millis(every)).await;
        match collect(&node).await {
            Ok(0) => {}
            Ok(n) => tracing::info!(target: "keel::txn", blobs = n, "garbage-collected blobs"),
            Err(why) => {
                tracing::debug!(target: "keel::txn", %why, "blob garbage collection skipped")
            }
        }
    }
}

/// One round; returns how many blobs went.
pub async fn collect(node: &NodeHandle) -> Result<usize, String> {
    let members = {
        let s = node.status.lock().unwrap_or_else(|e| e.into_inner());
        s.members.clone()
    };
    // The lowest snapshot index among the members, every one of them answering.
    let mut watermark = u64::MAX;
    for url in members.values() {
        let mut c = crate::client::Client::new(vec![url.clone()])
            .with_header(super::blobs::CLUSTER_HEADER, node.config.cluster_id.clone())
            .with_answer_limit(1 << 20);
        let answer = tokio::time::timeout(Duration::from_secs(2), c.get("/v1/status"))
            .await
            .map_err(|_| format!("{url} did not answer"))?
            .map_err(|e| format!("{url}: {e}"))?;
        let status: serde_json::Value =
            serde_json::from_slice(&answer.body).map_err(|e| format!("{url}: {e}"))?;
        let snapshot = status["snapshot_index"]
            .as_u64()
            .ok_or_else(|| format!("{url} reports no snapshot index"))?;
        watermark = watermark.min(snapshot);
    }
    let (tx, rx) = oneshot::channel();
    node.submit(Input::BlobsNeeded(tx))
        .map_err(|e| e.to_string())?;
    let keep = rx.await.map_err(|_| "the driver stopped".to_string())?;
    let blobs = node.blobs.clone();
    let grace = Duration::from_millis(node.config.blob_gc_grace_ms);
    let gone = tokio::task::spawn_blocking(move || {
        let doomed = blobs::collectable(&blobs.list(), &keep, watermark, grace);
        // Touched since it was listed: attached again, on its way into the log.
        let doomed: Vec<_> = doomed
            .into_iter()
            .filter(|hash| blobs.remove_if_untouched(hash, grace))
            .collect();
        for hash in &doomed {
            tracing::debug!(target: "keel::txn", blob = %hex(hash), "collected blob");
        }
        // Partial uploads of a process killed mid-write: no hash names them.
        let partial = blobs.remove_stale_uploads(grace);
        if partial > 0 {
            tracing::info!(target: "keel::txn", files = partial, "removed stale partial uploads");
        }
        doomed.len()
    })
    .await
    .map_err(|e| e.to_string())?;
    node.metrics.blobs_collected.inc_by(gone as u64);
    Ok(gone)
}
