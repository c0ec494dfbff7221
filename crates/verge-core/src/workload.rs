//! Workloads: what to run, what it needs, where it may go, and how it is doing.

use std::collections::BTreeMap;
use std::fmt;

use serde::{Deserialize, Serialize};

use crate::error::{check_range, ValidationError};
use crate::geo::GeoPoint;
use crate::id::WorkloadId;
use crate::node::{NodeType, Tier};
use crate::units::Bytes;

/// Resources a workload reserves on its node.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct Requirements {
    /// CPU cores (fractions allowed).
    pub cpu: f64,
    /// Memory in bytes; also the memory limit the driver enforces.
    pub memory: Bytes,
    /// Storage in bytes.
    #[serde(default)]
    pub storage: Bytes,
}

/// Where a workload may run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Constraints {
    /// Highest acceptable round-trip time from the users (`geoProximity`) to the node.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_latency_ms: Option<f64>,
    /// Node types allowed; empty means any.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub node_types: Vec<NodeType>,
    /// Labels the node must carry with exactly these values.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub required_labels: BTreeMap<String, String>,
    /// Workload ids or groups this workload must not share a node with.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub anti_affinity: Vec<String>,
    /// Where the workload's users are.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub geo_proximity: Option<GeoPoint>,
    /// Furthest a node may be from `geoProximity`, in kilometres.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_distance_km: Option<f64>,
    /// More places where users are, by city name or coordinates; latency and
    /// distance constraints must hold for every one of them.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub users: Vec<UserSite>,
    /// Countries (the node's `location.country`) or regions (its `region`
    /// label) the workload's data may live in; empty means anywhere.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub data_residency: Vec<String>,
    /// Tiers allowed; empty means any.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tiers: Vec<Tier>,
    /// Spread the workload's group evenly over a topology domain.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub spread: Option<Spread>,
    /// Lowest node trust score (0-100) the workload may run on.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min_trust: Option<u8>,
}

/// Topology spread, as Kubernetes' `topologySpreadConstraints`: members of
/// one group may differ by at most `maxSkew` between domains.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Spread {
    /// The domain: `city`, `country`, `node`, or a node label such as `region`.
    pub key: String,
    /// Largest allowed difference between the fullest and the emptiest domain.
    #[serde(default = "one")]
    pub max_skew: u32,
}

fn one() -> u32 {
    1
}

/// Where some users are: a city name, or coordinates, or both.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct UserSite {
    /// City name, matched case-insensitively against known cities.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub city: Option<String>,
    /// Latitude in degrees.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub latitude: Option<f64>,
    /// Longitude in degrees.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub longitude: Option<f64>,
}

impl UserSite {
    /// The coordinates, when both are given.
    pub fn point(&self) -> Option<GeoPoint> {
        Some(GeoPoint { latitude: self.latitude?, longitude: self.longitude? })
    }
}

impl Constraints {
    /// Whether the workload says where its users are.
    pub fn has_users(&self) -> bool {
        self.geo_proximity.is_some() || !self.users.is_empty()
    }
}

/// How to weigh candidate nodes against each other.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, Default)]
#[serde(rename_all = "kebab-case")]
pub enum Strategy {
    /// Lowest latency to the users first.
    LatencyFirst,
    /// Most free resources first.
    ResourceFirst,
    /// Latency and resources weighed equally.
    #[default]
    Balanced,
    /// Nearest to the users' location.
    GeoProximity,
    /// Nearest to the workload's data.
    DataLocality,
    /// Cheapest node first.
    Cost,
}

impl fmt::Display for Strategy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let s = match self {
            Strategy::LatencyFirst => "latency-first",
            Strategy::ResourceFirst => "resource-first",
            Strategy::Balanced => "balanced",
            Strategy::GeoProximity => "geo-proximity",
            Strategy::DataLocality => "data-locality",
            Strategy::Cost => "cost",
        };
        f.write_str(s)
    }
}

/// Which driver runs the workload.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum DriverKind {
    /// A native process started by the agent.
    #[default]
    Exec,
}

/// When the agent restarts a workload that exited.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "kebab-case")]
pub enum RestartPolicy {
    /// Restart whatever the exit status.
    #[default]
    Always,
    /// Restart only after a non-zero exit or a signal.
    OnFailure,
    /// Never restart.
    Never,
}

/// What to run: the driver and its arguments.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExecSpec {
    /// The driver that runs the workload.
    #[serde(default)]
    pub driver: DriverKind,
    /// The program to run, a path or a name looked up in `PATH`.
    pub command: String,
    /// Arguments.
    #[serde(default)]
    pub args: Vec<String>,
    /// Extra environment variables.
    #[serde(default)]
    pub env: BTreeMap<String, String>,
    /// Restart policy.
    #[serde(default)]
    pub restart: RestartPolicy,
}

/// A workload as submitted to `POST /api/v1/workloads`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct WorkloadSpec {
    /// Unique name; generated when omitted.
    #[serde(default = "WorkloadId::generate")]
    pub id: WorkloadId,
    /// Group name other workloads can name in `antiAffinity`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub group: Option<String>,
    /// Resources to reserve.
    pub requirements: Requirements,
    /// Placement constraints.
    #[serde(default)]
    pub constraints: Constraints,
    /// Placement strategy.
    #[serde(default)]
    pub strategy: Strategy,
    /// Higher-priority work may evict lower-priority work when nothing fits.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub priority: i32,
    /// What to run.
    pub spec: ExecSpec,
}

fn is_zero(p: &i32) -> bool {
    *p == 0
}

/// Priorities run from -1000 to 1000.
const MAX_PRIORITY: i32 = 1000;

/// Largest single workload accepted (cores), to catch typos.
const MAX_CPU: f64 = 4096.0;
/// Largest memory reservation accepted (64 TiB).
const MAX_MEMORY: u64 = 64 << 40;
/// Half the earth's circumference: no two points are further apart.
const MAX_DISTANCE_KM: f64 = 20_040.0;

impl WorkloadSpec {
    /// Checks every field that the type system cannot, naming the field.
    pub fn validate(&self) -> Result<(), ValidationError> {
        check_range("requirements.cpu", self.requirements.cpu, 0.001, MAX_CPU)?;
        if self.priority.abs() > MAX_PRIORITY {
            return Err(ValidationError::new(
                "priority",
                format!("must be between -{MAX_PRIORITY} and {MAX_PRIORITY}, got {}", self.priority),
            ));
        }
        let mem = self.requirements.memory.0;
        if mem == 0 || mem > MAX_MEMORY {
            return Err(ValidationError::new("requirements.memory", format!("must be between 1 byte and 64 TiB, got {mem}")));
        }
        let c = &self.constraints;
        if let Some(p) = c.geo_proximity {
            p.validate("constraints.geoProximity")?;
        }
        for (i, u) in c.users.iter().enumerate() {
            let field = format!("constraints.users[{i}]");
            match (u.latitude, u.longitude) {
                (Some(_), Some(_)) => u.point().map_or(Ok(()), |p| p.validate(&field))?,
                (None, None) if u.city.as_deref().is_some_and(|c| !c.trim().is_empty()) => {}
                _ => return Err(ValidationError::new(field, "give a city, or both latitude and longitude")),
            }
        }
        if let Some(d) = c.max_distance_km {
            check_range("constraints.maxDistanceKm", d, 0.0, MAX_DISTANCE_KM)?;
            if !c.has_users() {
                return Err(ValidationError::new(
                    "constraints.maxDistanceKm",
                    "needs constraints.geoProximity or constraints.users: the distance is measured from the users",
                ));
            }
            let points: Vec<GeoPoint> = c.geo_proximity.into_iter().chain(c.users.iter().filter_map(UserSite::point)).collect();
            for (i, a) in points.iter().enumerate() {
                for b in &points[i + 1..] {
                    let apart = crate::geo::haversine_km(*a, *b);
                    if apart > 2.0 * d {
                        return Err(ValidationError::new(
                            "constraints.maxDistanceKm",
                            format!(
                                "users {apart:.0} km apart cannot all be within {d} km of one node; raise the limit or split the workload"
                            ),
                        ));
                    }
                }
            }
        }
        if let Some(l) = c.max_latency_ms {
            check_range("constraints.maxLatencyMs", l, 0.001, 60_000.0)?;
            if !c.has_users() {
                return Err(ValidationError::new(
                    "constraints.maxLatencyMs",
                    "needs constraints.geoProximity or constraints.users: the latency is measured from the users",
                ));
            }
        }
        if let Some(sp) = &c.spread {
            if self.group.is_none() {
                return Err(ValidationError::new(
                    "constraints.spread",
                    "needs group: spreading counts the members of the workload's group",
                ));
            }
            if sp.key.trim().is_empty() || sp.max_skew == 0 {
                return Err(ValidationError::new("constraints.spread", "needs a key and a maxSkew of at least 1"));
            }
        }
        if let Some(r) = c.data_residency.iter().find(|r| r.trim().is_empty()) {
            return Err(ValidationError::new("constraints.dataResidency", format!("empty country or region {r:?}")));
        }
        if c.anti_affinity.iter().any(|a| a == self.id.as_str() || Some(a) == self.group.as_ref()) {
            return Err(ValidationError::new("constraints.antiAffinity", "a workload cannot be anti-affine to itself or its own group"));
        }
        if self.spec.command.trim().is_empty() {
            return Err(ValidationError::new("spec.command", "must name the program to run"));
        }
        if let Some(k) = self.spec.env.keys().find(|k| k.is_empty() || k.contains(['=', '\0'])) {
            return Err(ValidationError::new("spec.env", format!("invalid variable name {k:?}")));
        }
        let has_nul = std::iter::once(&self.spec.command).chain(&self.spec.args).chain(self.spec.env.values()).any(|s| s.contains('\0'));
        if has_nul {
            return Err(ValidationError::new("spec", "strings must not contain NUL bytes"));
        }
        Ok(())
    }
}

/// What a workload is doing on its node.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum WorkloadState {
    /// Not placed on any node yet.
    Pending,
    /// Assigned; the agent is starting it.
    Starting,
    /// The process is running.
    Running,
    /// Exited and waiting for its restart back-off.
    Restarting,
    /// Exited successfully and will not be restarted.
    Completed,
    /// Exited with an error and will not be restarted, or could not start.
    Failed,
    /// Stopped on request.
    Stopped,
}

impl fmt::Display for WorkloadState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let s = match self {
            WorkloadState::Pending => "pending",
            WorkloadState::Starting => "starting",
            WorkloadState::Running => "running",
            WorkloadState::Restarting => "restarting",
            WorkloadState::Completed => "completed",
            WorkloadState::Failed => "failed",
            WorkloadState::Stopped => "stopped",
        };
        f.write_str(s)
    }
}

/// A workload's state as its agent reports it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct WorkloadStatus {
    /// Which workload.
    pub id: WorkloadId,
    /// What it is doing.
    pub state: WorkloadState,
    /// Process id of the running process.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pid: Option<u32>,
    /// Restarts since it was assigned to this node.
    #[serde(default)]
    pub restarts: u32,
    /// Exit code of the last exit, if it exited normally.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exit_code: Option<i32>,
    /// What people should know: why it failed, or that limits are not enforced.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub message: String,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(json: &str) -> Result<WorkloadSpec, String> {
        let w: WorkloadSpec = serde_json::from_str(json).map_err(|e| e.to_string())?;
        w.validate().map_err(|e| e.to_string())?;
        Ok(w)
    }

    #[test]
    fn minimal_workload_gets_defaults() {
        let w = spec(r#"{"requirements":{"cpu":0.5,"memory":"64MiB"},"spec":{"command":"sleep","args":["1"]}}"#).unwrap();
        assert!(w.id.as_str().starts_with("wl-"));
        assert_eq!(w.strategy, Strategy::Balanced);
        assert_eq!(w.spec.restart, RestartPolicy::Always);
    }

    #[test]
    fn invalid_workloads_name_the_field() {
        let base = r#""spec":{"command":"sleep"}"#;
        let e = spec(&format!(r#"{{"requirements":{{"cpu":-1,"memory":1}},{base}}}"#)).unwrap_err();
        assert!(e.starts_with("requirements.cpu"), "{e}");
        let e = spec(&format!(r#"{{"requirements":{{"cpu":1,"memory":1}},"constraints":{{"maxLatencyMs":5}},{base}}}"#)).unwrap_err();
        assert!(e.starts_with("constraints.maxLatencyMs"), "{e}");
        let e =
            spec(&format!(r#"{{"requirements":{{"cpu":1,"memory":1}},"constraints":{{"nodeTypes":["toaster"]}},{base}}}"#)).unwrap_err();
        assert!(e.contains("toaster"), "{e}");
        let e = spec(r#"{"requirements":{"cpu":1,"memory":1},"spec":{"command":" "}}"#).unwrap_err();
        assert!(e.starts_with("spec.command"), "{e}");
    }
}

#[cfg(test)]
mod constraint_tests {
    use super::*;

    fn check(constraints: serde_json::Value) -> Result<(), String> {
        let w: WorkloadSpec = serde_json::from_value(serde_json::json!({
            "requirements": {"cpu": 1, "memory": 1}, "constraints": constraints, "spec": {"command": "x"}
        }))
        .map_err(|e| e.to_string())?;
        w.validate().map_err(|e| e.to_string())
    }

    #[test]
    fn users_by_city_or_coordinates() {
        assert!(check(serde_json::json!({"users": [{"city": "Paris"}, {"latitude": 1, "longitude": 2}], "maxLatencyMs": 20})).is_ok());
        assert!(check(serde_json::json!({"users": [{"latitude": 1}]})).unwrap_err().starts_with("constraints.users[0]"));
        assert!(check(serde_json::json!({"users": [{"city": " "}]})).unwrap_err().starts_with("constraints.users[0]"));
    }

    #[test]
    fn contradictory_distances_are_refused_naming_the_field() {
        let paris_tokyo = serde_json::json!({
            "geoProximity": {"latitude": 48.85, "longitude": 2.35},
            "users": [{"latitude": 35.68, "longitude": 139.69}],
            "maxDistanceKm": 500
        });
        let e = check(paris_tokyo).unwrap_err();
        assert!(e.starts_with("constraints.maxDistanceKm: users 9") && e.contains("km apart"), "{e}");
        assert!(check(serde_json::json!({"dataResidency": [""]})).unwrap_err().starts_with("constraints.dataResidency"));
        assert!(check(serde_json::json!({"tiers": ["orbit"]})).unwrap_err().contains("orbit"));
    }
}
