//! The `keel` command line against real clusters: it finds a `keel dev` cluster by itself,
//! takes its connection flags anywhere, prints tables and JSON, exits with the documented
//! codes (docs/cli.md), follows the event stream, and membership changes that would hurt
//! are refused or answered. Every wait is bounded.

use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use keel::client::Client;
use keel::config::NodeConfig;

/// One cluster at a time: timing bounds assume the machine (2 cores) is not running others.
static ONE_CLUSTER_AT_A_TIME: std::sync::Mutex<()> = std::sync::Mutex::new(());

mod common;
use common::{kill_all, rt, wait_for_leader};

fn exe() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_keel"))
}

/// `keel ARGS` in `cwd`, without `$KEEL_ENDPOINTS` unless `env` sets it; killed (and the test
/// failed) if it outlives `limit`.
fn keel_in(cwd: &Path, env: Option<&str>, args: &[&str], limit: Duration) -> Output {
    let mut cmd = Command::new(exe());
    cmd.args(args)
        .current_dir(cwd)
        .env_remove("KEEL_ENDPOINTS")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    if let Some(e) = env {
        cmd.env("KEEL_ENDPOINTS", e);
    }
    let mut child = cmd.spawn().expect("spawn keel");
    let out = drain(&mut child);
    let start = Instant::now();
    loop {
        if let Some(status) = child.try_wait().expect("wait") {
            let (stdout, stderr) = out.recv().expect("output");
            return Output {
                status,
                stdout,
                stderr,
            };
        }
        if start.elapsed() > limit {
            let _ = child.kill();
            let _ = child.wait();
            panic!("keel {args:?} still running after {limit:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Reads a child's stdout and stderr to the end, beside it (a full pipe would block it).
fn drain(child: &mut Child) -> mpsc::Receiver<(Vec<u8>, Vec<u8>)> {
    let (tx, rx) = mpsc::channel();
    let mut stdout = child.stdout.take().expect("stdout");
    let mut stderr = child.stderr.take().expect("stderr");
    std::thread::spawn(move || {
        let err = std::thread::spawn(move || {
            let mut b = Vec::new();
            let _ = stderr.read_to_end(&mut b);
            b
        });
        let mut out = Vec::new();
        let _ = stdout.read_to_end(&mut out);
        let _ = tx.send((out, err.join().unwrap_or_default()));
    });
    rx
}

fn keel(args: &[&str]) -> Output {
    let dir = std::env::temp_dir();
    keel_in(&dir, None, args, Duration::from_secs(60))
}

fn text(o: &Output) -> (String, String) {
    (
        String::from_utf8_lossy(&o.stdout).into_owned(),
        String::from_utf8_lossy(&o.stderr).into_owned(),
    )
}

/// Asserts the exit code, showing what the command printed otherwise.
fn expect_code(o: &Output, code: i32) -> String {
    let (out, err) = text(o);
    assert_eq!(o.status.code(), Some(code), "stdout: {out}\nstderr: {err}");
    out
}

/// Each line of a child's stdout as it comes.
fn lines_of(child: &mut Child) -> mpsc::Receiver<String> {
    let (tx, rx) = mpsc::channel();
    let stdout = child.stdout.take().expect("stdout");
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    rx
}

/// Waits for a line `want` accepts; fails with what came instead.
fn wait_line(rx: &mpsc::Receiver<String>, limit: Duration, want: impl Fn(&str) -> bool) -> String {
    let start = Instant::now();
    let mut seen = Vec::new();
    while let Some(left) = limit.checked_sub(start.elapsed()) {
        match rx.recv_timeout(left) {
            Ok(line) if want(&line) => return line,
            Ok(line) => seen.push(line),
            Err(_) => break,
        }
    }
    panic!("no such line within {limit:?}; saw:\n{}", seen.join("\n"));
}

/// Nodes planned by `keel::dev::plan`, of which the test starts those it wants.
struct Cluster {
    nodes: Vec<(NodeConfig, PathBuf, Option<Child>)>,
    _dir: tempfile::TempDir,
    _one_at_a_time: std::sync::MutexGuard<'static, ()>,
}

impl Cluster {
    /// Plans `n` nodes, tunes their configs and starts those `start` accepts.
    fn plan(n: usize, tune: impl Fn(&mut NodeConfig), start: impl Fn(u64) -> bool) -> Cluster {
        let guard = ONE_CLUSTER_AT_A_TIME
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        let dir = tempfile::tempdir().expect("tempdir");
        let plan = keel::dev::plan(n, dir.path()).expect("plan");
        let mut cluster = Cluster {
            nodes: Vec::new(),
            _dir: dir,
            _one_at_a_time: guard,
        };
        for (mut cfg, path) in plan {
            tune(&mut cfg);
            std::fs::write(&path, serde_json::to_vec_pretty(&cfg).expect("json")).expect("config");
            cluster.nodes.push((cfg, path, None));
        }
        for id in 1..=n as u64 {
            if start(id) {
                cluster.start(id);
            }
        }
        cluster
    }

    fn start(&mut self, id: u64) {
        self.start_with(id, &[]);
    }

    /// Starts node `id` with extra `keel serve` flags, its output appended to `keel.log`
    /// beside its config.
    fn start_with(&mut self, id: u64, flags: &[&str]) {
        let node = &mut self.nodes[(id - 1) as usize];
        node.2 = Some(
            keel::dev::spawn_with(exe(), &node.1, flags)
                .expect("spawn")
                .0,
        );
    }

    fn log(&self, id: u64) -> String {
        std::fs::read_to_string(self.nodes[(id - 1) as usize].1.with_file_name("keel.log"))
            .unwrap_or_default()
    }

    fn kill(&mut self, id: u64) {
        if let Some(mut c) = self.nodes[(id - 1) as usize].2.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    fn url(&self, id: u64) -> String {
        self.nodes[(id - 1) as usize].0.url()
    }

    fn urls(&self, ids: impl IntoIterator<Item = u64>) -> Vec<String> {
        ids.into_iter().map(|id| self.url(id)).collect()
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        kill_all(
            self.nodes
                .iter_mut()
                .filter_map(|(_, _, child)| child.as_mut()),
        );
    }
}

fn free_url() -> String {
    let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    format!("http://{}", l.local_addr().expect("addr"))
}

#[test]
fn keel_put_right_after_keel_dev_finds_the_cluster_and_status_shows_every_member() {
    let _one = ONE_CLUSTER_AT_A_TIME
        .lock()
        .unwrap_or_else(|e| e.into_inner());
    let dir = tempfile::tempdir().expect("tempdir");
    let cwd = dir.path();
    let mut dev = Command::new(exe())
        .arg("dev")
        .current_dir(cwd)
        .env_remove("KEEL_ENDPOINTS")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("keel dev");
    let lines = lines_of(&mut dev);
    let _dev = common::DevStop(dev);
    let export = wait_line(&lines, Duration::from_secs(30), |l| {
        l.starts_with("export KEEL_ENDPOINTS=")
    });
    let endpoints = export
        .trim_start_matches("export KEEL_ENDPOINTS=")
        .to_string();
    assert_eq!(endpoints.split(',').count(), 3, "{export}");
    let limit = Duration::from_secs(60);

    // No flag, no variable: `keel-dev/cluster.json` in the current directory.
    let put = keel_in(
        cwd,
        None,
        &["put", "hello", "world", "--timeout", "30"],
        limit,
    );
    assert!(expect_code(&put, 0).starts_with("OK (index "));
    let get = keel_in(cwd, None, &["get", "hello"], limit);
    assert_eq!(expect_code(&get, 0), "world\n");

    // Elsewhere, the exported variable does it.
    let elsewhere = tempfile::tempdir().expect("tempdir");
    let get = keel_in(elsewhere.path(), Some(&endpoints), &["get", "hello"], limit);
    assert_eq!(expect_code(&get, 0), "world\n");
    // Any plugin's query (stale is left out: a follower may not have applied it yet).
    for consistency in ["linearizable", "lease"] {
        let q = keel_in(
            cwd,
            None,
            &[
                "query",
                "kv",
                r#"{"op":"get","key":"hello"}"#,
                "--consistency",
                consistency,
            ],
            limit,
        );
        assert_eq!(
            expect_code(&q, 0).trim(),
            r#"{"value":"world"}"#,
            "{consistency}"
        );
    }
    let bogus = keel_in(
        cwd,
        None,
        &["query", "kv", "{}", "--consistency", "eventual"],
        limit,
    );
    expect_code(&bogus, 2);
    let json = keel_in(cwd, None, &["get", "-o", "json", "hello"], limit);
    let v: serde_json::Value = serde_json::from_str(&expect_code(&json, 0)).expect("json");
    assert_eq!(
        (v["status"].as_u64(), &v["result"]["value"]),
        (Some(200), &serde_json::json!("world"))
    );

    // The table: a header and one healthy row per member, one of them the leader.
    let table = expect_code(&keel_in(cwd, None, &["status"], limit), 0);
    let rows: Vec<&str> = table.lines().collect();
    assert_eq!(rows.len(), 4, "{table}");
    assert!(rows[0].starts_with("ID  URL"), "{table}");
    assert!(
        rows[0].contains("LAG") && rows[0].contains("HEALTH"),
        "{table}"
    );
    assert_eq!(
        rows.iter().filter(|r| r.contains("Leader")).count(),
        1,
        "{table}"
    );
    assert_eq!(
        rows.iter().filter(|r| r.ends_with("healthy")).count(),
        3,
        "{table}"
    );

    let json = expect_code(&keel_in(cwd, None, &["status", "-o", "json"], limit), 0);
    let v: serde_json::Value = serde_json::from_str(&json).expect("json");
    let members = v["members"].as_array().expect("members");
    assert_eq!(members.len(), 3, "{json}");
    assert!(v["leader"].as_u64().is_some(), "{json}");
    assert!(
        members
            .iter()
            .all(|m| m["healthy"] == true && m["lag"].is_u64()),
        "{json}"
    );

    let listed = expect_code(&keel_in(cwd, None, &["members"], limit), 0);
    assert_eq!(
        listed.lines().filter(|l| l.contains("voter")).count(),
        3,
        "{listed}"
    );
    let json = expect_code(&keel_in(cwd, None, &["members", "-o", "json"], limit), 0);
    let v: serde_json::Value = serde_json::from_str(&json).expect("json");
    assert_eq!(v["members"].as_array().map(Vec::len), Some(3), "{json}");

    // Blobs: up, down (checked against the name), attached to a command; a command
    // attaching a blob nobody holds is refused (exit 4) with the reason.
    let file = cwd.join("doc.bin");
    let bytes: Vec<u8> = (0..300_000u32).map(|i| (i % 199) as u8).collect();
    std::fs::write(&file, &bytes).expect("write");
    let put = keel_in(
        cwd,
        None,
        &["blob", "put", file.to_str().expect("utf-8"), "-o", "json"],
        limit,
    );
    let v: serde_json::Value = serde_json::from_str(&expect_code(&put, 0)).expect("json");
    let sha = v["result"]["sha256"].as_str().expect("sha256").to_string();
    assert_eq!(sha, keel::blobs::hex(&keel::blobs::sha256(&bytes)));
    let back = cwd.join("back.bin");
    let get = keel_in(
        cwd,
        None,
        &["blob", "get", &sha, back.to_str().expect("utf-8")],
        limit,
    );
    expect_code(&get, 0);
    assert!(
        std::fs::read(&back).expect("read") == bytes,
        "the blob came back whole"
    );
    let put = r#"{"op":"put","key":"with","value":"attachment"}"#;
    let attached = keel_in(cwd, None, &["submit", "kv", put, "--attach", &sha], limit);
    expect_code(&attached, 0);
    let nobody = "ab".repeat(32);
    let refused = keel_in(
        cwd,
        None,
        &["submit", "kv", put, "--attach", &nobody],
        limit,
    );
    expect_code(&refused, 4);
    assert!(
        text(&refused).1.contains("upload it first"),
        "{:?}",
        text(&refused)
    );

    // A refusal (no such plugin) is exit 4, with the server's reason.
    let refused = keel_in(cwd, None, &["submit", "nosuch", "{}"], limit);
    expect_code(&refused, 4);
    assert!(
        text(&refused).1.contains("unknown plugin"),
        "{:?}",
        text(&refused)
    );
}

#[test]
fn nothing_listening_is_exit_3_and_says_where_the_endpoints_came_from() {
    let url = free_url();
    let o = keel(&["get", "k", "--endpoints", &url, "--timeout", "1"]);
    expect_code(&o, 3);
    assert!(
        text(&o).1.contains("endpoints from --endpoints"),
        "{:?}",
        text(&o)
    );
    let dir = tempfile::tempdir().expect("tempdir");
    let o = keel_in(
        dir.path(),
        Some(&url),
        &["status", "-o", "json", "--timeout", "1"],
        Duration::from_secs(30),
    );
    let v: serde_json::Value = serde_json::from_str(&expect_code(&o, 3)).expect("json");
    assert_eq!(v["exit_code"], 3);
    assert!(
        v["error"]
            .as_str()
            .unwrap_or("")
            .contains("$KEEL_ENDPOINTS"),
        "{v}"
    );
    // A usage error is clap's 2.
    expect_code(&keel(&["put"]), 2);
}

/// `keel serve --join URL` (issue #15): a node that knows only itself and one member's URL
/// learns the cluster's UUID and every member's address from it, so once added it answers
/// the leader, catches up, and can be promoted. Before, it heard the leader, could not
/// answer, and sat at index 0 without a word.
#[test]
fn a_node_started_with_join_learns_the_members_from_one_and_catches_up() {
    let mut cluster = Cluster::plan(
        4,
        |cfg| {
            if cfg.id == 4 {
                // A fresh machine: nothing about the cluster but what --join finds.
                cfg.peers.retain(|id, _| *id == 4);
                cfg.cluster_id = "00000000-0000-0000-0000-000000000001".into();
                cfg.join = true;
            } else {
                cfg.peers.remove(&4);
            }
        },
        |id| id != 4,
    );
    let founders = cluster.urls(1..=3).join(",");
    let (url1, url4) = (cluster.url(1), cluster.url(4));
    let rt = rt();
    rt.block_on(wait_for_leader(
        &cluster.urls(1..=3),
        Duration::from_secs(60),
    ));
    let limit = Duration::from_secs(60);
    let dir = std::env::temp_dir();
    let run = |args: &[&str]| keel_in(&dir, None, args, limit);

    // First the old way: the right UUID, but no member's address. Added, it hears the
    // leader and cannot answer; it says so in its status instead of sitting silently.
    let cluster_id = status_of(&rt, &url1).expect("status")["cluster_id"]
        .as_str()
        .expect("cluster_id")
        .to_string();
    cluster.start_with(4, &["--cluster-id", &cluster_id]);
    expect_code(
        &run(&["member", "add", "4", &url4, "--endpoints", &founders]),
        0,
    );
    let start = Instant::now();
    loop {
        let status = status_of(&rt, &url4);
        if status
            .as_ref()
            .and_then(|s| s["cannot_answer"].as_array())
            .is_some_and(|a| !a.is_empty())
        {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "node 4 never said it cannot answer: {status:?}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    cluster.kill(4);
    let data = cluster.nodes[3].0.data_dir.clone();
    std::fs::remove_dir_all(&data).expect("wipe node 4");

    // Then with --join: it learns the members from one, catches up, and is promoted.
    cluster.start_with(4, &["--join", &url1]);
    let start = Instant::now();
    loop {
        let promoted = run(&["member", "promote", "4", "--endpoints", &founders]);
        if promoted.status.code() == Some(0) {
            break;
        }
        let (_, err) = text(&promoted);
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "node 4 never caught up: {err}\n{}",
            cluster.log(4)
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    let status = status_of(&rt, &url4).expect("node 4 answers");
    assert!(status["last_log_index"].as_u64() > Some(0), "{status}");
    assert_eq!(
        status["voters"],
        serde_json::json!([1, 2, 3, 4]),
        "{status}"
    );
    // Removed while it was down, node 4 never sees the entry that removes it: restarted, it
    // campaigns, and the members tell it (410) instead of ignoring it for ever.
    cluster.kill(4);
    let all = cluster.urls(1..=3).join(",");
    expect_code(&run(&["member", "remove", "4", "--endpoints", &all]), 0);
    // Restarted the same way (`--join` again: its data directory decides now).
    cluster.start_with(4, &["--join", &url1]);
    let said = wait_removed(&rt, &url4, Duration::from_secs(30));
    assert!(
        said["detail"]
            .as_str()
            .unwrap_or("")
            .contains("not in the configuration"),
        "{said}"
    );
    assert!(
        cluster.log(4).contains("--join: joining"),
        "{}",
        cluster.log(4)
    );
}

/// The node at `url`'s `/v1/status`, if it answers within 2 s.
fn status_of(rt: &tokio::runtime::Runtime, url: &str) -> Option<serde_json::Value> {
    rt.block_on(async {
        let mut c = Client::new(vec![url.to_string()]).with_deadline(Duration::from_secs(2));
        let a = c.get("/v1/status").await.ok()?;
        serde_json::from_slice(&a.body).ok()
    })
}

/// Waits until the node at `url` reports in its status that it is not a member; that report.
fn wait_removed(rt: &tokio::runtime::Runtime, url: &str, limit: Duration) -> serde_json::Value {
    let start = Instant::now();
    loop {
        let status = status_of(rt, url);
        if let Some(s) = &status
            && !s["removed"].is_null()
        {
            return s["removed"].clone();
        }
        assert!(
            start.elapsed() < limit,
            "{url} never said it was removed: {status:?}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

#[test]
fn completions_are_printed_for_bash_and_zsh() {
    let bash = expect_code(&keel(&["completions", "bash"]), 0);
    assert!(bash.contains("_keel()") && bash.contains("watch"), "{bash}");
    let zsh = expect_code(&keel(&["completions", "zsh"]), 0);
    assert!(zsh.starts_with("#compdef keel"), "{zsh}");
}

#[test]
fn membership_flags_go_anywhere_an_empty_learner_is_not_promoted_and_removing_the_leader_is_answered()
 {
    // Node 4 is planned (its URL is known) but started only later.
    let mut cluster = Cluster::plan(
        4,
        |cfg| {
            if cfg.id == 4 {
                cfg.join = true;
            } else {
                cfg.peers.remove(&4);
            }
        },
        |id| id != 4,
    );
    let founders = cluster.urls(1..=3).join(",");
    let url4 = cluster.url(4);
    let rt = rt();
    rt.block_on(wait_for_leader(
        &cluster.urls(1..=3),
        Duration::from_secs(60),
    ));
    let limit = Duration::from_secs(60);
    let dir = std::env::temp_dir();
    let run = |args: &[&str]| keel_in(&dir, None, args, limit);

    // `--endpoints` after the subcommand's arguments (it used to be refused there).
    let added = run(&[
        "member",
        "add",
        "4",
        &url4,
        "--endpoints",
        &founders,
        "-o",
        "json",
    ]);
    let v: serde_json::Value = serde_json::from_str(&expect_code(&added, 0)).expect("json");
    assert_eq!(v["result"]["learners"], serde_json::json!([4]), "{v}");

    // Node 4 is not running: it holds nothing, and promoting it is refused.
    let refused = run(&["member", "promote", "4", "--endpoints", &founders]);
    expect_code(&refused, 4);
    let (_, err) = text(&refused);
    assert!(
        err.contains("not caught up") && err.contains("409"),
        "{err}"
    );

    // Started, it catches up, and then it may be promoted.
    cluster.start(4);
    let start = Instant::now();
    loop {
        let promoted = run(&["--endpoints", &founders, "member", "promote", "4"]);
        if promoted.status.code() == Some(0) {
            let (out, _) = text(&promoted);
            assert!(out.contains("voters [1,2,3,4], learners []"), "{out}");
            break;
        }
        let (_, err) = text(&promoted);
        assert!(err.contains("not caught up"), "{err}");
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "node 4 never caught up: {err}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    let all = cluster.urls(1..=4);
    let table = expect_code(&run(&["status", "--endpoints", &all.join(",")]), 0);
    assert_eq!(
        table.lines().filter(|l| l.ends_with("healthy")).count(),
        4,
        "{table}"
    );

    // Removing the leader: the client gets the new configuration, not 504.
    let leader = rt.block_on(wait_for_leader(&all, Duration::from_secs(60)));
    let removed = run(&[
        "member",
        "remove",
        &leader.to_string(),
        "--endpoints",
        &all.join(","),
        "-o",
        "json",
    ]);
    let v: serde_json::Value = serde_json::from_str(&expect_code(&removed, 0)).expect("json");
    let voters: Vec<u64> = v["result"]["voters"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(serde_json::Value::as_u64)
        .collect();
    assert_eq!(voters.len(), 3, "{v}");
    assert!(!voters.contains(&leader), "{v}");
    // The removed leader knows it, from its own log, and says so in its status.
    let said = wait_removed(&rt, &cluster.url(leader), Duration::from_secs(15));
    assert_eq!(said["per"].as_u64(), Some(leader), "{said}");
    cluster.kill(leader);
    let rest: Vec<String> = (1..=4)
        .filter(|&id| id != leader)
        .map(|id| cluster.url(id))
        .collect();
    let put = run(&["put", "after", "removal", "--endpoints", &rest.join(",")]);
    expect_code(&put, 0);

    // Two of the three voters gone: no quorum, and the command ends as a server error (5),
    // not as an unreachable cluster.
    let survivors: Vec<u64> = (1..=4).filter(|&id| id != leader).collect();
    cluster.kill(survivors[0]);
    cluster.kill(survivors[1]);
    let stuck = run(&[
        "put",
        "x",
        "y",
        "--timeout",
        "3",
        "--endpoints",
        &cluster.url(survivors[2]),
    ]);
    expect_code(&stuck, 5);
}

#[test]
fn keel_watch_prints_a_line_per_event_and_follows_a_leadership_change() {
    let cluster = Cluster::plan(3, |_| {}, |_| true);
    let urls = cluster.urls(1..=3);
    let rt = rt();
    let leader = rt.block_on(wait_for_leader(&urls, Duration::from_secs(60)));
    let mut watch = Command::new(exe())
        .args(["watch", "--endpoints", &cluster.url(leader)])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("keel watch");
    struct Kill(Child);
    impl Drop for Kill {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
    let lines = lines_of(&mut watch);
    let _watch = Kill(watch);
    let first = wait_line(&lines, Duration::from_secs(10), |_| true);
    assert!(
        first.contains(&format!("node {leader} is Leader in term")),
        "{first}"
    );
    let target = if leader == 1 { 2 } else { 1 };
    rt.block_on(async {
        let mut c = Client::new(vec![cluster.url(leader)]);
        let a = c
            .call_raw(&format!("/v1/admin/transfer-leadership/{target}"))
            .await
            .expect("transfer");
        assert_eq!(a.status, 202);
    });
    let line = wait_line(&lines, Duration::from_secs(10), |l| {
        l.contains(&format!(": Follower, leader {target}"))
    });
    // `HH:MM:SS  term N: Follower, leader T`
    assert!(
        line.as_bytes().get(2) == Some(&b':') && line.contains("  term "),
        "{line}"
    );
}
