//! Unit tests of the driver's small decisions.

use super::upkeep::session_cutoff;
use super::*;
use crate::config::NodeConfig;
use std::time::Duration;

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

/// Issue #10 §3: the driver's queue of outside inputs is bounded. Past the bound a request is
/// refused (the HTTP layer answers 503) and counted; once the driver has taken inputs, it is
/// accepted again. The driver's own reports never count against it.
#[test]
fn outside_inputs_are_refused_past_the_queue_bound_and_accepted_again_after() {
    let dir = tempfile::tempdir().expect("tempdir");
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    let _guard = rt.enter();
    let cfg = NodeConfig {
        data_dir: dir.path().to_path_buf(),
        tick_ms: 10,
        ..NodeConfig::default()
    };
    let node = start(cfg).expect("node starts");
    let leads = || {
        node.status
            .lock()
            .map(|s| s.role == Role::Leader)
            .unwrap_or(false)
    };
    for _ in 0..500 {
        if leads() {
            break;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    assert!(leads(), "a single voter elects itself");
    // As if MAX_QUEUED_INPUTS requests were waiting.
    node.queued
        .fetch_add(MAX_QUEUED_INPUTS, std::sync::atomic::Ordering::Relaxed);
    let (tx, _rx) = oneshot::channel();
    let refused = node.submit(Input::OpenSession(tx));
    assert!(
        matches!(refused, Err(SubmitError::Full(n)) if n == MAX_QUEUED_INPUTS),
        "{refused:?}"
    );
    assert_eq!(node.metrics.inputs_refused.get(), 1);
    // The driver took them.
    node.queued
        .fetch_sub(MAX_QUEUED_INPUTS, std::sync::atomic::Ordering::Relaxed);
    let (tx, rx) = oneshot::channel();
    node.submit(Input::OpenSession(tx)).expect("accepted");
    let reply = rt
        .block_on(async { tokio::time::timeout(Duration::from_secs(10), rx).await })
        .expect("answered in time")
        .expect("a reply");
    assert!(
        matches!(reply, CommandReply::Done { .. }),
        "a single node opens the session: {reply:?}"
    );
    // Every input the driver took was counted back down.
    assert_eq!(
        node.queued.load(std::sync::atomic::Ordering::Relaxed),
        0,
        "the count returns to zero"
    );
    assert!(!Input::Persisted(1, 1).is_external());
    assert!(Input::Transfer(2).is_external());
}
