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

/// `--version` names the build's revision; completion scripts and manual pages come from
/// the clap definitions of both binaries: bash accepts the script, and the page is roff
/// that names every subcommand.
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
        let version = std::process::Command::new(bin(binary))
            .arg("--version")
            .output()
            .unwrap();
        let version = String::from_utf8(version.stdout).unwrap();
        // `NAME X.Y.Z (REVISION)`: the commit it was built from, or "unknown revision".
        let rev = version
            .trim()
            .strip_prefix(&format!("{binary} {} (", env!("CARGO_PKG_VERSION")))
            .and_then(|r| r.strip_suffix(')'));
        assert!(rev.is_some_and(|r| !r.is_empty()), "{binary}: {version:?}");
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

fn curl(url: &str) -> String {
    let out = std::process::Command::new("curl")
        .args(["-sS", "--max-time", "5", url])
        .output()
        .expect("curl (CI installs it)");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Issue 15: Debian's real Prometheus scrapes `--metrics-addr`, and its query API returns
/// the client's figures: the same numbers `status --json` shows, labelled by export.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_real_prometheus_scrapes_the_figures_of_status() {
    let prometheus = std::path::Path::new("/usr/bin/prometheus");
    assert!(
        prometheus.exists(),
        "Debian's prometheus package is needed (.ci/run installs it)"
    );
    let d = dirs();
    let data = noise(160, 3 << 20);
    std::fs::write(d.export.join("vm.img"), &data).unwrap();
    let metrics_port = free_port();
    let metrics = format!("127.0.0.1:{metrics_port}");
    let client = ClientProc::start(&d.export, &d.cache, 0, &["--metrics-addr", &metrics]);
    let mut nfs = Nfs::mount(client.port).await;
    let root = nfs.root.clone();
    let img = nfs.lookup(&root, "vm.img").await.unwrap();
    assert!(nfs.read_all(&img, 1 << 20).await.unwrap() == data);
    assert!(nfs.read_all(&img, 1 << 20).await.unwrap() == data);
    let st = status_json(&d.cache);
    let (hits, misses) = (n(&st, "block_hits"), n(&st, "block_misses"));
    assert!(hits > 0 && misses > 0, "{st}");
    let export = st["export_id"].as_str().unwrap().to_string();

    // The endpoint itself, as text.
    let text = curl(&format!("http://{metrics}/metrics"));
    let series = format!("gridvfs_cache_block_misses_total{{export=\"{export}\"}} {misses}");
    assert!(text.contains(&series), "{series} not in:\n{text}");
    assert!(
        text.contains("# TYPE gridvfs_writeback_dirty_bytes gauge"),
        "{text}"
    );
    assert!(curl(&format!("http://{metrics}/other")).contains("only /metrics"));
    // The link's round trip, timed on small requests (LOOKUP, GETATTR ...).
    let rtt = st["link_rtt_ms"]
        .as_f64()
        .expect("link_rtt_ms after requests");
    assert!(rtt > 0.0 && rtt < 10_000.0, "{st}");
    let rtt_series = format!("gridvfs_link_rtt_seconds{{export=\"{export}\"}} ");
    assert!(text.contains(&rtt_series), "{rtt_series} not in:\n{text}");
    assert!(
        text.contains(&format!(
            "gridvfs_writeback_oldest_dirty_age_seconds{{export=\"{export}\"}} 0"
        )),
        "no write-back data pending: {text}"
    );

    // Prometheus scraping it every second.
    let prom_port = free_port();
    let config = d.tmp.path().join("prometheus.yml");
    std::fs::write(
        &config,
        format!(
            "global:\n  scrape_interval: 1s\nscrape_configs:\n  - job_name: gridvfs\n    \
             static_configs:\n      - targets: ['{metrics}']\n"
        ),
    )
    .unwrap();
    let mut prom = std::process::Command::new(prometheus)
        .arg(format!("--config.file={}", config.display()))
        .arg(format!(
            "--storage.tsdb.path={}",
            d.tmp.path().join("tsdb").display()
        ))
        .arg(format!("--web.listen-address=127.0.0.1:{prom_port}"))
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("start prometheus");
    let query = |q: &str| {
        let body = curl(&format!(
            "http://127.0.0.1:{prom_port}/api/v1/query?query={q}"
        ));
        serde_json::from_str::<serde_json::Value>(&body).unwrap_or_default()
    };
    let t = Instant::now();
    let found = loop {
        let r = query("gridvfs_cache_block_hits_total");
        let result = &r["data"]["result"];
        if result.as_array().is_some_and(|a| !a.is_empty()) {
            break result[0].clone();
        }
        if t.elapsed() > Duration::from_secs(60) {
            let _ = prom.kill();
            panic!("Prometheus never had the series: {r}");
        }
        std::thread::sleep(Duration::from_millis(500));
    };
    let up = query("up");
    let _ = prom.kill();
    let _ = prom.wait();
    println!("prometheus: {found}");
    assert_eq!(found["metric"]["export"], export.as_str(), "{found}");
    assert_eq!(found["metric"]["job"], "gridvfs", "{found}");
    assert_eq!(
        found["value"][1].as_str().unwrap(),
        hits.to_string(),
        "the same figure as status: {found}"
    );
    assert_eq!(up["data"]["result"][0]["value"][1], "1", "{up}");
}

/// `gridvfs-client check` and its exit codes.
fn check(cache: &std::path::Path, extra: &[&str]) -> (i32, String) {
    let out = std::process::Command::new(bin("gridvfs-client"))
        .arg("check")
        .arg("--cache-dir")
        .arg(cache)
        .args(extra)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert_eq!(text.lines().count(), 1, "one line: {text:?}");
    (out.status.code().expect("exited"), text)
}

/// Issue 15: `check` for monitoring: 0 healthy, 10 store unreachable, 11 cache directory
/// unusable, 12 write-back stuck, 13 no client, each with one line saying which.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn check_exit_codes_name_each_failure() {
    let d = dirs();
    // No client yet.
    let (code, line) = check(&d.cache, &[]);
    assert_eq!(code, 13, "{line}");
    assert!(line.starts_with("NOT RUNNING"), "{line}");
    // A cache directory others may write to is refused (StrictModes).
    let open = d.tmp.path().join("open-cache");
    std::fs::create_dir(&open).unwrap();
    std::fs::set_permissions(&open, std::os::unix::fs::PermissionsExt::from_mode(0o777)).unwrap();
    let (code, line) = check(&open, &[]);
    assert_eq!(code, 11, "{line}");
    assert!(line.starts_with("CACHE UNUSABLE"), "{line}");

    // Healthy.
    let down = d.tmp.path().join("link-down");
    let ro = d.tmp.path().join("read-only");
    std::fs::write(d.export.join("redo.log"), vec![0u8; 65536]).unwrap();
    let remote = format!(
        "exec:if [ -e {down} ]; then exit 255; fi; if [ -e {ro} ]; then r=--read-only; fi; exec {server} serve --stdio --export {export} $r",
        down = down.display(),
        ro = ro.display(),
        server = bin("gridvfs-server").display(),
        export = d.export.display()
    );
    let client =
        ClientProc::start_remote(&remote, &d.export, &d.cache, 0, &["--write-policy", "back"]);
    let (code, line) = check(&d.cache, &[]);
    assert_eq!(code, 0, "{line}");
    assert!(line.starts_with("OK export"), "{line}");
    assert!(
        status_json(&d.cache)["writeback_oldest_secs"].is_null(),
        "nothing pending"
    );

    // The store refuses the write-back data for good (it came back read-only).
    let mut nfs = Nfs::mount(client.port).await;
    let root = nfs.root.clone();
    let redo = nfs.lookup(&root, "redo.log").await.unwrap();
    std::fs::write(&ro, "").unwrap();
    client.kill_servers();
    nfs.write(
        &redo,
        0,
        b"refused",
        nfs3_client::nfs3_types::nfs3::stable_how::FILE_SYNC,
    )
    .await
    .unwrap();
    let t = Instant::now();
    let (code, line) = loop {
        let (code, line) = check(&d.cache, &[]);
        if code != 0 || t.elapsed() > Duration::from_secs(30) {
            break (code, line);
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    assert_eq!(code, 12, "{line}");
    assert!(
        line.starts_with("WRITE-BACK STUCK") && line.contains("refused"),
        "{line}"
    );
    // The refused entry waits in the journal: its age since acknowledgement grows.
    let age = |st: &serde_json::Value| {
        st["writeback_oldest_secs"]
            .as_f64()
            .unwrap_or_else(|| panic!("writeback_oldest_secs with data pending: {st}"))
    };
    let first = age(&status_json(&d.cache));
    std::thread::sleep(Duration::from_millis(1500));
    let later = age(&status_json(&d.cache));
    assert!(
        later >= first + 1.0 && later < 60.0,
        "oldest entry's age {first} then {later}"
    );

    // The store unreachable: the client goes offline.
    std::fs::write(&down, "").unwrap();
    client.kill_servers();
    let t = Instant::now();
    let (code, line) = loop {
        let (code, line) = check(&d.cache, &[]);
        if code == 10 || t.elapsed() > Duration::from_secs(30) {
            break (code, line);
        }
        // Something must ask the store for the client to notice it is gone.
        let _ = nfs.fsstat().await;
        std::thread::sleep(Duration::from_millis(300));
    };
    assert_eq!(code, 10, "{line}");
    assert!(line.starts_with("STORE UNREACHABLE"), "{line}");
}

/// Off a terminal, long commands report progress as JSON lines (here `prefetch` of a
/// plain file, read through to its end), the last one `"event":"done"` with every byte.
#[test]
fn progress_is_json_lines_off_a_terminal() {
    let d = dirs();
    let file = d.tmp.path().join("image.raw");
    std::fs::write(&file, vec![7u8; 3 << 20]).unwrap();
    let out = std::process::Command::new(bin("gridvfs-client"))
        .arg("prefetch")
        .arg(&file)
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let lines: Vec<serde_json::Value> = String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).expect("every line is JSON"))
        .collect();
    let last = lines.last().expect("at least the last line");
    assert_eq!(last["event"], "done", "{lines:?}");
    assert_eq!(last["what"], "prefetch");
    assert_eq!(last["done_bytes"], 3 << 20);
    assert_eq!(last["total_bytes"], 3 << 20);
}

/// Issue 15: the shipped unit and config are valid as shipped. systemd's own
/// `systemd-analyze verify` checks `dist/systemd/gridvfs@.service` (its ExecStart pointed
/// at the built binary), and a broken copy is flagged, so the check can fail; the example
/// config `dist/gridvfs.toml` parses into a runnable [mount.images] (`config show`).
#[test]
fn the_shipped_unit_and_config_are_valid() {
    let d = dirs();
    let unit = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/dist/systemd/gridvfs@.service"
    ))
    .unwrap();
    assert!(unit.contains("serve --name %i") && unit.contains("Type=notify"));
    let client = bin("gridvfs-client");
    let units = d.tmp.path().join("units");
    std::fs::create_dir(&units).unwrap();
    std::fs::write(
        units.join("gridvfs@.service"),
        unit.replace("/usr/local/bin/gridvfs-client", client.to_str().unwrap()),
    )
    .unwrap();
    std::fs::write(
        units.join("broken@.service"),
        unit.replace("Type=notify", "Type=notify\nTypo=1"),
    )
    .unwrap();
    let verify = |name: &str| {
        std::process::Command::new("systemd-analyze")
            .args(["verify", "--man=no"])
            .arg(units.join(name))
            .output()
            .expect("systemd-analyze (Debian's systemd package)")
    };
    let good = verify("gridvfs@images.service");
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&good.stdout),
        String::from_utf8_lossy(&good.stderr)
    );
    assert!(
        good.status.success() && !said.contains("Unknown"),
        "the unit: {said}"
    );
    let bad = verify("broken@images.service");
    assert!(
        String::from_utf8_lossy(&bad.stderr).contains("Unknown key 'Typo'"),
        "a broken unit is flagged: {bad:?}"
    );

    let out = std::process::Command::new(&client)
        .args(["config", "show", "--origin", "--config"])
        .arg(concat!(env!("CARGO_MANIFEST_DIR"), "/dist/gridvfs.toml"))
        .args(["--name", "images"])
        .output()
        .unwrap();
    let shown = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{out:?}");
    assert!(
        shown.contains("remote = \"alice@store.example.org:/srv/images\"")
            && shown.contains("write-policy = \"back\"")
            && shown.contains("allow-uid = [0, 64055]"),
        "{shown}"
    );
}
