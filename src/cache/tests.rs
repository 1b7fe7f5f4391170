//! The block cache and write-back against an in-process store with a fault plan: an upload
//! cut at every one of its requests (retried in process) and a client killed at every one
//! (reopened from its journal), and the stale-data race of issue 11 item 14 played out in
//! a fixed order. Deterministic: faults are keyed to requests, not time.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;

use super::{DataPath, FillPolicy, Index, WritePolicy, validator};
use crate::proto::{Attr, FileRef, Request, Response};
use crate::remote::{RemoteStore, Timeouts};
use crate::tunnel::Remote;
use crate::tunnel::memory::{Fault, MemoryStore, When};

const BS: u64 = 64 * 1024;

/// A store directory served in process, and a cache directory beside it.
struct Kit {
    store_dir: tempfile::TempDir,
    cache_dir: tempfile::TempDir,
    store: MemoryStore,
}

/// One client over the kit: its remote, index and data path.
struct Client {
    remote: Arc<RemoteStore>,
    index: Arc<Index>,
    data: Arc<DataPath>,
}

impl Kit {
    fn new() -> Self {
        let store_dir = tempfile::tempdir().unwrap();
        let store = MemoryStore::open(store_dir.path()).unwrap();
        Self {
            store_dir,
            cache_dir: tempfile::tempdir().unwrap(),
            store,
        }
    }

    async fn client(&self, policy: WritePolicy) -> Client {
        self.client_filling(policy, FillPolicy::Off).await
    }

    /// With background fill; the sweep runs over this in-process store (whose round
    /// trips are µs) as it would over a WAN.
    async fn client_filling(&self, policy: WritePolicy, fill: FillPolicy) -> Client {
        self.client_tuned(policy, |d| d.with_fill(fill).sweeping_any_link())
            .await
    }

    async fn client_tuned(
        &self,
        policy: WritePolicy,
        tune: impl FnOnce(DataPath) -> DataPath,
    ) -> Client {
        let remote = RemoteStore::connect_with(
            Remote::Memory(self.store.clone()),
            Timeouts {
                reconnect: Duration::from_secs(10),
                ..Timeouts::default()
            },
        )
        .await
        .unwrap();
        let index = Arc::new(Index::open(&self.cache_dir.path().join("index.sqlite")).unwrap());
        let data = Arc::new(tune(
            DataPath::new(
                remote.clone(),
                index.clone(),
                self.cache_dir.path().to_path_buf(),
                BS,
                64 << 20,
                policy,
            )
            .unwrap(),
        ));
        Client {
            remote,
            index,
            data,
        }
    }
}

impl Client {
    async fn attr(&self, rel: &str) -> Attr {
        match self
            .remote
            .call(Request::Getattr { file: at(rel) }, Bytes::new())
            .await
        {
            Ok((Response::Attr(a), _)) => a,
            other => panic!("getattr {rel}: {other:?}"),
        }
    }

    async fn id(&self, rel: &str) -> (u64, Attr) {
        let a = self.attr(rel).await;
        (self.index.id_for(rel.as_bytes(), a.ident).unwrap(), a)
    }

    /// Start the uploader; the handle aborts it (a killed client).
    fn upload(&self) -> tokio::task::JoinHandle<()> {
        let wb = self.data.writeback.clone().expect("write-back");
        tokio::spawn(wb.run(self.remote.clone()))
    }

    async fn drained(&self) {
        tokio::time::timeout(Duration::from_secs(30), self.data.drain())
            .await
            .expect("the upload finished")
            .expect("nothing kept back");
        assert_eq!(
            self.data.writeback.as_ref().unwrap().pending().unwrap().0,
            0
        );
    }
}

fn at(rel: &str) -> FileRef {
    FileRef {
        path: rel.as_bytes().to_vec(),
        ident: None,
    }
}

fn pattern(len: usize, seed: u8) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed))
        .collect()
}

/// Writes a VM might make: disjoint ones (uploaded in parallel) or, with `overlap`, some
/// over others (uploaded in order), one past the end of the file.
fn writes(overlap: bool) -> Vec<(u64, Vec<u8>)> {
    let mut w = vec![
        (0, pattern(4096, 1)),
        (3 * BS + 100, pattern(20_000, 2)),
        (5 * BS, pattern(2 * BS as usize, 3)),
        (9 * BS + 7, pattern(5000, 4)), // past the end: the file grows
    ];
    if overlap {
        w.push((1000, pattern(8192, 5)));
        w.push((5 * BS + 10, pattern(300, 6)));
    }
    w
}

const INITIAL: usize = 8 * BS as usize + 1234;

fn expected(w: &[(u64, Vec<u8>)]) -> Vec<u8> {
    let mut out = pattern(INITIAL, 0);
    for (off, d) in w {
        let end = *off as usize + d.len();
        if out.len() < end {
            out.resize(end, 0);
        }
        out[*off as usize..end].copy_from_slice(d);
    }
    out
}

/// A kit with the image on the store and `w` acknowledged into the journal (no upload).
async fn journaled(w: &[(u64, Vec<u8>)]) -> (Kit, Client) {
    let kit = Kit::new();
    std::fs::write(kit.store_dir.path().join("vm.img"), pattern(INITIAL, 0)).unwrap();
    let c = kit.client(WritePolicy::Back).await;
    let (id, attr) = c.id("vm.img").await;
    // A cached read first, so the upload also has blocks to move to the new version.
    let (got, ..) = c.data.read(id, at("vm.img"), attr, 0, 8192).await.unwrap();
    assert!(got[..] == pattern(INITIAL, 0)[..8192]);
    for (off, d) in w {
        c.data
            .write(
                id,
                at("vm.img"),
                Some(attr),
                *off,
                Bytes::from(d.clone()),
                false,
            )
            .await
            .unwrap();
    }
    (kit, c)
}

fn on_store(kit: &Kit) -> Vec<u8> {
    std::fs::read(kit.store_dir.path().join("vm.img")).unwrap()
}

/// Requests a clean upload of `w` makes.
async fn upload_steps(w: &[(u64, Vec<u8>)]) -> u64 {
    let (kit, c) = journaled(w).await;
    let base = kit.store.faults.requests();
    let task = c.upload();
    c.drained().await;
    task.abort();
    assert!(on_store(&kit) == expected(w), "a clean upload");
    kit.store.faults.requests() - base
}

#[tokio::test]
async fn an_upload_cut_at_any_request_lands_exactly() {
    for overlap in [false, true] {
        let w = writes(overlap);
        let steps = upload_steps(&w).await;
        assert!(steps >= 4, "GETATTR, writes, COMMIT: {steps}");
        eprintln!(
            "overlap {overlap}: an upload of {} writes takes {steps} requests",
            w.len()
        );
        for k in 1..=steps {
            for fault in [Fault::CutBefore, Fault::LoseReply] {
                let (kit, c) = journaled(&w).await;
                let base = kit.store.faults.requests();
                kit.store.faults.on(When::Nth(base + k), fault);
                let task = c.upload();
                c.drained().await;
                task.abort();
                assert_eq!(kit.store.faults.fired().len(), 1, "step {k} {fault:?}");
                assert!(
                    on_store(&kit) == expected(&w),
                    "overlap {overlap}, {fault:?} at request {k} of {steps}"
                );
                // And the cache reads the store's new bytes (or the overlay), not old ones.
                let (id, attr) = c.id("vm.img").await;
                let (got, ..) = c.data.read(id, at("vm.img"), attr, 0, 16384).await.unwrap();
                assert!(got[..] == expected(&w)[..16384], "read after step {k}");
            }
        }
    }
}

#[tokio::test]
async fn a_client_killed_at_any_request_of_an_upload_resumes_from_its_journal() {
    for overlap in [false, true] {
        let w = writes(overlap);
        let steps = upload_steps(&w).await;
        for k in 1..=steps {
            // CutBefore: killed before the request left. HoldReply: the store carried it
            // out and the client died before hearing back.
            for fault in [Fault::CutBefore, Fault::HoldReply] {
                let (kit, c) = journaled(&w).await;
                let base = kit.store.faults.requests();
                kit.store.faults.on(When::Nth(base + k), fault);
                let task = c.upload();
                let deadline = std::time::Instant::now() + Duration::from_secs(10);
                while kit.store.faults.fired().is_empty() {
                    assert!(std::time::Instant::now() < deadline, "step {k} never came");
                    tokio::time::sleep(Duration::from_millis(2)).await;
                }
                task.abort();
                let _ = task.await;
                kit.store.faults.cut_all();
                drop(c);
                // A new process on the same cache directory.
                let c = kit.client(WritePolicy::Back).await;
                let task = c.upload();
                c.drained().await;
                task.abort();
                assert!(
                    on_store(&kit) == expected(&w),
                    "overlap {overlap}, killed at request {k} of {steps} ({fault:?})"
                );
            }
        }
    }
}

/// Issue 11, item 14: blocks fetched under one version of a file arrive after a reader
/// of the next version revalidated it; they must not be cached under the new version.
#[tokio::test]
async fn blocks_fetched_under_an_old_version_are_never_served_for_the_new_one() {
    let kit = Kit::new();
    let img = kit.store_dir.path().join("vm.img");
    let (v1, v2) = (pattern(4 * BS as usize, 1), pattern(4 * BS as usize, 2));
    std::fs::write(&img, &v1).unwrap();
    let c = kit.client(WritePolicy::Through).await;
    let (id, attr1) = c.id("vm.img").await;
    // The first fetch of the file: its reply (v1's bytes) is held; meanwhile the store's
    // file becomes v2 (a new mtime, as another writer would make it).
    let changed = img.clone();
    let v2_on_store = v2.clone();
    kit.store.faults.on_first_then(
        |r| matches!(r, Request::Read { .. } | Request::ReadPacked { .. }),
        Fault::HoldReply,
        move || {
            std::thread::sleep(Duration::from_millis(20)); // a later mtime
            std::fs::write(&changed, &v2_on_store).unwrap();
        },
    );
    let old_reader = {
        let data = c.data.clone();
        tokio::spawn(async move { data.read(id, at("vm.img"), attr1, 0, 4096).await })
    };
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while kit.store.faults.fired().is_empty() {
        assert!(
            std::time::Instant::now() < deadline,
            "the fetch never went out"
        );
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    // A reader of the new version revalidates the file (its validator moves to v2) and
    // then waits for the block the old reader is fetching.
    // (The store's file is rewritten by the fault's hook, which may still be running.)
    let attr2 = loop {
        let a = c.attr("vm.img").await;
        if validator(&a) != validator(&attr1) {
            break a;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the file never changed"
        );
        tokio::time::sleep(Duration::from_millis(2)).await;
    };
    let new_reader = {
        let data = c.data.clone();
        tokio::spawn(async move { data.read(id, at("vm.img"), attr2, 0, 4096).await })
    };
    while c.index.validator(id).unwrap().as_deref() != Some(&validator(&attr2)[..]) {
        assert!(std::time::Instant::now() < deadline, "never revalidated");
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    kit.store.faults.release();
    let (old, ..) = old_reader.await.unwrap().unwrap();
    assert!(
        old[..] == v1[..4096],
        "the old read gets the bytes it asked for"
    );
    let (new, ..) = new_reader.await.unwrap().unwrap();
    assert!(
        new[..] == v2[..4096],
        "the new version's reader never sees v1"
    );
    let (again, ..) = c.data.read(id, at("vm.img"), attr2, 0, 4096).await.unwrap();
    assert!(again[..] == v2[..4096], "nor does a later hit");
}

/// A sparse image on the store: data in [0, 4 MiB) and [8, 12 MiB), a hole between.
fn sparse_image(kit: &Kit) -> Vec<u8> {
    use std::os::unix::fs::FileExt;
    let mib = 1 << 20;
    let mut want = vec![0u8; 12 * mib];
    want[..4 * mib].copy_from_slice(&pattern(4 * mib, 7));
    want[8 * mib..].copy_from_slice(&pattern(4 * mib, 9));
    let f = std::fs::File::create(kit.store_dir.path().join("vm.img")).unwrap();
    f.set_len(12 * mib as u64).unwrap();
    f.write_all_at(&want[..4 * mib], 0).unwrap();
    f.write_all_at(&want[8 * mib..], 8 * mib as u64).unwrap();
    want
}

/// Blocks of file `id` in the index.
fn cached(c: &Client, id: u64) -> Vec<u64> {
    let mut b: Vec<u64> = c
        .index
        .blocks(id, 0, u64::MAX >> 1)
        .unwrap()
        .into_iter()
        .map(|(b, _)| b)
        .collect();
    b.sort_unstable();
    b
}

/// Issue 12: one 4 KiB demand read of a cold sparse image brings in, in the background,
/// every non-zero block of it and nothing else: the hole (known from the store's
/// automatic hint) never crosses, no block is fetched twice, and the whole image then
/// reads back without asking the store anything.
#[tokio::test]
async fn background_fill_brings_in_every_nonzero_block_once() {
    let kit = Kit::new();
    let want = sparse_image(&kit);
    let c = kit
        .client_filling(WritePolicy::Through, FillPolicy::All)
        .await;
    let (id, attr) = c.id("vm.img").await;
    let (got, ..) = c
        .data
        .read(id, at("vm.img"), attr, 1 << 20, 4096)
        .await
        .unwrap();
    assert!(got[..] == want[1 << 20..(1 << 20) + 4096]);
    let data_blocks: Vec<u64> = (0..64).chain(128..192).collect();
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while cached(&c, id) != data_blocks {
        assert!(
            std::time::Instant::now() < deadline,
            "the fill never completed: {} of 128 blocks",
            cached(&c, id).len()
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let st = &c.data.stats;
    assert_eq!(
        st.bytes_fetched.load(std::sync::atomic::Ordering::Relaxed),
        8 << 20,
        "the data once, the hole never"
    );
    let filled = st.filled_blocks.load(std::sync::atomic::Ordering::Relaxed);
    assert_eq!(
        filled, 127,
        "all but the demand read's block came from the fill"
    );
    let asked = kit.store.faults.requests();
    let mut off = 0;
    while off < want.len() as u64 {
        let (got, ..) = c
            .data
            .read(id, at("vm.img"), attr, off, 1 << 20)
            .await
            .unwrap();
        assert!(got[..] == want[off as usize..][..1 << 20], "at {off}");
        off += 1 << 20;
    }
    assert_eq!(
        kit.store.faults.requests(),
        asked,
        "a filled image needs no store"
    );
}

/// `--fill near` brings in the 1 MiB before a miss and the 4 MiB after it (up to the
/// hole, which stays local) and nothing further; so does `--fill all` over a link faster than 5 ms (its sweep
/// would cost more CPU than the round trips it saves); `--fill off` nothing but the
/// block read.
#[tokio::test]
async fn near_fill_stays_next_to_the_miss_and_off_fills_nothing() {
    for (fill, sweep_any, want_blocks) in [
        (FillPolicy::Near, true, (0..64).collect::<Vec<u64>>()),
        (FillPolicy::All, false, (0..64).collect()),
        (FillPolicy::Off, true, vec![16]),
    ] {
        let kit = Kit::new();
        sparse_image(&kit);
        let c = kit
            .client_tuned(WritePolicy::Through, |d| {
                let d = d.with_fill(fill);
                if sweep_any { d.sweeping_any_link() } else { d }
            })
            .await;
        let (id, attr) = c.id("vm.img").await;
        c.data
            .read(id, at("vm.img"), attr, 1 << 20, 4096)
            .await
            .unwrap();
        let deadline = std::time::Instant::now() + Duration::from_secs(20);
        while cached(&c, id) != want_blocks {
            assert!(
                std::time::Instant::now() < deadline,
                "{fill:?}: {:?}",
                cached(&c, id)
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        // And no more comes later.
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert_eq!(cached(&c, id), want_blocks, "{fill:?}");
    }
}
