//! Example plugin: named signed 64-bit counters, kept in the KV store as JSON.
//!
//! Commands: `{"op":"add","name":N,"by":I}` → `{"value":I}` (fails on overflow, so the
//! counter is unchanged), `{"op":"reset","name":N}` → `{"value":0}`.
//! Query: `{"op":"get","name":N}` → `{"value":I}` (0 for an unknown counter).
//! Names must be 1–64 bytes; `validate` refuses others before they are proposed.

use keel_guest::{Context, Error, StateMachine, kv};
use serde::{Deserialize, Serialize};

#[derive(Deserialize)]
#[serde(tag = "op", rename_all = "lowercase", deny_unknown_fields)]
enum Command {
    Add { name: String, by: i64 },
    Reset { name: String },
}

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

fn check_name(name: &str) -> Result<(), Error> {
    if name.is_empty() || name.len() > 64 {
        return Err(Error::msg("a counter name has 1 to 64 bytes"));
    }
    Ok(())
}

struct Counter;

impl StateMachine for Counter {
    type Command = Command;
    type Output = Value;
    type Query = Query;
    type QueryOutput = Value;

    fn apply(_ctx: &Context, command: Command) -> Result<Value, Error> {
        match command {
            Command::Add { name, by } => {
                check_name(&name)?;
                let value = current(&name)?
                    .checked_add(by)
                    .ok_or_else(|| Error::msg(format!("counter {name} would overflow")))?;
                kv::set_json(&key(&name), &value)?;
                Ok(Value { value })
            }
            Command::Reset { name } => {
                check_name(&name)?;
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

    fn validate(command: &Command) -> Result<(), Error> {
        match command {
            Command::Add { name, .. } | Command::Reset { name } => check_name(name),
        }
    }
}

keel_guest::export_state_machine!(Counter);
