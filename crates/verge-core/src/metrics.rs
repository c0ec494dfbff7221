//! What an agent measures about its node and sends in every heartbeat.

use serde::{Deserialize, Serialize};

/// One sample of a node's real resource use.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
#[serde(rename_all = "camelCase")]
pub struct NodeMetrics {
    /// CPU busy share over the last interval, 0-100.
    pub cpu_percent: f64,
    /// Memory in use, bytes.
    pub memory_used: u64,
    /// Physical memory, bytes.
    pub memory_total: u64,
    /// Disk space in use on the agent's data disk, bytes.
    pub disk_used: u64,
    /// Size of the agent's data disk, bytes.
    pub disk_total: u64,
    /// Bytes received on all interfaces since boot.
    pub net_rx_bytes: u64,
    /// Bytes sent on all interfaces since boot.
    pub net_tx_bytes: u64,
    /// 1, 5 and 15 minute load averages.
    pub load: [f64; 3],
    /// Hottest thermal zone in °C, where the kernel exposes one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub temperature_c: Option<f64>,
}

impl NodeMetrics {
    /// Memory in use as a share of physical memory, 0-100.
    pub fn memory_percent(&self) -> f64 {
        percent(self.memory_used, self.memory_total)
    }

    /// Disk in use as a share of the disk, 0-100.
    pub fn disk_percent(&self) -> f64 {
        percent(self.disk_used, self.disk_total)
    }
}

fn percent(used: u64, total: u64) -> f64 {
    if total == 0 {
        0.0
    } else {
        used as f64 * 100.0 / total as f64
    }
}
