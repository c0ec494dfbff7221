//! A node's security standing, from what the server knows of it: the facts
//! compliance packs check, its trust score and whether it is quarantined.
//! Pure functions of (record, soft state, policy, now).

use verge_security::compliance::{evaluate, Facts, Pack};
use verge_security::trust::{score, AttestationState, TrustInputs, TrustScore};
use verge_store::NodeRecord;

use crate::soft::NodeSoft;

/// What the security decisions depend on.
#[derive(Debug, Clone)]
pub struct TrustPolicy {
    /// The server speaks TLS and requires node certificates (and so attestation).
    pub tls: bool,
    /// Nodes below this score take no workloads.
    pub min_trust: u8,
    /// Attestations older than this count half.
    pub max_attestation_age_ms: u64,
    /// Whether placement needs trust scores (a minimum is set somewhere).
    pub needed: bool,
}

const DAY_MS: f64 = 86_400_000.0;

/// The built-in compliance packs, parsed once.
pub fn packs() -> &'static [Pack] {
    static PACKS: std::sync::OnceLock<Vec<Pack>> = std::sync::OnceLock::new();
    PACKS.get_or_init(Pack::builtins)
}

/// The facts compliance rules check for one node.
pub fn facts(rec: &NodeRecord, soft: Option<&NodeSoft>, policy: &TrustPolicy, now_ms: u64) -> Facts {
    let mut f = Facts::new();
    let cert = soft.and_then(|s| s.cert.as_ref());
    f.insert("tls".into(), policy.tls.into());
    f.insert("mtls".into(), (policy.tls && cert.is_some()).into());
    f.insert("audit".into(), true.into());
    if let Some(s) = soft {
        f.insert("encryption_at_rest".into(), s.posture.encryption_at_rest.into());
        f.insert("attested".into(), (s.attested_ms.is_some() && s.attest_failure.is_none()).into());
        if let Some(created) = s.posture.data_key_created_ms {
            f.insert("data_key_age_days".into(), (now_ms.saturating_sub(created) as f64 / DAY_MS).into());
        }
    }
    if let Some(c) = cert {
        let life = c.not_after_ms.saturating_sub(c.not_before_ms + verge_security::pki::NOT_BEFORE_SLACK_MS).max(1);
        f.insert("cert_life_left_percent".into(), (100.0 * c.not_after_ms.saturating_sub(now_ms) as f64 / life as f64).round().into());
    }
    if let Some(r) = rec.spec.labels.get("data-residency") {
        f.insert("label.data-residency".into(), r.clone().into());
    }
    f
}

/// The node's trust score and the reasons for every point it lost.
pub fn trust(rec: &NodeRecord, soft: Option<&NodeSoft>, policy: &TrustPolicy, now_ms: u64) -> TrustScore {
    let facts = facts(rec, soft, policy, now_ms);
    let (mut passed, mut total) = (0, 0);
    for pack in packs() {
        for finding in evaluate(pack, rec.spec.id.as_str(), &facts) {
            total += 1;
            passed += u32::from(finding.passed);
        }
    }
    let attestation = match soft {
        Some(NodeSoft { attest_failure: Some(why), .. }) => AttestationState::Failed { reason: why.clone() },
        Some(NodeSoft { attested_ms: Some(t), .. }) => AttestationState::Passed { age_ms: now_ms.saturating_sub(*t) },
        _ => AttestationState::Never,
    };
    let inputs = TrustInputs {
        identity: soft.is_some_and(|s| s.cert.is_some()),
        attestation,
        compliance_passed: passed,
        compliance_total: total,
        failed_auths: soft.map_or(0, |s| s.failed_auths),
        anomalies: soft.map_or(0, |s| s.anomalies),
    };
    score(&inputs, policy.max_attestation_age_ms)
}

/// Why the node may run no workloads, if it may not: its last attestation
/// failed or its trust is below the minimum. Its workloads move elsewhere.
pub fn quarantine(rec: &NodeRecord, soft: Option<&NodeSoft>, policy: &TrustPolicy, now_ms: u64) -> Option<String> {
    if !policy.tls {
        return None;
    }
    if let Some(why) = soft.and_then(|s| s.attest_failure.as_ref()) {
        return Some(format!("attestation failed: {why}"));
    }
    if policy.min_trust == 0 {
        return None;
    }
    let t = trust(rec, soft, policy, now_ms);
    (t.score < policy.min_trust).then(|| format!("trust {} below the minimum {}: {}", t.score, policy.min_trust, t.reasons.join("; ")))
}

/// Whether the node has proved what it runs since it connected (always
/// true without TLS, where there is no node key to sign with). Nodes that
/// have not take no new work but keep what they run: after a server
/// restart every node is unattested until it reconnects.
pub fn attested(soft: Option<&NodeSoft>, policy: &TrustPolicy) -> bool {
    !policy.tls || soft.is_some_and(|s| s.attested_ms.is_some())
}
