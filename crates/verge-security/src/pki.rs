//! The cluster's certificate authority and the certificates it issues.
//!
//! `verge server` creates the CA on first start (`ca.crt`, `ca.key` 0600 in
//! its data dir). Every certificate names who holds it with a SPIFFE-style
//! URI (`spiffe://verge/node/ID`, `spiffe://verge/user/NAME`,
//! `spiffe://verge/server`) and a DNS name clients verify against
//! ([`SERVER_NAME`] or [`NODE_NAME`]), so addresses never have to appear in
//! certificates: the CA pins trust, the URI says who it is.
//!
//! Keys are Ed25519: small, fast to make (an agent makes one at join) and
//! usable for TLS and for signing attestation evidence alike.

use std::path::Path;

use rcgen::{
    BasicConstraints, CertificateParams, CertificateSigningRequestParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    KeyPair, KeyUsagePurpose, SanType, SerialNumber, PKCS_ED25519,
};

use crate::fsutil::{self, hex};

/// The DNS name in the server's certificate; clients verify it whatever
/// address they dialled.
pub const SERVER_NAME: &str = "server.verge";
/// The DNS name in every node certificate, verified on agent-to-agent
/// connections before the node identity itself is checked.
pub const NODE_NAME: &str = "node.verge";

/// How far before its issue time a leaf certificate's validity starts, for
/// clocks slightly behind the server's: issue time = `not_before` + this.
pub const NOT_BEFORE_SLACK_MS: u64 = 300_000;

const URI_PREFIX: &str = "spiffe://verge/";

/// Who a certificate belongs to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Identity {
    /// The control plane.
    Server,
    /// An edge node, by node id.
    Node(String),
    /// A person or tool holding an API token, by token name.
    User(String),
}

impl Identity {
    fn uri(&self) -> String {
        match self {
            Identity::Server => format!("{URI_PREFIX}server"),
            Identity::Node(id) => format!("{URI_PREFIX}node/{id}"),
            Identity::User(name) => format!("{URI_PREFIX}user/{name}"),
        }
    }

    fn from_uri(uri: &str) -> Option<Identity> {
        let rest = uri.strip_prefix(URI_PREFIX)?;
        let ok = |s: &str| !s.is_empty() && s.len() <= 253 && s.chars().all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c));
        match rest.split_once('/') {
            None if rest == "server" => Some(Identity::Server),
            Some(("node", id)) if ok(id) => Some(Identity::Node(id.to_string())),
            Some(("user", name)) if ok(name) => Some(Identity::User(name.to_string())),
            _ => None,
        }
    }

    fn common_name(&self) -> String {
        match self {
            Identity::Server => "verge server".into(),
            Identity::Node(id) => format!("verge node {id}"),
            Identity::User(name) => format!("verge user {name}"),
        }
    }
}

impl std::fmt::Display for Identity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.uri())
    }
}

/// Why a certificate operation failed.
#[derive(Debug, thiserror::Error)]
pub enum PkiError {
    /// Reading or writing key material failed.
    #[error("{path}: {err}")]
    Io { path: String, err: std::io::Error },
    /// A certificate, key or CSR could not be parsed, or signing failed.
    #[error("{0}")]
    Invalid(String),
}

fn invalid(what: &str) -> impl Fn(rcgen::Error) -> PkiError + '_ {
    move |e| PkiError::Invalid(format!("{what}: {e}"))
}

fn io_err(path: &Path) -> impl Fn(std::io::Error) -> PkiError + '_ {
    move |err| PkiError::Io { path: path.display().to_string(), err }
}

/// A certificate just issued: PEM, serial and expiry.
#[derive(Debug, Clone)]
pub struct Issued {
    /// The certificate, PEM.
    pub cert_pem: String,
    /// Its serial number, hex.
    pub serial: String,
    /// When it stops being valid, Unix ms.
    pub not_after_ms: u64,
}

/// The cluster CA: signs server, node and user certificates.
pub struct Ca {
    cert: rcgen::Certificate,
    key: KeyPair,
    pem: String,
}

/// How long the CA certificate is valid: ten years.
const CA_TTL_MS: u64 = 10 * 365 * 24 * 3_600_000;

fn time_of(ms: u64) -> time::OffsetDateTime {
    time::OffsetDateTime::from_unix_timestamp((ms / 1000) as i64).unwrap_or(time::OffsetDateTime::UNIX_EPOCH)
}

fn random_serial() -> SerialNumber {
    serial_from(fsutil::random_bytes::<16>())
}

/// A 16-byte serial whose DER integer is exactly these bytes: the top bit
/// cleared keeps it positive, the next one set keeps DER from dropping a
/// leading zero byte (which would make the serial we report differ from the
/// one in the certificate).
fn serial_from(mut b: [u8; 16]) -> SerialNumber {
    b[0] = b[0] & 0x7f | 0x40;
    SerialNumber::from_slice(&b)
}

impl Ca {
    /// Loads the CA from `dir/ca.crt` and `dir/ca.key`, or creates both
    /// (key 0600) when neither exists. Returns the CA and whether it is new.
    pub fn load_or_create(dir: &Path, now_ms: u64) -> Result<(Ca, bool), PkiError> {
        let (crt_path, key_path) = (dir.join("ca.crt"), dir.join("ca.key"));
        if crt_path.exists() || key_path.exists() {
            let pem = std::fs::read_to_string(&crt_path).map_err(io_err(&crt_path))?;
            let key_pem = std::fs::read_to_string(&key_path).map_err(io_err(&key_path))?;
            let key = KeyPair::from_pem(&key_pem).map_err(invalid("ca.key"))?;
            let params = CertificateParams::from_ca_cert_pem(&pem).map_err(invalid("ca.crt"))?;
            // Re-signing the parsed parameters gives the issuer rcgen signs
            // with; the distributed certificate stays the one on disk.
            let cert = params.self_signed(&key).map_err(invalid("ca.crt"))?;
            return Ok((Ca { cert, key, pem }, false));
        }
        fsutil::private_dir(dir).map_err(io_err(dir))?;
        let key = KeyPair::generate_for(&PKCS_ED25519).map_err(invalid("CA key"))?;
        let mut params = CertificateParams::default();
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, "Verge cluster CA");
        dn.push(DnType::OrganizationName, "Verge");
        params.distinguished_name = dn;
        params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign, KeyUsagePurpose::DigitalSignature];
        params.not_before = time_of(now_ms.saturating_sub(3_600_000));
        params.not_after = time_of(now_ms + CA_TTL_MS);
        params.serial_number = Some(random_serial());
        let cert = params.self_signed(&key).map_err(invalid("CA certificate"))?;
        let pem = cert.pem();
        fsutil::write_secret(&key_path, key.serialize_pem().as_bytes()).map_err(io_err(&key_path))?;
        fsutil::write_atomic(&crt_path, pem.as_bytes(), 0o644).map_err(io_err(&crt_path))?;
        Ok((Ca { cert, key, pem }, true))
    }

    /// The CA certificate, PEM, as written to `ca.crt`.
    pub fn pem(&self) -> &str {
        &self.pem
    }

    /// The CA certificate, DER.
    pub fn der(&self) -> Result<Vec<u8>, PkiError> {
        pem_certs(&self.pem)?.into_iter().next().ok_or_else(|| PkiError::Invalid("ca.crt holds no certificate".into()))
    }

    /// `sha256:HEX` of the CA certificate: what `--ca-hash` pins.
    pub fn fingerprint(&self) -> Result<String, PkiError> {
        Ok(fingerprint(&self.der()?))
    }

    fn leaf_params(
        identity: &Identity,
        dns: &[String],
        ips: &[std::net::IpAddr],
        now_ms: u64,
        ttl_ms: u64,
    ) -> Result<CertificateParams, PkiError> {
        let mut params = CertificateParams::default();
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, identity.common_name());
        params.distinguished_name = dn;
        let uri = identity.uri().try_into().map_err(|e| PkiError::Invalid(format!("identity {identity}: {e}")))?;
        params.subject_alt_names.push(SanType::URI(uri));
        for name in dns {
            let n = name.clone().try_into().map_err(|e| PkiError::Invalid(format!("name {name:?}: {e}")))?;
            params.subject_alt_names.push(SanType::DnsName(n));
        }
        params.subject_alt_names.extend(ips.iter().map(|ip| SanType::IpAddress(*ip)));
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth, ExtendedKeyUsagePurpose::ClientAuth];
        params.not_before = time_of(now_ms.saturating_sub(NOT_BEFORE_SLACK_MS));
        params.not_after = time_of(now_ms + ttl_ms);
        params.serial_number = Some(random_serial());
        params.use_authority_key_identifier_extension = true;
        Ok(params)
    }

    fn issued(cert: rcgen::Certificate, now_ms: u64, ttl_ms: u64) -> Issued {
        let serial = cert.params().serial_number.as_ref().map(|s| hex(&s.to_bytes())).unwrap_or_default();
        Issued { cert_pem: cert.pem(), serial, not_after_ms: (now_ms + ttl_ms) / 1000 * 1000 }
    }

    /// A fresh key and certificate for the server's listeners, valid for
    /// [`SERVER_NAME`], `localhost`, loopback and `extra` names. Returns the
    /// certificate and the key as PKCS#8 DER.
    pub fn issue_server(&self, extra: &[String], now_ms: u64, ttl_ms: u64) -> Result<(Issued, Vec<u8>), PkiError> {
        let key = KeyPair::generate_for(&PKCS_ED25519).map_err(invalid("server key"))?;
        let mut dns = vec![SERVER_NAME.to_string(), "localhost".to_string()];
        let mut ips = vec![std::net::IpAddr::from([127, 0, 0, 1]), std::net::IpAddr::from(std::net::Ipv6Addr::LOCALHOST)];
        for e in extra {
            match e.parse() {
                Ok(ip) => ips.push(ip),
                Err(_) => dns.push(e.clone()),
            }
        }
        let params = Ca::leaf_params(&Identity::Server, &dns, &ips, now_ms, ttl_ms)?;
        let cert = params.signed_by(&key, &self.cert, &self.key).map_err(invalid("server certificate"))?;
        Ok((Ca::issued(cert, now_ms, ttl_ms), key.serialize_der()))
    }

    /// Signs a CSR for `identity`. Only the CSR's key is taken (its
    /// signature proves possession); names, usages and validity are the
    /// CA's, so a CSR cannot ask for more than it is given.
    pub fn sign_csr(&self, csr_pem: &str, identity: &Identity, now_ms: u64, ttl_ms: u64) -> Result<Issued, PkiError> {
        if csr_pem.len() > 16 << 10 {
            return Err(PkiError::Invalid("CSR larger than 16 KiB".into()));
        }
        let mut csr = CertificateSigningRequestParams::from_pem(csr_pem).map_err(invalid("CSR"))?;
        let dns = match identity {
            Identity::Node(_) => vec![NODE_NAME.to_string()],
            _ => Vec::new(),
        };
        csr.params = Ca::leaf_params(identity, &dns, &[], now_ms, ttl_ms)?;
        let cert = csr.signed_by(&self.cert, &self.key).map_err(invalid("signing the CSR"))?;
        Ok(Ca::issued(cert, now_ms, ttl_ms))
    }
}

/// Whether `cert` names a node whose certificates were revoked (in
/// `revoked`, node id → revocation time) after it was issued.
pub fn revoked(cert: &CertInfo, revoked: &std::collections::BTreeMap<String, u64>) -> bool {
    let Some(Identity::Node(id)) = &cert.identity else { return false };
    let issued = cert.not_before_ms + NOT_BEFORE_SLACK_MS;
    revoked.get(id).is_some_and(|&at| issued <= at)
}

/// `sha256:HEX` of a DER certificate.
pub fn fingerprint(der: &[u8]) -> String {
    format!("sha256:{}", fsutil::sha256_hex(der))
}

/// A new Ed25519 key pair (a node's or a CLI user's).
pub fn new_key() -> Result<KeyPair, PkiError> {
    KeyPair::generate_for(&PKCS_ED25519).map_err(invalid("key"))
}

/// Loads a key pair from PEM (as [`KeyPair::serialize_pem`] wrote it).
pub fn load_key(pem: &str) -> Result<KeyPair, PkiError> {
    KeyPair::from_pem(pem).map_err(invalid("key"))
}

/// A CSR for `key`, PEM. The CA ignores what it asks for beyond the key.
pub fn csr(key: &KeyPair) -> Result<String, PkiError> {
    let params = CertificateParams::default();
    params.serialize_request(key).map_err(invalid("CSR"))?.pem().map_err(invalid("CSR"))
}

/// The DER certificates in a PEM bundle, in order.
pub fn pem_certs(pem: &str) -> Result<Vec<Vec<u8>>, PkiError> {
    let mut out = Vec::new();
    for p in x509_parser::pem::Pem::iter_from_buffer(pem.as_bytes()) {
        let p = p.map_err(|e| PkiError::Invalid(format!("PEM: {e}")))?;
        if p.label == "CERTIFICATE" {
            out.push(p.contents);
        }
    }
    if out.is_empty() {
        return Err(PkiError::Invalid("no certificate in PEM".into()));
    }
    Ok(out)
}

/// What Verge reads from a peer's certificate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertInfo {
    /// The holder, from the `spiffe://verge/…` URI; `None` for foreign certificates.
    pub identity: Option<Identity>,
    /// Serial number, hex.
    pub serial: String,
    /// Validity, Unix ms.
    pub not_before_ms: u64,
    /// Expiry, Unix ms.
    pub not_after_ms: u64,
    /// The raw Ed25519 public key (32 bytes) when the key is Ed25519.
    pub ed25519_public_key: Option<Vec<u8>>,
}

impl CertInfo {
    /// Reads a DER certificate. Does not verify it: callers pass only
    /// certificates rustls has already verified against the CA.
    pub fn parse(der: &[u8]) -> Result<CertInfo, PkiError> {
        use x509_parser::prelude::*;
        let (_, cert) = X509Certificate::from_der(der).map_err(|e| PkiError::Invalid(format!("certificate: {e}")))?;
        let mut identity = None;
        if let Ok(Some(san)) = cert.subject_alternative_name() {
            for name in &san.value.general_names {
                if let GeneralName::URI(uri) = name {
                    identity = identity.or_else(|| Identity::from_uri(uri));
                }
            }
        }
        let spki = cert.public_key();
        let ed25519_public_key = (spki.algorithm.algorithm.to_id_string() == "1.3.101.112").then(|| spki.subject_public_key.data.to_vec());
        let ms = |t: ASN1Time| (t.timestamp().max(0) as u64) * 1000;
        Ok(CertInfo {
            identity,
            serial: hex(cert.raw_serial()),
            not_before_ms: ms(cert.validity().not_before),
            not_after_ms: ms(cert.validity().not_after),
            ed25519_public_key,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: u64 = 1_790_000_000_000;

    #[test]
    fn ca_is_created_once_and_reloaded() {
        let dir = tempfile::tempdir().unwrap();
        let (ca, created) = Ca::load_or_create(dir.path(), NOW).unwrap();
        assert!(created);
        let (again, created) = Ca::load_or_create(dir.path(), NOW).unwrap();
        assert!(!created);
        assert_eq!(ca.fingerprint().unwrap(), again.fingerprint().unwrap());
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(std::fs::metadata(dir.path().join("ca.key")).unwrap().permissions().mode() & 0o777, 0o600);
    }

    #[test]
    fn a_csr_gets_the_identity_the_ca_chose() {
        let dir = tempfile::tempdir().unwrap();
        let (ca, _) = Ca::load_or_create(dir.path(), NOW).unwrap();
        let key = new_key().unwrap();
        let issued = ca.sign_csr(&csr(&key).unwrap(), &Identity::Node("edge-1".into()), NOW, 3_600_000).unwrap();
        let der = pem_certs(&issued.cert_pem).unwrap().remove(0);
        let info = CertInfo::parse(&der).unwrap();
        assert_eq!(info.identity, Some(Identity::Node("edge-1".into())));
        assert_eq!(info.serial, issued.serial);
        assert_eq!(info.not_after_ms, issued.not_after_ms);
        assert_eq!(info.ed25519_public_key.as_deref(), Some(key.public_key_raw()));
    }

    #[test]
    fn serials_are_positive_and_keep_all_sixteen_bytes() {
        for first in [0x00, 0x01, 0x3f, 0x40, 0x7f, 0x80, 0xff] {
            let mut b = [0x5a; 16];
            b[0] = first;
            let bytes = serial_from(b).to_bytes();
            assert_eq!(bytes.len(), 16);
            assert!(bytes[0] < 0x80 && bytes[0] != 0, "first byte {:#x} from {first:#x}", bytes[0]);
            assert_eq!(bytes[1..], b[1..]);
        }
    }

    #[test]
    fn garbage_csrs_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let (ca, _) = Ca::load_or_create(dir.path(), NOW).unwrap();
        for bad in ["", "hello", "-----BEGIN CERTIFICATE REQUEST-----\nAAAA\n-----END CERTIFICATE REQUEST-----\n"] {
            assert!(ca.sign_csr(bad, &Identity::Node("n".into()), NOW, 1000).is_err());
        }
    }

    #[test]
    fn identities_round_trip_through_uris() {
        for id in [Identity::Server, Identity::Node("a.b_c-1".into()), Identity::User("ops".into())] {
            assert_eq!(Identity::from_uri(&id.uri()), Some(id));
        }
        assert_eq!(Identity::from_uri("spiffe://verge/node/"), None);
        assert_eq!(Identity::from_uri("spiffe://other/node/x"), None);
        assert_eq!(Identity::from_uri("spiffe://verge/node/a/b"), None);
    }
}
