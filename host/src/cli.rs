//! The parts of the `keel` command line that deserve tests of their own: where it finds its
//! cluster, its exit codes, the tables it prints for people, `keel status` gathered from
//! every member, and the lines `keel watch` prints (docs/cli.md).

use std::fmt;
use std::path::{Path, PathBuf};

use anyhow::Context;
use hyper::StatusCode;

use crate::client::CallError;
use crate::dev::DevCluster;

/// Where the CLI goes when nothing says otherwise (`keel serve`'s default listen address).
pub const DEFAULT_ENDPOINT: &str = "http://127.0.0.1:7001";
/// The variable that names the cluster (comma-separated URLs).
pub const ENDPOINTS_VAR: &str = "KEEL_ENDPOINTS";
/// The variable that names the CA file a TLS cluster's certificates are checked against.
pub const CA_VAR: &str = "KEEL_CA";
/// The variable holding a token (`keel token create` prints one).
pub const TOKEN_VAR: &str = "KEEL_TOKEN";
/// The variable naming a file that holds a token.
pub const TOKEN_FILE_VAR: &str = "KEEL_TOKEN_FILE";
/// What `keel dev` writes in the directory it runs in (its default `--dir`).
pub const DEV_CLUSTER_FILE: &str = "keel-dev/cluster.json";

// ------------------------------------------------------------------------- endpoints

/// Where the endpoints came from, to say so when none answers.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum EndpointSource {
    /// `--endpoints`.
    Flag,
    /// `$KEEL_ENDPOINTS`.
    Env,
    /// A `cluster.json` written by `keel dev`.
    DevCluster(PathBuf),
    /// [`DEFAULT_ENDPOINT`].
    Default,
}

impl fmt::Display for EndpointSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            EndpointSource::Flag => f.write_str("--endpoints"),
            EndpointSource::Env => write!(f, "${ENDPOINTS_VAR}"),
            EndpointSource::DevCluster(path) => write!(f, "{}", path.display()),
            EndpointSource::Default => f.write_str("the default"),
        }
    }
}

/// The endpoints to use: `--endpoints` if given, else `$KEEL_ENDPOINTS` (`env`), else the
/// `keel-dev/cluster.json` under `cwd`, else [`DEFAULT_ENDPOINT`]. A blank variable counts as
/// unset; a `cluster.json` that cannot be read is an error (using the default instead would
/// send the command somewhere the user did not mean).
pub fn resolve_endpoints(
    flag: &[String],
    env: Option<&str>,
    cwd: &Path,
) -> anyhow::Result<(Vec<String>, EndpointSource)> {
    let flag = split_urls(flag.iter().map(String::as_str));
    if !flag.is_empty() {
        return Ok((flag, EndpointSource::Flag));
    }
    let env = split_urls(env.unwrap_or("").split(','));
    if !env.is_empty() {
        return Ok((env, EndpointSource::Env));
    }
    let file = cwd.join(DEV_CLUSTER_FILE);
    if file.exists() {
        let text = std::fs::read(&file).with_context(|| format!("reading {}", file.display()))?;
        let cluster: DevCluster = serde_json::from_slice(&text).with_context(|| {
            format!(
                "{} is not a keel dev cluster file (pass --endpoints)",
                file.display()
            )
        })?;
        let urls = split_urls(cluster.nodes.iter().map(|n| n.url.as_str()));
        anyhow::ensure!(!urls.is_empty(), "{} lists no nodes", file.display());
        return Ok((urls, EndpointSource::DevCluster(file)));
    }
    Ok((vec![DEFAULT_ENDPOINT.to_string()], EndpointSource::Default))
}

/// The CA to check TLS servers against: `$KEEL_CA` (`env`) if set, else the `"ca"` of the
/// `keel-dev/cluster.json` under `cwd` (written by `keel dev --tls`), else none (`https://`
/// endpoints then fail with a message naming both).
pub fn resolve_ca(env: Option<&str>, cwd: &Path) -> anyhow::Result<Option<PathBuf>> {
    if let Some(ca) = env.map(str::trim).filter(|v| !v.is_empty()) {
        return Ok(Some(PathBuf::from(ca)));
    }
    let file = cwd.join(DEV_CLUSTER_FILE);
    if !file.exists() {
        return Ok(None);
    }
    let text = std::fs::read(&file).with_context(|| format!("reading {}", file.display()))?;
    let cluster: DevCluster = serde_json::from_slice(&text)
        .with_context(|| format!("{} is not a keel dev cluster file", file.display()))?;
    // A relative path is relative to the file that names it.
    Ok(cluster
        .ca
        .map(|ca| file.parent().map_or(ca.clone(), |dir| dir.join(&ca))))
}

/// The token to present, never from a flag (a flag's value shows in `ps`): `--token-file`
/// (`flag_file`), else `$KEEL_TOKEN` (`env_token`), else the file `$KEEL_TOKEN_FILE`
/// (`env_file`), else the `"admin_token_file"` of the `keel-dev/cluster.json` under `cwd`
/// (written by `keel dev --auth`; not looked for without `cwd`), else none. Blank
/// variables count as unset.
pub fn resolve_token(
    flag_file: Option<&Path>,
    env_token: Option<&str>,
    env_file: Option<&str>,
    cwd: Option<&Path>,
) -> anyhow::Result<Option<String>> {
    let read = |path: &Path| -> anyhow::Result<String> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("reading the token file {}", path.display()))?;
        let token = text.trim().to_string();
        anyhow::ensure!(
            !token.is_empty(),
            "the token file {} is empty",
            path.display()
        );
        Ok(token)
    };
    if let Some(path) = flag_file {
        return read(path).map(Some);
    }
    if let Some(token) = env_token.map(str::trim).filter(|t| !t.is_empty()) {
        return Ok(Some(token.to_string()));
    }
    if let Some(path) = env_file.map(str::trim).filter(|t| !t.is_empty()) {
        return read(Path::new(path)).map(Some);
    }
    let Some(file) = cwd.map(|c| c.join(DEV_CLUSTER_FILE)).filter(|f| f.exists()) else {
        return Ok(None);
    };
    let text = std::fs::read(&file).with_context(|| format!("reading {}", file.display()))?;
    let cluster: DevCluster = serde_json::from_slice(&text)
        .with_context(|| format!("{} is not a keel dev cluster file", file.display()))?;
    match cluster.admin_token_file {
        Some(path) => {
            let path = file.parent().map_or(path.clone(), |dir| dir.join(&path));
            read(&path).map(Some)
        }
        None => Ok(None),
    }
}

/// The path of `PUT/DELETE /v1/auth/roles/{role}/grants/{grant}` for `keel role
/// grant|revoke ROLE PERMISSION [PLUGIN]` (`PERMISSION` may also be `query:PLUGIN`).
pub fn grant_path(role: &str, permission: &str, plugin: Option<&str>) -> anyhow::Result<String> {
    let grant = match plugin {
        Some(p) => format!("{permission}:{p}"),
        None => permission.to_string(),
    };
    let parsed = crate::auth::Grant::parse(&grant).map_err(|e| anyhow::anyhow!(e))?;
    anyhow::ensure!(
        crate::auth::valid_name(role),
        "{role:?}: a role name is 1 to 64 of a-z A-Z 0-9 . _ @ -"
    );
    Ok(format!("/v1/auth/roles/{role}/grants/{parsed}"))
}

fn split_urls<'a>(parts: impl Iterator<Item = &'a str>) -> Vec<String> {
    parts
        .map(|u| u.trim().trim_end_matches('/'))
        .filter(|u| !u.is_empty())
        .map(String::from)
        .collect()
}

// ------------------------------------------------------------------------- exit codes

/// The exit codes, as documented in docs/cli.md.
pub mod exit {
    /// Done.
    pub const OK: u8 = 0;
    /// Anything else: a local file, a bad value, an unexpected answer.
    pub const ERROR: u8 = 1;
    /// The command line itself is wrong (clap's own code).
    pub const USAGE: u8 = 2;
    /// No node answered: nothing listens at the endpoints.
    pub const UNREACHABLE: u8 = 3;
    /// The cluster refused the request (a 4xx: bad input, unknown plugin, conflict, a
    /// plugin's refusal).
    pub const REFUSED: u8 = 4;
    /// The cluster failed or could not serve in time (a 5xx, no leader until the deadline,
    /// a timeout whose outcome is unknown).
    pub const SERVER: u8 = 5;
    /// A dry run found answers or writes that differ (`keel deploy --dry-run`).
    pub const DIFFERS: u8 = 6;
}

/// The exit code for an answer's status.
pub fn exit_for_status(status: StatusCode) -> u8 {
    if status.is_success() {
        exit::OK
    } else if status.is_client_error() {
        exit::REFUSED
    } else if status.is_server_error() {
        exit::SERVER
    } else {
        exit::ERROR
    }
}

/// The exit code for a call that got no answer to show.
pub fn exit_for_error(e: &anyhow::Error) -> u8 {
    match e.downcast_ref::<CallError>() {
        Some(CallError::Unreachable { .. }) => exit::UNREACHABLE,
        Some(CallError::Unavailable { .. } | CallError::TimedOut { .. }) => exit::SERVER,
        Some(CallError::Session { status, .. }) => exit_for_status(*status),
        None => exit::ERROR,
    }
}

// ------------------------------------------------------------------------- tables

/// Left-aligned columns two spaces apart, a header line first, no trailing spaces.
pub fn table(header: &[&str], rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = header.iter().map(|h| h.chars().count()).collect();
    for row in rows {
        for (i, cell) in row.iter().enumerate() {
            if let Some(w) = widths.get_mut(i) {
                *w = (*w).max(cell.chars().count());
            }
        }
    }
    let mut out = String::new();
    let header: Vec<String> = header.iter().map(|h| h.to_string()).collect();
    for row in std::iter::once(&header).chain(rows) {
        let mut line = String::new();
        for (i, cell) in row.iter().enumerate() {
            if i > 0 {
                line.push_str("  ");
            }
            line.push_str(cell);
            let pad = widths.get(i).copied().unwrap_or(0);
            line.extend(std::iter::repeat_n(
                ' ',
                pad.saturating_sub(cell.chars().count()),
            ));
        }
        out.push_str(line.trim_end());
        out.push('\n');
    }
    out
}

// ------------------------------------------------------------------------- status

pub use crate::cluster_view::{
    ClusterStatus, MemberStatus, cluster_status, combine, members_of, membership, node_status,
};

/// `keel status` for people: one line per member.
pub fn render_status(s: &ClusterStatus) -> String {
    let opt = |v: Option<u64>| v.map_or_else(|| "-".to_string(), |v| v.to_string());
    let rows: Vec<Vec<String>> = s
        .members
        .iter()
        .map(|m| {
            vec![
                m.id.to_string(),
                m.url.clone(),
                m.role.clone().unwrap_or_else(|| "-".into()),
                opt(m.term),
                opt(m.commit_index),
                opt(m.applied_index),
                opt(m.lag),
                if m.healthy { "healthy" } else { "unreachable" }.to_string(),
            ]
        })
        .collect();
    table(
        &[
            "ID", "URL", "ROLE", "TERM", "COMMIT", "APPLIED", "LAG", "HEALTH",
        ],
        &rows,
    )
}

/// `keel members` for people.
pub fn render_members(members: &[(u64, String, bool)], leader: Option<u64>) -> String {
    let rows: Vec<Vec<String>> = members
        .iter()
        .map(|(id, url, voter)| {
            vec![
                id.to_string(),
                url.clone(),
                if *voter { "voter" } else { "learner" }.to_string(),
                if leader == Some(*id) { "yes" } else { "" }.to_string(),
            ]
        })
        .collect();
    table(&["ID", "URL", "KIND", "LEADER"], &rows)
}

// ------------------------------------------------------------------------- watch

/// Splits a server-sent event stream into the `data` of each event, across chunks.
#[derive(Debug, Default)]
pub struct SseParser {
    buf: String,
}

impl SseParser {
    /// Feeds a chunk; returns the events it completed.
    pub fn push(&mut self, chunk: &[u8]) -> Vec<String> {
        self.buf.push_str(&String::from_utf8_lossy(chunk));
        let mut out = Vec::new();
        while let Some(end) = self.buf.find("\n\n") {
            let event: String = self.buf.drain(..end + 2).collect();
            let data: Vec<&str> = event
                .lines()
                .filter_map(|l| l.strip_prefix("data:"))
                .map(|d| d.strip_prefix(' ').unwrap_or(d))
                .collect();
            if !data.is_empty() {
                out.push(data.join("\n"));
            }
        }
        out
    }
}

/// One event of `GET /v1/events` as a line for people.
pub fn event_line(event: &serde_json::Value) -> String {
    let leader = |v: &serde_json::Value| v.as_u64().map_or("none".to_string(), |l| l.to_string());
    let ids = |v: &serde_json::Value| {
        let ids: Vec<String> = v
            .as_array()
            .into_iter()
            .flatten()
            .map(|i| i.to_string())
            .collect();
        format!("[{}]", ids.join(","))
    };
    match event["type"].as_str() {
        Some("state") => format!(
            "term {}: {}, leader {}",
            event["term"],
            event["role"].as_str().unwrap_or("?"),
            leader(&event["leader"])
        ),
        Some("config") => format!(
            "configuration at index {}: voters {}, learners {}",
            event["index"],
            ids(&event["voters"]),
            ids(&event["learners"])
        ),
        // The stream opens with the node's status.
        None if event.get("node_id").is_some() => format!(
            "node {} is {} in term {}, leader {}, commit {}, applied {}, voters {}, learners {}",
            event["node_id"],
            event["role"].as_str().unwrap_or("?"),
            event["term"],
            leader(&event["leader_id"]),
            event["commit_index"],
            event["applied_index"],
            ids(&event["voters"]),
            ids(&event["learners"])
        ),
        _ => event.to_string(),
    }
}

/// The time of day (UTC) as `HH:MM:SS`, to stamp `keel watch` lines.
pub fn clock(now: std::time::SystemTime) -> String {
    let secs = now
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let day = secs % 86_400;
    format!("{:02}:{:02}:{:02}", day / 3600, day / 60 % 60, day % 60)
}

// ------------------------------------------------------------------------- progress

/// A progress bar on stderr for a step that takes seconds; hidden (draws nothing) when
/// stderr is not a terminal, so scripts and CI logs get only the answer.
pub fn progress_bar() -> indicatif::ProgressBar {
    use std::io::IsTerminal;
    let bar = if std::io::stderr().is_terminal() {
        indicatif::ProgressBar::with_draw_target(None, indicatif::ProgressDrawTarget::stderr())
    } else {
        indicatif::ProgressBar::hidden()
    };
    // Not the default bar, which draws an empty `0/0` before the caller sets it up.
    bar.set_style(waiting_style());
    bar
}

/// What `keel deploy`'s bar says while the component goes out, and then while the leader
/// compiles it, places it on a majority and commits the deployment.
pub fn deploy_messages(name: &str, bytes: usize) -> (String, String) {
    (
        format!("deploy {name}: uploading"),
        // Short enough for an 80-column terminal: a wrapped line is redrawn badly.
        format!(
            "deploy {name}: {} sent; the leader compiles and replicates it",
            indicatif::BinaryBytes(bytes as u64)
        ),
    )
}

/// Bytes sent out of the total.
pub fn upload_style() -> indicatif::ProgressStyle {
    indicatif::ProgressStyle::with_template(
        "{msg} [{bar:30}] {binary_bytes}/{binary_total_bytes} ({binary_bytes_per_sec})",
    )
    .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar())
    .progress_chars("=> ")
}

/// Waiting for something that reports no progress of its own.
pub fn waiting_style() -> indicatif::ProgressStyle {
    indicatif::ProgressStyle::with_template("{spinner} {msg} ({elapsed})")
        .unwrap_or_else(|_| indicatif::ProgressStyle::default_spinner())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn dev_file(dir: &Path, urls: &[&str]) {
        let nodes: Vec<serde_json::Value> = urls
            .iter()
            .enumerate()
            .map(|(i, u)| {
                serde_json::json!({"id": i + 1, "url": u, "pid": 1, "data_dir": "d", "argv": []})
            })
            .collect();
        std::fs::create_dir_all(dir.join("keel-dev")).expect("mkdir");
        std::fs::write(
            dir.join(DEV_CLUSTER_FILE),
            serde_json::json!({ "nodes": nodes }).to_string(),
        )
        .expect("write");
    }

    #[test]
    fn the_token_comes_from_the_file_flag_then_the_variables_then_cluster_json_never_a_flag_value()
    {
        let dir = tempfile::tempdir().expect("tempdir");
        let cwd = dir.path();
        assert_eq!(
            resolve_token(None, None, None, Some(cwd)).expect("none"),
            None
        );
        dev_file(cwd, &["http://127.0.0.1:1"]);
        let mut cluster: serde_json::Value =
            serde_json::from_slice(&std::fs::read(cwd.join(DEV_CLUSTER_FILE)).expect("read"))
                .expect("json");
        cluster["admin_token_file"] = "admin.token".into();
        std::fs::write(cwd.join(DEV_CLUSTER_FILE), cluster.to_string()).expect("write");
        std::fs::write(cwd.join("keel-dev/admin.token"), "dev-token\n").expect("write");
        let got = |f: Option<&Path>, t: Option<&str>, e: Option<&str>| {
            resolve_token(f, t, e, Some(cwd)).expect("token")
        };
        assert_eq!(got(None, None, None).as_deref(), Some("dev-token"));
        std::fs::write(cwd.join("other"), " file-token \n").expect("write");
        let other = cwd.join("other");
        let other_s = other.to_string_lossy().into_owned();
        assert_eq!(
            got(None, None, Some(&other_s)).as_deref(),
            Some("file-token")
        );
        assert_eq!(
            got(None, Some("env"), Some(&other_s)).as_deref(),
            Some("env")
        );
        assert_eq!(got(None, Some(" "), None).as_deref(), Some("dev-token"));
        assert_eq!(
            got(Some(&other), Some("env"), None).as_deref(),
            Some("file-token")
        );
        assert!(resolve_token(Some(&cwd.join("missing")), None, None, Some(cwd)).is_err());
    }

    #[test]
    fn grant_paths_name_one_permission() {
        assert_eq!(
            grant_path("readers", "query", Some("kv")).expect("path"),
            "/v1/auth/roles/readers/grants/query:kv"
        );
        assert_eq!(
            grant_path("ops", "admin", None).expect("path"),
            "/v1/auth/roles/ops/grants/admin"
        );
        assert!(
            grant_path("r", "query", None).is_err(),
            "query needs a plugin"
        );
        assert!(grant_path("r", "write", Some("kv")).is_err());
        assert!(grant_path("r/x", "admin", None).is_err());
    }

    #[test]
    fn endpoints_come_from_the_flag_then_the_variable_then_cluster_json_then_the_default() {
        let dir = tempfile::tempdir().expect("tempdir");
        let cwd = dir.path();
        let (urls, from) = resolve_endpoints(&[], None, cwd).expect("default");
        assert_eq!(
            (urls, from),
            (vec![DEFAULT_ENDPOINT.to_string()], EndpointSource::Default)
        );

        dev_file(cwd, &["http://127.0.0.1:1", "http://127.0.0.1:2/"]);
        let (urls, from) = resolve_endpoints(&[], None, cwd).expect("dev");
        assert_eq!(urls, ["http://127.0.0.1:1", "http://127.0.0.1:2"]);
        assert_eq!(from, EndpointSource::DevCluster(cwd.join(DEV_CLUSTER_FILE)));
        // A blank variable is no variable.
        let (_, from) = resolve_endpoints(&[], Some(" "), cwd).expect("blank");
        assert!(matches!(from, EndpointSource::DevCluster(_)));

        let env = Some("http://a:1, http://b:2,");
        let (urls, from) = resolve_endpoints(&[], env, cwd).expect("env");
        assert_eq!(
            (urls, from),
            (
                vec!["http://a:1".into(), "http://b:2".into()],
                EndpointSource::Env
            )
        );

        let flag = vec!["http://f:1".to_string()];
        let (urls, from) = resolve_endpoints(&flag, env, cwd).expect("flag");
        assert_eq!((urls, from), (flag.clone(), EndpointSource::Flag));
    }

    #[test]
    fn a_broken_cluster_json_is_an_error_not_the_default() {
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::create_dir_all(dir.path().join("keel-dev")).expect("mkdir");
        std::fs::write(dir.path().join(DEV_CLUSTER_FILE), "{not json").expect("write");
        let e = resolve_endpoints(&[], None, dir.path()).expect_err("broken");
        assert!(
            format!("{e:#}").contains("not a keel dev cluster file"),
            "{e:#}"
        );
        dev_file(dir.path(), &[]);
        let e = resolve_endpoints(&[], None, dir.path()).expect_err("empty");
        assert!(format!("{e:#}").contains("lists no nodes"), "{e:#}");
    }

    #[test]
    fn statuses_map_to_the_documented_exit_codes() {
        assert_eq!(exit_for_status(StatusCode::OK), exit::OK);
        for s in [400, 404, 409, 410, 413, 422] {
            let s = StatusCode::from_u16(s).expect("status");
            assert_eq!(exit_for_status(s), exit::REFUSED, "{s}");
        }
        for s in [500, 503, 504] {
            let s = StatusCode::from_u16(s).expect("status");
            assert_eq!(exit_for_status(s), exit::SERVER, "{s}");
        }
        let err = |e: CallError| exit_for_error(&e.into());
        let (endpoints, last_error) = (vec![], String::new());
        assert_eq!(
            err(CallError::Unreachable {
                endpoints: endpoints.clone(),
                last_error: last_error.clone()
            }),
            exit::UNREACHABLE
        );
        assert_eq!(
            err(CallError::Unavailable {
                endpoints,
                last_error
            }),
            exit::SERVER
        );
        assert_eq!(
            err(CallError::TimedOut {
                url: String::new(),
                limit: Duration::ZERO
            }),
            exit::SERVER
        );
        assert_eq!(exit_for_error(&anyhow::anyhow!("a file")), exit::ERROR);
        let distinct: std::collections::BTreeSet<u8> = [
            exit::OK,
            exit::ERROR,
            exit::USAGE,
            exit::UNREACHABLE,
            exit::REFUSED,
            exit::SERVER,
        ]
        .into();
        assert_eq!(distinct.len(), 6);
    }

    #[test]
    fn a_table_aligns_its_columns_and_ends_lines_without_spaces() {
        let t = table(
            &["ID", "URL", "ROLE"],
            &[
                vec!["1".into(), "http://127.0.0.1:7001".into(), "Leader".into()],
                vec!["12".into(), "http://h:2".into(), "".into()],
            ],
        );
        assert_eq!(
            t,
            "ID  URL                    ROLE\n\
             1   http://127.0.0.1:7001  Leader\n\
             12  http://h:2\n"
        );
    }

    #[test]
    fn status_rows_show_lag_behind_the_leader_and_unreachable_members() {
        let members = vec![
            (1, "http://a".to_string(), true),
            (2, "http://b".to_string(), true),
            (3, "http://c".to_string(), true),
            (4, "http://d".to_string(), false),
        ];
        let st = |id: u64, role: &str, term: u64, commit: u64, applied: u64| {
            Ok(
                serde_json::json!({"node_id": id, "role": role, "term": term,
                "commit_index": commit, "applied_index": applied}),
            )
        };
        let answers = vec![
            st(1, "Follower", 3, 10, 9),
            st(2, "Leader", 3, 12, 12),
            Err(anyhow::anyhow!("connection refused")),
            st(4, "Follower", 3, 2, 2),
        ];
        let s = combine(&members, answers);
        assert_eq!(s.leader, Some(2));
        assert_eq!(s.commit_index, 12);
        let lags: Vec<Option<u64>> = s.members.iter().map(|m| m.lag).collect();
        assert_eq!(lags, [Some(3), Some(0), None, Some(10)]);
        assert!(!s.members[2].healthy);
        assert_eq!(s.members[3].role.as_deref(), Some("Learner"));
        assert_eq!(
            render_status(&s),
            "ID  URL       ROLE      TERM  COMMIT  APPLIED  LAG  HEALTH\n\
             1   http://a  Follower  3     10      9        3    healthy\n\
             2   http://b  Leader    3     12      12       0    healthy\n\
             3   http://c  -         -     -       -        -    unreachable\n\
             4   http://d  Learner   3     2       2        10   healthy\n"
        );
        let json = serde_json::to_value(&s).expect("json");
        assert_eq!(json["members"][2]["healthy"], false);
        assert_eq!(json["members"][0]["lag"], 3);
    }

    #[test]
    fn members_come_from_a_status_with_learners_marked() {
        let status = serde_json::json!({
            "members": {"1": "http://a", "2": "http://b", "10": "http://j"},
            "voters": [1, 2], "learners": [10]
        });
        let m = members_of(&status);
        assert_eq!(
            m,
            [
                (1, "http://a".to_string(), true),
                (2, "http://b".to_string(), true),
                (10, "http://j".to_string(), false)
            ]
        );
        assert_eq!(
            render_members(&m, Some(2)),
            "ID  URL       KIND     LEADER\n\
             1   http://a  voter\n\
             2   http://b  voter    yes\n\
             10  http://j  learner\n"
        );
    }

    #[test]
    fn server_sent_events_are_split_across_chunks_and_printed_as_lines() {
        let mut p = SseParser::default();
        assert!(
            p.push(b"data: {\"type\":\"state\",\"role\":\"Fol")
                .is_empty()
        );
        let events = p.push(b"lower\",\"term\":4,\"leader\":2}\n\ndata: {\"type\":\"config\",\"index\":9,\"voters\":[1,2],\"learners\":[3]}\n\n");
        assert_eq!(events.len(), 2);
        let lines: Vec<String> = events
            .iter()
            .map(|e| event_line(&serde_json::from_str(e).expect("json")))
            .collect();
        assert_eq!(lines[0], "term 4: Follower, leader 2");
        assert_eq!(
            lines[1],
            "configuration at index 9: voters [1,2], learners [3]"
        );
        let first = serde_json::json!({"node_id": 1, "role": "Leader", "term": 2, "leader_id": 1,
            "commit_index": 5, "applied_index": 5, "voters": [1], "learners": []});
        assert_eq!(
            event_line(&first),
            "node 1 is Leader in term 2, leader 1, commit 5, applied 5, voters [1], learners []"
        );
        assert_eq!(
            clock(std::time::UNIX_EPOCH + Duration::from_secs(3_723)),
            "01:02:03"
        );
    }
}
