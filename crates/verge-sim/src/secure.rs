//! Zero trust for the simulated fleet, as a real agent does it: each node
//! joins with a node token for its own Ed25519 key and certificate, speaks
//! mutual TLS to the gateway, and answers the server's attestation nonces
//! with evidence signed by that key.

use futures_util::{StreamExt, TryStreamExt};
use serde_json::json;
use tokio::io::{AsyncRead, AsyncWrite};
use verge_client::{Api, Method, Tls};
use verge_proto::AgentMessage;
use verge_security::attest::{Evidence, Measurements};
use verge_security::pki::{self, Identity};
use verge_security::tls;

use crate::fleet::{Fleet, SimError};

/// Joins in flight at once during enrolment.
const JOINS_IN_FLIGHT: usize = 64;

/// What a secured simulation needs besides the operator token.
#[derive(Debug, Clone)]
pub struct SimTls {
    /// The cluster CA certificate, DER: the only one trusted.
    pub ca_der: Vec<u8>,
    /// A node-role join token (`vrg1.…`), as `verge token create --role node` prints.
    pub join_token: String,
}

impl SimTls {
    /// Client settings that trust the cluster CA and expect the server's
    /// certificate; the API client and the joins use them.
    pub fn server_tls(&self) -> Result<Tls, SimError> {
        let config = tls::client_config(&self.ca_der, None).map_err(security_err)?;
        Ok(Tls { config, server_name: tls::server_name(), peer: Some(Identity::Server) })
    }
}

fn security_err(e: impl std::fmt::Display) -> SimError {
    SimError::Server(format!("security: {e}"))
}

/// A byte stream to the gateway: plain TCP or TLS over it.
pub trait Io: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Io for T {}

/// One node's key (PKCS#8 DER) and the certificate the CA issued for it.
struct Credential {
    key_der: Vec<u8>,
    cert_pem: String,
}

/// Every node's credentials and the measurements all of them report.
pub struct Enrolled {
    ca_der: Vec<u8>,
    creds: Vec<Credential>,
    measurements: Measurements,
}

/// Gives every node of `fleet` a key and a certificate through
/// `POST /api/v1/join` on `api`, a bounded number at a time, and measures
/// the binary this process runs once for all of them (the server's policy
/// allows its own binary, which simulated nodes share).
pub async fn enrol(api: &str, sim: &SimTls, fleet: &Fleet) -> Result<Enrolled, SimError> {
    let exe = std::env::current_exe().map_err(security_err)?;
    let measuring = tokio::task::spawn_blocking(move || Measurements::collect(&exe, b""));
    let server = sim.server_tls()?;
    let joins = fleet.nodes.iter().map(|n| join(api, &server, &sim.join_token, n.spec.id.as_str()));
    let creds: Vec<Credential> = futures_util::stream::iter(joins).buffered(JOINS_IN_FLIGHT).try_collect().await?;
    let measurements = measuring.await.map_err(security_err)?.map_err(|e| security_err(format!("measuring this binary: {e}")))?;
    Ok(Enrolled { ca_der: sim.ca_der.clone(), creds, measurements })
}

/// One join, on its own connection as a real node's would be.
async fn join(api: &str, server: &Tls, token: &str, node: &str) -> Result<Credential, SimError> {
    let key = pki::new_key().map_err(security_err)?;
    let body = json!({"node": node, "csr": pki::csr(&key).map_err(security_err)?});
    let api = Api::secure(api, server.clone()).with_token(Some(token.to_string()));
    let answer = api.call(Method::POST, "/api/v1/join", Some(&body)).await.map_err(|e| SimError::Server(format!("joining {node}: {e}")))?;
    let cert_pem = answer["certificate"].as_str().ok_or_else(|| SimError::Server(format!("joining {node}: no certificate")))?;
    Ok(Credential { key_der: key.serialize_der(), cert_pem: cert_pem.to_string() })
}

fn now_ms() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64)
}

impl Enrolled {
    /// TLS over `tcp` to the gateway as node `i`: presents its certificate
    /// and accepts only the cluster's server.
    pub async fn handshake(&self, i: usize, tcp: tokio::net::TcpStream) -> Result<Box<dyn Io>, String> {
        let cred = self.creds.get(i).ok_or_else(|| format!("node {i} was not enrolled"))?;
        let me = tls::Identity::new(&cred.cert_pem, cred.key_der.clone()).map_err(|e| e.to_string())?;
        let config = tls::client_config(&self.ca_der, Some(me)).map_err(|e| e.to_string())?;
        let stream = tokio_rustls::TlsConnector::from(config).connect(tls::server_name(), tcp).await.map_err(|e| format!("TLS: {e}"))?;
        Ok(Box::new(stream))
    }

    /// Node `i`'s answer to `nonce`: the shared measurements, signed with its key.
    pub fn attest(&self, i: usize, node: &str, nonce: &str) -> Result<AgentMessage, String> {
        let cred = self.creds.get(i).ok_or_else(|| format!("node {i} was not enrolled"))?;
        let evidence = Evidence::sign(&cred.key_der, node, nonce, now_ms(), self.measurements.clone()).map_err(|e| e.to_string())?;
        Ok(AgentMessage::Attestation { evidence: serde_json::to_string(&evidence).map_err(|e| e.to_string())? })
    }
}
