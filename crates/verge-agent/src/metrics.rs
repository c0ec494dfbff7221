//! The agent's `/metrics` (Prometheus/OpenMetrics text, on the data port):
//! the edge cache's tiers, hits, misses, origin traffic, warm-ups and its
//! hottest keys. Values are read from the cache at scrape time.

use std::sync::atomic::Ordering;

use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

use crate::edgecache::EdgeCache;

type Labels = Vec<(String, String)>;

fn counter(v: u64) -> Counter {
    let c = Counter::default();
    c.inc_by(v);
    c
}

/// The exposition text for `cache`.
pub fn render(cache: &EdgeCache) -> String {
    let s = cache.stats();
    let mut registry = Registry::default();
    let verge = registry.sub_registry_with_prefix("verge_cache");
    let hits: Family<Labels, Counter> = Family::default();
    hits.get_or_create(&vec![("tier".into(), "hot".into())]).inc_by(cache.counters.hot_hits.load(Ordering::Relaxed));
    hits.get_or_create(&vec![("tier".into(), "warm".into())]).inc_by(cache.counters.warm_hits.load(Ordering::Relaxed));
    hits.get_or_create(&vec![("tier".into(), "cold".into())]).inc_by(cache.counters.cold_hits.load(Ordering::Relaxed));
    verge.register("hits", "Requests served, by tier", hits);
    verge.register("misses", "Requests for keys no tier held", counter(cache.counters.misses.load(Ordering::Relaxed)));
    verge.register("origin_fetches", "Requests made to the origin (coalesced)", counter(cache.origin_fetches()));
    verge.register("prewarmed", "Keys read through ahead of demand", counter(cache.counters.prewarmed.load(Ordering::Relaxed)));
    let entries: Family<Labels, Gauge> = Family::default();
    let bytes: Family<Labels, Gauge> = Family::default();
    for tier in ["hot", "warm"] {
        let l = vec![("tier".to_string(), tier.to_string())];
        entries.get_or_create(&l).set(s[tier]["entries"].as_i64().unwrap_or(0));
        bytes.get_or_create(&l).set(s[tier]["bytes"].as_i64().unwrap_or(0));
    }
    verge.register("entries", "Entries held, by tier", entries);
    verge.register("bytes", "Bytes held, by tier", bytes);
    let hot: Family<Labels, Gauge> = Family::default();
    for (key, n) in cache.hot_keys() {
        hot.get_or_create(&vec![("key".into(), key)]).set(i64::from(n));
    }
    verge.register("hot_key_requests", "Estimated recent requests of the hottest keys (count-min sketch)", hot);
    let mut out = String::new();
    // Writing into a String cannot fail.
    let _ = encode(&mut out, &registry);
    out
}
