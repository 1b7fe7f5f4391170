//! `bench boot` and `bench resume`: GVFS's two experiments (HPDC 2004 / Cluster Computing
//! 2006: reboot local 48 s, LAN cold 121 s, WAN cold 434 s, warm 52-56 s; resume local
//! 4 s, LAN cold 80 s, WAN cold 1386 s, warm 7-16 s) with gridvfs, qemu and Debian (see
//! vm.rs). One run, side by side, in rounds: the local disk (page cache dropped, then
//! warm), gridvfs cold, warm after a client restart, cold with help (the boot's access
//! profile; the state file's `whole` hint), and the admin's alternative, fetching the
//! whole file first (zstd -1 over the same link) and starting locally.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use tokio::io::AsyncWriteExt;

use crate::boot_peers::{Peers, SSHFS, boot_peers, resume_peers};
use crate::link::{LinkSpec, Relay};
use crate::peers::{Daemon, gridvfs_control};
use crate::setup::{server_bridge, sibling};
use crate::vm;

#[derive(Debug, Clone, serde::Serialize)]
pub struct Row {
    pub how: String,
    /// Median over the rounds, and the spread.
    pub secs: f64,
    pub min: f64,
    pub max: f64,
    /// Bytes over the emulated link (both ways; on a LAN run, what the tunnel carried).
    pub link_bytes: Option<u64>,
}

/// NFS paths qemu and nfs-cat open: the client's export is `/`.
const BASE_URL: &str = "nfs://127.0.0.1//base.qcow2";
const RAW_URL: &str = "nfs://127.0.0.1//base.raw";
pub(crate) const STATE: &str = "vm.state";
const STATE_URL: &str = "nfs://127.0.0.1//vm.state";
/// The saved guest's RAM, raw (as VMware's `.vmem`): read whole, no hypervisor needed.
const RAW_MEM: &str = "memory.vmem";
const RAW_MEM_URL: &str = "nfs://127.0.0.1//memory.vmem";

/// Samples of each row across the rounds, in first-seen order.
#[derive(Default)]
pub(crate) struct Table {
    rows: Vec<(String, Vec<f64>, Option<u64>)>,
}

impl Table {
    pub(crate) fn add(&mut self, how: &str, secs: f64, link_bytes: Option<u64>) {
        eprintln!(
            "bench: {how}: {secs:.1} s{}",
            link_bytes.map_or(String::new(), |b| format!(
                ", {:.1} MB over the link",
                b as f64 / 1e6
            ))
        );
        match self.rows.iter_mut().find(|r| r.0 == how) {
            Some(r) => {
                r.1.push(secs);
                r.2 = link_bytes.or(r.2);
            }
            None => self.rows.push((how.into(), vec![secs], link_bytes)),
        }
    }

    fn medians(self) -> Vec<Row> {
        self.rows
            .into_iter()
            .map(|(how, mut s, link_bytes)| {
                s.sort_by(f64::total_cmp);
                Row {
                    how,
                    secs: s[s.len() / 2],
                    min: s[0],
                    max: s[s.len() - 1],
                    link_bytes,
                }
            })
            .collect()
    }
}

/// What both experiments share: the image, the store behind the emulated link, the
/// client binary and a scratch directory.
struct Bed {
    img: vm::Image,
    store: PathBuf,
    work: tempfile::TempDir,
    link: Option<LinkSpec>,
    relay: Option<Relay>,
    remote: String,
    client_bin: PathBuf,
    cache: PathBuf,
    /// While this file exists the store is unreachable ([`Bed::cut`]).
    down: PathBuf,
    /// The command line of the link's `bench connect` processes (to cut them; the
    /// client's own command line contains it too, so it is matched whole).
    connect: String,
}

impl Bed {
    async fn new(link: Option<LinkSpec>, data: &Path) -> anyhow::Result<Self> {
        anyhow::ensure!(
            rustix::process::geteuid().is_root(),
            "needs root: qemu's nfs driver needs the client's portmapper on port 111, and \
             the local rows drop the page cache"
        );
        std::net::TcpListener::bind("127.0.0.1:111").context(
            "port 111 is taken (rpcbind?): qemu's nfs:// driver finds the client through a \
             portmapper there",
        )?;
        crate::setup::ensure_tools(&[("nfs-cat", "libnfs-utils")])?;
        let img = vm::ensure_image(data)?;
        let store = data.join("vm-store");
        std::fs::create_dir_all(&store)?;
        let base = store.join(vm::BASE);
        let _ = std::fs::remove_file(&base);
        std::fs::hard_link(&img.qcow2, &base)
            .or_else(|_| std::fs::copy(&img.qcow2, &base).map(|_| ()))?;
        let work = tempfile::tempdir()?;
        let client_bin = sibling("gridvfs-client")?;
        let bridge = server_bridge(sibling("gridvfs-server")?, store.clone()).await?;
        let relay = match link {
            Some(l) => Some(Relay::start(l, bridge).await?),
            None => None,
        };
        let port = relay.as_ref().map_or(bridge.port(), |r| r.addr.port());
        let down = work.path().join("link-down");
        let bench = std::env::current_exe()?;
        let connect = format!("{} connect 127.0.0.1:{port}", bench.display());
        let remote = format!(
            "exec:if [ -e {} ]; then exit 255; fi; exec {connect}",
            down.display()
        );
        let cache = work.path().join("cache");
        Ok(Self {
            down,
            connect,
            img,
            store,
            work,
            link,
            relay,
            remote,
            client_bin,
            cache,
        })
    }

    fn hint(&self, name: &str) -> PathBuf {
        self.store.join(format!(".{name}.gvhint"))
    }

    /// A client on the bed's cache (emptied first if `fresh`), with the portmapper.
    fn client(&self, fresh: bool) -> anyhow::Result<Daemon> {
        self.client_with(fresh, &[])
    }

    /// The same with more flags.
    fn client_with(&self, fresh: bool, extra: &[&str]) -> anyhow::Result<Daemon> {
        if fresh {
            let _ = std::fs::remove_dir_all(&self.cache);
        }
        let mut flags = vec!["--portmapper", "127.0.0.1:111"];
        flags.extend_from_slice(extra);
        Daemon::gridvfs(&self.client_bin, &self.remote, &self.cache, &flags)
    }

    /// The link goes down: the tunnel's process is killed and new ones fail at once.
    fn cut(&self) -> anyhow::Result<()> {
        std::fs::write(&self.down, "")?;
        let _ = std::process::Command::new("pkill")
            .args(["-f", &format!("^{}$", self.connect)])
            .status();
        Ok(())
    }

    fn restore(&self) {
        let _ = std::fs::remove_file(&self.down);
    }

    fn status(&self) -> Option<serde_json::Value> {
        let out = std::process::Command::new(&self.client_bin)
            .args(["status", "--json", "--cache-dir"])
            .arg(&self.cache)
            .output()
            .ok()?;
        serde_json::from_slice(&out.stdout).ok()
    }

    fn crossed(&self) -> Option<u64> {
        self.relay.as_ref().map(|r| r.bytes().0 + r.bytes().1)
    }

    /// Bytes since `before` over the link or, on a LAN run, the client's tunnel's count.
    fn bytes_since(&self, before: Option<u64>) -> Option<u64> {
        match self.crossed().zip(before) {
            Some((a, b)) => Some(a - b),
            None => self.status().and_then(|v| {
                Some(v["tunnel_bytes_sent"].as_u64()? + v["tunnel_bytes_received"].as_u64()?)
            }),
        }
    }

    /// Fetch `file` whole, zstd -1 compressed, over a link like the store's, to `dest`:
    /// (seconds, bytes over the link).
    async fn fetch_whole(&self, file: &Path, dest: &Path) -> anyhow::Result<(f64, u64)> {
        let zst = file.with_extension("zst");
        let mtime = |p: &Path| std::fs::metadata(p).and_then(|m| m.modified()).ok();
        // (Made again when the file is newer: each resume run saves a new state.)
        if mtime(&zst) < mtime(file) {
            let tmp = file.with_extension("zst.tmp");
            let mut input = std::fs::File::open(file)?;
            let mut enc = zstd::stream::Encoder::new(std::fs::File::create(&tmp)?, 1)?;
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
        let relay = match self.link {
            Some(l) => Some(Relay::start(l, src).await?),
            None => None,
        };
        let from = relay.as_ref().map_or(src, |r| r.addr);
        let t = Instant::now();
        let dest2 = dest.to_path_buf();
        tokio::task::spawn_blocking(move || -> anyhow::Result<()> {
            let s = std::net::TcpStream::connect(from)?;
            let mut out = std::fs::File::create(&dest2)?;
            zstd::stream::copy_decode(s, &mut out)?;
            out.sync_all()?;
            Ok(())
        })
        .await??;
        let secs = t.elapsed().as_secs_f64();
        server.abort();
        let bytes = match &relay {
            Some(r) => r.bytes().0 + r.bytes().1,
            None => std::fs::metadata(&zst)?.len(),
        };
        Ok((secs, bytes))
    }
}

/// The reboot experiment; with `peers`, also through sshfs, qemu's ssh driver and rclone.
pub async fn boot(
    name: &str,
    link: Option<LinkSpec>,
    runs: usize,
    bound: Duration,
    peers: bool,
    out: &Path,
    data: &Path,
) -> anyhow::Result<()> {
    anyhow::ensure!(runs >= 1, "--runs must be at least 1");
    let bed = Bed::new(link, data).await?;
    let (img, work) = (&bed.img, bed.work.path());
    let peers = match peers {
        true => Some(Peers::start(&bed.store, link, work).await?),
        false => None,
    };
    let hint = bed.hint(vm::BASE);
    let _ = std::fs::remove_file(&hint);
    let local = img.qcow2.display().to_string();
    // The same disk as a raw image on the store (holes where the disk is unused).
    let raw = vm::raw_base(img)?;
    let raw_on_store = bed.store.join("base.raw");
    let _ = std::fs::remove_file(&raw_on_store);
    std::fs::hard_link(&raw, &raw_on_store).or_else(|_| {
        std::process::Command::new("cp")
            .args(["--sparse=always"])
            .arg(&raw)
            .arg(&raw_on_store)
            .status()
            .map(|_| ())
    })?;
    let _ = std::fs::remove_file(bed.hint("base.raw"));
    let mut t = Table::default();
    let mut profile: Option<Vec<u8>> = None;
    for round in 1..=runs {
        eprintln!("bench boot: round {round} of {runs}");
        vm::drop_caches()?;
        let secs = vm::boot(img, &local, work, bound).await?;
        t.add("local disk (page cache dropped)", secs, None);
        let secs = vm::boot(img, &local, work, bound).await?;
        t.add("local disk (page cache warm)", secs, None);

        for (how, fresh, with_profile) in [
            ("gridvfs cold", true, false),
            ("gridvfs warm (client restarted, cache kept)", false, false),
            (
                "gridvfs cold, with the first boot's access profile",
                true,
                true,
            ),
        ] {
            // Cold rows start without a profile, but for the profile's row (the one the
            // first round's cold boot recorded).
            match (&profile, with_profile) {
                (Some(p), true) => std::fs::write(&hint, p)?,
                _ if fresh => {
                    let _ = std::fs::remove_file(&hint);
                }
                _ => {}
            }
            let record = fresh && !with_profile && profile.is_none();
            let client = bed.client(fresh)?;
            if record {
                gridvfs_control(&bed.client_bin, &["profile", "start"], &bed.cache)?;
            }
            let before = bed.crossed();
            let secs = vm::boot(img, BASE_URL, work, bound).await?;
            let bytes = bed.bytes_since(before);
            if record {
                gridvfs_control(&bed.client_bin, &["profile", "save"], &bed.cache)?;
                profile =
                    Some(std::fs::read(&hint).with_context(|| {
                        format!("the profile was not saved in {}", hint.display())
                    })?);
            }
            t.add(how, secs, bytes);
            drop(client);
        }

        let client = bed.client(true)?;
        let before = bed.crossed();
        let secs = vm::boot(img, RAW_URL, work, bound).await?;
        t.add(
            "gridvfs cold, the raw image (4 GiB, sparse)",
            secs,
            bed.bytes_since(before),
        );
        drop(client);

        if let Some(p) = &peers {
            boot_peers(p, img, work, bound, &mut t).await?;
        }

        let copy = work.join("copy.qcow2");
        let (fetch, bytes) = bed.fetch_whole(&img.qcow2, &copy).await?;
        let secs = vm::boot(img, &copy.display().to_string(), work, bound).await?;
        t.add(
            "whole image fetched first (zstd -1 over the link), then booted locally",
            fetch + secs,
            Some(bytes),
        );
    }
    let title = format!(
        "## Reboot: qemu boots Debian 12 (kernel, initramfs, systemd to multi-user) from a \
         qcow2 base on the store ({name}{})\n\n\
         Base image {:.0} MB (qcow2, 4 GiB virtual); qemu TCG, 1 vCPU, 1 GiB; a local qcow2 \
         overlay takes the guest's writes. GVFS's table (2004): local 48 s, LAN cold 121 s \
         (2.5×), WAN cold 434 s (9×), warm 52-56 s (1.1-1.2×). Goal (issue 13): WAN cold ≤ \
         1.5× local, warm ≤ 1.1×.",
        link_text(link),
        std::fs::metadata(&img.qcow2)?.len() as f64 / 1e6
    );
    write(
        out,
        &format!("boot-{name}"),
        &title,
        runs,
        link,
        t.medians(),
    )
}

/// The resume experiment: a VM booted once and saved; then restored from its state file.
pub async fn resume(
    name: &str,
    link: Option<LinkSpec>,
    runs: usize,
    bound: Duration,
    peers: bool,
    out: &Path,
    data: &Path,
) -> anyhow::Result<()> {
    anyhow::ensure!(runs >= 1, "--runs must be at least 1");
    let bed = Bed::new(link, data).await?;
    let (img, work) = (&bed.img, bed.work.path());
    let peers = match peers {
        true => Some(Peers::start(&bed.store, link, work).await?),
        false => None,
    };
    let _ = std::fs::remove_file(bed.hint(vm::BASE));
    let state = bed.store.join(STATE);
    let disk = work.join("saved-disk.qcow2");
    eprintln!("bench resume: booting and saving the VM ...");
    let raw_mem = bed.store.join(RAW_MEM);
    vm::save(img, work, &state, &disk, &raw_mem, bound).await?;
    let state_bytes = std::fs::metadata(&state)?.len();
    let local_base = img.qcow2.display().to_string();
    let state_hint = bed.hint(STATE);
    let server_bin = sibling("gridvfs-server")?;
    let mut t = Table::default();
    for round in 1..=runs {
        eprintln!("bench resume: round {round} of {runs}");
        vm::drop_caches()?;
        let incoming = format!("cat {}", state.display());
        let secs = vm::resume(img, &disk, &local_base, &incoming, work, bound).await?;
        t.add("local disk (page cache dropped)", secs, None);
        let secs = vm::resume(img, &disk, &local_base, &incoming, work, bound).await?;
        t.add("local disk (page cache warm)", secs, None);

        for (how, fresh, whole) in [
            ("gridvfs cold (blocks on demand)", true, false),
            ("gridvfs warm (client restarted, cache kept)", false, false),
            ("gridvfs cold, state file hinted `whole`", true, true),
        ] {
            let _ = std::fs::remove_file(&state_hint);
            if whole {
                let out = std::process::Command::new(&server_bin)
                    .args(["hint", "--policy", "whole"])
                    .arg(&state)
                    .output()?;
                anyhow::ensure!(
                    out.status.success(),
                    "gridvfs-server hint: {}",
                    String::from_utf8_lossy(&out.stderr)
                );
            }
            let client = bed.client(fresh)?;
            let before = bed.crossed();
            let incoming = format!("nfs-cat {STATE_URL}");
            let secs = vm::resume(img, &disk, BASE_URL, &incoming, work, bound).await?;
            t.add(how, secs, bed.bytes_since(before));
            drop(client);
        }
        let _ = std::fs::remove_file(&state_hint);

        if let Some(p) = &peers {
            resume_peers(p, img, &disk, work, bound, &mut t).await?;
        }

        let copy = work.join("copy.state");
        let (fetch, bytes) = bed.fetch_whole(&state, &copy).await?;
        let incoming = format!("cat {}", copy.display());
        let secs = vm::resume(img, &disk, &local_base, &incoming, work, bound).await?;
        t.add(
            "whole state fetched first (zstd -1 over the link), then resumed locally",
            fetch + secs,
            Some(bytes),
        );
    }
    let rows = t.medians();
    // The limit: the local resume plus the compressed state over the link.
    let zst_bytes = std::fs::metadata(state.with_extension("zst"))?.len();
    let limit = rows[0].secs
        + link
            .and_then(|l| l.bytes_per_sec)
            .map_or(0.0, |b| zst_bytes as f64 / b)
        + link.map_or(0.0, |l| l.rtt.as_secs_f64());
    let title = format!(
        "## Resume: qemu restores a saved Debian 12 VM (1 GiB; its migration stream, as \
         `virsh save` writes it) from the store ({name}{})\n\n\
         State file {:.0} MB ({:.0} MB with zstd -1); read by `-incoming 'exec:nfs-cat \
         {STATE_URL}'` through gridvfs, the disk as in the reboot experiment. Timed from \
         qemu's start until the guest answers on its console. Limit (issue 13's goal ≤ \
         1.2×): local resume + compressed state / link rate + RTT = {limit:.1} s. GVFS's \
         table (2004): local 4 s, LAN cold 80 s, WAN cold 1386 s, warm 7-16 s.",
        link_text(link),
        state_bytes as f64 / 1e6,
        zst_bytes as f64 / 1e6
    );
    write(out, &format!("resume-{name}"), &title, runs, link, rows)?;
    raw_memory(&bed, peers.as_ref(), name, runs, out).await
}

/// The raw memory image (the saved guest's RAM, [`RAW_MEM`]) read whole by a real NFS
/// client (libnfs's nfs-cat, qemu's NFS library) through gridvfs: blocks on demand, with
/// the `whole` hint, warm; beside the local disk, the peers and a whole-file copy.
async fn raw_memory(
    bed: &Bed,
    peers: Option<&Peers>,
    name: &str,
    runs: usize,
    out: &Path,
) -> anyhow::Result<()> {
    let raw = bed.store.join(RAW_MEM);
    let raw_bytes = std::fs::metadata(&raw)?.len();
    let hint = bed.hint(RAW_MEM);
    let server_bin = sibling("gridvfs-server")?;
    let work = bed.work.path();
    let read_all = |cmd: &mut std::process::Command| -> anyhow::Result<f64> {
        let t = Instant::now();
        let st = cmd
            .stdout(std::process::Stdio::null())
            .status()
            .with_context(|| format!("{cmd:?}"))?;
        anyhow::ensure!(st.success(), "{cmd:?}: {st}");
        Ok(t.elapsed().as_secs_f64())
    };
    let mut t = Table::default();
    for round in 1..=runs {
        eprintln!("bench resume: raw memory image, round {round} of {runs}");
        vm::drop_caches()?;
        let secs = read_all(std::process::Command::new("cat").arg(&raw))?;
        t.add("local disk (page cache dropped)", secs, None);
        for (how, fresh, whole) in [
            ("gridvfs cold (blocks on demand)", true, false),
            ("gridvfs cold, hinted `whole`", true, true),
            ("gridvfs warm (client restarted, cache kept)", false, true),
        ] {
            let _ = std::fs::remove_file(&hint);
            if whole {
                let st = std::process::Command::new(&server_bin)
                    .args(["hint", "--policy", "whole"])
                    .arg(&raw)
                    .stdout(std::process::Stdio::null())
                    .status()?;
                anyhow::ensure!(st.success(), "gridvfs-server hint --policy whole failed");
            }
            let client = bed.client(fresh)?;
            let before = bed.crossed();
            let secs = read_all(std::process::Command::new("nfs-cat").arg(RAW_MEM_URL))?;
            t.add(how, secs, bed.bytes_since(before));
            drop(client);
        }
        let _ = std::fs::remove_file(&hint);
        if let Some(p) = peers {
            let since = |before: Option<u64>| p.crossed().zip(before).map(|(a, b)| a - b);
            vm::drop_caches()?;
            let m = p.sshfs()?;
            let before = p.crossed();
            let secs = read_all(std::process::Command::new("cat").arg(m.mnt.join(RAW_MEM)))?;
            t.add(SSHFS, secs, since(before));
            drop(m);
            let copy = work.join("scp.vmem");
            let before = p.crossed();
            let secs = p.scp(RAW_MEM, &copy)?;
            t.add("scp", secs, since(before));
            let _ = std::fs::remove_file(&copy);
        }
        let copy = work.join("copy.vmem");
        let (fetch, bytes) = bed.fetch_whole(&raw, &copy).await?;
        t.add(
            "whole file fetched first (zstd -1 over the link)",
            fetch,
            Some(bytes),
        );
        let _ = std::fs::remove_file(&copy);
    }
    let zst_bytes = std::fs::metadata(raw.with_extension("zst"))?.len();
    let link = bed.link;
    let rows = t.medians();
    let limit = rows[0].secs
        + link
            .and_then(|l| l.bytes_per_sec)
            .map_or(0.0, |b| zst_bytes as f64 / b)
        + link.map_or(0.0, |l| l.rtt.as_secs_f64());
    let title = format!(
        "## A raw memory image (the saved guest's 1 GiB of RAM, `pmemsave`: the layout of \
         VMware's `.vmem` or a `memory-backend-file`) read whole from the store ({name}{})\n\n\
         {:.0} MB ({:.0} MB with zstd -1), read by libnfs's `nfs-cat {RAW_MEM_URL}` through \
         gridvfs (sshfs and scp: through their own SSH connection on the same link). Limit: \
         local read + compressed bytes / link rate + RTT = {limit:.1} s.",
        link_text(link),
        raw_bytes as f64 / 1e6,
        zst_bytes as f64 / 1e6
    );
    write(out, &format!("vmem-{name}"), &title, runs, link, rows)
}

/// Issue 16 with a real VM: a guest running from gridvfs reads its disk through a link
/// outage. The guest boots to a shell from the base on the store and reads every file of
/// its programs, libraries and /usr/share once (into the client's cache); the link is cut;
/// the guest drops its page cache and reads them all again (the same checksum); then it
/// reads kernel modules it never read, which wait while the link stays down for `hold` in
/// all and complete after it returns (the same checksum as a read afterwards). Fails on
/// any I/O error on the guest's console.
pub async fn outage(
    name: &str,
    link: Option<LinkSpec>,
    hold: Duration,
    bound: Duration,
    data: &Path,
) -> anyhow::Result<()> {
    let bed = Bed::new(link, data).await?;
    let _ = std::fs::remove_file(bed.hint(vm::BASE));
    // No background fill: it would bring the rest of the image in before the cut, and
    // the second half must read blocks that are not cached.
    let client = bed.client_with(true, &["--fill", "off"])?;
    let mut sh = vm::Shell::boot(&bed.img, BASE_URL, bed.work.path(), bound).await?;
    // Programs, libraries and data (not the kernel modules: 400 MB the boot never needs).
    let read_all =
        "tar -cf - /usr/bin /usr/sbin /usr/lib/x86_64-linux-gnu /usr/share 2>/dev/null | cksum";
    // Never read before the outage: it waits for the link (qemu's libnfs does not retry
    // JUKEBOX, so the client holds these calls until the store answers).
    let read_late = "tar -cf - /usr/lib/modules/*/kernel/fs 2>/dev/null | cksum";
    let (st, _) = sh.run("mount -t proc proc /proc", bound).await?;
    anyhow::ensure!(st == 0, "mount /proc in the guest failed");
    let t = Instant::now();
    let (st, online) = sh.run(read_all, bound).await?;
    anyhow::ensure!(st == 0, "reading /usr in the guest failed: {online}");
    let first = t.elapsed().as_secs_f64();
    // cksum's "SUM BYTES", the last such line (the shell's "# " prompt may precede it).
    let sum = |text: &str| {
        text.lines().rev().find_map(|l| {
            let words: Vec<&str> = l.split_whitespace().collect();
            let digits = |w: &str| !w.is_empty() && w.bytes().all(|b| b.is_ascii_digit());
            match words[..] {
                [a, b] | ["#", a, b] if digits(a) && digits(b) => Some(format!("{a} {b}")),
                _ => None,
            }
        })
    };
    let want = sum(&online).with_context(|| format!("no cksum output in:\n{online}"))?;
    eprintln!("bench outage: the guest read /usr ({want}) in {first:.1} s; cutting the link");
    bed.cut()?;
    let cut_at = Instant::now();
    let (st, offline) = sh
        .run(
            &format!("echo 3 > /proc/sys/vm/drop_caches; {read_all}"),
            bound,
        )
        .await?;
    let again = cut_at.elapsed().as_secs_f64();
    let got = sum(&offline);
    eprintln!(
        "bench outage ({name}): during the outage the guest read /usr again in {again:.1} s: \
         status {st}, cksum {got:?} (before: {want}); now reading what is not cached"
    );
    anyhow::ensure!(
        st == 0 && got.as_deref() == Some(want.as_str()),
        "the guest's reads failed or differed during the outage:\n{offline}"
    );
    // The uncached read runs while the link stays down for `hold` in all (and at least
    // 10 s of it), then the link returns.
    let during = async {
        let left = hold.saturating_sub(cut_at.elapsed());
        tokio::time::sleep(left.max(Duration::from_secs(10))).await;
        let status = bed.status();
        bed.restore();
        (status, Instant::now())
    };
    let ((late_st, late), (status, back)) = tokio::join!(
        async {
            sh.run(read_late, bound)
                .await
                .unwrap_or((-1, String::new()))
        },
        during
    );
    let outage = back.duration_since(cut_at).as_secs_f64();
    let after_return = back.elapsed().as_secs_f64();
    let offline_secs = status.as_ref().and_then(|s| s["offline_seconds"].as_f64());
    let held = status
        .as_ref()
        .and_then(|s| s["held"].as_u64())
        .unwrap_or(0);
    let late_sum = sum(&late);
    anyhow::ensure!(
        late_st == 0 && late_sum.is_some(),
        "the guest's uncached read failed across the outage:\n{late}"
    );
    anyhow::ensure!(
        held > 0,
        "the uncached read did not wait for the link (nothing held at {:.0} s): the bench \
         did not test what it says",
        hold.as_secs_f64()
    );
    // The same files again, online: the bytes that waited were the right ones.
    let (st, check) = sh
        .run(
            &format!("echo 3 > /proc/sys/vm/drop_caches; {read_late}"),
            bound,
        )
        .await?;
    anyhow::ensure!(
        st == 0 && sum(&check) == late_sum,
        "the uncached read gave other bytes than a read after the outage:\n{late}\n{check}"
    );
    let console = sh.console();
    let report = bed.status().map(|s| s["last_outage"].clone());
    sh.kill().await;
    drop(client);
    anyhow::ensure!(
        !console.contains("I/O error") && !console.contains("EXT4-fs error"),
        "the guest saw I/O errors:\n{console}"
    );
    println!(
        "outage ({name}): a VM running from gridvfs re-read its programs and libraries \
         ({want}) from the cache in {again:.1} s while the store was unreachable; a read of \
         kernel modules it had never read waited ({held} calls held, the client offline for \
         {:.0} s) and completed {after_return:.1} s after the link returned \
         ({outage:.0} s of outage), same bytes as a read afterwards; no I/O error in the guest; \
         outage report {}",
        offline_secs.unwrap_or(0.0),
        report.map_or("none".into(), |r| r.to_string())
    );
    Ok(())
}

fn link_text(link: Option<LinkSpec>) -> String {
    link.map_or(String::new(), |l| {
        format!(
            ": {:.0} ms RTT, {:.0} Mbit/s",
            l.rtt.as_secs_f64() * 1e3,
            l.bytes_per_sec.map_or(f64::INFINITY, |b| b * 8.0 / 1e6)
        )
    })
}

/// The table as markdown (printed, and OUT/NAME.md) and JSON (OUT/NAME.json).
fn write(
    out: &Path,
    name: &str,
    title: &str,
    runs: usize,
    link: Option<LinkSpec>,
    rows: Vec<Row>,
) -> anyhow::Result<()> {
    let Some(local) = rows.first().map(|r| r.secs) else {
        bail!("no rows");
    };
    let first = if name.starts_with("vmem") {
        "read"
    } else {
        "startup"
    };
    let mut md = format!(
        "{title}\n\nMedian of {runs} rounds (each round: every row once, in this order), \
         min–max beside.\n\n\
         | {first} | seconds (median) | min–max | × local disk | over the link |\n\
         |---|---|---|---|---|\n"
    );
    for r in &rows {
        md.push_str(&format!(
            "| {} | {:.1} | {:.1}–{:.1} | {:.2} | {} |\n",
            r.how,
            r.secs,
            r.min,
            r.max,
            r.secs / local,
            r.link_bytes
                .map_or("–".to_string(), |b| format!("{:.1} MB", b as f64 / 1e6))
        ));
    }
    print!("{md}");
    std::fs::create_dir_all(out)?;
    std::fs::write(out.join(format!("{name}.md")), &md)?;
    std::fs::write(
        out.join(format!("{name}.json")),
        serde_json::to_string_pretty(&serde_json::json!({
            "name": name,
            "link": link,
            "runs": runs,
            "rows": rows,
        }))?,
    )?;
    Ok(())
}
