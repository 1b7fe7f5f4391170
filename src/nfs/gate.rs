//! The RPC gate: the socket the kernel talks to, in front of the `nfs3_server` dispatcher.
//!
//! Every record from a kernel connection passes here first. The gate
//! - admits the connection only from a client its [`AccessPolicy`] names (loopback by
//!   default) and refuses each call whose source port or credential the policy refuses
//!   (an RPC `AUTH_ERROR`, never a silent pass);
//! - checks, from the object's attributes, that the caller may do what the call does
//!   (READ needs read permission, LOOKUP search, CREATE write + search on the directory,
//!   ...), answering ACCES/PERM/ROFS itself otherwise;
//! - answers some procedures itself ([`super::procs`]) and forwards the rest, unchanged,
//!   to the dispatcher over an in-process pipe: no TCP port reaches the dispatcher, so
//!   nothing skips these checks (or the record-size cap, which the dispatcher lacks).
//!
//! A caller that cannot retry NFS3ERR_JUKEBOX itself (libnfs, hence qemu's `nfs://`
//! driver: see [`Caller::retries_jukebox`]) never sees one: the gate tries its call again
//! every [`HOLD_RETRY`] until the answer is something else (the link is back, or
//! `--offline-limit` turned the wait into EIO), holding the call's slot meanwhile.
//!
//! It is also where back-pressure lives: at most [`MAX_CALLS_PER_CONNECTION`] calls per
//! connection are being worked on; past that the gate stops reading the socket, so a
//! kernel with hundreds of READs queued is slowed by TCP, never answered with an error.

use std::collections::HashMap;
use std::io::Cursor;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use nfs3_server::nfs3_types::nfs3::{self as n, diropargs3, nfs_fh3, nfsstat3, sattr3};
use nfs3_server::nfs3_types::rpc::{auth_stat, msg_body, rpc_msg};
use nfs3_server::nfs3_types::xdr_codec::Unpack;
use nfs3_server::nfs3_types::{mount, portmap};
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc};

use crate::remote::Counters;

use super::access::{AccessPolicy, Caller, Denied, Want, permits, setattr_allowed};
use super::attr::set_attr;
use super::procs::{
    MNT, MOUNT_PROC, PMAP_GETPORT, PMAP_NULL, PMAP_PROC, Procedures, answered_here, nfsproc::*,
};
use super::record::{
    Record, auth_error, frame_record, is_call, nfs_error, nfs_status, read_record, xid_of,
};
use super::replay::{self, ReplayCache, Seen};

/// Non-idempotent calls whose replies the duplicate-request cache keeps: those the gate
/// answers and the two it forwards (RENAME, SYMLINK; their replies are kept as the
/// dispatcher's answer passes back).
fn kept_for_replay(proc_: u32) -> bool {
    matches!(
        proc_,
        SETATTR | CREATE | MKDIR | MKNOD | REMOVE | RMDIR | LINK | RENAME | SYMLINK
    )
}

/// How often a held call is tried again (a kernel retries a JUKEBOX after 5 s; a held
/// caller should see the link's return sooner).
pub const HOLD_RETRY: Duration = Duration::from_secs(1);
const JUKEBOX: u32 = nfsstat3::NFS3ERR_JUKEBOX as u32;

/// Calls being worked on per kernel connection (the dispatcher's own limit is 256).
pub const MAX_CALLS_PER_CONNECTION: usize = 128;
/// A forwarded call unanswered this long is taken as never to be answered.
const ABANDONED_AFTER: Duration = Duration::from_secs(120);
/// Pause after a failed accept (EMFILE, ENFILE, ENOBUFS ...) before trying again: the
/// listener must outlive a burst of connections, not die of it.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);
/// Kernel connections served at once (issue 11, item 15): past it a new one is closed at
/// once, so a local process opening connections in a loop cannot exhaust the client's
/// file descriptors and memory. A VM host's kernel uses a handful.
pub const MAX_CONNECTIONS: usize = 1024;
/// A connection that sends no call for this long is closed, as knfsd closes idle
/// connections after 6 minutes (the kernel reconnects on its next call). Also bounds a
/// peer that sends part of a record and stops. `$GRIDVFS_NFS_IDLE_SECS` overrides it
/// (the tests shorten it; not a tuning knob).
fn idle_timeout() -> Duration {
    static IDLE: std::sync::OnceLock<Duration> = std::sync::OnceLock::new();
    *IDLE.get_or_init(|| {
        std::env::var("GRIDVFS_NFS_IDLE_SECS")
            .ok()
            .and_then(|s| s.parse::<f64>().ok())
            .filter(|s| *s > 0.0)
            .map_or(Duration::from_secs(360), Duration::from_secs_f64)
    })
}

/// Opens in-process connections to the `nfs3_server` dispatcher.
pub trait Dispatcher: Send + Sync {
    /// A new connection for a kernel connection from `peer` (the address is for logs).
    fn connect(&self, peer: SocketAddr) -> tokio::io::DuplexStream;
}

/// Shared by every connection.
pub struct Gate {
    pub procs: Procedures,
    pub policy: AccessPolicy,
    pub dispatcher: Box<dyn Dispatcher>,
    /// Replies of the non-idempotent calls answered here, for retransmissions.
    pub replay: ReplayCache,
}

/// What to do with one record from the kernel.
pub(crate) enum Route {
    /// Not a call (or no xid to answer to): dropped.
    Drop,
    /// Refused at once with this reply body.
    Refuse(Vec<u8>),
    /// An NFS or MOUNT call to check, then answer here or forward.
    Call {
        xid: u32,
        proc_: u32,
        args_at: usize,
        caller: Caller,
    },
    /// Passed on as it is: NFS/MOUNT NULL, MOUNT's other procedures, other programs
    /// (which the dispatcher refuses). None of them reaches a file.
    Forward,
}

/// Calls forwarded and not answered yet, by xid: the slot each holds, since when, and its
/// key in the duplicate-request cache if its reply is kept there.
type Forwarded = Arc<Mutex<HashMap<u32, ForwardedCall>>>;

struct ForwardedCall {
    _slot: OwnedSemaphorePermit,
    since: Instant,
    replay: Option<replay::Key>,
    /// The call itself, to send again while the dispatcher answers JUKEBOX, for a caller
    /// that does not retry it; counted while it is held.
    hold: Option<Bytes>,
    held: Option<Held>,
}

/// A call's answer, as far as the gate gives it.
enum Answer {
    /// A reply the duplicate-request cache may keep.
    Reply(Vec<u8>),
    /// READ's reply, in parts.
    Read(Record),
    /// For the dispatcher.
    Forward,
}

impl Answer {
    fn is_jukebox(&self) -> bool {
        match self {
            Answer::Reply(r) => nfs_status(r) == Some(JUKEBOX),
            Answer::Read(r) => r.nfs_status() == Some(JUKEBOX),
            Answer::Forward => false,
        }
    }
}

/// Counts a held call in the status (`held`) while it waits.
struct Held(Arc<Counters>);

impl Held {
    fn new(c: &Arc<Counters>) -> Self {
        c.held.fetch_add(1, Ordering::Relaxed);
        Self(c.clone())
    }
}

impl Drop for Held {
    fn drop(&mut self) {
        self.0.held.fetch_sub(1, Ordering::Relaxed);
    }
}

impl Gate {
    /// Accept kernel connections forever; a failed accept is logged and retried.
    pub async fn run(self: Arc<Self>, listener: TcpListener) -> std::io::Result<()> {
        let open = Arc::new(Semaphore::new(MAX_CONNECTIONS));
        let mut told: Option<Instant> = None;
        loop {
            let (sock, peer) = match listener.accept().await {
                Ok(c) => c,
                Err(e) => {
                    tracing::warn!("NFS accept failed (retrying): {e}");
                    tokio::time::sleep(ACCEPT_BACKOFF).await;
                    continue;
                }
            };
            let Ok(slot) = open.clone().try_acquire_owned() else {
                if told.is_none_or(|t| t.elapsed() > Duration::from_secs(10)) {
                    told = Some(Instant::now());
                    tracing::warn!(
                        "NFS connection from {peer} closed: {MAX_CONNECTIONS} connections are \
                         open already"
                    );
                }
                drop(sock);
                continue;
            };
            let gate = self.clone();
            tokio::spawn(async move {
                if let Err(e) = gate.connection(sock, peer).await {
                    tracing::debug!("NFS connection from {peer} closed: {e}");
                }
                drop(slot);
            });
        }
    }

    async fn connection(self: Arc<Self>, sock: TcpStream, peer: SocketAddr) -> std::io::Result<()> {
        let Some(client_ro) = self.policy.client(peer.ip()) else {
            tracing::warn!(
                "NFS connection from {peer} refused: not a client named by --allow-clients"
            );
            return refuse_connection(sock).await;
        };
        sock.set_nodelay(true)?;
        let up = self.dispatcher.connect(peer);
        let (mut kernel_rx, mut kernel_tx) = sock.into_split();
        let (mut up_rx, mut up_tx) = tokio::io::split(up);
        let (reply_tx, mut reply_rx) = mpsc::channel::<Record>(MAX_CALLS_PER_CONNECTION);
        let (fwd_tx, mut fwd_rx) = mpsc::channel::<Record>(MAX_CALLS_PER_CONNECTION);
        let slots = Arc::new(Semaphore::new(MAX_CALLS_PER_CONNECTION));
        let forwarded: Forwarded = Arc::default();
        // Set when the kernel's connection is over: held calls stop waiting.
        let ended = Arc::new(AtomicBool::new(false));

        // Replies (ours and the dispatcher's) to the kernel, one whole record at a time.
        let writer = tokio::spawn(async move {
            while let Some(rec) = reply_rx.recv().await {
                rec.write_to(&mut kernel_tx).await?;
            }
            std::io::Result::Ok(())
        });
        // Checked calls to the dispatcher, in the order their checks finish.
        let up_writer = tokio::spawn(async move {
            while let Some(rec) = fwd_rx.recv().await {
                rec.write_to(&mut up_tx).await?;
            }
            up_tx.shutdown().await
        });
        // Dispatcher replies: release the call's slot, pass the record on.
        let mut up_reader = {
            let reply_tx = reply_tx.clone();
            let forwarded = forwarded.clone();
            let gate = self.clone();
            let (again_tx, ended) = (fwd_tx.downgrade(), ended.clone());
            tokio::spawn(async move {
                while let Some(body) = read_record(&mut up_rx).await? {
                    let xid = xid_of(&body);
                    let call = xid.and_then(|x| forwarded.lock().expect("slot map").remove(&x));
                    if let (Some(xid), Some(mut call)) = (xid, call) {
                        if let Some(again) = call.hold.clone()
                            && nfs_status(&body) == Some(JUKEBOX)
                            && !ended.load(Ordering::Relaxed)
                        {
                            // Held: the same call again in a while, on the same slot.
                            call.since = Instant::now();
                            if call.held.is_none() {
                                tracing::debug!(xid, "held until the store answers");
                                call.held = Some(Held::new(&gate.procs.front.store.counters));
                            }
                            forwarded.lock().expect("slot map").insert(xid, call);
                            let again_tx = again_tx.clone();
                            tokio::spawn(async move {
                                tokio::time::sleep(HOLD_RETRY).await;
                                if let Some(tx) = again_tx.upgrade() {
                                    let _ = tx.send(Record::new(again, Bytes::new())).await;
                                }
                            });
                            continue;
                        }
                        if let Some(key) = call.replay {
                            gate.replay.finish(key, &body);
                        }
                    }
                    if reply_tx.send(Record::from(body)).await.is_err() {
                        break;
                    }
                }
                std::io::Result::Ok(())
            })
        };

        // If the dispatcher's connection ends, its outstanding calls will never be answered:
        // close the kernel's connection too, so it reconnects and retransmits them.
        let dispatcher_gone = || std::io::Error::other("the NFS dispatcher closed its connection");
        let mut warned = false;
        let result = loop {
            let permit = tokio::select! {
                p = slots.clone().acquire_owned() => p.expect("never closed"),
                _ = &mut up_reader => break Err(dispatcher_gone()),
            };
            let body = tokio::select! {
                r = tokio::time::timeout(idle_timeout(), read_record(&mut kernel_rx)) => match r {
                    Ok(Ok(Some(b))) => b,
                    Ok(Ok(None)) => break Ok(()),
                    Ok(Err(e)) => break Err(e),
                    Err(_) => {
                        tracing::debug!("NFS connection from {peer} idle for {:?}: closed", idle_timeout());
                        break Ok(());
                    }
                },
                _ = &mut up_reader => break Err(dispatcher_gone()),
            };
            match route(&self.policy, &body, peer, client_ro, &mut warned) {
                Route::Drop => {}
                Route::Refuse(rec) => {
                    let _ = reply_tx.send(Record::from(rec)).await;
                }
                Route::Forward => {
                    if let Some(xid) = xid_of(&body) {
                        hold_slot(&self.replay, &forwarded, xid, permit, None, None);
                    }
                    if fwd_tx.send(Record::from(body)).await.is_err() {
                        break Err(dispatcher_gone());
                    }
                }
                Route::Call {
                    xid,
                    proc_,
                    args_at,
                    caller,
                } => {
                    let gate = self.clone();
                    let (reply_tx, fwd_tx, forwarded, ended) = (
                        reply_tx.clone(),
                        fwd_tx.clone(),
                        forwarded.clone(),
                        ended.clone(),
                    );
                    tokio::spawn(async move {
                        let args = &body[args_at..];
                        // A retransmission of a change answered here is not made twice.
                        let replay_key = kept_for_replay(proc_)
                            .then(|| replay::Key::new(peer.ip(), xid, proc_, args));
                        if let Some(key) = replay_key {
                            match gate.replay.begin(key) {
                                Seen::New => {}
                                Seen::InProgress => return,
                                Seen::Replay(reply) => {
                                    tracing::debug!(xid, proc_, "retransmission answered again");
                                    let _ = reply_tx.send(Record::from(reply)).await;
                                    return;
                                }
                            }
                        }
                        // Only NFS results start with an nfsstat3 (a portmapper's
                        // reply may be the number 10008).
                        let holds =
                            !caller.retries_jukebox && proc_ & (MOUNT_PROC | PMAP_PROC) == 0;
                        let mut held = None;
                        let answer = loop {
                            let answer = gate.answer(xid, proc_, args, &caller).await;
                            if !holds || !answer.is_jukebox() || ended.load(Ordering::Relaxed) {
                                break answer;
                            }
                            if held.is_none() {
                                tracing::debug!(xid, proc_, "held until the store answers");
                                held = Some(Held::new(&gate.procs.front.store.counters));
                            }
                            tokio::time::sleep(HOLD_RETRY).await;
                        };
                        drop(held);
                        match answer {
                            Answer::Reply(reply) => {
                                if let Some(key) = replay_key {
                                    gate.replay.finish(key, &reply);
                                }
                                let _ = reply_tx.send(Record::from(reply)).await;
                            }
                            Answer::Read(rec) => {
                                let _ = reply_tx.send(rec).await;
                            }
                            Answer::Forward => {
                                let body = Bytes::from(body);
                                // The dispatcher drops a resent xid of a completed
                                // RENAME/SYMLINK as a retransmission: those are not held
                                // (their JUKEBOX reaches the caller).
                                let resendable = !matches!(proc_, RENAME | SYMLINK);
                                let hold = (holds && resendable).then(|| body.clone());
                                let rec = Record::new(body, Bytes::new());
                                hold_slot(&gate.replay, &forwarded, xid, permit, replay_key, hold);
                                let _ = fwd_tx.send(rec).await;
                                return;
                            }
                        }
                        drop(permit);
                    });
                }
            }
        };
        ended.store(true, Ordering::Relaxed);
        drop(fwd_tx);
        let _ = up_writer.await;
        up_reader.abort();
        // Calls the dispatcher never answered on this connection may or may not have been
        // carried out: their retransmissions are carried out (again), not dropped.
        for (_, call) in forwarded.lock().expect("slot map").drain() {
            if let Some(key) = call.replay {
                self.replay.abandon(key);
            }
        }
        drop(reply_tx);
        let _ = writer.await;
        result
    }

    /// One try at answering a call: refused by the checks, answered here, or forwarded.
    async fn answer(&self, xid: u32, proc_: u32, args: &[u8], caller: &Caller) -> Answer {
        let special = proc_ & (MOUNT_PROC | PMAP_PROC) != 0;
        let checked = if caller.unchecked || special {
            Ok(())
        } else {
            self.check(proc_, args, caller).await
        };
        if let Err(status) = checked {
            tracing::debug!(xid, proc_, uid = caller.uid, ?status, "refused");
            Answer::Reply(nfs_error(xid, proc_, status as u32))
        } else if proc_ == READ {
            Answer::Read(self.procs.read(xid, args).await)
        } else if special || answered_here(proc_) {
            Answer::Reply(self.procs.answer(xid, proc_, args, caller).await)
        } else {
            Answer::Forward
        }
    }

    /// Whether `caller` may make NFS call `proc_` with these arguments. Arguments that do
    /// not decode pass: whoever handles the call answers GARBAGE_ARGS, touching nothing.
    async fn check(&self, proc_: u32, args: &[u8], caller: &Caller) -> Result<(), nfsstat3> {
        let changes = matches!(
            proc_,
            SETATTR
                | WRITE
                | CREATE
                | MKDIR
                | SYMLINK
                | MKNOD
                | REMOVE
                | RMDIR
                | RENAME
                | LINK
                | COMMIT
        );
        if changes && caller.read_only {
            return Err(nfsstat3::NFS3ERR_ROFS);
        }
        let mut cur = Cursor::new(args);
        let Ok((fh, _)) = nfs_fh3::unpack(&mut cur) else {
            return Ok(());
        };
        let want = match proc_ {
            LOOKUP => Want::SEARCH,
            READ => Want::READ_DATA,
            WRITE | COMMIT => Want::WRITE_DATA,
            CREATE | MKDIR | SYMLINK | MKNOD | REMOVE | RMDIR | RENAME => Want::CHANGE_DIR,
            READDIR | READDIRPLUS => Want::LIST,
            LINK => {
                // The file first, then where the new name goes: only that directory changes.
                let Ok((to, _)) = diropargs3::unpack(&mut cur) else {
                    return Ok(());
                };
                return self.require(&to.dir, Want::CHANGE_DIR, caller).await;
            }
            SETATTR => {
                let Ok((set, _)) = sattr3::unpack(&mut cur) else {
                    return Ok(());
                };
                let id = self.procs.handle_of(&fh)?;
                let attr = self.procs.front.attr_of(id).await?;
                return setattr_allowed(caller, &attr, &set_attr(&set)).map_err(|d| match d {
                    Denied::Perm => nfsstat3::NFS3ERR_PERM,
                    Denied::Access => nfsstat3::NFS3ERR_ACCES,
                });
            }
            // GETATTR, ACCESS (answered from the mode), READLINK, FSSTAT, FSINFO, PATHCONF.
            _ => return Ok(()),
        };
        self.require(&fh, want, caller).await?;
        if proc_ == RENAME {
            // from = (dir, name): skip the name, then the target directory.
            let Ok(_) = n::filename3::unpack(&mut cur) else {
                return Ok(());
            };
            let Ok((to, _)) = nfs_fh3::unpack(&mut cur) else {
                return Ok(());
            };
            self.require(&to, Want::CHANGE_DIR, caller).await?;
        }
        Ok(())
    }

    async fn require(&self, fh: &nfs_fh3, want: Want, caller: &Caller) -> Result<(), nfsstat3> {
        let id = self.procs.handle_of(fh)?;
        let attr = self.procs.front.attr_of(id).await?;
        if permits(caller, &attr, want) {
            Ok(())
        } else {
            Err(nfsstat3::NFS3ERR_ACCES)
        }
    }
}

/// Decide what happens to one record: the policy's connection and credential checks.
pub(crate) fn route(
    policy: &AccessPolicy,
    body: &[u8],
    peer: SocketAddr,
    client_ro: bool,
    warned: &mut bool,
) -> Route {
    let mut cur = Cursor::new(body);
    let Ok((msg, _)) = rpc_msg::unpack(&mut cur) else {
        // A call whose header does not decode (an unknown credential flavor among
        // them) is never passed on.
        return match xid_of(body) {
            Some(xid) if is_call(body) => Route::Refuse(auth_error(xid, auth_stat::AUTH_BADCRED)),
            _ => Route::Drop,
        };
    };
    let msg_body::CALL(call) = msg.body else {
        return Route::Drop;
    };
    let (xid, args_at) = (msg.xid, cur.position() as usize);
    tracing::trace!(
        xid,
        prog = call.prog,
        vers = call.vers,
        proc_ = call.proc,
        "RPC call"
    );
    if call.prog == portmap::PROGRAM && call.vers == portmap::VERSION {
        // Port numbers only: answered to anyone allowed to connect.
        return match call.proc {
            PMAP_NULL | PMAP_GETPORT => Route::Call {
                xid,
                proc_: PMAP_PROC | call.proc,
                args_at,
                caller: Caller::anonymous(),
            },
            _ => Route::Forward,
        };
    }
    let ours = call.prog == mount::PROGRAM || call.prog == n::PROGRAM;
    if !ours || call.proc == NULL {
        return Route::Forward;
    }
    let caller = match policy.caller(peer, &call.cred, client_ro) {
        Ok(c) => c,
        Err(refusal) => {
            let why = if policy.require_privileged_port && peer.port() >= 1024 {
                "unprivileged source port (pass --allow-unprivileged-ports to accept)"
            } else {
                "credential refused (AUTH_SYS required; uid not on --allow-uid?)"
            };
            if !std::mem::replace(warned, true) {
                tracing::warn!("NFS calls from {peer} refused: {why}");
            } else {
                tracing::debug!(xid, "NFS call from {peer} refused: {why}");
            }
            return Route::Refuse(auth_error(xid, refusal.auth_stat()));
        }
    };
    if call.prog == mount::PROGRAM {
        return if call.vers == mount::VERSION && call.proc == MNT {
            Route::Call {
                xid,
                proc_: MOUNT_PROC | MNT,
                args_at,
                caller,
            }
        } else {
            Route::Forward
        };
    }
    if call.vers != n::VERSION {
        return Route::Forward;
    }
    Route::Call {
        xid,
        proc_: call.proc,
        args_at,
        caller,
    }
}

/// A peer the policy does not name: its first call gets an RPC AUTH_ERROR (so the client
/// reports a refusal, not a reset), then the connection is closed.
async fn refuse_connection(mut sock: TcpStream) -> std::io::Result<()> {
    const WAIT: Duration = Duration::from_secs(5);
    if let Ok(Ok(Some(body))) = tokio::time::timeout(WAIT, read_record(&mut sock)).await
        && let Some(xid) = xid_of(&body)
        && is_call(&body)
    {
        let rec = frame_record(&auth_error(xid, auth_stat::AUTH_TOOWEAK));
        let _ = tokio::time::timeout(WAIT, sock.write_all(&rec)).await;
    }
    let _ = sock.shutdown().await;
    Ok(())
}

/// A forwarded call holds its slot until the dispatcher answers. A retransmission of a
/// call still in flight holds no second slot (the dispatcher may answer it only once).
fn hold_slot(
    replay: &ReplayCache,
    forwarded: &Forwarded,
    xid: u32,
    permit: OwnedSemaphorePermit,
    key: Option<replay::Key>,
    hold: Option<Bytes>,
) {
    let mut map = forwarded.lock().expect("slot map");
    if map.len() >= MAX_CALLS_PER_CONNECTION / 2 {
        // The dispatcher never answers a retransmission of a call it already answered:
        // free such slots after a while.
        map.retain(|_, c| {
            let keep = c.since.elapsed() < ABANDONED_AFTER;
            if let (false, Some(k)) = (keep, c.replay) {
                replay.abandon(k);
            }
            keep
        });
    }
    map.entry(xid).or_insert(ForwardedCall {
        _slot: permit,
        since: Instant::now(),
        replay: key,
        hold,
        held: None,
    });
}
