//! Workloads through an NFSv3 client (`nfs3_client` over TCP, as the kernel would talk to
//! gridvfs-client), with reads kept in flight the way a kernel's readahead does: several
//! connections, one 1 MiB READ outstanding on each.

use std::os::unix::fs::FileExt;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use anyhow::{Context, bail};
use nfs3_client::Nfs3Client;
use nfs3_client::nfs3_types::nfs3::*;
use nfs3_client::nfs3_types::xdr_codec::Opaque;
use nfs3_client::tokio::{TokioConnector, TokioIo};
use tokio::net::TcpStream;

use crate::data::TraceRead;

const MIB: u64 = 1 << 20;

type Client = Nfs3Client<TokioIo<TcpStream>>;

async fn mount(port: u16) -> anyhow::Result<(Client, nfs_fh3)> {
    let conn = nfs3_client::Nfs3ConnectionBuilder::new(TokioConnector, "127.0.0.1", "/")
        .connect_from_privileged_port(false)
        .credential(auth_sys_root())
        .mount_port(port)
        .nfs3_port(port)
        .mount()
        .await
        .map_err(|e| anyhow::anyhow!("NFS mount of 127.0.0.1:{port}: {e:?}"))?;
    let root = conn.root_nfs_fh3();
    Ok((conn.into_nfs3_client(), root))
}

/// AUTH_SYS as uid 0, as a kernel client run by root sends it (the bench's gridvfs
/// clients take it as sent: `--no-root-squash`, see peers.rs).
fn auth_sys_root() -> nfs3_client::nfs3_types::rpc::opaque_auth<'static> {
    gridvfs_testkit::nfs::auth_sys("gridvfs-bench", 0, 0, &[])
}

async fn lookup(c: &mut Client, root: &nfs_fh3, name: &str) -> anyhow::Result<nfs_fh3> {
    let args = LOOKUP3args {
        what: diropargs3 {
            dir: root.clone(),
            name: filename3(Opaque::owned(name.as_bytes().to_vec())),
        },
    };
    match c.lookup(&args).await? {
        Nfs3Result::Ok(ok) => Ok(ok.object),
        Nfs3Result::Err((s, _)) => bail!("LOOKUP {name}: {s:?}"),
    }
}

async fn read(c: &mut Client, fh: &nfs_fh3, offset: u64, count: u32) -> anyhow::Result<Vec<u8>> {
    match c
        .read(&READ3args {
            file: fh.clone(),
            offset,
            count,
        })
        .await?
    {
        Nfs3Result::Ok(ok) => Ok(ok.data.to_vec()),
        Nfs3Result::Err((s, _)) => bail!("READ at {offset}: {s:?}"),
    }
}

/// W1: read `name` (of `size` bytes) whole, `conns` READs in flight; every byte compared
/// with `local`. Returns the time to the first byte.
pub async fn read_whole(
    port: u16,
    name: &str,
    size: u64,
    local: &Path,
    conns: usize,
    done: Arc<AtomicU64>,
) -> anyhow::Result<f64> {
    let start = Instant::now();
    let next = Arc::new(AtomicU64::new(0));
    let first = Arc::new(AtomicU64::new(u64::MAX));
    let mut tasks = Vec::new();
    for _ in 0..conns {
        let (next, done, first) = (next.clone(), done.clone(), first.clone());
        let local = std::fs::File::open(local)?;
        let name = name.to_string();
        tasks.push(tokio::spawn(async move {
            let (mut c, root) = mount(port).await?;
            let fh = lookup(&mut c, &root, &name).await?;
            let mut want = vec![0u8; MIB as usize];
            loop {
                let off = next.fetch_add(MIB, Ordering::Relaxed);
                if off >= size {
                    return anyhow::Ok(());
                }
                let got = read(&mut c, &fh, off, MIB as u32).await?;
                first.fetch_min(start.elapsed().as_micros() as u64, Ordering::Relaxed);
                let n = local.read_at(&mut want, off)?;
                if got[..] != want[..n] {
                    bail!("{name}: bytes at {off} differ from the store");
                }
                done.fetch_add(got.len() as u64, Ordering::Relaxed);
            }
        }));
    }
    for t in tasks {
        t.await.context("reader task")??;
    }
    Ok(first.load(Ordering::Relaxed) as f64 / 1e6)
}

/// W2: replay the trace with single-threaded preads, verifying every byte.
pub async fn replay(
    port: u16,
    name: &str,
    trace: &[TraceRead],
    local: &Path,
    done: Arc<AtomicU64>,
) -> anyhow::Result<f64> {
    let start = Instant::now();
    let (mut c, root) = mount(port).await?;
    let fh = lookup(&mut c, &root, name).await?;
    let local = std::fs::File::open(local)?;
    let mut first = None;
    for t in trace {
        let got = read(&mut c, &fh, t.offset, t.len).await?;
        first.get_or_insert(start.elapsed().as_secs_f64());
        let mut want = vec![0u8; t.len as usize];
        local.read_exact_at(&mut want, t.offset)?;
        if got != want {
            bail!("{name}: trace read at {} differs from the store", t.offset);
        }
        done.fetch_add(u64::from(t.len), Ordering::Relaxed);
    }
    Ok(first.unwrap_or(0.0))
}

/// W4: write `bytes` of `src` as a new file `name` (UNSTABLE, `conns` in flight), then
/// COMMIT: done when the store has it on stable storage.
pub async fn write_then_commit(
    port: u16,
    name: &str,
    src: &Path,
    bytes: u64,
    conns: usize,
    done: Arc<AtomicU64>,
) -> anyhow::Result<()> {
    let (mut c, root) = mount(port).await?;
    let args = CREATE3args {
        where_: diropargs3 {
            dir: root.clone(),
            name: filename3(Opaque::owned(name.as_bytes().to_vec())),
        },
        how: createhow3::UNCHECKED(sattr3 {
            size: Nfs3Option::Some(0),
            ..Default::default()
        }),
    };
    let fh = match c.create(&args).await? {
        Nfs3Result::Ok(ok) => match ok.obj {
            Nfs3Option::Some(fh) => fh,
            Nfs3Option::None => lookup(&mut c, &root, name).await?,
        },
        Nfs3Result::Err((s, _)) => bail!("CREATE {name}: {s:?}"),
    };
    let next = Arc::new(AtomicU64::new(0));
    let mut tasks = Vec::new();
    for _ in 0..conns {
        let (next, done, fh) = (next.clone(), done.clone(), fh.clone());
        let src = std::fs::File::open(src)?;
        tasks.push(tokio::spawn(async move {
            let (mut c, _) = mount(port).await?;
            let mut buf = vec![0u8; MIB as usize];
            loop {
                let off = next.fetch_add(MIB, Ordering::Relaxed);
                if off >= bytes {
                    return anyhow::Ok(());
                }
                src.read_exact_at(&mut buf, off)?;
                let args = WRITE3args {
                    file: fh.clone(),
                    offset: off,
                    count: MIB as u32,
                    stable: stable_how::UNSTABLE,
                    data: Opaque::borrowed(&buf),
                };
                match c.write(&args).await? {
                    Nfs3Result::Ok(_) => {}
                    Nfs3Result::Err((s, _)) => bail!("WRITE at {off}: {s:?}"),
                }
                done.fetch_add(MIB, Ordering::Relaxed);
            }
        }));
    }
    for t in tasks {
        t.await.context("writer task")??;
    }
    match c
        .commit(&COMMIT3args {
            file: fh,
            offset: 0,
            count: 0,
        })
        .await?
    {
        Nfs3Result::Ok(_) => Ok(()),
        Nfs3Result::Err((s, _)) => bail!("COMMIT {name}: {s:?}"),
    }
}
