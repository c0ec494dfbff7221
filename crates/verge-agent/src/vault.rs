//! Encryption at rest on the agent: every file the edge cache and the sync
//! receiver keep (cache entries, staged chunks, remembered offers) is
//! sealed with AES-256-GCM under the node's current data key
//! (`DATA_DIR/keys`, 0600). Keys rotate on the configured period; a
//! background pass then re-encrypts older files and deletes keys nothing
//! uses any more.
//!
//! Without `security.encryption` the same calls write plain files, so the
//! callers have one code path.

use std::io;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use tokio::sync::watch;
use verge_security::seal::{reseal_tree, KeyRing};

/// How often the rotation task checks whether the key is due.
const CHECK_EVERY: Duration = Duration::from_secs(60);

/// Seals and opens the agent's files at rest.
pub struct Vault {
    ring: Option<RwLock<KeyRing>>,
    /// Writers hold it shared; a re-encryption pass holds it alone, so it
    /// never rewrites a file with content older than a concurrent write.
    writers: RwLock<()>,
}

fn now_ms() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64)
}

fn seal_err(e: verge_security::seal::SealError) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, e.to_string())
}

impl Vault {
    /// Opens or creates the key ring under `keys_dir`; `None` keeps files plain.
    pub fn open(keys_dir: Option<&Path>) -> io::Result<Vault> {
        let ring = keys_dir.map(|d| KeyRing::open_or_create(d, now_ms()).map_err(seal_err)).transpose()?;
        Ok(Vault { ring: ring.map(RwLock::new), writers: RwLock::new(()) })
    }

    /// Whether files are sealed.
    pub fn sealing(&self) -> bool {
        self.ring.is_some()
    }

    /// When the current data key was made, ms since the epoch.
    pub fn key_created_ms(&self) -> Option<u64> {
        let ring = self.ring.as_ref()?.read().unwrap_or_else(|p| p.into_inner());
        let now = now_ms();
        Some(now.saturating_sub(ring.current_age_ms(now)))
    }

    /// Writes `plain` to `path` (sealed when on), atomically, mode 0600.
    pub fn write(&self, path: &Path, plain: &[u8]) -> io::Result<()> {
        let _shared = self.writers.read().unwrap_or_else(|p| p.into_inner());
        let bytes = match &self.ring {
            Some(r) => r.read().unwrap_or_else(|p| p.into_inner()).seal(plain, b"").map_err(seal_err)?,
            None => plain.to_vec(),
        };
        verge_security::fsutil::write_atomic(path, &bytes, 0o600)
    }

    /// Reads `path`, opening it when sealing is on. A file that fails
    /// authentication is an `InvalidData` error, never garbage.
    pub fn read(&self, path: &Path) -> io::Result<Vec<u8>> {
        self.unseal(std::fs::read(path)?)
    }

    /// Opens bytes as [`Vault::write`] stored them (from a file or a cold
    /// object store).
    pub fn unseal(&self, bytes: Vec<u8>) -> io::Result<Vec<u8>> {
        match &self.ring {
            Some(r) => r.read().unwrap_or_else(|p| p.into_inner()).open(&bytes, b"").map_err(seal_err),
            None => Ok(bytes),
        }
    }

    /// Rotates the key when it is older than `period`, re-encrypts what
    /// lies under `roots` and retires keys no file uses. Returns whether
    /// it rotated.
    pub fn rotate_if_due(&self, period: Duration, roots: &[PathBuf]) -> io::Result<bool> {
        let Some(ring) = &self.ring else { return Ok(false) };
        let rotated =
            ring.write().unwrap_or_else(|p| p.into_inner()).rotate_if_due(now_ms(), period.as_millis() as u64).map_err(seal_err)?;
        let stale = ring.read().unwrap_or_else(|p| p.into_inner()).ids().len() > 1;
        if !rotated && !stale {
            return Ok(false);
        }
        let _alone = self.writers.write().unwrap_or_else(|p| p.into_inner());
        let mut keys_in_use = std::collections::BTreeSet::new();
        let mut complete = true;
        for root in roots.iter().filter(|r| r.exists()) {
            let report = reseal_tree(root, &ring.read().unwrap_or_else(|p| p.into_inner())).map_err(seal_err)?;
            tracing::info!(root = %root.display(), checked = report.files_checked, resealed = report.files_resealed, "re-encrypted under the new data key");
            complete &= report.errors.is_empty();
            for e in &report.errors {
                tracing::warn!(error = %e, "re-encryption skipped a file");
            }
            keys_in_use.extend(report.keys_in_use);
        }
        if complete {
            let mut ring = ring.write().unwrap_or_else(|p| p.into_inner());
            let current = ring.current_id();
            for id in ring.ids().into_iter().filter(|id| *id != current && !keys_in_use.contains(id)) {
                ring.retire(id).map_err(seal_err)?;
                tracing::info!(key = id, "retired an old data key");
            }
        }
        Ok(rotated)
    }

    /// Runs [`Vault::rotate_if_due`] in the background until shutdown.
    pub fn spawn_rotation(self: Arc<Self>, period: Duration, roots: Vec<PathBuf>, mut shutdown: watch::Receiver<bool>) {
        if !self.sealing() {
            return;
        }
        let every = CHECK_EVERY.min(period / 4).max(Duration::from_millis(250));
        tokio::spawn(async move {
            loop {
                tokio::select! {
                    _ = tokio::time::sleep(every) => {}
                    _ = shutdown.wait_for(|s| *s) => return,
                }
                let (v, r) = (self.clone(), roots.clone());
                match tokio::task::spawn_blocking(move || v.rotate_if_due(period, &r)).await {
                    Ok(Ok(true)) => tracing::info!("data key rotated"),
                    Ok(Ok(false)) => {}
                    Ok(Err(e)) => tracing::error!(error = %e, "data key rotation failed"),
                    Err(e) => tracing::error!(error = %e, "data key rotation task failed"),
                }
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sealed_files_hide_their_content_and_survive_rotation() {
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().join("data");
        std::fs::create_dir_all(&data).unwrap();
        let vault = Vault::open(Some(&dir.path().join("keys"))).unwrap();
        let f = data.join("entry");
        vault.write(&f, b"the secret payload").unwrap();
        assert!(!String::from_utf8_lossy(&std::fs::read(&f).unwrap()).contains("secret"));
        assert_eq!(vault.read(&f).unwrap(), b"the secret payload");
        assert!(vault.rotate_if_due(Duration::ZERO, std::slice::from_ref(&data)).unwrap());
        assert_eq!(vault.read(&f).unwrap(), b"the secret payload");
        assert_eq!(std::fs::read_dir(dir.path().join("keys")).unwrap().count(), 1, "the old key was not retired");
        let mut bytes = std::fs::read(&f).unwrap();
        let last = bytes.len() - 1;
        bytes[last] ^= 1;
        std::fs::write(&f, bytes).unwrap();
        assert_eq!(vault.read(&f).unwrap_err().kind(), io::ErrorKind::InvalidData);
        let plain = Vault::open(None).unwrap();
        plain.write(&f, b"clear").unwrap();
        assert_eq!(std::fs::read(&f).unwrap(), b"clear");
    }
}
