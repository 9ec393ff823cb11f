//! The job queue in the central catalog. Operators queue jobs for a host; its agent
//! claims the oldest (`FOR UPDATE SKIP LOCKED`, one job at a time per host: a host's
//! later jobs wait, visibly, while one is claimed or running), renews its lease while it
//! runs, and reports its end. A job whose lease runs out is marked `lost` by the
//! reaper and never handed out again (a copy made twice is worse than one asked for
//! again); its agent, when it returns, still reports how it ended, and that is kept.

use deadpool_postgres::GenericClient;
use shadowcopy_agent::link::protocol::{JobFinish, JobHeartbeat, ServerJob};
use tokio_postgres::Row;

const COLUMNS: &str = "id, host, kind, set_name, request, state, created_by, ms(created_at), \
                       ms(claimed_at), ms(finished_at), ms(lease_until), agent_job, copy_id, result, \
                       progress";

fn job(r: &Row) -> ServerJob {
    ServerJob {
        id: r.get(0),
        host: r.get(1),
        kind: r.get(2),
        set: r.get(3),
        request: r.get(4),
        state: r.get(5),
        created_by: r.get(6),
        created_ms: r.get(7),
        claimed_ms: r.get(8),
        finished_ms: r.get(9),
        lease_until_ms: r.get(10),
        agent_job: r.get(11),
        copy_id: r.get(12),
        result: r.get(13),
        progress: r
            .get::<_, Option<serde_json::Value>>(14)
            .and_then(|v| serde_json::from_value(v).ok()),
    }
}

/// Queues a job for `host`.
pub async fn submit(
    db: &impl GenericClient,
    host: &str,
    kind: &str,
    set: &str,
    request: &serde_json::Value,
    created_by: &str,
) -> Result<ServerJob, tokio_postgres::Error> {
    let row = db
        .query_one(
            &format!(
                "INSERT INTO jobs (host, kind, set_name, request, created_by)
                 VALUES ($1, $2, $3, $4, $5) RETURNING {COLUMNS}"
            ),
            &[&host, &kind, &set, request, &created_by],
        )
        .await?;
    Ok(job(&row))
}

/// Whether `host` has a queued job (one indexed read: what a waiting poll asks before
/// it takes the claim's lock).
pub async fn has_queued(
    db: &impl GenericClient,
    host: &str,
) -> Result<bool, tokio_postgres::Error> {
    Ok(db
        .query_opt(
            "SELECT 1 FROM jobs WHERE host = $1 AND state = 'queued' LIMIT 1",
            &[&host],
        )
        .await?
        .is_some())
}

/// Hands `host`'s oldest queued job to its agent, unless one is claimed or running.
pub async fn claim(
    db: &mut deadpool_postgres::Object,
    host: &str,
    lease_secs: f64,
) -> Result<Option<ServerJob>, tokio_postgres::Error> {
    let tx = db.transaction().await?;
    // One claim at a time per host, so that two polls cannot take two jobs.
    tx.execute(
        "SELECT pg_advisory_xact_lock(hashtextextended($1, 17))",
        &[&host],
    )
    .await?;
    let row = tx
        .query_opt(
            &format!(
                "UPDATE jobs SET state = 'claimed', claimed_at = now(),
                        lease_until = now() + make_interval(secs => $2)
                  WHERE id = (
                        SELECT j.id FROM jobs j JOIN hosts h ON h.name = j.host
                         WHERE j.host = $1 AND j.state = 'queued' AND h.revoked_at IS NULL
                           AND NOT EXISTS (SELECT 1 FROM jobs r WHERE r.host = $1
                                            AND r.state IN ('claimed', 'running'))
                         ORDER BY j.id LIMIT 1
                           FOR UPDATE OF j SKIP LOCKED)
              RETURNING {COLUMNS}"
            ),
            &[&host, &lease_secs],
        )
        .await?;
    tx.commit().await?;
    Ok(row.as_ref().map(job))
}

/// Renews the lease of `host`'s job `id` (a lost job whose agent is back runs again)
/// and records how far it has got.
pub async fn heartbeat(
    db: &impl GenericClient,
    host: &str,
    id: i64,
    beat: &JobHeartbeat,
    lease_secs: f64,
) -> Result<Option<ServerJob>, tokio_postgres::Error> {
    let progress = beat
        .progress
        .as_ref()
        .and_then(|p| serde_json::to_value(p).ok());
    let row = db
        .query_opt(
            &format!(
                "UPDATE jobs SET state = 'running', lease_until = now() + make_interval(secs => $4),
                        agent_job = COALESCE($3, agent_job), progress = COALESCE($5, progress)
                  WHERE id = $1 AND host = $2 AND state IN ('claimed', 'running', 'lost')
              RETURNING {COLUMNS}"
            ),
            &[&id, &host, &beat.agent_job, &lease_secs, &progress],
        )
        .await?;
    Ok(row.as_ref().map(job))
}

/// Records how `host`'s job `id` ended. A second report of an ended job changes nothing
/// and answers the job as recorded; `None`: `host` has no such job.
pub async fn finish(
    db: &impl GenericClient,
    host: &str,
    id: i64,
    end: &JobFinish,
) -> Result<Option<ServerJob>, tokio_postgres::Error> {
    let row = db
        .query_opt(
            &format!(
                "UPDATE jobs SET state = CASE WHEN $3 THEN 'done' ELSE 'failed' END,
                        finished_at = now(), lease_until = NULL,
                        result = $4 || CASE WHEN lost_at IS NOT NULL
                                 THEN ' (reported after its lease ran out)' ELSE '' END,
                        copy_id = $5, agent_job = COALESCE($6, agent_job),
                        progress = COALESCE($7, progress)
                  WHERE id = $1 AND host = $2 AND state IN ('claimed', 'running', 'lost')
              RETURNING {COLUMNS}"
            ),
            &[
                &id,
                &host,
                &end.ok,
                &end.result,
                &end.copy_id,
                &end.agent_job,
                &end.progress
                    .as_ref()
                    .and_then(|p| serde_json::to_value(p).ok()),
            ],
        )
        .await?;
    if let Some(row) = row {
        return Ok(Some(job(&row)));
    }
    let row = db
        .query_opt(
            &format!("SELECT {COLUMNS} FROM jobs WHERE id = $1 AND host = $2"),
            &[&id, &host],
        )
        .await?;
    Ok(row.as_ref().map(job))
}

/// `host`'s jobs handed out and not ended: what a returning agent must see through.
pub async fn open_for(
    db: &impl GenericClient,
    host: &str,
) -> Result<Vec<ServerJob>, tokio_postgres::Error> {
    let rows = db
        .query(
            &format!(
                "SELECT {COLUMNS} FROM jobs WHERE host = $1 AND state IN ('claimed', 'running', 'lost')
                  ORDER BY id"
            ),
            &[&host],
        )
        .await?;
    Ok(rows.iter().map(job).collect())
}

/// The newest jobs first, of one host or all.
pub async fn list(
    db: &impl GenericClient,
    host: Option<&str>,
    limit: i64,
) -> Result<Vec<ServerJob>, tokio_postgres::Error> {
    let rows = db
        .query(
            &format!(
                "SELECT {COLUMNS} FROM jobs WHERE ($1::text IS NULL OR host = $1)
                  ORDER BY id DESC LIMIT $2"
            ),
            &[&host, &limit],
        )
        .await?;
    Ok(rows.iter().map(job).collect())
}

pub async fn get(
    db: &impl GenericClient,
    id: i64,
) -> Result<Option<ServerJob>, tokio_postgres::Error> {
    let row = db
        .query_opt(&format!("SELECT {COLUMNS} FROM jobs WHERE id = $1"), &[&id])
        .await?;
    Ok(row.as_ref().map(job))
}

/// Cancels a queued job (not one an agent has); `None` if it is not queued.
pub async fn cancel(
    db: &impl GenericClient,
    id: i64,
    why: &str,
) -> Result<Option<ServerJob>, tokio_postgres::Error> {
    let row = db
        .query_opt(
            &format!(
                "UPDATE jobs SET state = 'cancelled', finished_at = now(), result = $2
                  WHERE id = $1 AND state = 'queued' RETURNING {COLUMNS}"
            ),
            &[&id, &why],
        )
        .await?;
    Ok(row.as_ref().map(job))
}

/// Marks `lost` the jobs whose lease ran out; returns them.
pub async fn reap(db: &impl GenericClient) -> Result<Vec<ServerJob>, tokio_postgres::Error> {
    let rows = db
        .query(
            &format!(
                "UPDATE jobs SET state = 'lost', lost_at = now(),
                        result = 'its agent stopped renewing the lease at '
                                 || to_char(lease_until AT TIME ZONE 'UTC', 'YYYY-MM-DD HH24:MI:SS') || ' UTC'
                  WHERE state IN ('claimed', 'running') AND lease_until < now()
              RETURNING {COLUMNS}"
            ),
            &[],
        )
        .await?;
    Ok(rows.iter().map(job).collect())
}
