//! Turning authentication on: a token file made once (mode 0600) and `POST /v1/auth/init`
//! with the token's hash, shared by `keel serve --init-admin-token-file`, `keel auth init
//! --token-file` and `keel dev --auth`. The file is written before the change is proposed,
//! so a crash between the two leaves a token that works once the init goes through, never
//! an initialised cluster whose only token is lost.

use std::path::Path;
use std::time::Duration;

use anyhow::{Context, bail};

use crate::client::Client;

/// The token in `path`, or a new one written there (0600, renamed into place).
pub fn token_file(path: &Path) -> anyhow::Result<String> {
    match std::fs::read_to_string(path) {
        Ok(text) => {
            let token = text.trim().to_string();
            if super::token_id_of(&token).is_none() {
                bail!(
                    "{} does not hold a keel token (keel_ID_SECRET)",
                    path.display()
                );
            }
            return Ok(token);
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(e).with_context(|| format!("reading {}", path.display())),
    }
    let (_, token) = super::new_token().map_err(|e| anyhow::anyhow!("no randomness: {e}"))?;
    write_secret(path, &token)?;
    Ok(token)
}

/// Writes a token to `path`, readable by its owner only, atomically.
pub fn write_secret(path: &Path, token: &str) -> anyhow::Result<()> {
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    crate::certs::write_private(path, &format!("{token}\n"))
}

/// What an init came to.
#[derive(Debug, PartialEq, Eq)]
pub enum Initialised {
    /// Authentication is on, with the file's token for user `root` (now or before).
    Done,
    /// The cluster had users already: the file's token is not one of theirs.
    HadUsers(String),
}

/// Initialises authentication through `client` with the token in (or made for) `path`.
pub async fn init(client: &mut Client, path: &Path) -> anyhow::Result<Initialised> {
    let token = token_file(path)?;
    let id = super::token_id_of(&token).unwrap_or_default().to_string();
    let body = serde_json::json!({"token_id": id, "sha256": super::Op::hash_hex(&token)});
    let answer = client
        .request(
            hyper::Method::POST,
            "/v1/auth/init",
            body.to_string().into_bytes(),
        )
        .await?;
    match answer.status {
        s if s.is_success() => Ok(Initialised::Done),
        hyper::StatusCode::CONFLICT => Ok(Initialised::HadUsers(
            String::from_utf8_lossy(&answer.body).into_owned(),
        )),
        s => bail!(
            "POST /v1/auth/init: {s} {}",
            String::from_utf8_lossy(&answer.body)
        ),
    }
}

/// `keel serve --init-admin-token-file`: initialises through this node (which forwards to
/// the leader) once the cluster has one, retrying until it is done.
pub async fn serve_init(url: String, path: std::path::PathBuf) {
    loop {
        let mut client = Client::new(vec![url.clone()]).with_deadline(Duration::from_secs(10));
        match init(&mut client, &path).await {
            Ok(Initialised::Done) => {
                tracing::info!(target: "keel::auth", file = %path.display(), "authentication is on: user root's token is in the file");
                return;
            }
            Ok(Initialised::HadUsers(why)) => {
                tracing::warn!(target: "keel::auth", file = %path.display(), "--init-admin-token-file: the cluster has users already, so the token in the file was not registered: {why}");
                return;
            }
            Err(e) => {
                tracing::debug!(target: "keel::auth", "authentication init not done yet: {e:#}");
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
        }
    }
}
