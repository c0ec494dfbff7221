//! The security commands: `verge token …`, `verge audit …`,
//! `verge compliance report`. Tables by default, the API's JSON with `--json`.

use anyhow::{bail, Result};
use clap::Subcommand;
use serde_json::{json, Value};
use verge_client::{Api, Method};

use crate::table::{cell, print, print_json};

/// `verge token …`.
#[derive(Subcommand)]
pub enum TokenCmd {
    /// Mint a token; its secret is printed once.
    Create {
        /// admin, operator, viewer or node (a join token).
        #[arg(long)]
        role: String,
        /// Lifetime, e.g. `1h`; no expiry when omitted.
        #[arg(long)]
        ttl: Option<String>,
        /// What it is for.
        #[arg(long)]
        name: Option<String>,
        /// For a node token: the only node id it may join as.
        #[arg(long)]
        node: Option<String>,
    },
    /// List tokens (never their secrets).
    Ls,
    /// Revoke a token by id.
    Revoke { id: String },
}

/// `verge audit …`.
#[derive(Subcommand)]
pub enum AuditCmd {
    /// Print audit entries.
    Ls {
        /// Only entries after this sequence number.
        #[arg(long, default_value_t = 0)]
        since: u64,
        /// At most this many.
        #[arg(long, default_value_t = 100)]
        limit: usize,
    },
    /// Check the hash chain; reports the first tampered entry and fails if any.
    Verify,
}

/// `verge compliance …`.
#[derive(Subcommand)]
pub enum ComplianceCmd {
    /// Findings for every node, with remediations for the failures.
    Report {
        /// iso27001, soc2 or hipaa; all when omitted.
        #[arg(long)]
        pack: Option<String>,
        /// Print passing controls too.
        #[arg(long)]
        all: bool,
    },
}

/// Runs a token command.
pub async fn token(api: &Api, cmd: TokenCmd, as_json: bool) -> Result<()> {
    match cmd {
        TokenCmd::Create { role, ttl, name, node } => {
            let t = api.call(Method::POST, "/api/v1/tokens", Some(&json!({"role": role, "ttl": ttl, "name": name, "node": node}))).await?;
            if as_json {
                print_json(&t);
            } else {
                println!("{}", cell(&t["token"]));
                if !t["caHash"].is_null() {
                    eprintln!(
                        "join a node with: verge agent --config edge-config.yaml --token {} --ca-hash {}",
                        cell(&t["token"]),
                        cell(&t["caHash"])
                    );
                }
            }
        }
        TokenCmd::Ls => {
            let all = api.get("/api/v1/tokens").await?;
            if as_json {
                print_json(&all);
                return Ok(());
            }
            let rows: Vec<Vec<String>> = all
                .as_array()
                .into_iter()
                .flatten()
                .map(|t| vec![cell(&t["id"]), cell(&t["name"]), cell(&t["role"]), cell(&t["state"]), cell(&t["expiresMs"])])
                .collect();
            print(&["ID", "NAME", "ROLE", "STATE", "EXPIRES MS"], &rows);
        }
        TokenCmd::Revoke { id } => {
            let r = api.call(Method::DELETE, &format!("/api/v1/tokens/{id}"), None).await?;
            if as_json {
                print_json(&r);
            } else {
                println!("revoked {id}");
            }
        }
    }
    Ok(())
}

/// Runs an audit command.
pub async fn audit(api: &Api, cmd: AuditCmd, as_json: bool) -> Result<()> {
    match cmd {
        AuditCmd::Ls { since, limit } => {
            let entries = api.get(&format!("/api/v1/audit?since={since}&limit={limit}")).await?;
            if as_json {
                print_json(&entries);
                return Ok(());
            }
            let rows: Vec<Vec<String>> = entries
                .as_array()
                .into_iter()
                .flatten()
                .map(|e| ["seq", "ts_ms", "actor", "action", "outcome", "reason"].iter().map(|k| cell(&e[*k])).collect())
                .collect();
            print(&["SEQ", "TS MS", "ACTOR", "ACTION", "OUTCOME", "REASON"], &rows);
        }
        AuditCmd::Verify => {
            let r = api.get("/api/v1/audit/verify").await?;
            if as_json {
                print_json(&r);
            }
            match &r["firstTampered"] {
                Value::Null => {
                    if !as_json {
                        println!("audit log intact: {} entries", cell(&r["entries"]));
                    }
                }
                t => bail!("audit log tampered: entry {} (line {}): {}", cell(&t["seq"]), cell(&t["line"]), cell(&t["why"])),
            }
        }
    }
    Ok(())
}

/// Runs a compliance command.
pub async fn compliance(api: &Api, cmd: ComplianceCmd, as_json: bool) -> Result<()> {
    let ComplianceCmd::Report { pack, all } = cmd;
    let path = match &pack {
        Some(p) => format!("/api/v1/compliance/report?pack={p}"),
        None => "/api/v1/compliance/report".to_string(),
    };
    let r = api.get(&path).await?;
    if as_json {
        print_json(&r);
        return Ok(());
    }
    let rows: Vec<Vec<String>> = r["findings"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|f| all || f["passed"] == false)
        .map(|f| {
            let result = if f["passed"] == true { "pass" } else { "FAIL" };
            let fix = if f["passed"] == true { String::new() } else { cell(&f["remediation"]) };
            vec![cell(&f["subject"]), cell(&f["pack"]), cell(&f["control"]), result.into(), cell(&f["detail"]), fix]
        })
        .collect();
    print(&["NODE", "PACK", "CONTROL", "RESULT", "DETAIL", "REMEDIATION"], &rows);
    println!("{} passed, {} failed", cell(&r["passed"]), cell(&r["failed"]));
    Ok(())
}
