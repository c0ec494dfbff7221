//! Encryption at rest: AES-256-GCM under rotating per-node data keys, so
//! a stolen disk or backup reveals nothing and a leaked key exposes only
//! what was written while it was current.
//!
//! Keys live in a [`KeyRing`] directory (0700), one file per key named
//! `data-<id>-<created_ms>.key` holding its 32 bytes (0600): the name
//! keeps the creation time across restarts without a second file. Ids
//! increase; the highest is the current key, used for every new seal.
//!
//! Sealed bytes are `VSEAL1`, the key id (u32 big-endian), a 12-byte
//! random nonce, then the ciphertext and its 16-byte tag. The header is
//! authenticated together with the caller's aad, so neither can be
//! altered unnoticed.
//!
//! [`reseal_tree`] moves files sealed under older keys to the current
//! one; when a pass reports no errors, [`KeyRing::retire_unused`] deletes
//! the keys nothing uses any more.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::fs;
use std::io;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use ring::aead::{Aad, LessSafeKey, Nonce, UnboundKey, AES_256_GCM, NONCE_LEN};

use crate::fsutil::{private_dir, random_bytes, write_atomic, write_secret};

/// The first bytes of every sealed blob.
pub const MAGIC: &[u8; 6] = b"VSEAL1";
const HEADER_LEN: usize = MAGIC.len() + 4 + NONCE_LEN;
const TAG_LEN: usize = 16;
const KEY_LEN: usize = 32;

/// Why sealing, opening or key management failed.
#[derive(Debug, thiserror::Error)]
pub enum SealError {
    /// A file or directory could not be read or written.
    #[error("{path}: {source}")]
    Io {
        /// The file or directory concerned.
        path: PathBuf,
        /// The operating system's error.
        source: io::Error,
    },
    /// The bytes do not start with the `VSEAL1` header.
    #[error("not sealed data: the VSEAL1 header is missing")]
    NotSealed,
    /// The data names a key this ring does not hold (retired, or from another node).
    #[error("sealed under key {0}, which this key ring does not hold")]
    UnknownKey(u32),
    /// The data is too short to hold a header and a tag.
    #[error("sealed data is corrupt: {0}")]
    Corrupt(String),
    /// The tag does not match: the data or its header was altered, or the aad differs.
    #[error("authentication failed: the sealed data was altered or the aad does not match")]
    Authentication,
    /// The cryptographic library refused an operation (input beyond AES-GCM's limit).
    #[error("cryptography failed: {0}")]
    Crypto(&'static str),
    /// A file in the key directory looks like a key but is not a valid one.
    #[error("bad key file {path}: {why}")]
    BadKeyFile {
        /// The file.
        path: PathBuf,
        /// What is wrong with it.
        why: String,
    },
    /// The current key is in use for new data and cannot be retired.
    #[error("key {0} is the current key and cannot be retired")]
    RetireCurrent(u32),
    /// Every u32 key id has been used.
    #[error("key ids exhausted")]
    IdsExhausted,
    /// A reseal pass had errors, so keys may still be in use.
    #[error("the reseal pass had {0} errors; no key was retired")]
    IncompleteReseal(usize),
}

fn io_err(path: &Path) -> impl FnOnce(io::Error) -> SealError + '_ {
    move |source| SealError::Io { path: path.to_path_buf(), source }
}

struct DataKey {
    key: LessSafeKey,
    created_ms: u64,
    file: PathBuf,
}

/// A node's data keys, loaded from their directory.
pub struct KeyRing {
    dir: PathBuf,
    keys: BTreeMap<u32, DataKey>,
}

impl fmt::Debug for KeyRing {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KeyRing").field("dir", &self.dir).field("ids", &self.ids()).finish()
    }
}

impl KeyRing {
    /// Loads the keys in `dir`, creating the directory (0700) and key 1
    /// when there are none. Other files in the directory are ignored.
    pub fn open_or_create(dir: &Path, now_ms: u64) -> Result<KeyRing, SealError> {
        private_dir(dir).map_err(io_err(dir))?;
        let mut ring = KeyRing { dir: dir.to_path_buf(), keys: BTreeMap::new() };
        for entry in fs::read_dir(dir).map_err(io_err(dir))? {
            let entry = entry.map_err(io_err(dir))?;
            let Some((id, created_ms)) = entry.file_name().to_str().and_then(parse_key_name) else { continue };
            let path = entry.path();
            let bytes = fs::read(&path).map_err(io_err(&path))?;
            let mode = entry.metadata().map_err(io_err(&path))?.permissions().mode();
            if mode & 0o077 != 0 {
                tracing::warn!(path = %path.display(), mode = format!("{:o}", mode & 0o777), "data key file is readable by others");
            }
            let key = make_key(&bytes)
                .ok_or_else(|| SealError::BadKeyFile { path: path.clone(), why: format!("{} bytes, expected {KEY_LEN}", bytes.len()) })?;
            if ring.keys.insert(id, DataKey { key, created_ms, file: path.clone() }).is_some() {
                return Err(SealError::BadKeyFile { path, why: format!("a second file for key {id}") });
            }
        }
        if ring.keys.is_empty() {
            ring.create(1, now_ms)?;
        }
        Ok(ring)
    }

    /// The id of the key new data is sealed with.
    pub fn current_id(&self) -> u32 {
        self.keys.keys().next_back().copied().unwrap_or(0)
    }

    /// How long ago the current key was created.
    pub fn current_age_ms(&self, now_ms: u64) -> u64 {
        self.keys.values().next_back().map_or(0, |k| now_ms.saturating_sub(k.created_ms))
    }

    /// Every key id held, oldest first.
    pub fn ids(&self) -> Vec<u32> {
        self.keys.keys().copied().collect()
    }

    /// Creates a new key and makes it current; returns its id. Older keys
    /// stay, to open what they sealed.
    pub fn rotate(&mut self, now_ms: u64) -> Result<u32, SealError> {
        let id = self.current_id().checked_add(1).ok_or(SealError::IdsExhausted)?;
        self.create(id, now_ms)?;
        Ok(id)
    }

    /// Rotates when the current key is at least `period_ms` old; says whether it did.
    pub fn rotate_if_due(&mut self, now_ms: u64, period_ms: u64) -> Result<bool, SealError> {
        if self.current_age_ms(now_ms) < period_ms {
            return Ok(false);
        }
        self.rotate(now_ms)?;
        Ok(true)
    }

    /// Deletes key `id`. Whatever it sealed can no longer be opened, so
    /// call this only once nothing uses it (see [`KeyRing::retire_unused`]).
    pub fn retire(&mut self, id: u32) -> Result<(), SealError> {
        if id == self.current_id() {
            return Err(SealError::RetireCurrent(id));
        }
        let key = self.keys.get(&id).ok_or(SealError::UnknownKey(id))?;
        fs::remove_file(&key.file).map_err(io_err(&key.file))?;
        self.keys.remove(&id);
        fs::File::open(&self.dir).and_then(|d| d.sync_all()).map_err(io_err(&self.dir))
    }

    /// Retires every key other than the current one that `report` did not
    /// find in use; returns the ids retired. Refuses when the pass had
    /// errors, since an unreadable file may still need an old key.
    pub fn retire_unused(&mut self, report: &ResealReport) -> Result<Vec<u32>, SealError> {
        if !report.errors.is_empty() {
            return Err(SealError::IncompleteReseal(report.errors.len()));
        }
        let current = self.current_id();
        let unused: Vec<u32> = self.ids().into_iter().filter(|id| *id != current && !report.keys_in_use.contains(id)).collect();
        for id in &unused {
            self.retire(*id)?;
        }
        Ok(unused)
    }

    /// Encrypts `plaintext` under the current key; `aad` is authenticated
    /// but not stored, and must be given again to [`KeyRing::open`].
    pub fn seal(&self, plaintext: &[u8], aad: &[u8]) -> Result<Vec<u8>, SealError> {
        let id = self.current_id();
        let key = self.keys.get(&id).ok_or(SealError::UnknownKey(id))?;
        let nonce = random_bytes::<NONCE_LEN>();
        let mut out = Vec::with_capacity(HEADER_LEN + plaintext.len() + TAG_LEN);
        out.extend_from_slice(MAGIC);
        out.extend_from_slice(&id.to_be_bytes());
        out.extend_from_slice(&nonce);
        let full_aad = [&out[..], aad].concat();
        let mut body = plaintext.to_vec();
        key.key
            .seal_in_place_append_tag(Nonce::assume_unique_for_key(nonce), Aad::from(&full_aad), &mut body)
            .map_err(|_| SealError::Crypto("input too large for AES-256-GCM"))?;
        out.extend_from_slice(&body);
        Ok(out)
    }

    /// Decrypts `sealed` with the key its header names. Never panics on
    /// garbage: every failure is a [`SealError`].
    pub fn open(&self, sealed: &[u8], aad: &[u8]) -> Result<Vec<u8>, SealError> {
        if !sealed.starts_with(MAGIC) {
            return Err(SealError::NotSealed);
        }
        if sealed.len() < HEADER_LEN + TAG_LEN {
            return Err(SealError::Corrupt(format!("{} bytes, shorter than a header and tag", sealed.len())));
        }
        let id = sealed_key_id(sealed).ok_or(SealError::NotSealed)?;
        let key = self.keys.get(&id).ok_or(SealError::UnknownKey(id))?;
        let (header, body) = sealed.split_at(HEADER_LEN);
        let nonce = Nonce::try_assume_unique_for_key(&header[MAGIC.len() + 4..]).map_err(|_| SealError::Corrupt("bad nonce".into()))?;
        let full_aad = [header, aad].concat();
        let mut buf = body.to_vec();
        let plain_len = key.key.open_in_place(nonce, Aad::from(&full_aad), &mut buf).map_err(|_| SealError::Authentication)?.len();
        buf.truncate(plain_len);
        Ok(buf)
    }

    fn create(&mut self, id: u32, now_ms: u64) -> Result<(), SealError> {
        let bytes = random_bytes::<KEY_LEN>();
        let path = self.dir.join(format!("data-{id}-{now_ms}.key"));
        let key = make_key(&bytes).ok_or(SealError::Crypto("AES-256-GCM refused a fresh key"))?;
        write_secret(&path, &bytes).map_err(io_err(&path))?;
        self.keys.insert(id, DataKey { key, created_ms: now_ms, file: path });
        Ok(())
    }
}

fn make_key(bytes: &[u8]) -> Option<LessSafeKey> {
    (bytes.len() == KEY_LEN).then(|| UnboundKey::new(&AES_256_GCM, bytes).ok().map(LessSafeKey::new)).flatten()
}

/// `data-<id>-<created_ms>.key` → `(id, created_ms)`.
fn parse_key_name(name: &str) -> Option<(u32, u64)> {
    let (id, created) = name.strip_prefix("data-")?.strip_suffix(".key")?.split_once('-')?;
    let digits = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
    if !digits(id) || !digits(created) {
        return None;
    }
    Some((id.parse().ok()?, created.parse().ok()?))
}

/// The key id in a sealed blob's header; `None` when `bytes` is not sealed.
pub fn sealed_key_id(bytes: &[u8]) -> Option<u32> {
    let rest = bytes.strip_prefix(MAGIC.as_slice())?;
    let id: [u8; 4] = rest.get(..4)?.try_into().ok()?;
    Some(u32::from_be_bytes(id))
}

/// What one [`reseal_tree`] pass did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ResealReport {
    /// Regular files looked at.
    pub files_checked: u64,
    /// Files rewritten under the current key.
    pub files_resealed: u64,
    /// Key ids that files still name after the pass, the current one included.
    pub keys_in_use: BTreeSet<u32>,
    /// `path: error` for every file or directory that could not be handled.
    pub errors: Vec<String>,
}

/// Rewrites every sealed regular file under `root` that names an older key
/// so that it names the current one. Files are sealed with an empty aad
/// by convention (so a file can be moved without breaking it); unsealed
/// files are left alone, symbolic links are not followed. Each rewrite is
/// atomic, mode 0600. Writers of these files must not run concurrently
/// with a pass, or a rewrite may replace their newer content.
///
/// Only a missing or unreadable `root` is an `Err`; per-file failures are
/// collected in [`ResealReport::errors`] and the pass goes on.
pub fn reseal_tree(root: &Path, ring: &KeyRing) -> Result<ResealReport, SealError> {
    let mut report = ResealReport::default();
    let mut pending = vec![(root.to_path_buf(), fs::read_dir(root).map_err(io_err(root))?)];
    while let Some((dir, entries)) = pending.last_mut() {
        let Some(entry) = entries.next() else {
            pending.pop();
            continue;
        };
        let entry = match entry {
            Ok(entry) => entry,
            Err(e) => {
                report.errors.push(format!("{}: {e}", dir.display()));
                continue;
            }
        };
        let path = entry.path();
        match entry.file_type() {
            Ok(t) if t.is_dir() => match fs::read_dir(&path) {
                Ok(rd) => pending.push((path, rd)),
                Err(e) => report.errors.push(format!("{}: {e}", path.display())),
            },
            Ok(t) if t.is_file() => {
                report.files_checked += 1;
                if let Err(e) = reseal_file(&path, ring, &mut report) {
                    report.errors.push(format!("{}: {e}", path.display()));
                }
            }
            Ok(_) => {}
            Err(e) => report.errors.push(format!("{}: {e}", path.display())),
        }
    }
    Ok(report)
}

fn reseal_file(path: &Path, ring: &KeyRing, report: &mut ResealReport) -> Result<(), SealError> {
    let bytes = fs::read(path).map_err(io_err(path))?;
    let Some(id) = sealed_key_id(&bytes) else { return Ok(()) };
    if id == ring.current_id() {
        report.keys_in_use.insert(id);
        return Ok(());
    }
    let result = ring
        .open(&bytes, b"")
        .and_then(|plain| ring.seal(&plain, b""))
        .and_then(|sealed| write_atomic(path, &sealed, 0o600).map_err(io_err(path)));
    match result {
        Ok(()) => {
            report.files_resealed += 1;
            report.keys_in_use.insert(ring.current_id());
        }
        Err(_) => {
            report.keys_in_use.insert(id);
        }
    }
    result
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const DAY: u64 = 86_400_000;

    fn mode(p: &Path) -> u32 {
        fs::metadata(p).unwrap().permissions().mode() & 0o777
    }

    #[test]
    fn seals_and_opens_with_aad() {
        let dir = tempfile::tempdir().unwrap();
        let ring = KeyRing::open_or_create(&dir.path().join("keys"), 0).unwrap();
        assert_eq!(ring.ids(), [1]);
        let sealed = ring.seal(b"patient record 42", b"workload/a").unwrap();
        assert_eq!(sealed_key_id(&sealed), Some(1));
        assert_eq!(ring.open(&sealed, b"workload/a").unwrap(), b"patient record 42");
        assert!(matches!(ring.open(&sealed, b"workload/b"), Err(SealError::Authentication)));
        let mut flipped = sealed.clone();
        let last = flipped.len() - 1;
        flipped[last] ^= 1;
        assert!(matches!(ring.open(&flipped, b"workload/a"), Err(SealError::Authentication)));
        assert!(matches!(ring.open(b"plain text", b""), Err(SealError::NotSealed)));
        assert!(matches!(ring.open(b"VSEAL1\0\0\0\x01short", b""), Err(SealError::Corrupt(_))));
        let mut other_key = sealed.clone();
        other_key[9] = 7;
        assert!(matches!(ring.open(&other_key, b"workload/a"), Err(SealError::UnknownKey(7))));
        assert_eq!(ring.seal(b"", b"").map(|s| ring.open(&s, b"").unwrap()).unwrap(), b"");
    }

    #[test]
    fn keys_are_private_and_survive_restart() {
        let dir = tempfile::tempdir().unwrap();
        let keys = dir.path().join("keys");
        let mut ring = KeyRing::open_or_create(&keys, 1000).unwrap();
        assert_eq!(mode(&keys), 0o700);
        assert_eq!(ring.rotate(5000).unwrap(), 2);
        let sealed = ring.seal(b"x", b"").unwrap();
        for entry in fs::read_dir(&keys).unwrap() {
            let p = entry.unwrap().path();
            assert_eq!(mode(&p), 0o600, "{}", p.display());
            assert_eq!(fs::read(&p).unwrap().len(), 32);
        }
        fs::write(keys.join("README"), "not a key").unwrap();
        let again = KeyRing::open_or_create(&keys, 9000).unwrap();
        assert_eq!((again.ids(), again.current_id(), again.current_age_ms(9000)), (vec![1, 2], 2, 4000));
        assert_eq!(again.open(&sealed, b"").unwrap(), b"x");

        fs::write(keys.join("data-3-9000.key"), [0u8; 5]).unwrap();
        assert!(matches!(KeyRing::open_or_create(&keys, 9000), Err(SealError::BadKeyFile { .. })));
    }

    #[test]
    fn rotation_is_due_by_age_and_the_current_key_stays() {
        let dir = tempfile::tempdir().unwrap();
        let mut ring = KeyRing::open_or_create(dir.path(), 0).unwrap();
        assert!(!ring.rotate_if_due(DAY, 30 * DAY).unwrap());
        assert!(ring.rotate_if_due(30 * DAY, 30 * DAY).unwrap());
        assert_eq!(ring.current_id(), 2);
        assert_eq!(ring.current_age_ms(31 * DAY), DAY);
        assert!(matches!(ring.retire(2), Err(SealError::RetireCurrent(2))));
        assert!(matches!(ring.retire(9), Err(SealError::UnknownKey(9))));
        ring.retire(1).unwrap();
        assert_eq!(ring.ids(), [2]);
        assert_eq!(fs::read_dir(dir.path()).unwrap().count(), 1);
    }

    #[test]
    fn reseal_moves_files_to_the_current_key_then_old_keys_retire() {
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().join("data");
        fs::create_dir_all(data.join("nested")).unwrap();
        let mut ring = KeyRing::open_or_create(&dir.path().join("keys"), 0).unwrap();
        let secret = b"the quick brown fox jumps over the lazy dog";
        let file = data.join("nested/blob");
        fs::write(&file, ring.seal(secret, b"").unwrap()).unwrap();
        fs::write(data.join("plain.txt"), b"not sealed").unwrap();
        std::os::unix::fs::symlink(&file, data.join("link")).unwrap();
        assert!(!fs::read(&file).unwrap().windows(secret.len()).any(|w| w == secret));

        ring.rotate(10).unwrap();
        let report = reseal_tree(&data, &ring).unwrap();
        assert_eq!((report.files_checked, report.files_resealed), (2, 1));
        assert!(report.errors.is_empty(), "{:?}", report.errors);
        assert_eq!(report.keys_in_use, BTreeSet::from([2]));
        assert_eq!(ring.retire_unused(&report).unwrap(), [1]);
        assert_eq!(ring.ids(), [2]);

        let sealed = fs::read(&file).unwrap();
        assert_eq!(sealed_key_id(&sealed), Some(2));
        assert!(!sealed.windows(secret.len()).any(|w| w == secret));
        assert_eq!(ring.open(&sealed, b"").unwrap(), secret);
        assert_eq!(mode(&file), 0o600);
        assert_eq!(fs::read(data.join("plain.txt")).unwrap(), b"not sealed");

        let again = reseal_tree(&data, &ring).unwrap();
        assert_eq!(again.files_resealed, 0);
    }

    #[test]
    fn a_failed_reseal_keeps_its_key() {
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().join("data");
        fs::create_dir_all(&data).unwrap();
        let mut ring = KeyRing::open_or_create(&dir.path().join("keys"), 0).unwrap();
        fs::write(data.join("with-aad"), ring.seal(b"x", b"not the file convention").unwrap()).unwrap();
        ring.rotate(1).unwrap();
        let report = reseal_tree(&data, &ring).unwrap();
        assert_eq!(report.errors.len(), 1);
        assert!(report.keys_in_use.contains(&1));
        assert!(matches!(ring.retire_unused(&report), Err(SealError::IncompleteReseal(1))));
        assert_eq!(ring.ids(), [1, 2]);
        assert!(reseal_tree(&dir.path().join("missing"), &ring).is_err());
    }

    #[test]
    fn key_names_parse_strictly() {
        assert_eq!(parse_key_name("data-3-1700000000000.key"), Some((3, 1_700_000_000_000)));
        for bad in [
            "data-3.key",
            "data--1.key",
            "data-x-1.key",
            "data-1-2.key.tmp",
            ".data-1-2.key.tmp7",
            "data-+1-2.key",
            "data-99999999999-1.key",
        ] {
            assert_eq!(parse_key_name(bad), None, "{bad}");
        }
    }

    proptest! {
        #[test]
        fn open_never_panics(garbage in proptest::collection::vec(any::<u8>(), 0..200), id in 0u32..4) {
            let dir = tempfile::tempdir().unwrap();
            let ring = KeyRing::open_or_create(dir.path(), 0).unwrap();
            prop_assert!(ring.open(&garbage, b"").is_err());
            let mut framed = MAGIC.to_vec();
            framed.extend_from_slice(&id.to_be_bytes());
            framed.extend_from_slice(&garbage);
            prop_assert!(ring.open(&framed, b"").is_err());
        }

        #[test]
        fn round_trips(plain in proptest::collection::vec(any::<u8>(), 0..2000), aad in proptest::collection::vec(any::<u8>(), 0..64)) {
            let dir = tempfile::tempdir().unwrap();
            let ring = KeyRing::open_or_create(dir.path(), 0).unwrap();
            let sealed = ring.seal(&plain, &aad).unwrap();
            prop_assert_eq!(sealed.len(), HEADER_LEN + plain.len() + TAG_LEN);
            prop_assert_eq!(ring.open(&sealed, &aad).unwrap(), plain);
        }
    }
}
