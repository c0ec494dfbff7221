//! Latency prediction where no coordinates are known, after the seed's model
//! `base + distance × factor`, with the factor calibrated from measured RTTs.

use serde::{Deserialize, Serialize};

/// Round-trip time as a straight line in distance: `base_ms + km × ms_per_km`.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct LatencyModel {
    /// RTT of the last mile and the hosts' stacks, ms.
    pub base_ms: f64,
    /// RTT per great-circle kilometre, ms.
    pub ms_per_km: f64,
}

/// Light in fibre covers ~100 km per ms one way and routes are ~1.5× the
/// great circle: 0.015 ms of RTT per km before any calibration.
impl Default for LatencyModel {
    fn default() -> Self {
        LatencyModel { base_ms: 2.0, ms_per_km: 0.015 }
    }
}

/// Fewest samples a calibration trusts.
const MIN_SAMPLES: usize = 8;

impl LatencyModel {
    /// Estimated RTT in ms between two points `km` apart.
    pub fn estimate_ms(&self, km: f64) -> f64 {
        self.base_ms + km * self.ms_per_km
    }

    /// Least-squares fit of `(km, rtt_ms)` samples, clamped to physical
    /// values (no faster than light in fibre, no negative base). Too few or
    /// degenerate samples give the default model.
    pub fn fit(samples: &[(f64, f64)]) -> LatencyModel {
        let ok: Vec<(f64, f64)> =
            samples.iter().copied().filter(|(k, r)| k.is_finite() && r.is_finite() && *k >= 0.0 && *r > 0.0).collect();
        if ok.len() < MIN_SAMPLES {
            return LatencyModel::default();
        }
        let n = ok.len() as f64;
        let (mx, my) = (ok.iter().map(|s| s.0).sum::<f64>() / n, ok.iter().map(|s| s.1).sum::<f64>() / n);
        let sxx: f64 = ok.iter().map(|(x, _)| (x - mx).powi(2)).sum();
        if sxx < 1e-9 {
            return LatencyModel::default();
        }
        let sxy: f64 = ok.iter().map(|(x, y)| (x - mx) * (y - my)).sum();
        let slope = (sxy / sxx).clamp(0.01, 0.1);
        LatencyModel { base_ms: (my - slope * mx).max(0.0), ms_per_km: slope }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn transatlantic_estimate_is_in_the_real_range() {
        // New York - Frankfurt is ~6,200 km; measured RTTs are ~80-100 ms.
        let rtt = LatencyModel::default().estimate_ms(6200.0);
        assert!((75.0..110.0).contains(&rtt), "{rtt}");
    }

    #[test]
    fn fit_recovers_a_line_and_refuses_nonsense() {
        let samples: Vec<(f64, f64)> = (0..20).map(|i| (i as f64 * 500.0, 5.0 + i as f64 * 500.0 * 0.02)).collect();
        let m = LatencyModel::fit(&samples);
        assert!((m.base_ms - 5.0).abs() < 1e-6 && (m.ms_per_km - 0.02).abs() < 1e-9, "{m:?}");
        assert_eq!(LatencyModel::fit(&samples[..3]), LatencyModel::default());
        let flat: Vec<(f64, f64)> = (0..20).map(|_| (100.0, 5.0)).collect();
        assert_eq!(LatencyModel::fit(&flat), LatencyModel::default());
        let faster_than_light: Vec<(f64, f64)> = (0..20).map(|i| (i as f64 * 1000.0, 1.0 + i as f64)).collect();
        assert!(LatencyModel::fit(&faster_than_light).ms_per_km >= 0.01);
    }
}
