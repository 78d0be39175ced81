//! The apply worker: committed entries run through the plugins on a thread of their own, so
//! the driver keeps ticking, heartbeating, voting, replicating and persisting while a plugin
//! runs. A command that loops until its fuel runs out costs its own answer seconds, not the
//! cluster its leader (before, a 6–9 s plugin call on the driver thread cost two elections).
//!
//! One batch is in flight at a time: a batch reads the state the previous one left, so the
//! driver absorbs each result (into the write-back layer, the registry, the replies) before
//! it hands out the next. Entries committed meanwhile queue in the driver.

use std::sync::Arc;
use std::sync::mpsc::{Receiver, Sender};
use std::time::{Duration, Instant};

use keel_plugin::Runtime;
use keel_raft::Entry;
use keel_storage::StateView;

use super::Input;
use crate::blobs::Blobs;
use crate::state::{self, Applied, ApplyError, Registry, Unflushed};

/// One batch for the worker, with the state it applies on top of.
pub struct ApplyJob {
    /// The driver's apply epoch when it sent the batch; a snapshot install starts a new
    /// epoch, and results of an older one are dropped (they were computed on a state the
    /// snapshot replaced).
    pub(crate) epoch: u64,
    /// Storage as of the batch's start.
    pub(crate) view: Box<dyn StateView + Send>,
    /// The applied state not yet in storage, as of the batch's start.
    pub(crate) unflushed: Arc<Unflushed>,
    /// Committed entries, in log order, without gaps after the last batch.
    pub(crate) entries: Vec<Entry>,
}

impl ApplyJob {
    /// The committed entries of the batch.
    pub fn entries(&self) -> &[Entry] {
        &self.entries
    }

    /// The apply epoch it was sent in (see [`super::Driver::apply_epoch`]).
    pub fn epoch(&self) -> u64 {
        self.epoch
    }
}

/// What one batch came to, sent back to the driver as [`Input::Applied`].
pub struct ApplyDone {
    pub(crate) epoch: u64,
    pub(crate) entries: Vec<Entry>,
    pub(crate) result: Result<Applied, ApplyError>,
    pub(crate) took: Duration,
}

impl ApplyDone {
    /// Whether the batch was applied (not stopped for a missing blob or a failure).
    pub fn applied(&self) -> bool {
        self.result.is_ok()
    }
}

/// The handle the driver holds; the thread ends when it is dropped.
pub(crate) struct ApplyWorker {
    jobs: Sender<ApplyJob>,
}

impl ApplyWorker {
    pub(crate) fn start(
        runtime: Runtime,
        blobs: Blobs,
        registry: Registry,
        done: Sender<Input>,
    ) -> std::io::Result<ApplyWorker> {
        let (jobs, rx) = std::sync::mpsc::channel::<ApplyJob>();
        std::thread::Builder::new()
            .name("keel-apply".into())
            .spawn(move || run(rx, &runtime, &blobs, &registry, &done))?;
        Ok(ApplyWorker { jobs })
    }

    /// Hands a batch to the worker. Returns false if the worker is gone (it only stops
    /// when the driver does).
    pub(crate) fn submit(&self, job: ApplyJob) -> bool {
        self.jobs.send(job).is_ok()
    }
}

fn run(
    jobs: Receiver<ApplyJob>,
    runtime: &Runtime,
    blobs: &Blobs,
    registry: &Registry,
    done: &Sender<Input>,
) {
    for job in jobs {
        let out = run_job(job, runtime, blobs, registry);
        if done.send(Input::Applied(Box::new(out))).is_err() {
            return; // the driver has stopped
        }
    }
}

/// Runs one batch through the plugins (the simulator calls this too, when its scheduler
/// says the worker is done).
pub fn run_job(job: ApplyJob, runtime: &Runtime, blobs: &Blobs, registry: &Registry) -> ApplyDone {
    let started = Instant::now();
    let result = state::apply_batch(
        runtime,
        blobs,
        registry,
        job.view,
        job.unflushed,
        &job.entries,
    );
    ApplyDone {
        epoch: job.epoch,
        entries: job.entries,
        result,
        took: started.elapsed(),
    }
}
