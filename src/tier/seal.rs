//! Convergent encryption of cache blocks for shared, untrusted HTTP caches.
//!
//! A block is named and keyed by its content: the store's 16-byte block sum (blake3 of the
//! block, the sums hint files already hold) is the secret. From it derive, under separate
//! blake3 contexts, the AES-256 key and the public id. The id is a one-way function of the
//! sum, so a cache or a sniffer learns neither the content nor its hash; only a holder of
//! the manifest (sent over an authenticated gridvfs session) can name, decrypt and verify
//! a block. Identical blocks on any host give identical ids, which is what lets one cached
//! object serve every host (as in AWS Lambda's container cache, ATC 2023).
//!
//! The cipher is AES-256-GCM-SIV with a fixed nonce: the key already differs per content,
//! and SIV stays safe if two sites ever seal the same block into two different payloads
//! (another zstd version), where plain GCM under a repeated nonce would leak its
//! authentication key. Payload: `GVB1`, a byte saying whether zstd (level 1) was applied,
//! the ciphertext and its tag; the first five bytes are authenticated too.
//!
//! Known property of convergent encryption, accepted here as by every system that uses it:
//! someone who can guess a block's whole content can compute its id and check whether a
//! cache holds it. Images whose blocks are secret *and* guessable should not use a tier.

use aws_lc_rs::aead::{AES_256_GCM_SIV, Aad, LessSafeKey, Nonce, UnboundKey};

/// A block's sum as the store reports it (`Response::BlockSums`).
pub type Sum = [u8; 16];

const MAGIC: &[u8; 4] = b"GVB1";
const RAW: u8 = 0;
const ZSTD: u8 = 1;
const KEY_CONTEXT: &str = "gridvfs 2026-12 tier block key";
const ID_CONTEXT: &str = "gridvfs 2026-12 tier block id";

/// Why a payload from the tier was refused. Every one means: fetch the block another way.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SealError {
    #[error("not a sealed gridvfs block")]
    Format,
    #[error("the payload does not authenticate under the manifest's key")]
    Forged,
    #[error("the payload does not decompress to at most {0} bytes")]
    Size(usize),
    #[error("the block's content does not match the manifest's sum")]
    Sum,
}

/// The public name of the block whose sum is `sum`: 64 hex digits.
pub fn block_id(sum: &Sum) -> String {
    let id = blake3::derive_key(ID_CONTEXT, sum);
    id.iter().map(|b| format!("{b:02x}")).collect()
}

/// The sum of `block` as the store computes it (first 16 bytes of blake3).
pub fn sum_of(block: &[u8]) -> Sum {
    let h = blake3::hash(block);
    let mut s = [0u8; 16];
    s.copy_from_slice(&h.as_bytes()[..16]);
    s
}

fn key(sum: &Sum) -> LessSafeKey {
    let k = blake3::derive_key(KEY_CONTEXT, sum);
    LessSafeKey::new(UnboundKey::new(&AES_256_GCM_SIV, &k).expect("a 32-byte AES-256 key"))
}

fn nonce() -> Nonce {
    // One key per content (see the module doc): a fixed nonce under SIV.
    Nonce::assume_unique_for_key([0; 12])
}

/// Seal `block` (whose sum is `sum`) for the tier: compressed when that helps, encrypted.
pub fn seal(sum: &Sum, block: &[u8]) -> Vec<u8> {
    let packed = zstd::bulk::compress(block, 1)
        .ok()
        .filter(|c| c.len() < block.len());
    let (kind, body) = match &packed {
        Some(c) => (ZSTD, c.as_slice()),
        None => (RAW, block),
    };
    let mut out = Vec::with_capacity(5 + body.len() + 16);
    out.extend_from_slice(MAGIC);
    out.push(kind);
    let mut sealed = body.to_vec();
    key(sum)
        .seal_in_place_append_tag(nonce(), Aad::from(&out[..5]), &mut sealed)
        .expect("sealing a block of at most a few MiB");
    out.extend_from_slice(&sealed);
    out
}

/// Open a payload from the tier: authenticate and decrypt it with the key of `sum`,
/// decompress it (to at most `max_len` bytes) and check the content against `sum`.
pub fn open(sum: &Sum, payload: &[u8], max_len: usize) -> Result<Vec<u8>, SealError> {
    if payload.len() < 5 + 16 || &payload[..4] != MAGIC || payload[4] > ZSTD {
        return Err(SealError::Format);
    }
    let (head, rest) = payload.split_at(5);
    let mut body = rest.to_vec();
    let plain = key(sum)
        .open_in_place(nonce(), Aad::from(head), &mut body)
        .map_err(|_| SealError::Forged)?;
    let block = if head[4] == ZSTD {
        zstd::bulk::decompress(plain, max_len).map_err(|_| SealError::Size(max_len))?
    } else if plain.len() <= max_len {
        plain.to_vec()
    } else {
        return Err(SealError::Size(max_len));
    };
    if sum_of(&block) != *sum {
        return Err(SealError::Sum);
    }
    Ok(block)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn block(seed: u8, len: usize) -> Vec<u8> {
        (0..len)
            .map(|i| (i as u8).wrapping_mul(seed) ^ (i >> 9) as u8)
            .collect()
    }

    #[test]
    fn a_sealed_block_opens_only_under_its_own_sum() {
        let a = block(7, 256 << 10);
        let b = block(11, 256 << 10);
        let (sa, sb) = (sum_of(&a), sum_of(&b));
        let pa = seal(&sa, &a);
        assert_eq!(open(&sa, &pa, a.len()).unwrap(), a);
        assert_eq!(open(&sb, &pa, a.len()), Err(SealError::Forged));
        // Deterministic: every site seals a block to the same object.
        assert_eq!(seal(&sa, &a), pa);
        assert_ne!(block_id(&sa), block_id(&sb));
    }

    #[test]
    fn ids_and_payloads_reveal_neither_the_sum_nor_the_content() {
        let a = vec![0x5au8; 64 << 10];
        let s = sum_of(&a);
        let id = block_id(&s);
        assert_eq!(id.len(), 64);
        let hex = |b: &[u8]| b.iter().map(|x| format!("{x:02x}")).collect::<String>();
        assert!(!id.contains(&hex(&s)[..8]));
        assert!(!id.contains(&hex(blake3::hash(&a).as_bytes())[..8]));
        let p = seal(&s, &a);
        // Compressed, then encrypted: no run of the plaintext byte survives.
        assert!(p.len() < a.len() / 8, "{}", p.len());
        assert!(!p.windows(8).any(|w| w == [0x5a; 8]));
    }

    #[test]
    fn every_flipped_byte_and_truncation_is_refused() {
        let a = block(3, 16 << 10);
        let s = sum_of(&a);
        let p = seal(&s, &a);
        for i in (0..p.len()).step_by(97).chain([0, 4, p.len() - 1]) {
            let mut bad = p.clone();
            bad[i] ^= 0x40;
            assert!(open(&s, &bad, a.len()).is_err(), "flip at {i} accepted");
        }
        for n in [0, 4, 5, 20, p.len() - 1] {
            assert!(
                open(&s, &p[..n], a.len()).is_err(),
                "truncation to {n} accepted"
            );
        }
        // Longer than the caller allows (a decompression bomb from a hostile cache).
        assert_eq!(open(&s, &p, a.len() - 1), Err(SealError::Size(a.len() - 1)));
    }
}
