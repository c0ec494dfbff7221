//! Verge's edge agent: runs on every edge node, keeps its assigned workloads
//! running, and measures the node.
//!
//! This crate owns everything that happens on the node itself: the server
//! connection, the metrics collector, the workload drivers and their
//! supervisors, the cgroup limits around workloads, and the local record of
//! assignments. It must never let a lost server connection stop a workload:
//! workloads outlive the connection and the agent process.

pub mod agent;
pub mod assignments;
pub mod bisync;
pub mod cachehttp;
pub mod cgroup;
pub mod coldstore;
pub mod collector;
pub mod config;
pub mod dataport;
pub mod driver;
pub mod edgecache;
pub mod exec;
pub mod glob;
pub mod identity;
pub mod logs;
pub mod metrics;
pub mod origin;
pub mod prewarm;
pub mod resp;
pub mod secure;
pub mod supervisor;
pub mod syncclient;
pub mod syncjobs;
pub mod vault;
