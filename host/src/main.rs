//! The `keel` command-line interface (design §2). Each subcommand is a thin shell over a
//! library function, so that its logic is tested where it lives.

mod args;
mod cmd_auth;

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use args::*;
use clap::{CommandFactory, Parser};
use cmd_auth::{auth_cmd, role_cmd, token_cmd, user_cmd};
use keel::cli::exit;
use keel::client::{Answer, Client};
use keel_storage::Storage;

#[global_allocator]
static ALLOC: mimalloc::MiMalloc = mimalloc::MiMalloc;

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
        let cfg = match &args.join {
            Some(url) => keel::join::through(cfg, url).await?,
            None => cfg,
        };
        let listener = bind(cfg.listen)
            .await
            .with_context(|| format!("listening on {}", cfg.listen))?;
        let (id, url) = (cfg.id, cfg.url());
        let node = keel::driver::start(cfg.clone())?;
        if let Some(file) = &args.init_admin_token_file {
            tokio::spawn(keel::auth::bootstrap::serve_init(url.clone(), file.clone()));
        }
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
        let token = keel::cli::resolve_token(
            g.token_file.as_deref(),
            std::env::var(keel::cli::TOKEN_VAR).ok().as_deref(),
            std::env::var(keel::cli::TOKEN_FILE_VAR).ok().as_deref(),
            Some(&cwd),
        )?;
        if let Some(token) = token {
            keel::client::install_token(token);
        }
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
    /// A dry run's report; exits [`exit::DIFFERS`] if anything differs.
    DryRun,
}

fn show(ctx: &Ctx, context: &str, answer: &Answer, shown: Shown) -> ExitCode {
    let mut code = keel::cli::exit_for_status(answer.status);
    let body: Option<serde_json::Value> = serde_json::from_slice(&answer.body).ok();
    let differs = body
        .as_ref()
        .and_then(|v| v["commands_differ"].as_u64())
        .is_some_and(|n| n > 0);
    if matches!(shown, Shown::DryRun) && code == exit::OK && differs {
        code = exit::DIFFERS;
    }
    let text = String::from_utf8_lossy(&answer.body);
    if ctx.output == Output::Json {
        let result = body.clone().unwrap_or_else(|| text.trim_end().into());
        println!(
            "{}",
            serde_json::json!({"status": answer.status.as_u16(), "index": answer.index, "result": result})
        );
        return ExitCode::from(code);
    }
    if code != exit::OK && code != exit::DIFFERS {
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
        (Shown::DryRun, Some(v)) => print!("{}", keel::cli_plugins::render_dry_run(v)),
        _ => println!("{}", text.trim_end()),
    }
    ExitCode::from(code)
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
        let mut req = hyper::Request::get(format!("{url}/v1/events"));
        if let Some(token) = keel::client::installed_token() {
            let mut value = hyper::header::HeaderValue::from_str(&format!("Bearer {token}"))
                .context("the token is not a valid header value")?;
            value.set_sensitive(true);
            req = req.header(hyper::header::AUTHORIZATION, value);
        }
        let req = req
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
        CertsCmd::Init { dir, name } => keel::certs::init_cli(&dir, &name),
        CertsCmd::Node { id, dir, hosts } => keel::certs::node_cli(&dir, id, hosts),
    }
}

/// `keel blob get`: the bytes, checked against the name, to a file or standard output.
fn blob_get(g: &Global, sha256: &str, output: Option<PathBuf>) -> ExitCode {
    let ctx = match Ctx::new(g) {
        Ok(c) => c,
        Err(e) => return fail("blob get", e),
    };
    let Some(want) = keel::blobs::parse_hex(sha256) else {
        eprintln!("keel blob get: {sha256:?} is not a blob name (64 hex digits)");
        return ExitCode::from(exit::USAGE);
    };
    let path = format!("/v1/blobs/{}", keel::blobs::hex(&want));
    // Streamed to FILE.part (renamed once its hash is checked) or to standard output, hashed
    // on the way: never whole in memory.
    let part = output.as_ref().map(|f| {
        let mut name = f.clone().into_os_string();
        name.push(".part");
        PathBuf::from(name)
    });
    let mut sink: Box<dyn std::io::Write> = match &part {
        Some(p) => match std::fs::File::create(p) {
            Ok(f) => Box::new(std::io::BufWriter::with_capacity(1 << 20, f)),
            Err(e) => return fail("blob get", anyhow::anyhow!("{}: {e}", p.display())),
        },
        None => Box::new(std::io::BufWriter::with_capacity(
            1 << 20,
            std::io::stdout(),
        )),
    };
    let bar = keel::cli::progress_bar();
    bar.set_message(format!("downloading {}", &sha256[..sha256.len().min(12)]));
    let mut hasher = <sha2::Sha256 as sha2::Digest>::new();
    let result = runtime().and_then(|rt| {
        rt.block_on(async {
            ctx.client()
                .download_into(
                    &path,
                    &mut *sink,
                    &mut |chunk| sha2::Digest::update(&mut hasher, chunk),
                    Some(&bar),
                )
                .await
        })
    });
    bar.finish_and_clear();
    let flushed = sink.flush();
    drop(sink);
    let remove_part = || {
        if let Some(p) = &part {
            let _ = std::fs::remove_file(p);
        }
    };
    if let Err(e) = result {
        remove_part();
        return ctx.failed("blob get", &e);
    }
    if <[u8; 32]>::from(sha2::Digest::finalize(hasher)) != want {
        remove_part();
        return fail(
            "blob get",
            anyhow::anyhow!("the bytes received do not hash to {sha256}"),
        );
    }
    let done = flushed.and_then(|()| match (&part, &output) {
        (Some(p), Some(f)) => std::fs::File::open(p)
            .and_then(|file| file.sync_all())
            .and_then(|()| std::fs::rename(p, f)),
        _ => Ok(()),
    });
    match done {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            remove_part();
            fail("blob get", e.into())
        }
    }
}

/// Binds the listener, retrying for a few seconds while the port is still taken: a node
/// restarted at once after a crash can find its port held for a moment (by sockets of the
/// process that died, or a client's ephemeral port).
async fn bind(addr: std::net::SocketAddr) -> std::io::Result<tokio::net::TcpListener> {
    let mut waited = Duration::ZERO;
    loop {
        match tokio::net::TcpListener::bind(addr).await {
            Err(e)
                if e.kind() == std::io::ErrorKind::AddrInUse
                    && waited < Duration::from_secs(10) =>
            {
                if waited.is_zero() {
                    tracing::warn!(target: "keel::raft", %addr, "the port is taken; retrying for up to 10 s");
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
                waited += Duration::from_millis(100);
            }
            other => return other,
        }
    }
}

/// `keel snapshot save FILE`: streamed to `FILE.part`, verified whole, then renamed.
fn snapshot_save(g: &Global, file: &std::path::Path) -> ExitCode {
    let ctx = match Ctx::new(g) {
        Ok(c) => c,
        Err(e) => return fail("snapshot save", e),
    };
    let part = file.with_extension("part");
    let started = std::time::Instant::now();
    let got = runtime()
        .and_then(|rt| rt.block_on(async { ctx.client().download("/v1/snapshot", &part).await }));
    let bytes = match got {
        Ok((_, n)) => n,
        Err(e) => {
            let _ = std::fs::remove_file(&part);
            return fail("snapshot save", e);
        }
    };
    match keel::backup::verify(&part).and_then(|m| {
        std::fs::rename(&part, file)?;
        Ok(m)
    }) {
        Ok(m) => {
            let secs = started.elapsed().as_secs_f64().max(0.001);
            println!(
                "saved {}: index {} term {}, {} blobs, {:.1} MB in {secs:.1} s ({:.0} MB/s)",
                file.display(),
                m.index,
                m.term,
                m.blobs.len(),
                bytes as f64 / 1e6,
                bytes as f64 / 1e6 / secs
            );
            ExitCode::SUCCESS
        }
        Err(e) => {
            let _ = std::fs::remove_file(&part);
            fail(
                "snapshot save",
                e.context("the backup received is not whole"),
            )
        }
    }
}

/// `keel snapshot restore FILE --config CONFIG`.
fn snapshot_restore(file: &std::path::Path, config: &std::path::Path) -> ExitCode {
    let restored = keel::config::NodeConfig::load(config)
        .map_err(anyhow::Error::from)
        .and_then(|cfg| {
            let cluster = cfg.cluster()?;
            keel::backup::restore(file, &cfg.data_dir, cfg.id, cluster, &cfg.peers)
                .map(|r| (cfg, r))
        });
    match restored {
        Ok((cfg, (m, members))) => {
            println!(
                "restored {} into {}: node {} of cluster {}, index {} term {}, {} blobs, members {:?}",
                file.display(),
                cfg.data_dir.display(),
                cfg.id,
                cfg.cluster_id,
                m.index,
                m.term,
                m.blobs.len(),
                members.addresses
            );
            ExitCode::SUCCESS
        }
        Err(e) => fail("snapshot restore", e),
    }
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
            auth,
        } => match runtime()
            .and_then(|rt| rt.block_on(keel::dev::run(nodes, dir, fresh, tls, auth)))
        {
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
        Cmd::Submit {
            plugin,
            body,
            attach,
        } => client_call(g, "submit", Shown::Raw, async move |c| {
            let headers: Vec<(&'static str, String)> = if attach.is_empty() {
                Vec::new()
            } else {
                vec![("keel-attach", attach.join(","))]
            };
            c.submit_with(&plugin, body.into_bytes(), &headers).await
        }),
        Cmd::Query {
            plugin,
            body,
            consistency,
        } => client_call(g, "query", Shown::Raw, async move |c| {
            c.query(&plugin, body.into_bytes(), &consistency).await
        }),
        Cmd::Blob {
            command: BlobCmd::Put { file },
        } => client_call(g, "blob put", Shown::Raw, async move |c| {
            let bar = keel::cli::progress_bar();
            let name = file.display().to_string();
            c.set_progress(
                bar.clone(),
                format!("uploading {name}"),
                format!("placing {name} on a majority"),
            );
            // Streamed from the file: a 1 GiB blob is never in this process's memory.
            let answer = c.put_file("/v1/blobs", &file).await;
            bar.finish_and_clear();
            answer
        }),
        Cmd::Blob {
            command: BlobCmd::Get { sha256, file },
        } => blob_get(g, &sha256, file),
        Cmd::Snapshot {
            command: SnapshotCmd::Save { file },
        } => snapshot_save(g, &file),
        Cmd::Snapshot {
            command: SnapshotCmd::Restore { file, config },
        } => snapshot_restore(&file, &config),
        Cmd::Deploy {
            name,
            file,
            fuel,
            memory_bytes,
            version,
            dry_run,
            last,
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
            if dry_run {
                return client_call(g, "deploy", Shown::DryRun, async move |c| {
                    c.dry_run(&name, wasm, last, &headers).await
                });
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
        Cmd::Test { plugin, cases } => {
            let cases = cases.unwrap_or_else(|| {
                let beside = plugin.with_file_name("test.json");
                if beside.exists() {
                    beside
                } else {
                    PathBuf::from("test.json")
                }
            });
            match keel::plugin_test::run_files(&plugin, &cases) {
                Ok(report) => {
                    for line in &report.lines {
                        println!("{line}");
                    }
                    if report.passed {
                        ExitCode::SUCCESS
                    } else {
                        ExitCode::from(exit::ERROR)
                    }
                }
                Err(e) => fail("test", e),
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
        Cmd::Undeploy { name, drop_state } => {
            client_call(g, "undeploy", Shown::Raw, async move |c| {
                let path = match drop_state {
                    true => format!("/v1/plugins/{name}?drop_state=true"),
                    false => format!("/v1/plugins/{name}"),
                };
                c.request(hyper::Method::DELETE, &path, Vec::new()).await
            })
        }
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
        Cmd::Auth { command } => auth_cmd(g, command),
        Cmd::User { command } => user_cmd(g, command),
        Cmd::Role { command } => role_cmd(g, command),
        Cmd::Token { command } => token_cmd(g, command),
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
