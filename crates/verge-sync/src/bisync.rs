//! Bidirectional sync planning: given both sides' trees and the state they
//! agreed on at the last sync, decide per path who changed what. Pure: the
//! caller moves the bytes.

use std::collections::{BTreeMap, BTreeSet};

use crate::manifest::Hash;

/// What to do with one path.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Action {
    /// Only the remote side changed it (or added it): copy it here.
    Pull,
    /// Only this side changed it (or added it): copy it there.
    Push,
    /// The remote side deleted it and this side did not touch it.
    DeleteLocal,
    /// This side deleted it and the remote side did not touch it.
    DeleteRemote,
    /// Both sides changed it differently since the last sync.
    Conflict,
}

/// The plan for every path that is not already in sync: `local` and
/// `remote` map paths to content hashes now, `base` is what both held after
/// the last sync (empty on the first one, when every difference is a conflict
/// unless one side lacks the file).
pub fn plan(local: &BTreeMap<String, Hash>, remote: &BTreeMap<String, Hash>, base: &BTreeMap<String, Hash>) -> Vec<(String, Action)> {
    let paths: BTreeSet<&String> = local.keys().chain(remote.keys()).chain(base.keys()).collect();
    let mut out = Vec::new();
    for p in paths {
        let (l, r, b) = (local.get(p), remote.get(p), base.get(p));
        if l == r {
            continue;
        }
        let action = match (l == b, r == b) {
            (true, _) if r.is_none() => Action::DeleteLocal,
            (true, _) => Action::Pull,
            (_, true) if l.is_none() => Action::DeleteRemote,
            (_, true) => Action::Push,
            // Both changed; one side only added or kept it while the other deleted it: keep the content.
            _ if l.is_none() => Action::Pull,
            _ if r.is_none() => Action::Push,
            _ => Action::Conflict,
        };
        out.push((p.clone(), action));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn state(items: &[(&str, u8)]) -> BTreeMap<String, Hash> {
        items.iter().map(|(p, h)| (p.to_string(), [*h; 16])).collect()
    }

    #[test]
    fn each_side_wins_what_only_it_changed() {
        let base = state(&[("same", 1), ("mine", 1), ("theirs", 1), ("both", 1), ("gone-there", 1), ("gone-here", 1), ("edited-gone", 1)]);
        let local = state(&[("same", 1), ("mine", 2), ("theirs", 1), ("both", 2), ("gone-there", 1), ("new-here", 5), ("edited-gone", 3)]);
        let remote = state(&[("same", 1), ("mine", 1), ("theirs", 3), ("both", 3), ("gone-here", 1), ("new-there", 6)]);
        let got: BTreeMap<String, Action> = plan(&local, &remote, &base).into_iter().collect();
        let want: BTreeMap<String, Action> = [
            ("mine", Action::Push),
            ("theirs", Action::Pull),
            ("both", Action::Conflict),
            ("gone-there", Action::DeleteLocal),
            ("gone-here", Action::DeleteRemote),
            ("new-here", Action::Push),
            ("new-there", Action::Pull),
            ("edited-gone", Action::Push),
        ]
        .into_iter()
        .map(|(p, a)| (p.to_string(), a))
        .collect();
        assert_eq!(got, want);
    }

    #[test]
    fn first_sync_conflicts_only_where_both_hold_different_content() {
        let local = state(&[("a", 1), ("b", 2)]);
        let remote = state(&[("a", 1), ("b", 3), ("c", 4)]);
        let got = plan(&local, &remote, &BTreeMap::new());
        assert_eq!(got, vec![("b".to_string(), Action::Conflict), ("c".to_string(), Action::Pull)]);
    }
}
