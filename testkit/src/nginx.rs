//! A real nginx (Debian's) as the site's HTTP cache tier instead of Squid: `proxy_cache`
//! keyed by the URL alone, `proxy_cache_lock` (nginx's collapsed forwarding), 200s kept a
//! year — the configuration DESIGN §7d describes.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use anyhow::Context;

use crate::net::{free_port, wait_for_port};

/// A running `nginx` in the foreground with its own configuration and cache directory.
pub struct Nginx {
    pub port: u16,
    pub dir: PathBuf,
    child: Option<Child>,
}

impl Nginx {
    /// Start nginx on a free loopback port, caching what `origin` (host:port) serves.
    pub fn start(dir: &Path, origin: std::net::SocketAddr) -> anyhow::Result<Self> {
        let bin = ["/usr/sbin/nginx", "/usr/local/sbin/nginx"]
            .into_iter()
            .find(|p| Path::new(p).is_file())
            .context("nginx is not installed (apt-get install nginx-light; .ci/run does)")?;
        let mut last = None;
        for attempt in 0..3 {
            let d = dir.join(format!("try{attempt}"));
            std::fs::create_dir_all(&d)?;
            let port = free_port()?;
            let p = d.display();
            // Workers run as root here: the test's directories are root's.
            let conf = format!(
                "user root;\n\
                 worker_processes 1;\n\
                 daemon off;\n\
                 master_process on;\n\
                 pid {p}/nginx.pid;\n\
                 error_log {p}/error.log;\n\
                 events {{ worker_connections 4096; }}\n\
                 http {{\n\
                   access_log {p}/access.log;\n\
                   client_body_temp_path {p}/body;\n\
                   proxy_temp_path {p}/proxy;\n\
                   fastcgi_temp_path {p}/fastcgi;\n\
                   uwsgi_temp_path {p}/uwsgi;\n\
                   scgi_temp_path {p}/scgi;\n\
                   proxy_cache_path {p}/cache levels=1:2 keys_zone=blocks:16m max_size=1g inactive=7d use_temp_path=off;\n\
                   server {{\n\
                     listen 127.0.0.1:{port};\n\
                     location /gridvfs/ {{\n\
                       proxy_pass http://{origin};\n\
                       proxy_http_version 1.1;\n\
                       proxy_set_header Connection \"\";\n\
                       proxy_cache blocks;\n\
                       proxy_cache_key $uri;\n\
                       proxy_cache_lock on;\n\
                       proxy_cache_lock_timeout 30s;\n\
                       proxy_cache_valid 200 1y;\n\
                       add_header X-Cache-Status $upstream_cache_status;\n\
                     }}\n\
                   }}\n\
                 }}\n"
            );
            std::fs::write(d.join("nginx.conf"), conf)?;
            let child = Command::new(bin)
                .arg("-c")
                .arg(d.join("nginx.conf"))
                .arg("-p")
                .arg(&d)
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .context("starting nginx")?;
            let mut n = Self {
                port,
                dir: d.clone(),
                child: Some(child),
            };
            match wait_for_port(port, Duration::from_secs(20)) {
                Ok(()) => return Ok(n),
                Err(e) => {
                    let log = std::fs::read_to_string(d.join("error.log")).unwrap_or_default();
                    n.kill();
                    last = Some(anyhow::anyhow!("{e}; nginx's error.log:\n{log}"));
                }
            }
        }
        Err(last.expect("tried"))
    }

    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// Stop it: SIGTERM makes the master stop its workers (SIGKILL would orphan them).
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = Command::new("kill")
                .args(["-TERM", &c.id().to_string()])
                .status();
            for _ in 0..100 {
                if c.try_wait().ok().flatten().is_some() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Lines of the access log.
    pub fn access_log(&self) -> String {
        std::fs::read_to_string(self.dir.join("access.log")).unwrap_or_default()
    }
}

impl Drop for Nginx {
    fn drop(&mut self) {
        self.kill();
    }
}
