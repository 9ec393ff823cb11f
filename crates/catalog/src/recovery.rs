//! Cleanup of interrupted shadow sets. While we hold the queue, a copy still
//! `in-progress` (or `deleting`) belongs to a process that died: its freeze was released
//! with that process (the writer contract); what remains is the partial copy, discarded
//! here, and the record, marked failed with the reason. A `failed` copy that still has a
//! location is one whose data the abort path could not discard: that is retried here.

use std::sync::Arc;

use shadowcopy_core::events::EventSink;
use shadowcopy_core::model::{CopyId, CopyState};
use shadowcopy_core::provider::Provider;
use shadowcopy_core::swap::{finish_interrupted, SwapRecord};

use crate::queries::CopySummary;
use crate::queue::QueueGuard;
use crate::{Catalog, CatalogError};

/// Builds the provider that made a copy (or says why it cannot).
pub type ProviderFor<'a> = &'a dyn Fn(&CopySummary) -> Result<Arc<dyn Provider>, String>;

/// What recovery did with one interrupted copy.
#[derive(Clone, Debug)]
pub struct Recovered {
    pub id: CopyId,
    pub set: String,
    pub what: String,
}

impl Catalog {
    /// Finishes every restore a dead process left unfinished (see `shadowcopy_core::swap`):
    /// its renames are replayed and its staging areas removed. Needs the queue, like
    /// [`Catalog::recover_interrupted`]. Returns one line per restore for the user; a
    /// restore that cannot be finished stays recorded and its line says why.
    pub fn recover_interrupted_restores(
        &self,
        _guard: &QueueGuard,
        events: &dyn EventSink,
    ) -> Result<Vec<String>, CatalogError> {
        let open: Vec<(i64, i64, String)> = self
            .conn
            .prepare("SELECT id, pid, record FROM restores WHERE ended_ms IS NULL ORDER BY id")?
            .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))?
            .collect::<Result<_, _>>()?;
        let mut lines = Vec::new();
        for (id, pid, json) in open {
            let line = match serde_json::from_str::<SwapRecord>(&json) {
                Err(e) => format!(
                    "restore {id} (process {pid}) was interrupted, but its record cannot be read ({e}); \
                     check the restored paths by hand"
                ),
                Ok(record) => match finish_interrupted(&record, events, &|done| {
                    self.conn
                        .execute(
                            "UPDATE restores SET record = ?2 WHERE id = ?1",
                            rusqlite::params![id, serde_json::to_string(done)?],
                        )
                        .map(drop)
                        .map_err(Into::into)
                }) {
                    Ok(done) => {
                        self.conn.execute(
                            "UPDATE restores SET ended_ms = ?2 WHERE id = ?1",
                            rusqlite::params![id, crate::now_ms()],
                        )?;
                        format!("process {pid} was killed during a restore: {done}")
                    }
                    Err(e) => {
                        let mut msg = e.to_string();
                        let mut cause = std::error::Error::source(&e);
                        while let Some(c) = cause {
                            msg.push_str(&format!(": {c}"));
                            cause = c.source();
                        }
                        format!(
                            "process {pid} was killed during a restore of copy {}, and finishing it failed: {msg}; \
                             the next command tries again",
                            record.copy_id
                        )
                    }
                },
            };
            lines.push(line);
        }
        Ok(lines)
    }

    /// Restores that a dead process left and that could not be finished yet (see
    /// [`Catalog::recover_interrupted_restores`]): no new restore may run over them, or a
    /// later replay would put the older copy's files back over the newer restore.
    pub fn unfinished_restores(&self) -> Result<Vec<CopyId>, CatalogError> {
        Ok(self
            .conn
            .prepare("SELECT copy_id FROM restores WHERE ended_ms IS NULL ORDER BY id")?
            .query_map([], |r| r.get(0))?
            .collect::<Result<_, _>>()?)
    }

    /// Cleans up every interrupted copy. Needs the queue (`_guard`) so that no live run is
    /// mistaken for a dead one. `provider_for` builds the provider that made a copy.
    pub fn recover_interrupted(
        &self,
        _guard: &QueueGuard,
        provider_for: ProviderFor<'_>,
    ) -> Result<Vec<Recovered>, CatalogError> {
        let mut done = Vec::new();
        for copy in self.list(None)? {
            let leftover = copy.state == CopyState::Failed && copy.location.is_some();
            if !matches!(copy.state, CopyState::InProgress | CopyState::Deleting) && !leftover {
                continue;
            }
            let discarded = match (&copy.location, provider_for(&copy)) {
                (None, _) => Ok("no data had been written".to_string()),
                (Some(loc), _) if Catalog::location_is_ambiguous(&copy) => Err(format!(
                    "not discarding {loc}: an older shadowcopy recorded it relative to the directory it ran in; remove it by hand"
                )),
                (Some(loc), Ok(p)) => p
                    .delete(loc)
                    .map(|()| format!("partial copy at {loc} discarded"))
                    .map_err(|e| format!("discarding {loc} failed: {e}")),
                (Some(loc), Err(e)) => Err(format!("cannot discard {loc}: {e}")),
            };
            if discarded.is_ok() && copy.location.is_some() {
                self.forget_location(copy.id)?;
            }
            let what = match (copy.state, discarded) {
                (CopyState::Failed, Ok(msg)) => format!("leftover data of the failed copy: {msg}"),
                (CopyState::Failed, Err(msg)) => msg,
                (CopyState::Deleting, Ok(msg)) => {
                    self.remove(copy.id)?;
                    format!("interrupted delete finished ({msg})")
                }
                (CopyState::Deleting, Err(msg)) => msg,
                (_, result) => {
                    let msg = result.unwrap_or_else(|e| e);
                    let during = if copy.phase == "freeze" {
                        "the freeze window (freeze, commit or thaw; the freeze was released with the process)".to_string()
                    } else {
                        format!("phase {}", copy.phase)
                    };
                    let reason = format!(
                        "interrupted: process {} ended during {during}; {msg}",
                        copy.pid
                    );
                    self.with_room(|| {
                        self.conn.execute(
                            "UPDATE copies SET state = 'failed', error = ?2, finished_ms = ?3 WHERE id = ?1",
                            rusqlite::params![copy.id, reason, crate::now_ms()],
                        )
                    })?;
                    reason
                }
            };
            done.push(Recovered {
                id: copy.id,
                set: copy.set.clone(),
                what,
            });
        }
        Ok(done)
    }
}
