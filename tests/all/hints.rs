//! Per-file metadata hints: zero extents answered by the client, stale hints ignored, hint
//! files invisible through the mount.

use std::process::Command;

use nfs3_client::nfs3_types::nfs3::*;

use crate::harness::*;

/// A VM memory-state-like image: 4 KiB pages in runs, ~70% zero, ~20% compressible text,
/// ~10% random.
fn memory_image(seed: u64, pages: usize) -> Vec<u8> {
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

fn hint(args: &[&str], path: &std::path::Path) {
    let out = Command::new(bin("gridvfs-server"))
        .arg("hint")
        .args(args)
        .arg(path)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    println!("{}", String::from_utf8_lossy(&out.stdout));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hinted_memory_state_crosses_no_more_than_zstd_of_it() {
    let d = dirs();
    let data = memory_image(5, 64 * 1024); // 256 MiB
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
