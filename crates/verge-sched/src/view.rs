//! The scheduler's snapshot of the cluster: what each node offers and holds.

use std::collections::BTreeMap;

use verge_core::{GeoPoint, NodeId, NodeType, Tier, WorkloadSpec};

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
    /// Its labels.
    pub labels: BTreeMap<String, String>,
    /// Schedulable capacity.
    pub capacity: Capacity,
    /// Reserved by workloads assigned to it.
    pub used: Capacity,
    /// Ids and groups of the workloads assigned to it, for anti-affinity.
    pub residents: Vec<String>,
    /// Why the node takes no new work (draining, unhealthy, offline), if it does not.
    pub unavailable: Option<&'static str>,
}

impl NodeView {
    /// Capacity left after what is reserved.
    pub fn free(&self) -> Capacity {
        Capacity {
            cpu: self.capacity.cpu - self.used.cpu,
            memory: self.capacity.memory.saturating_sub(self.used.memory),
            storage: self.capacity.storage.saturating_sub(self.used.storage),
        }
    }
}

/// The scheduler's snapshot of every node.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ClusterView {
    /// All nodes, in a stable order.
    pub nodes: Vec<NodeView>,
}

impl ClusterView {
    /// Records that `w` now lives on `node`, so later decisions in the same
    /// pass see its reservation.
    pub fn reserve(&mut self, node: &NodeId, w: &WorkloadSpec) {
        if let Some(n) = self.nodes.iter_mut().find(|n| &n.id == node) {
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
        if let Some(n) = self.nodes.iter_mut().find(|n| &n.id == node) {
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
