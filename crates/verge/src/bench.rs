//! `verge bench …`: benchmarks that print Verge's figures next to the
//! targets they compete with.

use std::time::{Duration, Instant};

use anyhow::{anyhow, Context, Result};
use clap::Subcommand;
use serde_json::json;

use crate::procs::{reap_workloads, spawn_agent, spawn_server, wait_for, Site};

/// The benchmarks.
#[derive(Subcommand)]
pub enum BenchCmd {
    /// The agent's footprint: idle RSS, idle CPU and time from start to
    /// registered, against a real server on loopback.
    Agent {
        /// Seconds to measure idle CPU over.
        #[arg(long, default_value_t = 60)]
        duration: u64,
        /// Print one JSON object instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Cache eviction policies replayed over a trace, side by side with
    /// moka, quick_cache and the lru crate.
    Cache(crate::bench_cache::CacheBenchArgs),
    /// Delta sync beside rsync -z, rdiff and zstd on the same data: bytes on
    /// the wire and CPU of both ends.
    Sync(crate::bench_sync::SyncBenchArgs),
    /// The agent's Redis-protocol cache beside redis-server under redis-benchmark.
    Resp(crate::bench_resp::RespBenchArgs),
}

/// Runs a benchmark.
pub async fn run(cmd: BenchCmd) -> Result<()> {
    match cmd {
        BenchCmd::Agent { duration, json } => agent(duration, json).await,
        BenchCmd::Cache(args) => crate::bench_cache::run(args),
        BenchCmd::Sync(args) => tokio::task::spawn_blocking(move || crate::bench_sync::run(args)).await?,
        BenchCmd::Resp(args) => tokio::task::spawn_blocking(move || crate::bench_resp::run(args)).await?,
    }
}

/// Clock ticks per second for `/proc/*/stat` times.
fn ticks_per_second() -> f64 {
    // SAFETY: sysconf has no memory effects.
    let t = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if t > 0 {
        t as f64
    } else {
        100.0
    }
}

/// User plus system CPU time of `pid`, in clock ticks.
fn cpu_ticks(pid: u32) -> Result<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).with_context(|| format!("process {pid} is gone"))?;
    // Fields after the command name, which is in parentheses and may hold spaces.
    let rest = stat.rsplit_once(')').map(|(_, r)| r).ok_or_else(|| anyhow!("unreadable /proc/{pid}/stat"))?;
    let f: Vec<&str> = rest.split_whitespace().collect();
    let field = |i: usize| f.get(i).and_then(|v| v.parse::<u64>().ok()).ok_or_else(|| anyhow!("unreadable /proc/{pid}/stat"));
    Ok(field(11)? + field(12)?)
}

/// Resident set size of `pid` in bytes.
fn rss_bytes(pid: u32) -> Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .map(|kb| kb * 1024)
        .ok_or_else(|| anyhow!("no VmRSS for process {pid}"))
}

async fn agent(duration: u64, as_json: bool) -> Result<()> {
    let exe = std::env::current_exe()?;
    let dir = std::env::temp_dir().join(format!("verge-bench-agent-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let result = measure_agent(&exe, &dir, duration).await;
    reap_workloads(&dir);
    let _ = std::fs::remove_dir_all(&dir);
    let (rss, cpu, registered) = result?;
    if as_json {
        println!(
            "{}",
            json!({"agent_rss_mb": rss, "agent_idle_cpu_percent": cpu, "agent_registered_ms": registered, "duration_s": duration})
        );
    } else {
        println!("verge agent footprint (idle, no workloads, real server on loopback, {duration} s)");
        println!("{:<22} {:>10}  {:>10}  {:>12}", "metric", "verge", "our goal", "seed target");
        println!("{:<22} {:>7.1} MB  {:>10}  {:>12}", "idle RSS", rss, "< 15 MB", "< 50 MB");
        println!("{:<22} {:>8.3} %  {:>10}  {:>12}", "idle CPU", cpu, "< 0.2 %", "< 1 %");
        println!("{:<22} {:>7.0} ms  {:>10}  {:>12}", "start to registered", registered, "< 200 ms", "< 10 s");
    }
    Ok(())
}

/// Returns (RSS MB, idle CPU %, ms from spawn to registered).
async fn measure_agent(exe: &std::path::Path, dir: &std::path::Path, duration: u64) -> Result<(f64, f64, f64)> {
    let server = spawn_server(exe, &dir.join("server"), "127.0.0.1:0", &[]).await?;
    let join = server.join().await?;
    let client = server.conn.api()?;
    let (mut server, gateway) = (server.proc, server.gateway);
    let site = Site { id: "bench-node", city: "Frankfurt", country: "DE", latitude: 50.11552, longitude: 8.684167 };
    let started = Instant::now();
    let mut agent = spawn_agent(exe, &dir.join("bench-node"), &site, &gateway, true, Some(&join))?;
    wait_for(Duration::from_secs(30), "the agent to register", || async {
        let n = client.get("/api/v1/nodes/bench-node").await.ok()?;
        (n["connected"] == true).then_some(())
    })
    .await?;
    let registered_ms = started.elapsed().as_secs_f64() * 1000.0;
    let pid = agent.pid();
    // Let start-up work (first samples, allocations) settle before measuring idle.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let (t0, c0) = (Instant::now(), cpu_ticks(pid)?);
    tokio::time::sleep(Duration::from_secs(duration)).await;
    let (t1, c1) = (Instant::now(), cpu_ticks(pid)?);
    let rss = rss_bytes(pid)? as f64 / 1e6;
    let cpu = (c1 - c0) as f64 / ticks_per_second() / (t1 - t0).as_secs_f64() * 100.0;
    agent.terminate();
    agent.wait_or_kill(Duration::from_secs(10)).await;
    server.terminate();
    server.wait_or_kill(Duration::from_secs(5)).await;
    Ok((rss, cpu, registered_ms))
}
