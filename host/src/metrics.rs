//! Prometheus metrics (`GET /metrics`, OpenMetrics text format).

use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

/// The node's metrics. Cheap to update from any thread.
pub struct Metrics {
    registry: Registry,
    /// Commands proposed by this node as leader.
    pub proposals: Counter,
    /// Entries applied.
    pub applied: Counter,
    /// Durable log commits (each covers a whole batch).
    pub fsyncs: Counter,
    /// Messages refused for carrying another cluster's UUID.
    pub foreign_cluster: Counter,
    /// Peer messages dropped because a peer was down or not reading fast enough.
    pub peer_dropped: Counter,
    /// TLS connections refused at the handshake (an unknown CA, a bad certificate).
    pub tls_refused: Counter,
    /// Peer requests refused for their certificate: none, or one naming another node than
    /// the messages' sender (issue #13).
    pub peer_identity_refused: Counter,
    /// Client requests refused by authentication (401) or for a missing role (403).
    pub auth_refused: Counter,
    /// Peer frames refused before they were read: over the size limit, or a large frame on
    /// a stream not yet proven to come from the cluster (issue #13).
    pub peer_frames_refused: Counter,
    /// Connections closed at accept: every slot taken (`max_connections`, and the peers'
    /// reserve).
    pub connections_refused: Counter,
    /// Connections open now, by kind (`client`, `peer`).
    connections_open: Family<Vec<(String, String)>, Gauge>,
    /// Connections or requests cut off for slowness, by phase (`handshake`, `header`,
    /// `body`).
    timeouts: Family<Vec<(String, String)>, Counter>,
    /// Snapshots installed from a leader.
    pub snapshots_installed: Counter,
    /// Requests and peer batches refused because the driver's queue was full.
    pub inputs_refused: Counter,
    /// Blob fetches the resend sweep started.
    pub blob_sweep_fetches: Counter,
    /// Blobs deleted by garbage collection.
    pub blobs_collected: Counter,
    /// Current term.
    pub term: Gauge,
    /// Commit index.
    pub commit_index: Gauge,
    /// Applied index.
    pub applied_index: Gauge,
    /// 1 while this node leads.
    pub is_leader: Gauge,
    /// Entries committed but not yet applied (queued for the apply worker or in it).
    pub apply_lag: Gauge,
    /// Seconds per durable log commit on the log writer (etcd's WAL fsync duration).
    pub log_commit_seconds: Histogram,
    /// Entries per durable log commit (group commit at work).
    pub log_commit_entries: Histogram,
    /// Seconds to run one batch of committed entries through the plugins.
    pub apply_seconds: Histogram,
    /// Seconds per write-back of the applied state (etcd's backend commit duration).
    pub flush_seconds: Histogram,
    /// Seconds to drop the log up to a snapshot.
    pub purge_seconds: Histogram,
    responses: Family<Vec<(String, String)>, Counter>,
    /// Commands accepted for each plugin by this node as leader (the dashboard's rate).
    plugin_commands: Family<Vec<(String, String)>, Counter>,
}

impl Default for Metrics {
    fn default() -> Self {
        let mut registry = Registry::with_prefix("keel");
        let m = Metrics {
            proposals: Counter::default(),
            applied: Counter::default(),
            fsyncs: Counter::default(),
            foreign_cluster: Counter::default(),
            peer_dropped: Counter::default(),
            tls_refused: Counter::default(),
            peer_identity_refused: Counter::default(),
            auth_refused: Counter::default(),
            peer_frames_refused: Counter::default(),
            connections_refused: Counter::default(),
            connections_open: Family::default(),
            timeouts: Family::default(),
            snapshots_installed: Counter::default(),
            inputs_refused: Counter::default(),
            blob_sweep_fetches: Counter::default(),
            blobs_collected: Counter::default(),
            term: Gauge::default(),
            commit_index: Gauge::default(),
            applied_index: Gauge::default(),
            is_leader: Gauge::default(),
            apply_lag: Gauge::default(),
            log_commit_seconds: seconds(),
            log_commit_entries: Histogram::new(exponential_buckets(1.0, 2.0, 14)),
            apply_seconds: seconds(),
            flush_seconds: seconds(),
            purge_seconds: seconds(),
            responses: Family::default(),
            plugin_commands: Family::default(),
            registry: Registry::default(),
        };
        registry.register(
            "proposals",
            "Commands proposed by this node as leader",
            m.proposals.clone(),
        );
        registry.register("applied_entries", "Log entries applied", m.applied.clone());
        registry.register(
            "log_commits",
            "Durable log commits (one per batch)",
            m.fsyncs.clone(),
        );
        registry.register(
            "blobs_collected",
            "Blobs deleted by garbage collection (nothing any member may apply names them)",
            m.blobs_collected.clone(),
        );
        registry.register(
            "blob_sweep_fetches",
            "Blob fetches started by the resend sweep (blobs the log names, missing here)",
            m.blob_sweep_fetches.clone(),
        );
        registry.register(
            "driver_inputs_refused",
            "Requests (503) and peer batches (dropped) refused: the driver's queue was full",
            m.inputs_refused.clone(),
        );
        registry.register(
            "foreign_cluster_messages",
            "Peer messages refused for another cluster's UUID",
            m.foreign_cluster.clone(),
        );
        registry.register(
            "tls_handshakes_refused",
            "TLS connections refused at the handshake (unknown CA, bad certificate, timeout)",
            m.tls_refused.clone(),
        );
        registry.register(
            "peer_identity_refused",
            "Peer requests refused: no node certificate, or one naming another node than the sender",
            m.peer_identity_refused.clone(),
        );
        registry.register(
            "auth_refused",
            "Client requests refused without a valid token (401) or without the permission (403)",
            m.auth_refused.clone(),
        );
        registry.register(
            "peer_frames_refused",
            "Peer frames refused unread: too large, or large before the stream proved its cluster",
            m.peer_frames_refused.clone(),
        );
        registry.register(
            "connections_refused",
            "Connections closed at accept because every slot was taken (max_connections)",
            m.connections_refused.clone(),
        );
        registry.register(
            "connections_open",
            "Open connections by kind (client, peer)",
            m.connections_open.clone(),
        );
        registry.register(
            "timeouts",
            "Connections or requests cut off for slowness, by phase (handshake, header, body)",
            m.timeouts.clone(),
        );
        registry.register(
            "peer_messages_dropped",
            "Peer messages dropped: peer down or not reading (Raft resends what matters)",
            m.peer_dropped.clone(),
        );
        registry.register(
            "snapshots_installed",
            "Snapshots received from a leader and installed",
            m.snapshots_installed.clone(),
        );
        registry.register("term", "Current Raft term", m.term.clone());
        registry.register("commit_index", "Raft commit index", m.commit_index.clone());
        registry.register(
            "applied_index",
            "Last applied index",
            m.applied_index.clone(),
        );
        registry.register(
            "is_leader",
            "1 while this node is the leader",
            m.is_leader.clone(),
        );
        registry.register(
            "apply_lag_entries",
            "Entries committed here but not applied yet",
            m.apply_lag.clone(),
        );
        registry.register(
            "log_commit_duration_seconds",
            "Durable log commits: seconds each (redb commit, fsyncs included)",
            m.log_commit_seconds.clone(),
        );
        registry.register(
            "log_commit_entries",
            "Log entries per durable commit",
            m.log_commit_entries.clone(),
        );
        registry.register(
            "apply_duration_seconds",
            "Seconds to apply one batch of committed entries",
            m.apply_seconds.clone(),
        );
        registry.register(
            "flush_duration_seconds",
            "Seconds per write-back of the applied state to storage",
            m.flush_seconds.clone(),
        );
        registry.register(
            "log_purge_duration_seconds",
            "Seconds to drop the log up to a snapshot",
            m.purge_seconds.clone(),
        );
        registry.register(
            "http_responses",
            "HTTP responses by status",
            m.responses.clone(),
        );
        registry.register(
            "plugin_commands",
            "Commands accepted for each plugin by this node as leader",
            m.plugin_commands.clone(),
        );
        Metrics { registry, ..m }
    }
}

/// 100 µs to ~3.3 s, doubling.
fn seconds() -> Histogram {
    Histogram::new(exponential_buckets(0.000_1, 2.0, 16))
}

impl Metrics {
    /// Counts one HTTP response.
    pub fn http(&self, status: u16) {
        self.responses
            .get_or_create(&vec![("status".into(), status.to_string())])
            .inc();
    }

    /// Counts one connection or request cut off for slowness in `phase`.
    pub fn timed_out(&self, phase: &str) {
        self.timeouts
            .get_or_create(&vec![("phase".into(), phase.to_string())])
            .inc();
    }

    /// The gauge of open connections of one kind.
    pub fn connections(&self, kind: &str) -> Gauge {
        self.connections_open
            .get_or_create(&vec![("kind".into(), kind.to_string())])
            .clone()
    }

    /// Counts one command accepted for `plugin`.
    pub fn plugin_command(&self, plugin: &str) {
        self.plugin_commands
            .get_or_create(&vec![("plugin".into(), plugin.to_string())])
            .inc();
    }

    /// The text exposition.
    pub fn render(&self) -> String {
        let mut out = String::new();
        let _ = encode(&mut out, &self.registry);
        out
    }
}
