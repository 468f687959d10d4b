//! Certificates: the cluster CA, node keys, node certificates and the on-disk
//! node identity.
//!
//! Every node certificate names its node id twice: as the DNS name
//! `node-<id as 16 hex digits>.shoal` (which TLS name checks use, so a client
//! dialing node 7 refuses a server that is node 8) and in the common name
//! `shoal node <id>` for humans. Node certificates serve both as TLS server and
//! TLS client certificates, because every node both dials and accepts.
//!
//! Certificates are long-lived (CA 20 years, nodes 10 years): rotation of node
//! certificates and of the CA is not implemented yet. A joining node generates its
//! own key pair and sends only its public key; private keys never leave a node.

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose, PublicKeyData, SanType, SerialNumber, SubjectPublicKeyInfo,
};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, UnixTime};

/// Validity of the cluster CA certificate.
const CA_VALIDITY: Duration = Duration::from_secs(20 * 365 * 24 * 3600);
/// Validity of node certificates; long because rotation is not implemented yet.
const NODE_CERT_VALIDITY: Duration = Duration::from_secs(10 * 365 * 24 * 3600);
/// Certificates start to be valid a little in the past, so a peer whose clock runs
/// slightly behind the issuer's does not reject a freshly issued certificate.
const CLOCK_SKEW_ALLOWANCE: Duration = Duration::from_secs(3600);
/// X.509 limits a common name to 64 characters; the CA's is `shoal cluster CA <id>`.
pub const MAX_CLUSTER_ID_LEN: usize = 64 - CA_COMMON_NAME_PREFIX.len();
const CA_COMMON_NAME_PREFIX: &str = "shoal cluster CA ";

/// File names inside an identity directory.
pub const NODE_CERT_FILE: &str = "node.crt";
pub const NODE_KEY_FILE: &str = "node.key";
pub const CA_CERT_FILE: &str = "ca.crt";
pub const CA_KEY_FILE: &str = "ca.key";

#[derive(Debug, thiserror::Error)]
pub enum PkiError {
    #[error(
        "cluster id {id:?} cannot name a CA: use 1 to {MAX_CLUSTER_ID_LEN} printable ASCII \
         characters without spaces"
    )]
    InvalidClusterId { id: String },

    #[error("could not generate {what}: {detail}")]
    Generate { what: &'static str, detail: String },

    #[error("the {what} is not valid: {detail}")]
    Invalid { what: &'static str, detail: String },

    #[error(
        "the certificate names no shoal node: it needs exactly one DNS name of the form \
         node-<16 hex digits>.shoal ({detail})"
    )]
    NoNodeId { detail: String },

    #[error("the node public key is not an ECDSA P-256 SubjectPublicKeyInfo: {detail}")]
    InvalidPublicKey { detail: String },

    #[error("the certificate was not issued by the cluster CA: {detail}")]
    NotSignedByCa { detail: String },

    #[error("the node certificate does not belong to the node's private key")]
    KeyMismatch,

    #[error(
        "{} is missing; this directory holds no complete node identity \
         (expected {NODE_CERT_FILE}, {NODE_KEY_FILE} and {CA_CERT_FILE})",
        path.display()
    )]
    MissingFile { path: PathBuf },

    #[error("{} is corrupt: {detail}", path.display())]
    CorruptFile { path: PathBuf, detail: String },

    #[error("could not {action} {}: {source}", path.display())]
    Io {
        action: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// The DNS name a node's certificate carries and TLS clients check: lowercase
/// hex, zero-padded to 16 digits, so every id has exactly one spelling.
pub fn node_server_name(id: u64) -> String {
    format!("node-{id:016x}.shoal")
}

fn parse_node_server_name(name: &str) -> Option<u64> {
    let hex = name.strip_prefix("node-")?.strip_suffix(".shoal")?;
    if hex.len() != 16 || !hex.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')) {
        return None;
    }
    u64::from_str_radix(hex, 16).ok()
}

/// Reads the node id out of a node certificate's subject alternative names.
pub fn node_id_from_cert_der(der: &[u8]) -> Result<u64, PkiError> {
    let (_, cert) = x509_parser::parse_x509_certificate(der).map_err(|e| PkiError::Invalid {
        what: "certificate",
        detail: e.to_string(),
    })?;
    let san = cert
        .subject_alternative_name()
        .map_err(|e| PkiError::NoNodeId {
            detail: format!("unreadable subject alternative names: {e}"),
        })?
        .ok_or_else(|| PkiError::NoNodeId {
            detail: "it has no subject alternative names".into(),
        })?;
    let ids: Vec<u64> = san
        .value
        .general_names
        .iter()
        .filter_map(|name| match name {
            x509_parser::extensions::GeneralName::DNSName(dns) => parse_node_server_name(dns),
            _ => None,
        })
        .collect();
    match ids.as_slice() {
        [id] => Ok(*id),
        [] => Err(PkiError::NoNodeId {
            detail: "none of its DNS names has that form".into(),
        }),
        _ => Err(PkiError::NoNodeId {
            detail: format!("it names {} nodes", ids.len()),
        }),
    }
}

/// Lowercase hex SHA-256 of some bytes.
pub(crate) fn sha256_hex(bytes: &[u8]) -> String {
    hex(ring::digest::digest(&ring::digest::SHA256, bytes).as_ref())
}

pub(crate) fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write as _;
    let mut out = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        write!(out, "{b:02x}").expect("writing to a String cannot fail");
    }
    out
}

/// The fingerprint a join token carries: lowercase hex SHA-256 of the CA
/// certificate's DER encoding (64 characters).
pub fn fingerprint_of_pem(ca_cert_pem: &str) -> Result<String, PkiError> {
    Ok(sha256_hex(
        cert_der_from_pem(ca_cert_pem, "CA certificate")?.as_ref(),
    ))
}

/// The single certificate in a PEM text.
pub(crate) fn cert_der_from_pem(
    pem: &str,
    what: &'static str,
) -> Result<CertificateDer<'static>, PkiError> {
    CertificateDer::from_pem_slice(pem.as_bytes()).map_err(|e| PkiError::Invalid {
        what,
        detail: format!("no PEM certificate found ({e})"),
    })
}

/// Checks that `cert_der` is an end-entity certificate issued by `ca_der`, valid now,
/// with signatures the ring provider accepts. Names are not checked.
pub(crate) fn verify_issued_by(
    cert_der: &CertificateDer<'_>,
    ca_der: &CertificateDer<'_>,
    now: UnixTime,
) -> Result<(), rustls::Error> {
    let mut roots = rustls::RootCertStore::empty();
    roots.add(ca_der.clone().into_owned())?;
    let cert = rustls::server::ParsedCertificate::try_from(cert_der)?;
    let algorithms = rustls::crypto::ring::default_provider().signature_verification_algorithms;
    rustls::client::verify_server_cert_signed_by_trust_anchor(
        &cert,
        &roots,
        &[],
        now,
        algorithms.all,
    )
}

/// Makes `params` valid from a little before now for `validity`.
fn set_validity(params: &mut CertificateParams, validity: Duration) {
    let since_epoch = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default();
    let now = rcgen::date_time_ymd(1970, 1, 1) + since_epoch;
    params.not_before = now - CLOCK_SKEW_ALLOWANCE;
    params.not_after = now + validity;
}

fn random_serial() -> SerialNumber {
    let mut bytes: [u8; 16] = rand::random();
    // A positive serial without a leading zero byte keeps the DER integer 16 bytes.
    bytes[0] = (bytes[0] & 0x7f) | 0x01;
    SerialNumber::from_slice(&bytes)
}

fn generate_error(what: &'static str) -> impl FnOnce(rcgen::Error) -> PkiError {
    move |e| PkiError::Generate {
        what,
        detail: e.to_string(),
    }
}

/// The cluster's certificate authority. Only managers hold its private key.
#[derive(Clone)]
pub struct ClusterCa {
    pub cert_pem: String,
    pub key_pem: String,
}

impl std::fmt::Debug for ClusterCa {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClusterCa")
            .field("key_pem", &"<redacted>")
            .finish_non_exhaustive()
    }
}

impl ClusterCa {
    /// A new self-signed CA named `shoal cluster CA <cluster_id>`. It may sign node
    /// certificates only (path length 0).
    pub fn generate(cluster_id: &str) -> Result<Self, PkiError> {
        let id_ok = !cluster_id.is_empty()
            && cluster_id.len() <= MAX_CLUSTER_ID_LEN
            && cluster_id.bytes().all(|b| b.is_ascii_graphic());
        if !id_ok {
            return Err(PkiError::InvalidClusterId {
                id: cluster_id.chars().take(80).collect(),
            });
        }
        let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)
            .map_err(generate_error("the CA key"))?;
        let mut params = CertificateParams::default();
        params.distinguished_name = DistinguishedName::new();
        params.distinguished_name.push(
            DnType::CommonName,
            format!("{CA_COMMON_NAME_PREFIX}{cluster_id}"),
        );
        params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        set_validity(&mut params, CA_VALIDITY);
        params.serial_number = Some(random_serial());
        let cert = params
            .self_signed(&key)
            .map_err(generate_error("the CA certificate"))?;
        Ok(ClusterCa {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
        })
    }

    /// A CA from its certificate and key, checking that both parse and belong
    /// together.
    pub fn from_pem(cert_pem: &str, key_pem: &str) -> Result<Self, PkiError> {
        let key = KeyPair::from_pem(key_pem).map_err(|e| PkiError::Invalid {
            what: "CA private key",
            detail: e.to_string(),
        })?;
        let cert_der = cert_der_from_pem(cert_pem, "CA certificate")?;
        let (_, cert) =
            x509_parser::parse_x509_certificate(&cert_der).map_err(|e| PkiError::Invalid {
                what: "CA certificate",
                detail: e.to_string(),
            })?;
        if !cert.is_ca() {
            return Err(PkiError::Invalid {
                what: "CA certificate",
                detail: "it is not a CA certificate".into(),
            });
        }
        if cert.public_key().raw != key.subject_public_key_info().as_slice() {
            return Err(PkiError::Invalid {
                what: "CA private key",
                detail: "it is not the key of the CA certificate".into(),
            });
        }
        Ok(ClusterCa {
            cert_pem: cert_pem.to_owned(),
            key_pem: key_pem.to_owned(),
        })
    }

    /// Lowercase hex SHA-256 of the CA certificate (64 characters), as carried in
    /// join tokens.
    pub fn fingerprint(&self) -> Result<String, PkiError> {
        fingerprint_of_pem(&self.cert_pem)
    }

    /// Signs a certificate for `node_id` over the node's public key
    /// (SubjectPublicKeyInfo DER, ECDSA P-256), returned as PEM.
    pub fn issue_node_cert(
        &self,
        node_id: u64,
        node_public_key_der: &[u8],
    ) -> Result<String, PkiError> {
        let public_key = SubjectPublicKeyInfo::from_der(node_public_key_der).map_err(|e| {
            PkiError::InvalidPublicKey {
                detail: e.to_string(),
            }
        })?;
        if public_key.algorithm() != &rcgen::PKCS_ECDSA_P256_SHA256 {
            return Err(PkiError::InvalidPublicKey {
                detail: "the key uses another algorithm".into(),
            });
        }
        let ca_key = KeyPair::from_pem(&self.key_pem).map_err(|e| PkiError::Invalid {
            what: "CA private key",
            detail: e.to_string(),
        })?;
        let issuer =
            Issuer::from_ca_cert_pem(&self.cert_pem, ca_key).map_err(|e| PkiError::Invalid {
                what: "CA certificate",
                detail: e.to_string(),
            })?;
        let mut params = CertificateParams::default();
        params.distinguished_name = DistinguishedName::new();
        params
            .distinguished_name
            .push(DnType::CommonName, format!("shoal node {node_id}"));
        let dns_name = node_server_name(node_id)
            .try_into()
            .map_err(generate_error("the node certificate's DNS name"))?;
        params.subject_alt_names = vec![SanType::DnsName(dns_name)];
        params.is_ca = IsCa::ExplicitNoCa;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        params.use_authority_key_identifier_extension = true;
        set_validity(&mut params, NODE_CERT_VALIDITY);
        params.serial_number = Some(random_serial());
        let cert = params
            .signed_by(&public_key, &issuer)
            .map_err(generate_error("the node certificate"))?;
        Ok(cert.pem())
    }

    /// A complete identity for `node_id` with a freshly generated key: what the
    /// node that creates the cluster uses for itself.
    pub fn issue_identity(&self, node_id: u64) -> Result<NodeIdentity, PkiError> {
        let key = NodeKey::generate()?;
        let cert_pem = self.issue_node_cert(node_id, &key.public_key_der())?;
        NodeIdentity::from_parts(&key, cert_pem, self.cert_pem.clone())
    }

    /// Writes `ca.crt` and `ca.key` (mode 0600) into `dir`, each atomically.
    pub fn save(&self, dir: &Path) -> Result<(), PkiError> {
        create_dir(dir)?;
        write_atomically(&dir.join(CA_CERT_FILE), self.cert_pem.as_bytes(), false)?;
        write_atomically(&dir.join(CA_KEY_FILE), self.key_pem.as_bytes(), true)
    }

    /// Reads what [`ClusterCa::save`] wrote and checks that key and certificate match.
    pub fn load(dir: &Path) -> Result<Self, PkiError> {
        let cert_path = dir.join(CA_CERT_FILE);
        let key_path = dir.join(CA_KEY_FILE);
        let cert_pem = read_file(&cert_path)?;
        let key_pem = read_file(&key_path)?;
        ClusterCa::from_pem(&cert_pem, &key_pem).map_err(|e| match e {
            PkiError::Invalid {
                what: "CA certificate",
                ..
            } => corrupt(&cert_path, e),
            e => corrupt(&key_path, e),
        })
    }
}

/// A node's private key (ECDSA P-256).
pub struct NodeKey {
    key: KeyPair,
}

impl std::fmt::Debug for NodeKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("NodeKey(<redacted>)")
    }
}

impl NodeKey {
    pub fn generate() -> Result<Self, PkiError> {
        let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)
            .map_err(generate_error("a node key"))?;
        Ok(NodeKey { key })
    }

    pub fn from_pem(pem: &str) -> Result<Self, PkiError> {
        let key = KeyPair::from_pem(pem).map_err(|e| PkiError::Invalid {
            what: "node private key",
            detail: e.to_string(),
        })?;
        if key.algorithm() != &rcgen::PKCS_ECDSA_P256_SHA256 {
            return Err(PkiError::Invalid {
                what: "node private key",
                detail: "it is not an ECDSA P-256 key".into(),
            });
        }
        Ok(NodeKey { key })
    }

    /// PKCS#8 PEM of the private key.
    pub fn to_pem(&self) -> String {
        self.key.serialize_pem()
    }

    /// The SubjectPublicKeyInfo DER a joiner sends to be certified.
    pub fn public_key_der(&self) -> Vec<u8> {
        self.key.subject_public_key_info()
    }
}

/// Lowercase hex SHA-256 of a node's SubjectPublicKeyInfo DER: how the
/// cluster remembers which keys have joined, so the same key never joins
/// twice.
pub fn key_fingerprint(public_key_der: &[u8]) -> String {
    sha256_hex(public_key_der)
}

/// The SubjectPublicKeyInfo DER inside a certificate.
fn cert_public_key(cert_der: &[u8]) -> Result<Vec<u8>, PkiError> {
    let (_, cert) =
        x509_parser::parse_x509_certificate(cert_der).map_err(|e| PkiError::Invalid {
            what: "certificate",
            detail: e.to_string(),
        })?;
    Ok(cert.public_key().raw.to_vec())
}

fn corrupt(path: &Path, e: PkiError) -> PkiError {
    PkiError::CorruptFile {
        path: path.to_path_buf(),
        detail: e.to_string(),
    }
}

/// Everything a node needs to take part in the cluster's TLS: its certificate and
/// key, and the CA that every peer's certificate must chain to.
#[derive(Clone)]
pub struct NodeIdentity {
    pub node_id: u64,
    pub cert_pem: String,
    pub key_pem: String,
    pub ca_cert_pem: String,
}

impl std::fmt::Debug for NodeIdentity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NodeIdentity")
            .field("node_id", &self.node_id)
            .field("key_pem", &"<redacted>")
            .finish_non_exhaustive()
    }
}

impl NodeIdentity {
    /// Assembles an identity from a key and the certificate issued for it, checking
    /// that the certificate names a node, belongs to the key and chains to the CA.
    pub fn from_parts(
        key: &NodeKey,
        cert_pem: String,
        ca_cert_pem: String,
    ) -> Result<Self, PkiError> {
        let cert_der = cert_der_from_pem(&cert_pem, "node certificate")?;
        let ca_der = cert_der_from_pem(&ca_cert_pem, "CA certificate")?;
        let node_id = node_id_from_cert_der(&cert_der)?;
        if cert_public_key(&cert_der)? != key.public_key_der() {
            return Err(PkiError::KeyMismatch);
        }
        verify_issued_by(&cert_der, &ca_der, UnixTime::now()).map_err(|e| {
            PkiError::NotSignedByCa {
                detail: e.to_string(),
            }
        })?;
        Ok(NodeIdentity {
            node_id,
            cert_pem,
            key_pem: key.to_pem(),
            ca_cert_pem,
        })
    }

    /// Writes `node.crt`, `node.key` (mode 0600) and `ca.crt` into `dir`, each
    /// through a temporary file and a rename so a crash leaves no half-written file.
    pub fn save(&self, dir: &Path) -> Result<(), PkiError> {
        create_dir(dir)?;
        write_atomically(&dir.join(NODE_KEY_FILE), self.key_pem.as_bytes(), true)?;
        write_atomically(&dir.join(CA_CERT_FILE), self.ca_cert_pem.as_bytes(), false)?;
        // The certificate goes last: its presence marks a complete identity.
        write_atomically(&dir.join(NODE_CERT_FILE), self.cert_pem.as_bytes(), false)
    }

    /// Reads what [`NodeIdentity::save`] wrote, re-checking it the way
    /// [`NodeIdentity::from_parts`] does; the node id comes from the certificate.
    pub fn load(dir: &Path) -> Result<Self, PkiError> {
        let cert_path = dir.join(NODE_CERT_FILE);
        let key_path = dir.join(NODE_KEY_FILE);
        let ca_path = dir.join(CA_CERT_FILE);
        let cert_pem = read_file(&cert_path)?;
        let key_pem = read_file(&key_path)?;
        let ca_cert_pem = read_file(&ca_path)?;
        let key = NodeKey::from_pem(&key_pem).map_err(|e| corrupt(&key_path, e))?;
        cert_der_from_pem(&ca_cert_pem, "CA certificate").map_err(|e| corrupt(&ca_path, e))?;
        match NodeIdentity::from_parts(&key, cert_pem, ca_cert_pem) {
            Ok(identity) => Ok(identity),
            Err(PkiError::KeyMismatch) => Err(PkiError::CorruptFile {
                path: cert_path,
                detail: format!("it does not belong to the key in {}", key_path.display()),
            }),
            Err(PkiError::NotSignedByCa { detail }) => Err(PkiError::CorruptFile {
                path: cert_path,
                detail: format!(
                    "it was not issued by the CA in {}: {detail}",
                    ca_path.display()
                ),
            }),
            Err(e) => Err(corrupt(&cert_path, e)),
        }
    }
}

fn create_dir(dir: &Path) -> Result<(), PkiError> {
    fs::create_dir_all(dir).map_err(|source| PkiError::Io {
        action: "create directory",
        path: dir.to_path_buf(),
        source,
    })
}

fn read_file(path: &Path) -> Result<String, PkiError> {
    match fs::read_to_string(path) {
        Ok(text) => Ok(text),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Err(PkiError::MissingFile {
            path: path.to_path_buf(),
        }),
        Err(source) => Err(PkiError::Io {
            action: "read",
            path: path.to_path_buf(),
            source,
        }),
    }
}

/// Writes `contents` to a temporary file beside `path`, syncs it and renames it
/// over `path`. Secret files are created with mode 0600 from the start.
fn write_atomically(path: &Path, contents: &[u8], secret: bool) -> Result<(), PkiError> {
    let io_error = |action: &'static str, path: &Path| {
        let path = path.to_path_buf();
        move |source| PkiError::Io {
            action,
            path,
            source,
        }
    };
    let file_name = path.file_name().and_then(|n| n.to_str()).unwrap_or("file");
    let tmp_path = path.with_file_name(format!(".{file_name}.tmp"));
    let mut options = fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(if secret { 0o600 } else { 0o644 });
    }
    #[cfg(not(unix))]
    let _ = secret;
    let mut file = options
        .open(&tmp_path)
        .map_err(io_error("create", &tmp_path))?;
    #[cfg(unix)]
    if secret {
        // A stale temporary file keeps its old mode; enforce the secret one.
        use std::os::unix::fs::PermissionsExt;
        file.set_permissions(fs::Permissions::from_mode(0o600))
            .map_err(io_error("set permissions of", &tmp_path))?;
    }
    file.write_all(contents)
        .map_err(io_error("write", &tmp_path))?;
    file.sync_all().map_err(io_error("sync", &tmp_path))?;
    drop(file);
    fs::rename(&tmp_path, path).map_err(io_error("rename into place", path))?;
    if let Some(parent) = path.parent() {
        // Make the rename itself durable.
        if let Ok(dir) = fs::File::open(parent) {
            let _ = dir.sync_all();
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn node_server_names_are_16_lowercase_hex_digits() {
        // (id, name)
        let cases = [
            (0u64, "node-0000000000000000.shoal"),
            (1, "node-0000000000000001.shoal"),
            (0xdead_beef, "node-00000000deadbeef.shoal"),
            (u64::MAX, "node-ffffffffffffffff.shoal"),
        ];
        for (id, name) in cases {
            assert_eq!(node_server_name(id), name);
            assert_eq!(parse_node_server_name(name), Some(id));
        }
        for bad in [
            "node-1.shoal",
            "node-000000000000000G.shoal",
            "node-00000000DEADBEEF.shoal",
            "node-00000000000000001.shoal",
            "node-0000000000000001.example",
            "0000000000000001.shoal",
        ] {
            assert_eq!(parse_node_server_name(bad), None, "{bad}");
        }
    }

    #[test]
    fn issued_certificate_names_the_node_and_chains_to_the_ca() {
        let ca = ClusterCa::generate("test-cluster").unwrap();
        for node_id in [1u64, 42, u64::MAX] {
            let identity = ca.issue_identity(node_id).unwrap();
            assert_eq!(identity.node_id, node_id);
            let der = cert_der_from_pem(&identity.cert_pem, "node certificate").unwrap();
            assert_eq!(node_id_from_cert_der(&der).unwrap(), node_id);

            let (_, parsed) = x509_parser::parse_x509_certificate(&der).unwrap();
            assert_eq!(
                parsed.subject().to_string(),
                format!("CN=shoal node {node_id}")
            );
            assert!(!parsed.is_ca());

            let ca_der = cert_der_from_pem(&ca.cert_pem, "CA certificate").unwrap();
            verify_issued_by(&der, &ca_der, UnixTime::now()).unwrap();
        }
    }

    #[test]
    fn ca_certificate_is_a_constrained_ca_named_after_the_cluster() {
        let ca = ClusterCa::generate("c-123").unwrap();
        let der = cert_der_from_pem(&ca.cert_pem, "CA certificate").unwrap();
        let (_, parsed) = x509_parser::parse_x509_certificate(&der).unwrap();
        assert!(parsed.is_ca());
        assert_eq!(parsed.subject().to_string(), "CN=shoal cluster CA c-123");
        let constraints = parsed.basic_constraints().unwrap().unwrap().value;
        assert_eq!(constraints.path_len_constraint, Some(0));
    }

    #[test]
    fn a_certificate_from_another_ca_does_not_verify() {
        let ca = ClusterCa::generate("one").unwrap();
        let other = ClusterCa::generate("two").unwrap();
        let identity = other.issue_identity(5).unwrap();
        let der = cert_der_from_pem(&identity.cert_pem, "node certificate").unwrap();
        let ca_der = cert_der_from_pem(&ca.cert_pem, "CA certificate").unwrap();
        assert!(verify_issued_by(&der, &ca_der, UnixTime::now()).is_err());

        let key = NodeKey::generate().unwrap();
        let cert_pem = other.issue_node_cert(5, &key.public_key_der()).unwrap();
        let err = NodeIdentity::from_parts(&key, cert_pem, ca.cert_pem.clone()).unwrap_err();
        assert!(matches!(err, PkiError::NotSignedByCa { .. }), "{err}");
    }

    #[test]
    fn identity_refuses_a_certificate_for_another_key() {
        let ca = ClusterCa::generate("one").unwrap();
        let key = NodeKey::generate().unwrap();
        let other_key = NodeKey::generate().unwrap();
        let cert_pem = ca.issue_node_cert(9, &other_key.public_key_der()).unwrap();
        let err = NodeIdentity::from_parts(&key, cert_pem, ca.cert_pem.clone()).unwrap_err();
        assert!(matches!(err, PkiError::KeyMismatch));
    }

    #[test]
    fn fingerprint_is_stable_lowercase_hex_sha256() {
        let ca = ClusterCa::generate("fp").unwrap();
        let fp = ca.fingerprint().unwrap();
        assert_eq!(fp.len(), 64);
        assert!(
            fp.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')),
            "{fp}"
        );
        assert_eq!(fingerprint_of_pem(&ca.cert_pem).unwrap(), fp);
        assert_ne!(
            ClusterCa::generate("fp").unwrap().fingerprint().unwrap(),
            fp
        );
        let der = cert_der_from_pem(&ca.cert_pem, "CA certificate").unwrap();
        assert_eq!(fp, sha256_hex(&der));
        assert!(fingerprint_of_pem("not a pem").is_err());
    }

    #[test]
    fn sha256_hex_matches_a_known_vector() {
        assert_eq!(
            sha256_hex(b"abc"),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
    }

    #[test]
    fn node_key_round_trips_through_pem() {
        let key = NodeKey::generate().unwrap();
        let again = NodeKey::from_pem(&key.to_pem()).unwrap();
        assert_eq!(key.public_key_der(), again.public_key_der());
        assert!(NodeKey::from_pem("garbage").is_err());
    }

    #[test]
    fn issuing_refuses_bad_public_keys_and_bad_cluster_ids() {
        let ca = ClusterCa::generate("k").unwrap();
        let err = ca.issue_node_cert(1, b"\x30\x03\x02\x01\x00").unwrap_err();
        assert!(matches!(err, PkiError::InvalidPublicKey { .. }), "{err}");
        let ed25519 = KeyPair::generate_for(&rcgen::PKCS_ED25519).unwrap();
        let err = ca
            .issue_node_cert(1, &ed25519.subject_public_key_info())
            .unwrap_err();
        assert!(err.to_string().contains("another algorithm"), "{err}");

        for bad in ["", "has space", &"x".repeat(MAX_CLUSTER_ID_LEN + 1)] {
            let err = ClusterCa::generate(bad).unwrap_err();
            assert!(matches!(err, PkiError::InvalidClusterId { .. }), "{bad:?}");
        }
        ClusterCa::generate(&"x".repeat(MAX_CLUSTER_ID_LEN)).unwrap();
    }

    #[test]
    fn identity_saves_and_loads_with_a_private_key_file() {
        let dir = tempfile::tempdir().unwrap();
        let ca = ClusterCa::generate("disk").unwrap();
        let identity = ca.issue_identity(77).unwrap();
        identity.save(dir.path()).unwrap();
        let loaded = NodeIdentity::load(dir.path()).unwrap();
        assert_eq!(loaded.node_id, 77);
        assert_eq!(loaded.cert_pem, identity.cert_pem);
        assert_eq!(loaded.key_pem, identity.key_pem);
        assert_eq!(loaded.ca_cert_pem, identity.ca_cert_pem);

        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = fs::metadata(dir.path().join(NODE_KEY_FILE))
                .unwrap()
                .permissions()
                .mode();
            assert_eq!(mode & 0o777, 0o600);
        }
        let leftovers: Vec<_> = fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .filter(|n| n.ends_with(".tmp"))
            .collect();
        assert!(leftovers.is_empty(), "{leftovers:?}");

        // Saving again over an existing identity replaces it.
        ca.issue_identity(78).unwrap().save(dir.path()).unwrap();
        assert_eq!(NodeIdentity::load(dir.path()).unwrap().node_id, 78);
    }

    #[test]
    fn loading_a_broken_identity_names_the_file() {
        let ca = ClusterCa::generate("disk").unwrap();
        let other_ca = ClusterCa::generate("other").unwrap();
        let identity = ca.issue_identity(3).unwrap();
        // (file to damage, replacement contents, words the error must contain)
        let cases: Vec<(&str, Option<String>, &str)> = vec![
            (NODE_CERT_FILE, None, "node.crt is missing"),
            (NODE_KEY_FILE, None, "node.key is missing"),
            (CA_CERT_FILE, None, "ca.crt is missing"),
            (
                NODE_CERT_FILE,
                Some("garbage".into()),
                "node.crt is corrupt",
            ),
            (NODE_KEY_FILE, Some("garbage".into()), "node.key is corrupt"),
            (CA_CERT_FILE, Some("garbage".into()), "ca.crt is corrupt"),
            (
                NODE_KEY_FILE,
                Some(NodeKey::generate().unwrap().to_pem()),
                "does not belong to the key",
            ),
            (
                CA_CERT_FILE,
                Some(other_ca.cert_pem.clone()),
                "not issued by the CA",
            ),
        ];
        for (file, contents, expected) in cases {
            let dir = tempfile::tempdir().unwrap();
            identity.save(dir.path()).unwrap();
            let path = dir.path().join(file);
            match contents {
                None => fs::remove_file(&path).unwrap(),
                Some(text) => fs::write(&path, text).unwrap(),
            }
            let err = NodeIdentity::load(dir.path()).unwrap_err().to_string();
            assert!(err.contains(expected), "{file}: {err}");
        }
    }

    #[test]
    fn cluster_ca_from_pem_checks_its_parts() {
        let ca = ClusterCa::generate("pem").unwrap();
        let other = ClusterCa::generate("other").unwrap();
        let node = ca.issue_identity(1).unwrap();
        ClusterCa::from_pem(&ca.cert_pem, &ca.key_pem).unwrap();
        // (certificate, key, words the error must contain)
        let cases = [
            (
                ca.cert_pem.as_str(),
                other.key_pem.as_str(),
                "not the key of the CA certificate",
            ),
            (
                "garbage",
                ca.key_pem.as_str(),
                "CA certificate is not valid",
            ),
            (
                ca.cert_pem.as_str(),
                "garbage",
                "CA private key is not valid",
            ),
            (
                node.cert_pem.as_str(),
                node.key_pem.as_str(),
                "not a CA certificate",
            ),
        ];
        for (cert, key, expected) in cases {
            let err = ClusterCa::from_pem(cert, key).unwrap_err().to_string();
            assert!(err.contains(expected), "{err}");
        }
    }

    #[test]
    fn cluster_ca_saves_and_loads() {
        let dir = tempfile::tempdir().unwrap();
        let ca = ClusterCa::generate("disk").unwrap();
        ca.save(dir.path()).unwrap();
        let loaded = ClusterCa::load(dir.path()).unwrap();
        assert_eq!(loaded.cert_pem, ca.cert_pem);
        assert_eq!(loaded.key_pem, ca.key_pem);
        // The loaded CA can still issue certificates that chain to it.
        loaded.issue_identity(1).unwrap();

        fs::write(
            dir.path().join(CA_KEY_FILE),
            NodeKey::generate().unwrap().to_pem(),
        )
        .unwrap();
        let err = ClusterCa::load(dir.path()).unwrap_err().to_string();
        assert!(err.contains("ca.key is corrupt"), "{err}");
    }
}
