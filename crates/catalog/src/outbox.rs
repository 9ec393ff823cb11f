//! The outbox an agent's copies go to its backup server from. Once the agent is linked
//! ([`Catalog::outbox_link`]), a trigger gives a copy the next sequence number whenever
//! it is made, changes or is deleted (one row per copy: only its newest change counts).
//! The agent sends what is in it, each copy as it is now (or as gone), and forgets what
//! the server acknowledged. Sending a change twice is harmless: the server keeps, per
//! host, the highest number it applied and skips what is not above it. When the
//! server's number is above any this catalog ever gave (a catalog restored from a
//! backup, or made anew), [`Catalog::outbox_refill`] puts every copy in again and the
//! agent asks the server to start over.

use rusqlite::params;
use serde::{Deserialize, Serialize};
use shadowcopy_core::model::CopyId;

use crate::{Catalog, CatalogError, CopyFacts, CopySummary};

/// One copy's newest change.
#[derive(Clone, Debug, Serialize, Deserialize, utoipa::ToSchema)]
pub struct CopyChange {
    pub seq: i64,
    #[schema(value_type = i64)]
    pub copy_id: CopyId,
    /// The copy now; absent when it was deleted.
    pub copy: Option<CopySummary>,
    /// Its phases, verifications, components and largest files (absent when deleted).
    #[serde(default)]
    pub facts: Option<CopyFacts>,
}

impl Catalog {
    /// The first `limit` changes after `after`, oldest first.
    pub fn outbox_after(&self, after: i64, limit: usize) -> Result<Vec<CopyChange>, CatalogError> {
        let rows: Vec<(i64, CopyId)> = {
            let mut statement = self
                .conn
                .prepare("SELECT seq, copy_id FROM outbox WHERE seq > ?1 ORDER BY seq LIMIT ?2")?;
            let rows = statement
                .query_map(params![after, limit as i64], |r| Ok((r.get(0)?, r.get(1)?)))?
                .collect::<Result<_, _>>()?;
            rows
        };
        let mut changes = Vec::with_capacity(rows.len());
        for (seq, copy_id) in rows {
            let (copy, facts) = match self.summary(copy_id) {
                Ok(copy) => (Some(copy), Some(self.facts(copy_id)?)),
                Err(CatalogError::NoSuchCopy(_)) => (None, None),
                Err(e) => return Err(e),
            };
            changes.push(CopyChange {
                seq,
                copy_id,
                copy,
                facts,
            });
        }
        Ok(changes)
    }

    /// Forgets the changes up to `seq`, which the server has applied.
    pub fn outbox_acknowledged(&self, seq: i64) -> Result<(), CatalogError> {
        self.with_room(|| {
            self.conn
                .execute("DELETE FROM outbox WHERE seq <= ?1", [seq])
        })?;
        Ok(())
    }

    /// Links the outbox: from now on every change to a copy is recorded. Returns whether
    /// it was not linked before (the caller then refills it).
    pub fn outbox_link(&self) -> Result<bool, CatalogError> {
        let n = self.with_room(|| {
            self.conn
                .execute("INSERT OR IGNORE INTO outbox_link (id) VALUES (1)", [])
        })?;
        Ok(n == 1)
    }

    /// Puts every copy in the outbox again (each with a new, higher number), for a
    /// server that has to learn all of them.
    pub fn outbox_refill(&self) -> Result<(), CatalogError> {
        self.with_room(|| {
            self.conn.execute(
                "INSERT OR REPLACE INTO outbox (copy_id) SELECT id FROM copies ORDER BY id",
                [],
            )
        })?;
        Ok(())
    }

    /// The highest number this catalog's outbox ever gave (sent or not).
    pub fn outbox_high_water(&self) -> Result<i64, CatalogError> {
        Ok(self.conn.query_row(
            "SELECT COALESCE((SELECT seq FROM sqlite_sequence WHERE name = 'outbox'), 0)",
            [],
            |r| r.get(0),
        )?)
    }

    /// How many changes wait to be sent.
    pub fn outbox_len(&self) -> Result<i64, CatalogError> {
        Ok(self
            .conn
            .query_row("SELECT COUNT(*) FROM outbox", [], |r| r.get(0))?)
    }
}
