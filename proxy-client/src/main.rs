//! `gridvfs-client`: the VM-host proxy. Serves a remote image store over NFSv3 on loopback.

mod demo;
mod profile;
mod progress;
mod service;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use clap::{Parser, Subcommand};
use gridvfs::client::{Client, ClientConfig};
use gridvfs::tunnel::Remote;

#[derive(Parser)]
#[command(
    name = "gridvfs-client",
    version = concat!(env!("CARGO_PKG_VERSION"), " (", env!("GRIDVFS_GIT_REV"), ")"),
    about = "gridvfs proxy-client: a remote VM image store, mounted over NFSv3 on loopback"
)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(clap::Args, Clone)]
struct ServeArgs {
    /// The store: `ssh://[user@]host[:port]/path`, `[user@]host:path` (as sshfs),
    /// `local:/path/to/export`, or `exec:COMMAND` (its stdin/stdout speak the protocol).
    #[arg(long)]
    remote: String,
    /// SSH: a private key to log in with (repeatable); ssh-agent's keys and ~/.ssh/id_*
    /// are tried after these.
    #[arg(short = 'i', long = "identity")]
    identity: Vec<PathBuf>,
    /// SSH: the known_hosts file the store's host key is checked against.
    #[arg(long, default_value = "~/.ssh/known_hosts")]
    known_hosts: String,
    /// SSH: record the store's host key if it is not known yet (a changed key is still
    /// refused), like OpenSSH's StrictHostKeyChecking=accept-new.
    #[arg(long)]
    accept_new_host_key: bool,
    /// SSH: the server program to run on the store.
    #[arg(long, default_value = "gridvfs-server")]
    server_command: String,
    /// SSH: use this system ssh command line as the transport instead of the built-in
    /// client (honours ~/.ssh/config, ProxyJump, ...), e.g. `ssh -o BatchMode=yes`.
    #[arg(long)]
    ssh_command: Option<String>,
    /// Loopback address for the kernel's NFS client.
    #[arg(long, default_value = "127.0.0.1:20490")]
    listen: SocketAddr,
    /// Cache directory (default: $XDG_CACHE_HOME/gridvfs or ~/.cache/gridvfs).
    #[arg(long)]
    cache_dir: Option<PathBuf>,
    /// Seconds attributes are reused before asking the store again.
    #[arg(long, default_value_t = 1.0)]
    attr_timeout: f64,
    /// Seconds to keep retrying a lost store before NFS requests fail with EIO, with
    /// `--offline fail`. Otherwise the client goes offline after a few seconds of failed
    /// reconnects (see --offline).
    #[arg(long, default_value_t = 60.0)]
    reconnect_timeout: f64,
    /// While the store is unreachable: `cached` answers from the cache (cached blocks,
    /// the last attributes and names known) and asks the NFS client to retry the rest
    /// later (JUKEBOX: the kernel waits, as on a hard mount); `wait` answers only what is
    /// fresh and makes everything else wait; `fail` makes requests fail with EIO after
    /// --reconnect-timeout.
    #[arg(long, value_enum, default_value_t = Offline::Cached)]
    offline: Offline,
    /// Seconds offline after which requests that need the store fail with EIO instead of
    /// waiting; by default they wait for ever (as a hard mount does).
    #[arg(long, value_name = "SECS")]
    offline_limit: Option<f64>,
    /// Seconds the store may stay silent while requests wait (a stuck disk on the store,
    /// a stopped process, a black-holed link) before the session is dropped and the
    /// requests are retried on a new one; 0 waits forever. Any reply counts as progress,
    /// so slow links do not trip it.
    #[arg(long, default_value_t = 60.0)]
    request_timeout: f64,
    /// Take over the cache of an earlier export id of this store (a directory name under
    /// the cache dir), e.g. after the export moved or its device was renumbered: its
    /// write-back data not yet on the store is then uploaded. Refused if the current
    /// export's cache holds write-back data of its own.
    #[arg(long, value_name = "OLD_EXPORT_ID")]
    adopt_export: Option<String>,
    /// Start the server read-only (`local:` and SSH remotes).
    #[arg(long)]
    read_only: bool,
    /// Also answer portmapper lookups here (e.g. 127.0.0.1:111), for NFS clients that
    /// cannot be given a port, such as qemu's nfs:// driver.
    #[arg(long)]
    portmapper: Option<SocketAddr>,
    /// Serve Prometheus metrics (the figures of `status`) at http://ADDR/metrics, e.g.
    /// 127.0.0.1:9466. Off by default; a non-loopback address is warned about.
    #[arg(long, value_name = "ADDR")]
    metrics_addr: Option<SocketAddr>,
    /// Cache block size in bytes: a power of two from 4096 to 4194304.
    #[arg(long, default_value_t = gridvfs::cache::DEFAULT_BLOCK_SIZE)]
    block_size: u64,
    /// Cache capacity: bytes, or with a K, M, G or T suffix (powers of 1024).
    #[arg(long, default_value = "16G", value_parser = parse_size)]
    cache_size: u64,
    /// `through`: a WRITE is answered once the store has it. `back`: once it is synced to
    /// the local journal; uploaded in the background, on `flush` and at shutdown.
    #[arg(long, value_enum, default_value = "through")]
    write_policy: Policy,
    #[command(flatten)]
    access: AccessArgs,
}

/// Who may use the NFS port: knfsd's export options, with knfsd's defaults (`secure`,
/// `root_squash`, AUTH_SYS only, loopback clients only).
#[derive(clap::Args, Clone)]
#[command(next_help_heading = "Access (knfsd's export options)")]
struct AccessArgs {
    /// Hosts allowed to connect, as /etc/exports names them: `CIDR` or `ADDR`, with `(ro)`
    /// (the default) or `(rw)`, repeatable or comma-separated, e.g. `10.1.2.0/24(rw)`.
    /// Without it only loopback clients get in, and --listen must be a loopback address.
    #[arg(long, value_delimiter = ',')]
    allow_clients: Vec<String>,
    /// Only these uids (as the client sends them, before squashing) may use the mount,
    /// e.g. `--allow-uid 0,64055` for root and libvirt's qemu user.
    #[arg(long, value_delimiter = ',')]
    allow_uid: Vec<u32>,
    /// Take uid 0 and gid 0 as sent (knfsd's no_root_squash); by default root acts as
    /// the anonymous uid/gid.
    #[arg(long, conflicts_with = "all_squash")]
    no_root_squash: bool,
    /// Every caller acts as the anonymous uid/gid (knfsd's all_squash); with
    /// `--anonuid` set to the owner of the store's files and `--allow-uid`, the allowed
    /// users get the owner's rights.
    #[arg(long)]
    all_squash: bool,
    /// The anonymous uid squashed callers act as.
    #[arg(long, default_value_t = gridvfs::nfs::access::NOBODY)]
    anonuid: u32,
    /// The anonymous gid squashed callers act as.
    #[arg(long, default_value_t = gridvfs::nfs::access::NOBODY)]
    anongid: u32,
    /// Accept calls from unprivileged source ports (knfsd's `insecure`): any local user
    /// can then send calls with any uid it likes.
    #[arg(long)]
    allow_unprivileged_ports: bool,
    /// Turn every check off: any port, any credential, no permission checks. Any user
    /// who can reach the port reads and writes every file of the export.
    #[arg(long)]
    insecure: bool,
}

impl AccessArgs {
    fn policy(&self) -> anyhow::Result<gridvfs::nfs::AccessPolicy> {
        use gridvfs::nfs::access::{ClientRule, Squash};
        let clients = self
            .allow_clients
            .iter()
            .filter(|s| !s.trim().is_empty())
            .map(|s| ClientRule::parse(s).map_err(anyhow::Error::msg))
            .collect::<anyhow::Result<Vec<_>>>()?;
        if self.insecure {
            tracing::warn!(
                "--insecure: NO ACCESS CHECKS. Any user who can reach the NFS port reads and \
                 writes every file of the export, whatever its mode"
            );
        } else if self.allow_unprivileged_ports {
            tracing::warn!(
                "--allow-unprivileged-ports: any local user can send NFS calls claiming any \
                 uid, root included"
            );
        }
        Ok(gridvfs::nfs::AccessPolicy {
            insecure: self.insecure,
            require_privileged_port: !self.allow_unprivileged_ports,
            squash: if self.all_squash {
                Squash::All
            } else if self.no_root_squash {
                Squash::None
            } else {
                Squash::Root
            },
            anon_uid: self.anonuid,
            anon_gid: self.anongid,
            allowed_uids: (!self.allow_uid.is_empty()).then(|| self.allow_uid.clone()),
            clients,
        })
    }
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum Offline {
    Cached,
    Wait,
    Fail,
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum Policy {
    Through,
    Back,
}

fn parse_size(s: &str) -> Result<u64, String> {
    let (num, mult) = match s.trim().to_ascii_uppercase().chars().last() {
        Some('K') => (&s[..s.len() - 1], 1u64 << 10),
        Some('M') => (&s[..s.len() - 1], 1 << 20),
        Some('G') => (&s[..s.len() - 1], 1 << 30),
        Some('T') => (&s[..s.len() - 1], 1 << 40),
        _ => (s, 1),
    };
    num.trim()
        .parse::<u64>()
        .ok()
        .and_then(|n| n.checked_mul(mult))
        .ok_or_else(|| format!("`{s}` is not a size (e.g. 512M, 16G, 1073741824)"))
}

#[derive(Subcommand)]
enum CacheCmd {
    /// Remove cached data of files that no longer exist (their names are gone).
    Gc {
        /// Cache directory (default: $XDG_CACHE_HOME/gridvfs or ~/.cache/gridvfs).
        #[arg(long)]
        cache_dir: Option<PathBuf>,
    },
}

#[derive(Subcommand)]
enum ProfileCmd {
    /// Start recording, wait for Ctrl-C (or --seconds), then save.
    Record {
        #[arg(long)]
        cache_dir: Option<PathBuf>,
        #[arg(long)]
        seconds: Option<f64>,
        /// Only these files (paths in the export, as `status` shows them).
        paths: Vec<String>,
    },
    /// Start recording.
    Start {
        #[arg(long)]
        cache_dir: Option<PathBuf>,
    },
    /// Stop recording and save the profiles in the files' hints on the store.
    Save {
        #[arg(long)]
        cache_dir: Option<PathBuf>,
        /// Only these files (paths in the export, as `status` shows them).
        paths: Vec<String>,
    },
}

#[derive(Subcommand)]
enum Cmd {
    /// Serve in the foreground; prints the kernel mount command.
    Serve(Box<ServeArgs>),
    /// Make a small sample VM store, serve it through both proxies, read it back over NFS.
    Demo,
    /// Cache maintenance.
    Cache {
        #[command(subcommand)]
        cmd: CacheCmd,
    },
    /// Upload all write-back data now and wait for it (with a progress bar).
    Flush {
        /// Cache directory (default: $XDG_CACHE_HOME/gridvfs or ~/.cache/gridvfs).
        #[arg(long)]
        cache_dir: Option<PathBuf>,
    },
    /// Access profiles: record the order a workload (a VM boot) reads files in, and keep
    /// it in each file's hint on the store; the next cold start prefetches in that order.
    Profile {
        #[command(subcommand)]
        cmd: ProfileCmd,
    },
    /// Read files of a mounted export into the cache now (progress bar).
    Prefetch {
        #[arg(required = true)]
        paths: Vec<PathBuf>,
    },
    /// Figures of the clients running on a cache directory (cache hits, bytes fetched, ...).
    Status {
        /// Cache directory (default: $XDG_CACHE_HOME/gridvfs or ~/.cache/gridvfs).
        #[arg(long)]
        cache_dir: Option<PathBuf>,
        /// One JSON object per running client, one per line.
        #[arg(long)]
        json: bool,
    },
    /// Health check for monitoring (Nagios, monit, a systemd timer): one line per client
    /// and an exit code: 0 healthy, 10 the store is unreachable, 11 the cache directory
    /// is unusable (refused, or its disk nearly full), 12 write-back is stuck (refused by
    /// the store, or no upload progress for --stuck-after), 13 no client is running.
    Check {
        /// Cache directory (default: $XDG_CACHE_HOME/gridvfs or ~/.cache/gridvfs).
        #[arg(long)]
        cache_dir: Option<PathBuf>,
        /// Seconds pending write-back data may go without upload progress.
        #[arg(long, default_value_t = 300.0)]
        stuck_after: f64,
    },
    /// Print a shell completion script (bash, zsh, fish, elvish, powershell).
    Completions { shell: clap_complete::Shell },
    /// Print the manual page (roff), e.g. `| gzip > /usr/local/share/man/man1/NAME.1.gz`.
    Man,
}

/// `--cache-dir`, else the default (never a shared directory such as /tmp).
fn cache_dir_or_default(given: Option<PathBuf>) -> anyhow::Result<PathBuf> {
    match given {
        Some(d) => Ok(d),
        None => Ok(gridvfs::cache::dir::default_root()?),
    }
}

fn config(a: &ServeArgs) -> anyhow::Result<ClientConfig> {
    let mut remote = Remote::parse(&a.remote)?;
    remote.set_read_only(a.read_only);
    if let Remote::Ssh { opts, .. } = &mut remote {
        opts.identities = a.identity.clone();
        opts.known_hosts = Some(match a.known_hosts.strip_prefix("~/") {
            Some(rest) => std::env::var_os("HOME")
                .map(PathBuf::from)
                .unwrap_or_default()
                .join(rest),
            None => PathBuf::from(&a.known_hosts),
        });
        opts.accept_new_host_key = a.accept_new_host_key;
        opts.server_command = a.server_command.clone();
        opts.ssh_command = a.ssh_command.clone();
    } else {
        anyhow::ensure!(
            a.identity.is_empty() && a.ssh_command.is_none() && !a.accept_new_host_key,
            "-i, --ssh-command and --accept-new-host-key only apply to SSH remotes"
        );
    }
    anyhow::ensure!(a.attr_timeout >= 0.0, "--attr-timeout must be >= 0");
    anyhow::ensure!(
        a.reconnect_timeout >= 0.0,
        "--reconnect-timeout must be >= 0"
    );
    anyhow::ensure!(
        a.request_timeout >= 0.0 && a.request_timeout.is_finite(),
        "--request-timeout must be >= 0"
    );
    anyhow::ensure!(
        a.offline_limit.is_none_or(|l| l >= 0.0 && l.is_finite()),
        "--offline-limit must be >= 0"
    );
    let access = a.access.policy()?;
    access.check_listen(a.listen).map_err(anyhow::Error::msg)?;
    if let Some(pm) = a.portmapper {
        access.check_listen(pm).map_err(anyhow::Error::msg)?;
    }
    Ok(ClientConfig {
        access,
        remote,
        listen: a.listen,
        cache_dir: cache_dir_or_default(a.cache_dir.clone())?,
        attr_timeout: Duration::from_secs_f64(a.attr_timeout),
        timeouts: gridvfs::remote::Timeouts {
            reconnect: Duration::from_secs_f64(a.reconnect_timeout),
            request: Duration::from_secs_f64(a.request_timeout),
            offline: match a.offline {
                Offline::Cached => gridvfs::remote::OfflinePolicy::Cached,
                Offline::Wait => gridvfs::remote::OfflinePolicy::Wait,
                Offline::Fail => gridvfs::remote::OfflinePolicy::Fail,
            },
            offline_limit: a.offline_limit.map(Duration::from_secs_f64),
        },
        adopt_export: a.adopt_export.clone(),
        portmapper: a.portmapper,
        metrics: a.metrics_addr,
        block_size: a.block_size,
        cache_size: a.cache_size,
        write_policy: match a.write_policy {
            Policy::Through => gridvfs::cache::WritePolicy::Through,
            Policy::Back => gridvfs::cache::WritePolicy::Back,
        },
    })
}

fn main() -> anyhow::Result<()> {
    // Before any thread exists: the runtime's threads inherit it. (Logged once tracing
    // is up.)
    let io_flusher = gridvfs::process::become_io_flusher();
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?
        .block_on(run(io_flusher))
}

/// Logs to stderr, or under systemd (`$JOURNAL_STREAM` names our stderr) as native
/// journal entries: levels become priorities, the journal keeps the timestamps.
fn init_logging() {
    use tracing_subscriber::prelude::*;
    let filter = || {
        tracing_subscriber::EnvFilter::try_from_default_env()
            .unwrap_or_else(|_| "gridvfs=info,warn".into())
    };
    if std::env::var_os("JOURNAL_STREAM").is_some() {
        match tracing_journald::layer() {
            Ok(journald) => {
                tracing_subscriber::registry()
                    .with(filter())
                    .with(journald.with_syslog_identifier("gridvfs-client".into()))
                    .init();
                return;
            }
            Err(e) => eprintln!("journald unreachable ({e}); logging to stderr"),
        }
    }
    tracing_subscriber::fmt()
        .with_env_filter(filter())
        .with_writer(std::io::stderr)
        .init();
}

async fn run(io_flusher: bool) -> anyhow::Result<()> {
    init_logging();
    gridvfs::process::raise_open_files_limit();
    if !io_flusher {
        tracing::debug!(
            "PR_SET_IO_FLUSHER not permitted (needs CAP_SYS_RESOURCE): under memory pressure \
             bound the mount's dirty pages (README)"
        );
    }
    match Cli::parse().cmd {
        Cmd::Serve(a) => {
            let cfg = config(&a)?;
            let client = Client::start(&cfg)
                .await
                .with_context(|| format!("cannot start the client for {}", a.remote))?;
            println!(
                "gridvfs-client serving export {} on {}",
                client.store.welcome().export_id,
                client.nfs.local_addr()?
            );
            println!("mount it with:\n  {}", client.mount_command("/mnt/images"));
            service::ready(client.sources.clone());
            let data = client.data.clone();
            let mut term =
                tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
            tokio::select! {
                r = client.nfs.run() => r.context("NFS front stopped")?,
                _ = tokio::signal::ctrl_c() => eprintln!("interrupted; shutting down"),
                _ = term.recv() => eprintln!("terminated; shutting down"),
            }
            service::stopping("stopping");
            if let Some(wb) = &data.writeback {
                let (n, bytes) = wb.pending()?;
                if n > 0 {
                    eprintln!("uploading {bytes} bytes of write-back data before exit ...");
                    service::draining(bytes);
                    let drain = data.drain();
                    tokio::pin!(drain);
                    // Each tick with progress asks systemd for more stop time; a drain
                    // that stops progressing gives up at --reconnect-timeout.
                    let mut last = bytes;
                    let mut stalled_since = tokio::time::Instant::now();
                    loop {
                        tokio::select! {
                            r = &mut drain => { r?; break; }
                            _ = tokio::time::sleep(Duration::from_secs(5)) => {
                                let now = wb.pending()?.1;
                                if now < last {
                                    last = now;
                                    stalled_since = tokio::time::Instant::now();
                                }
                                if stalled_since.elapsed() >= cfg.timeouts.reconnect {
                                    eprintln!(
                                        "not all uploaded; the rest is kept and resumes at the next start"
                                    );
                                    break;
                                }
                                service::draining(now);
                            }
                        }
                    }
                }
            }
            Ok(())
        }
        Cmd::Demo => demo::run().await,
        Cmd::Cache {
            cmd: CacheCmd::Gc { cache_dir },
        } => {
            let dir = cache_dir_or_default(cache_dir)?;
            let root = gridvfs::cache::dir::CacheRoot::open(&dir)
                .with_context(|| format!("cannot use cache directory {}", dir.display()))?;
            let (mut files, mut bytes) = (0, 0);
            for path in root.exports()? {
                // A running client holds the directory: it collects for us.
                let (f, b) =
                    match gridvfs::cache::dir::ExportDir::open(&path) {
                        Ok(_held) => {
                            let r = gridvfs::cache::gc(&path)
                                .with_context(|| format!("gc of {}", path.display()))?;
                            (r.files, r.bytes)
                        }
                        Err(busy) => {
                            let r = gridvfs::control::command(&path, "gc").await.with_context(
                                || format!("{busy}; and its control socket did not answer"),
                            )?;
                            if let Some(e) = r.get("error") {
                                anyhow::bail!("gc of {} failed in the client: {e}", path.display());
                            }
                            (
                                r["files"].as_u64().unwrap_or(0),
                                r["bytes"].as_u64().unwrap_or(0),
                            )
                        }
                    };
                files += f;
                bytes += b;
            }
            println!(
                "removed {files} cached files, {:.1} MiB",
                bytes as f64 / (1u64 << 20) as f64
            );
            Ok(())
        }
        Cmd::Flush { cache_dir } => flush(&cache_dir_or_default(cache_dir)?).await,
        Cmd::Profile { cmd } => match cmd {
            ProfileCmd::Record {
                cache_dir,
                seconds,
                paths,
            } => profile::record(&cache_dir_or_default(cache_dir)?, seconds, &paths).await,
            ProfileCmd::Start { cache_dir } => {
                profile::start(&cache_dir_or_default(cache_dir)?).await
            }
            ProfileCmd::Save { cache_dir, paths } => {
                profile::save(&cache_dir_or_default(cache_dir)?, &paths).await
            }
        },
        Cmd::Prefetch { paths } => profile::prefetch(&paths),
        Cmd::Status { cache_dir, json } => status(&cache_dir_or_default(cache_dir)?, json).await,
        Cmd::Check {
            cache_dir,
            stuck_after,
        } => {
            let code = check(&cache_dir_or_default(cache_dir)?, stuck_after).await;
            std::process::exit(code);
        }
        Cmd::Completions { shell } => {
            use clap::CommandFactory;
            clap_complete::generate(
                shell,
                &mut Cli::command(),
                "gridvfs-client",
                &mut std::io::stdout(),
            );
            Ok(())
        }
        Cmd::Man => {
            use clap::CommandFactory;
            clap_mangen::Man::new(Cli::command()).render(&mut std::io::stdout())?;
            Ok(())
        }
    }
}

/// `check`: the worst condition of the clients on `cache_dir`, one line each.
async fn check(cache_dir: &std::path::Path, stuck_after: f64) -> i32 {
    const OK: i32 = 0;
    const STORE_UNREACHABLE: i32 = 10;
    const CACHE_UNUSABLE: i32 = 11;
    const WRITEBACK_STUCK: i32 = 12;
    const NOT_RUNNING: i32 = 13;
    if !cache_dir.exists() {
        println!("NOT RUNNING: no cache directory {}", cache_dir.display());
        return NOT_RUNNING;
    }
    let root = match gridvfs::cache::dir::CacheRoot::open(cache_dir) {
        Ok(r) => r,
        Err(e) => {
            println!("CACHE UNUSABLE {}: {e}", cache_dir.display());
            return CACHE_UNUSABLE;
        }
    };
    let mut worst = NOT_RUNNING;
    let mut found = 0;
    for path in root.exports().unwrap_or_default() {
        let Ok(st) = gridvfs::control::query(&path).await else {
            continue;
        };
        found += 1;
        let free = rustix::fs::statvfs(&path)
            .map(|v| v.f_bavail.saturating_mul(v.f_frsize))
            .unwrap_or(u64::MAX);
        let (code, line) = if let Some(secs) = st.offline_seconds {
            (
                STORE_UNREACHABLE,
                format!(
                    "STORE UNREACHABLE export {}: for {secs:.0} s (serving the cache; {} requests waiting so far)",
                    st.export_id, st.offline_refused
                ),
            )
        } else if free < 64 << 20 {
            (
                CACHE_UNUSABLE,
                format!(
                    "CACHE UNUSABLE export {}: {} MiB free on the cache disk ({})",
                    st.export_id,
                    free >> 20,
                    path.display()
                ),
            )
        } else if st.quarantined_entries > 0 {
            (
                WRITEBACK_STUCK,
                format!(
                    "WRITE-BACK STUCK export {}: the store refused {} entries ({} bytes), kept in the journal; see `status`",
                    st.export_id, st.quarantined_entries, st.quarantined_bytes
                ),
            )
        } else if let Some(w) = st.writeback_waiting_secs.filter(|w| *w > stuck_after) {
            (
                WRITEBACK_STUCK,
                format!(
                    "WRITE-BACK STUCK export {}: {} bytes pending, no upload progress for {w:.0} s",
                    st.export_id, st.dirty_bytes
                ),
            )
        } else {
            (
                OK,
                format!(
                    "OK export {}: online, {} block hits, {} misses, {} write-back bytes pending",
                    st.export_id, st.block_hits, st.block_misses, st.dirty_bytes
                ),
            )
        };
        println!("{line}");
        worst = if worst == NOT_RUNNING {
            code
        } else {
            worst.max(code)
        };
    }
    if found == 0 {
        println!(
            "NOT RUNNING: no gridvfs-client answers on {}",
            cache_dir.display()
        );
    }
    worst
}

async fn status(cache_dir: &std::path::Path, json: bool) -> anyhow::Result<()> {
    let entries = std::fs::read_dir(cache_dir)
        .with_context(|| format!("cannot read cache directory {}", cache_dir.display()))?;
    let mut found = 0;
    for e in entries.flatten() {
        let Ok(st) = gridvfs::control::query(&e.path()).await else {
            continue;
        };
        found += 1;
        if json {
            println!("{}", serde_json::to_string(&st)?);
        } else {
            let mib = |b: u64| b as f64 / (1u64 << 20) as f64;
            println!("export {} (pid {})", st.export_id, st.pid);
            if let Some(secs) = st.offline_seconds {
                println!(
                    "  OFFLINE  the store has been unreachable for {secs:.0} s: serving from the \
                     cache, {} requests asked to wait so far",
                    st.offline_refused
                );
            }
            if let Some(o) = st.last_outage.as_ref().filter(|o| o.changed > 0) {
                let paths: Vec<&str> = o.changed_paths.iter().map(|(p, _)| p.as_str()).collect();
                println!(
                    "  outage   the last one lasted {:.0} s: {} of the {} objects answered from \
                     the cache had changed on the store meanwhile: {}",
                    o.lasted_secs,
                    o.changed,
                    o.served,
                    paths.join(", ")
                );
            }
            println!(
                "  tunnel   {} requests, {:.1} MiB sent, {:.1} MiB received, {} reconnects, {} outages",
                st.tunnel_requests,
                mib(st.tunnel_bytes_sent),
                mib(st.tunnel_bytes_received),
                st.reconnects,
                st.outages
            );
            println!(
                "  cache    {} block hits, {} misses, {:.1} MiB fetched, {} checksum failures, {} invalidations",
                st.block_hits,
                st.block_misses,
                mib(st.bytes_fetched),
                st.checksum_failures,
                st.invalidations
            );
            println!(
                "  zeros    {:.1} MiB answered from hints, {:.1} MiB left out of packed reads",
                mib(st.hint_zero_bytes),
                mib(st.zero_bytes)
            );
            if st.quarantined_entries > 0 {
                println!(
                    "  REFUSED  {:.1} MiB of write-back data in {} entries refused by the store, kept in the journal (retried at the next start; the files' writes fail with EIO until then)",
                    mib(st.quarantined_bytes),
                    st.quarantined_entries
                );
            }
            if st.dirty_bytes > 0 {
                println!(
                    "  write-back {:.1} MiB pending in {} entries",
                    mib(st.dirty_bytes),
                    st.dirty_entries
                );
            }
            for f in &st.files {
                let here = f.cached_bytes + f.hint_zero_bytes;
                println!(
                    "  {:>5.1}%  {:>9.1} MiB  {} ({:.1} MiB here, {:.1} MiB fetched, {:.1} MiB zeros from the hint)",
                    100.0 * here.min(f.size) as f64 / f.size.max(1) as f64,
                    mib(f.size),
                    f.path,
                    mib(f.cached_bytes),
                    mib(f.fetched_bytes),
                    mib(f.hint_zero_bytes)
                );
            }
        }
    }
    anyhow::ensure!(
        found > 0,
        "no running gridvfs-client uses {} (start one with `gridvfs-client serve`)",
        cache_dir.display()
    );
    Ok(())
}

async fn flush(cache_dir: &std::path::Path) -> anyhow::Result<()> {
    let entries = std::fs::read_dir(cache_dir)
        .with_context(|| format!("cannot read cache directory {}", cache_dir.display()))?;
    let mut found = 0;
    for e in entries.flatten() {
        if !gridvfs::control::socket_path(&e.path()).exists() {
            continue;
        }
        let name = e.file_name().to_string_lossy().into_owned();
        let mut bar = progress::Progress::new("flush", format!("export {name}"), 0);
        let mut total = None;
        let res = gridvfs::control::flush(&e.path(), |st| {
            let t = *total.get_or_insert(st.dirty_bytes);
            bar.set_total(t.max(st.dirty_bytes));
            bar.set(t.saturating_sub(st.dirty_bytes));
        })
        .await;
        match res {
            Ok(()) => {
                found += 1;
                bar.finish("flushed");
            }
            Err(err) if err.kind() == std::io::ErrorKind::ConnectionRefused => bar.clear(),
            Err(err) => return Err(err).context("flush failed"),
        }
    }
    anyhow::ensure!(
        found > 0,
        "no running gridvfs-client uses {}",
        cache_dir.display()
    );
    Ok(())
}
