//! Serving an axum router over TCP, with TLS when configured: the accept
//! loop, the handshake (with a deadline, so a silent client cannot hold a
//! task), and the peer's address and verified certificate handed to
//! handlers as request extensions. The server's API and gateway and the
//! agents' data ports all serve through it.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::extract::{ConnectInfo, FromRequestParts, Path, Query};
use axum::http::request::Parts;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Router;
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tower_service::Service;
use verge_security::pki::CertInfo;

/// A query string decoded into `T`. A bad one (an unknown parameter, a
/// value of the wrong kind) is answered 400 with the API's JSON error
/// (`bad_query`), as every other bad input is, instead of axum's plain text.
pub struct ApiQuery<T>(pub T);

impl<S: Send + Sync, T: serde::de::DeserializeOwned> FromRequestParts<S> for ApiQuery<T> {
    type Rejection = Response;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Response> {
        match Query::<T>::from_request_parts(parts, state).await {
            Ok(Query(q)) => Ok(ApiQuery(q)),
            Err(e) => Err(json_error(StatusCode::BAD_REQUEST, "bad_query", &e.body_text())),
        }
    }
}

/// A path parameter decoded into `T`; a bad one (say, percent-encoding
/// that is not UTF-8) is answered 400 with the API's JSON error (`bad_path`).
pub struct ApiPath<T>(pub T);

impl<S: Send + Sync, T: serde::de::DeserializeOwned + Send> FromRequestParts<S> for ApiPath<T> {
    type Rejection = Response;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Response> {
        match Path::<T>::from_request_parts(parts, state).await {
            Ok(Path(p)) => Ok(ApiPath(p)),
            Err(e) => Err(json_error(StatusCode::BAD_REQUEST, "bad_path", &e.body_text())),
        }
    }
}

/// The API's error answer: `{"error": {"code", "message"}}`.
pub fn json_error(status: StatusCode, code: &str, message: &str) -> Response {
    (status, axum::Json(serde_json::json!({"error": {"code": code, "message": message}}))).into_response()
}

/// How long a client may take to finish the TLS handshake.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// The client certificate rustls verified on this connection, if any.
#[derive(Debug, Clone, Default)]
pub struct PeerCert(pub Option<Arc<CertInfo>>);

/// Where a listener gets its TLS settings for each new connection, so a
/// renewed certificate takes effect without a restart.
pub type TlsSource = Arc<std::sync::RwLock<Arc<rustls::ServerConfig>>>;

/// A fixed [`TlsSource`].
pub fn fixed(cfg: Arc<rustls::ServerConfig>) -> TlsSource {
    Arc::new(std::sync::RwLock::new(cfg))
}

/// Serves `router` on `listener` until `stop` turns true. Failed handshakes
/// (plain HTTP to a TLS port, TLS 1.0, an unknown CA) call `refused` and
/// close the connection.
pub async fn serve(
    listener: TcpListener,
    router: Router,
    tls: Option<TlsSource>,
    mut stop: watch::Receiver<bool>,
    refused: Arc<dyn Fn() + Send + Sync>,
) {
    loop {
        let (tcp, peer) = tokio::select! {
            r = listener.accept() => match r {
                Ok(c) => c,
                Err(e) => {
                    // Out of descriptors or similar: back off instead of spinning.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            _ = async { let _ = stop.wait_for(|s| *s).await; } => return,
        };
        let router = router.clone();
        let acceptor = tls.as_ref().map(|t| tokio_rustls::TlsAcceptor::from(t.read().unwrap_or_else(|p| p.into_inner()).clone()));
        let refused = refused.clone();
        tokio::spawn(async move {
            let _ = tcp.set_nodelay(true);
            let Some(acceptor) = acceptor else {
                return connection(TokioIo::new(tcp), router, peer, PeerCert::default()).await;
            };
            match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
                Ok(Ok(tls)) => {
                    let cert = tls.get_ref().1.peer_certificates().and_then(|c| c.first()).and_then(|c| CertInfo::parse(c).ok());
                    connection(TokioIo::new(tls), router, peer, PeerCert(cert.map(Arc::new))).await
                }
                Ok(Err(e)) => {
                    refused();
                    tracing::info!(%peer, error = %e, "TLS handshake refused");
                }
                Err(_) => {
                    refused();
                    tracing::info!(%peer, "TLS handshake timed out");
                }
            }
        });
    }
}

async fn connection<I>(io: TokioIo<I>, router: Router, peer: SocketAddr, cert: PeerCert)
where
    I: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let svc = hyper::service::service_fn(move |req: hyper::Request<Incoming>| {
        let mut req = req.map(Body::new);
        req.extensions_mut().insert(ConnectInfo(peer));
        req.extensions_mut().insert(cert.clone());
        router.clone().call(req)
    });
    if let Err(e) = hyper::server::conn::http1::Builder::new().serve_connection(io, svc).with_upgrades().await {
        tracing::debug!(%peer, error = %e, "connection ended with an error");
    }
}
