//! libnfs-utils (`nfs-ls`, `nfs-cp`, `nfs-cat`) and qemu-img's `nfs://` driver against a
//! running `gridvfs-client`: independent NFSv3 client implementations.

use std::process::Command;

use crate::harness::*;

fn tool(name: &str) -> Command {
    let found = Command::new("sh")
        .arg("-c")
        .arg(format!("command -v {name}"))
        .output()
        .unwrap();
    assert!(
        found.status.success(),
        "{name} is not installed: apt-get install libnfs-utils qemu-utils qemu-block-extra (.ci/run does)"
    );
    Command::new(name)
}

#[test]
fn libnfs_utils_list_copy_and_cat() {
    let d = dirs();
    std::fs::create_dir(d.export.join("images")).unwrap();
    std::fs::write(d.export.join("images/small.txt"), b"hello from the store\n").unwrap();
    let big = noise(11, 5 << 20);
    std::fs::write(d.export.join("images/vm.mem"), &big).unwrap();
    let client = ClientProc::start(&d.export, &d.cache, 0, &[]);

    let ls = run_ok(tool("nfs-ls").arg(client.url("/images")));
    assert!(
        ls.contains("small.txt") && ls.contains("vm.mem"),
        "nfs-ls: {ls}"
    );
    assert!(
        ls.contains(&(5u64 << 20).to_string()),
        "nfs-ls shows sizes: {ls}"
    );
    // Both spellings of the root work (libnfs mounts "" for nfs://host/file).
    let cat = run_ok(tool("nfs-cat").arg(client.url("images/small.txt")));
    assert_eq!(cat, "hello from the store\n");

    let down = d.tmp.path().join("down");
    run_ok(tool("nfs-cp").arg(client.url("/images/vm.mem")).arg(&down));
    assert_eq!(std::fs::read(&down).unwrap(), big);

    let up_src = d.tmp.path().join("up");
    let up = noise(12, (3 << 20) + 123);
    std::fs::write(&up_src, &up).unwrap();
    run_ok(
        tool("nfs-cp")
            .arg(&up_src)
            .arg(client.url("/images/uploaded.bin")),
    );
    assert_eq!(
        std::fs::read(d.export.join("images/uploaded.bin")).unwrap(),
        up
    );
}

#[test]
fn qemu_img_creates_converts_and_checks_images_through_nfs() {
    let d = dirs();
    let raw = d.tmp.path().join("src.raw");
    let mut img = vec![0u8; 64 << 20];
    for (i, chunk) in img
        .chunks_mut(1 << 20)
        .enumerate()
        .filter(|(i, _)| i % 5 == 0)
    {
        chunk.copy_from_slice(&noise(i as u64, 1 << 20));
    }
    std::fs::write(&raw, &img).unwrap();
    // qemu's nfs:// driver takes no ports: it asks the portmapper on 111, which the
    // client answers with --portmapper.
    let _client = ClientProc::start(&d.export, &d.cache, 0, &["--portmapper", "127.0.0.1:111"]);
    // `//`: the export is "/" (libnfs reads nfs://host/file as export "" + file).
    let url = |p: &str| format!("nfs://127.0.0.1//{p}");

    run_ok(
        tool("qemu-img")
            .args(["create", "-f", "qcow2"])
            .arg(url("base.qcow2"))
            .arg("64M"),
    );
    run_ok(
        tool("qemu-img")
            .args(["convert", "-O", "qcow2"])
            .arg(&raw)
            .arg(url("conv.qcow2")),
    );
    run_ok(tool("qemu-img").arg("check").arg(url("conv.qcow2")));
    let info = run_ok(tool("qemu-img").arg("info").arg(url("conv.qcow2")));
    assert!(info.contains("qcow2"), "{info}");
    run_ok(
        tool("qemu-img")
            .args(["compare"])
            .arg(&raw)
            .arg(url("conv.qcow2")),
    );
    // Back out through NFS to a local raw file: the same bytes.
    let back = d.tmp.path().join("back.raw");
    run_ok(
        tool("qemu-img")
            .args(["convert", "-O", "raw"])
            .arg(url("conv.qcow2"))
            .arg(&back),
    );
    assert_eq!(std::fs::read(&back).unwrap(), img);
    // The file on the store is a valid image for a local qemu-img too.
    run_ok(
        tool("qemu-img")
            .arg("check")
            .arg(d.export.join("conv.qcow2")),
    );
}
