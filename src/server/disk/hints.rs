//! The store's side of hints: answering `Hint` from a current `.NAME.gvhint` (or the
//! automatic hint), storing access profiles into it, and per-block sums for delta
//! revalidation; and `gridvfs-server hint`'s writing of a hint file. The file format and
//! scanning live in [`crate::server::hint`], which depends on nothing here.

use std::fs::File;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::FileExt;

use rustix::fs::{self as rfs, AtFlags, Mode, OFlags};

use super::{
    Export, FromBytesChecked, attr_of, join, split_parent, stat_fd, status_of, status_of_io,
};
use crate::proto::{Attr, FileRef, Hint, Status};
use crate::server::hint;

impl Export {
    /// How `file` is best fetched: its `.NAME.gvhint` while that still matches the file,
    /// else the automatic hint (its holes). A stale or unreadable hint file is ignored.
    pub fn hint(&self, file: &FileRef) -> Result<(Attr, Hint), Status> {
        let (f, st) = self.regular(file, OFlags::RDONLY)?;
        let attr = attr_of(&st);
        match self.current_hint(file, &attr)? {
            Some(h) => Ok((attr, h.to_hint())),
            None => Ok((attr, hint::auto_hint(&f, attr.size))),
        }
    }

    /// The file's hint file, if there is one and it still describes the file as `attr`
    /// does. A stale or unreadable one is logged and ignored.
    fn current_hint(&self, file: &FileRef, attr: &Attr) -> Result<Option<hint::HintFile>, Status> {
        let rel = self.hint_path(file)?;
        let rel = std::ffi::OsStr::from_encoded_bytes_checked(&rel)?;
        let Ok(fd) = self.open_beneath(rel, OFlags::RDONLY | OFlags::NONBLOCK) else {
            return Ok(None);
        };
        match hint::HintFile::read(&File::from(fd)) {
            Ok(h) if h.describes(attr) => Ok(Some(h)),
            Ok(_) => {
                tracing::info!(
                    "hint for {} is stale (the file changed since); ignored",
                    String::from_utf8_lossy(&file.path)
                );
                Ok(None)
            }
            Err(e) => {
                tracing::warn!(
                    "hint for {} ignored: {e}",
                    String::from_utf8_lossy(&file.path)
                );
                Ok(None)
            }
        }
    }

    /// `dir/.NAME.gvhint` for `dir/NAME`.
    fn hint_path(&self, file: &FileRef) -> Result<Vec<u8>, Status> {
        let (parent, name) = split_parent(&file.path)?;
        Ok(join(parent, &hint::hint_name(name.as_encoded_bytes())))
    }

    /// Put an access profile into the file's hint: the current hint file keeps everything
    /// else; without one, the file is scanned for a new one (block policy).
    pub fn save_profile(
        &self,
        file: &FileRef,
        block_size: u32,
        blocks: Vec<u32>,
    ) -> Result<(), Status> {
        self.writable()?;
        if !block_size.is_power_of_two() || !(4096..=(4 << 20)).contains(&block_size) {
            return Err(Status::Inval);
        }
        let (f, st) = self.regular(file, OFlags::RDONLY)?;
        let attr = attr_of(&st);
        let mut h = match self.current_hint(file, &attr)? {
            Some(h) => h,
            None => {
                let (zero_extents, block_sums) =
                    hint::scan(&f, attr.size, block_size).map_err(|e| status_of_io(&e))?;
                hint::HintFile {
                    size: attr.size,
                    mtime: attr.mtime,
                    ctime: attr.ctime,
                    ident: attr.ident,
                    policy: crate::proto::FetchPolicy::Blocks,
                    immutable: false,
                    zero_extents,
                    block_size,
                    block_sums,
                    profile: Vec::new(),
                }
            }
        };
        // The profile is kept in the hint's block size.
        let ratio = |from: u32, to: u32| (u64::from(from), u64::from(to));
        let (from, to) = ratio(block_size, h.block_size);
        let mut seen = std::collections::HashSet::new();
        h.profile = blocks
            .into_iter()
            .flat_map(|b| {
                let start = u64::from(b) * from;
                (start / to)..=((start + from - 1) / to)
            })
            .filter(|b| *b * to < attr.size && seen.insert(*b))
            .map(|b| b as u32)
            .take(hint::MAX_PROFILE)
            .collect();
        // The hint's own name is reserved, so it is built here, not checked.
        let (parent, file_name) = split_parent(&file.path)?;
        let hint_name = hint::hint_name(file_name.as_encoded_bytes());
        let name = std::ffi::OsStr::from_encoded_bytes_checked(&hint_name)?;
        let dirfd = self.resolve(parent, OFlags::PATH | OFlags::DIRECTORY)?;
        // Written beside under a hidden temporary name, then renamed over: readers see the
        // old hint or the new one.
        let unique = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos());
        let tmp_name = hint::hint_name(
            format!(
                "{}.{}-{unique}",
                file_name.to_string_lossy(),
                std::process::id()
            )
            .as_bytes(),
        );
        let tmp = std::ffi::OsStr::from_encoded_bytes_checked(&tmp_name)?;
        let fd = rfs::openat(
            &dirfd,
            tmp,
            OFlags::WRONLY | OFlags::CREATE | OFlags::TRUNC | OFlags::NOFOLLOW | OFlags::CLOEXEC,
            // Readable by whoever may read the file: its zero map and hashes describe it.
            Mode::from_raw_mode(attr.mode & 0o666),
        )
        .map_err(status_of)?;
        let out = File::from(fd);
        let written = out
            .write_all_at(&h.encode(), 0)
            .and_then(|()| out.sync_data())
            .map_err(|e| status_of_io(&e))
            .and_then(|()| rfs::renameat(&dirfd, tmp, &dirfd, name).map_err(status_of));
        if written.is_err() {
            let _ = rfs::unlinkat(&dirfd, tmp, AtFlags::empty());
        }
        written
    }

    /// Per-block sums of `file`: from its hint file while that is current and of the same
    /// block size, else computed by reading the file (local disk, far cheaper than
    /// sending it).
    pub fn block_sums(
        &self,
        file: &FileRef,
        block_size: u32,
    ) -> Result<(Attr, Vec<[u8; 16]>), Status> {
        if !block_size.is_power_of_two() || !(4096..=(4 << 20)).contains(&block_size) {
            return Err(Status::Inval);
        }
        let (f, st) = self.regular(file, OFlags::RDONLY)?;
        let attr = attr_of(&st);
        if attr.size / u64::from(block_size) > hint::MAX_SUMS as u64 {
            return Err(Status::FBig);
        }
        if let Some(h) = self.current_hint(file, &attr)?
            && h.block_size == block_size
        {
            return Ok((attr, h.block_sums));
        }
        let (_, sums) = hint::scan(&f, attr.size, block_size).map_err(|e| status_of_io(&e))?;
        // Changed while read: the sums would describe no version of the file.
        let now = attr_of(&stat_fd(&f)?);
        if (now.size, now.mtime) != (attr.size, attr.mtime) {
            return Err(Status::Io);
        }
        Ok((attr, sums))
    }
}

/// Scan the regular file at `path` and write its hint file beside it (atomically: a
/// temporary file renamed into place). Fails if the file changes during the scan.
pub fn write_hint(
    path: &std::path::Path,
    policy: crate::proto::FetchPolicy,
    immutable: bool,
    block_size: u32,
) -> std::io::Result<hint::HintFile> {
    use std::io::{Error, ErrorKind};
    let name = path
        .file_name()
        .ok_or_else(|| Error::new(ErrorKind::InvalidInput, "not a file name"))?;
    if hint::is_hint_name(name.as_encoded_bytes()) {
        return Err(Error::new(ErrorKind::InvalidInput, "that is a hint file"));
    }
    if !block_size.is_power_of_two() || !(4096..=(4 << 20)).contains(&block_size) {
        return Err(Error::new(
            ErrorKind::InvalidInput,
            "block size must be a power of two from 4 KiB to 4 MiB",
        ));
    }
    let f = File::open(path)?;
    let stat = |f: &File| {
        stat_fd(f)
            .map(|m| attr_of(&m))
            .map_err(|s| Error::other(s.to_string()))
    };
    let before = stat(&f)?;
    if before.kind != crate::proto::FileKind::Regular {
        return Err(Error::new(ErrorKind::InvalidInput, "not a regular file"));
    }
    let (zero_extents, block_sums) = hint::scan(&f, before.size, block_size)?;
    let after = stat(&f)?;
    if (after.size, after.mtime, after.ctime) != (before.size, before.mtime, before.ctime) {
        return Err(Error::other(
            "the file changed while it was scanned; try again",
        ));
    }
    let h = hint::HintFile {
        size: before.size,
        mtime: before.mtime,
        ctime: before.ctime,
        ident: before.ident,
        policy,
        immutable,
        zero_extents,
        block_size,
        block_sums,
        profile: Vec::new(),
    };
    let dir = path.parent().unwrap_or(std::path::Path::new("."));
    let hint_os = std::ffi::OsStr::from_bytes(&hint::hint_name(name.as_encoded_bytes())).to_owned();
    // Named like a hint file, so it is hidden from clients while it is being written.
    let mut tmp = tempfile::Builder::new()
        .prefix(".")
        .suffix(".tmp.gvhint")
        .tempfile_in(dir)?;
    std::io::Write::write_all(&mut tmp, &h.encode())?;
    tmp.as_file().sync_data()?;
    tmp.persist(dir.join(hint_os)).map_err(|e| e.error)?;
    Ok(h)
}
