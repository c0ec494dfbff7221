//! The node's identity: its Ed25519 key and the certificate the cluster CA
//! issued for it, kept under `DATA_DIR/tls` (key 0600).
//!
//! A new node joins like a kubeadm node: it fetches the CA certificate,
//! checks its SHA-256 against the `--ca-hash` it was given, then sends a
//! CSR with its join token over a connection that trusts only that CA. From
//! then on the certificate authenticates the node on the gateway and on
//! agent-to-agent connections, and its key signs attestation evidence. The
//! agent renews the certificate over the gateway when two thirds of its
//! lifetime have passed.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde_json::json;
use verge_client::{Api, Method, Tls};
use verge_security::fsutil;
use verge_security::pki::{self, CertInfo, Identity};
use verge_security::tls::{self, ClientAuth};

/// Why the node has no usable identity.
#[derive(Debug, thiserror::Error)]
pub enum IdentityError {
    /// Key material on disk could not be read or written.
    #[error("{path}: {err}")]
    Io { path: String, err: std::io::Error },
    /// No certificate yet and nothing to join with.
    #[error("this node has no certificate yet: give it a join token and the CA hash (--token, --ca-hash or security.join_token / security.ca_hash; `verge token create --role node` prints both)")]
    NotJoined,
    /// The server's CA is not the one the operator pinned.
    #[error("the server's CA is {got}, not the expected {want}: refusing to join")]
    CaMismatch { got: String, want: String },
    /// The server could not be reached (worth retrying).
    #[error("joining: {0}")]
    Unreachable(String),
    /// The server still holds a live session for this node, left by its
    /// previous run (worth retrying: the session ends when its socket
    /// closes or its lease runs out).
    #[error("joining: {0}")]
    StillConnected(String),
    /// The join or a certificate was refused or malformed.
    #[error("joining: {0}")]
    Join(String),
}

fn io(path: &Path) -> impl Fn(std::io::Error) -> IdentityError + '_ {
    move |err| IdentityError::Io { path: path.display().to_string(), err }
}

fn join_err(e: impl std::fmt::Display) -> IdentityError {
    IdentityError::Join(e.to_string())
}

fn client_err(e: verge_client::ClientError) -> IdentityError {
    match e {
        verge_client::ClientError::Unreachable { .. } => IdentityError::Unreachable(e.to_string()),
        verge_client::ClientError::Api { ref code, .. } if code == "node_connected" => IdentityError::StillConnected(e.to_string()),
        other => IdentityError::Join(other.to_string()),
    }
}

/// The node's key, certificate and the CA that issued it.
#[derive(Clone)]
pub struct NodeIdentity {
    dir: PathBuf,
    ca_pem: String,
    ca_der: Vec<u8>,
    key_pem: String,
    cert_pem: String,
    /// What the current certificate says.
    pub info: CertInfo,
}

/// What a join needs: the token and the pinned CA fingerprint.
pub struct JoinWith<'a> {
    /// `vrg1.…` node token.
    pub token: &'a str,
    /// `sha256:…` of the CA certificate.
    pub ca_hash: &'a str,
}

impl NodeIdentity {
    /// Loads the identity from `dir` (joining again when its certificate
    /// expired and a token is at hand), or joins through the gateway at
    /// `server` (`host:port`) when there is none.
    pub async fn load_or_join(dir: &Path, server: &str, node: &str, join: Option<JoinWith<'_>>) -> Result<NodeIdentity, IdentityError> {
        if dir.join("node.crt").exists() {
            let mut me = NodeIdentity::load(dir)?;
            let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64);
            match join {
                Some(j) if me.expired(now) => me.rejoin(server, node, j.token).await?,
                None if me.expired(now) => {
                    tracing::warn!("this node's certificate expired; the gateway will refuse it until the node joins again with a token")
                }
                _ => {}
            }
            return Ok(me);
        }
        let join = join.ok_or(IdentityError::NotJoined)?;
        let discovery = Tls { config: tls::discovery_config().map_err(join_err)?, server_name: tls::server_name(), peer: None };
        let ca = Api::secure(server, discovery).get("/api/v1/ca").await.map_err(client_err)?;
        let ca_pem = ca["certificate"].as_str().ok_or_else(|| join_err("the server sent no CA certificate"))?.to_string();
        let ca_der = pki::pem_certs(&ca_pem).map_err(join_err)?.remove(0);
        let got = pki::fingerprint(&ca_der);
        if !got.eq_ignore_ascii_case(join.ca_hash.trim()) {
            return Err(IdentityError::CaMismatch { got, want: join.ca_hash.trim().to_string() });
        }
        let (key_pem, cert_pem) = request_certificate(server, &ca_der, join.token, node).await?;
        fsutil::private_dir(dir).map_err(io(dir))?;
        fsutil::write_atomic(&dir.join("ca.crt"), ca_pem.as_bytes(), 0o644).map_err(io(dir))?;
        let mut me =
            NodeIdentity { dir: dir.to_path_buf(), ca_pem, ca_der, key_pem: String::new(), cert_pem: String::new(), info: empty_info() };
        me.install(&key_pem, &cert_pem)?;
        tracing::info!(node, serial = %me.info.serial, "joined the cluster");
        Ok(me)
    }

    /// Whether the certificate has expired at `now_ms` (the node was away
    /// longer than its certificate lived and must join again).
    pub fn expired(&self, now_ms: u64) -> bool {
        self.info.not_after_ms <= now_ms
    }

    /// Joins again with `token`, trusting the CA already held, and installs
    /// the new key and certificate.
    pub async fn rejoin(&mut self, server: &str, node: &str, token: &str) -> Result<(), IdentityError> {
        let (key_pem, cert_pem) = request_certificate(server, &self.ca_der, token, node).await?;
        self.install(&key_pem, &cert_pem)?;
        tracing::info!(node, serial = %self.info.serial, "joined again after the certificate expired");
        Ok(())
    }

    fn load(dir: &Path) -> Result<NodeIdentity, IdentityError> {
        let read = |name: &str| std::fs::read_to_string(dir.join(name)).map_err(io(&dir.join(name)));
        let (ca_pem, mut key_pem, cert_pem) = (read("ca.crt")?, read("node.key")?, read("node.crt")?);
        let ca_der = pki::pem_certs(&ca_pem).map_err(join_err)?.remove(0);
        let info = CertInfo::parse(&pki::pem_certs(&cert_pem).map_err(join_err)?[0]).map_err(join_err)?;
        let fits = |pem: &str| pki::load_key(pem).is_ok_and(|k| info.ed25519_public_key.as_deref() == Some(k.public_key_raw()));
        if !fits(&key_pem) {
            // A renewal interrupted between its two renames.
            let pending = read("node.key.new").ok().filter(|k| fits(k)).ok_or_else(|| join_err("node.crt does not match node.key"))?;
            std::fs::rename(dir.join("node.key.new"), dir.join("node.key")).map_err(io(dir))?;
            key_pem = pending;
        }
        Ok(NodeIdentity { dir: dir.to_path_buf(), ca_pem, ca_der, key_pem, cert_pem, info })
    }

    /// Replaces key and certificate (files first, atomically), after
    /// checking the certificate is for this key.
    pub fn install(&mut self, key_pem: &str, cert_pem: &str) -> Result<(), IdentityError> {
        let key = pki::load_key(key_pem).map_err(join_err)?;
        let info = CertInfo::parse(&pki::pem_certs(cert_pem).map_err(join_err)?[0]).map_err(join_err)?;
        if info.ed25519_public_key.as_deref() != Some(key.public_key_raw()) {
            return Err(join_err("the certificate is not for this node's key"));
        }
        fsutil::write_secret(&self.dir.join("node.key.new"), key_pem.as_bytes()).map_err(io(&self.dir))?;
        fsutil::write_atomic(&self.dir.join("node.crt.new"), cert_pem.as_bytes(), 0o644).map_err(io(&self.dir))?;
        // Two renames: a crash between them leaves the new certificate
        // beside `node.key.new`, which `load` then finishes installing.
        std::fs::rename(self.dir.join("node.crt.new"), self.dir.join("node.crt")).map_err(io(&self.dir))?;
        std::fs::rename(self.dir.join("node.key.new"), self.dir.join("node.key")).map_err(io(&self.dir))?;
        self.key_pem = key_pem.to_string();
        self.cert_pem = cert_pem.to_string();
        self.info = info;
        Ok(())
    }

    /// The node key, PKCS#8 DER, for signing attestation evidence.
    pub fn key_pkcs8(&self) -> Result<Vec<u8>, IdentityError> {
        Ok(pki::load_key(&self.key_pem).map_err(join_err)?.serialize_der())
    }

    /// Client settings: trust the CA, present this node's certificate.
    pub fn client_config(&self) -> Result<Arc<rustls::ClientConfig>, IdentityError> {
        let me = tls::Identity::new(&self.cert_pem, self.key_pkcs8()?).map_err(join_err)?;
        tls::client_config(&self.ca_der, Some(me)).map_err(join_err)
    }

    /// Data-port settings: present this node's certificate, require a
    /// CA-signed one from every client.
    pub fn server_config(&self) -> Result<Arc<rustls::ServerConfig>, IdentityError> {
        let chain = format!("{}{}", self.cert_pem, self.ca_pem);
        let me = tls::Identity::new(&chain, self.key_pkcs8()?).map_err(join_err)?;
        tls::server_config(me, ClientAuth::Required(&self.ca_der)).map_err(join_err)
    }

    /// Whether two thirds of the certificate's lifetime have passed.
    pub fn renewal_due(&self, now_ms: u64) -> bool {
        let issued = self.info.not_before_ms + pki::NOT_BEFORE_SLACK_MS;
        let life = self.info.not_after_ms.saturating_sub(issued);
        now_ms >= issued + life * 2 / 3
    }
}

/// A new key and a certificate for it from the server at `server`,
/// trusting only the CA `ca_der`, paid for with a join token.
async fn request_certificate(server: &str, ca_der: &[u8], token: &str, node: &str) -> Result<(String, String), IdentityError> {
    let key = pki::new_key().map_err(join_err)?;
    let trusted =
        Tls { config: tls::client_config(ca_der, None).map_err(join_err)?, server_name: tls::server_name(), peer: Some(Identity::Server) };
    let api = Api::secure(server, trusted).with_token(Some(token.to_string()));
    let body = json!({"node": node, "csr": pki::csr(&key).map_err(join_err)?});
    let answer = api.call(Method::POST, "/api/v1/join", Some(&body)).await.map_err(client_err)?;
    let cert_pem = answer["certificate"].as_str().ok_or_else(|| join_err("the server sent no certificate"))?.to_string();
    Ok((key.serialize_pem(), cert_pem))
}

fn empty_info() -> CertInfo {
    CertInfo { identity: None, serial: String::new(), not_before_ms: 0, not_after_ms: 0, ed25519_public_key: None }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_certificate_for_another_key_is_refused_and_nothing_changes() {
        let dir = tempfile::tempdir().unwrap();
        let (ca, _) = pki::Ca::load_or_create(&dir.path().join("ca"), 1_790_000_000_000).unwrap();
        let key = pki::new_key().unwrap();
        let other = pki::new_key().unwrap();
        let cert = ca.sign_csr(&pki::csr(&other).unwrap(), &Identity::Node("n".into()), 1_790_000_000_000, 60_000).unwrap();
        let tls_dir = dir.path().join("tls");
        fsutil::private_dir(&tls_dir).unwrap();
        let ca_der = ca.der().unwrap();
        let mut me = NodeIdentity {
            dir: tls_dir.clone(),
            ca_pem: ca.pem().into(),
            ca_der,
            key_pem: String::new(),
            cert_pem: String::new(),
            info: empty_info(),
        };
        assert!(me.install(&key.serialize_pem(), &cert.cert_pem).is_err());
        assert!(!tls_dir.join("node.crt").exists());
        let good = ca.sign_csr(&pki::csr(&key).unwrap(), &Identity::Node("n".into()), 1_790_000_000_000, 60_000).unwrap();
        me.install(&key.serialize_pem(), &good.cert_pem).unwrap();
        std::fs::write(tls_dir.join("ca.crt"), ca.pem()).unwrap();
        let loaded = NodeIdentity::load(&tls_dir).unwrap();
        assert_eq!(loaded.info.serial, good.serial);
        assert!(!loaded.renewal_due(1_790_000_000_000 + 30_000));
        assert!(loaded.renewal_due(1_790_000_000_000 + 41_000));
    }
}
