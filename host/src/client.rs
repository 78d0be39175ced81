//! The `keel put/get/submit/status` client: follows 307 redirects to the leader, retries
//! 503 with backoff across endpoints, and sends an exactly-once session so that a retry
//! after a lost answer is never applied twice. The session is opened (`POST /v1/sessions`)
//! before the first command.

use std::convert::Infallible;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use bytes::Bytes;
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::Frame;
use hyper::header::{CONTENT_LENGTH, LOCATION};
use hyper::{Method, Request, StatusCode};
use hyper_util::client::legacy::Client as HttpClient;
use hyper_util::rt::TokioExecutor;

/// A client of a Keel cluster.
pub struct Client {
    endpoints: Vec<String>,
    http: HttpClient<crate::tls::Connector, BoxBody<Bytes, Infallible>>,
    /// The session, once opened (or given).
    client_id: Option<u64>,
    serial: u64,
    /// Give up retrying (and abandon a request in flight) after this long.
    deadline: Option<Duration>,
    /// Shows how much of each request body has gone out, then a spinner until the answer.
    progress: Option<Progress>,
    /// Sent with every request: the token (`Authorization`, marked sensitive so that it is
    /// never printed), a node's `keel-cluster`.
    extra: Vec<(hyper::header::HeaderName, hyper::header::HeaderValue)>,
    /// The largest answer body read into memory ([`MAX_ANSWER_BYTES`] unless set).
    answer_limit: usize,
}

/// The largest answer a [`Client`] buffers by default: far above any status, plugin list or
/// query answer, and a bound on what a node (or anything at its address) can make this
/// process hold. Downloads stream to a file and are not limited by it.
pub const MAX_ANSWER_BYTES: usize = 64 << 20;

/// Reads an answer's body, at most `limit` bytes. A body that breaks off reads as empty (the
/// status says what happened); one over the limit is an error naming it.
pub(crate) async fn read_capped(
    body: hyper::body::Incoming,
    limit: usize,
    from: &str,
) -> anyhow::Result<Bytes> {
    match http_body_util::Limited::new(body, limit).collect().await {
        Ok(b) => Ok(b.to_bytes()),
        Err(e) if e.is::<http_body_util::LengthLimitError>() => {
            bail!("{from} answered more than {limit} bytes; refused")
        }
        Err(_) => Ok(Bytes::new()),
    }
}

/// A progress bar and what it says while uploading and while waiting for the answer.
#[derive(Clone)]
struct Progress {
    bar: indicatif::ProgressBar,
    uploading: String,
    waiting: String,
}

/// Request bodies go out in pieces of this size when a progress bar follows them.
const PROGRESS_CHUNK: usize = 256 << 10;
/// A file sent as a request body is read in pieces of this size.
const FILE_CHUNK: usize = 1 << 20;

/// Why a call got no answer to return (the CLI maps these to its exit codes).
#[derive(Debug, thiserror::Error)]
pub enum CallError {
    /// No endpoint accepted a connection or answered.
    #[error("no node answered at {endpoints:?}: {last_error}")]
    Unreachable {
        /// The endpoints tried.
        endpoints: Vec<String>,
        /// What the last attempt failed with.
        last_error: String,
    },
    /// Nodes answered, but only with 503 (no leader, election, stopping) until the retries
    /// or the deadline ran out.
    #[error("the cluster is unavailable at {endpoints:?}: {last_error}")]
    Unavailable {
        /// The endpoints tried.
        endpoints: Vec<String>,
        /// The last 503's body.
        last_error: String,
    },
    /// The deadline passed with a request in flight: it may or may not have been applied.
    #[error("no answer from {url} within {limit:?} (the outcome is unknown)")]
    TimedOut {
        /// The request's URL.
        url: String,
        /// The deadline.
        limit: Duration,
    },
    /// Opening a session was answered with something other than 200.
    #[error("opening a session: {status} {body}")]
    Session {
        /// The answer's status.
        status: StatusCode,
        /// Its body.
        body: String,
    },
}

/// An answer: status, `Keel-Index` if any, body.
pub struct Answer {
    /// HTTP status.
    pub status: StatusCode,
    /// Log index the command was applied at.
    pub index: Option<u64>,
    /// Body bytes.
    pub body: Bytes,
    /// An earlier attempt of this call may have reached the cluster (a connection failed
    /// after the request left), so a refusal now does not prove nothing happened.
    pub uncertain: bool,
}

/// The token every [`Client`] of this process presents (the CLI installs the one it was
/// given: `$KEEL_TOKEN`, a token file).
static TOKEN: std::sync::OnceLock<String> = std::sync::OnceLock::new();

/// Makes every client of this process present `token` (the first call wins).
pub fn install_token(token: String) {
    let _ = TOKEN.set(token);
}

/// The token [`install_token`] installed.
pub fn installed_token() -> Option<&'static str> {
    TOKEN.get().map(String::as_str)
}

impl Client {
    /// A client trying `endpoints` in turn (presenting the installed token, if any).
    pub fn new(endpoints: Vec<String>) -> Client {
        let client = Client {
            endpoints,
            http: crate::tls::client(),
            client_id: None,
            serial: 0,
            deadline: None,
            progress: None,
            extra: Vec::new(),
            answer_limit: MAX_ANSWER_BYTES,
        };
        match installed_token() {
            Some(token) => client.with_token(token),
            None => client,
        }
    }

    /// The same client, buffering answers of at most `limit` bytes.
    pub fn with_answer_limit(mut self, limit: usize) -> Client {
        self.answer_limit = limit;
        self
    }

    /// The same client, presenting `token` (`Authorization: Bearer …`) with every request.
    /// A token that is not a valid header value is not sent (the cluster answers 401).
    pub fn with_token(mut self, token: &str) -> Client {
        if let Ok(mut value) = hyper::header::HeaderValue::from_str(&format!("Bearer {token}")) {
            value.set_sensitive(true);
            self.extra.push((hyper::header::AUTHORIZATION, value));
        }
        self
    }

    /// The same client, sending `name: value` with every request.
    pub fn with_header(mut self, name: &'static str, value: String) -> Client {
        if let Ok(value) = hyper::header::HeaderValue::from_str(&value) {
            self.extra
                .push((hyper::header::HeaderName::from_static(name), value));
        }
        self
    }

    /// Shows each request body's upload on `bar` (its length is set per request) as
    /// `uploading`, then `waiting` with a spinner until the answer comes.
    pub fn set_progress(
        &mut self,
        bar: indicatif::ProgressBar,
        uploading: String,
        waiting: String,
    ) {
        self.progress = Some(Progress {
            bar,
            uploading,
            waiting,
        });
    }

    /// The same client, trusting `tls`'s CA (and presenting its certificate, if it has one)
    /// instead of the process's TLS setup.
    pub fn with_tls(mut self, tls: std::sync::Arc<crate::tls::Tls>) -> Client {
        self.http = HttpClient::builder(TokioExecutor::new())
            .pool_idle_timeout(crate::tls::POOL_IDLE)
            .pool_timer(hyper_util::rt::TokioTimer::new())
            .build(crate::tls::connector_with(Some(tls)));
        self
    }

    /// The same client, giving up on each call (retries included) after `limit`.
    pub fn with_deadline(mut self, limit: Duration) -> Client {
        self.deadline = Some(limit);
        self
    }

    /// The same client resuming an open session whose last serial was `serial`.
    pub fn with_session(mut self, client_id: u64, serial: u64) -> Client {
        self.client_id = Some(client_id);
        self.serial = serial;
        self
    }

    /// The session id, opening a session first if there is none.
    pub async fn session(&mut self) -> anyhow::Result<u64> {
        if let Some(id) = self.client_id {
            return Ok(id);
        }
        let a = self
            .call(Method::POST, "/v1/sessions", Vec::new(), false, &[])
            .await?;
        let id = (a.status == StatusCode::OK)
            .then(|| serde_json::from_slice::<serde_json::Value>(&a.body).ok())
            .flatten()
            .and_then(|v| v["client_id"].as_u64());
        let Some(id) = id else {
            return Err(CallError::Session {
                status: a.status,
                body: String::from_utf8_lossy(&a.body).into_owned(),
            }
            .into());
        };
        self.client_id = Some(id);
        Ok(id)
    }

    /// Submits a new command to a plugin, exactly once (a fresh serial). If the session
    /// expired (it was unused for longer than the cluster's `session_ttl_ms`) and this command
    /// certainly never reached the cluster before, a new session is opened and the command
    /// sent again under it; otherwise the 410 is returned.
    pub async fn submit(&mut self, plugin: &str, body: Vec<u8>) -> anyhow::Result<Answer> {
        self.submit_with(plugin, body, &[]).await
    }

    /// [`Client::submit`] with extra headers (`Keel-Attach`).
    pub async fn submit_with(
        &mut self,
        plugin: &str,
        body: Vec<u8>,
        headers: &[(&'static str, String)],
    ) -> anyhow::Result<Answer> {
        let path = format!("/v1/plugins/{plugin}/commands");
        self.session().await?;
        self.serial += 1;
        let answer = self
            .call(Method::POST, &path, body.clone(), true, headers)
            .await?;
        if answer.status != StatusCode::GONE || answer.uncertain {
            return Ok(answer);
        }
        // Refused in the log, nothing applied, no earlier attempt: safe under a new session.
        self.client_id = None;
        self.serial = 0;
        self.session().await?;
        self.serial += 1;
        self.call(Method::POST, &path, body, true, headers).await
    }

    /// Sends the last command again under the same serial (after a 504 or a lost answer):
    /// the cluster answers with the stored result if it was applied, and applies it once if
    /// it was not.
    pub async fn resubmit(&mut self, plugin: &str, body: Vec<u8>) -> anyhow::Result<Answer> {
        let path = format!("/v1/plugins/{plugin}/commands");
        self.call(Method::POST, &path, body, true, &[]).await
    }

    /// The session id and the last serial used, to resume with [`Client::with_session`].
    pub fn session_state(&self) -> Option<(u64, u64)> {
        self.client_id.map(|id| (id, self.serial))
    }

    /// Runs a query (`consistency`: linearizable, lease or stale).
    pub async fn query(
        &mut self,
        plugin: &str,
        body: Vec<u8>,
        consistency: &str,
    ) -> anyhow::Result<Answer> {
        let path = format!("/v1/plugins/{plugin}/query?consistency={consistency}");
        self.call(Method::POST, &path, body, false, &[]).await
    }

    /// `POST path` with an empty body (admin endpoints).
    pub async fn call_raw(&mut self, path: &str) -> anyhow::Result<Answer> {
        self.call(Method::POST, path, Vec::new(), false, &[]).await
    }

    /// Any request (admin endpoints), following redirects and retrying 503 like the rest.
    pub async fn request(
        &mut self,
        method: Method,
        path: &str,
        body: Vec<u8>,
    ) -> anyhow::Result<Answer> {
        self.call(method, path, body, false, &[]).await
    }

    /// Deploys a plugin (`PUT /v1/plugins/{name}`): `headers` may set `Keel-Fuel`,
    /// `Keel-Memory-Bytes` and `Keel-Version`.
    pub async fn deploy(
        &mut self,
        name: &str,
        wasm: Vec<u8>,
        headers: &[(&'static str, String)],
    ) -> anyhow::Result<Answer> {
        let path = format!("/v1/plugins/{name}");
        self.call(Method::PUT, &path, wasm, false, headers).await
    }

    /// Replays the plugin's last `last` commands against `wasm` on one node (`POST
    /// /v1/plugins/{name}/dry-run`), deploying nothing; `headers` as for [`Client::deploy`].
    pub async fn dry_run(
        &mut self,
        name: &str,
        wasm: Vec<u8>,
        last: usize,
        headers: &[(&'static str, String)],
    ) -> anyhow::Result<Answer> {
        let path = format!("/v1/plugins/{name}/dry-run?last={last}");
        self.call(Method::POST, &path, wasm, false, headers).await
    }

    /// `GET path` from the first endpoint that answers 200, streamed into `dest` (created or
    /// truncated). Returns the answer's status and headers, and the bytes written; a
    /// non-200 answer's body is in the error.
    pub async fn download(
        &mut self,
        path: &str,
        dest: &std::path::Path,
    ) -> anyhow::Result<(hyper::HeaderMap, u64)> {
        let mut file = std::io::BufWriter::with_capacity(
            1 << 20,
            std::fs::File::create(dest).with_context(|| dest.display().to_string())?,
        );
        let got = self
            .download_into(path, &mut file, &mut |_| {}, None)
            .await?;
        std::io::Write::flush(&mut file)?;
        file.get_ref().sync_all()?;
        Ok(got)
    }

    /// `GET path` from the first endpoint that answers 200, each piece of the body written
    /// to `sink` and shown to `seen` (a hash) as it arrives, and counted on `bar` (its
    /// length from the answer's `Content-Length`). Returns the answer's headers and the
    /// bytes written; a non-200 answer's body is in the error.
    pub async fn download_into(
        &mut self,
        path: &str,
        sink: &mut dyn std::io::Write,
        seen: &mut dyn FnMut(&[u8]),
        bar: Option<&indicatif::ProgressBar>,
    ) -> anyhow::Result<(hyper::HeaderMap, u64)> {
        let mut last = String::from("no endpoints given");
        for endpoint in self.endpoints.clone() {
            let req = Request::builder()
                .method(Method::GET)
                .uri(format!("{endpoint}{path}"))
                .body(Full::new(Bytes::new()).boxed())
                .context("building the request")?;
            let resp = match self.http.request(req).await {
                Ok(r) => r,
                Err(e) => {
                    last = format!("{endpoint}: {e}");
                    continue;
                }
            };
            let (parts, mut body) = resp.into_parts();
            if parts.status != StatusCode::OK {
                let bytes = read_capped(body, 64 << 10, &endpoint).await?;
                bail!(
                    "{endpoint} answered {}: {}",
                    parts.status,
                    String::from_utf8_lossy(&bytes)
                );
            }
            if let Some(bar) = bar {
                let len = parts.headers.get(CONTENT_LENGTH);
                bar.set_length(len.and_then(|v| v.to_str().ok()?.parse().ok()).unwrap_or(0));
                bar.set_style(crate::cli::upload_style());
            }
            let mut n = 0u64;
            while let Some(frame) = body.frame().await {
                let frame = frame.with_context(|| format!("{endpoint}: the download broke off"))?;
                if let Ok(data) = frame.into_data() {
                    sink.write_all(&data)?;
                    seen(&data);
                    n += data.len() as u64;
                    if let Some(bar) = bar {
                        bar.inc(data.len() as u64);
                    }
                }
            }
            return Ok((parts.headers, n));
        }
        bail!("{last}")
    }

    /// `GET path` on the first endpoint that answers.
    pub async fn get(&mut self, path: &str) -> anyhow::Result<Answer> {
        self.call(Method::GET, path, Vec::new(), false, &[]).await
    }

    async fn call(
        &mut self,
        method: Method,
        path: &str,
        body: Vec<u8>,
        session: bool,
        headers: &[(&'static str, String)],
    ) -> anyhow::Result<Answer> {
        let body = Source::Bytes(Bytes::from(body));
        self.call_with(method, path, body, session, headers).await
    }

    /// `PUT path` with the bytes of `file` as the body, read a piece at a time as they go
    /// out (never whole in memory; again from the start on a retry), with the progress bar
    /// if one is set.
    pub async fn put_file(&mut self, path: &str, file: &std::path::Path) -> anyhow::Result<Answer> {
        let len = std::fs::metadata(file)
            .with_context(|| file.display().to_string())?
            .len();
        let body = Source::File(file.to_path_buf(), len);
        self.call_with(Method::PUT, path, body, false, &[]).await
    }

    async fn call_with(
        &mut self,
        method: Method,
        path: &str,
        body: Source,
        session: bool,
        headers: &[(&'static str, String)],
    ) -> anyhow::Result<Answer> {
        if self.endpoints.is_empty() {
            bail!("no endpoints given");
        }
        let read_failed: std::sync::Arc<std::sync::Mutex<Option<std::io::Error>>> =
            Default::default();
        let mut endpoint = 0;
        let mut url = format!("{}{path}", self.endpoints[0]);
        let mut backoff = Duration::from_millis(50);
        let mut last_error = String::new();
        let mut uncertain = false;
        // Whether any node answered at all: a cluster without a leader is not unreachable.
        let mut answered = false;
        let mut refused_trust = 0;
        let give_up = self.deadline.map(|d| Instant::now() + d);
        for _ in 0..40 {
            let mut req = Request::builder().method(method.clone()).uri(&url);
            for (name, value) in &self.extra {
                req = req.header(name, value);
            }
            for (name, value) in headers {
                req = req.header(*name, value);
            }
            if let (true, Some(id)) = (session, self.client_id) {
                req = req
                    .header("keel-client-id", id)
                    .header("keel-serial", self.serial);
            }
            let req = match (&body, &self.progress) {
                (Source::File(file, len), progress) => {
                    let f = tokio::fs::File::open(file)
                        .await
                        .with_context(|| file.display().to_string())?;
                    req.header(CONTENT_LENGTH, *len).body(file_body(
                        f,
                        *len,
                        progress.clone(),
                        read_failed.clone(),
                    ))
                }
                (Source::Bytes(body), Some(progress)) if !body.is_empty() => req
                    .header(CONTENT_LENGTH, body.len())
                    .body(progress_body(body.clone(), progress.clone())),
                (Source::Bytes(body), _) => req.body(Full::new(body.clone()).boxed()),
            }
            .context("building the request")?;
            let sent = self.http.request(req);
            let outcome = match give_up {
                Some(at) => match tokio::time::timeout_at(at.into(), sent).await {
                    Ok(r) => r,
                    Err(_) => {
                        // Sent (or connecting) and not answered in time: its outcome is
                        // unknown, as after a 504.
                        return Err(CallError::TimedOut {
                            url,
                            limit: self.deadline.unwrap_or_default(),
                        }
                        .into());
                    }
                },
                None => sent.await,
            };
            if let Some(e) = read_failed.lock().unwrap_or_else(|e| e.into_inner()).take() {
                return Err(anyhow::Error::from(e).context("reading the file to send"));
            }
            match outcome {
                Ok(resp) => {
                    let status = resp.status();
                    let location = resp
                        .headers()
                        .get(LOCATION)
                        .and_then(|v| v.to_str().ok())
                        .map(String::from);
                    let index = resp
                        .headers()
                        .get("keel-index")
                        .and_then(|v| v.to_str().ok())
                        .and_then(|v| v.parse().ok());
                    let bytes = read_capped(resp.into_body(), self.answer_limit, &url).await?;
                    match (status, location) {
                        (StatusCode::TEMPORARY_REDIRECT, Some(loc)) => {
                            url = loc;
                            continue;
                        }
                        (StatusCode::SERVICE_UNAVAILABLE, _) => {
                            answered = true;
                            last_error = String::from_utf8_lossy(&bytes).into_owned();
                        }
                        _ => {
                            return Ok(Answer {
                                status,
                                index,
                                body: bytes,
                                uncertain,
                            });
                        }
                    }
                }
                Err(e) => {
                    // Unless the connection was never made, the request may have arrived.
                    uncertain |= !e.is_connect();
                    last_error = error_chain(&e);
                    // A server the CA does not vouch for (or no CA at all) will not change
                    // its mind: once every endpoint said so, stop instead of retrying.
                    if crate::tls::is_trust_error(&last_error) {
                        refused_trust += 1;
                        if refused_trust >= self.endpoints.len() {
                            break;
                        }
                    }
                }
            }
            // Unavailable or unreachable: back off, try the next endpoint.
            if give_up.is_some_and(|at| Instant::now() + backoff >= at) {
                break;
            }
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(Duration::from_secs(1));
            endpoint = (endpoint + 1) % self.endpoints.len();
            url = format!("{}{path}", self.endpoints[endpoint]);
        }
        let endpoints = self.endpoints.clone();
        Err(if answered {
            CallError::Unavailable {
                endpoints,
                last_error,
            }
        } else {
            CallError::Unreachable {
                endpoints,
                last_error,
            }
        }
        .into())
    }
}

/// `body` in pieces that advance `bar` as hyper takes them (so, as the socket accepts them);
/// once the last has gone, the bar turns into a spinner: the server is at work.
/// A request body: bytes in memory, or a file of this length read as it goes out.
enum Source {
    Bytes(Bytes),
    File(std::path::PathBuf, u64),
}

impl Progress {
    /// A body of `total` bytes starts going out (again, on a retry).
    fn start(&self, total: u64) {
        self.bar.disable_steady_tick();
        self.bar.reset();
        self.bar.set_message(self.uploading.clone());
        self.bar.set_length(total);
        self.bar.set_style(crate::cli::upload_style());
    }

    /// `n` more bytes went out; once all have, a spinner until the answer.
    fn sent(&self, n: u64, total: u64) {
        self.bar.inc(n);
        if self.bar.position() >= total {
            self.bar.set_style(crate::cli::waiting_style());
            self.bar.set_message(self.waiting.clone());
            self.bar.enable_steady_tick(Duration::from_millis(100));
        }
    }
}

fn progress_body(body: Bytes, progress: Progress) -> BoxBody<Bytes, Infallible> {
    use futures_util::StreamExt;
    let total = body.len();
    progress.start(total as u64);
    let pieces: Vec<Bytes> = (0..total)
        .step_by(PROGRESS_CHUNK)
        .map(|at| body.slice(at..(at + PROGRESS_CHUNK).min(total)))
        .collect();
    let stream = futures_util::stream::iter(pieces).map(move |piece| {
        progress.sent(piece.len() as u64, total as u64);
        Ok::<_, Infallible>(Frame::data(piece))
    });
    BodyExt::boxed(StreamBody::new(stream))
}

/// Bytes of a file read a piece at a time as the request sends them. A read error ends the
/// body early (hyper then fails the request, short of its length) and is kept in `failed`
/// for the caller to report.
fn file_body(
    file: tokio::fs::File,
    total: u64,
    progress: Option<Progress>,
    failed: std::sync::Arc<std::sync::Mutex<Option<std::io::Error>>>,
) -> BoxBody<Bytes, Infallible> {
    use tokio::io::AsyncReadExt as _;
    if let Some(p) = &progress {
        p.start(total);
    }
    let stream = futures_util::stream::unfold(file, move |mut file| {
        let (progress, failed) = (progress.clone(), failed.clone());
        async move {
            let mut buf = vec![0u8; FILE_CHUNK];
            match file.read(&mut buf).await {
                Ok(0) => None,
                Ok(n) => {
                    buf.truncate(n);
                    if let Some(p) = &progress {
                        p.sent(n as u64, total);
                    }
                    Some((Ok::<_, Infallible>(Frame::data(Bytes::from(buf))), file))
                }
                Err(e) => {
                    *failed.lock().unwrap_or_else(|e| e.into_inner()) = Some(e);
                    None
                }
            }
        }
    });
    BodyExt::boxed(StreamBody::new(stream))
}

/// An error with its causes (hyper's own message alone is "client error (Connect)").
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut cause = e.source();
    while let Some(c) = cause {
        out.push_str(": ");
        out.push_str(&c.to_string());
        cause = c.source();
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// Hostile input (issue #13): a node, or anything listening at its address, that answers
    /// with an endless body cannot make a client buffer it: the read stops at the limit
    /// with an error naming it.
    #[test]
    fn an_endless_answer_is_refused_at_the_limit_not_buffered() {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        rt.block_on(async {
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
                .await
                .expect("bind");
            let url = format!("http://{}", listener.local_addr().expect("addr"));
            let server = tokio::spawn(async move {
                let (mut s, _) = listener.accept().await.expect("accept");
                let mut head = [0u8; 1024];
                let _ = s.read(&mut head).await;
                let _ = s
                    .write_all(b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n")
                    .await;
                let chunk = [b'x'; 64 << 10];
                let mut sent = 0usize;
                // Far past the limit; the client hangs up long before.
                while sent < 64 << 20 {
                    let framed = [b"10000\r\n".as_slice(), &chunk, b"\r\n"].concat();
                    if s.write_all(&framed).await.is_err() {
                        break;
                    }
                    sent += chunk.len();
                }
                sent
            });
            let mut c = Client::new(vec![url]).with_answer_limit(1 << 20);
            let e = match c.get("/v1/status").await {
                Ok(a) => panic!("an endless answer was taken: {} bytes", a.body.len()),
                Err(e) => e.to_string(),
            };
            assert!(e.contains("more than 1048576 bytes"), "{e}");
            let sent = server.await.expect("server");
            assert!(
                sent < 64 << 20,
                "the client read everything the server sent"
            );
        });
    }
}
