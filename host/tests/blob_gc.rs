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

/// How long since a node's copy of blob `sha` was stored or last touched.
fn blob_age(config: &std::path::Path, sha: &str) -> Duration {
    let path = common::blob_dir(config).join(sha);
    let modified = std::fs::metadata(&path)
        .and_then(|m| m.modified())
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    std::time::SystemTime::now()
        .duration_since(modified)
        .unwrap_or_default()
}

/// Makes a node's copy of blob `sha` look an hour old (older than any grace period).
fn age_blob(config: &std::path::Path, sha: &str) {
    let path = common::blob_dir(config).join(sha);
    let f = std::fs::File::options()
        .append(true)
        .open(&path)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    f.set_modified(std::time::SystemTime::now() - Duration::from_secs(3600))
        .expect("set mtime");
}

/// Design §6 rule 1 against garbage collection: between a leader's check that the members
/// hold a blob it attaches (a `HEAD` each) and the entry reaching their logs, only the
/// blob's age keeps collection off it. So a member's answer to a leader's probe, and the
/// leader's own attach, start the grace period over; a client's `HEAD` does not.
#[test]
fn attaching_an_old_blob_starts_its_grace_period_over_on_every_copy() {
    let cluster = start_nodes(3, |cfg| {
        // No round runs on its own: the ages are what this test reads.
        cfg.blob_gc_interval_ms = 0;
    });
    let cluster_id = {
        let cfg: serde_json::Value =
            serde_json::from_slice(&std::fs::read(&cluster.configs[0]).expect("read config"))
                .expect("config json");
        cfg["cluster_id"].as_str().expect("cluster_id").to_string()
    };
    let rt = rt();
    let urls = cluster.urls.clone();
    rt.block_on(async {
        let leader = wait_for_leader(&urls, Duration::from_secs(60)).await as usize;
        let follower = if leader == 1 { 2 } else { 1 };
        let mut c = Client::new(urls.clone()).with_deadline(Duration::from_secs(30));
        let sha = common::upload_blob(&mut c, vec![7u8; 4096]).await;
        let on = |id: usize| cluster.configs[id - 1].as_path();
        let fresh = Duration::from_secs(600);
        // The upload answered once a majority held it; the third copy may still be landing.
        let deadline = Instant::now() + Duration::from_secs(30);
        while !(1..=3).all(|id| blob_files(on(id)).contains(&sha)) {
            assert!(
                Instant::now() < deadline,
                "the blob never reached every node"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }

        // A client asking: nothing changes.
        age_blob(on(follower), &sha);
        let path = format!("/v1/blobs/{sha}");
        let mut plain = Client::new(vec![urls[follower - 1].clone()]);
        let a = plain
            .request(hyper::Method::HEAD, &path, Vec::new())
            .await
            .expect("head");
        assert_eq!(a.status, 200);
        assert!(
            blob_age(on(follower), &sha) > fresh,
            "a client's HEAD touched"
        );
        // A member probing: the grace period starts over.
        let mut member = Client::new(vec![urls[follower - 1].clone()])
            .with_header("keel-cluster", cluster_id.clone());
        let a = member
            .request(hyper::Method::HEAD, &path, Vec::new())
            .await
            .expect("head");
        assert_eq!(a.status, 200);
        assert!(
            blob_age(on(follower), &sha) < fresh,
            "a member's probe did not touch"
        );

        // A command attaching it: every copy, the leader's too, is young again.
        for id in 1..=3 {
            age_blob(on(id), &sha);
        }
        let a = c
            .submit_with(
                "kv",
                big_put("att", 10, 'a'),
                &[("keel-attach", sha.clone())],
            )
            .await
            .expect("submit");
        assert_eq!(a.status, 200, "{}", String::from_utf8_lossy(&a.body));
        for id in 1..=3 {
            assert!(
                blob_age(on(id), &sha) < fresh,
                "node {id}'s copy is still old after the attach (leader {leader})"
            );
        }
    });
}
