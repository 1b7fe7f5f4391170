//! Test harness: real `gridvfs-client` processes (which spawn real `gridvfs-server`s) and a
//! small typed wrapper over `nfs3_client`, a real NFSv3 client speaking TCP to them.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use nfs3_client::Nfs3Client;
use nfs3_client::nfs3_types::nfs3::*;
use nfs3_client::nfs3_types::rpc::opaque_auth;
use nfs3_client::nfs3_types::xdr_codec::Opaque;
use nfs3_client::tokio::TokioIo;
use tokio::net::TcpStream;

/// A built binary of this workspace (`cargo build` puts them beside the test's deps dir).
pub fn bin(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("test exe");
    for dir in exe.ancestors().skip(1).take(2) {
        let cand = dir.join(name);
        if cand.is_file() {
            return cand;
        }
    }
    panic!(
        "{name} not built: run `cargo build --workspace` before the tests (the README's test command does)"
    );
}

/// A running `gridvfs-client serve`.
pub struct ClientProc {
    pub child: Child,
    pub port: u16,
    pub remote: String,
    pub export: PathBuf,
    pub cache: PathBuf,
    pub extra: Vec<String>,
}

/// The access options most tests run with: the harness's NFS client connects from an
/// unprivileged port as root (uid 0 over AUTH_SYS) and the export's files are root's.
/// `tests/all/security.rs` runs with the real defaults instead.
pub const TEST_ACCESS: [&str; 2] = ["--allow-unprivileged-ports", "--no-root-squash"];

/// Options that say how the NFS port is guarded: if a test passes any, it gets no
/// [`TEST_ACCESS`].
const ACCESS_FLAGS: [&str; 7] = [
    "--insecure",
    "--allow-unprivileged-ports",
    "--no-root-squash",
    "--all-squash",
    "--allow-uid",
    "--allow-clients",
    "--default-access",
];

impl ClientProc {
    /// Start a client for `local:{export}`; `port` 0 picks a free one.
    pub fn start(export: &Path, cache: &Path, port: u16, extra: &[&str]) -> Self {
        let remote = format!("local:{}", export.display());
        Self::start_remote(&remote, export, cache, port, extra)
    }

    /// Start a client for `remote`. Unless `extra` says otherwise, with [`TEST_ACCESS`];
    /// `--default-access` (not passed on) asks for the client's own defaults.
    pub fn start_remote(
        remote: &str,
        export: &Path,
        cache: &Path,
        port: u16,
        extra: &[&str],
    ) -> Self {
        Self::start_with_env(remote, export, cache, port, extra, &[])
    }

    /// [`Self::start_remote`] with these environment variables set for the client.
    pub fn start_with_env(
        remote: &str,
        export: &Path,
        cache: &Path,
        port: u16,
        extra: &[&str],
        env: &[(&str, &str)],
    ) -> Self {
        let access: &[&str] = if extra.iter().any(|a| ACCESS_FLAGS.contains(a)) {
            &[]
        } else {
            &TEST_ACCESS
        };
        let passed: Vec<&str> = extra
            .iter()
            .copied()
            .filter(|a| *a != "--default-access")
            .collect();
        let mut child = Command::new(bin("gridvfs-client"))
            .args([
                "serve",
                "--remote",
                remote,
                "--listen",
                &format!("127.0.0.1:{port}"),
            ])
            .arg("--cache-dir")
            .arg(cache)
            .args(access)
            .args(&passed)
            .env("GRIDVFS_SERVER", bin("gridvfs-server"))
            .envs(env.iter().copied())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("spawn gridvfs-client");
        let mut out = BufReader::new(child.stdout.take().expect("stdout"));
        let mut line = String::new();
        out.read_line(&mut line).expect("client banner");
        let port = line
            .trim()
            .rsplit(':')
            .next()
            .and_then(|p| p.parse().ok())
            .unwrap_or_else(|| panic!("unexpected banner {line:?}"));
        // Keep draining stdout so the client never blocks on a full pipe.
        std::thread::spawn(move || for _ in out.lines() {});
        Self {
            child,
            port,
            remote: remote.to_string(),
            export: export.to_path_buf(),
            cache: cache.to_path_buf(),
            extra: extra.iter().map(|s| s.to_string()).collect(),
        }
    }

    /// `kill -9` the client (its server child dies with its pipe), then start it again on
    /// the same port with the same remote, options and cache directory.
    pub fn restart(&mut self) {
        self.kill();
        let extra: Vec<&str> = self.extra.iter().map(|s| s.as_str()).collect();
        let mut last = None;
        for _ in 0..50 {
            // The port may linger a moment after the kill.
            let try_ = std::panic::catch_unwind(|| {
                Self::start_remote(&self.remote, &self.export, &self.cache, self.port, &extra)
            });
            match try_ {
                Ok(c) => {
                    *self = c;
                    return;
                }
                Err(e) => last = Some(e),
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        std::panic::resume_unwind(last.expect("tried"));
    }

    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// `kill -9` the store-side processes: the live session drops.
    pub fn kill_servers(&self) {
        for pid in self.server_pids() {
            let _ = Command::new("kill").args(["-9", &pid.to_string()]).status();
        }
    }

    /// Pids of the `gridvfs-server` children of this client.
    pub fn server_pids(&self) -> Vec<u32> {
        let me = self.child.id();
        let mut pids = Vec::new();
        for ent in std::fs::read_dir("/proc").expect("/proc").flatten() {
            let Ok(pid) = ent.file_name().to_string_lossy().parse::<u32>() else {
                continue;
            };
            let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
                continue;
            };
            let after = stat.rsplit(')').next().unwrap_or("");
            let ppid: u32 = after
                .split_whitespace()
                .nth(1)
                .and_then(|p| p.parse().ok())
                .unwrap_or(0);
            if ppid == me {
                pids.push(pid);
            }
        }
        pids
    }

    pub fn url(&self, path: &str) -> String {
        format!(
            "nfs://127.0.0.1/{path}?version=3&nfsport={p}&mountport={p}",
            p = self.port
        )
    }
}

impl Drop for ClientProc {
    fn drop(&mut self) {
        self.kill();
    }
}

/// NFS status or transport failure, for `?` in tests.
pub type R<T> = Result<T, nfsstat3>;

/// A mounted NFSv3 client session.
pub struct Nfs {
    pub c: Nfs3Client<TokioIo<TcpStream>>,
    pub root: nfs_fh3,
}

fn ok<T, E>(r: Nfs3Result<T, E>) -> R<T> {
    match r {
        Nfs3Result::Ok(v) => Ok(v),
        Nfs3Result::Err((s, _)) => Err(s),
    }
}

pub fn name(s: &str) -> filename3<'static> {
    filename3(Opaque::owned(s.as_bytes().to_vec()))
}

pub fn dirop(dir: &nfs_fh3, n: &str) -> diropargs3<'static> {
    diropargs3 {
        dir: dir.clone(),
        name: name(n),
    }
}

pub fn attrs(mode: Option<u32>) -> sattr3 {
    sattr3 {
        mode: mode.map_or(Nfs3Option::None, Nfs3Option::Some),
        ..Default::default()
    }
}

/// Connects from a chosen source address (and port, for privileged ones).
struct SourceConnector(std::net::IpAddr);

impl nfs3_client::net::Connector for SourceConnector {
    type Connection = TokioIo<TcpStream>;

    async fn connect(&self, addr: std::net::SocketAddr) -> std::io::Result<Self::Connection> {
        self.connect_with_port(addr, 0).await
    }

    async fn connect_with_port(
        &self,
        addr: std::net::SocketAddr,
        local_port: u16,
    ) -> std::io::Result<Self::Connection> {
        let socket = tokio::net::TcpSocket::new_v4()?;
        socket.bind(std::net::SocketAddr::new(self.0, local_port))?;
        Ok(TokioIo::new(socket.connect(addr).await?))
    }
}

/// An AUTH_SYS credential, as a kernel client sends it.
pub fn auth_sys(uid: u32, gid: u32, gids: &[u32]) -> opaque_auth<'static> {
    gridvfs_testkit::nfs::auth_sys("gridvfs-test", uid, gid, gids)
}

impl Nfs {
    /// Mount as root (AUTH_SYS uid 0) from an unprivileged port (see [`TEST_ACCESS`]).
    pub async fn mount(port: u16) -> Self {
        Self::mount_as(port, auth_sys(0, 0, &[]), false)
            .await
            .unwrap_or_else(|e| panic!("mount failed: {e}"))
    }

    /// Mount with `cred`, from a privileged source port or not; retried while the client
    /// starts.
    pub async fn mount_as(
        port: u16,
        cred: opaque_auth<'static>,
        privileged: bool,
    ) -> Result<Self, String> {
        Self::mount_from(port, cred, privileged, "127.0.0.1".parse().unwrap()).await
    }

    /// [`Self::mount_as`] from the source address `from` (127.0.0.0/8 all reach loopback).
    pub async fn mount_from(
        port: u16,
        cred: opaque_auth<'static>,
        privileged: bool,
        from: std::net::IpAddr,
    ) -> Result<Self, String> {
        let mut last = None;
        for _ in 0..50 {
            match nfs3_client::Nfs3ConnectionBuilder::new(SourceConnector(from), "127.0.0.1", "/")
                .connect_from_privileged_port(privileged)
                .credential(cred.clone())
                .mount_port(port)
                .nfs3_port(port)
                .mount()
                .await
            {
                Ok(conn) => {
                    let root = conn.root_nfs_fh3();
                    return Ok(Self {
                        c: conn.into_nfs3_client(),
                        root,
                    });
                }
                // The client is up and said no: retrying will not change its mind.
                Err(e) if format!("{e:?}").contains("Auth") => return Err(format!("{e:?}")),
                Err(e) => last = Some(e),
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        Err(format!("{last:?}"))
    }

    pub async fn getattr(&mut self, fh: &nfs_fh3) -> R<fattr3> {
        ok(self
            .c
            .getattr(&GETATTR3args { object: fh.clone() })
            .await
            .expect("rpc"))
        .map(|r| r.obj_attributes)
    }

    pub async fn lookup(&mut self, dir: &nfs_fh3, n: &str) -> R<nfs_fh3> {
        ok(self
            .c
            .lookup(&LOOKUP3args {
                what: dirop(dir, n),
            })
            .await
            .expect("rpc"))
        .map(|r| r.object)
    }

    pub async fn create(&mut self, dir: &nfs_fh3, n: &str, how: createhow3) -> R<nfs_fh3> {
        let r = ok(self
            .c
            .create(&CREATE3args {
                where_: dirop(dir, n),
                how,
            })
            .await
            .expect("rpc"))?;
        match r.obj {
            Nfs3Option::Some(fh) => Ok(fh),
            Nfs3Option::None => self.lookup(dir, n).await,
        }
    }

    pub async fn mkdir(&mut self, dir: &nfs_fh3, n: &str, mode: Option<u32>) -> R<nfs_fh3> {
        let r = ok(self
            .c
            .mkdir(&MKDIR3args {
                where_: dirop(dir, n),
                attributes: attrs(mode),
            })
            .await
            .expect("rpc"))?;
        match r.obj {
            Nfs3Option::Some(fh) => Ok(fh),
            Nfs3Option::None => self.lookup(dir, n).await,
        }
    }

    pub async fn write(
        &mut self,
        fh: &nfs_fh3,
        offset: u64,
        data: &[u8],
        stable: stable_how,
    ) -> R<WRITE3resok> {
        ok(self
            .c
            .write(&WRITE3args {
                file: fh.clone(),
                offset,
                count: data.len() as u32,
                stable,
                data: Opaque::owned(data.to_vec()),
            })
            .await
            .expect("rpc"))
    }

    pub async fn read(&mut self, fh: &nfs_fh3, offset: u64, count: u32) -> R<(Vec<u8>, bool)> {
        ok(self
            .c
            .read(&READ3args {
                file: fh.clone(),
                offset,
                count,
            })
            .await
            .expect("rpc"))
        .map(|r| (r.data.to_vec(), r.eof))
    }

    /// Read a whole file in `chunk`-byte READs.
    pub async fn read_all(&mut self, fh: &nfs_fh3, chunk: u32) -> R<Vec<u8>> {
        let mut out = Vec::new();
        loop {
            let (d, eof) = self.read(fh, out.len() as u64, chunk).await?;
            out.extend_from_slice(&d);
            if eof || d.is_empty() {
                return Ok(out);
            }
        }
    }

    pub async fn setattr(&mut self, fh: &nfs_fh3, s: sattr3, guard: Option<nfstime3>) -> R<()> {
        let guard = guard.map_or(Nfs3Option::None, Nfs3Option::Some);
        ok(self
            .c
            .setattr(&SETATTR3args {
                object: fh.clone(),
                new_attributes: s,
                guard,
            })
            .await
            .expect("rpc"))
        .map(|_| ())
    }

    pub async fn remove(&mut self, dir: &nfs_fh3, n: &str) -> R<()> {
        ok(self
            .c
            .remove(&REMOVE3args {
                object: dirop(dir, n),
            })
            .await
            .expect("rpc"))
        .map(|_| ())
    }

    pub async fn rmdir(&mut self, dir: &nfs_fh3, n: &str) -> R<()> {
        ok(self
            .c
            .rmdir(&RMDIR3args {
                object: dirop(dir, n),
            })
            .await
            .expect("rpc"))
        .map(|_| ())
    }

    pub async fn rename(&mut self, fd: &nfs_fh3, f: &str, td: &nfs_fh3, t: &str) -> R<()> {
        ok(self
            .c
            .rename(&RENAME3args {
                from: dirop(fd, f),
                to: dirop(td, t),
            })
            .await
            .expect("rpc"))
        .map(|_| ())
    }

    pub async fn symlink(&mut self, dir: &nfs_fh3, n: &str, target: &str) -> R<nfs_fh3> {
        let args = SYMLINK3args {
            where_: dirop(dir, n),
            symlink: symlinkdata3 {
                symlink_attributes: attrs(None),
                symlink_data: nfspath3(Opaque::owned(target.as_bytes().to_vec())),
            },
        };
        ok(self.c.symlink(&args).await.expect("rpc"))?;
        self.lookup(dir, n).await
    }

    pub async fn readlink(&mut self, fh: &nfs_fh3) -> R<Vec<u8>> {
        ok(self
            .c
            .readlink(&READLINK3args {
                symlink: fh.clone(),
            })
            .await
            .expect("rpc"))
        .map(|r| r.data.0.to_vec())
    }

    pub async fn link(&mut self, fh: &nfs_fh3, dir: &nfs_fh3, n: &str) -> R<()> {
        ok(self
            .c
            .link(&LINK3args {
                file: fh.clone(),
                link: dirop(dir, n),
            })
            .await
            .expect("rpc"))
        .map(|_| ())
    }

    pub async fn fsstat(&mut self) -> R<FSSTAT3resok> {
        ok(self
            .c
            .fsstat(&FSSTAT3args {
                fsroot: self.root.clone(),
            })
            .await
            .expect("rpc"))
    }

    pub async fn fsinfo(&mut self) -> R<FSINFO3resok> {
        ok(self
            .c
            .fsinfo(&FSINFO3args {
                fsroot: self.root.clone(),
            })
            .await
            .expect("rpc"))
    }

    pub async fn commit(&mut self, fh: &nfs_fh3) -> R<()> {
        ok(self
            .c
            .commit(&COMMIT3args {
                file: fh.clone(),
                offset: 0,
                count: 0,
            })
            .await
            .expect("rpc"))
        .map(|_| ())
    }

    /// Every name in a directory through READDIR, following cookies; `count` bytes a call.
    pub async fn readdir_names(&mut self, dir: &nfs_fh3, count: u32) -> R<Vec<Vec<u8>>> {
        let mut names = Vec::new();
        let mut cookie = 0;
        let mut verf = cookieverf3::default();
        loop {
            let r = ok(self
                .c
                .readdir(&READDIR3args {
                    dir: dir.clone(),
                    cookie,
                    cookieverf: verf,
                    count,
                })
                .await
                .expect("rpc"))?;
            verf = r.cookieverf;
            for e in &r.reply.entries.0 {
                names.push(e.name.0.to_vec());
                cookie = e.cookie;
            }
            if r.reply.eof {
                return Ok(names);
            }
            assert!(
                !r.reply.entries.0.is_empty(),
                "READDIR returned no entries and no eof"
            );
        }
    }

    /// Every (name, handle) through READDIRPLUS.
    pub async fn readdirplus_names(
        &mut self,
        dir: &nfs_fh3,
        maxcount: u32,
    ) -> R<Vec<(Vec<u8>, Option<nfs_fh3>, u64)>> {
        let mut out = Vec::new();
        let mut cookie = 0;
        let mut verf = cookieverf3::default();
        loop {
            let r = ok(self
                .c
                .readdirplus(&READDIRPLUS3args {
                    dir: dir.clone(),
                    cookie,
                    cookieverf: verf,
                    dircount: maxcount,
                    maxcount,
                })
                .await
                .expect("rpc"))?;
            verf = r.cookieverf;
            for e in &r.reply.entries.0 {
                let fh = match &e.name_handle {
                    Nfs3Option::Some(fh) => Some(fh.clone()),
                    Nfs3Option::None => None,
                };
                out.push((e.name.0.to_vec(), fh, e.cookie));
                cookie = e.cookie;
            }
            if r.reply.eof {
                return Ok(out);
            }
            assert!(
                !r.reply.entries.0.is_empty(),
                "READDIRPLUS returned no entries and no eof"
            );
        }
    }
}

/// An `exec:` store for `export` that starts read-only while `flag` exists (uploads are
/// then refused for good).
pub fn read_only_when(flag: &Path, export: &Path) -> String {
    format!(
        "exec:if [ -e {flag} ]; then ro=--read-only; fi; exec {server} serve --stdio --export {export} $ro",
        flag = flag.display(),
        server = bin("gridvfs-server").display(),
        export = export.display()
    )
}

/// An `exec:` store for `export` that cannot be reached while `flag` exists (the
/// transport fails to connect, as ssh to an unreachable host does).
pub fn unreachable_when(flag: &Path, export: &Path) -> String {
    format!(
        "exec:if [ -e {flag} ]; then echo 'ssh: connect to host store: No route to host' >&2; exit 255; fi; exec {server} serve --stdio --export {export}",
        flag = flag.display(),
        server = bin("gridvfs-server").display(),
        export = export.display()
    )
}

pub use gridvfs_testkit::data::noise;

/// A fresh export and cache directory under one temp dir.
pub struct Dirs {
    pub tmp: tempfile::TempDir,
    pub export: PathBuf,
    pub cache: PathBuf,
}

pub fn dirs() -> Dirs {
    let tmp = tempfile::tempdir().expect("tempdir");
    let export = tmp.path().join("export");
    let cache = tmp.path().join("cache");
    std::fs::create_dir_all(&export).unwrap();
    std::fs::create_dir_all(&cache).unwrap();
    Dirs { tmp, export, cache }
}

/// Run a command that must succeed; its stdout.
pub fn run_ok(cmd: &mut Command) -> String {
    let out = cmd.output().unwrap();
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// `gridvfs-client ARGS --cache-dir CACHE`, which must succeed; its stdout.
pub fn client_cmd(args: &[&str], cache: &Path) -> String {
    run_ok(
        Command::new(bin("gridvfs-client"))
            .args(args)
            .arg("--cache-dir")
            .arg(cache),
    )
}

/// `gridvfs-client status --json` for the one client on `cache`.
pub fn status_json(cache: &Path) -> serde_json::Value {
    serde_json::from_str(&client_cmd(&["status", "--json"], cache)).expect("one JSON line")
}

/// A number from a status object.
pub fn n(v: &serde_json::Value, k: &str) -> u64 {
    v[k].as_u64()
        .unwrap_or_else(|| panic!("{k} missing in {v}"))
}

/// The host's shared libraries `bins` need, copied to `share/lib` and listed with their
/// host paths in `share/lib/paths` (a guest copies them back into place).
pub fn copy_libraries(share: &Path, bins: &[&Path]) {
    let lib = share.join("lib");
    std::fs::create_dir_all(&lib).unwrap();
    let mut paths = std::collections::BTreeSet::new();
    for b in bins {
        let out = run_ok(Command::new("ldd").arg(b));
        for line in out.lines() {
            // "libc.so.6 => /lib/x86_64-linux-gnu/libc.so.6 (0x…)" or "/lib64/ld-linux-x86-64.so.2 (0x…)"
            let p = line
                .split("=>")
                .last()
                .and_then(|s| s.split_whitespace().next())
                .unwrap_or("");
            if p.starts_with('/') {
                paths.insert(p.to_string());
            }
        }
    }
    assert!(!paths.is_empty(), "ldd found no libraries");
    for p in &paths {
        let name = Path::new(p).file_name().unwrap();
        std::fs::copy(p, lib.join(name)).unwrap();
    }
    let list: String = paths.iter().map(|p| format!("{p}\n")).collect();
    std::fs::write(lib.join("paths"), list).unwrap();
}

/// A port free on loopback now.
pub fn free_port() -> u16 {
    gridvfs_testkit::net::free_port().expect("a free loopback port")
}
