//! Copies opened read-only beside production (`shadowcopy expose`): each exposure's
//! scratch directory and serving process, recorded before anything is built, so that
//! whoever closes it (`unexpose`, its TTL, the cleanup after a crash) finds all of it.

use std::path::{Path, PathBuf};

use rusqlite::params;
use serde::Serialize;

use shadowcopy_core::writer::Exposed;

use crate::{now_ms, paths, Catalog, CatalogError};

/// Where an exposure is in its life.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum ExposureState {
    /// Being built by process `builder_pid` (a shadowcopy command).
    Opening,
    /// Open: what its writers opened is in `exposed`.
    Open,
}

impl ExposureState {
    fn as_str(self) -> &'static str {
        match self {
            ExposureState::Opening => "opening",
            ExposureState::Open => "open",
        }
    }
}

/// One exposure, as recorded.
#[derive(Clone, Debug, Serialize)]
pub struct ExposureRecord {
    pub id: i64,
    pub copy_id: i64,
    pub set: String,
    #[serde(with = "shadowcopy_core::pathjson")]
    pub scratch: PathBuf,
    pub state: ExposureState,
    pub builder_pid: u32,
    /// What each writer opened (servers and their pids, files).
    pub exposed: Vec<Exposed>,
    pub created_ms: i64,
    pub expires_ms: i64,
}

impl Catalog {
    /// Records an exposure of copy `copy_id` about to be built in `scratch` by this
    /// process; returns its id.
    pub fn record_exposure(
        &self,
        copy_id: i64,
        set: &str,
        scratch: &Path,
        expires_ms: i64,
    ) -> Result<i64, CatalogError> {
        self.with_room(|| {
            self.conn.execute(
                "INSERT INTO exposures (copy_id, set_name, scratch, state, builder_pid, created_ms,
                                        expires_ms)
                 VALUES (?1, ?2, ?3, 'opening', ?4, ?5, ?6)",
                params![
                    copy_id,
                    set,
                    paths::to_sql(scratch),
                    std::process::id(),
                    now_ms(),
                    expires_ms
                ],
            )
        })?;
        Ok(self.conn.last_insert_rowid())
    }

    /// What exposure `id`'s writers have opened so far (recorded as each opens, so
    /// that a crash leaves its servers known); `open` once all have.
    pub fn exposure_progress(
        &self,
        id: i64,
        exposed: &[Exposed],
        open: bool,
    ) -> Result<(), CatalogError> {
        let json = serde_json::to_string(exposed).expect("exposures serialize");
        let state = if open {
            ExposureState::Open
        } else {
            ExposureState::Opening
        };
        self.with_room(|| {
            self.conn.execute(
                "UPDATE exposures SET state = ?2, exposed = ?3 WHERE id = ?1",
                params![id, state.as_str(), json],
            )
        })?;
        Ok(())
    }

    /// Every exposure, oldest first.
    pub fn exposures(&self) -> Result<Vec<ExposureRecord>, CatalogError> {
        let mut stmt = self.conn.prepare(
            "SELECT id, copy_id, set_name, scratch, state, builder_pid, exposed, created_ms,
                    expires_ms
             FROM exposures ORDER BY id",
        )?;
        let rows = stmt.query_map([], |r| {
            let state: String = r.get(4)?;
            Ok(ExposureRecord {
                id: r.get(0)?,
                copy_id: r.get(1)?,
                set: r.get(2)?,
                scratch: paths::from_row(r, 3)?,
                state: if state == ExposureState::Open.as_str() {
                    ExposureState::Open
                } else {
                    ExposureState::Opening
                },
                builder_pid: r.get(5)?,
                // Written by this code from the same type: unreadable only if edited.
                exposed: serde_json::from_str(&r.get::<_, String>(6)?).unwrap_or_default(),
                created_ms: r.get(7)?,
                expires_ms: r.get(8)?,
            })
        })?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// Forgets exposure `id` (once its process is stopped and its scratch removed).
    pub fn remove_exposure(&self, id: i64) -> Result<(), CatalogError> {
        self.conn
            .execute("DELETE FROM exposures WHERE id = ?1", params![id])?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_exposure_is_recorded_opened_listed_and_forgotten() {
        let dir = tempfile::tempdir().unwrap();
        let catalog = Catalog::open(dir.path()).unwrap();
        let id = catalog
            .record_exposure(7, "app", Path::new("/srv/copies/.x"), 1_000)
            .unwrap();
        let listed = catalog.exposures().unwrap();
        assert_eq!(listed.len(), 1);
        assert_eq!(listed[0].state, ExposureState::Opening);
        assert_eq!(listed[0].builder_pid, std::process::id());
        let server = Exposed {
            address: "/tmp/s".into(),
            connect: "psql ...".into(),
            pid: Some(42),
            port: Some(5433),
            private_dir: Some("/tmp/shadowcopy-pg-x".into()),
            writer: "postgres:x".into(),
        };
        catalog
            .exposure_progress(id, std::slice::from_ref(&server), true)
            .unwrap();
        let listed = catalog.exposures().unwrap();
        assert_eq!(
            (listed[0].state, &listed[0].exposed, listed[0].copy_id),
            (ExposureState::Open, &vec![server], 7)
        );
        assert_eq!(listed[0].scratch, Path::new("/srv/copies/.x"));
        // One exposure per copy.
        assert!(catalog
            .record_exposure(7, "app", Path::new("/srv/copies/.y"), 1_000)
            .is_err());
        catalog.remove_exposure(id).unwrap();
        assert!(catalog.exposures().unwrap().is_empty());
    }
}
