//! Verge's control plane: the HTTP API, the agent gateway, the reconcilers
//! and the metrics endpoint, around one [`verge_store::Store`].
//!
//! Decisions (health, lifecycle, placement, failover, drain) are pure
//! functions in [`reconcile`] and [`health`]; the modules here do the I/O
//! around them.

mod api;
mod auth;
mod cacheapi;
mod config;
mod control;
mod error;
mod gateway;
pub mod health;
mod posture;
pub mod reconcile;
mod secapi;
mod security;
mod soft;
mod syncjobs;
mod telemetry;

use std::future::Future;
use std::io::Write;
use std::sync::Arc;

pub use config::{Provisioning, SecurityConfig, ServerConfig, ServerConfigError};
pub use soft::NodeSoft;

use control::Control;
use verge_client::serve;

/// Why the server could not start or stopped.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    /// The data directory could not be created.
    #[error("data directory {path}: {err}")]
    DataDir { path: String, err: std::io::Error },
    /// The state store could not be opened.
    #[error(transparent)]
    Store(#[from] verge_store::StoreError),
    /// A listener could not bind.
    #[error("cannot listen on {addr}: {err}")]
    Bind { addr: String, err: std::io::Error },
    /// Serving failed.
    #[error("serving: {0}")]
    Serve(std::io::Error),
    /// The CA, TLS settings, tokens or audit log could not be set up.
    #[error("security: {0}")]
    Security(String),
}

/// Connections a listener queues before accepting them: a fleet that comes
/// back from a partition reconnects all at once.
const LISTEN_BACKLOG: u32 = 4096;

/// Binds a listener with a deep accept queue.
fn bind(addr: std::net::SocketAddr) -> Result<tokio::net::TcpListener, ServerError> {
    let err = |err| ServerError::Bind { addr: addr.to_string(), err };
    let socket = if addr.is_ipv4() { tokio::net::TcpSocket::new_v4() } else { tokio::net::TcpSocket::new_v6() }.map_err(err)?;
    socket.set_reuseaddr(true).map_err(err)?;
    socket.bind(addr).map_err(err)?;
    socket.listen(LISTEN_BACKLOG).map_err(err)
}

/// Runs the control plane until `shutdown` resolves. Prints the bound
/// addresses and the CA fingerprint on one stdout line, so callers that
/// asked for port 0 can read them:
/// `verge server listening api=https://… gateway=wss://… ca=sha256:…`.
pub async fn run(cfg: ServerConfig, shutdown: impl Future<Output = ()> + Send + 'static) -> Result<(), ServerError> {
    verge_security::fsutil::private_dir(&cfg.data_dir)
        .map_err(|err| ServerError::DataDir { path: cfg.data_dir.display().to_string(), err })?;
    let clock = Arc::new(verge_core::SystemClock);
    let security = security::Security::open(&cfg.data_dir, &cfg.security, verge_core::Clock::now_ms(&*clock))?;
    let store = verge_store::Store::open(&cfg.data_dir.join("state.redb"))?;
    let api_listener = bind(cfg.api_addr)?;
    let gw_listener = bind(cfg.gateway_addr)?;
    let api_addr = api_listener.local_addr().map_err(ServerError::Serve)?;
    let gw_addr = gw_listener.local_addr().map_err(ServerError::Serve)?;

    let control = Arc::new(Control::new(cfg, store, security, clock));
    let (http, ws) = if control.cfg.security.tls { ("https", "wss") } else { ("http", "ws") };
    let mut out = std::io::stdout();
    let _ = writeln!(out, "verge server listening api={http}://{api_addr} gateway={ws}://{gw_addr} ca={}", control.security.fingerprint);
    let _ = out.flush();
    tracing::info!(%api_addr, %gw_addr, nodes = control.node_count(), "server started");

    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let reconciler = tokio::spawn(control::run_reconciler(control.clone(), stop_rx.clone()));
    let counter = control.telemetry.tls_refused.clone();
    let refused: Arc<dyn Fn() + Send + Sync> = Arc::new(move || {
        counter.inc();
    });
    let api_tls = control.security.api_tls.clone().map(serve::fixed);
    let gw_tls = control.security.gateway_tls.clone().map(serve::fixed);
    let api = serve::serve(api_listener, api::router(control.clone()), api_tls, stop_rx.clone(), refused.clone());
    let gw = serve::serve(gw_listener, gateway::router(control.clone()), gw_tls, stop_rx.clone(), refused);
    tokio::spawn(async move {
        shutdown.await;
        let _ = stop_tx.send(true);
    });
    tokio::join!(api, gw);
    reconciler.abort();
    Ok(())
}
