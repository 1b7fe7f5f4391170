//! Issue 16, disconnected operation: while the store is unreachable, what the cache holds
//! is served (the last attributes and names known, cached blocks), what it does not hold
//! is answered NFS3ERR_JUKEBOX (the kernel retries later: the VM waits, as on a hard
//! mount) until the link returns or `--offline-limit` passes, and write-back writes go on
//! being acknowledged. Before, the cached image failed with NFS3ERR_IO after
//! --reconnect-timeout.

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use nfs3_client::nfs3_types::nfs3::*;

use crate::harness::*;

/// Cut the link: new connections fail, and the live session's server dies.
fn cut(flag: &Path, client: &ClientProc) {
    std::fs::write(flag, "").unwrap();
    client.kill_servers();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cached_image_is_served_through_an_outage_and_the_rest_waits() {
    let d = dirs();
    let flag = d.tmp.path().join("link-down");
    let cached = noise(110, 3 << 20);
    let uncached = noise(111, 1 << 20);
    std::fs::create_dir(d.export.join("vm")).unwrap();
    std::fs::write(d.export.join("vm/disk.img"), &cached).unwrap();
    std::fs::write(d.export.join("vm/other.img"), &uncached).unwrap();
    std::fs::write(d.export.join("redo.log"), vec![0u8; 1 << 20]).unwrap();
    let remote = unreachable_when(&flag, &d.export);
    let flags = ["--write-policy", "back", "--attr-timeout", "0.5"];
    let client = ClientProc::start_remote(&remote, &d.export, &d.cache, 0, &flags);
    let mut nfs = Nfs::mount(client.port).await;
    let root = nfs.root.clone();
    let vm = nfs.lookup(&root, "vm").await.unwrap();
    let img = nfs.lookup(&vm, "disk.img").await.unwrap();
    let other = nfs.lookup(&vm, "other.img").await.unwrap();
    let redo = nfs.lookup(&root, "redo.log").await.unwrap();
    assert!(nfs.read_all(&img, 1 << 20).await.unwrap() == cached);
    let warm = Instant::now();
    assert!(nfs.read_all(&img, 1 << 20).await.unwrap() == cached);
    let warm = warm.elapsed();

    cut(&flag, &client);
    // Past the attribute timeout and the grace: every answer below needs the store or
    // the offline cache.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let t = Instant::now();
    let a = nfs
        .getattr(&img)
        .await
        .expect("GETATTR of a cached file offline");
    assert_eq!(a.size, 3 << 20);
    let again = nfs.lookup(&vm, "disk.img").await.expect("LOOKUP offline");
    assert_eq!(again, img, "the same handle");
    let vm_again = nfs
        .lookup(&root, "vm")
        .await
        .expect("LOOKUP of the dir offline");
    assert_eq!(vm_again, vm);
    assert!(
        nfs.read_all(&img, 1 << 20).await.expect("READ offline") == cached,
        "the cached bytes offline"
    );
    let offline_read = t.elapsed();
    println!("warm read {warm:?}; offline getattr+lookups+read {offline_read:?}");
    assert!(
        offline_read < Duration::from_secs(5),
        "cached answers offline do not wait for the store: {offline_read:?}"
    );
    // Not cached: wait (JUKEBOX), at once, not after --reconnect-timeout.
    let t = Instant::now();
    assert_eq!(
        nfs.read(&other, 0, 65536).await,
        Err(nfsstat3::NFS3ERR_JUKEBOX),
        "an uncached read offline waits"
    );
    assert!(t.elapsed() < Duration::from_secs(5));
    assert_eq!(
        nfs.lookup(&vm, "never-seen").await,
        Err(nfsstat3::NFS3ERR_JUKEBOX),
        "a name never seen may exist: wait"
    );
    // Write-back writes go on being acknowledged.
    nfs.write(&redo, 4096, b"written offline", stable_how::FILE_SYNC)
        .await
        .expect("write-back write offline");
    let st = status_json(&d.cache);
    assert!(
        st["offline_seconds"].as_f64().is_some(),
        "status says offline: {st}"
    );
    assert!(n(&st, "offline_refused") >= 2, "{st}");
    assert_eq!(n(&st, "outages"), 1, "{st}");
    // Someone changes the image on the store while the client cannot see it.
    let changed = noise(112, 3 << 20);
    std::fs::write(d.export.join("vm/disk.img"), &changed).unwrap();

    // The link returns: the waiting read completes with the right bytes, the journal lands.
    std::fs::remove_file(&flag).unwrap();
    let t = Instant::now();
    let got = loop {
        match nfs.read_all(&other, 1 << 20).await {
            Ok(b) => break b,
            Err(nfsstat3::NFS3ERR_JUKEBOX) => {
                assert!(t.elapsed() < Duration::from_secs(30), "never back online");
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            Err(e) => panic!("the waiting read failed after the link returned: {e:?}"),
        }
    };
    assert!(got == uncached);
    // On return, what was answered from the cache is checked: the image changed.
    let t = Instant::now();
    let report = loop {
        let st = status_json(&d.cache);
        if !st["last_outage"].is_null() {
            break st["last_outage"].clone();
        }
        assert!(
            t.elapsed() < Duration::from_secs(20),
            "no outage report: {st}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    println!("outage report: {report}");
    assert_eq!(report["changed"], 1, "only the image changed: {report}");
    assert_eq!(report["changed_paths"][0][0], "vm/disk.img", "{report}");
    assert!(
        n(&report, "served") >= 3,
        "the image, its directory, the root: {report}"
    );
    assert!(report["lasted_secs"].as_f64().unwrap() >= 3.0, "{report}");
    tokio::time::sleep(Duration::from_secs(1)).await; // past --attr-timeout
    assert!(
        nfs.read_all(&img, 1 << 20).await.unwrap() == changed,
        "the new bytes after the outage, not the cached ones"
    );
    client_cmd(&["flush"], &d.cache);
    let redo_now = std::fs::read(d.export.join("redo.log")).unwrap();
    assert_eq!(&redo_now[4096..4096 + 15], b"written offline");
    let st = status_json(&d.cache);
    assert!(st["offline_seconds"].is_null(), "back online: {st}");
}

/// `--offline-limit`: past it, what needs the store fails cleanly (EIO) instead of
/// waiting; cached data is still served.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn past_the_offline_limit_uncached_reads_fail() {
    let d = dirs();
    let flag = d.tmp.path().join("link-down");
    let data = noise(112, 1 << 20);
    std::fs::write(d.export.join("a.img"), &data).unwrap();
    std::fs::write(d.export.join("b.img"), &data).unwrap();
    let remote = unreachable_when(&flag, &d.export);
    let flags = ["--attr-timeout", "0.5", "--offline-limit", "3"];
    let client = ClientProc::start_remote(&remote, &d.export, &d.cache, 0, &flags);
    let mut nfs = Nfs::mount(client.port).await;
    let root = nfs.root.clone();
    let a = nfs.lookup(&root, "a.img").await.unwrap();
    let b = nfs.lookup(&root, "b.img").await.unwrap();
    assert!(nfs.read_all(&a, 1 << 20).await.unwrap() == data);
    cut(&flag, &client);
    tokio::time::sleep(Duration::from_secs(1)).await;
    let t = Instant::now();
    let failed = loop {
        match nfs.read(&b, 0, 4096).await {
            Err(nfsstat3::NFS3ERR_JUKEBOX) => {
                assert!(t.elapsed() < Duration::from_secs(30), "never gave up");
                tokio::time::sleep(Duration::from_millis(250)).await;
            }
            other => break other,
        }
    };
    assert_eq!(failed.map(|_| ()), Err(nfsstat3::NFS3ERR_IO));
    let took = t.elapsed();
    println!("uncached read failed after {took:?} offline (limit 3 s)");
    assert!(took >= Duration::from_millis(500), "{took:?}");
    assert!(
        nfs.read_all(&a, 1 << 20)
            .await
            .expect("cached still served")
            == data,
        "cached data past the limit"
    );
}

/// Issue 16: a client restarted while the store is unreachable still serves its cache:
/// the store's last handshake, the last attributes seen and the files' hints are kept in
/// the index, so it starts offline, answers LOOKUP/GETATTR/READ of what it holds (zero
/// extents of a hinted file included), makes the rest wait, and goes online when the store
/// answers again. Before, it could not start at all.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_restarted_during_an_outage_serves_its_cache() {
    let d = dirs();
    let flag = d.tmp.path().join("link-down");
    let data = noise(113, 2 << 20);
    std::fs::create_dir(d.export.join("vm")).unwrap();
    std::fs::write(d.export.join("vm/disk.img"), &data).unwrap();
    std::fs::write(d.export.join("vm/later.img"), &data[..1 << 20]).unwrap();
    // A memory state whose second half is zeros, hinted: those are never fetched.
    let mut mem = noise(114, 2 << 20);
    mem[1 << 20..].fill(0);
    std::fs::write(d.export.join("vm/mem.state"), &mem).unwrap();
    run_ok(
        std::process::Command::new(bin("gridvfs-server"))
            .arg("hint")
            .arg(d.export.join("vm/mem.state")),
    );
    let remote = unreachable_when(&flag, &d.export);
    let flags = ["--attr-timeout", "0.5"];
    let mut client = ClientProc::start_remote(&remote, &d.export, &d.cache, 0, &flags);
    {
        let mut nfs = Nfs::mount(client.port).await;
        let root = nfs.root.clone();
        let vm = nfs.lookup(&root, "vm").await.unwrap();
        let f = nfs.lookup(&vm, "disk.img").await.unwrap();
        assert!(nfs.read_all(&f, 1 << 20).await.unwrap() == data);
        let m = nfs.lookup(&vm, "mem.state").await.unwrap();
        assert!(nfs.read_all(&m, 1 << 20).await.unwrap() == mem);
        nfs.lookup(&vm, "later.img").await.unwrap();
    }
    // The attributes are written behind (every 2 s): let them land, then the client
    // dies and the store becomes unreachable.
    tokio::time::sleep(Duration::from_secs(3)).await;
    client.kill();
    std::fs::write(&flag, "").unwrap();

    let client = ClientProc::start_remote(&remote, &d.export, &d.cache, 0, &flags);
    let st = status_json(&d.cache);
    assert!(
        st["offline_seconds"].as_f64().is_some(),
        "started offline: {st}"
    );
    let mut nfs = Nfs::mount(client.port).await;
    let root = nfs.root.clone();
    let vm = nfs
        .lookup(&root, "vm")
        .await
        .expect("LOOKUP after an offline start");
    let f = nfs.lookup(&vm, "disk.img").await.unwrap();
    assert_eq!(nfs.getattr(&f).await.unwrap().size, 2 << 20);
    assert!(nfs.read_all(&f, 1 << 20).await.expect("cached READ") == data);
    let m = nfs.lookup(&vm, "mem.state").await.unwrap();
    assert!(
        nfs.read_all(&m, 1 << 20)
            .await
            .expect("cached + hinted zeros")
            == mem,
        "the hint's zeros are answered offline too"
    );
    let later = nfs.lookup(&vm, "later.img").await.unwrap();
    assert_eq!(
        nfs.read(&later, 0, 4096).await,
        Err(nfsstat3::NFS3ERR_JUKEBOX),
        "never read: waits"
    );
    std::fs::remove_file(&flag).unwrap();
    let t = Instant::now();
    let got = loop {
        match nfs.read_all(&later, 1 << 20).await {
            Ok(b) => break b,
            Err(nfsstat3::NFS3ERR_JUKEBOX) => {
                assert!(t.elapsed() < Duration::from_secs(30), "never online");
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            Err(e) => panic!("{e:?}"),
        }
    };
    assert!(got == data[..1 << 20]);
    assert!(status_json(&d.cache)["offline_seconds"].is_null());
}

/// Issue 16: a directory listed whole while the store answered is listed during an
/// outage too, by READDIR and READDIRPLUS with the same names, cookies' order and
/// handles, and after a restart during the outage; one never listed waits (JUKEBOX); once
/// the store is back, listings are the store's again. Before, every READDIR offline
/// waited.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn directories_listed_before_an_outage_are_listed_during_it() {
    let d = dirs();
    let flag = d.tmp.path().join("link-down");
    std::fs::create_dir_all(d.export.join("images/sub")).unwrap();
    std::fs::create_dir(d.export.join("unlisted")).unwrap();
    // Enough long names that one listing takes many READDIR calls of 4 KiB.
    for i in 0..600 {
        let name = format!("guest-{i:04}-disk-image-with-a-long-name.qcow2");
        std::fs::write(d.export.join("images").join(name), b"x").unwrap();
    }
    std::fs::write(d.export.join("unlisted/a.img"), b"a").unwrap();
    let remote = unreachable_when(&flag, &d.export);
    let flags = ["--attr-timeout", "0.5"];
    let mut client = ClientProc::start_remote(&remote, &d.export, &d.cache, 0, &flags);
    let mut nfs = Nfs::mount(client.port).await;
    let root = nfs.root.clone();
    let images = nfs.lookup(&root, "images").await.unwrap();
    let unlisted = nfs.lookup(&root, "unlisted").await.unwrap();
    let online = nfs.readdir_names(&images, 4096).await.unwrap();
    assert_eq!(online.len(), 603, "600 files, sub, . and ..");
    let online_plus = nfs.readdirplus_names(&images, 8192).await.unwrap();

    cut(&flag, &client);
    tokio::time::sleep(Duration::from_secs(3)).await;
    let t = Instant::now();
    let offline = nfs
        .readdir_names(&images, 4096)
        .await
        .expect("READDIR of a listed directory offline");
    assert_eq!(offline, online, "the same listing, in the same order");
    let offline_plus = nfs
        .readdirplus_names(&images, 8192)
        .await
        .expect("READDIRPLUS offline");
    assert_eq!(offline_plus, online_plus, "names, handles and cookies");
    println!("two offline listings of 603 entries in {:?}", t.elapsed());
    assert_eq!(
        nfs.readdir_names(&unlisted, 4096).await,
        Err(nfsstat3::NFS3ERR_JUKEBOX),
        "never listed: waits"
    );

    // Restarted during the outage: the listing was kept in the index.
    tokio::time::sleep(Duration::from_secs(3)).await; // attributes are written behind
    drop(nfs);
    client.kill();
    let client = ClientProc::start_remote(&remote, &d.export, &d.cache, 0, &flags);
    let mut nfs = Nfs::mount(client.port).await;
    let root = nfs.root.clone();
    let images = nfs.lookup(&root, "images").await.unwrap();
    let again = nfs
        .readdir_names(&images, 4096)
        .await
        .expect("READDIR after an offline start");
    assert_eq!(again, online);

    // Back online: a file made meanwhile on the store shows up.
    std::fs::write(d.export.join("images/new.img"), b"n").unwrap();
    std::fs::remove_file(&flag).unwrap();
    let t = Instant::now();
    loop {
        match nfs.readdir_names(&images, 4096).await {
            Ok(names) if names.iter().any(|n| n == b"new.img") => break,
            Ok(_) | Err(nfsstat3::NFS3ERR_JUKEBOX) => {
                assert!(t.elapsed() < Duration::from_secs(30), "never back");
                tokio::time::sleep(Duration::from_millis(300)).await;
            }
            Err(e) => panic!("{e:?}"),
        }
    }
}

/// libnfs (nfs-cat here; qemu's `nfs://` block driver is built on it) does not retry
/// NFS3ERR_JUKEBOX: it returns EAGAIN, and qemu reports an I/O error on the VM's disk.
/// So for a libnfs caller the gate holds the call and tries it again until the store
/// answers: a read of uncached data started during an outage completes with the right
/// bytes after the link returns; past `--offline-limit` it fails cleanly. Before, nfs-cat
/// failed at once with "NFS3ERR_JUKEBOX".
#[test]
fn libnfs_reads_started_offline_wait_for_the_link() {
    let d = dirs();
    let flag = d.tmp.path().join("link-down");
    let cached = noise(120, 2 << 20);
    let uncached = noise(121, 3 << 20);
    std::fs::create_dir(d.export.join("vm")).unwrap();
    std::fs::write(d.export.join("vm/disk.img"), &cached).unwrap();
    std::fs::write(d.export.join("vm/other.img"), &uncached).unwrap();
    let remote = unreachable_when(&flag, &d.export);
    let client = ClientProc::start_remote(
        &remote,
        &d.export,
        &d.cache,
        0,
        &["--attr-timeout", "0.5", "--offline-limit", "20"],
    );
    let cat = |path: &str, out: &Path| {
        Command::new("nfs-cat")
            .arg(client.url(path))
            .stdout(std::fs::File::create(out).unwrap())
            .stderr(Stdio::piped())
            .spawn()
            .expect("nfs-cat (libnfs-utils) is installed")
    };
    let ls = run_ok(Command::new("nfs-ls").arg(client.url("/vm")));
    assert!(ls.contains("other.img"), "{ls}");
    let warm = d.tmp.path().join("warm");
    assert!(cat("/vm/disk.img", &warm).wait().unwrap().success());
    assert!(std::fs::read(&warm).unwrap() == cached);

    cut(&flag, &client);
    std::thread::sleep(Duration::from_secs(3));
    // What the cache holds is served to libnfs as to the kernel.
    let offline = d.tmp.path().join("offline");
    let out = cat("/vm/disk.img", &offline).wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        std::fs::read(&offline).unwrap() == cached,
        "cached bytes offline"
    );
    // What it does not hold waits, without an error, for as long as the link is down.
    let late = d.tmp.path().join("late");
    let mut waiting = cat("/vm/other.img", &late);
    std::thread::sleep(Duration::from_secs(5));
    if let Some(status) = waiting.try_wait().unwrap() {
        let mut err = String::new();
        std::io::Read::read_to_string(waiting.stderr.as_mut().unwrap(), &mut err).unwrap();
        panic!("nfs-cat of an uncached file ended during the outage ({status}): {err}");
    }
    let st = status_json(&d.cache);
    assert!(st["offline_seconds"].as_f64().is_some(), "{st}");
    assert_eq!(n(&st, "held"), 1, "the read is held: {st}");
    std::fs::remove_file(&flag).unwrap();
    let t = Instant::now();
    let out = waiting.wait_with_output().unwrap();
    println!(
        "the held read completed {:?} after the link returned",
        t.elapsed()
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        std::fs::read(&late).unwrap() == uncached,
        "the uncached bytes, after"
    );
    assert!(t.elapsed() < Duration::from_secs(30), "{:?}", t.elapsed());
    assert_eq!(n(&status_json(&d.cache), "held"), 0);

    // Past --offline-limit a held read fails cleanly instead of waiting for ever.
    std::fs::write(d.export.join("vm/third.img"), &uncached).unwrap();
    run_ok(Command::new("nfs-ls").arg(client.url("/vm")));
    cut(&flag, &client);
    let t = Instant::now();
    let out = cat("/vm/third.img", &d.tmp.path().join("third"))
        .wait_with_output()
        .unwrap();
    let took = t.elapsed();
    println!("past the limit nfs-cat failed after {took:?}");
    assert!(!out.status.success(), "a read past --offline-limit fails");
    assert!(
        took >= Duration::from_secs(18) && took < Duration::from_secs(60),
        "{took:?}"
    );
}
