//! Many VM hosts from one store (issue 14): a site client serving sealed blocks
//! (`--site-listen`), a real Squid in front of it, hosts taking block payloads through it
//! (`--block-source`). The store's egress is measured as what every session received.

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use gridvfs_testkit::squid::Squid;

use crate::harness::*;
use crate::hints::{hint, memory_image, wait_for};

const BS: usize = 256 << 10;

/// A store with one hinted memory image, a site client in front of it and a Squid.
struct Bed {
    d: Dirs,
    data: Arc<Vec<u8>>,
    site: ClientProc,
    site_cache: PathBuf,
    site_url: String,
    squid: Squid,
}

impl Bed {
    fn start(pages: usize) -> Self {
        Self::start_with(pages, "")
    }

    /// `squid_conf`: lines added to Squid's configuration.
    fn start_with(pages: usize, squid_conf: &str) -> Self {
        let d = dirs();
        let data = memory_image(14, pages);
        let path = d.export.join("vm.mem");
        std::fs::write(&path, &data).unwrap();
        hint(&[], &path);
        let site_cache = d.tmp.path().join("site-cache");
        std::fs::create_dir(&site_cache).unwrap();
        let port = free_port();
        let listen = format!("127.0.0.1:{port}");
        let site = ClientProc::start(&d.export, &site_cache, 0, &["--site-listen", &listen]);
        let squid = Squid::start(
            &d.tmp.path().join("squid"),
            listen.parse().unwrap(),
            squid_conf,
        )
        .expect("a real Squid (apt-get install squid; .ci/run does)");
        Self {
            site_url: format!("http://{listen}"),
            d,
            data: Arc::new(data),
            site,
            site_cache,
            squid,
        }
    }

    /// Blocks of the image that are not all zeros (the hint answers those locally).
    fn data_blocks(&self) -> u64 {
        self.data
            .chunks(BS)
            .filter(|b| b.iter().any(|&x| x != 0))
            .count() as u64
    }

    fn host(&self, i: usize, sources: &[&str]) -> (ClientProc, PathBuf) {
        self.host_with(i, sources, &[])
    }

    fn host_with(&self, i: usize, sources: &[&str], extra: &[&str]) -> (ClientProc, PathBuf) {
        let cache = self.d.tmp.path().join(format!("host{i}"));
        std::fs::create_dir(&cache).unwrap();
        let mut args = extra.to_vec();
        for s in sources {
            args.extend(["--block-source", s]);
        }
        (ClientProc::start(&self.d.export, &cache, 0, &args), cache)
    }

    /// Bytes the store sent: what the site's and every host's session received.
    fn egress(&self, hosts: &[PathBuf]) -> (u64, u64) {
        let site = n(&status_json(&self.site_cache), "tunnel_bytes_received");
        let hosts = hosts
            .iter()
            .map(|h| n(&status_json(h), "tunnel_bytes_received"))
            .sum();
        (site, hosts)
    }
}

/// Read the image whole on every host at once (1 MiB READs); counts MiB read in `progress`.
async fn read_everywhere(ports: Vec<u16>, want: Arc<Vec<u8>>, progress: Arc<AtomicU64>) {
    let mut readers = tokio::task::JoinSet::new();
    for port in ports {
        let (want, progress) = (want.clone(), progress.clone());
        readers.spawn(async move {
            let mut nfs = Nfs::mount(port).await;
            let fh = nfs.lookup(&nfs.root.clone(), "vm.mem").await.unwrap();
            let mut got = Vec::with_capacity(want.len());
            while got.len() < want.len() {
                let (b, _) = nfs
                    .read(&fh, got.len() as u64, 1 << 20)
                    .await
                    .unwrap_or_else(|e| panic!("host on port {port}: READ failed: {e:?}"));
                assert!(!b.is_empty(), "host on port {port}: short file");
                got.extend_from_slice(&b);
                progress.fetch_add(1, Ordering::Relaxed);
            }
            assert!(got == *want, "host on port {port} read other bytes");
        });
    }
    while let Some(r) = readers.join_next().await {
        r.unwrap();
    }
}

fn tier(st: &serde_json::Value, i: usize) -> &serde_json::Value {
    &st["tiers"][i]
}

/// One GET of `path` on loopback `port`: (status line, headers, body).
fn http_get(port: u16, path: &str, headers: &[(&str, &str)]) -> (String, String, Vec<u8>) {
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    let mut req = format!("GET {path} HTTP/1.1\r\nHost: t\r\nConnection: close\r\n");
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    req.push_str("\r\n");
    s.write_all(req.as_bytes()).unwrap();
    let mut all = Vec::new();
    s.read_to_end(&mut all).unwrap();
    let split = all.windows(4).position(|w| w == b"\r\n\r\n").unwrap();
    let head = String::from_utf8_lossy(&all[..split]).into_owned();
    let (status, headers) = head.split_once("\r\n").unwrap_or((&head, ""));
    (status.into(), headers.into(), all[split + 4..].to_vec())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn eight_hosts_read_one_image_through_squid_and_the_store_sends_it_once() {
    let bed = Bed::start(8 * 1024); // 32 MiB
    let data_blocks = bed.data_blocks();
    let url = bed.squid.url();
    let hosts: Vec<(ClientProc, PathBuf)> = (0..8).map(|i| bed.host(i, &[&url])).collect();
    let ports: Vec<u16> = hosts.iter().map(|h| h.0.port).collect();
    read_everywhere(ports, bed.data.clone(), Arc::default()).await;

    let caches: Vec<PathBuf> = hosts.iter().map(|h| h.1.clone()).collect();
    let (site, rest) = bed.egress(&caches);
    let zstd_len = zstd::bulk::compress(&bed.data, 1).unwrap().len();
    println!(
        "store egress: site {site} B, 8 hosts' sessions {rest} B: {:.3}x what one host alone \
         needs; zstd -1 of the image {zstd_len} B; {data_blocks} data blocks",
        (site + rest) as f64 / site as f64
    );
    for c in &caches {
        let st = status_json(c);
        let t = tier(&st, 0);
        println!("host {}: {t}", c.display());
        // Every data block came through the tier, verified; none over the session.
        assert_eq!(n(t, "blocks"), data_blocks, "{st}");
        assert_eq!(n(t, "fallbacks"), 0, "{st}");
        assert_eq!(n(t, "rejected"), 0, "{st}");
        assert_eq!(
            n(&st, "packed_bytes"),
            0,
            "block bytes crossed the session: {st}"
        );
    }
    // The store sent the image about once for all eight hosts.
    assert!(
        rest as f64 <= 0.1 * site as f64,
        "hosts' sessions took {rest} B beside the site's {site} B"
    );
    // Squid collapsed the hosts' concurrent misses: the site sealed each block about once.
    let site_st = status_json(&bed.site_cache);
    let served = n(&site_st["site"], "blocks");
    println!("site: {}", site_st["site"]);
    assert!(served >= data_blocks, "{site_st}");
    assert!(
        served <= data_blocks + data_blocks / 4,
        "the site served {served} blocks for {data_blocks}: Squid did not share them"
    );
    let log = bed.squid.access_log();
    assert!(
        log.contains("HIT/200"),
        "no cache hit in Squid's log:\n{log}"
    );

    // What the tier holds reveals nothing: a cached object, fetched by anyone, is
    // ciphertext under an id that is not the block's hash.
    let line = log
        .lines()
        .find(|l| l.contains("/gridvfs/v1/block/"))
        .expect("a block request in the log");
    let path = line
        .split_whitespace()
        .find(|w| w.contains("/gridvfs/v1/block/"))
        .unwrap();
    let path = &path[path.find("/gridvfs/").unwrap()..];
    let (status, headers, body) = http_get(bed.squid.port, path, &[]);
    assert!(status.contains("200"), "{status}");
    assert!(
        headers.to_ascii_lowercase().contains("immutable"),
        "{headers}"
    );
    let id = path.rsplit('/').next().unwrap();
    for block in bed.data.chunks(BS).filter(|b| b.iter().any(|&x| x != 0)) {
        let hex: String = blake3::hash(block).as_bytes()[..16]
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        assert!(!id.contains(&hex[..12]), "an id shows a block's hash");
    }
    let text = b"of a guest's heap";
    assert!(
        !body.windows(text.len()).any(|w| w == text),
        "plaintext in the tier"
    );
    // The site serves nothing without a matching locator: no header, a wrong id.
    let site_port: u16 = bed.site_url.rsplit(':').next().unwrap().parse().unwrap();
    let (s1, _, _) = http_get(site_port, path, &[]);
    assert!(s1.contains("400"), "{s1}");
    let wrong = format!("/gridvfs/v1/block/{}", "ab".repeat(32));
    let (s2, h2, _) = http_get(
        site_port,
        &wrong,
        &[("x-gridvfs-block", "262144 0 766d2e6d656d")],
    );
    assert!(s2.contains("409") || s2.contains("404"), "{s2}");
    assert!(h2.contains("no-store"), "{h2}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hosts_finish_when_squid_dies_mid_run_and_egress_stays_near_once() {
    let mut bed = Bed::start(8 * 1024); // 32 MiB
    let squid = bed.squid.url();
    // Given only the Squid: the site's answers name the site (x-gridvfs-site), which the
    // hosts then try after the Squid, before the session (as CernVM-FS's proxy list).
    let hosts: Vec<(ClientProc, PathBuf)> = (0..4).map(|i| bed.host(i, &[&squid])).collect();
    let ports: Vec<u16> = hosts.iter().map(|h| h.0.port).collect();
    let progress = Arc::new(AtomicU64::new(0));
    let run = tokio::spawn(read_everywhere(ports, bed.data.clone(), progress.clone()));
    // Kill Squid once the hosts have read about a quarter of the image between them.
    while progress.load(Ordering::Relaxed) < 32 && !run.is_finished() {
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    }
    bed.squid.kill();
    run.await.unwrap();

    let caches: Vec<PathBuf> = hosts.iter().map(|h| h.1.clone()).collect();
    let (site_b, rest) = bed.egress(&caches);
    let ratio = (site_b + rest) as f64 / site_b as f64;
    println!("after Squid died: egress {ratio:.3}x (site {site_b} B, hosts {rest} B)");
    let mut via_site = 0;
    for c in &caches {
        let st = status_json(c);
        println!(
            "host {}: squid {} site {}",
            c.display(),
            tier(&st, 0),
            tier(&st, 1)
        );
        assert_eq!(tier(&st, 1)["url"], bed.site_url.as_str(), "{st}");
        assert_eq!(n(tier(&st, 0), "rejected") + n(tier(&st, 1), "rejected"), 0);
        via_site += n(tier(&st, 1), "blocks");
    }
    assert!(via_site > 0, "no host went on to the site after Squid died");
    assert!(
        ratio <= 1.3,
        "store egress {ratio:.3}x with Squid dead mid-run"
    );
}

/// Flip a byte in the body of every other object Squid keeps on disk.
fn corrupt_squid_objects(dir: &Path) -> usize {
    let mut flipped = 0;
    let mut files: Vec<PathBuf> = Vec::new();
    let mut stack = vec![dir.join("cache")];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap().flatten() {
            let p = e.path();
            let name = e.file_name().to_string_lossy().into_owned();
            if p.is_dir() {
                stack.push(p);
            } else if name.len() == 8 && name.bytes().all(|c| c.is_ascii_hexdigit()) {
                // A swap file (object); not swap.state, Squid's own index.
                files.push(p);
            }
        }
    }
    files.sort();
    for p in files.iter().step_by(2) {
        let mut b = std::fs::read(p).unwrap();
        let last = b.len() - 1;
        b[last] ^= 0x01; // the payload's tag is its last byte
        std::fs::write(p, b).unwrap();
        flipped += 1;
    }
    flipped
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn blocks_a_cache_corrupts_are_detected_refetched_and_counted() {
    // A Squid that keeps objects on disk only, where they are then corrupted.
    let bed = Bed::start_with(4 * 1024, "cache_mem 0 MB\n"); // 16 MiB
    let data_blocks = bed.data_blocks();
    let url = bed.squid.url();
    let (first, c1) = bed.host(0, &[&url]);
    read_everywhere(vec![first.port], bed.data.clone(), Arc::default()).await;
    assert_eq!(n(tier(&status_json(&c1), 0), "blocks"), data_blocks);
    std::thread::sleep(std::time::Duration::from_millis(500));
    let flipped = corrupt_squid_objects(&bed.squid.dir);
    assert!(flipped > 0, "Squid kept no block on disk");

    let (second, c2) = bed.host(1, &[&url]);
    read_everywhere(vec![second.port], bed.data.clone(), Arc::default()).await;
    let st = status_json(&c2);
    println!("flipped {flipped} objects; second host {}", tier(&st, 0));
    let t = tier(&st, 0);
    // Every corrupted object was caught; the reload it asked for (`no-cache`: Squid goes
    // back to the site) verified, so no block had to come over the session.
    assert_eq!(n(t, "rejected"), flipped as u64, "{st}");
    assert_eq!(n(t, "fallbacks"), 0, "{st}");
    assert_eq!(n(t, "blocks"), data_blocks, "{st}");

    // Squid replaced its copies: a third host finds the tier whole again.
    let (third, c3) = bed.host(2, &[&url]);
    read_everywhere(vec![third.port], bed.data.clone(), Arc::default()).await;
    let st = status_json(&c3);
    assert_eq!(n(tier(&st, 0), "rejected"), 0, "{st}");
    assert_eq!(n(tier(&st, 0), "blocks"), data_blocks, "{st}");

    // A hostile cache that answers every request, reloads included, with garbage: it is
    // skipped after its first bad reload, every block comes over the session, and the
    // VM's reads see the right bytes.
    let hostile = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let hostile_url = format!("http://{}", hostile.local_addr().unwrap());
    std::thread::spawn(move || {
        for conn in hostile.incoming() {
            let Ok(mut conn) = conn else { continue };
            std::thread::spawn(move || {
                let mut buf = [0u8; 4096];
                let mut seen = Vec::new();
                while let Ok(k) = conn.read(&mut buf) {
                    if k == 0 {
                        return;
                    }
                    seen.extend_from_slice(&buf[..k]);
                    while let Some(end) = seen.windows(4).position(|w| w == b"\r\n\r\n") {
                        seen.drain(..end + 4);
                        let body = b"GVB1\x01 not a sealed block, but it looks like one .....";
                        let head =
                            format!("HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n", body.len());
                        if conn.write_all(head.as_bytes()).is_err() || conn.write_all(body).is_err()
                        {
                            return;
                        }
                    }
                }
            });
        }
    });
    let (fourth, c4) = bed.host(3, &[&hostile_url]);
    read_everywhere(vec![fourth.port], bed.data.clone(), Arc::default()).await;
    let st = status_json(&c4);
    println!("behind a hostile cache: {}", tier(&st, 0));
    assert_eq!(n(tier(&st, 0), "blocks"), 0, "{st}");
    assert!(n(tier(&st, 0), "rejected") >= 1, "{st}");
    assert!(
        n(tier(&st, 0), "rejected") < data_blocks,
        "not skipped: {st}"
    );
    assert_eq!(n(tier(&st, 0), "fallbacks"), data_blocks, "{st}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hosts_ride_a_site_restart_mid_run() {
    let mut bed = Bed::start(8 * 1024); // 32 MiB
    let url = bed.squid.url();
    let hosts: Vec<(ClientProc, PathBuf)> = (0..4).map(|i| bed.host(i, &[&url])).collect();
    let ports: Vec<u16> = hosts.iter().map(|h| h.0.port).collect();
    let progress = Arc::new(AtomicU64::new(0));
    let run = tokio::spawn(read_everywhere(ports, bed.data.clone(), progress.clone()));
    while progress.load(Ordering::Relaxed) < 32 && !run.is_finished() {
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    }
    // kill -9 the site; it comes back a second later with its cache (same port).
    bed.site.kill();
    tokio::time::sleep(std::time::Duration::from_secs(1)).await;
    bed.site.restart();
    run.await.unwrap();

    let caches: Vec<PathBuf> = hosts.iter().map(|h| h.1.clone()).collect();
    let (site_b, rest) = bed.egress(&caches);
    let mut fallbacks = 0;
    for c in &caches {
        let st = status_json(c);
        println!("host {}: {}", c.display(), tier(&st, 0));
        assert_eq!(n(tier(&st, 0), "rejected"), 0, "{st}");
        fallbacks += n(tier(&st, 0), "fallbacks");
    }
    // The restarted site's counters start again: egress is taken from the hosts' side.
    println!(
        "site restarted mid-run: {fallbacks} blocks over the hosts' sessions meanwhile, \
         hosts' sessions {rest} B, the restarted site's {site_b} B"
    );
    // Every host finished with the right bytes (read_everywhere checked them) and no NFS
    // error; what the tier could not give while the site was away came over the sessions.
    assert!(fallbacks > 0, "the site's restart went unnoticed");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_first_hosts_boot_profile_is_shared_and_later_hosts_prefetch_it_through_squid() {
    let bed = Bed::start(8 * 1024); // 32 MiB
    let url = bed.squid.url();
    // A scattered "boot" over the image's data blocks: 16 reads of 64 KiB.
    let pattern: Vec<u64> = bed
        .data
        .chunks(BS)
        .enumerate()
        .filter(|(_, b)| b.iter().any(|&x| x != 0))
        .map(|(i, _)| i as u64 * BS as u64 + 8192)
        .rev()
        .step_by(3)
        .take(16)
        .collect();
    let read_pattern = |port: u16| {
        let (pattern, data) = (pattern.clone(), bed.data.clone());
        async move {
            let mut nfs = Nfs::mount(port).await;
            let fh = nfs.lookup(&nfs.root.clone(), "vm.mem").await.unwrap();
            for &off in &pattern {
                let (got, _) = nfs.read(&fh, off, 65536).await.unwrap();
                assert!(got[..] == data[off as usize..][..65536]);
            }
        }
    };
    // The first host boots: its first second of reads becomes the image's profile.
    let (first, c1) = bed.host_with(0, &[&url], &["--fill", "off", "--share-profiles", "1"]);
    read_pattern(first.port).await;
    let st = wait_for(&c1, "profiles_shared", 1);
    println!("first host: {}", tier(&st, 0));
    let site_before = n(&status_json(&bed.site_cache)["site"], "blocks");

    // A later host's first read starts the profile's prefetch, through Squid.
    let (later, c2) = bed.host_with(1, &[&url], &["--fill", "off"]);
    let mut nfs = Nfs::mount(later.port).await;
    let fh = nfs.lookup(&nfs.root.clone(), "vm.mem").await.unwrap();
    nfs.read(&fh, pattern[0], 65536).await.unwrap();
    let before = wait_for(&c2, "prefetched_blocks", pattern.len() as u64 - 1);
    read_pattern(later.port).await;
    let after = status_json(&c2);
    println!("later host, after its boot: {after}");
    assert_eq!(
        n(&after, "block_misses"),
        n(&before, "block_misses"),
        "{after}"
    );
    assert_eq!(
        n(tier(&after, 0), "blocks"),
        pattern.len() as u64,
        "{after}"
    );
    assert_eq!(
        n(&after, "packed_bytes"),
        0,
        "block bytes crossed the session: {after}"
    );
    // Squid already had every block of the profile: the site was not asked again.
    let site_after = n(&status_json(&bed.site_cache)["site"], "blocks");
    assert_eq!(site_after, site_before);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_chain_of_two_squids_carries_the_blocks_and_the_locator() {
    // host -> rack Squid -> site Squid -> site: the locator header must survive each hop.
    let bed = Bed::start(4 * 1024); // 16 MiB
    let data_blocks = bed.data_blocks();
    let parent: std::net::SocketAddr = format!("127.0.0.1:{}", bed.squid.port).parse().unwrap();
    let rack = Squid::start(&bed.d.tmp.path().join("rack-squid"), parent, "").unwrap();
    let (via_rack, c1) = bed.host(0, &[&rack.url()]);
    let (via_site_squid, c2) = bed.host(1, &[&bed.squid.url()]);
    read_everywhere(vec![via_rack.port], bed.data.clone(), Arc::default()).await;
    read_everywhere(vec![via_site_squid.port], bed.data.clone(), Arc::default()).await;
    for c in [&c1, &c2] {
        let st = status_json(c);
        assert_eq!(n(tier(&st, 0), "blocks"), data_blocks, "{st}");
        assert_eq!(n(tier(&st, 0), "fallbacks"), 0, "{st}");
    }
    // The second host's blocks were the site Squid's hits: the site sealed each once.
    let site = status_json(&bed.site_cache);
    assert_eq!(n(&site["site"], "blocks"), data_blocks, "{site}");
    assert!(rack.access_log().contains("/gridvfs/v1/block/"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_changed_image_is_served_by_its_new_ids_and_its_unchanged_blocks_stay_shared() {
    let mut bed = Bed::start(4 * 1024); // 16 MiB
    let url = bed.squid.url();
    let (first, _c1) = bed.host(0, &[&url]);
    read_everywhere(vec![first.port], bed.data.clone(), Arc::default()).await;
    let served_before = n(&status_json(&bed.site_cache)["site"], "blocks");

    // The image is updated in place on the store (3 blocks rewritten) and hinted again.
    std::thread::sleep(std::time::Duration::from_millis(1100));
    let mut data = (*bed.data).clone();
    let changed = [5usize, 20, 40];
    for &b in &changed {
        for (i, x) in data[b * BS..(b + 1) * BS].iter_mut().enumerate() {
            // Different in each block (identical blocks would share one id and object).
            *x = (i as u8).wrapping_mul(31) ^ b as u8;
        }
    }
    let path = bed.d.export.join("vm.mem");
    std::fs::write(&path, &data).unwrap();
    hint(&[], &path);
    bed.data = Arc::new(data);

    // A new host gets the new manifest; the site, which still remembers the old one,
    // asks the store again for ids it does not know, and serves them.
    let (second, c2) = bed.host(1, &[&url]);
    read_everywhere(vec![second.port], bed.data.clone(), Arc::default()).await;
    let st = status_json(&c2);
    println!("after the change: {}", tier(&st, 0));
    assert_eq!(n(tier(&st, 0), "fallbacks"), 0, "{st}");
    assert_eq!(n(tier(&st, 0), "blocks"), bed.data_blocks(), "{st}");
    // Only the changed blocks were new to the site: the rest were Squid's hits.
    let served = n(&status_json(&bed.site_cache)["site"], "blocks") - served_before;
    assert_eq!(served, changed.len() as u64);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hosts_read_through_nginx_in_squids_place() {
    let bed = Bed::start(4 * 1024); // 16 MiB
    let data_blocks = bed.data_blocks();
    let site: std::net::SocketAddr = bed.site_url.trim_start_matches("http://").parse().unwrap();
    let nginx = gridvfs_testkit::nginx::Nginx::start(&bed.d.tmp.path().join("nginx"), site)
        .expect("a real nginx (apt-get install nginx-light; .ci/run does)");
    let hosts: Vec<(ClientProc, PathBuf)> = (0..4).map(|i| bed.host(i, &[&nginx.url()])).collect();
    read_everywhere(
        hosts.iter().map(|h| h.0.port).collect(),
        bed.data.clone(),
        Arc::default(),
    )
    .await;
    for (_, c) in &hosts {
        let st = status_json(c);
        assert_eq!(n(tier(&st, 0), "blocks"), data_blocks, "{st}");
        assert_eq!(n(tier(&st, 0), "fallbacks"), 0, "{st}");
    }
    // proxy_cache_lock collapsed the concurrent misses: the site sealed each block once.
    let site_st = status_json(&bed.site_cache);
    assert_eq!(n(&site_st["site"], "blocks"), data_blocks, "{site_st}");
    assert!(nginx.access_log().contains("/gridvfs/v1/block/"));
}
