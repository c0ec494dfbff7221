//! Verge's edge agent: runs on every edge node, keeps its assigned workloads
//! running, and measures the node.
//!
//! This crate owns everything that happens on the node itself: the metrics
//! collector, the workload drivers and their supervisors, and the cgroup
//! limits around workloads. It must never let a lost server connection stop
//! a workload: workloads outlive the agent process.

pub mod cgroup;
pub mod collector;
pub mod driver;
pub mod exec;
pub mod supervisor;
