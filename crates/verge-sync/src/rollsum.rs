//! The weak rolling checksum used to find matching blocks at any byte
//! offset (the rsync/librsync "rollsum": two 16-bit running sums).

/// Offset added to every byte so that runs of zeros still change the sums.
const CHAR_OFFSET: u32 = 31;

/// A rolling checksum over a window of bytes that can slide by one byte in O(1).
#[derive(Clone, Copy, Debug, Default)]
pub struct Rollsum {
    a: u32,
    b: u32,
    count: u32,
}

impl Rollsum {
    /// The checksum of `window`, computed with AVX2 where the CPU has it.
    pub fn of(window: &[u8]) -> Self {
        let n = window.len() as u32;
        let (sum, weighted) = sums(window);
        // b = Σ (n - i) · (x_i + C) = n·Σx − Σ i·x + C · n(n+1)/2
        let a = sum.wrapping_add(n.wrapping_mul(CHAR_OFFSET));
        let tri = ((u64::from(n) * (u64::from(n) + 1) / 2) as u32).wrapping_mul(CHAR_OFFSET);
        let b = n.wrapping_mul(sum).wrapping_sub(weighted).wrapping_add(tri);
        Rollsum { a, b, count: n }
    }

    /// Slides the window one byte: `out` leaves at the front, `input` enters at the back.
    #[inline(always)]
    pub fn rotate(&mut self, out: u8, input: u8) {
        let o = u32::from(out) + CHAR_OFFSET;
        self.a = self.a.wrapping_add(u32::from(input)).wrapping_sub(u32::from(out));
        self.b = self.b.wrapping_add(self.a).wrapping_sub(self.count.wrapping_mul(o));
    }

    /// The 32-bit digest.
    #[inline(always)]
    pub fn digest(&self) -> u32 {
        (self.b << 16) | (self.a & 0xffff)
    }
}

/// Σ x_i and Σ i · x_i over `data` (wrapping, as every sum here is).
fn sums(data: &[u8]) -> (u32, u32) {
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("avx2") {
        // SAFETY: the CPU supports AVX2, checked just above.
        return unsafe { sums_avx2(data) };
    }
    sums_portable(data, 0)
}

/// [`sums`] with the index starting at `base`, in a form the compiler
/// vectorises for any CPU (4 KiB pieces keep Σ i·x within 32 bits).
fn sums_portable(data: &[u8], base: u32) -> (u32, u32) {
    let (mut sum, mut weighted) = (0u32, 0u32);
    for (k, chunk) in data.chunks(4096).enumerate() {
        let (s, w) = chunk
            .iter()
            .enumerate()
            .fold((0u32, 0u32), |(s, w), (i, &x)| (s.wrapping_add(u32::from(x)), w.wrapping_add(u32::from(x).wrapping_mul(i as u32))));
        let start = base.wrapping_add((k * 4096) as u32);
        sum = sum.wrapping_add(s);
        weighted = weighted.wrapping_add(w).wrapping_add(s.wrapping_mul(start));
    }
    (sum, weighted)
}

/// [`sums`] 32 bytes at a time. Per vector t: its byte sum S_t (`sad`),
/// and Σ k·x over its 32 bytes (`maddubs` with weights 0..31). Then
/// Σ i·x = 32 · Σ t·S_t + Σ W_t, where Σ t·S_t = (T − 1)·ΣS − Q and Q sums
/// the running total of S before each vector: additions only.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn sums_avx2(data: &[u8]) -> (u32, u32) {
    use std::arch::x86_64::*;
    let chunks = data.chunks_exact(32);
    let rest = chunks.remainder();
    let weights = _mm256_setr_epi8(
        0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16, 17, 18, 19, 20, 21, 22, 23, 24, 25, 26, 27, 28, 29, 30, 31,
    );
    let ones = _mm256_set1_epi16(1);
    let zero = _mm256_setzero_si256();
    let (mut p, mut q, mut w) = (zero, zero, zero);
    let mut vectors = 0u32;
    for c in chunks {
        // SAFETY: `c` is 32 bytes; the load is unaligned.
        let v = unsafe { _mm256_loadu_si256(c.as_ptr().cast()) };
        q = _mm256_add_epi32(q, p);
        p = _mm256_add_epi32(p, _mm256_sad_epu8(v, zero));
        w = _mm256_add_epi32(w, _mm256_madd_epi16(_mm256_maddubs_epi16(v, weights), ones));
        vectors = vectors.wrapping_add(1);
    }
    let hsum = |x: __m256i| {
        let mut lanes = [0u32; 8];
        // SAFETY: `lanes` is 32 bytes; the store is unaligned.
        unsafe { _mm256_storeu_si256(lanes.as_mut_ptr().cast(), x) };
        lanes.iter().fold(0u32, |a, &l| a.wrapping_add(l))
    };
    let total = hsum(p);
    let by_vector = vectors.wrapping_sub(1).wrapping_mul(total).wrapping_sub(hsum(q));
    let weighted = by_vector.wrapping_mul(32).wrapping_add(hsum(w));
    let (rs, rw) = sums_portable(rest, vectors.wrapping_mul(32));
    (total.wrapping_add(rs), weighted.wrapping_add(rw))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn naive(w: &[u8]) -> u32 {
        let (mut a, mut b) = (0u32, 0u32);
        for &x in w {
            a = a.wrapping_add(u32::from(x) + CHAR_OFFSET);
            b = b.wrapping_add(a);
        }
        (b << 16) | (a & 0xffff)
    }

    #[test]
    fn portable_and_vector_sums_agree() {
        let data: Vec<u8> = (0..300_000u32).map(|i| (i.wrapping_mul(2654435761) >> 13) as u8 | 0x80).collect();
        for n in [0usize, 1, 31, 32, 33, 4095, 4096, 4097, 131_072, 300_000] {
            let naive = data[..n].iter().enumerate().fold((0u32, 0u32), |(s, w), (i, &x)| {
                (s.wrapping_add(u32::from(x)), w.wrapping_add((i as u32).wrapping_mul(u32::from(x))))
            });
            assert_eq!(sums_portable(&data[..n], 0), naive, "portable, {n} bytes");
            assert_eq!(sums(&data[..n]), naive, "dispatched, {n} bytes");
        }
    }

    #[test]
    fn matches_the_definition_and_rolls() {
        let data: Vec<u8> = (0..20_000u32).map(|i| (i.wrapping_mul(2654435761) >> 13) as u8).collect();
        for n in [1usize, 7, 33, 512, 4096, 5000] {
            let mut r = Rollsum::of(&data[..n]);
            assert_eq!(r.digest(), naive(&data[..n]), "window {n}");
            for start in 1..200 {
                r.rotate(data[start - 1], data[start + n - 1]);
                assert_eq!(r.digest(), naive(&data[start..start + n]), "window {n} at {start}");
            }
        }
    }
}
