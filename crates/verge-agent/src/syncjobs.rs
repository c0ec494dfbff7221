//! Runs the server's sync jobs on this agent: pushes a tree under the sync
//! root to another agent's data port and reports progress and outcome
//! back over the gateway.

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::mpsc;
use verge_proto::AgentMessage;

use verge_sync::bandwidth::{Allocation, BandwidthManager};

use crate::syncclient::{push, Peer, PushOptions};

/// What a [`verge_proto::ServerMessage::SyncPush`] asks for.
pub struct SyncJob {
    /// The server's job number.
    pub job: u64,
    /// Local path under the sync root.
    pub path: String,
    /// The target's data port.
    pub target: Peer,
    /// Path under the target's sync root.
    pub target_path: String,
    /// Delete target files the source lacks.
    pub mirror: bool,
    /// Upload limit, bytes per second.
    pub limit_bps: Option<u64>,
    /// Higher goes first when the bandwidth is spent.
    pub priority: u8,
}

/// The node's sync bandwidth, shared by its jobs: each job asks for a
/// rate and waits, by priority, while the global or per-peer budget is spent.
pub struct Budget {
    manager: std::sync::Mutex<BandwidthManager>,
    granted: std::sync::Mutex<std::collections::HashMap<u64, u64>>,
    changed: tokio::sync::Notify,
}

/// The rate that stands for "no limit", bytes per second.
const UNLIMITED: u64 = u64::MAX / 4;

/// Smallest rate worth starting a job with, bytes per second.
const MIN_RATE: u64 = 64 << 10;

impl Budget {
    /// A budget of `global` bytes/s, at most `per_peer` to one peer (`None`: unlimited).
    pub fn new(global: Option<u64>, per_peer: Option<u64>) -> Self {
        Budget {
            manager: std::sync::Mutex::new(BandwidthManager::new(global.unwrap_or(UNLIMITED), per_peer.unwrap_or(UNLIMITED), MIN_RATE)),
            granted: std::sync::Mutex::new(std::collections::HashMap::new()),
            changed: tokio::sync::Notify::new(),
        }
    }

    /// Waits until job `op` to `peer` may run and returns its rate.
    pub async fn acquire(&self, op: u64, peer: &str, priority: u8, want: u64) -> u64 {
        let mut asked = false;
        loop {
            let notified = self.changed.notified();
            {
                if let Some(rate) = self.granted.lock().unwrap_or_else(|p| p.into_inner()).remove(&op) {
                    return rate;
                }
                if !asked {
                    asked = true;
                    if let Allocation::Granted(g) =
                        self.manager.lock().unwrap_or_else(|p| p.into_inner()).allocate(op, peer, priority, want)
                    {
                        return g.rate_bps;
                    }
                }
            }
            notified.await;
        }
    }

    /// Ends job `op` and starts the queued jobs its bandwidth lets run.
    pub fn release(&self, op: u64) {
        let started = self.manager.lock().unwrap_or_else(|p| p.into_inner()).release(op);
        let mut granted = self.granted.lock().unwrap_or_else(|p| p.into_inner());
        for g in started {
            granted.insert(g.op, g.rate_bps);
        }
        drop(granted);
        self.changed.notify_waiters();
    }
}

/// Starts `job` in the background; statuses go to `outbox`.
pub fn start(job: SyncJob, node: &str, data_dir: &Path, budget: Arc<Budget>, outbox: mpsc::UnboundedSender<AgentMessage>) {
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
        let rate = budget.acquire(job.job, &job.target.addr, job.priority, job.limit_bps.unwrap_or(UNLIMITED)).await;
        let limit_bps = (rate < UNLIMITED).then_some(rate);
        let opts = PushOptions { mirror: job.mirror, limit_bps, bases_dir: Some(bases), sender, ..PushOptions::default() };
        let last = std::sync::Mutex::new(Instant::now());
        let progress = |sent: u64, total: u64| {
            let mut last = last.lock().unwrap_or_else(|p| p.into_inner());
            if last.elapsed() >= Duration::from_millis(500) {
                *last = Instant::now();
                let _ = outbox.send(status("running", sent, total, 0, None));
            }
        };
        tracing::info!(job = job.job, path = %job.path, target = %job.target.addr, "sync job started");
        let msg = match push(&job.target, &local, &job.target_path, &opts, progress).await {
            Ok(r) => {
                let failed = r.applied.failed.first().map(|(p, why)| format!("{p}: {why}"));
                let state = if failed.is_some() { "failed" } else { "done" };
                status(state, r.bytes_sent, r.bytes_sent, r.applied.written.len() as u64, failed)
            }
            Err(e) => status("failed", 0, 0, 0, Some(e.to_string())),
        };
        budget.release(job.job);
        tracing::info!(job = job.job, ?msg, "sync job ended");
        let _ = outbox.send(msg);
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn jobs_wait_for_bandwidth_by_priority() {
        let budget = Arc::new(Budget::new(Some(1 << 20), None));
        assert_eq!(budget.acquire(1, "peer-a", 0, 1 << 20).await, 1 << 20);
        let (b, c) = (budget.clone(), budget.clone());
        let low = tokio::spawn(async move { b.acquire(2, "peer-b", 1, 1 << 20).await });
        let high = tokio::spawn(async move { c.acquire(3, "peer-c", 9, 1 << 20).await });
        // Both queue while job 1 holds the whole budget.
        tokio::task::yield_now().await;
        while budget.manager.lock().unwrap().queued() < 2 {
            tokio::task::yield_now().await;
        }
        assert!(!low.is_finished() && !high.is_finished());
        budget.release(1);
        assert_eq!(high.await.unwrap(), 1 << 20, "the urgent job goes first");
        assert!(!low.is_finished());
        budget.release(3);
        assert_eq!(low.await.unwrap(), 1 << 20);
    }
}
