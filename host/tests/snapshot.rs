//! Backups with real processes (issue #16): `keel snapshot save` from a running cluster, a
//! damaged or cut backup refused by `keel snapshot restore` (and nothing written), and a
//! whole cluster restored from one file into new data directories, serving what was saved.

mod common;

use std::process::Command;
use std::time::Duration;

use common::{keel_exe, kill_all, rt, start_nodes, wait_for_leader};

fn keel(args: &[&str]) -> std::process::Output {
    Command::new(keel_exe())
        .args(args)
        .output()
        .expect("run keel")
}

fn text(o: &std::process::Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

#[test]
fn a_saved_backup_restores_a_whole_cluster_and_a_damaged_one_is_refused() {
    let mut cluster = start_nodes(3, |cfg| cfg.snapshot_every = 100);
    let urls = cluster.urls.clone();
    let endpoints = urls.join(",");
    rt().block_on(async { wait_for_leader(&urls, Duration::from_secs(60)).await });
    for i in 0..250 {
        let o = keel(&[
            "--endpoints",
            &endpoints,
            "put",
            &format!("k{i}"),
            &format!("v{i}"),
        ]);
        assert!(o.status.success(), "put: {}", text(&o));
    }
    let backup = cluster.dir.path().join("cluster.backup");
    let o = keel(&[
        "--endpoints",
        &endpoints,
        "snapshot",
        "save",
        backup.to_str().expect("path"),
    ]);
    assert!(o.status.success(), "save: {}", text(&o));
    assert!(text(&o).contains("saved"), "{}", text(&o));
    let o = keel(&["--endpoints", &endpoints, "put", "after", "the-backup"]);
    assert!(o.status.success(), "put: {}", text(&o));
    kill_all(&mut cluster.children);

    // New data directories for the same members, on new addresses (other ports), as a
    // cluster restored onto other machines: each config's `peers` gives them.
    let elsewhere = cluster.dir.path().join("elsewhere");
    let moved = keel::dev::plan(3, &elsewhere).expect("new ports");
    let mut configs = Vec::new();
    for (i, path) in cluster.configs.iter().enumerate() {
        let mut cfg = keel::config::NodeConfig::load(path).expect("config");
        cfg.listen = moved[i].0.listen;
        cfg.peers = moved[0].0.peers.clone();
        cfg.data_dir = cluster.dir.path().join(format!("restored-{}", i + 1));
        let new = cluster.dir.path().join(format!("restored-{}.json", i + 1));
        std::fs::write(&new, serde_json::to_vec_pretty(&cfg).expect("json")).expect("write");
        configs.push((new, cfg));
    }

    // A backup with a flipped byte, or cut short, is refused, and leaves no node behind.
    let bytes = std::fs::read(&backup).expect("backup");
    let (config, cfg) = &configs[0];
    for (what, bad) in [
        ("flipped", {
            let mut b = bytes.clone();
            let at = b.len() / 2;
            b[at] ^= 0x20;
            b
        }),
        ("cut", bytes[..bytes.len() * 2 / 3].to_vec()),
    ] {
        let path = cluster.dir.path().join(format!("{what}.backup"));
        std::fs::write(&path, bad).expect("write");
        let o = keel(&[
            "snapshot",
            "restore",
            path.to_str().expect("path"),
            "--config",
            config.to_str().expect("path"),
        ]);
        assert!(!o.status.success(), "{what} backup restored: {}", text(&o));
        let _ = std::fs::remove_dir_all(&cfg.data_dir);
    }

    for (config, _) in &configs {
        let o = keel(&[
            "snapshot",
            "restore",
            backup.to_str().expect("path"),
            "--config",
            config.to_str().expect("path"),
        ]);
        assert!(o.status.success(), "restore: {}", text(&o));
    }
    // Restoring over a node is refused.
    let o = keel(&[
        "snapshot",
        "restore",
        backup.to_str().expect("path"),
        "--config",
        configs[0].0.to_str().expect("path"),
    ]);
    assert!(!o.status.success(), "restored over a node: {}", text(&o));

    // Killed however the test ends: a node left running would hold the build lock's file.
    let mut restored = Nodes(
        configs
            .iter()
            .map(|(c, _)| keel::dev::spawn(keel_exe(), c).expect("spawn").0)
            .collect(),
    );
    let urls: Vec<String> = configs.iter().map(|(_, c)| c.url()).collect();
    assert!(
        urls.iter().all(|u| !cluster.urls.contains(u)),
        "the restored nodes listen where the old ones did"
    );
    let endpoints = urls.join(",");
    rt().block_on(async { wait_for_leader(&urls, Duration::from_secs(60)).await });
    // Every member knows the others at their new addresses.
    let status = rt().block_on(common::status(&urls[0])).expect("status");
    let text_of = status.to_string();
    for u in &urls {
        assert!(text_of.contains(u.as_str()), "{u} missing from {text_of}");
    }
    for i in [0, 99, 249] {
        let o = keel(&["--endpoints", &endpoints, "get", &format!("k{i}")]);
        assert!(
            text(&o).contains(&format!("v{i}")),
            "k{i} after the restore: {}",
            text(&o)
        );
    }
    let o = keel(&["--endpoints", &endpoints, "get", "after"]);
    assert!(
        !text(&o).contains("the-backup"),
        "a write after the backup came back: {}",
        text(&o)
    );
    // The restored cluster takes writes.
    let o = keel(&["--endpoints", &endpoints, "put", "new", "write"]);
    assert!(o.status.success(), "put after restore: {}", text(&o));
    kill_all(&mut restored.0);
}

struct Nodes(Vec<std::process::Child>);

impl Drop for Nodes {
    fn drop(&mut self) {
        kill_all(&mut self.0);
    }
}
