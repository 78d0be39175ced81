//! The `keel` command line: every subcommand and flag (clap). What each does is in
//! `main.rs`, over library functions.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use clap::{Args, Parser, Subcommand, ValueEnum};
use keel::config::NodeConfig;

/// Keel: a Raft host whose replicated state machines are WebAssembly components.
#[derive(Debug, Parser)]
#[command(name = "keel", version, about)]
pub(crate) struct Cli {
    #[command(flatten)]
    pub(crate) global: Global,
    #[command(subcommand)]
    pub(crate) command: Cmd,
}

/// Connection and output flags: `global`, so they go anywhere on the command line
/// (`keel member add 4 URL --endpoints …` as much as `keel --endpoints … member add 4 URL`).
#[derive(Debug, Args)]
pub(crate) struct Global {
    /// Comma-separated node URLs [default: $KEEL_ENDPOINTS, else the nodes in
    /// ./keel-dev/cluster.json, else http://127.0.0.1:7001].
    #[arg(long, global = true, value_delimiter = ',', value_name = "URLS")]
    pub(crate) endpoints: Vec<String>,
    /// Output: `table` for people, `json` for scripts.
    #[arg(short, long, global = true, value_enum, default_value_t = Output::Table)]
    pub(crate) output: Output,
    /// Give up after this many seconds, retries included.
    #[arg(long, global = true, value_name = "SECONDS", default_value = "30", value_parser = seconds)]
    pub(crate) timeout: Duration,
    /// A file holding the token to present [default: $KEEL_TOKEN, else the file
    /// $KEEL_TOKEN_FILE, else the "admin_token_file" of ./keel-dev/cluster.json]. There is
    /// no flag for the token itself: `ps` would show it.
    #[arg(long, global = true, value_name = "FILE")]
    pub(crate) token_file: Option<PathBuf>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub(crate) enum Lang {
    /// cargo (wasm32-wasip2).
    Rust,
    /// componentize-py.
    Python,
    /// jco (componentize-js).
    Js,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub(crate) enum Output {
    /// Lines and tables for people.
    Table,
    /// JSON for scripts.
    Json,
}

pub(crate) fn seconds(s: &str) -> Result<Duration, String> {
    s.parse::<f64>()
        .ok()
        .filter(|v| v.is_finite() && *v > 0.0)
        .map(Duration::from_secs_f64)
        .ok_or_else(|| format!("{s:?}: expected a positive number of seconds"))
}

#[derive(Debug, Subcommand)]
pub(crate) enum Cmd {
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
        /// Turn client authentication on: user `root` (every permission) and its token in
        /// DIR/admin.token, the file's path in DIR/cluster.json for the CLI.
        #[arg(long)]
        auth: bool,
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
        /// Attach blobs uploaded before (`keel blob put`), by SHA-256 (`Keel-Attach`).
        #[arg(long = "attach", value_name = "SHA256", value_delimiter = ',')]
        attach: Vec<String>,
    },
    /// Run a query on any plugin (its answer, as the plugin gives it).
    Query {
        /// Plugin name.
        plugin: String,
        /// Query body.
        body: String,
        /// linearizable (ReadIndex), lease, or stale (this node's applied state).
        #[arg(long, default_value = "linearizable", value_parser = ["linearizable", "lease", "stale"])]
        consistency: String,
    },
    /// Back up the cluster's state and restore it (docs/snapshots.md).
    Snapshot {
        #[command(subcommand)]
        command: SnapshotCmd,
    },
    /// Store and fetch blobs: bytes beside the log, named by their SHA-256 (docs/blobs.md).
    Blob {
        #[command(subcommand)]
        command: BlobCmd,
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
        /// Deploy nothing: replay the plugin's last commands against FILE on one node and
        /// report how its answers and KV writes differ (exit 6 if any do).
        #[arg(long)]
        dry_run: bool,
        /// With --dry-run: how many of the plugin's latest commands to replay.
        #[arg(long, default_value_t = 100, requires = "dry_run")]
        last: usize,
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
    /// Run a plugin's own test against an in-process host: the steps of CASES (commands and
    /// queries with the answers they must give), twice, to check apply is deterministic.
    Test {
        /// The component (`.wasm`).
        plugin: PathBuf,
        /// The cases file [default: test.json beside the component, else ./test.json].
        cases: Option<PathBuf>,
    },
    /// List the plugins: active version, hash, the index it became active at, limits,
    /// commands applied and failed, the last failure.
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
    /// Deactivate a plugin: its commands then get 404; its history is kept, and its state
    /// unless --drop-state.
    Undeploy {
        /// The plugin.
        name: String,
        /// Also delete its state (every key of its namespace, the blobs it retains, its
        /// counters), through the log on every node. Works on an undeployed plugin too.
        #[arg(long)]
        drop_state: bool,
    },
    /// Client authentication: turn it on, show the table, say who the token is.
    Auth {
        #[command(subcommand)]
        command: AuthCmd,
    },
    /// Add and remove users, give them roles (needs `admin`).
    User {
        #[command(subcommand)]
        command: UserCmd,
    },
    /// Grant and revoke a role's permissions (needs `admin`).
    Role {
        #[command(subcommand)]
        command: RoleCmd,
    },
    /// Create and revoke tokens (needs `admin`).
    Token {
        #[command(subcommand)]
        command: TokenCmd,
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
pub(crate) enum MemberCmd {
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
pub(crate) enum AuthCmd {
    /// Turn authentication on: user `root`, with every permission, and its token (only
    /// while the cluster has no users).
    Init {
        /// Write the token to FILE (mode 0600; an existing file's token is used) instead of
        /// printing it.
        #[arg(long, value_name = "FILE")]
        token_file: Option<PathBuf>,
    },
    /// The users, roles and tokens (ids and labels; never secrets).
    Show,
    /// The user the token speaks for, and its permissions.
    Whoami,
}

#[derive(Debug, Subcommand)]
pub(crate) enum UserCmd {
    /// Add a user with roles.
    Add {
        /// The user's name.
        name: String,
        /// A role to give it (repeatable; roles are made by `keel role grant`).
        #[arg(long = "role", value_name = "ROLE")]
        roles: Vec<String>,
    },
    /// Remove a user; its tokens are revoked.
    Remove {
        /// The user's name.
        name: String,
    },
    /// Give a user a role.
    Grant {
        /// The user.
        name: String,
        /// The role.
        role: String,
    },
    /// Take a role from a user.
    Revoke {
        /// The user.
        name: String,
        /// The role.
        role: String,
    },
}

#[derive(Debug, Subcommand)]
pub(crate) enum RoleCmd {
    /// Let a role do PERMISSION (on PLUGIN, or `*`); creates the role.
    ///
    /// PERMISSION: query, command or deploy (with a PLUGIN), admin or read-status.
    Grant {
        /// The role.
        role: String,
        /// query, command, deploy, admin or read-status.
        permission: String,
        /// The plugin (or `*`) for query, command and deploy.
        plugin: Option<String>,
    },
    /// Take PERMISSION (on PLUGIN) from a role.
    Revoke {
        /// The role.
        role: String,
        /// query, command, deploy, admin or read-status.
        permission: String,
        /// The plugin (or `*`) for query, command and deploy.
        plugin: Option<String>,
    },
    /// Remove a role, taking it from every user who has it (refused if nobody would hold
    /// admin afterwards).
    Remove {
        /// The role.
        role: String,
    },
}

#[derive(Debug, Subcommand)]
pub(crate) enum TokenCmd {
    /// A new token for USER; printed once (or written to --out), never stored in clear.
    Create {
        /// The user it speaks for.
        user: String,
        /// What it is for (shown by `keel auth show`).
        #[arg(long, default_value = "")]
        label: String,
        /// Write the token to FILE (mode 0600) and print only its id.
        #[arg(long, value_name = "FILE")]
        out: Option<PathBuf>,
        /// How long the token works (`90s`, `30m`, `24h`, `7d`); until revoked if not given.
        #[arg(long, value_name = "DURATION", value_parser = parse_ttl)]
        ttl: Option<u64>,
    },
    /// Revoke a token by its id (`keel_ID_…`, or as `keel auth show` lists it).
    Revoke {
        /// The token's id.
        id: String,
    },
}

#[derive(Debug, Subcommand)]
pub(crate) enum BlobCmd {
    /// Upload FILE; prints its sha256 and length once a majority of the voters holds it.
    Put {
        /// The file.
        file: PathBuf,
    },
    /// Download a blob, checked against its name, to FILE (or standard output).
    Get {
        /// Its SHA-256 (64 hex digits).
        sha256: String,
        /// Where to write it [default: standard output].
        file: Option<PathBuf>,
    },
}

#[derive(Debug, Subcommand)]
pub(crate) enum SnapshotCmd {
    /// Save a backup (the applied state and the blobs it needs, a tar file) to FILE, from
    /// the first endpoint that answers; verified whole before FILE takes its name.
    Save {
        /// Where to write it.
        file: PathBuf,
    },
    /// Restore a backup into the data directory of the node CONFIG describes (which must not
    /// hold a node yet); restore every member from the same file, then start them.
    Restore {
        /// The backup.
        file: PathBuf,
        /// The node's config file (its id, cluster id and data directory).
        #[arg(long)]
        config: PathBuf,
    },
}

#[derive(Debug, Subcommand)]
pub(crate) enum CertsCmd {
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
pub(crate) enum ConfigCmd {
    /// Print the effective configuration as JSON.
    Show(ServeArgs),
}

#[derive(Debug, Args)]
pub(crate) struct ServeArgs {
    /// A JSON config file; flags given too override its fields.
    #[arg(long)]
    pub(crate) config: Option<PathBuf>,
    /// Node id.
    #[arg(long)]
    pub(crate) id: Option<u64>,
    /// Listen address.
    #[arg(long)]
    pub(crate) listen: Option<SocketAddr>,
    /// Peers as `ID=URL,ID=URL` (this node included).
    #[arg(long, value_delimiter = ',')]
    pub(crate) peers: Vec<String>,
    /// Cluster UUID.
    #[arg(long)]
    pub(crate) cluster_id: Option<String>,
    /// Data directory.
    #[arg(long)]
    pub(crate) data_dir: Option<PathBuf>,
    /// The watched plugin folder [default: DATA_DIR/plugins].
    #[arg(long)]
    pub(crate) plugins_dir: Option<PathBuf>,
    /// Join the cluster the member at URL belongs to: its UUID and every member's address
    /// come from there (a fresh data directory only); then add this node with `keel member
    /// add ID URL`.
    #[arg(long, value_name = "URL")]
    pub(crate) join: Option<String>,
    /// Turn client authentication on once the cluster has a leader: user `root`, with
    /// every permission, and its token in FILE (made with mode 0600 unless it exists).
    /// Give it to one node; ignored (with a warning) if the cluster has users already.
    #[arg(long, value_name = "FILE")]
    pub(crate) init_admin_token_file: Option<PathBuf>,
}

impl ServeArgs {
    pub(crate) fn resolve(&self) -> anyhow::Result<NodeConfig> {
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

/// A duration for `--ttl`, in milliseconds: a positive number with a unit (`s`, `m`, `h`,
/// `d`).
pub(crate) fn parse_ttl(s: &str) -> Result<u64, String> {
    let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (n, unit) = s.split_at(split);
    let n: u64 = n
        .parse()
        .map_err(|_| format!("{s:?}: a number and a unit, as 90s, 30m, 24h or 7d"))?;
    let ms = match unit {
        "s" => 1_000,
        "m" => 60_000,
        "h" => 3_600_000,
        "d" => 86_400_000,
        _ => return Err(format!("{s:?}: the unit is s, m, h or d")),
    };
    match n.checked_mul(ms) {
        Some(0) => Err("a TTL of zero: the token would never work".into()),
        Some(v) => Ok(v),
        None => Err(format!("{s:?} is too long")),
    }
}

#[cfg(test)]
mod ttl_tests {
    use super::parse_ttl;

    #[test]
    fn ttls_read_with_their_unit_and_nonsense_is_refused() {
        assert_eq!(parse_ttl("90s"), Ok(90_000));
        assert_eq!(parse_ttl("30m"), Ok(1_800_000));
        assert_eq!(parse_ttl("24h"), Ok(86_400_000));
        assert_eq!(parse_ttl("7d"), Ok(604_800_000));
        for bad in [
            "",
            "5",
            "h",
            "0s",
            "1w",
            "-1h",
            "1.5h",
            "99999999999999999999d",
        ] {
            assert!(parse_ttl(bad).is_err(), "{bad:?} was taken");
        }
    }
}
