//! The tunnel protocol between proxy-client and proxy-server.
//!
//! Pure data: no tokio, no sockets. [`message`] says *what* is asked and answered (serde,
//! postcard); [`codec`] says how it is framed on the byte stream, with bulk file data carried
//! outside serde so a 1 MiB read is never copied through a serializer.

pub mod codec;
pub mod message;
pub mod pack;

pub use codec::{Frame, FrameKind, Incomplete, MAX_FRAME, decode_frame, encode_frame};
pub use message::*;

/// Protocol version spoken by this build. Bumped on any incompatible change of
/// [`message`] or [`codec`]; the handshake refuses a peer with another version.
pub const PROTOCOL_VERSION: u32 = 1;
