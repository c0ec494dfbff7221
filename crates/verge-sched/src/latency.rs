//! Latency estimates for nodes and users without measured round-trip times,
//! after the seed's model: `base + distance × factor`.

/// Round-trip time of the last mile and the node's own stack, ms.
const BASE_RTT_MS: f64 = 2.0;
/// Round-trip ms per great-circle km: light in fibre covers ~100 km per ms
/// one way, and real routes are ~1.5× longer than the great circle.
const RTT_MS_PER_KM: f64 = 0.015;

/// Estimated round-trip time in ms between two points `distance_km` apart.
pub fn estimate_rtt_ms(distance_km: f64) -> f64 {
    BASE_RTT_MS + distance_km * RTT_MS_PER_KM
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn transatlantic_estimate_is_in_the_real_range() {
        // New York - Frankfurt is ~6,200 km; measured RTTs are ~80-100 ms.
        let rtt = estimate_rtt_ms(6200.0);
        assert!((75.0..110.0).contains(&rtt), "{rtt}");
    }
}
