//! `bench`: gridvfs side by side with the tools users would pick instead, over an emulated
//! WAN, in one run on one machine. See bench/README.md.

mod boot;
mod boot_peers;
mod contenders;
mod data;
mod fanout;
mod link;
mod mirror;
mod nfsread;
mod peers;
mod report;
mod setup;
mod suite;
mod vm;

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::AtomicU64;
use std::time::Duration;

use clap::{Parser, Subcommand, ValueEnum};

use link::LinkSpec;
use report::Row;
use setup::connect;
use suite::{RunOpts, run};

#[derive(Parser)]
#[command(name = "bench", about = "gridvfs WAN benchmark")]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Clone, Copy, Debug, ValueEnum, serde::Serialize)]
enum Profile {
    /// No emulated link: loopback.
    Lan,
    /// 40 ms RTT, 100 Mbit/s.
    Wan,
    /// 80 ms RTT, 20 Mbit/s.
    WanSlow,
    /// 10 ms RTT, 400 Mbit/s: CI's seconds-long smoke.
    Smoke,
}

impl Profile {
    fn link(self) -> Option<LinkSpec> {
        let ms = Duration::from_millis;
        match self {
            Self::Lan => None,
            Self::Wan => Some(LinkSpec {
                rtt: ms(40),
                bytes_per_sec: Some(100e6 / 8.0),
            }),
            Self::WanSlow => Some(LinkSpec {
                rtt: ms(80),
                bytes_per_sec: Some(20e6 / 8.0),
            }),
            Self::Smoke => Some(LinkSpec {
                rtt: ms(10),
                bytes_per_sec: Some(400e6 / 8.0),
            }),
        }
    }
}

#[derive(Clone, Copy, Debug, ValueEnum, PartialEq, Eq)]
enum Size {
    Full,
    Tiny,
}

#[derive(Clone, Copy, Debug, ValueEnum, PartialEq, Eq)]
enum Transport {
    /// The client's built-in SSH client (russh) logging in to the store's sshd.
    Russh,
    /// The system ssh binary (`--ssh-command`) logging in to the store's sshd.
    Ssh,
    /// gridvfs-server behind a plain TCP bridge (no sshd needed; CI's smoke).
    Pipe,
}

#[derive(Clone, Copy, Debug, ValueEnum, PartialEq, Eq)]
enum Peer {
    Gridvfs,
    /// W1 once through the Linux kernel's NFS client (QEMU guest; root), gridvfs's first
    /// transport: a spot check that the kernel sees what the bench's client sees.
    Kernel,
    Sshfs,
    SshfsTuned,
    Scp,
    SshZstd,
    Rclone,
    /// The warm ceiling: the same NFSv3 reader against a plain `std::fs` mirror on
    /// `nfs3_server` serving the page-cached data (no cache, no checks, no gate).
    Mirror,
}

#[derive(Subcommand)]
enum Cmd {
    /// Run the benchmark for one profile; writes PROFILE.{md,json,svg} to --out.
    Run {
        #[arg(long, value_enum, default_value = "wan")]
        profile: Profile,
        #[arg(long, value_enum, default_value = "full")]
        size: Size,
        /// Comma-separated peers (default: all).
        #[arg(long, value_enum, value_delimiter = ',')]
        peers: Vec<Peer>,
        /// Comma-separated gridvfs transports, each a row of its own.
        #[arg(long, value_enum, value_delimiter = ',', default_value = "russh,ssh")]
        transport: Vec<Transport>,
        /// Stop a run after this many seconds and report its partial rate.
        #[arg(long, default_value_t = 300)]
        bound: u64,
        /// gridvfs client's cache block size in bytes (default: the client's own).
        #[arg(long)]
        block_size: Option<u64>,
        /// W2 also over these trace generators (gridvfs cold each): strided, interleaved,
        /// hot; `none` for the default trace only.
        #[arg(long, value_delimiter = ',', default_value = "strided,interleaved,hot")]
        shapes: Vec<String>,
        /// gridvfs's W2 rows also with `--fill off`, side by side.
        #[arg(long)]
        compare_fill: bool,
        /// gridvfs: only the cold W2 rows (for tuning read-ahead and fill).
        #[arg(long)]
        w2_only: bool,
        #[arg(long, default_value = "bench/results")]
        out: PathBuf,
        /// Where generated data is kept between runs (default $XDG_CACHE_HOME/gridvfs-bench).
        #[arg(long)]
        data: Option<PathBuf>,
    },
    /// CI smoke: tiny data, gridvfs only, plain TCP bridge, a short emulated link.
    Smoke,
    /// Issue 13's resume experiment: a booted Debian VM saved (qemu's migration stream)
    /// to the store, restored with -incoming through gridvfs (nfs-cat) over the emulated
    /// link, beside the local disk and a whole-file copy; writes resume-PROFILE.{md,json}.
    Resume {
        #[arg(long, value_enum, default_value = "wan")]
        profile: Profile,
        #[arg(long, default_value_t = 3)]
        runs: usize,
        #[arg(long, default_value_t = 900)]
        bound: u64,
        /// Only gridvfs, the local disk and the whole-file copy: not the peers (sshfs tuned,
        /// qemu's ssh:// driver, rclone, scp).
        #[arg(long)]
        no_peers: bool,
        #[arg(long, default_value = "bench/results")]
        out: PathBuf,
        #[arg(long)]
        data: Option<PathBuf>,
    },
    /// Issue 16 with a real VM: a guest running from gridvfs re-reads its cached disk
    /// while the link to the store is cut, and reads something uncached that waits for the
    /// link's return; fails if the guest sees an error or other bytes.
    Outage {
        #[arg(long, value_enum, default_value = "wan")]
        profile: Profile,
        /// How long the link stays down in all (the profile's default: 60 s, smoke 20 s).
        #[arg(long)]
        outage_secs: Option<u64>,
        #[arg(long, default_value_t = 900)]
        bound: u64,
        #[arg(long)]
        data: Option<PathBuf>,
    },
    /// Issue 13's reboot experiment: qemu boots Debian from a qcow2 base on the store
    /// through gridvfs (qemu's nfs:// driver) over the emulated link, beside the local
    /// disk and a whole-image copy; writes boot-PROFILE.{md,json} to --out. Needs root.
    Boot {
        #[arg(long, value_enum, default_value = "wan")]
        profile: Profile,
        /// Rounds (every row once each); the report gives medians.
        #[arg(long, default_value_t = 3)]
        runs: usize,
        /// Stop a boot that has not reached the marker after this many seconds.
        #[arg(long, default_value_t = 900)]
        bound: u64,
        /// Only gridvfs, the local disk and the whole-file copy: not the peers (sshfs tuned,
        /// qemu's ssh:// driver, rclone).
        #[arg(long)]
        no_peers: bool,
        #[arg(long, default_value = "bench/results")]
        out: PathBuf,
        /// Where the guest image is kept between runs (default $XDG_CACHE_HOME/gridvfs-bench).
        #[arg(long)]
        data: Option<PathBuf>,
    },
    /// Issue 14's fan-out: N hosts read one image cold at once (boot trace, then whole)
    /// through a site client + a real Squid (`tier`), and each straight to the store
    /// (`direct`), the store behind the emulated link; writes fanout-PROFILE.{md,json}.
    Fanout {
        #[arg(long, value_enum, default_value = "wan")]
        profile: Profile,
        /// Host counts of the `tier` rows.
        #[arg(long, value_delimiter = ',', default_value = "32,64")]
        hosts: Vec<usize>,
        /// Host counts of the `direct` rows (each host straight to the store).
        #[arg(long, value_delimiter = ',', default_value = "32")]
        direct: Vec<usize>,
        /// Image size in MiB.
        #[arg(long, default_value_t = 256)]
        image_mib: u64,
        /// The hosts' --block-source-timeout in seconds (default: the client's).
        #[arg(long)]
        tier_timeout: Option<f64>,
        /// Stop a row after this many seconds (its unfinished hosts count as failed).
        #[arg(long, default_value_t = 1800)]
        bound: u64,
        #[arg(long, default_value = "bench/results")]
        out: PathBuf,
        #[arg(long)]
        data: Option<PathBuf>,
    },
    /// Copy stdin/stdout to and from a TCP address (the `exec:` end of the pipe transport).
    Connect { addr: String },
    /// Redraw the SVG chart of a results JSON (written beside it).
    Svg { json: PathBuf },
    /// Serve DIR's files read-only over NFSv3 from a plain std::fs mirror (the `mirror`
    /// peer); prints the port.
    Mirror { dir: PathBuf },
    /// W1 alone, for profiling: read FILE (a file in the store's directory, also read
    /// locally to check every byte) whole through the NFS server on 127.0.0.1:PORT.
    Read {
        #[arg(long)]
        port: u16,
        /// NFS connections, one 1 MiB READ in flight on each.
        #[arg(long, default_value_t = 8)]
        conns: usize,
        file: PathBuf,
    },
    /// W2 alone, for profiling: replay TRACE (a trace.json of the data directory) against
    /// FILE through the NFS server on 127.0.0.1:PORT, one pread at a time, checking bytes.
    Replay {
        #[arg(long)]
        port: u16,
        #[arg(long)]
        trace: PathBuf,
        file: PathBuf,
    },
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    match Cli::parse().cmd {
        Cmd::Fanout {
            profile,
            hosts,
            direct,
            image_mib,
            tier_timeout,
            bound,
            out,
            data,
        } => {
            let (name, data) = vm_run(profile, data);
            let link = profile.link().unwrap_or(LinkSpec {
                rtt: Duration::ZERO,
                bytes_per_sec: None,
            });
            fanout::run(fanout::Opts {
                link,
                hosts,
                direct,
                image_mib,
                tier_timeout,
                bound: Duration::from_secs(bound),
                out,
                data,
                name,
            })
            .await
        }
        Cmd::Connect { addr } => connect(&addr).await,
        Cmd::Mirror { dir } => mirror::serve(&dir).await,
        Cmd::Read { port, conns, file } => {
            let name = file
                .file_name()
                .and_then(|n| n.to_str())
                .ok_or_else(|| anyhow::anyhow!("{}: no file name", file.display()))?;
            let size = std::fs::metadata(&file)?.len();
            let t = std::time::Instant::now();
            let done = Arc::new(AtomicU64::new(0));
            nfsread::read_whole(port, name, size, &file, conns, done).await?;
            let s = t.elapsed().as_secs_f64();
            println!(
                "{name}: {size} bytes in {s:.3} s, {:.1} MB/s",
                size as f64 / s / 1e6
            );
            Ok(())
        }
        Cmd::Replay { port, trace, file } => {
            let name = file
                .file_name()
                .and_then(|n| n.to_str())
                .ok_or_else(|| anyhow::anyhow!("{}: no file name", file.display()))?;
            let trace: Vec<data::TraceRead> = serde_json::from_slice(&std::fs::read(&trace)?)?;
            let bytes: u64 = trace.iter().map(|t| u64::from(t.len)).sum();
            let t = std::time::Instant::now();
            let done = Arc::new(AtomicU64::new(0));
            nfsread::replay(port, name, &trace, &file, done).await?;
            let s = t.elapsed().as_secs_f64();
            println!(
                "{name}: {} reads, {bytes} bytes in {s:.3} s, {:.1} MB/s",
                trace.len(),
                bytes as f64 / s / 1e6
            );
            Ok(())
        }
        Cmd::Svg { json } => {
            let v: serde_json::Value = serde_json::from_slice(&std::fs::read(&json)?)?;
            let rows: Vec<Row> = serde_json::from_value(v["rows"].clone())?;
            let name = v["profile"].as_str().unwrap_or("run");
            std::fs::write(
                json.with_extension("svg"),
                report::svg(&format!("gridvfs bench: {name}"), &rows),
            )?;
            Ok(())
        }
        Cmd::Smoke => {
            let out = tempfile::tempdir()?;
            let data = tempfile::tempdir()?;
            run(
                Profile::Smoke,
                Size::Tiny,
                &[Peer::Gridvfs],
                &[Transport::Pipe],
                RunOpts {
                    bound: 60,
                    block_size: None,
                    shapes: data::SHAPES.to_vec(),
                    compare_fill: true,
                    w2_only: false,
                },
                out.path(),
                data.path(),
            )
            .await
        }
        Cmd::Outage {
            profile,
            outage_secs,
            bound,
            data,
        } => {
            let (name, data) = vm_run(profile, data);
            let default = if matches!(profile, Profile::Smoke) {
                20
            } else {
                60
            };
            let hold = Duration::from_secs(outage_secs.unwrap_or(default));
            let bound = Duration::from_secs(bound);
            boot::outage(&name, profile.link(), hold, bound, &data).await
        }
        Cmd::Resume {
            profile,
            runs,
            bound,
            out,
            data,
            no_peers,
        } => {
            let (name, data) = vm_run(profile, data);
            boot::resume(
                &name,
                profile.link(),
                runs,
                Duration::from_secs(bound),
                !no_peers,
                &out,
                &data,
            )
            .await
        }
        Cmd::Boot {
            profile,
            runs,
            bound,
            out,
            data,
            no_peers,
        } => {
            let (name, data) = vm_run(profile, data);
            boot::boot(
                &name,
                profile.link(),
                runs,
                Duration::from_secs(bound),
                !no_peers,
                &out,
                &data,
            )
            .await
        }
        Cmd::Run {
            profile,
            size,
            peers,
            transport,
            bound,
            block_size,
            shapes,
            compare_fill,
            w2_only,
            out,
            data,
        } => {
            let all = [
                Peer::Gridvfs,
                Peer::Kernel,
                Peer::Sshfs,
                Peer::SshfsTuned,
                Peer::Scp,
                Peer::SshZstd,
                Peer::Rclone,
                Peer::Mirror,
            ];
            let peers = if peers.is_empty() {
                all.to_vec()
            } else {
                peers
            };
            let data = data.unwrap_or_else(default_data);
            let shapes = shapes
                .iter()
                .filter(|s| *s != "none")
                .map(|s| {
                    data::SHAPES
                        .iter()
                        .copied()
                        .find(|k| k == s)
                        .ok_or_else(|| {
                            anyhow::anyhow!("unknown trace shape {s}: one of {:?}", data::SHAPES)
                        })
                })
                .collect::<anyhow::Result<Vec<_>>>()?;
            let opts = RunOpts {
                bound,
                block_size,
                shapes,
                compare_fill,
                w2_only,
            };
            run(profile, size, &peers, &transport, opts, &out, &data).await
        }
    }
}

/// A VM experiment's report name (the profile's) and data directory.
fn vm_run(profile: Profile, data: Option<PathBuf>) -> (String, PathBuf) {
    (
        format!("{profile:?}").to_ascii_lowercase(),
        data.unwrap_or_else(default_data),
    )
}

/// `$XDG_CACHE_HOME/gridvfs-bench` (or ~/.cache/gridvfs-bench).
fn default_data() -> PathBuf {
    std::env::var_os("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(std::env::var_os("HOME").unwrap_or_default()).join(".cache")
        })
        .join("gridvfs-bench")
}
