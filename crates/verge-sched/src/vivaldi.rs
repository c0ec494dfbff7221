//! Vivaldi network coordinates with height and adjustment, after HashiCorp
//! Serf's `coordinate` package: each node keeps a [`Coordinate`] that it moves
//! with every measured round-trip time to a peer, so that [`distance_ms`]
//! between two coordinates predicts the RTT between their nodes without
//! measuring it. Agents carry their coordinate in heartbeats; placement uses
//! the predictions.
//!
//! Everything here is a pure function of its inputs: no I/O, no clock, and
//! no ambient randomness. Where Serf picks a random direction (two nodes at
//! the same point), the client draws it from a generator seeded by the
//! caller, so the same inputs always give the same coordinates. Units are
//! milliseconds throughout (Serf uses seconds).
//!
//! References: Dabek et al., "Vivaldi: a decentralized network coordinate
//! system", SIGCOMM 2004; Ledlie et al., "Network coordinates in the wild",
//! NSDI 2007; Lee et al., "On suitability of Euclidean embedding for
//! host-based network coordinate systems", ToN 2010.

use serde::{Deserialize, Serialize};
use thiserror::Error;

/// Dimensions of the Euclidean part of a coordinate, as in Serf: more stop
/// paying off after about seven (Ledlie et al.).
pub const DIMENSIONS: usize = 8;

/// The largest RTT an update accepts, ms: anything slower is a broken
/// measurement, not a network distance (Serf's limit).
pub const MAX_RTT_MS: f64 = 10_000.0;

/// Below this, ms, two points count as coincident (Serf's 1 µs).
const ZERO_THRESHOLD_MS: f64 = 1.0e-3;

/// Serf computes gravity as `(d / ρ)²` with everything in seconds, so the
/// force comes out in seconds; this turns it into ms.
const MS_PER_SECOND: f64 = 1_000.0;

/// Why a coordinate update or a configuration was refused.
#[derive(Debug, Clone, PartialEq, Error)]
pub enum VivaldiError {
    /// The measured RTT is not a usable distance.
    #[error("round-trip time {rtt_ms} ms is not in (0, {MAX_RTT_MS}] ms; drop the sample")]
    InvalidRtt {
        /// The value given.
        rtt_ms: f64,
    },
    /// The peer's coordinate holds a non-finite or negative field.
    #[error("peer coordinate is invalid ({reason}); ignore it until the peer sends a fresh one")]
    InvalidCoordinate {
        /// Which field is wrong.
        reason: &'static str,
    },
    /// The update would have left this node's coordinate non-finite, so it
    /// was not applied.
    #[error("update would make the coordinate non-finite; the peer's coordinate is too far out")]
    Unstable,
    /// A configuration value is out of its range.
    #[error("vivaldi config: {0}")]
    InvalidConfig(&'static str),
}

/// Tuning of the algorithm. The defaults are Serf's, converted to ms.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct VivaldiConfig {
    /// The error a node starts with before any observation, and the ceiling
    /// its error never exceeds. Dimensionless.
    pub error_max: f64,
    /// How much one observation can move a node's error estimate (Vivaldi's
    /// c_e), 0-1.
    pub ce: f64,
    /// How much one observation can move a node's coordinate (Vivaldi's c_c),
    /// 0-1.
    pub cc: f64,
    /// How many recent samples of `rtt − distance` the adjustment term
    /// averages (Lee et al.); 0 turns adjustment off.
    pub adjustment_window: usize,
    /// The smallest height, ms; heights stay positive so the access link of
    /// every node always counts.
    pub height_min_ms: f64,
    /// Gravity's ρ, ms: how weakly coordinates are pulled back to the origin
    /// to stop the whole system drifting away.
    pub gravity_rho_ms: f64,
}

impl Default for VivaldiConfig {
    fn default() -> Self {
        VivaldiConfig { error_max: 1.5, ce: 0.25, cc: 0.25, adjustment_window: 20, height_min_ms: 0.01, gravity_rho_ms: 150_000.0 }
    }
}

impl VivaldiConfig {
    /// Checks every value is in its range, so a client never divides by
    /// zero or runs away with an unbounded step.
    pub fn validate(&self) -> Result<(), VivaldiError> {
        if !(self.error_max.is_finite() && self.error_max > 0.0) {
            return Err(VivaldiError::InvalidConfig("error_max must be finite and above 0"));
        }
        if !(self.ce > 0.0 && self.ce <= 1.0) {
            return Err(VivaldiError::InvalidConfig("ce must be in (0, 1]"));
        }
        if !(self.cc > 0.0 && self.cc <= 1.0) {
            return Err(VivaldiError::InvalidConfig("cc must be in (0, 1]"));
        }
        if !(self.height_min_ms.is_finite() && self.height_min_ms >= 0.0) {
            return Err(VivaldiError::InvalidConfig("height_min_ms must be finite and at least 0"));
        }
        if !(self.gravity_rho_ms.is_finite() && self.gravity_rho_ms > 0.0) {
            return Err(VivaldiError::InvalidConfig("gravity_rho_ms must be finite and above 0"));
        }
        Ok(())
    }
}

/// A node's position in the latency space: what an agent reports in its
/// heartbeat so that anyone can predict its RTT to any other node.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Coordinate {
    /// The Euclidean part, ms: the core of the network.
    pub vec: [f64; DIMENSIONS],
    /// How unsure the node is of its coordinate: a moving estimate of its
    /// relative prediction error. Dimensionless.
    pub error: f64,
    /// The node's access link, ms: added to every distance from it.
    pub height: f64,
    /// A per-node offset, ms, half the mean recent `rtt − distance`: corrects
    /// what the Euclidean model systematically gets wrong for this node.
    pub adjustment: f64,
}

impl Coordinate {
    /// A coordinate at the origin with the largest error and the smallest
    /// height: where every node starts.
    pub fn origin(config: &VivaldiConfig) -> Coordinate {
        Coordinate { vec: [0.0; DIMENSIONS], error: config.error_max, height: config.height_min_ms, adjustment: 0.0 }
    }

    /// Checks the fields are usable: finite everywhere, error and height not
    /// negative. Coordinates arrive from the network, so check before use.
    pub fn validate(&self) -> Result<(), VivaldiError> {
        let invalid = |reason| Err(VivaldiError::InvalidCoordinate { reason });
        if !self.vec.iter().all(|x| x.is_finite()) {
            return invalid("vec has a non-finite component");
        }
        if !(self.error.is_finite() && self.error >= 0.0) {
            return invalid("error must be finite and at least 0");
        }
        if !(self.height.is_finite() && self.height >= 0.0) {
            return invalid("height must be finite and at least 0");
        }
        if !self.adjustment.is_finite() {
            return invalid("adjustment must be finite");
        }
        Ok(())
    }
}

/// The predicted RTT between two nodes in ms: the Euclidean distance plus
/// both heights, plus both adjustments unless that would make it zero or
/// negative (then the unadjusted value), as Serf does.
pub fn distance_ms(a: &Coordinate, b: &Coordinate) -> f64 {
    let raw = raw_distance_ms(a, b);
    let adjusted = raw + a.adjustment + b.adjustment;
    if adjusted > 0.0 {
        adjusted
    } else {
        raw
    }
}

/// Euclidean distance plus heights, without adjustments.
fn raw_distance_ms(a: &Coordinate, b: &Coordinate) -> f64 {
    magnitude(&sub(&a.vec, &b.vec)) + a.height + b.height
}

/// One node's side of Vivaldi: its coordinate, the samples behind its
/// adjustment, and the seeded generator for tie-breaking directions. Feed it
/// every RTT the node measures to a peer along with that peer's coordinate.
#[derive(Debug, Clone)]
pub struct VivaldiClient {
    config: VivaldiConfig,
    coordinate: Coordinate,
    /// Ring of the last `adjustment_window` samples of `rtt − raw distance`;
    /// unfilled slots are zero, as in Serf.
    adjustment_samples: Vec<f64>,
    adjustment_next: usize,
    rng: SplitMix64,
}

impl VivaldiClient {
    /// A client at the origin. `seed` fixes the directions it picks when it
    /// sits on top of a peer; give each node a different one (its id's hash)
    /// so coincident nodes push apart rather than in step.
    pub fn new(config: VivaldiConfig, seed: u64) -> Result<VivaldiClient, VivaldiError> {
        config.validate()?;
        Ok(VivaldiClient {
            coordinate: Coordinate::origin(&config),
            adjustment_samples: vec![0.0; config.adjustment_window],
            adjustment_next: 0,
            rng: SplitMix64(seed),
            config,
        })
    }

    /// This node's current coordinate, to report and to predict from.
    pub fn coordinate(&self) -> &Coordinate {
        &self.coordinate
    }

    /// The configuration the client runs with.
    pub fn config(&self) -> &VivaldiConfig {
        &self.config
    }

    /// Moves this node's coordinate after measuring `rtt_ms` to a peer whose
    /// coordinate is `other`, and returns the new coordinate. An invalid RTT
    /// (not above 0, NaN, above [`MAX_RTT_MS`]) or peer coordinate is refused
    /// and leaves the client exactly as it was; so does an update that would
    /// overflow.
    pub fn update(&mut self, other: &Coordinate, rtt_ms: f64) -> Result<&Coordinate, VivaldiError> {
        if !(rtt_ms > 0.0 && rtt_ms <= MAX_RTT_MS) {
            return Err(VivaldiError::InvalidRtt { rtt_ms });
        }
        other.validate()?;
        let mut rng = self.rng.clone();
        let mut next = self.coordinate.clone();

        // Vivaldi: move along the spring by a step weighted by how sure this
        // node is compared with its peer.
        let dist = distance_ms(&next, other);
        let wrongness = (dist - rtt_ms).abs() / rtt_ms;
        let total_error = (next.error + other.error).max(ZERO_THRESHOLD_MS);
        let weight = next.error / total_error;
        let ce = self.config.ce * weight;
        next.error = (ce * wrongness + next.error * (1.0 - ce)).min(self.config.error_max);
        let force = self.config.cc * weight * (rtt_ms - dist);
        apply_force(&self.config, &mut next, force, other, &mut rng);

        // Adjustment: half the mean of recent `rtt − raw distance`.
        let sample = rtt_ms - raw_distance_ms(&next, other);
        if !self.adjustment_samples.is_empty() {
            let old = self.adjustment_samples[self.adjustment_next];
            let sum: f64 = self.adjustment_samples.iter().sum::<f64>() - old + sample;
            next.adjustment = sum / (2.0 * self.adjustment_samples.len() as f64);
        }

        // Gravity: a weak pull towards the origin against drift.
        let origin = Coordinate::origin(&self.config);
        let from_origin = distance_ms(&origin, &next) / self.config.gravity_rho_ms;
        let gravity = -MS_PER_SECOND * from_origin * from_origin;
        apply_force(&self.config, &mut next, gravity, &origin, &mut rng);

        if next.validate().is_err() {
            return Err(VivaldiError::Unstable);
        }
        if let Some(slot) = self.adjustment_samples.get_mut(self.adjustment_next) {
            *slot = sample;
            self.adjustment_next = (self.adjustment_next + 1) % self.config.adjustment_window;
        }
        self.rng = rng;
        self.coordinate = next;
        Ok(&self.coordinate)
    }
}

/// Pushes `c` away from `other` by `force` ms (towards it when negative), and
/// grows or shrinks its height in proportion, never below the minimum.
fn apply_force(config: &VivaldiConfig, c: &mut Coordinate, force: f64, other: &Coordinate, rng: &mut SplitMix64) {
    let (unit, mag) = unit_vector_at(&c.vec, &other.vec, rng);
    for (x, u) in c.vec.iter_mut().zip(unit) {
        *x += u * force;
    }
    if mag > ZERO_THRESHOLD_MS {
        c.height = (c.height + force * (c.height + other.height) / mag).max(config.height_min_ms);
    }
}

/// The unit vector pointing from `to` at `from`, and their distance; when
/// they coincide, a direction drawn from `rng` and distance 0.
fn unit_vector_at(from: &[f64; DIMENSIONS], to: &[f64; DIMENSIONS], rng: &mut SplitMix64) -> ([f64; DIMENSIONS], f64) {
    let d = sub(from, to);
    let mag = magnitude(&d);
    if mag > ZERO_THRESHOLD_MS {
        return (d.map(|x| x / mag), mag);
    }
    let random = [(); DIMENSIONS].map(|()| rng.next_f64() - 0.5);
    let random_mag = magnitude(&random);
    if random_mag > ZERO_THRESHOLD_MS {
        return (random.map(|x| x / random_mag), 0.0);
    }
    let mut axis = [0.0; DIMENSIONS];
    axis[0] = 1.0;
    (axis, 0.0)
}

/// The component-wise difference `a − b`.
fn sub(a: &[f64; DIMENSIONS], b: &[f64; DIMENSIONS]) -> [f64; DIMENSIONS] {
    std::array::from_fn(|i| a[i] - b[i])
}

/// The Euclidean length of `v`.
fn magnitude(v: &[f64; DIMENSIONS]) -> f64 {
    v.iter().map(|x| x * x).sum::<f64>().sqrt()
}

/// SplitMix64 (Steele, Lea, Flood 2014): a tiny seeded generator, enough for
/// tie-breaking directions and for test workloads; not for anything secret.
#[derive(Debug, Clone)]
pub struct SplitMix64(pub u64);

impl SplitMix64 {
    /// The next 64 uniformly distributed bits.
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in [0, 1), from the top 53 bits.
    pub fn next_f64(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rttdata::RttMatrix;

    fn client(seed: u64) -> VivaldiClient {
        VivaldiClient::new(VivaldiConfig::default(), seed).expect("default config is valid")
    }

    /// Lets every node in turn measure its RTT to each given peer and update.
    fn exchange(clients: &mut [VivaldiClient], rtt: impl Fn(usize, usize) -> f64, rounds: usize) {
        for _ in 0..rounds {
            for i in 0..clients.len() {
                for j in 0..clients.len() {
                    if i != j {
                        let other = clients[j].coordinate().clone();
                        clients[i].update(&other, rtt(i, j)).expect("valid sample");
                    }
                }
            }
        }
    }

    #[test]
    fn two_nodes_converge_to_their_rtt() {
        let mut clients = vec![client(1), client(2)];
        exchange(&mut clients, |_, _| 42.0, 200);
        let predicted = distance_ms(clients[0].coordinate(), clients[1].coordinate());
        assert!((predicted - 42.0).abs() < 0.5, "predicted {predicted} ms");
        assert!(clients[0].coordinate().error < 0.05, "{:?}", clients[0].coordinate());
    }

    #[test]
    fn a_triangle_embeds_its_three_rtts() {
        let rtts = [[0.0, 10.0, 25.0], [10.0, 0.0, 20.0], [25.0, 20.0, 0.0]];
        let mut clients = vec![client(1), client(2), client(3)];
        exchange(&mut clients, |i, j| rtts[i][j], 500);
        for i in 0..3 {
            for j in 0..3 {
                if i != j {
                    let predicted = distance_ms(clients[i].coordinate(), clients[j].coordinate());
                    let relative = (predicted - rtts[i][j]).abs() / rtts[i][j];
                    assert!(relative < 0.05, "{i}->{j}: predicted {predicted} ms, real {}", rtts[i][j]);
                }
            }
        }
    }

    #[test]
    fn invalid_rtts_are_refused_and_change_nothing() {
        let mut a = client(1);
        let peer = Coordinate::origin(&VivaldiConfig::default());
        a.update(&peer, 30.0).expect("valid sample");
        let before = a.coordinate().clone();
        for rtt_ms in [0.0, -1.0, f64::NAN, f64::INFINITY, MAX_RTT_MS + 1.0] {
            let err = a.update(&peer, rtt_ms).expect_err("invalid rtt");
            assert!(matches!(err, VivaldiError::InvalidRtt { .. }), "{err}");
            assert_eq!(a.coordinate(), &before);
        }
        a.update(&peer, MAX_RTT_MS).expect("the limit itself is valid");
    }

    #[test]
    fn invalid_peer_coordinates_are_refused_and_change_nothing() {
        let config = VivaldiConfig::default();
        let mut a = client(1);
        let before = a.coordinate().clone();
        let mut nan = Coordinate::origin(&config);
        nan.vec[3] = f64::NAN;
        let mut negative = Coordinate::origin(&config);
        negative.height = -1.0;
        for peer in [nan, negative] {
            let err = a.update(&peer, 10.0).expect_err("invalid peer");
            assert!(matches!(err, VivaldiError::InvalidCoordinate { .. }), "{err}");
        }
        let mut huge = Coordinate::origin(&config);
        huge.vec = [1e300; DIMENSIONS];
        assert_eq!(a.update(&huge, 10.0), Err(VivaldiError::Unstable));
        assert_eq!(a.coordinate(), &before);
    }

    #[test]
    fn bad_configs_are_refused() {
        let bad = [
            VivaldiConfig { ce: 0.0, ..VivaldiConfig::default() },
            VivaldiConfig { cc: 1.5, ..VivaldiConfig::default() },
            VivaldiConfig { error_max: f64::NAN, ..VivaldiConfig::default() },
            VivaldiConfig { height_min_ms: -1.0, ..VivaldiConfig::default() },
            VivaldiConfig { gravity_rho_ms: 0.0, ..VivaldiConfig::default() },
        ];
        for config in bad {
            let err = VivaldiClient::new(config, 0).expect_err("invalid config");
            assert!(matches!(err, VivaldiError::InvalidConfig(_)), "{err}");
        }
    }

    #[test]
    fn without_adjustment_the_adjustment_stays_zero() {
        let config = VivaldiConfig { adjustment_window: 0, ..VivaldiConfig::default() };
        let mut a = VivaldiClient::new(config.clone(), 1).expect("valid config");
        let mut b = VivaldiClient::new(config, 2).expect("valid config");
        for _ in 0..50 {
            let cb = b.coordinate().clone();
            a.update(&cb, 15.0).expect("valid sample");
            let ca = a.coordinate().clone();
            b.update(&ca, 15.0).expect("valid sample");
        }
        assert_eq!(a.coordinate().adjustment, 0.0);
        let predicted = distance_ms(a.coordinate(), b.coordinate());
        assert!((predicted - 15.0).abs() < 0.5, "predicted {predicted} ms");
    }

    #[test]
    fn the_same_seed_gives_the_same_coordinates() {
        let run = |seed| {
            let mut clients = vec![client(seed), client(seed + 1)];
            exchange(&mut clients, |_, _| 5.0, 3);
            clients[0].coordinate().clone()
        };
        assert_eq!(run(7), run(7));
        assert_ne!(run(7), run(9));
    }

    #[test]
    fn coordinates_survive_a_serde_round_trip() {
        let mut a = client(1);
        let peer = Coordinate::origin(&VivaldiConfig::default());
        let coordinate = a.update(&peer, 12.5).expect("valid sample").clone();
        let json = serde_json::to_string(&coordinate).expect("serialises");
        let back: Coordinate = serde_json::from_str(&json).expect("deserialises");
        // serde_json's default float parser may be one ulp off; that is far
        // below anything a millisecond prediction can notice.
        let close = |a: f64, b: f64| (a - b).abs() <= 1e-12 * a.abs().max(1.0);
        assert!(back.vec.iter().zip(coordinate.vec).all(|(&a, b)| close(a, b)), "{back:?}");
        assert!(close(back.error, coordinate.error));
        assert!(close(back.height, coordinate.height));
        assert!(close(back.adjustment, coordinate.adjustment));
        let short = r#"{"vec":[0,0,0],"error":1,"height":1,"adjustment":0}"#;
        assert!(serde_json::from_str::<Coordinate>(short).is_err());
    }

    /// Median and 90th percentile of `|predicted − real| / real` over every
    /// pair with a measured RTT above zero, after `rounds` rounds in which
    /// each city measures its real RTT to `peers` random others.
    fn embed_real_matrix(matrix: &RttMatrix, rounds: usize, peers: usize, seed: u64) -> (f64, f64) {
        let n = matrix.len();
        let mut rng = SplitMix64(seed);
        let mut clients: Vec<VivaldiClient> = (0..n as u64).map(|i| client(seed ^ (i + 1))).collect();
        let measured: Vec<Vec<(usize, f64)>> = (0..n)
            .map(|i| (0..n).filter(|&j| j != i).filter_map(|j| matrix.rtt_ms(i, j).filter(|&rtt| rtt > 0.0).map(|rtt| (j, rtt))).collect())
            .collect();
        for _ in 0..rounds {
            for (i, candidates) in measured.iter().enumerate() {
                if candidates.is_empty() {
                    continue;
                }
                for _ in 0..peers {
                    let (j, rtt) = candidates[(rng.next_u64() % candidates.len() as u64) as usize];
                    let other = clients[j].coordinate().clone();
                    clients[i].update(&other, rtt).expect("real rtts are valid");
                }
            }
        }
        let mut errors = Vec::new();
        for i in 0..n {
            for j in i + 1..n {
                if let Some(real) = matrix.rtt_ms(i, j).filter(|&rtt| rtt > 0.0) {
                    let predicted = distance_ms(clients[i].coordinate(), clients[j].coordinate());
                    errors.push((predicted - real).abs() / real);
                }
            }
        }
        errors.sort_by(f64::total_cmp);
        let at = |q: f64| errors[((errors.len() - 1) as f64 * q).round() as usize];
        (at(0.5), at(0.9))
    }

    fn real_matrix() -> Option<RttMatrix> {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../../shared/data/rtt/city-rtt-ms.csv");
        match std::fs::read_to_string(&path) {
            Ok(text) => Some(RttMatrix::parse(&text).expect("the real matrix parses")),
            Err(err) => {
                eprintln!("skipping: cannot read {}: {err}", path.display());
                None
            }
        }
    }

    #[test]
    fn real_city_rtts_embed_with_small_error() {
        let Some(matrix) = real_matrix() else { return };
        let (median, p90) = embed_real_matrix(&matrix, 300, 4, 0x5eed);
        println!(
            "vivaldi on {} cities, 300 rounds x 4 peers: median relative error {:.1} %, p90 {:.1} %",
            matrix.len(),
            median * 100.0,
            p90 * 100.0
        );
        assert!(median <= 0.15, "median relative error {median}");
    }
}
