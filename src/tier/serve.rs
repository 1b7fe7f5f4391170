//! The site's side of the tier (`serve --site-listen ADDR`): a gridvfs client of the store
//! that also answers `GET /gridvfs/v1/block/ID` with the sealed block, as an immutable HTTP
//! object any standard cache (Squid, nginx, Varnish) may keep and share.
//!
//! The store stays SSH-only: the site reads through its own session and block cache (packed
//! fetches, single flight per block, read-ahead), like any client. It needs no manifest
//! and keeps no secret: the [`Locator`] header says where the block is, and the site
//! answers only if the block found there hashes to the requested id (409 otherwise), so a
//! host can never make a cache hold the wrong content under an id, and one who does not
//! know a block's sum cannot have it served at all.

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
use crate::proto::{Attr, FileRef};
use crate::remote::RemoteStore;

/// Largest block a host may ask for (the cache's largest block size).
const MAX_BLOCK: u64 = 4 << 20;
/// Attributes kept per path between requests: a block request costs no store round trip
/// for a file read a moment ago (a changed file shows up as a 409, which drops them).
const ATTR_TTL: Duration = Duration::from_secs(1);
/// What caches may keep a block for: a year, and `immutable` (an id names one content).
const CACHE_FOREVER: &str = "public, max-age=31536000, immutable";

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

/// The block service of a site.
pub struct Site {
    data: Arc<DataPath>,
    index: Arc<Index>,
    store: Arc<RemoteStore>,
    attrs: Mutex<HashMap<Vec<u8>, (Attr, Instant)>>,
    pub stats: SiteStats,
}

impl Site {
    pub fn new(data: Arc<DataPath>, index: Arc<Index>, store: Arc<RemoteStore>) -> Self {
        Self {
            data,
            index,
            store,
            attrs: Mutex::new(HashMap::new()),
            stats: SiteStats::default(),
        }
    }

    async fn attr(&self, path: &[u8]) -> crate::error::Result<Attr> {
        if let Some((a, at)) = self.attrs.lock().expect("attrs lock").get(path)
            && at.elapsed() < ATTR_TTL
        {
            return Ok(*a);
        }
        let file = FileRef {
            path: path.to_vec(),
            ident: None,
        };
        let a = self.store.getattr(&file).await?;
        let mut attrs = self.attrs.lock().expect("attrs lock");
        if attrs.len() > 4096 {
            attrs.clear();
        }
        attrs.insert(path.to_vec(), (a, Instant::now()));
        Ok(a)
    }

    /// The sealed block `id` at `at`, or why not.
    async fn block(&self, id: &str, at: &Locator) -> Result<Bytes, (StatusCode, String)> {
        let bs = at.block_size;
        if !bs.is_power_of_two() || !(4096..=MAX_BLOCK).contains(&bs) {
            return Err((StatusCode::BAD_REQUEST, format!("block size {bs}")));
        }
        if at.path.is_empty()
            || at.path.starts_with(b"/")
            || at.path.contains(&0)
            || at
                .path
                .split(|c| *c == b'/')
                .any(|c| c.is_empty() || c == b"." || c == b"..")
        {
            return Err((StatusCode::BAD_REQUEST, "bad path".into()));
        }
        let attr = self.attr(&at.path).await.map_err(refusal)?;
        let off = at.block.saturating_mul(bs);
        if off >= attr.size {
            return Err((StatusCode::NOT_FOUND, "past the end of the file".into()));
        }
        let file_id = self.index.id_for(&at.path, attr.ident).map_err(refusal)?;
        let file = FileRef {
            path: at.path.clone(),
            ident: Some(attr.ident),
        };
        let (data, _, _) = self
            .data
            .read(file_id, file, attr, off, bs as u32)
            .await
            .map_err(refusal)?;
        let sum = seal::sum_of(&data);
        if seal::block_id(&sum) != id {
            // Another block, or this one changed: whatever we have, it is not `id`.
            self.attrs.lock().expect("attrs lock").remove(&at.path);
            return Err((
                StatusCode::CONFLICT,
                "the block at that place does not have that id".into(),
            ));
        }
        let sealed = tokio::task::spawn_blocking(move || seal::seal(&sum, &data))
            .await
            .map_err(|e| (StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))?;
        Ok(Bytes::from(sealed))
    }

    async fn answer(&self, req: Request<Incoming>) -> Response<Full<Bytes>> {
        let path = req.uri().path().to_string();
        if req.method() != Method::GET {
            return plain(StatusCode::METHOD_NOT_ALLOWED, "GET only\n".into());
        }
        let Some(id) = path.strip_prefix(BLOCK_PATH) else {
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
            _ if id.len() != 64 || !id.bytes().all(|c| c.is_ascii_hexdigit()) => {
                Err((StatusCode::NOT_FOUND, "not a block id".into()))
            }
            None => Err((
                StatusCode::BAD_REQUEST,
                format!("no valid {LOCATOR_HEADER} header"),
            )),
            Some(at) => self.block(id, &at).await,
        };
        match result {
            Ok(body) => {
                self.stats.blocks.fetch_add(1, Ordering::Relaxed);
                self.stats
                    .bytes
                    .fetch_add(body.len() as u64, Ordering::Relaxed);
                // The id names the content; the payload is deterministic for it.
                let etag = format!("\"{}\"", &id[..32]);
                let fresh = req
                    .headers()
                    .get("if-none-match")
                    .is_some_and(|v| v.as_bytes() == etag.as_bytes());
                let b = Response::builder()
                    .header("cache-control", CACHE_FOREVER)
                    .header("etag", &etag)
                    .header("content-type", "application/octet-stream");
                if fresh {
                    b.status(StatusCode::NOT_MODIFIED)
                        .body(Full::new(Bytes::new()))
                } else {
                    b.status(StatusCode::OK).body(Full::new(body))
                }
                .expect("a valid response")
            }
            Err((status, why)) => {
                self.stats.refused.fetch_add(1, Ordering::Relaxed);
                tracing::debug!("site: {path}: {status} {why}");
                plain(status, format!("{why}\n"))
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

fn refusal(e: Error) -> (StatusCode, String) {
    match e {
        Error::Status(s) => (StatusCode::NOT_FOUND, format!("the store says {s:?}")),
        other => (StatusCode::SERVICE_UNAVAILABLE, other.to_string()),
    }
}

/// Serve the site's blocks on `addr` until the process ends.
pub async fn serve(addr: SocketAddr, site: Arc<Site>) -> std::io::Result<SocketAddr> {
    let listener = TcpListener::bind(addr).await?;
    let bound = listener.local_addr()?;
    tokio::spawn(async move {
        loop {
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
                    .serve_connection(io, service)
                    .await;
            });
        }
    });
    Ok(bound)
}
