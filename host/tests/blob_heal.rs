//! Nodes that lost blobs, or never had them, heal by themselves (design §6), on real
//! `keel serve` processes: a follower given a snapshot fetches the blobs its state retains;
//! a damaged blob file is caught by its hash and fetched again; a leader killed in the
//! middle of an upload leaves nothing unappliable and no partial file for ever.

use std::io::Write as _;
use std::time::{Duration, Instant};

use keel::client::Client;

mod common;
use common::{
    big_put, blob_files, keel_exe, rt, start_nodes, state_hashes, status, wait_for_leader,
    wait_for_same_state,
};

async fn wait_until(what: &str, deadline: Duration, mut done: impl FnMut() -> bool) {
    let start = Instant::now();
    while !done() {
        assert!(start.elapsed() < deadline, "{what} within {deadline:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// A follower that was down while a plugin's state came to retain a blob, and that is
/// brought up to date by a snapshot (the entry that attached the blob is compacted on the
/// leader), holds the blob soon after without an apply or a query asking for it.
#[test]
fn a_follower_given_a_snapshot_fetches_the_blobs_its_state_retains() {
    let mut cluster = start_nodes(3, |cfg| {
        cfg.snapshot_every = 4;
    });
    let rt = rt();
    let urls = cluster.urls.clone();
    rt.block_on(async {
        let leader = wait_for_leader(&urls, Duration::from_secs(60)).await;
        let f = (1..=3u64).find(|&id| id != leader).expect("a follower") as usize - 1;
        common::kill_all([&mut cluster.children[f]]);
        let live: Vec<String> = (0..3)
            .filter(|&i| i != f)
            .map(|i| urls[i].clone())
            .collect();

        let doc = b"a document the kv plugin keeps\n".repeat(10_000);
        let mut c = Client::new(live.clone()).with_deadline(Duration::from_secs(30));
        let a = c
            .request(hyper::Method::PUT, "/v1/blobs", doc.clone())
            .await
            .expect("upload");
        assert_eq!(a.status, 200, "{}", String::from_utf8_lossy(&a.body));
        let sha = keel::blobs::hex(&keel::blobs::sha256(&doc));
        let mut attach = Client::new(live.clone())
            .with_deadline(Duration::from_secs(30))
            .with_header("keel-attach", sha.clone());
        let a = attach
            .submit(
                "kv",
                br#"{"op":"put","key":"doc","value":"kept","keep":true}"#.to_vec(),
            )
            .await
            .expect("attach");
        assert_eq!(a.status, 200, "{}", String::from_utf8_lossy(&a.body));
        // Past the attaching entry: the leader compacts it, so the follower gets a snapshot.
        for i in 0..12 {
            let a = c
                .submit(
                    "kv",
                    format!(r#"{{"op":"put","key":"k{i}","value":"v"}}"#).into(),
                )
                .await
                .expect("submit");
            assert_eq!(a.status, 200);
        }
        let first = status(&urls[(leader - 1) as usize]).await.expect("status")["snapshot_index"]
            .as_u64()
            .unwrap_or(0);
        assert!(first > 5, "the leader compacted its log (snapshot {first})");

        cluster.children[f] = keel::dev::spawn(keel_exe(), &cluster.configs[f])
            .expect("respawn")
            .0;
        wait_until(
            "the follower fetched the retained blob",
            Duration::from_secs(30),
            || blob_files(&cluster.configs[f]).contains(&sha),
        )
        .await;
        wait_for_same_state(&urls, Duration::from_secs(30)).await;
    });
}

/// A byte flipped in a blob file on a follower's disk, under an entry the follower applies
/// again after a restart (its last flush is older): the hash check at read catches it, the
/// file is quarantined, a good copy fetched, and the state is the same as everyone's (the
/// damaged bytes never reached the plugin).
#[test]
fn a_flipped_byte_in_a_followers_blob_is_quarantined_and_fetched_again() {
    let mut cluster = start_nodes(3, |cfg| {
        // The applied state stays in memory (no periodic flush), so a killed node applies
        // the entry again from its log when it restarts.
        cfg.apply_flush_ms = 3_600_000;
    });
    let rt = rt();
    let urls = cluster.urls.clone();
    rt.block_on(async {
        let leader = wait_for_leader(&urls, Duration::from_secs(60)).await;
        let f = (1..=3u64).find(|&id| id != leader).expect("a follower") as usize - 1;
        let mut c = Client::new(urls.clone()).with_deadline(Duration::from_secs(30));
        let doc = big_put("doc", 300_000, 'd');
        let a = c.submit("kv", doc.clone()).await.expect("submit");
        assert_eq!(a.status, 200, "{}", String::from_utf8_lossy(&a.body));
        let leader_commit =
            status(&urls[(leader - 1) as usize]).await.expect("status")["commit_index"]
                .as_u64()
                .unwrap_or(0);
        // Applied on the follower (its status; asking for a state hash would flush it).
        let start = Instant::now();
        while status(&urls[f]).await.expect("status")["applied_index"]
            .as_u64()
            .unwrap_or(0)
            < leader_commit
        {
            assert!(
                start.elapsed() < Duration::from_secs(30),
                "follower applies"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        common::kill_all([&mut cluster.children[f]]);
        let sha = keel::blobs::hex(&keel::blobs::sha256(&doc));
        let dir = common::blob_dir(&cluster.configs[f]);
        let path = dir.join(&sha);
        let mut bytes = std::fs::read(&path).expect("the follower holds the blob");
        bytes[1_000] ^= 0x20;
        std::fs::write(&path, &bytes).expect("damage");

        cluster.children[f] = keel::dev::spawn(keel_exe(), &cluster.configs[f])
            .expect("respawn")
            .0;
        wait_for_same_state(&urls, Duration::from_secs(60)).await;
        let quarantined = std::fs::read_dir(dir.join("quarantine"))
            .map(|d| d.count())
            .unwrap_or(0);
        assert_eq!(quarantined, 1, "the damaged file was moved aside");
        assert_eq!(
            std::fs::read(&path).map(|b| keel::blobs::sha256(&b)).ok(),
            keel::blobs::parse_hex(&sha),
            "a good copy was fetched"
        );
    });
}

/// Temporary upload files in a node's blob directory.
fn partial_uploads(config: &std::path::Path) -> Vec<String> {
    let dir = common::blob_dir(config);
    std::fs::read_dir(dir)
        .map(|d| {
            d.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|n| n.starts_with(".upload-"))
                .collect()
        })
        .unwrap_or_default()
}

/// The leader is killed (SIGKILL) while it streams a large upload: the others elect, every
/// committed record (some by reference) applies on them, and once the old leader is back
/// its partial upload file goes after the grace period, as does every copy of it.
#[test]
fn a_leader_killed_mid_upload_leaves_nothing_unappliable_and_its_partial_upload_is_collected() {
    let mut cluster = start_nodes(3, |cfg| {
        cfg.blob_gc_interval_ms = 300;
        cfg.blob_gc_grace_ms = 2_000;
    });
    let rt = rt();
    let urls = cluster.urls.clone();
    rt.block_on(async {
        let leader = wait_for_leader(&urls, Duration::from_secs(60)).await;
        let l = (leader - 1) as usize;
        let mut c = Client::new(urls.clone()).with_deadline(Duration::from_secs(30));
        for i in 0..3 {
            let a = c
                .submit("kv", big_put(&format!("doc{i}"), 200_000, 'r'))
                .await
                .expect("submit");
            assert_eq!(a.status, 200, "{}", String::from_utf8_lossy(&a.body));
        }
        // 256 MiB announced, sent a MiB at a time until the socket breaks.
        let addr = urls[l].trim_start_matches("http://").to_string();
        let sender = std::thread::spawn(move || {
            let Ok(mut s) = std::net::TcpStream::connect(&addr) else {
                return;
            };
            let head = format!(
                "PUT /v1/blobs HTTP/1.1\r\nHost: x\r\nContent-Length: {}\r\n\r\n",
                256u64 << 20
            );
            if s.write_all(head.as_bytes()).is_err() {
                return;
            }
            let chunk = vec![0x5au8; 1 << 20];
            for _ in 0..256 {
                if s.write_all(&chunk).is_err() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        });
        wait_until("the upload is under way", Duration::from_secs(30), || {
            !partial_uploads(&cluster.configs[l]).is_empty()
        })
        .await;
        tokio::time::sleep(Duration::from_millis(500)).await;
        common::kill_all([&mut cluster.children[l]]);
        let _ = sender.join();
        assert!(
            !partial_uploads(&cluster.configs[l]).is_empty(),
            "the killed leader left its partial upload"
        );

        // The others elect and apply everything committed.
        let live: Vec<String> = (0..3)
            .filter(|&i| i != l)
            .map(|i| urls[i].clone())
            .collect();
        wait_for_leader(&live, Duration::from_secs(30)).await;
        wait_for_same_state(&live, Duration::from_secs(30)).await;
        let mut c = Client::new(live.clone()).with_deadline(Duration::from_secs(30));
        let a = c
            .query(
                "kv",
                br#"{"op":"get","key":"doc2"}"#.to_vec(),
                "linearizable",
            )
            .await
            .expect("query");
        assert!(a.body.len() > 200_000, "{}", a.body.len());

        cluster.children[l] = keel::dev::spawn(keel_exe(), &cluster.configs[l])
            .expect("respawn")
            .0;
        wait_for_same_state(&urls, Duration::from_secs(60)).await;
        wait_until(
            "every partial upload is collected",
            Duration::from_secs(30),
            || {
                cluster
                    .configs
                    .iter()
                    .all(|c| partial_uploads(c).is_empty())
            },
        )
        .await;
        let hashes = state_hashes(&urls).await;
        assert!(hashes.windows(2).all(|w| w[0] == w[1]), "{hashes:?}");
    });
}

/// Issue #11's process test: a follower stopped while fifty commands each attached a 10 MB
/// blob (the log holds only their hashes) is restarted, fetches them all by the resend
/// sweep with no operator action, and ends with the same state as the others.
#[test]
fn a_follower_stopped_during_fifty_10_mb_commands_heals_by_the_sweep() {
    let mut cluster = start_nodes(3, |_| {});
    let rt = rt();
    let urls = cluster.urls.clone();
    rt.block_on(async {
        let leader = wait_for_leader(&urls, Duration::from_secs(60)).await;
        let f = (1..=3u64).find(|&id| id != leader).expect("a follower") as usize - 1;
        common::kill_all([&mut cluster.children[f]]);
        let live: Vec<String> = (0..3)
            .filter(|&i| i != f)
            .map(|i| urls[i].clone())
            .collect();
        let mut c = Client::new(live.clone()).with_deadline(Duration::from_secs(60));
        let mut names = Vec::new();
        for i in 0..50u8 {
            let blob = vec![i; 10_000_000];
            let a = c
                .request(hyper::Method::PUT, "/v1/blobs", blob.clone())
                .await
                .expect("upload");
            assert_eq!(a.status, 200, "{}", String::from_utf8_lossy(&a.body));
            let sha = keel::blobs::hex(&keel::blobs::sha256(&blob));
            let mut attach = Client::new(live.clone())
                .with_deadline(Duration::from_secs(60))
                .with_header("keel-attach", sha.clone());
            let put = format!(r#"{{"op":"put","key":"b{i}","value":"{sha}","keep":true}}"#);
            let a = attach.submit("kv", put.into()).await.expect("submit");
            assert_eq!(a.status, 200, "{}", String::from_utf8_lossy(&a.body));
            names.push(sha);
        }
        cluster.children[f] = keel::dev::spawn(keel_exe(), &cluster.configs[f])
            .expect("respawn")
            .0;
        wait_for_same_state(&urls, Duration::from_secs(120)).await;
        let held = blob_files(&cluster.configs[f]);
        let missing: Vec<&String> = names.iter().filter(|n| !held.contains(n)).collect();
        assert!(missing.is_empty(), "the follower lacks {missing:?}");
    });
}
