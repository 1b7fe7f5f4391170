//! Issue 15: running under systemd. The client speaks sd_notify(3) to a real
//! `$NOTIFY_SOCKET` datagram socket held by the test, as systemd's would be: READY=1 once
//! the NFS port answers, STATUS= lines with its figures, WATCHDOG=1 at half of
//! `$WATCHDOG_USEC`, and at SIGTERM STOPPING=1, then EXTEND_TIMEOUT_USEC while write-back
//! data drains; nothing acknowledged is lost.

use std::os::unix::net::UnixDatagram;
use std::time::{Duration, Instant};

use nfs3_client::nfs3_types::nfs3::stable_how;

use crate::harness::*;

/// Messages on `sock` until `done` says enough (or 30 s pass: then the test fails).
fn until(sock: &UnixDatagram, seen: &mut Vec<String>, done: impl Fn(&[String]) -> bool) {
    let t = Instant::now();
    let mut buf = vec![0u8; 4096];
    while !done(seen) {
        assert!(
            t.elapsed() < Duration::from_secs(30),
            "sd_notify messages so far: {seen:?}"
        );
        if let Ok(n) = sock.recv(&mut buf) {
            seen.extend(
                String::from_utf8_lossy(&buf[..n])
                    .lines()
                    .map(str::to_string),
            );
        }
    }
}

fn has(seen: &[String], prefix: &str) -> bool {
    seen.iter().any(|m| m.starts_with(prefix))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sd_notify_readiness_status_watchdog_and_a_drain_at_stop() {
    let d = dirs();
    let sock_path = d.tmp.path().join("notify.sock");
    let sock = UnixDatagram::bind(&sock_path).unwrap();
    sock.set_read_timeout(Some(Duration::from_millis(200)))
        .unwrap();
    let flag = d.tmp.path().join("link-down");
    std::fs::write(d.export.join("redo.log"), vec![0u8; 1 << 20]).unwrap();
    let remote = unreachable_when(&flag, &d.export);
    let notify = sock_path.to_str().unwrap();
    let client = ClientProc::start_with_env(
        &remote,
        &d.export,
        &d.cache,
        0,
        &["--write-policy", "back", "--reconnect-timeout", "20"],
        &[("NOTIFY_SOCKET", notify), ("WATCHDOG_USEC", "1000000")],
    );
    let mut seen = Vec::new();
    until(&sock, &mut seen, |s| has(s, "READY=1"));
    // Ready means the port answers.
    std::net::TcpStream::connect(("127.0.0.1", client.port)).expect("READY before the port");
    until(&sock, &mut seen, |s| {
        s.iter().filter(|m| *m == "WATCHDOG=1").count() >= 2
    });
    until(&sock, &mut seen, |s| {
        s.iter()
            .any(|m| m.starts_with("STATUS=export ") && m.contains("online"))
    });
    assert!(!has(&seen, "STOPPING=1"), "{seen:?}");

    // Acknowledged write-back data that cannot reach the store yet, then a stop.
    let mut nfs = Nfs::mount(client.port).await;
    let root = nfs.root.clone();
    let redo = nfs.lookup(&root, "redo.log").await.unwrap();
    std::fs::write(&flag, "").unwrap();
    client.kill_servers();
    let data = noise(150, 256 << 10);
    nfs.write(&redo, 4096, &data, stable_how::FILE_SYNC)
        .await
        .expect("write-back write");
    drop(nfs);
    let pid = rustix::process::Pid::from_raw(client.child.id() as i32).unwrap();
    rustix::process::kill_process(pid, rustix::process::Signal::TERM).unwrap();
    seen.clear();
    until(&sock, &mut seen, |s| {
        has(s, "STOPPING=1") && has(s, "EXTEND_TIMEOUT_USEC=")
    });
    assert!(
        seen.iter()
            .any(|m| m.starts_with("STATUS=stopping: uploading")),
        "{seen:?}"
    );
    // The store comes back: the drain finishes and the client exits cleanly.
    std::fs::remove_file(&flag).unwrap();
    let mut client = client;
    let t = Instant::now();
    let status = loop {
        if let Some(st) = client.child.try_wait().unwrap() {
            break st;
        }
        assert!(
            t.elapsed() < Duration::from_secs(60),
            "never exited: {seen:?}"
        );
        std::thread::sleep(Duration::from_millis(100));
    };
    assert!(status.success(), "{status:?}");
    let on_store = std::fs::read(d.export.join("redo.log")).unwrap();
    assert!(
        on_store[4096..4096 + data.len()] == data[..],
        "the acknowledged write reached the store before exit"
    );
}

/// Completion scripts and manual pages come from the clap definitions of both binaries:
/// bash accepts the script, and the page is roff that names every subcommand.
#[test]
fn completions_and_man_pages_are_generated() {
    for (binary, subcommands) in [
        (
            "gridvfs-client",
            &["serve", "status", "flush", "profile"][..],
        ),
        (
            "gridvfs-server",
            &["serve", "listen", "hint", "session-key"][..],
        ),
    ] {
        let out = std::process::Command::new(bin(binary))
            .args(["completions", "bash"])
            .output()
            .unwrap();
        assert!(out.status.success(), "{binary}: {out:?}");
        let script = temp_file(&out.stdout);
        let check = std::process::Command::new("bash")
            .arg("-n")
            .arg(script.path())
            .status()
            .unwrap();
        assert!(
            check.success(),
            "{binary}: bash -n rejects the completion script"
        );
        let text = String::from_utf8(out.stdout).unwrap();
        assert!(
            text.contains("complete -F") && text.contains(binary),
            "{binary}: {text:.300}"
        );
        let man = std::process::Command::new(bin(binary))
            .arg("man")
            .output()
            .unwrap();
        assert!(man.status.success());
        // roff escapes the hyphens of names.
        let page = String::from_utf8(man.stdout).unwrap().replace("\\-", "-");
        assert!(
            page.starts_with(".ie") || page.contains(".TH"),
            "{binary}: {page:.200}"
        );
        for sub in subcommands {
            assert!(page.contains(sub), "{binary} man page lacks {sub}");
        }
    }
}

fn temp_file(bytes: &[u8]) -> tempfile::NamedTempFile {
    let mut f = tempfile::NamedTempFile::new().unwrap();
    std::io::Write::write_all(&mut f, bytes).unwrap();
    f
}
