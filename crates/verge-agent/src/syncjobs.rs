//! Runs the server's sync jobs on this agent: pushes a tree under the sync
//! root to another agent's data port and reports progress and outcome
//! back over the gateway.

use std::path::Path;
use std::time::{Duration, Instant};

use tokio::sync::mpsc;
use verge_proto::AgentMessage;

use crate::syncclient::{push, PushOptions};

/// What a [`verge_proto::ServerMessage::SyncPush`] asks for.
pub struct SyncJob {
    /// The server's job number.
    pub job: u64,
    /// Local path under the sync root.
    pub path: String,
    /// The target's data port.
    pub target_addr: String,
    /// Path under the target's sync root.
    pub target_path: String,
    /// Delete target files the source lacks.
    pub mirror: bool,
    /// Upload limit, bytes per second.
    pub limit_bps: Option<u64>,
}

/// Starts `job` in the background; statuses go to `outbox`.
pub fn start(job: SyncJob, node: &str, data_dir: &Path, outbox: mpsc::UnboundedSender<AgentMessage>) {
    let root = crate::agent::sync_root(data_dir);
    let bases = data_dir.join("sync").join("bases");
    let sender = node.to_string();
    tokio::spawn(async move {
        let status = |state: &str, sent: u64, total: u64, written: u64, error: Option<String>| AgentMessage::SyncStatus {
            job: job.job,
            state: state.into(),
            bytes_sent: sent,
            bytes_total: total,
            files_written: written,
            error,
        };
        let local = match verge_sync::manifest::check_path(&job.path) {
            Ok(()) => root.join(&job.path),
            Err(e) => {
                let _ = outbox.send(status("failed", 0, 0, 0, Some(e.to_string())));
                return;
            }
        };
        let opts = PushOptions { mirror: job.mirror, limit_bps: job.limit_bps, bases_dir: Some(bases), sender, ..PushOptions::default() };
        let last = std::sync::Mutex::new(Instant::now());
        let progress = |sent: u64, total: u64| {
            let mut last = last.lock().unwrap_or_else(|p| p.into_inner());
            if last.elapsed() >= Duration::from_millis(500) {
                *last = Instant::now();
                let _ = outbox.send(status("running", sent, total, 0, None));
            }
        };
        tracing::info!(job = job.job, path = %job.path, target = %job.target_addr, "sync job started");
        let msg = match push(&job.target_addr, &local, &job.target_path, &opts, progress).await {
            Ok(r) => {
                let failed = r.applied.failed.first().map(|(p, why)| format!("{p}: {why}"));
                let state = if failed.is_some() { "failed" } else { "done" };
                status(state, r.bytes_sent, r.bytes_sent, r.applied.written.len() as u64, failed)
            }
            Err(e) => status("failed", 0, 0, 0, Some(e.to_string())),
        };
        tracing::info!(job = job.job, ?msg, "sync job ended");
        let _ = outbox.send(msg);
    });
}
