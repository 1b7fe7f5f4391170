//! Block data on local disk: one sparse file per cached file, named by its file id (the
//! NFS handle id), never by path, so a rename moves nothing.

use std::fs::{File, OpenOptions};
use std::os::unix::fs::FileExt;
use std::path::PathBuf;

use crate::error::Result;

pub struct Store {
    dir: PathBuf,
}

impl Store {
    pub fn open(dir: PathBuf) -> Result<Self> {
        std::fs::create_dir_all(&dir)?;
        Ok(Self { dir })
    }

    fn path(&self, file: u64) -> PathBuf {
        self.dir.join(format!("{file:016x}"))
    }

    fn file(&self, file: u64) -> Result<File> {
        Ok(OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
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
    pub fn write(&self, file: u64, offset: u64, data: &[u8]) -> Result<()> {
        self.file(file)?.write_all_at(data, offset)?;
        Ok(())
    }

    /// Free the disk space of a range (evicted blocks): punch a hole.
    pub fn punch(&self, file: u64, offset: u64, len: u64) -> Result<()> {
        let f = match OpenOptions::new().write(true).open(self.path(file)) {
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
