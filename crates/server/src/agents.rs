//! The routes agents call: `/v1/enroll` (with a one-time token, no certificate yet),
//! and under `/v1/agent/` with the certificate the server signed: `sync` (the outbox's
//! copy changes), `jobs/next` (a long poll for the host's next job), `jobs/open` (what
//! a returning agent must see through), `jobs/{id}/heartbeat` (with the progress) and
//! `jobs/{id}/finish`, `policies` (its schedules and retention), `renew` (a new
//! certificate), `report` (its sets now, for the console). Each acts on the caller's
//! own host only: a job of another host is "not found".

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::{Extension, State};
use axum::http::StatusCode;
use axum::Json;
use serde::Deserialize;
use shadowcopy_agent::api::{ApiError, JsonBody, Param};
use shadowcopy_agent::link::protocol::{
    EnrollRequest, EnrollResponse, HostReport, JobFinish, JobHeartbeat, Policies, RenewRequest,
    ServerJob, SyncRequest, SyncResponse, LONG_POLL_MAX_SECS,
};

use crate::admin::{self, EnrollRefused};
use crate::auth::AgentCaller;
use crate::state::AppState;
use crate::{database, queue};

/// How often a waiting poll looks at the queue without being woken (jobs queued
/// through another server process).
const RECHECK_EVERY: Duration = Duration::from_secs(2);

/// The most changes one sync may carry.
pub const SYNC_MAX_CHANGES: usize = 1000;

/// Enrolments handled at once; more wait a little, then are refused (503).
static ENROLMENTS: tokio::sync::Semaphore = tokio::sync::Semaphore::const_new(4);

/// The most sets one report may carry.
pub const REPORT_MAX_SETS: usize = 1000;

pub async fn enroll(
    State(state): State<Arc<AppState>>,
    Extension(peer): Extension<SocketAddr>,
    JsonBody(request): JsonBody<EnrollRequest>,
) -> Result<Json<EnrollResponse>, ApiError> {
    if state.enrol_blocked(peer.ip()) {
        return Err(ApiError::new(
            StatusCode::TOO_MANY_REQUESTS,
            1,
            format!(
                "too many refused enrolments from {}; wait a minute, and ask for a new token: shadowcopy server enroll HOST",
                peer.ip()
            ),
        ));
    }
    // At most a few at once: each signs a certificate and holds a connection.
    let Ok(Ok(_slot)) = tokio::time::timeout(Duration::from_secs(5), ENROLMENTS.acquire()).await
    else {
        return Err(ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            1,
            "too many enrolments at once; try again in a moment".to_string(),
        ));
    };
    let mut db = state.db.get().await.map_err(database)?;
    admin::enroll(
        &mut db,
        &state.ca,
        state.agent_cert_lifetime,
        &request,
        &peer.to_string(),
    )
    .await
    .map(Json)
    .map_err(|e| {
        if e.downcast_ref::<EnrollRefused>().is_some() {
            state.enrol_refused(peer.ip());
            ApiError::new(StatusCode::FORBIDDEN, 1, e.to_string())
        } else {
            crate::api_error(e)
        }
    })
}

pub async fn sync(
    State(state): State<Arc<AppState>>,
    caller: AgentCaller,
    JsonBody(request): JsonBody<SyncRequest>,
) -> Result<Json<SyncResponse>, ApiError> {
    if request.changes.len() > SYNC_MAX_CHANGES {
        return Err(ApiError::bad_input(
            StatusCode::PAYLOAD_TOO_LARGE,
            format!("at most {SYNC_MAX_CHANGES} changes per sync"),
        ));
    }
    for c in &request.changes {
        if c.copy.as_ref().is_some_and(|copy| copy.id != c.copy_id) {
            return Err(ApiError::bad_input(
                StatusCode::BAD_REQUEST,
                format!(
                    "change {} names copy {} but carries another copy",
                    c.seq, c.copy_id
                ),
            ));
        }
    }
    let mut db = state.db.get().await.map_err(database)?;
    let tx = db.transaction().await.map_err(database)?;
    if request.reset {
        tracing::warn!(host = %caller.host, "the agent sends every copy again (its catalog was restored or made anew)");
        tx.execute("DELETE FROM copies WHERE host = $1", &[&caller.host])
            .await
            .map_err(database)?;
        tx.execute(
            "UPDATE hosts SET applied_seq = 0 WHERE name = $1",
            &[&caller.host],
        )
        .await
        .map_err(database)?;
    }
    let applied: i64 = tx
        .query_one(
            "SELECT applied_seq FROM hosts WHERE name = $1 FOR UPDATE",
            &[&caller.host],
        )
        .await
        .map_err(database)?
        .get(0);
    let mut newest = applied;
    for change in request.changes.iter().filter(|c| c.seq > applied) {
        match &change.copy {
            Some(copy) => {
                let record = json_value(copy)?;
                let facts = change.facts.as_ref().map(json_value).transpose()?;
                tx.execute(
                    "INSERT INTO copies (host, copy_id, set_name, state, verify_state, created_ms, record, seq, facts)
                     VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)
                     ON CONFLICT (host, copy_id) DO UPDATE SET set_name = $3, state = $4,
                         verify_state = $5, created_ms = $6, record = $7, seq = $8, facts = $9,
                         updated_at = now()",
                    &[
                        &caller.host,
                        &change.copy_id,
                        &copy.set,
                        &copy.state.as_str(),
                        &copy.verify_state.as_str(),
                        &copy.created_ms,
                        &record,
                        &change.seq,
                        &facts,
                    ],
                )
                .await
                .map_err(database)?;
            }
            None => {
                tx.execute(
                    "DELETE FROM copies WHERE host = $1 AND copy_id = $2",
                    &[&caller.host, &change.copy_id],
                )
                .await
                .map_err(database)?;
            }
        }
        newest = newest.max(change.seq);
    }
    let policy_version: i64 = tx
        .query_one(
            "UPDATE hosts SET applied_seq = $2, agent_version = $3, sets = $4 WHERE name = $1
             RETURNING policy_version",
            &[&caller.host, &newest, &request.version, &request.sets],
        )
        .await
        .map_err(database)?
        .get(0);
    tx.commit().await.map_err(database)?;
    Ok(Json(SyncResponse {
        applied_seq: newest,
        policy_version,
    }))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Wait {
    /// Seconds to wait for a job (at most 30).
    #[serde(default)]
    wait: Option<u64>,
}

/// The host's next job, waiting up to `wait` seconds for one; `null` if none came.
pub async fn next(
    State(state): State<Arc<AppState>>,
    caller: AgentCaller,
    Param(axum::extract::Query(wait)): Param<axum::extract::Query<Wait>>,
) -> Result<Json<Option<ServerJob>>, ApiError> {
    let wait = Duration::from_secs(wait.wait.unwrap_or(0).min(LONG_POLL_MAX_SECS));
    let deadline = tokio::time::Instant::now() + wait;
    let wake = state.queued_for(&caller.host);
    loop {
        // Registered before looking, so that a job queued meanwhile wakes this poll.
        let queued = wake.notified();
        tokio::pin!(queued);
        queued.as_mut().enable();
        let claimed = {
            let mut db = state.db.get().await.map_err(database)?;
            if queue::has_queued(&db, &caller.host)
                .await
                .map_err(database)?
            {
                queue::claim(&mut db, &caller.host, state.lease.as_secs_f64())
                    .await
                    .map_err(database)?
            } else {
                None
            }
        };
        if let Some(job) = claimed {
            tracing::info!(job = job.id, host = %caller.host, kind = %job.kind, "job claimed");
            return Ok(Json(Some(job)));
        }
        let now = tokio::time::Instant::now();
        if now >= deadline {
            return Ok(Json(None));
        }
        // Also look again now and then: another server may have queued it.
        let _ = tokio::time::timeout((deadline - now).min(RECHECK_EVERY), queued).await;
    }
}

pub async fn open(
    State(state): State<Arc<AppState>>,
    caller: AgentCaller,
) -> Result<Json<Vec<ServerJob>>, ApiError> {
    let db = state.db.get().await.map_err(database)?;
    Ok(Json(
        queue::open_for(&db, &caller.host).await.map_err(database)?,
    ))
}

fn not_yours(caller: &AgentCaller, id: i64) -> ApiError {
    tracing::warn!(host = %caller.host, job = id, "an agent named a job that is not its host's");
    ApiError::bad_input(
        StatusCode::NOT_FOUND,
        format!("host `{}` has no open job {id}", caller.host),
    )
}

pub async fn heartbeat(
    State(state): State<Arc<AppState>>,
    caller: AgentCaller,
    Param(axum::extract::Path(id)): Param<axum::extract::Path<i64>>,
    JsonBody(beat): JsonBody<JobHeartbeat>,
) -> Result<Json<ServerJob>, ApiError> {
    let db = state.db.get().await.map_err(database)?;
    queue::heartbeat(&db, &caller.host, id, &beat, state.lease.as_secs_f64())
        .await
        .map_err(database)?
        .map(Json)
        .ok_or_else(|| not_yours(&caller, id))
}

pub async fn finish(
    State(state): State<Arc<AppState>>,
    caller: AgentCaller,
    Param(axum::extract::Path(id)): Param<axum::extract::Path<i64>>,
    JsonBody(end): JsonBody<JobFinish>,
) -> Result<Json<ServerJob>, ApiError> {
    let db = state.db.get().await.map_err(database)?;
    let job = queue::finish(&db, &caller.host, id, &end)
        .await
        .map_err(database)?
        .ok_or_else(|| not_yours(&caller, id))?;
    tracing::info!(job = id, host = %caller.host, state = %job.state, "job ended");
    Ok(Json(job))
}

/// The caller's host's schedules and retention.
pub async fn policies(
    State(state): State<Arc<AppState>>,
    caller: AgentCaller,
) -> Result<Json<Policies>, ApiError> {
    let db = state.db.get().await.map_err(database)?;
    Ok(Json(
        crate::policies::for_host(&db, &caller.host)
            .await
            .map_err(database)?,
    ))
}

/// Takes NUL characters out of the strings of `value`: PostgreSQL's `jsonb` refuses them
/// (an error text from a tool could hold one), and a copy must not fail the whole sync.
/// `value` as JSON PostgreSQL takes (no NUL in its text).
fn json_value(value: &impl serde::Serialize) -> Result<serde_json::Value, ApiError> {
    let mut json = serde_json::to_value(value)
        .map_err(|e| ApiError::from(anyhow::anyhow!("a copy could not be recorded: {e}")))?;
    without_nul(&mut json);
    Ok(json)
}

/// The caller's sets now, kept whole in place of the last report.
pub async fn report(
    State(state): State<Arc<AppState>>,
    caller: AgentCaller,
    JsonBody(report): JsonBody<HostReport>,
) -> Result<StatusCode, ApiError> {
    if report.sets.len() > REPORT_MAX_SETS {
        return Err(ApiError::bad_input(
            StatusCode::PAYLOAD_TOO_LARGE,
            format!("at most {REPORT_MAX_SETS} sets per report"),
        ));
    }
    let json = json_value(&report)?;
    let db = state.db.get().await.map_err(database)?;
    db.execute(
        "UPDATE hosts SET report = $2, report_ms = $3 WHERE name = $1",
        &[&caller.host, &json, &report.built_ms],
    )
    .await
    .map_err(database)?;
    Ok(StatusCode::NO_CONTENT)
}

fn without_nul(value: &mut serde_json::Value) {
    match value {
        serde_json::Value::String(s) if s.contains('\0') => *s = s.replace('\0', ""),
        serde_json::Value::Array(items) => items.iter_mut().for_each(without_nul),
        serde_json::Value::Object(map) => map.values_mut().for_each(without_nul),
        _ => {}
    }
}

/// A new certificate for the caller's host (its current one still valid).
pub async fn renew(
    State(state): State<Arc<AppState>>,
    caller: AgentCaller,
    JsonBody(request): JsonBody<RenewRequest>,
) -> Result<Json<EnrollResponse>, ApiError> {
    let mut db = state.db.get().await.map_err(database)?;
    admin::renew(
        &mut db,
        &state.ca,
        state.agent_cert_lifetime,
        &caller.host,
        &caller.fingerprint,
        &request.csr_pem,
    )
    .await
    .map(Json)
    .map_err(crate::api_error)
}
