//! The `keel put/get/submit/status` client: follows 307 redirects to the leader, retries
//! 503 with backoff across endpoints, and sends an exactly-once session so that a retry
//! after a lost answer is never applied twice. The session is opened (`POST /v1/sessions`)
//! before the first command.

use std::time::Duration;

use anyhow::{Context, bail};
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::header::LOCATION;
use hyper::{Method, Request, StatusCode};
use hyper_util::client::legacy::Client as HttpClient;
use hyper_util::rt::TokioExecutor;

/// A client of a Keel cluster.
pub struct Client {
    endpoints: Vec<String>,
    http: HttpClient<hyper_util::client::legacy::connect::HttpConnector, Full<Bytes>>,
    /// The session, once opened (or given).
    client_id: Option<u64>,
    serial: u64,
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

impl Client {
    /// A client trying `endpoints` in turn.
    pub fn new(endpoints: Vec<String>) -> Client {
        Client {
            endpoints,
            http: HttpClient::builder(TokioExecutor::new()).build_http(),
            client_id: None,
            serial: 0,
        }
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
            bail!(
                "opening a session: {} {}",
                a.status,
                String::from_utf8_lossy(&a.body)
            );
        };
        self.client_id = Some(id);
        Ok(id)
    }

    /// Submits a new command to a plugin, exactly once (a fresh serial). If the session
    /// expired (it was unused for longer than the cluster's `session_ttl_ms`) and this command
    /// certainly never reached the cluster before, a new session is opened and the command
    /// sent again under it; otherwise the 410 is returned.
    pub async fn submit(&mut self, plugin: &str, body: Vec<u8>) -> anyhow::Result<Answer> {
        self.session().await?;
        self.serial += 1;
        let answer = self.resubmit(plugin, body.clone()).await?;
        if answer.status != StatusCode::GONE || answer.uncertain {
            return Ok(answer);
        }
        // Refused in the log, nothing applied, no earlier attempt: safe under a new session.
        self.client_id = None;
        self.serial = 0;
        self.session().await?;
        self.serial += 1;
        self.resubmit(plugin, body).await
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
        if self.endpoints.is_empty() {
            bail!("no endpoints given");
        }
        let mut endpoint = 0;
        let mut url = format!("{}{path}", self.endpoints[0]);
        let mut backoff = Duration::from_millis(50);
        let mut last_error = String::new();
        let mut uncertain = false;
        for _ in 0..40 {
            let mut req = Request::builder().method(method.clone()).uri(&url);
            for (name, value) in headers {
                req = req.header(*name, value);
            }
            if let (true, Some(id)) = (session, self.client_id) {
                req = req
                    .header("keel-client-id", id)
                    .header("keel-serial", self.serial);
            }
            let req = req
                .body(Full::new(Bytes::from(body.clone())))
                .context("building the request")?;
            match self.http.request(req).await {
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
                    let bytes = resp
                        .into_body()
                        .collect()
                        .await
                        .map(|b| b.to_bytes())
                        .unwrap_or_default();
                    match (status, location) {
                        (StatusCode::TEMPORARY_REDIRECT, Some(loc)) => {
                            url = loc;
                            continue;
                        }
                        (StatusCode::SERVICE_UNAVAILABLE, _) => {
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
                    last_error = e.to_string();
                }
            }
            // Unavailable or unreachable: back off, try the next endpoint.
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(Duration::from_secs(1));
            endpoint = (endpoint + 1) % self.endpoints.len();
            url = format!("{}{path}", self.endpoints[endpoint]);
        }
        bail!("no answer from {:?}: {last_error}", self.endpoints)
    }
}
