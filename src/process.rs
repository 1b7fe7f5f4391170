//! Process-wide settings both binaries make at start.

/// Raise the soft limit on open files to the hard one (issue 11, item 15): every NFS
/// connection holds a socket and every cached file a descriptor at times, and the
/// default soft limit (1024) is reached by a busy host long before the hard one. Returns
/// the limit now in force.
pub fn raise_open_files_limit() -> u64 {
    use rustix::process::{Resource, getrlimit, setrlimit};
    let mut lim = getrlimit(Resource::Nofile);
    let Some(hard) = lim.maximum else {
        // Unlimited hard limit: a generous soft one (the kernel's nr_open caps it anyway).
        lim.current = Some(1 << 20);
        let _ = setrlimit(Resource::Nofile, lim);
        return getrlimit(Resource::Nofile).current.unwrap_or(u64::MAX);
    };
    if lim.current.is_some_and(|c| c < hard) {
        lim.current = Some(hard);
        if let Err(e) = setrlimit(Resource::Nofile, lim) {
            tracing::debug!("cannot raise the open files limit to {hard}: {e}");
        }
    }
    getrlimit(Resource::Nofile).current.unwrap_or(hard)
}

/// Mark this process as part of the I/O path (`PR_SET_IO_FLUSHER`, as FUSE daemons do;
/// issue 16): the kernel mounts our NFS port on loopback, and under memory pressure its
/// writeback may wait for us while we wait for memory it would reclaim by writing back —
/// a deadlock. With the flag our allocations do not recurse into I/O and we are not
/// throttled as a dirtier. Needs CAP_SYS_RESOURCE (root has it); without it, nothing
/// changes (the README says which dirty limits to set instead). Call before any thread
/// starts: threads inherit it. Whether it took.
pub fn become_io_flusher() -> bool {
    rustix::process::configure_io_flusher_behavior(true).is_ok()
}

#[cfg(test)]
mod tests {
    /// With CAP_SYS_RESOURCE the flag is set; without it (some containers drop it even
    /// for root) the call reports failure and changes nothing.
    #[test]
    fn io_flusher_where_permitted() {
        let status = std::fs::read_to_string("/proc/self/status").unwrap();
        let eff = status
            .lines()
            .find_map(|l| l.strip_prefix("CapEff:"))
            .map(|v| u64::from_str_radix(v.trim(), 16).unwrap())
            .unwrap();
        let permitted = eff & (1 << 24) != 0; // CAP_SYS_RESOURCE
        assert_eq!(super::become_io_flusher(), permitted);
        if permitted {
            // (Reading the flag needs the capability too.)
            assert!(rustix::process::is_io_flusher().unwrap());
        }
    }

    #[test]
    fn the_soft_limit_reaches_the_hard_one() {
        let now = super::raise_open_files_limit();
        let lim = rustix::process::getrlimit(rustix::process::Resource::Nofile);
        assert_eq!(lim.current, Some(now));
        if let Some(hard) = lim.maximum {
            assert_eq!(now, hard);
        }
    }
}
