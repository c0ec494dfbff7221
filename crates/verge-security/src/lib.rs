//! Verge's zero-trust building blocks. Nothing here opens a socket or reads
//! a clock of its own: the server and the agent do the I/O around them.
//!
//! - [`pki`]: the cluster CA, node and server certificates, fingerprints.
//! - [`tls`]: rustls settings (TLS 1.2 minimum, ring provider) for servers and clients.
//! - [`token`]: bearer and join tokens, [`rbac`]: roles and permissions.
//! - [`attest`]: node measurements signed with the node key, verified against a nonce and a policy.
//! - [`trust`]: a node's trust score from identity, attestation, compliance and behaviour.
//! - [`seal`]: AES-256-GCM encryption at rest under rotating per-node data keys.
//! - [`audit`]: the hash-chained audit log.
//! - [`compliance`]: declarative rule packs and their evaluation.

pub mod attest;
pub mod audit;
pub mod compliance;
pub mod fsutil;
pub mod pki;
pub mod rbac;
pub mod seal;
pub mod tls;
pub mod token;
pub mod trust;
