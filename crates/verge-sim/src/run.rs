//! The phases of a simulation run: enrol the fleet (with TLS), connect it,
//! let coordinates settle, measure heartbeat load, place workloads and
//! score them against the real matrix, heat and partition, kill a fraction
//! and time the failover, and measure packing.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use serde_json::json;
use verge_client::{Api, Method};
use verge_core::{NodeId, WorkloadSpec};
use verge_sched::{distance_ms, place, ClusterView, Coordinate, NodeView, SplitMix64};

use crate::fleet::{Fleet, SimError};
use crate::node::{run_node, Gateway, NodeCtl};
use crate::report::{quantile, Report};
use crate::secure::{enrol, SimTls};

/// What to simulate and against which server.
#[derive(Debug, Clone)]
pub struct SimOptions {
    /// Number of simulated nodes.
    pub nodes: usize,
    /// The server's API, `http://host:port` (`https://…` with `tls`).
    pub api: String,
    /// A token with the operator role (or admin) for the API.
    pub token: Option<String>,
    /// The server's gateway, `ws://host:port/v1/agent` (`wss://…` with `tls`).
    pub gateway: String,
    /// Zero trust: TLS to the API and gateway, a certificate per node, attestation.
    pub tls: Option<SimTls>,
    /// `City,Lat,Long,Population` text.
    pub cities_csv: String,
    /// RTT matrix text.
    pub rtt_csv: String,
    /// Seed for every random choice.
    pub seed: u64,
    /// Heartbeat interval (the server's).
    pub heartbeat: Duration,
    /// The server's lease, for the report.
    pub lease_ms: u64,
    /// How long coordinates settle before measuring.
    pub settle: Duration,
    /// How long heartbeat load is measured.
    pub measure: Duration,
    /// Workloads placed to score placement.
    pub workloads: usize,
    /// Share of nodes killed at once.
    pub kill_fraction: f64,
    /// Share of nodes heated to 92 °C.
    pub heat_fraction: f64,
    /// A region (americas, emea, apac) to cut off for a lease and heal.
    pub partition: Option<String>,
}

fn server_err(e: impl std::fmt::Display) -> SimError {
    SimError::Server(e.to_string())
}

/// The value of the first sample of metric `name` (with any labels matching `labels`).
fn metric(text: &str, name: &str, labels: &str) -> Option<f64> {
    text.lines().find_map(|l| {
        let rest = l.strip_prefix(name)?;
        let rest = rest.strip_prefix(labels)?;
        rest.strip_prefix(' ')?.split_whitespace().next()?.parse().ok()
    })
}

async fn scrape(api: &Api) -> Result<String, SimError> {
    api.call_text(Method::GET, "/metrics", None).await.map_err(server_err)
}

/// Attestations the server counted as passed.
fn attestations_passed(metrics: &str) -> f64 {
    metric(metrics, "verge_attestations_total", "{outcome=\"passed\"}").unwrap_or(0.0)
}

/// Waits until `want` nodes are active and, when `attested`, as many
/// attestations passed (nodes that have not attested take no work).
async fn wait_active(api: &Api, want: usize, attested: bool, timeout: Duration) -> Result<f64, SimError> {
    let start = Instant::now();
    loop {
        let text = scrape(api).await?;
        let active = metric(&text, "verge_nodes", "{lifecycle=\"active\"}").unwrap_or(0.0) as usize;
        let passed = attested.then(|| attestations_passed(&text) as usize);
        if active >= want && passed.is_none_or(|p| p >= want) {
            return Ok(start.elapsed().as_secs_f64());
        }
        if start.elapsed() > timeout {
            let passed = passed.map(|p| format!(" ({p} attested)")).unwrap_or_default();
            return Err(SimError::Server(format!("only {active} of {want} nodes active{passed} after {timeout:?}")));
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// The operator's API client: TLS trusting only the cluster CA when the
/// run is secured.
fn operator_api(opts: &SimOptions) -> Result<Api, SimError> {
    let api = match &opts.tls {
        Some(t) => Api::secure(&opts.api, t.server_tls()?),
        None => Api::new(&opts.api),
    };
    Ok(api.with_token(opts.token.clone()))
}

/// Enrols the fleet when the run is secured (timed in the report) and
/// returns where and as whom its nodes connect.
async fn gateway(opts: &SimOptions, fleet: &Fleet, report: &mut Report) -> Result<Gateway, SimError> {
    let Some(sim) = &opts.tls else { return Ok(Gateway { url: opts.gateway.clone(), tls: None }) };
    let start = Instant::now();
    let enrolled = enrol(&opts.api, sim, fleet).await?;
    report.enrol_s = start.elapsed().as_secs_f64();
    tracing::info!(nodes = fleet.nodes.len(), seconds = report.enrol_s, "fleet enrolled");
    Ok(Gateway { url: opts.gateway.clone(), tls: Some(enrolled) })
}

/// Runs every phase and returns the figures.
pub async fn run(opts: SimOptions) -> Result<Report, SimError> {
    let fleet = Arc::new(Fleet::build(&opts.cities_csv, &opts.rtt_csv, opts.nodes, opts.seed)?);
    let api = operator_api(&opts)?;
    let n = fleet.nodes.len();
    let mut report = Report { nodes: n, lease_ms: opts.lease_ms, tls: opts.tls.is_some(), ..Default::default() };
    let gateway = Arc::new(gateway(&opts, &fleet, &mut report).await?);
    let ctls: Vec<Arc<NodeCtl>> = (0..n).map(|_| Arc::new(NodeCtl::default())).collect();
    for (i, ctl) in ctls.iter().enumerate() {
        let delay = opts.heartbeat.mul_f64(i as f64 / n.max(1) as f64);
        tokio::spawn(run_node(fleet.clone(), i, gateway.clone(), ctl.clone(), opts.heartbeat, delay));
    }
    let registration_timeout = Duration::from_secs(60) + opts.heartbeat * (n as u32 / 100).max(1);
    report.registered_s = wait_active(&api, n, report.tls, registration_timeout).await?;
    tracing::info!(nodes = n, seconds = report.registered_s, "fleet active");
    tokio::time::sleep(opts.settle).await;

    let (m0, t0) = (scrape(&api).await?, Instant::now());
    tokio::time::sleep(opts.measure).await;
    let (m1, t1) = (scrape(&api).await?, Instant::now());
    let dt = (t1 - t0).as_secs_f64();
    let delta = |name: &str| metric(&m1, name, "").unwrap_or(0.0) - metric(&m0, name, "").unwrap_or(0.0);
    report.heartbeats_per_s = delta("verge_heartbeats_total") / dt;
    report.server_cpu_cores = delta("process_cpu_seconds") / dt;
    report.server_rss_mb = metric(&m1, "process_resident_memory_bytes", "").unwrap_or(0.0) / 1e6;
    report.attestations_answered = ctls.iter().map(|c| c.attestations.load(Ordering::Relaxed)).sum();
    report.attestations_passed = attestations_passed(&m1) as u64;

    let mut rng = SplitMix64(opts.seed ^ 0xabcdef);
    report.vivaldi_median_rel_error = vivaldi_error(&api, &fleet, &mut rng).await?;
    let placed = place_workloads(&api, &fleet, &opts, &mut rng, &mut report).await?;
    if opts.heat_fraction > 0.0 {
        heat(&api, &fleet, &ctls, &opts, &mut rng, &mut report).await?;
    }
    if let Some(region) = &opts.partition {
        partition(&api, &fleet, &ctls, &opts, region, &mut report).await?;
    }
    failover(&api, &fleet, &ctls, &opts, &placed, &mut rng, &mut report).await?;
    let (util, cpu, mem) = utilisation(&fleet, &mut rng);
    (report.utilisation_at_first_unschedulable, report.utilisation_cpu, report.utilisation_memory) = (util, cpu, mem);
    Ok(report)
}

/// Median relative error of the server's coordinates against the real RTTs.
async fn vivaldi_error(api: &Api, fleet: &Fleet, rng: &mut SplitMix64) -> Result<f64, SimError> {
    let nodes = api.get("/api/v1/nodes").await.map_err(server_err)?;
    let mut coords: Vec<Option<Coordinate>> = vec![None; fleet.nodes.len()];
    for node in nodes.as_array().into_iter().flatten() {
        let idx = node["id"].as_str().and_then(|id| NodeId::new(id).ok()).and_then(|id| fleet.index.get(&id).copied());
        if let (Some(i), Ok(c)) = (idx, serde_json::from_value::<Coordinate>(node["coordinate"].clone())) {
            coords[i] = Some(c);
        }
    }
    let mut errors = Vec::new();
    for _ in 0..20_000 {
        let (a, b) = ((rng.next_u64() % coords.len() as u64) as usize, (rng.next_u64() % coords.len() as u64) as usize);
        if let (Some(ca), Some(cb)) = (&coords[a], &coords[b]) {
            let real = fleet.node_rtt_ms(a, b);
            if a != b && real.is_finite() && real > 0.0 {
                errors.push((distance_ms(ca, cb) - real).abs() / real);
            }
        }
    }
    Ok(quantile(&mut errors, 0.5))
}

/// Submissions in flight at once, as a busy deployment pipeline would send.
const IN_FLIGHT: usize = 32;

/// Submits one workload for users in `city` and waits until it is placed;
/// returns the node's index in the fleet.
async fn submit(api: &Api, fleet: &Fleet, id: String, city: usize) -> Result<Option<usize>, SimError> {
    let spec = json!({
        "id": id, "strategy": "latency-first",
        "requirements": {"cpu": 0.05, "memory": "16MiB"},
        "constraints": {"users": [{"city": fleet.cities[city].name}]},
        "spec": {"command": "sleep", "args": ["infinity"]}
    });
    let mut w = api.call(Method::POST, "/api/v1/workloads", Some(&spec)).await.map_err(server_err)?;
    let deadline = Instant::now() + Duration::from_secs(30);
    while w["node"].is_null() && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
        w = api.get(&format!("/api/v1/workloads/{id}")).await.map_err(server_err)?;
    }
    Ok(w["node"].as_str().and_then(|s| NodeId::new(s).ok()).and_then(|id| fleet.index.get(&id).copied()))
}

/// Places workloads for users in cities drawn by population, `IN_FLIGHT`
/// at a time, and scores each placement against the real matrix.
async fn place_workloads(
    api: &Api,
    fleet: &Fleet,
    opts: &SimOptions,
    rng: &mut SplitMix64,
    report: &mut Report,
) -> Result<Vec<(String, usize)>, SimError> {
    let asks: Vec<(String, usize)> = (0..opts.workloads).map(|k| (format!("sim-w{k:05}"), fleet.pick_city(rng))).collect();
    let start = Instant::now();
    let results: Vec<Result<Option<usize>, SimError>> =
        futures_util::stream::iter(asks.iter().map(|(id, city)| submit(api, fleet, id.clone(), *city))).buffered(IN_FLIGHT).collect().await;
    report.placements_per_s_api = opts.workloads as f64 / start.elapsed().as_secs_f64().max(1e-9);
    let mut best_by_city: HashMap<usize, f64> = HashMap::new();
    let (mut regrets, mut placed) = (Vec::new(), Vec::new());
    for ((id, city), result) in asks.into_iter().zip(results) {
        let Some(node) = result? else { continue };
        let best = *best_by_city
            .entry(city)
            .or_insert_with(|| (0..fleet.nodes.len()).map(|n| fleet.user_rtt_ms(city, n)).fold(f64::INFINITY, f64::min));
        regrets.push((fleet.user_rtt_ms(city, node) - best).max(0.0));
        placed.push((id, node));
    }
    report.placement_optimal_share = regrets.iter().filter(|r| **r <= 0.5).count() as f64 / regrets.len().max(1) as f64;
    report.placement_regret_ms_median = quantile(&mut regrets, 0.5);
    report.placement_regret_ms_p95 = quantile(&mut regrets, 0.95);
    Ok(placed)
}

fn sample(n: usize, count: usize, rng: &mut SplitMix64) -> Vec<usize> {
    let mut chosen = HashSet::new();
    while chosen.len() < count.min(n) {
        chosen.insert((rng.next_u64() % n as u64) as usize);
    }
    let mut v: Vec<usize> = chosen.into_iter().collect();
    v.sort_unstable();
    v
}

/// Heats a share of nodes and counts how many the server marks degraded.
async fn heat(
    api: &Api,
    fleet: &Fleet,
    ctls: &[Arc<NodeCtl>],
    opts: &SimOptions,
    rng: &mut SplitMix64,
    report: &mut Report,
) -> Result<(), SimError> {
    let hot = sample(ctls.len(), (ctls.len() as f64 * opts.heat_fraction).round() as usize, rng);
    for &i in &hot {
        ctls[i].hot.store(true, Ordering::Relaxed);
    }
    tokio::time::sleep(opts.heartbeat * 3).await;
    let nodes = api.get("/api/v1/nodes").await.map_err(server_err)?;
    let degraded: HashSet<String> = nodes
        .as_array()
        .into_iter()
        .flatten()
        .filter(|n| n["health"]["status"] == "degraded")
        .filter_map(|n| n["id"].as_str().map(str::to_string))
        .collect();
    report.heated_nodes = hot.len();
    report.heated_degraded = hot.iter().filter(|&&i| degraded.contains(fleet.nodes[i].spec.id.as_str())).count();
    for &i in &hot {
        ctls[i].hot.store(false, Ordering::Relaxed);
    }
    Ok(())
}

/// Cuts a region off for a lease and a bit, heals it, and times recovery.
async fn partition(
    api: &Api,
    fleet: &Fleet,
    ctls: &[Arc<NodeCtl>],
    opts: &SimOptions,
    region: &str,
    report: &mut Report,
) -> Result<(), SimError> {
    let cut: Vec<usize> = (0..ctls.len()).filter(|&i| fleet.cities[fleet.nodes[i].city].region == region).collect();
    for &i in &cut {
        ctls[i].down.store(true, Ordering::Relaxed);
    }
    tokio::time::sleep(Duration::from_millis(opts.lease_ms) + opts.heartbeat * 2).await;
    for &i in &cut {
        ctls[i].down.store(false, Ordering::Relaxed);
    }
    let healed = wait_active(api, ctls.len(), opts.tls.is_some(), Duration::from_secs(120)).await?;
    report.partition = Some((region.to_string(), healed));
    Ok(())
}

/// Kills a share of nodes at once and times until their workloads run elsewhere.
async fn failover(
    api: &Api,
    fleet: &Fleet,
    ctls: &[Arc<NodeCtl>],
    opts: &SimOptions,
    placed: &[(String, usize)],
    rng: &mut SplitMix64,
    report: &mut Report,
) -> Result<(), SimError> {
    let now = api.get("/api/v1/workloads").await.map_err(server_err)?;
    let on: HashMap<String, usize> = now
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|w| Some((w["id"].as_str()?.to_string(), fleet.index.get(&NodeId::new(w["node"].as_str()?).ok()?).copied()?)))
        .collect();
    let killed: HashSet<usize> = sample(ctls.len(), (ctls.len() as f64 * opts.kill_fraction).round() as usize, rng).into_iter().collect();
    let affected: Vec<&String> = placed.iter().map(|(id, _)| id).filter(|id| on.get(*id).is_some_and(|n| killed.contains(n))).collect();
    report.killed_nodes = killed.len();
    report.affected_workloads = affected.len();
    let start = Instant::now();
    for &i in &killed {
        ctls[i].down.store(true, Ordering::Relaxed);
    }
    let deadline = Duration::from_millis(opts.lease_ms) + Duration::from_secs(60);
    loop {
        let now = api.get("/api/v1/workloads").await.map_err(server_err)?;
        let moved: HashMap<&str, Option<usize>> = now
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|w| {
                Some((w["id"].as_str()?, w["node"].as_str().and_then(|n| NodeId::new(n).ok()).and_then(|id| fleet.index.get(&id).copied())))
            })
            .collect();
        let done = affected.iter().all(|id| moved.get(id.as_str()).copied().flatten().is_some_and(|n| !killed.contains(&n)));
        if done {
            report.failover_s = start.elapsed().as_secs_f64();
            return Ok(());
        }
        if start.elapsed() > deadline {
            return Err(SimError::Server(format!("workloads not re-placed {deadline:?} after killing {} nodes", killed.len())));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Packs a mixed workload set into the fleet with the resource-first
/// strategy until the first workload does not fit. Returns (binding share,
/// cpu share, memory share) of capacity in use then.
pub fn utilisation(fleet: &Fleet, rng: &mut SplitMix64) -> (f64, f64, f64) {
    let nodes: Vec<NodeView> = fleet.nodes.iter().map(|n| NodeView::from_spec(&n.spec)).collect();
    let total_cpu: f64 = nodes.iter().map(|n| n.capacity.cpu).sum();
    let total_mem: f64 = nodes.iter().map(|n| n.capacity.memory as f64).sum();
    let mut view = ClusterView::new(nodes, HashMap::new(), Default::default());
    let (mut cpu, mut mem) = (0.0, 0.0);
    for k in 0.. {
        let cores = [0.25, 0.5, 1.0, 2.0, 4.0][(rng.next_u64() % 5) as usize];
        let gib_per_core = [1.0, 2.0, 3.0][(rng.next_u64() % 3) as usize];
        let w: WorkloadSpec = match serde_json::from_value(json!({
            "id": format!("u{k}"), "strategy": "resource-first",
            "requirements": {"cpu": cores, "memory": (cores * gib_per_core * (1u64 << 30) as f64) as u64},
            "spec": {"command": "x"}
        })) {
            Ok(w) => w,
            Err(_) => break,
        };
        match place(&view, &w) {
            Ok(p) => {
                view.reserve(&p.node, &w);
                cpu += cores;
                mem += w.requirements.memory.0 as f64;
            }
            Err(_) => break,
        }
    }
    let (c, m) = (cpu / total_cpu, mem / total_mem);
    (c.max(m), c, m)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn packing_a_real_fleet_fills_it() {
        let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/../../../shared/data/rtt/");
        let (Ok(cities), Ok(rtt)) =
            (std::fs::read_to_string(format!("{dir}cities.csv")), std::fs::read_to_string(format!("{dir}city-rtt-ms.csv")))
        else {
            println!("skipped: no shared RTT data at {dir}");
            return;
        };
        let fleet = Fleet::build(&cities, &rtt, 300, 3).unwrap();
        let (util, cpu, mem) = utilisation(&fleet, &mut SplitMix64(21));
        println!("utilisation at first unschedulable: {util:.4} (cpu {cpu:.4}, memory {mem:.4})");
        assert!(util > 0.8 && util <= 1.0, "{util}");
    }
}
