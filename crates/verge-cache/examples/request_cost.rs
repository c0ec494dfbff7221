//! One cache, one trace, one loop: a probe for measuring what a request
//! costs in instructions and cache misses under `valgrind --tool=cachegrind`,
//! which counts the same on a busy machine as on an idle one (wall-clock
//! figures on a shared VM swing by 2×).
//!
//! ```sh
//! cargo build --release -p verge-cache --example request_cost
//! request_cost hit|replay[-strings]|replay-sync CONTENDER TRACE [CAPACITY] [PASSES]
//! ```
//!
//! `hit` fills a cache as large as the trace's key set, then looks every
//! request up (all hits); `replay` runs get-then-insert-on-miss at
//! `CAPACITY`. With `-strings`, each integer key becomes a URL of about 60
//! bytes (`String` keys, as an edge cache's are). `replay-sync` replays
//! through the thread-safe caches (one thread, 8 shards: the lock and
//! shard overhead). CONTENDER is a Verge
//! policy name, `quick_cache` or `hashmap` (a `std` map with the same
//! hasher, `hit` only). TRACE holds one integer
//! key per line, or little-endian u64s when it ends in `.u64`. Run it with
//! 1 and 2 passes under cachegrind: the difference, divided by the trace
//! length, is the cost of one request without the loading and filling.

use std::collections::HashMap;
use std::hash::Hash;
use std::time::{Duration, Instant};
use verge_cache::{Cache, CacheConfig, FixedState, PolicyKind, SyncCache};

/// The seed of `verge bench cache`, so that sampling matches its runs.
const SEED: u64 = 0x7665_7267_6521;

fn load(path: &str) -> Result<Vec<u64>, String> {
    let bytes = std::fs::read(path).map_err(|e| format!("cannot read {path}: {e}"))?;
    if path.ends_with(".u64") {
        if bytes.len() % 8 != 0 {
            return Err(format!("{path}: not a whole number of u64 keys"));
        }
        return Ok(bytes.chunks_exact(8).map(|c| u64::from_le_bytes(c.try_into().unwrap_or([0; 8]))).collect());
    }
    let text = String::from_utf8(bytes).map_err(|_| format!("{path}: not UTF-8 text"))?;
    text.lines().filter(|l| !l.trim().is_empty()).map(|l| l.trim().parse().map_err(|_| format!("{path}: {l:?} is not a key"))).collect()
}

fn run(args: &[String]) -> Result<(), String> {
    let [mode, contender, trace, rest @ ..] = args else {
        return Err("usage: request_cost hit|replay[-strings]|replay-sync CONTENDER TRACE [CAPACITY] [PASSES]".into());
    };
    let keys = load(trace)?;
    let mut unique = keys.clone();
    unique.sort_unstable();
    unique.dedup();
    let (hit, strings, sync) = match mode.as_str() {
        "hit" => (true, false, false),
        "replay" => (false, false, false),
        "hit-strings" => (true, true, false),
        "replay-strings" => (false, true, false),
        "replay-sync" => (false, false, true),
        other => return Err(format!("unknown mode {other:?}: hit, replay, hit-strings, replay-strings or replay-sync")),
    };
    let number = |i: usize, default: usize| rest.get(i).map_or(Ok(default), |s| s.parse().map_err(|_| format!("{s:?} is not a number")));
    let capacity = if hit { unique.len() } else { number(0, 0)? };
    let passes = number(1, 1)?;
    if capacity == 0 || passes == 0 {
        return Err("CAPACITY and PASSES must be at least 1".into());
    }
    let (hits, elapsed) = if sync {
        measure_sync(contender, &keys, capacity, passes)?
    } else if strings {
        // URL-like keys of about 60 bytes, as an edge cache's keys are.
        let keys: Vec<String> = keys.iter().map(|k| format!("https://origin.example.com/assets/v2/objects/{k}/payload.bin")).collect();
        measure(contender, &keys, hit, capacity, passes)?
    } else {
        measure(contender, &keys, hit, capacity, passes)?
    };
    let requests = (keys.len() * passes) as f64;
    println!(
        "{mode} {contender} capacity {capacity}: hit ratio {:.2} %, {:.1} Mops/s",
        100.0 * hits as f64 / requests,
        requests / elapsed.as_secs_f64().max(1e-9) / 1e6
    );
    Ok(())
}

/// Fills a cache of `capacity` (with every key when `hit`), then times
/// `passes` over `keys` (get, insert on a miss); returns hits and the time.
fn measure<K: Hash + Eq + Clone>(
    contender: &str,
    keys: &[K],
    hit: bool,
    capacity: usize,
    passes: usize,
) -> Result<(u64, Duration), String> {
    match contender {
        "hashmap" if hit => {
            let mut map: HashMap<K, u64, FixedState> = HashMap::with_capacity_and_hasher(capacity, FixedState::with_seed(SEED));
            for k in keys {
                map.insert(k.clone(), 0);
            }
            let start = Instant::now();
            let hits = (0..passes).map(|_| keys.iter().filter(|k| map.contains_key(*k)).count() as u64).sum();
            Ok((hits, start.elapsed()))
        }
        "quick_cache" => {
            let mut cache = quick_cache::unsync::Cache::new(capacity);
            if hit {
                keys.iter().for_each(|k| cache.insert(k.clone(), 0u64));
            }
            replay(keys, passes, |k| {
                let hit = cache.get(k).is_some();
                if !hit {
                    cache.insert(k.clone(), 0);
                }
                Ok(hit)
            })
        }
        policy => {
            let mut cache = Cache::with_seed(config(policy, capacity)?, SEED).map_err(|e| e.to_string())?;
            if hit {
                for k in keys {
                    cache.insert(k.clone(), 0u64, 0).map_err(|e| e.to_string())?;
                }
            }
            replay(keys, passes, |k| {
                let hit = cache.get(k, 0).is_some();
                if !hit {
                    cache.insert(k.clone(), 0, 0).map_err(|e| e.to_string())?;
                }
                Ok(hit)
            })
        }
    }
}

/// [`measure`]'s replay through the thread-safe caches, on one thread
/// with 8 shards (as `verge bench cache --threads 2` builds them).
fn measure_sync(contender: &str, keys: &[u64], capacity: usize, passes: usize) -> Result<(u64, Duration), String> {
    if contender == "quick_cache" {
        let cache = quick_cache::sync::Cache::new(capacity);
        return replay(keys, passes, |k| {
            let hit = cache.get(k).is_some();
            if !hit {
                cache.insert(*k, 0u64);
            }
            Ok(hit)
        });
    }
    let cache = SyncCache::with_hasher(config(contender, capacity)?, 8, FixedState::with_seed(SEED)).map_err(|e| e.to_string())?;
    replay(keys, passes, |k| {
        let hit = cache.get(k, 0).is_some();
        if !hit {
            cache.insert(*k, 0, 0).map_err(|e| e.to_string())?;
        }
        Ok(hit)
    })
}

/// A cache of `capacity` entries with the Verge policy named `policy`.
fn config(policy: &str, capacity: usize) -> Result<CacheConfig, String> {
    let kind: PolicyKind = policy.parse().map_err(|e| format!("{e}"))?;
    Ok(CacheConfig { max_entries: capacity, max_bytes: None, policy: kind })
}

/// Times `passes` over `keys` through `request` (a get, and an insert on
/// a miss; true on a hit); returns the hits and the time.
fn replay<K>(keys: &[K], passes: usize, mut request: impl FnMut(&K) -> Result<bool, String>) -> Result<(u64, Duration), String> {
    let mut hits = 0u64;
    let start = Instant::now();
    for _ in 0..passes {
        for k in keys {
            hits += u64::from(request(k)?);
        }
    }
    Ok((hits, start.elapsed()))
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if let Err(e) = run(&args) {
        eprintln!("request_cost: {e}");
        std::process::exit(2);
    }
}
