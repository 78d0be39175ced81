//! The dashboard in a real browser: three real `keel serve` processes, and headless Chromium
//! driven by Playwright (`tests/dashboard/check.mjs`) on a follower's page. The page must
//! list the three members and the leader, show a follower killed with `kill -9` as unhealthy
//! within seconds, move its commit chart after a burst of puts, and log no console error.
//! Screenshots of each state land in `$CARGO_TARGET_TMPDIR/dashboard/`.
//!
//! Needs `node`, Chromium (`/usr/bin/chromium`, or `KEEL_CHROMIUM`) and `npm ci` in
//! `tests/dashboard` (all from `scripts/install-toolchains.sh`). Without them the test says
//! so and passes vacuously, unless `KEEL_REQUIRE_BROWSER=1` (set by `.ci/run`), which makes
//! it fail instead.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

mod common;
use common::{kill_all, rt, status, wait_for_leader};

/// What the browser check needs, or why it cannot run here.
fn browser_tools() -> Result<(PathBuf, PathBuf), String> {
    let chromium = std::env::var_os("KEEL_CHROMIUM")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/usr/bin/chromium"));
    if !chromium.exists() {
        return Err(format!("no browser at {}", chromium.display()));
    }
    match Command::new("node").arg("--version").output() {
        Ok(o) if o.status.success() => {}
        Ok(o) => return Err(format!("node --version: {}", o.status)),
        Err(e) => return Err(format!("node: {e}")),
    }
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/dashboard");
    if !dir
        .join("node_modules/playwright-core/package.json")
        .exists()
    {
        return Err(format!(
            "playwright-core is not installed (npm ci --prefix {})",
            dir.display()
        ));
    }
    Ok((chromium, dir))
}

/// Runs `cmd` to completion or kills it after `limit`; `(exit ok, stdout + stderr)`.
fn run_bounded(mut cmd: Command, limit: Duration) -> (bool, String) {
    let mut child = cmd
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("starting node");
    // Drain both pipes on threads so a chatty child never blocks on a full pipe.
    let drain = |mut pipe: Box<dyn Read + Send>| {
        std::thread::spawn(move || {
            let mut s = String::new();
            let _ = pipe.read_to_string(&mut s);
            s
        })
    };
    let out = drain(Box::new(child.stdout.take().expect("stdout")));
    let err = drain(Box::new(child.stderr.take().expect("stderr")));
    let start = Instant::now();
    let ok = loop {
        if let Some(status) = child.try_wait().expect("wait") {
            break status.success();
        }
        if start.elapsed() > limit {
            let _ = child.kill();
            let _ = child.wait();
            break false;
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    let text = format!(
        "{}{}",
        out.join().unwrap_or_default(),
        err.join().unwrap_or_default()
    );
    (ok, text)
}

/// The test's nodes, killed and reaped however the test ends.
struct Nodes(Vec<(u64, String, Child)>);

impl Drop for Nodes {
    fn drop(&mut self) {
        kill_all(self.0.iter_mut().map(|(_, _, child)| child));
    }
}

#[test]
fn the_dashboard_shows_the_cluster_a_dead_follower_and_the_commit_rate_in_a_browser() {
    let (chromium, script_dir) = match browser_tools() {
        Ok(t) => t,
        Err(why) if std::env::var_os("KEEL_REQUIRE_BROWSER").is_some() => {
            panic!("the browser test is required (KEEL_REQUIRE_BROWSER) but cannot run: {why}")
        }
        Err(why) => {
            eprintln!("SKIPPED: the dashboard's browser test cannot run here: {why}");
            return;
        }
    };
    let dir = tempfile::tempdir().expect("tempdir");
    let plan = keel::dev::plan(3, dir.path()).expect("plan");
    let exe = Path::new(env!("CARGO_BIN_EXE_keel"));
    let nodes = Nodes(
        plan.iter()
            .map(|(cfg, path)| {
                let child = keel::dev::spawn(exe, path).expect("spawn keel serve").0;
                (cfg.id, cfg.url(), child)
            })
            .collect(),
    );
    let urls: Vec<String> = nodes.0.iter().map(|(_, url, _)| url.clone()).collect();

    let rt = rt();
    let leader = rt.block_on(wait_for_leader(&urls, Duration::from_secs(20)));
    // Every follower must know the leader before the page is asked to show it.
    rt.block_on(async {
        let start = Instant::now();
        loop {
            let mut known = 0;
            for url in &urls {
                if let Some(s) = status(url).await
                    && s["leader_id"] == leader
                {
                    known += 1;
                }
            }
            if known == urls.len() || start.elapsed() > Duration::from_secs(10) {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    });
    // The page of a follower (it must show the whole cluster); the script kills another.
    let page_url = nodes
        .0
        .iter()
        .find(|(id, _, _)| *id != leader)
        .map(|(_, url, _)| url.clone())
        .expect("a follower");
    let pids: Vec<String> = nodes
        .0
        .iter()
        .map(|(id, _, child)| format!("{id}:{}", child.id()))
        .collect();

    let artifacts = Path::new(env!("CARGO_TARGET_TMPDIR")).join("dashboard");
    let _ = std::fs::remove_dir_all(&artifacts);
    let mut cmd = Command::new("node");
    cmd.arg("check.mjs")
        .current_dir(&script_dir)
        .env("KEEL_DASH_URL", &page_url)
        .env("KEEL_NODE_PIDS", pids.join(","))
        .env("KEEL_ARTIFACTS", &artifacts)
        .env("KEEL_CHROMIUM", &chromium);
    let start = Instant::now();
    let (ok, output) = run_bounded(cmd, Duration::from_secs(120));
    eprintln!(
        "check.mjs ({:.1} s; screenshots in {}):\n{output}",
        start.elapsed().as_secs_f64(),
        artifacts.display()
    );
    // The script killed the victim; reap it (and stop the others) before judging.
    drop(nodes);
    assert!(ok, "the browser check failed:\n{output}");
    for shot in ["1-cluster", "2-follower-killed", "3-after-burst"] {
        assert!(
            artifacts.join(format!("{shot}.png")).exists(),
            "no screenshot {shot}"
        );
    }
}
