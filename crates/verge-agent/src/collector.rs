//! The node metrics collector: one [`NodeMetrics`] sample a second, from
//! sysinfo, `/proc` and `/sys`.
//!
//! This module owns the sysinfo structures and reuses them between samples so
//! that sampling stays cheap (the agent's idle budget is < 0.2% CPU). It must
//! never refresh more than a sample needs (no process list, no full disk
//! rescan) and never fail: a value it cannot read is reported as zero, or as
//! `None` for the temperature.

use std::path::{Path, PathBuf};

use sysinfo::{DiskRefreshKind, Disks, MemoryRefreshKind, Networks, System};
use verge_core::NodeMetrics;

/// Where the kernel lists thermal zones.
const THERMAL_DIR: &str = "/sys/class/thermal";
/// The loopback interface, whose traffic never leaves the node.
const LOOPBACK: &str = "lo";

/// Samples the node's CPU, memory, data disk, network, load and temperature;
/// the heartbeat loop owns one and calls [`Collector::sample`] every second.
pub struct Collector {
    /// CPU and memory; `None` where sysinfo does not support the platform.
    system: Option<System>,
    /// Interface counters; `None` where sysinfo does not support the platform.
    networks: Option<Networks>,
    /// The disk list and the index of the disk holding the data directory.
    data_disk: Option<(Disks, usize)>,
    /// The `temp` files of the thermal zones found at start.
    thermal_zones: Vec<PathBuf>,
}

impl Collector {
    /// A collector for the node whose agent keeps its data in `data_dir`; that
    /// directory picks the disk whose usage is reported.
    pub fn new(data_dir: &Path) -> Collector {
        let system = System::new().ok().map(|mut s| {
            // CPU usage is a difference between two refreshes: take the first now.
            s.refresh_cpu_usage();
            s
        });
        let networks = Networks::new().ok();
        let data_disk = Disks::new_with_refreshed_list_specifics(DiskRefreshKind::nothing().with_storage()).ok().and_then(|disks| {
            let dir = std::fs::canonicalize(data_dir).unwrap_or_else(|_| data_dir.to_path_buf());
            let mounts: Vec<&Path> = disks.iter().map(|d| d.mount_point()).collect();
            let index = longest_mount_prefix(&dir, &mounts)?;
            Some((disks, index))
        });
        Collector { system, networks, data_disk, thermal_zones: thermal_zones(Path::new(THERMAL_DIR)) }
    }

    /// Takes one sample; CPU usage is the share busy since the previous call.
    pub fn sample(&mut self) -> NodeMetrics {
        let mut m = NodeMetrics::default();
        if let Some(sys) = &mut self.system {
            sys.refresh_cpu_usage();
            sys.refresh_memory_specifics(MemoryRefreshKind::nothing().with_ram());
            m.cpu_percent = f64::from(sys.global_cpu_usage()).clamp(0.0, 100.0);
            m.memory_used = sys.used_memory();
            m.memory_total = sys.total_memory();
        }
        if let Some(disk) = self.data_disk.as_mut().and_then(|(disks, i)| disks.get_mut(*i)) {
            disk.refresh_specifics(DiskRefreshKind::nothing().with_storage());
            m.disk_total = disk.total_space();
            m.disk_used = disk.total_space().saturating_sub(disk.available_space());
        }
        if let Some(networks) = &mut self.networks {
            networks.refresh(true);
            for (_, data) in networks.iter().filter(|(name, _)| name.as_os_str() != LOOPBACK) {
                m.net_rx_bytes = m.net_rx_bytes.saturating_add(data.total_received());
                m.net_tx_bytes = m.net_tx_bytes.saturating_add(data.total_transmitted());
            }
        }
        if let Ok(load) = System::load_average() {
            m.load = [load.one, load.five, load.fifteen];
        }
        m.temperature_c = max_temperature(&self.thermal_zones);
        m
    }
}

/// The index of the mount point that holds `dir`: the longest one that is a
/// prefix of it, component by component.
fn longest_mount_prefix(dir: &Path, mounts: &[&Path]) -> Option<usize> {
    mounts.iter().enumerate().filter(|(_, m)| dir.starts_with(m)).max_by_key(|(_, m)| m.components().count()).map(|(i, _)| i)
}

/// The `temp` files of every `thermal_zone*` under `dir`.
fn thermal_zones(dir: &Path) -> Vec<PathBuf> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut zones: Vec<PathBuf> =
        entries.flatten().filter(|e| e.file_name().to_string_lossy().starts_with("thermal_zone")).map(|e| e.path().join("temp")).collect();
    zones.sort();
    zones
}

/// The hottest readable zone in °C (the files hold millidegrees).
fn max_temperature(zones: &[PathBuf]) -> Option<f64> {
    zones
        .iter()
        .filter_map(|p| std::fs::read_to_string(p).ok())
        .filter_map(|s| s.trim().parse::<i64>().ok())
        .map(|milli| milli as f64 / 1000.0)
        .reduce(f64::max)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn samples_are_plausible() {
        let dir = tempfile::tempdir().unwrap();
        let mut c = Collector::new(dir.path());
        let first = c.sample();
        let m = c.sample();
        for s in [&first, &m] {
            assert!((0.0..=100.0).contains(&s.cpu_percent), "{s:?}");
        }
        assert!(m.memory_total > 0 && m.memory_used <= m.memory_total, "{m:?}");
        assert!(m.disk_total > 0 && m.disk_used <= m.disk_total, "{m:?}");
        assert!(m.load.iter().all(|l| *l >= 0.0), "{m:?}");
        if let Some(t) = m.temperature_c {
            assert!((-60.0..=200.0).contains(&t), "{m:?}");
        }
    }

    #[test]
    fn data_disk_is_the_longest_mount_prefix() {
        let mounts = [Path::new("/"), Path::new("/var"), Path::new("/var/lib/verge"), Path::new("/var/li")];
        assert_eq!(longest_mount_prefix(Path::new("/var/lib/verge/data"), &mounts), Some(2));
        assert_eq!(longest_mount_prefix(Path::new("/var/lib/other"), &mounts), Some(1));
        assert_eq!(longest_mount_prefix(Path::new("/home"), &mounts), Some(0));
        assert_eq!(longest_mount_prefix(Path::new("/home"), &[Path::new("/var")]), None);
    }

    #[test]
    fn temperature_is_the_hottest_readable_zone() {
        let dir = tempfile::tempdir().unwrap();
        for (zone, temp) in [("thermal_zone0", "41500\n"), ("thermal_zone1", "67000\n"), ("thermal_zone2", "garbage")] {
            std::fs::create_dir(dir.path().join(zone)).unwrap();
            std::fs::write(dir.path().join(zone).join("temp"), temp).unwrap();
        }
        std::fs::create_dir(dir.path().join("cooling_device0")).unwrap();
        let zones = thermal_zones(dir.path());
        assert_eq!(zones.len(), 3);
        assert_eq!(max_temperature(&zones), Some(67.0));
        assert_eq!(max_temperature(&[]), None);
    }
}
