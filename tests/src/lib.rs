//! Keel's deterministic simulator: the real Raft core over simulated disks and networks,
//! with Raft's safety properties checked on every step and the client history checked for
//! linearizability at the end. `keel-sim` runs it over many seeds.

pub mod invariants;
pub mod kv;
pub mod linearizability;
pub mod sim;
mod sim_node;

pub use sim::{Outcome, SimConfig, run_seed};
