//! {{name}}: a Keel state machine. Every node applies the same commands in the same order,
//! so `apply` must be deterministic: no clocks, no randomness, no I/O but the KV store
//! (the host enforces this).
//!
//! Commands: `{"op":"add","name":N,"by":I}` → `{"value":I}`, `{"op":"reset","name":N}`.
//! Query: `{"op":"get","name":N}` → `{"value":I}`.

use keel_guest::{Context, Error, StateMachine, kv};
use serde::{Deserialize, Serialize};

/// What clients submit (`POST /v1/plugins/{{name}}/commands`).
#[derive(Deserialize)]
#[serde(tag = "op", rename_all = "lowercase", deny_unknown_fields)]
enum Command {
    Add { name: String, by: i64 },
    Reset { name: String },
}

/// What clients read (`POST /v1/plugins/{{name}}/query`).
#[derive(Deserialize)]
#[serde(tag = "op", rename_all = "lowercase", deny_unknown_fields)]
enum Query {
    Get { name: String },
}

#[derive(Serialize)]
struct Value {
    value: i64,
}

fn key(name: &str) -> Vec<u8> {
    format!("counter/{name}").into_bytes()
}

fn current(name: &str) -> Result<i64, Error> {
    Ok(kv::get_json::<i64>(&key(name))?.unwrap_or(0))
}

struct Plugin;

impl StateMachine for Plugin {
    type Command = Command;
    type Output = Value;
    type Query = Query;
    type QueryOutput = Value;

    fn apply(_ctx: &Context, command: Command) -> Result<Value, Error> {
        match command {
            Command::Add { name, by } => {
                let value = current(&name)?
                    .checked_add(by)
                    .ok_or_else(|| Error::msg(format!("{name} would overflow")))?;
                kv::set_json(&key(&name), &value)?;
                Ok(Value { value })
            }
            Command::Reset { name } => {
                kv::delete(&key(&name))?;
                Ok(Value { value: 0 })
            }
        }
    }

    fn query(query: Query) -> Result<Value, Error> {
        let Query::Get { name } = query;
        Ok(Value {
            value: current(&name)?,
        })
    }
}

keel_guest::export_state_machine!(Plugin);
