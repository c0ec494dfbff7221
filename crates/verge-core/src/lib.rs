//! Verge's domain types: nodes, workloads, resources, locations, the clock.
//!
//! This crate owns the vocabulary every other crate speaks. It does no I/O
//! and never reads the clock by itself: time comes from a [`Clock`].

pub mod clock;
pub mod error;
pub mod geo;
pub mod id;
pub mod metrics;
pub mod node;
pub mod units;
pub mod workload;

pub use clock::{Clock, ManualClock, SystemClock};
pub use error::ValidationError;
pub use geo::{haversine_km, GeoPoint};
pub use id::{NodeId, WorkloadId};
pub use metrics::NodeMetrics;
pub use node::{
    CpuResources, Health, HealthReport, Lifecycle, Location, MemoryResources, NodeSpec, NodeType, Resources, StorageResources, Tier,
};
pub use units::{Bytes, Millis};
pub use workload::{
    Constraints, ExecSpec, Requirements, RestartPolicy, Spread, Strategy, UserSite, WorkloadSpec, WorkloadState, WorkloadStatus,
};
