//! The front's attribute cache: the attributes each id was last seen with, served while
//! younger than `--attr-timeout` (the GETATTRs the NFS layer makes around every operation
//! cost nothing), and of any age while the store is offline (issue 16).
//!
//! What the front sees is also written into the index behind it ([`AttrSaver`]), so a
//! client started while the store is unreachable answers from the attributes of its last
//! run. One std Mutex per part, each held for a map operation only, never across an await,
//! never two at once.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::cache::Index;
use crate::proto::Attr;

/// Size at which expired entries are swept out (ids are never reused, so they would
/// otherwise pile up for ever).
const SWEEP_AT: usize = 65_536;

pub struct AttrCache {
    /// id -> (attributes, when seen).
    map: Mutex<HashMap<u64, (Attr, Instant)>>,
    ttl: Duration,
    index: Arc<Index>,
    saver: Arc<AttrSaver>,
}

impl AttrCache {
    pub fn new(index: Arc<Index>, ttl: Duration) -> Self {
        Self {
            map: Mutex::default(),
            ttl,
            saver: AttrSaver::start(index.clone()),
            index,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<u64, (Attr, Instant)>> {
        self.map.lock().expect("attr cache lock")
    }

    /// `id` was just seen with `a`.
    pub fn remember(&self, id: u64, a: Attr) {
        let mut map = self.lock();
        if map.len() >= SWEEP_AT {
            let ttl = self.ttl;
            map.retain(|_, (_, t)| t.elapsed() < ttl);
        }
        if map.insert(id, (a, Instant::now())).map(|(old, _)| old) != Some(a) {
            self.saver.note(id, Some(a));
        }
    }

    /// Ask the store next time (the object changed, or may have).
    pub fn forget(&self, id: u64) {
        self.lock().remove(&id);
    }

    /// The object behind `id` is gone: forgotten here and in the index's copy.
    pub fn gone(&self, id: u64) {
        self.forget(id);
        self.saver.note(id, None);
    }

    /// A namespace change touched the file whose identity is `ident`: its link count and
    /// ctime changed for every name it has (hard links are separate ids here), so none of
    /// their cached attributes may be served again (issue 11, item 19).
    pub fn forget_file(&self, ident: Option<u64>) {
        if let Some(ident) = ident {
            self.lock().retain(|_, (a, _)| a.ident != ident);
        }
    }

    /// Attributes seen within the time-out, or of any age where `forever` says so (a
    /// file whose hint declares it immutable).
    pub fn fresh(&self, id: u64, forever: impl Fn(&Attr) -> bool) -> Option<Attr> {
        let found = self.lock().get(&id).copied();
        found
            .filter(|(a, t)| t.elapsed() < self.ttl || forever(a))
            .map(|(a, _)| a)
    }

    /// The last attributes seen for `id`, of any age: in memory, or kept in the index.
    pub fn last(&self, id: u64) -> Option<Attr> {
        let known = self.lock().get(&id).map(|(a, _)| *a);
        known.or_else(|| self.index.saved_attr(id).ok().flatten())
    }
}

/// Writes the attributes the front sees into the index, behind: at most every
/// [`AttrSaver::EVERY`], one transaction for all that changed. A crash loses at most that
/// much, which only matters if the store is unreachable at the next start.
struct AttrSaver {
    unsaved: Mutex<HashMap<u64, Option<Attr>>>,
}

impl AttrSaver {
    const EVERY: Duration = Duration::from_secs(2);

    fn start(index: Arc<Index>) -> Arc<Self> {
        let this = Arc::new(Self {
            unsaved: Mutex::default(),
        });
        let weak = Arc::downgrade(&this);
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(Self::EVERY).await;
                let Some(saver) = weak.upgrade() else { return };
                let batch: Vec<(u64, Option<Attr>)> = saver
                    .unsaved
                    .lock()
                    .expect("unsaved lock")
                    .drain()
                    .collect();
                drop(saver);
                if !batch.is_empty()
                    && let Err(e) = index.save_attrs(&batch)
                {
                    tracing::debug!("cannot keep attributes for offline use: {e}");
                }
            }
        });
        this
    }

    fn note(&self, id: u64, a: Option<Attr>) {
        self.unsaved.lock().expect("unsaved lock").insert(id, a);
    }
}
