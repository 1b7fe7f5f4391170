//! Conversions between the tunnel's types and NFSv3's: attributes, SETATTR changes, statuses.

use nfs3_server::nfs3_types::nfs3::{
    Nfs3Option, fattr3, ftype3, nfsstat3, nfstime3, sattr3, set_atime, set_mtime, specdata3,
    wcc_attr,
};

use crate::error::Error;
use crate::proto::{Attr, FileKind, SetAttr, SetTime, Status, Time};

/// Attributes as NFS shows them. `fileid` is chosen by the caller (see [`super::fs`]), `fsid`
/// is one value for the whole export so the kernel never sees a submount.
pub fn fattr(a: &Attr, fileid: u64, fsid: u64) -> fattr3 {
    fattr3 {
        type_: match a.kind {
            FileKind::Regular => ftype3::NF3REG,
            FileKind::Directory => ftype3::NF3DIR,
            FileKind::Symlink => ftype3::NF3LNK,
            FileKind::BlockDevice => ftype3::NF3BLK,
            FileKind::CharDevice => ftype3::NF3CHR,
            FileKind::Socket => ftype3::NF3SOCK,
            FileKind::Fifo => ftype3::NF3FIFO,
        },
        mode: a.mode,
        nlink: a.nlink,
        uid: a.uid,
        gid: a.gid,
        size: a.size,
        used: a.used,
        rdev: specdata3 {
            specdata1: a.rdev.0,
            specdata2: a.rdev.1,
        },
        fsid,
        fileid,
        atime: time3(a.atime),
        mtime: time3(a.mtime),
        ctime: time3(a.ctime),
    }
}

/// Pre-operation attributes for wcc data.
pub fn wcc(a: &Attr) -> wcc_attr {
    wcc_attr {
        size: a.size,
        mtime: time3(a.mtime),
        ctime: time3(a.ctime),
    }
}

/// NFSv3 times are unsigned 32-bit seconds: clamp what cannot be shown.
pub fn time3(t: Time) -> nfstime3 {
    nfstime3 {
        seconds: t.sec.clamp(0, i64::from(u32::MAX)) as u32,
        nseconds: t.nsec,
    }
}

pub fn time_of(t: nfstime3) -> Time {
    Time {
        sec: i64::from(t.seconds),
        nsec: t.nseconds,
    }
}

pub fn set_attr(s: &sattr3) -> SetAttr {
    let opt = |o: &Nfs3Option<u32>| match o {
        Nfs3Option::Some(v) => Some(*v),
        Nfs3Option::None => None,
    };
    SetAttr {
        mode: opt(&s.mode),
        uid: opt(&s.uid),
        gid: opt(&s.gid),
        size: match s.size {
            Nfs3Option::Some(v) => Some(v),
            Nfs3Option::None => None,
        },
        atime: match s.atime {
            set_atime::DONT_CHANGE => None,
            set_atime::SET_TO_SERVER_TIME => Some(SetTime::ServerNow),
            set_atime::SET_TO_CLIENT_TIME(t) => Some(SetTime::To(time_of(t))),
        },
        mtime: match s.mtime {
            set_mtime::DONT_CHANGE => None,
            set_mtime::SET_TO_SERVER_TIME => Some(SetTime::ServerNow),
            set_mtime::SET_TO_CLIENT_TIME(t) => Some(SetTime::To(time_of(t))),
        },
    }
}

pub fn nfs_status(s: Status) -> nfsstat3 {
    match s {
        Status::Perm => nfsstat3::NFS3ERR_PERM,
        Status::NoEnt => nfsstat3::NFS3ERR_NOENT,
        Status::Io => nfsstat3::NFS3ERR_IO,
        Status::Access | Status::Escape => nfsstat3::NFS3ERR_ACCES,
        Status::Exist => nfsstat3::NFS3ERR_EXIST,
        Status::XDev => nfsstat3::NFS3ERR_XDEV,
        Status::NotDir => nfsstat3::NFS3ERR_NOTDIR,
        Status::IsDir => nfsstat3::NFS3ERR_ISDIR,
        Status::Inval => nfsstat3::NFS3ERR_INVAL,
        Status::FBig => nfsstat3::NFS3ERR_FBIG,
        Status::NoSpc => nfsstat3::NFS3ERR_NOSPC,
        Status::RoFs => nfsstat3::NFS3ERR_ROFS,
        Status::MLink => nfsstat3::NFS3ERR_MLINK,
        Status::NameTooLong => nfsstat3::NFS3ERR_NAMETOOLONG,
        Status::NotEmpty => nfsstat3::NFS3ERR_NOTEMPTY,
        Status::DQuot => nfsstat3::NFS3ERR_DQUOT,
        Status::Stale => nfsstat3::NFS3ERR_STALE,
        Status::NotSupp => nfsstat3::NFS3ERR_NOTSUPP,
        Status::NotSync => nfsstat3::NFS3ERR_NOT_SYNC,
    }
}

/// Library errors as NFS statuses. A broken tunnel past the reconnect timeout is EIO:
/// the one case where the NFS client must hear of a failure.
pub fn nfs_error(e: &Error) -> nfsstat3 {
    match e {
        Error::Status(s) => nfs_status(*s),
        Error::Index(_) => nfsstat3::NFS3ERR_SERVERFAULT,
        // Offline (issue 16): the kernel retries after a delay; the VM waits, as on a hard
        // mount, instead of seeing an I/O error on its disk.
        Error::Offline(_) => nfsstat3::NFS3ERR_JUKEBOX,
        _ => {
            tracing::warn!("store request failed: {e}");
            nfsstat3::NFS3ERR_IO
        }
    }
}
