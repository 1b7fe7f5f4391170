//! Block data on local disk: one sparse file per cached file, named by its file id (the
//! NFS handle id), never by path, so a rename moves nothing.

use std::fs::{File, OpenOptions};
use std::os::unix::fs::FileExt;
use std::path::PathBuf;

use crate::error::Result;

pub struct Store {
    dir: PathBuf,
}

/// Granularity of the holes left for zero pages.
const PAGE: usize = 4096;

impl Store {
    pub fn open(dir: PathBuf) -> Result<Self> {
        use std::os::unix::fs::DirBuilderExt;
        match std::fs::DirBuilder::new().mode(0o700).create(&dir) {
            Err(e) if e.kind() != std::io::ErrorKind::AlreadyExists => return Err(e.into()),
            _ => {}
        }
        super::dir::check_private_dir(&dir)?;
        Ok(Self { dir })
    }

    fn path(&self, file: u64) -> PathBuf {
        self.dir.join(format!("{file:016x}"))
    }

    fn file(&self, file: u64) -> Result<File> {
        use std::os::unix::fs::OpenOptionsExt;
        Ok(OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o600)
            .custom_flags(super::dir::no_follow())
            .open(self.path(file))?)
    }

    /// Read `buf.len()` bytes at `offset`; short only at the end of the data file.
    pub fn read(&self, file: u64, offset: u64, buf: &mut [u8]) -> Result<usize> {
        let f = self.file(file)?;
        let mut got = 0;
        while got < buf.len() {
            match f.read_at(&mut buf[got..], offset + got as u64)? {
                0 => break,
                n => got += n,
            }
        }
        Ok(got)
    }

    /// Write block data. Not fsynced: a block is only trusted once its index row (with a
    /// checksum) is committed, and the checksum catches data a crash did not write.
    ///
    /// Zero pages are not written but left as holes (the range is punched first, so no
    /// older bytes show through): a memory image, mostly zeros, takes a fraction of its
    /// size on the cache disk, and the copy of those zeros into the page cache — half the
    /// client's CPU when reading one on loopback — is not made. The last page is always
    /// written, so the file grows (pwrite never shrinks it, whatever other writers do).
    pub fn write(&self, file: u64, offset: u64, data: &[u8]) -> Result<()> {
        let f = self.file(file)?;
        use rustix::fs::FallocateFlags;
        let flags = FallocateFlags::PUNCH_HOLE | FallocateFlags::KEEP_SIZE;
        if data.len() <= PAGE
            || rustix::fs::fallocate(&f, flags, offset, data.len() as u64).is_err()
        {
            // Nothing to save, or no hole punching here: write it all.
            f.write_all_at(data, offset)?;
            return Ok(());
        }
        let pages = data.len().div_ceil(PAGE);
        let mut run: Option<usize> = None; // first page of the current non-zero run
        for p in 0..pages {
            let page = &data[p * PAGE..((p + 1) * PAGE).min(data.len())];
            let keep = p + 1 == pages || page.iter().any(|&b| b != 0);
            match (keep, run) {
                (true, None) => run = Some(p),
                (false, Some(start)) => {
                    f.write_all_at(
                        &data[start * PAGE..p * PAGE],
                        offset + (start * PAGE) as u64,
                    )?;
                    run = None;
                }
                _ => {}
            }
        }
        if let Some(start) = run {
            f.write_all_at(&data[start * PAGE..], offset + (start * PAGE) as u64)?;
        }
        Ok(())
    }

    /// Free the disk space of a range (evicted blocks): punch a hole.
    pub fn punch(&self, file: u64, offset: u64, len: u64) -> Result<()> {
        use std::os::unix::fs::OpenOptionsExt;
        let f = match OpenOptions::new()
            .write(true)
            .custom_flags(super::dir::no_follow())
            .open(self.path(file))
        {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
            Err(e) => return Err(e.into()),
        };
        use rustix::fs::FallocateFlags;
        rustix::fs::fallocate(
            &f,
            FallocateFlags::PUNCH_HOLE | FallocateFlags::KEEP_SIZE,
            offset,
            len,
        )
        .map_err(std::io::Error::from)?;
        Ok(())
    }

    /// Drop a file's data (validator changed, or the file is gone).
    pub fn drop_file(&self, file: u64) -> Result<()> {
        match std::fs::remove_file(self.path(file)) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e.into()),
            _ => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::MetadataExt;

    #[test]
    fn zero_pages_become_holes_and_never_show_older_bytes() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path().to_path_buf()).unwrap();
        // Old bytes everywhere first (a block refetched after an invalidation).
        store.write(7, 0, &vec![0xAB; 64 * PAGE]).unwrap();
        let mut data = vec![0u8; 64 * PAGE + 100];
        data[3 * PAGE] = 1;
        data[40 * PAGE + 5] = 2;
        store.write(7, 0, &data).unwrap();
        let mut back = vec![0xFF; data.len()];
        assert_eq!(store.read(7, 0, &mut back).unwrap(), data.len());
        assert!(back == data, "old bytes showed through a hole");
        let used = std::fs::metadata(store.path(7)).unwrap().blocks() * 512;
        assert!(
            used <= 4 * PAGE as u64 + 65536,
            "{used} bytes allocated for 3 non-zero pages"
        );
    }
}
