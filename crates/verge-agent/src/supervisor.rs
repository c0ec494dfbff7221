//! One supervisor per assigned workload: it keeps the workload running
//! according to its restart policy and reports every state change.
//!
//! This module owns the workload's life on the node: re-adopt or start, wait,
//! decide, back off, restart, stop. The restart decision is the pure
//! [`decide`]. A supervisor never kills a workload except on
//! [`SupervisorHandle::stop`]: when the agent exits, supervision ends and the
//! workload keeps running.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{mpsc, oneshot, watch};
use tokio::task::JoinHandle;
use tokio::time::Instant;
use verge_core::{RestartPolicy, WorkloadSpec, WorkloadState, WorkloadStatus};

use crate::driver::{Driver, ExitInfo, Task};

/// How long a stopped workload gets to exit after SIGTERM before SIGKILL.
pub const STOP_GRACE: Duration = Duration::from_secs(10);
/// The first restart delay; it doubles with every quick restart in a row.
const BACKOFF_BASE: Duration = Duration::from_millis(100);
/// The longest restart delay.
const BACKOFF_MAX: Duration = Duration::from_secs(10);
/// A run at least this long ends a streak of quick restarts.
const BACKOFF_RESET: Duration = Duration::from_secs(10);

/// What to do after a workload's process ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    /// Start it again after `after`; `streak` is the number of quick restarts
    /// in a row including this one, to pass to the next [`decide`].
    Restart {
        /// The back-off delay.
        after: Duration,
        /// Quick restarts in a row so far.
        streak: u32,
    },
    /// Leave it ended, in this state (`Completed` or `Failed`).
    Done(WorkloadState),
}

/// Decides whether a workload that ended is restarted and after how long.
///
/// `streak` is the number of quick restarts in a row before this end (0 at
/// first), `ran_for` how long this run lasted. The delay is 100 ms × 2^streak,
/// at most 10 s, and the streak starts over after a run of 10 s or more. An
/// unknown exit status or a failed start counts as a failure.
pub fn decide(policy: RestartPolicy, exit: &ExitInfo, streak: u32, ran_for: Duration) -> Decision {
    let restart = match policy {
        RestartPolicy::Always => true,
        RestartPolicy::OnFailure => !exit.success(),
        RestartPolicy::Never => false,
    };
    if !restart {
        return Decision::Done(if exit.success() { WorkloadState::Completed } else { WorkloadState::Failed });
    }
    let streak = if ran_for >= BACKOFF_RESET { 0 } else { streak };
    // 2^7 × 100 ms is past the cap already; a smaller shift cannot overflow.
    let after = (BACKOFF_BASE * (1 << streak.min(7))).min(BACKOFF_MAX);
    Decision::Restart { after, streak: streak.saturating_add(1) }
}

/// What the owner of a [`SupervisorHandle`] asks of the supervisor.
#[derive(Debug)]
enum Control {
    Stop,
    Detach,
}

/// The agent's handle on one supervised workload.
///
/// Dropping it is the same as [`SupervisorHandle::detach`].
#[derive(Debug)]
pub struct SupervisorHandle {
    status: watch::Receiver<WorkloadStatus>,
    control: oneshot::Sender<Control>,
    task: JoinHandle<()>,
}

impl SupervisorHandle {
    /// The workload's latest status, for heartbeats and the local API.
    pub fn status(&self) -> WorkloadStatus {
        self.status.borrow().clone()
    }

    /// Stops the workload's whole process group (SIGTERM, SIGKILL after
    /// [`STOP_GRACE`]), reports `Stopped` and releases its cgroup; used when the
    /// workload is unassigned. A workload that already completed or failed
    /// keeps that state.
    pub async fn stop(self) {
        // Sending fails only when supervision already ended, with nothing left to stop.
        let _ = self.control.send(Control::Stop);
        if let Err(e) = self.task.await {
            tracing::error!(error = %e, "workload supervisor panicked");
        }
    }

    /// Ends supervision and leaves the workload running, to be re-adopted by
    /// the next agent; used when the agent exits.
    pub fn detach(self) {
        // Sending fails only when supervision already ended.
        let _ = self.control.send(Control::Detach);
    }
}

/// Starts supervising `spec` in `dir` (its directory under the agent's data
/// directory): re-adopts a process still running from before an agent
/// restart, otherwise starts one with `env`. Every status change is also sent
/// on `status`.
pub fn spawn(
    driver: Arc<dyn Driver>,
    spec: WorkloadSpec,
    dir: PathBuf,
    env: BTreeMap<String, String>,
    status: mpsc::UnboundedSender<WorkloadStatus>,
) -> SupervisorHandle {
    let current = WorkloadStatus {
        id: spec.id.clone(),
        state: WorkloadState::Starting,
        pid: None,
        restarts: 0,
        exit_code: None,
        message: String::new(),
    };
    let (watch_tx, watch_rx) = watch::channel(current.clone());
    let (control_tx, control_rx) = oneshot::channel();
    let supervisor = Supervisor { driver, spec, dir, env, watch: watch_tx, events: status, current };
    supervisor.publish();
    let task = tokio::spawn(supervisor.run(control_rx));
    SupervisorHandle { status: watch_rx, control: control_tx, task }
}

/// The state of one supervision loop.
struct Supervisor {
    driver: Arc<dyn Driver>,
    spec: WorkloadSpec,
    dir: PathBuf,
    env: BTreeMap<String, String>,
    watch: watch::Sender<WorkloadStatus>,
    events: mpsc::UnboundedSender<WorkloadStatus>,
    current: WorkloadStatus,
}

impl Supervisor {
    async fn run(mut self, mut control: oneshot::Receiver<Control>) {
        if let Err(e) = tokio::fs::create_dir_all(&self.dir).await {
            tracing::warn!(workload = %self.spec.id, dir = %self.dir.display(), error = %e, "cannot create workload directory");
        }
        let mut adopted = self.driver.recover(&self.spec, &self.dir);
        if let Some(task) = &adopted {
            tracing::info!(workload = %self.spec.id, driver = self.driver.name(), pid = task.pid, "re-adopted running workload");
        }
        let mut streak = 0;
        loop {
            let attempt = match adopted.take() {
                Some(task) => Ok(task),
                None => self.driver.start(&self.spec, &self.dir, &self.env),
            };
            let started = Instant::now();
            let (exit, message) = match attempt {
                Ok(mut task) => {
                    self.running(&task);
                    let ended = tokio::select! {
                        exit = task.wait() => Ok(exit),
                        c = &mut control => Err(c),
                    };
                    match ended {
                        Ok(exit) => (exit, exit.to_string()),
                        Err(c) => return self.control(c, Some(task)).await,
                    }
                }
                Err(e) => (ExitInfo::UNKNOWN, e.to_string()),
            };
            tracing::info!(workload = %self.spec.id, driver = self.driver.name(), %message, "workload ended");
            match decide(self.spec.spec.restart, &exit, streak, started.elapsed()) {
                Decision::Done(state) => {
                    self.ended(state, exit, message);
                    self.driver.destroy(&self.spec);
                    return;
                }
                Decision::Restart { after, streak: next } => {
                    streak = next;
                    self.ended(WorkloadState::Restarting, exit, message);
                    tokio::select! {
                        () = tokio::time::sleep(after) => {}
                        c = &mut control => return self.control(c, None).await,
                    }
                    self.current.restarts = self.current.restarts.saturating_add(1);
                }
            }
        }
    }

    /// Carries out a request from the handle; a dropped handle detaches.
    async fn control(mut self, request: Result<Control, oneshot::error::RecvError>, task: Option<Task>) {
        match request {
            Ok(Control::Stop) => {
                if let Some(mut task) = task {
                    let exit = task.stop(STOP_GRACE).await;
                    self.current.exit_code = exit.code;
                }
                self.current.state = WorkloadState::Stopped;
                self.current.pid = None;
                self.current.message = "stopped on request".to_string();
                self.publish();
                self.driver.destroy(&self.spec);
            }
            Ok(Control::Detach) | Err(_) => {
                tracing::info!(workload = %self.spec.id, "supervision ended; the workload keeps running");
            }
        }
    }

    fn running(&mut self, task: &Task) {
        self.current.state = WorkloadState::Running;
        self.current.pid = Some(task.pid);
        self.current.message.clone_from(&task.message);
        self.publish();
    }

    fn ended(&mut self, state: WorkloadState, exit: ExitInfo, message: String) {
        self.current.state = state;
        self.current.pid = None;
        self.current.exit_code = exit.code;
        self.current.message = message;
        self.publish();
    }

    fn publish(&self) {
        self.watch.send_replace(self.current.clone());
        // Nobody listening for changes is fine: the latest status stays readable from the handle.
        let _ = self.events.send(self.current.clone());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use crate::exec::tests::{env, eventually, workload, KillGroup};
    use crate::exec::ExecDriver;

    const FAILED: ExitInfo = ExitInfo { code: Some(3), signal: None };
    const OK: ExitInfo = ExitInfo { code: Some(0), signal: None };
    const QUICK: Duration = Duration::from_millis(50);

    fn restart_after(ms: u64, streak: u32) -> Decision {
        Decision::Restart { after: Duration::from_millis(ms), streak }
    }

    #[test]
    fn policies_decide_restarts() {
        use RestartPolicy::*;
        assert_eq!(decide(Always, &OK, 0, QUICK), restart_after(100, 1));
        assert_eq!(decide(Always, &FAILED, 0, QUICK), restart_after(100, 1));
        assert_eq!(decide(OnFailure, &FAILED, 0, QUICK), restart_after(100, 1));
        assert_eq!(decide(OnFailure, &ExitInfo::UNKNOWN, 0, QUICK), restart_after(100, 1));
        assert_eq!(decide(OnFailure, &OK, 0, QUICK), Decision::Done(WorkloadState::Completed));
        assert_eq!(decide(Never, &OK, 0, QUICK), Decision::Done(WorkloadState::Completed));
        assert_eq!(decide(Never, &FAILED, 0, QUICK), Decision::Done(WorkloadState::Failed));
        assert_eq!(decide(Never, &ExitInfo { code: None, signal: Some(9) }, 0, QUICK), Decision::Done(WorkloadState::Failed));
    }

    #[test]
    fn backoff_doubles_is_capped_and_resets_after_a_long_run() {
        let delays: Vec<Decision> = (0..9).map(|n| decide(RestartPolicy::Always, &FAILED, n, QUICK)).collect();
        let ms = [100, 200, 400, 800, 1600, 3200, 6400, 10_000, 10_000];
        assert_eq!(delays, ms.iter().zip(1..).map(|(ms, s)| restart_after(*ms, s)).collect::<Vec<_>>());
        assert_eq!(decide(RestartPolicy::Always, &FAILED, u32::MAX, QUICK), restart_after(10_000, u32::MAX));
        assert_eq!(decide(RestartPolicy::Always, &FAILED, 6, Duration::from_secs(10)), restart_after(100, 1));
        assert_eq!(decide(RestartPolicy::Always, &FAILED, 6, Duration::from_millis(9_999)), restart_after(6400, 7));
    }

    /// Receives statuses until one satisfies `until`, failing after `secs` seconds.
    async fn statuses_until(
        rx: &mut mpsc::UnboundedReceiver<WorkloadStatus>,
        secs: u64,
        until: impl Fn(&WorkloadStatus) -> bool,
    ) -> Vec<(Instant, WorkloadStatus)> {
        let deadline = Instant::now() + Duration::from_secs(secs);
        let mut seen = Vec::new();
        loop {
            match tokio::time::timeout_at(deadline, rx.recv()).await {
                Ok(Some(s)) => {
                    let done = until(&s);
                    seen.push((Instant::now(), s));
                    if done {
                        return seen;
                    }
                }
                other => panic!("no matching status within {secs} s ({other:?}); saw {seen:#?}"),
            }
        }
    }

    fn supervise(spec: WorkloadSpec, dir: &tempfile::TempDir) -> (SupervisorHandle, mpsc::UnboundedReceiver<WorkloadStatus>) {
        let (tx, rx) = mpsc::unbounded_channel();
        (spawn(Arc::new(ExecDriver::new()), spec, dir.path().join("work"), env(), tx), rx)
    }

    #[tokio::test]
    async fn always_restarts_a_crashing_process_with_growing_backoff() {
        let dir = tempfile::tempdir().unwrap();
        let spec = workload("sup-crash", "sh", &["-c", "exit 3"], RestartPolicy::Always);
        let (handle, mut rx) = supervise(spec, &dir);
        let seen = statuses_until(&mut rx, 20, |s| s.state == WorkloadState::Running && s.restarts == 3).await;
        handle.stop().await;

        let states: Vec<WorkloadState> = seen.iter().map(|(_, s)| s.state).collect();
        assert_eq!(states[0], WorkloadState::Starting);
        let restarting: Vec<&WorkloadStatus> = seen.iter().map(|(_, s)| s).filter(|s| s.state == WorkloadState::Restarting).collect();
        assert_eq!(restarting.len(), 3, "{states:?}");
        assert!(restarting.iter().all(|s| s.exit_code == Some(3) && s.message == "exited with code 3"), "{restarting:?}");
        // Each restart waits for its back-off: 100, 200, 400 ms.
        let runs: Vec<(Instant, u32)> =
            seen.iter().filter(|(_, s)| s.state == WorkloadState::Running).map(|(t, s)| (*t, s.restarts)).collect();
        assert_eq!(runs.iter().map(|r| r.1).collect::<Vec<_>>(), [0, 1, 2, 3]);
        for (i, pair) in runs.windows(2).enumerate() {
            let gap = pair[1].0 - pair[0].0;
            assert!(gap >= BACKOFF_BASE * (1 << i), "restart {} came after {gap:?}", i + 1);
        }
    }

    #[tokio::test]
    async fn on_failure_does_not_restart_a_success() {
        let dir = tempfile::tempdir().unwrap();
        let (handle, mut rx) = supervise(workload("sup-true", "true", &[], RestartPolicy::OnFailure), &dir);
        let seen = statuses_until(&mut rx, 10, |s| s.state == WorkloadState::Completed).await;
        let last = &seen[seen.len() - 1].1;
        assert_eq!((last.restarts, last.exit_code, last.pid), (0, Some(0), None));
        assert_eq!(handle.status(), *last);
        handle.stop().await;
        assert_eq!(rx.recv().await, None, "a completed workload stays completed");
    }

    #[tokio::test]
    async fn a_missing_command_fails_with_its_error() {
        let dir = tempfile::tempdir().unwrap();
        let (handle, mut rx) = supervise(workload("sup-missing", "verge-no-such-program", &[], RestartPolicy::Never), &dir);
        let seen = statuses_until(&mut rx, 10, |s| s.state == WorkloadState::Failed).await;
        assert!(seen[seen.len() - 1].1.message.contains("\"verge-no-such-program\" not found"), "{seen:?}");
        handle.stop().await;
    }

    /// Pids of live (not zombie) processes in process group `pgid`.
    fn group_members(pgid: u32) -> Vec<u32> {
        let Ok(entries) = std::fs::read_dir("/proc") else { return Vec::new() };
        entries
            .flatten()
            .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
            .filter(|pid| {
                let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else { return false };
                let Some(rest) = stat.rfind(')').map(|i| &stat[i + 1..]) else { return false };
                let fields: Vec<&str> = rest.split_whitespace().collect();
                fields.first() != Some(&"Z") && fields.get(2) == Some(&pgid.to_string().as_str())
            })
            .collect()
    }

    #[tokio::test]
    async fn stop_kills_the_whole_process_group() {
        let dir = tempfile::tempdir().unwrap();
        let spec = workload("sup-stop", "sh", &["-c", "sleep 1000 & sleep 1000"], RestartPolicy::Always);
        let (handle, mut rx) = supervise(spec, &dir);
        let seen = statuses_until(&mut rx, 10, |s| s.state == WorkloadState::Running).await;
        let Some(pid) = seen[seen.len() - 1].1.pid else { panic!("running without a pid: {seen:?}") };
        let _guard = KillGroup(pid);
        assert!(eventually(10, || group_members(pid).len() >= 3).await, "sh and two sleeps: {:?}", group_members(pid));

        handle.stop().await;
        let last = statuses_until(&mut rx, 1, |s| s.state == WorkloadState::Stopped).await;
        assert_eq!(last[0].1.pid, None);
        assert!(eventually(10, || group_members(pid).is_empty()).await, "left behind: {:?}", group_members(pid));
    }

    #[tokio::test]
    async fn a_new_supervisor_readopts_a_detached_workload() {
        let dir = tempfile::tempdir().unwrap();
        let spec = workload("sup-detach", "sleep", &["1000"], RestartPolicy::Always);
        let (handle, mut rx) = supervise(spec.clone(), &dir);
        let seen = statuses_until(&mut rx, 10, |s| s.state == WorkloadState::Running).await;
        let Some(pid) = seen[seen.len() - 1].1.pid else { panic!("running without a pid: {seen:?}") };
        let _guard = KillGroup(pid);
        handle.detach();

        let (handle, mut rx) = supervise(spec, &dir);
        let seen = statuses_until(&mut rx, 10, |s| s.state == WorkloadState::Running).await;
        assert_eq!(seen[seen.len() - 1].1.pid, Some(pid), "the same process, not a new one");
        assert_eq!(group_members(pid), [pid]);
        handle.stop().await;
        assert!(eventually(10, || group_members(pid).is_empty()).await);
    }
}
