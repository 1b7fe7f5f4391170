//! The contenders of `bench run`: gridvfs (per transport) and each tool users would pick
//! instead, behind one [`Contender`] trait: each measures its workloads on the same [`Bed`]
//! (data, store, link) and pushes one row per measurement to the run's [`Ctx`].

use std::net::SocketAddr;
use std::path::Path;
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::AtomicU64;
use std::time::Duration;

use gridvfs_testkit::sshd::Sshd;

use crate::Transport;
use crate::data::DataSet;
use crate::link::Relay;
use crate::nfsread;
use crate::peers::{self, Daemon, Rclone, Run, Sshfs, bounded, command_copy};
use crate::report::Row;

/// What every contender measures against, the same for all in one run.
pub struct Bed<'a> {
    pub ds: &'a DataSet,
    pub mem_size: u64,
    /// W4 writes this much of the memory image as a redo log.
    pub w4_bytes: u64,
    /// A workload stops (row marked incomplete) after this long.
    pub bound: Duration,
    /// Scratch space for caches and mount points, removed with the run.
    pub work: &'a Path,
    pub sshd: Option<&'a Sshd>,
    /// The store's SSH port as reached through the link (the relay's, or sshd's own).
    pub port: u16,
    pub relay: Option<&'a Relay>,
    /// gridvfs's own `--transport pipe` store (a server bridge) and its relay.
    pub gridvfs_target: SocketAddr,
    pub gridvfs_relay: Option<&'a Relay>,
    pub client_bin: &'a Path,
    pub server_bin: &'a Path,
    pub bench_bin: &'a Path,
    /// `--block-size` for the gridvfs client.
    pub block_size: Option<u64>,
    /// The other W2 traces (workload name, reads), gridvfs cold each.
    pub shapes: Vec<(&'static str, Vec<crate::data::TraceRead>)>,
    /// gridvfs's W2 rows also with `--fill off`.
    pub compare_fill: bool,
    /// gridvfs: only the cold W2 rows (tuning runs).
    pub w2_only: bool,
}

impl Bed<'_> {
    /// W1 through the NFS server on `port`: the memory image whole, 8 READs in flight,
    /// bounded; every byte compared with the original.
    async fn nfs_w1(&self, port: u16) -> anyhow::Result<Run> {
        let done = Arc::new(AtomicU64::new(0));
        bounded(self.bound, done.clone(), async {
            nfsread::read_whole(
                port,
                "vm1.mem",
                self.mem_size,
                &self.ds.mem,
                8,
                done.clone(),
            )
            .await
            .map(Some)
        })
        .await
    }

    /// W2 through the NFS server on `port`: the boot trace replayed, bounded.
    async fn nfs_w2(&self, port: u16) -> anyhow::Result<Run> {
        self.nfs_trace(port, &self.ds.trace).await
    }

    /// `trace` replayed over the disk image through the NFS server on `port`, bounded.
    async fn nfs_trace(&self, port: u16, trace: &[crate::data::TraceRead]) -> anyhow::Result<Run> {
        let done = Arc::new(AtomicU64::new(0));
        bounded(self.bound, done.clone(), async {
            nfsread::replay(port, "vm1.img", trace, &self.ds.disk, done.clone())
                .await
                .map(Some)
        })
        .await
    }

    fn sshd(&self) -> anyhow::Result<&Sshd> {
        self.sshd
            .ok_or_else(|| anyhow::anyhow!("this contender needs the store's sshd"))
    }
}

/// One tool measured in the run.
pub trait Contender {
    /// Run this contender's workloads on `bed`, one row each into `ctx`.
    async fn measure<'a>(&self, bed: &Bed<'a>, ctx: &mut Ctx<'a>) -> anyhow::Result<()>;
}

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

/// The rows measured so far, and the link whose bytes they count.
pub struct Ctx<'a> {
    pub relay: Option<&'a Relay>,
    pub rows: Vec<Row>,
    /// Each workload's physical limit (seconds), for the × limit column.
    pub limits: Vec<(&'static str, f64)>,
}

impl Ctx<'_> {
    /// The link's byte counters now, to subtract after a measurement.
    pub fn snapshot(&self) -> (u64, u64) {
        self.relay.map_or((0, 0), |r| r.bytes())
    }

    #[allow(clippy::too_many_arguments)] // one call per measured row; a struct would only rename them
    /// Record one measured row (and print it as it lands).
    pub fn push(
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

/// gridvfs over one transport: W1, W2 cold; W3 warm after a restart; W4 write-through;
/// W2 cold with the recorded profile; W1 through the kernel client (`kernel`); W4
/// write-back.
pub struct Gridvfs {
    pub transport: Transport,
    /// Also W1 through the Linux kernel client in a guest.
    pub kernel: bool,
}

impl Contender for Gridvfs {
    async fn measure<'a>(&self, bed: &Bed<'a>, ctx: &mut Ctx<'a>) -> anyhow::Result<()> {
        let name = match self.transport {
            Transport::Russh => "gridvfs-russh",
            Transport::Ssh => "gridvfs-ssh",
            Transport::Pipe => "gridvfs-tcp",
        };
        let ssh_url = format!("ssh://root@127.0.0.1:{}{}", bed.port, bed.ds.dir.display());
        let (remote, flags) = match self.transport {
            Transport::Russh => {
                let s = bed.sshd()?;
                let flags = vec![
                    "-i".to_string(),
                    s.key.display().to_string(),
                    "--known-hosts".into(),
                    bed.work.join("known_hosts").display().to_string(),
                    "--accept-new-host-key".into(),
                    "--server-command".into(),
                    bed.server_bin.display().to_string(),
                ];
                (ssh_url, flags)
            }
            Transport::Ssh => {
                let s = bed.sshd()?;
                let opts = s.ssh_opts(bed.port);
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
                    bed.server_bin.display().to_string(),
                ];
                (ssh_url, flags)
            }
            Transport::Pipe => {
                let p = bed
                    .gridvfs_relay
                    .as_ref()
                    .map_or(bed.gridvfs_target.port(), |r| r.addr.port());
                let remote = format!("exec:{} connect 127.0.0.1:{p}", bed.bench_bin.display());
                (remote, Vec::new())
            }
        };
        let mut flags = flags;
        if let Some(bs) = bed.block_size {
            flags.extend(["--block-size".to_string(), bs.to_string()]);
        }
        let flags: Vec<&str> = flags.iter().map(String::as_str).collect();
        let gctx_relay = if self.transport == Transport::Pipe {
            bed.gridvfs_relay
        } else {
            bed.relay
        };
        let saved = ctx.relay;
        ctx.relay = gctx_relay;
        let cache = bed.work.join(format!("{name}-cache"));
        // No profile from an earlier run or transport: W2 cold starts bare.
        let profile_hint = bed.ds.dir.join(".vm1.img.gvhint");
        let _ = std::fs::remove_file(&profile_hint);
        if bed.w2_only {
            self.traces(bed, ctx, name, &remote, &flags).await?;
            ctx.relay = saved;
            return Ok(());
        }
        for round in ["cold", "warm"] {
            let client = Daemon::gridvfs(bed.client_bin, &remote, &cache, &flags)?;
            let (w1, w2) = if round == "cold" {
                ("W1", "W2")
            } else {
                ("W3 (W1 again)", "W3 (W2 again)")
            };
            let before = ctx.snapshot();
            let r = bed.nfs_w1(client.port).await?;
            ctx.push(
                name,
                w1,
                "W1",
                r,
                before,
                client.peak_rss_mib(),
                "8 NFS connections, 1 MiB READs",
            );
            let before = ctx.snapshot();
            if round == "cold" {
                // The cold boot is recorded: its profile drives `W2 (profile)`.
                peers::gridvfs_control(bed.client_bin, &["profile", "start"], &cache)?;
            }
            let r = bed.nfs_w2(client.port).await?;
            if round == "cold" {
                peers::gridvfs_control(bed.client_bin, &["profile", "save", "vm1.img"], &cache)?;
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
                let r = w4_write(client.port, &bed.ds.mem, bed.w4_bytes, bed.bound).await?;
                ctx.push(
                    name,
                    "W4",
                    "",
                    r,
                    before,
                    client.peak_rss_mib(),
                    "write + COMMIT",
                );
                let _ = std::fs::remove_file(bed.ds.dir.join("redo.log"));
            }
        }
        // W2 once more, cold (empty cache, new client), with the recorded profile:
        // the first read starts a prefetch in boot order.
        let profile_cache = bed.work.join(format!("{name}-profile-cache"));
        let client = Daemon::gridvfs(bed.client_bin, &remote, &profile_cache, &flags)?;
        let before = ctx.snapshot();
        let r = bed.nfs_w2(client.port).await?;
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
        self.traces(bed, ctx, name, &remote, &flags).await?;
        if self.kernel {
            let kcache = bed.work.join(format!("{name}-kernel-cache"));
            let client = Daemon::gridvfs(bed.client_bin, &remote, &kcache, &flags)?;
            let before = ctx.snapshot();
            let share = bed.work.join("guest-share");
            let secs = peers::kernel_read(client.port, "vm1.mem", &bed.ds.mem, &share)?;
            let r = Run {
                seconds: secs,
                bytes: bed.mem_size,
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
        let wb_cache = bed.work.join(format!("{name}-wb-cache"));
        let wb_flags: Vec<&str> = flags
            .iter()
            .copied()
            .chain(["--write-policy", "back"])
            .collect();
        let client = Daemon::gridvfs(bed.client_bin, &remote, &wb_cache, &wb_flags)?;
        let before = ctx.snapshot();
        let t = std::time::Instant::now();
        let r = w4_write(client.port, &bed.ds.mem, bed.w4_bytes, bed.bound).await?;
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
        let flushed = Command::new(bed.client_bin)
            .args(["flush", "--cache-dir"])
            .arg(&wb_cache)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .status()?;
        anyhow::ensure!(flushed.success(), "gridvfs-client flush failed");
        let on_store = std::fs::metadata(bed.ds.dir.join("redo.log"))
            .map(|m| m.len())
            .unwrap_or(0);
        let r = Run {
            seconds: t.elapsed().as_secs_f64(),
            bytes: on_store.min(bed.w4_bytes),
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
        let _ = std::fs::remove_file(bed.ds.dir.join("redo.log"));
        ctx.relay = saved;
        Ok(())
    }
}

impl Gridvfs {
    /// W2 over each trace generator, each from an empty cache (and, to compare, the same
    /// with the background fill off).
    async fn traces<'a>(
        &self,
        bed: &Bed<'a>,
        ctx: &mut Ctx<'a>,
        name: &str,
        remote: &str,
        flags: &[&str],
    ) -> anyhow::Result<()> {
        let fills: &[bool] = if bed.compare_fill {
            &[true, false]
        } else {
            &[true]
        };
        for &fill in fills {
            let main = std::iter::once(("W2", &bed.ds.trace[..]));
            let others = bed.shapes.iter().map(|(w, t)| (*w, &t[..]));
            for (w, trace) in main.chain(others) {
                if fill && w == "W2" && !bed.w2_only {
                    continue; // measured above
                }
                let tag = w.trim_start_matches("W2 (").trim_end_matches(')');
                let cache = bed.work.join(format!("{name}-{tag}-{fill}-cache"));
                let mut f = flags.to_vec();
                if !fill {
                    f.extend(["--fill", "off"]);
                }
                let client = Daemon::gridvfs(bed.client_bin, remote, &cache, &f)?;
                let before = ctx.snapshot();
                let r = bed.nfs_trace(client.port, trace).await?;
                let peer = if fill {
                    name.to_string()
                } else {
                    format!("{name} --fill off")
                };
                let note = format!(
                    "single-threaded preads, cold{}",
                    peers::gridvfs_sources(bed.client_bin, &cache)
                );
                ctx.push(&peer, w, w, r, before, client.peak_rss_mib(), &note);
            }
        }
        Ok(())
    }
}

/// sshfs (defaults, or tuned for large reads): W1, W2, W4 through the FUSE mount.
pub struct SshfsPeer {
    pub tuned: bool,
}

impl Contender for SshfsPeer {
    async fn measure<'a>(&self, bed: &Bed<'a>, ctx: &mut Ctx<'a>) -> anyhow::Result<()> {
        let tuned = self.tuned;
        let name = if tuned { "sshfs-tuned" } else { "sshfs" };
        let s = bed.sshd()?;
        let mnt = bed.work.join(name);
        let m = Sshfs::mount(&mnt, &bed.ds.dir, bed.port, &s.key, tuned)?;
        for (w, limit) in [("W1", "W1"), ("W2", "W2"), ("W4", "")] {
            let before = ctx.snapshot();
            let r = peers::fs_workload(&m.mnt, w, bed.ds, bed.w4_bytes, bed.bound).await?;
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
            let _ = std::fs::remove_file(bed.ds.dir.join("redo.log"));
        }
        drop(m);
        Ok(())
    }
}

/// The warm ceiling: the same NFS reader against a plain `std::fs` mirror on nfs3_server.
pub struct Mirror;

impl Contender for Mirror {
    async fn measure<'a>(&self, bed: &Bed<'a>, ctx: &mut Ctx<'a>) -> anyhow::Result<()> {
        let m = Daemon::mirror(bed.bench_bin, &bed.ds.dir)?;
        // One untimed pass puts the files in the page cache, as a warm gridvfs
        // cache is (in its page cache or on its disk).
        let warm = Arc::new(AtomicU64::new(0));
        nfsread::read_whole(
            m.port,
            "vm1.mem",
            bed.mem_size,
            &bed.ds.mem,
            8,
            warm.clone(),
        )
        .await?;
        nfsread::replay(m.port, "vm1.img", &bed.ds.trace, &bed.ds.disk, warm).await?;
        for (w, limit) in [("W3 (W1 again)", "W1"), ("W3 (W2 again)", "W2")] {
            let before = ctx.snapshot();
            let r = if limit == "W1" {
                bed.nfs_w1(m.port).await?
            } else {
                bed.nfs_w2(m.port).await?
            };
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
        Ok(())
    }
}

/// rclone mount over sftp with `--vfs-cache-mode full`: cold, then warm after a remount.
pub struct RclonePeer;

impl Contender for RclonePeer {
    async fn measure<'a>(&self, bed: &Bed<'a>, ctx: &mut Ctx<'a>) -> anyhow::Result<()> {
        // Cold, then warm after a remount that keeps rclone's cache directory.
        let s = bed.sshd()?;
        let (mnt, cache) = (bed.work.join("rclone"), bed.work.join("rclone-cache"));
        for round in ["cold", "warm"] {
            let m = Rclone::mount(&mnt, &bed.ds.dir, bed.port, &s.key, &cache)?;
            let (w1, w2) = if round == "cold" {
                ("W1", "W2")
            } else {
                ("W3 (W1 again)", "W3 (W2 again)")
            };
            for (w, limit) in [(w1, "W1"), (w2, "W2")] {
                let before = ctx.snapshot();
                let r = peers::fs_workload(&m.mnt, limit, bed.ds, bed.w4_bytes, bed.bound).await?;
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
        Ok(())
    }
}

/// scp of the memory image (W1 only).
pub struct Scp;

impl Contender for Scp {
    async fn measure<'a>(&self, bed: &Bed<'a>, ctx: &mut Ctx<'a>) -> anyhow::Result<()> {
        let s = bed.sshd()?;
        let dst = bed.work.join("scp.out");
        let mut cmd = Command::new("scp");
        let mut opts = s.ssh_opts(bed.port);
        opts[2] = "-P".into();
        cmd.arg("-q")
            .args(&opts)
            .arg(format!("root@127.0.0.1:{}", bed.ds.mem.display()))
            .arg(&dst);
        let before = ctx.snapshot();
        let r = command_copy(cmd, &dst, bed.bound).await?;
        ctx.push("scp", "W1", "W1", r, before, None, "");
        let _ = std::fs::remove_file(&dst);
        Ok(())
    }
}

/// `ssh host 'zstd -1 -c FILE' | zstd -d`: the compressed-copy bar for W1, and for W2 the
/// whole disk image copied first (what a cold boot can always fall back on; the trace
/// then reads a local file).
pub struct SshZstd;

impl Contender for SshZstd {
    async fn measure<'a>(&self, bed: &Bed<'a>, ctx: &mut Ctx<'a>) -> anyhow::Result<()> {
        let s = bed.sshd()?;
        let dst = bed.work.join("zstd.out");
        for (w, file, note) in [
            ("W1", &bed.ds.mem, "ssh host 'zstd -1 -c' | zstd -d"),
            (
                "W2",
                &bed.ds.disk,
                "the whole disk image first: ssh host 'zstd -1 -c' | zstd -d",
            ),
        ] {
            let mut cmd = Command::new("sh");
            cmd.arg("-c").arg(format!(
                "ssh {} root@127.0.0.1 'zstd -1 -q -c {}' | zstd -d -q -f -o {}",
                s.ssh_opts(bed.port).join(" "),
                file.display(),
                dst.display()
            ));
            let before = ctx.snapshot();
            let r = command_copy(cmd, &dst, bed.bound).await?;
            ctx.push("ssh+zstd", w, w, r, before, None, note);
            let _ = std::fs::remove_file(&dst);
        }
        Ok(())
    }
}
