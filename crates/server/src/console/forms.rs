//! What the console's forms do: sign in and out, enrol and revoke a host (admins),
//! create a copy, restore one, cancel a waiting job (operators). Every form carries the
//! session's CSRF token and is refused without it; each action goes through the same
//! checks, queue and audit log as the API's (`operators::queue_job`).

use std::sync::Arc;
use std::time::Duration;

use axum::extract::{Path, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Redirect, Response};
use axum::Form;
use maud::html;
use serde::Deserialize;
use shadowcopy_agent::job::JobRequest;
use shadowcopy_engine::restore::Mode;

use super::copies::{self, RestoreForm};
use super::pages::{self, error_page, page};
use super::session::{self, csrf_ok, csrf_refused, Signed};
use crate::auth::Role;
use crate::operators::{cancel_job, queue_job};
use crate::state::AppState;
use crate::{admin, database};

#[derive(Deserialize)]
pub struct SignInForm {
    #[serde(default)]
    name: String,
    #[serde(default)]
    password: String,
}

/// Sign-ins checked at once (each an argon2id hash: 19 MiB and tens of milliseconds);
/// more wait, up to a few seconds, then are refused.
static SIGN_INS: tokio::sync::Semaphore = tokio::sync::Semaphore::const_new(2);

/// Whether a form was posted from the console's own pages: browsers say where a request
/// comes from (`Sec-Fetch-Site`, `Origin`); a sign-in posted by another site (to sign a
/// victim into the attacker's account) is refused.
fn same_origin(headers: &HeaderMap) -> bool {
    if let Some(site) = headers.get("sec-fetch-site").and_then(|v| v.to_str().ok()) {
        return matches!(site, "same-origin" | "none");
    }
    match (
        headers.get(header::ORIGIN).and_then(|v| v.to_str().ok()),
        headers.get(header::HOST).and_then(|v| v.to_str().ok()),
    ) {
        (Some(origin), Some(host)) => origin
            .split_once("://")
            .is_some_and(|(_, rest)| rest == host),
        _ => true,
    }
}

pub async fn sign_in(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    Form(form): Form<SignInForm>,
) -> Response {
    if !same_origin(&headers) {
        tracing::warn!(user = %form.name, "a console sign-in posted from another site was refused");
        return (StatusCode::FORBIDDEN, "sign in from the console's own page").into_response();
    }
    let Ok(Ok(_slot)) = tokio::time::timeout(Duration::from_secs(5), SIGN_INS.acquire()).await
    else {
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            pages::sign_in_page(
                Some("Too many sign-ins at once; try again in a moment."),
                &form.name,
            ),
        )
            .into_response();
    };
    let db = match state.db.get().await {
        Ok(db) => db,
        Err(e) => return database(e).into_response(),
    };
    match session::sign_in(&db, form.name.trim(), &form.password).await {
        Ok(Some(id)) => (
            [(header::SET_COOKIE, session::cookie(Some(&id)))],
            Redirect::to("/console/hosts"),
        )
            .into_response(),
        Ok(None) => {
            tracing::warn!(user = %form.name, "a console sign-in was refused");
            (
                StatusCode::UNAUTHORIZED,
                pages::sign_in_page(Some("The name or the password is wrong."), &form.name),
            )
                .into_response()
        }
        Err(e) => database(e).into_response(),
    }
}

/// Only the CSRF token.
#[derive(Deserialize)]
pub struct TokenOnly {
    #[serde(default)]
    csrf: String,
}

pub async fn sign_out(
    State(state): State<Arc<AppState>>,
    signed: Signed,
    headers: HeaderMap,
    Form(form): Form<TokenOnly>,
) -> Response {
    if !csrf_ok(&signed, &form.csrf) {
        return csrf_refused();
    }
    if let Ok(db) = state.db.get().await {
        let _ = session::sign_out(&db, session::request_session(&headers).as_deref()).await;
    }
    (
        [(header::SET_COOKIE, session::cookie(None))],
        Redirect::to("/console/signin"),
    )
        .into_response()
}

/// Refuses a form without the session's token, or from a user below `role`.
fn allowed(signed: &Signed, csrf: &str, role: Role, what: &str) -> Option<Response> {
    if !csrf_ok(signed, csrf) {
        tracing::warn!(user = %signed.user, "a console form without its CSRF token was refused");
        return Some(csrf_refused());
    }
    if !signed.can(role) {
        tracing::warn!(user = %signed.user, "refused: {what} needs the {} role", role.as_str());
        return Some(error_page(
            StatusCode::FORBIDDEN,
            Some(signed),
            &format!(
                "{what} needs the {} role; you are a {}.",
                role.as_str(),
                signed.role.as_str()
            ),
        ));
    }
    None
}

fn api_refusal(signed: &Signed, e: shadowcopy_agent::api::ApiError) -> Response {
    error_page(e.status(), Some(signed), e.message())
}

#[derive(Deserialize)]
pub struct EnrollForm {
    #[serde(default)]
    csrf: String,
    #[serde(default)]
    host: String,
}

pub async fn enroll(
    State(state): State<Arc<AppState>>,
    signed: Signed,
    Form(form): Form<EnrollForm>,
) -> Response {
    if let Some(refused) = allowed(&signed, &form.csrf, Role::Admin, "Enrolling a host") {
        return refused;
    }
    let host = form.host.trim();
    let mut db = match state.db.get().await {
        Ok(db) => db,
        Err(e) => return database(e).into_response(),
    };
    let ttl = Duration::from_secs(3600);
    match admin::enroll_token(&mut db, &state.ca, host, ttl, &signed.actor()).await {
        Ok(token) => page(
            &format!("Enrol {host}"),
            Some(&signed),
            html! {
                p { "A one-time token for " strong { (host) } ", valid for one hour. On " (host) ", as root:" }
                pre.command { "SHADOWCOPY_ENROLL_TOKEN=" (token) " shadowcopy agent --server " (state.url) " --host-name " (host) }
                p.hint { "The token names this server's CA: the agent trusts this server and no other. It is shown only now." }
                p { a href="/console/hosts" { "Back to the hosts" } }
            },
        )
        .into_response(),
        Err(e) => {
            let e = crate::api_error(e);
            api_refusal(&signed, e)
        }
    }
}

pub async fn revoke(
    State(state): State<Arc<AppState>>,
    signed: Signed,
    Path(host): Path<String>,
    Form(form): Form<TokenOnly>,
) -> Response {
    if let Some(refused) = allowed(&signed, &form.csrf, Role::Admin, "Revoking a host") {
        return refused;
    }
    let mut db = match state.db.get().await {
        Ok(db) => db,
        Err(e) => return database(e).into_response(),
    };
    match admin::revoke(&mut db, &host, &signed.actor()).await {
        Ok(()) => Redirect::to("/console/hosts").into_response(),
        Err(e) => api_refusal(&signed, crate::api_error(e)),
    }
}

pub async fn create(
    State(state): State<Arc<AppState>>,
    signed: Signed,
    Path((host, set)): Path<(String, String)>,
    Form(form): Form<TokenOnly>,
) -> Response {
    if let Some(refused) = allowed(&signed, &form.csrf, Role::Operator, "Creating a copy") {
        return refused;
    }
    match queue_job(&state, &host, &JobRequest::Create { set }, &signed.actor()).await {
        Ok(job) => Redirect::to(&format!("/console/jobs/{}", job.id)).into_response(),
        Err(e) => api_refusal(&signed, e),
    }
}

#[derive(Deserialize)]
pub struct RestoreFields {
    #[serde(default)]
    csrf: String,
    #[serde(default)]
    mode: String,
    #[serde(default)]
    until: String,
    #[serde(default)]
    target: String,
    #[serde(default)]
    directory: String,
    #[serde(default)]
    force: Option<String>,
    #[serde(default)]
    confirm: Option<String>,
}

pub async fn restore(
    State(state): State<Arc<AppState>>,
    signed: Signed,
    Path((host, id)): Path<(String, i64)>,
    Form(form): Form<RestoreFields>,
) -> Response {
    if let Some(refused) = allowed(&signed, &form.csrf, Role::Operator, "Restoring") {
        return refused;
    }
    let mut errors = Vec::new();
    let mode = match form.mode.as_str() {
        "point-in-time" => Some(Mode::PointInTime),
        "roll-forward" => Some(Mode::RollForward),
        _ => {
            errors.push(("mode", "Choose how far to restore.".to_string()));
            None
        }
    };
    let until = form.until.trim();
    if !until.is_empty() && mode != Some(Mode::RollForward) {
        errors.push((
            "until",
            "A stop point is for roll-forward only.".to_string(),
        ));
    }
    let report = match copies::host_report(&state, &host).await {
        Ok(r) => r,
        Err(r) => return r,
    };
    // The copy's set and verification, once: gone since the form was loaded is a page
    // saying so.
    let (set, failed): (String, bool) = {
        let db = match copies::connection(&state).await {
            Ok(db) => db,
            Err(r) => return r,
        };
        match db
            .query_opt(
                "SELECT set_name, verify_state FROM copies WHERE host = $1 AND copy_id = $2",
                &[&host, &id],
            )
            .await
        {
            Ok(Some(r)) => (r.get(0), r.get::<_, String>(1) == "failed"),
            Ok(None) => return copies::gone(&signed, &host, id),
            Err(e) => return database(e).into_response(),
        }
    };
    if mode == Some(Mode::RollForward)
        && copies::set_status(report.as_ref(), &set).is_none_or(|s| s.roll_forward_until.is_none())
    {
        errors.push((
            "mode",
            "This set's writers keep no logs to roll forward with: choose point in time."
                .to_string(),
        ));
    }
    let directory = form.directory.trim();
    let to = match form.target.as_str() {
        "in-place" => None,
        "directory" => {
            let refused = if !valid_directory_name(directory) {
                Some("Name the new directory: letters, digits, `.`, `_` and `-` only (not `.` or `..`).")
            } else if mode == Some(Mode::RollForward) {
                Some("A roll-forward restores in place (it replays the server's own logs): choose in place, or point in time.")
            } else if report.is_none() {
                Some("The host's agent has not said where it may restore to yet: restore in place, or try again in a minute.")
            } else {
                None
            };
            if let Some(why) = refused {
                errors.push(("target", why.to_string()));
            }
            report
                .as_ref()
                .filter(|_| refused.is_none())
                .map(|r| std::path::PathBuf::from(&r.restore_area).join(directory))
        }
        _ => {
            errors.push(("target", "Choose in place or a new directory.".to_string()));
            None
        }
    };
    if form.confirm.as_deref() != Some("yes") {
        errors.push((
            "confirm",
            "Tick this to confirm what will happen on the host.".to_string(),
        ));
    }
    // A copy that failed verification needs its own, second confirmation.
    let force = form.force.as_deref() == Some("yes");
    if failed && !force {
        errors.push((
            "force",
            "This copy failed verification: tick this too to restore it anyway.".to_string(),
        ));
    }
    let form_again = |errors| RestoreForm {
        mode: if form.mode == "roll-forward" {
            "roll-forward"
        } else {
            "point-in-time"
        },
        until,
        target: if form.target == "directory" {
            "directory"
        } else {
            "in-place"
        },
        directory,
        errors,
    };
    if !errors.is_empty() {
        return copies::render_restore(
            &state,
            &signed,
            &host,
            id,
            form_again(errors),
            StatusCode::BAD_REQUEST,
        )
        .await;
    }
    // Only the verification is overridden: data in use is refused all the same.
    let request = JobRequest::Restore {
        copy: id,
        force: false,
        accept_failed_verification: force,
        discard_current: false,
        mode: mode.expect("checked above"),
        until: (!until.is_empty()).then(|| until.to_string()),
        to,
    };
    match queue_job(&state, &host, &request, &signed.actor()).await {
        Ok(job) => Redirect::to(&format!("/console/jobs/{}", job.id)).into_response(),
        Err(e) if e.status() == StatusCode::NOT_FOUND => copies::gone(&signed, &host, id),
        Err(e) => {
            let message = e.message().to_string();
            copies::render_restore(
                &state,
                &signed,
                &host,
                id,
                form_again(vec![("server", message)]),
                e.status(),
            )
            .await
        }
    }
}

/// A new directory's name in a host's restore area: one plain path segment.
fn valid_directory_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 200
        && name != "."
        && name != ".."
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'))
}

pub async fn cancel(
    State(state): State<Arc<AppState>>,
    signed: Signed,
    Path(id): Path<i64>,
    Form(form): Form<TokenOnly>,
) -> Response {
    if let Some(refused) = allowed(&signed, &form.csrf, Role::Operator, "Cancelling a job") {
        return refused;
    }
    match cancel_job(&state, id, &signed.actor()).await {
        Ok(_) => Redirect::to("/console/jobs").into_response(),
        Err(e) => api_refusal(&signed, e),
    }
}

#[derive(Deserialize)]
pub struct PruneFields {
    #[serde(default)]
    csrf: String,
    /// What the preview listed as going (`ID:CREATED_MS,…`).
    #[serde(default)]
    copies: String,
    /// The preview's "keep the newest N" (empty: the set's policy on the server).
    #[serde(default)]
    keep_last: String,
}

/// Deletes exactly the copies the preview listed, as one job, once the same policy
/// over the copies as they are now still lists exactly those (a copy deleted or an id
/// reused since the preview refuses it).
pub async fn prune(
    State(state): State<Arc<AppState>>,
    signed: Signed,
    Path((host, set)): Path<(String, String)>,
    Form(form): Form<PruneFields>,
) -> Response {
    if let Some(refused) = allowed(&signed, &form.csrf, Role::Operator, "Deleting copies") {
        return refused;
    }
    let keep_last = Some(form.keep_last.trim()).filter(|s| !s.is_empty());
    let now = match copies::prune_decisions(&state, &host, &set, keep_last).await {
        Ok(p) => p,
        Err(r) => return r,
    };
    let going = copies::going_key(&now.decisions);
    if now.policy.is_none() || going.is_empty() || going != form.copies {
        return error_page(
            StatusCode::CONFLICT,
            Some(&signed),
            "The set's copies changed since the preview (or nothing goes now); nothing was deleted. Preview again.",
        );
    }
    let ids: Vec<i64> = now
        .decisions
        .iter()
        .filter(|d| !d.keep)
        .map(|d| d.id)
        .collect();
    match queue_job(
        &state,
        &host,
        &JobRequest::Delete { copies: ids },
        &signed.actor(),
    )
    .await
    {
        Ok(job) => Redirect::to(&format!("/console/jobs/{}", job.id)).into_response(),
        Err(e) => api_refusal(&signed, e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.insert(*k, v.parse().unwrap());
        }
        h
    }

    #[test]
    fn a_sign_in_posted_by_another_site_is_told_apart() {
        assert!(same_origin(&headers(&[("sec-fetch-site", "same-origin")])));
        assert!(same_origin(&headers(&[("sec-fetch-site", "none")])));
        assert!(!same_origin(&headers(&[("sec-fetch-site", "cross-site")])));
        assert!(!same_origin(&headers(&[("sec-fetch-site", "same-site")])));
        assert!(same_origin(&headers(&[
            ("origin", "https://backup:8443"),
            ("host", "backup:8443")
        ])));
        assert!(!same_origin(&headers(&[
            ("origin", "https://evil.example"),
            ("host", "backup:8443")
        ])));
        // A client that says neither (curl, a script) is not a browser another site drives.
        assert!(same_origin(&headers(&[("host", "backup:8443")])));
    }
}
