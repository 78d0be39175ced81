//! Throughput of the Raft core alone: 3 cores in one thread, no I/O (every write is
//! "durable" at once), messages delivered in memory. Each ready round the client side
//! proposes a batch of 64-byte commands to the leader; we count the commands the leader
//! applies per second. Not a test: numbers depend on the machine.
//!
//! `cargo run --release -p keel-raft --example core_bench [ENTRIES] [COMPACT_EVERY]`
//!
//! ENTRIES (default 50,000) commands are committed per batch size; with COMPACT_EVERY > 0
//! every node compacts its log whenever it has applied that many more entries, as a real
//! node taking snapshots would (the snapshot image itself costs nothing here).

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use keel_raft::{
    ClusterConfig, ClusterId, Command, Config, InitialState, Message, Payload, ProposeError, Raft,
    Record, Role,
};

const CLUSTER: ClusterId = ClusterId(0xbe_0c4);
const PAYLOAD_BYTES: usize = 64;

fn main() {
    let arg = |n: usize, default: u64| {
        std::env::args()
            .nth(n)
            .map_or(default, |a| a.parse().expect("a number"))
    };
    let (total, compact_every) = (arg(1, 50_000), arg(2, 0));
    println!(
        "keel-raft core_bench: 3 nodes, in-memory, {PAYLOAD_BYTES}-byte commands, compact every {compact_every} (0: never)"
    );
    for batch in [1, 64, 1024] {
        let r = run(batch, total, compact_every);
        println!(
            "batch {batch:>5}/round: {:>9} entries in {:>7.3} s = {:>10.0} committed entries/s ({} ready rounds)",
            r.committed,
            r.elapsed.as_secs_f64(),
            r.committed as f64 / r.elapsed.as_secs_f64(),
            r.rounds
        );
    }
}

struct Outcome {
    committed: u64,
    elapsed: Duration,
    rounds: u64,
}

struct Cluster {
    nodes: Vec<Raft>,
    network: VecDeque<Message>,
    /// Commands applied by the leader (node 1).
    leader_applied: u64,
    /// Per node: the index of its last compaction.
    compacted: [u64; 3],
    compact_every: u64,
}

impl Cluster {
    fn new(compact_every: u64) -> Cluster {
        let nodes = (1..=3)
            .map(|id| {
                let cfg = Config::new(id, CLUSTER);
                Raft::new(
                    cfg,
                    InitialState::bootstrap(ClusterConfig::with_voters([1, 2, 3])),
                )
                .expect("valid config")
            })
            .collect();
        Cluster {
            nodes,
            network: VecDeque::new(),
            leader_applied: 0,
            compacted: [0; 3],
            compact_every,
        }
    }

    /// Every node runs its Ready once (writes are durable at once), then every message
    /// sent is delivered.
    fn round(&mut self) {
        for (i, raft) in self.nodes.iter_mut().enumerate() {
            if !raft.has_ready() {
                continue;
            }
            let rd = raft.ready();
            let point = rd.persist_point();
            self.network.extend(rd.messages);
            self.network.extend(rd.persisted_messages);
            if let Some((index, term)) = point {
                raft.persisted(index, term);
            }
            if let Some(last) = rd.committed_entries.last() {
                if i == 0 {
                    self.leader_applied += rd
                        .committed_entries
                        .iter()
                        .filter(|e| matches!(e.record, Record::Command(_)))
                        .count() as u64;
                }
                raft.applied(last.index);
                if self.compact_every > 0 && last.index - self.compacted[i] >= self.compact_every {
                    raft.compact(last.index).expect("applied and committed");
                    self.compacted[i] = last.index;
                }
            }
        }
        while let Some(m) = self.network.pop_front() {
            let to = (m.to - 1) as usize;
            self.nodes[to].step(m).expect("same cluster");
        }
    }
}

fn run(batch: u64, total: u64, compact_every: u64) -> Outcome {
    let mut c = Cluster::new(compact_every);
    while c.nodes[0].role() != Role::Leader {
        c.nodes[0].tick();
        c.round();
    }
    let command = Record::Command(Command {
        plugin: "bench".into(),
        client: None,
        payload: Payload::Inline(vec![7; PAYLOAD_BYTES]),
    });
    let start = Instant::now();
    let (mut proposed, mut rounds) = (0u64, 0u64);
    while c.leader_applied < total {
        for _ in 0..batch.min(total - proposed) {
            match c.nodes[0].propose(command.clone(), 0) {
                Ok(_) => proposed += 1,
                Err(ProposeError::Busy { .. }) => break,
                Err(e) => panic!("leader refused a proposal: {e}"),
            }
        }
        c.round();
        rounds += 1;
    }
    Outcome {
        committed: c.leader_applied,
        elapsed: start.elapsed(),
        rounds,
    }
}
