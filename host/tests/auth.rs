//! Client authentication and roles (issue #13) on real `keel serve` processes: without a
//! token 401; a query-only token gets 403 for a command; a deploy needs `deploy`; `keel
//! member add` needs `admin`; a revoked token stops working on every node; a session
//! belongs to the user who opened it; nodes still read each other's status and blobs.

use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use hyper::{Method, StatusCode};
use keel::client::{Answer, Client};

mod common;
use common::{rt, start_nodes, wait_for_leader};

/// One cluster at a time: timing bounds assume the machine (2 cores) is not running others.
static ONE_CLUSTER_AT_A_TIME: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn client(urls: &[String], token: Option<&str>) -> Client {
    let c = Client::new(urls.to_vec()).with_deadline(Duration::from_secs(20));
    match token {
        Some(t) => c.with_token(t),
        None => c,
    }
}

async fn call(c: &mut Client, method: Method, path: &str, body: &str) -> Answer {
    c.request(method, path, body.as_bytes().to_vec())
        .await
        .unwrap_or_else(|e| panic!("{path}: {e:#}"))
}

fn json(a: &Answer) -> serde_json::Value {
    serde_json::from_slice(&a.body).unwrap_or_else(|_| {
        panic!(
            "HTTP {}: not JSON: {}",
            a.status,
            String::from_utf8_lossy(&a.body)
        )
    })
}

fn put(key: &str) -> String {
    serde_json::json!({"op": "put", "key": key, "value": "v"}).to_string()
}

const GET: &str = r#"{"op":"get","key":"k"}"#;

/// Turning authentication on is an entry: each node enforces it from the moment it applies
/// it. Waits (bounded) until every node refuses a status read without a token.
async fn every_node_refuses_anonymous(
    urls: &[String],
    tls: Option<&std::sync::Arc<keel::tls::Tls>>,
) {
    let start = Instant::now();
    for url in urls {
        loop {
            let mut one = client(std::slice::from_ref(url), None);
            if let Some(tls) = tls {
                one = one.with_tls(tls.clone());
            }
            let a = call(&mut one, Method::GET, "/v1/status", "").await;
            if a.status == StatusCode::UNAUTHORIZED {
                break;
            }
            assert!(
                start.elapsed() < Duration::from_secs(10),
                "{url} still open"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

/// An admin step through `root`: it must succeed.
async fn admin(c: &mut Client, method: Method, path: &str, body: &str) -> serde_json::Value {
    let a = call(c, method, path, body).await;
    assert_eq!(
        a.status,
        StatusCode::OK,
        "{path}: {}",
        String::from_utf8_lossy(&a.body)
    );
    json(&a)
}

#[test]
fn tokens_and_roles_are_enforced_on_every_node() {
    let _one = ONE_CLUSTER_AT_A_TIME
        .lock()
        .unwrap_or_else(|e| e.into_inner());
    let cluster = start_nodes(3, |_| {});
    let urls = cluster.urls.clone();
    rt().block_on(async {
        wait_for_leader(&urls, Duration::from_secs(30)).await;
        let mut anyone = client(&urls, None);
        // Without users, authentication is off.
        let a = call(
            &mut anyone,
            Method::POST,
            "/v1/plugins/kv/commands",
            &put("k"),
        )
        .await;
        assert_eq!(a.status, StatusCode::OK);

        let init = admin(&mut anyone, Method::POST, "/v1/auth/init", "").await;
        let root = init["token"].as_str().expect("a token").to_string();
        let again = call(&mut anyone, Method::POST, "/v1/auth/init", "").await;
        assert_eq!(again.status, StatusCode::CONFLICT, "init is once");
        every_node_refuses_anonymous(&urls, None).await;

        // Without a token: 401, naming what is needed; /healthz stays open.
        let a = call(
            &mut anyone,
            Method::POST,
            "/v1/plugins/kv/commands",
            &put("k"),
        )
        .await;
        assert_eq!(a.status, StatusCode::UNAUTHORIZED);
        assert_eq!(json(&a)["needs"], "command:kv");
        let forged = "keel_0123456789ab_00";
        let a = call(
            &mut client(&urls, Some(forged)),
            Method::GET,
            "/v1/status",
            "",
        )
        .await;
        assert_eq!(
            a.status,
            StatusCode::UNAUTHORIZED,
            "a token the cluster never issued"
        );
        let a = call(&mut anyone, Method::GET, "/healthz", "").await;
        assert_eq!(a.status, StatusCode::OK);

        let mut r = client(&urls, Some(&root));
        admin(
            &mut r,
            Method::PUT,
            "/v1/auth/roles/reader/grants/query:kv",
            "",
        )
        .await;
        let body = r#"{"user": "alice", "roles": ["reader"]}"#;
        admin(&mut r, Method::POST, "/v1/auth/users", body).await;
        let made = admin(
            &mut r,
            Method::POST,
            "/v1/auth/tokens",
            r#"{"user": "alice"}"#,
        )
        .await;
        let alice = made["token"].as_str().expect("a token").to_string();
        let alice_id = made["token_id"].as_str().expect("an id").to_string();

        // A query-only token: queries yes; a command, a deploy, a member change: 403.
        let mut al = client(&urls, Some(&alice));
        let a = call(&mut al, Method::POST, "/v1/plugins/kv/query", GET).await;
        assert_eq!(a.status, StatusCode::OK);
        let a = call(&mut al, Method::POST, "/v1/plugins/kv/commands", &put("k")).await;
        assert_eq!(a.status, StatusCode::FORBIDDEN);
        assert_eq!(json(&a)["missing"], "command:kv");
        let a = call(&mut al, Method::PUT, "/v1/plugins/kv2", "not wasm").await;
        assert_eq!(a.status, StatusCode::FORBIDDEN);
        assert_eq!(json(&a)["missing"], "deploy:kv2");
        let member = r#"{"id": 9, "url": "http://127.0.0.1:9"}"#;
        let a = call(&mut al, Method::POST, "/v1/admin/members", member).await;
        assert_eq!(a.status, StatusCode::FORBIDDEN);
        assert_eq!(json(&a)["missing"], "admin");

        // With `deploy:kv2`, the same user deploys kv2.
        admin(
            &mut r,
            Method::PUT,
            "/v1/auth/roles/deployer/grants/deploy:kv2",
            "",
        )
        .await;
        admin(
            &mut r,
            Method::PUT,
            "/v1/auth/users/alice/roles/deployer",
            "",
        )
        .await;
        let wasm = keel::state::BUILTIN_KV.to_vec();
        let a = al.deploy("kv2", wasm, &[]).await.expect("deploy");
        assert_eq!(
            a.status,
            StatusCode::OK,
            "{}",
            String::from_utf8_lossy(&a.body)
        );

        // Nodes still read each other's status with authentication on (the dashboard's
        // fan-out, blob GC) and blobs by hash, as nodes; a client without a token cannot.
        let view = admin(&mut r, Method::GET, "/v1/cluster", "").await;
        let members = view["members"].as_array().expect("members");
        assert_eq!(members.len(), 3);
        for m in members {
            assert_eq!(m["healthy"], true, "a member's status was refused: {m}");
        }
        let cluster_id = view["cluster_id"].as_str().expect("cluster id").to_string();
        let hash = keel::blobs::hex(&keel::blobs::sha256(keel::state::BUILTIN_KV));
        let path = format!("/v1/blobs/{hash}");
        let a = call(&mut anyone, Method::HEAD, &path, "").await;
        assert_eq!(a.status, StatusCode::UNAUTHORIZED);
        let mut node = client(&urls[2..], None).with_header("keel-cluster", cluster_id);
        let a = call(&mut node, Method::HEAD, &path, "").await;
        assert_eq!(a.status, StatusCode::OK, "a node reads a blob by hash");

        // Sessions belong to whoever opened them.
        admin(
            &mut r,
            Method::PUT,
            "/v1/auth/roles/writer/grants/command:kv",
            "",
        )
        .await;
        admin(
            &mut r,
            Method::POST,
            "/v1/auth/users",
            r#"{"user": "bob", "roles": ["writer"]}"#,
        )
        .await;
        let bob_token = admin(
            &mut r,
            Method::POST,
            "/v1/auth/tokens",
            r#"{"user": "bob"}"#,
        )
        .await;
        let bob_token = bob_token["token"].as_str().expect("token").to_string();
        let mut bob = client(&urls, Some(&bob_token));
        let a = bob
            .submit("kv", put("b").into_bytes())
            .await
            .expect("submit");
        assert_eq!(a.status, StatusCode::OK, "bob writes in his own session");
        let (session, serial) = bob.session_state().expect("a session");
        let mut mallory = client(&urls, Some(&root)).with_session(session, serial);
        let a = mallory
            .submit("kv", put("m").into_bytes())
            .await
            .expect("submit");
        assert_eq!(a.status, StatusCode::FORBIDDEN, "another user's session");

        // A revoked token stops working on every node, at once.
        for url in &urls {
            let mut one = client(std::slice::from_ref(url), Some(&alice));
            let a = call(&mut one, Method::POST, "/v1/plugins/kv/query", GET).await;
            assert_eq!(a.status, StatusCode::OK, "{url} before the revocation");
        }
        let path = format!("/v1/auth/tokens/{alice_id}");
        admin(&mut r, Method::DELETE, &path, "").await;
        for url in &urls {
            let mut one = client(std::slice::from_ref(url), Some(&alice));
            let a = call(&mut one, Method::POST, "/v1/plugins/kv/query", GET).await;
            assert_eq!(
                a.status,
                StatusCode::UNAUTHORIZED,
                "{url} after the revocation"
            );
        }

        // A token with a TTL works on every node until it expires, then on none, with no
        // entry in between.
        let made = admin(
            &mut r,
            Method::POST,
            "/v1/auth/tokens",
            r#"{"user": "bob", "label": "brief", "ttl_ms": 8000}"#,
        )
        .await;
        let brief = made["token"].as_str().expect("token").to_string();
        let expires = made["expires_ms"].as_u64().expect("expires_ms");
        for url in &urls {
            let mut one = client(std::slice::from_ref(url), Some(&brief));
            let a = call(&mut one, Method::POST, "/v1/sessions", "").await;
            assert_eq!(a.status, StatusCode::OK, "{url} before expiry");
        }
        let now_ms = || {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_millis() as u64)
        };
        while now_ms() <= expires {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        for url in &urls {
            let mut one = client(std::slice::from_ref(url), Some(&brief));
            let a = call(&mut one, Method::POST, "/v1/sessions", "").await;
            assert_eq!(a.status, StatusCode::UNAUTHORIZED, "{url} after expiry");
            assert!(
                json(&a)["detail"]
                    .as_str()
                    .unwrap_or("")
                    .contains("expired"),
                "{url}: {}",
                String::from_utf8_lossy(&a.body)
            );
        }
    });
}

/// `keel ARGS` with `env`, bounded by the CLI's own `--timeout` and a kill after 60 s.
fn keel(cwd: &Path, env: &[(&str, &str)], args: &[&str]) -> Output {
    let mut cmd = Command::new(common::keel_exe());
    cmd.args(args)
        .args(["--timeout", "20"])
        .current_dir(cwd)
        .env_remove("KEEL_ENDPOINTS")
        .env_remove("KEEL_TOKEN")
        .env_remove("KEEL_TOKEN_FILE")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    for (k, v) in env {
        cmd.env(k, v);
    }
    let child = cmd.spawn().expect("spawn keel");
    let pid = child.id();
    let watchdog = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_secs(60));
        let _ = Command::new("kill").args(["-9", &pid.to_string()]).status();
    });
    let out = child.wait_with_output().expect("keel output");
    drop(watchdog);
    out
}

fn expect(o: &Output, code: i32) -> String {
    let (out, err) = (
        String::from_utf8_lossy(&o.stdout).into_owned(),
        String::from_utf8_lossy(&o.stderr).into_owned(),
    );
    assert_eq!(o.status.code(), Some(code), "stdout: {out}\nstderr: {err}");
    format!("{out}{err}")
}

#[test]
fn the_cli_bootstraps_with_a_token_file_and_needs_admin_for_members() {
    let _one = ONE_CLUSTER_AT_A_TIME
        .lock()
        .unwrap_or_else(|e| e.into_inner());
    let dir = tempfile::tempdir().expect("tempdir");
    let plan = keel::dev::plan(1, dir.path()).expect("plan");
    let (cfg, path) = &plan[0];
    let token_file = dir.path().join("admin.token");
    let flag = token_file.to_string_lossy().into_owned();
    let (child, _) = keel::dev::spawn_with(
        common::keel_exe(),
        path,
        &["--init-admin-token-file", flag.as_str()],
    )
    .expect("spawn");
    // Killed even if the test fails: a node left running would hold what the test process
    // held (the build lock among them).
    let _node = Killed(child);
    let url = cfg.url();
    let cwd = dir.path();
    let env = [("KEEL_ENDPOINTS", url.as_str())];
    // The node writes the token file and turns authentication on once it leads.
    let start = Instant::now();
    loop {
        let o = keel(cwd, &env, &["put", "k", "v"]);
        if o.status.code() == Some(4) && token_file.exists() {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "auth never came on"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    let mode = std::os::unix::fs::PermissionsExt::mode(
        &std::fs::metadata(&token_file)
            .expect("token file")
            .permissions(),
    );
    assert_eq!(mode & 0o077, 0, "the token file is the owner's only");
    let out = expect(&keel(cwd, &env, &["put", "k", "v"]), 4);
    assert!(out.contains("unauthenticated"), "{out}");
    let root = ["--token-file", flag.as_str()];
    expect(
        &keel(cwd, &env, &[&["put", "k", "v"][..], &root].concat()),
        0,
    );
    let admin = |args: &[&str]| expect(&keel(cwd, &env, &[args, &root].concat()), 0);
    admin(&["role", "grant", "reader", "query", "kv"]);
    admin(&["user", "add", "carol", "--role", "reader"]);
    let carol_file = dir.path().join("carol.token");
    let carol_path = carol_file.to_string_lossy().into_owned();
    admin(&["token", "create", "carol", "--out", &carol_path]);
    let carol = std::fs::read_to_string(&carol_file).expect("carol's token");
    let carol_env = [
        ("KEEL_ENDPOINTS", url.as_str()),
        ("KEEL_TOKEN", carol.trim()),
    ];
    expect(&keel(cwd, &carol_env, &["get", "k"]), 0);
    let out = expect(&keel(cwd, &carol_env, &["put", "k", "w"]), 4);
    assert!(
        out.contains("forbidden") && out.contains("command:"),
        "{out}"
    );
    let out = expect(
        &keel(
            cwd,
            &carol_env,
            &["member", "add", "9", "http://127.0.0.1:9"],
        ),
        4,
    );
    assert!(out.contains("admin"), "{out}");
    let who = expect(&keel(cwd, &carol_env, &["auth", "whoami"]), 0);
    assert!(who.contains("carol"), "{who}");
    // The token never shows in the table.
    let shown = admin(&["auth", "show"]);
    assert!(
        shown.contains("carol") && !shown.contains(carol.trim()),
        "{shown}"
    );
}

/// A node process, killed and reaped when dropped.
struct Killed(std::process::Child);

impl Drop for Killed {
    fn drop(&mut self) {
        common::kill_all([&mut self.0]);
    }
}

#[test]
fn keel_dev_auth_writes_roots_token_and_the_cli_finds_it() {
    let _one = ONE_CLUSTER_AT_A_TIME
        .lock()
        .unwrap_or_else(|e| e.into_inner());
    let dir = tempfile::tempdir().expect("tempdir");
    let cwd = dir.path();
    let dev = Command::new(common::keel_exe())
        .args(["dev", "--auth", "--nodes", "1"])
        .current_dir(cwd)
        .env_remove("KEEL_ENDPOINTS")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("keel dev");
    let _dev = common::DevStop(dev);
    let file = cwd.join("keel-dev/cluster.json");
    let start = Instant::now();
    let token_file = loop {
        let cluster: Option<serde_json::Value> = std::fs::read(&file)
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok());
        if let Some(path) = cluster
            .as_ref()
            .and_then(|c| c["admin_token_file"].as_str())
        {
            break std::path::PathBuf::from(path);
        }
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "no admin_token_file"
        );
        std::thread::sleep(Duration::from_millis(100));
    };
    assert!(token_file.exists());
    // From the cluster's directory the CLI presents root's token by itself …
    expect(&keel(cwd, &[], &["put", "k", "v"]), 0);
    expect(&keel(cwd, &[], &["status"]), 0);
    // … and a token of its own replaces it: one the cluster never issued is refused.
    let out = expect(
        &keel(
            cwd,
            &[("KEEL_TOKEN", "keel_0123456789ab_00")],
            &["get", "k"],
        ),
        4,
    );
    assert!(out.contains("unauthenticated"), "{out}");
}

#[test]
fn over_tls_nodes_read_each_other_by_certificate_with_auth_on() {
    let _one = ONE_CLUSTER_AT_A_TIME
        .lock()
        .unwrap_or_else(|e| e.into_inner());
    let dir = tempfile::tempdir().expect("tempdir");
    let plan = keel::dev::plan_with(3, dir.path(), true).expect("plan");
    let mut nodes = Vec::new();
    let mut urls = Vec::new();
    for (cfg, path) in &plan {
        nodes.push(Killed(
            keel::dev::spawn(common::keel_exe(), path).expect("spawn").0,
        ));
        urls.push(cfg.url());
    }
    let ca = plan[0].0.tls.as_ref().expect("TLS").ca.clone();
    let tls = keel::tls::Tls::client_only(&ca).expect("CA");
    let tls_client = |token: Option<&str>| client(&urls, token).with_tls(tls.clone());
    rt().block_on(async {
        let mut anyone = tls_client(None);
        let start = Instant::now();
        let root = loop {
            let a = call(&mut anyone, Method::POST, "/v1/auth/init", "").await;
            if a.status == StatusCode::OK {
                break json(&a)["token"].as_str().expect("token").to_string();
            }
            assert!(
                start.elapsed() < Duration::from_secs(30),
                "init: {}",
                a.status
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        };
        every_node_refuses_anonymous(&urls, Some(&tls)).await;
        // The node answering fans out to the others with its node certificate.
        let mut r = tls_client(Some(&root));
        let start = Instant::now();
        loop {
            let view = admin(&mut r, Method::GET, "/v1/cluster", "").await;
            let members = view["members"].as_array().cloned().unwrap_or_default();
            if members.len() == 3 && members.iter().all(|m| m["healthy"] == true) {
                break;
            }
            assert!(start.elapsed() < Duration::from_secs(30), "{view}");
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        let a = r.submit("kv", put("k").into_bytes()).await.expect("submit");
        assert_eq!(a.status, StatusCode::OK);
    });
    drop(nodes);
}
