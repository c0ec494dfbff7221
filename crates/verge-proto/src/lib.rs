//! The agent ⇄ server protocol: versioned messages and their codec.
//!
//! Messages travel as JSON text frames over the agent gateway's WebSocket.
//! Every frame carries the protocol version `v`; a peer refuses frames of a
//! version it does not speak with a clear error instead of guessing. This
//! crate does no I/O.

use serde::{Deserialize, Serialize};
use verge_core::{NodeId, NodeMetrics, NodeSpec, WorkloadId, WorkloadSpec, WorkloadStatus};

/// The protocol version this build speaks.
pub const PROTOCOL_VERSION: u32 = 1;

/// Largest frame either side accepts, in bytes.
pub const MAX_FRAME_BYTES: usize = 4 << 20;

/// Path of the gateway's WebSocket endpoint.
pub const GATEWAY_PATH: &str = "/v1/agent";

/// What an agent sends to the server.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "camelCase")]
pub enum AgentMessage {
    /// First message on a connection: who the node is and what it runs.
    Hello {
        /// The node's declared spec (capacity after reservations).
        node: NodeSpec,
        /// Agent build version, for people.
        agent_version: String,
        /// Workloads the agent is running right now (after a restart or reconnect).
        workloads: Vec<WorkloadStatus>,
        /// The node's security posture, for compliance checks.
        #[serde(default)]
        posture: Posture,
        /// Keys its edge cache holds: a node new to the server that holds
        /// some may have missed their invalidations (see
        /// [`ServerMessage::CacheCatchUp`]).
        #[serde(default)]
        cached_keys: u64,
    },
    /// Sent every heartbeat interval: real metrics and workload states.
    Heartbeat {
        /// Increases by one per heartbeat on this connection.
        seq: u64,
        /// The agent's clock when it sent this, ms since the epoch.
        sent_ms: u64,
        /// What the node measured.
        metrics: NodeMetrics,
        /// Every workload's state.
        workloads: Vec<WorkloadStatus>,
        /// Round-trip times measured since the last heartbeat.
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        rtts: Vec<RttSample>,
    },
    /// Sent as soon as a workload changes state, between heartbeats.
    WorkloadStatus(WorkloadStatus),
    /// Answer to [`ServerMessage::FetchLogs`].
    Logs {
        /// The request this answers.
        request: u64,
        /// Log bytes read, lossily decoded as UTF-8.
        data: String,
        /// Offset to ask for next to continue where this left off.
        next_offset: u64,
        /// Why the logs could not be read, if they could not.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        error: Option<String>,
    },
    /// Answer to [`ServerMessage::Attest`]: the node's measurements with the
    /// nonce, signed by its node key (`verge_security::attest::Evidence` as JSON).
    Attestation {
        /// The evidence, JSON.
        evidence: String,
    },
    /// Asks for a new node certificate before the current one expires;
    /// answered by [`ServerMessage::Certificate`].
    RenewCertificate {
        /// A CSR for the node's new key, PEM.
        csr: String,
    },
    /// Answer to [`ServerMessage::CacheInvalidate`] and [`ServerMessage::CacheCatchUp`].
    CacheAck {
        /// The invalidation this answers.
        request: u64,
        /// Whether an entry was dropped.
        removed: bool,
    },
    /// Progress or outcome of a [`ServerMessage::SyncPush`].
    SyncStatus {
        /// The job.
        job: u64,
        /// `running`, `done` or `failed`.
        state: String,
        /// Bundle bytes uploaded so far.
        bytes_sent: u64,
        /// Bundle bytes in all.
        bytes_total: u64,
        /// Files written on the target, when done.
        #[serde(default)]
        files_written: u64,
        /// Why it failed.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        error: Option<String>,
    },
}

/// What a node reports about how it protects itself.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Posture {
    /// Cache and sync data are sealed on disk.
    #[serde(default)]
    pub encryption_at_rest: bool,
    /// When the current data key was made, ms since the epoch.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub data_key_created_ms: Option<u64>,
}

/// One measured round-trip time.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RttSample {
    /// The node measured to; `None` is the server.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub peer: Option<NodeId>,
    /// Round-trip time, ms.
    pub rtt_ms: f64,
}

/// What the server sends to an agent.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "camelCase")]
pub enum ServerMessage {
    /// Answer to `Hello`: the node is registered and these are the timings.
    Welcome {
        /// The node id the server registered.
        node: NodeId,
        /// How often to heartbeat, ms.
        heartbeat_interval_ms: u64,
        /// How long the node's lease lasts without a heartbeat, ms.
        lease_ms: u64,
    },
    /// Run this workload.
    Assign {
        /// What to run (boxed: it dwarfs the other messages).
        workload: Box<WorkloadSpec>,
    },
    /// Stop this workload and forget it.
    Unassign {
        /// Which workload.
        id: WorkloadId,
    },
    /// Read a workload's output log.
    FetchLogs {
        /// Correlates the answer.
        request: u64,
        /// Which workload.
        id: WorkloadId,
        /// Which stream: `stdout` or `stderr`.
        stream: LogStream,
        /// Where to start; `None` means the last `tail` lines.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        offset: Option<u64>,
        /// With no offset: how many lines from the end.
        tail: u32,
    },
    /// Push the tree at `path` (under this agent's sync root) to another
    /// agent's data port.
    SyncPush {
        /// The job, echoed in [`AgentMessage::SyncStatus`].
        job: u64,
        /// Local path under the sync root.
        path: String,
        /// The target agent's data port, `host:port`.
        target_addr: String,
        /// The target node, whose certificate the data port must present.
        target_node: NodeId,
        /// Path under the target's sync root.
        target_path: String,
        /// Delete target files this tree lacks.
        mirror: bool,
        /// Upload limit, bytes per second.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        limit_bps: Option<u64>,
        /// Higher goes first when the node's sync bandwidth is spent.
        #[serde(default)]
        priority: u8,
    },
    /// Prove what you run: answer with [`AgentMessage::Attestation`] over
    /// this nonce.
    Attest {
        /// Single-use, valid for 30 s.
        nonce: String,
    },
    /// Nodes whose certificates were revoked, with when: certificates of
    /// those nodes issued until then must be refused on data ports.
    Revocations {
        /// Node id → revocation time, ms since the epoch.
        nodes: std::collections::BTreeMap<String, u64>,
    },
    /// Drop a cache entry (unless the node holds a newer version than
    /// `version`); answered by [`AgentMessage::CacheAck`].
    CacheInvalidate {
        /// Correlates the acknowledgement.
        request: u64,
        /// The key.
        key: String,
        /// Keep local entries newer than this; `None` drops any version.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        version: Option<u64>,
    },
    /// The invalidations the node missed while it was not connected, sent
    /// when it connects; answered by one [`AgentMessage::CacheAck`].
    CacheCatchUp {
        /// Correlates the acknowledgement.
        request: u64,
        /// Keys to drop, each unless the node holds a version newer than its own.
        keys: std::collections::BTreeMap<String, u64>,
        /// Too many were missed to list, or the server cannot vouch for
        /// what the node held (new to it with keys cached, as after a
        /// removal): drop every entry written before the connection's
        /// hello.
        #[serde(default)]
        drop_all: bool,
    },
    /// Read these keys through from the origin into the cache now.
    CachePrewarm {
        /// Keys, most wanted first.
        keys: Vec<String>,
        /// Higher runs before lower among queued warm-ups.
        #[serde(default)]
        priority: u8,
    },
    /// A renewed node certificate, answering [`AgentMessage::RenewCertificate`].
    Certificate {
        /// The certificate, PEM.
        cert_pem: String,
    },
    /// The server refuses the connection; the agent should log and retry later.
    Refused {
        /// Why.
        reason: String,
    },
}

/// Which output stream of a workload.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum LogStream {
    /// Standard output.
    #[default]
    Stdout,
    /// Standard error.
    Stderr,
}

impl LogStream {
    /// File name of the stream's log under the workload's directory.
    pub fn file_name(self) -> &'static str {
        match self {
            LogStream::Stdout => "stdout.log",
            LogStream::Stderr => "stderr.log",
        }
    }
}

/// A frame on the wire: a version and one message.
#[derive(Debug, Serialize, Deserialize)]
struct Frame<M> {
    v: u32,
    #[serde(flatten)]
    msg: M,
}

/// Why a frame could not be decoded.
#[derive(Debug, thiserror::Error)]
pub enum ProtoError {
    /// The frame exceeds [`MAX_FRAME_BYTES`].
    #[error("frame of {0} bytes exceeds the {MAX_FRAME_BYTES} byte limit")]
    TooLarge(usize),
    /// The peer speaks another protocol version.
    #[error("peer speaks protocol version {0}, this build speaks {PROTOCOL_VERSION}; upgrade the older side")]
    Version(u32),
    /// The frame is not a valid message.
    #[error("malformed frame: {0}")]
    Malformed(String),
}

/// Encodes a message as a JSON text frame.
pub fn encode<M: Serialize>(msg: &M) -> String {
    #[derive(Serialize)]
    struct Out<'a, M> {
        v: u32,
        #[serde(flatten)]
        msg: &'a M,
    }
    // Serialising our own message types cannot fail: all keys are strings.
    serde_json::to_string(&Out { v: PROTOCOL_VERSION, msg }).unwrap_or_default()
}

/// Decodes a JSON text frame, checking size and version first.
pub fn decode<M: serde::de::DeserializeOwned>(text: &str) -> Result<M, ProtoError> {
    if text.len() > MAX_FRAME_BYTES {
        return Err(ProtoError::TooLarge(text.len()));
    }
    #[derive(Deserialize)]
    struct VersionOnly {
        v: u32,
    }
    let v: VersionOnly = serde_json::from_str(text).map_err(|e| ProtoError::Malformed(e.to_string()))?;
    if v.v != PROTOCOL_VERSION {
        return Err(ProtoError::Version(v.v));
    }
    let f: Frame<M> = serde_json::from_str(text).map_err(|e| ProtoError::Malformed(e.to_string()))?;
    Ok(f.msg)
}

/// One step of a scan of a node's cache keys, as the query of the agent's
/// `GET /api/v1/keys` (which the server's `GET
/// /api/v1/nodes/{id}/cache/keys` takes too and passes on).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KeysStep {
    /// Where to go on from: the last step's cursor (0: the start).
    #[serde(default)]
    pub cursor: u64,
    /// How many files to cover (the agent's default when absent).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub count: Option<usize>,
    /// Only keys matching this glob.
    #[serde(default, rename = "match", skip_serializing_if = "Option::is_none")]
    pub pattern: Option<String>,
}

#[cfg(test)]
mod tests {
    use super::*;
    use verge_core::WorkloadState;

    #[test]
    fn messages_round_trip() {
        let status = WorkloadStatus {
            id: WorkloadId::new("w1").unwrap(),
            state: WorkloadState::Running,
            pid: Some(42),
            restarts: 1,
            exit_code: None,
            message: String::new(),
        };
        let m = AgentMessage::Heartbeat {
            seq: 7,
            sent_ms: 1,
            metrics: NodeMetrics::default(),
            workloads: vec![status.clone()],
            rtts: vec![RttSample { peer: None, rtt_ms: 1.5 }],
        };
        let text = encode(&m);
        assert!(text.contains("\"v\":1"), "{text}");
        assert_eq!(decode::<AgentMessage>(&text).unwrap(), m);
        let s = AgentMessage::WorkloadStatus(status);
        assert_eq!(decode::<AgentMessage>(&encode(&s)).unwrap(), s);
        let u = ServerMessage::Unassign { id: WorkloadId::new("w1").unwrap() };
        assert_eq!(decode::<ServerMessage>(&encode(&u)).unwrap(), u);
    }

    #[test]
    fn bad_frames_are_refused_with_a_reason() {
        assert!(matches!(decode::<AgentMessage>("{\"v\":2,\"type\":\"hello\"}"), Err(ProtoError::Version(2))));
        assert!(matches!(decode::<AgentMessage>("not json"), Err(ProtoError::Malformed(_))));
        assert!(matches!(decode::<AgentMessage>("{\"v\":1,\"type\":\"bogus\"}"), Err(ProtoError::Malformed(_))));
        let huge = format!("{{\"v\":1,\"pad\":\"{}\"}}", "x".repeat(MAX_FRAME_BYTES));
        assert!(matches!(decode::<AgentMessage>(&huge), Err(ProtoError::TooLarge(_))));
    }
}
