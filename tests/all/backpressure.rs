//! Back-pressure: hundreds of READs in flight on one connection, with a slow store behind
//! the proxy. Every one must succeed: the gate stops reading the socket instead of failing
//! calls (the dispatcher alone answers SYSTEM_ERR past 256 in flight).

use std::io::Cursor;

use nfs3_client::nfs3_types::nfs3::{READ3args, READ3res, nfs_fh3};
use nfs3_client::nfs3_types::rpc::{
    accept_stat_data, call_body, msg_body, opaque_auth, reply_body, rpc_msg,
};
use nfs3_client::nfs3_types::xdr_codec::{Pack, Unpack};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::harness::*;

const CALLS: u32 = 400;
const CHUNK: u32 = 64 * 1024;

fn read_call(xid: u32, fh: &nfs_fh3, offset: u64) -> Vec<u8> {
    let msg = rpc_msg {
        xid,
        body: msg_body::CALL(call_body {
            rpcvers: 2,
            prog: 100_003,
            vers: 3,
            proc: 6,
            cred: auth_sys(0, 0, &[]),
            verf: opaque_auth::default(),
        }),
    };
    let args = READ3args {
        file: fh.clone(),
        offset,
        count: CHUNK,
    };
    let mut body = Vec::new();
    msg.pack(&mut body).unwrap();
    args.pack(&mut body).unwrap();
    let mut rec = (0x8000_0000u32 | body.len() as u32).to_be_bytes().to_vec();
    rec.extend_from_slice(&body);
    rec
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hundreds_of_reads_in_flight_against_a_slow_store_all_succeed() {
    let pv = std::process::Command::new("sh")
        .args(["-c", "command -v pv"])
        .output()
        .unwrap();
    assert!(
        pv.status.success(),
        "pv is not installed: apt-get install pv (.ci/run does)"
    );
    let d = dirs();
    let data = noise(21, (CALLS * CHUNK) as usize);
    std::fs::write(d.export.join("f"), &data).unwrap();
    // The store's replies trickle through pv at 20 MB/s: ~1.3 s for all of them.
    let remote = format!(
        "exec:{} serve --stdio --export {} | pv -q -L 20m",
        bin("gridvfs-server").display(),
        d.export.display()
    );
    let client = ClientProc::start_remote(&remote, &d.export, &d.cache, 0, &[]);
    let mut nfs = Nfs::mount(client.port).await;
    let fh = nfs.lookup(&nfs.root.clone(), "f").await.unwrap();

    let mut sock = tokio::net::TcpStream::connect(("127.0.0.1", client.port))
        .await
        .unwrap();
    let (mut rx, mut tx) = sock.split();
    let writer = async {
        let mut all = Vec::new();
        for i in 0..CALLS {
            all.extend_from_slice(&read_call(i + 1, &fh, u64::from(i * CHUNK)));
        }
        tx.write_all(&all).await.unwrap();
    };
    let reader = async {
        let mut seen = vec![false; CALLS as usize];
        for _ in 0..CALLS {
            let mut mark = [0u8; 4];
            rx.read_exact(&mut mark).await.unwrap();
            let len = (u32::from_be_bytes(mark) & 0x7fff_ffff) as usize;
            let mut body = vec![0u8; len];
            rx.read_exact(&mut body).await.unwrap();
            let mut cur = Cursor::new(&body[..]);
            let (msg, _) = rpc_msg::unpack(&mut cur).unwrap();
            let xid = msg.xid;
            match msg.body {
                msg_body::REPLY(reply_body::MSG_ACCEPTED(acc)) => {
                    assert!(
                        matches!(acc.reply_data, accept_stat_data::SUCCESS),
                        "call {xid}: {:?}",
                        acc.reply_data
                    )
                }
                other => panic!("call {xid} denied: {other:?}"),
            }
            let (res, _) = READ3res::unpack(&mut cur).unwrap();
            let ok = match res {
                nfs3_client::nfs3_types::nfs3::Nfs3Result::Ok(ok) => ok,
                nfs3_client::nfs3_types::nfs3::Nfs3Result::Err((s, _)) => {
                    panic!("READ {xid} failed: {s:?}")
                }
            };
            let i = (xid - 1) as usize;
            let off = i * CHUNK as usize;
            assert_eq!(
                &ok.data[..],
                &data[off..off + CHUNK as usize],
                "READ {xid} bytes"
            );
            assert!(!seen[i], "duplicate reply {xid}");
            seen[i] = true;
        }
        assert!(seen.iter().all(|s| *s));
    };
    tokio::time::timeout(std::time::Duration::from_secs(120), async {
        tokio::join!(writer, reader)
    })
    .await
    .expect("all replies within 120 s");
}
