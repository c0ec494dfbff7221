//! `verge cache …`: the fleet's edge caches through the server's
//! `/api/v1/cache` routes.

use std::io::{IsTerminal, Write};
use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::Subcommand;
use serde_json::json;
use verge_client::{url_path, Api, Method};

/// `verge cache …`.
#[derive(Subcommand)]
pub enum CacheCmd {
    /// Print a cached value (raw bytes) from a node, or the first node holding it.
    Get {
        key: String,
        /// Read from this node.
        #[arg(long)]
        node: Option<String>,
    },
    /// Store a value on nodes (all connected ones by default).
    Put {
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
    },
    /// Invalidate a key.
    Rm {
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
        #[arg(required = true)]
        keys: Vec<String>,
        /// Higher runs first (0-255).
        #[arg(long, default_value_t = 100)]
        priority: u8,
        /// Only these nodes, comma-separated.
        #[arg(long)]
        nodes: Option<String>,
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

/// Runs a cache command.
pub async fn run(api: &Api, cmd: CacheCmd) -> Result<()> {
    let pretty = |v: &serde_json::Value| println!("{}", serde_json::to_string_pretty(v).unwrap_or_default());
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
        }
        CacheCmd::Put { key, value, file, nodes, ttl, kind } => {
            let body = match (value, file) {
                (_, Some(f)) => std::fs::read(&f).with_context(|| format!("reading {}", f.display()))?,
                (Some(v), None) => v.into_bytes(),
                (None, None) => Vec::new(),
            };
            let q = query(&[("nodes", nodes.as_deref()), ("ttl", ttl.as_deref()), ("type", kind.as_deref())]);
            let (answer, _) = api.call_bytes(Method::PUT, &format!("/api/v1/cache/{}{q}", url_path(&key)), body, "").await?;
            pretty(&serde_json::from_slice(&answer).unwrap_or_default());
        }
        CacheCmd::Rm { key, scope, node, region, eventual } => {
            let consistency = if eventual { "eventual" } else { "strong" };
            let q = query(&[
                ("scope", Some(&scope)),
                ("node", node.as_deref()),
                ("region", region.as_deref()),
                ("consistency", Some(consistency)),
            ]);
            pretty(&api.call(Method::DELETE, &format!("/api/v1/cache/{}{q}", url_path(&key)), None).await?);
        }
        CacheCmd::Prewarm { keys, priority, nodes } => {
            let nodes: Option<Vec<&str>> = nodes.as_deref().map(|n| n.split(',').collect());
            pretty(
                &api.call(Method::POST, "/api/v1/cache/prewarm", Some(&json!({"keys": keys, "priority": priority, "nodes": nodes})))
                    .await?,
            );
        }
        CacheCmd::Stats { node } => pretty(&api.get(&format!("/api/v1/cache{}", query(&[("node", node.as_deref())]))).await?),
    }
    Ok(())
}
