//! A node's trust score, 0 to 100, so that placement and policy can treat
//! a node by how much evidence backs it rather than by a yes/no flag.
//!
//! Weights: identity 30 (a valid mTLS identity), attestation 30 (half when
//! the last pass is older than the allowed age, none when it failed or
//! never happened), compliance 20 in proportion to controls passed (10
//! when there is no compliance data), behaviour 20 less 5 per failed
//! authentication and 5 per anomaly. Every point withheld comes with a
//! reason a person can read.

use serde::{Deserialize, Serialize};

const IDENTITY: u64 = 30;
const ATTESTATION: u64 = 30;
const COMPLIANCE: u64 = 20;
const COMPLIANCE_UNKNOWN: u64 = 10;
const BEHAVIOUR: u64 = 20;
const PER_FAILED_AUTH: u64 = 5;
const PER_ANOMALY: u64 = 5;

/// The outcome of a node's most recent attestation.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "state", rename_all = "snake_case")]
pub enum AttestationState {
    /// The last attestation passed, `age_ms` ago.
    Passed {
        /// Time since that attestation.
        age_ms: u64,
    },
    /// The last attestation failed.
    Failed {
        /// Why it failed.
        reason: String,
    },
    /// The node has never attested.
    Never,
}

/// Everything the score is computed from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TrustInputs {
    /// Whether the node presented a valid mTLS identity.
    pub identity: bool,
    /// The node's latest attestation.
    pub attestation: AttestationState,
    /// Compliance controls passed.
    pub compliance_passed: u32,
    /// Compliance controls evaluated.
    pub compliance_total: u32,
    /// Failed authentications in the scoring window.
    pub failed_auths: u32,
    /// Anomalies detected in the scoring window.
    pub anomalies: u32,
}

/// A trust score with the reason for every point withheld.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TrustScore {
    /// 0 (no trust) to 100 (full trust).
    pub score: u8,
    /// One human-readable line per deduction; empty at 100.
    pub reasons: Vec<String>,
}

/// Scores `inputs`; a passed attestation older than
/// `max_attestation_age_ms` counts half.
pub fn score(inputs: &TrustInputs, max_attestation_age_ms: u64) -> TrustScore {
    let mut reasons = Vec::new();
    let mut total = 0u64;

    if inputs.identity {
        total += IDENTITY;
    } else {
        reasons.push(format!("no valid mTLS identity (-{IDENTITY})"));
    }

    match &inputs.attestation {
        AttestationState::Passed { age_ms } if *age_ms <= max_attestation_age_ms => total += ATTESTATION,
        AttestationState::Passed { age_ms } => {
            total += ATTESTATION / 2;
            reasons.push(format!(
                "attestation is stale: {} s old, limit {} s (-{})",
                age_ms / 1000,
                max_attestation_age_ms / 1000,
                ATTESTATION - ATTESTATION / 2
            ));
        }
        AttestationState::Failed { reason } => reasons.push(format!("attestation failed: {reason} (-{ATTESTATION})")),
        AttestationState::Never => reasons.push(format!("never attested (-{ATTESTATION})")),
    }

    let total_controls = u64::from(inputs.compliance_total);
    if total_controls == 0 {
        total += COMPLIANCE_UNKNOWN;
        reasons.push(format!("no compliance data (-{})", COMPLIANCE - COMPLIANCE_UNKNOWN));
    } else {
        let passed = u64::from(inputs.compliance_passed).min(total_controls);
        let points = COMPLIANCE * passed / total_controls;
        total += points;
        if passed < total_controls {
            reasons.push(format!("{} of {total_controls} compliance controls failed (-{})", total_controls - passed, COMPLIANCE - points));
        }
    }

    let mut behaviour = BEHAVIOUR;
    let auth_loss = (u64::from(inputs.failed_auths) * PER_FAILED_AUTH).min(behaviour);
    behaviour -= auth_loss;
    if inputs.failed_auths > 0 {
        reasons.push(format!("{} failed authentication{} ({})", inputs.failed_auths, plural(inputs.failed_auths), deduction(auth_loss)));
    }
    let anomaly_loss = (u64::from(inputs.anomalies) * PER_ANOMALY).min(behaviour);
    behaviour -= anomaly_loss;
    if inputs.anomalies > 0 {
        let noun = if inputs.anomalies == 1 { "anomaly" } else { "anomalies" };
        reasons.push(format!("{} {noun} detected ({})", inputs.anomalies, deduction(anomaly_loss)));
    }
    total += behaviour;

    TrustScore { score: u8::try_from(total.min(100)).unwrap_or(100), reasons }
}

/// `-N`, or a note that behaviour points were already used up.
fn deduction(points: u64) -> String {
    if points == 0 {
        "no behaviour points left to deduct".to_string()
    } else {
        format!("-{points}")
    }
}

fn plural(n: u32) -> &'static str {
    if n == 1 {
        ""
    } else {
        "s"
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const HOUR: u64 = 3_600_000;

    fn perfect() -> TrustInputs {
        TrustInputs {
            identity: true,
            attestation: AttestationState::Passed { age_ms: 1000 },
            compliance_passed: 8,
            compliance_total: 8,
            failed_auths: 0,
            anomalies: 0,
        }
    }

    #[test]
    fn a_perfect_node_scores_100_without_reasons() {
        assert_eq!(score(&perfect(), HOUR), TrustScore { score: 100, reasons: vec![] });
    }

    #[test]
    fn each_deduction_is_explained() {
        let s = score(&TrustInputs { identity: false, ..perfect() }, HOUR);
        assert_eq!((s.score, s.reasons.as_slice()), (70, ["no valid mTLS identity (-30)".to_string()].as_slice()));

        let s = score(&TrustInputs { attestation: AttestationState::Passed { age_ms: 2 * HOUR }, ..perfect() }, HOUR);
        assert_eq!(s.score, 85);
        assert_eq!(s.reasons, ["attestation is stale: 7200 s old, limit 3600 s (-15)"]);

        let s = score(&TrustInputs { attestation: AttestationState::Failed { reason: "binary not allowed".into() }, ..perfect() }, HOUR);
        assert_eq!((s.score, s.reasons[0].as_str()), (70, "attestation failed: binary not allowed (-30)"));

        let s = score(&TrustInputs { attestation: AttestationState::Never, ..perfect() }, HOUR);
        assert_eq!((s.score, s.reasons[0].as_str()), (70, "never attested (-30)"));

        let s = score(&TrustInputs { compliance_passed: 0, compliance_total: 0, ..perfect() }, HOUR);
        assert_eq!((s.score, s.reasons[0].as_str()), (90, "no compliance data (-10)"));

        let s = score(&TrustInputs { compliance_passed: 6, compliance_total: 8, ..perfect() }, HOUR);
        assert_eq!((s.score, s.reasons[0].as_str()), (95, "2 of 8 compliance controls failed (-5)"));

        let s = score(&TrustInputs { failed_auths: 1, anomalies: 2, ..perfect() }, HOUR);
        assert_eq!(s.score, 85);
        assert_eq!(s.reasons, ["1 failed authentication (-5)", "2 anomalies detected (-10)"]);
    }

    #[test]
    fn behaviour_floors_at_zero_and_nothing_overflows() {
        let s = score(&TrustInputs { failed_auths: u32::MAX, anomalies: u32::MAX, compliance_passed: u32::MAX, ..perfect() }, HOUR);
        assert_eq!(s.score, 80);
        assert_eq!(
            s.reasons,
            [
                format!("{} failed authentications (-20)", u32::MAX),
                format!("{} anomalies detected (no behaviour points left to deduct)", u32::MAX)
            ]
        );

        let worst = TrustInputs {
            identity: false,
            attestation: AttestationState::Never,
            compliance_passed: 0,
            compliance_total: 5,
            failed_auths: 9,
            anomalies: 9,
        };
        let s = score(&worst, HOUR);
        assert_eq!(s.score, 0);
        assert_eq!(s.reasons.len(), 5);
    }

    #[test]
    fn serializes_for_the_api() {
        let json = serde_json::to_value(AttestationState::Passed { age_ms: 5 }).unwrap();
        assert_eq!(json, serde_json::json!({"state": "passed", "age_ms": 5}));
        let json = serde_json::to_value(score(&perfect(), HOUR)).unwrap();
        assert_eq!(json, serde_json::json!({"score": 100, "reasons": []}));
    }
}
