//! The server's security state: its CA and TLS settings, the token store,
//! revoked node certificates, attestation nonces and the audit log. Every
//! decision here (a refused token, a join, a revocation, an attestation) is
//! appended to the audit chain with its reason.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};

use verge_security::attest::{self, Evidence, NonceBook};
use verge_security::audit::AuditLog;
use verge_security::fsutil;
use verge_security::pki::{self, Ca, CertInfo, Identity, Issued};
use verge_security::rbac::Role;
use verge_security::tls::{self, ClientAuth};
use verge_security::token::{TokenError, TokenRecord, TokenStore};

use crate::config::SecurityConfig;
use crate::ServerError;

/// How long the server's own certificate is valid; it is reissued on every start.
const SERVER_CERT_TTL_MS: u64 = 365 * 24 * 3_600_000;

/// Who made a request.
#[derive(Debug, Clone)]
pub struct Principal {
    /// The token's id.
    pub token_id: String,
    /// The token's name.
    pub name: String,
    /// Its role.
    pub role: Role,
    /// For a node token bound to one node: that node.
    pub node: Option<String>,
}

impl Principal {
    /// How the audit log names this principal.
    pub fn actor(&self) -> String {
        format!("{}:{} ({})", self.role, self.name, self.token_id)
    }
}

/// One audit record before it is chained.
pub struct AuditEvent<'a> {
    /// Who: a principal, a node or `anonymous`.
    pub actor: &'a str,
    /// What was attempted, e.g. `POST /api/v1/workloads` or `attest`.
    pub action: &'a str,
    /// What it was about.
    pub target: &'a str,
    /// `allowed`, `denied`, an HTTP status, …
    pub outcome: &'a str,
    /// Why.
    pub reason: &'a str,
}

/// The server's security state.
pub struct Security {
    /// TLS settings for the API (server auth) and gateway (mutual), unless TLS is off.
    pub api_tls: Option<Arc<rustls::ServerConfig>>,
    /// TLS settings for the gateway: client certificates verified when
    /// presented (the agent protocol then requires one; joining does not).
    pub gateway_tls: Option<Arc<rustls::ServerConfig>>,
    /// The server as a client of agents' data ports (its own certificate).
    pub data_client: Option<Arc<rustls::ClientConfig>>,
    ca: Ca,
    /// `sha256:…` of the CA certificate, for `--ca-hash`.
    pub fingerprint: String,
    tokens: Mutex<TokenStore>,
    revoked: Mutex<BTreeMap<String, u64>>,
    revoked_path: PathBuf,
    nonces: Mutex<NonceBook>,
    audit: Mutex<AuditLog>,
    /// The attestation policy, with the server's own binary allowed when the
    /// config names none.
    pub policy: attest::Policy,
    /// The security settings.
    pub cfg: SecurityConfig,
    /// The built-in compliance packs and the configured ones.
    pub packs: Vec<verge_security::compliance::Pack>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

fn startup(what: &str, e: impl std::fmt::Display) -> ServerError {
    ServerError::Security(format!("{what}: {e}"))
}

impl Security {
    /// Opens (or on first start creates) the CA, the admin token, the
    /// token store, the revocation list and the audit log under `dir`.
    pub fn open(dir: &Path, cfg: &SecurityConfig, now_ms: u64) -> Result<Security, ServerError> {
        let (ca, created) = Ca::load_or_create(dir, now_ms).map_err(|e| startup("CA", e))?;
        let fingerprint = ca.fingerprint().map_err(|e| startup("CA", e))?;
        let mut tokens = TokenStore::open(&dir.join("tokens.json")).map_err(|e| startup("tokens", e))?;
        let admin_path = dir.join("admin.token");
        if !admin_path.exists() {
            let (token, _) = tokens.create(Role::Admin, "admin", None, None, now_ms).map_err(|e| startup("admin token", e))?;
            fsutil::write_secret(&admin_path, format!("{token}\n").as_bytes()).map_err(|e| startup("admin.token", e))?;
        }
        if created {
            tracing::info!(ca = %dir.join("ca.crt").display(), %fingerprint, "created the cluster CA");
        }
        let (api_tls, gateway_tls, data_client) = if cfg.tls {
            let (issued, key) =
                ca.issue_server(&cfg.server_names, now_ms, SERVER_CERT_TTL_MS).map_err(|e| startup("server certificate", e))?;
            let chain = format!("{}{}", issued.cert_pem, ca.pem());
            let ca_der = ca.der().map_err(|e| startup("CA", e))?;
            let identity = || tls::Identity::new(&chain, key.clone()).map_err(|e| startup("server identity", e));
            let api = tls::server_config(identity()?, ClientAuth::None).map_err(|e| startup("API TLS", e))?;
            let gw = tls::server_config(identity()?, ClientAuth::Optional(&ca_der)).map_err(|e| startup("gateway TLS", e))?;
            let client = tls::client_config(&ca_der, Some(identity()?)).map_err(|e| startup("data-port client TLS", e))?;
            (Some(api), Some(gw), Some(client))
        } else {
            tracing::warn!("security.tls is off: the API and the gateway accept plain connections");
            (None, None, None)
        };
        let revoked_path = dir.join("revoked.json");
        let revoked = match std::fs::read(&revoked_path) {
            Ok(b) => serde_json::from_slice(&b).map_err(|e| startup("revoked.json", e))?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => BTreeMap::new(),
            Err(e) => return Err(startup("revoked.json", e)),
        };
        let mut policy = cfg.attestation.clone();
        if policy.allowed_binaries.is_empty() {
            let own = std::env::current_exe()
                .and_then(|exe| attest::Measurements::collect(&exe, b""))
                .map_err(|e| startup("hashing the server's own binary", e))?
                .binary_sha256;
            tracing::info!(binary_sha256 = %own, "attestation allows agents built from this server's binary");
            policy.allowed_binaries = vec![own];
        }
        let audit = AuditLog::open(&dir.join("audit.log")).map_err(|e| startup("audit log", e))?;
        let mut packs = verge_security::compliance::Pack::builtins();
        for path in &cfg.compliance_packs {
            let text = std::fs::read_to_string(path).map_err(|e| startup(&format!("compliance pack {}", path.display()), e))?;
            let pack =
                verge_security::compliance::Pack::parse(&text).map_err(|e| startup(&format!("compliance pack {}", path.display()), e))?;
            if packs.iter().any(|p| p.name == pack.name) {
                return Err(startup("compliance packs", format!("two packs are named {:?}", pack.name)));
            }
            packs.push(pack);
        }
        Ok(Security {
            api_tls,
            gateway_tls,
            data_client,
            ca,
            fingerprint,
            tokens: Mutex::new(tokens),
            revoked: Mutex::new(revoked),
            revoked_path,
            nonces: Mutex::new(NonceBook::default()),
            audit: Mutex::new(audit),
            policy,
            cfg: cfg.clone(),
            packs,
        })
    }

    /// The CA certificate, PEM.
    pub fn ca_pem(&self) -> &str {
        self.ca.pem()
    }

    /// Appends an event to the audit chain; a failing log is reported and
    /// the event logged through tracing, never lost silently.
    pub fn audit(&self, now_ms: u64, e: AuditEvent<'_>) {
        if let Err(err) = lock(&self.audit).append(now_ms, e.actor, e.action, e.target, e.outcome, e.reason) {
            tracing::error!(error = %err, actor = e.actor, action = e.action, target = e.target, outcome = e.outcome, reason = e.reason, "audit append failed");
        }
    }

    /// The last entry's sequence number and hash, to check the file against.
    pub fn audit_head(&self) -> (u64, String) {
        lock(&self.audit).head()
    }

    /// The principal of a bearer token.
    pub fn authenticate(&self, token: &str, now_ms: u64) -> Result<Principal, TokenError> {
        let tokens = lock(&self.tokens);
        let rec = tokens.verify(token, now_ms)?;
        Ok(Principal { token_id: rec.id.clone(), name: rec.name.clone(), role: rec.role, node: rec.node.clone() })
    }

    /// Mints a token; returns it (the only copy of the secret) and its record.
    pub fn create_token(
        &self,
        role: Role,
        name: &str,
        ttl_ms: Option<u64>,
        node: Option<String>,
        now_ms: u64,
    ) -> Result<(String, TokenRecord), TokenError> {
        lock(&self.tokens).create(role, name, ttl_ms, node, now_ms)
    }

    /// Every token's record.
    pub fn tokens(&self) -> Vec<TokenRecord> {
        lock(&self.tokens).list().cloned().collect()
    }

    /// Revokes a token; `false` when unknown.
    pub fn revoke_token(&self, id: &str, now_ms: u64) -> Result<bool, TokenError> {
        lock(&self.tokens).revoke(id, now_ms)
    }

    /// Signs a CSR for `identity` with the configured certificate lifetime.
    pub fn issue(&self, csr_pem: &str, identity: &Identity, now_ms: u64) -> Result<Issued, pki::PkiError> {
        let (ttl, issue_ms) = match identity {
            // A certificate's issue time is kept in whole seconds: one for a
            // node that joins again within the second of its removal would
            // count as issued before it and be refused for good. It is
            // issued a second after the revocation instead.
            Identity::Node(id) => (self.cfg.cert_ttl.0, lock(&self.revoked).get(id).map_or(now_ms, |&at| now_ms.max(at + 1_000))),
            _ => (self.cfg.cert_ttl.0.min(3_600_000), now_ms),
        };
        self.ca.sign_csr(csr_pem, identity, issue_ms, ttl)
    }

    /// Revokes every certificate of `node` issued until now.
    pub fn revoke_node(&self, node: &str, now_ms: u64) -> std::io::Result<()> {
        let mut revoked = lock(&self.revoked);
        revoked.insert(node.to_string(), now_ms);
        let bytes = serde_json::to_vec_pretty(&*revoked).map_err(std::io::Error::other)?;
        fsutil::write_atomic(&self.revoked_path, &bytes, 0o644)
    }

    /// Every revoked node with its revocation time.
    pub fn revocations(&self) -> BTreeMap<String, u64> {
        lock(&self.revoked).clone()
    }

    /// Why a verified client certificate may not be used, if it may not:
    /// it names no node, or the node's certificates were revoked after it
    /// was issued.
    pub fn check_node_cert(&self, cert: &CertInfo) -> Result<String, String> {
        let Some(Identity::Node(id)) = &cert.identity else {
            return Err("the client certificate names no node".into());
        };
        if pki::revoked(cert, &lock(&self.revoked)) {
            return Err(format!("the certificate of node {id} (serial {}) was revoked", cert.serial));
        }
        Ok(id.clone())
    }

    /// A fresh single-use attestation nonce for `node`.
    pub fn nonce(&self, node: &str, now_ms: u64) -> String {
        lock(&self.nonces).issue(node, now_ms)
    }

    /// Verifies evidence from `node` signed with the key in its certificate.
    pub fn verify_attestation(&self, e: &Evidence, node: &str, public_key: &[u8], now_ms: u64) -> Result<(), attest::AttestError> {
        attest::verify(e, node, public_key, &self.policy, &mut lock(&self.nonces), now_ms)
    }
}
