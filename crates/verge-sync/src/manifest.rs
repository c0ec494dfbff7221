//! What a tree holds: every regular file with its size, mode, mtime and
//! content hash, found by walking a directory. Change detection reuses a
//! stored hash when size, mtime and inode are unchanged, so an unchanged
//! tree is rescanned without reading its files.

use std::collections::BTreeMap;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::error::{Result, SyncError};

/// Bytes of BLAKE3 kept as a file's identity (128 bits).
pub const HASH_LEN: usize = 16;
/// A file's content hash: BLAKE3 truncated to [`HASH_LEN`] bytes.
pub type Hash = [u8; HASH_LEN];

/// The content hash of `data`.
pub fn hash(data: &[u8]) -> Hash {
    let full = blake3::hash(data);
    let mut h = [0u8; HASH_LEN];
    h.copy_from_slice(&full.as_bytes()[..HASH_LEN]);
    h
}

/// The content hash of the file at `path`, read in pieces (no copy of the
/// whole file in memory).
pub fn hash_file(path: &Path) -> Result<Hash> {
    let mut hasher = blake3::Hasher::new();
    std::fs::File::open(path)
        .and_then(|f| hasher.update_reader(f).map(|_| ()))
        .map_err(|e| SyncError::io(format!("reading {}", path.display()), e))?;
    let mut h = [0u8; HASH_LEN];
    h.copy_from_slice(&hasher.finalize().as_bytes()[..HASH_LEN]);
    Ok(h)
}

/// One regular file of a tree.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Entry {
    /// Path relative to the tree's root with `/` separators; empty when the
    /// tree is a single file.
    pub path: String,
    /// Length in bytes.
    pub size: u64,
    /// Content hash.
    pub hash: Hash,
    /// Unix permission bits.
    pub mode: u32,
    /// Modification time, seconds since the epoch.
    pub mtime: i64,
}

/// The files and directories of a tree, sorted by path.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Manifest {
    /// Regular files.
    pub files: Vec<Entry>,
    /// Directories below the root (empty ones included).
    pub dirs: Vec<String>,
    /// Symlinks and special files that were skipped.
    pub skipped: Vec<String>,
}

/// What change detection remembers about a file.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
struct Known {
    size: u64,
    mtime_ns: i128,
    ino: u64,
    hash: String,
    /// FastCDC chunks, once computed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    chunks: Option<Vec<crate::cdc::ChunkRef>>,
}

impl Known {
    /// Whether the file still has the size, mtime and inode this was recorded for.
    fn describes(&self, meta: &std::fs::Metadata) -> bool {
        self.size == meta.len() && self.mtime_ns == mtime_ns(meta) && self.ino == meta.ino()
    }
}

/// Stored hashes keyed by path, valid while size, mtime and inode match.
#[derive(Debug, Default, Serialize, Deserialize)]
pub struct HashIndex {
    files: BTreeMap<String, Known>,
}

impl HashIndex {
    /// Loads the index at `path`; a missing or unreadable index starts empty
    /// (it is only a cache: every hash can be recomputed).
    pub fn load(path: &Path) -> Self {
        std::fs::read(path).ok().and_then(|b| serde_json::from_slice(&b).ok()).unwrap_or_default()
    }

    /// Writes the index atomically.
    pub fn save(&self, path: &Path) -> Result<()> {
        let json = serde_json::to_vec(self).map_err(|e| SyncError::io("encoding the hash index", e.into()))?;
        crate::fsio::write_atomic(path, &json)
    }

    /// The entry for `rel` while the file is unchanged.
    fn current(&self, rel: &str, meta: &std::fs::Metadata) -> Option<&Known> {
        self.files.get(rel).filter(|k| k.describes(meta))
    }

    fn lookup(&self, rel: &str, meta: &std::fs::Metadata) -> Option<Hash> {
        hex_decode(&self.current(rel, meta)?.hash)?.try_into().ok()
    }

    fn remember(&mut self, rel: &str, meta: &std::fs::Metadata, h: &Hash) {
        let k = Known { size: meta.len(), mtime_ns: mtime_ns(meta), ino: meta.ino(), hash: hex(h), chunks: None };
        self.files.insert(rel.to_string(), k);
    }

    /// The stored chunk list of the unchanged file `rel` at `path`.
    pub fn chunks(&self, rel: &str, path: &Path) -> Option<Vec<crate::cdc::ChunkRef>> {
        let meta = std::fs::metadata(path).ok()?;
        self.current(rel, &meta)?.chunks.clone()
    }

    /// Stores the chunk list of `rel` (at `path`) if its entry is current.
    pub fn remember_chunks(&mut self, rel: &str, path: &Path, chunks: &[crate::cdc::ChunkRef]) {
        let Ok(meta) = std::fs::metadata(path) else { return };
        if let Some(k) = self.files.get_mut(rel).filter(|k| k.describes(&meta)) {
            k.chunks = Some(chunks.to_vec());
        }
    }
}

fn mtime_ns(meta: &std::fs::Metadata) -> i128 {
    i128::from(meta.mtime()) * 1_000_000_000 + i128::from(meta.mtime_nsec())
}

/// Lowercase hex of `b`.
pub fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// The bytes of a lowercase or uppercase hex string, if it is one.
pub fn hex_decode(s: &str) -> Option<Vec<u8>> {
    if s.len() & 1 == 1 {
        return None;
    }
    (0..s.len()).step_by(2).map(|i| u8::from_str_radix(s.get(i..i + 2)?, 16).ok()).collect()
}

/// Joins a validated relative path onto `root` (the root itself for "").
pub fn join(root: &Path, rel: &str) -> PathBuf {
    if rel.is_empty() {
        root.to_path_buf()
    } else {
        root.join(rel)
    }
}

/// Checks that a path from a peer stays inside the sync root: relative,
/// `/`-separated normal components, no `.`/`..`, no NUL, no empty parts.
pub fn check_path(rel: &str) -> Result<()> {
    let ok =
        !rel.starts_with('/') && !rel.contains('\0') && rel.split('/').all(|c| !c.is_empty() && c != "." && c != "..") && rel.len() <= 4096;
    if ok {
        Ok(())
    } else {
        Err(SyncError::UnsafePath(rel.to_string()))
    }
}

impl Manifest {
    /// Walks `root` (a directory or a single file). A root that does not
    /// exist is an empty tree. `index` speeds up unchanged files.
    pub fn scan(root: &Path, mut index: Option<&mut HashIndex>) -> Result<Self> {
        let mut m = Manifest::default();
        let meta = match std::fs::symlink_metadata(root) {
            Ok(meta) => meta,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(m),
            Err(e) => return Err(SyncError::io(format!("reading {}", root.display()), e)),
        };
        if meta.is_file() {
            m.files.push(entry(root, "", &meta, index.as_deref_mut())?);
            return Ok(m);
        }
        let mut stack = vec![String::new()];
        while let Some(dir) = stack.pop() {
            let path = join(root, &dir);
            let rd = std::fs::read_dir(&path).map_err(|e| SyncError::io(format!("listing {}", path.display()), e))?;
            for item in rd {
                let item = item.map_err(|e| SyncError::io(format!("listing {}", path.display()), e))?;
                let Some(name) = item.file_name().to_str().map(str::to_string) else {
                    m.skipped.push(format!("{dir}/{}", item.file_name().to_string_lossy()));
                    continue;
                };
                if name.starts_with(crate::fsio::TEMP_PREFIX) {
                    continue;
                }
                let rel = if dir.is_empty() { name } else { format!("{dir}/{name}") };
                let meta = item.metadata().map_err(|e| SyncError::io(format!("reading {rel}"), e))?;
                if meta.is_dir() {
                    m.dirs.push(rel.clone());
                    stack.push(rel);
                } else if meta.is_file() {
                    m.files.push(entry(&join(root, &rel), &rel, &meta, index.as_deref_mut())?);
                } else {
                    m.skipped.push(rel);
                }
            }
        }
        m.files.sort_by(|a, b| a.path.cmp(&b.path));
        m.dirs.sort();
        Ok(m)
    }

    /// The file at `rel`, if present.
    pub fn get(&self, rel: &str) -> Option<&Entry> {
        self.files.binary_search_by(|e| e.path.as_str().cmp(rel)).ok().map(|i| &self.files[i])
    }

    /// Total bytes of all files.
    pub fn total_bytes(&self) -> u64 {
        self.files.iter().map(|e| e.size).sum()
    }
}

fn entry(path: &Path, rel: &str, meta: &std::fs::Metadata, index: Option<&mut HashIndex>) -> Result<Entry> {
    let cached = index.as_deref().and_then(|i| i.lookup(rel, meta));
    let hash = match cached {
        Some(h) => h,
        None => {
            let h = hash_file(path)?;
            if let Some(i) = index {
                i.remember(rel, meta, &h);
            }
            h
        }
    };
    Ok(Entry { path: rel.to_string(), size: meta.len(), hash, mode: meta.permissions().mode() & 0o7777, mtime: meta.mtime() })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scans_files_dirs_and_reuses_hashes() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("a/empty")).unwrap();
        std::fs::write(dir.path().join("a/x.txt"), b"hello").unwrap();
        std::fs::write(dir.path().join("top"), b"world").unwrap();
        let mut index = HashIndex::default();
        let m = Manifest::scan(dir.path(), Some(&mut index)).unwrap();
        assert_eq!(m.files.iter().map(|e| e.path.as_str()).collect::<Vec<_>>(), ["a/x.txt", "top"]);
        assert_eq!(m.dirs, ["a", "a/empty"]);
        assert_eq!(m.get("top").unwrap().hash, hash(b"world"));
        let idx_path = dir.path().join("../index.json");
        index.save(&idx_path).unwrap();
        let mut again = HashIndex::load(&idx_path);
        assert_eq!(again.files.len(), 2);
        assert_eq!(Manifest::scan(dir.path(), Some(&mut again)).unwrap(), m);
        let single = Manifest::scan(&dir.path().join("top"), None).unwrap();
        assert_eq!(single.files[0].path, "");
        assert!(Manifest::scan(&dir.path().join("missing"), None).unwrap().files.is_empty());
    }

    #[test]
    fn unsafe_paths_are_refused() {
        for bad in ["/etc/passwd", "../x", "a/../../x", "a//b", "", "a/./b", "a\0b"] {
            assert!(check_path(bad).is_err(), "{bad:?}");
        }
        check_path("a/b.txt").unwrap();
    }
}
