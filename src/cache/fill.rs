//! Background fill: while a file is read on demand, the link's spare capacity brings in
//! its other blocks at low priority — first next to where the reader last missed (the
//! hot region it is in), then, under `--fill all`, the rest of the file's non-zero
//! blocks in file order. The order of VMTorrent and of EBS's lazy loading: demand misses
//! first, then a profile, then background. A boot that reads scattered runs with
//! strides, interleaved streams or think time finds most of its later reads cached, and
//! a cold boot is never much slower than fetching the whole image first; a fully filled
//! image also keeps working through a link outage.
//!
//! Demand stays first. Near pieces (what the reader is about to want: read-ahead for
//! readers that are not strictly sequential) take at most [`NEAR_SLOTS`] of
//! [`FILL_PIECE`] bytes in flight. The sweep is limited by the bytes it puts on the wire
//! (estimated from how well this client's fetches have packed so far): [`SWEEP_BUSY`]
//! while a reader waits for the store, so a demand miss queues behind a few ms of it,
//! and [`SWEEP_IDLE`] while none does, to keep the link busy. All of the sweep's bytes
//! are the image's own, so a cold boot's total is bounded by the image's compressed
//! size: never much slower than copying the image first. Fill never evicts: the sweep
//! stops when the cache is three-quarters full, and a file's fill stops when its version
//! changes, a fetch fails, or a hint prefetch (profile, `whole`) runs for it.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use tokio::sync::Notify;

use super::{Claim, DataPath, validator};
use crate::proto::{Attr, FileRef, Hint};

/// `--fill`: what the background fill may fetch.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum FillPolicy {
    /// Nothing beyond demand reads and sequential read-ahead.
    Off,
    /// The [`NEAR`] bytes after each demand miss and the [`BEHIND`] bytes before it.
    Near,
    /// Those first, then every other non-zero block of each file being read, while the
    /// cache has room.
    #[default]
    All,
}

/// Bytes per fill request: small enough that a demand miss queued behind one waits a
/// fraction of a WAN round trip for it (512 KiB packed is ~20 ms at 100 Mbit/s), large
/// enough that the sweep of a GiB is a few thousand requests.
const FILL_PIECE: u64 = 512 << 10;
/// Near pieces in flight: 2 MiB, about twice the bandwidth-delay product of a
/// 100 Mbit/s, 40 ms link once packed, so a reader moving through a hot region finds it
/// arriving.
const NEAR_SLOTS: u64 = 4;
/// Sweep bytes on the wire (estimated) while a reader waits for the store: ~20 ms of a
/// 100 Mbit/s link queued ahead of its miss at worst.
const SWEEP_BUSY: u64 = 256 << 10;
/// ... and while no reader waits: twice that link's bandwidth-delay product.
const SWEEP_IDLE: u64 = 1 << 20;
/// The sweep runs only over links whose round trip (the smallest seen: a busy link's
/// queue does not count) is at least this: below it a miss costs less than the CPU the
/// sweep spends (on two cores, the sweep of a whole image slowed a loopback boot trace by
/// up to 70%), and the near fill is enough.
const SWEEP_MIN_RTT_MS: f64 = 5.0;
/// How far past a demand miss the near fill reaches (the hot region: a boot's runs are
/// mostly shorter; longer sequential streams are read-ahead's).
const NEAR: u64 = 4 << 20;
/// And how far before it, filled after that.
const BEHIND: u64 = 1 << 20;
/// Hot regions remembered (most recent first); older ones are forgotten.
const MAX_FRONTIERS: usize = 64;
/// Files filled at once (each holds its hint: zero extents, profile).
const MAX_FILES: usize = 1024;
/// Candidate pieces looked at per pick before yielding (all cached or zero).
const PICK_TRIES: usize = 256;

/// A file being filled: the version its blocks are fetched under, and the sweep's place.
struct FileFill {
    file: FileRef,
    attr: Attr,
    hint: Option<Arc<Hint>>,
    /// Next block of the whole-file sweep; `None` when it is done (or not wanted).
    sweep: Option<u64>,
}

/// A hot region: blocks `next..end` of file `id`, filled from `next` on.
struct Frontier {
    id: u64,
    next: u64,
    end: u64,
}

#[derive(Default)]
struct State {
    files: HashMap<u64, FileFill>,
    frontiers: VecDeque<Frontier>,
}

/// The background fill's shared state (one per [`DataPath`]); its task holds only a weak
/// reference to the data path, so dropping the client ends it.
pub(super) struct Filler {
    pub(super) policy: FillPolicy,
    /// [`SWEEP_MIN_RTT_MS`]; tests over the in-process store (µs round trips) lower it.
    pub(super) sweep_min_rtt_ms: f64,
    state: Mutex<State>,
    /// Demand fetches in flight (readers waiting on the store).
    demand: AtomicU64,
    /// New work, a piece done, or a demand fetch ended.
    kick: Notify,
    /// Near pieces in flight.
    near: AtomicU64,
    /// Estimated wire bytes of the sweep pieces in flight.
    sweep_wire: AtomicU64,
    started: std::sync::Once,
}

/// Counts a reader's fetch as demand while it lives.
pub(super) struct Demand<'a>(&'a Filler);

impl Drop for Demand<'_> {
    fn drop(&mut self) {
        self.0.demand.fetch_sub(1, Ordering::Relaxed);
        self.0.kick.notify_one();
    }
}

impl Filler {
    pub(super) fn new(policy: FillPolicy) -> Self {
        Self {
            policy,
            sweep_min_rtt_ms: SWEEP_MIN_RTT_MS,
            state: Mutex::default(),
            demand: AtomicU64::new(0),
            kick: Notify::new(),
            near: AtomicU64::new(0),
            sweep_wire: AtomicU64::new(0),
            started: std::sync::Once::new(),
        }
    }

    pub(super) fn demand(&self) -> Demand<'_> {
        self.demand.fetch_add(1, Ordering::Relaxed);
        Demand(self)
    }

    /// Stop filling file `id` (its version changed, or the store failed).
    fn forget(&self, id: u64) {
        let mut st = self.state.lock().expect("fill lock");
        st.files.remove(&id);
        st.frontiers.retain(|f| f.id != id);
    }
}

/// One piece to fetch: blocks claimed by the fill.
struct Piece {
    id: u64,
    file: FileRef,
    attr: Attr,
    claim: Claim,
    /// A sweep piece, and the wire bytes it is expected to take; `None` for a near one.
    sweep: Option<u64>,
}

impl DataPath {
    /// A reader of file `id` (version `attr`) had to fetch blocks `first..=last`: the hot
    /// region around them is filled next, and the file is swept under `--fill all`.
    pub(super) fn note_miss(
        self: &Arc<Self>,
        id: u64,
        file: &FileRef,
        attr: &Attr,
        hint: Option<Arc<Hint>>,
        first: u64,
        last: u64,
    ) {
        let fill = &self.filler;
        if fill.policy == FillPolicy::Off {
            return;
        }
        // A file under a hint prefetch is the profile's: misses while it runs mark no hot
        // region (filled once it ended, they fetched what the profile says is not read).
        if self.under_prefetch(id) {
            return;
        }
        let bs = self.block_size;
        let nblocks = attr.size.div_ceil(bs);
        {
            let mut st = fill.state.lock().expect("fill lock");
            let v = validator(attr);
            let same = st.files.get(&id).is_some_and(|f| validator(&f.attr) == v);
            if !same && st.files.len() >= MAX_FILES && !st.files.contains_key(&id) {
                // Enough files being filled; this one waits for a later miss.
                return;
            }
            if !same {
                st.frontiers.retain(|f| f.id != id);
                st.files.insert(
                    id,
                    FileFill {
                        file: file.clone(),
                        attr: *attr,
                        hint,
                        sweep: (fill.policy == FillPolicy::All).then_some(0),
                    },
                );
            } else if let (Some(f), Some(h)) = (st.files.get_mut(&id), hint) {
                f.hint.get_or_insert(h);
            }
            // Behind the miss last, ahead of it first (most reads go on from a miss; some
            // are random inside a hot region, or a stream that began before it).
            let behind = (first.saturating_sub((BEHIND / bs).max(1)), first);
            let ahead = (last + 1, (last + 1 + (NEAR / bs).max(1)).min(nblocks));
            for (next, end) in [behind, ahead] {
                if next < end {
                    // A reader that keeps missing inside one region extends it, not a
                    // copy.
                    st.frontiers
                        .retain(|f| !(f.id == id && f.next <= next && next <= f.end));
                    st.frontiers.push_front(Frontier { id, next, end });
                }
            }
            st.frontiers.truncate(MAX_FRONTIERS);
        }
        fill.kick.notify_one();
        fill.started.call_once(|| {
            tokio::spawn(run(Arc::downgrade(self), self.filler.clone()));
        });
    }

    /// The next piece to fill, claimed; else whether more may remain (every candidate
    /// looked at was cached, zero or in flight) or there is nothing to do now.
    fn next_piece(self: &Arc<Self>, near_ok: bool, sweep_ok: bool) -> Result<Piece, bool> {
        let bs = self.block_size;
        let per = (FILL_PIECE / bs).max(1);
        let room = {
            let used = self.cached_blocks.load(Ordering::Relaxed) + self.dirty_blocks();
            used < self.capacity_blocks / 4 * 3
        };
        let slow_link = self
            .remote
            .counters
            .min_rtt_ms()
            .is_some_and(|ms| ms >= self.filler.sweep_min_rtt_ms);
        let sweep_ok = sweep_ok && room && slow_link;
        for _ in 0..PICK_TRIES {
            // Under the fill lock: pick a candidate range and move past it.
            let (id, file, attr, hint, from, to, sweep) = {
                let busy = self.prefetching.lock().expect("prefetching lock").clone();
                let mut st = self.filler.state.lock().expect("fill lock");
                let st = &mut *st;
                let pick = loop {
                    let Some(f) = st.frontiers.front_mut().filter(|_| near_ok) else {
                        break None;
                    };
                    if !st.files.contains_key(&f.id) {
                        st.frontiers.pop_front();
                        continue;
                    }
                    if busy.contains(&f.id) {
                        // Its hint prefetch knows better; try the others.
                        let f = st.frontiers.pop_front().expect("front");
                        st.frontiers.push_back(f);
                        if st.frontiers.iter().all(|f| busy.contains(&f.id)) {
                            break None;
                        }
                        continue;
                    }
                    let (from, to) = (f.next, (f.next + per).min(f.end));
                    f.next = to;
                    let id = f.id;
                    if to >= f.end {
                        st.frontiers.pop_front();
                    }
                    break Some((id, from, to, false));
                };
                let pick = pick.or_else(|| {
                    if !sweep_ok {
                        return None;
                    }
                    let (id, f) = st
                        .files
                        .iter_mut()
                        .find(|(id, f)| f.sweep.is_some() && !busy.contains(id))?;
                    let n = f.attr.size.div_ceil(bs);
                    let from = f.sweep.expect("sweeping");
                    let to = (from + per).min(n);
                    f.sweep = (to < n).then_some(to);
                    Some((*id, from, to, true))
                });
                let Some((id, from, to, sweep)) = pick else {
                    // Nothing to do: forget the files whose fill is over (their hints
                    // can be large); a later miss starts them again.
                    let active: HashSet<u64> = st.frontiers.iter().map(|f| f.id).collect();
                    st.files
                        .retain(|id, f| f.sweep.is_some() || active.contains(id));
                    return Err(false);
                };
                let f = &st.files[&id];
                (id, f.file.clone(), f.attr, f.hint.clone(), from, to, sweep)
            };
            if from >= to {
                continue;
            }
            // Outside it: what of the range is neither cached, zero, nor being fetched.
            let v = validator(&attr);
            if self.index.validator(id).ok().flatten().as_deref() != Some(&v[..]) {
                self.filler.forget(id);
                continue;
            }
            let Ok(present) = self.index.blocks(id, from, to - 1) else {
                continue;
            };
            let present: HashSet<u64> = present.into_iter().map(|(b, _)| b).collect();
            let missing: Vec<u64> = (from..to)
                .filter(|b| {
                    !present.contains(b) && !super::zero_block(hint.as_deref(), *b, attr.size, bs)
                })
                .collect();
            if missing.is_empty() {
                continue;
            }
            let (claim, _) = self.claim(id, &missing);
            if claim.blocks.is_empty() {
                continue;
            }
            let sweep = sweep.then(|| {
                let raw = claim.blocks.len() as u64 * bs;
                // Wire bytes per byte fetched so far (zero pages left out, the rest
                // compressed); a half until there is something to go by.
                let (fetched, wire) = (
                    self.stats.bytes_fetched.load(Ordering::Relaxed),
                    self.stats.packed_bytes.load(Ordering::Relaxed),
                );
                if fetched < 4 << 20 {
                    raw / 2
                } else {
                    (raw as f64 * (wire as f64 / fetched as f64).clamp(0.01, 1.0)) as u64
                }
            });
            return Ok(Piece {
                id,
                file,
                attr,
                claim,
                sweep,
            });
        }
        Err(true)
    }

    /// Fetch one piece into the cache.
    async fn fill_piece(&self, p: Piece) {
        let done = &self.stats.filled_blocks;
        match self
            .fetch_blocks(p.id, &p.file, &p.attr, &p.claim.blocks, done)
            .await
        {
            Ok(true) => {}
            // A new version: its next miss starts the file's fill again.
            Ok(false) => self.filler.forget(p.id),
            Err(e) => {
                // Offline or failing: readers fetch for themselves; the next miss starts
                // the file's fill again.
                tracing::debug!(file = p.id, "background fill stopped: {e}");
                self.filler.forget(p.id);
            }
        }
    }
}

/// The fill task: picks pieces while the budgets allow, sleeps when there is nothing to
/// do.
async fn run(data: Weak<DataPath>, fill: Arc<Filler>) {
    loop {
        let near_ok = fill.near.load(Ordering::Relaxed) < NEAR_SLOTS;
        let budget = if fill.demand.load(Ordering::Relaxed) > 0 {
            SWEEP_BUSY
        } else {
            SWEEP_IDLE
        };
        let sweep_ok = fill.sweep_wire.load(Ordering::Relaxed) < budget;
        let piece = if near_ok || sweep_ok {
            let Some(d) = data.upgrade() else {
                return;
            };
            match d.next_piece(near_ok, sweep_ok) {
                Ok(p) => Some((d, p)),
                Err(true) => {
                    tokio::task::yield_now().await;
                    continue;
                }
                Err(false) => None,
            }
        } else {
            None
        };
        let Some((d, piece)) = piece else {
            // A kick (new miss, piece done, demand ended) or, at worst, a second.
            let _ = tokio::time::timeout(Duration::from_secs(1), fill.kick.notified()).await;
            if data.strong_count() == 0 {
                return;
            }
            continue;
        };
        let sweep = piece.sweep;
        match sweep {
            Some(wire) => fill.sweep_wire.fetch_add(wire, Ordering::Relaxed),
            None => fill.near.fetch_add(1, Ordering::Relaxed),
        };
        let fill = fill.clone();
        tokio::spawn(async move {
            d.fill_piece(piece).await;
            match sweep {
                Some(wire) => fill.sweep_wire.fetch_sub(wire, Ordering::Relaxed),
                None => fill.near.fetch_sub(1, Ordering::Relaxed),
            };
            fill.kick.notify_one();
        });
    }
}
