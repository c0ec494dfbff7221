//! Placement: pure functions from a [`ClusterView`] and a workload to a
//! decision. No I/O, no clock, no randomness: the same view and workload give
//! the same answer, and the server re-validates every answer before it
//! commits it.

mod latency;
mod place;
mod view;

pub use latency::estimate_rtt_ms;
pub use place::{place, Placement, Unplaceable};
pub use view::{Capacity, ClusterView, NodeView};
