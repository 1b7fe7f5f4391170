//! Write-back: acknowledged writes survive `kill -9` of the client at any moment, are
//! uploaded after restart, and reads see them before they reach the store.

use std::time::Duration;

use nfs3_client::nfs3_types::nfs3::*;
use nfs3_client::nfs3_types::xdr_codec::Opaque;

use crate::harness::*;

const SIZE: usize = 8 << 20;

fn flush(cache: &std::path::Path) {
    client_cmd(&["flush"], cache);
}

struct Lcg(u64);
impl Lcg {
    fn next(&mut self, n: u64) -> u64 {
        self.0 = self
            .0
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1_442_695_040_888_963_407);
        (self.0 >> 33) % n
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acknowledged_writes_survive_kill_9_and_all_land() {
    let d = dirs();
    let mut model = noise(70, SIZE);
    std::fs::write(d.export.join("redo.log"), &model).unwrap();
    let mut client = ClientProc::start(&d.export, &d.cache, 0, &["--write-policy", "back"]);
    let mut rng = Lcg(71);
    let mut pending: Option<(u64, Vec<u8>)> = None;
    let (mut acked, mut kills_mid_write) = (0, 0);
    for round in 0..20u64 {
        let mut nfs = Nfs::mount(client.port).await;
        let f = nfs.lookup(&nfs.root.clone(), "redo.log").await.unwrap();
        // What the NFS client does after a lost reply: send the write again.
        if let Some((off, data)) = pending.take() {
            nfs.write(&f, off, &data, stable_how::UNSTABLE)
                .await
                .expect("retransmitted write");
            model[off as usize..off as usize + data.len()].copy_from_slice(&data);
        }
        // Reads see acknowledged data that may not be on the store yet.
        let probe = rng.next((SIZE - 4096) as u64);
        assert_eq!(
            nfs.read(&f, probe, 4096).await.unwrap().0,
            model[probe as usize..probe as usize + 4096],
            "round {round}"
        );

        let pid = client.child.id() as i32;
        let delay = Duration::from_millis(20 + rng.next(150));
        let killer = std::thread::spawn(move || {
            std::thread::sleep(delay);
            let _ = rustix::process::kill_process(
                rustix::process::Pid::from_raw(pid).unwrap(),
                rustix::process::Signal::KILL,
            );
        });
        for i in 0..400u64 {
            let len = 1 + rng.next(256 << 10) as usize;
            let off = rng.next((SIZE - len) as u64);
            let data = noise(round * 1000 + i, len);
            let args = WRITE3args {
                file: f.clone(),
                offset: off,
                count: len as u32,
                stable: stable_how::UNSTABLE,
                data: Opaque::borrowed(&data),
            };
            // (nfs3_client does not notice a closed connection: it waits on EOF forever.
            // A reply takes milliseconds here; silence for 3 s means the client is dead.)
            let reply = tokio::time::timeout(Duration::from_secs(3), nfs.c.write(&args)).await;
            match reply.map_err(|_| ()).and_then(|r| r.map_err(|_| ())) {
                Ok(Nfs3Result::Ok(ok)) => {
                    assert_eq!(
                        ok.committed,
                        stable_how::FILE_SYNC,
                        "write-back answers once durable"
                    );
                    model[off as usize..off as usize + len].copy_from_slice(&data);
                    acked += 1;
                }
                Ok(Nfs3Result::Err((s, _))) => panic!("write failed: {s:?}"),
                Err(_) => {
                    // Killed with this write in flight: it may or may not have landed.
                    pending = Some((off, data));
                    kills_mid_write += 1;
                    break;
                }
            }
        }
        killer.join().unwrap();
        client.restart();
    }
    let mut nfs = Nfs::mount(client.port).await;
    let f = nfs.lookup(&nfs.root.clone(), "redo.log").await.unwrap();
    if let Some((off, data)) = pending.take() {
        nfs.write(&f, off, &data, stable_how::UNSTABLE)
            .await
            .unwrap();
        model[off as usize..off as usize + data.len()].copy_from_slice(&data);
    }
    assert!(
        nfs.read_all(&f, 1 << 20).await.unwrap() == model,
        "reads before the flush"
    );
    flush(&d.cache);
    let on_store = std::fs::read(d.export.join("redo.log")).unwrap();
    println!("{acked} acknowledged writes, {kills_mid_write} kills with a write in flight");
    assert!(
        acked > 100 && kills_mid_write >= 10,
        "the loop exercised little: {acked} acked, {kills_mid_write} mid-write kills"
    );
    assert!(
        on_store == model,
        "the store differs from every acknowledged write"
    );
}

#[tokio::test]
async fn write_back_grows_files_and_truncate_waits_for_older_writes() {
    let d = dirs();
    std::fs::write(d.export.join("f"), b"").unwrap();
    let client = ClientProc::start(&d.export, &d.cache, 0, &["--write-policy", "back"]);
    let mut nfs = Nfs::mount(client.port).await;
    let f = nfs.lookup(&nfs.root.clone(), "f").await.unwrap();
    let data = noise(72, 3 << 20);
    for (i, chunk) in data.chunks(1 << 20).enumerate() {
        nfs.write(&f, (i << 20) as u64, chunk, stable_how::UNSTABLE)
            .await
            .unwrap();
    }
    assert_eq!(
        nfs.getattr(&f).await.unwrap().size,
        3 << 20,
        "size counts data not yet uploaded"
    );
    assert!(nfs.read_all(&f, 1 << 20).await.unwrap() == data);
    // Truncate: older journal entries must land first, or they would re-grow the file.
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
    flush(&d.cache);
    assert_eq!(std::fs::read(d.export.join("f")).unwrap(), &data[..1000]);
    assert_eq!(nfs.getattr(&f).await.unwrap().size, 1000);
}

/// Eight writers at once: their writes share journal syncs (group commit), and every
/// byte lands.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_writes_share_journal_syncs() {
    let d = dirs();
    let client = ClientProc::start(&d.export, &d.cache, 0, &["--write-policy", "back"]);
    let mut tasks = Vec::new();
    for w in 0..8u64 {
        let port = client.port;
        tasks.push(tokio::spawn(async move {
            let mut nfs = Nfs::mount(port).await;
            let root = nfs.root.clone();
            let name = format!("w{w}.log");
            let f = nfs
                .create(&root, &name, createhow3::UNCHECKED(attrs(Some(0o644))))
                .await
                .unwrap();
            let data = noise(200 + w, 4 << 20);
            for (i, c) in data.chunks(64 << 10).enumerate() {
                nfs.write(&f, (i << 16) as u64, c, stable_how::FILE_SYNC)
                    .await
                    .unwrap();
            }
            (name, data)
        }));
    }
    let mut files = Vec::new();
    for t in tasks {
        files.push(t.await.unwrap());
    }
    let st = status_json(&d.cache);
    let (writes, syncs) = (n(&st, "journal_writes"), n(&st, "journal_syncs"));
    println!("{writes} writes took {syncs} journal syncs");
    assert_eq!(writes, 8 * 64);
    assert!(syncs < writes, "no write shared a sync: {st}");
    flush(&d.cache);
    for (name, data) in files {
        assert!(
            std::fs::read(d.export.join(&name)).unwrap() == data,
            "{name}"
        );
    }
}

/// Data not yet uploaded counts against --cache-size: past it, writes wait for the upload
/// (here slowed to 4 MB/s) instead of filling the disk; everything still lands.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unuploaded_data_is_held_to_the_cache_size() {
    let d = dirs();
    let remote = format!(
        "exec:pv -q -L 4m | {} serve --stdio --export {}",
        bin("gridvfs-server").display(),
        d.export.display()
    );
    let client = ClientProc::start_remote(
        &remote,
        &d.export,
        &d.cache,
        0,
        &["--write-policy", "back", "--cache-size", "9M"],
    );
    let cache = d.cache.clone();
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let stop2 = stop.clone();
    let sampler = std::thread::spawn(move || {
        let mut peak = 0;
        while !stop2.load(std::sync::atomic::Ordering::Relaxed) {
            peak = peak.max(n(&status_json(&cache), "dirty_bytes"));
            std::thread::sleep(Duration::from_millis(50));
        }
        peak
    });
    let mut nfs = Nfs::mount(client.port).await;
    let root = nfs.root.clone();
    let f = nfs
        .create(&root, "redo.log", createhow3::UNCHECKED(attrs(Some(0o644))))
        .await
        .unwrap();
    let data = noise(300, 32 << 20);
    for (i, c) in data.chunks(1 << 20).enumerate() {
        nfs.write(&f, (i << 20) as u64, c, stable_how::FILE_SYNC)
            .await
            .unwrap();
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let peak = sampler.join().unwrap();
    println!("peak of data not yet uploaded: {peak} bytes");
    assert!(peak > 0, "the sampler saw no write-back data");
    assert!(peak <= 10 << 20, "{peak} bytes pending with a 9 MiB cache");
    flush(&d.cache);
    assert!(std::fs::read(d.export.join("redo.log")).unwrap() == data);
}

/// Issue 11, items 9 and 10: entries the store refuses for good (here: it came back
/// read-only) are kept back, not dropped and not retried in a loop that blocks
/// everything: the mount answers, reads still see the data, later writes and truncates of
/// those files fail with EIO, `status` and `flush` report it, and after the store is
/// fixed a restart uploads every byte. Before: the uploader retried the batch for ever and
/// a truncate (which drains) hung, holding the namespace lock.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_upload_is_kept_back_and_wedges_nothing() {
    let d = dirs();
    let flag = d.tmp.path().join("store-is-read-only");
    let remote = read_only_when(&flag, &d.export);
    let flags = ["--write-policy", "back", "--attr-timeout", "3600"];
    let mut client = ClientProc::start_remote(&remote, &d.export, &d.cache, 0, &flags);
    let mut nfs = Nfs::mount(client.port).await;
    let root = nfs.root.clone();
    let how = || createhow3::UNCHECKED(attrs(Some(0o644)));
    let a = nfs.create(&root, "a", how()).await.unwrap();
    nfs.write(&a, 0, b"first", stable_how::FILE_SYNC)
        .await
        .unwrap();
    flush(&d.cache);
    // The store comes back read-only.
    std::fs::write(&flag, "").unwrap();
    client.kill_servers();
    nfs.write(&a, 0, b"SECOND", stable_how::FILE_SYNC)
        .await
        .expect("acknowledged: it is in the journal");
    let t = std::time::Instant::now();
    loop {
        let st = status_json(&d.cache);
        if n(&st, "quarantined_entries") >= 1 {
            assert_eq!(n(&st, "quarantined_bytes"), 6, "{st}");
            break;
        }
        assert!(
            t.elapsed() < Duration::from_secs(30),
            "never kept back: {st}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // The mount answers; reads see the acknowledged bytes; the file's later writes and
    // truncates fail instead of hanging.
    assert_eq!(nfs.read(&a, 0, 100).await.unwrap().0, b"SECOND");
    assert!(nfs.lookup(&root, "a").await.is_ok());
    assert_eq!(
        nfs.write(&a, 6, b"third", stable_how::FILE_SYNC)
            .await
            .err(),
        Some(nfsstat3::NFS3ERR_IO)
    );
    let truncate = sattr3 {
        size: Nfs3Option::Some(0),
        ..Default::default()
    };
    assert_eq!(
        nfs.setattr(&a, truncate, None).await.err(),
        Some(nfsstat3::NFS3ERR_IO)
    );
    let out = std::process::Command::new(bin("gridvfs-client"))
        .args(["flush", "--cache-dir"])
        .arg(&d.cache)
        .output()
        .unwrap();
    assert!(!out.status.success(), "flush cannot succeed");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("refused by the store"), "{err}");
    assert_eq!(std::fs::read(d.export.join("a")).unwrap(), b"first");
    // The store is fixed; a restart retries what was kept back, and it lands.
    drop(nfs);
    std::fs::remove_file(&flag).unwrap();
    client.restart();
    flush(&d.cache);
    assert_eq!(std::fs::read(d.export.join("a")).unwrap(), b"SECOND");
}

/// Issue 11, item 9: a WRITE whose offset + length wraps or passes what a file can hold
/// is refused (FBIG) at the front, under both policies; before, write-back journaled it
/// and the uploader's offset arithmetic wrapped.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writes_past_the_largest_offset_are_refused() {
    for policy in ["through", "back"] {
        let d = dirs();
        let client = ClientProc::start(&d.export, &d.cache, 0, &["--write-policy", policy]);
        let mut nfs = Nfs::mount(client.port).await;
        let root = nfs.root.clone();
        let f = nfs
            .create(&root, "f", createhow3::UNCHECKED(attrs(Some(0o644))))
            .await
            .unwrap();
        for offset in [u64::MAX - 10, (1u64 << 63) - 10, 1u64 << 63] {
            assert_eq!(
                nfs.write(&f, offset, &[7u8; 100], stable_how::FILE_SYNC)
                    .await
                    .err(),
                Some(nfsstat3::NFS3ERR_FBIG),
                "{policy}: offset {offset}"
            );
        }
        let huge = sattr3 {
            size: Nfs3Option::Some(u64::MAX),
            ..Default::default()
        };
        assert_eq!(
            nfs.setattr(&f, huge, None).await.err(),
            Some(nfsstat3::NFS3ERR_FBIG)
        );
        nfs.write(&f, 0, b"fine", stable_how::FILE_SYNC)
            .await
            .unwrap();
        if policy == "back" {
            flush(&d.cache);
        }
        assert_eq!(
            std::fs::read(d.export.join("f")).unwrap(),
            b"fine",
            "{policy}"
        );
    }
}

/// Issue 11, item 12: journal bytes damaged or lost outside gridvfs are detected and
/// reported, never uploaded: a flipped byte fails the entry's checksum, a deleted journal
/// leaves rows pointing past its end; either way the entry is kept back and the store
/// keeps its old bytes. Before, the garbage (or zeros) was uploaded as acknowledged data.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn damaged_or_lost_journal_entries_are_never_uploaded() {
    for damage in ["flip a byte", "delete the journal"] {
        let d = dirs();
        std::fs::write(d.export.join("disk.img"), b"old bytes").unwrap();
        let flag = d.tmp.path().join("store-is-read-only");
        let remote = read_only_when(&flag, &d.export);
        let flags = ["--write-policy", "back", "--attr-timeout", "3600"];
        let mut client = ClientProc::start_remote(&remote, &d.export, &d.cache, 0, &flags);
        {
            let mut nfs = Nfs::mount(client.port).await;
            let root = nfs.root.clone();
            let f = nfs.lookup(&root, "disk.img").await.unwrap();
            nfs.getattr(&f).await.unwrap();
            // The store comes back read-only, so the entry stays in the journal.
            std::fs::write(&flag, "").unwrap();
            client.kill_servers();
            nfs.write(&f, 0, b"NEW BYTES", stable_how::FILE_SYNC)
                .await
                .unwrap();
            let t = std::time::Instant::now();
            while n(&status_json(&d.cache), "quarantined_entries") == 0 {
                assert!(t.elapsed() < Duration::from_secs(30));
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
        client.kill();
        let export_dir = std::fs::read_dir(&d.cache)
            .unwrap()
            .flatten()
            .map(|e| e.path())
            .find(|p| p.join("journal.log").exists())
            .expect("a journal");
        let journal = export_dir.join("journal.log");
        if damage == "flip a byte" {
            let mut bytes = std::fs::read(&journal).unwrap();
            let at = bytes
                .windows(9)
                .position(|w| w == b"NEW BYTES")
                .expect("entry in the journal");
            bytes[at] ^= 0x20;
            std::fs::write(&journal, &bytes).unwrap();
        } else {
            std::fs::remove_file(&journal).unwrap();
        }
        std::fs::remove_file(&flag).unwrap();
        client.restart();
        let t = std::time::Instant::now();
        loop {
            let st = status_json(&d.cache);
            if n(&st, "quarantined_entries") == 1 {
                break;
            }
            assert!(t.elapsed() < Duration::from_secs(30), "{damage}: {st}");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        assert_eq!(
            std::fs::read(d.export.join("disk.img")).unwrap(),
            b"old bytes",
            "{damage}: nothing damaged reached the store"
        );
    }
}

/// Issue 11, item 20: an upload moves the cache to the store's new version of the file
/// (from the upload's own attributes), so the blocks it did not rewrite stay cached and
/// the store is not asked to hash the whole file again (delta revalidation) per batch;
/// the rewritten block is fetched anew, with the uploaded bytes.
#[tokio::test]
async fn an_upload_keeps_the_rest_of_the_file_cached() {
    let d = dirs();
    let mut model = noise(90, 4 << 20);
    std::fs::write(d.export.join("vm.img"), &model).unwrap();
    let client = ClientProc::start(&d.export, &d.cache, 0, &["--write-policy", "back"]);
    let mut nfs = Nfs::mount(client.port).await;
    let f = nfs.lookup(&nfs.root.clone(), "vm.img").await.unwrap();
    assert!(nfs.read_all(&f, 1 << 20).await.unwrap() == model);
    let before = status_json(&d.cache);
    let patch = noise(91, 4096);
    let at = (1 << 20) + 100;
    nfs.write(&f, at as u64, &patch, stable_how::FILE_SYNC)
        .await
        .unwrap();
    model[at..at + patch.len()].copy_from_slice(&patch);
    flush(&d.cache);
    assert!(std::fs::read(d.export.join("vm.img")).unwrap() == model);
    assert!(
        nfs.read_all(&f, 1 << 20).await.unwrap() == model,
        "reads after the upload"
    );
    let after = status_json(&d.cache);
    for k in ["invalidations", "delta_kept_blocks"] {
        assert_eq!(n(&after, k), n(&before, k), "{k}: {after}");
    }
    assert_eq!(
        n(&after, "block_misses") - n(&before, "block_misses"),
        1,
        "only the rewritten block is fetched again: {after}"
    );
}
