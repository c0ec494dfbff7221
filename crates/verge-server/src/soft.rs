//! Heartbeat-derived soft state: lives in memory only and is rebuilt from
//! the next heartbeats after a restart.

use std::collections::BTreeMap;

use std::sync::Arc;

use verge_core::{NodeMetrics, WorkloadId, WorkloadStatus};
use verge_proto::Posture;
use verge_sched::VivaldiClient;
use verge_security::pki::CertInfo;

/// What the server last heard from a node.
#[derive(Debug, Clone, Default)]
pub struct NodeSoft {
    /// When the last heartbeat (or hello) arrived, ms.
    pub last_heartbeat_ms: Option<u64>,
    /// When the lease runs out without another heartbeat, ms.
    pub lease_expires_ms: Option<u64>,
    /// The last metrics.
    pub metrics: Option<NodeMetrics>,
    /// The last reported state of each workload on the node.
    pub statuses: BTreeMap<WorkloadId, WorkloadStatus>,
    /// Whether the agent's gateway connection is open.
    pub connected: bool,
    /// Heartbeats received since this server started.
    pub heartbeats: u64,
    /// The node's network coordinate, learned from the RTTs it measures.
    pub vivaldi: Option<VivaldiClient>,
    /// Its measured RTT to this server, smoothed, ms.
    pub server_rtt_ms: Option<f64>,
    /// The verified certificate of its current gateway connection.
    pub cert: Option<Arc<CertInfo>>,
    /// When its last attestation passed, ms.
    pub attested_ms: Option<u64>,
    /// Why its last attestation failed; a node whose last attestation
    /// failed is quarantined.
    pub attest_failure: Option<String>,
    /// Refused authentications attributed to the node (bad certificates,
    /// identity mismatches, failed attestations).
    pub failed_auths: u32,
    /// Protocol anomalies (malformed frames, unexpected messages).
    pub anomalies: u32,
    /// What it reported about its own protection.
    pub posture: Posture,
}

impl NodeSoft {
    /// Records contact from the node at `now_ms`, renewing its lease.
    pub fn touch(&mut self, now_ms: u64, lease_ms: u64) {
        self.last_heartbeat_ms = Some(now_ms);
        self.lease_expires_ms = Some(now_ms + lease_ms);
    }

    /// Whether the node's lease is valid at `now_ms`.
    pub fn alive(&self, now_ms: u64) -> bool {
        self.lease_expires_ms.is_some_and(|t| now_ms < t)
    }
}
