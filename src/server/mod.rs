//! Server-side proxy: speaks the tunnel protocol on a byte stream (stdin/stdout under sshd,
//! a pipe under the local transport) and carries requests out beneath one export directory.
//!
//! Requests run concurrently on blocking threads, at most [`MAX_IN_FLIGHT`] at once; past
//! that the server stops reading, so a fast client is slowed by the pipe, not by errors.

pub mod disk;
pub mod dispatch;
pub mod hint;
pub mod keys;
pub mod listen;

use std::sync::Arc;

use bytes::{Bytes, BytesMut};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::{Semaphore, mpsc};

pub use disk::Export;

use crate::error::Error;
use crate::frames::{Outgoing, read_frame, write_frames};
use crate::proto::{self, FrameKind, Hello, PROTOCOL_VERSION, Request, Welcome};

/// Requests carried out at once; bounds memory (each may hold a 4 MiB read).
pub const MAX_IN_FLIGHT: usize = 64;

/// This machine's boot, as a number: a hash of the kernel's boot id (new at every boot).
/// `GRIDVFS_BOOT_ID` stands in for it where the kernel's cannot tell (tests simulate a
/// store reboot with it).
pub fn boot_id() -> u64 {
    let id = std::env::var("GRIDVFS_BOOT_ID")
        .ok()
        .or_else(|| std::fs::read_to_string("/proc/sys/kernel/random/boot_id").ok())
        .unwrap_or_default();
    let h = blake3::hash(id.trim().as_bytes());
    u64::from_le_bytes(h.as_bytes()[..8].try_into().expect("8 bytes"))
}

/// Read frames from `input` until it closes, answering on `output`.
pub async fn serve<R, W>(export: Arc<Export>, mut input: R, output: W) -> Result<(), Error>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin + Send + 'static,
{
    let mut buf = BytesMut::with_capacity(1 << 20);
    let hello = match read_frame(&mut input, &mut buf).await? {
        Some(f) if f.kind == FrameKind::Hello => f,
        Some(f) => return Err(Error::Protocol(format!("expected Hello, got {:?}", f.kind))),
        None => return Ok(()),
    };
    let hello: Hello = postcard::from_bytes(&hello.control)
        .map_err(|e| Error::Protocol(format!("bad Hello: {e}")))?;
    let (tx, rx) = mpsc::channel::<Outgoing>(MAX_IN_FLIGHT + 1);
    let writer = tokio::spawn(write_frames(output, rx));
    let welcome = Welcome {
        version: PROTOCOL_VERSION,
        features: crate::proto::FEATURE_PACKED_READ | crate::proto::FEATURE_HINTS,
        export_id: export.id().to_string(),
        read_only: export.read_only(),
    };
    let ctl = postcard::to_stdvec(&welcome).expect("Welcome serializes");
    let ext = proto::WelcomeExt { boot_id: boot_id() };
    let ext = Bytes::from(postcard::to_stdvec(&ext).expect("WelcomeExt serializes"));
    let _ = tx.send((FrameKind::Welcome, 0, ctl, ext, None)).await;
    if hello.version != PROTOCOL_VERSION {
        drop(tx);
        let _ = writer.await;
        return Err(Error::Protocol(format!(
            "client speaks protocol {}, this server {PROTOCOL_VERSION}",
            hello.version
        )));
    }

    let slots = Arc::new(Semaphore::new(MAX_IN_FLIGHT));
    let result = loop {
        let permit = slots.clone().acquire_owned().await.expect("never closed");
        let frame = match read_frame(&mut input, &mut buf).await {
            Ok(Some(f)) => f,
            Ok(None) => break Ok(()),
            Err(e) => break Err(e),
        };
        if frame.kind != FrameKind::Request {
            break Err(Error::Protocol(format!(
                "unexpected {:?} frame",
                frame.kind
            )));
        }
        let req: Request = match postcard::from_bytes(&frame.control) {
            Ok(r) => r,
            Err(e) => {
                break Err(Error::Protocol(format!(
                    "malformed request {}: {e}",
                    frame.id
                )));
            }
        };
        let export = export.clone();
        let tx = tx.clone();
        tokio::task::spawn_blocking(move || {
            let (reply, data) = dispatch::dispatch(&export, req, &frame.data);
            let ctl = postcard::to_stdvec(&reply).expect("Reply serializes");
            // The slot travels with the reply and is freed once it is written: requests
            // being worked on plus replies waiting never exceed MAX_IN_FLIGHT, so this send
            // never waits, and a slow reader of our replies slows our reading of requests.
            let _ = tx.blocking_send((FrameKind::Reply, frame.id, ctl, data, Some(permit)));
        });
    };
    // Let in-flight requests finish and their replies drain before closing.
    let _ = slots.acquire_many(MAX_IN_FLIGHT as u32).await;
    drop(tx);
    let _ = writer.await;
    result
}

/// Set the process umask to 0, so the modes clients ask for are the modes files get.
pub fn clear_umask() {
    rustix::process::umask(rustix::fs::Mode::empty());
}
