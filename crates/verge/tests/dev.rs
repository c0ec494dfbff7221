//! `verge dev` comes up with three agents and a running sample workload,
//! answers the CLI, and leaves nothing running after Ctrl-C (SIGINT), also
//! when Ctrl-C comes while the cluster is still coming up.

mod common;

use std::io::{BufRead, BufReader};
use std::os::unix::process::CommandExt;
use std::process::{Command, Stdio};
use std::time::Duration;

use common::*;

/// The three agents' names, which are also their data directories.
const AGENTS: [&str; 3] = ["frankfurt", "new-york", "tokyo"];

/// `verge dev` in a process group of its own, as a terminal runs it; the
/// whole group and the sample workload are killed on drop, so a failing
/// assert leaves nothing running.
struct Dev {
    child: std::process::Child,
    dir: tempfile::TempDir,
}

impl Dev {
    fn start(stdout: Stdio) -> Dev {
        let dir = tempfile::tempdir().unwrap();
        let child = Command::new(VERGE)
            .args(["dev", "--api-addr", "127.0.0.1:0", "--data-dir"])
            .arg(dir.path())
            .stdout(stdout)
            .stderr(Stdio::null())
            .env_remove("VERGE_SERVER")
            .process_group(0)
            .spawn()
            .unwrap();
        Dev { child, dir }
    }

    /// Sends `signal` to the whole process group.
    fn signal_group(&self, signal: &str) -> bool {
        let group = format!("-{}", self.child.id());
        Command::new("kill").args([signal, "--", &group]).stderr(Stdio::null()).status().is_ok_and(|s| s.success())
    }
}

impl Drop for Dev {
    fn drop(&mut self) {
        // Also after a clean exit: anything left in the group goes.
        self.signal_group("-KILL");
        let _ = self.child.wait();
        for agent in AGENTS {
            kill_workloads(&self.dir.path().join(agent));
        }
    }
}

#[test]
fn dev_comes_up_answers_and_stops_cleanly() {
    let mut dev = Dev::start(Stdio::piped());
    let tmp = dev.dir.path().to_path_buf();
    let mut lines = BufReader::new(dev.child.stdout.take().unwrap()).lines();
    let api = loop {
        match lines.next() {
            Some(Ok(l)) if l.starts_with("verge dev ready api=https://") => {
                break Endpoint::server(l.rsplit("//").next().unwrap(), &tmp.join("server"))
            }
            Some(Ok(_)) => continue,
            other => panic!("verge dev did not come up: {other:?}"),
        }
    };
    std::thread::spawn(move || lines.for_each(drop));
    let (status, nodes) = api_get(&api, "/api/v1/nodes");
    assert_eq!(status, 200);
    let mut cities: Vec<_> = nodes.as_array().unwrap().iter().map(|n| n["location"]["city"].as_str().unwrap().to_string()).collect();
    cities.sort();
    assert_eq!(cities, ["Frankfurt", "New York", "Tokyo"]);
    let (_, w) = api_get(&api, "/api/v1/workloads/hello-edge");
    assert_eq!(w["state"], "running");
    assert_eq!(w["node"], "frankfurt");
    let pid = w["status"]["pid"].as_i64().unwrap();
    let out = Command::new(VERGE)
        .args(["node", "ls"])
        .env("VERGE_SERVER", format!("https://{api}"))
        .env("VERGE_DATA_DIR", tmp.join("server"))
        .env_remove("VERGE_TOKEN")
        .env_remove("VERGE_CA_CERT")
        .output()
        .unwrap();
    assert!(String::from_utf8_lossy(&out.stdout).contains("frankfurt"));

    assert!(Command::new("kill").args(["-INT", &dev.child.id().to_string()]).status().unwrap().success());
    let status = wait_until(Duration::from_secs(40), "verge dev to exit", || dev.child.try_wait().ok().flatten());
    assert!(status.success(), "{status:?}");
    assert!(!std::path::Path::new(&format!("/proc/{pid}")).exists(), "the sample workload {pid} survived Ctrl-C");
    assert!(std::net::TcpStream::connect(&api.addr).is_err(), "the server still listens");
}

#[test]
fn ctrl_c_while_the_cluster_comes_up_stops_it_cleanly() {
    // A terminal's Ctrl-C reaches the whole foreground process group: the
    // agents stop too, so a start-up that waited for them would time out
    // (and exit with an error) instead of stopping.
    let mut dev = Dev::start(Stdio::null());
    let agents_started = wait_until(Duration::from_secs(60), "the agents to start", || {
        if let Ok(Some(status)) = dev.child.try_wait() {
            return Some(Err(status));
        }
        AGENTS.iter().all(|n| dev.dir.path().join(n).join("agent.log").exists()).then_some(Ok(()))
    });
    assert!(agents_started.is_ok(), "verge dev exited early: {agents_started:?}");
    assert!(dev.signal_group("-INT"));
    let status = wait_until(Duration::from_secs(60), "verge dev to exit", || dev.child.try_wait().ok().flatten());
    assert!(status.success(), "{status:?}");
}

fn api_get(ep: &Endpoint, path: &str) -> (u16, serde_json::Value) {
    api(ep, "GET", path, "")
}
