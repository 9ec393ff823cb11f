//! Reading the catalog: copy summaries for `list`, full details for `show`, and the few
//! updates that are not part of the coordinator's journal (delete).

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::sync::Mutex;

use rusqlite::{params, OptionalExtension, Row};
use serde::{Deserialize, Serialize};
use shadowcopy_core::model::{
    Component, ComponentRole, CopyId, CopyState, FileEntry, Origin, VerifyState,
};

use crate::{paths, Catalog, CatalogError};

/// One copy as `list` shows it (and as an agent tells its backup server).
#[derive(Clone, Debug, Serialize, Deserialize, utoipa::ToSchema)]
pub struct CopySummary {
    #[schema(value_type = i64)]
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

#[derive(Clone, Debug, Serialize, Deserialize, utoipa::ToSchema)]
pub struct PhaseRecord {
    pub phase: String,
    pub started_ms: i64,
    pub took_us: Option<i64>,
    pub error: Option<String>,
}

#[derive(Clone, Debug, Serialize, Deserialize, utoipa::ToSchema)]
pub struct VerificationRecord {
    pub at_ms: i64,
    pub ok: bool,
    pub took_us: i64,
    pub detail: String,
    /// The verified copy whose shared blocks it did not read again (absent: it read
    /// everything).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub base: Option<i64>,
}

/// How many of a copy's verifications, largest files and components [`CopyFacts`]
/// carries, and the longest text (an error, a verification's detail) it keeps whole:
/// a change stays a few KiB however big the copy.
pub const FACTS_VERIFICATIONS: usize = 5;
pub const FACTS_FILES: usize = 10;
pub const FACTS_COMPONENTS: usize = 50;
pub const FACTS_TEXT: usize = 2000;

/// A manifest row: `path, size, mode, mtime_ns, blake3`.
fn file_entry(r: &Row) -> rusqlite::Result<FileEntry> {
    Ok(FileEntry {
        path: paths::from_row(r, 0)?,
        size: r.get::<_, i64>(1)? as u64,
        mode: r.get(2)?,
        mtime_ns: r.get(3)?,
        blake3: r.get(4)?,
    })
}

/// Cuts `text` to at most `max` bytes (on a character boundary), saying so.
fn truncate_text(text: &mut String, max: usize) {
    if text.len() > max {
        let mut end = max;
        while !text.is_char_boundary(end) {
            end -= 1;
        }
        text.truncate(end);
        text.push_str(" … (cut; `shadowcopy show` on the host has it whole)");
    }
}

/// What a backup server keeps of a copy beyond its [`CopySummary`], for its console:
/// the phases with their timings, the newest verifications, what each writer reported,
/// and the largest files (a whole manifest stays in the host's catalog: `show --files`).
#[derive(Clone, Debug, Default, Serialize, Deserialize, utoipa::ToSchema)]
pub struct CopyFacts {
    pub phases: Vec<PhaseRecord>,
    pub verifications: Vec<VerificationRecord>,
    /// The first [`FACTS_COMPONENTS`] of `components_total`.
    #[schema(value_type = Vec<Object>)]
    pub components: Vec<Component>,
    #[serde(default)]
    pub components_total: usize,
    #[schema(value_type = Vec<Object>)]
    pub largest_files: Vec<FileEntry>,
}

/// Everything the catalog knows of one copy.
#[derive(Clone, Debug, Serialize, utoipa::ToSchema)]
pub struct CopyDetail {
    #[serde(flatten)]
    pub summary: CopySummary,
    /// The set's spec as it was taken (writers, paths, provider, deadline).
    #[schema(value_type = Object)]
    pub spec: serde_json::Value,
    pub phases: Vec<PhaseRecord>,
    /// What each writer reported: `writer`, `name`, `role`, `path`, `required`, `pinned`.
    #[schema(value_type = Vec<Object>)]
    pub components: Vec<Component>,
    /// The files copied: `path`, `size`, `mode`, `mtime_ns`, `blake3`.
    #[schema(value_type = Vec<Object>)]
    pub manifest: Vec<FileEntry>,
    pub verifications: Vec<VerificationRecord>,
}

const SUMMARY_SELECT: &str = "
    SELECT c.id, c.set_name, c.origin, c.provider, c.location, c.state, c.phase, c.error, c.pid,
           c.created_ms, c.finished_ms, c.freeze_deadline_ms, c.freeze_window_us, c.verify_state,
           c.file_count, c.file_bytes, c.spec_json
    FROM copies c";

/// One set's copies, counted ([`Catalog::set_totals`]).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct SetTotals {
    /// Its copies in any state this version can read.
    pub copies: i64,
    /// How many copies are in each state (states without copies are left out).
    pub by_state: Vec<(CopyState, i64)>,
    pub newest_usable: Option<NewestCopy>,
}

/// A set's newest usable copy, in brief.
#[derive(Clone, Debug, PartialEq)]
pub struct NewestCopy {
    pub id: CopyId,
    pub created_ms: i64,
    /// The bytes of its files.
    pub bytes: i64,
}

/// A row of `copies`, or what in it this version cannot read.
enum Parsed {
    Known(Box<CopySummary>),
    Unknown {
        id: CopyId,
        what: &'static str,
        value: String,
    },
}

fn summary(row: &Row<'_>) -> rusqlite::Result<Parsed> {
    let id: CopyId = row.get(0)?;
    let origin: String = row.get(2)?;
    let state: String = row.get(5)?;
    let verify: String = row.get(13)?;
    let unknown = |what, value: &str| Parsed::Unknown {
        id,
        what,
        value: value.to_string(),
    };
    let Some(origin) = Origin::parse(&origin) else {
        return Ok(unknown("origin", &origin));
    };
    let Some(state) = CopyState::parse(&state) else {
        return Ok(unknown("state", &state));
    };
    let Some(verify_state) = VerifyState::parse(&verify) else {
        return Ok(unknown("verification state", &verify));
    };
    Ok(Parsed::Known(Box::new(CopySummary {
        id,
        set: row.get(1)?,
        origin,
        provider: row.get(3)?,
        location: row.get(4)?,
        state,
        phase: row.get(6)?,
        error: row.get(7)?,
        pid: row.get(8)?,
        created_ms: row.get(9)?,
        finished_ms: row.get(10)?,
        freeze_deadline_ms: row.get(11)?,
        freeze_window_us: row.get(12)?,
        verify_state,
        files: row.get(14)?,
        bytes: row.get(15)?,
        spec_json: row.get(16)?,
    })))
}

/// The providers for which shadowcopy before schema 3 recorded relative directory paths
/// as locations: a fact of old catalogs (fixed, whatever providers exist now), not a
/// capability.
const PATH_LOCATIONS: [&str; 2] = ["copy", "reflink"];

impl Catalog {
    /// Copies, oldest first, optionally of one set. A copy this version cannot read (a
    /// state written by a newer shadowcopy) is left out with a warning, and so never
    /// selected for deletion or recovery.
    pub fn list(&self, set: Option<&str>) -> Result<Vec<CopySummary>, CatalogError> {
        self.list_page(set, 0, usize::MAX)
    }

    /// At most `limit` copies with ids above `after`, oldest first, optionally of one
    /// set: a page of [`Catalog::list`]; the next page starts after the last id of this
    /// one, and an empty page is the end.
    pub fn list_page(
        &self,
        set: Option<&str>,
        after: CopyId,
        limit: usize,
    ) -> Result<Vec<CopySummary>, CatalogError> {
        let sql = format!(
            "{SUMMARY_SELECT} WHERE (?1 IS NULL OR c.set_name = ?1) AND c.id > ?2 ORDER BY c.id"
        );
        let mut stmt = self.conn.prepare(&sql)?;
        let rows = stmt.query_map(params![set, after], summary)?;
        let mut copies = Vec::new();
        for row in rows {
            if copies.len() >= limit {
                break;
            }
            match row? {
                Parsed::Known(s) => copies.push(self.resolved(*s)),
                Parsed::Unknown { id, what, value } => {
                    // Once per copy and process, however often the copies are listed.
                    static WARNED: Mutex<BTreeSet<CopyId>> = Mutex::new(BTreeSet::new());
                    if WARNED.lock().map_or(true, |mut w| w.insert(id)) {
                        tracing::warn!("{}", CatalogError::Unknown { id, what, value });
                    }
                }
            }
        }
        Ok(copies)
    }

    /// Each set's copies counted by state, and its newest usable copy: what a status
    /// page needs without reading every copy. Sets without copies are not listed; states
    /// this version cannot read are not counted.
    pub fn set_totals(&self) -> Result<BTreeMap<String, SetTotals>, CatalogError> {
        let mut totals: BTreeMap<String, SetTotals> = BTreeMap::new();
        let mut stmt = self
            .conn
            .prepare("SELECT set_name, state, COUNT(*) FROM copies GROUP BY set_name, state")?;
        let rows = stmt.query_map([], |r| {
            Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?, r.get(2)?))
        })?;
        for row in rows {
            let (set, state, count) = row?;
            if let Some(state) = CopyState::parse(&state) {
                let set = totals.entry(set).or_default();
                set.by_state.push((state, count));
                set.copies += count;
            }
        }
        let mut stmt = self.conn.prepare(
            "SELECT set_name, id, created_ms, file_bytes FROM copies WHERE id IN
                (SELECT MAX(id) FROM copies WHERE state = ?1 GROUP BY set_name)",
        )?;
        let rows = stmt.query_map([CopyState::Usable.as_str()], |r| {
            Ok((
                r.get::<_, String>(0)?,
                NewestCopy {
                    id: r.get(1)?,
                    created_ms: r.get(2)?,
                    bytes: r.get(3)?,
                },
            ))
        })?;
        for row in rows {
            let (set, newest) = row?;
            totals.entry(set).or_default().newest_usable = Some(newest);
        }
        Ok(totals)
    }

    pub fn summary(&self, id: CopyId) -> Result<CopySummary, CatalogError> {
        let sql = format!("{SUMMARY_SELECT} WHERE c.id = ?1");
        match self.conn.query_row(&sql, [id], summary).optional()? {
            None => Err(CatalogError::NoSuchCopy(id)),
            Some(Parsed::Known(s)) => Ok(self.resolved(*s)),
            Some(Parsed::Unknown { id, what, value }) => {
                Err(CatalogError::Unknown { id, what, value })
            }
        }
    }

    /// Older versions recorded a relative catalog's copy locations relative to the
    /// directory they ran in (`cat/copies/copy-1-…`), which means another directory when
    /// read from elsewhere. Such a location is read as the copy of the same name in this
    /// catalog's copies directory, the only place it can have been made; one of another
    /// shape is not acted on (see [`Catalog::location_is_ambiguous`]).
    fn resolved(&self, mut s: CopySummary) -> CopySummary {
        if let Some(loc) = &s.location {
            let p = Path::new(loc);
            if PATH_LOCATIONS.contains(&s.provider.as_str()) && p.is_relative() {
                let in_copies = p
                    .parent()
                    .and_then(Path::file_name)
                    .is_some_and(|n| n == "copies");
                if let (true, Some(name)) = (in_copies, p.file_name()) {
                    let abs = self.default_copies_dir().join(name);
                    if let Some(abs) = abs.to_str() {
                        s.location = Some(abs.to_string());
                    }
                }
            }
        }
        s
    }

    /// Whether a copy's recorded location is a relative path that [`Catalog::resolved`]
    /// could not place: deleting it would remove whatever is at that path in the current
    /// directory, so it must not be.
    pub fn location_is_ambiguous(copy: &CopySummary) -> bool {
        PATH_LOCATIONS.contains(&copy.provider.as_str())
            && copy
                .location
                .as_deref()
                .is_some_and(|l| Path::new(l).is_relative())
    }

    pub fn detail(&self, id: CopyId) -> Result<CopyDetail, CatalogError> {
        let summary = self.summary(id)?;
        let spec = serde_json::from_str(&summary.spec_json).unwrap_or(serde_json::Value::Null);
        let phases = self.phases(id)?;
        let verifications = self.verifications(id)?;
        Ok(CopyDetail {
            components: self.components(id)?,
            manifest: self.manifest(id)?,
            summary,
            spec,
            phases,
            verifications,
        })
    }

    /// Copy `id`'s phases, in the order they ran.
    pub fn phases(&self, id: CopyId) -> Result<Vec<PhaseRecord>, CatalogError> {
        let mut stmt = self.conn.prepare_cached(
            "SELECT phase, started_ms, took_us, error FROM phases WHERE copy_id = ?1 ORDER BY seq",
        )?;
        let rows = stmt.query_map([id], |r| {
            Ok(PhaseRecord {
                phase: r.get(0)?,
                started_ms: r.get(1)?,
                took_us: r.get(2)?,
                error: r.get(3)?,
            })
        })?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// Copy `id`'s verifications, oldest first.
    pub fn verifications(&self, id: CopyId) -> Result<Vec<VerificationRecord>, CatalogError> {
        let mut stmt = self.conn.prepare_cached(
            "SELECT at_ms, ok, took_us, detail, base_copy_id FROM verifications WHERE copy_id = ?1
             ORDER BY at_ms",
        )?;
        let rows = stmt.query_map([id], |r| {
            Ok(VerificationRecord {
                at_ms: r.get(0)?,
                ok: r.get(1)?,
                took_us: r.get(2)?,
                detail: r.get(3)?,
                base: r.get(4)?,
            })
        })?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// What a backup server shows of copy `id` beyond its summary (see [`CopyFacts`]).
    pub fn facts(&self, id: CopyId) -> Result<CopyFacts, CatalogError> {
        let mut verifications = self.verifications(id)?;
        let keep_from = verifications.len().saturating_sub(FACTS_VERIFICATIONS);
        verifications.drain(..keep_from);
        let mut stmt = self.conn.prepare_cached(
            "SELECT path, size, mode, mtime_ns, blake3 FROM files WHERE copy_id = ?1
             ORDER BY size DESC, path LIMIT ?2",
        )?;
        let largest_files = stmt
            .query_map(params![id, FACTS_FILES as i64], file_entry)?
            .collect::<Result<_, _>>()?;
        for v in &mut verifications {
            truncate_text(&mut v.detail, FACTS_TEXT);
        }
        let mut phases = self.phases(id)?;
        for p in &mut phases {
            if let Some(e) = &mut p.error {
                truncate_text(e, FACTS_TEXT);
            }
        }
        let mut components = self.components(id)?;
        let components_total = components.len();
        components.truncate(FACTS_COMPONENTS);
        Ok(CopyFacts {
            phases,
            verifications,
            components,
            components_total,
            largest_files,
        })
    }

    pub fn components(&self, id: CopyId) -> Result<Vec<Component>, CatalogError> {
        let mut stmt = self.conn.prepare_cached(
            "SELECT writer, name, role, path, required, pinned FROM components WHERE copy_id = ?1 ORDER BY rowid",
        )?;
        let rows = stmt.query_map([id], |r| {
            let role: String = r.get(2)?;
            Ok(Component {
                writer: r.get(0)?,
                name: r.get(1)?,
                role: ComponentRole::parse(&role).unwrap_or(ComponentRole::Data),
                path: paths::from_row(r, 3)?,
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
        let rows = stmt.query_map([id], file_entry)?;
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
        let n = self.with_room(|| {
            self.conn.execute(
                "UPDATE copies SET state = ?2, phase = 'delete' WHERE id = ?1",
                params![id, CopyState::Deleting.as_str()],
            )
        })?;
        if n == 0 {
            return Err(CatalogError::NoSuchCopy(id));
        }
        Ok(())
    }

    /// The copy's data is gone: its location is no longer recorded (see
    /// `Journal::set_location`). For recovery, which frees space, so it may use the
    /// space reserve.
    pub(crate) fn forget_location(&self, id: CopyId) -> Result<(), CatalogError> {
        self.with_room(|| {
            self.conn
                .execute("UPDATE copies SET location = NULL WHERE id = ?1", [id])
        })?;
        Ok(())
    }

    /// Forgets a copy whose data the provider has deleted. Its manifest goes in small
    /// transactions, so that forgetting a copy of many files needs little room in the
    /// write-ahead log (a deletion runs on full file systems too).
    pub fn remove(&self, id: CopyId) -> Result<(), CatalogError> {
        loop {
            let n = self.with_room(|| {
                self.conn.execute(
                    "DELETE FROM files WHERE rowid IN
                        (SELECT rowid FROM files WHERE copy_id = ?1 LIMIT 500)",
                    [id],
                )
            })?;
            if n == 0 {
                break;
            }
        }
        self.with_room(|| self.conn.execute("DELETE FROM copies WHERE id = ?1", [id]))?;
        Ok(())
    }
}
