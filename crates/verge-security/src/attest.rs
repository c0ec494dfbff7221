//! Node attestation, in the manner of SPIFFE/SPIRE node attestors: the
//! server hands a node a single-use nonce, the node measures itself (its
//! binary, kernel, boot and configuration), signs the measurements and the
//! nonce with its Ed25519 node key, and the server checks the signature,
//! the nonce and the measurements against a [`Policy`].
//!
//! Evidence arrives from the network, so [`Evidence::parse`] is strict:
//! a size limit, no unknown fields, every field bounded in length and
//! charset. The signed bytes are [`Evidence::signed_message`]: a domain
//! separation prefix and every field length-prefixed, so no two distinct
//! evidences sign the same bytes.

use std::collections::{HashMap, VecDeque};
use std::fs::{self, File};
use std::io::{self, Read};
use std::path::Path;

use ring::signature::{Ed25519KeyPair, UnparsedPublicKey, ED25519};
use serde::{Deserialize, Serialize};

use crate::fsutil::{hex, random_bytes, sha256_hex, unhex};

/// How long an issued nonce can be redeemed: long enough for a node to
/// measure itself, short enough that a stolen nonce is soon worthless.
pub const NONCE_TTL_MS: u64 = 30_000;
/// Outstanding nonces kept per node; issuing more drops the oldest, so a
/// node asking in a loop cannot grow the server's memory.
pub const MAX_NONCES_PER_NODE: usize = 4;
/// The largest evidence document [`Evidence::parse`] reads.
pub const MAX_EVIDENCE_BYTES: usize = 16 * 1024;
/// The longest node id accepted (a DNS name's limit).
pub const MAX_NODE_LEN: usize = 253;
/// The longest free-text measurement (kernel release, boot id) accepted.
pub const MAX_FIELD_LEN: usize = 256;

const DOMAIN: &[u8] = b"verge-attestation-v1\n";
const SHA256_HEX_LEN: usize = 64;
const NONCE_HEX_LEN: usize = 64;
const SIGNATURE_HEX_LEN: usize = 128;

/// Why attestation failed. Each variant has a stable machine code
/// ([`AttestError::code`]) for JSON error bodies.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum AttestError {
    /// The evidence is not well-formed JSON of the expected shape.
    #[error("malformed evidence: {0}")]
    Malformed(String),
    /// The nonce was never issued, or was forgotten (expired and pruned, or dropped for newer ones).
    #[error("unknown nonce: it was not issued by this server or has been forgotten; ask for a new one")]
    UnknownNonce,
    /// The nonce was already used once.
    #[error("nonce already used: evidence replayed")]
    Replayed,
    /// The nonce is older than [`NONCE_TTL_MS`].
    #[error("nonce expired: evidence must be sent within {} s of asking for the nonce", NONCE_TTL_MS / 1000)]
    Expired,
    /// The evidence, or the nonce, belongs to another node.
    #[error("evidence or nonce belongs to another node")]
    WrongNode,
    /// The evidence's timestamp is too far from the server's clock.
    #[error("evidence timestamp is {skew_ms} ms from the server's clock, more than the {max_ms} ms allowed")]
    ClockSkew {
        /// Distance between the evidence's `issued_ms` and the server's now.
        skew_ms: u64,
        /// The policy's limit.
        max_ms: u64,
    },
    /// The signature does not verify under the node's registered key.
    #[error("signature does not verify under the node's key")]
    BadSignature,
    /// The node runs a binary the policy does not allow.
    #[error("binary {hash} is not on the policy's allowlist")]
    BinaryNotAllowed {
        /// SHA-256 of the node's binary.
        hash: String,
    },
    /// The node runs a kernel the policy does not allow.
    #[error("kernel {release} is not allowed by the policy")]
    KernelNotAllowed {
        /// The node's kernel release.
        release: String,
    },
    /// The signing key could not be used.
    #[error("attestation key: {0}")]
    Key(String),
}

impl AttestError {
    /// A stable snake_case code for machine-readable errors.
    pub fn code(&self) -> &'static str {
        match self {
            AttestError::Malformed(_) => "malformed",
            AttestError::UnknownNonce => "unknown_nonce",
            AttestError::Replayed => "replayed",
            AttestError::Expired => "expired",
            AttestError::WrongNode => "wrong_node",
            AttestError::ClockSkew { .. } => "clock_skew",
            AttestError::BadSignature => "bad_signature",
            AttestError::BinaryNotAllowed { .. } => "binary_not_allowed",
            AttestError::KernelNotAllowed { .. } => "kernel_not_allowed",
            AttestError::Key(_) => "bad_key",
        }
    }
}

/// What a node measures about itself: the facts a policy decides on.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Measurements {
    /// SHA-256 (lowercase hex) of the running binary.
    pub binary_sha256: String,
    /// The kernel release (`uname -r`).
    pub kernel_release: String,
    /// SHA-256 (lowercase hex) of the kernel command line.
    pub kernel_cmdline_sha256: String,
    /// SHA-256 (lowercase hex) of the node's configuration file.
    pub config_sha256: String,
    /// The kernel's boot id: changes on every reboot.
    pub boot_id: String,
}

impl Measurements {
    /// Measures this machine: hashes `binary` (streamed) and
    /// `config_bytes`, and reads the kernel release, command line and boot
    /// id from `/proc`.
    pub fn collect(binary: &Path, config_bytes: &[u8]) -> io::Result<Measurements> {
        Ok(Measurements {
            binary_sha256: sha256_file(binary)?,
            kernel_release: fs::read_to_string("/proc/sys/kernel/osrelease")?.trim().to_string(),
            kernel_cmdline_sha256: sha256_hex(&fs::read("/proc/cmdline")?),
            config_sha256: sha256_hex(config_bytes),
            boot_id: fs::read_to_string("/proc/sys/kernel/random/boot_id")?.trim().to_string(),
        })
    }

    fn validate(&self) -> Result<(), AttestError> {
        check_hex("binary_sha256", &self.binary_sha256, SHA256_HEX_LEN)?;
        check_text("kernel_release", &self.kernel_release)?;
        check_hex("kernel_cmdline_sha256", &self.kernel_cmdline_sha256, SHA256_HEX_LEN)?;
        check_hex("config_sha256", &self.config_sha256, SHA256_HEX_LEN)?;
        check_text("boot_id", &self.boot_id)
    }
}

fn sha256_file(path: &Path) -> io::Result<String> {
    let mut file = File::open(path)?;
    let mut ctx = ring::digest::Context::new(&ring::digest::SHA256);
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = match file.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        ctx.update(&buf[..n]);
    }
    Ok(hex(ctx.finish().as_ref()))
}

/// A node's signed statement about itself, answering one nonce.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Evidence {
    /// The node's id.
    pub node: String,
    /// The server's nonce (64 lowercase hex characters).
    pub nonce: String,
    /// When the node made the evidence, in ms since the Unix epoch.
    pub issued_ms: u64,
    /// What the node measured.
    pub measurements: Measurements,
    /// Ed25519 signature over [`Evidence::signed_message`] (128 lowercase hex characters).
    pub signature: String,
}

impl Evidence {
    /// Signs `measurements` for `nonce` with the node's Ed25519 key
    /// (PKCS#8 DER, as rcgen's `serialize_der` writes it).
    pub fn sign(key_pkcs8: &[u8], node: &str, nonce: &str, issued_ms: u64, measurements: Measurements) -> Result<Evidence, AttestError> {
        let key = Ed25519KeyPair::from_pkcs8_maybe_unchecked(key_pkcs8).map_err(|e| AttestError::Key(e.to_string()))?;
        let mut evidence = Evidence { node: node.to_string(), nonce: nonce.to_string(), issued_ms, measurements, signature: String::new() };
        evidence.validate_unsigned()?;
        evidence.signature = hex(key.sign(&evidence.signed_message()).as_ref());
        Ok(evidence)
    }

    /// Reads evidence sent by a node. Rejects anything over
    /// [`MAX_EVIDENCE_BYTES`], unknown fields, and fields of the wrong
    /// length or charset. Never panics.
    pub fn parse(bytes: &[u8]) -> Result<Evidence, AttestError> {
        if bytes.len() > MAX_EVIDENCE_BYTES {
            return Err(AttestError::Malformed(format!("{} bytes, more than the {MAX_EVIDENCE_BYTES} allowed", bytes.len())));
        }
        let evidence: Evidence = serde_json::from_slice(bytes).map_err(|e| AttestError::Malformed(e.to_string()))?;
        evidence.validate_unsigned()?;
        check_hex("signature", &evidence.signature, SIGNATURE_HEX_LEN)?;
        Ok(evidence)
    }

    /// The bytes the signature covers: `verge-attestation-v1\n`, then each
    /// field except the signature in declaration order, strings as a
    /// 4-byte big-endian length and their UTF-8 bytes, `issued_ms` as 8
    /// big-endian bytes.
    pub fn signed_message(&self) -> Vec<u8> {
        let m = &self.measurements;
        let mut out = Vec::with_capacity(512);
        out.extend_from_slice(DOMAIN);
        put_str(&mut out, &self.node);
        put_str(&mut out, &self.nonce);
        out.extend_from_slice(&self.issued_ms.to_be_bytes());
        for field in [&m.binary_sha256, &m.kernel_release, &m.kernel_cmdline_sha256, &m.config_sha256, &m.boot_id] {
            put_str(&mut out, field);
        }
        out
    }

    fn validate_unsigned(&self) -> Result<(), AttestError> {
        check_node(&self.node)?;
        check_hex("nonce", &self.nonce, NONCE_HEX_LEN)?;
        self.measurements.validate()
    }
}

fn put_str(out: &mut Vec<u8>, s: &str) {
    // Every field is bounded far below 4 GiB by validation; saturate rather than wrap regardless.
    let len = u32::try_from(s.len()).unwrap_or(u32::MAX);
    out.extend_from_slice(&len.to_be_bytes());
    out.extend_from_slice(s.as_bytes());
}

fn check_node(node: &str) -> Result<(), AttestError> {
    let ok_char = |c: char| c.is_ascii_alphanumeric() || c == '-' || c == '_' || c == '.';
    if node.is_empty() || node.len() > MAX_NODE_LEN || !node.chars().all(ok_char) {
        return Err(AttestError::Malformed(format!("node id must be 1-{MAX_NODE_LEN} characters of A-Z a-z 0-9 - _ .")));
    }
    Ok(())
}

fn check_hex(field: &str, value: &str, len: usize) -> Result<(), AttestError> {
    if value.len() != len || !value.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)) {
        return Err(AttestError::Malformed(format!("{field} must be {len} lowercase hex characters")));
    }
    Ok(())
}

fn check_text(field: &str, value: &str) -> Result<(), AttestError> {
    if value.is_empty() || value.len() > MAX_FIELD_LEN || value.chars().any(char::is_control) {
        return Err(AttestError::Malformed(format!("{field} must be 1-{MAX_FIELD_LEN} bytes without control characters")));
    }
    Ok(())
}

#[derive(Debug)]
struct Issued {
    nonce: String,
    issued_ms: u64,
    used: bool,
}

/// The server's book of single-use nonces. Each nonce is redeemable once,
/// by the node it was issued to, within [`NONCE_TTL_MS`]. Memory is
/// bounded: at most [`MAX_NONCES_PER_NODE`] per node, expired ones pruned.
#[derive(Debug, Default)]
pub struct NonceBook {
    by_node: HashMap<String, VecDeque<Issued>>,
    owner: HashMap<String, String>,
    issued_since_sweep: usize,
}

impl NonceBook {
    /// An empty book.
    pub fn new() -> NonceBook {
        NonceBook::default()
    }

    /// Issues a fresh nonce (32 random bytes, hex) for `node`, dropping
    /// that node's oldest nonce (used ones first) beyond the per-node cap.
    pub fn issue(&mut self, node: &str, now_ms: u64) -> String {
        self.sweep_if_due(now_ms);
        let nonce = hex(&random_bytes::<32>());
        let queue = self.by_node.entry(node.to_string()).or_default();
        prune_queue(queue, &mut self.owner, now_ms);
        queue.push_back(Issued { nonce: nonce.clone(), issued_ms: now_ms, used: false });
        while queue.len() > MAX_NONCES_PER_NODE {
            let victim = queue.iter().position(|i| i.used).unwrap_or(0);
            if let Some(dropped) = queue.remove(victim) {
                self.owner.remove(&dropped.nonce);
            }
        }
        self.owner.insert(nonce.clone(), node.to_string());
        self.issued_since_sweep += 1;
        nonce
    }

    /// Redeems `nonce` for `node`: succeeds once, only for the node it was
    /// issued to, and only within [`NONCE_TTL_MS`] of issue.
    pub fn take(&mut self, node: &str, nonce: &str, now_ms: u64) -> Result<(), AttestError> {
        match self.owner.get(nonce) {
            None => return Err(AttestError::UnknownNonce),
            Some(owner) if owner != node => return Err(AttestError::WrongNode),
            Some(_) => {}
        }
        let Some(queue) = self.by_node.get_mut(node) else { return Err(AttestError::UnknownNonce) };
        let result = match queue.iter_mut().find(|i| i.nonce == nonce) {
            None => Err(AttestError::UnknownNonce),
            Some(i) if i.used => Err(AttestError::Replayed),
            Some(i) if now_ms.saturating_sub(i.issued_ms) > NONCE_TTL_MS => Err(AttestError::Expired),
            Some(i) => {
                i.used = true;
                Ok(())
            }
        };
        prune_queue(queue, &mut self.owner, now_ms);
        if queue.is_empty() {
            self.by_node.remove(node);
        }
        result
    }

    /// Nonces currently remembered (outstanding or used, not yet pruned).
    pub fn len(&self) -> usize {
        self.owner.len()
    }

    /// Whether the book remembers no nonce at all.
    pub fn is_empty(&self) -> bool {
        self.owner.is_empty()
    }

    /// Prunes every node's expired nonces once as many nonces have been
    /// issued as the book holds, so nodes that never come back are
    /// forgotten at amortised constant cost per issue.
    fn sweep_if_due(&mut self, now_ms: u64) {
        if self.issued_since_sweep < self.owner.len().max(64) {
            return;
        }
        self.issued_since_sweep = 0;
        let owner = &mut self.owner;
        self.by_node.retain(|_, queue| {
            prune_queue(queue, owner, now_ms);
            !queue.is_empty()
        });
    }
}

fn prune_queue(queue: &mut VecDeque<Issued>, owner: &mut HashMap<String, String>, now_ms: u64) {
    queue.retain(|i| {
        let keep = now_ms.saturating_sub(i.issued_ms) <= NONCE_TTL_MS;
        if !keep {
            owner.remove(&i.nonce);
        }
        keep
    });
}

/// What the server accepts from a node's measurements.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Policy {
    /// SHA-256 hashes (hex) of the binaries allowed; empty allows any binary.
    pub allowed_binaries: Vec<String>,
    /// Kernel release prefixes allowed (`6.1.` allows `6.1.0-18-amd64`); empty allows any kernel.
    pub allowed_kernels: Vec<String>,
    /// How far the evidence's `issued_ms` may be from the server's clock (default 30 s).
    pub max_clock_skew_ms: u64,
}

impl Default for Policy {
    fn default() -> Policy {
        Policy { allowed_binaries: Vec::new(), allowed_kernels: Vec::new(), max_clock_skew_ms: NONCE_TTL_MS }
    }
}

/// Checks `e` from `node`, whose registered Ed25519 public key (raw 32
/// bytes) is `public_key`, against `policy`, redeeming its nonce from
/// `book`.
///
/// Order matters: the node and signature are checked before the nonce is
/// redeemed, so forged evidence cannot burn a node's nonce; the nonce is
/// redeemed before the clock and policy checks, so evidence that fails
/// them cannot be retried with the same nonce.
pub fn verify(e: &Evidence, node: &str, public_key: &[u8], policy: &Policy, book: &mut NonceBook, now_ms: u64) -> Result<(), AttestError> {
    if e.node != node {
        return Err(AttestError::WrongNode);
    }
    let signature = unhex(&e.signature).ok_or(AttestError::BadSignature)?;
    UnparsedPublicKey::new(&ED25519, public_key).verify(&e.signed_message(), &signature).map_err(|_| AttestError::BadSignature)?;
    book.take(node, &e.nonce, now_ms)?;
    let skew_ms = e.issued_ms.abs_diff(now_ms);
    if skew_ms > policy.max_clock_skew_ms {
        return Err(AttestError::ClockSkew { skew_ms, max_ms: policy.max_clock_skew_ms });
    }
    let m = &e.measurements;
    if !policy.allowed_binaries.is_empty() && !policy.allowed_binaries.iter().any(|b| b.eq_ignore_ascii_case(&m.binary_sha256)) {
        return Err(AttestError::BinaryNotAllowed { hash: m.binary_sha256.clone() });
    }
    if !policy.allowed_kernels.is_empty() && !policy.allowed_kernels.iter().any(|k| m.kernel_release.starts_with(k.as_str())) {
        return Err(AttestError::KernelNotAllowed { release: m.kernel_release.clone() });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const NOW: u64 = 1_700_000_000_000;

    struct NodeKey {
        pkcs8: Vec<u8>,
        public: Vec<u8>,
    }

    fn node_key() -> NodeKey {
        let kp = rcgen::KeyPair::generate_for(&rcgen::PKCS_ED25519).unwrap();
        NodeKey { pkcs8: kp.serialize_der(), public: kp.public_key_raw().to_vec() }
    }

    fn measurements() -> Measurements {
        Measurements {
            binary_sha256: sha256_hex(b"verge binary"),
            kernel_release: "6.1.0-18-amd64".into(),
            kernel_cmdline_sha256: sha256_hex(b"root=/dev/sda1 ro quiet"),
            config_sha256: sha256_hex(b"node_id: edge-1"),
            boot_id: "2b1c7a3e-1f4d-4c4e-9a51-0c2f6f0e9d11".into(),
        }
    }

    fn fresh(book: &mut NonceBook, key: &NodeKey) -> Evidence {
        let nonce = book.issue("edge-1", NOW);
        Evidence::sign(&key.pkcs8, "edge-1", &nonce, NOW + 5, measurements()).unwrap()
    }

    #[test]
    fn valid_evidence_verifies_once_then_is_replayed() {
        let key = node_key();
        let mut book = NonceBook::new();
        let e = fresh(&mut book, &key);
        let wire = serde_json::to_vec(&e).unwrap();
        let parsed = Evidence::parse(&wire).unwrap();
        assert_eq!(parsed, e);
        let policy =
            Policy { allowed_binaries: vec![sha256_hex(b"verge binary")], allowed_kernels: vec!["6.1.".into()], ..Policy::default() };
        verify(&parsed, "edge-1", &key.public, &policy, &mut book, NOW + 10).unwrap();
        let again = verify(&parsed, "edge-1", &key.public, &policy, &mut book, NOW + 20).unwrap_err();
        assert_eq!(again, AttestError::Replayed);
        assert_eq!(again.code(), "replayed");
    }

    #[test]
    fn each_failure_has_its_own_error() {
        let key = node_key();
        let other = node_key();
        let policy = Policy::default();
        let mut book = NonceBook::new();

        let e = fresh(&mut book, &key);
        assert_eq!(verify(&e, "edge-2", &key.public, &policy, &mut book, NOW), Err(AttestError::WrongNode));
        assert_eq!(verify(&e, "edge-1", &other.public, &policy, &mut book, NOW), Err(AttestError::BadSignature));
        assert_eq!(verify(&e, "edge-1", b"short", &policy, &mut book, NOW), Err(AttestError::BadSignature));
        // Neither failure burned the nonce.
        verify(&e, "edge-1", &key.public, &policy, &mut book, NOW).unwrap();

        let mut tampered = fresh(&mut book, &key);
        tampered.measurements.kernel_release = "6.6.6-evil".into();
        assert_eq!(verify(&tampered, "edge-1", &key.public, &policy, &mut book, NOW), Err(AttestError::BadSignature));

        let e = fresh(&mut book, &key);
        assert_eq!(verify(&e, "edge-1", &key.public, &policy, &mut book, NOW + NONCE_TTL_MS + 1), Err(AttestError::Expired));

        let nonce = book.issue("edge-1", NOW);
        let late = Evidence::sign(&key.pkcs8, "edge-1", &nonce, NOW - 120_000, measurements()).unwrap();
        let err = verify(&late, "edge-1", &key.public, &policy, &mut book, NOW).unwrap_err();
        assert_eq!(err, AttestError::ClockSkew { skew_ms: 120_000, max_ms: NONCE_TTL_MS });
        assert_eq!(err.code(), "clock_skew");

        let unknown = Evidence::sign(&key.pkcs8, "edge-1", &"ab".repeat(32), NOW, measurements()).unwrap();
        assert_eq!(verify(&unknown, "edge-1", &key.public, &policy, &mut book, NOW), Err(AttestError::UnknownNonce));

        let strict = Policy { allowed_binaries: vec![sha256_hex(b"another build")], ..Policy::default() };
        let e = fresh(&mut book, &key);
        let err = verify(&e, "edge-1", &key.public, &strict, &mut book, NOW).unwrap_err();
        assert_eq!(err, AttestError::BinaryNotAllowed { hash: sha256_hex(b"verge binary") });
        assert_eq!(err.code(), "binary_not_allowed");

        let old_kernels = Policy { allowed_kernels: vec!["5.15.".into()], ..Policy::default() };
        let e = fresh(&mut book, &key);
        let err = verify(&e, "edge-1", &key.public, &old_kernels, &mut book, NOW).unwrap_err();
        assert_eq!(err, AttestError::KernelNotAllowed { release: "6.1.0-18-amd64".into() });
        assert!(err.to_string().contains("6.1.0-18-amd64"));
    }

    #[test]
    fn bad_keys_and_bad_fields_are_refused_when_signing() {
        assert_eq!(Evidence::sign(b"not a key", "edge-1", &"ab".repeat(32), NOW, measurements()).unwrap_err().code(), "bad_key");
        let key = node_key();
        assert!(matches!(Evidence::sign(&key.pkcs8, "edge 1", &"ab".repeat(32), NOW, measurements()), Err(AttestError::Malformed(_))));
        assert!(matches!(Evidence::sign(&key.pkcs8, "edge-1", "abcd", NOW, measurements()), Err(AttestError::Malformed(_))));
    }

    #[test]
    fn nonces_belong_to_one_node_and_are_bounded() {
        let mut book = NonceBook::new();
        let a = book.issue("edge-1", NOW);
        assert_eq!(a.len(), 64);
        assert_eq!(book.take("edge-2", &a, NOW), Err(AttestError::WrongNode));
        book.take("edge-1", &a, NOW).unwrap();
        assert_eq!(book.take("edge-1", &a, NOW), Err(AttestError::Replayed));

        let many: Vec<String> = (0..10).map(|i| book.issue("edge-1", NOW + i)).collect();
        assert!(book.len() <= MAX_NONCES_PER_NODE);
        assert_eq!(book.take("edge-1", &many[0], NOW + 20), Err(AttestError::UnknownNonce));
        book.take("edge-1", &many[9], NOW + 20).unwrap();

        // Expired nonces are pruned, and a node that never returns is forgotten.
        for i in 0..200 {
            book.issue(&format!("node-{i}"), NOW);
        }
        book.issue("edge-9", NOW + NONCE_TTL_MS + 1);
        for i in 0..100 {
            book.issue("edge-9", NOW + 2 * NONCE_TTL_MS + i);
        }
        assert!(book.len() <= MAX_NONCES_PER_NODE, "book holds {}", book.len());
    }

    #[test]
    fn parse_is_strict() {
        let key = node_key();
        let mut book = NonceBook::new();
        let e = fresh(&mut book, &key);
        let mut v = serde_json::to_value(&e).unwrap();
        v["extra"] = serde_json::json!(1);
        assert!(Evidence::parse(&serde_json::to_vec(&v).unwrap()).is_err());

        let cases: [(&str, serde_json::Value); 6] = [
            ("nonce", serde_json::json!("AB".repeat(32))),
            ("signature", serde_json::json!("00")),
            ("node", serde_json::json!("x".repeat(254))),
            ("node", serde_json::json!("edge\n1")),
            ("issued_ms", serde_json::json!(-1)),
            ("measurements", serde_json::json!({"binary_sha256": "00"})),
        ];
        for (field, value) in cases {
            let mut v = serde_json::to_value(&e).unwrap();
            v[field] = value;
            assert!(matches!(Evidence::parse(&serde_json::to_vec(&v).unwrap()), Err(AttestError::Malformed(_))), "{field}");
        }
        let mut v = serde_json::to_value(&e).unwrap();
        v["measurements"]["boot_id"] = serde_json::json!("a\u{7}b");
        assert!(Evidence::parse(&serde_json::to_vec(&v).unwrap()).is_err());
        v["measurements"]["boot_id"] = serde_json::json!("b".repeat(MAX_FIELD_LEN + 1));
        assert!(Evidence::parse(&serde_json::to_vec(&v).unwrap()).is_err());

        let huge = vec![b' '; MAX_EVIDENCE_BYTES + 1];
        assert!(Evidence::parse(&huge).unwrap_err().to_string().contains("more than"));
    }

    #[test]
    fn any_changed_field_breaks_the_signature() {
        let key = node_key();
        let mut book = NonceBook::new();
        let e = fresh(&mut book, &key);
        let flip = |s: &str| format!("{}{}", if s.starts_with('0') { '1' } else { '0' }, &s[1..]);
        let mut changed = Vec::new();
        for f in 0..7 {
            let mut x = e.clone();
            let m = &mut x.measurements;
            match f {
                0 => x.issued_ms += 1,
                1 => m.binary_sha256 = flip(&m.binary_sha256),
                2 => m.kernel_release = flip(&m.kernel_release),
                3 => m.kernel_cmdline_sha256 = flip(&m.kernel_cmdline_sha256),
                4 => m.config_sha256 = flip(&m.config_sha256),
                5 => m.boot_id = flip(&m.boot_id),
                _ => x.signature = flip(&x.signature),
            }
            changed.push(Evidence::parse(&serde_json::to_vec(&x).unwrap()).unwrap());
        }
        for x in &changed {
            assert_eq!(verify(x, "edge-1", &key.public, &Policy::default(), &mut book, NOW), Err(AttestError::BadSignature));
        }
        verify(&e, "edge-1", &key.public, &Policy::default(), &mut book, NOW).unwrap();
    }

    #[test]
    fn signed_message_is_unambiguous() {
        let key = node_key();
        let mut book = NonceBook::new();
        let a = fresh(&mut book, &key);
        let mut b = a.clone();
        b.measurements.kernel_release = "6.1.0-18-amd6".into();
        b.measurements.boot_id = format!("4{}", a.measurements.boot_id);
        assert_ne!(a.signed_message(), b.signed_message());
        assert!(a.signed_message().starts_with(b"verge-attestation-v1\n"));
    }

    #[test]
    fn collect_measures_this_machine() {
        let dir = tempfile::tempdir().unwrap();
        let bin = dir.path().join("verge");
        let content = vec![7u8; 200_000];
        fs::write(&bin, &content).unwrap();
        let m = Measurements::collect(&bin, b"node_id: edge-1").unwrap();
        assert_eq!(m.binary_sha256, sha256_hex(&content));
        assert_eq!(m.config_sha256, sha256_hex(b"node_id: edge-1"));
        assert!(!m.kernel_release.is_empty() && !m.kernel_release.ends_with('\n'));
        assert!(!m.boot_id.is_empty());
        m.validate().unwrap();
        assert!(Measurements::collect(&dir.path().join("missing"), b"").is_err());
    }

    proptest! {
        #[test]
        fn parse_never_panics_on_bytes(bytes in proptest::collection::vec(any::<u8>(), 0..4096)) {
            let _ = Evidence::parse(&bytes);
        }

        #[test]
        fn mutated_evidence_never_verifies(edits in proptest::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..8)) {
            let key = node_key();
            let mut book = NonceBook::new();
            let e = fresh(&mut book, &key);
            let mut wire = serde_json::to_vec(&e).unwrap();
            for (at, byte) in edits {
                let i = at.index(wire.len());
                wire[i] = byte;
            }
            if let Ok(parsed) = Evidence::parse(&wire) {
                let result = verify(&parsed, "edge-1", &key.public, &Policy::default(), &mut book, NOW);
                prop_assert_eq!(result.is_ok(), parsed == e);
            }
        }
    }
}
