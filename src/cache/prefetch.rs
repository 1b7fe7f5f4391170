//! Prefetch from hints: the recorded access profile of a file (or the whole file under the
//! `whole` policy) fetched ahead of the reader on its first read; and the recording of
//! profiles (`gridvfs-client profile start`/`save`).

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use super::{DataPath, MAX_FETCH, validator};
use crate::error::{Error, Result};
use crate::proto::{Attr, FileRef, Hint};

/// One file's recorded access order.
pub(super) struct Recorded {
    file: FileRef,
    order: Vec<u32>,
    seen: std::collections::HashSet<u64>,
}

/// Bytes a profile or whole-file prefetch keeps in flight: a WAN's bandwidth-delay product
/// several times over whether its runs are one block or sixteen, and at most half the
/// tunnel's request slots at the smallest block size, so the reader's requests get in.
const PREFETCH_WINDOW: u64 = 32 << 20;

impl DataPath {
    /// On the first read of a file version: fetch what its hint says will be needed, in
    /// that order — the recorded access profile, or the whole file under the `whole`
    /// policy — in the background, [`PREFETCH_WINDOW`] bytes in flight, ahead of the reader. A read of
    /// a block the prefetch has not claimed yet fetches it itself, so reads out of profile
    /// order are never held up behind it.
    pub(super) fn start_prefetch(
        self: &Arc<Self>,
        id: u64,
        file: &FileRef,
        attr: &Attr,
        hint: Arc<Hint>,
    ) {
        let bs = self.block_size;
        let nblocks = attr.size.div_ceil(bs);
        let order: Vec<u64> = if !hint.profile.is_empty() && hint.block_size > 0 {
            let pbs = u64::from(hint.block_size);
            let mut seen = std::collections::HashSet::new();
            hint.profile
                .iter()
                .flat_map(|&p| {
                    let start = u64::from(p) * pbs;
                    (start / bs)..=((start + pbs - 1) / bs)
                })
                .filter(|b| *b < nblocks && seen.insert(*b))
                .collect()
        } else if hint.policy == crate::proto::FetchPolicy::Whole {
            (0..nblocks).collect()
        } else {
            return;
        };
        let order: Vec<u64> = order
            .into_iter()
            .filter(|&b| !super::zero_block(Some(&hint), b, attr.size, bs))
            .collect();
        tracing::info!(
            file = id,
            "prefetching {} blocks ({})",
            order.len(),
            if hint.profile.is_empty() {
                "whole file"
            } else {
                "access profile"
            }
        );
        let (this, file, attr) = (self.clone(), file.clone(), *attr);
        self.prefetching
            .lock()
            .expect("prefetching lock")
            .insert(id);
        tokio::spawn(async move {
            let v = validator(&attr);
            // Runs of consecutive blocks in profile order, each one fetch.
            let mut runs: Vec<(u64, u64)> = Vec::new();
            for b in order {
                match runs.last_mut() {
                    Some((s, n)) if *s + *n == b && *n < MAX_FETCH / bs => *n += 1,
                    _ => runs.push((b, 1)),
                }
            }
            let window = (PREFETCH_WINDOW / bs).max(MAX_FETCH / bs);
            let failed = Arc::new(std::sync::atomic::AtomicBool::new(false));
            let slots = Arc::new(tokio::sync::Semaphore::new(window as usize));
            let mut tasks = tokio::task::JoinSet::new();
            for (start, n) in runs {
                let Ok(permit) = slots.clone().acquire_many_owned(n as u32).await else {
                    break;
                };
                while tasks.try_join_next().is_some() {}
                if this.index.validator(id).ok().flatten().as_deref() != Some(&v[..]) {
                    break; // the file changed: this profile is for another version
                }
                let Ok(present) = this.index.blocks(id, start, start + n - 1) else {
                    break;
                };
                let present: std::collections::HashSet<u64> =
                    present.into_iter().map(|(b, _)| b).collect();
                let missing: Vec<u64> = (start..start + n)
                    .filter(|b| !present.contains(b))
                    .collect();
                let (mine, _) = this.claim(id, &missing);
                if mine.blocks.is_empty() {
                    continue;
                }
                if failed.load(Ordering::Relaxed) {
                    break; // the store is failing: readers fetch for themselves
                }
                let (t, file, failed) = (this.clone(), file.clone(), failed.clone());
                tasks.spawn(async move {
                    let done = &t.stats.prefetched_blocks;
                    if let Err(e) = t.fetch_blocks(id, &file, &attr, &mine.blocks, done).await {
                        tracing::warn!(file = id, "prefetch stopped: {e}");
                        failed.store(true, Ordering::Relaxed);
                    }
                    drop((mine, permit));
                });
            }
            while tasks.join_next().await.is_some() {}
            this.prefetching
                .lock()
                .expect("prefetching lock")
                .remove(&id);
        });
    }

    /// `--share-profiles`: a hinted file read cold whose hint has no profile yet has its
    /// first-touch order recorded for the window, then saved to its hint on the store —
    /// unless another host saved one meanwhile — where later hosts' prefetch finds it
    /// (through the site tier, if they use one). Needs a writable export; a refusal is
    /// logged.
    pub(super) fn start_sharing(self: &Arc<Self>, id: u64, file: &FileRef, hint: &Hint) {
        let Some(window) = self.share_profiles else {
            return;
        };
        if hint.source != crate::proto::HintSource::File || !hint.profile.is_empty() {
            return;
        }
        {
            let mut sharing = self.sharing.lock().expect("sharing lock");
            if sharing.contains_key(&id) {
                return;
            }
            sharing.insert(
                id,
                Recorded {
                    file: file.clone(),
                    order: Vec::new(),
                    seen: Default::default(),
                },
            );
        }
        tracing::info!(
            "recording the first {}s of reads of {} (no boot profile yet) to share it",
            window.as_secs(),
            String::from_utf8_lossy(&file.path)
        );
        let this = self.clone();
        tokio::spawn(async move {
            tokio::time::sleep(window).await;
            let Some(r) = this.sharing.lock().expect("sharing lock").remove(&id) else {
                return;
            };
            let path = String::from_utf8_lossy(&r.file.path).into_owned();
            let mut blocks = r.order;
            blocks.truncate(512 * 1024);
            let n = blocks.len();
            if n == 0 {
                return;
            }
            // Hosts booting together all record; the first to finish saves, the others
            // find its profile here and keep it.
            if let Ok((_, h)) = this.remote.hint(r.file.clone()).await
                && !h.profile.is_empty()
            {
                tracing::info!("{path} has a boot profile by now; not saving this one");
                return;
            }
            match this
                .remote
                .save_profile(r.file, this.block_size as u32, blocks)
                .await
            {
                Ok(()) => {
                    this.stats.profiles_shared.fetch_add(1, Ordering::Relaxed);
                    tracing::info!("saved the boot profile of {path} ({n} blocks) to its hint");
                }
                Err(e) => tracing::warn!("cannot save the boot profile of {path}: {e}"),
            }
        });
    }

    /// True while a hint prefetch runs for file `id`: read-ahead and fill leave it alone.
    pub(super) fn under_prefetch(&self, id: u64) -> bool {
        self.prefetching
            .lock()
            .expect("prefetching lock")
            .contains(&id)
    }

    /// Note the blocks a reader asked for, while a profile is being recorded.
    pub(super) fn record(&self, id: u64, file: &FileRef, first: u64, last: u64) {
        if self.share_profiles.is_some() {
            let mut sharing = self.sharing.lock().expect("sharing lock");
            if let Some(r) = sharing.get_mut(&id) {
                for b in first..=last {
                    if r.seen.insert(b) {
                        r.order.push(b as u32);
                    }
                }
            }
        }
        let mut rec = self.recording.lock().expect("recording lock");
        let Some(files) = rec.as_mut() else {
            return;
        };
        let r = files.entry(id).or_insert_with(|| Recorded {
            file: file.clone(),
            order: Vec::new(),
            seen: std::collections::HashSet::new(),
        });
        for b in first..=last {
            if r.seen.insert(b) {
                r.order.push(b as u32);
            }
        }
    }

    /// Start recording the order in which readers touch blocks (`profile start`).
    pub fn profile_start(&self) {
        *self.recording.lock().expect("recording lock") = Some(HashMap::new());
    }

    /// Stop recording and store each recorded file's profile in its hint on the store
    /// (`profile save`); only files whose export path is in `only`, if it is not empty.
    /// Returns (path, blocks) per file saved.
    pub async fn profile_save(&self, only: &[String]) -> Result<Vec<(String, usize)>> {
        let files = self
            .recording
            .lock()
            .expect("recording lock")
            .take()
            .ok_or_else(|| {
                Error::Config("no profile is being recorded: run `profile start` first".into())
            })?;
        let mut saved = Vec::new();
        for (_, r) in files {
            let path = String::from_utf8_lossy(&r.file.path).into_owned();
            if !only.is_empty() && !only.iter().any(|o| o.trim_start_matches('/') == path) {
                continue;
            }
            let mut blocks = r.order;
            // The rest is read on demand; a profile stays far inside one frame.
            blocks.truncate(512 * 1024);
            let n = blocks.len();
            self.remote
                .save_profile(r.file, self.block_size as u32, blocks)
                .await?;
            saved.push((path, n));
        }
        Ok(saved)
    }
}
