//! READDIRPLUS as the front serves it: `.` and `..` first, then the store's entries in
//! cookie (name-hash) order, a page of [`DIR_PAGE`] asked at a time. Each entry gets its
//! id from the namespace map and its attributes go into the attribute cache, so the
//! LOOKUPs and GETATTRs a listing is followed by cost nothing.
//!
//! Offline (issue 16): a directory listed whole while the store answered is kept in the
//! index with the directory's version ([`Listings`]); while the store is unreachable and
//! the directory's last known version is that one, the kept listing is served (entries
//! with their last known attributes). A directory never listed whole, or changed since,
//! waits like any other request that needs the store.

use std::collections::{BTreeMap, HashMap};
use std::sync::Mutex;

use nfs3_server::nfs3_types::nfs3::{filename3, nfsstat3};
use nfs3_server::vfs::{DirEntryPlus, FileHandleU64, NextResult, ReadDirPlusIterator};

use super::fs::{Front, map_err};
use crate::cache::index::{ListedEntry, ROOT_ID};
use crate::cache::validator;
use crate::error::Error;
use crate::proto::{Attr, FileRef};
use crate::remote::OfflinePolicy;
use crate::server::disk::join;

/// `.` and `..` cookies; the store's own cookies start at 16.
const DOT_COOKIE: u64 = 1;
const DOTDOT_COOKIE: u64 = 2;
/// Entries asked of the store per page.
const DIR_PAGE: u32 = 1024;
/// Directories larger than this are not kept for offline listing (a listing is one row).
const MAX_KEPT_ENTRIES: usize = 100_000;
/// Directories whose kept version is remembered (past it the memory starts afresh).
const MAX_KEPT_DIRS: usize = 65_536;
/// Listings being gathered at once (one per directory a client is paging through).
const MAX_GATHERING: usize = 64;

/// One entry of a page: from the store (`fresh`), or from a kept listing offline.
struct Entry {
    name: Vec<u8>,
    cookie: u64,
    id: u64,
    fileid: u64,
    attr: Option<Attr>,
    fresh: bool,
}

/// A directory's listing gathered page by page, across READDIR calls: kept once the pages
/// cover it from the first cookie to the end without a gap, under one version.
struct Gathering {
    version: Vec<u8>,
    /// Every cookie up to this one has been seen.
    covered_to: u64,
    entries: BTreeMap<u64, ListedEntry>,
}

/// Whole listings being gathered, per directory id, and the version last kept of each (a
/// directory listed again unchanged is neither gathered nor written again).
#[derive(Default)]
pub struct Listings {
    gathering: Mutex<HashMap<u64, Gathering>>,
    kept: Mutex<HashMap<u64, Vec<u8>>>,
}

impl Listings {
    /// A page of `dir` (at `version`) from cookie `after`: the kept listing when this
    /// completes a gap-free walk to the end.
    fn page(
        &self,
        dir: u64,
        version: &[u8],
        after: u64,
        page: impl Iterator<Item = ListedEntry>,
        last: Option<u64>,
        eof: bool,
    ) -> Option<Vec<ListedEntry>> {
        let mut map = self.gathering.lock().expect("listings lock");
        if after == 0 {
            if self
                .kept
                .lock()
                .expect("kept lock")
                .get(&dir)
                .map(Vec::as_slice)
                == Some(version)
            {
                map.remove(&dir);
                return None; // kept already, as of this version
            }
            if map.len() >= MAX_GATHERING {
                map.clear(); // abandoned walks; a new one starts cleanly
            }
            map.insert(
                dir,
                Gathering {
                    version: version.to_vec(),
                    covered_to: 0,
                    entries: BTreeMap::new(),
                },
            );
        }
        let g = map.get_mut(&dir)?;
        if g.version != version || after > g.covered_to {
            map.remove(&dir); // the directory changed, or a page was skipped
            return None;
        }
        for e in page {
            g.entries.insert(e.cookie, e);
        }
        g.covered_to = g.covered_to.max(last.unwrap_or(after));
        if g.entries.len() > MAX_KEPT_ENTRIES {
            map.remove(&dir);
            return None;
        }
        if !eof {
            return None;
        }
        map.remove(&dir).map(|g| g.entries.into_values().collect())
    }

    /// `dir`'s listing as of `version` is in the index now.
    fn kept(&self, dir: u64, version: Vec<u8>) {
        let mut kept = self.kept.lock().expect("kept lock");
        if kept.len() >= MAX_KEPT_DIRS {
            kept.clear(); // only an optimisation: at worst a listing is written again
        }
        kept.insert(dir, version);
    }
}

/// READDIRPLUS pages: `.`, `..`, then the store's entries in cookie (name-hash) order.
pub(super) struct DirIter<'a> {
    front: &'a Front,
    dir: FileRef,
    dir_id: u64,
    dir_attr: Attr,
    /// Last cookie handed out.
    cookie: u64,
    /// Entries fetched and not yet handed out, in reverse order (pop from the end).
    page: Vec<Entry>,
    eof: bool,
}

impl<'a> DirIter<'a> {
    /// A listing of `dir` (id `dir_id`, attributes `dir_attr`) resuming after `cookie`.
    pub(super) fn new(
        front: &'a Front,
        dir: FileRef,
        dir_id: u64,
        dir_attr: Attr,
        cookie: u64,
    ) -> Self {
        Self {
            front,
            dir,
            dir_id,
            dir_attr,
            cookie,
            page: Vec::new(),
            eof: false,
        }
    }

    async fn fill(&mut self) -> Result<(), nfsstat3> {
        let _ns = self.front.ns.read().await;
        let after = if self.cookie <= DOTDOT_COOKIE {
            0
        } else {
            self.cookie
        };
        let listed = match self
            .front
            .store
            .readdir(self.dir.clone(), after, DIR_PAGE)
            .await
        {
            Err(Error::Offline(down) | Error::OfflineTooLong(down)) => {
                return self.fill_offline(after, down);
            }
            other => other,
        };
        let (entries, eof) = self.front.on_own_object(self.dir_id, listed)?;
        let last_raw = entries.last().map(|e| e.cookie);
        let live: Vec<(Vec<u8>, u64, Attr)> = entries
            .into_iter()
            .filter_map(|e| Some((e.name, e.cookie, e.attr?)))
            .collect();
        let keys: Vec<(Vec<u8>, u64)> = live
            .iter()
            .map(|(name, _, a)| (join(&self.dir.path, name), a.ident))
            .collect();
        let ids = self.front.index.ids_for(&keys).map_err(map_err)?;
        let page: Vec<Entry> = live
            .into_iter()
            .zip(ids)
            .map(|((name, cookie, a), id)| Entry {
                fileid: self.front.fileid(&a),
                name,
                cookie,
                id,
                attr: Some(a),
                fresh: true,
            })
            .collect();
        self.keep(after, &page, last_raw, eof);
        self.page = page.into_iter().rev().collect();
        self.eof = eof;
        if let (true, Some(c)) = (self.page.is_empty(), last_raw) {
            // Every entry of the page vanished (or cannot be stat'ed): go on after them.
            self.cookie = c;
        }
        Ok(())
    }

    /// Gather this page into the directory's listing; keep it once whole.
    fn keep(&self, after: u64, page: &[Entry], last: Option<u64>, eof: bool) {
        let version = validator(&self.dir_attr);
        let listed = page.iter().map(|e| ListedEntry {
            cookie: e.cookie,
            name: e.name.clone(),
            id: e.id,
            fileid: e.fileid,
        });
        let Some(whole) = self
            .front
            .listings
            .page(self.dir_id, &version, after, listed, last, eof)
        else {
            return;
        };
        match self.front.index.save_listing(self.dir_id, &version, &whole) {
            Ok(()) => self.front.listings.kept(self.dir_id, version),
            Err(e) => tracing::debug!(
                "cannot keep the listing of {} for offline use: {e}",
                self.dir_id
            ),
        }
    }

    /// The store is unreachable: the kept listing of this version of the directory, if
    /// there is one and the policy serves what is cached; else the caller waits.
    fn fill_offline(&mut self, after: u64, down: std::time::Duration) -> Result<(), nfsstat3> {
        let wait = || map_err(self.front.store.offline_error(down));
        if self.front.store.offline_policy() != OfflinePolicy::Cached {
            return Err(wait());
        }
        let version = validator(&self.dir_attr);
        let Ok(Some(kept)) = self.front.index.saved_listing(self.dir_id, &version) else {
            return Err(wait());
        };
        self.page = kept
            .into_iter()
            .filter(|e| e.cookie > after)
            .map(|e| Entry {
                attr: self
                    .front
                    .attrs
                    .last(e.id)
                    .inspect(|a| self.front.stale.served(e.id, *a)),
                name: e.name,
                cookie: e.cookie,
                id: e.id,
                fileid: e.fileid,
                fresh: false,
            })
            .rev()
            .collect();
        self.eof = true;
        Ok(())
    }

    /// `..` of this directory: its id and attributes (the last known ones offline).
    async fn parent(&self) -> Result<(u64, Attr), nfsstat3> {
        let parent = match self.dir.path.iter().rposition(|&b| b == b'/') {
            Some(i) => self.dir.path[..i].to_vec(),
            None => Vec::new(),
        };
        if self.dir_id == ROOT_ID || parent.is_empty() {
            let a = self.front.attr(ROOT_ID).await.unwrap_or(self.dir_attr);
            return Ok((ROOT_ID, a));
        }
        let file = FileRef {
            path: parent.clone(),
            ident: None,
        };
        match self.front.store.getattr(&file).await {
            Ok(a) => Ok((
                self.front.index.id_for(&parent, a.ident).map_err(map_err)?,
                a,
            )),
            Err(Error::Offline(down) | Error::OfflineTooLong(down)) => {
                let known = self.front.index.id_at(&parent).ok().flatten();
                match known.and_then(|id| Some((id, self.front.attrs.last(id)?))) {
                    Some(found) if self.front.store.offline_policy() == OfflinePolicy::Cached => {
                        Ok(found)
                    }
                    _ => Err(map_err(self.front.store.offline_error(down))),
                }
            }
            Err(e) => Err(map_err(e)),
        }
    }

    fn dot_entry(
        &self,
        name: &[u8],
        cookie: u64,
        id: u64,
        a: &Attr,
    ) -> DirEntryPlus<FileHandleU64> {
        DirEntryPlus {
            fileid: self.front.fileid(a),
            name: filename3::from(name.to_vec()),
            cookie,
            name_attributes: Some(self.front.fattr(a)),
            name_handle: Some(FileHandleU64::new(id)),
        }
    }
}

impl ReadDirPlusIterator<FileHandleU64> for DirIter<'_> {
    async fn next(&mut self) -> NextResult<DirEntryPlus<FileHandleU64>> {
        if self.cookie == 0 {
            self.cookie = DOT_COOKIE;
            let a = self.dir_attr;
            return NextResult::Ok(self.dot_entry(b".", DOT_COOKIE, self.dir_id, &a));
        }
        if self.cookie == DOT_COOKIE {
            self.cookie = DOTDOT_COOKIE;
            return match self.parent().await {
                Ok((pid, pa)) => NextResult::Ok(self.dot_entry(b"..", DOTDOT_COOKIE, pid, &pa)),
                Err(s) => NextResult::Err(s),
            };
        }
        loop {
            if let Some(e) = self.page.pop() {
                self.cookie = e.cookie;
                if let (true, Some(a)) = (e.fresh, e.attr) {
                    self.front.attrs.remember(e.id, a);
                }
                return NextResult::Ok(DirEntryPlus {
                    fileid: e.fileid,
                    name: filename3::from(e.name),
                    cookie: e.cookie,
                    name_attributes: e.attr.map(|a| self.front.fattr(&a)),
                    name_handle: Some(FileHandleU64::new(e.id)),
                });
            }
            if self.eof {
                return NextResult::Eof;
            }
            if let Err(s) = self.fill().await {
                return NextResult::Err(s);
            }
        }
    }
}
