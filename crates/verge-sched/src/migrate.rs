//! Migration planning: which placed workloads should move, where, and why.
//!
//! Triggers: the node is overheating, the node is under resource pressure,
//! a node with clearly lower latency to the workload's users exists
//! (`(current − new) / current > threshold`, and by at least a few ms), or,
//! for cost-strategy workloads, a clearly cheaper node exists. Maintenance
//! drains are handled by the reconciler itself.
//! Hysteresis comes from the threshold and the minimum gain; a cooldown
//! after every move keeps workloads from flapping. Pure: the caller commits
//! each migration as a command carrying its reason.

use std::collections::HashSet;

use verge_core::{NodeId, Strategy, WorkloadId, WorkloadSpec};

use crate::place::{latency_to, place};
use crate::view::ClusterView;

/// When a placed workload should move (the server's `migration:` config).
#[derive(Debug, Clone, PartialEq, serde::Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct MigrationPolicy {
    /// Move for latency when `(current − best) / current` exceeds this.
    pub latency_gain: f64,
    /// ... and the gain is at least this many ms.
    pub min_gain_ms: f64,
    /// Move one workload off a node whose CPU or memory use exceeds this share.
    pub pressure: f64,
    /// Move workloads off a node at or above this temperature, °C.
    pub thermal_c: f64,
    /// No workload moves again within this long of its last placement, ms.
    pub cooldown_ms: u64,
    /// Most moves per planning pass, so a bad minute cannot cause a storm.
    pub max_moves: usize,
}

impl Default for MigrationPolicy {
    fn default() -> Self {
        MigrationPolicy { latency_gain: 0.3, min_gain_ms: 2.0, pressure: 0.9, thermal_c: 85.0, cooldown_ms: 120_000, max_moves: 16 }
    }
}

/// A placed workload, as the planner needs it.
#[derive(Debug, Clone, Copy)]
pub struct Resident<'a> {
    /// What it is.
    pub spec: &'a WorkloadSpec,
    /// Where it runs.
    pub node: &'a NodeId,
    /// When it was placed there, ms.
    pub placed_ms: u64,
}

/// A planned move.
#[derive(Debug, Clone, PartialEq)]
pub struct Migration {
    /// The workload.
    pub workload: WorkloadId,
    /// From where.
    pub from: NodeId,
    /// To where.
    pub to: NodeId,
    /// Why, for people and the audit trail.
    pub reason: String,
}

/// Plans moves for `residents` (in their order) against `view`, which is
/// updated as moves are planned so later decisions see earlier ones.
pub fn plan_migrations(view: &mut ClusterView, residents: &[Resident], policy: &MigrationPolicy, now_ms: u64) -> Vec<Migration> {
    let mut moves = Vec::new();
    let mut relieved: HashSet<NodeId> = HashSet::new();
    for r in residents {
        if moves.len() >= policy.max_moves {
            break;
        }
        if now_ms.saturating_sub(r.placed_ms) < policy.cooldown_ms {
            continue;
        }
        let Some(node) = view.node(r.node) else { continue };
        let trigger = match (node.temperature_c, node.pressure) {
            (Some(t), _) if t >= policy.thermal_c => Some(format!("thermal: {} at {t:.0} °C", r.node)),
            (_, p) if p >= policy.pressure && !relieved.contains(r.node) => {
                Some(format!("resource pressure: {} at {:.0} %", r.node, p * 100.0))
            }
            _ => None,
        };
        view.release(r.node, r.spec);
        let planned = match trigger {
            Some(why) => relief(view, r.spec, policy).map(|p| (p.node, format!("{why}; {}", p.reason))),
            None if r.spec.strategy == Strategy::Cost => cost_move(view, r, policy),
            None => latency_move(view, r, policy),
        };
        match planned {
            Some((to, reason)) => {
                view.reserve(&to, r.spec);
                relieved.insert(r.node.clone());
                moves.push(Migration { workload: r.spec.id.clone(), from: r.node.clone(), to, reason });
            }
            None => view.reserve(r.node, r.spec),
        }
    }
    moves
}

/// Where a workload shed by a hot or pressured node goes: the best place
/// among the nodes that are neither, since moving onto a node as loaded or
/// as hot relieves nothing (on a host shared by several nodes, every one
/// of them is). `None` when there is no such node.
fn relief(view: &mut ClusterView, spec: &WorkloadSpec, policy: &MigrationPolicy) -> Option<crate::place::Placement> {
    let strained: Vec<NodeId> = view
        .nodes()
        .iter()
        .filter(|n| n.pressure >= policy.pressure || n.temperature_c.is_some_and(|t| t >= policy.thermal_c))
        .map(|n| n.id.clone())
        .collect();
    let was: Vec<Option<&'static str>> = strained.iter().map(|id| view.set_unavailable(id, Some("node under pressure"))).collect();
    let p = place(view, spec);
    for (id, mark) in strained.iter().zip(was) {
        view.set_unavailable(id, mark);
    }
    p.ok()
}

/// A clearly cheaper node for a cost-strategy workload, if there is one
/// (cheaper by more than `latency_gain`, the same hysteresis); the workload
/// is already released from its node in `view`.
fn cost_move(view: &ClusterView, r: &Resident, policy: &MigrationPolicy) -> Option<(NodeId, String)> {
    let current = view.node(r.node)?.cost();
    let p = place(view, r.spec).ok()?;
    let new = view.node(&p.node)?.cost();
    (p.node != *r.node && current > 0.0 && (current - new) / current > policy.latency_gain)
        .then(|| (p.node, format!("cost: {current:.3} → {new:.3} per core-hour")))
}

/// A clearly better node for the workload's users, if there is one; the
/// workload is already released from its node in `view`.
fn latency_move(view: &ClusterView, r: &Resident, policy: &MigrationPolicy) -> Option<(NodeId, String)> {
    let current = latency_to(view, r.spec, r.node)?;
    let p = place(view, r.spec).ok()?;
    let best = p.latency_ms?;
    let gain = current - best;
    (p.node != *r.node && current > 0.0 && gain / current > policy.latency_gain && gain >= policy.min_gain_ms)
        .then(|| (p.node, format!("latency: ~{current:.0} ms → ~{best:.0} ms to users")))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::place::tests::{node, view, workload};

    fn residents<'a>(w: &'a WorkloadSpec, on: &'a NodeId, placed_ms: u64) -> Vec<Resident<'a>> {
        vec![Resident { spec: w, node: on, placed_ms }]
    }

    fn setup() -> (ClusterView, WorkloadSpec, NodeId) {
        let v = view(vec![node("tokyo", "Tokyo", 35.68, 139.69, 4.0), node("frankfurt", "Frankfurt", 50.11, 8.68, 4.0)]);
        let w = workload(serde_json::json!({"strategy": "latency-first", "constraints": {"users": [{"city": "Frankfurt"}]}}));
        (v, w, NodeId::new("tokyo").unwrap())
    }

    #[test]
    fn a_workload_far_from_its_users_moves_closer_after_the_cooldown() {
        let (mut v, w, tokyo) = setup();
        v.reserve(&tokyo, &w);
        let p = MigrationPolicy::default();
        assert!(plan_migrations(&mut v, &residents(&w, &tokyo, 0), &p, 1_000).is_empty(), "cooldown");
        let m = plan_migrations(&mut v, &residents(&w, &tokyo, 0), &p, 200_000);
        assert_eq!(m.len(), 1);
        assert_eq!(m[0].to.as_str(), "frankfurt");
        assert!(m[0].reason.starts_with("latency: ~"), "{}", m[0].reason);
        let fra = NodeId::new("frankfurt").unwrap();
        assert!(plan_migrations(&mut v, &residents(&w, &fra, 0), &p, 400_000).is_empty(), "no flapping back");
    }

    #[test]
    fn cost_workloads_move_to_clearly_cheaper_nodes() {
        let mut nodes = vec![node("pricey", "A", 0.0, 0.0, 4.0), node("cheap", "B", 0.0, 1.0, 4.0), node("similar", "C", 0.0, 2.0, 4.0)];
        for (n, c) in nodes.iter_mut().zip(["1.0", "0.5", "0.9"]) {
            n.labels.insert("cost".into(), c.into());
        }
        let mut v = view(nodes);
        let w = workload(serde_json::json!({"strategy": "cost"}));
        let pricey = NodeId::new("pricey").unwrap();
        v.reserve(&pricey, &w);
        let m = plan_migrations(&mut v, &residents(&w, &pricey, 0), &MigrationPolicy::default(), 200_000);
        assert_eq!(m.len(), 1);
        assert_eq!((m[0].to.as_str(), m[0].reason.as_str()), ("cheap", "cost: 1.000 → 0.500 per core-hour"));
    }

    #[test]
    fn hot_or_pressured_nodes_shed_work() {
        let (mut v, w, tokyo) = setup();
        v.reserve(&tokyo, &w);
        v.set_condition(&tokyo, 0.5, Some(90.0));
        let w2 = workload(serde_json::json!({"id": "w2"}));
        v.reserve(&tokyo, &w2);
        let rs = vec![Resident { spec: &w2, node: &tokyo, placed_ms: 0 }];
        let m = plan_migrations(&mut v, &rs, &MigrationPolicy::default(), 200_000);
        assert_eq!(m.len(), 1);
        assert!(m[0].reason.starts_with("thermal: tokyo at 90 °C"), "{}", m[0].reason);
        v.set_condition(&tokyo, 0.95, Some(50.0));
        let both = vec![Resident { spec: &w, node: &tokyo, placed_ms: 0 }, Resident { spec: &w2, node: &tokyo, placed_ms: 0 }];
        let m = plan_migrations(&mut v, &both, &MigrationPolicy { latency_gain: 10.0, ..Default::default() }, 200_000);
        assert_eq!(m.len(), 1, "one move per pressured node per pass: {m:?}");
        assert!(m[0].reason.starts_with("resource pressure"), "{}", m[0].reason);

        // Nowhere cooler or less loaded to go: nothing moves.
        let frankfurt = NodeId::new("frankfurt").unwrap();
        v.set_condition(&frankfurt, 0.97, None);
        let m = plan_migrations(&mut v, &both, &MigrationPolicy { latency_gain: 10.0, ..Default::default() }, 200_000);
        assert!(m.is_empty(), "{m:?}");
        v.set_condition(&frankfurt, 0.2, Some(95.0));
        v.set_condition(&tokyo, 0.2, Some(92.0));
        let m = plan_migrations(&mut v, &both, &MigrationPolicy { latency_gain: 10.0, ..Default::default() }, 200_000);
        assert!(m.is_empty(), "{m:?}");
    }
}
