//! The `keel` command-line interface (design §2). Each subcommand is a thin shell over a
//! library function, so that its logic is tested where it lives.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::{Args, Parser, Subcommand};
use keel::client::Client;
use keel::config::NodeConfig;
use keel_storage::Storage;

#[global_allocator]
static ALLOC: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Keel: a Raft host whose replicated state machines are WebAssembly components.
#[derive(Debug, Parser)]
#[command(name = "keel", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Debug, Subcommand)]
enum Cmd {
    /// Start a local cluster of real `keel serve` processes with the example kv plugin.
    Dev {
        /// Number of nodes (1 to 7).
        #[arg(long, default_value_t = 3)]
        nodes: usize,
        /// Where the nodes keep their data, configs, logs and `cluster.json`.
        #[arg(long, default_value = "keel-dev")]
        dir: PathBuf,
        /// Delete a cluster DIR already holds and start a new one (by default it resumes).
        #[arg(long)]
        fresh: bool,
    },
    /// Run one node.
    Serve(ServeArgs),
    /// Configuration tools.
    Config {
        #[command(subcommand)]
        command: ConfigCmd,
    },
    /// Store a value with the kv plugin.
    Put {
        /// Key.
        key: String,
        /// Value.
        value: String,
        #[command(flatten)]
        endpoints: Endpoints,
    },
    /// Read a value with the kv plugin (linearizable).
    Get {
        /// Key.
        key: String,
        #[command(flatten)]
        endpoints: Endpoints,
    },
    /// Submit a command to any plugin.
    Submit {
        /// Plugin name.
        plugin: String,
        /// Command body.
        body: String,
        #[command(flatten)]
        endpoints: Endpoints,
    },
    /// Deploy a plugin (a WebAssembly component) to the cluster under NAME.
    ///
    /// The leader compiles it, places the bytes on a majority, and commits a Deploy record;
    /// redeploying a name replaces the plugin from that log index on, keeping its state.
    Deploy {
        /// The plugin's name (its KV namespace and URL segment).
        name: String,
        /// The component (`.wasm`).
        file: PathBuf,
        /// Fuel per apply (instructions, roughly).
        #[arg(long)]
        fuel: Option<u64>,
        /// Memory limit per instance, in bytes.
        #[arg(long)]
        memory_bytes: Option<u64>,
        /// A version label (default: from the bytes' hash).
        #[arg(long)]
        version: Option<String>,
        #[command(flatten)]
        endpoints: Endpoints,
    },
    /// Change the membership, one server at a time (thesis §4.1).
    Member {
        #[command(subcommand)]
        command: MemberCmd,
        #[command(flatten)]
        endpoints: Endpoints,
    },
    /// Show a node's status.
    Status {
        #[command(flatten)]
        endpoints: Endpoints,
    },
    /// Print what a node's data directory holds.
    ///
    /// Cluster UUID, node id, term, vote, first/last log index and term, last applied, snapshot
    /// index and plugin namespaces with key counts. Exits non-zero on a missing, corrupt or
    /// foreign file, and while a node has the directory open.
    Inspect {
        /// The node's data directory (as given to `keel serve --data-dir`).
        #[arg(long, value_name = "DIR")]
        data_dir: PathBuf,
    },
}

#[derive(Debug, Subcommand)]
enum MemberCmd {
    /// Add a node as a learner (start it first with `"join": true` in its config).
    Add {
        /// Its id, unique in the cluster.
        id: u64,
        /// Its URL.
        url: String,
    },
    /// Make a learner a voter.
    Promote {
        /// The learner's id.
        id: u64,
    },
    /// Remove a voter or learner.
    Remove {
        /// Its id.
        id: u64,
    },
}

#[derive(Debug, Subcommand)]
enum ConfigCmd {
    /// Print the effective configuration as JSON.
    Show(ServeArgs),
}

#[derive(Debug, Args)]
struct Endpoints {
    /// Comma-separated node URLs.
    #[arg(long, value_delimiter = ',', default_value = "http://127.0.0.1:7001")]
    endpoints: Vec<String>,
}

#[derive(Debug, Args)]
struct ServeArgs {
    /// A JSON config file; flags given too override its fields.
    #[arg(long)]
    config: Option<PathBuf>,
    /// Node id.
    #[arg(long)]
    id: Option<u64>,
    /// Listen address.
    #[arg(long)]
    listen: Option<SocketAddr>,
    /// Peers as `ID=URL,ID=URL` (this node included).
    #[arg(long, value_delimiter = ',')]
    peers: Vec<String>,
    /// Cluster UUID.
    #[arg(long)]
    cluster_id: Option<String>,
    /// Data directory.
    #[arg(long)]
    data_dir: Option<PathBuf>,
}

impl ServeArgs {
    fn resolve(&self) -> anyhow::Result<NodeConfig> {
        let mut cfg = match &self.config {
            Some(path) => NodeConfig::load(path)?,
            None => NodeConfig::default(),
        };
        if let Some(id) = self.id {
            cfg.id = id;
        }
        if let Some(listen) = self.listen {
            cfg.listen = listen;
        }
        if !self.peers.is_empty() {
            let mut peers = BTreeMap::new();
            for p in &self.peers {
                let (id, url) = p
                    .split_once('=')
                    .with_context(|| format!("peer {p:?}: expected ID=URL"))?;
                peers.insert(
                    id.parse().with_context(|| format!("peer id {id:?}"))?,
                    url.to_string(),
                );
            }
            cfg.peers = peers;
        }
        if let Some(c) = &self.cluster_id {
            cfg.cluster_id = c.clone();
        }
        if let Some(d) = &self.data_dir {
            cfg.data_dir = d.clone();
        }
        cfg.check()?;
        Ok(cfg)
    }
}

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the tokio runtime")
}

fn serve(args: &ServeArgs) -> anyhow::Result<()> {
    let cfg = args.resolve()?;
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .init();
    runtime()?.block_on(async move {
        let listener = tokio::net::TcpListener::bind(cfg.listen)
            .await
            .with_context(|| format!("listening on {}", cfg.listen))?;
        let (id, url) = (cfg.id, cfg.url());
        let node = keel::node::start(cfg)?;
        tracing::info!(target: "keel::raft", id, %url, "serving");
        let storage = node.storage.clone();
        let stopping = node.clone();
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
        let stop = async move {
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {}
                _ = term.recv() => {}
            }
            // A clean stop writes the applied state through and makes it durable, so a
            // restart need not replay it (docs/storage.md).
            stopping.flush().await;
            storage.sync()
        };
        tokio::select! {
            served = keel::net::serve(listener, node) => served.context("serving"),
            stopped = stop => Ok(stopped?),
        }
    })
}

fn client_call(
    endpoints: &Endpoints,
    f: impl AsyncFnOnce(&mut Client) -> anyhow::Result<keel::client::Answer>,
) -> ExitCode {
    let result = runtime().and_then(|rt| {
        rt.block_on(async {
            let mut client = Client::new(endpoints.endpoints.clone());
            f(&mut client).await
        })
    });
    match result {
        Ok(answer) => {
            println!("{}", String::from_utf8_lossy(&answer.body).trim_end());
            if answer.status.is_success() {
                ExitCode::SUCCESS
            } else {
                eprintln!("keel: HTTP {}", answer.status);
                ExitCode::FAILURE
            }
        }
        Err(e) => {
            eprintln!("keel: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn fail(context: &str, e: anyhow::Error) -> ExitCode {
    eprintln!("keel {context}: {e:#}");
    ExitCode::FAILURE
}

fn main() -> ExitCode {
    match Cli::parse().command {
        Cmd::Dev { nodes, dir, fresh } => {
            match runtime().and_then(|rt| rt.block_on(keel::dev::run(nodes, dir, fresh))) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => fail("dev", e),
            }
        }
        Cmd::Serve(args) => match serve(&args) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => fail("serve", e),
        },
        Cmd::Config {
            command: ConfigCmd::Show(args),
        } => match args.resolve() {
            Ok(cfg) => {
                println!("{}", serde_json::to_string_pretty(&cfg).unwrap_or_default());
                ExitCode::SUCCESS
            }
            Err(e) => fail("config show", e),
        },
        Cmd::Put {
            key,
            value,
            endpoints,
        } => client_call(&endpoints, async move |c| {
            let body = serde_json::json!({"op": "put", "key": key, "value": value}).to_string();
            c.submit("kv", body.into_bytes()).await
        }),
        Cmd::Get { key, endpoints } => client_call(&endpoints, async move |c| {
            let body = serde_json::json!({"op": "get", "key": key}).to_string();
            c.query("kv", body.into_bytes(), "linearizable").await
        }),
        Cmd::Submit {
            plugin,
            body,
            endpoints,
        } => client_call(&endpoints, async move |c| {
            c.submit(&plugin, body.into_bytes()).await
        }),
        Cmd::Deploy {
            name,
            file,
            fuel,
            memory_bytes,
            version,
            endpoints,
        } => {
            let wasm = match std::fs::read(&file) {
                Ok(b) => b,
                Err(e) => return fail("deploy", anyhow::anyhow!("{}: {e}", file.display())),
            };
            let mut headers = Vec::new();
            if let Some(f) = fuel {
                headers.push(("keel-fuel", f.to_string()));
            }
            if let Some(m) = memory_bytes {
                headers.push(("keel-memory-bytes", m.to_string()));
            }
            if let Some(v) = version {
                headers.push(("keel-version", v));
            }
            client_call(&endpoints, async move |c| {
                c.deploy(&name, wasm, &headers).await
            })
        }
        Cmd::Member { command, endpoints } => {
            client_call(&endpoints, async move |c| match command {
                MemberCmd::Add { id, url } => {
                    let body = serde_json::json!({"id": id, "url": url}).to_string();
                    c.request(hyper::Method::POST, "/v1/admin/members", body.into_bytes())
                        .await
                }
                MemberCmd::Promote { id } => {
                    let path = format!("/v1/admin/members/{id}/promote");
                    c.request(hyper::Method::POST, &path, Vec::new()).await
                }
                MemberCmd::Remove { id } => {
                    let path = format!("/v1/admin/members/{id}");
                    c.request(hyper::Method::DELETE, &path, Vec::new()).await
                }
            })
        }
        Cmd::Status { endpoints } => client_call(&endpoints, async |c| c.get("/v1/status").await),
        // A node keeps its store in DATA_DIR/db (node::start); the operator names DATA_DIR.
        Cmd::Inspect { data_dir } => match keel_storage::inspect(&data_dir.join("db")) {
            Ok(report) => {
                print!("{report}");
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("keel inspect: {e}");
                ExitCode::FAILURE
            }
        },
    }
}
