//! Placement decisions on a 10,000-node fleet in the 235 real cities of
//! `shared/data/rtt`, weighted by population: decisions per second
//! (criterion) and the p99 latency of single decisions, beside the goals
//! (≥ 50,000 placements/s and p99 < 1 ms on one core) and the anchors
//! (Kubernetes 810 pods/s at 5,000 nodes; Nomad ~3,750/s on 5,000 hosts).

use std::collections::HashMap;
use std::hint::black_box;
use std::time::Instant;

use criterion::{criterion_group, Criterion};
use verge_core::{GeoPoint, NodeId, NodeType, Tier, WorkloadSpec};
use verge_sched::{parse_cities, place, Capacity, City, ClusterView, NodeView, SplitMix64};

const NODES: usize = 10_000;

fn cities() -> Vec<City> {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../../../shared/data/rtt/cities.csv");
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{path}: {e}; the bench needs shared/data/rtt"));
    parse_cities(&text).expect("cities.csv parses")
}

fn pick(cities: &[City], rng: &mut SplitMix64) -> usize {
    let total: f64 = cities.iter().map(|c| c.population.unwrap_or(1) as f64).sum();
    let mut x = rng.next_f64() * total;
    for (i, c) in cities.iter().enumerate() {
        x -= c.population.unwrap_or(1) as f64;
        if x <= 0.0 {
            return i;
        }
    }
    cities.len() - 1
}

fn fleet(cities: &[City]) -> ClusterView {
    let mut rng = SplitMix64(42);
    let nodes = (0..NODES)
        .map(|i| {
            let c = &cities[pick(cities, &mut rng)];
            let big = rng.next_u64().is_multiple_of(4);
            NodeView {
                id: NodeId::new(format!("n{i:05}")).expect("valid id"),
                node_type: if big { NodeType::Hybrid } else { NodeType::Compute },
                tier: Tier::Metro,
                location: GeoPoint { latitude: c.latitude, longitude: c.longitude },
                city: c.name.clone(),
                country: String::new(),
                labels: Default::default(),
                capacity: Capacity { cpu: if big { 16.0 } else { 8.0 }, memory: if big { 32 << 30 } else { 16 << 30 }, storage: 0 },
                used: Capacity::default(),
                residents: Vec::new(),
                unavailable: None,
                coordinate: None,
                server_rtt_ms: Some(20.0 + 2.0 * rng.next_f64()),
                pressure: 0.0,
                temperature_c: None,
                trust: 100,
                availability: 1.0,
            }
        })
        .collect();
    ClusterView::new(nodes, HashMap::new(), Default::default())
}

fn workloads(cities: &[City], strategy: &str, users: bool, n: usize) -> Vec<WorkloadSpec> {
    let mut rng = SplitMix64(7);
    (0..n)
        .map(|i| {
            let mut w = serde_json::json!({
                "id": format!("w{i}"), "strategy": strategy,
                "requirements": {"cpu": 0.5, "memory": "512MiB"},
                "spec": {"command": "x"}
            });
            if users {
                w["constraints"] = serde_json::json!({"users": [{"city": cities[pick(cities, &mut rng)].name}], "maxLatencyMs": 80});
            }
            serde_json::from_value(w).expect("valid workload")
        })
        .collect()
}

fn bench(c: &mut Criterion) {
    let cities = cities();
    let view = fleet(&cities);
    let mut group = c.benchmark_group("place_10k_nodes");
    for (name, strategy, users) in [("latency-first users-by-city", "latency-first", true), ("balanced no-users", "balanced", false)] {
        let ws = workloads(&cities, strategy, users, 1024);
        let mut k = 0;
        group.bench_function(name, |b| {
            b.iter(|| {
                k = (k + 1) % ws.len();
                black_box(place(&view, &ws[k]).is_ok())
            })
        });
    }
    group.finish();
}

/// Times single decisions and prints throughput and p99 beside the goals.
fn summary() {
    let cities = cities();
    let view = fleet(&cities);
    println!("\nplacement on {NODES} nodes, one core          decisions/s     p50        p99    goal: >= 50,000/s, p99 < 1 ms; k8s 810/s, Nomad ~3,750/s");
    for (name, strategy, users) in
        [("latency-first, users by city", "latency-first", true), ("balanced, no users (100 scored)", "balanced", false)]
    {
        let ws = workloads(&cities, strategy, users, 20_000);
        let mut times: Vec<f64> = Vec::with_capacity(ws.len());
        let start = Instant::now();
        for w in &ws {
            let t = Instant::now();
            black_box(place(&view, w).is_ok());
            times.push(t.elapsed().as_secs_f64());
        }
        let rate = ws.len() as f64 / start.elapsed().as_secs_f64();
        times.sort_by(|a, b| a.total_cmp(b));
        let q = |p: f64| times[((times.len() - 1) as f64 * p) as usize] * 1e6;
        println!("{name:<40} {rate:>12.0} {:>8.1} µs {:>8.1} µs", q(0.5), q(0.99));
    }
}

criterion_group!(benches, bench);

fn main() {
    benches();
    Criterion::default().configure_from_args().final_summary();
    summary();
}
