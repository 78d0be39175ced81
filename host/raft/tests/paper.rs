//! One test per claim of the Raft paper that the core implements ("§N": the extended Raft
//! paper, Ongaro & Ousterhout 2014; "thesis §N": Ongaro's dissertation, 2014). Each test
//! names the claim as a sentence and would fail if the rule were removed. Where the
//! `testkit` feature can switch a rule off (`Bug`), the `teeth` section at the end shows the
//! same scenario failing with that bug on.

mod common;

use common::{CLUSTER, Cluster, ClusterBuilder, entry, msg};
use keel_raft::testkit::Bug;
use keel_raft::{
    ClusterId, CompactError, Config, ConfigChangeError, Index, InitialState, Message, MessageBody,
    NodeId, ProposeError, Raft, ReadError, ReadMode, ReadState, Record, ReplicationState, Role,
    StepError, Term,
};

// ---------------------------------------------------------------- helpers

fn vote_request(
    from: NodeId,
    to: NodeId,
    term: Term,
    last_index: Index,
    last_term: Term,
) -> Message {
    msg(
        from,
        to,
        term,
        MessageBody::RequestVote {
            pre_vote: false,
            last_index,
            last_term,
            transfer: false,
        },
    )
}

fn append(
    from: NodeId,
    to: NodeId,
    term: Term,
    prev: (Index, Term),
    entries: Vec<keel_raft::Entry>,
    commit: Index,
) -> Message {
    msg(
        from,
        to,
        term,
        MessageBody::AppendEntries {
            prev_index: prev.0,
            prev_term: prev.1,
            entries,
            commit,
        },
    )
}

/// The vote answer among `out`: `Some(granted)`, or `None` if there was no answer.
fn vote_answer(out: &[Message]) -> Option<bool> {
    out.iter().find_map(|m| match m.body {
        MessageBody::RequestVoteResponse { granted, .. } => Some(granted),
        _ => None,
    })
}

fn is_append(m: &Message) -> bool {
    matches!(m.body, MessageBody::AppendEntries { .. })
}

fn reads(c: &Cluster, id: NodeId) -> Vec<ReadState> {
    c.node(id).read_states.clone()
}

/// A cluster with node 1 elected and its no-op committed everywhere.
fn three_with_leader(b: ClusterBuilder) -> Cluster {
    let mut c = b.build();
    assert!(c.elect(1), "node 1 wins the first election");
    c.heartbeat(1);
    c
}

// ---------------------------------------------------------------- elections (§5.2)

// Reference: §5.2
#[test]
fn a_follower_that_hears_nothing_for_an_election_timeout_starts_an_election() {
    let mut c = ClusterBuilder::voters(3).pre_vote(false).build();
    c.tick(1, 9);
    assert_eq!(
        c.role(1),
        Role::Follower,
        "the timeout is at least election_ticks"
    );
    c.campaign(1);
    assert_eq!(
        (c.role(1), c.term(1)),
        (Role::Candidate, 1),
        "it increments its term"
    );
    let requests: Vec<NodeId> = c
        .in_flight()
        .filter(|m| m.body.kind() == "RequestVote")
        .map(|m| m.to)
        .collect();
    assert_eq!(requests, vec![2, 3], "and asks every other voter");
    c.stabilize();
    assert_eq!(c.leader(), Some(1));
}

// Reference: §5.2 ("election timeouts are chosen randomly from a fixed interval")
#[test]
fn randomized_election_timeouts_differ_between_seeds_and_stay_in_range() {
    let ticks_to_campaign = |seed: u64| {
        let mut cfg = Config::new(1, CLUSTER);
        cfg.seed = seed;
        let mut r = Raft::new(
            cfg,
            InitialState::bootstrap(keel_raft::ClusterConfig::with_voters([1, 2, 3])),
        )
        .expect("valid config");
        (1..100).find(|_| {
            r.tick();
            r.role() != Role::Follower
        })
    };
    let timeouts: Vec<u32> = (1..=16)
        .map(|s| ticks_to_campaign(s).expect("campaigns"))
        .collect();
    assert!(
        timeouts.iter().all(|t| (10..20).contains(t)),
        "in [election_ticks, 2 * election_ticks): {timeouts:?}"
    );
    let distinct: std::collections::BTreeSet<_> = timeouts.iter().collect();
    assert!(
        distinct.len() > 3,
        "seeds give different timeouts: {timeouts:?}"
    );
    assert_eq!(
        ticks_to_campaign(7),
        ticks_to_campaign(7),
        "and the same seed the same one"
    );
}

// Reference: §5.2, Fig. 2 ("If election timeout elapses without … granting vote to candidate: convert to candidate")
#[test]
fn a_follower_that_grants_a_vote_restarts_its_election_timeout() {
    // Node 3 starts in term 1 with no vote; T is its (seeded) election timeout.
    let build = || {
        ClusterBuilder::voters(3)
            .pre_vote(false)
            .log(3, &[1])
            .build()
    };
    let mut probe = build();
    let t = (1..100)
        .find(|_| {
            probe.tick(3, 1);
            probe.role(3) != Role::Follower
        })
        .expect("campaigns");
    let mut c = build();
    c.tick(3, t - 1);
    assert_eq!(
        vote_answer(&c.exchange(vote_request(1, 3, 1, 1, 1))),
        Some(true)
    );
    c.tick(3, t - 1);
    assert_eq!(c.role(3), Role::Follower, "the vote restarted the timeout");
}

/// Node 3 is asked by candidate 1, then by candidate 2, in term 1. Returns the two answers.
fn votes_in_one_term(bugs: &[Bug]) -> (Option<bool>, Option<bool>) {
    let mut c = ClusterBuilder::voters(3).pre_vote(false).bugs(bugs).build();
    let first = vote_answer(&c.exchange(vote_request(1, 3, 1, 0, 0)));
    let second = vote_answer(&c.exchange(vote_request(2, 3, 1, 0, 0)));
    (first, second)
}

// Reference: §5.2 ("each server will vote for at most one candidate in a given term")
#[test]
fn a_server_votes_for_at_most_one_candidate_per_term() {
    assert_eq!(votes_in_one_term(&[]), (Some(true), Some(false)));
}

// Reference: §5.2 (first-come-first-served; a repeated request gets the same answer)
#[test]
fn a_server_repeats_its_vote_to_the_same_candidate() {
    let mut c = ClusterBuilder::voters(3).pre_vote(false).build();
    assert_eq!(
        vote_answer(&c.exchange(vote_request(1, 3, 1, 0, 0))),
        Some(true)
    );
    assert_eq!(
        vote_answer(&c.exchange(vote_request(1, 3, 1, 0, 0))),
        Some(true)
    );
}

/// Node 3 holds entries of terms [1, 2]; candidates with the given last entries ask for its
/// vote in ever higher terms.
fn up_to_date_votes(bugs: &[Bug]) -> Vec<Option<bool>> {
    let mut c = ClusterBuilder::voters(3)
        .pre_vote(false)
        .log(3, &[1, 2])
        .bugs(bugs)
        .build();
    [(5, 1), (1, 2), (2, 2), (1, 3)]
        .iter()
        .enumerate()
        .map(|(i, &(last_index, last_term))| {
            vote_answer(&c.exchange(vote_request(1, 3, 3 + i as Term, last_index, last_term)))
        })
        .collect()
}

// Reference: §5.4.1 ("the voter denies its vote if its own log is more up-to-date")
#[test]
fn a_voter_denies_its_vote_to_a_candidate_with_a_less_up_to_date_log() {
    // A longer log of an older term loses; a shorter log of the same term loses; an equal
    // log or a later last term wins.
    assert_eq!(
        up_to_date_votes(&[]),
        vec![Some(false), Some(false), Some(true), Some(true)]
    );
}

// Reference: §5.1, Fig. 2 ("persist before responding to RPCs")
#[test]
fn a_vote_is_sent_only_after_the_vote_is_persisted() {
    let mut cfg = Config::new(3, CLUSTER);
    cfg.pre_vote = false;
    let mut r = Raft::new(
        cfg,
        InitialState::bootstrap(keel_raft::ClusterConfig::with_voters([1, 2, 3])),
    )
    .expect("valid config");
    r.step(vote_request(1, 3, 1, 0, 0)).expect("accepted");
    let rd = r.ready();
    assert!(
        rd.messages.is_empty(),
        "nothing may go out before the write"
    );
    assert_eq!(
        rd.hard_state,
        Some(keel_raft::HardState {
            term: 1,
            vote: Some(1)
        })
    );
    assert_eq!(vote_answer(&rd.persisted_messages), Some(true));
}

/// Node 2 votes for 1 in term 1, restarts, and is asked by 3 in the same term.
fn vote_after_restart(bugs: &[Bug]) -> Option<bool> {
    let mut c = ClusterBuilder::voters(3).pre_vote(false).bugs(bugs).build();
    c.isolate(3);
    assert!(c.elect(1));
    c.restart(2);
    vote_answer(&c.exchange(vote_request(3, 2, 1, 5, 1)))
}

// Reference: §5.1, Fig. 2 (votedFor is persistent state)
#[test]
fn a_vote_survives_a_restart() {
    assert_eq!(vote_after_restart(&[]), Some(false));
}

// ---------------------------------------------------------------- terms (§5.1)

/// Leader 1 (of a cluster without CheckQuorum) hears a rejection carrying a higher term.
fn leader_after_higher_term(bugs: &[Bug]) -> (Role, Term) {
    let mut c = three_with_leader(ClusterBuilder::voters(3).check_quorum(false).bugs(bugs));
    let t = c.term(1);
    c.exchange(msg(
        2,
        1,
        t + 1,
        MessageBody::AppendEntriesResponse {
            success: false,
            index: 0,
            hint_term: 0,
            hint_index: 0,
        },
    ));
    (c.role(1), c.term(1))
}

// Reference: §5.1 ("a leader or candidate reverts to follower state")
#[test]
fn a_leader_that_sees_a_higher_term_steps_down_and_adopts_it() {
    assert_eq!(leader_after_higher_term(&[]), (Role::Follower, 2));
}

// Reference: §5.1 ("If a server receives a request with a stale term number, it rejects the request")
#[test]
fn a_server_rejects_requests_with_a_stale_term_and_tells_the_sender_its_term() {
    let mut c = ClusterBuilder::voters(3).log(2, &[5]).build();
    let out = c.exchange(append(1, 2, 4, (0, 0), vec![entry(1, 4)], 1));
    assert_eq!(c.log_terms(2), vec![5], "the stale append changed nothing");
    assert_eq!(c.commit(2), 0);
    assert_eq!(out.len(), 1);
    assert_eq!(out[0].term, 5);
    assert!(matches!(
        out[0].body,
        MessageBody::AppendEntriesResponse { success: false, .. }
    ));
    let out = c.exchange(vote_request(3, 2, 4, 9, 4));
    assert_eq!(vote_answer(&out), None, "no vote for a stale candidate");
    assert_eq!(c.raft(2).status().vote, None);
}

// Reference: §5.2 ("the candidate recognizes the leader as legitimate and returns to follower state")
#[test]
fn a_candidate_that_hears_from_a_leader_of_its_term_becomes_a_follower() {
    let mut c = ClusterBuilder::voters(3).pre_vote(false).build();
    c.campaign(2);
    assert_eq!((c.role(2), c.term(2)), (Role::Candidate, 1));
    c.exchange(append(1, 2, 1, (0, 0), vec![], 0));
    assert_eq!((c.role(2), c.raft(2).leader()), (Role::Follower, Some(1)));
}

// Reference: thesis §9.6 (a pre-candidate also defers to a leader of its term)
#[test]
fn a_pre_candidate_that_hears_from_the_leader_becomes_a_follower() {
    let mut c = ClusterBuilder::voters(3).build();
    c.campaign(2);
    assert_eq!((c.role(2), c.term(2)), (Role::PreCandidate, 0));
    c.exchange(msg(
        1,
        2,
        0,
        MessageBody::Heartbeat {
            commit: 0,
            read_round: 0,
            sent_tick: 0,
        },
    ));
    assert_eq!((c.role(2), c.raft(2).leader()), (Role::Follower, Some(1)));
}

// ---------------------------------------------------------------- replication (§5.3)

// Reference: §5.3 (AppendEntries consistency check)
#[test]
fn a_follower_rejects_an_append_whose_previous_entry_does_not_match() {
    let mut c = ClusterBuilder::voters(3).log(2, &[1, 1]).build();
    let out = c.exchange(append(1, 2, 2, (2, 2), vec![entry(3, 2)], 0));
    assert_eq!(c.log_terms(2), vec![1, 1]);
    assert!(matches!(
        out[0].body,
        MessageBody::AppendEntriesResponse {
            success: false,
            index: 2,
            ..
        }
    ));
}

// Reference: §5.3 ("delete the existing entry and all that follow it")
#[test]
fn a_follower_deletes_a_conflicting_entry_and_all_that_follow_it() {
    let mut c = ClusterBuilder::voters(3).log(2, &[1, 1, 1, 1]).build();
    c.exchange(append(1, 2, 2, (1, 1), vec![entry(2, 2)], 0));
    assert_eq!(c.log_terms(2), vec![1, 2]);
    let on_disk: Vec<Term> = c.node(2).disk.entries.iter().map(|e| e.term).collect();
    assert_eq!(on_disk, vec![1, 2], "the driver was told to truncate too");
}

/// Node 2 holds [1, 1, 1, 1]; a delayed append of term 1 re-sends entry 2 only.
fn log_after_stale_append(bugs: &[Bug]) -> Vec<Term> {
    let mut c = ClusterBuilder::voters(3)
        .log(2, &[1, 1, 1, 1])
        .bugs(bugs)
        .build();
    c.exchange(append(1, 2, 1, (1, 1), vec![entry(2, 1)], 0));
    c.log_terms(2)
}

// Reference: §5.3 ("Append any new entries not already in the log": matching entries stay)
#[test]
fn a_follower_keeps_matching_entries_when_a_stale_append_arrives() {
    assert_eq!(log_after_stale_append(&[]), vec![1, 1, 1, 1]);
}

// Reference: thesis §5.3 (rejection hint: skip a whole term per round trip)
#[test]
fn a_rejection_hint_skips_a_whole_conflicting_term_per_round_trip() {
    // Node 2 holds nine entries of term 2 that the new leader (1) never had.
    let leader_log = [1, 3, 3, 3, 3, 3, 3, 3, 3, 3, 3];
    let mut c = ClusterBuilder::voters(3)
        .log(1, &leader_log)
        .log(2, &[1, 2, 2, 2, 2, 2, 2, 2, 2, 2])
        .log(3, &leader_log)
        .build();
    assert!(c.elect(1));
    let rejections = c
        .delivered
        .iter()
        .filter(|m| {
            m.from == 2
                && matches!(
                    m.body,
                    MessageBody::AppendEntriesResponse { success: false, .. }
                )
        })
        .count();
    assert!(
        rejections <= 2,
        "one entry per round trip would take 10: {rejections}"
    );
    assert_eq!(c.log_terms(2), c.log_terms(1));
}

// Reference: §5.1, Fig. 2 (a follower acknowledges entries only once they are durable)
#[test]
fn a_follower_acknowledges_entries_only_after_writing_them() {
    let mut c = three_with_leader(ClusterBuilder::voters(3));
    c.hold_writes(2);
    c.isolate(3);
    let (index, _) = c.propose(1, "x").expect("leader");
    c.stabilize();
    assert_eq!(c.raft(1).status().progress[&2].match_index, 1);
    assert_eq!(c.commit(1), 1, "no majority has it durably");
    c.restart(2);
    assert_eq!(
        c.raft(2).last_index(),
        1,
        "the unwritten entry is lost in a crash"
    );
    c.heartbeat(1);
    assert_eq!(c.commit(1), index, "and sent again");
}

// Reference: thesis §10.2.1 (a single voter commits on its own write alone)
#[test]
fn a_single_voter_elects_itself_and_commits_once_its_write_is_durable() {
    let mut c = ClusterBuilder::voters(1).build();
    c.hold_writes(1);
    assert!(c.elect(1));
    let (index, _) = c.propose(1, "x").expect("leader");
    c.stabilize();
    assert_eq!(c.commit(1), 0);
    c.release_writes(1);
    c.stabilize();
    assert_eq!(c.commit(1), index);
}

// Reference: Fig. 2 ("set commitIndex = min(leaderCommit, index of last new entry)")
#[test]
fn a_follower_commits_up_to_the_leaders_commit_but_not_past_the_last_new_entry() {
    // Entries 3 and 4 may not be the leader's: they must not commit on its say-so.
    let mut c = ClusterBuilder::voters(3).log(2, &[1, 1, 1, 1]).build();
    c.exchange(append(1, 2, 1, (1, 1), vec![entry(2, 1)], 4));
    assert_eq!(c.commit(2), 2);
    let applied: Vec<Index> = c.node(2).applied.iter().map(|e| e.index).collect();
    assert_eq!(applied, vec![1, 2]);
}

// Reference: thesis §6.4, §8 ("each leader commit[s] a blank no-op entry … at the start of its term")
#[test]
fn a_new_leader_commits_a_noop_of_its_own_term() {
    let c = three_with_leader(ClusterBuilder::voters(3));
    let noop = c.raft(1).entry(1).expect("in the log");
    assert_eq!((noop.term, &noop.record), (c.term(1), &Record::Noop));
    for id in 1..=3 {
        assert_eq!(c.commit(id), 1, "node {id}");
        assert_eq!(
            c.node(id).applied.last().map(|e| &e.record),
            Some(&Record::Noop)
        );
    }
}

/// Figure 8: leader 1 of term 3 holds [1, 2]; its followers hold [1]. Entry 2 (of term 2)
/// reaches both followers but their acknowledgements of the no-op (entry 3) are lost.
/// Returns the leader's commit index at that point, then after a new entry of term 3 commits.
fn figure8_commits(bugs: &[Bug]) -> (Index, Index) {
    let mut c = ClusterBuilder::voters(3)
        .log(1, &[1, 2])
        .log(2, &[1])
        .log(3, &[1])
        .max_entries_per_message(1)
        .bugs(bugs)
        .build();
    c.drop_if(|m| matches!(m.body, MessageBody::AppendEntriesResponse { success: true, index, .. } if index >= 3));
    assert!(c.elect(1));
    let before = c.commit(1);
    let match_2 = c.raft(1).status().progress[&2].match_index;
    assert_eq!(match_2, 2, "entry 2 is on a majority");
    c.heal();
    c.propose(1, "x").expect("leader");
    c.stabilize();
    (before, c.commit(1))
}

// Reference: §5.4.2 ("Raft never commits log entries from previous terms by counting replicas"), Fig. 8
#[test]
fn a_leader_never_commits_an_entry_of_an_earlier_term_by_counting_replicas() {
    assert_eq!(
        figure8_commits(&[]),
        (0, 4),
        "entry 2 commits only with entry 4 of term 3"
    );
}

/// Leader 1 with follower 3 cut off and its own disk slow proposes one entry.
/// Returns its commit index before and after its own write completes.
fn commit_around_leader_write(bugs: &[Bug]) -> (Index, Index) {
    let mut c = three_with_leader(ClusterBuilder::voters(3).bugs(bugs));
    c.isolate(3);
    c.hold_writes(1);
    let (index, _) = c.propose(1, "x").expect("leader");
    c.stabilize();
    assert_eq!(
        c.raft(1).status().progress[&2].match_index,
        index,
        "node 2 has it"
    );
    let before = c.commit(1);
    c.release_writes(1);
    c.stabilize();
    (before, c.commit(1))
}

// Reference: thesis §10.2.1 (the leader's own write runs in parallel; it counts once durable)
#[test]
fn a_leader_counts_itself_toward_commit_only_once_its_write_is_durable() {
    assert_eq!(commit_around_leader_write(&[]), (1, 2));
}

// Reference: thesis §10.2.1 ("the leader may even commit an entry before it has been written to its own disk")
#[test]
fn a_leader_commits_on_a_majority_of_followers_before_its_own_write_finishes_but_applies_after() {
    let mut c = three_with_leader(ClusterBuilder::voters(3));
    c.hold_writes(1);
    let (index, _) = c.propose(1, "x").expect("leader");
    c.stabilize();
    assert_eq!(c.commit(1), index);
    assert_eq!(
        c.raft(1).status().applied,
        1,
        "nothing is applied before it is durable here"
    );
    c.release_writes(1);
    c.stabilize();
    assert_eq!(c.raft(1).status().applied, index);
}

// Reference: thesis §10.2.1 / etcd-io/raft (pipelining: several appends in flight per follower)
#[test]
fn a_leader_pipelines_appends_to_a_follower_in_the_replicate_state() {
    let mut c = three_with_leader(
        ClusterBuilder::voters(3)
            .max_entries_per_message(1)
            .max_inflight(3),
    );
    assert_eq!(
        c.raft(1).status().progress[&2].state,
        ReplicationState::Replicate
    );
    for i in 0..5 {
        c.propose(1, &format!("x{i}")).expect("leader");
    }
    c.handle_readies();
    let appends_to_2 = c.in_flight().filter(|m| m.to == 2 && is_append(m)).count();
    assert_eq!(
        appends_to_2, 3,
        "up to max_inflight appends before any answer"
    );
    c.stabilize();
    c.heartbeat(1);
    assert_eq!(c.commit(2), 6);
}

// ---------------------------------------------------------------- PreVote, CheckQuorum (thesis ch. 6, 9)

/// Node 3 is cut off for 100 ticks of its clock, then rejoins and everyone ticks.
/// Returns (node 3's term while cut off, the leader and its term after rejoining).
fn partition_and_rejoin(pre_vote: bool) -> (Term, Option<NodeId>, Term) {
    let mut c = three_with_leader(ClusterBuilder::voters(3).pre_vote(pre_vote));
    c.isolate(3);
    c.tick(3, 100);
    let isolated_term = c.term(3);
    c.heal();
    c.tick_all(5);
    let leader = c.leader();
    (isolated_term, leader, leader.map_or(0, |l| c.term(l)))
}

// Reference: thesis §9.6 (PreVote: a node that cannot win does not raise its term)
#[test]
fn a_partitioned_node_with_prevote_neither_raises_its_term_nor_deposes_the_leader_on_rejoin() {
    assert_eq!(partition_and_rejoin(true), (1, Some(1), 1));
}

// Reference: thesis §9.6 (why PreVote exists: without it the rejoining node disrupts)
#[test]
fn without_prevote_a_rejoining_node_forces_a_new_term() {
    let (isolated_term, _, term_after) = partition_and_rejoin(false);
    assert!(
        isolated_term > 1 && term_after > 1,
        "{isolated_term} {term_after}"
    );
}

// Reference: thesis §9.6 ("a pre-vote changes no one's term")
#[test]
fn granting_a_pre_vote_changes_neither_term_nor_vote() {
    let mut c = ClusterBuilder::voters(3).check_quorum(false).build();
    let pre_vote = msg(
        1,
        2,
        1,
        MessageBody::RequestVote {
            pre_vote: true,
            last_index: 0,
            last_term: 0,
            transfer: false,
        },
    );
    let out = c.exchange(pre_vote);
    assert_eq!(vote_answer(&out), Some(true));
    assert_eq!(out[0].term, 1, "the answer carries the proposed term");
    let s = c.raft(2).status();
    assert_eq!((s.term, s.vote), (0, None));
}

/// Leader 1 is cut off and ticks two election timeouts.
fn isolated_leader_role(check_quorum: bool) -> Role {
    let mut c = three_with_leader(ClusterBuilder::voters(3).check_quorum(check_quorum));
    c.isolate(1);
    c.tick(1, 20);
    c.role(1)
}

// Reference: thesis §6.2 (CheckQuorum: a leader steps down without a majority for an election timeout)
#[test]
fn a_leader_that_cannot_reach_a_majority_steps_down_after_an_election_timeout() {
    assert_eq!(isolated_leader_role(true), Role::Follower);
    assert_eq!(
        isolated_leader_role(false),
        Role::Leader,
        "the rule is what makes it step down"
    );
}

// Reference: thesis §6.2 (a leader that keeps hearing from a majority stays)
#[test]
fn a_leader_that_hears_from_a_majority_stays_leader() {
    let mut c = three_with_leader(ClusterBuilder::voters(3));
    c.isolate(3);
    for _ in 0..30 {
        c.tick(1, 1);
        c.stabilize();
    }
    assert_eq!((c.role(1), c.term(1)), (Role::Leader, 1));
}

/// Node 3 asks node 2 for its vote in term 2 (node 3's log is as up to date as any),
/// for a leadership transfer or not.
fn ask_2_for_a_vote_in_term_2(c: &mut Cluster, transfer: bool) -> Option<bool> {
    let last = c.raft(3).last_index();
    let out = c.exchange(msg(
        3,
        2,
        2,
        MessageBody::RequestVote {
            pre_vote: false,
            last_index: last,
            last_term: 1,
            transfer,
        },
    ));
    vote_answer(&out)
}

/// Follower 2, which just heard from leader 1, is asked for its vote by 3 in a higher term.
fn vote_in_lease(check_quorum: bool, transfer: bool) -> (Option<bool>, Term) {
    let mut c = three_with_leader(ClusterBuilder::voters(3).check_quorum(check_quorum));
    let vote = ask_2_for_a_vote_in_term_2(&mut c, transfer);
    (vote, c.term(2))
}

// Reference: thesis §4.2.3 ("within the minimum election timeout of hearing from a current leader, it does not update its term or grant its vote")
#[test]
fn a_follower_that_recently_heard_from_the_leader_ignores_vote_requests() {
    assert_eq!(vote_in_lease(true, false), (None, 1));
    assert_eq!(
        vote_in_lease(false, false),
        (Some(true), 2),
        "only with CheckQuorum"
    );
}

// Reference: thesis §3.10 + §4.2.3 (a transfer's election is not disruptive: the lease does not apply)
#[test]
fn a_vote_request_sent_for_a_leadership_transfer_is_answered_within_the_lease() {
    assert_eq!(vote_in_lease(true, true), (Some(true), 2));
}

// ---------------------------------------------------------------- leadership transfer (thesis §3.10)

// Reference: thesis §3.10 (TimeoutNow: the target starts an election at once)
#[test]
fn a_leadership_transfer_sends_timeout_now_and_the_target_wins_the_next_term() {
    let mut c = three_with_leader(ClusterBuilder::voters(3));
    assert!(c.raft_mut(1).transfer_leadership(2));
    c.handle_readies();
    let sent: Vec<String> = c.in_flight().map(|m| m.to_string()).collect();
    assert_eq!(sent, vec!["1->2 t1 TimeoutNow"]);
    c.stabilize();
    assert_eq!(
        (c.leader(), c.term(2), c.role(1)),
        (Some(2), 2, Role::Follower)
    );
}

// Reference: thesis §3.10 (the target first catches up, then gets TimeoutNow)
#[test]
fn a_leadership_transfer_to_a_lagging_node_first_brings_its_log_up_to_date() {
    let mut c = three_with_leader(ClusterBuilder::voters(3));
    c.isolate(2);
    c.propose(1, "x").expect("leader");
    c.stabilize();
    c.heal();
    assert!(c.raft_mut(1).transfer_leadership(2));
    c.stabilize();
    assert_eq!(c.leader(), Some(2));
    assert_eq!(c.log_terms(2), vec![1, 1, 2]);
}

// Reference: thesis §3.10 ("the prior leader stops accepting new client requests"; "aborts the transfer after about one election timeout")
#[test]
fn proposals_are_refused_during_a_transfer_until_it_times_out() {
    let mut c = three_with_leader(ClusterBuilder::voters(3));
    c.isolate(2);
    c.propose(1, "x").expect("leader");
    c.stabilize();
    assert!(c.raft_mut(1).transfer_leadership(2));
    assert_eq!(
        c.propose(1, "y"),
        Err(ProposeError::TransferInProgress { to: 2 })
    );
    for _ in 0..9 {
        c.tick(1, 1);
        c.stabilize();
    }
    assert!(
        c.propose(1, "y").is_err(),
        "still transferring before the timeout"
    );
    c.tick(1, 1);
    assert_eq!(c.role(1), Role::Leader);
    assert!(c.propose(1, "y").is_ok(), "the transfer was aborted");
}

// Reference: thesis §3.10 (only a voter can take over)
#[test]
fn leadership_cannot_be_transferred_to_a_learner_or_by_a_follower() {
    let mut c = three_with_leader(ClusterBuilder::voters(3).learners(&[4]));
    assert!(!c.raft_mut(1).transfer_leadership(4));
    assert!(!c.raft_mut(2).transfer_leadership(3));
}

// ---------------------------------------------------------------- reads (thesis §6.4)

/// Leader 1 commits an entry, then hands over to 2 whose appends (hence no-op) are lost.
/// Node 2 is asked for a read and heartbeats a few times. Returns node 2's answers.
fn read_before_first_commit(bugs: &[Bug]) -> Vec<ReadState> {
    let mut c = three_with_leader(ClusterBuilder::voters(3).bugs(bugs));
    c.propose(1, "x").expect("leader");
    c.stabilize();
    c.drop_if(|m| m.from == 2 && is_append(m));
    assert!(c.raft_mut(1).transfer_leadership(2));
    c.stabilize();
    assert_eq!(c.leader(), Some(2));
    c.read_index(2, 7, ReadMode::ReadIndex).expect("leader");
    for _ in 0..3 {
        c.tick(2, 1);
        c.stabilize();
    }
    reads(&c, 2)
}

// Reference: thesis §6.4 step 1 (the leader must first commit an entry of its term)
#[test]
fn read_index_waits_until_the_leader_has_committed_an_entry_of_its_term() {
    assert_eq!(read_before_first_commit(&[]), vec![]);
}

// Reference: thesis §6.4 step 1 (then the read is served at the new commit index)
#[test]
fn read_index_is_served_once_the_noop_commits() {
    let mut c = three_with_leader(ClusterBuilder::voters(3));
    c.drop_if(|m| m.from == 2 && is_append(m));
    assert!(c.raft_mut(1).transfer_leadership(2));
    c.stabilize();
    c.read_index(2, 7, ReadMode::ReadIndex).expect("leader");
    c.stabilize();
    assert_eq!(reads(&c, 2), vec![]);
    c.heal();
    c.heartbeat(2);
    assert_eq!(
        reads(&c, 2),
        vec![ReadState {
            ctx: 7,
            index: Some(2)
        }]
    );
}

// Reference: thesis §6.4 step 3 (a heartbeat round to a majority confirms leadership)
#[test]
fn read_index_needs_a_heartbeat_round_acknowledged_by_a_majority() {
    let mut c = three_with_leader(ClusterBuilder::voters(3));
    c.drop_if(|m| m.body.kind() == "HeartbeatResp");
    c.read_index(1, 1, ReadMode::ReadIndex).expect("leader");
    c.stabilize();
    assert_eq!(reads(&c, 1), vec![], "no answer without acknowledgements");
    c.heal();
    c.tick(1, 1);
    c.stabilize();
    assert_eq!(
        reads(&c, 1),
        vec![ReadState {
            ctx: 1,
            index: Some(1)
        }]
    );
}

// Reference: thesis §6.4 step 3: the round that confirms a read must be sent after the read
// was recorded. Reads recorded before one Ready share its round (one heartbeat per follower
// for all of them); a read recorded while that round is out waits for the next.
#[test]
fn a_read_is_confirmed_only_by_a_round_sent_after_it_and_reads_share_rounds() {
    let mut c = three_with_leader(ClusterBuilder::voters(3));
    c.take_in_flight();
    c.read_index(1, 1, ReadMode::ReadIndex).expect("leader");
    c.read_index(1, 2, ReadMode::ReadIndex).expect("leader");
    c.handle_ready(1);
    let beats = c
        .in_flight()
        .filter(|m| m.body.kind() == "Heartbeat")
        .count();
    assert_eq!(
        beats, 2,
        "one round, one heartbeat per follower, for both reads"
    );
    c.read_index(1, 3, ReadMode::ReadIndex).expect("leader");
    // Round 1 goes out and comes back before node 1 sends round 2.
    c.deliver(Some(2));
    c.deliver(Some(3));
    c.handle_ready(2);
    c.handle_ready(3);
    c.deliver(Some(1));
    c.handle_ready(1);
    let ctxs = |c: &Cluster| reads(c, 1).iter().map(|r| r.ctx).collect::<Vec<_>>();
    assert_eq!(ctxs(&c), [1, 2], "read 3 came after round 1 was sent");
    c.stabilize();
    assert_eq!(ctxs(&c), [1, 2, 3]);
}

// Reference: thesis §6.4.1 (lease reads rely on CheckQuorum)
#[test]
fn lease_reads_need_check_quorum_and_skip_the_heartbeat_round() {
    let mut c = three_with_leader(ClusterBuilder::voters(3).check_quorum(false));
    assert_eq!(
        c.read_index(1, 1, ReadMode::Lease),
        Err(ReadError::LeaseNeedsCheckQuorum)
    );

    let mut c = three_with_leader(ClusterBuilder::voters(3));
    c.read_index(1, 1, ReadMode::Lease).expect("leader");
    c.handle_readies();
    assert_eq!(
        reads(&c, 1),
        vec![ReadState {
            ctx: 1,
            index: Some(1)
        }]
    );
    assert_eq!(c.in_flight().count(), 0, "no round trip");
    assert_eq!(
        c.read_index(2, 2, ReadMode::Lease),
        Err(ReadError::NotLeader { leader: Some(1) })
    );
}

// Reference: thesis §6.4 ("followers … can issue a request to the leader for the current readIndex")
#[test]
fn a_follower_forwards_read_index_to_the_leader_and_gets_the_index_back() {
    let mut c = three_with_leader(ClusterBuilder::voters(3));
    c.read_index(2, 9, ReadMode::ReadIndex)
        .expect("leader known");
    c.stabilize();
    assert_eq!(
        reads(&c, 2),
        vec![ReadState {
            ctx: 9,
            index: Some(1)
        }]
    );
    assert!(
        c.delivered
            .iter()
            .any(|m| m.to_string() == "2->1 t1 ReadIndex ctx=9")
    );
    let mut lone = ClusterBuilder::voters(3).build();
    assert_eq!(
        lone.read_index(2, 1, ReadMode::ReadIndex),
        Err(ReadError::NoLeader)
    );
}

// Reference: thesis §6.4 (a read that cannot be confirmed fails, so the client retries)
#[test]
fn a_pending_read_fails_when_the_leader_steps_down() {
    let mut c = three_with_leader(ClusterBuilder::voters(3));
    c.isolate(1);
    c.read_index(1, 5, ReadMode::ReadIndex).expect("leader");
    c.tick(1, 20);
    assert_eq!(c.role(1), Role::Follower);
    assert_eq!(
        reads(&c, 1),
        vec![ReadState {
            ctx: 5,
            index: None
        }]
    );
}

/// Leader 1 is cut off right after a heartbeat round that both followers acknowledged,
/// ticks `ticks` times (fewer than an election timeout: it is still leader), and is asked for
/// a lease read. Returns its role and what it answered.
fn lease_read_after_isolation(bugs: &[Bug], ticks: u32) -> (Role, Vec<ReadState>) {
    let mut c = three_with_leader(ClusterBuilder::voters(3).bugs(bugs));
    c.isolate(1);
    c.tick(1, ticks);
    c.read_index(1, 7, ReadMode::Lease).expect("still leader");
    c.handle_readies();
    (c.role(1), reads(&c, 1))
}

// Reference: thesis §6.4.1 ("the leader would use the normal heartbeat mechanism to maintain
// a lease ... once the leader's heartbeats were acknowledged by a majority of the cluster, it
// would extend its lease to start + election timeout / clock drift bound")
#[test]
fn a_lease_is_dated_by_the_heartbeats_a_majority_acknowledged_not_by_the_role() {
    let lease = Config::new(1, CLUSTER).lease_ticks;
    assert_eq!(lease, 7);
    // One tick left: answered at once, no round trip.
    assert_eq!(
        lease_read_after_isolation(&[], lease - 1),
        (
            Role::Leader,
            vec![ReadState {
                ctx: 7,
                index: Some(1)
            }]
        )
    );
    // The lease has run out although the role has not (CheckQuorum checks at 10 ticks): the
    // read waits for a ReadIndex round, which an isolated leader never completes.
    assert_eq!(
        lease_read_after_isolation(&[], lease),
        (Role::Leader, vec![])
    );
}

// Reference: thesis §6.4.1 (a lapsed lease falls back to a round trip, which renews it)
#[test]
fn a_lease_read_after_the_lease_lapsed_takes_a_heartbeat_round_that_renews_it() {
    let mut c = three_with_leader(ClusterBuilder::voters(3));
    c.tick(1, 8);
    c.take_in_flight();
    assert_eq!(c.raft(1).status().lease_ticks_left, 0);
    c.read_index(1, 3, ReadMode::Lease).expect("leader");
    c.handle_readies();
    assert_eq!(reads(&c, 1), vec![]);
    assert!(c.in_flight().any(|m| m.body.kind() == "Heartbeat"));
    c.stabilize();
    assert_eq!(
        reads(&c, 1),
        vec![ReadState {
            ctx: 3,
            index: Some(1)
        }]
    );
    assert_eq!(
        c.raft(1).status().lease_ticks_left,
        7,
        "renewed by the round"
    );
}

/// Leader 1 starts a transfer to 2 whose TimeoutNow is lost, then is asked for a lease read.
fn lease_read_after_timeout_now(bugs: &[Bug]) -> Vec<ReadState> {
    let mut c = three_with_leader(ClusterBuilder::voters(3).bugs(bugs));
    c.drop_if(|m| m.body.kind() == "TimeoutNow");
    assert!(c.raft_mut(1).transfer_leadership(2));
    c.handle_readies();
    c.read_index(1, 4, ReadMode::Lease).expect("leader");
    c.handle_readies();
    reads(&c, 1)
}

// Reference: thesis §3.10 + §6.4.1 (a transfer's vote requests bypass the voters' lease, so
// the leader that sent TimeoutNow no longer holds one)
#[test]
fn a_leader_that_sent_timeout_now_serves_no_lease_reads_for_the_rest_of_its_term() {
    assert_eq!(lease_read_after_timeout_now(&[]), vec![]);
}

/// Follower 2 acknowledged leader 1's heartbeat, crashes and restarts at once, and is asked
/// for its vote by 3 in a higher term.
fn vote_right_after_restart(bugs: &[Bug]) -> (Option<bool>, Term) {
    let mut c = three_with_leader(ClusterBuilder::voters(3).bugs(bugs));
    c.restart(2);
    let vote = ask_2_for_a_vote_in_term_2(&mut c, false);
    (vote, c.term(2))
}

// Reference: thesis §4.2.3 + §6.4.1 (a restarted voter may have heard from the leader within
// the minimum election timeout before it crashed; the leader's lease counts on its refusal)
#[test]
fn a_restarted_voter_refuses_votes_for_a_minimum_election_timeout() {
    assert_eq!(vote_right_after_restart(&[]), (None, 1));
    // Once the timeout has passed on its clock, it votes again.
    let mut c = three_with_leader(ClusterBuilder::voters(3));
    c.restart(2);
    c.isolate(2);
    c.tick(2, 9);
    c.heal();
    assert_eq!(
        ask_2_for_a_vote_in_term_2(&mut c, false),
        None,
        "9 ticks: still within the timeout"
    );
    c.tick(2, 1);
    assert_eq!(ask_2_for_a_vote_in_term_2(&mut c, false), Some(true));
}

// ---------------------------------------------------------------- membership (thesis ch. 4)

// Reference: thesis §4.1 (+ 2015 erratum: a leader first commits an entry of its term)
#[test]
fn a_leader_refuses_a_config_change_before_it_has_committed_an_entry_of_its_term() {
    let mut c = ClusterBuilder::voters(3).build();
    c.drop_if(is_append);
    assert!(c.elect(1));
    assert_eq!(
        c.propose_config(1, &[1, 2, 3], &[4]),
        Err(ProposeError::Config(ConfigChangeError::TermNotCommitted))
    );
    c.heal();
    c.heartbeat(1);
    assert!(c.propose_config(1, &[1, 2, 3], &[4]).is_ok());
}

// Reference: thesis §4.1 ("a server … cannot start another change until the previous one has committed")
#[test]
fn only_one_config_change_may_be_uncommitted_at_a_time() {
    let mut c = three_with_leader(ClusterBuilder::voters(3));
    c.isolate(2);
    c.isolate(3);
    let (index, _) = c.propose_config(1, &[1, 2, 3], &[4]).expect("first change");
    assert_eq!(
        c.propose_config(1, &[1, 2, 3], &[4, 5]),
        Err(ProposeError::Config(ConfigChangeError::Pending { index }))
    );
    c.heal();
    c.stabilize();
    assert!(c.propose_config(1, &[1, 2, 3], &[4, 5]).is_ok());
}

// Reference: thesis §4.1 (single-server changes: at most one voter added or removed)
#[test]
fn a_config_change_may_add_or_remove_at_most_one_voter() {
    let mut c = three_with_leader(ClusterBuilder::voters(3));
    let refused = |changed| {
        Err(ProposeError::Config(
            ConfigChangeError::TooManyVoterChanges { changed },
        ))
    };
    assert_eq!(c.propose_config(1, &[1, 2, 3, 4, 5], &[]), refused(2));
    assert_eq!(
        c.propose_config(1, &[1, 2, 4], &[]),
        refused(2),
        "a swap is two changes"
    );
    assert_eq!(
        c.propose_config(1, &[], &[]),
        Err(ProposeError::Config(ConfigChangeError::NoVoters))
    );
    assert_eq!(
        c.propose_config(1, &[1, 2, 3], &[3]),
        Err(ProposeError::Config(ConfigChangeError::VoterAndLearner(3)))
    );
    assert!(
        c.propose_config(1, &[1, 2, 3], &[4, 5]).is_ok(),
        "learners are not voters"
    );
}

// Reference: thesis §4.1 ("a server always uses the latest configuration in its log, regardless of whether the entry is committed")
#[test]
fn a_configuration_takes_effect_when_appended_and_reverts_when_truncated() {
    let mut c = ClusterBuilder::voters(3).log(2, &[1]).build();
    let four_voters = keel_raft::Entry {
        record: Record::Config(keel_raft::ClusterConfig::with_voters([1, 2, 3, 4])),
        ..entry(2, 1)
    };
    c.exchange(append(1, 2, 1, (1, 1), vec![four_voters], 1));
    assert_eq!(c.commit(2), 1, "not committed");
    assert!(c.raft(2).config().voters.contains(&4), "but in effect");
    c.exchange(append(3, 2, 2, (1, 1), vec![entry(2, 2)], 1));
    assert!(
        !c.raft(2).config().voters.contains(&4),
        "the truncated change is undone"
    );
    let configs = c
        .node(2)
        .events
        .iter()
        .filter(|e| matches!(e, keel_raft::Event::Config { .. }))
        .count();
    assert_eq!(configs, 2, "each change is reported");
}

// Reference: thesis §4.1 (the leader's own configuration changes on append, too)
#[test]
fn a_leader_uses_a_new_configuration_as_soon_as_it_appends_it() {
    let mut c = three_with_leader(ClusterBuilder::voters(3));
    c.isolate(2);
    c.isolate(3);
    c.propose_config(1, &[1, 2, 3, 4], &[]).expect("change");
    assert_eq!(c.raft(1).config().quorum(), 3);
    assert!(
        c.raft(1).status().progress.contains_key(&4),
        "and starts replicating to the new voter"
    );
}

// Reference: thesis §4.2.2 (a removed leader manages the cluster until the change commits, without counting itself, then steps down)
#[test]
fn a_removed_leader_steps_down_once_its_removal_commits_without_counting_itself() {
    let mut c = three_with_leader(ClusterBuilder::voters(3));
    c.isolate(3);
    let (index, _) = c.propose_config(1, &[2, 3], &[]).expect("change");
    c.stabilize();
    assert_eq!(c.raft(1).status().progress[&2].match_index, index);
    assert_eq!(
        (c.role(1), c.commit(1)),
        (Role::Leader, 1),
        "1 and 2 are no majority of {{2, 3}}"
    );
    c.heal();
    c.tick(1, 1);
    c.stabilize();
    assert_eq!(c.commit(1), index);
    assert_eq!(c.role(1), Role::Follower);
}

// Reference: thesis §4.2.1 (learners receive the log but neither vote nor campaign)
#[test]
fn a_learner_never_campaigns_and_is_never_asked_to_vote() {
    let mut c = ClusterBuilder::voters(3).learners(&[4]).build();
    c.tick(4, 100);
    assert_eq!((c.role(4), c.term(4)), (Role::Follower, 0));
    assert_eq!(c.in_flight().count(), 0);
    assert!(c.elect(1));
    assert!(
        !c.delivered
            .iter()
            .any(|m| m.to == 4 && m.body.kind().contains("Vote"))
    );
    assert_eq!(c.log_terms(4), c.log_terms(1), "it does get the log");
}

// Reference: thesis §4.2.1 (learners do not count toward commit)
#[test]
fn a_learners_acknowledgement_does_not_count_toward_commit() {
    let mut c = three_with_leader(ClusterBuilder::voters(3).learners(&[4]));
    c.isolate(2);
    c.isolate(3);
    let (index, _) = c.propose(1, "x").expect("leader");
    c.stabilize();
    assert_eq!(c.raft(1).status().progress[&4].match_index, index);
    assert_eq!(c.commit(1), 1);
}

// ---------------------------------------------------------------- snapshots (§7)

// Reference: §7 (the leader sends InstallSnapshot to followers that lag too far behind)
#[test]
fn a_leader_sends_its_snapshot_to_a_follower_whose_entries_it_compacted() {
    let mut c = ClusterBuilder::voters(3).build();
    c.isolate(3);
    assert!(c.elect(1));
    for i in 0..5 {
        c.propose(1, &format!("x{i}")).expect("leader");
    }
    c.stabilize();
    assert_eq!(c.commit(1), 6);
    c.compact(1, 6).expect("applied");
    assert_eq!(c.raft(1).first_index(), 7);
    c.heal();
    c.tick(1, 1);
    c.stabilize();
    assert!(
        c.delivered
            .iter()
            .any(|m| m.to_string() == "1->3 t1 InstallSnapshot snap=6/1")
    );
    assert_eq!(c.raft(3).status().snapshot_index, 6);
    assert_eq!(c.node(3).disk.snapshot.index, 6, "installed and written");
    assert_eq!(
        c.raft(1).status().progress[&3].state,
        ReplicationState::Replicate
    );
    c.propose(1, "after").expect("leader");
    c.stabilize();
    c.heartbeat(1);
    assert_eq!(c.commit(3), 7);
    let applied: Vec<Index> = c.node(3).applied.iter().map(|e| e.index).collect();
    assert_eq!(
        applied,
        vec![7],
        "entries after the snapshot are applied on top of it"
    );
}

// Reference: §7 (a lost InstallSnapshot is retried after an election timeout)
#[test]
fn a_lost_snapshot_is_sent_again_after_an_election_timeout() {
    let mut c = ClusterBuilder::voters(3).build();
    c.isolate(3);
    assert!(c.elect(1));
    c.propose(1, "x").expect("leader");
    c.stabilize();
    c.compact(1, 2).expect("applied");
    c.heal();
    c.drop_if(|m| m.body.kind() == "InstallSnapshot");
    c.heartbeat(1);
    assert!(matches!(
        c.raft(1).status().progress[&3].state,
        ReplicationState::Snapshot { index: 2 }
    ));
    c.heal();
    for _ in 0..10 {
        c.heartbeat(1);
    }
    assert_eq!(c.raft(3).status().snapshot_index, 2);
    assert_eq!(
        c.raft(1).status().progress[&3].state,
        ReplicationState::Replicate
    );
}

// Reference: §7 ("If existing log entry has same index and term as snapshot's last included entry, retain log entries following it")
#[test]
fn a_follower_that_already_has_the_snapshots_last_entry_keeps_its_log() {
    let mut c = ClusterBuilder::voters(3).log(2, &[1, 1, 1]).build();
    let snapshot = keel_raft::SnapshotMeta {
        index: 2,
        term: 1,
        config: keel_raft::ClusterConfig::with_voters([1, 2, 3]),
    };
    c.exchange(msg(1, 2, 1, MessageBody::InstallSnapshot { snapshot }));
    assert_eq!(c.log_terms(2), vec![1, 1, 1]);
    assert_eq!(c.commit(2), 2);
    assert_eq!(
        c.node(2).disk.snapshot.index,
        0,
        "no snapshot was installed"
    );
}

// Reference: §7 (snapshots cover committed, applied state only)
#[test]
fn compaction_is_refused_beyond_the_applied_index_or_below_the_current_snapshot() {
    let mut c = three_with_leader(ClusterBuilder::voters(3));
    assert_eq!(
        c.compact(1, 2),
        Err(CompactError::NotApplied {
            index: 2,
            applied: 1
        })
    );
    c.compact(1, 1).expect("applied");
    assert_eq!(
        c.compact(1, 1),
        Err(CompactError::Stale {
            index: 1,
            current: 1
        })
    );
}

// Reference: §7 (a restarted node resumes from its snapshot and the entries after it)
#[test]
fn a_node_restarts_from_its_snapshot_and_the_entries_after_it() {
    let mut c = three_with_leader(ClusterBuilder::voters(3));
    for i in 0..3 {
        c.propose(1, &format!("x{i}")).expect("leader");
    }
    c.stabilize();
    c.heartbeat(1);
    c.compact(2, 2).expect("applied");
    c.restart(2);
    let s = c.raft(2).status();
    assert_eq!(
        (s.snapshot_index, s.last_index, s.term, s.applied),
        (2, 4, 1, 2)
    );
    c.tick(1, 1);
    c.stabilize();
    let applied: Vec<Index> = c.node(2).applied.iter().map(|e| e.index).collect();
    assert_eq!(
        applied,
        vec![3, 4],
        "it re-applies what the snapshot does not cover"
    );
}

// ---------------------------------------------------------------- the node's edges (design §7, seed notes)

// Reference: design §7 (every message carries the cluster UUID)
#[test]
fn a_message_from_another_cluster_is_refused_and_counted() {
    let mut c = ClusterBuilder::voters(3).build();
    let mut m = vote_request(1, 2, 9, 0, 0);
    m.cluster = ClusterId(42);
    assert!(matches!(
        c.raft_mut(2).step(m),
        Err(StepError::ForeignCluster { from: 1, .. })
    ));
    let s = c.raft(2).status();
    assert_eq!((s.foreign_cluster_messages, s.term), (1, 0));
}

// Reference: §8 (clients are redirected to the leader)
#[test]
fn a_follower_refuses_proposals_and_names_the_leader_it_knows() {
    let mut c = ClusterBuilder::voters(3).build();
    assert_eq!(
        c.propose(2, "x"),
        Err(ProposeError::NotLeader { leader: None })
    );
    assert!(c.elect(1));
    assert_eq!(
        c.propose(2, "x"),
        Err(ProposeError::NotLeader { leader: Some(1) })
    );
}

// Reference: §8 (during an election there is no one to redirect to: retry)
#[test]
fn a_candidate_asks_proposers_to_retry() {
    let mut c = ClusterBuilder::voters(3).build();
    c.campaign(1);
    assert_eq!(c.propose(1, "x"), Err(ProposeError::Retry));
    let mut c = ClusterBuilder::voters(3).pre_vote(false).build();
    c.campaign(1);
    assert_eq!(c.propose(1, "x"), Err(ProposeError::Retry));
}

// Reference: flow control (etcd-io/raft MaxUncommittedEntriesSize)
#[test]
fn a_leader_pushes_back_when_too_many_entries_are_uncommitted() {
    let mut c = three_with_leader(ClusterBuilder::voters(3).max_uncommitted_entries(3));
    c.isolate(2);
    c.isolate(3);
    for i in 0..3 {
        c.propose(1, &format!("x{i}")).expect("room");
    }
    assert_eq!(
        c.propose(1, "x"),
        Err(ProposeError::Busy { uncommitted: 3 })
    );
    c.heal();
    c.tick(1, 1);
    c.stabilize();
    assert!(c.propose(1, "x").is_ok(), "room again once they commit");
}

// Reference: §5.3 ("the leader retries AppendEntries indefinitely")
#[test]
fn a_follower_that_missed_appends_catches_up_on_the_next_heartbeat() {
    let mut c = three_with_leader(ClusterBuilder::voters(3));
    c.isolate(3);
    c.propose(1, "x").expect("leader");
    c.stabilize();
    c.heal();
    for _ in 0..5 {
        c.tick(1, 1);
        c.stabilize();
    }
    assert_eq!(
        c.log_terms(3),
        vec![1, 1],
        "no new proposal: heartbeats alone must repair it"
    );
    assert_eq!(c.commit(3), 2);
}

// ---------------------------------------------------------------- teeth: each Bug fails its test

// The scenarios above, with one rule switched off (testkit::Bug): the outcome changes.

#[test]
fn with_commit_previous_term_by_counting_the_figure8_entry_commits_early() {
    assert_eq!(figure8_commits(&[Bug::CommitPreviousTermByCounting]).0, 2);
}

#[test]
fn with_double_vote_a_server_votes_twice_in_a_term() {
    assert_eq!(
        votes_in_one_term(&[Bug::DoubleVote]),
        (Some(true), Some(true))
    );
}

#[test]
fn with_skip_up_to_date_check_a_stale_candidate_gets_the_vote() {
    assert_eq!(
        up_to_date_votes(&[Bug::SkipUpToDateCheck])[..2],
        [Some(true), Some(true)]
    );
}

#[test]
fn with_vote_not_persisted_a_restarted_server_votes_again() {
    assert_eq!(vote_after_restart(&[Bug::VoteNotPersisted]), Some(true));
}

#[test]
fn with_leader_ignores_higher_term_the_leader_keeps_leading() {
    assert_eq!(
        leader_after_higher_term(&[Bug::LeaderIgnoresHigherTerm]).0,
        Role::Leader
    );
}

#[test]
fn with_leader_counts_self_before_persist_the_entry_commits_before_the_write() {
    assert_eq!(
        commit_around_leader_write(&[Bug::LeaderCountsSelfBeforePersist]).0,
        2
    );
}

#[test]
fn with_truncate_matching_suffix_a_stale_append_erases_entries() {
    assert_eq!(
        log_after_stale_append(&[Bug::TruncateMatchingSuffix]),
        vec![1, 1]
    );
}

#[test]
fn with_read_index_without_noop_a_read_is_served_before_the_first_commit() {
    assert_ne!(
        read_before_first_commit(&[Bug::ReadIndexWithoutNoop]),
        vec![]
    );
}

#[test]
fn with_lease_by_role_an_isolated_leader_answers_a_lease_read_after_its_lease() {
    let lease = Config::new(1, CLUSTER).lease_ticks;
    assert_eq!(
        lease_read_after_isolation(&[Bug::LeaseByRole], lease + 2).1,
        vec![ReadState {
            ctx: 7,
            index: Some(1)
        }]
    );
    assert_ne!(lease_read_after_timeout_now(&[Bug::LeaseByRole]), vec![]);
}

#[test]
fn with_vote_right_after_restart_a_restarted_voter_grants_at_once() {
    assert_eq!(
        vote_right_after_restart(&[Bug::VoteRightAfterRestart]),
        (Some(true), 2)
    );
}

#[test]
fn every_testkit_bug_has_a_teeth_test_here() {
    // Adding a Bug without a test above should fail here (update the list when you add one).
    assert_eq!(Bug::ALL.len(), 10);
}
