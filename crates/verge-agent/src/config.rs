//! The agent's `edge-config.yaml`: the seed's shape (node, resources with
//! reserved parts, network, security) plus the server address. Every key
//! can be overridden by an environment variable named after its path,
//! e.g. `VERGE_NODE_ID`, `VERGE_RESOURCES_MEMORY_RESERVED`, `VERGE_SERVER`.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use serde_yaml::Value;
use verge_core::{Bytes, CpuResources, Location, MemoryResources, Millis, NodeId, NodeSpec, NodeType, Resources, StorageResources, Tier};

/// Why a config cannot be used; the message names the key.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read config {path}: {err}")]
    Read { path: String, err: std::io::Error },
    /// A key is missing, unknown or has a bad value.
    #[error("config {path}: {key}: {message}")]
    Key { path: String, key: String, message: String },
}

/// `node:` — who and where the node is.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct NodeSection {
    /// Unique node name.
    pub id: NodeId,
    /// What the node is for.
    #[serde(rename = "type", default)]
    pub node_type: NodeType,
    /// Where it sits in the hierarchy.
    #[serde(default)]
    pub tier: Tier,
    /// Where it is.
    pub location: Location,
    /// Labels for placement constraints.
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
}

/// `resources.cpu`.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct CpuSection {
    /// Cores; detected from the machine when omitted.
    pub cores: Option<f64>,
    /// Cores kept for the system.
    #[serde(default)]
    pub reserved: f64,
    /// Clock in GHz, informational.
    pub frequency: Option<f64>,
}

/// `resources.memory`.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct MemorySection {
    /// Physical memory; detected when omitted.
    pub total: Option<Bytes>,
    /// Memory kept for the system.
    #[serde(default)]
    pub reserved: Bytes,
}

/// `resources.storage`.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct StorageSection {
    /// Disk space.
    #[serde(default)]
    pub total: Bytes,
    /// Part of it kept for the edge cache.
    #[serde(default)]
    pub cache: Bytes,
    /// Medium, e.g. `SSD`.
    #[serde(rename = "type", default)]
    pub kind: String,
    /// Rated IOPS.
    pub iops: Option<u64>,
}

/// `resources:`.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ResourcesSection {
    /// CPU.
    #[serde(default)]
    pub cpu: CpuSection,
    /// Memory.
    #[serde(default)]
    pub memory: MemorySection,
    /// Storage.
    #[serde(default)]
    pub storage: StorageSection,
}

/// One entry of `network.interfaces`.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Interface {
    /// Interface name, e.g. `eth0`.
    pub name: String,
    /// Link speed, e.g. `10Gbps`; informational.
    #[serde(default)]
    pub bandwidth: String,
}

/// `network:`.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct NetworkSection {
    /// The node's interfaces.
    #[serde(default)]
    pub interfaces: Vec<Interface>,
    /// Where the data port (sync, cache) listens; port 0 picks a free port.
    #[serde(default = "default_data_addr")]
    pub data_addr: std::net::SocketAddr,
    /// The `host:port` other nodes use to reach the data port, when it
    /// differs from the bound address (NAT, 0.0.0.0 binds).
    #[serde(default)]
    pub advertise_addr: Option<String>,
}

impl Default for NetworkSection {
    fn default() -> Self {
        NetworkSection { interfaces: Vec::new(), data_addr: default_data_addr(), advertise_addr: None }
    }
}

fn default_data_addr() -> std::net::SocketAddr {
    std::net::SocketAddr::from(([0, 0, 0, 0], 8092))
}

/// `security:` — how the node joins, and the seed's switches. With a TLS
/// server the node always attests; `encryption` seals sync state at rest.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct SecuritySection {
    /// The seed's switch; attestation is on whenever the server speaks TLS.
    #[serde(default)]
    pub attestation: bool,
    /// Seal cache and sync state at rest with per-node data keys.
    #[serde(default)]
    pub encryption: bool,
    /// How often the data key rotates, e.g. `720h`.
    #[serde(default)]
    pub key_rotation: Option<Millis>,
    /// Join token for a node without a certificate.
    #[serde(default)]
    pub join_token: Option<String>,
    /// `sha256:…` of the cluster CA certificate, pinned for the join.
    #[serde(default)]
    pub ca_hash: Option<String>,
    /// Compliance frameworks the node is held to.
    #[serde(default)]
    pub compliance: Vec<String>,
}

/// The whole `edge-config.yaml`.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct EdgeConfig {
    /// The server's agent gateway: `host:port` or `ws://host:port`.
    pub server: String,
    /// Where the agent keeps its state and workload files.
    pub data_dir: Option<PathBuf>,
    /// The node.
    pub node: NodeSection,
    /// Capacity.
    #[serde(default)]
    pub resources: ResourcesSection,
    /// Network interfaces.
    #[serde(default)]
    pub network: NetworkSection,
    /// Security settings.
    #[serde(default)]
    pub security: SecuritySection,
    /// Data sync settings.
    #[serde(default)]
    pub sync: SyncSection,
    /// Edge cache settings.
    #[serde(default)]
    pub cache: CacheSection,
}

/// `cache:` — the edge cache's hot tier and value limit; its warm tier
/// holds `resources.storage.cache` bytes (1 GiB when that is 0).
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct CacheSection {
    /// Memory for values (default 64 MiB).
    pub memory: Option<Bytes>,
    /// Largest value accepted (default 64 MiB).
    pub max_value: Option<Bytes>,
    /// Where the Redis-protocol listener binds (off when absent); any
    /// address but loopback needs mutual TLS.
    pub resp_addr: Option<std::net::SocketAddr>,
    /// Read misses through from `ORIGIN/KEY` (an `http://` URL).
    pub origin: Option<String>,
    /// The cold tier: a directory (a large volume or a mounted bucket)
    /// where entries pushed out of the warm tier go.
    pub cold_dir: Option<PathBuf>,
    /// The hot tier's eviction policy: adaptive (default), lru, lfu, fifo,
    /// ttl, arc, gdsf, s3fifo, sieve, wtinylfu, lirs.
    pub policy: Option<String>,
    /// Whether writes also go to the origin: `none` (default), `through`
    /// (before the write is acknowledged) or `behind` (in the background).
    pub origin_writes: Option<crate::origin::OriginWrites>,
}

impl EdgeConfig {
    /// The edge cache's tier sizes and policy from this config.
    /// An unknown `cache.policy` is the error (checked when the file is parsed).
    pub fn cache_sizes(&self) -> Result<crate::edgecache::CacheSizes, String> {
        const MIB64: u64 = 64 << 20;
        let policy = match &self.cache.policy {
            Some(p) => p.parse().map_err(|e: verge_cache::CacheError| e.to_string())?,
            None => verge_cache::PolicyKind::default(),
        };
        let disk = self.resources.storage.cache.0;
        Ok(crate::edgecache::CacheSizes {
            memory: self.cache.memory.map_or(MIB64, |b| b.0),
            disk: if disk == 0 { 1 << 30 } else { disk },
            max_value: self.cache.max_value.map_or(MIB64, |b| b.0),
            resp_addr: self.cache.resp_addr,
            policy,
        })
    }
}

/// `sync:` — the bandwidth sync jobs from this node may use, per second.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct SyncSection {
    /// All jobs together, bytes per second (unlimited when absent).
    pub bandwidth: Option<Bytes>,
    /// Jobs to any one peer, bytes per second (unlimited when absent).
    pub per_peer_bandwidth: Option<Bytes>,
}

/// Keys that environment variables can override, and whether the value is
/// always a string (so `VERGE_NODE_ID=001` stays `"001"`).
const ENV_KEYS: &[(&str, bool)] = &[
    ("server", true),
    ("data_dir", true),
    ("node.id", true),
    ("node.type", true),
    ("node.tier", true),
    ("node.location.latitude", false),
    ("node.location.longitude", false),
    ("node.location.city", true),
    ("node.location.country", true),
    ("resources.cpu.cores", false),
    ("resources.cpu.reserved", false),
    ("resources.cpu.frequency", false),
    ("resources.memory.total", false),
    ("resources.memory.reserved", false),
    ("resources.storage.total", false),
    ("resources.storage.cache", false),
    ("resources.storage.type", true),
    ("resources.storage.iops", false),
    ("network.data_addr", true),
    ("network.advertise_addr", true),
    ("sync.bandwidth", false),
    ("sync.per_peer_bandwidth", false),
    ("security.attestation", false),
    ("security.encryption", false),
    ("security.key_rotation", true),
    ("security.join_token", true),
    ("security.ca_hash", true),
    ("cache.memory", false),
    ("cache.max_value", false),
    ("cache.resp_addr", true),
    ("cache.origin", true),
    ("cache.cold_dir", true),
    ("cache.policy", true),
    ("cache.origin_writes", true),
];

/// The environment variable that overrides `key`.
pub fn env_name(key: &str) -> String {
    format!("VERGE_{}", key.replace('.', "_").to_ascii_uppercase())
}

fn set_path(root: &mut Value, key: &str, value: Value) {
    let mut cur = root;
    for part in key.split('.') {
        if !cur.is_mapping() {
            *cur = Value::Mapping(Default::default());
        }
        let Value::Mapping(map) = cur else { return };
        cur = map.entry(Value::String(part.to_string())).or_insert(Value::Null);
    }
    *cur = value;
}

impl EdgeConfig {
    /// Reads `path`, applies overrides from `env`, and validates.
    pub fn load(path: &Path, env: impl Fn(&str) -> Option<String>) -> Result<EdgeConfig, ConfigError> {
        let shown = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|err| ConfigError::Read { path: shown.clone(), err })?;
        Self::parse(&text, &shown, env)
    }

    /// Parses config text; `shown` names the source in errors.
    pub fn parse(text: &str, shown: &str, env: impl Fn(&str) -> Option<String>) -> Result<EdgeConfig, ConfigError> {
        let key_err = |key: String, message: String| ConfigError::Key { path: shown.to_string(), key, message };
        let mut root: Value = serde_yaml::from_str(text).map_err(|e| {
            let at = e.location().map(|l| format!("line {}", l.line())).unwrap_or_else(|| "document".into());
            key_err(at, e.to_string())
        })?;
        if root.is_null() {
            root = Value::Mapping(Default::default());
        }
        for (key, is_string) in ENV_KEYS {
            if let Some(raw) = env(&env_name(key)) {
                let value = if *is_string { Value::String(raw) } else { serde_yaml::from_str(&raw).unwrap_or(Value::String(raw)) };
                set_path(&mut root, key, value);
            }
        }
        let cfg: EdgeConfig = serde_path_to_error::deserialize(root).map_err(|e| {
            let key = e.path().to_string();
            key_err(key, e.into_inner().to_string())
        })?;
        cfg.node_spec(1.0, Bytes(1)).map_err(|e| key_err(e.field, e.message))?;
        cfg.cache_sizes().map_err(|e| key_err("cache.policy".into(), e))?;
        Ok(cfg)
    }

    /// The node spec the agent declares: capacity minus reservations, with
    /// cores and memory detected from the machine where the file omits them.
    pub fn node_spec(&self, detected_cores: f64, detected_memory: Bytes) -> Result<NodeSpec, verge_core::ValidationError> {
        use verge_core::ValidationError as E;
        let r = &self.resources;
        let cores = r.cpu.cores.unwrap_or(detected_cores);
        if r.cpu.reserved < 0.0 || r.cpu.reserved >= cores {
            return Err(E::new("resources.cpu.reserved", format!("must be at least 0 and less than the {cores} cores")));
        }
        let mem = r.memory.total.unwrap_or(detected_memory);
        if r.memory.reserved >= mem {
            return Err(E::new("resources.memory.reserved", format!("must be less than resources.memory.total ({mem})")));
        }
        if r.storage.cache > r.storage.total {
            return Err(E::new("resources.storage.cache", "must not exceed resources.storage.total"));
        }
        let spec = NodeSpec {
            id: self.node.id.clone(),
            node_type: self.node.node_type,
            tier: self.node.tier,
            location: self.node.location.clone(),
            resources: Resources {
                cpu: CpuResources { cores: cores - r.cpu.reserved, frequency: r.cpu.frequency },
                memory: MemoryResources { total: Bytes(mem.0 - r.memory.reserved.0) },
                storage: StorageResources {
                    total: Bytes(r.storage.total.0 - r.storage.cache.0),
                    kind: r.storage.kind.clone(),
                    iops: r.storage.iops,
                },
            },
            labels: self.node.labels.clone(),
            data_addr: None,
        };
        spec.validate().map_err(|e| {
            let field = if e.field.starts_with("location") { format!("node.{}", e.field) } else { e.field.clone() };
            E::new(field, e.message)
        })?;
        Ok(spec)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SEED: &str = r#"
server: 127.0.0.1:8091
node:
  id: "edge-node-001"
  type: "compute"
  location:
    latitude: 37.7749
    longitude: -122.4194
    city: "San Francisco"
    country: "USA"
resources:
  cpu:
    cores: 16
    reserved: 2
  memory:
    total: 32GB
    reserved: 4GB
  storage:
    total: 1TB
    cache: 100GB
network:
  interfaces:
    - name: eth0
      bandwidth: 10Gbps
security:
  attestation: true
  encryption: true
  compliance:
    - ISO27001
    - SOC2
"#;

    fn no_env(_: &str) -> Option<String> {
        None
    }

    #[test]
    fn the_seed_config_reads_and_reservations_are_subtracted() {
        let cfg = EdgeConfig::parse(SEED, "edge.yaml", no_env).unwrap();
        let spec = cfg.node_spec(1.0, Bytes(1)).unwrap();
        assert_eq!(spec.resources.cpu.cores, 14.0);
        assert_eq!(spec.resources.memory.total, Bytes(28_000_000_000));
        assert_eq!(spec.resources.storage.total, Bytes(900_000_000_000));
    }

    #[test]
    fn environment_overrides_any_key() {
        let env = |k: &str| match k {
            "VERGE_NODE_ID" => Some("001".to_string()),
            "VERGE_RESOURCES_CPU_CORES" => Some("8".to_string()),
            "VERGE_SERVER" => Some("ws://10.0.0.1:8091".to_string()),
            _ => None,
        };
        let cfg = EdgeConfig::parse(SEED, "edge.yaml", env).unwrap();
        assert_eq!(cfg.node.id.as_str(), "001");
        assert_eq!(cfg.resources.cpu.cores, Some(8.0));
        assert_eq!(cfg.server, "ws://10.0.0.1:8091");
        assert_eq!(env_name("resources.memory.reserved"), "VERGE_RESOURCES_MEMORY_RESERVED");
    }

    fn error(text: &str) -> String {
        EdgeConfig::parse(text, "edge.yaml", no_env).unwrap_err().to_string()
    }

    #[test]
    fn mistakes_name_the_key() {
        let e = error(&SEED.replace("type: \"compute\"", "type: \"computer\""));
        assert!(e.contains("node.type"), "{e}");
        let e = error(&SEED.replace("reserved: 2", "reserved: 20"));
        assert!(e.contains("resources.cpu.reserved"), "{e}");
        let e = error(&SEED.replace("total: 32GB", "total: 32 parsecs"));
        assert!(e.contains("resources.memory.total"), "{e}");
        let e = error(&SEED.replace("latitude: 37.7749", "latitude: 137.7749"));
        assert!(e.contains("node.location.latitude"), "{e}");
        let e = error(&SEED.replace("attestation: true", "attestaton: true"));
        assert!(e.contains("security") && e.contains("attestaton"), "{e}");
        let e = error(&format!("{SEED}\ncache: {{policy: fastest}}\n"));
        assert!(e.contains("cache.policy") && e.contains("fastest"), "{e}");
        let e = error("node: [1");
        assert!(e.contains("line"), "{e}");
    }
}
