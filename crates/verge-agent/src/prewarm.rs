//! Pre-warming: reads keys through from the origin before clients ask,
//! highest priority first. Work comes from the server
//! (`POST /api/v1/cache/prewarm`), from the predictor after each request
//! (keys that tend to follow), and from a once-a-second look at the keys
//! the predictor expects periodically. A warm-up whose deadline passed, or
//! whose key is already cached, is skipped.

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{mpsc, watch};

use crate::edgecache::{now_ms, EdgeCache, Warmup};

/// How far ahead periodic keys are warmed.
const HORIZON: Duration = Duration::from_secs(3);
/// Predictions below this confidence are not worth an origin request.
const MIN_CONFIDENCE: f64 = 0.6;

/// Starts the pre-warming worker for `cache` until shutdown.
pub fn start(cache: Arc<EdgeCache>, mut shutdown: watch::Receiver<bool>) {
    let (tx, mut rx) = mpsc::unbounded_channel::<Warmup>();
    cache.set_warmups(tx);
    tokio::spawn(async move {
        let mut queue: BinaryHeap<(u8, Reverse<u64>, String, Option<u64>)> = BinaryHeap::new();
        let mut seq = 0u64;
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        loop {
            let idle = queue.is_empty();
            tokio::select! {
                _ = async { let _ = shutdown.wait_for(|s| *s).await; } => return,
                w = rx.recv() => match w {
                    Some(w) => {
                        seq += 1;
                        queue.push((w.priority, Reverse(seq), w.key, w.deadline_ms));
                    }
                    None => return,
                },
                _ = tick.tick() => {
                    for p in cache.due(HORIZON.as_millis() as u64).into_iter().filter(|p| p.confidence >= MIN_CONFIDENCE) {
                        seq += 1;
                        queue.push(((p.confidence * 100.0) as u8, Reverse(seq), p.key, Some(p.deadline_ms)));
                    }
                }
                _ = std::future::ready(()), if !idle => {
                    if let Some((_, _, key, deadline)) = queue.pop() {
                        warm(&cache, &key, deadline).await;
                    }
                }
            }
        }
    });
}

/// Reads `key` through unless it is cached or its deadline passed; not a
/// client's request, so the hit ratio does not see it.
async fn warm(cache: &Arc<EdgeCache>, key: &str, deadline: Option<u64>) {
    if deadline.is_some_and(|d| d < now_ms()) || cache.holds_hot(key, now_ms()) {
        return;
    }
    match cache.warm_up(key).await {
        Ok(Some(_)) => {
            cache.counters.prewarmed.fetch_add(1, Ordering::Relaxed);
            tracing::debug!(key, "pre-warmed");
        }
        Ok(None) => tracing::debug!(key, "pre-warm: the origin has no such key"),
        Err(e) => tracing::warn!(key, error = %e, "pre-warm failed"),
    }
}
