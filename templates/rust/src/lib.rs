//! {{name}}: a Keel state machine. Every node applies the same commands in the same order,
//! so `apply` must be deterministic: no clocks, no randomness, no I/O but the KV store
//! (the host enforces this).
//!
//! Commands: `{"op":"add","name":N,"by":I}` → `{"value":I}`, `{"op":"reset","name":N}`,
//! `{"op":"keep","name":N}` with blobs attached (`Keel-Attach`) → `{"kept":K}`.
//! Queries: `{"op":"get","name":N}` → `{"value":I}`, `{"op":"kept","name":N}` →
//! `{"blobs":K,"bytes":B,"first":byte|null}`.

use keel_guest::{Context, Error, StateMachine, blobs, kv};
use serde::{Deserialize, Serialize};
use serde_json::{Value as Json, json};

/// What clients submit (`POST /v1/plugins/{{name}}/commands`).
#[derive(Deserialize)]
#[serde(tag = "op", rename_all = "lowercase", deny_unknown_fields)]
enum Command {
    Add { name: String, by: i64 },
    Reset { name: String },
    Keep { name: String },
}

/// What clients read (`POST /v1/plugins/{{name}}/query`).
#[derive(Deserialize)]
#[serde(tag = "op", rename_all = "lowercase", deny_unknown_fields)]
enum Query {
    Get { name: String },
    Kept { name: String },
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

/// The blobs kept under a name (their SHA-256s).
fn kept_key(name: &str) -> Vec<u8> {
    format!("kept/{name}").into_bytes()
}

fn kept(name: &str) -> Result<Vec<String>, Error> {
    Ok(kv::get_json::<Vec<String>>(&kept_key(name))?.unwrap_or_default())
}

struct Plugin;

impl StateMachine for Plugin {
    type Command = Command;
    type Output = Json;
    type Query = Query;
    type QueryOutput = Json;

    fn apply(_ctx: &Context, command: Command) -> Result<Json, Error> {
        match command {
            Command::Add { name, by } => {
                let value = current(&name)?
                    .checked_add(by)
                    .ok_or_else(|| Error::msg(format!("{name} would overflow")))?;
                kv::set_json(&key(&name), &value)?;
                Ok(json!(Value { value }))
            }
            Command::Reset { name } => {
                kv::delete(&key(&name))?;
                Ok(json!(Value { value: 0 }))
            }
            Command::Keep { name } => {
                // The blobs this command attaches replace those kept before: retained while
                // the state names them, released (and collectable) after.
                for old in kept(&name)? {
                    blobs::release(&old)?;
                }
                let mut now = Vec::new();
                for blob in blobs::attachments() {
                    blobs::retain(&blob.sha256)?;
                    now.push(blob.sha256);
                }
                kv::set_json(&kept_key(&name), &now)?;
                Ok(json!({ "kept": now.len() }))
            }
        }
    }

    fn query(query: Query) -> Result<Json, Error> {
        match query {
            Query::Get { name } => Ok(json!(Value {
                value: current(&name)?,
            })),
            Query::Kept { name } => {
                let list = kept(&name)?;
                let (mut bytes, mut first) = (0, None);
                for sha256 in &list {
                    let all = blobs::read_all(sha256)?;
                    first = first.or(all.first().copied());
                    bytes += all.len();
                }
                Ok(json!({ "blobs": list.len(), "bytes": bytes, "first": first }))
            }
        }
    }
}

keel_guest::export_state_machine!(Plugin);
