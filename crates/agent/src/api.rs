//! The agent's HTTP/JSON API, versioned under `/v1`: status, sets, copies, jobs (submit
//! create, verify, restore, delete and prune; list; show; cancel a queued job), events as
//! Server-Sent Events, Prometheus metrics at `/metrics`, and its own OpenAPI document
//! (`/v1/openapi.json`, kept in `docs/openapi.json` and checked for drift by a test).
//! Every error is JSON with the CLI's exit code for the same failure.

use std::convert::Infallible;
use std::sync::Arc;

use axum::extract::{DefaultBodyLimit, FromRequest, FromRequestParts, Request, State};
use axum::http::request::Parts;
use axum::http::{header, StatusCode};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use shadowcopy_catalog::{CatalogError, CopyDetail, CopySummary, JobRecord};
use tokio::sync::broadcast::error::RecvError;
use tokio::sync::oneshot;
use utoipa::OpenApi;

use crate::events::AgentEvent;
use crate::job::JobRequest;
use crate::scheduler::{Stopping, Wake};
use crate::state::{Command, Shared, Status};

/// Request bodies over this are refused (413).
pub const BODY_LIMIT: usize = 64 * 1024;

/// The API's routes over the agent's shared state.
pub fn router(shared: Arc<Shared>) -> Router {
    Router::new()
        .route("/v1/status", get(status))
        .route("/v1/sets", get(sets))
        .route("/v1/copies", get(copies))
        .route("/v1/copies/{id}", get(copy))
        .route("/v1/jobs", get(jobs).post(submit))
        .route("/v1/jobs/{id}", get(job).delete(cancel))
        .route("/v1/events", get(events))
        .route("/v1/openapi.json", get(openapi))
        .route("/metrics", get(metrics))
        .fallback(not_found)
        .layer(DefaultBodyLimit::max(BODY_LIMIT))
        .with_state(shared)
}

/// The OpenAPI document of this API.
#[derive(OpenApi)]
#[openapi(
    info(
        title = "shadowcopy agent",
        version = "1",
        description = "The agent's API on its unix socket: the host's sets, copies and jobs, \
                       its events and metrics. Errors are `{\"error\": {\"code\", \"message\"}}` \
                       with the exit code the CLI gives for the same failure."
    ),
    paths(status, sets, copies, copy, jobs, job, submit, cancel, events, metrics),
    components(schemas(AgentEvent))
)]
pub struct ApiDoc;

/// The OpenAPI document as `docs/openapi.json` keeps it.
pub fn openapi_json() -> String {
    ApiDoc::openapi()
        .to_pretty_json()
        .expect("the document serializes")
        + "\n"
}

/// An error as the API answers it.
#[derive(Debug)]
pub struct ApiError {
    status: StatusCode,
    code: i32,
    message: String,
}

/// The body of every error.
#[derive(Serialize, Deserialize, utoipa::ToSchema)]
pub struct ErrorBody {
    pub error: ErrorDetail,
}

#[derive(Serialize, Deserialize, utoipa::ToSchema)]
pub struct ErrorDetail {
    /// The CLI's exit code for the same failure: 1 failed, 2 bad input (nothing
    /// written), 3 busy, 4 a copy failed verification, 5 the data is in use.
    pub code: i32,
    pub message: String,
}

impl ApiError {
    /// An error with its HTTP status and the CLI's exit code for it.
    pub fn new(status: StatusCode, code: i32, message: impl Into<String>) -> ApiError {
        ApiError {
            status,
            code,
            message: message.into(),
        }
    }

    pub fn status(&self) -> StatusCode {
        self.status
    }

    pub fn message(&self) -> &str {
        &self.message
    }

    pub fn bad_input(status: StatusCode, message: impl Into<String>) -> ApiError {
        ApiError {
            status,
            code: 2,
            message: message.into(),
        }
    }
}

impl From<anyhow::Error> for ApiError {
    fn from(e: anyhow::Error) -> ApiError {
        let code = shadowcopy_engine::error::exit_code(&e);
        let not_found = e.chain().any(|c| {
            matches!(
                c.downcast_ref::<CatalogError>(),
                Some(CatalogError::NoSuchCopy(_))
            )
        });
        let status = if e.chain().any(|c| c.is::<Stopping>()) {
            StatusCode::SERVICE_UNAVAILABLE
        } else if not_found {
            StatusCode::NOT_FOUND
        } else {
            match code {
                2 => StatusCode::BAD_REQUEST,
                3..=5 => StatusCode::CONFLICT,
                _ => StatusCode::INTERNAL_SERVER_ERROR,
            }
        };
        ApiError {
            status,
            code,
            message: format!("{e:#}"),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (
            self.status,
            Json(ErrorBody {
                error: ErrorDetail {
                    code: self.code,
                    message: self.message,
                },
            }),
        )
            .into_response()
    }
}

type ApiResult<T> = Result<Json<T>, ApiError>;

/// A JSON request body; a malformed one, or one over [`BODY_LIMIT`], is a JSON error.
pub struct JsonBody<T>(pub T);

impl<T: DeserializeOwned, S: Send + Sync> FromRequest<S> for JsonBody<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, ApiError> {
        let bytes = axum::body::Bytes::from_request(req, state)
            .await
            .map_err(|e| {
                if e.status() == StatusCode::PAYLOAD_TOO_LARGE {
                    ApiError::bad_input(
                        e.status(),
                        format!(
                            "the request body is over the {} KiB limit",
                            BODY_LIMIT / 1024
                        ),
                    )
                } else {
                    ApiError::bad_input(
                        e.status(),
                        format!("the request body could not be read: {}", e.body_text()),
                    )
                }
            })?;
        serde_json::from_slice(&bytes).map(JsonBody).map_err(|e| {
            ApiError::bad_input(
                StatusCode::BAD_REQUEST,
                format!("the request body is not a valid request: {e}; see /v1/openapi.json"),
            )
        })
    }
}

/// A path or query parameter; a bad one is a JSON error.
pub struct Param<E>(pub E);

impl<S: Send + Sync> FromRequestParts<S> for Param<axum::extract::Path<i64>> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        axum::extract::Path::<i64>::from_request_parts(parts, state)
            .await
            .map(Param)
            .map_err(|e| {
                ApiError::bad_input(
                    StatusCode::BAD_REQUEST,
                    format!("bad id in the path: {}", e.body_text()),
                )
            })
    }
}

impl<T: DeserializeOwned, S: Send + Sync> FromRequestParts<S> for Param<axum::extract::Query<T>> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        axum::extract::Query::<T>::from_request_parts(parts, state)
            .await
            .map(Param)
            .map_err(|e| {
                ApiError::bad_input(
                    StatusCode::BAD_REQUEST,
                    format!("bad query: {}", e.body_text()),
                )
            })
    }
}

type PathId = Param<axum::extract::Path<i64>>;

/// Runs catalog reads off the async thread.
async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> anyhow::Result<T> + Send + 'static,
) -> Result<T, ApiError> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| ApiError::from(anyhow::anyhow!("the request's task failed: {e}")))?
        .map_err(ApiError::from)
}

/// The agent: what runs, what waits, when each schedule next falls due.
#[utoipa::path(get, path = "/v1/status", responses((status = 200, body = Status)))]
async fn status(State(shared): State<Arc<Shared>>) -> Json<Status> {
    Json(shared.status())
}

/// One configured set.
#[derive(Serialize, Deserialize, utoipa::ToSchema)]
pub struct SetInfo {
    pub name: String,
    pub schedule: Option<String>,
    pub verify_schedule: Option<String>,
    /// A retention policy applies to its copies (`delete --policy` shows its decisions).
    pub retention: bool,
    /// Its copies in the catalog, by any state.
    pub copies: usize,
    pub newest_usable: Option<i64>,
    pub newest_usable_ms: Option<i64>,
}

/// The sets the agent's config names.
#[utoipa::path(get, path = "/v1/sets", responses((status = 200, body = Vec<SetInfo>)))]
async fn sets(State(shared): State<Arc<Shared>>) -> ApiResult<Vec<SetInfo>> {
    let engine = shared.engine();
    let sets = blocking(move || {
        let totals = engine.set_totals()?;
        Ok(engine
            .config
            .sets
            .iter()
            .map(|(name, config)| {
                let totals = totals.get(name).cloned().unwrap_or_default();
                let newest = totals.newest_usable.as_ref();
                let (policy, pre) = engine.config.retention(name);
                SetInfo {
                    name: name.clone(),
                    schedule: config.schedule.as_ref().map(|s| s.get_ref().clone()),
                    verify_schedule: config.verify_schedule.as_ref().map(|s| s.get_ref().clone()),
                    retention: policy.is_some() || pre.is_some(),
                    copies: totals.copies as usize,
                    newest_usable: newest.map(|c| c.id),
                    newest_usable_ms: newest.map(|c| c.created_ms),
                }
            })
            .collect())
    })
    .await?;
    Ok(Json(sets))
}

#[derive(Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
struct CopiesQuery {
    /// Only this set's copies.
    set: Option<String>,
    /// Only copies with a greater id: for the next page, the last id of the page before.
    after: Option<i64>,
    /// At most this many copies (default: all).
    limit: Option<usize>,
}

/// The copies in the catalog, oldest first (as `shadowcopy list --json`); in pages with
/// `limit` and `after` (an empty page is the end).
#[utoipa::path(get, path = "/v1/copies", params(CopiesQuery), responses((status = 200, body = Vec<CopySummary>)))]
async fn copies(
    State(shared): State<Arc<Shared>>,
    Param(axum::extract::Query(q)): Param<axum::extract::Query<CopiesQuery>>,
) -> Result<Response, ApiError> {
    let engine = shared.engine();
    let (after, limit) = (q.after.unwrap_or(0), q.limit.unwrap_or(usize::MAX));
    // Serialised beside the catalog read, into a buffer of about the right size: a
    // listing of 10,000 copies is 3.5 MiB, which a growing buffer copies over and over.
    let body = blocking(move || {
        let copies = engine.list_page(q.set.as_deref(), after, limit)?;
        let mut body = Vec::with_capacity(2 + copies.len() * BYTES_PER_COPY);
        serde_json::to_writer(&mut body, &copies)?;
        Ok(body)
    })
    .await?;
    Ok(([(header::CONTENT_TYPE, "application/json")], body).into_response())
}

/// About what one copy of `/v1/copies` takes in JSON (360 to 400 bytes, with paths).
const BYTES_PER_COPY: usize = 400;

/// Everything the catalog knows of one copy (as `shadowcopy show --json`).
#[utoipa::path(
    get, path = "/v1/copies/{id}", params(("id" = i64, Path, description = "The copy's id")),
    responses((status = 200, body = CopyDetail), (status = 404, body = ErrorBody))
)]
async fn copy(
    State(shared): State<Arc<Shared>>,
    Param(axum::extract::Path(id)): PathId,
) -> ApiResult<CopyDetail> {
    let engine = shared.engine();
    Ok(Json(blocking(move || engine.show(id)).await?))
}

#[derive(Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
struct JobsQuery {
    /// How many of the newest jobs (default 50, at most 10000).
    limit: Option<usize>,
}

/// The newest jobs first (as `shadowcopy jobs --json`).
#[utoipa::path(get, path = "/v1/jobs", params(JobsQuery), responses((status = 200, body = Vec<JobRecord>)))]
async fn jobs(
    State(shared): State<Arc<Shared>>,
    Param(axum::extract::Query(q)): Param<axum::extract::Query<JobsQuery>>,
) -> ApiResult<Vec<JobRecord>> {
    let limit = q.limit.unwrap_or(50).min(10_000);
    let engine = shared.engine();
    Ok(Json(blocking(move || engine.jobs(limit)).await?))
}

/// One job.
#[utoipa::path(
    get, path = "/v1/jobs/{id}", params(("id" = i64, Path, description = "The job's id")),
    responses((status = 200, body = JobRecord), (status = 404, body = ErrorBody))
)]
async fn job(
    State(shared): State<Arc<Shared>>,
    Param(axum::extract::Path(id)): PathId,
) -> Result<Json<JobRecord>, ApiError> {
    let engine = shared.engine();
    blocking(move || engine.job(id))
        .await?
        .map(Json)
        .ok_or_else(|| ApiError::bad_input(StatusCode::NOT_FOUND, format!("there is no job {id}")))
}

/// Asks the scheduler and waits for its answer.
async fn ask(
    shared: &Shared,
    command: impl FnOnce(oneshot::Sender<anyhow::Result<JobRecord>>) -> Command,
) -> Result<JobRecord, ApiError> {
    let (reply, answer) = oneshot::channel();
    shared
        .commands
        .send(Wake::Command(command(reply)))
        .map_err(|_| ApiError::from(anyhow::Error::new(Stopping)))?;
    answer
        .await
        .map_err(|_| ApiError::from(anyhow::Error::new(Stopping)))?
        .map_err(ApiError::from)
}

/// Queues a job. Checked first: an unknown set or copy, a copy that is not usable, or a
/// restore of a copy that failed verification without `force` is refused (nothing queued).
#[utoipa::path(
    post, path = "/v1/jobs", request_body = JobRequest,
    responses(
        (status = 202, description = "Queued", body = JobRecord),
        (status = 400, description = "Bad input: nothing queued", body = ErrorBody),
        (status = 404, description = "No such copy", body = ErrorBody),
        (status = 413, description = "Body over 64 KiB", body = ErrorBody),
        (status = 503, description = "The agent is stopping", body = ErrorBody)
    )
)]
async fn submit(
    State(shared): State<Arc<Shared>>,
    JsonBody(request): JsonBody<JobRequest>,
) -> Result<(StatusCode, Json<JobRecord>), ApiError> {
    let record = ask(&shared, |reply| {
        Command::Submit(request, "api".into(), reply)
    })
    .await?;
    Ok((StatusCode::ACCEPTED, Json(record)))
}

/// Cancels a queued job (a running one finishes: a shadow set is never cut short).
#[utoipa::path(
    delete, path = "/v1/jobs/{id}", params(("id" = i64, Path, description = "The job's id")),
    responses((status = 200, description = "Cancelled", body = JobRecord), (status = 400, description = "Not queued", body = ErrorBody))
)]
async fn cancel(
    State(shared): State<Arc<Shared>>,
    Param(axum::extract::Path(id)): PathId,
) -> Result<Json<JobRecord>, ApiError> {
    Ok(Json(
        ask(&shared, |reply| Command::Cancel(id, reply)).await?,
    ))
}

/// Events as they happen (Server-Sent Events; each event's name is its `type`, its
/// data the JSON of [`AgentEvent`]). A listener too slow to keep up gets a `lagged`
/// event saying how many it missed.
#[utoipa::path(
    get, path = "/v1/events",
    responses((status = 200, description = "text/event-stream of AgentEvent", content_type = "text/event-stream", body = AgentEvent))
)]
async fn events(
    State(shared): State<Arc<Shared>>,
) -> Sse<impl futures_util::Stream<Item = Result<Event, Infallible>>> {
    let stream = futures_util::stream::unfold(shared.events.subscribe(), |mut rx| async move {
        let event = match rx.recv().await {
            Ok(e) => Event::default()
                .event(e.name())
                .json_data(&e)
                .unwrap_or_else(|_| Event::default().event("error")),
            Err(RecvError::Lagged(n)) => Event::default().event("lagged").data(format!(
                "{n} events were dropped: this listener fell behind"
            )),
            Err(RecvError::Closed) => return None,
        };
        Some((Ok(event), rx))
    });
    Sse::new(stream).keep_alive(KeepAlive::default())
}

/// Prometheus metrics (text exposition format).
#[utoipa::path(get, path = "/metrics", responses((status = 200, description = "Prometheus text format", content_type = "text/plain", body = String)))]
async fn metrics(State(shared): State<Arc<Shared>>) -> Result<Response, ApiError> {
    let engine = shared.engine();
    let totals = blocking(move || engine.set_totals()).await?;
    let text = shared
        .metrics
        .encode(&totals, chrono::Utc::now().timestamp_millis());
    Ok((
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        text,
    )
        .into_response())
}

async fn openapi() -> Response {
    ([(header::CONTENT_TYPE, "application/json")], openapi_json()).into_response()
}

async fn not_found(request: Request) -> ApiError {
    ApiError::bad_input(
        StatusCode::NOT_FOUND,
        format!(
            "no such endpoint: {} {}; the API is under /v1 (see /v1/openapi.json)",
            request.method(),
            request.uri().path()
        ),
    )
}
