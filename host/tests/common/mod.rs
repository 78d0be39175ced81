//! Support shared by the process tests: status, leaders and state hashes of real nodes.
#![allow(dead_code, unreachable_pub, missing_docs)]

use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::time::{Duration, Instant};

use keel::client::Client;

/// Kills (SIGKILL) and reaps the node processes still running.
pub fn kill_all<'a>(children: impl IntoIterator<Item = &'a mut Child>) {
    for c in children {
        let _ = c.kill();
        let _ = c.wait();
    }
}

pub fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime")
}

/// A node's `/v1/status`, or `None` if it does not answer within a second.
pub async fn status(url: &str) -> Option<serde_json::Value> {
    let mut c = Client::new(vec![url.to_string()]);
    let a = tokio::time::timeout(Duration::from_secs(1), c.get("/v1/status"))
        .await
        .ok()?
        .ok()?;
    serde_json::from_slice(&a.body).ok()
}

/// The node leading in the highest term with the kv plugin active, if one answers.
pub async fn kv_leader(urls: &[String]) -> Option<u64> {
    let mut best: Option<(u64, u64)> = None;
    for url in urls {
        if let Some(s) = status(url).await
            && s["role"] == "Leader"
            && s["plugins"]
                .as_array()
                .is_some_and(|p| p.iter().any(|n| n == "kv"))
        {
            let term = s["term"].as_u64().unwrap_or(0);
            let id = s["node_id"].as_u64().unwrap_or(0);
            if best.is_none_or(|(t, _)| term > t) {
                best = Some((term, id));
            }
        }
    }
    best.map(|(_, id)| id)
}

/// Waits up to `deadline` for a node leading with the kv plugin active.
pub async fn find_leader(urls: &[String], deadline: Duration) -> Option<u64> {
    let start = Instant::now();
    while start.elapsed() < deadline {
        if let Some(id) = kv_leader(urls).await {
            return Some(id);
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    None
}

/// Waits until some node leads with the kv plugin active; returns the leader's id.
pub async fn wait_for_leader(urls: &[String], deadline: Duration) -> u64 {
    match find_leader(urls, deadline).await {
        Some(id) => id,
        None => panic!("no leader with the kv plugin within {deadline:?}"),
    }
}

/// Every node's `(applied index, state hash)`.
pub async fn state_hashes(urls: &[String]) -> Vec<(u64, String)> {
    let mut out = Vec::new();
    for url in urls {
        let mut c = Client::new(vec![url.clone()]);
        let a = c.get("/v1/state-hash").await.expect("state hash");
        let v: serde_json::Value = serde_json::from_slice(&a.body).expect("json");
        out.push((
            v["applied_index"].as_u64().unwrap_or(0),
            v["hash"].as_str().unwrap_or("").to_string(),
        ));
    }
    out
}

/// Waits until every replica reports the same applied index and state hash; two replicas at
/// one index with different hashes fail at once.
pub async fn wait_for_same_state(urls: &[String], deadline: Duration) {
    let start = Instant::now();
    loop {
        let hashes = state_hashes(urls).await;
        if hashes.windows(2).all(|w| w[0] == w[1]) {
            return;
        }
        let diverged = hashes
            .windows(2)
            .any(|w| w[0].0 == w[1].0 && w[0].1 != w[1].1);
        assert!(!diverged, "replicas differ at one index: {hashes:?}");
        assert!(
            start.elapsed() < deadline,
            "replicas did not converge: {hashes:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Where the tests build guest plugins: a target directory of their own beside ours (the
/// outer `cargo test` holds the lock of ours), shared by every guest build.
pub fn guest_target() -> PathBuf {
    let exe = std::env::current_exe().expect("test executable path");
    exe.ancestors()
        .nth(3)
        .map(Path::to_path_buf)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../target"))
        .join("wasm-guests")
}

/// `cargo`, without the outer build's target settings (a guest builds for wasm32-wasip2
/// into [`guest_target`]).
pub fn guest_cargo() -> Command {
    let mut cargo = Command::new(std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into()));
    for var in [
        "CARGO_TARGET_DIR",
        "CARGO_BUILD_TARGET",
        "RUSTFLAGS",
        "CARGO_ENCODED_RUSTFLAGS",
    ] {
        cargo.env_remove(var);
    }
    cargo
}

/// One of `plugins/` built for wasm32-wasip2: package `package`, file `{file}.wasm`.
pub fn guest_plugin(package: &str, file: &str) -> Vec<u8> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let target = guest_target();
    let status = guest_cargo()
        .args([
            "build",
            "--release",
            "--target",
            "wasm32-wasip2",
            "-p",
            package,
        ])
        .arg("--manifest-path")
        .arg(root.join("plugins/Cargo.toml"))
        .arg("--target-dir")
        .arg(&target)
        .status()
        .expect("run cargo to build a guest plugin");
    assert!(
        status.success(),
        "building {package} failed (run scripts/install-toolchains.sh)"
    );
    let path = target.join(format!("wasm32-wasip2/release/{file}.wasm"));
    std::fs::read(&path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()))
}

/// `keel serve` processes of one `keel dev`-planned cluster, killed and reaped when dropped.
pub struct ProcessCluster {
    pub children: Vec<Child>,
    /// Each node's config file (its data dir is `data` beside it).
    pub configs: Vec<PathBuf>,
    pub urls: Vec<String>,
    pub dir: tempfile::TempDir,
}

impl Drop for ProcessCluster {
    fn drop(&mut self) {
        kill_all(&mut self.children);
    }
}

/// The `keel` binary under test.
pub fn keel_exe() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_keel"))
}

/// Starts `n` nodes on free loopback ports, with a 30 s command timeout and `tweak` applied
/// to each config.
pub fn start_nodes(n: usize, tweak: impl Fn(&mut keel::config::NodeConfig)) -> ProcessCluster {
    let dir = tempfile::tempdir().expect("tempdir");
    let plan = keel::dev::plan(n, dir.path()).expect("plan");
    let (mut children, mut configs, mut urls) = (Vec::new(), Vec::new(), Vec::new());
    for (mut cfg, path) in plan {
        cfg.default_timeout_ms = 30_000;
        tweak(&mut cfg);
        std::fs::write(&path, serde_json::to_vec_pretty(&cfg).expect("json")).expect("config");
        children.push(keel::dev::spawn(keel_exe(), &path).expect("spawn").0);
        urls.push(cfg.url());
        configs.push(path);
    }
    ProcessCluster {
        children,
        configs,
        urls,
        dir,
    }
}

/// A `keel dev` process, stopped with SIGINT (as Ctrl-C: it stops its nodes before it
/// exits) and reaped when dropped.
pub struct DevStop(pub Child);

impl Drop for DevStop {
    fn drop(&mut self) {
        let _ = std::process::Command::new("kill")
            .args(["-INT", &self.0.id().to_string()])
            .status();
        let _ = self.0.wait();
    }
}

/// A put whose JSON is `size` bytes or so: well past the 64 KiB threshold.
pub fn big_put(key: &str, size: usize, fill: char) -> Vec<u8> {
    let value: String = std::iter::repeat_n(fill, size).collect();
    serde_json::json!({"op": "put", "key": key, "value": value})
        .to_string()
        .into_bytes()
}

/// The blob store of the node whose config file is `config` (`data/blobs` beside it).
pub fn blob_dir(config: &Path) -> PathBuf {
    config.with_file_name("data").join("blobs")
}

/// Files in a node's blob directory (named by hash).
pub fn blob_files(config: &Path) -> Vec<String> {
    let dir = blob_dir(config);
    std::fs::read_dir(dir)
        .map(|d| {
            d.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|n| n.len() == 64)
                .collect()
        })
        .unwrap_or_default()
}

/// Uploads `bytes` (`PUT /v1/blobs`) through `c` and returns the hash the node answered.
pub async fn upload_blob(c: &mut Client, bytes: Vec<u8>) -> String {
    let up = c
        .request(hyper::Method::PUT, "/v1/blobs", bytes)
        .await
        .expect("upload");
    assert_eq!(up.status, 200, "{}", String::from_utf8_lossy(&up.body));
    serde_json::from_slice::<serde_json::Value>(&up.body).expect("json")["sha256"]
        .as_str()
        .expect("sha256")
        .to_string()
}
