//! Entry points for the fuzz targets (`fuzz/`, cargo-fuzz) and their smoke test in
//! `cargo test` (issue 11, fuzzing): each takes arbitrary bytes, feeds them to one parser
//! that reads what a peer sent, and checks what that parser promises. A panic here is a
//! bug: a peer, a tenant or a file on the store could trigger it.
//!
//! Not an API: hidden from the docs, kept in the library so the targets reach private
//! parsers without widening their visibility.

use std::io::Cursor;
use std::net::SocketAddr;
use std::pin::pin;
use std::task::{Context, Poll, Waker};

use bytes::BytesMut;
use nfs3_server::nfs3_types::nfs3::{self as n, *};
use nfs3_server::nfs3_types::xdr_codec::Unpack;

use crate::nfs::access::AccessPolicy;
use crate::nfs::gate::{Route, route};
use crate::nfs::procs::nfsproc::*;
use crate::nfs::record::{MAX_RECORD, read_record};
use crate::proto::codec::{decode_frame, encode_frame};
use crate::proto::message::{Hello, Reply, Request, Welcome};
use crate::proto::pack::{Packed, pack, unpack as unpack_packed};
use crate::server::hint::HintFile;

/// One fuzz target's entry point.
pub type Target = fn(&[u8]);

/// The names `cargo fuzz run` knows, with their entry points.
pub const TARGETS: [(&str, Target); 6] = [
    ("frame", frame),
    ("unpack", unpack),
    ("hint", hint),
    ("rpc", rpc),
    ("authorized_keys", authorized_keys),
    ("exec_command", exec_command),
];

/// Tunnel frames as the client and the server read them: the framing, then the control
/// part as each message type. A frame that decodes re-encodes to the same bytes.
pub fn frame(data: &[u8]) {
    let mut buf = BytesMut::from(data);
    while let Ok(Ok(f)) = decode_frame(&mut buf) {
        let mut again = BytesMut::new();
        encode_frame(&mut again, f.kind, f.id, &f.control, &f.data);
        let consumed = data.len() - buf.len();
        assert!(
            again.len() <= consumed,
            "a frame re-encodes longer than it was"
        );
        let _ = postcard::from_bytes::<Request>(&f.control);
        let _ = postcard::from_bytes::<Reply>(&f.control);
        let _ = postcard::from_bytes::<Hello>(&f.control);
        let _ = postcard::from_bytes::<Welcome>(&f.control);
    }
}

/// A packed read reply: `asked:u32 len:u32 compressed:u8 zero_len:u8 zero… payload…`.
/// Unpacking never returns more than was asked, and exactly `len` bytes when it succeeds.
pub fn unpack(data: &[u8]) {
    if data.len() < 10 {
        return;
    }
    let asked = u32::from_le_bytes(data[0..4].try_into().unwrap()) as usize % (8 << 20);
    let len = u32::from_le_bytes(data[4..8].try_into().unwrap());
    let compressed = data[8] & 1 == 1;
    let zl = (data[9] as usize).min(data.len() - 10);
    let p = Packed {
        len,
        zero: data[10..10 + zl].to_vec(),
        compressed,
        payload: data[10 + zl..].to_vec(),
    };
    if let Ok(out) = unpack_packed(&p, asked) {
        assert!(
            out.len() <= asked,
            "unpacked {} for {asked} asked",
            out.len()
        );
        assert_eq!(out.len(), len as usize);
    }
    // And what we pack, we unpack.
    let raw = &data[10..];
    assert_eq!(
        unpack_packed(&pack(raw), raw.len()).as_deref(),
        Ok(raw),
        "pack/unpack round trip"
    );
}

/// A hint file as the server reads it from the store (any tenant can write one).
pub fn hint(data: &[u8]) {
    if let Ok(h) = HintFile::decode(data) {
        let _ = h.to_hint();
        assert_eq!(HintFile::decode(&h.encode()).as_ref(), Ok(&h));
    }
}

/// Bytes from an NFS client through the gate's parsers: record marking (never larger
/// than [`MAX_RECORD`]), the RPC header and credential with the default policy, and the
/// arguments of the procedures the gate checks or answers itself.
pub fn rpc(data: &[u8]) {
    let policy = AccessPolicy::default();
    let peer: SocketAddr = "127.0.0.1:700".parse().unwrap();
    let mut input = data;
    let mut warned = false;
    loop {
        let Some(Ok(Some(body))) = now(read_record(&mut input)) else {
            return;
        };
        assert!(body.len() <= MAX_RECORD);
        let Route::Call { proc_, args_at, .. } = route(&policy, &body, peer, false, &mut warned)
        else {
            continue;
        };
        let mut c = Cursor::new(&body[args_at..]);
        match proc_ {
            SETATTR => drop(SETATTR3args::unpack(&mut c)),
            CREATE => drop(CREATE3args::unpack(&mut c)),
            MKDIR => drop(MKDIR3args::unpack(&mut c)),
            MKNOD => drop(MKNOD3args::unpack(&mut c)),
            REMOVE => drop(REMOVE3args::unpack(&mut c)),
            RMDIR => drop(RMDIR3args::unpack(&mut c)),
            LINK => drop(LINK3args::unpack(&mut c)),
            READDIR => drop(READDIR3args::unpack(&mut c)),
            ACCESS => drop(ACCESS3args::unpack(&mut c)),
            FSSTAT => drop(FSSTAT3args::unpack(&mut c)),
            RENAME => drop(RENAME3args::unpack(&mut c)),
            WRITE => drop(WRITE3args::unpack(&mut c)),
            _ => {
                if let Ok((_, _)) = nfs_fh3::unpack(&mut c) {
                    let _ = n::sattr3::unpack(&mut c);
                }
            }
        }
    }
}

/// An `authorized_keys` file of the embedded SSH server (the admin's, but a typo must
/// not take the server down).
pub fn authorized_keys(data: &[u8]) {
    let text = String::from_utf8_lossy(data);
    let (grants, errors) = crate::server::keys::parse_authorized_keys_lenient(&text);
    for g in &grants {
        assert!(g.export.is_absolute(), "a grant's export is canonical");
    }
    assert!(grants.len() + errors.len() <= text.lines().count());
}

/// The command a logged-in SSH client asks the embedded server to run.
pub fn exec_command(data: &[u8]) {
    if let Ok((export, read_only)) = crate::server::listen::requested_export(data) {
        // Only `… serve [--stdio] --export DIR [--read-only]` is ever accepted, as the
        // shell would split it.
        let text = std::str::from_utf8(data).expect("accepted commands are UTF-8");
        let words = shell_words::split(text).expect("accepted commands split");
        assert_eq!(words.get(1).map(String::as_str), Some("serve"), "{text:?}");
        // (Word 0, the program, is whatever the client wrote: ignored.)
        let args = &words[2..];
        assert!(args.iter().any(|w| w == "--export"), "{text:?}");
        assert_eq!(
            read_only,
            args.iter().any(|w| w == "--read-only"),
            "{text:?}"
        );
        assert!(!export.as_os_str().is_empty(), "{text:?}");
        assert!(
            args.iter().any(|w| std::path::Path::new(w) == export),
            "{text:?}"
        );
    }
}

/// Well-formed inputs for `target`, from which fuzzing starts (its seed corpus): what the
/// real peers send.
pub fn seeds(target: &str) -> Vec<Vec<u8>> {
    use crate::proto::codec::FrameKind;
    use crate::proto::message::FileRef;
    use nfs3_server::nfs3_types::rpc::{
        auth_flavor, auth_unix, call_body, msg_body, opaque_auth, rpc_msg,
    };
    use nfs3_server::nfs3_types::xdr_codec::{Opaque, Pack};
    match target {
        "frame" => {
            let file = FileRef { path: b"vm/disk.img".to_vec(), ident: Some(7) };
            let reqs = [
                Request::Read { file: file.clone(), offset: 1 << 20, len: 262_144 },
                Request::ReadPacked { file: file.clone(), offset: 0, len: 262_144 },
                Request::Write { file, offset: 4096, sync: true },
            ];
            reqs.iter()
                .enumerate()
                .map(|(i, r)| {
                    let mut out = BytesMut::new();
                    let ctl = postcard::to_stdvec(r).unwrap();
                    encode_frame(&mut out, FrameKind::Request, i as u64, &ctl, b"data");
                    out.to_vec()
                })
                .collect()
        }
        "unpack" => {
            let mut page = vec![0u8; 3 * 4096];
            page[5000..5100].fill(7);
            let p = pack(&page);
            let mut out = (page.len() as u32).to_le_bytes().to_vec();
            out.extend(p.len.to_le_bytes());
            out.push(p.compressed as u8);
            out.push(p.zero.len() as u8);
            out.extend(&p.zero);
            out.extend(&p.payload);
            vec![out]
        }
        "hint" => {
            let h = HintFile {
                size: 1 << 20,
                mtime: Default::default(),
                ctime: Default::default(),
                ident: 42,
                policy: crate::proto::FetchPolicy::Blocks,
                immutable: false,
                zero_extents: vec![(0, 4096), (65536, 8192)],
                block_size: 262_144,
                block_sums: vec![[1; 16], [2; 16], [3; 16], [4; 16]],
                profile: vec![0, 2, 1],
            };
            vec![h.encode()]
        }
        "rpc" => {
            let mut cred = Vec::new();
            auth_unix { stamp: 1, machinename: Opaque::owned(b"host".to_vec()), uid: 0, gid: 0, gids: vec![0, 27] }
                .pack(&mut cred)
                .unwrap();
            let call = |xid: u32, prog: u32, proc_: u32, args: &[u8]| {
                let msg = rpc_msg {
                    xid,
                    body: msg_body::CALL(call_body {
                        rpcvers: 2,
                        prog,
                        vers: 3,
                        proc: proc_,
                        cred: opaque_auth { flavor: auth_flavor::AUTH_UNIX, body: Opaque::owned(cred.clone()) },
                        verf: opaque_auth::default(),
                    }),
                };
                let mut body = Vec::new();
                msg.pack(&mut body).unwrap();
                body.extend_from_slice(args);
                crate::nfs::record::frame_record(&body)
            };
            // An 8-byte handle, a name, then attributes / offsets.
            let mut fh = Vec::new();
            nfs_fh3 { data: Opaque::owned(vec![0, 0, 0, 0, 0, 0, 0, 1]) }.pack(&mut fh).unwrap();
            let mut dirop = fh.clone();
            n::filename3(Opaque::owned(b"disk.img".to_vec())).pack(&mut dirop).unwrap();
            let mut write = fh.clone();
            write.extend([0, 0, 0, 0, 0, 0, 16, 0, 0, 0, 0, 4, 0, 0, 0, 2, 0, 0, 0, 4, 1, 2, 3, 4]);
            vec![
                call(1, n::PROGRAM, GETATTR, &fh),
                call(2, n::PROGRAM, LOOKUP, &dirop),
                call(3, n::PROGRAM, REMOVE, &dirop),
                [call(4, n::PROGRAM, WRITE, &write), call(5, n::PROGRAM, ACCESS, &[fh.clone(), vec![0, 0, 0, 63]].concat())].concat(),
                call(6, nfs3_server::nfs3_types::mount::PROGRAM, 1, &[0, 0, 0, 1, b'/', 0, 0, 0]),
            ]
        }
        "authorized_keys" => vec![
            b"restrict,command=\"gridvfs-server serve --stdio --export /srv/images\" ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOMqqnkVzrm0SdG6UOoqKLsabgH5C9okWi0dh2l9GKJl alice@host\n# comment\n".to_vec(),
        ],
        "exec_command" => vec![
            b"gridvfs-server serve --stdio --export /srv/images".to_vec(),
            b"gridvfs-server serve --stdio --export '/srv/my images' --read-only".to_vec(),
        ],
        _ => Vec::new(),
    }
}

/// Poll a future that never waits (it reads from a byte slice) to its end.
fn now<F: Future>(f: F) -> Option<F::Output> {
    let mut f = pin!(f);
    match f.as_mut().poll(&mut Context::from_waker(Waker::noop())) {
        Poll::Ready(v) => Some(v),
        Poll::Pending => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// CI's smoke for the fuzz targets: each entry point on its kept corpus
    /// (`fuzz/corpus/TARGET`, where long runs leave what they found) and on random and
    /// mutated inputs. The long runs are `cargo fuzz run TARGET` (see fuzz/README.md).
    #[test]
    fn fuzz_targets_survive_their_corpus_and_random_inputs() {
        let corpus = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/corpus");
        let mut x = 0x9E37_79B9_7F4A_7C15u64;
        let mut rand = move || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x
        };
        for (name, f) in TARGETS {
            let mut seeds = seeds(name);
            assert!(!seeds.is_empty(), "{name} has seeds");
            if let Ok(dir) = std::fs::read_dir(corpus.join(name)) {
                for e in dir.flatten() {
                    seeds.push(std::fs::read(e.path()).unwrap());
                }
            }
            for s in &seeds {
                f(s);
            }
            seeds.push(Vec::new());
            for _ in 0..2000 {
                let base = &seeds[rand() as usize % seeds.len()];
                let mut input = base.clone();
                for _ in 0..1 + rand() % 8 {
                    let at = if input.is_empty() {
                        0
                    } else {
                        rand() as usize % input.len()
                    };
                    match rand() % 3 {
                        0 if !input.is_empty() => input[at] = rand() as u8,
                        1 => input.insert(at, rand() as u8),
                        _ => input.truncate(at),
                    }
                }
                if input.len() < 64 {
                    input.extend((0..rand() % 64).map(|_| rand() as u8));
                }
                f(&input);
            }
        }
    }

    /// The seeds start each target's corpus: `cargo test --lib write_seed_corpus -- --ignored`.
    #[test]
    #[ignore]
    fn write_seed_corpus() {
        let corpus = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/corpus");
        for (name, _) in TARGETS {
            let dir = corpus.join(name);
            std::fs::create_dir_all(&dir).unwrap();
            for (i, s) in seeds(name).iter().enumerate() {
                std::fs::write(dir.join(format!("seed-{i}")), s).unwrap();
            }
        }
    }

    /// Each seed is accepted by its parser (else fuzzing would start from garbage).
    #[test]
    fn seeds_parse() {
        let mut b = BytesMut::from(&seeds("frame")[0][..]);
        assert!(matches!(decode_frame(&mut b), Ok(Ok(_))));
        assert!(HintFile::decode(&seeds("hint")[0]).is_ok());
        for s in seeds("exec_command") {
            assert!(crate::server::listen::requested_export(&s).is_ok());
        }
        let policy = AccessPolicy::default();
        let peer: SocketAddr = "127.0.0.1:700".parse().unwrap();
        let rec = &seeds("rpc")[0];
        let body = now(read_record(&mut &rec[..])).unwrap().unwrap().unwrap();
        assert!(matches!(
            route(&policy, &body, peer, false, &mut false),
            Route::Call { proc_: GETATTR, .. }
        ));
    }
}
