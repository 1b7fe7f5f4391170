//! The store's operations as typed calls: each asks one [`Request`] and returns the one
//! reply shape that request has, so callers never match on [`Response`] (and a reply of
//! the wrong shape is one error in one place: [`unexpected`]). READ and READPACKED stay
//! with the block cache, which checks their lengths against what it asked.

use bytes::Bytes;

use super::RemoteStore;
use crate::error::{Error, Result};
use crate::proto::{Attr, DirEntry, FileRef, FsStat, Hint, Request, Response, SetAttr, Time};

/// A reply of the wrong shape for its request: the server is broken or not ours.
pub fn unexpected(resp: &Response) -> Error {
    Error::Protocol(format!("unexpected reply {resp:?}"))
}

/// What a namespace change (CREATE, MKDIR, SYMLINK, LINK, REMOVE, RMDIR, RENAME) did:
/// the new object, and the directories it changed, after the change, in request order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Changed {
    pub obj: Option<Attr>,
    pub dirs: Vec<Attr>,
}

impl RemoteStore {
    async fn ask(&self, req: Request) -> Result<Response> {
        self.call(req, Bytes::new()).await.map(|(r, _)| r)
    }

    pub async fn getattr(&self, file: &FileRef) -> Result<Attr> {
        match self.ask(Request::Getattr { file: file.clone() }).await? {
            Response::Attr(a) => Ok(a),
            other => Err(unexpected(&other)),
        }
    }

    pub async fn lookup(&self, dir: &FileRef, name: &[u8]) -> Result<Attr> {
        let req = Request::Lookup {
            dir: dir.clone(),
            name: name.to_vec(),
        };
        match self.ask(req).await? {
            Response::Attr(a) => Ok(a),
            other => Err(unexpected(&other)),
        }
    }

    /// SETATTR; `guard`: only if the ctime is still this. The attributes after.
    pub async fn setattr(&self, file: FileRef, set: SetAttr, guard: Option<Time>) -> Result<Attr> {
        match self.ask(Request::Setattr { file, set, guard }).await? {
            Response::Attr(a) => Ok(a),
            other => Err(unexpected(&other)),
        }
    }

    /// Write `data` at `offset`; `sync`: durable before the answer. The attributes after.
    pub async fn write(&self, file: FileRef, offset: u64, sync: bool, data: Bytes) -> Result<Attr> {
        match self
            .call(Request::Write { file, offset, sync }, data)
            .await?
        {
            (Response::Write { attr, .. }, _) => Ok(attr),
            (other, _) => Err(unexpected(&other)),
        }
    }

    /// Make earlier writes to `file` durable on the store.
    pub async fn commit(&self, file: FileRef) -> Result<()> {
        match self.ask(Request::Commit { file }).await? {
            Response::Done => Ok(()),
            other => Err(unexpected(&other)),
        }
    }

    pub async fn readlink(&self, file: FileRef) -> Result<Vec<u8>> {
        match self.ask(Request::Readlink { file }).await? {
            Response::Target(t) => Ok(t),
            other => Err(unexpected(&other)),
        }
    }

    /// Entries after cookie `after`, at most `max`; and whether that was the last page.
    pub async fn readdir(
        &self,
        dir: FileRef,
        after: u64,
        max: u32,
    ) -> Result<(Vec<DirEntry>, bool)> {
        match self.ask(Request::Readdir { dir, after, max }).await? {
            Response::Entries { entries, eof } => Ok((entries, eof)),
            other => Err(unexpected(&other)),
        }
    }

    pub async fn fsstat(&self, file: FileRef) -> Result<FsStat> {
        match self.ask(Request::Fsstat { file }).await? {
            Response::FsStat(s) => Ok(s),
            other => Err(unexpected(&other)),
        }
    }

    /// The file's hint, for the version `attr` describes.
    pub async fn hint(&self, file: FileRef) -> Result<(Attr, Hint)> {
        match self.ask(Request::Hint { file }).await? {
            Response::Hint { attr, hint } => Ok((attr, hint)),
            other => Err(unexpected(&other)),
        }
    }

    /// The first 16 bytes of blake3 of each `block_size` block, for the version `attr`
    /// describes.
    pub async fn block_sums(
        &self,
        file: FileRef,
        block_size: u32,
    ) -> Result<(Attr, Vec<[u8; 16]>)> {
        match self.ask(Request::BlockSums { file, block_size }).await? {
            Response::BlockSums { attr, sums } => Ok((attr, sums)),
            other => Err(unexpected(&other)),
        }
    }

    /// Keep an access profile in the file's hint.
    pub async fn save_profile(
        &self,
        file: FileRef,
        block_size: u32,
        blocks: Vec<u32>,
    ) -> Result<()> {
        let req = Request::SaveProfile {
            file,
            block_size,
            blocks,
        };
        match self.ask(req).await? {
            Response::Done => Ok(()),
            other => Err(unexpected(&other)),
        }
    }

    /// A namespace change (`req` is one of CREATE, MKDIR, SYMLINK, LINK, REMOVE, RMDIR,
    /// RENAME).
    pub async fn change(&self, req: Request) -> Result<Changed> {
        debug_assert!(req.modifies() && !matches!(req, Request::Write { .. }));
        match self.ask(req).await? {
            Response::Changed { obj, dirs } => Ok(Changed { obj, dirs }),
            other => Err(unexpected(&other)),
        }
    }
}
