//! Frames on a byte stream, for both ends of the tunnel: read one whole frame, and a
//! writer task that batches queued frames into few flushes. The pure encoding lives in
//! `proto::codec`; this is its I/O (mini-redis's `Connection`).

use bytes::{Bytes, BytesMut};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::mpsc;

use crate::error::Error;
use crate::proto::{self, Frame, FrameKind};

/// Read one whole frame; `None` at a clean end of stream between frames.
pub async fn read_frame<R: AsyncRead + Unpin>(
    input: &mut R,
    buf: &mut BytesMut,
) -> Result<Option<Frame>, Error> {
    loop {
        match proto::decode_frame(buf)? {
            Ok(frame) => return Ok(Some(frame)),
            Err(inc) => {
                buf.reserve(inc.need.saturating_sub(buf.len()).max(64 * 1024));
                let n = input.read_buf(buf).await?;
                if n == 0 {
                    return if buf.is_empty() {
                        Ok(None)
                    } else {
                        Err(Error::Protocol(format!(
                            "stream ended inside a frame ({} bytes)",
                            buf.len()
                        )))
                    };
                }
            }
        }
    }
}

/// A frame queued for the writer: kind, id, control bytes, data, and the in-flight slot to
/// free once it is written (if it holds one).
pub type Outgoing = (
    FrameKind,
    u64,
    Vec<u8>,
    Bytes,
    Option<tokio::sync::OwnedSemaphorePermit>,
);

/// Write queued frames, flushing when the queue runs dry (batches small replies).
pub async fn write_frames<W: AsyncWrite + Unpin>(
    mut out: W,
    mut rx: mpsc::Receiver<Outgoing>,
) -> Result<(), Error> {
    let mut head = BytesMut::with_capacity(256);
    while let Some((kind, id, ctl, data, _slot)) = rx.recv().await {
        write_frame(&mut out, &mut head, kind, id, &ctl, &data).await?;
        if rx.is_empty() {
            out.flush().await?;
        }
    }
    out.flush().await?;
    Ok(())
}

/// Write one frame (unflushed); `head` is scratch space for its header.
pub async fn write_frame<W: AsyncWrite + Unpin>(
    out: &mut W,
    head: &mut BytesMut,
    kind: FrameKind,
    id: u64,
    ctl: &[u8],
    data: &[u8],
) -> Result<(), Error> {
    head.clear();
    proto::codec::encode_header(head, kind, id, ctl.len(), data.len());
    out.write_all(head).await?;
    out.write_all(ctl).await?;
    out.write_all(data).await?;
    Ok(())
}
