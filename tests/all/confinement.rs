//! The server never reaches outside its export, and `--read-only` is the server's to enforce.

use std::os::unix::fs::symlink;

use gridvfs::proto::{CreateHow, FileRef, SetAttr, Status};
use gridvfs::server::Export;
use nfs3_client::nfs3_types::nfs3::*;

use crate::harness::*;

fn fref(p: &str) -> FileRef {
    FileRef {
        path: p.as_bytes().to_vec(),
        ident: None,
    }
}

#[test]
fn paths_cannot_leave_the_export() {
    let d = dirs();
    let outside = d.tmp.path().join("outside");
    std::fs::create_dir(&outside).unwrap();
    std::fs::write(outside.join("secret"), b"top secret").unwrap();
    std::fs::write(d.export.join("inside"), b"fine").unwrap();
    symlink("/etc", d.export.join("abs")).unwrap();
    symlink("../outside", d.export.join("up")).unwrap();
    symlink(&outside, d.export.join("abs2")).unwrap();
    let exp = Export::open(&d.export, false).unwrap();

    for p in [
        "..",
        "../outside/secret",
        "/etc/passwd",
        "a/../../outside/secret",
        "./inside",
        "inside/",
        "x//y",
    ] {
        assert_eq!(
            exp.read(&fref(p), 0, 100).map(|r| r.0),
            Err(Status::Escape),
            "{p}"
        );
    }
    for p in ["abs/passwd", "up/secret", "abs2/secret"] {
        assert_eq!(
            exp.read(&fref(p), 0, 100).map(|r| r.0),
            Err(Status::Escape),
            "{p}"
        );
        assert_eq!(exp.getattr(&fref(p)), Err(Status::Escape), "{p}");
        assert_eq!(
            exp.write(&fref(p), 0, b"x", false),
            Err(Status::Escape),
            "{p}"
        );
    }
    // A symlink is an object of its own: lstat it, readlink it, never follow it.
    assert!(exp.getattr(&fref("up")).is_ok());
    assert_eq!(exp.readlink(&fref("up")).unwrap(), b"../outside");
    assert_eq!(
        exp.read(&fref("up"), 0, 10).map(|r| r.0),
        Err(Status::Escape)
    );
    // A symlink is not a directory to look up in (and is never followed to one).
    assert!(matches!(
        exp.lookup(&fref("up"), b"secret"),
        Err(Status::NotDir | Status::Escape)
    ));
    // Names are single components.
    for n in [&b".."[..], b"a/b", b"../x", b"."] {
        assert!(
            matches!(
                exp.create(
                    &FileRef::root(),
                    n,
                    &CreateHow::Unchecked(SetAttr::default())
                ),
                Err(Status::Escape)
            ),
            "{n:?}"
        );
    }
    assert_eq!(
        exp.rename(&FileRef::root(), b"inside", &FileRef::root(), b"../stolen"),
        Err(Status::Escape)
    );
    assert!(matches!(
        exp.link(&fref("inside"), &fref("up"), b"x"),
        Err(Status::NotDir | Status::Escape)
    ));
    // chmod through a symlink does not reach its target.
    let set = SetAttr {
        mode: Some(0o777),
        ..Default::default()
    };
    assert!(exp.setattr(&fref("up"), &set, None).is_err());
    assert!(exp.setattr(&fref("up/secret"), &set, None).is_err());
    assert_eq!(
        std::fs::read(outside.join("secret")).unwrap(),
        b"top secret"
    );
    assert!(!d.tmp.path().join("stolen").exists());
}

#[test]
fn a_directory_swapped_for_a_symlink_is_refused() {
    let d = dirs();
    let outside = d.tmp.path().join("outside");
    std::fs::create_dir(&outside).unwrap();
    std::fs::write(outside.join("x"), b"outside bytes").unwrap();
    std::fs::create_dir(d.export.join("a")).unwrap();
    std::fs::write(d.export.join("a/x"), b"inside bytes").unwrap();
    let exp = Export::open(&d.export, false).unwrap();
    let ident = exp.getattr(&fref("a/x")).unwrap().ident;
    let file = FileRef {
        path: b"a/x".to_vec(),
        ident: Some(ident),
    };
    assert_eq!(exp.read(&file, 0, 100).unwrap().0, b"inside bytes");
    // Between the client's LOOKUP and its READ, `a` becomes a symlink to outside.
    std::fs::rename(d.export.join("a"), d.export.join("a.old")).unwrap();
    symlink(&outside, d.export.join("a")).unwrap();
    assert_eq!(exp.read(&file, 0, 100).map(|r| r.0), Err(Status::Escape));
    assert_eq!(
        exp.read(&fref("a/x"), 0, 100).map(|r| r.0),
        Err(Status::Escape)
    );
    // And a file replaced in place is reported stale, not served.
    std::fs::remove_file(d.export.join("a")).unwrap();
    std::fs::rename(d.export.join("a.old"), d.export.join("a")).unwrap();
    std::fs::remove_file(d.export.join("a/x")).unwrap();
    std::fs::write(d.export.join("a/x"), b"new file").unwrap();
    assert_eq!(exp.read(&file, 0, 100).map(|r| r.0), Err(Status::Stale));
}

#[tokio::test]
async fn nfs_lookup_dotdot_at_root_stays_at_root() {
    let d = dirs();
    symlink("/etc", d.export.join("etc")).unwrap();
    let client = ClientProc::start(&d.export, &d.cache, 0, &[]);
    let mut nfs = Nfs::mount(client.port).await;
    let root = nfs.root.clone();
    assert_eq!(nfs.lookup(&root, "..").await.unwrap(), root);
    let link = nfs.lookup(&root, "etc").await.unwrap();
    assert_eq!(nfs.readlink(&link).await.unwrap(), b"/etc");
    assert!(
        nfs.read(&link, 0, 10).await.is_err(),
        "READ of a symlink handle must not follow it"
    );
    assert!(nfs.lookup(&link, "passwd").await.is_err());
}

#[tokio::test]
async fn read_only_export_refuses_every_change() {
    let d = dirs();
    std::fs::write(d.export.join("f"), b"data").unwrap();
    std::fs::create_dir(d.export.join("dir")).unwrap();
    let client = ClientProc::start(&d.export, &d.cache, 0, &["--read-only"]);
    let mut nfs = Nfs::mount(client.port).await;
    let root = nfs.root.clone();
    let f = nfs.lookup(&root, "f").await.unwrap();
    assert_eq!(nfs.read(&f, 0, 10).await.unwrap().0, b"data");
    let rofs = Err(nfsstat3::NFS3ERR_ROFS);
    assert_eq!(
        nfs.write(&f, 0, b"x", stable_how::FILE_SYNC)
            .await
            .map(|_| ()),
        rofs
    );
    assert_eq!(nfs.setattr(&f, attrs(Some(0o777)), None).await, rofs);
    assert_eq!(
        nfs.create(&root, "n", createhow3::UNCHECKED(attrs(None)))
            .await
            .map(|_| ()),
        rofs
    );
    assert_eq!(nfs.mkdir(&root, "m", None).await.map(|_| ()), rofs);
    assert_eq!(nfs.remove(&root, "f").await, rofs);
    assert_eq!(nfs.rmdir(&root, "dir").await, rofs);
    assert_eq!(nfs.rename(&root, "f", &root, "g").await, rofs);
    assert_eq!(nfs.symlink(&root, "s", "f").await.map(|_| ()), rofs);
    assert_eq!(nfs.link(&f, &root, "h").await, rofs);
    assert_eq!(std::fs::read(d.export.join("f")).unwrap(), b"data");
    assert_eq!(std::fs::read_dir(&d.export).unwrap().count(), 2);

    // The server enforces it, whatever the client asks.
    let exp = Export::open(&d.export, true).unwrap();
    assert_eq!(exp.write(&fref("f"), 0, b"x", true), Err(Status::RoFs));
    assert_eq!(exp.remove(&FileRef::root(), b"f", false), Err(Status::RoFs));
}
