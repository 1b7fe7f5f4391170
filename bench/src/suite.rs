//! `bench run`: the suite of workloads (W1 read a memory image whole, W2 replay a boot
//! trace, W3 warm re-reads, W4 write a redo log) through gridvfs and each peer, over one
//! emulated link, into one report.

use std::path::Path;
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::AtomicU64;
use std::time::Duration;

use anyhow::bail;
use gridvfs_testkit::sshd::Sshd;

use crate::data::{self, DataSpec};
use crate::link::{self, Relay};
use crate::nfsread;
use crate::peers::{self, Daemon, Rclone, Run, Sshfs, bounded, command_copy};
use crate::report::{self, Row};
use crate::setup::{ensure_tools, server_bridge, sibling};
use crate::{Peer, Profile, Size, Transport};

/// W4 through a gridvfs client: write `bytes` of `src` as `redo.log`, then COMMIT.
async fn w4_write(port: u16, src: &Path, bytes: u64, bound: Duration) -> anyhow::Result<Run> {
    let done = Arc::new(AtomicU64::new(0));
    bounded(bound, done.clone(), async {
        nfsread::write_then_commit(port, "redo.log", src, bytes, 8, done.clone())
            .await
            .map(|()| None)
    })
    .await
}

/// Link bytes, both directions, since `before`.
fn link_delta(relay: Option<&Relay>, before: (u64, u64)) -> Option<u64> {
    relay.map(|r| {
        let (u, d) = r.bytes();
        (u - before.0) + (d - before.1)
    })
}

struct Ctx<'a> {
    relay: Option<&'a Relay>,
    rows: Vec<Row>,
    limits: Vec<(&'static str, f64)>,
}

impl Ctx<'_> {
    fn snapshot(&self) -> (u64, u64) {
        self.relay.map_or((0, 0), |r| r.bytes())
    }

    #[allow(clippy::too_many_arguments)] // one call per measured row; a struct would only rename them
    fn push(
        &mut self,
        peer: &str,
        workload: &str,
        limit_of: &str,
        run: Run,
        before: (u64, u64),
        rss: Option<f64>,
        note: &str,
    ) {
        let limit = self
            .limits
            .iter()
            .find(|(w, _)| *w == limit_of)
            .map(|(_, s)| *s);
        let row = Row {
            peer: peer.into(),
            workload: workload.into(),
            seconds: run.seconds,
            bytes: run.bytes,
            mb_s: run.bytes as f64 / run.seconds.max(1e-9) / 1e6,
            first_byte_s: run.first_byte_s,
            link_bytes: link_delta(self.relay, before),
            vs_limit: limit.filter(|l| *l > 0.0).map(|l| run.seconds / l),
            client_rss_mib: rss,
            complete: run.complete,
            note: note.into(),
        };
        eprintln!(
            "bench: {workload:14} {peer:12} {:>8.2} s {:>8.1} MB/s{}",
            row.seconds,
            row.mb_s,
            if row.complete {
                ""
            } else {
                "  (stopped at the bound)"
            }
        );
        self.rows.push(row);
    }
}

/// Knobs of one run.
pub struct RunOpts {
    /// Stop a workload after this many seconds.
    pub bound: u64,
    /// `--block-size` for the gridvfs client.
    pub block_size: Option<u64>,
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
        for (w, secs, bytes, min) in [
            ("W1", w1, mem_size, w1_min),
            ("W2", w2, trace_bytes, w2_min),
        ] {
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

    for peer in peers {
        match peer {
            Peer::Gridvfs => {
                for &transport in transports {
                    let name = match transport {
                        Transport::Russh => "gridvfs-russh",
                        Transport::Ssh => "gridvfs-ssh",
                        Transport::Pipe => "gridvfs-tcp",
                    };
                    let ssh_url = format!("ssh://root@127.0.0.1:{port}{}", ds.dir.display());
                    let (remote, flags) = match transport {
                        Transport::Russh => {
                            let s = sshd.as_ref().expect("sshd");
                            let flags = vec![
                                "-i".to_string(),
                                s.key.display().to_string(),
                                "--known-hosts".into(),
                                work.path().join("known_hosts").display().to_string(),
                                "--accept-new-host-key".into(),
                                "--server-command".into(),
                                server_bin.display().to_string(),
                            ];
                            (ssh_url, flags)
                        }
                        Transport::Ssh => {
                            let s = sshd.as_ref().expect("sshd");
                            let opts = s.ssh_opts(port);
                            // The client adds `-p PORT` itself.
                            let opts: Vec<&str> = opts
                                .iter()
                                .map(String::as_str)
                                .collect::<Vec<_>>()
                                .chunks(2)
                                .filter(|kv| kv[0] != "-p")
                                .flatten()
                                .copied()
                                .collect();
                            let flags = vec![
                                "--ssh-command".to_string(),
                                format!("ssh {}", opts.join(" ")),
                                "--server-command".into(),
                                server_bin.display().to_string(),
                            ];
                            (ssh_url, flags)
                        }
                        Transport::Pipe => {
                            let p = gridvfs_relay
                                .as_ref()
                                .map_or(gridvfs_target.port(), |r| r.addr.port());
                            let remote =
                                format!("exec:{} connect 127.0.0.1:{p}", bench_bin.display());
                            (remote, Vec::new())
                        }
                    };
                    let mut flags = flags;
                    if let Some(bs) = opts.block_size {
                        flags.extend(["--block-size".to_string(), bs.to_string()]);
                    }
                    let flags: Vec<&str> = flags.iter().map(String::as_str).collect();
                    let gctx_relay = if transport == Transport::Pipe {
                        gridvfs_relay.as_ref()
                    } else {
                        relay.as_ref()
                    };
                    let saved = ctx.relay;
                    ctx.relay = gctx_relay;
                    let cache = work.path().join(format!("{name}-cache"));
                    // No profile from an earlier run or transport: W2 cold starts bare.
                    let profile_hint = ds.dir.join(".vm1.img.gvhint");
                    let _ = std::fs::remove_file(&profile_hint);
                    for round in ["cold", "warm"] {
                        let client = Daemon::gridvfs(&client_bin, &remote, &cache, &flags)?;
                        let (w1, w2) = if round == "cold" {
                            ("W1", "W2")
                        } else {
                            ("W3 (W1 again)", "W3 (W2 again)")
                        };
                        let done = Arc::new(AtomicU64::new(0));
                        let before = ctx.snapshot();
                        let r = bounded(bound, done.clone(), async {
                            nfsread::read_whole(
                                client.port,
                                "vm1.mem",
                                mem_size,
                                &ds.mem,
                                8,
                                done.clone(),
                            )
                            .await
                            .map(Some)
                        })
                        .await?;
                        ctx.push(
                            name,
                            w1,
                            "W1",
                            r,
                            before,
                            client.peak_rss_mib(),
                            "8 NFS connections, 1 MiB READs",
                        );
                        let done = Arc::new(AtomicU64::new(0));
                        let before = ctx.snapshot();
                        if round == "cold" {
                            // The cold boot is recorded: its profile drives `W2 (profile)`.
                            peers::gridvfs_control(&client_bin, &["profile", "start"], &cache)?;
                        }
                        let r = bounded(bound, done.clone(), async {
                            nfsread::replay(
                                client.port,
                                "vm1.img",
                                &ds.trace,
                                &ds.disk,
                                done.clone(),
                            )
                            .await
                            .map(Some)
                        })
                        .await?;
                        if round == "cold" {
                            peers::gridvfs_control(
                                &client_bin,
                                &["profile", "save", "vm1.img"],
                                &cache,
                            )?;
                        }
                        ctx.push(
                            name,
                            w2,
                            "W2",
                            r,
                            before,
                            client.peak_rss_mib(),
                            "single-threaded preads",
                        );
                        if round == "warm" {
                            let before = ctx.snapshot();
                            let r = w4_write(client.port, &ds.mem, w4_bytes, bound).await?;
                            ctx.push(
                                name,
                                "W4",
                                "",
                                r,
                                before,
                                client.peak_rss_mib(),
                                "write + COMMIT",
                            );
                            let _ = std::fs::remove_file(ds.dir.join("redo.log"));
                        }
                    }
                    // W2 once more, cold (empty cache, new client), with the recorded profile:
                    // the first read starts a prefetch in boot order.
                    let profile_cache = work.path().join(format!("{name}-profile-cache"));
                    let client = Daemon::gridvfs(&client_bin, &remote, &profile_cache, &flags)?;
                    let done = Arc::new(AtomicU64::new(0));
                    let before = ctx.snapshot();
                    let r = bounded(bound, done.clone(), async {
                        nfsread::replay(client.port, "vm1.img", &ds.trace, &ds.disk, done.clone())
                            .await
                            .map(Some)
                    })
                    .await?;
                    ctx.push(
                        name,
                        "W2 (profile)",
                        "W2",
                        r,
                        before,
                        client.peak_rss_mib(),
                        "cold, with the access profile recorded in W2",
                    );
                    drop(client);
                    let _ = std::fs::remove_file(&profile_hint);
                    if peers.contains(&Peer::Kernel) && transport == transports[0] {
                        let kcache = work.path().join(format!("{name}-kernel-cache"));
                        let client = Daemon::gridvfs(&client_bin, &remote, &kcache, &flags)?;
                        let before = ctx.snapshot();
                        let share = work.path().join("guest-share");
                        let secs = peers::kernel_read(client.port, "vm1.mem", &ds.mem, &share)?;
                        let r = Run {
                            seconds: secs,
                            bytes: mem_size,
                            first_byte_s: None,
                            complete: true,
                        };
                        let note = "Linux 6.1 NFS client in a QEMU (TCG) guest, dd bs=1M";
                        ctx.push(
                            name,
                            "W1 (kernel)",
                            "W1",
                            r,
                            before,
                            client.peak_rss_mib(),
                            note,
                        );
                    }
                    // W4 again under write-back: the VM sees local-disk latency; the upload
                    // follows (`flush`). Two rows: acknowledged, and on the store.
                    let wb_cache = work.path().join(format!("{name}-wb-cache"));
                    let wb_flags: Vec<&str> = flags
                        .iter()
                        .copied()
                        .chain(["--write-policy", "back"])
                        .collect();
                    let client = Daemon::gridvfs(&client_bin, &remote, &wb_cache, &wb_flags)?;
                    let before = ctx.snapshot();
                    let t = std::time::Instant::now();
                    let r = w4_write(client.port, &ds.mem, w4_bytes, bound).await?;
                    let acked = r.seconds;
                    ctx.push(
                        &format!("{name}-wb"),
                        "W4",
                        "",
                        r,
                        before,
                        client.peak_rss_mib(),
                        "write-back: acknowledged (in the local journal)",
                    );
                    let flushed = Command::new(&client_bin)
                        .args(["flush", "--cache-dir"])
                        .arg(&wb_cache)
                        .stdout(std::process::Stdio::null())
                        .stderr(std::process::Stdio::null())
                        .status()?;
                    anyhow::ensure!(flushed.success(), "gridvfs-client flush failed");
                    let on_store = std::fs::metadata(ds.dir.join("redo.log"))
                        .map(|m| m.len())
                        .unwrap_or(0);
                    let r = Run {
                        seconds: t.elapsed().as_secs_f64(),
                        bytes: on_store.min(w4_bytes),
                        first_byte_s: None,
                        complete: true,
                    };
                    ctx.push(
                        &format!("{name}-wb"),
                        "W4",
                        "",
                        r,
                        before,
                        client.peak_rss_mib(),
                        &format!("write-back: flushed to the store ({acked:.1} s to acknowledge)"),
                    );
                    drop(client);
                    let _ = std::fs::remove_file(ds.dir.join("redo.log"));
                    ctx.relay = saved;
                }
            }
            Peer::Sshfs | Peer::SshfsTuned => {
                let tuned = *peer == Peer::SshfsTuned;
                let name = if tuned { "sshfs-tuned" } else { "sshfs" };
                let s = sshd.as_ref().expect("sshd");
                let mnt = work.path().join(name);
                let m = Sshfs::mount(&mnt, &ds.dir, port, &s.key, tuned)?;
                for (w, limit) in [("W1", "W1"), ("W2", "W2"), ("W4", "")] {
                    let before = ctx.snapshot();
                    let r = peers::fs_workload(&m.mnt, w, &ds, w4_bytes, bound).await?;
                    ctx.push(
                        name,
                        w,
                        limit,
                        r,
                        before,
                        None,
                        if tuned {
                            "max_read=1M, read_ahead_kb=16384"
                        } else {
                            "defaults"
                        },
                    );
                    let _ = std::fs::remove_file(ds.dir.join("redo.log"));
                }
                drop(m);
            }
            Peer::Kernel => {} // with the gridvfs rows
            Peer::Mirror => {
                let m = Daemon::mirror(&bench_bin, &ds.dir)?;
                // One untimed pass puts the files in the page cache, as a warm gridvfs
                // cache is (in its page cache or on its disk).
                let warm = Arc::new(AtomicU64::new(0));
                nfsread::read_whole(m.port, "vm1.mem", mem_size, &ds.mem, 8, warm.clone()).await?;
                nfsread::replay(m.port, "vm1.img", &ds.trace, &ds.disk, warm).await?;
                for (w, limit) in [("W3 (W1 again)", "W1"), ("W3 (W2 again)", "W2")] {
                    let done = Arc::new(AtomicU64::new(0));
                    let before = ctx.snapshot();
                    let r = bounded(bound, done.clone(), async {
                        if limit == "W1" {
                            nfsread::read_whole(
                                m.port,
                                "vm1.mem",
                                mem_size,
                                &ds.mem,
                                8,
                                done.clone(),
                            )
                            .await
                        } else {
                            nfsread::replay(m.port, "vm1.img", &ds.trace, &ds.disk, done.clone())
                                .await
                        }
                        .map(Some)
                    })
                    .await?;
                    ctx.push(
                        "nfs-mirror",
                        w,
                        limit,
                        r,
                        before,
                        m.peak_rss_mib(),
                        "ceiling: std::fs mirror on nfs3_server, page-cached",
                    );
                }
            }
            Peer::Rclone => {
                // Cold, then warm after a remount that keeps rclone's cache directory.
                let s = sshd.as_ref().expect("sshd");
                let (mnt, cache) = (work.path().join("rclone"), work.path().join("rclone-cache"));
                for round in ["cold", "warm"] {
                    let m = Rclone::mount(&mnt, &ds.dir, port, &s.key, &cache)?;
                    let (w1, w2) = if round == "cold" {
                        ("W1", "W2")
                    } else {
                        ("W3 (W1 again)", "W3 (W2 again)")
                    };
                    for (w, limit) in [(w1, "W1"), (w2, "W2")] {
                        let before = ctx.snapshot();
                        let r = peers::fs_workload(&m.mnt, limit, &ds, w4_bytes, bound).await?;
                        ctx.push(
                            "rclone",
                            w,
                            limit,
                            r,
                            before,
                            None,
                            "sftp, --vfs-cache-mode full",
                        );
                    }
                    drop(m);
                }
            }
            Peer::Scp => {
                let s = sshd.as_ref().expect("sshd");
                let dst = work.path().join("scp.out");
                let mut cmd = Command::new("scp");
                let mut opts = s.ssh_opts(port);
                opts[2] = "-P".into();
                cmd.arg("-q")
                    .args(&opts)
                    .arg(format!("root@127.0.0.1:{}", ds.mem.display()))
                    .arg(&dst);
                let before = ctx.snapshot();
                let r = command_copy(cmd, &dst, bound).await?;
                ctx.push("scp", "W1", "W1", r, before, None, "");
                let _ = std::fs::remove_file(&dst);
            }
            Peer::SshZstd => {
                let s = sshd.as_ref().expect("sshd");
                let dst = work.path().join("zstd.out");
                let mut cmd = Command::new("sh");
                cmd.arg("-c").arg(format!(
                    "ssh {} root@127.0.0.1 'zstd -1 -q -c {}' | zstd -d -q -f -o {}",
                    s.ssh_opts(port).join(" "),
                    ds.mem.display(),
                    dst.display()
                ));
                let before = ctx.snapshot();
                let r = command_copy(cmd, &dst, bound).await?;
                ctx.push(
                    "ssh+zstd",
                    "W1",
                    "W1",
                    r,
                    before,
                    None,
                    "ssh host 'zstd -1 -c' | zstd -d",
                );
                let _ = std::fs::remove_file(&dst);
            }
        }
    }

    // Report.
    let mut rows = ctx.rows;
    let order = |w: &str| {
        ["W1", "W2", "W3 (W1 again)", "W3 (W2 again)", "W4"]
            .iter()
            .position(|x| *x == w)
            .unwrap_or(9)
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
