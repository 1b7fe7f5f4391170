//! The warm-read ceiling (issue 12): the same `nfs3_server` gridvfs's NFS front is built
//! on, over a plain read-only `std::fs` mirror of the data directory, with no cache, no
//! checks and no gate. Run as its own process (`bench mirror DIR`), as gridvfs-client is,
//! so both compete with the reader for the same two cores. Its files are read from the
//! page cache once the bench has touched them: what gridvfs's warm path could reach at best
//! with this NFS stack.

use std::collections::HashMap;
use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use nfs3_server::fs_util::metadata_to_fattr3;
use nfs3_server::nfs3_types::nfs3::{fattr3, filename3, nfspath3, nfsstat3};
use nfs3_server::tcp::{NFSTcp, NFSTcpListener};
use nfs3_server::vfs::{
    DirEntryPlus, FileHandleU64, NextResult, NfsReadFileSystem, ReadDirPlusIterator,
};

const ROOT: u64 = 1;

/// The regular files directly in one directory; handle `ROOT + 1 + i` is the i-th name.
struct Mirror {
    dir: PathBuf,
    names: Vec<String>,
    open: Mutex<HashMap<u64, std::sync::Arc<File>>>,
}

impl Mirror {
    fn new(dir: &Path) -> anyhow::Result<Self> {
        let mut names = Vec::new();
        for e in std::fs::read_dir(dir)? {
            let e = e?;
            if e.file_type()?.is_file() {
                names.push(e.file_name().to_string_lossy().into_owned());
            }
        }
        names.sort();
        Ok(Self {
            dir: dir.to_path_buf(),
            names,
            open: Mutex::default(),
        })
    }

    fn path(&self, id: u64) -> Result<PathBuf, nfsstat3> {
        match id {
            ROOT => Ok(self.dir.clone()),
            _ => self
                .names
                .get((id - ROOT - 1) as usize)
                .map(|n| self.dir.join(n))
                .ok_or(nfsstat3::NFS3ERR_STALE),
        }
    }

    fn attr(&self, id: u64) -> Result<fattr3, nfsstat3> {
        let meta = std::fs::metadata(self.path(id)?).map_err(|_| nfsstat3::NFS3ERR_IO)?;
        Ok(metadata_to_fattr3(id, &meta))
    }

    fn file(&self, id: u64) -> Result<std::sync::Arc<File>, nfsstat3> {
        let mut open = self.open.lock().expect("open files");
        if let Some(f) = open.get(&id) {
            return Ok(f.clone());
        }
        let f = std::sync::Arc::new(File::open(self.path(id)?).map_err(|_| nfsstat3::NFS3ERR_IO)?);
        open.insert(id, f.clone());
        Ok(f)
    }
}

struct Listing(Vec<DirEntryPlus<FileHandleU64>>);

impl ReadDirPlusIterator<FileHandleU64> for Listing {
    async fn next(&mut self) -> NextResult<DirEntryPlus<FileHandleU64>> {
        match self.0.pop() {
            Some(e) => NextResult::Ok(e),
            None => NextResult::Eof,
        }
    }
}

impl NfsReadFileSystem for Mirror {
    type Handle = FileHandleU64;

    fn root_dir(&self) -> FileHandleU64 {
        FileHandleU64::new(ROOT)
    }

    async fn lookup(
        &self,
        dir: &FileHandleU64,
        name: &filename3<'_>,
    ) -> Result<FileHandleU64, nfsstat3> {
        if dir.as_u64() != ROOT {
            return Err(nfsstat3::NFS3ERR_NOTDIR);
        }
        let name = std::str::from_utf8(&name.0).map_err(|_| nfsstat3::NFS3ERR_NOENT)?;
        self.names
            .iter()
            .position(|n| n == name)
            .map(|i| FileHandleU64::new(ROOT + 1 + i as u64))
            .ok_or(nfsstat3::NFS3ERR_NOENT)
    }

    async fn getattr(&self, id: &FileHandleU64) -> Result<fattr3, nfsstat3> {
        self.attr(id.as_u64())
    }

    async fn read(
        &self,
        id: &FileHandleU64,
        offset: u64,
        count: u32,
    ) -> Result<(Vec<u8>, bool), nfsstat3> {
        let f = self.file(id.as_u64())?;
        let size = f.metadata().map_err(|_| nfsstat3::NFS3ERR_IO)?.len();
        let n = u64::from(count).min(size.saturating_sub(offset)) as usize;
        let mut buf = vec![0u8; n];
        f.read_exact_at(&mut buf, offset)
            .map_err(|_| nfsstat3::NFS3ERR_IO)?;
        Ok((buf, offset + n as u64 >= size))
    }

    async fn readdirplus(
        &self,
        dir: &FileHandleU64,
        cookie: u64,
    ) -> Result<impl ReadDirPlusIterator<FileHandleU64>, nfsstat3> {
        if dir.as_u64() != ROOT {
            return Err(nfsstat3::NFS3ERR_NOTDIR);
        }
        let mut entries = Vec::new();
        for (i, name) in self.names.iter().enumerate().skip(cookie as usize) {
            let id = ROOT + 1 + i as u64;
            entries.push(DirEntryPlus {
                fileid: id,
                name: filename3(name.clone().into_bytes().into()),
                cookie: i as u64 + 1,
                name_attributes: self.attr(id).ok(),
                name_handle: Some(FileHandleU64::new(id)),
            });
        }
        entries.reverse();
        Ok(Listing(entries))
    }

    async fn readlink(&self, _id: &FileHandleU64) -> Result<nfspath3<'_>, nfsstat3> {
        Err(nfsstat3::NFS3ERR_INVAL)
    }
}

/// Serve `dir` read-only on a loopback port; prints the port on stdout, then serves until
/// killed.
pub async fn serve(dir: &Path) -> anyhow::Result<()> {
    let listener = NFSTcpListener::bind_ro("127.0.0.1:0", Mirror::new(dir)?).await?;
    println!("{}", listener.get_listen_port());
    use std::io::Write;
    std::io::stdout().flush()?;
    listener.handle_forever().await?;
    Ok(())
}
