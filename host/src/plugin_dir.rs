//! The watched plugin folder (docs/plugins.md, "The plugin folder"): a complete `NAME.wasm`
//! in `plugins_dir` is deployed cluster-wide under NAME through `PUT /v1/plugins/{name}` on
//! this node, which hands it to the leader like any client's deploy.
//!
//! What others were bitten by (Kubernetes static pods, Envoy, Traefik, WildFly, wasmCloud)
//! shapes the rules:
//! - Only `NAME.wasm` counts: dotfiles, `*.tmp`, `*.part`, `*~`, `NAME.wasm.bak` and any
//!   other name not ending in `.wasm` are ignored, and so is a stem with a dot in it
//!   (`kv.old.wasm`), the usual shape of a backup.
//! - A file renamed in is complete; a file written in place is read only once its size and
//!   modification time have stood still for `plugin_debounce_ms`, and again checked after
//!   reading. The directory is watched (inotify) and also rescanned, so a bind-mounted or
//!   replaced file is not missed.
//! - Identity is the bytes' hash: the marker beside the file records the hash it is about,
//!   and the leader is asked not to redeploy bytes already active, so a restart or the same
//!   file dropped again proposes nothing.
//! - What happened is written beside the file: `NAME.wasm.deployed` or `NAME.wasm.failed`
//!   (the compiler's reason). A failed file changes nothing in the cluster.
//! - Removing a file undeploys nothing (undeploying is explicit: `keel undeploy`).

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::Context;
use hyper::StatusCode;
use notify::{EventKind, RecursiveMode, Watcher};
use serde::{Deserialize, Serialize};
use serde_json::json;

use crate::blobs::{hex, sha256};
use crate::client::Client;
use crate::config::NodeConfig;

/// How often the folder is rescanned when no event comes (events can be missed: a
/// bind-mounted file, a network file system, an event queue overflow).
const RESCAN: Duration = Duration::from_millis(500);

/// Optional `NAME.json` beside `NAME.wasm`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Settings {
    /// Fuel per apply.
    pub fuel: Option<u64>,
    /// Memory limit per instance, in bytes.
    pub memory_bytes: Option<u64>,
    /// Version label (default: from the bytes' hash).
    pub version: Option<String>,
}

/// What a marker file says (`NAME.wasm.deployed` / `NAME.wasm.failed`).
#[derive(Debug, Default, Serialize, Deserialize)]
pub struct Marker {
    /// The plugin.
    pub plugin: String,
    /// SHA-256 of the `.wasm` this marker is about.
    pub sha256: String,
    /// SHA-256 of `NAME.json` then, if there was one.
    #[serde(default)]
    pub settings_sha256: Option<String>,
    /// The version label active (deployed only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<String>,
    /// The log index it became active at (deployed only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub index: Option<u64>,
    /// Why it was refused (failed only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// When this node wrote the marker (ms since the epoch).
    #[serde(default)]
    pub at_ms: u64,
}

/// The plugin a file in the folder names, or `None` if the file is to be ignored.
pub fn plugin_of(file: &str) -> Option<&str> {
    if file.starts_with('.') {
        return None;
    }
    let stem = file.strip_suffix(".wasm")?;
    (!stem.is_empty() && !stem.contains('.')).then_some(stem)
}

/// What a file looked like: length, modification time, and the same for its `NAME.json`.
type Look = (u64, SystemTime, Option<(u64, SystemTime)>);

fn look(dir: &Path, plugin: &str) -> Option<Look> {
    let m = std::fs::metadata(dir.join(format!("{plugin}.wasm"))).ok()?;
    if !m.is_file() {
        return None;
    }
    let json = std::fs::metadata(dir.join(format!("{plugin}.json")))
        .ok()
        .map(|j| (j.len(), j.modified().unwrap_or(UNIX_EPOCH)));
    Some((m.len(), m.modified().unwrap_or(UNIX_EPOCH), json))
}

/// One file being watched.
struct Seen {
    look: Look,
    /// When it last changed.
    since: Instant,
    /// Renamed into the folder since: complete now.
    renamed: bool,
}

/// The folder's watcher state.
struct Folder {
    dir: PathBuf,
    url: String,
    debounce: Duration,
    seen: HashMap<String, Seen>,
    /// Handled as it looks now (deployed, unchanged, or failed): not read again until it
    /// changes.
    done: HashMap<String, Look>,
}

/// Starts watching `cfg.plugins_dir()` (created if missing) on the current tokio runtime.
pub fn spawn(cfg: &NodeConfig) -> anyhow::Result<()> {
    let debounce = Duration::from_millis(cfg.plugin_debounce_ms);
    watch(cfg.plugins_dir(), cfg.url(), debounce).map(drop)
}

/// Whether an event can mean a plugin file appeared, changed or left. Opening or reading
/// the folder is not one: each scan opens the folder, and if that prompted a scan the
/// watcher would spin, as it did for a while (a core's worth of wake-ups per node, half the
/// cluster's throughput).
fn prompts_scan(kind: &EventKind) -> bool {
    matches!(
        kind,
        EventKind::Create(_) | EventKind::Modify(_) | EventKind::Remove(_) | EventKind::Any
    )
}

/// Watches `dir`, deploying through the node at `url`; the count of scans so far.
fn watch(dir: PathBuf, url: String, debounce: Duration) -> anyhow::Result<Arc<AtomicU64>> {
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<notify::Event>();
    let mut watcher = notify::recommended_watcher(move |ev: notify::Result<notify::Event>| {
        if let Ok(ev) = ev
            && prompts_scan(&ev.kind)
        {
            let _ = tx.send(ev);
        }
    })
    .context("starting the plugin folder watcher")?;
    watcher
        .watch(&dir, RecursiveMode::NonRecursive)
        .with_context(|| format!("watching {}", dir.display()))?;
    let mut folder = Folder {
        dir: dir.clone(),
        url,
        debounce,
        seen: HashMap::new(),
        done: HashMap::new(),
    };
    let scans = Arc::new(AtomicU64::new(0));
    let counted = scans.clone();
    tracing::info!(target: "keel::plugins", dir = %dir.display(), "watching the plugin folder");
    tokio::spawn(async move {
        // Owned by the task: dropping it would stop the events.
        let _watcher = watcher;
        let mut tick = tokio::time::interval(RESCAN);
        loop {
            tokio::select! {
                ev = rx.recv() => match ev {
                    Some(ev) => folder.event(&ev),
                    None => return,
                },
                _ = tick.tick() => {}
            }
            counted.fetch_add(1, Ordering::Relaxed);
            folder.scan().await;
        }
    });
    Ok(scans)
}

impl Folder {
    /// A rename into the folder marks the file complete (Envoy's rule: only moves are
    /// atomic); any other event just prompts a scan.
    fn event(&mut self, ev: &notify::Event) {
        use notify::event::{ModifyKind, RenameMode};
        let renamed_in = matches!(
            ev.kind,
            EventKind::Modify(ModifyKind::Name(RenameMode::To | RenameMode::Both))
        );
        if !renamed_in {
            return;
        }
        // With `Both`, the paths are (from, to): the last is where it is now.
        let Some(to) = ev.paths.last() else { return };
        let Some(plugin) = to.file_name().and_then(|f| f.to_str()).and_then(plugin_of) else {
            return;
        };
        if let Some(look) = look(&self.dir, plugin) {
            self.seen.insert(
                plugin.to_owned(),
                Seen {
                    look,
                    since: Instant::now(),
                    renamed: true,
                },
            );
            self.done.remove(plugin);
        }
    }

    async fn scan(&mut self) {
        let Ok(entries) = std::fs::read_dir(&self.dir) else {
            return;
        };
        let mut present = Vec::new();
        for entry in entries.flatten() {
            let name = entry.file_name();
            let Some(plugin) = name.to_str().and_then(plugin_of) else {
                continue;
            };
            present.push(plugin.to_owned());
        }
        // A file gone is only noted: deleting a file undeploys nothing.
        let gone: Vec<String> = self
            .done
            .keys()
            .chain(self.seen.keys())
            .filter(|p| !present.contains(p))
            .cloned()
            .collect();
        for plugin in gone {
            let was_done = self.done.remove(&plugin).is_some();
            let was_seen = self.seen.remove(&plugin).is_some();
            if was_done || was_seen {
                tracing::info!(
                    target: "keel::plugins",
                    plugin,
                    "{plugin}.wasm left the plugin folder; the plugin stays deployed \
                     (undeploy it with `keel undeploy {plugin}`)"
                );
            }
        }
        for plugin in present {
            let Some(now) = look(&self.dir, &plugin) else {
                continue;
            };
            if self.done.get(&plugin) == Some(&now) {
                continue;
            }
            self.done.remove(&plugin);
            let ready = match self.seen.get_mut(&plugin) {
                Some(s) if s.look == now => s.renamed || s.since.elapsed() >= self.debounce,
                Some(s) => {
                    // Still being written: wait until it stands still.
                    *s = Seen {
                        look: now,
                        since: Instant::now(),
                        renamed: false,
                    };
                    false
                }
                None => {
                    self.seen.insert(
                        plugin.clone(),
                        Seen {
                            look: now,
                            since: Instant::now(),
                            renamed: false,
                        },
                    );
                    false
                }
            };
            if ready {
                self.seen.remove(&plugin);
                if self.handle(&plugin, now).await {
                    self.done.insert(plugin, now);
                }
            }
        }
    }

    /// Reads, checks and deploys one complete file; whether it is settled (a marker
    /// written, or nothing to do). `false`: try again later (it changed while being read,
    /// or the cluster could not be reached).
    async fn handle(&mut self, plugin: &str, seen: Look) -> bool {
        let wasm_path = self.dir.join(format!("{plugin}.wasm"));
        let json_path = self.dir.join(format!("{plugin}.json"));
        let Ok(bytes) = tokio::fs::read(&wasm_path).await else {
            return false;
        };
        let settings_text = tokio::fs::read(&json_path).await.ok();
        if look(&self.dir, plugin) != Some(seen) {
            return false;
        }
        let hash = hex(&sha256(&bytes));
        let settings_hash = settings_text.as_deref().map(|t| hex(&sha256(t)));
        // Already handled, by this node before a restart or just now.
        for suffix in ["deployed", "failed"] {
            if let Some(m) = read_marker(&self.dir, plugin, suffix)
                && m.sha256 == hash
                && m.settings_sha256 == settings_hash
            {
                return true;
            }
        }
        let mut marker = Marker {
            plugin: plugin.to_owned(),
            sha256: hash,
            settings_sha256: settings_hash,
            at_ms: now_ms(),
            ..Marker::default()
        };
        let settings = match settings_text
            .as_deref()
            .map(serde_json::from_slice::<Settings>)
        {
            None => Settings::default(),
            Some(Ok(s)) => s,
            Some(Err(e)) => {
                marker.reason = Some(format!("{plugin}.json: {e}"));
                return self.failed(marker);
            }
        };
        let mut headers = vec![("keel-unless-active", "1".to_string())];
        if let Some(f) = settings.fuel {
            headers.push(("keel-fuel", f.to_string()));
        }
        if let Some(m) = settings.memory_bytes {
            headers.push(("keel-memory-bytes", m.to_string()));
        }
        if let Some(v) = settings.version {
            headers.push(("keel-version", v));
        }
        tracing::info!(target: "keel::plugins", plugin, sha256 = %marker.sha256, "deploying from the plugin folder");
        let mut client =
            Client::new(vec![self.url.clone()]).with_deadline(Duration::from_secs(120));
        let answer = match client.deploy(plugin, bytes, &headers).await {
            Ok(a) => a,
            Err(e) => {
                tracing::warn!(target: "keel::plugins", plugin, "deploy not done, will retry: {e:#}");
                return false;
            }
        };
        let body: serde_json::Value = serde_json::from_slice(&answer.body).unwrap_or_default();
        if answer.status == StatusCode::OK {
            let current = if body["unchanged"] == json!(true) {
                &body["current"]
            } else {
                &body
            };
            marker.version = current["version"].as_str().map(str::to_owned);
            marker.index = current["index"].as_u64();
            tracing::info!(
                target: "keel::plugins",
                plugin,
                version = ?marker.version,
                index = ?marker.index,
                unchanged = body["unchanged"] == json!(true),
                "plugin folder: deployed"
            );
            write_marker(&self.dir, &marker, "deployed", "failed");
            true
        } else if answer.status.is_client_error() {
            let reason = body["error"]
                .as_str()
                .map(str::to_owned)
                .unwrap_or_else(|| String::from_utf8_lossy(&answer.body).into_owned());
            marker.reason = Some(reason);
            self.failed(marker)
        } else {
            tracing::warn!(
                target: "keel::plugins",
                plugin,
                status = %answer.status,
                "deploy not done, will retry: {}",
                String::from_utf8_lossy(&answer.body)
            );
            false
        }
    }

    fn failed(&self, marker: Marker) -> bool {
        tracing::warn!(
            target: "keel::plugins",
            plugin = marker.plugin,
            reason = marker.reason.as_deref().unwrap_or(""),
            "plugin folder: refused; the cluster keeps the version it has"
        );
        write_marker(&self.dir, &marker, "failed", "deployed");
        true
    }
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

fn read_marker(dir: &Path, plugin: &str, suffix: &str) -> Option<Marker> {
    let bytes = std::fs::read(dir.join(format!("{plugin}.wasm.{suffix}"))).ok()?;
    serde_json::from_slice(&bytes).ok()
}

/// Writes `NAME.wasm.{suffix}` atomically (a dotfile renamed into place) and removes the
/// other marker, so the folder never shows both.
fn write_marker(dir: &Path, marker: &Marker, suffix: &str, other: &str) {
    let plugin = &marker.plugin;
    let tmp = dir.join(format!(".{plugin}.wasm.{suffix}.tmp"));
    let path = dir.join(format!("{plugin}.wasm.{suffix}"));
    let text = serde_json::to_vec_pretty(marker).unwrap_or_default();
    let written = std::fs::write(&tmp, text).and_then(|()| std::fs::rename(&tmp, &path));
    if let Err(e) = written {
        tracing::warn!(target: "keel::plugins", plugin, "writing {}: {e}", path.display());
    }
    let _ = std::fs::remove_file(dir.join(format!("{plugin}.wasm.{other}")));
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A quiet folder is scanned on the rescan timer only: the scan's own opening of the
    /// folder must not prompt another scan (it did, and the watcher spun).
    #[test]
    fn a_quiet_folder_is_not_rescanned_by_its_own_scans() {
        let dir = std::env::temp_dir().join(format!("keel-quiet-{}", std::process::id()));
        let rt = tokio::runtime::Runtime::new().expect("runtime");
        let scans = rt
            .block_on(async {
                let scans = watch(dir.clone(), "http://127.0.0.1:9".into(), Duration::ZERO)?;
                tokio::time::sleep(RESCAN * 4).await;
                anyhow::Ok(scans)
            })
            .expect("watch");
        let n = scans.load(Ordering::Relaxed);
        // The timer allows about 5 in 4 rescan periods; spinning makes thousands.
        assert!(
            n <= 12,
            "{n} scans of an unchanged folder in {:?}",
            RESCAN * 4
        );
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn only_complete_plugin_files_count() {
        for (file, plugin) in [("kv.wasm", Some("kv")), ("my-sm_2.wasm", Some("my-sm_2"))] {
            assert_eq!(plugin_of(file), plugin, "{file}");
        }
        for ignored in [
            ".kv.wasm",
            "kv.wasm.bak",
            "kv.wasm~",
            "kv.wasm.tmp",
            "kv.wasm.part",
            "kv.old.wasm",
            "kv.wasm.deployed",
            "kv.wasm.failed",
            "kv.json",
            ".wasm",
            "README",
        ] {
            assert_eq!(plugin_of(ignored), None, "{ignored}");
        }
    }
}
