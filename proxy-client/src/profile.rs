//! `gridvfs-client profile …` and `gridvfs-client prefetch …`: access profiles recorded
//! through the control socket, and files brought into the cache ahead of use.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Context;

/// Control-socket directories of the clients running on `cache_dir`.
fn running(cache_dir: &Path) -> anyhow::Result<Vec<PathBuf>> {
    let entries = std::fs::read_dir(cache_dir)
        .with_context(|| format!("cannot read cache directory {}", cache_dir.display()))?;
    let found: Vec<PathBuf> = entries
        .flatten()
        .map(|e| e.path())
        .filter(|p| gridvfs::control::socket_path(p).exists())
        .collect();
    anyhow::ensure!(
        !found.is_empty(),
        "no running gridvfs-client uses {} (start one with `gridvfs-client serve`)",
        cache_dir.display()
    );
    Ok(found)
}

/// Send `cmd` to every running client; their answers.
async fn each(cache_dir: &Path, cmd: &str) -> anyhow::Result<Vec<serde_json::Value>> {
    let mut out = Vec::new();
    for dir in running(cache_dir)? {
        match gridvfs::control::command(&dir, cmd).await {
            Ok(v) => out.push(v),
            // A socket left by a client that is gone.
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused => {}
            Err(e) => return Err(e).context("control socket"),
        }
    }
    Ok(out)
}

pub async fn start(cache_dir: &Path) -> anyhow::Result<()> {
    each(cache_dir, "profile-start").await?;
    eprintln!("recording: run the workload, then `gridvfs-client profile save`");
    Ok(())
}

pub async fn save(cache_dir: &Path, paths: &[String]) -> anyhow::Result<()> {
    let mut cmd = String::from("profile-save");
    for p in paths {
        anyhow::ensure!(
            !p.contains(char::is_whitespace),
            "paths with spaces are not supported: {p:?}"
        );
        cmd.push(' ');
        cmd.push_str(p);
    }
    let mut any = false;
    for reply in each(cache_dir, &cmd).await? {
        if let Some(e) = reply.get("error").and_then(|e| e.as_str()) {
            anyhow::bail!("{e}");
        }
        for f in reply["saved"].as_array().into_iter().flatten() {
            any = true;
            println!(
                "saved the access profile of {} ({} blocks) in its hint on the store",
                f[0].as_str().unwrap_or("?"),
                f[1]
            );
        }
    }
    anyhow::ensure!(any, "nothing was read while recording: no profile saved");
    Ok(())
}

/// Start, wait for Ctrl-C or `seconds`, save.
pub async fn record(
    cache_dir: &Path,
    seconds: Option<f64>,
    paths: &[String],
) -> anyhow::Result<()> {
    start(cache_dir).await?;
    match seconds {
        Some(s) => tokio::time::sleep(Duration::from_secs_f64(s)).await,
        None => {
            eprintln!("press Ctrl-C when the workload is done");
            tokio::signal::ctrl_c().await?;
        }
    }
    save(cache_dir, paths).await
}

/// Read files of a mounted export from start to end so they are in the cache, with a
/// progress bar. Files with the `whole` policy stream in the background from the first
/// read; this waits for all of it.
pub fn prefetch(paths: &[PathBuf]) -> anyhow::Result<()> {
    for p in paths {
        let mut f =
            std::fs::File::open(p).with_context(|| format!("cannot open {}", p.display()))?;
        let len = f.metadata()?.len();
        let mut bar = crate::progress::Progress::new("prefetch", p.display().to_string(), len);
        let mut buf = vec![0u8; 1 << 20];
        loop {
            let n = f
                .read(&mut buf)
                .with_context(|| format!("reading {}", p.display()))?;
            if n == 0 {
                break;
            }
            bar.inc(n as u64);
        }
        bar.finish("in the cache");
    }
    Ok(())
}
