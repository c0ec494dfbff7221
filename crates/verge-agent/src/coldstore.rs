//! The edge cache's cold tier: an object-store interface (put, get,
//! delete by name) with a filesystem implementation, for a large slow
//! volume or a mounted bucket. Entries pushed out of the warm tier are
//! demoted here, still sealed, and promoted back on their next request.

use std::io;
use std::path::PathBuf;

/// Where cold entries live.
pub trait ObjectStore: Send + Sync {
    /// Stores `bytes` under `name`, replacing what was there.
    fn put(&self, name: &str, bytes: &[u8]) -> io::Result<()>;
    /// The bytes under `name`; `NotFound` when there are none.
    fn get(&self, name: &str) -> io::Result<Vec<u8>>;
    /// Removes `name`; `false` when it was not there.
    fn delete(&self, name: &str) -> io::Result<bool>;
    /// Every object's name (to index them at start, or to drop them all).
    fn names(&self) -> io::Result<Vec<String>>;
}

/// An object store in a directory: one file per object, written atomically.
pub struct FsObjectStore {
    dir: PathBuf,
}

impl FsObjectStore {
    /// A store in `dir`, created if missing.
    pub fn open(dir: PathBuf) -> io::Result<FsObjectStore> {
        std::fs::create_dir_all(&dir)?;
        Ok(FsObjectStore { dir })
    }

    fn path(&self, name: &str) -> io::Result<PathBuf> {
        // Names are the cache's hex file names; anything else is refused.
        if name.is_empty() || !name.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(io::Error::new(io::ErrorKind::InvalidInput, format!("bad object name {name:?}")));
        }
        Ok(self.dir.join(name))
    }
}

impl ObjectStore for FsObjectStore {
    fn put(&self, name: &str, bytes: &[u8]) -> io::Result<()> {
        verge_security::fsutil::write_atomic(&self.path(name)?, bytes, 0o600)
    }

    fn get(&self, name: &str) -> io::Result<Vec<u8>> {
        std::fs::read(self.path(name)?)
    }

    fn delete(&self, name: &str) -> io::Result<bool> {
        match std::fs::remove_file(self.path(name)?) {
            Ok(()) => Ok(true),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(false),
            Err(e) => Err(e),
        }
    }

    fn names(&self) -> io::Result<Vec<String>> {
        let mut names = Vec::new();
        for e in std::fs::read_dir(&self.dir)? {
            let name = e?.file_name().to_string_lossy().into_owned();
            // Temporary files of writes in flight are not objects.
            if self.path(&name).is_ok() {
                names.push(name);
            }
        }
        Ok(names)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn objects_round_trip_and_names_are_checked() {
        let dir = tempfile::tempdir().unwrap();
        let s = FsObjectStore::open(dir.path().join("cold")).unwrap();
        s.put("ab12", b"x").unwrap();
        assert_eq!(s.get("ab12").unwrap(), b"x");
        assert!(s.delete("ab12").unwrap());
        assert!(!s.delete("ab12").unwrap());
        assert_eq!(s.get("ab12").unwrap_err().kind(), io::ErrorKind::NotFound);
        assert!(s.put("../x", b"x").is_err());
        s.put("cd34", b"y").unwrap();
        std::fs::write(dir.path().join("cold/.cd34.tmp1-0"), b"half").unwrap();
        assert_eq!(s.names().unwrap(), ["cd34"]);
    }
}
