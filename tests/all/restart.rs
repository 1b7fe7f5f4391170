//! Restarts: handles the NFS client holds stay valid across a restart of either proxy.

use nfs3_client::nfs3_types::nfs3::*;

use std::time::Duration;

use crate::harness::*;

#[tokio::test]
async fn client_proxy_restart_keeps_handles_valid() {
    let d = dirs();
    std::fs::create_dir_all(d.export.join("vms/a")).unwrap();
    std::fs::write(d.export.join("vms/a/disk.img"), noise(7, 200_000)).unwrap();
    let mut client = ClientProc::start(&d.export, &d.cache, 0, &[]);
    let (dir, file, root) = {
        let mut nfs = Nfs::mount(client.port).await;
        let root = nfs.root.clone();
        let vms = nfs.lookup(&root, "vms").await.unwrap();
        let dir = nfs.lookup(&vms, "a").await.unwrap();
        let file = nfs.lookup(&dir, "disk.img").await.unwrap();
        assert_eq!(nfs.read(&file, 0, 100).await.unwrap().0, noise(7, 100));
        (dir, file, root)
    };

    for round in 0..3 {
        client.restart();
        let mut nfs = Nfs::mount(client.port).await;
        assert_eq!(nfs.root, root, "root handle changed across restart {round}");
        // Old handles, new process: no ESTALE, same bytes, and writes land.
        assert_eq!(nfs.getattr(&file).await.unwrap().size, 200_000);
        assert_eq!(nfs.read_all(&file, 65536).await.unwrap(), noise(7, 200_000));
        let names = nfs.readdir_names(&dir, 4096).await.unwrap();
        assert!(names.contains(&b"disk.img".to_vec()));
        let f = nfs
            .create(
                &dir,
                &format!("after-{round}"),
                createhow3::UNCHECKED(attrs(None)),
            )
            .await
            .unwrap();
        nfs.write(&f, 0, b"ok", stable_how::FILE_SYNC)
            .await
            .unwrap();
    }
    for round in 0..3 {
        assert_eq!(
            std::fs::read(d.export.join(format!("vms/a/after-{round}"))).unwrap(),
            b"ok"
        );
    }
}

#[tokio::test]
async fn server_proxy_restart_is_a_delay_not_an_error() {
    let d = dirs();
    std::fs::write(d.export.join("mem.state"), noise(9, 3 << 20)).unwrap();
    let client = ClientProc::start(&d.export, &d.cache, 0, &[]);
    let mut nfs = Nfs::mount(client.port).await;
    let root = nfs.root.clone();
    let f = nfs.lookup(&root, "mem.state").await.unwrap();
    let mut got = nfs.read(&f, 0, 1 << 20).await.unwrap().0;

    for (i, pid) in client.server_pids().into_iter().enumerate() {
        // kill -9 the store-side proxy in the middle of the read.
        rustix::process::kill_process(
            rustix::process::Pid::from_raw(pid as i32).unwrap(),
            rustix::process::Signal::KILL,
        )
        .unwrap();
        std::thread::sleep(std::time::Duration::from_millis(100 * i as u64));
    }
    while got.len() < 3 << 20 {
        let (d, _) = nfs
            .read(&f, got.len() as u64, 1 << 20)
            .await
            .expect("read after server restart");
        got.extend_from_slice(&d);
    }
    assert_eq!(got, noise(9, 3 << 20));
    // Non-idempotent requests work on the new session too.
    for pid in client.server_pids() {
        rustix::process::kill_process(
            rustix::process::Pid::from_raw(pid as i32).unwrap(),
            rustix::process::Signal::KILL,
        )
        .unwrap();
    }
    std::thread::sleep(std::time::Duration::from_millis(200));
    nfs.mkdir(&root, "made-after", Some(0o700))
        .await
        .expect("mkdir after server restart");
    assert!(d.export.join("made-after").is_dir());
    assert_eq!(nfs.getattr(&f).await.unwrap().size, 3 << 20);
}

/// Issue 11, item 13: the write verifier changes when the store machine reboots (its
/// unsynced UNSTABLE writes are gone, so the kernel must see a new verifier at COMMIT and
/// resend), and stays when only the server process restarts (its writes were in the
/// store's page cache, nothing to resend). Before, the verifier was the handle
/// generation alone: a store reboot between WRITE and COMMIT lost data silently.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn write_verifier_follows_the_store_boot() {
    let d = dirs();
    let boot = d.tmp.path().join("boot_id");
    std::fs::write(&boot, "boot-one").unwrap();
    let remote = format!(
        "exec:GRIDVFS_BOOT_ID=$(cat {boot}) exec {server} serve --stdio --export {export}",
        boot = boot.display(),
        server = bin("gridvfs-server").display(),
        export = d.export.display()
    );
    let client = ClientProc::start_remote(&remote, &d.export, &d.cache, 0, &[]);
    let mut nfs = Nfs::mount(client.port).await;
    let root = nfs.root.clone();
    let f = nfs
        .create(&root, "disk.img", createhow3::UNCHECKED(attrs(Some(0o644))))
        .await
        .unwrap();
    async fn verf(nfs: &mut Nfs, fh: &nfs_fh3) -> ([u8; 8], [u8; 8]) {
        {
            let w = nfs
                .write(fh, 0, b"unstable", stable_how::UNSTABLE)
                .await
                .unwrap();
            let c = match nfs
                .c
                .commit(&COMMIT3args {
                    file: fh.clone(),
                    offset: 0,
                    count: 0,
                })
                .await
                .expect("rpc")
            {
                Nfs3Result::Ok(ok) => ok.verf,
                Nfs3Result::Err((s, _)) => panic!("COMMIT: {s:?}"),
            };
            (w.verf.0, c.0)
        }
    }
    let kill_server = || {
        client.kill_servers();
    };
    let (w1, c1) = verf(&mut nfs, &f).await;
    assert_eq!(w1, c1, "one boot, one verifier");
    // The server process restarts on the same machine: same verifier.
    kill_server();
    let (w2, c2) = verf(&mut nfs, &f).await;
    assert_eq!((w2, c2), (w1, c1), "a server restart is not a store reboot");
    // The store machine reboots between a WRITE and its COMMIT.
    let w3 = nfs
        .write(&f, 0, b"lost?", stable_how::UNSTABLE)
        .await
        .unwrap()
        .verf
        .0;
    std::fs::write(&boot, "boot-two").unwrap();
    kill_server();
    let (_, c3) = verf(&mut nfs, &f).await;
    assert_eq!(w3, w1);
    assert_ne!(
        c3, w3,
        "COMMIT after a store reboot must show a new verifier"
    );
}

/// Issue 11, item 16: a store that stops answering (its process stopped, as a store
/// thread stuck in D state would be) does not hang NFS forever: past --request-timeout
/// of silence the session is dropped and the request is answered through a new one.
/// Before, the request waited on the silent session for ever.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_store_that_stops_answering_is_left_for_a_new_session() {
    let d = dirs();
    let data = noise(95, 2 << 20);
    std::fs::write(d.export.join("disk.img"), &data).unwrap();
    let client = ClientProc::start(&d.export, &d.cache, 0, &["--request-timeout", "2"]);
    let mut nfs = Nfs::mount(client.port).await;
    let root = nfs.root.clone();
    let f = nfs.lookup(&root, "disk.img").await.unwrap();
    let stopped = client.server_pids();
    assert!(!stopped.is_empty(), "the store's process");
    for pid in &stopped {
        rustix::process::kill_process(
            rustix::process::Pid::from_raw(*pid as i32).unwrap(),
            rustix::process::Signal::STOP,
        )
        .unwrap();
    }
    let started = std::time::Instant::now();
    let read = tokio::time::timeout(Duration::from_secs(60), nfs.read_all(&f, 1 << 20)).await;
    for pid in &stopped {
        let _ = rustix::process::kill_process(
            rustix::process::Pid::from_raw(*pid as i32).unwrap(),
            rustix::process::Signal::KILL,
        );
    }
    let got = read
        .expect("the read still hangs on a silent store after 60 s")
        .expect("read through a new session");
    assert!(got == data, "the bytes through the new session");
    assert!(
        started.elapsed() >= Duration::from_secs(2),
        "answered before the timeout: the store was not stopped?"
    );
    let st = status_json(&d.cache);
    assert!(n(&st, "reconnects") >= 1, "{st}");
    assert!(
        !client.server_pids().iter().any(|p| stopped.contains(p)),
        "the silent store's process is gone"
    );
}

/// Issue 11, item 11: the export's identity is written once at its root and survives
/// what used to change it (the export moved, or its device renumbered: the old id hashed
/// path and st_dev): the client comes back to the same cache, warm. The id file is
/// invisible and untouchable through the mount.
#[tokio::test]
async fn the_export_keeps_its_identity_when_moved() {
    let d = dirs();
    let data = noise(96, 1 << 20);
    std::fs::write(d.export.join("base.img"), &data).unwrap();
    let mut client = ClientProc::start(&d.export, &d.cache, 0, &[]);
    let id = status_json(&d.cache)["export_id"]
        .as_str()
        .unwrap()
        .to_string();
    let mut nfs = Nfs::mount(client.port).await;
    let root = nfs.root.clone();
    let f = nfs.lookup(&root, "base.img").await.unwrap();
    assert!(nfs.read_all(&f, 1 << 20).await.unwrap() == data);
    assert_eq!(
        std::fs::read_to_string(d.export.join(".gridvfs-export-id"))
            .unwrap()
            .trim(),
        id
    );
    let names = nfs.readdir_names(&root, 4096).await.unwrap();
    assert!(
        !names.iter().any(|n| n.starts_with(b".gridvfs-export-id")),
        "listed: {names:?}"
    );
    assert!(nfs.lookup(&root, ".gridvfs-export-id").await.is_err());
    assert!(nfs.remove(&root, ".gridvfs-export-id").await.is_err());
    assert!(
        nfs.create(
            &root,
            ".gridvfs-export-id.new",
            createhow3::UNCHECKED(attrs(Some(0o644)))
        )
        .await
        .is_err()
    );
    client.kill();

    let moved = d.tmp.path().join("moved-export");
    std::fs::rename(&d.export, &moved).unwrap();
    let client = ClientProc::start(&moved, &d.cache, 0, &[]);
    let st = status_json(&d.cache);
    assert_eq!(
        st["export_id"].as_str().unwrap(),
        id,
        "same export, same id"
    );
    let mut nfs = Nfs::mount(client.port).await;
    let root = nfs.root.clone();
    let f = nfs.lookup(&root, "base.img").await.unwrap();
    assert!(nfs.read_all(&f, 1 << 20).await.unwrap() == data);
    let st = status_json(&d.cache);
    assert_eq!(n(&st, "block_misses"), 0, "the old cache is in use: {st}");
}

/// Issue 11, item 11: a cache left behind with write-back data under an earlier export id
/// of the same store is not silently ignored: the client refuses to start beside it,
/// saying how to adopt it, and `--adopt-export` uploads every byte.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_journal_left_under_an_old_export_id_is_refused_then_adopted() {
    let d = dirs();
    let flag = d.tmp.path().join("store-is-read-only");
    let remote = read_only_when(&flag, &d.export);
    let flags = ["--write-policy", "back"];
    let mut client = ClientProc::start_remote(&remote, &d.export, &d.cache, 0, &flags);
    let old = status_json(&d.cache)["export_id"]
        .as_str()
        .unwrap()
        .to_string();
    let mut nfs = Nfs::mount(client.port).await;
    let root = nfs.root.clone();
    let a = nfs
        .create(&root, "a", createhow3::UNCHECKED(attrs(Some(0o644))))
        .await
        .unwrap();
    nfs.write(&a, 0, b"first", stable_how::FILE_SYNC)
        .await
        .unwrap();
    client_cmd(&["flush"], &d.cache);
    // The store stops taking uploads; an acknowledged write waits in the journal.
    std::fs::write(&flag, "").unwrap();
    client.kill_servers();
    nfs.write(&a, 0, b"SECOND", stable_how::FILE_SYNC)
        .await
        .unwrap();
    let t = std::time::Instant::now();
    while n(&status_json(&d.cache), "quarantined_entries") == 0 {
        assert!(t.elapsed() < Duration::from_secs(30), "never kept back");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    client.kill();
    // The store comes back writable, under another identity.
    std::fs::remove_file(&flag).unwrap();
    let new = "0123456789abcdef0123456789abcdef";
    std::fs::write(d.export.join(".gridvfs-export-id"), format!("{new}\n")).unwrap();

    let out = std::process::Command::new(bin("gridvfs-client"))
        .args([
            "serve",
            "--remote",
            &remote,
            "--listen",
            "127.0.0.1:0",
            "--write-policy",
            "back",
        ])
        .args(TEST_ACCESS)
        .arg("--cache-dir")
        .arg(&d.cache)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success(),
        "started beside a stranded journal: {err}"
    );
    assert!(
        err.contains(&format!("--adopt-export {old}")) && err.contains("1 write-back"),
        "{err}"
    );

    let flags = ["--write-policy", "back", "--adopt-export", &old];
    let _client = ClientProc::start_remote(&remote, &d.export, &d.cache, 0, &flags);
    assert_eq!(status_json(&d.cache)["export_id"].as_str().unwrap(), new);
    client_cmd(&["flush"], &d.cache);
    assert_eq!(std::fs::read(d.export.join("a")).unwrap(), b"SECOND");
}
