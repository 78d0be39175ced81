//! The operations the simulator's clients run against the real kv plugin, and their
//! sequential specification (what the linearizability checker compares with).

use serde::{Deserialize, Serialize};

/// A key (few distinct keys make conflicts, and so linearizability bugs, likely).
pub type Key = u8;
/// A value; every write writes a value never written before, so reads identify writes.
pub type Value = u64;

/// A client operation.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Op {
    /// Write `value`, return the previous value.
    Put {
        /// Key.
        key: Key,
        /// New value.
        value: Value,
    },
    /// Read (through ReadIndex, never through the log).
    Get {
        /// Key.
        key: Key,
    },
    /// Compare-and-set.
    Cas {
        /// Key.
        key: Key,
        /// Expected current value.
        expect: Option<Value>,
        /// New value if the expectation holds.
        value: Value,
    },
}

impl Op {
    /// The key the operation touches.
    pub fn key(&self) -> Key {
        match *self {
            Op::Put { key, .. } | Op::Get { key } | Op::Cas { key, .. } => key,
        }
    }
}

/// An operation's result.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum OpResult {
    /// Previous value of a put.
    Put(Option<Value>),
    /// Value read.
    Get(Option<Value>),
    /// CAS outcome and the value found.
    Cas(bool, Option<Value>),
}

/// Applies `op` to one key's value: the sequential specification the linearizability
/// checker uses, and the state machine the replicas run.
pub fn step(current: Option<Value>, op: &Op) -> (Option<Value>, OpResult) {
    match *op {
        Op::Put { value, .. } => (Some(value), OpResult::Put(current)),
        Op::Get { .. } => (current, OpResult::Get(current)),
        Op::Cas { expect, value, .. } => {
            if current == expect {
                (Some(value), OpResult::Cas(true, current))
            } else {
                (current, OpResult::Cas(false, current))
            }
        }
    }
}
