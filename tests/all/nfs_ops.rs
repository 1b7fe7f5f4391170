//! Every NFSv3 operation through the proxies with `nfs3_client`, and their error statuses.

use std::os::unix::fs::{MetadataExt, PermissionsExt};

use nfs3_client::nfs3_types::nfs3::*;

use crate::harness::*;

#[tokio::test]
async fn create_write_read_and_attributes() {
    let d = dirs();
    let client = ClientProc::start(&d.export, &d.cache, 0, &[]);
    let mut nfs = Nfs::mount(client.port).await;
    let root = nfs.root.clone();

    // CREATE (unchecked, with mode), WRITE unstable + COMMIT, READ back.
    let f = nfs
        .create(&root, "f", createhow3::UNCHECKED(attrs(Some(0o640))))
        .await
        .unwrap();
    let data = noise(1, 300_000);
    let w = nfs.write(&f, 0, &data, stable_how::UNSTABLE).await.unwrap();
    assert_eq!(w.count, data.len() as u32);
    nfs.commit(&f).await.unwrap();
    assert_eq!(nfs.read_all(&f, 65536).await.unwrap(), data);
    assert_eq!(std::fs::read(d.export.join("f")).unwrap(), data);
    let meta = std::fs::metadata(d.export.join("f")).unwrap();
    assert_eq!(meta.permissions().mode() & 0o7777, 0o640);

    // FILE_SYNC write is reported as such.
    let w = nfs
        .write(&f, 10, b"sync", stable_how::FILE_SYNC)
        .await
        .unwrap();
    assert_eq!(w.committed, stable_how::FILE_SYNC);

    // chmod 0 gives mode 0; chown; truncate; utimes.
    nfs.setattr(&f, attrs(Some(0)), None).await.unwrap();
    assert_eq!(nfs.getattr(&f).await.unwrap().mode, 0);
    assert_eq!(
        std::fs::metadata(d.export.join("f"))
            .unwrap()
            .permissions()
            .mode()
            & 0o7777,
        0
    );
    let chown = sattr3 {
        uid: Nfs3Option::Some(4321),
        gid: Nfs3Option::Some(1234),
        ..Default::default()
    };
    nfs.setattr(&f, chown, None).await.unwrap();
    let m = std::fs::metadata(d.export.join("f")).unwrap();
    assert_eq!(
        (m.uid(), m.gid()),
        (4321, 1234),
        "chown honoured (tests run as root)"
    );
    nfs.setattr(
        &f,
        sattr3 {
            size: Nfs3Option::Some(1000),
            ..Default::default()
        },
        None,
    )
    .await
    .unwrap();
    assert_eq!(nfs.getattr(&f).await.unwrap().size, 1000);
    let when = nfstime3 {
        seconds: 1_000_000_000,
        nseconds: 5,
    };
    let times = sattr3 {
        mtime: set_mtime::SET_TO_CLIENT_TIME(when),
        atime: set_atime::SET_TO_CLIENT_TIME(when),
        ..Default::default()
    };
    nfs.setattr(&f, times, None).await.unwrap();
    let a = nfs.getattr(&f).await.unwrap();
    assert_eq!(
        (a.mtime.seconds, a.mtime.nseconds, a.atime.seconds),
        (1_000_000_000, 5, 1_000_000_000)
    );
    assert_eq!(
        std::fs::metadata(d.export.join("f")).unwrap().mtime(),
        1_000_000_000
    );

    // SETATTR guard: a stale ctime is refused with NOT_SYNC and nothing changes.
    let stale = nfstime3 {
        seconds: 1,
        nseconds: 0,
    };
    assert_eq!(
        nfs.setattr(&f, attrs(Some(0o600)), Some(stale)).await,
        Err(nfsstat3::NFS3ERR_NOT_SYNC)
    );
    assert_eq!(nfs.getattr(&f).await.unwrap().mode, 0);
    let ctime = nfs.getattr(&f).await.unwrap().ctime;
    nfs.setattr(&f, attrs(Some(0o600)), Some(ctime))
        .await
        .unwrap();
    assert_eq!(nfs.getattr(&f).await.unwrap().mode, 0o600);
}

#[tokio::test]
async fn namespace_operations() {
    let d = dirs();
    let client = ClientProc::start(&d.export, &d.cache, 0, &[]);
    let mut nfs = Nfs::mount(client.port).await;
    let root = nfs.root.clone();

    // MKDIR honours the mode exactly, including unusual ones.
    let dir = nfs.mkdir(&root, "d", Some(0o750)).await.unwrap();
    assert_eq!(
        std::fs::metadata(d.export.join("d"))
            .unwrap()
            .permissions()
            .mode()
            & 0o7777,
        0o750
    );
    let odd = nfs.mkdir(&root, "odd", Some(0o1703)).await.unwrap();
    assert_eq!(nfs.getattr(&odd).await.unwrap().mode, 0o1703);

    // GUARDED create refuses an existing name; EXCLUSIVE is idempotent for one verifier.
    let g = nfs
        .create(&dir, "g", createhow3::GUARDED(attrs(Some(0o600))))
        .await
        .unwrap();
    assert_eq!(
        nfs.create(&dir, "g", createhow3::GUARDED(attrs(None)))
            .await,
        Err(nfsstat3::NFS3ERR_EXIST)
    );
    let v = createverf3([1, 2, 3, 4, 5, 6, 7, 8]);
    let x1 = nfs
        .create(&dir, "x", createhow3::EXCLUSIVE(v))
        .await
        .unwrap();
    let x2 = nfs
        .create(&dir, "x", createhow3::EXCLUSIVE(v))
        .await
        .unwrap();
    assert_eq!(x1, x2, "retransmitted exclusive create finds its own file");
    let other = createverf3([9; 8]);
    assert_eq!(
        nfs.create(&dir, "x", createhow3::EXCLUSIVE(other)).await,
        Err(nfsstat3::NFS3ERR_EXIST)
    );

    // SYMLINK / READLINK.
    let s = nfs.symlink(&dir, "s", "../target/path").await.unwrap();
    assert_eq!(nfs.readlink(&s).await.unwrap(), b"../target/path");
    assert_eq!(nfs.getattr(&s).await.unwrap().type_, ftype3::NF3LNK);

    // LINK: two names, one file.
    nfs.write(&g, 0, b"linked", stable_how::FILE_SYNC)
        .await
        .unwrap();
    nfs.link(&g, &root, "hard").await.unwrap();
    assert_eq!(std::fs::read(d.export.join("hard")).unwrap(), b"linked");
    assert_eq!(nfs.getattr(&g).await.unwrap().nlink, 2);
    let hard = nfs.lookup(&root, "hard").await.unwrap();
    assert_eq!(
        nfs.getattr(&hard).await.unwrap().fileid,
        nfs.getattr(&g).await.unwrap().fileid
    );

    // RENAME over an existing name; the moved file's handle stays valid.
    let t = nfs
        .create(&dir, "t", createhow3::UNCHECKED(attrs(None)))
        .await
        .unwrap();
    nfs.write(&t, 0, b"new", stable_how::FILE_SYNC)
        .await
        .unwrap();
    nfs.rename(&dir, "t", &dir, "g").await.unwrap();
    assert_eq!(std::fs::read(d.export.join("d/g")).unwrap(), b"new");
    assert_eq!(nfs.read_all(&t, 100).await.unwrap(), b"new");
    // Renaming a directory keeps handles beneath it valid.
    nfs.rename(&root, "d", &root, "d2").await.unwrap();
    assert_eq!(nfs.read_all(&t, 100).await.unwrap(), b"new");
    assert!(d.export.join("d2/g").exists());

    // REMOVE / RMDIR and their errors.
    assert_eq!(
        nfs.rmdir(&root, "d2").await,
        Err(nfsstat3::NFS3ERR_NOTEMPTY)
    );
    assert_eq!(nfs.remove(&root, "odd").await, Err(nfsstat3::NFS3ERR_ISDIR));
    assert_eq!(
        nfs.rmdir(&root, "hard").await,
        Err(nfsstat3::NFS3ERR_NOTDIR)
    );
    nfs.remove(&root, "hard").await.unwrap();
    assert_eq!(
        nfs.lookup(&root, "hard").await,
        Err(nfsstat3::NFS3ERR_NOENT)
    );
    assert_eq!(
        nfs.getattr(&hard).await.err(),
        Some(nfsstat3::NFS3ERR_STALE),
        "removed file's handle is stale"
    );
    nfs.rmdir(&root, "odd").await.unwrap();
    assert!(!d.export.join("odd").exists());

    // Other error statuses.
    assert_eq!(
        nfs.lookup(&root, "missing").await,
        Err(nfsstat3::NFS3ERR_NOENT)
    );
    let file_fh = nfs.lookup(&dir, "x").await.unwrap();
    assert_eq!(
        nfs.lookup(&file_fh, "y").await,
        Err(nfsstat3::NFS3ERR_NOTDIR)
    );
    let long = "n".repeat(300);
    assert_eq!(
        nfs.create(&root, &long, createhow3::UNCHECKED(attrs(None)))
            .await,
        Err(nfsstat3::NFS3ERR_NAMETOOLONG)
    );
    assert_eq!(
        nfs.mkdir(&root, "d2", None).await,
        Err(nfsstat3::NFS3ERR_EXIST)
    );
    let mut bad = root.clone();
    bad.data = vec![0u8; 5].into();
    assert_eq!(
        nfs.getattr(&bad).await.err(),
        Some(nfsstat3::NFS3ERR_BADHANDLE)
    );
    // A handle from an older generation (another cache directory) is stale.
    bad.data = vec![0u8; 16].into();
    assert_eq!(nfs.getattr(&bad).await.err(), Some(nfsstat3::NFS3ERR_STALE));
    // An id that was never handed out is stale too, never another file.
    let mut unknown = root.data.to_vec();
    unknown[8..].copy_from_slice(&u64::MAX.to_ne_bytes());
    bad.data = unknown.into();
    assert_eq!(nfs.getattr(&bad).await.err(), Some(nfsstat3::NFS3ERR_STALE));
    // A file replaced behind the proxy's back: the old handle is stale, not the new file.
    std::fs::remove_file(d.export.join("d2/x")).unwrap();
    std::fs::write(d.export.join("d2/x"), b"impostor").unwrap();
    tokio::time::sleep(std::time::Duration::from_millis(1100)).await; // attribute cache
    assert_eq!(
        nfs.read(&file_fh, 0, 10).await,
        Err(nfsstat3::NFS3ERR_STALE)
    );
}

#[tokio::test]
async fn fsstat_is_the_real_file_system_and_fsinfo_advertises_1mib() {
    let d = dirs();
    let client = ClientProc::start(&d.export, &d.cache, 0, &[]);
    let mut nfs = Nfs::mount(client.port).await;
    let s = nfs.fsstat().await.unwrap();
    let v = rustix::fs::statvfs(&d.export).unwrap();
    assert_eq!(s.tbytes, v.f_blocks * v.f_frsize);
    assert_eq!(s.tfiles, v.f_files);
    let slack = 256 * 1024 * 1024; // other processes write to this disk meanwhile
    assert!(
        s.fbytes.abs_diff(v.f_bfree * v.f_frsize) < slack,
        "free bytes {} vs {}",
        s.fbytes,
        v.f_bfree * v.f_frsize
    );
    assert_eq!(s.invarsec, 0);
    let i = nfs.fsinfo().await.unwrap();
    assert_eq!(
        (i.rtmax, i.rtpref, i.wtmax, i.wtpref),
        (1 << 20, 1 << 20, 1 << 20, 1 << 20)
    );
}

#[tokio::test]
async fn ten_thousand_entry_directory_lists_completely() {
    let d = dirs();
    let big = d.export.join("big");
    std::fs::create_dir(&big).unwrap();
    for i in 0..10_000 {
        std::fs::write(big.join(format!("file-{i:05}")), b"").unwrap();
    }
    let client = ClientProc::start(&d.export, &d.cache, 0, &[]);
    let mut nfs = Nfs::mount(client.port).await;
    let dir = nfs.lookup(&nfs.root.clone(), "big").await.unwrap();

    let mut expected: Vec<Vec<u8>> = (0..10_000)
        .map(|i| format!("file-{i:05}").into_bytes())
        .collect();
    expected.push(b".".to_vec());
    expected.push(b"..".to_vec());
    expected.sort();

    // Small pages force many cookie round trips.
    for count in [4096u32, 65536] {
        let mut names = nfs.readdir_names(&dir, count).await.unwrap();
        let n = names.len();
        names.sort();
        names.dedup();
        assert_eq!(names.len(), n, "READDIR returned duplicates");
        assert_eq!(names, expected, "READDIR count={count}");
    }
    for maxcount in [8192u32, 1 << 20] {
        let entries = nfs.readdirplus_names(&dir, maxcount).await.unwrap();
        let mut names: Vec<Vec<u8>> = entries.iter().map(|e| e.0.clone()).collect();
        let n = names.len();
        names.sort();
        names.dedup();
        assert_eq!(names.len(), n, "READDIRPLUS returned duplicates");
        assert_eq!(names, expected, "READDIRPLUS maxcount={maxcount}");
        assert!(
            entries
                .iter()
                .filter(|e| e.0 != b"..")
                .all(|e| e.1.is_some()),
            "every entry has a handle"
        );
    }

    // Cookies stay valid while the directory changes (seekdir/telldir across calls):
    // resuming after an entry continues exactly after it, even once entries are removed.
    let entries = nfs.readdirplus_names(&dir, 1 << 20).await.unwrap();
    let (mid_name, _, mid_cookie) = entries[5000].clone();
    for e in &entries[100..200] {
        std::fs::remove_file(big.join(std::str::from_utf8(&e.0).unwrap())).unwrap();
    }
    let r = nfs
        .c
        .readdir(&READDIR3args {
            dir: dir.clone(),
            cookie: mid_cookie,
            cookieverf: cookieverf3::default(),
            count: 4096,
        })
        .await
        .unwrap();
    let first = match r {
        Nfs3Result::Ok(ok) => ok.reply.entries.0[0].name.0.to_vec(),
        Nfs3Result::Err((s, _)) => panic!("resume READDIR: {s:?}"),
    };
    assert_eq!(
        first,
        entries[5001].0,
        "resume after {:?}",
        String::from_utf8_lossy(&mid_name)
    );
}

#[tokio::test]
async fn one_gib_sparse_file_round_trip() {
    const GIB: u64 = 1 << 30;
    let d = dirs();
    let client = ClientProc::start(&d.export, &d.cache, 0, &[]);
    let mut nfs = Nfs::mount(client.port).await;
    let root = nfs.root.clone();
    let f = nfs
        .create(&root, "disk.img", createhow3::GUARDED(attrs(Some(0o644))))
        .await
        .unwrap();
    nfs.setattr(
        &f,
        sattr3 {
            size: Nfs3Option::Some(GIB),
            ..Default::default()
        },
        None,
    )
    .await
    .unwrap();
    // Data extents scattered through the file; the rest stays a hole.
    let mut written = Vec::new();
    for k in 0..24u64 {
        let off = k * (GIB / 24) + (k * 4096) % 65536;
        let data = noise(k, 1 << 20);
        nfs.write(&f, off, &data, stable_how::UNSTABLE)
            .await
            .unwrap();
        written.push((off, data));
    }
    nfs.commit(&f).await.unwrap();
    assert_eq!(nfs.getattr(&f).await.unwrap().size, GIB);

    // Read the whole GiB back through four connections at once and hash it.
    let port = client.port;
    let mut tasks = Vec::new();
    for part in 0..4u64 {
        let fh = f.clone();
        tasks.push(tokio::spawn(async move {
            let mut nfs = Nfs::mount(port).await;
            let mut h = blake3::Hasher::new();
            let (start, end) = (part * GIB / 4, (part + 1) * GIB / 4);
            let mut off = start;
            while off < end {
                let (d, _) = nfs.read(&fh, off, 1 << 20).await.unwrap();
                assert!(!d.is_empty(), "short read at {off}");
                h.update(&d);
                off += d.len() as u64;
            }
            h.finalize()
        }));
    }
    let mut got = Vec::new();
    for t in tasks {
        got.push(t.await.unwrap());
    }
    let local = std::fs::File::open(d.export.join("disk.img")).unwrap();
    let mut want = Vec::new();
    for part in 0..4u64 {
        let mut h = blake3::Hasher::new();
        let mut buf = vec![0u8; 1 << 20];
        let (start, end) = (part * GIB / 4, (part + 1) * GIB / 4);
        let mut off = start;
        while off < end {
            std::os::unix::fs::FileExt::read_exact_at(&local, &mut buf, off).unwrap();
            h.update(&buf);
            off += buf.len() as u64;
        }
        want.push(h.finalize());
    }
    assert_eq!(got, want);
    // The file on the store is sparse: the holes were never written.
    let used = std::fs::metadata(d.export.join("disk.img"))
        .unwrap()
        .blocks()
        * 512;
    assert!(
        used < 64 << 20,
        "store file uses {used} bytes; holes were filled"
    );
    for (off, data) in written.iter().take(3) {
        let mut buf = vec![0u8; data.len()];
        std::os::unix::fs::FileExt::read_exact_at(&local, &mut buf, *off).unwrap();
        assert_eq!(&buf, data);
    }
}

#[tokio::test]
async fn store_side_runs_as_an_ordinary_user_with_owner_override() {
    use std::os::unix::fs::chown;
    let d = dirs();
    // The store side as `nobody`: what a real deployment is (no root on the store).
    std::fs::set_permissions(d.tmp.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    chown(&d.export, Some(65534), Some(65534)).unwrap();
    std::fs::write(d.export.join("roots"), b"root's file").unwrap();
    let remote = format!(
        "exec:setpriv --reuid=65534 --regid=65534 --clear-groups {} serve --stdio --export {}",
        bin("gridvfs-server").display(),
        d.export.display()
    );
    let client = ClientProc::start_remote(&remote, &d.export, &d.cache, 0, &[]);
    let mut nfs = Nfs::mount(client.port).await;
    let root = nfs.root.clone();

    // `cp` of a 0444 file: CREATE with mode 0444, then WRITEs. The owner may write.
    let f = nfs
        .create(&root, "ro", createhow3::GUARDED(attrs(Some(0o444))))
        .await
        .unwrap();
    nfs.write(&f, 0, b"written after create", stable_how::FILE_SYNC)
        .await
        .unwrap();
    nfs.setattr(
        &f,
        sattr3 {
            size: Nfs3Option::Some(7),
            ..Default::default()
        },
        None,
    )
    .await
    .unwrap();
    nfs.commit(&f).await.unwrap();
    let meta = std::fs::metadata(d.export.join("ro")).unwrap();
    assert_eq!(std::fs::read(d.export.join("ro")).unwrap(), b"written");
    assert_eq!(
        meta.permissions().mode() & 0o7777,
        0o444,
        "mode restored after the override"
    );
    assert_eq!(meta.uid(), 65534);
    // chmod 0 and still writable by its owner (as with knfsd).
    nfs.setattr(&f, attrs(Some(0)), None).await.unwrap();
    nfs.write(&f, 7, b"!", stable_how::FILE_SYNC).await.unwrap();
    assert_eq!(std::fs::read(d.export.join("ro")).unwrap(), b"written!");
    assert_eq!(
        std::fs::metadata(d.export.join("ro"))
            .unwrap()
            .permissions()
            .mode()
            & 0o7777,
        0
    );

    // Someone else's file is not ours to override.
    let other = nfs.lookup(&root, "roots").await.unwrap();
    assert_eq!(
        nfs.write(&other, 0, b"x", stable_how::FILE_SYNC)
            .await
            .err(),
        Some(nfsstat3::NFS3ERR_ACCES)
    );
    assert_eq!(
        std::fs::read(d.export.join("roots")).unwrap(),
        b"root's file"
    );
    assert_eq!(
        nfs.setattr(&other, attrs(Some(0o777)), None).await,
        Err(nfsstat3::NFS3ERR_PERM)
    );
}

#[tokio::test]
async fn oversized_reads_are_clamped_and_setgid_directories_keep_their_group_bit() {
    let d = dirs();
    std::fs::write(d.export.join("big"), noise(5, 3 << 20)).unwrap();
    std::fs::create_dir(d.export.join("proj")).unwrap();
    std::fs::set_permissions(
        d.export.join("proj"),
        std::fs::Permissions::from_mode(0o2775),
    )
    .unwrap();
    let client = ClientProc::start(&d.export, &d.cache, 0, &[]);
    let mut nfs = Nfs::mount(client.port).await;
    let root = nfs.root.clone();
    let big = nfs.lookup(&root, "big").await.unwrap();
    // Past rtmax: a short read (the client asks again), never a broken connection.
    let (data, eof) = nfs.read(&big, 0, 8 << 20).await.unwrap();
    assert_eq!(data.len(), 1 << 20);
    assert!(!eof);
    assert_eq!(data, noise(5, 3 << 20)[..1 << 20]);
    assert_eq!(
        nfs.getattr(&big).await.unwrap().size,
        3 << 20,
        "connection still good"
    );

    let proj = nfs.lookup(&root, "proj").await.unwrap();
    let sub = nfs.mkdir(&proj, "sub", Some(0o755)).await.unwrap();
    assert_eq!(
        nfs.getattr(&sub).await.unwrap().mode,
        0o2755,
        "inherited setgid kept"
    );
    // Renaming a name onto itself changes nothing and keeps the handle.
    nfs.rename(&root, "big", &root, "big").await.unwrap();
    assert_eq!(nfs.getattr(&big).await.unwrap().size, 3 << 20);
}

/// One RPC call with a chosen xid on a fresh connection (as a kernel retransmits after a
/// reconnect); the reply's NFS status word.
async fn raw_call(
    port: u16,
    xid: u32,
    proc_: u32,
    args: &impl nfs3_client::nfs3_types::xdr_codec::Pack,
) -> u32 {
    use nfs3_client::nfs3_types::rpc::{call_body, msg_body, opaque_auth, rpc_msg};
    use nfs3_client::nfs3_types::xdr_codec::Pack;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let msg = rpc_msg {
        xid,
        body: msg_body::CALL(call_body {
            rpcvers: 2,
            prog: 100_003,
            vers: 3,
            proc: proc_,
            cred: auth_sys(0, 0, &[]),
            verf: opaque_auth::default(),
        }),
    };
    let mut body = Vec::new();
    msg.pack(&mut body).unwrap();
    args.pack(&mut body).unwrap();
    let mut rec = (0x8000_0000u32 | body.len() as u32).to_be_bytes().to_vec();
    rec.extend_from_slice(&body);
    let mut s = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .unwrap();
    s.write_all(&rec).await.unwrap();
    let mut mark = [0u8; 4];
    s.read_exact(&mut mark).await.unwrap();
    let mut reply = vec![0u8; (u32::from_be_bytes(mark) & 0x7fff_ffff) as usize];
    s.read_exact(&mut reply).await.unwrap();
    assert_eq!(u32::from_be_bytes(reply[..4].try_into().unwrap()), xid);
    // xid, REPLY, MSG_ACCEPTED, verifier (flavor, empty body), SUCCESS, then the status.
    u32::from_be_bytes(reply[24..28].try_into().unwrap())
}

/// Issue 11, item 18: a kernel's retransmission of REMOVE, CREATE (guarded), MKDIR, LINK,
/// RENAME or SYMLINK (same xid, new connection) gets the first reply again instead of
/// NOENT/EXIST. (RENAME and SYMLINK are forwarded to the dispatcher: before their replies
/// were kept, a retransmitted RENAME answered NOENT and a SYMLINK EXIST.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retransmitted_changes_are_answered_once() {
    let d = dirs();
    std::fs::write(d.export.join("victim"), b"x").unwrap();
    let client = ClientProc::start(&d.export, &d.cache, 0, &[]);
    let mut nfs = Nfs::mount(client.port).await;
    let root = nfs.root.clone();
    let file = nfs.lookup(&root, "victim").await.unwrap();
    let remove = REMOVE3args {
        object: dirop(&root, "victim"),
    };
    let create = CREATE3args {
        where_: dirop(&root, "new"),
        how: createhow3::GUARDED(attrs(Some(0o644))),
    };
    let mkdir = MKDIR3args {
        where_: dirop(&root, "dir"),
        attributes: attrs(Some(0o755)),
    };
    let link = LINK3args {
        file: file.clone(),
        link: dirop(&root, "hard"),
    };
    let ok = nfsstat3::NFS3_OK as u32;
    for (xid, proc_, name) in [(9001, 15, "LINK"), (9002, 8, "CREATE"), (9003, 9, "MKDIR")] {
        let first = match proc_ {
            15 => raw_call(client.port, xid, proc_, &link).await,
            8 => raw_call(client.port, xid, proc_, &create).await,
            _ => raw_call(client.port, xid, proc_, &mkdir).await,
        };
        assert_eq!(first, ok, "{name}");
        let again = match proc_ {
            15 => raw_call(client.port, xid, proc_, &link).await,
            8 => raw_call(client.port, xid, proc_, &create).await,
            _ => raw_call(client.port, xid, proc_, &mkdir).await,
        };
        assert_eq!(again, ok, "retransmitted {name} carried out twice");
        // A new call (new xid) is carried out and fails as it should.
        let fresh = match proc_ {
            15 => raw_call(client.port, xid + 100, proc_, &link).await,
            8 => raw_call(client.port, xid + 100, proc_, &create).await,
            _ => raw_call(client.port, xid + 100, proc_, &mkdir).await,
        };
        assert_eq!(
            fresh,
            nfsstat3::NFS3ERR_EXIST as u32,
            "{name} with a new xid"
        );
    }
    assert_eq!(raw_call(client.port, 9004, 12, &remove).await, ok);
    assert_eq!(
        raw_call(client.port, 9004, 12, &remove).await,
        ok,
        "retransmitted REMOVE"
    );
    assert_eq!(
        raw_call(client.port, 9005, 12, &remove).await,
        nfsstat3::NFS3ERR_NOENT as u32
    );
    assert!(!d.export.join("victim").exists() && d.export.join("hard").exists());

    let rename = RENAME3args {
        from: dirop(&root, "hard"),
        to: dirop(&root, "moved"),
    };
    assert_eq!(raw_call(client.port, 9006, 14, &rename).await, ok);
    assert_eq!(
        raw_call(client.port, 9006, 14, &rename).await,
        ok,
        "retransmitted RENAME carried out twice"
    );
    assert_eq!(
        raw_call(client.port, 9007, 14, &rename).await,
        nfsstat3::NFS3ERR_NOENT as u32,
        "RENAME with a new xid"
    );
    assert!(!d.export.join("hard").exists() && d.export.join("moved").exists());
    let symlink = SYMLINK3args {
        where_: dirop(&root, "sl"),
        symlink: symlinkdata3 {
            symlink_attributes: attrs(None),
            symlink_data: nfspath3(nfs3_client::nfs3_types::xdr_codec::Opaque::owned(
                b"moved".to_vec(),
            )),
        },
    };
    assert_eq!(raw_call(client.port, 9008, 10, &symlink).await, ok);
    assert_eq!(
        raw_call(client.port, 9008, 10, &symlink).await,
        ok,
        "retransmitted SYMLINK carried out twice"
    );
    assert_eq!(
        raw_call(client.port, 9009, 10, &symlink).await,
        nfsstat3::NFS3ERR_EXIST as u32,
        "SYMLINK with a new xid"
    );
    assert_eq!(
        std::fs::read_link(d.export.join("sl")).unwrap(),
        std::path::Path::new("moved")
    );
}

/// Issue 11, item 19: every namespace change refreshes the attributes of the file it
/// touched under all its names. With attributes cached for an hour, `ln a b; rm b` used
/// to leave `a` at two links (and the kernel's `stat -c %h a` printed 2).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hard_link_counts_follow_link_remove_and_rename() {
    let d = dirs();
    std::fs::write(d.export.join("a"), b"x").unwrap();
    std::fs::write(d.export.join("other"), b"y").unwrap();
    let client = ClientProc::start(&d.export, &d.cache, 0, &["--attr-timeout", "3600"]);
    let mut nfs = Nfs::mount(client.port).await;
    let root = nfs.root.clone();
    let a = nfs.lookup(&root, "a").await.unwrap();
    assert_eq!(nfs.getattr(&a).await.unwrap().nlink, 1);
    let link = LINK3args {
        file: a.clone(),
        link: dirop(&root, "b"),
    };
    assert!(matches!(
        nfs.c.link(&link).await.unwrap(),
        Nfs3Result::Ok(_)
    ));
    let b = nfs.lookup(&root, "b").await.unwrap();
    assert_eq!(nfs.getattr(&b).await.unwrap().nlink, 2);
    assert_eq!(nfs.getattr(&a).await.unwrap().nlink, 2, "after LINK");
    nfs.remove(&root, "b").await.unwrap();
    assert_eq!(
        nfs.getattr(&a).await.unwrap().nlink,
        1,
        "after REMOVE of the other name"
    );
    // A rename over a second name of `a` drops a link too.
    assert!(matches!(
        nfs.c.link(&link).await.unwrap(),
        Nfs3Result::Ok(_)
    ));
    assert_eq!(nfs.getattr(&a).await.unwrap().nlink, 2);
    nfs.rename(&root, "other", &root, "b").await.unwrap();
    assert_eq!(
        nfs.getattr(&a).await.unwrap().nlink,
        1,
        "after RENAME over it"
    );
}
