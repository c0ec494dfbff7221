//! One simulated agent: the real gateway protocol (hello, heartbeats with
//! metrics and measured RTTs, assignments, attestation when the fleet is
//! enrolled), with made-up resource use.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::WebSocketStream;
use verge_core::{NodeMetrics, WorkloadId, WorkloadState, WorkloadStatus};
use verge_proto::{decode, encode, AgentMessage, RttSample, ServerMessage};
use verge_sched::SplitMix64;

use crate::fleet::Fleet;
use crate::secure::{Enrolled, Io};

/// Peers each node measures per heartbeat: half in its own city (where the
/// fine differences that matter for placement are), half anywhere.
const PEERS_PER_HEARTBEAT: usize = 8;
/// Buffer size of each simulated connection: thousands live in one process.
const WS_BUFFER: usize = 8 << 10;

/// Switches the run flips to simulate failures, and what the node holds.
#[derive(Debug, Default)]
pub struct NodeCtl {
    /// False: the node is dead or cut off and sends nothing.
    pub down: AtomicBool,
    /// True: the node reports 92 °C.
    pub hot: AtomicBool,
    /// Heartbeats sent.
    pub heartbeats: AtomicU64,
    /// Attestation nonces answered.
    pub attestations: AtomicU64,
    /// Workloads assigned to it.
    pub workloads: Mutex<BTreeMap<WorkloadId, WorkloadStatus>>,
}

impl NodeCtl {
    fn statuses(&self) -> Vec<WorkloadStatus> {
        self.workloads.lock().map(|w| w.values().cloned().collect()).unwrap_or_default()
    }
}

fn metrics(fleet: &Fleet, i: usize, ctl: &NodeCtl, rng: &mut SplitMix64) -> NodeMetrics {
    let spec = &fleet.nodes[i].spec;
    let running = ctl.workloads.lock().map(|w| w.len()).unwrap_or(0) as f64;
    let total = spec.resources.memory.total.0;
    NodeMetrics {
        cpu_percent: (5.0 + 10.0 * running + 5.0 * rng.next_f64()).min(100.0),
        memory_used: (total as f64 * (0.2 + 0.05 * running).min(0.85)) as u64,
        memory_total: total,
        disk_used: 100 << 30,
        disk_total: 500 << 30,
        net_rx_bytes: 0,
        net_tx_bytes: 0,
        load: [0.3, 0.3, 0.3],
        temperature_c: Some(if ctl.hot.load(Ordering::Relaxed) { 92.0 } else { 55.0 }),
    }
}

/// Where the simulated nodes connect, and as whom.
pub struct Gateway {
    /// `ws://host:port/v1/agent`, or `wss://…` with `tls`.
    pub url: String,
    /// The fleet's credentials: with them, nodes speak mutual TLS and attest.
    pub tls: Option<Enrolled>,
}

impl Gateway {
    /// A WebSocket to the gateway as node `i`, over TLS when enrolled.
    async fn connect(&self, i: usize) -> Result<WebSocketStream<Box<dyn Io>>, String> {
        let authority = self.url.split_once("://").map_or(self.url.as_str(), |(_, r)| r).split('/').next().unwrap_or_default();
        let tcp = tokio::net::TcpStream::connect(authority).await.map_err(|e| e.to_string())?;
        let _ = tcp.set_nodelay(true);
        let stream: Box<dyn Io> = match &self.tls {
            Some(t) => t.handshake(i, tcp).await?,
            None => Box::new(tcp),
        };
        let config = WebSocketConfig::default().read_buffer_size(WS_BUFFER).write_buffer_size(WS_BUFFER);
        let (ws, _) =
            tokio_tungstenite::client_async_with_config(self.url.as_str(), stream, Some(config)).await.map_err(|e| e.to_string())?;
        Ok(ws)
    }

    /// Node `i`'s answer to an attestation nonce, if the fleet is enrolled.
    fn attest(&self, fleet: &Fleet, i: usize, ctl: &NodeCtl, nonce: &str) -> Result<Option<AgentMessage>, String> {
        let Some(t) = &self.tls else { return Ok(None) };
        let answer = t.attest(i, fleet.nodes[i].spec.id.as_str(), nonce)?;
        ctl.attestations.fetch_add(1, Ordering::Relaxed);
        Ok(Some(answer))
    }
}

/// Runs node `i` until the process ends: connects, heartbeats every
/// `interval`, follows assignments; while `down`, stays disconnected.
pub async fn run_node(fleet: Arc<Fleet>, i: usize, gateway: Arc<Gateway>, ctl: Arc<NodeCtl>, interval: Duration, start_delay: Duration) {
    tokio::time::sleep(start_delay).await;
    let mut rng = SplitMix64(0x51u64.wrapping_mul(i as u64 + 1));
    loop {
        while ctl.down.load(Ordering::Relaxed) {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        if let Err(e) = session(&fleet, i, &gateway, &ctl, interval, &mut rng).await {
            tracing::debug!(node = i, error = %e, "simulated node disconnected");
            tokio::time::sleep(Duration::from_millis(200 + rng.next_u64() % 800)).await;
        }
    }
}

async fn session(
    fleet: &Fleet,
    i: usize,
    gateway: &Gateway,
    ctl: &NodeCtl,
    interval: Duration,
    rng: &mut SplitMix64,
) -> Result<(), String> {
    let (mut sink, mut stream) = gateway.connect(i).await?.split();
    let hello = AgentMessage::Hello {
        node: fleet.nodes[i].spec.clone(),
        agent_version: "sim".into(),
        workloads: ctl.statuses(),
        posture: Default::default(),
        cached_keys: 0,
    };
    sink.send(Message::text(encode(&hello))).await.map_err(|e| e.to_string())?;
    let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + interval, interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut seq = 0;
    loop {
        tokio::select! {
            _ = tick.tick() => {
                if ctl.down.load(Ordering::Relaxed) {
                    return Ok(());
                }
                seq += 1;
                let mut rtts = vec![RttSample { peer: None, rtt_ms: fleet.server_rtt_ms(i) }];
                let neighbours = fleet.by_city.get(&fleet.nodes[i].city).map_or(&[][..], Vec::as_slice);
                for k in 0..PEERS_PER_HEARTBEAT {
                    let p = if k % 2 == 0 && neighbours.len() > 1 {
                        neighbours[(rng.next_u64() % neighbours.len() as u64) as usize]
                    } else {
                        (rng.next_u64() % fleet.nodes.len() as u64) as usize
                    };
                    if p != i {
                        rtts.push(RttSample { peer: Some(fleet.nodes[p].spec.id.clone()), rtt_ms: fleet.node_rtt_ms(i, p) });
                    }
                }
                let hb = AgentMessage::Heartbeat { seq, sent_ms: 0, metrics: metrics(fleet, i, ctl, rng), workloads: ctl.statuses(), rtts };
                sink.send(Message::text(encode(&hb))).await.map_err(|e| e.to_string())?;
                ctl.heartbeats.fetch_add(1, Ordering::Relaxed);
            }
            frame = stream.next() => {
                let text = match frame {
                    Some(Ok(Message::Text(t))) => t,
                    Some(Ok(Message::Close(_))) | None => return Err("closed by server".into()),
                    Some(Ok(_)) => continue,
                    Some(Err(e)) => return Err(e.to_string()),
                };
                let reply = match decode::<ServerMessage>(&text).map_err(|e| e.to_string())? {
                    ServerMessage::Assign { workload } => {
                        let status = WorkloadStatus { id: workload.id.clone(), state: WorkloadState::Running, pid: None, restarts: 0, exit_code: None, message: String::new() };
                        if let Ok(mut w) = ctl.workloads.lock() {
                            w.insert(workload.id.clone(), status.clone());
                        }
                        Some(AgentMessage::WorkloadStatus(status))
                    }
                    ServerMessage::Unassign { id } => {
                        if let Ok(mut w) = ctl.workloads.lock() {
                            w.remove(&id);
                        }
                        None
                    }
                    ServerMessage::FetchLogs { request, .. } => Some(AgentMessage::Logs { request, data: String::new(), next_offset: 0, error: None }),
                    ServerMessage::SyncPush { job, .. } => Some(AgentMessage::SyncStatus {
                        job,
                        state: "failed".into(),
                        bytes_sent: 0,
                        bytes_total: 0,
                        files_written: 0,
                        error: Some("simulated nodes hold no data".into()),
                    }),
                    ServerMessage::Attest { nonce } => gateway.attest(fleet, i, ctl, &nonce)?,
                    ServerMessage::Welcome { .. } | ServerMessage::CachePrewarm { .. } | ServerMessage::Certificate { .. } | ServerMessage::Revocations { .. } => None,
                    ServerMessage::CacheInvalidate { request, .. } | ServerMessage::CacheCatchUp { request, .. } => {
                        Some(AgentMessage::CacheAck { request, removed: false })
                    }
                    ServerMessage::Refused { reason } => return Err(reason),
                };
                if let Some(r) = reply {
                    sink.send(Message::text(encode(&r))).await.map_err(|e| e.to_string())?;
                }
            }
        }
    }
}
