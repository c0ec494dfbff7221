//! The agent's runtime: restores its workloads from disk, keeps a gateway
//! connection to the server (reconnecting with back-off), heartbeats real
//! metrics, and applies `Assign` / `Unassign`. Workloads never depend on
//! the connection: they keep running while the server is away.

use std::collections::{BTreeMap, HashMap};
use std::io::Write;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use tokio::sync::{mpsc, watch};
use tokio_tungstenite::tungstenite::Message;
use verge_core::{Bytes, NodeSpec, WorkloadId, WorkloadSpec, WorkloadStatus};
use verge_proto::{decode, encode, AgentMessage, RttSample, ServerMessage, GATEWAY_PATH, MAX_FRAME_BYTES};

use crate::assignments::Assignments;
use crate::collector::Collector;
use crate::driver::Driver;
use crate::edgecache::EdgeCache;
use crate::exec::ExecDriver;
use crate::identity::{IdentityError, JoinWith, NodeIdentity};
use crate::secure::{Io, NodeTls, Revoked};
use crate::supervisor::{self, SupervisorHandle};
use crate::syncclient::Peer;
use crate::vault::Vault;

/// First reconnect delay; doubles up to [`MAX_BACKOFF`].
const MIN_BACKOFF: Duration = Duration::from_millis(100);
/// Longest wait between reconnect attempts.
const MAX_BACKOFF: Duration = Duration::from_secs(5);
/// Heartbeat interval until the server says otherwise.
const DEFAULT_HEARTBEAT: Duration = Duration::from_secs(1);
/// Environment variables passed from the agent to workloads.
const INHERITED_ENV: &[&str] = &["PATH", "HOME", "LANG", "TZ", "USER"];

/// How to run the agent.
#[derive(Debug, Clone)]
pub struct AgentOptions {
    /// The node spec to declare.
    pub node: NodeSpec,
    /// The gateway URL, `wss://host:port/v1/agent` (`ws://` for a server with TLS off).
    pub server_url: String,
    /// Where state and workload files live.
    pub data_dir: PathBuf,
    /// Stop workloads when the agent exits (for `verge dev`); by default they
    /// keep running and the next agent re-adopts them.
    pub stop_workloads_on_exit: bool,
    /// Where the data port listens (`None`: no data port).
    pub data_addr: Option<std::net::SocketAddr>,
    /// The data port address to advertise, when not the bound one.
    pub advertise_addr: Option<String>,
    /// Bandwidth for sync jobs, all together and per peer, bytes per second.
    pub sync_bandwidth: (Option<u64>, Option<u64>),
    /// How this node joins and proves itself.
    pub security: SecurityOptions,
    /// Sizes of the edge cache's tiers.
    pub cache: crate::edgecache::CacheSizes,
    /// The cache's origin, `http://…`, for read-through.
    pub origin: Option<String>,
    /// The cache's cold tier directory.
    pub cold_dir: Option<PathBuf>,
    /// Whether cache writes also go to the origin.
    pub origin_writes: crate::origin::OriginWrites,
}

/// Joining and attestation inputs.
#[derive(Debug, Clone, Default)]
pub struct SecurityOptions {
    /// The node join token, for a node without a certificate.
    pub join_token: Option<String>,
    /// `sha256:…` of the cluster CA, pinned for the join.
    pub ca_hash: Option<String>,
    /// The config file as read, measured in attestation.
    pub config_bytes: Vec<u8>,
    /// Seal cache and sync state at rest.
    pub encryption: bool,
    /// How often the data key rotates.
    pub key_rotation: Duration,
}

/// Where synced trees live on this node: remote paths are relative to it.
pub fn sync_root(data_dir: &std::path::Path) -> PathBuf {
    data_dir.join("files")
}

/// The agent's channels besides the workloads': messages to send to the
/// server (sync job statuses) and the data port's bound address.
struct Link {
    budget: Arc<crate::syncjobs::Budget>,
    outbox_tx: mpsc::UnboundedSender<AgentMessage>,
    outbox: mpsc::UnboundedReceiver<AgentMessage>,
    data_port: Option<std::net::SocketAddr>,
    tls: Option<Arc<NodeTls>>,
    vault: Arc<Vault>,
    revoked: Revoked,
    cache: Arc<EdgeCache>,
}

impl Link {
    /// What this node tells the server about its protection.
    fn posture(&self) -> verge_proto::Posture {
        verge_proto::Posture { encryption_at_rest: self.vault.sealing(), data_key_created_ms: self.vault.key_created_ms() }
    }
}

/// Why the agent could not run.
#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    /// The data directory is unusable.
    #[error("data directory {path}: {err}")]
    DataDir { path: String, err: std::io::Error },
    /// The data port cannot listen.
    #[error("data port {addr}: {err} (set network.data_addr)")]
    DataPort { addr: String, err: std::io::Error },
    /// The node has no certificate and cannot get one.
    #[error(transparent)]
    Identity(#[from] IdentityError),
}

/// Turns the config's `server:` value into the gateway URL.
pub fn gateway_url(server: &str) -> String {
    let s = server.trim().trim_end_matches('/');
    let s = if let Some(rest) = s.strip_prefix("http://") {
        format!("ws://{rest}")
    } else if let Some(rest) = s.strip_prefix("https://") {
        format!("wss://{rest}")
    } else if s.starts_with("ws://") || s.starts_with("wss://") {
        s.to_string()
    } else {
        format!("wss://{s}")
    };
    let after_scheme = s.split_once("://").map_or("", |(_, r)| r);
    if after_scheme.contains('/') {
        s
    } else {
        format!("{s}{GATEWAY_PATH}")
    }
}

/// The cores and memory of this machine, for configs that omit them.
pub fn detected_capacity() -> (f64, Bytes) {
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get()) as f64;
    let memory = sysinfo::System::new().map_or(0, |mut sys| {
        sys.refresh_memory();
        sys.total_memory()
    });
    (cores, Bytes(memory))
}

/// The workloads this agent runs, with their supervisors.
struct Workloads {
    driver: Arc<dyn Driver>,
    store: Assignments,
    running: HashMap<WorkloadId, (WorkloadSpec, SupervisorHandle)>,
    events: mpsc::UnboundedSender<WorkloadStatus>,
    env: BTreeMap<String, String>,
}

impl Workloads {
    fn start(&mut self, spec: WorkloadSpec) {
        let mut env = self.env.clone();
        env.insert("VERGE_WORKLOAD_ID".into(), spec.id.to_string());
        let dir = self.store.dir(&spec.id);
        let handle = supervisor::spawn(self.driver.clone(), spec.clone(), dir, env, self.events.clone());
        self.running.insert(spec.id.clone(), (spec, handle));
    }

    /// Runs `spec` unless it already runs unchanged; a changed spec restarts it.
    fn assign(&mut self, spec: WorkloadSpec) {
        if self.running.get(&spec.id).is_some_and(|(s, _)| *s == spec) {
            return;
        }
        if let Some((_, old)) = self.running.remove(&spec.id) {
            let (driver, store, new) = (self.driver.clone(), self.store.clone(), spec.clone());
            let events = self.events.clone();
            let mut env = self.env.clone();
            env.insert("VERGE_WORKLOAD_ID".into(), spec.id.to_string());
            // Restart in the background: stopping may take the grace period.
            tokio::spawn(async move {
                old.stop().await;
                if let Err(e) = store.save(&new) {
                    tracing::error!(workload = %new.id, error = %e, "cannot record assignment");
                }
                drop(supervisor::spawn(driver, new.clone(), store.dir(&new.id), env, events));
            });
            return;
        }
        if let Err(e) = self.store.save(&spec) {
            tracing::error!(workload = %spec.id, error = %e, "cannot record assignment; running it anyway");
        }
        tracing::info!(workload = %spec.id, "assigned");
        self.start(spec);
    }

    /// Stops and forgets a workload, in the background.
    fn unassign(&mut self, id: &WorkloadId) {
        let Some((_, handle)) = self.running.remove(id) else { return };
        tracing::info!(workload = %id, "unassigned");
        let (store, id) = (self.store.clone(), id.clone());
        tokio::spawn(async move {
            handle.stop().await;
            if let Err(e) = store.remove(&id) {
                tracing::warn!(workload = %id, error = %e, "cannot remove workload files");
            }
        });
    }

    fn statuses(&self) -> Vec<WorkloadStatus> {
        let mut v: Vec<_> = self.running.values().map(|(_, h)| h.status()).collect();
        v.sort_by(|a, b| a.id.cmp(&b.id));
        v
    }

    async fn shutdown(self, stop: bool) {
        if stop {
            let handles: Vec<_> = self.running.into_values().map(|(_, h)| tokio::spawn(h.stop())).collect();
            for h in handles {
                let _ = h.await;
            }
        } else {
            for (_, (_, h)) in self.running {
                h.detach();
            }
        }
    }
}

/// Runs the agent until `shutdown` turns true.
pub async fn run(opts: AgentOptions, mut shutdown: watch::Receiver<bool>) -> Result<(), AgentError> {
    let started = Instant::now();
    std::fs::create_dir_all(&opts.data_dir).map_err(|err| AgentError::DataDir { path: opts.data_dir.display().to_string(), err })?;
    let (events_tx, mut events) = mpsc::unbounded_channel();
    let mut env: BTreeMap<String, String> =
        INHERITED_ENV.iter().filter_map(|k| std::env::var(k).ok().map(|v| (k.to_string(), v))).collect();
    env.insert("VERGE_NODE_ID".into(), opts.node.id.to_string());
    let mut workloads = Workloads {
        driver: Arc::new(ExecDriver::new()),
        store: Assignments::new(&opts.data_dir),
        running: HashMap::new(),
        events: events_tx,
        env,
    };
    for spec in workloads.store.load() {
        tracing::info!(workload = %spec.id, "restoring workload from local state");
        workloads.start(spec);
    }
    let tls = if opts.server_url.starts_with("wss://") {
        match identity(&opts, &mut shutdown).await? {
            Some(t) => Some(Arc::new(t)),
            None => {
                workloads.shutdown(opts.stop_workloads_on_exit).await;
                return Ok(());
            }
        }
    } else {
        tracing::warn!(server = %opts.server_url, "plain-text gateway: no TLS, no node certificate, no attestation");
        None
    };
    let data_err = |err| AgentError::DataDir { path: opts.data_dir.display().to_string(), err };
    let keys = opts.security.encryption.then(|| opts.data_dir.join("keys"));
    let vault = Arc::new(Vault::open(keys.as_deref()).map_err(data_err)?);
    let origin = opts
        .origin
        .as_deref()
        .map(|url| crate::origin::Origin::new(url, opts.origin_writes))
        .transpose()
        .map_err(|e| data_err(std::io::Error::other(e)))?;
    let cold: Option<Box<dyn crate::coldstore::ObjectStore>> = match &opts.cold_dir {
        Some(d) => Some(Box::new(crate::coldstore::FsObjectStore::open(d.clone()).map_err(data_err)?)),
        None => None,
    };
    let cache = EdgeCache::open(&opts.data_dir.join("cache"), vault.clone(), opts.cache, origin, cold).map_err(data_err)?;
    crate::prewarm::start(cache.clone(), shutdown.clone());
    let mut sealed_roots = vec![cache.warm_dir().to_path_buf(), opts.data_dir.join("sync")];
    sealed_roots.extend(opts.cold_dir.clone());
    vault.clone().spawn_rotation(opts.security.key_rotation, sealed_roots, shutdown.clone());
    if let Some(addr) = opts.cache.resp_addr {
        let tls_source = tls.as_ref().map(|t| t.data_port.clone());
        let bound = crate::resp::listen(addr, cache.clone(), tls_source, shutdown.clone())
            .await
            .map_err(|err| AgentError::DataPort { addr: addr.to_string(), err })?;
        tracing::info!(%bound, "Redis-protocol cache listening");
        // Where local clients (and tests) find it when the port was 0.
        let _ = verge_security::fsutil::write_atomic(&opts.data_dir.join("cache").join("resp.addr"), bound.to_string().as_bytes(), 0o644);
    }
    let revoked = Revoked::default();
    let data_port = match opts.data_addr {
        Some(addr) => {
            let tls_source = tls.as_ref().map(|t| t.data_port.clone());
            Some(
                serve_data_port(
                    addr,
                    &opts.data_dir,
                    vault.clone(),
                    crate::cachehttp::router(cache.clone()),
                    revoked.clone(),
                    tls_source,
                    shutdown.clone(),
                )
                .await?,
            )
        }
        None => None,
    };
    let (outbox_tx, outbox) = mpsc::unbounded_channel();
    let budget = Arc::new(crate::syncjobs::Budget::new(opts.sync_bandwidth.0, opts.sync_bandwidth.1));
    let mut link = Link { budget, outbox_tx, outbox, data_port, tls, vault, revoked, cache };
    let mut collector = Collector::new(&opts.data_dir);
    let mut backoff = MIN_BACKOFF;
    let mut announced = false;
    while !*shutdown.borrow() {
        match connect(&opts, &mut workloads, &mut collector, &mut events, &mut link, &mut shutdown, started, &mut announced).await {
            Ok(()) => backoff = MIN_BACKOFF,
            Err(e) => {
                tracing::warn!(server = %opts.server_url, error = %e, retry_in_ms = backoff.as_millis() as u64, "server unreachable; workloads keep running")
            }
        }
        tokio::select! {
            _ = tokio::time::sleep(backoff) => {}
            _ = shutdown.wait_for(|s| *s) => {}
        }
        backoff = (backoff * 2).min(MAX_BACKOFF);
    }
    workloads.shutdown(opts.stop_workloads_on_exit).await;
    // Write-behind entries reach the disk before a clean exit.
    link.cache.blocking(|c| c.flush()).await;
    Ok(())
}

/// The gateway's `host:port` in a `wss://host:port/…` URL.
fn authority(url: &str) -> &str {
    url.split_once("://").map_or(url, |(_, r)| r).split('/').next().unwrap_or_default()
}

/// Loads the node's certificate or joins for one, retrying while the server
/// is unreachable; `None` when shut down meanwhile.
async fn identity(opts: &AgentOptions, shutdown: &mut watch::Receiver<bool>) -> Result<Option<NodeTls>, AgentError> {
    let dir = opts.data_dir.join("tls");
    let mut backoff = MIN_BACKOFF;
    loop {
        let join =
            opts.security.join_token.as_deref().zip(opts.security.ca_hash.as_deref()).map(|(token, ca_hash)| JoinWith { token, ca_hash });
        match NodeIdentity::load_or_join(&dir, authority(&opts.server_url), opts.node.id.as_str(), join).await {
            Ok(id) => {
                let evidence = opts.data_dir.join("attestation.json");
                return Ok(Some(NodeTls::new(id, opts.node.id.as_str(), opts.security.config_bytes.clone(), evidence)?));
            }
            Err(IdentityError::Unreachable(e) | IdentityError::StillConnected(e)) => {
                tracing::warn!(error = %e, retry_in_ms = backoff.as_millis() as u64, "cannot join yet")
            }
            Err(e) => return Err(e.into()),
        }
        tokio::select! {
            _ = tokio::time::sleep(backoff) => {}
            _ = shutdown.wait_for(|s| *s) => return Ok(None),
        }
        backoff = (backoff * 2).min(MAX_BACKOFF);
    }
}

/// Binds the data port (sync and the edge cache's `extra` routes, behind
/// the revocation check) and serves it until shutdown; returns the bound address.
async fn serve_data_port(
    addr: std::net::SocketAddr,
    data_dir: &std::path::Path,
    vault: Arc<Vault>,
    extra: axum::Router,
    revoked: Revoked,
    tls: Option<verge_client::serve::TlsSource>,
    shutdown: watch::Receiver<bool>,
) -> Result<std::net::SocketAddr, AgentError> {
    let err = |err| AgentError::DataPort { addr: addr.to_string(), err };
    // With port 0 the agent keeps the port it had last time when it is still
    // free, so senders that were cut off by a restart can resume.
    let port_file = data_dir.join("sync").join("data-port");
    let previous = std::fs::read_to_string(&port_file).ok().and_then(|p| p.trim().parse::<u16>().ok()).filter(|_| addr.port() == 0);
    let listener = match previous {
        Some(p) => match tokio::net::TcpListener::bind(std::net::SocketAddr::new(addr.ip(), p)).await {
            Ok(l) => l,
            Err(_) => tokio::net::TcpListener::bind(addr).await.map_err(err)?,
        },
        None => tokio::net::TcpListener::bind(addr).await.map_err(err)?,
    };
    let bound = listener.local_addr().map_err(err)?;
    if addr.port() == 0 {
        let _ = std::fs::create_dir_all(data_dir.join("sync"));
        let _ = verge_sync::fsio::write_atomic(&port_file, bound.port().to_string().as_bytes());
    }
    let root = sync_root(data_dir);
    std::fs::create_dir_all(&root).map_err(|err| AgentError::DataDir { path: root.display().to_string(), err })?;
    let removed = verge_sync::fsio::clean_temporaries(&root);
    if removed > 0 {
        tracing::info!(removed, "removed temporary files an interrupted sync left behind");
    }
    let port = crate::dataport::DataPort { root, state: data_dir.join("sync"), vault };
    let refused: Arc<dyn Fn() + Send + Sync> = Arc::new(|| tracing::debug!("data port refused a TLS handshake"));
    let router = port.router().merge(extra).layer(axum::middleware::from_fn_with_state(revoked, crate::secure::refuse_revoked));
    tokio::spawn(verge_client::serve::serve(listener, router, tls, shutdown, refused));
    tracing::info!(%bound, "data port listening");
    Ok(bound)
}

/// The data port address other nodes should use: the configured one, or
/// the bound port on the address this agent reaches the server from.
fn advertised(opts: &AgentOptions, bound: std::net::SocketAddr, local: Option<std::net::SocketAddr>) -> String {
    if let Some(a) = &opts.advertise_addr {
        return a.clone();
    }
    match local {
        Some(l) if bound.ip().is_unspecified() => std::net::SocketAddr::new(l.ip(), bound.port()).to_string(),
        _ => bound.to_string(),
    }
}

/// A failed WebSocket handshake, with the server's reason when it gave one
/// (a revoked certificate, a missing one), and what to do about a refused
/// certificate: the server revokes a removed node's, and only a new join
/// (with a token) brings the node back.
fn refusal(e: tokio_tungstenite::tungstenite::Error, data_dir: &std::path::Path) -> String {
    match e {
        tokio_tungstenite::tungstenite::Error::Http(resp) => {
            let body = resp.body().as_deref().unwrap_or_default();
            match verge_client::api_error(resp.status(), body) {
                verge_client::ClientError::Api { code, message, .. } if code == "certificate_refused" => format!(
                    "server refused this node's certificate: {message}; if the node was removed, it joins again once {} is deleted and the agent starts with a join token",
                    data_dir.join("tls").display()
                ),
                _ => format!("server refused the connection ({}): {}", resp.status(), String::from_utf8_lossy(body)),
            }
        }
        other => other.to_string(),
    }
}

/// One connection's life: hello, welcome, then heartbeats and commands until
/// it drops. `Ok` means it was established and later closed.
#[allow(clippy::too_many_arguments)]
async fn connect(
    opts: &AgentOptions,
    workloads: &mut Workloads,
    collector: &mut Collector,
    events: &mut mpsc::UnboundedReceiver<WorkloadStatus>,
    link: &mut Link,
    shutdown: &mut watch::Receiver<bool>,
    started: Instant,
    announced: &mut bool,
) -> Result<(), String> {
    let config = tokio_tungstenite::tungstenite::protocol::WebSocketConfig::default()
        .max_message_size(Some(MAX_FRAME_BYTES))
        .max_frame_size(Some(MAX_FRAME_BYTES));
    if let Some(t) = &link.tls {
        if t.rejoin_if_expired(authority(&opts.server_url), opts.security.join_token.as_deref()).await? {
            tracing::info!("certificate expired while away; joined again");
        }
    }
    let tcp = tokio::net::TcpStream::connect(authority(&opts.server_url)).await.map_err(|e| e.to_string())?;
    let _ = tcp.set_nodelay(true);
    let local = tcp.local_addr().ok();
    let stream: Box<dyn Io> = match &link.tls {
        Some(t) => t.handshake(tcp).await?,
        None => Box::new(tcp),
    };
    let (ws, _) = tokio_tungstenite::client_async_with_config(opts.server_url.as_str(), stream, Some(config))
        .await
        .map_err(|e| refusal(e, &opts.data_dir))?;
    let (mut sink, mut stream) = ws.split();
    // Cache entries from before this hello may be older than what the
    // server asks this connection to drop; later ones are not.
    let joined = link.cache.next_version();
    let mut node = opts.node.clone();
    node.data_addr = link.data_port.map(|bound| advertised(opts, bound, local));
    let hello = AgentMessage::Hello {
        node,
        agent_version: env!("CARGO_PKG_VERSION").into(),
        workloads: workloads.statuses(),
        posture: link.posture(),
        cached_keys: link.cache.key_count() as u64,
    };
    sink.send(Message::text(encode(&hello))).await.map_err(|e| e.to_string())?;
    let mut interval = DEFAULT_HEARTBEAT;
    let mut ticker = tokio::time::interval(interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut seq = 0u64;
    let mut welcomed = false;
    let epoch = Instant::now();
    let mut last_rtt: Option<f64> = None;
    loop {
        tokio::select! {
            _ = shutdown.wait_for(|s| *s) => {
                let _ = sink.send(Message::Close(None)).await;
                return Ok(());
            }
            _ = ticker.tick(), if welcomed => {
                if let Some(renew) = link.tls.as_ref().and_then(|t| t.renewal()) {
                    sink.send(Message::text(encode(&renew))).await.map_err(|e| e.to_string())?;
                }
                seq += 1;
                let sent_ms = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64);
                let rtts = last_rtt.take().map(|rtt_ms| RttSample { peer: None, rtt_ms }).into_iter().collect();
                let hb = AgentMessage::Heartbeat { seq, sent_ms, metrics: collector.sample(), workloads: workloads.statuses(), rtts };
                sink.send(Message::text(encode(&hb))).await.map_err(|e| e.to_string())?;
                // The pong's answer measures the RTT to the server for the next heartbeat.
                let sent = (epoch.elapsed().as_nanos() as u64).to_be_bytes();
                sink.send(Message::Ping(sent.to_vec().into())).await.map_err(|e| e.to_string())?;
            }
            Some(status) = events.recv() => {
                if welcomed {
                    sink.send(Message::text(encode(&AgentMessage::WorkloadStatus(status)))).await.map_err(|e| e.to_string())?;
                }
            }
            Some(msg) = link.outbox.recv() => {
                sink.send(Message::text(encode(&msg))).await.map_err(|e| e.to_string())?;
            }
            frame = stream.next() => {
                let text = match frame {
                    Some(Ok(Message::Text(t))) => t,
                    Some(Ok(Message::Pong(p))) => {
                        if let Ok(sent) = <[u8; 8]>::try_from(p.as_ref()) {
                            let rtt_ns = (epoch.elapsed().as_nanos() as u64).saturating_sub(u64::from_be_bytes(sent));
                            last_rtt = Some(rtt_ns as f64 / 1e6);
                        }
                        continue;
                    }
                    Some(Ok(Message::Close(_))) | None => return if welcomed { Ok(()) } else { Err("server closed the connection".into()) },
                    Some(Ok(_)) => continue,
                    Some(Err(e)) => return Err(e.to_string()),
                };
                let msg = decode::<ServerMessage>(&text).map_err(|e| e.to_string())?;
                match msg {
                    ServerMessage::Welcome { heartbeat_interval_ms, lease_ms, node } => {
                        welcomed = true;
                        if !*announced {
                            *announced = true;
                            let mut out = std::io::stdout();
                            let _ = writeln!(out, "verge agent {node} registered with {} in {} ms", opts.server_url, started.elapsed().as_millis());
                            let _ = out.flush();
                        }
                        tracing::info!(%node, heartbeat_interval_ms, lease_ms, "connected to server");
                        interval = Duration::from_millis(heartbeat_interval_ms.max(10));
                        ticker = tokio::time::interval(interval);
                        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                    }
                    ServerMessage::Assign { workload } => workloads.assign(*workload),
                    ServerMessage::Unassign { id } => workloads.unassign(&id),
                    ServerMessage::FetchLogs { request, id, stream: which, offset, tail } => {
                        let path = workloads.store.dir(&id).join(which.file_name());
                        let reply = match tokio::task::spawn_blocking(move || crate::logs::read(&path, offset, tail)).await {
                            Ok(Ok((data, next_offset))) => AgentMessage::Logs { request, data, next_offset, error: None },
                            Ok(Err(e)) => AgentMessage::Logs { request, data: String::new(), next_offset: 0, error: Some(format!("cannot read log: {e}")) },
                            Err(e) => AgentMessage::Logs { request, data: String::new(), next_offset: 0, error: Some(e.to_string()) },
                        };
                        sink.send(Message::text(encode(&reply))).await.map_err(|e| e.to_string())?;
                    }
                    ServerMessage::SyncPush { job, path, target_addr, target_node, target_path, mirror, limit_bps, priority } => {
                        let target = Peer { addr: target_addr, tls: link.tls.as_ref().map(|t| t.peer_tls(target_node.as_str())) };
                        let job = crate::syncjobs::SyncJob { job, path, target, target_path, mirror, limit_bps, priority };
                        crate::syncjobs::start(job, opts.node.id.as_str(), &opts.data_dir, link.budget.clone(), link.outbox_tx.clone());
                    }
                    ServerMessage::Attest { nonce } => {
                        let Some(t) = link.tls.clone() else { continue };
                        match tokio::task::spawn_blocking(move || t.attest(&nonce)).await {
                            Ok(Ok(answer)) => sink.send(Message::text(encode(&answer))).await.map_err(|e| e.to_string())?,
                            Ok(Err(e)) => tracing::error!(error = %e, "cannot attest"),
                            Err(e) => tracing::error!(error = %e, "attestation task failed"),
                        }
                    }
                    ServerMessage::CacheInvalidate { request, key, version } => {
                        let removed = link.cache.blocking(move |c| c.invalidate(&key, version)).await.unwrap_or(false);
                        sink.send(Message::text(encode(&AgentMessage::CacheAck { request, removed }))).await.map_err(|e| e.to_string())?;
                    }
                    ServerMessage::CacheCatchUp { request, keys, drop_all } => {
                        // Unanswered on failure: the server keeps the backlog and sends it again.
                        match link.cache.blocking(move |c| c.catch_up(&keys, drop_all, joined)).await {
                            Some(Ok(removed)) => {
                                let ack = encode(&AgentMessage::CacheAck { request, removed });
                                sink.send(Message::text(ack)).await.map_err(|e| e.to_string())?;
                            }
                            Some(Err(e)) => tracing::error!(error = %e, "cannot apply the cache invalidations missed offline"),
                            None => tracing::error!("the cache task applying missed invalidations failed"),
                        }
                    }
                    ServerMessage::CachePrewarm { keys, priority } => {
                        for key in keys {
                            link.cache.request_warmup(crate::edgecache::Warmup { key, priority, deadline_ms: None });
                        }
                    }
                    ServerMessage::Revocations { nodes } => {
                        *link.revoked.write().unwrap_or_else(|p| p.into_inner()) = nodes;
                    }
                    ServerMessage::Certificate { cert_pem } => {
                        if let Some(Err(e)) = link.tls.as_ref().map(|t| t.renewed(&cert_pem)) {
                            tracing::error!(error = %e, "renewed certificate refused");
                        }
                    }
                    ServerMessage::Refused { reason } => return Err(format!("server refused this agent: {reason}")),
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn server_addresses_become_gateway_urls() {
        assert_eq!(gateway_url("127.0.0.1:8091"), "wss://127.0.0.1:8091/v1/agent");
        assert_eq!(gateway_url("https://host:1"), "wss://host:1/v1/agent");
        assert_eq!(gateway_url("ws://host:1/"), "ws://host:1/v1/agent");
        assert_eq!(gateway_url("http://host:1"), "ws://host:1/v1/agent");
        assert_eq!(gateway_url("wss://host:1/custom"), "wss://host:1/custom");
    }
}
