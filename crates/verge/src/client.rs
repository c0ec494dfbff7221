//! A small HTTP client for the Verge API, used by the CLI commands.

use anyhow::{anyhow, bail, Context, Result};
use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use hyper::{Method, Request};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use serde_json::Value;

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
    /// `anyhow` errors carrying the server's message.
    pub async fn call(&self, method: Method, path: &str, body: Option<&Value>) -> Result<Value> {
        let uri = format!("{}{}", self.base, path);
        let bytes = body.map(|b| Bytes::from(b.to_string())).unwrap_or_default();
        let req = Request::builder()
            .method(method)
            .uri(&uri)
            .header("content-type", "application/json")
            .body(Full::new(bytes))
            .with_context(|| format!("invalid server URL {}", self.base))?;
        let resp =
            self.client.request(req).await.map_err(|e| {
                anyhow!("cannot reach the Verge server at {}: {e}; is it running? (set --server or VERGE_SERVER)", self.base)
            })?;
        let status = resp.status();
        let body = resp.into_body().collect().await.context("reading the server's answer")?.to_bytes();
        let value: Value = serde_json::from_slice(&body).unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&body).into_owned()));
        if !status.is_success() {
            let msg = value["error"]["message"].as_str().map(str::to_string).unwrap_or_else(|| value.to_string());
            bail!("{msg} (HTTP {})", status.as_u16());
        }
        Ok(value)
    }

    /// `GET path`.
    pub async fn get(&self, path: &str) -> Result<Value> {
        self.call(Method::GET, path, None).await
    }
}
