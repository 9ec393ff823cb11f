//! Reading the catalog: copy summaries for `list`, full details for `show`, and the few
//! updates that are not part of the coordinator's journal (delete).

use std::path::PathBuf;

use rusqlite::{params, OptionalExtension, Row};
use serde::Serialize;
use shadowcopy_core::model::{
    Component, ComponentRole, CopyId, CopyState, FileEntry, Origin, VerifyState,
};

use crate::{Catalog, CatalogError};

/// One copy as `list` shows it.
#[derive(Clone, Debug, Serialize)]
pub struct CopySummary {
    pub id: CopyId,
    pub set: String,
    pub origin: Origin,
    pub provider: String,
    pub location: Option<String>,
    pub state: CopyState,
    /// The phase it reached (or is in).
    pub phase: String,
    pub error: Option<String>,
    pub pid: u32,
    pub created_ms: i64,
    pub finished_ms: Option<i64>,
    pub freeze_deadline_ms: i64,
    pub freeze_window_us: Option<i64>,
    pub verify_state: VerifyState,
    pub files: i64,
    pub bytes: i64,
    #[serde(skip)]
    pub spec_json: String,
}

#[derive(Clone, Debug, Serialize)]
pub struct PhaseRecord {
    pub phase: String,
    pub started_ms: i64,
    pub took_us: Option<i64>,
    pub error: Option<String>,
}

#[derive(Clone, Debug, Serialize)]
pub struct VerificationRecord {
    pub at_ms: i64,
    pub ok: bool,
    pub took_us: i64,
    pub detail: String,
}

/// Everything the catalog knows of one copy.
#[derive(Clone, Debug, Serialize)]
pub struct CopyDetail {
    #[serde(flatten)]
    pub summary: CopySummary,
    pub spec: serde_json::Value,
    pub phases: Vec<PhaseRecord>,
    pub components: Vec<Component>,
    pub manifest: Vec<FileEntry>,
    pub verifications: Vec<VerificationRecord>,
}

const SUMMARY_SELECT: &str = "
    SELECT c.id, c.set_name, c.origin, c.provider, c.location, c.state, c.phase, c.error, c.pid,
           c.created_ms, c.finished_ms, c.freeze_deadline_ms, c.freeze_window_us, c.verify_state,
           (SELECT COUNT(*) FROM files f WHERE f.copy_id = c.id),
           (SELECT COALESCE(SUM(size), 0) FROM files f WHERE f.copy_id = c.id),
           c.spec_json
    FROM copies c";

fn summary(row: &Row<'_>) -> rusqlite::Result<CopySummary> {
    let text = |i: usize| -> rusqlite::Result<String> { row.get(i) };
    let bad = |i: usize, v: &str| {
        rusqlite::Error::FromSqlConversionFailure(
            i,
            rusqlite::types::Type::Text,
            format!("unknown value {v:?}").into(),
        )
    };
    let origin = text(2)?;
    let state = text(5)?;
    let verify = text(13)?;
    Ok(CopySummary {
        id: row.get(0)?,
        set: row.get(1)?,
        origin: Origin::parse(&origin).ok_or_else(|| bad(2, &origin))?,
        provider: row.get(3)?,
        location: row.get(4)?,
        state: CopyState::parse(&state).ok_or_else(|| bad(5, &state))?,
        phase: row.get(6)?,
        error: row.get(7)?,
        pid: row.get(8)?,
        created_ms: row.get(9)?,
        finished_ms: row.get(10)?,
        freeze_deadline_ms: row.get(11)?,
        freeze_window_us: row.get(12)?,
        verify_state: VerifyState::parse(&verify).ok_or_else(|| bad(13, &verify))?,
        files: row.get(14)?,
        bytes: row.get(15)?,
        spec_json: row.get(16)?,
    })
}

impl Catalog {
    /// Copies, oldest first, optionally of one set.
    pub fn list(&self, set: Option<&str>) -> Result<Vec<CopySummary>, CatalogError> {
        let sql = format!("{SUMMARY_SELECT} WHERE (?1 IS NULL OR c.set_name = ?1) ORDER BY c.id");
        let mut stmt = self.conn.prepare(&sql)?;
        let rows = stmt.query_map(params![set], summary)?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    pub fn summary(&self, id: CopyId) -> Result<CopySummary, CatalogError> {
        let sql = format!("{SUMMARY_SELECT} WHERE c.id = ?1");
        self.conn
            .query_row(&sql, [id], summary)
            .optional()?
            .ok_or(CatalogError::NoSuchCopy(id))
    }

    pub fn detail(&self, id: CopyId) -> Result<CopyDetail, CatalogError> {
        let summary = self.summary(id)?;
        let spec = serde_json::from_str(&summary.spec_json).unwrap_or(serde_json::Value::Null);
        let mut stmt = self.conn.prepare(
            "SELECT phase, started_ms, took_us, error FROM phases WHERE copy_id = ?1 ORDER BY seq",
        )?;
        let phases = stmt
            .query_map([id], |r| {
                Ok(PhaseRecord {
                    phase: r.get(0)?,
                    started_ms: r.get(1)?,
                    took_us: r.get(2)?,
                    error: r.get(3)?,
                })
            })?
            .collect::<Result<_, _>>()?;
        let mut stmt = self.conn.prepare(
            "SELECT at_ms, ok, took_us, detail FROM verifications WHERE copy_id = ?1 ORDER BY at_ms",
        )?;
        let verifications = stmt
            .query_map([id], |r| {
                Ok(VerificationRecord {
                    at_ms: r.get(0)?,
                    ok: r.get(1)?,
                    took_us: r.get(2)?,
                    detail: r.get(3)?,
                })
            })?
            .collect::<Result<_, _>>()?;
        Ok(CopyDetail {
            components: self.components(id)?,
            manifest: self.manifest(id)?,
            summary,
            spec,
            phases,
            verifications,
        })
    }

    pub fn components(&self, id: CopyId) -> Result<Vec<Component>, CatalogError> {
        let mut stmt = self.conn.prepare(
            "SELECT writer, name, role, path, required, pinned FROM components WHERE copy_id = ?1 ORDER BY rowid",
        )?;
        let rows = stmt.query_map([id], |r| {
            let role: String = r.get(2)?;
            Ok(Component {
                writer: r.get(0)?,
                name: r.get(1)?,
                role: ComponentRole::parse(&role).unwrap_or(ComponentRole::Data),
                path: PathBuf::from(r.get::<_, String>(3)?),
                required: r.get(4)?,
                pinned: r.get(5)?,
            })
        })?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    pub fn manifest(&self, id: CopyId) -> Result<Vec<FileEntry>, CatalogError> {
        let mut stmt = self.conn.prepare(
            "SELECT path, size, mode, mtime_ns, blake3 FROM files WHERE copy_id = ?1 ORDER BY path",
        )?;
        let rows = stmt.query_map([id], |r| {
            Ok(FileEntry {
                path: PathBuf::from(r.get::<_, String>(0)?),
                size: r.get::<_, i64>(1)? as u64,
                mode: r.get(2)?,
                mtime_ns: r.get(3)?,
                blake3: r.get(4)?,
            })
        })?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// The newest specification recorded for a set.
    pub fn set_spec(&self, name: &str) -> Result<Option<String>, CatalogError> {
        Ok(self
            .conn
            .query_row("SELECT spec_json FROM sets WHERE name = ?1", [name], |r| {
                r.get(0)
            })
            .optional()?)
    }

    /// Recorded before the provider deletes anything, so an interrupted delete is
    /// finished by the next run's recovery.
    pub fn mark_deleting(&self, id: CopyId) -> Result<(), CatalogError> {
        let n = self.conn.execute(
            "UPDATE copies SET state = ?2, phase = 'delete' WHERE id = ?1",
            params![id, CopyState::Deleting.as_str()],
        )?;
        if n == 0 {
            return Err(CatalogError::NoSuchCopy(id));
        }
        Ok(())
    }

    /// The copy's data is gone: its location is no longer recorded (see
    /// `Journal::set_location`).
    pub(crate) fn forget_location(&self, id: CopyId) -> Result<(), CatalogError> {
        self.conn
            .execute("UPDATE copies SET location = NULL WHERE id = ?1", [id])?;
        Ok(())
    }

    /// Forgets a copy whose data the provider has deleted.
    pub fn remove(&self, id: CopyId) -> Result<(), CatalogError> {
        self.conn
            .execute("DELETE FROM copies WHERE id = ?1", [id])?;
        Ok(())
    }
}
