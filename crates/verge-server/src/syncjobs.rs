//! Sync jobs between nodes (`POST /api/v1/sync`): the server validates the
//! two ends, tells the source agent to push to the target's data port, and
//! records the progress the agent reports. Jobs are soft state: they live
//! as long as the server process.

use serde::{Deserialize, Serialize};
use verge_core::{NodeId, ValidationError};

/// One end of a job: `node:path`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Endpoint {
    /// The node.
    pub node: NodeId,
    /// Path under that node's sync root.
    pub path: String,
}

impl Endpoint {
    /// Parses `node:path`, checking the node id and that the path stays
    /// under the sync root.
    pub fn parse(field: &str, s: &str) -> Result<Self, ValidationError> {
        let (node, path) = s.split_once(':').ok_or_else(|| ValidationError::new(field, format!("{s:?} is not node:path")))?;
        let node = NodeId::new(node).map_err(|e| ValidationError::new(field, e.message))?;
        verge_sync::manifest::check_path(path).map_err(|e| ValidationError::new(field, e.to_string()))?;
        Ok(Endpoint { node, path: path.to_string() })
    }
}

/// The body of `POST /api/v1/sync`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct SyncRequest {
    /// `node:path` to copy from.
    pub source: String,
    /// `node:path` to copy to.
    pub target: String,
    /// Delete target files the source lacks.
    #[serde(default)]
    pub mirror: bool,
    /// Upload limit, bytes per second.
    #[serde(default)]
    pub limit_bps: Option<u64>,
    /// Higher goes first when the source node's sync bandwidth is spent (0–255).
    #[serde(default)]
    pub priority: u8,
    /// Lowest trust score (0-100) both nodes must have.
    #[serde(default)]
    pub min_trust: Option<u8>,
}

/// A job and what its source agent last reported.
#[derive(Clone, Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct SyncJob {
    /// Job id.
    pub id: u64,
    /// Where from.
    pub source: Endpoint,
    /// Where to.
    pub target: Endpoint,
    /// Mirror mode.
    pub mirror: bool,
    /// `running`, `done` or `failed`.
    pub state: String,
    /// Bundle bytes uploaded so far.
    pub bytes_sent: u64,
    /// Bundle bytes in all, once known.
    pub bytes_total: u64,
    /// Files written on the target.
    pub files_written: u64,
    /// Why it failed.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// When it was created, ms since the epoch.
    pub created_ms: u64,
    /// When it last changed.
    pub updated_ms: u64,
}
