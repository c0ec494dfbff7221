//! Cache invalidations for nodes that were not connected when they were
//! made (a write elsewhere, a `DELETE`): the server appends them to one
//! log, and a node that connects again gets every entry meant for it since
//! the last one it acknowledged, so its edge cache does not serve what the
//! fleet dropped. One log entry per invalidation, however many nodes
//! missed it: a write while a thousand nodes are down is one record.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use verge_core::NodeId;

/// Most entries the log keeps. A node that missed an entry pushed out
/// before it caught up drops everything it cached before it connects (a
/// cache loses only speed by that).
pub const CACHE_LOG_ENTRIES: usize = 10_000;

/// Most node names the log's entries hold together (about 20 MB): with
/// many nodes down, every entry names them all, and the log keeps fewer
/// entries.
pub const CACHE_LOG_NODE_NAMES: usize = 1_000_000;

/// The position of the newest entry of `log` (0: empty).
pub(crate) fn last_position(log: &BTreeMap<u64, MissedInvalidation>) -> u64 {
    log.keys().next_back().copied().unwrap_or(0)
}

/// Whether `log` holds more than the limits allow.
pub(crate) fn over_limits(log: &BTreeMap<u64, MissedInvalidation>) -> bool {
    log.len() > CACHE_LOG_ENTRIES || log.values().map(|e| e.nodes.len()).sum::<usize>() > CACHE_LOG_NODE_NAMES
}

/// One invalidation, for the nodes that were not connected to hear it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct MissedInvalidation {
    /// The key.
    pub key: String,
    /// Copies of this version or older go; a node keeps a newer one.
    pub version: u64,
    /// The nodes that missed it, sorted.
    pub nodes: Vec<NodeId>,
}

/// What a node missed, as sent to it when it connects.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct CacheBacklog {
    /// Each key with the newest version invalidated.
    pub keys: BTreeMap<String, u64>,
    /// An entry for it left the log before it caught up, or the control
    /// plane cannot vouch for its cache: drop every entry from before it
    /// connected.
    pub drop_all: bool,
    /// The log position this covers: acknowledged, the node has seen every
    /// entry up to here.
    pub through: u64,
}

impl CacheBacklog {
    /// Nothing to send.
    pub fn is_empty(&self) -> bool {
        self.keys.is_empty() && !self.drop_all
    }
}

/// The entries of `log` after `seen` that name `node`, merged per key.
pub(crate) fn backlog(log: &BTreeMap<u64, MissedInvalidation>, node: &NodeId, seen: u64, drop_all: bool) -> CacheBacklog {
    let mut keys = BTreeMap::new();
    for e in log.range(seen + 1..).map(|(_, e)| e).filter(|e| e.nodes.binary_search(node).is_ok()) {
        let v = keys.entry(e.key.clone()).or_insert(e.version);
        *v = (*v).max(e.version);
    }
    CacheBacklog { keys, drop_all, through: last_position(log).max(seen) }
}
