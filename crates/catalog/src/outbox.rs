//! The outbox an agent's copies go to its backup server from. A trigger gives a copy
//! the next sequence number whenever it is made, changes or is deleted (one row per
//! copy: only its newest change counts). The agent sends what follows the server's
//! acknowledged number, each copy as it is now (or as gone), and forgets what the
//! server acknowledged. Sending a change twice is harmless: the server keeps, per
//! host, the highest number it applied and skips what is not above it.

use rusqlite::params;
use serde::{Deserialize, Serialize};
use shadowcopy_core::model::CopyId;

use crate::{Catalog, CatalogError, CopySummary};

/// One copy's newest change.
#[derive(Clone, Debug, Serialize, Deserialize, utoipa::ToSchema)]
pub struct CopyChange {
    pub seq: i64,
    #[schema(value_type = i64)]
    pub copy_id: CopyId,
    /// The copy now; absent when it was deleted.
    pub copy: Option<CopySummary>,
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
            let copy = match self.summary(copy_id) {
                Ok(copy) => Some(copy),
                Err(CatalogError::NoSuchCopy(_)) => None,
                Err(e) => return Err(e),
            };
            changes.push(CopyChange { seq, copy_id, copy });
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

    /// How many changes wait to be sent.
    pub fn outbox_len(&self) -> Result<i64, CatalogError> {
        Ok(self
            .conn
            .query_row("SELECT COUNT(*) FROM outbox", [], |r| r.get(0))?)
    }
}
