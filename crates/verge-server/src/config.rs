//! Server configuration: addresses, timings and health checks, read from
//! flags and an optional YAML file.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde::Deserialize;
use verge_core::{GeoPoint, Millis};
use verge_sched::MigrationPolicy;

use crate::health::{default_checks, HealthCheck};

/// Everything the control plane needs to start.
#[derive(Debug, Clone)]
pub struct ServerConfig {
    /// Where the HTTP API listens.
    pub api_addr: SocketAddr,
    /// Where the agent gateway listens.
    pub gateway_addr: SocketAddr,
    /// Where state lives.
    pub data_dir: PathBuf,
    /// How often agents heartbeat, ms.
    pub heartbeat_interval_ms: u64,
    /// How long a node's lease lasts without a heartbeat, ms.
    pub lease_ms: u64,
    /// Health thresholds.
    pub health_checks: Vec<HealthCheck>,
    /// Known cities (lowercase name → position), for users named by city.
    pub cities: Arc<HashMap<String, GeoPoint>>,
    /// When placed workloads move.
    pub migration: MigrationPolicy,
    /// Automatic provisioning, when configured.
    pub provisioning: Option<Provisioning>,
    /// TLS, certificates, attestation, trust and audit.
    pub security: SecurityConfig,
}

/// The `security:` block of the server's YAML.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SecurityConfig {
    /// Serve the API and the gateway over TLS (and require node
    /// certificates on the gateway). Off only to measure what TLS costs.
    pub tls: bool,
    /// How long node certificates are valid; agents renew after two thirds.
    pub cert_ttl: Millis,
    /// Extra DNS names or IPs for the server certificate.
    pub server_names: Vec<String>,
    /// What attestation evidence must show.
    pub attestation: verge_security::attest::Policy,
    /// How often connected nodes attest again.
    pub attestation_interval: Millis,
    /// Nodes below this trust score take no workloads.
    pub min_trust: u8,
    /// Extra compliance rule packs (YAML files in the built-in packs'
    /// shape), reported beside ISO 27001, SOC 2 and HIPAA.
    pub compliance_packs: Vec<PathBuf>,
}

impl Default for SecurityConfig {
    fn default() -> Self {
        SecurityConfig {
            tls: true,
            cert_ttl: Millis(30 * 24 * 3_600_000),
            server_names: Vec::new(),
            attestation: verge_security::attest::Policy::default(),
            attestation_interval: Millis(3_600_000),
            min_trust: 0,
            compliance_packs: Vec::new(),
        }
    }
}

/// The YAML file's shape; every key optional.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServerFile {
    /// Heartbeat interval, e.g. `1s`.
    pub heartbeat_interval: Option<Millis>,
    /// Lease, e.g. `5s`.
    pub lease: Option<Millis>,
    /// The seed's `health_checks` list.
    pub health_checks: Option<Vec<HealthCheck>>,
    /// Migration thresholds.
    pub migration: Option<MigrationPolicy>,
    /// Automatic provisioning.
    pub provisioning: Option<Provisioning>,
    /// Security settings.
    pub security: Option<SecurityConfig>,
}

/// Asking for more nodes when the fleet runs full: a command the server
/// runs with `VERGE_PROVISION_TYPE` and `VERGE_PROVISION_REASON` set (use
/// `curl` in it for a webhook).
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Provisioning {
    /// Allocated share of the active nodes' CPU that triggers a request.
    #[serde(default = "default_threshold")]
    pub threshold: f64,
    /// The command, run with `sh -c`.
    pub command: String,
    /// Least time between two requests.
    #[serde(default = "default_cooldown")]
    pub cooldown: Millis,
}

fn default_threshold() -> f64 {
    0.85
}

fn default_cooldown() -> Millis {
    Millis(300_000)
}

/// Why a server config is unusable.
#[derive(Debug, thiserror::Error)]
pub enum ServerConfigError {
    /// The file could not be read.
    #[error("cannot read {path}: {err}")]
    Read { path: String, err: std::io::Error },
    /// The file is not valid.
    #[error("{path}: {err}")]
    Parse { path: String, err: String },
    /// Values do not fit together.
    #[error("{0}")]
    Invalid(String),
}

impl ServerConfig {
    /// A config with the documented defaults.
    pub fn new(api_addr: SocketAddr, gateway_addr: SocketAddr, data_dir: PathBuf) -> Self {
        ServerConfig {
            api_addr,
            gateway_addr,
            data_dir,
            heartbeat_interval_ms: 1_000,
            lease_ms: 5_000,
            health_checks: default_checks(),
            cities: Default::default(),
            migration: MigrationPolicy::default(),
            provisioning: None,
            security: SecurityConfig::default(),
        }
    }

    /// Applies a YAML config file on top.
    pub fn load_file(&mut self, path: &Path) -> Result<(), ServerConfigError> {
        let text = std::fs::read_to_string(path).map_err(|err| ServerConfigError::Read { path: path.display().to_string(), err })?;
        let de = serde_yaml::Deserializer::from_str(&text);
        let file: ServerFile = serde_path_to_error::deserialize(de)
            .map_err(|e| ServerConfigError::Parse { path: path.display().to_string(), err: format!("{}: {}", e.path(), e.inner()) })?;
        if let Some(h) = file.heartbeat_interval {
            self.heartbeat_interval_ms = h.0;
        }
        if let Some(l) = file.lease {
            self.lease_ms = l.0;
        }
        if let Some(c) = file.health_checks {
            self.health_checks = c;
        }
        if let Some(m) = file.migration {
            self.migration = m;
        }
        if let Some(sec) = file.security {
            if sec.cert_ttl.0 < 3_000 {
                return Err(ServerConfigError::Parse {
                    path: path.display().to_string(),
                    err: "security.cert_ttl must be at least 3s".into(),
                });
            }
            self.security = sec;
        }
        if let Some(p) = file.provisioning {
            if !(p.threshold > 0.0 && p.threshold <= 1.0) || p.command.trim().is_empty() {
                return Err(ServerConfigError::Parse {
                    path: path.display().to_string(),
                    err: "provisioning: threshold must be in (0, 1] and command must not be empty".into(),
                });
            }
            self.provisioning = Some(p);
        }
        Ok(())
    }

    /// Loads a `City,Lat,Long,Population` file of known cities.
    pub fn load_cities(&mut self, path: &Path) -> Result<(), ServerConfigError> {
        let text = std::fs::read_to_string(path).map_err(|err| ServerConfigError::Read { path: path.display().to_string(), err })?;
        let cities = verge_sched::parse_cities(&text)
            .map_err(|e| ServerConfigError::Parse { path: path.display().to_string(), err: e.to_string() })?;
        self.cities = Arc::new(
            cities.into_iter().map(|c| (c.name.to_lowercase(), GeoPoint { latitude: c.latitude, longitude: c.longitude })).collect(),
        );
        Ok(())
    }

    /// Checks that the timings make sense together.
    pub fn validate(&self) -> Result<(), ServerConfigError> {
        if self.heartbeat_interval_ms < 10 {
            return Err(ServerConfigError::Invalid(format!(
                "heartbeat interval must be at least 10 ms, got {}",
                self.heartbeat_interval_ms
            )));
        }
        if self.lease_ms < 2 * self.heartbeat_interval_ms {
            return Err(ServerConfigError::Invalid(format!(
                "lease ({} ms) must be at least twice the heartbeat interval ({} ms) or nodes flap",
                self.lease_ms, self.heartbeat_interval_ms
            )));
        }
        Ok(())
    }

    /// How long a node warms up before it takes work: two heartbeats.
    pub fn warmup_ms(&self) -> u64 {
        2 * self.heartbeat_interval_ms
    }
}
