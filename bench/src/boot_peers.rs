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
