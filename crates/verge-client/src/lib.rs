//! A small HTTP client for the Verge API: JSON in and out, API errors
//! turned into errors that carry the server's message. The CLI and the
//! fleet simulator both talk to the server through it.

use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
pub use hyper::Method;
use hyper::Request;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use serde_json::Value;

/// Why a call failed.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The server could not be reached.
    #[error("cannot reach the Verge server at {base}: {err}; is it running? (set --server or VERGE_SERVER)")]
    Unreachable { base: String, err: String },
    /// The URL or request was invalid.
    #[error("invalid request to {0}")]
    Request(String),
    /// The server answered with an error.
    #[error("{message} (HTTP {status})")]
    Api { status: u16, message: String },
    /// The answer could not be read.
    #[error("reading the server's answer: {0}")]
    Body(String),
}

/// Talks JSON to one Verge server.
pub struct Api {
    base: String,
    client: Client<HttpConnector, Full<Bytes>>,
}

impl Api {
    /// A client for the server at `base` (e.g. `http://127.0.0.1:8080`).
    pub fn new(base: &str) -> Api {
        let base = base.trim_end_matches('/').to_string();
        Api { base, client: Client::builder(TokioExecutor::new()).build_http() }
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
        body: Vec<u8>,
        header: &str,
    ) -> Result<(Vec<u8>, Option<String>), ClientError> {
        let (body, value) = self.send(method, path, Bytes::from(body), "application/octet-stream", header).await?;
        Ok((body.to_vec(), value))
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
        let uri = format!("{}{}", self.base, path);
        let req = Request::builder()
            .method(method)
            .uri(&uri)
            .header("content-type", content_type)
            .body(Full::new(body))
            .map_err(|_| ClientError::Request(uri.clone()))?;
        let resp = self.client.request(req).await.map_err(|e| ClientError::Unreachable { base: self.base.clone(), err: e.to_string() })?;
        let status = resp.status();
        let value = resp.headers().get(header).and_then(|v| v.to_str().ok()).map(str::to_string);
        let body = resp.into_body().collect().await.map_err(|e| ClientError::Body(e.to_string()))?.to_bytes();
        if !status.is_success() {
            let json: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
            let message = json["error"]["message"].as_str().map_or_else(|| String::from_utf8_lossy(&body).into_owned(), str::to_string);
            return Err(ClientError::Api { status: status.as_u16(), message });
        }
        Ok((body, value))
    }

    /// `GET path`.
    pub async fn get(&self, path: &str) -> Result<Value, ClientError> {
        self.call(Method::GET, path, None).await
    }
}
