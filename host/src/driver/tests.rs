//! Unit tests of the driver's small decisions.

use super::*;
use super::upkeep::session_cutoff;
use keel_raft::{ClusterConfig, ClusterId, Config, Entry, HardState, InitialState};

/// A single-voter core restored with one entry stamped `log_ms` by an earlier leader,
/// ticked until it leads.
fn leader_with_log_clock(log_ms: u64) -> Raft {
    let config = ClusterConfig {
        voters: [1].into(),
        learners: Default::default(),
        addresses: BTreeMap::from([(1, "http://127.0.0.1:1".to_string())]),
    };
    let mut init = InitialState::bootstrap(config);
    init.hard_state = HardState {
        term: 1,
        vote: Some(1),
    };
    init.entries = vec![Entry {
        index: 1,
        term: 1,
        timestamp_ms: log_ms,
        record: Record::Noop,
    }];
    let mut raft = Raft::new(Config::new(1, ClusterId(1)), init).expect("core");
    for _ in 0..1_000 {
        if raft.role() == Role::Leader {
            break;
        }
        raft.tick();
    }
    assert_eq!(raft.role(), Role::Leader, "a single voter elects itself");
    raft
}

/// Design §5: sessions expire by the log's clock. A leader whose wall clock is behind the
/// log's (the leader before it ran ahead) must cut at `ttl` before the expiry entry's own
/// timestamp, or sessions idle for longer than the TTL in log time are kept.
#[test]
fn the_session_expiry_cutoff_is_on_the_log_clock_not_the_wall_clock() {
    let (log_ms, wall_ms, ttl) = (10_000_000, 1_000, 400);
    let mut raft = leader_with_log_clock(log_ms);
    let before_ms = session_cutoff(&raft, wall_ms, ttl);
    let (index, _) = raft
        .propose(Record::ExpireSessions { before_ms }, wall_ms)
        .expect("the leader proposes");
    let stamped = raft.entry(index).expect("the entry").timestamp_ms;
    assert_eq!(stamped, log_ms, "the log's clock does not run back");
    assert_eq!(
        before_ms,
        stamped - ttl,
        "the cut-off is ttl before the entry"
    );
    // A wall clock ahead of the log moves both alike.
    let later = log_ms + 5_000;
    let before_ms = session_cutoff(&raft, later, ttl);
    let (index, _) = raft
        .propose(Record::ExpireSessions { before_ms }, later)
        .expect("the leader proposes");
    let stamped = raft.entry(index).expect("the entry").timestamp_ms;
    assert_eq!((stamped, before_ms), (later, later - ttl));
}
