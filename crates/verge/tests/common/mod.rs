//! A small harness for scenario tests: start the real `verge` binary as a
//! server and agents on free loopback ports, talk HTTP to it, wait on
//! conditions with deadlines, and kill everything on drop.

#![allow(dead_code)]

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::Value;
use verge_security::pki;
use verge_security::tls;

/// The binary under test.
pub const VERGE: &str = env!("CARGO_BIN_EXE_verge");

/// Heartbeat interval and lease the tests run with.
pub const HEARTBEAT: &str = "250ms";
pub const LEASE_MS: u64 = 2_000;

/// Polls `f` every 50 ms until it returns `Some`, panicking after `timeout`.
pub fn wait_until<T>(timeout: Duration, what: &str, mut f: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out after {timeout:?} waiting for {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Where and how to send requests: an address, the TLS settings (trusting
/// the cluster CA) and the name to verify, and a bearer token.
#[derive(Clone)]
pub struct Endpoint {
    /// `host:port`.
    pub addr: String,
    tls: Arc<rustls::ClientConfig>,
    name: rustls::pki_types::ServerName<'static>,
    /// Sent as `Authorization: Bearer …` when set.
    pub token: Option<String>,
}

impl Endpoint {
    /// The API of the server whose data dir is `dir`, as its admin.
    pub fn server(addr: &str, dir: &Path) -> Endpoint {
        let ca = pki::pem_certs(&std::fs::read_to_string(dir.join("ca.crt")).unwrap()).unwrap().remove(0);
        let token = std::fs::read_to_string(dir.join("admin.token")).unwrap().trim().to_string();
        Endpoint { addr: addr.to_string(), tls: tls::client_config(&ca, None).unwrap(), name: tls::server_name(), token: Some(token) }
    }

    /// The same endpoint with another token (or none).
    pub fn with_token(&self, token: Option<&str>) -> Endpoint {
        Endpoint { token: token.map(str::to_string), ..self.clone() }
    }

    /// An endpoint at another address with other TLS settings.
    pub fn custom(addr: &str, tls: Arc<rustls::ClientConfig>, name: rustls::pki_types::ServerName<'static>) -> Endpoint {
        Endpoint { addr: addr.to_string(), tls, name, token: None }
    }
}

impl std::fmt::Display for Endpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.addr)
    }
}

/// One HTTP/1.1 request over TLS on a fresh connection; returns status and body.
pub fn http(ep: &Endpoint, method: &str, path: &str, body: &[u8]) -> (u16, String) {
    try_http(ep, method, path, body).unwrap_or_else(|e| panic!("{method} {path}: {e}"))
}

/// [`http`] that reports a failed connection or request instead of panicking.
pub fn try_http(ep: &Endpoint, method: &str, path: &str, body: &[u8]) -> Result<(u16, String), String> {
    exchange(ep, method, path, "", body).map(|(status, _, body)| (status, body))
}

/// [`http`] with `extra` request header lines (each ending in `\r\n`);
/// returns the status, the response's header block and its body.
pub fn http_with_headers(ep: &Endpoint, method: &str, path: &str, extra: &str, body: &[u8]) -> (u16, String, String) {
    exchange(ep, method, path, extra, body).unwrap_or_else(|e| panic!("{method} {path}: {e}"))
}

fn exchange(ep: &Endpoint, method: &str, path: &str, extra: &str, body: &[u8]) -> Result<(u16, String, String), String> {
    let addr = &ep.addr;
    let tcp = TcpStream::connect(addr).map_err(|e| format!("connect {addr}: {e}"))?;
    tcp.set_read_timeout(Some(Duration::from_secs(30))).map_err(|e| e.to_string())?;
    let conn = rustls::ClientConnection::new(ep.tls.clone(), ep.name.clone()).map_err(|e| e.to_string())?;
    let mut s = rustls::StreamOwned::new(conn, tcp);
    let auth = ep.token.as_ref().map(|t| format!("Authorization: Bearer {t}\r\n")).unwrap_or_default();
    // A large body waits for `100 Continue`: the server may refuse it (413)
    // from the headers alone, and its answer must not be lost to a reset.
    let expect = if body.len() > 64 << 10 { "Expect: 100-continue\r\n" } else { "" };
    let head = format!(
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\n{auth}{expect}{extra}Content-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    s.write_all(head.as_bytes()).map_err(|e| e.to_string())?;
    let mut raw = Vec::new();
    if expect.is_empty() {
        s.write_all(body).map_err(|e| e.to_string())?;
    } else {
        let mut byte = [0u8; 1];
        while !raw.ends_with(b"\r\n\r\n") && s.read(&mut byte).unwrap_or(0) == 1 {
            raw.push(byte[0]);
        }
        if raw.starts_with(b"HTTP/1.1 100") {
            raw.clear();
            s.write_all(body).map_err(|e| e.to_string())?;
        }
    }
    let _ = s.flush();
    let _ = s.read_to_end(&mut raw);
    let text = String::from_utf8_lossy(&raw).into_owned();
    let status = text.split_whitespace().nth(1).and_then(|c| c.parse().ok()).ok_or_else(|| format!("no HTTP status in {text:?}"))?;
    let (head, body) = text.split_once("\r\n\r\n").map(|(h, b)| (h.to_string(), b.to_string())).unwrap_or_default();
    Ok((status, head, body))
}

/// `http` for JSON answers.
pub fn api(ep: &Endpoint, method: &str, path: &str, body: &str) -> (u16, Value) {
    let (status, text) = http(ep, method, path, body.as_bytes());
    (status, serde_json::from_str(&text).unwrap_or_else(|e| panic!("{method} {path} answered {status} with non-JSON {text:?}: {e}")))
}

/// A site for an agent.
pub struct Site {
    pub id: &'static str,
    pub city: &'static str,
    pub lat: f64,
    pub lon: f64,
}

pub const NEW_YORK: Site = Site { id: "nyc", city: "New York", lat: 40.7142691, lon: -74.0059729 };
pub const FRANKFURT: Site = Site { id: "fra", city: "Frankfurt", lat: 50.11552, lon: 8.684167 };
pub const TOKYO: Site = Site { id: "tyo", city: "Tokyo", lat: 35.6895, lon: 139.69171 };

/// A running agent.
pub struct Agent {
    pub id: String,
    pub child: Child,
    pub dir: PathBuf,
    pub binary: PathBuf,
}

/// A server with agents, all killed (with their workloads) on drop.
pub struct Cluster {
    pub tmp: tempfile::TempDir,
    pub server: Option<Child>,
    /// The API, as admin.
    pub api: Endpoint,
    /// The gateway, `host:port`.
    pub gateway: String,
    /// A node join token and the CA fingerprint, for agents.
    pub join: (String, String),
    pub agents: Vec<Agent>,
    /// Extra server flags, kept for restarts.
    pub server_args: Vec<String>,
    /// Appended to every new agent's config (indent two spaces to extend `security:`).
    pub agent_yaml: String,
}

/// Starts `verge server` with its data in `tmp/server`; returns it, its API
/// as admin, its gateway `host:port` and its CA fingerprint.
fn launch_server(tmp: &Path, args: &[String], api: &str, gateway: &str) -> (Child, Endpoint, String, String) {
    let mut child = Command::new(VERGE)
        .args(["server", "--api-addr", api, "--gateway-addr", gateway, "--heartbeat-interval", HEARTBEAT, "--lease"])
        .arg(format!("{LEASE_MS}ms"))
        .args(args)
        .arg("--data-dir")
        .arg(tmp.join("server"))
        .stdout(Stdio::piped())
        .stderr(std::fs::File::create(tmp.join("server.log")).unwrap())
        .spawn()
        .expect("start verge server");
    let (a, g, ca) = read_addresses(&mut child);
    (child, Endpoint::server(&a, &tmp.join("server")), g, ca)
}

/// Reads the server's `listening` line and returns (api, gateway) host:port
/// and the CA fingerprint.
fn read_addresses(child: &mut Child) -> (String, String, String) {
    let stdout = child.stdout.take().expect("server stdout");
    let mut line = String::new();
    BufReader::new(stdout).read_line(&mut line).expect("server stdout line");
    let field = |k: &str| line.split_whitespace().find_map(|w| w.strip_prefix(k)).map(|v| v.split("://").nth(1).unwrap_or(v).to_string());
    let bad = || panic!("bad line {line:?}");
    (field("api=").unwrap_or_else(bad), field("gateway=").unwrap_or_else(bad), field("ca=").unwrap_or_else(bad))
}

impl Cluster {
    /// Starts a server on free ports.
    pub fn start() -> Cluster {
        Cluster::start_with(None)
    }

    /// Starts a server on free ports with a `--config` file of this YAML.
    pub fn start_with(config_yaml: Option<&str>) -> Cluster {
        let tmp = tempfile::tempdir().unwrap();
        let mut server_args = Vec::new();
        if let Some(yaml) = config_yaml {
            let path = tmp.path().join("server.yaml");
            std::fs::write(&path, yaml).unwrap();
            server_args = vec!["--config".to_string(), path.display().to_string()];
        }
        let (child, api, gateway, ca) = launch_server(tmp.path(), &server_args, "127.0.0.1:0", "127.0.0.1:0");
        let mut c = Cluster {
            tmp,
            server: Some(child),
            api,
            gateway,
            join: (String::new(), ca),
            agents: Vec::new(),
            server_args,
            agent_yaml: String::new(),
        };
        c.join.0 = c.token("node", None);
        c
    }

    /// A fresh token with `role` (and `ttl`, e.g. `1h`); returns the token.
    pub fn token(&self, role: &str, ttl: Option<&str>) -> String {
        let body = serde_json::json!({"role": role, "ttl": ttl}).to_string();
        let (status, t) = api(&self.api, "POST", "/api/v1/tokens", &body);
        assert_eq!(status, 201, "{t}");
        t["token"].as_str().unwrap().to_string()
    }

    /// A client for `node`'s data port, holding a user certificate.
    pub fn data_port(&self, node: &str) -> Endpoint {
        let n = self.get(&format!("/api/v1/nodes/{node}"));
        let key = pki::new_key().unwrap();
        let body = serde_json::json!({"csr": pki::csr(&key).unwrap()}).to_string();
        let (status, cert) = api(&self.api, "POST", "/api/v1/certs", &body);
        assert_eq!(status, 201, "{cert}");
        let me = tls::Identity::new(cert["certificate"].as_str().unwrap(), key.serialize_der()).unwrap();
        let ca = pki::pem_certs(&std::fs::read_to_string(self.path("server/ca.crt")).unwrap()).unwrap().remove(0);
        Endpoint::custom(n["data_addr"].as_str().unwrap(), tls::client_config(&ca, Some(me)).unwrap(), tls::node_name())
    }

    /// Starts the server again on the given addresses with the same data dir.
    pub fn start_server(&mut self, api: &str, gateway: &str) {
        let (child, api, gateway, _) = launch_server(self.tmp.path(), &self.server_args, api, gateway);
        self.server = Some(child);
        self.api = api;
        self.gateway = gateway;
    }

    /// Kills the server with SIGKILL.
    pub fn kill_server(&mut self) {
        if let Some(mut s) = self.server.take() {
            let _ = s.kill();
            let _ = s.wait();
        }
    }

    /// Writes an edge config for `site` and starts an agent on it.
    pub fn add_agent(&mut self, site: &Site) {
        self.add_agent_with_binary(site, Path::new(VERGE));
    }

    /// [`Cluster::add_agent`] running another `verge` binary.
    pub fn add_agent_with_binary(&mut self, site: &Site, binary: &Path) {
        let dir = self.tmp.path().join(site.id);
        std::fs::create_dir_all(&dir).unwrap();
        let cfg = format!(
            "server: {gw}\nnode:\n  id: {id}\n  type: compute\n  location: {{latitude: {lat}, longitude: {lon}, city: \"{city}\", country: \"\"}}\n  labels: {{site: {id}}}\nresources:\n  cpu: {{cores: 2, reserved: 0.5}}\n  memory: {{total: 2GiB, reserved: 256MiB}}\nnetwork: {{data_addr: \"127.0.0.1:0\"}}\nsecurity:\n  join_token: \"{token}\"\n  ca_hash: \"{ca}\"\n{extra}",
            extra = self.agent_yaml,
            token = self.join.0,
            ca = self.join.1,
            gw = self.gateway,
            id = site.id,
            lat = site.lat,
            lon = site.lon,
            city = site.city,
        );
        std::fs::write(dir.join("edge-config.yaml"), cfg).unwrap();
        let child = spawn_agent(binary, &dir);
        self.agents.push(Agent { id: site.id.to_string(), child, dir, binary: binary.to_path_buf() });
    }

    /// Starts a killed agent again on the same config and data.
    pub fn restart_agent(&mut self, id: &str) {
        let a = self.agents.iter_mut().find(|a| a.id == id).expect("agent");
        a.child = spawn_agent(&a.binary, &a.dir);
    }

    /// Stops an agent with SIGTERM and waits for it to exit.
    pub fn stop_agent(&mut self, id: &str) {
        let a = self.agents.iter_mut().find(|a| a.id == id).expect("agent");
        let _ = Command::new("kill").args(["-TERM", &a.child.id().to_string()]).status();
        let _ = a.child.wait();
    }

    /// Copies agent `id`'s directory (config, data and certificate) to a new
    /// one, `copy`: the same node, as restored from a backup. Not started.
    pub fn copy_agent_dir(&self, id: &str, copy: &str) {
        let from = self.agents.iter().find(|a| a.id == id).expect("agent").dir.clone();
        let status = Command::new("cp").arg("-a").arg(&from).arg(self.path(copy)).status().expect("run cp");
        assert!(status.success(), "copying {}", from.display());
    }

    /// Starts an agent on the directory `name` (see [`Cluster::copy_agent_dir`]),
    /// known to the other helpers by that name.
    pub fn start_agent_in(&mut self, name: &str) {
        let dir = self.path(name);
        let child = spawn_agent(Path::new(VERGE), &dir);
        self.agents.push(Agent { id: name.to_string(), child, dir, binary: PathBuf::from(VERGE) });
    }

    /// Whether agent `id`'s process is still running.
    pub fn agent_running(&mut self, id: &str) -> bool {
        let a = self.agents.iter_mut().find(|a| a.id == id).expect("agent");
        matches!(a.child.try_wait(), Ok(None))
    }

    /// Freezes an agent with SIGSTOP: its connections stay open but it
    /// says nothing more, as a node that lost power with its TCP sessions
    /// half-open. (Dropping the cluster kills it.)
    pub fn freeze_agent(&mut self, id: &str) {
        let a = self.agents.iter().find(|a| a.id == id).expect("agent");
        let status = Command::new("kill").args(["-STOP", &a.child.id().to_string()]).status().expect("run kill");
        assert!(status.success());
    }

    /// Kills an agent with SIGKILL; its workloads keep running.
    pub fn kill_agent(&mut self, id: &str) {
        let a = self.agents.iter_mut().find(|a| a.id == id).expect("agent");
        let _ = a.child.kill();
        let _ = a.child.wait();
    }

    /// GET a JSON document from the API.
    pub fn get(&self, path: &str) -> Value {
        let (status, v) = api(&self.api, "GET", path, "");
        assert_eq!(status, 200, "GET {path}: {v}");
        v
    }

    /// Waits until a workload is placed on some node and returns it.
    pub fn wait_placed(&self, id: &str) -> Value {
        wait_until(Duration::from_secs(10), "the workload to be placed", || {
            let w = self.get(&format!("/api/v1/workloads/{id}"));
            (!w["node"].is_null()).then_some(w)
        })
    }

    /// Waits until every listed node is active.
    pub fn wait_active(&self, ids: &[&str]) {
        wait_until(Duration::from_secs(20), "nodes to become active", || {
            let nodes = self.get("/api/v1/nodes");
            let active =
                nodes.as_array()?.iter().filter(|n| n["lifecycle"] == "active" && ids.contains(&n["id"].as_str().unwrap_or(""))).count();
            (active == ids.len()).then_some(())
        });
    }

    /// Runs the CLI against this cluster's API; returns (success, stdout, stderr).
    pub fn cli(&self, args: &[&str]) -> (bool, String, String) {
        let out = self.cli_command(args).output().expect("run verge cli");
        (out.status.success(), String::from_utf8_lossy(&out.stdout).into_owned(), String::from_utf8_lossy(&out.stderr).into_owned())
    }

    /// `verge ARGS` set up to reach this cluster's API as admin.
    pub fn cli_command(&self, args: &[&str]) -> Command {
        let mut cmd = Command::new(VERGE);
        cmd.args(args)
            .env("VERGE_SERVER", format!("https://{}", self.api.addr))
            .env("VERGE_TOKEN", self.api.token.as_deref().unwrap_or(""))
            .env("VERGE_CA_CERT", self.path("server/ca.crt"))
            .env("XDG_STATE_HOME", self.path("cli-state"));
        cmd
    }

    /// A path inside the cluster's temporary directory.
    pub fn path(&self, name: &str) -> PathBuf {
        self.tmp.path().join(name)
    }
}

/// Starts `binary agent` on `dir/edge-config.yaml`, appending to `dir/agent.log`.
fn spawn_agent(binary: &Path, dir: &Path) -> Child {
    let log = std::fs::OpenOptions::new().create(true).append(true).open(dir.join("agent.log")).unwrap();
    Command::new(binary)
        .args(["agent", "--config"])
        .arg(dir.join("edge-config.yaml"))
        .arg("--data-dir")
        .arg(dir.join("data"))
        .stdout(Stdio::null())
        .stderr(log)
        .env_remove("VERGE_SERVER")
        .env_remove("VERGE_JOIN_TOKEN")
        .env_remove("VERGE_CA_HASH")
        .spawn()
        .expect("start verge agent")
}

/// Kills the process group of every workload with a pid file under `dir`.
pub fn kill_workloads(dir: &Path) {
    let Ok(entries) = std::fs::read_dir(dir.join("data/workloads")) else { return };
    for e in entries.flatten() {
        let pid = std::fs::read_to_string(e.path().join("pid")).ok().and_then(|t| t.split_whitespace().next()?.parse::<i32>().ok());
        if let Some(pid) = pid.filter(|p| *p > 1) {
            let _ = Command::new("kill").args(["-9", "--", &format!("-{pid}")]).stderr(Stdio::null()).status();
        }
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for a in &mut self.agents {
            let _ = a.child.kill();
            let _ = a.child.wait();
            kill_workloads(&a.dir);
        }
        self.kill_server();
    }
}
