//! Keel's sans-IO Raft core (work in progress: types first).
mod types;
pub use types::*;
