//! The agent's jobs: what it ran (create, verify, restore, delete, prune), for which set,
//! why (a schedule, a schedule missed while it was down, an API request), and how each
//! ended. A job is `queued` when it falls due or is submitted, `running` once started,
//! then `done`, `failed`, `cancelled` (taken out of the queue before its turn) or
//! `interrupted`: its process died, or stopped renewing its lease (the heartbeat its
//! agent writes every few seconds for its open jobs; a process id can be reused, a
//! lease cannot), found by the next command that takes the queue.

use rusqlite::{params, OptionalExtension};
use serde::{Deserialize, Serialize};

use crate::{now_ms, Catalog, CatalogError};

/// One job as recorded.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq, utoipa::ToSchema)]
pub struct JobRecord {
    pub id: i64,
    /// `create`, `verify`, `restore`, `delete` or `prune`.
    pub kind: String,
    /// The set it is for (`*` for a prune of every set).
    pub set: String,
    /// Why it ran: `schedule`, `missed-schedule`, `after-create`, `api`.
    pub trigger: String,
    /// `queued`, `running`, `done`, `failed`, `cancelled` or `interrupted`.
    pub state: String,
    pub pid: u32,
    pub created_ms: i64,
    pub started_ms: Option<i64>,
    pub finished_ms: Option<i64>,
    /// While it runs: when the agent last said it is still at it (every few seconds).
    pub heartbeat_ms: Option<i64>,
    /// The copy it made or verified.
    pub copy_id: Option<i64>,
    /// What it did, or why it failed.
    pub result: Option<String>,
}

const SELECT: &str = "SELECT id, kind, set_name, trigger, state, pid, created_ms, started_ms, \
                      finished_ms, copy_id, result, heartbeat_ms FROM jobs";

fn record(r: &rusqlite::Row<'_>) -> rusqlite::Result<JobRecord> {
    Ok(JobRecord {
        id: r.get(0)?,
        kind: r.get(1)?,
        set: r.get(2)?,
        trigger: r.get(3)?,
        state: r.get(4)?,
        pid: r.get(5)?,
        created_ms: r.get(6)?,
        started_ms: r.get(7)?,
        finished_ms: r.get(8)?,
        copy_id: r.get(9)?,
        result: r.get(10)?,
        heartbeat_ms: r.get(11)?,
    })
}

impl Catalog {
    /// Records a job that fell due (`queued`), by this process.
    pub fn queue_job(&self, kind: &str, set: &str, trigger: &str) -> Result<i64, CatalogError> {
        self.conn
            .execute(
                "INSERT INTO jobs (kind, set_name, trigger, state, pid, created_ms, heartbeat_ms) \
             VALUES (?1, ?2, ?3, 'queued', ?4, ?5, ?5)",
                params![kind, set, trigger, std::process::id(), now_ms()],
            )
            .map_err(|e| self.sql(e))?;
        Ok(self.conn.last_insert_rowid())
    }

    /// The job starts.
    pub fn start_job(&self, id: i64) -> Result<(), CatalogError> {
        self.conn.execute(
            "UPDATE jobs SET state = 'running', started_ms = ?2, heartbeat_ms = ?2 WHERE id = ?1",
            params![id, now_ms()],
        )
            .map_err(|e| self.sql(e))?;
        Ok(())
    }

    /// This process still holds its open jobs: their leases renewed.
    pub fn heartbeat_jobs(&self) -> Result<(), CatalogError> {
        self.conn
            .execute(
                "UPDATE jobs SET heartbeat_ms = ?2 WHERE pid = ?1 AND state IN ('queued', 'running')",
                params![std::process::id(), now_ms()],
            )
            .map_err(|e| self.sql(e))?;
        Ok(())
    }

    /// A queued job taken out of the queue before its turn; false when it was no longer
    /// queued (it started, or ended).
    pub fn cancel_job(&self, id: i64, why: &str) -> Result<bool, CatalogError> {
        let changed = self
            .conn
            .execute(
                "UPDATE jobs SET state = 'cancelled', finished_ms = ?2, result = ?3 \
             WHERE id = ?1 AND state = 'queued'",
                params![id, now_ms(), why],
            )
            .map_err(|e| self.sql(e))?;
        Ok(changed == 1)
    }

    /// One job.
    pub fn job(&self, id: i64) -> Result<Option<JobRecord>, CatalogError> {
        Ok(self
            .conn
            .query_row(&format!("{SELECT} WHERE id = ?1"), [id], record)
            .optional()?)
    }

    /// The job ended: `done` or `failed`, with the copy it made or verified and a line on
    /// what it did or why it failed.
    pub fn finish_job(
        &self,
        id: i64,
        ok: bool,
        copy_id: Option<i64>,
        result: &str,
    ) -> Result<(), CatalogError> {
        self.conn.execute(
            "UPDATE jobs SET state = ?2, finished_ms = ?3, copy_id = ?4, result = ?5 WHERE id = ?1",
            params![
                id,
                if ok { "done" } else { "failed" },
                now_ms(),
                copy_id,
                result
            ],
        )
            .map_err(|e| self.sql(e))?;
        Ok(())
    }

    /// The newest jobs first, at most `limit`.
    pub fn jobs(&self, limit: usize) -> Result<Vec<JobRecord>, CatalogError> {
        let mut stmt = self
            .conn
            .prepare(&format!("{SELECT} ORDER BY id DESC LIMIT ?1"))?;
        let rows = stmt.query_map([limit as i64], record)?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// The newest job queued with this trigger (`server:ID`: the agent's job that runs
    /// the backup server's job ID).
    pub fn job_with_trigger(&self, trigger: &str) -> Result<Option<JobRecord>, CatalogError> {
        Ok(self
            .conn
            .query_row(
                &format!("{SELECT} WHERE trigger = ?1 ORDER BY id DESC LIMIT 1"),
                [trigger],
                record,
            )
            .optional()?)
    }

    /// The newest job of `kind` for `set` (when did it last fall due).
    pub fn last_job(&self, set: &str, kind: &str) -> Result<Option<JobRecord>, CatalogError> {
        Ok(self
            .conn
            .query_row(
                &format!("{SELECT} WHERE set_name = ?1 AND kind = ?2 ORDER BY id DESC LIMIT 1"),
                params![set, kind],
                record,
            )
            .optional()?)
    }

    /// Marks `interrupted` every job left queued or running by a process that no longer
    /// exists or whose lease ran out (no heartbeat for `lease`), with the reason; returns
    /// them. Jobs of this process are its own to finish.
    pub fn interrupt_dead_jobs(
        &self,
        lease: std::time::Duration,
    ) -> Result<Vec<JobRecord>, CatalogError> {
        let mut stmt = self.conn.prepare(&format!(
            "{SELECT} WHERE state IN ('queued', 'running') ORDER BY id"
        ))?;
        let open: Vec<JobRecord> = stmt.query_map([], record)?.collect::<Result<_, _>>()?;
        let mut interrupted = Vec::new();
        let now = now_ms();
        for mut job in open {
            let renewed = job.heartbeat_ms.unwrap_or(job.created_ms);
            let why = if job.pid == std::process::id() {
                continue;
            } else if !shadowcopy_core::process::exists(job.pid) {
                format!(
                    "interrupted: the process that ran it (pid {}) ended while it was {}",
                    job.pid, job.state
                )
            } else if now - renewed > lease.as_millis() as i64 {
                format!(
                    "interrupted: the process that ran it (pid {}) stopped renewing its lease {} s ago while it was {} \
                     (hung, or the pid now belongs to another process)",
                    job.pid,
                    (now - renewed) / 1000,
                    job.state
                )
            } else {
                continue;
            };
            self.conn.execute(
                "UPDATE jobs SET state = 'interrupted', finished_ms = ?2, result = ?3 WHERE id = ?1",
                params![job.id, now_ms(), why],
            )
            .map_err(|e| self.sql(e))?;
            job.state = "interrupted".into();
            job.result = Some(why);
            interrupted.push(job);
        }
        Ok(interrupted)
    }
}
