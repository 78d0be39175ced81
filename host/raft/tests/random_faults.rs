//! A small seeded fault storm over the in-process harness: random ticks, reordered,
//! dropped and duplicated messages, partitions, slow disks, crashes, transfers,
//! compactions and reads. After every step it checks Election Safety (§5.2: one leader per
//! term), State Machine Safety (§5.4.3: no two nodes apply different entries at one index)
//! and read linearizability (thesis §6.4: a read's index is at least every index applied
//! anywhere before the read was asked); at the end, with every fault repaired, a leader must
//! accept a proposal and every node commit it. The simulator in `keel-tests` does this at scale;
//! this test keeps the core's own crate honest and shows the checks have teeth.

mod common;

use std::collections::BTreeMap;

use common::{Cluster, ClusterBuilder};
use keel_raft::testkit::Bug;
use keel_raft::{Entry, Index, NodeId, ReadMode, Role, Term};
use rand_chacha::ChaCha8Rng;
use rand_core::{RngCore, SeedableRng};

/// A cluster shape the storm runs against.
#[derive(Clone, Copy, Debug)]
struct Shape {
    nodes: u64,
    pre_vote: bool,
    check_quorum: bool,
}

const SHAPES: [Shape; 2] = [
    Shape {
        nodes: 3,
        pre_vote: true,
        check_quorum: true,
    },
    Shape {
        nodes: 5,
        pre_vote: false,
        check_quorum: false,
    },
];

/// What has been observed so far, to compare every node against.
#[derive(Default)]
struct Observed {
    leader_of_term: BTreeMap<Term, NodeId>,
    applied_at: BTreeMap<Index, Entry>,
    /// Pending reads: (node, ctx) → highest index applied anywhere when it was asked.
    read_floor: BTreeMap<(NodeId, u64), Index>,
    reads_checked: BTreeMap<NodeId, usize>,
}

impl Observed {
    fn check(&mut self, c: &Cluster) -> Result<(), String> {
        for (&id, node) in &c.nodes {
            if let Some(r) = node.raft.as_ref().filter(|r| r.role() == Role::Leader) {
                let first = *self.leader_of_term.entry(r.term()).or_insert(id);
                if first != id {
                    return Err(format!(
                        "two leaders in term {}: {first} and {id}",
                        r.term()
                    ));
                }
            }
            for e in &node.applied {
                let first = self.applied_at.entry(e.index).or_insert_with(|| e.clone());
                if first != e {
                    return Err(format!("node {id} applied {e:?}, another node {first:?}"));
                }
            }
            let checked = self
                .reads_checked
                .insert(id, node.read_states.len())
                .unwrap_or(0);
            for read in &node.read_states[checked..] {
                let floor = self.read_floor.get(&(id, read.ctx)).copied().unwrap_or(0);
                if read.index.is_some_and(|i| i < floor) {
                    return Err(format!(
                        "node {id} read {read:?} below applied index {floor}"
                    ));
                }
            }
        }
        Ok(())
    }
}

/// Runs `steps` random steps; returns the first violation, with the step it happened at,
/// or the cluster as the storm left it.
fn storm(seed: u64, shape: Shape, bugs: &[Bug], steps: u64) -> Result<Cluster, String> {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let mut c = ClusterBuilder::voters(shape.nodes)
        .pre_vote(shape.pre_vote)
        .check_quorum(shape.check_quorum)
        .max_entries_per_message(3)
        .max_inflight(4)
        .bugs(bugs)
        .build();
    let mut seen = Observed::default();
    let mut pick = |n: u64| rng.next_u64() % n.max(1);
    for step in 0..steps {
        let id = 1 + pick(shape.nodes);
        let up = c.nodes[&id].raft.is_some();
        let leads = up && c.role(id) == Role::Leader;
        let msg = pick(c.in_flight_len() as u64) as usize;
        match pick(100) {
            0..20 if up => c.tick(id, 1),
            20..55 => c.deliver_nth(msg),
            55..60 => c.drop_nth(msg),
            60..62 => c.duplicate_nth(msg),
            62..75 if leads => {
                let _ = c.propose(id, &format!("s{step}"));
            }
            75..77 => c.isolate(id),
            77..80 => c.heal(),
            80..82 => c.restart(id),
            82..85 if up => c.hold_writes(id),
            85..89 if up => c.release_writes(id),
            89..90 if leads => {
                let _ = c.raft_mut(id).transfer_leadership(1 + pick(shape.nodes));
            }
            90..92 if up => {
                let applied = c.raft(id).status().applied;
                let _ = c.compact(id, applied);
            }
            92..94 if up => {
                let floor = seen.applied_at.keys().next_back().copied().unwrap_or(0);
                if c.read_index(id, step, ReadMode::ReadIndex).is_ok() {
                    seen.read_floor.insert((id, step), floor);
                }
            }
            _ => {}
        }
        c.handle_readies();
        seen.check(&c)
            .map_err(|e| format!("seed {seed} {shape:?} step {step}: {e}"))?;
    }
    Ok(c)
}

/// Liveness: once every fault is repaired, some leader accepts a proposal within a few
/// election timeouts and every node commits it.
fn settle(c: &mut Cluster) -> Result<(), String> {
    c.heal();
    let ids: Vec<NodeId> = c.nodes.keys().copied().collect();
    for &id in &ids {
        if c.nodes[&id].raft.is_none() {
            c.restart(id);
        }
        c.release_writes(id);
    }
    let mut proposed = None;
    for _ in 0..200 {
        c.tick_all(1);
        if let Some(leader) = c.leader() {
            proposed = c
                .propose(leader, "final")
                .ok()
                .map(|(index, _)| (leader, index));
            if proposed.is_some() {
                break;
            }
        }
    }
    let (leader, index) = proposed.ok_or("no leader accepts proposals")?;
    c.tick_all(50);
    match ids.iter().find(|&&id| c.commit(id) < index) {
        Some(id) => Err(format!(
            "node {id} never committed {index} (leader {leader})"
        )),
        None => Ok(()),
    }
}

#[test]
fn random_faults_never_break_safety_or_reads_and_the_healed_cluster_commits() {
    for seed in 0..60 {
        for shape in SHAPES {
            let mut c = storm(seed, shape, &[], 3000).unwrap_or_else(|v| panic!("{v}"));
            if let Err(e) = settle(&mut c) {
                panic!("seed {seed} {shape:?} after healing: {e}");
            }
        }
    }
}

#[test]
fn the_fault_storm_catches_broken_variants_of_the_core() {
    // The rules the storm can reach by chance; the others need the focused scenarios in
    // paper.rs (Figure 8, a leader ignoring a higher term, a reordered stale append).
    for bug in [
        Bug::DoubleVote,
        Bug::SkipUpToDateCheck,
        Bug::VoteNotPersisted,
        Bug::LeaderCountsSelfBeforePersist,
        Bug::ReadIndexWithoutNoop,
    ] {
        let caught = (0..200).find(|&seed| {
            SHAPES
                .iter()
                .any(|&shape| storm(seed, shape, &[bug], 3000).is_err())
        });
        let seed = caught.unwrap_or_else(|| panic!("{bug:?} survived 200 seeds"));
        eprintln!("{bug:?}: caught at seed {seed}");
    }
}
