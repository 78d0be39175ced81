//! Dry-run upgrades (issue #12, docs/plugins.md "Dry-run upgrades"): a plugin's last N
//! commands replayed against a candidate version, from the state the plugin's namespace
//! held before the first of them, on this node only. Nothing is written anywhere: the
//! candidate reads the applied state through an overlay that first undoes the journaled
//! commands ([`super::Journal`]) and then takes the candidate's own writes.
//!
//! The current version's side is what the journal recorded when the command really ran,
//! so the report compares the candidate with what happened, not with a second replay.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use keel_plugin::{ApplyContext, Plugin, PluginError, Writes};
use keel_storage::StateView;
use serde::Serialize;

use super::journal::Journaled;
use super::layer::{Namespace, Overlay, Unflushed};
use crate::blobs::{Blobs, hex};

/// What a dry run found.
#[derive(Debug, Serialize)]
pub struct DryRunReport {
    /// The plugin.
    pub plugin: String,
    /// Commands replayed.
    pub replayed: usize,
    /// Commands the journal holds for the plugin on this node (the most `--last` can reach).
    pub available: usize,
    /// The first and last replayed command's log index.
    pub from_index: Option<u64>,
    /// See `from_index`.
    pub to_index: Option<u64>,
    /// Commands whose answer differs (an answer or an error, the text compared).
    pub answers_differ: usize,
    /// Key writes that differ: a key one side wrote and the other did not, or wrote with
    /// another value (retains and releases of blobs counted the same way).
    pub writes_differ: usize,
    /// Commands with any difference.
    pub commands_differ: usize,
    /// The first few differing commands, side by side.
    pub differences: Vec<Difference>,
}

/// One command whose outcome differs.
#[derive(Debug, Serialize)]
pub struct Difference {
    /// Its entry's index.
    pub index: u64,
    /// Its place in the entry.
    pub position: u32,
    /// The command, as text (cut at 512 bytes).
    pub command: String,
    /// What the version that ran it did.
    pub current: Side,
    /// What the candidate does.
    pub candidate: Side,
}

/// One version's outcome of a command.
#[derive(Debug, PartialEq, Serialize)]
pub struct Side {
    /// The version label.
    pub version: String,
    /// The answer, as text.
    pub answer: Option<String>,
    /// The error, if it failed.
    pub error: Option<String>,
    /// Its writes, key → value (`null`: deleted), as text.
    pub writes: BTreeMap<String, Option<String>>,
    /// Blob retains (+n) and releases (-n), by SHA-256.
    pub retains: BTreeMap<String, i64>,
}

/// Differences shown in full; the rest are only counted.
pub const DIFFERENCES_SHOWN: usize = 5;

/// Replays `records` (a plugin's latest journal records, oldest first, every one of them
/// since the first to replay) against `candidate`, from `view` + `unflushed` (the applied
/// state the records lead to) rewound to before the first.
pub fn dry_run(
    candidate: &Plugin,
    records: &[Arc<Journaled>],
    available: usize,
    view: Box<dyn StateView + Send>,
    unflushed: Arc<Unflushed>,
    blobs: Blobs,
) -> Result<DryRunReport, PluginError> {
    let name = candidate.id().name.clone();
    // Undo the records newest first, each one's writes last first: what remains for a key is
    // what it held before the first record wrote it.
    let mut rewound = BTreeMap::new();
    for r in records.iter().rev() {
        for (key, before) in r.before.iter().rev() {
            rewound.insert((name.clone(), key.clone()), before.clone());
        }
    }
    let overlay = Arc::new(Mutex::new(Overlay {
        base: view,
        unflushed,
        writes: rewound,
        sessions: BTreeMap::new(),
    }));
    let mut report = DryRunReport {
        plugin: name.clone(),
        replayed: records.len(),
        available,
        from_index: records.first().map(|r| r.index),
        to_index: records.last().map(|r| r.index),
        answers_differ: 0,
        writes_differ: 0,
        commands_differ: 0,
        differences: Vec::new(),
    };
    // One entry's commands share one instance, as when they were applied.
    for entry in records.chunk_by(|a, b| a.index == b.index) {
        let view = Arc::new(Namespace::new(
            overlay.clone(),
            name.clone(),
            Some(blobs.clone()),
        ));
        let calls: Vec<(ApplyContext, &[u8])> = entry
            .iter()
            .map(|r| (r.ctx.clone(), r.command.as_slice()))
            .collect();
        let outcomes = candidate.apply_batch(view, &calls)?;
        for (r, out) in entry.iter().zip(outcomes) {
            let result = out.result.map_err(|e| e.to_string());
            let current = side(&r.plugin, &r.result, &r.writes, &r.retains);
            let new = side(candidate, &result, &out.writes, &out.retains);
            let answers = (current.answer != new.answer) || (current.error != new.error);
            let writes =
                differing(&current.writes, &new.writes) + differing(&current.retains, &new.retains);
            report.answers_differ += usize::from(answers);
            report.writes_differ += writes;
            if answers || writes > 0 {
                report.commands_differ += 1;
                if report.differences.len() < DIFFERENCES_SHOWN {
                    report.differences.push(Difference {
                        index: r.index,
                        position: r.position,
                        command: text(&r.command, 512),
                        current,
                        candidate: new,
                    });
                }
            }
            // The candidate goes on from its own writes, as it would have.
            let mut o = overlay.lock().unwrap_or_else(|e| e.into_inner());
            for (key, value) in out.writes {
                o.writes.insert((name.clone(), key), value);
            }
        }
    }
    Ok(report)
}

fn side(
    plugin: &Plugin,
    result: &Result<Vec<u8>, String>,
    writes: &Writes,
    retains: &[([u8; 32], i64)],
) -> Side {
    // A failure's text names the version ("plugin kv@v2: …"): compare what follows.
    let id = plugin.id();
    let named = format!("plugin {}@{}: ", id.name, id.version);
    let error = result
        .as_ref()
        .err()
        .map(|e| e.strip_prefix(&named).unwrap_or(e).to_owned());
    let mut retained = BTreeMap::new();
    for (sha, n) in retains {
        *retained.entry(hex(sha)).or_insert(0) += n;
    }
    retained.retain(|_, n| *n != 0);
    Side {
        version: id.version.clone(),
        answer: result.as_ref().ok().map(|a| text(a, 512)),
        error,
        // A key written twice by one command counts once, with its last value.
        writes: writes
            .iter()
            .map(|(k, v)| (text(k, 256), v.as_ref().map(|v| text(v, 256))))
            .collect(),
        retains: retained,
    }
}

/// Keys in one map and not the other, or with another value.
fn differing<V: PartialEq>(a: &BTreeMap<String, V>, b: &BTreeMap<String, V>) -> usize {
    let only_or_changed = a.iter().filter(|(k, v)| b.get(*k) != Some(v)).count();
    only_or_changed + b.keys().filter(|k| !a.contains_key(*k)).count()
}

/// Bytes as text for people: UTF-8 as is, else hex; cut at `max` bytes.
fn text(bytes: &[u8], max: usize) -> String {
    let cut = &bytes[..bytes.len().min(max)];
    let mut s = match std::str::from_utf8(cut) {
        Ok(s) => s.to_owned(),
        Err(e) if e.valid_up_to() + 4 > cut.len() && bytes.len() > max => {
            String::from_utf8_lossy(&cut[..e.valid_up_to()]).into_owned()
        }
        Err(_) => format!("0x{}", hex_of(cut)),
    };
    if bytes.len() > max {
        s.push('…');
    }
    s
}

fn hex_of(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}
