//! A real OpenSSH `sshd` on loopback with its own host key, user key and config: the store
//! every SSH-based peer (and gridvfs over system ssh) logs in to.

use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};

pub struct Sshd {
    pub addr: SocketAddr,
    pub key: PathBuf,
    child: Child,
}

fn free_port() -> anyhow::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

impl Sshd {
    pub fn start(dir: &Path) -> anyhow::Result<Self> {
        std::fs::create_dir_all(dir)?;
        let sshd = ["/usr/sbin/sshd", "/usr/bin/sshd"]
            .into_iter()
            .find(|p| Path::new(p).exists());
        let Some(sshd) = sshd else {
            bail!("sshd not found: apt-get install openssh-server")
        };
        let keygen = |path: &Path| -> anyhow::Result<()> {
            if !path.exists() {
                let ok = Command::new("ssh-keygen")
                    .args(["-q", "-t", "ed25519", "-N", "", "-f"])
                    .arg(path)
                    .status()
                    .context("ssh-keygen")?
                    .success();
                anyhow::ensure!(ok, "ssh-keygen failed");
            }
            Ok(())
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
                 UsePAM no\nStrictModes no\nSubsystem sftp internal-sftp\nLogLevel ERROR\nMaxStartups 100\nMaxSessions 100\n",
                hk = host_key.display(),
                ak = dir.join("authorized_keys").display(),
                pid = dir.join("sshd.pid").display()
            ),
        )?;
        std::fs::create_dir_all("/run/sshd")?; // privilege separation directory
        let child = Command::new(sshd)
            .arg("-D")
            .arg("-e")
            .arg("-f")
            .arg(&config)
            .stderr(Stdio::null())
            .spawn()
            .context("start sshd")?;
        let addr: SocketAddr = format!("127.0.0.1:{port}").parse()?;
        let t = Instant::now();
        while TcpStream::connect(addr).is_err() {
            if t.elapsed() > Duration::from_secs(10) {
                bail!("sshd did not start on {addr}");
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Ok(Self { addr, key, child })
    }

    /// `ssh` options to reach the store at `port` (the relay's, or sshd's own).
    pub fn ssh_opts(&self, port: u16) -> Vec<String> {
        vec![
            "-i".into(),
            self.key.display().to_string(),
            "-p".into(),
            port.to_string(),
            "-o".into(),
            "StrictHostKeyChecking=no".into(),
            "-o".into(),
            "UserKnownHostsFile=/dev/null".into(),
            "-o".into(),
            "LogLevel=ERROR".into(),
            "-o".into(),
            "BatchMode=yes".into(),
        ]
    }
}

impl Drop for Sshd {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
