//! How far each set's logs (PostgreSQL's archived WAL, MariaDB's binary logs) are in each
//! of its archives off the host: written after a push of the logs succeeds, read by log
//! truncation, which never removes from this host a log that is nowhere else.

use rusqlite::{params, OptionalExtension};

use crate::{now_ms, Catalog, CatalogError};

impl Catalog {
    /// Records that `archive` holds set `set`'s logs up to and including `through`.
    pub fn record_logs_archived(
        &self,
        set: &str,
        archive: &str,
        through: &str,
    ) -> Result<(), CatalogError> {
        self.with_room(|| {
            self.conn.execute(
                "INSERT INTO archived_logs (set_name, archive, through, updated_ms)
                 VALUES (?1, ?2, ?3, ?4)
                 ON CONFLICT(set_name, archive)
                 DO UPDATE SET through = excluded.through, updated_ms = excluded.updated_ms",
                params![set, archive, through, now_ms()],
            )
        })?;
        Ok(())
    }

    /// The newest of set `set`'s logs that `archive` is known to hold.
    pub fn logs_archived_through(
        &self,
        set: &str,
        archive: &str,
    ) -> Result<Option<String>, CatalogError> {
        Ok(self
            .conn
            .query_row(
                "SELECT through FROM archived_logs WHERE set_name = ?1 AND archive = ?2",
                params![set, archive],
                |r| r.get(0),
            )
            .optional()?)
    }
}
