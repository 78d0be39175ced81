//! The README's quick start, run as written (issue #15), so it cannot rot: its second shell
//! block (the one after `keel dev`) is extracted from README.md and run by bash line by line
//! against a fresh `keel dev` cluster started in a scratch directory, as a user would in
//! another shell. Only the placeholders are filled in: `target/release/keel` is this build's
//! binary, `PORT` the leader's port and `PORT4` a free one. Two lines are interactive or
//! allowed to refuse, as the README says: `keel watch` runs until Ctrl-C (stopped after 3 s),
//! and `keel member promote 4` is refused (exit 4) until the node has caught up.

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

mod common;
use common::{rt, wait_for_leader};

/// The shell block of README.md that follows `keel dev`: its lines, comments kept.
fn quick_start() -> Vec<String> {
    let readme =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("../README.md"))
            .expect("README.md");
    let blocks: Vec<&str> = readme
        .split("```sh\n")
        .skip(1)
        .map(|b| b.split("```").next().unwrap_or(""))
        .collect();
    let block = blocks
        .iter()
        .find(|b| b.starts_with("keel=target/release/keel"))
        .expect("the README's quick start block (it starts with keel=target/release/keel)");
    block
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(str::to_string)
        .collect()
}

#[test]
fn the_readme_quick_start_runs_as_written() {
    let lines = quick_start();
    assert!(lines.len() >= 8, "{lines:?}");
    let dir = tempfile::tempdir().expect("tempdir");
    let cwd = dir.path();
    let exe = Path::new(env!("CARGO_BIN_EXE_keel"));
    let mut dev = Command::new(exe)
        .arg("dev")
        .current_dir(cwd)
        .env_remove("KEEL_ENDPOINTS")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("keel dev");
    // Wait for keel dev's cluster.json, then for a leader with the kv plugin.
    let cluster_json = cwd.join("keel-dev/cluster.json");
    let start = Instant::now();
    while !cluster_json.exists() {
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "keel dev wrote no cluster.json"
        );
        if let Ok(Some(status)) = dev.try_wait() {
            panic!("keel dev exited: {status}");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let _dev = common::DevStop(dev);
    let v: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&cluster_json).expect("read")).expect("json");
    let urls: Vec<String> = v["nodes"]
        .as_array()
        .expect("nodes")
        .iter()
        .filter_map(|n| n["url"].as_str().map(str::to_string))
        .collect();
    let leader = rt().block_on(wait_for_leader(&urls, Duration::from_secs(60)));
    let leader_url = &urls[(leader - 1) as usize];
    let port = leader_url.rsplit(':').next().expect("port").to_string();
    let port4 = std::net::TcpListener::bind("127.0.0.1:0")
        .expect("bind")
        .local_addr()
        .expect("addr")
        .port()
        .to_string();

    // One bash script: the lines in order, each echoed, stopped at the first failure.
    let mut script =
        String::from("set -euo pipefail\ntrap 'kill $(jobs -p) 2>/dev/null || true' EXIT\n");
    for line in &lines {
        let fill = |s: &str| {
            s.replace(
                "keel=target/release/keel",
                &format!("keel={}", exe.display()),
            )
            .replace("PORT4", &port4)
            .replace("PORT", &port)
        };
        let filled = fill(line);
        // The command without its comment, where something is appended to it.
        let code = line.split(" #").next().unwrap_or("");
        script.push_str(&format!("echo '+ {}'\n", filled.replace('\'', "'\\''")));
        if code.contains("$keel watch") {
            script.push_str(&format!("timeout 3 {} || [ $? = 124 ]\n", fill(code)));
        } else if code.contains("member promote") {
            script.push_str(&format!("{} || [ $? = 4 ]\n", fill(code)));
        } else {
            script.push_str(&format!("{filled}\n"));
        }
        if code.trim_end().ends_with('&') {
            // A node started in the background: give it a moment to listen.
            script.push_str("sleep 2\n");
        }
    }
    let out = Command::new("bash")
        .arg("-c")
        .arg(&script)
        .current_dir(cwd)
        .env_remove("KEEL_ENDPOINTS")
        .stdin(Stdio::null())
        .output()
        .expect("bash");
    let (stdout, stderr) = (
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
    );
    assert!(
        out.status.success(),
        "the README's quick start failed ({}):\n--- stdout\n{stdout}\n--- stderr\n{stderr}",
        out.status
    );
    // What the README says each step shows.
    assert!(stdout.contains("OK (index "), "{stdout}");
    assert!(stdout.lines().any(|l| l == "world"), "{stdout}");
    assert!(stdout.contains("\"client_id\""), "{stdout}");
}
