//! What is kept for answering while the store is unreachable (issue 16): `attrs_v1`,
//! `hints_v1`, `welcome_v1`.

use rusqlite::{OptionalExtension, params};

use super::{Index, db, from_sql, to_sql};
use crate::error::Result;
use crate::proto::{Attr, Hint, Welcome};

/// One entry of a kept directory listing.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ListedEntry {
    pub cookie: u64,
    pub name: Vec<u8>,
    /// The entry's id in the names map, and the NFS fileid it was listed with.
    pub id: u64,
    pub fileid: u64,
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

    /// Keep `dir`'s whole listing, as of directory version `version`.
    pub fn save_listing(&self, dir: u64, version: &[u8], entries: &[ListedEntry]) -> Result<()> {
        let bytes = postcard::to_stdvec(entries).expect("listing serializes");
        self.lock()
            .prepare_cached(
                "INSERT OR REPLACE INTO listings_v1 (dir, version, entries) VALUES (?1, ?2, ?3)",
            )
            .map_err(db)?
            .execute(params![to_sql(dir), version, bytes])
            .map_err(db)?;
        Ok(())
    }

    /// `dir`'s kept listing, if it is of version `version`.
    pub fn saved_listing(&self, dir: u64, version: &[u8]) -> Result<Option<Vec<ListedEntry>>> {
        let row: Option<(Vec<u8>, Vec<u8>)> = self
            .lock()
            .prepare_cached("SELECT version, entries FROM listings_v1 WHERE dir = ?1")
            .map_err(db)?
            .query_row(params![to_sql(dir)], |r| Ok((r.get(0)?, r.get(1)?)))
            .optional()
            .map_err(db)?;
        Ok(row
            .filter(|(v, _)| v == version)
            .and_then(|(_, e)| postcard::from_bytes(&e).ok()))
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
