//! `mount.gridvfs`: what mount(8) runs for `mount -t gridvfs SPEC DIR -o …` and for fstab
//! lines of type `gridvfs` (install it as a symlink to `gridvfs-client` in /sbin; the
//! binary answers to that name). It finds a running client for the store on the mount's
//! NFS address (e.g. the `gridvfs@NAME` unit) or starts one, waits until that client
//! says it is ready (its own sd_notify `READY=1`, sent once the NFS port is bound and the
//! store answered or the cache serves offline), and then mounts NFSv3 with mount(2)
//! itself, with the options that keep VM disks safe (`hard`, local locks), so nothing
//! of nfs-common is needed. Exit statuses are mount(8)'s: 1 bad usage or permissions,
//! 2 a system error, 32 the mount failed (with the reason). `umount` needs nothing from
//! here: the client stays and drains its write-back data in its own time.

use std::ffi::CString;
use std::io::Read;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::os::unix::fs::OpenOptionsExt;
use std::os::unix::net::UnixDatagram;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use figment::value::{Dict, Value};
use rustix::mount::MountFlags;

use crate::settings::{self, ConfigArgs, KEYS, Loaded};

/// mount(8)'s exit statuses.
pub const USAGE: i32 = 1;
pub const SYSTEM: i32 = 2;
pub const FAILURE: i32 = 32;

/// As mount(8) calls a helper: `mount.gridvfs SPEC DIR [-sfnv] [-N NS] [-o OPTIONS]`.
#[derive(clap::Args, Debug)]
pub struct MountArgs {
    /// The store (`[user@]host:path`, `ssh://[user@]host[:port]/path`, `local:/path`), or
    /// the NAME of a `[mount.NAME]` table of the config.
    pub spec: String,
    /// The mount point (an existing directory).
    pub dir: PathBuf,
    /// Options, comma-separated: any setting of `gridvfs-client serve` by its flag name
    /// (`cache-size=32G,write-policy=back,listen=127.0.0.1:20491`), `config=FILE` and
    /// `name=NAME` (a table of the config), the generic mount flags (ro, nosuid, noatime,
    /// …) and NFS options passed to the kernel (rsize=, actimeo=, …). `hard` and local
    /// locking (`nolock`) are the defaults; `soft` is refused.
    #[arg(short = 'o', value_delimiter = ',')]
    pub options: Vec<String>,
    /// Sloppy: ignore options the helper does not know instead of passing them to NFS.
    #[arg(short = 's')]
    pub sloppy: bool,
    /// Fake: do everything (start the client, wait for it) but the mount(2) call.
    #[arg(short = 'f')]
    pub fake: bool,
    /// No mtab (accepted; /etc/mtab is the kernel's list today).
    #[arg(short = 'n')]
    pub no_mtab: bool,
    /// Say what is done.
    #[arg(short = 'v')]
    pub verbose: bool,
    /// Mount namespace (not supported: refused).
    #[arg(short = 'N')]
    pub namespace: Option<String>,
    /// File system type as mount(8) passes it (`gridvfs` or `gridvfs.SUBTYPE`).
    #[arg(short = 't')]
    pub fstype: Option<String>,
}

/// A failure with mount(8)'s exit status for it.
pub struct Failed(pub i32, pub String);

fn usage(msg: impl Into<String>) -> Failed {
    Failed(USAGE, msg.into())
}
fn failure(msg: impl Into<String>) -> Failed {
    Failed(FAILURE, msg.into())
}

/// What the `-o` options ask for, sorted by who takes them.
#[derive(Debug)]
struct Options {
    /// For the client's settings (the mount-option layer).
    settings: Dict,
    /// The same, as text, for the environment of a client started here.
    env: Vec<(String, String)>,
    config: ConfigArgs,
    /// mount(2) flags.
    flags: MountFlags,
    /// NFS options for the kernel.
    nfs: Vec<String>,
}

/// Options that mean something to mount(8) or systemd only.
fn ignored(key: &str) -> bool {
    matches!(
        key,
        "defaults"
            | "auto"
            | "noauto"
            | "_netdev"
            | "nofail"
            | "user"
            | "nouser"
            | "users"
            | "owner"
            | "group"
            | "comment"
            | "bg"
            | "fg"
    ) || key.starts_with("x-")
}

/// The generic flags: (name, flag, set?).
const FLAGS: &[(&str, MountFlags, bool)] = &[
    ("ro", MountFlags::RDONLY, true),
    ("rw", MountFlags::RDONLY, false),
    ("nosuid", MountFlags::NOSUID, true),
    ("suid", MountFlags::NOSUID, false),
    ("nodev", MountFlags::NODEV, true),
    ("dev", MountFlags::NODEV, false),
    ("noexec", MountFlags::NOEXEC, true),
    ("exec", MountFlags::NOEXEC, false),
    ("sync", MountFlags::SYNCHRONOUS, true),
    ("async", MountFlags::SYNCHRONOUS, false),
    ("dirsync", MountFlags::DIRSYNC, true),
    ("noatime", MountFlags::NOATIME, true),
    ("atime", MountFlags::NOATIME, false),
    ("nodiratime", MountFlags::NODIRATIME, true),
    ("diratime", MountFlags::NODIRATIME, false),
    ("relatime", MountFlags::RELATIME, true),
    ("norelatime", MountFlags::RELATIME, false),
    ("strictatime", MountFlags::STRICTATIME, true),
    ("lazytime", MountFlags::LAZYTIME, true),
];

/// NFS options the helper sets itself from the client's address.
const MANAGED: &[&str] = &[
    "addr",
    "mountaddr",
    "port",
    "mountport",
    "vers",
    "nfsvers",
    "proto",
    "mountproto",
    "udp",
    "tcp",
];

fn parse_options(opts: &[String], sloppy: bool) -> Result<Options, Failed> {
    let mut o = Options {
        settings: Dict::new(),
        env: Vec::new(),
        config: ConfigArgs::default(),
        flags: MountFlags::empty(),
        nfs: Vec::new(),
    };
    for raw in opts.iter().map(|s| s.trim()).filter(|s| !s.is_empty()) {
        let (key, value) = match raw.split_once('=') {
            Some((k, v)) => (k, Some(v)),
            None => (raw, None),
        };
        if ignored(key) {
            continue;
        }
        if let Some((_, flag, set)) = FLAGS.iter().find(|(n, ..)| *n == key) {
            if *set {
                o.flags |= *flag;
            } else {
                o.flags &= !*flag;
            }
            continue;
        }
        match key {
            "config" => {
                o.config.config = Some(value.ok_or_else(|| usage("config= needs a file"))?.into());
                continue;
            }
            "name" => {
                o.config.name = Some(
                    value
                        .ok_or_else(|| usage("name= needs a table name"))?
                        .into(),
                );
                continue;
            }
            "soft" | "softerr" => {
                return Err(usage(format!(
                    "`{key}` is refused: a soft NFS mount returns EIO on a timeout, and a VM \
                     whose disk returns EIO corrupts its file systems; gridvfs answers what it \
                     cannot serve yet with JUKEBOX, which a hard mount waits through"
                )));
            }
            "remount" => {
                return Err(usage(
                    "remount is not supported: unmount and mount again (the client keeps its cache)",
                ));
            }
            _ => {}
        }
        if MANAGED.contains(&key) {
            return Err(usage(format!(
                "`{raw}`: mount.gridvfs sets the NFS address, port, version and transport \
                 itself from the client's listen address; set `listen=127.0.0.1:PORT` instead"
            )));
        }
        let setting = key.replace('_', "-");
        if KEYS.contains(&setting.as_str()) {
            let text = value.unwrap_or("true");
            let v: Value = text
                .parse()
                .map_err(|e| usage(format!("option `{raw}`: {e}")))?;
            o.settings.insert(setting.clone(), v);
            o.env.push((
                format!("GRIDVFS_{}", setting.to_ascii_uppercase().replace('-', "_")),
                text.to_string(),
            ));
            continue;
        }
        if sloppy && !NFS_OPTIONS.contains(&key) {
            continue;
        }
        o.nfs.push(raw.to_string());
    }
    let has = |nfs: &[String], names: &[&str]| {
        nfs.iter()
            .any(|n| names.iter().any(|k| n.split('=').next() == Some(*k)))
    };
    if !has(&o.nfs, &["hard"]) {
        o.nfs.push("hard".into());
    }
    if !has(&o.nfs, &["lock", "nolock", "local_lock"]) {
        // Locks stay on this host (local_lock=all): qemu's OFD locks work between the VMs
        // of one host; nothing locks across hosts.
        o.nfs.push("nolock".into());
    }
    if !has(&o.nfs, &["acl", "noacl"]) {
        o.nfs.push("noacl".into());
    }
    Ok(o)
}

/// NFS options the kernel knows (for `-s`: anything else is dropped rather than refused).
const NFS_OPTIONS: &[&str] = &[
    "hard",
    "intr",
    "nointr",
    "timeo",
    "retrans",
    "rsize",
    "wsize",
    "acregmin",
    "acregmax",
    "acdirmin",
    "acdirmax",
    "actimeo",
    "noac",
    "ac",
    "cto",
    "nocto",
    "lookupcache",
    "lock",
    "nolock",
    "local_lock",
    "acl",
    "noacl",
    "rdirplus",
    "nordirplus",
    "sharecache",
    "nosharecache",
    "resvport",
    "noresvport",
    "fsc",
    "nofsc",
    "retry",
    "sec",
    "nconnect",
];

/// The config table for a store given as the spec: one whose `remote` is the spec.
fn table_for_remote(cfg: &ConfigArgs, remote: &str) -> Result<Option<String>, Failed> {
    let all =
        Loaded::load(cfg, Dict::new(), "mount option").map_err(|e| usage(format!("{e:#}")))?;
    for name in &all.mounts {
        let one = ConfigArgs {
            config: cfg.config.clone(),
            name: Some(name.clone()),
        };
        let s = Loaded::load(&one, Dict::new(), "mount option")
            .and_then(|l| l.settings())
            .map_err(|e| usage(format!("{e:#}")))?;
        if s.remote.as_deref() == Some(remote) {
            return Ok(Some(name.clone()));
        }
    }
    Ok(None)
}

/// Run the helper; `Err` carries the exit status and the message for stderr.
pub async fn run(a: MountArgs) -> Result<(), Failed> {
    if let Some(t) = a
        .fstype
        .as_ref()
        .filter(|t| *t != "gridvfs" && !t.starts_with("gridvfs."))
    {
        return Err(usage(format!("mount.gridvfs cannot mount type `{t}`")));
    }
    if a.namespace.is_some() {
        return Err(usage("-N (mount namespaces) is not supported"));
    }
    let mut o = parse_options(&a.options, a.sloppy)?;
    // The spec is a store, or the name of a config table.
    let spec_is_name = !a.spec.contains(':') && !a.spec.starts_with('/');
    let mut remote_flag = None;
    if spec_is_name {
        if o.config.name.as_ref().is_some_and(|n| n != &a.spec) {
            return Err(usage(
                "both a table name as the spec and a different name= option",
            ));
        }
        o.config.name = Some(a.spec.clone());
    } else {
        if o.config.name.is_none() {
            o.config.name = table_for_remote(&o.config, &a.spec)?;
        }
        o.settings
            .insert("remote".into(), Value::from(a.spec.clone()));
        remote_flag = Some(a.spec.clone());
    }
    let loaded = Loaded::load(&o.config, o.settings.clone(), "mount option")
        .map_err(|e| usage(format!("{e:#}")))?;
    let s = loaded.settings().map_err(|e| usage(format!("{e:#}")))?;
    let cfg = s.client_config().map_err(|e| usage(format!("{e:#}")))?;
    if !a.fake && !rustix::process::geteuid().is_root() {
        return Err(usage("only root can mount (mount(2) needs CAP_SYS_ADMIN)"));
    }
    if !a.dir.is_dir() {
        return Err(failure(format!(
            "mount point {} does not exist (or is not a directory)",
            a.dir.display()
        )));
    }
    let say = |m: String| {
        if a.verbose {
            eprintln!("mount.gridvfs: {m}");
        }
    };
    let store_key = cfg.remote.store_key();
    match running_client(&cfg.cache_dir, cfg.listen).await {
        Some(st) if st.store == store_key => {
            say(format!(
                "using the running client (pid {}) for {store_key} on {}",
                st.pid, cfg.listen
            ));
        }
        Some(st) => {
            return Err(failure(format!(
                "{} is served by another gridvfs-client (pid {}, store {}); give this mount \
                 its own listen=127.0.0.1:PORT",
                cfg.listen, st.pid, st.store
            )));
        }
        None => {
            let wait = cfg.timeouts.reconnect + Duration::from_secs(30);
            start_client(
                &o,
                &s,
                remote_flag.as_deref(),
                &cfg.cache_dir,
                cfg.listen,
                wait,
                &say,
            )?;
        }
    }
    mount_nfs(&a.dir, cfg.listen, &o, a.fake, &say)
}

/// The client serving `listen` from this cache directory, if one answers.
async fn running_client(cache_dir: &Path, listen: SocketAddr) -> Option<gridvfs::control::Status> {
    let root = gridvfs::cache::dir::CacheRoot::open(cache_dir).ok()?;
    for path in root.exports().unwrap_or_default() {
        if let Ok(st) = gridvfs::control::query(&path).await
            && st.listen.is_some_and(|l| l.port() == listen.port())
        {
            return Some(st);
        }
    }
    None
}

/// Start `gridvfs-client serve` detached (its own process group, output to a log in the
/// cache directory) and wait for its `READY=1` on a notify socket of our own.
fn start_client(
    o: &Options,
    s: &settings::Settings,
    remote: Option<&str>,
    cache_dir: &Path,
    listen: SocketAddr,
    wait: Duration,
    say: &dyn Fn(String),
) -> Result<(), Failed> {
    let sys = |what: &str, e: std::io::Error| Failed(SYSTEM, format!("{what}: {e}"));
    gridvfs::cache::dir::CacheRoot::open(cache_dir)
        .map_err(|e| failure(format!("cache directory {}: {e}", cache_dir.display())))?;
    let log_path = cache_dir.join(format!("gridvfs-client-{}.log", listen.port()));
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .mode(0o600)
        .custom_flags(rustix::fs::OFlags::NOFOLLOW.bits() as i32)
        .open(&log_path)
        .map_err(|e| sys(&format!("cannot open the log {}", log_path.display()), e))?;
    let log_start = log.metadata().map(|m| m.len()).unwrap_or(0);
    let notify_dir = tempfile::Builder::new()
        .prefix("mount.gridvfs.")
        .tempdir()
        .map_err(|e| sys("cannot make a notify socket", e))?;
    let notify_path = notify_dir.path().join("notify");
    let notify =
        UnixDatagram::bind(&notify_path).map_err(|e| sys("cannot bind a notify socket", e))?;
    notify
        .set_read_timeout(Some(Duration::from_millis(200)))
        .map_err(|e| sys("notify socket", e))?;
    let exe =
        std::env::current_exe().map_err(|e| sys("cannot find the gridvfs-client binary", e))?;
    let mut cmd = Command::new(&exe);
    cmd.arg("serve");
    if let Some(c) = &o.config.config {
        cmd.arg("--config").arg(c);
    }
    if let Some(n) = &o.config.name {
        cmd.arg("--name").arg(n);
    }
    if let Some(r) = remote {
        cmd.arg("--remote").arg(r);
    }
    cmd.envs(o.env.iter().map(|(k, v)| (k, v)))
        .env("NOTIFY_SOCKET", &notify_path)
        .env("NO_COLOR", "1")
        // The client's error, not anyhow's backtrace of it, is what the admin needs here.
        .env("RUST_LIB_BACKTRACE", "0")
        .env_remove("WATCHDOG_USEC")
        .env_remove("WATCHDOG_PID")
        .env_remove("JOURNAL_STREAM")
        .stdin(Stdio::null())
        .stdout(log.try_clone().map_err(|e| sys("log", e))?)
        .stderr(log);
    std::os::unix::process::CommandExt::process_group(&mut cmd, 0);
    say(format!(
        "starting {} serve for {} on {listen} (log: {})",
        exe.display(),
        s.remote.as_deref().unwrap_or_default(),
        log_path.display()
    ));
    let mut child = cmd
        .spawn()
        .map_err(|e| sys(&format!("cannot run {}", exe.display()), e))?;
    let started = Instant::now();
    let mut buf = [0u8; 4096];
    loop {
        if let Ok(n) = notify.recv(&mut buf) {
            let msg = String::from_utf8_lossy(&buf[..n]);
            if msg.lines().any(|l| l == "READY=1") {
                say(format!(
                    "client pid {} ready after {:.1} s",
                    child.id(),
                    started.elapsed().as_secs_f64()
                ));
                return Ok(());
            }
        }
        if let Ok(Some(status)) = child.try_wait() {
            return Err(failure(format!(
                "gridvfs-client could not start ({status}):\n{}",
                log_tail(&log_path, log_start)
            )));
        }
        if started.elapsed() > wait {
            let _ = child.kill();
            let _ = child.wait();
            return Err(failure(format!(
                "gridvfs-client was not ready after {:.0} s (the store did not answer?); \
                 stopped it:\n{}",
                wait.as_secs_f64(),
                log_tail(&log_path, log_start)
            )));
        }
    }
}

/// The last lines the client logged since `from`.
fn log_tail(path: &Path, from: u64) -> String {
    let mut text = String::new();
    if let Ok(mut f) = std::fs::File::open(path) {
        use std::io::Seek;
        let _ = f.seek(std::io::SeekFrom::Start(from));
        let _ = f.take(1 << 20).read_to_string(&mut text);
    }
    let lines: Vec<&str> = text.lines().filter(|l| !l.trim().is_empty()).collect();
    // The client's final error and a few lines before it; else the last lines.
    let tail = match lines.iter().rposition(|l| l.starts_with("Error:")) {
        Some(i) => &lines[i.saturating_sub(4)..(i + 8).min(lines.len())],
        None => &lines[lines.len().saturating_sub(12)..],
    };
    tail.iter()
        .map(|l| format!("  | {l}"))
        .collect::<Vec<_>>()
        .join("\n")
}

/// mount(2) of the client's export, NFSv3 over TCP to its port (MOUNT on the same port).
fn mount_nfs(
    dir: &Path,
    listen: SocketAddr,
    o: &Options,
    fake: bool,
    say: &dyn Fn(String),
) -> Result<(), Failed> {
    let ip = match listen.ip() {
        IpAddr::V4(v) if v.is_unspecified() => IpAddr::V4(Ipv4Addr::LOCALHOST),
        IpAddr::V6(v) if v.is_unspecified() => IpAddr::V6(Ipv6Addr::LOCALHOST),
        ip => ip,
    };
    let source = match ip {
        IpAddr::V4(v) => format!("{v}:/"),
        IpAddr::V6(v) => format!("[{v}]:/"),
    };
    let p = listen.port();
    let mut data =
        format!("addr={ip},mountaddr={ip},vers=3,proto=tcp,mountproto=tcp,port={p},mountport={p}");
    for n in &o.nfs {
        data.push(',');
        data.push_str(n);
    }
    say(format!("mount -t nfs {source} {} -o {data}", dir.display()));
    if fake {
        return Ok(());
    }
    let cdata = CString::new(data.clone()).map_err(|_| usage("an option holds a NUL byte"))?;
    rustix::mount::mount(source.as_str(), dir, "nfs", o.flags, cdata.as_c_str()).map_err(|e| {
        let why = match e {
            rustix::io::Errno::NODEV => {
                "this kernel has no NFS client (modprobe nfs; package linux-image with NFS)"
                    .to_string()
            }
            rustix::io::Errno::BUSY => "already mounted there".to_string(),
            rustix::io::Errno::ACCESS | rustix::io::Errno::PERM => {
                "the client refused the mount (see its log, and --allow-clients)".to_string()
            }
            rustix::io::Errno::INVAL => {
                format!("the kernel refused the options `{data}` (see dmesg)")
            }
            e => e.to_string(),
        };
        failure(format!(
            "mount of {source} (gridvfs on {listen}) at {} failed: {why}",
            dir.display()
        ))
    })
}
