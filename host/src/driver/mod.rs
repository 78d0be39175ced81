//! The driver: the one place where the Raft core, storage, plugins, timers and the network
//! meet (design §2).
//!
//! One thread owns the core and runs the Ready handshake (see `keel_raft::Ready`); the rest
//! of the node talks to it through [`Input`]s. Everything the driver does to the world goes
//! through [`Io`]: in `keel serve` ([`start`]) committed entries run through the plugins on
//! the apply worker (`apply_worker`), one batch at a time, so a slow plugin never holds up
//! ticks, heartbeats or votes; durable writes go to the log writer (`log_writer`), which
//! syncs while the driver applies and proposes, so whatever queues meanwhile becomes one
//! durable commit (group commit), and the leader's appends leave before its own write
//! starts (thesis §10.2.1); flushes of the applied state and snapshot builds run beside it
//! too, so the driver never waits on a disk. In `keel-sim` the same driver runs under
//! virtual time, and the simulator decides when each of those effects completes.
//!
//! Files: `inbox` (inputs, replies, status, the handle), `io` (the effects), `start`
//! (opening storage, recovery, the production loop), `upkeep` (flushes, snapshots, session
//! expiry), `membership` (member changes and peer connections), `log_writer`,
//! `apply_worker`, `applying` (handing batches to the worker, absorbing what they did,
//! answering clients).

mod apply_worker;
mod applying;
mod blob_upkeep;
mod inbox;
mod io;
mod log_writer;
mod membership;
mod start;
mod upkeep;

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::{Arc, Mutex, RwLock};

use keel_plugin::Runtime;
use keel_raft::{
    Command, Event, Index, NodeId, Payload, ProposeError, Raft, ReadError, Ready, Record, Role,
    Term,
};
use keel_storage::{LogWrite, SnapshotImage};
use tokio::sync::{broadcast, oneshot};

pub use apply_worker::{ApplyDone, ApplyJob, run_job};
pub use inbox::{
    BlobWait, CommandReply, Input, MAX_QUEUED_INPUTS, MemberChange, MemberReply, NodeHandle,
    NodeStatus, ReadRefused, ReadReply, Removed, SubmitError,
};
pub use io::{Io, NodeStore};
pub use log_writer::{Write, WriterJob, WriterOut, round as writer_round};
pub use start::{StartError, core_config, open_state, start};

use crate::blobs::Blobs;
use crate::config::NodeConfig;
use crate::metrics::Metrics;
use crate::peer::snapshot::StagedImage;
use crate::state::{self, Applied, CommandOutcome, Registry, Unflushed};

/// Flush sooner when this many keys and sessions are waiting,
const FLUSH_AT: usize = 50_000;
/// or this many bytes of keys and values: the write-back layer's memory stays bounded
/// whatever the values' size (issue #16).
const FLUSH_AT_BYTES: usize = 32 << 20;

type Reply = oneshot::Sender<CommandReply>;

/// Bounds on one batched entry: well under storage's 4 MiB entry limit, and a single
/// command (at most `max_body_bytes`, 1 MiB by default) always fits.
const MAX_BATCH_BYTES: usize = 2 << 20;
const MAX_BATCH_COMMANDS: usize = 1024;

/// Entries per apply batch: big enough to amortise a storage view and plugin instances,
/// small enough that one batch's replies are not held back long.
const MAX_APPLY_BATCH: usize = 4096;

/// Design §8: never continue on a state we cannot vouch for.
pub(crate) fn fail_stop(e: &anyhow::Error) -> ! {
    tracing::error!(target: "keel::raft", error = %e, "fail-stop");
    eprintln!("keel: fail-stop: {e}");
    std::process::exit(2);
}

/// Where the next snapshot stands (see `Driver::maybe_snapshot`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum SnapshotState {
    Idle,
    /// Waiting for storage to hold the applied state (a flush under way).
    AwaitingFlush,
}

/// A deliberately broken driver, for proving that the simulator catches driver bugs (as
/// `keel_raft::testkit::Bug` does for the core). `keel serve` never sets one.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DriverBug {
    /// Sends the messages that promise durability (votes, append acknowledgements) with the
    /// others, before the write they promise is durable (Raft §5.1 Fig. 2 broken).
    AckBeforeDurable,
    /// Tells the core a write is durable when it is handed to the log writer, so entries are
    /// applied (and counted by a leader) before they are durable here.
    ApplyBeforeDurable,
    /// Streams the image of the applied state as it is now, but labels it with the point
    /// the core asked for (older): the image and its message disagree (issue #16).
    StaleSnapshotMeta,
}

impl DriverBug {
    /// Every variant.
    pub const ALL: [DriverBug; 3] = [
        DriverBug::AckBeforeDurable,
        DriverBug::ApplyBeforeDurable,
        DriverBug::StaleSnapshotMeta,
    ];
}

/// What a driver is made of; [`start`] assembles one for `keel serve`, the simulator its own.
pub struct DriverParts {
    /// The node's configuration.
    pub cfg: Arc<NodeConfig>,
    /// The core, restored from storage ([`open_state`]).
    pub raft: Raft,
    /// The applied index the core was restored with (`InitialState::applied`).
    pub applied: Index,
    /// The index of the snapshot the core was restored with.
    pub snapshot_index: Index,
    /// The store.
    pub storage: Arc<dyn NodeStore>,
    /// The world.
    pub io: Box<dyn Io>,
    /// The plugin runtime.
    pub runtime: Runtime,
    /// The blob store.
    pub blobs: Blobs,
    /// Active plugins (restored by [`open_state`]).
    pub registry: Registry,
    /// Where the status goes.
    pub status: Arc<Mutex<NodeStatus>>,
    /// Where events go.
    pub events: broadcast::Sender<String>,
    /// Metrics.
    pub metrics: Arc<Metrics>,
    /// The applied state not yet in storage (shared with readers).
    pub unflushed: Arc<RwLock<Arc<Unflushed>>>,
    /// A deliberate bug (the simulator's teeth); `None` in `keel serve`.
    pub bug: Option<DriverBug>,
}

/// The driver. Between inputs its owner calls [`Driver::ticks`] as time passes and
/// [`Driver::step_end`] after each round of inputs.
pub struct Driver {
    cfg: Arc<NodeConfig>,
    raft: Raft,
    storage: Arc<dyn NodeStore>,
    io: Box<dyn Io>,
    runtime: Runtime,
    blobs: Blobs,
    registry: Registry,
    status: Arc<Mutex<NodeStatus>>,
    events: broadcast::Sender<String>,
    metrics: Arc<Metrics>,
    /// Commands waiting to be proposed together, and their encoded size.
    pending: Vec<(Command, Reply)>,
    pending_bytes: usize,
    /// index → (term, one reply per command of the entry) of proposals made here.
    proposals: HashMap<Index, (Term, Vec<Option<Reply>>)>,
    /// read ctx → reply, while the core confirms it.
    reads: HashMap<u64, oneshot::Sender<ReadReply>>,
    /// Confirmed reads waiting for the state machine to catch up.
    reads_waiting: Vec<(Index, oneshot::Sender<ReadReply>)>,
    next_ctx: u64,
    /// Highest index whose batch the driver has absorbed (the replies are answered).
    applied: Index,
    /// Committed entries not yet handed to the apply worker.
    apply_queue: VecDeque<keel_raft::Entry>,
    /// Last index of the batch the worker is applying, if one is.
    applying: Option<Index>,
    /// Bumped by a snapshot install: results of batches started before it are dropped.
    apply_epoch: u64,
    snapshot_index: Index,
    snapshot_state: SnapshotState,
    /// Bytes of command bodies applied since the last snapshot (`snapshot_every_bytes`).
    bytes_since_snapshot: u64,
    /// Images received with `InstallSnapshot` messages stepped since the last Ready: the
    /// one the core decides to install is taken from here (issue #16).
    staged: Vec<StagedImage>,
    deploy_in_flight: Option<Index>,
    /// The blob the next entry to apply waits for (design §6), fetched beside the driver,
    /// with that entry's index and since when (`Io::mono_ms`); nothing from that entry on
    /// is applied until it is here.
    fetching: Option<([u8; 32], Index, u64)>,
    /// Blobs the resend sweep is fetching.
    sweeping: std::collections::BTreeSet<[u8; 32]>,
    /// `Io::mono_ms` of the last resend sweep.
    last_sweep_ms: u64,
    /// `Io::mono_ms` of the last sweep that looked at every retained blob (`None`: due).
    last_retained_sweep_ms: Option<u64>,
    /// Where the blobs of compacted entries were named last (garbage collection).
    named_at: crate::blobs::NamedAt,
    unflushed: Arc<RwLock<Arc<Unflushed>>>,
    /// `Io::mono_ms` of the last flush and session sweep.
    last_flush_ms: u64,
    last_session_sweep_ms: u64,
    /// Membership changes proposed here: index → (term, reply).
    member_changes: HashMap<Index, (Term, oneshot::Sender<MemberReply>)>,
    /// The peers that senders run for, with their URLs.
    peers: BTreeMap<NodeId, String>,
    /// Peers a configuration entry removed, kept connected until that entry is applied: a
    /// leader that removes itself learns that the entry committed only from their
    /// acknowledgements (thesis §4.2.2). id → (entry index, URL).
    leaving: BTreeMap<NodeId, (Index, String)>,
    bug: Option<DriverBug>,
    /// What the last published status showed (see `publish_status`).
    published: Option<StatusKey>,
    /// A member refused this node as a non-member (see `Input::NotAMember`).
    removed: Option<Removed>,
    /// Nodes this one hears from but has no address for, so cannot answer (a leader of a
    /// cluster it was added to without being told the members: issue #15).
    cannot_answer: std::collections::BTreeSet<NodeId>,
}

/// The parts of the status that decide whether it must be published again.
type StatusKey = (
    Role,
    Term,
    Option<NodeId>,
    Index,
    Index,
    Index,
    Option<Index>,
    usize,
    Index,
    bool,
    usize,
);

impl Driver {
    /// Assembles a driver from its parts and connects it to its peers.
    pub fn new(p: DriverParts) -> Driver {
        let (applied, snapshot_index) = (p.applied, p.snapshot_index);
        let now = p.io.mono_ms();
        let named_at =
            crate::blobs::NamedAt::load(p.blobs.bookkeeping_path("named-at.json"), snapshot_index);
        let mut driver = Driver {
            cfg: p.cfg,
            raft: p.raft,
            storage: p.storage,
            io: p.io,
            runtime: p.runtime,
            blobs: p.blobs,
            registry: p.registry,
            status: p.status,
            events: p.events,
            metrics: p.metrics,
            pending: Vec::new(),
            pending_bytes: 0,
            proposals: HashMap::new(),
            reads: HashMap::new(),
            reads_waiting: Vec::new(),
            next_ctx: 1,
            applied,
            apply_queue: VecDeque::new(),
            applying: None,
            apply_epoch: 0,
            snapshot_index,
            snapshot_state: SnapshotState::Idle,
            staged: Vec::new(),
            bytes_since_snapshot: 0,
            deploy_in_flight: None,
            fetching: None,
            sweeping: Default::default(),
            last_sweep_ms: now,
            last_retained_sweep_ms: None,
            named_at,
            unflushed: p.unflushed,
            last_flush_ms: now,
            last_session_sweep_ms: now,
            member_changes: HashMap::new(),
            peers: BTreeMap::new(),
            leaving: BTreeMap::new(),
            bug: p.bug,
            published: None,
            removed: None,
            cannot_answer: Default::default(),
        };
        driver.connect_peers(0);
        driver.publish_status();
        driver
    }

    /// The core (read-only: the simulator checks its invariants on it).
    pub fn raft(&self) -> &Raft {
        &self.raft
    }

    /// Highest index whose results this driver has absorbed.
    pub fn applied(&self) -> Index {
        self.applied
    }

    /// Bumped by each snapshot install: an apply batch sent in an earlier epoch is dropped.
    pub fn apply_epoch(&self) -> u64 {
        self.apply_epoch
    }

    /// The active plugins.
    pub fn registry(&self) -> &Registry {
        &self.registry
    }

    /// Makes `n` ticks of the core's clock, then the upkeep that goes by ticks.
    pub fn ticks(&mut self, n: u64) {
        for _ in 0..n {
            self.raft.tick();
        }
        self.maybe_deploy_builtin();
        self.maybe_expire_sessions();
        self.maybe_sweep();
    }

    /// After a round of inputs: a flush if one is due, the queued commands as one proposal,
    /// and the Ready handshake until the core has nothing more to do.
    pub fn step_end(&mut self) -> anyhow::Result<()> {
        if self.io.mono_ms().saturating_sub(self.last_flush_ms) >= self.cfg.apply_flush_ms {
            self.start_flush();
        }
        self.propose_pending();
        self.process_ready()
    }

    /// One input. An error is one the node cannot go on from (design §8: fail-stop).
    pub fn input(&mut self, input: Input) -> anyhow::Result<()> {
        match input {
            Input::NotAMember { per, detail } => {
                if self.raft.leader().is_none() && self.removed.is_none() {
                    tracing::error!(
                        target: "keel::raft",
                        per,
                        "this node is not a member of the cluster's configuration (it was removed, \
                         or never added): node {per} says \"{detail}\"; it will not be elected \
                         or answered; stop it, or add it again with `keel member add`"
                    );
                    self.removed = Some(Removed { per, detail });
                }
            }
            Input::Peer(msgs) => {
                if self.removed.is_some()
                    && msgs
                        .iter()
                        .any(|m| matches!(m.body, keel_raft::MessageBody::AppendEntries { .. }))
                {
                    // A leader counts this node again (it was added back).
                    tracing::info!(target: "keel::raft", "a leader replicates to this node again: a member after all");
                    self.removed = None;
                }
                for m in msgs {
                    if m.from != self.cfg.id
                        && !self.peers.contains_key(&m.from)
                        && self.cannot_answer.insert(m.from)
                    {
                        tracing::warn!(target: "keel::raft", from = m.from, "hearing from node {} but this node has no address for it: it cannot answer (start a joining node with --join URL)", m.from);
                    }
                    tracing::debug!(target: "keel::msg", "recv {m}");
                    if let Err(e) = self.raft.step(m) {
                        self.metrics.foreign_cluster.inc();
                        tracing::warn!(target: "keel::msg", error = %e, "message refused");
                    }
                }
            }
            Input::Propose { reply, .. }
            | Input::Deploy { reply, .. }
            | Input::Undeploy { reply, .. }
            | Input::OpenSession(reply)
                if self.raft.role() == Role::Leader
                    && self.apply_lag() > self.cfg.max_apply_lag =>
            {
                // Backpressure instead of an unbounded queue behind a slow plugin.
                let lag = self.apply_lag();
                let _ = reply.send(CommandReply::Retry(format!(
                    "apply is {lag} entries behind the log; retry shortly"
                )));
            }
            Input::Propose {
                plugin,
                client,
                payload,
                reply,
            } => {
                let size = plugin.len()
                    + 32
                    + match payload.body() {
                        Payload::Inline(b) => b.len(),
                        _ => 40,
                    }
                    + 40 * payload.attachments().len();
                if self.pending_bytes + size > MAX_BATCH_BYTES
                    || self.pending.len() >= MAX_BATCH_COMMANDS
                {
                    self.propose_pending();
                }
                self.pending_bytes += size;
                let command = Command {
                    plugin,
                    client,
                    payload,
                };
                self.pending.push((command, reply));
            }
            Input::Deploy { deploy, reply } => self.propose_for(Record::Deploy(deploy), reply),
            Input::Undeploy {
                plugin,
                drop_state,
                reply,
            } => {
                let record = match drop_state {
                    true => Record::DropState { plugin },
                    false => Record::Undeploy { plugin },
                };
                self.propose_for(record, reply)
            }
            Input::OpenSession(reply) => self.propose_for(Record::OpenSession, reply),
            Input::Read { mode, reply } => {
                let ctx = self.next_ctx;
                self.next_ctx += 1;
                match self.raft.read_index(ctx, mode) {
                    Ok(()) => {
                        self.reads.insert(ctx, reply);
                    }
                    Err(ReadError::NotLeader { leader }) => {
                        let _ = reply.send(Err(ReadRefused::NotLeader(leader)));
                    }
                    Err(_) => {
                        let _ = reply.send(Err(ReadRefused::Retry));
                    }
                }
            }
            Input::Persisted(index, term) => self.raft.persisted(index, term),
            Input::Flushed(layer) => {
                {
                    let mut slot = self.unflushed.write().unwrap_or_else(|e| e.into_inner());
                    if slot.is_flushing(&layer) {
                        Arc::make_mut(&mut slot).flushed();
                    }
                }
                if self.snapshot_state == SnapshotState::AwaitingFlush {
                    self.compact()?;
                }
            }
            Input::BlobFetched { hash, found } => {
                if found {
                    self.sweeping.remove(&hash);
                }
                if found && self.fetching.is_some_and(|(h, _, _)| h == hash) {
                    self.fetching = None;
                    self.dispatch_apply()?;
                }
            }
            Input::Snapshot { message, image } => {
                tracing::debug!(target: "keel::msg", "recv {message} with its image");
                self.staged.push(image);
                if let Err(e) = self.raft.step(message) {
                    tracing::warn!(target: "keel::msg", error = %e, "message refused");
                }
            }
            Input::Applied(done) => self.applied_batch(*done)?,
            Input::Members { change, reply } => self.change_members(change, reply),
            Input::BlobsNeeded(reply) => match self.blobs_needed() {
                Ok(keep) => {
                    let _ = reply.send(keep);
                }
                // Nothing is collected this round (the reply is dropped); apply goes on.
                Err(e) => {
                    tracing::warn!(target: "keel::txn", error = %e, "blob garbage collection: cannot tell what is needed")
                }
            },
            Input::Flush(done) => {
                self.flush();
                let _ = done.send(());
            }
            Input::Transfer(to) => {
                let ok = self.raft.transfer_leadership(to);
                tracing::info!(target: "keel::raft", to, ok, "leadership transfer requested");
            }
        }
        Ok(())
    }

    /// Proposes one record whose applied outcome answers `reply` (a session, a deployment).
    fn propose_for(&mut self, record: Record, reply: Reply) {
        self.propose_answered(record, vec![reply]);
    }

    /// Proposes `record`; its applied outcomes answer `replies`, one per position in the
    /// entry. A refusal answers them all at once. Returns the index on success.
    fn propose_answered(&mut self, record: Record, replies: Vec<Reply>) -> Option<Index> {
        match self.raft.propose(record, self.io.wall_ms()) {
            Ok((index, term)) => {
                self.proposals
                    .insert(index, (term, replies.into_iter().map(Some).collect()));
                Some(index)
            }
            Err(ProposeError::NotLeader { leader }) => {
                for reply in replies {
                    let _ = reply.send(CommandReply::NotLeader(leader));
                }
                None
            }
            Err(e) => {
                for reply in replies {
                    let _ = reply.send(CommandReply::Retry(e.to_string()));
                }
                None
            }
        }
    }

    /// Everything that queued since the last proposal becomes one entry: one log record,
    /// one storage row and one plugin instance per plugin for the lot, on every node.
    fn propose_pending(&mut self) {
        if self.pending.is_empty() {
            return;
        }
        self.pending_bytes = 0;
        let (mut commands, replies): (Vec<Command>, Vec<_>) =
            std::mem::take(&mut self.pending).into_iter().unzip();
        let n = commands.len();
        let record = if n == 1 {
            Record::Command(commands.remove(0))
        } else {
            Record::Batch(commands)
        };
        if let Some(index) = self.propose_answered(record, replies) {
            tracing::debug!(target: "keel::txn", index, commands = n, "proposed");
            self.metrics.proposals.inc_by(n as u64);
        }
    }

    /// The Ready handshake, until the core has nothing more to do.
    fn process_ready(&mut self) -> anyhow::Result<()> {
        while self.raft.has_ready() {
            let rd = self.raft.ready();
            self.handle_ready(rd)?;
        }
        self.publish_status();
        Ok(())
    }

    fn handle_ready(&mut self, rd: Ready) -> anyhow::Result<()> {
        let point = rd.persist_point();
        for ev in &rd.events {
            self.event(ev);
        }
        // 1. Leader appends and pre-votes leave now, in parallel with our own write.
        for m in rd.messages {
            if matches!(m.body, keel_raft::MessageBody::InstallSnapshot { .. }) {
                self.send_snapshot(m)?;
            } else {
                self.io.send(m);
            }
        }
        let installs = rd.snapshot.is_some();
        // Images stepped with this Ready's messages: one may be installed now; the others
        // (stale, or for a point the log already has) are dropped, deleting their files.
        let staged = std::mem::take(&mut self.staged);
        if let Some(snap) = &rd.snapshot {
            let Some(image) = staged
                .into_iter()
                .find(|i| i.meta().index == snap.index && i.meta().term == snap.term)
            else {
                anyhow::bail!(
                    "the core installs the snapshot at {}@t{} but no image for it was received",
                    snap.index,
                    snap.term
                );
            };
            let image = SnapshotImage::new(snap.clone(), image.open()?);
            // 2 and 3 here, in this thread: a snapshot replaces the applied state, which
            // the driver owns. Earlier writes go first (they must be durable in order).
            self.io.wait_idle();
            // The part of the applied state not yet flushed goes too (it is all at or below
            // the commit index, which the snapshot is past): drop it in the same step, so no
            // reader sees the old storage without it.
            let mut slot = self.unflushed.write().unwrap_or_else(|e| e.into_inner());
            self.storage.persist(LogWrite {
                hard_state: rd.hard_state,
                snapshot: Some(&image),
                entries: &rd.entries,
            })?;
            *slot = Arc::default();
            // The journal undoes commands of the state the snapshot replaced.
            self.registry.journal().clear();
            drop(slot);
            self.metrics.fsyncs.inc();
            tracing::info!(target: "keel::raft", index = snap.index, "installed snapshot");
            self.metrics.snapshots_installed.inc();
            self.applied = snap.index;
            self.snapshot_index = snap.index;
            self.bytes_since_snapshot = 0;
            // The snapshot replaces everything committed so far: what is queued or being
            // applied was computed on (or for) the state it replaced, and the replies
            // waiting on covered entries are answered now.
            self.apply_epoch += 1;
            self.applying = None;
            self.apply_queue.clear();
            self.fetching = None;
            // What the snapshot covers was named somewhere up to its index (the bound
            // garbage collection uses for blobs it knows nothing about), and the state it
            // brings may retain blobs this node lacks: the sweep looks for them now.
            self.named_at.clear();
            self.last_retained_sweep_ms = None;
            self.answer_covered(snap.index);
            let view = self.storage.view()?;
            state::reload(&self.runtime, &self.blobs, &self.registry, &view)?;
            for m in rd.persisted_messages {
                self.io.send(m);
            }
            if let Some((index, term)) = point {
                self.raft.persisted(index, term);
            }
        } else if rd.hard_state.is_some()
            || !rd.entries.is_empty()
            || !rd.persisted_messages.is_empty()
        {
            // 2 and 3 on the log writer: durable in order, then the acknowledgements, then
            // `Input::Persisted` back here. Meanwhile this thread applies and proposes.
            let mut then_send = rd.persisted_messages;
            if self.bug == Some(DriverBug::AckBeforeDurable) {
                for m in then_send.drain(..) {
                    self.io.send(m);
                }
            }
            self.io.write(WriterJob::Write(Write {
                hard_state: rd.hard_state,
                entries: rd.entries,
                then_send,
            }));
            if self.bug == Some(DriverBug::ApplyBeforeDurable)
                && let Some((index, term)) = point
            {
                self.raft.persisted(index, term);
            }
        }
        // 4. Apply (the core hands out only entries durable here), on the apply worker.
        if !rd.committed_entries.is_empty() {
            self.apply_queue.extend(rd.committed_entries);
            self.dispatch_apply()?;
        }
        for rs in rd.read_states {
            let Some(reply) = self.reads.remove(&rs.ctx) else {
                continue;
            };
            match rs.index {
                Some(i) if i <= self.applied => {
                    let _ = reply.send(Ok(i));
                }
                Some(i) => self.reads_waiting.push((i, reply)),
                None => {
                    let _ = reply.send(Err(ReadRefused::Retry));
                }
            }
        }
        if installs {
            self.release_reads();
        }
        Ok(())
    }

    fn event(&mut self, ev: &Event) {
        let json = match ev {
            Event::State { role, term, leader } => {
                tracing::info!(target: "keel::raft", ?role, term, ?leader, "state");
                if *role != Role::Leader {
                    self.deploy_in_flight = None;
                }
                serde_json::json!({"type": "state", "role": format!("{role:?}"), "term": term, "leader": leader})
            }
            Event::Config { index, config } => {
                tracing::info!(target: "keel::raft", index, ?config, "configuration");
                self.connect_peers(*index);
                serde_json::json!({"type": "config", "index": index, "voters": config.voters, "learners": config.learners})
            }
        };
        let _ = self.events.send(json.to_string());
    }

    fn publish_status(&mut self) {
        // Rebuilding the status allocates (members' URLs, plugin names): skip it when nothing
        // it shows has moved. A leader's lease moves with every tick: it always publishes.
        let key = (
            self.raft.role(),
            self.raft.term(),
            self.raft.leader(),
            self.raft.commit_index(),
            self.applied,
            self.raft.last_index(),
            self.fetching.map(|(_, i, _)| i),
            self.sweeping.len(),
            self.snapshot_index,
            self.removed.is_some(),
            self.cannot_answer.len(),
        );
        if key.0 != Role::Leader && self.published == Some(key) {
            return;
        }
        self.published = Some(key);
        let s = self.raft.status();
        // This node's own log removes it: it knows, and says so.
        let me = s.id;
        if self.removed.is_none()
            && !s.config.voters.is_empty()
            && !s.config.members().any(|id| id == me)
        {
            tracing::error!(target: "keel::raft", "this node's log removes it from the configuration: it is no longer a member");
            self.removed = Some(Removed {
                per: me,
                detail: "this node's own log removes it from the configuration".into(),
            });
        }
        let leader_url = s.leader.and_then(|l| self.member_url(l));
        let members = s
            .config
            .members()
            .map(|id| (id, self.member_url(id).unwrap_or_default()))
            .collect();
        self.metrics.term.set(s.term as i64);
        self.metrics.commit_index.set(s.commit as i64);
        self.metrics.applied_index.set(self.applied as i64);
        self.metrics.apply_lag.set(self.apply_lag() as i64);
        self.metrics
            .is_leader
            .set(i64::from(s.role == Role::Leader));
        let status = NodeStatus {
            node_id: s.id,
            role: s.role,
            term: s.term,
            leader_id: s.leader,
            leader_url,
            commit_index: s.commit,
            applied_index: self.applied,
            last_log_index: s.last_index,
            cluster_id: self.cfg.cluster_id.clone(),
            members,
            voters: s.config.voters.iter().copied().collect(),
            learners: s.config.learners.iter().copied().collect(),
            plugins: self.registry.names(),
            apply_lag: self.apply_lag(),
            lease_ms_left: u64::from(s.lease_ticks_left) * self.cfg.tick_ms,
            waiting_for_blob: self.fetching.map(|(hash, index, since)| BlobWait {
                blob: crate::blobs::hex(&hash),
                index,
                waiting_ms: self.io.mono_ms().saturating_sub(since),
            }),
            blobs_sweeping: self.sweeping.len(),
            snapshot_index: self.snapshot_index,
            insecure: self.cfg.insecure && self.cfg.tls.is_none(),
            removed: self.removed.clone(),
            cannot_answer: self.cannot_answer.iter().copied().collect(),
        };
        *self.status.lock().unwrap_or_else(|e| e.into_inner()) = status;
    }
}

#[cfg(test)]
mod tests;
