//! The catalog as the coordinator's `Journal`: each call is one durable write.

use std::time::{Duration, SystemTime};

use rusqlite::params;
use shadowcopy_core::journal::{Journal, JournalError, NewCopy};
use shadowcopy_core::model::{Component, CopyId, CopyState, FileEntry, Phase, VerifyState};
use shadowcopy_core::verify::Verification;

use crate::{leaf_hashes, now_ms, paths, Catalog};

impl Catalog {
    /// A journal call's SQL error, said to be a full file system when it is one.
    fn journal<T>(&self, result: rusqlite::Result<T>) -> Result<T, JournalError> {
        result.map_err(|e| self.sql(e).into())
    }
}

impl Journal for Catalog {
    fn begin_copy(&self, copy: &NewCopy<'_>) -> Result<CopyId, JournalError> {
        self.journal(self.insert_copy(copy))
    }

    fn set_location(&self, id: CopyId, location: &str) -> Result<(), JournalError> {
        self.journal(
            self.conn
                .execute(
                    "UPDATE copies SET location = ?2 WHERE id = ?1",
                    params![id, location],
                )
                .map(drop),
        )
    }

    fn discarded(&self, id: CopyId) -> Result<(), JournalError> {
        // Not through the space reserve, which is kept for `delete`.
        self.journal(
            self.conn
                .execute("UPDATE copies SET location = NULL WHERE id = ?1", [id])
                .map(drop),
        )
    }

    fn enter_phase(&self, id: CopyId, phase: Phase) -> Result<(), JournalError> {
        self.journal(self.append_phase(id, phase, now_ms(), None, None))
    }

    fn finish_phase(
        &self,
        id: CopyId,
        phase: Phase,
        took: Duration,
        error: Option<&str>,
    ) -> Result<(), JournalError> {
        let changed = self.journal(self.conn.execute(
            "UPDATE phases SET took_us = ?3, error = ?4
             WHERE copy_id = ?1 AND seq = (SELECT MAX(seq) FROM phases WHERE copy_id = ?1 AND phase = ?2)",
            params![id, phase.as_str(), took.as_micros() as i64, error],
        ))?;
        if changed == 0 {
            // The start could not be recorded (the thaw runs even then): record it now.
            let started = SystemTime::now()
                .checked_sub(took)
                .unwrap_or(SystemTime::UNIX_EPOCH);
            self.record_phase(id, phase, started, took, error)?;
        }
        Ok(())
    }

    fn record_phase(
        &self,
        id: CopyId,
        phase: Phase,
        started: SystemTime,
        took: Duration,
        error: Option<&str>,
    ) -> Result<(), JournalError> {
        let started_ms = started
            .duration_since(SystemTime::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as i64);
        let took_us = took.as_micros() as i64;
        self.journal(self.append_phase(id, phase, started_ms, Some(took_us), error))
    }

    fn record_components(&self, id: CopyId, components: &[Component]) -> Result<(), JournalError> {
        self.journal(self.insert_components(id, components))
    }

    fn record_files(&self, id: CopyId, files: &[FileEntry]) -> Result<(), JournalError> {
        self.journal(self.insert_files(id, files))
    }

    fn record_freeze_window(&self, id: CopyId, window: Duration) -> Result<(), JournalError> {
        self.journal(
            self.conn
                .execute(
                    "UPDATE copies SET freeze_window_us = ?2 WHERE id = ?1",
                    params![id, window.as_micros() as i64],
                )
                .map(drop),
        )
    }

    fn record_verification(
        &self,
        id: CopyId,
        verification: &Verification,
        took: Duration,
    ) -> Result<(), JournalError> {
        self.journal(self.insert_verification(id, verification, took))
    }

    fn finish_copy(
        &self,
        id: CopyId,
        state: CopyState,
        error: Option<&str>,
    ) -> Result<(), JournalError> {
        self.journal(
            self.conn
                .execute(
                    "UPDATE copies SET state = ?2, error = ?3, finished_ms = ?4,
                    phase = CASE WHEN ?2 = 'usable' THEN 'done' ELSE phase END
             WHERE id = ?1",
                    params![id, state.as_str(), error, now_ms()],
                )
                .map(drop),
        )
    }

    fn begin_restore(&self, copy_id: CopyId, record: &str) -> Result<i64, JournalError> {
        self.journal(
            self.conn
                .execute(
                    "INSERT INTO restores (copy_id, pid, started_ms, record) VALUES (?1, ?2, ?3, ?4)",
                    params![copy_id, std::process::id(), now_ms(), record],
                )
                .map(|_| self.conn.last_insert_rowid()),
        )
    }

    fn record_restore(&self, restore: i64, record: &str) -> Result<(), JournalError> {
        self.journal(
            self.conn
                .execute(
                    "UPDATE restores SET record = ?2 WHERE id = ?1",
                    params![restore, record],
                )
                .map(drop),
        )
    }

    fn end_restore(&self, restore: i64) -> Result<(), JournalError> {
        self.journal(
            self.conn
                .execute(
                    "UPDATE restores SET ended_ms = ?2 WHERE id = ?1",
                    params![restore, now_ms()],
                )
                .map(drop),
        )
    }
}

impl Catalog {
    fn insert_copy(&self, copy: &NewCopy<'_>) -> rusqlite::Result<CopyId> {
        let tx = self.conn.unchecked_transaction()?;
        tx.execute(
            "INSERT INTO sets (name, spec_json, updated_ms) VALUES (?1, ?2, ?3)
             ON CONFLICT(name) DO UPDATE SET spec_json = excluded.spec_json, updated_ms = excluded.updated_ms",
            params![copy.set_name, copy.spec_json, now_ms()],
        )?;
        tx.execute(
            "INSERT INTO copies (set_name, origin, provider, state, phase, pid, created_ms,
                                 freeze_deadline_ms, spec_json)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)",
            params![
                copy.set_name,
                copy.origin.as_str(),
                copy.provider,
                CopyState::InProgress.as_str(),
                Phase::Identify.as_str(),
                std::process::id(),
                now_ms(),
                copy.freeze_deadline.as_millis() as i64,
                copy.spec_json,
            ],
        )?;
        let id = tx.last_insert_rowid();
        tx.commit()?;
        Ok(id)
    }

    fn insert_components(&self, id: CopyId, components: &[Component]) -> rusqlite::Result<()> {
        let tx = self.conn.unchecked_transaction()?;
        tx.execute("DELETE FROM components WHERE copy_id = ?1", [id])?;
        for c in components {
            tx.execute(
                "INSERT INTO components (copy_id, writer, name, role, path, required, pinned)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
                params![
                    id,
                    c.writer,
                    c.name,
                    c.role.as_str(),
                    paths::to_sql(&c.path),
                    c.required,
                    c.pinned
                ],
            )?;
        }
        tx.commit()
    }

    fn insert_files(&self, id: CopyId, files: &[FileEntry]) -> rusqlite::Result<()> {
        let tx = self.conn.unchecked_transaction()?;
        tx.execute("DELETE FROM files WHERE copy_id = ?1", [id])?;
        {
            let mut insert = tx.prepare(
                "INSERT INTO files (copy_id, path, size, mode, mtime_ns, blake3)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
            )?;
            for f in files {
                insert.execute(params![
                    id,
                    paths::to_sql(&f.path),
                    f.size as i64,
                    f.mode,
                    f.mtime_ns,
                    f.blake3
                ])?;
            }
        }
        let bytes: u64 = files.iter().map(|f| f.size).sum();
        tx.execute(
            "UPDATE copies SET file_count = ?2, file_bytes = ?3 WHERE id = ?1",
            params![id, files.len() as i64, bytes as i64],
        )?;
        tx.commit()
    }

    fn insert_verification(
        &self,
        id: CopyId,
        verification: &Verification,
        took: Duration,
    ) -> rusqlite::Result<()> {
        let report = &verification.report;
        let tx = self.conn.unchecked_transaction()?;
        let now = now_ms();
        let full_at = leaf_hashes::full_at(&tx, verification.base, now)?;
        tx.execute(
            "INSERT INTO verifications (copy_id, at_ms, ok, took_us, detail, base_copy_id, full_at_ms)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
            params![
                id,
                now,
                report.ok,
                took.as_micros() as i64,
                report.detail,
                verification.base,
                full_at
            ],
        )?;
        leaf_hashes::record(&tx, id, report.ok, &verification.leaves)?;
        let state = if report.ok {
            VerifyState::Passed
        } else {
            VerifyState::Failed
        };
        tx.execute(
            "UPDATE copies SET verify_state = ?2 WHERE id = ?1",
            params![id, state.as_str()],
        )?;
        tx.commit()
    }

    /// Makes `phase` the copy's current phase and appends its row (open when `took_us`
    /// is `None`), in one transaction.
    fn append_phase(
        &self,
        id: CopyId,
        phase: Phase,
        started_ms: i64,
        took_us: Option<i64>,
        error: Option<&str>,
    ) -> rusqlite::Result<()> {
        let tx = self.conn.unchecked_transaction()?;
        tx.execute(
            "UPDATE copies SET phase = ?2 WHERE id = ?1",
            params![id, phase.as_str()],
        )?;
        tx.execute(
            "INSERT INTO phases (copy_id, seq, phase, started_ms, took_us, error)
             VALUES (?1, (SELECT COALESCE(MAX(seq), 0) + 1 FROM phases WHERE copy_id = ?1), ?2, ?3, ?4, ?5)",
            params![id, phase.as_str(), started_ms, took_us, error],
        )?;
        tx.commit()
    }
}
