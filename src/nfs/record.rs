//! ONC RPC record marking (RFC 5531 §11) and the reply records the gate writes itself.

use bytes::{Buf, Bytes};
use nfs3_server::nfs3_types::rpc::{
    accept_stat_data, accepted_reply, auth_stat, msg_body, opaque_auth, reply_body, rpc_msg,
};
use nfs3_server::nfs3_types::xdr_codec::Pack;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Largest RPC record accepted: a 1 MiB WRITE plus headers, with room to spare.
pub const MAX_RECORD: usize = 4 * 1024 * 1024;

/// Read one RPC record (all its fragments); `None` at a clean end of stream. The size is
/// checked before anything is allocated.
pub async fn read_record<R: tokio::io::AsyncRead + Unpin>(
    r: &mut R,
) -> std::io::Result<Option<Vec<u8>>> {
    let mut body = Vec::new();
    loop {
        let mut mark = [0u8; 4];
        match r.read_exact(&mut mark).await {
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof && body.is_empty() => {
                return Ok(None);
            }
            Err(e) => return Err(e),
        }
        let m = u32::from_be_bytes(mark);
        let len = (m & 0x7fff_ffff) as usize;
        if body.len() + len > MAX_RECORD {
            return Err(std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                format!("RPC record larger than {MAX_RECORD} bytes"),
            ));
        }
        let start = body.len();
        body.resize(start + len, 0);
        r.read_exact(&mut body[start..]).await?;
        if m & 0x8000_0000 != 0 {
            return Ok(Some(body));
        }
    }
}

/// One record as a single last fragment.
pub fn frame_record(body: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(4 + body.len());
    out.extend_from_slice(&(0x8000_0000u32 | body.len() as u32).to_be_bytes());
    out.extend_from_slice(body);
    out
}

/// One outgoing record as a single last fragment, kept in parts: a READ's data goes to
/// the socket from the buffer the cache filled, in one vectored write with its header,
/// never copied into a reply buffer first.
pub struct Record {
    mark: [u8; 4],
    head: Bytes,
    data: Bytes,
    pad: usize,
}

impl Record {
    /// A record whose body is `head`, then `data`, then zeros to a multiple of 4 bytes
    /// (XDR's padding of an opaque that `head` ends by announcing).
    pub fn new(head: impl Into<Bytes>, data: Bytes) -> Self {
        let head = head.into();
        let pad = (4 - data.len() % 4) % 4;
        let len = head.len() + data.len() + pad;
        Self {
            mark: (0x8000_0000u32 | len as u32).to_be_bytes(),
            head,
            data,
            pad,
        }
    }

    /// Write the whole record.
    pub async fn write_to<W: tokio::io::AsyncWrite + Unpin>(
        &self,
        w: &mut W,
    ) -> std::io::Result<()> {
        const ZEROS: [u8; 3] = [0; 3];
        let head = Buf::chain(&self.mark[..], &self.head[..]);
        let mut buf = Buf::chain(Buf::chain(head, &self.data[..]), &ZEROS[..self.pad]);
        w.write_all_buf(&mut buf).await
    }
}

impl Record {
    /// The NFS status this reply starts its result with (see [`nfs_status`]).
    pub fn nfs_status(&self) -> Option<u32> {
        nfs_status(&self.head)
    }
}

impl From<Vec<u8>> for Record {
    fn from(body: Vec<u8>) -> Self {
        Self::new(body, Bytes::new())
    }
}

/// The xid of a record, if it is long enough to have one.
pub fn xid_of(body: &[u8]) -> Option<u32> {
    body.get(..4)
        .map(|b| u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
}

/// The first word of an accepted, successful reply's result: the `nfsstat3` every NFSv3
/// result starts with. `None` for a denied reply or one the RPC layer refused.
pub fn nfs_status(body: &[u8]) -> Option<u32> {
    let word = |at: usize| {
        body.get(at..at + 4)
            .map(|b| u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
    };
    // xid, REPLY (1), MSG_ACCEPTED (0), verifier (flavor, length, body), SUCCESS (0).
    if word(4)? != 1 || word(8)? != 0 {
        return None;
    }
    let verf_len = word(16)? as usize;
    let at = 20usize.checked_add(verf_len.checked_add(3)? & !3)?;
    if word(at)? != 0 {
        return None;
    }
    word(at + 4)
}

/// Whether a record that did not decode still says it is a CALL (so it deserves a reply).
pub fn is_call(body: &[u8]) -> bool {
    body.get(4..8) == Some(&[0, 0, 0, 0])
}

/// An accepted reply header for `xid` followed by `result`.
pub fn reply(xid: u32, stat: accept_stat_data, result: &[u8]) -> Vec<u8> {
    let msg = rpc_msg {
        xid,
        body: msg_body::REPLY(reply_body::MSG_ACCEPTED(accepted_reply {
            verf: opaque_auth::default(),
            reply_data: stat,
        })),
    };
    let mut out = Vec::with_capacity(msg.packed_size() + result.len());
    msg.pack(&mut out).expect("packing into a Vec cannot fail");
    out.extend_from_slice(result);
    out
}

/// A denied reply: the call's credential is refused (RFC 5531 §9, `AUTH_ERROR`).
pub fn auth_error(xid: u32, stat: auth_stat) -> Vec<u8> {
    // xid, REPLY, MSG_DENIED, AUTH_ERROR, auth_stat.
    let mut out = Vec::with_capacity(20);
    for word in [xid, 1, 1, 1, stat as u32] {
        out.extend_from_slice(&word.to_be_bytes());
    }
    out
}

/// Words of the `resfail` arm of each NFSv3 procedure's result when every optional
/// attribute in it is absent (RFC 1813): `post_op_attr` is one word, `wcc_data` two.
const RESFAIL_WORDS: [usize; 22] = [
    0, // NULL (never fails)
    0, // GETATTR: void
    2, // SETATTR: obj_wcc
    1, // LOOKUP: dir_attributes
    1, // ACCESS: obj_attributes
    1, // READLINK: symlink_attributes
    1, // READ: file_attributes
    2, // WRITE: file_wcc
    2, // CREATE: dir_wcc
    2, // MKDIR: dir_wcc
    2, // SYMLINK: dir_wcc
    2, // MKNOD: dir_wcc
    2, // REMOVE: dir_wcc
    2, // RMDIR: dir_wcc
    4, // RENAME: fromdir_wcc, todir_wcc
    3, // LINK: file_attributes, linkdir_wcc
    1, // READDIR: dir_attributes
    1, // READDIRPLUS: dir_attributes
    1, // FSSTAT: obj_attributes
    1, // FSINFO: obj_attributes
    1, // PATHCONF: obj_attributes
    2, // COMMIT: file_wcc
];

/// An NFSv3 reply for `proc_` failing with `status` (no attributes), for calls the gate
/// refuses before they reach anything.
pub fn nfs_error(xid: u32, proc_: u32, status: u32) -> Vec<u8> {
    let words = RESFAIL_WORDS.get(proc_ as usize).copied().unwrap_or(0);
    let mut result = Vec::with_capacity(4 + 4 * words);
    result.extend_from_slice(&status.to_be_bytes());
    result.resize(4 + 4 * words, 0);
    reply(xid, accept_stat_data::SUCCESS, &result)
}

#[cfg(test)]
mod tests {
    use super::*;
    use nfs3_server::nfs3_types::nfs3::{
        COMMIT3res, LINK3res, LOOKUP3res, READ3res, RENAME3res, nfsstat3,
    };
    use nfs3_server::nfs3_types::xdr_codec::Unpack;
    use std::io::Cursor;

    /// The status is found after any verifier, and only in an accepted, successful reply.
    #[test]
    fn a_replys_nfs_status() {
        let jukebox = nfsstat3::NFS3ERR_JUKEBOX as u32;
        assert_eq!(nfs_status(&nfs_error(9, 6, jukebox)), Some(jukebox));
        assert_eq!(
            Record::new(nfs_error(9, 1, 0), Bytes::new()).nfs_status(),
            Some(0)
        );
        // A 5-byte verifier body, padded to 8.
        let mut r = nfs_error(9, 6, jukebox);
        r[16..20].copy_from_slice(&5u32.to_be_bytes());
        r.splice(20..20, [1u8, 2, 3, 4, 5, 0, 0, 0]);
        assert_eq!(nfs_status(&r), Some(jukebox));
        assert_eq!(nfs_status(&auth_error(9, auth_stat::AUTH_TOOWEAK)), None);
        assert_eq!(
            nfs_status(&reply(9, accept_stat_data::GARBAGE_ARGS, &[])),
            None
        );
        let mut huge = nfs_error(9, 6, jukebox);
        huge[16..20].copy_from_slice(&u32::MAX.to_be_bytes());
        assert_eq!(nfs_status(&huge), None, "a verifier longer than the reply");
        assert_eq!(nfs_status(&[0; 7]), None);
    }

    /// The hand-made error results decode as the real types do.
    #[test]
    fn error_results_decode() {
        fn result_of(rec: &[u8]) -> Cursor<&[u8]> {
            // xid, REPLY, MSG_ACCEPTED, verf flavor, verf len, SUCCESS = 24 bytes.
            Cursor::new(&rec[24..])
        }
        let acces = nfsstat3::NFS3ERR_ACCES as u32;
        let r = nfs_error(7, 3, acces);
        assert!(matches!(
            LOOKUP3res::unpack(&mut result_of(&r)).unwrap().0,
            LOOKUP3res::Err((nfsstat3::NFS3ERR_ACCES, _))
        ));
        let r = nfs_error(7, 6, acces);
        let mut c = result_of(&r);
        assert!(matches!(
            READ3res::unpack(&mut c).unwrap().0,
            READ3res::Err(_)
        ));
        assert_eq!(c.position() as usize, r.len() - 24, "READ fully consumed");
        let r = nfs_error(7, 14, nfsstat3::NFS3ERR_ROFS as u32);
        let mut c = result_of(&r);
        assert!(matches!(
            RENAME3res::unpack(&mut c).unwrap().0,
            RENAME3res::Err((nfsstat3::NFS3ERR_ROFS, _))
        ));
        assert_eq!(c.position() as usize, r.len() - 24);
        let r = nfs_error(7, 15, acces);
        let mut c = result_of(&r);
        assert!(matches!(
            LINK3res::unpack(&mut c).unwrap().0,
            LINK3res::Err(_)
        ));
        assert_eq!(c.position() as usize, r.len() - 24);
        let r = nfs_error(7, 21, acces);
        assert!(matches!(
            COMMIT3res::unpack(&mut result_of(&r)).unwrap().0,
            COMMIT3res::Err(_)
        ));
        let d = auth_error(9, auth_stat::AUTH_TOOWEAK);
        let (m, _) = rpc_msg::unpack(&mut Cursor::new(&d[..])).unwrap();
        assert!(matches!(
            m.body,
            msg_body::REPLY(reply_body::MSG_DENIED(
                nfs3_server::nfs3_types::rpc::rejected_reply::AUTH_ERROR(auth_stat::AUTH_TOOWEAK)
            ))
        ));
    }

    #[tokio::test]
    async fn a_record_in_parts_is_one_padded_fragment() {
        let rec = Record::new(vec![1, 2, 3, 4, 0, 0, 0, 5], Bytes::from_static(b"hello"));
        let mut out = Vec::new();
        rec.write_to(&mut out).await.unwrap();
        assert_eq!(&out[..4], &(0x8000_0000u32 | 16).to_be_bytes());
        assert_eq!(&out[4..], b"\x01\x02\x03\x04\0\0\0\x05hello\0\0\0");
        let mut r = &out[..];
        assert_eq!(
            read_record(&mut r).await.unwrap().unwrap(),
            out[4..].to_vec()
        );
    }

    #[tokio::test]
    async fn records_are_capped_before_allocating() {
        let huge = (0x8000_0000u32 | 0x7fff_ffff).to_be_bytes();
        let err = read_record(&mut &huge[..]).await.unwrap_err();
        assert_eq!(err.kind(), std::io::ErrorKind::InvalidData);
        let two = [&[0, 0, 0, 2, 1, 2][..], &[0x80, 0, 0, 1, 3][..]].concat();
        assert_eq!(
            read_record(&mut &two[..]).await.unwrap(),
            Some(vec![1, 2, 3])
        );
        assert_eq!(read_record(&mut &[][..]).await.unwrap(), None);
    }
}
