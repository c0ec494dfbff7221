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
    /// Requests made to the provisioner for more nodes.
    pub provision_requests: Counter,
    /// Nodes by lifecycle state.
    pub nodes: Family<Labels, Gauge>,
    /// Workloads by state.
    pub workloads: Family<Labels, Gauge>,
    /// Agents with an open gateway connection.
    pub agents_connected: Gauge,
    /// TLS handshakes refused (no or bad client certificate, old TLS, plain text).
    pub tls_refused: Counter,
    /// API requests refused: no, bad or expired token (401) or wrong role (403).
    pub auth_refused: Family<Labels, Counter>,
    /// Attestations by outcome (`passed` or the error code).
    pub attestations: Family<Labels, Counter>,
    /// CPU seconds this process used (user + system), set at scrape time.
    process_cpu: Gauge<f64, std::sync::atomic::AtomicU64>,
    /// Resident memory of this process, set at scrape time.
    process_rss: Gauge,
}

impl Telemetry {
    /// Registers every metric: Verge's under `verge_`, the process's under
    /// the conventional `process_` names.
    pub fn new() -> Self {
        let t = Telemetry {
            heartbeats: Counter::default(),
            placements: Counter::default(),
            failovers: Counter::default(),
            provision_requests: Counter::default(),
            nodes: Family::default(),
            workloads: Family::default(),
            agents_connected: Gauge::default(),
            tls_refused: Counter::default(),
            auth_refused: Family::default(),
            attestations: Family::default(),
            process_cpu: Gauge::default(),
            process_rss: Gauge::default(),
            registry: Registry::default(),
        };
        let mut registry = Registry::default();
        registry.register("process_cpu_seconds", "CPU time used by this process (user + system)", t.process_cpu.clone());
        registry.register("process_resident_memory_bytes", "Resident memory of this process", t.process_rss.clone());
        let verge = registry.sub_registry_with_prefix("verge");
        verge.register("heartbeats", "Heartbeats received from agents", t.heartbeats.clone());
        verge.register("placements", "Workload placements committed", t.placements.clone());
        verge.register("failovers", "Workloads moved off nodes whose lease expired", t.failovers.clone());
        verge.register("provision_requests", "Requests made to the provisioner for more nodes", t.provision_requests.clone());
        verge.register("nodes", "Nodes by lifecycle state", t.nodes.clone());
        verge.register("workloads", "Workloads by state", t.workloads.clone());
        verge.register("agents_connected", "Agents with an open gateway connection", t.agents_connected.clone());
        verge.register("tls_refused", "TLS handshakes refused", t.tls_refused.clone());
        verge.register("auth_refused", "API requests refused by authentication or RBAC, by status", t.auth_refused.clone());
        verge.register("attestations", "Node attestations by outcome", t.attestations.clone());
        Telemetry { registry, ..t }
    }

    /// Reads this process's CPU time and resident memory from `/proc/self`.
    pub fn sample_process(&self) {
        if let Some((cpu, rss)) = process_usage() {
            self.process_cpu.set(cpu);
            self.process_rss.set(rss as i64);
        }
    }

    /// The Prometheus text exposition.
    pub fn render(&self) -> String {
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = encode(&mut out, &self.registry);
        out
    }
}

/// (CPU seconds, resident bytes) of this process, from `/proc/self`.
fn process_usage() -> Option<(f64, u64)> {
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    let fields: Vec<&str> = stat.rsplit_once(')')?.1.split_whitespace().collect();
    let ticks: u64 = fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?;
    let rss_pages: u64 = fields.get(21)?.parse().ok()?;
    // SAFETY: sysconf has no memory effects.
    let (hz, page) = unsafe { (libc::sysconf(libc::_SC_CLK_TCK), libc::sysconf(libc::_SC_PAGESIZE)) };
    (hz > 0 && page > 0).then(|| (ticks as f64 / hz as f64, rss_pages * page as u64))
}
