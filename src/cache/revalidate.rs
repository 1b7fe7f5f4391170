//! A file changed on the store: its cached blocks are checked against the store's block
//! hashes (delta revalidation) and only the changed ones are dropped.

use std::sync::Arc;
use std::sync::atomic::Ordering;

use super::{DataPath, validator};
use crate::error::Result;
use crate::proto::{Attr, FileRef};

impl DataPath {
    /// Make the cached blocks of `id` match `attr`'s version of the file: when the file
    /// changed, keep the blocks whose hash the store still reports (delta revalidation)
    /// and drop the rest; drop everything if the store cannot say.
    pub(super) async fn revalidate(&self, id: u64, file: &FileRef, attr: &Attr) -> Result<()> {
        let v = validator(attr);
        if self.index.validator(id)?.as_deref() == Some(&v[..]) {
            return Ok(());
        }
        // One revalidation per file at a time: a second reader of the changed file waits,
        // then finds the work done instead of redoing it with a stale block list. Readers
        // of other files go on.
        let lock = self
            .revalidating
            .lock()
            .expect("revalidating lock")
            .entry(id)
            .or_default()
            .clone();
        let result = {
            let _one = lock.lock().await;
            self.revalidate_locked(id, file, &v).await
        };
        // The last one out removes the file's lock.
        let mut map = self.revalidating.lock().expect("revalidating lock");
        if Arc::strong_count(&lock) == 2 {
            map.remove(&id);
        }
        result
    }

    async fn revalidate_locked(&self, id: u64, file: &FileRef, v: &[u8]) -> Result<()> {
        let v = v.to_vec();
        let old = self.index.validator(id)?;
        if old.as_deref() == Some(&v[..]) {
            return Ok(());
        }
        let keep = match old {
            Some(_) => self.unchanged_blocks(id, file, &v).await?,
            None => None,
        };
        match keep {
            Some(keep) => {
                let dropped = self.index.reset_file_keeping(id, &v, &keep)?;
                for b in &dropped {
                    self.blocks
                        .punch(id, b * self.block_size, self.block_size)?;
                }
                self.stats.invalidations.fetch_add(1, Ordering::Relaxed);
                self.stats
                    .delta_kept_blocks
                    .fetch_add(keep.len() as u64, Ordering::Relaxed);
                tracing::info!(
                    file = id,
                    "file changed on the store: kept {} cached blocks, dropped {}",
                    keep.len(),
                    dropped.len()
                );
            }
            None => {
                if self.index.reset_file(id, &v)? {
                    self.stats.invalidations.fetch_add(1, Ordering::Relaxed);
                }
                self.blocks.drop_file(id)?;
            }
        }
        Ok(())
    }

    /// Cached blocks of `id` whose content is unchanged in the store's version `v`, by
    /// comparing hashes; `None` when there is nothing to keep or the store cannot say.
    async fn unchanged_blocks(
        &self,
        id: u64,
        file: &FileRef,
        v: &[u8],
    ) -> Result<Option<Vec<u64>>> {
        let cached = self.index.blocks(id, 0, i64::MAX as u64)?;
        if cached.is_empty() || self.remote.welcome().features & crate::proto::FEATURE_HINTS == 0 {
            return Ok(None);
        }
        let sums = match self
            .remote
            .block_sums(file.clone(), self.block_size as u32)
            .await
        {
            Ok((attr, sums)) if validator(&attr) == v => sums,
            // Changed again meanwhile, too large, or an error: start afresh.
            _ => return Ok(None),
        };
        let keep = cached
            .into_iter()
            .filter(|(b, sum)| sums.get(*b as usize).is_some_and(|s| s[..] == sum[..16]))
            .map(|(b, _)| b)
            .collect();
        Ok(Some(keep))
    }
}
