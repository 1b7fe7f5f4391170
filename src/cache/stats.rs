//! The block cache's figures, for `status`, the bench and tests: counters, and what each
//! recently read file has cost.

use std::collections::HashMap;
use std::sync::Mutex;
use std::sync::atomic::AtomicU64;

/// Cache figures (for `status`, the bench and tests).
#[derive(Debug, Default)]
pub struct CacheStats {
    pub block_hits: AtomicU64,
    pub block_misses: AtomicU64,
    pub bytes_fetched: AtomicU64,
    pub checksum_failures: AtomicU64,
    pub invalidations: AtomicU64,
    pub read_ahead_blocks: AtomicU64,
    /// Bytes of zero pages the store left out of packed reads (never crossed the link).
    pub zero_bytes: AtomicU64,
    /// Payload bytes of packed reads as they crossed (compressed).
    pub packed_bytes: AtomicU64,
    pub evicted_blocks: AtomicU64,
    /// Bytes served without caching because the cache disk was full.
    pub uncached_bytes: AtomicU64,
    /// Bytes answered as zeros from the file's hint, without asking the store.
    pub hint_zero_bytes: AtomicU64,
    /// Cached blocks kept across a change on the store because their hash was unchanged.
    pub delta_kept_blocks: AtomicU64,
    /// Blocks fetched ahead by an access profile or the `whole` policy.
    pub prefetched_blocks: AtomicU64,
    /// Blocks brought in by the background fill (`--fill`).
    pub filled_blocks: AtomicU64,
    /// Boot profiles this host recorded and saved to files' hints (`--share-profiles`).
    pub profiles_shared: AtomicU64,
    /// Files read since start, for per-file progress in `status`.
    pub files: Mutex<HashMap<u64, FileActivity>>,
}

/// What one file has cost since the client started.
#[derive(Debug, Clone, Default)]
pub struct FileActivity {
    pub path: String,
    pub size: u64,
    /// Bytes fetched from the store.
    pub fetched: u64,
    /// Bytes answered as zeros from the hint.
    pub hint_zero: u64,
    /// When it was last read (ms since the epoch), to list recent files first.
    pub last_read_ms: u64,
}

/// Files kept in [`CacheStats::files`]; the least recently read is forgotten past it.
const TRACKED_FILES: usize = 64;

impl CacheStats {
    pub(super) fn note_file(&self, id: u64, path: &[u8], size: u64, fetched: u64, hint_zero: u64) {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as u64);
        let mut files = self.files.lock().expect("files lock");
        if !files.contains_key(&id) && files.len() >= TRACKED_FILES {
            let oldest = files
                .iter()
                .min_by_key(|(_, f)| f.last_read_ms)
                .map(|(k, _)| *k);
            if let Some(k) = oldest {
                files.remove(&k);
            }
        }
        let f = files.entry(id).or_default();
        if f.path.is_empty() {
            f.path = String::from_utf8_lossy(path).into_owned();
        }
        f.size = size;
        f.fetched += fetched;
        f.hint_zero += hint_zero;
        f.last_read_ms = now;
    }
}
