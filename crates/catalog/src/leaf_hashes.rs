//! Incremental verification's records: the BLAKE3 leaf values of each set's newest
//! verified copy (what the next verification builds on), and the choice of that base.
//! A set keeps one copy's leaves (2 MiB per GiB of data), replaced as newer copies pass.

use std::collections::HashMap;
use std::path::PathBuf;

use rusqlite::{params, OptionalExtension, Transaction};
use shadowcopy_core::leaf_hash::LeafHashes;
use shadowcopy_core::model::CopyId;

use crate::{paths, Catalog, CatalogError};

/// A verified copy a verification can build on, with its files' leaf values.
pub struct LeafBase {
    pub copy: CopyId,
    pub leaves: HashMap<PathBuf, LeafHashes>,
}

impl Catalog {
    /// What a verification of a copy of `set` (other than `exclude`, the copy itself)
    /// can build on: the set's newest usable copy whose latest verification passed and
    /// goes back to a full verification at or after `full_since_ms`, with its leaf
    /// values. `None`: verify in full.
    pub fn verify_base(
        &self,
        set: &str,
        exclude: Option<CopyId>,
        full_since_ms: i64,
    ) -> Result<Option<LeafBase>, CatalogError> {
        let base: Option<CopyId> = self
            .conn
            .query_row(
                "SELECT c.id FROM copies c
                 WHERE c.set_name = ?1 AND c.id IS NOT ?3
                   AND c.state = 'usable' AND c.verify_state = 'passed'
                   AND EXISTS (SELECT 1 FROM leaf_hashes l WHERE l.copy_id = c.id)
                   AND (SELECT v.full_at_ms FROM verifications v WHERE v.copy_id = c.id
                        ORDER BY v.rowid DESC LIMIT 1) >= ?2
                 ORDER BY c.id DESC LIMIT 1",
                params![set, full_since_ms, exclude],
                |r| r.get(0),
            )
            .optional()?;
        let Some(copy) = base else {
            return Ok(None);
        };
        let mut stmt = self
            .conn
            .prepare("SELECT path, size, leaf_size, cvs FROM leaf_hashes WHERE copy_id = ?1")?;
        let rows = stmt.query_map([copy], |r| {
            let path = paths::from_row(r, 0)?;
            let size: i64 = r.get(1)?;
            let leaf_size: i64 = r.get(2)?;
            let cvs: Vec<u8> = r.get(3)?;
            Ok((
                path,
                LeafHashes::from_bytes(leaf_size as u64, size as u64, &cvs),
            ))
        })?;
        let mut leaves = HashMap::new();
        for row in rows {
            // Values that are not whole are not used: that file is read in full.
            if let (path, Some(hashes)) = row? {
                leaves.insert(path, hashes);
            }
        }
        Ok(Some(LeafBase { copy, leaves }))
    }
}

/// After a verification of copy `id`: a passed one keeps `leaves` as its set's base,
/// unless a newer copy of the set already holds that place (an older copy verified
/// again); a failed one takes the copy's leaves away.
pub(crate) fn record(
    tx: &Transaction<'_>,
    id: CopyId,
    passed: bool,
    leaves: &[(PathBuf, LeafHashes)],
) -> rusqlite::Result<()> {
    if !passed {
        tx.execute("DELETE FROM leaf_hashes WHERE copy_id = ?1", [id])?;
        return Ok(());
    }
    if leaves.is_empty() {
        return Ok(());
    }
    let newer_holds: Option<i64> = tx
        .query_row(
            "SELECT 1 FROM leaf_hashes l JOIN copies c ON c.id = l.copy_id
             WHERE c.set_name = (SELECT set_name FROM copies WHERE id = ?1) AND c.id > ?1
             LIMIT 1",
            [id],
            |r| r.get(0),
        )
        .optional()?;
    if newer_holds.is_some() {
        return Ok(());
    }
    tx.execute(
        "DELETE FROM leaf_hashes WHERE copy_id IN
            (SELECT id FROM copies WHERE set_name = (SELECT set_name FROM copies WHERE id = ?1))",
        [id],
    )?;
    let mut insert = tx.prepare(
        "INSERT INTO leaf_hashes (copy_id, path, size, leaf_size, cvs) VALUES (?1, ?2, ?3, ?4, ?5)",
    )?;
    for (path, hashes) in leaves {
        insert.execute(params![
            id,
            paths::to_sql(path),
            hashes.size as i64,
            hashes.leaf_size as i64,
            hashes.to_bytes()
        ])?;
    }
    Ok(())
}

/// When the full verification that a verification building on `base` goes back to
/// ran (`now_ms` for a full one). A base without a record counts as never fully
/// verified (0), so the next verification is full.
pub(crate) fn full_at(
    tx: &Transaction<'_>,
    base: Option<CopyId>,
    now_ms: i64,
) -> rusqlite::Result<i64> {
    let Some(base) = base else {
        return Ok(now_ms);
    };
    Ok(tx
        .query_row(
            "SELECT full_at_ms FROM verifications WHERE copy_id = ?1 AND ok = 1
             ORDER BY rowid DESC LIMIT 1",
            [base],
            |r| r.get::<_, Option<i64>>(0),
        )
        .optional()?
        .flatten()
        .unwrap_or(0))
}
