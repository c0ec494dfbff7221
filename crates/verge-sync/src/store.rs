//! The sender's memory of what each receiver acknowledged: per peer, the
//! hash each path had when the receiver confirmed it, and the content of
//! those versions (content-addressed, shared between peers) so the next
//! transfer can delta against exactly what the receiver holds.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use std::io::Write;

use crate::error::{Result, SyncError};
use crate::fsio::{write_atomic, write_atomic_with, Tee};
use crate::manifest::{hex, hex_decode, Hash, HASH_LEN};
use crate::signature::READ_PIECE;
use crate::transfer::Bases;

/// Acknowledged versions for one (peer, remote path), kept under a directory.
pub struct BaseStore {
    objects: PathBuf,
    acked_file: PathBuf,
    acked: BTreeMap<String, String>,
}

impl BaseStore {
    /// Opens the store at `dir` for the receiver named `peer` (any string:
    /// it is hashed into a file name).
    pub fn open(dir: &Path, peer: &str) -> Result<Self> {
        let objects = dir.join("objects");
        std::fs::create_dir_all(&objects).map_err(|e| SyncError::io(format!("creating {}", objects.display()), e))?;
        let acked_file = dir.join(format!("acked-{}.json", hex(&crate::manifest::hash(peer.as_bytes()))));
        let acked = std::fs::read(&acked_file).ok().and_then(|b| serde_json::from_slice(&b).ok()).unwrap_or_default();
        Ok(BaseStore { objects, acked_file, acked })
    }

    /// Records that the receiver now holds version `h` of `path`, keeping
    /// a copy of that version from `source` (streamed, unless already
    /// stored). Returns false, and records nothing, when `source` no longer
    /// holds that version.
    pub fn acknowledge(&mut self, path: &str, h: &Hash, source: &Path) -> Result<bool> {
        let object = self.objects.join(hex(h));
        if !object.exists() {
            let copied = write_atomic_with(&object, |w| {
                let io = |e| SyncError::io(format!("copying {}", source.display()), e);
                let mut hasher = blake3::Hasher::new();
                let mut tee = std::io::BufWriter::with_capacity(READ_PIECE, Tee(&mut hasher, w));
                std::io::copy(&mut std::fs::File::open(source).map_err(io)?, &mut tee).map_err(io)?;
                tee.flush().map_err(io)?;
                drop(tee);
                if hasher.finalize().as_bytes()[..HASH_LEN] != h[..] {
                    return Err(SyncError::HashMismatch { path: path.to_string() });
                }
                Ok(())
            });
            match copied {
                Err(SyncError::HashMismatch { .. }) => return Ok(false),
                other => other?,
            }
        }
        self.acked.insert(path.to_string(), hex(h));
        Ok(true)
    }

    /// Forgets every path but those `keep` accepts: after a sync, the
    /// acknowledged state is exactly what the receiver confirmed.
    pub fn retain(&mut self, keep: impl Fn(&str) -> bool) {
        self.acked.retain(|p, _| keep(p));
    }

    /// Writes the acknowledged map durably.
    pub fn save(&self) -> Result<()> {
        let json = serde_json::to_vec(&self.acked).map_err(|e| SyncError::io("encoding acknowledged versions", e.into()))?;
        write_atomic(&self.acked_file, &json)
    }
}

impl Bases for BaseStore {
    fn known(&self, path: &str) -> Option<Hash> {
        hex_decode(self.acked.get(path)?)?.try_into().ok()
    }

    fn load(&self, path: &str, hash: &Hash) -> Option<Vec<u8>> {
        if self.known(path).as_ref() != Some(hash) {
            return None;
        }
        let data = std::fs::read(self.objects.join(hex(hash))).ok()?;
        (crate::manifest::hash(&data) == *hash).then_some(data)
    }

    fn base_path(&self, path: &str, hash: &Hash) -> Option<PathBuf> {
        (self.known(path).as_ref() == Some(hash)).then(|| self.objects.join(hex(hash)))
    }

    fn acked(&self) -> Vec<(String, Hash)> {
        self.acked.iter().filter_map(|(p, h)| Some((p.clone(), hex_decode(h)?.try_into().ok()?))).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::manifest::hash;

    #[test]
    fn remembers_acknowledged_versions_across_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = BaseStore::open(dir.path(), "node-b:/data").unwrap();
        let source = dir.path().join("a.txt");
        std::fs::write(&source, b"v1").unwrap();
        assert!(!s.acknowledge("a.txt", &hash(b"v0"), &source).unwrap(), "a version the source no longer holds");
        assert_eq!(s.known("a.txt"), None);
        assert!(s.acknowledge("a.txt", &hash(b"v1"), &source).unwrap());
        s.save().unwrap();
        let s = BaseStore::open(dir.path(), "node-b:/data").unwrap();
        assert_eq!(s.known("a.txt"), Some(hash(b"v1")));
        assert_eq!(s.load("a.txt", &hash(b"v1")).unwrap(), b"v1");
        assert_eq!(s.load("a.txt", &hash(b"v2")), None);
        assert_eq!(BaseStore::open(dir.path(), "other").unwrap().known("a.txt"), None);
    }
}
