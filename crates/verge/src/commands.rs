//! The client commands: `verge node …`, `verge workload …`, `verge logs`.
//! Tables by default, the API's JSON with `--json`.

use std::io::Write;
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use serde_json::{json, Value};
use verge_client::Method;

use crate::table::{bytes, cell, print, print_json};
use verge_client::Api;

/// How long `workload run` waits for its workload to be placed and running.
const RUN_WAIT: Duration = Duration::from_secs(10);

fn age(now_ms: u64, then: &Value) -> String {
    then.as_u64().map_or("never".into(), |t| format!("{:.1}s ago", now_ms.saturating_sub(t) as f64 / 1000.0))
}

fn now_ms() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64)
}

/// `verge node ls`.
pub async fn node_ls(api: &Api, json: bool) -> Result<()> {
    let nodes = api.get("/api/v1/nodes").await?;
    if json {
        print_json(&nodes);
        return Ok(());
    }
    let now = now_ms();
    let rows: Vec<Vec<String>> = nodes
        .as_array()
        .into_iter()
        .flatten()
        .map(|n| {
            vec![
                cell(&n["id"]),
                cell(&n["type"]),
                cell(&n["tier"]),
                cell(&n["location"]["city"]),
                cell(&n["lifecycle"]),
                cell(&n["health"]["status"]),
                format!("{}/{}", cell(&n["allocated"]["cpu"]), cell(&n["resources"]["cpu"]["cores"])),
                format!("{}/{}", bytes(&n["allocated"]["memory"]), bytes(&n["resources"]["memory"]["total"])),
                n["metrics"]["cpuPercent"].as_f64().map_or("-".into(), |c| format!("{c:.0}%")),
                n["workloads"].as_array().map_or(0, Vec::len).to_string(),
                cell(&n["trust"]["score"]),
                if n["quarantined"].is_null() { cell(&n["attestation"]["state"]) } else { "QUARANTINED".into() },
                age(now, &n["lastHeartbeatMs"]),
            ]
        })
        .collect();
    print(
        &[
            "ID",
            "TYPE",
            "TIER",
            "CITY",
            "LIFECYCLE",
            "HEALTH",
            "CPU ALLOC",
            "MEM ALLOC",
            "CPU USE",
            "WORKLOADS",
            "TRUST",
            "ATTESTATION",
            "LAST HEARTBEAT",
        ],
        &rows,
    );
    Ok(())
}

/// `verge node status ID`.
pub async fn node_status(api: &Api, id: &str, json: bool) -> Result<()> {
    let n = api.get(&format!("/api/v1/nodes/{id}")).await?;
    if json {
        print_json(&n);
        return Ok(());
    }
    let m = &n["metrics"];
    println!("node        {}", cell(&n["id"]));
    println!("type/tier   {} / {}", cell(&n["type"]), cell(&n["tier"]));
    println!(
        "location    {}, {} ({}, {})",
        cell(&n["location"]["city"]),
        cell(&n["location"]["country"]),
        n["location"]["latitude"],
        n["location"]["longitude"]
    );
    println!("lifecycle   {}", cell(&n["lifecycle"]));
    println!("health      {} (score {})", cell(&n["health"]["status"]), cell(&n["health"]["score"]));
    for r in n["health"]["reasons"].as_array().into_iter().flatten() {
        println!("            - {}", cell(r));
    }
    println!("connected   {}, last heartbeat {}", n["connected"], age(now_ms(), &n["lastHeartbeatMs"]));
    println!(
        "capacity    {} cores, {} memory, {} storage",
        cell(&n["resources"]["cpu"]["cores"]),
        bytes(&n["resources"]["memory"]["total"]),
        bytes(&n["resources"]["storage"]["total"])
    );
    println!("allocated   {} cores, {} memory", cell(&n["allocated"]["cpu"]), bytes(&n["allocated"]["memory"]));
    if !m.is_null() {
        println!("cpu use     {:.1}%  load {}", m["cpuPercent"].as_f64().unwrap_or(0.0), cell(&m["load"]));
        println!("memory      {} of {}", bytes(&m["memoryUsed"]), bytes(&m["memoryTotal"]));
        println!("disk        {} of {}", bytes(&m["diskUsed"]), bytes(&m["diskTotal"]));
        println!("network     rx {}  tx {}", bytes(&m["netRxBytes"]), bytes(&m["netTxBytes"]));
        println!("temperature {}", m["temperatureC"].as_f64().map_or("not exposed by this machine".into(), |t| format!("{t:.1} °C")));
    }
    println!("workloads   {}", n["workloads"].as_array().map_or(String::new(), |w| w.iter().map(cell).collect::<Vec<_>>().join(", ")));
    let backlog = &n["cacheBacklog"];
    if backlog["dropAll"] == true {
        println!("cache       drops what it cached before when it connects (new to the fleet, or it missed too many invalidations)");
    } else if backlog["keys"].as_u64().is_some_and(|k| k > 0) {
        println!("cache       {} invalidated keys to drop when it connects", backlog["keys"]);
    }
    Ok(())
}

/// `verge node drain ID`.
pub async fn node_drain(api: &Api, id: &str, json: bool) -> Result<()> {
    let n = api.call(Method::POST, &format!("/api/v1/nodes/{id}/drain"), Some(&json!({}))).await?;
    if json {
        print_json(&n);
    } else {
        println!("node {id} is draining; its workloads move to other nodes where they fit");
    }
    Ok(())
}

/// `verge node rm ID`.
pub async fn node_rm(api: &Api, id: &str, json: bool) -> Result<()> {
    let v = api.call(Method::DELETE, &format!("/api/v1/nodes/{id}"), None).await?;
    if json {
        print_json(&v);
    } else {
        println!("node {id} removed; its workloads are re-placed (a running agent registers again: stop it first)");
    }
    Ok(())
}

/// Reads a workload spec file, YAML or JSON.
pub fn read_spec(path: &Path) -> Result<Value> {
    let text = std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
    serde_yaml::from_str(&text).with_context(|| format!("{} is not valid YAML or JSON", path.display()))
}

/// `verge workload run -f FILE`.
pub async fn workload_run(api: &Api, file: &Path, json: bool) -> Result<()> {
    let spec = read_spec(file)?;
    let created = api.call(Method::POST, "/api/v1/workloads", Some(&spec)).await?;
    let id = cell(&created["id"]);
    let deadline = Instant::now() + RUN_WAIT;
    let mut w = created;
    while Instant::now() < deadline && !matches!(w["state"].as_str(), Some("running" | "completed" | "failed")) {
        if w["node"].is_null() && Instant::now() + RUN_WAIT / 2 > deadline {
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
        w = api.get(&format!("/api/v1/workloads/{id}")).await?;
    }
    if json {
        print_json(&w);
    } else if w["node"].is_null() {
        println!("workload {id} is pending: {}", cell(&w["reason"]));
    } else {
        println!("workload {id} is {} on {}: {}", cell(&w["state"]), cell(&w["node"]), cell(&w["reason"]));
    }
    Ok(())
}

/// `verge workload ls`.
pub async fn workload_ls(api: &Api, json: bool) -> Result<()> {
    let ws = api.get("/api/v1/workloads").await?;
    if json {
        print_json(&ws);
        return Ok(());
    }
    let rows: Vec<Vec<String>> = ws
        .as_array()
        .into_iter()
        .flatten()
        .map(|w| {
            vec![
                cell(&w["id"]),
                cell(&w["node"]),
                cell(&w["state"]),
                w["status"]["restarts"].as_u64().unwrap_or(0).to_string(),
                cell(&w["requirements"]["cpu"]),
                bytes(&w["requirements"]["memory"]),
                cell(&w["reason"]),
            ]
        })
        .collect();
    print(&["ID", "NODE", "STATE", "RESTARTS", "CPU", "MEMORY", "REASON"], &rows);
    Ok(())
}

/// `verge workload status ID`.
pub async fn workload_status(api: &Api, id: &str, json: bool) -> Result<()> {
    let w = api.get(&format!("/api/v1/workloads/{id}")).await?;
    if json {
        print_json(&w);
        return Ok(());
    }
    println!("workload    {}", cell(&w["id"]));
    println!(
        "command     {} {}",
        cell(&w["spec"]["command"]),
        w["spec"]["args"].as_array().map_or(String::new(), |a| a.iter().map(cell).collect::<Vec<_>>().join(" "))
    );
    println!("needs       {} cores, {} memory", cell(&w["requirements"]["cpu"]), bytes(&w["requirements"]["memory"]));
    println!("strategy    {}", cell(&w["strategy"]));
    println!("node        {}", cell(&w["node"]));
    println!("state       {}", cell(&w["state"]));
    println!("placement   {}", cell(&w["reason"]));
    println!("moves       {}", cell(&w["moves"]));
    let s = &w["status"];
    if !s.is_null() {
        println!("pid         {}", cell(&s["pid"]));
        println!("restarts    {}", cell(&s["restarts"]));
        if !s["exitCode"].is_null() {
            println!("exit code   {}", cell(&s["exitCode"]));
        }
        if let Some(m) = s["message"].as_str() {
            println!("message     {m}");
        }
    }
    Ok(())
}

/// `verge workload rm ID`.
pub async fn workload_rm(api: &Api, id: &str, json: bool) -> Result<()> {
    let v = api.call(Method::DELETE, &format!("/api/v1/workloads/{id}"), None).await?;
    if json {
        print_json(&v);
    } else {
        println!("workload {id} deleted; its node stops it");
    }
    Ok(())
}

/// `verge workload migrate ID --to NODE`.
pub async fn workload_migrate(api: &Api, id: &str, to: Option<&str>, json: bool) -> Result<()> {
    let w = api.call(Method::POST, &format!("/api/v1/workloads/{id}/migrate"), Some(&json!({"targetNode": to}))).await?;
    if json {
        print_json(&w);
    } else {
        println!("workload {id} moves to {}: {}", cell(&w["node"]), cell(&w["reason"]));
    }
    Ok(())
}

/// `verge logs WORKLOAD [--tail N] [--follow] [--stderr]`.
pub async fn logs(api: &Api, id: &str, tail: u32, follow: bool, stderr: bool) -> Result<()> {
    let stream = if stderr { "stderr" } else { "stdout" };
    let mut chunk = api.get(&format!("/api/v1/workloads/{id}/logs?stream={stream}&tail={tail}")).await?;
    let mut out = std::io::stdout();
    loop {
        out.write_all(chunk["data"].as_str().unwrap_or("").as_bytes())?;
        out.flush()?;
        if !follow {
            return Ok(());
        }
        let node = chunk["node"].clone();
        let next = chunk["nextOffset"].as_u64().unwrap_or(0);
        tokio::time::sleep(Duration::from_millis(500)).await;
        chunk = api.get(&format!("/api/v1/workloads/{id}/logs?stream={stream}&offset={next}")).await?;
        if chunk["node"] != node {
            eprintln!("-- workload moved to {} --", cell(&chunk["node"]));
            chunk = api.get(&format!("/api/v1/workloads/{id}/logs?stream={stream}&tail={tail}")).await?;
        }
    }
}
