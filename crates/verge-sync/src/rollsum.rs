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
    /// The checksum of `window`, computed in a form the compiler vectorises.
    pub fn of(window: &[u8]) -> Self {
        let n = window.len() as u32;
        let mut sum: u32 = 0;
        let mut weighted: u32 = 0;
        for chunk in window.chunks(4096) {
            let base = (chunk.as_ptr() as usize - window.as_ptr() as usize) as u32;
            let (s, w) = chunk
                .iter()
                .enumerate()
                .fold((0u32, 0u32), |(s, w), (i, &x)| (s.wrapping_add(u32::from(x)), w.wrapping_add(u32::from(x).wrapping_mul(i as u32))));
            sum = sum.wrapping_add(s);
            weighted = weighted.wrapping_add(w).wrapping_add(s.wrapping_mul(base));
        }
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
    fn matches_the_definition_and_rolls() {
        let data: Vec<u8> = (0..20_000u32).map(|i| (i.wrapping_mul(2654435761) >> 13) as u8).collect();
        for n in [1usize, 7, 512, 4096, 5000] {
            let mut r = Rollsum::of(&data[..n]);
            assert_eq!(r.digest(), naive(&data[..n]), "window {n}");
            for start in 1..200 {
                r.rotate(data[start - 1], data[start + n - 1]);
                assert_eq!(r.digest(), naive(&data[start..start + n]), "window {n} at {start}");
            }
        }
    }
}
