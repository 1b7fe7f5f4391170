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

#[cfg(test)]
mod tests {
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
