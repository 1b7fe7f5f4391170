//! The client's control socket: `CACHE_DIR/<export>/control.sock`. A connection sends one
//! command line: `status` gets one JSON line of figures; `flush` gets a JSON line of
//! figures every 200 ms until no write-back data is left, then the connection closes;
//! `profile-start` starts recording access profiles and `profile-save [PATH…]` stores
//! them in the files' hints on the store, each answered with one JSON line; `gc` runs
//! [`crate::cache::gc`] in the client (which holds the directory's lock).

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::Ordering;

use serde::{Deserialize, Serialize};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt};
use tokio::net::UnixListener;

use crate::cache::{CacheStats, WriteBack};
use crate::remote::Counters;

/// What `status` shows.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Status {
    pub export_id: String,
    /// The store served (`ssh://user@host:port/path`, `local:/path`, …) and the NFS
    /// address it is served on.
    #[serde(default)]
    pub store: String,
    #[serde(default)]
    pub listen: Option<std::net::SocketAddr>,
    pub pid: u32,
    /// Requests sent through the tunnel, and bytes each way (frames included).
    pub tunnel_requests: u64,
    pub tunnel_bytes_sent: u64,
    pub tunnel_bytes_received: u64,
    pub reconnects: u64,
    /// Seconds the store has been unreachable, while the client is offline (issue 16).
    #[serde(default)]
    pub offline_seconds: Option<f64>,
    /// Outages that made the client go offline, and requests asked to wait meanwhile.
    #[serde(default)]
    pub outages: u64,
    #[serde(default)]
    pub offline_refused: u64,
    /// Calls held for clients that cannot retry JUKEBOX (libnfs, qemu's `nfs://` driver):
    /// they are retried here until the store answers.
    #[serde(default)]
    pub held: u64,
    /// The last outage: how long, and what it served that had changed on the store.
    #[serde(default)]
    pub last_outage: Option<crate::nfs::stale::OutageReport>,
    pub block_hits: u64,
    pub block_misses: u64,
    /// File bytes fetched from the store into the cache.
    pub bytes_fetched: u64,
    pub checksum_failures: u64,
    pub invalidations: u64,
    pub read_ahead_blocks: u64,
    /// Of the bytes fetched: zero pages that never crossed, and what the rest packed to.
    pub zero_bytes: u64,
    /// Bytes answered as zeros from files' hints (nothing asked of the store).
    pub hint_zero_bytes: u64,
    /// Cached blocks kept across changes on the store (their hash was unchanged).
    pub delta_kept_blocks: u64,
    /// Blocks fetched ahead by access profiles and the `whole` policy.
    #[serde(default)]
    pub prefetched_blocks: u64,
    /// Blocks brought in by the background fill (`--fill`).
    #[serde(default)]
    pub filled_blocks: u64,
    /// Boot profiles recorded here and saved to files' hints (`--share-profiles`).
    #[serde(default)]
    pub profiles_shared: u64,
    pub packed_bytes: u64,
    pub evicted_blocks: u64,
    pub uncached_bytes: u64,
    /// Write-back: acknowledged data not yet on the store, and what was uploaded.
    pub dirty_entries: u64,
    pub dirty_bytes: u64,
    pub uploaded_bytes: u64,
    pub upload_errors: u64,
    /// Write-back entries the store refused for good, kept in the journal (retried at
    /// the next start).
    #[serde(default)]
    pub quarantined_entries: u64,
    #[serde(default)]
    pub quarantined_bytes: u64,
    /// With write-back data pending: seconds since the upload last moved (a batch
    /// landed, or data started waiting). `None` with nothing pending.
    #[serde(default)]
    pub writeback_waiting_secs: Option<f64>,
    /// Seconds the oldest write-back entry not yet on the store has waited since its
    /// acknowledgement. `None` with nothing pending.
    #[serde(default)]
    pub writeback_oldest_secs: Option<f64>,
    /// Smoothed round trip of small requests to the store (queueing behind bulk replies
    /// included, as TCP's SRTT), in ms; `None` before the first reply.
    #[serde(default)]
    pub link_rtt_ms: Option<f64>,
    /// Write-back: writes acknowledged and the journal syncs they took (group commit).
    #[serde(default)]
    pub journal_writes: u64,
    #[serde(default)]
    pub journal_syncs: u64,
    /// Files read since the client started, most recent first (at most 64).
    #[serde(default)]
    pub files: Vec<FileProgress>,
    /// The site tiers block payloads come from (`--block-source`), in order.
    #[serde(default)]
    pub tiers: Vec<TierStatus>,
    /// The blocks this client serves to a site tier (`--site-listen`), if it does.
    #[serde(default)]
    pub site: Option<SiteStatus>,
}

/// Blocks taken from the site tier (`--block-source`).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct TierStatus {
    pub url: String,
    /// Blocks from the tier (verified), and the sealed bytes they took.
    pub blocks: u64,
    pub bytes: u64,
    /// Blocks of manifest files fetched over the session instead (tier down, slow,
    /// missing or refused).
    pub fallbacks: u64,
    /// Payloads that failed verification (a broken or hostile cache).
    pub rejected: u64,
    /// Blocks not given within `--block-source-timeout` (slow, not necessarily down).
    #[serde(default)]
    pub late: u64,
    /// Why the tier is being skipped, while it is.
    pub down: Option<String>,
}

/// Blocks served to the site tier (`--site-listen`).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SiteStatus {
    pub listen: std::net::SocketAddr,
    pub blocks: u64,
    pub bytes: u64,
    pub refused: u64,
}

/// How much of one file is on this side.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct FileProgress {
    /// Path in the export.
    pub path: String,
    pub size: u64,
    /// Bytes in the local cache now (whole blocks; the last may be short).
    pub cached_bytes: u64,
    /// Bytes fetched from the store since start, and answered as zeros from the hint.
    pub fetched_bytes: u64,
    pub hint_zero_bytes: u64,
}

/// Figures the socket reports, from the live counters.
pub struct Sources {
    pub export_id: String,
    /// The store this client serves (`Remote::store_key`) and its NFS address: how
    /// `mount.gridvfs` recognises a running client it can attach to.
    pub store_key: String,
    pub listen: std::net::SocketAddr,
    pub data: Arc<crate::cache::DataPath>,
    pub index: Arc<crate::cache::Index>,
    pub block_size: u64,
    pub tunnel: Arc<Counters>,
    pub store: Arc<crate::remote::RemoteStore>,
    pub cache: Arc<CacheStats>,
    pub writeback: Option<Arc<WriteBack>>,
    pub stale: Arc<crate::nfs::stale::StaleCheck>,
    /// The block service for a site tier, and where it listens (`--site-listen`).
    pub site: Option<(Arc<crate::tier::Site>, std::net::SocketAddr)>,
}

impl Sources {
    pub fn snapshot(&self) -> Status {
        let t = &self.tunnel;
        let c = &self.cache;
        let l = |a: &std::sync::atomic::AtomicU64| a.load(Ordering::Relaxed);
        Status {
            export_id: self.export_id.clone(),
            store: self.store_key.clone(),
            listen: Some(self.listen),
            pid: std::process::id(),
            tunnel_requests: l(&t.requests),
            tunnel_bytes_sent: l(&t.bytes_sent),
            tunnel_bytes_received: l(&t.bytes_received),
            reconnects: l(&t.reconnects),
            offline_seconds: self.store.offline_for().map(|d| d.as_secs_f64()),
            outages: l(&t.outages),
            offline_refused: l(&t.offline_refused),
            held: l(&t.held),
            last_outage: self.stale.last(),
            block_hits: l(&c.block_hits),
            block_misses: l(&c.block_misses),
            bytes_fetched: l(&c.bytes_fetched),
            checksum_failures: l(&c.checksum_failures),
            invalidations: l(&c.invalidations),
            read_ahead_blocks: l(&c.read_ahead_blocks),
            zero_bytes: l(&c.zero_bytes),
            hint_zero_bytes: l(&c.hint_zero_bytes),
            delta_kept_blocks: l(&c.delta_kept_blocks),
            prefetched_blocks: l(&c.prefetched_blocks),
            filled_blocks: l(&c.filled_blocks),
            profiles_shared: l(&c.profiles_shared),
            packed_bytes: l(&c.packed_bytes),
            evicted_blocks: l(&c.evicted_blocks),
            uncached_bytes: l(&c.uncached_bytes),
            dirty_entries: self
                .writeback
                .as_ref()
                .and_then(|w| w.pending().ok())
                .map_or(0, |p| p.0),
            dirty_bytes: self
                .writeback
                .as_ref()
                .and_then(|w| w.pending().ok())
                .map_or(0, |p| p.1),
            uploaded_bytes: self.writeback.as_ref().map_or(0, |w| l(&w.uploaded_bytes)),
            upload_errors: self.writeback.as_ref().map_or(0, |w| l(&w.upload_errors)),
            quarantined_entries: self.writeback.as_ref().map_or(0, |w| w.quarantined().0),
            writeback_waiting_secs: self
                .writeback
                .as_ref()
                .and_then(|w| w.waiting())
                .map(|d| d.as_secs_f64()),
            writeback_oldest_secs: self
                .writeback
                .as_ref()
                .and_then(|w| w.oldest_age().ok().flatten())
                .map(|d| d.as_secs_f64()),
            link_rtt_ms: t.rtt_ms(),
            quarantined_bytes: self.writeback.as_ref().map_or(0, |w| w.quarantined().1),
            journal_writes: self.writeback.as_ref().map_or(0, |w| l(&w.journal_writes)),
            journal_syncs: self.writeback.as_ref().map_or(0, |w| l(&w.journal_syncs)),
            files: self.files(),
            tiers: (self.data.tiers().iter())
                .map(|t| TierStatus {
                    url: t.url().to_string(),
                    blocks: l(&t.stats.blocks),
                    bytes: l(&t.stats.bytes),
                    fallbacks: l(&t.stats.fallbacks),
                    rejected: l(&t.stats.rejected),
                    late: l(&t.stats.late),
                    down: t.skipped(),
                })
                .collect(),
            site: self.site.as_ref().map(|(s, addr)| SiteStatus {
                listen: *addr,
                blocks: l(&s.stats.blocks),
                bytes: l(&s.stats.bytes),
                refused: l(&s.stats.refused),
            }),
        }
    }

    fn files(&self) -> Vec<FileProgress> {
        let mut files: Vec<(u64, crate::cache::FileActivity)> = self
            .cache
            .files
            .lock()
            .expect("files lock")
            .iter()
            .map(|(k, v)| (*k, v.clone()))
            .collect();
        files.sort_by_key(|(_, f)| std::cmp::Reverse(f.last_read_ms));
        let ids: Vec<u64> = files.iter().map(|(k, _)| *k).collect();
        let counts = self.index.block_counts(&ids).unwrap_or_default();
        files
            .into_iter()
            .map(|(id, f)| FileProgress {
                cached_bytes: (counts.get(&id).copied().unwrap_or(0) * self.block_size).min(f.size),
                path: f.path,
                size: f.size,
                fetched_bytes: f.fetched,
                hint_zero_bytes: f.hint_zero,
            })
            .collect()
    }
}

pub fn socket_path(export_dir: &Path) -> PathBuf {
    export_dir.join("control.sock")
}

/// Serve the control socket until the task is dropped. A stale socket from a previous
/// run is replaced (the caller holds the export directory's lock, so it is not another
/// live client's). The socket is 0600 and each peer's uid is checked (our own or root):
/// `flush` and `gc` change things.
pub fn serve(
    export_dir: &Path,
    sources: Arc<Sources>,
) -> std::io::Result<tokio::task::JoinHandle<()>> {
    use std::os::unix::fs::PermissionsExt;
    let path = socket_path(export_dir);
    let _ = std::fs::remove_file(&path);
    let listener = UnixListener::bind(&path)?;
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600))?;
    let me = rustix::process::geteuid().as_raw();
    let export_dir = export_dir.to_path_buf();
    Ok(tokio::spawn(async move {
        loop {
            let s = match listener.accept().await {
                Ok((s, _)) => s,
                Err(e) => {
                    tracing::warn!("control socket accept failed (retrying): {e}");
                    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                    continue;
                }
            };
            match s.peer_cred() {
                Ok(c) if c.uid() == me || c.uid() == 0 => {}
                other => {
                    tracing::warn!(
                        "control socket: refused a peer that is not this user or root ({other:?})"
                    );
                    continue;
                }
            }
            let sources = sources.clone();
            let export_dir = export_dir.clone();
            tokio::spawn(async move {
                let (r, mut w) = s.into_split();
                let mut cmd = String::new();
                let mut r = tokio::io::BufReader::new(r);
                let _ =
                    tokio::time::timeout(std::time::Duration::from_secs(5), r.read_line(&mut cmd))
                        .await;
                let mut words = cmd.split_whitespace();
                match words.next() {
                    Some("profile-start") => {
                        sources.data.profile_start();
                        let _ = w.write_all(b"{\"recording\":true}\n").await;
                        return;
                    }
                    Some("gc") => {
                        let dir = export_dir.clone();
                        let reply =
                            match tokio::task::spawn_blocking(move || crate::cache::gc(&dir)).await
                            {
                                Ok(Ok(r)) => {
                                    serde_json::json!({ "files": r.files, "bytes": r.bytes })
                                }
                                Ok(Err(e)) => serde_json::json!({ "error": e.to_string() }),
                                Err(e) => serde_json::json!({ "error": e.to_string() }),
                            };
                        let _ = w.write_all(format!("{reply}\n").as_bytes()).await;
                        return;
                    }
                    Some("profile-save") => {
                        let only: Vec<String> = words.map(str::to_string).collect();
                        let reply = match sources.data.profile_save(&only).await {
                            Ok(saved) => serde_json::json!({ "saved": saved }),
                            Err(e) => serde_json::json!({ "error": e.to_string() }),
                        };
                        let _ = w.write_all(format!("{reply}\n").as_bytes()).await;
                        return;
                    }
                    _ => {}
                }
                let flush = cmd.trim() == "flush";
                loop {
                    let st = sources.snapshot();
                    let mut line = serde_json::to_vec(&st).unwrap_or_default();
                    line.push(b'\n');
                    let done = st.dirty_entries <= st.quarantined_entries;
                    if w.write_all(&line).await.is_err() || !flush || done {
                        return;
                    }
                    if let Some(wb) = &sources.writeback {
                        let _ =
                            tokio::time::timeout(std::time::Duration::from_millis(200), wb.drain())
                                .await;
                    }
                }
            });
        }
    }))
}

/// Send a one-line command and return the one JSON line answered.
pub async fn command(export_dir: &Path, cmd: &str) -> std::io::Result<serde_json::Value> {
    use tokio::io::AsyncReadExt;
    let mut s = tokio::net::UnixStream::connect(socket_path(export_dir)).await?;
    s.write_all(format!("{cmd}\n").as_bytes()).await?;
    let mut buf = Vec::new();
    s.read_to_end(&mut buf).await?;
    serde_json::from_slice(&buf).map_err(std::io::Error::other)
}

/// Read the figures of the client serving `export_dir`.
pub async fn query(export_dir: &Path) -> std::io::Result<Status> {
    use tokio::io::AsyncReadExt;
    let mut s = tokio::net::UnixStream::connect(socket_path(export_dir)).await?;
    s.write_all(b"status\n").await?;
    let mut buf = Vec::new();
    s.read_to_end(&mut buf).await?;
    serde_json::from_slice(&buf).map_err(std::io::Error::other)
}

/// Ask the client serving `export_dir` to flush; `progress` sees each report until no
/// write-back data is left.
pub async fn flush(export_dir: &Path, mut progress: impl FnMut(&Status)) -> std::io::Result<()> {
    let mut s = tokio::net::UnixStream::connect(socket_path(export_dir)).await?;
    s.write_all(b"flush\n").await?;
    let mut lines = tokio::io::BufReader::new(s).lines();
    while let Some(line) = lines.next_line().await? {
        let st: Status = serde_json::from_str(&line).map_err(std::io::Error::other)?;
        progress(&st);
        if st.dirty_entries == 0 {
            return Ok(());
        }
        if st.dirty_entries <= st.quarantined_entries {
            return Err(std::io::Error::other(format!(
                "{} write-back entries ({} bytes) were refused by the store and are kept in \
                 the journal (see `status`); fix the store and restart the client to retry them",
                st.quarantined_entries, st.quarantined_bytes
            )));
        }
    }
    Err(std::io::Error::other(
        "the client closed the connection before the flush finished",
    ))
}
