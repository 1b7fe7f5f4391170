//! Framing: `u32 len | u8 kind | u64 id | u32 ctl_len | ctl (postcard) | data (raw)`.
//!
//! `len` counts everything after itself. Control bytes are a postcard message; data bytes
//! (file contents of READ replies and WRITE requests) follow raw, so the hot path is one
//! memcpy. A frame longer than [`MAX_FRAME`] is refused *before* anything is allocated: a
//! corrupt or hostile peer cannot make us reserve 4 GiB.

use bytes::{Buf, BufMut, Bytes, BytesMut};

/// Largest frame either side accepts: 8 MiB of data plus room for control.
pub const MAX_FRAME: usize = 8 * 1024 * 1024 + 64 * 1024;

/// Bytes before the control part: len(4) + kind(1) + id(8) + ctl_len(4).
const HEADER: usize = 17;

/// What a frame carries; the control body's type follows from it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum FrameKind {
    /// Client -> server, first frame: [`super::Hello`].
    Hello = 1,
    /// Server -> client, answer to Hello: [`super::Welcome`].
    Welcome = 2,
    /// Client -> server: [`super::Request`], id chosen by the client.
    Request = 3,
    /// Server -> client: [`super::Reply`] for the request with the same id.
    Reply = 4,
}

impl FrameKind {
    fn from_u8(v: u8) -> Option<Self> {
        Some(match v {
            1 => Self::Hello,
            2 => Self::Welcome,
            3 => Self::Request,
            4 => Self::Reply,
            _ => return None,
        })
    }
}

/// One decoded frame. `control` and `data` are slices of the read buffer (no copy).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Frame {
    pub kind: FrameKind,
    pub id: u64,
    pub control: Bytes,
    pub data: Bytes,
}

/// "Not enough bytes yet": not an error, the caller reads more and tries again.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Incomplete {
    /// Total bytes the buffer must hold before the frame can be decoded.
    pub need: usize,
}

/// A frame that can never be decoded: the connection must be closed.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum FrameError {
    #[error("frame of {0} bytes exceeds the {MAX_FRAME}-byte limit")]
    TooLarge(usize),
    #[error("frame of {0} bytes is shorter than its header")]
    TooShort(usize),
    #[error("unknown frame kind {0}")]
    UnknownKind(u8),
    #[error("control length {ctl} exceeds frame body {body}")]
    BadControlLength { ctl: usize, body: usize },
}

/// Append one frame to `out`.
pub fn encode_frame(out: &mut BytesMut, kind: FrameKind, id: u64, control: &[u8], data: &[u8]) {
    out.reserve(HEADER + control.len() + data.len());
    encode_header(out, kind, id, control.len(), data.len());
    out.put_slice(control);
    out.put_slice(data);
}

/// Append only the header, for writers that send control and data from their own buffers.
pub fn encode_header(
    out: &mut BytesMut,
    kind: FrameKind,
    id: u64,
    ctl_len: usize,
    data_len: usize,
) {
    let len = HEADER - 4 + ctl_len + data_len;
    out.put_u32(len as u32);
    out.put_u8(kind as u8);
    out.put_u64(id);
    out.put_u32(ctl_len as u32);
}

/// Try to take one frame off the front of `buf`.
///
/// `Ok(Err(Incomplete))` leaves `buf` untouched; `Ok(Ok(frame))` consumes the frame.
pub fn decode_frame(buf: &mut BytesMut) -> Result<Result<Frame, Incomplete>, FrameError> {
    if buf.len() < 4 {
        return Ok(Err(Incomplete { need: 4 }));
    }
    let len = u32::from_be_bytes([buf[0], buf[1], buf[2], buf[3]]) as usize;
    if len > MAX_FRAME {
        return Err(FrameError::TooLarge(len));
    }
    if len < HEADER - 4 {
        return Err(FrameError::TooShort(len));
    }
    if buf.len() < 4 + len {
        return Ok(Err(Incomplete { need: 4 + len }));
    }
    let kind_byte = buf[4];
    let kind = FrameKind::from_u8(kind_byte).ok_or(FrameError::UnknownKind(kind_byte))?;
    let ctl = u32::from_be_bytes([buf[13], buf[14], buf[15], buf[16]]) as usize;
    let body = len - (HEADER - 4);
    if ctl > body {
        return Err(FrameError::BadControlLength { ctl, body });
    }
    let mut frame = buf.split_to(4 + len);
    frame.advance(5);
    let id = frame.get_u64();
    frame.advance(4);
    let control = frame.split_to(ctl).freeze();
    Ok(Ok(Frame {
        kind,
        id,
        control,
        data: frame.freeze(),
    }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn partial_frames_are_incomplete_not_errors() {
        let mut whole = BytesMut::new();
        encode_frame(&mut whole, FrameKind::Request, 7, b"ctl", b"data!");
        for cut in 0..whole.len() {
            let mut part = BytesMut::from(&whole[..cut]);
            let res = decode_frame(&mut part).expect("no error on a prefix");
            assert!(res.is_err(), "prefix of {cut} bytes decoded");
            assert_eq!(part.len(), cut, "prefix consumed");
        }
    }

    #[test]
    fn oversized_length_is_refused_before_allocation() {
        let mut buf = BytesMut::new();
        buf.put_u32(u32::MAX);
        assert_eq!(
            decode_frame(&mut buf),
            Err(FrameError::TooLarge(u32::MAX as usize))
        );
    }

    #[test]
    fn unknown_kind_and_bad_control_length_are_errors() {
        let mut buf = BytesMut::new();
        encode_frame(&mut buf, FrameKind::Reply, 1, b"", b"");
        buf[4] = 99;
        assert_eq!(decode_frame(&mut buf), Err(FrameError::UnknownKind(99)));

        let mut buf = BytesMut::new();
        encode_frame(&mut buf, FrameKind::Reply, 1, b"ab", b"");
        buf[16] = 200; // control length larger than the body
        assert!(matches!(
            decode_frame(&mut buf),
            Err(FrameError::BadControlLength { .. })
        ));

        let mut buf = BytesMut::new();
        buf.put_u32(3);
        buf.put_slice(&[0, 0, 0]);
        assert_eq!(decode_frame(&mut buf), Err(FrameError::TooShort(3)));
    }

    proptest! {
        #[test]
        fn frames_round_trip_back_to_back(
            frames in proptest::collection::vec(
                (1u8..=4, any::<u64>(), proptest::collection::vec(any::<u8>(), 0..64),
                 proptest::collection::vec(any::<u8>(), 0..300)), 1..8)
        ) {
            let mut buf = BytesMut::new();
            for (k, id, c, d) in &frames {
                encode_frame(&mut buf, FrameKind::from_u8(*k).unwrap(), *id, c, d);
            }
            for (k, id, c, d) in &frames {
                let f = decode_frame(&mut buf).unwrap().unwrap();
                prop_assert_eq!(f.kind as u8, *k);
                prop_assert_eq!(f.id, *id);
                prop_assert_eq!(&f.control[..], &c[..]);
                prop_assert_eq!(&f.data[..], &d[..]);
            }
            prop_assert!(buf.is_empty());
        }

        #[test]
        fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
            let mut buf = BytesMut::from(&bytes[..]);
            while let Ok(Ok(_)) = decode_frame(&mut buf) {}
        }
    }
}
