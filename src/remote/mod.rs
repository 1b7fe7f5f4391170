//! Client end of the tunnel: typed requests, many in flight, replies matched by id.
//!
//! One `Session` is one transport connection with a writer task and a reader task. A
//! [`RemoteStore`] owns the current session and replaces it when it dies: idempotent
//! requests are retried on the new session (with back-off, for up to `reconnect_timeout`),
//! so a restarted server proxy is a delay to the NFS client, not an error.
//!
//! A session can also hang without dying: a store thread stuck in D state, a stopped
//! process, a link that black-holes while SSH keepalives still pass. Each session has a
//! watchdog (issue 11, item 16): when requests are waiting and nothing at all has come
//! back for `request_timeout`, the session is dropped and its requests are retried on a
//! new one, as if the link had gone.
//!
//! When the store cannot be reached again for [`OFFLINE_GRACE`], the client is offline
//! (issue 16): calls fail at once with [`Error::Offline`] (the NFS front answers from its
//! cache what it can and JUKEBOX for the rest, so the kernel waits as on a hard mount)
//! while one background task keeps reconnecting. `--offline-limit` bounds how long.

mod backoff;
mod settle;
#[cfg(test)]
mod tests;
mod typed;

pub use backoff::Backoff;
pub use typed::{Changed, unexpected};

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use tokio::sync::{Semaphore, mpsc, oneshot, watch};

use crate::error::{Error, Result};
use crate::frames::{Outgoing, read_frame, write_frames};
use crate::proto::{
    FrameKind, Hello, PROTOCOL_VERSION, Reply, Request, Response, Welcome, WelcomeExt,
};
use crate::tunnel::{self, Connection, Exit, Remote};

/// Requests in flight on one session; past this, callers wait (back-pressure).
const MAX_IN_FLIGHT: usize = 256;

/// Waiters by request id, with when each was sent and whether it may legitimately take
/// long (the store hashes or scans a whole file for it).
type Pending = Arc<Mutex<Option<HashMap<u64, Waiter>>>>;

#[derive(Debug, Default)]
struct Outage {
    /// The first failed reconnect of this outage.
    down_since: Option<Instant>,
    /// Set once the outage outlasted [`OFFLINE_GRACE`]: requests fail fast.
    offline: bool,
    /// The --offline-limit warning was given for this outage.
    limit_told: bool,
}

struct Waiter {
    done: oneshot::Sender<(Reply, Bytes)>,
    sent: Instant,
    long: bool,
}

/// How long the store may keep quiet while requests wait; `Duration::ZERO` turns the
/// watchdog off. Slow links are fine: any reply counts as life.
pub const DEFAULT_REQUEST_TIMEOUT: Duration = Duration::from_secs(60);

/// First pause between retries of a request (doubling up to 2 s).
const FIRST_BACKOFF: Duration = Duration::from_millis(50);

/// How long the store may be unreachable (reconnects failing) before the client counts
/// as offline; shorter outages (a restarted server process) are retried through.
pub const OFFLINE_GRACE: Duration = Duration::from_secs(2);

/// What to do while the store is unreachable (`--offline`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum OfflinePolicy {
    /// Serve cached data and last-known attributes; everything else waits (JUKEBOX).
    #[default]
    Cached,
    /// Serve only what is fresh (attributes within --attr-timeout); everything else waits.
    Wait,
    /// No offline state: requests fail with EIO after --reconnect-timeout (as before).
    Fail,
}

/// How the store copes with outages.
#[derive(Debug, Clone, Copy)]
pub struct Timeouts {
    /// Retrying a lost store before a request fails (with `OfflinePolicy::Fail`), or
    /// before the client goes offline at the latest.
    pub reconnect: Duration,
    /// The watchdog's allowance of silence (zero: none).
    pub request: Duration,
    pub offline: OfflinePolicy,
    /// Offline longer than this, requests fail with EIO (`None`: they wait for ever).
    pub offline_limit: Option<Duration>,
}

impl Default for Timeouts {
    fn default() -> Self {
        Self {
            reconnect: Duration::from_secs(60),
            request: DEFAULT_REQUEST_TIMEOUT,
            offline: OfflinePolicy::Cached,
            offline_limit: None,
        }
    }
}

/// How many request timeouts a whole-file request (BlockSums hashing a 20 GiB image at
/// disk speed) may take.
const LONG_REQUEST_FACTOR: u32 = 10;

/// Byte counters, shared with `status` later.
#[derive(Debug, Default)]
pub struct Counters {
    pub requests: AtomicU64,
    pub bytes_sent: AtomicU64,
    pub bytes_received: AtomicU64,
    pub reconnects: AtomicU64,
    /// Requests turned away while offline (JUKEBOX), and outages so far.
    pub offline_refused: AtomicU64,
    pub outages: AtomicU64,
    /// Calls the NFS gate holds right now for clients that do not retry JUKEBOX
    /// themselves (libnfs, qemu's `nfs://` driver): they wait for the store.
    pub held: AtomicU64,
    /// Smoothed round trip of small requests in µs (0: none yet); see [`Counters::rtt_ms`].
    pub srtt_us: AtomicU64,
    /// Smallest round trip of a small request in µs (0: none yet): the link's own
    /// latency, without the queueing a busy link adds to the smoothed one.
    pub min_rtt_us: AtomicU64,
}

/// Replies up to this size time the link (larger ones time the transfer too).
const RTT_REPLY_MAX: usize = 4096;

impl Counters {
    /// Fold one small request's round trip into the estimate (RFC 6298's SRTT gain, 1/8).
    fn sample_rtt(&self, rtt: Duration) {
        let us = (rtt.as_micros() as u64).max(1);
        let _ = self
            .srtt_us
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |old| {
                Some(if old == 0 { us } else { old - old / 8 + us / 8 })
            });
        let _ = self
            .min_rtt_us
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |old| {
                (old == 0 || us < old).then_some(us)
            });
    }

    /// The smallest round trip of a small request timed so far, in ms.
    pub fn min_rtt_ms(&self) -> Option<f64> {
        let us = self.min_rtt_us.load(Ordering::Relaxed);
        (us > 0).then(|| us as f64 / 1000.0)
    }

    /// The smoothed round trip of small requests to the store, in ms, if one was timed.
    pub fn rtt_ms(&self) -> Option<f64> {
        let us = self.srtt_us.load(Ordering::Relaxed);
        (us > 0).then(|| us as f64 / 1000.0)
    }
}

/// One live transport connection.
struct Session {
    tx: mpsc::Sender<Outgoing>,
    /// `None` once the reader saw the stream end: new calls fail fast.
    pending: Pending,
    slots: Arc<Semaphore>,
    next_id: AtomicU64,
    counters: Arc<Counters>,
    /// Stops the transport (kills the server or ssh process, closes the SSH link) when the
    /// session is replaced, and with the session.
    stop: Arc<Mutex<Option<oneshot::Sender<()>>>>,
    /// The store's boot at this session's handshake ([`WelcomeExt::boot_id`]).
    boot_id: u64,
    /// When the last reply arrived (or the session opened): the watchdog's clock.
    last_reply: Arc<Mutex<Instant>>,
    /// Set by the watchdog before it wakes the waiters.
    stalled: Arc<std::sync::atomic::AtomicBool>,
}

/// The store, reached through a (re)connectable tunnel.
pub struct RemoteStore {
    remote: Remote,
    welcome: Welcome,
    session: tokio::sync::Mutex<Option<Arc<Session>>>,
    timeouts: Timeouts,
    /// Since when reconnects have been failing, and whether that made us offline.
    outage: Mutex<Outage>,
    /// This store, for the reconnecting task it starts when it goes offline.
    me: std::sync::Weak<RemoteStore>,
    pub counters: Arc<Counters>,
    /// The store's boot as of the latest handshake: part of the NFS write verifier.
    boot_id: AtomicU64,
    /// Sent when an outage that made the client offline ends: how long it lasted.
    ends: watch::Sender<Duration>,
}

impl RemoteStore {
    /// Connect and handshake once, so a wrong export or a missing server fails at start.
    pub async fn connect(remote: Remote, reconnect_timeout: Duration) -> Result<Arc<Self>> {
        let t = Timeouts {
            reconnect: reconnect_timeout,
            ..Timeouts::default()
        };
        Self::connect_with(remote, t).await
    }

    /// [`Self::connect`] with every outage setting.
    pub async fn connect_with(remote: Remote, timeouts: Timeouts) -> Result<Arc<Self>> {
        let counters = Arc::new(Counters::default());
        let (session, welcome) = Session::open(&remote, counters.clone(), timeouts.request).await?;
        Ok(Arc::new_cyclic(|me| Self {
            boot_id: AtomicU64::new(session.boot_id),
            remote,
            welcome,
            session: tokio::sync::Mutex::new(Some(Arc::new(session))),
            timeouts,
            outage: Mutex::default(),
            me: me.clone(),
            counters,
            ends: watch::channel(Duration::ZERO).0,
        }))
    }

    /// A store that cannot be reached now, known from its last handshake (kept in the
    /// cache): the client starts offline and serves its cache; a background task
    /// connects, and the session then must lead to the same export.
    pub fn offline(
        remote: Remote,
        timeouts: Timeouts,
        welcome: Welcome,
        boot_id: u64,
    ) -> Arc<Self> {
        let this = Arc::new_cyclic(|me| Self {
            boot_id: AtomicU64::new(boot_id),
            remote,
            welcome,
            session: tokio::sync::Mutex::new(None),
            timeouts,
            outage: Mutex::new(Outage {
                down_since: Some(Instant::now()),
                offline: true,
                limit_told: false,
            }),
            me: me.clone(),
            counters: Arc::default(),
            ends: watch::channel(Duration::ZERO).0,
        });
        this.counters.outages.fetch_add(1, Ordering::Relaxed);
        let reconnect = this.clone();
        tokio::spawn(async move { reconnect.reconnect_while_offline().await });
        this
    }

    /// How long the store has been unreachable, if the client is offline.
    pub fn offline_for(&self) -> Option<Duration> {
        let o = self.outage.lock().expect("outage lock");
        o.offline
            .then(|| o.down_since.map(|t| t.elapsed()))
            .flatten()
    }

    pub fn offline_policy(&self) -> OfflinePolicy {
        self.timeouts.offline
    }

    /// A call cannot go out: count the outage, and go offline past the grace. The time
    /// offline if so.
    fn note_unreachable(&self) -> Option<Duration> {
        if self.timeouts.offline == OfflinePolicy::Fail {
            return None;
        }
        let mut o = self.outage.lock().expect("outage lock");
        let since = *o.down_since.get_or_insert_with(Instant::now);
        if o.offline || since.elapsed() < OFFLINE_GRACE.min(self.timeouts.reconnect) {
            return o.offline.then(|| since.elapsed());
        }
        o.offline = true;
        drop(o);
        self.counters.outages.fetch_add(1, Ordering::Relaxed);
        tracing::warn!(
            "the store is unreachable: serving what the cache holds; requests that need the \
             store are asked to retry later (NFS JUKEBOX){}",
            match self.timeouts.offline_limit {
                Some(l) => format!(", for at most {l:?} (--offline-limit)"),
                None => String::new(),
            }
        );
        if let Some(this) = self.me.upgrade() {
            tokio::spawn(async move { this.reconnect_while_offline().await });
        }
        Some(since.elapsed())
    }

    /// Offline: one task reconnects, with back-off, until the store answers again.
    async fn reconnect_while_offline(self: Arc<Self>) {
        // Short: the kernel retries a JUKEBOX every 5 s; each reconnect is one attempt.
        let mut backoff = Backoff::new(Duration::from_millis(500), Duration::from_secs(2));
        loop {
            backoff.wait().await;
            let deadline = Instant::now() + Duration::from_secs(30);
            match self.current(deadline).await {
                Ok(_) => break,
                Err(e) => tracing::debug!("store still unreachable: {e}"),
            }
        }
        let was = std::mem::take(&mut *self.outage.lock().expect("outage lock"));
        let lasted = was.down_since.map(|t| t.elapsed()).unwrap_or_default();
        tracing::warn!(
            "the store is reachable again after {lasted:.1?}; {} requests were asked to wait \
             so far; attributes served meanwhile are checked again as they expire",
            self.counters.offline_refused.load(Ordering::Relaxed)
        );
        self.ends.send_replace(lasted);
    }

    /// Wakes when an outage that made the client offline ends, with how long it lasted.
    pub fn outage_ends(&self) -> watch::Receiver<Duration> {
        self.ends.subscribe()
    }

    /// A reconnect worked: an outage too short to go offline is over.
    fn reachable(&self) {
        let mut o = self.outage.lock().expect("outage lock");
        if !o.offline {
            o.down_since = None;
        }
    }

    /// What a request that needs the store gets after `down` offline, without counting it.
    pub fn offline_error(&self, down: Duration) -> Error {
        match self.timeouts.offline_limit {
            Some(limit) if down > limit => Error::OfflineTooLong(down),
            _ => Error::Offline(down),
        }
    }

    /// The answer to a call while offline: wait (JUKEBOX), or past --offline-limit, fail.
    fn refuse_offline(&self, down: Duration) -> Error {
        match self.timeouts.offline_limit {
            Some(limit) if down > limit => {
                let told = std::mem::replace(
                    &mut self.outage.lock().expect("outage lock").limit_told,
                    true,
                );
                if !told {
                    tracing::warn!(
                        "the store has been unreachable for {down:.0?}, longer than --offline-limit \
                     {limit:?}: requests that need it fail (EIO) until it answers again"
                    );
                }
                Error::OfflineTooLong(down)
            }
            _ => {
                self.counters
                    .offline_refused
                    .fetch_add(1, Ordering::Relaxed);
                Error::Offline(down)
            }
        }
    }

    /// What the server said about itself at the first handshake.
    pub fn welcome(&self) -> &Welcome {
        &self.welcome
    }

    /// The store machine's boot as of the latest handshake (changes when it reboots).
    pub fn boot_id(&self) -> u64 {
        self.boot_id.load(Ordering::SeqCst)
    }

    /// The live session, or a new one. Any failure here happened before the request was
    /// sent, so it comes back as [`Error::Unsent`] (safe to retry), except a different
    /// export behind the same remote, which is final.
    async fn current(&self, deadline: Instant) -> Result<Arc<Session>> {
        let mut guard = self.session.lock().await;
        if let Some(s) = guard.as_ref().filter(|s| s.alive()) {
            return Ok(s.clone());
        }
        if let Some(dead) = guard.take() {
            // Its server may still be running a request; stop it before starting another.
            dead.kill();
        }
        let open = Session::open(&self.remote, self.counters.clone(), self.timeouts.request);
        let (session, welcome) = match tokio::time::timeout_at(deadline.into(), open).await {
            Ok(Ok(sw)) => sw,
            Ok(Err(e)) if e.is_retryable() => {
                return Err(Error::Unsent(format!("cannot reconnect: {e}")));
            }
            // The store will not take us back (a refused key, a changed host key, a bad
            // configuration, a server we cannot speak to): waiting longer cannot help.
            Ok(Err(e)) => return Err(e),
            Err(_) => return Err(Error::Unsent("reconnect timed out".into())),
        };
        if welcome.export_id != self.welcome.export_id {
            return Err(Error::Protocol(format!(
                "reconnected to another export ({} instead of {})",
                welcome.export_id, self.welcome.export_id
            )));
        }
        self.counters.reconnects.fetch_add(1, Ordering::Relaxed);
        tracing::info!("reconnected to the store");
        self.reachable();
        if self.boot_id.swap(session.boot_id, Ordering::SeqCst) != session.boot_id {
            tracing::warn!(
                "the store rebooted: writes it had not synced are lost, so the NFS write \
                 verifier changes and clients resend what they have not committed"
            );
        }
        let s = Arc::new(session);
        *guard = Some(s.clone());
        Ok(s)
    }

    /// Send one request and wait for its reply, across reconnects: a request that never
    /// left is sent again; one lost in flight is sent again too, idempotent ones plainly,
    /// the others with their outcome checked (`settle.rs`), so a dropped link is a delay to
    /// the NFS client, not an error, until `reconnect_timeout`.
    pub async fn call(&self, req: Request, data: Bytes) -> Result<(Response, Bytes)> {
        if let Some(down) = self.offline_for() {
            return Err(self.refuse_offline(down));
        }
        let mut deadline = Instant::now() + self.timeouts.reconnect;
        // A request that waited out the watchdog gets its retries counted from then.
        let mut extended = false;
        let mut backoff = Backoff::new(FIRST_BACKOFF, Duration::from_secs(2));
        // Set once an attempt may have been carried out without us hearing back.
        let mut in_doubt = false;
        loop {
            let attempt = match self.current(deadline).await {
                Ok(s) => s.call(&req, data.clone()).await,
                Err(e) => Err(e),
            };
            match attempt {
                Ok((Ok(resp), bytes)) => return Ok((resp, bytes)),
                Ok((Err(status), _)) if in_doubt && !req.is_idempotent() => {
                    return self.settle(&req, status).await.map(|r| (r, Bytes::new()));
                }
                Ok((Err(status), _)) => return Err(Error::Status(status)),
                Err(Error::Stalled(why)) if !extended => {
                    extended = true;
                    in_doubt = true;
                    deadline = deadline.max(Instant::now() + self.timeouts.reconnect);
                    tracing::warn!("{why}; retrying on a new session");
                }
                Err(e) if e.is_retryable() && Instant::now() < deadline => {
                    if matches!(e, Error::Unsent(_))
                        && let Some(down) = self.note_unreachable()
                    {
                        return Err(self.refuse_offline(down));
                    }
                    in_doubt |= !matches!(e, Error::Unsent(_));
                    // Once per request, not per retry (an outage would flood the log).
                    if backoff.is_first() {
                        tracing::warn!("store unreachable ({e}); retrying");
                    } else {
                        tracing::debug!("store unreachable ({e}); retrying");
                    }
                    backoff.wait().await;
                }
                Err(Error::Unsent(why)) => {
                    if let Some(down) = self.note_unreachable() {
                        return Err(self.refuse_offline(down));
                    }
                    return Err(Error::Disconnected(format!(
                        "store unreachable for {:?}: {why}",
                        self.timeouts.reconnect
                    )));
                }
                Err(e) => return Err(e),
            }
        }
    }
}

impl Session {
    async fn open(
        remote: &Remote,
        counters: Arc<Counters>,
        request_timeout: Duration,
    ) -> Result<(Self, Welcome)> {
        let conn = tunnel::connect(remote).await?;
        let mut exit = conn.exit;
        // Held here until the handshake is done, so a failed start is not reported as
        // "closed by the client" before the store's exit status arrives.
        let mut stop = Some(conn.stop);
        let hs = Self::handshake(conn.input, conn.output, &mut stop, exit.clone(), counters);
        match hs.await.map(|(s, w)| (s.watched(request_timeout), w)) {
            Ok(sw) => Ok(sw),
            // The store's side ended before answering: its exit status and stderr say why
            // (no gridvfs-server there, a refused export, ...).
            Err(Error::Disconnected(_) | Error::Io(_)) => {
                let why = match Connection::exit_report(&mut exit, Duration::from_secs(3)).await {
                    Some(e) => e.describe(),
                    None => "the store closed the connection during the handshake".into(),
                };
                Err(Error::Disconnected(why))
            }
            Err(e) => Err(e),
        }
    }

    async fn handshake(
        input: Box<dyn tokio::io::AsyncWrite + Send + Unpin>,
        mut output: Box<dyn tokio::io::AsyncRead + Send + Unpin>,
        stop: &mut Option<oneshot::Sender<()>>,
        exit: watch::Receiver<Option<Exit>>,
        counters: Arc<Counters>,
    ) -> Result<(Self, Welcome)> {
        let (tx, rx) = mpsc::channel(MAX_IN_FLIGHT);
        tokio::spawn(write_frames(input, rx));
        let hello = Hello {
            version: PROTOCOL_VERSION,
            features: 0,
        };
        let ctl = postcard::to_stdvec(&hello).expect("Hello serializes");
        tx.send((FrameKind::Hello, 0, ctl, Bytes::new(), None))
            .await
            .map_err(|_| Error::Disconnected("server exited before the handshake".into()))?;
        let mut buf = BytesMut::with_capacity(1 << 20);
        let (welcome, ext) = match read_frame(&mut output, &mut buf).await? {
            Some(f) if f.kind == FrameKind::Welcome => (
                postcard::from_bytes::<Welcome>(&f.control)
                    .map_err(|e| Error::Protocol(format!("bad Welcome: {e}")))?,
                if f.data.is_empty() {
                    WelcomeExt::default()
                } else {
                    postcard::from_bytes::<WelcomeExt>(&f.data)
                        .map_err(|e| Error::Protocol(format!("bad Welcome data: {e}")))?
                },
            ),
            Some(f) => {
                return Err(Error::Protocol(format!(
                    "expected Welcome, got {:?}",
                    f.kind
                )));
            }
            None => {
                return Err(Error::Disconnected(
                    "the store closed the connection during the handshake".into(),
                ));
            }
        };
        // The id names a directory in the client's cache: accept exactly what servers make.
        if welcome.export_id.len() != 32
            || !welcome.export_id.bytes().all(|b| b.is_ascii_hexdigit())
        {
            return Err(Error::Protocol(format!(
                "malformed export id {:?}",
                welcome.export_id
            )));
        }
        if welcome.version != PROTOCOL_VERSION {
            return Err(Error::Protocol(format!(
                "server speaks protocol {}, this client {PROTOCOL_VERSION}",
                welcome.version
            )));
        }
        let pending: Pending = Arc::new(Mutex::new(Some(HashMap::new())));
        let reader_pending = pending.clone();
        let last_reply = Arc::new(Mutex::new(Instant::now()));
        let reader_last = last_reply.clone();
        let counters_for_calls = counters.clone();
        let mut exit_for_log = exit;
        tokio::spawn(async move {
            let why = loop {
                match read_frame(&mut output, &mut buf).await {
                    Ok(Some(f)) if f.kind == FrameKind::Reply => {
                        counters.bytes_received.fetch_add(
                            f.data.len() as u64 + f.control.len() as u64 + 17,
                            Ordering::Relaxed,
                        );
                        let reply: Reply = match postcard::from_bytes(&f.control) {
                            Ok(r) => r,
                            Err(e) => break format!("malformed reply {}: {e}", f.id),
                        };
                        *reader_last.lock().expect("last reply lock") = Instant::now();
                        let waiter = reader_pending
                            .lock()
                            .expect("pending lock")
                            .as_mut()
                            .and_then(|m| m.remove(&f.id));
                        if let Some(w) = waiter {
                            if !w.long && f.data.len() <= RTT_REPLY_MAX {
                                counters.sample_rtt(w.sent.elapsed());
                            }
                            let _ = w.done.send((reply, f.data));
                        }
                    }
                    Ok(Some(f)) => break format!("unexpected {:?} frame", f.kind),
                    Ok(None) => break "server closed the connection".to_string(),
                    Err(e) => break e.to_string(),
                }
            };
            // Dropping the senders wakes every waiter with an error, and marks the session
            // dead at once: later calls fail as unsent, never as lost in flight.
            reader_pending.lock().expect("pending lock").take();
            let how = Connection::exit_report(&mut exit_for_log, Duration::from_millis(500))
                .await
                .map(|e| format!(" ({})", e.describe()))
                .unwrap_or_default();
            tracing::warn!("tunnel closed: {why}{how}");
        });
        let session = Self {
            counters: counters_for_calls,
            tx,
            pending,
            slots: Arc::new(Semaphore::new(MAX_IN_FLIGHT)),
            next_id: AtomicU64::new(1),
            stop: Arc::new(Mutex::new(stop.take())),
            boot_id: ext.boot_id,
            last_reply,
            stalled: Arc::default(),
        };
        Ok((session, welcome))
    }

    /// Start the watchdog: past `timeout` with requests waiting and no reply at all,
    /// every waiter is woken with [`Error::Stalled`] and the transport is stopped. Requests
    /// the store may take long over (`long`) get [`LONG_REQUEST_FACTOR`] times as long
    /// before they count on their own (if the store is stuck, the short requests next to
    /// them show it sooner).
    fn watched(self, timeout: Duration) -> Self {
        if timeout.is_zero() {
            return self;
        }
        let (pending, last, stop, stalled) = (
            Arc::downgrade(&self.pending),
            self.last_reply.clone(),
            self.stop.clone(),
            self.stalled.clone(),
        );
        let tick = (timeout / 4).clamp(Duration::from_millis(100), Duration::from_secs(5));
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(tick).await;
                let Some(pending) = pending.upgrade() else {
                    return;
                };
                let mut guard = pending.lock().expect("pending lock");
                let Some(map) = guard.as_ref() else { return };
                let quiet = last.lock().expect("last reply lock").elapsed();
                let overdue = map.values().any(|w| {
                    w.sent.elapsed()
                        >= if w.long {
                            timeout * LONG_REQUEST_FACTOR
                        } else {
                            timeout
                        }
                });
                if !overdue || quiet < timeout {
                    continue;
                }
                let oldest = map
                    .values()
                    .map(|w| w.sent.elapsed())
                    .max()
                    .unwrap_or_default();
                let waiting = map.len();
                stalled.store(true, Ordering::Relaxed);
                let map = guard.take().expect("checked above");
                drop(guard);
                let why = format!(
                    "the store has not answered for {:.0?} with {waiting} requests waiting (the \
                     oldest for {:.0?}): dropping the session",
                    quiet, oldest
                );
                tracing::warn!("{why}");
                for (_, w) in map {
                    drop(w.done); // each waiter sees the channel closed
                }
                if let Some(s) = stop.lock().expect("stop lock").take() {
                    let _ = s.send(());
                }
                return;
            }
        });
        self
    }

    fn kill(&self) {
        if let Some(stop) = self.stop.lock().expect("stop lock").take() {
            let _ = stop.send(());
        }
    }

    fn alive(&self) -> bool {
        self.pending.lock().expect("pending lock").is_some() && !self.tx.is_closed()
    }

    async fn call(&self, req: &Request, data: Bytes) -> Result<(Reply, Bytes)> {
        let _slot = self.slots.acquire().await.expect("never closed");
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let (done_tx, done_rx) = oneshot::channel();
        // The store hashes (BlockSums) or scans (SaveProfile) a whole file for these.
        let long = matches!(req, Request::BlockSums { .. } | Request::SaveProfile { .. });
        match self.pending.lock().expect("pending lock").as_mut() {
            Some(m) => {
                m.insert(
                    id,
                    Waiter {
                        done: done_tx,
                        sent: Instant::now(),
                        long,
                    },
                );
            }
            None => return Err(Error::Unsent("tunnel closed".into())),
        }
        let ctl = postcard::to_stdvec(req).expect("Request serializes");
        self.counters.requests.fetch_add(1, Ordering::Relaxed);
        self.counters
            .bytes_sent
            .fetch_add((ctl.len() + data.len() + 17) as u64, Ordering::Relaxed);
        if self
            .tx
            .send((FrameKind::Request, id, ctl, data, None))
            .await
            .is_err()
        {
            return Err(Error::Unsent("tunnel writer stopped".into()));
        }
        let stalled = self.stalled.clone();
        done_rx.await.map_err(|_| {
            if stalled.load(Ordering::Relaxed) {
                Error::Stalled("the store stopped answering with the request in flight".into())
            } else {
                Error::Disconnected("tunnel closed with the request in flight".into())
            }
        })
    }
}
