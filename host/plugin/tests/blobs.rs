//! `keel:plugin/blobs` through the real host with the example document store: attachments
//! read in `apply`, retains counted with the writes (and across one entry's commands),
//! retained blobs read in queries, and the rules that keep replicas reading the same bytes:
//! only attached or retained blobs, none retained from a query, a blob not on the node
//! yet is the node's problem (it waits), never a different answer.

mod common;

use common::{ctx, load, rust_guests};
use keel_plugin::{
    ApplyContext, ApplyOutcome, BlobRef, BlobSource, Entries, KvView, MemoryKv, PluginError,
    StorageError,
};
use sha2::{Digest, Sha256};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};

/// A node's state as the host would give it: a KV namespace, the blobs it holds, and the
/// replicated retain counts (committed only with a successful outcome, as a node does).
#[derive(Default)]
struct Node {
    kv: MemoryKv,
    blobs: Mutex<HashMap<[u8; 32], Vec<u8>>>,
    retains: Mutex<HashMap<[u8; 32], u64>>,
}

impl KvView for Node {
    fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>, StorageError> {
        self.kv.get(key)
    }
    fn range(
        &self,
        start: &[u8],
        end: Option<&[u8]>,
        limit: usize,
    ) -> Result<Entries, StorageError> {
        self.kv.range(start, end, limit)
    }
    fn blobs(&self) -> Option<&dyn BlobSource> {
        Some(self)
    }
}

impl BlobSource for Node {
    fn read(&self, sha256: &[u8; 32], offset: u64, len: usize) -> Option<Vec<u8>> {
        let blobs = self.blobs.lock().expect("lock");
        let b = blobs.get(sha256)?;
        let start = (offset as usize).min(b.len());
        Some(b[start..(start + len).min(b.len())].to_vec())
    }
    fn len(&self, sha256: &[u8; 32]) -> Option<u64> {
        self.blobs
            .lock()
            .expect("lock")
            .get(sha256)
            .map(|b| b.len() as u64)
    }
    fn retained(&self, sha256: &[u8; 32]) -> Result<u64, StorageError> {
        Ok(self
            .retains
            .lock()
            .expect("lock")
            .get(sha256)
            .copied()
            .unwrap_or(0))
    }
}

impl Node {
    fn hold(&self, bytes: &[u8]) -> BlobRef {
        let sha256: [u8; 32] = Sha256::digest(bytes).into();
        self.blobs
            .lock()
            .expect("lock")
            .insert(sha256, bytes.to_vec());
        BlobRef {
            sha256,
            len: bytes.len() as u64,
        }
    }
    fn commit(&self, outcome: &ApplyOutcome) {
        self.kv.commit(&outcome.writes);
        let mut r = self.retains.lock().expect("lock");
        for (sha, d) in &outcome.retains {
            let n = r.entry(*sha).or_default();
            *n = (*n as i64 + d) as u64;
        }
    }
    fn retained_count(&self, b: &BlobRef) -> u64 {
        self.retains
            .lock()
            .expect("lock")
            .get(&b.sha256)
            .copied()
            .unwrap_or(0)
    }
}

fn hex(b: &BlobRef) -> String {
    b.sha256.iter().map(|x| format!("{x:02x}")).collect()
}

fn with(index: u64, attachments: &[BlobRef]) -> ApplyContext {
    ApplyContext {
        attachments: attachments.to_vec(),
        ..ctx(index)
    }
}

fn text(outcome: &ApplyOutcome) -> String {
    match &outcome.result {
        Ok(b) => String::from_utf8_lossy(b).into_owned(),
        Err(e) => format!("ERR {e}"),
    }
}

#[test]
fn a_document_is_its_attached_blob_retained_until_replaced_or_deleted() {
    let docs = load("docstore", &rust_guests().docstore);
    let node = Arc::new(Node::default());
    let v1 = node.hold(b"first line\nsecond line\n");
    let v2 = node.hold(b"version two\n");

    let put = |index, blob: &BlobRef| {
        let o = docs
            .apply(
                node.clone(),
                &with(index, &[*blob]),
                br#"{"op":"put","id":"a.txt","content_type":"text/plain"}"#,
            )
            .expect("apply");
        node.commit(&o);
        o
    };
    let o = put(1, &v1);
    assert!(
        text(&o).contains(r#""preview":"first line""#),
        "{}",
        text(&o)
    );
    assert_eq!(o.retains, vec![(v1.sha256, 1)]);
    assert_eq!(node.retained_count(&v1), 1);

    // Queries read the retained blob.
    let head = docs
        .query(node.clone(), br#"{"op":"head","id":"a.txt","bytes":5}"#)
        .expect("query");
    assert_eq!(
        String::from_utf8_lossy(&head),
        r#"{"id":"a.txt","text":"first"}"#
    );

    // A new version retains the new blob and releases the old one.
    let o = put(2, &v2);
    assert!(text(&o).contains(r#""version":2"#), "{}", text(&o));
    assert_eq!(node.retained_count(&v1), 0);
    assert_eq!(node.retained_count(&v2), 1);

    // Deleting releases it.
    let o = docs
        .apply(node.clone(), &ctx(3), br#"{"op":"delete","id":"a.txt"}"#)
        .expect("apply");
    node.commit(&o);
    assert_eq!(text(&o), r#"{"deleted":true}"#);
    assert_eq!(node.retained_count(&v2), 0);
}

#[test]
fn a_blob_neither_attached_nor_retained_cannot_be_read_even_if_the_node_holds_it() {
    let docs = load("docstore", &rust_guests().docstore);
    let node = Arc::new(Node::default());
    let b = node.hold(b"held here, retained nowhere\n");
    let o = docs
        .apply(node.clone(), &with(1, &[b]), br#"{"op":"put","id":"x"}"#)
        .expect("apply");
    // The document's metadata is committed, its retain is not: a replica whose state says
    // nobody retains the blob must not read it, whatever its disk holds.
    node.kv.commit(&o.writes);
    let refused = docs
        .query(node.clone(), br#"{"op":"head","id":"x"}"#)
        .expect_err("refused");
    assert!(refused.is_deterministic(), "{refused}");
    assert!(refused.to_string().contains("blob unknown"), "{refused}");
    // And a put without an attachment is refused by the plugin, changing nothing.
    let o = docs
        .apply(node.clone(), &ctx(2), br#"{"op":"put","id":"y"}"#)
        .expect("apply");
    assert!(
        text(&o).contains("exactly one attached blob"),
        "{}",
        text(&o)
    );
    assert!(o.retains.is_empty() && o.writes.is_empty());
}

#[test]
fn retains_of_one_entrys_commands_add_up_and_a_failed_command_keeps_none() {
    let docs = load("docstore", &rust_guests().docstore);
    let node = Arc::new(Node::default());
    let a = node.hold(b"a\n");
    let b = node.hold(b"b\n");
    let calls: Vec<(ApplyContext, &[u8])> = vec![
        (with(1, &[a]), br#"{"op":"put","id":"d"}"#),
        // Replaces `d`: releases `a`, which only the command before retains (not yet in
        // the committed counts), and retains `b`.
        (with(1, &[b]), br#"{"op":"put","id":"d"}"#),
        // Fails (two attachments): its retains, had it made any, are dropped.
        (with(1, &[a, b]), br#"{"op":"put","id":"e"}"#),
    ];
    let outcomes = docs.apply_batch(node.clone(), &calls).expect("batch");
    assert_eq!(outcomes[0].retains, vec![(a.sha256, 1)]);
    let mut second = outcomes[1].retains.clone();
    second.sort();
    let mut want = vec![(a.sha256, -1), (b.sha256, 1)];
    want.sort();
    assert_eq!(second, want, "{}", text(&outcomes[1]));
    assert!(outcomes[2].result.is_err() && outcomes[2].retains.is_empty());
    for o in &outcomes {
        node.commit(o);
    }
    assert_eq!((node.retained_count(&a), node.retained_count(&b)), (0, 1));
    let meta = docs
        .query(node.clone(), br#"{"op":"get","id":"d"}"#)
        .expect("query");
    assert!(String::from_utf8_lossy(&meta).contains(&hex(&b)));
}

#[test]
fn an_attachment_not_on_the_node_yet_stops_the_apply_as_the_nodes_problem() {
    let docs = load("docstore", &rust_guests().docstore);
    let node = Arc::new(Node::default());
    let elsewhere = BlobRef {
        sha256: Sha256::digest(b"not here").into(),
        len: 8,
    };
    let err = docs
        .apply(
            node.clone(),
            &with(1, &[elsewhere]),
            br#"{"op":"put","id":"z"}"#,
        )
        .expect_err("node-local");
    assert!(matches!(err, PluginError::BlobMissing { .. }), "{err}");
    assert!(!err.is_deterministic());
}

/// Plugins built against the first world (`keel:plugin@0.1.0`, no blobs interface) load
/// and run unchanged: the host links 0.1.1, which is semver-compatible.
#[test]
fn a_plugin_built_for_the_0_1_0_world_still_runs() {
    let wasm = include_bytes!("fixtures/kv-wit-0.1.0.wasm");
    let kv = load("kv-old", wasm);
    let state = Arc::new(MemoryKv::new());
    let o = kv
        .apply(
            state.clone(),
            &ctx(1),
            br#"{"op":"put","key":"k","value":"v"}"#,
        )
        .expect("apply");
    state.commit(&o.writes);
    assert_eq!(text(&o), r#"{"prev":null}"#);
    let got = kv
        .query(state.clone(), br#"{"op":"get","key":"k"}"#)
        .expect("query");
    assert_eq!(got, br#"{"value":"v"}"#);
}
