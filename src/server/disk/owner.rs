//! The owner override: the store's user may write its own 0444 files (as root may
//! anywhere), by adding the owner's write bit for the one open and restoring it. Whether
//! a caller may do that at all is the client's access policy; this is the mechanism.

use std::os::fd::OwnedFd;

use rustix::fs::{self as rfs, Mode};

use super::meta::{stat_fd, status_of};
use crate::proto::Status;

/// `/proc/self/fd/N` of `fd`: names exactly that inode, whatever happens to its path.
pub(super) fn proc_path(fd: &OwnedFd) -> String {
    format!("/proc/self/fd/{}", std::os::fd::AsRawFd::as_raw_fd(fd))
}

/// Serialises owner overrides, so two of them on one file cannot leave it writable.
static OWNER_OVERRIDE: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// Run `open` with the owner's write bit added to the file behind `fd` (an `O_PATH` fd),
/// then restore the mode. Refused unless this process owns the file.
pub(super) fn with_owner_write<T>(
    fd: &OwnedFd,
    open: impl FnOnce() -> Result<T, Status>,
) -> Result<T, Status> {
    let _one = OWNER_OVERRIDE.lock().unwrap_or_else(|p| p.into_inner());
    let st = stat_fd(fd)?;
    if st.attr.uid != rustix::process::geteuid().as_raw() || st.mode & 0o200 != 0 {
        return Err(Status::Access);
    }
    let path = proc_path(fd);
    let mode = st.mode & 0o7777;
    rfs::chmod(&path, Mode::from_raw_mode(mode | 0o200)).map_err(status_of)?;
    let out = open();
    rfs::chmod(&path, Mode::from_raw_mode(mode)).map_err(status_of)?;
    out
}
