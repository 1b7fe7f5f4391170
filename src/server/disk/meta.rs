//! What the server reports of a file: `statx` into [`Meta`] and the protocol's [`Attr`]
//! (the birth time folded into the identity), and errno into the protocol's [`Status`].

use std::os::fd::AsFd;

use rustix::fs::{self as rfs, AtFlags, StatxFlags};
use rustix::io::Errno;

use crate::proto::{Attr, FileKind, Status, Time};

pub(super) fn expect_ident(st: &Meta, ident: Option<u64>) -> Result<(), Status> {
    match ident {
        Some(i) if i != st.ident => Err(Status::Stale),
        _ => Ok(()),
    }
}

pub(super) fn kind_of(mode: u32) -> FileKind {
    match rfs::FileType::from_raw_mode(mode) {
        rfs::FileType::Directory => FileKind::Directory,
        rfs::FileType::Symlink => FileKind::Symlink,
        rfs::FileType::BlockDevice => FileKind::BlockDevice,
        rfs::FileType::CharacterDevice => FileKind::CharDevice,
        rfs::FileType::Socket => FileKind::Socket,
        rfs::FileType::Fifo => FileKind::Fifo,
        _ => FileKind::Regular,
    }
}

/// What the server knows of a file: `statx`, with the birth time folded into an identity.
#[derive(Debug, Clone, Copy)]
pub struct Meta {
    pub(super) mode: u32,
    /// Inode number folded with the birth time, where the file system records one: a
    /// file deleted and recreated in the same inode is still another file.
    pub(super) ident: u64,
    pub(super) size: u64,
    pub(super) atime: Time,
    pub(super) mtime: Time,
    pub(super) ctime: Time,
    pub(super) attr: Attr,
}

const STATX_WANT: StatxFlags = StatxFlags::BASIC_STATS.union(StatxFlags::BTIME);

pub(crate) fn stat_fd(fd: impl AsFd) -> Result<Meta, Status> {
    rfs::statx(
        fd,
        "",
        AtFlags::EMPTY_PATH | AtFlags::SYMLINK_NOFOLLOW,
        STATX_WANT,
    )
    .map(meta_of)
    .map_err(status_of)
}

pub(super) fn stat_at(dirfd: impl AsFd, name: &std::ffi::OsStr) -> Result<Meta, Status> {
    rfs::statx(dirfd, name, AtFlags::SYMLINK_NOFOLLOW, STATX_WANT)
        .map(meta_of)
        .map_err(status_of)
}

fn meta_of(x: rfs::Statx) -> Meta {
    let t = |ts: rfs::StatxTimestamp| Time {
        sec: ts.tv_sec,
        nsec: ts.tv_nsec,
    };
    let mode = u32::from(x.stx_mode);
    let born = StatxFlags::from_bits_retain(x.stx_mask).contains(StatxFlags::BTIME);
    let ident = if born {
        let b = x.stx_btime;
        x.stx_ino ^ (b.tv_sec as u64).rotate_left(32) ^ u64::from(b.tv_nsec).rotate_left(17)
    } else {
        x.stx_ino
    };
    let attr = Attr {
        kind: kind_of(mode),
        mode: mode & 0o7777,
        nlink: x.stx_nlink,
        uid: x.stx_uid,
        gid: x.stx_gid,
        size: x.stx_size,
        used: x.stx_blocks * 512,
        rdev: (x.stx_rdev_major, x.stx_rdev_minor),
        dev: rustix::fs::makedev(x.stx_dev_major, x.stx_dev_minor),
        ino: x.stx_ino,
        ident,
        atime: t(x.stx_atime),
        mtime: t(x.stx_mtime),
        ctime: t(x.stx_ctime),
    };
    Meta {
        mode,
        ident,
        size: x.stx_size,
        atime: attr.atime,
        mtime: attr.mtime,
        ctime: attr.ctime,
        attr,
    }
}

pub(crate) fn attr_of(m: &Meta) -> Attr {
    m.attr
}

/// errno -> protocol status. (EXDEV and ELOOP from `openat2` itself are mapped to
/// [`Status::Escape`] in `resolve`: there they mean the path tried to leave the export.)
pub fn status_of(e: Errno) -> Status {
    match e {
        Errno::PERM => Status::Perm,
        Errno::NOENT => Status::NoEnt,
        Errno::ACCESS => Status::Access,
        Errno::EXIST => Status::Exist,
        Errno::XDEV => Status::XDev,
        // O_NOFOLLOW met a symlink where a file was expected.
        Errno::LOOP => Status::Inval,
        Errno::NOTDIR => Status::NotDir,
        Errno::ISDIR => Status::IsDir,
        Errno::INVAL => Status::Inval,
        Errno::FBIG => Status::FBig,
        Errno::NOSPC => Status::NoSpc,
        Errno::ROFS => Status::RoFs,
        Errno::MLINK => Status::MLink,
        Errno::NAMETOOLONG => Status::NameTooLong,
        Errno::NOTEMPTY => Status::NotEmpty,
        Errno::DQUOT => Status::DQuot,
        Errno::STALE => Status::Stale,
        Errno::NOTSUP | Errno::NOSYS => Status::NotSupp,
        _ => Status::Io,
    }
}

pub(super) fn status_of_io(e: &std::io::Error) -> Status {
    e.raw_os_error()
        .map_or(Status::Io, |n| status_of(Errno::from_raw_os_error(n)))
}
