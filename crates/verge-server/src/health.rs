//! Node health from real metrics: the seed's `health_checks` block and the
//! pure assessment that turns a node's last heartbeat into
//! `healthy / degraded / unhealthy / unknown`.

use serde::{Deserialize, Serialize};
use verge_core::{Health, HealthReport, Millis, NodeMetrics};

/// How bad a crossed threshold is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Severity {
    /// The node is degraded but keeps its work.
    Warning,
    /// The node is unhealthy and gets no new work.
    Critical,
}

impl Severity {
    fn health(self) -> Health {
        match self {
            Severity::Warning => Health::Degraded,
            Severity::Critical => Health::Unhealthy,
        }
    }
}

/// One entry of the `health_checks` list.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub enum HealthCheck {
    /// Hottest thermal zone at or above `threshold` °C.
    CpuTemperature { threshold: f64, severity: Severity },
    /// Memory in use at or above `threshold` percent.
    MemoryPressure { threshold: f64, severity: Severity },
    /// No heartbeat for longer than `interval`.
    NetworkConnectivity {
        interval: Millis,
        #[serde(default = "warning")]
        severity: Severity,
    },
    /// Data disk in use at or above `threshold` percent.
    StorageHealth {
        #[serde(default = "disk_full_percent")]
        threshold: f64,
        #[serde(default = "critical")]
        severity: Severity,
        /// Accepted for the seed's shape; SMART data is not read yet, the
        /// check uses disk usage only.
        #[serde(default)]
        check_smart: bool,
    },
}

fn warning() -> Severity {
    Severity::Warning
}
fn critical() -> Severity {
    Severity::Critical
}
fn disk_full_percent() -> f64 {
    95.0
}

/// The default checks: the seed's four with its thresholds.
pub fn default_checks() -> Vec<HealthCheck> {
    vec![
        HealthCheck::CpuTemperature { threshold: 80.0, severity: Severity::Warning },
        HealthCheck::MemoryPressure { threshold: 90.0, severity: Severity::Critical },
        HealthCheck::NetworkConnectivity { interval: Millis(3_000), severity: Severity::Warning },
        HealthCheck::StorageHealth { threshold: 95.0, severity: Severity::Critical, check_smart: false },
    ]
}

/// A node's health with its 0-100 score and the reasons behind it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Assessment {
    /// The verdict.
    pub status: Health,
    /// 100 minus penalties; an operator report caps it.
    pub score: f64,
    /// Every check that failed, for people.
    pub reasons: Vec<String>,
}

/// Assesses a node from its last metrics (and how old they are) and the last
/// operator report. `heartbeat_age_ms` is `None` when the node never
/// heartbeated to this server.
pub fn assess(
    checks: &[HealthCheck],
    metrics: Option<&NodeMetrics>,
    heartbeat_age_ms: Option<u64>,
    report: Option<&HealthReport>,
) -> Assessment {
    let (Some(m), Some(age)) = (metrics, heartbeat_age_ms) else {
        return Assessment { status: Health::Unknown, score: 0.0, reasons: vec!["no heartbeat yet".into()] };
    };
    let mut status = Health::Healthy;
    let mut score: f64 = 100.0;
    let mut reasons = Vec::new();
    let mut fail = |sev: Severity, why: String| {
        let h = sev.health();
        if h.severity() > status.severity() {
            status = h;
        }
        score -= if sev == Severity::Critical { 50.0 } else { 25.0 };
        reasons.push(why);
    };
    for check in checks {
        match check {
            HealthCheck::CpuTemperature { threshold, severity } => {
                if let Some(t) = m.temperature_c.filter(|t| t >= threshold) {
                    fail(*severity, format!("cpu temperature {t:.0} °C ≥ {threshold} °C"));
                }
            }
            HealthCheck::MemoryPressure { threshold, severity } => {
                let p = m.memory_percent();
                if p >= *threshold {
                    fail(*severity, format!("memory {p:.0}% ≥ {threshold}%"));
                }
            }
            HealthCheck::NetworkConnectivity { interval, severity } => {
                if age > interval.0 {
                    fail(*severity, format!("no heartbeat for {} ms", age));
                }
            }
            HealthCheck::StorageHealth { threshold, severity, .. } => {
                let p = m.disk_percent();
                if p >= *threshold {
                    fail(*severity, format!("disk {p:.0}% ≥ {threshold}%"));
                }
            }
        }
    }
    if let Some(r) = report {
        let reported = Health::from_score(r.score);
        if reported.severity() > status.severity() {
            status = reported;
        }
        score = score.min(r.score);
        if reported != Health::Healthy {
            reasons.push(format!(
                "reported score {:.0}{}",
                r.score,
                if r.reason.is_empty() { String::new() } else { format!(": {}", r.reason) }
            ));
        }
    }
    Assessment { status, score: score.max(0.0), reasons }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn metrics(mem_pct: u64, temp: Option<f64>) -> NodeMetrics {
        NodeMetrics { memory_used: mem_pct, memory_total: 100, disk_used: 10, disk_total: 100, temperature_c: temp, ..Default::default() }
    }

    #[test]
    fn seed_thresholds_grade_nodes() {
        let c = default_checks();
        assert_eq!(assess(&c, Some(&metrics(50, Some(60.0))), Some(100), None).status, Health::Healthy);
        let hot = assess(&c, Some(&metrics(50, Some(85.0))), Some(100), None);
        assert_eq!(hot.status, Health::Degraded);
        assert!(hot.reasons[0].contains("85"), "{:?}", hot.reasons);
        assert_eq!(assess(&c, Some(&metrics(95, None)), Some(100), None).status, Health::Unhealthy);
        assert_eq!(assess(&c, Some(&metrics(50, None)), Some(10_000), None).status, Health::Degraded);
        assert_eq!(assess(&c, None, None, None).status, Health::Unknown);
    }

    #[test]
    fn an_operator_report_can_only_make_it_worse() {
        let c = default_checks();
        let r = HealthReport { score: 40.0, reason: "bad disk".into(), metrics: Default::default() };
        let a = assess(&c, Some(&metrics(10, None)), Some(0), Some(&r));
        assert_eq!((a.status, a.score), (Health::Unhealthy, 40.0));
    }

    #[test]
    fn the_seed_yaml_block_parses() {
        let yaml = "- type: cpu_temperature\n  threshold: 80\n  severity: warning\n- type: memory_pressure\n  threshold: 90\n  severity: critical\n- type: network_connectivity\n  interval: 30s\n- type: storage_health\n  check_smart: true\n";
        let checks: Vec<HealthCheck> = serde_yaml::from_str(yaml).unwrap();
        assert_eq!(checks.len(), 4);
        assert!(serde_yaml::from_str::<Vec<HealthCheck>>("- type: cpu_temp\n  threshold: 1\n").is_err());
    }
}
