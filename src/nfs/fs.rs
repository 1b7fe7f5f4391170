//! The NFS file system the front serves: NFS handles -> export paths -> tunnel requests.
//!
//! Handles carry an id from the SQLite namespace map ([`crate::cache::Index`]); the map
//! outlives both proxies, so a handle the kernel holds stays valid across restarts. NFS
//! fileids are the store's inode numbers (hard links show as one file); inodes of another
//! device under the export are folded with the device so they stay distinct.
//!
//! A short attribute cache absorbs the GETATTRs the NFS layer makes around every operation
//! (wcc data); it is filled by every reply and never outlives `attr_timeout`.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use nfs3_server::nfs3_types::nfs3::{
    createverf3, fattr3, filename3, nfspath3, nfsstat3, sattr3, stable_how,
};
use nfs3_server::vfs::{
    FileHandleU64, NfsFileSystem, NfsReadFileSystem, ReadDirPlusIterator, VFSCapabilities,
};

use super::attr::{fattr, nfs_error, set_attr};
use super::attr_cache::AttrCache;
use super::readdir::{DirIter, Listings};
use super::stale::StaleCheck;
use crate::cache::{DataPath, Index, index::ROOT_ID};
use crate::error::Error;
use crate::proto::{Attr, CreateHow, FileRef, FsStat, Request, SetAttr, Status, Time};
use crate::remote::{Changed, OfflinePolicy, RemoteStore};
use crate::server::disk::join;

/// How long a truncate waits for older write-back data before the kernel is told to
/// retry (NFS3ERR_JUKEBOX): the uploader may be waiting out a link outage.
const DRAIN_DEADLINE: Duration = Duration::from_secs(30);
/// Largest file offset a write may reach: what `off_t` holds (Linux's own limit).
const MAX_FILE_SIZE: u64 = i64::MAX as u64;
/// Largest READ passed to the store: the rtmax we advertise.
const MAX_READ: u32 = 1 << 20;

pub struct Front {
    pub(super) index: Arc<Index>,
    pub(super) store: Arc<RemoteStore>,
    data: Arc<DataPath>,
    /// One fsid for the export: the kernel must not see submounts.
    fsid: u64,
    /// Device of the export root; inodes of other devices are folded with theirs.
    root_dev: u64,
    read_only: bool,
    /// Attributes as last seen, fresh for `attr_timeout`, kept for offline use.
    pub(super) attrs: AttrCache,
    /// Whole directory listings being gathered, to be kept for offline use.
    pub(super) listings: Listings,
    /// What was answered from the last known state while offline, checked on return.
    pub(super) stale: Arc<StaleCheck>,
    /// Paths sent to the store must match the namespace map. A RENAME rewrites paths, so it
    /// holds this for writing (store call + map update); every other operation holds it for
    /// reading. Without it a READ racing a rename of its directory would get NOENT for the
    /// old path and the open file would turn stale. Rule: taken once, at the entry points
    /// (trait methods and the gate's calls), never in helpers, so never nested.
    pub(super) ns: tokio::sync::RwLock<()>,
}

pub(super) fn map_err(e: Error) -> nfsstat3 {
    nfs_error(&e)
}

impl Front {
    pub async fn new(
        index: Arc<Index>,
        store: Arc<RemoteStore>,
        data: Arc<DataPath>,
        attr_timeout: Duration,
    ) -> crate::Result<Self> {
        let export_id = store.welcome().export_id.clone();
        let read_only = store.welcome().read_only;
        let root = match store.getattr(&FileRef::root()).await {
            Ok(a) => a,
            // Started offline: the root as last seen.
            Err(e @ (Error::Offline(_) | Error::OfflineTooLong(_))) => {
                index.saved_attr(ROOT_ID)?.ok_or(e)?
            }
            Err(e) => return Err(e),
        };
        index.set_root_ino(root.ident)?;
        let fsid = u64::from_str_radix(&export_id[..16.min(export_id.len())], 16).unwrap_or(1);
        index.save_attrs(&[(ROOT_ID, Some(root))])?;
        let stale = StaleCheck::start(store.clone(), index.clone());
        Ok(Self {
            stale,
            data,
            store,
            fsid,
            root_dev: root.dev,
            read_only,
            attrs: AttrCache::new(index.clone(), attr_timeout),
            listings: Listings::default(),
            ns: tokio::sync::RwLock::new(()),
            index,
        })
    }

    /// What the last outage served that turned out stale (for `status`).
    pub fn stale_check(&self) -> Arc<StaleCheck> {
        self.stale.clone()
    }

    pub fn fileid(&self, a: &Attr) -> u64 {
        if a.dev == self.root_dev {
            a.ino
        } else {
            a.ino ^ (a.dev.rotate_left(40))
        }
    }

    pub fn fattr(&self, a: &Attr) -> fattr3 {
        fattr(a, self.fileid(a), self.fsid)
    }

    /// The path and expected inode behind a handle; STALE if the map no longer has it.
    pub fn file_ref(&self, id: u64) -> Result<FileRef, nfsstat3> {
        let found = self.index.get(id).map_err(map_err)?;
        tracing::trace!(id, ?found, "handle lookup");
        match found {
            Some((path, ino)) => Ok(FileRef {
                path,
                ident: (id != ROOT_ID).then_some(ino),
            }),
            None => Err(nfsstat3::NFS3ERR_STALE),
        }
    }

    /// Under write-back: hold off the uploader retiring entries while this caller combines
    /// the store's attributes with the journal, and drop attributes an upload made stale.
    async fn write_back_view(&self, id: u64) -> Option<tokio::sync::RwLockReadGuard<'_, ()>> {
        let wb = self.data.writeback.as_ref()?;
        let guard = wb.retire.read().await;
        if wb.take_changed(id) {
            self.attrs.forget(id);
        }
        Some(guard)
    }

    /// Attributes known for `id`, if younger than `attr_timeout`, or of any age for a
    /// file its hint declares immutable (never revalidated).
    fn cached(&self, id: u64) -> Option<Attr> {
        self.attrs.fresh(id, |a| self.data.immutable(id, a))
    }

    /// The last attributes known for `id`, while the store has been offline for `down`:
    /// served under `--offline cached`; otherwise (or if none are known) the caller waits.
    fn offline_attr(&self, id: u64, down: Duration) -> Result<Attr, nfsstat3> {
        if self.store.offline_policy() == OfflinePolicy::Cached
            && let Some(a) = self.attrs.last(id)
        {
            self.stale.served(id, a);
            return Ok(a);
        }
        Err(map_err(self.store.offline_error(down)))
    }

    /// The answer to a request about one handle's own object: NOENT/STALE means the
    /// handle is stale (forgotten here).
    pub(super) fn on_own_object<T>(&self, id: u64, res: crate::Result<T>) -> Result<T, nfsstat3> {
        match res {
            Err(Error::Status(Status::NoEnt | Status::Stale)) => {
                self.attrs.gone(id);
                let _ = self.index.forget_id(id);
                Err(nfsstat3::NFS3ERR_STALE)
            }
            other => other.map_err(map_err),
        }
    }

    /// Attributes of a handle's object, from the cache if fresh — or, while the store is
    /// offline and the policy is `cached`, the last ones known, of any age (issue 16).
    pub async fn attr(&self, id: u64) -> Result<Attr, nfsstat3> {
        // The map first: a handle whose name was removed is stale even if its
        // attributes are still cached.
        let file = self.file_ref(id)?;
        if let Some(a) = self.cached(id) {
            return Ok(a);
        }
        let a = match self.store.getattr(&file).await {
            Err(Error::Offline(down) | Error::OfflineTooLong(down)) => {
                return self.offline_attr(id, down);
            }
            other => self.on_own_object(id, other)?,
        };
        self.attrs.remember(id, a);
        Ok(a)
    }

    /// The id for `dir/name` whose attributes are `a`.
    fn child_id(&self, dir: &FileRef, name: &[u8], a: &Attr) -> Result<u64, nfsstat3> {
        let id = self
            .index
            .id_for(&join(&dir.path, name), a.ident)
            .map_err(map_err)?;
        self.attrs.remember(id, *a);
        Ok(id)
    }

    /// After a namespace change: remember the directories' new attributes.
    fn changed_dirs(&self, ids: &[u64], dirs: &[Attr]) {
        for (id, a) in ids.iter().zip(dirs) {
            self.attrs.remember(*id, *a);
        }
        if dirs.len() < ids.len() {
            for id in ids {
                self.attrs.forget(*id);
            }
        }
    }

    /// Run a namespace-changing request in directory `dir_ids[0]` (and `[1]` for rename).
    async fn change(&self, dir_ids: &[u64], req: Request) -> Result<Option<Attr>, nfsstat3> {
        match self.store.change(req).await {
            Ok(Changed { obj, dirs }) => {
                self.changed_dirs(dir_ids, &dirs);
                Ok(obj)
            }
            Err(e) => {
                // The directory may have changed even on failure (partial effects).
                for id in dir_ids {
                    self.attrs.forget(*id);
                }
                Err(map_err(e))
            }
        }
    }

    /// CREATE in all three NFSv3 modes (GUARDED is checked by the store, atomically).
    pub async fn create_how(
        &self,
        dirid: u64,
        name: &[u8],
        how: CreateHow,
    ) -> Result<(u64, Attr), nfsstat3> {
        let _ns = self.ns.read().await;
        let dir = self.file_ref(dirid)?;
        let req = Request::Create {
            dir: dir.clone(),
            name: name.to_vec(),
            how,
        };
        let a = self
            .change(&[dirid], req)
            .await?
            .ok_or(nfsstat3::NFS3ERR_SERVERFAULT)?;
        Ok((self.child_id(&dir, name, &a)?, a))
    }

    /// MKDIR with the client's mode, applied exactly.
    pub async fn mkdir_mode(
        &self,
        dirid: u64,
        name: &[u8],
        mode: u32,
    ) -> Result<(u64, Attr), nfsstat3> {
        let _ns = self.ns.read().await;
        let dir = self.file_ref(dirid)?;
        let req = Request::Mkdir {
            dir: dir.clone(),
            name: name.to_vec(),
            mode,
        };
        let a = self
            .change(&[dirid], req)
            .await?
            .ok_or(nfsstat3::NFS3ERR_SERVERFAULT)?;
        Ok((self.child_id(&dir, name, &a)?, a))
    }

    /// LINK: a new name for an existing file. Returns the file's attributes.
    pub async fn link(&self, fileid: u64, dirid: u64, name: &[u8]) -> Result<Attr, nfsstat3> {
        let _ns = self.ns.read().await;
        let file = self.file_ref(fileid)?;
        let dir = self.file_ref(dirid)?;
        let req = Request::Link {
            file,
            dir: dir.clone(),
            name: name.to_vec(),
        };
        let a = self
            .change(&[dirid], req)
            .await?
            .ok_or(nfsstat3::NFS3ERR_SERVERFAULT)?;
        self.attrs.forget_file(Some(a.ident));
        self.child_id(&dir, name, &a)?;
        self.attrs.remember(fileid, a);
        Ok(a)
    }

    /// FSSTAT of the real file system under the export.
    pub async fn fsstat(&self, id: u64) -> Result<FsStat, nfsstat3> {
        let _ns = self.ns.read().await;
        let file = self.file_ref(id)?;
        self.on_own_object(id, self.store.fsstat(file).await)
    }

    /// Attributes of a directory before a change, for wcc (cached, else fetched).
    pub async fn pre_attr(&self, id: u64) -> Option<Attr> {
        self.attr_of(id).await.ok()
    }

    /// Attributes of a handle's object (cached, else fetched), for permission checks.
    pub async fn attr_of(&self, id: u64) -> Result<Attr, nfsstat3> {
        let _ns = self.ns.read().await;
        self.attr(id).await
    }

    /// READ: up to `count` bytes at `offset`, whether they reach the end of the file, and
    /// the file's attributes after the read (post-op, sized as the client must see it).
    pub async fn read_bytes(
        &self,
        id: u64,
        offset: u64,
        count: u32,
    ) -> Result<(Bytes, bool, Attr), nfsstat3> {
        let _ns = self.ns.read().await;
        let file = self.file_ref(id)?;
        let _retire = self.write_back_view(id).await;
        // Current attributes (cached up to attr_timeout) decide whether cached blocks hold.
        let attr = self.attr(id).await?;
        if attr.kind != crate::proto::FileKind::Regular {
            return Err(if attr.kind == crate::proto::FileKind::Directory {
                nfsstat3::NFS3ERR_ISDIR
            } else {
                nfsstat3::NFS3ERR_INVAL
            });
        }
        match self
            .data
            .read(id, file, attr, offset, count.min(MAX_READ))
            .await
        {
            Ok((bytes, eof, attr)) => {
                if self.data.writeback.is_none() {
                    self.attrs.remember(id, attr);
                }
                Ok((bytes, eof, attr))
            }
            Err(Error::Status(Status::NoEnt | Status::Stale)) => Err(nfsstat3::NFS3ERR_STALE),
            Err(e) => Err(map_err(e)),
        }
    }

    pub fn read_only(&self) -> bool {
        self.read_only
    }

    /// EIO for a file whose write-back data the store refused (it is kept back; the VM
    /// must learn its writes are not reaching the store).
    fn write_allowed(&self, id: u64) -> Result<(), nfsstat3> {
        match self.data.writeback.as_ref().and_then(|wb| wb.refused(id)) {
            Some(why) => {
                tracing::debug!(id, "write refused: earlier write-back data refused ({why})");
                Err(nfsstat3::NFS3ERR_IO)
            }
            None => Ok(()),
        }
    }
}

impl NfsReadFileSystem for Front {
    type Handle = FileHandleU64;

    fn root_dir(&self) -> FileHandleU64 {
        FileHandleU64::new(ROOT_ID)
    }

    async fn lookup(
        &self,
        dirid: &FileHandleU64,
        filename: &filename3<'_>,
    ) -> Result<FileHandleU64, nfsstat3> {
        let _ns = self.ns.read().await;
        let dirid = dirid.as_u64();
        let name: &[u8] = &filename.0;
        let dir = self.file_ref(dirid)?;
        if name == b"." {
            return Ok(FileHandleU64::new(dirid));
        }
        if name == b".." {
            let parent = match dir.path.iter().rposition(|&b| b == b'/') {
                Some(i) => dir.path[..i].to_vec(),
                None => Vec::new(),
            };
            if parent.is_empty() {
                return Ok(FileHandleU64::new(ROOT_ID));
            }
            let a = match self
                .store
                .getattr(&FileRef {
                    path: parent.clone(),
                    ident: None,
                })
                .await
            {
                Err(Error::Offline(down) | Error::OfflineTooLong(down)) => {
                    return self.offline_lookup(&parent, down);
                }
                other => other.map_err(map_err)?,
            };
            return Ok(FileHandleU64::new(
                self.index.id_for(&parent, a.ident).map_err(map_err)?,
            ));
        }
        match self.store.lookup(&dir, name).await {
            Ok(a) => Ok(FileHandleU64::new(self.child_id(&dir, name, &a)?)),
            Err(Error::Status(Status::Stale)) => Err(nfsstat3::NFS3ERR_STALE),
            Err(Error::Offline(down) | Error::OfflineTooLong(down)) => {
                self.offline_lookup(&join(&dir.path, name), down)
            }
            Err(e) => Err(map_err(e)),
        }
    }

    async fn getattr(&self, id: &FileHandleU64) -> Result<fattr3, nfsstat3> {
        let _ns = self.ns.read().await;
        let _retire = self.write_back_view(id.as_u64()).await;
        let mut a = self.attr(id.as_u64()).await?;
        a.size = self.data.logical_size(id.as_u64(), a.size);
        Ok(self.fattr(&a))
    }

    async fn read(
        &self,
        id: &FileHandleU64,
        offset: u64,
        count: u32,
    ) -> Result<(Vec<u8>, bool), nfsstat3> {
        // The gate answers READ itself ([`Front::read_bytes`]); only a caller of the
        // dispatcher's own path gets here.
        let (bytes, eof, _) = self.read_bytes(id.as_u64(), offset, count).await?;
        Ok((bytes.to_vec(), eof))
    }

    async fn readdirplus(
        &self,
        dirid: &FileHandleU64,
        cookie: u64,
    ) -> Result<impl ReadDirPlusIterator<FileHandleU64>, nfsstat3> {
        let _ns = self.ns.read().await;
        let id = dirid.as_u64();
        let dir = self.file_ref(id)?;
        let dir_attr = self.attr(id).await?;
        if dir_attr.kind != crate::proto::FileKind::Directory {
            return Err(nfsstat3::NFS3ERR_NOTDIR);
        }
        Ok(DirIter::new(self, dir, id, dir_attr, cookie))
    }

    async fn readlink(&self, id: &FileHandleU64) -> Result<nfspath3<'_>, nfsstat3> {
        let _ns = self.ns.read().await;
        let file = self.file_ref(id.as_u64())?;
        let target = self.on_own_object(id.as_u64(), self.store.readlink(file).await)?;
        Ok(nfspath3::from(target))
    }
}

impl Front {
    /// LOOKUP while the store is offline: the id the name had when last seen, if its
    /// attributes are known (a name never seen waits: it may exist).
    fn offline_lookup(&self, path: &[u8], down: Duration) -> Result<FileHandleU64, nfsstat3> {
        if self.store.offline_policy() == OfflinePolicy::Cached
            && let Ok(Some(id)) = self.index.id_at(path)
            && self.attrs.last(id).is_some()
        {
            return Ok(FileHandleU64::new(id));
        }
        Err(map_err(self.store.offline_error(down)))
    }
}

impl NfsFileSystem for Front {
    fn capabilities(&self) -> VFSCapabilities {
        if self.read_only {
            VFSCapabilities::ReadOnly
        } else {
            VFSCapabilities::ReadWrite
        }
    }

    async fn setattr(&self, id: &FileHandleU64, setattr: sattr3) -> Result<fattr3, nfsstat3> {
        self.setattr_guarded(id.as_u64(), set_attr(&setattr), None)
            .await
            .map(|a| self.fattr(&a))
    }

    async fn write(
        &self,
        id: &FileHandleU64,
        offset: u64,
        data: &[u8],
        stable: stable_how,
    ) -> Result<(fattr3, stable_how), nfsstat3> {
        // Issue 11, item 9: offset + len must not wrap (or pass what a file can hold):
        // unchecked, it wrapped in the journal's arithmetic and wedged write-back.
        if offset
            .checked_add(data.len() as u64)
            .is_none_or(|end| end > MAX_FILE_SIZE)
        {
            return Err(nfsstat3::NFS3ERR_FBIG);
        }
        self.write_allowed(id.as_u64())?;
        // A write-back cache full of data not yet uploaded makes the write wait; not while
        // holding the namespace lock, which a queued RENAME would turn into a stall of all.
        self.data.wait_for_room(data.len() as u64).await;
        let _ns = self.ns.read().await;
        let id = id.as_u64();
        let file = self.file_ref(id)?;
        let sync = stable != stable_how::UNSTABLE;
        // Write-back answers from the journal, so it needs the store's attributes to grow.
        let current = match self.data.writeback {
            Some(_) => Some(self.attr(id).await?),
            None => None,
        };
        match self
            .data
            .write(
                id,
                file,
                current,
                offset,
                Bytes::copy_from_slice(data),
                sync,
            )
            .await
        {
            Ok((a, durable)) => {
                if self.data.writeback.is_none() {
                    self.attrs.remember(id, a);
                }
                let how = if durable {
                    stable_how::FILE_SYNC
                } else {
                    stable_how::UNSTABLE
                };
                Ok((self.fattr(&a), how))
            }
            Err(Error::Status(Status::NoEnt | Status::Stale)) => Err(nfsstat3::NFS3ERR_STALE),
            Err(e) => Err(map_err(e)),
        }
    }

    async fn create(
        &self,
        dirid: &FileHandleU64,
        filename: &filename3<'_>,
        attr: sattr3,
    ) -> Result<(FileHandleU64, fattr3), nfsstat3> {
        let (id, a) = self
            .create_how(
                dirid.as_u64(),
                &filename.0,
                CreateHow::Unchecked(set_attr(&attr)),
            )
            .await?;
        Ok((FileHandleU64::new(id), self.fattr(&a)))
    }

    async fn create_exclusive(
        &self,
        dirid: &FileHandleU64,
        filename: &filename3<'_>,
        verf: createverf3,
    ) -> Result<FileHandleU64, nfsstat3> {
        let (id, _) = self
            .create_how(dirid.as_u64(), &filename.0, CreateHow::Exclusive(verf.0))
            .await?;
        Ok(FileHandleU64::new(id))
    }

    async fn mkdir(
        &self,
        dirid: &FileHandleU64,
        dirname: &filename3<'_>,
    ) -> Result<(FileHandleU64, fattr3), nfsstat3> {
        // The RPC gate answers MKDIR itself (with the client's mode); this path is only
        // reached if the gate is bypassed.
        let (id, a) = self.mkdir_mode(dirid.as_u64(), &dirname.0, 0o755).await?;
        Ok((FileHandleU64::new(id), self.fattr(&a)))
    }

    async fn remove(
        &self,
        dirid: &FileHandleU64,
        filename: &filename3<'_>,
    ) -> Result<(), nfsstat3> {
        // The RPC gate answers REMOVE and RMDIR itself; this path is only reached if the
        // gate is bypassed, and nfs3_server routes both procedures here.
        match self.unlink(dirid.as_u64(), &filename.0, false).await {
            Err(nfsstat3::NFS3ERR_ISDIR) => self.unlink(dirid.as_u64(), &filename.0, true).await,
            other => other,
        }
    }

    async fn rename<'a>(
        &self,
        from_dirid: &FileHandleU64,
        from_filename: &filename3<'a>,
        to_dirid: &FileHandleU64,
        to_filename: &filename3<'a>,
    ) -> Result<(), nfsstat3> {
        let _ns = self.ns.write().await;
        let (fd, td) = (from_dirid.as_u64(), to_dirid.as_u64());
        let from_dir = self.file_ref(fd)?;
        let to_dir = self.file_ref(td)?;
        let from = join(&from_dir.path, &from_filename.0);
        let to = join(&to_dir.path, &to_filename.0);
        if from == to {
            // POSIX: renaming a name onto itself does nothing (and must not drop its id).
            return Ok(());
        }
        let req = Request::Rename {
            from_dir,
            from_name: from_filename.0.to_vec(),
            to_dir,
            to_name: to_filename.0.to_vec(),
        };
        let (moved, replaced) = (
            self.index.ident_of(&from).map_err(map_err)?,
            self.index.ident_of(&to).map_err(map_err)?,
        );
        self.change(&[fd, td], req).await?;
        self.attrs.forget_file(moved);
        self.attrs.forget_file(replaced);
        self.index.rename(&from, &to).map_err(map_err)?;
        Ok(())
    }

    async fn symlink<'a>(
        &self,
        dirid: &FileHandleU64,
        linkname: &filename3<'a>,
        symlink: &nfspath3<'a>,
        attr: &sattr3,
    ) -> Result<(FileHandleU64, fattr3), nfsstat3> {
        let _ns = self.ns.read().await;
        let id = dirid.as_u64();
        let dir = self.file_ref(id)?;
        let req = Request::Symlink {
            dir: dir.clone(),
            name: linkname.0.to_vec(),
            target: symlink.0.to_vec(),
            mode: set_attr(attr).mode,
        };
        let a = self
            .change(&[id], req)
            .await?
            .ok_or(nfsstat3::NFS3ERR_SERVERFAULT)?;
        let cid = self.child_id(&dir, &linkname.0, &a)?;
        Ok((FileHandleU64::new(cid), self.fattr(&a)))
    }

    async fn commit(&self, id: &FileHandleU64, _offset: u64, _count: u32) -> Result<(), nfsstat3> {
        self.write_allowed(id.as_u64())?;
        let _ns = self.ns.read().await;
        let file = self.file_ref(id.as_u64())?;
        match self.data.commit(file).await {
            Ok(()) => Ok(()),
            Err(Error::Status(Status::NoEnt | Status::Stale)) => Err(nfsstat3::NFS3ERR_STALE),
            Err(e) => Err(map_err(e)),
        }
    }
}

impl Front {
    /// SETATTR with NFS's optional ctime guard.
    pub async fn setattr_guarded(
        &self,
        id: u64,
        set: SetAttr,
        guard: Option<Time>,
    ) -> Result<Attr, nfsstat3> {
        if set.size.is_some_and(|s| s > MAX_FILE_SIZE) {
            return Err(nfsstat3::NFS3ERR_FBIG);
        }
        if set.size.is_some() {
            // A truncate must not be overtaken by older writes still in the journal. Not
            // under the namespace lock (a queued RENAME would stall every call behind the
            // drain), and not for ever: past the deadline the kernel is told to retry.
            self.write_allowed(id)?;
            match tokio::time::timeout(DRAIN_DEADLINE, self.data.drain()).await {
                Ok(Ok(())) => {}
                Ok(Err(e)) => return Err(map_err(e)),
                Err(_) => return Err(nfsstat3::NFS3ERR_JUKEBOX),
            }
        }
        let _ns = self.ns.read().await;
        let file = self.file_ref(id)?;
        match self.on_own_object(id, self.store.setattr(file, set, guard).await) {
            Ok(a) => {
                self.attrs.remember(id, a);
                Ok(a)
            }
            Err(e) => {
                self.attrs.forget(id);
                Err(e)
            }
        }
    }
}

impl Front {
    /// REMOVE (`rmdir == false`) or RMDIR of `name` in `dirid`; forgets its ids.
    pub async fn unlink(&self, dirid: u64, name: &[u8], rmdir: bool) -> Result<(), nfsstat3> {
        let _ns = self.ns.read().await;
        let dir = self.file_ref(dirid)?;
        let path = join(&dir.path, name);
        let name = name.to_vec();
        let req = if rmdir {
            Request::Rmdir { dir, name }
        } else {
            Request::Remove { dir, name }
        };
        let removed = self.index.ident_of(&path).map_err(map_err)?;
        self.change(&[dirid], req).await?;
        self.attrs.forget_file(removed);
        tracing::debug!(path = %String::from_utf8_lossy(&path), "removed; forgetting its ids");
        self.index.forget(&path).map_err(map_err)
    }
}
