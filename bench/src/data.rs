//! Benchmark data, generated from a seed (never committed): a VM memory-state-like file, a
//! sparse raw disk image, and a boot trace over the image.

use std::fs::File;
use std::io::{BufWriter, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use rand::rngs::StdRng;
use rand::{Rng, RngCore, SeedableRng};

pub const PAGE: usize = 4096;
const MIB: u64 = 1 << 20;

/// Sizes of one data set.
#[derive(Debug, Clone, Copy, serde::Serialize)]
pub struct DataSpec {
    pub mem_bytes: u64,
    pub disk_bytes: u64,
    pub disk_data_bytes: u64,
    pub trace_bytes: u64,
    pub seed: u64,
}

impl DataSpec {
    pub fn full() -> Self {
        Self {
            mem_bytes: 1 << 30,
            disk_bytes: 2 << 30,
            disk_data_bytes: 600 * MIB,
            trace_bytes: 150 * MIB,
            seed: 1,
        }
    }
    pub fn tiny() -> Self {
        Self {
            mem_bytes: 16 * MIB,
            disk_bytes: 64 * MIB,
            disk_data_bytes: 16 * MIB,
            trace_bytes: 4 * MIB,
            seed: 1,
        }
    }
}

/// One read of the boot trace.
#[derive(Debug, Clone, Copy, serde::Serialize, serde::Deserialize)]
pub struct TraceRead {
    pub offset: u64,
    pub len: u32,
}

/// A generated data set on disk.
pub struct DataSet {
    pub dir: PathBuf,
    pub mem: PathBuf,
    pub disk: PathBuf,
    pub trace: Vec<TraceRead>,
    /// Held for the run: two runs on one data set would write and delete each other's
    /// files in its store directory (a redo log replaced mid-write reads as STALE).
    _lock: std::fs::File,
}

/// A page of one of three kinds, as memory images have them: zero, compressible, random.
fn fill_page(rng: &mut StdRng, kind: u8, page: &mut [u8]) {
    match kind {
        0 => page.fill(0),
        1 => {
            // Text-like: words from a small vocabulary with random numbers (zstd ~4x).
            const WORDS: [&[u8]; 8] = [
                b"kernel ", b"page ", b"cache ", b"inode ", b"0x0000 ", b"task ", b"slab ", b"\n",
            ];
            let mut i = 0;
            while i < page.len() {
                let w = WORDS[rng.random_range(0..WORDS.len())];
                let n = w.len().min(page.len() - i);
                page[i..i + n].copy_from_slice(&w[..n]);
                i += n;
                if i < page.len() && rng.random_ratio(1, 4) {
                    page[i] = b'0' + rng.random_range(0..10u8);
                    i += 1;
                }
            }
        }
        _ => rng.fill_bytes(page),
    }
}

/// Pages in runs: 70% zero, 20% compressible, 10% random.
pub fn write_pages(rng: &mut StdRng, f: &mut impl Write, bytes: u64) -> std::io::Result<()> {
    let pages = bytes as usize / PAGE;
    let mut page = vec![0u8; PAGE];
    let mut done = 0;
    while done < pages {
        let roll = rng.random_range(0..100);
        let kind = if roll < 70 {
            0
        } else if roll < 90 {
            1
        } else {
            2
        };
        let run = rng.random_range(1..=64).min(pages - done);
        for _ in 0..run {
            fill_page(rng, kind, &mut page);
            f.write_all(&page)?;
        }
        done += run;
    }
    Ok(())
}

/// A boot-like trace of about `bytes`: runs of 5-30 sequential reads of 4-256 KiB, each
/// run from a place `start` picks (its offset and the end it must not pass).
pub fn run_trace(
    rng: &mut StdRng,
    bytes: u64,
    mut start: impl FnMut(&mut StdRng) -> (u64, u64),
) -> Vec<TraceRead> {
    let mut trace = Vec::new();
    let mut total = 0u64;
    while total < bytes {
        let (mut off, end) = start(rng);
        for _ in 0..rng.random_range(5..30) {
            let len = (rng.random_range(1..=64u32) * PAGE as u32).min((end - off) as u32);
            if len == 0 {
                break;
            }
            trace.push(TraceRead { offset: off, len });
            total += u64::from(len);
            off += u64::from(len);
        }
    }
    trace
}

/// Make (or reuse) the data set for `spec` under `root`.
pub fn ensure(root: &Path, spec: DataSpec) -> anyhow::Result<DataSet> {
    let dir = root.join(format!(
        "data-{}-{}-{}-{}-s{}",
        spec.mem_bytes, spec.disk_bytes, spec.disk_data_bytes, spec.trace_bytes, spec.seed
    ));
    let store = dir.join("store");
    std::fs::create_dir_all(&dir)?;
    let lock = std::fs::File::create(dir.join(".lock"))?;
    if rustix::fs::flock(&lock, rustix::fs::FlockOperation::NonBlockingLockExclusive).is_err() {
        anyhow::bail!(
            "another bench run is using {}: wait for it to finish (runs share the store directory)",
            dir.display()
        );
    }
    let (mem, disk, trace_path) = (
        store.join("vm1.mem"),
        store.join("vm1.img"),
        dir.join("trace.json"),
    );
    if !trace_path.exists() {
        std::fs::create_dir_all(&store)?;
        eprintln!("bench: generating data in {} ...", dir.display());
        let mut rng = StdRng::seed_from_u64(spec.seed);
        let mut f = BufWriter::with_capacity(1 << 20, File::create(&mem)?);
        write_pages(&mut rng, &mut f, spec.mem_bytes)?;
        f.into_inner().map_err(|e| e.into_error())?.sync_all()?;

        // Sparse disk: extents of 1-16 MiB at MiB-aligned places, no overlap.
        let img = File::create(&disk)?;
        img.set_len(spec.disk_bytes)?;
        let slots = spec.disk_bytes / MIB;
        let mut used = vec![false; slots as usize];
        let mut extents = Vec::new();
        let mut written = 0;
        while written < spec.disk_data_bytes {
            let len = rng
                .random_range(1..=16u64)
                .min((spec.disk_data_bytes - written).div_ceil(MIB));
            let start = rng.random_range(0..slots - len);
            if used[start as usize..(start + len) as usize]
                .iter()
                .any(|u| *u)
            {
                continue;
            }
            used[start as usize..(start + len) as usize].fill(true);
            let mut buf = Vec::with_capacity((len * MIB) as usize);
            write_pages(&mut rng, &mut buf, len * MIB)?;
            img.write_all_at(&buf, start * MIB)?;
            extents.push((start * MIB, len * MIB));
            written += len * MIB;
        }
        img.sync_all()?;

        // Boot trace: mostly-sequential runs inside the data extents, runs in scattered order.
        let trace = run_trace(&mut rng, spec.trace_bytes, |rng| {
            let (ext_off, ext_len) = extents[rng.random_range(0..extents.len())];
            let off = ext_off + rng.random_range(0..ext_len / PAGE as u64) * PAGE as u64;
            (off, ext_off + ext_len)
        });
        std::fs::write(&trace_path, serde_json::to_vec(&trace)?)?;
    }
    let trace: Vec<TraceRead> = serde_json::from_slice(&std::fs::read(&trace_path)?)?;
    Ok(DataSet {
        dir: store,
        mem,
        disk,
        trace,
        _lock: lock,
    })
}

/// Bytes zstd -1 makes of the non-zero pages of `ranges` of `file`: what must cross the
/// link at the least (zero pages need not travel at all).
pub fn compressed_nonzero(file: &Path, ranges: &[(u64, u64)]) -> anyhow::Result<u64> {
    let f = File::open(file)?;
    let mut enc = zstd::stream::Encoder::new(CountingSink(0), 1)?;
    let mut page = vec![0u8; PAGE];
    for &(start, len) in ranges {
        let mut off = start / PAGE as u64 * PAGE as u64;
        while off < start + len {
            let n = f.read_at(&mut page, off)?;
            if n == 0 {
                break;
            }
            if page[..n].iter().any(|b| *b != 0) {
                enc.write_all(&page[..n])?;
            }
            off += n as u64;
        }
    }
    Ok(enc.finish()?.0)
}

struct CountingSink(u64);

impl Write for CountingSink {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0 += buf.len() as u64;
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// The distinct byte ranges a trace touches, merged.
pub fn trace_ranges(trace: &[TraceRead]) -> Vec<(u64, u64)> {
    let mut r: Vec<(u64, u64)> = trace
        .iter()
        .map(|t| (t.offset, t.offset + u64::from(t.len)))
        .collect();
    r.sort_unstable();
    let mut out: Vec<(u64, u64)> = Vec::new();
    for (s, e) in r {
        match out.last_mut() {
            Some(last) if s <= last.1 => last.1 = last.1.max(e),
            _ => out.push((s, e)),
        }
    }
    out.into_iter().map(|(s, e)| (s, e - s)).collect()
}

/// The other boot-trace generators for W2 (issue 12: read-ahead tuned to one generator
/// must carry over): `strided` (forward runs that skip small gaps, as a file system
/// reads scattered metadata and fragmented files), `interleaved` (three sequential
/// streams read in turn, as services starting in parallel do), `hot` (random small reads
/// inside a few dozen 4 MiB regions, no order at all). Each has its own seed; all read
/// the same image's data extents, about as many bytes as the default trace.
pub const SHAPES: [&str; 3] = ["strided", "interleaved", "hot"];

/// The data extents of `disk` (SEEK_DATA/SEEK_HOLE), MiB-aligned as the generator wrote.
fn data_extents(disk: &Path) -> anyhow::Result<Vec<(u64, u64)>> {
    use rustix::fs::{SeekFrom, seek};
    let f = File::open(disk)?;
    let size = f.metadata()?.len();
    let mut out = Vec::new();
    let mut at = 0;
    while at < size {
        let Ok(start) = seek(&f, SeekFrom::Data(at)) else {
            break;
        };
        let end = seek(&f, SeekFrom::Hole(start)).unwrap_or(size);
        out.push((start, end - start));
        at = end;
    }
    anyhow::ensure!(!out.is_empty(), "{} has no data extents", disk.display());
    Ok(out)
}

/// W2's trace of `shape` over `ds`'s disk (made once, kept beside the data set).
pub fn shaped_trace(ds: &DataSet, shape: &str, bytes: u64) -> anyhow::Result<Vec<TraceRead>> {
    let seed = 2 + SHAPES.iter().position(|s| *s == shape).unwrap_or(9) as u64;
    let path = ds
        .dir
        .parent()
        .unwrap_or(&ds.dir)
        .join(format!("trace-{shape}-s{seed}.json"));
    if let Ok(b) = std::fs::read(&path) {
        return Ok(serde_json::from_slice(&b)?);
    }
    let extents = data_extents(&ds.disk)?;
    let mut rng = StdRng::seed_from_u64(seed);
    let page = PAGE as u64;
    let mut trace = Vec::new();
    let mut total = 0u64;
    // A place to start a run: a page inside a random extent.
    let start = |rng: &mut StdRng| {
        let (o, l) = extents[rng.random_range(0..extents.len())];
        (o + rng.random_range(0..l / page) * page, o + l)
    };
    match shape {
        "strided" => {
            while total < bytes {
                let (mut off, end) = start(&mut rng);
                for _ in 0..rng.random_range(5..40) {
                    let len = (rng.random_range(1..=16u64) * page).min(end.saturating_sub(off));
                    if len == 0 {
                        break;
                    }
                    trace.push(TraceRead {
                        offset: off,
                        len: len as u32,
                    });
                    total += len;
                    // Skip 0-64 KiB half the time.
                    off += len;
                    if rng.random_ratio(1, 2) {
                        off += rng.random_range(1..=16u64) * page;
                    }
                }
            }
        }
        "interleaved" => {
            let mut streams: Vec<(u64, u64, u32)> = Vec::new();
            while total < bytes {
                while streams.len() < 3 {
                    let (off, end) = start(&mut rng);
                    streams.push((off, end, rng.random_range(5..30)));
                }
                let i = rng.random_range(0..streams.len());
                let (off, end, left) = &mut streams[i];
                let len = (rng.random_range(1..=32u64) * page).min(end.saturating_sub(*off));
                if len == 0 || *left == 0 {
                    streams.swap_remove(i);
                    continue;
                }
                trace.push(TraceRead {
                    offset: *off,
                    len: len as u32,
                });
                total += len;
                *off += len;
                *left -= 1;
            }
        }
        "hot" => {
            let regions: Vec<(u64, u64)> = (0..40)
                .map(|_| {
                    let (o, l) = extents[rng.random_range(0..extents.len())];
                    let len = l.min(4 * MIB);
                    (o + rng.random_range(0..=(l - len) / page) * page, len)
                })
                .collect();
            while total < bytes {
                let (o, l) = regions[rng.random_range(0..regions.len())];
                let len = rng.random_range(1..=16u64) * page;
                let off = o + rng.random_range(0..l.saturating_sub(len) / page + 1) * page;
                let len = len.min(o + l - off);
                trace.push(TraceRead {
                    offset: off,
                    len: len as u32,
                });
                total += len;
            }
        }
        other => anyhow::bail!("unknown trace shape {other} (one of {SHAPES:?})"),
    }
    std::fs::write(&path, serde_json::to_vec(&trace)?)?;
    Ok(trace)
}
