//! Redis's glob patterns (`KEYS`, `SCAN … MATCH`): `*` matches any run of
//! bytes, `?` one byte, `[abc]`, `[a-z]` and `[^…]` one byte of (or not of)
//! a set, and `\` makes the next byte literal. Matching backtracks only to
//! the last `*`, so its cost is at most the product of the two lengths.

/// Whether `text` matches `pattern`.
pub fn matches(pattern: &[u8], text: &[u8]) -> bool {
    let (mut p, mut t) = (0, 0);
    // Where to resume after the last `*`: the pattern past it, and the
    // text position it has absorbed up to.
    let mut star: Option<(usize, usize)> = None;
    while t < text.len() {
        if pattern.get(p) == Some(&b'*') {
            p += 1;
            star = Some((p, t));
            continue;
        }
        if let Some(after) = one(pattern, p, text[t]) {
            p = after;
            t += 1;
            continue;
        }
        match star {
            Some((resume, absorbed)) => {
                p = resume;
                t = absorbed + 1;
                star = Some((resume, t));
            }
            None => return false,
        }
    }
    pattern[p.min(pattern.len())..].iter().all(|&b| b == b'*')
}

/// Matches the pattern element at `p` (not a `*`) against one byte `c`:
/// the position after the element if it matches.
fn one(pattern: &[u8], p: usize, c: u8) -> Option<usize> {
    match *pattern.get(p)? {
        b'?' => Some(p + 1),
        b'\\' if p + 1 < pattern.len() => (pattern[p + 1] == c).then_some(p + 2),
        b'[' => class(pattern, p + 1, c),
        b => (b == c).then_some(p + 1),
    }
}

/// A `[…]` set whose body starts at `p`: the position after its `]` if
/// `c` is in it (or, after `^`, not in it). An unclosed set ends with the
/// pattern, as in Redis.
fn class(pattern: &[u8], mut p: usize, c: u8) -> Option<usize> {
    let negated = pattern.get(p) == Some(&b'^');
    if negated {
        p += 1;
    }
    let mut found = false;
    while let Some(&b) = pattern.get(p) {
        match b {
            b']' => break,
            b'\\' if p + 1 < pattern.len() => {
                found |= pattern[p + 1] == c;
                p += 2;
            }
            _ if pattern.get(p + 1) == Some(&b'-') && p + 2 < pattern.len() => {
                let (lo, hi) = (b.min(pattern[p + 2]), b.max(pattern[p + 2]));
                found |= (lo..=hi).contains(&c);
                p += 3;
            }
            _ => {
                found |= b == c;
                p += 1;
            }
        }
    }
    (found != negated).then_some(p + 1)
}

#[cfg(test)]
mod tests {
    use super::matches;

    #[test]
    fn redis_glob_patterns() {
        let yes = |p: &str, t: &str| assert!(matches(p.as_bytes(), t.as_bytes()), "{p:?} should match {t:?}");
        let no = |p: &str, t: &str| assert!(!matches(p.as_bytes(), t.as_bytes()), "{p:?} should not match {t:?}");
        yes("*", "");
        yes("*", "anything");
        yes("user:*", "user:42");
        no("user:*", "users:42");
        yes("h?llo", "hello");
        no("h?llo", "hllo");
        yes("h*llo", "heeeello");
        yes("h[ae]llo", "hallo");
        no("h[ae]llo", "hillo");
        yes("h[^e]llo", "hallo");
        no("h[^e]llo", "hello");
        yes("h[a-b]llo", "hbllo");
        yes("h[b-a]llo", "hallo");
        no("h[a-b]llo", "hcllo");
        yes("*a*b*c*", "xxaxxbxxcxx");
        no("*a*b*c*", "xxaxxcxxbxx");
        yes("a\\*b", "a*b");
        no("a\\*b", "axb");
        yes("[\\]]", "]");
        yes("img/*/v[0-9]", "img/vm/large/v7");
        no("exact", "exactly");
        yes("[abc", "b");
        // A pattern built to make naive backtracking exponential.
        let long = "a".repeat(60);
        no(&format!("{}b", "a*".repeat(30)), &long);
    }
}
