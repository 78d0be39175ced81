//! Transcript tests (etcd-io/raft `interaction_test.go` style): every file in `testdata/`
//! is a script of commands, each followed by the trace it must print. `REWRITE=1 cargo test
//! -p keel-raft --test transcripts` regenerates the expected output; review the diff.
//!
//! Commands: `add-nodes voters=(1,2,3) [learners=(4)] [joining=(5)] [prevote=false]
//! [checkquorum=false]`, `campaign 1`, `tick 1 [n=3]`, `propose 1 data=x`,
//! `propose-conf 1 voters=(..) learners=(..)`, `transfer 1 to=2`, `read-index 1 ctx=7
//! [lease]`, `compact 1 index=5`, `process-ready [1]`, `deliver-msgs [2]`, `stabilize`,
//! `status [1]`, `lease 1`, `raft-log 1`, `isolate 3`, `heal`, `restart 2`.

mod common;

use common::{Cluster, ClusterBuilder, fmt_entry, fmt_ids};
use datadriven::TestCase;
use keel_raft::{NodeId, ReadMode, ReplicationState};

#[test]
fn transcripts() {
    datadriven::walk("testdata", |f| {
        let mut cluster = None;
        f.run(|tc| run(&mut cluster, tc));
    });
}

fn run(cluster: &mut Option<Cluster>, tc: &mut TestCase) -> String {
    // A bare number is the node the command is about.
    let mut ids: Vec<NodeId> = tc.args.keys().filter_map(|k| k.parse().ok()).collect();
    ids.sort_unstable();
    tc.args.retain(|k, _| k.parse::<NodeId>().is_err());
    let node = ids.first().copied();
    let id = || node.expect("command needs a node id");
    let list = |tc: &mut TestCase, key: &str| {
        tc.try_take_args::<NodeId>(key)
            .expect("ids")
            .unwrap_or_default()
    };
    if tc.directive == "add-nodes" {
        let voters = list(tc, "voters");
        let learners = list(tc, "learners");
        let joining = list(tc, "joining");
        let flag = |tc: &mut TestCase, key: &str| {
            tc.try_take_arg::<bool>(key).expect("bool").unwrap_or(true)
        };
        let b = ClusterBuilder::voter_ids(&voters)
            .learners(&learners)
            .joining(&joining)
            .pre_vote(flag(tc, "prevote"))
            .check_quorum(flag(tc, "checkquorum"));
        *cluster = Some(b.build());
    }
    let c = cluster.as_mut().expect("add-nodes first");
    let mut out: Vec<String> = Vec::new();
    match tc.directive.as_str() {
        "add-nodes" => out.extend(status(c, &[])),
        "campaign" => c.campaign(id()),
        "tick" => c.tick(id(), tc.try_take_arg("n").expect("n").unwrap_or(1)),
        "propose" => {
            let data: String = tc.take_arg("data").expect("data=");
            out.push(result(c.propose(id(), &data)));
        }
        "propose-conf" => {
            let (voters, learners) = (list(tc, "voters"), list(tc, "learners"));
            out.push(result(c.propose_config(id(), &voters, &learners)));
        }
        "transfer" => {
            let to: NodeId = tc.take_arg("to").expect("to=");
            out.push(format!(
                "accepted: {}",
                c.raft_mut(id()).transfer_leadership(to)
            ));
        }
        "read-index" => {
            let mode = if tc.take_flag("lease").expect("flag") {
                ReadMode::Lease
            } else {
                ReadMode::ReadIndex
            };
            let ctx: u64 = tc.take_arg("ctx").expect("ctx=");
            out.push(result(c.read_index(id(), ctx, mode)));
        }
        "compact" => out.push(result(
            c.compact(id(), tc.take_arg("index").expect("index=")),
        )),
        "process-ready" => match node {
            Some(n) => {
                c.handle_ready(n);
            }
            None => c.handle_readies(),
        },
        "deliver-msgs" => {
            c.deliver(node);
        }
        "stabilize" => c.stabilize(),
        "status" => out.extend(status(c, &ids)),
        "lease" => out.push(format!(
            "lease: {} ticks left",
            c.raft(id()).status().lease_ticks_left
        )),
        "raft-log" => out.extend(raft_log(c, id())),
        "isolate" => c.isolate(id()),
        "heal" => c.heal(),
        "restart" => c.restart(id()),
        other => panic!("unknown command {other}"),
    }
    tc.expect_empty().expect("every argument used");
    let mut lines = c.take_trace();
    lines.extend(out);
    if lines.is_empty() {
        return "ok\n".into();
    }
    lines.join("\n") + "\n"
}

fn result<T: std::fmt::Debug, E: std::fmt::Display>(r: Result<T, E>) -> String {
    match r {
        Ok(v) => match format!("{v:?}").as_str() {
            "()" => "ok".to_string(),
            v => format!("ok: {v}"),
        },
        Err(e) => format!("refused: {e}"),
    }
}

/// One line per node (`ids`, or all), and one per follower of a leader.
fn status(c: &Cluster, ids: &[NodeId]) -> Vec<String> {
    let mut out = Vec::new();
    for (&id, node) in &c.nodes {
        if !ids.is_empty() && !ids.contains(&id) {
            continue;
        }
        let Some(r) = &node.raft else {
            out.push(format!("{id}: down"));
            continue;
        };
        let s = r.status();
        let opt = |v: Option<NodeId>| v.map_or("-".to_string(), |v| v.to_string());
        out.push(format!(
            "{id}: {:?} term={} vote={} leader={} commit={} applied={} last={} snap={} voters={} learners={}",
            s.role,
            s.term,
            opt(s.vote),
            opt(s.leader),
            s.commit,
            s.applied,
            s.last_index,
            s.snapshot_index,
            fmt_ids(&s.config.voters),
            fmt_ids(&s.config.learners)
        ));
        for (peer, p) in &s.progress {
            let state = match p.state {
                ReplicationState::Probe => "Probe".to_string(),
                ReplicationState::Replicate => "Replicate".to_string(),
                ReplicationState::Snapshot { index } => format!("Snapshot@{index}"),
            };
            out.push(format!(
                "  {peer}: match={} next={} {state}",
                p.match_index, p.next_index
            ));
        }
    }
    out
}

fn raft_log(c: &Cluster, id: NodeId) -> Vec<String> {
    let r = c.raft(id);
    let mut out = Vec::new();
    if r.first_index() > 1 {
        let base = r.first_index() - 1;
        out.push(format!(
            "snapshot {base}/{}",
            r.entry_term(base).unwrap_or(0)
        ));
    }
    out.extend(
        (r.first_index()..=r.last_index())
            .filter_map(|i| r.entry(i))
            .map(fmt_entry),
    );
    if out.is_empty() {
        out.push("empty".into());
    }
    out
}
