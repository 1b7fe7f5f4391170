// `--version` says which commit the binary was built from (`git describe`), or
// "unknown revision" outside a git checkout (a crate tarball). Shared by both binaries:
// proxy-server/build.rs includes this file.

fn main() {
    let rev = std::process::Command::new("git")
        .args(["describe", "--always", "--dirty", "--abbrev=12"])
        .output()
        .ok()
        .filter(|o| o.status.success())
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "unknown revision".into());
    println!("cargo:rustc-env=GRIDVFS_GIT_REV={rev}");
    // Rebuilt when HEAD moves (a commit, a checkout); the working tree's dirtiness is
    // as of the last build of this crate.
    for p in ["../.git/HEAD", "../.git/index"] {
        if std::path::Path::new(p).exists() {
            println!("cargo:rerun-if-changed={p}");
        }
    }
}
