//! The driver interface: how a supervisor starts, re-adopts, stops and cleans
//! up a workload without knowing how it runs (after Nomad's
//! `plugins/drivers`).
//!
//! This module owns the [`Driver`] trait and the [`Task`] handle to a running
//! workload. It never decides whether a workload should run or be restarted:
//! that is the supervisor's job.

use std::collections::BTreeMap;
use std::fmt;
use std::io;
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use tokio::sync::watch;
use verge_core::WorkloadSpec;

/// Runs workloads of one kind; the supervisor holds one as `Arc<dyn Driver>`.
pub trait Driver: Send + Sync + 'static {
    /// The driver's name for logs, e.g. `exec`.
    fn name(&self) -> &'static str;

    /// Starts the workload; `dir` is its directory under the agent's data
    /// directory (it exists), `env` the environment the agent gives it.
    fn start(&self, spec: &WorkloadSpec, dir: &Path, env: &BTreeMap<String, String>) -> Result<Task, DriverError>;

    /// Re-adopts the workload if it is still running from before an agent
    /// restart, as recorded in `dir`.
    fn recover(&self, spec: &WorkloadSpec, dir: &Path) -> Option<Task>;

    /// Releases what `start` set up around the workload (its cgroup) once it
    /// is gone for good.
    fn destroy(&self, spec: &WorkloadSpec);
}

/// Why a driver could not start a workload; the message is shown to people
/// as the workload's status message.
#[derive(Debug, thiserror::Error)]
pub enum DriverError {
    /// The program does not exist.
    #[error("command {command:?} not found: give an absolute path or a program on PATH")]
    NotFound {
        /// The program as the spec names it.
        command: String,
    },
    /// The program exists but may not be executed.
    #[error("command {command:?} is not executable: permission denied")]
    NotExecutable {
        /// The program as the spec names it.
        command: String,
    },
    /// Any other reason the program did not start.
    #[error("cannot start command {command:?}: {source}")]
    Spawn {
        /// The program as the spec names it.
        command: String,
        /// What the operating system said.
        source: io::Error,
    },
    /// The workload's output could not be given somewhere to go.
    #[error("cannot open log file {}: {source}", path.display())]
    Log {
        /// The log file.
        path: PathBuf,
        /// What the operating system said.
        source: io::Error,
    },
}

/// How a workload's process ended, as far as the agent can know.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ExitInfo {
    /// The exit code, when it exited normally and the agent is its parent.
    pub code: Option<i32>,
    /// The signal that killed it, when the agent is its parent.
    pub signal: Option<i32>,
}

impl ExitInfo {
    /// The process is gone but how it ended is not known: it was re-adopted
    /// after an agent restart, so someone else reaped it, or it never started.
    pub const UNKNOWN: ExitInfo = ExitInfo { code: None, signal: None };

    /// Whether it exited with code 0; an unknown end counts as a failure.
    pub fn success(&self) -> bool {
        self.code == Some(0)
    }
}

impl From<std::process::ExitStatus> for ExitInfo {
    fn from(status: std::process::ExitStatus) -> ExitInfo {
        ExitInfo { code: status.code(), signal: status.signal() }
    }
}

impl fmt::Display for ExitInfo {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match (self.code, self.signal) {
            (Some(code), _) => write!(f, "exited with code {code}"),
            (None, Some(signal)) => write!(f, "killed by signal {signal}"),
            (None, None) => f.write_str("exited, status unknown"),
        }
    }
}

/// A running workload process group, as a driver hands it to the supervisor.
///
/// Dropping a `Task` leaves the process running: workloads outlive the agent.
#[derive(Debug)]
pub struct Task {
    /// Process id of the workload's main process, also its process group id.
    pub pid: u32,
    /// What people should know about this start, e.g. limits that are not
    /// enforced; empty when there is nothing to say.
    pub message: String,
    /// Set once by the driver's watcher when the main process has ended.
    exit: watch::Receiver<Option<ExitInfo>>,
}

impl Task {
    /// A task for process `pid` (which leads its own process group) whose end
    /// the driver reports on `exit`.
    pub fn new(pid: u32, exit: watch::Receiver<Option<ExitInfo>>, message: String) -> Task {
        Task { pid, message, exit }
    }

    /// Waits until the main process has ended.
    pub async fn wait(&mut self) -> ExitInfo {
        match self.exit.wait_for(Option::is_some).await {
            Ok(exit) => exit.unwrap_or(ExitInfo::UNKNOWN),
            // The watcher is gone without a report: nothing more can be known.
            Err(_) => ExitInfo::UNKNOWN,
        }
    }

    /// Stops the whole process group: SIGTERM, then SIGKILL to whatever is
    /// left once the main process ended or `grace` ran out.
    pub async fn stop(&mut self, grace: Duration) -> ExitInfo {
        signal_group(self.pid, libc::SIGTERM);
        let exit = match tokio::time::timeout(grace, self.wait()).await {
            Ok(exit) => exit,
            Err(_) => {
                signal_group(self.pid, libc::SIGKILL);
                self.wait().await
            }
        };
        // Children that ignored SIGTERM may outlive the main process.
        signal_group(self.pid, libc::SIGKILL);
        exit
    }
}

/// Sends `signal` to process group `pgid`; a group that is gone is not an error.
fn signal_group(pgid: u32, signal: libc::c_int) {
    // Group ids 0 and 1 would signal the agent's own group or every process.
    let Ok(pgid) = libc::pid_t::try_from(pgid) else { return };
    if pgid <= 1 {
        return;
    }
    // SAFETY: kill(2) has no memory-safety preconditions.
    unsafe {
        libc::kill(-pgid, signal);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exit_info_says_how_it_ended() {
        assert_eq!(ExitInfo { code: Some(3), signal: None }.to_string(), "exited with code 3");
        assert_eq!(ExitInfo { code: None, signal: Some(9) }.to_string(), "killed by signal 9");
        assert_eq!(ExitInfo::UNKNOWN.to_string(), "exited, status unknown");
        assert!(ExitInfo { code: Some(0), signal: None }.success());
        assert!(!ExitInfo::UNKNOWN.success());
    }

    #[tokio::test]
    async fn wait_returns_the_reported_exit() {
        let (tx, rx) = watch::channel(None);
        let mut task = Task::new(0, rx, String::new());
        tx.send_replace(Some(ExitInfo { code: Some(7), signal: None }));
        assert_eq!(task.wait().await.code, Some(7));
        drop(tx);
        assert_eq!(task.stop(Duration::from_millis(10)).await.code, Some(7), "pid 0 is never signalled");
    }
}
