//! Real network partitions between real `keel serve` processes: each node runs in a network
//! namespace of its own, joined to the others by a bridge, and a partition is a set of
//! blackhole routes between namespaces. Clients stay in the root namespace and keep talking
//! to every node, the isolated one included, so an isolated leader that still believes it
//! leads is asked for lease reads (issue: lease reads returned stale data after a partition).
//!
//! Needs root (CAP_NET_ADMIN) and `ip` (iproute2). Without them the test says so and passes
//! vacuously, unless `KEEL_REQUIRE_NETNS=1` (set by `.ci/run`), which makes it fail instead.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use keel::client::Client;

mod common;
use common::{find_leader, kill_all, rt, status};
use keel::config::NodeConfig;
use keel_tests::kv::{Op, OpResult};
use keel_tests::linearizability::{Call, Verdict, check};

/// Names are fixed (and cleaned before use) so that a run killed half-way leaves nothing
/// behind after the next run. The subnet is a private one used only inside these
/// namespaces and the bridge this test creates.
const BRIDGE: &str = "keelpbr0";
const SUBNET: &str = "10.213.77";
const PORT: u16 = 7000;

fn ns(id: u64) -> String {
    format!("keelp{id}")
}
fn node_ip(id: u64) -> String {
    format!("{SUBNET}.{id}")
}

fn ip(args: &[&str]) -> Result<(), String> {
    let out = Command::new("ip")
        .args(args)
        .output()
        .map_err(|e| format!("ip {}: {e}", args.join(" ")))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "ip {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

/// Three namespaces on one bridge, the root namespace on it too (for the clients).
struct Net {
    ids: Vec<u64>,
    nodes: Vec<(NodeConfig, PathBuf, Option<Child>)>,
    _dir: tempfile::TempDir,
}

impl Net {
    fn clean(ids: &[u64]) {
        for &id in ids {
            let _ = ip(&["netns", "del", &ns(id)]);
        }
        let _ = ip(&["link", "del", BRIDGE]);
    }

    fn create(n: u64) -> Result<Net, String> {
        let ids: Vec<u64> = (1..=n).collect();
        Net::clean(&ids);
        let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
        ip(&["link", "add", "name", BRIDGE, "type", "bridge"])?;
        ip(&["addr", "add", &format!("{SUBNET}.254/24"), "dev", BRIDGE])?;
        ip(&["link", "set", BRIDGE, "up"])?;
        for &id in &ids {
            let (name, host_end, ns_end) = (ns(id), format!("keelpv{id}"), format!("keelpv{id}n"));
            ip(&["netns", "add", &name])?;
            ip(&[
                "link", "add", &host_end, "type", "veth", "peer", "name", &ns_end,
            ])?;
            ip(&["link", "set", &ns_end, "netns", &name])?;
            ip(&["link", "set", &host_end, "master", BRIDGE])?;
            ip(&["link", "set", &host_end, "up"])?;
            let addr = format!("{}/24", node_ip(id));
            ip(&[
                "netns", "exec", &name, "ip", "addr", "add", &addr, "dev", &ns_end,
            ])?;
            ip(&["netns", "exec", &name, "ip", "link", "set", &ns_end, "up"])?;
            ip(&["netns", "exec", &name, "ip", "link", "set", "lo", "up"])?;
        }
        let peers: std::collections::BTreeMap<u64, String> = ids
            .iter()
            .map(|&id| (id, format!("http://{}:{PORT}", node_ip(id))))
            .collect();
        let mut nodes = Vec::new();
        for &id in &ids {
            let node_dir = dir.path().join(format!("node-{id}"));
            std::fs::create_dir_all(&node_dir).map_err(|e| e.to_string())?;
            let cfg = NodeConfig {
                id,
                cluster_id: "6b65656c-7061-7274-6974-696f6e000001".into(),
                listen: format!("{}:{PORT}", node_ip(id))
                    .parse()
                    .map_err(|e| format!("{e}"))?,
                peers: peers.clone(),
                data_dir: node_dir.join("data"),
                // Private addresses in this test's own network namespaces: plaintext on
                // purpose (a node refuses it beyond loopback unless told, docs/security.md).
                insecure: true,
                ..NodeConfig::default()
            };
            let path = node_dir.join("config.json");
            let json = serde_json::to_vec_pretty(&cfg).map_err(|e| e.to_string())?;
            std::fs::write(&path, json).map_err(|e| e.to_string())?;
            let child = spawn_in(&ns(id), &path)?;
            nodes.push((cfg, path, Some(child)));
        }
        Ok(Net {
            ids,
            nodes,
            _dir: dir,
        })
    }

    fn urls(&self) -> Vec<String> {
        self.nodes.iter().map(|(c, _, _)| c.url()).collect()
    }

    /// Cuts `id` off from every other node (both directions); clients still reach it.
    fn isolate(&self, id: u64) {
        for &other in self.ids.iter().filter(|&&o| o != id) {
            let to_other = format!("{}/32", node_ip(other));
            let to_id = format!("{}/32", node_ip(id));
            ip(&[
                "netns",
                "exec",
                &ns(id),
                "ip",
                "route",
                "add",
                "blackhole",
                &to_other,
            ])
            .expect("partition");
            ip(&[
                "netns",
                "exec",
                &ns(other),
                "ip",
                "route",
                "add",
                "blackhole",
                &to_id,
            ])
            .expect("partition");
        }
    }

    fn heal(&self) {
        for &a in &self.ids {
            for &b in self.ids.iter().filter(|&&b| b != a) {
                let route = format!("{}/32", node_ip(b));
                let _ = ip(&[
                    "netns",
                    "exec",
                    &ns(a),
                    "ip",
                    "route",
                    "del",
                    "blackhole",
                    &route,
                ]);
            }
        }
    }

    fn logs(&self) -> String {
        let mut out = String::new();
        for (c, path, _) in &self.nodes {
            let log = std::fs::read_to_string(path.with_file_name("keel.log")).unwrap_or_default();
            let tail: Vec<&str> = log.lines().rev().take(30).collect();
            out.push_str(&format!("--- node {} (last lines, newest first)\n", c.id));
            for l in tail {
                out.push_str(l);
                out.push('\n');
            }
        }
        out
    }
}

impl Drop for Net {
    fn drop(&mut self) {
        kill_all(
            self.nodes
                .iter_mut()
                .filter_map(|(_, _, child)| child.as_mut()),
        );
        Net::clean(&self.ids);
    }
}

/// `ip netns exec` execs the node, so the child is the node itself.
fn spawn_in(namespace: &str, config: &Path) -> Result<Child, String> {
    let exe = Path::new(env!("CARGO_BIN_EXE_keel"));
    let log_path = config.with_file_name("keel.log");
    let log = std::fs::File::create(&log_path).map_err(|e| e.to_string())?;
    let err = log.try_clone().map_err(|e| e.to_string())?;
    Command::new("ip")
        .args(["netns", "exec", namespace])
        .arg(exe)
        .arg("serve")
        .arg("--config")
        .arg(config)
        .env("RUST_LOG", "info")
        .stdin(Stdio::null())
        .stdout(log)
        .stderr(err)
        .spawn()
        .map_err(|e| format!("spawning keel in {namespace}: {e}"))
}

fn netns_available() -> Result<(), String> {
    let uid = Command::new("id")
        .arg("-u")
        .output()
        .map_err(|e| e.to_string())?;
    if String::from_utf8_lossy(&uid.stdout).trim() != "0" {
        return Err("not root".into());
    }
    ip(&["netns", "list"])
}

/// What one client call was, for the counts printed at the end.
#[derive(Clone, Copy, PartialEq)]
enum Kind {
    Write,
    LeaseRead { node: u64 },
    IndexRead,
}

#[test]
fn lease_reads_stay_linearizable_while_the_leader_is_cut_off_and_healed() {
    if let Err(why) = netns_available() {
        if std::env::var_os("KEEL_REQUIRE_NETNS").is_some() {
            panic!("network namespaces are required (KEEL_REQUIRE_NETNS) but unavailable: {why}");
        }
        eprintln!("SKIPPED: network namespaces unavailable ({why}); run as root to include");
        return;
    }
    let net = match Net::create(3) {
        Ok(net) => net,
        Err(e) => panic!("setting up namespaces: {e}"),
    };
    let urls = net.urls();
    let rt = rt();
    let run_for = Duration::from_secs(22);
    let (history, kinds, isolations) = rt.block_on(async {
        let Some(_) = find_leader(&urls, Duration::from_secs(30)).await else {
            panic!("no leader with the kv plugin\n{}", net.logs());
        };
        let start = Instant::now();
        // The node cut off now (0: none). As in a real partition, clients are on one side or
        // the other: writers reach the majority side, readers are stuck on the cut-off one
        // for most of their reads. This is the classic stale-read shape (Jepsen).
        let cut = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
        let mut tasks = Vec::new();
        // Six clients write and read; three more only read with `lease`.
        for client in 0..9u64 {
            let urls = urls.clone();
            let cut = cut.clone();
            tasks.push(tokio::spawn(async move {
                let majority = |cut: u64| -> Vec<String> {
                    (1..=urls.len() as u64)
                        .filter(|&id| id != cut)
                        .map(|id| urls[id as usize - 1].clone())
                        .collect()
                };
                let mut writer_side = 0;
                let mut writer = Client::new(majority(0));
                let mut calls = Vec::new();
                let mut n = 0u64;
                while start.elapsed() < run_for && n < 600 {
                    n += 1;
                    let key = ((client * 11 + n * 7) % 40) as u8;
                    let k = format!("part-{key}");
                    let value = client * 1_000_000 + n;
                    // Reads go to one node each, chosen in turn, the isolated one included:
                    // 50% writes, 35% lease reads, 15% ReadIndex reads.
                    let now_cut = cut.load(std::sync::atomic::Ordering::Relaxed);
                    let reader = client >= 6;
                    let node = if reader && now_cut != 0 && !n.is_multiple_of(3) {
                        now_cut
                    } else {
                        1 + (n + client) % urls.len() as u64
                    };
                    if !reader && now_cut != writer_side {
                        writer_side = now_cut;
                        writer = Client::new(majority(now_cut));
                    }
                    let (op, kind) = match n % 20 {
                        _ if reader => (Op::Get { key }, Kind::LeaseRead { node }),
                        0..=9 => (Op::Put { key, value }, Kind::Write),
                        10..=16 => (Op::Get { key }, Kind::LeaseRead { node }),
                        _ => (Op::Get { key }, Kind::IndexRead),
                    };
                    let invoke = start.elapsed().as_micros() as u64;
                    let call = async {
                        match kind {
                            Kind::Write => {
                                let b = serde_json::json!({"op": "put", "key": k, "value": value.to_string()});
                                writer.submit("kv", b.to_string().into_bytes()).await
                            }
                            Kind::LeaseRead { node } => {
                                let mut one = Client::new(vec![urls[node as usize - 1].clone()]);
                                let q = serde_json::json!({"op": "get", "key": k}).to_string();
                                one.query("kv", q.into_bytes(), "lease").await
                            }
                            Kind::IndexRead => {
                                let mut one = Client::new(vec![urls[node as usize - 1].clone()]);
                                let q = serde_json::json!({"op": "get", "key": k}).to_string();
                                one.query("kv", q.into_bytes(), "linearizable").await
                            }
                        }
                    };
                    let patience = if kind == Kind::Write { 600 } else { 1_000 };
                    let answer = tokio::time::timeout(Duration::from_millis(patience), call).await;
                    let complete = start.elapsed().as_micros() as u64;
                    let parsed = answer
                        .ok()
                        .and_then(|a| a.ok())
                        .filter(|a| a.status == 200)
                        .and_then(|a| serde_json::from_slice::<serde_json::Value>(&a.body).ok());
                    let num = |v: &serde_json::Value| v.as_str().and_then(|s| s.parse::<u64>().ok());
                    let result = parsed.map(|v| match op {
                        Op::Get { .. } => OpResult::Get(num(&v["value"])),
                        _ => OpResult::Put(num(&v["prev"])),
                    });
                    if matches!(kind, Kind::Write) && result.is_none() {
                        // The write may or may not have happened; a new client (session)
                        // keeps the next one from waiting behind it.
                        writer = Client::new(majority(writer_side));
                    }
                    let complete = if result.is_some() { complete } else { u64::MAX };
                    calls.push((
                        Call {
                            op,
                            invoke,
                            complete,
                            result,
                        },
                        kind,
                    ));
                    tokio::time::sleep(Duration::from_millis(25)).await;
                }
                calls
            }));
        }
        // Partition the current leader away, again and again, while the clients run.
        let mut isolations = Vec::new();
        tokio::time::sleep(Duration::from_secs(2)).await;
        while start.elapsed() + Duration::from_secs(5) < run_for {
            if let Some(l) = find_leader(&urls, Duration::from_secs(3)).await {
                let from = start.elapsed().as_micros() as u64;
                net.isolate(l);
                cut.store(l, std::sync::atomic::Ordering::Relaxed);
                tokio::time::sleep(Duration::from_millis(1_200)).await;
                let mut seen = Vec::new();
                for url in &urls {
                    let s = status(url).await;
                    seen.push(s.map(|s| format!("{}:{}/t{}", s["node_id"], s["role"], s["term"])));
                }
                println!("isolated {l}; 1.2 s later: {seen:?}");
                tokio::time::sleep(Duration::from_millis(800)).await;
                net.heal();
                cut.store(0, std::sync::atomic::Ordering::Relaxed);
                isolations.push((l, from, start.elapsed().as_micros() as u64));
            }
            tokio::time::sleep(Duration::from_millis(1_000)).await;
        }
        let mut history = Vec::new();
        let mut kinds = Vec::new();
        for t in tasks {
            for (call, kind) in t.await.expect("client task") {
                history.push(call);
                kinds.push(kind);
            }
        }
        (history, kinds, isolations)
    });
    let answered = |f: &dyn Fn(&Kind) -> bool| {
        history
            .iter()
            .zip(&kinds)
            .filter(|(c, k)| f(k) && c.result.is_some())
            .count()
    };
    let lease_answered = answered(&|k| matches!(k, Kind::LeaseRead { .. }));
    let writes_answered = answered(&|k| *k == Kind::Write);
    // Lease reads sent to a node while it was cut off as leader, and those answered before
    // the heal: the isolated node answered them itself (it knows no other leader to
    // redirect to), which is right only within its lease, ~350 ms after the cut.
    let mut to_isolated = 0;
    let mut answered_cut_off: Vec<u64> = Vec::new();
    for (c, k) in history.iter().zip(&kinds) {
        let Kind::LeaseRead { node } = k else {
            continue;
        };
        for &(l, from, to) in &isolations {
            if l == *node && c.invoke >= from && c.invoke < to {
                to_isolated += 1;
                if c.result.is_some() && c.complete < to {
                    answered_cut_off.push((c.complete - from) / 1_000);
                }
            }
        }
    }
    println!(
        "{} calls: {writes_answered} writes and {lease_answered} lease reads answered; {} isolations; \
         {to_isolated} lease reads sent to a cut-off leader, {} answered before the heal, the \
         latest {} ms after the cut",
        history.len(),
        isolations.len(),
        answered_cut_off.len(),
        answered_cut_off.iter().max().copied().unwrap_or(0),
    );
    assert!(isolations.len() >= 3, "too few partitions: {isolations:?}");
    assert!(
        writes_answered > 200,
        "too few writes answered: {writes_answered}"
    );
    assert!(
        lease_answered > 200,
        "too few lease reads answered: {lease_answered}"
    );
    assert!(
        to_isolated >= 20,
        "the isolated leaders were asked too few lease reads: {to_isolated}"
    );
    match check(&history, 2_000_000) {
        Verdict::Linearizable => {}
        Verdict::Unknown => panic!("the checker gave up: the history is too big to decide"),
        Verdict::Violation { key } => {
            let calls: Vec<String> = history
                .iter()
                .zip(&kinds)
                .filter(|(c, _)| c.op.key() == key)
                .map(|(c, k)| {
                    let how = match k {
                        Kind::Write => "write".to_string(),
                        Kind::LeaseRead { node } => format!("lease read via {node}"),
                        Kind::IndexRead => "readindex read".to_string(),
                    };
                    format!(
                        "  [{}, {}] {:?} {how} -> {:?}",
                        c.invoke, c.complete, c.op, c.result
                    )
                })
                .collect();
            panic!(
                "not linearizable on key {key} (isolations {isolations:?}):\n{}\n{}",
                calls.join("\n"),
                net.logs()
            );
        }
    }
}
