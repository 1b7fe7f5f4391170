//! Block data on local disk: one sparse file per cached file, named by its file id (the
//! NFS handle id), never by path, so a rename moves nothing.
//!
//! Each block is served only if its bytes have the checksum its index row holds. Hashing
//! every hit cost a warm read a fifth of its time (issue 12), so a block is hashed once
//! per process: [`Store::read_checked`] remembers the sum it checked, and every write,
//! punch or removal of data forgets the sums of the ranges it touches before it changes
//! them. A read that overlaps any write in progress hashes again. After a restart nothing
//! is remembered: torn or flipped blocks on disk are still caught.

use std::collections::{BTreeMap, HashMap};
use std::fs::{File, OpenOptions};
use std::os::unix::fs::FileExt;
use std::path::PathBuf;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering::SeqCst};

use crate::error::Result;

pub struct Store {
    dir: PathBuf,
    /// Sums checked by this process: file -> block start -> (length, first 8 bytes of
    /// the sum). Lock order: innermost (nothing is taken while it is held).
    checked: Mutex<Checked>,
    /// Data changes begun and ended (see [`Store::read_checked`]).
    writes_begun: AtomicU64,
    writes_ended: AtomicU64,
}

#[derive(Default)]
struct Checked {
    files: HashMap<u64, BTreeMap<u64, (u64, u64)>>,
    entries: usize,
}

/// Longest block remembered (the largest block size).
const MAX_BLOCK: u64 = 4 << 20;
/// At most this many checked sums are remembered (about 32 MiB; 128 GiB of 256 KiB
/// blocks); past it they are all forgotten and blocks are hashed again as they are read.
const MAX_CHECKED: usize = 1 << 20;

impl Checked {
    /// Forget the sums of blocks overlapping `offset..offset + len` of `file`.
    fn forget(&mut self, file: u64, offset: u64, len: u64) {
        let Some(blocks) = self.files.get_mut(&file) else {
            return;
        };
        let end = offset.saturating_add(len);
        let hit: Vec<u64> = blocks
            .range(offset.saturating_sub(MAX_BLOCK)..end)
            .filter(|(start, (blen, _))| *start + *blen > offset)
            .map(|(start, _)| *start)
            .collect();
        for start in &hit {
            blocks.remove(start);
        }
        self.entries -= hit.len();
    }

    fn forget_file(&mut self, file: u64) {
        if let Some(blocks) = self.files.remove(&file) {
            self.entries -= blocks.len();
        }
    }
}

/// First 8 bytes of a sum: enough to tell which content was checked.
fn short(sum: &[u8; 32]) -> u64 {
    u64::from_le_bytes(sum[..8].try_into().expect("8 bytes"))
}

/// A change to block data in progress: begun before the sums of its range are forgotten,
/// ended after the data changed.
struct Change<'a>(&'a Store);

impl Drop for Change<'_> {
    fn drop(&mut self) {
        self.0.writes_ended.fetch_add(1, SeqCst);
    }
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
        Ok(Self {
            dir,
            checked: Mutex::default(),
            writes_begun: AtomicU64::new(0),
            writes_ended: AtomicU64::new(0),
        })
    }

    /// Begin changing `len` bytes at `offset` of `file` (`None`: the whole file).
    fn change(&self, file: u64, range: Option<(u64, u64)>) -> Change<'_> {
        self.writes_begun.fetch_add(1, SeqCst);
        let mut checked = self.checked.lock().expect("checked sums");
        match range {
            Some((offset, len)) => checked.forget(file, offset, len),
            None => checked.forget_file(file),
        }
        Change(self)
    }

    /// Read the part `at..at + out.len()` of the cached block `block` (its offset and
    /// length) and tell whether the block has `sum`. The whole block is read (into
    /// `out` when the part is the whole block, else into `scratch`) and hashed unless this
    /// process checked it already and no change to block data overlapped; then only the
    /// part is read: a 4 KiB hit costs a 4 KiB read, not 256 KiB. Sound because a change
    /// begins (counter, then forgetting the range's sums) before it touches data: a read
    /// that saw no change begun or in progress around it read the bytes that were checked.
    pub fn read_checked(
        &self,
        file: u64,
        block: (u64, u64),
        sum: &[u8; 32],
        at: u64,
        out: &mut [u8],
        scratch: &mut Vec<u8>,
    ) -> Result<bool> {
        let (offset, len) = block;
        debug_assert!(at >= offset && at + out.len() as u64 <= offset + len);
        let begun = self.writes_begun.load(SeqCst);
        let quiet = begun == self.writes_ended.load(SeqCst);
        let known = quiet && {
            let checked = self.checked.lock().expect("checked sums");
            checked
                .files
                .get(&file)
                .and_then(|b| b.get(&offset))
                .is_some_and(|(l, s)| *l == len && *s == short(sum))
        };
        if known {
            if self.read(file, at, out)? != out.len() {
                return Ok(false);
            }
            if self.writes_begun.load(SeqCst) == begun {
                return Ok(true);
            }
        }
        if at == offset && out.len() as u64 == len {
            return self.check_whole(file, offset, out, sum, quiet, begun);
        }
        // Not zeroed again when it has the length already: `read` fills every byte.
        scratch.resize(len as usize, 0);
        let ok = self.check_whole(file, offset, scratch, sum, quiet, begun)?;
        if ok {
            out.copy_from_slice(&scratch[(at - offset) as usize..][..out.len()]);
        }
        Ok(ok)
    }

    /// Read the whole block at `offset` into `buf`, hash it against `sum`, and remember a
    /// pass if no change began since `begun` (and none was in progress then: `quiet`).
    fn check_whole(
        &self,
        file: u64,
        offset: u64,
        buf: &mut [u8],
        sum: &[u8; 32],
        quiet: bool,
        begun: u64,
    ) -> Result<bool> {
        if self.read(file, offset, buf)? != buf.len() || blake3::hash(buf).as_bytes() != sum {
            return Ok(false);
        }
        let mut checked = self.checked.lock().expect("checked sums");
        // Remembered only if no change began since the bytes were read (a change begins
        // before it takes this lock to forget the range).
        if quiet && self.writes_begun.load(SeqCst) == begun && buf.len() as u64 <= MAX_BLOCK {
            if checked.entries >= MAX_CHECKED {
                *checked = Checked::default();
            }
            let blocks = checked.files.entry(file).or_default();
            if blocks
                .insert(offset, (buf.len() as u64, short(sum)))
                .is_none()
            {
                checked.entries += 1;
            }
        }
        Ok(true)
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
    ///
    /// Holes (the zero pages [`Store::write`] leaves unwritten) are zeroed in `buf` and
    /// not read: reading a hole through the page cache makes the kernel allocate and
    /// clear a page for it, which was 63% of the client's CPU on the first warm read of
    /// a memory image after a restart, and leaves the image's zeros resident.
    pub fn read(&self, file: u64, offset: u64, buf: &mut [u8]) -> Result<usize> {
        use rustix::fs::SeekFrom;
        let f = self.file(file)?;
        let end = f.metadata()?.len().min(offset + buf.len() as u64);
        let mut pos = offset;
        while pos < end {
            let data = match rustix::fs::seek(&f, SeekFrom::Data(pos)) {
                Ok(d) => d.min(end),
                Err(rustix::io::Errno::NXIO) => end,
                // A file system without SEEK_DATA: read everything.
                Err(rustix::io::Errno::INVAL | rustix::io::Errno::OPNOTSUPP) => pos,
                Err(e) => return Err(std::io::Error::from(e).into()),
            };
            if data > pos {
                buf[(pos - offset) as usize..(data - offset) as usize].fill(0);
                pos = data;
                continue;
            }
            let hole = match rustix::fs::seek(&f, SeekFrom::Hole(pos)) {
                Ok(h) if h > pos => h.min(end),
                _ => end,
            };
            while pos < hole {
                let at = (pos - offset) as usize;
                match f.read_at(&mut buf[at..(hole - offset) as usize], pos)? {
                    // Truncated meanwhile: short, like a plain read at the end.
                    0 => return Ok(at),
                    n => pos += n as u64,
                }
            }
        }
        Ok((end.max(offset) - offset) as usize)
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
        let _change = self.change(file, Some((offset, data.len() as u64)));
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
            let keep = p + 1 == pages || !crate::proto::pack::all_zero(page);
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
        let _change = self.change(file, Some((offset, len)));
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
        let _change = self.change(file, None);
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

    /// A block is hashed once per process; any change through the store is hashed again,
    /// and a new process (a restart) trusts nothing it has not hashed.
    fn whole(store: &Store, off: u64, buf: &mut [u8], sum: &[u8; 32]) -> bool {
        let block = (off, buf.len() as u64);
        store
            .read_checked(3, block, sum, off, buf, &mut Vec::new())
            .unwrap()
    }

    /// Parts of a block: hashed whole the first time, read alone once checked, and a
    /// block that fails is never copied out.
    #[test]
    fn a_part_of_a_checked_block_is_read_alone() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path().to_path_buf()).unwrap();
        let mut a: Vec<u8> = (0..16 * PAGE).map(|i| (i % 251) as u8).collect();
        a[2 * PAGE..5 * PAGE].fill(0); // a hole inside the block
        let sum = *blake3::hash(&a).as_bytes();
        let off = 16 * PAGE as u64;
        store.write(5, off, &a).unwrap();
        let block = (off, a.len() as u64);
        let mut scratch = Vec::new();
        for (from, len) in [
            (100usize, 9000usize),
            (2 * PAGE - 7, PAGE + 14),
            (0, 16 * PAGE),
        ] {
            let mut out = vec![0xEEu8; len];
            let at = off + from as u64;
            assert!(
                store
                    .read_checked(5, block, &sum, at, &mut out, &mut scratch)
                    .unwrap()
            );
            assert_eq!(out, a[from..from + len], "part at {from}");
        }
        let wrong = *blake3::hash(b"other").as_bytes();
        let mut out = vec![0xEEu8; 10];
        assert!(
            !store
                .read_checked(5, block, &wrong, off + 3, &mut out, &mut scratch)
                .unwrap()
        );
        assert_eq!(out, vec![0xEEu8; 10], "a failed block is not copied out");
        // A change makes the next partial read hash the whole block again.
        store.write(5, off + 5 * PAGE as u64, &[7]).unwrap();
        let mut out = vec![0u8; 10];
        assert!(
            !store
                .read_checked(5, block, &sum, off, &mut out, &mut scratch)
                .unwrap()
        );
    }

    #[test]
    fn checked_sums_are_remembered_until_the_data_changes() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path().to_path_buf()).unwrap();
        let (a, b) = (vec![1u8; 8 * PAGE], vec![2u8; 8 * PAGE]);
        let (sum_a, sum_b) = (*blake3::hash(&a).as_bytes(), *blake3::hash(&b).as_bytes());
        let off = 8 * PAGE as u64;
        store.write(3, off, &a).unwrap();
        let mut buf = vec![0u8; a.len()];
        assert!(!whole(&store, off, &mut buf, &sum_b), "wrong sum passed");
        assert!(whole(&store, off, &mut buf, &sum_a));
        // Flipped behind the store's back: this process trusts its check (the one trade)...
        let path = store.path(3);
        std::fs::OpenOptions::new()
            .write(true)
            .open(&path)
            .unwrap()
            .write_all_at(b"X", off + 5)
            .unwrap();
        assert!(whole(&store, off, &mut buf, &sum_a));
        // ... a new process does not.
        let fresh = Store::open(dir.path().to_path_buf()).unwrap();
        assert!(!whole(&fresh, off, &mut buf, &sum_a));
        // A write overlapping the block by one byte makes it hashed again.
        store.write(3, off + a.len() as u64 - 1, &[9]).unwrap();
        assert!(!whole(&store, off, &mut buf, &sum_a));
        store.write(3, off, &b).unwrap();
        assert!(whole(&store, off, &mut buf, &sum_b));
        store.punch(3, off, PAGE as u64).unwrap();
        assert!(
            !whole(&store, off, &mut buf, &sum_b),
            "punched block passed"
        );
        store.write(3, off, &b).unwrap();
        assert!(whole(&store, off, &mut buf, &sum_b));
        store.drop_file(3).unwrap();
        store.write(3, off, &a).unwrap();
        assert!(!whole(&store, off, &mut buf, &sum_b), "dropped file passed");
        // A block elsewhere is untouched by a write next to it.
        assert!(whole(&store, off, &mut buf, &sum_a));
        store.write(3, 0, &b).unwrap();
        store.write(3, off + a.len() as u64, &b).unwrap();
        assert_eq!(store.checked.lock().unwrap().entries, 1);
    }

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
