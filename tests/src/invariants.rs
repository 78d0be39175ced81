//! Raft's safety properties (§5.2 Figure 3), checked incrementally as the simulation runs:
//! every write, every apply and every step. Each node's log is mirrored as a chain of
//! hashes (`h(i) = H(h(i-1), term(i), record(i))`), so comparing two logs up to an index is
//! one comparison, and a global `(index, term) → h` map checks Log Matching across all
//! nodes for all time.

use std::collections::{BTreeMap, HashMap};
use std::hash::{DefaultHasher, Hash, Hasher};

use keel_raft::{Entry, Index, NodeId, Raft, Role, SnapshotMeta, Term};

/// A broken property, with what shows it.
#[derive(Debug, Clone)]
pub enum Violation {
    /// §5.2: two leaders in one term.
    ElectionSafety(String),
    /// §5.3: a leader overwrote or deleted entries in its own log.
    LeaderAppendOnly(String),
    /// §5.3: two logs agree on (index, term) but differ before it.
    LogMatching(String),
    /// §5.4: a leader lacks an entry committed before its term.
    LeaderCompleteness(String),
    /// §5.4.3: two nodes applied different entries at one index, or one skipped one.
    StateMachineSafety(String),
    /// The client history has no linearization.
    Linearizability(String),
    /// After healing, the cluster did not finish the work in bounded time.
    Liveness(String),
    /// Replicas applied the same entries but hold different states.
    Divergence(String),
    /// The core panicked (it asserts its own invariants) or refused a well-formed input.
    Harness(String),
}

impl std::fmt::Display for Violation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Violation::ElectionSafety(s) => write!(f, "Election Safety: {s}"),
            Violation::LeaderAppendOnly(s) => write!(f, "Leader Append-Only: {s}"),
            Violation::LogMatching(s) => write!(f, "Log Matching: {s}"),
            Violation::LeaderCompleteness(s) => write!(f, "Leader Completeness: {s}"),
            Violation::StateMachineSafety(s) => write!(f, "State Machine Safety: {s}"),
            Violation::Linearizability(s) => write!(f, "Linearizability: {s}"),
            Violation::Liveness(s) => write!(f, "Liveness: {s}"),
            Violation::Divergence(s) => write!(f, "Divergence: {s}"),
            Violation::Harness(s) => write!(f, "Core failure: {s}"),
        }
    }
}

impl Violation {
    /// The property's name, for the teeth table.
    pub fn property(&self) -> &'static str {
        match self {
            Violation::ElectionSafety(_) => "ElectionSafety",
            Violation::LeaderAppendOnly(_) => "LeaderAppendOnly",
            Violation::LogMatching(_) => "LogMatching",
            Violation::LeaderCompleteness(_) => "LeaderCompleteness",
            Violation::StateMachineSafety(_) => "StateMachineSafety",
            Violation::Linearizability(_) => "Linearizability",
            Violation::Liveness(_) => "Liveness",
            Violation::Divergence(_) => "Divergence",
            Violation::Harness(_) => "CoreAssertion",
        }
    }
}

/// One node's log as written: a base (snapshot) and the chain hash of every entry after it.
#[derive(Debug, Default, Clone)]
struct View {
    base_index: Index,
    base_hash: u64,
    /// `(term, chain hash)` of entries `base_index + 1 ..`.
    entries: Vec<(Term, u64)>,
}

impl View {
    fn last_index(&self) -> Index {
        self.base_index + self.entries.len() as Index
    }
    fn hash_at(&self, index: Index) -> Option<u64> {
        if index == self.base_index {
            return Some(self.base_hash);
        }
        if index < self.base_index {
            return None;
        }
        self.entries
            .get((index - self.base_index - 1) as usize)
            .map(|e| e.1)
    }
}

/// A committed entry, as first applied anywhere.
#[derive(Debug, Clone, Copy)]
struct Committed {
    term: Term,
    hash: u64,
    /// Upper bound on the term it was committed in: the highest term any node had when
    /// it was first applied. Only leaders of this term or later must hold it.
    term_bound: Term,
}

/// The checker's state.
#[derive(Debug, Default)]
pub struct Invariants {
    leader_of_term: BTreeMap<Term, NodeId>,
    chain: HashMap<(Index, Term), u64>,
    views: BTreeMap<NodeId, View>,
    committed: BTreeMap<Index, Committed>,
    applied: BTreeMap<NodeId, Index>,
    leader_last: BTreeMap<NodeId, (Term, Index)>,
}

fn chain_hash(prev: u64, e: &Entry) -> u64 {
    let mut h = DefaultHasher::new();
    prev.hash(&mut h);
    e.index.hash(&mut h);
    e.term.hash(&mut h);
    postcard::to_allocvec(&e.record)
        .unwrap_or_default()
        .hash(&mut h);
    h.finish()
}

impl Invariants {
    /// A node (re)started from its disk, where the state machine had applied `applied`.
    pub fn node_restarted(
        &mut self,
        id: NodeId,
        snapshot: &SnapshotMeta,
        entries: &[Entry],
        applied: Index,
    ) {
        // Whatever was handed out but never made durable (a snapshot install, say) is gone.
        self.applied.insert(id, applied);
        let base_hash = self.snapshot_hash(snapshot);
        let mut view = View {
            base_index: snapshot.index,
            base_hash,
            entries: Vec::new(),
        };
        let mut prev = base_hash;
        for e in entries {
            prev = chain_hash(prev, e);
            view.entries.push((e.term, prev));
        }
        self.views.insert(id, view);
        self.leader_last.remove(&id);
    }

    fn snapshot_hash(&self, s: &SnapshotMeta) -> u64 {
        if s.index == 0 {
            return 0;
        }
        self.chain.get(&(s.index, s.term)).copied().unwrap_or(0)
    }

    /// A node writes a snapshot and/or entries (Ready steps 2).
    pub fn on_write(
        &mut self,
        id: NodeId,
        role: Role,
        term: Term,
        snapshot: Option<&SnapshotMeta>,
        entries: &[Entry],
    ) -> Result<(), Violation> {
        if let Some(s) = snapshot {
            let hash = self.snapshot_hash(s);
            if s.index > 0 && !self.chain.contains_key(&(s.index, s.term)) {
                return Err(Violation::LogMatching(format!(
                    "n{id} installs a snapshot at {}/{} that no log ever held",
                    s.index, s.term
                )));
            }
            if let Some(c) = self.committed.get(&s.index)
                && c.hash != hash
            {
                return Err(Violation::StateMachineSafety(format!(
                    "n{id} installs a snapshot at {} that differs from the committed entry",
                    s.index
                )));
            }
            self.views.insert(
                id,
                View {
                    base_index: s.index,
                    base_hash: hash,
                    entries: Vec::new(),
                },
            );
            self.applied.insert(id, s.index);
        }
        let Some(first) = entries.first() else {
            return Ok(());
        };
        let view = self.views.entry(id).or_default();
        if role == Role::Leader && first.index <= view.last_index() {
            return Err(Violation::LeaderAppendOnly(format!(
                "leader n{id} (term {term}) rewrites its log from index {} (last {})",
                first.index,
                view.last_index()
            )));
        }
        let Some(mut prev) = view.hash_at(first.index - 1) else {
            return Err(Violation::LogMatching(format!(
                "n{id} writes index {} after a hole (log ends at {}, base {})",
                first.index,
                view.last_index(),
                view.base_index
            )));
        };
        let keep = (first.index - 1 - view.base_index) as usize;
        view.entries.truncate(keep);
        for e in entries {
            prev = chain_hash(prev, e);
            view.entries.push((e.term, prev));
            match self.chain.get(&(e.index, e.term)) {
                Some(&h) if h != prev => {
                    return Err(Violation::LogMatching(format!(
                        "n{id} holds entry {}/{} with a history different from another node's",
                        e.index, e.term
                    )));
                }
                Some(_) => {}
                None => {
                    self.chain.insert((e.index, e.term), prev);
                }
            }
        }
        Ok(())
    }

    /// A node applies an entry. `term_bound` is the highest term any node has now.
    pub fn on_apply(
        &mut self,
        id: NodeId,
        e: &Entry,
        term_bound: Term,
        leaders: &[(NodeId, Term)],
    ) -> Result<(), Violation> {
        let last = self.applied.get(&id).copied().unwrap_or(0);
        if e.index != last + 1 {
            return Err(Violation::StateMachineSafety(format!(
                "n{id} applies {} right after {}",
                e.index, last
            )));
        }
        self.applied.insert(id, e.index);
        let view = self.views.get(&id);
        let Some(hash) = view.and_then(|v| v.hash_at(e.index)) else {
            return Err(Violation::StateMachineSafety(format!(
                "n{id} applies {} which is not in its written log",
                e.index
            )));
        };
        match self.committed.get(&e.index) {
            Some(c) if c.hash != hash || c.term != e.term => {
                Err(Violation::StateMachineSafety(format!(
                    "n{id} applies {}/{} but {}/{} was applied there before",
                    e.index, e.term, e.index, c.term
                )))
            }
            Some(_) => Ok(()),
            None => {
                let c = Committed {
                    term: e.term,
                    hash,
                    term_bound,
                };
                self.committed.insert(e.index, c);
                // Every current leader whose term is at least the commit term must hold it.
                for &(leader, term) in leaders {
                    if term >= term_bound {
                        self.holds(leader, term, e.index, c)?;
                    }
                }
                Ok(())
            }
        }
    }

    fn holds(
        &self,
        leader: NodeId,
        term: Term,
        index: Index,
        c: Committed,
    ) -> Result<(), Violation> {
        let Some(view) = self.views.get(&leader) else {
            return Ok(());
        };
        if view.base_index >= index {
            return Ok(()); // compacted: snapshots hold only committed, checked entries
        }
        if view.hash_at(index) != Some(c.hash) {
            return Err(Violation::LeaderCompleteness(format!(
                "leader n{leader} of term {term} lacks committed entry {index}/{}",
                c.term
            )));
        }
        Ok(())
    }

    /// Called after every step for every node that is leader.
    pub fn on_leader(
        &mut self,
        id: NodeId,
        term: Term,
        last: Index,
        raft: &Raft,
    ) -> Result<(), Violation> {
        // Election Safety: "at most one leader can be elected in a given term".
        match self.leader_of_term.get(&term) {
            Some(&other) if other != id => {
                return Err(Violation::ElectionSafety(format!(
                    "n{other} and n{id} both lead term {term}"
                )));
            }
            Some(_) => {}
            None => {
                self.leader_of_term.insert(term, id);
                // Leader Completeness, at election: the latest entry committed under a term
                // bound <= this term must be in the new leader's log.
                if let Some((&index, &c)) = self
                    .committed
                    .iter()
                    .rev()
                    .find(|(_, c)| c.term_bound <= term)
                {
                    self.holds(id, term, index, c)?;
                }
            }
        }
        // Leader Append-Only, in memory: while it leads a term, its last index never drops
        // and the entry there never changes.
        if let Some(&(t, prev_last)) = self.leader_last.get(&id)
            && t == term
            && last < prev_last
        {
            return Err(Violation::LeaderAppendOnly(format!(
                "leader n{id} of term {term}: last index went from {prev_last} to {last}"
            )));
        }
        let _ = raft;
        self.leader_last.insert(id, (term, last));
        Ok(())
    }
}
