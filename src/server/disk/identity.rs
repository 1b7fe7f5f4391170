//! The export's identity: the name of its directory in each client's cache (issue 11,
//! item 11).
//!
//! It used to be a hash of the host name, path, `st_dev` and inode of the export root.
//! `st_dev` changes across reboots on btrfs subvolumes and with device renumbering, and
//! moving the export changes the path: the next client start then opened an empty cache
//! directory, and a write-back journal in the old one was never uploaded. Now the id is
//! written once into a file at the export root, [`ID_FILE`], and read from there ever
//! after, wherever the export is and whatever device it is on. The first id written is
//! the old hash, so caches made before the file existed stay in use.
//!
//! The file is hidden from clients like hint files (not listed, not looked up, not
//! created, renamed over or removed through a mount). A read-only export that has none
//! (the server cannot write it) keeps the old hash.

use std::io::Write;
use std::os::fd::{AsFd, OwnedFd};

use rustix::fs::{self as rfs, AtFlags, Mode, OFlags, ResolveFlags};
use rustix::io::Errno;

/// At the export root: 32 hex digits and a newline.
pub const ID_FILE: &str = ".gridvfs-export-id";
/// Written first, then renamed to [`ID_FILE`] (never seen half-written).
const ID_TMP: &str = ".gridvfs-export-id.new";

/// Names reserved for the identity file (and its temporary).
pub fn is_identity_name(name: &[u8]) -> bool {
    name == ID_FILE.as_bytes() || name == ID_TMP.as_bytes()
}

/// Whether `id` is what servers make: 32 lowercase hex digits.
pub fn well_formed(id: &str) -> bool {
    id.len() == 32
        && id
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

/// The export's id: the one in [`ID_FILE`], or `legacy` written there now (if the export
/// may be written), or `legacy` alone. A file that exists but does not hold an id is an
/// error: the admin must look (a guessed id would strand a journal as surely as a
/// changed one).
pub fn export_id(root: &OwnedFd, read_only: bool, legacy: &str) -> std::io::Result<String> {
    if let Some(id) = read(root)? {
        return Ok(id);
    }
    if read_only {
        return Ok(legacy.to_string());
    }
    match write(root, legacy) {
        Ok(()) => {
            tracing::info!("export id {legacy} recorded in {ID_FILE} at the export root");
            Ok(legacy.to_string())
        }
        // Another server wrote it first: theirs.
        Err(e) if e.raw_os_error() == Some(Errno::EXIST.raw_os_error()) => {
            read(root)?.ok_or_else(|| std::io::Error::other(format!("{ID_FILE} vanished")))
        }
        // A file system we may not write (read-only mount, no permission): the old id.
        Err(e) => {
            tracing::warn!(
                "cannot record the export id in {ID_FILE} ({e}); using {legacy}, which changes \
                 if the export's device number or path does"
            );
            Ok(legacy.to_string())
        }
    }
}

fn open_at_root(
    root: &OwnedFd,
    name: &str,
    flags: OFlags,
    mode: Mode,
) -> rustix::io::Result<OwnedFd> {
    rfs::openat2(
        root,
        name,
        flags | OFlags::NOFOLLOW | OFlags::CLOEXEC,
        mode,
        ResolveFlags::BENEATH | ResolveFlags::NO_SYMLINKS | ResolveFlags::NO_MAGICLINKS,
    )
}

fn read(root: &OwnedFd) -> std::io::Result<Option<String>> {
    let fd = match open_at_root(root, ID_FILE, OFlags::RDONLY, Mode::empty()) {
        Ok(fd) => fd,
        Err(Errno::NOENT) => return Ok(None),
        Err(e) => return Err(std::io::Error::other(format!("cannot open {ID_FILE}: {e}"))),
    };
    let st = rfs::fstat(&fd)?;
    if rfs::FileType::from_raw_mode(st.st_mode) != rfs::FileType::RegularFile || st.st_size > 64 {
        return Err(std::io::Error::other(format!(
            "{ID_FILE} at the export root is not a small regular file"
        )));
    }
    let mut buf = [0u8; 64];
    let n = rustix::io::read(&fd, &mut buf)?;
    let text = std::str::from_utf8(&buf[..n]).unwrap_or("").trim();
    if !well_formed(text) {
        return Err(std::io::Error::other(format!(
            "{ID_FILE} at the export root does not hold an export id (32 hex digits): fix or \
             remove it (removing it makes a new id: clients then start a new cache and any \
             write-back data in the old one must be adopted, see --adopt-export)"
        )));
    }
    Ok(Some(text.to_string()))
}

/// Write `id` durably: temporary file, fsync, rename without replacing, fsync the root.
fn write(root: &OwnedFd, id: &str) -> std::io::Result<()> {
    let _ = rfs::unlinkat(root, ID_TMP, AtFlags::empty());
    let fd = open_at_root(
        root,
        ID_TMP,
        OFlags::WRONLY | OFlags::CREATE | OFlags::EXCL,
        Mode::from_raw_mode(0o644),
    )?;
    let mut f = std::fs::File::from(fd);
    f.write_all(format!("{id}\n").as_bytes())?;
    f.sync_all()?;
    drop(f);
    let renamed = rfs::renameat_with(root, ID_TMP, root, ID_FILE, rfs::RenameFlags::NOREPLACE);
    if let Err(e) = renamed {
        let _ = rfs::unlinkat(root, ID_TMP, AtFlags::empty());
        return Err(e.into());
    }
    // The root is an O_PATH fd: fsync a real one.
    let dir = open_at_root(root, ".", OFlags::RDONLY | OFlags::DIRECTORY, Mode::empty())?;
    rfs::fsync(dir.as_fd())?;
    Ok(())
}
