//! Property-based fuzzing (issue #13) of every decoder a network peer, a client or the disk
//! can reach: peer frames and messages, log entries read back from disk, snapshot images and
//! their chunks, the header values Keel parses, JSON bodies, blob references. Each gets
//! random bytes and mutations of valid encodings (bits flipped, bytes inserted, deleted,
//! overwritten with huge lengths, the whole truncated), and must not panic, must answer
//! damage with an error, and must not allocate beyond a bound set by its input's size: peak
//! bytes per decode are counted on this thread (`allocation-counter`), so a decoder that
//! trusts a length prefix to allocate fails here.
//!
//! Cases per property come from `PROPTEST_CASES` (proptest's default, 256, in CI). The long
//! run is in the README: `PROPTEST_CASES=1000000 cargo test --release -p keel --test fuzz`.

use std::collections::{BTreeMap, BTreeSet};

use keel::peer::wire::{self, FrameError, Frames, HeadRead, MAX_UNPROVEN_FRAME, Next};
use keel_raft::{
    BlobRef, ClientSerial, ClusterConfig, ClusterId, Command, Deploy, Entry, Message, MessageBody,
    Payload, Record, SnapshotMeta,
};
use keel_storage::{ApplyBatch, KvWrite, LogId, LogWrite, MemStorage, Session, Storage};
use proptest::prelude::*;

// ------------------------------------------------------------------------ allocation bound

/// The most a decode of `input_len` bytes may hold at its peak: serde's cautious
/// preallocation (1 MiB per sequence at most) a few levels deep, and what the decoded
/// values themselves take (a few dozen bytes of struct per input byte at most).
fn alloc_bound(input_len: usize) -> u64 {
    (4 << 20) + 256 * input_len as u64
}

/// Runs `f`, asserting its peak allocation stays within [`alloc_bound`] of `input_len`.
fn bounded<T>(what: &str, input_len: usize, f: impl FnOnce() -> T) -> T {
    let mut out = None;
    let info = allocation_counter::measure(|| out = Some(f()));
    assert!(
        info.bytes_max <= alloc_bound(input_len),
        "{what}: {} bytes allocated at peak for {input_len} bytes of input",
        info.bytes_max
    );
    match out {
        Some(v) => v,
        None => unreachable!("measure runs its closure"),
    }
}

// ------------------------------------------------------------------------ strategies

fn bytes(max: usize) -> impl Strategy<Value = Vec<u8>> {
    prop::collection::vec(any::<u8>(), 0..max)
}

fn text(max: usize) -> impl Strategy<Value = String> {
    prop::collection::vec(any::<char>(), 0..max).prop_map(|c| c.into_iter().collect())
}

fn blob_ref() -> impl Strategy<Value = BlobRef> {
    (any::<[u8; 32]>(), any::<u64>()).prop_map(|(sha256, len)| BlobRef { sha256, len })
}

fn payload() -> impl Strategy<Value = Payload> {
    let plain = prop_oneof![
        bytes(64).prop_map(Payload::Inline),
        (any::<[u8; 32]>(), any::<u64>()).prop_map(|(sha256, len)| Payload::Ref { sha256, len }),
    ];
    prop_oneof![
        3 => plain.clone(),
        1 => (plain, prop::collection::vec(blob_ref(), 0..4)).prop_map(|(b, attachments)| {
            Payload::Attached {
                body: Box::new(b),
                attachments,
            }
        }),
    ]
}

fn command() -> impl Strategy<Value = Command> {
    (
        text(12),
        prop::option::of((any::<u64>(), any::<u64>())),
        payload(),
    )
        .prop_map(|(plugin, client, payload)| Command {
            plugin,
            client: client.map(|(client_id, serial)| ClientSerial { client_id, serial }),
            payload,
        })
}

fn cluster_config() -> impl Strategy<Value = ClusterConfig> {
    (
        prop::collection::btree_set(any::<u64>(), 0..5),
        prop::collection::btree_set(any::<u64>(), 0..3),
        prop::collection::btree_map(any::<u64>(), text(24), 0..5),
    )
        .prop_map(|(voters, learners, addresses)| ClusterConfig {
            voters,
            learners,
            addresses,
        })
}

fn record() -> impl Strategy<Value = Record> {
    prop_oneof![
        Just(Record::Noop),
        Just(Record::OpenSession),
        command().prop_map(Record::Command),
        cluster_config().prop_map(Record::Config),
        (
            text(12),
            text(12),
            any::<[u8; 32]>(),
            any::<u64>(),
            any::<u64>()
        )
            .prop_map(|(plugin, version, sha256, fuel_per_apply, memory_limit)| {
                Record::Deploy(Deploy {
                    plugin,
                    version,
                    sha256,
                    fuel_per_apply,
                    memory_limit,
                })
            }),
        prop::collection::vec(command(), 0..4).prop_map(Record::Batch),
        any::<u64>().prop_map(|before_ms| Record::ExpireSessions { before_ms }),
        text(12).prop_map(|plugin| Record::Undeploy { plugin }),
        text(12).prop_map(|plugin| Record::DropState { plugin }),
    ]
}

fn entry() -> impl Strategy<Value = Entry> {
    (any::<u64>(), any::<u64>(), any::<u64>(), record()).prop_map(
        |(index, term, timestamp_ms, record)| Entry {
            index,
            term,
            timestamp_ms,
            record,
        },
    )
}

fn snapshot_meta() -> impl Strategy<Value = SnapshotMeta> {
    (any::<u64>(), any::<u64>(), cluster_config()).prop_map(|(index, term, config)| SnapshotMeta {
        index,
        term,
        config,
    })
}

fn body() -> impl Strategy<Value = MessageBody> {
    let u = any::<u64>;
    prop_oneof![
        (any::<bool>(), u(), u(), any::<bool>()).prop_map(
            |(pre_vote, last_index, last_term, transfer)| {
                MessageBody::RequestVote {
                    pre_vote,
                    last_index,
                    last_term,
                    transfer,
                }
            }
        ),
        (any::<bool>(), any::<bool>())
            .prop_map(|(pre_vote, granted)| MessageBody::RequestVoteResponse { pre_vote, granted }),
        (u(), u(), prop::collection::vec(entry(), 0..4), u()).prop_map(
            |(prev_index, prev_term, entries, commit)| MessageBody::AppendEntries {
                prev_index,
                prev_term,
                entries,
                commit,
            }
        ),
        (any::<bool>(), u(), u(), u()).prop_map(|(success, index, hint_term, hint_index)| {
            MessageBody::AppendEntriesResponse {
                success,
                index,
                hint_term,
                hint_index,
            }
        }),
        (u(), u(), u()).prop_map(|(commit, read_round, sent_tick)| MessageBody::Heartbeat {
            commit,
            read_round,
            sent_tick,
        }),
        (u(), u()).prop_map(|(read_round, sent_tick)| MessageBody::HeartbeatResponse {
            read_round,
            sent_tick,
        }),
        snapshot_meta().prop_map(|snapshot| MessageBody::InstallSnapshot { snapshot }),
        Just(MessageBody::TimeoutNow),
        u().prop_map(|ctx| MessageBody::ReadIndex { ctx }),
        (u(), prop::option::of(u()))
            .prop_map(|(ctx, index)| MessageBody::ReadIndexResponse { ctx, index }),
    ]
}

fn message() -> impl Strategy<Value = Message> {
    (
        any::<u64>(),
        any::<u64>(),
        any::<u128>(),
        any::<u64>(),
        body(),
    )
        .prop_map(|(from, to, cluster, term, body)| Message {
            from,
            to,
            cluster: ClusterId(cluster),
            term,
            body,
        })
}

/// One change to a valid encoding.
#[derive(Clone, Debug)]
enum Mutation {
    Flip(usize, u8),
    Insert(usize, u8),
    Delete(usize),
    /// Four bytes of a large little-endian number: a length prefix, a varint, gone wild.
    Huge(usize, u32),
    Truncate(usize),
}

fn mutations() -> impl Strategy<Value = Vec<Mutation>> {
    let one = prop_oneof![
        (any::<usize>(), 1..=255u8).prop_map(|(at, bit)| Mutation::Flip(at, bit)),
        (any::<usize>(), any::<u8>()).prop_map(|(at, b)| Mutation::Insert(at, b)),
        any::<usize>().prop_map(Mutation::Delete),
        (any::<usize>(), (1u32 << 16)..=u32::MAX).prop_map(|(at, n)| Mutation::Huge(at, n)),
        any::<usize>().prop_map(Mutation::Truncate),
    ];
    prop::collection::vec(one, 1..6)
}

fn mutate(mut bytes: Vec<u8>, changes: &[Mutation]) -> Vec<u8> {
    for change in changes {
        let n = bytes.len();
        match *change {
            Mutation::Flip(at, bit) if n > 0 => bytes[at % n] ^= bit,
            Mutation::Insert(at, b) => bytes.insert(at % (n + 1), b),
            Mutation::Delete(at) if n > 0 => {
                bytes.remove(at % n);
            }
            Mutation::Huge(at, v) if n >= 4 => {
                let at = at % (n - 3);
                bytes[at..at + 4].copy_from_slice(&v.to_le_bytes());
            }
            Mutation::Truncate(at) => bytes.truncate(at % (n + 1)),
            _ => {}
        }
    }
    bytes
}

// ------------------------------------------------------------------------ peer frames

/// Feeds `stream` to a [`Frames`] in pieces of `cut` bytes, as a receiver would, and
/// decodes every frame it yields; a large frame's header is vouched for only if `vouch`.
/// Returns how many frames decoded.
fn run_frames(stream: &[u8], cut: usize, proven: bool, vouch: bool) -> usize {
    let mut frames = Frames::new(proven);
    let mut decoded = 0;
    for piece in stream.chunks(cut.max(1)) {
        frames.push(piece);
        loop {
            match frames.poll_frame() {
                Ok(Next::More) => break,
                Ok(Next::Check(head)) => {
                    assert!(head.count > 0);
                    if !vouch {
                        return decoded;
                    }
                    frames.vouch();
                }
                Ok(Next::Frame(frame)) => {
                    if wire::decode_batch(&frame).is_ok() {
                        decoded += 1;
                    }
                    frames.vouch();
                }
                Err(FrameError::TooLarge { len, limit }) => {
                    assert!(len > limit);
                    return decoded;
                }
                Err(FrameError::Malformed) => return decoded,
            }
            // Never more than one frame within its limit and the piece just pushed.
            assert!(frames.held() <= 4 + keel::peer::MAX_PEER_FRAME + cut);
        }
    }
    decoded
}

proptest! {
    /// Random bytes as a peer stream: no panic, bounded memory.
    #[test]
    fn peer_stream_of_random_bytes(stream in bytes(4096), cut in 1usize..512, proven: bool) {
        bounded("peer stream", stream.len(), || run_frames(&stream, cut, proven, true));
    }

    /// Valid frames of random messages decode back to themselves; mutated, they decode or
    /// fail, without a panic or unbounded memory.
    #[test]
    fn peer_frames_valid_and_mutated(
        batch in prop::collection::vec(message(), 1..6),
        changes in mutations(),
        cut in 1usize..512,
    ) {
        let frame = keel::peer::encode_frame(&batch).expect("a batch encodes");
        let back = wire::decode_batch(&frame[4..]).expect("a valid frame decodes");
        prop_assert_eq!(&back, &batch);
        prop_assert_eq!(run_frames(&frame, cut, false, true), 1);
        match wire::read_head(&frame[4..], true) {
            HeadRead::Head(h) => {
                prop_assert_eq!(h.from, batch[0].from);
                prop_assert_eq!(h.cluster, batch[0].cluster);
                prop_assert_eq!(h.count, batch.len());
            }
            other => prop_assert!(false, "a valid frame's head: {:?}", other),
        }
        let damaged = mutate(frame.to_vec(), &changes);
        bounded("mutated peer frame", damaged.len(), || {
            let _ = wire::decode_batch(damaged.get(4..).unwrap_or(&[]));
            let _ = wire::read_head(damaged.get(4..).unwrap_or(&[]), false);
            run_frames(&damaged, cut, false, true)
        });
    }

    /// A frame claiming any length over the unproven limit is judged from its first bytes:
    /// refused, or its header offered for checking, with nothing reserved for the claim.
    #[test]
    fn huge_length_prefixes_are_judged_before_buffering(
        len in (MAX_UNPROVEN_FRAME as u32 + 1)..=u32::MAX,
        rest in bytes(256),
    ) {
        let mut stream = len.to_le_bytes().to_vec();
        stream.extend_from_slice(&rest);
        let info = allocation_counter::measure(|| {
            let mut frames = Frames::new(false);
            frames.push(&stream);
            match frames.poll_frame() {
                Ok(Next::Frame(_)) => panic!("an unproven {len}-byte frame was taken whole"),
                Ok(Next::More | Next::Check(_)) | Err(_) => {}
            }
        });
        prop_assert!(info.bytes_max < 64 << 10, "{} bytes for a {len}-byte claim", info.bytes_max);
    }

    /// The size bound the leader fills append messages with is never below the encoding.
    #[test]
    fn entry_size_bound_covers_its_encoding(e in entry()) {
        let encoded = postcard::to_allocvec(&e).expect("an entry encodes");
        prop_assert!(encoded.len() <= e.encoded_len_bound(), "{} > {}", encoded.len(), e.encoded_len_bound());
    }
}

// ------------------------------------------------------------------------ disk: log entries

proptest! {
    /// A log entry as stored, read back whole, damaged, or as random bytes.
    #[test]
    fn log_entries_read_back_from_disk(e in entry(), changes in mutations(), noise in bytes(1024)) {
        let stored = keel_storage::log_codec::encode(&e, 4 << 20).expect("an entry encodes");
        let back = keel_storage::log_codec::decode(e.index, &stored).expect("it reads back");
        prop_assert_eq!(&back, &e);
        prop_assert!(keel_storage::log_codec::decode(e.index.wrapping_add(1), &stored).is_err());
        let damaged = mutate(stored.clone(), &changes);
        let read = bounded("damaged log entry", damaged.len(), || {
            keel_storage::log_codec::decode(e.index, &damaged)
        });
        // The checksum catches every change that is not a no-op.
        if damaged != stored {
            prop_assert!(read.is_err());
        }
        bounded("random log entry", noise.len(), || keel_storage::log_codec::decode(0, &noise).is_err());
    }
}

// ------------------------------------------------------------------------ snapshots

/// A valid image: some plugin keys and sessions applied, streamed in small chunks.
fn image(
    writes: &[(String, Vec<u8>, Vec<u8>)],
    sessions: &[(u64, Vec<u8>)],
) -> (SnapshotMeta, Vec<u8>) {
    let store = MemStorage::new();
    let e = Entry {
        index: 1,
        term: 1,
        timestamp_ms: 0,
        record: Record::Noop,
    };
    store
        .persist(LogWrite {
            hard_state: None,
            snapshot: None,
            entries: std::slice::from_ref(&e),
        })
        .expect("persist");
    let batch = ApplyBatch {
        last_applied: LogId { index: 1, term: 1 },
        config: Some(ClusterConfig {
            voters: BTreeSet::from([1]),
            learners: BTreeSet::new(),
            addresses: BTreeMap::from([(1, "http://n1".to_string())]),
        }),
        writes: writes
            .iter()
            .map(|(ns, k, v)| KvWrite {
                namespace: ns.clone(),
                key: k.clone(),
                value: Some(v.clone()),
            })
            .collect(),
        sessions: sessions
            .iter()
            .map(|(id, r)| {
                (
                    *id,
                    Some(Session {
                        serial: 1,
                        result: r.clone(),
                        last_ms: 0,
                    }),
                )
            })
            .collect(),
    };
    store.apply(&batch).expect("apply");
    let chunks = keel_storage::SnapshotChunks::new(store.view().expect("view"), 97);
    let meta = chunks.meta().clone();
    let bytes = chunks
        .collect::<Result<Vec<_>, _>>()
        .expect("image")
        .concat();
    (meta, bytes)
}

/// Plugin keys (namespace, key, value) and sessions (client id, result) of an image.
type Contents = (Vec<(String, Vec<u8>, Vec<u8>)>, Vec<(u64, Vec<u8>)>);

fn image_contents() -> impl Strategy<Value = Contents> {
    (
        prop::collection::vec(
            (
                prop::collection::vec(any::<char>(), 1..6).prop_map(|c| c.into_iter().collect()),
                prop::collection::vec(any::<u8>(), 1..16),
                bytes(64),
            ),
            0..8,
        ),
        prop::collection::vec((any::<u64>(), bytes(16)), 0..4),
    )
}

proptest! {
    /// Images verify whole; damaged or random ones are refused, in bounded memory (a length
    /// prefix claiming 256 MiB in a short image allocated all of it before the fix).
    #[test]
    fn snapshot_images_valid_damaged_and_random(
        (writes, sessions) in image_contents(),
        changes in mutations(),
        noise in bytes(2048),
    ) {
        let (meta, bytes) = image(&writes, &sessions);
        prop_assert_eq!(keel_storage::verify_image(&mut bytes.as_slice()).expect("valid"), meta.clone());
        let damaged = mutate(bytes.clone(), &changes);
        let verdict = bounded("damaged image", damaged.len(), || {
            keel_storage::verify_image(&mut damaged.as_slice())
        });
        // The checksum covers every frame: a changed image cannot pass as another whole
        // one (the end frame and counts are checked too).
        if damaged != bytes {
            prop_assert!(verdict.is_err(), "a damaged image verified: {:?}", changes);
        }
        bounded("random image", noise.len(), || keel_storage::verify_image(&mut noise.as_slice()).is_err());
    }

    /// A receiver's staging area takes an image's chunks in any order, duplicates and gaps
    /// included, and holds exactly the image's bytes when it verifies.
    #[test]
    fn snapshot_chunks_staged_in_any_order(
        (writes, sessions) in image_contents(),
        sends in prop::collection::vec((any::<usize>(), 1usize..300), 1..40),
        garbage in bytes(64),
    ) {
        let (meta, bytes) = image(&writes, &sessions);
        let mut staging = keel::peer::snapshot::Staging::memory(2, &meta);
        for (at, len) in sends {
            let at = at % (bytes.len() + 1);
            let end = (at + len).min(bytes.len());
            let before = staging.have();
            match staging.accept(at as u64, &bytes[at..end]) {
                Ok(()) => prop_assert!(staging.have() >= before),
                Err(_) => prop_assert!(at as u64 > before, "refused a chunk within what is held"),
            }
        }
        let have = staging.have() as usize;
        // The rest, in order: the image is whole.
        staging.accept(have as u64, &bytes[have..]).expect("the rest follows");
        prop_assert!(staging.finish().is_ok());
        // The same with garbage appended: refused.
        let mut staging = keel::peer::snapshot::Staging::memory(2, &meta);
        staging.accept(0, &bytes).expect("whole");
        if !garbage.is_empty() {
            staging.accept(bytes.len() as u64, &garbage).expect("more");
            prop_assert!(staging.finish().is_err());
        }
    }
}

// ------------------------------------------------------------------------ HTTP pieces

fn header_text() -> impl Strategy<Value = String> {
    prop_oneof![
        text(80),
        // Near-valid forms: digits, hex, commas, `bytes=` ranges, `Bearer` schemes.
        prop::collection::vec(
            prop::sample::select(vec![
                "0",
                "1",
                "9",
                "a",
                "f",
                "F",
                "g",
                "-",
                ",",
                " ",
                "=",
                "bytes=",
                "Bearer ",
                "keel_",
                "_",
                "18446744073709551615",
                "18446744073709551616",
                "\t",
                "é",
            ]),
            0..40
        )
        .prop_map(|parts| parts.concat()),
    ]
}

proptest! {
    /// Every header value Keel parses itself: integers (sessions, timeouts, snapshot
    /// offsets), `Authorization`, `Range`, `Keel-Attach`, blob names, cluster ids, grants.
    #[test]
    fn header_values_we_parse(value in header_text(), raw in bytes(80), len in any::<u64>()) {
        for v in [value.as_bytes(), raw.as_slice()] {
            if let Some(n) = keel::http::parse_u64(v) {
                prop_assert_eq!(Some(n), std::str::from_utf8(v).ok().and_then(|s| s.trim().parse().ok()));
            }
            if let Ok(h) = hyper::header::HeaderValue::from_bytes(v)
                && let Some((start, end)) = keel::http::blobs::parse_range(&h, len)
            {
                prop_assert!(start < end && end <= len);
            }
        }
        if let Some(token) = keel::auth::bearer(&value) {
            prop_assert!(!token.is_empty());
            prop_assert!(value.to_ascii_lowercase().contains("bearer"));
        }
        if let Some(id) = keel::auth::token_id_of(&value) {
            prop_assert_eq!(id.len(), 12);
        }
        match keel::http::blobs::attach_names(&value) {
            Ok(names) => prop_assert!(names.len() <= keel::http::blobs::MAX_ATTACHMENTS),
            Err(e) => prop_assert!(e.starts_with("Keel-Attach")),
        }
        if let Some(h) = keel::blobs::parse_hex(&value) {
            prop_assert_eq!(keel::blobs::hex(&h), value.to_ascii_lowercase());
        }
        let _ = keel::config::parse_uuid(&value);
        let _ = keel::auth::Grant::parse(&value);
    }

    /// A blob name round-trips through its hex form; one character off, it is refused.
    #[test]
    fn blob_references_round_trip(hash in any::<[u8; 32]>(), at in 0usize..64, c in any::<char>()) {
        let name = keel::blobs::hex(&hash);
        prop_assert_eq!(keel::blobs::parse_hex(&name), Some(hash));
        let mut chars: Vec<char> = name.chars().collect();
        chars[at] = c;
        let changed: String = chars.into_iter().collect();
        if !c.is_ascii_hexdigit() {
            prop_assert_eq!(keel::blobs::parse_hex(&changed), None);
        }
        let header = format!("{name}, {name} ,{changed}");
        let parsed = keel::http::blobs::attach_names(&header);
        if c.is_ascii_hexdigit() {
            prop_assert!(parsed.is_ok());
        } else {
            prop_assert!(parsed.is_err());
        }
    }
}

// ------------------------------------------------------------------------ JSON bodies

/// Nested JSON: `depth` levels of arrays or objects around a value.
fn nested(depth: usize, objects: bool) -> Vec<u8> {
    let (open, close) = if objects {
        ("{\"a\":", "}")
    } else {
        ("[", "]")
    };
    format!("{}1{}", open.repeat(depth), close.repeat(depth)).into_bytes()
}

proptest! {
    /// JSON as clients send it (and as peers answer it): random, mutated, and nested to any
    /// depth a 64 KiB body allows. serde_json refuses more than 128 levels for every target
    /// (`Value` included) instead of recursing on, and ignored fields are skipped without
    /// recursion; nothing panics or overflows the stack.
    #[test]
    fn json_bodies_random_mutated_and_deep(
        noise in bytes(512),
        depth in 0usize..(64 << 10) / 5,
        objects: bool,
        changes in mutations(),
    ) {
        bounded("random JSON", noise.len(), || serde_json::from_slice::<serde_json::Value>(&noise).is_ok());
        let deep = nested(depth, objects);
        let parsed = bounded("deep JSON", deep.len(), || serde_json::from_slice::<serde_json::Value>(&deep));
        // serde_json's limit is 128 levels; the value inside counts as one.
        if depth < 100 {
            prop_assert!(parsed.is_ok(), "depth {}", depth);
        } else if depth > 128 {
            prop_assert!(parsed.is_err(), "depth {}", depth);
        }
        // In a field nobody reads: skipped, whatever the depth.
        let wrapped = format!("{{\"ignored\": {}, \"x\": 1}}", String::from_utf8_lossy(&deep));
        #[derive(serde::Deserialize)]
        struct OneField {
            #[allow(dead_code)]
            x: u64,
        }
        prop_assert!(serde_json::from_str::<OneField>(&wrapped).is_ok());
        // The replicated auth operations (commands to `_auth`, decoded on every node).
        let op = keel::auth::init_op("0123456789ab".into(), "ff".repeat(32));
        let valid = serde_json::to_vec(&op).expect("an op encodes");
        let damaged = mutate(valid, &changes);
        bounded("auth op", damaged.len(), || serde_json::from_slice::<keel::auth::Op>(&damaged).is_ok());
        bounded("node config", noise.len(), || serde_json::from_slice::<keel::config::NodeConfig>(&noise).is_ok());
    }
}

/// Regression (found by `snapshot_images_valid_damaged_and_random`): a frame length
/// claiming up to 256 MiB at the start of a few bytes of image made the reader allocate
/// all of it before finding the image short.
#[test]
fn a_short_image_claiming_a_huge_frame_is_refused_without_allocating_it() {
    let mut image = ((255u32) << 20).to_le_bytes().to_vec();
    image.extend_from_slice(&[0; 16]);
    let verdict = bounded("short image", image.len(), || {
        keel_storage::verify_image(&mut image.as_slice())
    });
    let err = verdict.expect_err("a short image is refused");
    assert!(err.to_string().contains("inside a frame"), "{err}");
}
