//! Block-matching deltas (rsync's algorithm): the sender slides a rolling
//! checksum over its new file, finds the blocks the receiver's signature
//! lists, and sends copy instructions for those and literal bytes for the
//! rest. The receiver rebuilds the file from its old copy.

use std::io::Read;

use crate::error::Result;
use crate::rollsum::Rollsum;
use crate::signature::{read_full, strong_hash, Signature, READ_PIECE};
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
    /// The literal bytes, in output order.
    pub literals: Vec<u8>,
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
        // Inside a run of matches the next block is the likely one: no search.
        let next = expected.filter(|&e| (e as usize) < self.sorted.len() && sig.blocks[e as usize].weak == weak);
        if let Some(e) = next {
            if sig.blocks[e as usize].strong == strong_hash(window, sig.strong_len) {
                return Some(e);
            }
        }
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

/// The new file as it is read: a window of it starting at file offset
/// `off`, refilled piece by piece. Bytes of the literal run in progress are
/// saved before the window moves past them.
struct Stream<R> {
    src: R,
    buf: Vec<u8>,
    len: usize,
    off: usize,
    eof: bool,
    /// The literal bytes so far, in output order.
    literals: Vec<u8>,
    /// File offset up to which the current run's literal bytes are saved.
    saved: usize,
}

impl<R: Read> Stream<R> {
    fn new(src: R, bs: usize) -> Self {
        Stream { src, buf: vec![0; READ_PIECE + bs + 1], len: 0, off: 0, eof: false, literals: Vec::new(), saved: 0 }
    }

    /// The `n` bytes at file offset `at` (which [`Stream::have`] made available).
    #[inline(always)]
    fn at(&self, at: usize, n: usize) -> &[u8] {
        &self.buf[at - self.off..at - self.off + n]
    }

    /// Makes the file available up to offset `end`, moving the window to
    /// start at `keep`; false when the file ends first.
    #[inline(always)]
    fn have(&mut self, keep: usize, end: usize, lit_start: usize) -> std::io::Result<bool> {
        while self.off + self.len < end {
            if self.eof {
                return Ok(false);
            }
            self.refill(keep, lit_start)?;
        }
        Ok(true)
    }

    /// Saves the pending literals before `keep`, drops them from the
    /// window, and reads the next piece.
    #[cold]
    fn refill(&mut self, keep: usize, lit_start: usize) -> std::io::Result<()> {
        self.save(lit_start, keep);
        self.buf.copy_within(keep - self.off..self.len, 0);
        self.len -= keep - self.off;
        self.off = keep;
        let n = read_full(&mut self.src, &mut self.buf[self.len..])?;
        self.len += n;
        self.eof = self.len < self.buf.len();
        Ok(())
    }

    /// Saves the literal bytes of the run that began at `lit_start` up to `end`.
    fn save(&mut self, lit_start: usize, end: usize) {
        let from = lit_start.max(self.saved);
        if end > from {
            self.literals.extend_from_slice(&self.buf[from - self.off..end - self.off]);
            self.saved = end;
        }
    }
}

/// Builds the delta that turns the file `sig` describes into what `src`
/// yields, reading it piece by piece (memory stays a few pieces, plus the
/// literals). Gives up with `None` once the literals pass `max_literal`
/// bytes: sending the whole file is then cheaper.
pub fn compute_from(sig: &Signature, src: impl Read, max_literal: u64) -> std::io::Result<Option<Delta>> {
    let bs = sig.block_size as usize;
    let index = BlockIndex::new(sig);
    let mut s = Stream::new(src, bs);
    let mut out = DeltaBuilder::default();
    let (mut pos, mut lit_start) = (0usize, 0usize);
    let mut expected: Option<u32> = None;
    if !index.sorted.is_empty() {
        'blocks: while s.have(pos, pos + bs, lit_start)? {
            let mut rs = Rollsum::of(s.at(pos, bs));
            loop {
                let weak = rs.digest();
                if index.maybe(weak) {
                    if let Some(idx) = index.find(sig, weak, s.at(pos, bs), expected) {
                        s.save(lit_start, pos);
                        out.literal(lit_start, pos);
                        out.copy(u64::from(idx), bs as u64);
                        expected = idx.checked_add(1);
                        pos += bs;
                        lit_start = pos;
                        continue 'blocks;
                    }
                }
                if !s.have(pos, pos + bs + 1, lit_start)? {
                    break 'blocks;
                }
                if s.literals.len() as u64 > max_literal {
                    return Ok(None);
                }
                let w = s.at(pos, bs + 1);
                rs.rotate(w[0], w[bs]);
                pos += 1;
            }
        }
    }
    // The rest is literal, unless the old file's short last block matches
    // the very end (which lies past `pos`: the window stopped a block short).
    while !s.eof {
        let keep = (s.off + s.len).saturating_sub(bs).max(pos);
        s.refill(keep, lit_start)?;
        if s.literals.len() as u64 > max_literal {
            return Ok(None);
        }
    }
    let len = s.off + s.len;
    let tail = sig.tail_len();
    if tail > 0 && tail < bs && len >= lit_start + tail {
        let start = len - tail;
        let last = sig.blocks.len() - 1;
        let window = s.at(start, tail);
        if Rollsum::of(window).digest() == sig.blocks[last].weak && strong_hash(window, sig.strong_len) == sig.blocks[last].strong {
            s.save(lit_start, start);
            out.literal(lit_start, start);
            out.copy(last as u64, tail as u64);
            lit_start = len;
        }
    }
    s.save(lit_start, len);
    out.literal(lit_start, len);
    if s.literals.len() as u64 > max_literal {
        return Ok(None);
    }
    out.delta.literals = s.literals;
    Ok(Some(out.delta))
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
    /// the literal bytes.
    pub fn encode(&self, block_size: u32, out: &mut Vec<u8>) {
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
        out.extend_from_slice(&self.literals);
    }
}

/// An instruction as read from the wire, already checked against the base.
#[derive(Clone, Copy)]
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

/// The receiver's copy that a delta's copies are read from.
pub enum Base<'a> {
    /// Held in memory.
    Bytes(&'a [u8]),
    /// On disk, read a piece at a time, so a large file is never held whole.
    File(std::fs::File),
}

impl Plan<'_> {
    /// Hands the new file to `out` piece by piece: copies from `base` (the
    /// base [`plan`] checked against) and literals from the delta. A base
    /// that shrank since is an error, not a short file.
    pub fn emit(&self, base: &Base<'_>, mut out: impl FnMut(&[u8]) -> std::io::Result<()>) -> std::io::Result<()> {
        use std::os::unix::fs::FileExt;
        let gone = || std::io::Error::new(std::io::ErrorKind::UnexpectedEof, "the base is shorter than the delta expects");
        let mut piece = Vec::new();
        let mut lit = 0usize;
        for step in &self.steps {
            match (*step, base) {
                (Step::Copy { from, to }, Base::Bytes(b)) => out(b.get(from..to).ok_or_else(gone)?)?,
                (Step::Copy { from, to }, Base::File(f)) => {
                    piece.resize(READ_PIECE.min(to - from).max(piece.len()), 0);
                    let mut at = from;
                    while at < to {
                        let n = (to - at).min(piece.len());
                        f.read_exact_at(&mut piece[..n], at as u64)?;
                        out(&piece[..n])?;
                        at += n;
                    }
                }
                (Step::Literal(n), _) => {
                    out(&self.literals[lit..lit + n])?;
                    lit += n;
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// Rebuilds the new file from `base` and an encoded delta that must
    /// produce exactly `new_len` bytes.
    fn apply(base: &[u8], encoded: &[u8], new_len: u64) -> Result<Vec<u8>> {
        let p = plan(base.len(), encoded, new_len)?;
        let mut out = Vec::with_capacity(new_len as usize);
        p.emit(&Base::Bytes(base), |piece| {
            out.extend_from_slice(piece);
            Ok(())
        })
        .map_err(|e| crate::error::SyncError::io("rebuilding from the delta", e))?;
        Ok(out)
    }

    fn compute(sig: &Signature, new: &[u8]) -> Delta {
        compute_from(sig, new, u64::MAX).unwrap().unwrap()
    }

    /// The encoded delta from `old` to `new`.
    fn encode_between(old: &[u8], new: &[u8]) -> (Vec<u8>, Delta) {
        let sig = Signature::of(old);
        let d = compute(&sig, new);
        let mut enc = Vec::new();
        d.encode(sig.block_size, &mut enc);
        (enc, d)
    }

    /// A reader that hands out at most `step` bytes per call.
    struct Trickle<'a>(&'a [u8], usize);

    impl Read for Trickle<'_> {
        fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
            let n = buf.len().min(self.1).min(self.0.len());
            buf[..n].copy_from_slice(&self.0[..n]);
            self.0 = &self.0[n..];
            Ok(n)
        }
    }

    #[test]
    fn files_larger_than_a_piece_stream_exactly() {
        let old = noise(3 * READ_PIECE + 1000, 11);
        let piece = READ_PIECE;
        let cases: Vec<Vec<u8>> = vec![
            old.clone(),
            // Edits straddling piece boundaries, and a short last block matched right after literals.
            {
                let mut n = old.clone();
                n[piece - 10..piece + 10].fill(7);
                n.splice(2 * piece - 3..2 * piece - 3, noise(5000, 12));
                let tail = n.len() - 1000;
                n[tail - 300..tail].fill(9);
                n
            },
            // A large unmatched run crossing several pieces.
            {
                let mut n = old.clone();
                n.splice(100_000..100_000, noise(2 * READ_PIECE + 17, 13));
                n
            },
            noise(READ_PIECE + 5, 14),
            Vec::new(),
        ];
        for (k, new) in cases.iter().enumerate() {
            for bs in [512u32, 4096, 1 << 17] {
                let sig = Signature::with_block_size(&old, bs);
                let d = compute_from(&sig, Trickle(new, 70_001), u64::MAX).unwrap().unwrap();
                assert_eq!(d, compute(&sig, new), "case {k} bs {bs}");
                let mut enc = Vec::new();
                d.encode(sig.block_size, &mut enc);
                assert_eq!(apply(&old, &enc, new.len() as u64).unwrap(), *new, "case {k} bs {bs}");
                assert_eq!(d.literals.len() as u64, d.literal_bytes);
            }
        }
        // Giving up past the literal budget.
        let sig = Signature::of(&old);
        assert!(compute_from(&sig, &cases[3][..], 1000).unwrap().is_none());
        assert!(compute_from(&sig, &cases[1][..], 100_000).unwrap().is_some());
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
        let file = tempfile::tempfile().unwrap();
        std::io::Write::write_all(&mut &file, &old).unwrap();
        let mut rebuilt = Vec::new();
        plan(old.len(), &enc, old.len() as u64)
            .unwrap()
            .emit(&Base::File(file), |p| {
                rebuilt.extend_from_slice(p);
                Ok(())
            })
            .unwrap();
        assert_eq!(rebuilt, old);
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
            d.encode(sig.block_size, &mut enc);
            prop_assert_eq!(apply(&old, &enc, new.len() as u64).unwrap(), new);
        }

        #[test]
        fn random_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..200), len in 0u64..100_000) {
            let base = noise(4096, 7);
            let _ = apply(&base, &bytes, len);
        }
    }
}
