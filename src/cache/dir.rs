//! The cache directory on disk: where each file lives, who may own it, and who uses it.
//!
//! ```text
//! CACHE/                     0700, ours, not group/world-writable (checked like StrictModes)
//!   <export id>/             one per store export, 0700
//!     lock                   flock(LOCK_EX) for the life of the process using it; holds its pid
//!     index.sqlite           the index (cache/index.rs)
//!     blocks/<file id>       block data (cache/store.rs)
//!     journal.log            write-back journal (cache/writeback.rs)
//!     control.sock           status/flush socket (control.rs), 0600, peers checked
//! ```
//!
//! The cache holds copies of the images and the only copy of acknowledged write-back
//! data, so it is trusted only when nobody else could have changed it: a directory some
//! other user owns or may write to is refused with a message saying how to fix it
//! (OpenSSH refuses keys in such directories for the same reason), files are opened with
//! `O_NOFOLLOW`, and two processes never share one export directory (they would overwrite
//! each other's journal and remove each other's control socket).

use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, Write};
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use rustix::fs::{FlockOperation, OFlags, flock};

use crate::error::{Error, Result};

/// Open flags every cache file is opened with: a planted symlink is refused, not followed.
pub fn no_follow() -> i32 {
    (OFlags::NOFOLLOW | OFlags::CLOEXEC).bits() as i32
}

/// The root of a cache directory (every export's state below it).
#[derive(Debug, Clone)]
pub struct CacheRoot {
    path: PathBuf,
}

impl CacheRoot {
    /// Create the directory (0700, parents as needed) or check the one there.
    pub fn open(path: &Path) -> Result<Self> {
        if !path.exists() {
            std::fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(path)
                .map_err(|e| {
                    Error::Config(format!(
                        "cannot create cache directory {}: {e}",
                        path.display()
                    ))
                })?;
        }
        check_private_dir(path)?;
        Ok(Self {
            path: path.to_path_buf(),
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The directory of one export, created 0700 if new, locked for this process's life.
    pub fn export(&self, export_id: &str) -> Result<ExportDir> {
        ExportDir::open(&self.path.join(export_id))
    }

    /// Export caches under this root that serve the store `store_key` under an id other
    /// than `current` and still hold write-back data not on the store: (id, entries,
    /// bytes). Left behind when a store's export id changed (issue 11, item 11). Caches
    /// in use by a running client are skipped.
    pub fn stranded(&self, store_key: &str, current: &str) -> Result<Vec<(String, u64, u64)>> {
        let mut out = Vec::new();
        for dir in self.exports()? {
            let id = dir
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default();
            if id == current
                || std::fs::read_to_string(dir.join(STORE)).ok().as_deref() != Some(store_key)
            {
                continue;
            }
            let Ok(held) = ExportDir::open(&dir) else {
                continue;
            };
            match crate::cache::index::Index::open(&held.index()).and_then(|i| i.dirty_pending()) {
                Ok((0, _)) => {}
                Ok((n, bytes)) => out.push((id, n, bytes)),
                Err(e) => tracing::warn!(
                    "cannot read the cache of export {id} of this store ({e}); if it holds \
                     write-back data, it is not uploaded"
                ),
            }
        }
        Ok(out)
    }

    /// The last handshake of the store `store_key` kept in one of the export caches here
    /// (the most recently used), for starting while the store is unreachable.
    pub fn saved_welcome(&self, store_key: &str) -> Option<(crate::proto::Welcome, u64)> {
        let mut best: Option<(std::time::SystemTime, crate::proto::Welcome, u64)> = None;
        for dir in self.exports().ok()? {
            if std::fs::read_to_string(dir.join(STORE)).ok().as_deref() != Some(store_key) {
                continue;
            }
            let Ok(index) = crate::cache::index::Index::open(&dir.join(INDEX)) else {
                continue;
            };
            let Ok(Some((key, welcome, boot))) = index.saved_welcome() else {
                continue;
            };
            let used = std::fs::metadata(dir.join(INDEX))
                .and_then(|m| m.modified())
                .unwrap_or(std::time::UNIX_EPOCH);
            let same_dir = dir.file_name().and_then(|n| n.to_str()) == Some(&welcome.export_id);
            if key == store_key && same_dir && best.as_ref().is_none_or(|(t, ..)| used > *t) {
                best = Some((used, welcome, boot));
            }
        }
        best.map(|(_, w, b)| (w, b))
    }

    /// Make the export cache `old` the one for id `new` (`--adopt-export`): its journal is
    /// then uploaded to the store that now answers as `new`. A cache already at `new` is
    /// kept aside as `NEW.replaced-SECONDS` if it holds no write-back data, else refused.
    pub fn adopt(&self, old: &str, new: &str) -> Result<()> {
        let bad = |why: String| Error::Config(format!("--adopt-export {old}: {why}"));
        if !crate::server::disk::identity::well_formed(old) {
            return Err(bad(
                "not an export id (32 hex digits, a directory name under the cache dir)".into(),
            ));
        }
        let from = self.path.join(old);
        if !from.join(INDEX).exists() {
            return Err(bad(format!("no export cache at {}", from.display())));
        }
        let held = ExportDir::open(&from)?;
        let to = self.path.join(new);
        if to.join(INDEX).exists() {
            let target = ExportDir::open(&to)?;
            let (n, _) = crate::cache::index::Index::open(&target.index())?.dirty_pending()?;
            if n > 0 {
                return Err(bad(format!(
                    "{} holds write-back data of its own ({n} entries); upload it first",
                    to.display()
                )));
            }
            let secs = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_secs())
                .unwrap_or(0);
            let aside = self.path.join(format!("{new}.replaced-{secs}"));
            std::fs::rename(&to, &aside)?;
            drop(target);
            tracing::warn!("the cache for {new} was moved aside to {}", aside.display());
        } else if to.exists() {
            std::fs::remove_dir_all(&to)?;
        }
        std::fs::rename(&from, &to)?;
        drop(held);
        tracing::warn!("the cache of export {old} now serves export {new}");
        Ok(())
    }

    /// The export directories under this root (those holding an index).
    pub fn exports(&self) -> Result<Vec<PathBuf>> {
        let mut out: Vec<PathBuf> = std::fs::read_dir(&self.path)?
            .flatten()
            .map(|e| e.path())
            .filter(|p| p.join(INDEX).exists())
            .collect();
        out.sort();
        Ok(out)
    }
}

const INDEX: &str = "index.sqlite";
/// Which store an export cache serves ([`crate::tunnel::Remote::store_key`]).
const STORE: &str = "store";
const LOCK: &str = "lock";

/// One export's directory, held exclusively by this process while the value lives.
#[derive(Debug)]
pub struct ExportDir {
    path: PathBuf,
    /// The flock is released when this closes (also when the process dies, however).
    _lock: File,
}

impl ExportDir {
    /// Create (0700) or check `path`, then take its lock or say who holds it.
    pub fn open(path: &Path) -> Result<Self> {
        match std::fs::DirBuilder::new().mode(0o700).create(path) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
            Err(e) => {
                return Err(Error::Config(format!(
                    "cannot create {}: {e}",
                    path.display()
                )));
            }
        }
        check_private_dir(path)?;
        let lock = lock_dir(path)?;
        Ok(Self {
            path: path.to_path_buf(),
            _lock: lock,
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
    pub fn index(&self) -> PathBuf {
        self.path.join(INDEX)
    }

    /// Record which store this cache serves (for [`CacheRoot::stranded`]).
    pub fn note_store(&self, store_key: &str) -> Result<()> {
        let path = self.path.join(STORE);
        if std::fs::read_to_string(&path).ok().as_deref() == Some(store_key) {
            return Ok(());
        }
        let mut f = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .custom_flags(no_follow())
            .open(&path)?;
        f.write_all(store_key.as_bytes())?;
        Ok(())
    }
    pub fn blocks(&self) -> PathBuf {
        self.path.join("blocks")
    }
    pub fn journal(&self) -> PathBuf {
        self.path.join("journal.log")
    }
    pub fn control_socket(&self) -> PathBuf {
        self.path.join("control.sock")
    }
}

/// Take `dir/lock` (flock, exclusive, not waiting) and write our pid in it.
fn lock_dir(dir: &Path) -> Result<File> {
    let path = dir.join(LOCK);
    let mut f = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .mode(0o600)
        .custom_flags(no_follow())
        .open(&path)
        .map_err(|e| Error::Config(format!("cannot open {}: {e}", path.display())))?;
    match flock(&f, FlockOperation::NonBlockingLockExclusive) {
        Ok(()) => {}
        Err(rustix::io::Errno::WOULDBLOCK) => {
            let mut pid = String::new();
            let _ = f.read_to_string(&mut pid);
            let pid = pid.trim();
            return Err(Error::Config(format!(
                "cache directory {} is in use by another gridvfs process{}; one process per \
                 cache directory (stop it, or give this one its own --cache-dir)",
                dir.display(),
                if pid.is_empty() {
                    String::new()
                } else {
                    format!(" (pid {pid})")
                }
            )));
        }
        Err(e) => {
            return Err(Error::Config(format!(
                "cannot lock {}: {e}",
                path.display()
            )));
        }
    }
    f.set_len(0)?;
    f.rewind()?;
    writeln!(f, "{}", std::process::id())?;
    Ok(f)
}

/// StrictModes for a directory: a real directory (not a symlink), owned by us (or root),
/// writable by nobody else.
pub fn check_private_dir(path: &Path) -> Result<()> {
    let meta = std::fs::symlink_metadata(path)
        .map_err(|e| Error::Config(format!("cannot use {}: {e}", path.display())))?;
    if meta.file_type().is_symlink() {
        return Err(Error::Config(format!(
            "{} is a symbolic link; give the real directory as --cache-dir",
            path.display()
        )));
    }
    if !meta.is_dir() {
        return Err(Error::Config(format!(
            "{} is not a directory",
            path.display()
        )));
    }
    let me = rustix::process::geteuid().as_raw();
    if meta.uid() != me && meta.uid() != 0 {
        return Err(Error::Config(format!(
            "refusing cache directory {}: it belongs to uid {}, not to this user (uid {me}); \
             someone else could change the cached images",
            path.display(),
            meta.uid()
        )));
    }
    let mode = meta.permissions().mode() & 0o7777;
    if mode & 0o022 != 0 {
        return Err(Error::Config(format!(
            "refusing cache directory {}: its mode {mode:04o} lets other users write to it; \
             fix it with `chmod go-w {}` (0700 is best)",
            path.display(),
            path.display()
        )));
    }
    Ok(())
}

/// The default cache directory: `$XDG_CACHE_HOME/gridvfs`, `~/.cache/gridvfs`, or for
/// root without a home `/var/cache/gridvfs`. Never a shared directory such as /tmp.
pub fn default_root() -> Result<PathBuf> {
    if let Some(x) = std::env::var_os("XDG_CACHE_HOME").filter(|x| !x.is_empty()) {
        return Ok(PathBuf::from(x).join("gridvfs"));
    }
    if let Some(h) = std::env::var_os("HOME").filter(|h| !h.is_empty()) {
        return Ok(PathBuf::from(h).join(".cache").join("gridvfs"));
    }
    if rustix::process::geteuid().is_root() {
        return Ok(PathBuf::from("/var/cache/gridvfs"));
    }
    Err(Error::Config(
        "no cache directory: neither XDG_CACHE_HOME nor HOME is set; pass --cache-dir".into(),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn new_directories_are_private_and_checked() {
        let t = tempfile::tempdir().unwrap();
        let root = CacheRoot::open(&t.path().join("a/b/cache")).unwrap();
        let mode = std::fs::metadata(root.path()).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o700);
        let ex = root.export("e1").unwrap();
        let mode = std::fs::metadata(ex.path()).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o700);

        // Group/world-writable: refused with the fix in the message.
        let open = t.path().join("open");
        std::fs::create_dir(&open).unwrap();
        std::fs::set_permissions(&open, std::fs::Permissions::from_mode(0o777)).unwrap();
        let e = CacheRoot::open(&open).unwrap_err().to_string();
        assert!(e.contains("chmod go-w"), "{e}");
        // A symlink to a good directory is refused too.
        let link = t.path().join("link");
        std::os::unix::fs::symlink(root.path(), &link).unwrap();
        let e = CacheRoot::open(&link).unwrap_err().to_string();
        assert!(e.contains("symbolic link"), "{e}");
    }

    #[test]
    fn one_process_per_export_directory() {
        let t = tempfile::tempdir().unwrap();
        let root = CacheRoot::open(t.path()).unwrap();
        let first = root.export("e1").unwrap();
        // flock is per open file description: a second open in this process conflicts
        // exactly as a second process would.
        let e = root.export("e1").unwrap_err().to_string();
        assert!(
            e.contains(&format!("pid {}", std::process::id())),
            "names the holder: {e}"
        );
        assert!(root.export("e2").is_ok(), "other exports are free");
        drop(first);
        assert!(root.export("e1").is_ok(), "released with its holder");
    }

    #[test]
    fn a_planted_lock_symlink_is_not_followed() {
        let t = tempfile::tempdir().unwrap();
        let dir = t.path().join("e");
        std::fs::DirBuilder::new().mode(0o700).create(&dir).unwrap();
        let victim = t.path().join("victim");
        std::fs::write(&victim, "keep").unwrap();
        std::os::unix::fs::symlink(&victim, dir.join(LOCK)).unwrap();
        assert!(ExportDir::open(&dir).is_err());
        assert_eq!(std::fs::read_to_string(&victim).unwrap(), "keep");
    }
}
