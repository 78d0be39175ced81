//! Certificates for a cluster (`keel certs init DIR`, `keel certs node ID DIR`, and
//! `keel dev --tls`): a CA, and per-node certificates it signs that name their node id
//! (SAN URI `keel://node/ID`, see [`crate::tls::node_id_of`]) and the hosts they serve on.
//!
//! The files, in DIR: `ca.pem`, `ca-key.pem`, `node-ID.pem`, `node-ID-key.pem`. Keys are
//! written readable by their owner only.

use std::path::{Path, PathBuf};

use anyhow::Context;
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose, SanType,
};

use crate::tls::{NODE_URI_PREFIX, TlsFiles};

/// The CA's certificate file in `dir`.
pub fn ca_path(dir: &Path) -> PathBuf {
    dir.join("ca.pem")
}

fn ca_key_path(dir: &Path) -> PathBuf {
    dir.join("ca-key.pem")
}

/// The files of node `id`'s certificate in `dir`, with the CA beside them.
pub fn node_files(dir: &Path, id: u64) -> TlsFiles {
    TlsFiles {
        cert: dir.join(format!("node-{id}.pem")),
        key: dir.join(format!("node-{id}-key.pem")),
        ca: ca_path(dir),
    }
}

/// Creates a CA in `dir` (which must not hold one already: replacing a CA locks every node
/// out). Returns the CA certificate's path.
pub fn init(dir: &Path, name: &str) -> anyhow::Result<PathBuf> {
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let (cert_path, key_path) = (ca_path(dir), ca_key_path(dir));
    anyhow::ensure!(
        !cert_path.exists(),
        "{} exists already: a new CA would lock every node out (remove it first if you mean to)",
        cert_path.display()
    );
    let mut params = CertificateParams::new(Vec::<String>::new())?;
    params
        .distinguished_name
        .push(DnType::CommonName, format!("{name} CA"));
    params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    let key = KeyPair::generate()?;
    let cert = params.self_signed(&key)?;
    write_private(&key_path, &key.serialize_pem())?;
    std::fs::write(&cert_path, cert.pem())
        .with_context(|| format!("writing {}", cert_path.display()))?;
    Ok(cert_path)
}

/// Issues node `id`'s certificate from the CA in `dir`, valid for `hosts` (DNS names or IP
/// addresses its URL uses), for both serving and connecting to peers.
pub fn node(dir: &Path, id: u64, hosts: &[String]) -> anyhow::Result<TlsFiles> {
    let files = node_files(dir, id);
    let (ca_cert, ca_key) = (ca_path(dir), ca_key_path(dir));
    let ca_pem = std::fs::read_to_string(&ca_cert).with_context(|| {
        format!(
            "reading {} (run `keel certs init` first)",
            ca_cert.display()
        )
    })?;
    let ca_key_pem = std::fs::read_to_string(&ca_key)
        .with_context(|| format!("reading {}", ca_key.display()))?;
    let ca_key = KeyPair::from_pem(&ca_key_pem)
        .with_context(|| format!("{} is not a private key", ca_key.display()))?;
    let issuer = Issuer::from_ca_cert_pem(&ca_pem, ca_key)
        .with_context(|| format!("{} is not a CA certificate", ca_cert.display()))?;
    let params = node_params(id, hosts)?;
    let key = KeyPair::generate()?;
    let cert = params.signed_by(&key, &issuer)?;
    // Key first, then certificate, each renamed into place whole: a node reloading midway
    // sees a pair that does not match and keeps its old one until both are in (crate::tls).
    write_private(&files.key, &key.serialize_pem())?;
    write_atomic(&files.cert, cert.pem().as_bytes())?;
    Ok(files)
}

fn node_params(id: u64, hosts: &[String]) -> anyhow::Result<CertificateParams> {
    let mut params =
        CertificateParams::new(hosts.to_vec()).with_context(|| format!("host names {hosts:?}"))?;
    params
        .subject_alt_names
        .push(SanType::URI(format!("{NODE_URI_PREFIX}{id}").try_into()?));
    params
        .distinguished_name
        .push(DnType::CommonName, format!("node-{id}"));
    params.key_usages = vec![
        KeyUsagePurpose::DigitalSignature,
        KeyUsagePurpose::KeyEncipherment,
    ];
    params.extended_key_usages = vec![
        ExtendedKeyUsagePurpose::ServerAuth,
        ExtendedKeyUsagePurpose::ClientAuth,
    ];
    // A random serial, so that a rotated certificate is told apart from the one before.
    let mut serial = [0u8; 16];
    if let Ok(mut f) = std::fs::File::open("/dev/urandom") {
        use std::io::Read;
        let _ = f.read_exact(&mut serial);
    }
    serial[0] &= 0x7f; // a positive integer
    params.serial_number = Some(serial.to_vec().into());
    Ok(params)
}

/// Writes `text` through a temporary file renamed into place, readable by the owner only.
pub(crate) fn write_private(path: &Path, text: &str) -> anyhow::Result<()> {
    use std::os::unix::fs::OpenOptionsExt;
    let tmp = path.with_extension("pem.tmp");
    {
        use std::io::Write;
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&tmp)
            .with_context(|| format!("writing {}", tmp.display()))?;
        f.write_all(text.as_bytes())?;
        f.sync_all()?;
    }
    std::fs::rename(&tmp, path).with_context(|| format!("writing {}", path.display()))
}

fn write_atomic(path: &Path, bytes: &[u8]) -> anyhow::Result<()> {
    let tmp = path.with_extension("pem.tmp");
    std::fs::write(&tmp, bytes).with_context(|| format!("writing {}", tmp.display()))?;
    std::fs::rename(&tmp, path).with_context(|| format!("writing {}", path.display()))
}

/// `keel certs init DIR`: the CA, and where it is.
pub fn init_cli(dir: &Path, name: &str) -> anyhow::Result<()> {
    let ca = init(dir, name)?;
    println!(
        "CA: {}  (its key beside it: keep it off the nodes)",
        ca.display()
    );
    Ok(())
}

/// `keel certs node ID DIR`: the node's certificate, and the config fragment naming it.
pub fn node_cli(dir: &Path, id: u64, hosts: Vec<String>) -> anyhow::Result<()> {
    let hosts = if hosts.is_empty() {
        vec!["127.0.0.1".to_string(), "localhost".to_string()]
    } else {
        hosts
    };
    let files = node(dir, id, &hosts)?;
    // The config fragment for this node, ready to paste.
    println!(
        "{}",
        serde_json::to_string_pretty(&serde_json::json!({ "tls": files }))?
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use rustls::pki_types::CertificateDer;
    use rustls::pki_types::pem::PemObject;

    #[test]
    fn a_node_certificate_names_its_node_id_and_loads_as_a_tls_setup() {
        let dir = tempfile::tempdir().expect("tempdir");
        init(dir.path(), "test").expect("a CA");
        let files = node(dir.path(), 3, &["127.0.0.1".into(), "localhost".into()])
            .expect("a node certificate");
        let cert = CertificateDer::from_pem_file(&files.cert).expect("PEM");
        assert_eq!(crate::tls::node_id_of(&cert), Some(3));
        let tls = crate::tls::Tls::node(&files).expect("loads");
        assert!(tls.serves());
        assert!(
            init(dir.path(), "again").is_err(),
            "a second CA over the first is refused"
        );
    }
}
