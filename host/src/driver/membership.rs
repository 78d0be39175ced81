//! Membership changes, one server at a time (thesis §4.1), and the peers the driver keeps
//! connections to.

use std::collections::BTreeMap;

use keel_raft::{Index, NodeId, ProposeError, Record, Role};
use tokio::sync::oneshot;

use super::{Driver, MemberChange, MemberReply};

impl Driver {
    /// Proposes a single-server change against the configuration in force (thesis §4.1: it
    /// takes effect as soon as it is in the log; the core refuses a second one until the
    /// first is committed).
    pub(super) fn change_members(
        &mut self,
        change: MemberChange,
        reply: oneshot::Sender<MemberReply>,
    ) {
        let mut config = self.raft.config().clone();
        let invalid = match &change {
            MemberChange::AddLearner { id, url } => {
                if config.contains(*id) {
                    Some(MemberReply::Refused(format!(
                        "node {id} is already a member"
                    )))
                } else {
                    config.learners.insert(*id);
                    config.addresses.insert(*id, url.clone());
                    None
                }
            }
            MemberChange::Promote(id) => {
                if !config.learners.contains(id) {
                    Some(MemberReply::Refused(format!("node {id} is not a learner")))
                } else if let Some(behind) = self.learner_behind(*id) {
                    Some(MemberReply::Refused(behind))
                } else {
                    config.learners.remove(id);
                    config.voters.insert(*id);
                    None
                }
            }
            MemberChange::Remove(id) => {
                if config.contains(*id) {
                    config.voters.remove(id);
                    config.learners.remove(id);
                    config.addresses.remove(id);
                    None
                } else {
                    Some(MemberReply::Refused(format!("node {id} is not a member")))
                }
            }
        };
        if let Some(answer) = invalid {
            let _ = reply.send(answer);
            return;
        }
        match self.raft.propose(Record::Config(config), self.io.wall_ms()) {
            Ok((index, term)) => {
                tracing::info!(target: "keel::raft", index, ?change, "membership change proposed");
                self.member_changes.insert(index, (term, reply));
            }
            Err(ProposeError::NotLeader { leader }) => {
                let _ = reply.send(MemberReply::NotLeader(leader));
            }
            Err(ProposeError::Config(keel_raft::ConfigChangeError::NoVoters)) => {
                let _ = reply.send(MemberReply::Refused(
                    "the last voter cannot be removed".into(),
                ));
            }
            Err(e) => {
                let _ = reply.send(MemberReply::Retry(e.to_string()));
            }
        }
    }

    /// Why learner `id` may not become a voter yet, on the leader: an empty voter is one
    /// more failure the cluster cannot take (issue #15). Like etcd, it must hold at least
    /// 90% of the committed log. Elsewhere `None`: the proposal then fails as not-leader.
    pub(super) fn learner_behind(&self, id: NodeId) -> Option<String> {
        if self.raft.role() != Role::Leader {
            return None;
        }
        let status = self.raft.status();
        let matched = status.progress.get(&id).map_or(0, |p| p.match_index);
        let commit = status.commit;
        (matched == 0 || commit.saturating_sub(matched) > commit / 10).then(|| {
            format!(
                "node {id} is not caught up: it holds the log to index {matched} of {commit} \
                 committed; promote it once it has caught up (keel status shows its lag)"
            )
        })
    }

    /// Every member's address but ours: from the configuration in force, falling back to the
    /// config file's peers (a joining node knows the cluster only from there).
    pub(super) fn member_addresses(&self) -> BTreeMap<NodeId, String> {
        let config = self.raft.config();
        let mut out: BTreeMap<NodeId, String> = if config.members().next().is_some() {
            config
                .members()
                .filter_map(|id| self.member_url(id).map(|u| (id, u)))
                .collect()
        } else {
            self.cfg.peers.clone()
        };
        out.remove(&self.cfg.id);
        out
    }

    /// Starts a sender for each new member and stops those of members that left, once the
    /// entry that removed them (at `config_index`) is applied.
    pub(super) fn connect_peers(&mut self, config_index: Index) {
        let mut members = self.member_addresses();
        for (id, url) in &self.peers {
            if !members.contains_key(id) {
                self.leaving
                    .entry(*id)
                    .or_insert_with(|| (config_index, url.clone()));
            }
        }
        let applied = self.applied;
        self.leaving
            .retain(|id, (index, _)| !members.contains_key(id) && *index > applied);
        for (id, (_, url)) in &self.leaving {
            members.insert(*id, url.clone());
        }
        self.io.connect(&members);
        self.cannot_answer.retain(|id| !members.contains_key(id));
        self.peers = members;
    }

    pub(super) fn member_url(&self, id: NodeId) -> Option<String> {
        self.raft
            .config()
            .addresses
            .get(&id)
            .cloned()
            .or_else(|| self.cfg.peers.get(&id).cloned())
    }
}
