//! `verge bench cache` on small traces written here: one JSON row per
//! policy and capacity in the shape the README documents, known answers
//! where the trace makes them certain, the same hit ratios on every run
//! (speed is the only figure allowed to differ), a text summary that
//! sets the adaptive policy against the best other one and against
//! quick_cache's speed, and a clear error for a bad trace.

mod common;

use std::path::Path;
use std::process::Command;

use common::VERGE;
use serde_json::Value;

/// Runs `verge bench cache ARGS --json` and returns its JSON rows.
fn bench(args: &[&str]) -> Vec<Value> {
    let out = Command::new(VERGE).args(["bench", "cache"]).args(args).arg("--json").output().expect("run verge");
    assert!(out.status.success(), "verge bench cache {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|l| l.starts_with('{'))
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{l:?} is not JSON: {e}")))
        .collect()
}

/// A loop over 150 keys, 40 times round.
fn write_loop(dir: &Path) -> String {
    let path = dir.join("loop.keys");
    let keys: String = (0..6000).map(|i| format!("{}\n", i % 150)).collect();
    std::fs::write(&path, keys).expect("write trace");
    path.to_string_lossy().into_owned()
}

fn row<'a>(rows: &'a [Value], policy: &str, capacity: u64) -> &'a Value {
    rows.iter()
        .find(|r| r["policy"] == policy && r["capacity"] == capacity)
        .unwrap_or_else(|| panic!("no row for {policy} at {capacity} in {rows:?}"))
}

#[test]
fn bench_cache_prints_a_row_per_policy_and_capacity_with_known_answers() {
    let dir = tempfile::tempdir().expect("temp dir");
    let trace = write_loop(dir.path());
    let args = ["--trace", trace.as_str(), "--capacity", "100,200", "--policy", "lru,adaptive,quick_cache"];
    let rows = bench(&args);
    assert_eq!(rows.len(), 6, "{rows:?}");
    for r in &rows {
        assert!(r["trace"].as_str().is_some_and(|t| t.starts_with("loop")), "{r}");
        let ratio = r["hit_ratio"].as_f64().unwrap_or(-1.0);
        assert!((0.0..=100.0).contains(&ratio), "{r}");
        assert!(r["mops"].as_f64().is_some_and(|m| m > 0.0), "{r}");
    }
    // A loop longer than the cache: LRU always evicts the next key wanted.
    assert_eq!(row(&rows, "lru", 100)["hit_ratio"].as_f64(), Some(0.0));
    // Room for the whole loop: everything after the first round hits.
    for policy in ["lru", "adaptive", "quick_cache"] {
        assert_eq!(row(&rows, policy, 200)["hit_ratio"].as_f64(), Some(100.0 * 5850.0 / 6000.0), "{policy}");
    }
    // The default starts with LIRS, which keeps most of a loop resident.
    assert!(row(&rows, "adaptive", 100)["hit_ratio"].as_f64().is_some_and(|h| h > 50.0), "{rows:?}");
    let again = bench(&args);
    for r in &rows {
        let policy = r["policy"].as_str().unwrap_or_default();
        let capacity = r["capacity"].as_u64().unwrap_or_default();
        assert_eq!(row(&again, policy, capacity)["hit_ratio"], r["hit_ratio"], "{policy} at {capacity} differs between runs");
    }
}

#[test]
fn bench_cache_summary_gives_each_points_gap_and_speed_against_quick_cache() {
    let dir = tempfile::tempdir().expect("temp dir");
    let trace = write_loop(dir.path());
    let out = Command::new(VERGE)
        .args(["bench", "cache", "--trace", trace.as_str(), "--capacity", "100,200", "--policy", "lru,adaptive,quick_cache"])
        .output()
        .expect("run verge");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let text = String::from_utf8_lossy(&out.stdout);
    let points: Vec<&str> = text.lines().filter(|l| l.trim_start().starts_with("loop ") && l.contains(" gap ")).collect();
    assert_eq!(points.len(), 2, "{text}");
    for line in points {
        let speed = line.split("speed ").nth(1).and_then(|s| s.split('×').next()).and_then(|s| s.trim().parse::<f64>().ok());
        assert!(speed.is_some_and(|s| s > 0.0), "no speed ratio in {line:?}");
    }
    assert!(text.contains("× quick_cache's speed (geometric mean over 2 points)"), "{text}");
    // Without quick_cache there is nothing to compare speed with.
    let out = Command::new(VERGE)
        .args(["bench", "cache", "--trace", trace.as_str(), "--capacity", "100", "--policy", "lru,adaptive"])
        .output()
        .expect("run verge");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains(" gap ") && !text.contains("× quick_cache"), "{text}");
}

#[test]
fn bench_cache_seed_changes_only_what_hashing_decides() {
    // 60,000 pseudo-random requests: first 20,000 over 400 hot keys,
    // 40,000 warm ones and a scan of keys seen once (alone, this keeps the
    // judge on LIRS, its first choice), then 3,000 hot keys that change
    // every 2,000 requests (LRU-like candidates do far better). At 4,096
    // entries the adaptive policy samples one key in 16, so which keys it
    // samples (the seed) decides when its judge sees the change and
    // switches. (Without the change the judge never leaves LIRS, and LIRS
    // reads no hash: no seed would move the figure.)
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("skew.keys");
    let mut x: u64 = 12345;
    let keys: String = (0..60_000u64)
        .map(|i| {
            x = x.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            let (r, class) = (x >> 33, x >> 60);
            let k = if i >= 20_000 {
                200_000 + (i / 2000) * 3000 + r % 3000
            } else if class < 8 {
                r % 400
            } else if class < 13 {
                400 + r % 40_000
            } else {
                100_000 + i
            };
            format!("{k}\n")
        })
        .collect();
    std::fs::write(&path, keys).expect("write trace");
    let trace = path.to_string_lossy().into_owned();
    let run = |seed: &str| bench(&["--trace", trace.as_str(), "--capacity", "4096", "--policy", "lru,adaptive", "--seed", seed]);
    let (a, b, other) = (run("7"), run("7"), run("8"));
    for policy in ["lru", "adaptive"] {
        assert_eq!(row(&a, policy, 4096)["hit_ratio"], row(&b, policy, 4096)["hit_ratio"], "{policy}: the same seed, the same figure");
    }
    // LRU never looks at a hash: no seed moves it. The adaptive policy's
    // sample does (on this trace, seeds 7 and 8 differ; an ignored
    // --seed would make them equal).
    assert_eq!(row(&a, "lru", 4096)["hit_ratio"], row(&other, "lru", 4096)["hit_ratio"]);
    assert_ne!(row(&a, "adaptive", 4096)["hit_ratio"], row(&other, "adaptive", 4096)["hit_ratio"]);
    let bad = Command::new(VERGE)
        .args(["bench", "cache", "--trace", trace.as_str(), "--capacity", "10", "--seed", "x"])
        .output()
        .expect("run verge");
    assert!(!bad.status.success());
    assert!(String::from_utf8_lossy(&bad.stderr).contains("--seed"), "{}", String::from_utf8_lossy(&bad.stderr));
}

#[test]
fn bench_cache_hit_path_gives_each_cache_a_share_of_a_hash_maps_speed() {
    let dir = tempfile::tempdir().expect("temp dir");
    let trace = write_loop(dir.path());
    let rows = bench(&["--trace", trace.as_str(), "--capacity", "100", "--policy", "adaptive", "--hit-path"]);
    assert_eq!(row(&rows, "hit-path/hashmap", 150)["pct_of_hashmap"].as_f64(), Some(100.0));
    for name in ["hit-path/adaptive", "hit-path/wtinylfu", "hit-path/quick_cache"] {
        let r = row(&rows, name, 150);
        assert_eq!(r["hit_ratio"].as_f64(), Some(100.0), "{r}");
        assert!(r["pct_of_hashmap"].as_f64().is_some_and(|p| p > 0.0), "{r}");
    }
}

#[test]
fn bench_cache_names_the_bad_line_of_a_trace() {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("bad.keys");
    std::fs::write(&path, "12\n7\nseven\n").expect("write trace");
    let out = Command::new(VERGE).args(["bench", "cache", "--trace"]).arg(&path).args(["--capacity", "10"]).output().expect("run verge");
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("bad.keys:3") && stderr.contains("\"seven\""), "{stderr}");
}

#[test]
fn bench_cache_into_a_pipe_closed_early_ends_without_a_panic() {
    use std::io::{BufRead, BufReader};
    use std::process::Stdio;
    let dir = tempfile::tempdir().expect("temp dir");
    let trace = write_loop(dir.path());
    let capacities: Vec<String> = (1..=3000).map(|c| c.to_string()).collect();
    let mut child = Command::new(VERGE)
        .args(["bench", "cache", "--trace", trace.as_str(), "--policy", "lru", "--json", "--capacity"])
        .arg(capacities.join(","))
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run verge");
    let mut first = String::new();
    BufReader::new(child.stdout.take().expect("stdout")).read_line(&mut first).expect("a first row");
    assert!(first.starts_with('{'), "{first:?}");
    // The reader is gone, as `| head -1` leaves it, long before the rows
    // (over 200 KB) fit in the pipe.
    let out = child.wait_with_output().expect("verge ends");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!stderr.contains("panicked"), "{stderr}");
    assert!(out.status.success() || out.status.code() == Some(141), "{:?}: {stderr}", out.status);
}
