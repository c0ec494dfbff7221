//! Edge nodes: what they are (spec), where they are in their lifecycle,
//! and how healthy they look.

use std::collections::BTreeMap;
use std::fmt;

use serde::{Deserialize, Serialize};

use crate::error::{check_range, ValidationError};
use crate::geo::GeoPoint;
use crate::id::NodeId;
use crate::units::Bytes;

/// What a node is for; workloads may ask for some types only.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum NodeType {
    /// General-purpose compute.
    #[default]
    Compute,
    /// Edge data storage and caching.
    Storage,
    /// Network ingress and egress.
    Gateway,
    /// Combined compute and storage.
    Hybrid,
    /// Machine-learning inference, usually with accelerators.
    Inference,
}

/// Where in the network hierarchy a node sits, from the cloud down to devices.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum Tier {
    /// A cloud region.
    Cloud,
    /// A regional data centre.
    Regional,
    /// A metro edge site.
    #[default]
    Metro,
    /// An access edge site (base station, central office).
    Access,
    /// An IoT gateway or device.
    Device,
}

/// Where a node is.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Location {
    /// Latitude in degrees.
    pub latitude: f64,
    /// Longitude in degrees.
    pub longitude: f64,
    /// City name, for people.
    #[serde(default)]
    pub city: String,
    /// Country name or code, for people and data-residency rules.
    #[serde(default)]
    pub country: String,
}

impl Location {
    /// The location as a point for distance computations.
    pub fn point(&self) -> GeoPoint {
        GeoPoint { latitude: self.latitude, longitude: self.longitude }
    }
}

/// CPU capacity of a node.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct CpuResources {
    /// Number of cores (fractions allowed for shared hosts).
    pub cores: f64,
    /// Clock frequency in GHz, informational.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub frequency: Option<f64>,
}

/// Memory capacity of a node.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct MemoryResources {
    /// Memory workloads may use, in bytes.
    pub total: Bytes,
}

/// Storage capacity of a node.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct StorageResources {
    /// Storage workloads may use, in bytes.
    #[serde(default)]
    pub total: Bytes,
    /// Medium, e.g. `SSD`, `NVMe`, `HDD`.
    #[serde(default, rename = "type", skip_serializing_if = "String::is_empty")]
    pub kind: String,
    /// Rated I/O operations per second.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub iops: Option<u64>,
}

/// Schedulable capacity of a node, in the seed's JSON shape.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct Resources {
    /// CPU.
    pub cpu: CpuResources,
    /// Memory.
    pub memory: MemoryResources,
    /// Storage.
    #[serde(default)]
    pub storage: StorageResources,
}

/// Largest core count accepted, to catch typos such as `16000`.
const MAX_CORES: f64 = 4096.0;
/// Largest memory accepted (64 TiB), to catch absurd values.
const MAX_MEMORY: u64 = 64 << 40;
/// Largest storage accepted (1 EiB).
const MAX_STORAGE: u64 = 1 << 60;

impl Resources {
    /// Checks that capacities are positive and plausible.
    pub fn validate(&self, field: &str) -> Result<(), ValidationError> {
        check_range(&format!("{field}.cpu.cores"), self.cpu.cores, 0.001, MAX_CORES)?;
        if let Some(f) = self.cpu.frequency {
            check_range(&format!("{field}.cpu.frequency"), f, 0.0, 100.0)?;
        }
        if self.memory.total.0 == 0 || self.memory.total.0 > MAX_MEMORY {
            return Err(ValidationError::new(
                format!("{field}.memory.total"),
                format!("must be between 1 byte and 64 TiB, got {}", self.memory.total.0),
            ));
        }
        if self.storage.total.0 > MAX_STORAGE {
            return Err(ValidationError::new(format!("{field}.storage.total"), "must be at most 1 EiB"));
        }
        Ok(())
    }
}

/// Everything an operator or agent declares about a node.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NodeSpec {
    /// Unique node name.
    pub id: NodeId,
    /// What the node is for.
    #[serde(rename = "type", default)]
    pub node_type: NodeType,
    /// Where the node sits in the hierarchy.
    #[serde(default)]
    pub tier: Tier,
    /// Where the node is.
    pub location: Location,
    /// Schedulable capacity (after reservations).
    pub resources: Resources,
    /// Free-form labels matched by `requiredLabels`.
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    /// `host:port` of the agent's data port (sync, cache), where other
    /// nodes and `verge sync` reach it; absent when it has none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub data_addr: Option<String>,
}

impl NodeSpec {
    /// Checks every field that the type system cannot.
    pub fn validate(&self) -> Result<(), ValidationError> {
        self.location.point().validate("location")?;
        self.resources.validate("resources")?;
        for (k, v) in &self.labels {
            if k.is_empty() || k.len() > 253 || v.len() > 253 {
                return Err(ValidationError::new(
                    "labels",
                    format!("label {k:?} must have a 1-253 character key and a value of at most 253"),
                ));
            }
        }
        Ok(())
    }
}

/// A node's place in its life: `initialized → warming → active → draining → terminated`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Lifecycle {
    /// Registered, not heard from yet.
    Initialized,
    /// Heartbeating, proving itself before it gets work.
    Warming,
    /// Takes workloads.
    Active,
    /// Being emptied; takes no new workloads.
    Draining,
    /// Gone: lease expired or removed; its workloads were moved away.
    Terminated,
}

impl fmt::Display for Lifecycle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let s = match self {
            Lifecycle::Initialized => "initialized",
            Lifecycle::Warming => "warming",
            Lifecycle::Active => "active",
            Lifecycle::Draining => "draining",
            Lifecycle::Terminated => "terminated",
        };
        f.write_str(s)
    }
}

/// How healthy a node looks, from its metrics and reports.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Health {
    /// All checks pass.
    Healthy,
    /// A warning threshold is crossed; still schedulable.
    Degraded,
    /// A critical threshold is crossed; not schedulable.
    Unhealthy,
    /// No recent data.
    Unknown,
}

impl Health {
    /// The status a 0-100 health score stands for.
    pub fn from_score(score: f64) -> Health {
        if score >= 80.0 {
            Health::Healthy
        } else if score >= 50.0 {
            Health::Degraded
        } else {
            Health::Unhealthy
        }
    }

    /// Severity order used to combine several assessments: the worse one wins.
    pub fn severity(self) -> u8 {
        match self {
            Health::Healthy => 0,
            Health::Degraded => 1,
            Health::Unknown => 2,
            Health::Unhealthy => 3,
        }
    }
}

impl fmt::Display for Health {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let s = match self {
            Health::Healthy => "healthy",
            Health::Degraded => "degraded",
            Health::Unhealthy => "unhealthy",
            Health::Unknown => "unknown",
        };
        f.write_str(s)
    }
}

/// A health report pushed by an operator or external monitor
/// (`PUT /api/v1/nodes/{id}/health`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HealthReport {
    /// Health score from 0 (dead) to 100 (perfect).
    pub score: f64,
    /// Why, for people.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub reason: String,
    /// Extra metrics the reporter saw, kept as given.
    #[serde(default, skip_serializing_if = "serde_json::Map::is_empty")]
    pub metrics: serde_json::Map<String, serde_json::Value>,
}

impl HealthReport {
    /// Checks the score is in range.
    pub fn validate(&self) -> Result<(), ValidationError> {
        check_range("score", self.score, 0.0, 100.0)
    }
}
