//! Writing secrets to disk: owner-only modes and atomic replacement, so a
//! crash leaves either the old file or the new one, never half of either.

use std::fs::{self, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};

/// Numbers each temporary file this process makes, so two writes of one
/// path at once never share (and truncate) one temporary file.
static TEMPORARIES: AtomicU64 = AtomicU64::new(0);

/// Creates `dir` (and parents) and restricts it to its owner (0700).
pub fn private_dir(dir: &Path) -> io::Result<()> {
    fs::create_dir_all(dir)?;
    fs::set_permissions(dir, fs::Permissions::from_mode(0o700))
}

/// Writes `bytes` to `path` atomically with mode `mode`: a temporary file
/// in the same directory (named `.NAME.tmpPID-N`, unique to this call),
/// fsynced, renamed over `path`, directory fsynced. Of two concurrent
/// writes of one path, the later rename wins whole.
pub fn write_atomic(path: &Path, bytes: &[u8], mode: u32) -> io::Result<()> {
    let dir = path.parent().filter(|d| !d.as_os_str().is_empty()).unwrap_or(Path::new("."));
    let name = path.file_name().ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "path has no file name"))?;
    let n = TEMPORARIES.fetch_add(1, Ordering::Relaxed);
    let tmp = dir.join(format!(".{}.tmp{}-{n}", name.to_string_lossy(), std::process::id()));
    let result = (|| {
        let mut f = OpenOptions::new().write(true).create(true).truncate(true).mode(mode).open(&tmp)?;
        f.set_permissions(fs::Permissions::from_mode(mode))?;
        f.write_all(bytes)?;
        f.sync_all()?;
        fs::rename(&tmp, path)?;
        fs::File::open(dir)?.sync_all()
    })();
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result
}

/// [`write_atomic`] with owner-only read/write (0600): keys and tokens.
pub fn write_secret(path: &Path, bytes: &[u8]) -> io::Result<()> {
    write_atomic(path, bytes, 0o600)
}

/// Lowercase hex of `bytes`.
pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Bytes of a hex string; `None` when it is not even-length lowercase or
/// uppercase hex.
pub fn unhex(s: &str) -> Option<Vec<u8>> {
    if s.len() % 2 != 0 {
        return None;
    }
    (0..s.len()).step_by(2).map(|i| u8::from_str_radix(s.get(i..i + 2)?, 16).ok()).collect()
}

/// SHA-256 of `bytes` as lowercase hex.
pub fn sha256_hex(bytes: &[u8]) -> String {
    hex(ring::digest::digest(&ring::digest::SHA256, bytes).as_ref())
}

/// `n` random bytes from the operating system.
pub fn random_bytes<const N: usize>() -> [u8; N] {
    let mut b = [0u8; N];
    getrandom::fill(&mut b).expect("the operating system's random source failed");
    b
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_are_owner_only_and_replaced_whole() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("k");
        write_secret(&p, b"one").unwrap();
        write_secret(&p, b"two").unwrap();
        assert_eq!(fs::read(&p).unwrap(), b"two");
        assert_eq!(fs::metadata(&p).unwrap().permissions().mode() & 0o777, 0o600);
        assert_eq!(fs::read_dir(dir.path()).unwrap().count(), 1);
    }

    #[test]
    fn concurrent_writes_of_one_path_each_land_whole() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("shared");
        let values: Vec<Vec<u8>> = (0..8u8).map(|i| vec![i; 256 << 10]).collect();
        std::thread::scope(|s| {
            for v in &values {
                let p = &p;
                s.spawn(move || {
                    for _ in 0..4 {
                        write_atomic(p, v, 0o600).unwrap();
                    }
                });
            }
        });
        let landed = fs::read(&p).unwrap();
        assert!(values.contains(&landed), "a torn file of {} bytes", landed.len());
        assert_eq!(fs::read_dir(dir.path()).unwrap().count(), 1, "a temporary file was left behind");
    }

    #[test]
    fn hex_round_trips_and_rejects_garbage() {
        assert_eq!(unhex(&hex(&[0, 1, 254, 255])).unwrap(), vec![0, 1, 254, 255]);
        assert!(unhex("abc").is_none());
        assert!(unhex("zz").is_none());
        assert!(unhex("é1").is_none());
    }
}
