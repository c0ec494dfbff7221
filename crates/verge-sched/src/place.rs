//! Placement: filter nodes by hard constraints, rank the rest by the
//! workload's strategy, pick the best, or explain why nothing fits.
//!
//! Scoring follows the seeds: resource 25 %, latency 25 %, capability 20 %,
//! tier 15 %, availability 15 % (the balanced strategy). Latency-first,
//! data-locality and geo-proximity rank by predicted latency (1 ms buckets)
//! or distance (10 km buckets) first and use that score only to break ties;
//! they walk sites nearest-first and stop as soon as no farther site can win.

use std::collections::BTreeMap;
use std::fmt;

use verge_core::{haversine_km, GeoPoint, NodeId, Strategy, Tier, WorkloadSpec};

use crate::view::{Capacity, ClusterView, NodeView, SiteRank};
use crate::vivaldi::distance_ms;

/// Where a workload should run and why.
#[derive(Debug, Clone, PartialEq)]
pub struct Placement {
    /// The chosen node.
    pub node: NodeId,
    /// Its composite score, 0-1.
    pub score: f64,
    /// Predicted RTT to the farthest user, ms, when users are known.
    pub latency_ms: Option<f64>,
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
    /// A user city no node or known city matches.
    pub unknown_city: Option<String>,
}

impl fmt::Display for Unplaceable {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if let Some(c) = &self.unknown_city {
            return write!(f, "unknown user city {c:?}: no node or known city has that name");
        }
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

/// The smallest possible RTT per km of distance: light in fibre covers
/// about 200 km per ms, there and back.
const LIGHT_IN_FIBRE_RTT_MS_PER_KM: f64 = 0.01;

/// A user place resolved against the view.
struct User {
    point: GeoPoint,
    site: Option<usize>,
}

fn resolve_users(view: &ClusterView, w: &WorkloadSpec) -> Result<Vec<User>, String> {
    let c = &w.constraints;
    let mut users: Vec<User> = c.geo_proximity.map(|p| User { point: p, site: None }).into_iter().collect();
    for u in &c.users {
        let site = u.city.as_deref().and_then(|c| view.site_of_city(c));
        let point = match (u.point(), &u.city) {
            (Some(p), _) => p,
            (None, Some(city)) => view.city_point(city).ok_or_else(|| city.clone())?,
            (None, None) => continue,
        };
        users.push(User { point, site });
    }
    Ok(users)
}

/// Predicted RTT between a user and a site: none within the users' own
/// city, network coordinates where both ends have them, else the calibrated
/// distance model.
fn predict_ms(view: &ClusterView, u: &User, site: usize) -> f64 {
    if u.site == Some(site) {
        return 0.0;
    }
    let sites = view.sites();
    let km = haversine_km(u.point, sites[site].point);
    let coords = u.site.and_then(|us| sites[us].coordinate.as_ref()).zip(sites[site].coordinate.as_ref());
    match coords {
        // Coordinates never beat light in fibre between the declared places
        // (they can, on a lab network where every node is one hop away).
        Some((a, b)) => distance_ms(a, b).max(km * LIGHT_IN_FIBRE_RTT_MS_PER_KM),
        None => view.model.estimate_ms(km),
    }
}

/// Group members per spread domain among the nodes that take work, and the
/// smallest count, for a workload with a spread constraint.
struct SpreadCounts {
    counts: std::collections::HashMap<String, usize>,
    min: usize,
}

/// The spread domain of a node for `key`, if it has one.
fn domain(node: &NodeView, key: &str) -> Option<String> {
    match key {
        "city" => Some(node.city.to_lowercase()).filter(|c| !c.is_empty()),
        "country" => Some(node.country.to_lowercase()).filter(|c| !c.is_empty()),
        "node" => Some(node.id.to_string()),
        label => node.labels.get(label).cloned(),
    }
}

fn spread_counts(view: &ClusterView, w: &WorkloadSpec) -> Option<SpreadCounts> {
    let (spread, group) = (w.constraints.spread.as_ref()?, w.group.as_ref()?);
    let mut counts = std::collections::HashMap::new();
    for n in view.nodes().iter().filter(|n| n.unavailable.is_none()) {
        if let Some(d) = domain(n, &spread.key) {
            *counts.entry(d).or_insert(0) += n.residents.iter().filter(|r| *r == group).count();
        }
    }
    let min = counts.values().copied().min().unwrap_or(0);
    Some(SpreadCounts { counts, min })
}

/// Whether placing one more group member on `node` keeps the skew allowed.
fn spread_allows(node: &NodeView, w: &WorkloadSpec, counts: &SpreadCounts) -> Result<(), &'static str> {
    let Some(spread) = &w.constraints.spread else { return Ok(()) };
    let d = domain(node, &spread.key).ok_or("missing spread domain")?;
    let here = counts.counts.get(&d).copied().unwrap_or(0);
    if here + 1 > counts.min + spread.max_skew as usize {
        return Err("topology spread");
    }
    Ok(())
}

/// The first per-node hard constraint `node` violates for `w`, if any.
/// Distance and latency are checked per site.
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
    if !c.tiers.is_empty() && !c.tiers.contains(&node.tier) {
        return Some("tier not allowed");
    }
    if c.required_labels.iter().any(|(k, v)| node.labels.get(k) != Some(v)) {
        return Some("missing required labels");
    }
    if !c.data_residency.is_empty() {
        let region = node.labels.get("region");
        let allowed =
            c.data_residency.iter().any(|r| r.eq_ignore_ascii_case(&node.country) || region.is_some_and(|g| r.eq_ignore_ascii_case(g)));
        if !allowed {
            return Some("outside data residency");
        }
    }
    if c.anti_affinity.iter().any(|a| node.residents.contains(a)) {
        return Some("anti-affinity");
    }
    if c.min_trust.is_some_and(|t| node.trust < t) {
        return Some("trust below the workload's minimum");
    }
    None
}

/// How much the edge platform prefers each tier, 0-1.
fn tier_score(t: Tier) -> f64 {
    match t {
        Tier::Metro => 1.0,
        Tier::Access => 0.9,
        Tier::Regional => 0.8,
        Tier::Device => 0.6,
        Tier::Cloud => 0.5,
    }
}

/// Latency scores reach 0 at this RTT.
const WORST_LATENCY_MS: f64 = 300.0;

/// The composite score of a feasible node, 0-1, by the strategy's weights.
fn composite(node: &NodeView, w: &WorkloadSpec, latency_ms: Option<f64>) -> f64 {
    let need = Capacity::of(w);
    let free = node.free();
    let frac = |free: f64, need: f64, cap: f64| if cap > 0.0 { ((free - need) / cap).clamp(0.0, 1.0) } else { 0.0 };
    let spread =
        (frac(free.cpu, need.cpu, node.capacity.cpu) + frac(free.memory as f64, need.memory as f64, node.capacity.memory as f64)) / 2.0;
    let latency = latency_ms.map_or(0.5, |ms| 1.0 - (ms / WORST_LATENCY_MS).min(1.0));
    let types = &w.constraints.node_types;
    let capability = types.iter().position(|t| *t == node.node_type).map_or(1.0, |p| 1.0 - 0.1 * p as f64);
    let tier = tier_score(node.tier);
    let avail = node.availability.clamp(0.0, 1.0);
    match w.strategy {
        Strategy::ResourceFirst => {
            // Best fit: what is left after placing is as small as possible,
            // and as balanced between CPU and memory as possible, so neither
            // is stranded without the other (3× weighs balance over size; on
            // the simulated fleet this packs 98 % before the first miss).
            let (lc, lm) =
                (frac(free.cpu, need.cpu, node.capacity.cpu), frac(free.memory as f64, need.memory as f64, node.capacity.memory as f64));
            let left = lc.max(lm) + 3.0 * (lc - lm).abs();
            // A leftover too small for another workload of this size is wasted: avoid it.
            let stranded = free.cpu - need.cpu > 1e-9 && free.cpu - need.cpu < need.cpu;
            0.9 * (1.0 - left) - if stranded { 0.3 } else { 0.0 } + 0.025 * (latency + capability + tier + avail)
        }
        Strategy::Cost => 0.6 / (1.0 + node.cost()) + 0.1 * (latency + capability + tier + avail),
        _ => 0.25 * spread + 0.25 * latency + 0.20 * capability + 0.15 * tier + 0.15 * avail,
    }
}

/// The ranking key of a site for strategies that go nearest-first.
fn primary(w: &WorkloadSpec, ms: f64, km: f64) -> Option<i64> {
    match w.strategy {
        Strategy::LatencyFirst | Strategy::DataLocality => Some(ms.floor() as i64),
        Strategy::GeoProximity => Some((km / 10.0).floor() as i64),
        _ => None,
    }
}

/// A candidate during the search: (primary bucket, the node's own delay in
/// 0.01 ms steps for latency strategies, score, node index).
type Best = (i64, i64, f64, usize);

fn better(a: Best, b: Best, nodes: &[NodeView]) -> bool {
    (a.0, a.1).cmp(&(b.0, b.1)).then(b.2.total_cmp(&a.2)).then_with(|| nodes[a.3].id.cmp(&nodes[b.3].id)).is_lt()
}

/// What tells nodes of one site apart by latency: their smoothed RTT to the
/// control plane. Within a site the path beyond the metro is shared, so the
/// difference is the node's own last mile.
fn own_delay_ms(node: &NodeView) -> f64 {
    node.server_rtt_ms.unwrap_or(0.0)
}

/// What ranking sites depends on: the users' places and whether the
/// strategy ranks by latency, by distance, or not at all.
fn ranking_key(users: &[User], w: &WorkloadSpec) -> String {
    let kind = match primary(w, 0.0, 0.0) {
        None => "none",
        Some(_) if w.strategy == Strategy::GeoProximity => "geo",
        Some(_) => "latency",
    };
    let mut key = String::from(kind);
    for u in users {
        key.push_str(&format!("|{},{},{:?}", u.point.latitude, u.point.longitude, u.site));
    }
    key
}

/// Every site with its latency and distance to the users, best first for
/// strategies that rank nearest-first.
fn rank_sites(view: &ClusterView, users: &[User], w: &WorkloadSpec) -> Vec<SiteRank> {
    let mut order: Vec<SiteRank> = view
        .sites()
        .iter()
        .enumerate()
        .map(|(s, site)| {
            let (ms, km) = users
                .iter()
                .fold((0.0f64, 0.0f64), |(ms, km), u| (ms.max(predict_ms(view, u, s)), km.max(haversine_km(u.point, site.point))));
            SiteRank { bucket: primary(w, ms, km).filter(|_| !users.is_empty()), site: s, ms, km }
        })
        .collect();
    order.sort_by(|a, b| a.bucket.cmp(&b.bucket).then(a.ms.total_cmp(&b.ms)).then(a.site.cmp(&b.site)));
    order
}

/// Feasible nodes scored at most for strategies that weigh everything
/// together (balanced, cost), as Kubernetes' percentageOfNodesToScore and
/// Nomad's limit iterator do: the nearest sites first, or, without users,
/// a start that depends on the workload so load spreads.
const SCORE_LIMIT: usize = 100;

fn limited(w: &WorkloadSpec) -> bool {
    matches!(w.strategy, Strategy::Balanced | Strategy::Cost)
}

/// Where a scan without users starts, from the workload id.
fn start_site(w: &WorkloadSpec, sites: usize) -> usize {
    let h = w.id.as_str().bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| (h ^ b as u64).wrapping_mul(0x100_0000_01b3));
    (h % sites.max(1) as u64) as usize
}

/// Picks the best node for `w`, or explains why none fits. Deterministic:
/// ties go to the smaller node id.
pub fn place(view: &ClusterView, w: &WorkloadSpec) -> Result<Placement, Unplaceable> {
    let nodes = view.nodes();
    let mut why = Unplaceable { nodes: nodes.len(), ..Default::default() };
    let users = resolve_users(view, w).map_err(|city| Unplaceable { unknown_city: Some(city), ..why.clone() })?;
    let c = &w.constraints;
    let spread = spread_counts(view, w);
    let key = ranking_key(&users, w);
    let order = view.ranking(&key, || rank_sites(view, &users, w));
    let mut best: Option<(Best, f64, f64)> = None;
    let mut scored = 0;
    let start = if users.is_empty() { start_site(w, order.len()) } else { 0 };
    for &SiteRank { bucket, site: s, ms, km } in order[start..].iter().chain(&order[..start]) {
        if limited(w) && scored >= SCORE_LIMIT {
            break;
        }
        if c.max_distance_km.is_some_and(|max| km > max) {
            *why.excluded.entry("too far from users").or_default() += view.sites()[s].nodes.len();
            continue;
        }
        if c.max_latency_ms.is_some_and(|max| ms > max) {
            *why.excluded.entry("latency above maxLatencyMs").or_default() += view.sites()[s].nodes.len();
            continue;
        }
        let bucket = bucket.unwrap_or(0);
        if best.is_some_and(|(b, _, _)| bucket > b.0) {
            break;
        }
        for &i in &view.sites()[s].nodes {
            let spread = spread.as_ref().map_or(Ok(()), |s| spread_allows(&nodes[i], w, s));
            if let Some(reason) = exclusion(&nodes[i], w).or(spread.err()) {
                *why.excluded.entry(reason).or_default() += 1;
                continue;
            }
            scored += 1;
            let fine = if users.is_empty() || primary(w, ms, km).is_none() { 0 } else { (own_delay_ms(&nodes[i]) * 100.0).floor() as i64 };
            let cand = (bucket, fine, composite(&nodes[i], w, (!users.is_empty()).then_some(ms)), i);
            if best.is_none_or(|(b, _, _)| better(cand, b, nodes)) {
                best = Some((cand, ms, km));
            }
        }
    }
    let ((_, _, score, i), ms, km) = best.ok_or(why)?;
    let reason = if users.is_empty() {
        format!("{} strategy: best score {score:.3} among {} nodes", w.strategy, nodes.len())
    } else {
        format!("{} strategy: ~{ms:.0} ms and {km:.0} km to users, score {score:.3}, among {} nodes", w.strategy, nodes.len())
    };
    Ok(Placement { node: nodes[i].id.clone(), score, latency_ms: (!users.is_empty()).then_some(ms), reason })
}

/// Predicted RTT from `w`'s farthest user to `node`, ms; `None` without users.
pub fn latency_to(view: &ClusterView, w: &WorkloadSpec, node: &NodeId) -> Option<f64> {
    let site = view.site_of_node(node)?;
    let users = resolve_users(view, w).ok()?;
    users.iter().map(|u| predict_ms(view, u, site)).reduce(f64::max)
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::collections::HashMap;
    use verge_core::NodeType;

    pub fn node(id: &str, city: &str, lat: f64, lon: f64, cpu: f64) -> NodeView {
        NodeView {
            id: NodeId::new(id).unwrap(),
            node_type: NodeType::Compute,
            tier: Tier::Metro,
            location: GeoPoint { latitude: lat, longitude: lon },
            city: city.into(),
            country: String::new(),
            labels: Default::default(),
            capacity: Capacity { cpu, memory: 8 << 30, storage: 0 },
            used: Capacity::default(),
            residents: vec![],
            unavailable: None,
            coordinate: None,
            server_rtt_ms: None,
            pressure: 0.0,
            temperature_c: None,
            trust: 100,
            availability: 1.0,
        }
    }

    pub fn view(nodes: Vec<NodeView>) -> ClusterView {
        ClusterView::new(nodes, HashMap::new(), Default::default())
    }

    fn fleet_nodes() -> Vec<NodeView> {
        vec![
            node("new-york", "New York", 40.71, -74.0, 4.0),
            node("frankfurt", "Frankfurt", 50.11, 8.68, 4.0),
            node("tokyo", "Tokyo", 35.68, 139.69, 4.0),
        ]
    }

    pub fn workload(json: serde_json::Value) -> WorkloadSpec {
        let mut base = serde_json::json!({"id": "w", "requirements": {"cpu": 1, "memory": 1024}, "spec": {"command": "true"}});
        base.as_object_mut().unwrap().extend(json.as_object().unwrap().clone());
        serde_json::from_value(base).unwrap()
    }

    #[test]
    fn users_in_paris_get_frankfurt() {
        let w =
            workload(serde_json::json!({"constraints": {"geoProximity": {"latitude": 48.85, "longitude": 2.35}, "maxDistanceKm": 1000}}));
        let p = place(&view(fleet_nodes()), &w).unwrap();
        assert_eq!(p.node.as_str(), "frankfurt");
        assert!(p.reason.contains("km to users"), "{}", p.reason);
    }

    #[test]
    fn users_by_city_name_resolve_through_sites() {
        let w = workload(serde_json::json!({"strategy": "latency-first", "constraints": {"users": [{"city": "tokyo"}]}}));
        assert_eq!(place(&view(fleet_nodes()), &w).unwrap().node.as_str(), "tokyo");
        let w = workload(serde_json::json!({"constraints": {"users": [{"city": "Atlantis"}]}}));
        let e = place(&view(fleet_nodes()), &w).unwrap_err();
        assert_eq!(e.to_string(), "unknown user city \"Atlantis\": no node or known city has that name");
    }

    #[test]
    fn unplaceable_explains_each_exclusion() {
        let mut nodes = fleet_nodes();
        nodes[0].unavailable = Some("node draining");
        nodes[1].capacity.cpu = 1.0;
        let w = workload(serde_json::json!({"requirements": {"cpu": 2, "memory": 1024}, "constraints": {"nodeTypes": ["gateway"]}}));
        let e = place(&view(nodes), &w).unwrap_err();
        assert_eq!(e.excluded["node draining"], 1);
        assert_eq!(e.excluded["insufficient cpu"], 1);
        assert_eq!(e.excluded["node type not allowed"], 1);
        assert!(e.to_string().starts_with("no node fits (3 considered:"), "{e}");
    }

    #[test]
    fn anti_affinity_labels_residency_and_tiers_are_hard_constraints() {
        let mut nodes = fleet_nodes();
        nodes[1].residents.push("db".into());
        nodes[2].labels.insert("gpu".into(), "nvidia".into());
        nodes[2].country = "JP".into();
        nodes[2].tier = Tier::Access;
        let v = view(nodes);
        let w =
            workload(serde_json::json!({"constraints": {"antiAffinity": ["db"], "geoProximity": {"latitude": 50.0, "longitude": 8.0}}}));
        assert_eq!(place(&v, &w).unwrap().node.as_str(), "new-york");
        let w = workload(serde_json::json!({"constraints": {"requiredLabels": {"gpu": "nvidia"}}}));
        assert_eq!(place(&v, &w).unwrap().node.as_str(), "tokyo");
        let w = workload(serde_json::json!({"constraints": {"dataResidency": ["jp"]}}));
        assert_eq!(place(&v, &w).unwrap().node.as_str(), "tokyo");
        let w = workload(serde_json::json!({"constraints": {"tiers": ["access"]}}));
        assert_eq!(place(&v, &w).unwrap().node.as_str(), "tokyo");
    }

    #[test]
    fn max_latency_filters_far_nodes() {
        let w = workload(serde_json::json!({"constraints": {"geoProximity": {"latitude": 35.0, "longitude": 139.0}, "maxLatencyMs": 20}}));
        assert_eq!(place(&view(fleet_nodes()), &w).unwrap().node.as_str(), "tokyo");
        let w = workload(serde_json::json!({"constraints": {"geoProximity": {"latitude": -33.9, "longitude": 151.2}, "maxLatencyMs": 20}}));
        assert_eq!(place(&view(fleet_nodes()), &w).unwrap_err().excluded["latency above maxLatencyMs"], 3);
    }

    #[test]
    fn resource_first_packs_and_balanced_spreads() {
        let mut nodes = vec![node("a", "X", 0.0, 0.0, 4.0), node("b", "Y", 0.0, 1.0, 4.0)];
        nodes[0].used = Capacity { cpu: 2.0, memory: 4 << 30, storage: 0 };
        let v = view(nodes);
        let ask = |strategy: &str| workload(serde_json::json!({"strategy": strategy, "requirements": {"cpu": 1, "memory": "2GiB"}}));
        assert_eq!(place(&v, &ask("resource-first")).unwrap().node.as_str(), "a");
        assert_eq!(place(&v, &ask("balanced")).unwrap().node.as_str(), "b");
        // A memory-heavy node is not filled with CPU-only work while a balanced one is free.
        let mut nodes = vec![node("a", "X", 0.0, 0.0, 4.0), node("b", "Y", 0.0, 1.0, 4.0)];
        nodes[0].used = Capacity { cpu: 3.0, memory: 0, storage: 0 };
        let cpu_only = workload(serde_json::json!({"strategy": "resource-first", "requirements": {"cpu": 1, "memory": "2GiB"}}));
        assert_eq!(place(&view(nodes), &cpu_only).unwrap().node.as_str(), "b");
    }

    #[test]
    fn a_group_spreads_over_regions_within_the_skew() {
        let mut nodes = vec![
            node("a1", "A", 0.0, 0.0, 8.0),
            node("a2", "A", 0.0, 0.0, 8.0),
            node("b1", "B", 0.0, 5.0, 8.0),
            node("x", "C", 0.0, 9.0, 8.0),
        ];
        for (n, r) in nodes.iter_mut().zip(["eu", "eu", "us", ""]) {
            if !r.is_empty() {
                n.labels.insert("region".into(), r.into());
            }
        }
        let mut v = view(nodes);
        let mut regions = Vec::new();
        for i in 0..4 {
            let w = workload(
                serde_json::json!({"id": format!("web{i}"), "group": "web", "strategy": "resource-first", "constraints": {"spread": {"key": "region"}}}),
            );
            let p = place(&v, &w).unwrap();
            regions.push(v.node(&p.node).unwrap().labels["region"].clone());
            v.reserve(&p.node, &w);
        }
        regions.sort();
        assert_eq!(regions, ["eu", "eu", "us", "us"], "packing alone would put them all together");
        let w = workload(
            serde_json::json!({"id": "web9", "group": "web", "constraints": {"spread": {"key": "region"}, "requiredLabels": {"region": "eu"}}}),
        );
        v.reserve(&NodeId::new("a1").unwrap(), &workload(serde_json::json!({"id": "web5", "group": "web"})));
        let e = place(&v, &w).unwrap_err();
        assert_eq!(e.excluded["topology spread"], 2, "{e}");
    }

    fn arbitrary_fleet() -> impl Strategy<Value = Vec<NodeView>> {
        proptest::collection::vec((-60.0f64..60.0, -180.0f64..180.0, 0.5f64..8.0, 0usize..3, 0usize..4), 1..30).prop_map(|v| {
            v.into_iter()
                .enumerate()
                .map(|(i, (lat, lon, cpu, t, city))| {
                    let mut n = node(&format!("n{i:02}"), &format!("c{city}"), lat, lon, cpu);
                    n.node_type = [NodeType::Compute, NodeType::Storage, NodeType::Gateway][t];
                    n.country = ["DE", "FR", "JP"][t].into();
                    n
                })
                .collect()
        })
    }

    use proptest::strategy::Strategy;

    proptest! {
        #[test]
        fn placement_is_deterministic_never_overcommits_and_never_violates_constraints(
            fleet in arbitrary_fleet(),
            asks in proptest::collection::vec((0.1f64..3.0, 0usize..4, -60.0f64..60.0, -180.0f64..180.0, 500.0f64..8000.0), 1..40),
        ) {
            let mut v = view(fleet);
            let strategies = ["latency-first", "balanced", "resource-first", "geo-proximity"];
            for (i, (cpu, s, lat, lon, km)) in asks.into_iter().enumerate() {
                let w = workload(serde_json::json!({
                    "id": format!("w{i}"), "strategy": strategies[s], "requirements": {"cpu": cpu, "memory": 1 << 26},
                    "constraints": {"geoProximity": {"latitude": lat, "longitude": lon}, "maxDistanceKm": km,
                                    "nodeTypes": ["compute", "gateway"], "dataResidency": ["DE", "JP"]}
                }));
                let first = place(&v, &w);
                prop_assert_eq!(&first, &place(&v, &w));
                if let Ok(p) = first {
                    let n = v.node(&p.node).unwrap();
                    prop_assert!(n.node_type != NodeType::Storage);
                    prop_assert!(n.country != "FR");
                    let site = v.sites().iter().find(|s| s.nodes.iter().any(|&i| v.nodes()[i].id == p.node)).unwrap();
                    let users = GeoPoint { latitude: lat, longitude: lon };
                    prop_assert!(haversine_km(users, site.point) <= km);
                    v.reserve(&p.node, &w);
                }
                for n in v.nodes() {
                    prop_assert!(n.used.cpu <= n.capacity.cpu + 1e-9);
                    prop_assert!(n.used.memory <= n.capacity.memory);
                }
            }
        }
    }
}
