//! Block arithmetic: which blocks a byte range touches, and runs of missing blocks.

/// Blocks `[first, last]` that bytes `[offset, offset + len)` touch, clipped to `size`.
/// `None` if the range is empty after clipping.
pub fn blocks(offset: u64, len: u64, size: u64, block: u64) -> Option<(u64, u64)> {
    let end = offset.saturating_add(len).min(size);
    if offset >= end {
        return None;
    }
    Some((offset / block, (end - 1) / block))
}

/// Bytes of block `b` that exist in a file of `size` bytes.
pub fn block_len(b: u64, size: u64, block: u64) -> u64 {
    size.saturating_sub(b * block).min(block)
}

/// Group sorted block numbers into runs of consecutive blocks, each at most `max` long.
pub fn runs(blocks: &[u64], max: u64) -> Vec<(u64, u64)> {
    let mut out: Vec<(u64, u64)> = Vec::new();
    for &b in blocks {
        match out.last_mut() {
            Some((start, n)) if *start + *n == b && *n < max => *n += 1,
            _ => out.push((b, 1)),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn edges() {
        assert_eq!(blocks(0, 0, 100, 10), None);
        assert_eq!(blocks(100, 5, 100, 10), None);
        assert_eq!(blocks(95, 50, 100, 10), Some((9, 9)));
        assert_eq!(blocks(10, 10, 100, 10), Some((1, 1)));
        assert_eq!(blocks(9, 2, 100, 10), Some((0, 1)));
        assert_eq!(block_len(9, 95, 10), 5);
        assert_eq!(block_len(10, 95, 10), 0);
        assert_eq!(
            runs(&[1, 2, 3, 7, 8, 10], 2),
            vec![(1, 2), (3, 1), (7, 2), (10, 1)]
        );
        assert_eq!(
            blocks(u64::MAX - 1, u64::MAX, u64::MAX, 1 << 20).map(|b| b.0),
            Some((u64::MAX - 1) >> 20)
        );
    }

    proptest! {
        #[test]
        fn blocks_cover_exactly_the_clipped_range(offset in 0u64..10_000, len in 0u64..10_000,
                                                   size in 0u64..20_000, block in 1u64..5_000) {
            match blocks(offset, len, size, block) {
                None => prop_assert!(offset >= size || len == 0),
                Some((a, b)) => {
                    let end = (offset + len).min(size);
                    prop_assert!(a * block <= offset && offset < (a + 1) * block);
                    prop_assert!(b * block < end && end <= (b + 1) * block);
                    let covered: u64 = (a..=b).map(|x| block_len(x, size, block)).sum();
                    prop_assert!(covered >= end - offset);
                }
            }
        }

        #[test]
        fn runs_partition_their_input(mut v in proptest::collection::vec(0u64..200, 0..60), max in 1u64..10) {
            v.sort_unstable();
            v.dedup();
            let r = runs(&v, max);
            let back: Vec<u64> = r.iter().flat_map(|(s, n)| *s..*s + *n).collect();
            prop_assert_eq!(back, v);
            prop_assert!(r.iter().all(|(_, n)| *n >= 1 && *n <= max));
        }
    }
}
