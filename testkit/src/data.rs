//! Deterministic test data: the same seed gives the same bytes on every machine, so a
//! failure can be replayed and nothing needs a random-number crate.

/// `len` pseudo-random bytes from `seed` (xorshift64): incompressible, so a cache or a
/// compressor cannot make a wrong byte look right.
pub fn noise(seed: u64, len: usize) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        out.extend_from_slice(&x.to_le_bytes());
    }
    out.truncate(len);
    out
}

#[cfg(test)]
mod tests {
    use super::noise;

    #[test]
    fn noise_is_deterministic_and_seed_dependent() {
        assert_eq!(noise(7, 1000), noise(7, 1000));
        assert_eq!(noise(7, 1000).len(), 1000);
        assert_ne!(noise(7, 64), noise(8, 64));
        // A prefix of a longer run: lengths do not change the stream.
        assert_eq!(noise(3, 100)[..], noise(3, 1000)[..100]);
    }
}
