//! The edge cache over HTTP, on the agent's data port: `PUT|GET|DELETE
//! /api/v1/cache/{key}`, `GET /api/v1/cache` (stats) and `GET
//! /api/v1/keys` (one step of a scan of the keys, as Redis's `SCAN`).
//! `PUT` takes the raw value (`?ttl=30s&type=ml_model`) or JSON `{"value",
//! "ttl", "type"}` and is write-through: answered once the entry is
//! durable. `GET` answers with the version as the `ETag` (and `304` to a
//! client that holds it), and serves one byte range (`206`).

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::json;
use verge_client::serve::{json_error, ApiPath, ApiQuery};
use verge_core::Millis;

use crate::edgecache::{CacheWriteError, Durability, EdgeCache};
use crate::origin::OriginWrites;
use verge_cache::rules;

type Shared = State<Arc<EdgeCache>>;

/// The cache's routes.
pub fn router(cache: Arc<EdgeCache>) -> Router {
    let body_limit = usize::try_from(cache.sizes().max_value).unwrap_or(usize::MAX).saturating_add(64 << 10);
    Router::new()
        .route("/metrics", get(metrics))
        .route("/api/v1/cache", get(stats))
        .route("/api/v1/keys", get(keys))
        .route("/api/v1/cache/{*key}", get(read).put(write).delete(delete))
        .layer(DefaultBodyLimit::max(body_limit))
        .with_state(cache)
}

fn error(status: StatusCode, code: &'static str, message: impl Into<String>) -> Response {
    json_error(status, code, &message.into())
}

/// Why a key is refused, as an answer; `None` for a good key.
fn bad_key(key: &str) -> Option<Response> {
    (!rules::valid_key(key)).then(|| error(StatusCode::BAD_REQUEST, "bad_key", rules::KEY_RULE))
}

/// `PUT` options in the query string (raw body) or in the JSON body;
/// `version` marks a replica written elsewhere (kept only if newer).
#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct PutOptions {
    #[serde(default)]
    ttl: Option<Millis>,
    #[serde(default, rename = "type")]
    kind: Option<String>,
    #[serde(default)]
    version: Option<u64>,
}

/// A JSON `PUT` body: `{"value": "...", "ttl": "30s", "type": "app_data"}`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PutJson {
    value: String,
    #[serde(default)]
    ttl: Option<Millis>,
    #[serde(default, rename = "type")]
    kind: Option<String>,
}

async fn write(
    State(c): Shared,
    ApiPath(key): ApiPath<String>,
    ApiQuery(q): ApiQuery<PutOptions>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    if let Some(r) = bad_key(&key) {
        return r;
    }
    let json = headers.get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok()).is_some_and(|t| t.starts_with("application/json"));
    let (value, opts) = if json {
        match serde_json::from_slice::<PutJson>(&body) {
            Ok(p) => (Bytes::from(p.value), PutOptions { ttl: p.ttl, kind: p.kind, version: q.version }),
            Err(e) => return error(StatusCode::BAD_REQUEST, "malformed_json", format!("expected {{\"value\", \"ttl\", \"type\"}}: {e}")),
        }
    } else {
        (body, q)
    };
    let kind = opts.kind.unwrap_or_else(|| "app_data".into());
    let ttl = opts.ttl.map(|t| t.0).filter(|t| *t > 0);
    let version = opts.version;
    // Write-through to the origin: the origin first, so a refused write
    // leaves the cache as it was. Replicas (`version`) are not re-sent.
    let writes = c.origin().filter(|_| version.is_none()).map(|o| o.writes).unwrap_or_default();
    if let Some(o) = c.origin().filter(|_| writes == OriginWrites::Through) {
        if let Err(e) = o.store(&key, value.clone(), &kind).await {
            return error(StatusCode::BAD_GATEWAY, "origin_failed", e);
        }
    }
    let behind = (writes == OriginWrites::Behind).then(|| (c.clone(), key.clone(), value.clone(), kind.clone()));
    let stored = c.blocking(move |c| match version {
        Some(v) => c.put_replica(&key, value, &kind, ttl, v),
        None => c.put(&key, value, &kind, ttl, Durability::WriteThrough),
    });
    match stored.await {
        Some(Ok(meta)) => {
            if let Some((c, key, value, kind)) = behind {
                crate::origin::store_behind(c, key, value, kind);
            }
            (StatusCode::CREATED, Json(json!(*meta))).into_response()
        }
        Some(Err(e @ CacheWriteError::TooLarge(_))) => error(StatusCode::PAYLOAD_TOO_LARGE, "value_too_large", e.to_string()),
        Some(Err(e @ CacheWriteError::Io(_))) => error(StatusCode::INTERNAL_SERVER_ERROR, "io", e.to_string()),
        Some(Err(e)) => error(StatusCode::BAD_REQUEST, "bad_request", e.to_string()),
        None => error(StatusCode::INTERNAL_SERVER_ERROR, "internal", "the write panicked"),
    }
}

/// `GET`: the value, with its version as the `ETag` (a client that
/// already holds that version, `If-None-Match`, gets `304 Not Modified`
/// and no body) and its time left as `Cache-Control: max-age`; one byte
/// range (`Range`, with `If-Range`) gets `206` and just those bytes, so a
/// large model or image download can resume.
async fn read(State(c): Shared, ApiPath(key): ApiPath<String>, headers: HeaderMap) -> Response {
    if let Some(r) = bad_key(&key) {
        return r;
    }
    c.observe(&key);
    let e = match c.lookup(&key).await {
        Ok(Some(e)) => e,
        Ok(None) => return error(StatusCode::NOT_FOUND, "not_found", format!("no cache entry {key:?}")),
        Err(e) => return error(StatusCode::BAD_GATEWAY, "origin_failed", e),
    };
    let etag = format!("\"{}\"", e.meta.version);
    let held = headers
        .get(header::IF_NONE_MATCH)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|tags| tags.split(',').map(|t| t.trim().trim_start_matches("W/")).any(|t| t == etag || t == "*"));
    // A Range holds unless If-Range names another version.
    let range = headers.get(header::RANGE).and_then(|v| v.to_str().ok());
    let range = range.filter(|_| headers.get(header::IF_RANGE).is_none_or(|v| v.as_bytes() == etag.as_bytes()));
    let len = e.value.len();
    let mut resp = match (held, wanted(range, len)) {
        (true, _) => StatusCode::NOT_MODIFIED.into_response(),
        (false, Wanted::Whole) => (StatusCode::OK, e.value).into_response(),
        (false, Wanted::Part(part)) => {
            let content_range = format!("bytes {}-{}/{len}", part.start, part.end - 1);
            (StatusCode::PARTIAL_CONTENT, [(header::CONTENT_RANGE, content_range)], e.value.slice(part)).into_response()
        }
        (false, Wanted::Unsatisfiable) => {
            let mut r = error(StatusCode::RANGE_NOT_SATISFIABLE, "bad_range", format!("the value is {len} bytes"));
            if let Ok(v) = HeaderValue::from_str(&format!("bytes */{len}")) {
                r.headers_mut().insert(header::CONTENT_RANGE, v);
            }
            return r;
        }
    };
    let h = resp.headers_mut();
    if !held {
        h.insert(header::CONTENT_TYPE, HeaderValue::from_static("application/octet-stream"));
        h.insert(header::ACCEPT_RANGES, HeaderValue::from_static("bytes"));
    }
    if let Ok(v) = HeaderValue::from_str(&etag) {
        h.insert(header::ETAG, v);
    }
    if let Some(at) = e.meta.expires_ms {
        let left = at.saturating_sub(crate::edgecache::now_ms()) / 1000;
        if let Ok(v) = HeaderValue::from_str(&format!("max-age={left}")) {
            h.insert(header::CACHE_CONTROL, v);
        }
    }
    if let Ok(v) = HeaderValue::from_str(&e.meta.kind) {
        h.insert("x-verge-type", v);
    }
    h.insert("x-verge-version", HeaderValue::from(e.meta.version));
    resp
}

/// What a `Range` header asks of a value.
#[derive(Debug, PartialEq)]
enum Wanted {
    /// All of it (no range, or one the server may ignore: several ranges,
    /// or one it cannot read).
    Whole,
    /// These bytes.
    Part(std::ops::Range<usize>),
    /// A range that starts past the end.
    Unsatisfiable,
}

/// Reads a `Range` header (RFC 9110: `bytes=first-last`, `bytes=first-`
/// or `bytes=-suffix`) against a value of `len` bytes.
fn wanted(range: Option<&str>, len: usize) -> Wanted {
    let Some((first, last)) =
        range.and_then(|r| r.trim().strip_prefix("bytes=")).filter(|r| !r.contains(',')).and_then(|r| r.split_once('-'))
    else {
        return Wanted::Whole;
    };
    // `Some(None)`: absent; `None`: not a number.
    let number = |s: &str| match s.trim() {
        "" => Some(None),
        n if n.bytes().all(|b| b.is_ascii_digit()) => n.parse::<u64>().ok().map(Some),
        _ => None,
    };
    let len64 = len as u64;
    let part = match (number(first), number(last)) {
        (Some(Some(first)), Some(last)) if last.is_none_or(|l| l >= first) => first..last.map_or(len64, |l| l.saturating_add(1).min(len64)),
        (Some(None), Some(Some(suffix))) => len64.saturating_sub(suffix)..len64,
        _ => return Wanted::Whole,
    };
    if part.start >= part.end {
        return Wanted::Unsatisfiable;
    }
    Wanted::Part(part.start as usize..part.end as usize)
}

async fn delete(State(c): Shared, ApiPath(key): ApiPath<String>) -> Response {
    if let Some(r) = bad_key(&key) {
        return r;
    }
    let k = key.clone();
    match c.blocking(move |c| c.remove(&k)).await {
        Some(true) => Json(json!({"deleted": key})).into_response(),
        Some(false) => error(StatusCode::NOT_FOUND, "not_found", format!("no cache entry {key:?}")),
        None => error(StatusCode::INTERNAL_SERVER_ERROR, "internal", "the removal panicked"),
    }
}

/// Keys listed by one step of `GET /api/v1/keys` when the client does not say.
const KEYS_STEP: usize = 1000;
/// Most files one step covers, whatever the client asks.
const MAX_KEYS_STEP: usize = 100_000;

/// One step of a scan of the node's keys ([`EdgeCache::scan`]):
/// `{"cursor": "N", "keys": [...]}`, the cursor a string (it is 64 bits
/// wide), `"0"` when the scan is done.
async fn keys(State(c): Shared, ApiQuery(q): ApiQuery<verge_proto::KeysStep>) -> Response {
    let count = q.count.unwrap_or(KEYS_STEP).clamp(1, MAX_KEYS_STEP);
    let step = c.blocking(move |c| c.scan(q.cursor, count, q.pattern.as_deref().map(str::as_bytes), crate::edgecache::now_ms()));
    match step.await {
        Some((next, keys)) => Json(json!({"cursor": next.to_string(), "keys": keys})).into_response(),
        None => error(StatusCode::INTERNAL_SERVER_ERROR, "internal", "the scan panicked"),
    }
}

async fn metrics(State(c): Shared) -> Response {
    ([(header::CONTENT_TYPE, "application/openmetrics-text; version=1.0.0; charset=utf-8")], crate::metrics::render(&c)).into_response()
}

async fn stats(State(c): Shared) -> Json<serde_json::Value> {
    Json(c.stats())
}

#[cfg(test)]
mod tests {
    use super::{wanted, Wanted};

    #[test]
    fn byte_ranges_as_rfc_9110_reads_them() {
        assert_eq!(wanted(None, 10), Wanted::Whole);
        assert_eq!(wanted(Some("bytes=0-3"), 10), Wanted::Part(0..4));
        assert_eq!(wanted(Some("bytes=4-"), 10), Wanted::Part(4..10));
        assert_eq!(wanted(Some("bytes=-3"), 10), Wanted::Part(7..10));
        assert_eq!(wanted(Some("bytes=-30"), 10), Wanted::Part(0..10));
        assert_eq!(wanted(Some("bytes=5-99"), 10), Wanted::Part(5..10));
        assert_eq!(wanted(Some("bytes=10-"), 10), Wanted::Unsatisfiable);
        assert_eq!(wanted(Some("bytes=-0"), 10), Wanted::Unsatisfiable);
        assert_eq!(wanted(Some("bytes=0-"), 0), Wanted::Unsatisfiable);
        // What the server may ignore: served whole.
        for ignored in ["bytes=0-1,4-5", "bytes=3-1", "bytes=a-b", "items=0-1", "bytes=-", "bytes=99999999999999999999-"] {
            assert_eq!(wanted(Some(ignored), 10), Wanted::Whole, "{ignored}");
        }
    }
}
