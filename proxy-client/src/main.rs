//! `gridvfs-client`: the VM-host proxy. Serves a remote image store over NFSv3 on loopback.

mod demo;
mod mount;
mod profile;
mod progress;
mod service;
mod settings;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Context;
use clap::{Parser, Subcommand};
use gridvfs::client::Client;
use serde::Serialize;

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

/// `serve`'s flags: the last layer of the settings (see settings.rs), so only those given
/// are set here; the defaults are the settings' own.
#[derive(clap::Args, Clone, Serialize)]
#[serde(rename_all = "kebab-case")]
struct ServeArgs {
    #[command(flatten)]
    #[serde(skip)]
    config: settings::ConfigArgs,
    /// The store: `ssh://[user@]host[:port]/path`, `[user@]host:path` (as sshfs),
    /// `local:/path/to/export`, or `exec:COMMAND` (its stdin/stdout speak the protocol).
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    remote: Option<String>,
    /// SSH: a private key to log in with (repeatable); ssh-agent's keys and ~/.ssh/id_*
    /// are tried after these.
    #[arg(short = 'i', long = "identity")]
    #[serde(skip_serializing_if = "Vec::is_empty")]
    identity: Vec<PathBuf>,
    /// SSH: the known_hosts file the store's host key is checked against
    /// [default: ~/.ssh/known_hosts].
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    known_hosts: Option<String>,
    /// SSH: record the store's host key if it is not known yet (a changed key is still
    /// refused), like OpenSSH's StrictHostKeyChecking=accept-new.
    #[arg(long)]
    #[serde(skip_serializing_if = "not")]
    accept_new_host_key: bool,
    /// SSH: the server program to run on the store [default: gridvfs-server].
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    server_command: Option<String>,
    /// SSH: use this system ssh command line as the transport instead of the built-in
    /// client (honours ~/.ssh/config, ProxyJump, ...), e.g. `ssh -o BatchMode=yes`.
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    ssh_command: Option<String>,
    /// Loopback address for the kernel's NFS client [default: 127.0.0.1:20490].
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    listen: Option<SocketAddr>,
    /// Cache directory [default: $XDG_CACHE_HOME/gridvfs or ~/.cache/gridvfs].
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    cache_dir: Option<PathBuf>,
    /// Seconds attributes are reused before asking the store again [default: 1].
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    attr_timeout: Option<f64>,
    /// Seconds to keep retrying a lost store before NFS requests fail with EIO, with
    /// `--offline fail`. Otherwise the client goes offline after a few seconds of failed
    /// reconnects (see --offline) [default: 60].
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    reconnect_timeout: Option<f64>,
    /// While the store is unreachable: `cached` answers from the cache (cached blocks,
    /// the last attributes and names known) and asks the NFS client to retry the rest
    /// later (JUKEBOX: the kernel waits, as on a hard mount); `wait` answers only what is
    /// fresh and makes everything else wait; `fail` makes requests fail with EIO after
    /// --reconnect-timeout [default: cached].
    #[arg(long, value_enum)]
    #[serde(skip_serializing_if = "Option::is_none")]
    offline: Option<settings::Offline>,
    /// Seconds offline after which requests that need the store fail with EIO instead of
    /// waiting; by default they wait for ever (as a hard mount does).
    #[arg(long, value_name = "SECS")]
    #[serde(skip_serializing_if = "Option::is_none")]
    offline_limit: Option<f64>,
    /// Seconds the store may stay silent while requests wait (a stuck disk on the store,
    /// a stopped process, a black-holed link) before the session is dropped and the
    /// requests are retried on a new one; 0 waits forever. Any reply counts as progress,
    /// so slow links do not trip it [default: 60].
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    request_timeout: Option<f64>,
    /// Take over the cache of an earlier export id of this store (a directory name under
    /// the cache dir), e.g. after the export moved or its device was renumbered: its
    /// write-back data not yet on the store is then uploaded. Refused if the current
    /// export's cache holds write-back data of its own.
    #[arg(long, value_name = "OLD_EXPORT_ID")]
    #[serde(skip_serializing_if = "Option::is_none")]
    adopt_export: Option<String>,
    /// Start the server read-only (`local:` and SSH remotes).
    #[arg(long)]
    #[serde(skip_serializing_if = "not")]
    read_only: bool,
    /// Also answer portmapper lookups here (e.g. 127.0.0.1:111), for NFS clients that
    /// cannot be given a port, such as qemu's nfs:// driver.
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    portmapper: Option<SocketAddr>,
    /// Serve Prometheus metrics (the figures of `status`) at http://ADDR/metrics, e.g.
    /// 127.0.0.1:9466. Off by default; a non-loopback address is warned about.
    #[arg(long, value_name = "ADDR")]
    #[serde(skip_serializing_if = "Option::is_none")]
    metrics_addr: Option<SocketAddr>,
    /// Cache block size in bytes: a power of two from 4096 to 4194304 [default: 262144].
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    block_size: Option<u64>,
    /// Cache capacity: bytes, or with a K, M, G or T suffix (powers of 1024) [default: 16G].
    #[arg(long, value_parser = settings::parse_size)]
    #[serde(skip_serializing_if = "Option::is_none")]
    cache_size: Option<u64>,
    /// `through`: a WRITE is answered once the store has it. `back`: once it is synced to
    /// the local journal; uploaded in the background, on `flush` and at shutdown
    /// [default: through].
    #[arg(long, value_enum)]
    #[serde(skip_serializing_if = "Option::is_none")]
    write_policy: Option<settings::Policy>,
    /// Background fill of files being read, at low priority (a reader waiting on the store
    /// always goes first): `near` the 1 MiB before and 4 MiB after each miss; `all`
    /// (default) those, then, over links of 5 ms or more, the rest of each such file's
    /// non-zero blocks while the cache is under 3/4 full (a cold boot never takes much
    /// longer than copying the image first, and a filled image keeps working offline);
    /// `off` only what readers ask and sequential read-ahead.
    #[arg(long, value_enum)]
    #[serde(skip_serializing_if = "Option::is_none")]
    fill: Option<settings::Fill>,
    /// Fetch block payloads of hinted files (files with a current `.NAME.gvhint` at the
    /// cache's block size) from this HTTP cache tier, e.g. `http://squid.site:3128`, in
    /// front of a site client run with `--site-listen`. Repeatable: tried in order (say,
    /// the site's Squid, then the site itself). Blocks are sealed (encrypted under keys
    /// only the store's manifest gives) and verified before use; names, attributes and
    /// manifests still come over this client's own session, and so does any block no
    /// tier gives.
    #[arg(long, value_name = "URL")]
    #[serde(skip_serializing_if = "Vec::is_empty")]
    block_source: Vec<String>,
    /// Seconds a --block-source may stay silent: a block waits for it this long from when
    /// its request is sent (each source gets at most 16 at once), or up to 6 times this
    /// long while the source keeps giving other blocks (loaded, not dead); then the block
    /// comes from the next source or the session, and a silent source is skipped for a
    /// few seconds [default: 10].
    #[arg(long, value_name = "SECS")]
    #[serde(skip_serializing_if = "Option::is_none")]
    block_source_timeout: Option<f64>,
    /// Be a site: also serve sealed blocks of the export as immutable HTTP objects here
    /// (e.g. 0.0.0.0:8080), for a Squid/nginx/Varnish cache in front of many hosts'
    /// --block-source. Serves only blocks whose id the asker already knows (ids derive
    /// from the store's block sums), encrypted; the store stays SSH-only.
    #[arg(long, value_name = "ADDR")]
    #[serde(skip_serializing_if = "Option::is_none")]
    site_listen: Option<SocketAddr>,
    /// With --site-listen: the URL hosts reach this site at directly, e.g.
    /// http://10.0.0.5:8080 (default: http://ADDR of --site-listen unless it is a wildcard).
    /// Given in every block's answer, so hosts whose cache dies come here, not to the store.
    #[arg(long, value_name = "URL")]
    #[serde(skip_serializing_if = "Option::is_none")]
    site_url: Option<String>,
    /// Share boot profiles: when this host is the first to read a hinted file whose hint
    /// has no access profile, record the order of its first SECS seconds of reads and save
    /// it to the hint on the store, so later hosts prefetch it (through --block-source if
    /// they use one). Needs a writable export [default: off].
    #[arg(long, value_name = "SECS")]
    #[serde(skip_serializing_if = "Option::is_none")]
    share_profiles: Option<f64>,
    #[command(flatten)]
    #[serde(flatten)]
    access: AccessArgs,
}

fn not(b: &bool) -> bool {
    !*b
}

/// Who may use the NFS port: knfsd's export options, with knfsd's defaults (`secure`,
/// `root_squash`, AUTH_SYS only, loopback clients only).
#[derive(clap::Args, Clone, Serialize)]
#[serde(rename_all = "kebab-case")]
#[command(next_help_heading = "Access (knfsd's export options)")]
struct AccessArgs {
    /// Hosts allowed to connect, as /etc/exports names them: `CIDR` or `ADDR`, with `(ro)`
    /// (the default) or `(rw)`, repeatable or comma-separated, e.g. `10.1.2.0/24(rw)`.
    /// Without it only loopback clients get in, and --listen must be a loopback address.
    #[arg(long, value_delimiter = ',')]
    #[serde(skip_serializing_if = "Vec::is_empty")]
    allow_clients: Vec<String>,
    /// Only these uids (as the client sends them, before squashing) may use the mount,
    /// e.g. `--allow-uid 0,64055` for root and libvirt's qemu user.
    #[arg(long, value_delimiter = ',')]
    #[serde(skip_serializing_if = "Vec::is_empty")]
    allow_uid: Vec<u32>,
    /// Take uid 0 and gid 0 as sent (knfsd's no_root_squash); by default root acts as
    /// the anonymous uid/gid.
    #[arg(long, conflicts_with = "all_squash")]
    #[serde(skip_serializing_if = "not")]
    no_root_squash: bool,
    /// Every caller acts as the anonymous uid/gid (knfsd's all_squash); with
    /// `--anonuid` set to the owner of the store's files and `--allow-uid`, the allowed
    /// users get the owner's rights.
    #[arg(long)]
    #[serde(skip_serializing_if = "not")]
    all_squash: bool,
    /// The anonymous uid squashed callers act as [default: 65534].
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    anonuid: Option<u32>,
    /// The anonymous gid squashed callers act as [default: 65534].
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    anongid: Option<u32>,
    /// Accept calls from unprivileged source ports (knfsd's `insecure`): any local user
    /// can then send calls with any uid it likes.
    #[arg(long)]
    #[serde(skip_serializing_if = "not")]
    allow_unprivileged_ports: bool,
    /// Turn every check off: any port, any credential, no permission checks. Any user
    /// who can reach the port reads and writes every file of the export.
    #[arg(long)]
    #[serde(skip_serializing_if = "not")]
    insecure: bool,
}

#[derive(Subcommand)]
enum CacheCmd {
    /// Remove cached data of files that no longer exist (their names are gone).
    Gc {
        #[command(flatten)]
        dir: CacheDirArgs,
    },
}

#[derive(Subcommand)]
enum ProfileCmd {
    /// Start recording, wait for Ctrl-C (or --seconds), then save.
    Record {
        #[command(flatten)]
        dir: CacheDirArgs,
        #[arg(long)]
        seconds: Option<f64>,
        /// Only these files (paths in the export, as `status` shows them).
        paths: Vec<String>,
    },
    /// Start recording.
    Start {
        #[command(flatten)]
        dir: CacheDirArgs,
    },
    /// Stop recording and save the profiles in the files' hints on the store.
    Save {
        #[command(flatten)]
        dir: CacheDirArgs,
        /// Only these files (paths in the export, as `status` shows them).
        paths: Vec<String>,
    },
}

#[derive(Subcommand)]
enum ConfigCmd {
    /// Print every setting as TOML (`--origin`: and where its value came from).
    Show {
        /// Say where each value came from: a file and table, a variable, a flag, a default.
        #[arg(long)]
        origin: bool,
        #[command(flatten)]
        serve: Box<ServeArgs>,
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
        #[command(flatten)]
        dir: CacheDirArgs,
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
        #[command(flatten)]
        dir: CacheDirArgs,
        /// One JSON object per running client, one per line.
        #[arg(long)]
        json: bool,
    },
    /// Health check for monitoring (Nagios, monit, a systemd timer): one line per client
    /// and an exit code: 0 healthy, 10 the store is unreachable, 11 the cache directory
    /// is unusable (refused, or its disk nearly full), 12 write-back is stuck (refused by
    /// the store, or no upload progress for --stuck-after), 13 no client is running.
    Check {
        #[command(flatten)]
        dir: CacheDirArgs,
        /// Seconds pending write-back data may go without upload progress.
        #[arg(long, default_value_t = 300.0)]
        stuck_after: f64,
    },
    /// The settings: `config show` prints what `serve` (with the same flags) would run
    /// with, merged from built-in defaults, the config files, GRIDVFS_* variables and flags.
    Config {
        #[command(subcommand)]
        cmd: ConfigCmd,
    },
    /// Mount a store on a directory as `mount -t gridvfs` does (the same program, installed
    /// as /sbin/mount.gridvfs): start or reuse the client, wait until it serves, mount NFS.
    Mount(mount::MountArgs),
    /// Print a shell completion script (bash, zsh, fish, elvish, powershell).
    Completions { shell: clap_complete::Shell },
    /// Print the manual page (roff), e.g. `| gzip > /usr/local/share/man/man1/NAME.1.gz`.
    Man,
}

/// Which cache directory a maintenance command looks at: the one `serve` with the same
/// config would use.
#[derive(clap::Args)]
struct CacheDirArgs {
    /// Cache directory [default: the config's `cache-dir` (or $GRIDVFS_CACHE_DIR), else
    /// $XDG_CACHE_HOME/gridvfs or ~/.cache/gridvfs].
    #[arg(long)]
    cache_dir: Option<PathBuf>,
    #[command(flatten)]
    config: settings::ConfigArgs,
}

impl CacheDirArgs {
    /// `--cache-dir`, else the config's (its `[mount.NAME]` with `--name`), else the
    /// default (never a shared directory such as /tmp).
    fn resolve(self) -> anyhow::Result<PathBuf> {
        if let Some(d) = self.cache_dir {
            return Ok(d);
        }
        let loaded = settings::Loaded::load(&self.config, Default::default(), "flag")?;
        loaded.settings()?.cache_root()
    }
}

/// The settings `serve` runs with: defaults < config files < environment < flags.
fn serve_settings(a: &ServeArgs) -> anyhow::Result<(settings::Loaded, settings::Settings)> {
    let loaded = settings::Loaded::load(&a.config, settings::given(a)?, "flag")?;
    let s = loaded.settings()?;
    Ok((loaded, s))
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
    use std::io::IsTerminal;
    tracing_subscriber::fmt()
        .with_env_filter(filter())
        .with_ansi(std::io::stderr().is_terminal())
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
    // Installed as /sbin/mount.gridvfs, mount(8) runs us with its helper arguments.
    let argv0 = std::env::args_os().next().unwrap_or_default();
    if Path::new(&argv0)
        .file_name()
        .is_some_and(|n| n == "mount.gridvfs")
    {
        #[derive(Parser)]
        #[command(name = "mount.gridvfs", about = "mount(8) helper for gridvfs")]
        struct Helper {
            #[command(flatten)]
            args: mount::MountArgs,
        }
        let code = match Helper::try_parse() {
            Ok(h) => helper_exit(mount::run(h.args).await),
            Err(e) if !e.use_stderr() => {
                let _ = e.print();
                0
            }
            Err(e) => {
                let _ = e.print();
                mount::USAGE
            }
        };
        std::process::exit(code);
    }
    match Cli::parse().cmd {
        Cmd::Serve(a) => {
            let (_, s) = serve_settings(&a)?;
            let cfg = s.client_config()?;
            let client = Client::start(&cfg).await.with_context(|| {
                format!(
                    "cannot start the client for {}",
                    s.remote.as_deref().unwrap_or_default()
                )
            })?;
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
        Cmd::Mount(a) => std::process::exit(helper_exit(mount::run(a).await)),
        Cmd::Config {
            cmd: ConfigCmd::Show { origin, serve },
        } => {
            let (loaded, _) = serve_settings(&serve)?;
            print!("{}", settings::show(&loaded, origin)?);
            Ok(())
        }
        Cmd::Cache {
            cmd: CacheCmd::Gc { dir },
        } => {
            let dir = dir.resolve()?;
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
        Cmd::Flush { dir } => flush(&dir.resolve()?).await,
        Cmd::Profile { cmd } => match cmd {
            ProfileCmd::Record {
                dir,
                seconds,
                paths,
            } => profile::record(&dir.resolve()?, seconds, &paths).await,
            ProfileCmd::Start { dir } => profile::start(&dir.resolve()?).await,
            ProfileCmd::Save { dir, paths } => profile::save(&dir.resolve()?, &paths).await,
        },
        Cmd::Prefetch { paths } => profile::prefetch(&paths),
        Cmd::Status { dir, json } => status(&dir.resolve()?, json).await,
        Cmd::Check { dir, stuck_after } => {
            let code = check(&dir.resolve()?, stuck_after).await;
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

/// The helper's result as mount(8)'s exit status, the reason on stderr.
fn helper_exit(r: Result<(), mount::Failed>) -> i32 {
    match r {
        Ok(()) => 0,
        Err(mount::Failed(code, msg)) => {
            eprintln!("mount.gridvfs: {msg}");
            code
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
                    "STORE UNREACHABLE export {}: for {secs:.0} s (serving the cache; {} requests asked to wait so far, {} held now)",
                    st.export_id, st.offline_refused, st.held
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
                     cache, {} requests asked to wait so far, {} held now (libnfs clients)",
                    st.offline_refused, st.held
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
                "  ahead    {} blocks read ahead, {} prefetched from hints, {} by background fill",
                st.read_ahead_blocks, st.prefetched_blocks, st.filled_blocks
            );
            println!(
                "  zeros    {:.1} MiB answered from hints, {:.1} MiB left out of packed reads",
                mib(st.hint_zero_bytes),
                mib(st.zero_bytes)
            );
            for t in &st.tiers {
                println!(
                    "  tier     {} blocks ({:.1} MiB sealed) from {}, {} over the session instead, {} late, {} failed verification{}",
                    t.blocks,
                    mib(t.bytes),
                    t.url,
                    t.fallbacks,
                    t.late,
                    t.rejected,
                    t.down
                        .as_ref()
                        .map(|d| format!("; SKIPPED for now: {d}"))
                        .unwrap_or_default()
                );
            }
            if let Some(s) = &st.site {
                println!(
                    "  site     {} blocks ({:.1} MiB sealed) served at http://{}/, {} requests refused",
                    s.blocks,
                    mib(s.bytes),
                    s.listen,
                    s.refused
                );
            }
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
