//! `verge bench cache`: replays a trace through every eviction policy.
//!
//! Every request is a `get`, followed by an insert on a miss. Verge's
//! policies run side by side with moka, quick_cache and the lru crate in the
//! same harness and the same process, on a trace loaded once into memory.

use anyhow::{bail, Context};
use std::collections::HashMap;
use std::fmt::Write as _;
use std::io::{BufRead, BufReader, Read};
use std::num::NonZeroUsize;
use std::path::{Path, PathBuf};
use std::time::Instant;
use verge_cache::{Cache, CacheConfig, FixedState, PolicyKind, SyncCache};

/// Default hash seed, so sampling in the adaptive policy is reproducible.
const SEED: u64 = 0x7665_7267_6521;
/// Rounds of the hit-path measurement (medians are reported).
const HIT_PATH_ROUNDS: usize = 5;

/// Arguments of `verge bench cache`.
#[derive(clap::Args)]
pub struct CacheBenchArgs {
    /// Trace file (repeat for several traces).
    #[arg(long = "trace", required = true)]
    traces: Vec<PathBuf>,
    /// `keys`: one unsigned integer per line (zstd-compressed when the name ends in .zst); `u64`: little-endian binary.
    #[arg(long, value_enum, default_value_t = TraceFormat::Keys)]
    format: TraceFormat,
    /// Cache capacities in entries, comma separated.
    #[arg(long, value_delimiter = ',', required = true)]
    capacity: Vec<usize>,
    /// Policies to run, comma separated: a Verge policy (lru, lfu, fifo, ttl, arc, gdsf, s3fifo, sieve, wtinylfu, lirs,
    /// adaptive), moka, quick_cache, lru_crate, or `all`.
    #[arg(long, value_delimiter = ',', default_value = "all")]
    policy: Vec<String>,
    /// Print one JSON object per line instead of tables.
    #[arg(long)]
    json: bool,
    /// Also measure the hit path (every key resident) against a plain hash map and quick_cache,
    /// in interleaved rounds (medians, and each round's share of the map's speed).
    #[arg(long)]
    hit_path: bool,
    /// Also measure the thread-safe caches with this many threads (0: skip).
    #[arg(long, default_value_t = 0)]
    threads: usize,
    /// Hash seed of Verge's caches, the thread-safe ones included (whose
    /// threads still interleave differently every run). The adaptive policy
    /// samples keys by hash, so another seed shows how much a figure owes
    /// to the sample.
    #[arg(long, default_value_t = SEED)]
    seed: u64,
}

/// How a trace file is encoded.
#[derive(Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum TraceFormat {
    /// One decimal key per line.
    Keys,
    /// Little-endian u64 keys, back to back.
    U64,
}

/// A cache under test: a Verge policy or one of the reference crates.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Contender {
    Verge(PolicyKind),
    Moka,
    QuickCache,
    LruCrate,
}

impl Contender {
    fn name(self) -> &'static str {
        match self {
            Contender::Verge(k) => k.name(),
            Contender::Moka => "moka",
            Contender::QuickCache => "quick_cache",
            Contender::LruCrate => "lru_crate",
        }
    }

    fn all() -> Vec<Contender> {
        let mut v: Vec<Contender> = PolicyKind::ALL.into_iter().map(Contender::Verge).collect();
        v.extend([Contender::Moka, Contender::QuickCache, Contender::LruCrate]);
        v
    }

    fn parse(s: &str) -> anyhow::Result<Vec<Contender>> {
        Ok(match s.trim().to_ascii_lowercase().as_str() {
            "all" => Contender::all(),
            "moka" => vec![Contender::Moka],
            "quick_cache" | "quickcache" | "quick-cache" => vec![Contender::QuickCache],
            "lru_crate" | "lru-crate" => vec![Contender::LruCrate],
            other => vec![Contender::Verge(other.parse().with_context(|| format!("--policy {s:?}: not a known policy"))?)],
        })
    }
}

/// One measured point.
struct Point {
    trace: String,
    capacity: usize,
    policy: &'static str,
    hit_ratio: f64,
    mops: f64,
}

/// Runs the cache benchmark.
pub fn run(args: CacheBenchArgs) -> anyhow::Result<()> {
    if let Some(i) = args.capacity.iter().position(|&c| c == 0) {
        bail!("--capacity: value #{} is 0; a cache must hold at least one entry", i + 1);
    }
    let mut contenders = Vec::new();
    for p in &args.policy {
        for c in Contender::parse(p)? {
            if !contenders.contains(&c) {
                contenders.push(c);
            }
        }
    }
    let mut points = Vec::new();
    for path in &args.traces {
        let keys = load_trace(path, args.format)?;
        let trace = trace_name(path);
        let unique = count_unique(&keys);
        if !args.json {
            println!("\ntrace {trace}: {} requests, {unique} unique keys", keys.len());
        }
        let mut rows = Vec::new();
        for &capacity in &args.capacity {
            for &c in &contenders {
                let (hits, secs) = replay(c, capacity, &keys, args.seed)?;
                let p = Point {
                    trace: trace.clone(),
                    capacity,
                    policy: c.name(),
                    hit_ratio: 100.0 * hits as f64 / keys.len() as f64,
                    mops: keys.len() as f64 / secs / 1e6,
                };
                if args.json {
                    print_json(&p);
                }
                rows.push(p);
            }
        }
        if !args.json {
            print_trace_table(&rows, &args.capacity, &contenders);
        }
        points.extend(rows);
        if args.hit_path {
            hit_path(&trace, &keys, unique, args.json, args.seed)?;
        }
        if args.threads > 0 {
            threaded(&trace, &keys, &args.capacity, args.threads, args.json, args.seed)?;
        }
    }
    if !args.json {
        print_summary(&points, &contenders);
    }
    Ok(())
}

fn trace_name(path: &Path) -> String {
    let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_else(|| path.display().to_string());
    name.trim_end_matches(".zst").trim_end_matches(".keys").trim_end_matches(".u64").to_string()
}

/// Reads a whole trace into memory.
fn load_trace(path: &Path, format: TraceFormat) -> anyhow::Result<Vec<u64>> {
    let file = std::fs::File::open(path).with_context(|| format!("cannot open trace {}", path.display()))?;
    let compressed = path.extension().is_some_and(|e| e == "zst");
    let reader: Box<dyn Read> = if compressed {
        Box::new(zstd::stream::read::Decoder::new(file).with_context(|| format!("cannot start zstd decoding of {}", path.display()))?)
    } else {
        Box::new(file)
    };
    let keys = match format {
        TraceFormat::Keys => parse_keys(BufReader::with_capacity(1 << 20, reader), path)?,
        TraceFormat::U64 => parse_u64(reader, path)?,
    };
    if keys.is_empty() {
        bail!("trace {} holds no requests", path.display());
    }
    Ok(keys)
}

fn parse_keys(reader: impl BufRead, path: &Path) -> anyhow::Result<Vec<u64>> {
    let mut keys = Vec::new();
    for (i, line) in reader.lines().enumerate() {
        let line = line.with_context(|| format!("cannot read {} (line {})", path.display(), i + 1))?;
        let t = line.trim();
        if t.is_empty() {
            continue;
        }
        let k = t.parse::<u64>().with_context(|| format!("{}:{}: {t:?} is not an unsigned integer key", path.display(), i + 1))?;
        keys.push(k);
    }
    Ok(keys)
}

fn parse_u64(mut reader: impl Read, path: &Path) -> anyhow::Result<Vec<u64>> {
    let mut bytes = Vec::new();
    reader.read_to_end(&mut bytes).with_context(|| format!("cannot read {}", path.display()))?;
    if bytes.len() % 8 != 0 {
        bail!("{}: {} bytes is not a whole number of little-endian u64 keys", path.display(), bytes.len());
    }
    Ok(bytes.chunks_exact(8).map(|c| u64::from_le_bytes([c[0], c[1], c[2], c[3], c[4], c[5], c[6], c[7]])).collect())
}

fn count_unique(keys: &[u64]) -> usize {
    let mut seen = std::collections::HashSet::with_capacity(keys.len() / 4);
    keys.iter().filter(|k| seen.insert(**k)).count()
}

/// Times one pass of `keys` through `access`, which looks a key up,
/// inserts it on a miss and says whether it hit; returns hits and seconds.
fn timed(keys: &[u64], mut access: impl FnMut(u64) -> bool) -> (u64, f64) {
    let start = Instant::now();
    let hits = keys.iter().filter(|&&k| access(k)).count() as u64;
    (hits, start.elapsed().as_secs_f64().max(1e-9))
}

/// Replays `keys` through a fresh cache; returns hits and seconds.
fn replay(c: Contender, capacity: usize, keys: &[u64], seed: u64) -> anyhow::Result<(u64, f64)> {
    Ok(match c {
        Contender::Verge(kind) => {
            let config = CacheConfig { max_entries: capacity, max_bytes: None, policy: kind };
            let mut cache = Cache::with_seed(config, seed)?;
            let mut failed = None;
            let result = timed(keys, |k| {
                cache.get(&k, 0).is_some() || {
                    if let Err(e) = cache.insert(k, k, 0) {
                        failed.get_or_insert(e);
                    }
                    false
                }
            });
            if let Some(e) = failed {
                return Err(e.into());
            }
            result
        }
        Contender::Moka => {
            let cache = moka::sync::Cache::new(capacity as u64);
            timed(keys, |k| {
                cache.get(&k).is_some() || {
                    cache.insert(k, k);
                    // Apply the insert (and its eviction) now, so moka never
                    // holds more than `capacity` entries when it is asked next.
                    cache.run_pending_tasks();
                    false
                }
            })
        }
        Contender::QuickCache => {
            let mut cache = quick_cache::unsync::Cache::new(capacity);
            timed(keys, |k| {
                cache.get(&k).is_some() || {
                    cache.insert(k, k);
                    false
                }
            })
        }
        Contender::LruCrate => {
            let cap = NonZeroUsize::new(capacity).context("capacity must be at least 1")?;
            let mut cache = lru::LruCache::new(cap);
            timed(keys, |k| {
                cache.get(&k).is_some() || {
                    cache.put(k, k);
                    false
                }
            })
        }
    })
}

/// Lookups only, every key resident: the cost of a hit.
fn hit_path(trace: &str, keys: &[u64], unique: usize, json: bool, seed: u64) -> anyhow::Result<()> {
    let time = |f: &mut dyn FnMut(u64) -> bool| {
        let start = Instant::now();
        let mut found = 0u64;
        for &k in keys {
            found += u64::from(f(k));
        }
        std::hint::black_box(found);
        keys.len() as f64 / start.elapsed().as_secs_f64().max(1e-9) / 1e6
    };
    // A plain std map with the same hasher the caches use.
    let mut map: HashMap<u64, u64, FixedState> = HashMap::with_capacity_and_hasher(unique, FixedState::with_seed(seed));
    let mut caches = Vec::new();
    for kind in [PolicyKind::Lru, PolicyKind::S3Fifo, PolicyKind::WTinyLfu, PolicyKind::Lirs, PolicyKind::Adaptive] {
        caches.push((kind.name(), Cache::with_seed(CacheConfig { max_entries: unique, max_bytes: None, policy: kind }, seed)?));
    }
    let mut qc = quick_cache::unsync::Cache::new(unique);
    for &k in keys {
        map.insert(k, k);
        qc.insert(k, k);
        for (_, cache) in &mut caches {
            cache.insert(k, k, 0)?;
        }
    }
    // Every round times each contender once, in turn, so that within a
    // round all of them run on the same (noisy) machine; ratios to the
    // map are taken per round, and medians reported.
    let mut names = vec!["hashmap"];
    names.extend(caches.iter().map(|(name, _)| *name));
    names.push("quick_cache");
    let mut mops: Vec<Vec<f64>> = vec![Vec::new(); names.len()];
    for _ in 0..HIT_PATH_ROUNDS {
        mops[0].push(time(&mut |k| map.contains_key(&k)));
        for (i, (_, cache)) in caches.iter_mut().enumerate() {
            mops[i + 1].push(time(&mut |k| cache.get(&k, 0).is_some()));
        }
        mops[names.len() - 1].push(time(&mut |k| qc.get(&k).is_some()));
    }
    let base = mops[0].clone();
    for (name, runs) in names.iter().zip(&mops) {
        let mut ratios: Vec<f64> = runs.iter().zip(&base).map(|(m, b)| 100.0 * m / b).collect();
        let ratio = median(&mut ratios);
        let (low, high) = (ratios[0], ratios[ratios.len() - 1]);
        let median_mops = median(&mut runs.clone());
        if json {
            println!(
                "{}",
                serde_json::json!({"trace": trace, "capacity": unique, "policy": format!("hit-path/{name}"), "hit_ratio": 100.0, "mops": median_mops, "pct_of_hashmap": ratio})
            );
        } else {
            println!("  hit path {name:<12} {median_mops:>8.1} Mops/s  ({ratio:>5.1} % of a HashMap lookup; rounds {low:.0}–{high:.0} %)");
        }
    }
    Ok(())
}

/// The middle value of `values` (sorted in place; the upper middle for an even count).
fn median(values: &mut [f64]) -> f64 {
    values.sort_by(f64::total_cmp);
    values.get(values.len() / 2).copied().unwrap_or(0.0)
}

/// The thread-safe caches, `threads` threads each replaying the trace from
/// its own offset; Verge's hash with `seed`.
fn threaded(trace: &str, keys: &[u64], capacities: &[usize], threads: usize, json: bool, seed: u64) -> anyhow::Result<()> {
    for &capacity in capacities {
        let offsets: Vec<usize> = (0..threads).map(|t| t * keys.len() / threads).collect();
        let run = |access: &(dyn Fn(u64) -> bool + Sync)| {
            let start = Instant::now();
            let hits: u64 = std::thread::scope(|s| {
                let handles: Vec<_> = offsets
                    .iter()
                    .map(|&off| {
                        s.spawn(move || {
                            let mut h = 0u64;
                            for &k in keys[off..].iter().chain(&keys[..off]) {
                                h += u64::from(access(k));
                            }
                            h
                        })
                    })
                    .collect();
                handles.into_iter().map(|h| h.join().unwrap_or(0)).sum()
            });
            let total = (keys.len() * threads) as f64;
            (100.0 * hits as f64 / total, total / start.elapsed().as_secs_f64().max(1e-9) / 1e6)
        };
        let shards = (threads * 4).next_power_of_two();
        let sync = |policy| {
            SyncCache::with_hasher(CacheConfig { max_entries: capacity, max_bytes: None, policy }, shards, FixedState::with_seed(seed))
        };
        let verge: SyncCache<u64, u64, FixedState> = sync(PolicyKind::Adaptive)?;
        let verge_lru: SyncCache<u64, u64, FixedState> = sync(PolicyKind::Lru)?;
        let qc = quick_cache::sync::Cache::<u64, u64>::new(capacity);
        let mk = moka::sync::Cache::<u64, u64>::new(capacity as u64);
        let results = [
            ("sync/adaptive", run(&|k| verge.get(&k, 0).is_some() || verge.insert(k, k, 0).map(|_| false).unwrap_or(false))),
            ("sync/lru", run(&|k| verge_lru.get(&k, 0).is_some() || verge_lru.insert(k, k, 0).map(|_| false).unwrap_or(false))),
            (
                "sync/quick_cache",
                run(&|k| {
                    qc.get(&k).is_some() || {
                        qc.insert(k, k);
                        false
                    }
                }),
            ),
            (
                "sync/moka",
                run(&|k| {
                    mk.get(&k).is_some() || {
                        mk.insert(k, k);
                        false
                    }
                }),
            ),
        ];
        for (name, (hit_ratio, mops)) in results {
            if json {
                println!(
                    "{}",
                    serde_json::json!({"trace": trace, "capacity": capacity, "policy": name, "hit_ratio": hit_ratio, "mops": mops, "threads": threads})
                );
            } else {
                println!("  {threads} threads, capacity {capacity}: {name:<18} hit {hit_ratio:>6.2} %  {mops:>8.1} Mops/s");
            }
        }
    }
    Ok(())
}

fn print_json(p: &Point) {
    println!(
        "{}",
        serde_json::json!({"trace": p.trace, "capacity": p.capacity, "policy": p.policy, "hit_ratio": p.hit_ratio, "mops": p.mops})
    );
}

fn print_trace_table(rows: &[Point], capacities: &[usize], contenders: &[Contender]) {
    let mut out = format!("{:<12}", "policy");
    for c in capacities {
        let _ = write!(out, " | {:>18}", format!("cap {c}: hit% Mops"));
    }
    println!("{out}");
    for c in contenders {
        let mut line = format!("{:<12}", c.name());
        for &cap in capacities {
            if let Some(p) = rows.iter().find(|p| p.capacity == cap && p.policy == c.name()) {
                let _ = write!(line, " | {:>9.2} {:>8.1}", p.hit_ratio, p.mops);
            }
        }
        println!("{line}");
    }
}

fn print_summary(points: &[Point], contenders: &[Contender]) {
    let mut keys: Vec<(String, usize)> = Vec::new();
    for p in points {
        if !keys.contains(&(p.trace.clone(), p.capacity)) {
            keys.push((p.trace.clone(), p.capacity));
        }
    }
    println!("\nmean hit ratio over {} (trace, capacity) points", keys.len());
    let mut means: Vec<(&str, f64, f64)> = contenders
        .iter()
        .map(|c| {
            let mine: Vec<&Point> = points.iter().filter(|p| p.policy == c.name()).collect();
            let n = mine.len().max(1) as f64;
            (c.name(), mine.iter().map(|p| p.hit_ratio).sum::<f64>() / n, mine.iter().map(|p| p.mops).sum::<f64>() / n)
        })
        .collect();
    means.sort_by(|a, b| b.1.total_cmp(&a.1));
    for (name, mean, mops) in &means {
        println!("  {name:<12} {mean:>7.2} %   {mops:>7.1} Mops/s (mean)");
    }
    if !contenders.contains(&Contender::Verge(PolicyKind::Adaptive)) || contenders.len() < 2 {
        return;
    }
    println!("\nadaptive vs the best other policy at each point (and its speed against quick_cache's, when that ran)");
    let mut worst = f64::INFINITY;
    let mut speed_logs = Vec::new();
    for (trace, cap) in &keys {
        let at: Vec<&Point> = points.iter().filter(|p| &p.trace == trace && p.capacity == *cap).collect();
        let Some(mine) = at.iter().find(|p| p.policy == "adaptive") else { continue };
        let Some(best) = at.iter().filter(|p| p.policy != "adaptive").max_by(|a, b| a.hit_ratio.total_cmp(&b.hit_ratio)) else { continue };
        let gap = mine.hit_ratio - best.hit_ratio;
        worst = worst.min(gap);
        let speed = at.iter().find(|p| p.policy == Contender::QuickCache.name()).map(|qc| mine.mops / qc.mops);
        speed_logs.extend(speed.map(f64::ln));
        println!(
            "  {trace:<20} {cap:>8}  adaptive {:>6.2}  best {:>6.2} ({:<11})  gap {gap:>+6.2}{}",
            mine.hit_ratio,
            best.hit_ratio,
            best.policy,
            speed.map_or(String::new(), |s| format!("  speed {s:.2}× quick_cache"))
        );
    }
    let best_single = means.iter().filter(|m| m.0 != "adaptive").map(|m| m.1).fold(f64::NEG_INFINITY, f64::max);
    let adaptive_mean = means.iter().find(|m| m.0 == "adaptive").map_or(0.0, |m| m.1);
    println!(
        "  worst gap {worst:+.2} points; adaptive mean {adaptive_mean:.2} vs best single policy mean {best_single:.2} ({:+.2})",
        adaptive_mean - best_single
    );
    if !speed_logs.is_empty() {
        let geomean = (speed_logs.iter().sum::<f64>() / speed_logs.len() as f64).exp();
        println!("  adaptive runs at {geomean:.2}× quick_cache's speed (geometric mean over {} points)", speed_logs.len());
    }
}
