//! `bench run`: the suite of workloads (W1 read a memory image whole, W2 replay a boot
//! trace, W3 warm re-reads, W4 write a redo log) through gridvfs and each peer, over one
//! emulated link, into one report.

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use anyhow::bail;
use gridvfs_testkit::sshd::Sshd;

use crate::contenders::{
    Bed, Contender, Ctx, Gridvfs, Mirror, RclonePeer, Scp, SshZstd, SshfsPeer,
};
use crate::data::{self, DataSpec};
use crate::link::{self, Relay};
use crate::peers::Run;
use crate::report;
use crate::setup::{ensure_tools, server_bridge, sibling};
use crate::{Peer, Profile, Size, Transport};

/// Knobs of one run.
pub struct RunOpts {
    /// Stop a workload after this many seconds.
    pub bound: u64,
    /// `--block-size` for the gridvfs client.
    pub block_size: Option<u64>,
    /// W2 again over these other trace generators (`data::SHAPES`), gridvfs cold each.
    pub shapes: Vec<&'static str>,
    /// gridvfs's W2 rows also with `--fill off`, side by side.
    pub compare_fill: bool,
    /// gridvfs: only the cold W2 rows.
    pub w2_only: bool,
}

/// One `bench run`: every peer through every workload over one emulated link, side by
/// side; writes NAME.{md,json,svg} to `out`.
pub async fn run(
    profile: Profile,
    size: Size,
    peers: &[Peer],
    transports: &[Transport],
    opts: RunOpts,
    out: &Path,
    data_root: &Path,
) -> anyhow::Result<()> {
    let pipe = transports.contains(&Transport::Pipe);
    let bound = Duration::from_secs(opts.bound);
    let spec = if size == Size::Full {
        DataSpec::full()
    } else {
        DataSpec::tiny()
    };
    let client_bin = sibling("gridvfs-client")?;
    let server_bin = sibling("gridvfs-server")?;
    let bench_bin = std::env::current_exe()?;
    let needs_ssh = transports.iter().any(|t| *t != Transport::Pipe)
        || peers
            .iter()
            .any(|p| !matches!(p, Peer::Gridvfs | Peer::Mirror));
    if needs_ssh {
        ensure_tools(&[
            ("rclone", "rclone"),
            ("sshd", "openssh-server"),
            ("ssh", "openssh-client"),
            ("zstd", "zstd"),
            ("sshfs", "sshfs"),
            ("fusermount3", "fuse3"),
        ])?;
        if Path::new("/usr/sbin/sshd").exists() {
            // fine
        } else {
            bail!("sshd missing after install");
        }
    }
    let ds = data::ensure(data_root, spec)?;
    let mem_size = std::fs::metadata(&ds.mem)?.len();
    let trace_bytes: u64 = ds.trace.iter().map(|t| u64::from(t.len)).sum();
    let work = tempfile::tempdir()?;

    // The physical limit: what must cross at the least, at the link's rate, plus one RTT.
    let link = profile.link();
    eprintln!("bench: computing the physical limit (zstd -1 of the non-zero pages) ...");
    let w1_min = data::compressed_nonzero(&ds.mem, &[(0, mem_size)])?;
    let w2_min = data::compressed_nonzero(&ds.disk, &data::trace_ranges(&ds.trace))?;
    let mut shapes = Vec::new();
    for shape in &opts.shapes {
        let trace = data::shaped_trace(&ds, shape, trace_bytes)?;
        let min = data::compressed_nonzero(&ds.disk, &data::trace_ranges(&trace))?;
        let bytes: u64 = trace.iter().map(|t| u64::from(t.len)).sum();
        let workload: &'static str = Box::leak(format!("W2 ({shape})").into_boxed_str());
        shapes.push((workload, trace, bytes, min));
    }
    let limit_s = |bytes: u64| {
        link.and_then(|l| {
            l.bytes_per_sec
                .map(|bw| bytes as f64 / bw + l.rtt.as_secs_f64())
        })
    };

    let sshd = if needs_ssh {
        Some(Sshd::start(&work.path().join("sshd"))?)
    } else {
        None
    };
    let target = match &sshd {
        Some(s) => s.addr(),
        None => server_bridge(server_bin.clone(), ds.dir.clone()).await?,
    };
    let gridvfs_target = if pipe {
        server_bridge(server_bin.clone(), ds.dir.clone()).await?
    } else {
        target
    };
    let verification = match link {
        Some(l) => {
            let v = link::verify(l).await?;
            eprintln!(
                "bench: link check: RTT {:.1} ms (set {:.1}), throughput {} MB/s (cap {}) -> {}",
                v.rtt_ms_median,
                v.rtt_ms_set,
                v.throughput_mb_s.map_or("-".into(), |t| format!("{t:.2}")),
                v.throughput_cap_mb_s
                    .map_or("-".into(), |t| format!("{t:.2}")),
                if v.ok { "ok" } else { "OUT OF TOLERANCE" }
            );
            Some(v)
        }
        None => None,
    };
    let relay = match link {
        Some(l) => Some(Relay::start(l, target).await?),
        None => None,
    };
    let gridvfs_relay = match link {
        Some(l) if pipe => Some(Relay::start(l, gridvfs_target).await?),
        _ => None,
    };
    let port = relay.as_ref().map_or(target.port(), |r| r.addr.port());

    let mut ctx = Ctx {
        relay: relay.as_ref(),
        rows: Vec::new(),
        limits: Vec::new(),
    };
    if let (Some(w1), Some(w2)) = (limit_s(w1_min), limit_s(w2_min)) {
        ctx.limits = vec![("W1", w1), ("W2", w2)];
        let mut limits = vec![
            ("W1", w1, mem_size, w1_min),
            ("W2", w2, trace_bytes, w2_min),
        ];
        for (w, _, bytes, min) in &shapes {
            if let Some(s) = limit_s(*min) {
                ctx.limits.push((w, s));
                limits.push((w, s, *bytes, *min));
            }
        }
        for (w, secs, bytes, min) in limits {
            let run = Run {
                seconds: secs,
                bytes,
                first_byte_s: None,
                complete: true,
            };
            let note = format!(
                "{:.1} MiB must cross (zstd -1 of non-zero pages)",
                min as f64 / (1u64 << 20) as f64
            );
            ctx.push("limit", w, w, run, ctx.snapshot(), None, &note);
            ctx.rows.last_mut().expect("pushed").link_bytes = Some(min);
        }
    }
    let w4_bytes = mem_size.min(512 << 20);

    let bed = Bed {
        ds: &ds,
        mem_size,
        w4_bytes,
        bound,
        work: work.path(),
        sshd: sshd.as_ref(),
        port,
        relay: relay.as_ref(),
        gridvfs_target,
        gridvfs_relay: gridvfs_relay.as_ref(),
        client_bin: &client_bin,
        server_bin: &server_bin,
        bench_bin: &bench_bin,
        block_size: opts.block_size,
        shapes: shapes.iter().map(|(w, t, ..)| (*w, t.clone())).collect(),
        compare_fill: opts.compare_fill,
        w2_only: opts.w2_only,
    };
    for peer in peers {
        match peer {
            Peer::Gridvfs => {
                for &transport in transports {
                    let kernel = peers.contains(&Peer::Kernel) && transport == transports[0];
                    let c = Gridvfs { transport, kernel };
                    c.measure(&bed, &mut ctx).await?;
                }
            }
            Peer::Kernel => {} // with the gridvfs rows
            Peer::Sshfs => SshfsPeer { tuned: false }.measure(&bed, &mut ctx).await?,
            Peer::SshfsTuned => SshfsPeer { tuned: true }.measure(&bed, &mut ctx).await?,
            Peer::Mirror => Mirror.measure(&bed, &mut ctx).await?,
            Peer::Rclone => RclonePeer.measure(&bed, &mut ctx).await?,
            Peer::Scp => Scp.measure(&bed, &mut ctx).await?,
            Peer::SshZstd => SshZstd.measure(&bed, &mut ctx).await?,
        }
    }

    // Report.
    let mut rows = ctx.rows;
    let order = |w: &str| {
        ["W1", "W2", "W3 (W1 again)", "W3 (W2 again)", "W4"]
            .iter()
            .position(|x| *x == w)
            .unwrap_or(if w.starts_with("W2 (") { 2 } else { 9 })
    };
    rows.sort_by_key(|r| order(&r.workload));
    let mut table = report::table(&rows);
    let ceiling = report::vs_ceiling(&rows);
    if !ceiling.is_empty() {
        table.push_str("\nWarm reads against the ceiling (same reader, same run):\n\n");
        table.push_str(&ceiling);
    }
    let uname = Command::new("uname")
        .arg("-srm")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_default();
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|c| {
            c.lines()
                .find(|l| l.starts_with("model name"))
                .map(|l| l.split(':').nth(1).unwrap_or("").trim().to_string())
        })
        .unwrap_or_default();
    let date = Command::new("date")
        .args(["-u", "+%Y-%m-%d %H:%M UTC"])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_default();
    let command = std::env::args().collect::<Vec<_>>().join(" ");
    let name = format!("{profile:?}").to_lowercase();
    std::fs::create_dir_all(out)?;
    let json = serde_json::json!({
        "profile": name, "link": link, "link_check": verification, "data": spec,
        "machine": format!("{uname}; {cpu}; {} cores", std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0)),
        "date": date, "command": command, "rows": rows,
    });
    std::fs::write(
        out.join(format!("{name}.json")),
        serde_json::to_string_pretty(&json)?,
    )?;
    let md = format!(
        "## {name}\n\n{date} · {uname}; {cpu} · `{command}`\n\nlink: {}\n\n{table}",
        match (&link, &verification) {
            (Some(l), Some(v)) => format!(
                "RTT {:.0} ms, {} — checked: RTT {:.1} ms, {} MB/s",
                l.rtt.as_secs_f64() * 1000.0,
                l.bytes_per_sec
                    .map_or("unlimited".into(), |b| format!("{:.1} MB/s", b / 1e6)),
                v.rtt_ms_median,
                v.throughput_mb_s.map_or("-".into(), |t| format!("{t:.2}"))
            ),
            _ => "none (loopback)".into(),
        }
    );
    std::fs::write(out.join(format!("{name}.md")), &md)?;
    std::fs::write(
        out.join(format!("{name}.svg")),
        report::svg(&format!("gridvfs bench: {name}"), &rows),
    )?;
    println!("{md}");
    println!("wrote {}/{name}.{{md,json,svg}}", out.display());
    if let Some(v) = verification {
        anyhow::ensure!(
            v.ok,
            "the link emulator is out of tolerance; figures are not trustworthy"
        );
    }
    Ok(())
}
