//! The `keel` command-line interface (design §2). Each subcommand is a thin shell over a
//! library function, so that its logic is tested where it lives.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use std::time::Duration;

use anyhow::Context;
use clap::{Args, CommandFactory, Parser, Subcommand, ValueEnum};
use keel::cli::exit;
use keel::client::{Answer, Client};
use keel::config::NodeConfig;
use keel_storage::Storage;

#[global_allocator]
static ALLOC: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Keel: a Raft host whose replicated state machines are WebAssembly components.
#[derive(Debug, Parser)]
#[command(name = "keel", version, about)]
struct Cli {
    #[command(flatten)]
    global: Global,
    #[command(subcommand)]
    command: Cmd,
}

/// Connection and output flags: `global`, so they go anywhere on the command line
/// (`keel member add 4 URL --endpoints …` as much as `keel --endpoints … member add 4 URL`).
#[derive(Debug, Args)]
struct Global {
    /// Comma-separated node URLs [default: $KEEL_ENDPOINTS, else the nodes in
    /// ./keel-dev/cluster.json, else http://127.0.0.1:7001].
    #[arg(long, global = true, value_delimiter = ',', value_name = "URLS")]
    endpoints: Vec<String>,
    /// Output: `table` for people, `json` for scripts.
    #[arg(short, long, global = true, value_enum, default_value_t = Output::Table)]
    output: Output,
    /// Give up after this many seconds, retries included.
    #[arg(long, global = true, value_name = "SECONDS", default_value = "30", value_parser = seconds)]
    timeout: Duration,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum Lang {
    /// cargo (wasm32-wasip2).
    Rust,
    /// componentize-py.
    Python,
    /// jco (componentize-js).
    Js,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum Output {
    /// Lines and tables for people.
    Table,
    /// JSON for scripts.
    Json,
}

fn seconds(s: &str) -> Result<Duration, String> {
    s.parse::<f64>()
        .ok()
        .filter(|v| v.is_finite() && *v > 0.0)
        .map(Duration::from_secs_f64)
        .ok_or_else(|| format!("{s:?}: expected a positive number of seconds"))
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
        /// Serve over TLS with mutually authenticated peers: a throw-away CA and node
        /// certificates in DIR/certs, the CA's path in DIR/cluster.json for the CLI.
        #[arg(long)]
        tls: bool,
    },
    /// Make certificates for a TLS cluster (docs/security.md).
    Certs {
        #[command(subcommand)]
        command: CertsCmd,
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
    },
    /// Read a value with the kv plugin (linearizable).
    Get {
        /// Key.
        key: String,
    },
    /// Submit a command to any plugin.
    Submit {
        /// Plugin name.
        plugin: String,
        /// Command body.
        body: String,
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
    },
    /// Start a plugin project: the state machine skeleton, its build, a README.
    New {
        /// The plugin's name (also the package's).
        name: String,
        /// The language.
        #[arg(long, value_enum, default_value_t = Lang::Rust)]
        lang: Lang,
        /// Where to write it [default: ./NAME].
        #[arg(long)]
        dir: Option<PathBuf>,
    },
    /// List the plugins: active version, hash, the index it became active at, limits.
    Plugins,
    /// Re-activate an earlier version of a plugin at a new log index.
    ///
    /// Without VERSION: the newest version whose bytes differ from the active ones.
    Rollback {
        /// The plugin.
        name: String,
        /// A version label or a sha256 prefix (8 hex digits at least).
        version: Option<String>,
    },
    /// Deactivate a plugin: its commands then get 404; its state and history are kept.
    Undeploy {
        /// The plugin.
        name: String,
    },
    /// Change the membership, one server at a time (thesis §4.1).
    Member {
        #[command(subcommand)]
        command: MemberCmd,
    },
    /// Show every member: role, term, commit and applied index, lag, health.
    Status,
    /// List the members: voters and learners with their URLs.
    Members,
    /// Follow a node's events (role, term, leader, configuration changes), one line each.
    Watch,
    /// Print a shell completion script (e.g. `source <(keel completions bash)`).
    Completions {
        /// The shell.
        shell: clap_complete::Shell,
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
enum CertsCmd {
    /// Create a cluster CA in DIR (`ca.pem`, `ca-key.pem`; keep the key offline).
    Init {
        /// Where to write it.
        dir: PathBuf,
        /// A name for the CA's subject.
        #[arg(long, default_value = "keel")]
        name: String,
    },
    /// Issue node ID's certificate from the CA in DIR (`node-ID.pem`, `node-ID-key.pem`).
    Node {
        /// The node's id (the certificate binds it: the node may only speak as this id).
        id: u64,
        /// The directory holding the CA.
        dir: PathBuf,
        /// Host names or IP addresses in the node's URL [default: 127.0.0.1, localhost].
        #[arg(long = "host", value_name = "HOST")]
        hosts: Vec<String>,
    },
}

#[derive(Debug, Subcommand)]
enum ConfigCmd {
    /// Print the effective configuration as JSON.
    Show(ServeArgs),
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
    /// The watched plugin folder [default: DATA_DIR/plugins].
    #[arg(long)]
    plugins_dir: Option<PathBuf>,
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
        if let Some(d) = &self.plugins_dir {
            cfg.plugins_dir = Some(d.clone());
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
    match &cfg.tls {
        Some(files) => keel::tls::install(
            keel::tls::Tls::node(files).context("loading the TLS files named in the config")?,
        ),
        None if cfg.insecure => tracing::warn!(
            target: "keel::tls",
            listen = %cfg.listen,
            "serving WITHOUT TLS (\"insecure\": true): anyone who can reach this port can read the traffic, submit commands and pose as a peer"
        ),
        None => {}
    }
    runtime()?.block_on(async move {
        let listener = tokio::net::TcpListener::bind(cfg.listen)
            .await
            .with_context(|| format!("listening on {}", cfg.listen))?;
        let (id, url) = (cfg.id, cfg.url());
        let node = keel::driver::start(cfg.clone())?;
        keel::plugin_dir::spawn(&cfg)?;
        tracing::info!(target: "keel::raft", id, %url, "serving");
        let storage = node.storage.clone();
        tokio::spawn(keel::http::blob_gc::run(node.clone()));
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
            served = keel::http::serve(listener, node) => served.context("serving"),
            stopped = stop => Ok(stopped?),
        }
    })
}

/// What a client command needs: where the cluster is, how to print, how long to try.
struct Ctx {
    endpoints: Vec<String>,
    source: keel::cli::EndpointSource,
    output: Output,
    timeout: Duration,
}

impl Ctx {
    fn new(g: &Global) -> anyhow::Result<Ctx> {
        let env = std::env::var(keel::cli::ENDPOINTS_VAR).ok();
        let cwd = std::env::current_dir().context("reading the current directory")?;
        let (endpoints, source) = keel::cli::resolve_endpoints(&g.endpoints, env.as_deref(), &cwd)?;
        let ca = std::env::var(keel::cli::CA_VAR).ok();
        if let Some(ca) = keel::cli::resolve_ca(ca.as_deref(), &cwd)? {
            let tls = keel::tls::Tls::client_only(&ca)
                .with_context(|| format!("loading the cluster CA ({})", keel::cli::CA_VAR))?;
            keel::tls::install(tls);
        }
        Ok(Ctx {
            endpoints,
            source,
            output: g.output,
            timeout: g.timeout,
        })
    }

    fn client(&self) -> Client {
        Client::new(self.endpoints.clone()).with_deadline(self.timeout)
    }

    /// How long to wait for one member in `keel status` (the others are asked meanwhile).
    fn per_node(&self) -> Duration {
        self.timeout.min(Duration::from_secs(2))
    }

    /// Reports a call that got no answer; returns its exit code.
    fn failed(&self, context: &str, e: &anyhow::Error) -> ExitCode {
        let code = keel::cli::exit_for_error(e);
        let mut message = format!("{e:#}");
        if code == exit::UNREACHABLE {
            // The commonest cause is the wrong cluster: say where the URLs came from.
            message.push_str(&format!(" (endpoints from {})", self.source));
        }
        match self.output {
            Output::Json => println!(
                "{}",
                serde_json::json!({"error": message, "exit_code": code})
            ),
            Output::Table => eprintln!("keel {context}: {message}"),
        }
        ExitCode::from(code)
    }
}

/// How a command's successful answer reads for people.
#[derive(Clone, Copy)]
enum Shown {
    /// The body as it is (the plugin's answer).
    Raw,
    /// `OK (index N)`.
    Put,
    /// The kv plugin's value, or nothing if the key is absent.
    Get,
    /// The configuration now in force.
    Members,
    /// `GET /v1/plugins` as a table.
    Plugins,
}

fn show(ctx: &Ctx, context: &str, answer: &Answer, shown: Shown) -> ExitCode {
    let code = keel::cli::exit_for_status(answer.status);
    let body: Option<serde_json::Value> = serde_json::from_slice(&answer.body).ok();
    let text = String::from_utf8_lossy(&answer.body);
    if ctx.output == Output::Json {
        let result = body.clone().unwrap_or_else(|| text.trim_end().into());
        println!(
            "{}",
            serde_json::json!({"status": answer.status.as_u16(), "index": answer.index, "result": result})
        );
        return ExitCode::from(code);
    }
    if code != exit::OK {
        let reason = match &body {
            Some(v) if v["error"].is_string() => {
                let mut r = v["error"].as_str().unwrap_or("").to_string();
                if v["outcome"] == "unknown" {
                    // A new `keel` process has a new session: a retry may apply it twice.
                    r.push_str(": it may or may not have been applied");
                }
                if let Some(d) = v["detail"].as_str() {
                    r = format!("{r}: {d}");
                }
                r
            }
            _ => text.trim_end().to_string(),
        };
        eprintln!("keel {context}: {reason} (HTTP {})", answer.status);
        return ExitCode::from(code);
    }
    match (shown, &body) {
        (Shown::Put, _) => match answer.index {
            Some(i) => println!("OK (index {i})"),
            None => println!("OK"),
        },
        (Shown::Get, Some(v)) if v.get("value").is_some() => match &v["value"] {
            serde_json::Value::String(s) => println!("{s}"),
            serde_json::Value::Null => {}
            other => println!("{other}"),
        },
        (Shown::Members, Some(v)) => {
            let event = serde_json::json!({"type": "config", "index": v["index"], "voters": v["voters"], "learners": v["learners"]});
            println!("{}", keel::cli::event_line(&event));
        }
        (Shown::Plugins, Some(v)) => print!("{}", keel::cli_plugins::render_plugins(v)),
        _ => println!("{}", text.trim_end()),
    }
    ExitCode::SUCCESS
}

fn client_call(
    global: &Global,
    context: &str,
    shown: Shown,
    f: impl AsyncFnOnce(&mut Client) -> anyhow::Result<Answer>,
) -> ExitCode {
    let ctx = match Ctx::new(global) {
        Ok(c) => c,
        Err(e) => return fail(context, e),
    };
    let result = runtime().and_then(|rt| rt.block_on(async { f(&mut ctx.client()).await }));
    match result {
        Ok(answer) => show(&ctx, context, &answer, shown),
        Err(e) => ctx.failed(context, &e),
    }
}

fn fail(context: &str, e: anyhow::Error) -> ExitCode {
    eprintln!("keel {context}: {e:#}");
    ExitCode::from(exit::ERROR)
}

/// `keel status` and `keel members`.
fn cluster(global: &Global, members_only: bool) -> ExitCode {
    let context = if members_only { "members" } else { "status" };
    let ctx = match Ctx::new(global) {
        Ok(c) => c,
        Err(e) => return fail(context, e),
    };
    let per_node = ctx.per_node();
    let result = runtime().and_then(|rt| {
        rt.block_on(async {
            if members_only {
                let (status, _) = keel::cli::membership(&ctx.endpoints, per_node).await?;
                let members = keel::cli::members_of(&status);
                let leader = status["leader_id"].as_u64();
                Ok(match ctx.output {
                    Output::Table => keel::cli::render_members(&members, leader),
                    Output::Json => {
                        let list: Vec<_> = members
                            .iter()
                            .map(|(id, url, voter)| serde_json::json!({"id": id, "url": url, "voter": voter}))
                            .collect();
                        format!("{}\n", serde_json::json!({"leader": leader, "members": list}))
                    }
                })
            } else {
                let s = keel::cli::cluster_status(&ctx.endpoints, per_node).await?;
                Ok(match ctx.output {
                    Output::Table => keel::cli::render_status(&s),
                    Output::Json => format!("{}\n", serde_json::to_string(&s)?),
                })
            }
        })
    });
    match result {
        Ok(text) => {
            print!("{text}");
            ExitCode::SUCCESS
        }
        Err(e) => ctx.failed(context, &e),
    }
}

/// `keel watch`: follows `GET /v1/events` on the first endpoint that serves it, and moves to
/// the next when that node goes away; gives up once no endpoint has served it for `--timeout`.
fn watch(global: &Global) -> ExitCode {
    let ctx = match Ctx::new(global) {
        Ok(c) => c,
        Err(e) => return fail("watch", e),
    };
    let result = runtime().and_then(|rt| rt.block_on(follow_events(&ctx)));
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => ctx.failed("watch", &e),
    }
}

async fn follow_events(ctx: &Ctx) -> anyhow::Result<()> {
    use http_body_util::BodyExt;
    use std::io::Write;
    let http = keel::tls::client::<http_body_util::Empty<bytes::Bytes>>();
    let mut lost_since = std::time::Instant::now();
    let mut last_error = String::new();
    let mut stdout = std::io::stdout();
    for attempt in 0.. {
        if lost_since.elapsed() >= ctx.timeout {
            break;
        }
        let url = &ctx.endpoints[attempt % ctx.endpoints.len()];
        let req = hyper::Request::get(format!("{url}/v1/events"))
            .body(http_body_util::Empty::new())
            .context("building the request")?;
        let resp = match tokio::time::timeout(ctx.per_node(), http.request(req)).await {
            Ok(Ok(r)) if r.status().is_success() => r,
            Ok(Ok(r)) => {
                last_error = format!("{url}: HTTP {}", r.status());
                tokio::time::sleep(Duration::from_millis(200)).await;
                continue;
            }
            Ok(Err(e)) => {
                last_error = format!("{url}: {e}");
                tokio::time::sleep(Duration::from_millis(200)).await;
                continue;
            }
            Err(_) => {
                last_error = format!("{url}: no answer within {:?}", ctx.per_node());
                continue;
            }
        };
        let mut body = resp.into_body();
        let mut parser = keel::cli::SseParser::default();
        while let Some(Ok(frame)) = body.frame().await {
            let Some(chunk) = frame.data_ref() else {
                continue;
            };
            for data in parser.push(chunk) {
                let line = match (ctx.output, serde_json::from_str(&data)) {
                    (Output::Table, Ok(event)) => format!(
                        "{}  {}",
                        keel::cli::clock(std::time::SystemTime::now()),
                        keel::cli::event_line(&event)
                    ),
                    _ => data,
                };
                // A closed pipe (`keel watch | head`) ends the watch quietly.
                if writeln!(stdout, "{line}").is_err() {
                    return Ok(());
                }
            }
        }
        eprintln!("keel watch: {url} closed the event stream; reconnecting");
        last_error = format!("{url} closed the event stream");
        lost_since = std::time::Instant::now();
    }
    Err(keel::client::CallError::Unreachable {
        endpoints: ctx.endpoints.clone(),
        last_error,
    }
    .into())
}

fn certs(command: CertsCmd) -> anyhow::Result<()> {
    match command {
        CertsCmd::Init { dir, name } => {
            let ca = keel::certs::init(&dir, &name)?;
            println!(
                "CA: {}  (its key beside it: keep it off the nodes)",
                ca.display()
            );
        }
        CertsCmd::Node { id, dir, hosts } => {
            let hosts = if hosts.is_empty() {
                vec!["127.0.0.1".to_string(), "localhost".to_string()]
            } else {
                hosts
            };
            let files = keel::certs::node(&dir, id, &hosts)?;
            // The config fragment for this node, ready to paste.
            println!(
                "{}",
                serde_json::to_string_pretty(&serde_json::json!({ "tls": files }))?
            );
        }
    }
    Ok(())
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let g = &cli.global;
    match cli.command {
        Cmd::Dev {
            nodes,
            dir,
            fresh,
            tls,
        } => match runtime().and_then(|rt| rt.block_on(keel::dev::run(nodes, dir, fresh, tls))) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => fail("dev", e),
        },
        Cmd::Certs { command } => match certs(command) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => fail("certs", e),
        },
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
        Cmd::Put { key, value } => client_call(g, "put", Shown::Put, async move |c| {
            let body = serde_json::json!({"op": "put", "key": key, "value": value}).to_string();
            c.submit("kv", body.into_bytes()).await
        }),
        Cmd::Get { key } => client_call(g, "get", Shown::Get, async move |c| {
            let body = serde_json::json!({"op": "get", "key": key}).to_string();
            c.query("kv", body.into_bytes(), "linearizable").await
        }),
        Cmd::Submit { plugin, body } => client_call(g, "submit", Shown::Raw, async move |c| {
            c.submit(&plugin, body.into_bytes()).await
        }),
        Cmd::Deploy {
            name,
            file,
            fuel,
            memory_bytes,
            version,
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
            client_call(g, "deploy", Shown::Raw, async move |c| {
                let bar = keel::cli::progress_bar();
                let (uploading, waiting) = keel::cli::deploy_messages(&name, wasm.len());
                c.set_progress(bar.clone(), uploading, waiting);
                let answer = c.deploy(&name, wasm, &headers).await;
                bar.finish_and_clear();
                answer
            })
        }
        Cmd::New { name, lang, dir } => {
            let lang = match lang {
                Lang::Rust => keel::templates::Lang::Rust,
                Lang::Python => keel::templates::Lang::Python,
                Lang::Js => keel::templates::Lang::Js,
            };
            let dir = dir.unwrap_or_else(|| PathBuf::from(&name));
            match keel::templates::new_project(&name, lang, &dir) {
                Ok(files) => {
                    println!(
                        "wrote {} files to {}; see its README.md",
                        files.len(),
                        dir.display()
                    );
                    ExitCode::SUCCESS
                }
                Err(e) => fail("new", e),
            }
        }
        Cmd::Plugins => client_call(g, "plugins", Shown::Plugins, async move |c| {
            c.get("/v1/plugins").await
        }),
        Cmd::Rollback { name, version } => client_call(g, "rollback", Shown::Raw, async move |c| {
            let body = match version {
                Some(v) => serde_json::json!({ "version": v }).to_string().into_bytes(),
                None => Vec::new(),
            };
            let path = format!("/v1/plugins/{name}/rollback");
            c.request(hyper::Method::POST, &path, body).await
        }),
        Cmd::Undeploy { name } => client_call(g, "undeploy", Shown::Raw, async move |c| {
            let path = format!("/v1/plugins/{name}");
            c.request(hyper::Method::DELETE, &path, Vec::new()).await
        }),
        Cmd::Member { command } => {
            client_call(g, "member", Shown::Members, async move |c| match command {
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
        Cmd::Status => cluster(g, false),
        Cmd::Members => cluster(g, true),
        Cmd::Watch => watch(g),
        Cmd::Completions { shell } => {
            clap_complete::generate(shell, &mut Cli::command(), "keel", &mut std::io::stdout());
            ExitCode::SUCCESS
        }
        // A node keeps its store in DATA_DIR/db (driver::start); the operator names DATA_DIR.
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
