//! The simulator's replicated state machine: a tiny KV map with exactly-once client
//! sessions (Raft paper §8), and the operations clients run against it.

use std::collections::BTreeMap;

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

/// A write command as it travels in the log.
#[derive(Clone, Copy, Debug, Serialize, Deserialize)]
pub struct WriteCommand {
    /// The operation (never a Get).
    pub op: Op,
}

/// The replicated state: the map plus the session table.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct KvState {
    /// The data.
    pub map: BTreeMap<Key, Value>,
    /// Client id → (last applied serial, its result): a retried serial gets the stored
    /// result instead of being applied twice.
    pub sessions: BTreeMap<u64, (u64, OpResult)>,
}

impl KvState {
    /// Applies a write from `client` with `serial`, exactly once.
    pub fn apply(&mut self, client: Option<(u64, u64)>, op: &Op) -> OpResult {
        if let Some((id, serial)) = client
            && let Some((last, result)) = self.sessions.get(&id)
            && *last == serial
        {
            return *result;
        }
        let key = op.key();
        let (new, result) = step(self.map.get(&key).copied(), op);
        match new {
            Some(v) => self.map.insert(key, v),
            None => self.map.remove(&key),
        };
        if let Some((id, serial)) = client {
            self.sessions.insert(id, (serial, result));
        }
        result
    }

    /// The state machine image carried by snapshots.
    pub fn encode(&self) -> Vec<u8> {
        postcard::to_allocvec(self).unwrap_or_default()
    }

    /// Reverses [`KvState::encode`].
    pub fn decode(bytes: &[u8]) -> Option<KvState> {
        if bytes.is_empty() {
            return Some(KvState::default());
        }
        postcard::from_bytes(bytes).ok()
    }
}
