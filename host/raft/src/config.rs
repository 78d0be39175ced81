//! Static configuration of one node's core.

use crate::types::{ClusterId, NodeId};

/// How one node's core behaves. Times are in ticks; the driver decides how long a tick is.
#[derive(Clone, Debug)]
pub struct Config {
    /// This node.
    pub id: NodeId,
    /// The cluster this node belongs to; messages from any other cluster are refused.
    pub cluster: ClusterId,
    /// Minimum election timeout in ticks. The actual timeout is drawn uniformly from
    /// `[election_ticks, 2 * election_ticks)` after every reset (§5.2: randomised timeouts
    /// make split votes rare).
    pub election_ticks: u32,
    /// A leader sends heartbeats every this many ticks (must be < `election_ticks`).
    pub heartbeat_ticks: u32,
    /// PreVote (thesis §9.6): ask whether an election could be won before disturbing
    /// anyone's term.
    pub pre_vote: bool,
    /// CheckQuorum (thesis §6.2): a leader that has not heard from a majority for an election
    /// timeout steps down; with it, followers that heard from a leader within the minimum
    /// election timeout ignore vote requests (§4.2.3), and lease reads become possible.
    pub check_quorum: bool,
    /// Leader lease in ticks (thesis §6.4.1): a lease read is answered locally at tick `t`
    /// only if a majority of voters acknowledged a heartbeat sent at tick `s` with
    /// `t - s < lease_ticks`; otherwise it takes a ReadIndex round. Must be below
    /// `election_ticks - 1`; [`Config::lease_ticks_for`] leaves room for clock-rate
    /// differences of 25% between nodes (docs/raft.md has the argument). 0 turns leases off.
    pub lease_ticks: u32,
    /// Appends in flight per follower in the replicate state.
    pub max_inflight: usize,
    /// Entries per append message.
    pub max_entries_per_message: usize,
    /// Bytes of entries per append message ([`crate::Entry::encoded_len_bound`]): entries
    /// are added while they fit, and the first always goes (an entry larger than this
    /// travels alone). Bounds what a receiver must be ready to buffer per message.
    pub max_bytes_per_message: usize,
    /// Proposals refused with [`crate::ProposeError::Busy`] beyond this many uncommitted entries.
    pub max_uncommitted_entries: u64,
    /// Committed entries handed out per [`crate::Ready`].
    pub max_apply_batch: usize,
    /// Seed of the election-timeout randomness. The core has no other source.
    pub seed: u64,
    /// Deliberately broken variants, for proving the simulator catches them.
    #[cfg(feature = "testkit")]
    pub bugs: crate::testkit::Bugs,
}

impl Config {
    /// Defaults fit a 100 ms tick: heartbeat 100 ms, election timeout 1–2 s.
    pub fn new(id: NodeId, cluster: ClusterId) -> Self {
        Config {
            id,
            cluster,
            election_ticks: 10,
            heartbeat_ticks: 1,
            pre_vote: true,
            check_quorum: true,
            lease_ticks: Config::lease_ticks_for(10),
            max_inflight: 64,
            max_entries_per_message: 256,
            max_bytes_per_message: 4 << 20,
            max_uncommitted_entries: 100_000,
            max_apply_batch: 1024,
            seed: id,
            #[cfg(feature = "testkit")]
            bugs: crate::testkit::Bugs::default(),
        }
    }

    /// The default lease for a minimum election timeout of `election_ticks`:
    /// `(election_ticks - 1) * 4 / 5`, so that a lease that is `lease_ticks` ticks long on
    /// the leader's clock ends before `election_ticks - 1` ticks pass on any voter's clock
    /// running up to 25% slower (`7 × 1.25 < 9` at the default 10).
    pub fn lease_ticks_for(election_ticks: u32) -> u32 {
        election_ticks.saturating_sub(1) * 4 / 5
    }

    pub(crate) fn validate(&self) -> Result<(), crate::ConfigError> {
        use crate::ConfigError::*;
        if self.id == 0 {
            return Err(ZeroNodeId);
        }
        if self.heartbeat_ticks == 0 || self.heartbeat_ticks >= self.election_ticks {
            return Err(Timing {
                heartbeat_ticks: self.heartbeat_ticks,
                election_ticks: self.election_ticks,
            });
        }
        if self.max_inflight == 0
            || self.max_entries_per_message == 0
            || self.max_bytes_per_message == 0
            || self.max_apply_batch == 0
        {
            return Err(ZeroLimit);
        }
        if self.lease_ticks > 0 && self.lease_ticks >= self.election_ticks.saturating_sub(1) {
            return Err(LeaseTooLong {
                lease_ticks: self.lease_ticks,
                election_ticks: self.election_ticks,
            });
        }
        Ok(())
    }
}
