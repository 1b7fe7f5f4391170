//! Issue 14's fan-out: N VM hosts read one image cold at once — its boot trace, then the
//! whole image — with the store behind one emulated WAN link (its uplink, shared by all).
//!
//! `tier` rows: a site client (`--site-listen`) reads the store through the link, a real
//! Squid caches its sealed blocks, the hosts take block payloads from Squid
//! (`--block-source`); each host still has its own session to the store across the link
//! for names, attributes and the manifest. `direct` rows: the same hosts, each straight to
//! the store. Egress is what crossed the link store->site/hosts, against zstd -1 of the
//! image's non-zero pages; the chain-transfer model `S/B + (N-1)·piece/B` is the reference
//! of a perfect pipeline.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::AtomicU64;
use std::time::{Duration, Instant};

use anyhow::Context;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use crate::data::{self, TraceRead};
use crate::link::{LinkSpec, Relay};
use crate::nfsread;
use crate::peers::Daemon;
use crate::setup::{server_bridge, sibling};

const MIB: u64 = 1 << 20;
/// The cache's block size: the piece of the chain model.
const PIECE: u64 = 256 << 10;

pub struct Opts {
    pub link: LinkSpec,
    pub hosts: Vec<usize>,
    pub direct: Vec<usize>,
    pub image_mib: u64,
    /// The hosts' `--block-source-timeout` (their default when `None`).
    pub tier_timeout: Option<f64>,
    pub bound: Duration,
    pub out: PathBuf,
    pub data: PathBuf,
    pub name: String,
}

/// One configuration's outcome.
#[derive(Debug, serde::Serialize)]
struct Row {
    mode: &'static str,
    hosts: usize,
    egress_bytes: u64,
    egress_ratio: f64,
    boot_p50_s: f64,
    boot_p99_s: f64,
    all_p50_s: f64,
    all_p99_s: f64,
    all_done_s: f64,
    chain_model_s: f64,
    tier_blocks: u64,
    fallbacks: u64,
    late: u64,
    rejected: u64,
    failed_hosts: usize,
}

/// A memory-state-like image (70% zero pages in runs) and a boot trace over it: runs of
/// 5-30 sequential reads of 4-256 KiB at scattered places, ~10% of the image.
fn make_data(dir: &Path, bytes: u64) -> anyhow::Result<(PathBuf, Vec<TraceRead>)> {
    let store = dir.join(format!("fanout-{}m", bytes / MIB));
    let img = store.join("image.raw");
    let trace_path = dir.join(format!("fanout-{}m-trace.json", bytes / MIB));
    if !trace_path.exists() {
        std::fs::create_dir_all(&store)?;
        let mut rng = StdRng::seed_from_u64(14);
        let mut f = std::io::BufWriter::new(std::fs::File::create(&img)?);
        data::write_pages(&mut rng, &mut f, bytes)?;
        f.into_inner().map_err(|e| e.into_error())?.sync_all()?;
        let trace = data::run_trace(&mut rng, bytes / 10, |rng| {
            (rng.random_range(0..bytes / 4096) * 4096, bytes)
        });
        std::fs::write(&trace_path, serde_json::to_vec(&trace)?)?;
    }
    Ok((img, serde_json::from_slice(&std::fs::read(&trace_path)?)?))
}

fn pct(v: &mut [f64], p: f64) -> f64 {
    if v.is_empty() {
        return f64::NAN;
    }
    v.sort_by(|a, b| a.total_cmp(b));
    v[((v.len() - 1) as f64 * p).round() as usize]
}

fn status(client_bin: &Path, cache: &Path) -> serde_json::Value {
    crate::peers::gridvfs_output(client_bin, &["status", "--json"], cache)
        .ok()
        .and_then(|s| serde_json::from_str(&s).ok())
        .unwrap_or_default()
}

pub async fn run(o: Opts) -> anyhow::Result<()> {
    let client_bin = sibling("gridvfs-client")?;
    let server_bin = sibling("gridvfs-server")?;
    let bench_bin = std::env::current_exe()?;
    gridvfs_testkit::squid::binary()?;
    std::fs::create_dir_all(&o.data)?;
    std::fs::create_dir_all(&o.out)?;
    let (img, trace) = make_data(&o.data, o.image_mib * MIB)?;
    let size = std::fs::metadata(&img)?.len();
    let store = img.parent().context("image dir")?.to_path_buf();
    let hinted = std::process::Command::new(&server_bin)
        .arg("hint")
        .arg(&img)
        .output()?;
    anyhow::ensure!(hinted.status.success(), "gridvfs-server hint failed");
    let min = data::compressed_nonzero(&img, &[(0, size)])?;
    let bw = o.link.bytes_per_sec.unwrap_or(f64::INFINITY);
    eprintln!(
        "fanout: image {} MiB, {:.1} MiB must cross (zstd -1 of non-zero pages); trace {} reads",
        size / MIB,
        min as f64 / MIB as f64,
        trace.len()
    );
    let bridge = server_bridge(server_bin.clone(), store.clone()).await?;
    let relay = Relay::start(o.link, bridge).await?;
    let remote = format!(
        "exec:{} connect 127.0.0.1:{}",
        bench_bin.display(),
        relay.addr.port()
    );
    let mut rows = Vec::new();
    let runs: Vec<(&'static str, usize)> = o
        .hosts
        .iter()
        .map(|&n| ("tier", n))
        .chain(o.direct.iter().map(|&n| ("direct", n)))
        .collect();
    for (mode, n) in runs {
        let work = tempfile::tempdir()?;
        let before = relay.bytes().1;
        let mut _site = None;
        let mut squid = None;
        let mut flags: Vec<String> = Vec::new();
        if mode == "tier" {
            let site_cache = work.path().join("site");
            std::fs::create_dir(&site_cache)?;
            let port = gridvfs_testkit::net::free_port()?;
            let listen = format!("127.0.0.1:{port}");
            _site = Some(Daemon::gridvfs(
                &client_bin,
                &remote,
                &site_cache,
                &["--site-listen", &listen],
            )?);
            let s = gridvfs_testkit::squid::Squid::start(
                &work.path().join("squid"),
                listen.parse()?,
                "",
            )?;
            flags = vec!["--block-source".into(), s.url()];
            if let Some(t) = o.tier_timeout {
                flags.extend(["--block-source-timeout".into(), t.to_string()]);
            }
            squid = Some(s);
        }
        let flags: Vec<&str> = flags.iter().map(String::as_str).collect();
        let mut hosts = Vec::new();
        for i in 0..n {
            let cache = work.path().join(format!("host{i}"));
            std::fs::create_dir(&cache)?;
            hosts.push((
                Daemon::gridvfs(&client_bin, &remote, &cache, &flags)?,
                cache,
            ));
        }
        eprintln!("fanout: {mode}, {n} hosts started");
        let t0 = Instant::now();
        let mut tasks = tokio::task::JoinSet::new();
        for (d, _) in &hosts {
            let (port, trace, img) = (d.port, trace.clone(), img.clone());
            tasks.spawn(async move {
                let done = Arc::new(AtomicU64::new(0));
                nfsread::replay(port, "image.raw", &trace, &img, done.clone()).await?;
                let boot = t0.elapsed().as_secs_f64();
                nfsread::read_whole(port, "image.raw", size, &img, 4, done).await?;
                anyhow::Ok((boot, t0.elapsed().as_secs_f64()))
            });
        }
        let (mut boots, mut alls, mut failed) = (Vec::new(), Vec::new(), 0);
        let deadline = tokio::time::sleep(o.bound);
        tokio::pin!(deadline);
        loop {
            tokio::select! {
                r = tasks.join_next() => match r {
                    Some(Ok(Ok((b, a)))) => {
                        boots.push(b);
                        alls.push(a);
                    }
                    Some(Ok(Err(e))) => {
                        eprintln!("fanout: a host failed: {e:#}");
                        failed += 1;
                    }
                    Some(Err(e)) => {
                        eprintln!("fanout: a host task failed: {e}");
                        failed += 1;
                    }
                    None => break,
                },
                _ = &mut deadline => {
                    failed += tasks.len();
                    tasks.abort_all();
                    eprintln!("fanout: bound of {:?} reached", o.bound);
                    break;
                }
            }
        }
        let egress = relay.bytes().1 - before;
        let (mut tier_blocks, mut fallbacks, mut rejected, mut late) = (0, 0, 0, 0);
        for (_, cache) in &hosts {
            let st = status(&client_bin, cache);
            for t in st["tiers"].as_array().into_iter().flatten() {
                tier_blocks += t["blocks"].as_u64().unwrap_or(0);
                fallbacks += t["fallbacks"].as_u64().unwrap_or(0);
                rejected += t["rejected"].as_u64().unwrap_or(0);
                late += t["late"].as_u64().unwrap_or(0);
            }
        }
        let all_done = alls.iter().cloned().fold(0.0, f64::max);
        let row = Row {
            mode,
            hosts: n,
            egress_bytes: egress,
            egress_ratio: egress as f64 / min as f64,
            boot_p50_s: pct(&mut boots, 0.5),
            boot_p99_s: pct(&mut boots, 0.99),
            all_p50_s: pct(&mut alls, 0.5),
            all_p99_s: pct(&mut alls, 0.99),
            all_done_s: all_done,
            chain_model_s: min as f64 / bw + (n as f64 - 1.0) * PIECE as f64 / bw,
            tier_blocks,
            fallbacks,
            late,
            rejected,
            failed_hosts: failed,
        };
        eprintln!("fanout: {row:?}");
        rows.push(row);
        drop(hosts);
        drop(squid);
    }
    let mut md = format!(
        "# Fan-out: N hosts read one image cold (issue 14)\n\n\
         Link: RTT {:.0} ms, {} (the store's uplink, shared by all). Image {} MiB, memory-like \
         (70% zero pages); {:.1} MiB must cross (zstd -1 of non-zero pages). Each host \
         replays a {}-read boot trace ({:.1} MiB), then reads the image whole (4 READs of \
         1 MiB in flight), every byte checked. `tier`: site client + Squid + `--block-source`; \
         `direct`: each host straight to the store. Chain model: S/B + (N-1)·256 KiB/B. \
         Hosts' --block-source-timeout: {}.\n\n\
         | mode | hosts | store egress | × image | boot p50 | boot p99 | whole p50 | whole p99 | all done | chain model | tier blocks | session fallbacks (late) | rejected | failed hosts |\n\
         |---|---|---|---|---|---|---|---|---|---|---|---|---|---|\n",
        o.link.rtt.as_secs_f64() * 1e3,
        o.link.bytes_per_sec.map_or("unlimited".into(), |b| format!(
            "{:.0} Mbit/s",
            b * 8.0 / 1e6
        )),
        size / MIB,
        min as f64 / MIB as f64,
        trace.len(),
        trace.iter().map(|t| u64::from(t.len)).sum::<u64>() as f64 / MIB as f64,
        o.tier_timeout
            .map_or("the default (10 s)".into(), |t| format!("{t} s")),
    );
    for r in &rows {
        md.push_str(&format!(
            "| {} | {} | {:.1} MiB | {:.2}× | {:.1} s | {:.1} s | {:.1} s | {:.1} s | {:.1} s | {:.1} s | {} | {} ({}) | {} | {} |\n",
            r.mode,
            r.hosts,
            r.egress_bytes as f64 / MIB as f64,
            r.egress_ratio,
            r.boot_p50_s,
            r.boot_p99_s,
            r.all_p50_s,
            r.all_p99_s,
            r.all_done_s,
            r.chain_model_s,
            r.tier_blocks,
            r.fallbacks,
            r.late,
            r.rejected,
            r.failed_hosts
        ));
    }
    print!("{md}");
    std::fs::write(o.out.join(format!("fanout-{}.md", o.name)), &md)?;
    std::fs::write(
        o.out.join(format!("fanout-{}.json", o.name)),
        serde_json::to_vec_pretty(&serde_json::json!({ "link": o.link, "rows": rows }))?,
    )?;
    let failed: usize = rows.iter().map(|r| r.failed_hosts).sum();
    anyhow::ensure!(failed == 0, "{failed} hosts failed or ran out of time");
    Ok(())
}
