//! Hostile input (issue #13) against real `keel serve` processes: slow and half-open
//! clients are cut off while the cluster keeps its leader and serves a normal client; a
//! peer frame too large for a stream that has not proven its cluster is refused from its
//! first bytes; oversized heads get 431, over-deep JSON 400, a declared oversized body 413
//! before it is sent. Requests are written by hand on raw sockets: a well-behaved client
//! cannot misbehave on purpose.
//!
//! Nothing here measures time: every wait is a deadlock guard far above what is waited for.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use keel::client::Client;
use keel::config::NodeConfig;
use keel::tls::Tls;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

mod common;
use common::{ProcessCluster, kill_all, rt, start_nodes};

/// Short deadlines, so that the slow clients are cut off within the test.
fn impatient(cfg: &mut NodeConfig) {
    cfg.header_timeout_ms = 1_000;
    cfg.body_timeout_ms = 1_000;
    cfg.tls_handshake_timeout_ms = 1_000;
    cfg.write_timeout_ms = 1_000;
}

fn addr(url: &str) -> String {
    url.trim_start_matches("http://")
        .trim_start_matches("https://")
        .to_string()
}

/// Writes `head` (and `body`) on a new connection and reads the answer until the node
/// closes the connection or `guard` passes; the answer's status line and the rest.
async fn exchange(url: &str, head: &[u8], body: &[u8], guard: Duration) -> (String, String) {
    let mut s = TcpStream::connect(addr(url)).await.expect("connect");
    s.write_all(head).await.expect("write head");
    if !body.is_empty() {
        // The node may answer and close before taking all of it: that is the point.
        let _ = s.write_all(body).await;
    }
    let mut got = Vec::new();
    let _ = tokio::time::timeout(guard, s.read_to_end(&mut got)).await;
    let text = String::from_utf8_lossy(&got).into_owned();
    let status = text.lines().next().unwrap_or("").to_string();
    (status, text)
}

/// A counter from `/metrics`, with labels if given (`keel_NAME_total{LABELS}`); 0 if absent.
async fn metric(url: &str, name_and_labels: &str) -> u64 {
    let Ok(a) = Client::new(vec![url.to_string()]).get("/metrics").await else {
        return 0;
    };
    let text = String::from_utf8_lossy(&a.body).into_owned();
    let prefix = format!("keel_{name_and_labels} ");
    text.lines()
        .find_map(|l| l.strip_prefix(&prefix)?.trim().parse::<f64>().ok())
        .map_or(0, |v| v as u64)
}

/// Waits until a counter reaches `min` (a connection cut off is counted just after it is
/// dropped); fails after a 30 s guard.
async fn metric_reaches(url: &str, name_and_labels: &str, min: u64) {
    let start = Instant::now();
    loop {
        let n = metric(url, name_and_labels).await;
        if n >= min {
            return;
        }
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "{name_and_labels} stays at {n}, below {min}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// `(leader id, term)` of the current leader with kv active.
async fn leader_and_term(urls: &[String]) -> (u64, u64) {
    let id = common::wait_for_leader(urls, Duration::from_secs(30)).await;
    let s = common::status(&urls[id as usize - 1])
        .await
        .expect("the leader answers its status");
    (id, s["term"].as_u64().unwrap_or(0))
}

async fn put(url: &str, key: &str) {
    let mut c = Client::new(vec![url.to_string()]).with_deadline(Duration::from_secs(20));
    let body = serde_json::json!({"op": "put", "key": key, "value": "v"}).to_string();
    let a = c.submit("kv", body.into_bytes()).await.expect("a put");
    assert!(
        a.status.is_success(),
        "{} {}",
        a.status,
        String::from_utf8_lossy(&a.body)
    );
}

/// Whether the node closed `s` (EOF or reset) within `guard`, reading what it sends.
async fn closed_within(s: &mut TcpStream, guard: Duration) -> bool {
    let mut buf = [0u8; 1024];
    let deadline = tokio::time::Instant::now() + guard;
    loop {
        match tokio::time::timeout_at(deadline, s.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => return true,
            Ok(Ok(_)) => continue,
            Err(_) => return false,
        }
    }
}

#[test]
fn slowloris_clients_are_cut_off_while_the_cluster_keeps_its_leader_and_serves() {
    let cluster = start_nodes(3, impatient);
    rt().block_on(async {
        let (leader, term) = leader_and_term(&cluster.urls).await;
        let url = cluster.urls[leader as usize - 1].clone();
        // 40 connections: a request head a byte at a time, a body that never comes, and
        // connections that never send anything.
        let mut slow = Vec::new();
        for i in 0..40 {
            let mut s = TcpStream::connect(addr(&url)).await.expect("connect");
            if i % 4 == 1 {
                let head = "POST /v1/plugins/kv/commands HTTP/1.1\r\nhost: x\r\ncontent-length: 100\r\n\r\n";
                s.write_all(head.as_bytes()).await.expect("head");
            }
            slow.push(s);
        }
        let dribble = "POST /v1/plugins/kv/commands HTTP/1.1\r\nhost: x\r\nx-slow: ";
        for (step, byte) in dribble.bytes().cycle().take(12).enumerate() {
            for (i, s) in slow.iter_mut().enumerate() {
                if i % 4 == 0 {
                    let _ = s.write_all(&[byte]).await;
                }
            }
            // A normal client is served meanwhile.
            if step % 4 == 0 {
                put(&url, &format!("k{step}")).await;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        for (i, s) in slow.iter_mut().enumerate() {
            assert!(
                closed_within(s, Duration::from_secs(30)).await,
                "slow connection {i} is still open"
            );
        }
        metric_reaches(&url, "timeouts_total{phase=\"header\"}", 30).await;
        metric_reaches(&url, "timeouts_total{phase=\"body\"}", 10).await;
        put(&url, "after").await;
        assert_eq!(
            leader_and_term(&cluster.urls).await,
            (leader, term),
            "the cluster kept its leader through the slow clients"
        );
    });
}

/// A slow reader: a client asks for an answer far larger than the socket buffers (a 32 MiB
/// blob) and never reads it. The write waits for the client; after `write_timeout_ms`
/// without progress the connection goes, counted, and the cluster serves as before.
#[test]
fn a_client_that_stops_reading_its_answer_is_cut_off() {
    let cluster = start_nodes(3, impatient);
    rt().block_on(async {
        let (leader, term) = leader_and_term(&cluster.urls).await;
        let url = cluster.urls[leader as usize - 1].clone();
        let blob = vec![42u8; 32 << 20];
        let mut c = Client::new(vec![url.clone()]).with_deadline(Duration::from_secs(60));
        let sha = common::upload_blob(&mut c, blob).await;
        let socket = tokio::net::TcpSocket::new_v4().expect("socket");
        socket
            .set_recv_buffer_size(8 << 10)
            .expect("small receive buffer");
        let target = addr(&url).parse().expect("a socket address");
        let mut s = socket.connect(target).await.expect("connect");
        let get = format!("GET /v1/blobs/{sha} HTTP/1.1\r\nhost: x\r\n\r\n");
        s.write_all(get.as_bytes()).await.expect("request");
        // Nothing is read: the node's writes stall until it gives up.
        metric_reaches(&url, "timeouts_total{phase=\"write\"}", 1).await;
        assert!(
            closed_within(&mut s, Duration::from_secs(30)).await,
            "the slow reader's connection is still open"
        );
        put(&url, "after").await;
        assert_eq!(
            leader_and_term(&cluster.urls).await,
            (leader, term),
            "the cluster kept its leader through the slow reader"
        );
    });
}

#[test]
fn clients_beyond_max_connections_are_refused_and_peers_still_reach_each_other() {
    let cluster = start_nodes(3, |cfg| {
        impatient(cfg);
        cfg.header_timeout_ms = 5_000;
        cfg.max_connections = 8;
    });
    rt().block_on(async {
        let (leader, term) = leader_and_term(&cluster.urls).await;
        let url = cluster.urls[leader as usize - 1].clone();
        // Every client slot taken by idle connections (the peers' streams hold reserve or
        // client slots already; either way these fill what is left).
        let mut idle = Vec::new();
        for _ in 0..8 {
            idle.push(TcpStream::connect(addr(&url)).await.expect("connect"));
        }
        // A client now lands on the peers' reserve and is turned away with 503.
        let (status, text) = exchange(
            &url,
            b"GET /v1/status HTTP/1.1\r\nhost: x\r\n\r\n",
            b"",
            Duration::from_secs(30),
        )
        .await;
        assert!(status.contains(" 503 "), "{text}");
        assert!(text.contains("max_connections"), "{text}");
        // Peers still reach the leader: a new command commits on a majority.
        drop(idle);
        put(&url, "after").await;
        assert!(metric(&url, "connections_refused_total").await >= 1);
        assert_eq!(leader_and_term(&cluster.urls).await, (leader, term));
    });
}

#[test]
fn an_oversized_peer_frame_from_an_unproven_sender_is_refused_from_its_first_bytes() {
    let cluster = start_nodes(1, impatient);
    rt().block_on(async {
        common::wait_for_leader(&cluster.urls, Duration::from_secs(30)).await;
        let url = &cluster.urls[0];
        let head =
            b"POST /v1/raft/stream HTTP/1.1\r\nhost: x\r\ncontent-length: 1073741824\r\n\r\n";
        // A length over any frame's limit: refused from the 4 length bytes.
        let huge = (1u32 << 30).to_le_bytes();
        let (status, text) = exchange(url, head, &huge, Duration::from_secs(30)).await;
        assert!(status.contains(" 413 "), "{text}");
        // 10 MiB, within an authenticated peer's limit but not a stranger's, whose first
        // message names another cluster: refused after its header, the rest never sent.
        let mut frame = (10u32 << 20).to_le_bytes().to_vec();
        let stranger = (1usize, 2u64, 1u64, keel_raft::ClusterId(0xdead_beef));
        frame.extend(postcard::to_allocvec(&stranger).expect("encode"));
        let (status, text) = exchange(url, head, &frame, Duration::from_secs(30)).await;
        assert!(status.contains(" 403 "), "{text}");
        // Bytes that are no message header at all: 400.
        let mut frame = (10u32 << 20).to_le_bytes().to_vec();
        frame.extend([0xff; 64]);
        let (status, text) = exchange(url, head, &frame, Duration::from_secs(30)).await;
        assert!(status.contains(" 400 "), "{text}");
        assert!(metric(url, "peer_frames_refused_total").await >= 2);
        // The one-shot batch endpoint: its declared length alone.
        let (status, text) = exchange(
            url,
            b"POST /v1/raft HTTP/1.1\r\nhost: x\r\ncontent-length: 1073741824\r\n\r\n",
            b"",
            Duration::from_secs(30),
        )
        .await;
        assert!(status.contains(" 413 "), "{text}");
    });
}

#[test]
fn oversized_heads_get_431_deep_json_400_and_declared_oversized_bodies_413_unread() {
    let cluster = start_nodes(1, impatient);
    rt().block_on(async {
        common::wait_for_leader(&cluster.urls, Duration::from_secs(30)).await;
        let url = &cluster.urls[0];
        let guard = Duration::from_secs(30);
        // One header over max_header_bytes (64 KiB).
        let big = format!(
            "GET /v1/status HTTP/1.1\r\nhost: x\r\nx-big: {}\r\n\r\n",
            "a".repeat(70 << 10)
        );
        let (status, text) = exchange(url, big.as_bytes(), b"", guard).await;
        assert!(status.contains(" 431 "), "{text}");
        // More header fields than allowed.
        let mut many = "GET /v1/status HTTP/1.1\r\nhost: x\r\n".to_string();
        for i in 0..200 {
            many.push_str(&format!("x-h{i}: v\r\n"));
        }
        many.push_str("\r\n");
        let (status, text) = exchange(url, many.as_bytes(), b"", guard).await;
        assert!(status.contains(" 431 "), "{text}");
        // JSON nested 20,000 deep, within the 64 KiB JSON limit (the endpoint's fixed shape
        // refuses it at the second level; serde_json's 128-level limit is the bound where a
        // shape does not, tests/fuzz.rs).
        let deep = format!("{}{}", "[".repeat(20_000), "]".repeat(20_000));
        let head = format!(
            "POST /v1/admin/members HTTP/1.1\r\nhost: x\r\ncontent-length: {}\r\nconnection: close\r\n\r\n",
            deep.len()
        );
        let (status, text) = exchange(url, head.as_bytes(), deep.as_bytes(), guard).await;
        assert!(status.contains(" 400 "), "{text}");
        // Deep objects in a field the endpoint does not know.
        let deep = format!(
            "{{\"id\": 2, \"url\": \"http://x\", \"extra\": {}1{}}}",
            "{\"a\":".repeat(5_000),
            "}".repeat(5_000)
        );
        let head = format!(
            "POST /v1/admin/members HTTP/1.1\r\nhost: x\r\ncontent-length: {}\r\nconnection: close\r\n\r\n",
            deep.len()
        );
        let (status, text) = exchange(url, head.as_bytes(), deep.as_bytes(), guard).await;
        assert!(status.contains(" 400 "), "{text}");
        // A declared body over max_body_bytes: 413 without sending a byte of it.
        let (status, text) = exchange(
            url,
            b"POST /v1/plugins/kv/query HTTP/1.1\r\nhost: x\r\ncontent-length: 1073741824\r\n\r\n",
            b"",
            guard,
        )
        .await;
        assert!(status.contains(" 413 "), "{text}");
        assert!(text.contains("max_body_bytes"), "{text}");
        // A JSON body over its 64 KiB limit, declared.
        let (status, text) = exchange(
            url,
            b"POST /v1/admin/members HTTP/1.1\r\nhost: x\r\ncontent-length: 1000000\r\n\r\n",
            b"",
            guard,
        )
        .await;
        assert!(status.contains(" 413 "), "{text}");
        // The node is fine.
        put(url, "still").await;
    });
}

/// A TLS node: half-open handshakes (a first byte, then nothing) are cut off after
/// `tls_handshake_timeout_ms` and counted, while a TLS client is served.
#[test]
fn half_open_tls_handshakes_are_cut_off_and_counted() {
    let dir = tempfile::tempdir().expect("tempdir");
    let plan = keel::dev::plan_with(1, dir.path(), true).expect("plan");
    let (mut cfg, path): (NodeConfig, PathBuf) = plan.into_iter().next().expect("one node");
    impatient(&mut cfg);
    std::fs::write(&path, serde_json::to_vec_pretty(&cfg).expect("json")).expect("config");
    let child = keel::dev::spawn(common::keel_exe(), &path)
        .expect("spawn")
        .0;
    let mut node = ProcessCluster {
        children: vec![child],
        configs: vec![path],
        urls: vec![cfg.url()],
        dir,
    };
    let ca = cfg.tls.as_ref().expect("TLS").ca.clone();
    let tls: Arc<Tls> = Tls::client_only(&ca).expect("the CA loads");
    let url = cfg.url();
    rt().block_on(async {
        let client = || {
            Client::new(vec![url.clone()])
                .with_tls(tls.clone())
                .with_deadline(Duration::from_secs(20))
        };
        let start = Instant::now();
        while client().get("/v1/status").await.is_err() {
            assert!(
                start.elapsed() < Duration::from_secs(30),
                "the TLS node never answered"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let mut half = Vec::new();
        for _ in 0..20 {
            let mut s = TcpStream::connect(addr(&url)).await.expect("connect");
            s.write_all(&[0x16, 0x03, 0x01])
                .await
                .expect("a record header");
            half.push(s);
        }
        let a = client().get("/v1/status").await.expect("served meanwhile");
        assert!(a.status.is_success());
        for (i, s) in half.iter_mut().enumerate() {
            assert!(
                closed_within(s, Duration::from_secs(30)).await,
                "half-open handshake {i} is still open"
            );
        }
        // Counted just after the connection is dropped: read until it shows.
        let start = Instant::now();
        loop {
            let a = client().get("/metrics").await.expect("metrics");
            let text = String::from_utf8_lossy(&a.body).into_owned();
            let n = text
                .lines()
                .find_map(|l| l.strip_prefix("keel_timeouts_total{phase=\"handshake\"} "))
                .and_then(|v| v.trim().parse::<f64>().ok())
                .unwrap_or(0.0);
            if n >= 20.0 {
                break;
            }
            assert!(start.elapsed() < Duration::from_secs(30), "{text}");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    });
    kill_all(&mut node.children);
}
