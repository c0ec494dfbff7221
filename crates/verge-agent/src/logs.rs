//! Reading a workload's captured output for `verge logs`: the last N lines,
//! or everything after an offset (for `--follow`).

use std::io::{Read, Seek, SeekFrom};
use std::path::Path;

/// Most bytes one read returns, so an answer fits in one protocol frame.
pub const MAX_CHUNK: u64 = 1 << 20;

/// The suffix of `buf` holding its last `n` lines.
pub fn last_lines(buf: &[u8], n: u32) -> &[u8] {
    if n == 0 {
        return &buf[buf.len()..];
    }
    let body = buf.strip_suffix(b"\n").unwrap_or(buf);
    let mut seen = 0;
    for (i, b) in body.iter().enumerate().rev() {
        if *b == b'\n' {
            seen += 1;
            if seen == n {
                return &buf[i + 1..];
            }
        }
    }
    buf
}

/// Reads `path` from `offset` (up to [`MAX_CHUNK`] bytes), or its last `tail`
/// lines when `offset` is `None`. Returns the text and the offset to continue
/// from. A log that does not exist yet reads as empty.
pub fn read(path: &Path, offset: Option<u64>, tail: u32) -> std::io::Result<(String, u64)> {
    let mut f = match std::fs::File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok((String::new(), 0)),
        Err(e) => return Err(e),
    };
    let len = f.metadata()?.len();
    let start = match offset {
        Some(o) => o.min(len),
        None => len.saturating_sub(MAX_CHUNK),
    };
    f.seek(SeekFrom::Start(start))?;
    let mut buf = Vec::new();
    f.take(MAX_CHUNK).read_to_end(&mut buf)?;
    let next = start + buf.len() as u64;
    let text = match offset {
        Some(_) => &buf[..],
        None => last_lines(&buf, tail),
    };
    Ok((String::from_utf8_lossy(text).into_owned(), next))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn last_lines_takes_whole_lines_from_the_end() {
        assert_eq!(last_lines(b"a\nb\nc\n", 2), b"b\nc\n");
        assert_eq!(last_lines(b"a\nb\nc", 2), b"b\nc");
        assert_eq!(last_lines(b"a\nb\n", 5), b"a\nb\n");
        assert_eq!(last_lines(b"a\nb\n", 0), b"");
    }

    #[test]
    fn reads_follow_on_from_the_offset() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("stdout.log");
        assert_eq!(read(&p, None, 10).unwrap(), (String::new(), 0));
        std::fs::write(&p, "one\ntwo\nthree\n").unwrap();
        let (text, next) = read(&p, None, 2).unwrap();
        assert_eq!((text.as_str(), next), ("two\nthree\n", 14));
        std::fs::write(&p, "one\ntwo\nthree\nfour\n").unwrap();
        assert_eq!(read(&p, Some(next), 0).unwrap(), ("four\n".to_string(), 19));
    }
}
