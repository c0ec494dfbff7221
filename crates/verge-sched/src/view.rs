//! The scheduler's snapshot of the cluster: what each node offers and holds,
//! grouped into sites (cities) so that latency is computed once per site.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};

use verge_core::{GeoPoint, NodeId, NodeSpec, NodeType, Tier, WorkloadSpec};

use crate::latency::LatencyModel;
use crate::vivaldi::Coordinate;

/// Amounts of the resources the scheduler accounts for.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct Capacity {
    /// CPU cores.
    pub cpu: f64,
    /// Memory bytes.
    pub memory: u64,
    /// Storage bytes.
    pub storage: u64,
}

impl Capacity {
    /// What a workload reserves.
    pub fn of(w: &WorkloadSpec) -> Capacity {
        Capacity { cpu: w.requirements.cpu, memory: w.requirements.memory.0, storage: w.requirements.storage.0 }
    }
}

/// One node as the scheduler sees it.
#[derive(Debug, Clone, PartialEq)]
pub struct NodeView {
    /// Node id.
    pub id: NodeId,
    /// Node type.
    pub node_type: NodeType,
    /// Tier.
    pub tier: Tier,
    /// Where it is.
    pub location: GeoPoint,
    /// Its city; nodes of one city form a site.
    pub city: String,
    /// Its country, for data residency.
    pub country: String,
    /// Its labels (`region` counts for data residency, `cost` is its price per core-hour).
    pub labels: BTreeMap<String, String>,
    /// Schedulable capacity.
    pub capacity: Capacity,
    /// Reserved by workloads assigned to it.
    pub used: Capacity,
    /// Ids and groups of the workloads assigned to it, for anti-affinity.
    pub residents: Vec<String>,
    /// Why the node takes no new work (draining, unhealthy, offline), if it does not.
    pub unavailable: Option<&'static str>,
    /// Its network coordinate, learned from measured RTTs.
    pub coordinate: Option<Coordinate>,
    /// Its smoothed measured RTT to the control plane, ms.
    pub server_rtt_ms: Option<f64>,
    /// Its measured CPU or memory use, whichever is higher, as a share, 0-1.
    pub pressure: f64,
    /// Its hottest thermal zone, °C, where it reports one.
    pub temperature_c: Option<f64>,
    /// Trust score, 0-100 (identity, attestation, compliance, behaviour).
    pub trust: u8,
    /// Health score as a share, 0-1.
    pub availability: f64,
}

impl NodeView {
    /// A node as declared, empty, available and with nothing measured yet.
    pub fn from_spec(spec: &NodeSpec) -> NodeView {
        let r = &spec.resources;
        NodeView {
            id: spec.id.clone(),
            node_type: spec.node_type,
            tier: spec.tier,
            location: spec.location.point(),
            city: spec.location.city.clone(),
            country: spec.location.country.clone(),
            labels: spec.labels.clone(),
            capacity: Capacity { cpu: r.cpu.cores, memory: r.memory.total.0, storage: r.storage.total.0 },
            used: Capacity::default(),
            residents: Vec::new(),
            unavailable: None,
            coordinate: None,
            server_rtt_ms: None,
            pressure: 0.0,
            temperature_c: None,
            trust: 100,
            availability: 1.0,
        }
    }

    /// Capacity left after what is reserved.
    pub fn free(&self) -> Capacity {
        Capacity {
            cpu: self.capacity.cpu - self.used.cpu,
            memory: self.capacity.memory.saturating_sub(self.used.memory),
            storage: self.capacity.storage.saturating_sub(self.used.storage),
        }
    }

    /// Price per core-hour from the `cost` label; 0 when unpriced.
    pub fn cost(&self) -> f64 {
        self.labels.get("cost").and_then(|c| c.parse::<f64>().ok()).filter(|c| c.is_finite() && *c >= 0.0).unwrap_or(0.0)
    }

    /// The key of the node's site: its city, or its rounded position.
    fn site_key(&self) -> String {
        let city = self.city.trim().to_lowercase();
        if city.is_empty() {
            format!("{:.2},{:.2}", self.location.latitude, self.location.longitude)
        } else {
            city
        }
    }
}

/// Nodes that share a city: latency to users is a property of the site.
#[derive(Debug, Clone, PartialEq)]
pub struct Site {
    /// City (lowercase) or rounded position.
    pub key: String,
    /// Where it is (its first node's location).
    pub point: GeoPoint,
    /// The coordinate of its node with the smallest id that has one.
    pub coordinate: Option<Coordinate>,
    /// Indices of its nodes in [`ClusterView::nodes`], in id order.
    pub nodes: Vec<usize>,
}

/// A site's place in a ranking for some users: its primary bucket (when the
/// strategy ranks nearest-first), predicted latency and distance.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SiteRank {
    /// Latency (1 ms) or distance (10 km) bucket, for nearest-first strategies.
    pub bucket: Option<i64>,
    /// Index into [`ClusterView::sites`].
    pub site: usize,
    /// Predicted RTT to the farthest user, ms.
    pub ms: f64,
    /// Distance to the farthest user, km.
    pub km: f64,
}

/// Most rankings remembered by one view.
const RANKINGS_KEPT: usize = 4096;

/// Site rankings already computed for a set of users. They depend only on
/// the sites, so a view computes each once; clones start empty.
#[derive(Debug, Default)]
struct RankCache(Mutex<HashMap<String, Arc<Vec<SiteRank>>>>);

impl Clone for RankCache {
    fn clone(&self) -> Self {
        RankCache::default()
    }
}

impl PartialEq for RankCache {
    fn eq(&self, _: &Self) -> bool {
        true
    }
}

/// The scheduler's snapshot of every node, indexed by site.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ClusterView {
    rankings: RankCache,
    nodes: Vec<NodeView>,
    sites: Vec<Site>,
    site_of: Vec<usize>,
    by_id: HashMap<NodeId, usize>,
    site_by_city: HashMap<String, usize>,
    cities: HashMap<String, GeoPoint>,
    /// Latency model for pairs without coordinates.
    pub model: LatencyModel,
}

impl ClusterView {
    /// A view of `nodes`; `cities` adds known city positions (lowercase
    /// names) for users in cities without nodes.
    pub fn new(mut nodes: Vec<NodeView>, cities: HashMap<String, GeoPoint>, model: LatencyModel) -> ClusterView {
        nodes.sort_by(|a, b| a.id.cmp(&b.id));
        let mut sites: Vec<Site> = Vec::new();
        let mut site_by_city = HashMap::new();
        let mut site_of = Vec::with_capacity(nodes.len());
        for (i, n) in nodes.iter().enumerate() {
            let key = n.site_key();
            let s = *site_by_city.entry(key.clone()).or_insert_with(|| {
                sites.push(Site { key, point: n.location, coordinate: None, nodes: Vec::new() });
                sites.len() - 1
            });
            sites[s].nodes.push(i);
            site_of.push(s);
            if sites[s].coordinate.is_none() {
                sites[s].coordinate = n.coordinate.clone();
            }
        }
        let by_id = nodes.iter().enumerate().map(|(i, n)| (n.id.clone(), i)).collect();
        ClusterView { rankings: RankCache::default(), nodes, sites, site_of, by_id, site_by_city, cities, model }
    }

    /// The site ranking for `key`, computed by `rank` the first time.
    pub(crate) fn ranking(&self, key: &str, rank: impl FnOnce() -> Vec<SiteRank>) -> Arc<Vec<SiteRank>> {
        if let Some(r) = self.rankings.0.lock().ok().and_then(|m| m.get(key).cloned()) {
            return r;
        }
        let r = Arc::new(rank());
        if let Ok(mut m) = self.rankings.0.lock() {
            if m.len() >= RANKINGS_KEPT {
                m.clear();
            }
            m.insert(key.to_string(), r.clone());
        }
        r
    }

    /// Every node, in id order.
    pub fn nodes(&self) -> &[NodeView] {
        &self.nodes
    }

    /// Every site.
    pub fn sites(&self) -> &[Site] {
        &self.sites
    }

    /// One node by id.
    pub fn node(&self, id: &NodeId) -> Option<&NodeView> {
        self.by_id.get(id).map(|&i| &self.nodes[i])
    }

    /// The site a node belongs to.
    pub fn site_of_node(&self, id: &NodeId) -> Option<usize> {
        self.by_id.get(id).map(|&i| self.site_of[i])
    }

    /// Marks a node as taking no new work (or takes the mark off), returning
    /// the previous mark; planners use it to look for somewhere else.
    pub fn set_unavailable(&mut self, id: &NodeId, reason: Option<&'static str>) -> Option<&'static str> {
        match self.by_id.get(id) {
            Some(&i) => std::mem::replace(&mut self.nodes[i].unavailable, reason),
            None => None,
        }
    }

    /// Sets a node's measured pressure and temperature.
    #[cfg(test)]
    pub(crate) fn set_condition(&mut self, id: &NodeId, pressure: f64, temperature_c: Option<f64>) {
        if let Some(&i) = self.by_id.get(id) {
            self.nodes[i].pressure = pressure;
            self.nodes[i].temperature_c = temperature_c;
        }
    }

    /// The site of a city with nodes, by name (any case).
    pub fn site_of_city(&self, city: &str) -> Option<usize> {
        self.site_by_city.get(&city.trim().to_lowercase()).copied()
    }

    /// Where a city is: a site's position, else the known-cities table.
    pub fn city_point(&self, city: &str) -> Option<GeoPoint> {
        let key = city.trim().to_lowercase();
        self.site_by_city.get(&key).map(|&s| self.sites[s].point).or_else(|| self.cities.get(&key).copied())
    }

    /// A view with only the nodes `keep` accepts (same cities and model).
    pub fn filtered(&self, keep: impl Fn(&NodeView) -> bool) -> ClusterView {
        ClusterView::new(self.nodes.iter().filter(|n| keep(n)).cloned().collect(), self.cities.clone(), self.model)
    }

    /// Records that `w` now lives on `node`, so later decisions in the same
    /// pass see its reservation.
    pub fn reserve(&mut self, node: &NodeId, w: &WorkloadSpec) {
        if let Some(&i) = self.by_id.get(node) {
            let n = &mut self.nodes[i];
            let c = Capacity::of(w);
            n.used.cpu += c.cpu;
            n.used.memory += c.memory;
            n.used.storage += c.storage;
            n.residents.push(w.id.to_string());
            n.residents.extend(w.group.clone());
        }
    }

    /// Records that `w` left `node`.
    pub fn release(&mut self, node: &NodeId, w: &WorkloadSpec) {
        if let Some(&i) = self.by_id.get(node) {
            let n = &mut self.nodes[i];
            let c = Capacity::of(w);
            n.used.cpu = (n.used.cpu - c.cpu).max(0.0);
            n.used.memory = n.used.memory.saturating_sub(c.memory);
            n.used.storage = n.used.storage.saturating_sub(c.storage);
            if let Some(i) = n.residents.iter().position(|r| r == w.id.as_str()) {
                n.residents.remove(i);
            }
            if let Some(i) = w.group.as_ref().and_then(|g| n.residents.iter().position(|r| r == g)) {
                n.residents.remove(i);
            }
        }
    }
}
