//! `verge dev`: a server and three agents on this machine, in three real
//! cities, with a sample workload, for a first look. Ctrl-C stops everything.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, Result};
use clap::Args;
use serde_json::json;
use verge_client::Method;

use crate::procs::{reap_workloads, spawn_agent, spawn_server, wait_for, Proc, Site};

/// Options of `verge dev`.
#[derive(Args)]
pub struct DevArgs {
    /// Address of the server's HTTP API.
    #[arg(long, default_value = "127.0.0.1:8080")]
    api_addr: String,
    /// The city list to take the three sites from (`City,Lat,Long,Population`).
    #[arg(long, default_value = "../shared/data/rtt/cities.csv")]
    cities: PathBuf,
    /// Where to keep the cluster's files; a fresh temporary directory,
    /// removed on exit, when omitted.
    #[arg(long)]
    data_dir: Option<PathBuf>,
}

/// The three sites: (node id, city in cities.csv, country, fallback lat/long
/// from that file for machines without it).
const SITES: [(&str, &str, &str, f64, f64); 3] = [
    ("new-york", "New York", "US", 40.7142691, -74.0059729),
    ("frankfurt", "Frankfurt", "DE", 50.11552, 8.684167),
    ("tokyo", "Tokyo", "JP", 35.6895, 139.69171),
];

/// Coordinates of `city` in a `City,Lat,Long,Population` file.
fn lookup(text: &str, city: &str) -> Option<(f64, f64)> {
    text.lines().find_map(|l| {
        let mut f = l.split(',');
        (f.next()? == city).then_some(())?;
        Some((f.next()?.parse().ok()?, f.next()?.parse().ok()?))
    })
}

fn sample_workload() -> serde_json::Value {
    json!({
        "id": "hello-edge",
        "group": "demo",
        "requirements": {"cpu": 0.1, "memory": "32MiB"},
        "constraints": {"geoProximity": {"latitude": 48.85341, "longitude": 2.3488}, "maxLatencyMs": 120},
        "strategy": "latency-first",
        "spec": {
            "command": "sh",
            "args": ["-c", "while true; do echo \"hello from $VERGE_NODE_ID at $(date -u +%T)\"; sleep 2; done"],
            "restart": "always"
        }
    })
}

/// Runs the dev cluster until Ctrl-C.
pub async fn run(args: DevArgs) -> Result<()> {
    let temp = args.data_dir.is_none();
    let dir = args.data_dir.unwrap_or_else(|| std::env::temp_dir().join(format!("verge-dev-{}", std::process::id())));
    std::fs::create_dir_all(&dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let result = cluster(&args.api_addr, &args.cities, &dir).await;
    if temp {
        let _ = std::fs::remove_dir_all(&dir);
    }
    result
}

async fn cluster(api_addr: &str, cities: &std::path::Path, dir: &std::path::Path) -> Result<()> {
    let exe = std::env::current_exe().context("cannot find the verge binary")?;
    let mut stop = crate::shutdown_signal()?;
    let server = spawn_server(&exe, &dir.join("server"), api_addr, &[]).await?;
    let join = server.join().await?;
    let client = server.conn.api()?;
    let (api, gateway) = (server.api.clone(), server.gateway.clone());
    let mut procs: Vec<Proc> = vec![server.proc];
    let city_text = std::fs::read_to_string(cities).ok();
    if city_text.is_none() {
        println!("({} not found; using the coordinates it lists for the three cities)", cities.display());
    }
    for (id, city, country, lat, lon) in SITES {
        let (latitude, longitude) = city_text.as_deref().and_then(|t| lookup(t, city)).unwrap_or((lat, lon));
        let site = Site { id, city, country, latitude, longitude };
        procs.push(spawn_agent(&exe, &dir.join(id), &site, &gateway, true, Some(&join))?);
    }
    let startup = async {
        wait_for(Duration::from_secs(30), "three active nodes", || async {
            let nodes = client.get("/api/v1/nodes").await.ok()?;
            let active = nodes.as_array()?.iter().filter(|n| n["lifecycle"] == "active").count();
            (active == SITES.len()).then_some(())
        })
        .await?;
        // A data dir from an earlier run already has it.
        if client.get("/api/v1/workloads/hello-edge").await.is_err() {
            client.call(Method::POST, "/api/v1/workloads", Some(&sample_workload())).await?;
        }
        wait_for(Duration::from_secs(15), "the sample workload to run", || async {
            let w = client.get("/api/v1/workloads/hello-edge").await.ok()?;
            (w["state"] == "running").then(|| w["node"].as_str().unwrap_or("?").to_string())
        })
        .await
    };
    // Ctrl-C while the cluster comes up stops it at once, not after the waits.
    let placed = tokio::select! {
        placed = startup => Some(placed),
        _ = stop.wait_for(|s| *s) => None,
    };
    match placed {
        Some(Ok(node)) => {
            banner(&api, dir, &procs, &node);
            tokio::select! {
                _ = stop.wait_for(|s| *s) => println!("\nstopping the dev cluster…"),
                _ = procs[0].child.wait() => eprintln!("verge dev: the server exited; see {}", dir.join("server.log").display()),
            }
        }
        Some(Err(e)) => {
            eprintln!("verge dev: {e:#}; logs are in {}", dir.display());
            shutdown(procs, dir).await;
            return Err(e);
        }
        None => println!("stopping the dev cluster before it was up…"),
    }
    shutdown(procs, dir).await;
    println!("stopped; nothing left running");
    Ok(())
}

fn banner(api: &str, dir: &std::path::Path, procs: &[Proc], node: &str) {
    println!("verge dev ready api={api}");
    println!();
    println!("A Verge edge cluster runs on this machine:");
    println!("  server     {api}  (pid {})", procs[0].pid());
    for p in &procs[1..] {
        println!("  agent      {:<10} (pid {})", p.name, p.pid());
    }
    println!("  files      {}", dir.display());
    println!();
    println!("The sample workload hello-edge serves users in Paris (max 120 ms) and runs on {node}.");
    println!();
    println!("Every connection is TLS with the cluster CA; nodes joined with a token, hold certificates and attested.");
    println!();
    println!("Try, in another terminal:");
    if api != "https://127.0.0.1:8080" {
        println!("  export VERGE_SERVER={api}");
    }
    println!("  export VERGE_DATA_DIR={}    # the CLI reads admin.token and ca.crt there", dir.join("server").display());
    println!("  verge node ls");
    println!("  verge workload ls");
    println!("  verge workload status hello-edge");
    println!("  verge logs hello-edge --follow");
    println!("  verge sync push ./some-dir --to {node}:demo     # delta-sync a directory to the node");
    println!("  verge node drain {node}        # hello-edge moves to the next best node");
    println!("  verge cache put greeting hello; verge cache get greeting --node {node}");
    if let Ok(addr) = std::fs::read_to_string(dir.join(node).join("data/cache/resp.addr")) {
        println!(
            "  redis-cli -p {} GET greeting   # {node}'s cache speaks the Redis protocol",
            addr.trim().rsplit(':').next().unwrap_or("")
        );
    }
    println!("  verge audit verify             # check the hash-chained audit log");
    println!("  verge compliance report        # ISO 27001 / SOC 2 / HIPAA findings per node");
    if let Some(p) = procs.iter().find(|p| p.name == node) {
        println!("  kill -9 {}                 # the {node} agent dies; hello-edge fails over after the 5 s lease", p.pid());
    }
    println!();
    println!("Ctrl-C stops everything.");
}

/// Stops agents first (they stop their workloads), then the server, then
/// any workload whose agent had been killed.
async fn shutdown(mut procs: Vec<Proc>, dir: &std::path::Path) {
    for p in &procs[1..] {
        p.terminate();
    }
    for p in &mut procs[1..] {
        p.wait_or_kill(Duration::from_secs(15)).await;
    }
    procs[0].terminate();
    procs[0].wait_or_kill(Duration::from_secs(5)).await;
    reap_workloads(dir);
}
