//! Setting up a run: the workspace binaries, Debian tools, and the byte pipes of the
//! `pipe` transport (a TCP bridge to `gridvfs-server`, and `bench connect`).

use std::path::PathBuf;
use std::process::Command;

use anyhow::{Context, bail};

pub fn sibling(name: &str) -> anyhow::Result<PathBuf> {
    let exe = std::env::current_exe()?;
    let p = exe.with_file_name(name);
    if p.is_file() {
        Ok(p)
    } else {
        bail!(
            "{name} not found beside {}: run `cargo build --release --workspace` first",
            exe.display()
        )
    }
}

/// Install Debian packages for commands that are missing (the bench needs root anyway).
pub fn ensure_tools(tools: &[(&str, &str)]) -> anyhow::Result<()> {
    let missing: Vec<&str> = tools
        .iter()
        .filter(|(cmd, _)| {
            !Command::new("sh")
                .arg("-c")
                .arg(format!("command -v {cmd}"))
                .output()
                .is_ok_and(|o| o.status.success())
        })
        .map(|(_, pkg)| *pkg)
        .collect();
    if missing.is_empty() {
        return Ok(());
    }
    eprintln!("bench: installing {}", missing.join(" "));
    let ok = Command::new("apt-get")
        .args(["install", "-y", "-qq", "--no-install-recommends"])
        .args(&missing)
        .env("DEBIAN_FRONTEND", "noninteractive")
        .status()?
        .success();
    anyhow::ensure!(ok, "apt-get install {} failed", missing.join(" "));
    Ok(())
}

pub async fn connect(addr: &str) -> anyhow::Result<()> {
    let s = tokio::net::TcpStream::connect(addr)
        .await
        .with_context(|| format!("connect {addr}"))?;
    s.set_nodelay(true)?;
    let (mut r, mut w) = s.into_split();
    let up = tokio::spawn(async move {
        let _ = tokio::io::copy(&mut tokio::io::stdin(), &mut w).await;
    });
    // The far end going away (client proxy restarted or done) is the normal end here.
    let _ = tokio::io::copy(&mut r, &mut tokio::io::stdout()).await;
    up.abort();
    Ok(())
}

/// A TCP listener that runs one `gridvfs-server serve --stdio` per connection.
pub async fn server_bridge(
    server: PathBuf,
    store: PathBuf,
) -> anyhow::Result<std::net::SocketAddr> {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = l.local_addr()?;
    tokio::spawn(async move {
        while let Ok((s, _)) = l.accept().await {
            let mut child = match tokio::process::Command::new(&server)
                .args(["serve", "--stdio", "--export"])
                .arg(&store)
                .stdin(std::process::Stdio::piped())
                .stdout(std::process::Stdio::piped())
                .kill_on_drop(true)
                .spawn()
            {
                Ok(c) => c,
                Err(_) => continue,
            };
            let (mut stdin, mut stdout) = (
                child.stdin.take().expect("stdin"),
                child.stdout.take().expect("stdout"),
            );
            tokio::spawn(async move {
                let (mut r, mut w) = s.into_split();
                tokio::join!(
                    async {
                        let _ = tokio::io::copy(&mut r, &mut stdin).await;
                        drop(stdin);
                    },
                    async {
                        let _ = tokio::io::copy(&mut stdout, &mut w).await;
                    }
                );
                let _ = child.kill().await;
            });
        }
    });
    Ok(addr)
}
