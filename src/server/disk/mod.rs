//! Confined file system access beneath one export directory.
//!
//! Every path is resolved with `openat2(RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS)` from a
//! directory fd opened once at start. The NFS client resolves symlinks itself, one LOOKUP per
//! component, so a legitimate request never needs the server to follow one: refusing them
//! outright closes `..`, absolute symlinks, climbing relative symlinks and the
//! check-then-use race (a component swapped for a symlink) in one kernel-enforced rule.
//! Operations on a final name (`unlinkat`, `renameat`, `mkdirat`, …) take a confined parent
//! fd plus one validated component and never follow a trailing symlink.

use std::fs::File;
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::Path;

use rustix::fs::{self as rfs, AtFlags, Mode, OFlags, ResolveFlags, Timespec, Timestamps};
use rustix::io::Errno;

use super::hint;

mod hints;
pub use hints::write_hint;
pub mod identity;
mod listing;
mod meta;
mod names;
mod owner;

use crate::proto::{
    Attr, CreateHow, DirEntry, FileKind, FileRef, FsStat, SetAttr, SetTime, Status, Time,
};
pub use meta::status_of;
use meta::{Meta, expect_ident, kind_of, stat_at, status_of_io};
pub(crate) use meta::{attr_of, stat_fd};
use names::{FromBytesChecked, check_path, hint_of, is_reserved, split_parent};
pub use names::{check_name, join, name_cookie};
use owner::{proc_path, with_owner_write};

/// Largest READ the server answers in one reply (the client splits larger ones).
pub const MAX_READ: u32 = 4 * 1024 * 1024;
/// Cookies below this are reserved for the client (`.`, `..`, start of listing).
pub const FIRST_ENTRY_COOKIE: u64 = 16;

/// One export directory, opened once; all access goes through it.
#[derive(Debug)]
pub struct Export {
    /// `O_PATH` fd of the export root: the anchor of every `openat2`.
    root: OwnedFd,
    read_only: bool,
    id: String,
    /// Listings kept for the next READDIR pages.
    listings: listing::Listings,
}

impl Export {
    /// Open `dir` as the export root.
    pub fn open(dir: &Path, read_only: bool) -> std::io::Result<Self> {
        let canonical = std::fs::canonicalize(dir)?;
        let root = rfs::open(
            &canonical,
            OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC,
            Mode::empty(),
        )?;
        let st = rfs::fstat(&root)?;
        let host = rustix::system::uname();
        let mut h = blake3::Hasher::new();
        h.update(b"gridvfs-export-v1\0");
        h.update(host.nodename().to_bytes());
        h.update(b"\0");
        h.update(canonical.as_os_str().as_encoded_bytes());
        h.update(&st.st_dev.to_le_bytes());
        h.update(&st.st_ino.to_le_bytes());
        let legacy = h.finalize().to_hex()[..32].to_string();
        let id = identity::export_id(&root, read_only, &legacy)?;
        Ok(Self {
            root,
            read_only,
            id,
            listings: listing::Listings::default(),
        })
    }

    pub fn id(&self) -> &str {
        &self.id
    }

    pub fn read_only(&self) -> bool {
        self.read_only
    }

    /// Open `path` beneath the root with `flags`; never follows a symlink anywhere.
    fn resolve(&self, path: &[u8], flags: OFlags) -> Result<OwnedFd, Status> {
        self.open_beneath(check_path(path)?, flags)
    }

    fn open_beneath(&self, rel: &std::ffi::OsStr, flags: OFlags) -> Result<OwnedFd, Status> {
        rfs::openat2(
            &self.root,
            rel,
            flags | OFlags::NOFOLLOW | OFlags::CLOEXEC,
            Mode::empty(),
            ResolveFlags::BENEATH | ResolveFlags::NO_SYMLINKS | ResolveFlags::NO_MAGICLINKS,
        )
        .map_err(|e| match e {
            // openat2's refusals: the path leaves the export or passes a symlink.
            Errno::XDEV | Errno::LOOP => Status::Escape,
            e => status_of(e),
        })
    }

    /// Open a directory and check it is the one the client expects.
    fn dir(&self, dir: &FileRef) -> Result<OwnedFd, Status> {
        let fd = self.resolve(&dir.path, OFlags::PATH | OFlags::DIRECTORY)?;
        expect_ident(&stat_fd(&fd)?, dir.ident)?;
        Ok(fd)
    }

    /// `O_PATH` fd of any object (symlinks included) and its attributes.
    fn object(&self, file: &FileRef) -> Result<(OwnedFd, Meta), Status> {
        let fd = self.resolve(&file.path, OFlags::PATH)?;
        let st = stat_fd(&fd)?;
        expect_ident(&st, file.ident)?;
        Ok((fd, st))
    }

    /// Open a regular file for I/O and check it is the one expected.
    fn regular(&self, file: &FileRef, flags: OFlags) -> Result<(File, Meta), Status> {
        // O_NONBLOCK: opening a FIFO or device must not hang a server thread (it changes
        // nothing for regular files, the only kind we go on to use).
        let fd = self.resolve(&file.path, flags | OFlags::NONBLOCK)?;
        let st = stat_fd(&fd)?;
        expect_ident(&st, file.ident)?;
        match kind_of(st.mode) {
            FileKind::Regular => Ok((File::from(fd), st)),
            FileKind::Directory => Err(Status::IsDir),
            _ => Err(Status::Inval),
        }
    }

    /// Open a regular file for writing. Like knfsd's owner override: the owner may write
    /// through a file it made read-only (`cp` of a 0444 file, `tar x`, git objects: the
    /// kernel gave the program a writable fd at create time, so EACCES here would lose data
    /// silently). Write permission is added for the open and put back at once.
    fn writer(&self, file: &FileRef) -> Result<(File, Meta), Status> {
        match self.regular(file, OFlags::WRONLY) {
            Err(Status::Access) => {
                let (fd, _) = self.object(file)?;
                with_owner_write(&fd, || {
                    std::fs::OpenOptions::new()
                        .write(true)
                        .custom_flags(rustix::fs::OFlags::NONBLOCK.bits() as i32)
                        .open(proc_path(&fd))
                        .map_err(|e| status_of_io(&e))
                })
                .and_then(|f| Ok((f, self.object(file)?.1)))
            }
            other => other,
        }
    }

    fn writable(&self) -> Result<(), Status> {
        if self.read_only {
            Err(Status::RoFs)
        } else {
            Ok(())
        }
    }

    pub fn getattr(&self, file: &FileRef) -> Result<Attr, Status> {
        Ok(attr_of(&self.object(file)?.1))
    }

    pub fn lookup(&self, dir: &FileRef, name: &[u8]) -> Result<Attr, Status> {
        let dirfd = self.dir(dir)?;
        if name == b"." {
            return Ok(attr_of(&stat_fd(&dirfd)?));
        }
        let name = check_name(name)?;
        Ok(attr_of(&stat_at(&dirfd, name)?))
    }

    /// Read up to `len` bytes at `offset`; returns (bytes, eof, attrs).
    pub fn read(
        &self,
        file: &FileRef,
        offset: u64,
        len: u32,
    ) -> Result<(Vec<u8>, bool, Attr), Status> {
        let (f, st) = self.regular(file, OFlags::RDONLY)?;
        let size = st.size;
        let want = u64::from(len.min(MAX_READ)).min(size.saturating_sub(offset)) as usize;
        let mut buf = vec![0u8; want];
        let mut got = 0;
        while got < want {
            match f.read_at(&mut buf[got..], offset + got as u64) {
                Ok(0) => break,
                Ok(n) => got += n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => return Err(status_of_io(&e)),
            }
        }
        buf.truncate(got);
        let eof = offset + got as u64 >= size;
        Ok((buf, eof, attr_of(&st)))
    }

    pub fn write(
        &self,
        file: &FileRef,
        offset: u64,
        data: &[u8],
        sync: bool,
    ) -> Result<Attr, Status> {
        self.writable()?;
        let (f, _) = self.writer(file)?;
        f.write_all_at(data, offset).map_err(|e| status_of_io(&e))?;
        if sync {
            rfs::fsync(&f).map_err(status_of)?;
        }
        Ok(attr_of(&stat_fd(&f)?))
    }

    pub fn commit(&self, file: &FileRef) -> Result<(), Status> {
        self.writable()?;
        let (f, _) = self
            .regular(file, OFlags::RDONLY)
            .or_else(|_| self.writer(file))?;
        rfs::fsync(&f).map_err(status_of)
    }

    pub fn setattr(
        &self,
        file: &FileRef,
        set: &SetAttr,
        guard: Option<Time>,
    ) -> Result<Attr, Status> {
        self.writable()?;
        let (fd, st) = self.object(file)?;
        if guard.is_some_and(|g| (st.ctime.sec, st.ctime.nsec) != (g.sec, g.nsec)) {
            return Err(Status::NotSync);
        }
        let is_link = kind_of(st.mode) == FileKind::Symlink;
        // /proc/self/fd/N names exactly the inode behind our O_PATH fd: chmod, truncate and
        // utimens through it cannot be redirected by a rename or symlink swap.
        let proc_path = format!("/proc/self/fd/{}", std::os::fd::AsRawFd::as_raw_fd(&fd));
        if set.uid.is_some() || set.gid.is_some() {
            rfs::chownat(
                &fd,
                "",
                set.uid.map(rustix::fs::Uid::from_raw),
                set.gid.map(rustix::fs::Gid::from_raw),
                AtFlags::EMPTY_PATH | AtFlags::SYMLINK_NOFOLLOW,
            )
            .map_err(status_of)?;
        }
        if let Some(mode) = set.mode {
            if is_link {
                return Err(Status::NotSupp);
            }
            rfs::chmod(&proc_path, Mode::from_raw_mode(mode & 0o7777)).map_err(status_of)?;
        }
        if let Some(size) = set.size {
            match kind_of(st.mode) {
                FileKind::Regular => {}
                FileKind::Directory => return Err(Status::IsDir),
                _ => return Err(Status::Inval),
            }
            let open = || {
                std::fs::OpenOptions::new()
                    .write(true)
                    .open(&proc_path)
                    .map_err(|e| status_of_io(&e))
            };
            let f = match open() {
                Err(Status::Access) => with_owner_write(&fd, open)?,
                other => other?,
            };
            f.set_len(size).map_err(|e| status_of_io(&e))?;
        }
        if set.atime.is_some() || set.mtime.is_some() {
            if is_link {
                return Err(Status::NotSupp);
            }
            let ts = |t: Option<SetTime>| match t {
                None => Timespec {
                    tv_sec: 0,
                    tv_nsec: rfs::UTIME_OMIT,
                },
                Some(SetTime::ServerNow) => Timespec {
                    tv_sec: 0,
                    tv_nsec: rfs::UTIME_NOW,
                },
                Some(SetTime::To(t)) => Timespec {
                    tv_sec: t.sec,
                    tv_nsec: i64::from(t.nsec) as _,
                },
            };
            let times = Timestamps {
                last_access: ts(set.atime),
                last_modification: ts(set.mtime),
            };
            rfs::utimensat(rfs::CWD, &proc_path, &times, AtFlags::empty()).map_err(status_of)?;
        }
        Ok(attr_of(&stat_fd(&fd)?))
    }

    pub fn create(&self, dir: &FileRef, name: &[u8], how: &CreateHow) -> Result<Attr, Status> {
        self.writable()?;
        let dirfd = self.dir(dir)?;
        let name = check_name(name)?;
        let base = OFlags::CREATE | OFlags::WRONLY | OFlags::NOFOLLOW | OFlags::CLOEXEC;
        match how {
            CreateHow::Unchecked(set) | CreateHow::Guarded(set) => {
                let guarded = matches!(how, CreateHow::Guarded(_));
                let mode = Mode::from_raw_mode(set.mode.unwrap_or(0o644) & 0o7777);
                let excl = base | OFlags::EXCL | OFlags::NONBLOCK;
                let (fd, rest) = match rfs::openat(&dirfd, name, excl, mode) {
                    // Made it: the mode went to openat (umask is 0 here); apply the rest.
                    Ok(fd) => (fd, SetAttr { mode: None, ..*set }),
                    Err(Errno::EXIST) if !guarded => {
                        // UNCHECKED on an existing name: a regular file is opened and only
                        // the size applies (as knfsd); anything else is EXIST.
                        let st = stat_at(&dirfd, name)?;
                        if kind_of(st.mode) != FileKind::Regular {
                            return Err(Status::Exist);
                        }
                        let fd = rfs::openat(
                            &dirfd,
                            name,
                            OFlags::PATH | OFlags::NOFOLLOW | OFlags::CLOEXEC,
                            Mode::empty(),
                        )
                        .map_err(status_of)?;
                        (
                            fd,
                            SetAttr {
                                size: set.size,
                                ..SetAttr::default()
                            },
                        )
                    }
                    Err(Errno::LOOP) => return Err(Status::Exist),
                    Err(e) => return Err(status_of(e)),
                };
                let st = stat_fd(&fd)?;
                if kind_of(st.mode) != FileKind::Regular {
                    return Err(Status::Exist);
                }
                if rest != SetAttr::default() {
                    let file = FileRef {
                        path: join(&dir.path, std::os::unix::ffi::OsStrExt::as_bytes(name)),
                        ident: Some(st.ident),
                    };
                    return self.setattr(&file, &rest, None);
                }
                Ok(attr_of(&st))
            }
            CreateHow::Exclusive(verf) => {
                let (a, m) = verf_times(verf);
                match rfs::openat(
                    &dirfd,
                    name,
                    base | OFlags::EXCL,
                    Mode::from_raw_mode(0o600),
                ) {
                    Ok(fd) => {
                        let times = Timestamps {
                            last_access: a,
                            last_modification: m,
                        };
                        rfs::utimensat(&dirfd, name, &times, AtFlags::SYMLINK_NOFOLLOW)
                            .map_err(status_of)?;
                        Ok(attr_of(&stat_fd(&fd)?))
                    }
                    Err(Errno::EXIST) => {
                        // A retransmitted exclusive CREATE finds its own file: same verifier.
                        let st = stat_at(&dirfd, name)?;
                        let same = kind_of(st.mode) == FileKind::Regular
                            && st.atime.sec == a.tv_sec
                            && st.mtime.sec == m.tv_sec;
                        if same {
                            Ok(attr_of(&st))
                        } else {
                            Err(Status::Exist)
                        }
                    }
                    Err(e) => Err(status_of(e)),
                }
            }
        }
    }

    pub fn mkdir(&self, dir: &FileRef, name: &[u8], mode: u32) -> Result<Attr, Status> {
        self.writable()?;
        let dirfd = self.dir(dir)?;
        let name = check_name(name)?;
        rfs::mkdirat(&dirfd, name, Mode::from_raw_mode(mode & 0o7777)).map_err(status_of)?;
        let st = stat_at(&dirfd, name)?;
        // mkdir(2) drops the setuid/setgid/sticky bits on some file systems: apply exactly.
        // Keep a setgid bit inherited from the parent (BSD group semantics), as knfsd does.
        let mode = (mode & 0o7777) | (st.mode & 0o2000);
        if st.mode & 0o7777 != mode {
            let fd = rfs::openat(
                &dirfd,
                name,
                OFlags::PATH | OFlags::NOFOLLOW | OFlags::DIRECTORY | OFlags::CLOEXEC,
                Mode::empty(),
            )
            .map_err(status_of)?;
            let proc_path = format!("/proc/self/fd/{}", std::os::fd::AsRawFd::as_raw_fd(&fd));
            rfs::chmod(&proc_path, Mode::from_raw_mode(mode & 0o7777)).map_err(status_of)?;
            return Ok(attr_of(&stat_fd(&fd)?));
        }
        Ok(attr_of(&st))
    }

    pub fn symlink(&self, dir: &FileRef, name: &[u8], target: &[u8]) -> Result<Attr, Status> {
        self.writable()?;
        let dirfd = self.dir(dir)?;
        let name = check_name(name)?;
        if target.is_empty() || target.contains(&0) || target.len() > 4095 {
            return Err(Status::Inval);
        }
        let target = std::ffi::OsStr::from_encoded_bytes_checked(target)?;
        rfs::symlinkat(target, &dirfd, name).map_err(status_of)?;
        Ok(attr_of(&stat_at(&dirfd, name)?))
    }

    pub fn readlink(&self, file: &FileRef) -> Result<Vec<u8>, Status> {
        let (fd, st) = self.object(file)?;
        if kind_of(st.mode) != FileKind::Symlink {
            return Err(Status::Inval);
        }
        let target = rfs::readlinkat(&fd, "", Vec::new()).map_err(status_of)?;
        Ok(target.into_bytes())
    }

    pub fn link(&self, file: &FileRef, dir: &FileRef, name: &[u8]) -> Result<Attr, Status> {
        self.writable()?;
        let (src_parent, src_name) = split_parent(&file.path)?;
        let src_dir = self.resolve(src_parent, OFlags::PATH | OFlags::DIRECTORY)?;
        let st = stat_at(&src_dir, src_name)?;
        expect_ident(&st, file.ident)?;
        if kind_of(st.mode) == FileKind::Directory {
            return Err(Status::IsDir);
        }
        let dirfd = self.dir(dir)?;
        let name = check_name(name)?;
        rfs::linkat(&src_dir, src_name, &dirfd, name, AtFlags::empty()).map_err(status_of)?;
        Ok(attr_of(&stat_at(&dirfd, name)?))
    }

    pub fn remove(&self, dir: &FileRef, name: &[u8], rmdir: bool) -> Result<(), Status> {
        self.writable()?;
        let dirfd = self.dir(dir)?;
        let name = check_name(name)?;
        let flags = if rmdir {
            AtFlags::REMOVEDIR
        } else {
            AtFlags::empty()
        };
        match rfs::unlinkat(&dirfd, name, flags) {
            // unlink(2) of a directory says EISDIR on Linux but EPERM per POSIX.
            Err(Errno::PERM) if !rmdir => {
                let st = stat_at(&dirfd, name)?;
                if kind_of(st.mode) == FileKind::Directory {
                    Err(Status::IsDir)
                } else {
                    Err(Status::Perm)
                }
            }
            // A directory that looks empty to clients may hold orphaned hint files.
            Err(Errno::NOTEMPTY) if rmdir && self.drop_orphan_hints(&dirfd, name)? => {
                rfs::unlinkat(&dirfd, name, flags).map_err(status_of)
            }
            Ok(()) => {
                // The file's hint goes with it.
                let _ = rfs::unlinkat(&dirfd, hint_of(name)?.as_os_str(), AtFlags::empty());
                Ok(())
            }
            Err(e) => Err(status_of(e)),
        }
    }

    /// If directory `name` under `dirfd` holds nothing but hint files, remove them.
    fn drop_orphan_hints(&self, dirfd: &OwnedFd, name: &std::ffi::OsStr) -> Result<bool, Status> {
        let fd = rfs::openat(
            dirfd,
            name,
            OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
            Mode::empty(),
        )
        .map_err(status_of)?;
        let mut hints = Vec::new();
        for ent in rfs::Dir::read_from(&fd).map_err(status_of)? {
            let ent = ent.map_err(status_of)?;
            let n = ent.file_name().to_bytes();
            if n == b"." || n == b".." {
                continue;
            }
            if !hint::is_hint_name(n) {
                return Ok(false);
            }
            hints.push(n.to_vec());
        }
        for h in hints {
            let h = std::ffi::OsStr::from_encoded_bytes_checked(&h)?;
            rfs::unlinkat(&fd, h, AtFlags::empty()).map_err(status_of)?;
        }
        Ok(true)
    }

    pub fn rename(
        &self,
        from_dir: &FileRef,
        from: &[u8],
        to_dir: &FileRef,
        to: &[u8],
    ) -> Result<(), Status> {
        self.writable()?;
        let fd_from = self.dir(from_dir)?;
        let fd_to = self.dir(to_dir)?;
        let from = check_name(from)?;
        let to = check_name(to)?;
        rfs::renameat(&fd_from, from, &fd_to, to).map_err(status_of)?;
        // The hint follows its file (its validator holds across a rename); a hint of the
        // file replaced at `to` goes.
        let (hint_from, hint_to) = (hint_of(from)?, hint_of(to)?);
        if rfs::renameat(&fd_from, hint_from.as_os_str(), &fd_to, hint_to.as_os_str()).is_err() {
            let _ = rfs::unlinkat(&fd_to, hint_to.as_os_str(), AtFlags::empty());
        }
        Ok(())
    }

    /// Entries with cookie > `after`, in cookie order, at most `max`, with attributes.
    pub fn readdir(
        &self,
        dir: &FileRef,
        after: u64,
        max: u32,
    ) -> Result<(Vec<DirEntry>, bool), Status> {
        let fd = self.resolve(&dir.path, OFlags::RDONLY | OFlags::DIRECTORY)?;
        let st = stat_fd(&fd)?;
        expect_ident(&st, dir.ident)?;
        let version = listing::Version {
            ident: st.ident,
            mtime: st.mtime,
            ctime: st.ctime,
        };
        let names = self.listings.get(version, || {
            let mut names: Vec<(u64, Vec<u8>)> = Vec::new();
            for ent in rfs::Dir::read_from(&fd).map_err(status_of)? {
                let ent = ent.map_err(status_of)?;
                let name = ent.file_name().to_bytes();
                if name == b"." || name == b".." || is_reserved(name) {
                    continue;
                }
                names.push((name_cookie(name), name.to_vec()));
            }
            Ok(names)
        })?;
        let (names, eof) = listing::page(&names, after, max);
        let entries = names
            .iter()
            .map(|(cookie, name)| {
                let (cookie, name) = (*cookie, name.clone());
                let attr = std::ffi::OsStr::from_encoded_bytes_checked(&name)
                    .ok()
                    .and_then(|n| stat_at(&fd, n).ok())
                    .map(|st| attr_of(&st));
                DirEntry { name, cookie, attr }
            })
            .collect();
        Ok((entries, eof))
    }

    pub fn fsstat(&self) -> Result<FsStat, Status> {
        let s = rfs::fstatvfs(&self.root).map_err(status_of)?;
        let frsize = s.f_frsize;
        Ok(FsStat {
            total_bytes: s.f_blocks.saturating_mul(frsize),
            free_bytes: s.f_bfree.saturating_mul(frsize),
            avail_bytes: s.f_bavail.saturating_mul(frsize),
            total_files: s.f_files,
            free_files: s.f_ffree,
            avail_files: s.f_favail,
        })
    }

    /// The root's `O_PATH` fd, for tests that check confinement.
    pub fn root_fd(&self) -> impl AsFd + '_ {
        &self.root
    }
}

/// The exclusive-create verifier, stored in atime (first 4 bytes) and mtime (last 4).
fn verf_times(verf: &[u8; 8]) -> (Timespec, Timespec) {
    // 31 bits each (as knfsd): file systems with 32-bit timestamps would clamp more.
    let a = u32::from_be_bytes([verf[0], verf[1], verf[2], verf[3]]) & 0x7fff_ffff;
    let m = u32::from_be_bytes([verf[4], verf[5], verf[6], verf[7]]) & 0x7fff_ffff;
    (
        Timespec {
            tv_sec: i64::from(a),
            tv_nsec: 0,
        },
        Timespec {
            tv_sec: i64::from(m),
            tv_nsec: 0,
        },
    )
}
