//! The state machine: nodes and workloads, changed only by [`Command`]s.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use verge_core::{HealthReport, Lifecycle, NodeId, NodeSpec, WorkloadId, WorkloadSpec};

use crate::cachelog::{last_position, over_limits, CacheBacklog, MissedInvalidation};

/// A node as the control plane remembers it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct NodeRecord {
    /// What the node declared.
    pub spec: NodeSpec,
    /// Where it is in its lifecycle.
    pub lifecycle: Lifecycle,
    /// When it entered that lifecycle state, ms since the epoch.
    pub lifecycle_since_ms: u64,
    /// When it was first registered.
    pub registered_ms: u64,
    /// The last health report pushed through the API, with its time.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub health_report: Option<(HealthReport, u64)>,
    /// The last cache-log entry it acknowledged: it has applied every
    /// earlier one meant for it.
    #[serde(default)]
    pub cache_seen: u64,
    /// Set (to a log position) when an entry meant for it left the cache
    /// log before it caught up, or by [`Command::DistrustCache`]: it drops
    /// every entry it held before it connected instead.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cache_drop_all: Option<u64>,
}

impl NodeRecord {
    /// Makes the node drop what it cached before its next connection,
    /// until it acknowledges the cache log through `at` or later.
    fn distrust_cache(&mut self, at: u64) {
        self.cache_drop_all = Some(self.cache_drop_all.unwrap_or(0).max(at));
    }
}

/// A workload as the control plane remembers it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct WorkloadRecord {
    /// What was submitted.
    pub spec: WorkloadSpec,
    /// The node it is assigned to, if placed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node: Option<NodeId>,
    /// When it was submitted.
    pub submitted_ms: u64,
    /// When it was last placed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub placed_ms: Option<u64>,
    /// Why it is where it is, or why it is still pending.
    #[serde(default)]
    pub reason: String,
    /// How many times it moved from one node to another.
    #[serde(default)]
    pub moves: u32,
}

/// A change to the state. Commands are the only way state changes.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "camelCase")]
pub enum Command {
    /// Adds a node or updates its spec; a terminated node starts over as initialized.
    RegisterNode { spec: NodeSpec, now_ms: u64 },
    /// Forgets a node; its workloads become pending.
    RemoveNode { id: NodeId, reason: String },
    /// Moves a node to another lifecycle state.
    SetLifecycle { id: NodeId, lifecycle: Lifecycle, now_ms: u64 },
    /// Records a health report pushed through the API.
    ReportHealth { id: NodeId, report: HealthReport, now_ms: u64 },
    /// Adds a workload, pending until placed.
    SubmitWorkload { spec: WorkloadSpec, now_ms: u64 },
    /// Forgets a workload.
    DeleteWorkload { id: WorkloadId },
    /// Assigns a workload to a node (a move when it was on another).
    Place { id: WorkloadId, node: NodeId, reason: String, now_ms: u64 },
    /// Takes a workload off its node; it becomes pending.
    Unplace { id: WorkloadId, reason: String },
    /// Logs a cache invalidation for nodes that were not connected to
    /// receive it (unknown nodes are skipped; none known: nothing logged).
    QueueCacheInvalidation { nodes: Vec<NodeId>, key: String, version: u64 },
    /// Records that a node applied the cache log up to `through`.
    SettleCacheBacklog { id: NodeId, through: u64 },
    /// The control plane cannot vouch for what `id` caches (it is new to
    /// it, as after a removal, and may hold entries whose invalidations
    /// named no such node): it drops what it held before it connects.
    DistrustCache { id: NodeId },
}

/// A record a command touched, so the store knows what to write.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Key {
    /// A node record.
    Node(NodeId),
    /// A workload record.
    Workload(WorkloadId),
    /// A cache-log entry, by its position.
    CacheLog(u64),
}

/// Why a command was refused; the state is unchanged.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StateError {
    /// No such node.
    #[error("node {0} not found")]
    NodeNotFound(NodeId),
    /// No such workload.
    #[error("workload {0} not found")]
    WorkloadNotFound(WorkloadId),
    /// A workload with this id exists.
    #[error("workload {0} already exists; delete it first or pick another id")]
    WorkloadExists(WorkloadId),
    /// The lifecycle does not allow this transition.
    #[error("node {id} cannot go from {from} to {to}")]
    BadTransition { id: NodeId, from: Lifecycle, to: Lifecycle },
    /// The target node cannot take workloads.
    #[error("node {id} is {lifecycle}; it takes no workloads")]
    NodeUnavailable { id: NodeId, lifecycle: Lifecycle },
    /// The placement would give a node more than it has.
    #[error("node {id} has too little {resource} left for workload {workload}")]
    Overcommitted { id: NodeId, workload: WorkloadId, resource: &'static str },
}

/// Every node and workload the control plane knows.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct State {
    /// Nodes by id.
    pub nodes: BTreeMap<NodeId, NodeRecord>,
    /// Workloads by id.
    pub workloads: BTreeMap<WorkloadId, WorkloadRecord>,
    /// Cache invalidations nodes missed, by position (see [`crate::cachelog`]).
    pub cache_log: BTreeMap<u64, MissedInvalidation>,
}

/// Whether the lifecycle allows going from `from` to `to`.
fn transition_allowed(from: Lifecycle, to: Lifecycle) -> bool {
    use Lifecycle::*;
    matches!(
        (from, to),
        (Initialized | Terminated, Warming)
            | (Warming, Active)
            | (Initialized | Warming | Active, Draining)
            | (Draining, Active)
            | (_, Terminated)
    ) && from != to
}

impl State {
    /// The cache invalidations `node` missed and has not acknowledged;
    /// `None` for an unknown node.
    pub fn cache_backlog(&self, node: &NodeId) -> Option<CacheBacklog> {
        let rec = self.nodes.get(node)?;
        Some(crate::cachelog::backlog(&self.cache_log, node, rec.cache_seen, rec.cache_drop_all.is_some()))
    }

    /// The workloads assigned to `node`.
    pub fn workloads_on<'a>(&'a self, node: &'a NodeId) -> impl Iterator<Item = &'a WorkloadRecord> + 'a {
        self.workloads.values().filter(move |w| w.node.as_ref() == Some(node))
    }

    /// The resource `node` lacks to take `w` on top of what it holds, if any:
    /// the last check of every placement, whoever planned it.
    fn shortfall(&self, node: &NodeId, w: &WorkloadSpec) -> Option<&'static str> {
        let cap = &self.nodes.get(node)?.spec.resources;
        let (mut cpu, mut mem, mut disk) = (w.requirements.cpu, w.requirements.memory.0, w.requirements.storage.0);
        for r in self.workloads_on(node) {
            cpu += r.spec.requirements.cpu;
            mem += r.spec.requirements.memory.0;
            disk += r.spec.requirements.storage.0;
        }
        if cpu > cap.cpu.cores + 1e-9 {
            Some("cpu")
        } else if mem > cap.memory.total.0 {
            Some("memory")
        } else if disk > cap.storage.total.0 {
            Some("storage")
        } else {
            None
        }
    }

    /// Applies a command, returning the records it changed; on error nothing changed.
    pub fn apply(&mut self, cmd: Command) -> Result<Vec<Key>, StateError> {
        match cmd {
            Command::RegisterNode { spec, now_ms } => {
                let id = spec.id.clone();
                match self.nodes.get_mut(&id) {
                    Some(rec) => {
                        rec.spec = spec;
                        if rec.lifecycle == Lifecycle::Terminated {
                            rec.lifecycle = Lifecycle::Initialized;
                            rec.lifecycle_since_ms = now_ms;
                        }
                    }
                    None => {
                        let rec = NodeRecord {
                            spec,
                            lifecycle: Lifecycle::Initialized,
                            lifecycle_since_ms: now_ms,
                            registered_ms: now_ms,
                            health_report: None,
                            // It missed nothing logged before it existed.
                            cache_seen: last_position(&self.cache_log),
                            cache_drop_all: None,
                        };
                        self.nodes.insert(id.clone(), rec);
                    }
                }
                Ok(vec![Key::Node(id)])
            }
            Command::RemoveNode { id, reason } => {
                if self.nodes.remove(&id).is_none() {
                    return Err(StateError::NodeNotFound(id));
                }
                let mut keys = vec![Key::Node(id.clone())];
                for w in self.workloads.values_mut().filter(|w| w.node.as_ref() == Some(&id)) {
                    w.node = None;
                    w.reason = reason.clone();
                    keys.push(Key::Workload(w.spec.id.clone()));
                }
                Ok(keys)
            }
            Command::SetLifecycle { id, lifecycle, now_ms } => {
                let rec = self.nodes.get_mut(&id).ok_or_else(|| StateError::NodeNotFound(id.clone()))?;
                if !transition_allowed(rec.lifecycle, lifecycle) {
                    return Err(StateError::BadTransition { id, from: rec.lifecycle, to: lifecycle });
                }
                rec.lifecycle = lifecycle;
                rec.lifecycle_since_ms = now_ms;
                Ok(vec![Key::Node(id)])
            }
            Command::ReportHealth { id, report, now_ms } => {
                let rec = self.nodes.get_mut(&id).ok_or_else(|| StateError::NodeNotFound(id.clone()))?;
                rec.health_report = Some((report, now_ms));
                Ok(vec![Key::Node(id)])
            }
            Command::SubmitWorkload { spec, now_ms } => {
                let id = spec.id.clone();
                if self.workloads.contains_key(&id) {
                    return Err(StateError::WorkloadExists(id));
                }
                let rec = WorkloadRecord {
                    spec,
                    node: None,
                    submitted_ms: now_ms,
                    placed_ms: None,
                    reason: "waiting for placement".into(),
                    moves: 0,
                };
                self.workloads.insert(id.clone(), rec);
                Ok(vec![Key::Workload(id)])
            }
            Command::DeleteWorkload { id } => {
                self.workloads.remove(&id).ok_or_else(|| StateError::WorkloadNotFound(id.clone()))?;
                Ok(vec![Key::Workload(id)])
            }
            Command::Place { id, node, reason, now_ms } => {
                let n = self.nodes.get(&node).ok_or_else(|| StateError::NodeNotFound(node.clone()))?;
                if matches!(n.lifecycle, Lifecycle::Draining | Lifecycle::Terminated) {
                    return Err(StateError::NodeUnavailable { id: node, lifecycle: n.lifecycle });
                }
                let w = self.workloads.get(&id).ok_or_else(|| StateError::WorkloadNotFound(id.clone()))?;
                if w.node.as_ref() != Some(&node) {
                    if let Some(resource) = self.shortfall(&node, &w.spec) {
                        return Err(StateError::Overcommitted { id: node, workload: id, resource });
                    }
                }
                let w = self.workloads.get_mut(&id).ok_or_else(|| StateError::WorkloadNotFound(id.clone()))?;
                if w.node.is_some() && w.node.as_ref() != Some(&node) {
                    w.moves += 1;
                }
                w.node = Some(node);
                w.placed_ms = Some(now_ms);
                w.reason = reason;
                Ok(vec![Key::Workload(id)])
            }
            Command::Unplace { id, reason } => {
                let w = self.workloads.get_mut(&id).ok_or_else(|| StateError::WorkloadNotFound(id.clone()))?;
                w.node = None;
                w.reason = reason;
                Ok(vec![Key::Workload(id)])
            }
            Command::QueueCacheInvalidation { nodes, key, version } => {
                let mut nodes: Vec<NodeId> = nodes.into_iter().filter(|n| self.nodes.contains_key(n)).collect();
                if nodes.is_empty() {
                    return Ok(Vec::new());
                }
                nodes.sort();
                nodes.dedup();
                let seq = last_position(&self.cache_log) + 1;
                self.cache_log.insert(seq, MissedInvalidation { key, version, nodes });
                let mut keys = vec![Key::CacheLog(seq)];
                while over_limits(&self.cache_log) {
                    let Some((oldest, e)) = self.cache_log.pop_first() else { break };
                    keys.push(Key::CacheLog(oldest));
                    for n in e.nodes {
                        if let Some(rec) = self.nodes.get_mut(&n).filter(|r| r.cache_seen < oldest) {
                            rec.distrust_cache(oldest);
                            keys.push(Key::Node(n));
                        }
                    }
                }
                Ok(keys)
            }
            Command::DistrustCache { id } => {
                let last = last_position(&self.cache_log);
                self.nodes.get_mut(&id).ok_or_else(|| StateError::NodeNotFound(id.clone()))?.distrust_cache(last);
                Ok(vec![Key::Node(id)])
            }
            Command::SettleCacheBacklog { id, through } => {
                let rec = self.nodes.get_mut(&id).ok_or_else(|| StateError::NodeNotFound(id.clone()))?;
                rec.cache_seen = rec.cache_seen.max(through);
                if rec.cache_drop_all.is_some_and(|at| at <= through) {
                    rec.cache_drop_all = None;
                }
                Ok(vec![Key::Node(id)])
            }
        }
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::cachelog::{CACHE_LOG_ENTRIES, CACHE_LOG_NODE_NAMES};
    use verge_core::{CpuResources, Location, MemoryResources, Resources};

    pub fn node(id: &str) -> NodeSpec {
        NodeSpec {
            id: NodeId::new(id).unwrap(),
            node_type: Default::default(),
            tier: Default::default(),
            location: Location { latitude: 50.0, longitude: 8.0, city: "Frankfurt".into(), country: "DE".into() },
            resources: Resources {
                cpu: CpuResources { cores: 4.0, frequency: None },
                memory: MemoryResources { total: verge_core::Bytes(1 << 30) },
                storage: Default::default(),
            },
            labels: Default::default(),
            data_addr: None,
        }
    }

    pub fn workload(id: &str) -> WorkloadSpec {
        serde_json::from_value(serde_json::json!({"id": id, "requirements": {"cpu": 1, "memory": 1024}, "spec": {"command": "true"}}))
            .unwrap()
    }

    #[test]
    fn lifecycle_moves_forward_and_a_terminated_node_can_come_back() {
        let mut s = State::default();
        let id = NodeId::new("n1").unwrap();
        s.apply(Command::RegisterNode { spec: node("n1"), now_ms: 1 }).unwrap();
        let set = |s: &mut State, l| s.apply(Command::SetLifecycle { id: id.clone(), lifecycle: l, now_ms: 2 });
        assert!(set(&mut s, Lifecycle::Active).is_err(), "initialized must warm first");
        set(&mut s, Lifecycle::Warming).unwrap();
        set(&mut s, Lifecycle::Active).unwrap();
        set(&mut s, Lifecycle::Draining).unwrap();
        set(&mut s, Lifecycle::Terminated).unwrap();
        s.apply(Command::RegisterNode { spec: node("n1"), now_ms: 3 }).unwrap();
        assert_eq!(s.nodes[&id].lifecycle, Lifecycle::Initialized);
        assert_eq!(s.nodes[&id].registered_ms, 1);
    }

    #[test]
    fn placing_counts_moves_and_removing_a_node_frees_its_workloads() {
        let mut s = State::default();
        for n in ["a", "b"] {
            s.apply(Command::RegisterNode { spec: node(n), now_ms: 0 }).unwrap();
        }
        let w = WorkloadId::new("w").unwrap();
        s.apply(Command::SubmitWorkload { spec: workload("w"), now_ms: 0 }).unwrap();
        assert_eq!(s.apply(Command::SubmitWorkload { spec: workload("w"), now_ms: 0 }), Err(StateError::WorkloadExists(w.clone())));
        s.apply(Command::Place { id: w.clone(), node: NodeId::new("a").unwrap(), reason: "r".into(), now_ms: 1 }).unwrap();
        s.apply(Command::Place { id: w.clone(), node: NodeId::new("b").unwrap(), reason: "r".into(), now_ms: 2 }).unwrap();
        assert_eq!(s.workloads[&w].moves, 1);
        let keys = s.apply(Command::RemoveNode { id: NodeId::new("b").unwrap(), reason: "gone".into() }).unwrap();
        assert_eq!(keys.len(), 2);
        assert_eq!(s.workloads[&w].node, None);
        assert!(s.apply(Command::Place { id: w, node: NodeId::new("b").unwrap(), reason: "r".into(), now_ms: 3 }).is_err());
    }

    #[test]
    fn the_cache_log_gives_each_node_what_it_missed_until_it_acknowledges() {
        let mut s = State::default();
        let id = |n: &str| NodeId::new(n).unwrap();
        s.apply(Command::RegisterNode { spec: node("a"), now_ms: 0 }).unwrap();
        s.apply(Command::RegisterNode { spec: node("b"), now_ms: 0 }).unwrap();
        let queue = |s: &mut State, nodes: &[&str], key: &str, version| {
            s.apply(Command::QueueCacheInvalidation { nodes: nodes.iter().map(|n| id(n)).collect(), key: key.into(), version })
        };
        assert_eq!(queue(&mut s, &["a", "gone"], "k", 5).unwrap(), vec![Key::CacheLog(1)], "one entry; an unknown node is skipped");
        assert_eq!(queue(&mut s, &["gone"], "k", 6).unwrap(), vec![], "no known node: nothing logged");
        queue(&mut s, &["a", "b"], "k", 3).unwrap();
        queue(&mut s, &["b"], "j", 4).unwrap();
        let a = s.cache_backlog(&id("a")).unwrap();
        assert_eq!((a.keys.clone(), a.drop_all, a.through), ([("k".to_string(), 5)].into(), false, 3));
        // A later entry lands while the first delivery is on its way: it stays.
        queue(&mut s, &["a"], "k", 9).unwrap();
        s.apply(Command::SettleCacheBacklog { id: id("a"), through: a.through }).unwrap();
        assert_eq!(s.cache_backlog(&id("a")).unwrap().keys, [("k".to_string(), 9)].into());
        assert_eq!(s.cache_backlog(&id("b")).unwrap().keys.len(), 2);
        let a = s.cache_backlog(&id("a")).unwrap();
        s.apply(Command::SettleCacheBacklog { id: id("a"), through: a.through }).unwrap();
        // A node registered now missed nothing before it.
        s.apply(Command::RegisterNode { spec: node("c"), now_ms: 1 }).unwrap();
        assert!(s.cache_backlog(&id("c")).unwrap().is_empty());
        // Back after a removal, no entry named it meanwhile: distrusted, it
        // drops what it held until a connection acknowledges.
        s.apply(Command::RemoveNode { id: id("c"), reason: "gone".into() }).unwrap();
        queue(&mut s, &["a", "c"], "k", 10).unwrap();
        s.apply(Command::RegisterNode { spec: node("c"), now_ms: 2 }).unwrap();
        s.apply(Command::DistrustCache { id: id("c") }).unwrap();
        let c = s.cache_backlog(&id("c")).unwrap();
        assert!(c.drop_all && c.keys.is_empty(), "{c:?}");
        s.apply(Command::SettleCacheBacklog { id: id("c"), through: c.through }).unwrap();
        assert!(s.cache_backlog(&id("c")).unwrap().is_empty());
        assert_eq!(s.apply(Command::DistrustCache { id: id("gone") }), Err(StateError::NodeNotFound(id("gone"))));
        let a = s.cache_backlog(&id("a")).unwrap();
        s.apply(Command::SettleCacheBacklog { id: id("a"), through: a.through }).unwrap();
        // Entries pushed out of the log before b caught up: b drops all.
        for i in 0..CACHE_LOG_ENTRIES as u64 {
            queue(&mut s, &["c"], &format!("x{i}"), i).unwrap();
        }
        assert_eq!(s.cache_log.len(), CACHE_LOG_ENTRIES);
        let b = s.cache_backlog(&id("b")).unwrap();
        assert!(b.drop_all && b.keys.is_empty(), "{b:?}");
        assert!(!s.cache_backlog(&id("a")).unwrap().drop_all, "a had nothing in the entries pushed out");
        s.apply(Command::SettleCacheBacklog { id: id("b"), through: b.through }).unwrap();
        assert!(s.cache_backlog(&id("b")).unwrap().is_empty());
        // Entries naming many nodes each: the log keeps fewer of them.
        let many: Vec<NodeId> = (0..20_000).map(|i| id(&format!("n{i}"))).collect();
        let mut big = State::default();
        for n in &many {
            big.nodes.insert(n.clone(), s.nodes[&id("a")].clone());
        }
        for v in 0..52 {
            big.apply(Command::QueueCacheInvalidation { nodes: many.clone(), key: "k".into(), version: v }).unwrap();
        }
        assert_eq!(big.cache_log.len(), CACHE_LOG_NODE_NAMES / many.len());
    }

    #[test]
    fn a_placement_that_overcommits_is_refused_whoever_planned_it() {
        let mut s = State::default();
        s.apply(Command::RegisterNode { spec: node("a"), now_ms: 0 }).unwrap();
        let a = NodeId::new("a").unwrap();
        for i in 0..4 {
            s.apply(Command::SubmitWorkload { spec: workload(&format!("w{i}")), now_ms: 0 }).unwrap();
            s.apply(Command::Place { id: WorkloadId::new(format!("w{i}")).unwrap(), node: a.clone(), reason: "r".into(), now_ms: 1 })
                .unwrap();
        }
        s.apply(Command::SubmitWorkload { spec: workload("w4"), now_ms: 0 }).unwrap();
        let e = s.apply(Command::Place { id: WorkloadId::new("w4").unwrap(), node: a.clone(), reason: "r".into(), now_ms: 1 }).unwrap_err();
        assert_eq!(e.to_string(), "node a has too little cpu left for workload w4");
        // Placing a workload again where it already is stays allowed.
        s.apply(Command::Place { id: WorkloadId::new("w0").unwrap(), node: a, reason: "again".into(), now_ms: 2 }).unwrap();
    }
}
