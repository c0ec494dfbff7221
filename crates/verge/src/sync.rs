//! `verge sync …`: delta synchronisation of files and directories.

use std::path::PathBuf;

use anyhow::Result;
use clap::Subcommand;

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
}

/// Runs a sync command.
pub async fn run(cmd: SyncCmd) -> Result<()> {
    match cmd {
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
                    .map(|f| vec![f.path.clone(), format!("{:?}", f.strategy).to_lowercase(), f.size.to_string(), f.literal_bytes.to_string(), f.matched_bytes.to_string()])
                    .collect();
                crate::table::print(&["PATH", "STRATEGY", "SIZE", "LITERAL", "MATCHED"], &rows);
            }
            Ok(())
        }
    }
}
