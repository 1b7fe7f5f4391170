//! READDIRPLUS as the front serves it: `.` and `..` first, then the store's entries in
//! cookie (name-hash) order, a page of [`DIR_PAGE`] asked at a time. Each entry gets its
//! id from the namespace map and its attributes go into the attribute cache, so the
//! LOOKUPs and GETATTRs a listing is followed by cost nothing.

use nfs3_server::nfs3_types::nfs3::{filename3, nfsstat3};
use nfs3_server::vfs::{DirEntryPlus, FileHandleU64, NextResult, ReadDirPlusIterator};

use super::fs::{Front, map_err};
use crate::cache::index::ROOT_ID;
use crate::proto::{Attr, DirEntry, FileRef};
use crate::server::disk::join;

/// `.` and `..` cookies; the store's own cookies start at 16.
const DOT_COOKIE: u64 = 1;
const DOTDOT_COOKIE: u64 = 2;
/// Entries asked of the store per page.
const DIR_PAGE: u32 = 1024;

/// READDIRPLUS pages: `.`, `..`, then the store's entries in cookie (name-hash) order.
pub(super) struct DirIter<'a> {
    front: &'a Front,
    dir: FileRef,
    dir_id: u64,
    dir_attr: Attr,
    /// Last cookie handed out.
    cookie: u64,
    /// Entries fetched and not yet handed out, in reverse order (pop from the end).
    page: Vec<(DirEntry, u64)>,
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
        let listed = self
            .front
            .store
            .readdir(self.dir.clone(), after, DIR_PAGE)
            .await;
        let (entries, eof) = self.front.on_own_object(self.dir_id, listed)?;
        let last_raw = entries.last().map(|e| e.cookie);
        let live: Vec<DirEntry> = entries.into_iter().filter(|e| e.attr.is_some()).collect();
        let keys: Vec<(Vec<u8>, u64)> = live
            .iter()
            .map(|e| (join(&self.dir.path, &e.name), e.attr.map_or(0, |a| a.ident)))
            .collect();
        let ids = self.front.index.ids_for(&keys).map_err(map_err)?;
        self.page = live.into_iter().zip(ids).rev().collect();
        self.eof = eof;
        if let (true, Some(c)) = (self.page.is_empty(), last_raw) {
            // Every entry of the page vanished (or cannot be stat'ed): go on after them.
            self.cookie = c;
        }
        Ok(())
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
            let parent = match self.dir.path.iter().rposition(|&b| b == b'/') {
                Some(i) => self.dir.path[..i].to_vec(),
                None => Vec::new(),
            };
            let (pid, pa) = if self.dir_id == ROOT_ID || parent.is_empty() {
                (
                    ROOT_ID,
                    self.front.attr(ROOT_ID).await.unwrap_or(self.dir_attr),
                )
            } else {
                match self
                    .front
                    .store
                    .getattr(&FileRef {
                        path: parent.clone(),
                        ident: None,
                    })
                    .await
                {
                    Ok(a) => match self.front.index.id_for(&parent, a.ident) {
                        Ok(id) => (id, a),
                        Err(e) => return NextResult::Err(map_err(e)),
                    },
                    Err(e) => return NextResult::Err(map_err(e)),
                }
            };
            return NextResult::Ok(self.dot_entry(b"..", DOTDOT_COOKIE, pid, &pa));
        }
        loop {
            if let Some((e, id)) = self.page.pop() {
                self.cookie = e.cookie;
                let a = e.attr.expect("filtered");
                self.front.attrs.remember(id, a);
                return NextResult::Ok(DirEntryPlus {
                    fileid: self.front.fileid(&a),
                    name: filename3::from(e.name),
                    cookie: e.cookie,
                    name_attributes: Some(self.front.fattr(&a)),
                    name_handle: Some(FileHandleU64::new(id)),
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
