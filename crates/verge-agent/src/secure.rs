//! The agent's side of zero trust at run time: mutual TLS to the gateway,
//! TLS settings for the data port and for connections to other agents,
//! attestation answers signed with the node key, and certificate renewal
//! before expiry (a renewed certificate is used for new connections; the
//! open gateway connection and the workloads are not disturbed).

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, RwLock};

use axum::extract::{Request, State};
use axum::middleware::Next;
use axum::response::Response;
use verge_client::serve::PeerCert;

use tokio::io::{AsyncRead, AsyncWrite};
use verge_client::serve::TlsSource;
use verge_client::Tls;
use verge_proto::AgentMessage;
use verge_security::attest::{Evidence, Measurements};
use verge_security::pki::{self, Identity};
use verge_security::{fsutil, tls};

use crate::identity::{IdentityError, NodeIdentity};

/// Nodes whose certificates the server revoked (node id → when), as it
/// last told this agent; the data port refuses their certificates.
pub type Revoked = Arc<RwLock<BTreeMap<String, u64>>>;

/// Data-port middleware: a client whose certificate belongs to a revoked
/// node gets 403 before any handler runs.
pub async fn refuse_revoked(State(revoked): State<Revoked>, req: Request, next: Next) -> Response {
    let cert = req.extensions().get::<PeerCert>().and_then(|p| p.0.clone());
    if let Some(c) = cert.filter(|c| pki::revoked(c, &revoked.read().unwrap_or_else(|p| p.into_inner()))) {
        let msg = format!(
            "the certificate of {} (serial {}) was revoked",
            c.identity.as_ref().map_or(String::new(), |i| i.to_string()),
            c.serial
        );
        tracing::warn!(%msg, "data port refused a revoked peer");
        return verge_client::serve::json_error(axum::http::StatusCode::FORBIDDEN, "certificate_revoked", &msg);
    }
    next.run(req).await
}

/// A byte stream to the server: plain TCP or TLS over it.
pub trait Io: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Io for T {}

/// The node's identity and the TLS settings derived from it.
pub struct NodeTls {
    identity: Mutex<NodeIdentity>,
    client: RwLock<Arc<rustls::ClientConfig>>,
    /// The data port's settings, swapped on renewal.
    pub data_port: TlsSource,
    pending_key: Mutex<Option<String>>,
    node: String,
    binary: PathBuf,
    config_bytes: Vec<u8>,
    /// Measured once: the binary, kernel, command line, config and boot id
    /// cannot change while this process runs.
    measured: std::sync::OnceLock<Measurements>,
    evidence_path: PathBuf,
}

fn now_ms() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64)
}

impl NodeTls {
    /// Wraps a loaded identity. `config_bytes` is the agent's config file,
    /// measured in attestation; evidence is also written to `evidence_path`.
    pub fn new(identity: NodeIdentity, node: &str, config_bytes: Vec<u8>, evidence_path: PathBuf) -> Result<NodeTls, IdentityError> {
        let client = identity.client_config()?;
        let server = identity.server_config()?;
        Ok(NodeTls {
            identity: Mutex::new(identity),
            client: RwLock::new(client),
            data_port: verge_client::serve::fixed(server),
            pending_key: Mutex::new(None),
            node: node.to_string(),
            binary: std::env::current_exe().unwrap_or_else(|_| PathBuf::from("/proc/self/exe")),
            config_bytes,
            measured: std::sync::OnceLock::new(),
            evidence_path,
        })
    }

    fn client(&self) -> Arc<rustls::ClientConfig> {
        self.client.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// TLS over a connection to the gateway, presenting the node
    /// certificate and accepting only the cluster's server.
    pub async fn handshake(&self, tcp: tokio::net::TcpStream) -> Result<Box<dyn Io>, String> {
        let stream =
            tokio_rustls::TlsConnector::from(self.client()).connect(tls::server_name(), tcp).await.map_err(|e| format!("TLS: {e}"))?;
        Ok(Box::new(stream))
    }

    /// How to reach another node's data port: as this node, expecting `node`.
    pub fn peer_tls(&self, node: &str) -> Tls {
        Tls { config: self.client(), server_name: tls::node_name(), peer: Some(Identity::Node(node.to_string())) }
    }

    /// Evidence over `nonce`: the process's measurements, signed with the node key, and
    /// kept in `attestation.json` for operators.
    pub fn attest(&self, nonce: &str) -> Result<AgentMessage, String> {
        let measurements = match self.measured.get() {
            Some(m) => m.clone(),
            None => {
                let m = Measurements::collect(&self.binary, &self.config_bytes).map_err(|e| format!("measuring: {e}"))?;
                self.measured.get_or_init(|| m).clone()
            }
        };
        let key = self.identity.lock().unwrap_or_else(|p| p.into_inner()).key_pkcs8().map_err(|e| e.to_string())?;
        let evidence = Evidence::sign(&key, &self.node, nonce, now_ms(), measurements).map_err(|e| e.to_string())?;
        let json = serde_json::to_string(&evidence).map_err(|e| e.to_string())?;
        if let Err(e) = fsutil::write_atomic(&self.evidence_path, json.as_bytes(), 0o600) {
            tracing::warn!(error = %e, "cannot keep the attestation evidence");
        }
        Ok(AgentMessage::Attestation { evidence: json })
    }

    /// A renewal request when two thirds of the certificate's life have
    /// passed and none is pending.
    pub fn renewal(&self) -> Option<AgentMessage> {
        let mut pending = self.pending_key.lock().unwrap_or_else(|p| p.into_inner());
        if pending.is_some() || !self.identity.lock().unwrap_or_else(|p| p.into_inner()).renewal_due(now_ms()) {
            return None;
        }
        let key = pki::new_key().ok()?;
        let csr = pki::csr(&key).ok()?;
        *pending = Some(key.serialize_pem());
        tracing::info!("asking the server to renew this node's certificate");
        Some(AgentMessage::RenewCertificate { csr })
    }

    /// When the certificate expired while the node was away, joins again
    /// with `token` (if any) before the next connection; `Ok(false)` when
    /// nothing needed doing.
    pub async fn rejoin_if_expired(&self, server: &str, token: Option<&str>) -> Result<bool, String> {
        let expired = self.identity.lock().unwrap_or_else(|p| p.into_inner()).expired(now_ms());
        let Some(token) = token.filter(|_| expired) else { return Ok(false) };
        // Joined on a copy, so the lock is not held across the request.
        let mut id = self.identity.lock().unwrap_or_else(|p| p.into_inner()).clone();
        id.rejoin(server, &self.node, token).await.map_err(|e| e.to_string())?;
        self.switch_to(id)?;
        Ok(true)
    }

    /// Makes `id` the node's identity for new connections.
    fn switch_to(&self, id: NodeIdentity) -> Result<(), String> {
        let client = id.client_config().map_err(|e| e.to_string())?;
        let server = id.server_config().map_err(|e| e.to_string())?;
        *self.client.write().unwrap_or_else(|p| p.into_inner()) = client;
        *self.data_port.write().unwrap_or_else(|p| p.into_inner()) = server;
        *self.identity.lock().unwrap_or_else(|p| p.into_inner()) = id;
        Ok(())
    }

    /// Installs a renewed certificate for the pending key and switches new
    /// connections (gateway, peers, data port) to it.
    pub fn renewed(&self, cert_pem: &str) -> Result<(), String> {
        let Some(key_pem) = self.pending_key.lock().unwrap_or_else(|p| p.into_inner()).take() else {
            return Err("a certificate arrived that this node did not ask for".into());
        };
        let mut id = self.identity.lock().unwrap_or_else(|p| p.into_inner()).clone();
        id.install(&key_pem, cert_pem).map_err(|e| e.to_string())?;
        tracing::info!(serial = %id.info.serial, not_after_ms = id.info.not_after_ms, "node certificate renewed");
        self.switch_to(id)
    }
}
