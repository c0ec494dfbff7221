//! Prometheus metrics of the control plane, served at `/metrics`.

use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

type Labels = Vec<(String, String)>;

/// Counters updated as things happen and gauges set at scrape time.
pub struct Telemetry {
    registry: Registry,
    /// Heartbeats received.
    pub heartbeats: Counter,
    /// Workloads placed (first placements, moves and failovers).
    pub placements: Counter,
    /// Workloads moved off nodes whose lease expired.
    pub failovers: Counter,
    /// Nodes by lifecycle state.
    pub nodes: Family<Labels, Gauge>,
    /// Workloads by state.
    pub workloads: Family<Labels, Gauge>,
    /// Agents with an open gateway connection.
    pub agents_connected: Gauge,
}

impl Telemetry {
    /// Registers every metric.
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("verge");
        let t = Telemetry {
            heartbeats: Counter::default(),
            placements: Counter::default(),
            failovers: Counter::default(),
            nodes: Family::default(),
            workloads: Family::default(),
            agents_connected: Gauge::default(),
            registry: Registry::default(),
        };
        registry.register("heartbeats", "Heartbeats received from agents", t.heartbeats.clone());
        registry.register("placements", "Workload placements committed", t.placements.clone());
        registry.register("failovers", "Workloads moved off nodes whose lease expired", t.failovers.clone());
        registry.register("nodes", "Nodes by lifecycle state", t.nodes.clone());
        registry.register("workloads", "Workloads by state", t.workloads.clone());
        registry.register("agents_connected", "Agents with an open gateway connection", t.agents_connected.clone());
        Telemetry { registry, ..t }
    }

    /// The Prometheus text exposition.
    pub fn render(&self) -> String {
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = encode(&mut out, &self.registry);
        out
    }
}
