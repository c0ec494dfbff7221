//! The control plane's shared core: the store, the soft state and the open
//! agent connections behind one lock, and the reconcile loop that drives
//! them. Every state change goes through [`Inner::apply`], which also tells
//! the affected agents.

use std::collections::{HashMap, VecDeque};
use std::hash::{Hash, Hasher};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use tokio::sync::{mpsc, oneshot, watch, Notify};
use verge_core::{haversine_km, Clock, Lifecycle, NodeId, WorkloadId};
use verge_proto::{LogStream, RttSample, ServerMessage};
use verge_sched::{LatencyModel, VivaldiClient, VivaldiConfig};
use verge_store::{Command, Durability, StateError, Store, StoreError};

use verge_security::attest::{AttestError, Evidence};
use verge_security::compliance::{evaluate, Pack};

use crate::config::ServerConfig;
use crate::posture::TrustPolicy;
use crate::reconcile::{provision_request, reconcile, Policy, ProvisionRequest};
use crate::security::{AuditEvent, Security};
use crate::soft::NodeSoft;
use crate::telemetry::Telemetry;

/// An open gateway connection to an agent.
pub struct AgentConn {
    /// Distinguishes a reconnect from the connection it replaced.
    pub conn_id: u64,
    /// Messages to the agent.
    pub tx: mpsc::UnboundedSender<ServerMessage>,
}

/// Everything behind the lock.
pub struct Inner {
    /// Durable state.
    pub store: Store,
    /// Heartbeat-derived state by node.
    pub soft: HashMap<NodeId, NodeSoft>,
    /// Open agent connections by node.
    pub agents: HashMap<NodeId, AgentConn>,
    /// The server's own network coordinate: agents measure their RTT to it.
    pub server_vivaldi: VivaldiClient,
    /// Recent (distance km, RTT ms) pairs between nodes, for calibration.
    pub calibration: VecDeque<(f64, f64)>,
    /// The latency model fitted to `calibration`.
    pub model: LatencyModel,
    /// Samples added since the model was last fitted.
    pub unfitted: usize,
}

/// Most calibration samples kept.
const CALIBRATION_SAMPLES: usize = 4096;
/// Weight of a new sample in the smoothed RTT to the server.
const RTT_SMOOTHING: f64 = 0.3;
/// The model is refitted after this many new samples.
const REFIT_EVERY: usize = 256;

/// A node's own Vivaldi client, seeded from its id so runs are reproducible.
fn new_vivaldi(id: &str) -> VivaldiClient {
    let mut h = std::collections::hash_map::DefaultHasher::new();
    id.hash(&mut h);
    VivaldiClient::new(VivaldiConfig::default(), h.finish()).expect("the default Vivaldi config is valid")
}

impl Inner {
    /// Learns from one RTT that `node` measured: both ends' coordinates move,
    /// and node-to-node samples calibrate the distance model.
    pub fn record_rtt(&mut self, node: &NodeId, sample: &RttSample) {
        let rtt = sample.rtt_ms;
        let known_peer = sample.peer.as_ref().is_none_or(|p| p != node && self.store.state().nodes.contains_key(p));
        if !(rtt.is_finite() && rtt > 0.0 && rtt < 10_000.0 && known_peer) {
            return;
        }
        let other = match &sample.peer {
            None => self.server_vivaldi.coordinate().clone(),
            Some(p) => self.soft.entry(p.clone()).or_default().vivaldi.get_or_insert_with(|| new_vivaldi(p.as_str())).coordinate().clone(),
        };
        let soft = self.soft.entry(node.clone()).or_default();
        if sample.peer.is_none() {
            soft.server_rtt_ms = Some(soft.server_rtt_ms.map_or(rtt, |old| old + RTT_SMOOTHING * (rtt - old)));
        }
        let client = soft.vivaldi.get_or_insert_with(|| new_vivaldi(node.as_str()));
        if client.update(&other, rtt).is_err() {
            return;
        }
        let mine = client.coordinate().clone();
        match &sample.peer {
            None => {
                let _ = self.server_vivaldi.update(&mine, rtt);
            }
            Some(p) => {
                let nodes = &self.store.state().nodes;
                if let (Some(a), Some(b)) = (nodes.get(node), nodes.get(p)) {
                    self.calibration.push_back((haversine_km(a.spec.location.point(), b.spec.location.point()), rtt));
                    if self.calibration.len() > CALIBRATION_SAMPLES {
                        self.calibration.pop_front();
                    }
                    self.unfitted += 1;
                    if self.unfitted >= REFIT_EVERY {
                        self.unfitted = 0;
                        self.model = LatencyModel::fit(self.calibration.make_contiguous());
                    }
                }
            }
        }
    }

    /// Sends `msg` to the agent of `node`, if connected.
    pub fn send(&self, node: &NodeId, msg: ServerMessage) {
        if let Some(a) = self.agents.get(node) {
            let _ = a.tx.send(msg);
        }
    }

    /// Applies a command durably and tells the agents whose assignments changed.
    pub fn apply(&mut self, cmd: Command) -> Result<(), StoreError> {
        let mut outcomes = self.apply_batch(vec![cmd], Durability::Durable)?;
        outcomes.pop().unwrap_or(Ok(())).map_err(StoreError::State)
    }

    /// Applies commands in one transaction and tells the agents whose
    /// assignments changed; each command's own outcome is returned.
    pub fn apply_batch(&mut self, cmds: Vec<Command>, durability: Durability) -> Result<Vec<Result<(), StateError>>, StoreError> {
        let state = self.store.state();
        let mut before: Vec<(WorkloadId, Option<NodeId>)> = Vec::new();
        for cmd in &cmds {
            let touched: Vec<WorkloadId> = match cmd {
                Command::Place { id, .. } | Command::Unplace { id, .. } | Command::DeleteWorkload { id } => vec![id.clone()],
                Command::RemoveNode { id, .. } => state.workloads_on(id).map(|w| w.spec.id.clone()).collect(),
                _ => Vec::new(),
            };
            for w in touched {
                if !before.iter().any(|(b, _)| *b == w) {
                    let node = state.workloads.get(&w).and_then(|r| r.node.clone());
                    before.push((w, node));
                }
            }
        }
        let outcomes = self.store.apply_batch(cmds, durability)?;
        for (wid, old) in before {
            let rec = self.store.state().workloads.get(&wid);
            let new = rec.and_then(|r| r.node.clone());
            if old == new {
                continue;
            }
            if let Some(old) = old {
                self.send(&old, ServerMessage::Unassign { id: wid.clone() });
                if let Some(s) = self.soft.get_mut(&old) {
                    s.statuses.remove(&wid);
                }
            }
            if let (Some(new), Some(rec)) = (new, rec) {
                self.send(&new, ServerMessage::Assign { workload: Box::new(rec.spec.clone()) });
            }
        }
        Ok(outcomes)
    }
}

/// A log read answered by an agent.
pub struct LogChunk {
    /// The bytes read, lossily decoded.
    pub data: String,
    /// Where to continue.
    pub next_offset: u64,
}

/// The control plane's shared core.
pub struct Control {
    inner: Mutex<Inner>,
    /// The clock every decision reads.
    pub clock: Arc<dyn Clock>,
    /// The configuration.
    pub cfg: ServerConfig,
    /// Metrics.
    pub telemetry: Telemetry,
    /// Wakes the reconciler before its next tick.
    pub wake: Notify,
    /// Number of the last reconcile pass that started.
    pub pass_started: AtomicU64,
    /// Number of the last reconcile pass that finished, so a request can wait
    /// for a pass that started after it.
    pub passes: watch::Sender<u64>,
    next_id: AtomicU64,
    pending_logs: Mutex<HashMap<u64, oneshot::Sender<Result<LogChunk, String>>>>,
    /// Sync jobs by id.
    pub sync_jobs: Mutex<std::collections::BTreeMap<u64, crate::syncjobs::SyncJob>>,
    /// CA, tokens, revocations, attestation nonces, audit.
    pub security: Security,
    /// Cache invalidations waiting for agents' acknowledgements.
    pub cache_acks: Mutex<HashMap<u64, mpsc::UnboundedSender<(NodeId, bool)>>>,
}

impl Control {
    /// The core around an opened store. Nodes that were up get a fresh lease,
    /// so a restarted server does not fail over a healthy fleet.
    pub fn new(cfg: ServerConfig, store: Store, security: Security, clock: Arc<dyn Clock>) -> Self {
        let now = clock.now_ms();
        let mut soft = HashMap::new();
        for (id, rec) in &store.state().nodes {
            if matches!(rec.lifecycle, Lifecycle::Warming | Lifecycle::Active | Lifecycle::Draining) {
                let s: &mut NodeSoft = soft.entry(id.clone()).or_default();
                s.lease_expires_ms = Some(now + cfg.lease_ms);
            }
        }
        Control {
            inner: Mutex::new(Inner {
                store,
                soft,
                agents: HashMap::new(),
                server_vivaldi: new_vivaldi("verge-server"),
                calibration: VecDeque::new(),
                model: LatencyModel::default(),
                unfitted: 0,
            }),
            clock,
            cfg,
            telemetry: Telemetry::new(),
            wake: Notify::new(),
            pass_started: AtomicU64::new(0),
            passes: watch::channel(0).0,
            next_id: AtomicU64::new(1),
            pending_logs: Mutex::new(HashMap::new()),
            sync_jobs: Mutex::new(std::collections::BTreeMap::new()),
            security,
            cache_acks: Mutex::new(HashMap::new()),
        }
    }

    /// What attestation, trust and quarantine decisions depend on.
    pub fn trust_policy(&self) -> TrustPolicy {
        TrustPolicy {
            tls: self.cfg.security.tls,
            min_trust: self.cfg.security.min_trust,
            max_attestation_age_ms: 2 * self.cfg.security.attestation_interval.0,
            needed: self.cfg.security.min_trust > 0,
        }
    }

    /// Checks evidence from `node` against a nonce the server issued, the
    /// key in the node's certificate and the policy; records the outcome in
    /// the node's soft state (a failure quarantines it), the metrics and
    /// the audit chain.
    pub fn attest(&self, node: &NodeId, evidence: &Evidence) -> Result<(), AttestError> {
        let now = self.clock.now_ms();
        let key = self.lock().soft.get(node).and_then(|s| s.cert.as_ref()).and_then(|c| c.ed25519_public_key.clone());
        let result = match key {
            Some(key) => self.security.verify_attestation(evidence, node.as_str(), &key, now),
            None => Err(AttestError::Key("the node has no verified certificate on a gateway connection".into())),
        };
        let outcome = match &result {
            Ok(()) => "passed",
            Err(e) => e.code(),
        };
        self.telemetry.attestations.get_or_create(&vec![("outcome".into(), outcome.into())]).inc();
        let reason = match &result {
            Ok(()) => format!("binary {} kernel {}", evidence.measurements.binary_sha256, evidence.measurements.kernel_release),
            Err(e) => e.to_string(),
        };
        self.security
            .audit(now, AuditEvent { actor: &format!("node:{node}"), action: "attest", target: node.as_str(), outcome, reason: &reason });
        {
            let mut inner = self.lock();
            if let Some(s) = inner.soft.get_mut(node) {
                match &result {
                    Ok(()) => {
                        s.attested_ms = Some(now);
                        s.attest_failure = None;
                    }
                    // A replayed or stale answer proves nothing about the node
                    // itself: count it against its behaviour, quarantine only
                    // on evidence that the node runs something not allowed.
                    Err(AttestError::Replayed | AttestError::UnknownNonce | AttestError::Expired) => s.failed_auths += 1,
                    Err(e) => {
                        s.failed_auths += 1;
                        s.attest_failure = Some(e.to_string());
                    }
                }
            }
        }
        match &result {
            Ok(()) => tracing::info!(node = %node, "attestation passed"),
            Err(e) => tracing::warn!(node = %node, error = %e, "attestation refused"),
        }
        self.wake.notify_one();
        result
    }

    /// Every node checked against `packs`: findings with remediations.
    pub fn compliance_report(&self, packs: &[Pack]) -> serde_json::Value {
        let now = self.clock.now_ms();
        let policy = self.trust_policy();
        let inner = self.lock();
        let mut findings = Vec::new();
        let (mut passed, mut failed) = (0u64, 0u64);
        for (id, rec) in &inner.store.state().nodes {
            let soft = inner.soft.get(id);
            let mut facts = crate::posture::facts(rec, soft, &policy, now);
            facts.insert("trust".into(), crate::posture::trust(rec, soft, &policy, now).score.into());
            for pack in packs {
                for f in evaluate(pack, id.as_str(), &facts) {
                    if f.passed {
                        passed += 1;
                    } else {
                        failed += 1;
                    }
                    findings.push(f);
                }
            }
        }
        serde_json::json!({
            "packs": packs.iter().map(|p| &p.name).collect::<Vec<_>>(),
            "passed": passed,
            "failed": failed,
            "findings": findings,
        })
    }

    /// Locks the core. A panic while locked cannot leave the state half
    /// changed (commands apply atomically), so a poisoned lock is reused.
    pub fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A process-unique id for connections and requests.
    pub fn next_id(&self) -> u64 {
        self.next_id.fetch_add(1, Ordering::Relaxed)
    }

    /// Number of registered nodes.
    pub fn node_count(&self) -> usize {
        self.lock().store.state().nodes.len()
    }

    /// The decision policy: the config plus what the server learned.
    pub fn policy(&self, inner: &Inner) -> Policy {
        Policy {
            warmup_ms: self.cfg.warmup_ms(),
            checks: self.cfg.health_checks.clone(),
            cities: self.cfg.cities.clone(),
            model: inner.model,
            migration: self.cfg.migration.clone(),
            trust: TrustPolicy {
                needed: self.cfg.security.min_trust > 0
                    || inner.store.state().workloads.values().any(|w| w.spec.constraints.min_trust.is_some()),
                ..self.trust_policy()
            },
        }
    }

    /// Asks the agent of `node` for a workload's log and waits for the answer.
    pub async fn fetch_logs(
        &self,
        node: &NodeId,
        id: WorkloadId,
        stream: LogStream,
        offset: Option<u64>,
        tail: u32,
    ) -> Result<LogChunk, String> {
        let request = self.next_id();
        let (tx, rx) = oneshot::channel();
        self.pending_logs.lock().unwrap_or_else(|p| p.into_inner()).insert(request, tx);
        let sent = {
            let inner = self.lock();
            match inner.agents.get(node) {
                Some(a) => a.tx.send(ServerMessage::FetchLogs { request, id, stream, offset, tail }).is_ok(),
                None => false,
            }
        };
        let answer = if sent {
            match tokio::time::timeout(Duration::from_secs(5), rx).await {
                Ok(Ok(r)) => r,
                _ => Err(format!("node {node} did not answer within 5 s")),
            }
        } else {
            Err(format!("node {node} is not connected; its logs stay on the node until it reconnects"))
        };
        self.pending_logs.lock().unwrap_or_else(|p| p.into_inner()).remove(&request);
        answer
    }

    /// Starts a sync job: checks both ends and tells the source agent to push.
    pub fn start_sync(&self, req: crate::syncjobs::SyncRequest) -> Result<crate::syncjobs::SyncJob, crate::error::ApiError> {
        use crate::error::ApiError;
        use crate::syncjobs::{Endpoint, SyncJob};
        use axum::http::StatusCode;
        let source = Endpoint::parse("source", &req.source)?;
        let target = Endpoint::parse("target", &req.target)?;
        if source.node == target.node {
            return Err(ApiError::bad_request("source and target must be different nodes"));
        }
        let id = self.next_id();
        let now = self.clock.now_ms();
        {
            let inner = self.lock();
            let state = inner.store.state();
            let target_rec = state.nodes.get(&target.node).ok_or_else(|| ApiError::not_found(format!("node {} not found", target.node)))?;
            let source_rec = state.nodes.get(&source.node).ok_or_else(|| ApiError::not_found(format!("node {} not found", source.node)))?;
            // Data only moves between nodes trusted enough for it.
            let policy = self.trust_policy();
            let floor = req.min_trust.unwrap_or(0).max(policy.min_trust);
            for (rec, end) in [(source_rec, "source"), (target_rec, "target")] {
                let soft = inner.soft.get(&rec.spec.id);
                let trust = crate::posture::trust(rec, soft, &policy, now);
                let why = match crate::posture::quarantine(rec, soft, &policy, now) {
                    Some(q) => Some(format!("{end} node {} is quarantined: {q}", rec.spec.id)),
                    None => (trust.score < floor).then(|| {
                        format!("{end} node {} has trust {} below {floor}: {}", rec.spec.id, trust.score, trust.reasons.join("; "))
                    }),
                };
                if let Some(why) = why {
                    self.security
                        .audit(now, AuditEvent { actor: "server", action: "sync", target: &req.target, outcome: "denied", reason: &why });
                    return Err(ApiError::new(StatusCode::CONFLICT, "untrusted", why));
                }
            }
            let target_addr = target_rec.spec.data_addr.clone().ok_or_else(|| {
                ApiError::new(StatusCode::CONFLICT, "no_data_port", format!("node {} advertises no data port", target.node))
            })?;
            let agent = inner
                .agents
                .get(&source.node)
                .ok_or_else(|| ApiError::new(StatusCode::CONFLICT, "not_connected", format!("node {} is not connected", source.node)))?;
            let msg = ServerMessage::SyncPush {
                job: id,
                path: source.path.clone(),
                target_addr,
                target_node: target.node.clone(),
                target_path: target.path.clone(),
                mirror: req.mirror,
                limit_bps: req.limit_bps,
                priority: req.priority,
            };
            if agent.tx.send(msg).is_err() {
                return Err(ApiError::new(StatusCode::CONFLICT, "not_connected", format!("node {} just disconnected", source.node)));
            }
        }
        let job = SyncJob {
            id,
            source,
            target,
            mirror: req.mirror,
            state: "running".into(),
            bytes_sent: 0,
            bytes_total: 0,
            files_written: 0,
            error: None,
            created_ms: now,
            updated_ms: now,
        };
        self.sync_jobs.lock().unwrap_or_else(|p| p.into_inner()).insert(id, job.clone());
        Ok(job)
    }

    /// Records a source agent's report on one of its jobs.
    pub fn update_sync(&self, from: &NodeId, report: verge_proto::AgentMessage) {
        let verge_proto::AgentMessage::SyncStatus { job, state, bytes_sent, bytes_total, files_written, error } = report else { return };
        let mut jobs = self.sync_jobs.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(j) = jobs.get_mut(&job).filter(|j| &j.source.node == from) {
            j.state = state;
            j.bytes_sent = bytes_sent;
            j.bytes_total = bytes_total;
            j.files_written = files_written;
            j.error = error;
            j.updated_ms = self.clock.now_ms();
        }
    }

    /// Hands an agent's answer to the request waiting for it.
    pub fn complete_logs(&self, request: u64, answer: Result<LogChunk, String>) {
        if let Some(tx) = self.pending_logs.lock().unwrap_or_else(|p| p.into_inner()).remove(&request) {
            let _ = tx.send(answer);
        }
    }

    /// One reconcile pass: decide, then apply the decisions in one batch.
    /// With `plan_moves` the pass also plans migrations.
    pub fn reconcile_once(&self, plan_moves: bool) {
        let now = self.clock.now_ms();
        let mut inner = self.lock();
        let policy = self.policy(&inner);
        let cmds = reconcile(&policy, inner.store.state(), &inner.soft, now, plan_moves);
        for cmd in &cmds {
            match cmd {
                Command::Place { id, reason, .. } | Command::Unplace { id, reason } => {
                    let state = inner.store.state();
                    let from = state.workloads.get(id).and_then(|w| w.node.as_ref());
                    let dead = from.and_then(|n| state.nodes.get(n)).is_some_and(|n| n.lifecycle == Lifecycle::Terminated);
                    if dead
                        || cmds
                            .iter()
                            .any(|c| matches!(c, Command::SetLifecycle { id: n, lifecycle: Lifecycle::Terminated, .. } if Some(n) == from))
                    {
                        self.telemetry.failovers.inc();
                    }
                    tracing::info!(workload = %id, reason, "placement decision");
                }
                Command::SetLifecycle { id, lifecycle, .. } => tracing::info!(node = %id, %lifecycle, "node lifecycle"),
                _ => {}
            }
        }
        if cmds.is_empty() {
            return;
        }
        // Lifecycle moves alone are recomputed from heartbeats after a crash;
        // placements must survive one.
        let durability = if cmds.iter().any(|c| matches!(c, Command::Place { .. } | Command::Unplace { .. })) {
            Durability::Durable
        } else {
            Durability::Deferred
        };
        let placed: Vec<bool> = cmds.iter().map(|c| matches!(c, Command::Place { .. })).collect();
        match inner.apply_batch(cmds, durability) {
            Ok(outcomes) => {
                for (outcome, placed) in outcomes.iter().zip(placed) {
                    if let Err(e) = outcome {
                        tracing::warn!(error = %e, "reconcile command refused");
                    } else if placed {
                        self.telemetry.placements.inc();
                    }
                }
            }
            Err(e) => tracing::error!(error = %e, "cannot write reconcile decisions"),
        }
    }
}

/// Runs the configured provisioner for one request and logs how it went.
async fn run_provisioner(command: String, r: ProvisionRequest) {
    tracing::info!(node_type = ?r.node_type, reason = %r.reason, %command, "asking the provisioner for a node");
    let node_type = serde_json::to_value(r.node_type).ok().and_then(|v| v.as_str().map(str::to_string)).unwrap_or_default();
    let out = tokio::process::Command::new("sh")
        .arg("-c")
        .arg(&command)
        .env("VERGE_PROVISION_TYPE", node_type)
        .env("VERGE_PROVISION_REASON", &r.reason)
        .stdin(std::process::Stdio::null())
        .output()
        .await;
    match out {
        Ok(o) if o.status.success() => tracing::info!("provisioner accepted the request"),
        Ok(o) => tracing::warn!(status = %o.status, stderr = %String::from_utf8_lossy(&o.stderr), "provisioner failed"),
        Err(e) => tracing::warn!(error = %e, "cannot run the provisioner"),
    }
}

/// How long a woken reconciler waits for more submissions before its pass.
const BATCH_WINDOW: Duration = Duration::from_millis(20);

/// How often migrations are planned.
const MIGRATION_PERIOD: Duration = Duration::from_secs(10);

/// Runs reconcile passes every quarter heartbeat interval (at most 250 ms
/// apart) and whenever something wakes it, until `stop` turns true.
pub async fn run_reconciler(control: Arc<Control>, mut stop: watch::Receiver<bool>) {
    let period = Duration::from_millis((control.cfg.heartbeat_interval_ms / 4).clamp(10, 250));
    let mut tick = tokio::time::interval(period);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut last_plan = tokio::time::Instant::now();
    let mut last_provision = None;
    loop {
        let woken = tokio::select! {
            _ = tick.tick() => false,
            _ = control.wake.notified() => true,
            _ = stop.wait_for(|s| *s) => return,
        };
        if woken {
            // Let submissions that arrive together land before the pass
            // takes the lock, so one pass places them all.
            tokio::time::sleep(BATCH_WINDOW).await;
        }
        let plan = last_plan.elapsed() >= MIGRATION_PERIOD;
        if plan {
            last_plan = tokio::time::Instant::now();
        }
        let pass = control.pass_started.fetch_add(1, Ordering::SeqCst) + 1;
        control.reconcile_once(plan);
        control.passes.send_replace(pass);
        if let Some(p) = &control.cfg.provisioning {
            if last_provision.is_none_or(|t: tokio::time::Instant| t.elapsed() >= Duration::from_millis(p.cooldown.0)) {
                let request = provision_request(control.lock().store.state(), p.threshold);
                if let Some(r) = request {
                    last_provision = Some(tokio::time::Instant::now());
                    control.telemetry.provision_requests.inc();
                    tokio::spawn(run_provisioner(p.command.clone(), r));
                }
            }
        }
    }
}
