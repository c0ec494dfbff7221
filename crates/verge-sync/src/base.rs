//! Known-base deltas: when the sender still holds the version the receiver
//! last acknowledged, the new version is compressed with that version as
//! a zstd reference prefix (`zstd --patch-from`), which finds matches at
//! any offset and length instead of whole blocks.

use std::io::Read;

use crate::error::{Result, SyncError};

/// Largest window zstd may use (2 GiB); larger inputs still work, matches
/// just cannot reach further back than this.
const MAX_WINDOW_LOG: u32 = 31;

/// The window that lets every byte of `base` and `new` reference the start of `base`.
fn window_log(total: usize) -> u32 {
    (usize::BITS - total.max(1).leading_zeros()).clamp(10, MAX_WINDOW_LOG)
}

/// Compresses `new` against `base` at `level`.
pub fn encode(base: &[u8], new: &[u8], level: i32) -> Result<Vec<u8>> {
    use zstd::zstd_safe::{compress_bound, get_error_name, CCtx, CParameter};
    let err = |code| SyncError::io("zstd patch-from encoder", std::io::Error::other(get_error_name(code)));
    let mut cctx = CCtx::create();
    cctx.set_parameter(CParameter::CompressionLevel(level)).map_err(err)?;
    cctx.set_parameter(CParameter::WindowLog(window_log(base.len() + new.len()))).map_err(err)?;
    cctx.set_parameter(CParameter::EnableLongDistanceMatching(true)).map_err(err)?;
    cctx.ref_prefix(base).map_err(err)?;
    let mut out = Vec::with_capacity(compress_bound(new.len()));
    cctx.compress2(&mut out, new).map_err(err)?;
    Ok(out)
}

/// Rebuilds a file from `base` and data written by [`encode`]; fails
/// unless the result is exactly `new_len` bytes.
pub fn decode(base: &[u8], data: &[u8], new_len: u64) -> Result<Vec<u8>> {
    let bad = |e: std::io::Error| SyncError::corrupt("known-base delta", e.to_string());
    let mut dec = zstd::stream::read::Decoder::with_ref_prefix(data, base).map_err(bad)?;
    dec.window_log_max(MAX_WINDOW_LOG).map_err(bad)?;
    let mut out = Vec::with_capacity(new_len.min(64 << 20) as usize);
    dec.take(new_len.saturating_add(1)).read_to_end(&mut out).map_err(bad)?;
    if out.len() as u64 != new_len {
        return Err(SyncError::corrupt("known-base delta", format!("decodes to {} bytes, {new_len} announced", out.len())));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_and_is_small_for_small_changes() {
        let base: Vec<u8> = (0..200_000u32).map(|i| (i.wrapping_mul(2654435761) >> 11) as u8).collect();
        let mut new = base.clone();
        new[1234] ^= 1;
        new.splice(90_000..90_000, b"inserted".iter().copied());
        let enc = encode(&base, &new, 3).unwrap();
        assert!(enc.len() < 200, "{} bytes", enc.len());
        assert_eq!(decode(&base, &enc, new.len() as u64).unwrap(), new);
        assert!(decode(&base, &enc, new.len() as u64 - 1).is_err());
        assert!(decode(&base, &enc[..enc.len() / 2], new.len() as u64).is_err());
        assert!(decode(&base, b"not zstd at all", 10).is_err());
    }
}
