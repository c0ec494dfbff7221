//! `verge sim`: runs a simulated fleet against a real server (one it starts
//! itself, plain or with `--tls`, or `--server`/`--gateway`) and prints the
//! figures.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use clap::Args;
use verge_core::Millis;

use crate::procs::{spawn_server, Server};

/// Options of `verge sim`.
#[derive(Args)]
pub struct SimArgs {
    /// Simulated nodes.
    #[arg(long, default_value_t = 1000)]
    nodes: usize,
    /// API of a running server with `security.tls: false`; by default `verge sim` starts its own.
    #[arg(long, requires = "gateway")]
    server: Option<String>,
    /// Gateway of that server, e.g. `ws://host:8091` (a server with `security.tls: false`).
    #[arg(long, requires = "server")]
    gateway: Option<String>,
    /// API token for `--server` (operator or admin).
    #[arg(long, env = "VERGE_TOKEN", hide_env_values = true)]
    token: Option<String>,
    /// City list (`City,Lat,Long,Population`).
    #[arg(long, default_value = "../shared/data/rtt/cities.csv")]
    cities: PathBuf,
    /// RTT matrix (first row and column city names, values ms).
    #[arg(long, default_value = "../shared/data/rtt/city-rtt-ms.csv")]
    rtt: PathBuf,
    /// Workloads placed to score placement.
    #[arg(long, default_value_t = 200)]
    workloads: usize,
    /// Share of nodes killed at once to time failover.
    #[arg(long, default_value_t = 0.1)]
    kill_fraction: f64,
    /// Share of nodes heated to 92 °C.
    #[arg(long, default_value_t = 0.01)]
    heat_fraction: f64,
    /// A region to cut off for a lease and heal: americas, emea or apac.
    #[arg(long)]
    partition: Option<String>,
    /// Heartbeat interval (of the server it starts; must match `--server`'s).
    #[arg(long, default_value = "1s")]
    heartbeat: Millis,
    /// Lease of the server it starts (must match `--server`'s).
    #[arg(long, default_value = "5s")]
    lease: Millis,
    /// How long coordinates settle before measuring.
    #[arg(long, default_value = "20s")]
    settle: Millis,
    /// How long heartbeat load is measured.
    #[arg(long, default_value = "10s")]
    measure: Millis,
    /// Seed for every random choice.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Run with zero trust: the server speaks TLS, every simulated node joins
    /// for a certificate, connects with mutual TLS and attests. Only with
    /// the server `verge sim` starts itself (not with `--server`).
    #[arg(long, conflicts_with = "server")]
    tls: bool,
    /// Print one JSON object instead of a table.
    #[arg(long)]
    json: bool,
}

/// What simulated nodes need to join `server`: its CA (from its data
/// directory) and a fresh node token.
async fn sim_tls(server: &Server) -> Result<verge_sim::SimTls> {
    let path = server.conn.ca_cert.clone().context("the server's CA certificate is unknown")?;
    let pem = std::fs::read_to_string(&path).with_context(|| format!("cannot read {}", path.display()))?;
    let ca_der = verge_security::pki::pem_certs(&pem).with_context(|| format!("{}", path.display()))?.remove(0);
    Ok(verge_sim::SimTls { ca_der, join_token: server.join().await?.token })
}

/// Runs the simulation.
pub async fn run(args: SimArgs) -> Result<()> {
    if !(0.0..=1.0).contains(&args.kill_fraction) || !(0.0..=1.0).contains(&args.heat_fraction) {
        bail!("--kill-fraction and --heat-fraction must be between 0 and 1");
    }
    if args.partition.as_deref().is_some_and(|r| !["americas", "emea", "apac"].contains(&r)) {
        bail!("--partition must be americas, emea or apac");
    }
    let read = |p: &PathBuf| std::fs::read_to_string(p).with_context(|| format!("cannot read {}", p.display()));
    let (cities_csv, rtt_csv) = (read(&args.cities)?, read(&args.rtt)?);
    let dir = std::env::temp_dir().join(format!("verge-sim-{}", std::process::id()));
    let mut own = None;
    let (api, gateway, token, tls) = match (&args.server, &args.gateway) {
        (Some(s), Some(g)) => (s.clone(), verge_agent::agent::gateway_url(g), args.token.clone(), None),
        _ => {
            std::fs::create_dir_all(&dir)?;
            let hb = format!("{}ms", args.heartbeat.0);
            let lease = format!("{}ms", args.lease.0);
            let cities = args.cities.to_string_lossy().into_owned();
            let config = dir.join("server.yaml").to_string_lossy().into_owned();
            let mut extra = vec!["--heartbeat-interval", hb.as_str(), "--lease", lease.as_str(), "--cities", cities.as_str()];
            if !args.tls {
                std::fs::write(&config, "security:\n  tls: false\n")?;
                extra.extend(["--config", config.as_str()]);
            }
            let server = spawn_server(&std::env::current_exe()?, &dir.join("server"), "127.0.0.1:0", &extra).await?;
            let tls = if args.tls { Some(sim_tls(&server).await?) } else { None };
            own = Some(server.proc);
            (server.api, verge_agent::agent::gateway_url(&server.gateway), server.conn.token, tls)
        }
    };
    let opts = verge_sim::SimOptions {
        nodes: args.nodes,
        api,
        token,
        gateway,
        tls,
        cities_csv,
        rtt_csv,
        seed: args.seed,
        heartbeat: Duration::from_millis(args.heartbeat.0),
        lease_ms: args.lease.0,
        settle: Duration::from_millis(args.settle.0),
        measure: Duration::from_millis(args.measure.0),
        workloads: args.workloads,
        kill_fraction: args.kill_fraction,
        heat_fraction: args.heat_fraction,
        partition: args.partition,
    };
    let result = verge_sim::run(opts).await;
    if let Some(mut p) = own {
        p.terminate();
        p.wait_or_kill(Duration::from_secs(5)).await;
        let _ = std::fs::remove_dir_all(&dir);
    }
    let report = result?;
    if args.json {
        println!("{}", serde_json::to_string(&report)?);
    } else {
        print!("{}", report.table());
    }
    Ok(())
}
