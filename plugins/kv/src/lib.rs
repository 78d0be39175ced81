//! Keel's default plugin: a string key-value store.
//!
//! The JSON contract (other tools depend on it; the Python and JavaScript versions in
//! `plugins/kv-py` and `plugins/kv-js` implement exactly the same, but for `keep` and
//! `release`, which keep attached blobs alive (design §6; the simulator uses them)):
//!
//! | command | answer |
//! |---|---|
//! | `{"op":"put","key":K,"value":V}` | `{"prev":V\|null}` |
//! | `{"op":"delete","key":K}` | `{"prev":V\|null}` |
//! | `{"op":"cas","key":K,"expect":V\|null,"value":V}` | `{"ok":bool,"current":V\|null}` |
//! | `{"op":"put",…,"keep":true}` | as `put`, and retains every blob the command attaches |
//! | `{"op":"release","sha256":H}` | `{"retained":N}`: one retain fewer, N left |
//!
//! | query | answer |
//! |---|---|
//! | `{"op":"get","key":K}` | `{"value":V\|null}` |
//! | `{"op":"range","prefix":P,"limit":N}` | `{"items":[[K,V],…]}` |
//!
//! Keys and values are strings, stored as their UTF-8 bytes. `cas` stores `value` only
//! when the current value equals `expect` (`null`: the key is absent); `current` is the
//! value after the command. `range` returns keys starting with `prefix` in bytewise
//! order; `limit` defaults to 100 and is capped at 1000.

use keel_guest::{Context, Error, StateMachine, blobs, kv};
use serde::{Deserialize, Serialize};

/// Most items one `range` query returns.
const MAX_RANGE: u32 = 1000;

#[derive(Deserialize)]
#[serde(tag = "op", rename_all = "lowercase", deny_unknown_fields)]
enum Command {
    Put {
        key: String,
        value: String,
        #[serde(default)]
        keep: bool,
    },
    Release {
        sha256: String,
    },
    Delete {
        key: String,
    },
    Cas {
        key: String,
        expect: Option<String>,
        value: String,
    },
}

#[derive(Deserialize)]
#[serde(tag = "op", rename_all = "lowercase", deny_unknown_fields)]
enum Query {
    Get {
        key: String,
    },
    Range {
        prefix: String,
        #[serde(default = "default_limit")]
        limit: u32,
    },
}

fn default_limit() -> u32 {
    100
}

#[derive(Serialize)]
#[serde(untagged)]
enum Output {
    Prev { prev: Option<String> },
    Cas { ok: bool, current: Option<String> },
    Released { retained: u64 },
}

#[derive(Serialize)]
#[serde(untagged)]
enum QueryOutput {
    Value { value: Option<String> },
    Items { items: Vec<(String, String)> },
}

fn text(bytes: Vec<u8>) -> Result<String, Error> {
    String::from_utf8(bytes).map_err(|_| Error::msg("stored value is not UTF-8"))
}

fn get(key: &str) -> Result<Option<String>, Error> {
    kv::get(key.as_bytes()).map(text).transpose()
}

struct Kv;

impl StateMachine for Kv {
    type Command = Command;
    type Output = Output;
    type Query = Query;
    type QueryOutput = QueryOutput;

    fn apply(_ctx: &Context, command: Command) -> Result<Output, Error> {
        match command {
            Command::Put { key, value, keep } => {
                let prev = get(&key)?;
                kv::set(key.as_bytes(), value.as_bytes())?;
                if keep {
                    for blob in blobs::attachments() {
                        blobs::retain(&blob.sha256)?;
                    }
                }
                Ok(Output::Prev { prev })
            }
            Command::Release { sha256 } => {
                blobs::release(&sha256)?;
                Ok(Output::Released {
                    retained: blobs::retained(&sha256),
                })
            }
            Command::Delete { key } => {
                let prev = get(&key)?;
                if prev.is_some() {
                    kv::delete(key.as_bytes())?;
                }
                Ok(Output::Prev { prev })
            }
            Command::Cas { key, expect, value } => {
                let current = get(&key)?;
                if current == expect {
                    kv::set(key.as_bytes(), value.as_bytes())?;
                    Ok(Output::Cas {
                        ok: true,
                        current: Some(value),
                    })
                } else {
                    Ok(Output::Cas { ok: false, current })
                }
            }
        }
    }

    fn query(query: Query) -> Result<QueryOutput, Error> {
        match query {
            Query::Get { key } => Ok(QueryOutput::Value { value: get(&key)? }),
            Query::Range { prefix, limit } => {
                let items = kv::scan_prefix(prefix.as_bytes(), limit.min(MAX_RANGE))
                    .into_iter()
                    .map(|(k, v)| Ok((text(k)?, text(v)?)))
                    .collect::<Result<_, Error>>()?;
                Ok(QueryOutput::Items { items })
            }
        }
    }
}

keel_guest::export_state_machine!(Kv);
