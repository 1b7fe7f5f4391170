//! The RPC gate: the socket the kernel talks to, in front of the `nfs3_server` dispatcher.
//!
//! `nfs3_server` carries most of NFSv3 well (READ/WRITE/READDIR*/LOOKUP/COMMIT, MOUNT,
//! persistent handle generations) but cannot carry some procedures: its VFS trait has no
//! LINK or MKNOD, drops MKDIR's mode, answers FSSTAT with constants, checks CREATE GUARDED
//! and the SETATTR guard with a separate racy lookup, and answers SYSTEM_ERR past 256
//! requests in flight. The gate reads each RPC record, answers those procedures itself
//! (through the same [`Front`]), and forwards everything else, unchanged, to the dispatcher
//! on an internal loopback port.
//!
//! It is also where back-pressure lives: at most [`MAX_IN_FLIGHT`] calls per connection are
//! being worked on; past that the gate stops reading the socket, so a kernel with hundreds
//! of READs queued is slowed by TCP, never answered with an error.

use std::collections::HashMap;
use std::io::Cursor;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use nfs3_server::nfs3_types::nfs3::{
    self as n, CREATE3args, CREATE3res, CREATE3resfail, CREATE3resok, FSSTAT3args, FSSTAT3res,
    FSSTAT3resfail, FSSTAT3resok, LINK3args, LINK3res, LINK3resfail, LINK3resok, MKDIR3args,
    MKDIR3res, MKDIR3resfail, MKDIR3resok, MKNOD3args, MKNOD3res, MKNOD3resfail, Nfs3Option,
    READDIR3args, READDIR3res, READDIR3resfail, READDIR3resok, REMOVE3args, REMOVE3res,
    REMOVE3resfail, REMOVE3resok, RMDIR3args, RMDIR3res, RMDIR3resfail, RMDIR3resok, SETATTR3args,
    SETATTR3res, SETATTR3resfail, SETATTR3resok, createhow3, nfs_fh3, nfsstat3, post_op_attr,
    post_op_fh3, pre_op_attr, wcc_data,
};
use nfs3_server::nfs3_types::rpc::{
    accept_stat_data, accepted_reply, msg_body, opaque_auth, reply_body, rpc_msg,
};
use nfs3_server::nfs3_types::xdr_codec::{List, Opaque, Pack, Unpack};
use nfs3_server::nfs3_types::{mount, portmap};
use nfs3_server::vfs::{FileHandle, FileHandleU64};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc};

use super::attr::{set_attr, time_of, wcc};
use super::fs::Front;
use crate::proto::{Attr, CreateHow};

/// Calls being worked on per kernel connection (the dispatcher's own limit is 256).
pub const MAX_IN_FLIGHT: usize = 128;
/// A forwarded call unanswered this long is taken as never to be answered.
const ABANDONED_AFTER: std::time::Duration = std::time::Duration::from_secs(120);
/// Largest RPC record accepted: a 1 MiB WRITE plus headers, with room to spare.
const MAX_RECORD: usize = 4 * 1024 * 1024;

/// Procedures the gate answers itself.
const SETATTR: u32 = 2;
const CREATE: u32 = 8;
const MKDIR: u32 = 9;
const MKNOD: u32 = 11;
const REMOVE: u32 = 12;
const RMDIR: u32 = 13;
const LINK: u32 = 15;
const READDIR: u32 = 16;
const FSSTAT: u32 = 18;
/// MOUNT's MNT, answered here so that any spelling of the root (`/`, ``, `//`) and
/// subdirectory mounts resolve through the same [`Front::lookup`] path.
const MNT: u32 = 1;
/// Marks a MOUNT procedure in the `proc` slot the gate dispatches on.
const MOUNT_PROC: u32 = 0x1000;
/// Portmapper NULL and GETPORT (for clients that cannot be told a port, like qemu's
/// `nfs://` driver): NFS and MOUNT map to the gate's own port.
const PMAP_PROC: u32 = 0x2000;
const PMAP_NULL: u32 = 0;
const PMAP_GETPORT: u32 = 3;

/// Shared by every connection.
pub struct Gate {
    pub front: Arc<Front>,
    /// Handle generation (persisted in the index): first 8 bytes of every handle.
    pub generation: u64,
    /// Where the `nfs3_server` dispatcher listens (loopback, internal).
    pub upstream: SocketAddr,
    /// The port the kernel mounts, as the portmapper tells it.
    pub public_port: u16,
}

impl Gate {
    /// Accept kernel connections forever.
    pub async fn run(self: Arc<Self>, listener: TcpListener) -> std::io::Result<()> {
        loop {
            let (sock, peer) = listener.accept().await?;
            let gate = self.clone();
            tokio::spawn(async move {
                if let Err(e) = gate.connection(sock).await {
                    tracing::debug!("NFS connection from {peer} closed: {e}");
                }
            });
        }
    }

    async fn connection(self: Arc<Self>, sock: TcpStream) -> std::io::Result<()> {
        sock.set_nodelay(true)?;
        let up = TcpStream::connect(self.upstream).await?;
        up.set_nodelay(true)?;
        let (mut kernel_rx, mut kernel_tx) = sock.into_split();
        let (mut up_rx, mut up_tx) = up.into_split();
        let (reply_tx, mut reply_rx) = mpsc::channel::<Vec<u8>>(MAX_IN_FLIGHT);
        let slots = Arc::new(Semaphore::new(MAX_IN_FLIGHT));
        let forwarded: Arc<Mutex<HashMap<u32, (OwnedSemaphorePermit, Instant)>>> = Arc::default();

        // Replies (ours and the dispatcher's) to the kernel, one whole record at a time.
        let writer = tokio::spawn(async move {
            while let Some(rec) = reply_rx.recv().await {
                kernel_tx.write_all(&rec).await?;
            }
            std::io::Result::Ok(())
        });
        // Dispatcher replies: release the call's slot, pass the record on.
        let mut up_reader = {
            let reply_tx = reply_tx.clone();
            let forwarded = forwarded.clone();
            tokio::spawn(async move {
                while let Some(body) = read_record(&mut up_rx).await? {
                    if body.len() >= 4 {
                        let xid = u32::from_be_bytes([body[0], body[1], body[2], body[3]]);
                        forwarded.lock().expect("slot map").remove(&xid);
                    }
                    if reply_tx.send(frame_record(&body)).await.is_err() {
                        break;
                    }
                }
                std::io::Result::Ok(())
            })
        };

        // If the dispatcher's connection ends, its outstanding calls will never be answered:
        // close the kernel's connection too, so it reconnects and retransmits them.
        let dispatcher_gone = || std::io::Error::other("the NFS dispatcher closed its connection");
        let result = loop {
            let permit = tokio::select! {
                p = slots.clone().acquire_owned() => p.expect("never closed"),
                _ = &mut up_reader => break Err(dispatcher_gone()),
            };
            let body = tokio::select! {
                r = read_record(&mut kernel_rx) => match r {
                    Ok(Some(b)) => b,
                    Ok(None) => break Ok(()),
                    Err(e) => break Err(e),
                },
                _ = &mut up_reader => break Err(dispatcher_gone()),
            };
            match self.intercept(&body) {
                Some((xid, proc_, args_at)) => {
                    let gate = self.clone();
                    let reply_tx = reply_tx.clone();
                    tokio::spawn(async move {
                        let reply = gate.answer(xid, proc_, &body[args_at..]).await;
                        let _ = reply_tx.send(frame_record(&reply)).await;
                        drop(permit);
                    });
                }
                None => {
                    if body.len() >= 4 {
                        let xid = u32::from_be_bytes([body[0], body[1], body[2], body[3]]);
                        // A retransmission of a call still in flight holds no second slot
                        // (the dispatcher may answer it only once).
                        let mut map = forwarded.lock().expect("slot map");
                        if map.len() >= MAX_IN_FLIGHT / 2 {
                            // The dispatcher never answers a retransmission of a call it
                            // already answered: free such slots after a while.
                            map.retain(|_, (_, t)| t.elapsed() < ABANDONED_AFTER);
                        }
                        map.entry(xid).or_insert((permit, Instant::now()));
                    }
                    if let Err(e) = up_tx.write_all(&frame_record(&body)).await {
                        break Err(e);
                    }
                }
            }
        };
        let _ = up_tx.shutdown().await;
        up_reader.abort();
        drop(reply_tx);
        let _ = writer.await;
        result
    }

    /// `Some((xid, proc, offset of the arguments))` if the gate answers this call itself.
    fn intercept(&self, body: &[u8]) -> Option<(u32, u32, usize)> {
        let mut cur = Cursor::new(body);
        let (msg, _) = rpc_msg::unpack(&mut cur).ok()?;
        let msg_body::CALL(call) = msg.body else {
            return None;
        };
        tracing::trace!(
            xid = msg.xid,
            prog = call.prog,
            vers = call.vers,
            proc_ = call.proc,
            "RPC call"
        );
        if call.prog == mount::PROGRAM && call.vers == mount::VERSION && call.proc == MNT {
            return Some((msg.xid, MOUNT_PROC | MNT, cur.position() as usize));
        }
        if call.prog == portmap::PROGRAM
            && call.vers == portmap::VERSION
            && matches!(call.proc, PMAP_NULL | PMAP_GETPORT)
        {
            return Some((msg.xid, PMAP_PROC | call.proc, cur.position() as usize));
        }
        if call.prog != n::PROGRAM || call.vers != n::VERSION {
            return None;
        }
        matches!(
            call.proc,
            SETATTR | CREATE | MKDIR | MKNOD | REMOVE | RMDIR | LINK | READDIR | FSSTAT
        )
        .then_some((msg.xid, call.proc, cur.position() as usize))
    }

    fn handle_of(&self, fh: &nfs_fh3) -> Result<u64, nfsstat3> {
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

    /// Decode, carry out and encode one intercepted call; the whole reply record body.
    async fn answer(&self, xid: u32, proc_: u32, args: &[u8]) -> Vec<u8> {
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
        if used > a.count as usize {
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
                    if used + size > a.count as usize {
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
}

fn pack(v: &impl Pack) -> Option<Vec<u8>> {
    let mut out = Vec::with_capacity(v.packed_size());
    v.pack(&mut out).ok()?;
    Some(out)
}

/// An accepted reply header for `xid` followed by `result`.
fn reply(xid: u32, stat: accept_stat_data, result: &[u8]) -> Vec<u8> {
    let msg = rpc_msg {
        xid,
        body: msg_body::REPLY(reply_body::MSG_ACCEPTED(accepted_reply {
            verf: opaque_auth::default(),
            reply_data: stat,
        })),
    };
    let mut out = Vec::with_capacity(msg.packed_size() + result.len());
    msg.pack(&mut out).expect("packing into a Vec cannot fail");
    out.extend_from_slice(result);
    out
}

/// One record as a single last fragment.
fn frame_record(body: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(4 + body.len());
    out.extend_from_slice(&(0x8000_0000u32 | body.len() as u32).to_be_bytes());
    out.extend_from_slice(body);
    out
}

/// Read one RPC record (all its fragments); `None` at a clean end of stream.
async fn read_record<R: tokio::io::AsyncRead + Unpin>(
    r: &mut R,
) -> std::io::Result<Option<Vec<u8>>> {
    let mut body = Vec::new();
    loop {
        let mut mark = [0u8; 4];
        match r.read_exact(&mut mark).await {
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof && body.is_empty() => {
                return Ok(None);
            }
            Err(e) => return Err(e),
        }
        let m = u32::from_be_bytes(mark);
        let len = (m & 0x7fff_ffff) as usize;
        if body.len() + len > MAX_RECORD {
            return Err(std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                format!("RPC record larger than {MAX_RECORD} bytes"),
            ));
        }
        let start = body.len();
        body.resize(start + len, 0);
        r.read_exact(&mut body[start..]).await?;
        if m & 0x8000_0000 != 0 {
            return Ok(Some(body));
        }
    }
}
