//! The client's local state: the SQLite [`index`] (file-id map, handle generation) and the
//! data seam [`DataPath`], the one place where the client reads and writes file data. The
//! block cache (a later issue) wraps this seam; today it passes straight to the store.

pub mod index;

use std::sync::Arc;

use bytes::Bytes;

pub use index::Index;

use crate::error::Result;
use crate::proto::{Attr, FileRef, Request, Response};
use crate::remote::RemoteStore;

/// File data, between the NFS front and the store.
pub struct DataPath {
    store: Arc<RemoteStore>,
}

impl DataPath {
    pub fn new(store: Arc<RemoteStore>) -> Self {
        Self { store }
    }

    /// Read up to `len` bytes at `offset`: (bytes, eof, attributes after the read).
    pub async fn read(&self, file: FileRef, offset: u64, len: u32) -> Result<(Bytes, bool, Attr)> {
        match self
            .store
            .call(Request::Read { file, offset, len }, Bytes::new())
            .await?
        {
            (Response::Read { attr, eof }, data) => Ok((data, eof, attr)),
            (other, _) => Err(unexpected(&other)),
        }
    }

    /// Write `data` at `offset`; `sync` asks the store to make it durable before answering.
    pub async fn write(&self, file: FileRef, offset: u64, data: Bytes, sync: bool) -> Result<Attr> {
        match self
            .store
            .call(Request::Write { file, offset, sync }, data)
            .await?
        {
            (Response::Write { attr, .. }, _) => Ok(attr),
            (other, _) => Err(unexpected(&other)),
        }
    }

    /// Make earlier unstable writes durable on the store.
    pub async fn commit(&self, file: FileRef) -> Result<()> {
        self.store
            .call(Request::Commit { file }, Bytes::new())
            .await
            .map(|_| ())
    }
}

/// A reply of the wrong shape for its request: the server is broken or not ours.
pub fn unexpected(resp: &Response) -> crate::Error {
    crate::Error::Protocol(format!("unexpected reply {resp:?}"))
}
