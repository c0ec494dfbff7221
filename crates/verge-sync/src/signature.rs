//! Block signatures: what a receiver tells a sender about its copy of a
//! file so the sender can find the blocks it already has.

use std::io::Read;
use std::path::Path;

use xxhash_rust::xxh3::xxh3_64;

use crate::error::{Result, SyncError};
use crate::rollsum::Rollsum;
use crate::wire::{put_varint, Reader};

/// Smallest block size used.
pub const MIN_BLOCK: u32 = 512;
/// Largest block size used.
pub const MAX_BLOCK: u32 = 1 << 17;
/// Page size assumed for database and page-structured files.
pub const PAGE_BLOCK: u32 = 4096;
/// Largest file a signature may describe (1 TiB).
pub const MAX_FILE_LEN: u64 = 1 << 40;
/// Bytes read at a time when a file is signed or matched from disk: a
/// multiple of every block size, so pieces end on block boundaries.
pub const READ_PIECE: usize = 1 << 20;

/// Reads until `buf` is full or the source ends; returns the bytes read.
pub fn read_full(src: &mut impl Read, buf: &mut [u8]) -> std::io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match src.read(&mut buf[n..]) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(n)
}

/// The weak and strong checksums of one block.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BlockSum {
    /// Rolling checksum ([`Rollsum`]) of the block.
    pub weak: u32,
    /// The first `strong_len` bytes of the block's XXH3-64, as an integer.
    pub strong: u64,
}

/// The signature of one file: its length, block size and per-block sums.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Signature {
    /// Block size, a power of two in [`MIN_BLOCK`, `MAX_BLOCK`].
    pub block_size: u32,
    /// Length of the file the blocks cover; the last block may be short.
    pub file_len: u64,
    /// Bytes of each strong hash on the wire (2..=8): enough that a false
    /// match is unlikely; the whole-file BLAKE3 check catches the rest.
    pub strong_len: u8,
    /// One entry per block, in file order.
    pub blocks: Vec<BlockSum>,
}

/// Picks the block size for a file of `len` bytes whose first bytes are
/// `head`: the page size for SQLite and page-aligned files (database pages,
/// VM images), otherwise the power of two nearest `sqrt(len)`, as rsync
/// balances signature size against literal size.
pub fn choose_block_size(len: u64, head: &[u8]) -> u32 {
    if let Some(page) = sqlite_page_size(head) {
        return page.clamp(MIN_BLOCK, MAX_BLOCK);
    }
    if len >= 1 << 20 && len & u64::from(PAGE_BLOCK - 1) == 0 {
        return PAGE_BLOCK;
    }
    let root = (len as f64).sqrt().max(1.0);
    let pow = root.log2().round().clamp(0.0, 31.0) as u32;
    (1u32 << pow).clamp(MIN_BLOCK, MAX_BLOCK)
}

/// The page size of a SQLite database from its header, if `head` is one.
fn sqlite_page_size(head: &[u8]) -> Option<u32> {
    if head.len() < 18 || &head[..16] != b"SQLite format 3\0" {
        return None;
    }
    match u16::from_be_bytes([head[16], head[17]]) {
        1 => Some(65536),
        p if p.is_power_of_two() && p >= 512 => Some(u32::from(p)),
        _ => None,
    }
}

/// Strong-hash bytes needed so that a false block match stays below about
/// 2^-20 per file: enough bits to cover every (offset, block) pair that
/// passes the 32-bit weak filter.
fn strong_len_for(len: u64, blocks: u64) -> u8 {
    let bits = (64 - len.max(1).leading_zeros()) + (64 - blocks.max(1).leading_zeros());
    let needed = (bits + 20).saturating_sub(32);
    needed.div_ceil(8).clamp(2, 8) as u8
}

/// The strong hash of a block truncated to `strong_len` bytes.
#[inline]
pub fn strong_hash(block: &[u8], strong_len: u8) -> u64 {
    let h = xxh3_64(block);
    if strong_len >= 8 {
        h
    } else {
        h & ((1u64 << (8 * u32::from(strong_len))) - 1)
    }
}

/// The sums of `data`'s blocks of `block_size` bytes (the last may be short).
fn block_sums(data: &[u8], block_size: u32, strong_len: u8) -> impl Iterator<Item = BlockSum> + '_ {
    data.chunks(block_size as usize).map(move |b| BlockSum { weak: Rollsum::of(b).digest(), strong: strong_hash(b, strong_len) })
}

impl Signature {
    /// Computes the signature of `data` with the block size [`choose_block_size`] picks.
    pub fn of(data: &[u8]) -> Self {
        Self::with_block_size(data, choose_block_size(data.len() as u64, data))
    }

    /// Computes the signature of `data` with a given block size.
    pub fn with_block_size(data: &[u8], block_size: u32) -> Self {
        let block_size = block_size.clamp(MIN_BLOCK, MAX_BLOCK).next_power_of_two();
        let strong_len = strong_len_for(data.len() as u64, data.len().div_ceil(block_size as usize) as u64);
        let blocks = block_sums(data, block_size, strong_len).collect();
        Signature { block_size, file_len: data.len() as u64, strong_len, blocks }
    }

    /// The signature of the file at `path`, read piece by piece: the file
    /// is never held whole in memory.
    pub fn of_file(path: &Path) -> Result<Self> {
        let io = |e| SyncError::io(format!("reading {}", path.display()), e);
        let mut file = std::fs::File::open(path).map_err(io)?;
        let len = file.metadata().map_err(io)?.len();
        Self::from_reader(&mut file, len).map_err(io)
    }

    /// The signature of what `src` yields, expected to be about `len`
    /// bytes (the block size is chosen for `len`; the signature describes
    /// what was actually read).
    pub fn from_reader(mut src: impl Read, len: u64) -> std::io::Result<Self> {
        // One byte more than announced, so that the end shows without another read.
        let mut buf = vec![0u8; READ_PIECE.min(len.saturating_add(1) as usize)];
        let mut n = read_full(&mut src, &mut buf)?;
        let block_size = choose_block_size(len, &buf[..n]);
        if buf.len() < READ_PIECE && n == buf.len() {
            // The file grew past `len`: read on in full pieces.
            buf.resize(READ_PIECE, 0);
            n += read_full(&mut src, &mut buf[n..])?;
        }
        let strong_len = strong_len_for(len, len.div_ceil(u64::from(block_size)));
        let mut blocks = Vec::with_capacity(len.div_ceil(u64::from(block_size)).min(1 << 20) as usize);
        let mut file_len = 0u64;
        loop {
            blocks.extend(block_sums(&buf[..n], block_size, strong_len));
            file_len += n as u64;
            if n < buf.len() {
                break;
            }
            n = read_full(&mut src, &mut buf)?;
            if n == 0 {
                break;
            }
        }
        Ok(Signature { block_size, file_len, strong_len, blocks })
    }

    /// Length of the last block (equal to `block_size` when the file is block-aligned).
    pub fn tail_len(&self) -> usize {
        match (self.file_len % u64::from(self.block_size)) as usize {
            0 if self.file_len > 0 => self.block_size as usize,
            r => r,
        }
    }

    /// Appends the wire encoding.
    pub fn encode(&self, out: &mut Vec<u8>) {
        out.push(self.block_size.trailing_zeros() as u8);
        put_varint(out, self.file_len);
        out.push(self.strong_len);
        let sl = usize::from(self.strong_len);
        for b in &self.blocks {
            out.extend_from_slice(&b.weak.to_le_bytes());
            out.extend_from_slice(&b.strong.to_le_bytes()[..sl]);
        }
    }

    /// Reads a signature written by [`Signature::encode`], checking every field.
    pub fn decode(r: &mut Reader<'_>) -> Result<Self> {
        let log = r.u8()?;
        if !(MIN_BLOCK.trailing_zeros()..=MAX_BLOCK.trailing_zeros()).contains(&u32::from(log)) {
            return Err(r.error(format!("block size 2^{log} out of range")));
        }
        let block_size = 1u32 << log;
        let file_len = r.varint()?;
        if file_len > MAX_FILE_LEN {
            return Err(r.error(format!("file length {file_len} exceeds {MAX_FILE_LEN}")));
        }
        let strong_len = r.u8()?;
        if !(2..=8).contains(&strong_len) {
            return Err(r.error(format!("strong hash length {strong_len} not in 2..=8")));
        }
        let n = file_len.div_ceil(u64::from(block_size)) as usize;
        let per = 4 + usize::from(strong_len);
        if n.saturating_mul(per) > r.remaining() {
            return Err(r.error(format!("{n} blocks announced, data for {} left", r.remaining() / per)));
        }
        let mut blocks = Vec::with_capacity(n);
        for _ in 0..n {
            let weak = r.u32()?;
            let mut s = [0u8; 8];
            s[..usize::from(strong_len)].copy_from_slice(r.take(usize::from(strong_len))?);
            blocks.push(BlockSum { weak, strong: u64::from_le_bytes(s) });
        }
        Ok(Signature { block_size, file_len, strong_len, blocks })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn block_size_follows_file_kind() {
        let mut sqlite = b"SQLite format 3\0".to_vec();
        sqlite.extend_from_slice(&4096u16.to_be_bytes());
        assert_eq!(choose_block_size(10 << 20, &sqlite), 4096);
        assert_eq!(choose_block_size(256 << 20, b"random"), PAGE_BLOCK);
        assert_eq!(choose_block_size(10_000, b"text"), MIN_BLOCK);
        assert_eq!(choose_block_size((16 << 20) + 1, b"text"), 4096);
        assert_eq!(choose_block_size(u64::MAX / 2, b"x"), MAX_BLOCK);
    }

    #[test]
    fn round_trips_and_rejects_truncation() {
        let data: Vec<u8> = (0..10_000u32).map(|i| (i % 251) as u8).collect();
        let sig = Signature::with_block_size(&data, 1024);
        assert_eq!(sig.blocks.len(), 10);
        assert_eq!(sig.tail_len(), 10_000 - 9 * 1024);
        let mut enc = Vec::new();
        sig.encode(&mut enc);
        let mut r = Reader::new(&enc, "signature");
        assert_eq!(Signature::decode(&mut r).unwrap(), sig);
        r.finish().unwrap();
        for cut in [0, 1, 3, enc.len() - 1] {
            assert!(Signature::decode(&mut Reader::new(&enc[..cut], "signature")).is_err(), "cut {cut}");
        }
    }

    #[test]
    fn reading_in_pieces_gives_the_same_signature() {
        let data: Vec<u8> = (0..(3 * READ_PIECE + 777) as u32).map(|i| (i.wrapping_mul(2654435761) >> 11) as u8).collect();
        for len in [0, 1, 4095, 4096, READ_PIECE, READ_PIECE + 1, data.len()] {
            let d = &data[..len];
            assert_eq!(Signature::from_reader(d, len as u64).unwrap(), Signature::of(d), "len {len}");
        }
        // A file longer than announced is signed as read, with the announced length's block size.
        let grown = Signature::from_reader(&data[..], 100).unwrap();
        assert_eq!(grown.file_len, data.len() as u64);
        let whole = Signature::with_block_size(&data, grown.block_size);
        assert!(grown.blocks.iter().zip(&whole.blocks).all(|(a, b)| a.weak == b.weak));
        assert_eq!(grown.blocks.len(), whole.blocks.len());
    }
}
