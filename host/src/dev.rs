//! `keel dev`: a local cluster of real `keel serve` processes on loopback, with the example
//! kv plugin, no configuration needed.

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use serde::{Deserialize, Serialize};

use crate::config::NodeConfig;

/// One node of a dev cluster, as written to `cluster.json`.
#[derive(Debug, Serialize, Deserialize)]
pub struct DevNode {
    /// Node id.
    pub id: u64,
    /// Base URL.
    pub url: String,
    /// Process id.
    pub pid: u32,
    /// Data directory.
    pub data_dir: PathBuf,
    /// The command line that restarts this node as it was.
    pub argv: Vec<String>,
}

/// `cluster.json`.
#[derive(Debug, Serialize, Deserialize)]
pub struct DevCluster {
    /// The nodes.
    pub nodes: Vec<DevNode>,
    /// The CA of a TLS cluster (`keel dev --tls`): the CLI checks the nodes against it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca: Option<PathBuf>,
    /// The token file of user `root` (`keel dev --auth`): the CLI presents it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub admin_token_file: Option<PathBuf>,
}

/// Where `keel dev --auth` keeps user `root`'s token, under the cluster's directory.
pub const ADMIN_TOKEN_FILE: &str = "admin.token";

/// Writes the configs of a new `n`-node cluster under `dir`, on free loopback ports.
pub fn plan(n: usize, dir: &Path) -> anyhow::Result<Vec<(NodeConfig, PathBuf)>> {
    plan_with(n, dir, false)
}

/// [`plan`], over TLS if `tls`: a throw-away CA and a certificate per node in `dir/certs`
/// ([`crate::certs`]), `https://` URLs.
pub fn plan_with(n: usize, dir: &Path, tls: bool) -> anyhow::Result<Vec<(NodeConfig, PathBuf)>> {
    if !(1..=7).contains(&n) {
        bail!("--nodes must be between 1 and 7, not {n}");
    }
    let listeners: Vec<TcpListener> = (0..n)
        .map(|_| TcpListener::bind("127.0.0.1:0"))
        .collect::<Result<_, _>>()
        .context("finding free loopback ports")?;
    let addrs: Vec<_> = listeners
        .iter()
        .map(|l| l.local_addr())
        .collect::<Result<_, _>>()?;
    drop(listeners);
    let peers = addrs
        .iter()
        .enumerate()
        .map(|(i, a)| {
            let scheme = if tls { "https" } else { "http" };
            (i as u64 + 1, format!("{scheme}://{a}"))
        })
        .collect();
    let certs = dir.join("certs");
    if tls {
        // Throw-away: a fresh cluster gets a fresh CA.
        let _ = std::fs::remove_dir_all(&certs);
        crate::certs::init(&certs, "keel dev")?;
    }
    let uuid = random_uuid();
    let mut out = Vec::new();
    for (i, addr) in addrs.iter().enumerate() {
        let id = i as u64 + 1;
        let node_dir = dir.join(format!("node-{id}"));
        std::fs::create_dir_all(&node_dir)
            .with_context(|| format!("creating {}", node_dir.display()))?;
        let tls = match tls {
            true => Some(crate::certs::node(
                &certs,
                id,
                &["127.0.0.1".to_string(), "localhost".to_string()],
            )?),
            false => None,
        };
        let cfg = NodeConfig {
            id,
            cluster_id: uuid.clone(),
            listen: *addr,
            peers: std::collections::BTreeMap::clone(&peers),
            data_dir: node_dir.join("data"),
            tls,
            ..NodeConfig::default()
        };
        let path = node_dir.join("config.json");
        std::fs::write(&path, serde_json::to_vec_pretty(&cfg)?)
            .with_context(|| format!("writing {}", path.display()))?;
        out.push((cfg, path));
    }
    Ok(out)
}

fn random_uuid() -> String {
    let mut bytes = [0u8; 16];
    if let Ok(mut f) = std::fs::File::open("/dev/urandom") {
        use std::io::Read;
        let _ = f.read_exact(&mut bytes);
    }
    if bytes == [0; 16] {
        let t = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos());
        bytes = (t ^ (u128::from(std::process::id()) << 64)).to_be_bytes();
    }
    keel_raft::ClusterId(u128::from_be_bytes(bytes)).to_string()
}

/// Fails if any node exits within `grace`, with the end of its log.
fn watch_start(
    children: &mut [Child],
    plan: &[(NodeConfig, PathBuf)],
    grace: std::time::Duration,
) -> anyhow::Result<()> {
    let until = std::time::Instant::now() + grace;
    while std::time::Instant::now() < until {
        for (child, (cfg, path)) in children.iter_mut().zip(plan) {
            if let Some(status) = child.try_wait()? {
                let log =
                    std::fs::read_to_string(path.with_file_name("keel.log")).unwrap_or_default();
                let tail: Vec<&str> = log.lines().rev().take(5).collect();
                let tail: Vec<&str> = tail.into_iter().rev().collect();
                bail!(
                    "node {} exited at start ({status}):\n{}\n(--fresh starts a new cluster)",
                    cfg.id,
                    tail.join("\n")
                );
            }
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    Ok(())
}

/// Starts one `keel serve --config` process, logging to `keel.log` beside its config.
pub fn spawn(exe: &Path, config: &Path) -> anyhow::Result<(Child, Vec<String>)> {
    spawn_with(exe, config, &[])
}

/// [`spawn`] with more `keel serve` flags after `--config` (`--join URL`, say).
pub fn spawn_with(
    exe: &Path,
    config: &Path,
    flags: &[&str],
) -> anyhow::Result<(Child, Vec<String>)> {
    let mut argv = vec![
        exe.display().to_string(),
        "serve".to_string(),
        "--config".to_string(),
        config.display().to_string(),
    ];
    argv.extend(flags.iter().map(|f| f.to_string()));
    let log_path = config.with_file_name("keel.log");
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&log_path)
        .with_context(|| format!("opening {}", log_path.display()))?;
    let child = Command::new(exe)
        .args(&argv[1..])
        .stdin(Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log)
        .spawn()
        .with_context(|| format!("starting {}", exe.display()))?;
    Ok((child, argv))
}

/// The configs of the cluster `plan` wrote under `dir` before, if there is one.
pub fn existing(dir: &Path) -> anyhow::Result<Option<Vec<(NodeConfig, PathBuf)>>> {
    let mut out = Vec::new();
    for id in 1.. {
        let path = dir.join(format!("node-{id}")).join("config.json");
        if !path.exists() {
            break;
        }
        let text = std::fs::read(&path).with_context(|| format!("reading {}", path.display()))?;
        let cfg: NodeConfig =
            serde_json::from_slice(&text).with_context(|| format!("parsing {}", path.display()))?;
        out.push((cfg, path));
    }
    Ok((!out.is_empty()).then_some(out))
}

/// Runs `keel dev` until Ctrl-C. A directory that already holds a cluster resumes it, data
/// and all, on the same ports (the membership records the nodes' addresses); `fresh`
/// deletes it and starts a new one.
pub async fn run(n: usize, dir: PathBuf, fresh: bool, tls: bool, auth: bool) -> anyhow::Result<()> {
    let exe = std::env::current_exe().context("locating the keel binary")?;
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let dir = dir.canonicalize()?;
    let previous = existing(&dir)?;
    if fresh && let Some(nodes) = &previous {
        for (_, path) in nodes {
            if let Some(node_dir) = path.parent() {
                std::fs::remove_dir_all(node_dir)
                    .with_context(|| format!("removing {}", node_dir.display()))?;
            }
        }
    }
    let token_path = dir.join(ADMIN_TOKEN_FILE);
    if fresh || previous.is_none() {
        // A token of a cluster that is gone.
        let _ = std::fs::remove_file(&token_path);
    }
    // A resumed cluster that has auth keeps it (and its token), --auth or not.
    let auth = auth || token_path.exists();
    let plan = match previous.filter(|_| !fresh) {
        Some(nodes) if nodes.len() != n => bail!(
            "{} holds a {}-node cluster; run with --nodes {} to resume it, --fresh to replace it, or pick another --dir",
            dir.display(),
            nodes.len(),
            nodes.len()
        ),
        Some(nodes) if nodes[0].0.tls.is_some() != tls => bail!(
            "{} holds a cluster {} TLS; run {} --tls to resume it, or --fresh to replace it",
            dir.display(),
            if tls { "without" } else { "with" },
            if tls { "without" } else { "with" },
        ),
        Some(nodes) => {
            for (cfg, _) in &nodes {
                if let Err(e) = TcpListener::bind(cfg.listen) {
                    bail!(
                        "resuming the cluster in {}: {} is taken ({e}); stop what uses it, or run with --fresh",
                        dir.display(),
                        cfg.listen
                    );
                }
            }
            println!(
                "resuming the cluster in {} (--fresh starts over)",
                dir.display()
            );
            nodes
        }
        None => plan_with(n, &dir, tls)?,
    };
    // The CLI reads this from cluster.json; this process needs it to see the leader.
    let ca = plan[0].0.tls.as_ref().map(|t| t.ca.clone());
    if let Some(ca) = &ca {
        crate::tls::install(crate::tls::Tls::client_only(ca)?);
    }
    let mut children: Vec<Child> = Vec::new();
    let mut nodes = Vec::new();
    for (cfg, path) in &plan {
        let (child, argv) = spawn(&exe, path)?;
        let url = cfg.url();
        println!("node {}  {url}  pid {}", cfg.id, child.id());
        nodes.push(DevNode {
            id: cfg.id,
            url,
            pid: child.id(),
            data_dir: cfg.data_dir.clone(),
            argv,
        });
        children.push(child);
    }
    // A node that cannot start (a port taken meanwhile, a data directory it refuses) exits
    // within moments: say so, with its log, instead of listing a cluster that is not there.
    if let Err(e) = watch_start(&mut children, &plan, std::time::Duration::from_secs(2)) {
        for mut c in children {
            let _ = c.kill();
            let _ = c.wait();
        }
        return Err(e);
    }
    let cluster_file = dir.join("cluster.json");
    let mut cluster = DevCluster {
        nodes,
        ca: ca.clone(),
        admin_token_file: None,
    };
    std::fs::write(&cluster_file, serde_json::to_vec_pretty(&cluster)?)?;
    if token_path.exists() {
        // A resumed cluster with auth: this process reads the status with root's token.
        crate::client::install_token(crate::auth::bootstrap::token_file(&token_path)?);
    }
    let endpoints: Vec<String> = plan.iter().map(|(c, _)| c.url()).collect();
    // Ctrl-C or a plain `kill`, from here on: either way the children go too, never
    // orphaned. One listener of each for both waits below, so no signal falls between them.
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    let ctrl_c = tokio::signal::ctrl_c();
    tokio::pin!(ctrl_c);
    // The lines below promise that `keel put` works now: say so only once it does.
    let ready = tokio::select! {
        r = &mut ctrl_c => { r.context("waiting for Ctrl-C")?; None }
        _ = term.recv() => None,
        leader = wait_for_leader(&endpoints, LEADER_WAIT) => Some(leader),
    };
    match ready {
        None => {
            stop(children);
            return Ok(());
        }
        Some(Some((id, took))) => {
            println!("leader: node {id} (ready in {:.1} s)", took.as_secs_f64());
            if auth {
                enable_auth(&endpoints, &token_path).await?;
                cluster.admin_token_file = Some(token_path.clone());
                std::fs::write(&cluster_file, serde_json::to_vec_pretty(&cluster)?)?;
                println!(
                    "authentication on: user root's token is in {} (the CLI reads it from cluster.json)",
                    token_path.display()
                );
            }
        }
        Some(None) => eprintln!(
            "no leader after {} s: the nodes' logs may say why ({}/node-*/keel.log)",
            LEADER_WAIT.as_secs(),
            dir.display()
        ),
    }
    println!(
        "cluster: {}  (logs: {}/node-*/keel.log)",
        cluster_file.display(),
        dir.display()
    );
    // In this directory the CLI finds the cluster by itself (`keel-dev/cluster.json`);
    // anywhere else, the one line below tells it.
    println!(
        "export {}={}",
        crate::cli::ENDPOINTS_VAR,
        endpoints.join(",")
    );
    if let Some(ca) = &ca {
        println!("export {}={}", crate::cli::CA_VAR, ca.display());
    }
    if cluster.admin_token_file.is_some() {
        println!(
            "export {}={}",
            crate::cli::TOKEN_FILE_VAR,
            token_path.display()
        );
    }
    println!(
        "try:     keel put hello world && keel get hello && keel status  (from this directory, or after the export)"
    );
    println!("Ctrl-C stops the cluster.");
    tokio::select! {
        r = &mut ctrl_c => r.context("waiting for Ctrl-C")?,
        _ = term.recv() => {}
    }
    stop(children);
    Ok(())
}

fn stop(children: Vec<Child>) {
    for mut c in children {
        let _ = c.kill();
        let _ = c.wait();
    }
    println!("stopped");
}

/// How long `keel dev` waits for a leader before it prints the cluster anyway.
const LEADER_WAIT: Duration = Duration::from_secs(60);

/// Waits until a node leads with the kv plugin active (so a `keel put` now succeeds), with
/// a spinner on a terminal; `(leader, time taken)`, or `None` after `limit`.
/// `keel dev --auth`: user `root` with the token in `path` (made now, or kept from before).
async fn enable_auth(endpoints: &[String], path: &Path) -> anyhow::Result<()> {
    use crate::auth::bootstrap::{Initialised, init, token_file};
    let mut client = crate::client::Client::new(endpoints.to_vec()).with_deadline(LEADER_WAIT);
    match init(&mut client, path).await? {
        Initialised::Done => {}
        Initialised::HadUsers(why) => bail!(
            "the cluster has users, and not the token in {}: {why}",
            path.display()
        ),
    }
    crate::client::install_token(token_file(path)?);
    Ok(())
}

async fn wait_for_leader(endpoints: &[String], limit: Duration) -> Option<(u64, Duration)> {
    let bar = crate::cli::progress_bar();
    bar.set_style(crate::cli::waiting_style());
    bar.set_message("waiting for a leader");
    bar.enable_steady_tick(Duration::from_millis(100));
    let start = Instant::now();
    let found = loop {
        let statuses = futures_util::future::join_all(
            endpoints
                .iter()
                .map(|url| crate::cli::node_status(url, Duration::from_millis(500))),
        )
        .await;
        let answered: Vec<&serde_json::Value> = statuses.iter().flatten().collect();
        let leader = answered
            .iter()
            .filter(|s| {
                s["role"] == "Leader"
                    && s["plugins"]
                        .as_array()
                        .is_some_and(|p| p.iter().any(|n| n == "kv"))
            })
            .max_by_key(|s| s["term"].as_u64().unwrap_or(0))
            .and_then(|s| s["node_id"].as_u64());
        if let Some(id) = leader {
            break Some((id, start.elapsed()));
        }
        if start.elapsed() >= limit {
            break None;
        }
        bar.set_message(format!(
            "waiting for a leader ({} of {} nodes answer)",
            answered.len(),
            endpoints.len()
        ));
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    bar.finish_and_clear();
    found
}
