//! Snapshot images between simulated nodes (issue #16). The leader's real driver hands over
//! the `InstallSnapshot` message with a read view of its applied state; here the image is cut
//! into small chunks that the network may lose, duplicate and reorder, and the receiver
//! stages them with the production [`Staging`] (in memory), which skips duplicates, refuses
//! gaps and verifies the whole image before the real driver gets message and image together.
//! A gap stands for a broken connection: the sender goes on from the bytes the receiver holds,
//! as the production sender does after a `409`.

use keel::peer::snapshot::{ChunkRefused, StageError, Staging};
use keel_raft::{MessageBody, SnapshotMeta};
use keel_storage::{SnapshotChunks, StateView};

use super::{Ev, Input, Message, NodeId, Sim, Violation};

/// Chunk size in the simulator: small, so that even a small state makes several chunks.
const SIM_CHUNK: usize = 64;

/// One image on its way.
pub(super) struct Transfer {
    from: NodeId,
    to: NodeId,
    message: Message,
    meta: SnapshotMeta,
    /// The sender's restart count: a crash ends its transfers.
    restarts: u64,
    chunks: Vec<(u64, Vec<u8>)>,
    total: u64,
    /// The offset the sender last resumed from (a gap is resumed from once).
    resumed_from: Option<u64>,
}

impl Sim {
    pub(super) fn send_snapshot(&mut self, m: Message, view: Box<dyn StateView + Send>) {
        if !self.up(m.from) {
            return;
        }
        let MessageBody::InstallSnapshot { snapshot: meta } = &m.body else {
            return;
        };
        let meta = meta.clone();
        let mut chunks = Vec::new();
        let mut at = 0u64;
        for chunk in SnapshotChunks::new(view, SIM_CHUNK) {
            match chunk {
                Ok(c) => {
                    let len = c.len() as u64;
                    chunks.push((at, c));
                    at += len;
                }
                Err(e) => {
                    self.fail(Violation::Harness(format!("n{} image: {e}", m.from)));
                    return;
                }
            }
        }
        let id = self.seq;
        let (from, to) = (m.from, m.to);
        self.trace(|| {
            format!(
                "n{from} streams snapshot {}/{} to n{to}: {at} bytes, {} chunks",
                meta.index,
                meta.term,
                chunks.len()
            )
        });
        let restarts = self.restarts(from);
        self.transfers.insert(
            id,
            Transfer {
                from,
                to,
                message: m,
                meta,
                restarts,
                chunks,
                total: at,
                resumed_from: None,
            },
        );
        self.send_chunks(id, 0);
    }

    /// Sends chunks `first..` in order, each a little after the one before; with faults
    /// some are lost, duplicated, or held back past later ones.
    fn send_chunks(&mut self, id: u64, first: usize) {
        let Some(t) = self.transfers.get(&id) else {
            return;
        };
        let (from, to, n) = (t.from, t.to, t.chunks.len());
        for i in first..n {
            let mut delay = 1 + i as u64 / 4;
            if self.faults_on {
                if !self.connected(from, to) || self.chance(self.cfg.drop) {
                    continue;
                }
                if self.chance(self.cfg.duplicate) {
                    let later = delay + 1 + self.rand(40);
                    self.schedule(later, Ev::Chunk(id, i));
                }
                if self.chance(0.1) {
                    delay += 5 + self.rand(60);
                }
            }
            self.schedule(delay, Ev::Chunk(id, i));
        }
    }

    pub(super) fn deliver_chunk(&mut self, id: u64, i: usize) {
        let Some(t) = self.transfers.get(&id) else {
            return;
        };
        let (from, to) = (t.from, t.to);
        if self.frozen(to) {
            let after = self.thaw_delay(to);
            self.schedule(after, Ev::Chunk(id, i));
            return;
        }
        if t.restarts != self.restarts(from)
            || !self.up(to)
            || (self.faults_on && !self.connected(from, to))
        {
            return;
        }
        let key = (to, from, t.meta.index, t.meta.term);
        let (offset, total) = (t.chunks[i].0, t.total);
        let staging = self
            .staging
            .entry(key)
            .or_insert_with(|| Staging::memory(from, &t.meta));
        match staging.accept(offset, &t.chunks[i].1) {
            Ok(()) if staging.have() == total => {
                let Some(staging) = self.staging.remove(&key) else {
                    return;
                };
                let message = t.message.clone();
                match staging.finish() {
                    Ok(image) => {
                        self.snapshots_staged += 1;
                        self.trace(|| {
                            format!("n{to} staged snapshot {}/{} from n{from}", key.2, key.3)
                        });
                        self.call(to, |d| d.input(Input::Snapshot { message, image }));
                    }
                    // Only a broken sender gets here (the staging took every byte in order):
                    // the image is dropped, as the HTTP layer drops it, and nothing is
                    // installed; the core asks again, and a sender that keeps sending bad
                    // images shows up as a cluster that never catches up.
                    Err(e) => {
                        self.trace(|| format!("n{to} refuses snapshot from n{from}: {e}"));
                    }
                }
            }
            Ok(()) => {}
            Err(StageError::Refused(ChunkRefused::Gap { have })) => {
                if t.resumed_from == Some(have) {
                    return;
                }
                let first = t.chunks.iter().rposition(|(o, _)| *o <= have).unwrap_or(0);
                if let Some(t) = self.transfers.get_mut(&id) {
                    t.resumed_from = Some(have);
                }
                self.snapshot_resumes += 1;
                self.trace(|| format!("n{from} resumes snapshot to n{to} from byte {have}"));
                self.send_chunks(id, first);
            }
            Err(e) => self.fail(Violation::Harness(format!("n{to} staging: {e}"))),
        }
    }

    /// A crashed node loses what it was staging (`keel serve` clears its staging directory
    /// at start).
    pub(super) fn drop_staging(&mut self, id: NodeId) {
        self.staging.retain(|k, _| k.0 != id);
    }
}
