//! Compliance packs: declarative YAML lists of controls, each a check on
//! one fact the server reports per node, so that adding or tuning a
//! control is an edit to a file rather than to code.
//!
//! A check is written as a map with `fact` and exactly one of `equals`
//! (any YAML value), `at_most` / `at_least` (a number) or `present: true`
//! (the fact is reported, not null and not an empty string):
//!
//! ```yaml
//! check: { fact: tls, equals: true }
//! check: { fact: data_key_age_days, at_most: 90 }
//! ```
//!
//! Facts the server supplies: `tls`, `mtls`, `encryption_at_rest`,
//! `attested`, `audit` (booleans), `data_key_age_days`, `cert_life_left_percent`,
//! `trust` (numbers) and `label.<name>` for each node label (strings).
//! Three packs are built in: `iso27001`, `soc2` and `hipaa`.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

use serde::{Deserialize, Serialize};
use serde_json::Value;

const BUILTIN: [(&str, &str); 3] = [
    ("iso27001", include_str!("../packs/iso27001.yaml")),
    ("soc2", include_str!("../packs/soc2.yaml")),
    ("hipaa", include_str!("../packs/hipaa.yaml")),
];

/// The facts reported for one subject (a node), by name.
pub type Facts = BTreeMap<String, Value>;

/// Why a pack was refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ComplianceError {
    /// The YAML does not parse into a pack.
    #[error("pack does not parse: {0}")]
    Parse(String),
    /// The pack parses but breaks a rule (empty or duplicate ids, empty titles, …).
    #[error("invalid pack: {0}")]
    Invalid(String),
}

/// A named set of controls, e.g. the ISO 27001 controls Verge can check.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Pack {
    /// Short machine name (`iso27001`).
    pub name: String,
    /// Human title.
    pub title: String,
    /// The controls, in report order.
    pub controls: Vec<Control>,
}

/// One control of a pack and the check that decides it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Control {
    /// The standard's identifier (`A.8.24`, `CC6.1`, `164.312(b)`), unique in its pack.
    pub id: String,
    /// What the control asks for.
    pub title: String,
    /// How Verge decides it.
    pub check: Check,
    /// What to do when it fails.
    pub remediation: String,
}

/// A test on one fact.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(try_from = "RawCheck", into = "RawCheck")]
pub enum Check {
    /// The fact equals `value` (numbers compare by value: 1 equals 1.0).
    Equals {
        /// The fact's name.
        fact: String,
        /// The value it must have.
        value: Value,
    },
    /// The fact is a number no greater than `limit`.
    AtMost {
        /// The fact's name.
        fact: String,
        /// The highest value allowed.
        limit: f64,
    },
    /// The fact is a number no less than `limit`.
    AtLeast {
        /// The fact's name.
        fact: String,
        /// The lowest value allowed.
        limit: f64,
    },
    /// The fact is reported, not null and not an empty string.
    Present {
        /// The fact's name.
        fact: String,
    },
}

/// The written form of a [`Check`].
#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawCheck {
    fact: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    equals: Option<Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    at_most: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    at_least: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    present: Option<bool>,
}

impl TryFrom<RawCheck> for Check {
    type Error = String;

    fn try_from(raw: RawCheck) -> Result<Check, String> {
        let fact = raw.fact;
        if fact.trim().is_empty() {
            return Err("check has an empty fact name".into());
        }
        let finite = |what: &str, n: f64| if n.is_finite() { Ok(n) } else { Err(format!("{what} for {fact} must be a finite number")) };
        match (raw.equals, raw.at_most, raw.at_least, raw.present) {
            (Some(value), None, None, None) => Ok(Check::Equals { fact, value }),
            (None, Some(n), None, None) => Ok(Check::AtMost { limit: finite("at_most", n)?, fact }),
            (None, None, Some(n), None) => Ok(Check::AtLeast { limit: finite("at_least", n)?, fact }),
            (None, None, None, Some(true)) => Ok(Check::Present { fact }),
            (None, None, None, Some(false)) => Err(format!("check on {fact}: present must be true")),
            _ => Err(format!("check on {fact} needs exactly one of equals, at_most, at_least, present")),
        }
    }
}

impl From<Check> for RawCheck {
    fn from(check: Check) -> RawCheck {
        let raw = |fact| RawCheck { fact, equals: None, at_most: None, at_least: None, present: None };
        match check {
            Check::Equals { fact, value } => RawCheck { equals: Some(value), ..raw(fact) },
            Check::AtMost { fact, limit } => RawCheck { at_most: Some(limit), ..raw(fact) },
            Check::AtLeast { fact, limit } => RawCheck { at_least: Some(limit), ..raw(fact) },
            Check::Present { fact } => RawCheck { present: Some(true), ..raw(fact) },
        }
    }
}

impl Check {
    /// The fact this check reads.
    pub fn fact(&self) -> &str {
        match self {
            Check::Equals { fact, .. } | Check::AtMost { fact, .. } | Check::AtLeast { fact, .. } | Check::Present { fact } => fact,
        }
    }

    /// Whether `facts` pass, with a sentence saying what was found.
    fn run(&self, facts: &Facts) -> (bool, String) {
        let name = self.fact();
        let Some(value) = facts.get(name) else { return (false, format!("fact {name} not reported")) };
        match self {
            Check::Equals { value: want, .. } => {
                let ok = same(value, want);
                (ok, if ok { format!("{name} is {value}") } else { format!("{name} is {value}, expected {want}") })
            }
            Check::AtMost { limit, .. } => bound(name, value, *limit, "at most", |n| n <= *limit),
            Check::AtLeast { limit, .. } => bound(name, value, *limit, "at least", |n| n >= *limit),
            Check::Present { .. } => match value {
                Value::Null => (false, format!("{name} is null")),
                Value::String(s) if s.trim().is_empty() => (false, format!("{name} is empty")),
                _ => (true, format!("{name} is {value}")),
            },
        }
    }
}

fn same(a: &Value, b: &Value) -> bool {
    match (a.as_f64(), b.as_f64()) {
        (Some(x), Some(y)) => x == y,
        _ => a == b,
    }
}

fn bound(name: &str, value: &Value, limit: f64, relation: &str, ok: impl Fn(f64) -> bool) -> (bool, String) {
    let limit = Num(limit);
    match value.as_f64() {
        Some(n) if ok(n) => (true, format!("{name} is {} ({relation} {limit})", Num(n))),
        Some(n) => (false, format!("{name} is {}, expected {relation} {limit}", Num(n))),
        None => (false, format!("{name} is {value}, expected a number {relation} {limit}")),
    }
}

/// Displays whole numbers without a trailing `.0`.
struct Num(f64);

impl fmt::Display for Num {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.0.fract() == 0.0 && self.0.abs() < 1e15 {
            write!(f, "{}", self.0 as i64)
        } else {
            write!(f, "{}", self.0)
        }
    }
}

impl Pack {
    /// Reads a pack from YAML and checks it: non-empty name, title, control
    /// ids, titles and remediations; unique control ids; at least one control.
    pub fn parse(yaml: &str) -> Result<Pack, ComplianceError> {
        let pack: Pack = serde_yaml::from_str(yaml).map_err(|e| ComplianceError::Parse(e.to_string()))?;
        let invalid = |why: String| Err(ComplianceError::Invalid(why));
        if pack.name.trim().is_empty() || pack.title.trim().is_empty() {
            return invalid("the pack needs a name and a title".into());
        }
        if pack.controls.is_empty() {
            return invalid(format!("pack {} has no controls", pack.name));
        }
        let mut seen = BTreeSet::new();
        for c in &pack.controls {
            if c.id.trim().is_empty() {
                return invalid(format!("pack {} has a control without an id", pack.name));
            }
            if c.title.trim().is_empty() || c.remediation.trim().is_empty() {
                return invalid(format!("control {} needs a title and a remediation", c.id));
            }
            if !seen.insert(c.id.as_str()) {
                return invalid(format!("control id {} appears twice", c.id));
            }
        }
        Ok(pack)
    }

    /// The built-in pack called `name` (`iso27001`, `soc2`, `hipaa`).
    pub fn builtin(name: &str) -> Option<Pack> {
        BUILTIN.iter().find(|(n, _)| *n == name).map(|(_, yaml)| builtin_pack(yaml))
    }

    /// Every built-in pack.
    pub fn builtins() -> Vec<Pack> {
        BUILTIN.iter().map(|(_, yaml)| builtin_pack(yaml)).collect()
    }
}

fn builtin_pack(yaml: &str) -> Pack {
    // The built-in packs are compiled in and parsed by the tests.
    Pack::parse(yaml).expect("built-in compliance packs are valid")
}

/// The outcome of one control for one subject.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Finding {
    /// The pack's name.
    pub pack: String,
    /// The control's id.
    pub control: String,
    /// The control's title.
    pub title: String,
    /// What was evaluated (a node id).
    pub subject: String,
    /// Whether the control passed.
    pub passed: bool,
    /// What was found (`tls is false, expected true`, `fact tls not reported`).
    pub detail: String,
    /// What to do about a failure.
    pub remediation: String,
}

/// Evaluates every control of `pack` against `subject`'s `facts`, in the
/// pack's order. A fact that was not reported fails its control.
pub fn evaluate(pack: &Pack, subject: &str, facts: &Facts) -> Vec<Finding> {
    pack.controls
        .iter()
        .map(|c| {
            let (passed, detail) = c.check.run(facts);
            Finding {
                pack: pack.name.clone(),
                control: c.id.clone(),
                title: c.title.clone(),
                subject: subject.to_string(),
                passed,
                detail,
                remediation: c.remediation.clone(),
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn compliant() -> Facts {
        [
            ("tls", json!(true)),
            ("mtls", json!(true)),
            ("encryption_at_rest", json!(true)),
            ("attested", json!(true)),
            ("audit", json!(true)),
            ("data_key_age_days", json!(12)),
            ("cert_life_left_percent", json!(60)),
            ("label.data-residency", json!("eu-west")),
            ("trust", json!(95)),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect()
    }

    #[test]
    fn every_builtin_parses_and_is_found_by_name() {
        let packs = Pack::builtins();
        assert_eq!(packs.iter().map(|p| p.name.as_str()).collect::<Vec<_>>(), ["iso27001", "soc2", "hipaa"]);
        for p in &packs {
            assert!(p.controls.len() >= 6, "{}", p.name);
            assert_eq!(Pack::builtin(&p.name).as_ref(), Some(p));
        }
        assert!(Pack::builtin("pci").is_none());
        let iso = Pack::builtin("iso27001").unwrap();
        assert!(iso.controls.iter().any(|c| c.id == "A.8.24" && c.title == "Use of cryptography"));
    }

    #[test]
    fn a_compliant_node_passes_everything() {
        for pack in Pack::builtins() {
            for f in evaluate(&pack, "edge-1", &compliant()) {
                assert!(f.passed, "{} {}: {}", f.pack, f.control, f.detail);
                assert_eq!(f.subject, "edge-1");
            }
        }
    }

    #[test]
    fn missing_and_wrong_facts_fail_with_the_right_detail() {
        let mut facts = compliant();
        facts.insert("tls".into(), json!(false));
        facts.insert("data_key_age_days".into(), json!(120));
        facts.insert("cert_life_left_percent".into(), json!("soon"));
        facts.insert("label.data-residency".into(), json!(""));
        facts.remove("audit");
        let findings = evaluate(&Pack::builtin("iso27001").unwrap(), "edge-1", &facts);
        let detail = |fact: &str| {
            let f = findings.iter().find(|f| !f.passed && f.detail.contains(fact)).unwrap_or_else(|| panic!("no failure on {fact}"));
            assert!(!f.remediation.is_empty());
            f.detail.clone()
        };
        assert_eq!(detail("tls"), "tls is false, expected true");
        assert_eq!(detail("data_key_age_days"), "data_key_age_days is 120, expected at most 90");
        assert_eq!(detail("cert_life_left_percent"), "cert_life_left_percent is \"soon\", expected a number at least 20");
        assert_eq!(detail("label.data-residency"), "label.data-residency is empty");
        assert_eq!(detail("audit"), "fact audit not reported");
        assert_eq!(findings.iter().filter(|f| !f.passed).count(), 5);
    }

    #[test]
    fn checks_compare_as_documented() {
        let facts: Facts = [("n".to_string(), json!(1)), ("s".to_string(), json!(null))].into_iter().collect();
        assert!(Check::Equals { fact: "n".into(), value: json!(1.0) }.run(&facts).0);
        assert_eq!(Check::AtLeast { fact: "n".into(), limit: 1.5 }.run(&facts), (false, "n is 1, expected at least 1.5".into()));
        assert_eq!(Check::AtMost { fact: "n".into(), limit: 1.0 }.run(&facts), (true, "n is 1 (at most 1)".into()));
        assert_eq!(Check::Present { fact: "s".into() }.run(&facts), (false, "s is null".into()));
    }

    #[test]
    fn bad_packs_are_refused() {
        let ok = "name: p\ntitle: P\ncontrols:\n  - {id: C1, title: T, remediation: R, check: {fact: tls, equals: true}}\n";
        let pack = Pack::parse(ok).unwrap();
        assert_eq!(Pack::parse(&serde_yaml::to_string(&pack).unwrap()).unwrap(), pack);
        let cases = [
            ok.replace("{fact: tls, equals: true}", "{fact: tls, equals: true, at_most: 3}"),
            ok.replace("{fact: tls, equals: true}", "{fact: tls}"),
            ok.replace("{fact: tls, equals: true}", "{fact: tls, present: false}"),
            ok.replace("{fact: tls, equals: true}", "{fact: '', present: true}"),
            ok.replace("{fact: tls, equals: true}", "{fact: tls, at_most: .nan}"),
            ok.replace("{fact: tls, equals: true}", "{fact: tls, equal: true}"),
            ok.replace("id: C1", "id: ''"),
            ok.replace("title: P", "title: ''"),
            ok.replace("remediation: R", "remediation: ' '"),
            ok.replace("name: p\n", "name: p\nextra: 1\n"),
            format!("{ok}  - {{id: C1, title: T2, remediation: R, check: {{fact: mtls, equals: true}}}}\n"),
            "name: p\ntitle: P\ncontrols: []\n".to_string(),
            "not: [valid".to_string(),
        ];
        for yaml in &cases {
            assert!(Pack::parse(yaml).is_err(), "accepted:\n{yaml}");
        }
        assert!(Pack::parse(&cases[10]).unwrap_err().to_string().contains("appears twice"));
    }
}
