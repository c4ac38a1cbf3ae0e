//! Test data: deterministic pseudo-random blobs (so two runs upload the same
//! bytes), the 1–64 KiB size mix of build outputs, and large blobs built from
//! slices of one shared buffer so that a 1 GiB upload costs no 1 GiB of memory.

use bytes::Bytes;

use crate::digest::{Digest, DigestFunction};

/// A fast deterministic generator (SplitMix64): test data, not cryptography.
#[derive(Clone)]
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed ^ 0x9E37_79B9_7F4A_7C15)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in `0..n` (n > 0).
    pub fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n
    }

    /// Uniform in [0, 1).
    pub fn unit(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }

    pub fn fill(&mut self, buf: &mut [u8]) {
        let mut chunks = buf.chunks_exact_mut(8);
        for c in &mut chunks {
            c.copy_from_slice(&self.next_u64().to_le_bytes());
        }
        let rest = chunks.into_remainder();
        let last = self.next_u64().to_le_bytes();
        rest.copy_from_slice(&last[..rest.len()]);
    }
}

/// `len` pseudo-random bytes determined by `seed`.
pub fn bytes(seed: u64, len: usize) -> Bytes {
    let mut v = vec![0u8; len];
    Rng::new(seed).fill(&mut v);
    Bytes::from(v)
}

/// A size from the small-blob mix: log-uniform between 1 KiB and 64 KiB,
/// which matches the shape of build outputs (many few-KiB files, a tail of
/// tens of KiB) and averages about 15 KiB.
pub fn small_size(rng: &mut Rng) -> usize {
    let lo = (1024f64).ln();
    let hi = (64.0 * 1024f64).ln();
    (lo + (hi - lo) * rng.unit()).exp() as usize
}

/// A blob in memory with its digest.
#[derive(Clone)]
pub struct Blob {
    pub digest: Digest,
    pub data: Bytes,
}

impl Blob {
    pub fn new(data: Bytes) -> Blob {
        Blob { digest: DigestFunction::Sha256.digest_of(&data), data }
    }

    /// A blob of `len` bytes determined by `seed`.
    pub fn seeded(seed: u64, len: usize) -> Blob {
        Blob::new(bytes(seed, len))
    }
}

/// `n` small blobs from the 1–64 KiB mix, unique to `seed`.
pub fn small_blobs(seed: u64, n: usize) -> Vec<Blob> {
    let mut rng = Rng::new(seed);
    (0..n)
        .map(|i| {
            let len = small_size(&mut rng);
            Blob::seeded(seed.wrapping_mul(1_000_003).wrapping_add(i as u64), len)
        })
        .collect()
}

/// A digest nobody stored: random hash, plausible size.
pub fn absent_digest(rng: &mut Rng) -> Digest {
    let mut hash = [0u8; 32];
    rng.fill(&mut hash);
    Digest { function: DigestFunction::Sha256, hash, size: 1 + rng.below(64 * 1024) }
}

/// Bytes per message when streaming a large blob.
pub const STREAM_CHUNK: usize = 256 * 1024;

/// Large blobs that share one pseudo-random buffer: blob `k` of `size` bytes
/// is 8 bytes of `k` followed by the buffer repeated, so every blob has a
/// distinct digest while the bytes in memory stay at one buffer.
pub struct BigBlobs {
    base: Bytes,
}

impl BigBlobs {
    /// A source whose shared buffer is `base_len` bytes (rounded to chunks).
    pub fn new(seed: u64, base_len: usize) -> BigBlobs {
        let len = base_len.max(STREAM_CHUNK).div_ceil(STREAM_CHUNK) * STREAM_CHUNK;
        BigBlobs { base: bytes(seed, len + 8) }
    }

    /// The chunks of blob `k` (`size` bytes), as cheap slices of the buffer.
    pub fn chunks(&self, k: u64, size: u64) -> impl Iterator<Item = Bytes> + Send + 'static {
        let base = self.base.clone();
        let period = (base.len() - 8) as u64;
        let mut off = 0u64;
        std::iter::from_fn(move || {
            if off >= size {
                return None;
            }
            let n = (size - off).min(STREAM_CHUNK as u64);
            let chunk = if off == 0 {
                let mut first = Vec::with_capacity(n as usize);
                first.extend_from_slice(&k.to_le_bytes()[..(n as usize).min(8)]);
                let rest = n as usize - first.len();
                first.extend_from_slice(&base[8..8 + rest]);
                Bytes::from(first)
            } else {
                let start = (off % period) as usize + 8;
                base.slice(start..start + n as usize)
            };
            off += n;
            Some(chunk)
        })
    }

    /// The digest of blob `k` (hashes it once; seconds for a GiB).
    pub fn digest(&self, k: u64, size: u64) -> Digest {
        let mut h = DigestFunction::Sha256.hasher();
        for c in self.chunks(k, size) {
            h.update(&c);
        }
        Digest { function: DigestFunction::Sha256, hash: h.finalize(), size }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn big_blobs_are_distinct_and_sized() {
        let src = BigBlobs::new(1, STREAM_CHUNK);
        let a: Vec<u8> = src.chunks(1, 600_000).flat_map(|c| c.to_vec()).collect();
        let b: Vec<u8> = src.chunks(2, 600_000).flat_map(|c| c.to_vec()).collect();
        assert_eq!(a.len(), 600_000);
        assert_ne!(a, b);
        assert_eq!(src.digest(1, 600_000), DigestFunction::Sha256.digest_of(&a));
        assert_eq!(src.chunks(3, 5).map(|c| c.len()).sum::<usize>(), 5);
    }

    #[test]
    fn small_sizes_stay_in_range() {
        let mut rng = Rng::new(7);
        for _ in 0..1000 {
            let s = small_size(&mut rng);
            assert!((1024..=65536).contains(&s), "{s}");
        }
    }
}
