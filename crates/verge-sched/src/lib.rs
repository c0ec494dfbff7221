//! Placement: pure functions from a [`ClusterView`] and a workload to a
//! decision. No I/O, no clock, no randomness: the same view and workload give
//! the same answer, and the server re-validates every answer before it
//! commits it.

mod latency;
mod migrate;
mod place;
mod preempt;
pub mod rttdata;
mod view;
pub mod vivaldi;

pub use latency::LatencyModel;
pub use migrate::{plan_migrations, Migration, MigrationPolicy, Resident};
pub use place::{latency_to, place, Placement, Unplaceable};
pub use preempt::{plan_preemption, Preemption};
pub use rttdata::{parse_cities, City, RttDataError, RttMatrix};
pub use view::{Capacity, ClusterView, NodeView, Site};
pub use vivaldi::{distance_ms, Coordinate, SplitMix64, VivaldiClient, VivaldiConfig, VivaldiError};
