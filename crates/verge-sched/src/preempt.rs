//! Preemption: when a workload fits nowhere, find the node where evicting
//! the fewest lower-priority workloads makes room. Pure: the caller turns
//! the plan into commands (the evicted become pending and are placed again
//! where they fit).

use verge_core::{NodeId, WorkloadId, WorkloadSpec};

use crate::migrate::Resident;
use crate::place::place;
use crate::view::ClusterView;

/// Nodes with lower-priority work examined at most, nearest ids first.
const CANDIDATE_NODES: usize = 64;

/// Evict these to place the workload on that node.
#[derive(Debug, Clone, PartialEq)]
pub struct Preemption {
    /// Where the workload goes.
    pub node: NodeId,
    /// What leaves to make room, lowest priority first.
    pub evict: Vec<WorkloadId>,
    /// Why, for people.
    pub reason: String,
}

/// The cheapest preemption that lets `w` run, if any: fewest evictions,
/// then the lowest priorities evicted, then the smallest node id.
pub fn plan_preemption(view: &ClusterView, w: &WorkloadSpec, residents: &[Resident]) -> Option<Preemption> {
    let mut nodes: Vec<&NodeId> = residents.iter().filter(|r| r.spec.priority < w.priority).map(|r| r.node).collect();
    nodes.sort();
    nodes.dedup();
    let mut best: Option<(usize, i32, Preemption)> = None;
    for node in nodes.into_iter().take(CANDIDATE_NODES) {
        let mut lower: Vec<&Resident> = residents.iter().filter(|r| r.node == node && r.spec.priority < w.priority).collect();
        lower.sort_by(|a, b| {
            a.spec
                .priority
                .cmp(&b.spec.priority)
                .then(b.spec.requirements.cpu.total_cmp(&a.spec.requirements.cpu))
                .then(a.spec.id.cmp(&b.spec.id))
        });
        let mut only = view.filtered(|n| &n.id == node);
        let mut evicted = Vec::new();
        for r in lower {
            if place(&only, w).is_ok() {
                break;
            }
            only.release(node, r.spec);
            evicted.push(r);
        }
        if evicted.is_empty() || place(&only, w).is_err() {
            continue;
        }
        let worst = evicted.iter().map(|r| r.spec.priority).max().unwrap_or(i32::MIN);
        let ids: Vec<WorkloadId> = evicted.iter().map(|r| r.spec.id.clone()).collect();
        let names: Vec<String> = ids.iter().map(ToString::to_string).collect();
        let reason = format!("preempted {} lower-priority workload(s) on {node}: {}", ids.len(), names.join(", "));
        let cand = (ids.len(), worst, Preemption { node: node.clone(), evict: ids, reason });
        if best.as_ref().is_none_or(|(n, p, b)| (cand.0, cand.1, &cand.2.node) < (*n, *p, &b.node)) {
            best = Some(cand);
        }
    }
    best.map(|(_, _, p)| p)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::place::tests::{node, view, workload};

    #[test]
    fn the_fewest_lowest_priority_workloads_make_room() {
        let mut v = view(vec![node("a", "X", 0.0, 0.0, 4.0), node("b", "Y", 0.0, 1.0, 4.0)]);
        let small = |id: &str, p: i32| workload(serde_json::json!({"id": id, "priority": p, "requirements": {"cpu": 1, "memory": 1}}));
        let big = |id: &str, p: i32| workload(serde_json::json!({"id": id, "priority": p, "requirements": {"cpu": 3, "memory": 1}}));
        let (a, b) = (NodeId::new("a").unwrap(), NodeId::new("b").unwrap());
        let on_a = [small("a1", 0), small("a2", 0), small("a3", 5), small("a4", 5)];
        let on_b = [big("b1", 1), small("b2", 9)];
        let mut residents = Vec::new();
        for w in &on_a {
            v.reserve(&a, w);
            residents.push(Resident { spec: w, node: &a, placed_ms: 0 });
        }
        for w in &on_b {
            v.reserve(&b, w);
            residents.push(Resident { spec: w, node: &b, placed_ms: 0 });
        }
        let urgent = workload(serde_json::json!({"id": "urgent", "priority": 10, "requirements": {"cpu": 3, "memory": 1}}));
        assert!(place(&v, &urgent).is_err());
        let p = plan_preemption(&v, &urgent, &residents).unwrap();
        assert_eq!((p.node.as_str(), p.evict.len()), ("b", 1), "{p:?}");
        assert_eq!(p.evict[0].as_str(), "b1");
        let modest = workload(serde_json::json!({"id": "modest", "priority": 0, "requirements": {"cpu": 3, "memory": 1}}));
        assert_eq!(plan_preemption(&v, &modest, &residents), None, "never evicts equal or higher priority");
    }
}
