//! The agent's edge cache, served on its data port under `/api/v1/cache/`:
//! a hot tier in memory (the `verge-cache` adaptive policy, counted in
//! bytes) over a warm tier of files under `DATA_DIR/cache/warm`, one per
//! entry, written atomically and sealed by the [`Vault`] when encryption at
//! rest is on. A `PUT` is acknowledged once the warm file is durable, so
//! acknowledged entries survive `kill -9`; an entry whose file fails to
//! open (torn, tampered, sealed under a lost key) is a miss, never garbage.
//!
//! Not here yet (issue 5): read-through to an origin, the cold tier,
//! pre-warming, coherency across nodes and the Redis protocol.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, Path as UrlPath, Query, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use serde::{Deserialize, Serialize};
use serde_json::json;
use verge_cache::{Cache, CacheConfig, EntryOptions, PolicyKind};
use verge_core::Millis;

use crate::vault::Vault;

/// Longest key accepted, bytes.
pub const MAX_KEY: usize = 1024;

/// Sizes of the tiers.
#[derive(Debug, Clone, Copy)]
pub struct CacheSizes {
    /// Hot tier, bytes of values in memory.
    pub memory: u64,
    /// Warm tier, bytes of files on disk.
    pub disk: u64,
    /// Largest value accepted, bytes.
    pub max_value: u64,
}

/// What is stored with a value.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Meta {
    /// The entry's key (also guards against file-name collisions).
    pub key: String,
    /// What the value is: `vm_image`, `ml_model`, `app_data`, …
    #[serde(rename = "type")]
    pub kind: String,
    /// Increases with every write of the key.
    pub version: u64,
    /// When it stops being served, ms since the epoch.
    pub expires_ms: Option<u64>,
}

#[derive(Clone)]
struct Entry {
    meta: Meta,
    value: Bytes,
}

/// Warm files by name, with their size and write order (for eviction).
#[derive(Default)]
struct WarmIndex {
    files: BTreeMap<String, (u64, u64)>,
    order: BTreeMap<u64, String>,
    bytes: u64,
    next: u64,
}

impl WarmIndex {
    fn insert(&mut self, name: String, size: u64) {
        self.remove(&name);
        self.next += 1;
        self.order.insert(self.next, name.clone());
        self.files.insert(name, (size, self.next));
        self.bytes += size;
    }

    fn remove(&mut self, name: &str) {
        if let Some((size, seq)) = self.files.remove(name) {
            self.order.remove(&seq);
            self.bytes -= size;
        }
    }

    /// The oldest-written file, to evict.
    fn oldest(&self) -> Option<String> {
        self.order.values().next().cloned()
    }
}

/// The cache, shared by the handlers.
pub struct EdgeCache {
    hot: Mutex<Cache<String, Entry>>,
    warm_dir: PathBuf,
    warm: Mutex<WarmIndex>,
    vault: Arc<Vault>,
    sizes: CacheSizes,
}

fn now_ms() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64)
}

/// The warm file name of a key: its BLAKE3, so any key maps to a safe name.
fn file_name(key: &str) -> String {
    blake3::hash(key.as_bytes()).to_hex().to_string()
}

/// A warm file: 4-byte big-endian metadata length, metadata JSON, value.
fn encode(meta: &Meta, value: &[u8]) -> Vec<u8> {
    let m = serde_json::to_vec(meta).unwrap_or_default();
    let mut out = Vec::with_capacity(4 + m.len() + value.len());
    out.extend((m.len() as u32).to_be_bytes());
    out.extend(m);
    out.extend(value);
    out
}

fn decode(bytes: &[u8]) -> Option<(Meta, Bytes)> {
    let n = u32::from_be_bytes(bytes.get(..4)?.try_into().ok()?) as usize;
    let meta = serde_json::from_slice(bytes.get(4..4 + n)?).ok()?;
    Some((meta, Bytes::copy_from_slice(bytes.get(4 + n..)?)))
}

impl EdgeCache {
    /// Opens the warm tier under `dir` (removing temporary files a crash
    /// left) with the hot tier empty.
    pub fn open(dir: &Path, vault: Arc<Vault>, sizes: CacheSizes) -> std::io::Result<EdgeCache> {
        let warm_dir = dir.join("warm");
        std::fs::create_dir_all(&warm_dir)?;
        let mut index = WarmIndex::default();
        let mut files: Vec<(std::time::SystemTime, String, u64)> = Vec::new();
        for e in std::fs::read_dir(&warm_dir)?.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            if name.starts_with('.') {
                let _ = std::fs::remove_file(e.path());
                continue;
            }
            if let Ok(md) = e.metadata() {
                files.push((md.modified().unwrap_or(std::time::UNIX_EPOCH), name, md.len()));
            }
        }
        files.sort();
        for (_, name, size) in files {
            index.insert(name, size);
        }
        let config = CacheConfig { max_entries: 1 << 20, max_bytes: Some(sizes.memory.max(1)), policy: PolicyKind::default() };
        let hot = Cache::with_config(config).map_err(std::io::Error::other)?;
        Ok(EdgeCache { hot: Mutex::new(hot), warm_dir, warm: Mutex::new(index), vault, sizes })
    }

    /// The directory the warm tier lives in (re-encrypted on key rotation).
    pub fn warm_dir(&self) -> &Path {
        &self.warm_dir
    }

    fn hot(&self) -> std::sync::MutexGuard<'_, Cache<String, Entry>> {
        self.hot.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn promote(&self, e: Entry, now: u64) {
        let ttl = e.meta.expires_ms.map(|t| t.saturating_sub(now));
        let opts = EntryOptions { bytes: e.value.len().max(1) as u64, ttl, cost: 1 };
        // A value larger than the hot tier stays warm only.
        let _ = self.hot().insert_with(e.meta.key.clone(), e, opts, now, |_, _| {});
    }

    /// Stores `value` durably in the warm tier, then in the hot tier.
    fn put(&self, key: String, value: Bytes, kind: String, ttl_ms: Option<u64>) -> Result<Meta, (StatusCode, &'static str, String)> {
        let now = now_ms();
        let version = self.get(&key, now).map_or(1, |e| e.meta.version + 1);
        let meta = Meta { key, kind, version, expires_ms: ttl_ms.map(|t| now + t) };
        let name = file_name(&meta.key);
        let path = self.warm_dir.join(&name);
        let bytes = encode(&meta, &value);
        let io = |e: std::io::Error| (StatusCode::INTERNAL_SERVER_ERROR, "io", e.to_string());
        self.vault.write(&path, &bytes).map_err(io)?;
        let size = std::fs::metadata(&path).map(|m| m.len()).unwrap_or(bytes.len() as u64);
        let mut warm = self.warm.lock().unwrap_or_else(|p| p.into_inner());
        warm.insert(name.clone(), size);
        while warm.bytes > self.sizes.disk {
            let Some(victim) = warm.oldest().filter(|v| *v != name) else { break };
            let _ = std::fs::remove_file(self.warm_dir.join(&victim));
            warm.remove(&victim);
        }
        drop(warm);
        self.promote(Entry { meta: meta.clone(), value }, now);
        Ok(meta)
    }

    /// The live entry for `key`: from memory, else from its warm file.
    fn get(&self, key: &str, now: u64) -> Option<Entry> {
        if let Some(e) = self.hot().get(key, now) {
            return Some(e.clone());
        }
        let path = self.warm_dir.join(file_name(key));
        let bytes = match self.vault.read(&path) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return None,
            Err(e) => {
                tracing::warn!(key, error = %e, "unreadable cache entry dropped");
                let _ = std::fs::remove_file(&path);
                return None;
            }
        };
        let (meta, value) = decode(&bytes)?;
        if meta.key != key || meta.expires_ms.is_some_and(|t| t <= now) {
            return None;
        }
        let e = Entry { meta, value };
        self.promote(e.clone(), now);
        Some(e)
    }

    fn remove(&self, key: &str) -> bool {
        let in_hot = self.hot().remove(key).is_some();
        let name = file_name(key);
        self.warm.lock().unwrap_or_else(|p| p.into_inner()).remove(&name);
        let on_disk = std::fs::remove_file(self.warm_dir.join(name)).is_ok();
        in_hot || on_disk
    }

    fn stats(&self) -> serde_json::Value {
        let hot = self.hot();
        let s = hot.stats();
        let warm = self.warm.lock().unwrap_or_else(|p| p.into_inner());
        json!({
            "hot": {"entries": hot.len(), "bytes": hot.bytes(), "capacity": self.sizes.memory, "policy": format!("{:?}", hot.active_policy())},
            "warm": {"entries": warm.files.len(), "bytes": warm.bytes, "capacity": self.sizes.disk},
            "hits": s.hits, "misses": s.misses,
            "encrypted": self.vault.sealing(),
        })
    }

    /// The cache's routes.
    pub fn router(self: Arc<Self>) -> Router {
        let body_limit = usize::try_from(self.sizes.max_value).unwrap_or(usize::MAX).saturating_add(64 << 10);
        Router::new()
            .route("/api/v1/cache", get(stats))
            .route("/api/v1/cache/{*key}", get(read).put(write).delete(delete))
            .layer(DefaultBodyLimit::max(body_limit))
            .with_state(self)
    }
}

type Shared = State<Arc<EdgeCache>>;

fn error(status: StatusCode, code: &'static str, message: impl Into<String>) -> Response {
    (status, Json(json!({"error": {"code": code, "message": message.into()}}))).into_response()
}

/// Why a key is refused, as an answer; `None` for a good key.
fn bad_key(key: &str) -> Option<Response> {
    (key.is_empty() || key.len() > MAX_KEY || key.chars().any(char::is_control))
        .then(|| error(StatusCode::BAD_REQUEST, "bad_key", format!("keys are 1-{MAX_KEY} bytes without control characters")))
}

/// `PUT` options in the query string (raw body) or in the JSON body.
#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct PutOptions {
    #[serde(default)]
    ttl: Option<Millis>,
    #[serde(default, rename = "type")]
    kind: Option<String>,
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

async fn write(State(c): Shared, UrlPath(key): UrlPath<String>, Query(q): Query<PutOptions>, headers: HeaderMap, body: Bytes) -> Response {
    if let Some(r) = bad_key(&key) {
        return r;
    }
    let json = headers.get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok()).is_some_and(|t| t.starts_with("application/json"));
    let (value, opts) = if json {
        match serde_json::from_slice::<PutJson>(&body) {
            Ok(p) => (Bytes::from(p.value), PutOptions { ttl: p.ttl, kind: p.kind }),
            Err(e) => return error(StatusCode::BAD_REQUEST, "malformed_json", format!("expected {{\"value\", \"ttl\", \"type\"}}: {e}")),
        }
    } else {
        (body, q)
    };
    if value.len() as u64 > c.sizes.max_value {
        return error(StatusCode::PAYLOAD_TOO_LARGE, "value_too_large", format!("values are at most {} bytes", c.sizes.max_value));
    }
    let kind = opts.kind.unwrap_or_else(|| "app_data".into());
    if kind.is_empty() || kind.len() > 64 || !kind.chars().all(|ch| ch.is_ascii_alphanumeric() || ch == '_' || ch == '-') {
        return error(
            StatusCode::BAD_REQUEST,
            "bad_type",
            "type is 1-64 characters of a-z, 0-9, '_', '-' (e.g. vm_image, ml_model, app_data)",
        );
    }
    let ttl = opts.ttl.map(|t| t.0).filter(|t| *t > 0);
    let c2 = c.clone();
    match tokio::task::spawn_blocking(move || c2.put(key, value, kind, ttl)).await {
        Ok(Ok(meta)) => (StatusCode::CREATED, Json(json!(meta))).into_response(),
        Ok(Err((status, code, msg))) => error(status, code, msg),
        Err(e) => error(StatusCode::INTERNAL_SERVER_ERROR, "internal", e.to_string()),
    }
}

async fn read(State(c): Shared, UrlPath(key): UrlPath<String>) -> Response {
    if let Some(r) = bad_key(&key) {
        return r;
    }
    let (c2, k) = (c.clone(), key.clone());
    let found = tokio::task::spawn_blocking(move || c2.get(&k, now_ms())).await.ok().flatten();
    let Some(e) = found else { return error(StatusCode::NOT_FOUND, "not_found", format!("no cache entry {key:?}")) };
    let mut resp = (StatusCode::OK, e.value).into_response();
    let h = resp.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static("application/octet-stream"));
    if let Ok(v) = HeaderValue::from_str(&e.meta.kind) {
        h.insert("x-verge-type", v);
    }
    h.insert("x-verge-version", HeaderValue::from(e.meta.version));
    resp
}

async fn delete(State(c): Shared, UrlPath(key): UrlPath<String>) -> Response {
    if let Some(r) = bad_key(&key) {
        return r;
    }
    let (c2, k) = (c.clone(), key.clone());
    match tokio::task::spawn_blocking(move || c2.remove(&k)).await {
        Ok(true) => Json(json!({"deleted": key})).into_response(),
        Ok(false) => error(StatusCode::NOT_FOUND, "not_found", format!("no cache entry {key:?}")),
        Err(e) => error(StatusCode::INTERNAL_SERVER_ERROR, "internal", e.to_string()),
    }
}

async fn stats(State(c): Shared) -> Json<serde_json::Value> {
    Json(c.stats())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cache(dir: &Path, disk: u64) -> EdgeCache {
        let vault = Arc::new(Vault::open(Some(&dir.join("keys"))).unwrap());
        EdgeCache::open(&dir.join("cache"), vault, CacheSizes { memory: 1 << 20, disk, max_value: 1 << 20 }).unwrap()
    }

    #[test]
    fn entries_survive_a_restart_sealed_and_versioned() {
        let dir = tempfile::tempdir().unwrap();
        let c = cache(dir.path(), 1 << 20);
        c.put("model/a".into(), Bytes::from_static(b"weights-weights"), "ml_model".into(), None).unwrap();
        let m = c.put("model/a".into(), Bytes::from_static(b"weights-v2"), "ml_model".into(), None).unwrap();
        assert_eq!(m.version, 2);
        drop(c);
        let c = cache(dir.path(), 1 << 20);
        let e = c.get("model/a", now_ms()).unwrap();
        assert_eq!((e.value.as_ref(), e.meta.version, e.meta.kind.as_str()), (&b"weights-v2"[..], 2, "ml_model"));
        let raw = std::fs::read(c.warm_dir.join(file_name("model/a"))).unwrap();
        assert!(!raw.windows(7).any(|w| w == b"weights"), "plaintext on disk");
        assert!(c.remove("model/a") && c.get("model/a", now_ms()).is_none());
    }

    #[test]
    fn expired_entries_are_misses_and_the_warm_tier_stays_in_budget() {
        let dir = tempfile::tempdir().unwrap();
        let c = cache(dir.path(), 600);
        c.put("t".into(), Bytes::from_static(b"x"), "app_data".into(), Some(1)).unwrap();
        assert!(c.get("t", now_ms() + 10).is_none());
        for i in 0..20 {
            c.put(format!("k{i}"), Bytes::from(vec![7u8; 100]), "app_data".into(), None).unwrap();
        }
        assert!(c.warm.lock().unwrap().bytes <= 600);
        assert!(c.get("k19", now_ms()).is_some());
    }
}
