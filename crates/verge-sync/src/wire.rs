//! Bounds-checked reading and writing of the engine's binary encodings:
//! LEB128 varints, fixed-width integers and length-prefixed byte strings.

use crate::error::{Result, SyncError};

/// Appends `v` as an unsigned LEB128 varint.
pub fn put_varint(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

/// How many bytes [`put_varint`] writes for `v`.
pub fn varint_len(v: u64) -> u64 {
    u64::from((64 - v.max(1).leading_zeros()).div_ceil(7))
}

/// Reads one byte from a stream; `what` names the message in errors.
pub fn read_u8(r: &mut impl std::io::Read, what: &'static str) -> Result<u8> {
    let mut b = [0u8];
    r.read_exact(&mut b).map_err(|e| SyncError::corrupt(what, format!("truncated: {e}")))?;
    Ok(b[0])
}

/// Reads an unsigned LEB128 varint of at most `max` from a stream.
pub fn read_varint(r: &mut impl std::io::Read, max: u64, what: &'static str, field: &str) -> Result<u64> {
    let mut v: u64 = 0;
    for i in 0..10 {
        let b = read_u8(r, what)?;
        if i == 9 && b > 1 {
            return Err(SyncError::corrupt(what, format!("{field}: varint overflows 64 bits")));
        }
        v |= u64::from(b & 0x7f) << (7 * i);
        if b & 0x80 == 0 {
            if v > max {
                return Err(SyncError::corrupt(what, format!("{field} {v} exceeds {max}")));
            }
            return Ok(v);
        }
    }
    Err(SyncError::corrupt(what, format!("{field}: varint longer than 10 bytes")))
}

/// Appends a varint length followed by the bytes.
pub fn put_bytes(out: &mut Vec<u8>, b: &[u8]) {
    put_varint(out, b.len() as u64);
    out.extend_from_slice(b);
}

/// A cursor over untrusted bytes: every read checks what is left and
/// names the message kind in its error.
pub struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
    what: &'static str,
}

impl<'a> Reader<'a> {
    /// Reads `buf`, reporting errors as corrupt `what`.
    pub fn new(buf: &'a [u8], what: &'static str) -> Self {
        Reader { buf, pos: 0, what }
    }

    /// A corrupt-data error for this message.
    pub fn error(&self, why: impl Into<String>) -> SyncError {
        SyncError::corrupt(self.what, format!("{} (at byte {})", why.into(), self.pos))
    }

    /// Bytes not yet read.
    pub fn remaining(&self) -> usize {
        self.buf.len() - self.pos
    }

    /// Takes the next `n` bytes.
    pub fn take(&mut self, n: usize) -> Result<&'a [u8]> {
        if n > self.remaining() {
            return Err(self.error(format!("needs {n} bytes, {} left", self.remaining())));
        }
        let s = &self.buf[self.pos..self.pos + n];
        self.pos += n;
        Ok(s)
    }

    /// Reads one byte.
    pub fn u8(&mut self) -> Result<u8> {
        Ok(self.take(1)?[0])
    }

    /// Reads a little-endian u32.
    pub fn u32(&mut self) -> Result<u32> {
        let b = self.take(4)?;
        Ok(u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    }

    /// Reads a fixed-size array.
    pub fn array<const N: usize>(&mut self) -> Result<[u8; N]> {
        let mut a = [0u8; N];
        a.copy_from_slice(self.take(N)?);
        Ok(a)
    }

    /// Reads an unsigned LEB128 varint of at most 10 bytes.
    pub fn varint(&mut self) -> Result<u64> {
        let mut v: u64 = 0;
        for i in 0..10 {
            let b = self.u8()?;
            let bits = u64::from(b & 0x7f);
            if i == 9 && b > 1 {
                return Err(self.error("varint overflows 64 bits"));
            }
            v |= bits << (7 * i);
            if b & 0x80 == 0 {
                return Ok(v);
            }
        }
        Err(self.error("varint longer than 10 bytes"))
    }

    /// Reads a varint that must not exceed `max`, as a usize.
    pub fn varint_max(&mut self, max: u64, field: &str) -> Result<usize> {
        let v = self.varint()?;
        if v > max {
            return Err(self.error(format!("{field} {v} exceeds {max}")));
        }
        usize::try_from(v).map_err(|_| self.error(format!("{field} {v} does not fit in memory")))
    }

    /// Reads a length-prefixed byte string of at most `max` bytes.
    pub fn bytes(&mut self, max: u64, field: &str) -> Result<&'a [u8]> {
        let n = self.varint_max(max, field)?;
        self.take(n)
    }

    /// Reads a length-prefixed UTF-8 string of at most `max` bytes.
    pub fn string(&mut self, max: u64, field: &str) -> Result<&'a str> {
        let b = self.bytes(max, field)?;
        std::str::from_utf8(b).map_err(|_| self.error(format!("{field} is not UTF-8")))
    }

    /// Fails unless every byte was read.
    pub fn finish(&self) -> Result<()> {
        if self.remaining() != 0 {
            return Err(self.error(format!("{} trailing bytes", self.remaining())));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn varints_round_trip_and_reject_overflow() {
        for v in [0, 1, 127, 128, 300, u64::from(u32::MAX), u64::MAX] {
            let mut b = Vec::new();
            put_varint(&mut b, v);
            assert_eq!(varint_len(v), b.len() as u64);
            let mut r = Reader::new(&b, "test");
            assert_eq!(r.varint().unwrap(), v);
            r.finish().unwrap();
        }
        let too_long = [0xffu8; 11];
        assert!(Reader::new(&too_long, "test").varint().is_err());
        let overflow = [0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x02];
        assert!(Reader::new(&overflow, "test").varint().is_err());
        assert!(Reader::new(&[0x80], "test").varint().is_err());
    }
}
