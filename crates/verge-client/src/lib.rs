//! HTTP plumbing shared by every Verge process: a small client for the API
//! and agent data ports (JSON in and out, API errors turned into errors
//! that carry the server's message) and, in [`serve`], the TLS-aware server
//! loop. The CLI, the server, the agents and the simulator use it.
//!
//! Connections are HTTP/1.1 over TLS (trusting only the cluster CA and
//! verifying the peer's Verge identity) or plain TCP for `http://` bases;
//! up to [`MAX_IDLE`] idle connections are kept for the next requests, so
//! concurrent callers do not pay a handshake each.

pub mod serve;

use std::sync::{Arc, Mutex};

use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use hyper::client::conn::http1::SendRequest;
pub use hyper::Method;
use hyper::Request;
use hyper_util::rt::TokioIo;
use rustls::pki_types::ServerName;
use serde_json::Value;
use verge_security::pki::{CertInfo, Identity};

/// Why a call failed.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The server could not be reached.
    #[error("cannot reach the Verge server at {base}: {err}; is it running? (set --server or VERGE_SERVER)")]
    Unreachable { base: String, err: String },
    /// The TLS handshake failed or the peer is not who it should be.
    #[error("TLS with {base}: {err}")]
    Tls { base: String, err: String },
    /// The URL or request was invalid.
    #[error("invalid request to {0}")]
    Request(String),
    /// The server answered with an error: its status, its error code (empty
    /// when the body was not the API's JSON error) and message.
    #[error("{message} (HTTP {status})")]
    Api { status: u16, code: String, message: String },
    /// The answer could not be read.
    #[error("reading the server's answer: {0}")]
    Body(String),
}

/// How to secure connections: the rustls settings (trust and our own
/// certificate), the name the peer's certificate must carry, and the Verge
/// identity it must name when that matters (a specific node's data port).
#[derive(Clone)]
pub struct Tls {
    /// Trust and client identity.
    pub config: Arc<rustls::ClientConfig>,
    /// The DNS name verified in the peer's certificate.
    pub server_name: ServerName<'static>,
    /// The identity the peer's certificate must name, if any.
    pub peer: Option<Identity>,
}

/// Talks JSON (or bytes) to one Verge server or agent data port.
pub struct Api {
    base: String,
    authority: String,
    tls: Option<Tls>,
    token: Option<String>,
    idle: Mutex<Vec<SendRequest<Full<Bytes>>>>,
}

/// Idle connections kept per client.
pub const MAX_IDLE: usize = 32;

impl Api {
    /// A client for `base` (`http://host:port`, or `https://…` with [`Api::secure`]).
    pub fn new(base: &str) -> Api {
        let base = base.trim_end_matches('/').to_string();
        let authority = base.split_once("://").map_or(base.as_str(), |(_, r)| r).split('/').next().unwrap_or_default().to_string();
        Api { base, authority, tls: None, token: None, idle: Mutex::new(Vec::new()) }
    }

    /// A client for `https://host:port` (the scheme is added when missing)
    /// that speaks TLS as `tls` says.
    pub fn secure(base: &str, tls: Tls) -> Api {
        let base = base.trim_end_matches('/');
        let base = match base.split_once("://") {
            Some((_, rest)) => format!("https://{rest}"),
            None => format!("https://{base}"),
        };
        Api { tls: Some(tls), ..Api::new(&base) }
    }

    /// Sends `Authorization: Bearer token` with every request.
    pub fn with_token(mut self, token: Option<String>) -> Api {
        self.token = token.map(|t| t.trim().to_string()).filter(|t| !t.is_empty());
        self
    }

    /// The base URL.
    pub fn base(&self) -> &str {
        &self.base
    }

    /// Sends a request and returns the JSON answer; API errors become
    /// [`ClientError::Api`] carrying the server's message.
    pub async fn call(&self, method: Method, path: &str, body: Option<&Value>) -> Result<Value, ClientError> {
        let text = self.call_text(method, path, body).await?;
        Ok(serde_json::from_str(&text).unwrap_or(Value::String(text)))
    }

    /// Sends a request and returns the answer's text (for `/metrics`).
    pub async fn call_text(&self, method: Method, path: &str, body: Option<&Value>) -> Result<String, ClientError> {
        let bytes = body.map(|b| Bytes::from(b.to_string())).unwrap_or_default();
        let (body, _) = self.send(method, path, bytes, "application/json", "").await?;
        Ok(String::from_utf8_lossy(&body).into_owned())
    }

    /// Sends raw bytes and returns the answer's bytes and the value of
    /// `header` if present (binary protocols such as the sync data port).
    pub async fn call_bytes(
        &self,
        method: Method,
        path: &str,
        body: impl Into<Bytes>,
        header: &str,
    ) -> Result<(Vec<u8>, Option<String>), ClientError> {
        let (body, value) = self.send(method, path, body.into(), "application/octet-stream", header).await?;
        Ok((body.to_vec(), value))
    }

    /// A fresh connection: TCP, then TLS with the peer's identity checked.
    async fn connect(&self) -> Result<SendRequest<Full<Bytes>>, ClientError> {
        let unreachable = |e: &dyn std::fmt::Display| ClientError::Unreachable { base: self.base.clone(), err: e.to_string() };
        let tcp = tokio::net::TcpStream::connect(&self.authority).await.map_err(|e| unreachable(&e))?;
        let _ = tcp.set_nodelay(true);
        let Some(tls) = &self.tls else {
            return handshake(TokioIo::new(tcp)).await.map_err(|e| unreachable(&e));
        };
        let tls_err = |err: String| ClientError::Tls { base: self.base.clone(), err };
        // rustls reports a refused handshake (certificate, protocol) as
        // invalid data; anything else is the connection failing under it
        // (a peer restarting), which callers may retry.
        let stream = tokio_rustls::TlsConnector::from(tls.config.clone()).connect(tls.server_name.clone(), tcp).await.map_err(|e| {
            if e.kind() == std::io::ErrorKind::InvalidData {
                tls_err(e.to_string())
            } else {
                unreachable(&e)
            }
        })?;
        if let Some(want) = &tls.peer {
            let got = stream
                .get_ref()
                .1
                .peer_certificates()
                .and_then(|c| c.first())
                .and_then(|c| CertInfo::parse(c).ok())
                .and_then(|i| i.identity);
            if got.as_ref() != Some(want) {
                return Err(tls_err(format!(
                    "expected {want}, the peer's certificate names {}",
                    got.map_or("nobody".into(), |g| g.to_string())
                )));
            }
        }
        handshake(TokioIo::new(stream)).await.map_err(|e| unreachable(&e))
    }

    /// One request; a non-2xx answer becomes [`ClientError::Api`] with the
    /// message from its `{"error":{…}}` body.
    async fn send(
        &self,
        method: Method,
        path: &str,
        body: Bytes,
        content_type: &str,
        header: &str,
    ) -> Result<(Bytes, Option<String>), ClientError> {
        let (sender, resp) = self.request(method, path, body, content_type, &[]).await?;
        let status = resp.status();
        let value = resp.headers().get(header).and_then(|v| v.to_str().ok()).map(str::to_string);
        let body = resp.into_body().collect().await.map_err(|e| ClientError::Body(e.to_string()))?.to_bytes();
        self.keep_idle(sender);
        if !status.is_success() {
            return Err(api_error(status, &body));
        }
        Ok((body, value))
    }

    /// Sends a bodiless request with `headers` added and returns the answer
    /// whatever its status, its body unread: for a proxy that relays status,
    /// headers and body as they come (a large cached value, a byte range).
    pub async fn forward(
        &self,
        method: Method,
        path: &str,
        headers: &[(&str, &str)],
    ) -> Result<hyper::Response<hyper::body::Incoming>, ClientError> {
        // The connection finishes this answer and closes: it is not kept,
        // since the body is read after this returns.
        let (_sender, resp) = self.request(method, path, Bytes::new(), "application/octet-stream", headers).await?;
        Ok(resp)
    }

    /// Sends raw bytes and writes the answer's body to `out` as it arrives,
    /// so a large answer (a sync bundle) is never held in memory; returns
    /// the bytes written. An error answer is read whole, as JSON.
    pub async fn call_to_writer(
        &self,
        method: Method,
        path: &str,
        body: Vec<u8>,
        out: &mut (impl tokio::io::AsyncWrite + Unpin),
    ) -> Result<u64, ClientError> {
        use tokio::io::AsyncWriteExt;
        let (sender, resp) = self.request(method, path, Bytes::from(body), "application/octet-stream", &[]).await?;
        let status = resp.status();
        let mut body = resp.into_body();
        if !status.is_success() {
            let body = body.collect().await.map_err(|e| ClientError::Body(e.to_string()))?.to_bytes();
            self.keep_idle(sender);
            return Err(api_error(status, &body));
        }
        let mut written = 0u64;
        while let Some(frame) = body.frame().await {
            let frame = frame.map_err(|e| ClientError::Body(e.to_string()))?;
            if let Ok(data) = frame.into_data() {
                out.write_all(&data).await.map_err(|e| ClientError::Body(format!("writing the answer: {e}")))?;
                written += data.len() as u64;
            }
        }
        out.flush().await.map_err(|e| ClientError::Body(format!("writing the answer: {e}")))?;
        self.keep_idle(sender);
        Ok(written)
    }

    /// Sends one request on a kept connection, or a fresh one, and returns
    /// the connection with the answer (its body not yet read).
    async fn request(
        &self,
        method: Method,
        path: &str,
        body: Bytes,
        content_type: &str,
        extra: &[(&str, &str)],
    ) -> Result<(SendRequest<Full<Bytes>>, hyper::Response<hyper::body::Incoming>), ClientError> {
        let make = || {
            let mut req =
                Request::builder().method(method.clone()).uri(path).header("host", &self.authority).header("content-type", content_type);
            if let Some(t) = &self.token {
                req = req.header("authorization", format!("Bearer {t}"));
            }
            for (name, value) in extra {
                req = req.header(*name, *value);
            }
            req.body(Full::new(body.clone())).map_err(|_| ClientError::Request(format!("{}{path}", self.base)))
        };
        let unreachable = |e: hyper::Error| ClientError::Unreachable { base: self.base.clone(), err: e.to_string() };
        let idle = {
            let mut pool = self.idle.lock().unwrap_or_else(|p| p.into_inner());
            pool.retain(|s| !s.is_closed());
            pool.pop()
        };
        // A kept connection the peer closed meanwhile fails at once; the
        // request then goes out once more on a fresh one.
        let reused = match idle {
            Some(mut s) => match s.ready().await {
                Ok(()) => s.send_request(make()?).await.ok().map(|r| (s, r)),
                Err(_) => None,
            },
            None => None,
        };
        match reused {
            Some(pair) => Ok(pair),
            None => {
                let mut s = self.connect().await?;
                s.ready().await.map_err(unreachable)?;
                let r = s.send_request(make()?).await.map_err(unreachable)?;
                Ok((s, r))
            }
        }
    }

    /// Keeps a connection whose answer was read whole for the next request.
    fn keep_idle(&self, sender: SendRequest<Full<Bytes>>) {
        let mut pool = self.idle.lock().unwrap_or_else(|p| p.into_inner());
        if pool.len() < MAX_IDLE {
            pool.push(sender);
        }
    }

    /// `GET path`.
    pub async fn get(&self, path: &str) -> Result<Value, ClientError> {
        self.call(Method::GET, path, None).await
    }
}

/// The error an answer with a non-2xx `status` and `body` stands for (also
/// for answers read by other clients, as the agent's WebSocket handshake).
pub fn api_error(status: hyper::StatusCode, body: &[u8]) -> ClientError {
    let json: Value = serde_json::from_slice(body).unwrap_or(Value::Null);
    let message = json["error"]["message"].as_str().map_or_else(|| String::from_utf8_lossy(body).into_owned(), str::to_string);
    let code = json["error"]["code"].as_str().unwrap_or_default().to_string();
    ClientError::Api { status: status.as_u16(), code, message }
}

/// `s` as a URL path: unreserved characters and `/` kept, the rest
/// percent-encoded (cache keys in URLs).
pub fn url_path(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~/".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// HTTP/1.1 over an established stream; the connection task runs until
/// the peer or the last sender closes it.
async fn handshake<I>(io: TokioIo<I>) -> Result<SendRequest<Full<Bytes>>, hyper::Error>
where
    I: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let (sender, conn) = hyper::client::conn::http1::handshake(io).await?;
    tokio::spawn(async move {
        let _ = conn.await;
    });
    Ok(sender)
}

#[cfg(test)]
mod tests {
    #[test]
    fn paths_are_percent_encoded() {
        assert_eq!(super::url_path("models/a b?c%"), "models/a%20b%3Fc%25");
    }
}
