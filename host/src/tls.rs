//! TLS on the client API and the peer transport (issue #13; docs/security.md).
//!
//! A [`Tls`] holds a node's certificate and key and the cluster CA, loaded from the files the
//! config names (`"tls": {"cert", "key", "ca"}`). The files are re-read when their
//! modification time or length changes, checked at every accept and every outgoing
//! handshake, so a rotated certificate is used from the next handshake on, without a
//! restart. A set that does not load (half written, key not matching the certificate)
//! keeps the last good one and is tried again at the next handshake.
//!
//! One `Tls` serves a process ([`install`]): `keel serve` installs its node's, the CLI one
//! holding only the CA. Every hyper client in the node and the CLI comes from [`client`],
//! which speaks `http://` and `https://` alike, trusts the installed CA, and presents the
//! node certificate when the server asks (peers require it: mutual TLS).
//!
//! A node certificate names its node id as a SAN URI `keel://node/ID` ([`node_id_of`]); the
//! server reads it after the handshake and hands it to the routes as a [`Transport`], so
//! that a connection may only speak as that id.

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, SystemTime};

use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use keel_raft::NodeId;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::{ResolvesClientCert, WebPkiServerVerifier};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::server::{ClientHello, ResolvesServerCert, WebPkiClientVerifier};
use rustls::sign::CertifiedKey;
use rustls::{ClientConfig, DigitallySignedStruct, RootCertStore, ServerConfig, SignatureScheme};
use serde::{Deserialize, Serialize};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

/// The files of a node's TLS setup, as named in its config.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsFiles {
    /// The node's certificate (PEM; the chain, leaf first).
    pub cert: PathBuf,
    /// Its private key (PEM).
    pub key: PathBuf,
    /// The cluster CA (PEM): the only issuer trusted for peers and servers.
    pub ca: PathBuf,
}

/// What a connection proved about itself, handed to every request as an extension.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Transport {
    /// The connection is TLS (so the peer endpoints require a node certificate).
    pub tls: bool,
    /// The node id of the client certificate the connection presented, if any.
    pub peer: Option<NodeId>,
}

/// A TLS setup that cannot be loaded.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// A file could not be read or holds no usable PEM.
    #[error("{path}: {reason}")]
    File {
        /// The file.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },
    /// rustls refused the material (a key that does not match the certificate, …).
    #[error("TLS setup from {cert}: {reason}")]
    Setup {
        /// The certificate file.
        cert: PathBuf,
        /// rustls' reason.
        reason: String,
    },
}

/// What one load of the files produced.
struct Material {
    /// The node's certificate and key (none for a client that only checks servers).
    key: Option<Arc<CertifiedKey>>,
    /// The server side: presents `key`, asks for (but does not require) a client
    /// certificate from the CA, so clients without one still reach the client API.
    server: Option<Arc<ServerConfig>>,
    /// Checks servers against the CA.
    verifier: Arc<WebPkiServerVerifier>,
}

struct Loaded {
    /// Modification time and length of each file, as last loaded or tried.
    stamps: Vec<Option<(SystemTime, u64)>>,
    material: Arc<Material>,
}

/// A process's TLS material, reloaded when its files change.
pub struct Tls {
    /// Certificate and key files (a client-only setup has none).
    cert_key: Option<(PathBuf, PathBuf)>,
    ca: PathBuf,
    loaded: Mutex<Loaded>,
}

impl fmt::Debug for Tls {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Tls")
            .field("cert_key", &self.cert_key)
            .field("ca", &self.ca)
            .finish()
    }
}

fn provider() -> Arc<CryptoProvider> {
    static PROVIDER: OnceLock<Arc<CryptoProvider>> = OnceLock::new();
    PROVIDER
        .get_or_init(|| Arc::new(rustls::crypto::ring::default_provider()))
        .clone()
}

impl Tls {
    /// A node's setup: its certificate and key, and the cluster CA.
    pub fn node(files: &TlsFiles) -> Result<Arc<Tls>, TlsError> {
        Tls::new(
            Some((files.cert.clone(), files.key.clone())),
            files.ca.clone(),
        )
    }

    /// A client's setup: only the CA that servers must be signed by.
    pub fn client_only(ca: &Path) -> Result<Arc<Tls>, TlsError> {
        Tls::new(None, ca.to_path_buf())
    }

    fn new(cert_key: Option<(PathBuf, PathBuf)>, ca: PathBuf) -> Result<Arc<Tls>, TlsError> {
        let stamps = stamps_of(&files_of(&cert_key, &ca));
        let material = Arc::new(load(&cert_key, &ca)?);
        Ok(Arc::new(Tls {
            cert_key,
            ca,
            loaded: Mutex::new(Loaded { stamps, material }),
        }))
    }

    /// Whether this setup can serve (it has a certificate and key).
    pub fn serves(&self) -> bool {
        self.cert_key.is_some()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Loaded> {
        self.loaded.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The current material, reloaded first if a file changed since the last look.
    fn current(&self) -> Arc<Material> {
        let stamps = stamps_of(&files_of(&self.cert_key, &self.ca));
        let mut loaded = self.lock();
        if stamps == loaded.stamps {
            return loaded.material.clone();
        }
        match load(&self.cert_key, &self.ca) {
            Ok(material) => {
                tracing::info!(target: "keel::tls", cert = ?self.cert_key.as_ref().map(|c| &c.0), ca = %self.ca.display(), "TLS files changed: reloaded");
                loaded.material = Arc::new(material);
                loaded.stamps = stamps;
            }
            // A rotation writes several files: between two of them the set may not match.
            // The stamps stay as they were, so the next handshake tries again.
            Err(e) => {
                tracing::warn!(target: "keel::tls", "TLS files changed but do not load (keeping the previous ones): {e}");
            }
        }
        loaded.material.clone()
    }
}

fn files_of<'a>(cert_key: &'a Option<(PathBuf, PathBuf)>, ca: &'a Path) -> Vec<&'a Path> {
    let mut files = vec![ca];
    if let Some((cert, key)) = cert_key {
        files.push(cert);
        files.push(key);
    }
    files
}

/// Modification time and length of each file (`None` for one that cannot be read).
fn stamps_of(files: &[&Path]) -> Vec<Option<(SystemTime, u64)>> {
    files
        .iter()
        .map(|f| {
            let m = std::fs::metadata(f).ok()?;
            Some((m.modified().ok()?, m.len()))
        })
        .collect()
}

/// Reads the files and builds the server and client sides from them.
fn load(cert_key: &Option<(PathBuf, PathBuf)>, ca: &Path) -> Result<Material, TlsError> {
    let mut roots = RootCertStore::empty();
    for cert in read_certs(ca)? {
        roots.add(cert).map_err(|e| TlsError::File {
            path: ca.to_path_buf(),
            reason: format!("not a usable CA certificate: {e}"),
        })?;
    }
    let roots = Arc::new(roots);
    let setup = |reason: String| TlsError::Setup {
        cert: cert_key
            .as_ref()
            .map_or_else(|| ca.to_path_buf(), |c| c.0.clone()),
        reason,
    };
    let verifier = WebPkiServerVerifier::builder_with_provider(roots.clone(), provider())
        .build()
        .map_err(|e| setup(e.to_string()))?;
    let Some((cert_path, key_path)) = cert_key else {
        return Ok(Material {
            key: None,
            server: None,
            verifier,
        });
    };
    let chain = read_certs(cert_path)?;
    let key = PrivateKeyDer::from_pem_file(key_path).map_err(|e| TlsError::File {
        path: key_path.clone(),
        reason: format!("no private key: {e}"),
    })?;
    let key = Arc::new(
        CertifiedKey::from_der(chain, key, &provider()).map_err(|e| setup(e.to_string()))?,
    );
    let clients = WebPkiClientVerifier::builder_with_provider(roots, provider())
        .allow_unauthenticated()
        .build()
        .map_err(|e| setup(e.to_string()))?;
    let mut server = ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| setup(e.to_string()))?
        .with_client_cert_verifier(clients)
        .with_cert_resolver(Arc::new(Fixed(key.clone())));
    server.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Material {
        key: Some(key),
        server: Some(Arc::new(server)),
        verifier,
    })
}

fn read_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let err = |reason: String| TlsError::File {
        path: path.to_path_buf(),
        reason,
    };
    let certs = CertificateDer::pem_file_iter(path)
        .map_err(|e| err(e.to_string()))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| err(e.to_string()))?;
    if certs.is_empty() {
        return Err(err("no certificate in the file".into()));
    }
    Ok(certs)
}

/// The server's certificate: the one loaded with its `ServerConfig`.
#[derive(Debug)]
struct Fixed(Arc<CertifiedKey>);

impl ResolvesServerCert for Fixed {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.0.clone())
    }
}

// ------------------------------------------------------------------ the process's setup

static INSTALLED: OnceLock<Arc<Tls>> = OnceLock::new();

/// Makes `tls` the process's setup (the first call wins; `keel serve` and the CLI call it
/// once at start).
pub fn install(tls: Arc<Tls>) {
    let _ = INSTALLED.set(tls);
}

/// The process's setup, if one was installed.
pub fn installed() -> Option<Arc<Tls>> {
    INSTALLED.get().cloned()
}

/// Which setup a client consults at each handshake: the installed one, or its own.
#[derive(Clone, Debug)]
struct Source(Option<Arc<Tls>>);

impl Source {
    fn material(&self) -> Option<Arc<Material>> {
        self.0.clone().or_else(installed).map(|tls| tls.current())
    }
}

impl ServerCertVerifier for Source {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let Some(m) = self.material() else {
            return Err(rustls::Error::General(format!(
                "{NO_CA}: set \"ca\" in cluster.json, $KEEL_CA, or the node's \"tls\" config"
            )));
        };
        m.verifier
            .verify_server_cert(end_entity, intermediates, server_name, ocsp_response, now)
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &provider().signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &provider().signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        provider()
            .signature_verification_algorithms
            .supported_schemes()
    }
}

impl ResolvesClientCert for Source {
    fn resolve(
        &self,
        _root_hint_subjects: &[&[u8]],
        _sigschemes: &[SignatureScheme],
    ) -> Option<Arc<CertifiedKey>> {
        self.material()?.key.clone()
    }

    fn has_certs(&self) -> bool {
        self.material().is_some_and(|m| m.key.is_some())
    }
}

/// ALPN is left to hyper-rustls (it refuses a config that sets it).
fn client_config(source: Source) -> ClientConfig {
    ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        // ring supports every default version, so this cannot fail; the fallback (the
        // process's default provider, ring too) keeps a panic out of the connector anyway.
        .unwrap_or_else(|_| ClientConfig::builder())
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(source.clone()))
        .with_client_cert_resolver(Arc::new(source))
}

/// The connector of every hyper client: plain TCP for `http://`, TLS for `https://`.
pub type Connector = hyper_rustls::HttpsConnector<HttpConnector>;

/// A connector that trusts the installed CA (or `own`'s) and presents its certificate.
pub fn connector_with(own: Option<Arc<Tls>>) -> Connector {
    let mut http = HttpConnector::new();
    http.set_nodelay(true);
    // The TLS layer above takes `https://` URLs; the TCP connector must let them through.
    http.enforce_http(false);
    hyper_rustls::HttpsConnectorBuilder::new()
        .with_tls_config(client_config(Source(own)))
        .https_or_http()
        .enable_http1()
        .wrap_connector(http)
}

/// A connector that uses the installed setup.
pub fn connector() -> Connector {
    connector_with(None)
}

/// How long a pooled connection may idle before the client drops it: under a node's
/// `header_timeout_ms` (10 s by default), after which the node closes it, so that a request
/// is not sent on a connection the node is closing.
pub const POOL_IDLE: Duration = Duration::from_secs(5);

/// A pooled hyper client over [`connector`].
pub fn client<B>() -> Client<Connector, B>
where
    B: hyper::body::Body + Send,
    B::Data: Send,
{
    Client::builder(TokioExecutor::new())
        .pool_idle_timeout(POOL_IDLE)
        .pool_timer(hyper_util::rt::TokioTimer::new())
        .build(connector())
}

/// Whether a client error (its text) is a certificate the client does not trust, or no CA
/// to check with: retrying cannot help.
pub fn is_trust_error(error: &str) -> bool {
    error.contains("invalid peer certificate") || error.contains(NO_CA)
}

const NO_CA: &str = "no CA to check the server against";

// ------------------------------------------------------------------------ server side

/// Why an incoming connection was not accepted.
#[derive(Debug, thiserror::Error)]
pub enum AcceptError {
    /// The client spoke plain HTTP to a TLS listener (it was told so).
    #[error("a plaintext client was told to use https://")]
    Plaintext,
    /// The handshake failed (an unknown CA, a bad certificate, …).
    #[error("TLS handshake: {0}")]
    Handshake(String),
    /// The handshake did not complete in time (`tls_handshake_timeout_ms`).
    #[error("TLS handshake: not complete in time")]
    TimedOut,
}

/// What a plaintext client gets from a TLS listener: a readable answer, not a hang or a
/// reset, so that `curl http://…` says what to do.
const PLAINTEXT_ANSWER: &str = "this Keel node speaks TLS only: use https:// (and the cluster CA, e.g. `curl --cacert ca.pem`)\n";

/// Accepts one connection: TLS handshake (after checking it is TLS at all), then the node
/// id its client certificate names, if it presented one. The whole of it, from the first
/// byte, must take less than `within`.
pub async fn accept(
    tls: &Tls,
    stream: TcpStream,
    within: Duration,
) -> Result<(tokio_rustls::server::TlsStream<TcpStream>, Transport), AcceptError> {
    let deadline = tokio::time::Instant::now() + within;
    let mut first = [0u8; 1];
    let peeked = tokio::time::timeout_at(deadline, stream.peek(&mut first)).await;
    match peeked {
        Ok(Ok(1)) => {}
        Ok(_) => return Err(AcceptError::Handshake("closed before a handshake".into())),
        Err(_) => return Err(AcceptError::TimedOut),
    }
    // 0x16: a TLS handshake record. Anything else is most likely an HTTP request line.
    if first[0] != 0x16 {
        let mut stream = stream;
        let answer = format!(
            "HTTP/1.1 400 Bad Request\r\ncontent-type: text/plain\r\nconnection: close\r\ncontent-length: {}\r\n\r\n{PLAINTEXT_ANSWER}",
            PLAINTEXT_ANSWER.len()
        );
        let _ = stream.write_all(answer.as_bytes()).await;
        let _ = stream.shutdown().await;
        return Err(AcceptError::Plaintext);
    }
    let Some(config) = tls.current().server.clone() else {
        return Err(AcceptError::Handshake("no server certificate".into()));
    };
    let acceptor = tokio_rustls::TlsAcceptor::from(config);
    let stream = tokio::time::timeout_at(deadline, acceptor.accept(stream))
        .await
        .map_err(|_| AcceptError::TimedOut)?
        .map_err(|e| AcceptError::Handshake(e.to_string()))?;
    let peer = stream
        .get_ref()
        .1
        .peer_certificates()
        .and_then(|certs| certs.first())
        .and_then(|cert| node_id_of(cert));
    Ok((stream, Transport { tls: true, peer }))
}

/// The SAN URI prefix that names a node in its certificate.
pub const NODE_URI_PREFIX: &str = "keel://node/";

/// The node id a certificate names: its SAN URI `keel://node/ID`, else a common name
/// `node-ID`. `None` for a certificate that names no node (a client's).
pub fn node_id_of(cert: &CertificateDer<'_>) -> Option<NodeId> {
    use x509_parser::extensions::GeneralName;
    let (_, cert) = x509_parser::parse_x509_certificate(cert.as_ref()).ok()?;
    if let Ok(Some(san)) = cert.subject_alternative_name() {
        for name in &san.value.general_names {
            if let GeneralName::URI(uri) = name
                && let Some(id) = uri.strip_prefix(NODE_URI_PREFIX)
            {
                return id.parse().ok();
            }
        }
    }
    cert.subject()
        .iter_common_name()
        .filter_map(|cn| cn.as_str().ok())
        .find_map(|cn| cn.strip_prefix("node-")?.parse().ok())
}

/// Whether only a peer (a node certificate, when TLS is on) may use this route: the Raft
/// endpoints and blob pushes. Clients upload blobs with `PUT /v1/blobs` (no hash).
pub fn peer_only(method: &hyper::Method, path: &str) -> bool {
    let parts: Vec<&str> = path.trim_matches('/').split('/').collect();
    matches!(
        (method, parts.as_slice()),
        (&hyper::Method::POST, ["v1", "raft"])
            | (&hyper::Method::POST, ["v1", "raft", "stream"])
            | (&hyper::Method::POST, ["v1", "raft", "snapshot"])
            | (&hyper::Method::PUT, ["v1", "blobs", _])
    )
}
