//! The site's side of the tier (`serve --site-listen ADDR`): a gridvfs client of the store
//! that also answers `GET /gridvfs/v1/block/ID` with the sealed block, as an immutable HTTP
//! object any standard cache (Squid, nginx, Varnish) may keep and share.
//!
//! The store stays SSH-only: the site reads through its own session and block cache (packed
//! fetches, single flight per block, read-ahead), like any client. It needs no manifest
//! and keeps no secret: the [`Locator`] header says where the block is; the site asks the
//! store for that file's manifest (its block sums, as hosts do), answers only if the sum
//! there gives the requested id — before reading anything — and only if the block it then
//! reads still has that sum. So a host can never make a cache hold wrong content under an
//! id, and one who does not know a block's sum can neither have it served nor make the
//! site fetch it; every such refusal is the same 404.

use std::collections::HashMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::{Method, Request, Response, StatusCode};
use tokio::net::TcpListener;

use super::fetch::{BLOCK_PATH, LOCATOR_HEADER, Locator};
use super::seal;
use crate::cache::{DataPath, Index};
use crate::error::Error;
use crate::proto::{Attr, FileRef, HintSource};
use crate::remote::RemoteStore;

/// Largest block a host may ask for (the cache's largest block size).
const MAX_BLOCK: u64 = 4 << 20;
/// A file's attributes and manifest are reused this long between requests, so block
/// requests cost no store round trip (and a busy site sends no herd of them each time one
/// expires). Staleness is harmless: a block is served only if it still has the manifest's
/// sum, and an id the manifest does not know makes a manifest older than [`FRESH`] be
/// asked for again at once.
const ATTR_TTL: Duration = Duration::from_secs(30);
const FRESH: Duration = Duration::from_secs(1);
/// What caches may keep a block for: a year, and `immutable` (an id names one content).
const CACHE_FOREVER: &str = "public, max-age=31536000, immutable";
/// Connections served at once; more wait in the listen backlog.
const MAX_CONNECTIONS: usize = 4096;
/// A connection that has not sent a whole request header in this long is closed.
const HEADER_TIMEOUT: Duration = Duration::from_secs(30);
/// Every refusal about a block looks the same: which files exist, how large they are and
/// which blocks they hold is not told to someone who does not know the sums.
const NO_SUCH_BLOCK: &str = "no such block\n";

/// What the site has served (for `status` and metrics).
#[derive(Debug, Default)]
pub struct SiteStats {
    /// Block requests answered with a block.
    pub blocks: AtomicU64,
    /// Sealed bytes sent for them.
    pub bytes: AtomicU64,
    /// Requests refused: malformed, unknown file, or an id the block there does not have.
    pub refused: AtomicU64,
}

/// A file as the site last asked the store about it.
#[derive(Clone)]
struct Known {
    attr: Attr,
    at: Instant,
    /// The file's block sums at the asked block size (only hinted files have them).
    sums: Option<Arc<Vec<seal::Sum>>>,
}

/// The block service of a site.
pub struct Site {
    data: Arc<DataPath>,
    index: Arc<Index>,
    store: Arc<RemoteStore>,
    /// (path, block size) -> what the store said.
    known: Mutex<HashMap<(Vec<u8>, u64), Known>>,
    /// This site's URL as hosts reach it (`--site-url`), given in every block's answer.
    url: Option<String>,
    pub stats: SiteStats,
}

/// Why a request was not answered with a block.
enum Refusal {
    /// Nothing here for you (one answer for every reason: see [`NO_SUCH_BLOCK`]).
    NoSuchBlock,
    /// The request itself is malformed.
    Bad(String),
    /// The store cannot be asked right now.
    Unavailable(String),
}

impl Site {
    /// `url`: where hosts reach this site directly, told to them in every answer (through
    /// the caches too) so they can come here when their cache dies.
    pub fn new(
        data: Arc<DataPath>,
        index: Arc<Index>,
        store: Arc<RemoteStore>,
        url: Option<String>,
    ) -> Self {
        Self {
            data,
            index,
            store,
            known: Mutex::new(HashMap::new()),
            url,
            stats: SiteStats::default(),
        }
    }

    /// The file's attributes and, for a hinted file at this block size, its sums: the
    /// same manifest hosts get, asked of the store before anything is read.
    async fn known(&self, path: &[u8], bs: u64) -> Result<Known, Refusal> {
        let key = (path.to_vec(), bs);
        let old = self.known.lock().expect("known lock").get(&key).cloned();
        if let Some(k) = &old
            && k.at.elapsed() < ATTR_TTL
        {
            return Ok(k.clone());
        }
        let file = FileRef {
            path: path.to_vec(),
            ident: None,
        };
        let (attr, hint) = self.store.hint(file.clone()).await.map_err(refusal)?;
        let v = crate::cache::validator(&attr);
        let sums = match old {
            Some(k) if crate::cache::validator(&k.attr) == v => k.sums,
            _ if hint.source == HintSource::File && u64::from(hint.block_size) == bs => {
                let (now, sums) = self
                    .store
                    .block_sums(file, bs as u32)
                    .await
                    .map_err(refusal)?;
                (crate::cache::validator(&now) == v && sums.len() as u64 == attr.size.div_ceil(bs))
                    .then(|| Arc::new(sums))
            }
            _ => None,
        };
        let k = Known {
            attr,
            at: Instant::now(),
            sums,
        };
        let mut known = self.known.lock().expect("known lock");
        if known.len() > 4096 {
            known.clear();
        }
        known.insert(key, k.clone());
        Ok(k)
    }

    fn forget(&self, path: &[u8], bs: u64) {
        self.known
            .lock()
            .expect("known lock")
            .remove(&(path.to_vec(), bs));
    }

    /// The sealed block `id` at `at`, or why not.
    async fn block(&self, id: &str, at: &Locator) -> Result<Bytes, Refusal> {
        let bs = at.block_size;
        if !bs.is_power_of_two()
            || !(4096..=MAX_BLOCK).contains(&bs)
            || at.path.is_empty()
            || at.path.starts_with(b"/")
            || at.path.contains(&0)
            || at
                .path
                .split(|c| *c == b'/')
                .any(|c| c.is_empty() || c == b"." || c == b"..")
        {
            return Err(Refusal::NoSuchBlock);
        }
        // The id is checked against the store's manifest before anything is read: someone
        // who does not know a block's sum cannot make the site fetch it.
        let lookup = |k: &Known| {
            k.sums
                .as_ref()
                .and_then(|s| s.get(usize::try_from(at.block).ok()?).copied())
                .filter(|s| seal::block_id(s) == id)
        };
        let mut k = self.known(&at.path, bs).await?;
        if lookup(&k).is_none() && k.at.elapsed() > FRESH {
            // Perhaps the file changed or grew since: ask once more.
            self.forget(&at.path, bs);
            k = self.known(&at.path, bs).await?;
        }
        let sum = lookup(&k).ok_or(Refusal::NoSuchBlock)?;
        let off = at.block * bs;
        let file_id = self.index.id_for(&at.path, k.attr.ident).map_err(refusal)?;
        let file = FileRef {
            path: at.path.clone(),
            ident: Some(k.attr.ident),
        };
        let (data, _, _) = self
            .data
            .read(file_id, file, k.attr, off, bs as u32)
            .await
            .map_err(refusal)?;
        if seal::sum_of(&data) != sum {
            // The file changed since its manifest was read: ask again next time.
            self.forget(&at.path, bs);
            return Err(Refusal::NoSuchBlock);
        }
        let sealed = tokio::task::spawn_blocking(move || seal::seal(&sum, &data))
            .await
            .map_err(|e| Refusal::Unavailable(e.to_string()))?;
        Ok(Bytes::from(sealed))
    }

    async fn answer(&self, req: Request<Incoming>) -> Response<Full<Bytes>> {
        let path = req.uri().path().to_string();
        if req.method() != Method::GET {
            return plain(StatusCode::METHOD_NOT_ALLOWED, "GET only\n".into());
        }
        // Anything before the block path is a prefix a cache or proxy put in front (a host
        // may be given `http://cache/some/prefix`): the id is what follows it.
        let Some(id) = path
            .rfind(BLOCK_PATH)
            .map(|i| &path[i + BLOCK_PATH.len()..])
        else {
            return plain(
                StatusCode::NOT_FOUND,
                format!("blocks are at {BLOCK_PATH}ID\n"),
            );
        };
        let at = req
            .headers()
            .get(LOCATOR_HEADER)
            .and_then(|v| v.to_str().ok())
            .and_then(Locator::parse);
        let result = match at {
            // Ids are what `block_id` writes: 64 lowercase hex digits.
            _ if id.len() != 64 || !id.bytes().all(|c| matches!(c, b'0'..=b'9' | b'a'..=b'f')) => {
                Err(Refusal::NoSuchBlock)
            }
            None => Err(Refusal::Bad(format!("no valid {LOCATOR_HEADER} header"))),
            Some(at) => self.block(id, &at).await,
        };
        match result {
            Ok(body) => {
                self.stats.blocks.fetch_add(1, Ordering::Relaxed);
                self.stats
                    .bytes
                    .fetch_add(body.len() as u64, Ordering::Relaxed);
                // Always the body, never 304: a cache revalidating a copy a host rejected
                // must get the good payload back, not a confirmation of its own.
                let mut b = Response::builder();
                if let Some(url) = &self.url {
                    b = b.header(super::fetch::SITE_HEADER, url);
                }
                b.status(StatusCode::OK)
                    .header("cache-control", CACHE_FOREVER)
                    .header("etag", format!("\"{}\"", &id[..32]))
                    .header("content-type", "application/octet-stream")
                    .body(Full::new(body))
                    .expect("a valid response")
            }
            Err(r) => {
                self.stats.refused.fetch_add(1, Ordering::Relaxed);
                let (status, why) = match r {
                    Refusal::NoSuchBlock => (StatusCode::NOT_FOUND, NO_SUCH_BLOCK.to_string()),
                    Refusal::Bad(why) => (StatusCode::BAD_REQUEST, format!("{why}\n")),
                    Refusal::Unavailable(why) => {
                        (StatusCode::SERVICE_UNAVAILABLE, format!("{why}\n"))
                    }
                };
                tracing::debug!("site: {path}: {status} {}", why.trim_end());
                plain(status, why)
            }
        }
    }
}

/// An error answer: never cached (the next request may well succeed).
fn plain(status: StatusCode, body: String) -> Response<Full<Bytes>> {
    Response::builder()
        .status(status)
        .header("cache-control", "no-store")
        .header("content-type", "text/plain")
        .body(Full::new(Bytes::from(body)))
        .expect("a valid response")
}

/// The store failing as a whole (unreachable, not answering) is a 503, which makes hosts
/// skip the tier for a while; anything about one file or block is "no such block", which
/// sends only that block over their sessions.
fn refusal(e: Error) -> Refusal {
    match e {
        Error::Disconnected(m) | Error::Stalled(m) | Error::Unsent(m) => Refusal::Unavailable(m),
        e @ (Error::Offline(_) | Error::OfflineTooLong(_)) => Refusal::Unavailable(e.to_string()),
        _ => Refusal::NoSuchBlock,
    }
}

/// Serve the site's blocks on `addr` until the process ends.
pub async fn serve(addr: SocketAddr, site: Arc<Site>) -> std::io::Result<SocketAddr> {
    let listener = TcpListener::bind(addr).await?;
    let bound = listener.local_addr()?;
    let slots = Arc::new(tokio::sync::Semaphore::new(MAX_CONNECTIONS));
    tokio::spawn(async move {
        loop {
            let Ok(slot) = slots.clone().acquire_owned().await else {
                return;
            };
            let stream = match listener.accept().await {
                Ok((s, _)) => s,
                Err(e) => {
                    tracing::warn!("site accept failed (retrying): {e}");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            };
            let _ = stream.set_nodelay(true);
            let site = site.clone();
            tokio::spawn(async move {
                let service = hyper::service::service_fn(move |req| {
                    let site = site.clone();
                    async move { Ok::<_, Infallible>(site.answer(req).await) }
                });
                let io = hyper_util::rt::TokioIo::new(stream);
                let _ = hyper::server::conn::http1::Builder::new()
                    .timer(hyper_util::rt::TokioTimer::new())
                    .header_read_timeout(HEADER_TIMEOUT)
                    .serve_connection(io, service)
                    .await;
                drop(slot);
            });
        }
    });
    Ok(bound)
}
