//! `gridvfs-client demo`: the whole data path on this machine, in a few seconds.
//!
//! Makes a small VM store (a mostly-zero memory-state file and a sparse disk image) in a
//! temporary directory, serves it through `gridvfs-server` (spawned over a pipe) and this
//! client's NFS front, reads both files back through a real NFSv3 client (`nfs3_client`,
//! over TCP, as the kernel would), checks every byte, and prints what crossed the tunnel.

use std::io::Write;
use std::os::unix::fs::FileExt;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use gridvfs::client::{Client, ClientConfig};
use gridvfs::tunnel::Remote;
use nfs3_client::nfs3_types::nfs3::{LOOKUP3args, Nfs3Result, READ3args, diropargs3, nfs_fh3};
use nfs3_client::tokio::TokioConnector;

const MIB: u64 = 1024 * 1024;

/// Deterministic pseudo-random bytes (xorshift), so the demo needs no RNG crate.
fn noise(seed: u64, buf: &mut [u8]) {
    let mut x = seed | 1;
    for chunk in buf.chunks_mut(8) {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        let b = x.to_le_bytes();
        chunk.copy_from_slice(&b[..chunk.len()]);
    }
}

fn make_store(dir: &std::path::Path) -> anyhow::Result<Vec<(&'static str, u64)>> {
    // 32 MiB memory state: 4 KiB pages, ~70% zero, ~20% text-like, ~10% random.
    let mut mem = std::fs::File::create(dir.join("vm1.mem"))?;
    let mut page = vec![0u8; 4096];
    for i in 0..(32 * MIB / 4096) {
        match i % 10 {
            0..=6 => page.fill(0),
            7 | 8 => {
                for (j, b) in page.iter_mut().enumerate() {
                    *b = b"guest kernel page "[(j + i as usize) % 18];
                }
            }
            _ => noise(i, &mut page),
        }
        mem.write_all(&page)?;
    }
    // 256 MiB sparse disk image with 16 MiB of data in 1 MiB extents.
    let disk = std::fs::File::create(dir.join("vm1.img"))?;
    disk.set_len(256 * MIB)?;
    let mut extent = vec![0u8; MIB as usize];
    for k in 0..16u64 {
        noise(1000 + k, &mut extent);
        disk.write_at(&extent, k * 16 * MIB)?;
    }
    Ok(vec![("vm1.mem", 32 * MIB), ("vm1.img", 256 * MIB)])
}

pub async fn run() -> anyhow::Result<()> {
    let store_dir = tempfile::tempdir()?;
    let cache_dir = tempfile::tempdir()?;
    let files = make_store(store_dir.path()).context("cannot make the sample store")?;
    println!("sample VM store in {}:", store_dir.path().display());
    for (name, size) in &files {
        println!("  {name:10} {:>5} MiB", size / MIB);
    }
    let cfg = ClientConfig {
        remote: Remote::Local {
            export: store_dir.path().to_path_buf(),
            read_only: true,
        },
        listen: "127.0.0.1:0".parse()?,
        cache_dir: cache_dir.path().to_path_buf(),
        attr_timeout: Duration::from_secs(1),
        timeouts: gridvfs::remote::Timeouts {
            reconnect: Duration::from_secs(10),
            ..Default::default()
        },
        adopt_export: None,
        portmapper: None,
        metrics: None,
        block_size: gridvfs::cache::DEFAULT_BLOCK_SIZE,
        cache_size: gridvfs::cache::DEFAULT_CACHE_SIZE,
        write_policy: gridvfs::cache::WritePolicy::Through,
        fill: gridvfs::cache::FillPolicy::default(),
        block_source: Vec::new(),
        block_source_timeout: Duration::from_secs(10),
        site_listen: None,
        site_url: None,
        share_profiles: None,
        // Only the user running the demo, from any port: it cannot bind a privileged one
        // unless it is root, and the sample store is its own.
        access: gridvfs::nfs::AccessPolicy {
            require_privileged_port: false,
            squash: gridvfs::nfs::access::Squash::None,
            allowed_uids: Some(vec![rustix::process::getuid().as_raw()]),
            ..Default::default()
        },
    };
    let client = Client::start(&cfg)
        .await
        .context("cannot start the proxies")?;
    let port = client.port();
    let store = client.store.clone();
    let stats = client.stats.clone();
    println!(
        "gridvfs-client on 127.0.0.1:{port}; a kernel would mount it with:\n  {}",
        client.mount_command("/mnt/images")
    );
    tokio::spawn(client.nfs.run());

    let conn = nfs3_client::Nfs3ConnectionBuilder::new(TokioConnector, "127.0.0.1", "/")
        .connect_from_privileged_port(false)
        .credential(auth_sys_of_this_process())
        .mount_port(port)
        .nfs3_port(port)
        .mount()
        .await
        .context("NFS mount failed")?;
    let root = conn.root_nfs_fh3();
    let mut nfs = conn.into_nfs3_client();
    println!(
        "\n{:10} {:>9} {:>9} {:>10}  check",
        "file", "MiB", "seconds", "MB/s"
    );
    for (name, size) in &files {
        let fh: nfs_fh3 = match nfs
            .lookup(&LOOKUP3args {
                what: diropargs3 {
                    dir: root.clone(),
                    name: name.as_bytes().into(),
                },
            })
            .await?
        {
            Nfs3Result::Ok(ok) => ok.object,
            Nfs3Result::Err((s, _)) => bail!("LOOKUP {name}: {s:?}"),
        };
        let started = Instant::now();
        let mut hasher = blake3::Hasher::new();
        let mut offset = 0u64;
        loop {
            let res = nfs
                .read(&READ3args {
                    file: fh.clone(),
                    offset,
                    count: MIB as u32,
                })
                .await?;
            let ok = match res {
                Nfs3Result::Ok(ok) => ok,
                Nfs3Result::Err((s, _)) => bail!("READ {name} at {offset}: {s:?}"),
            };
            hasher.update(&ok.data);
            offset += ok.data.len() as u64;
            if ok.eof || ok.data.is_empty() {
                break;
            }
        }
        let secs = started.elapsed().as_secs_f64();
        let local = blake3::hash(&std::fs::read(store_dir.path().join(name))?);
        let good = offset == *size && hasher.finalize() == local;
        println!(
            "{name:10} {:>9.1} {secs:>9.3} {:>10.1}  {}",
            offset as f64 / MIB as f64,
            offset as f64 / secs / 1e6,
            if good { "bytes identical" } else { "MISMATCH" }
        );
        if !good {
            bail!("{name}: bytes read through NFS differ from the store");
        }
    }
    let c = &store.counters;
    println!(
        "\ntunnel: {} requests, {:.1} MiB to the store, {:.1} MiB from it",
        c.requests.load(Ordering::Relaxed),
        c.bytes_sent.load(Ordering::Relaxed) as f64 / MIB as f64,
        c.bytes_received.load(Ordering::Relaxed) as f64 / MIB as f64
    );
    let l = |a: &std::sync::atomic::AtomicU64| a.load(Ordering::Relaxed) as f64 / MIB as f64;
    println!(
        "cache:  {:.1} MiB fetched from the store: {:.1} MiB of it zero pages that never crossed, \
         the rest crossed zstd-compressed as {:.1} MiB",
        l(&stats.bytes_fetched),
        l(&stats.zero_bytes),
        l(&stats.packed_bytes)
    );
    println!(
        "        {:.1} MiB more were holes of the sparse image, answered as zeros by the client \
         from the file's hint without asking",
        l(&stats.hint_zero_bytes)
    );
    println!(
        "(read them again after restarting the client and nothing crosses: the blocks are cached on disk)"
    );
    Ok(())
}

/// An AUTH_SYS credential carrying this process's uid and gid, as a kernel client sends.
fn auth_sys_of_this_process() -> nfs3_client::nfs3_types::rpc::opaque_auth<'static> {
    use nfs3_client::nfs3_types::rpc::{auth_flavor, auth_unix, opaque_auth};
    use nfs3_client::nfs3_types::xdr_codec::{Opaque, Pack};
    let cred = auth_unix {
        stamp: 0,
        machinename: Opaque::owned(b"gridvfs-demo".to_vec()),
        uid: rustix::process::getuid().as_raw(),
        gid: rustix::process::getgid().as_raw(),
        gids: Vec::new(),
    };
    let mut body = Vec::new();
    cred.pack(&mut body)
        .expect("packing into a Vec cannot fail");
    opaque_auth {
        flavor: auth_flavor::AUTH_UNIX,
        body: Opaque::owned(body),
    }
}
