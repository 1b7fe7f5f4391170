//! Block-cache statements: each cached file's validator (`files_v1`) and its blocks
//! with their checksums and last use (`blocks_v2`).

use std::collections::HashMap;

use rusqlite::{Connection, OptionalExtension, params};

use super::{Index, db, from_sql, now_ms, to_sql};
use crate::error::Result;

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
