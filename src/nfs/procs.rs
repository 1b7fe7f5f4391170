//! The NFSv3 procedures the gate answers itself instead of the `nfs3_server` dispatcher,
//! and why (DESIGN.md §3 has the table): READ (its data goes to the socket uncopied), MKDIR (the dispatcher drops the mode), LINK and
//! MKNOD (not in its trait), FSSTAT (its figures are constants), CREATE and SETATTR (its
//! guards are racy), REMOVE/RMDIR (it cannot tell them apart), READDIR (its verifier turns
//! any change into BAD_COOKIE), ACCESS (it grants every bit; ours come from the mode, see
//! [`super::access`]), MOUNT's MNT and the portmapper's GETPORT.

use std::io::Cursor;
use std::sync::Arc;

use nfs3_server::nfs3_types::nfs3::{
    self as n, ACCESS3args, ACCESS3res, ACCESS3resfail, ACCESS3resok, CREATE3args, CREATE3res,
    CREATE3resfail, CREATE3resok, FSSTAT3args, FSSTAT3res, FSSTAT3resfail, FSSTAT3resok, LINK3args,
    LINK3res, LINK3resfail, LINK3resok, MKDIR3args, MKDIR3res, MKDIR3resfail, MKDIR3resok,
    MKNOD3args, MKNOD3res, MKNOD3resfail, Nfs3Option, READ3args, READ3res, READ3resfail,
    READDIR3args, READDIR3res, READDIR3resfail, READDIR3resok, REMOVE3args, REMOVE3res,
    REMOVE3resfail, REMOVE3resok, RMDIR3args, RMDIR3res, RMDIR3resfail, RMDIR3resok, SETATTR3args,
    SETATTR3res, SETATTR3resfail, SETATTR3resok, createhow3, fattr3, nfs_fh3, nfsstat3,
    post_op_attr, post_op_fh3, pre_op_attr, wcc_data,
};
use nfs3_server::nfs3_types::rpc::accept_stat_data;
use nfs3_server::nfs3_types::xdr_codec::{List, Opaque, Pack, Unpack};
use nfs3_server::nfs3_types::{mount, portmap};
use nfs3_server::vfs::{FileHandle, FileHandleU64};

use super::access::{Caller, access_bits};
use super::attr::{set_attr, time_of, wcc};
use super::fs::Front;
use super::record::{Record, reply};
use crate::proto::{Attr, CreateHow};

/// NFSv3 procedure numbers (RFC 1813).
pub mod nfsproc {
    pub const NULL: u32 = 0;
    pub const GETATTR: u32 = 1;
    pub const SETATTR: u32 = 2;
    pub const LOOKUP: u32 = 3;
    pub const ACCESS: u32 = 4;
    pub const READLINK: u32 = 5;
    pub const READ: u32 = 6;
    pub const WRITE: u32 = 7;
    pub const CREATE: u32 = 8;
    pub const MKDIR: u32 = 9;
    pub const SYMLINK: u32 = 10;
    pub const MKNOD: u32 = 11;
    pub const REMOVE: u32 = 12;
    pub const RMDIR: u32 = 13;
    pub const RENAME: u32 = 14;
    pub const LINK: u32 = 15;
    pub const READDIR: u32 = 16;
    pub const READDIRPLUS: u32 = 17;
    pub const FSSTAT: u32 = 18;
    pub const FSINFO: u32 = 19;
    pub const PATHCONF: u32 = 20;
    pub const COMMIT: u32 = 21;
}
use nfsproc::*;

/// MOUNT's MNT, answered here so that any spelling of the root (`/`, ``, `//`) and
/// subdirectory mounts resolve through the same [`Front::lookup`] path.
pub const MNT: u32 = 1;
/// Marks a MOUNT procedure in the `proc` slot the gate dispatches on.
pub const MOUNT_PROC: u32 = 0x1000;
/// Portmapper NULL and GETPORT (for clients that cannot be told a port, like qemu's
/// `nfs://` driver): NFS and MOUNT map to the gate's own port.
pub const PMAP_PROC: u32 = 0x2000;
pub const PMAP_NULL: u32 = 0;
pub const PMAP_GETPORT: u32 = 3;

/// Largest READDIR reply built, whatever `count` the client asks for (issue 11, item 21):
/// as the 1 MiB we advertise for reads, so a huge count cannot make the gate collect a
/// whole directory in memory.
const MAX_READDIR_REPLY: usize = 1 << 20;

/// The NFS procedures answered here.
pub fn answered_here(proc_: u32) -> bool {
    matches!(
        proc_,
        SETATTR | ACCESS | CREATE | MKDIR | MKNOD | REMOVE | RMDIR | LINK | READDIR | FSSTAT
    )
}

/// What the answered procedures share: the file system and the handle format.
pub struct Procedures {
    pub front: Arc<Front>,
    /// Handle generation (persisted in the index): first 8 bytes of every handle.
    pub generation: u64,
    /// The port the kernel mounts, as the portmapper tells it.
    pub public_port: u16,
}

impl Procedures {
    pub fn handle_of(&self, fh: &nfs_fh3) -> Result<u64, nfsstat3> {
        let data: &[u8] = &fh.data;
        if data.len() != 16 {
            return Err(nfsstat3::NFS3ERR_BADHANDLE);
        }
        let generation = u64::from_le_bytes(data[..8].try_into().expect("8 bytes"));
        if generation != self.generation {
            return Err(if generation < self.generation {
                nfsstat3::NFS3ERR_STALE
            } else {
                nfsstat3::NFS3ERR_BADHANDLE
            });
        }
        FileHandleU64::from_bytes(&data[8..])
            .map(|h| h.as_u64())
            .ok_or(nfsstat3::NFS3ERR_BADHANDLE)
    }

    fn fh(&self, id: u64) -> nfs_fh3 {
        let mut v = self.generation.to_le_bytes().to_vec();
        v.extend_from_slice(FileHandleU64::new(id).as_bytes());
        nfs_fh3 {
            data: Opaque::owned(v),
        }
    }

    fn post(&self, a: Option<Attr>) -> post_op_attr {
        a.map_or(post_op_attr::None, |a| {
            post_op_attr::Some(self.front.fattr(&a))
        })
    }

    async fn wcc(&self, before: Option<Attr>, dir: u64) -> wcc_data {
        wcc_data {
            before: before.map_or(pre_op_attr::None, |a| pre_op_attr::Some(wcc(&a))),
            after: self.post(self.front.pre_attr(dir).await),
        }
    }

    /// READ, answered here rather than by the dispatcher so that its data goes from the
    /// buffer the cache filled to the socket (a [`Record`] in parts): no copies into the
    /// dispatcher's reply buffer, its in-process pipe and the gate's record again.
    pub async fn read(&self, xid: u32, args: &[u8]) -> Record {
        let Ok((a, _)) = READ3args::unpack(&mut Cursor::new(args)) else {
            return reply(xid, accept_stat_data::GARBAGE_ARGS, &[]).into();
        };
        let id = match self.handle_of(&a.file) {
            Ok(id) => id,
            Err(stat) => return read_failed(xid, stat, post_op_attr::None),
        };
        match self.front.read_bytes(id, a.offset, a.count).await {
            Ok((data, eof, attr)) => {
                let head = read_ok_head(xid, self.front.fattr(&attr), data.len(), eof);
                Record::new(head, data)
            }
            Err(stat) => {
                let attr = match stat {
                    nfsstat3::NFS3ERR_STALE | nfsstat3::NFS3ERR_BADHANDLE => None,
                    _ => self.front.pre_attr(id).await,
                };
                read_failed(xid, stat, self.post(attr))
            }
        }
    }

    /// Decode, carry out and encode one intercepted call; the whole reply record body.
    pub async fn answer(&self, xid: u32, proc_: u32, args: &[u8], caller: &Caller) -> Vec<u8> {
        let mut cur = Cursor::new(args);
        let out = match proc_ {
            SETATTR => match SETATTR3args::unpack(&mut cur) {
                Ok((a, _)) => pack(&self.setattr(a).await),
                Err(_) => None,
            },
            CREATE => match CREATE3args::unpack(&mut cur) {
                Ok((a, _)) => pack(&self.create(a).await),
                Err(_) => None,
            },
            MKDIR => match MKDIR3args::unpack(&mut cur) {
                Ok((a, _)) => pack(&self.mkdir(a).await),
                Err(_) => None,
            },
            MKNOD => match MKNOD3args::unpack(&mut cur) {
                Ok((a, _)) => pack(&self.mknod(a).await),
                Err(_) => None,
            },
            REMOVE => match REMOVE3args::unpack(&mut cur) {
                Ok((a, _)) => pack(&self.remove(a).await),
                Err(_) => None,
            },
            RMDIR => match RMDIR3args::unpack(&mut cur) {
                Ok((a, _)) => pack(&self.rmdir(a).await),
                Err(_) => None,
            },
            LINK => match LINK3args::unpack(&mut cur) {
                Ok((a, _)) => pack(&self.link(a).await),
                Err(_) => None,
            },
            READDIR => match READDIR3args::unpack(&mut cur) {
                Ok((a, _)) => pack(&self.readdir(a).await),
                Err(_) => None,
            },
            ACCESS => match ACCESS3args::unpack(&mut cur) {
                Ok((a, _)) => pack(&self.access(a, caller).await),
                Err(_) => None,
            },
            FSSTAT => match FSSTAT3args::unpack(&mut cur) {
                Ok((a, _)) => pack(&self.fsstat(a).await),
                Err(_) => None,
            },
            p if p == PMAP_PROC | PMAP_NULL => Some(Vec::new()),
            p if p == PMAP_PROC | PMAP_GETPORT => match portmap::mapping::unpack(&mut cur) {
                Ok((m, _)) => {
                    let ours = matches!(
                        (m.prog, m.vers),
                        (n::PROGRAM, n::VERSION) | (mount::PROGRAM, mount::VERSION)
                    ) && m.prot == portmap::IPPROTO_TCP;
                    pack(&if ours { u32::from(self.public_port) } else { 0 })
                }
                Err(_) => None,
            },
            p if p == MOUNT_PROC | MNT => match mount::dirpath::unpack(&mut cur) {
                Ok((a, _)) => pack(&self.mnt(&a.0).await),
                Err(_) => None,
            },
            _ => None,
        };
        match out {
            Some(result) => reply(xid, accept_stat_data::SUCCESS, &result),
            None => reply(xid, accept_stat_data::GARBAGE_ARGS, &[]),
        }
    }

    async fn setattr(&self, a: SETATTR3args) -> SETATTR3res {
        let id = match self.handle_of(&a.object) {
            Ok(id) => id,
            Err(s) => return SETATTR3res::Err((s, SETATTR3resfail::default())),
        };
        let before = self.front.pre_attr(id).await;
        let guard = match a.guard {
            Nfs3Option::Some(t) => Some(time_of(t)),
            Nfs3Option::None => None,
        };
        match self
            .front
            .setattr_guarded(id, set_attr(&a.new_attributes), guard)
            .await
        {
            Ok(after) => SETATTR3res::Ok(SETATTR3resok {
                obj_wcc: wcc_data {
                    before: before.map_or(pre_op_attr::None, |b| pre_op_attr::Some(wcc(&b))),
                    after: self.post(Some(after)),
                },
            }),
            Err(s) => SETATTR3res::Err((
                s,
                SETATTR3resfail {
                    obj_wcc: self.wcc(before, id).await,
                },
            )),
        }
    }

    async fn create(&self, a: CREATE3args<'_>) -> CREATE3res {
        let dir = match self.handle_of(&a.where_.dir) {
            Ok(id) => id,
            Err(s) => return CREATE3res::Err((s, CREATE3resfail::default())),
        };
        let before = self.front.pre_attr(dir).await;
        let how = match &a.how {
            createhow3::UNCHECKED(s) => CreateHow::Unchecked(set_attr(s)),
            createhow3::GUARDED(s) => CreateHow::Guarded(set_attr(s)),
            createhow3::EXCLUSIVE(v) => CreateHow::Exclusive(v.0),
        };
        let exclusive = matches!(how, CreateHow::Exclusive(_));
        match self.front.create_how(dir, &a.where_.name.0, how).await {
            Ok((id, attr)) => CREATE3res::Ok(CREATE3resok {
                obj: post_op_fh3::Some(self.fh(id)),
                // After an exclusive create the times hold the verifier: the client must
                // not cache them (it sends a SETATTR next), so send no attributes.
                obj_attributes: if exclusive {
                    post_op_attr::None
                } else {
                    self.post(Some(attr))
                },
                dir_wcc: self.wcc(before, dir).await,
            }),
            Err(s) => CREATE3res::Err((
                s,
                CREATE3resfail {
                    dir_wcc: self.wcc(before, dir).await,
                },
            )),
        }
    }

    async fn mkdir(&self, a: MKDIR3args<'_>) -> MKDIR3res {
        let dir = match self.handle_of(&a.where_.dir) {
            Ok(id) => id,
            Err(s) => return MKDIR3res::Err((s, MKDIR3resfail::default())),
        };
        let before = self.front.pre_attr(dir).await;
        let set = set_attr(&a.attributes);
        let res = self
            .front
            .mkdir_mode(dir, &a.where_.name.0, set.mode.unwrap_or(0o755))
            .await;
        // Ownership and times given with MKDIR are applied after it, as knfsd does.
        let rest = crate::proto::SetAttr { mode: None, ..set };
        let res = match res {
            Ok((id, attr)) if rest != crate::proto::SetAttr::default() => self
                .front
                .setattr_guarded(id, rest, None)
                .await
                .map(|a| (id, a))
                .or(Ok((id, attr))),
            other => other,
        };
        match res {
            Ok((id, attr)) => MKDIR3res::Ok(MKDIR3resok {
                obj: post_op_fh3::Some(self.fh(id)),
                obj_attributes: self.post(Some(attr)),
                dir_wcc: self.wcc(before, dir).await,
            }),
            Err(s) => MKDIR3res::Err((
                s,
                MKDIR3resfail {
                    dir_wcc: self.wcc(before, dir).await,
                },
            )),
        }
    }

    async fn mknod(&self, a: MKNOD3args<'_>) -> MKNOD3res {
        // Device nodes, FIFOs and sockets have no place in a VM image store, and a
        // user-level server could not make most of them: refuse clearly.
        let dir_wcc = match self.handle_of(&a.where_.dir) {
            Ok(dir) => self.wcc(None, dir).await,
            Err(_) => wcc_data::default(),
        };
        MKNOD3res::Err((nfsstat3::NFS3ERR_NOTSUPP, MKNOD3resfail { dir_wcc }))
    }

    async fn remove(&self, a: REMOVE3args<'_>) -> REMOVE3res {
        let dir = match self.handle_of(&a.object.dir) {
            Ok(id) => id,
            Err(s) => return REMOVE3res::Err((s, REMOVE3resfail::default())),
        };
        let before = self.front.pre_attr(dir).await;
        match self.front.unlink(dir, &a.object.name.0, false).await {
            Ok(()) => REMOVE3res::Ok(REMOVE3resok {
                dir_wcc: self.wcc(before, dir).await,
            }),
            Err(s) => REMOVE3res::Err((
                s,
                REMOVE3resfail {
                    dir_wcc: self.wcc(before, dir).await,
                },
            )),
        }
    }

    async fn rmdir(&self, a: RMDIR3args<'_>) -> RMDIR3res {
        let dir = match self.handle_of(&a.object.dir) {
            Ok(id) => id,
            Err(s) => {
                return RMDIR3res::Err((
                    s,
                    RMDIR3resfail {
                        dir_wcc: wcc_data::default(),
                    },
                ));
            }
        };
        let before = self.front.pre_attr(dir).await;
        match self.front.unlink(dir, &a.object.name.0, true).await {
            Ok(()) => RMDIR3res::Ok(RMDIR3resok {
                dir_wcc: self.wcc(before, dir).await,
            }),
            Err(s) => RMDIR3res::Err((
                s,
                RMDIR3resfail {
                    dir_wcc: self.wcc(before, dir).await,
                },
            )),
        }
    }

    async fn link(&self, a: LINK3args<'_>) -> LINK3res {
        let (file, dir) = match (self.handle_of(&a.file), self.handle_of(&a.link.dir)) {
            (Ok(f), Ok(d)) => (f, d),
            (Err(s), _) | (_, Err(s)) => {
                return LINK3res::Err((
                    s,
                    LINK3resfail {
                        file_attributes: post_op_attr::None,
                        linkdir_wcc: wcc_data::default(),
                    },
                ));
            }
        };
        let before = self.front.pre_attr(dir).await;
        match self.front.link(file, dir, &a.link.name.0).await {
            Ok(attr) => LINK3res::Ok(LINK3resok {
                file_attributes: self.post(Some(attr)),
                linkdir_wcc: self.wcc(before, dir).await,
            }),
            Err(s) => LINK3res::Err((
                s,
                LINK3resfail {
                    file_attributes: self.post(self.front.pre_attr(file).await),
                    linkdir_wcc: self.wcc(before, dir).await,
                },
            )),
        }
    }

    async fn mnt(&self, path: &[u8]) -> mount::mountres3<'static> {
        use nfs3_server::nfs3_types::rpc::auth_flavor;
        tracing::debug!(path = %String::from_utf8_lossy(path), "MOUNT");
        let mut id = FileHandleU64::new(crate::cache::index::ROOT_ID);
        for comp in path.split(|&b| b == b'/').filter(|c| !c.is_empty()) {
            match nfs3_server::vfs::NfsReadFileSystem::lookup(&*self.front, &id, &comp.into()).await
            {
                Ok(child) => id = child,
                Err(nfsstat3::NFS3ERR_NOTDIR) => {
                    return mount::mountres3::Err(mount::mountstat3::MNT3ERR_NOTDIR);
                }
                Err(nfsstat3::NFS3ERR_ACCES) => {
                    return mount::mountres3::Err(mount::mountstat3::MNT3ERR_ACCES);
                }
                Err(_) => return mount::mountres3::Err(mount::mountstat3::MNT3ERR_NOENT),
            }
        }
        mount::mountres3::Ok(mount::mountres3_ok {
            fhandle: mount::fhandle3(self.fh(id.as_u64()).data),
            auth_flavors: vec![auth_flavor::AUTH_NULL as u32, auth_flavor::AUTH_UNIX as u32],
        })
    }

    /// READDIR with cookies that never go bad: they are name hashes the store resumes
    /// after, so the verifier is always zero (RFC 1813 allows it) and a listing in progress
    /// survives changes to the directory. (The dispatcher's READDIR ties the verifier to
    /// the directory's mtime and answers BAD_COOKIE after any change, which Linux reads as
    /// the end of the directory.)
    async fn readdir(&self, a: READDIR3args) -> READDIR3res<'static> {
        use nfs3_server::vfs::{NextResult, NfsReadFileSystem, ReadDirPlusIterator};
        let dir = match self.handle_of(&a.dir) {
            Ok(id) => id,
            Err(s) => return READDIR3res::Err((s, READDIR3resfail::default())),
        };
        let dir_attributes = self.post(self.front.pre_attr(dir).await);
        // Reply header, attributes, verifier, "no more entries" and eof.
        let mut used = 4 + dir_attributes.packed_size() + 8 + 4 + 4;
        // The client's count, bounded: a reply must stay well inside one record.
        let count = (a.count as usize).min(MAX_READDIR_REPLY);
        if used > count {
            return READDIR3res::Err((
                nfsstat3::NFS3ERR_TOOSMALL,
                READDIR3resfail { dir_attributes },
            ));
        }
        let dir_fh = FileHandleU64::new(dir);
        let mut iter = match self.front.readdirplus(&dir_fh, a.cookie).await {
            Ok(it) => it,
            Err(s) => return READDIR3res::Err((s, READDIR3resfail { dir_attributes })),
        };
        let mut entries = Vec::new();
        let eof = loop {
            match iter.next().await {
                NextResult::Ok(e) => {
                    let entry = n::entry3 {
                        fileid: e.fileid,
                        name: e.name,
                        cookie: e.cookie,
                    };
                    let size = 4 + entry.packed_size();
                    if used + size > count {
                        break false;
                    }
                    used += size;
                    entries.push(entry);
                }
                NextResult::Eof => break true,
                NextResult::Err(s) => {
                    return READDIR3res::Err((s, READDIR3resfail { dir_attributes }));
                }
            }
        };
        if entries.is_empty() && !eof {
            return READDIR3res::Err((
                nfsstat3::NFS3ERR_TOOSMALL,
                READDIR3resfail { dir_attributes },
            ));
        }
        READDIR3res::Ok(READDIR3resok {
            dir_attributes,
            cookieverf: n::cookieverf3::default(),
            reply: n::dirlist3 {
                entries: List(entries),
                eof,
            },
        })
    }

    async fn fsstat(&self, a: FSSTAT3args) -> FSSTAT3res {
        let id = match self.handle_of(&a.fsroot) {
            Ok(id) => id,
            Err(s) => return FSSTAT3res::Err((s, FSSTAT3resfail::default())),
        };
        match self.front.fsstat(id).await {
            Ok(s) => FSSTAT3res::Ok(FSSTAT3resok {
                obj_attributes: self.post(self.front.pre_attr(id).await),
                tbytes: s.total_bytes,
                fbytes: s.free_bytes,
                abytes: s.avail_bytes,
                tfiles: s.total_files,
                ffiles: s.free_files,
                afiles: s.avail_files,
                // The figures change all the time: the client must not cache them.
                invarsec: 0,
            }),
            Err(s) => FSSTAT3res::Err((s, FSSTAT3resfail::default())),
        }
    }
    /// ACCESS from the mode, owner and groups (the dispatcher would grant every bit).
    async fn access(&self, a: ACCESS3args, caller: &Caller) -> ACCESS3res {
        let id = match self.handle_of(&a.object) {
            Ok(id) => id,
            Err(s) => return ACCESS3res::Err((s, ACCESS3resfail::default())),
        };
        match self.front.attr_of(id).await {
            Ok(attr) => {
                let read_only = caller.read_only || self.front.read_only();
                ACCESS3res::Ok(ACCESS3resok {
                    obj_attributes: self.post(Some(attr)),
                    access: access_bits(caller, &attr, a.access, read_only),
                })
            }
            Err(s) => ACCESS3res::Err((s, ACCESS3resfail::default())),
        }
    }
}

/// A READ3resok reply up to its data: status, attributes, count, eof and the data's
/// length (the data and its padding follow in the record).
fn read_ok_head(xid: u32, attr: fattr3, len: usize, eof: bool) -> Vec<u8> {
    let mut result = Vec::with_capacity(128);
    let attr = post_op_attr::Some(attr);
    let len = u32::try_from(len).expect("a READ is at most 1 MiB");
    (nfsstat3::NFS3_OK as u32)
        .pack(&mut result)
        .and_then(|_| attr.pack(&mut result))
        .and_then(|_| len.pack(&mut result))
        .and_then(|_| eof.pack(&mut result))
        .and_then(|_| len.pack(&mut result))
        .expect("packing into a Vec cannot fail");
    reply(xid, accept_stat_data::SUCCESS, &result)
}

fn read_failed(xid: u32, stat: nfsstat3, file_attributes: post_op_attr) -> Record {
    let res: READ3res<'static> = READ3res::Err((stat, READ3resfail { file_attributes }));
    let result = pack(&res).expect("packing into a Vec cannot fail");
    reply(xid, accept_stat_data::SUCCESS, &result).into()
}

fn pack(v: &impl Pack) -> Option<Vec<u8>> {
    let mut out = Vec::with_capacity(v.packed_size());
    v.pack(&mut out).ok()?;
    Some(out)
}
