//! A small harness for scenario tests: start the real `verge` binary as a
//! server and agents on free loopback ports, talk HTTP to it, wait on
//! conditions with deadlines, and kill everything on drop.

#![allow(dead_code)]

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

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

/// One HTTP/1.1 request on a fresh connection; returns status and body.
pub fn http(addr: &str, method: &str, path: &str, body: &[u8]) -> (u16, String) {
    let mut s = TcpStream::connect(addr).unwrap_or_else(|e| panic!("connect {addr}: {e}"));
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    let head = format!(
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    s.write_all(head.as_bytes()).unwrap();
    // The server may answer (413) and close before taking a huge body.
    let _ = s.write_all(body);
    let mut raw = Vec::new();
    let _ = s.read_to_end(&mut raw);
    let text = String::from_utf8_lossy(&raw).into_owned();
    let status = text.split_whitespace().nth(1).and_then(|c| c.parse().ok()).unwrap_or_else(|| panic!("no HTTP status in {text:?}"));
    let body = text.split_once("\r\n\r\n").map(|(_, b)| b.to_string()).unwrap_or_default();
    (status, body)
}

/// `http` for JSON answers.
pub fn api(addr: &str, method: &str, path: &str, body: &str) -> (u16, Value) {
    let (status, text) = http(addr, method, path, body.as_bytes());
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
}

/// A server with agents, all killed (with their workloads) on drop.
pub struct Cluster {
    pub tmp: tempfile::TempDir,
    pub server: Option<Child>,
    pub api: String,
    pub gateway: String,
    pub agents: Vec<Agent>,
    /// Extra server flags, kept for restarts.
    pub server_args: Vec<String>,
}

/// Reads the server's `listening` line and returns (api, gateway) host:port.
fn read_addresses(child: &mut Child) -> (String, String) {
    let stdout = child.stdout.take().expect("server stdout");
    let mut line = String::new();
    BufReader::new(stdout).read_line(&mut line).expect("server stdout line");
    let field = |k: &str| line.split_whitespace().find_map(|w| w.strip_prefix(k)).map(|v| v.split("://").nth(1).unwrap_or(v).to_string());
    (field("api=").unwrap_or_else(|| panic!("bad line {line:?}")), field("gateway=").unwrap_or_else(|| panic!("bad line {line:?}")))
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
        let mut c = Cluster { tmp, server: None, api: String::new(), gateway: String::new(), agents: Vec::new(), server_args };
        c.start_server("127.0.0.1:0", "127.0.0.1:0");
        c
    }

    /// (Re)starts the server on the given addresses with the same data dir.
    pub fn start_server(&mut self, api: &str, gateway: &str) {
        let mut child = Command::new(VERGE)
            .args(["server", "--api-addr", api, "--gateway-addr", gateway, "--heartbeat-interval", HEARTBEAT, "--lease"])
            .arg(format!("{LEASE_MS}ms"))
            .args(&self.server_args)
            .arg("--data-dir")
            .arg(self.tmp.path().join("server"))
            .stdout(Stdio::piped())
            .stderr(std::fs::File::create(self.tmp.path().join("server.log")).unwrap())
            .spawn()
            .expect("start verge server");
        let (a, g) = read_addresses(&mut child);
        self.server = Some(child);
        self.api = a;
        self.gateway = g;
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
        let dir = self.tmp.path().join(site.id);
        std::fs::create_dir_all(&dir).unwrap();
        let cfg = format!(
            "server: {gw}\nnode:\n  id: {id}\n  type: compute\n  location: {{latitude: {lat}, longitude: {lon}, city: \"{city}\", country: \"\"}}\n  labels: {{site: {id}}}\nresources:\n  cpu: {{cores: 2, reserved: 0.5}}\n  memory: {{total: 2GiB, reserved: 256MiB}}\nnetwork: {{data_addr: \"127.0.0.1:0\"}}\n",
            gw = self.gateway,
            id = site.id,
            lat = site.lat,
            lon = site.lon,
            city = site.city,
        );
        std::fs::write(dir.join("edge-config.yaml"), cfg).unwrap();
        let child = spawn_agent(&dir);
        self.agents.push(Agent { id: site.id.to_string(), child, dir });
    }

    /// Starts a killed agent again on the same config and data.
    pub fn restart_agent(&mut self, id: &str) {
        let a = self.agents.iter_mut().find(|a| a.id == id).expect("agent");
        a.child = spawn_agent(&a.dir);
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
        let out = Command::new(VERGE).args(args).env("VERGE_SERVER", format!("http://{}", self.api)).output().expect("run verge cli");
        (out.status.success(), String::from_utf8_lossy(&out.stdout).into_owned(), String::from_utf8_lossy(&out.stderr).into_owned())
    }

    /// A path inside the cluster's temporary directory.
    pub fn path(&self, name: &str) -> PathBuf {
        self.tmp.path().join(name)
    }
}

/// Starts `verge agent` on `dir/edge-config.yaml`, appending to `dir/agent.log`.
fn spawn_agent(dir: &Path) -> Child {
    let log = std::fs::OpenOptions::new().create(true).append(true).open(dir.join("agent.log")).unwrap();
    Command::new(VERGE)
        .args(["agent", "--config"])
        .arg(dir.join("edge-config.yaml"))
        .arg("--data-dir")
        .arg(dir.join("data"))
        .stdout(Stdio::null())
        .stderr(log)
        .env_remove("VERGE_SERVER")
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
