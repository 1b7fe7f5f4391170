//! The tools people use instead of gridvfs to start a VM from a remote store, on the same
//! emulated link: OpenSSH's sshd serves the store's directory behind its own relay, and qemu
//! reads the image through an sshfs mount (tuned for large reads), through qemu's own
//! `ssh://` block driver, or through an rclone mount with its full VFS cache; scp copies a
//! state file first. Used by `bench boot` and `bench resume` (boot.rs).

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::Context;
use gridvfs_testkit::sshd::Sshd;

use crate::boot::{STATE, Table};
use crate::link::{LinkSpec, Relay};
use crate::peers::{Rclone, Sshfs};
use crate::setup::ensure_tools;
use crate::vm;

/// sshd on the store, reached through a relay on the bed's link, and an ssh-agent holding
/// its key (qemu's ssh driver authenticates only through an agent or ~/.ssh).
pub struct Peers {
    sshd: Sshd,
    relay: Option<Relay>,
    /// The store's SSH port as the peers reach it (the relay's, or sshd's own on a LAN run).
    port: u16,
    agent: Child,
    store: PathBuf,
    work: PathBuf,
}

impl Peers {
    pub async fn start(store: &Path, link: Option<LinkSpec>, work: &Path) -> anyhow::Result<Self> {
        ensure_tools(&[
            ("sshd", "openssh-server"),
            ("ssh-agent", "openssh-client"),
            ("sshfs", "sshfs"),
            ("fusermount3", "fuse3"),
            ("rclone", "rclone"),
        ])?;
        let sshd = Sshd::start(&work.join("sshd"))?;
        let relay = match link {
            Some(l) => Some(Relay::start(l, sshd.addr()).await?),
            None => None,
        };
        let port = relay.as_ref().map_or(sshd.port, |r| r.addr.port());
        let sock = work.join("agent.sock");
        let _ = std::fs::remove_file(&sock);
        let agent = Command::new("ssh-agent")
            .arg("-D")
            .arg("-a")
            .arg(&sock)
            .stdout(Stdio::null())
            .spawn()
            .context("start ssh-agent")?;
        let t = Instant::now();
        while !sock.exists() {
            anyhow::ensure!(
                t.elapsed() < Duration::from_secs(10),
                "ssh-agent made no socket"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        let added = Command::new("ssh-add")
            .arg("-q")
            .arg(&sshd.key)
            .env("SSH_AUTH_SOCK", &sock)
            .status()
            .context("ssh-add")?;
        anyhow::ensure!(added.success(), "ssh-add {} failed", sshd.key.display());
        vm::use_ssh_agent(&sock);
        Ok(Self {
            sshd,
            relay,
            port,
            agent,
            store: store.to_path_buf(),
            work: work.to_path_buf(),
        })
    }

    /// Bytes through the peers' relay so far (both ways); `None` on a LAN run.
    pub fn crossed(&self) -> Option<u64> {
        self.relay.as_ref().map(|r| r.bytes().0 + r.bytes().1)
    }

    /// An sshfs mount of the store, tuned (1 MiB reads, 16 MiB readahead).
    pub fn sshfs(&self) -> anyhow::Result<Sshfs> {
        Sshfs::mount(
            &self.work.join("sshfs"),
            &self.store,
            self.port,
            &self.sshd.key,
            true,
        )
    }

    /// An rclone mount of the store over sftp, its VFS cache in `cache`.
    pub fn rclone(&self, cache: &Path) -> anyhow::Result<Rclone> {
        Rclone::mount(
            &self.work.join("rclone"),
            &self.store,
            self.port,
            &self.sshd.key,
            cache,
        )
    }

    /// `file` of the store as qemu's ssh block driver opens it.
    pub fn qemu_ssh_url(&self, file: &str) -> String {
        format!(
            "ssh://root@127.0.0.1:{}{}/{file}?host_key_check=no",
            self.port,
            self.store.display()
        )
    }

    /// A shell command that writes `file` of the store to stdout over ssh (qemu's
    /// `-incoming exec:` reads it).
    pub fn ssh_cat(&self, file: &str) -> String {
        format!(
            "ssh {} root@127.0.0.1 cat {}/{file}",
            self.sshd.ssh_opts(self.port).join(" "),
            self.store.display()
        )
    }

    /// scp `file` of the store to `dest`: seconds.
    pub fn scp(&self, file: &str, dest: &Path) -> anyhow::Result<f64> {
        let mut opts = self.sshd.ssh_opts(self.port);
        opts[2] = "-P".into(); // scp's port flag
        let t = Instant::now();
        let ok = Command::new("scp")
            .arg("-q")
            .args(&opts)
            .arg(format!("root@127.0.0.1:{}/{file}", self.store.display()))
            .arg(dest)
            .status()
            .context("scp")?
            .success();
        anyhow::ensure!(ok, "scp of {file} failed");
        Ok(t.elapsed().as_secs_f64())
    }
}

impl Drop for Peers {
    fn drop(&mut self) {
        let _ = self.agent.kill();
        let _ = self.agent.wait();
    }
}

/// One round of the peers' boots: sshfs (page cache dropped), qemu's ssh driver, rclone
/// cold (empty VFS cache) and warm (remounted, cache kept).
pub async fn boot_peers(
    p: &Peers,
    img: &vm::Image,
    work: &Path,
    bound: Duration,
    t: &mut Table,
) -> anyhow::Result<()> {
    let since = |before: Option<u64>| p.crossed().zip(before).map(|(a, b)| a - b);
    vm::drop_caches()?;
    let m = p.sshfs()?;
    let before = p.crossed();
    let secs = vm::boot(
        img,
        &m.mnt.join(vm::BASE).display().to_string(),
        work,
        bound,
    )
    .await?;
    t.add(SSHFS, secs, since(before));
    drop(m);

    let before = p.crossed();
    let secs = vm::boot(img, &p.qemu_ssh_url(vm::BASE), work, bound).await?;
    t.add(QEMU_SSH, secs, since(before));

    let cache = work.join("rclone-cache");
    let _ = std::fs::remove_dir_all(&cache);
    for how in [RCLONE_COLD, RCLONE_WARM] {
        vm::drop_caches()?;
        let m = p.rclone(&cache)?;
        let before = p.crossed();
        let secs = vm::boot(
            img,
            &m.mnt.join(vm::BASE).display().to_string(),
            work,
            bound,
        )
        .await?;
        t.add(how, secs, since(before));
        drop(m);
    }
    Ok(())
}

/// One round of the peers' resumes: the disk and the state through sshfs, through qemu's
/// ssh driver and `ssh cat`, through rclone (cold), and scp of the state first.
pub async fn resume_peers(
    p: &Peers,
    img: &vm::Image,
    disk: &Path,
    work: &Path,
    bound: Duration,
    t: &mut Table,
) -> anyhow::Result<()> {
    let since = |before: Option<u64>| p.crossed().zip(before).map(|(a, b)| a - b);
    vm::drop_caches()?;
    let m = p.sshfs()?;
    let before = p.crossed();
    let base = m.mnt.join(vm::BASE).display().to_string();
    let incoming = format!("cat {}", m.mnt.join(STATE).display());
    let secs = vm::resume(img, disk, &base, &incoming, work, bound).await?;
    t.add(SSHFS, secs, since(before));
    drop(m);

    let before = p.crossed();
    let base = p.qemu_ssh_url(vm::BASE);
    let secs = vm::resume(img, disk, &base, &p.ssh_cat(STATE), work, bound).await?;
    t.add(
        "qemu's ssh:// block driver, the state streamed by `ssh cat`",
        secs,
        since(before),
    );

    let cache = work.join("rclone-cache");
    let _ = std::fs::remove_dir_all(&cache);
    vm::drop_caches()?;
    let m = p.rclone(&cache)?;
    let before = p.crossed();
    let base = m.mnt.join(vm::BASE).display().to_string();
    let incoming = format!("cat {}", m.mnt.join(STATE).display());
    let secs = vm::resume(img, disk, &base, &incoming, work, bound).await?;
    t.add(RCLONE_COLD, secs, since(before));
    drop(m);

    // scp the state, then resume it with the disk's base local (as the whole-fetch row).
    let copy = work.join("scp.state");
    let before = p.crossed();
    let fetch = p.scp(STATE, &copy)?;
    let incoming = format!("cat {}", copy.display());
    let base = img.qcow2.display().to_string();
    let secs = vm::resume(img, disk, &base, &incoming, work, bound).await?;
    t.add(
        "scp of the state first, then resumed locally",
        fetch + secs,
        since(before),
    );
    let _ = std::fs::remove_file(&copy);
    Ok(())
}

pub const SSHFS: &str = "sshfs mount (tuned: 1 MiB reads, 16 MiB readahead), page cache dropped";
const QEMU_SSH: &str = "qemu's ssh:// block driver";
const RCLONE_COLD: &str = "rclone mount (sftp, --vfs-cache-mode full), cold";
const RCLONE_WARM: &str = "rclone mount, warm (remounted, VFS cache kept)";
