//! `verge dev` comes up with three agents and a running sample workload,
//! answers the CLI, and leaves nothing running after Ctrl-C (SIGINT), also
//! when Ctrl-C comes while the cluster is still coming up.

mod common;

use std::io::{BufRead, BufReader};
use std::os::unix::process::CommandExt;
use std::process::{Command, Stdio};
use std::time::Duration;

use common::*;

#[test]
fn dev_comes_up_answers_and_stops_cleanly() {
    let tmp = tempfile::tempdir().unwrap();
    let mut dev = Command::new(VERGE)
        .args(["dev", "--api-addr", "127.0.0.1:0", "--data-dir"])
        .arg(tmp.path())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .env_remove("VERGE_SERVER")
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(dev.stdout.take().unwrap()).lines();
    let api = loop {
        match lines.next() {
            Some(Ok(l)) if l.starts_with("verge dev ready api=https://") => {
                break Endpoint::server(l.rsplit("//").next().unwrap(), &tmp.path().join("server"))
            }
            Some(Ok(_)) => continue,
            other => {
                let _ = dev.kill();
                panic!("verge dev did not come up: {other:?}");
            }
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
        .env("VERGE_DATA_DIR", tmp.path().join("server"))
        .env_remove("VERGE_TOKEN")
        .env_remove("VERGE_CA_CERT")
        .output()
        .unwrap();
    assert!(String::from_utf8_lossy(&out.stdout).contains("frankfurt"));

    assert!(Command::new("kill").args(["-INT", &dev.id().to_string()]).status().unwrap().success());
    let status = wait_until(Duration::from_secs(40), "verge dev to exit", || dev.try_wait().ok().flatten());
    assert!(status.success(), "{status:?}");
    assert!(!std::path::Path::new(&format!("/proc/{pid}")).exists(), "the sample workload {pid} survived Ctrl-C");
    assert!(std::net::TcpStream::connect(&api.addr).is_err(), "the server still listens");
}

#[test]
fn ctrl_c_while_the_cluster_comes_up_stops_it_cleanly() {
    // A terminal's Ctrl-C reaches the whole foreground process group: the
    // agents stop too, so a start-up that waited for them would time out
    // (and exit with an error) instead of stopping.
    let tmp = tempfile::tempdir().unwrap();
    let mut dev = Command::new(VERGE)
        .args(["dev", "--api-addr", "127.0.0.1:0", "--data-dir"])
        .arg(tmp.path())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .env_remove("VERGE_SERVER")
        .process_group(0)
        .spawn()
        .unwrap();
    let group = format!("-{}", dev.id());
    let agents_started = wait_until(Duration::from_secs(60), "the agents to start", || {
        if let Ok(Some(status)) = dev.try_wait() {
            return Some(Err(status));
        }
        ["frankfurt", "new-york", "tokyo"].iter().all(|n| tmp.path().join(n).join("agent.log").exists()).then_some(Ok(()))
    });
    assert!(agents_started.is_ok(), "verge dev exited early: {agents_started:?}");
    assert!(Command::new("kill").args(["-INT", "--", &group]).status().unwrap().success());
    let status = wait_until(Duration::from_secs(60), "verge dev to exit", || dev.try_wait().ok().flatten());
    let _ = Command::new("kill").args(["-KILL", "--", &group]).status();
    assert!(status.success(), "{status:?}");
}

fn api_get(ep: &Endpoint, path: &str) -> (u16, serde_json::Value) {
    api(ep, "GET", path, "")
}
