//! Outcome checks for requests that were in flight when the tunnel dropped.
//!
//! A dropped link leaves a non-idempotent request (REMOVE, RENAME, MKDIR, ...) in doubt:
//! the store may have carried it out and lost only the reply. The request is sent again on
//! the new connection; if that fails in exactly the way a completed first attempt would
//! explain (REMOVE → NOENT, MKDIR → EXIST with a directory there, ...), the store's state
//! is checked and the request answered as done, as an NFS server's duplicate request cache
//! would. A server-side replay cache cannot do this here: under sshd each connection is a
//! new `gridvfs-server` process, and the old one may still be finishing the request.

use super::RemoteStore;
use crate::error::{Error, Result};
use crate::proto::{Attr, CreateHow, FileKind, FileRef, Request, Response, Status};

impl RemoteStore {
    /// Boxed: these recurse into `call`, which may settle again.
    async fn attr_of(&self, file: &FileRef) -> Option<Attr> {
        Box::pin(self.getattr(file)).await.ok()
    }

    async fn find(&self, dir: &FileRef, name: &[u8]) -> Option<Attr> {
        Box::pin(self.lookup(dir, name)).await.ok()
    }

    async fn dirs(&self, dirs: &[&FileRef]) -> Vec<Attr> {
        let mut out = Vec::new();
        for d in dirs {
            if let Some(a) = self.attr_of(d).await {
                out.push(a);
            }
        }
        out
    }

    /// `req` was sent again after the link dropped with it in flight, and failed with
    /// `status`. If the first attempt explains that failure, answer as it would have.
    pub(super) async fn settle(&self, req: &Request, status: Status) -> Result<Response> {
        let refused = Err(Error::Status(status));
        let done = match (req, status) {
            (Request::Remove { dir, .. } | Request::Rmdir { dir, .. }, Status::NoEnt) => {
                Response::Changed {
                    obj: None,
                    dirs: self.dirs(&[dir]).await,
                }
            }
            (
                Request::Rename {
                    from_dir,
                    to_dir,
                    to_name,
                    ..
                },
                Status::NoEnt,
            ) => {
                if self.find(to_dir, to_name).await.is_none() {
                    return refused;
                }
                Response::Changed {
                    obj: None,
                    dirs: self.dirs(&[from_dir, to_dir]).await,
                }
            }
            (Request::Mkdir { dir, name, .. }, Status::Exist) => match self.find(dir, name).await {
                Some(a) if a.kind == FileKind::Directory => Response::Changed {
                    obj: Some(a),
                    dirs: self.dirs(&[dir]).await,
                },
                _ => return refused,
            },
            (
                Request::Symlink {
                    dir, name, target, ..
                },
                Status::Exist,
            ) => {
                let Some(a) = self
                    .find(dir, name)
                    .await
                    .filter(|a| a.kind == FileKind::Symlink)
                else {
                    return refused;
                };
                let mut link = dir.clone();
                if !link.path.is_empty() {
                    link.path.push(b'/');
                }
                link.path.extend_from_slice(name);
                link.ident = Some(a.ident);
                match Box::pin(self.readlink(link)).await {
                    Ok(t) if &t == target => Response::Changed {
                        obj: Some(a),
                        dirs: self.dirs(&[dir]).await,
                    },
                    _ => return refused,
                }
            }
            (Request::Link { file, dir, name }, Status::Exist) => {
                let source = self.attr_of(file).await;
                match (self.find(dir, name).await, source) {
                    (Some(a), Some(s)) if a.ident == s.ident => Response::Changed {
                        obj: Some(a),
                        dirs: self.dirs(&[dir]).await,
                    },
                    _ => return refused,
                }
            }
            // A guarded create found its own empty file: the first attempt made it. (An
            // empty file someone else made in that moment is indistinguishable; knfsd's
            // reply cache has the same blind spot after a server reboot.)
            (
                Request::Create {
                    dir,
                    name,
                    how: CreateHow::Guarded(_),
                },
                Status::Exist,
            ) => match self.find(dir, name).await {
                Some(a) if a.kind == FileKind::Regular && a.size == 0 && a.nlink == 1 => {
                    Response::Changed {
                        obj: Some(a),
                        dirs: self.dirs(&[dir]).await,
                    }
                }
                _ => return refused,
            },
            // The guard failed because the first attempt changed the ctime: done if the
            // attributes it set are there.
            (Request::Setattr { file, set, .. }, Status::NotSync) => {
                let Some(a) = self.attr_of(file).await else {
                    return refused;
                };
                let applied = set.mode.is_none_or(|m| a.mode & 0o7777 == m & 0o7777)
                    && set.uid.is_none_or(|u| a.uid == u)
                    && set.gid.is_none_or(|g| a.gid == g)
                    && set.size.is_none_or(|s| a.size == s);
                if !applied {
                    return refused;
                }
                Response::Attr(a)
            }
            _ => return refused,
        };
        tracing::info!("a request lost in flight had been carried out; answered as done: {req:?}");
        Ok(done)
    }
}
