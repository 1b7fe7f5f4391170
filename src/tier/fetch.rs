//! The VM host's side of the site tier: sealed blocks fetched over HTTP by id, opened and
//! verified against the manifest before anything else sees them.
//!
//! Every failure here only means "fetch this block over the session instead": a payload
//! that does not open or match its sum (counted, and the cache's copy reloaded from the
//! site with `Cache-Control: no-cache`), a 404/409, a source silent for a deadline (or a
//! block later than [`PATIENCE`] deadlines while the source answers others). A
//! tier that cannot be reached at all (refused, reset, 502/503/504 from a cache whose
//! origin is gone, or a deadline missed with no answer at all for a deadline's time), or
//! that hands out a bad payload again when asked to reload it, is left alone for a while — 1 s, doubling while it
//! keeps failing, up to [`DOWN_MAX`] — so a dead cache costs one failed request per few
//! seconds, not one per block, and a restarted one is used again within a second.

use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Empty, Limited};
use hyper::{Request, StatusCode, Uri};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;

use super::seal::{self, SealError, Sum};
use crate::error::{Error, Result};

/// How long a tier found unreachable is skipped before it is tried again: the first time,
/// and at most (doubling while it keeps failing).
pub const DOWN_MIN: Duration = Duration::from_secs(1);
pub const DOWN_MAX: Duration = Duration::from_secs(16);
/// The request header that tells the site where a block lives (see [`Locator`]).
pub const LOCATOR_HEADER: &str = "x-gridvfs-block";
/// The response header in which a site gives its own URL (`--site-url`), so hosts that
/// reach it through a cache can go to it directly when the cache dies.
pub const SITE_HEADER: &str = "x-gridvfs-site";
/// Path prefix of block objects on the site (and so on every cache in front of it).
pub const BLOCK_PATH: &str = "/gridvfs/v1/block/";
/// A block waits at most this many deadlines while its source keeps answering others.
const PATIENCE: u32 = 6;
/// Requests one host keeps in flight to one tier (4 MiB of 256 KiB blocks): enough to
/// fill a LAN, few enough that a cache serving hundreds of hosts is not swamped with
/// connections (32 hosts unbounded made Squid miss connect deadlines).
const IN_FLIGHT: usize = 16;

/// Where the site finds a block: file, block size, block number. Sent as a request header
/// (not part of the URL, so every file holding the same block shares one cached object).
/// The tier sees file names and offsets this way, never contents.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Locator {
    pub path: Vec<u8>,
    pub block_size: u64,
    pub block: u64,
}

impl Locator {
    /// `BLOCK_SIZE BLOCK PATH-IN-HEX`.
    pub fn to_header(&self) -> String {
        let hex: String = self.path.iter().map(|b| format!("{b:02x}")).collect();
        format!("{} {} {hex}", self.block_size, self.block)
    }

    pub fn parse(s: &str) -> Option<Self> {
        let mut it = s.split(' ');
        let block_size = it.next()?.parse().ok()?;
        let block = it.next()?.parse().ok()?;
        let hex = it.next().unwrap_or("");
        if it.next().is_some() || !hex.len().is_multiple_of(2) {
            return None;
        }
        let path = (0..hex.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(hex.get(i..i + 2)?, 16).ok())
            .collect::<Option<Vec<u8>>>()?;
        Some(Self {
            path,
            block_size,
            block,
        })
    }
}

/// Why one block did not come from the tier.
#[derive(Debug, thiserror::Error)]
pub enum TierError {
    #[error("the tier is unreachable: {0}")]
    Down(String),
    #[error("the tier answered {0}")]
    Status(StatusCode),
    #[error("no answer after {0:.1?}")]
    Timeout(Duration),
    #[error("refused a payload from the tier: {0}")]
    Sealed(#[from] SealError),
    #[error("skipped: found down while this request waited its turn")]
    Skipped,
}

/// What the tier has done for this host (for `status` and metrics).
#[derive(Debug, Default)]
pub struct TierStats {
    /// Blocks served from the tier (verified).
    pub blocks: AtomicU64,
    /// Payload bytes received for them (sealed: compressed and encrypted).
    pub bytes: AtomicU64,
    /// Blocks the tier did not give and the session fetched instead.
    pub fallbacks: AtomicU64,
    /// Payloads that failed to open or did not match their sum.
    pub rejected: AtomicU64,
    /// Blocks not given within the deadline (each also a fallback).
    pub late: AtomicU64,
}

/// An HTTP cache tier (`--block-source`): a Squid, nginx or Varnish in front of a site
/// process (`--site-listen`), or the site itself.
pub struct Tier {
    base: String,
    client: Client<HttpConnector, Empty<Bytes>>,
    deadline: Duration,
    /// While set and in the future, the tier is not asked; with the current back-off.
    down_until: Mutex<Option<(Instant, Duration)>>,
    /// Why the tier was last found down (for `status`); cleared when it answers again.
    pub last_error: Mutex<Option<String>>,
    /// When the tier last gave a block: a late block from a tier that answers others is
    /// a slow tier (busy origin, loaded cache), not a dead one.
    last_ok: Mutex<Option<Instant>>,
    pub stats: TierStats,
    /// At most [`IN_FLIGHT`] requests at once.
    slots: tokio::sync::Semaphore,
    /// The site's own URL, as its answers through this tier gave it ([`SITE_HEADER`]).
    pub site_url: Mutex<Option<String>>,
    /// Unexpected statuses already logged.
    odd: Mutex<std::collections::HashSet<u16>>,
}

impl Tier {
    /// `url`: `http://HOST:PORT[/PREFIX]`, where the site's objects are reachable.
    /// `deadline`: per block, request and body together.
    pub fn new(url: &str, deadline: Duration) -> Result<Self> {
        let base = url.trim_end_matches('/').to_string();
        let uri: Uri = base
            .parse()
            .map_err(|e| Error::Config(format!("--block-source {url}: {e}")))?;
        if uri.scheme_str() != Some("http") || uri.host().is_none() {
            return Err(Error::Config(format!(
                "--block-source {url}: give an http://HOST:PORT URL (blocks are sealed, so \
                 the tier needs no TLS; the manifest travels over the SSH session)"
            )));
        }
        let mut conn = HttpConnector::new();
        conn.set_nodelay(true);
        conn.set_connect_timeout(Some(deadline.min(Duration::from_secs(3))));
        let client = Client::builder(TokioExecutor::new())
            .pool_idle_timeout(Duration::from_secs(30))
            .pool_max_idle_per_host(64)
            .build(conn);
        Ok(Self {
            base,
            client,
            deadline,
            down_until: Mutex::new(None),
            last_error: Mutex::new(None),
            last_ok: Mutex::new(None),
            stats: TierStats::default(),
            slots: tokio::sync::Semaphore::new(IN_FLIGHT),
            odd: Mutex::default(),
            site_url: Mutex::new(None),
        })
    }

    pub fn url(&self) -> &str {
        &self.base
    }

    pub fn deadline(&self) -> Duration {
        self.deadline
    }

    /// False while the tier is being skipped after it was found unreachable.
    pub fn available(&self) -> bool {
        let d = self.down_until.lock().expect("tier lock");
        // Past the back-off the tier is tried again; the back-off itself is kept until it
        // answers, so a tier that keeps failing is tried less and less often.
        !matches!(*d, Some((t, _)) if Instant::now() < t)
    }

    /// Why the tier is being skipped right now, if it is (for `status`).
    pub fn skipped(&self) -> Option<String> {
        if self.available() {
            return None;
        }
        self.last_error.lock().expect("tier lock").clone()
    }

    /// The block at `at` whose sum is `sum` (at most `max_len` bytes), from the tier.
    pub async fn get(&self, at: &Locator, sum: &Sum, max_len: usize) -> Result<Vec<u8>, TierError> {
        // Waiting for a slot is this host's own queue, not the tier's slowness; a tier
        // found down meanwhile is not asked (the block goes elsewhere at once).
        let _slot = self.slots.acquire().await.expect("never closed");
        if !self.available() {
            return Err(TierError::Skipped);
        }
        let mut r = self.get_once(at, sum, max_len, false).await;
        if let Err(TierError::Sealed(e)) = &r {
            self.stats.rejected.fetch_add(1, Ordering::Relaxed);
            // A cache holding a bad copy would hand it to every host: make it go back to
            // the site (Squid does for `no-cache`; nginx and Varnish need a purge), and use
            // that answer if it verifies.
            let again = self.get_once(at, sum, max_len, true).await;
            tracing::warn!(
                "block source {}: block {} of {:?}: {e}; reloaded from the site: {}",
                self.base,
                at.block,
                String::from_utf8_lossy(&at.path),
                match &again {
                    Ok(_) => "good".to_string(),
                    Err(e) => format!("{e}; fetched elsewhere"),
                }
            );
            match again {
                Ok(_) => r = again,
                // Bad twice, the second time straight from the site's side: this source
                // is broken or hostile; skip it like one that is down.
                Err(e @ TierError::Sealed(_)) => self.mark_down(&e),
                Err(_) => {}
            }
        }
        match &r {
            Ok(_) => {
                self.stats.blocks.fetch_add(1, Ordering::Relaxed);
                *self.down_until.lock().expect("tier lock") = None;
                *self.last_ok.lock().expect("tier lock") = Some(Instant::now());
                if self.last_error.lock().expect("tier lock").take().is_some() {
                    tracing::info!("block source {} answers again", self.base);
                }
            }
            Err(TierError::Sealed(_) | TierError::Skipped) => {}
            Err(e @ TierError::Timeout(_)) => {
                self.stats.late.fetch_add(1, Ordering::Relaxed);
                let answering = self
                    .last_ok
                    .lock()
                    .expect("tier lock")
                    .is_some_and(|t| t.elapsed() < self.deadline);
                if !answering {
                    self.mark_down(e);
                }
            }
            Err(e @ TierError::Down(_)) => self.mark_down(e),
            Err(e @ TierError::Status(s)) if s.is_server_error() => self.mark_down(e),
            // 404/409: this block is not there (a file changed under the manifest).
            Err(TierError::Status(StatusCode::NOT_FOUND | StatusCode::CONFLICT)) => {}
            // Anything else (403 from a cache's access rules or loop detection, ...) is a
            // configuration problem worth one line per kind.
            Err(TierError::Status(s)) => {
                if self.odd.lock().expect("tier lock").insert(s.as_u16()) {
                    tracing::warn!(
                        "block source {} answers {s} (first seen for block {} of {:?}); \
                         those blocks come over the session: check the cache's configuration",
                        self.base,
                        at.block,
                        String::from_utf8_lossy(&at.path)
                    );
                }
            }
        }
        r
    }

    fn mark_down(&self, e: &TierError) {
        {
            let mut d = self.down_until.lock().expect("tier lock");
            let now = Instant::now();
            let wait = match *d {
                // Requests sent before it went down fail together: one back-off step.
                Some((t, w)) if now < t => w,
                Some((_, w)) => (w * 2).min(DOWN_MAX),
                None => DOWN_MIN,
            };
            *d = Some((now + wait, wait));
        }
        let mut last = self.last_error.lock().expect("tier lock");
        if last.is_none() {
            tracing::warn!(
                "block source {} failed ({e}); fetching its blocks elsewhere (the next source, \
                 else the session), trying it again in {}s, backing off up to {}s",
                self.base,
                DOWN_MIN.as_secs(),
                DOWN_MAX.as_secs()
            );
        }
        *last = Some(e.to_string());
    }

    async fn get_once(
        &self,
        at: &Locator,
        sum: &Sum,
        max_len: usize,
        reload: bool,
    ) -> Result<Vec<u8>, TierError> {
        let uri = format!("{}{BLOCK_PATH}{}", self.base, seal::block_id(sum));
        let mut req = Request::get(uri).header(LOCATOR_HEADER, at.to_header());
        if reload {
            req = req
                .header("cache-control", "no-cache")
                .header("pragma", "no-cache");
        }
        let req = req
            .body(Empty::new())
            .map_err(|e| TierError::Down(e.to_string()))?;
        let work = async {
            let resp = self
                .client
                .request(req)
                .await
                .map_err(|e| TierError::Down(error_chain(&e)))?;
            if resp.status() != StatusCode::OK {
                return Err(TierError::Status(resp.status()));
            }
            if let Some(url) = resp
                .headers()
                .get(SITE_HEADER)
                .and_then(|v| v.to_str().ok())
            {
                let mut known = self.site_url.lock().expect("tier lock");
                if known.is_none() {
                    *known = Some(url.to_string());
                }
            }
            // Sealed payloads are at most a little over the block: refuse a cache that
            // streams more (a hostile or broken tier must not fill this host's memory).
            let limit = max_len + 64 + max_len / 64;
            let body = Limited::new(resp.into_body(), limit)
                .collect()
                .await
                .map_err(|e| TierError::Down(format!("reading the body: {e}")))?
                .to_bytes();
            self.stats
                .bytes
                .fetch_add(body.len() as u64, Ordering::Relaxed);
            Ok(body)
        };
        // The deadline is for silence, as the session's request watchdog: a block may take
        // longer while the source keeps giving others (a loaded cache or site is slow, not
        // dead — sending the block over the WAN then only adds to the load), up to
        // [`PATIENCE`] deadlines in all.
        let started = Instant::now();
        tokio::pin!(work);
        let body = loop {
            match tokio::time::timeout(self.deadline, &mut work).await {
                Ok(r) => break r?,
                Err(_) => {
                    let others = self
                        .last_ok
                        .lock()
                        .expect("tier lock")
                        .is_some_and(|t| t.elapsed() < self.deadline);
                    if !others || started.elapsed() >= self.deadline * PATIENCE {
                        return Err(TierError::Timeout(started.elapsed()));
                    }
                }
            }
        };
        let sum = *sum;
        tokio::task::spawn_blocking(move || seal::open(&sum, &body, max_len))
            .await
            .map_err(|e| TierError::Down(e.to_string()))?
            .map_err(TierError::Sealed)
    }
}

/// An error and its causes on one line (hyper's own message is often just "client error").
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        s.push_str(": ");
        s.push_str(&c.to_string());
        cur = c.source();
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn locators_round_trip_and_junk_is_refused() {
        let l = Locator {
            path: b"vm images/a b\xff.qcow2".to_vec(),
            block_size: 262144,
            block: 17,
        };
        assert_eq!(Locator::parse(&l.to_header()), Some(l));
        for bad in ["", "1", "1 2 abc", "x 2 00", "1 2 00 00", "1 2 zz"] {
            assert_eq!(Locator::parse(bad), None, "{bad:?}");
        }
    }

    #[tokio::test]
    async fn an_unreachable_tier_is_skipped_then_tried_again_less_often() {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let t = Tier::new(&format!("http://127.0.0.1:{port}"), Duration::from_secs(2)).unwrap();
        let at = Locator {
            path: b"a".to_vec(),
            block_size: 4096,
            block: 0,
        };
        assert!(t.available());
        let e = t.get(&at, &[0; 16], 4096).await.unwrap_err();
        assert!(matches!(e, TierError::Down(_)), "{e}");
        assert!(!t.available());
        assert!(
            t.last_error
                .lock()
                .unwrap()
                .as_ref()
                .unwrap()
                .contains("refused")
        );
        // Past the first back-off it is tried again; failing again doubles the back-off.
        let (until, wait) = t.down_until.lock().unwrap().unwrap();
        assert_eq!(wait, DOWN_MIN);
        *t.down_until.lock().unwrap() = Some((Instant::now() - Duration::from_millis(1), wait));
        assert!(t.available());
        let _ = t.get(&at, &[0; 16], 4096).await.unwrap_err();
        let (later, wait) = t.down_until.lock().unwrap().unwrap();
        assert_eq!(wait, 2 * DOWN_MIN);
        assert!(later > until);
        assert_eq!(t.stats.blocks.load(Ordering::Relaxed), 0);
    }

    /// A tier that answers every request with the sealed `block`, after `delay`.
    async fn slow_tier(block: Vec<u8>, delay: Duration) -> u16 {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = l.local_addr().unwrap().port();
        let body = seal::seal(&seal::sum_of(&block), &block);
        tokio::spawn(async move {
            while let Ok((mut c, _)) = l.accept().await {
                let body = body.clone();
                tokio::spawn(async move {
                    let mut buf = vec![0u8; 8192];
                    let mut seen = Vec::new();
                    while let Ok(k) = c.read(&mut buf).await {
                        if k == 0 {
                            return;
                        }
                        seen.extend_from_slice(&buf[..k]);
                        while let Some(end) = seen.windows(4).position(|w| w == b"\r\n\r\n") {
                            seen.drain(..end + 4);
                            tokio::time::sleep(delay).await;
                            let head = format!(
                                "HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n",
                                body.len()
                            );
                            if c.write_all(head.as_bytes()).await.is_err()
                                || c.write_all(&body).await.is_err()
                            {
                                return;
                            }
                        }
                    }
                });
            }
        });
        port
    }

    /// The deadline is for silence (the 64-host bench sent up to 2× the image over the WAN
    /// when a late block from a busy cache counted as a failure): a block later than the
    /// deadline is waited for while the source keeps giving others, and only a source
    /// that gives nothing for a deadline is given up on and skipped.
    #[tokio::test]
    async fn a_late_block_from_a_source_giving_others_is_waited_for() {
        let block = vec![7u8; 4096];
        let sum = seal::sum_of(&block);
        let at = Locator {
            path: b"a".to_vec(),
            block_size: 4096,
            block: 0,
        };
        let port = slow_tier(block.clone(), Duration::from_millis(600)).await;
        let t = std::sync::Arc::new(
            Tier::new(
                &format!("http://127.0.0.1:{port}"),
                Duration::from_millis(200),
            )
            .unwrap(),
        );
        // Others keep arriving meanwhile (as other blocks' answers would).
        let others = {
            let t = t.clone();
            tokio::spawn(async move {
                loop {
                    *t.last_ok.lock().unwrap() = Some(Instant::now());
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            })
        };
        assert_eq!(t.get(&at, &sum, 4096).await.unwrap(), block);
        assert_eq!(t.stats.late.load(Ordering::Relaxed), 0);
        others.abort();
        // Silent for a deadline, with nothing else arriving: late, and the source skipped.
        tokio::time::sleep(Duration::from_millis(250)).await;
        let e = t.get(&at, &sum, 4096).await.unwrap_err();
        assert!(matches!(e, TierError::Timeout(_)), "{e}");
        assert_eq!(t.stats.late.load(Ordering::Relaxed), 1);
        assert!(!t.available());
    }

    #[test]
    fn only_http_urls_are_taken() {
        assert!(Tier::new("http://127.0.0.1:3128/", Duration::from_secs(1)).is_ok());
        for bad in ["https://cache:3128", "cache:3128", "ftp://x/"] {
            assert!(Tier::new(bad, Duration::from_secs(1)).is_err(), "{bad}");
        }
    }
}
