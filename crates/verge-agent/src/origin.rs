//! The cache's origin. Read-through: on a miss the agent fetches
//! `ORIGIN/KEY`, stores it (write-behind) and serves it; concurrent misses
//! of one key share one fetch (request coalescing), so a cold key under a
//! burst costs the origin one request, not one per client. Writes may go
//! to the origin too (`PUT ORIGIN/KEY?type=T`): through (before the client
//! is answered) or behind (in the background, retried).

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use axum::body::Bytes;
use tokio::sync::OnceCell;
use verge_client::{url_path as encode_key, Api, ClientError, Method};

use crate::edgecache::{EdgeCache, Entry};

/// Whether cache writes also go to the origin.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum OriginWrites {
    /// The origin is read-only to the cache.
    #[default]
    None,
    /// Stored at the origin before the write is acknowledged.
    Through,
    /// Stored at the origin after the write is acknowledged.
    Behind,
}

/// Attempts of a write-behind to the origin.
const BEHIND_ATTEMPTS: u32 = 3;

/// One fetch in flight, awaited by every miss of its key.
type Flight = Arc<OnceCell<Result<Option<Entry>, String>>>;

/// The origin behind the cache.
pub struct Origin {
    api: Api,
    prefix: String,
    inflight: Mutex<HashMap<String, Flight>>,
    /// Requests made to the origin.
    pub fetches: AtomicU64,
    /// Whether writes go to the origin too.
    pub writes: OriginWrites,
}

/// The header an origin may set to name the value's type.
const TYPE_HEADER: &str = "x-verge-type";

impl Origin {
    /// An origin at `url` (`http://host:port/prefix/`); keys are appended.
    pub fn new(url: &str, writes: OriginWrites) -> Result<Origin, String> {
        let rest = url.strip_prefix("http://").ok_or_else(|| format!("origin {url:?}: only http:// origins are supported"))?;
        let (authority, path) = rest.split_once('/').map_or((rest, ""), |(a, p)| (a, p));
        if authority.is_empty() {
            return Err(format!("origin {url:?} has no host"));
        }
        Ok(Origin {
            api: Api::new(&format!("http://{authority}")),
            prefix: format!("/{}", path),
            inflight: Mutex::new(HashMap::new()),
            fetches: AtomicU64::new(0),
            writes,
        })
    }

    /// The entry for `key` from the origin (shared with concurrent callers),
    /// stored in `cache`; `Ok(None)` when the origin has no such key.
    pub async fn fetch(&self, cache: &Arc<EdgeCache>, key: &str) -> Result<Option<Entry>, String> {
        let flight: Flight = self.inflight.lock().unwrap_or_else(|p| p.into_inner()).entry(key.to_string()).or_default().clone();
        let result = flight.get_or_init(|| self.load(cache, key)).await.clone();
        // The first caller to finish clears the slot; later misses fetch afresh.
        let mut inflight = self.inflight.lock().unwrap_or_else(|p| p.into_inner());
        if inflight.get(key).is_some_and(|f| Arc::ptr_eq(f, &flight)) {
            inflight.remove(key);
        }
        result
    }

    async fn load(&self, cache: &Arc<EdgeCache>, key: &str) -> Result<Option<Entry>, String> {
        self.fetches.fetch_add(1, Ordering::Relaxed);
        let path = format!("{}{}", self.prefix, encode_key(key));
        let (body, kind) = match self.api.call_bytes(Method::GET, &path, Vec::new(), TYPE_HEADER).await {
            Ok(answer) => answer,
            Err(ClientError::Api { status: 404, .. }) => return Ok(None),
            Err(e) => return Err(format!("origin: {e}")),
        };
        let kind = kind.filter(|k| !k.is_empty()).unwrap_or_else(|| "app_data".into());
        let value = Bytes::from(body);
        let meta = cache.put_behind(key, value.clone(), &kind, None).await.map_err(|e| format!("origin value refused: {e}"))?;
        Ok(Some(Entry { meta, value }))
    }
}

impl Origin {
    /// Stores `value` at the origin.
    pub async fn store(&self, key: &str, value: Bytes, kind: &str) -> Result<(), String> {
        let path = format!("{}{}?type={}", self.prefix, encode_key(key), encode_key(kind));
        self.api.call_bytes(Method::PUT, &path, value.to_vec(), "").await.map(|_| ()).map_err(|e| format!("origin: {e}"))
    }
}

/// [`Origin::store`] in the background, retried with back-off.
pub fn store_behind(origin: Arc<EdgeCache>, key: String, value: Bytes, kind: String) {
    tokio::spawn(async move {
        let Some(o) = origin.origin() else { return };
        for attempt in 1..=BEHIND_ATTEMPTS {
            match o.store(&key, value.clone(), &kind).await {
                Ok(()) => return,
                Err(e) if attempt == BEHIND_ATTEMPTS => tracing::warn!(key, error = %e, "write-behind to the origin gave up"),
                Err(_) => tokio::time::sleep(std::time::Duration::from_millis(200 << attempt)).await,
            }
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn origins_and_keys_become_urls() {
        assert!(Origin::new("https://x/", OriginWrites::None).is_err());
        assert!(Origin::new("http:///p", OriginWrites::None).is_err());
        let o = Origin::new("http://127.0.0.1:9/objects/", OriginWrites::Through).unwrap();
        assert_eq!(o.prefix, "/objects/");
    }
}
