//! The security routes of the API: the CA certificate, joins and client
//! certificates, tokens, attestation over HTTP, the audit log and
//! compliance reports.

use std::sync::Arc;

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post};
use axum::{Extension, Json, Router};
use serde::Deserialize;
use serde_json::{json, Value};
use verge_client::serve::{ApiPath, ApiQuery};
use verge_core::{Millis, NodeId};
use verge_security::attest::Evidence;
use verge_security::pki::Identity;
use verge_security::rbac::Role;
use verge_security::token::TokenRecord;

use crate::control::Control;
use crate::error::{ApiError, ApiJson};
use crate::security::{AuditEvent, Principal};

type Ctl = State<Arc<Control>>;
type ApiResult = Result<Response, ApiError>;

/// The routes a joining agent uses, served on the API and on the gateway
/// (agents are configured with the gateway's address only).
pub fn join_routes() -> Router<Arc<Control>> {
    Router::new().route("/api/v1/ca", get(ca)).route("/api/v1/join", post(join))
}

/// The security routes, merged into the API router.
pub fn routes() -> Router<Arc<Control>> {
    join_routes()
        .route("/api/v1/certs", post(client_cert))
        .route("/api/v1/tokens", get(list_tokens).post(create_token))
        .route("/api/v1/tokens/{id}", delete(revoke_token))
        .route("/api/v1/nodes/{id}/attestation", post(attest))
        .route("/api/v1/audit", get(audit_log))
        .route("/api/v1/audit/verify", get(audit_verify))
        .route("/api/v1/compliance/report", get(compliance_report))
}

async fn ca(State(c): Ctl) -> Json<Value> {
    Json(json!({"certificate": c.security.ca_pem(), "fingerprint": c.security.fingerprint}))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct JoinRequest {
    node: String,
    csr: String,
}

async fn join(State(c): Ctl, Extension(p): Extension<Principal>, ApiJson(req): ApiJson<JoinRequest>) -> ApiResult {
    let node = NodeId::new(req.node)?;
    let now = c.clock.now_ms();
    // A join token must not take over the identity of a node that is up: a
    // node that lost its key (or whose certificate expired while it was
    // away) rejoins once its old session is gone or its lease has run out.
    // A session left behind by a node that died without closing it (power
    // lost, half-open TCP) holds no lease, so it does not lock the node out.
    let live = {
        let inner = c.lock();
        inner.agents.contains_key(&node) && inner.soft.get(&node).is_some_and(|s| s.alive(now))
    };
    let bound = p.node.as_deref().is_some_and(|n| n != node.as_str());
    if live || bound {
        let (code, why) = if live {
            (
                "node_connected",
                format!(
                    "node {node} is connected with its certificate; a join cannot take over a live node (retry once its lease runs out)"
                ),
            )
        } else {
            ("join_refused", format!("this join token is for node {}, not {node}", p.node.as_deref().unwrap_or_default()))
        };
        c.security.audit(now, AuditEvent { actor: &p.actor(), action: "join", target: node.as_str(), outcome: "denied", reason: &why });
        return Err(ApiError::new(StatusCode::CONFLICT, code, why));
    }
    let issued = c.security.issue(&req.csr, &Identity::Node(node.to_string()), now).map_err(|e| ApiError::bad_request(e.to_string()))?;
    let reason = format!("join token {}; certificate serial {} valid until {}", p.token_id, issued.serial, issued.not_after_ms);
    c.security.audit(now, AuditEvent { actor: &p.actor(), action: "join", target: node.as_str(), outcome: "issued", reason: &reason });
    tracing::info!(node = %node, serial = %issued.serial, "node joined");
    Ok((
        StatusCode::CREATED,
        Json(
            json!({"certificate": issued.cert_pem, "ca": c.security.ca_pem(), "serial": issued.serial, "notAfterMs": issued.not_after_ms}),
        ),
    )
        .into_response())
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CertRequest {
    csr: String,
}

/// A short-lived client certificate for a person or tool (e.g. `verge sync
/// push` talking to an agent's data port).
async fn client_cert(State(c): Ctl, Extension(p): Extension<Principal>, ApiJson(req): ApiJson<CertRequest>) -> ApiResult {
    let now = c.clock.now_ms();
    let issued = c.security.issue(&req.csr, &Identity::User(p.name.clone()), now).map_err(|e| ApiError::bad_request(e.to_string()))?;
    Ok((StatusCode::CREATED, Json(json!({"certificate": issued.cert_pem, "ca": c.security.ca_pem(), "notAfterMs": issued.not_after_ms})))
        .into_response())
}

fn token_json(t: &TokenRecord, now: u64) -> Value {
    let state = match t.check(now) {
        Ok(()) => "active".to_string(),
        Err(e) => e.to_string().replace("token ", ""),
    };
    json!({"id": t.id, "name": t.name, "role": t.role, "node": t.node, "createdMs": t.created_ms, "expiresMs": t.expires_ms, "revokedMs": t.revoked_ms, "state": state})
}

async fn list_tokens(State(c): Ctl) -> Json<Value> {
    let now = c.clock.now_ms();
    Json(Value::Array(c.security.tokens().iter().map(|t| token_json(t, now)).collect()))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct NewToken {
    role: String,
    #[serde(default)]
    ttl: Option<String>,
    #[serde(default)]
    name: Option<String>,
    /// For node tokens: the only node id it may join as.
    #[serde(default)]
    node: Option<String>,
}

async fn create_token(State(c): Ctl, ApiJson(req): ApiJson<NewToken>) -> ApiResult {
    let role = Role::parse(&req.role)
        .ok_or_else(|| ApiError::bad_request(format!("role must be admin, operator, viewer or node, got {:?}", req.role)))?;
    let ttl = match req.ttl.as_deref() {
        None => None,
        Some(t) => Some(t.parse::<Millis>().map_err(|e| ApiError::bad_request(format!("ttl: {e}")))?.0).filter(|&ms| ms > 0),
    };
    let name = req.name.unwrap_or_else(|| format!("{role} token"));
    if name.is_empty() || name.len() > 128 || name.chars().any(char::is_control) {
        return Err(ApiError::bad_request("name must be 1-128 printable characters"));
    }
    let node = match req.node {
        Some(n) if role == Role::Node => Some(NodeId::new(n)?.to_string()),
        Some(_) => return Err(ApiError::bad_request("node applies to node tokens only")),
        None => None,
    };
    let now = c.clock.now_ms();
    let (token, rec) = c
        .security
        .create_token(role, &name, ttl, node, now)
        .map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "token_store", e.to_string()))?;
    let mut v = token_json(&rec, now);
    v["token"] = json!(token);
    if role == Role::Node {
        v["caHash"] = json!(c.security.fingerprint);
    }
    Ok((StatusCode::CREATED, Json(v)).into_response())
}

async fn revoke_token(State(c): Ctl, ApiPath(id): ApiPath<String>) -> ApiResult {
    match c.security.revoke_token(&id, c.clock.now_ms()) {
        Ok(true) => Ok(Json(json!({"revoked": id})).into_response()),
        Ok(false) => Err(ApiError::not_found(format!("no token {id:?}"))),
        Err(e) => Err(ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "token_store", e.to_string())),
    }
}

/// Evidence sent over HTTP instead of the gateway; checked exactly as there.
async fn attest(State(c): Ctl, ApiPath(id): ApiPath<String>, body: axum::body::Bytes) -> ApiResult {
    let node = NodeId::new(id)?;
    let evidence = Evidence::parse(&body).map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, e.code(), e.to_string()))?;
    match c.attest(&node, &evidence) {
        Ok(()) => Ok(Json(json!({"node": node, "attested": true})).into_response()),
        Err(e) => Err(ApiError::new(StatusCode::FORBIDDEN, e.code(), e.to_string())),
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct AuditQuery {
    #[serde(default)]
    since: u64,
    #[serde(default = "default_limit")]
    limit: usize,
}

fn default_limit() -> usize {
    1000
}

async fn audit_log(State(c): Ctl, ApiQuery(q): ApiQuery<AuditQuery>) -> ApiResult {
    let entries = verge_security::audit::read(&c.cfg.data_dir.join("audit.log"), q.since, q.limit.min(10_000))
        .map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "audit", e.to_string()))?;
    Ok(Json(json!(entries)).into_response())
}

async fn audit_verify(State(c): Ctl) -> ApiResult {
    let (seq, hash) = c.security.audit_head();
    let report = verge_security::audit::verify(&c.cfg.data_dir.join("audit.log"), Some((seq, &hash)))
        .map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "audit", e.to_string()))?;
    let first_bad = report.first_bad.map(|t| json!({"seq": t.seq, "line": t.line, "why": t.why}));
    Ok(Json(json!({"entries": report.entries, "intact": first_bad.is_none(), "firstTampered": first_bad})).into_response())
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ReportQuery {
    #[serde(default)]
    pack: Option<String>,
}

async fn compliance_report(State(c): Ctl, ApiQuery(q): ApiQuery<ReportQuery>) -> ApiResult {
    let all = &c.security.packs;
    let packs: Vec<_> = match q.pack.as_deref() {
        None => all.clone(),
        Some(name) => {
            let names: Vec<&str> = all.iter().map(|p| p.name.as_str()).collect();
            vec![all
                .iter()
                .find(|p| p.name == name)
                .cloned()
                .ok_or_else(|| ApiError::not_found(format!("no compliance pack {name:?}; there are {names:?}")))?]
        }
    };
    Ok(Json(c.compliance_report(&packs)).into_response())
}
