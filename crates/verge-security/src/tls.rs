//! rustls settings for every Verge connection: the ring provider, TLS 1.3
//! and 1.2 only (1.0/1.1 clients are refused in the handshake), trust in
//! the cluster CA alone.

use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, ServerName, UnixTime};
use rustls::server::WebPkiClientVerifier;
use rustls::{ClientConfig, DigitallySignedStruct, RootCertStore, ServerConfig, SignatureScheme};

use crate::pki::{self, PkiError};

/// Why a TLS configuration could not be built.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// A certificate or key was unreadable.
    #[error(transparent)]
    Pki(#[from] PkiError),
    /// rustls refused the material.
    #[error("TLS: {0}")]
    Rustls(String),
}

fn rustls_err(e: impl std::fmt::Display) -> TlsError {
    TlsError::Rustls(e.to_string())
}

/// The crypto provider every configuration uses (ring).
pub fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

const VERSIONS: &[&rustls::SupportedProtocolVersion] = &[&rustls::version::TLS13, &rustls::version::TLS12];

fn roots(ca_der: &[u8]) -> Result<Arc<RootCertStore>, TlsError> {
    let mut roots = RootCertStore::empty();
    roots.add(CertificateDer::from(ca_der.to_vec())).map_err(rustls_err)?;
    Ok(Arc::new(roots))
}

/// A certificate chain (PEM) and its PKCS#8 key (DER): who a process is.
pub struct Identity {
    chain: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
}

impl Identity {
    /// Reads a PEM chain and a PKCS#8 DER key.
    pub fn new(chain_pem: &str, key_pkcs8: Vec<u8>) -> Result<Identity, TlsError> {
        let chain = pki::pem_certs(chain_pem)?.into_iter().map(CertificateDer::from).collect();
        Ok(Identity { chain, key: PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key_pkcs8)) })
    }
}

/// Whether a listener asks clients for certificates.
pub enum ClientAuth<'a> {
    /// Server authentication only (the API: clients carry bearer tokens).
    None,
    /// A client certificate, when presented, must be one the CA (DER)
    /// signed; clients without one get through the handshake so they can
    /// fetch the CA and join (the gateway, which then requires a node
    /// certificate for the agent protocol itself).
    Optional(&'a [u8]),
    /// Clients must present a certificate the CA (DER) signed: agent data ports.
    Required(&'a [u8]),
}

/// A listener's configuration.
pub fn server_config(me: Identity, clients: ClientAuth<'_>) -> Result<Arc<ServerConfig>, TlsError> {
    let builder = ServerConfig::builder_with_provider(provider()).with_protocol_versions(VERSIONS).map_err(rustls_err)?;
    let builder = match clients {
        ClientAuth::None => builder.with_no_client_auth(),
        ClientAuth::Optional(ca) => {
            let verifier =
                WebPkiClientVerifier::builder_with_provider(roots(ca)?, provider()).allow_unauthenticated().build().map_err(rustls_err)?;
            builder.with_client_cert_verifier(verifier)
        }
        ClientAuth::Required(ca) => {
            let verifier = WebPkiClientVerifier::builder_with_provider(roots(ca)?, provider()).build().map_err(rustls_err)?;
            builder.with_client_cert_verifier(verifier)
        }
    };
    let mut cfg = builder.with_single_cert(me.chain, me.key).map_err(rustls_err)?;
    cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(cfg))
}

/// A client's configuration: trusts only the CA (DER), presents `me` when given.
pub fn client_config(ca_der: &[u8], me: Option<Identity>) -> Result<Arc<ClientConfig>, TlsError> {
    let builder = ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(VERSIONS)
        .map_err(rustls_err)?
        .with_root_certificates(roots(ca_der)?);
    let cfg = match me {
        Some(me) => builder.with_client_auth_cert(me.chain, me.key).map_err(rustls_err)?,
        None => builder.with_no_client_auth(),
    };
    Ok(Arc::new(cfg))
}

/// The name clients verify a Verge server's certificate against.
pub fn server_name() -> ServerName<'static> {
    ServerName::try_from(pki::SERVER_NAME).expect("a valid DNS name")
}

/// The name clients verify a node's data-port certificate against; the
/// node identity in it is checked after the handshake.
pub fn node_name() -> ServerName<'static> {
    ServerName::try_from(pki::NODE_NAME).expect("a valid DNS name")
}

/// A client configuration that accepts any server certificate. Used for
/// exactly one thing: fetching the CA certificate before a join, whose
/// SHA-256 the joiner then compares with the `--ca-hash` it was given
/// (kubeadm's discovery). Nothing secret travels on such a connection.
pub fn discovery_config() -> Result<Arc<ClientConfig>, TlsError> {
    let cfg = ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(VERSIONS)
        .map_err(rustls_err)?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(AnyServer(provider())))
        .with_no_client_auth();
    Ok(Arc::new(cfg))
}

#[derive(Debug)]
struct AnyServer(Arc<CryptoProvider>);

impl ServerCertVerifier for AnyServer {
    fn verify_server_cert(
        &self,
        _: &CertificateDer<'_>,
        _: &[CertificateDer<'_>],
        _: &ServerName<'_>,
        _: &[u8],
        _: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.0.signature_verification_algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.0.signature_verification_algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}
