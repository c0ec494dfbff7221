//! The figures of a simulation run, as one JSON object or as a table beside
//! the anchors they compete with.

use serde::Serialize;

/// What a run measured.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Report {
    /// Simulated nodes.
    pub nodes: usize,
    /// Whether the run was secured: TLS, node certificates, attestation.
    pub tls: bool,
    /// Seconds to give every node a key and a certificate (0 without TLS).
    pub enrol_s: f64,
    /// Seconds from the first connection until every node was active (and, with TLS, attested).
    pub registered_s: f64,
    /// Heartbeats per second the server counted while every node was up.
    pub heartbeats_per_s: f64,
    /// CPU cores the server used meanwhile.
    pub server_cpu_cores: f64,
    /// The server's resident memory afterwards, MB.
    pub server_rss_mb: f64,
    /// Attestation nonces the nodes had answered by the end of the heartbeat measurement.
    pub attestations_answered: u64,
    /// Attestations the server had counted as passed by then.
    pub attestations_passed: u64,
    /// Workloads submitted and placed through the API per second (32 requests in flight).
    pub placements_per_s_api: f64,
    /// Real RTT from the users' city to the chosen node minus the best node's, median, ms.
    pub placement_regret_ms_median: f64,
    /// The same, 95th percentile, ms.
    pub placement_regret_ms_p95: f64,
    /// Share of workloads placed on a node with the best real RTT (within 0.5 ms).
    pub placement_optimal_share: f64,
    /// Median of |predicted − real| / real over node pairs, from the server's coordinates.
    pub vivaldi_median_rel_error: f64,
    /// Nodes killed at once for the failover measurement.
    pub killed_nodes: usize,
    /// Workloads that were on the killed nodes.
    pub affected_workloads: usize,
    /// Seconds from the kill until every affected workload ran elsewhere.
    pub failover_s: f64,
    /// The lease the server ran with, ms, for the failover anchor.
    pub lease_ms: u64,
    /// Nodes heated to 92 °C.
    pub heated_nodes: usize,
    /// Of those, how many the server reported degraded.
    pub heated_degraded: usize,
    /// Region cut off, if any, and seconds until all its nodes were active again after the cut healed.
    pub partition: Option<(String, f64)>,
    /// Share of capacity (the binding resource) in use when the first workload of a mixed set did not fit.
    pub utilisation_at_first_unschedulable: f64,
    /// CPU share in use at that point.
    pub utilisation_cpu: f64,
    /// Memory share in use at that point.
    pub utilisation_memory: f64,
}

impl Report {
    /// The report as a table, Verge's figures beside the anchors.
    pub fn table(&self) -> String {
        let mut rows = vec![("nodes".to_string(), format!("{}", self.nodes), String::new())];
        if self.tls {
            rows.push(("security".into(), "mutual TLS, node certificates, attestation".into(), String::new()));
            rows.push(("every node enrolled in".into(), format!("{:.1} s", self.enrol_s), String::new()));
        }
        rows.extend([
            ("all nodes active after".into(), format!("{:.1} s", self.registered_s), String::new()),
            ("heartbeats/s sustained".into(), format!("{:.0}", self.heartbeats_per_s), format!("{} (every node, 1/s)", self.nodes)),
            ("server CPU".into(), format!("{:.2} cores", self.server_cpu_cores), "< 1 core".into()),
            ("server RSS".into(), format!("{:.0} MB", self.server_rss_mb), "< 1 GB".into()),
            (
                "failover, nodes killed at once".into(),
                format!("{} nodes, {} workloads", self.killed_nodes, self.affected_workloads),
                String::new(),
            ),
            (
                "failure detected and re-placed in".into(),
                format!("{:.1} s", self.failover_s),
                format!("lease + 1 s = {:.1} s", self.lease_ms as f64 / 1000.0 + 1.0),
            ),
            ("placement regret, median".into(), format!("{:.2} ms", self.placement_regret_ms_median), "0 ms".into()),
            ("placement regret, p95".into(), format!("{:.2} ms", self.placement_regret_ms_p95), "< 5 ms".into()),
            ("placed on the best node".into(), format!("{:.1} %", self.placement_optimal_share * 100.0), String::new()),
            (
                "placements/s through the API".into(),
                format!("{:.0}", self.placements_per_s_api),
                "k8s 810 pods/s @5k nodes; Nomad ~3,750/s".into(),
            ),
            (
                "Vivaldi median relative error".into(),
                format!("{:.1} %", self.vivaldi_median_rel_error * 100.0),
                "11 % (Vivaldi paper); goal ≤ 11 %".into(),
            ),
            (
                "utilisation at first unschedulable".into(),
                format!(
                    "{:.1} % (cpu {:.1} %, memory {:.1} %)",
                    self.utilisation_at_first_unschedulable * 100.0,
                    self.utilisation_cpu * 100.0,
                    self.utilisation_memory * 100.0
                ),
                "≥ 95 %".into(),
            ),
        ]);
        if self.tls {
            rows.push((
                "attestations answered / passed".into(),
                format!("{} / {}", self.attestations_answered, self.attestations_passed),
                format!("≥ {} (one per connection)", self.nodes),
            ));
        }
        if self.heated_nodes > 0 {
            rows.push((
                "heated nodes reported degraded".into(),
                format!("{} of {}", self.heated_degraded, self.heated_nodes),
                "all".into(),
            ));
        }
        if let Some((region, s)) = &self.partition {
            rows.push((format!("region {region} back after partition"), format!("{s:.1} s"), String::new()));
        }
        let mut out = format!("{:<36} {:<44} {}\n", "figure", "verge", "anchor / goal");
        for (a, b, c) in rows {
            out.push_str(&format!("{a:<36} {b:<44} {c}\n"));
        }
        out
    }
}

/// The `q` quantile (0-1) of `v`, which it sorts; 0 when empty.
pub fn quantile(v: &mut [f64], q: f64) -> f64 {
    if v.is_empty() {
        return 0.0;
    }
    v.sort_by(|a, b| a.total_cmp(b));
    v[((v.len() - 1) as f64 * q).round() as usize]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantiles_and_table() {
        let mut v = vec![5.0, 1.0, 3.0, 2.0, 4.0];
        assert_eq!(quantile(&mut v, 0.5), 3.0);
        assert_eq!(quantile(&mut v, 1.0), 5.0);
        assert_eq!(quantile(&mut [], 0.5), 0.0);
        let t = Report { nodes: 10, ..Default::default() }.table();
        assert!(t.starts_with("figure") && t.contains("Vivaldi") && !t.contains("attestations"), "{t}");
        let t = Report { nodes: 10, tls: true, attestations_answered: 10, attestations_passed: 10, ..Default::default() }.table();
        assert!(t.contains("enrolled") && t.contains("10 / 10"), "{t}");
    }
}
