//! Upgrading a plugin safely, on real `keel serve` processes (issue #12, docs/plugins.md):
//! `keel deploy --dry-run` replays a plugin's last commands against a candidate on one node
//! and counts where it answers or writes otherwise; every node counts the commands each
//! plugin applied and failed alike; `keel undeploy --drop-state` deletes the state through
//! the log.

use std::path::Path;
use std::process::{Command, Output};
use std::time::Duration;

use keel::client::Client;
use serde_json::Value;

mod common;
use common::{keel_exe, rt, start_nodes, wait_for_leader, wait_for_same_state};

fn keel(args: &[&str]) -> Output {
    Command::new(keel_exe())
        .args(args)
        .env_remove("KEEL_ENDPOINTS")
        .output()
        .expect("run keel")
}

/// `keel deploy ctr FILE --dry-run` against `url`, as JSON; the exit code too.
fn dry_run(url: &str, file: &Path, last: usize) -> (i32, Value) {
    let last = last.to_string();
    let out = keel(&[
        "--endpoints",
        url,
        "--output",
        "json",
        "deploy",
        "ctr",
        file.to_str().expect("path"),
        "--dry-run",
        "--last",
        &last,
    ]);
    let v: Value = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "{e}: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    });
    (out.status.code().unwrap_or(-1), v["result"].clone())
}

/// The Rust template (`keel new`), whose counter says "{name} would overflow" where
/// `plugins/counter` says "counter {name} would overflow": the same commands, answered
/// otherwise exactly where a counter overflows.
fn template_counter() -> Vec<u8> {
    let dir = tempfile::tempdir().expect("tempdir");
    let at = dir.path().join("ctr-port");
    let out = keel(&[
        "new",
        "ctr-port",
        "--lang",
        "rust",
        "--dir",
        at.to_str().expect("path"),
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let target = common::guest_target();
    let status = common::guest_cargo()
        .current_dir(&at)
        .args([
            "build",
            "--release",
            "--target",
            "wasm32-wasip2",
            "--target-dir",
        ])
        .arg(&target)
        .status()
        .expect("cargo");
    assert!(status.success());
    std::fs::read(target.join("wasm32-wasip2/release/ctr_port.wasm")).expect("ctr_port.wasm")
}

#[test]
fn a_dry_run_counts_the_commands_a_candidate_answers_otherwise_and_drop_state_empties_it() {
    let counter = common::guest_plugin("keel-plugin-counter", "keel_plugin_counter");
    let port = template_counter();
    let cluster = start_nodes(3, |_| {});
    let files = tempfile::tempdir().expect("tempdir");
    let file = |name: &str, bytes: &[u8]| {
        let p = files.path().join(name);
        std::fs::write(&p, bytes).expect("write");
        p
    };
    let (same, ported, kv) = (
        file("counter.wasm", &counter),
        file("port.wasm", &port),
        file("kv.wasm", keel::state::BUILTIN_KV),
    );
    let rt = rt();
    let urls = cluster.urls.clone();
    let leader = rt.block_on(wait_for_leader(&urls, Duration::from_secs(30)));
    let leader_url = urls[leader as usize - 1].clone();
    let follower = urls
        .iter()
        .find(|u| **u != leader_url)
        .expect("a follower")
        .clone();

    // 12 commands, 2 of which overflow (and fail alike everywhere).
    let commands: Vec<String> = [
        r#"{"op":"add","name":"a","by":1}"#.to_string(),
        r#"{"op":"add","name":"a","by":2}"#.into(),
        r#"{"op":"add","name":"b","by":10}"#.into(),
        format!(r#"{{"op":"add","name":"big","by":{}}}"#, i64::MAX),
        r#"{"op":"add","name":"big","by":1}"#.into(),
        r#"{"op":"reset","name":"a"}"#.into(),
        r#"{"op":"add","name":"a","by":5}"#.into(),
        r#"{"op":"add","name":"big","by":7}"#.into(),
        r#"{"op":"add","name":"b","by":-3}"#.into(),
        r#"{"op":"reset","name":"b"}"#.into(),
        r#"{"op":"add","name":"c","by":4}"#.into(),
        r#"{"op":"add","name":"a","by":1}"#.into(),
    ]
    .into();
    rt.block_on(async {
        let mut c = Client::new(vec![leader_url.clone()]).with_deadline(Duration::from_secs(30));
        let a = c.deploy("ctr", counter.clone(), &[]).await.expect("deploy");
        assert_eq!(
            a.status.as_u16(),
            200,
            "{}",
            String::from_utf8_lossy(&a.body)
        );
        for cmd in &commands {
            c.submit("ctr", cmd.clone().into_bytes())
                .await
                .expect("submit");
        }
    });
    rt.block_on(wait_for_same_state(&urls, Duration::from_secs(30)));

    // Every node counts the same: 12 applied, 2 failed, the last failure named.
    for url in &urls {
        let v = rt.block_on(async {
            let mut c = Client::new(vec![url.clone()]);
            let a = c.get("/v1/plugins/ctr").await.expect("GET");
            serde_json::from_slice::<Value>(&a.body).expect("json")
        });
        assert_eq!(v["commands"]["applied"], 12, "{url}: {v}");
        assert_eq!(v["commands"]["failed"], 2, "{url}: {v}");
        let msg = v["last_error"]["message"].as_str().unwrap_or_default();
        assert!(msg.contains("counter big would overflow"), "{url}: {v}");
    }

    // The same bytes differ nowhere, replayed from the state before the first (the first
    // `add a 1` must read a = 0 again, or its answer differs).
    let (code, r) = dry_run(&follower, &same, 100);
    assert_eq!(code, 0, "{r}");
    assert_eq!(r["replayed"], 12, "{r}");
    assert_eq!(r["commands_differ"], 0, "{r}");
    let (code, r) = dry_run(&follower, &same, 5);
    assert_eq!((code, r["replayed"].as_u64()), (0, Some(5)), "{r}");

    // The ported template differs exactly where a counter overflows.
    let (code, r) = dry_run(&follower, &ported, 100);
    assert_eq!(code, 6, "{r}");
    assert_eq!(
        (
            &r["answers_differ"],
            &r["writes_differ"],
            &r["commands_differ"]
        ),
        (&Value::from(2), &Value::from(0), &Value::from(2)),
        "{r}"
    );
    let first = &r["differences"][0];
    assert_eq!(
        first["current"]["error"]
            .as_str()
            .map(|e| e.starts_with("counter big would overflow")),
        Some(true),
        "{r}"
    );
    assert_eq!(
        first["candidate"]["error"]
            .as_str()
            .map(|e| e.starts_with("big would overflow")),
        Some(true),
        "{r}"
    );

    // Another plugin altogether answers every command otherwise.
    let (code, r) = dry_run(&leader_url, &kv, 100);
    assert_eq!((code, r["commands_differ"].as_u64()), (6, Some(12)), "{r}");

    // The table for people shows both sides.
    let out = keel(&[
        "--endpoints",
        &follower,
        "deploy",
        "ctr",
        ported.to_str().expect("path"),
        "--dry-run",
    ]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(6), "{text}");
    assert!(
        text.contains("CURRENT") && text.contains("CANDIDATE") && text.contains("would overflow"),
        "{text}"
    );

    // A dry run deployed nothing.
    rt.block_on(async {
        let mut c = Client::new(vec![follower.clone()]);
        let v: Value = serde_json::from_slice(&c.get("/v1/plugins/ctr").await.expect("GET").body)
            .expect("json");
        assert_eq!(v["history"].as_array().map(Vec::len), Some(1), "{v}");
    });

    // Dropping the state: through the log, on every node; a redeploy starts empty.
    let out = keel(&["--endpoints", &follower, "undeploy", "ctr", "--drop-state"]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(text.contains(r#""keys_deleted":3"#), "a, big and c: {text}");
    rt.block_on(wait_for_same_state(&urls, Duration::from_secs(30)));
    rt.block_on(async {
        let mut c = Client::new(vec![leader_url.clone()]).with_deadline(Duration::from_secs(30));
        assert_eq!(
            c.submit("ctr", commands[0].clone().into_bytes())
                .await
                .expect("submit")
                .status
                .as_u16(),
            404
        );
        c.deploy("ctr", counter.clone(), &[]).await.expect("deploy");
        for url in &urls {
            let mut q = Client::new(vec![url.clone()]).with_deadline(Duration::from_secs(30));
            let a = q
                .query(
                    "ctr",
                    br#"{"op":"get","name":"big"}"#.to_vec(),
                    "linearizable",
                )
                .await
                .expect("query");
            assert_eq!(String::from_utf8_lossy(&a.body), r#"{"value":0}"#, "{url}");
            let v: Value =
                serde_json::from_slice(&q.get("/v1/plugins/ctr").await.expect("GET").body)
                    .expect("json");
            assert_eq!(v["commands"]["applied"], 0, "counters dropped too: {v}");
        }
    });
    // The dropped state's commands are gone from the journal too: nothing to replay.
    let (code, r) = dry_run(&follower, &same, 100);
    assert_eq!((code, r["replayed"].as_u64()), (0, Some(0)), "{r}");
    drop(cluster);
}
