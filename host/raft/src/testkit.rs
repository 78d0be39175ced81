//! Deliberately broken variants of the core (feature `testkit`), one rule removed each.
//! The simulator must catch every one of them; the closing notes record how many seeds
//! each takes. Never enabled in a real node.

/// One rule of the paper, switched off.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Bug {
    /// §5.4.2: commit an entry of an earlier term by counting replicas.
    CommitPreviousTermByCounting,
    /// §5.2: grant a second vote in a term that already has one.
    DoubleVote,
    /// §5.4.1: grant votes without the up-to-date log check.
    SkipUpToDateCheck,
    /// Fig. 2: forget to persist `votedFor` (a restart forgets the vote).
    VoteNotPersisted,
    /// §5.1: a leader ignores messages from higher terms and keeps leading.
    LeaderIgnoresHigherTerm,
    /// §10.2.1: the leader counts itself towards commit before its own write is durable.
    LeaderCountsSelfBeforePersist,
    /// §5.3: a follower truncates its log after `prev_index` even where entries match.
    TruncateMatchingSuffix,
    /// §6.4: serve ReadIndex before the leader has committed an entry of its term.
    ReadIndexWithoutNoop,
    /// Thesis §6.4.1: answer lease reads whenever the role is leader (until the next
    /// CheckQuorum check), not only within a lease dated by acknowledged heartbeats.
    LeaseByRole,
    /// Thesis §4.2.3: a restarted voter grants votes at once, although it may have heard
    /// from a leader within the minimum election timeout before it crashed.
    VoteRightAfterRestart,
}

impl Bug {
    /// Every variant, for the simulator's teeth table.
    pub const ALL: [Bug; 10] = [
        Bug::CommitPreviousTermByCounting,
        Bug::DoubleVote,
        Bug::SkipUpToDateCheck,
        Bug::VoteNotPersisted,
        Bug::LeaderIgnoresHigherTerm,
        Bug::LeaderCountsSelfBeforePersist,
        Bug::TruncateMatchingSuffix,
        Bug::ReadIndexWithoutNoop,
        Bug::LeaseByRole,
        Bug::VoteRightAfterRestart,
    ];
}

/// The set of bugs switched on (usually none or one).
#[derive(Clone, Debug, Default)]
pub struct Bugs(pub Vec<Bug>);
