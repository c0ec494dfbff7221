//! `verge sync …`: delta synchronisation of files and directories.

use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::connect::Conn;
use anyhow::{anyhow, bail, Context, Result};
use clap::{Args, Subcommand};
use verge_agent::syncclient::{pull, push, Peer, PushOptions, PushReport};
use verge_sync::bandwidth::level_for_link;

/// How to send.
#[derive(Args, Clone)]
pub struct SendArgs {
    /// Delete remote files the local tree lacks.
    #[arg(long)]
    mirror: bool,
    /// Full sync: send every file whole instead of deltas.
    #[arg(long)]
    full: bool,
    /// How the node settles files it changed since our last push:
    /// latest-wins, source-wins, target-wins, merge (keep both), version-vector (keep both).
    #[arg(long, default_value = "latest-wins")]
    conflict: verge_sync::conflict::Strategy,
    /// Upload limit, e.g. `1MiB` (per second).
    #[arg(long)]
    bwlimit: Option<verge_core::Bytes>,
    /// Link speed in Mbit/s, which picks the compression level.
    #[arg(long, default_value_t = 100)]
    link_mbps: u64,
    /// Print the report as JSON.
    #[arg(long)]
    json: bool,
}

/// The sync commands.
#[derive(Subcommand)]
pub enum SyncCmd {
    /// Print what a transfer from NEW to a receiver holding OLD would send.
    Diff {
        /// The receiver's copy (file or directory).
        old: PathBuf,
        /// The sender's copy (file or directory).
        new: PathBuf,
        /// Assume the sender still holds OLD (the version the receiver last
        /// acknowledged) and delta against it with zstd patch-from.
        #[arg(long)]
        known_base: bool,
        /// zstd level of the bundle (1–19; higher for slower links).
        #[arg(long, default_value_t = 3)]
        level: i32,
        /// Per-file detail.
        #[arg(long)]
        verbose: bool,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Push a local file or directory to a node: `--to NODE:PATH`, PATH
    /// relative to the node's sync root.
    Push {
        /// Local file or directory.
        dir: PathBuf,
        /// `NODE:PATH`.
        #[arg(long)]
        to: String,
        #[command(flatten)]
        send: SendArgs,
        #[command(flatten)]
        api: Conn,
    },
    /// Pull `NODE:PATH` from a node into a local file or directory.
    Pull {
        /// `NODE:PATH`.
        from: String,
        /// Local file or directory.
        dir: PathBuf,
        /// Delete local files the node lacks.
        #[arg(long)]
        mirror: bool,
        /// Print the report as JSON.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        api: Conn,
    },
    /// Sync a directory and a node both ways: each side's changes (and
    /// deletions) since the last sync reach the other; files both changed are
    /// settled by `--conflict` (`merge`: three-way line merge against the last
    /// synced version).
    Bisync {
        /// Local directory.
        dir: PathBuf,
        /// `NODE:PATH`.
        #[arg(long = "with")]
        with: String,
        #[command(flatten)]
        send: SendArgs,
        #[command(flatten)]
        api: Conn,
    },
    /// Push a directory to a node now and again after every change, until Ctrl-C.
    Watch {
        /// Local directory.
        dir: PathBuf,
        /// `NODE:PATH`.
        #[arg(long)]
        to: String,
        /// Quiet time after a change before pushing, e.g. `300ms`.
        #[arg(long, default_value = "300ms")]
        debounce: verge_core::Millis,
        #[command(flatten)]
        send: SendArgs,
        #[command(flatten)]
        api: Conn,
    },
}

/// Splits `NODE:PATH`, looks up the node's data port and how to reach it.
async fn resolve(conn: &Conn, target: &str) -> Result<(Peer, String)> {
    let (node, path) = target.split_once(':').ok_or_else(|| anyhow!("{target:?} is not NODE:PATH"))?;
    verge_sync::manifest::check_path(path)?;
    let api = conn.api()?;
    let n = api.get(&format!("/api/v1/nodes/{node}")).await.with_context(|| format!("looking up node {node}"))?;
    let addr = n["data_addr"].as_str().ok_or_else(|| anyhow!("node {node} advertises no data port (is its agent connected?)"))?;
    Ok((conn.peer(&api, node, addr.to_string()).await?, path.to_string()))
}

fn print_push(r: &PushReport, json: bool) -> Result<()> {
    if json {
        println!("{}", serde_json::to_string_pretty(r)?);
    } else {
        println!(
            "{} files, {} sent ({} bytes on the wire in {} chunks, {} resumed), {} written, {} removed, {} conflicts, {} ms",
            r.files,
            r.sent.len(),
            r.bytes_sent,
            r.chunks,
            r.chunks_resumed,
            r.applied.written.len(),
            r.applied.removed.len(),
            r.applied.conflicts.len(),
            r.elapsed_ms
        );
    }
    push_failures(r)
}

/// An error naming the files the node could not write, if any.
fn push_failures(r: &PushReport) -> Result<()> {
    if let Some((p, why)) = r.applied.failed.first() {
        bail!("{} files failed on the node; first: {p}: {why}", r.applied.failed.len());
    }
    Ok(())
}

/// Push options from the command line.
fn push_options(send: &SendArgs) -> Result<PushOptions> {
    Ok(PushOptions {
        mirror: send.mirror,
        full: send.full,
        conflict: send.conflict,
        sender: std::env::var("HOSTNAME").unwrap_or_else(|_| "cli".into()),
        level: level_for_link(send.link_mbps * 1_000_000),
        limit_bps: send.bwlimit.map(|b| b.0),
        bases_dir: Some(state_dir()?.join("sync-bases")),
        ..PushOptions::default()
    })
}

async fn push_once(peer: &Peer, dir: &Path, path: &str, send: &SendArgs) -> Result<PushReport> {
    let opts = push_options(send)?;
    let bar = indicatif::ProgressBar::new(0);
    bar.set_style(
        indicatif::ProgressStyle::with_template("{bar:40} {bytes}/{total_bytes} {bytes_per_sec} eta {eta}")
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
    );
    let report = push(peer, dir, path, &opts, |sent, total| {
        if total >= 1 << 20 {
            bar.set_length(total);
            bar.set_position(sent);
        }
    })
    .await;
    bar.finish_and_clear();
    Ok(report?)
}

/// Where the CLI keeps what nodes acknowledged, for known-base deltas.
fn state_dir() -> Result<PathBuf> {
    let base = std::env::var_os("XDG_STATE_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".local/state")));
    Ok(base.ok_or_else(|| anyhow!("set HOME or XDG_STATE_HOME"))?.join("verge"))
}

async fn watch(dir: PathBuf, to: String, debounce: Duration, send: SendArgs, conn: Conn) -> Result<()> {
    use notify::Watcher;
    let (peer, path) = resolve(&conn, &to).await?;
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let mut watcher = notify::recommended_watcher(move |ev: notify::Result<notify::Event>| {
        // Reads (ours included, while pushing) are not changes.
        if ev.is_ok_and(|e| !matches!(e.kind, notify::EventKind::Access(_))) {
            let _ = tx.send(());
        }
    })?;
    watcher.watch(&dir, notify::RecursiveMode::Recursive).with_context(|| format!("watching {}", dir.display()))?;
    let mut stop = crate::shutdown_signal()?;
    loop {
        match push_once(&peer, &dir, &path, &send).await {
            Ok(r) => print_push(&r, send.json)?,
            Err(e) => eprintln!("verge: push failed, will retry on the next change: {e:#}"),
        }
        tokio::select! {
            _ = stop.wait_for(|s| *s) => return Ok(()),
            got = rx.recv() => if got.is_none() { return Ok(()) },
        }
        // Wait for a quiet period so a burst of writes becomes one push.
        loop {
            tokio::select! {
                _ = stop.wait_for(|s| *s) => return Ok(()),
                _ = tokio::time::sleep(debounce) => break,
                got = rx.recv() => if got.is_none() { return Ok(()) },
            }
        }
    }
}

/// Runs a sync command.
pub async fn run(cmd: SyncCmd) -> Result<()> {
    match cmd {
        SyncCmd::Push { dir, to, send, api } => {
            let (peer, path) = resolve(&api, &to).await?;
            let r = push_once(&peer, &dir, &path, &send).await?;
            print_push(&r, send.json)
        }
        SyncCmd::Pull { from, dir, mirror, json, api } => {
            let (peer, path) = resolve(&api, &from).await?;
            let r = pull(&peer, &path, &dir, mirror, Duration::from_secs(60)).await?;
            if json {
                println!("{}", serde_json::to_string_pretty(&r)?);
            } else {
                println!("{} written, {} removed", r.written.len(), r.removed.len());
            }
            if let Some((p, why)) = r.failed.first() {
                bail!("{} files failed; first: {p}: {why}", r.failed.len());
            }
            Ok(())
        }
        SyncCmd::Bisync { dir, with, send, api } => {
            let (peer, path) = resolve(&api, &with).await?;
            let node = with.split_once(':').map_or("node", |(n, _)| n);
            std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
            let r = verge_agent::bisync::bisync(&peer, &dir, &path, node, send.conflict, &push_options(&send)?).await?;
            if send.json {
                println!("{}", serde_json::to_string_pretty(&r)?);
                return push_failures(&r.push);
            }
            println!("{} pulled, {} deleted here, {} conflicts", r.pulled.len(), r.deleted_local.len(), r.conflicts.len());
            for (p, how) in &r.conflicts {
                println!("  conflict {p}: {how}");
            }
            print_push(&r.push, false)
        }
        SyncCmd::Watch { dir, to, debounce, send, api } => watch(dir, to, Duration::from_millis(debounce.0), send, api).await,
        SyncCmd::Diff { old, new, known_base, level, verbose, json } => {
            anyhow::ensure!((1..=19).contains(&level), "--level must be between 1 and 19, got {level}");
            let report = tokio::task::spawn_blocking(move || verge_sync::diff::diff(&old, &new, known_base, level, verbose)).await??;
            if json {
                println!("{}", serde_json::to_string_pretty(&report)?);
                return Ok(());
            }
            println!(
                "{} bytes on the wire ({} offer, {} request, {} bundle); strategy {}",
                report.bytes_sent, report.offer_bytes, report.request_bytes, report.bundle_bytes, report.strategy
            );
            println!(
                "{} of {} files changed, {} literal and {} matched bytes, {} receiver files not in NEW",
                report.changed, report.files, report.literal_bytes, report.matched_bytes, report.extraneous
            );
            if let Some(detail) = &report.detail {
                let rows: Vec<Vec<String>> = detail
                    .iter()
                    .map(|f| {
                        vec![
                            f.path.clone(),
                            f.strategy.as_str().to_string(),
                            f.size.to_string(),
                            f.literal_bytes.to_string(),
                            f.matched_bytes.to_string(),
                        ]
                    })
                    .collect();
                crate::table::print(&["PATH", "STRATEGY", "SIZE", "LITERAL", "MATCHED"], &rows);
            }
            Ok(())
        }
    }
}
