//! The remote against an in-process store with a fault plan: each of settle's outcome
//! rules with the reply lost after the store carried the request out, the refusals when
//! someone else changed the store in between, retries of idempotent requests, the
//! watchdog, and offline state. Deterministic: faults are keyed to requests, not time.

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;

use super::{OfflinePolicy, RemoteStore, Timeouts};
use crate::error::Error;
use crate::proto::{Attr, CreateHow, FileKind, FileRef, Request, Response, SetAttr, Status};
use crate::tunnel::Remote;
use crate::tunnel::memory::{Fault, MemoryStore};

struct Kit {
    dir: tempfile::TempDir,
    store: MemoryStore,
    remote: Arc<RemoteStore>,
}

impl Kit {
    async fn new() -> Self {
        Self::with(Timeouts {
            reconnect: Duration::from_secs(5),
            ..Timeouts::default()
        })
        .await
    }

    async fn with(timeouts: Timeouts) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let store = MemoryStore::open(dir.path()).unwrap();
        let remote = RemoteStore::connect_with(Remote::Memory(store.clone()), timeouts)
            .await
            .unwrap();
        Self { dir, store, remote }
    }

    fn path(&self, rel: &str) -> std::path::PathBuf {
        self.dir.path().join(rel)
    }

    async fn call(&self, req: Request) -> crate::Result<Response> {
        self.remote.call(req, Bytes::new()).await.map(|(r, _)| r)
    }

    async fn attr(&self, rel: &str) -> Attr {
        match self.call(Request::Getattr { file: at(rel) }).await {
            Ok(Response::Attr(a)) => a,
            other => panic!("getattr {rel}: {other:?}"),
        }
    }

    /// The store's host becomes unreachable: the link drops, reconnects fail.
    fn cut_off(&self) {
        self.store.faults.set_unreachable(true);
        self.store.faults.cut_all();
    }

    /// The one fault the test planted fired, and the request it hit was sent twice.
    fn assert_lost_once(&self, sent_twice: impl Fn(&Request) -> bool) {
        let fired = self.store.faults.fired();
        assert_eq!(fired.len(), 1, "the fault fired once: {fired:?}");
        assert_eq!(fired[0].1, Fault::LoseReply);
        let n = self
            .store
            .faults
            .log()
            .iter()
            .filter(|r| sent_twice(r))
            .count();
        assert_eq!(
            n,
            2,
            "sent, lost, sent again: {:?}",
            self.store.faults.log()
        );
        assert_eq!(self.store.faults.connects(), 2, "one reconnect");
    }
}

fn at(rel: &str) -> FileRef {
    FileRef {
        path: rel.as_bytes().to_vec(),
        ident: None,
    }
}

fn remove_req(name: &str) -> Request {
    Request::Remove {
        dir: FileRef::root(),
        name: name.as_bytes().to_vec(),
    }
}

fn rmdir_req(name: &str) -> Request {
    Request::Rmdir {
        dir: FileRef::root(),
        name: name.as_bytes().to_vec(),
    }
}

fn write(dir: &Path, rel: &str, data: &[u8]) {
    std::fs::write(dir.join(rel), data).unwrap();
}

fn changed_dirs(r: &Response) -> usize {
    match r {
        Response::Changed { dirs, .. } => dirs.len(),
        other => panic!("expected Changed, got {other:?}"),
    }
}

#[tokio::test]
async fn lost_remove_is_answered_as_done() {
    let k = Kit::new().await;
    write(k.dir.path(), "a", b"x");
    k.store
        .faults
        .on_first(|r| matches!(r, Request::Remove { .. }), Fault::LoseReply);
    let r = k.call(remove_req("a")).await.expect("answered as done");
    assert_eq!(changed_dirs(&r), 1, "the parent's new attributes");
    assert!(!k.path("a").exists());
    k.assert_lost_once(|r| matches!(r, Request::Remove { .. }));
}

#[tokio::test]
async fn lost_rmdir_is_answered_as_done() {
    let k = Kit::new().await;
    std::fs::create_dir(k.path("d")).unwrap();
    k.store
        .faults
        .on_first(|r| matches!(r, Request::Rmdir { .. }), Fault::LoseReply);
    let r = k.call(rmdir_req("d")).await.expect("answered as done");
    assert_eq!(changed_dirs(&r), 1);
    assert!(!k.path("d").exists());
    k.assert_lost_once(|r| matches!(r, Request::Rmdir { .. }));
}

#[tokio::test]
async fn a_remove_that_never_happened_still_fails() {
    // Not in doubt (no fault): NOENT is the answer, settle is not asked.
    let k = Kit::new().await;
    let e = k.call(remove_req("missing")).await.unwrap_err();
    assert!(matches!(e, Error::Status(Status::NoEnt)), "{e}");
    // Cut before it reached the store: from the client the request is in doubt all the
    // same (it cannot tell a cut before from a cut after), so settle answers NOENT as
    // "done" while the parent is there. The same answer a retransmitted REMOVE gets from
    // the Linux client's own NOENT-after-retry rule; no data is involved.
    k.store
        .faults
        .on_first(|r| matches!(r, Request::Remove { .. }), Fault::CutBefore);
    let r = k
        .call(remove_req("missing"))
        .await
        .expect("in doubt, NOENT is explained by a first attempt");
    assert_eq!(changed_dirs(&r), 1);
    assert_eq!(k.store.faults.fired().len(), 1);
}

fn rename(from: &str, to: &str) -> Request {
    Request::Rename {
        from_dir: FileRef::root(),
        from_name: from.as_bytes().to_vec(),
        to_dir: FileRef::root(),
        to_name: to.as_bytes().to_vec(),
    }
}

#[tokio::test]
async fn lost_rename_is_answered_as_done() {
    let k = Kit::new().await;
    write(k.dir.path(), "old", b"data");
    k.store
        .faults
        .on_first(|r| matches!(r, Request::Rename { .. }), Fault::LoseReply);
    let r = k
        .call(rename("old", "new"))
        .await
        .expect("answered as done");
    assert_eq!(changed_dirs(&r), 2, "both directories' attributes");
    assert_eq!(std::fs::read(k.path("new")).unwrap(), b"data");
    k.assert_lost_once(|r| matches!(r, Request::Rename { .. }));
}

#[tokio::test]
async fn lost_rename_whose_target_someone_removed_is_refused() {
    let k = Kit::new().await;
    write(k.dir.path(), "old", b"data");
    let target = k.path("new");
    k.store.faults.on_first_then(
        |r| matches!(r, Request::Rename { .. }),
        Fault::LoseReply,
        move || std::fs::remove_file(target).unwrap(),
    );
    let e = k.call(rename("old", "new")).await.unwrap_err();
    assert!(matches!(e, Error::Status(Status::NoEnt)), "{e}");
}

#[tokio::test]
async fn lost_mkdir_is_answered_as_done_but_not_over_a_file() {
    let k = Kit::new().await;
    let mkdir = |name: &str| Request::Mkdir {
        dir: FileRef::root(),
        name: name.as_bytes().to_vec(),
        mode: 0o755,
    };
    k.store
        .faults
        .on_first(|r| matches!(r, Request::Mkdir { .. }), Fault::LoseReply);
    match k.call(mkdir("d")).await.expect("answered as done") {
        Response::Changed { obj: Some(a), dirs } => {
            assert_eq!(a.kind, FileKind::Directory);
            assert_eq!(dirs.len(), 1);
        }
        other => panic!("{other:?}"),
    }
    assert!(k.path("d").is_dir());
    k.assert_lost_once(|r| matches!(r, Request::Mkdir { .. }));

    // Someone put a file where the directory was made: EXIST is the truth.
    let d2 = k.path("d2");
    k.store.faults.on_first_then(
        |r| matches!(r, Request::Mkdir { .. }),
        Fault::LoseReply,
        move || {
            std::fs::remove_dir(&d2).unwrap();
            std::fs::write(&d2, b"a file").unwrap();
        },
    );
    let e = k.call(mkdir("d2")).await.unwrap_err();
    assert!(matches!(e, Error::Status(Status::Exist)), "{e}");
}

#[tokio::test]
async fn lost_symlink_is_done_only_with_its_own_target() {
    let k = Kit::new().await;
    let symlink = |name: &str| Request::Symlink {
        dir: FileRef::root(),
        name: name.as_bytes().to_vec(),
        target: b"base.img".to_vec(),
        mode: None,
    };
    k.store
        .faults
        .on_first(|r| matches!(r, Request::Symlink { .. }), Fault::LoseReply);
    match k.call(symlink("l")).await.expect("answered as done") {
        Response::Changed { obj: Some(a), .. } => assert_eq!(a.kind, FileKind::Symlink),
        other => panic!("{other:?}"),
    }
    assert_eq!(
        std::fs::read_link(k.path("l")).unwrap(),
        Path::new("base.img")
    );
    k.assert_lost_once(|r| matches!(r, Request::Symlink { .. }));

    let l2 = k.path("l2");
    k.store.faults.on_first_then(
        |r| matches!(r, Request::Symlink { .. }),
        Fault::LoseReply,
        move || {
            std::fs::remove_file(&l2).unwrap();
            std::os::unix::fs::symlink("other.img", &l2).unwrap();
        },
    );
    let e = k.call(symlink("l2")).await.unwrap_err();
    assert!(matches!(e, Error::Status(Status::Exist)), "{e}");
}

#[tokio::test]
async fn lost_link_is_done_only_to_the_same_file() {
    let k = Kit::new().await;
    write(k.dir.path(), "a", b"x");
    write(k.dir.path(), "c", b"y");
    let link = |name: &str| Request::Link {
        file: at("a"),
        dir: FileRef::root(),
        name: name.as_bytes().to_vec(),
    };
    k.store
        .faults
        .on_first(|r| matches!(r, Request::Link { .. }), Fault::LoseReply);
    match k.call(link("b")).await.expect("answered as done") {
        Response::Changed { obj: Some(a), .. } => assert_eq!(a.nlink, 2),
        other => panic!("{other:?}"),
    }
    assert_eq!(
        std::fs::metadata(k.path("b")).unwrap().ino(),
        std::fs::metadata(k.path("a")).unwrap().ino()
    );
    k.assert_lost_once(|r| matches!(r, Request::Link { .. }));

    let (b2, c) = (k.path("b2"), k.path("c"));
    k.store.faults.on_first_then(
        |r| matches!(r, Request::Link { .. }),
        Fault::LoseReply,
        move || {
            std::fs::remove_file(&b2).unwrap();
            std::fs::hard_link(&c, &b2).unwrap();
        },
    );
    let e = k.call(link("b2")).await.unwrap_err();
    assert!(matches!(e, Error::Status(Status::Exist)), "{e}");
}

#[tokio::test]
async fn lost_guarded_create_is_done_only_while_the_file_is_its_own() {
    let k = Kit::new().await;
    let create = |name: &str| Request::Create {
        dir: FileRef::root(),
        name: name.as_bytes().to_vec(),
        how: CreateHow::Guarded(SetAttr {
            mode: Some(0o644),
            ..SetAttr::default()
        }),
    };
    k.store
        .faults
        .on_first(|r| matches!(r, Request::Create { .. }), Fault::LoseReply);
    match k.call(create("f")).await.expect("answered as done") {
        Response::Changed { obj: Some(a), .. } => {
            assert_eq!((a.kind, a.size), (FileKind::Regular, 0));
        }
        other => panic!("{other:?}"),
    }
    k.assert_lost_once(|r| matches!(r, Request::Create { .. }));

    // Someone wrote to it in between: not ours any more.
    let f2 = k.path("f2");
    k.store.faults.on_first_then(
        |r| matches!(r, Request::Create { .. }),
        Fault::LoseReply,
        move || std::fs::write(&f2, b"someone else's").unwrap(),
    );
    let e = k.call(create("f2")).await.unwrap_err();
    assert!(matches!(e, Error::Status(Status::Exist)), "{e}");
}

#[tokio::test]
async fn lost_guarded_setattr_is_done_only_if_its_change_is_there() {
    let k = Kit::new().await;
    write(k.dir.path(), "f", b"0123456789");
    let guard = Some(k.attr("f").await.ctime);
    let setattr = |size| Request::Setattr {
        file: at("f"),
        set: SetAttr {
            size: Some(size),
            mode: Some(0o600),
            ..SetAttr::default()
        },
        guard,
    };
    k.store
        .faults
        .on_first(|r| matches!(r, Request::Setattr { .. }), Fault::LoseReply);
    match k.call(setattr(4)).await.expect("answered as done") {
        Response::Attr(a) => assert_eq!((a.size, a.mode & 0o7777), (4, 0o600)),
        other => panic!("{other:?}"),
    }
    k.assert_lost_once(|r| matches!(r, Request::Setattr { .. }));

    // Someone changed the mode back in between: the change is not there, NOT_SYNC stands.
    let f = k.path("f");
    let guard = Some(k.attr("f").await.ctime);
    k.store.faults.on_first_then(
        |r| matches!(r, Request::Setattr { .. }),
        Fault::LoseReply,
        move || std::fs::set_permissions(&f, std::fs::Permissions::from_mode(0o640)).unwrap(),
    );
    let e = k
        .call(Request::Setattr {
            file: at("f"),
            set: SetAttr {
                mode: Some(0o600),
                ..SetAttr::default()
            },
            guard,
        })
        .await
        .unwrap_err();
    assert!(matches!(e, Error::Status(Status::NotSync)), "{e}");
}

#[tokio::test]
async fn idempotent_requests_are_sent_again_after_any_cut() {
    let k = Kit::new().await;
    write(k.dir.path(), "img", &[7u8; 100_000]);
    let read = Request::Read {
        file: at("img"),
        offset: 4096,
        len: 8192,
    };
    for fault in [Fault::CutBefore, Fault::LoseReply] {
        k.store
            .faults
            .on_first(|r| matches!(r, Request::Read { .. }), fault);
        let (resp, data) = k.remote.call(read.clone(), Bytes::new()).await.unwrap();
        assert!(
            matches!(resp, Response::Read { eof: false, .. }),
            "{resp:?}"
        );
        assert_eq!(data, Bytes::from(vec![7u8; 8192]));
    }
    assert_eq!(k.store.faults.fired().len(), 2);
    assert_eq!(k.store.faults.connects(), 3);
    assert_eq!(
        k.remote
            .counters
            .reconnects
            .load(std::sync::atomic::Ordering::Relaxed),
        2
    );
}

#[tokio::test]
async fn a_silent_store_is_dropped_by_the_watchdog_and_the_request_retried() {
    let k = Kit::with(Timeouts {
        reconnect: Duration::from_secs(5),
        request: Duration::from_millis(300),
        ..Timeouts::default()
    })
    .await;
    write(k.dir.path(), "f", b"x");
    k.store
        .faults
        .on_first(|r| matches!(r, Request::Getattr { .. }), Fault::Stall);
    let a = k.attr("f").await;
    assert_eq!(a.size, 1);
    assert_eq!(k.store.faults.fired()[0].1, Fault::Stall);
    assert_eq!(
        k.store.faults.connects(),
        2,
        "a new session after the stall"
    );
}

#[tokio::test]
async fn a_held_reply_waits_and_others_pass() {
    let k = Kit::new().await;
    write(k.dir.path(), "a", b"1");
    write(k.dir.path(), "b", b"22");
    k.store.faults.on_first(
        |r| matches!(r, Request::Getattr { file } if file.path == b"a"),
        Fault::HoldReply,
    );
    let remote = k.remote.clone();
    let held = tokio::spawn(async move {
        remote
            .call(Request::Getattr { file: at("a") }, Bytes::new())
            .await
    });
    assert_eq!(k.attr("b").await.size, 2, "the link is up for others");
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert!(!held.is_finished(), "held until released");
    k.store.faults.release();
    let (resp, _) = held.await.unwrap().unwrap();
    assert!(matches!(resp, Response::Attr(a) if a.size == 1));
    assert_eq!(k.store.faults.connects(), 1);
}

#[tokio::test]
async fn an_unreachable_store_makes_the_client_offline_then_online() {
    let k = Kit::with(Timeouts {
        reconnect: Duration::from_millis(500),
        ..Timeouts::default()
    })
    .await;
    write(k.dir.path(), "f", b"x");
    k.cut_off();
    let started = std::time::Instant::now();
    let e = k
        .call(Request::Getattr { file: at("f") })
        .await
        .unwrap_err();
    assert!(matches!(e, Error::Offline(_)), "{e}");
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "{:?}",
        started.elapsed()
    );
    assert!(k.remote.offline_for().is_some());
    // Offline: refused at once, counted.
    let e = k
        .call(Request::Getattr { file: at("f") })
        .await
        .unwrap_err();
    assert!(matches!(e, Error::Offline(_)), "{e}");
    assert!(
        k.remote
            .counters
            .offline_refused
            .load(std::sync::atomic::Ordering::Relaxed)
            >= 2
    );
    assert_eq!(
        k.remote
            .counters
            .outages
            .load(std::sync::atomic::Ordering::Relaxed),
        1
    );

    k.store.faults.set_unreachable(false);
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while k.remote.offline_for().is_some() {
        assert!(std::time::Instant::now() < deadline, "never came back");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(k.attr("f").await.size, 1);
}

#[tokio::test]
async fn offline_past_the_limit_fails_and_policy_fail_never_goes_offline() {
    let k = Kit::with(Timeouts {
        reconnect: Duration::from_millis(300),
        offline_limit: Some(Duration::from_secs(1)),
        ..Timeouts::default()
    })
    .await;
    k.cut_off();
    let e = k.remote.fsstat(FileRef::root()).await.unwrap_err();
    assert!(matches!(e, Error::Offline(_)), "{e}");
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let e = k.remote.fsstat(FileRef::root()).await.unwrap_err();
    assert!(matches!(e, Error::OfflineTooLong(_)), "{e}");

    let k = Kit::with(Timeouts {
        reconnect: Duration::from_millis(300),
        offline: OfflinePolicy::Fail,
        ..Timeouts::default()
    })
    .await;
    k.cut_off();
    let e = k.remote.fsstat(FileRef::root()).await.unwrap_err();
    assert!(matches!(e, Error::Disconnected(_)), "{e}");
    assert!(k.remote.offline_for().is_none());
}
