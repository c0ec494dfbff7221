//! End-to-end scenarios with the real binary: registration with real
//! metrics, constrained placement of a real process, failover after
//! `kill -9`, durability across a server `kill -9`, and the CLI.

mod common;

use std::time::{Duration, Instant};

use common::*;
use serde_json::Value;

fn node<'a>(nodes: &'a Value, id: &str) -> &'a Value {
    nodes.as_array().unwrap().iter().find(|n| n["id"] == id).unwrap_or_else(|| panic!("node {id} missing"))
}

#[test]
fn agents_register_with_real_metrics() {
    let mut c = Cluster::start();
    c.add_agent(&FRANKFURT);
    c.add_agent(&NEW_YORK);
    c.wait_active(&["fra", "nyc"]);
    let nodes = wait_until(Duration::from_secs(10), "metrics in heartbeats", || {
        let nodes = c.get("/api/v1/nodes");
        nodes.as_array()?.iter().all(|n| n["metrics"]["memoryTotal"].as_u64() > Some(0)).then_some(nodes)
    });
    let fra = node(&nodes, "fra");
    assert_eq!(fra["location"]["city"], "Frankfurt");
    assert_eq!(fra["resources"]["cpu"]["cores"], 1.5, "reserved cores are subtracted");
    assert_eq!(fra["connected"], true);
    assert_eq!(fra["health"]["status"], "healthy");
    let m = &fra["metrics"];
    assert!(m["cpuPercent"].as_f64().unwrap() >= 0.0 && m["cpuPercent"].as_f64().unwrap() <= 100.0);
    assert!(m["diskTotal"].as_u64().unwrap() > 0);
    assert!(m["memoryUsed"].as_u64().unwrap() > 0);
    assert!(m["load"].as_array().unwrap().len() == 3);

    let metrics = common::http(&c.api, "GET", "/metrics", b"").1;
    assert!(metrics.contains("verge_heartbeats_total"), "{metrics}");
    assert!(metrics.contains("verge_nodes{lifecycle=\"active\"} 2"), "{metrics}");
}

#[test]
fn constrained_workload_runs_on_the_right_node_and_fails_over_after_kill_9() {
    let mut c = Cluster::start();
    for s in [&NEW_YORK, &FRANKFURT, &TOKYO] {
        c.add_agent(s);
    }
    c.wait_active(&["nyc", "fra", "tyo"]);
    let out = c.path("out");
    std::fs::create_dir_all(&out).unwrap();
    // Users in Paris, at most 120 ms away: Frankfurt first, New York second, never Tokyo.
    let spec = serde_json::json!({
        "id": "paris-api",
        "requirements": {"cpu": 0.5, "memory": "64MiB"},
        "constraints": {"geoProximity": {"latitude": 48.85341, "longitude": 2.3488}, "maxLatencyMs": 120, "nodeTypes": ["compute"]},
        "strategy": "latency-first",
        "spec": {"command": "sh", "args": ["-c", format!("echo $VERGE_NODE_ID > {}/$VERGE_NODE_ID; exec sleep 600", out.display())]}
    });
    let (status, w) = api(&c.api, "POST", "/api/v1/workloads", &spec.to_string());
    assert_eq!(status, 201, "{w}");
    assert_eq!(c.wait_placed("paris-api")["node"], "fra");
    // The shell creates the file before `echo` writes to it: wait for the line.
    let line = |node: &str| std::fs::read_to_string(out.join(node)).ok().filter(|s| s.ends_with('\n'));
    let written = wait_until(Duration::from_secs(10), "the workload to write its file on fra", || line("fra"));
    assert_eq!(written.trim(), "fra");
    wait_until(Duration::from_secs(10), "the workload to report running", || {
        (c.get("/api/v1/workloads/paris-api")["state"] == "running").then_some(())
    });

    let killed = Instant::now();
    c.kill_agent("fra");
    let w = wait_until(Duration::from_millis(LEASE_MS + 2_000), "failover within lease + 2 s", || {
        let w = c.get("/api/v1/workloads/paris-api");
        (w["node"] == "nyc").then_some(w)
    });
    let moved_after = killed.elapsed();
    assert!(w["reason"].as_str().unwrap().starts_with("failover from fra"), "{w}");
    assert_eq!(w["moves"], 1);
    let written = wait_until(Duration::from_secs(10), "the workload to run on nyc", || line("nyc"));
    assert_eq!(written.trim(), "nyc");
    assert_eq!(node(&c.get("/api/v1/nodes"), "fra")["lifecycle"], "terminated");
    println!("failover after kill -9: {moved_after:?} (lease {LEASE_MS} ms)");

    // Only Tokyo is left, and it is too far for the constraint: pending, with the reason.
    c.kill_agent("nyc");
    let w = wait_until(Duration::from_millis(LEASE_MS + 3_000), "the workload to go pending", || {
        let w = c.get("/api/v1/workloads/paris-api");
        w["node"].is_null().then_some(w)
    });
    let reason = w["reason"].as_str().unwrap();
    assert!(reason.contains("latency above maxLatencyMs"), "{reason}");
    assert_eq!(w["state"], "pending");
}

#[test]
fn server_kill_9_and_restart_keeps_every_node_and_workload() {
    let mut c = Cluster::start();
    c.add_agent(&FRANKFURT);
    c.wait_active(&["fra"]);
    let manual = r#"{"id":"manual-1","type":"storage","tier":"access","location":{"latitude":1.3,"longitude":103.8,"city":"Singapore","country":"SG"},"resources":{"cpu":{"cores":8,"frequency":3.5},"memory":{"total":34359738368},"storage":{"total":1000000000000,"type":"SSD","iops":100000}},"labels":{"rack":"r1"}}"#;
    assert_eq!(api(&c.api, "POST", "/api/v1/nodes", manual).0, 201);
    let spec = r#"{"id":"keeper","requirements":{"cpu":0.25,"memory":"16MiB"},"spec":{"command":"sleep","args":["600"]}}"#;
    assert_eq!(api(&c.api, "POST", "/api/v1/workloads", spec).0, 201);
    wait_until(Duration::from_secs(10), "keeper to run", || (c.get("/api/v1/workloads/keeper")["state"] == "running").then_some(()));
    let pid = c.get("/api/v1/workloads/keeper")["status"]["pid"].as_u64().unwrap();

    let (api_addr, gw_addr) = (c.api.addr.clone(), c.gateway.clone());
    c.kill_server();
    c.start_server(&api_addr, &gw_addr);

    let nodes = c.get("/api/v1/nodes");
    assert_eq!(nodes.as_array().unwrap().len(), 2);
    let m = node(&nodes, "manual-1");
    assert_eq!(m["type"], "storage");
    assert_eq!(m["resources"]["storage"]["iops"], 100000);
    assert_eq!(m["labels"]["rack"], "r1");
    let w = c.get("/api/v1/workloads/keeper");
    assert_eq!(w["node"], "fra");
    // The agent reconnects and the workload is the same process: nothing restarted.
    wait_until(Duration::from_secs(15), "the agent to reconnect", || {
        (node(&c.get("/api/v1/nodes"), "fra")["connected"] == true).then_some(())
    });
    let w = wait_until(Duration::from_secs(10), "keeper's status", || {
        let w = c.get("/api/v1/workloads/keeper");
        (w["state"] == "running").then_some(w)
    });
    assert_eq!(w["status"]["pid"].as_u64(), Some(pid));
    assert_eq!(w["node"], "fra");
}

#[test]
fn the_cli_runs_lists_shows_logs_migrates_and_removes() {
    let mut c = Cluster::start();
    c.add_agent(&FRANKFURT);
    c.add_agent(&NEW_YORK);
    c.wait_active(&["fra", "nyc"]);
    let spec = c.path("hello.yaml");
    std::fs::write(
        &spec,
        "id: hello\nrequirements:\n  cpu: 0.1\n  memory: 16MiB\nconstraints:\n  requiredLabels:\n    site: fra\nspec:\n  command: sh\n  args: [\"-c\", \"echo line-$VERGE_NODE_ID; exec sleep 600\"]\n",
    )
    .unwrap();
    let (ok, out, err) = c.cli(&["workload", "run", "-f", spec.to_str().unwrap()]);
    assert!(ok, "{err}");
    assert!(out.contains("hello is running on fra"), "{out}");

    let (ok, out, _) = c.cli(&["node", "ls"]);
    assert!(ok && out.starts_with("ID") && out.contains("fra") && out.contains("active"), "{out}");
    let (ok, out, _) = c.cli(&["node", "ls", "--json"]);
    assert!(ok);
    assert_eq!(serde_json::from_str::<Value>(&out).unwrap().as_array().unwrap().len(), 2);
    let (ok, out, _) = c.cli(&["workload", "ls"]);
    assert!(ok && out.contains("hello") && out.contains("running"), "{out}");
    let out = wait_until(Duration::from_secs(10), "the log line", || {
        let (ok, out, _) = c.cli(&["logs", "hello", "--tail", "5"]);
        (ok && out.contains("line-fra")).then_some(out)
    });
    assert_eq!(out.trim(), "line-fra");

    // The label pins it to fra: a migration elsewhere is refused with the reason.
    let (ok, _, err) = c.cli(&["workload", "migrate", "hello", "--to", "nyc"]);
    assert!(!ok && err.contains("missing required labels"), "{err}");
    let (ok, _, err) = c.cli(&["workload", "status", "nope"]);
    assert!(!ok && err.contains("workload nope not found"), "{err}");

    let (ok, out, err) = c.cli(&["workload", "rm", "hello"]);
    assert!(ok, "{err}{out}");
    let (_, out, _) = c.cli(&["workload", "ls", "--json"]);
    assert_eq!(out.trim(), "[]");
    let (ok, out, _) = c.cli(&["node", "drain", "nyc"]);
    assert!(ok, "{out}");
    assert_eq!(node(&c.get("/api/v1/nodes"), "nyc")["lifecycle"], "draining");
}

#[test]
fn migrate_moves_a_running_workload_to_the_named_node() {
    let mut c = Cluster::start();
    c.add_agent(&FRANKFURT);
    c.add_agent(&TOKYO);
    c.wait_active(&["fra", "tyo"]);
    let spec = r#"{"id":"mover","requirements":{"cpu":0.1,"memory":"16MiB"},"constraints":{"geoProximity":{"latitude":50,"longitude":8}},"spec":{"command":"sleep","args":["600"]}}"#;
    assert_eq!(api(&c.api, "POST", "/api/v1/workloads", spec).0, 201);
    assert_eq!(c.wait_placed("mover")["node"], "fra");
    let (status, w) = api(&c.api, "POST", "/api/v1/workloads/mover/migrate", r#"{"targetNode":"tyo"}"#);
    assert_eq!(status, 200, "{w}");
    assert_eq!(w["node"], "tyo");
    wait_until(Duration::from_secs(10), "mover to run on tyo", || {
        let w = c.get("/api/v1/workloads/mover");
        (w["state"] == "running" && w["node"] == "tyo").then_some(())
    });
    // fra stopped its copy: nothing of mover is left there.
    wait_until(Duration::from_secs(15), "fra to forget mover", || (!c.path("fra/data/workloads/mover").exists()).then_some(()));
}

#[test]
fn a_frozen_agents_session_is_closed_after_three_leases_of_silence() {
    // SIGSTOP keeps the agent's connection open (its kernel still ACKs) but
    // it sends nothing more, like a node that lost power: the server must
    // not show it as connected for ever.
    let mut c = Cluster::start();
    c.add_agent(&FRANKFURT);
    c.wait_active(&["fra"]);
    c.freeze_agent("fra");
    let frozen = Instant::now();
    wait_until(Duration::from_secs(30), "the frozen agent's session to close", || {
        (c.get("/api/v1/nodes/fra")["connected"] == false).then_some(())
    });
    // Not before its lease has run out (a slow agent keeps its session).
    assert!(frozen.elapsed() >= Duration::from_millis(LEASE_MS), "closed after {:?}", frozen.elapsed());
}

fn alive(pid: u64) -> bool {
    std::path::Path::new(&format!("/proc/{pid}")).exists()
        && !std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default().contains(") Z ")
}

#[test]
fn a_restarted_agent_re_adopts_its_workload_and_a_returning_node_gives_up_moved_work() {
    let mut c = Cluster::start();
    c.add_agent(&FRANKFURT);
    c.add_agent(&NEW_YORK);
    c.wait_active(&["fra", "nyc"]);
    let spec = r#"{"id":"steady","requirements":{"cpu":0.1,"memory":"16MiB"},"constraints":{"geoProximity":{"latitude":50,"longitude":8}},"spec":{"command":"sleep","args":["600"]}}"#;
    assert_eq!(api(&c.api, "POST", "/api/v1/workloads", spec).0, 201);
    assert_eq!(c.wait_placed("steady")["node"], "fra");
    let running = |c: &Cluster| {
        let w = c.get("/api/v1/workloads/steady");
        (w["state"] == "running").then(|| (w["node"].as_str().unwrap().to_string(), w["status"]["pid"].as_u64().unwrap()))
    };
    let (_, pid) = wait_until(Duration::from_secs(10), "steady to run", || running(&c));

    // A quick agent restart (within the lease): the same process is adopted, nothing moves.
    c.kill_agent("fra");
    assert!(alive(pid), "a workload must outlive its agent");
    c.restart_agent("fra");
    wait_until(Duration::from_secs(10), "fra to reconnect", || (node(&c.get("/api/v1/nodes"), "fra")["connected"] == true).then_some(()));
    let (n, p) = wait_until(Duration::from_secs(10), "steady's status after the restart", || running(&c));
    assert_eq!((n.as_str(), p), ("fra", pid), "re-adopted, not restarted");

    // A long absence: the workload fails over; when fra returns it stops its stale copy.
    c.kill_agent("fra");
    wait_until(Duration::from_millis(LEASE_MS + 2_000), "failover to nyc", || running(&c).filter(|(n, _)| n == "nyc"));
    assert!(alive(pid), "the orphan keeps running while its agent is away");
    c.restart_agent("fra");
    wait_until(Duration::from_secs(20), "fra to stop its stale copy", || (!alive(pid)).then_some(()));
    c.wait_active(&["fra", "nyc"]);
    assert_eq!(c.get("/api/v1/workloads/steady")["node"], "nyc");
}
