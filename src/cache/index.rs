//! The client's SQLite index: every SQL statement of gridvfs lives in this file.
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
//!   the version it describes (zero extents answered offline); `welcome_v1(store, welcome,
//!   boot_id)`, the store's last handshake (to start without it). All postcard.
//!
//! One connection behind a std `Mutex` (SQLite has one writer anyway; every statement is
//! microseconds, so async callers hold it briefly). WAL with `synchronous=NORMAL`: a
//! committed id survives a crash of this process, which is what handles need; the one
//! commit that must survive a power cut, write-back's `dirty_v1` rows, runs with
//! `synchronous=FULL` ([`Index::add_dirty_batch`]).

use std::path::Path;
use std::sync::Mutex;

use std::collections::HashMap;

use rusqlite::{Connection, OptionalExtension, params};

use crate::error::{Error, Result};
use crate::proto::{Attr, Hint, Welcome};

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

/// A file's validator, on a connection or inside a transaction (which derefs to one).
fn validator_in(conn: &Connection, file: u64) -> Result<Option<Vec<u8>>> {
    conn.prepare_cached("SELECT validator FROM files_v1 WHERE file = ?1")
        .map_err(db)?
        .query_row(params![to_sql(file)], |r| r.get(0))
        .optional()
        .map_err(db)
}

/// Block-cache statements.
impl Index {
    /// The validator recorded for a cached file.
    pub fn validator(&self, file: u64) -> Result<Option<Vec<u8>>> {
        validator_in(&self.lock(), file)
    }

    /// Record a new validator and drop every block of the file (they were of another
    /// version). Returns whether anything was dropped.
    pub fn reset_file(&self, file: u64, validator: &[u8]) -> Result<bool> {
        let mut conn = self.lock();
        let tx = conn.transaction().map_err(db)?;
        let dropped = tx
            .prepare_cached("DELETE FROM blocks_v2 WHERE file = ?1")
            .map_err(db)?
            .execute(params![to_sql(file)])
            .map_err(db)?;
        tx.prepare_cached("INSERT OR REPLACE INTO files_v1 (file, validator) VALUES (?1, ?2)")
            .map_err(db)?
            .execute(params![to_sql(file), validator])
            .map_err(db)?;
        tx.commit().map_err(db)?;
        Ok(dropped > 0)
    }

    /// Record a new validator, keeping only the blocks in `keep` (known unchanged in the
    /// new version). Returns the blocks dropped.
    pub fn reset_file_keeping(
        &self,
        file: u64,
        validator: &[u8],
        keep: &[u64],
    ) -> Result<Vec<u64>> {
        let keep: std::collections::HashSet<u64> = keep.iter().copied().collect();
        let mut conn = self.lock();
        let tx = conn.transaction().map_err(db)?;
        let all: Vec<u64> = {
            let mut st = tx
                .prepare_cached("SELECT block FROM blocks_v2 WHERE file = ?1")
                .map_err(db)?;
            let rows = st
                .query_map(params![to_sql(file)], |r| Ok(from_sql(r.get(0)?)))
                .map_err(db)?;
            rows.collect::<rusqlite::Result<_>>().map_err(db)?
        };
        let dropped: Vec<u64> = all.into_iter().filter(|b| !keep.contains(b)).collect();
        {
            let mut del = tx
                .prepare_cached("DELETE FROM blocks_v2 WHERE file = ?1 AND block = ?2")
                .map_err(db)?;
            for b in &dropped {
                del.execute(params![to_sql(file), to_sql(*b)]).map_err(db)?;
            }
        }
        tx.prepare_cached("INSERT OR REPLACE INTO files_v1 (file, validator) VALUES (?1, ?2)")
            .map_err(db)?
            .execute(params![to_sql(file), validator])
            .map_err(db)?;
        tx.commit().map_err(db)?;
        Ok(dropped)
    }

    /// After an upload of write-back data to `file`: if the cache still holds version
    /// `before` (the store's before the upload), move it to `after` (the store's after)
    /// and drop the blocks in the inclusive `(first, last)` runs the upload rewrote, in
    /// one transaction, so no fetch of the old bytes can slip in between. `false` if the
    /// cache was at another version (then the next read revalidates as usual).
    pub fn adopt_upload(
        &self,
        file: u64,
        before: &[u8],
        after: &[u8],
        blocks: &[(u64, u64)],
    ) -> Result<bool> {
        let mut conn = self.lock();
        let tx = conn.transaction().map_err(db)?;
        let now = validator_in(&tx, file)?;
        if now.as_deref() != Some(before) {
            return Ok(false);
        }
        {
            let mut drop = tx
                .prepare_cached("DELETE FROM blocks_v2 WHERE file = ?1 AND block BETWEEN ?2 AND ?3")
                .map_err(db)?;
            for &(first, last) in blocks {
                drop.execute(params![to_sql(file), to_sql(first), to_sql(last)])
                    .map_err(db)?;
            }
        }
        tx.prepare_cached("UPDATE files_v1 SET validator = ?2 WHERE file = ?1")
            .map_err(db)?
            .execute(params![to_sql(file), after])
            .map_err(db)?;
        tx.commit().map_err(db)?;
        Ok(true)
    }

    /// Replace the validator without touching blocks (after our own write, whose bytes
    /// the cache already reflects).
    pub fn set_validator(&self, file: u64, validator: &[u8]) -> Result<()> {
        self.lock()
            .prepare_cached("INSERT OR REPLACE INTO files_v1 (file, validator) VALUES (?1, ?2)")
            .map_err(db)?
            .execute(params![to_sql(file), validator])
            .map_err(db)?;
        Ok(())
    }

    /// Checksums of the present blocks among `first..=last`.
    pub fn blocks(&self, file: u64, first: u64, last: u64) -> Result<Vec<(u64, [u8; 32])>> {
        let conn = self.lock();
        let mut st = conn
            .prepare_cached(
                "SELECT block, sum FROM blocks_v2 WHERE file = ?1 AND block BETWEEN ?2 AND ?3",
            )
            .map_err(db)?;
        let rows = st
            .query_map(params![to_sql(file), to_sql(first), to_sql(last)], |r| {
                Ok((from_sql(r.get(0)?), r.get::<_, Vec<u8>>(1)?))
            })
            .map_err(db)?;
        let mut out = Vec::new();
        for row in rows {
            let (b, sum) = row.map_err(db)?;
            if let Ok(sum) = <[u8; 32]>::try_from(sum.as_slice()) {
                out.push((b, sum));
            }
        }
        Ok(out)
    }

    /// Cached blocks of each of `files` (for per-file progress).
    pub fn block_counts(&self, files: &[u64]) -> Result<HashMap<u64, u64>> {
        let conn = self.lock();
        let mut st = conn
            .prepare_cached("SELECT COUNT(*) FROM blocks_v2 WHERE file = ?1")
            .map_err(db)?;
        let mut out = HashMap::new();
        for f in files {
            let n: i64 = st
                .query_row(params![to_sql(*f)], |r| r.get(0))
                .map_err(db)?;
            out.insert(*f, n as u64);
        }
        Ok(out)
    }

    /// Blocks in the cache, for the capacity count at start.
    pub fn block_count(&self) -> Result<u64> {
        let n: i64 = self
            .lock()
            .query_row("SELECT COUNT(*) FROM blocks_v2", [], |r| r.get(0))
            .map_err(db)?;
        Ok(from_sql(n))
    }

    /// Record that blocks were just used (batched by the caller: one transaction).
    pub fn touch(&self, blocks: &[(u64, u64)]) -> Result<()> {
        let mut conn = self.lock();
        let tx = conn.transaction().map_err(db)?;
        {
            let mut st = tx
                .prepare_cached("UPDATE blocks_v2 SET used = ?3 WHERE file = ?1 AND block = ?2")
                .map_err(db)?;
            let now = now_ms();
            for (f, b) in blocks {
                st.execute(params![to_sql(*f), to_sql(*b), now])
                    .map_err(db)?;
            }
        }
        tx.commit().map_err(db)
    }

    /// Take the `n` least recently used blocks out of the index (so they are no longer
    /// trusted) and return them, for their data to be freed.
    pub fn evict_oldest(&self, n: u64) -> Result<Vec<(u64, u64)>> {
        let mut conn = self.lock();
        let tx = conn.transaction().map_err(db)?;
        let victims: Vec<(u64, u64)> = {
            let mut st = tx
                .prepare_cached("SELECT file, block FROM blocks_v2 ORDER BY used LIMIT ?1")
                .map_err(db)?;
            st.query_map(params![to_sql(n)], |r| {
                Ok((from_sql(r.get(0)?), from_sql(r.get(1)?)))
            })
            .map_err(db)?
            .collect::<Result<_, _>>()
            .map_err(db)?
        };
        {
            let mut del = tx
                .prepare_cached("DELETE FROM blocks_v2 WHERE file = ?1 AND block = ?2")
                .map_err(db)?;
            for (f, b) in &victims {
                del.execute(params![to_sql(*f), to_sql(*b)]).map_err(db)?;
            }
        }
        tx.commit().map_err(db)?;
        Ok(victims)
    }

    /// Mark blocks present (their data is already in the data file), in one transaction.
    pub fn add_blocks(&self, file: u64, blocks: &[(u64, [u8; 32])]) -> Result<()> {
        self.add_blocks_if(file, None, blocks).map(|_| ())
    }

    /// Record fetched blocks only if the file's validator is still `validator`, in the
    /// same transaction (issue 11, item 14): a fetch that started under one version of
    /// the file and finished after a revalidation moved the cache to the next must not
    /// leave the old version's bytes under the new validator, where their checksums
    /// would pass. `false` if they were not recorded.
    pub fn add_blocks_under(
        &self,
        file: u64,
        validator: &[u8],
        blocks: &[(u64, [u8; 32])],
    ) -> Result<bool> {
        self.add_blocks_if(file, Some(validator), blocks)
    }

    fn add_blocks_if(
        &self,
        file: u64,
        validator: Option<&[u8]>,
        blocks: &[(u64, [u8; 32])],
    ) -> Result<bool> {
        let mut conn = self.lock();
        let tx = conn.transaction().map_err(db)?;
        if let Some(want) = validator {
            let now = validator_in(&tx, file)?;
            if now.as_deref() != Some(want) {
                return Ok(false);
            }
        }
        {
            let mut st = tx
                .prepare_cached("INSERT OR REPLACE INTO blocks_v2 (file, block, sum, used) VALUES (?1, ?2, ?3, ?4)")
                .map_err(db)?;
            let now = now_ms();
            for (b, sum) in blocks {
                st.execute(params![to_sql(file), to_sql(*b), &sum[..], now])
                    .map_err(db)?;
            }
        }
        tx.commit().map_err(db)?;
        Ok(true)
    }

    /// Forget blocks (corrupt, or overwritten through this client).
    pub fn drop_blocks(&self, file: u64, first: u64, last: u64) -> Result<()> {
        self.lock()
            .prepare_cached("DELETE FROM blocks_v2 WHERE file = ?1 AND block BETWEEN ?2 AND ?3")
            .map_err(db)?
            .execute(params![to_sql(file), to_sql(first), to_sql(last)])
            .map_err(db)?;
        Ok(())
    }
}

/// One write-back entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Dirty {
    pub seq: u64,
    pub file: u64,
    pub offset: u64,
    pub len: u64,
    pub log_offset: u64,
}

fn dirty_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<Dirty> {
    Ok(Dirty {
        seq: from_sql(r.get(0)?),
        file: from_sql(r.get(1)?),
        offset: from_sql(r.get(2)?),
        len: from_sql(r.get(3)?),
        log_offset: from_sql(r.get(4)?),
    })
}

/// An acknowledged write as the journal holds it: where it goes, where its bytes are in
/// the journal, and the blake3 (first 16 bytes) of those bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DirtyRow {
    pub file: u64,
    pub offset: u64,
    pub len: u64,
    pub log_offset: u64,
    pub sum: [u8; 16],
}

/// Write-back statements.
impl Index {
    /// Record acknowledged writes (already in the journal and synced), in order, in one
    /// transaction, durable before it returns (issue 11, item 7): the NFS reply that
    /// follows promises the data survives a power cut. Under the connection's usual
    /// `synchronous=NORMAL` a WAL commit is not synced, and a power loss can roll it back
    /// (SQLite's documentation says so), leaving journal bytes nothing points at. So this
    /// commit (and [`Self::dirty_done`]'s) runs [`Self::durably`]; the other statements
    /// keep NORMAL, since a block row lost to a power cut only costs a refetch.
    pub fn add_dirty_batch(&self, rows: &[DirtyRow]) -> Result<()> {
        self.durably(|conn| Self::insert_dirty_locked(conn, rows))
    }

    /// Run `f` on the connection with `synchronous=FULL`: its commit is on the disk when
    /// this returns (the WAL is fsynced at commit, which also covers every earlier commit
    /// in it).
    fn durably<T>(&self, f: impl FnOnce(&mut Connection) -> Result<T>) -> Result<T> {
        let mut conn = self.lock();
        conn.pragma_update(None, "synchronous", "FULL")
            .map_err(db)?;
        let res = f(&mut conn);
        let back = conn
            .pragma_update(None, "synchronous", "NORMAL")
            .map_err(db);
        res.and_then(|v| back.map(|_| v))
    }

    /// The rows of [`Self::add_dirty_batch`], committed; the connection's lock is held.
    fn insert_dirty_locked(conn: &mut Connection, rows: &[DirtyRow]) -> Result<()> {
        let tx = conn.transaction().map_err(db)?;
        {
            let mut st = tx
                .prepare_cached(
                    "INSERT INTO dirty_v1 (file, offset, len, log_offset) VALUES (?1, ?2, ?3, ?4)",
                )
                .map_err(db)?;
            let mut sum = tx
                .prepare_cached("INSERT INTO dirty_sum_v1 (seq, sum) VALUES (?1, ?2)")
                .map_err(db)?;
            for r in rows {
                st.execute(params![
                    to_sql(r.file),
                    to_sql(r.offset),
                    to_sql(r.len),
                    to_sql(r.log_offset)
                ])
                .map_err(db)?;
                sum.execute(params![tx.last_insert_rowid(), &r.sum[..]])
                    .map_err(db)?;
            }
        }
        tx.commit().map_err(db)
    }

    /// The checksum recorded with entry `seq` (none for entries older than the table).
    pub fn dirty_sum(&self, seq: u64) -> Result<Option<[u8; 16]>> {
        let v: Option<Vec<u8>> = self
            .lock()
            .query_row(
                "SELECT sum FROM dirty_sum_v1 WHERE seq = ?1",
                params![to_sql(seq)],
                |r| r.get(0),
            )
            .optional()
            .map_err(db)?;
        Ok(v.and_then(|b| b.try_into().ok()))
    }

    /// Entries whose bytes would lie past `journal_len`: the journal lost them.
    pub fn dirty_beyond(&self, journal_len: u64) -> Result<Vec<Dirty>> {
        let conn = self.lock();
        let mut st = conn
            .prepare_cached(
                "SELECT seq, file, offset, len, log_offset FROM dirty_v1
                 WHERE log_offset + len > ?1 ORDER BY seq",
            )
            .map_err(db)?;
        st.query_map(params![to_sql(journal_len)], dirty_row)
            .map_err(db)?
            .collect::<Result<_, _>>()
            .map_err(db)
    }

    /// The oldest `n` entries, in order.
    pub fn dirty_oldest(&self, n: u64) -> Result<Vec<Dirty>> {
        let conn = self.lock();
        let mut st = conn
            .prepare_cached(
                "SELECT seq, file, offset, len, log_offset FROM dirty_v1 ORDER BY seq LIMIT ?1",
            )
            .map_err(db)?;
        st.query_map(params![to_sql(n)], dirty_row)
            .map_err(db)?
            .collect::<Result<_, _>>()
            .map_err(db)
    }

    /// Entries of `file` overlapping `[start, end)`, oldest first (later ones win).
    pub fn dirty_overlapping(&self, file: u64, start: u64, end: u64) -> Result<Vec<Dirty>> {
        let conn = self.lock();
        let mut st = conn
            .prepare_cached(
                "SELECT seq, file, offset, len, log_offset FROM dirty_v1
                 WHERE file = ?1 AND offset < ?3 AND offset + len > ?2 ORDER BY seq",
            )
            .map_err(db)?;
        st.query_map(params![to_sql(file), to_sql(start), to_sql(end)], dirty_row)
            .map_err(db)?
            .collect::<Result<_, _>>()
            .map_err(db)
    }

    /// End of the furthest dirty byte of `file`, if it has any.
    pub fn dirty_end(&self, file: u64) -> Result<Option<u64>> {
        let conn = self.lock();
        let mut st = conn
            .prepare_cached("SELECT MAX(offset + len) FROM dirty_v1 WHERE file = ?1")
            .map_err(db)?;
        let v: Option<i64> = st
            .query_row(params![to_sql(file)], |r| r.get(0))
            .map_err(db)?;
        Ok(v.map(from_sql))
    }

    /// (entries, bytes) waiting for upload.
    pub fn dirty_pending(&self) -> Result<(u64, u64)> {
        let (n, b): (i64, Option<i64>) = self
            .lock()
            .query_row("SELECT COUNT(*), SUM(len) FROM dirty_v1", [], |r| {
                Ok((r.get(0)?, r.get(1)?))
            })
            .map_err(db)?;
        Ok((from_sql(n), b.map_or(0, from_sql)))
    }

    /// Entries now on the store. Durable before it returns, like [`Self::add_dirty_batch`]:
    /// the caller then punches or truncates their journal bytes, and a deletion rolled
    /// back by a power cut would bring back rows pointing at bytes that are gone (found by
    /// `tests/all/power_loss.rs`: rows past the journal's end after a cut).
    pub fn dirty_done(&self, seqs: &[u64]) -> Result<()> {
        self.durably(|conn| Self::delete_dirty_locked(conn, seqs))
    }

    fn delete_dirty_locked(conn: &mut Connection, seqs: &[u64]) -> Result<()> {
        let tx = conn.transaction().map_err(db)?;
        {
            let mut st = tx
                .prepare_cached("DELETE FROM dirty_v1 WHERE seq = ?1")
                .map_err(db)?;
            let mut sum = tx
                .prepare_cached("DELETE FROM dirty_sum_v1 WHERE seq = ?1")
                .map_err(db)?;
            for s in seqs {
                st.execute(params![to_sql(*s)]).map_err(db)?;
                sum.execute(params![to_sql(*s)]).map_err(db)?;
            }
        }
        tx.commit().map_err(db)
    }
}

/// What is kept for answering while the store is unreachable (issue 16).
impl Index {
    /// Record (`Some`) or forget (`None`) the last attributes of these ids, in one
    /// transaction.
    pub fn save_attrs(&self, items: &[(u64, Option<Attr>)]) -> Result<()> {
        let mut conn = self.lock();
        let tx = conn.transaction().map_err(db)?;
        {
            let mut put = tx
                .prepare_cached("INSERT OR REPLACE INTO attrs_v1 (id, attr) VALUES (?1, ?2)")
                .map_err(db)?;
            let mut del = tx
                .prepare_cached("DELETE FROM attrs_v1 WHERE id = ?1")
                .map_err(db)?;
            for (id, a) in items {
                match a {
                    Some(a) => {
                        let bytes = postcard::to_stdvec(a).expect("Attr serializes");
                        put.execute(params![to_sql(*id), bytes]).map_err(db)?
                    }
                    None => del.execute(params![to_sql(*id)]).map_err(db)?,
                };
            }
        }
        tx.commit().map_err(db)
    }

    /// The last attributes recorded for `id`.
    pub fn saved_attr(&self, id: u64) -> Result<Option<Attr>> {
        let bytes: Option<Vec<u8>> = self
            .lock()
            .prepare_cached("SELECT attr FROM attrs_v1 WHERE id = ?1")
            .map_err(db)?
            .query_row(params![to_sql(id)], |r| r.get(0))
            .optional()
            .map_err(db)?;
        Ok(bytes.and_then(|b| postcard::from_bytes(&b).ok()))
    }

    /// Keep `file`'s hint for version `validator`.
    pub fn save_hint(&self, file: u64, validator: &[u8], hint: &Hint) -> Result<()> {
        let bytes = postcard::to_stdvec(hint).expect("Hint serializes");
        self.lock()
            .prepare_cached(
                "INSERT OR REPLACE INTO hints_v1 (file, validator, hint) VALUES (?1, ?2, ?3)",
            )
            .map_err(db)?
            .execute(params![to_sql(file), validator, bytes])
            .map_err(db)?;
        Ok(())
    }

    /// `file`'s kept hint, if it is for version `validator`.
    pub fn saved_hint(&self, file: u64, validator: &[u8]) -> Result<Option<Hint>> {
        let row: Option<(Vec<u8>, Vec<u8>)> = self
            .lock()
            .prepare_cached("SELECT validator, hint FROM hints_v1 WHERE file = ?1")
            .map_err(db)?
            .query_row(params![to_sql(file)], |r| Ok((r.get(0)?, r.get(1)?)))
            .optional()
            .map_err(db)?;
        Ok(row
            .filter(|(v, _)| v == validator)
            .and_then(|(_, h)| postcard::from_bytes(&h).ok()))
    }

    /// Keep the store's latest handshake (which store, what it said, its boot).
    pub fn save_welcome(&self, store: &str, welcome: &Welcome, boot_id: u64) -> Result<()> {
        let bytes = postcard::to_stdvec(welcome).expect("Welcome serializes");
        self.lock()
            .prepare_cached(
                "INSERT OR REPLACE INTO welcome_v1 (one, store, welcome, boot_id) VALUES (1, ?1, ?2, ?3)",
            )
            .map_err(db)?
            .execute(params![store, bytes, to_sql(boot_id)])
            .map_err(db)?;
        Ok(())
    }

    /// The handshake kept by [`Self::save_welcome`]: store key, welcome, boot id.
    pub fn saved_welcome(&self) -> Result<Option<(String, Welcome, u64)>> {
        let row: Option<(String, Vec<u8>, i64)> = self
            .lock()
            .prepare_cached("SELECT store, welcome, boot_id FROM welcome_v1 WHERE one = 1")
            .map_err(db)?
            .query_row([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
            .optional()
            .map_err(db)?;
        Ok(row.and_then(|(s, w, b)| Some((s, postcard::from_bytes(&w).ok()?, from_sql(b)))))
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
