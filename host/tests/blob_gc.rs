//! Blob garbage collection on real `keel serve` processes (design §6): what goes, when, and
//! what never does.

use std::time::{Duration, Instant};

use keel::client::Client;

mod common;
use common::{big_put, blob_files, rt, start_nodes, status, wait_for_leader};

async fn snapshot_indices(urls: &[String]) -> Vec<u64> {
    let mut out = Vec::new();
    for u in urls {
        let s = status(u).await.expect("status");
        out.push(s["snapshot_index"].as_u64().unwrap_or(0));
    }
    out
}

/// The liveness gap: node 1 snapshots after every entry, nodes 2 and 3 every six, so when
/// the cluster goes quiet node 1's snapshot is ahead of theirs. A blob named by an entry
/// every snapshot has passed must still go, on node 1 too (compared with its own snapshot
/// index, node 1 would keep it until the others snapshot again, which a quiet cluster
/// never does).
#[test]
fn a_quiet_cluster_whose_nodes_snapshot_at_different_points_still_collects() {
    let cluster = start_nodes(3, |cfg| {
        cfg.blob_gc_interval_ms = 300;
        cfg.blob_gc_grace_ms = 1_000;
        cfg.snapshot_every = if cfg.id == 1 { 1 } else { 6 };
        // No session expiry entries: the cluster really goes quiet.
        cfg.session_ttl_ms = 0;
    });
    let rt = rt();
    let urls = cluster.urls.clone();
    rt.block_on(async {
        let leader = wait_for_leader(&urls, Duration::from_secs(60)).await;
        let mut c = Client::new(urls.clone()).with_deadline(Duration::from_secs(30));
        let doc = big_put("doc", 200_000, 'x');
        let a = c.submit("kv", doc.clone()).await.expect("submit");
        assert_eq!(a.status, 200, "{}", String::from_utf8_lossy(&a.body));
        let named = keel::blobs::hex(&keel::blobs::sha256(&doc));
        let at = status(&urls[(leader - 1) as usize]).await.expect("status")["commit_index"]
            .as_u64()
            .unwrap_or(u64::MAX);
        // Small writes until nodes 2 and 3 have snapshotted past the entry and node 1 is
        // ahead of them; then nothing more is written.
        let deadline = Instant::now() + Duration::from_secs(60);
        let mut i = 0;
        let snaps = loop {
            let snaps = snapshot_indices(&urls).await;
            let behind = snaps[1].min(snaps[2]);
            if behind >= at && snaps[0] > behind {
                break snaps;
            }
            assert!(Instant::now() < deadline, "snapshots {snaps:?}, entry {at}");
            i += 1;
            let a = c
                .submit(
                    "kv",
                    format!(r#"{{"op":"put","key":"k{i}","value":"v"}}"#).into(),
                )
                .await
                .expect("submit");
            assert_eq!(a.status, 200);
            tokio::time::sleep(Duration::from_millis(300)).await;
        };
        let deadline = Instant::now() + Duration::from_secs(20);
        while cluster
            .configs
            .iter()
            .any(|cfg| blob_files(cfg).contains(&named))
        {
            let held: Vec<bool> = cluster
                .configs
                .iter()
                .map(|cfg| blob_files(cfg).contains(&named))
                .collect();
            assert!(
                Instant::now() < deadline,
                "not collected (held: {held:?}; snapshots {snaps:?}, entry {at})"
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        // Still quiet: node 1's snapshot stayed ahead all along.
        assert_eq!(snapshot_indices(&urls).await, snaps);
    });
}
