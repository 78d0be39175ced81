//! Transport security (issue #13) on real `keel serve` processes: a TLS cluster serves
//! commands; plaintext gets a clear answer; a certificate from another CA is refused at the
//! handshake; a certificate binds its node id; certificates rotate without a restart.
//!
//! Each test has its own throw-away CA (`keel::dev::plan_with(.., true)`), so the test's
//! clients carry their TLS setup (`Client::with_tls`) instead of the process-wide one.

use std::path::{Path, PathBuf};
use std::process::Child;
use std::sync::Arc;
use std::time::{Duration, Instant};

use keel::client::Client;
use keel::tls::{Tls, TlsFiles};
use keel_raft::{Message, MessageBody};
use rustls::pki_types::pem::PemObject;

mod common;
use common::{kill_all, rt};

struct Cluster {
    children: Vec<Child>,
    configs: Vec<keel::config::NodeConfig>,
    urls: Vec<String>,
    /// Trusts the cluster CA, presents no certificate: what the CLI is.
    client_tls: Arc<Tls>,
    dir: tempfile::TempDir,
}

impl Drop for Cluster {
    fn drop(&mut self) {
        kill_all(&mut self.children);
    }
}

/// This worktree's `keel`, copied aside once per test run: the target directory may be
/// shared with other checkouts, and another build's binary landing there mid-run would make
/// nodes started later a different program. A binary without `keel certs` is not this one:
/// fail loudly, not strangely.
fn exe(_dir: &Path) -> PathBuf {
    static COPY: std::sync::OnceLock<(tempfile::TempDir, PathBuf)> = std::sync::OnceLock::new();
    let (_, copy) = COPY.get_or_init(|| {
        let built = Path::new(env!("CARGO_BIN_EXE_keel"));
        let dir = tempfile::tempdir().expect("tempdir");
        let copy = dir.path().join("keel");
        std::fs::copy(built, &copy).expect("copying the keel binary");
        let ok = std::process::Command::new(&copy)
            .args(["certs", "--help"])
            .output()
            .is_ok_and(|o| o.status.success());
        assert!(ok, "{} has no `certs` command: rebuild", built.display());
        (dir, copy)
    });
    copy.clone()
}

fn start(n: usize) -> Cluster {
    let dir = tempfile::tempdir().expect("tempdir");
    let exe = exe(dir.path());
    let plan = keel::dev::plan_with(n, dir.path(), true).expect("plan");
    let (mut children, mut configs, mut urls) = (Vec::new(), Vec::new(), Vec::new());
    for (cfg, path) in plan {
        children.push(keel::dev::spawn(&exe, &path).expect("spawn").0);
        urls.push(cfg.url());
        configs.push(cfg);
    }
    let ca = configs[0].tls.as_ref().expect("a TLS plan").ca.clone();
    Cluster {
        children,
        configs,
        urls,
        client_tls: Tls::client_only(&ca).expect("the CA loads"),
        dir,
    }
}

fn client(url: &str, tls: &Arc<Tls>) -> Client {
    Client::new(vec![url.to_string()])
        .with_tls(tls.clone())
        .with_deadline(Duration::from_secs(5))
}

async fn status(url: &str, tls: &Arc<Tls>) -> Option<serde_json::Value> {
    let a = client(url, tls).get("/v1/status").await.ok()?;
    serde_json::from_slice(&a.body).ok()
}

/// `(leader id, term)` once a node leads with the kv plugin active.
async fn wait_for_leader(c: &Cluster) -> (u64, u64) {
    let start = Instant::now();
    while start.elapsed() < Duration::from_secs(30) {
        for url in &c.urls {
            if let Some(s) = status(url, &c.client_tls).await
                && s["role"] == "Leader"
                && s["plugins"]
                    .as_array()
                    .is_some_and(|p| p.iter().any(|n| n == "kv"))
            {
                return (
                    s["node_id"].as_u64().unwrap_or(0),
                    s["term"].as_u64().unwrap_or(0),
                );
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("no TLS leader within 30 s");
}

/// A counter from a node's `/metrics` (`keel_NAME_total`).
async fn counter(url: &str, tls: &Arc<Tls>, name: &str) -> u64 {
    let a = client(url, tls).get("/metrics").await.expect("metrics");
    let text = String::from_utf8_lossy(&a.body).into_owned();
    let line = format!("keel_{name}_total ");
    text.lines()
        .find_map(|l| l.strip_prefix(&line)?.trim().parse().ok())
        .unwrap_or_else(|| panic!("no {line} in /metrics"))
}

async fn put(c: &mut Client, key: &str, value: &str) -> anyhow::Result<()> {
    let body = serde_json::json!({"op": "put", "key": key, "value": value}).to_string();
    let a = c.submit("kv", body.into_bytes()).await?;
    anyhow::ensure!(
        a.status.is_success(),
        "{} {}",
        a.status,
        String::from_utf8_lossy(&a.body)
    );
    Ok(())
}

#[test]
fn a_tls_cluster_serves_commands_and_a_plaintext_client_gets_a_clear_answer() {
    let cluster = start(3);
    let rt = rt();
    rt.block_on(async {
        wait_for_leader(&cluster).await;
        let mut c = Client::new(cluster.urls.clone()).with_tls(cluster.client_tls.clone());
        put(&mut c, "k", "over tls").await.expect("a put over TLS");
        let got = c
            .query("kv", br#"{"op":"get","key":"k"}"#.to_vec(), "linearizable")
            .await
            .expect("a get");
        assert!(String::from_utf8_lossy(&got.body).contains("over tls"));

        // The dashboard's fan-out reaches every member over TLS, as a peer.
        let view = client(&cluster.urls[0], &cluster.client_tls)
            .get("/v1/cluster")
            .await
            .expect("/v1/cluster");
        let view: serde_json::Value = serde_json::from_slice(&view.body).expect("json");
        let members = view["members"].as_array().cloned().unwrap_or_default();
        assert_eq!(members.len(), 3, "{view}");
        assert!(members.iter().all(|m| m["healthy"] == true), "{view}");

        // Plain HTTP to a TLS port: an answer that says what to do, at once.
        let plain = cluster.urls[0].replacen("https://", "http://", 1);
        let asked = Instant::now();
        let a = Client::new(vec![plain])
            .with_deadline(Duration::from_secs(5))
            .get("/v1/status")
            .await
            .expect("plaintext gets an answer, not a hang or a reset");
        assert_eq!(a.status, hyper::StatusCode::BAD_REQUEST);
        let body = String::from_utf8_lossy(&a.body);
        assert!(body.contains("TLS") && body.contains("https://"), "{body}");
        assert!(
            asked.elapsed() < Duration::from_secs(2),
            "answered promptly"
        );

        // A client that does not know the CA is refused by its own check, with a reason.
        let unknown = tempfile::tempdir().expect("tempdir");
        keel::certs::init(unknown.path(), "elsewhere").expect("a CA");
        let stranger = Tls::client_only(&keel::certs::ca_path(unknown.path())).expect("CA");
        let asked = Instant::now();
        let e = Client::new(vec![cluster.urls[0].clone()])
            .with_tls(stranger)
            .with_deadline(Duration::from_secs(20))
            .get("/v1/status")
            .await
            .err()
            .expect("a server from an unknown CA is refused");
        assert!(format!("{e:#}").contains("UnknownIssuer"), "{e:#}");
        assert!(
            asked.elapsed() < Duration::from_secs(2),
            "a certificate refusal is not retried until the deadline"
        );
    });
}

#[test]
fn a_node_with_a_certificate_from_another_ca_is_refused_and_the_cluster_keeps_its_leader() {
    let mut cluster = start(3);
    let rt = rt();
    let (leader, term) = rt.block_on(wait_for_leader(&cluster));
    let follower = (1..=3u64).find(|&id| id != leader).expect("a follower");
    let f = (follower - 1) as usize;
    let refused_before: Vec<u64> = rt.block_on(async {
        let mut out = Vec::new();
        for url in &cluster.urls {
            out.push(counter(url, &cluster.client_tls, "tls_handshakes_refused").await);
        }
        out
    });

    // An impostor of the follower: same id, cluster and peers, on its own port and data,
    // with a certificate from another CA. It trusts the real CA too, so the handshake
    // fails on the cluster's side, for its certificate.
    let rogue_dir = cluster.dir.path().join("rogue");
    keel::certs::init(&rogue_dir, "rogue").expect("a rogue CA");
    let files = keel::certs::node(&rogue_dir, follower, &["127.0.0.1".into()]).expect("cert");
    let both = rogue_dir.join("both-cas.pem");
    let real_ca = cluster.configs[0].tls.as_ref().expect("tls").ca.clone();
    let mut pem = std::fs::read(&real_ca).expect("CA");
    pem.extend(std::fs::read(&files.ca).expect("rogue CA"));
    std::fs::write(&both, pem).expect("write");
    let free = std::net::TcpListener::bind("127.0.0.1:0").expect("port");
    let listen = free.local_addr().expect("addr");
    drop(free);
    let mut rogue = cluster.configs[f].clone();
    rogue.listen = listen;
    rogue.peers.insert(follower, format!("https://{listen}"));
    rogue.data_dir = rogue_dir.join("data");
    rogue.election_ticks = 3; // campaigns early and often
    rogue.heartbeat_ticks = 1;
    rogue.tls = Some(TlsFiles { ca: both, ..files });
    let path = rogue_dir.join("config.json");
    std::fs::write(&path, serde_json::to_vec_pretty(&rogue).expect("json")).expect("config");
    cluster
        .children
        .push(keel::dev::spawn(&exe(&rogue_dir), &path).expect("spawn").0);

    rt.block_on(async {
        tokio::time::sleep(Duration::from_secs(3)).await;
        let mut refused = 0;
        for (url, before) in cluster.urls.iter().zip(&refused_before) {
            refused += counter(url, &cluster.client_tls, "tls_handshakes_refused").await - before;
        }
        assert!(
            refused > 0,
            "the impostor's handshakes are refused and counted"
        );
        let s = status(&cluster.urls[(leader - 1) as usize], &cluster.client_tls)
            .await
            .expect("the leader answers");
        assert_eq!(s["role"], "Leader", "{s}");
        assert_eq!(
            s["term"].as_u64(),
            Some(term),
            "no election was forced: {s}"
        );
        let mut c = Client::new(cluster.urls.clone()).with_tls(cluster.client_tls.clone());
        put(&mut c, "still", "serving")
            .await
            .expect("the cluster serves");
    });
}

#[test]
fn a_node_presenting_node_3s_certificate_but_sending_as_node_2_is_refused_and_counted() {
    let cluster = start(3);
    let rt = rt();
    let (leader, term) = rt.block_on(wait_for_leader(&cluster));
    let leader_url = cluster.urls[(leader - 1) as usize].clone();
    let node3 = Tls::node(cluster.configs[2].tls.as_ref().expect("tls")).expect("node 3's");
    let cluster_id = cluster.configs[0].cluster().expect("uuid");
    // "Node 2" (or 1, if 2 leads) claims a higher term: accepted, it would depose the
    // leader (any message from a higher term does, §5.1).
    let forged_from = if leader == 2 { 1 } else { 2 };
    let forged = vec![Message {
        from: forged_from,
        to: leader,
        cluster: cluster_id,
        term: term + 5,
        body: MessageBody::AppendEntriesResponse {
            success: false,
            index: 0,
            hint_term: 0,
            hint_index: 0,
        },
    }];
    let forged = postcard::to_allocvec(&forged).expect("encode");
    rt.block_on(async {
        let before = counter(&leader_url, &cluster.client_tls, "peer_identity_refused").await;
        let a = client(&leader_url, &node3)
            .request(hyper::Method::POST, "/v1/raft", forged.clone())
            .await
            .expect("an answer");
        assert_eq!(a.status, hyper::StatusCode::FORBIDDEN);
        let body = String::from_utf8_lossy(&a.body);
        assert!(body.contains("certificate names node 3"), "{body}");

        // No certificate at all: refused before the body is read.
        let a = client(&leader_url, &cluster.client_tls)
            .request(hyper::Method::POST, "/v1/raft", forged.clone())
            .await
            .expect("an answer");
        assert_eq!(a.status, hyper::StatusCode::FORBIDDEN);
        // Blob pushes too: a client without a node certificate cannot place a blob.
        let a = client(&leader_url, &cluster.client_tls)
            .request(
                hyper::Method::PUT,
                &format!("/v1/blobs/{}", "ab".repeat(32)),
                b"x".to_vec(),
            )
            .await
            .expect("an answer");
        assert_eq!(a.status, hyper::StatusCode::FORBIDDEN);
        // Node 3's certificate speaking as node 3 is a peer like any other.
        let a = client(&leader_url, &node3)
            .request(
                hyper::Method::POST,
                "/v1/raft",
                postcard::to_allocvec(&Vec::<Message>::new()).expect("encode"),
            )
            .await
            .expect("an answer");
        assert_eq!(a.status, hyper::StatusCode::NO_CONTENT);

        let after = counter(&leader_url, &cluster.client_tls, "peer_identity_refused").await;
        assert_eq!(after - before, 3, "every refusal is counted");
        tokio::time::sleep(Duration::from_millis(500)).await;
        let s = status(&leader_url, &cluster.client_tls)
            .await
            .expect("status");
        assert_eq!(
            s["role"], "Leader",
            "the forged term did not depose it: {s}"
        );
        assert_eq!(s["term"].as_u64(), Some(term), "{s}");
    });
}

#[test]
fn certificates_rotate_under_light_load_without_a_restart_or_a_failed_request() {
    let cluster = start(3);
    let rt = rt();
    rt.block_on(wait_for_leader(&cluster));
    let certs = cluster.configs[0]
        .tls
        .as_ref()
        .and_then(|t| t.cert.parent().map(Path::to_path_buf))
        .expect("certs dir");
    let pids: Vec<u32> = cluster.children.iter().map(Child::id).collect();
    rt.block_on(async {
        // Light load: a put every 20 ms, each from a new client (so each handshakes anew
        // and meets whatever certificate is in force).
        let (urls, tls) = (cluster.urls.clone(), cluster.client_tls.clone());
        let load = tokio::spawn(async move {
            let mut done = 0u32;
            let until = Instant::now() + Duration::from_secs(6);
            while Instant::now() < until {
                let mut c = Client::new(urls.clone()).with_tls(tls.clone());
                put(&mut c, &format!("k{done}"), "v")
                    .await
                    .unwrap_or_else(|e| panic!("put {done} failed during rotation: {e:#}"));
                done += 1;
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            done
        });
        tokio::time::sleep(Duration::from_secs(1)).await;
        let old: Vec<Vec<u8>> = (1..=3).map(|id| served_cert(&cluster, id)).collect();
        for id in 1..=3u64 {
            keel::certs::node(&certs, id, &["127.0.0.1".into(), "localhost".into()])
                .expect("a new certificate in place");
        }
        // Each node serves its new certificate from a new handshake on.
        for id in 1..=3u64 {
            let new = std::fs::read(certs.join(format!("node-{id}.pem"))).expect("pem");
            let new = rustls::pki_types::CertificateDer::from_pem_slice(&new).expect("pem");
            let start = Instant::now();
            loop {
                let served = served_cert(&cluster, id);
                if served == new.as_ref() {
                    break;
                }
                assert_ne!(served, Vec::<u8>::new());
                assert!(
                    start.elapsed() < Duration::from_secs(5),
                    "node {id} still serves its old certificate"
                );
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            assert_ne!(old[(id - 1) as usize], new.as_ref());
            // And takes the new certificate as a peer's.
            let tls = Tls::node(&keel::certs::node_files(&certs, id)).expect("new files load");
            let a = client(&cluster.urls[0], &tls)
                .request(
                    hyper::Method::POST,
                    "/v1/raft",
                    postcard::to_allocvec(&Vec::<Message>::new()).expect("encode"),
                )
                .await
                .expect("answer");
            assert_eq!(a.status, hyper::StatusCode::NO_CONTENT);
        }
        let puts = load.await.expect("no put failed");
        assert!(puts > 20, "the load ran ({puts} puts)");
    });
    let now: Vec<u32> = cluster.children.iter().map(Child::id).collect();
    assert_eq!(pids, now, "no node restarted");
}

/// The leaf certificate node `id` presents to a new handshake (DER), via a bare rustls
/// client that trusts the cluster CA.
fn served_cert(cluster: &Cluster, id: u64) -> Vec<u8> {
    let ca = &cluster.configs[0].tls.as_ref().expect("tls").ca;
    let mut roots = rustls::RootCertStore::empty();
    for c in rustls::pki_types::CertificateDer::pem_file_iter(ca).expect("ca") {
        roots.add(c.expect("pem")).expect("root");
    }
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .expect("versions")
    .with_root_certificates(roots)
    .with_no_client_auth();
    let addr = cluster.configs[(id - 1) as usize].listen;
    let name = rustls::pki_types::ServerName::from(addr.ip());
    let mut conn = rustls::ClientConnection::new(Arc::new(config), name).expect("conn");
    let Ok(mut tcp) = std::net::TcpStream::connect(addr) else {
        return Vec::new();
    };
    let _ = tcp.set_read_timeout(Some(Duration::from_secs(2)));
    while conn.is_handshaking() {
        if conn.complete_io(&mut tcp).is_err() {
            return Vec::new();
        }
    }
    conn.peer_certificates()
        .and_then(|c| c.first())
        .map(|c| c.as_ref().to_vec())
        .unwrap_or_default()
}

#[test]
fn an_insecure_node_says_so_in_its_status() {
    let dir = tempfile::tempdir().expect("tempdir");
    let exe = exe(dir.path());
    let plan = keel::dev::plan(1, dir.path()).expect("plan");
    let (mut cfg, path) = plan.into_iter().next().expect("one node");
    cfg.insecure = true;
    std::fs::write(&path, serde_json::to_vec_pretty(&cfg).expect("json")).expect("config");
    let mut child = keel::dev::spawn(&exe, &path).expect("spawn").0;
    let rt = rt();
    let s = rt.block_on(async {
        let start = Instant::now();
        loop {
            if let Some(s) = common::status(&cfg.url()).await {
                break s;
            }
            assert!(
                start.elapsed() < Duration::from_secs(20),
                "the node answers"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    });
    kill_all([&mut child]);
    assert_eq!(s["insecure"], true, "{s}");
    let log = std::fs::read_to_string(path.with_file_name("keel.log")).unwrap_or_default();
    assert!(log.contains("WITHOUT TLS"), "warned at start: {log}");

    // Beyond loopback without TLS or "insecure", `keel serve` refuses to start.
    cfg.insecure = false;
    cfg.listen = "0.0.0.0:0".parse().expect("addr");
    std::fs::write(&path, serde_json::to_vec_pretty(&cfg).expect("json")).expect("config");
    let out = std::process::Command::new(&exe)
        .args(["serve", "--config"])
        .arg(&path)
        .output()
        .expect("runs");
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("without TLS") && err.contains("insecure"),
        "{err}"
    );
}
