//! Prometheus metrics (`--metrics-addr`, off by default): the figures of `status --json`,
//! read from the live counters at each scrape, under one `gridvfs_` prefix with one label,
//! `export` (never per file: a label per image would grow without bound). Served at
//! `/metrics` over HTTP/1.1 (hyper) in the text exposition format (prometheus-client).

use std::borrow::Cow;
use std::convert::Infallible;
use std::fmt;
use std::net::SocketAddr;
use std::sync::Arc;

use http_body_util::Full;
use hyper::body::{Bytes, Incoming};
use hyper::{Request, Response, StatusCode};
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::registry::Registry;
use tokio::net::TcpListener;

use crate::control::Sources;

/// Reads the client's figures at scrape time.
struct Figures(Arc<Sources>);

impl fmt::Debug for Figures {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Figures({})", self.0.export_id)
    }
}

impl Collector for Figures {
    fn encode(&self, mut enc: DescriptorEncoder) -> Result<(), fmt::Error> {
        let st = self.0.snapshot();
        let counters: [(&str, &str, u64); 20] = [
            (
                "cache_block_hits",
                "Blocks served from the local cache.",
                st.block_hits,
            ),
            (
                "cache_block_misses",
                "Blocks that had to come from the store.",
                st.block_misses,
            ),
            (
                "cache_fetched_bytes",
                "File bytes fetched from the store.",
                st.bytes_fetched,
            ),
            (
                "cache_zero_bytes",
                "Zero pages the store left out of packed reads.",
                st.zero_bytes,
            ),
            (
                "cache_packed_bytes",
                "Payload bytes of packed reads as they crossed.",
                st.packed_bytes,
            ),
            (
                "cache_hint_zero_bytes",
                "Bytes answered as zeros from hints, without the store.",
                st.hint_zero_bytes,
            ),
            (
                "cache_prefetched_blocks",
                "Blocks fetched ahead by profiles and whole-file hints.",
                st.prefetched_blocks,
            ),
            (
                "cache_filled_blocks",
                "Blocks brought in by the background fill (--fill).",
                st.filled_blocks,
            ),
            (
                "cache_read_ahead_blocks",
                "Blocks fetched ahead of sequential readers.",
                st.read_ahead_blocks,
            ),
            (
                "cache_delta_kept_blocks",
                "Cached blocks kept across a change on the store.",
                st.delta_kept_blocks,
            ),
            (
                "cache_evicted_blocks",
                "Blocks evicted past --cache-size.",
                st.evicted_blocks,
            ),
            (
                "cache_checksum_failures",
                "Cached blocks that failed their checksum (refetched).",
                st.checksum_failures,
            ),
            (
                "cache_uncached_bytes",
                "Bytes served uncached because the cache disk was full.",
                st.uncached_bytes,
            ),
            (
                "link_requests",
                "Requests sent through the tunnel.",
                st.tunnel_requests,
            ),
            (
                "link_sent_bytes",
                "Bytes sent through the tunnel.",
                st.tunnel_bytes_sent,
            ),
            (
                "link_received_bytes",
                "Bytes received through the tunnel.",
                st.tunnel_bytes_received,
            ),
            (
                "link_reconnects",
                "Sessions re-established after a lost link.",
                st.reconnects,
            ),
            (
                "link_outages",
                "Outages long enough to go offline.",
                st.outages,
            ),
            (
                "writeback_uploaded_bytes",
                "Write-back bytes uploaded to the store.",
                st.uploaded_bytes,
            ),
            (
                "writeback_upload_errors",
                "Failed write-back upload batches (retried).",
                st.upload_errors,
            ),
        ];
        for (name, help, v) in counters {
            let c = ConstCounter::new(v);
            c.encode(enc.encode_descriptor(name, help, None, c.metric_type())?)?;
        }
        let gauges: [(&str, &str, i64); 7] = [
            (
                "writeback_dirty_entries",
                "Acknowledged writes not yet on the store.",
                st.dirty_entries as i64,
            ),
            (
                "writeback_dirty_bytes",
                "Bytes acknowledged and not yet on the store.",
                st.dirty_bytes as i64,
            ),
            (
                "writeback_quarantined_bytes",
                "Write-back bytes the store refused, kept in the journal.",
                st.quarantined_bytes as i64,
            ),
            (
                "offline",
                "1 while the store is unreachable and the cache serves alone.",
                i64::from(st.offline_seconds.is_some()),
            ),
            (
                "offline_seconds",
                "How long the store has been unreachable (0 online).",
                st.offline_seconds.unwrap_or(0.0) as i64,
            ),
            (
                "offline_refused",
                "Requests asked to wait (JUKEBOX) while offline, so far.",
                st.offline_refused as i64,
            ),
            (
                "held",
                "Calls held right now for NFS clients that do not retry JUKEBOX (libnfs).",
                st.held as i64,
            ),
        ];
        for (name, help, v) in gauges {
            let g = ConstGauge::new(v);
            g.encode(enc.encode_descriptor(name, help, None, g.metric_type())?)?;
        }
        let seconds: [(&str, &str, Option<f64>); 2] = [
            (
                "link_rtt_seconds",
                "Smoothed round trip of small requests to the store (absent before the first).",
                st.link_rtt_ms.map(|ms| ms / 1000.0),
            ),
            (
                "writeback_oldest_dirty_age_seconds",
                "How long the oldest write-back entry not yet on the store has waited (0: none).",
                Some(st.writeback_oldest_secs.unwrap_or(0.0)),
            ),
        ];
        for (name, help, v) in seconds {
            if let Some(v) = v {
                let g = ConstGauge::<f64>::new(v);
                g.encode(enc.encode_descriptor(name, help, None, g.metric_type())?)?;
            }
        }
        // Only with --block-source / --site-listen: absent rather than a misleading 0.
        let mut optional: Vec<(&str, &str, u64)> = Vec::new();
        // The tiers' figures summed (each tier's own are in `status`).
        if !st.tiers.is_empty() {
            let sum = |f: fn(&crate::control::TierStatus) -> u64| st.tiers.iter().map(f).sum();
            let t = crate::control::TierStatus {
                blocks: sum(|t| t.blocks),
                bytes: sum(|t| t.bytes),
                fallbacks: sum(|t| t.fallbacks),
                rejected: sum(|t| t.rejected),
                late: sum(|t| t.late),
                down: st.tiers.iter().all(|t| t.down.is_some()).then(String::new),
                url: String::new(),
            };
            optional.extend([
                (
                    "tier_blocks",
                    "Blocks from the site tier (verified).",
                    t.blocks,
                ),
                (
                    "tier_bytes",
                    "Sealed bytes received from the site tier.",
                    t.bytes,
                ),
                (
                    "tier_fallback_blocks",
                    "Blocks of manifest files fetched over the session instead of the tier.",
                    t.fallbacks,
                ),
                (
                    "tier_rejected_blocks",
                    "Payloads from the tier that failed verification.",
                    t.rejected,
                ),
                (
                    "tier_late_blocks",
                    "Blocks the tier did not give within --block-source-timeout.",
                    t.late,
                ),
            ]);
        }
        if let Some(s) = &st.site {
            optional.extend([
                (
                    "site_blocks",
                    "Sealed blocks served to the site tier.",
                    s.blocks,
                ),
                (
                    "site_bytes",
                    "Sealed bytes served to the site tier.",
                    s.bytes,
                ),
                (
                    "site_refused",
                    "Block requests the site refused (bad, unknown, or a wrong id).",
                    s.refused,
                ),
            ]);
        }
        for (name, help, v) in optional {
            let c = ConstCounter::new(v);
            c.encode(enc.encode_descriptor(name, help, None, c.metric_type())?)?;
        }
        if !st.tiers.is_empty() {
            let down = st.tiers.iter().all(|t| t.down.is_some());
            let g = ConstGauge::new(i64::from(down));
            g.encode(enc.encode_descriptor(
                "tier_down",
                "1 while every site tier is skipped after a failure.",
                None,
                g.metric_type(),
            )?)?;
        }
        Ok(())
    }
}

/// The registry of one client: its figures, labelled with its export.
fn registry(sources: Arc<Sources>) -> Registry {
    let label = (
        Cow::Borrowed("export"),
        Cow::Owned(sources.export_id.clone()),
    );
    let mut r = Registry::with_prefix_and_labels("gridvfs", [label].into_iter());
    r.register_collector(Box::new(Figures(sources)));
    r
}

/// The exposition text of one scrape.
pub fn render(sources: Arc<Sources>) -> String {
    let mut out = String::new();
    prometheus_client::encoding::text::encode(&mut out, &registry(sources))
        .expect("writing to a String cannot fail");
    out
}

/// Serve `/metrics` on `addr` until the process ends.
pub async fn serve(addr: SocketAddr, sources: Arc<Sources>) -> std::io::Result<SocketAddr> {
    let listener = TcpListener::bind(addr).await?;
    let bound = listener.local_addr()?;
    if !bound.ip().is_loopback() {
        tracing::warn!(
            "metrics on {bound}, a non-loopback address: anyone who reaches it sees the \
             export's figures"
        );
    }
    tokio::spawn(async move {
        loop {
            let stream = match listener.accept().await {
                Ok((s, _)) => s,
                Err(e) => {
                    tracing::warn!("metrics accept failed (retrying): {e}");
                    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                    continue;
                }
            };
            let sources = sources.clone();
            tokio::spawn(async move {
                let service = hyper::service::service_fn(move |req: Request<Incoming>| {
                    let sources = sources.clone();
                    async move { Ok::<_, Infallible>(answer(&req, sources)) }
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

fn answer(req: &Request<Incoming>, sources: Arc<Sources>) -> Response<Full<Bytes>> {
    let (status, kind, body) = match (req.method(), req.uri().path()) {
        (&hyper::Method::GET, "/metrics") => (
            StatusCode::OK,
            "text/plain; version=0.0.4; charset=utf-8",
            render(sources),
        ),
        (&hyper::Method::GET, _) => (
            StatusCode::NOT_FOUND,
            "text/plain",
            "only /metrics is served here\n".into(),
        ),
        _ => (
            StatusCode::METHOD_NOT_ALLOWED,
            "text/plain",
            "GET /metrics\n".into(),
        ),
    };
    Response::builder()
        .status(status)
        .header("content-type", kind)
        .body(Full::new(Bytes::from(body)))
        .expect("a valid response")
}
