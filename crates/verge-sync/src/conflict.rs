//! Ordering and conflicts: hybrid logical clocks stamp every change,
//! version vectors tell concurrent writes from ordered ones, and a
//! strategy decides what survives when two nodes changed the same file.

use std::cmp::Ordering;
use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// A hybrid logical clock timestamp: wall-clock milliseconds plus a
/// counter that orders events within (or behind) one millisecond, and the
/// node that stamped it as the last tie-break.
#[derive(Clone, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Hlc {
    /// Physical part, ms since the epoch.
    pub wall_ms: u64,
    /// Logical part.
    pub counter: u32,
    /// The node that issued it.
    pub node: String,
}

/// One node's hybrid logical clock.
#[derive(Clone, Debug)]
pub struct HlcClock {
    last: Hlc,
}

impl HlcClock {
    /// A clock for `node`.
    pub fn new(node: &str) -> Self {
        HlcClock { last: Hlc { wall_ms: 0, counter: 0, node: node.to_string() } }
    }

    /// Stamps a local event at physical time `now_ms`: never goes backwards,
    /// even when the wall clock does.
    pub fn now(&mut self, now_ms: u64) -> Hlc {
        if now_ms > self.last.wall_ms {
            self.last.wall_ms = now_ms;
            self.last.counter = 0;
        } else {
            self.last.counter += 1;
        }
        self.last.clone()
    }

    /// Merges a timestamp received from another node, so every later local
    /// event orders after it.
    pub fn observe(&mut self, remote: &Hlc, now_ms: u64) -> Hlc {
        let wall = now_ms.max(self.last.wall_ms).max(remote.wall_ms);
        self.last.counter = match (wall == self.last.wall_ms, wall == remote.wall_ms) {
            (true, true) => self.last.counter.max(remote.counter) + 1,
            (true, false) => self.last.counter + 1,
            (false, true) => remote.counter + 1,
            (false, false) => 0,
        };
        self.last.wall_ms = wall;
        self.last.clone()
    }
}

/// Per-node update counters; one vector per file version.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct VersionVector(pub BTreeMap<String, u64>);

/// How two version vectors relate.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Causality {
    /// Same history.
    Equal,
    /// The left one is an ancestor of the right one.
    Before,
    /// The left one descends from the right one.
    After,
    /// Neither saw the other's writes: a conflict.
    Concurrent,
}

impl VersionVector {
    /// Records a write by `node`.
    pub fn bump(&mut self, node: &str) {
        *self.0.entry(node.to_string()).or_default() += 1;
    }

    /// The element-wise maximum: a version that has seen both.
    pub fn merged(&self, other: &Self) -> Self {
        let mut out = self.clone();
        for (k, v) in &other.0 {
            let e = out.0.entry(k.clone()).or_default();
            *e = (*e).max(*v);
        }
        out
    }

    /// How `self` relates to `other`.
    pub fn compare(&self, other: &Self) -> Causality {
        let (mut less, mut more) = (false, false);
        for k in self.0.keys().chain(other.0.keys()) {
            let (a, b) = (self.0.get(k).copied().unwrap_or(0), other.0.get(k).copied().unwrap_or(0));
            match a.cmp(&b) {
                Ordering::Less => less = true,
                Ordering::Greater => more = true,
                Ordering::Equal => {}
            }
        }
        match (less, more) {
            (false, false) => Causality::Equal,
            (true, false) => Causality::Before,
            (false, true) => Causality::After,
            (true, true) => Causality::Concurrent,
        }
    }
}

/// How to settle two versions of one file.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "kebab-case")]
pub enum Strategy {
    /// The version with the later HLC stamp wins.
    #[default]
    LatestWins,
    /// The sender's version wins.
    SourceWins,
    /// The receiver's version stays.
    TargetWins,
    /// Text: three-way line merge against the common base, with conflict
    /// markers where both changed the same lines; binary: both kept side by side.
    Merge,
    /// Ordered histories resolve to the descendant; concurrent ones are
    /// kept side by side for a person to decide.
    VersionVector,
}

impl std::str::FromStr for Strategy {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        serde_json::from_value(serde_json::Value::String(s.to_string()))
            .map_err(|_| format!("unknown strategy {s:?}: latest-wins, source-wins, target-wins, merge, version-vector"))
    }
}

/// One side's version of a file.
#[derive(Clone, Debug)]
pub struct Side<'a> {
    /// Content.
    pub data: &'a [u8],
    /// When it was written.
    pub stamp: Hlc,
    /// Its history.
    pub vv: VersionVector,
}

/// What survives.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Resolution {
    /// Take the source's version.
    Source,
    /// Keep the target's version.
    Target,
    /// Write this merged content; `clean` is false when it holds conflict markers.
    Merged {
        /// The content.
        data: Vec<u8>,
        /// No overlapping edits.
        clean: bool,
    },
    /// Keep the target's version and store the source's next to it.
    Both,
}

/// Settles `source` against `target` (with their common `base`, if known).
pub fn resolve(strategy: Strategy, base: Option<&[u8]>, source: &Side<'_>, target: &Side<'_>) -> Resolution {
    if source.data == target.data {
        return Resolution::Target;
    }
    match strategy {
        Strategy::SourceWins => Resolution::Source,
        Strategy::TargetWins => Resolution::Target,
        Strategy::LatestWins => {
            if source.stamp > target.stamp {
                Resolution::Source
            } else {
                Resolution::Target
            }
        }
        Strategy::VersionVector => match source.vv.compare(&target.vv) {
            Causality::After => Resolution::Source,
            Causality::Before | Causality::Equal => Resolution::Target,
            Causality::Concurrent => Resolution::Both,
        },
        Strategy::Merge => {
            let texts = (base.map(std::str::from_utf8), std::str::from_utf8(target.data), std::str::from_utf8(source.data));
            match texts {
                (Some(Ok(b)), Ok(ours), Ok(theirs)) => match diffy::merge(b, ours, theirs) {
                    Ok(m) => Resolution::Merged { data: m.into_bytes(), clean: true },
                    Err(m) => Resolution::Merged { data: m.into_bytes(), clean: false },
                },
                _ => Resolution::Both,
            }
        }
    }
}

/// The name the source's version gets when both are kept.
pub fn side_by_side_name(path: &str, node: &str) -> String {
    let safe: String = node.chars().map(|c| if c.is_ascii_alphanumeric() || c == '-' { c } else { '_' }).collect();
    format!("{path}.conflict-{safe}")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stamp(ms: u64, node: &str) -> Hlc {
        Hlc { wall_ms: ms, counter: 0, node: node.into() }
    }

    #[test]
    fn hlc_is_monotonic_and_follows_remote_clocks() {
        let mut a = HlcClock::new("a");
        let t1 = a.now(1000);
        let t2 = a.now(900); // the wall clock stepped back
        assert!(t2 > t1);
        let remote = Hlc { wall_ms: 5000, counter: 7, node: "b".into() };
        let t3 = a.observe(&remote, 1000);
        assert!(t3 > remote);
        assert!(a.now(1001) > t3);
    }

    #[test]
    fn version_vectors_detect_concurrency() {
        let mut base = VersionVector::default();
        base.bump("a");
        let (mut x, mut y) = (base.clone(), base.clone());
        x.bump("a");
        y.bump("b");
        assert_eq!(base.compare(&x), Causality::Before);
        assert_eq!(x.compare(&base), Causality::After);
        assert_eq!(x.compare(&y), Causality::Concurrent);
        let m = x.merged(&y);
        assert_eq!(m.compare(&x), Causality::After);
        assert_eq!(m.compare(&m.clone()), Causality::Equal);
    }

    #[test]
    fn strategies_pick_as_named() {
        let mut vs = VersionVector::default();
        vs.bump("src");
        let vt = VersionVector::default();
        let s = Side { data: b"source\n", stamp: stamp(2, "src"), vv: vs.clone() };
        let t = Side { data: b"target\n", stamp: stamp(1, "dst"), vv: vt.clone() };
        assert_eq!(resolve(Strategy::LatestWins, None, &s, &t), Resolution::Source);
        assert_eq!(resolve(Strategy::TargetWins, None, &s, &t), Resolution::Target);
        assert_eq!(resolve(Strategy::SourceWins, None, &t, &s), Resolution::Source);
        assert_eq!(resolve(Strategy::VersionVector, None, &s, &t), Resolution::Source);
        let mut vt2 = vt.clone();
        vt2.bump("dst");
        let t2 = Side { vv: vt2, ..t.clone() };
        assert_eq!(resolve(Strategy::VersionVector, None, &s, &t2), Resolution::Both);
        assert_eq!("merge".parse::<Strategy>().unwrap(), Strategy::Merge);
        assert!("newest".parse::<Strategy>().is_err());
    }

    #[test]
    fn merge_combines_text_and_marks_overlaps() {
        let base = b"a\nb\nc\nd\n";
        let src = Side { data: b"A\nb\nc\nd\n", stamp: stamp(1, "s"), vv: Default::default() };
        let dst = Side { data: b"a\nb\nc\nD\n", stamp: stamp(1, "t"), vv: Default::default() };
        assert_eq!(resolve(Strategy::Merge, Some(base), &src, &dst), Resolution::Merged { data: b"A\nb\nc\nD\n".to_vec(), clean: true });
        let clash = Side { data: b"x\nb\nc\nd\n", ..dst.clone() };
        match resolve(Strategy::Merge, Some(base), &src, &clash) {
            Resolution::Merged { data, clean: false } => assert!(String::from_utf8(data).unwrap().contains("<<<<<<<")),
            other => panic!("{other:?}"),
        }
        let bin = Side { data: &[0xff, 0xfe, 0], ..dst };
        assert_eq!(resolve(Strategy::Merge, Some(base), &src, &bin), Resolution::Both);
        assert_eq!(side_by_side_name("a/b.txt", "edge 1"), "a/b.txt.conflict-edge_1");
    }
}
