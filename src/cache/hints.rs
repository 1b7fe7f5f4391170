//! The client's copy of each file's metadata hint ([`Hint`]): fetched from the store once
//! per version of the file, when a read first needs the store, and used to answer reads of
//! zero extents without asking.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use super::Index;
use crate::proto::{FEATURE_HINTS, FileRef, Hint};
use crate::remote::RemoteStore;

/// A file's hint (`None`: the store has none to give) and the version it describes.
type Known = (Vec<u8>, Option<Arc<Hint>>);

/// Files whose hints are kept (each up to a few MiB of extents and profile).
const MAX_KNOWN: usize = 1024;

/// file id -> the hint known for it; each hint fetched is also kept in the index, for
/// answering zero extents while the store is unreachable (issue 16).
pub struct Hints {
    map: Mutex<HashMap<u64, Known>>,
    index: Arc<Index>,
}

impl Hints {
    pub fn new(index: Arc<Index>) -> Self {
        Self {
            map: Mutex::default(),
            index,
        }
    }

    /// The hint already known for file `id` at version `validator`, without asking.
    pub fn known(&self, id: u64, validator: &[u8]) -> Option<Arc<Hint>> {
        match self.map.lock().expect("hints lock").get(&id) {
            Some((v, h)) if v == validator => h.clone(),
            _ => None,
        }
    }

    /// The hint for file `id` at version `validator`, asking the store if there is none;
    /// and whether it was just asked for (the first read of this version of the file).
    /// `None` if the store has no hints (an older server) or could not answer: reads then
    /// simply fetch everything.
    pub async fn get(
        &self,
        remote: &RemoteStore,
        id: u64,
        file: &FileRef,
        validator: &[u8],
    ) -> (Option<Arc<Hint>>, bool) {
        if let Some((v, h)) = self.map.lock().expect("hints lock").get(&id)
            && v == validator
        {
            return (h.clone(), false);
        }
        if remote.welcome().features & FEATURE_HINTS == 0 {
            return (None, false);
        }
        let hint = match remote.hint(file.clone()).await {
            // Only for the version the caller reads: a hint for a newer one would lay
            // that version's zeros over these bytes.
            Ok((attr, hint)) if super::validator(&attr) == validator => {
                if let Err(e) = self.index.save_hint(id, validator, &hint) {
                    tracing::debug!("cannot keep the hint of file {id}: {e}");
                }
                Some(Arc::new(hint))
            }
            Ok(_) => return (None, false),
            // Offline: the hint kept for this version, if any (not asked for again later
            // in this run: the file's version has not changed).
            Err(e @ (crate::Error::Offline(_) | crate::Error::OfflineTooLong(_))) => {
                match self.index.saved_hint(id, validator) {
                    Ok(Some(h)) => {
                        let h = Some(Arc::new(h));
                        let mut map = self.map.lock().expect("hints lock");
                        map.insert(id, (validator.to_vec(), h.clone()));
                        return (h, false);
                    }
                    _ => {
                        tracing::debug!("no hint for file {id}: {e}");
                        return (None, false);
                    }
                }
            }
            Err(e) => {
                tracing::debug!("no hint for file {id}: {e}");
                None
            }
        };
        // Two first readers may both ask; only the one that records it starts the hint's
        // prefetch.
        let fresh = {
            let mut map = self.map.lock().expect("hints lock");
            if map.len() >= MAX_KNOWN && !map.contains_key(&id) {
                // Forget some other file's hint; it is asked for again if needed.
                if let Some(k) = map.keys().next().copied() {
                    map.remove(&k);
                }
            }
            let fresh = !matches!(map.get(&id), Some((v, _)) if v == validator);
            map.insert(id, (validator.to_vec(), hint.clone()));
            fresh
        };
        (hint, fresh)
    }
}
