//! The reconcilers as one pure function: `(state, soft state, config, now)`
//! in, commands out. Lifecycle (warm-up, lease expiry), failover, drain and
//! placement of pending work. The loop that calls it does the I/O.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;

use verge_core::{GeoPoint, Health, Lifecycle, NodeId, NodeType, WorkloadId};
use verge_sched::{place, plan_migrations, plan_preemption, ClusterView, LatencyModel, MigrationPolicy, NodeView, Resident};
use verge_store::{Command, NodeRecord, State};

use crate::health::{assess, Assessment, HealthCheck};
use crate::posture::{attested, quarantine, TrustPolicy};
use crate::soft::NodeSoft;

/// The parts of the server config and learned state decisions depend on.
#[derive(Debug, Clone)]
pub struct Policy {
    /// How long a node warms up before it takes work, ms.
    pub warmup_ms: u64,
    /// Health thresholds.
    pub checks: Vec<HealthCheck>,
    /// Known cities (lowercase name → position) for users in cities without nodes.
    pub cities: Arc<HashMap<String, GeoPoint>>,
    /// The latency model calibrated from measured RTTs.
    pub model: LatencyModel,
    /// When placed workloads move.
    pub migration: MigrationPolicy,
    /// Attestation, trust and quarantine.
    pub trust: TrustPolicy,
}

/// A node's health now, from its soft state and last report.
pub fn node_health(policy: &Policy, rec: &NodeRecord, soft: Option<&NodeSoft>, now_ms: u64) -> Assessment {
    let metrics = soft.and_then(|s| s.metrics.as_ref());
    let age = soft.and_then(|s| s.last_heartbeat_ms).map(|t| now_ms.saturating_sub(t));
    let mut a = assess(&policy.checks, metrics, age, rec.health_report.as_ref().map(|(r, _)| r));
    if soft.is_some_and(|s| s.last_heartbeat_ms.is_some() && !s.alive(now_ms)) {
        a.status = Health::Unknown;
        a.reasons.push("lease expired".into());
    }
    a
}

/// The lifecycle a node should move to now, if any.
fn next_lifecycle(policy: &Policy, rec: &NodeRecord, soft: Option<&NodeSoft>, now_ms: u64) -> Option<Lifecycle> {
    let heard = soft.is_some_and(|s| s.last_heartbeat_ms.is_some());
    let alive = soft.is_some_and(|s| s.alive(now_ms));
    match rec.lifecycle {
        Lifecycle::Initialized | Lifecycle::Terminated if heard && alive => Some(Lifecycle::Warming),
        Lifecycle::Warming | Lifecycle::Active | Lifecycle::Draining if !alive => Some(Lifecycle::Terminated),
        Lifecycle::Warming if now_ms.saturating_sub(rec.lifecycle_since_ms) >= policy.warmup_ms => {
            (node_health(policy, rec, soft, now_ms).status != Health::Unhealthy).then_some(Lifecycle::Active)
        }
        _ => None,
    }
}

/// Why a node in `lifecycle` with `health` takes no new work, if it does not.
fn unavailable(lifecycle: Lifecycle, health: Health) -> Option<&'static str> {
    match lifecycle {
        Lifecycle::Initialized | Lifecycle::Warming => Some("node warming up"),
        Lifecycle::Draining => Some("node draining"),
        Lifecycle::Terminated => Some("node offline"),
        Lifecycle::Active => match health {
            Health::Unhealthy => Some("node unhealthy"),
            Health::Unknown => Some("node not reporting"),
            Health::Healthy | Health::Degraded => None,
        },
    }
}

/// The scheduler's view of the cluster, with each node's lifecycle taken
/// from `lifecycles` (the state's, or the one this pass decided).
pub fn cluster_view(
    policy: &Policy,
    state: &State,
    soft: &HashMap<NodeId, NodeSoft>,
    lifecycles: &BTreeMap<NodeId, Lifecycle>,
    now_ms: u64,
) -> ClusterView {
    let nodes = state
        .nodes
        .iter()
        .map(|(id, rec)| {
            let s = soft.get(id);
            let lifecycle = lifecycles.get(id).copied().unwrap_or(rec.lifecycle);
            let health = node_health(policy, rec, s, now_ms);
            let metrics = s.and_then(|s| s.metrics.as_ref());
            let security = if quarantine(rec, s, &policy.trust, now_ms).is_some() {
                Some("node quarantined")
            } else if !attested(s, &policy.trust) {
                Some("node not attested yet")
            } else {
                None
            };
            // Trust is computed (compliance packs and all) only when someone asks for a minimum.
            let trust = if policy.trust.needed { crate::posture::trust(rec, s, &policy.trust, now_ms).score } else { 100 };
            NodeView {
                unavailable: unavailable(lifecycle, health.status).or(security),
                trust,
                coordinate: s.and_then(|s| s.vivaldi.as_ref()).map(|v| v.coordinate().clone()),
                server_rtt_ms: s.and_then(|s| s.server_rtt_ms),
                pressure: metrics.map_or(0.0, |m| (m.cpu_percent.max(m.memory_percent()) / 100.0).clamp(0.0, 1.0)),
                temperature_c: metrics.and_then(|m| m.temperature_c),
                availability: health.score / 100.0,
                ..NodeView::from_spec(&rec.spec)
            }
        })
        .collect();
    let mut view = ClusterView::new(nodes, (*policy.cities).clone(), policy.model);
    for w in state.workloads.values() {
        if let Some(n) = &w.node {
            view.reserve(n, &w.spec);
        }
    }
    view
}

/// The workload a placement command is about.
fn command_workload(c: &Command) -> Option<&WorkloadId> {
    match c {
        Command::Place { id, .. } | Command::Unplace { id, .. } => Some(id),
        _ => None,
    }
}

/// Everything the control plane should change now, in order.
/// With `plan_moves`, it also plans migrations (latency, pressure, heat).
pub fn reconcile(policy: &Policy, state: &State, soft: &HashMap<NodeId, NodeSoft>, now_ms: u64, plan_moves: bool) -> Vec<Command> {
    let mut cmds = Vec::new();
    let mut lifecycles = BTreeMap::new();
    for (id, rec) in &state.nodes {
        let next = next_lifecycle(policy, rec, soft.get(id), now_ms);
        if let Some(l) = next {
            cmds.push(Command::SetLifecycle { id: id.clone(), lifecycle: l, now_ms });
        }
        lifecycles.insert(id.clone(), next.unwrap_or(rec.lifecycle));
    }
    let quarantined: HashSet<&NodeId> =
        state.nodes.iter().filter(|(id, rec)| quarantine(rec, soft.get(*id), &policy.trust, now_ms).is_some()).map(|(id, _)| id).collect();
    let needs_placement = state.workloads.values().any(|w| {
        w.node.as_ref().is_none_or(|n| {
            quarantined.contains(n) || matches!(lifecycles.get(n), None | Some(Lifecycle::Terminated | Lifecycle::Draining))
        })
    });
    if !needs_placement && !plan_moves {
        return cmds;
    }
    let mut view = cluster_view(policy, state, soft, &lifecycles, now_ms);
    for (wid, w) in &state.workloads {
        let from = w.node.as_ref().map(|n| (n, lifecycles.get(n).copied()));
        let why_move = match from {
            None => None,
            Some((n, _)) if quarantined.contains(n) => Some("quarantine"),
            Some((_, Some(Lifecycle::Terminated) | None)) => Some("failover"),
            Some((_, Some(Lifecycle::Draining))) => Some("drain"),
            Some(_) => continue,
        };
        if let Some((n, _)) = from {
            view.release(n, &w.spec);
        }
        match (place(&view, &w.spec), why_move, from) {
            (Ok(p), Some(why), Some((n, _))) => {
                let reason = format!("{why} from {n}: {}", p.reason);
                view.reserve(&p.node, &w.spec);
                cmds.push(Command::Place { id: wid.clone(), node: p.node, reason, now_ms });
            }
            (Ok(p), _, _) => {
                view.reserve(&p.node, &w.spec);
                cmds.push(Command::Place { id: wid.clone(), node: p.node, reason: p.reason, now_ms });
            }
            (Err(e), Some(why @ ("failover" | "quarantine")), Some((n, _))) => {
                cmds.push(Command::Unplace { id: wid.clone(), reason: format!("{why} from {n}: {e}") });
            }
            (Err(_), Some(_), Some((n, _))) => view.reserve(n, &w.spec),
            (Err(e), _, _) => {
                let touched: HashSet<&WorkloadId> = cmds.iter().filter_map(command_workload).collect();
                let residents: Vec<Resident> = state
                    .workloads
                    .values()
                    .filter(|r| !touched.contains(&r.spec.id))
                    .filter_map(|r| Some(Resident { spec: &r.spec, node: r.node.as_ref()?, placed_ms: r.placed_ms.unwrap_or(0) }))
                    .collect();
                if let Some(p) = plan_preemption(&view, &w.spec, &residents) {
                    for victim in &p.evict {
                        if let Some(v) = state.workloads.get(victim) {
                            view.release(&p.node, &v.spec);
                        }
                        let reason = format!("preempted by {wid} (priority {}) on {}", w.spec.priority, p.node);
                        cmds.push(Command::Unplace { id: victim.clone(), reason });
                    }
                    view.reserve(&p.node, &w.spec);
                    cmds.push(Command::Place { id: wid.clone(), node: p.node, reason: p.reason, now_ms });
                    continue;
                }
                let reason = e.to_string();
                if w.reason != reason {
                    cmds.push(Command::Unplace { id: wid.clone(), reason });
                }
            }
        }
    }
    if plan_moves {
        let moving: std::collections::HashSet<&WorkloadId> = cmds
            .iter()
            .filter_map(|c| if let Command::Place { id, .. } | Command::Unplace { id, .. } = c { Some(id) } else { None })
            .collect();
        let residents: Vec<Resident> = state
            .workloads
            .values()
            .filter(|w| !moving.contains(&w.spec.id))
            .filter_map(|w| {
                let node = w.node.as_ref()?;
                (lifecycles.get(node) == Some(&Lifecycle::Active)).then_some(Resident {
                    spec: &w.spec,
                    node,
                    placed_ms: w.placed_ms.unwrap_or(0),
                })
            })
            .collect();
        for m in plan_migrations(&mut view, &residents, &policy.migration, now_ms) {
            cmds.push(Command::Place { id: m.workload, node: m.to, reason: format!("migration from {}: {}", m.from, m.reason), now_ms });
        }
    }
    cmds
}

/// A request for one more node, and why.
#[derive(Debug, Clone, PartialEq)]
pub struct ProvisionRequest {
    /// The type of node that is short.
    pub node_type: NodeType,
    /// Why, for people and the provisioner.
    pub reason: String,
}

/// Whether the fleet needs another node: the active nodes' allocated CPU
/// share passed `threshold`, or workloads wait for lack of resources. The
/// type asked for is the one the waiting workloads want most (compute when
/// they do not say).
pub fn provision_request(state: &State, threshold: f64) -> Option<ProvisionRequest> {
    let active: Vec<&NodeId> = state.nodes.iter().filter(|(_, n)| n.lifecycle == Lifecycle::Active).map(|(id, _)| id).collect();
    let capacity: f64 = active.iter().filter_map(|id| state.nodes.get(*id)).map(|n| n.spec.resources.cpu.cores).sum();
    let allocated: f64 =
        state.workloads.values().filter(|w| w.node.as_ref().is_some_and(|n| active.contains(&n))).map(|w| w.spec.requirements.cpu).sum();
    let starved: Vec<_> = state
        .workloads
        .values()
        .filter(|w| {
            w.node.is_none()
                && (w.reason.contains("insufficient") || w.reason.contains("node type not allowed") || w.reason == "no nodes registered")
        })
        .collect();
    let mut wanted: BTreeMap<NodeType, usize> = BTreeMap::new();
    for w in &starved {
        *wanted.entry(w.spec.constraints.node_types.first().copied().unwrap_or_default()).or_default() += 1;
    }
    let node_type = wanted.iter().max_by_key(|(t, n)| (**n, std::cmp::Reverse(**t))).map_or(NodeType::Compute, |(t, _)| *t);
    let share = if capacity > 0.0 { allocated / capacity } else { 0.0 };
    if !starved.is_empty() {
        Some(ProvisionRequest { node_type, reason: format!("{} workloads wait for resources", starved.len()) })
    } else if share >= threshold {
        Some(ProvisionRequest {
            node_type,
            reason: format!("{:.0} % of active CPU allocated (threshold {:.0} %)", share * 100.0, threshold * 100.0),
        })
    } else {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::health::default_checks;
    use verge_core::{NodeMetrics, WorkloadId};

    const LEASE: u64 = 5_000;

    fn policy() -> Policy {
        Policy {
            warmup_ms: 2_000,
            checks: default_checks(),
            cities: Default::default(),
            model: LatencyModel::default(),
            migration: MigrationPolicy::default(),
            trust: TrustPolicy { tls: false, min_trust: 0, max_attestation_age_ms: 3_600_000, needed: false },
        }
    }

    fn node(id: &str, lat: f64, lon: f64) -> verge_core::NodeSpec {
        serde_json::from_value(serde_json::json!({
            "id": id, "type": "compute", "location": {"latitude": lat, "longitude": lon},
            "resources": {"cpu": {"cores": 4}, "memory": {"total": "8GiB"}}
        }))
        .unwrap()
    }

    fn heartbeat(soft: &mut HashMap<NodeId, NodeSoft>, id: &str, now: u64) {
        let s = soft.entry(NodeId::new(id).unwrap()).or_default();
        s.touch(now, LEASE);
        s.metrics = Some(NodeMetrics { memory_used: 1, memory_total: 100, disk_total: 100, ..Default::default() });
    }

    /// Runs reconcile until it has nothing more to say, applying its commands.
    fn settle(state: &mut State, soft: &HashMap<NodeId, NodeSoft>, now: u64) -> Vec<Command> {
        let mut all = Vec::new();
        for _ in 0..5 {
            let cmds = reconcile(&policy(), state, soft, now, true);
            if cmds.is_empty() {
                break;
            }
            for c in &cmds {
                state.apply(c.clone()).unwrap();
            }
            all.extend(cmds);
        }
        all
    }

    fn cluster() -> (State, HashMap<NodeId, NodeSoft>) {
        let mut state = State::default();
        let mut soft = HashMap::new();
        for (id, lat, lon) in [("fra", 50.1, 8.7), ("nyc", 40.7, -74.0)] {
            state.apply(Command::RegisterNode { spec: node(id, lat, lon), now_ms: 0 }).unwrap();
            heartbeat(&mut soft, id, 0);
        }
        settle(&mut state, &soft, 0);
        for id in ["fra", "nyc"] {
            heartbeat(&mut soft, id, 2_500);
        }
        settle(&mut state, &soft, 2_500);
        (state, soft)
    }

    fn workload(id: &str) -> verge_core::WorkloadSpec {
        serde_json::from_value(serde_json::json!({
            "id": id, "requirements": {"cpu": 1, "memory": "1GiB"},
            "constraints": {"geoProximity": {"latitude": 48.85, "longitude": 2.35}},
            "spec": {"command": "true"}
        }))
        .unwrap()
    }

    #[test]
    fn nodes_warm_up_then_take_work() {
        let (mut state, soft) = cluster();
        assert!(state.nodes.values().all(|n| n.lifecycle == Lifecycle::Active));
        state.apply(Command::SubmitWorkload { spec: workload("w"), now_ms: 2_500 }).unwrap();
        settle(&mut state, &soft, 2_600);
        assert_eq!(state.workloads[&WorkloadId::new("w").unwrap()].node.as_ref().unwrap().as_str(), "fra");
    }

    #[test]
    fn failed_attestation_moves_work_away_and_untrusted_nodes_take_none() {
        let (mut state, mut soft) = cluster();
        let mut secure = policy();
        secure.trust = TrustPolicy { tls: true, min_trust: 0, max_attestation_age_ms: 3_600_000, needed: true };
        let run = |state: &mut State, soft: &HashMap<NodeId, NodeSoft>, now| {
            for c in reconcile(&secure, state, soft, now, false) {
                state.apply(c).unwrap();
            }
        };
        state.apply(Command::SubmitWorkload { spec: workload("w"), now_ms: 2_500 }).unwrap();
        run(&mut state, &soft, 2_600);
        let w = WorkloadId::new("w").unwrap();
        assert!(state.workloads[&w].node.is_none(), "unattested nodes took new work");
        for id in ["fra", "nyc"] {
            soft.get_mut(&NodeId::new(id).unwrap()).unwrap().attested_ms = Some(2_600);
        }
        run(&mut state, &soft, 2_700);
        assert_eq!(state.workloads[&w].node.as_ref().unwrap().as_str(), "fra");
        soft.get_mut(&NodeId::new("fra").unwrap()).unwrap().attest_failure = Some("binary not allowed".into());
        run(&mut state, &soft, 2_800);
        assert_eq!(state.workloads[&w].node.as_ref().unwrap().as_str(), "nyc", "work stayed on a quarantined node");
        // A workload asking for more trust than any node has waits, saying why.
        let mut picky = workload("picky");
        picky.constraints.min_trust = Some(100);
        state.apply(Command::SubmitWorkload { spec: picky, now_ms: 2_800 }).unwrap();
        run(&mut state, &soft, 2_900);
        let p = &state.workloads[&WorkloadId::new("picky").unwrap()];
        assert!(p.node.is_none() && p.reason.contains("trust"), "{}", p.reason);
    }

    #[test]
    fn an_expired_lease_fails_workloads_over() {
        let (mut state, mut soft) = cluster();
        state.apply(Command::SubmitWorkload { spec: workload("w"), now_ms: 2_500 }).unwrap();
        settle(&mut state, &soft, 2_600);
        heartbeat(&mut soft, "nyc", 7_000);
        assert!(settle(&mut state, &soft, 7_400).is_empty(), "fra's lease runs until 7,500");
        let cmds = settle(&mut state, &soft, 7_500);
        assert!(cmds.iter().any(|c| matches!(c, Command::SetLifecycle { lifecycle: Lifecycle::Terminated, .. })));
        let w = &state.workloads[&WorkloadId::new("w").unwrap()];
        assert_eq!(w.node.as_ref().unwrap().as_str(), "nyc");
        assert!(w.reason.starts_with("failover from fra"), "{}", w.reason);
    }

    #[test]
    fn a_terminated_node_that_heartbeats_again_warms_up_again() {
        let (mut state, mut soft) = cluster();
        let fra = NodeId::new("fra").unwrap();
        heartbeat(&mut soft, "nyc", 7_000);
        settle(&mut state, &soft, 7_600);
        assert_eq!(state.nodes[&fra].lifecycle, Lifecycle::Terminated);
        heartbeat(&mut soft, "fra", 8_000);
        settle(&mut state, &soft, 8_000);
        assert_eq!(state.nodes[&fra].lifecycle, Lifecycle::Warming);
    }

    #[test]
    fn provisioning_asks_for_the_type_that_is_short() {
        let (mut state, soft) = cluster();
        assert_eq!(provision_request(&state, 0.85), None);
        let mut big = workload("big");
        big.requirements.cpu = 3.0;
        big.constraints.node_types = vec![NodeType::Inference];
        state.apply(Command::SubmitWorkload { spec: big, now_ms: 2_500 }).unwrap();
        settle(&mut state, &soft, 2_600);
        let r = provision_request(&state, 0.85).unwrap();
        assert_eq!(r.node_type, NodeType::Inference);
        assert_eq!(r.reason, "1 workloads wait for resources");
        state.apply(Command::DeleteWorkload { id: WorkloadId::new("big").unwrap() }).unwrap();
        for i in 0..7 {
            state.apply(Command::SubmitWorkload { spec: workload(&format!("w{i}")), now_ms: 2_700 }).unwrap();
        }
        settle(&mut state, &soft, 2_800);
        let r = provision_request(&state, 0.85).unwrap();
        assert!(r.reason.starts_with("88 % of active CPU"), "{}", r.reason);
    }

    #[test]
    fn urgent_work_preempts_lower_priority_work_which_waits() {
        let (mut state, soft) = cluster();
        for (i, id) in ["fra", "nyc"].iter().enumerate() {
            let mut filler = workload(&format!("filler{i}"));
            filler.requirements.cpu = 3.5;
            state.apply(Command::SubmitWorkload { spec: filler, now_ms: 2_500 }).unwrap();
            settle(&mut state, &soft, 2_600);
            assert_eq!(state.workloads[&WorkloadId::new(format!("filler{i}")).unwrap()].node.as_ref().unwrap().as_str().len(), id.len());
        }
        let mut urgent = workload("urgent");
        urgent.requirements.cpu = 2.0;
        urgent.priority = 100;
        state.apply(Command::SubmitWorkload { spec: urgent, now_ms: 2_700 }).unwrap();
        settle(&mut state, &soft, 2_800);
        let u = &state.workloads[&WorkloadId::new("urgent").unwrap()];
        assert_eq!(u.node.as_ref().unwrap().as_str(), "fra", "{}", u.reason);
        assert!(u.reason.starts_with("preempted 1 lower-priority workload(s) on fra"), "{}", u.reason);
        let victim = state.workloads.values().find(|w| w.node.is_none()).unwrap();
        assert!(victim.reason.starts_with("no node fits"), "{}", victim.reason);
    }

    /// Prints how long one view of 10,000 nodes takes to build (run with
    /// `--release --nocapture`); asserts nothing about speed.
    #[test]
    fn view_of_ten_thousand_nodes() {
        let mut state = State::default();
        let mut soft = HashMap::new();
        for i in 0..10_000 {
            let id = format!("n{i:05}");
            state.apply(Command::RegisterNode { spec: node(&id, (i % 90) as f64, (i % 180) as f64), now_ms: 0 }).unwrap();
            heartbeat(&mut soft, &id, 0);
        }
        let start = std::time::Instant::now();
        let view = cluster_view(&policy(), &state, &soft, &BTreeMap::new(), 100);
        println!("cluster_view of {} nodes: {:?}", view.nodes().len(), start.elapsed());
        assert_eq!(view.nodes().len(), 10_000);
    }

    #[test]
    fn unplaceable_work_stays_pending_with_an_explanation_and_is_stable() {
        let (mut state, soft) = cluster();
        let mut big = workload("big");
        big.requirements.cpu = 64.0;
        state.apply(Command::SubmitWorkload { spec: big, now_ms: 2_500 }).unwrap();
        settle(&mut state, &soft, 2_600);
        let w = &state.workloads[&WorkloadId::new("big").unwrap()];
        assert!(w.node.is_none());
        assert_eq!(w.reason, "no node fits (2 considered: 2 insufficient cpu)");
        assert!(reconcile(&policy(), &state, &soft, 2_700, true).is_empty());
    }

    #[test]
    fn draining_moves_work_away_when_it_can() {
        let (mut state, soft) = cluster();
        state.apply(Command::SubmitWorkload { spec: workload("w"), now_ms: 2_500 }).unwrap();
        settle(&mut state, &soft, 2_600);
        state.apply(Command::SetLifecycle { id: NodeId::new("fra").unwrap(), lifecycle: Lifecycle::Draining, now_ms: 2_700 }).unwrap();
        settle(&mut state, &soft, 2_800);
        let w = &state.workloads[&WorkloadId::new("w").unwrap()];
        assert_eq!(w.node.as_ref().unwrap().as_str(), "nyc");
        assert!(w.reason.starts_with("drain from fra"), "{}", w.reason);
    }
}
