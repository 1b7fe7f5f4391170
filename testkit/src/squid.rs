//! A real Squid (Debian's package) as the site's HTTP cache tier: an accelerator in front
//! of one origin (the site process), memory and disk cache, `collapsed_forwarding` so that
//! concurrent misses for one object make one request to the site — the configuration a
//! grid site runs for CernVM-FS, reduced to one origin.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use anyhow::Context;

use crate::net::{free_port, wait_for_port};

/// A running `squid -N` with its own configuration and cache directory. Each has its own
/// `visible_hostname`: chained Squids with one name see their own `Via` and refuse the
/// request as a forwarding loop (403).
pub struct Squid {
    pub port: u16,
    pub dir: PathBuf,
    child: Option<Child>,
}

/// Where Debian installs it (the tests and the bench need it; `.ci/run` installs it).
pub fn binary() -> anyhow::Result<PathBuf> {
    for p in ["/usr/sbin/squid", "/usr/local/sbin/squid"] {
        if Path::new(p).is_file() {
            return Ok(p.into());
        }
    }
    anyhow::bail!("squid is not installed (apt-get install squid; .ci/run does)")
}

impl Squid {
    /// Start Squid on a free loopback port, caching what `origin` (host:port) serves;
    /// `extra`: configuration lines added last (they override the defaults here).
    /// `dir` must not exist yet; Squid's own directory is made inside it.
    pub fn start(dir: &Path, origin: std::net::SocketAddr, extra: &str) -> anyhow::Result<Self> {
        // The free port may be taken by another test before Squid binds it: try again.
        let mut last = None;
        for attempt in 0..3 {
            let d = dir.join(format!("try{attempt}"));
            match Self::start_once(&d, origin, extra) {
                Ok(s) => return Ok(s),
                Err(e) => last = Some(e),
            }
        }
        Err(last.expect("tried"))
    }

    fn start_once(dir: &Path, origin: std::net::SocketAddr, extra: &str) -> anyhow::Result<Self> {
        let bin = binary()?;
        std::fs::create_dir_all(dir.join("cache"))?;
        let port = free_port()?;
        let d = dir.display();
        let conf = format!(
            "http_port 127.0.0.1:{port} accel defaultsite=gridvfs-site no-vhost\n\
             cache_peer {ip} parent {oport} 0 no-query no-digest originserver name=site\n\
             cache_peer_access site allow all\n\
             http_access allow all\n\
             collapsed_forwarding on\n\
             max_filedescriptors 16384\n\
             visible_hostname gridvfs-squid-{port}\n\
             cache_mem 256 MB\n\
             maximum_object_size_in_memory 8 MB\n\
             maximum_object_size 8 MB\n\
             cache_dir ufs {d}/cache 512 16 256\n\
             icp_port 0\n\
             htcp_port 0\n\
             snmp_port 0\n\
             netdb_filename none\n\
             coredump_dir {d}\n\
             pid_filename {d}/squid.pid\n\
             access_log stdio:{d}/access.log\n\
             cache_log {d}/cache.log\n\
             cache_store_log none\n\
             shutdown_lifetime 0 seconds\n\
             {extra}",
            ip = origin.ip(),
            oport = origin.port(),
        );
        std::fs::write(dir.join("squid.conf"), conf)?;
        // As root Squid drops to its own user, which must own its directory.
        if rustix_is_root() {
            let ok = Command::new("chown")
                .args(["-R", "proxy:proxy"])
                .arg(dir)
                .status()?
                .success();
            anyhow::ensure!(ok, "chown proxy {}", dir.display());
        }
        let conf = dir.join("squid.conf");
        let init = Command::new(&bin)
            .args(["-z", "-N", "-f"])
            .arg(&conf)
            .output()
            .context("squid -z")?;
        anyhow::ensure!(
            init.status.success(),
            "squid -z failed: {}{}",
            String::from_utf8_lossy(&init.stdout),
            String::from_utf8_lossy(&init.stderr)
        );
        let child = Command::new(&bin)
            .args(["-N", "-f"])
            .arg(&conf)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .context("starting squid")?;
        let mut s = Self {
            port,
            dir: dir.to_path_buf(),
            child: Some(child),
        };
        if let Err(e) = wait_for_port(port, Duration::from_secs(30)) {
            let log = std::fs::read_to_string(dir.join("cache.log")).unwrap_or_default();
            s.kill();
            anyhow::bail!("{e}; squid's cache.log:\n{log}");
        }
        Ok(s)
    }

    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// `kill -9`, as a crashed cache.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Lines of the access log (`TCP_MISS/200`, `TCP_MEM_HIT/200`, ...).
    pub fn access_log(&self) -> String {
        std::fs::read_to_string(self.dir.join("access.log")).unwrap_or_default()
    }
}

impl Drop for Squid {
    fn drop(&mut self) {
        self.kill();
    }
}

fn rustix_is_root() -> bool {
    std::fs::metadata("/proc/self")
        .map(|m| std::os::unix::fs::MetadataExt::uid(&m) == 0)
        .unwrap_or(false)
}
