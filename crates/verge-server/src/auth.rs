//! Authentication and authorisation of API requests: the bearer token
//! names a principal, the route table in `verge_security::rbac` names the
//! permission, and the role must hold it. Refusals answer 401 or 403 with a
//! JSON error; every refusal and every mutating request goes to the audit
//! chain.

use std::sync::Arc;

use axum::extract::{Request, State};
use axum::http::{header, Method, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use verge_security::rbac::permission_for;

use crate::control::Control;
use crate::error::ApiError;
use crate::security::AuditEvent;

/// The middleware: runs before every API handler.
pub async fn authorize(State(c): State<Arc<Control>>, mut req: Request, next: Next) -> Response {
    let method = req.method().clone();
    let path = req.uri().path().to_string();
    let Some(perm) = permission_for(method.as_str(), &path) else { return next.run(req).await };
    let now = c.clock.now_ms();
    let action = format!("{method} {path}");
    let bearer = req.headers().get(header::AUTHORIZATION).and_then(|v| v.to_str().ok()).and_then(|v| v.strip_prefix("Bearer "));
    let principal = match bearer.map(|t| c.security.authenticate(t, now)) {
        None => {
            return refuse(
                &c,
                now,
                "anonymous",
                &action,
                StatusCode::UNAUTHORIZED,
                "unauthenticated",
                "no bearer token: pass --token, set VERGE_TOKEN or send Authorization: Bearer …",
            )
        }
        Some(Err(e)) => return refuse(&c, now, "anonymous", &action, StatusCode::UNAUTHORIZED, e.code(), &e.to_string()),
        Some(Ok(p)) => p,
    };
    if !principal.role.allows(perm) {
        let msg = format!("role {} may not {} here ({action} needs {perm:?})", principal.role, perm_verb(perm));
        return refuse(&c, now, &principal.actor(), &action, StatusCode::FORBIDDEN, "forbidden", &msg);
    }
    let actor = principal.actor();
    req.extensions_mut().insert(principal);
    let resp = next.run(req).await;
    if method != Method::GET && method != Method::HEAD {
        let outcome = resp.status().as_u16().to_string();
        c.security.audit(now, AuditEvent { actor: &actor, action: &action, target: &path, outcome: &outcome, reason: "" });
    }
    resp
}

fn perm_verb(p: verge_security::rbac::Permission) -> &'static str {
    use verge_security::rbac::Permission::*;
    match p {
        Read => "read",
        Write => "change the fleet",
        Manage => "manage tokens or the audit log",
        Join => "join nodes",
        Attest => "attest",
    }
}

fn refuse(c: &Control, now: u64, actor: &str, action: &str, status: StatusCode, code: &'static str, message: &str) -> Response {
    c.telemetry.auth_refused.get_or_create(&vec![("status".into(), status.as_u16().to_string())]).inc();
    c.security
        .audit(now, AuditEvent { actor, action, target: action.split_once(' ').map_or("", |x| x.1), outcome: "denied", reason: message });
    let mut resp = ApiError::new(status, code, message).into_response();
    if status == StatusCode::UNAUTHORIZED {
        resp.headers_mut().insert(header::WWW_AUTHENTICATE, header::HeaderValue::from_static("Bearer realm=\"verge\""));
    }
    resp
}
