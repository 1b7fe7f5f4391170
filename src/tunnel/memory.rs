//! An in-process store with a fault-injecting link, for deterministic fault tests.
//!
//! [`MemoryStore`] runs the real server ([`crate::server::serve`] over an [`Export`] of a
//! real directory) on in-memory pipes, so everything above the tunnel (sessions, retries,
//! settle, the watchdog, offline state, the block cache, write-back) runs exactly as in
//! production. Between the two ends sits a frame-aware relay that obeys a [`Faults`] plan:
//! "the reply to the 3rd request is lost after the store carried it out, then the link
//! drops", "the link drops before the first RENAME reaches the store", "hold this reply
//! until I say", "the store goes quiet", "the store cannot be reached". Faults are keyed
//! to requests, not to time, so a test that uses them is repeatable.
//!
//! Only reachable from code (`Remote::Memory`): no command-line form parses to it.

use std::collections::HashMap;
use std::fmt;
use std::sync::{Arc, Mutex};

use bytes::BytesMut;
use tokio::io::{AsyncWriteExt, DuplexStream};
use tokio::sync::{mpsc, oneshot, watch};

use super::{Connection, Exit};
use crate::error::{Error, Result};
use crate::frames::{read_frame, write_frame};
use crate::proto::{Frame, FrameKind, Request};
use crate::server::{self, Export};

/// Buffer of each in-memory pipe: large enough for a 4 MiB read reply in a few writes.
const PIPE: usize = 1 << 20;

/// What happens to a request a rule matches.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// The link drops before the request reaches the store: it was never carried out.
    CutBefore,
    /// The store carries the request out; its reply is lost and the link drops (the case
    /// that leaves a non-idempotent request in doubt).
    LoseReply,
    /// The reply waits until [`Faults::release`]; the link stays up.
    HoldReply,
    /// The store carries the request out, then nothing more comes back on this link, which
    /// stays open (a black-holed link, a store stuck in D state).
    Stall,
}

/// Which request a rule fires on (once).
pub enum When {
    /// The n-th request the store is sent, counted from 1 across every link.
    Nth(u64),
    /// The first request from now on that the predicate accepts.
    First(Box<dyn Fn(&Request) -> bool + Send + Sync>),
}

/// A test's action when its fault fires.
type Then = Box<dyn FnOnce() + Send>;

struct Rule {
    when: When,
    fault: Fault,
    /// Run when the fault fires, before the link drops (e.g. another client changing the
    /// store between a lost reply and the retry).
    then: Option<Then>,
}

#[derive(Default)]
struct PlanState {
    /// Requests that reached the relay, across links.
    requests: u64,
    log: Vec<Request>,
    rules: Vec<Rule>,
    fired: Vec<(u64, Fault)>,
    unreachable: bool,
    connects: u64,
}

/// The fault plan shared by a [`MemoryStore`]'s links and the test that drives them.
pub struct Faults {
    state: Mutex<PlanState>,
    /// Bumped by [`Self::release`]; held replies wait for a change.
    released: watch::Sender<u64>,
    /// Bumped by [`Self::cut_all`]; every live link drops.
    cuts: watch::Sender<u64>,
}

impl Default for Faults {
    fn default() -> Self {
        Self {
            state: Mutex::default(),
            released: watch::channel(0).0,
            cuts: watch::channel(0).0,
        }
    }
}

impl Faults {
    /// Fire `fault` on the request `when` names.
    pub fn on(&self, when: When, fault: Fault) {
        self.add(when, fault, None);
    }

    /// Fire `fault` on the first request `pred` accepts.
    pub fn on_first(&self, pred: impl Fn(&Request) -> bool + Send + Sync + 'static, fault: Fault) {
        self.add(When::First(Box::new(pred)), fault, None);
    }

    /// Like [`Self::on_first`], running `then` when the fault fires, before the link drops.
    pub fn on_first_then(
        &self,
        pred: impl Fn(&Request) -> bool + Send + Sync + 'static,
        fault: Fault,
        then: impl FnOnce() + Send + 'static,
    ) {
        self.add(When::First(Box::new(pred)), fault, Some(Box::new(then)));
    }

    fn add(&self, when: When, fault: Fault, then: Option<Then>) {
        self.lock().rules.push(Rule { when, fault, then });
    }

    /// Let every held reply through.
    pub fn release(&self) {
        self.released.send_modify(|n| *n += 1);
    }

    /// Drop every live link now.
    pub fn cut_all(&self) {
        self.cuts.send_modify(|n| *n += 1);
    }

    /// While set, new links fail to connect (the store's host is unreachable).
    pub fn set_unreachable(&self, yes: bool) {
        self.lock().unreachable = yes;
    }

    /// Requests sent to the store so far (including ones a fault cut).
    pub fn requests(&self) -> u64 {
        self.lock().requests
    }

    /// Every request sent so far, in order.
    pub fn log(&self) -> Vec<Request> {
        self.lock().log.clone()
    }

    /// The faults that fired: (request number, fault). A test checks this so it cannot
    /// pass without the fault it is about.
    pub fn fired(&self) -> Vec<(u64, Fault)> {
        self.lock().fired.clone()
    }

    /// Links opened (the first plus every reconnect).
    pub fn connects(&self) -> u64 {
        self.lock().connects
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, PlanState> {
        self.state.lock().expect("fault plan lock")
    }

    /// Count one request; the fault it triggers, if any, with its callback.
    fn judge(&self, req: &Request) -> Option<(Fault, Option<Then>)> {
        let mut st = self.lock();
        st.requests += 1;
        let n = st.requests;
        st.log.push(req.clone());
        let i = st.rules.iter().position(|r| match &r.when {
            When::Nth(k) => *k == n,
            When::First(pred) => pred(req),
        })?;
        let rule = st.rules.remove(i);
        st.fired.push((n, rule.fault));
        Some((rule.fault, rule.then))
    }
}

/// A store served in this process over in-memory pipes, through a fault plan.
#[derive(Clone)]
pub struct MemoryStore {
    pub export: Arc<Export>,
    pub faults: Arc<Faults>,
}

impl MemoryStore {
    /// Serve `dir` (a real directory) as the export.
    pub fn open(dir: &std::path::Path) -> Result<Self> {
        let export = Export::open(dir, false)
            .map_err(|e| Error::Config(format!("export {}: {e}", dir.display())))?;
        Ok(Self {
            export: Arc::new(export),
            faults: Arc::default(),
        })
    }
}

impl fmt::Debug for MemoryStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "MemoryStore({})", self.export.id())
    }
}

impl PartialEq for MemoryStore {
    fn eq(&self, other: &Self) -> bool {
        Arc::ptr_eq(&self.export, &other.export) && Arc::ptr_eq(&self.faults, &other.faults)
    }
}
impl Eq for MemoryStore {}

/// Open one link: the server on one pair of pipes, the relay between it and the client.
pub(super) fn connect(store: &MemoryStore) -> Result<Connection> {
    {
        let mut st = store.faults.lock();
        if st.unreachable {
            return Err(Error::Io(std::io::Error::new(
                std::io::ErrorKind::ConnectionRefused,
                "the store is unreachable (fault plan)",
            )));
        }
        st.connects += 1;
    }
    let (client, relay_client) = tokio::io::duplex(PIPE);
    let (relay_server, server_end) = tokio::io::duplex(PIPE);
    let (server_in, server_out) = tokio::io::split(server_end);
    tokio::spawn(server::serve(store.export.clone(), server_in, server_out));

    let (exit_tx, exit) = watch::channel(None);
    let (stop, stopped) = oneshot::channel::<()>();
    tokio::spawn(relay(
        store.faults.clone(),
        relay_client,
        relay_server,
        stopped,
        exit_tx,
    ));
    let (output, input) = tokio::io::split(client);
    Ok(Connection {
        input: Box::new(input),
        output: Box::new(output),
        exit,
        stop,
    })
}

/// Carry frames both ways until the client stops the link, a fault cuts it, or an end
/// closes; then drop both pipes, which ends the server's session and the client's reader.
async fn relay(
    faults: Arc<Faults>,
    client: DuplexStream,
    server: DuplexStream,
    mut stopped: oneshot::Receiver<()>,
    exit: watch::Sender<Option<Exit>>,
) {
    let (mut from_client, mut to_client) = tokio::io::split(client);
    let (mut from_server, mut to_server) = tokio::io::split(server);
    // Replies to send on to the client (held ones join later); the writer owns the pipe.
    let (tx, mut rx) = mpsc::unbounded_channel::<Frame>();
    let writer = async move {
        let mut head = BytesMut::new();
        while let Some(f) = rx.recv().await {
            write_frame(&mut to_client, &mut head, f.kind, f.id, &f.control, &f.data).await?;
            to_client.flush().await?;
        }
        Ok::<_, Error>(())
    };
    // Request id -> what to do with its reply.
    let on_reply: Mutex<HashMap<u64, (Fault, Then)>> = Mutex::default();
    // Once the stalling request's reply comes back, nothing more does.
    let stalled: Mutex<Option<(u64, Then)>> = Mutex::default();
    let mut quiet = false;
    let (cut_tx, mut cut_rx) = watch::channel(false);
    let cut = |why: &str| {
        exit.send_replace(Some(Exit {
            command: "memory store".into(),
            status: None,
            stderr: Vec::new(),
            reason: Some(why.into()),
        }));
        let _ = cut_tx.send(true);
    };

    let up = async {
        let mut buf = BytesMut::new();
        let mut head = BytesMut::new();
        loop {
            let Ok(Some(f)) = read_frame(&mut from_client, &mut buf).await else {
                return;
            };
            if f.kind == FrameKind::Request {
                let Ok(req) = postcard::from_bytes::<Request>(&f.control) else {
                    return;
                };
                match faults.judge(&req) {
                    Some((Fault::CutBefore, then)) => {
                        if let Some(then) = then {
                            then();
                        }
                        cut("link cut before the request (fault plan)");
                        return;
                    }
                    Some((fault, then)) => {
                        // The rest act on the reply: `then` runs once the store has
                        // carried the request out.
                        let then = then.unwrap_or_else(|| Box::new(|| {}));
                        if fault == Fault::Stall {
                            stalled.lock().expect("stalled").replace((f.id, then));
                        } else {
                            on_reply
                                .lock()
                                .expect("on reply")
                                .insert(f.id, (fault, then));
                        }
                    }
                    None => {}
                }
            }
            let sent = write_frame(&mut to_server, &mut head, f.kind, f.id, &f.control, &f.data)
                .await
                .is_ok()
                && to_server.flush().await.is_ok();
            if !sent {
                return;
            }
        }
    };
    let down = async {
        let mut buf = BytesMut::new();
        loop {
            let Ok(Some(f)) = read_frame(&mut from_server, &mut buf).await else {
                return;
            };
            if quiet {
                continue;
            }
            let stall = {
                let mut st = stalled.lock().expect("stalled");
                match st.take() {
                    Some((id, then)) if id == f.id => Some(then),
                    other => {
                        *st = other;
                        None
                    }
                }
            };
            if let Some(then) = stall {
                then();
                quiet = true;
                continue;
            }
            let planned = on_reply.lock().expect("on reply").remove(&f.id);
            match planned {
                Some((Fault::LoseReply, then)) => {
                    then();
                    cut("reply lost, then the link dropped (fault plan)");
                    return;
                }
                Some((_, then)) => {
                    then();
                    let mut released = faults.released.subscribe();
                    let tx = tx.clone();
                    tokio::spawn(async move {
                        if released.changed().await.is_ok() {
                            let _ = tx.send(f);
                        }
                    });
                    continue;
                }
                None => {}
            }
            if tx.send(f).is_err() {
                return;
            }
        }
    };
    let mut cuts = faults.cuts.subscribe();
    tokio::select! {
        _ = up => {}
        _ = down => {}
        _ = writer => {}
        _ = &mut stopped => {}
        _ = cut_rx.wait_for(|c| *c) => {}
        _ = cuts.changed() => cut("link cut (fault plan)"),
    }
    if exit.borrow().is_none() {
        exit.send_replace(Some(Exit {
            command: "memory store".into(),
            status: Some(0),
            stderr: Vec::new(),
            reason: Some("link closed".into()),
        }));
    }
}
