//! Per-file metadata hints: how a file is best fetched, kept beside it on the store.
//!
//! `gridvfs-server hint PATH` scans a file once and writes `.NAME.gvhint` next to it: the
//! file's validator when scanned, its zero extents, a fetch policy and per-block hashes.
//! The server answers a client's [`Request::Hint`](crate::proto::Request::Hint) from that
//! file only while the validator still matches (a stale hint is ignored, never trusted);
//! otherwise, or without a hint file, it answers an automatic hint: the file's holes, found
//! with `SEEK_DATA`/`SEEK_HOLE`. Hint files are invisible through the tunnel: not listed,
//! not looked up, not created, renamed over or removed ([`is_hint_name`]).
//!
//! File format (DESIGN §7): the 8 bytes `GVHINT\x00\x01`, then a postcard [`HintFile`].

use std::fs::File;
use std::io::Read;
use std::os::unix::fs::FileExt;

use serde::{Deserialize, Serialize};

use crate::proto::{FetchPolicy, Hint, HintSource, Time};

/// First bytes of every hint file: name and format version.
pub const MAGIC: &[u8; 8] = b"GVHINT\x00\x01";
/// Hint files larger than this are not read (a 1 TiB image at 256 KiB blocks is ~64 MiB).
const MAX_HINT_FILE: u64 = 128 << 20;
/// Zero extents sent to a client at most (the rest of the file is simply fetched): 2 MiB.
pub const MAX_EXTENTS: usize = 128 * 1024;
/// Profile entries kept and sent at most (the rest is read on demand): 2 MiB. With the
/// extents, a hint reply stays far inside the protocol's 8 MiB frame.
pub const MAX_PROFILE: usize = 512 * 1024;
/// Block sums sent at most (4 MiB of them: 64 GiB at 256 KiB blocks).
pub const MAX_SUMS: usize = 256 * 1024;
/// Granularity of zero detection: a page, as in memory images.
pub const PAGE: u64 = 4096;

/// What a hint file holds.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HintFile {
    /// The file's size, mtime, ctime and identity when it was scanned. ctime too: an
    /// in-place rewrite that restores the mtime (`cp -p`, `touch -r`) still moves it.
    pub size: u64,
    pub mtime: Time,
    pub ctime: Time,
    pub ident: u64,
    pub policy: FetchPolicy,
    /// Never revalidated by clients (a published image).
    pub immutable: bool,
    /// Sorted, disjoint (offset, length) runs of zero bytes, page-aligned.
    pub zero_extents: Vec<(u64, u64)>,
    /// Block size of `block_sums`.
    pub block_size: u32,
    /// blake3 of each block, first 16 bytes (for delta revalidation).
    pub block_sums: Vec<[u8; 16]>,
    /// Block numbers in the order a recorded run read them (access profile); may be empty.
    pub profile: Vec<u32>,
}

/// `.NAME.gvhint`: reserved, hidden from clients.
pub fn is_hint_name(name: &[u8]) -> bool {
    name.len() > 8 && name.starts_with(b".") && name.ends_with(b".gvhint")
}

/// The hint file's name for `name`.
pub fn hint_name(name: &[u8]) -> Vec<u8> {
    let mut n = Vec::with_capacity(name.len() + 8);
    n.push(b'.');
    n.extend_from_slice(name);
    n.extend_from_slice(b".gvhint");
    n
}

impl HintFile {
    /// True if the file, as `attr` describes it now, is the one this hint was made for.
    pub fn describes(&self, attr: &crate::proto::Attr) -> bool {
        self.size == attr.size
            && self.mtime == attr.mtime
            && self.ctime == attr.ctime
            && self.ident == attr.ident
    }

    pub fn encode(&self) -> Vec<u8> {
        let mut out = MAGIC.to_vec();
        out.extend(postcard::to_stdvec(self).expect("HintFile serializes"));
        out
    }

    pub fn decode(bytes: &[u8]) -> Result<Self, String> {
        let body = bytes
            .strip_prefix(MAGIC.as_slice())
            .ok_or("not a gridvfs hint file (or another format version)")?;
        postcard::from_bytes(body).map_err(|e| format!("malformed hint file: {e}"))
    }

    /// Read a hint file, refusing absurd sizes.
    pub fn read(f: &File) -> Result<Self, String> {
        let len = f.metadata().map_err(|e| e.to_string())?.len();
        if len > MAX_HINT_FILE {
            return Err(format!("hint file of {len} bytes is too large"));
        }
        let mut bytes = Vec::with_capacity(len as usize);
        f.take(MAX_HINT_FILE)
            .read_to_end(&mut bytes)
            .map_err(|e| e.to_string())?;
        Self::decode(&bytes)
    }

    /// The answer for a client.
    pub fn to_hint(&self) -> Hint {
        let mut zero_extents = self.zero_extents.clone();
        zero_extents.truncate(MAX_EXTENTS);
        let mut profile = self.profile.clone();
        profile.truncate(MAX_PROFILE);
        Hint {
            source: HintSource::File,
            policy: self.policy,
            immutable: self.immutable,
            zero_extents,
            profile,
            block_size: self.block_size,
        }
    }
}

/// Sorted, disjoint (offset, length) runs.
pub type Extents = Vec<(u64, u64)>;

/// Scan `f` (of `size` bytes): zero extents at page granularity and per-block hashes
/// (at most [`MAX_SUMS`]: more are never sent, and a huge sparse file must not make a
/// client's `SaveProfile` allocate size/block entries, issue 11 item 6).
pub fn scan(f: &File, size: u64, block_size: u32) -> std::io::Result<(Extents, Vec<[u8; 16]>)> {
    let bs = u64::from(block_size);
    let mut extents: Vec<(u64, u64)> = Vec::new();
    let mut sums = Vec::with_capacity((size.div_ceil(bs) as usize).min(MAX_SUMS));
    let mut buf = vec![0u8; bs as usize];
    let mut off = 0;
    while off < size {
        let n = (size - off).min(bs) as usize;
        f.read_exact_at(&mut buf[..n], off)?;
        let block = &buf[..n];
        if sums.len() < MAX_SUMS {
            let mut h = [0u8; 16];
            h.copy_from_slice(&blake3::hash(block).as_bytes()[..16]);
            sums.push(h);
        }
        for (i, page) in block.chunks(PAGE as usize).enumerate() {
            if crate::proto::pack::all_zero(page) {
                let at = off + i as u64 * PAGE;
                let full = extents.len() >= MAX_EXTENTS;
                match extents.last_mut() {
                    Some((s, l)) if *s + *l == at => *l += page.len() as u64,
                    _ if full => {}
                    _ => extents.push((at, page.len() as u64)),
                }
            }
        }
        off += n as u64;
    }
    Ok((extents, sums))
}

/// The automatic hint: holes of a sparse file as zero extents, fetched in blocks.
pub fn auto_hint(f: &File, size: u64) -> Hint {
    Hint {
        source: HintSource::Auto,
        policy: FetchPolicy::Blocks,
        immutable: false,
        zero_extents: holes(f, size),
        profile: Vec::new(),
        block_size: 0,
    }
}

/// Holes of `f` by `SEEK_DATA`/`SEEK_HOLE` (empty where the file system cannot say).
fn holes(f: &File, size: u64) -> Vec<(u64, u64)> {
    use rustix::fs::{SeekFrom, seek};
    let mut out = Vec::new();
    let mut pos = 0u64;
    while pos < size && out.len() < MAX_EXTENTS {
        let data = match seek(f, SeekFrom::Data(pos)) {
            Ok(d) => d.min(size),
            // ENXIO: no data past `pos`: the rest is a hole.
            Err(rustix::io::Errno::NXIO) => size,
            Err(_) => break,
        };
        if data > pos {
            out.push((pos, data - pos));
        }
        if data >= size {
            break;
        }
        pos = match seek(f, SeekFrom::Hole(data)) {
            Ok(h) => h,
            Err(_) => break,
        };
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scan_finds_zero_pages_and_round_trips() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("mem");
        let mut data = vec![0u8; 64 * 4096 + 100];
        data[5 * 4096] = 1; // page 5 is not zero
        data[64 * 4096 + 99] = 7; // neither is the tail
        std::fs::write(&p, &data).unwrap();
        let f = File::open(&p).unwrap();
        let (ext, sums) = scan(&f, data.len() as u64, 16 * 4096).unwrap();
        assert_eq!(ext, vec![(0, 5 * 4096), (6 * 4096, 58 * 4096)]);
        assert_eq!(sums.len(), 5);
        let h = HintFile {
            size: data.len() as u64,
            mtime: Time { sec: 1, nsec: 2 },
            ctime: Time { sec: 4, nsec: 5 },
            ident: 3,
            policy: FetchPolicy::Whole,
            immutable: true,
            zero_extents: ext,
            block_size: 16 * 4096,
            block_sums: sums,
            profile: vec![3, 1, 2],
        };
        assert_eq!(HintFile::decode(&h.encode()).unwrap(), h);
        assert!(HintFile::decode(b"GVHINT\x00\x02rest").is_err());
        assert!(HintFile::decode(&h.encode()[..20]).is_err());
    }

    #[test]
    fn holes_of_a_sparse_file() {
        let dir = tempfile::tempdir().unwrap();
        let f = std::fs::OpenOptions::new()
            .create(true)
            .truncate(true)
            .read(true)
            .write(true)
            .open(dir.path().join("img"))
            .unwrap();
        f.set_len(8 << 20).unwrap();
        f.write_all_at(&[1u8; 4096], 4 << 20).unwrap();
        let h = holes(&f, 8 << 20);
        // tmpfs and ext4 report the hole around the written page; some file systems report
        // none (then the hint is merely empty).
        if !h.is_empty() {
            assert_eq!(h[0], (0, 4 << 20));
            assert_eq!(h.last().unwrap().0 + h.last().unwrap().1, 8 << 20);
        }
        assert!(
            is_hint_name(b".img.gvhint")
                && !is_hint_name(b"img.gvhint")
                && !is_hint_name(b".gvhint")
        );
        assert_eq!(hint_name(b"vm.mem"), b".vm.mem.gvhint");
    }
}
