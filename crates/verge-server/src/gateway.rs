//! The agent gateway: one WebSocket per agent speaking `verge-proto`.
//! A `Hello` registers the node and returns its assignments; heartbeats
//! renew its lease and refresh its soft state.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::ws::{Message, WebSocket, WebSocketUpgrade};
use axum::extract::{ConnectInfo, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Extension;
use axum::Router;
use futures_util::{SinkExt, StreamExt};
use tokio::sync::mpsc;
use verge_core::{NodeId, NodeSpec, WorkloadStatus};
use verge_proto::{decode, encode, AgentMessage, Posture, ServerMessage, GATEWAY_PATH, MAX_FRAME_BYTES};
use verge_security::attest::Evidence;
use verge_security::pki::{CertInfo, Identity};
use verge_store::{Command, Durability};

use crate::control::{AgentConn, Control, LogChunk};
use crate::error::ApiError;
use crate::security::AuditEvent;
use verge_client::serve::PeerCert;

/// Read and write buffer of each agent connection, bytes.
const WS_BUFFER: usize = 8 << 10;

/// How long a new connection may take to say `Hello`.
const HELLO_TIMEOUT: Duration = Duration::from_secs(10);

/// The gateway's routes.
pub fn router(control: Arc<Control>) -> Router {
    Router::new()
        .route(GATEWAY_PATH, get(upgrade))
        .merge(crate::secapi::join_routes().layer(axum::middleware::from_fn_with_state(control.clone(), crate::auth::authorize)))
        .layer(axum::extract::DefaultBodyLimit::max(64 << 10))
        .with_state(control)
}

async fn upgrade(
    State(c): State<Arc<Control>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    Extension(PeerCert(cert)): Extension<PeerCert>,
    ws: WebSocketUpgrade,
) -> Response {
    // With TLS on, rustls has verified the certificate against the CA; what
    // is left is who it names and whether that node was revoked.
    let identity = match (&cert, c.cfg.security.tls) {
        (_, false) => None,
        (None, true) => {
            return ApiError::new(StatusCode::UNAUTHORIZED, "no_certificate", "the gateway needs a node certificate").into_response()
        }
        (Some(cert), true) => match c.security.check_node_cert(cert) {
            Ok(id) => Some(id),
            Err(why) => {
                let now = c.clock.now_ms();
                c.security.audit(
                    now,
                    AuditEvent { actor: &format!("peer:{peer}"), action: "gateway connect", target: "", outcome: "denied", reason: &why },
                );
                return ApiError::new(StatusCode::FORBIDDEN, "certificate_refused", why).into_response();
            }
        },
    };
    // Small buffers: a server holds one connection per node, 10,000 or more.
    ws.max_message_size(MAX_FRAME_BYTES)
        .read_buffer_size(WS_BUFFER)
        .write_buffer_size(WS_BUFFER)
        .on_upgrade(move |sock| session(c, sock, peer, identity.zip(cert)))
}

async fn refuse(sock: &mut WebSocket, reason: String) {
    tracing::warn!(%reason, "agent refused");
    let _ = sock.send(Message::Text(encode(&ServerMessage::Refused { reason }).into())).await;
    let _ = sock.close().await;
}

/// What an agent's `Hello` declares.
struct Greeting {
    node: NodeSpec,
    /// The workloads it runs.
    reported: Vec<WorkloadStatus>,
    posture: Posture,
    /// Keys its edge cache holds.
    cached_keys: u64,
}

/// Waits for the `Hello` and validates the node it declares.
async fn hello(sock: &mut WebSocket) -> Result<Greeting, String> {
    let frame = match tokio::time::timeout(HELLO_TIMEOUT, sock.recv()).await {
        Err(_) => return Err("no hello within 10 s".into()),
        Ok(Some(Ok(Message::Text(t)))) => t,
        Ok(_) => return Err("expected a hello text frame".into()),
    };
    match decode::<AgentMessage>(&frame) {
        Ok(AgentMessage::Hello { node, workloads, agent_version, posture, cached_keys }) => {
            node.validate().map_err(|e| format!("invalid node spec: {e}"))?;
            tracing::info!(node = %node.id, %agent_version, "agent hello");
            Ok(Greeting { node, reported: workloads, posture, cached_keys })
        }
        Ok(_) => Err("the first message must be a hello".into()),
        Err(e) => Err(e.to_string()),
    }
}

async fn session(c: Arc<Control>, mut sock: WebSocket, peer: SocketAddr, identity: Option<(String, Arc<CertInfo>)>) {
    let greeting = match hello(&mut sock).await {
        Ok(h) => h,
        Err(reason) => return refuse(&mut sock, format!("{peer}: {reason}")).await,
    };
    let id = greeting.node.id.clone();
    if let Some((cert_node, _)) = identity.as_ref().filter(|(n, _)| n != id.as_str()) {
        let why = format!("the certificate is for node {cert_node} but the hello says {id}");
        c.security.audit(
            c.clock.now_ms(),
            AuditEvent {
                actor: &format!("node:{cert_node}"),
                action: "gateway hello",
                target: id.as_str(),
                outcome: "denied",
                reason: &why,
            },
        );
        if let Some(s) = c.lock().soft.get_mut(&id) {
            s.failed_auths += 1;
        }
        return refuse(&mut sock, format!("{peer}: {why}")).await;
    }
    let conn_id = c.next_id();
    let (tx, mut rx) = mpsc::unbounded_channel();
    let cert = identity.map(|(_, cert)| cert);
    let attesting = cert.is_some();
    if let Err(e) = register(&c, greeting, cert, conn_id, tx) {
        return refuse(&mut sock, format!("cannot register node {id}: {e}")).await;
    }
    crate::cacheapi::catch_up(&c, &id);
    c.wake.notify_one();
    let (mut sink, mut stream) = sock.split();
    // The first tick asks for attestation at once, then every interval.
    let mut attest = tokio::time::interval(Duration::from_millis(c.cfg.security.attestation_interval.0.max(1_000)));
    // An agent heartbeats well within its lease. A session silent for three
    // leases belongs to a node that died without closing it (power lost,
    // cable pulled, process frozen): the kernel may take many minutes to
    // notice, and until then the node would show as connected.
    let silence = Duration::from_millis(c.cfg.lease_ms.saturating_mul(3).max(1_000));
    let mut heard = tokio::time::Instant::now();
    loop {
        tokio::select! {
            _ = tokio::time::sleep_until(heard + silence) => {
                tracing::warn!(node = %id, silent_ms = silence.as_millis() as u64, "no frame from the agent for three leases; closing its session");
                break;
            },
            _ = attest.tick(), if attesting => {
                let nonce = c.security.nonce(id.as_str(), c.clock.now_ms());
                if sink.send(Message::Text(encode(&ServerMessage::Attest { nonce }).into())).await.is_err() { break }
            },
            out = rx.recv() => match out {
                Some(m) => if sink.send(Message::Text(encode(&m).into())).await.is_err() { break },
                None => break,
            },
            frame = stream.next() => {
                heard = tokio::time::Instant::now();
                match frame {
                    Some(Ok(Message::Text(t))) => match decode::<AgentMessage>(&t) {
                        Ok(m) => if !handle(&c, &id, m) { break },
                        Err(e) => {
                            tracing::warn!(node = %id, error = %e, "bad frame from agent; closing");
                            if let Some(s) = c.lock().soft.get_mut(&id) {
                                s.anomalies += 1;
                            }
                            break;
                        }
                    },
                    Some(Ok(Message::Close(_))) | Some(Err(_)) | None => break,
                    Some(Ok(_)) => {}
                }
            },
        }
    }
    let mut inner = c.lock();
    if inner.agents.get(&id).is_some_and(|a| a.conn_id == conn_id) {
        inner.agents.remove(&id);
        if let Some(s) = inner.soft.get_mut(&id) {
            s.connected = false;
            s.cert = None;
        }
        c.telemetry.agents_connected.dec();
        tracing::info!(node = %id, "agent disconnected");
    }
}

/// Registers the node (when new, changed or back from the dead), renews its
/// lease and queues the welcome and its assignments.
fn register(
    c: &Control,
    greeting: Greeting,
    cert: Option<Arc<CertInfo>>,
    conn_id: u64,
    tx: mpsc::UnboundedSender<ServerMessage>,
) -> Result<(), verge_store::StoreError> {
    let Greeting { node, reported, posture, cached_keys } = greeting;
    let now = c.clock.now_ms();
    let id = node.id.clone();
    let mut inner = c.lock();
    // A known node coming back unchanged needs no write: the reconciler moves
    // it from terminated to warming, for a whole reconnecting fleet in one batch.
    let known = inner.store.state().nodes.get(&id).map(|r| r.spec == node);
    if known != Some(true) {
        let mut cmds = vec![Command::RegisterNode { spec: node, now_ms: now }];
        // New to this server with keys cached (as after a removal): no
        // invalidation named it meanwhile.
        if known.is_none() && cached_keys > 0 {
            cmds.push(Command::DistrustCache { id: id.clone() });
        }
        // Deferred: an agent declares itself again on every connect, so a
        // registration lost to a crash comes back with the next hello.
        if let Some(e) = inner.apply_batch(cmds, Durability::Deferred)?.into_iter().find_map(Result::err) {
            return Err(e.into());
        }
    }
    let _ =
        tx.send(ServerMessage::Welcome { node: id.clone(), heartbeat_interval_ms: c.cfg.heartbeat_interval_ms, lease_ms: c.cfg.lease_ms });
    if cert.is_some() {
        let _ = tx.send(ServerMessage::Revocations { nodes: c.security.revocations() });
    }
    let state = inner.store.state();
    for w in state.workloads_on(&id) {
        let _ = tx.send(ServerMessage::Assign { workload: Box::new(w.spec.clone()) });
    }
    for s in &reported {
        if state.workloads.get(&s.id).is_none_or(|w| w.node.as_ref() != Some(&id)) {
            let _ = tx.send(ServerMessage::Unassign { id: s.id.clone() });
        }
    }
    let lease = c.cfg.lease_ms;
    let soft = inner.soft.entry(id.clone()).or_default();
    soft.touch(now, lease);
    soft.connected = true;
    soft.posture = posture;
    if cert.as_ref().map(|c| &c.serial) != soft.cert.as_ref().map(|c| &c.serial) {
        // A new key or certificate must attest afresh.
        soft.attested_ms = None;
    }
    soft.cert = cert;
    soft.statuses = reported.into_iter().map(|s| (s.id.clone(), s)).collect();
    if inner.agents.insert(id, AgentConn { conn_id, tx }).is_none() {
        c.telemetry.agents_connected.inc();
    }
    Ok(())
}

/// Signs a renewal CSR for the node this connection authenticated as.
fn renew(c: &Control, id: &NodeId, csr: &str) {
    let now = c.clock.now_ms();
    let inner = c.lock();
    let Some(cert) = inner.soft.get(id).and_then(|s| s.cert.clone()) else {
        tracing::warn!(node = %id, "certificate renewal without a certificate refused");
        return;
    };
    // A node being removed is revoked while its connection is still open:
    // a certificate issued after that would pass the revocation check.
    if let Err(why) = c.security.check_node_cert(&cert) {
        tracing::warn!(node = %id, why, "certificate renewal refused");
        return;
    }
    match c.security.issue(csr, &Identity::Node(id.to_string()), now) {
        Ok(issued) => {
            let reason = format!("renewed: serial {} valid until {}", issued.serial, issued.not_after_ms);
            c.security.audit(
                now,
                AuditEvent {
                    actor: &format!("node:{id}"),
                    action: "renew certificate",
                    target: id.as_str(),
                    outcome: "issued",
                    reason: &reason,
                },
            );
            inner.send(id, ServerMessage::Certificate { cert_pem: issued.cert_pem });
        }
        Err(e) => tracing::warn!(node = %id, error = %e, "certificate renewal refused"),
    }
}

/// Handles one message; `false` closes the connection.
fn handle(c: &Control, id: &NodeId, msg: AgentMessage) -> bool {
    match msg {
        AgentMessage::Heartbeat { metrics, workloads, rtts, .. } => {
            let now = c.clock.now_ms();
            let lease = c.cfg.lease_ms;
            let mut inner = c.lock();
            if !inner.store.state().nodes.contains_key(id) {
                tracing::info!(node = %id, "heartbeat from a removed node; closing so it registers again");
                return false;
            }
            let soft = inner.soft.entry(id.clone()).or_default();
            soft.touch(now, lease);
            soft.metrics = Some(metrics);
            soft.statuses = workloads.into_iter().map(|s| (s.id.clone(), s)).collect();
            soft.heartbeats += 1;
            for r in &rtts {
                inner.record_rtt(id, r);
            }
            c.telemetry.heartbeats.inc();
        }
        AgentMessage::WorkloadStatus(s) => {
            let mut inner = c.lock();
            if let Some(soft) = inner.soft.get_mut(id) {
                soft.statuses.insert(s.id.clone(), s);
            }
        }
        AgentMessage::Logs { request, data, next_offset, error } => {
            c.complete_logs(request, error.map_or(Ok(LogChunk { data, next_offset }), Err));
        }
        report @ AgentMessage::SyncStatus { .. } => c.update_sync(id, report),
        AgentMessage::CacheAck { request, removed } => {
            if let Some(tx) = c.cache_acks.lock().unwrap_or_else(|p| p.into_inner()).get(&request) {
                let _ = tx.send((id.clone(), removed));
            }
        }
        AgentMessage::Attestation { evidence } => match Evidence::parse(evidence.as_bytes()) {
            Ok(e) => {
                let _ = c.attest(id, &e);
            }
            Err(e) => {
                tracing::warn!(node = %id, error = %e, "malformed attestation");
                if let Some(s) = c.lock().soft.get_mut(id) {
                    s.anomalies += 1;
                }
            }
        },
        AgentMessage::RenewCertificate { csr } => renew(c, id, &csr),
        AgentMessage::Hello { .. } => tracing::warn!(node = %id, "second hello on one connection ignored"),
    }
    true
}
