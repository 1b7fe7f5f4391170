//! The client's persistent state: the SQLite [`index`] (file-id map, handle generation,
//! cached blocks) and the block cache [`DataPath`], the one place the client reads and
//! writes file data.
//!
//! Reads are served from local blocks when the store's validator of the file (size, mtime,
//! ctime, identity) is the one the blocks were fetched under; missing blocks are fetched
//! in runs, written to the data file, then indexed with their checksum. Writes go through
//! to the store (write-through); the blocks they touch are refreshed or dropped.
//!
//! Concurrent readers of one missing block cause one fetch (single flight); sequential
//! readers get the following blocks fetched ahead of them. Past `--cache-size` the least
//! recently used blocks are evicted; under write-back, writes land in the [`writeback`]
//! journal first. Files' hints (`hints`) answer zero extents locally and drive the
//! profile and whole-file prefetch (`prefetch`); a file changed on the store keeps the
//! blocks whose hash did not change.
//!
//! # Lock order
//!
//! Outer first; a lock is only taken while holding locks above it, never below:
//!
//! 1. the front's namespace lock (`nfs::fs::Front::ns`), at the NFS entry points;
//! 2. write-back `retire` (readers: "store attributes, then journal overlay"; the
//!    uploader writes it to retire entries);
//! 3. a file's revalidation lock (`revalidating`, tokio: held across BlockSums), or a
//!    file's manifest lock (`manifests.asking`'s per-file tokio mutex: held across
//!    BlockSums, never together with the revalidation lock);
//! 4. one of the std mutexes of this struct: `inflight` (the claim map), `sequential`,
//!    `touched`, `recording`, `sharing`, `prefetching`, `revalidating`'s map, the
//!    background fill's state (`fill`), `manifests`' two maps, `learned`; a site tier's own locks
//!    (`tier::Tier`: back-off, last answer, statuses seen; `tier::Site`'s known files); or
//!    the journal mutex in `writeback`. Never two of them at once (the fill copies
//!    `prefetching` before taking its own); `claim` and `compact` take 5 inside;
//! 5. the SQLite connection mutex inside [`Index`] (innermost: every index call), or the
//!    checked-sums mutex inside [`Store`] (innermost too: never held with the index's).
//!
//! The std mutexes are never held across an await; claims are released by dropping them.

pub mod dir;
mod fill;
mod hints;
pub mod index;
mod manifest;
mod prefetch;
pub mod range;
mod readahead;
mod revalidate;
mod stats;
pub mod store;
#[cfg(test)]
mod tests;
pub mod writeback;

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use tokio::sync::watch;

pub use fill::FillPolicy;
pub use index::Index;
use prefetch::Recorded;
pub use stats::{CacheStats, FileActivity};
use store::Store;
pub use writeback::WriteBack;

use crate::error::{Error, Result};
use crate::proto::{Attr, FEATURE_PACKED_READ, FileRef, Hint, Request, Response, pack};
use crate::remote::{RemoteStore, unexpected};

/// Default block size: 256 KiB. Large enough that a sequential reader needs few round
/// trips per MiB and the index stays small (4,096 rows per GiB); small enough that a
/// random 4 KiB read of a disk image fetches at most 256 KiB (see DESIGN.md §6).
pub const DEFAULT_BLOCK_SIZE: u64 = 256 * 1024;
/// Largest request to the store for one run of missing blocks.
const MAX_FETCH: u64 = 4 * 1024 * 1024;
/// Read-ahead window in bytes, first and largest (4 MiB: more than the bandwidth-delay
/// product of a 100 Mbit/s, 40 ms link), whatever the block size.
const MIN_READ_AHEAD: u64 = 1 << 20;
const MAX_READ_AHEAD: u64 = 4 << 20;
/// Cache hits per LRU update transaction.
const TOUCH_BATCH: usize = 256;
/// Default `--cache-size`: 16 GiB.
pub const DEFAULT_CACHE_SIZE: u64 = 16 << 30;

/// File data, between the NFS front and the store.
pub struct DataPath {
    remote: Arc<RemoteStore>,
    index: Arc<Index>,
    blocks: Store,
    block_size: u64,
    pub stats: Arc<CacheStats>,
    /// (file, block) -> closed when the fetch of that block ends (single flight: concurrent
    /// readers of a missing block cause one fetch). std Mutex: held for map updates only.
    inflight: Mutex<HashMap<(u64, u64), watch::Receiver<()>>>,
    /// file -> (block a sequential reader will read next, read-ahead window in blocks).
    sequential: Mutex<HashMap<u64, (u64, u64)>>,
    /// `--cache-size` in blocks; past it the least recently used blocks are evicted.
    capacity_blocks: u64,
    /// Blocks in the index (approximate between evictions, exact after each).
    cached_blocks: AtomicU64,
    /// Blocks served from the cache since the last LRU update (written in batches).
    touched: Mutex<Vec<(u64, u64)>>,
    /// Write-back journal and uploader; `None` under write-through.
    pub writeback: Option<Arc<WriteBack>>,
    hints: hints::Hints,
    /// While a profile is recorded: file -> blocks in first-read order.
    recording: Mutex<Option<HashMap<u64, Recorded>>>,
    /// `--share-profiles`: how long a boot is recorded, and the files being recorded
    /// (first cold read of a hinted file without a profile; saved to its hint after).
    share_profiles: Option<std::time::Duration>,
    sharing: Mutex<HashMap<u64, Recorded>>,
    /// Files whose hint prefetch is running: read-ahead stays off for them (the profile
    /// knows what will be read; guessing past it only sends bytes nobody reads).
    prefetching: Mutex<std::collections::HashSet<u64>>,
    /// Per file, held while its changed blocks are revalidated (issue 11, item 20: one
    /// file's BlockSums, a remote call that may hash gigabytes, never delays another's).
    revalidating: Mutex<HashMap<u64, Arc<tokio::sync::Mutex<()>>>>,
    /// Background fill of the files being read (`--fill`); off unless [`Self::with_fill`].
    filler: Arc<fill::Filler>,
    /// The site tiers block payloads come from (`--block-source`), tried in order.
    tiers: Vec<Arc<crate::tier::Tier>>,
    /// The site itself, as a cache's answers named it: tried after `tiers`.
    learned: Mutex<Option<Arc<crate::tier::Tier>>>,
    /// Per file version, the block sums naming its blocks on the tier.
    manifests: manifest::Manifests,
}

/// `--write-policy`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WritePolicy {
    /// WRITE replies after the store has the data.
    Through,
    /// WRITE replies once the data is in the local journal; uploaded in the background.
    Back,
}

/// Blocks a caller has registered as in flight; unregistered (and their waiters woken)
/// when dropped, whether the fetch worked or not.
struct Claim {
    cache: Arc<DataPath>,
    id: u64,
    blocks: Vec<u64>,
    _done: watch::Sender<()>,
}

impl Drop for Claim {
    fn drop(&mut self) {
        let mut map = self.cache.inflight.lock().expect("inflight lock");
        for b in &self.blocks {
            map.remove(&(self.id, *b));
        }
    }
}

/// The store's version of a file: blocks are valid only under the validator they were
/// fetched with.
pub(crate) fn validator(a: &Attr) -> Vec<u8> {
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
        capacity: u64,
        policy: WritePolicy,
    ) -> Result<Self> {
        if !block_size.is_power_of_two() || !(4096..=MAX_FETCH).contains(&block_size) {
            return Err(Error::Config(format!(
                "block size {block_size} must be a power of two from 4 KiB to 4 MiB"
            )));
        }
        Ok(Self {
            remote,
            block_size,
            stats: Arc::default(),
            inflight: Mutex::default(),
            sequential: Mutex::default(),
            // At least room for two full read-ahead windows.
            capacity_blocks: (capacity / block_size).max(2 * MAX_READ_AHEAD / block_size + 4),
            cached_blocks: AtomicU64::new(index.block_count()?),
            touched: Mutex::default(),
            writeback: match policy {
                WritePolicy::Back => {
                    Some(Arc::new(WriteBack::open(&dir, index.clone(), block_size)?))
                }
                WritePolicy::Through => None,
            },
            blocks: Store::open(dir.join("blocks"))?,
            hints: hints::Hints::new(index.clone()),
            index,
            recording: Mutex::new(None),
            share_profiles: None,
            sharing: Mutex::new(HashMap::new()),
            prefetching: Mutex::default(),
            revalidating: Mutex::default(),
            filler: Arc::new(fill::Filler::new(FillPolicy::Off)),
            tiers: Vec::new(),
            learned: Mutex::new(None),
            manifests: Default::default(),
        })
    }

    /// Recording the first `window` of each cold boot of a hinted file without a profile,
    /// then saving it to the file's hint for later hosts (`--share-profiles`).
    pub fn with_shared_profiles(mut self, window: std::time::Duration) -> Self {
        self.share_profiles = Some(window);
        self
    }

    /// Taking block payloads of hinted files from `tiers`, in order (`--block-source`).
    pub fn with_tiers(mut self, tiers: Vec<Arc<crate::tier::Tier>>) -> Self {
        self.tiers = tiers;
        self
    }

    /// With background fill (`--fill`) as `policy`.
    pub fn with_fill(mut self, policy: FillPolicy) -> Self {
        self.filler = Arc::new(fill::Filler::new(policy));
        self
    }

    /// With the sweep on over any link (the in-process store answers in µs).
    #[cfg(test)]
    fn sweeping_any_link(mut self) -> Self {
        let mut f = fill::Filler::new(self.filler.policy);
        f.sweep_min_rtt_ms = 0.0;
        self.filler = Arc::new(f);
        self
    }

    /// Read up to `len` bytes at `offset` of file `id` (at `file` on the store, whose
    /// current attributes are `attr`): (bytes, eof, attributes).
    pub async fn read(
        self: &Arc<Self>,
        id: u64,
        file: FileRef,
        attr: Attr,
        offset: u64,
        len: u32,
    ) -> Result<(Bytes, bool, Attr)> {
        let Some(wb) = &self.writeback else {
            return self.read_store(id, file, attr, offset, len).await;
        };
        // Acknowledged writes not yet on the store are laid over the store's bytes.
        let dirty_end = wb.dirty_end(id)?.unwrap_or(0);
        let logical = attr.size.max(dirty_end);
        let n = u64::from(len).min(logical.saturating_sub(offset));
        let (stored, _, mut now) = self.read_store(id, file, attr, offset, n as u32).await?;
        let mut out = vec![0u8; n as usize];
        out[..stored.len()].copy_from_slice(&stored);
        wb.overlay(id, offset, &mut out)?;
        now.size = now.size.max(dirty_end);
        Ok((Bytes::from(out), offset + n >= logical, now))
    }

    /// Size of a file counting acknowledged writes not yet on the store.
    pub fn logical_size(&self, id: u64, stored: u64) -> u64 {
        match &self.writeback {
            Some(wb) => wb
                .dirty_end(id)
                .ok()
                .flatten()
                .map_or(stored, |e| e.max(stored)),
            None => stored,
        }
    }

    /// Wait until write-back data is all on the store (no-op under write-through).
    pub async fn drain(&self) -> Result<()> {
        match &self.writeback {
            Some(wb) => wb.drain().await,
            None => Ok(()),
        }
    }

    /// The store's bytes, through the block cache.
    async fn read_store(
        self: &Arc<Self>,
        id: u64,
        file: FileRef,
        attr: Attr,
        offset: u64,
        len: u32,
    ) -> Result<(Bytes, bool, Attr)> {
        self.revalidate(id, &file, &attr).await?;
        let (bs, size) = (self.block_size, attr.size);
        let Some((first, last)) = range::blocks(offset, u64::from(len), size, bs) else {
            return Ok((Bytes::new(), true, attr));
        };
        self.record(id, &file, first, last);
        // `buf` holds exactly the bytes asked for: blocks are copied in by their overlap.
        let count = u64::from(len).min(size - offset) as usize;
        let mut buf = vec![0u8; count];
        let mut done = vec![false; (last - first + 1) as usize];
        let mut now = attr;
        let mut hint = None;
        // Round 1 serves hits and fetches what nobody else is fetching; blocks another
        // reader is fetching are awaited, then picked up from the cache in the next round.
        for round in 0..4 {
            self.cached_into(id, size, offset, first, last, &mut buf, &mut done)?;
            if done.iter().all(|d| *d) {
                break;
            }
            // Only now, when the store is needed anyway, is the file's hint asked for.
            if hint.is_none() {
                hint = self.ask_hint(id, &file, &attr).await;
                // A boot recording for `--share-profiles` may have started just now.
                self.record(id, &file, first, last);
                if let Some(h) = &hint {
                    let zero = self.zero_fill(h, size, first, last, &mut done);
                    self.stats.note_file(id, &file.path, size, 0, zero);
                }
            }
            let missing: Vec<u64> = (first..=last)
                .filter(|b| !done[(b - first) as usize])
                .collect();
            if missing.is_empty() {
                break;
            }
            if round == 0 {
                // Misses: blocks that had to come from the store (zeros from the hint and
                // cache hits do not count).
                self.stats
                    .block_misses
                    .fetch_add(missing.len() as u64, Ordering::Relaxed);
            }
            let (mine, others) = self.claim(id, &missing);
            let _demand = (!mine.blocks.is_empty()).then(|| self.filler.demand());
            if round == 0 && !mine.blocks.is_empty() {
                self.note_miss(id, &file, &attr, hint.clone(), first, last);
            }
            for (start, n) in range::runs(&mine.blocks, MAX_FETCH / bs) {
                let off = start * bs;
                let want = (n * bs).min(size - off);
                let (data, fetched) = self
                    .fetch_into_cache(id, file.clone(), &attr, off, want)
                    .await?;
                let (lo, hi) = (
                    offset.max(off),
                    (offset + count as u64).min(off + data.len() as u64),
                );
                if lo < hi {
                    buf[(lo - offset) as usize..(hi - offset) as usize]
                        .copy_from_slice(&data[(lo - off) as usize..(hi - off) as usize]);
                }
                for b in start..start + n {
                    done[(b - first) as usize] = true;
                }
                if validator(&fetched) != validator(&attr) {
                    now = fetched;
                }
            }
            drop(mine);
            for mut rx in others {
                let _ = rx.changed().await;
            }
        }
        if done.iter().any(|d| !d) {
            return Err(Error::Protocol("cache: blocks never arrived".into()));
        }
        let hint = hint.or_else(|| self.hints.known(id, &validator(&attr)));
        self.stats.note_file(id, &file.path, size, 0, 0);
        self.read_ahead(id, file, attr, first, last, hint);
        let eof = offset + count as u64 >= size;
        Ok((Bytes::from(buf), eof, now))
    }

    /// The file's hint, asked of the store unless known; the first answer for this
    /// version of the file starts the prefetch it describes.
    async fn ask_hint(self: &Arc<Self>, id: u64, file: &FileRef, attr: &Attr) -> Option<Arc<Hint>> {
        let (hint, fresh) = self
            .hints
            .get(&self.remote, id, file, &validator(attr))
            .await;
        if let (Some(h), true) = (&hint, fresh) {
            self.start_prefetch(id, file, attr, h.clone());
            self.start_sharing(id, file, h);
        }
        hint
    }

    /// Mark the blocks of `first..=last` that the hint says are all zeros as done (`buf`
    /// is zeroed already): nothing is fetched or cached for them. Returns their bytes.
    fn zero_fill(&self, hint: &Hint, size: u64, first: u64, last: u64, done: &mut [bool]) -> u64 {
        let bs = self.block_size;
        let mut zero = 0;
        for b in first..=last {
            let i = (b - first) as usize;
            let len = range::block_len(b, size, bs);
            if !done[i] && zero_block(Some(hint), b, size, bs) {
                done[i] = true;
                zero += len;
            }
        }
        self.stats
            .hint_zero_bytes
            .fetch_add(zero, Ordering::Relaxed);
        zero
    }

    /// Copy the parts of cached blocks of `first..=last` that pass their checksum into
    /// `buf` (the bytes from `offset` on), marking them done.
    #[allow(clippy::too_many_arguments)]
    fn cached_into(
        &self,
        id: u64,
        size: u64,
        offset: u64,
        first: u64,
        last: u64,
        buf: &mut [u8],
        done: &mut [bool],
    ) -> Result<()> {
        let bs = self.block_size;
        let present: HashMap<u64, [u8; 32]> =
            self.index.blocks(id, first, last)?.into_iter().collect();
        let end = offset + buf.len() as u64;
        let mut scratch = Vec::new();
        for b in first..=last {
            let i = (b - first) as usize;
            if done[i] {
                continue;
            }
            let Some(sum) = present.get(&b) else {
                continue;
            };
            let block = (b * bs, range::block_len(b, size, bs));
            let (lo, hi) = (offset.max(block.0), end.min(block.0 + block.1));
            let part = &mut buf[(lo - offset) as usize..(hi - offset) as usize];
            if self
                .blocks
                .read_checked(id, block, sum, lo, part, &mut scratch)?
            {
                self.stats.block_hits.fetch_add(1, Ordering::Relaxed);
                done[i] = true;
                self.touch(id, b)?;
            } else {
                // Torn by a crash, or corrupted on disk: never served, fetched again.
                self.stats.checksum_failures.fetch_add(1, Ordering::Relaxed);
                self.index.drop_blocks(id, b, b)?;
                tracing::warn!(
                    file = id,
                    block = b,
                    "cached block failed its checksum; refetching"
                );
            }
        }
        Ok(())
    }

    /// Split `missing` into blocks this caller fetches (now registered as in flight) and
    /// watchers of blocks others are already fetching.
    fn claim(self: &Arc<Self>, id: u64, missing: &[u64]) -> (Claim, Vec<watch::Receiver<()>>) {
        let (tx, rx) = watch::channel(());
        let mut map = self.inflight.lock().expect("inflight lock");
        // A fetch that ended since the caller looked has indexed its blocks before
        // releasing them: look again, under the lock, so no block is fetched twice.
        let (lo, hi) = (
            missing.first().copied().unwrap_or(0),
            missing.last().copied().unwrap_or(0),
        );
        let now_present: std::collections::HashSet<u64> = if missing.is_empty() {
            Default::default()
        } else {
            self.index
                .blocks(id, lo, hi)
                .unwrap_or_default()
                .into_iter()
                .map(|(b, _)| b)
                .collect()
        };
        let mut mine = Vec::new();
        let mut others = Vec::new();
        for &b in missing {
            if now_present.contains(&b) {
                continue;
            }
            match map.get(&(id, b)) {
                Some(r) => others.push(r.clone()),
                None => {
                    map.insert((id, b), rx.clone());
                    mine.push(b);
                }
            }
        }
        (
            Claim {
                cache: self.clone(),
                id,
                blocks: mine,
                _done: tx,
            },
            others,
        )
    }

    /// Fetch `len` bytes at `off` and, if the file did not change meanwhile, store them as
    /// blocks (data first, then the index rows with their checksums).
    async fn fetch_into_cache(
        &self,
        id: u64,
        file: FileRef,
        attr: &Attr,
        off: u64,
        len: u64,
    ) -> Result<(Bytes, Attr)> {
        let bs = self.block_size;
        let path = file.path.clone();
        let (data, fetched) = match self.fetch_from_tier(id, &file, attr, off, len).await? {
            Some(got) => got,
            None => self.fetch(file, off, len).await?,
        };
        self.stats
            .bytes_fetched
            .fetch_add(data.len() as u64, Ordering::Relaxed);
        self.stats
            .note_file(id, &path, fetched.size, data.len() as u64, 0);
        if validator(&fetched) == validator(attr) && data.len() as u64 == len {
            if let Err(e) = self.store_data(id, off, &data) {
                // A full cache disk: serve uncached rather than fail the read.
                self.stats
                    .uncached_bytes
                    .fetch_add(data.len() as u64, Ordering::Relaxed);
                tracing::warn!(
                    "cannot cache {} bytes ({e}); serving them uncached",
                    data.len()
                );
                return Ok((data, fetched));
            }
            let sums: Vec<(u64, [u8; 32])> = data
                .chunks(bs as usize)
                .enumerate()
                .map(|(i, c)| (off / bs + i as u64, *blake3::hash(c).as_bytes()))
                .collect();
            if self.index.add_blocks_under(id, &validator(attr), &sums)? {
                self.cached_blocks
                    .fetch_add(sums.len() as u64, Ordering::Relaxed);
                self.evict_if_full()?;
            } else {
                tracing::debug!(
                    file = id,
                    "fetched under a version revalidation replaced; not cached"
                );
            }
        }
        Ok((data, fetched))
    }

    /// Under write-back, past --cache-size of data not yet uploaded: wait for the upload.
    pub async fn wait_for_room(&self, len: u64) {
        if let Some(wb) = &self.writeback {
            wb.wait_for_room(len, self.capacity_blocks * self.block_size)
                .await;
        }
    }

    /// True if the hint of `id` (as `attr` describes it) declares the file immutable: its
    /// attributes and blocks need no revalidation.
    pub fn immutable(&self, id: u64, attr: &Attr) -> bool {
        self.hints
            .known(id, &validator(attr))
            .is_some_and(|h| h.immutable)
    }

    /// Fetch the claimed `blocks` of file `id` (version `attr`) into the cache in runs of
    /// at most [`MAX_FETCH`], adding each run's blocks to `done`: what read-ahead, hint
    /// prefetch and background fill share. Stops at the first error, and at a reply that
    /// shows another version of the file (`Ok(false)`: what follows would not be cached).
    async fn fetch_blocks(
        &self,
        id: u64,
        file: &FileRef,
        attr: &Attr,
        blocks: &[u64],
        done: &AtomicU64,
    ) -> Result<bool> {
        let bs = self.block_size;
        for (start, n) in range::runs(blocks, MAX_FETCH / bs) {
            let off = start * bs;
            let want = (n * bs).min(attr.size - off);
            let (_, now) = self
                .fetch_into_cache(id, file.clone(), attr, off, want)
                .await?;
            if validator(&now) != validator(attr) {
                return Ok(false);
            }
            done.fetch_add(n, Ordering::Relaxed);
        }
        Ok(true)
    }

    /// Write block data, making room once by eviction if the disk is full.
    fn store_data(&self, id: u64, off: u64, data: &[u8]) -> Result<()> {
        match self.blocks.write(id, off, data) {
            Err(Error::Io(e))
                if e.raw_os_error() == Some(rustix::io::Errno::NOSPC.raw_os_error()) =>
            {
                self.evict(self.capacity_blocks / 10 + 1)?;
                self.blocks.write(id, off, data)
            }
            other => other,
        }
    }

    /// Note a cache hit for LRU order; written to the index in batches.
    fn touch(&self, id: u64, block: u64) -> Result<()> {
        let batch = {
            let mut t = self.touched.lock().expect("touched lock");
            t.push((id, block));
            if t.len() < TOUCH_BATCH {
                return Ok(());
            }
            std::mem::take(&mut *t)
        };
        self.index.touch(&batch)
    }

    /// Past capacity, evict least recently used blocks down to 90% of it.
    fn evict_if_full(&self) -> Result<()> {
        let cached = self.cached_blocks.load(Ordering::Relaxed);
        // Write-back data not yet uploaded takes its share of the capacity first: it can
        // only leave by upload, clean blocks can always be fetched again.
        let dirty = self.dirty_blocks();
        if cached + dirty <= self.capacity_blocks {
            return Ok(());
        }
        let target = (self.capacity_blocks * 9 / 10).saturating_sub(dirty);
        self.evict(cached.saturating_sub(target))
    }

    /// Blocks' worth of acknowledged data not yet on the store.
    fn dirty_blocks(&self) -> u64 {
        self.writeback.as_ref().map_or(0, |w| {
            w.dirty_bytes
                .load(Ordering::Relaxed)
                .div_ceil(self.block_size)
        })
    }

    /// Evict `n` least recently used blocks: out of the index first (no longer trusted),
    /// then their disk space freed. Blocks being fetched are not in the index yet, and a
    /// block evicted under a reader fails its checksum and is fetched again: eviction
    /// never makes a read fail or return wrong bytes.
    fn evict(&self, n: u64) -> Result<()> {
        {
            let batch = std::mem::take(&mut *self.touched.lock().expect("touched lock"));
            self.index.touch(&batch)?;
        }
        let victims = self.index.evict_oldest(n)?;
        let bs = self.block_size;
        for (file, block) in &victims {
            self.blocks.punch(*file, block * bs, bs)?;
        }
        self.stats
            .evicted_blocks
            .fetch_add(victims.len() as u64, Ordering::Relaxed);
        self.cached_blocks
            .store(self.index.block_count()?, Ordering::Relaxed);
        Ok(())
    }

    /// Fetch a range from the store: packed (zero pages left out, the rest compressed)
    /// when the server can, plain otherwise.
    async fn fetch(&self, file: FileRef, offset: u64, len: u64) -> Result<(Bytes, Attr)> {
        let len = len as u32;
        let asked = len as usize;
        if self.remote.welcome().features & FEATURE_PACKED_READ == 0 {
            return match self
                .remote
                .call(Request::Read { file, offset, len }, Bytes::new())
                .await?
            {
                // Never more than asked for (issue 11, item 17): callers slice by it.
                (Response::Read { .. }, data) if data.len() > asked => {
                    Err(Error::Protocol(format!(
                        "the store answered a {len}-byte read with {} bytes",
                        data.len()
                    )))
                }
                (Response::Read { attr, .. }, data) => Ok((data, attr)),
                (other, _) => Err(unexpected(&other)),
            };
        }
        match self
            .remote
            .call(Request::ReadPacked { file, offset, len }, Bytes::new())
            .await?
        {
            (
                Response::Packed {
                    attr,
                    len,
                    zero,
                    compressed,
                    ..
                },
                payload,
            ) => {
                let p = pack::Packed {
                    len,
                    zero,
                    compressed,
                    payload: payload.to_vec(),
                };
                let data = pack::unpack(&p, asked)
                    .map_err(|e| Error::Protocol(format!("bad packed read: {e}")))?;
                self.stats
                    .zero_bytes
                    .fetch_add(pack::zero_bytes(&p), Ordering::Relaxed);
                self.stats
                    .packed_bytes
                    .fetch_add(p.payload.len() as u64, Ordering::Relaxed);
                Ok((Bytes::from(data), attr))
            }
            (other, _) => Err(unexpected(&other)),
        }
    }

    /// Write `data` at `offset` through to the store; `sync` asks it to be durable first.
    /// Cached blocks the write covers whole are refreshed, partly covered ones dropped.
    ///
    /// Under write-back the data goes to the local journal instead (synced before this
    /// returns) and `current` (the store's attributes as the front knows them) comes back
    /// with the size grown to cover it. Returns the attributes and whether the data is
    /// durable (always, under write-back).
    pub async fn write(
        &self,
        id: u64,
        file: FileRef,
        current: Option<Attr>,
        offset: u64,
        data: Bytes,
        sync: bool,
    ) -> Result<(Attr, bool)> {
        if let (Some(wb), Some(current)) = (&self.writeback, current) {
            wb.append(id, offset, &data).await?;
            self.evict_if_full()?;
            if let Some((first, last)) =
                range::blocks(offset, data.len() as u64, u64::MAX, self.block_size)
            {
                // The journal overlays these bytes until the upload; after it the store's
                // new validator drops the file's blocks.
                self.index.drop_blocks(id, first, last)?;
            }
            let mut a = current;
            a.size = a
                .size
                .max(offset + data.len() as u64)
                .max(self.logical_size(id, 0));
            return Ok((a, true));
        }
        let before = self.index.validator(id)?;
        let attr = self.remote.write(file, offset, sync, data.clone()).await?;
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
        Ok((attr, sync))
    }

    /// Make earlier unstable writes durable on the store. (Under write-back every write
    /// is already durable in the journal.)
    pub async fn commit(&self, file: FileRef) -> Result<()> {
        if self.writeback.is_some() {
            return Ok(());
        }
        self.remote.commit(file).await
    }
}

/// What [`gc`] removed.
#[derive(Debug, Default, Clone, Copy)]
pub struct GcReport {
    pub files: u64,
    pub bytes: u64,
}

/// Remove cached data nothing can read any more: files whose names are gone, and data
/// files without a name in the map. Run by the process holding the export directory's
/// lock: `cache gc` itself when no client runs, else the client (control socket `gc`).
/// Whether `hint` says block `b` (of a file of `size` bytes) is all zeros.
fn zero_block(hint: Option<&Hint>, b: u64, size: u64, bs: u64) -> bool {
    hint.is_some_and(|h| h.is_zero(b * bs, range::block_len(b, size, bs)))
}

pub fn gc(export_dir: &std::path::Path) -> Result<GcReport> {
    use std::os::unix::fs::MetadataExt;
    let index = Index::open(&export_dir.join("index.sqlite"))?;
    let mut report = GcReport::default();
    let blocks = export_dir.join("blocks");
    let orphans: std::collections::HashSet<u64> = index.collect_orphans()?.into_iter().collect();
    for entry in std::fs::read_dir(&blocks).into_iter().flatten().flatten() {
        let Some(id) = entry
            .file_name()
            .to_str()
            .and_then(|n| u64::from_str_radix(n, 16).ok())
        else {
            continue;
        };
        if orphans.contains(&id) || !index.is_named(id)? {
            report.bytes += entry.metadata().map(|m| m.blocks() * 512).unwrap_or(0);
            std::fs::remove_file(entry.path())?;
            report.files += 1;
        }
    }
    Ok(report)
}
