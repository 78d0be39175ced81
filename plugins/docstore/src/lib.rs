//! Example plugin: a document store that keeps each document as a blob (design §6), not as
//! a KV value, so documents may be as large as the cluster's `max_blob_bytes` and cost the
//! log a few dozen bytes each.
//!
//! Upload the bytes, then name them in the command (`Keel-Attach`):
//!
//! ```text
//! PUT  /v1/blobs                                     (body: the document) -> {"sha256": S, "len": N}
//! POST /v1/plugins/docstore/commands  Keel-Attach: S  {"op":"put","id":"report.txt"}
//! POST /v1/plugins/docstore/query     {"op":"get","id":"report.txt"}     -> {"sha256": S, ...}
//! GET  /v1/blobs/S                                   (the document, from any node)
//! ```
//!
//! Commands: `{"op":"put","id":ID,"content_type":T?}` with exactly one attachment: the
//! document becomes that blob (retained; the previous version's blob is released) →
//! its metadata. `{"op":"delete","id":ID}` → `{"deleted":bool}` (released).
//! Queries: `{"op":"get","id":ID}` → metadata or null; `{"op":"head","id":ID,"bytes":N}` →
//! the first N (≤ 4096) bytes as text, read from the retained blob;
//! `{"op":"list","after":ID?,"limit":N?}` → up to N (≤ 1000) ids with metadata.

use keel_guest::{Context, Error, StateMachine, blobs, kv};
use serde::{Deserialize, Serialize};

#[derive(Deserialize)]
#[serde(tag = "op", rename_all = "lowercase", deny_unknown_fields)]
enum Command {
    Put {
        id: String,
        #[serde(default)]
        content_type: Option<String>,
    },
    Delete {
        id: String,
    },
}

#[derive(Deserialize)]
#[serde(tag = "op", rename_all = "lowercase", deny_unknown_fields)]
enum Query {
    Get {
        id: String,
    },
    Head {
        id: String,
        #[serde(default = "default_head")]
        bytes: u32,
    },
    List {
        #[serde(default)]
        after: Option<String>,
        #[serde(default)]
        limit: Option<u32>,
    },
}

fn default_head() -> u32 {
    256
}

/// What the store keeps per document (the bytes stay in the blob).
#[derive(Serialize, Deserialize, Clone)]
struct Meta {
    id: String,
    sha256: String,
    len: u64,
    content_type: String,
    /// 1 for the first put of this id, then one more per put.
    version: u64,
    /// The leader's clock when the version was committed.
    updated_ms: u64,
    /// The first line (at most 80 bytes) of the document, read when it was put.
    preview: String,
}

#[derive(Serialize)]
#[serde(untagged)]
enum Output {
    Meta(Meta),
    Deleted { deleted: bool },
}

#[derive(Serialize)]
#[serde(untagged)]
enum QueryOutput {
    Meta(Option<Meta>),
    Head { id: String, text: String },
    List { docs: Vec<Meta> },
}

fn key(id: &str) -> Vec<u8> {
    format!("doc/{id}").into_bytes()
}

fn check_id(id: &str) -> Result<(), Error> {
    if id.is_empty() || id.len() > 256 {
        return Err(Error::msg("a document id has 1 to 256 bytes"));
    }
    Ok(())
}

fn preview(sha256: &str) -> Result<String, Error> {
    let head = blobs::read(sha256, 0, 80)?;
    let line = head.split(|b| *b == b'\n').next().unwrap_or(&[]);
    Ok(String::from_utf8_lossy(line).into_owned())
}

struct DocStore;

impl StateMachine for DocStore {
    type Command = Command;
    type Output = Output;
    type Query = Query;
    type QueryOutput = QueryOutput;

    fn apply(ctx: &Context, cmd: Command) -> Result<Output, Error> {
        match cmd {
            Command::Put { id, content_type } => {
                check_id(&id)?;
                let attached = blobs::attachments();
                let [doc] = attached.as_slice() else {
                    return Err(Error::msg(format!(
                        "put needs exactly one attached blob (Keel-Attach), got {}",
                        attached.len()
                    )));
                };
                let old = kv::get_json::<Meta>(&key(&id))?;
                blobs::retain(&doc.sha256)?;
                if let Some(old) = &old {
                    blobs::release(&old.sha256)?;
                }
                let meta = Meta {
                    id: id.clone(),
                    sha256: doc.sha256.clone(),
                    len: doc.len,
                    content_type: content_type
                        .unwrap_or_else(|| "application/octet-stream".into()),
                    version: old.map_or(1, |o| o.version + 1),
                    updated_ms: ctx.timestamp_ms,
                    preview: preview(&doc.sha256)?,
                };
                kv::set_json(&key(&id), &meta)?;
                Ok(Output::Meta(meta))
            }
            Command::Delete { id } => {
                let Some(old) = kv::get_json::<Meta>(&key(&id))? else {
                    return Ok(Output::Deleted { deleted: false });
                };
                blobs::release(&old.sha256)?;
                kv::delete(&key(&id))?;
                Ok(Output::Deleted { deleted: true })
            }
        }
    }

    fn query(q: Query) -> Result<QueryOutput, Error> {
        match q {
            Query::Get { id } => Ok(QueryOutput::Meta(kv::get_json(&key(&id))?)),
            Query::Head { id, bytes } => {
                let Some(meta) = kv::get_json::<Meta>(&key(&id))? else {
                    return Err(Error::msg(format!("no document {id:?}")));
                };
                let head = blobs::read(&meta.sha256, 0, bytes.min(4096))?;
                Ok(QueryOutput::Head {
                    id,
                    text: String::from_utf8_lossy(&head).into_owned(),
                })
            }
            Query::List { after, limit } => {
                let start = match &after {
                    Some(a) => {
                        let mut k = key(a);
                        k.push(0);
                        k
                    }
                    None => b"doc/".to_vec(),
                };
                let end = keel_guest::prefix_end(b"doc/");
                let limit = limit.unwrap_or(100).min(1000);
                let docs = kv::range(&start, end.as_deref(), limit)
                    .into_iter()
                    .filter_map(|(_, v)| serde_json::from_slice(&v).ok())
                    .collect();
                Ok(QueryOutput::List { docs })
            }
        }
    }

    fn validate(cmd: &Command) -> Result<(), Error> {
        match cmd {
            Command::Put { id, .. } | Command::Delete { id } => check_id(id),
        }
    }
}

keel_guest::export_state_machine!(DocStore);
