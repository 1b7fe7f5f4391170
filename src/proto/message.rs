//! Requests and replies, one variant per operation.
//!
//! The server is path-based and stateless (like SFTP): every request names paths relative to
//! the export root, as `/`-separated UTF-8-agnostic bytes. A [`FileRef`] may also carry the
//! inode the client last saw there, so a file replaced behind the client's back is answered
//! [`Status::Stale`] instead of silently serving another file's bytes.

use serde::{Deserialize, Serialize};

/// First frame, client -> server.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Hello {
    pub version: u32,
    /// Feature bits the client understands (none defined yet).
    pub features: u64,
}

/// The server's answer to [`Hello`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Welcome {
    pub version: u32,
    pub features: u64,
    /// Stable identity of the export (hex). Keys the client's cache: the same path on two
    /// stores, or two exports of one store, never share cache entries or file handles.
    pub export_id: String,
    /// The server refuses every modifying request; the client reports it to NFS up front.
    pub read_only: bool,
}

/// The data part of the Welcome frame: facts that may differ from one connection to the
/// next. Older clients ignore frame data; older servers send none (then every field is
/// its default).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct WelcomeExt {
    /// Changes when the store machine reboots (a hash of its kernel boot id): UNSTABLE
    /// writes it had not synced are gone, so the NFS write verifier must change too.
    pub boot_id: u64,
}

/// A path under the export plus, optionally, the identity ([`Attr::ident`]) of the file the
/// client expects there.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileRef {
    /// Relative path; empty for the export root. Never absolute, never `..`.
    pub path: Vec<u8>,
    pub ident: Option<u64>,
}

impl FileRef {
    pub fn root() -> Self {
        Self {
            path: Vec::new(),
            ident: None,
        }
    }
}

/// Seconds and nanoseconds since the epoch.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Default, Serialize, Deserialize)]
pub struct Time {
    pub sec: i64,
    pub nsec: u32,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum FileKind {
    Regular,
    Directory,
    Symlink,
    BlockDevice,
    CharDevice,
    Socket,
    Fifo,
}

/// Attributes of one file, as `lstat` sees it on the store.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Attr {
    pub kind: FileKind,
    /// Permission bits only (07777).
    pub mode: u32,
    pub nlink: u32,
    pub uid: u32,
    pub gid: u32,
    pub size: u64,
    /// Bytes allocated on disk (sparse files use less than `size`).
    pub used: u64,
    pub rdev: (u32, u32),
    pub dev: u64,
    pub ino: u64,
    /// `ino` folded with the birth time: tells a recreated file from the one it replaced
    /// even when the file system reuses the inode number.
    pub ident: u64,
    pub atime: Time,
    pub mtime: Time,
    pub ctime: Time,
}

/// How to set a time in [`SetAttr`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum SetTime {
    ServerNow,
    To(Time),
}

/// Attribute changes; `None` leaves a field alone.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct SetAttr {
    pub mode: Option<u32>,
    pub uid: Option<u32>,
    pub gid: Option<u32>,
    pub size: Option<u64>,
    pub atime: Option<SetTime>,
    pub mtime: Option<SetTime>,
}

/// NFSv3's three ways to create a file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum CreateHow {
    /// Create or open (truncating as `attr.size` says).
    Unchecked(SetAttr),
    /// Fail with [`Status::Exist`] if the name exists.
    Guarded(SetAttr),
    /// Exclusive create with a verifier: a retransmitted CREATE with the same verifier
    /// succeeds on the file it made. The verifier is kept in the file's atime/mtime, as
    /// knfsd does, until the client's first SETATTR replaces them.
    Exclusive([u8; 8]),
}

/// Filesystem figures for FSSTAT: the real file system under the export.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct FsStat {
    pub total_bytes: u64,
    pub free_bytes: u64,
    pub avail_bytes: u64,
    pub total_files: u64,
    pub free_files: u64,
    pub avail_files: u64,
}

/// One directory entry, with its attributes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DirEntry {
    pub name: Vec<u8>,
    /// Stable position: a hash of the name. Listing resumes after it, so a cookie stays
    /// valid while the directory changes (entries are never skipped or repeated for
    /// entries that stay).
    pub cookie: u64,
    /// `None` if the entry vanished between listing and `lstat`.
    pub attr: Option<Attr>,
}

/// Client -> server.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Request {
    Getattr {
        file: FileRef,
    },
    Lookup {
        dir: FileRef,
        name: Vec<u8>,
    },
    /// `guard`: only apply if the file's ctime still equals it (NFSv3 SETATTR guard).
    Setattr {
        file: FileRef,
        set: SetAttr,
        guard: Option<Time>,
    },
    /// Reply data carries the bytes; at most `len` (capped by the server).
    Read {
        file: FileRef,
        offset: u64,
        len: u32,
    },
    /// Request data carries the bytes. `sync`: fdatasync before answering.
    Write {
        file: FileRef,
        offset: u64,
        sync: bool,
    },
    /// Flush a file's data to stable storage (NFS COMMIT).
    Commit {
        file: FileRef,
    },
    /// Like `Read`, but the reply leaves out zero pages and compresses the rest
    /// ([`Response::Packed`]). Only sent to servers that announce [`FEATURE_PACKED_READ`].
    ReadPacked {
        file: FileRef,
        offset: u64,
        len: u32,
    },
    Create {
        dir: FileRef,
        name: Vec<u8>,
        how: CreateHow,
    },
    Mkdir {
        dir: FileRef,
        name: Vec<u8>,
        mode: u32,
    },
    Symlink {
        dir: FileRef,
        name: Vec<u8>,
        target: Vec<u8>,
        mode: Option<u32>,
    },
    Readlink {
        file: FileRef,
    },
    Link {
        file: FileRef,
        dir: FileRef,
        name: Vec<u8>,
    },
    Remove {
        dir: FileRef,
        name: Vec<u8>,
    },
    Rmdir {
        dir: FileRef,
        name: Vec<u8>,
    },
    Rename {
        from_dir: FileRef,
        from_name: Vec<u8>,
        to_dir: FileRef,
        to_name: Vec<u8>,
    },
    /// Entries whose cookie is greater than `after`, in cookie order, at most `max`.
    Readdir {
        dir: FileRef,
        after: u64,
        max: u32,
    },
    Fsstat {
        file: FileRef,
    },
    /// How the file is best fetched ([`Response::Hint`]). Only sent to servers that
    /// announce [`FEATURE_HINTS`].
    Hint {
        file: FileRef,
    },
    /// The first 16 bytes of blake3 of every `block_size` block of the file
    /// ([`Response::BlockSums`]), so a client can keep the cached blocks that did not
    /// change. Only sent to servers that announce [`FEATURE_HINTS`].
    BlockSums {
        file: FileRef,
        block_size: u32,
    },
    /// Store an access profile (block numbers of `block_size`, in first-read order) in the
    /// file's hint, making the hint file if there is none. Answered with `Done`.
    SaveProfile {
        file: FileRef,
        block_size: u32,
        blocks: Vec<u32>,
    },
}

impl Request {
    /// True if repeating the request has the same effect as doing it once.
    pub fn is_idempotent(&self) -> bool {
        matches!(
            self,
            Self::Getattr { .. }
                | Self::Lookup { .. }
                | Self::Read { .. }
                | Self::ReadPacked { .. }
                | Self::Write { .. }
                | Self::Commit { .. }
                | Self::Readlink { .. }
                | Self::Readdir { .. }
                | Self::Fsstat { .. }
                | Self::Hint { .. }
                | Self::BlockSums { .. }
        )
    }

    /// True if the request changes the export (refused on a read-only export).
    pub fn modifies(&self) -> bool {
        !matches!(
            self,
            Self::Getattr { .. }
                | Self::Lookup { .. }
                | Self::Read { .. }
                | Self::ReadPacked { .. }
                | Self::Readlink { .. }
                | Self::Readdir { .. }
                | Self::Fsstat { .. }
                | Self::Hint { .. }
                | Self::BlockSums { .. }
        )
    }
}

/// Feature bit: the server answers [`Request::ReadPacked`].
pub const FEATURE_PACKED_READ: u64 = 1;
/// Feature bit: the server answers [`Request::Hint`].
pub const FEATURE_HINTS: u64 = 2;
/// Page size of [`Response::Packed`]'s zero map.
pub const PACK_PAGE: usize = 4096;

/// Server -> client, successful outcomes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Response {
    Attr(Attr),
    /// READ: the bytes are in the frame's data.
    Read {
        attr: Attr,
        eof: bool,
    },
    Write {
        attr: Attr,
        count: u32,
    },
    /// READPACKED: `len` bytes at the requested offset. `zero` has one bit per 4 KiB page
    /// (LSB first), set for pages that are all zeros and were left out; the frame's data is
    /// the other pages in order, zstd-compressed if `compressed`, raw otherwise.
    Packed {
        attr: Attr,
        eof: bool,
        len: u32,
        zero: Vec<u8>,
        compressed: bool,
    },
    /// COMMIT: nothing to report but success.
    Done,
    /// A namespace change: the new object (CREATE, MKDIR, SYMLINK, LINK) and the
    /// directories it changed, after the change (in request order), so the client can
    /// answer NFS's wcc data without another round trip.
    Changed {
        obj: Option<Attr>,
        dirs: Vec<Attr>,
    },
    Target(Vec<u8>),
    Entries {
        entries: Vec<DirEntry>,
        eof: bool,
    },
    FsStat(FsStat),
    /// The hint, for the file as `attr` describes it.
    Hint {
        attr: Attr,
        hint: Hint,
    },
    /// The sums, for the file as `attr` describes it.
    BlockSums {
        attr: Attr,
        sums: Vec<[u8; 16]>,
    },
}

/// How a file is best fetched.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum FetchPolicy {
    /// Blocks on demand, with read-ahead for sequential readers (disk images).
    Blocks,
    /// The whole file, compressed, from the first touch (VM memory state).
    Whole,
}

/// Where a [`Hint`] came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum HintSource {
    /// A current `.NAME.gvhint` beside the file.
    File,
    /// Made up by the server: the file's holes, block policy.
    Auto,
}

/// A file's metadata hint, valid for the attributes it was answered with.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Hint {
    pub source: HintSource,
    pub policy: FetchPolicy,
    pub immutable: bool,
    /// Sorted, disjoint (offset, length) runs that read as zeros: the client answers reads
    /// inside them without asking.
    pub zero_extents: Vec<(u64, u64)>,
    /// Recorded access order (block numbers of `block_size`), possibly empty.
    pub profile: Vec<u32>,
    /// Block size of `profile` (0 when there is none).
    pub block_size: u32,
}

impl Hint {
    /// True if `len` bytes at `offset` are all inside one zero extent.
    pub fn is_zero(&self, offset: u64, len: u64) -> bool {
        let i = self.zero_extents.partition_point(|&(s, _)| s <= offset);
        i > 0 && {
            let (s, l) = self.zero_extents[i - 1];
            offset + len <= s + l
        }
    }
}

/// Why a request failed. Mirrors the NFSv3 status codes the client can report.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
pub enum Status {
    #[error("operation not permitted")]
    Perm,
    #[error("no such file or directory")]
    NoEnt,
    #[error("I/O error")]
    Io,
    #[error("permission denied")]
    Access,
    #[error("file exists")]
    Exist,
    #[error("cross-device link")]
    XDev,
    #[error("not a directory")]
    NotDir,
    #[error("is a directory")]
    IsDir,
    #[error("invalid argument")]
    Inval,
    #[error("file too large")]
    FBig,
    #[error("no space left on device")]
    NoSpc,
    #[error("read-only export")]
    RoFs,
    #[error("too many links")]
    MLink,
    #[error("name too long")]
    NameTooLong,
    #[error("directory not empty")]
    NotEmpty,
    #[error("disk quota exceeded")]
    DQuot,
    #[error("file was replaced or removed on the store")]
    Stale,
    #[error("operation not supported")]
    NotSupp,
    #[error("attributes changed since the guard was read")]
    NotSync,
    #[error("path escapes the export")]
    Escape,
}

/// The control body of a Reply frame.
pub type Reply = Result<Response, Status>;

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn arb_ref() -> impl Strategy<Value = FileRef> {
        (
            proptest::collection::vec(any::<u8>(), 0..40),
            any::<Option<u64>>(),
        )
            .prop_map(|(path, ident)| FileRef { path, ident })
    }

    proptest! {
        #[test]
        fn requests_round_trip(file in arb_ref(), dir in arb_ref(), off in any::<u64>(),
                               len in any::<u32>(), name in proptest::collection::vec(any::<u8>(), 0..255),
                               mode in any::<Option<u32>>()) {
            let reqs = vec![
                Request::Read { file: file.clone(), offset: off, len },
                Request::Write { file: file.clone(), offset: off, sync: len % 2 == 0 },
                Request::Create { dir: dir.clone(), name: name.clone(),
                    how: CreateHow::Guarded(SetAttr { mode, ..Default::default() }) },
                Request::Rename { from_dir: dir.clone(), from_name: name.clone(), to_dir: file.clone(), to_name: name.clone() },
                Request::Readdir { dir, after: off, max: len },
            ];
            for r in reqs {
                let bytes = postcard::to_stdvec(&r).unwrap();
                let back: Request = postcard::from_bytes(&bytes).unwrap();
                prop_assert_eq!(back, r);
            }
        }

        #[test]
        fn garbage_control_is_an_error_not_a_panic(bytes in proptest::collection::vec(any::<u8>(), 0..200)) {
            let _ = postcard::from_bytes::<Request>(&bytes);
            let _ = postcard::from_bytes::<Reply>(&bytes);
        }
    }
}
