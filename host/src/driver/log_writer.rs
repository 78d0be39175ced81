//! The log writer: steps 2 and 3 of the Ready handshake (`keel_raft::Ready`) on a thread of
//! their own, so the driver goes on applying, proposing and replicating while the disk
//! syncs.
//!
//! The driver hands over each Ready's writes in order. The writer takes everything that
//! queued while it was syncing, makes it durable in one commit (group commit: successive
//! writes merged in order, later entries truncating earlier ones exactly as storage would),
//! and only then sends the messages that promise durability (votes, append
//! acknowledgements; Raft §5.1 Fig. 2) and reports the durable point back to the driver,
//! which tells the core (`Raft::persisted`). So the handshake's order holds: a write is
//! durable before anything that depends on it leaves, and writes become durable in the
//! order the core produced them.
//!
//! Committed entries reach the driver only once they are durable here (the core hands out
//! `min(commit, persisted)`), so the applied state never gets ahead of the durable log.

use std::sync::Arc;
use std::sync::mpsc::{Receiver, Sender};
use std::time::Instant;

use keel_raft::{Entry, HardState, Index, Message, SnapshotMeta, Term};
use keel_storage::{LogWrite, StorageError};
use prometheus_client::metrics::histogram::Histogram;

use super::Input;
use super::io::NodeStore;
use crate::metrics::Metrics;
use crate::peer::Outboxes;
use crate::state::Unflushed;

/// One Ready's worth of step 2 and 3.
#[derive(Debug, Default)]
pub struct Write {
    /// Term and vote, if changed.
    pub hard_state: Option<HardState>,
    /// Entries to append, truncating stored ones from `entries[0].index` on.
    pub entries: Vec<Entry>,
    /// Messages to send once this write and every earlier one is durable.
    pub then_send: Vec<Message>,
}

/// What the driver queues on the log writer, done in order.
#[derive(Debug)]
pub enum WriterJob {
    /// Handshake steps 2 and 3.
    Write(Write),
    /// A layer of the applied state to write through to storage (`Unflushed::freeze`);
    /// [`Input::Flushed`] reports it done. Every entry it holds is durable already (the core
    /// hands out for apply only entries this writer reported), so storage's `last_applied`
    /// never gets ahead of its log.
    Flush(Arc<Unflushed>),
    /// Drop the stored log up to a snapshot the core now holds (applied and flushed).
    Purge(SnapshotMeta),
}

/// Where a writer round's results go: messages that may leave now, inputs for the driver.
pub trait WriterOut {
    /// A message whose promise (a vote, an acknowledgement) is durable now.
    fn send(&mut self, m: Message);
    /// [`Input::Persisted`] or [`Input::Flushed`].
    fn input(&mut self, input: Input);
}

enum Job {
    Job(WriterJob),
    /// Answered once every earlier job is done.
    Barrier(Sender<()>),
}

/// The driver's end of the writer thread.
pub(super) struct LogWriter {
    jobs: Sender<Job>,
}

struct ThreadOut<'a> {
    outboxes: &'a Outboxes,
    driver: &'a Sender<Input>,
}

impl WriterOut for ThreadOut<'_> {
    fn send(&mut self, m: Message) {
        self.outboxes.send(m);
    }
    fn input(&mut self, input: Input) {
        let _ = self.driver.send(input);
    }
}

impl LogWriter {
    /// Starts the writer thread. Durable points go back to the driver as
    /// [`Input::Persisted`]; a storage failure stops the process (design §8).
    pub(super) fn start(
        storage: Arc<dyn NodeStore>,
        outboxes: Outboxes,
        driver: Sender<Input>,
        metrics: Arc<Metrics>,
    ) -> std::io::Result<LogWriter> {
        let (jobs, rx) = std::sync::mpsc::channel();
        std::thread::Builder::new()
            .name("keel-log-writer".into())
            .spawn(move || run(&rx, &*storage, &outboxes, &driver, &metrics))?;
        Ok(LogWriter { jobs })
    }

    /// Queues a job behind the earlier ones.
    pub(super) fn submit(&self, job: WriterJob) {
        // The thread only ends with the process (fail-stop) or after the driver drops us.
        let _ = self.jobs.send(Job::Job(job));
    }

    /// Returns once everything submitted so far is durable and its messages sent.
    pub(super) fn wait_idle(&self) {
        let (tx, rx) = std::sync::mpsc::channel();
        if self.jobs.send(Job::Barrier(tx)).is_ok() {
            let _ = rx.recv();
        }
    }
}

fn run(
    rx: &Receiver<Job>,
    storage: &dyn NodeStore,
    outboxes: &Outboxes,
    driver: &Sender<Input>,
    metrics: &Metrics,
) {
    while let Ok(first) = rx.recv() {
        let mut jobs = Vec::new();
        let mut barriers = Vec::new();
        for job in std::iter::once(first).chain(rx.try_iter()) {
            match job {
                Job::Job(job) => jobs.push(job),
                // Safe to answer after this round: it came after every job taken with it.
                Job::Barrier(done) => barriers.push(done),
            }
        }
        let mut out = ThreadOut { outboxes, driver };
        if let Err(e) = round(jobs, storage, metrics, &mut out) {
            super::fail_stop(&e.into());
        }
        for done in barriers {
            let _ = done.send(());
        }
    }
}

/// One group commit: every job that queued since the last round, in order. The writes
/// become one durable commit; only then do the messages that promise durability leave and
/// the durable point go to the driver. The simulator runs this same function at each
/// simulated fsync.
pub fn round(
    jobs: Vec<WriterJob>,
    storage: &dyn NodeStore,
    metrics: &Metrics,
    out: &mut dyn WriterOut,
) -> Result<(), StorageError> {
    let mut writes = Vec::new();
    let mut flushes = Vec::new();
    let mut purges = Vec::new();
    for job in jobs {
        match job {
            WriterJob::Write(w) => writes.push(w),
            WriterJob::Flush(layer) => flushes.push(layer),
            WriterJob::Purge(meta) => purges.push(meta),
        }
    }
    let merged = merge(writes);
    let point = merged.durable_point();
    if merged.hard_state.is_some() || !merged.entries.is_empty() {
        timed(&metrics.log_commit_seconds, || {
            storage.persist(LogWrite {
                hard_state: merged.hard_state,
                snapshot: None,
                entries: &merged.entries,
            })
        })?;
        metrics.fsyncs.inc();
        metrics
            .log_commit_entries
            .observe(merged.entries.len() as f64);
    }
    for m in merged.then_send {
        out.send(m);
    }
    if let Some((index, term)) = point {
        out.input(Input::Persisted(index, term));
    }
    // After the log: acknowledgements wait for nobody's flush.
    for layer in flushes {
        if let Some(batch) = layer.to_batch() {
            timed(&metrics.flush_seconds, || storage.apply(&batch))?;
            tracing::debug!(target: "keel::txn", last = %batch.last_applied, keys = batch.writes.len(), "flushed");
        }
        out.input(Input::Flushed(layer));
    }
    for meta in purges {
        timed(&metrics.purge_seconds, || storage.purge(&meta))?;
    }
    Ok(())
}

/// One storage step, its duration recorded.
fn timed<T>(
    histogram: &Histogram,
    step: impl FnOnce() -> Result<T, StorageError>,
) -> Result<T, StorageError> {
    let started = Instant::now();
    let out = step()?;
    histogram.observe(started.elapsed().as_secs_f64());
    Ok(out)
}

impl Write {
    /// What to report to the core once this is durable: its last entry.
    fn durable_point(&self) -> Option<(Index, Term)> {
        self.entries.last().map(|e| (e.index, e.term))
    }
}

/// Successive writes as one: the last hard state, the entries as storage would hold them
/// after writing each in turn, every message in order.
fn merge(writes: Vec<Write>) -> Write {
    let mut out = Write::default();
    for w in writes {
        if w.hard_state.is_some() {
            out.hard_state = w.hard_state;
        }
        if let Some(first) = w.entries.first().map(|e| e.index) {
            // A later write replaces everything from its first index on (a new leader's
            // entries overwriting uncommitted ones, §5.3).
            out.entries.retain(|e| e.index < first);
            out.entries.extend(w.entries);
        }
        out.then_send.extend(w.then_send);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use keel_raft::Record;
    use keel_storage::{RedbStorage, Storage};

    fn entry(index: Index, term: Term) -> Entry {
        Entry {
            index,
            term,
            timestamp_ms: 0,
            record: Record::Noop,
        }
    }

    fn ids(entries: &[Entry]) -> Vec<(Index, Term)> {
        entries.iter().map(|e| (e.index, e.term)).collect()
    }

    fn ack(index: Index) -> Message {
        Message {
            from: 1,
            to: 2,
            cluster: keel_raft::ClusterId::default(),
            term: 1,
            body: keel_raft::MessageBody::AppendEntriesResponse {
                success: true,
                index,
                hint_term: 0,
                hint_index: 0,
            },
        }
    }

    /// Raft §5.1 Fig. 2 (persist before responding), with the writer on its own thread: every
    /// acknowledgement is checked against the store the moment it is received, from another
    /// thread. Sending before the commit returns fails this (the store lags the ack).
    #[test]
    fn acknowledgements_leave_in_order_and_only_once_their_write_is_durable() {
        let dir = tempfile::tempdir().expect("tempdir");
        let storage = Arc::new(
            RedbStorage::open(dir.path(), keel_storage::StorageOptions::default()).expect("open"),
        );
        let outboxes = Outboxes::default();
        let members = std::collections::BTreeMap::from([(2, "http://peer".to_string())]);
        let (_, mut outbox) = outboxes.connect(&members).pop().expect("an outbox");
        let (driver, reports) = std::sync::mpsc::channel();
        let writer = LogWriter::start(
            Arc::clone(&storage) as Arc<dyn NodeStore>,
            outboxes.clone(),
            driver,
            Arc::new(Metrics::default()),
        )
        .expect("writer");
        let checker = {
            let storage = Arc::clone(&storage);
            std::thread::spawn(move || {
                let mut acked = Vec::new();
                while let Some(m) = outbox.messages.blocking_recv() {
                    let keel_raft::MessageBody::AppendEntriesResponse { index, .. } = m.body else {
                        panic!("unexpected message {m:?}");
                    };
                    let durable = storage.log_bounds().expect("bounds").last.index;
                    assert!(
                        durable >= index,
                        "ack for {index} with only {durable} stored"
                    );
                    acked.push(index);
                }
                acked
            })
        };
        // Many small writes, submitted faster than the disk syncs: they group-commit.
        for i in 1..=200 {
            writer.submit(WriterJob::Write(Write {
                hard_state: (i == 1).then_some(HardState {
                    term: 1,
                    vote: None,
                }),
                entries: vec![entry(i, 1)],
                then_send: vec![ack(i)],
            }));
        }
        writer.wait_idle();
        drop(outboxes.connect(&std::collections::BTreeMap::new()));
        drop(writer);
        let acked = checker.join().expect("no ack before its write");
        assert_eq!(acked, (1..=200).collect::<Vec<_>>(), "every ack, in order");
        let points: Vec<Input> = reports.try_iter().collect();
        let last = points.iter().rev().find_map(|p| match p {
            Input::Persisted(i, t) => Some((*i, *t)),
            _ => None,
        });
        assert_eq!(last, Some((200, 1)), "the durable point reaches the driver");
        assert!(points.len() < 200, "queued writes share commits");
    }

    #[test]
    fn merged_writes_hold_what_writing_each_in_turn_would() {
        let hs = |term| {
            Some(HardState {
                term,
                vote: Some(2),
            })
        };
        let merged = merge(vec![
            Write {
                hard_state: hs(1),
                entries: vec![entry(1, 1), entry(2, 1), entry(3, 1)],
                then_send: Vec::new(),
            },
            // A new leader overwrites 2 and 3 (§5.3) ...
            Write {
                hard_state: hs(2),
                entries: vec![entry(2, 2), entry(3, 2), entry(4, 2)],
                then_send: Vec::new(),
            },
            // ... a write with nothing new to store keeps what came before ...
            Write::default(),
            // ... and appends continue after it.
            Write {
                hard_state: None,
                entries: vec![entry(5, 2)],
                then_send: Vec::new(),
            },
        ]);
        assert_eq!(
            ids(&merged.entries),
            vec![(1, 1), (2, 2), (3, 2), (4, 2), (5, 2)]
        );
        assert_eq!(merged.hard_state, hs(2));
        assert_eq!(merged.durable_point(), Some((5, 2)));
    }

    #[test]
    fn a_later_write_may_truncate_below_everything_queued_before_it() {
        let merged = merge(vec![
            Write {
                entries: vec![entry(7, 1), entry(8, 1)],
                ..Write::default()
            },
            Write {
                entries: vec![entry(5, 3)],
                ..Write::default()
            },
        ]);
        // Stored as one write starting at 5: storage truncates its own 5.. first.
        assert_eq!(ids(&merged.entries), vec![(5, 3)]);
        assert_eq!(merged.durable_point(), Some((5, 3)));
    }

    #[test]
    fn only_a_hard_state_has_no_durable_point() {
        let merged = merge(vec![Write {
            hard_state: Some(HardState {
                term: 4,
                vote: None,
            }),
            ..Write::default()
        }]);
        assert!(merged.entries.is_empty());
        assert_eq!(merged.durable_point(), None);
    }
}
