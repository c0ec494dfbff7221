//! Memory and CPU limits for workload processes, by writing cgroup files
//! directly (v2, or v1 per-controller hierarchies).
//!
//! This module owns the `verge/<workload-id>` groups under the agent's own
//! cgroup, and nothing else in the cgroup tree. It must never fail or panic
//! because of a cgroup problem: whatever it cannot enforce is said in
//! [`Limits::message`] and the workload runs without that limit.

use std::fmt::Display;
use std::io::{self, Write};
use std::path::{Path, PathBuf};

use verge_core::{Bytes, WorkloadId};

/// Where the kernel mounts the cgroup hierarchies.
const CGROUP_ROOT: &str = "/sys/fs/cgroup";
/// Which cgroups the agent itself is in.
const PROC_SELF_CGROUP: &str = "/proc/self/cgroup";
/// The group under the agent's own cgroup that holds one group per workload.
const PARENT: &str = "verge";
/// CFS period in microseconds; the quota is a share of it.
const CPU_PERIOD_US: u64 = 100_000;
/// The smallest CFS quota the kernel accepts, in microseconds.
const MIN_CPU_QUOTA_US: u64 = 1_000;

/// The cgroup layout of this machine as seen from the agent, found once at
/// start, so that each workload start only writes a few files.
#[derive(Debug, Clone)]
pub struct Cgroups {
    layout: Layout,
}

#[derive(Debug, Clone)]
enum Layout {
    /// Unified hierarchy; the agent's own group.
    V2 { own: PathBuf },
    /// Per-controller hierarchies; the agent's own group in each, or why there is none.
    V1 { memory: Result<PathBuf, String>, cpu: Result<PathBuf, String> },
    /// No usable cgroup information at all.
    Unavailable(String),
}

/// What [`Cgroups::apply`] enforces on a process, so the supervisor can
/// report limits that do not hold instead of silently running without them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Limits {
    /// Whether the memory limit holds for the process.
    pub memory: bool,
    /// Whether the CPU limit holds for the process.
    pub cpu: bool,
    /// Why a limit does not hold; empty when both do.
    pub message: String,
}

impl Cgroups {
    /// Finds the cgroup version and the agent's own groups on this machine.
    pub fn detect() -> Cgroups {
        match std::fs::read_to_string(PROC_SELF_CGROUP) {
            Ok(own) => Cgroups::from_parts(Path::new(CGROUP_ROOT), &own),
            Err(e) => Cgroups { layout: Layout::Unavailable(format!("cannot read {PROC_SELF_CGROUP}: {}", reason(e))) },
        }
    }

    /// The layout under `root` for a process whose `/proc/self/cgroup` reads `own`.
    fn from_parts(root: &Path, own: &str) -> Cgroups {
        let lines: Vec<(&str, &str)> = own
            .lines()
            .filter_map(|l| {
                let mut parts = l.splitn(3, ':');
                let _id = parts.next()?;
                Some((parts.next()?, parts.next()?))
            })
            .collect();
        let own_path = |controller: &str| {
            lines
                .iter()
                .find(|(controllers, _)| controllers.split(',').any(|c| c == controller))
                .map(|(_, path)| path.trim_start_matches('/'))
        };
        let layout = if root.join("cgroup.controllers").exists() {
            match lines.iter().find(|(controllers, _)| controllers.is_empty()) {
                Some((_, path)) => Layout::V2 { own: root.join(path.trim_start_matches('/')) },
                None => Layout::Unavailable(format!("no cgroup v2 entry (0::) in {PROC_SELF_CGROUP}")),
            }
        } else {
            let hierarchy = |controller: &str, mounts: &[&str]| -> Result<PathBuf, String> {
                let path = own_path(controller).ok_or_else(|| format!("no {controller} cgroup in {PROC_SELF_CGROUP}"))?;
                let mount = mounts
                    .iter()
                    .map(|m| root.join(m))
                    .find(|m| m.is_dir())
                    .ok_or_else(|| format!("no {controller} cgroup hierarchy mounted at {}", root.join(mounts[0]).display()))?;
                Ok(mount.join(path))
            };
            Layout::V1 { memory: hierarchy("memory", &["memory"]), cpu: hierarchy("cpu", &["cpu", "cpu,cpuacct", "cpuacct,cpu"]) }
        };
        Cgroups { layout }
    }

    /// Puts `pid` into the workload's group with at most `memory` bytes and
    /// `cpu` cores, creating the group if needed; says what does not hold.
    pub fn apply(&self, id: &WorkloadId, pid: u32, memory: Bytes, cpu: f64) -> Limits {
        let quota = cpu_quota_us(cpu);
        let (mem, cpu) = match &self.layout {
            Layout::Unavailable(why) => (Err(why.clone()), Err(why.clone())),
            Layout::V2 { own } => {
                let group = own.join(PARENT).join(id.as_str());
                let mem = enable_v2(own, &group, "memory").and_then(|()| write(&group.join("memory.max"), memory.0));
                let cpu = enable_v2(own, &group, "cpu").and_then(|()| write(&group.join("cpu.max"), format!("{quota} {CPU_PERIOD_US}")));
                match write(&group.join("cgroup.procs"), pid) {
                    Ok(()) => (mem, cpu),
                    Err(why) => (Err(why.clone()), Err(why)),
                }
            }
            Layout::V1 { memory: mem_own, cpu: cpu_own } => {
                let mem = mem_own.clone().and_then(|own| {
                    let group = create_v1(&own, id)?;
                    write(&group.join("memory.limit_in_bytes"), memory.0)?;
                    write(&group.join("cgroup.procs"), pid)
                });
                let cpu = cpu_own.clone().and_then(|own| {
                    let group = create_v1(&own, id)?;
                    write(&group.join("cpu.cfs_period_us"), CPU_PERIOD_US)?;
                    write(&group.join("cpu.cfs_quota_us"), quota)?;
                    write(&group.join("cgroup.procs"), pid)
                });
                (mem, cpu)
            }
        };
        let message = [("memory", &mem), ("cpu", &cpu)]
            .iter()
            .filter_map(|(what, r)| r.as_ref().err().map(|why| format!("{what} limit not enforced: {why}")))
            .collect::<Vec<_>>()
            .join("; ");
        Limits { memory: mem.is_ok(), cpu: cpu.is_ok(), message }
    }

    /// Removes the workload's group once its processes are gone; a group that
    /// is already gone or still busy is left alone.
    pub fn remove(&self, id: &WorkloadId) {
        let groups: Vec<PathBuf> = match &self.layout {
            Layout::Unavailable(_) => Vec::new(),
            Layout::V2 { own } => vec![own.join(PARENT).join(id.as_str())],
            Layout::V1 { memory, cpu } => [memory, cpu].into_iter().flatten().map(|own| own.join(PARENT).join(id.as_str())).collect(),
        };
        for group in groups {
            match std::fs::remove_dir(&group) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) if e.raw_os_error() == Some(libc::EBUSY) => {
                    tracing::info!(group = %group.display(), "cgroup still has processes; left in place");
                }
                Err(e) => tracing::warn!(group = %group.display(), error = %e, "cannot remove cgroup"),
            }
        }
    }
}

/// The CFS quota for `cpu` cores in each period, at least the kernel's minimum.
fn cpu_quota_us(cpu: f64) -> u64 {
    let quota = (cpu * CPU_PERIOD_US as f64).round();
    if quota.is_finite() && quota > MIN_CPU_QUOTA_US as f64 {
        quota as u64
    } else {
        MIN_CPU_QUOTA_US
    }
}

/// Makes `controller` available in `group` (v2): delegated to the agent's
/// own group, enabled for its children on the way down, and the group created.
fn enable_v2(own: &Path, group: &Path, controller: &str) -> Result<(), String> {
    let available = read(&own.join("cgroup.controllers"))?;
    if !available.split_whitespace().any(|c| c == controller) {
        return Err(format!("the {controller} controller is not delegated to the agent's cgroup {}", own.display()));
    }
    let parent = own.join(PARENT);
    enable_in_subtree(own, controller)?;
    create_dir(&parent)?;
    enable_in_subtree(&parent, controller)?;
    create_dir(group)
}

/// Adds `+controller` to `dir/cgroup.subtree_control` unless it is already there.
fn enable_in_subtree(dir: &Path, controller: &str) -> Result<(), String> {
    let path = dir.join("cgroup.subtree_control");
    if read(&path)?.split_whitespace().any(|c| c == controller) {
        return Ok(());
    }
    write(&path, format!("+{controller}"))
}

/// Creates `own/verge/<id>` in a v1 hierarchy.
fn create_v1(own: &Path, id: &WorkloadId) -> Result<PathBuf, String> {
    let parent = own.join(PARENT);
    create_dir(&parent)?;
    let group = parent.join(id.as_str());
    create_dir(&group)?;
    Ok(group)
}

fn create_dir(path: &Path) -> Result<(), String> {
    match std::fs::create_dir(path) {
        Err(e) if e.kind() != io::ErrorKind::AlreadyExists => Err(format!("cannot create {}: {}", path.display(), reason(e))),
        _ => Ok(()),
    }
}

fn read(path: &Path) -> Result<String, String> {
    std::fs::read_to_string(path).map_err(|e| format!("{} not readable: {}", path.display(), reason(e)))
}

/// Writes `value` in one `write(2)`, as cgroup files require, without creating the file.
fn write(path: &Path, value: impl Display) -> Result<(), String> {
    std::fs::OpenOptions::new()
        .write(true)
        .truncate(true)
        .open(path)
        .and_then(|mut f| f.write_all(value.to_string().as_bytes()))
        .map_err(|e| format!("{} not writable: {}", path.display(), reason(e)))
}

/// The OS's description of an error, without Rust's "(os error N)" suffix.
fn reason(e: io::Error) -> String {
    let s = e.to_string();
    match s.find(" (os error ") {
        Some(i) => s[..i].to_string(),
        None => s,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use std::process::{Command, Stdio};

    fn id(s: &str) -> WorkloadId {
        WorkloadId::new(s).unwrap()
    }

    #[test]
    fn cpu_quota_is_a_share_of_the_period() {
        assert_eq!(cpu_quota_us(1.0), 100_000);
        assert_eq!(cpu_quota_us(2.5), 250_000);
        assert_eq!(cpu_quota_us(0.001), MIN_CPU_QUOTA_US);
        assert_eq!(cpu_quota_us(f64::NAN), MIN_CPU_QUOTA_US);
    }

    #[test]
    fn v1_groups_come_from_proc_self_cgroup() {
        let root = tempfile::tempdir().unwrap();
        std::fs::create_dir(root.path().join("memory")).unwrap();
        std::fs::create_dir(root.path().join("cpu,cpuacct")).unwrap();
        let own = "12:pids:/\n4:memory:/process_api/abc\n3:cpu,cpuacct:/agent\n0::/\n";
        let Layout::V1 { memory, cpu } = Cgroups::from_parts(root.path(), own).layout else { panic!("expected v1") };
        assert_eq!(memory.unwrap(), root.path().join("memory/process_api/abc"));
        assert_eq!(cpu.unwrap(), root.path().join("cpu,cpuacct/agent"));

        let Layout::V1 { memory, cpu } = Cgroups::from_parts(root.path(), "4:memory:/x\n").layout else { panic!("expected v1") };
        assert!(memory.is_ok());
        assert_eq!(cpu.unwrap_err(), format!("no cpu cgroup in {PROC_SELF_CGROUP}"));
    }

    #[test]
    fn v2_enables_controllers_and_writes_limits() {
        let root = tempfile::tempdir().unwrap();
        let own = root.path().join("agent.service");
        let group = own.join("verge/web");
        std::fs::create_dir_all(&group).unwrap();
        std::fs::write(root.path().join("cgroup.controllers"), "cpu memory io\n").unwrap();
        std::fs::write(own.join("cgroup.controllers"), "cpu memory\n").unwrap();
        std::fs::write(own.join("cgroup.subtree_control"), "memory\n").unwrap();
        std::fs::write(own.join("verge/cgroup.subtree_control"), "").unwrap();
        for f in ["memory.max", "cpu.max", "cgroup.procs"] {
            std::fs::write(group.join(f), "").unwrap();
        }
        let cgroups = Cgroups::from_parts(root.path(), "0::/agent.service\n");
        let limits = cgroups.apply(&id("web"), 4242, Bytes(64 << 20), 0.5);
        assert_eq!(limits, Limits { memory: true, cpu: true, message: String::new() });
        let read = |p: &str| std::fs::read_to_string(own.join(p)).unwrap();
        assert_eq!(read("verge/web/memory.max"), "67108864");
        assert_eq!(read("verge/web/cpu.max"), "50000 100000");
        assert_eq!(read("verge/web/cgroup.procs"), "4242");
        assert_eq!(read("cgroup.subtree_control"), "+cpu", "memory was already enabled");

        std::fs::write(own.join("cgroup.controllers"), "cpu\n").unwrap();
        let limits = cgroups.apply(&id("web"), 4242, Bytes(64 << 20), 0.5);
        assert!(!limits.memory && limits.cpu);
        assert!(limits.message.starts_with("memory limit not enforced: the memory controller is not delegated"), "{}", limits.message);
    }

    #[test]
    fn unusable_cgroups_are_reported_not_fatal() {
        let root = tempfile::tempdir().unwrap();
        let cgroups = Cgroups::from_parts(&root.path().join("missing"), "4:memory:/\n1:cpu:/\n");
        let limits = cgroups.apply(&id("web"), 4242, Bytes(1 << 20), 1.0);
        assert!(!limits.memory && !limits.cpu);
        assert!(limits.message.contains("memory limit not enforced: no memory cgroup hierarchy mounted at"), "{}", limits.message);
        assert!(limits.message.contains("; cpu limit not enforced: "), "{}", limits.message);
        cgroups.remove(&id("web"));
    }

    /// Applies real limits to a real process on this machine, or prints why it cannot.
    #[test]
    fn limits_apply_on_this_machine() {
        let cgroups = Cgroups::detect();
        let mut child = Command::new("sleep").arg("1000").stdin(Stdio::null()).spawn().unwrap();
        let pid = child.id();
        let wid = id(&format!("verge-test-{}", std::process::id()));
        let limits = cgroups.apply(&wid, pid, Bytes(64 << 20), 0.5);
        if !limits.message.is_empty() {
            println!("cgroup limits not (fully) enforced on this machine: {}", limits.message);
        }
        assert_eq!(limits.message.is_empty(), limits.memory && limits.cpu, "{limits:?}");
        let group = |own: &Path| own.join(PARENT).join(wid.as_str());
        let expected: Vec<(PathBuf, &str, &str)> = match &cgroups.layout {
            Layout::V2 { own } => {
                [(limits.memory, (group(own), "memory.max", "67108864")), (limits.cpu, (group(own), "cpu.max", "50000 100000"))]
                    .into_iter()
                    .filter_map(|(enforced, file)| enforced.then_some(file))
                    .collect()
            }
            Layout::V1 { memory, cpu } => [
                (limits.memory, memory.as_ref().map(|own| (group(own), "memory.limit_in_bytes", "67108864"))),
                (limits.cpu, cpu.as_ref().map(|own| (group(own), "cpu.cfs_quota_us", "50000"))),
            ]
            .into_iter()
            .filter_map(|(enforced, file)| file.ok().filter(|_| enforced))
            .collect(),
            Layout::Unavailable(_) => Vec::new(),
        };
        let check = |(dir, file, want): &(PathBuf, &str, &str)| -> Result<(), String> {
            let got = std::fs::read_to_string(dir.join(file)).map_err(|e| e.to_string())?;
            let procs = std::fs::read_to_string(dir.join("cgroup.procs")).map_err(|e| e.to_string())?;
            if got.trim() != *want || !procs.lines().any(|p| p == pid.to_string()) {
                return Err(format!("{} holds {got:?}, cgroup.procs {procs:?}; expected {want:?} and pid {pid}", dir.join(file).display()));
            }
            Ok(())
        };
        assert_eq!(expected.len(), usize::from(limits.memory) + usize::from(limits.cpu));
        let result: Result<Vec<()>, String> = expected.iter().map(check).collect();
        let _ = child.kill();
        let _ = child.wait();
        cgroups.remove(&wid);
        result.unwrap();
        for (dir, _, _) in &expected {
            assert!(!dir.exists(), "{} removed", dir.display());
        }
        // Removing a group that is already gone is harmless.
        cgroups.remove(&wid);
    }
}
