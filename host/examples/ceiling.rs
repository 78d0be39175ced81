//! The benchmark's ceiling: what this machine serves for the same load with no consensus at
//! all. One process, the same HTTP stack as Keel (tokio, hyper HTTP/1.1), the same paths and
//! JSON bodies as the kv plugin's; each put goes into a `HashMap` and, with `--fsync`, into an
//! append-only file that a dedicated thread group-commits (one `fdatasync` for everything
//! that queued while the last one ran) before the put is answered.
//!
//! No replication, no log index, no plugin, no B-tree: any 3-replica system on the same cores
//! does strictly more per put. `bench/keel-vs-etcd.sh` runs it beside Keel and etcd so the
//! ratios come with the bound they live under.
//!
//!     cargo run --release -p keel --example ceiling -- --listen 127.0.0.1:7090 --dir /tmp/c --fsync

use std::collections::HashMap;
use std::io::Write as _;
use std::net::SocketAddr;
use std::sync::mpsc as sync_mpsc;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::sync::oneshot;

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(serde::Deserialize)]
struct Op {
    op: String,
    key: String,
    #[serde(default)]
    value: Option<String>,
}

struct State {
    map: Mutex<HashMap<String, String>>,
    /// Puts waiting for the group commit: the record and who to answer.
    log: Option<sync_mpsc::Sender<(Vec<u8>, oneshot::Sender<()>)>>,
}

fn main() -> anyhow::Result<()> {
    let mut listen: SocketAddr = "127.0.0.1:7090".parse()?;
    let mut dir = std::env::temp_dir().join("keel-ceiling");
    let mut fsync = false;
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        match a.as_str() {
            "--listen" => listen = args.next().unwrap_or_default().parse()?,
            "--dir" => dir = args.next().unwrap_or_default().into(),
            "--fsync" => fsync = true,
            other => anyhow::bail!("unknown argument {other:?} (--listen ADDR --dir D --fsync)"),
        }
    }
    let log = if fsync {
        std::fs::create_dir_all(&dir)?;
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(dir.join("ceiling.log"))?;
        let (tx, rx) = sync_mpsc::channel();
        std::thread::spawn(move || group_commit(file, &rx));
        Some(tx)
    } else {
        None
    };
    let state = Arc::new(State {
        map: Mutex::new(HashMap::new()),
        log,
    });
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    rt.block_on(async move {
        let listener = tokio::net::TcpListener::bind(listen).await?;
        println!("ceiling listening on http://{listen} (fsync: {fsync})");
        loop {
            let (stream, _) = listener.accept().await?;
            let _ = stream.set_nodelay(true);
            let state = state.clone();
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(move |req| handle(state.clone(), req));
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), svc)
                    .await;
            });
        }
    })
}

/// One `fdatasync` for whatever queued while the last one ran; then everyone it covered is
/// answered.
fn group_commit(mut file: std::fs::File, rx: &sync_mpsc::Receiver<(Vec<u8>, oneshot::Sender<()>)>) {
    while let Ok(first) = rx.recv() {
        let mut waiting = Vec::new();
        let mut buf = Vec::new();
        for (record, done) in std::iter::once(first).chain(rx.try_iter()) {
            buf.extend_from_slice(&(record.len() as u32).to_le_bytes());
            buf.extend_from_slice(&record);
            waiting.push(done);
        }
        if file
            .write_all(&buf)
            .and_then(|()| file.sync_data())
            .is_err()
        {
            eprintln!("ceiling: log write failed");
            std::process::exit(2);
        }
        for done in waiting {
            let _ = done.send(());
        }
    }
}

async fn handle(
    state: Arc<State>,
    req: Request<Incoming>,
) -> Result<Response<Full<Bytes>>, hyper::Error> {
    let path = req.uri().path().to_owned();
    let body = req.into_body().collect().await?.to_bytes();
    let answer = |status, body: String| {
        let mut r = Response::new(Full::new(Bytes::from(body)));
        *r.status_mut() = status;
        Ok(r)
    };
    let Ok(op) = serde_json::from_slice::<Op>(&body) else {
        return answer(StatusCode::BAD_REQUEST, "{\"error\":\"malformed\"}".into());
    };
    match (path.as_str(), op.op.as_str()) {
        ("/v1/plugins/kv/commands", "put") => {
            let prev = {
                let mut map = state.map.lock().unwrap_or_else(|e| e.into_inner());
                map.insert(op.key, op.value.unwrap_or_default())
            };
            if let Some(log) = &state.log {
                let (tx, rx) = oneshot::channel();
                if log.send((body.to_vec(), tx)).is_err() || rx.await.is_err() {
                    return answer(StatusCode::SERVICE_UNAVAILABLE, String::new());
                }
            }
            answer(
                StatusCode::OK,
                serde_json::json!({ "prev": prev }).to_string(),
            )
        }
        ("/v1/plugins/kv/query", "get") => {
            let value = state
                .map
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .get(&op.key)
                .cloned();
            answer(
                StatusCode::OK,
                serde_json::json!({ "value": value }).to_string(),
            )
        }
        _ => answer(StatusCode::NOT_FOUND, String::new()),
    }
}
