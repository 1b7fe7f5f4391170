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

pub struct Image {
    pub dir: PathBuf,
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
        dir: dir.clone(),
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

/// Boot the image from `backing` (a path or an `nfs://` URL) under a fresh local qcow2
/// overlay in `work`: seconds from qemu's start to [`READY`] on the console.
pub async fn boot(img: &Image, backing: &str, work: &Path, bound: Duration) -> anyhow::Result<f64> {
    let overlay = work.join("overlay.qcow2");
    let _ = std::fs::remove_file(&overlay);
    let start = Instant::now();
    // -u: the backing file is not opened now (qemu opens it when the VM starts).
    run(Command::new("qemu-img")
        .args([
            "create", "-q", "-f", "qcow2", "-F", "qcow2", "-u", "-b", backing,
        ])
        .arg(&overlay)
        .arg(img.virtual_size.to_string()))?;
    let mut qemu = tokio::process::Command::new("qemu-system-x86_64")
        .args([
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
            "-m",
            "1024",
            "-display",
            "none",
            "-monitor",
            "none",
            "-serial",
            "stdio",
            "-no-reboot",
            "-kernel",
        ])
        .arg(&img.kernel)
        .arg("-initrd")
        .arg(&img.initrd)
        .args([
            "-append",
            "root=LABEL=gvroot ro console=ttyS0 quiet systemd.show_status=false",
            "-drive",
        ])
        .arg(format!(
            "file={},if=virtio,format=qcow2,cache=writeback",
            overlay.display()
        ))
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
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
    let stderr = match qemu.stderr.take() {
        Some(mut e) => {
            let mut s = String::new();
            let _ = tokio::io::AsyncReadExt::read_to_string(&mut e, &mut s).await;
            s
        }
        None => String::new(),
    };
    match got {
        Ok(Ok(true)) => Ok(secs),
        Ok(Ok(false)) => bail!(
            "the guest ended without {READY} (backing {backing}); console:\n{}\nqemu: {stderr}",
            tail.join("\n")
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
