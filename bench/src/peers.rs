//! The contenders: gridvfs, and the tools users would pick instead (sshfs, scp, ssh+zstd),
//! each run against the same store through the same link.

use std::io::Read;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};

use crate::data::TraceRead;

/// Outcome of one bounded run.
pub struct Run {
    pub seconds: f64,
    pub bytes: u64,
    pub first_byte_s: Option<f64>,
    pub complete: bool,
}

/// Run `fut` for at most `bound`; `done` counts payload bytes so a stopped run still has
/// a partial rate.
pub async fn bounded<F>(bound: Duration, done: Arc<AtomicU64>, fut: F) -> anyhow::Result<Run>
where
    F: std::future::Future<Output = anyhow::Result<Option<f64>>>,
{
    let t = Instant::now();
    match tokio::time::timeout(bound, fut).await {
        Ok(r) => {
            let first = r?;
            Ok(Run {
                seconds: t.elapsed().as_secs_f64(),
                bytes: done.load(Ordering::Relaxed),
                first_byte_s: first,
                complete: true,
            })
        }
        Err(_) => Ok(Run {
            seconds: t.elapsed().as_secs_f64(),
            bytes: done.load(Ordering::Relaxed),
            first_byte_s: None,
            complete: false,
        }),
    }
}

/// A running `gridvfs-client serve`.
/// A serving child process that prints its port (the last `:`-separated field of its
/// first stdout line): a gridvfs client proxy, or the `mirror` ceiling.
pub struct Daemon {
    pub child: Child,
    pub port: u16,
}

impl Daemon {
    /// A gridvfs client proxy for `remote`, caching in `cache`.
    pub fn gridvfs(
        client_bin: &Path,
        remote: &str,
        cache: &Path,
        extra: &[&str],
    ) -> anyhow::Result<Self> {
        let mut cmd = Command::new(client_bin);
        cmd.args([
            "serve",
            "--remote",
            remote,
            "--listen",
            "127.0.0.1:0",
            "--cache-dir",
        ])
        .arg(cache)
        // The bench's reader connects from an unprivileged port as root; the NFS
        // front's checks still run for every call (they cost what they cost).
        .args(["--allow-unprivileged-ports", "--no-root-squash"])
        .args(extra);
        Self::spawn(cmd, "gridvfs-client")
    }

    /// The warm ceiling: `bench mirror DIR` (see mirror.rs).
    pub fn mirror(bench_bin: &Path, dir: &Path) -> anyhow::Result<Self> {
        let mut cmd = Command::new(bench_bin);
        cmd.arg("mirror").arg(dir);
        Self::spawn(cmd, "bench mirror")
    }

    fn spawn(mut cmd: Command, what: &str) -> anyhow::Result<Self> {
        let mut child = cmd
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .with_context(|| format!("start {what}"))?;
        let mut out = child.stdout.take().expect("stdout");
        let mut line = Vec::new();
        let mut b = [0u8; 1];
        while out.read(&mut b)? == 1 && b[0] != b'\n' {
            line.push(b[0]);
        }
        let line = String::from_utf8_lossy(&line).to_string();
        let Some(port) = line.rsplit(':').next().and_then(|p| p.trim().parse().ok()) else {
            let _ = child.kill();
            bail!("{what} did not start: {line:?}");
        };
        std::thread::spawn(move || std::io::copy(&mut out, &mut std::io::sink()));
        Ok(Self { child, port })
    }

    /// Peak resident memory so far (VmHWM), in MiB.
    pub fn peak_rss_mib(&self) -> Option<f64> {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id())).ok()?;
        let kb: f64 = status
            .lines()
            .find(|l| l.starts_with("VmHWM:"))?
            .split_whitespace()
            .nth(1)?
            .parse()
            .ok()?;
        Some(kb / 1024.0)
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A FUSE mount of the store made by sshfs.
pub struct Sshfs {
    pub mnt: PathBuf,
}

impl Sshfs {
    pub fn mount(
        mnt: &Path,
        store: &Path,
        port: u16,
        key: &Path,
        tuned: bool,
    ) -> anyhow::Result<Self> {
        std::fs::create_dir_all(mnt)?;
        let mut opts = format!(
            "IdentityFile={},StrictHostKeyChecking=no,UserKnownHostsFile=/dev/null,LogLevel=ERROR",
            key.display()
        );
        if tuned {
            opts.push_str(",max_read=1048576");
        }
        let ok = Command::new("sshfs")
            .arg("-p")
            .arg(port.to_string())
            .arg(format!("root@127.0.0.1:{}", store.display()))
            .arg(mnt)
            .args(["-o", &opts])
            .status()
            .context("run sshfs")?
            .success();
        anyhow::ensure!(ok, "sshfs mount failed");
        if tuned {
            // Raise the kernel's readahead on this FUSE mount's backing device.
            let dev = Command::new("mountpoint").arg("-d").arg(mnt).output()?;
            let dev = String::from_utf8_lossy(&dev.stdout).trim().to_string();
            std::fs::write(format!("/sys/class/bdi/{dev}/read_ahead_kb"), "16384")
                .with_context(|| format!("read_ahead_kb of bdi {dev}"))?;
        }
        Ok(Self {
            mnt: mnt.to_path_buf(),
        })
    }
}

impl Drop for Sshfs {
    fn drop(&mut self) {
        let _ = Command::new("fusermount3")
            .arg("-u")
            .arg(&self.mnt)
            .status();
        let _ = Command::new("umount")
            .arg("-l")
            .arg(&self.mnt)
            .stderr(Stdio::null())
            .status();
    }
}

/// W1 through a mounted file system: sequential 1 MiB reads, compared with the store.
pub fn fs_read_whole(path: &Path, local: &Path, done: &AtomicU64) -> anyhow::Result<Option<f64>> {
    let t = Instant::now();
    let f = std::fs::File::open(path)?;
    let l = std::fs::File::open(local)?;
    let (mut got, mut want) = (vec![0u8; 1 << 20], vec![0u8; 1 << 20]);
    let mut off = 0u64;
    let mut first = None;
    loop {
        let n = f.read_at(&mut got, off)?;
        if n == 0 {
            return Ok(first);
        }
        first.get_or_insert(t.elapsed().as_secs_f64());
        let m = l.read_at(&mut want[..n], off)?;
        if m != n || got[..n] != want[..n] {
            bail!("{}: bytes at {off} differ", path.display());
        }
        off += n as u64;
        done.fetch_add(n as u64, Ordering::Relaxed);
    }
}

/// W2 through a mounted file system: the trace as single-threaded preads.
pub fn fs_replay(
    path: &Path,
    local: &Path,
    trace: &[TraceRead],
    done: &AtomicU64,
) -> anyhow::Result<Option<f64>> {
    let t = Instant::now();
    let f = std::fs::File::open(path)?;
    let l = std::fs::File::open(local)?;
    let mut first = None;
    for r in trace {
        let (mut got, mut want) = (vec![0u8; r.len as usize], vec![0u8; r.len as usize]);
        f.read_exact_at(&mut got, r.offset)?;
        first.get_or_insert(t.elapsed().as_secs_f64());
        l.read_exact_at(&mut want, r.offset)?;
        if got != want {
            bail!("{}: trace read at {} differs", path.display(), r.offset);
        }
        done.fetch_add(u64::from(r.len), Ordering::Relaxed);
    }
    Ok(first)
}

/// W4 through a mounted file system: write `bytes` of `src` then fsync.
pub fn fs_write(
    path: &Path,
    src: &Path,
    bytes: u64,
    done: &AtomicU64,
) -> anyhow::Result<Option<f64>> {
    let f = std::fs::File::create(path)?;
    let s = std::fs::File::open(src)?;
    let mut buf = vec![0u8; 1 << 20];
    let mut off = 0;
    while off < bytes {
        s.read_exact_at(&mut buf, off)?;
        f.write_all_at(&buf, off)?;
        off += buf.len() as u64;
        done.fetch_add(buf.len() as u64, Ordering::Relaxed);
    }
    f.sync_all()?;
    Ok(None)
}

/// A whole-file copy by a command (scp, ssh|zstd) into `out`; its size is the progress.
pub async fn command_copy(mut cmd: Command, out: &Path, bound: Duration) -> anyhow::Result<Run> {
    let t = Instant::now();
    let mut child = cmd
        .stdin(Stdio::null())
        .spawn()
        .context("spawn copy command")?;
    loop {
        if let Some(st) = child.try_wait()? {
            anyhow::ensure!(st.success(), "copy command failed: {st}");
            let bytes = std::fs::metadata(out).map(|m| m.len()).unwrap_or(0);
            return Ok(Run {
                seconds: t.elapsed().as_secs_f64(),
                bytes,
                first_byte_s: None,
                complete: true,
            });
        }
        if t.elapsed() > bound {
            let _ = child.kill();
            let _ = child.wait();
            let bytes = std::fs::metadata(out).map(|m| m.len()).unwrap_or(0);
            return Ok(Run {
                seconds: t.elapsed().as_secs_f64(),
                bytes,
                first_byte_s: None,
                complete: false,
            });
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A FUSE mount of the store made by `rclone mount` of an SFTP remote, with rclone's
/// full VFS cache (its answer to a persistent local cache).
pub struct Rclone {
    pub mnt: PathBuf,
    child: Child,
}

impl Rclone {
    pub fn mount(
        mnt: &Path,
        store: &Path,
        port: u16,
        key: &Path,
        cache: &Path,
    ) -> anyhow::Result<Self> {
        std::fs::create_dir_all(mnt)?;
        let child = Command::new("rclone")
            .arg("mount")
            .arg(format!("store:{}", store.display()))
            .arg(mnt)
            .args(["--vfs-cache-mode", "full", "--cache-dir"])
            .arg(cache)
            .args([
                "--vfs-cache-max-age",
                "24h",
                "--read-only",
                "--log-level",
                "ERROR",
            ])
            .env("RCLONE_CONFIG_STORE_TYPE", "sftp")
            .env("RCLONE_CONFIG_STORE_HOST", "127.0.0.1")
            .env("RCLONE_CONFIG_STORE_PORT", port.to_string())
            .env("RCLONE_CONFIG_STORE_USER", "root")
            .env("RCLONE_CONFIG_STORE_KEY_FILE", key)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .spawn()
            .context("start rclone mount")?;
        let t = Instant::now();
        while !Command::new("mountpoint")
            .arg("-q")
            .arg(mnt)
            .status()
            .is_ok_and(|s| s.success())
        {
            if t.elapsed() > Duration::from_secs(20) {
                bail!("rclone mount did not appear at {}", mnt.display());
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        Ok(Self {
            mnt: mnt.to_path_buf(),
            child,
        })
    }
}

impl Drop for Rclone {
    fn drop(&mut self) {
        let _ = Command::new("fusermount3")
            .arg("-u")
            .arg(&self.mnt)
            .status();
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A `gridvfs-client` control command against the client running on `cache`.
pub fn gridvfs_control(client_bin: &Path, args: &[&str], cache: &Path) -> anyhow::Result<()> {
    gridvfs_output(client_bin, args, cache).map(drop)
}

/// `gridvfs-client ARGS --cache-dir CACHE`'s standard output.
pub fn gridvfs_output(client_bin: &Path, args: &[&str], cache: &Path) -> anyhow::Result<String> {
    let out = Command::new(client_bin)
        .args(args)
        .arg("--cache-dir")
        .arg(cache)
        .output()?;
    anyhow::ensure!(
        out.status.success(),
        "gridvfs-client {}: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// What a gridvfs client's blocks came from, from its `status --json`: demand misses,
/// read-ahead, background fill.
pub fn gridvfs_sources(client_bin: &Path, cache: &Path) -> String {
    let Ok(out) = gridvfs_output(client_bin, &["status", "--json"], cache) else {
        return String::new();
    };
    let c: serde_json::Value =
        serde_json::from_str(out.lines().next().unwrap_or("")).unwrap_or_default();
    let n = |k: &str| c.get(k).and_then(|x| x.as_u64()).unwrap_or(0);
    format!(
        "; blocks: {} missed, {} read ahead, {} filled",
        n("block_misses"),
        n("read_ahead_blocks"),
        n("filled_blocks")
    )
}

/// Workload `W1`, `W2` or `W4` through a mounted file system (sshfs, rclone), on a
/// blocking thread, stopped at `bound`.
pub async fn fs_workload(
    mnt: &Path,
    workload: &str,
    ds: &crate::data::DataSet,
    w4_bytes: u64,
    bound: Duration,
) -> anyhow::Result<Run> {
    let done = Arc::new(AtomicU64::new(0));
    let (mnt, mem, disk, trace, d2) = (
        mnt.to_path_buf(),
        ds.mem.clone(),
        ds.disk.clone(),
        ds.trace.clone(),
        done.clone(),
    );
    let w = workload.to_string();
    let job = tokio::task::spawn_blocking(move || match w.as_str() {
        "W1" => fs_read_whole(&mnt.join("vm1.mem"), &mem, &d2),
        "W2" => fs_replay(&mnt.join("vm1.img"), &disk, &trace, &d2),
        _ => fs_write(&mnt.join("redo.log"), &mem, w4_bytes, &d2),
    });
    bounded(bound, done, async { job.await? }).await
}

/// The Linux kernel's NFS client (in the QEMU guest of `tests/guest/run-in-guest`) reads
/// `file` of the client proxy on `port` whole: seconds, as the guest timed them. The first
/// 16 MiB are checked against `local` by md5.
pub fn kernel_read(port: u16, file: &str, local: &Path, share: &Path) -> anyhow::Result<f64> {
    let harness = concat!(env!("CARGO_MANIFEST_DIR"), "/../tests/guest/run-in-guest");
    std::fs::create_dir_all(share)?;
    let script = format!(
        "set -e\nup() {{ cut -d' ' -f1 /proc/uptime; }}\nt0=$(up); dd if={file} of=/dev/null bs=1M 2>/dev/null; t1=$(up)\n\
         echo \"secs $(awk -v a=$t0 -v b=$t1 'BEGIN {{ print b - a }}')\"\nhead -c 16777216 {file} | md5sum\n"
    );
    let out = Command::new(harness)
        .args(["--port", &port.to_string(), "--timeout", "900", "--share"])
        .arg(share)
        .arg("--")
        .arg(&script)
        .output()
        .context("run-in-guest (needs root and qemu-system-x86)")?;
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    anyhow::ensure!(
        out.status.success(),
        "kernel read failed: {text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let mut head = vec![0u8; 16 << 20];
    let n = std::fs::File::open(local)?.read(&mut head)?;
    let want = Command::new("md5sum")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .and_then(|mut c| {
            std::io::Write::write_all(&mut c.stdin.take().expect("stdin"), &head[..n])?;
            c.wait_with_output()
        })?;
    let want = String::from_utf8_lossy(&want.stdout);
    let want = want.split_whitespace().next().unwrap_or("?");
    anyhow::ensure!(text.contains(want), "the kernel read other bytes: {text}");
    text.lines()
        .find_map(|l| l.strip_prefix("secs "))
        .and_then(|s| s.trim().parse().ok())
        .with_context(|| format!("no timing in the guest's output: {text}"))
}
