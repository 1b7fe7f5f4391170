//! The tunnel protocol against a real `gridvfs-server` process: bad frames, pipelining.

use std::io::{Read, Write};
use std::process::{Command, Stdio};
use std::time::Duration;

use bytes::{BufMut, Bytes, BytesMut};
use gridvfs::proto::{
    FileRef, FrameKind, Hello, PROTOCOL_VERSION, Request, Response, encode_frame,
};
use gridvfs::remote::RemoteStore;
use gridvfs::tunnel::Remote;

use crate::harness::*;

/// Feed `bytes` to a server's stdin; return (exit success, stderr).
fn feed_server(bytes: &[u8]) -> (bool, String) {
    let d = dirs();
    let mut child = Command::new(bin("gridvfs-server"))
        .args(["serve", "--stdio", "--export"])
        .arg(&d.export)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    stdin.write_all(bytes).unwrap();
    drop(stdin);
    let mut out = Vec::new();
    child.stdout.take().unwrap().read_to_end(&mut out).unwrap();
    let mut err = String::new();
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut err)
        .unwrap();
    let status = child.wait().unwrap();
    (status.success(), err)
}

fn hello() -> BytesMut {
    let mut buf = BytesMut::new();
    let ctl = postcard::to_stdvec(&Hello {
        version: PROTOCOL_VERSION,
        features: 0,
    })
    .unwrap();
    encode_frame(&mut buf, FrameKind::Hello, 0, &ctl, &[]);
    buf
}

#[test]
fn malformed_frames_close_with_a_clear_error() {
    let (ok, err) = feed_server(b"GET / HTTP/1.1\r\n\r\n");
    assert!(!ok);
    assert!(
        err.contains("exceeds") || err.contains("frame"),
        "stderr: {err}"
    );
    assert!(!err.contains("panicked"), "stderr: {err}");

    let mut big = hello();
    big.put_u32(u32::MAX); // a 4 GiB frame: refused before any allocation
    let (ok, err) = feed_server(&big);
    assert!(!ok);
    assert!(err.contains("exceeds"), "stderr: {err}");

    let mut garbage = hello();
    encode_frame(&mut garbage, FrameKind::Request, 1, &[0xff; 40], &[]);
    let (ok, err) = feed_server(&garbage);
    assert!(!ok);
    assert!(err.contains("malformed request"), "stderr: {err}");

    let mut truncated = hello();
    truncated.put_u32(100);
    truncated.put_slice(&[3, 0, 0]);
    let (ok, err) = feed_server(&truncated);
    assert!(!ok);
    assert!(err.contains("ended inside a frame"), "stderr: {err}");

    let mut wrong_version = BytesMut::new();
    let ctl = postcard::to_stdvec(&Hello {
        version: 999,
        features: 0,
    })
    .unwrap();
    encode_frame(&mut wrong_version, FrameKind::Hello, 0, &ctl, &[]);
    let (ok, err) = feed_server(&wrong_version);
    assert!(!ok);
    assert!(err.contains("protocol 999"), "stderr: {err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_requests_in_flight_replies_matched_by_id() {
    let d = dirs();
    let data = noise(3, 8 << 20);
    std::fs::write(d.export.join("f"), &data).unwrap();
    // SAFETY of the env var: the variable is only read by tunnel::server_binary.
    let remote = Remote::Exec {
        command: format!(
            "{} serve --stdio --export {}",
            bin("gridvfs-server").display(),
            d.export.display()
        ),
    };
    let store = RemoteStore::connect(remote, Duration::from_secs(5))
        .await
        .unwrap();
    let mut tasks = Vec::new();
    for i in 0..256u64 {
        let store = store.clone();
        let off = (i * 32768) % (8 << 20);
        tasks.push(tokio::spawn(async move {
            let req = Request::Read {
                file: FileRef {
                    path: b"f".to_vec(),
                    ident: None,
                },
                offset: off,
                len: 32768,
            };
            let (resp, bytes) = store.call(req, Bytes::new()).await.unwrap();
            assert!(matches!(resp, Response::Read { .. }));
            (off, bytes)
        }));
    }
    for t in tasks {
        let (off, bytes) = t.await.unwrap();
        assert_eq!(&bytes[..], &data[off as usize..off as usize + 32768]);
    }
}
