//! Restarts: handles the NFS client holds stay valid across a restart of either proxy.

use nfs3_client::nfs3_types::nfs3::*;

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
