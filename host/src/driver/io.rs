//! What the driver does to the world, behind one trait, so that the same driver code runs
//! in `keel serve` (threads, tokio, redb, the system clocks; [`ThreadIo`]) and in
//! `keel-sim` (virtual time, a seeded scheduler, `MemStorage` with injected faults). Every
//! effect whose completion the driver waits for comes back to it as an [`Input`], in
//! production over the driver's channel, in the simulator when the scheduler says so.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::mpsc::Sender;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use keel_raft::{Message, NodeId, SnapshotMeta};
use keel_storage::{ApplyBatch, LogId, LogWrite, StateView, Storage, StorageError};

use super::Input;
use super::apply_worker::{ApplyJob, ApplyWorker};
use super::log_writer::{LogWriter, WriterJob};
use crate::blobs::{self, Blobs};
use crate::metrics::Metrics;
use crate::peer::{Outboxes, SnapshotJob};

/// The store as the driver and the log writer use it: any [`Storage`], behind one
/// object-safe face (views are boxed).
pub trait NodeStore: Send + Sync {
    /// A read view of the applied state.
    fn view(&self) -> Result<Box<dyn StateView + Send>, StorageError>;
    /// Handshake step 2: hard state, snapshot and entries, durably.
    fn persist(&self, write: LogWrite<'_>) -> Result<LogId, StorageError>;
    /// Writes applied state (not durable by itself; the next durable commit carries it).
    fn apply(&self, batch: &ApplyBatch) -> Result<(), StorageError>;
    /// Drops the log up to a snapshot.
    fn purge(&self, meta: &SnapshotMeta) -> Result<(), StorageError>;
}

impl<S: Storage> NodeStore for S {
    fn view(&self) -> Result<Box<dyn StateView + Send>, StorageError> {
        Ok(Box::new(Storage::view(self)?))
    }
    fn persist(&self, write: LogWrite<'_>) -> Result<LogId, StorageError> {
        Storage::persist(self, write)
    }
    fn apply(&self, batch: &ApplyBatch) -> Result<(), StorageError> {
        Storage::apply(self, batch)
    }
    fn purge(&self, meta: &SnapshotMeta) -> Result<(), StorageError> {
        Storage::purge(self, meta)
    }
}

/// The driver's effects on the world.
pub trait Io: Send {
    /// Milliseconds since the Unix epoch: the stamp of proposed entries (the core keeps the
    /// log's clock from running back).
    fn wall_ms(&self) -> u64;
    /// Milliseconds of a monotonic clock: intervals between upkeep steps.
    fn mono_ms(&self) -> u64;
    /// Handshake step 1: a message that may leave now.
    fn send(&mut self, m: Message);
    /// Handshake steps 2 and 3, flushes and purges: queued in order on the log writer,
    /// which reports back with [`Input::Persisted`] and [`Input::Flushed`].
    fn write(&mut self, job: WriterJob);
    /// Returns once every job written so far is done (the inputs those jobs produce still
    /// arrive as inputs).
    fn wait_idle(&mut self);
    /// One batch for the apply worker; [`Input::Applied`] brings the result.
    fn apply(&mut self, job: ApplyJob);
    /// Streams a snapshot to its peer: the `InstallSnapshot` message and the image of
    /// `view`, which it describes.
    fn send_snapshot(&mut self, job: SnapshotJob);
    /// Fetches a blob from the peers until one has it; [`Input::BlobFetched`] reports.
    fn fetch_blob(&mut self, hash: [u8; 32]);
    /// The peers to keep a connection to, by id (every member but this node, and members
    /// leaving until their removal is applied).
    fn connect(&mut self, peers: &BTreeMap<NodeId, String>);
}

/// Production: a log-writer thread, an apply-worker thread, threads for blob fetches, tokio
/// tasks per peer (messages, snapshots), and the system clocks.
pub(crate) struct ThreadIo {
    pub(crate) inputs: Sender<Input>,
    pub(crate) outboxes: Outboxes,
    pub(crate) writer: LogWriter,
    pub(crate) apply_worker: ApplyWorker,
    pub(crate) blobs: Blobs,
    pub(crate) metrics: Arc<Metrics>,
    pub(crate) tokio: tokio::runtime::Handle,
    pub(crate) started: Instant,
}

impl Io for ThreadIo {
    fn wall_ms(&self) -> u64 {
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as u64)
    }

    fn mono_ms(&self) -> u64 {
        u64::try_from(self.started.elapsed().as_millis()).unwrap_or(u64::MAX)
    }

    fn send(&mut self, m: Message) {
        self.outboxes.send(m);
    }

    fn write(&mut self, job: WriterJob) {
        self.writer.submit(job);
    }

    fn wait_idle(&mut self) {
        self.writer.wait_idle();
    }

    fn apply(&mut self, job: ApplyJob) {
        if !self.apply_worker.submit(job) {
            super::fail_stop(&anyhow::anyhow!("the apply worker stopped"));
        }
    }

    fn send_snapshot(&mut self, job: SnapshotJob) {
        self.outboxes.send_snapshot(job);
    }

    fn fetch_blob(&mut self, hash: [u8; 32]) {
        let (blobs, inputs) = (self.blobs.clone(), self.inputs.clone());
        let spawned = std::thread::Builder::new()
            .name("keel-blob-fetch".into())
            .spawn(move || {
                loop {
                    // Stored and checked, never read whole into memory here.
                    let found = blobs.fetch(&hash);
                    if !found {
                        tracing::warn!(target: "keel::txn", blob = %blobs::hex(&hash), "no peer has the blob yet; apply keeps waiting");
                    }
                    // Also how the thread learns that the driver has stopped.
                    if inputs.send(Input::BlobFetched { hash, found }).is_err() || found {
                        return;
                    }
                    std::thread::sleep(Duration::from_secs(1));
                }
            });
        if let Err(e) = spawned {
            super::fail_stop(&e.into());
        }
    }

    fn connect(&mut self, peers: &BTreeMap<NodeId, String>) {
        self.blobs.set_peers(peers.values().cloned().collect());
        for (id, queues) in self.outboxes.connect(peers) {
            let url = peers[&id].clone();
            tracing::info!(target: "keel::msg", peer = id, %url, "connecting to peer");
            let inputs = self.inputs.clone();
            let told: crate::peer::NotAMember = std::sync::Arc::new(move |detail| {
                let _ = inputs.send(Input::NotAMember { per: id, detail });
            });
            self.tokio.spawn(crate::peer::peer_sender(
                url,
                queues,
                self.metrics.clone(),
                told,
            ));
        }
    }
}
