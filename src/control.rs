//! The client's control socket: `CACHE_DIR/<export>/control.sock`. A connection receives
//! one JSON line of figures and is closed; `gridvfs-client status` reads it.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::Ordering;

use serde::{Deserialize, Serialize};
use tokio::io::AsyncWriteExt;
use tokio::net::UnixListener;

use crate::cache::CacheStats;
use crate::remote::Counters;

/// What `status` shows.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Status {
    pub export_id: String,
    pub pid: u32,
    /// Requests sent through the tunnel, and bytes each way (frames included).
    pub tunnel_requests: u64,
    pub tunnel_bytes_sent: u64,
    pub tunnel_bytes_received: u64,
    pub reconnects: u64,
    pub block_hits: u64,
    pub block_misses: u64,
    /// File bytes fetched from the store into the cache.
    pub bytes_fetched: u64,
    pub checksum_failures: u64,
    pub invalidations: u64,
    pub read_ahead_blocks: u64,
    /// Of the bytes fetched: zero pages that never crossed, and what the rest packed to.
    pub zero_bytes: u64,
    pub packed_bytes: u64,
    pub evicted_blocks: u64,
    pub uncached_bytes: u64,
}

/// Figures the socket reports, from the live counters.
pub struct Sources {
    pub export_id: String,
    pub tunnel: Arc<Counters>,
    pub cache: Arc<CacheStats>,
}

impl Sources {
    pub fn snapshot(&self) -> Status {
        let t = &self.tunnel;
        let c = &self.cache;
        let l = |a: &std::sync::atomic::AtomicU64| a.load(Ordering::Relaxed);
        Status {
            export_id: self.export_id.clone(),
            pid: std::process::id(),
            tunnel_requests: l(&t.requests),
            tunnel_bytes_sent: l(&t.bytes_sent),
            tunnel_bytes_received: l(&t.bytes_received),
            reconnects: l(&t.reconnects),
            block_hits: l(&c.block_hits),
            block_misses: l(&c.block_misses),
            bytes_fetched: l(&c.bytes_fetched),
            checksum_failures: l(&c.checksum_failures),
            invalidations: l(&c.invalidations),
            read_ahead_blocks: l(&c.read_ahead_blocks),
            zero_bytes: l(&c.zero_bytes),
            packed_bytes: l(&c.packed_bytes),
            evicted_blocks: l(&c.evicted_blocks),
            uncached_bytes: l(&c.uncached_bytes),
        }
    }
}

pub fn socket_path(export_dir: &Path) -> PathBuf {
    export_dir.join("control.sock")
}

/// Serve the control socket until the task is dropped. A stale socket from a previous
/// run is replaced.
pub fn serve(export_dir: &Path, sources: Sources) -> std::io::Result<tokio::task::JoinHandle<()>> {
    let path = socket_path(export_dir);
    let _ = std::fs::remove_file(&path);
    let listener = UnixListener::bind(&path)?;
    let sources = Arc::new(sources);
    Ok(tokio::spawn(async move {
        while let Ok((mut s, _)) = listener.accept().await {
            let mut line = serde_json::to_vec(&sources.snapshot()).unwrap_or_default();
            line.push(b'\n');
            let _ = s.write_all(&line).await;
        }
    }))
}

/// Read the figures of the client serving `export_dir`.
pub async fn query(export_dir: &Path) -> std::io::Result<Status> {
    use tokio::io::AsyncReadExt;
    let mut s = tokio::net::UnixStream::connect(socket_path(export_dir)).await?;
    let mut buf = Vec::new();
    s.read_to_end(&mut buf).await?;
    serde_json::from_slice(&buf).map_err(std::io::Error::other)
}
