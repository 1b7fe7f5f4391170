//! Write-back: WRITEs land in a local journal (synced, then indexed) and are acknowledged
//! at once; a background uploader replays them to the store in order.
//!
//! Order of a write: bytes appended to `journal.log` -> `fdatasync` -> `dirty_v1` row
//! committed -> NFS reply (FILE_SYNC). Concurrent writes share the sync (group commit):
//! one writer at a time syncs the journal on a blocking thread and indexes every write
//! appended before the sync in one transaction; the others wait for it, so a VM issuing
//! many writes at once pays one fdatasync per batch, not per write. Nothing acknowledged is ever lost: after a crash or
//! `kill -9`, the rows and the bytes they point at are there, and the uploader resumes
//! where it stopped. Uploading an entry twice is harmless (a WRITE of the same bytes at the
//! same place), so the uploader deletes rows only after the store has them (WRITE, then
//! COMMIT), and replays from the oldest row on start.
//!
//! Reads see acknowledged data before it reaches the store: dirty entries are laid over
//! what the cache or the store returns, and a file's size is the larger of the store's and
//! the furthest dirty byte.
//!
//! An entry the store refuses for good (a read-only store, a permission, a file gone
//! behind the mount) is **quarantined** (issue 11, items 9 and 10), never dropped and never
//! retried in a loop that blocks the rest: its bytes stay in the journal, later entries of
//! the same file join it (so an older one can never land over a newer one), the other
//! files' entries go on, `status` reports it, and later WRITE/COMMIT/truncate of that file
//! fail with EIO so the VM learns of it. The quarantine is retried at the next start.
//!
//! Lock order: `retire` (tokio) → `journal` → the index's connection; `quarantine` and
//! `changed` are leaves, never held while taking another lock.

use std::fs::{File, OpenOptions};
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use tokio::sync::Notify;

use super::index::{Dirty, DirtyRow, Index};
use super::validator;
use crate::error::{Error, Result};
use crate::proto::{Attr, FileRef, Status};
use crate::remote::RemoteStore;

/// Entries uploaded per round (then one COMMIT per file and one index transaction).
const BATCH: u64 = 64;
/// Non-overlapping entries sent at once: enough to fill a WAN link's bandwidth-delay
/// product with 1 MiB writes.
const PARALLEL_UPLOADS: usize = 16;

/// The journal file and the group-commit state. std Mutex: held for bookkeeping and the
/// (page cache) append only, never across a sync.
struct Journal {
    file: File,
    end: u64,
    /// Appends so far, and appends durable and indexed (tickets).
    written: u64,
    synced: u64,
    /// A writer is syncing now.
    leader: bool,
    /// Appended, not yet synced.
    pending: Vec<DirtyRow>,
    /// Failed syncs: tickets in (lo, hi] were not made durable. Kept (they are rare) so a
    /// writer that wakes late still learns its write failed.
    failures: Vec<(u64, u64, String)>,
}

pub struct WriteBack {
    /// Appends are serialised under it; the journal is only truncated under it when
    /// nothing is dirty or pending.
    journal: Mutex<Journal>,
    /// Another fd of the journal, for fdatasync off the lock.
    sync_fd: Arc<File>,
    /// Tickets synced so far, for writers waiting on another's sync.
    synced: tokio::sync::watch::Sender<u64>,
    index: Arc<Index>,
    /// Wakes the uploader when there is work; wakes flush waiters when a batch lands.
    work: Notify,
    progress: Notify,
    pub uploaded_bytes: AtomicU64,
    pub upload_errors: AtomicU64,
    /// Writes acknowledged, and the journal syncs that made them durable (group commit:
    /// fewer syncs than writes when writes overlap).
    pub journal_writes: AtomicU64,
    pub journal_syncs: AtomicU64,
    /// Acknowledged bytes not yet on the store (counted against `--cache-size`).
    pub dirty_bytes: AtomicU64,
    /// When the upload last moved (a batch landed) or, if later, when data started
    /// waiting in an empty journal (ms since the epoch): a backlog that has not moved
    /// for long is stuck (`gridvfs-client check`).
    progress_ms: AtomicU64,
    /// Per synced batch of this process: (first seq, last seq, ms since the epoch it was
    /// acknowledged), oldest first; pruned as entries upload. For the age of the oldest
    /// entry not yet on the store (`writeback_oldest_secs`).
    acked: Mutex<std::collections::VecDeque<(u64, u64, u64)>>,
    /// When this process opened the journal: the age floor of entries of earlier runs.
    opened_ms: u64,
    /// The "cache full of write-back data" warning was given and still holds.
    full_warned: std::sync::atomic::AtomicBool,
    /// Readers hold it for reading from "which attributes?" to "overlay done"; the uploader
    /// takes it for writing to retire entries. So a reader sees either the entries, or the
    /// store's new version (flagged in `changed`), never neither.
    pub retire: tokio::sync::RwLock<()>,
    /// Files whose uploaded data retired entries since their attributes were cached.
    changed: Mutex<std::collections::HashSet<u64>>,
    /// Entries the store refused for good, kept until the next start.
    quarantine: Mutex<Quarantine>,
    block_size: u64,
}

/// Entries kept back from upload: by seq, and per file why.
#[derive(Default)]
struct Quarantine {
    seqs: std::collections::HashSet<u64>,
    /// file -> (the store's answer, entries, bytes).
    files: std::collections::HashMap<u64, (String, u64, u64)>,
}

/// What became of one entry's upload.
enum Upload {
    /// On the store (COMMIT still due), with the file's attributes after this write.
    Landed(FileRef, Attr),
    /// Its file was removed through the mount: nothing to write to.
    Removed,
    /// Refused for good: kept back.
    Refused(String),
}

/// Store answers that no retry will change.
fn permanent(s: Status) -> bool {
    matches!(
        s,
        Status::RoFs
            | Status::Access
            | Status::Perm
            | Status::Escape
            | Status::FBig
            | Status::Inval
            | Status::IsDir
            | Status::NotDir
    )
}

impl WriteBack {
    /// The journal in `dir`; `block_size` is the cache's (for the blocks an upload makes
    /// stale).
    pub fn open(dir: &Path, index: Arc<Index>, block_size: u64) -> Result<Self> {
        use std::os::unix::fs::OpenOptionsExt;
        let f = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o600)
            .custom_flags(super::dir::no_follow())
            .open(dir.join("journal.log"))?;
        let journal_len = f.metadata()?.len();
        let sync_fd = Arc::new(f.try_clone()?);
        let dirty = index.dirty_pending()?.1;
        // Issue 11, item 12: rows pointing past the journal's end (a journal deleted or
        // truncated behind our back) can never be uploaded: report them, keep them back.
        let lost = index.dirty_beyond(journal_len)?;
        // New appends go after every byte a row points at, so no later write lands where
        // a lost entry's bytes were (a stale row must never match new data).
        let end = lost
            .iter()
            .map(|e| e.log_offset + e.len)
            .fold(journal_len, u64::max);
        let wb = Self {
            journal: Mutex::new(Journal {
                file: f,
                end,
                written: 0,
                synced: 0,
                leader: false,
                pending: Vec::new(),
                failures: Vec::new(),
            }),
            sync_fd,
            synced: tokio::sync::watch::channel(0).0,
            index,
            work: Notify::new(),
            progress: Notify::new(),
            uploaded_bytes: AtomicU64::new(0),
            upload_errors: AtomicU64::new(0),
            journal_writes: AtomicU64::new(0),
            journal_syncs: AtomicU64::new(0),
            dirty_bytes: AtomicU64::new(dirty),
            progress_ms: AtomicU64::new(now_ms()),
            acked: Mutex::default(),
            opened_ms: now_ms(),
            quarantine: Mutex::default(),
            full_warned: std::sync::atomic::AtomicBool::new(false),
            retire: tokio::sync::RwLock::new(()),
            changed: Mutex::default(),
            block_size,
        };
        if !lost.is_empty() {
            tracing::error!(
                "{} write-back entries point past the end of {} ({journal_len} bytes): the journal \
                 was deleted or truncated outside gridvfs. Their data is lost to us; they are \
                 kept back (never uploaded as garbage) and shown by `status`",
                lost.len(),
                dir.join("journal.log").display()
            );
        }
        for e in &lost {
            wb.keep_back(e, "its bytes are missing from the journal".into());
        }
        Ok(wb)
    }

    /// Make a write durable locally; returns once it is safe to acknowledge.
    pub async fn append(&self, file: u64, offset: u64, data: &[u8]) -> Result<()> {
        let mut sum = [0u8; 16];
        sum.copy_from_slice(&blake3::hash(data).as_bytes()[..16]);
        let ticket = {
            let mut j = self.journal.lock().expect("journal lock");
            let at = j.end;
            j.file.write_all_at(data, at)?;
            j.end = at + data.len() as u64;
            j.written += 1;
            j.pending.push(DirtyRow {
                file,
                offset,
                len: data.len() as u64,
                log_offset: at,
                sum,
            });
            j.written
        };
        loop {
            // Subscribed before looking, so a sync that ends meanwhile still wakes us.
            let mut rx = self.synced.subscribe();
            let batch = {
                let mut j = self.journal.lock().expect("journal lock");
                if j.synced >= ticket {
                    let failed = j
                        .failures
                        .iter()
                        .find(|(lo, hi, _)| *lo < ticket && ticket <= *hi);
                    return match failed {
                        Some((_, _, why)) => Err(Error::Io(std::io::Error::other(format!(
                            "write-back journal: {why}"
                        )))),
                        None => {
                            self.journal_writes.fetch_add(1, Ordering::Relaxed);
                            Ok(())
                        }
                    };
                }
                if j.leader {
                    None
                } else {
                    j.leader = true;
                    Some((std::mem::take(&mut j.pending), j.synced, j.written))
                }
            };
            let Some((rows, from, to)) = batch else {
                let _ = rx.changed().await;
                continue;
            };
            self.journal_syncs.fetch_add(1, Ordering::Relaxed);
            let bytes: u64 = rows.iter().map(|r| r.len).sum();
            let (fd, index) = (self.sync_fd.clone(), self.index.clone());
            let done = tokio::task::spawn_blocking(move || -> Result<Option<(u64, u64)>> {
                fd.sync_data()?;
                index.add_dirty_batch(&rows)
            })
            .await
            .unwrap_or_else(|e| Err(Error::Io(std::io::Error::other(e.to_string()))));
            {
                let mut j = self.journal.lock().expect("journal lock");
                j.synced = to;
                j.leader = false;
                match done {
                    Ok(seqs) => {
                        if let Some((lo, hi)) = seqs {
                            let mut acked = self.acked.lock().expect("acked lock");
                            acked.push_back((lo, hi, now_ms()));
                        }
                        if self.dirty_bytes.fetch_add(bytes, Ordering::Relaxed) == 0 {
                            self.progress_ms.store(now_ms(), Ordering::Relaxed);
                        }
                    }
                    Err(e) => {
                        tracing::error!("write-back journal sync failed: {e}");
                        j.failures.push((from, to, e.to_string()));
                    }
                }
            }
            self.synced.send_replace(to);
            self.work.notify_one();
        }
    }

    /// Lay dirty data of `file` over `buf`, which holds the bytes at `offset`.
    pub fn overlay(&self, file: u64, offset: u64, buf: &mut [u8]) -> Result<()> {
        let end = offset + buf.len() as u64;
        let entries = self.index.dirty_overlapping(file, offset, end)?;
        if entries.is_empty() {
            return Ok(());
        }
        let j = self.journal.lock().expect("journal lock");
        for e in entries {
            let (s, t) = (e.offset.max(offset), (e.offset + e.len).min(end));
            let dst = &mut buf[(s - offset) as usize..(t - offset) as usize];
            j.file.read_exact_at(dst, e.log_offset + (s - e.offset))?;
        }
        Ok(())
    }

    /// True (once) if uploads changed `file` on the store since the caller last asked:
    /// its cached attributes are out of date.
    pub fn take_changed(&self, file: u64) -> bool {
        self.changed.lock().expect("changed lock").remove(&file)
    }

    /// Size of `file` counting data not yet on the store.
    pub fn dirty_end(&self, file: u64) -> Result<Option<u64>> {
        self.index.dirty_end(file)
    }

    /// (entries, bytes) not yet on the store.
    pub fn pending(&self) -> Result<(u64, u64)> {
        self.index.dirty_pending()
    }

    /// Wait until `need` more bytes fit under `limit` of data not yet uploaded (always
    /// let one write through when nothing is dirty, however large).
    pub async fn wait_for_room(&self, need: u64, limit: u64) {
        loop {
            let notified = self.progress.notified();
            let dirty = self.dirty_bytes.load(Ordering::Relaxed);
            if dirty == 0 || dirty + need <= limit {
                if dirty <= limit / 2 {
                    self.full_warned.store(false, Ordering::Relaxed);
                }
                return;
            }
            // Once per episode of a full cache, not once per waiting write.
            if !self.full_warned.swap(true, Ordering::Relaxed) {
                tracing::warn!(
                    "write-back data not yet uploaded fills the cache ({dirty} bytes); writes wait for the upload"
                );
            }
            self.work.notify_one();
            let _ = tokio::time::timeout(Duration::from_millis(500), notified).await;
        }
    }

    /// (entries, bytes) kept back because the store refused them.
    pub fn quarantined(&self) -> (u64, u64) {
        let q = self.quarantine.lock().expect("quarantine lock");
        q.files
            .values()
            .fold((0, 0), |(n, b), (_, en, eb)| (n + en, b + eb))
    }

    /// With data pending: how long the upload has not moved (since a batch last landed,
    /// or since data started waiting in an empty journal). `None` with nothing pending.
    pub fn waiting(&self) -> Option<Duration> {
        let pending = self.dirty_bytes.load(Ordering::Relaxed) > 0;
        let since = self.progress_ms.load(Ordering::Relaxed);
        pending.then(|| Duration::from_millis(now_ms().saturating_sub(since)))
    }

    /// How long the oldest entry not yet on the store has waited since it was
    /// acknowledged (entries of an earlier run: at least since this process started).
    /// `None` with nothing pending.
    pub fn oldest_age(&self) -> Result<Option<Duration>> {
        let Some(oldest) = self.index.dirty_oldest(1)?.first().map(|e| e.seq) else {
            self.acked.lock().expect("acked lock").clear();
            return Ok(None);
        };
        let mut acked = self.acked.lock().expect("acked lock");
        while acked.front().is_some_and(|&(_, hi, _)| hi < oldest) {
            acked.pop_front();
        }
        let at = match acked.front() {
            Some(&(lo, _, ms)) if lo <= oldest => ms,
            _ => self.opened_ms,
        };
        Ok(Some(Duration::from_millis(now_ms().saturating_sub(at))))
    }

    /// Why the store refuses `file`'s write-back data, if it does.
    pub fn refused(&self, file: u64) -> Option<String> {
        let q = self.quarantine.lock().expect("quarantine lock");
        q.files.get(&file).map(|(why, _, _)| why.clone())
    }

    /// Wait until everything acknowledged so far is on the store, or kept back in the
    /// quarantine (then an error says how much).
    pub async fn drain(&self) -> Result<()> {
        loop {
            let notified = self.progress.notified();
            let (kept, kept_bytes) = self.quarantined();
            if self.pending()?.0 <= kept {
                if kept > 0 {
                    return Err(Error::WriteBackRefused {
                        entries: kept,
                        bytes: kept_bytes,
                    });
                }
                return Ok(());
            }
            self.work.notify_one();
            let _ = tokio::time::timeout(Duration::from_millis(200), notified).await;
        }
    }

    /// Upload forever (spawned at start; resumes whatever a previous run left).
    pub async fn run(self: Arc<Self>, remote: Arc<RemoteStore>) {
        // Up to 10 s: a store that refuses for a while (full disk) is not hammered.
        let mut backoff =
            crate::remote::Backoff::new(Duration::from_millis(100), Duration::from_secs(10));
        loop {
            match self.upload_batch(&remote).await {
                Ok(0) => {
                    self.compact();
                    self.progress.notify_waiters();
                    let _ =
                        tokio::time::timeout(Duration::from_secs(1), self.work.notified()).await;
                }
                Ok(_) => {
                    backoff.reset();
                    self.progress.notify_waiters();
                }
                Err(e) => {
                    self.upload_errors.fetch_add(1, Ordering::Relaxed);
                    let pause = backoff.next_pause();
                    tracing::warn!("write-back upload failed ({e}); retrying in {pause:?}");
                    tokio::time::sleep(pause).await;
                }
            }
        }
    }

    /// Upload the oldest entries in order; returns how many landed.
    async fn upload_batch(self: &Arc<Self>, remote: &Arc<RemoteStore>) -> Result<usize> {
        let kept = self
            .quarantine
            .lock()
            .expect("quarantine lock")
            .seqs
            .clone();
        let entries: Vec<Dirty> = self
            .index
            .dirty_oldest(BATCH + kept.len() as u64)?
            .into_iter()
            .filter(|e| !kept.contains(&e.seq))
            .take(BATCH as usize)
            .collect();
        if entries.is_empty() {
            return Ok(0);
        }
        // Entries that overlap none of the batch's others may travel at once (a redo log
        // is appends); if any overlap, order matters and they go one by one.
        let overlapping = entries.iter().enumerate().any(|(i, a)| {
            entries[i + 1..].iter().any(|b| {
                a.file == b.file && a.offset < b.offset + b.len && b.offset < a.offset + a.len
            })
        });
        let before = self.store_versions(remote, &entries).await;
        let mut targets: Vec<Upload> = Vec::with_capacity(entries.len());
        if overlapping {
            for e in &entries {
                let u = self.upload(remote, e).await?;
                if let Upload::Refused(why) = &u {
                    // At once: the next entries of this file must not overtake it.
                    self.keep_back(e, why.clone());
                }
                targets.push(u);
            }
        } else {
            for chunk in entries.chunks(PARALLEL_UPLOADS) {
                let mut set = tokio::task::JoinSet::new();
                for (i, e) in chunk.iter().copied().enumerate() {
                    let (this, remote) = (self.clone(), remote.clone());
                    set.spawn(async move { (i, this.upload(&remote, &e).await) });
                }
                let mut got: Vec<Option<Result<Upload>>> = (0..chunk.len()).map(|_| None).collect();
                while let Some(joined) = set.join_next().await {
                    let (i, r) =
                        joined.map_err(|e| Error::Protocol(format!("upload task: {e}")))?;
                    got[i] = Some(r);
                }
                for r in got {
                    targets.push(r.expect("every upload task reported")?);
                }
            }
        }
        let mut done = Vec::new();
        let mut retired = Vec::new();
        // Per file: where to COMMIT, and the attributes after its last write here.
        let mut touched: Vec<(u64, FileRef, Attr)> = Vec::new();
        for (e, target) in entries.iter().zip(targets) {
            match target {
                Upload::Landed(f, a) => match touched.iter_mut().find(|(id, ..)| *id == e.file) {
                    // Parallel writes land in any order: the last one has the latest
                    // change time (and the largest size).
                    Some((_, _, last)) => {
                        if (a.ctime, a.size) > (last.ctime, last.size) {
                            *last = a;
                        }
                    }
                    None => touched.push((e.file, f, a)),
                },
                Upload::Removed => tracing::warn!(
                    file = e.file,
                    "dropping write-back data of a file removed through the mount"
                ),
                Upload::Refused(why) => {
                    self.keep_back(e, why);
                    continue;
                }
            }
            done.push(e.seq);
            retired.push(*e);
        }
        let entries = retired;
        let ids: Vec<u64> = touched.iter().map(|(id, ..)| *id).collect();
        for (_, f, _) in &touched {
            remote.commit(f.clone()).await?;
        }
        let _retiring = self.retire.write().await;
        // Issue 11, item 20: the store's new version of each file is the one this upload
        // made, so the cache moves to it without asking the store to hash the file again
        // (a 20 GiB image per batch). Only where the cache matched the store before the
        // upload, and with the uploaded ranges dropped: they may hold the store's old
        // bytes, fetched by reads that overlaid the journal on them.
        for (id, _, after) in &touched {
            let Some(Some(pre)) = before.get(id) else {
                continue;
            };
            let ranges: Vec<(u64, u64)> = entries
                .iter()
                .filter(|e| e.file == *id)
                .map(|e| (e.offset, e.len))
                .collect();
            let blocks: Vec<(u64, u64)> = ranges
                .iter()
                .map(|&(off, len)| {
                    (
                        off / self.block_size,
                        (off + len.max(1) - 1) / self.block_size,
                    )
                })
                .collect();
            if let Err(err) = self
                .index
                .adopt_upload(*id, pre, &validator(after), &blocks)
            {
                tracing::debug!(
                    file = id,
                    "cannot move the cache to the uploaded version: {err}"
                );
            }
        }
        self.changed.lock().expect("changed lock").extend(ids);
        self.index.dirty_done(&done)?;
        let gone: u64 = entries.iter().map(|e| e.len).sum();
        let _ = self
            .dirty_bytes
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |d| {
                Some(d.saturating_sub(gone))
            });
        self.release(&entries);
        self.uploaded_bytes
            .fetch_add(entries.iter().map(|e| e.len).sum(), Ordering::Relaxed);
        if !done.is_empty() {
            self.progress_ms.store(now_ms(), Ordering::Relaxed);
        }
        Ok(done.len())
    }

    /// For each file of `entries` with cached blocks: the store's version of it now, if
    /// the cache holds that same version (`None` where it does not, or the store cannot
    /// say). Taken before the upload, to tell whether the cache may follow it.
    async fn store_versions(
        &self,
        remote: &RemoteStore,
        entries: &[Dirty],
    ) -> std::collections::HashMap<u64, Option<Vec<u8>>> {
        let mut out = std::collections::HashMap::new();
        for e in entries {
            if out.contains_key(&e.file) {
                continue;
            }
            let cached = self.index.validator(e.file).ok().flatten();
            let now = match (&cached, self.index.get(e.file)) {
                (Some(_), Ok(Some((path, ident)))) => {
                    let file = FileRef {
                        path,
                        ident: Some(ident),
                    };
                    remote.getattr(&file).await.ok().map(|a| validator(&a))
                }
                _ => None,
            };
            out.insert(e.file, now.filter(|v| cached.as_ref() == Some(v)));
        }
        out
    }

    /// Put `e` in the quarantine (its bytes stay in the journal), loudly the first time
    /// for its file.
    fn keep_back(&self, e: &Dirty, why: String) {
        let mut q = self.quarantine.lock().expect("quarantine lock");
        if !q.seqs.insert(e.seq) {
            return;
        }
        let first = !q.files.contains_key(&e.file);
        let slot = q.files.entry(e.file).or_insert((why.clone(), 0, 0));
        slot.1 += 1;
        slot.2 += e.len;
        drop(q);
        if first {
            tracing::error!(
                file = e.file,
                "write-back data cannot be uploaded ({why}); it is kept in the journal, \
                 reported by `status`, and retried at the next start. Later writes to this \
                 file fail with EIO until then"
            );
        }
    }

    /// Send one entry: landed, its file removed through the mount (its name is gone from
    /// the map: nothing to write to), or refused for good. `Err` for what may pass (the
    /// link, a full store): the batch is retried with back-off.
    async fn upload(&self, remote: &RemoteStore, e: &Dirty) -> Result<Upload> {
        if let Some(why) = self.refused(e.file) {
            // An older entry of this file is kept back: this one may not overtake it.
            return Ok(Upload::Refused(why));
        }
        let mut data = vec![0u8; e.len as usize];
        self.journal
            .lock()
            .expect("journal lock")
            .file
            .read_exact_at(&mut data, e.log_offset)?;
        // Issue 11, item 12: the bytes must be the ones acknowledged, never garbage.
        if let Some(sum) = self.index.dirty_sum(e.seq)?
            && blake3::hash(&data).as_bytes()[..16] != sum
        {
            return Ok(Upload::Refused(
                "its bytes in the journal are damaged (checksum mismatch)".into(),
            ));
        }
        let data = Bytes::from(data);
        for _ in 0..5 {
            let Some((path, ident)) = self.index.get(e.file)? else {
                return Ok(Upload::Removed);
            };
            let file = FileRef {
                path,
                ident: Some(ident),
            };
            match remote
                .write(file.clone(), e.offset, false, data.clone())
                .await
            {
                Ok(attr) => return Ok(Upload::Landed(file, attr)),
                // A rename may have moved it between reading the map and the write: look
                // the path up again (the entry is kept until the store has it).
                Err(Error::Status(Status::NoEnt | Status::Stale)) => {
                    tokio::time::sleep(Duration::from_millis(50)).await
                }
                Err(Error::Status(s)) if permanent(s) => {
                    return Ok(Upload::Refused(format!("the store answers {s:?}")));
                }
                Err(e) => return Err(e),
            }
        }
        // Still gone though the map has a name for it: removed or replaced on the store
        // behind the mount (or a rename still settling). Never dropped while its row
        // exists (issue 11, item 10): kept back, and retried at the next start.
        Ok(Upload::Refused(
            "the file is gone from the store under the name the mount knows".into(),
        ))
    }

    /// Give the disk space of uploaded entries back (punch their journal ranges), so a
    /// journal that is never empty — a VM writing all the time — does not grow without
    /// bound. Each range belongs to one entry alone, so neighbours are untouched.
    fn release(&self, entries: &[Dirty]) {
        use rustix::fs::{FallocateFlags, fallocate};
        let j = self.journal.lock().expect("journal lock");
        for e in entries {
            let flags = FallocateFlags::PUNCH_HOLE | FallocateFlags::KEEP_SIZE;
            if let Err(err) = fallocate(&j.file, flags, e.log_offset, e.len) {
                tracing::debug!(
                    "cannot punch the write-back journal ({err}); it shrinks when empty"
                );
                return;
            }
        }
    }

    /// With nothing dirty or waiting for a sync, the journal starts over.
    fn compact(&self) {
        let mut j = self.journal.lock().expect("journal lock");
        if j.end > 0
            && j.pending.is_empty()
            && !j.leader
            && j.written == j.synced
            && matches!(self.index.dirty_pending(), Ok((0, _)))
            && j.file.set_len(0).is_ok()
        {
            j.end = 0;
        }
    }
}

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}
