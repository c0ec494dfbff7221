//! The agent gateway: one WebSocket per agent speaking `verge-proto`.
//! A `Hello` registers the node and returns its assignments; heartbeats
//! renew its lease and refresh its soft state.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::ws::{Message, WebSocket, WebSocketUpgrade};
use axum::extract::{ConnectInfo, State};
use axum::response::Response;
use axum::routing::get;
use axum::Router;
use futures_util::{SinkExt, StreamExt};
use tokio::sync::mpsc;
use verge_core::{NodeId, NodeSpec, WorkloadStatus};
use verge_proto::{decode, encode, AgentMessage, ServerMessage, GATEWAY_PATH, MAX_FRAME_BYTES};
use verge_store::{Command, Durability};

use crate::control::{AgentConn, Control, LogChunk};

/// Read and write buffer of each agent connection, bytes.
const WS_BUFFER: usize = 8 << 10;

/// How long a new connection may take to say `Hello`.
const HELLO_TIMEOUT: Duration = Duration::from_secs(10);

/// The gateway's routes.
pub fn router(control: Arc<Control>) -> Router {
    Router::new().route(GATEWAY_PATH, get(upgrade)).with_state(control)
}

async fn upgrade(State(c): State<Arc<Control>>, ConnectInfo(peer): ConnectInfo<SocketAddr>, ws: WebSocketUpgrade) -> Response {
    // Small buffers: a server holds one connection per node, 10,000 or more.
    ws.max_message_size(MAX_FRAME_BYTES)
        .read_buffer_size(WS_BUFFER)
        .write_buffer_size(WS_BUFFER)
        .on_upgrade(move |sock| session(c, sock, peer))
}

async fn refuse(sock: &mut WebSocket, reason: String) {
    tracing::warn!(%reason, "agent refused");
    let _ = sock.send(Message::Text(encode(&ServerMessage::Refused { reason }).into())).await;
    let _ = sock.close().await;
}

/// Waits for the `Hello` and validates the node it declares.
async fn hello(sock: &mut WebSocket) -> Result<(NodeSpec, Vec<WorkloadStatus>), String> {
    let frame = match tokio::time::timeout(HELLO_TIMEOUT, sock.recv()).await {
        Err(_) => return Err("no hello within 10 s".into()),
        Ok(Some(Ok(Message::Text(t)))) => t,
        Ok(_) => return Err("expected a hello text frame".into()),
    };
    match decode::<AgentMessage>(&frame) {
        Ok(AgentMessage::Hello { node, workloads, agent_version }) => {
            node.validate().map_err(|e| format!("invalid node spec: {e}"))?;
            tracing::info!(node = %node.id, %agent_version, "agent hello");
            Ok((node, workloads))
        }
        Ok(_) => Err("the first message must be a hello".into()),
        Err(e) => Err(e.to_string()),
    }
}

async fn session(c: Arc<Control>, mut sock: WebSocket, peer: SocketAddr) {
    let (node, reported) = match hello(&mut sock).await {
        Ok(h) => h,
        Err(reason) => return refuse(&mut sock, format!("{peer}: {reason}")).await,
    };
    let id = node.id.clone();
    let conn_id = c.next_id();
    let (tx, mut rx) = mpsc::unbounded_channel();
    if let Err(e) = register(&c, node, reported, conn_id, tx) {
        return refuse(&mut sock, format!("cannot register node {id}: {e}")).await;
    }
    c.wake.notify_one();
    let (mut sink, mut stream) = sock.split();
    loop {
        tokio::select! {
            out = rx.recv() => match out {
                Some(m) => if sink.send(Message::Text(encode(&m).into())).await.is_err() { break },
                None => break,
            },
            frame = stream.next() => match frame {
                Some(Ok(Message::Text(t))) => match decode::<AgentMessage>(&t) {
                    Ok(m) => if !handle(&c, &id, m) { break },
                    Err(e) => {
                        tracing::warn!(node = %id, error = %e, "bad frame from agent; closing");
                        break;
                    }
                },
                Some(Ok(Message::Close(_))) | Some(Err(_)) | None => break,
                Some(Ok(_)) => {}
            },
        }
    }
    let mut inner = c.lock();
    if inner.agents.get(&id).is_some_and(|a| a.conn_id == conn_id) {
        inner.agents.remove(&id);
        if let Some(s) = inner.soft.get_mut(&id) {
            s.connected = false;
        }
        c.telemetry.agents_connected.dec();
        tracing::info!(node = %id, "agent disconnected");
    }
}

/// Registers the node (when new, changed or back from the dead), renews its
/// lease and queues the welcome and its assignments.
fn register(
    c: &Control,
    node: NodeSpec,
    reported: Vec<WorkloadStatus>,
    conn_id: u64,
    tx: mpsc::UnboundedSender<ServerMessage>,
) -> Result<(), verge_store::StoreError> {
    let now = c.clock.now_ms();
    let id = node.id.clone();
    let mut inner = c.lock();
    // A known node coming back unchanged needs no write: the reconciler moves
    // it from terminated to warming, for a whole reconnecting fleet in one batch.
    let fresh = inner.store.state().nodes.get(&id).is_none_or(|r| r.spec != node);
    if fresh {
        // Deferred: an agent declares itself again on every connect, so a
        // registration lost to a crash comes back with the next hello.
        if let Some(Err(e)) = inner.apply_batch(vec![Command::RegisterNode { spec: node, now_ms: now }], Durability::Deferred)?.pop() {
            return Err(e.into());
        }
    }
    let _ =
        tx.send(ServerMessage::Welcome { node: id.clone(), heartbeat_interval_ms: c.cfg.heartbeat_interval_ms, lease_ms: c.cfg.lease_ms });
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
    soft.statuses = reported.into_iter().map(|s| (s.id.clone(), s)).collect();
    if inner.agents.insert(id, AgentConn { conn_id, tx }).is_none() {
        c.telemetry.agents_connected.inc();
    }
    Ok(())
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
        AgentMessage::Hello { .. } => tracing::warn!(node = %id, "second hello on one connection ignored"),
    }
    true
}
