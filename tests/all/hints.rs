//! Per-file metadata hints: zero extents answered by the client, stale hints ignored, hint
//! files invisible through the mount.

use std::process::Command;

use nfs3_client::nfs3_types::nfs3::*;

use crate::harness::*;

/// A VM memory-state-like image: 4 KiB pages in runs, ~70% zero, ~20% compressible text,
/// ~10% random.
pub(crate) fn memory_image(seed: u64, pages: usize) -> Vec<u8> {
    let mut out = Vec::with_capacity(pages * 4096);
    let rnd = noise(seed, pages * 4096);
    let mut x = seed | 1;
    let mut p = 0;
    while p < pages {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        let run = (1 + (x >> 8) % 64) as usize;
        let kind = x % 10;
        for _ in 0..run.min(pages - p) {
            match kind {
                0..=6 => out.extend_from_slice(&[0u8; 4096]),
                7 | 8 => out.extend(
                    format!("page {p:08} of a guest's heap, mostly text and small numbers; ")
                        .bytes()
                        .cycle()
                        .take(4096),
                ),
                _ => out.extend_from_slice(&rnd[p * 4096..(p + 1) * 4096]),
            }
            p += 1;
        }
    }
    out
}

pub(crate) fn hint(args: &[&str], path: &std::path::Path) {
    let out = run_ok(
        Command::new(bin("gridvfs-server"))
            .arg("hint")
            .args(args)
            .arg(path),
    );
    println!("{out}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hinted_memory_state_crosses_no_more_than_zstd_of_it() {
    let d = dirs();
    let data = memory_image(5, 256 * 1024); // 1 GiB, as the issue asks
    let path = d.export.join("vm.mem");
    std::fs::write(&path, &data).unwrap();
    hint(&["--policy", "whole"], &path);
    assert!(d.export.join(".vm.mem.gvhint").exists());
    let zstd_len = zstd::bulk::compress(&data, 1).unwrap().len() as u64;

    let client = ClientProc::start(&d.export, &d.cache, 0, &[]);
    let mut nfs = Nfs::mount(client.port).await;
    let fh = nfs.lookup(&nfs.root.clone(), "vm.mem").await.unwrap();
    let got = nfs.read_all(&fh, 1 << 20).await.unwrap();
    assert!(got == data, "bytes differ");
    let st = status_json(&d.cache);
    let crossed = n(&st, "tunnel_bytes_received");
    println!(
        "crossed {crossed} bytes, zstd -1 of the file {zstd_len} ({:.3}×); {st}",
        crossed as f64 / zstd_len as f64
    );
    assert!(
        crossed as f64 <= 1.05 * zstd_len as f64,
        "{crossed} bytes crossed, zstd -1 of the file is {zstd_len}"
    );
    // Every 256 KiB block that is all zeros is answered by the client: none is asked for.
    let zero_blocks = data
        .chunks(256 << 10)
        .filter(|b| b.iter().all(|&x| x == 0))
        .count();
    assert!(zero_blocks > 10);
    assert_eq!(
        n(&st, "hint_zero_bytes"),
        zero_blocks as u64 * (256 << 10),
        "{st}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stale_or_broken_hint_is_ignored() {
    let d = dirs();
    let mut data = vec![0u8; 16 << 20];
    data[..1 << 20].copy_from_slice(&noise(1, 1 << 20));
    let path = d.export.join("disk.img");
    std::fs::write(&path, &data).unwrap();
    hint(&[], &path);
    // The file changes after hinting: what the hint calls zero is not any more.
    std::thread::sleep(std::time::Duration::from_millis(20));
    let fresh = noise(2, 4 << 20);
    data[8 << 20..12 << 20].copy_from_slice(&fresh);
    std::fs::write(&path, &data).unwrap();
    // A second file whose hint file is garbage.
    let other = noise(3, 3 << 20);
    std::fs::write(d.export.join("b.img"), &other).unwrap();
    std::fs::write(
        d.export.join(".b.img.gvhint"),
        b"GVHINT\x00\x01 not postcard",
    )
    .unwrap();

    let client = ClientProc::start(&d.export, &d.cache, 0, &[]);
    let mut nfs = Nfs::mount(client.port).await;
    let root = nfs.root.clone();
    let fh = nfs.lookup(&root, "disk.img").await.unwrap();
    assert!(
        nfs.read_all(&fh, 1 << 20).await.unwrap() == data,
        "stale hint was trusted"
    );
    let fh = nfs.lookup(&root, "b.img").await.unwrap();
    assert!(nfs.read_all(&fh, 1 << 20).await.unwrap() == other);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn holes_are_answered_without_asking_the_store() {
    let d = dirs();
    let f = std::fs::File::create(d.export.join("sparse.img")).unwrap();
    f.set_len(64 << 20).unwrap();
    let mid = noise(4, 1 << 20);
    std::os::unix::fs::FileExt::write_all_at(&f, &mid, 32 << 20).unwrap();
    drop(f);
    let client = ClientProc::start(&d.export, &d.cache, 0, &[]);
    let mut nfs = Nfs::mount(client.port).await;
    let fh = nfs.lookup(&nfs.root.clone(), "sparse.img").await.unwrap();
    let got = nfs.read_all(&fh, 1 << 20).await.unwrap();
    assert_eq!(got.len(), 64 << 20);
    assert!(got[32 << 20..33 << 20] == mid[..]);
    assert!(got[..32 << 20].iter().all(|&b| b == 0) && got[33 << 20..].iter().all(|&b| b == 0));
    let st = status_json(&d.cache);
    // tmpfs/ext4 report holes: all but the written MiB is answered locally.
    assert!(n(&st, "hint_zero_bytes") >= 62 << 20, "{st}");
    println!("{st}");
    assert!(n(&st, "bytes_fetched") <= 2 << 20, "{st}");
}

/// Read-ahead on a warm read after a restart (every block a hit, so the hint was never
/// asked for) used to fetch the holes past the cached run from the store.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn warm_read_ahead_after_a_restart_fetches_no_holes() {
    let d = dirs();
    let f = std::fs::File::create(d.export.join("sparse.img")).unwrap();
    f.set_len(64 << 20).unwrap();
    let mid = noise(5, 1 << 20);
    std::os::unix::fs::FileExt::write_all_at(&f, &mid, 32 << 20).unwrap();
    drop(f);
    let mut client = ClientProc::start(&d.export, &d.cache, 0, &[]);
    for round in ["cold", "warm"] {
        let mut nfs = Nfs::mount(client.port).await;
        let fh = nfs.lookup(&nfs.root.clone(), "sparse.img").await.unwrap();
        for off in (32u64 << 20..33 << 20).step_by(64 << 10) {
            let (got, _) = nfs.read(&fh, off, 64 << 10).await.unwrap();
            let at = (off - (32 << 20)) as usize;
            assert!(got[..] == mid[at..at + (64 << 10)], "{round} read at {off}");
        }
        // Let read-ahead started by the last reads finish.
        tokio::time::sleep(std::time::Duration::from_millis(500)).await;
        let st = status_json(&d.cache);
        if round == "cold" {
            assert!(n(&st, "bytes_fetched") >= 1 << 20, "{st}");
            client.restart();
        } else {
            assert_eq!(n(&st, "block_misses"), 0, "{st}");
            assert_eq!(n(&st, "bytes_fetched"), 0, "holes crossed the link: {st}");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hint_files_are_invisible_through_the_mount() {
    let d = dirs();
    std::fs::write(d.export.join("vm.mem"), noise(6, 1 << 20)).unwrap();
    hint(&[], &d.export.join("vm.mem"));
    let hint_bytes = std::fs::read(d.export.join(".vm.mem.gvhint")).unwrap();
    let client = ClientProc::start(&d.export, &d.cache, 0, &[]);
    let mut nfs = Nfs::mount(client.port).await;
    let root = nfs.root.clone();
    let names = nfs.readdir_names(&root, 4096).await.unwrap();
    assert!(names.iter().any(|n| n == b"vm.mem"));
    assert!(!names.iter().any(|n| n.ends_with(b".gvhint")), "{names:?}");
    let plus = nfs.readdirplus_names(&root, 8192).await.unwrap();
    assert!(plus.iter().any(|e| e.0 == b"vm.mem"));
    assert!(!plus.iter().any(|e| e.0.ends_with(b".gvhint")));
    assert_eq!(
        nfs.lookup(&root, ".vm.mem.gvhint").await.unwrap_err(),
        nfsstat3::NFS3ERR_ACCES
    );
    let e = nfs
        .create(
            &root,
            ".x.gvhint",
            createhow3::UNCHECKED(attrs(Some(0o644))),
        )
        .await
        .unwrap_err();
    assert_eq!(e, nfsstat3::NFS3ERR_ACCES);
    assert_eq!(
        nfs.remove(&root, ".vm.mem.gvhint").await.unwrap_err(),
        nfsstat3::NFS3ERR_ACCES
    );
    assert_eq!(
        nfs.rename(&root, "vm.mem", &root, ".vm.mem.gvhint")
            .await
            .unwrap_err(),
        nfsstat3::NFS3ERR_ACCES
    );
    assert_eq!(
        std::fs::read(d.export.join(".vm.mem.gvhint")).unwrap(),
        hint_bytes
    );
    assert!(!d.export.join(".x.gvhint").exists());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_changed_file_refetches_only_its_changed_blocks() {
    let d = dirs();
    let mut data = noise(7, 64 << 20); // 256 blocks of 256 KiB
    let path = d.export.join("disk.img");
    std::fs::write(&path, &data).unwrap();
    let client = ClientProc::start(&d.export, &d.cache, 0, &["--attr-timeout", "0"]);
    let mut nfs = Nfs::mount(client.port).await;
    let fh = nfs.lookup(&nfs.root.clone(), "disk.img").await.unwrap();
    assert!(nfs.read_all(&fh, 1 << 20).await.unwrap() == data);
    let st = status_json(&d.cache);
    let before = n(&st, "bytes_fetched");
    // Per-file progress: the whole file is here, and it was fetched once.
    let f = &st["files"][0];
    assert_eq!(f["path"], "disk.img", "{st}");
    assert_eq!(n(f, "size"), 64 << 20);
    assert_eq!(n(f, "cached_bytes"), 64 << 20, "{st}");
    assert_eq!(n(f, "fetched_bytes"), 64 << 20, "{st}");

    // The store changes 3 of the 256 blocks (~1%), in place.
    std::thread::sleep(std::time::Duration::from_millis(20));
    let f = std::fs::OpenOptions::new().write(true).open(&path).unwrap();
    for (i, block) in [3usize, 100, 255].into_iter().enumerate() {
        let fresh = noise(100 + i as u64, 4096);
        let at = block * (256 << 10) + 8192;
        data[at..at + 4096].copy_from_slice(&fresh);
        std::os::unix::fs::FileExt::write_all_at(&f, &fresh, at as u64).unwrap();
    }
    drop(f);
    assert!(
        nfs.read_all(&fh, 1 << 20).await.unwrap() == data,
        "changed bytes not seen"
    );
    let st = status_json(&d.cache);
    let refetched = n(&st, "bytes_fetched") - before;
    println!("refetched {refetched} bytes after a 3-block change; {st}");
    assert_eq!(refetched, 3 * (256 << 10), "{st}");
    assert_eq!(n(&st, "delta_kept_blocks"), 253, "{st}");
}

/// Wait until `key` in `status` reaches `want` (prefetches run in the background).
pub(crate) fn wait_for(cache: &std::path::Path, key: &str, want: u64) -> serde_json::Value {
    let t = std::time::Instant::now();
    loop {
        let st = status_json(cache);
        if n(&st, key) >= want {
            return st;
        }
        assert!(
            t.elapsed().as_secs() < 30,
            "{key} stayed below {want}: {st}"
        );
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_recorded_profile_is_prefetched_on_the_next_cold_start() {
    let d = dirs();
    let data = noise(8, 64 << 20);
    std::fs::write(d.export.join("disk.img"), &data).unwrap();
    // A scattered "boot": 24 reads of 64 KiB, no two in one 256 KiB block.
    let pattern: Vec<u64> = (0..24u64)
        .map(|i| ((i * 97) % 256) * (256 << 10) + 4096)
        .collect();

    let client = ClientProc::start(&d.export, &d.cache, 0, &[]);
    client_cmd(&["profile", "start"], &d.cache);
    let mut nfs = Nfs::mount(client.port).await;
    let fh = nfs.lookup(&nfs.root.clone(), "disk.img").await.unwrap();
    for &off in &pattern {
        nfs.read(&fh, off, 65536).await.unwrap();
    }
    let saved = client_cmd(&["profile", "save"], &d.cache);
    assert!(saved.contains("disk.img (24 blocks)"), "{saved}");
    drop(nfs);
    drop(client);
    assert!(d.export.join(".disk.img.gvhint").exists());

    // Cold start with an empty cache: the first read starts the profile's prefetch.
    let cache2 = d.tmp.path().join("cache2");
    std::fs::create_dir(&cache2).unwrap();
    let client = ClientProc::start(&d.export, &cache2, 0, &[]);
    let mut nfs = Nfs::mount(client.port).await;
    let fh = nfs.lookup(&nfs.root.clone(), "disk.img").await.unwrap();
    let (first, _) = nfs.read(&fh, pattern[0], 65536).await.unwrap();
    assert!(first[..] == data[pattern[0] as usize..][..65536]);
    let before = wait_for(&cache2, "prefetched_blocks", 23);
    for &off in &pattern[1..] {
        let (got, _) = nfs.read(&fh, off, 65536).await.unwrap();
        assert!(got[..] == data[off as usize..][..65536]);
    }
    let after = status_json(&cache2);
    println!("before the replay {before}\nafter {after}");
    assert_eq!(
        n(&after, "block_misses"),
        n(&before, "block_misses"),
        "replay missed: {after}"
    );
    assert_eq!(n(&after, "bytes_fetched"), n(&before, "bytes_fetched"));
    assert!(n(&after, "block_hits") >= n(&before, "block_hits") + 23);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_whole_policy_streams_the_file_from_the_first_read() {
    let d = dirs();
    let data = memory_image(9, 8 * 1024); // 32 MiB
    let path = d.export.join("vm.mem");
    std::fs::write(&path, &data).unwrap();
    hint(&["--policy", "whole"], &path);
    let client = ClientProc::start(&d.export, &d.cache, 0, &[]);
    let mut nfs = Nfs::mount(client.port).await;
    let fh = nfs.lookup(&nfs.root.clone(), "vm.mem").await.unwrap();
    let (head, _) = nfs.read(&fh, 0, 4096).await.unwrap();
    assert!(head[..] == data[..4096]);
    let blocks = data
        .chunks(256 << 10)
        .filter(|b| b.iter().any(|&x| x != 0))
        .count() as u64;
    // All non-zero blocks arrive without further reads (the first read's own block may
    // have been fetched by the reader).
    let st = wait_for(&d.cache, "prefetched_blocks", blocks - 1);
    let f = &st["files"][0];
    assert_eq!(f["path"], "vm.mem");
    assert!(
        n(f, "cached_bytes") + n(f, "hint_zero_bytes") >= 1 << 20,
        "{st}"
    );
    let misses = n(&st, "block_misses");
    assert!(nfs.read_all(&fh, 1 << 20).await.unwrap() == data);
    let st = status_json(&d.cache);
    assert_eq!(
        n(&st, "block_misses"),
        misses,
        "blocks were missing after the stream: {st}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn immutable_files_are_never_revalidated() {
    let d = dirs();
    let data = noise(10, 4 << 20);
    std::fs::write(d.export.join("base.img"), &data).unwrap();
    std::fs::write(d.export.join("plain.img"), &data).unwrap();
    hint(&["--immutable"], &d.export.join("base.img"));
    let client = ClientProc::start(&d.export, &d.cache, 0, &["--attr-timeout", "0"]);
    let mut nfs = Nfs::mount(client.port).await;
    let root = nfs.root.clone();
    let mut asked = Vec::new();
    for name in ["base.img", "plain.img"] {
        let fh = nfs.lookup(&root, name).await.unwrap();
        assert!(nfs.read_all(&fh, 1 << 20).await.unwrap() == data);
        let before = n(&status_json(&d.cache), "tunnel_requests");
        for _ in 0..20 {
            nfs.read(&fh, 0, 4096).await.unwrap();
            nfs.getattr(&fh).await.unwrap();
        }
        asked.push(n(&status_json(&d.cache), "tunnel_requests") - before);
    }
    println!(
        "requests for 20 reads + getattrs: immutable {}, plain {}",
        asked[0], asked[1]
    );
    assert_eq!(asked[0], 0, "an immutable file was revalidated");
    assert!(
        asked[1] >= 20,
        "the plain file should be revalidated with --attr-timeout 0"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hints_follow_their_files_and_never_block_rmdir() {
    let d = dirs();
    let dir = d.export.join("vms");
    std::fs::create_dir(&dir).unwrap();
    std::fs::write(dir.join("a.img"), noise(11, 1 << 20)).unwrap();
    hint(&[], &dir.join("a.img"));
    // An orphan: its file was removed on the store, behind the proxies' back.
    std::fs::write(dir.join(".gone.img.gvhint"), b"GVHINT\x00\x01").unwrap();
    let client = ClientProc::start(&d.export, &d.cache, 0, &[]);
    let mut nfs = Nfs::mount(client.port).await;
    let root = nfs.root.clone();
    let vms = nfs.lookup(&root, "vms").await.unwrap();
    nfs.rename(&vms, "a.img", &vms, "b.img").await.unwrap();
    assert!(!dir.join(".a.img.gvhint").exists());
    assert!(
        dir.join(".b.img.gvhint").exists(),
        "the hint did not follow the rename"
    );
    nfs.remove(&vms, "b.img").await.unwrap();
    assert!(
        !dir.join(".b.img.gvhint").exists(),
        "the hint outlived its file"
    );
    nfs.rmdir(&root, "vms").await.unwrap();
    assert!(!dir.exists());
}
