//! The routes operators call with an API token (the CLI's `--server`, the coming web
//! console): hosts, each host's copies as its agent last reported them, jobs (queue one
//! for a host, list, show, cancel a queued one), and for admins: enrolment tokens,
//! revocation and the audit log. Restores, deletions and prunes are audited.

use std::sync::Arc;
use std::time::Duration;

use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::Json;
use deadpool_postgres::GenericClient;
use serde::{Deserialize, Serialize};
use shadowcopy_agent::api::{ApiError, JsonBody, Param};
use shadowcopy_agent::job::JobRequest;
use shadowcopy_agent::link::protocol::{HostInfo, ServerJob, SubmitJob};

use crate::admin;
use crate::auth::{OperatorCaller, Role};
use crate::state::AppState;
use crate::{database, queue};

pub async fn hosts(
    State(state): State<Arc<AppState>>,
    caller: OperatorCaller,
) -> Result<Json<Vec<HostInfo>>, ApiError> {
    caller.require(Role::Viewer, "listing hosts")?;
    let db = state.db.get().await.map_err(database)?;
    Ok(Json(admin::hosts(&db, None).await.map_err(database)?))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CopiesQuery {
    #[serde(default)]
    set: Option<String>,
}

pub(crate) async fn known_host(db: &impl GenericClient, host: &str) -> Result<(), ApiError> {
    let row = db
        .query_opt(
            "SELECT enrolled_at IS NOT NULL, revoked_at IS NOT NULL FROM hosts WHERE name = $1",
            &[&host],
        )
        .await
        .map_err(database)?;
    match row {
        None => Err(ApiError::bad_input(
            StatusCode::NOT_FOUND,
            format!("there is no host `{host}`; `hosts` lists them"),
        )),
        Some(r) if r.get::<_, bool>(1) => Err(ApiError::bad_input(
            StatusCode::CONFLICT,
            format!("host `{host}` is revoked"),
        )),
        Some(r) if !r.get::<_, bool>(0) => Err(ApiError::bad_input(
            StatusCode::CONFLICT,
            format!("host `{host}` has not enrolled yet (its agent has not used its token)"),
        )),
        Some(_) => Ok(()),
    }
}

/// A host's copies, as its agent's `list --json` gives them.
pub async fn copies(
    State(state): State<Arc<AppState>>,
    caller: OperatorCaller,
    Path(host): Path<String>,
    Param(Query(query)): Param<Query<CopiesQuery>>,
) -> Result<Json<Vec<serde_json::Value>>, ApiError> {
    caller.require(Role::Viewer, "listing copies")?;
    let db = state.db.get().await.map_err(database)?;
    if db
        .query_opt("SELECT 1 FROM hosts WHERE name = $1", &[&host])
        .await
        .map_err(database)?
        .is_none()
    {
        return Err(ApiError::bad_input(
            StatusCode::NOT_FOUND,
            format!("there is no host `{host}`; `hosts` lists them"),
        ));
    }
    let rows = db
        .query(
            "SELECT record FROM copies WHERE host = $1 AND ($2::text IS NULL OR set_name = $2)
              ORDER BY copy_id",
            &[&host, &query.set],
        )
        .await
        .map_err(database)?;
    Ok(Json(rows.iter().map(|r| r.get(0)).collect()))
}

/// The set of a copy of `host`, refused if the server has no record of it.
pub(crate) async fn copy_set(
    db: &impl GenericClient,
    host: &str,
    copy: i64,
) -> Result<String, ApiError> {
    let row = db
        .query_opt(
            "SELECT set_name FROM copies WHERE host = $1 AND copy_id = $2",
            &[&host, &copy],
        )
        .await
        .map_err(database)?;
    row.map(|r| r.get(0)).ok_or_else(|| {
        ApiError::bad_input(
            StatusCode::NOT_FOUND,
            format!("host `{host}` has no copy {copy} (as of its agent's last report); `list --host {host}` lists them"),
        )
    })
}

/// Queues a job for a host (operators and admins).
pub async fn submit(
    State(state): State<Arc<AppState>>,
    caller: OperatorCaller,
    Path(host): Path<String>,
    JsonBody(submit): JsonBody<SubmitJob>,
) -> Result<(StatusCode, Json<ServerJob>), ApiError> {
    caller.require(Role::Operator, "queueing a job")?;
    let job = queue_job(&state, &host, &submit.request, &caller.actor()).await?;
    Ok((StatusCode::CREATED, Json(job)))
}

/// Checks a job for `host` against what its agent last reported (the host enrolled and
/// not revoked, the copies it names known), then queues it; restores, deletions and
/// prunes are audited with it, in one transaction. What the API and the console share.
pub(crate) async fn queue_job(
    state: &AppState,
    host: &str,
    request: &JobRequest,
    actor: &str,
) -> Result<ServerJob, ApiError> {
    let mut db = state.db.get().await.map_err(database)?;
    known_host(&db, host).await?;
    let set = match request {
        JobRequest::Create { set } => set.clone(),
        JobRequest::Verify { copy: Some(c), .. } => copy_set(&db, host, *c).await?,
        JobRequest::Verify { set: Some(s), .. } => s.clone(),
        JobRequest::Verify { .. } => {
            return Err(ApiError::bad_input(
                StatusCode::BAD_REQUEST,
                "say which copy to verify: `copy` (an id) or `set` (its newest usable copy)",
            ))
        }
        JobRequest::Restore { copy, .. } | JobRequest::Push { copy } => {
            copy_set(&db, host, *copy).await?
        }
        JobRequest::Delete { copies } => {
            if copies.is_empty() {
                return Err(ApiError::bad_input(
                    StatusCode::BAD_REQUEST,
                    "`copies` is empty: give the ids of the copies to delete",
                ));
            }
            for c in copies {
                copy_set(&db, host, *c).await?;
            }
            "*".to_string()
        }
        JobRequest::Prune { set } => set.clone().unwrap_or_else(|| "*".into()),
    };
    let value = serde_json::to_value(request)
        .map_err(|e| ApiError::from(anyhow::anyhow!("the job could not be recorded: {e}")))?;
    // The job and its audit line together, or neither.
    let tx = db.transaction().await.map_err(database)?;
    let job = queue::submit(&tx, host, request.kind(), &set, &value, actor)
        .await
        .map_err(database)?;
    if matches!(
        request,
        JobRequest::Restore { .. } | JobRequest::Delete { .. } | JobRequest::Prune { .. }
    ) {
        admin::audit(
            &tx,
            actor,
            request.kind(),
            Some(host),
            serde_json::json!({ "job": job.id, "request": value }),
        )
        .await
        .map_err(database)?;
    }
    tx.commit().await.map_err(database)?;
    tracing::info!(job = job.id, host = %host, kind = %job.kind, by = %actor, "job queued");
    state.queued_for(host).notify_waiters();
    Ok(job)
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JobsQuery {
    #[serde(default)]
    host: Option<String>,
    #[serde(default)]
    limit: Option<i64>,
}

pub async fn jobs(
    State(state): State<Arc<AppState>>,
    caller: OperatorCaller,
    Param(Query(query)): Param<Query<JobsQuery>>,
) -> Result<Json<Vec<ServerJob>>, ApiError> {
    caller.require(Role::Viewer, "listing jobs")?;
    let db = state.db.get().await.map_err(database)?;
    let limit = query.limit.unwrap_or(50).clamp(1, 10_000);
    Ok(Json(
        queue::list(&db, query.host.as_deref(), limit)
            .await
            .map_err(database)?,
    ))
}

pub async fn job(
    State(state): State<Arc<AppState>>,
    caller: OperatorCaller,
    Param(Path(id)): Param<Path<i64>>,
) -> Result<Json<ServerJob>, ApiError> {
    caller.require(Role::Viewer, "reading a job")?;
    let db = state.db.get().await.map_err(database)?;
    queue::get(&db, id)
        .await
        .map_err(database)?
        .map(Json)
        .ok_or_else(|| ApiError::bad_input(StatusCode::NOT_FOUND, format!("there is no job {id}")))
}

pub async fn cancel(
    State(state): State<Arc<AppState>>,
    caller: OperatorCaller,
    Param(Path(id)): Param<Path<i64>>,
) -> Result<Json<ServerJob>, ApiError> {
    caller.require(Role::Operator, "cancelling a job")?;
    Ok(Json(cancel_job(&state, id, &caller.actor()).await?))
}

/// Cancels a queued job, audited (what the API and the console share).
pub(crate) async fn cancel_job(
    state: &AppState,
    id: i64,
    actor: &str,
) -> Result<ServerJob, ApiError> {
    let mut db = state.db.get().await.map_err(database)?;
    let tx = db.transaction().await.map_err(database)?;
    let why = format!("cancelled before its turn by {actor}");
    let Some(job) = queue::cancel(&tx, id, &why).await.map_err(database)? else {
        return Err(ApiError::bad_input(
            StatusCode::CONFLICT,
            format!("job {id} is not queued (only a queued job can be cancelled)"),
        ));
    };
    admin::audit(
        &tx,
        actor,
        "cancel",
        Some(&job.host),
        serde_json::json!({ "job": id }),
    )
    .await
    .map_err(database)?;
    tx.commit().await.map_err(database)?;
    Ok(job)
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TokenRequest {
    /// How long the token is valid (default 1 hour).
    #[serde(default)]
    ttl_secs: Option<u64>,
}

#[derive(Serialize, Deserialize)]
pub struct TokenAnswer {
    pub host: String,
    pub token: String,
    pub expires_in_secs: u64,
}

pub async fn enroll_token(
    State(state): State<Arc<AppState>>,
    caller: OperatorCaller,
    Path(host): Path<String>,
    JsonBody(request): JsonBody<TokenRequest>,
) -> Result<Json<TokenAnswer>, ApiError> {
    caller.require(Role::Admin, "making an enrolment token")?;
    let ttl = Duration::from_secs(request.ttl_secs.unwrap_or(3600));
    let mut db = state.db.get().await.map_err(database)?;
    let token = admin::enroll_token(&mut db, &state.ca, &host, ttl, &caller.actor())
        .await
        .map_err(crate::api_error)?;
    Ok(Json(TokenAnswer {
        host,
        token,
        expires_in_secs: ttl.as_secs(),
    }))
}

pub async fn revoke(
    State(state): State<Arc<AppState>>,
    caller: OperatorCaller,
    Path(host): Path<String>,
) -> Result<Json<serde_json::Value>, ApiError> {
    caller.require(Role::Admin, "revoking a host")?;
    let mut db = state.db.get().await.map_err(database)?;
    admin::revoke(&mut db, &host, &caller.actor())
        .await
        .map_err(crate::api_error)?;
    Ok(Json(serde_json::json!({ "host": host, "revoked": true })))
}

/// One line of the audit log.
#[derive(Serialize, Deserialize)]
pub struct AuditEntry {
    pub id: i64,
    pub at_ms: i64,
    pub actor: String,
    pub action: String,
    pub host: Option<String>,
    pub detail: serde_json::Value,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuditQuery {
    #[serde(default)]
    limit: Option<i64>,
}

pub async fn audit(
    State(state): State<Arc<AppState>>,
    caller: OperatorCaller,
    Param(Query(query)): Param<Query<AuditQuery>>,
) -> Result<Json<Vec<AuditEntry>>, ApiError> {
    caller.require(Role::Admin, "reading the audit log")?;
    let db = state.db.get().await.map_err(database)?;
    let rows = db
        .query(
            "SELECT id, ms(at), actor, action, host, detail FROM audit ORDER BY id DESC LIMIT $1",
            &[&query.limit.unwrap_or(100).clamp(1, 10_000)],
        )
        .await
        .map_err(database)?;
    Ok(Json(
        rows.iter()
            .map(|r| AuditEntry {
                id: r.get(0),
                at_ms: r.get(1),
                actor: r.get(2),
                action: r.get(3),
                host: r.get(4),
                detail: r.get(5),
            })
            .collect(),
    ))
}
