//! Write-back statements (`dirty_v1`, `dirty_sum_v1`): acknowledged writes not yet on
//! the store, in order, committed durably (`synchronous=FULL`).

use rusqlite::{Connection, OptionalExtension, params};

use super::{Index, db, from_sql, to_sql};
use crate::error::Result;

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
    /// Returns the first and last `seq` given to the rows (`None` for no rows).
    pub fn add_dirty_batch(&self, rows: &[DirtyRow]) -> Result<Option<(u64, u64)>> {
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
    fn insert_dirty_locked(conn: &mut Connection, rows: &[DirtyRow]) -> Result<Option<(u64, u64)>> {
        let tx = conn.transaction().map_err(db)?;
        let mut seqs: Option<(u64, u64)> = None;
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
                let seq = tx.last_insert_rowid();
                sum.execute(params![seq, &r.sum[..]]).map_err(db)?;
                let seq = from_sql(seq);
                seqs = Some((seqs.map_or(seq, |s| s.0), seq));
            }
        }
        tx.commit().map_err(db)?;
        Ok(seqs)
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
