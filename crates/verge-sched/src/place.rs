//! The first placement: filter nodes by hard constraints, score the rest by
//! distance to the users and free resources, pick the best.

use std::collections::BTreeMap;
use std::fmt;

use verge_core::{haversine_km, NodeId, Strategy, WorkloadSpec};

use crate::latency::estimate_rtt_ms;
use crate::view::{Capacity, ClusterView, NodeView};

/// Furthest two points on earth are apart, km; normalises distance scores.
const HALF_CIRCUMFERENCE_KM: f64 = 20_040.0;

/// Where a workload should run and why.
#[derive(Debug, Clone, PartialEq)]
pub struct Placement {
    /// The chosen node.
    pub node: NodeId,
    /// Its score, 0-1.
    pub score: f64,
    /// Why, for people.
    pub reason: String,
}

/// Why a workload fits nowhere: how many nodes each check excluded.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Unplaceable {
    /// Nodes considered.
    pub nodes: usize,
    /// Number of nodes excluded per reason.
    pub excluded: BTreeMap<&'static str, usize>,
}

impl fmt::Display for Unplaceable {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.nodes == 0 {
            return f.write_str("no nodes registered");
        }
        write!(f, "no node fits ({} considered", self.nodes)?;
        for (i, (reason, n)) in self.excluded.iter().enumerate() {
            write!(f, "{} {n} {reason}", if i == 0 { ":" } else { "," })?;
        }
        f.write_str(")")
    }
}

/// The first hard constraint `node` violates for `w`, if any.
fn exclusion(node: &NodeView, w: &WorkloadSpec) -> Option<&'static str> {
    if let Some(reason) = node.unavailable {
        return Some(reason);
    }
    let need = Capacity::of(w);
    let free = node.free();
    if need.cpu > free.cpu + 1e-9 {
        return Some("insufficient cpu");
    }
    if need.memory > free.memory {
        return Some("insufficient memory");
    }
    if need.storage > free.storage {
        return Some("insufficient storage");
    }
    let c = &w.constraints;
    if !c.node_types.is_empty() && !c.node_types.contains(&node.node_type) {
        return Some("node type not allowed");
    }
    if c.required_labels.iter().any(|(k, v)| node.labels.get(k) != Some(v)) {
        return Some("missing required labels");
    }
    if c.anti_affinity.iter().any(|a| node.residents.contains(a)) {
        return Some("anti-affinity");
    }
    if let Some(users) = c.geo_proximity {
        let km = haversine_km(users, node.location);
        if c.max_distance_km.is_some_and(|max| km > max) {
            return Some("too far from users");
        }
        if c.max_latency_ms.is_some_and(|max| estimate_rtt_ms(km) > max) {
            return Some("latency above maxLatencyMs");
        }
    }
    None
}

/// Weights of (proximity, free resources) per strategy.
fn weights(s: Strategy) -> (f64, f64) {
    match s {
        Strategy::LatencyFirst | Strategy::GeoProximity => (0.9, 0.1),
        Strategy::ResourceFirst => (0.1, 0.9),
        Strategy::Balanced | Strategy::DataLocality | Strategy::Cost => (0.5, 0.5),
    }
}

/// Score in 0-1 of a feasible node, and the distance to the users if known.
fn score(node: &NodeView, w: &WorkloadSpec) -> (f64, Option<f64>) {
    let km = w.constraints.geo_proximity.map(|u| haversine_km(u, node.location));
    let proximity = km.map_or(0.5, |d| 1.0 - (d / HALF_CIRCUMFERENCE_KM).min(1.0));
    let need = Capacity::of(w);
    let free = node.free();
    let frac = |free: f64, need: f64, cap: f64| if cap > 0.0 { ((free - need) / cap).clamp(0.0, 1.0) } else { 0.0 };
    let resources =
        (frac(free.cpu, need.cpu, node.capacity.cpu) + frac(free.memory as f64, need.memory as f64, node.capacity.memory as f64)) / 2.0;
    let (wp, wr) = weights(w.strategy);
    (wp * proximity + wr * resources, km)
}

/// Picks the best node for `w`, or explains why none fits. Ties go to the
/// smaller node id so that the answer is deterministic.
pub fn place(view: &ClusterView, w: &WorkloadSpec) -> Result<Placement, Unplaceable> {
    let mut why = Unplaceable { nodes: view.nodes.len(), excluded: BTreeMap::new() };
    let mut best: Option<(&NodeView, f64, Option<f64>)> = None;
    for node in &view.nodes {
        if let Some(reason) = exclusion(node, w) {
            *why.excluded.entry(reason).or_default() += 1;
            continue;
        }
        let (s, km) = score(node, w);
        let better = match best {
            None => true,
            Some((b, bs, _)) => s > bs || (s == bs && node.id < b.id),
        };
        if better {
            best = Some((node, s, km));
        }
    }
    let (node, score, km) = best.ok_or(why)?;
    let reason = match km {
        Some(km) => {
            format!("best of {} nodes by {} strategy, {km:.0} km from users (~{:.0} ms)", view.nodes.len(), w.strategy, estimate_rtt_ms(km))
        }
        None => format!("best of {} nodes by {} strategy, most free resources", view.nodes.len(), w.strategy),
    };
    Ok(Placement { node: node.id.clone(), score, reason })
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use verge_core::{GeoPoint, NodeType, Tier};

    fn node(id: &str, lat: f64, lon: f64, cpu: f64) -> NodeView {
        NodeView {
            id: NodeId::new(id).unwrap(),
            node_type: NodeType::Compute,
            tier: Tier::Metro,
            location: GeoPoint { latitude: lat, longitude: lon },
            labels: Default::default(),
            capacity: Capacity { cpu, memory: 8 << 30, storage: 0 },
            used: Capacity::default(),
            residents: vec![],
            unavailable: None,
        }
    }

    fn fleet() -> ClusterView {
        ClusterView {
            nodes: vec![node("new-york", 40.71, -74.0, 4.0), node("frankfurt", 50.11, 8.68, 4.0), node("tokyo", 35.68, 139.69, 4.0)],
        }
    }

    fn workload(json: serde_json::Value) -> WorkloadSpec {
        let mut base = serde_json::json!({"id": "w", "requirements": {"cpu": 1, "memory": 1024}, "spec": {"command": "true"}});
        base.as_object_mut().unwrap().extend(json.as_object().unwrap().clone());
        serde_json::from_value(base).unwrap()
    }

    #[test]
    fn users_in_paris_get_frankfurt() {
        let w =
            workload(serde_json::json!({"constraints": {"geoProximity": {"latitude": 48.85, "longitude": 2.35}, "maxDistanceKm": 1000}}));
        let p = place(&fleet(), &w).unwrap();
        assert_eq!(p.node.as_str(), "frankfurt");
        assert!(p.reason.contains("km from users"), "{}", p.reason);
    }

    #[test]
    fn unplaceable_explains_each_exclusion() {
        let mut view = fleet();
        view.nodes[0].unavailable = Some("node draining");
        let w = workload(serde_json::json!({"requirements": {"cpu": 2, "memory": 1024}, "constraints": {"nodeTypes": ["gateway"]}}));
        view.nodes[1].capacity.cpu = 1.0;
        let e = place(&view, &w).unwrap_err();
        assert_eq!(e.excluded["node draining"], 1);
        assert_eq!(e.excluded["insufficient cpu"], 1);
        assert_eq!(e.excluded["node type not allowed"], 1);
        assert!(e.to_string().starts_with("no node fits (3 considered:"), "{e}");
    }

    #[test]
    fn anti_affinity_and_labels_are_hard_constraints() {
        let mut view = fleet();
        view.nodes[1].residents.push("db".into());
        view.nodes[2].labels.insert("gpu".into(), "nvidia".into());
        let w =
            workload(serde_json::json!({"constraints": {"antiAffinity": ["db"], "geoProximity": {"latitude": 50.0, "longitude": 8.0}}}));
        assert_eq!(place(&view, &w).unwrap().node.as_str(), "new-york");
        let w = workload(serde_json::json!({"constraints": {"requiredLabels": {"gpu": "nvidia"}}}));
        assert_eq!(place(&view, &w).unwrap().node.as_str(), "tokyo");
    }

    #[test]
    fn max_latency_filters_far_nodes() {
        let w = workload(serde_json::json!({"constraints": {"geoProximity": {"latitude": 35.0, "longitude": 139.0}, "maxLatencyMs": 20}}));
        assert_eq!(place(&fleet(), &w).unwrap().node.as_str(), "tokyo");
        let w = workload(serde_json::json!({"constraints": {"geoProximity": {"latitude": -33.9, "longitude": 151.2}, "maxLatencyMs": 20}}));
        assert_eq!(place(&fleet(), &w).unwrap_err().excluded["latency above maxLatencyMs"], 3);
    }

    proptest! {
        #[test]
        fn never_overcommits_and_is_deterministic(cpus in proptest::collection::vec(0.1f64..3.0, 1..40)) {
            let mut view = fleet();
            for (i, cpu) in cpus.iter().enumerate() {
                let mut w = workload(serde_json::json!({"requirements": {"cpu": cpu, "memory": 1 << 28}}));
                w.id = verge_core::WorkloadId::new(format!("w{i}")).unwrap();
                let first = place(&view, &w);
                prop_assert_eq!(&first, &place(&view, &w));
                if let Ok(p) = first {
                    view.reserve(&p.node, &w);
                }
                for n in &view.nodes {
                    prop_assert!(n.used.cpu <= n.capacity.cpu + 1e-9);
                    prop_assert!(n.used.memory <= n.capacity.memory);
                }
            }
        }
    }
}
