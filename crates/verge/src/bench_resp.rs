//! `verge bench resp`: the agent's Redis-protocol cache beside a real
//! `redis-server`, both driven by `redis-benchmark` on loopback in the same
//! run (Debian packages `redis-server` and `redis-tools`). The Verge side is
//! the agent's own listener and cache on a single-threaded runtime, as in
//! `verge agent`; Redis is single-threaded too.

use std::net::{SocketAddr, TcpListener, TcpStream};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{anyhow, bail, Context, Result};
use clap::Args;
use serde_json::json;
use verge_agent::edgecache::{CacheSizes, EdgeCache};

/// Options of `verge bench resp`.
#[derive(Args)]
pub struct RespBenchArgs {
    /// Requests per test and server.
    #[arg(long, default_value_t = 1_000_000)]
    requests: u64,
    /// Requests each client pipelines.
    #[arg(long, default_value_t = 16)]
    pipeline: u32,
    /// Parallel clients.
    #[arg(long, default_value_t = 50)]
    clients: u32,
    /// redis-benchmark tests to run (its `-t`): `set,get` are the ones
    /// with a goal; `incr` measures the atomic read-modify-write.
    #[arg(long, default_value = "set,get")]
    tests: String,
    /// Rounds; the best of each is kept.
    #[arg(long, default_value_t = 3)]
    rounds: u32,
    /// Print one JSON object per test instead of a table.
    #[arg(long)]
    json: bool,
}

/// A port free right now on loopback.
fn free_port() -> Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

/// Kills the child on drop.
struct Reaped(std::process::Child);

impl Drop for Reaped {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn wait_listening(port: u16) -> Result<()> {
    for _ in 0..200 {
        if TcpStream::connect(("127.0.0.1", port)).is_ok() {
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(25));
    }
    bail!("nothing listens on port {port} after 5 s")
}

/// Starts the Verge listener on its own single-threaded runtime thread.
fn start_verge(dir: &std::path::Path) -> Result<SocketAddr> {
    let vault = Arc::new(verge_agent::vault::Vault::open(None)?);
    let sizes = CacheSizes { memory: 1 << 30, disk: 4 << 30, max_value: 64 << 20, resp_addr: None, policy: Default::default() };
    let cache = EdgeCache::open(dir, vault, sizes, None, None)?;
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let rt = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
            Ok(rt) => rt,
            Err(e) => return drop(tx.send(Err(e))),
        };
        rt.block_on(async move {
            let (_stop, stopped) = tokio::sync::watch::channel(false);
            let bound = verge_agent::resp::listen("127.0.0.1:0".parse().expect("an address"), cache, None, stopped).await;
            let _ = tx.send(bound);
            std::future::pending::<()>().await;
        });
    });
    Ok(rx.recv().context("the listener thread died")??)
}

/// Runs `redis-benchmark` once; returns requests/s by test name.
fn run_benchmark(port: u16, args: &RespBenchArgs) -> Result<Vec<(String, f64)>> {
    let out = Command::new("redis-benchmark")
        .args(["-h", "127.0.0.1", "-p", &port.to_string(), "-t", &args.tests, "-q", "--csv"])
        .args(["-n", &args.requests.to_string(), "-P", &args.pipeline.to_string(), "-c", &args.clients.to_string()])
        .stderr(Stdio::null())
        .output()
        .context("running redis-benchmark (apt-get install redis-tools)")?;
    let text = String::from_utf8_lossy(&out.stdout);
    let rows: Vec<(String, f64)> = text
        .lines()
        .filter_map(|l| {
            let mut f = l.split(',').map(|c| c.trim_matches('"'));
            let test = f.next()?;
            let rps = f.next()?.parse().ok()?;
            Some((test.to_string(), rps))
        })
        .collect();
    if rows.is_empty() {
        bail!("redis-benchmark printed no results: {text}");
    }
    Ok(rows)
}

/// Runs the benchmark.
pub fn run(args: RespBenchArgs) -> Result<()> {
    let dir = tempfile::tempdir()?;
    let redis_port = free_port()?;
    let redis = Command::new("redis-server")
        .args(["--port", &redis_port.to_string(), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .map(Reaped)
        .context("starting redis-server (apt-get install redis-server)")?;
    wait_listening(redis_port)?;
    let verge = start_verge(dir.path())?;
    let mut best: Vec<(String, f64, f64)> = Vec::new();
    for _ in 0..args.rounds {
        // Alternate, so drift on a noisy machine hits both alike.
        let r = run_benchmark(redis_port, &args)?;
        let v = run_benchmark(verge.port(), &args)?;
        for (test, rps) in r {
            let ours = v.iter().find(|(t, _)| *t == test).map(|(_, x)| *x).ok_or_else(|| anyhow!("verge has no {test} result"))?;
            match best.iter_mut().find(|(t, _, _)| *t == test) {
                Some(b) => {
                    b.1 = b.1.max(rps);
                    b.2 = b.2.max(ours);
                }
                None => best.push((test, rps, ours)),
            }
        }
    }
    drop(redis);
    if args.json {
        for (test, redis, ours) in &best {
            println!(
                "{}",
                json!({"test": test, "redis_rps": redis, "verge_rps": ours, "ratio": ours / redis, "pipeline": args.pipeline, "clients": args.clients})
            );
        }
        return Ok(());
    }
    println!(
        "redis-benchmark -P {} -c {} -n {} on loopback, best of {} rounds (requests/s)",
        args.pipeline, args.clients, args.requests, args.rounds
    );
    println!("{:<6} {:>14} {:>14} {:>8}  goal", "test", "redis-server", "verge agent", "ratio");
    for (test, redis, ours) in &best {
        let ratio = ours / redis;
        // The goal (issue 5) is on GET and SET.
        let goal = match test.as_str() {
            "GET" | "SET" => format!("≥ 0.80 {}", if ratio >= 0.8 { "✓" } else { "✗" }),
            _ => "-".into(),
        };
        println!("{test:<6} {redis:>14.0} {ours:>14.0} {ratio:>8.2}  {goal}");
    }
    Ok(())
}
