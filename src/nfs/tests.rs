//! The front's namespace driven directly (no NFS socket) against the in-process store
//! and its fault plan: handles that follow renames (also when the RENAME's reply was
//! lost), handles that turn stale when their file is replaced on the store, and the
//! attribute refresh of hard links after a namespace change (issue 11, item 19).

use std::sync::Arc;
use std::time::Duration;

use nfs3_server::nfs3_types::nfs3::{filename3, nfsstat3, sattr3};
use nfs3_server::vfs::{FileHandleU64, NfsFileSystem, NfsReadFileSystem};

use super::fs::Front;
use crate::cache::{DataPath, Index, WritePolicy};
use crate::proto::Request;
use crate::remote::{RemoteStore, Timeouts};
use crate::tunnel::Remote;
use crate::tunnel::memory::{Fault, MemoryStore};

struct Kit {
    store_dir: tempfile::TempDir,
    _cache_dir: tempfile::TempDir,
    store: MemoryStore,
    front: Front,
}

async fn kit(attr_timeout: Duration) -> Kit {
    let store_dir = tempfile::tempdir().unwrap();
    let cache_dir = tempfile::tempdir().unwrap();
    let store = MemoryStore::open(store_dir.path()).unwrap();
    let remote = RemoteStore::connect_with(
        Remote::Memory(store.clone()),
        Timeouts {
            reconnect: Duration::from_secs(10),
            ..Timeouts::default()
        },
    )
    .await
    .unwrap();
    let index = Arc::new(Index::open(&cache_dir.path().join("index.sqlite")).unwrap());
    let data = Arc::new(
        DataPath::new(
            remote.clone(),
            index.clone(),
            cache_dir.path().to_path_buf(),
            64 * 1024,
            64 << 20,
            WritePolicy::Through,
        )
        .unwrap(),
    );
    let front = Front::new(index, remote, data, attr_timeout).await.unwrap();
    Kit {
        store_dir,
        _cache_dir: cache_dir,
        store,
        front,
    }
}

fn name(n: &str) -> filename3<'static> {
    filename3::from(n.as_bytes().to_vec())
}

impl Kit {
    async fn lookup(&self, dir: &FileHandleU64, n: &str) -> Result<FileHandleU64, nfsstat3> {
        self.front.lookup(dir, &name(n)).await
    }

    async fn read_all(&self, fh: &FileHandleU64) -> Result<Vec<u8>, nfsstat3> {
        let (data, eof) = self.front.read(fh, 0, 1 << 20).await?;
        assert!(eof);
        Ok(data)
    }
}

#[tokio::test]
async fn handles_follow_a_rename_even_when_its_reply_was_lost() {
    let k = kit(Duration::from_secs(1)).await;
    std::fs::create_dir(k.store_dir.path().join("d")).unwrap();
    std::fs::write(k.store_dir.path().join("d/f"), b"the image").unwrap();
    let root = k.front.root_dir();
    let d = k.lookup(&root, "d").await.unwrap();
    let f = k.lookup(&d, "f").await.unwrap();
    assert_eq!(k.read_all(&f).await.unwrap(), b"the image");

    k.store
        .faults
        .on_first(|r| matches!(r, Request::Rename { .. }), Fault::LoseReply);
    k.front
        .rename(&root, &name("d"), &root, &name("e"))
        .await
        .expect("a RENAME whose reply was lost is answered as done");
    assert_eq!(k.store.faults.fired().len(), 1);
    assert!(k.store_dir.path().join("e/f").exists());
    // The open file's handle reads through its new path; the directory keeps its id.
    assert_eq!(k.read_all(&f).await.unwrap(), b"the image");
    assert_eq!(k.lookup(&root, "e").await.unwrap(), d);
    assert_eq!(k.lookup(&d, "f").await.unwrap(), f);
    assert_eq!(
        k.lookup(&root, "d").await,
        Err(nfsstat3::NFS3ERR_NOENT),
        "the old name is gone"
    );
}

#[tokio::test]
async fn a_file_replaced_on_the_store_turns_its_handle_stale() {
    let k = kit(Duration::from_millis(100)).await;
    let path = k.store_dir.path().join("vm.img");
    std::fs::write(&path, b"first").unwrap();
    let root = k.front.root_dir();
    let old = k.lookup(&root, "vm.img").await.unwrap();
    assert_eq!(k.read_all(&old).await.unwrap(), b"first");
    // Replaced behind the mount: another file at the same name.
    std::fs::remove_file(&path).unwrap();
    std::fs::write(&path, b"second").unwrap();
    tokio::time::sleep(Duration::from_millis(150)).await; // past the attribute time-out
    assert_eq!(
        k.front.getattr(&old).await.err(),
        Some(nfsstat3::NFS3ERR_STALE),
        "the old handle names the old file"
    );
    let new = k.lookup(&root, "vm.img").await.unwrap();
    assert_ne!(new, old, "a new file gets a new id");
    assert_eq!(k.read_all(&new).await.unwrap(), b"second");
}

#[tokio::test]
async fn a_remove_whose_reply_was_lost_forgets_the_name_and_the_handle() {
    let k = kit(Duration::from_secs(1)).await;
    let root = k.front.root_dir();
    let (f, _) = k
        .front
        .create(&root, &name("scratch.img"), sattr3::default())
        .await
        .unwrap();
    k.store
        .faults
        .on_first(|r| matches!(r, Request::Remove { .. }), Fault::LoseReply);
    k.front
        .unlink(root.as_u64(), b"scratch.img", false)
        .await
        .unwrap();
    assert_eq!(k.store.faults.fired().len(), 1);
    assert!(!k.store_dir.path().join("scratch.img").exists());
    assert_eq!(
        k.lookup(&root, "scratch.img").await,
        Err(nfsstat3::NFS3ERR_NOENT)
    );
    assert_eq!(
        k.front.getattr(&f).await.err(),
        Some(nfsstat3::NFS3ERR_STALE)
    );
}

#[tokio::test]
async fn link_counts_are_refreshed_after_a_namespace_change() {
    // A long attribute time-out: only the namespace change may refresh them.
    let k = kit(Duration::from_secs(60)).await;
    std::fs::write(k.store_dir.path().join("a"), b"x").unwrap();
    let root = k.front.root_dir();
    let a = k.lookup(&root, "a").await.unwrap();
    assert_eq!(k.front.getattr(&a).await.unwrap().nlink, 1);
    k.front.link(a.as_u64(), root.as_u64(), b"b").await.unwrap();
    assert_eq!(k.front.getattr(&a).await.unwrap().nlink, 2);
    k.front.unlink(root.as_u64(), b"b", false).await.unwrap();
    assert_eq!(
        k.front.getattr(&a).await.unwrap().nlink,
        1,
        "the other name's cached attributes were dropped by the REMOVE"
    );
}
