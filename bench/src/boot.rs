//! `bench boot`: GVFS's "reboot" row (HPDC 2004, table: local 48 s, LAN cold 121 s, WAN
//! cold 434 s, LAN warm 52 s, WAN warm 56 s) with gridvfs, qemu and Debian (see vm.rs).
//! One run, side by side: the local disk (page cache dropped, then warm), gridvfs cold,
//! warm after a client restart, cold again with the access profile the first boot
//! recorded, and the admin's alternative, fetching the whole image first (zstd -1 over
//! the same link) and booting it locally.

use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use tokio::io::AsyncWriteExt;

use crate::link::{LinkSpec, Relay};
use crate::peers::{Daemon, gridvfs_control};
use crate::setup::{server_bridge, sibling};
use crate::vm;

#[derive(Debug, Clone, serde::Serialize)]
pub struct BootRow {
    pub how: String,
    pub secs: f64,
    /// Bytes over the emulated link (both ways), where one was crossed.
    pub link_bytes: Option<u64>,
}

/// The NFS path qemu opens: the client's export is `/`.
const URL: &str = "nfs://127.0.0.1//base.qcow2";

pub async fn run(
    name: &str,
    link: Option<LinkSpec>,
    bound: Duration,
    out: &Path,
    data: &Path,
) -> anyhow::Result<()> {
    anyhow::ensure!(
        rustix::process::geteuid().is_root(),
        "bench boot needs root (qemu's nfs driver needs the client's portmapper on port 111, \
         and the local rows drop the page cache)"
    );
    std::net::TcpListener::bind("127.0.0.1:111").context(
        "port 111 is taken (rpcbind?): qemu's nfs:// driver finds the client through a \
         portmapper there",
    )?;
    let img = vm::ensure_image(data)?;
    let store = data.join("vm-store");
    std::fs::create_dir_all(&store)?;
    let base = store.join(vm::BASE);
    let _ = std::fs::remove_file(&base);
    std::fs::hard_link(&img.qcow2, &base)
        .or_else(|_| std::fs::copy(&img.qcow2, &base).map(|_| ()))?;
    let hint = store.join(format!(".{}.gvhint", vm::BASE));
    let work = tempfile::tempdir()?;
    let mut rows = Vec::new();
    let local = img.qcow2.display().to_string();

    vm::drop_caches()?;
    let secs = vm::boot(&img, &local, work.path(), bound).await?;
    eprintln!("bench boot: local disk, cold page cache: {secs:.1} s");
    rows.push(BootRow {
        how: "local disk (page cache dropped)".into(),
        secs,
        link_bytes: None,
    });
    let secs = vm::boot(&img, &local, work.path(), bound).await?;
    eprintln!("bench boot: local disk, warm page cache: {secs:.1} s");
    rows.push(BootRow {
        how: "local disk (page cache warm)".into(),
        secs,
        link_bytes: None,
    });

    let (client_bin, server_bin) = (sibling("gridvfs-client")?, sibling("gridvfs-server")?);
    let bench_bin = std::env::current_exe()?;
    let bridge = server_bridge(server_bin, store.clone()).await?;
    let relay = match link {
        Some(l) => Some(Relay::start(l, bridge).await?),
        None => None,
    };
    let port = relay.as_ref().map_or(bridge.port(), |r| r.addr.port());
    let remote = format!("exec:{} connect 127.0.0.1:{port}", bench_bin.display());
    let crossed = || relay.as_ref().map(|r| r.bytes().0 + r.bytes().1);
    let flags = ["--portmapper", "127.0.0.1:111"];
    let _ = std::fs::remove_file(&hint);
    let cache = work.path().join("cache");
    for (how, fresh_cache, record) in [
        ("gridvfs cold", true, true),
        ("gridvfs warm (client restarted, cache kept)", false, false),
        (
            "gridvfs cold, with the first boot's access profile",
            true,
            false,
        ),
    ] {
        if fresh_cache {
            let _ = std::fs::remove_dir_all(&cache);
        }
        let client = Daemon::gridvfs(&client_bin, &remote, &cache, &flags)?;
        if record {
            gridvfs_control(&client_bin, &["profile", "start"], &cache)?;
        }
        let before = crossed();
        let secs = vm::boot(&img, URL, work.path(), bound).await?;
        // Over the emulated link, or (LAN) what the client's tunnel carried.
        let link_bytes = match crossed().zip(before) {
            Some((a, b)) => Some(a - b),
            None => tunnel_bytes(&client_bin, &cache),
        };
        if record {
            gridvfs_control(&client_bin, &["profile", "save"], &cache)?;
            anyhow::ensure!(
                hint.exists(),
                "the profile was not saved in {}",
                hint.display()
            );
        }
        eprintln!(
            "bench boot: {how}: {secs:.1} s, {:.1} MB over the link",
            link_bytes.unwrap_or(0) as f64 / 1e6
        );
        rows.push(BootRow {
            how: how.into(),
            secs,
            link_bytes,
        });
        drop(client);
    }

    // The alternative: copy the whole image first (compressed), then boot it locally.
    let zst = img.dir.join(format!("{}.zst", vm::BASE));
    if !zst.exists() {
        let tmp = zst.with_extension("zst.tmp");
        let mut input = std::fs::File::open(&img.qcow2)?;
        let output = std::fs::File::create(&tmp)?;
        let mut enc = zstd::stream::Encoder::new(output, 1)?;
        std::io::copy(&mut input, &mut enc)?;
        enc.finish()?.sync_all()?;
        std::fs::rename(&tmp, &zst)?;
    }
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let src = listener.local_addr()?;
    let zst2 = zst.clone();
    let server = tokio::spawn(async move {
        if let Ok((mut s, _)) = listener.accept().await {
            if let Ok(mut f) = tokio::fs::File::open(&zst2).await {
                let _ = tokio::io::copy(&mut f, &mut s).await;
            }
            let _ = s.shutdown().await;
        }
    });
    let copy_relay = match link {
        Some(l) => Some(Relay::start(l, src).await?),
        None => None,
    };
    let from = copy_relay.as_ref().map_or(src, |r| r.addr);
    let copy = work.path().join("copy.qcow2");
    let t = Instant::now();
    let copy2 = copy.clone();
    tokio::task::spawn_blocking(move || -> anyhow::Result<()> {
        let s = std::net::TcpStream::connect(from)?;
        let mut out = std::fs::File::create(&copy2)?;
        zstd::stream::copy_decode(s, &mut out)?;
        out.sync_all()?;
        Ok(())
    })
    .await??;
    let fetch = t.elapsed().as_secs_f64();
    server.abort();
    let link_bytes = copy_relay.as_ref().map(|r| r.bytes().0 + r.bytes().1);
    let secs = vm::boot(&img, &copy.display().to_string(), work.path(), bound).await?;
    eprintln!("bench boot: whole image fetched in {fetch:.1} s, then booted in {secs:.1} s");
    rows.push(BootRow {
        how: format!("whole image fetched first (zstd -1, {fetch:.1} s), then booted locally"),
        secs: fetch + secs,
        link_bytes,
    });

    let md = report(name, link, &rows, &img)?;
    print!("{md}");
    std::fs::create_dir_all(out)?;
    std::fs::write(out.join(format!("boot-{name}.md")), &md)?;
    std::fs::write(
        out.join(format!("boot-{name}.json")),
        serde_json::to_string_pretty(&serde_json::json!({
            "profile": name,
            "link": link,
            "image_bytes": std::fs::metadata(&img.qcow2)?.len(),
            "rows": rows,
        }))?,
    )?;
    Ok(())
}

/// Bytes the client's tunnel carried both ways (`status --json`).
fn tunnel_bytes(client_bin: &Path, cache: &Path) -> Option<u64> {
    let out = std::process::Command::new(client_bin)
        .args(["status", "--json", "--cache-dir"])
        .arg(cache)
        .output()
        .ok()?;
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).ok()?;
    Some(v["tunnel_bytes_sent"].as_u64()? + v["tunnel_bytes_received"].as_u64()?)
}

fn report(
    name: &str,
    link: Option<LinkSpec>,
    rows: &[BootRow],
    img: &vm::Image,
) -> anyhow::Result<String> {
    let Some(local) = rows.first().map(|r| r.secs) else {
        bail!("no rows");
    };
    let mut md = format!(
        "## Reboot: qemu boots Debian 12 (kernel, initramfs, systemd to multi-user) from a \
         qcow2 base on the store ({name}{})\n\n\
         Base image {:.0} MB (qcow2, 4 GiB virtual); qemu TCG, 1 vCPU, 1 GiB; a local qcow2 \
         overlay takes the guest's writes. GVFS's table (2004): local 48 s, LAN cold 121 s \
         (2.5×), WAN cold 434 s (9×), warm 52-56 s (1.1-1.2×).\n\n\
         | startup | seconds | × local disk | over the link |\n|---|---|---|---|\n",
        link.map_or(String::new(), |l| format!(
            ": {:.0} ms RTT, {:.0} Mbit/s",
            l.rtt.as_secs_f64() * 1e3,
            l.bytes_per_sec.map_or(f64::INFINITY, |b| b * 8.0 / 1e6)
        )),
        std::fs::metadata(&img.qcow2)?.len() as f64 / 1e6
    );
    for r in rows {
        md.push_str(&format!(
            "| {} | {:.1} | {:.2} | {} |\n",
            r.how,
            r.secs,
            r.secs / local,
            r.link_bytes
                .map_or("–".to_string(), |b| format!("{:.1} MB", b as f64 / 1e6))
        ));
    }
    Ok(md)
}
