//! Directory listings, sorted by cookie, kept for the next pages (issue 11, item 21).
//!
//! READDIR resumes after a cookie (a hash of the last name), so each page used to re-read
//! and re-sort the whole directory: listing n entries cost O(n²/page). A listing is now
//! kept per directory version — (ident, mtime, ctime) — and later pages are a binary
//! search into it. Only directories whose mtime is more than [`SETTLED`] old are kept:
//! two changes within one tick of the file system's clock leave the same mtime, and a
//! listing made between them would be served stale.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use crate::proto::Time;

/// Listings kept (a few directories being listed at once).
const KEPT: usize = 8;
/// A kept listing is dropped after this long, whatever happens.
const TTL: Duration = Duration::from_secs(30);
/// A directory changed more recently than this is listed afresh each page.
const SETTLED: Duration = Duration::from_secs(2);

/// Which directory, at which version.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Version {
    pub ident: u64,
    pub mtime: Time,
    pub ctime: Time,
}

/// One directory's names by cookie.
pub type Names = Arc<Vec<(u64, Vec<u8>)>>;

#[derive(Debug, Default)]
pub struct Listings {
    kept: Mutex<Vec<(Version, Names, Instant)>>,
}

impl Listings {
    /// The listing of `v`, from what is kept or made by `read` (and kept if the
    /// directory has settled).
    pub fn get<E>(
        &self,
        v: Version,
        read: impl FnOnce() -> Result<Vec<(u64, Vec<u8>)>, E>,
    ) -> Result<Names, E> {
        {
            let mut kept = self.kept.lock().expect("listings lock");
            kept.retain(|(_, _, t)| t.elapsed() < TTL);
            if let Some((_, names, _)) = kept.iter().find(|(k, ..)| *k == v) {
                return Ok(names.clone());
            }
        }
        let mut names = read()?;
        names.sort_unstable();
        let names = Arc::new(names);
        if settled(v.mtime) && settled(v.ctime) {
            let mut kept = self.kept.lock().expect("listings lock");
            kept.retain(|(k, ..)| k.ident != v.ident);
            if kept.len() >= KEPT {
                kept.remove(0);
            }
            kept.push((v, names.clone(), Instant::now()));
        }
        Ok(names)
    }
}

fn settled(t: Time) -> bool {
    let at = SystemTime::UNIX_EPOCH + Duration::new(t.sec.max(0) as u64, t.nsec);
    SystemTime::now()
        .duration_since(at)
        .is_ok_and(|age| age > SETTLED)
}

/// The page after `after`: at most `max` names, and whether it is the last.
pub fn page(names: &[(u64, Vec<u8>)], after: u64, max: u32) -> (&[(u64, Vec<u8>)], bool) {
    let from = names.partition_point(|(c, _)| *c <= after);
    let rest = &names[from..];
    let n = rest.len().min(max as usize);
    (&rest[..n], rest.len() <= max as usize)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pages_cover_every_name_once_in_order() {
        let names: Vec<(u64, Vec<u8>)> =
            (0..1000u64).map(|i| (i * 7 + 16, vec![i as u8])).collect();
        let (mut after, mut seen) = (0u64, Vec::new());
        loop {
            let (p, eof) = page(&names, after, 64);
            seen.extend(p.iter().map(|(c, _)| *c));
            if eof {
                break;
            }
            after = p.last().unwrap().0;
        }
        assert_eq!(seen, names.iter().map(|(c, _)| *c).collect::<Vec<_>>());
        assert!(page(&names, u64::MAX, 10).0.is_empty());
    }

    #[test]
    fn only_settled_versions_are_kept() {
        let l = Listings::default();
        let old = Version {
            ident: 1,
            mtime: Time { sec: 1, nsec: 0 },
            ctime: Time { sec: 1, nsec: 0 },
        };
        let mut reads = 0;
        for _ in 0..3 {
            l.get::<()>(old, || {
                reads += 1;
                Ok(vec![(20, b"b".to_vec()), (17, b"a".to_vec())])
            })
            .unwrap();
        }
        assert_eq!(reads, 1, "a settled directory is read once");
        let now = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .unwrap();
        let t = Time {
            sec: now.as_secs() as i64,
            nsec: now.subsec_nanos(),
        };
        let fresh = Version {
            ident: 2,
            mtime: t,
            ctime: t,
        };
        let mut reads = 0;
        for _ in 0..3 {
            let names = l.get::<()>(fresh, || {
                reads += 1;
                Ok(vec![(20, b"b".to_vec()), (17, b"a".to_vec())])
            });
            assert_eq!(names.unwrap()[0].0, 17, "sorted");
        }
        assert_eq!(reads, 3, "a directory changed just now is read each time");
    }
}
