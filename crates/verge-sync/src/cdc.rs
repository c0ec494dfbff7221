//! Content-defined chunking (FastCDC) for dedupe across files: a file the
//! receiver has never held may still share most of its chunks with files it
//! does hold (a renamed model, a new VM image built on an old one). Chunk
//! boundaries depend on content only, so equal data chunks equally wherever
//! it sits.

use std::collections::HashMap;
use std::io::{Read, Seek, SeekFrom};
use std::path::Path;

use serde::{Deserialize, Serialize};
use xxhash_rust::xxh3::xxh3_64;

use crate::error::{Result, SyncError};
use crate::manifest::{join, HashIndex, Manifest};

/// Files smaller than this are not chunked: a block delta or the whole file is cheaper.
pub const MIN_FILE: u64 = 256 << 10;
const MIN_CHUNK: u32 = 16 << 10;
const AVG_CHUNK: u32 = 64 << 10;
const MAX_CHUNK: u32 = 256 << 10;

/// One chunk: its XXH3-64 and its length.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct ChunkRef {
    /// XXH3-64 of the chunk's bytes.
    pub hash: u64,
    /// Length in bytes.
    pub len: u32,
}

/// The chunks of the file at `path`, read in pieces.
pub fn chunk_file(path: &Path) -> Result<Vec<ChunkRef>> {
    let f = std::fs::File::open(path).map_err(|e| SyncError::io(format!("reading {}", path.display()), e))?;
    let mut out = Vec::new();
    for c in fastcdc::v2020::StreamCDC::new(f, MIN_CHUNK, AVG_CHUNK, MAX_CHUNK) {
        let c = c.map_err(|e| SyncError::io(format!("chunking {}", path.display()), std::io::Error::other(e.to_string())))?;
        out.push(ChunkRef { hash: xxh3_64(&c.data), len: c.length as u32 });
    }
    Ok(out)
}

/// Where the receiver holds each chunk of its tree.
#[derive(Default)]
pub struct ChunkIndex {
    at: HashMap<ChunkRef, (String, u64)>,
}

impl ChunkIndex {
    /// Indexes the chunks of every file of `have` (the tree at `root`) large
    /// enough to be chunked; `cache` keeps chunk lists of unchanged files.
    pub fn build(root: &Path, have: &Manifest, mut cache: Option<&mut HashIndex>) -> Result<Self> {
        let mut index = ChunkIndex::default();
        for e in have.files.iter().filter(|e| e.size >= MIN_FILE) {
            let path = join(root, &e.path);
            let chunks = match cache.as_deref().and_then(|c| c.chunks(&e.path, &path)) {
                Some(c) => c,
                None => {
                    let c = chunk_file(&path)?;
                    if let Some(cache) = cache.as_deref_mut() {
                        cache.remember_chunks(&e.path, &path, &c);
                    }
                    c
                }
            };
            let mut offset = 0u64;
            for c in chunks {
                index.at.entry(c).or_insert_with(|| (e.path.clone(), offset));
                offset += u64::from(c.len);
            }
        }
        Ok(index)
    }

    /// Whether the receiver holds chunk `c`.
    pub fn has(&self, c: &ChunkRef) -> bool {
        self.at.contains_key(c)
    }

    /// Reads chunk `c` from the tree at `root`, checking its hash.
    pub fn read(&self, root: &Path, c: &ChunkRef) -> Option<Vec<u8>> {
        let (rel, offset) = self.at.get(c)?;
        let mut f = std::fs::File::open(join(root, rel)).ok()?;
        f.seek(SeekFrom::Start(*offset)).ok()?;
        let mut buf = vec![0u8; c.len as usize];
        f.read_exact(&mut buf).ok()?;
        (xxh3_64(&buf) == c.hash).then_some(buf)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shifted_data_shares_chunks() {
        let data: Vec<u8> = (0..1_000_000u64)
            .map(|i| {
                let z = (i ^ (i >> 7)).wrapping_mul(0x9E37_79B9_7F4A_7C15);
                (z ^ (z >> 29)).wrapping_mul(0xBF58_476D_1CE4_E5B9).to_le_bytes()[7]
            })
            .collect();
        let mut shifted = b"a header that shifts everything".to_vec();
        shifted.extend_from_slice(&data);
        let dir = tempfile::tempdir().unwrap();
        let chunks = |name: &str, bytes: &[u8]| {
            std::fs::write(dir.path().join(name), bytes).unwrap();
            chunk_file(&dir.path().join(name)).unwrap()
        };
        let (a, b) = (chunks("a", &data), chunks("b", &shifted));
        assert_eq!(a.iter().map(|c| u64::from(c.len)).sum::<u64>(), data.len() as u64);
        let shared = b.iter().filter(|c| a.contains(c)).count();
        assert!(shared + 2 >= b.len(), "{shared} of {} chunks shared", b.len());
    }
}
