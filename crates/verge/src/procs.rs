//! Starting Verge's own processes for `verge dev` and `verge bench`: a
//! server on chosen ports, agents with generated configs, and a clean stop.

use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use anyhow::{anyhow, bail, Context, Result};
use serde_json::json;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};
use verge_client::Method;

use crate::connect::Conn;

/// A child process that is killed if it is still running when dropped.
pub struct Proc {
    /// Name for messages.
    pub name: String,
    /// The process.
    pub child: Child,
}

impl Proc {
    /// The process id.
    pub fn pid(&self) -> u32 {
        self.child.id().unwrap_or(0)
    }

    /// Asks the process to stop (SIGTERM).
    pub fn terminate(&self) {
        if let Some(pid) = self.child.id() {
            // SAFETY: kill(2) on our own child's pid has no memory effects.
            unsafe { libc::kill(pid as i32, libc::SIGTERM) };
        }
    }

    /// Waits up to `grace` for the process to exit, then kills it.
    pub async fn wait_or_kill(&mut self, grace: Duration) {
        if tokio::time::timeout(grace, self.child.wait()).await.is_err() {
            let _ = self.child.kill().await;
        }
    }
}

fn command(exe: &Path, log: &Path) -> Result<Command> {
    let log = std::fs::File::create(log).with_context(|| format!("cannot create {}", log.display()))?;
    let mut cmd = Command::new(exe);
    cmd.env_remove("VERGE_SERVER")
        .env_remove("VERGE_JOIN_TOKEN")
        .env_remove("VERGE_CA_HASH")
        .stdin(Stdio::null())
        .stderr(log)
        .kill_on_drop(true);
    Ok(cmd)
}

/// A server this process started.
pub struct Server {
    /// The process.
    pub proc: Proc,
    /// Its API URL.
    pub api: String,
    /// Its gateway URL.
    pub gateway: String,
    /// How to talk to it as admin (its `admin.token` and `ca.crt`).
    pub conn: Conn,
}

/// What a node needs to join: a node token and the CA fingerprint.
pub struct Join {
    /// `vrg1.…`.
    pub token: String,
    /// `sha256:…`.
    pub ca_hash: String,
}

impl Server {
    /// A join token for nodes, valid for a day.
    pub async fn join(&self) -> Result<Join> {
        let t = self
            .conn
            .api()?
            .call(Method::POST, "/api/v1/tokens", Some(&json!({"role": "node", "ttl": "24h", "name": "local nodes"})))
            .await?;
        let field = |k: &str| t[k].as_str().map(str::to_string).ok_or_else(|| anyhow!("the server's token answer lacks {k}"));
        Ok(Join { token: field("token")?, ca_hash: field("caHash")? })
    }
}

/// Starts `verge server` with state in `data_dir` and its log in
/// `data_dir.log`; returns it with its addresses and admin credentials.
pub async fn spawn_server(exe: &Path, data_dir: &Path, api_addr: &str, extra: &[&str]) -> Result<Server> {
    let mut cmd = command(exe, &data_dir.with_extension("log"))?;
    cmd.arg("server")
        .args(["--api-addr", api_addr, "--gateway-addr", "127.0.0.1:0", "--data-dir"])
        .arg(data_dir)
        .args(extra)
        .stdout(Stdio::piped());
    let mut child = cmd.spawn().context("cannot start verge server")?;
    let stdout = child.stdout.take().ok_or_else(|| anyhow!("server stdout not captured"))?;
    let mut lines = BufReader::new(stdout).lines();
    let line = tokio::time::timeout(Duration::from_secs(30), lines.next_line())
        .await
        .map_err(|_| anyhow!("verge server did not start within 30 s; see {}", data_dir.with_extension("log").display()))??
        .ok_or_else(|| anyhow!("verge server exited at start; see {}", data_dir.with_extension("log").display()))?;
    tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
    let field = |key: &str| line.split_whitespace().find_map(|w| w.strip_prefix(key)).map(str::to_string);
    match (field("api="), field("gateway=")) {
        (Some(api), Some(gateway)) => {
            let conn = Conn::for_server(&api, data_dir)?;
            Ok(Server { proc: Proc { name: "server".into(), child }, api, gateway, conn })
        }
        _ => bail!("unexpected first line from verge server: {line}"),
    }
}

/// A node's place for generated configs.
pub struct Site<'a> {
    /// Node id.
    pub id: &'a str,
    /// City name.
    pub city: &'a str,
    /// Country.
    pub country: &'a str,
    /// Latitude.
    pub latitude: f64,
    /// Longitude.
    pub longitude: f64,
}

/// Writes an `edge-config.yaml` for `site` under `dir` and starts
/// `verge agent` on it, with its log in `dir/agent.log`; `join` (passed in
/// the environment, not on the command line) lets it get a certificate.
pub fn spawn_agent(exe: &Path, dir: &Path, site: &Site, gateway: &str, stop_workloads: bool, join: Option<&Join>) -> Result<Proc> {
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let config = format!(
        "server: {gateway}\nnode:\n  id: {id}\n  type: compute\n  tier: metro\n  location:\n    latitude: {lat}\n    longitude: {lon}\n    city: \"{city}\"\n    country: \"{country}\"\n  labels:\n    city: \"{city}\"\nresources:\n  cpu:\n    cores: 4\n    reserved: 0.5\n  memory:\n    total: 4GiB\n    reserved: 512MiB\n  storage:\n    total: 20GiB\n    cache: 2GiB\n    type: SSD\nnetwork:\n  data_addr: \"127.0.0.1:0\"\ncache:\n  resp_addr: \"127.0.0.1:0\"\nsecurity:\n  encryption: true\n",
        id = site.id,
        lat = site.latitude,
        lon = site.longitude,
        city = site.city,
        country = site.country,
    );
    let path = dir.join("edge-config.yaml");
    std::fs::write(&path, config).with_context(|| format!("cannot write {}", path.display()))?;
    let mut cmd = command(exe, &dir.join("agent.log"))?;
    cmd.arg("agent").arg("--config").arg(&path).arg("--data-dir").arg(dir.join("data")).stdout(Stdio::null());
    if stop_workloads {
        cmd.arg("--stop-workloads-on-exit");
    }
    if let Some(j) = join {
        cmd.env("VERGE_JOIN_TOKEN", &j.token).env("VERGE_CA_HASH", &j.ca_hash);
    }
    let child = cmd.spawn().context("cannot start verge agent")?;
    Ok(Proc { name: site.id.to_string(), child })
}

/// Polls `check` every 50 ms until it returns `Some` or `timeout` passes.
pub async fn wait_for<T, F, Fut>(timeout: Duration, what: &str, mut check: F) -> Result<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        if let Some(v) = check().await {
            return Ok(v);
        }
        if tokio::time::Instant::now() >= deadline {
            bail!("timed out after {:?} waiting for {what}", timeout);
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Kills the process group of every workload whose pid file lies under
/// `dir/*/data/workloads/*/pid`: workloads outlive a killed agent, and a
/// dev cluster or benchmark must leave nothing behind.
pub fn reap_workloads(dir: &Path) {
    let Ok(sites) = std::fs::read_dir(dir) else { return };
    for site in sites.flatten() {
        let Ok(workloads) = std::fs::read_dir(site.path().join("data/workloads")) else { continue };
        for w in workloads.flatten() {
            let pid = std::fs::read_to_string(w.path().join("pid")).ok().and_then(|t| t.split_whitespace().next()?.parse::<i32>().ok());
            if let Some(pid) = pid.filter(|p| *p > 1) {
                // SAFETY: kill(2) has no memory effects; a stale group id fails with ESRCH.
                unsafe { libc::kill(-pid, libc::SIGKILL) };
            }
        }
    }
}
