//! A real OpenSSH `sshd` on a loopback port with its own config, host key and
//! authorized_keys: the store the SSH tests, and every SSH-based peer in the bench, log in to.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use anyhow::{Context, bail};

use crate::net::{free_port, wait_for_port};

/// `ssh-keygen -t ed25519` into `path` (and `path.pub`), unless the key is there already.
pub fn keygen(path: &Path) -> anyhow::Result<()> {
    if path.exists() {
        return Ok(());
    }
    let ok = Command::new("ssh-keygen")
        .args(["-q", "-t", "ed25519", "-N", "", "-C", "gridvfs-test", "-f"])
        .arg(path)
        .status()
        .context("ssh-keygen (apt-get install openssh-client)")?
        .success();
    anyhow::ensure!(ok, "ssh-keygen -f {} failed", path.display());
    Ok(())
}

/// A running `sshd -D`; killed on drop.
pub struct Sshd {
    pub port: u16,
    /// A user key listed in authorized_keys: the current user may log in with it.
    pub key: PathBuf,
    child: Child,
}

impl Sshd {
    /// Start sshd on a free loopback port, its files in `dir` (created). sftp is served
    /// (sshfs and rclone need it); its errors go to this process's stderr.
    pub fn start(dir: &Path) -> anyhow::Result<Self> {
        std::fs::create_dir_all(dir)?;
        let Some(sshd) = ["/usr/sbin/sshd", "/usr/bin/sshd"]
            .into_iter()
            .find(|p| Path::new(p).exists())
        else {
            bail!("sshd not found: apt-get install openssh-server (CI installs it)")
        };
        let (host_key, key) = (dir.join("host_key"), dir.join("id"));
        keygen(&host_key)?;
        keygen(&key)?;
        std::fs::copy(dir.join("id.pub"), dir.join("authorized_keys"))?;
        let port = free_port()?;
        let config = dir.join("sshd_config");
        std::fs::write(
            &config,
            format!(
                "Port {port}\nListenAddress 127.0.0.1\nHostKey {hk}\nAuthorizedKeysFile {ak}\nPidFile {pid}\n\
                 PermitRootLogin prohibit-password\nPasswordAuthentication no\nKbdInteractiveAuthentication no\n\
                 UsePAM no\nStrictModes no\nSubsystem sftp internal-sftp\nLogLevel ERROR\n\
                 MaxStartups 100\nMaxSessions 100\n",
                hk = host_key.display(),
                ak = dir.join("authorized_keys").display(),
                pid = dir.join("sshd.pid").display()
            ),
        )?;
        std::fs::create_dir_all("/run/sshd")?; // privilege separation directory
        let child = Command::new(sshd)
            .args(["-D", "-e", "-f"])
            .arg(&config)
            .stdin(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .context("start sshd")?;
        let sshd = Self { port, key, child };
        wait_for_port(port, Duration::from_secs(10)).context("sshd did not start")?;
        Ok(sshd)
    }

    pub fn addr(&self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.port))
    }

    /// `ssh` options to reach this sshd at `port` (a relay's in front of it, or its own).
    pub fn ssh_opts(&self, port: u16) -> Vec<String> {
        [
            "-i",
            &self.key.display().to_string(),
            "-p",
            &port.to_string(),
            "-o",
            "StrictHostKeyChecking=no",
            "-o",
            "UserKnownHostsFile=/dev/null",
            "-o",
            "LogLevel=ERROR",
            "-o",
            "BatchMode=yes",
        ]
        .map(String::from)
        .to_vec()
    }
}

impl Drop for Sshd {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
