//! Schedules and retention per host and set, held by the server (`policy` on the
//! CLI). Each change bumps the host's `policy_version`; its agent sees the new version
//! on its next sync and fetches them. Expressions and policies are checked here, so an
//! agent is never sent one that does not parse.

use std::sync::Arc;

use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::Json;
use deadpool_postgres::GenericClient;
use serde::Deserialize;
use shadowcopy_agent::api::{ApiError, JsonBody, Param};
use shadowcopy_agent::link::protocol::{HostPolicy, Policies, SetPolicy};
use shadowcopy_engine::config::parse_schedule;
use shadowcopy_engine::RetentionPolicy;
use tokio_postgres::Row;

use crate::auth::{OperatorCaller, Role};
use crate::state::AppState;
use crate::{admin, database};

const COLUMNS: &str =
    "host, set_name, schedule, verify_schedule, retention, updated_by, ms(updated_at)";

fn row(r: &Row) -> HostPolicy {
    let retention: Option<serde_json::Value> = r.get(4);
    HostPolicy {
        host: r.get(0),
        policy: SetPolicy {
            set: r.get(1),
            schedule: r.get(2),
            verify_schedule: r.get(3),
            retention: retention.and_then(|v| serde_json::from_value::<RetentionPolicy>(v).ok()),
        },
        updated_by: r.get(5),
        updated_ms: r.get(6),
    }
}

/// A host's policies with their version, as its agent takes them.
pub async fn for_host(
    db: &impl GenericClient,
    host: &str,
) -> Result<Policies, tokio_postgres::Error> {
    let version: i64 = db
        .query_one("SELECT policy_version FROM hosts WHERE name = $1", &[&host])
        .await?
        .get(0);
    let rows = db
        .query(
            &format!("SELECT {COLUMNS} FROM set_policies WHERE host = $1 ORDER BY set_name"),
            &[&host],
        )
        .await?;
    Ok(Policies {
        version,
        sets: rows.iter().map(|r| row(r).policy).collect(),
    })
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ListQuery {
    #[serde(default)]
    host: Option<String>,
}

pub async fn list(
    State(state): State<Arc<AppState>>,
    caller: OperatorCaller,
    Param(Query(query)): Param<Query<ListQuery>>,
) -> Result<Json<Vec<HostPolicy>>, ApiError> {
    caller.require(Role::Viewer, "listing policies")?;
    let db = state.db.get().await.map_err(database)?;
    let rows = db
        .query(
            &format!(
                "SELECT {COLUMNS} FROM set_policies WHERE ($1::text IS NULL OR host = $1)
                  ORDER BY host, set_name"
            ),
            &[&query.host],
        )
        .await
        .map_err(database)?;
    Ok(Json(rows.iter().map(row).collect()))
}

fn check(policy: &SetPolicy) -> Result<(), ApiError> {
    if policy.set.is_empty() {
        return Err(ApiError::bad_input(
            StatusCode::BAD_REQUEST,
            "`set` is empty",
        ));
    }
    for (what, expression) in [
        ("schedule", &policy.schedule),
        ("verify_schedule", &policy.verify_schedule),
    ] {
        if let Some(expression) = expression {
            parse_schedule(expression).map_err(|e| {
                ApiError::bad_input(
                    StatusCode::BAD_REQUEST,
                    format!(
                        "{what} `{expression}` is not a cron expression ({e}); write five fields (\"*/15 * * * *\") or six with seconds first"
                    ),
                )
            })?;
        }
    }
    Ok(())
}

/// Sets (replaces) a host's policy for one set.
pub async fn put(
    State(state): State<Arc<AppState>>,
    caller: OperatorCaller,
    Path(host): Path<String>,
    JsonBody(policy): JsonBody<SetPolicy>,
) -> Result<Json<HostPolicy>, ApiError> {
    caller.require(Role::Operator, "setting a policy")?;
    check(&policy)?;
    let mut db = state.db.get().await.map_err(database)?;
    let tx = db.transaction().await.map_err(database)?;
    let bumped = tx
        .execute(
            "UPDATE hosts SET policy_version = policy_version + 1 WHERE name = $1 AND revoked_at IS NULL",
            &[&host],
        )
        .await
        .map_err(database)?;
    if bumped == 0 {
        return Err(ApiError::bad_input(
            StatusCode::NOT_FOUND,
            format!("there is no host `{host}` (or it is revoked); `hosts` lists them"),
        ));
    }
    let retention = policy
        .retention
        .as_ref()
        .map(serde_json::to_value)
        .transpose()
        .map_err(|e| ApiError::from(anyhow::anyhow!("the policy could not be recorded: {e}")))?;
    let r = tx
        .query_one(
            &format!(
                "INSERT INTO set_policies (host, set_name, schedule, verify_schedule, retention, updated_by)
                 VALUES ($1, $2, $3, $4, $5, $6)
                 ON CONFLICT (host, set_name) DO UPDATE SET schedule = $3, verify_schedule = $4,
                     retention = $5, updated_by = $6, updated_at = now()
                 RETURNING {COLUMNS}"
            ),
            &[
                &host,
                &policy.set,
                &policy.schedule,
                &policy.verify_schedule,
                &retention,
                &caller.actor(),
            ],
        )
        .await
        .map_err(database)?;
    admin::audit(
        &tx,
        &caller.actor(),
        "policy-set",
        Some(&host),
        serde_json::to_value(&policy).unwrap_or_default(),
    )
    .await
    .map_err(database)?;
    tx.commit().await.map_err(database)?;
    Ok(Json(row(&r)))
}

/// Removes a host's policy for one set (the agent's config decides again).
pub async fn remove(
    State(state): State<Arc<AppState>>,
    caller: OperatorCaller,
    Path((host, set)): Path<(String, String)>,
) -> Result<Json<serde_json::Value>, ApiError> {
    caller.require(Role::Operator, "removing a policy")?;
    let mut db = state.db.get().await.map_err(database)?;
    let tx = db.transaction().await.map_err(database)?;
    let n = tx
        .execute(
            "DELETE FROM set_policies WHERE host = $1 AND set_name = $2",
            &[&host, &set],
        )
        .await
        .map_err(database)?;
    if n == 0 {
        return Err(ApiError::bad_input(
            StatusCode::NOT_FOUND,
            format!("host `{host}` has no policy for set `{set}`"),
        ));
    }
    tx.execute(
        "UPDATE hosts SET policy_version = policy_version + 1 WHERE name = $1",
        &[&host],
    )
    .await
    .map_err(database)?;
    admin::audit(
        &tx,
        &caller.actor(),
        "policy-remove",
        Some(&host),
        serde_json::json!({ "set": set }),
    )
    .await
    .map_err(database)?;
    tx.commit().await.map_err(database)?;
    Ok(Json(
        serde_json::json!({ "host": host, "set": set, "removed": true }),
    ))
}
