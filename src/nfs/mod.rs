//! NFSv3 front of the client proxy: the only module that imports the NFS crates.
//!
//! A call's path: [`gate`] owns the socket the kernel mounts (record framing in
//! [`record`]), asks [`access`] who the caller is and what it may do, answers some
//! procedures itself ([`procs`]) and hands the rest, over an in-process pipe, to
//! `nfs3_server`'s dispatcher, which calls [`fs::Front`].

pub mod access;
pub mod attr;
mod attr_cache;
pub mod fs;
pub mod gate;
pub mod procs;
mod readdir;
pub mod record;
pub mod replay;
pub mod stale;
#[cfg(test)]
mod tests;

use std::net::SocketAddr;
use std::sync::Arc;

use nfs3_server::tcp::NFSStreamServer;
use tokio::net::TcpListener;

pub use access::AccessPolicy;
pub use fs::Front;
pub use gate::Gate;

/// Buffer of each in-process pipe between the gate and the dispatcher: a whole READ reply.
const PIPE_BUFFER: usize = 4 << 20;

/// A bound NFS front, ready to [`run`](NfsFront::run).
pub struct NfsFront {
    listener: TcpListener,
    portmapper: Option<TcpListener>,
    gate: Arc<Gate>,
}

impl NfsFront {
    /// Bind the kernel-facing socket at `listen`; the dispatcher gets no socket at all.
    /// WRITE and COMMIT replies carry `generation ^ store_boot()` as their verifier, so it
    /// changes when the store machine reboots (its unsynced writes are gone; the kernel
    /// must resend what it has not committed) and not when either proxy restarts.
    pub async fn bind(
        front: Front,
        generation: u64,
        listen: SocketAddr,
        policy: AccessPolicy,
        store_boot: Arc<dyn Fn() -> u64 + Send + Sync>,
    ) -> std::io::Result<Self> {
        policy
            .check_listen(listen)
            .map_err(|e| std::io::Error::new(std::io::ErrorKind::PermissionDenied, e))?;
        let front = Arc::new(front);
        let verifier = Arc::new(move || generation ^ store_boot());
        let dispatcher = Arc::new(NFSStreamServer::new(
            SharedFront(front.clone()),
            generation,
            verifier,
        ));
        let listener = TcpListener::bind(listen).await?;
        let public_port = listener.local_addr()?.port();
        let gate = Arc::new(Gate {
            procs: procs::Procedures {
                front,
                generation,
                public_port,
            },
            policy,
            dispatcher: Box::new(InProcess(dispatcher)),
            replay: Default::default(),
        });
        Ok(Self {
            listener,
            portmapper: None,
            gate,
        })
    }

    /// Also answer portmapper calls at `addr` (usually `127.0.0.1:111`), for NFS clients
    /// that look ports up instead of being told them (qemu's `nfs://` driver).
    pub async fn with_portmapper(mut self, addr: SocketAddr) -> std::io::Result<Self> {
        self.gate
            .policy
            .check_listen(addr)
            .map_err(|e| std::io::Error::new(std::io::ErrorKind::PermissionDenied, e))?;
        self.portmapper = Some(TcpListener::bind(addr).await?);
        Ok(self)
    }

    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.listener.local_addr()
    }

    /// Serve until the task is dropped.
    pub async fn run(self) -> std::io::Result<()> {
        if let Some(pm) = self.portmapper {
            tokio::spawn(self.gate.clone().run(pm));
        }
        self.gate.run(self.listener).await
    }
}

/// `nfs3_server` wants to own its file system; the gate shares the same [`Front`].
struct SharedFront(Arc<Front>);

/// The dispatcher, reached through `tokio::io::duplex` pipes only.
struct InProcess(Arc<NFSStreamServer<SharedFront>>);

impl gate::Dispatcher for InProcess {
    fn connect(&self, peer: SocketAddr) -> tokio::io::DuplexStream {
        let (gate_end, dispatcher_end) = tokio::io::duplex(PIPE_BUFFER);
        let server = self.0.clone();
        tokio::spawn(async move {
            if let Err(e) = server.serve(dispatcher_end, peer.to_string()).await {
                tracing::debug!("NFS dispatcher connection for {peer} ended: {e}");
            }
        });
        gate_end
    }
}

mod shared {
    use nfs3_server::nfs3_types::nfs3::{
        createverf3, fattr3, filename3, nfspath3, nfsstat3, sattr3, stable_how,
    };
    use nfs3_server::vfs::{
        FileHandleU64, NfsFileSystem, NfsReadFileSystem, ReadDirPlusIterator, VFSCapabilities,
    };

    use super::SharedFront;

    impl NfsReadFileSystem for SharedFront {
        type Handle = FileHandleU64;
        fn root_dir(&self) -> FileHandleU64 {
            self.0.root_dir()
        }
        async fn lookup(
            &self,
            d: &FileHandleU64,
            n: &filename3<'_>,
        ) -> Result<FileHandleU64, nfsstat3> {
            self.0.lookup(d, n).await
        }
        async fn getattr(&self, id: &FileHandleU64) -> Result<fattr3, nfsstat3> {
            self.0.getattr(id).await
        }
        async fn read(
            &self,
            id: &FileHandleU64,
            off: u64,
            count: u32,
        ) -> Result<(Vec<u8>, bool), nfsstat3> {
            self.0.read(id, off, count).await
        }
        async fn readdirplus(
            &self,
            d: &FileHandleU64,
            cookie: u64,
        ) -> Result<impl ReadDirPlusIterator<FileHandleU64>, nfsstat3> {
            self.0.readdirplus(d, cookie).await
        }
        async fn readlink(&self, id: &FileHandleU64) -> Result<nfspath3<'_>, nfsstat3> {
            self.0.readlink(id).await
        }
    }

    impl NfsFileSystem for SharedFront {
        fn capabilities(&self) -> VFSCapabilities {
            self.0.capabilities()
        }
        async fn setattr(&self, id: &FileHandleU64, s: sattr3) -> Result<fattr3, nfsstat3> {
            self.0.setattr(id, s).await
        }
        async fn write(
            &self,
            id: &FileHandleU64,
            off: u64,
            data: &[u8],
            st: stable_how,
        ) -> Result<(fattr3, stable_how), nfsstat3> {
            self.0.write(id, off, data, st).await
        }
        async fn create(
            &self,
            d: &FileHandleU64,
            n: &filename3<'_>,
            a: sattr3,
        ) -> Result<(FileHandleU64, fattr3), nfsstat3> {
            self.0.create(d, n, a).await
        }
        async fn create_exclusive(
            &self,
            d: &FileHandleU64,
            n: &filename3<'_>,
            v: createverf3,
        ) -> Result<FileHandleU64, nfsstat3> {
            self.0.create_exclusive(d, n, v).await
        }
        async fn mkdir(
            &self,
            d: &FileHandleU64,
            n: &filename3<'_>,
        ) -> Result<(FileHandleU64, fattr3), nfsstat3> {
            self.0.mkdir(d, n).await
        }
        async fn remove(&self, d: &FileHandleU64, n: &filename3<'_>) -> Result<(), nfsstat3> {
            self.0.remove(d, n).await
        }
        async fn rename<'a>(
            &self,
            fd: &FileHandleU64,
            f: &filename3<'a>,
            td: &FileHandleU64,
            t: &filename3<'a>,
        ) -> Result<(), nfsstat3> {
            self.0.rename(fd, f, td, t).await
        }
        async fn symlink<'a>(
            &self,
            d: &FileHandleU64,
            n: &filename3<'a>,
            s: &nfspath3<'a>,
            a: &sattr3,
        ) -> Result<(FileHandleU64, fattr3), nfsstat3> {
            self.0.symlink(d, n, s, a).await
        }
        async fn commit(&self, id: &FileHandleU64, off: u64, count: u32) -> Result<(), nfsstat3> {
            self.0.commit(id, off, count).await
        }
    }
}
