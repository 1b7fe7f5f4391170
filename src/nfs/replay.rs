//! Duplicate-request cache for the non-idempotent procedures (CREATE, MKDIR, MKNOD,
//! REMOVE, RMDIR, LINK, SETATTR answered by the gate; RENAME and SYMLINK forwarded to the
//! dispatcher, their replies kept on the way back), as knfsd's reply cache.
//!
//! A kernel client that gets no reply (a dropped connection, a slow store) retransmits the
//! call with the same xid, often on a new connection. Carried out twice, a REMOVE answers
//! NOENT and a CREATE EXIST for work that succeeded: the application sees an error. So a
//! finished call's reply is kept for [`KEEP_FOR`] and sent again for a retransmission; a
//! retransmission of a call still being worked on is dropped (the client retries later,
//! and by then the reply is here). Keyed like knfsd's: client address, xid, procedure,
//! and a hash of the arguments, so an xid reused for another call is never confused
//! with the first.

use std::collections::{HashMap, VecDeque};
use std::hash::{Hash, Hasher};
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// How long a reply is kept: longer than the kernel's retransmission back-off (60 s max
/// for `timeo=600`), as knfsd's 120 s.
pub const KEEP_FOR: Duration = Duration::from_secs(120);
/// Replies kept at most (knfsd sizes its cache in the thousands too).
pub const MAX_ENTRIES: usize = 4096;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Key {
    client: IpAddr,
    xid: u32,
    proc_: u32,
    args: u64,
}

impl Key {
    pub fn new(client: IpAddr, xid: u32, proc_: u32, args: &[u8]) -> Self {
        let mut h = std::collections::hash_map::DefaultHasher::new();
        args.hash(&mut h);
        Self {
            client,
            xid,
            proc_,
            args: h.finish(),
        }
    }
}

enum Entry {
    InProgress,
    Done(Vec<u8>),
}

/// What to do with a call.
#[derive(Debug, PartialEq, Eq)]
pub enum Seen {
    /// First time: carry it out, then [`ReplayCache::finish`].
    New,
    /// Being carried out now: drop this copy.
    InProgress,
    /// Done before: send this reply record body again.
    Replay(Vec<u8>),
}

#[derive(Default)]
pub struct ReplayCache {
    /// std Mutex: held for a map operation, never across an await.
    inner: Mutex<Inner>,
}

#[derive(Default)]
struct Inner {
    entries: HashMap<Key, Entry>,
    /// Insertion order, for expiry and the size bound.
    order: VecDeque<(Instant, Key)>,
}

impl ReplayCache {
    pub fn begin(&self, key: Key) -> Seen {
        let mut g = self.inner.lock().expect("replay cache lock");
        g.expire_locked();
        match g.entries.get(&key) {
            Some(Entry::InProgress) => Seen::InProgress,
            Some(Entry::Done(reply)) => Seen::Replay(reply.clone()),
            None => {
                g.entries.insert(key, Entry::InProgress);
                g.order.push_back((Instant::now(), key));
                Seen::New
            }
        }
    }

    /// Keep the reply of a call [`Self::begin`] called new.
    pub fn finish(&self, key: Key, reply: &[u8]) {
        let mut g = self.inner.lock().expect("replay cache lock");
        if let Some(e) = g.entries.get_mut(&key) {
            *e = Entry::Done(reply.to_vec());
        }
    }
}

impl ReplayCache {
    /// Forget a call [`Self::begin`] called new that will never finish here (its
    /// connection to the dispatcher ended unanswered): a retransmission is then carried
    /// out rather than dropped. A finished call's reply is kept.
    pub fn abandon(&self, key: Key) {
        let mut g = self.inner.lock().expect("replay cache lock");
        if matches!(g.entries.get(&key), Some(Entry::InProgress)) {
            g.entries.remove(&key);
        }
    }
}

impl Inner {
    fn expire_locked(&mut self) {
        while let Some((at, key)) = self.order.front().copied() {
            if at.elapsed() < KEEP_FOR && self.order.len() < MAX_ENTRIES {
                break;
            }
            self.order.pop_front();
            self.entries.remove(&key);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retransmissions_replay_or_wait() {
        let c = ReplayCache::default();
        let ip: IpAddr = "127.0.0.1".parse().unwrap();
        let k = Key::new(ip, 7, 12, b"dir+name");
        assert_eq!(c.begin(k), Seen::New);
        assert_eq!(c.begin(k), Seen::InProgress);
        c.finish(k, b"reply");
        assert_eq!(c.begin(k), Seen::Replay(b"reply".to_vec()));
        // Same xid, other arguments or another client: another call.
        assert_eq!(c.begin(Key::new(ip, 7, 12, b"other")), Seen::New);
        let other: IpAddr = "127.0.0.2".parse().unwrap();
        assert_eq!(c.begin(Key::new(other, 7, 12, b"dir+name")), Seen::New);
        // Abandoned while in progress: the next copy is carried out; a finished one stays.
        let a = Key::new(ip, 8, 14, b"rename");
        assert_eq!(c.begin(a), Seen::New);
        c.abandon(a);
        assert_eq!(c.begin(a), Seen::New);
        c.abandon(k);
        assert_eq!(c.begin(k), Seen::Replay(b"reply".to_vec()));
    }

    #[test]
    fn bounded() {
        let c = ReplayCache::default();
        let ip: IpAddr = "127.0.0.1".parse().unwrap();
        for xid in 0..(MAX_ENTRIES as u32 + 100) {
            let k = Key::new(ip, xid, 8, b"a");
            assert_eq!(c.begin(k), Seen::New);
            c.finish(k, b"r");
        }
        let g = c.inner.lock().unwrap();
        assert!(g.entries.len() <= MAX_ENTRIES);
        assert_eq!(g.entries.len(), g.order.len());
    }
}
