//! The `exec` driver: runs a workload as a native process in its own process
//! group, with its output in its directory and cgroup limits around it.
//!
//! This module owns the workload's process, its `pid` file and its log files.
//! It must never tie a workload's life to the agent's: no kill-on-drop, no
//! pipes to the agent, so workloads survive an agent crash and are re-adopted
//! from the `pid` file.

use std::collections::BTreeMap;
use std::fs::{File, OpenOptions};
use std::io;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use tokio::process::Command;
use tokio::sync::watch;
use verge_core::WorkloadSpec;

use crate::cgroup::Cgroups;
use crate::driver::{Driver, DriverError, ExitInfo, Task};

/// The file in the workload directory that records the running process.
const PID_FILE: &str = "pid";
/// How often a re-adopted process, which is not the agent's child, is checked.
const POLL_INTERVAL: Duration = Duration::from_millis(250);

/// Runs workloads as native processes: the default driver on every node.
#[derive(Debug, Clone)]
pub struct ExecDriver {
    cgroups: Cgroups,
}

impl ExecDriver {
    /// A driver that puts workloads into cgroups as found on this machine.
    pub fn new() -> ExecDriver {
        ExecDriver { cgroups: Cgroups::detect() }
    }
}

impl Default for ExecDriver {
    fn default() -> ExecDriver {
        ExecDriver::new()
    }
}

impl Driver for ExecDriver {
    fn name(&self) -> &'static str {
        "exec"
    }

    /// Spawns `spec.command` with exactly `env` plus `spec.env` (nothing of
    /// the agent's own environment), appending its output to `stdout.log` and
    /// `stderr.log` in `dir`.
    fn start(&self, spec: &WorkloadSpec, dir: &Path, env: &BTreeMap<String, String>) -> Result<Task, DriverError> {
        let exec = &spec.spec;
        let mut child = Command::new(&exec.command)
            .args(&exec.args)
            .env_clear()
            .envs(env)
            .envs(&exec.env)
            .current_dir(dir)
            .stdin(Stdio::null())
            .stdout(open_log(&dir.join("stdout.log"))?)
            .stderr(open_log(&dir.join("stderr.log"))?)
            .process_group(0)
            .spawn()
            .map_err(|e| spawn_error(&exec.command, e))?;
        let Some(pid) = child.id() else {
            return Err(DriverError::Spawn {
                command: exec.command.clone(),
                source: io::Error::other("the process was reaped before its id was read"),
            });
        };
        // The child is not reaped until the watcher below waits for it, so its
        // /proc entry is there to read.
        let mut notes = Vec::new();
        if let Err(e) = proc_start_time(pid).and_then(|start| write_pid_file(dir, pid, start)) {
            notes.push(format!("pid file not written, so it cannot be re-adopted after an agent restart: {e}"));
        }
        let limits = self.cgroups.apply(&spec.id, pid, spec.requirements.memory, spec.requirements.cpu);
        if !limits.message.is_empty() {
            notes.push(limits.message);
        }
        let (tx, rx) = watch::channel(None);
        let id = spec.id.clone();
        tokio::spawn(async move {
            let exit = match child.wait().await {
                Ok(status) => ExitInfo::from(status),
                Err(e) => {
                    tracing::warn!(workload = %id, pid, error = %e, "cannot wait for workload process");
                    ExitInfo::UNKNOWN
                }
            };
            tx.send_replace(Some(exit));
        });
        Ok(Task::new(pid, rx, notes.join("; ")))
    }

    /// Re-adopts the process in `dir/pid` if it is still the same process: its
    /// start time must match, so a reused pid is never taken for it.
    fn recover(&self, spec: &WorkloadSpec, dir: &Path) -> Option<Task> {
        let path = dir.join(PID_FILE);
        let text = std::fs::read_to_string(&path).ok()?;
        let Some((pid, start)) = parse_pid_file(&text) else {
            tracing::warn!(workload = %spec.id, file = %path.display(), "ignoring unreadable pid file");
            return None;
        };
        if !is_running(pid, start) {
            tracing::info!(workload = %spec.id, pid, "process from the pid file is gone");
            return None;
        }
        let limits = self.cgroups.apply(&spec.id, pid, spec.requirements.memory, spec.requirements.cpu);
        let (tx, rx) = watch::channel(None);
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(POLL_INTERVAL);
            loop {
                tick.tick().await;
                if tx.is_closed() {
                    return;
                }
                if !is_running(pid, start) {
                    tx.send_replace(Some(ExitInfo::UNKNOWN));
                    return;
                }
            }
        });
        Some(Task::new(pid, rx, limits.message))
    }

    fn destroy(&self, spec: &WorkloadSpec) {
        self.cgroups.remove(&spec.id);
    }
}

fn open_log(path: &Path) -> Result<File, DriverError> {
    OpenOptions::new().create(true).append(true).open(path).map_err(|source| DriverError::Log { path: path.to_path_buf(), source })
}

fn spawn_error(command: &str, e: io::Error) -> DriverError {
    let command = command.to_string();
    match e.kind() {
        io::ErrorKind::NotFound => DriverError::NotFound { command },
        io::ErrorKind::PermissionDenied => DriverError::NotExecutable { command },
        _ => DriverError::Spawn { command, source: e },
    }
}

/// Writes `pid start` to `dir/pid` atomically, so a crash never leaves half a file.
fn write_pid_file(dir: &Path, pid: u32, start: u64) -> io::Result<()> {
    let tmp: PathBuf = dir.join(format!("{PID_FILE}.tmp"));
    std::fs::write(&tmp, format!("{pid} {start}\n"))?;
    std::fs::rename(&tmp, dir.join(PID_FILE))
}

fn parse_pid_file(text: &str) -> Option<(u32, u64)> {
    let mut fields = text.split_whitespace();
    let pid = fields.next()?.parse().ok()?;
    let start = fields.next()?.parse().ok()?;
    Some((pid, start))
}

/// The process's state letter and start time (field 22 of `/proc/<pid>/stat`,
/// clock ticks after boot), which together with the pid name one process.
fn proc_stat(pid: u32) -> io::Result<(char, u64)> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    let invalid = || io::Error::new(io::ErrorKind::InvalidData, format!("unexpected /proc/{pid}/stat format"));
    // The command name (field 2) is in parentheses and may itself contain spaces and ')'.
    let rest = stat.rfind(')').map(|i| &stat[i + 1..]).ok_or_else(invalid)?;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let state = fields.first().and_then(|s| s.chars().next()).ok_or_else(invalid)?;
    let start = fields.get(19).and_then(|s| s.parse().ok()).ok_or_else(invalid)?;
    Ok((state, start))
}

fn proc_start_time(pid: u32) -> io::Result<u64> {
    proc_stat(pid).map(|(_, start)| start)
}

/// Whether `pid` is still the process that started at `start` and has not exited.
fn is_running(pid: u32, start: u64) -> bool {
    matches!(proc_stat(pid), Ok((state, s)) if s == start && state != 'Z' && state != 'X')
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    use std::time::Instant;

    use verge_core::{ExecSpec, RestartPolicy};

    /// Kills a process group when dropped, so a failing test leaves nothing behind.
    pub(crate) struct KillGroup(pub(crate) u32);

    impl Drop for KillGroup {
        fn drop(&mut self) {
            if let Ok(pgid @ 2..) = libc::pid_t::try_from(self.0) {
                // SAFETY: kill(2) has no memory-safety preconditions.
                unsafe {
                    libc::kill(-pgid, libc::SIGKILL);
                }
            }
        }
    }

    /// A workload running `command args…` with a small memory and CPU reservation.
    pub(crate) fn workload(id: &str, command: &str, args: &[&str], restart: RestartPolicy) -> WorkloadSpec {
        let json = serde_json::json!({"id": id, "requirements": {"cpu": 0.5, "memory": "64MiB"}, "spec": {"command": command}});
        let mut spec: WorkloadSpec = serde_json::from_value(json).unwrap();
        spec.spec = ExecSpec { args: args.iter().map(|a| a.to_string()).collect(), restart, ..spec.spec };
        spec
    }

    /// The agent's environment for workloads in tests: just a PATH.
    pub(crate) fn env() -> BTreeMap<String, String> {
        BTreeMap::from([("PATH".to_string(), std::env::var("PATH").unwrap_or_else(|_| "/usr/bin:/bin".into()))])
    }

    /// Polls `cond` until it holds or `secs` seconds have passed.
    pub(crate) async fn eventually(secs: u64, mut cond: impl FnMut() -> bool) -> bool {
        let deadline = Instant::now() + Duration::from_secs(secs);
        while Instant::now() < deadline {
            if cond() {
                return true;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        cond()
    }

    #[tokio::test]
    async fn runs_the_command_and_keeps_its_output() {
        let dir = tempfile::tempdir().unwrap();
        let spec = workload("exec-output", "sh", &["-c", "echo hello $GREETING; echo oops >&2"], RestartPolicy::Never);
        let spec = WorkloadSpec { spec: ExecSpec { env: BTreeMap::from([("GREETING".into(), "edge".into())]), ..spec.spec }, ..spec };
        let driver = ExecDriver::new();
        let mut task = driver.start(&spec, dir.path(), &env()).unwrap();
        let _guard = KillGroup(task.pid);
        assert_eq!(task.wait().await, ExitInfo { code: Some(0), signal: None });
        driver.destroy(&spec);
        assert_eq!(std::fs::read_to_string(dir.path().join("stdout.log")).unwrap(), "hello edge\n");
        assert_eq!(std::fs::read_to_string(dir.path().join("stderr.log")).unwrap(), "oops\n");
        let (pid, _) = parse_pid_file(&std::fs::read_to_string(dir.path().join(PID_FILE)).unwrap()).unwrap();
        assert_eq!(pid, task.pid);
    }

    #[tokio::test]
    async fn a_missing_command_is_a_clear_error() {
        let dir = tempfile::tempdir().unwrap();
        let spec = workload("exec-missing", "verge-no-such-program", &[], RestartPolicy::Never);
        let e = ExecDriver::new().start(&spec, dir.path(), &env()).unwrap_err();
        assert_eq!(e.to_string(), "command \"verge-no-such-program\" not found: give an absolute path or a program on PATH");

        std::fs::write(dir.path().join("data.txt"), "not a program").unwrap();
        let spec = workload("exec-noexec", "./data.txt", &[], RestartPolicy::Never);
        let e = ExecDriver::new().start(&spec, dir.path(), &env()).unwrap_err();
        assert!(e.to_string().contains("\"./data.txt\" is not executable"), "{e}");
    }

    #[tokio::test]
    async fn recover_readopts_the_running_process_only() {
        let dir = tempfile::tempdir().unwrap();
        let spec = workload("exec-recover", "sleep", &["1000"], RestartPolicy::Always);
        let driver = ExecDriver::new();
        let mut original = driver.start(&spec, dir.path(), &env()).unwrap();
        let _guard = KillGroup(original.pid);

        let mut adopted = driver.recover(&spec, dir.path()).expect("running process re-adopted");
        assert_eq!(adopted.pid, original.pid);

        let pid_file = std::fs::read_to_string(dir.path().join(PID_FILE)).unwrap();
        let (pid, start) = parse_pid_file(&pid_file).unwrap();
        std::fs::write(dir.path().join(PID_FILE), format!("{pid} {}\n", start + 1)).unwrap();
        assert!(driver.recover(&spec, dir.path()).is_none(), "a start time that does not match means a reused pid");
        std::fs::write(dir.path().join(PID_FILE), "garbage").unwrap();
        assert!(driver.recover(&spec, dir.path()).is_none());
        std::fs::write(dir.path().join(PID_FILE), pid_file).unwrap();

        let exit = tokio::time::timeout(Duration::from_secs(10), adopted.stop(Duration::from_secs(5))).await.unwrap();
        assert_eq!(exit, ExitInfo::UNKNOWN, "not our child: the exit status is not known");
        assert_eq!(original.wait().await.signal, Some(libc::SIGTERM));
        assert!(driver.recover(&spec, dir.path()).is_none(), "an exited process is not re-adopted");
        driver.destroy(&spec);
    }

    #[test]
    fn proc_stat_reads_state_and_start_time() {
        let (state, start) = proc_stat(std::process::id()).unwrap();
        assert!(state == 'R' || state == 'S', "{state}");
        assert!(start > 0);
        assert!(is_running(std::process::id(), start));
        assert!(!is_running(std::process::id(), start + 1));
        assert!(proc_stat(u32::MAX).is_err());
    }
}
