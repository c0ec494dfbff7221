//! The audit log: one JSON line per security-relevant action, each entry
//! carrying the SHA-256 of the one before it, so that editing, deleting,
//! inserting or reordering entries breaks the chain where it happened,
//! and — against a head recorded elsewhere — so does cutting the tail.
//!
//! An entry's `hash` is SHA-256 over `verge-audit-v1\n`, `prev`, `seq` and
//! `ts_ms` (8 bytes big-endian each), then `actor`, `action`, `target`,
//! `outcome` and `reason`, each as a 4-byte big-endian length and its
//! UTF-8 bytes. The first entry has seq 1 and `prev` = [`GENESIS`].
//!
//! Crash safety: each entry is written as one line and fsynced before
//! [`AuditLog::append`] returns. A final line without its newline is an
//! append that never completed: [`AuditLog::open`] cuts it away, and
//! [`verify`] and [`read`] skip it (a concurrent append may be midway).

use std::fs::{File, OpenOptions};
use std::io::{self, BufRead, BufReader, Write};
use std::os::fd::AsRawFd;
use std::os::unix::fs::{FileExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::fsutil::sha256_hex;

/// The `prev` of the first entry: 64 zeros.
pub const GENESIS: &str = "0000000000000000000000000000000000000000000000000000000000000000";
/// The longest text field stored; longer ones are cut at a character
/// boundary and end in `…`, so one huge value cannot bloat the log.
pub const MAX_FIELD_BYTES: usize = 4096;
const DOMAIN: &[u8] = b"verge-audit-v1\n";

/// Why the audit log could not be opened, written or read.
#[derive(Debug, thiserror::Error)]
pub enum AuditError {
    /// The file could not be read or written.
    #[error("{path}: {source}")]
    Io {
        /// The log file.
        path: PathBuf,
        /// The operating system's error.
        source: io::Error,
    },
    /// Another writer holds the log; two writers would fork the chain.
    #[error("{0}: another writer has the audit log open")]
    Locked(PathBuf),
    /// The log cannot be continued or listed: an entry does not parse or does not match its hash.
    #[error("audit log is corrupt: {0}")]
    Corrupt(String),
    /// A failed write could not be rolled back; appending more would corrupt the log.
    #[error("a failed audit write could not be rolled back; reopen the log")]
    Poisoned,
}

fn io_err(path: &Path) -> impl FnOnce(io::Error) -> AuditError + '_ {
    move |source| AuditError::Io { path: path.to_path_buf(), source }
}

/// One audited action.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuditEntry {
    /// Position in the log, from 1, without gaps.
    pub seq: u64,
    /// When it happened, ms since the Unix epoch.
    pub ts_ms: u64,
    /// Who acted (a user, token or node id).
    pub actor: String,
    /// What was done (`node.drain`, `token.create`, …).
    pub action: String,
    /// What it was done to.
    pub target: String,
    /// `allowed`, `denied`, `failed`, …
    pub outcome: String,
    /// Why: the rule or error behind the outcome.
    pub reason: String,
    /// The previous entry's hash ([`GENESIS`] for the first).
    pub prev: String,
    /// This entry's hash, see the module documentation.
    pub hash: String,
}

impl AuditEntry {
    /// The hash this entry's content calls for (its `hash` field aside).
    pub fn compute_hash(&self) -> String {
        let mut m = Vec::with_capacity(256);
        m.extend_from_slice(DOMAIN);
        m.extend_from_slice(self.prev.as_bytes());
        m.extend_from_slice(&self.seq.to_be_bytes());
        m.extend_from_slice(&self.ts_ms.to_be_bytes());
        for field in [&self.actor, &self.action, &self.target, &self.outcome, &self.reason] {
            let len = u32::try_from(field.len()).unwrap_or(u32::MAX);
            m.extend_from_slice(&len.to_be_bytes());
            m.extend_from_slice(field.as_bytes());
        }
        sha256_hex(&m)
    }
}

/// The single writer of an audit log file, holding an exclusive lock on it.
#[derive(Debug)]
pub struct AuditLog {
    path: PathBuf,
    file: File,
    len: u64,
    seq: u64,
    hash: String,
    poisoned: bool,
}

impl AuditLog {
    /// Opens the log at `path`, creating it (0600) if absent, and continues
    /// its chain from the last entry. A partial final line left by a crash
    /// is truncated away. Fails when another writer holds the log, or when
    /// the last entry does not parse or match its hash.
    pub fn open(path: &Path) -> Result<AuditLog, AuditError> {
        let file = OpenOptions::new().read(true).append(true).create(true).mode(0o600).open(path).map_err(io_err(path))?;
        // SAFETY: flock only reads the descriptor number, which `file` owns and keeps open.
        if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
            let e = io::Error::last_os_error();
            if e.raw_os_error() == Some(libc::EWOULDBLOCK) {
                return Err(AuditError::Locked(path.to_path_buf()));
            }
            return Err(io_err(path)(e));
        }
        file.set_permissions(std::fs::Permissions::from_mode(0o600)).map_err(io_err(path))?;
        let len = file.metadata().map_err(io_err(path))?.len();
        let (complete, last) = last_line(&file, len).map_err(io_err(path))?;
        if complete < len {
            tracing::warn!(path = %path.display(), bytes = len - complete, "cutting a partial audit line left by an interrupted write");
            file.set_len(complete).and_then(|()| file.sync_data()).map_err(io_err(path))?;
        }
        let (seq, hash) = match last {
            None => (0, GENESIS.to_string()),
            Some(line) => {
                let entry: AuditEntry = serde_json::from_slice(&line).map_err(|e| AuditError::Corrupt(format!("last entry: {e}")))?;
                if entry.hash != entry.compute_hash() {
                    return Err(AuditError::Corrupt(format!("last entry (seq {}) does not match its hash", entry.seq)));
                }
                (entry.seq, entry.hash)
            }
        };
        Ok(AuditLog { path: path.to_path_buf(), file, len: complete, seq, hash, poisoned: false })
    }

    /// Appends one entry and fsyncs it before returning. Text fields over
    /// [`MAX_FIELD_BYTES`] are cut. On a failed write the file is cut back
    /// to its previous length, so the chain stays whole.
    pub fn append(
        &mut self,
        ts_ms: u64,
        actor: &str,
        action: &str,
        target: &str,
        outcome: &str,
        reason: &str,
    ) -> Result<AuditEntry, AuditError> {
        if self.poisoned {
            return Err(AuditError::Poisoned);
        }
        let seq = self.seq.checked_add(1).ok_or_else(|| AuditError::Corrupt("sequence numbers exhausted".into()))?;
        let mut entry = AuditEntry {
            seq,
            ts_ms,
            actor: clip(actor),
            action: clip(action),
            target: clip(target),
            outcome: clip(outcome),
            reason: clip(reason),
            prev: self.hash.clone(),
            hash: String::new(),
        };
        entry.hash = entry.compute_hash();
        let mut line = serde_json::to_vec(&entry).map_err(|e| io_err(&self.path)(e.into()))?;
        line.push(b'\n');
        if let Err(e) = self.file.write_all(&line).and_then(|()| self.file.sync_data()) {
            if self.file.set_len(self.len).and_then(|()| self.file.sync_data()).is_err() {
                self.poisoned = true;
            }
            return Err(io_err(&self.path)(e));
        }
        self.len += line.len() as u64;
        self.seq = entry.seq;
        self.hash = entry.hash.clone();
        Ok(entry)
    }

    /// The last entry's seq and hash (0 and [`GENESIS`] when empty): record
    /// it elsewhere to detect a truncated tail with [`verify`].
    pub fn head(&self) -> (u64, String) {
        (self.seq, self.hash.clone())
    }
}

fn clip(s: &str) -> String {
    if s.len() <= MAX_FIELD_BYTES {
        return s.to_string();
    }
    let mut end = MAX_FIELD_BYTES - '…'.len_utf8();
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &s[..end])
}

/// Finds the end of the last complete line of `file` (`len` bytes) and
/// that line's bytes, reading backwards in growing chunks.
fn last_line(file: &File, len: u64) -> io::Result<(u64, Option<Vec<u8>>)> {
    let mut start = len;
    let mut buf: Vec<u8> = Vec::new();
    loop {
        if let Some(last_nl) = buf.iter().rposition(|&b| b == b'\n') {
            let line_start = buf[..last_nl].iter().rposition(|&b| b == b'\n').map(|i| i + 1);
            match line_start {
                Some(from) => return Ok((start + last_nl as u64 + 1, Some(buf[from..last_nl].to_vec()))),
                None if start == 0 => return Ok((last_nl as u64 + 1, Some(buf[..last_nl].to_vec()))),
                None => {}
            }
        } else if start == 0 {
            return Ok((0, None));
        }
        let step = start.min((buf.len() as u64).max(8192));
        start -= step;
        let mut chunk = vec![0u8; step as usize];
        file.read_exact_at(&mut chunk, start)?;
        chunk.extend_from_slice(&buf);
        buf = chunk;
    }
}

/// Where and why a log stops being trustworthy.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Tampered {
    /// The seq of the offending entry (the one expected, when the line does not parse or is missing).
    pub seq: u64,
    /// The 1-based line number.
    pub line: u64,
    /// What is wrong.
    pub why: String,
}

/// The result of [`verify`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VerifyReport {
    /// Entries found intact before the first bad one (all of them when none is bad).
    pub entries: u64,
    /// The first sign of tampering, if any.
    pub first_bad: Option<Tampered>,
}

/// Checks the whole chain at `path`: every line parses, seqs run from 1
/// without gaps, each `prev` is the previous hash and each hash matches
/// its entry. With `expected_head` (a head recorded earlier), also checks
/// that the log reaches that seq with that hash, which catches a cut tail.
/// Only I/O failures are errors; tampering is reported in the result.
pub fn verify(path: &Path, expected_head: Option<(u64, &str)>) -> Result<VerifyReport, AuditError> {
    let mut lines = Lines::open(path)?;
    let (mut seq, mut hash) = (0u64, GENESIS.to_string());
    let bad = |entries, seq, line, why: String| Ok(VerifyReport { entries, first_bad: Some(Tampered { seq, line, why }) });
    while let Some((line_no, bytes)) = lines.next_line()? {
        let entry: AuditEntry = match serde_json::from_slice(&bytes) {
            Ok(entry) => entry,
            Err(e) => return bad(seq, seq + 1, line_no, format!("line does not parse: {e}")),
        };
        if entry.seq != seq + 1 {
            return bad(seq, entry.seq, line_no, format!("seq {} follows seq {seq}: entries deleted, inserted or reordered", entry.seq));
        }
        if entry.prev != hash {
            return bad(seq, entry.seq, line_no, "prev is not the previous entry's hash: the chain is broken".into());
        }
        if entry.hash != entry.compute_hash() {
            return bad(seq, entry.seq, line_no, "hash does not match the entry's content: the entry was edited".into());
        }
        if let Some((head_seq, head_hash)) = expected_head {
            if entry.seq == head_seq && entry.hash != head_hash {
                return bad(seq, entry.seq, line_no, "hash differs from the recorded head: the log was rewritten".into());
            }
        }
        seq = entry.seq;
        hash = entry.hash;
    }
    if let Some((head_seq, _)) = expected_head {
        if seq < head_seq {
            return bad(
                seq,
                seq + 1,
                lines.line_no + 1,
                format!("log ends at seq {seq} but the recorded head is seq {head_seq}: the tail was cut"),
            );
        }
    }
    Ok(VerifyReport { entries: seq, first_bad: None })
}

/// Up to `limit` entries with seq greater than `since_seq`, oldest first.
/// Scans from the start; a line that does not parse is an error.
pub fn read(path: &Path, since_seq: u64, limit: usize) -> Result<Vec<AuditEntry>, AuditError> {
    let mut lines = Lines::open(path)?;
    let mut out = Vec::new();
    while out.len() < limit {
        let Some((line_no, bytes)) = lines.next_line()? else { break };
        let entry: AuditEntry = serde_json::from_slice(&bytes).map_err(|e| AuditError::Corrupt(format!("line {line_no}: {e}")))?;
        if entry.seq > since_seq {
            out.push(entry);
        }
    }
    Ok(out)
}

/// Complete lines of a log file, without their newlines; a final
/// unterminated line is not returned.
struct Lines {
    path: PathBuf,
    reader: BufReader<File>,
    line_no: u64,
    buf: Vec<u8>,
}

impl Lines {
    fn open(path: &Path) -> Result<Lines, AuditError> {
        let file = File::open(path).map_err(io_err(path))?;
        Ok(Lines { path: path.to_path_buf(), reader: BufReader::new(file), line_no: 0, buf: Vec::new() })
    }

    fn next_line(&mut self) -> Result<Option<(u64, Vec<u8>)>, AuditError> {
        self.buf.clear();
        let n = self.reader.read_until(b'\n', &mut self.buf).map_err(io_err(&self.path))?;
        if n == 0 || self.buf.last() != Some(&b'\n') {
            return Ok(None);
        }
        self.buf.pop();
        self.line_no += 1;
        Ok(Some((self.line_no, std::mem::take(&mut self.buf))))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs;

    fn six(path: &Path) -> AuditLog {
        let mut log = AuditLog::open(path).unwrap();
        for i in 1..=6u64 {
            log.append(1000 + i, "admin", "node.drain", &format!("edge-{i}"), "allowed", "role operator").unwrap();
        }
        log
    }

    fn rewrite_line(path: &Path, index: usize, f: impl FnOnce(&str) -> Option<String>) {
        let text = fs::read_to_string(path).unwrap();
        let mut lines: Vec<String> = text.lines().map(str::to_string).collect();
        match f(&lines[index]) {
            Some(new) => lines[index] = new,
            None => {
                lines.remove(index);
            }
        }
        fs::write(path, lines.iter().map(|l| format!("{l}\n")).collect::<String>()).unwrap();
    }

    #[test]
    fn an_intact_log_verifies_and_is_private() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("audit.log");
        let log = six(&path);
        let (seq, hash) = log.head();
        assert_eq!(seq, 6);
        assert_eq!(verify(&path, Some((seq, &hash))).unwrap(), VerifyReport { entries: 6, first_bad: None });
        assert_eq!(fs::metadata(&path).unwrap().permissions().mode() & 0o777, 0o600);
        let first = read(&path, 0, 1).unwrap();
        assert_eq!((first[0].seq, first[0].prev.as_str()), (1, GENESIS));
    }

    #[test]
    fn an_edited_field_is_found_at_its_entry() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("audit.log");
        drop(six(&path));
        rewrite_line(&path, 2, |l| Some(l.replace("\"allowed\"", "\"denied\"")));
        let report = verify(&path, None).unwrap();
        let bad = report.first_bad.unwrap();
        assert_eq!((report.entries, bad.seq, bad.line), (2, 3, 3));
        assert!(bad.why.contains("edited"), "{}", bad.why);
    }

    #[test]
    fn a_deleted_line_breaks_the_sequence() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("audit.log");
        drop(six(&path));
        rewrite_line(&path, 3, |_| None);
        let bad = verify(&path, None).unwrap().first_bad.unwrap();
        assert_eq!((bad.seq, bad.line), (5, 4));
        assert!(bad.why.contains("seq 5 follows seq 3"), "{}", bad.why);
    }

    #[test]
    fn a_rechained_edit_is_caught_by_the_next_entry() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("audit.log");
        drop(six(&path));
        rewrite_line(&path, 2, |l| {
            let mut e: AuditEntry = serde_json::from_str(l).unwrap();
            e.outcome = "denied".into();
            e.hash = e.compute_hash();
            Some(serde_json::to_string(&e).unwrap())
        });
        let bad = verify(&path, None).unwrap().first_bad.unwrap();
        assert_eq!(bad.seq, 4);
        assert!(bad.why.contains("chain is broken"));
    }

    #[test]
    fn a_cut_tail_needs_the_recorded_head() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("audit.log");
        let (seq, hash) = six(&path).head();
        rewrite_line(&path, 5, |_| None);
        assert_eq!(verify(&path, None).unwrap(), VerifyReport { entries: 5, first_bad: None });
        let bad = verify(&path, Some((seq, &hash))).unwrap().first_bad.unwrap();
        assert_eq!((bad.seq, bad.line), (6, 6));
        assert!(bad.why.contains("tail was cut"));
        let other = verify(&path, Some((5, GENESIS))).unwrap().first_bad.unwrap();
        assert!(other.why.contains("recorded head"));
    }

    #[test]
    fn garbage_lines_are_reported() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("audit.log");
        drop(six(&path));
        rewrite_line(&path, 0, |_| Some("{not json".into()));
        let bad = verify(&path, None).unwrap().first_bad.unwrap();
        assert_eq!((bad.seq, bad.line), (1, 1));
        assert!(matches!(read(&path, 0, 10), Err(AuditError::Corrupt(_))));
    }

    #[test]
    fn reopening_continues_the_chain_and_cuts_a_partial_line() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("audit.log");
        let head = six(&path).head();
        fs::OpenOptions::new().append(true).open(&path).unwrap().write_all(b"{\"seq\":7,\"ts_ms\":").unwrap();
        assert_eq!(verify(&path, None).unwrap().entries, 6);

        let mut log = AuditLog::open(&path).unwrap();
        assert_eq!(log.head(), head);
        assert!(matches!(AuditLog::open(&path), Err(AuditError::Locked(_))));
        let e = log.append(2000, "node:edge-1", "attest", "edge-1", "failed", "binary not allowed").unwrap();
        assert_eq!((e.seq, e.prev.as_str()), (7, head.1.as_str()));
        drop(log);

        let (seq, hash) = AuditLog::open(&path).unwrap().head();
        assert_eq!(verify(&path, Some((seq, &hash))).unwrap(), VerifyReport { entries: 7, first_bad: None });
        let tail = read(&path, 5, 10).unwrap();
        assert_eq!(tail.iter().map(|e| e.seq).collect::<Vec<_>>(), [6, 7]);
        assert_eq!(read(&path, 0, 3).unwrap().len(), 3);
    }

    #[test]
    fn long_fields_are_cut_and_an_edited_last_entry_refuses_to_open() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("audit.log");
        let mut log = AuditLog::open(&path).unwrap();
        let e = log.append(1, "a", "b", &"é".repeat(5000), "c", "line\nbreak").unwrap();
        assert!(e.target.len() <= MAX_FIELD_BYTES && e.target.ends_with('…'));
        assert_eq!(fs::read_to_string(&path).unwrap().lines().count(), 1);
        drop(log);
        rewrite_line(&path, 0, |l| Some(l.replace("\"c\"", "\"d\"")));
        assert!(matches!(AuditLog::open(&path), Err(AuditError::Corrupt(_))));
    }

    #[test]
    fn last_line_reads_backwards_across_chunks() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f");
        let long = "x".repeat(20_000);
        fs::write(&path, format!("{long}\n{long}y\npartial")).unwrap();
        let file = File::open(&path).unwrap();
        let len = file.metadata().unwrap().len();
        let (complete, last) = last_line(&file, len).unwrap();
        assert_eq!(complete, len - "partial".len() as u64);
        assert_eq!(last.unwrap(), format!("{long}y").into_bytes());
        fs::write(&path, "only\n").unwrap();
        assert_eq!(last_line(&File::open(&path).unwrap(), 5).unwrap(), (5, Some(b"only".to_vec())));
        fs::write(&path, "no newline").unwrap();
        assert_eq!(last_line(&File::open(&path).unwrap(), 10).unwrap(), (0, None));
    }
}
