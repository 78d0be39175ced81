//! The watched plugin folder and the plugin life cycle on real `keel serve` processes
//! (docs/plugins.md): files dropped into one follower's folder deploy cluster-wide, the
//! same bytes again propose nothing, files being written, dotfiles, backups and
//! non-components change nothing in the cluster, a new version switches every node at one
//! index, a rollback survives the folder and a restart, and an undeploy makes commands 404.

use std::path::{Path, PathBuf};

use std::time::{Duration, Instant};

use keel::client::Client;
use serde_json::Value;

mod common;
use common::{
    ProcessCluster, keel_exe, kill_all, rt, start_nodes, wait_for_leader, wait_for_same_state,
};

const DEBOUNCE_MS: u64 = 400;

fn start(n: usize) -> ProcessCluster {
    start_nodes(n, |cfg| cfg.plugin_debounce_ms = DEBOUNCE_MS)
}

/// A node's plugin folder (the default: `DATA_DIR/plugins`).
fn folder(config: &Path) -> PathBuf {
    let cfg = keel::config::NodeConfig::load(config).expect("config");
    cfg.plugins_dir()
}

/// `plugins/counter` built for wasm32-wasip2.
fn counter_wasm() -> Vec<u8> {
    common::guest_plugin("keel-plugin-counter", "keel_plugin_counter")
}

fn sha(bytes: &[u8]) -> String {
    keel::blobs::hex(&keel::blobs::sha256(bytes))
}

/// Writes `bytes` beside `path` and renames it in (a complete file at once).
fn drop_in(path: &Path, bytes: &[u8]) {
    let part = path.with_extension("wasm.part");
    std::fs::write(&part, bytes).expect("write");
    std::fs::rename(&part, path).expect("rename");
}

fn marker(dir: &Path, suffix: &str) -> Option<Value> {
    let text = std::fs::read(dir.join(format!("app.wasm.{suffix}"))).ok()?;
    serde_json::from_slice(&text).ok()
}

/// Waits for `app.wasm.{suffix}` about bytes hashing to `hash`.
fn wait_marker(dir: &Path, suffix: &str, hash: &str) -> Value {
    let start = Instant::now();
    loop {
        if let Some(m) = marker(dir, suffix)
            && m["sha256"] == hash
        {
            return m;
        }
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "no {suffix} marker for {hash}: {:?} {:?}",
            marker(dir, "deployed"),
            marker(dir, "failed")
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

async fn plugin(url: &str, name: &str) -> (u16, Value) {
    let mut c = Client::new(vec![url.to_string()]);
    let a = c
        .get(&format!("/v1/plugins/{name}"))
        .await
        .expect("GET plugin");
    let v = serde_json::from_slice(&a.body).unwrap_or_default();
    (a.status.as_u16(), v)
}

/// Waits until every node has `app` active with bytes hashing to `hash`; returns the index
/// each says it became active at (they must agree).
async fn wait_active_everywhere(urls: &[String], hash: &str) -> u64 {
    let start = Instant::now();
    loop {
        let mut at = Vec::new();
        for url in urls {
            let (_, v) = plugin(url, "app").await;
            if v["current"]["sha256"] == hash {
                at.push(v["current"]["index"].as_u64().unwrap_or(0));
            }
        }
        if at.len() == urls.len() {
            assert!(
                at.windows(2).all(|w| w[0] == w[1]),
                "indexes differ: {at:?}"
            );
            return at[0];
        }
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "{hash} not active everywhere"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn submit(url: &str, body: Value) -> (u16, String) {
    let mut c = Client::new(vec![url.to_string()]).with_deadline(Duration::from_secs(30));
    let a = c
        .submit("app", body.to_string().into_bytes())
        .await
        .expect("submit");
    (
        a.status.as_u16(),
        String::from_utf8_lossy(&a.body).into_owned(),
    )
}

fn history_len(v: &Value) -> usize {
    v["history"].as_array().map_or(0, Vec::len)
}

#[test]
fn plugins_dropped_into_one_folder_run_everywhere_and_their_life_cycle_is_explicit() {
    let counter = counter_wasm();
    let kv = keel::state::BUILTIN_KV.to_vec();
    let (kv_hash, counter_hash) = (sha(&kv), sha(&counter));
    let mut cluster = start(3);
    let rt = rt();
    let urls = cluster.urls.clone();
    let leader = rt.block_on(wait_for_leader(&urls, Duration::from_secs(60)));
    // Drop into a follower's folder; command through another node.
    let f = (1..=3u64).find(|&id| id != leader).expect("a follower") as usize - 1;
    let other = urls[(f + 1) % 3].clone();
    let dir = folder(&cluster.configs[f]);
    let app = dir.join("app.wasm");
    let put = serde_json::json!({"op": "put", "key": "k", "value": "v"});
    let add = serde_json::json!({"op": "add", "name": "c", "by": 2});

    // 1. A complete plugin: deployed on every node, marker written, commands work elsewhere.
    drop_in(&app, &kv);
    let m = wait_marker(&dir, "deployed", &kv_hash);
    let v1_index = rt.block_on(wait_active_everywhere(&urls, &kv_hash));
    assert_eq!(m["index"].as_u64(), Some(v1_index), "{m}");
    assert!(
        m["version"].is_string() && m["at_ms"].as_u64() > Some(0),
        "{m}"
    );
    assert_eq!(rt.block_on(submit(&other, put.clone())).0, 200);

    // 2. The same bytes again, written in place: nothing proposed. Without its marker (as
    //    after a restart that lost it) the leader is asked, and says the bytes are active.
    let quiet = || std::thread::sleep(Duration::from_millis(DEBOUNCE_MS * 4));
    std::fs::write(&app, &kv).expect("rewrite");
    quiet();
    std::fs::remove_file(dir.join("app.wasm.deployed")).expect("remove marker");
    std::fs::write(&app, &kv).expect("rewrite");
    let m = wait_marker(&dir, "deployed", &kv_hash);
    assert_eq!(m["index"].as_u64(), Some(v1_index), "{m}");
    let (_, v) = rt.block_on(plugin(&urls[0], "app"));
    assert_eq!(
        history_len(&v),
        1,
        "the same bytes were proposed again: {v}"
    );

    // 3. A truncated copy written in place, growing more slowly than the debounce: never
    //    read while it grows; once it stops, refused as not a component; v1 keeps serving.
    {
        use std::io::Write;
        let mut file = std::fs::File::create(&app).expect("truncate");
        let half = &counter[..counter.len() / 2];
        let mut last = Instant::now();
        for chunk in half.chunks(half.len() / 12 + 1) {
            file.write_all(chunk).expect("write");
            file.flush().expect("flush");
            // A loaded machine may stall this thread past the debounce: then the file did
            // stand still that long, and reading it was right.
            let stalled = last.elapsed() >= Duration::from_millis(DEBOUNCE_MS * 3 / 4);
            last = Instant::now();
            std::thread::sleep(Duration::from_millis(DEBOUNCE_MS / 4));
            let read = marker(&dir, "failed");
            assert!(
                stalled || read.is_none(),
                "a growing file was read: {read:?}"
            );
        }
        let hash = sha(half);
        let failed = wait_marker(&dir, "failed", &hash);
        assert!(failed["reason"].is_string(), "{failed}");
        assert!(
            !dir.join("app.wasm.deployed").exists(),
            "one marker at a time"
        );
    }
    let (_, v) = rt.block_on(plugin(&other, "app"));
    assert_eq!(v["current"]["sha256"], kv_hash.as_str(), "{v}");
    assert_eq!(rt.block_on(submit(&other, put.clone())).0, 200);

    // 4. Dotfiles and backups are ignored, even holding a valid component.
    std::fs::write(dir.join(".app.wasm"), &counter).expect("dotfile");
    std::fs::write(dir.join("app.wasm.bak"), &counter).expect("backup");
    std::fs::write(dir.join("app.old.wasm"), &counter).expect("backup");
    quiet();
    let (_, v) = rt.block_on(plugin(&urls[0], "app"));
    assert_eq!(v["current"]["sha256"], kv_hash.as_str(), "{v}");
    assert_eq!(history_len(&v), 1, "{v}");
    let (status, _) = rt.block_on(plugin(&urls[0], "app.old"));
    assert_eq!(status, 404);

    // 5. Not a component (a core module): `.failed` with the reason; v1 keeps serving.
    let core = b"\0asm\x01\0\0\0".to_vec();
    drop_in(&app, &core);
    let failed = wait_marker(&dir, "failed", &sha(&core));
    assert!(
        failed["reason"].as_str().is_some_and(|r| !r.is_empty()),
        "{failed}"
    );
    assert_eq!(rt.block_on(submit(&other, put.clone())).0, 200);

    // 6. A new version: every node switches at one index; state hashes agree.
    drop_in(&app, &counter);
    let m = wait_marker(&dir, "deployed", &counter_hash);
    let v2_index = rt.block_on(wait_active_everywhere(&urls, &counter_hash));
    assert_eq!(m["index"].as_u64(), Some(v2_index));
    assert!(v2_index > v1_index);
    assert_eq!(rt.block_on(submit(&other, add.clone())).0, 200);
    assert_eq!(
        rt.block_on(submit(&other, put.clone())).0,
        422,
        "kv's command"
    );
    rt.block_on(wait_for_same_state(&urls, Duration::from_secs(20)));

    // 7. Rollback: v1 again at a new index. The folder still holds v2 with its marker, so it
    //    does not undo the rollback, not even after a restart of the node that watches it.
    let mut c = Client::new(vec![other.clone()]).with_deadline(Duration::from_secs(30));
    let a = rt
        .block_on(c.request(hyper::Method::POST, "/v1/plugins/app/rollback", Vec::new()))
        .expect("rollback");
    assert_eq!(
        a.status.as_u16(),
        200,
        "{}",
        String::from_utf8_lossy(&a.body)
    );
    let v3_index = rt.block_on(wait_active_everywhere(&urls, &kv_hash));
    assert!(v3_index > v2_index);
    assert_eq!(rt.block_on(submit(&other, put.clone())).0, 200);
    kill_all(std::iter::once(&mut cluster.children[f]));
    cluster.children[f] = keel::dev::spawn(keel_exe(), &cluster.configs[f])
        .expect("restart")
        .0;
    rt.block_on(wait_for_same_state(&urls, Duration::from_secs(30)));
    quiet();
    let (_, v) = rt.block_on(plugin(&urls[f], "app"));
    assert_eq!(v["current"]["sha256"], kv_hash.as_str(), "{v}");
    assert_eq!(history_len(&v), 3, "the restart redeployed: {v}");

    // 8. Undeploy: commands 404 on every node; the history stays. Removing the file
    //    undeploys nothing and deploys nothing.
    let a = rt
        .block_on(c.request(hyper::Method::DELETE, "/v1/plugins/app", Vec::new()))
        .expect("undeploy");
    assert_eq!(
        a.status.as_u16(),
        200,
        "{}",
        String::from_utf8_lossy(&a.body)
    );
    std::fs::remove_file(&app).expect("remove");
    rt.block_on(wait_for_same_state(&urls, Duration::from_secs(20)));
    for url in &urls {
        assert_eq!(rt.block_on(submit(url, put.clone())).0, 404, "{url}");
        let (status, v) = rt.block_on(plugin(url, "app"));
        assert_eq!(status, 200);
        assert_eq!(v["active"], false, "{v}");
        assert_eq!(history_len(&v), 3, "{v}");
    }
    let mut c = Client::new(vec![urls[0].clone()]);
    let a = rt.block_on(c.get("/v1/plugins")).expect("list");
    let list: Value = serde_json::from_slice(&a.body).expect("json");
    let names: Vec<&str> = list["plugins"]
        .as_array()
        .expect("plugins")
        .iter()
        .filter_map(|p| p["plugin"].as_str())
        .collect();
    assert_eq!(names, ["app", "kv"], "{list}");
}
