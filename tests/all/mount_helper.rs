//! Issue 15: the config file's layers (file < environment < flag, each value's origin
//! shown) and the mount helper: `mount -t gridvfs` and an fstab line, run by util-linux's
//! own mount(8) inside a guest whose kernel NFS client mounts what the helper started;
//! and the helper's refusals, with mount(8)'s exit statuses.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use crate::harness::*;

/// `gridvfs-client` under the name mount(8) runs it by.
fn helper(dir: &Path) -> PathBuf {
    let h = dir.join("mount.gridvfs");
    if !h.exists() {
        std::os::unix::fs::symlink(bin("gridvfs-client"), &h).unwrap();
    }
    h
}

fn text(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// The line of `config show --origin` for `key`.
fn line<'a>(show: &'a str, key: &str) -> &'a str {
    show.lines()
        .find(|l| l.starts_with(&format!("{key} = ")))
        .unwrap_or_else(|| panic!("no {key} in:\n{show}"))
}

#[test]
fn config_layers_file_then_env_then_flag_with_origins() {
    let d = dirs();
    let etc = d.tmp.path().join("etc");
    std::fs::create_dir_all(etc.join("conf.d")).unwrap();
    let port = free_port();
    let conf = etc.join("gridvfs.toml");
    std::fs::write(
        &conf,
        format!(
            "[defaults]\nattr-timeout = 5\ncache-size = \"2G\"\nallow-uid = [0, 64055]\n\n\
             [mount.images]\nremote = \"local:{}\"\nlisten = \"127.0.0.1:{port}\"\n\
             cache-dir = \"{}\"\ncache-size = \"3G\"\nrequest-timeout = 7\n\
             allow-unprivileged-ports = true\nno-root-squash = true\n\n[mount.other]\nremote = \"local:/nowhere\"\n",
            d.export.display(),
            d.cache.display()
        ),
    )
    .unwrap();
    // conf.d files come after the main file, in name order.
    std::fs::write(
        etc.join("conf.d/20-late.toml"),
        "[mount.images]\nrequest-timeout = 9\n",
    )
    .unwrap();
    std::fs::write(
        etc.join("conf.d/10-early.toml"),
        "[mount.images]\nrequest-timeout = 8\nattr-timeout = 6\n",
    )
    .unwrap();
    let show = |env: &[(&str, &str)], flags: &[&str]| -> String {
        let mut c = Command::new(bin("gridvfs-client"));
        c.args(["config", "show", "--origin", "--config"])
            .arg(&conf)
            .args(["--name", "images"])
            .args(flags)
            .env_remove("GRIDVFS_CACHE_SIZE");
        for (k, v) in env {
            c.env(k, v);
        }
        run_ok(&mut c)
    };
    let only_files = show(&[], &[]);
    let conf_s = conf.display().to_string();
    assert!(
        line(&only_files, "cache-size").contains(&format!("= {} ", 3u64 << 30))
            && line(&only_files, "cache-size").contains(&format!("{conf_s} [mount.images]")),
        "the mount's table over [defaults]:\n{only_files}"
    );
    assert!(
        line(&only_files, "request-timeout").contains("9.0")
            && line(&only_files, "request-timeout").contains("20-late.toml [mount.images]"),
        "{only_files}"
    );
    assert!(
        line(&only_files, "attr-timeout").contains("6.0")
            && line(&only_files, "attr-timeout").contains("10-early.toml [mount.images]"),
        "conf.d over the main file's [defaults]:\n{only_files}"
    );
    assert!(
        line(&only_files, "allow-uid").contains("[0, 64055]")
            && line(&only_files, "allow-uid").contains(&format!("{conf_s} [defaults]")),
        "{only_files}"
    );
    assert!(
        line(&only_files, "write-policy").contains("built-in default"),
        "{only_files}"
    );
    let with_env = show(
        &[("GRIDVFS_CACHE_SIZE", "4G"), ("GRIDVFS_ALLOW_UID", "5,6")],
        &[],
    );
    assert!(
        line(&with_env, "cache-size").contains(&(4u64 << 30).to_string())
            && line(&with_env, "cache-size").contains("environment GRIDVFS_CACHE_SIZE"),
        "environment over the files:\n{with_env}"
    );
    assert!(
        line(&with_env, "allow-uid").contains("[5, 6]"),
        "{with_env}"
    );
    let with_flag = show(&[("GRIDVFS_CACHE_SIZE", "4G")], &["--cache-size", "5G"]);
    assert!(
        line(&with_flag, "cache-size").contains(&(5u64 << 30).to_string())
            && line(&with_flag, "cache-size").contains("flag --cache-size"),
        "the flag over the environment:\n{with_flag}"
    );

    // `serve --name` runs with those settings: it listens where the table says.
    let mut serve = Command::new(bin("gridvfs-client"))
        .args(["serve", "--config"])
        .arg(&conf)
        .args(["--name", "images"])
        .env("GRIDVFS_CACHE_SIZE", "64M")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let t = std::time::Instant::now();
    let st = loop {
        if let Ok(out) = Command::new(bin("gridvfs-client"))
            .args(["status", "--json", "--cache-dir"])
            .arg(&d.cache)
            .output()
            && out.status.success()
        {
            break serde_json::from_slice::<serde_json::Value>(&out.stdout).unwrap();
        }
        if let Some(st) = serve.try_wait().unwrap() {
            panic!(
                "serve --name images ended: {st:?}: {}",
                text(&serve.wait_with_output().unwrap())
            );
        }
        assert!(
            t.elapsed().as_secs() < 30,
            "serve --name images never answered"
        );
        std::thread::sleep(std::time::Duration::from_millis(100));
    };
    assert_eq!(st["listen"], format!("127.0.0.1:{port}"), "{st}");
    assert_eq!(st["store"], format!("local:{}", d.export.display()), "{st}");
    assert!(std::net::TcpStream::connect(("127.0.0.1", port)).is_ok());
    // The maintenance commands look where `serve` with the same config does: the table's
    // cache-dir, with no --cache-dir given (before, they looked in ~/.cache/gridvfs).
    let by_config = |args: &[&str]| {
        let out = Command::new(bin("gridvfs-client"))
            .args(args)
            .arg("--config")
            .arg(&conf)
            .args(["--name", "images"])
            .env("HOME", d.tmp.path().join("elsewhere"))
            .env_remove("XDG_CACHE_HOME")
            .output()
            .unwrap();
        (out.status.code(), text(&out))
    };
    let (code, out) = by_config(&["status", "--json"]);
    assert_eq!(code, Some(0), "{out}");
    assert!(out.contains(&format!("127.0.0.1:{port}")), "{out}");
    let (code, out) = by_config(&["check"]);
    assert_eq!(code, Some(0), "check finds the client: {out}");
    let (code, out) = by_config(&["flush"]);
    assert_eq!(code, Some(0), "{out}");
    serve.kill().unwrap();
    let _ = serve.wait();

    // Mistakes name the key and where it was written.
    std::fs::write(
        etc.join("conf.d/30-typo.toml"),
        "[mount.images]\ncache-sise = \"1G\"\n",
    )
    .unwrap();
    let out = Command::new(bin("gridvfs-client"))
        .args(["config", "show", "--config"])
        .arg(&conf)
        .args(["--name", "images"])
        .output()
        .unwrap();
    let msg = text(&out);
    assert!(
        !out.status.success() && msg.contains("cache-sise") && msg.contains("30-typo.toml"),
        "{msg}"
    );
    std::fs::write(
        etc.join("conf.d/30-typo.toml"),
        "[mount.images]\ncache-size = \"1Q\"\n",
    )
    .unwrap();
    let out = Command::new(bin("gridvfs-client"))
        .args(["serve", "--config"])
        .arg(&conf)
        .args(["--name", "images"])
        .output()
        .unwrap();
    let msg = text(&out);
    assert!(
        !out.status.success() && msg.contains("1Q") && msg.contains("30-typo.toml"),
        "{msg}"
    );
    std::fs::write(etc.join("conf.d/30-typo.toml"), "[mounts.images]\n").unwrap();
    let out = Command::new(bin("gridvfs-client"))
        .args(["config", "show", "--config"])
        .arg(&conf)
        .output()
        .unwrap();
    assert!(
        !out.status.success() && text(&out).contains("mounts"),
        "{}",
        text(&out)
    );
    std::fs::remove_file(etc.join("conf.d/30-typo.toml")).unwrap();
    let out = Command::new(bin("gridvfs-client"))
        .args(["config", "show", "--config"])
        .arg(&conf)
        .args(["--name", "nope"])
        .output()
        .unwrap();
    assert!(
        !out.status.success() && text(&out).contains("images, other"),
        "an unknown table lists the known ones: {}",
        text(&out)
    );
}

#[test]
fn mount_helper_refusals_use_mounts_exit_codes() {
    let d = dirs();
    let h = helper(d.tmp.path());
    let mnt = d.tmp.path().join("mnt");
    std::fs::create_dir(&mnt).unwrap();
    let port = free_port().to_string();
    let cache = format!("cache-dir={}", d.cache.display());
    let listen = format!("listen=127.0.0.1:{port}");
    let run = |args: &[&str]| -> (i32, String) {
        let out = Command::new(&h).args(args).output().unwrap();
        (out.status.code().unwrap_or(-1), text(&out))
    };
    let export = format!("local:{}", d.export.display());
    let m = mnt.to_str().unwrap();

    let (code, msg) = run(&[&export, m, "-o", "soft"]);
    assert!(
        code == 1 && msg.contains("soft") && msg.contains("EIO"),
        "{code} {msg}"
    );
    let (code, msg) = run(&[&export, m, "-o", "port=2049"]);
    assert!(code == 1 && msg.contains("listen="), "{code} {msg}");
    let (code, msg) = run(&[&export, m, "-o", &format!("{cache},cache-size=12X")]);
    assert!(code == 1 && msg.contains("12X"), "{code} {msg}");
    let (code, msg) = run(&[m]);
    assert_eq!(code, 1, "a missing argument is a usage error: {msg}");
    let (code, msg) = run(&[
        "nosuchtable",
        m,
        "-o",
        &format!("config={}", d.tmp.path().join("none.toml").display()),
    ]);
    assert!(code == 1 && msg.contains("none.toml"), "{code} {msg}");
    let (code, msg) = run(&[
        &export,
        d.tmp.path().join("nodir").to_str().unwrap(),
        "-o",
        &cache,
    ]);
    assert!(code == 32 && msg.contains("mount point"), "{code} {msg}");
    // An unreachable store: the client the helper started says why, and the helper
    // returns 32 with that reason.
    let gone = format!("local:{}", d.tmp.path().join("gone").display());
    let (code, msg) = run(&[&gone, m, "-o", &format!("{cache},{listen}")]);
    assert!(
        code == 32
            && msg.contains("could not start")
            && msg.contains("cannot open export directory"),
        "{code} {msg}"
    );
    let (code, msg) = run(&[
        "ssh://nobody@127.0.0.1:1/x",
        m,
        "-o",
        &format!("{cache},{listen},reconnect-timeout=1"),
    ]);
    assert!(
        code == 32 && msg.contains("Connection refused"),
        "{code} {msg}"
    );
    // `-f` (fake) does everything but mount(2): the client it started stays and a second
    // call reuses it; a different store on the same port is refused.
    let (code, msg) = run(&[
        &export,
        m,
        "-f",
        "-v",
        "-o",
        &format!("{cache},{listen},rsize=65536"),
    ]);
    assert!(
        code == 0 && msg.contains("ready") && msg.contains("hard") && msg.contains("rsize=65536"),
        "{code} {msg}"
    );
    let st = status_json(&d.cache);
    let (code, msg) = run(&[&export, m, "-f", "-v", "-o", &format!("{cache},{listen}")]);
    assert!(
        code == 0 && msg.contains(&format!("running client (pid {})", n(&st, "pid"))),
        "{code} {msg}"
    );
    let other = d.tmp.path().join("other");
    std::fs::create_dir(&other).unwrap();
    let (code, msg) = run(&[
        &format!("local:{}", other.display()),
        m,
        "-f",
        "-o",
        &format!("{cache},{listen}"),
    ]);
    assert!(
        code == 32 && msg.contains("another gridvfs-client"),
        "{code} {msg}"
    );
    rustix::process::kill_process(
        rustix::process::Pid::from_raw(n(&st, "pid") as i32).unwrap(),
        rustix::process::Signal::TERM,
    )
    .unwrap();
}

/// Inside the guest: util-linux's mount(8) runs /sbin/mount.gridvfs for `-t gridvfs` and
/// for an fstab line naming a config table; the kernel's NFS client mounts what it
/// started.
const GUEST: &str = r#"set -e
while read -r p; do mkdir -p "$(dirname "$p")"; cp "/host/lib/$(basename "$p")" "$p"; done </host/lib/paths
mkdir -p /sbin /run /etc/gridvfs /mnt/images /mnt/fstab
ln -s /host/bin/gridvfs-client /sbin/mount.gridvfs
M=/host/bin/mount
pid() { /host/bin/gridvfs-client status --json --cache-dir /tmp/c | sed 's/.*"pid":\([0-9]*\).*/\1/'; }
rc=0; $M -t gridvfs local:/host/missing /mnt/images -o cache-dir=/tmp/c,listen=127.0.0.1:2049 2>/host/unreachable.err || rc=$?
echo "unreachable-rc=$rc"
rc=0; $M -t gridvfs local:/host/store /mnt/images -o soft 2>/host/soft.err || rc=$?
echo "soft-rc=$rc"
$M -t gridvfs local:/host/store /mnt/images -o cache-dir=/tmp/c,listen=127.0.0.1:2049,no-root-squash,write-policy=back,noatime
echo "mounts1: $(grep ' /mnt/images ' /proc/mounts)"
echo "read: $(cat /mnt/images/hello.txt)"
echo written-through-the-helper > /mnt/images/new.txt
sync
echo "pid1=$(pid)"
umount /mnt/images
cat > /etc/gridvfs/gridvfs.toml <<EOF
[mount.images]
remote = "local:/host/store"
cache-dir = "/tmp/c"
listen = "127.0.0.1:2049"
no-root-squash = true
write-policy = "back"
EOF
echo 'images /mnt/fstab gridvfs _netdev,nosuid 0 0' >/etc/fstab
$M /mnt/fstab
echo "mounts2: $(grep ' /mnt/fstab ' /proc/mounts)"
echo "read2: $(cat /mnt/fstab/new.txt)"
echo "pid2=$(pid)"
umount /mnt/fstab
/host/bin/gridvfs-client flush --cache-dir /tmp/c
echo done
"#;

#[test]
fn kernel_client_mounts_through_mount_t_gridvfs_and_fstab() {
    assert!(
        rustix::process::geteuid().is_root(),
        "the kernel-client tests need root (the guest harness makes a VM); CI runs as root"
    );
    let d = dirs();
    let share = d.tmp.path().join("share");
    std::fs::create_dir_all(share.join("bin")).unwrap();
    std::fs::create_dir_all(share.join("store")).unwrap();
    std::fs::write(share.join("store/hello.txt"), "hello from the store\n").unwrap();
    let client = bin("gridvfs-client");
    let server = bin("gridvfs-server");
    let mount = PathBuf::from(
        run_ok(Command::new("sh").args(["-c", "command -v mount"]))
            .trim()
            .to_string(),
    );
    for b in [&client, &server, &mount] {
        std::fs::copy(b, share.join("bin").join(b.file_name().unwrap())).unwrap();
    }
    copy_libraries(&share, &[&client, &server, &mount]);
    let out = Command::new(super::guest::harness())
        .args(["--no-mount", "--timeout", "600", "--share"])
        .arg(&share)
        .arg("--")
        .arg(GUEST)
        .output()
        .unwrap();
    let t = text(&out);
    println!("{t}");
    assert!(out.status.success() && t.contains("done"), "{t}");
    let unreachable = std::fs::read_to_string(share.join("unreachable.err")).unwrap();
    assert!(
        t.contains("unreachable-rc=32") && unreachable.contains("cannot open export directory"),
        "an unreachable store is mount(8)'s 32, with the reason: {t}\n{unreachable}"
    );
    assert!(t.contains("soft-rc=1"), "{t}");
    let mounts1 = t.lines().find(|l| l.starts_with("mounts1:")).unwrap();
    for want in [" nfs ", "vers=3", "hard", "nolock", "noatime", "port=2049"] {
        assert!(mounts1.contains(want), "{want} missing: {mounts1}");
    }
    assert!(t.contains("read: hello from the store"), "{t}");
    let mounts2 = t.lines().find(|l| l.starts_with("mounts2:")).unwrap();
    assert!(
        mounts2.contains("nosuid") && mounts2.contains("hard"),
        "{mounts2}"
    );
    assert!(t.contains("read2: written-through-the-helper"), "{t}");
    let pid = |k: &str| {
        t.lines()
            .find_map(|l| l.strip_prefix(k))
            .unwrap()
            .trim()
            .to_string()
    };
    assert!(!pid("pid1=").is_empty());
    assert_eq!(
        pid("pid1="),
        pid("pid2="),
        "the fstab mount reuses the running client for the same store and port"
    );
    assert_eq!(
        std::fs::read_to_string(share.join("store/new.txt")).unwrap(),
        "written-through-the-helper\n",
        "write-back data reached the store after umount and flush"
    );
}
