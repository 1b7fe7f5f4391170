//! Issue 13, the paper's "reboot" experiment with a real hypervisor and a real guest:
//! qemu boots Debian (its kernel, its initramfs, systemd) whose root file system is a
//! qcow2 image on the store, read through gridvfs by qemu's own `nfs://` driver, under a
//! local qcow2 overlay (the way clouds start VMs from a shared base image). Timed from
//! qemu's start to a marker a systemd unit writes on the serial console once
//! `multi-user.target` is reached.
//!
//! The image is made here from Debian's packages (`debootstrap`, no other download) and
//! kept in the data directory: an ext4 root with `systemd-sysv`, `udev` and
//! `linux-image-amd64`; the kernel and initrd Debian generated are also copied out for
//! qemu's direct kernel boot (the root file system is read from the disk image, through
//! the block layer, as a bootloader would leave it).

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use tokio::io::AsyncBufReadExt;

/// Bump when the image's contents or layout change.
const IMAGE_FORMAT: u32 = 1;
/// What the guest writes on its console once booted.
pub const READY: &str = "GRIDVFS-BENCH-READY";
/// The base image's name on the store.
pub const BASE: &str = "base.qcow2";
/// The guest's RAM (qemu's `-m`).
pub const RAM_BYTES: u64 = 1 << 30;

pub struct Image {
    pub kernel: PathBuf,
    pub initrd: PathBuf,
    pub qcow2: PathBuf,
    /// The disk's virtual size (for overlays made without opening the backing file).
    pub virtual_size: u64,
}

fn run(cmd: &mut Command) -> anyhow::Result<()> {
    let out = cmd
        .output()
        .with_context(|| format!("cannot run {cmd:?}"))?;
    if !out.status.success() {
        bail!(
            "{cmd:?} failed ({}):\n{}{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(())
}

/// The guest image in `data` (built once, a few minutes: debootstrap downloads ~100 MB
/// of Debian packages).
pub fn ensure_image(data: &Path) -> anyhow::Result<Image> {
    let dir = data.join(format!("vm-bookworm-v{IMAGE_FORMAT}"));
    let img = Image {
        kernel: dir.join("vmlinuz"),
        initrd: dir.join("initrd.img"),
        qcow2: dir.join(BASE),
        virtual_size: 0,
    };
    if !dir.join("ready").exists() {
        crate::setup::ensure_tools(&[
            ("debootstrap", "debootstrap"),
            ("mkfs.ext4", "e2fsprogs"),
            ("qemu-img", "qemu-utils"),
            ("qemu-system-x86_64", "qemu-system-x86"),
        ])?;
        build(&dir)?;
    }
    let info = Command::new("qemu-img")
        .args(["info", "--output=json"])
        .arg(&img.qcow2)
        .output()?;
    let v: serde_json::Value = serde_json::from_slice(&info.stdout)
        .with_context(|| format!("qemu-img info {}", img.qcow2.display()))?;
    let virtual_size = v["virtual-size"].as_u64().context("virtual-size")?;
    Ok(Image {
        virtual_size,
        ..img
    })
}

fn build(dir: &Path) -> anyhow::Result<()> {
    let _ = std::fs::remove_dir_all(dir);
    let work = dir.join("build");
    std::fs::create_dir_all(&work)?;
    let root = work.join("root");
    let mirror = std::env::var("GRIDVFS_BENCH_MIRROR")
        .unwrap_or_else(|_| "http://deb.debian.org/debian".into());
    eprintln!("bench: building the guest image (debootstrap bookworm from {mirror}) ...");
    run(Command::new("debootstrap")
        .args([
            "--variant=minbase",
            "--include=systemd-sysv,udev,kmod,linux-image-amd64",
            "bookworm",
        ])
        .arg(&root)
        .arg(&mirror))?;
    configure(&root)?;
    let boot = root.join("boot");
    let find = |prefix: &str| -> anyhow::Result<PathBuf> {
        std::fs::read_dir(&boot)?
            .flatten()
            .map(|e| e.path())
            .find(|p| {
                p.file_name()
                    .and_then(|n| n.to_str())
                    .is_some_and(|n| n.starts_with(prefix))
            })
            .with_context(|| format!("no {prefix}* in {}", boot.display()))
    };
    std::fs::copy(find("vmlinuz-")?, dir.join("vmlinuz"))?;
    std::fs::copy(find("initrd.img-")?, dir.join("initrd.img"))?;
    // The root as an ext4 file system image (owners and modes kept: we run as root).
    let raw = work.join("base.raw");
    std::fs::File::create(&raw)?.set_len(4 << 30)?;
    run(Command::new("mkfs.ext4")
        .args(["-q", "-F", "-L", "gvroot", "-d"])
        .arg(&root)
        .arg(&raw))?;
    run(Command::new("qemu-img")
        .args(["convert", "-O", "qcow2"])
        .arg(&raw)
        .arg(dir.join(BASE)))?;
    std::fs::remove_dir_all(&work)?;
    std::fs::write(dir.join("ready"), format!("format {IMAGE_FORMAT}\n"))?;
    Ok(())
}

/// Make the debootstrapped root boot to the marker: fstab, a host name, and a unit that
/// writes [`READY`] to the console once `multi-user.target` is reached.
fn configure(root: &Path) -> anyhow::Result<()> {
    std::fs::write(
        root.join("etc/fstab"),
        "LABEL=gvroot / ext4 defaults,noatime 0 1\n",
    )?;
    std::fs::write(root.join("etc/hostname"), "gvguest\n")?;
    std::fs::write(
        root.join("etc/systemd/system/bench-ready.service"),
        format!(
            "[Unit]\nDescription=gridvfs bench: the guest is up\nAfter=multi-user.target\n\n\
             [Service]\nType=oneshot\nExecStart=/bin/sh -c 'echo {READY} >/dev/ttyS0'\n\n\
             [Install]\nWantedBy=multi-user.target\n"
        ),
    )?;
    let wants = root.join("etc/systemd/system/multi-user.target.wants");
    std::fs::create_dir_all(&wants)?;
    let link = wants.join("bench-ready.service");
    let _ = std::fs::remove_file(&link);
    std::os::unix::fs::symlink("/etc/systemd/system/bench-ready.service", link)?;
    let default = root.join("etc/systemd/system/default.target");
    let _ = std::fs::remove_file(&default);
    std::os::unix::fs::symlink("/lib/systemd/system/multi-user.target", default)?;
    Ok(())
}

/// A fresh qcow2 overlay at `path` over `backing` (a path or an `nfs://` URL). `-u`:
/// the backing file is not opened now (qemu opens it when the VM starts).
fn make_overlay(img: &Image, backing: &str, path: &Path) -> anyhow::Result<()> {
    let _ = std::fs::remove_file(path);
    // A base named *.raw is the raw image (`raw_base`), anything else the qcow2.
    let format = if backing.ends_with(".raw") {
        "raw"
    } else {
        "qcow2"
    };
    run(Command::new("qemu-img")
        .args([
            "create", "-q", "-f", "qcow2", "-F", format, "-u", "-b", backing,
        ])
        .arg(path)
        .arg(img.virtual_size.to_string()))
}

/// The image as a raw disk (sparse: its unused 3 GiB are holes), made once beside the
/// qcow2 and named `base.raw`: what a store holding raw images serves.
pub fn raw_base(img: &Image) -> anyhow::Result<PathBuf> {
    let raw = img.qcow2.with_extension("raw");
    if !raw.exists() {
        let tmp = raw.with_extension("raw.tmp");
        run(Command::new("qemu-img")
            .args(["convert", "-q", "-f", "qcow2", "-O", "raw"])
            .arg(&img.qcow2)
            .arg(&tmp))?;
        std::fs::rename(&tmp, &raw)?;
    }
    Ok(raw)
}

/// Boot the image from `backing` (a path or an `nfs://` URL) under a fresh local qcow2
/// overlay in `work`: seconds from qemu's start to [`READY`] on the console.
pub async fn boot(img: &Image, backing: &str, work: &Path, bound: Duration) -> anyhow::Result<f64> {
    let overlay = work.join("overlay.qcow2");
    let start = Instant::now();
    make_overlay(img, backing, &overlay)?;
    let mon = work.join("boot.mon");
    let _ = std::fs::remove_file(&mon);
    let mut qemu = qemu(img, &overlay, &mon)
        .spawn()
        .context("qemu-system-x86_64")?;
    let mut lines = tokio::io::BufReader::new(qemu.stdout.take().expect("stdout")).lines();
    let mut tail: Vec<String> = Vec::new();
    let wait = async {
        while let Some(line) = lines.next_line().await? {
            if line.contains(READY) {
                return Ok::<bool, std::io::Error>(true);
            }
            tail.push(line);
            if tail.len() > 40 {
                tail.remove(0);
            }
        }
        Ok(false)
    };
    let got = tokio::time::timeout(bound, wait).await;
    let secs = start.elapsed().as_secs_f64();
    let _ = qemu.kill().await;
    match got {
        Ok(Ok(true)) => Ok(secs),
        Ok(Ok(false)) => bail!(
            "the guest ended without {READY} (backing {backing}); console:\n{}\nqemu: {}",
            tail.join("\n"),
            qemu_err(&mon)
        ),
        Ok(Err(e)) => bail!("reading the guest's console: {e}"),
        Err(_) => bail!(
            "no {READY} after {bound:?} (backing {backing}); console:\n{}",
            tail.join("\n")
        ),
    }
}

/// Drop the host's page cache, so a "local disk" boot reads the disk.
pub fn drop_caches() -> anyhow::Result<()> {
    run(&mut Command::new("sync"))?;
    std::fs::write("/proc/sys/vm/drop_caches", "3").context("drop_caches (needs root)")
}

/// A human monitor (HMP) on a unix socket: send a command, read to the next prompt.
struct Monitor {
    sock: tokio::net::UnixStream,
}

impl Monitor {
    async fn connect(path: &Path, bound: Duration) -> anyhow::Result<Self> {
        let t = Instant::now();
        let sock = loop {
            match tokio::net::UnixStream::connect(path).await {
                Ok(s) => break s,
                Err(e) if t.elapsed() > bound => bail!("qemu monitor {}: {e}", path.display()),
                Err(_) => tokio::time::sleep(Duration::from_millis(20)).await,
            }
        };
        let mut m = Self { sock };
        m.until_prompt().await?;
        Ok(m)
    }

    async fn until_prompt(&mut self) -> anyhow::Result<String> {
        use tokio::io::AsyncReadExt;
        let mut out = Vec::new();
        let mut buf = [0u8; 4096];
        while !out.ends_with(b"(qemu) ") {
            let n = self.sock.read(&mut buf).await?;
            anyhow::ensure!(n > 0, "qemu monitor closed");
            out.extend_from_slice(&buf[..n]);
        }
        Ok(String::from_utf8_lossy(&out).into_owned())
    }

    async fn cmd(&mut self, c: &str) -> anyhow::Result<String> {
        use tokio::io::AsyncWriteExt;
        self.sock.write_all(format!("{c}\n").as_bytes()).await?;
        self.until_prompt().await
    }
}

/// qemu's stderr, kept beside its monitor socket for error messages.
fn qemu_err(monitor: &Path) -> String {
    std::fs::read_to_string(monitor.with_extension("err")).unwrap_or_default()
}

/// The qemu command line of both boot and resume (serial on stdio, HMP on `monitor`,
/// stderr beside it).
/// The ssh-agent qemu's `ssh://` block driver authenticates through (boot_peers.rs).
static SSH_AGENT: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();

/// Every qemu started from now on finds its SSH keys in the agent at `sock`.
pub fn use_ssh_agent(sock: &Path) {
    let _ = SSH_AGENT.set(sock.to_path_buf());
}

fn qemu(img: &Image, disk: &Path, monitor: &Path) -> tokio::process::Command {
    qemu_with(img, disk, monitor, "")
}

/// [`qemu`] with more kernel command line (`init=/bin/sh` for [`Shell`]).
fn qemu_with(img: &Image, disk: &Path, monitor: &Path, cmdline: &str) -> tokio::process::Command {
    let mut q = tokio::process::Command::new("qemu-system-x86_64");
    if let Some(sock) = SSH_AGENT.get() {
        q.env("SSH_AUTH_SOCK", sock);
    }
    q.args([
        "-nodefaults",
        "-no-user-config",
        "-machine",
        "pc",
        "-accel",
        "tcg",
        "-cpu",
        "max",
        "-smp",
        "1",
        "-display",
        "none",
        "-serial",
        "stdio",
        "-no-reboot",
        "-monitor",
    ])
    .arg(format!("unix:{},server=on,wait=off", monitor.display()))
    .arg("-m")
    .arg(format!("{}M", RAM_BYTES >> 20))
    .arg("-kernel")
    .arg(&img.kernel)
    .arg("-initrd")
    .arg(&img.initrd)
    .arg("-append")
    .arg(format!(
        "root=LABEL=gvroot ro console=ttyS0 quiet systemd.show_status=false {cmdline}"
    ))
    .arg("-drive")
    .arg(format!(
        "file={},if=virtio,format=qcow2,cache=writeback",
        disk.display()
    ))
    .stdin(Stdio::piped())
    .stdout(Stdio::piped())
    .stderr(
        std::fs::File::create(monitor.with_extension("err"))
            .map(Stdio::from)
            .unwrap_or_else(|_| Stdio::null()),
    )
    .kill_on_drop(true);
    q
}

/// Boot from the local base, and once the guest is up save its state to `state` with
/// qemu's migration stream (what `virsh save` writes) and its disk (the overlay) to
/// `disk`: the saved VM that [`resume`] restores. Its RAM is also written raw to `raw_mem`
/// (`pmemsave`: the layout of VMware's `.vmem` or a `memory-backend-file`).
pub async fn save(
    img: &Image,
    work: &Path,
    state: &Path,
    disk: &Path,
    raw_mem: &Path,
    bound: Duration,
) -> anyhow::Result<()> {
    let overlay = work.join("save.qcow2");
    let _ = std::fs::remove_file(&overlay);
    run(Command::new("qemu-img")
        .args(["create", "-q", "-f", "qcow2", "-F", "qcow2", "-b"])
        .arg(&img.qcow2)
        .arg(&overlay))?;
    let mon = work.join("save.mon");
    let _ = std::fs::remove_file(&mon);
    let mut q = qemu(img, &overlay, &mon)
        .spawn()
        .context("qemu-system-x86_64")?;
    let mut out = q.stdout.take().expect("stdout");
    let up = async {
        use tokio::io::AsyncReadExt;
        let mut seen = Vec::new();
        let mut buf = [0u8; 4096];
        loop {
            let n = out.read(&mut buf).await?;
            anyhow::ensure!(n > 0, "the guest ended before {READY}");
            seen.extend_from_slice(&buf[..n]);
            // Up, and getty is at its prompt (what a resumed guest answers with).
            if let Some(i) = find(&seen, READY.as_bytes())
                && find(&seen[i..], b"login:").is_some()
            {
                return Ok(());
            }
        }
    };
    tokio::time::timeout(bound, up)
        .await
        .context("booting to save")??;
    let mut m = Monitor::connect(&mon, bound).await?;
    m.cmd("stop").await?;
    let _ = std::fs::remove_file(raw_mem);
    let reply = m
        .cmd(&format!("pmemsave 0 {RAM_BYTES} \"{}\"", raw_mem.display()))
        .await?;
    let written = std::fs::metadata(raw_mem).map(|m| m.len()).unwrap_or(0);
    anyhow::ensure!(
        written == RAM_BYTES,
        "pmemsave wrote {written} of {RAM_BYTES} bytes: {reply}"
    );
    let _ = std::fs::remove_file(state);
    m.cmd(&format!("migrate \"exec:cat > {}\"", state.display()))
        .await?;
    let t = Instant::now();
    loop {
        let info = m.cmd("info migrate").await?;
        if info.contains("Migration status: completed") {
            break;
        }
        anyhow::ensure!(
            !info.contains("Migration status: failed") && t.elapsed() < bound,
            "saving the VM's state failed: {info}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let _ = m.cmd("quit").await;
    let _ = q.wait().await;
    std::fs::copy(&overlay, disk)?;
    Ok(())
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

/// Restore a saved VM: a copy of its disk `disk` (backed by `backing`), its state read
/// from `incoming`'s stdout (`cat FILE`, `nfs-cat URL`). Seconds from qemu's start until
/// the guest answers on its console (a newline sent, getty's prompt back).
pub async fn resume(
    img: &Image,
    disk: &Path,
    backing: &str,
    incoming: &str,
    work: &Path,
    bound: Duration,
) -> anyhow::Result<f64> {
    let copy = work.join("resume.qcow2");
    std::fs::copy(disk, &copy)?;
    run(Command::new("qemu-img")
        .args(["rebase", "-u", "-F", "qcow2", "-b", backing])
        .arg(&copy))?;
    let mon = work.join("resume.mon");
    let _ = std::fs::remove_file(&mon);
    let start = Instant::now();
    let mut q = qemu(img, &copy, &mon)
        .arg("-incoming")
        .arg(format!("exec:{incoming}"))
        .spawn()
        .context("qemu-system-x86_64")?;
    let mut out = q.stdout.take().expect("stdout");
    let mut input = q.stdin.take().expect("stdin");
    let answered = async {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let mut m = Monitor::connect(&mon, bound).await?;
        loop {
            let st = m.cmd("info status").await?;
            if st.contains("status: running") {
                break;
            }
            anyhow::ensure!(
                !st.contains("shutdown") && !st.contains("internal-error"),
                "the resumed VM is not running: {st}"
            );
            // Saved paused (as `virsh save` does), so it arrives paused: once the state
            // is in, continue it (as libvirt's restore does).
            if st.contains("paused") && !st.contains("inmigrate") {
                m.cmd("cont").await?;
                continue;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        input.write_all(b"\r").await?;
        let mut seen = Vec::new();
        let mut buf = [0u8; 4096];
        loop {
            let n = out.read(&mut buf).await?;
            anyhow::ensure!(n > 0, "the resumed guest ended");
            seen.extend_from_slice(&buf[..n]);
            if find(&seen, b"login:").is_some() {
                return Ok(());
            }
        }
    };
    let r = tokio::time::timeout(bound, answered).await;
    let secs = start.elapsed().as_secs_f64();
    let _ = q.kill().await;
    match r {
        Ok(Ok(())) => Ok(secs),
        Ok(Err(e)) => Err(e.context(format!(
            "resuming from `{incoming}`; qemu: {}",
            qemu_err(&mon)
        ))),
        Err(_) => bail!("the resumed VM did not answer within {bound:?} (`{incoming}`)"),
    }
}

/// A guest booted to a root shell on its serial console (`init=/bin/sh`, the root file
/// system read-only from the image): commands in, their output and status out. For
/// experiments that need the guest to do I/O on cue.
pub struct Shell {
    qemu: tokio::process::Child,
    input: tokio::process::ChildStdin,
    out: tokio::process::ChildStdout,
    seen: Vec<u8>,
    n: u32,
}

impl Shell {
    pub async fn boot(
        img: &Image,
        backing: &str,
        work: &Path,
        bound: Duration,
    ) -> anyhow::Result<Self> {
        let overlay = work.join("shell.qcow2");
        make_overlay(img, backing, &overlay)?;
        let mon = work.join("shell.mon");
        let _ = std::fs::remove_file(&mon);
        let mut qemu = qemu_with(img, &overlay, &mon, "init=/bin/sh")
            .spawn()
            .context("qemu-system-x86_64")?;
        let input = qemu.stdin.take().expect("stdin");
        let out = qemu.stdout.take().expect("stdout");
        let mut sh = Self {
            qemu,
            input,
            out,
            seen: Vec::new(),
            n: 0,
        };
        // Nothing is typed before the shell's first prompt (earlier input is lost or
        // mangled while the kernel and initramfs own the console).
        sh.wait_for("# ", bound).await?;
        let (status, _) = sh.run("echo up", bound).await?;
        anyhow::ensure!(
            status == 0,
            "the guest's shell did not start (status {status}); console:\n{}",
            sh.console()
        );
        Ok(sh)
    }

    /// Read the console until it shows `what`.
    async fn wait_for(&mut self, what: &str, bound: Duration) -> anyhow::Result<()> {
        use tokio::io::AsyncReadExt;
        let t = Instant::now();
        let mut buf = [0u8; 8192];
        while find(&self.seen, what.as_bytes()).is_none() {
            anyhow::ensure!(
                t.elapsed() < bound,
                "no `{what}` on the console in {bound:?}:\n{}",
                self.console()
            );
            match tokio::time::timeout(Duration::from_millis(500), self.out.read(&mut buf)).await {
                Ok(Ok(0)) => bail!("the guest ended; console:\n{}", self.console()),
                Ok(Ok(n)) => self.seen.extend_from_slice(&buf[..n]),
                Ok(Err(e)) => return Err(e.into()),
                Err(_) => {}
            }
        }
        Ok(())
    }

    /// Run `cmd` in the guest's shell: (exit status, what the console showed meanwhile).
    pub async fn run(&mut self, cmd: &str, bound: Duration) -> anyhow::Result<(i32, String)> {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        self.n += 1;
        let tag = format!("__GV_DONE_{}_", self.n);
        let start = self.seen.len();
        let line = format!("{cmd}; echo {tag}$?\n");
        self.input.write_all(line.as_bytes()).await?;
        let t = Instant::now();
        let mut buf = [0u8; 8192];
        loop {
            let text = String::from_utf8_lossy(&self.seen[start..]).into_owned();
            // The echo of the typed line shows `$?`; the command's own output, digits.
            let mut from = 0;
            while let Some(i) = text[from..].find(&tag) {
                let at = from + i + tag.len();
                let digits: String = text[at..]
                    .chars()
                    .take_while(|c| c.is_ascii_digit())
                    .collect();
                if !digits.is_empty() && text[at + digits.len()..].starts_with(['\r', '\n']) {
                    return Ok((digits.parse()?, text[..from + i].to_string()));
                }
                from = at;
            }
            anyhow::ensure!(
                t.elapsed() < bound,
                "`{cmd}` did not finish in {bound:?}; console:\n{}",
                text.chars()
                    .rev()
                    .take(3000)
                    .collect::<String>()
                    .chars()
                    .rev()
                    .collect::<String>()
            );
            match tokio::time::timeout(Duration::from_millis(500), self.out.read(&mut buf)).await {
                Ok(Ok(0)) => bail!("the guest ended; console:\n{text}"),
                Ok(Ok(n)) => self.seen.extend_from_slice(&buf[..n]),
                Ok(Err(e)) => return Err(e.into()),
                Err(_) => {}
            }
        }
    }

    /// Everything the console showed so far.
    pub fn console(&self) -> String {
        String::from_utf8_lossy(&self.seen).into_owned()
    }

    pub async fn kill(mut self) {
        let _ = self.qemu.kill().await;
    }
}
