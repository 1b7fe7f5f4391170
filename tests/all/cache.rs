//! The persistent block cache: warm restarts fetch nothing, corruption is caught, changes
//! on the store and writes through the mount are never hidden by stale blocks.

use nfs3_client::nfs3_types::nfs3::*;

use crate::harness::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn warm_restart_fetches_nothing_and_bytes_match() {
    let d = dirs();
    let data = noise(61, 256 << 20);
    std::fs::write(d.export.join("vm.img"), &data).unwrap();
    let mut client = ClientProc::start(&d.export, &d.cache, 0, &[]);
    let mut nfs = Nfs::mount(client.port).await;
    let f = nfs.lookup(&nfs.root.clone(), "vm.img").await.unwrap();
    assert!(nfs.read_all(&f, 1 << 20).await.unwrap() == data);
    let cold = status_json(&d.cache);
    assert_eq!(
        n(&cold, "bytes_fetched"),
        256 << 20,
        "cold read fetches each byte once: {cold}"
    );

    client.restart();
    let mut nfs = Nfs::mount(client.port).await;
    assert!(
        nfs.read_all(&f, 1 << 20).await.unwrap() == data,
        "warm bytes differ"
    );
    let warm = status_json(&d.cache);
    assert_eq!(
        n(&warm, "bytes_fetched"),
        0,
        "warm read after restart fetched data: {warm}"
    );
    assert_eq!(n(&warm, "block_misses"), 0, "{warm}");
    assert!(n(&warm, "block_hits") >= 1024, "{warm}");
    assert!(
        n(&warm, "tunnel_bytes_received") < 1 << 20,
        "only attributes crossed: {warm}"
    );
}

#[tokio::test]
async fn corrupted_cache_blocks_are_refetched_not_served() {
    let d = dirs();
    let data = noise(62, 8 << 20);
    std::fs::write(d.export.join("f"), &data).unwrap();
    let mut client = ClientProc::start(&d.export, &d.cache, 0, &[]);
    let mut nfs = Nfs::mount(client.port).await;
    let f = nfs.lookup(&nfs.root.clone(), "f").await.unwrap();
    assert!(nfs.read_all(&f, 1 << 20).await.unwrap() == data);
    client.kill();
    // Flip bytes in every cached data file, at several places.
    let mut flipped = 0;
    for export in std::fs::read_dir(&d.cache).unwrap().flatten() {
        let blocks = export.path().join("blocks");
        for file in std::fs::read_dir(&blocks).into_iter().flatten().flatten() {
            let mut bytes = std::fs::read(file.path()).unwrap();
            for off in (0..bytes.len()).step_by(1 << 20) {
                bytes[off] ^= 0xff;
                flipped += 1;
            }
            std::fs::write(file.path(), bytes).unwrap();
        }
    }
    assert!(flipped >= 8, "found cached data to corrupt");
    client.restart();
    let mut nfs = Nfs::mount(client.port).await;
    assert!(
        nfs.read_all(&f, 1 << 20).await.unwrap() == data,
        "corrupt cache served wrong bytes"
    );
    let st = status_json(&d.cache);
    assert_eq!(n(&st, "checksum_failures"), flipped, "{st}");
    assert_eq!(
        n(&st, "bytes_fetched"),
        flipped * (256 << 10),
        "only the bad blocks were refetched: {st}"
    );
}

#[tokio::test]
async fn store_changes_and_writes_through_the_mount_are_never_hidden() {
    let d = dirs();
    std::fs::write(d.export.join("f"), noise(63, 1 << 20)).unwrap();
    let client = ClientProc::start(&d.export, &d.cache, 0, &["--attr-timeout", "0.2"]);
    let mut nfs = Nfs::mount(client.port).await;
    let f = nfs.lookup(&nfs.root.clone(), "f").await.unwrap();
    assert_eq!(nfs.read_all(&f, 1 << 20).await.unwrap(), noise(63, 1 << 20));

    // Changed on the store behind the client: seen once the attributes are refreshed.
    std::fs::write(d.export.join("f"), noise(64, 1 << 20)).unwrap();
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    assert_eq!(nfs.read_all(&f, 1 << 20).await.unwrap(), noise(64, 1 << 20));
    assert!(n(&status_json(&d.cache), "invalidations") >= 1);

    // Written through the mount, partly inside blocks and across a block boundary.
    let patch = noise(65, 300_000);
    nfs.write(&f, 100_000, &patch, stable_how::FILE_SYNC)
        .await
        .unwrap();
    let mut want = noise(64, 1 << 20);
    want[100_000..400_000].copy_from_slice(&patch);
    assert_eq!(nfs.read_all(&f, 1 << 20).await.unwrap(), want);
    assert_eq!(std::fs::read(d.export.join("f")).unwrap(), want);
    // A whole aligned block written is served from the cache afterwards.
    let block = noise(66, 256 << 10);
    nfs.write(&f, 512 << 10, &block, stable_how::FILE_SYNC)
        .await
        .unwrap();
    want[512 << 10..768 << 10].copy_from_slice(&block);
    let before = n(&status_json(&d.cache), "bytes_fetched");
    assert_eq!(nfs.read(&f, 512 << 10, 256 << 10).await.unwrap().0, block);
    assert_eq!(
        n(&status_json(&d.cache), "bytes_fetched"),
        before,
        "written block came from the cache"
    );
    assert_eq!(nfs.read_all(&f, 1 << 20).await.unwrap(), want);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sixty_four_concurrent_readers_fetch_each_block_once() {
    let d = dirs();
    let size = 32usize << 20;
    let data = std::sync::Arc::new(noise(67, size));
    std::fs::write(d.export.join("cold.img"), &*data).unwrap();
    let client = ClientProc::start(&d.export, &d.cache, 0, &[]);
    let port = client.port;
    let mut readers = Vec::new();
    for r in 0..64u64 {
        let data = data.clone();
        readers.push(tokio::spawn(async move {
            let mut nfs = Nfs::mount(port).await;
            let f = nfs.lookup(&nfs.root.clone(), "cold.img").await.unwrap();
            // Each reader starts somewhere else and wraps around: maximal overlap.
            let chunk = 1u64 << 20;
            let start = (r * 7 % 32) * chunk;
            for i in 0..32u64 {
                let off = (start + i * chunk) % size as u64;
                let (got, _) = nfs.read(&f, off, chunk as u32).await.unwrap();
                assert!(
                    got[..] == data[off as usize..off as usize + chunk as usize],
                    "reader {r} at {off}"
                );
            }
        }));
    }
    for r in readers {
        r.await.unwrap();
    }
    let st = status_json(&d.cache);
    assert_eq!(
        n(&st, "bytes_fetched"),
        size as u64,
        "each block fetched exactly once: {st}"
    );
}

#[tokio::test]
async fn sequential_reader_gets_read_ahead() {
    let d = dirs();
    let data = noise(68, 16 << 20);
    std::fs::write(d.export.join("seq"), &data).unwrap();
    let client = ClientProc::start(&d.export, &d.cache, 0, &[]);
    let mut nfs = Nfs::mount(client.port).await;
    let f = nfs.lookup(&nfs.root.clone(), "seq").await.unwrap();
    assert!(nfs.read_all(&f, 64 << 10).await.unwrap() == data);
    let st = status_json(&d.cache);
    assert!(
        n(&st, "read_ahead_blocks") >= 32,
        "sequential 64 KiB reads triggered read-ahead: {st}"
    );
    assert_eq!(n(&st, "bytes_fetched"), 16 << 20, "{st}");
}

/// 4 KiB pages in runs: 70% zero, 20% text-like, 10% random (like a VM's memory state).
fn memory_state(pages: usize) -> Vec<u8> {
    let mut out = Vec::with_capacity(pages * 4096);
    let mut i = 0;
    while i < pages {
        let run = 1 + (i * 7919) % 48;
        let kind = ((i * 2_654_435_761usize) >> 7) % 10;
        for p in i..(i + run).min(pages) {
            match kind {
                0..=6 => out.extend(std::iter::repeat_n(0u8, 4096)),
                7 | 8 => out.extend(
                    b"kernel page cache inode slab task 0x0000 "[..]
                        .iter()
                        .cycle()
                        .skip(p % 41)
                        .take(4096),
                ),
                _ => out.extend(noise(p as u64, 4096)),
            }
        }
        i += run;
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn memory_state_crosses_the_tunnel_zero_elided_and_compressed() {
    let d = dirs();
    let mem = memory_state(16_384); // 64 MiB
    std::fs::write(d.export.join("vm.mem"), &mem).unwrap();
    let zstd_size = zstd::bulk::compress(&mem, 1).unwrap().len() as u64;
    let client = ClientProc::start(&d.export, &d.cache, 0, &[]);
    let mut nfs = Nfs::mount(client.port).await;
    let f = nfs.lookup(&nfs.root.clone(), "vm.mem").await.unwrap();
    assert!(
        nfs.read_all(&f, 1 << 20).await.unwrap() == mem,
        "bytes differ"
    );
    let st = status_json(&d.cache);
    let crossed = n(&st, "tunnel_bytes_received");
    println!(
        "64 MiB memory state: {crossed} bytes crossed, zstd -1 of the file is {zstd_size} ({:.3}x)",
        crossed as f64 / zstd_size as f64
    );
    assert!(
        crossed as f64 <= 1.05 * zstd_size as f64,
        "{crossed} crossed vs zstd -1 {zstd_size}: {st}"
    );
    assert!(
        n(&st, "zero_bytes") >= 40 << 20,
        "zero pages left out: {st}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn small_cache_evicts_least_recently_used_and_never_fails_a_read() {
    use std::os::unix::fs::MetadataExt;
    let d = dirs();
    let data = noise(69, 64 << 20);
    std::fs::write(d.export.join("big.img"), &data).unwrap();
    let client = ClientProc::start(&d.export, &d.cache, 0, &["--cache-size", "16M"]);
    let mut nfs = Nfs::mount(client.port).await;
    let f = nfs.lookup(&nfs.root.clone(), "big.img").await.unwrap();
    for round in 0..2 {
        assert!(
            nfs.read_all(&f, 1 << 20).await.unwrap() == data,
            "round {round}"
        );
    }
    let st = status_json(&d.cache);
    assert!(n(&st, "evicted_blocks") >= 200, "{st}");
    // The data files hold about the capacity, not the 64 MiB read (twice).
    let mut used = 0;
    for export in std::fs::read_dir(&d.cache).unwrap().flatten() {
        for file in std::fs::read_dir(export.path().join("blocks"))
            .into_iter()
            .flatten()
            .flatten()
        {
            used += file.metadata().unwrap().blocks() * 512;
        }
    }
    assert!(
        used <= 20 << 20,
        "cache data uses {used} bytes with --cache-size 16M"
    );
    // The most recently read blocks are the ones kept: the file's tail is a hit.
    let before = n(&status_json(&d.cache), "bytes_fetched");
    assert!(nfs.read(&f, (63 << 20) as u64, 1 << 20).await.unwrap().0 == data[63 << 20..]);
    assert_eq!(
        n(&status_json(&d.cache), "bytes_fetched"),
        before,
        "recent blocks were kept"
    );
}

#[tokio::test]
async fn cache_gc_removes_data_of_removed_files_only() {
    let d = dirs();
    std::fs::write(d.export.join("keep"), noise(73, 1 << 20)).unwrap();
    std::fs::write(d.export.join("gone"), noise(74, 1 << 20)).unwrap();
    let client = ClientProc::start(&d.export, &d.cache, 0, &[]);
    let mut nfs = Nfs::mount(client.port).await;
    let root = nfs.root.clone();
    for name in ["keep", "gone"] {
        let f = nfs.lookup(&root, name).await.unwrap();
        nfs.read_all(&f, 1 << 20).await.unwrap();
    }
    let keep = nfs.lookup(&root, "keep").await.unwrap();
    nfs.remove(&root, "gone").await.unwrap();
    let count = || {
        std::fs::read_dir(&d.cache)
            .unwrap()
            .flatten()
            .map(|e| {
                std::fs::read_dir(e.path().join("blocks"))
                    .map(|r| r.count())
                    .unwrap_or(0)
            })
            .sum::<usize>()
    };
    assert_eq!(count(), 2);
    let out = client_cmd(&["cache", "gc"], &d.cache);
    assert!(out.contains("removed 1 cached files"), "{out}");
    assert_eq!(count(), 1);
    // The live file is still served from the cache, while the client runs.
    let before = n(&status_json(&d.cache), "bytes_fetched");
    assert_eq!(
        nfs.read_all(&keep, 1 << 20).await.unwrap(),
        noise(73, 1 << 20)
    );
    assert_eq!(n(&status_json(&d.cache), "bytes_fetched"), before);
}
