//! The client's persistent state: the SQLite [`index`] (file-id map, handle generation,
//! cached blocks) and the block cache [`DataPath`], the one place the client reads and
//! writes file data.
//!
//! Reads are served from local blocks when the store's validator of the file (size, mtime,
//! ctime, identity) is the one the blocks were fetched under; missing blocks are fetched
//! in runs, written to the data file, then indexed with their checksum. Writes go through
//! to the store (write-through); the blocks they touch are refreshed or dropped.
//!
//! Not yet (issue 4): single flight, read-ahead, capacity/LRU eviction, write-back.

pub mod index;
pub mod range;
pub mod store;

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use bytes::Bytes;

pub use index::Index;
use store::Store;

use crate::error::{Error, Result};
use crate::proto::{Attr, FileRef, Request, Response};
use crate::remote::RemoteStore;

/// Default block size: 256 KiB. Large enough that a sequential reader needs few round
/// trips per MiB and the index stays small (4,096 rows per GiB); small enough that a
/// random 4 KiB read of a disk image fetches at most 256 KiB (see DESIGN.md §6).
pub const DEFAULT_BLOCK_SIZE: u64 = 256 * 1024;
/// Largest request to the store for one run of missing blocks.
const MAX_FETCH: u64 = 4 * 1024 * 1024;

/// Cache figures (for `status`, the bench and tests).
#[derive(Debug, Default)]
pub struct CacheStats {
    pub block_hits: AtomicU64,
    pub block_misses: AtomicU64,
    pub bytes_fetched: AtomicU64,
    pub checksum_failures: AtomicU64,
    pub invalidations: AtomicU64,
}

/// File data, between the NFS front and the store.
pub struct DataPath {
    remote: Arc<RemoteStore>,
    index: Arc<Index>,
    blocks: Store,
    block_size: u64,
    pub stats: Arc<CacheStats>,
}

/// The store's version of a file: blocks are valid only under the validator they were
/// fetched with.
fn validator(a: &Attr) -> Vec<u8> {
    let mut v = Vec::with_capacity(44);
    v.extend_from_slice(&a.size.to_le_bytes());
    v.extend_from_slice(&a.mtime.sec.to_le_bytes());
    v.extend_from_slice(&a.mtime.nsec.to_le_bytes());
    v.extend_from_slice(&a.ctime.sec.to_le_bytes());
    v.extend_from_slice(&a.ctime.nsec.to_le_bytes());
    v.extend_from_slice(&a.ident.to_le_bytes());
    v
}

impl DataPath {
    pub fn new(
        remote: Arc<RemoteStore>,
        index: Arc<Index>,
        dir: PathBuf,
        block_size: u64,
    ) -> Result<Self> {
        if !block_size.is_power_of_two() || !(4096..=MAX_FETCH).contains(&block_size) {
            return Err(Error::Config(format!(
                "block size {block_size} must be a power of two from 4 KiB to 4 MiB"
            )));
        }
        Ok(Self {
            remote,
            index,
            blocks: Store::open(dir)?,
            block_size,
            stats: Arc::default(),
        })
    }

    /// Make the cached blocks of `id` match `attr`'s version of the file.
    fn revalidate(&self, id: u64, attr: &Attr) -> Result<()> {
        let v = validator(attr);
        if self.index.validator(id)?.as_deref() != Some(&v[..]) {
            if self.index.reset_file(id, &v)? {
                self.stats.invalidations.fetch_add(1, Ordering::Relaxed);
            }
            self.blocks.drop_file(id)?;
        }
        Ok(())
    }

    /// Read up to `len` bytes at `offset` of file `id` (at `file` on the store, whose
    /// current attributes are `attr`): (bytes, eof, attributes).
    pub async fn read(
        &self,
        id: u64,
        file: FileRef,
        attr: Attr,
        offset: u64,
        len: u32,
    ) -> Result<(Bytes, bool, Attr)> {
        self.revalidate(id, &attr)?;
        let (bs, size) = (self.block_size, attr.size);
        let Some((first, last)) = range::blocks(offset, u64::from(len), size, bs) else {
            return Ok((Bytes::new(), true, attr));
        };
        let present: HashMap<u64, [u8; 32]> =
            self.index.blocks(id, first, last)?.into_iter().collect();
        let mut buf = vec![0u8; ((last - first + 1) * bs) as usize];
        let mut missing = Vec::new();
        for b in first..=last {
            let blen = range::block_len(b, size, bs) as usize;
            let slot = &mut buf[((b - first) * bs) as usize..][..blen];
            if let Some(sum) = present.get(&b) {
                let n = self.blocks.read(id, b * bs, slot)?;
                if n == blen && blake3::hash(slot).as_bytes() == sum {
                    self.stats.block_hits.fetch_add(1, Ordering::Relaxed);
                    continue;
                }
                // Torn by a crash, or corrupted on disk: never served, fetched again.
                self.stats.checksum_failures.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(
                    file = id,
                    block = b,
                    "cached block failed its checksum; refetching"
                );
            }
            self.stats.block_misses.fetch_add(1, Ordering::Relaxed);
            missing.push(b);
        }
        let mut now = attr;
        for (start, n) in range::runs(&missing, MAX_FETCH / bs) {
            let off = start * bs;
            let want = (n * bs).min(size - off);
            let (data, fetched_attr) = self.fetch(file.clone(), off, want).await?;
            self.stats
                .bytes_fetched
                .fetch_add(data.len() as u64, Ordering::Relaxed);
            buf[((start - first) * bs) as usize..][..data.len()].copy_from_slice(&data);
            if validator(&fetched_attr) == validator(&attr) && data.len() as u64 == want {
                self.blocks.write(id, off, &data)?;
                let sums: Vec<(u64, [u8; 32])> = data
                    .chunks(bs as usize)
                    .enumerate()
                    .map(|(i, c)| (start + i as u64, *blake3::hash(c).as_bytes()))
                    .collect();
                self.index.add_blocks(id, &sums)?;
            } else {
                // The file changed while we read: serve what came, cache nothing.
                now = fetched_attr;
            }
        }
        let from = (offset - first * bs) as usize;
        let n = u64::from(len).min(size - offset) as usize;
        let eof = offset + n as u64 >= size;
        Ok((Bytes::from(buf).slice(from..from + n), eof, now))
    }

    async fn fetch(&self, file: FileRef, offset: u64, len: u64) -> Result<(Bytes, Attr)> {
        match self
            .remote
            .call(
                Request::Read {
                    file,
                    offset,
                    len: len as u32,
                },
                Bytes::new(),
            )
            .await?
        {
            (Response::Read { attr, .. }, data) => Ok((data, attr)),
            (other, _) => Err(unexpected(&other)),
        }
    }

    /// Write `data` at `offset` through to the store; `sync` asks it to be durable first.
    /// Cached blocks the write covers whole are refreshed, partly covered ones dropped.
    pub async fn write(
        &self,
        id: u64,
        file: FileRef,
        offset: u64,
        data: Bytes,
        sync: bool,
    ) -> Result<Attr> {
        let before = self.index.validator(id)?;
        let attr = match self
            .remote
            .call(Request::Write { file, offset, sync }, data.clone())
            .await?
        {
            (Response::Write { attr, .. }, _) => attr,
            (other, _) => return Err(unexpected(&other)),
        };
        let bs = self.block_size;
        if let Some((first, last)) = range::blocks(offset, data.len() as u64, attr.size, bs) {
            self.index.drop_blocks(id, first, last)?;
            let mut sums = Vec::new();
            for b in first..=last {
                let (bstart, blen) = (b * bs, range::block_len(b, attr.size, bs));
                let whole = bstart >= offset && bstart + blen <= offset + data.len() as u64;
                if whole && blen == bs {
                    let chunk = &data[(bstart - offset) as usize..][..blen as usize];
                    self.blocks.write(id, bstart, chunk)?;
                    sums.push((b, *blake3::hash(chunk).as_bytes()));
                }
            }
            self.index.add_blocks(id, &sums)?;
        }
        // Our own write changed the file's version; the other blocks still hold (if the
        // cache was current before it).
        if before.is_some() {
            self.index.set_validator(id, &validator(&attr))?;
        }
        Ok(attr)
    }

    /// Make earlier unstable writes durable on the store.
    pub async fn commit(&self, file: FileRef) -> Result<()> {
        self.remote
            .call(Request::Commit { file }, Bytes::new())
            .await
            .map(|_| ())
    }
}

/// A reply of the wrong shape for its request: the server is broken or not ours.
pub fn unexpected(resp: &Response) -> crate::Error {
    crate::Error::Protocol(format!("unexpected reply {resp:?}"))
}
