//! The HTTP API under `/api/v1/`, plus `/healthz`, `/metrics` and the
//! OpenAPI document. Handlers validate input, turn it into store commands
//! and render state as JSON; they make no placement decisions of their own.

use std::collections::BTreeMap;
use std::sync::Arc;

use axum::extract::{DefaultBodyLimit, FromRequestParts, State};
use axum::http::request::Parts;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::{json, Value};
use verge_client::serve::{ApiPath, ApiQuery};
use verge_core::{HealthReport, Lifecycle, NodeId, NodeSpec, ValidationError, WorkloadId, WorkloadSpec, WorkloadState};
use verge_proto::LogStream;
use verge_sched::{place, Capacity};
use verge_store::{Command, Durability, NodeRecord, WorkloadRecord};

use crate::control::{Control, Inner};
use crate::error::{ApiError, ApiJson, BODY_LIMIT};
use crate::reconcile::{cluster_view, node_health, Policy};
use crate::security::AuditEvent;

/// Most log lines one request returns from the end of a log.
const MAX_TAIL: u32 = 10_000;

type Ctl = State<Arc<Control>>;
type ApiResult = Result<Response, ApiError>;

/// The API's routes.
pub fn router(c: Arc<Control>) -> Router {
    Router::new()
        .route("/healthz", get(healthz))
        .route("/metrics", get(metrics))
        .route("/api/v1/openapi.json", get(openapi))
        .route("/api/v1/nodes", get(list_nodes).post(register_node))
        .route("/api/v1/nodes/{id}", get(get_node).delete(remove_node))
        .route("/api/v1/nodes/{id}/health", get(get_health).put(put_health))
        .route("/api/v1/nodes/{id}/drain", post(drain_node))
        .route("/api/v1/workloads", get(list_workloads).post(submit_workload))
        .route("/api/v1/workloads/{id}", get(get_workload).delete(delete_workload))
        .route("/api/v1/workloads/{id}/migrate", post(migrate))
        .route("/api/v1/workloads/{id}/logs", get(logs))
        .route("/api/v1/sync", get(list_sync).post(start_sync))
        .route("/api/v1/sync/{id}", get(get_sync))
        .merge(crate::secapi::routes())
        .merge(crate::cacheapi::routes())
        .fallback(|| async { ApiError::not_found("no such route; see /api/v1/openapi.json") })
        .method_not_allowed_fallback(|| async {
            ApiError::new(
                StatusCode::METHOD_NOT_ALLOWED,
                "method_not_allowed",
                "method not allowed on this route; see /api/v1/openapi.json",
            )
        })
        .layer(axum::middleware::from_fn_with_state(c.clone(), crate::auth::authorize))
        .layer(DefaultBodyLimit::max(BODY_LIMIT))
        .with_state(c)
}

/// A validated id from the path.
struct IdPath<T>(T);

impl<S: Send + Sync, T: TryFrom<String, Error = ValidationError>> FromRequestParts<S> for IdPath<T> {
    type Rejection = Response;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Response> {
        let ApiPath(raw) = ApiPath::<String>::from_request_parts(parts, state).await?;
        T::try_from(raw).map(IdPath).map_err(|e| ApiError::bad_request(e.message).into_response())
    }
}

fn ok(status: StatusCode, v: Value) -> ApiResult {
    Ok((status, Json(v)).into_response())
}

async fn healthz() -> Json<Value> {
    Json(json!({"status": "ok"}))
}

async fn openapi() -> Response {
    ([(header::CONTENT_TYPE, "application/json")], include_str!("openapi.json")).into_response()
}

async fn metrics(State(c): Ctl) -> Response {
    {
        let inner = c.lock();
        let state = inner.store.state();
        for l in [Lifecycle::Initialized, Lifecycle::Warming, Lifecycle::Active, Lifecycle::Draining, Lifecycle::Terminated] {
            let n = state.nodes.values().filter(|r| r.lifecycle == l).count();
            c.telemetry.nodes.get_or_create(&vec![("lifecycle".into(), l.to_string())]).set(n as i64);
        }
        let placed = state.workloads.values().filter(|w| w.node.is_some()).count();
        let pending = state.workloads.len() - placed;
        c.telemetry.workloads.get_or_create(&vec![("state".into(), "placed".into())]).set(placed as i64);
        c.telemetry.workloads.get_or_create(&vec![("state".into(), "pending".into())]).set(pending as i64);
    }
    c.telemetry.sample_process();
    ([(header::CONTENT_TYPE, "application/openmetrics-text; version=1.0.0; charset=utf-8")], c.telemetry.render()).into_response()
}

/// A node as the API shows it: its spec plus lifecycle, health, metrics and load.
fn node_json(policy: &Policy, inner: &Inner, rec: &NodeRecord, now: u64) -> Value {
    let id = &rec.spec.id;
    let soft = inner.soft.get(id);
    let state = inner.store.state();
    let mut used = Capacity::default();
    let mut workloads = Vec::new();
    for w in state.workloads_on(id) {
        let need = Capacity::of(&w.spec);
        used.cpu += need.cpu;
        used.memory += need.memory;
        used.storage += need.storage;
        workloads.push(w.spec.id.to_string());
    }
    let mut v = serde_json::to_value(&rec.spec).unwrap_or_default();
    if let Value::Object(o) = &mut v {
        o.insert("lifecycle".into(), json!(rec.lifecycle));
        o.insert("lifecycleSinceMs".into(), json!(rec.lifecycle_since_ms));
        o.insert("registeredMs".into(), json!(rec.registered_ms));
        o.insert("health".into(), json!(node_health(policy, rec, soft, now)));
        o.insert("connected".into(), json!(soft.is_some_and(|s| s.connected)));
        o.insert("lastHeartbeatMs".into(), json!(soft.and_then(|s| s.last_heartbeat_ms)));
        o.insert("metrics".into(), json!(soft.and_then(|s| s.metrics.as_ref())));
        o.insert("coordinate".into(), json!(soft.and_then(|s| s.vivaldi.as_ref()).map(|v| v.coordinate())));
        o.insert("allocated".into(), json!({"cpu": used.cpu, "memory": used.memory, "storage": used.storage}));
        o.insert("workloads".into(), json!(workloads));
        let trust = crate::posture::trust(rec, soft, &policy.trust, now);
        let attestation = match soft {
            Some(s) if s.attest_failure.is_some() => json!({"state": "failed", "reason": s.attest_failure}),
            Some(s) if s.attested_ms.is_some() => json!({"state": "passed", "atMs": s.attested_ms}),
            _ => json!({"state": "none"}),
        };
        o.insert("trust".into(), json!(trust));
        o.insert("attestation".into(), attestation);
        o.insert("quarantined".into(), json!(crate::posture::quarantine(rec, soft, &policy.trust, now)));
        o.insert(
            "certificate".into(),
            json!(soft.and_then(|s| s.cert.as_ref()).map(|c| json!({"serial": c.serial, "notAfterMs": c.not_after_ms}))),
        );
    }
    v
}

/// A workload as the API shows it: its spec plus placement and reported status.
fn workload_json(inner: &Inner, rec: &WorkloadRecord) -> Value {
    let status = rec.node.as_ref().and_then(|n| inner.soft.get(n)).and_then(|s| s.statuses.get(&rec.spec.id));
    let state = match (&rec.node, status) {
        (None, _) => WorkloadState::Pending,
        (Some(_), None) => WorkloadState::Starting,
        (Some(_), Some(s)) => s.state,
    };
    let mut v = serde_json::to_value(&rec.spec).unwrap_or_default();
    if let Value::Object(o) = &mut v {
        o.insert("node".into(), json!(rec.node));
        o.insert("state".into(), json!(state));
        o.insert("status".into(), json!(status));
        o.insert("reason".into(), json!(rec.reason));
        o.insert("submittedMs".into(), json!(rec.submitted_ms));
        o.insert("placedMs".into(), json!(rec.placed_ms));
        o.insert("moves".into(), json!(rec.moves));
    }
    v
}

fn node_or_404<'a>(inner: &'a Inner, id: &NodeId) -> Result<&'a NodeRecord, ApiError> {
    inner.store.state().nodes.get(id).ok_or_else(|| ApiError::not_found(format!("node {id} not found")))
}

fn workload_or_404<'a>(inner: &'a Inner, id: &WorkloadId) -> Result<&'a WorkloadRecord, ApiError> {
    inner.store.state().workloads.get(id).ok_or_else(|| ApiError::not_found(format!("workload {id} not found")))
}

async fn list_nodes(State(c): Ctl) -> Json<Value> {
    let now = c.clock.now_ms();
    let inner = c.lock();
    let policy = c.policy(&inner);
    Json(Value::Array(inner.store.state().nodes.values().map(|r| node_json(&policy, &inner, r, now)).collect()))
}

async fn get_node(State(c): Ctl, IdPath(id): IdPath<NodeId>) -> ApiResult {
    let now = c.clock.now_ms();
    let inner = c.lock();
    let mut v = node_json(&c.policy(&inner), &inner, node_or_404(&inner, &id)?, now);
    // Cache invalidations it missed while not connected, sent when it
    // connects (a walk of the cache log: here, not in the fleet's listing).
    let backlog = inner.store.state().cache_backlog(&id).unwrap_or_default();
    if let Value::Object(o) = &mut v {
        o.insert("cacheBacklog".into(), json!({"keys": backlog.keys.len(), "dropAll": backlog.drop_all}));
    }
    ok(StatusCode::OK, v)
}

async fn register_node(State(c): Ctl, ApiJson(spec): ApiJson<NodeSpec>) -> ApiResult {
    spec.validate()?;
    let now = c.clock.now_ms();
    let id = spec.id.clone();
    let mut inner = c.lock();
    let existed = inner.store.state().nodes.contains_key(&id);
    let mut cmds = vec![Command::RegisterNode { spec, now_ms: now }];
    if !existed {
        // Its agent may come back with a cache from before a removal.
        cmds.push(Command::DistrustCache { id: id.clone() });
    }
    if let Some(e) = inner.apply_batch(cmds, Durability::Durable)?.into_iter().find_map(Result::err) {
        return Err(verge_store::StoreError::State(e).into());
    }
    let status = if existed { StatusCode::OK } else { StatusCode::CREATED };
    ok(status, node_json(&c.policy(&inner), &inner, node_or_404(&inner, &id)?, now))
}

async fn remove_node(State(c): Ctl, IdPath(id): IdPath<NodeId>) -> ApiResult {
    let now = {
        let mut inner = c.lock();
        node_or_404(&inner, &id)?;
        // Read in the lock: a renewal that held it before issued its
        // certificate earlier, so the revocation covers it too.
        let now = c.clock.now_ms();
        // Revoked in this lock and before its session ends: no renewal
        // (which takes the lock) issues it a certificate meanwhile, and
        // its agent's reconnect is refused, never registered again.
        let revoke = c.security.revoke_node(id.as_str(), now);
        revoke.map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "revocation", e.to_string()))?;
        inner.apply(Command::RemoveNode { id: id.clone(), reason: format!("node {id} removed by operator") })?;
        inner.soft.remove(&id);
        // Dropping the connection's sender ends its session.
        inner.agents.remove(&id);
        now
    };
    {
        // Every agent's data port learns of the revocation now.
        let nodes = c.security.revocations();
        let inner = c.lock();
        for a in inner.agents.values() {
            let _ = a.tx.send(verge_proto::ServerMessage::Revocations { nodes: nodes.clone() });
        }
    }
    c.security.audit(
        now,
        AuditEvent { actor: "server", action: "revoke certificates", target: id.as_str(), outcome: "revoked", reason: "node removed" },
    );
    c.wake.notify_one();
    ok(StatusCode::OK, json!({"removed": id}))
}

async fn get_health(State(c): Ctl, IdPath(id): IdPath<NodeId>) -> ApiResult {
    let now = c.clock.now_ms();
    let inner = c.lock();
    let rec = node_or_404(&inner, &id)?;
    ok(StatusCode::OK, json!(node_health(&c.policy(&inner), rec, inner.soft.get(&id), now)))
}

async fn put_health(State(c): Ctl, IdPath(id): IdPath<NodeId>, ApiJson(report): ApiJson<HealthReport>) -> ApiResult {
    report.validate()?;
    let now = c.clock.now_ms();
    let mut inner = c.lock();
    inner.apply(Command::ReportHealth { id: id.clone(), report, now_ms: now })?;
    let rec = node_or_404(&inner, &id)?;
    let health = node_health(&c.policy(&inner), rec, inner.soft.get(&id), now);
    drop(inner);
    c.wake.notify_one();
    ok(StatusCode::OK, json!(health))
}

async fn drain_node(State(c): Ctl, IdPath(id): IdPath<NodeId>) -> ApiResult {
    let now = c.clock.now_ms();
    {
        let mut inner = c.lock();
        node_or_404(&inner, &id)?;
        inner.apply(Command::SetLifecycle { id: id.clone(), lifecycle: Lifecycle::Draining, now_ms: now })?;
    }
    wait_for_placement_pass(&c).await;
    let inner = c.lock();
    ok(StatusCode::OK, node_json(&c.policy(&inner), &inner, node_or_404(&inner, &id)?, now))
}

async fn list_workloads(State(c): Ctl) -> Json<Value> {
    let inner = c.lock();
    Json(Value::Array(inner.store.state().workloads.values().map(|w| workload_json(&inner, w)).collect()))
}

async fn get_workload(State(c): Ctl, IdPath(id): IdPath<WorkloadId>) -> ApiResult {
    let inner = c.lock();
    ok(StatusCode::OK, workload_json(&inner, workload_or_404(&inner, &id)?))
}

/// Refuses user cities that neither a node nor the known-cities list names.
fn check_user_cities(c: &Control, inner: &Inner, spec: &WorkloadSpec) -> Result<(), ApiError> {
    for (i, u) in spec.constraints.users.iter().enumerate() {
        let Some(city) = u.city.as_deref().filter(|_| u.point().is_none()) else { continue };
        let key = city.trim().to_lowercase();
        let known =
            c.cfg.cities.contains_key(&key) || inner.store.state().nodes.values().any(|n| n.spec.location.city.to_lowercase() == key);
        if !known {
            return Err(ValidationError::new(
                format!("constraints.users[{i}].city"),
                format!(
                    "unknown city {city:?}: no node is there and the server's --cities list does not name it; give latitude and longitude"
                ),
            )
            .into());
        }
    }
    Ok(())
}

/// Wakes the reconciler and waits (briefly) until a pass that started after
/// this call has finished, so the answer shows the placement. Concurrent
/// submissions share passes: one view and one disk sync place them all.
async fn wait_for_placement_pass(c: &Control) {
    let target = c.pass_started.load(std::sync::atomic::Ordering::SeqCst) + 1;
    let mut passes = c.passes.subscribe();
    c.wake.notify_one();
    let _ = tokio::time::timeout(std::time::Duration::from_secs(2), passes.wait_for(|n| *n >= target)).await;
}

async fn submit_workload(State(c): Ctl, ApiJson(spec): ApiJson<WorkloadSpec>) -> ApiResult {
    spec.validate()?;
    let id = spec.id.clone();
    {
        let mut inner = c.lock();
        check_user_cities(&c, &inner, &spec)?;
        inner.apply(Command::SubmitWorkload { spec, now_ms: c.clock.now_ms() })?;
    }
    wait_for_placement_pass(&c).await;
    let inner = c.lock();
    ok(StatusCode::CREATED, workload_json(&inner, workload_or_404(&inner, &id)?))
}

async fn delete_workload(State(c): Ctl, IdPath(id): IdPath<WorkloadId>) -> ApiResult {
    c.lock().apply(Command::DeleteWorkload { id: id.clone() })?;
    ok(StatusCode::OK, json!({"deleted": id}))
}

/// Body of `POST /workloads/{id}/migrate`.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct MigrateRequest {
    /// Where to move; the best other node when omitted.
    #[serde(default)]
    target_node: Option<NodeId>,
}

async fn migrate(State(c): Ctl, IdPath(id): IdPath<WorkloadId>, ApiJson(req): ApiJson<MigrateRequest>) -> ApiResult {
    let now = c.clock.now_ms();
    let mut inner = c.lock();
    let rec = workload_or_404(&inner, &id)?.clone();
    if let Some(t) = &req.target_node {
        node_or_404(&inner, t)?;
        if rec.node.as_ref() == Some(t) {
            return Err(ApiError::new(StatusCode::CONFLICT, "conflict", format!("workload {id} already runs on {t}")));
        }
    }
    let mut view = cluster_view(&c.policy(&inner), inner.store.state(), &inner.soft, &BTreeMap::new(), now);
    if let Some(from) = &rec.node {
        view.release(from, &rec.spec);
    }
    let candidates = view.filtered(|n| req.target_node.as_ref().map_or(Some(&n.id) != rec.node.as_ref(), |t| &n.id == t));
    let p = place(&candidates, &rec.spec)
        .map_err(|e| ApiError::new(StatusCode::CONFLICT, "unschedulable", format!("cannot move workload {id} there: {e}")))?;
    let reason = format!("migrated by operator{}: {}", rec.node.as_ref().map(|n| format!(" from {n}")).unwrap_or_default(), p.reason);
    inner.apply(Command::Place { id: id.clone(), node: p.node, reason, now_ms: now })?;
    c.telemetry.placements.inc();
    ok(StatusCode::OK, workload_json(&inner, workload_or_404(&inner, &id)?))
}

/// Query of `GET /workloads/{id}/logs`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct LogsQuery {
    #[serde(default)]
    stream: LogStream,
    #[serde(default)]
    offset: Option<u64>,
    #[serde(default = "default_tail")]
    tail: u32,
}

fn default_tail() -> u32 {
    100
}

async fn logs(State(c): Ctl, IdPath(id): IdPath<WorkloadId>, ApiQuery(q): ApiQuery<LogsQuery>) -> ApiResult {
    let node = {
        let inner = c.lock();
        workload_or_404(&inner, &id)?
            .node
            .clone()
            .ok_or_else(|| ApiError::new(StatusCode::CONFLICT, "not_placed", format!("workload {id} is not placed on any node yet")))?
    };
    let chunk = c
        .fetch_logs(&node, id, q.stream, q.offset, q.tail.min(MAX_TAIL))
        .await
        .map_err(|e| ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "unavailable", e))?;
    ok(StatusCode::OK, json!({"node": node, "data": chunk.data, "nextOffset": chunk.next_offset}))
}

async fn start_sync(State(c): Ctl, ApiJson(req): ApiJson<crate::syncjobs::SyncRequest>) -> ApiResult {
    let job = c.start_sync(req)?;
    ok(StatusCode::ACCEPTED, serde_json::to_value(job).unwrap_or_default())
}

async fn list_sync(State(c): Ctl) -> ApiResult {
    let jobs: Vec<Value> =
        c.sync_jobs.lock().unwrap_or_else(|p| p.into_inner()).values().map(|j| serde_json::to_value(j).unwrap_or_default()).collect();
    ok(StatusCode::OK, json!(jobs))
}

async fn get_sync(State(c): Ctl, ApiPath(id): ApiPath<String>) -> ApiResult {
    let n: u64 = id.parse().map_err(|_| ApiError::bad_request(format!("sync job id {id:?} is not a number")))?;
    let job = c.sync_jobs.lock().unwrap_or_else(|p| p.into_inner()).get(&n).cloned();
    let job = job.ok_or_else(|| ApiError::not_found(format!("sync job {n} not found")))?;
    ok(StatusCode::OK, serde_json::to_value(job).unwrap_or_default())
}

#[cfg(test)]
mod tests {
    /// Every route the router serves is in the OpenAPI document, and no other.
    #[test]
    fn openapi_lists_every_route() {
        let doc: serde_json::Value = serde_json::from_str(include_str!("openapi.json")).unwrap();
        let documented: std::collections::BTreeSet<String> = doc["paths"].as_object().unwrap().keys().cloned().collect();
        let routed: std::collections::BTreeSet<String> = [include_str!("api.rs"), include_str!("secapi.rs"), include_str!("cacheapi.rs")]
            .iter()
            .flat_map(|f| f.split(".route(\"").skip(1))
            .filter_map(|l| l.split('"').next())
            // OpenAPI writes a catch-all `{*key}` as `{key}`.
            .map(|r| r.replace("{*", "{"))
            .collect();
        assert_eq!(documented, routed);
    }
}
