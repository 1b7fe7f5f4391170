//! The client's SQLite index: every SQL statement of gridvfs lives in this module (the
//! names map and schema here; [`blocks`], [`dirty`] and [`offline`] by table).
//!
//! Tables (versioned names; a new layout gets new names, never an in-place rewrite):
//! - `meta_v1(key, value)`: the NFS handle generation, made once per cache directory.
//! - `names_v1(id, path, ino)`: the NFS file-id <-> export-relative path map. `id` is the
//!   number inside every NFS file handle we hand out; AUTOINCREMENT so an id is never
//!   reused (a reused id would revive an old handle as another file). `ino` is the inode
//!   the store last reported there: a different inode at the same path is a new file, so
//!   it gets a new id and the old handle turns stale, as on a local file system.
//!
//! - `files_v1(file, size, mtime, ctime, ident)`: the store's validator of a cached file,
//!   as it was when its blocks were fetched; a different validator drops the blocks.
//! - `blocks_v2(file, block, sum, used)`: blocks present in the data file, each with the
//!   blake3 of its bytes (checked on every read: a corrupt or half-written block is
//!   refetched, never served) and when it was last used (ms since the epoch; LRU order).
//!
//! - `dirty_v1(seq, file, offset, len, log_offset)`: write-back data acknowledged to NFS
//!   and not yet on the store, in order; the bytes are in the journal at `log_offset`.
//!   `dirty_sum_v1(seq, sum)`: the blake3 of those bytes, checked before upload.
//!
//! - What the client needs to answer while the store is unreachable, even after a
//!   restart (issue 16): `attrs_v1(id, attr)`, the last attributes seen per id (written
//!   behind, every few seconds); `hints_v1(file, validator, hint)`, each file's hint for
//!   the version it describes (zero extents answered offline); `listings_v1(dir, version,
//!   entries)`, each directory's last whole listing and the version it was of; `welcome_v1(store, welcome,
//!   boot_id)`, the store's last handshake (to start without it). All postcard.
//!
//! One connection behind a std `Mutex` (SQLite has one writer anyway; every statement is
//! microseconds, so async callers hold it briefly). WAL with `synchronous=NORMAL`: a
//! committed id survives a crash of this process, which is what handles need; the one
//! commit that must survive a power cut, write-back's `dirty_v1` rows, runs with
//! `synchronous=FULL` ([`Index::add_dirty_batch`]).

use std::path::Path;
use std::sync::Mutex;

use rusqlite::{Connection, OptionalExtension, params};

mod blocks;
mod dirty;
mod offline;

pub use dirty::{Dirty, DirtyRow};
pub use offline::ListedEntry;

use crate::error::{Error, Result};

/// Id of the export root; inserted when the index is made.
pub const ROOT_ID: u64 = 1;

pub struct Index {
    conn: Mutex<Connection>,
}

fn db(e: rusqlite::Error) -> Error {
    Error::Index(e.to_string())
}

/// SQLite stores signed 64-bit integers; ids and inodes are u64 bit patterns.
fn to_sql(v: u64) -> i64 {
    v as i64
}
fn from_sql(v: i64) -> u64 {
    v as u64
}

impl Index {
    /// Open (or create) the index at `path`.
    pub fn open(path: &Path) -> Result<Self> {
        let conn = Connection::open(path).map_err(db)?;
        conn.execute_batch(
            "PRAGMA journal_mode=WAL;
             PRAGMA synchronous=NORMAL;
             PRAGMA busy_timeout=5000;
             CREATE TABLE IF NOT EXISTS meta_v1 (key TEXT PRIMARY KEY, value INTEGER NOT NULL);
             CREATE TABLE IF NOT EXISTS names_v1 (
                 id INTEGER PRIMARY KEY AUTOINCREMENT,
                 path BLOB NOT NULL UNIQUE,
                 ino INTEGER NOT NULL);
             CREATE TABLE IF NOT EXISTS files_v1 (
                 file INTEGER PRIMARY KEY,
                 validator BLOB NOT NULL);
             CREATE TABLE IF NOT EXISTS blocks_v2 (
                 file INTEGER NOT NULL,
                 block INTEGER NOT NULL,
                 sum BLOB NOT NULL,
                 used INTEGER NOT NULL,
                 PRIMARY KEY (file, block)) WITHOUT ROWID;
             CREATE INDEX IF NOT EXISTS blocks_v2_used ON blocks_v2 (used);
             CREATE TABLE IF NOT EXISTS dirty_v1 (
                 seq INTEGER PRIMARY KEY AUTOINCREMENT,
                 file INTEGER NOT NULL,
                 offset INTEGER NOT NULL,
                 len INTEGER NOT NULL,
                 log_offset INTEGER NOT NULL);
             CREATE INDEX IF NOT EXISTS dirty_v1_file ON dirty_v1 (file, offset);
             CREATE TABLE IF NOT EXISTS dirty_sum_v1 (
                 seq INTEGER PRIMARY KEY,
                 sum BLOB NOT NULL);
             CREATE TABLE IF NOT EXISTS attrs_v1 (
                 id INTEGER PRIMARY KEY,
                 attr BLOB NOT NULL);
             CREATE TABLE IF NOT EXISTS hints_v1 (
                 file INTEGER PRIMARY KEY,
                 validator BLOB NOT NULL,
                 hint BLOB NOT NULL);
             CREATE TABLE IF NOT EXISTS listings_v1 (
                 dir INTEGER PRIMARY KEY,
                 version BLOB NOT NULL,
                 entries BLOB NOT NULL);
             CREATE TABLE IF NOT EXISTS welcome_v1 (
                 one INTEGER PRIMARY KEY CHECK (one = 1),
                 store TEXT NOT NULL,
                 welcome BLOB NOT NULL,
                 boot_id INTEGER NOT NULL);",
        )
        .map_err(db)?;
        conn.execute(
            "INSERT OR IGNORE INTO names_v1 (id, path, ino) VALUES (?1, x'', 0)",
            params![to_sql(ROOT_ID)],
        )
        .map_err(db)?;
        Ok(Self {
            conn: Mutex::new(conn),
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Connection> {
        self.conn.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The handle generation of this cache directory: made once (from the clock), then
    /// kept, so handles stay valid across restarts of the client proxy.
    pub fn generation(&self) -> Result<u64> {
        let conn = self.lock();
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_millis() as u64)
            .unwrap_or(1);
        conn.execute(
            "INSERT OR IGNORE INTO meta_v1 (key, value) VALUES ('generation', ?1)",
            params![to_sql(now)],
        )
        .map_err(db)?;
        let g: i64 = conn
            .query_row(
                "SELECT value FROM meta_v1 WHERE key = 'generation'",
                [],
                |r| r.get(0),
            )
            .map_err(db)?;
        Ok(from_sql(g))
    }

    /// Path and last-seen inode of an id; `None` if the id was never made or was dropped.
    pub fn get(&self, id: u64) -> Result<Option<(Vec<u8>, u64)>> {
        let conn = self.lock();
        let mut st = conn
            .prepare_cached("SELECT path, ino FROM names_v1 WHERE id = ?1")
            .map_err(db)?;
        st.query_row(params![to_sql(id)], |r| {
            Ok((r.get::<_, Vec<u8>>(0)?, from_sql(r.get(1)?)))
        })
        .optional()
        .map_err(db)
    }

    /// The id for `path`, making one if needed. A different inode than recorded means the
    /// path now names another file: it gets a fresh id.
    pub fn id_for(&self, path: &[u8], ino: u64) -> Result<u64> {
        let mut conn = self.lock();
        let tx = conn.transaction().map_err(db)?;
        let id = id_for_tx(&tx, path, ino)?;
        tx.commit().map_err(db)?;
        Ok(id)
    }

    /// [`Self::id_for`] for many paths in one transaction (a READDIRPLUS page).
    pub fn ids_for(&self, items: &[(Vec<u8>, u64)]) -> Result<Vec<u64>> {
        let mut conn = self.lock();
        let tx = conn.transaction().map_err(db)?;
        let ids = items
            .iter()
            .map(|(p, ino)| id_for_tx(&tx, p, *ino))
            .collect::<Result<Vec<_>>>()?;
        tx.commit().map_err(db)?;
        Ok(ids)
    }

    /// Record the inode of the export root (id [`ROOT_ID`]).
    pub fn set_root_ino(&self, ino: u64) -> Result<()> {
        self.lock()
            .execute(
                "UPDATE names_v1 SET ino = ?1 WHERE id = ?2",
                params![to_sql(ino), to_sql(ROOT_ID)],
            )
            .map_err(db)?;
        Ok(())
    }

    /// Forget `path` and everything beneath it (after REMOVE/RMDIR, or found gone).
    pub fn forget(&self, path: &[u8]) -> Result<()> {
        let mut conn = self.lock();
        let tx = conn.transaction().map_err(db)?;
        forget_tx(&tx, path)?;
        tx.commit().map_err(db)
    }

    /// The identity (`Attr::ident`) recorded for `path`, if the map has it.
    pub fn ident_of(&self, path: &[u8]) -> Result<Option<u64>> {
        self.lock()
            .query_row(
                "SELECT ino FROM names_v1 WHERE path = ?1",
                params![path],
                |r| r.get::<_, i64>(0),
            )
            .optional()
            .map(|v| v.map(from_sql))
            .map_err(db)
    }

    /// The id recorded for `path`, without making one (answering LOOKUP while the store
    /// is unreachable).
    pub fn id_at(&self, path: &[u8]) -> Result<Option<u64>> {
        self.lock()
            .query_row(
                "SELECT id FROM names_v1 WHERE path = ?1",
                params![path],
                |r| r.get::<_, i64>(0),
            )
            .optional()
            .map(|v| v.map(from_sql))
            .map_err(db)
    }

    /// Forget one id (its file was replaced or vanished on the store).
    pub fn forget_id(&self, id: u64) -> Result<()> {
        if id == ROOT_ID {
            return Ok(());
        }
        self.lock()
            .execute("DELETE FROM names_v1 WHERE id = ?1", params![to_sql(id)])
            .map_err(db)?;
        Ok(())
    }

    /// A rename: whatever `to` named is gone; `from` and its descendants move under `to`
    /// and keep their ids, so open files and cwds held by the kernel stay valid.
    pub fn rename(&self, from: &[u8], to: &[u8]) -> Result<()> {
        let mut conn = self.lock();
        let tx = conn.transaction().map_err(db)?;
        forget_tx(&tx, to)?;
        let moved: Vec<(i64, Vec<u8>)> = {
            let (lo, hi) = subtree_bounds(from);
            let mut st = tx
                .prepare_cached(
                    "SELECT id, path FROM names_v1 WHERE path = ?1 OR (path >= ?2 AND path < ?3)",
                )
                .map_err(db)?;
            st.query_map(params![from, lo, hi], |r| Ok((r.get(0)?, r.get(1)?)))
                .map_err(db)?
                .collect::<Result<_, _>>()
                .map_err(db)?
        };
        {
            let mut up = tx
                .prepare_cached("UPDATE names_v1 SET path = ?1 WHERE id = ?2")
                .map_err(db)?;
            for (id, old) in moved {
                let mut new = to.to_vec();
                new.extend_from_slice(&old[from.len()..]);
                up.execute(params![new, id]).map_err(db)?;
            }
        }
        tx.commit().map_err(db)
    }

    /// Number of ids in the map (for `status` and tests).
    pub fn len(&self) -> Result<u64> {
        let n: i64 = self
            .lock()
            .query_row("SELECT COUNT(*) FROM names_v1", [], |r| r.get(0))
            .map_err(db)?;
        Ok(from_sql(n))
    }

    pub fn is_empty(&self) -> Result<bool> {
        Ok(self.len()? == 0)
    }
}

/// Garbage collection.
impl Index {
    /// Cached files whose name is gone from the map (removed, or replaced by another
    /// file): their blocks can never be read again. Their rows are deleted; the ids are
    /// returned so their data files can be removed. Files with write-back data pending are
    /// kept (the uploader decides about those).
    pub fn collect_orphans(&self) -> Result<Vec<u64>> {
        let mut conn = self.lock();
        let tx = conn.transaction().map_err(db)?;
        let ids: Vec<u64> = {
            let mut st = tx
                .prepare_cached(
                    "SELECT file FROM files_v1 WHERE file NOT IN (SELECT id FROM names_v1)
                     AND file NOT IN (SELECT file FROM dirty_v1)",
                )
                .map_err(db)?;
            st.query_map([], |r| Ok(from_sql(r.get(0)?)))
                .map_err(db)?
                .collect::<Result<_, _>>()
                .map_err(db)?
        };
        for id in &ids {
            tx.execute(
                "DELETE FROM blocks_v2 WHERE file = ?1",
                params![to_sql(*id)],
            )
            .map_err(db)?;
            tx.execute("DELETE FROM files_v1 WHERE file = ?1", params![to_sql(*id)])
                .map_err(db)?;
        }
        tx.commit().map_err(db)?;
        Ok(ids)
    }

    /// Whether `file` still has a name (its data file is live).
    pub fn is_named(&self, file: u64) -> Result<bool> {
        Ok(self.get(file)?.is_some())
    }
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

fn id_for_tx(tx: &rusqlite::Transaction<'_>, path: &[u8], ino: u64) -> Result<u64> {
    let found: Option<(i64, i64)> = tx
        .prepare_cached("SELECT id, ino FROM names_v1 WHERE path = ?1")
        .map_err(db)?
        .query_row(params![path], |r| Ok((r.get(0)?, r.get(1)?)))
        .optional()
        .map_err(db)?;
    match found {
        Some((id, old)) if from_sql(old) == ino || from_sql(id) == ROOT_ID => Ok(from_sql(id)),
        Some(_) => {
            // Same path, another file: the old id goes stale, along with anything that
            // was beneath it if it was a directory.
            forget_tx(tx, path)?;
            insert_tx(tx, path, ino)
        }
        None => insert_tx(tx, path, ino),
    }
}

fn insert_tx(tx: &rusqlite::Transaction<'_>, path: &[u8], ino: u64) -> Result<u64> {
    tx.prepare_cached("INSERT INTO names_v1 (path, ino) VALUES (?1, ?2)")
        .map_err(db)?
        .execute(params![path, to_sql(ino)])
        .map_err(db)?;
    Ok(from_sql(tx.last_insert_rowid()))
}

fn forget_tx(tx: &rusqlite::Transaction<'_>, path: &[u8]) -> Result<()> {
    if path.is_empty() {
        return Ok(()); // never forget the root
    }
    let (lo, hi) = subtree_bounds(path);
    tx.prepare_cached("DELETE FROM names_v1 WHERE path = ?1 OR (path >= ?2 AND path < ?3)")
        .map_err(db)?
        .execute(params![path, lo, hi])
        .map_err(db)?;
    Ok(())
}

/// `[p/, p0)`: every path strictly beneath `p` in byte order ('0' follows '/').
fn subtree_bounds(p: &[u8]) -> (Vec<u8>, Vec<u8>) {
    let mut lo = p.to_vec();
    lo.push(b'/');
    let mut hi = p.to_vec();
    hi.push(b'0');
    (lo, hi)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn index() -> (tempfile::TempDir, Index) {
        let dir = tempfile::tempdir().unwrap();
        let idx = Index::open(&dir.path().join("index.sqlite")).unwrap();
        (dir, idx)
    }

    /// Issue 11, item 14: blocks fetched under a validator that revalidation has since
    /// replaced are not recorded (they would pass their checksums as the new version).
    #[test]
    fn blocks_of_a_replaced_version_are_not_recorded() {
        let (_d, idx) = index();
        let f = idx.id_for(b"vm.img", 10).unwrap();
        idx.reset_file(f, b"v1").unwrap();
        // A fetch starts under v1; revalidation moves the file to v2 meanwhile.
        idx.reset_file(f, b"v2").unwrap();
        assert!(!idx.add_blocks_under(f, b"v1", &[(0, [1; 32])]).unwrap());
        assert!(idx.blocks(f, 0, 10).unwrap().is_empty());
        // A fetch under the current version is recorded.
        assert!(idx.add_blocks_under(f, b"v2", &[(0, [2; 32])]).unwrap());
        assert_eq!(idx.blocks(f, 0, 10).unwrap().len(), 1);
        // A file never revalidated has no validator: nothing to record blocks under.
        let g = idx.id_for(b"other", 11).unwrap();
        assert!(!idx.add_blocks_under(g, b"v1", &[(0, [3; 32])]).unwrap());
    }

    #[test]
    fn ids_are_stable_and_persist_across_reopen() {
        let (dir, idx) = index();
        let g = idx.generation().unwrap();
        let a = idx.id_for(b"a", 10).unwrap();
        assert_eq!(idx.id_for(b"a", 10).unwrap(), a);
        drop(idx);
        let idx = Index::open(&dir.path().join("index.sqlite")).unwrap();
        assert_eq!(idx.generation().unwrap(), g);
        assert_eq!(idx.get(a).unwrap(), Some((b"a".to_vec(), 10)));
        assert_eq!(idx.get(ROOT_ID).unwrap().unwrap().0, b"");
    }

    #[test]
    fn replaced_file_gets_a_new_id_and_ids_are_never_reused() {
        let (_d, idx) = index();
        let a = idx.id_for(b"a", 10).unwrap();
        let b = idx.id_for(b"a", 11).unwrap();
        assert_ne!(a, b);
        assert_eq!(idx.get(a).unwrap(), None);
        idx.forget(b"a").unwrap();
        let c = idx.id_for(b"a", 10).unwrap();
        assert!(c > b, "ids must never be reused");
    }

    #[test]
    fn rename_moves_subtree_and_drops_target() {
        let (_d, idx) = index();
        let d = idx.id_for(b"d", 1).unwrap();
        let f = idx.id_for(b"d/f", 2).unwrap();
        let g = idx.id_for(b"d/sub/g", 3).unwrap();
        let other = idx.id_for(b"d0", 4).unwrap(); // sorts between "d/" and "d0": untouched
        let target = idx.id_for(b"e", 5).unwrap();
        let target_child = idx.id_for(b"e/x", 6).unwrap();
        idx.rename(b"d", b"e").unwrap();
        assert_eq!(idx.get(d).unwrap().unwrap().0, b"e");
        assert_eq!(idx.get(f).unwrap().unwrap().0, b"e/f");
        assert_eq!(idx.get(g).unwrap().unwrap().0, b"e/sub/g");
        assert_eq!(idx.get(other).unwrap().unwrap().0, b"d0");
        assert_eq!(idx.get(target).unwrap(), None);
        assert_eq!(idx.get(target_child).unwrap(), None);
    }

    #[test]
    fn forget_never_drops_root() {
        let (_d, idx) = index();
        idx.forget(b"").unwrap();
        idx.forget_id(ROOT_ID).unwrap();
        assert!(idx.get(ROOT_ID).unwrap().is_some());
    }
}
