//! The SSH tunnel against real peers: OpenSSH's sshd (russh client and the system ssh
//! binary), `gridvfs-server listen` with session keys, and links cut mid-transfer.

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use nfs3_client::nfs3_types::nfs3::*;

use crate::harness::*;
use crate::net::{Relay, wait_for_port};
use crate::sshd::{Sshd, keygen};

/// Client flags to log in to `sshd` with its key, recording the host key in `kh`.
fn ssh_flags(key: &Path, kh: &Path) -> Vec<String> {
    vec![
        "-i".into(),
        key.display().to_string(),
        "--known-hosts".into(),
        kh.display().to_string(),
        "--accept-new-host-key".into(),
        "--server-command".into(),
        bin("gridvfs-server").display().to_string(),
    ]
}

fn start(remote: &str, d: &Dirs, extra: &[String]) -> ClientProc {
    let extra: Vec<&str> = extra.iter().map(String::as_str).collect();
    ClientProc::start_remote(remote, &d.export, &d.cache, 0, &extra)
}

/// Run a client that must refuse to start; its stderr.
fn refused(remote: &str, cache: &Path, extra: &[String]) -> String {
    let mut child = Command::new(bin("gridvfs-client"))
        .args([
            "serve",
            "--remote",
            remote,
            "--listen",
            "127.0.0.1:0",
            "--reconnect-timeout",
            "5",
        ])
        .arg("--cache-dir")
        .arg(cache)
        .args(extra)
        .env("RUST_BACKTRACE", "0")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let t = std::time::Instant::now();
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            let out = child.wait_with_output().unwrap();
            let err = String::from_utf8_lossy(&out.stderr).into_owned();
            assert!(
                !status.success(),
                "client started but should not have: {err}"
            );
            return err;
        }
        if t.elapsed() > Duration::from_secs(60) {
            let _ = child.kill();
            panic!("client neither started nor failed for {remote}");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

/// Read `name` back, write a new file, check both against the disk.
async fn read_and_write(port: u16, export: &Path, name: &str, expect: &[u8], seed: u64) {
    let mut nfs = Nfs::mount(port).await;
    let fh = nfs.lookup(&nfs.root.clone(), name).await.unwrap();
    let got = nfs.read_all(&fh, 1 << 20).await.unwrap();
    assert!(got == expect, "bytes read over SSH differ");
    let out = nfs
        .create(
            &nfs.root.clone(),
            "written.bin",
            createhow3::UNCHECKED(attrs(Some(0o644))),
        )
        .await
        .unwrap();
    let data = noise(seed, (8 << 20) + 3);
    for (i, chunk) in data.chunks(1 << 20).enumerate() {
        nfs.write(&out, (i << 20) as u64, chunk, stable_how::UNSTABLE)
            .await
            .unwrap();
    }
    nfs.commit(&out).await.unwrap();
    assert!(std::fs::read(export.join("written.bin")).unwrap() == data);
}

#[test]
fn russh_and_system_ssh_through_openssh() {
    let d = dirs();
    let sshd = Sshd::start(&d.tmp.path().join("ssh")).unwrap();
    let data = noise(3, (48 << 20) + 5);
    std::fs::write(d.export.join("disk.img"), &data).unwrap();
    // No user in the URL: the client finds the local user name itself.
    let remote = format!("ssh://127.0.0.1:{}{}", sshd.port, d.export.display());

    let kh = d.tmp.path().join("known_hosts");
    let client = start(&remote, &d, &ssh_flags(&sshd.key, &kh));
    rt().block_on(read_and_write(client.port, &d.export, "disk.img", &data, 4));
    drop(client);
    let recorded = std::fs::read_to_string(&kh).unwrap();
    assert!(
        recorded.contains(&format!("[127.0.0.1]:{} ssh-ed25519 ", sshd.port)),
        "{recorded}"
    );

    // The system ssh binary as the transport, same protocol.
    std::fs::remove_dir_all(&d.cache).unwrap();
    let ssh = format!(
        "ssh -i {} -o UserKnownHostsFile={} -o StrictHostKeyChecking=accept-new -o BatchMode=yes -o LogLevel=ERROR",
        sshd.key.display(),
        d.tmp.path().join("kh_openssh").display()
    );
    let flags = vec![
        "--ssh-command".to_string(),
        ssh,
        "--server-command".into(),
        bin("gridvfs-server").display().to_string(),
    ];
    let client = start(&remote, &d, &flags);
    rt().block_on(read_and_write(client.port, &d.export, "disk.img", &data, 5));
}

#[test]
fn ssh_refusals_say_what_is_wrong() {
    let d = dirs();
    let sshd = Sshd::start(&d.tmp.path().join("ssh")).unwrap();
    let remote = format!("ssh://127.0.0.1:{}{}", sshd.port, d.export.display());
    let kh = d.tmp.path().join("known_hosts");
    let server = bin("gridvfs-server").display().to_string();
    let base = |kh: &Path| {
        vec![
            "-i".to_string(),
            sshd.key.display().to_string(),
            "--known-hosts".into(),
            kh.display().to_string(),
            "--server-command".into(),
            server.clone(),
        ]
    };

    // Unknown host key, without --accept-new-host-key.
    let e = refused(&remote, &d.cache, &base(&kh));
    assert!(
        e.contains("is not in") && e.contains("--accept-new-host-key"),
        "{e}"
    );
    assert!(!kh.exists(), "an unknown key must not be recorded");

    // Changed host key: known_hosts holds another ed25519 key for this host and port.
    let other = d.tmp.path().join("other");
    keygen(&other).unwrap();
    let other_pub = std::fs::read_to_string(other.with_extension("pub")).unwrap();
    let fake = other_pub
        .split_whitespace()
        .take(2)
        .collect::<Vec<_>>()
        .join(" ");
    std::fs::write(&kh, format!("[127.0.0.1]:{} {fake}\n", sshd.port)).unwrap();
    let mut flags = base(&kh);
    flags.push("--accept-new-host-key".into()); // never overrides a changed key
    let e = refused(&remote, &d.cache, &flags);
    assert!(e.contains("CHANGED") && e.contains("ssh-keygen -R"), "{e}");

    // Issue 11, item 5: the host is known by an ECDSA key and the server offers Ed25519.
    // Recording the new type would be a downgrade path: refused as a changed key, even
    // with --accept-new-host-key, and nothing is added to known_hosts.
    let ecdsa = d.tmp.path().join("ecdsa");
    assert!(
        Command::new("ssh-keygen")
            .args(["-q", "-t", "ecdsa", "-N", "", "-f"])
            .arg(&ecdsa)
            .status()
            .unwrap()
            .success()
    );
    let ecdsa_pub = std::fs::read_to_string(ecdsa.with_extension("pub")).unwrap();
    let known = format!(
        "[127.0.0.1]:{} {}\n",
        sshd.port,
        ecdsa_pub
            .split_whitespace()
            .take(2)
            .collect::<Vec<_>>()
            .join(" ")
    );
    std::fs::write(&kh, &known).unwrap();
    let e = refused(&remote, &d.cache, &flags);
    assert!(e.contains("CHANGED type") && e.contains("ecdsa"), "{e}");
    assert_eq!(
        std::fs::read_to_string(&kh).unwrap(),
        known,
        "nothing recorded"
    );

    // Issue 11, item 5: a host that would be an option to the system ssh.
    let e = refused(
        &format!("ssh://-oProxyCommand=touch%20/tmp/pwned:{}/x", sshd.port),
        &d.cache,
        &["--ssh-command".into(), "ssh".into()],
    );
    assert!(e.contains("bad remote"), "{e}");
    let e = refused(
        "u@-oProxyCommand=sh:/x",
        &d.cache,
        &["--ssh-command".into(), "ssh".into()],
    );
    assert!(e.contains("bad remote"), "{e}");

    // A user key the store does not know.
    let kh2 = d.tmp.path().join("kh2");
    let flags = vec![
        "-i".to_string(),
        other.display().to_string(),
        "--known-hosts".into(),
        kh2.display().to_string(),
        "--accept-new-host-key".into(),
    ];
    let e = refused(&remote, &d.cache, &flags);
    assert!(e.contains("refused every key"), "{e}");

    // No gridvfs-server on the store.
    let mut flags = ssh_flags(&sshd.key, &kh2);
    flags.truncate(flags.len() - 2);
    flags.extend([
        "--server-command".into(),
        "/nonexistent/gridvfs-server".into(),
    ]);
    let e = refused(&remote, &d.cache, &flags);
    assert!(
        e.contains("was not found on the store") && e.contains("127"),
        "{e}"
    );

    // An export that does not exist: the server's own message comes through.
    let missing = format!("ssh://127.0.0.1:{}/nonexistent/export", sshd.port);
    let e = refused(&missing, &d.cache, &ssh_flags(&sshd.key, &kh2));
    assert!(e.contains("cannot open export directory"), "{e}");
}

#[test]
fn embedded_listener_confines_session_keys() {
    let d = dirs();
    let keys = d.tmp.path().join("keys");
    std::fs::create_dir(&keys).unwrap();
    let other_export = d.tmp.path().join("other-export");
    std::fs::create_dir(&other_export).unwrap();
    std::fs::write(other_export.join("b.txt"), b"export b\n").unwrap();
    let data = noise(9, (6 << 20) + 1);
    std::fs::write(d.export.join("a.img"), &data).unwrap();
    let ak = keys.join("authorized_keys");
    let mint = |export: &Path, ro: bool, out: &str| {
        let mut c = Command::new(bin("gridvfs-server"));
        c.args(["session-key", "--export"])
            .arg(export)
            .arg("--out")
            .arg(keys.join(out))
            .arg("--authorized-keys")
            .arg(&ak);
        if ro {
            c.arg("--read-only");
        }
        assert!(c.status().unwrap().success());
    };
    mint(&d.export, false, "a.key");
    mint(&other_export, true, "b.key");
    let port = free_port();
    let mut listener = Command::new(bin("gridvfs-server"))
        .args([
            "listen",
            "--addr",
            &format!("127.0.0.1:{port}"),
            "--host-key",
        ])
        .arg(keys.join("host_key"))
        .arg("--authorized-keys")
        .arg(&ak)
        .spawn()
        .unwrap();
    wait_for_port(port, Duration::from_secs(10)).unwrap();
    let kh = keys.join("known_hosts");
    let flags = |key: &str| {
        vec![
            "-i".to_string(),
            keys.join(key).display().to_string(),
            "--known-hosts".into(),
            kh.display().to_string(),
            "--accept-new-host-key".into(),
        ]
    };
    let url = |p: &Path| format!("ssh://127.0.0.1:{port}{}", p.display());

    // Key A reaches export A, reading and writing.
    let client = start(&url(&d.export), &d, &flags("a.key"));
    rt().block_on(read_and_write(client.port, &d.export, "a.img", &data, 10));
    drop(client);

    // Key A does not reach export B.
    let e = refused(&url(&other_export), &d.cache, &flags("a.key"));
    assert!(e.contains("may not reach"), "{e}");

    // Key B reads export B but cannot write, though the client did not ask for read-only.
    let d2 = Dirs {
        export: other_export.clone(),
        cache: d.tmp.path().join("cache-b"),
        tmp: tempfile::tempdir().unwrap(),
    };
    let client = start(&url(&other_export), &d2, &flags("b.key"));
    rt().block_on(async {
        let mut nfs = Nfs::mount(client.port).await;
        let root = nfs.root.clone();
        let fh = nfs.lookup(&root, "b.txt").await.unwrap();
        assert_eq!(nfs.read_all(&fh, 4096).await.unwrap(), b"export b\n");
        let e = nfs
            .create(&root, "new.txt", createhow3::UNCHECKED(attrs(Some(0o644))))
            .await
            .unwrap_err();
        assert_eq!(e, nfsstat3::NFS3ERR_ROFS);
    });
    assert!(!other_export.join("new.txt").exists());
    drop(client);

    // A key that is not listed at all.
    let stranger = keys.join("stranger");
    keygen(&stranger).unwrap();
    let e = refused(&url(&d.export), &d.cache, &flags("stranger"));
    assert!(e.contains("refused every key"), "{e}");
    let _ = listener.kill();
    let _ = listener.wait();
}

#[test]
fn link_cuts_are_a_delay_not_an_error() {
    let d = dirs();
    let sshd = Sshd::start(&d.tmp.path().join("ssh")).unwrap();
    let mut relay = Relay::start(sshd.addr()).unwrap();
    let data = noise(21, 256 << 20);
    std::fs::write(d.export.join("disk.img"), &data).unwrap();
    let remote = format!("ssh://127.0.0.1:{}{}", relay.port, d.export.display());
    let mut flags = ssh_flags(&sshd.key, &d.tmp.path().join("kh"));
    flags.extend(["--reconnect-timeout".into(), "120".into()]);
    let client = start(&remote, &d, &flags);
    rt().block_on(async {
        let mut nfs = Nfs::mount(client.port).await;
        let root = nfs.root.clone();

        // A 256 MiB read, the link cut four times along the way.
        let fh = nfs.lookup(&root, "disk.img").await.unwrap();
        let mut got = Vec::with_capacity(data.len());
        let chunk = 1 << 20;
        while got.len() < data.len() {
            let (bytes, _) = nfs.read(&fh, got.len() as u64, chunk).await.unwrap();
            assert!(!bytes.is_empty(), "short read at {}", got.len());
            got.extend_from_slice(&bytes);
            if got.len() % (data.len() / 5) < chunk as usize
                && got.len() < data.len() - chunk as usize
            {
                relay.cut();
            }
        }
        assert!(got == data, "bytes read across link cuts differ");

        // Writes, cut every 8 MiB; then namespace changes, each right after a cut.
        let out = nfs
            .create(&root, "redo.log", createhow3::UNCHECKED(attrs(Some(0o644))))
            .await
            .unwrap();
        let log = noise(22, 48 << 20);
        for (i, c) in log.chunks(1 << 20).enumerate() {
            nfs.write(&out, (i << 20) as u64, c, stable_how::UNSTABLE)
                .await
                .unwrap();
            if i % 8 == 7 {
                relay.cut();
            }
        }
        nfs.commit(&out).await.unwrap();
        relay.cut();
        let dir = nfs.mkdir(&root, "snap", Some(0o755)).await.unwrap();
        relay.cut();
        nfs.rename(&root, "redo.log", &dir, "redo.0").await.unwrap();
        relay.cut();
        nfs.remove(&root, "disk.img").await.unwrap();
        assert!(std::fs::read(d.export.join("snap/redo.0")).unwrap() == log);
        assert!(!d.export.join("disk.img").exists());
    });
    let reconnects = n(&status_json(&d.cache), "reconnects");
    println!("{} cuts, {reconnects} reconnects", relay.cuts);
    assert!(
        reconnects >= 4,
        "expected a reconnect per cut during the read, saw {reconnects}"
    );
}

/// Issue 11, items 6 and 15: a flood of connections that exhausts the listener's file
/// descriptors (EMFILE on accept) does not end `gridvfs-server listen`; once the flood
/// is gone a key logs in and reads as before. Before, russh's accept loop returned on the
/// first failed accept and the daemon exited.
#[test]
fn embedded_listener_survives_a_connection_flood() {
    let d = dirs();
    let keys = d.tmp.path().join("keys");
    std::fs::create_dir(&keys).unwrap();
    std::fs::write(d.export.join("a.txt"), b"still here\n").unwrap();
    let ak = keys.join("authorized_keys");
    assert!(
        Command::new(bin("gridvfs-server"))
            .args(["session-key", "--export"])
            .arg(&d.export)
            .arg("--out")
            .arg(keys.join("a.key"))
            .arg("--authorized-keys")
            .arg(&ak)
            .status()
            .unwrap()
            .success()
    );
    let port = free_port();
    // Few descriptors, so the flood below runs the listener out of them.
    let mut listener = Command::new("prlimit")
        .arg("--nofile=48:48")
        .arg(bin("gridvfs-server"))
        .args([
            "listen",
            "--addr",
            &format!("127.0.0.1:{port}"),
            "--host-key",
        ])
        .arg(keys.join("host_key"))
        .arg("--authorized-keys")
        .arg(&ak)
        .spawn()
        .expect("prlimit (util-linux)");
    wait_for_port(port, Duration::from_secs(10)).unwrap();
    let flood: Vec<std::net::TcpStream> = (0..80)
        .filter_map(|_| std::net::TcpStream::connect(("127.0.0.1", port)).ok())
        .collect();
    std::thread::sleep(Duration::from_millis(800));
    assert!(
        listener.try_wait().unwrap().is_none(),
        "the listener died under {} connections",
        flood.len()
    );
    drop(flood);
    std::thread::sleep(Duration::from_millis(300));
    let flags = vec![
        "-i".to_string(),
        keys.join("a.key").display().to_string(),
        "--known-hosts".into(),
        keys.join("known_hosts").display().to_string(),
        "--accept-new-host-key".into(),
    ];
    let client = start(
        &format!("ssh://127.0.0.1:{port}{}", d.export.display()),
        &d,
        &flags,
    );
    rt().block_on(async {
        let mut nfs = Nfs::mount(client.port).await;
        let root = nfs.root.clone();
        let fh = nfs.lookup(&root, "a.txt").await.unwrap();
        assert_eq!(nfs.read_all(&fh, 4096).await.unwrap(), b"still here\n");
    });
    drop(client);
    let _ = listener.kill();
    let _ = listener.wait();
}
