//! A plugin call that runs for seconds must not cost the cluster its leader: committed
//! entries run on the apply worker, beside the Raft loop (issue: a `{"op":"loop"}` command
//! with the largest fuel budget held every driver thread for 6–9 s, and the leadership
//! changed twice). Real `keel serve` processes, the real misbehave plugin.

use std::path::{Path, PathBuf};
use std::process::Child;
use std::time::{Duration, Instant};

use keel::client::Client;

mod common;
use common::{kill_all, rt, status, wait_for_leader, wait_for_same_state};

/// `plugins/misbehave` built for wasm32-wasip2.
fn misbehave_wasm() -> Vec<u8> {
    common::guest_plugin("keel-plugin-misbehave", "keel_plugin_misbehave")
}

struct Nodes {
    children: Vec<Child>,
    _dir: tempfile::TempDir,
}

impl Drop for Nodes {
    fn drop(&mut self) {
        kill_all(&mut self.children);
    }
}

fn start(n: usize) -> (Nodes, Vec<String>, Vec<PathBuf>) {
    let dir = tempfile::tempdir().expect("tempdir");
    let plan = keel::dev::plan(n, dir.path()).expect("plan");
    let exe = Path::new(env!("CARGO_BIN_EXE_keel"));
    let mut children = Vec::new();
    let mut urls = Vec::new();
    let mut logs = Vec::new();
    for (mut cfg, path) in plan {
        // Commands wait behind the loop for its whole run: give them a minute, not 5 s.
        cfg.default_timeout_ms = 60_000;
        std::fs::write(&path, serde_json::to_vec_pretty(&cfg).expect("json")).expect("config");
        children.push(keel::dev::spawn(exe, &path).expect("spawn keel serve").0);
        urls.push(cfg.url());
        logs.push(path.with_file_name("keel.log"));
    }
    (
        Nodes {
            children,
            _dir: dir,
        },
        urls,
        logs,
    )
}

/// Every node's (role, term).
async fn roles(urls: &[String]) -> Vec<(String, u64)> {
    let mut out = Vec::new();
    for url in urls {
        let s = status(url).await.unwrap_or_default();
        out.push((
            s["role"].as_str().unwrap_or("?").to_string(),
            s["term"].as_u64().unwrap_or(0),
        ));
    }
    out
}

#[test]
fn a_plugin_looping_until_its_fuel_runs_out_changes_no_term_and_stale_reads_keep_answering() {
    let wasm = misbehave_wasm();
    let (_nodes, urls, logs) = start(3);
    rt().block_on(async {
        wait_for_leader(&urls, Duration::from_secs(60)).await;
        let mut admin = Client::new(urls.clone());
        let fuel = keel_plugin::MAX_FUEL;
        let a = admin
            .deploy("bad", wasm, &[("keel-fuel", fuel.to_string())])
            .await
            .expect("deploy");
        assert_eq!(a.status, 200, "{}", String::from_utf8_lossy(&a.body));
        let mut c = Client::new(urls.clone());
        let put = serde_json::json!({"op": "put", "key": "before", "value": "1"});
        let a = c.submit("kv", put.to_string().into_bytes()).await.expect("put");
        assert_eq!(a.status, 200);
        let before = roles(&urls).await;
        let term = before.iter().map(|(_, t)| *t).max().unwrap_or(0);

        // The loop, through a session: its (deterministic) error is stored in the session
        // table on every node, so equal state hashes mean every node got the same error.
        let urls_loop = urls.clone();
        let looping = tokio::spawn(async move {
            let mut c = Client::new(urls_loop);
            let began = Instant::now();
            let body = br#"{"op":"loop"}"#.to_vec();
            let a = tokio::time::timeout(Duration::from_secs(120), c.submit("bad", body))
                .await
                .expect("the loop command is answered within 2 minutes")
                .expect("answer");
            (a, began.elapsed())
        });
        // Give the loop time to start on every node, then write behind it and read beside it.
        tokio::time::sleep(Duration::from_millis(500)).await;
        let urls_w = urls.clone();
        let writes = tokio::spawn(async move {
            let mut c = Client::new(urls_w);
            let mut answers = Vec::new();
            for i in 0..3 {
                let put = serde_json::json!({"op": "put", "key": format!("during-{i}"), "value": "x"});
                let a = c.submit("kv", put.to_string().into_bytes()).await;
                answers.push(a.map(|a| a.status.as_u16()).unwrap_or(0));
            }
            answers
        });
        let mut stale_reads = 0;
        let mut slowest = Duration::ZERO;
        while !looping.is_finished() {
            for url in &urls {
                let mut one = Client::new(vec![url.clone()]);
                let q = br#"{"op":"get","key":"before"}"#.to_vec();
                let began = Instant::now();
                let a = tokio::time::timeout(
                    Duration::from_secs(1),
                    one.query("kv", q, "stale"),
                )
                .await;
                let took = began.elapsed();
                let outcome = match &a {
                    Ok(Ok(a)) => format!("{} {}", a.status, String::from_utf8_lossy(&a.body)),
                    Ok(Err(e)) => e.to_string(),
                    Err(_) => "no answer within 1 s".to_string(),
                };
                assert!(
                    matches!(&a, Ok(Ok(a)) if a.status == 200),
                    "a stale read on {url} failed while the loop ran ({took:?}): {outcome}"
                );
                stale_reads += 1;
                slowest = slowest.max(took);
            }
            let now = roles(&urls).await;
            assert!(
                now.iter().all(|(_, t)| *t == term),
                "the term changed while the plugin looped: {before:?} -> {now:?}"
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        let (answer, took) = looping.await.expect("loop task");
        let body = String::from_utf8_lossy(&answer.body).into_owned();
        println!(
            "loop answered {} after {took:?}: {body}; {stale_reads} stale reads meanwhile, slowest {slowest:?}",
            answer.status
        );
        assert_eq!(answer.status, 422, "the loop fails deterministically: {body}");
        assert!(body.contains("fuel"), "out of fuel: {body}");
        let writes = writes.await.expect("writes");
        assert_eq!(writes, vec![200, 200, 200], "writes queued behind the loop complete");
        assert!(stale_reads >= 6, "too few reads during the loop: {stale_reads}");
        let after = roles(&urls).await;
        assert!(
            after.iter().all(|(_, t)| *t == term),
            "the term changed: {before:?} -> {after:?}\n{}",
            logs.iter()
                .map(|l| std::fs::read_to_string(l).unwrap_or_default())
                .collect::<Vec<_>>()
                .join("\n---\n")
        );
        wait_for_same_state(&urls, Duration::from_secs(60)).await;
    });
}
