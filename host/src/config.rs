//! A node's configuration: JSON, round-trips (`keel config show`), every field defaulted.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;

use keel_raft::{ClusterId, NodeId};
use serde::{Deserialize, Serialize};

/// Everything one `keel serve` process needs.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct NodeConfig {
    /// This node's id (stable; its address may change).
    pub id: NodeId,
    /// The cluster's UUID, `xxxxxxxx-xxxx-xxxx-xxxx-xxxxxxxxxxxx`.
    pub cluster_id: String,
    /// Address the HTTP server (clients and peers) listens on.
    pub listen: SocketAddr,
    /// Every voter at bootstrap, by id, with its base URL (this node included).
    pub peers: BTreeMap<NodeId, String>,
    /// Where the node keeps its database, blobs and compiled-plugin cache.
    pub data_dir: PathBuf,
    /// Length of one Raft tick.
    pub tick_ms: u64,
    /// Minimum election timeout, in ticks (randomised up to twice that).
    pub election_ticks: u32,
    /// Heartbeat interval, in ticks.
    pub heartbeat_ticks: u32,
    /// Largest request body accepted from a client (413 beyond).
    pub max_body_bytes: usize,
    /// Largest plugin binary accepted by `PUT /v1/plugins/{name}` (a componentize-py plugin
    /// is ~18 MB).
    pub max_plugin_bytes: usize,
    /// Largest blob accepted (`PUT /v1/blobs`, or a command body sent by reference).
    pub max_blob_bytes: u64,
    /// A command body larger than this goes by reference (design §6): stored as a blob on a
    /// majority of voters, the log entry holding only its hash and length. The plugin sees
    /// the same bytes either way.
    pub ref_threshold_bytes: u64,
    /// How often blob garbage collection runs (ms; 0: never). See docs/blobs.md.
    pub blob_gc_interval_ms: u64,
    /// A blob younger than this is never collected: its upload may not be in the log yet.
    pub blob_gc_grace_ms: u64,
    /// Bandwidth of the blob fetches that heal this node (the resend sweep, apply waiting
    /// for a blob), bytes per second shared by all of them; 0: no limit. Uploads and
    /// pushes are not counted: a client waits on them.
    pub blob_fetch_bytes_per_sec: u64,
    /// Command timeout when the client sends no `Keel-Timeout-Ms`.
    pub default_timeout_ms: u64,
    /// Take a snapshot and compact the log every this many applied entries,
    pub snapshot_every: u64,
    /// or once the entries applied since the last one hold this many bytes of command
    /// bodies: the in-memory log stays bounded whatever the commands' size (issue #16).
    pub snapshot_every_bytes: u64,
    /// Storage's page cache (redb), in bytes: most of a node's memory beyond the plugins'.
    /// Half of it at most buffers a write transaction's pages (a snapshot install's too).
    pub storage_cache_bytes: u64,
    /// Deploy the built-in example kv plugin (as `kv`) when the cluster has none.
    pub builtin_kv: bool,
    /// Every durable commit two-phase (two fsyncs). Off by default: log appends are one-phase
    /// (one fsync), term and vote changes stay two-phase, and a damaged newest commit still
    /// fails the open instead of silently reopening the one before (see docs/storage.md,
    /// "One fsync per log append").
    pub two_phase_commit: bool,
    /// Applied state is kept in memory and written to storage at most this many
    /// milliseconds apart (write-back; docs/storage.md). Longer batches more page writes
    /// together; shorter keeps each write, and the stall it causes, small.
    pub apply_flush_ms: u64,
    /// A client session unused for this long (by the log's clock) expires on every node;
    /// its commands are then refused with 410 (thesis §6.3). 0 keeps sessions for ever.
    /// Only the leader's value matters: it proposes the expiries.
    pub session_ttl_ms: u64,
    /// The leader answers new commands 503 (retry) while this many committed entries wait
    /// to be applied here, instead of queueing without bound behind a slow plugin.
    pub max_apply_lag: u64,
    /// Start detached and wait to be added (`POST /v1/admin/members` on the leader) instead
    /// of bootstrapping a new cluster from `peers`. `peers` must still list the current
    /// members, so that this node can answer them.
    pub join: bool,
    /// The watched plugin folder (docs/plugins.md): a complete `NAME.wasm` dropped here is
    /// deployed cluster-wide. Default `DATA_DIR/plugins`.
    pub plugins_dir: Option<PathBuf>,
    /// A file copied into the plugin folder is read once its size and modification time
    /// have not changed for this long (a file renamed in is read at once).
    pub plugin_debounce_ms: u64,
    /// How many of a plugin's latest versions `GET /v1/plugins/{name}` shows and `keel
    /// rollback` can reach.
    pub plugin_history: usize,
    /// Memory for the dry-run journal: the last commands of each plugin with what they
    /// overwrote, which `keel deploy --dry-run` replays (docs/plugins.md). 0 turns it off.
    pub dry_run_journal_bytes: usize,
    /// TLS on the client API and the peer transport: this node's certificate and key and
    /// the cluster CA (files, reloaded when they change; docs/security.md). Peers' URLs
    /// are then `https://`.
    pub tls: Option<crate::tls::TlsFiles>,
    /// Allows listening without TLS on an address other than loopback (warned at start and
    /// shown in `/v1/status`). Without it such a config is refused.
    pub insecure: bool,
    /// Once the cluster has users (docs/security.md), `/metrics` needs `read-status` too
    /// (off: it stays open, for scrapers without a token).
    pub metrics_auth: bool,
    /// Client connections open at once (TLS handshakes under way included); beyond it a
    /// new connection is closed at once and counted. Peers have a reserve of their own
    /// beside it (docs/security.md, "Hostile input").
    pub max_connections: usize,
    /// A request's head (request line and headers) must be whole this long after the
    /// connection starts waiting for it (accepted, or the previous answer sent): the
    /// slowloris bound, and the idle keep-alive timeout. 431 beyond `max_header_bytes`.
    pub header_timeout_ms: u64,
    /// A request body that sends no byte for this long is cut off (408).
    pub body_timeout_ms: u64,
    /// A TLS handshake must complete within this long.
    pub tls_handshake_timeout_ms: u64,
    /// An answer the client stops reading (a full socket buffer, no byte taken) for this
    /// long is cut off with its connection: the slow-reader bound.
    pub write_timeout_ms: u64,
    /// Largest request head (request line and headers; 431 beyond).
    pub max_header_bytes: usize,
}

impl Default for NodeConfig {
    fn default() -> Self {
        NodeConfig {
            id: 1,
            cluster_id: "00000000-0000-0000-0000-000000000001".into(),
            listen: SocketAddr::from(([127, 0, 0, 1], 7001)),
            peers: BTreeMap::from([(1, "http://127.0.0.1:7001".to_string())]),
            data_dir: PathBuf::from("keel-data"),
            tick_ms: 50,
            election_ticks: 10,
            heartbeat_ticks: 2,
            max_body_bytes: 1 << 20,
            max_plugin_bytes: 64 << 20,
            max_blob_bytes: 1 << 30,
            ref_threshold_bytes: 64 << 10,
            blob_gc_interval_ms: 60_000,
            blob_gc_grace_ms: 600_000,
            blob_fetch_bytes_per_sec: 0,
            default_timeout_ms: 5_000,
            snapshot_every: 10_000,
            snapshot_every_bytes: 64 << 20,
            storage_cache_bytes: 64 << 20,
            builtin_kv: true,
            two_phase_commit: false,
            apply_flush_ms: 100,
            session_ttl_ms: 3_600_000,
            max_apply_lag: 10_000,
            join: false,
            plugins_dir: None,
            plugin_debounce_ms: 1_000,
            plugin_history: 8,
            dry_run_journal_bytes: 32 << 20,
            tls: None,
            insecure: false,
            metrics_auth: false,
            max_connections: 1024,
            header_timeout_ms: 10_000,
            body_timeout_ms: 30_000,
            tls_handshake_timeout_ms: 10_000,
            write_timeout_ms: 30_000,
            max_header_bytes: 64 << 10,
        }
    }
}

/// A configuration that cannot work.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The cluster id is not a UUID.
    #[error("cluster_id {0:?} is not a UUID (32 hex digits, dashes allowed)")]
    ClusterId(String),
    /// This node is not among the peers.
    #[error("node {0} is not listed in peers")]
    NotAPeer(NodeId),
    /// Timing that would never elect a leader.
    #[error("heartbeat_ticks ({heartbeat}) must be below election_ticks ({election}), tick_ms > 0")]
    Timing {
        /// Heartbeat ticks.
        heartbeat: u32,
        /// Election ticks.
        election: u32,
    },
    /// Plaintext on an address others can reach, without saying so.
    #[error(
        "listening on {0} without TLS: add \"tls\" (cert, key, ca; see docs/security.md), or \"insecure\": true to accept that anyone who can reach the port can read and forge the cluster's traffic"
    )]
    Plaintext(SocketAddr),
    /// The file could not be read or parsed.
    #[error("config {path}: {reason}")]
    File {
        /// The file.
        path: PathBuf,
        /// What went wrong.
        reason: String,
    },
}

impl NodeConfig {
    /// Reads and checks a JSON config file.
    pub fn load(path: &std::path::Path) -> Result<NodeConfig, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|e| ConfigError::File {
            path: path.into(),
            reason: e.to_string(),
        })?;
        let cfg: NodeConfig = serde_json::from_str(&text).map_err(|e| ConfigError::File {
            path: path.into(),
            reason: e.to_string(),
        })?;
        cfg.check()?;
        Ok(cfg)
    }

    /// Checks the fields against each other.
    pub fn check(&self) -> Result<(), ConfigError> {
        self.cluster()?;
        if !self.peers.contains_key(&self.id) {
            return Err(ConfigError::NotAPeer(self.id));
        }
        if self.exposed_without_tls() && !self.insecure {
            return Err(ConfigError::Plaintext(self.listen));
        }
        if self.tick_ms == 0
            || self.heartbeat_ticks == 0
            || self.heartbeat_ticks >= self.election_ticks
        {
            return Err(ConfigError::Timing {
                heartbeat: self.heartbeat_ticks,
                election: self.election_ticks,
            });
        }
        Ok(())
    }

    /// Whether this node serves plaintext beyond loopback (allowed only with `insecure`).
    pub fn exposed_without_tls(&self) -> bool {
        self.tls.is_none() && !self.listen.ip().is_loopback()
    }

    /// The cluster id as a number.
    pub fn cluster(&self) -> Result<ClusterId, ConfigError> {
        parse_uuid(&self.cluster_id).ok_or_else(|| ConfigError::ClusterId(self.cluster_id.clone()))
    }

    /// This node's own URL.
    pub fn url(&self) -> String {
        self.peers.get(&self.id).cloned().unwrap_or_default()
    }

    /// The watched plugin folder.
    pub fn plugins_dir(&self) -> PathBuf {
        self.plugins_dir
            .clone()
            .unwrap_or_else(|| self.data_dir.join("plugins"))
    }
}

/// Parses `xxxxxxxx-xxxx-…` (dashes optional) into a [`ClusterId`].
pub fn parse_uuid(s: &str) -> Option<ClusterId> {
    let hex: String = s.chars().filter(|c| *c != '-').collect();
    if hex.len() != 32 {
        return None;
    }
    u128::from_str_radix(&hex, 16).ok().map(ClusterId)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every field set away from its default (a struct literal, so a new field must be
    /// added here), written and read back: a field that is skipped, renamed on one side
    /// only, or lost falls back to its default under `#[serde(default)]` and shows here.
    /// Errors fail the test; nothing falls back to a default.
    #[test]
    fn config_round_trips_through_json() {
        let cfg = NodeConfig {
            id: 7,
            cluster_id: "0123abcd-0000-4000-8000-00000000beef".into(),
            listen: SocketAddr::from(([127, 0, 0, 2], 9107)),
            peers: BTreeMap::from([
                (7, "http://127.0.0.2:9107".to_string()),
                (8, "http://127.0.0.3:9108".to_string()),
            ]),
            data_dir: PathBuf::from("/var/lib/keel-7"),
            tick_ms: 20,
            election_ticks: 17,
            heartbeat_ticks: 3,
            max_body_bytes: 123_456,
            max_plugin_bytes: 7_654_321,
            max_blob_bytes: 3_333_333,
            ref_threshold_bytes: 4_444,
            blob_gc_interval_ms: 5_555,
            blob_gc_grace_ms: 6_666,
            blob_fetch_bytes_per_sec: 7_777,
            default_timeout_ms: 1_234,
            snapshot_every: 777,
            snapshot_every_bytes: 1_000_001,
            storage_cache_bytes: 2_000_002,
            builtin_kv: false,
            two_phase_commit: true,
            apply_flush_ms: 33,
            session_ttl_ms: 98_765,
            max_apply_lag: 4_321,
            join: true,
            plugins_dir: Some(PathBuf::from("/srv/keel-plugins")),
            plugin_debounce_ms: 250,
            plugin_history: 3,
            dry_run_journal_bytes: 9_999,
            tls: Some(crate::tls::TlsFiles {
                cert: PathBuf::from("/etc/keel/node-7.pem"),
                key: PathBuf::from("/etc/keel/node-7-key.pem"),
                ca: PathBuf::from("/etc/keel/ca.pem"),
            }),
            insecure: true,
            metrics_auth: true,
            max_connections: 17,
            header_timeout_ms: 1_001,
            body_timeout_ms: 2_002,
            tls_handshake_timeout_ms: 3_003,
            write_timeout_ms: 4_004,
            max_header_bytes: 9_999,
        };
        let text = serde_json::to_string_pretty(&cfg).expect("a config serializes");
        let back: NodeConfig = serde_json::from_str(&text).expect("its own JSON parses");
        assert_eq!(back, cfg, "round trip through {text}");
        // The test config must exercise every field: each one written differs from the
        // default's, so a field dropped on the way back cannot pass as a default.
        let ours = serde_json::to_value(&cfg).expect("to value");
        let default = serde_json::to_value(NodeConfig::default()).expect("to value");
        let (Some(ours), Some(default)) = (ours.as_object(), default.as_object()) else {
            panic!("a config is a JSON object: {ours} / {default}");
        };
        assert_eq!(
            ours.keys().collect::<Vec<_>>(),
            default.keys().collect::<Vec<_>>(),
            "every field is written"
        );
        for (field, value) in ours {
            assert_ne!(
                Some(value),
                default.get(field),
                "{field} is left at its default"
            );
        }
    }

    #[test]
    fn uuid_text_round_trips() {
        let id = ClusterId(0x0123_4567_89ab_cdef_0011_2233_4455_6677);
        assert_eq!(parse_uuid(&id.to_string()), Some(id));
        assert_eq!(parse_uuid("not-a-uuid"), None);
    }

    #[test]
    fn a_node_missing_from_its_peers_is_refused() {
        let cfg = NodeConfig {
            id: 9,
            ..NodeConfig::default()
        };
        assert!(matches!(cfg.check(), Err(ConfigError::NotAPeer(9))));
    }

    #[test]
    fn plaintext_beyond_loopback_is_refused_unless_insecure() {
        let exposed = NodeConfig {
            listen: SocketAddr::from(([0, 0, 0, 0], 7001)),
            ..NodeConfig::default()
        };
        assert!(matches!(exposed.check(), Err(ConfigError::Plaintext(_))));
        let insecure = NodeConfig {
            insecure: true,
            ..exposed.clone()
        };
        assert!(insecure.check().is_ok());
        let with_tls = NodeConfig {
            tls: Some(crate::tls::TlsFiles {
                cert: "c".into(),
                key: "k".into(),
                ca: "a".into(),
            }),
            ..exposed
        };
        assert!(with_tls.check().is_ok());
        assert!(
            NodeConfig::default().check().is_ok(),
            "loopback needs no TLS"
        );
    }

    #[test]
    fn unknown_fields_are_refused() {
        assert!(serde_json::from_str::<NodeConfig>(r#"{"idd": 3}"#).is_err());
    }
}
