//! Read-ahead: a sequential reader gets the following blocks fetched ahead of it, in a
//! window that grows while it stays sequential.

use std::sync::Arc;

use super::{DataPath, MAX_READ_AHEAD, MIN_READ_AHEAD, zero_block};
use crate::proto::{Attr, FileRef, Hint};

impl DataPath {
    /// Sequential readers get the next blocks fetched ahead of them, in a window that
    /// doubles while the reader stays sequential (from [`MIN_READ_AHEAD`] to
    /// [`MAX_READ_AHEAD`] bytes); a random reader triggers nothing.
    pub(super) fn read_ahead(
        self: &Arc<Self>,
        id: u64,
        file: FileRef,
        attr: Attr,
        first: u64,
        last: u64,
        hint: Option<Arc<Hint>>,
    ) {
        let bs = self.block_size;
        if self.under_prefetch(id) {
            return;
        }
        let window = {
            let mut seq = self.sequential.lock().expect("sequential lock");
            let (next, win) = seq.get(&id).copied().unwrap_or((u64::MAX, 0));
            let win = if first == next || first + 1 == next {
                (win * 2).clamp((MIN_READ_AHEAD / bs).max(1), (MAX_READ_AHEAD / bs).max(1))
            } else {
                0
            };
            seq.insert(id, (last + 1, win));
            win
        };
        let end_block = attr.size.div_ceil(bs);
        let (from, to) = (last + 1, (last + window).min(end_block.saturating_sub(1)));
        if window == 0 || from > to {
            return;
        }
        let Ok(present) = self.index.blocks(id, from, to) else {
            return;
        };
        let present: std::collections::HashSet<u64> = present.into_iter().map(|(b, _)| b).collect();
        let missing: Vec<u64> = (from..=to)
            .filter(|&b| !present.contains(&b) && !zero_block(hint.as_deref(), b, attr.size, bs))
            .collect();
        let (mine, _) = self.claim(id, &missing);
        if mine.blocks.is_empty() {
            return;
        }
        let this = self.clone();
        tokio::spawn(async move {
            // After a restart the hint is not known until a read misses: ask for it now,
            // or the zero blocks past every cached run (a sparse image's holes) would
            // cross the link, once per run, on a fully cached warm read.
            // After a restart the hint is not known until a read misses: ask for it now,
            // or the zero blocks past every cached run (a sparse image's holes) would
            // cross the link, once per run, on a fully cached warm read.
            let fetch: Vec<u64> = match hint {
                Some(_) => mine.blocks.clone(),
                None => {
                    let hint = this.ask_hint(id, &file, &attr).await;
                    let zero = |b| zero_block(hint.as_deref(), b, attr.size, bs);
                    mine.blocks.iter().copied().filter(|&b| !zero(b)).collect()
                }
            };
            let done = &this.stats.read_ahead_blocks;
            let _ = this.fetch_blocks(id, &file, &attr, &fetch, done).await;
            drop(mine);
        });
    }
}
