//! Block-matching deltas (rsync's algorithm): the sender slides a rolling
//! checksum over its new file, finds the blocks the receiver's signature
//! lists, and sends copy instructions for those and literal bytes for the
//! rest. The receiver rebuilds the file from its old copy.

use crate::error::Result;
use crate::rollsum::Rollsum;
use crate::signature::{strong_hash, Signature};
use crate::wire::{put_varint, Reader};

/// One instruction of a delta.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Op {
    /// Copy `count` consecutive blocks of the old file starting at `block`.
    Copy {
        /// First block index.
        block: u64,
        /// Number of blocks.
        count: u64,
    },
    /// Bytes `start..start+len` of the new file, sent as they are.
    Literal {
        /// Offset in the new file.
        start: u64,
        /// Number of bytes.
        len: u64,
    },
}

/// A delta from a signed old file to a new one.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Delta {
    /// Instructions in output order.
    pub ops: Vec<Op>,
    /// Bytes sent as literals.
    pub literal_bytes: u64,
    /// Bytes rebuilt from the old file.
    pub matched_bytes: u64,
}

/// The signature's full blocks sorted by weak sum, with a bit filter in
/// front so most non-matching offsets cost one memory read.
struct BlockIndex {
    filter: Vec<u64>,
    shift: u32,
    sorted: Vec<(u32, u32)>,
}

impl BlockIndex {
    fn new(sig: &Signature) -> Self {
        let bs = sig.block_size as u64;
        let full = (sig.file_len / bs) as usize;
        let bits = ((full.max(64) * 16).next_power_of_two()).trailing_zeros();
        let mut filter = vec![0u64; (1usize << bits) / 64];
        let shift = 32 - bits;
        let mut sorted: Vec<(u32, u32)> = sig.blocks[..full].iter().enumerate().map(|(i, b)| (b.weak, i as u32)).collect();
        sorted.sort_unstable();
        for &(w, _) in &sorted {
            let h = Self::slot(w, shift);
            filter[h / 64] |= 1 << (h % 64);
        }
        BlockIndex { filter, shift, sorted }
    }

    #[inline(always)]
    fn slot(weak: u32, shift: u32) -> usize {
        (weak.wrapping_mul(0x9E37_79B1) >> shift) as usize
    }

    #[inline(always)]
    fn maybe(&self, weak: u32) -> bool {
        let h = Self::slot(weak, self.shift);
        self.filter[h / 64] & (1 << (h % 64)) != 0
    }

    /// The block whose sums match `window`, preferring `expected` (the one
    /// after the previous match) so runs stay contiguous.
    fn find(&self, sig: &Signature, weak: u32, window: &[u8], expected: Option<u32>) -> Option<u32> {
        let first = self.sorted.partition_point(|&(w, _)| w < weak);
        let mut strong = None;
        let mut found = None;
        for &(w, idx) in &self.sorted[first..] {
            if w != weak {
                break;
            }
            let s = *strong.get_or_insert_with(|| strong_hash(window, sig.strong_len));
            if sig.blocks[idx as usize].strong == s {
                if Some(idx) == expected {
                    return Some(idx);
                }
                found.get_or_insert(idx);
            }
        }
        found
    }
}

/// Builds the delta that turns the file `sig` describes into `new`.
pub fn compute(sig: &Signature, new: &[u8]) -> Delta {
    let mut out = DeltaBuilder::default();
    let bs = sig.block_size as usize;
    let len = new.len();
    let index = BlockIndex::new(sig);
    let mut pos = 0usize;
    let mut lit_start = 0usize;
    let mut expected: Option<u32> = None;
    if !index.sorted.is_empty() && len >= bs {
        let mut rs = Rollsum::of(&new[..bs]);
        loop {
            let weak = rs.digest();
            if index.maybe(weak) {
                if let Some(idx) = index.find(sig, weak, &new[pos..pos + bs], expected) {
                    out.literal(lit_start, pos);
                    out.copy(u64::from(idx), bs as u64);
                    expected = idx.checked_add(1);
                    pos += bs;
                    lit_start = pos;
                    if pos + bs > len {
                        break;
                    }
                    rs = Rollsum::of(&new[pos..pos + bs]);
                    continue;
                }
            }
            if pos + bs >= len {
                break;
            }
            rs.rotate(new[pos], new[pos + bs]);
            pos += 1;
        }
    }
    // The old file's short last block can only match the end of the new file.
    let tail = sig.tail_len();
    if tail > 0 && tail < bs && len >= lit_start + tail {
        let start = len - tail;
        let last = sig.blocks.len() - 1;
        let window = &new[start..];
        if Rollsum::of(window).digest() == sig.blocks[last].weak && strong_hash(window, sig.strong_len) == sig.blocks[last].strong {
            out.literal(lit_start, start);
            out.copy(last as u64, tail as u64);
            lit_start = len;
        }
    }
    out.literal(lit_start, len);
    out.delta
}

#[derive(Default)]
struct DeltaBuilder {
    delta: Delta,
}

impl DeltaBuilder {
    fn literal(&mut self, start: usize, end: usize) {
        if end > start {
            self.delta.ops.push(Op::Literal { start: start as u64, len: (end - start) as u64 });
            self.delta.literal_bytes += (end - start) as u64;
        }
    }

    fn copy(&mut self, block: u64, bytes: u64) {
        self.delta.matched_bytes += bytes;
        if let Some(Op::Copy { block: b, count }) = self.delta.ops.last_mut() {
            if *b + *count == block {
                *count += 1;
                return;
            }
        }
        self.delta.ops.push(Op::Copy { block, count: 1 });
    }
}

const KIND_COPY: u64 = 0;
const KIND_LITERAL: u64 = 1;

fn zigzag(v: i64) -> u64 {
    ((v << 1) ^ (v >> 63)) as u64
}

fn unzigzag(v: u64) -> i64 {
    ((v >> 1) as i64) ^ -((v & 1) as i64)
}

impl Delta {
    /// Appends the wire form: block size, the instructions (copy block
    /// numbers relative to the next expected block, so runs compress), then
    /// the literal bytes taken from `new`.
    pub fn encode(&self, block_size: u32, new: &[u8], out: &mut Vec<u8>) {
        out.push(block_size.trailing_zeros() as u8);
        put_varint(out, self.ops.len() as u64);
        let mut next: u64 = 0;
        for op in &self.ops {
            match *op {
                Op::Copy { block, count } => {
                    put_varint(out, (count << 1) | KIND_COPY);
                    put_varint(out, zigzag(block as i64 - next as i64));
                    next = block + count;
                }
                Op::Literal { len, .. } => put_varint(out, (len << 1) | KIND_LITERAL),
            }
        }
        for op in &self.ops {
            if let Op::Literal { start, len } = *op {
                out.extend_from_slice(&new[start as usize..(start + len) as usize]);
            }
        }
    }
}

/// An instruction as read from the wire, already checked against the base.
enum Step {
    Copy { from: usize, to: usize },
    Literal(usize),
}

/// A delta checked against the base it applies to: every copy lies inside
/// the base and the output has exactly the announced length.
pub struct Plan<'a> {
    steps: Vec<Step>,
    literals: &'a [u8],
}

/// Checks an encoded delta against a base of `base_len` bytes; it must
/// produce exactly `new_len` bytes. Nothing is allocated for the output.
pub fn plan(base_len: usize, encoded: &[u8], new_len: u64) -> Result<Plan<'_>> {
    let base_len = base_len as u64;
    let mut r = Reader::new(encoded, "delta");
    let log = r.u8()?;
    if !(9..=17).contains(&log) {
        return Err(r.error(format!("block size 2^{log} out of range")));
    }
    let bs = 1u64 << log;
    let nops = r.varint_max(r.remaining() as u64, "op count")?;
    let mut steps = Vec::with_capacity(nops.min(1 << 16));
    let (mut total, mut literal_total, mut next) = (0u64, 0u64, 0u64);
    for _ in 0..nops {
        let head = r.varint()?;
        let n = head >> 1;
        if n == 0 {
            return Err(r.error("empty instruction"));
        }
        if head & 1 == KIND_COPY {
            let rel = unzigzag(r.varint()?);
            let block = (next as i64).checked_add(rel).filter(|b| *b >= 0).ok_or_else(|| r.error("copy before block 0"))? as u64;
            let from =
                block.checked_mul(bs).filter(|f| *f < base_len).ok_or_else(|| r.error(format!("copy of block {block} beyond the base")))?;
            let end = block.checked_add(n).and_then(|e| e.checked_mul(bs)).ok_or_else(|| r.error("copy overflows"))?;
            if end.saturating_sub(bs) >= base_len {
                return Err(r.error(format!("copy of {n} blocks from {block} beyond the base")));
            }
            let to = end.min(base_len);
            total = total.checked_add(to - from).ok_or_else(|| r.error("length overflows"))?;
            steps.push(Step::Copy { from: from as usize, to: to as usize });
            next = block + n;
        } else {
            literal_total = literal_total.checked_add(n).ok_or_else(|| r.error("length overflows"))?;
            total = total.checked_add(n).ok_or_else(|| r.error("length overflows"))?;
            steps.push(Step::Literal(n as usize));
        }
        if total > new_len {
            return Err(r.error(format!("output exceeds the announced {new_len} bytes")));
        }
    }
    if total != new_len {
        return Err(r.error(format!("output is {total} bytes, {new_len} announced")));
    }
    if literal_total != r.remaining() as u64 {
        return Err(r.error(format!("{literal_total} literal bytes announced, {} present", r.remaining())));
    }
    Ok(Plan { steps, literals: r.take(r.remaining())? })
}

impl Plan<'_> {
    /// Hands the new file to `out` piece by piece, copies straight from
    /// `base` (the base [`plan`] checked against) and literals from the delta.
    pub fn emit<E>(&self, base: &[u8], mut out: impl FnMut(&[u8]) -> std::result::Result<(), E>) -> std::result::Result<(), E> {
        let mut lit = 0usize;
        for step in &self.steps {
            match *step {
                Step::Copy { from, to } => out(&base[from..to])?,
                Step::Literal(n) => {
                    out(&self.literals[lit..lit + n])?;
                    lit += n;
                }
            }
        }
        Ok(())
    }
}

/// Rebuilds the new file from `base` and an encoded delta that must
/// produce exactly `new_len` bytes.
pub fn apply(base: &[u8], encoded: &[u8], new_len: u64) -> Result<Vec<u8>> {
    let p = plan(base.len(), encoded, new_len)?;
    let mut out = Vec::with_capacity(new_len as usize);
    p.emit(base, |piece| {
        out.extend_from_slice(piece);
        Ok::<(), std::convert::Infallible>(())
    })
    .unwrap_or_else(|never| match never {});
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// The encoded delta from `old` to `new`.
    fn encode_between(old: &[u8], new: &[u8]) -> (Vec<u8>, Delta) {
        let sig = Signature::of(old);
        let d = compute(&sig, new);
        let mut enc = Vec::new();
        d.encode(sig.block_size, new, &mut enc);
        (enc, d)
    }

    fn noise(n: usize, seed: u64) -> Vec<u8> {
        let mut s = seed;
        (0..n)
            .map(|_| {
                s = s.wrapping_add(0x9E37_79B9_7F4A_7C15);
                let mut z = s;
                z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
                (z >> 56) as u8
            })
            .collect()
    }

    #[test]
    fn unchanged_file_is_all_copies() {
        let old = noise(100_000, 1);
        let (enc, d) = encode_between(&old, &old);
        assert_eq!(d.literal_bytes, 0);
        assert_eq!(d.ops.len(), 1, "{:?}", d.ops);
        assert!(enc.len() < 16);
        assert_eq!(apply(&old, &enc, old.len() as u64).unwrap(), old);
    }

    #[test]
    fn insert_costs_about_the_insert() {
        let old = noise(1 << 20, 2);
        let mut new = old.clone();
        new.splice(500_000..500_000, noise(1000, 3));
        let (enc, d) = encode_between(&old, &new);
        let bs = Signature::of(&old).block_size as u64;
        assert!(d.literal_bytes <= 1000 + bs, "{} literal bytes", d.literal_bytes);
        assert_eq!(apply(&old, &enc, new.len() as u64).unwrap(), new);
    }

    #[test]
    fn hostile_deltas_are_errors() {
        let old = noise(10_000, 4);
        let new = noise(10_000, 5);
        let (enc, _) = encode_between(&old, &new);
        assert!(apply(&old, &enc, new.len() as u64 + 1).is_err());
        assert!(apply(&old, &enc[..enc.len() - 1], new.len() as u64).is_err());
        // A copy far beyond the base.
        let mut evil = vec![9u8];
        put_varint(&mut evil, 1);
        put_varint(&mut evil, (1000 << 1) | KIND_COPY);
        put_varint(&mut evil, zigzag(1 << 40));
        assert!(apply(&old, &evil, 1000 * 512).is_err());
        // A huge announced length is refused before allocating.
        assert!(apply(&old, &[9, 1, 0xff, 0xff, 0xff, 0xff, 0x0f], u64::MAX).is_err());
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(200))]
        #[test]
        fn applying_the_delta_gives_new(old in proptest::collection::vec(any::<u8>(), 0..6000),
                                        edits in proptest::collection::vec((any::<u16>(), 0u16..700, proptest::collection::vec(any::<u8>(), 0..300)), 0..6),
                                        bs_log in 9u32..12) {
            let mut new = old.clone();
            for (at, del, ins) in edits {
                let at = if new.is_empty() { 0 } else { usize::from(at) % new.len() };
                let end = (at + usize::from(del)).min(new.len());
                new.splice(at..end, ins);
            }
            let sig = Signature::with_block_size(&old, 1 << bs_log);
            let d = compute(&sig, &new);
            let mut enc = Vec::new();
            d.encode(sig.block_size, &new, &mut enc);
            prop_assert_eq!(apply(&old, &enc, new.len() as u64).unwrap(), new);
        }

        #[test]
        fn random_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..200), len in 0u64..100_000) {
            let base = noise(4096, 7);
            let _ = apply(&base, &bytes, len);
        }
    }
}
