//! The `verge` binary: argument parsing and wiring, nothing else.

mod bench;
mod bench_cache;
mod bench_resp;
mod bench_sync;
mod cachecmd;
mod commands;
mod connect;
mod dev;
mod procs;
mod seccmd;
mod sim;
mod sync;
mod table;

use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::{Args, Parser, Subcommand};
use verge_core::Millis;

/// Verge: an edge computing platform. One binary for the control plane, the
/// edge agent, a local dev cluster and the client commands.
#[derive(Parser)]
#[command(name = "verge", version, propagate_version = true)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Run the control plane: HTTP API, agent gateway, state store, reconcilers.
    Server(ServerArgs),
    /// Run the edge agent on this node.
    Agent(AgentArgs),
    /// Start a server and three agents on this machine with a sample workload.
    Dev(dev::DevArgs),
    /// Inspect and manage nodes.
    Node {
        #[command(subcommand)]
        cmd: NodeCmd,
        #[command(flatten)]
        api: ApiArgs,
    },
    /// Submit, inspect and move workloads.
    Workload {
        #[command(subcommand)]
        cmd: WorkloadCmd,
        #[command(flatten)]
        api: ApiArgs,
    },
    /// Print a workload's output, fetched from its node.
    Logs {
        /// Workload id.
        workload: String,
        /// Lines from the end to print first.
        #[arg(long, default_value_t = 100)]
        tail: u32,
        /// Keep printing new output.
        #[arg(long, short)]
        follow: bool,
        /// Print stderr instead of stdout.
        #[arg(long)]
        stderr: bool,
        #[command(flatten)]
        api: ApiArgs,
    },
    /// Run N simulated agents on the real protocol against a real server and
    /// print what it sustains: heartbeats, failover, placement quality.
    Sim(sim::SimArgs),
    /// Delta synchronisation of files and directories.
    Sync {
        #[command(subcommand)]
        cmd: sync::SyncCmd,
    },
    /// Mint, list and revoke API and join tokens.
    Token {
        #[command(subcommand)]
        cmd: seccmd::TokenCmd,
        #[command(flatten)]
        api: ApiArgs,
    },
    /// Read and verify the hash-chained audit log.
    Audit {
        #[command(subcommand)]
        cmd: seccmd::AuditCmd,
        #[command(flatten)]
        api: ApiArgs,
    },
    /// The fleet's edge caches: get, put, invalidate, pre-warm, stats.
    Cache {
        #[command(subcommand)]
        cmd: cachecmd::CacheCmd,
        #[command(flatten)]
        api: ApiArgs,
    },
    /// Check nodes against the ISO 27001, SOC 2 and HIPAA rule packs.
    Compliance {
        #[command(subcommand)]
        cmd: seccmd::ComplianceCmd,
        #[command(flatten)]
        api: ApiArgs,
    },
    /// Benchmarks that print Verge's figures beside their targets.
    Bench {
        #[command(subcommand)]
        cmd: bench::BenchCmd,
    },
}

/// Where the client commands find the server, and how they print.
#[derive(Args)]
struct ApiArgs {
    #[command(flatten)]
    conn: connect::Conn,
    /// Print the API's JSON instead of tables.
    #[arg(long, global = true)]
    json: bool,
}

#[derive(Subcommand)]
enum NodeCmd {
    /// List nodes.
    Ls,
    /// Show one node in detail.
    Status { id: String },
    /// Move a node's workloads away and give it no new ones.
    Drain { id: String },
    /// Forget a node.
    Rm { id: String },
}

#[derive(Subcommand)]
enum WorkloadCmd {
    /// Submit a workload from a YAML or JSON spec and wait until it runs.
    Run {
        /// The spec file.
        #[arg(short = 'f', long = "file")]
        file: PathBuf,
    },
    /// List workloads.
    Ls,
    /// Show one workload in detail, with its placement reason.
    Status { id: String },
    /// Delete a workload; its node stops it.
    Rm { id: String },
    /// Move a workload to another node.
    Migrate {
        id: String,
        /// Target node; the best other node when omitted.
        #[arg(long)]
        to: Option<String>,
    },
}

#[derive(Args)]
struct ServerArgs {
    /// Address of the HTTP API (port 0 picks a free port).
    #[arg(long, env = "VERGE_API_ADDR", default_value = "0.0.0.0:8080")]
    api_addr: SocketAddr,
    /// Address of the agent gateway.
    #[arg(long, env = "VERGE_GATEWAY_ADDR", default_value = "0.0.0.0:8091")]
    gateway_addr: SocketAddr,
    /// Where the server keeps its state.
    #[arg(long, env = "VERGE_DATA_DIR", default_value = "verge-data")]
    data_dir: PathBuf,
    /// How often agents heartbeat, e.g. `1s` (default 1s).
    #[arg(long, env = "VERGE_HEARTBEAT_INTERVAL")]
    heartbeat_interval: Option<Millis>,
    /// How long a node lives without heartbeats, e.g. `5s` (default 5s).
    #[arg(long, env = "VERGE_LEASE")]
    lease: Option<Millis>,
    /// YAML file with `heartbeat_interval`, `lease` and `health_checks`.
    #[arg(long, env = "VERGE_CONFIG")]
    config: Option<PathBuf>,
    /// Known cities (`City,Lat,Long,Population`), for workloads whose users
    /// are named by a city without nodes.
    #[arg(long, env = "VERGE_CITIES")]
    cities: Option<PathBuf>,
}

#[derive(Args)]
struct AgentArgs {
    /// The node's edge-config.yaml.
    #[arg(long, short)]
    config: PathBuf,
    /// Where the agent keeps state and workload files (overrides `data_dir`).
    #[arg(long)]
    data_dir: Option<PathBuf>,
    /// Stop workloads when the agent exits instead of leaving them running
    /// for the next agent to re-adopt.
    #[arg(long)]
    stop_workloads_on_exit: bool,
    /// Join token for a node without a certificate (`verge token create --role node`).
    #[arg(long, env = "VERGE_JOIN_TOKEN", hide_env_values = true)]
    token: Option<String>,
    /// SHA-256 of the cluster CA the join must find, `sha256:…`.
    #[arg(long, env = "VERGE_CA_HASH")]
    ca_hash: Option<String>,
}

fn init_logging(default: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr).init();
}

/// A channel that turns true on SIGINT or SIGTERM.
pub(crate) fn shutdown_signal() -> Result<tokio::sync::watch::Receiver<bool>> {
    use tokio::signal::unix::{signal, SignalKind};
    let mut int = signal(SignalKind::interrupt()).context("installing SIGINT handler")?;
    let mut term = signal(SignalKind::terminate()).context("installing SIGTERM handler")?;
    let (tx, rx) = tokio::sync::watch::channel(false);
    tokio::spawn(async move {
        tokio::select! {
            _ = int.recv() => {}
            _ = term.recv() => {}
        }
        let _ = tx.send(true);
    });
    Ok(rx)
}

async fn server(args: ServerArgs) -> Result<()> {
    let mut cfg = verge_server::ServerConfig::new(args.api_addr, args.gateway_addr, args.data_dir);
    if let Some(path) = &args.config {
        cfg.load_file(path)?;
    }
    if let Some(path) = &args.cities {
        cfg.load_cities(path)?;
    }
    if let Some(h) = args.heartbeat_interval {
        cfg.heartbeat_interval_ms = h.0;
    }
    if let Some(l) = args.lease {
        cfg.lease_ms = l.0;
    }
    cfg.validate()?;
    let mut stop = shutdown_signal()?;
    verge_server::run(cfg, async move {
        let _ = stop.wait_for(|s| *s).await;
    })
    .await?;
    Ok(())
}

async fn agent(args: AgentArgs) -> Result<()> {
    use verge_agent::config::EdgeConfig;
    let cfg = EdgeConfig::load(&args.config, |k| std::env::var(k).ok())?;
    let config_bytes = std::fs::read(&args.config).with_context(|| format!("reading {}", args.config.display()))?;
    let (cores, memory) = verge_agent::agent::detected_capacity();
    let node = cfg.node_spec(cores, memory).map_err(|e| anyhow::anyhow!("config {}: {e}", args.config.display()))?;
    let data_dir = args.data_dir.or(cfg.data_dir.clone()).unwrap_or_else(|| PathBuf::from(format!("verge-agent-{}", node.id)));
    let opts = verge_agent::agent::AgentOptions {
        node,
        server_url: verge_agent::agent::gateway_url(&cfg.server),
        data_dir,
        stop_workloads_on_exit: args.stop_workloads_on_exit,
        data_addr: Some(cfg.network.data_addr),
        advertise_addr: cfg.network.advertise_addr.clone(),
        sync_bandwidth: (cfg.sync.bandwidth.map(|b| b.0), cfg.sync.per_peer_bandwidth.map(|b| b.0)),
        security: verge_agent::agent::SecurityOptions {
            join_token: args.token.or(cfg.security.join_token.clone()),
            ca_hash: args.ca_hash.or(cfg.security.ca_hash.clone()),
            config_bytes,
            encryption: cfg.security.encryption,
            key_rotation: std::time::Duration::from_millis(cfg.security.key_rotation.map_or(30 * 24 * 3_600_000, |m| m.0.max(1_000))),
        },
        cache: cfg.cache_sizes().map_err(|e| anyhow::anyhow!("config {}: cache.policy: {e}", args.config.display()))?,
        origin: cfg.cache.origin.clone(),
        cold_dir: cfg.cache.cold_dir.clone(),
        origin_writes: cfg.cache.origin_writes.unwrap_or_default(),
    };
    verge_agent::agent::run(opts, shutdown_signal()?).await?;
    Ok(())
}

async fn run(cli: Cli) -> Result<()> {
    match cli.cmd {
        Cmd::Server(a) => server(a).await,
        Cmd::Agent(a) => agent(a).await,
        Cmd::Dev(a) => dev::run(a).await,
        Cmd::Bench { cmd } => bench::run(cmd).await,
        Cmd::Sim(a) => sim::run(a).await,
        Cmd::Sync { cmd } => sync::run(cmd).await,
        Cmd::Token { cmd, api } => seccmd::token(&api.conn.api()?, cmd, api.json).await,
        Cmd::Audit { cmd, api } => seccmd::audit(&api.conn.api()?, cmd, api.json).await,
        Cmd::Cache { cmd, api } => cachecmd::run(&api.conn.api()?, cmd, api.json).await,
        Cmd::Compliance { cmd, api } => seccmd::compliance(&api.conn.api()?, cmd, api.json).await,
        Cmd::Node { cmd, api } => {
            let c = api.conn.api()?;
            match cmd {
                NodeCmd::Ls => commands::node_ls(&c, api.json).await,
                NodeCmd::Status { id } => commands::node_status(&c, &id, api.json).await,
                NodeCmd::Drain { id } => commands::node_drain(&c, &id, api.json).await,
                NodeCmd::Rm { id } => commands::node_rm(&c, &id, api.json).await,
            }
        }
        Cmd::Workload { cmd, api } => {
            let c = api.conn.api()?;
            match cmd {
                WorkloadCmd::Run { file } => commands::workload_run(&c, &file, api.json).await,
                WorkloadCmd::Ls => commands::workload_ls(&c, api.json).await,
                WorkloadCmd::Status { id } => commands::workload_status(&c, &id, api.json).await,
                WorkloadCmd::Rm { id } => commands::workload_rm(&c, &id, api.json).await,
                WorkloadCmd::Migrate { id, to } => commands::workload_migrate(&c, &id, to.as_deref(), api.json).await,
            }
        }
        Cmd::Logs { workload, tail, follow, stderr, api } => commands::logs(&api.conn.api()?, &workload, tail, follow, stderr).await,
    }
}

/// Raises the open-file limit to its hard limit: a server holds one socket
/// per node, and `verge sim` one per simulated node.
fn raise_fd_limit() {
    let mut lim = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: getrlimit/setrlimit only read and write the struct we pass.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) == 0 && lim.rlim_cur < lim.rlim_max {
            lim.rlim_cur = lim.rlim_max;
            libc::setrlimit(libc::RLIMIT_NOFILE, &lim);
        }
    }
}

/// A client command whose output goes into a pipe that closes early
/// (`verge bench cache … | head`) ends quietly with status 141, as a Unix
/// tool killed by `SIGPIPE` does, instead of with `println!`'s panic.
/// (Restoring `SIGPIPE` itself would also kill the command on a write to
/// a socket its server just closed, before the client could retry.)
fn end_quietly_on_closed_stdout() {
    let report = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        let message = info.payload().downcast_ref::<String>().map_or("", String::as_str);
        if message.starts_with("failed printing to stdout") && message.contains("os error 32") {
            // 128 + SIGPIPE, what a shell reports for `… | head`.
            std::process::exit(141);
        }
        report(info);
    }));
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    if matches!(cli.cmd, Cmd::Server(_) | Cmd::Sim(_)) {
        raise_fd_limit();
    }
    if !matches!(cli.cmd, Cmd::Server(_) | Cmd::Agent(_) | Cmd::Dev(_) | Cmd::Sim(_)) {
        end_quietly_on_closed_stdout();
    }
    let daemon = matches!(cli.cmd, Cmd::Server(_) | Cmd::Agent(_));
    init_logging(if daemon { "info" } else { "warn" });
    // The agent is mostly idle: one thread keeps its footprint small.
    let mut builder = if matches!(cli.cmd, Cmd::Agent(_)) {
        tokio::runtime::Builder::new_current_thread()
    } else {
        tokio::runtime::Builder::new_multi_thread()
    };
    let rt = match builder.enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("verge: cannot start the runtime: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    match rt.block_on(run(cli)) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("verge: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
