//! `verge cache …`: the fleet's edge caches through the server's
//! `/api/v1/cache` routes.

use std::io::{IsTerminal, Write};
use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::Subcommand;
use serde_json::{json, Value};
use verge_client::{url_path, Api, Method};

use crate::table::{bytes, cell, print, print_json};

/// `verge cache …`.
#[derive(Subcommand)]
pub enum CacheCmd {
    /// Print a cached value (raw bytes) from a node, or the first node holding it.
    Get {
        /// The key (up to 1 KiB of UTF-8).
        key: String,
        /// Read from this node.
        #[arg(long)]
        node: Option<String>,
    },
    /// Store a value on nodes (all connected ones by default); every other
    /// node drops an older copy.
    Put {
        /// The key (up to 1 KiB of UTF-8).
        key: String,
        /// The value; or use --file.
        #[arg(required_unless_present = "file")]
        value: Option<String>,
        /// Read the value from this file.
        #[arg(long, short)]
        file: Option<PathBuf>,
        /// Only these nodes, comma-separated.
        #[arg(long)]
        nodes: Option<String>,
        /// Time to live, e.g. 30s.
        #[arg(long)]
        ttl: Option<String>,
        /// vm_image, ml_model, app_data, …
        #[arg(long = "type")]
        kind: Option<String>,
        /// Answer without waiting for the other nodes to drop older copies.
        #[arg(long)]
        eventual: bool,
    },
    /// Invalidate a key.
    Rm {
        /// The key to drop.
        key: String,
        /// local (with --node), regional (with --region) or global.
        #[arg(long, default_value = "global")]
        scope: String,
        /// The node, for --scope local.
        #[arg(long)]
        node: Option<String>,
        /// The region label, for --scope regional.
        #[arg(long)]
        region: Option<String>,
        /// Answer at once instead of after every node acknowledged.
        #[arg(long)]
        eventual: bool,
    },
    /// Read keys through from the origin into the caches ahead of demand.
    Prewarm {
        /// The keys to fetch, as the origin names them.
        #[arg(required = true)]
        keys: Vec<String>,
        /// Higher runs first (0-255).
        #[arg(long, default_value_t = 100)]
        priority: u8,
        /// Only these nodes, comma-separated.
        #[arg(long)]
        nodes: Option<String>,
    },
    /// List the keys a node holds (memory and disk; a full scan, step by step).
    Keys {
        /// The node.
        #[arg(long)]
        node: String,
        /// Only keys matching this glob (`*`, `?`, `[a-z]`, as Redis's KEYS).
        #[arg(long = "match")]
        pattern: Option<String>,
    },
    /// Every node's cache: tiers, hits, misses, origin fetches, pre-warms.
    Stats {
        /// Only this node.
        #[arg(long)]
        node: Option<String>,
    },
}

fn query(pairs: &[(&str, Option<&str>)]) -> String {
    let q: Vec<String> = pairs.iter().filter_map(|(k, v)| v.map(|v| format!("{k}={}", url_path(v)))).collect();
    if q.is_empty() {
        String::new()
    } else {
        format!("?{}", q.join("&"))
    }
}

/// Files a node covers per step of `verge cache keys`: a step is one round
/// trip through the server, so fewer, larger steps list a big node faster.
const KEYS_STEP: &str = "10000";

/// Runs a cache command: tables by default, the API's JSON with `--json`.
pub async fn run(api: &Api, cmd: CacheCmd, as_json: bool) -> Result<()> {
    let keys: &[String] = match &cmd {
        CacheCmd::Get { key, .. } | CacheCmd::Put { key, .. } | CacheCmd::Rm { key, .. } => std::slice::from_ref(key),
        CacheCmd::Prewarm { keys, .. } => keys,
        _ => &[],
    };
    if let Some(bad) = keys.iter().find(|k| !verge_cache::rules::valid_key(k)) {
        anyhow::bail!("bad key {bad:?}: {}", verge_cache::rules::KEY_RULE);
    }
    match cmd {
        CacheCmd::Get { key, node } => {
            let path = format!("/api/v1/cache/{}{}", url_path(&key), query(&[("node", node.as_deref())]));
            let (value, _) = api.call_bytes(Method::GET, &path, Vec::new(), "").await?;
            let mut out = std::io::stdout();
            out.write_all(&value)?;
            // Bytes as stored when piped (`> file` stays exact); on a
            // terminal, the prompt starts on a line of its own.
            if out.is_terminal() && !value.ends_with(b"\n") {
                out.write_all(b"\n")?;
            }
            return Ok(());
        }
        CacheCmd::Put { key, value, file, nodes, ttl, kind, eventual } => {
            let too_large = |size: u64| {
                let limit = verge_cache::rules::FANOUT_MAX_VALUE as u64;
                (size > limit).then(|| {
                    anyhow::anyhow!(
                        "the value is {}; the server fans out values of at most {}",
                        verge_core::Bytes(size),
                        verge_core::Bytes(limit)
                    )
                })
            };
            let body = match (value, file) {
                (_, Some(f)) => {
                    let size = std::fs::metadata(&f).with_context(|| format!("reading {}", f.display()))?.len();
                    if let Some(e) = too_large(size) {
                        return Err(e);
                    }
                    std::fs::read(&f).with_context(|| format!("reading {}", f.display()))?
                }
                (Some(v), None) => v.into_bytes(),
                (None, None) => Vec::new(),
            };
            if let Some(e) = too_large(body.len() as u64) {
                return Err(e);
            }
            let consistency = if eventual { "eventual" } else { "strong" };
            let q = query(&[
                ("nodes", nodes.as_deref()),
                ("ttl", ttl.as_deref()),
                ("type", kind.as_deref()),
                ("consistency", Some(consistency)),
            ]);
            let answer = match api.call_bytes(Method::PUT, &format!("/api/v1/cache/{}{q}", url_path(&key)), body, "").await {
                Ok((body, _)) => Ok(serde_json::from_slice(&body).context("the server's answer is not JSON")?),
                Err(e) => Err(e),
            };
            let (answer, complete) = partial(answer)?;
            show(&answer, as_json, print_put);
            if !complete {
                anyhow::bail!("not every node stored the value or dropped its older copy");
            }
        }
        CacheCmd::Rm { key, scope, node, region, eventual } => {
            let consistency = if eventual { "eventual" } else { "strong" };
            let q = query(&[
                ("scope", Some(&scope)),
                ("node", node.as_deref()),
                ("region", region.as_deref()),
                ("consistency", Some(consistency)),
            ]);
            let (answer, complete) = partial(api.call(Method::DELETE, &format!("/api/v1/cache/{}{q}", url_path(&key)), None).await)?;
            show(&answer, as_json, print_rm);
            if !complete {
                anyhow::bail!("not every node in scope acknowledged the invalidation");
            }
        }
        CacheCmd::Prewarm { keys, priority, nodes } => {
            let nodes: Option<Vec<&str>> = nodes.as_deref().map(|n| n.split(',').collect());
            let body = json!({"keys": keys, "priority": priority, "nodes": nodes});
            let answer = api.call(Method::POST, "/api/v1/cache/prewarm", Some(&body)).await?;
            show(&answer, as_json, |a| {
                println!("{} keys queued at priority {} on {}", cell(&a["keys"]), cell(&a["priority"]), names(&a["nodes"]));
            });
        }
        CacheCmd::Keys { node, pattern } => {
            let mut keys = Vec::new();
            let mut cursor = "0".to_string();
            loop {
                let path = format!(
                    "/api/v1/nodes/{}/cache/keys{}",
                    url_path(&node),
                    query(&[("cursor", Some(&cursor)), ("count", Some(KEYS_STEP)), ("match", pattern.as_deref())])
                );
                let step = api.get(&path).await?;
                let listed = step["keys"].as_array().context("the answer lists no keys")?;
                keys.extend(listed.iter().filter_map(|k| k.as_str().map(str::to_string)));
                cursor = step["cursor"].as_str().context("the answer has no cursor")?.to_string();
                if cursor == "0" {
                    break;
                }
            }
            keys.sort();
            if as_json {
                print_json(&json!(keys));
            } else {
                keys.iter().for_each(|k| println!("{k}"));
            }
        }
        CacheCmd::Stats { node } => {
            let answer = api.get(&format!("/api/v1/cache{}", query(&[("node", node.as_deref())]))).await?;
            show(&answer, as_json, print_stats);
        }
    }
    Ok(())
}

/// The API's JSON with `--json`, else what `human` makes of it.
fn show(answer: &Value, as_json: bool, human: impl Fn(&Value)) {
    if as_json {
        print_json(answer);
    } else {
        human(answer);
    }
}

/// A fan-out's answer and whether every node did its part: the server
/// answers 502 or 504 with the per-node outcomes when some did not.
fn partial(answer: Result<Value, verge_client::ClientError>) -> Result<(Value, bool)> {
    match answer {
        Ok(v) => Ok((v, true)),
        Err(verge_client::ClientError::Api { status: status @ (502 | 504), code, message }) if code.is_empty() => {
            match serde_json::from_str::<Value>(&message) {
                Ok(v) if v.get("key").is_some() => Ok((v, false)),
                _ => Err(verge_client::ClientError::Api { status, code, message }.into()),
            }
        }
        Err(e) => Err(e.into()),
    }
}

/// A JSON array of node names, as strings (none if it is not an array).
fn list(v: &Value) -> Vec<String> {
    v.as_array().map(|a| a.iter().map(cell).collect()).unwrap_or_default()
}

/// A JSON array of node names as `a, b, c`.
fn names(v: &Value) -> String {
    let list = list(v);
    if list.is_empty() {
        "no node".into()
    } else {
        list.join(", ")
    }
}

/// `verge cache put`: the version every replica got, each node's outcome,
/// and what the other nodes did with their older copies.
fn print_put(a: &Value) {
    println!("{} version {}", cell(&a["key"]), cell(&a["version"]));
    let mut rows: Vec<Vec<String>> =
        a["nodes"].as_object().map(|m| m.iter().map(|(id, r)| vec![id.clone(), cell(r)]).collect()).unwrap_or_default();
    let (silent, eventual) = (list(&a["silent"]), a["consistency"] == "eventual");
    for id in list(&a["others"]) {
        let outcome = match a["invalidated"].get(&id) {
            Some(Value::Bool(true)) => "dropped an older copy",
            Some(_) => "held no copy",
            None if silent.contains(&id) => "no answer (drops an older copy when it hears)",
            None if eventual => "told to drop an older copy",
            None => "-",
        };
        rows.push(vec![id, outcome.into()]);
    }
    rows.extend(list(&a["queued"]).into_iter().map(|id| vec![id, "offline (drops an older copy when it returns)".into()]));
    print(&["NODE", "RESULT"], &rows);
}

/// `verge cache rm`: who dropped the key, who had it, who never answered.
fn print_rm(a: &Value) {
    let (silent, waiting) = (list(&a["silent"]), list(&a["queued"]));
    if a["consistency"] == "eventual" {
        println!("{} invalidation sent to {} (eventual: not waiting for acknowledgements)", cell(&a["key"]), names(&a["nodes"]));
        if !waiting.is_empty() {
            println!("queued for {}: not connected, they drop it when they connect again", waiting.join(", "));
        }
        return;
    }
    let mut rows: Vec<Vec<String>> = a["acknowledged"]
        .as_object()
        .map(|m| {
            m.iter()
                .map(|(id, removed)| vec![id.clone(), if removed == true { "dropped its copy" } else { "held no copy" }.into()])
                .collect()
        })
        .unwrap_or_default();
    for id in &silent {
        let why = if waiting.contains(id) {
            "not connected, lease running (queued for its return)"
        } else {
            "no answer (it drops the key when it hears)"
        };
        rows.push(vec![id.clone(), why.into()]);
    }
    for id in waiting.iter().filter(|id| !silent.contains(id)) {
        rows.push(vec![id.clone(), "offline (queued for its return)".into()]);
    }
    let done = if silent.is_empty() { "invalidated (strong)" } else { "not confirmed everywhere (strong)" };
    println!("{} {done}", cell(&a["key"]));
    print(&["NODE", "ACKNOWLEDGED"], &rows);
}

/// The hot tier's policy: for the adaptive one, with the candidate it
/// serves with now (`adaptive: lirs`).
fn policy(hot: &Value) -> String {
    match (cell(&hot["configuredPolicy"]), cell(&hot["policy"])) {
        (configured, active) if configured == active || configured == "-" => active,
        (configured, active) => format!("{configured}: {active}"),
    }
}

/// `verge cache stats`: a line per node.
fn print_stats(a: &Value) {
    let rows: Vec<Vec<String>> = a.as_object().map(|m| m.iter().map(|(id, s)| stats_row(id, s)).collect()).unwrap_or_default();
    print(
        &[
            "NODE",
            "POLICY",
            "HOT",
            "WARM",
            "COLD",
            "HITS HOT/WARM/COLD",
            "MISSES",
            "HIT RATIO",
            "ORIGIN FETCHES",
            "PREWARMED",
            "PENDING WRITES",
            "HOT KEYS",
        ],
        &rows,
    );
}

/// One node's line of `verge cache stats`, or why it has none (the server
/// could not reach it).
fn stats_row(id: &str, s: &Value) -> Vec<String> {
    if let Some(e) = s["error"].as_str() {
        return vec![id.to_string(), format!("no answer: {e}")];
    }
    let tier = |t: &Value| format!("{} / {} of {}", cell(&t["entries"]), bytes(&t["bytes"]), bytes(&t["capacity"]));
    let count = |v: &Value| v.as_u64().unwrap_or(0);
    let hits = count(&s["hotHits"]) + count(&s["warmHits"]) + count(&s["cold"]["hits"]);
    let total = hits + count(&s["misses"]);
    let ratio = if total == 0 { "-".into() } else { format!("{:.1}%", hits as f64 * 100.0 / total as f64) };
    let cold = if s["cold"]["enabled"] == true { format!("{} hits", cell(&s["cold"]["hits"])) } else { "off".into() };
    let top: Vec<String> = s["hotKeys"]
        .as_array()
        .map(|k| k.iter().take(3).map(|p| format!("{} ({})", cell(&p[0]), cell(&p[1]))).collect())
        .unwrap_or_default();
    vec![
        id.to_string(),
        policy(&s["hot"]),
        tier(&s["hot"]),
        tier(&s["warm"]),
        cold,
        format!("{}/{}/{}", cell(&s["hotHits"]), cell(&s["warmHits"]), cell(&s["cold"]["hits"])),
        cell(&s["misses"]),
        ratio,
        cell(&s["originFetches"]),
        cell(&s["prewarmed"]),
        cell(&s["pendingWrites"]),
        top.join(", "),
    ]
}
