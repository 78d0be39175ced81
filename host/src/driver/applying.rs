//! The driver's side of applying: committed entries handed to the apply worker a batch at a
//! time, its results absorbed into the write-back layer, the registry and the dry-run
//! journal, and the clients answered.

use std::sync::Arc;

use super::*;

impl Driver {
    /// Entries committed but not yet applied here.
    pub(super) fn apply_lag(&self) -> u64 {
        self.raft.commit_index().saturating_sub(self.applied)
    }

    /// Hands the queued entries to the apply worker, unless a batch is in flight: each batch
    /// must see the state the previous one left.
    ///
    /// Design §6: a `Deploy` whose plugin blob is not here waits for it, fetched on a
    /// thread of its own (the entries after it wait too: apply stays in log order).
    pub(super) fn dispatch_apply(&mut self) -> anyhow::Result<()> {
        if self.applying.is_some() || self.fetching.is_some() || self.apply_queue.is_empty() {
            return Ok(());
        }
        // Only the entries of the next batch: the rest of the queue is looked at when its turn
        // comes (a full scan per batch would cost O(queue) on every dispatch under load).
        let blobs = &self.blobs;
        let missing = self
            .apply_queue
            .iter()
            .take(MAX_APPLY_BATCH)
            .position(|e| e.record.blobs().iter().any(|h| !blobs.has(h)));
        if missing == Some(0) {
            let lacking = self.apply_queue.front().and_then(|e| {
                let h = e.record.blobs().into_iter().find(|h| !self.blobs.has(h))?;
                Some((e.index, h))
            });
            if let Some((index, hash)) = lacking {
                self.wait_for_blob(index, hash);
            }
            return Ok(());
        }
        let n = self
            .apply_queue
            .len()
            .min(MAX_APPLY_BATCH)
            .min(missing.unwrap_or(usize::MAX));
        let entries: Vec<keel_raft::Entry> = self.apply_queue.drain(..n).collect();
        let job = ApplyJob {
            epoch: self.apply_epoch,
            view: self.storage.view()?,
            unflushed: Arc::clone(&self.unflushed.read().unwrap_or_else(|e| e.into_inner())),
            entries,
        };
        self.applying = job.entries.last().map(|e| e.index);
        self.io.apply(job);
        Ok(())
    }

    /// The worker's result: absorbed into the applied state, then the next batch goes out.
    pub(super) fn applied_batch(&mut self, done: ApplyDone) -> anyhow::Result<()> {
        if done.epoch != self.apply_epoch {
            return Ok(()); // computed before a snapshot install replaced the state
        }
        self.applying = None;
        self.metrics.apply_seconds.observe(done.took.as_secs_f64());
        match done.result {
            // A payload blob went missing or was found damaged (and quarantined) after the
            // batch was dispatched: fetch it and apply the same entries again.
            Err(state::ApplyError::BlobGone(hash)) => {
                let first = done.entries.first().map_or(0, |e| e.index);
                for e in done.entries.into_iter().rev() {
                    self.apply_queue.push_front(e);
                }
                self.wait_for_blob(first, hash);
                Ok(())
            }
            result => {
                self.absorb(&done.entries, result?)?;
                self.dispatch_apply()
            }
        }
    }

    pub(super) fn absorb(
        &mut self,
        entries: &[keel_raft::Entry],
        applied: Applied,
    ) -> anyhow::Result<()> {
        let dropped = applied.deployed.dropped.clone();
        state::activate(&self.registry, applied.deployed);
        let last = applied.batch.last_applied;
        let waiting = {
            let mut slot = self.unflushed.write().unwrap_or_else(|e| e.into_inner());
            let unflushed = Arc::make_mut(&mut slot);
            unflushed.absorb(applied.batch);
            // Under the same lock, so a dry run sees records and state alike.
            let mut journal = self.registry.journal();
            for name in &dropped {
                journal.forget(name);
            }
            journal.push(applied.journal);
            (unflushed.len(), unflushed.bytes())
        };
        if waiting.0 >= FLUSH_AT || waiting.1 >= FLUSH_AT_BYTES {
            self.flush();
        }
        tracing::debug!(target: "keel::txn", last = %last, n = entries.len(), "applied");
        self.metrics.applied.inc_by(entries.len() as u64);
        self.bytes_since_snapshot += entries
            .iter()
            .map(|e| e.record.inline_bytes() as u64)
            .sum::<u64>();
        // The status says applied before any client hears its answer, so a client's next
        // request never meets a status from before its own command (e.g. "plugin not
        // active yet" while the deploy it waited for is applied).
        self.applied = last.index;
        self.raft.applied(last.index);
        {
            // Only the indices: the whole status is published once per loop iteration.
            let mut status = self.status.lock().unwrap_or_else(|e| e.into_inner());
            status.applied_index = self.applied;
            status.commit_index = self.raft.commit_index();
            status.last_log_index = self.raft.last_index();
        }
        for out in applied.results {
            let Some((t, replies)) = self.proposals.get_mut(&out.index) else {
                continue;
            };
            if *t != out.term {
                continue;
            }
            if let Some(reply) = replies
                .get_mut(out.position as usize)
                .and_then(Option::take)
            {
                let _ = reply.send(match out {
                    CommandOutcome {
                        unknown_session: true,
                        result,
                        ..
                    } => CommandReply::SessionUnknown(result.err().unwrap_or_default()),
                    out => CommandReply::Done {
                        index: out.index,
                        term: out.term,
                        position: out.position,
                        result: out.result,
                    },
                });
            }
        }
        for e in entries {
            if let Some((term, reply)) = self.member_changes.remove(&e.index) {
                let _ = reply.send(match &e.record {
                    Record::Config(config) if e.term == term => MemberReply::Done {
                        index: e.index,
                        config: config.clone(),
                    },
                    _ => MemberReply::Retry("the change was replaced by a new leader".into()),
                });
            }
            // Proposals whose index was taken by another record (a no-op of a new leader).
            for reply in self
                .proposals
                .remove(&e.index)
                .into_iter()
                .flat_map(|(_, replies)| replies.into_iter().flatten())
            {
                let _ = reply.send(CommandReply::Retry(
                    "the entry was replaced by a new leader".into(),
                ));
            }
            if self.deploy_in_flight == Some(e.index) {
                self.deploy_in_flight = None;
            }
        }
        if self
            .leaving
            .values()
            .any(|(index, _)| *index <= self.applied)
        {
            self.connect_peers(self.applied);
        }
        self.release_reads();
        self.maybe_snapshot()?;
        Ok(())
    }

    /// Entries up to `index` arrived in an installed snapshot and will never be applied
    /// here one by one: the replies waiting on them are answered now (their outcome cannot
    /// be told: the entry may or may not be the one the leader committed) and their slots
    /// freed, instead of waiting out the client's timeout.
    pub(super) fn answer_covered(&mut self, index: Index) {
        let why = format!(
            "entry replaced by a snapshot up to index {index} before it was applied here; outcome unknown, retry with the same serial"
        );
        self.proposals.retain(|&i, (_, replies)| {
            if i > index {
                return true;
            }
            for reply in replies.drain(..).flatten() {
                let _ = reply.send(CommandReply::OutcomeUnknown(why.clone()));
            }
            false
        });
        let covered: Vec<Index> = self
            .member_changes
            .keys()
            .copied()
            .filter(|&i| i <= index)
            .collect();
        for i in covered {
            if let Some((_, reply)) = self.member_changes.remove(&i) {
                let _ = reply.send(MemberReply::Retry(format!(
                    "{why} (the configuration in force is in /v1/status)"
                )));
            }
        }
        if self.deploy_in_flight.is_some_and(|i| i <= index) {
            self.deploy_in_flight = None;
        }
    }

    pub(super) fn release_reads(&mut self) {
        let applied = self.applied;
        let (ready, waiting): (Vec<_>, Vec<_>) = self
            .reads_waiting
            .drain(..)
            .partition(|(i, _)| *i <= applied);
        self.reads_waiting = waiting;
        for (i, reply) in ready {
            let _ = reply.send(Ok(i));
        }
    }
}
