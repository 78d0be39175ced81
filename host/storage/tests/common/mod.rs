//! Helpers shared by the integration tests.
#![allow(dead_code, unreachable_pub)]

use keel_raft::{ClientSerial, Command, Entry, Index, Payload, Record, Term};
use keel_storage::{ApplyBatch, KvWrite, LogId, Session};

/// A command entry whose payload is derived from its position, so any copy can be checked.
pub fn entry(index: Index, term: Term) -> Entry {
    Entry {
        index,
        term,
        timestamp_ms: 1_700_000_000_000 + index,
        record: Record::Command(Command {
            plugin: if index.is_multiple_of(2) {
                "alpha".into()
            } else {
                "beta".into()
            },
            client: Some(ClientSerial {
                client_id: index % 5,
                serial: index,
            }),
            payload: Payload::Inline(format!("payload {index}@{term}").into_bytes()),
        }),
    }
}

/// Entries `lo..=hi`, all of `term`.
pub fn entries(lo: Index, hi: Index, term: Term) -> Vec<Entry> {
    (lo..=hi).map(|i| entry(i, term)).collect()
}

/// The deterministic "plugin" of the tests: what applying `entry` writes. Every entry puts one
/// key, every third deletes another, every entry updates its client's session, and every
/// 13th expires another client's session.
pub fn effects(entry: &Entry) -> (Vec<KvWrite>, Vec<(u64, Option<Session>)>) {
    let Record::Command(cmd) = &entry.record else {
        return (Vec::new(), Vec::new());
    };
    let mut writes = vec![KvWrite {
        namespace: cmd.plugin.clone(),
        key: format!("k{:02}", entry.index % 17).into_bytes(),
        value: Some(format!("{}@{}", entry.index, entry.term).into_bytes()),
    }];
    if entry.index.is_multiple_of(3) {
        writes.push(KvWrite {
            namespace: cmd.plugin.clone(),
            key: format!("k{:02}", (entry.index * 7) % 17).into_bytes(),
            value: None,
        });
    }
    let mut sessions: Vec<(u64, Option<Session>)> = cmd
        .client
        .map(|c| {
            (
                c.client_id,
                Some(Session {
                    serial: c.serial,
                    result: entry.index.to_le_bytes().to_vec(),
                    last_ms: entry.index,
                }),
            )
        })
        .into_iter()
        .collect();
    if entry.index.is_multiple_of(13) {
        sessions.push(((entry.index + 1) % 5, None));
    }
    (writes, sessions)
}

/// The apply batch of `entries` (which must be consecutive and non-empty).
pub fn batch(entries: &[Entry]) -> ApplyBatch {
    let mut b = ApplyBatch::default();
    for e in entries {
        let (w, s) = effects(e);
        b.writes.extend(w);
        b.sessions.extend(s);
        b.last_applied = LogId::of(e);
    }
    b
}

/// A whole snapshot image in memory, as tests hold one.
#[derive(Clone, Debug, PartialEq)]
pub struct Snapshot {
    pub meta: keel_raft::SnapshotMeta,
    pub data: Vec<u8>,
}

impl Snapshot {
    /// The image to install, read from a copy of the bytes.
    pub fn image(&self) -> keel_storage::SnapshotImage {
        keel_storage::SnapshotImage::new(self.meta.clone(), std::io::Cursor::new(self.data.clone()))
    }
}

/// Collects a view's image into a [`Snapshot`].
pub trait IntoSnapshot {
    fn into_snapshot_for_test(self) -> Result<Snapshot, keel_storage::StorageError>;
}

impl<V: keel_storage::StateView> IntoSnapshot for keel_storage::SnapshotChunks<V> {
    fn into_snapshot_for_test(self) -> Result<Snapshot, keel_storage::StorageError> {
        let meta = self.meta().clone();
        let data = self.collect::<Result<Vec<_>, _>>()?.concat();
        Ok(Snapshot { meta, data })
    }
}
