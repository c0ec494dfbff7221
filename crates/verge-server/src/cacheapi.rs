//! The fleet-wide cache routes: the server fans requests out to the agents'
//! edge caches. Values travel to and from agents' data ports (mTLS, the
//! server's own certificate); invalidations and warm-ups travel over the
//! gateway. Writes carry one server-assigned version to every node, so a
//! newer write is never replaced by an older one arriving late, and an
//! invalidation only drops what is not newer than itself.
//!
//! - `GET /api/v1/cache` — every connected node's cache stats (`?node=`).
//! - `GET /api/v1/cache/{key}?node=N` — the value from N, or from the
//!   first node that has it.
//! - `PUT /api/v1/cache/{key}?nodes=a,b|region=R&ttl=30s&type=T&consistency=strong|eventual`
//!   — stored on those nodes (default: all connected), write-through on
//!   each; every other node drops an older copy (strong: acknowledged
//!   before the answer, 504 naming the silent ones; nodes not connected
//!   when they return).
//! - `DELETE /api/v1/cache/{key}?scope=local|regional|global&node=N&region=R&consistency=strong|eventual`
//!   — strong answers after every targeted node acknowledged (504 naming
//!   the silent ones otherwise), eventual at once (202). Nodes in scope
//!   that are not connected get it queued in the store and sent when they
//!   connect ([`catch_up`]).
//! - `POST /api/v1/cache/prewarm {keys, priority, nodes, region}`.
//! - `GET /api/v1/nodes/{id}/cache/keys?match=P&cursor=C&count=N` — one step
//!   of a scan of that node's keys (`{"cursor", "keys"}`; cursor "0": done).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::json;
use verge_cache::rules;
use verge_client::serve::{ApiPath, ApiQuery};
use verge_client::{url_path as encode, Api, Method, Tls};
use verge_core::{Millis, NodeId};
use verge_proto::ServerMessage;
use verge_security::pki::Identity;
use verge_store::Command;

use crate::control::{Control, Inner};
use crate::error::{ApiBody, ApiError, ApiJson};
use crate::security::AuditEvent;

type Ctl = State<Arc<Control>>;
type ApiResult = Result<Response, ApiError>;

/// Largest value the server fans out.
const MAX_VALUE: usize = rules::FANOUT_MAX_VALUE;

/// How long a strong invalidation waits for acknowledgements.
const ACK_TIMEOUT: Duration = Duration::from_secs(5);

/// The cache routes, merged into the API router.
pub fn routes() -> Router<Arc<Control>> {
    Router::new()
        .route("/api/v1/cache", get(stats))
        .route("/api/v1/cache/prewarm", post(prewarm))
        .route("/api/v1/nodes/{id}/cache/keys", get(node_keys))
        .route("/api/v1/cache/{*key}", get(read).put(write).delete(invalidate).layer(axum::extract::DefaultBodyLimit::max(MAX_VALUE)))
}

/// A connected node and its data port's address.
type Target = (NodeId, Option<String>);

/// Connected nodes (with their data port) chosen by `nodes=a,b`, `node=`
/// or `region=` (the `region` label); all connected ones by default.
fn targets(c: &Control, nodes: Option<&str>, region: Option<&str>) -> Result<Vec<Target>, ApiError> {
    Ok(select(&c.lock(), nodes, region)?.0)
}

/// [`targets`], and the known nodes that would be chosen but are not
/// connected (none when `nodes` names them: naming one not connected is
/// refused).
fn select(inner: &Inner, nodes: Option<&str>, region: Option<&str>) -> Result<(Vec<Target>, Vec<NodeId>), ApiError> {
    let state = inner.store.state();
    let wanted: Option<Vec<&str>> = nodes.map(|n| n.split(',').map(str::trim).filter(|s| !s.is_empty()).collect());
    let (mut out, mut offline) = (Vec::new(), Vec::new());
    for (id, rec) in &state.nodes {
        if wanted.as_ref().is_some_and(|w| !w.contains(&id.as_str())) {
            continue;
        }
        if region.is_some_and(|r| rec.spec.labels.get("region").map(String::as_str) != Some(r)) {
            continue;
        }
        if inner.agents.contains_key(id) {
            out.push((id.clone(), rec.spec.data_addr.clone()));
        } else {
            offline.push(id.clone());
        }
    }
    if let Some(w) = &wanted {
        for n in w {
            if !out.iter().any(|(id, _)| id.as_str() == *n) {
                return Err(ApiError::new(StatusCode::CONFLICT, "not_connected", format!("node {n} is not connected (or unknown)")));
            }
        }
    }
    Ok((out, offline))
}

/// No connected node matches a request's choice of nodes.
fn no_nodes() -> ApiError {
    ApiError::new(StatusCode::CONFLICT, "no_nodes", "no connected node matches")
}

/// Logs the invalidation of `key` at `version` for `offline` nodes, which
/// get it when they connect; in the caller's lock, so none connects
/// between its choice of nodes and this.
fn queue_missed(inner: &mut Inner, offline: &[NodeId], key: &str, version: u64) -> Result<(), ApiError> {
    if !offline.is_empty() {
        inner.apply(Command::QueueCacheInvalidation { nodes: offline.to_vec(), key: key.to_string(), version })?;
    }
    Ok(())
}

/// A client for `node`'s data port, as the server.
fn data_port(c: &Control, node: &NodeId, addr: Option<&String>) -> Result<Api, ApiError> {
    let addr = addr.ok_or_else(|| ApiError::new(StatusCode::CONFLICT, "no_data_port", format!("node {node} advertises no data port")))?;
    Ok(match &c.security.data_client {
        Some(config) => Api::secure(
            addr,
            Tls { config: config.clone(), server_name: verge_security::tls::node_name(), peer: Some(Identity::Node(node.to_string())) },
        ),
        None => Api::new(&format!("http://{addr}")),
    })
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct Where {
    #[serde(default)]
    node: Option<String>,
    #[serde(default)]
    nodes: Option<String>,
    #[serde(default)]
    region: Option<String>,
}

async fn stats(State(c): Ctl, ApiQuery(w): ApiQuery<Where>) -> ApiResult {
    let mut out = BTreeMap::new();
    for (id, addr) in targets(&c, w.node.as_deref().or(w.nodes.as_deref()), w.region.as_deref())? {
        let v = match data_port(&c, &id, addr.as_ref()) {
            Ok(api) => api.get("/api/v1/cache").await.unwrap_or_else(|e| json!({"error": e.to_string()})),
            Err(e) => json!({"error": format!("{e:?}")}),
        };
        out.insert(id.to_string(), v);
    }
    Ok(Json(json!(out)).into_response())
}

/// Request headers a read passes on to the node: byte ranges and
/// conditional reads work through the server as on the node.
const READ_REQUEST_HEADERS: [&str; 3] = ["range", "if-range", "if-none-match"];

/// Answer headers a read passes back from the node.
const READ_ANSWER_HEADERS: [&str; 8] =
    ["content-type", "content-length", "content-range", "accept-ranges", "etag", "cache-control", "x-verge-type", "x-verge-version"];

async fn read(State(c): Ctl, ApiPath(key): ApiPath<String>, ApiQuery(w): ApiQuery<Where>, headers: HeaderMap) -> ApiResult {
    check_key(&key)?;
    let candidates = targets(&c, w.node.as_deref(), w.region.as_deref())?;
    let path = format!("/api/v1/cache/{}", encode(&key));
    let pass: Vec<(&str, &str)> = READ_REQUEST_HEADERS.iter().filter_map(|&name| Some((name, headers.get(name)?.to_str().ok()?))).collect();
    for (id, addr) in candidates {
        let Ok(api) = data_port(&c, &id, addr.as_ref()) else { continue };
        let answer = match api.forward(Method::GET, &path, &pass).await {
            Ok(a) if a.status() != StatusCode::NOT_FOUND && !a.status().is_server_error() => a,
            Ok(a) => {
                tracing::debug!(node = %id, key, status = %a.status(), "cache read missed");
                continue;
            }
            Err(e) => {
                tracing::debug!(node = %id, key, error = %e, "cache read failed");
                continue;
            }
        };
        // Streamed through: a large value is never held here whole.
        let (parts, body) = answer.into_parts();
        let mut resp = Response::new(axum::body::Body::new(body));
        *resp.status_mut() = parts.status;
        for name in READ_ANSWER_HEADERS {
            if let Some(v) = parts.headers.get(name) {
                resp.headers_mut().insert(name, v.clone());
            }
        }
        if let Ok(v) = HeaderValue::from_str(id.as_str()) {
            resp.headers_mut().insert("x-verge-node", v);
        }
        return Ok(resp);
    }
    Err(ApiError::not_found(format!("no node holds cache entry {key:?}")))
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct PutQuery {
    #[serde(default)]
    nodes: Option<String>,
    #[serde(default)]
    region: Option<String>,
    #[serde(default)]
    ttl: Option<Millis>,
    #[serde(default, rename = "type")]
    kind: Option<String>,
    #[serde(default)]
    consistency: Option<String>,
}

/// Refuses a key no agent would take, before anything goes to them.
fn check_key(key: &str) -> Result<(), ApiError> {
    if rules::valid_key(key) {
        Ok(())
    } else {
        Err(ApiError::new(StatusCode::BAD_REQUEST, "bad_key", rules::KEY_RULE))
    }
}

async fn write(
    State(c): Ctl,
    ApiPath(key): ApiPath<String>,
    ApiQuery(q): ApiQuery<PutQuery>,
    ApiBody(body): ApiBody<MAX_VALUE>,
) -> ApiResult {
    check_key(&key)?;
    if q.kind.as_deref().is_some_and(|k| !rules::valid_type(k)) {
        return Err(ApiError::new(StatusCode::BAD_REQUEST, "bad_type", rules::TYPE_RULE));
    }
    let strong = strong(q.consistency.as_deref())?;
    // One version for every replica: the server's clock in µs.
    let version = c.clock.now_ms() * 1000;
    let (nodes, others, offline) = {
        let mut inner = c.lock();
        let (nodes, _) = select(&inner, q.nodes.as_deref(), q.region.as_deref())?;
        if nodes.is_empty() {
            return Err(no_nodes());
        }
        // Every other node drops an older copy: connected ones now, the
        // others when they return.
        let (others, offline): (Vec<NodeId>, Vec<NodeId>) = inner
            .store
            .state()
            .nodes
            .keys()
            .filter(|id| !nodes.iter().any(|(n, _)| n == *id))
            .cloned()
            .partition(|id| inner.agents.contains_key(id));
        queue_missed(&mut inner, &offline, &key, version)?;
        (nodes, others, offline)
    };
    let acks = Acks::invalidate(&c, &others, &key, version);
    let mut query = format!("version={version}");
    if let Some(t) = q.ttl {
        query.push_str(&format!("&ttl={}", t.0));
    }
    if let Some(k) = &q.kind {
        query.push_str(&format!("&type={}", encode(k)));
    }
    let path = format!("/api/v1/cache/{}?{query}", encode(&key));
    let mut results = BTreeMap::new();
    let calls = nodes.iter().map(|(id, addr)| {
        let api = data_port(&c, id, addr.as_ref());
        let (path, body) = (path.clone(), body.clone());
        async move {
            let r = match api {
                Ok(api) => api.call_bytes(Method::PUT, &path, body, "").await.map(|_| "stored".to_string()).map_err(|e| e.to_string()),
                Err(e) => Err(format!("{e:?}")),
            };
            (id.to_string(), r)
        }
    });
    let mut stored = 0;
    for (id, r) in futures_util::future::join_all(calls).await {
        stored += usize::from(r.is_ok());
        results.insert(id, r.unwrap_or_else(|e| format!("failed: {e}")));
    }
    let others = acks.names.clone();
    let (acked, silent) = if strong { acks.wait(ACK_TIMEOUT).await } else { (BTreeMap::new(), Vec::new()) };
    let status = if stored < nodes.len() {
        StatusCode::BAD_GATEWAY
    } else if !silent.is_empty() {
        StatusCode::GATEWAY_TIMEOUT
    } else {
        StatusCode::CREATED
    };
    let queued: Vec<String> = offline.iter().map(NodeId::to_string).collect();
    let consistency = if strong { "strong" } else { "eventual" };
    let body = json!({
        "key": key, "version": version, "nodes": results, "consistency": consistency,
        "others": others, "invalidated": acked, "silent": silent, "queued": queued,
    });
    Ok((status, Json(body)).into_response())
}

async fn node_keys(State(c): Ctl, ApiPath(id): ApiPath<String>, ApiQuery(q): ApiQuery<verge_proto::KeysStep>) -> ApiResult {
    let (node, addr) = targets(&c, Some(&id), None)?.into_iter().next().ok_or_else(|| ApiError::not_found(format!("no node {id:?}")))?;
    let api = data_port(&c, &node, addr.as_ref())?;
    let query = serde_urlencoded::to_string(&q).map_err(|e| ApiError::bad_request(e.to_string()))?;
    let path = format!("/api/v1/keys?{query}");
    let step = api.get(&path).await.map_err(|e| ApiError::new(StatusCode::BAD_GATEWAY, "node_failed", format!("{id}: {e}")))?;
    Ok(Json(step).into_response())
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct InvalidateQuery {
    #[serde(default)]
    scope: Option<String>,
    #[serde(default)]
    node: Option<String>,
    #[serde(default)]
    region: Option<String>,
    #[serde(default)]
    consistency: Option<String>,
    #[serde(default)]
    version: Option<u64>,
}

/// Who an invalidation reaches: the nodes connected now, and the known
/// ones that are not, which get it when they connect again (`waited_for`:
/// those among them whose lease still runs, so they may be serving).
struct Reach {
    connected: Vec<NodeId>,
    offline: Vec<NodeId>,
    waited_for: Vec<NodeId>,
}

/// The known nodes in an invalidation's scope; for those not connected,
/// the invalidation is queued ([`queue_missed`]).
fn reach_and_queue(c: &Control, q: &InvalidateQuery, key: &str, version: u64) -> Result<Reach, ApiError> {
    let scope = q.scope.as_deref().unwrap_or("global");
    let now = c.clock.now_ms();
    let mut inner = c.lock();
    let state = inner.store.state();
    let ids = |nodes: Vec<Target>| nodes.into_iter().map(|(id, _)| id).collect::<Vec<_>>();
    let (connected, offline) = match scope {
        "local" => {
            let node = q.node.as_deref().ok_or_else(|| ApiError::bad_request("scope=local needs node=ID"))?;
            let id = state.nodes.keys().find(|id| id.as_str() == node).ok_or_else(|| ApiError::not_found(format!("no node {node:?}")))?;
            if inner.agents.contains_key(id) {
                (vec![id.clone()], Vec::new())
            } else {
                (Vec::new(), vec![id.clone()])
            }
        }
        "regional" => {
            let region = q.region.as_deref().ok_or_else(|| ApiError::bad_request("scope=regional needs region=NAME"))?;
            let (connected, offline) = select(&inner, None, Some(region))?;
            if connected.is_empty() && offline.is_empty() {
                return Err(ApiError::not_found(format!("no node has the label region={region}")));
            }
            (ids(connected), offline)
        }
        "global" => {
            let (connected, offline) = select(&inner, None, None)?;
            (ids(connected), offline)
        }
        other => return Err(ApiError::bad_request(format!("scope must be local, regional or global, got {other:?}"))),
    };
    let waited_for = offline.iter().filter(|id| inner.soft.get(*id).is_some_and(|s| s.alive(now))).cloned().collect();
    queue_missed(&mut inner, &offline, key, version)?;
    Ok(Reach { connected, offline, waited_for })
}

/// `consistency=strong|eventual` (strong when absent): whether to wait
/// for nodes' acknowledgements before answering.
fn strong(consistency: Option<&str>) -> Result<bool, ApiError> {
    match consistency.unwrap_or("strong") {
        "strong" => Ok(true),
        "eventual" => Ok(false),
        other => Err(ApiError::bad_request(format!("consistency must be strong or eventual, got {other:?}"))),
    }
}

/// A request sent to some nodes over the gateway (an invalidation, a
/// catch-up), with their acknowledgements to come; forgets the request
/// when dropped.
struct Acks {
    c: Arc<Control>,
    request: u64,
    rx: tokio::sync::mpsc::UnboundedReceiver<(NodeId, bool)>,
    names: Vec<String>,
}

impl Acks {
    /// Sends `message(request)` to each of `nodes` (connected ones).
    fn send(c: &Arc<Control>, nodes: &[NodeId], message: impl Fn(u64) -> ServerMessage) -> Self {
        let request = c.next_id();
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
        c.cache_acks.lock().unwrap_or_else(|p| p.into_inner()).insert(request, tx);
        let inner = c.lock();
        for id in nodes {
            inner.send(id, message(request));
        }
        Acks { c: c.clone(), request, rx, names: nodes.iter().map(NodeId::to_string).collect() }
    }

    /// Sends the invalidation of `key` at `version` to `nodes`.
    fn invalidate(c: &Arc<Control>, nodes: &[NodeId], key: &str, version: u64) -> Self {
        Self::send(c, nodes, |request| ServerMessage::CacheInvalidate { request, key: key.to_string(), version: Some(version) })
    }

    /// Waits up to `timeout` for every node's acknowledgement: each node's
    /// (whether it dropped a copy), and the nodes that stayed silent.
    async fn wait(mut self, timeout: Duration) -> (BTreeMap<String, bool>, Vec<String>) {
        let mut acked = BTreeMap::new();
        let deadline = tokio::time::Instant::now() + timeout;
        while acked.len() < self.names.len() {
            match tokio::time::timeout_at(deadline, self.rx.recv()).await {
                Ok(Some((id, removed))) => {
                    acked.insert(id.to_string(), removed);
                }
                _ => break,
            }
        }
        let silent = self.names.iter().filter(|n| !acked.contains_key(*n)).cloned().collect();
        (acked, silent)
    }
}

impl Drop for Acks {
    fn drop(&mut self) {
        self.c.cache_acks.lock().unwrap_or_else(|p| p.into_inner()).remove(&self.request);
    }
}

async fn invalidate(State(c): Ctl, ApiPath(key): ApiPath<String>, ApiQuery(q): ApiQuery<InvalidateQuery>) -> ApiResult {
    check_key(&key)?;
    let strong = strong(q.consistency.as_deref())?;
    // Versioned even when the client gave none, so that a write made after
    // it and reaching a node first is not dropped by it.
    let version = q.version.unwrap_or_else(|| c.clock.now_ms() * 1000);
    let reach = reach_and_queue(&c, &q, &key, version)?;
    let acks = Acks::invalidate(&c, &reach.connected, &key, version);
    let queued: Vec<String> = reach.offline.iter().map(NodeId::to_string).collect();
    if !strong {
        let body = json!({"key": key, "version": version, "nodes": acks.names, "queued": queued, "consistency": "eventual"});
        return Ok((StatusCode::ACCEPTED, Json(body)).into_response());
    }
    let names = acks.names.clone();
    let (acked, mut silent) = acks.wait(ACK_TIMEOUT).await;
    silent.extend(reach.waited_for.iter().map(NodeId::to_string));
    let now = c.clock.now_ms();
    let outcome = if silent.is_empty() { "invalidated" } else { "incomplete" };
    c.security.audit(
        now,
        AuditEvent {
            actor: "server",
            action: "cache invalidate",
            target: &key,
            outcome,
            reason: &format!("nodes {names:?}, silent {silent:?}, queued {queued:?}"),
        },
    );
    let body = json!({"key": key, "version": version, "acknowledged": acked, "silent": silent, "queued": queued, "consistency": "strong"});
    let status = if silent.is_empty() { StatusCode::OK } else { StatusCode::GATEWAY_TIMEOUT };
    Ok((status, Json(body)).into_response())
}

/// How long a node that just connected has to acknowledge the invalidations
/// it missed; unacknowledged, they wait for its next connection.
const CATCH_UP_TIMEOUT: Duration = Duration::from_secs(60);

/// Sends a node that just connected the cache invalidations it missed
/// while it was not, and forgets them once it acknowledges.
pub fn catch_up(c: &Arc<Control>, node: &NodeId) {
    let Some(backlog) = c.lock().store.state().cache_backlog(node).filter(|b| !b.is_empty()) else { return };
    let acks = Acks::send(c, std::slice::from_ref(node), |request| ServerMessage::CacheCatchUp {
        request,
        keys: backlog.keys.clone(),
        drop_all: backlog.drop_all,
    });
    let (c, node) = (c.clone(), node.clone());
    tokio::spawn(async move {
        let (acked, _) = acks.wait(CATCH_UP_TIMEOUT).await;
        if acked.is_empty() {
            tracing::warn!(node = %node, "no acknowledgement of the missed cache invalidations; they wait for its next connection");
            return;
        }
        let missed = backlog.keys.len();
        if let Err(e) = c.lock().apply(Command::SettleCacheBacklog { id: node.clone(), through: backlog.through }) {
            tracing::warn!(node = %node, error = %e, "cannot record the delivered cache invalidations");
        } else {
            tracing::info!(node = %node, missed, "node caught up on missed cache invalidations");
        }
    });
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PrewarmRequest {
    keys: Vec<String>,
    #[serde(default)]
    priority: u8,
    #[serde(default)]
    nodes: Option<Vec<String>>,
    #[serde(default)]
    region: Option<String>,
}

async fn prewarm(State(c): Ctl, ApiJson(req): ApiJson<PrewarmRequest>) -> ApiResult {
    if req.keys.is_empty() || req.keys.len() > 10_000 {
        return Err(ApiError::bad_request("keys: 1-10,000 keys"));
    }
    req.keys.iter().try_for_each(|k| check_key(k))?;
    let nodes = targets(&c, req.nodes.map(|n| n.join(",")).as_deref(), req.region.as_deref())?;
    if nodes.is_empty() {
        return Err(no_nodes());
    }
    {
        let inner = c.lock();
        for (id, _) in &nodes {
            inner.send(id, ServerMessage::CachePrewarm { keys: req.keys.clone(), priority: req.priority });
        }
    }
    let names: Vec<String> = nodes.iter().map(|(id, _)| id.to_string()).collect();
    Ok((StatusCode::ACCEPTED, Json(json!({"keys": req.keys.len(), "priority": req.priority, "nodes": names}))).into_response())
}
