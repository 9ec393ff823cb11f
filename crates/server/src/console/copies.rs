//! The console's pages about one host's sets and copies: a set (its writers and provider
//! as the agent last found them, schedule, retention, what restores can do, copies with
//! their log reach and whether the archive holds them), a copy (phases with timings,
//! verifications, components, largest files, an error with what to do), the guided
//! restore form, and the preview of deleting old copies.

use std::sync::Arc;

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use maud::{html, Markup};
use shadowcopy_agent::link::protocol::{path_segment as seg, HostReport, SetPolicy};
use shadowcopy_catalog::{CopyFacts, CopySummary};
use shadowcopy_engine::status::SetStatus;

use super::pages::{age, badge, bytes, error_page, freshness, host_info, micros, page, when};
use super::session::Signed;
use crate::auth::Role;
use crate::state::AppState;
use crate::{database, policies};

/// A connection to the central catalog, or the page saying why there is none.
pub(super) async fn connection(state: &AppState) -> Result<deadpool_postgres::Object, Response> {
    state
        .db
        .get()
        .await
        .map_err(|e| database(e).into_response())
}

/// How many copies a set's page shows at once (newest first; older ones a page on).
const COPIES_PER_PAGE: i64 = 100;

fn records(rows: &[tokio_postgres::Row]) -> Vec<CopySummary> {
    rows.iter()
        .filter_map(|r| serde_json::from_value(r.get(0)).ok())
        .collect()
}

/// A set's copies as its agent last reported them, oldest first.
pub(super) async fn set_copies(
    state: &AppState,
    host: &str,
    set: &str,
) -> Result<Vec<CopySummary>, Response> {
    let db = connection(state).await?;
    let rows = db
        .query(
            "SELECT record FROM copies WHERE host = $1 AND set_name = $2 ORDER BY copy_id",
            &[&host, &set],
        )
        .await
        .map_err(|e| database(e).into_response())?;
    Ok(records(&rows))
}

/// A page of a set's copies, newest first: at most [`COPIES_PER_PAGE`] below id
/// `before`, and whether older ones follow.
async fn set_copies_page(
    state: &AppState,
    host: &str,
    set: &str,
    before: Option<i64>,
) -> Result<(Vec<CopySummary>, bool), Response> {
    let db = connection(state).await?;
    let rows = db
        .query(
            "SELECT record FROM copies WHERE host = $1 AND set_name = $2
               AND ($3::bigint IS NULL OR copy_id < $3)
             ORDER BY copy_id DESC LIMIT $4",
            &[&host, &set, &before, &(COPIES_PER_PAGE + 1)],
        )
        .await
        .map_err(|e| database(e).into_response())?;
    let mut copies = records(&rows);
    let more = copies.len() as i64 > COPIES_PER_PAGE;
    copies.truncate(COPIES_PER_PAGE as usize);
    Ok((copies, more))
}

/// Per set of a host: how many copies, and the newest usable one's time.
pub(super) async fn set_totals(
    state: &AppState,
    host: &str,
) -> Result<Vec<(String, i64, Option<i64>)>, Response> {
    let db = connection(state).await?;
    let rows = db
        .query(
            "SELECT set_name, count(*), MAX(created_ms) FILTER (WHERE state = 'usable')
               FROM copies WHERE host = $1 GROUP BY set_name",
            &[&host],
        )
        .await
        .map_err(|e| database(e).into_response())?;
    Ok(rows
        .iter()
        .map(|r| (r.get(0), r.get(1), r.get(2)))
        .collect())
}

/// One copy and its facts; `None` when the server does not list it (any more).
async fn host_copy(
    state: &AppState,
    host: &str,
    id: i64,
) -> Result<Option<(CopySummary, CopyFacts)>, Response> {
    let db = connection(state).await?;
    let row = db
        .query_opt(
            "SELECT record, facts FROM copies WHERE host = $1 AND copy_id = $2",
            &[&host, &id],
        )
        .await
        .map_err(|e| database(e).into_response())?;
    Ok(row.and_then(|r| {
        let copy = serde_json::from_value(r.get(0)).ok()?;
        let facts = r
            .get::<_, Option<serde_json::Value>>(1)
            .and_then(|f| match serde_json::from_value(f) {
                Ok(facts) => Some(facts),
                Err(e) => {
                    tracing::warn!(%host, copy = id, "the copy's facts cannot be read ({e})");
                    None
                }
            })
            .unwrap_or_default();
        Some((copy, facts))
    }))
}

/// The host's last report of its sets (none before its agent has sent one).
pub(super) async fn host_report(
    state: &AppState,
    host: &str,
) -> Result<Option<HostReport>, Response> {
    let db = connection(state).await?;
    let row = db
        .query_opt("SELECT report FROM hosts WHERE name = $1", &[&host])
        .await
        .map_err(|e| database(e).into_response())?;
    Ok(row
        .and_then(|r| r.get::<_, Option<serde_json::Value>>(0))
        .and_then(|v| match serde_json::from_value(v) {
            Ok(report) => Some(report),
            Err(e) => {
                tracing::warn!(%host, "the host's report cannot be read ({e}); shown as not reported");
                None
            }
        }))
}

/// The set's status in a report.
pub(super) fn set_status<'a>(report: Option<&'a HostReport>, set: &str) -> Option<&'a SetStatus> {
    report.and_then(|r| r.sets.iter().find(|s| s.set == set))
}

/// Where a schedule comes from: the server's policy for the set, else the agent's config.
pub(super) fn schedule_of(
    policy: Option<&SetPolicy>,
    status: Option<&SetStatus>,
) -> Option<String> {
    policy
        .and_then(|p| p.schedule.clone())
        .or_else(|| status.and_then(|s| s.schedule.clone()))
}

fn policy_line(label: &str, central: Option<&String>, agent: Option<&String>) -> Markup {
    html! {
        dt { (label) }
        dd {
            @match (central, agent) {
                (Some(c), _) => { code { (c) } " " span.hint { "(set on the server)" } }
                (None, Some(a)) => { code { (a) } " " span.hint { "(the agent's config)" } }
                (None, None) => { "none" }
            }
        }
    }
}

#[derive(serde::Deserialize)]
pub struct SetQuery {
    /// Show the copies older than this id.
    #[serde(default)]
    before: Option<i64>,
}

/// `/console/hosts/{host}/sets/{set}`: the set now and its copies, newest first, a page
/// at a time.
pub async fn set(
    State(state): State<Arc<AppState>>,
    signed: Signed,
    Path((host, set)): Path<(String, String)>,
    axum::extract::Query(query): axum::extract::Query<SetQuery>,
) -> Response {
    let info = match host_info(&state, &signed, &host).await {
        Ok(i) => i,
        Err(r) => return r,
    };
    let (copies, older) = match set_copies_page(&state, &host, &set, query.before).await {
        Ok(page) => page,
        Err(r) => return r,
    };
    let (total, newest) = match set_totals(&state, &host).await {
        Ok(totals) => totals
            .into_iter()
            .find(|(s, _, _)| *s == set)
            .map(|(_, n, newest)| (n, newest))
            .unwrap_or((0, None)),
        Err(r) => return r,
    };
    let report = match host_report(&state, &host).await {
        Ok(r) => r,
        Err(r) => return r,
    };
    let policy = match state.db.get().await {
        Ok(db) => policies::for_host(&db, &host)
            .await
            .ok()
            .and_then(|p| p.sets.into_iter().find(|p| p.set == set)),
        Err(e) => return database(e).into_response(),
    };
    let status = set_status(report.as_ref(), &set);
    if status.is_none() && total == 0 && policy.is_none() && !info.sets.contains(&set) {
        return error_page(
            StatusCode::NOT_FOUND,
            Some(&signed),
            &format!("Host {host} has no set `{set}`: its agent's config does not name it and it has no copies. See the host's sets."),
        );
    }
    let reach = |id: i64| status.and_then(|s| s.reach.iter().find(|r| r.copy_id == id));
    let archived = |id: i64| -> Markup {
        match status.and_then(|s| s.archive.as_ref()) {
            None => html! { span.hint { "no archive" } },
            Some(a) if a.error.is_some() => html! { (badge("unknown")) },
            Some(a) if a.copies.contains(&id) => html! { (badge("archived")) },
            Some(_) => html! { (badge("not archived")) },
        }
    };
    let can_act = signed.can(Role::Operator) && info.state == "enrolled";
    let body = html! {
        p { "On " a href={"/console/hosts/" (seg(&host))} { (host) } " · newest usable copy: " (freshness(newest, schedule_of(policy.as_ref(), status).as_deref())) }
        @if can_act {
            p {
                form.inline method="post" action={"/console/hosts/" (seg(&host)) "/sets/" (seg(&set)) "/create"} {
                    input type="hidden" name="csrf" value=(signed.csrf);
                    button.primary type="submit" { "Create a copy" }
                }
                " "
                a.restore.prune href={"/console/hosts/" (seg(&host)) "/sets/" (seg(&set)) "/prune"} { "Delete old copies…" }
            }
        }
        @match status {
            None => {
                p.hint { "The agent has not reported this set's writers and provider yet (it does within seconds of connecting, and every five minutes)." }
            }
            Some(s) => {
                h2 { "Writers and provider" }
                p.hint { "As the agent found them " (age(report.as_ref().map_or(0, |r| r.built_ms))) " ago." }
                table.dense {
                    thead { tr { th { "Writer" } th { "State" } th { "Detail" } th { "In use by" } } }
                    tbody {
                        @for w in &s.writers {
                            tr.writer {
                                td { (w.writer) }
                                td { (badge(&w.state)) }
                                td { (w.detail) }
                                td { @if w.in_use_by.is_empty() { "—" } @else { "pid " (w.in_use_by.iter().map(u32::to_string).collect::<Vec<_>>().join(", ")) } }
                            }
                        }
                        tr.provider {
                            td { "provider " (s.provider) }
                            td { @if s.provider_state.ok { (badge("ready")) } @else { (badge("failed")) } }
                            td { @if s.provider_state.ok { "a copy made now uses " code { (s.provider_state.detail) } } @else { (s.provider_state.detail) } }
                            td { "—" }
                        }
                    }
                }
            }
        }
        h2 { "Policy" }
        dl.facts {
            (policy_line("Schedule", policy.as_ref().and_then(|p| p.schedule.as_ref()), status.and_then(|s| s.schedule.as_ref())))
            (policy_line("Verify schedule", policy.as_ref().and_then(|p| p.verify_schedule.as_ref()), status.and_then(|s| s.verify_schedule.as_ref())))
            (policy_line("Retention", policy.as_ref().and_then(|p| p.retention.as_ref()).map(|r| r.to_string()).as_ref(), status.and_then(|s| s.retention.as_ref())))
            dt { "Restores" }
            dd {
                @match status.map(|s| &s.roll_forward_until) {
                    Some(Some(until)) => { "point-in-time, or roll-forward (the logs kept since the copy replayed; a stop point may be " (until) ")" }
                    Some(None) => { "point-in-time only (no writer of the set keeps logs to roll forward with)" }
                    None => { "not reported yet" }
                }
            }
            @if let Some(a) = status.and_then(|s| s.archive.as_ref()) {
                dt { "Archive" }
                dd {
                    code { (a.location) }
                    @if let Some(e) = &a.error { " " span.error { "cannot be listed: " (e) } }
                    @else { ", " (a.copies.len()) " of this set's copies" }
                }
            }
        }
        h2 { "Copies" }
        @if total == 0 { p { "No copies yet." } }
        @else if copies.is_empty() { p { "No copies older than " (query.before.unwrap_or_default()) "." } }
        @else {
            p.hint {
                (total) @if total == 1 { " copy" } @else { " copies" }
                @if query.before.is_some() || older { "; copies " (copies.last().map_or(0, |c| c.id)) " to " (copies.first().map_or(0, |c| c.id)) " here" }
                "."
            }
            table.dense.copies {
                thead { tr { th.num { "ID" } th { "Created" } th { "Origin" } th { "State" } th { "Verified" } th.num { "Freeze window" } th.num { "Size" } th { "Archive" } th { "Log reach (now)" } th {} } }
                tbody {
                    @for c in &copies {
                        tr {
                            td.num { a href={"/console/hosts/" (seg(&host)) "/copies/" (c.id)} { (c.id) } }
                            td { (when(Some(c.created_ms))) }
                            td { (c.origin.as_str()) }
                            td { (badge(c.state.as_str())) }
                            td { (badge(c.verify_state.as_str())) }
                            td.num { (micros(c.freeze_window_us)) }
                            td.num { (bytes(c.bytes)) }
                            td { (archived(c.id)) }
                            td.reach {
                                @if let Some(r) = reach(c.id) {
                                    div { "point-in-time " (r.point_in_time) }
                                    div { "roll-forward: " (r.roll_forward) " " @if r.complete { (badge("complete")) } @else { (badge("holes")) } }
                                }
                            }
                            td {
                                @if can_act && c.state.as_str() == "usable" {
                                    a.restore href={"/console/hosts/" (seg(&host)) "/copies/" (c.id) "/restore"} { "Restore…" }
                                }
                            }
                        }
                    }
                }
            }
            p.paging {
                @if query.before.is_some() { a href={"/console/hosts/" (seg(&host)) "/sets/" (seg(&set))} { "Newest copies" } " " }
                @if older { a href={"/console/hosts/" (seg(&host)) "/sets/" (seg(&set)) "?before=" (copies.last().map_or(0, |c| c.id))} { "Older copies →" } }
            }
        }
    };
    page(&format!("Set {set} on {host}"), Some(&signed), body).into_response()
}

/// What to do about a copy that failed, by the phase it failed in, and the exit code the
/// CLI and the API give such a failure.
fn failure_advice(c: &CopySummary) -> (i32, &'static str) {
    if c.verify_state.as_str() == "failed" {
        return (
            4,
            "The copy is there but failed its check: restores refuse it unless told otherwise. Read the verification below; make a new copy; if new copies fail too, check the live database with its own tools (PRAGMA integrity_check, pg_amcheck, mariadb-check).",
        );
    }
    let advice = match c.phase.as_str() {
        "identify" => "A writer could not find or recognise its data: check the set's paths and that the database is there (`shadowcopy writers` on the host says what each writer finds).",
        "prepare" => "The copy could not be prepared: check that the provider can serve the data (`shadowcopy providers` on the host) and that its file system has room.",
        "precommit" | "commit" | "post-snapshot" => "The provider could not copy the data: check free space where copies go and the provider's message above. Nothing was left frozen; the partial copy was removed.",
        "freeze" => "A writer could not freeze the application within the set's freeze deadline (long transactions or locks?). Look at what the database was doing, raise `freeze_deadline` in the set, or copy at a quieter time. Nothing was left frozen.",
        "thaw" => "Thawing reported an error: check the application is writing again (the watchdog releases it in any case).",
        "verify" => "The verification could not run to its end: see the message; `shadowcopy verify ID` on the host tries again.",
        _ => "See the message above; `shadowcopy show ID` on the host has the whole record, and the next run starts clean.",
    };
    (1, advice)
}

pub async fn copy(
    State(state): State<Arc<AppState>>,
    signed: Signed,
    Path((host, id)): Path<(String, i64)>,
) -> Response {
    let (c, facts) = match host_copy(&state, &host, id).await {
        Ok(Some(found)) => found,
        Ok(None) => return gone(&signed, &host, id),
        Err(r) => return r,
    };
    let failed = c.state.as_str() == "failed" || c.verify_state.as_str() == "failed";
    let body = html! {
        dl.facts {
            dt { "Set" } dd { a href={"/console/hosts/" (seg(&host)) "/sets/" (seg(&c.set))} { (c.set) } }
            dt { "State" } dd { (badge(c.state.as_str())) " (phase " (c.phase) ")" }
            dt { "Verified" } dd { (badge(c.verify_state.as_str())) }
            dt { "Created" } dd { (when(Some(c.created_ms))) }
            dt { "Finished" } dd { (when(c.finished_ms)) }
            dt { "Origin" } dd { (c.origin.as_str()) }
            dt { "Provider" } dd { (c.provider) }
            dt { "Location" } dd { code { (c.location.as_deref().unwrap_or("—")) } }
            dt { "Freeze window" } dd { (micros(c.freeze_window_us)) " (deadline " (micros(Some(c.freeze_deadline_ms * 1000))) ")" }
            dt { "Files" } dd { (c.files) ", " (bytes(c.bytes)) }
        }
        @if failed {
            @let (code, advice) = failure_advice(&c);
            h2 { "What went wrong" }
            div.failure role="alert" {
                @if let Some(e) = &c.error { p.error { (e) } }
                p { "Exit code " strong { (code) } " (as the CLI and the API report it). " (advice) }
            }
        }
        @if signed.can(Role::Operator) && c.state.as_str() == "usable" {
            p { a.restore href={"/console/hosts/" (seg(&host)) "/copies/" (id) "/restore"} { "Restore this copy…" } }
        }
        h2 { "Phases" }
        @if facts.phases.is_empty() { p.hint { "Not reported (an agent older than this server's console, or the copy is still being made)." } }
        @else {
            table.dense.phases {
                thead { tr { th { "Phase" } th { "Started" } th.num { "Took" } th { "" } } }
                tbody {
                    @for p in &facts.phases {
                        tr.phase {
                            td { (p.phase) }
                            td { (when(Some(p.started_ms))) }
                            td.num { (micros(p.took_us)) }
                            td { @if let Some(e) = &p.error { span.error { (e) } } @else if p.took_us.is_some() || p.phase == "done" { (badge("done")) } @else { (badge("running")) } }
                        }
                    }
                }
            }
        }
        h2 { "Verification" }
        @if facts.verifications.is_empty() { p { "Not verified." } }
        @else {
            table.dense.verifications {
                thead { tr { th { "When" } th { "" } th.num { "Took" } th { "What was read" } th { "Detail" } } }
                tbody {
                    @for v in facts.verifications.iter().rev() {
                        tr {
                            td { (when(Some(v.at_ms))) }
                            td { @if v.ok { (badge("passed")) } @else { (badge("failed")) } }
                            td.num { (micros(Some(v.took_us))) }
                            td { @match v.base { Some(b) => { "what changed since copy " (b) }, None => { "everything" } } }
                            td { (v.detail) }
                        }
                    }
                }
            }
        }
        h2 { "What the writers reported" }
        @if facts.components.is_empty() { p { "No components (plain files only, or not reported)." } }
        @else {
            table.dense {
                thead { tr { th { "Writer" } th { "Component" } th { "Role" } th { "Path" } } }
                tbody {
                    @for k in &facts.components {
                        tr { td { (k.writer) } td { (k.name) } td { (k.role.as_str()) } td { code { (k.path.display()) } } }
                    }
                }
            }
            @if facts.components_total > facts.components.len() {
                p.hint { "The first " (facts.components.len()) " of " (facts.components_total) "; all of them: " code { "shadowcopy show " (id) } " on " (host) "." }
            }
        }
        h2 { "Largest files" }
        @if facts.largest_files.is_empty() { p { "None reported." } }
        @else {
            table.dense {
                thead { tr { th { "Path" } th.num { "Size" } } }
                tbody {
                    @for f in &facts.largest_files {
                        tr { td { code { (f.path.display()) } } td.num { (bytes(f.size as i64)) } }
                    }
                }
            }
            @if (c.files as usize) > facts.largest_files.len() {
                p.hint { "The largest " (facts.largest_files.len()) " of " (c.files) " files; all of them: " code { "shadowcopy show " (id) } " on " (host) "." }
            }
        }
    };
    page(
        &format!("Copy {id} of {} on {host}", c.set),
        Some(&signed),
        body,
    )
    .into_response()
}

/// A copy the server no longer lists (deleted, perhaps in another tab).
pub fn gone(signed: &Signed, host: &str, id: i64) -> Response {
    error_page(
        StatusCode::NOT_FOUND,
        Some(signed),
        &format!("Host {host} has no copy {id} any more (it may have been deleted or pruned since the page was loaded). See the host's copies."),
    )
}

/// The restore form's fields (also shown again, with messages, when what was sent is
/// refused).
pub struct RestoreForm<'a> {
    pub mode: &'a str,
    pub until: &'a str,
    /// `in-place` or `directory`.
    pub target: &'a str,
    /// The new directory's name in the host's restore area.
    pub directory: &'a str,
    pub errors: Vec<(&'static str, String)>,
}

pub async fn restore_form(
    State(state): State<Arc<AppState>>,
    signed: Signed,
    Path((host, id)): Path<(String, i64)>,
) -> Response {
    render_restore(
        &state,
        &signed,
        &host,
        id,
        RestoreForm {
            mode: "point-in-time",
            until: "",
            target: "in-place",
            directory: "",
            errors: Vec::new(),
        },
        StatusCode::OK,
    )
    .await
}

pub async fn render_restore(
    state: &AppState,
    signed: &Signed,
    host: &str,
    id: i64,
    form: RestoreForm<'_>,
    status: StatusCode,
) -> Response {
    if !signed.can(Role::Operator) {
        return error_page(
            StatusCode::FORBIDDEN,
            Some(signed),
            "Restoring needs the operator role.",
        );
    }
    let c = match host_copy(state, host, id).await {
        Ok(Some((c, _))) => c,
        Ok(None) => return gone(signed, host, id),
        Err(r) => return r,
    };
    let report = match host_report(state, host).await {
        Ok(r) => r,
        Err(r) => return r,
    };
    let status_of_set = set_status(report.as_ref(), &c.set);
    let until_forms = status_of_set.and_then(|s| s.roll_forward_until.as_deref());
    let reach = status_of_set.and_then(|s| s.reach.iter().find(|r| r.copy_id == id));
    let failed = c.verify_state.as_str() == "failed";
    let err = |field: &str| {
        form.errors
            .iter()
            .find(|(f, _)| *f == field)
            .map(|(_, m)| m.clone())
    };
    let body = html! {
        p { "Copy " strong { (id) } " of set " a href={"/console/hosts/" (seg(host)) "/sets/" (seg(&c.set))} { (c.set) } ", made " (when(Some(c.created_ms))) ", " (badge(c.verify_state.as_str())) "." }
        form.restore method="post" action={"/console/hosts/" (seg(host)) "/copies/" (id) "/restore"} {
            input type="hidden" name="csrf" value=(signed.csrf);
            fieldset {
                legend { "How far" }
                label { input type="radio" name="mode" value="point-in-time" checked[form.mode == "point-in-time"]; " Point in time: the data as it was when the copy was made" }
                @if let Some(r) = reach { p.hint { "Reaches " (r.point_in_time) "." } }
                @match until_forms {
                    Some(forms) => {
                        label { input type="radio" name="mode" value="roll-forward" checked[form.mode == "roll-forward"]; " Roll forward: the copy, then the logs kept since replayed (in place only)" }
                        @if let Some(r) = reach {
                            p.hint { "Would replay " (r.roll_forward) "." @if !r.complete { " " strong { "The logs have a hole: what lies after it is lost to a roll-forward." } } }
                        }
                        label { "Stop replay at (optional): " input type="text" name="until" value=(form.until) placeholder="a time, LSN or GTID"; }
                        p.hint { "A stop point may be " (forms) "." }
                    }
                    None => {
                        p.hint {
                            @if status_of_set.is_some() { "No writer of this set keeps logs to roll forward with: point-in-time is the one mode." }
                            @else { "The host's agent has not reported its sets yet: only point-in-time is offered." }
                        }
                    }
                }
                @if let Some(m) = err("until") { p.field-error role="alert" { (m) } }
                @if let Some(m) = err("mode") { p.field-error role="alert" { (m) } }
            }
            fieldset {
                legend { "Where" }
                label { input type="radio" name="target" value="in-place" checked[form.target != "directory" || report.is_none()]; " In place: replace the set's files on " (host) }
                @if let Some(r) = &report {
                    label {
                        input type="radio" name="target" value="directory" checked[form.target == "directory"];
                        " Into a new directory on " (host) ": " code { (r.restore_area) "/" }
                        input type="text" name="directory" value=(form.directory) placeholder="name" pattern="[A-Za-z0-9._-]+" size="20";
                    }
                    p.hint { "Point in time only. The live data is not touched; the set's tree is recreated in the directory, which only root can open (the restore area is private): copy out what you need, or move the directory elsewhere before starting a database server on it." }
                }
                @if let Some(m) = err("target") { p.field-error role="alert" { (m) } }
            }
            h2 { "What will happen" }
            ul.summary {
                li { "The agent on " strong { (host) } " restores the copy's " (c.files) " files (" (bytes(c.bytes)) "): in place they replace the set's files; into a directory they go there and nothing live changes." }
                li { "In place, what is there now is kept first as a " em { "pre-restore" } " copy: restoring that copy undoes this." }
                li { "In place, the database must be stopped first: a SQLite file held open, or a PostgreSQL or MariaDB server that is up, is refused (start it again after; a roll-forward replays the logs as the server starts)." }
            }
            @if failed {
                p.warning { "This copy FAILED its verification. Restoring it may bring back damaged data." }
                label { input type="checkbox" name="force" value="yes"; " I restore it anyway" }
                @if let Some(m) = err("force") { p.field-error role="alert" { (m) } }
            }
            label { input type="checkbox" name="confirm" value="yes"; " I understand what will happen on " (host) }
            @if let Some(m) = err("confirm") { p.field-error role="alert" { (m) } }
            @if let Some(m) = err("server") { p.field-error role="alert" { (m) } }
            p { button.danger type="submit" { "Restore" } " " a href={"/console/hosts/" (seg(host)) "/sets/" (seg(&c.set))} { "Cancel" } }
        }
    };
    (
        status,
        page(&format!("Restore copy {id} on {host}"), Some(signed), body),
    )
        .into_response()
}

#[derive(serde::Deserialize)]
pub struct PruneQuery {
    #[serde(default)]
    keep_last: Option<String>,
}

/// What a retention policy decides for a set's copies: the policy (`keep_last` asked for
/// on the page, else the set's policy on the server), where it comes from, and a
/// message for a `keep_last` that is not a number.
pub struct Prune {
    pub policy: Option<shadowcopy_engine::RetentionPolicy>,
    pub source: String,
    pub field_error: Option<&'static str>,
    pub decisions: Vec<shadowcopy_engine::Decision>,
}

/// The decisions the preview shows and the deletion checks again.
pub async fn prune_decisions(
    state: &AppState,
    host: &str,
    set: &str,
    keep_last: Option<&str>,
) -> Result<Prune, Response> {
    let copies = set_copies(state, host, set).await?;
    let db = connection(state).await?;
    let central = policies::for_host(&db, host)
        .await
        .ok()
        .and_then(|p| p.sets.into_iter().find(|p| p.set == set))
        .and_then(|p| p.retention);
    let (policy, source, field_error) = match keep_last.map(str::parse::<u32>) {
        Some(Ok(n)) if n >= 1 => (
            Some(shadowcopy_engine::RetentionPolicy {
                keep_last: Some(n),
                ..Default::default()
            }),
            format!("keep the newest {n}"),
            None,
        ),
        Some(_) => (
            None,
            String::new(),
            Some("Give a whole number of copies, at least 1."),
        ),
        None => (
            central.clone(),
            central
                .as_ref()
                .map(|p| format!("the set's policy on the server: {p}"))
                .unwrap_or_default(),
            None,
        ),
    };
    let decisions = policy
        .as_ref()
        .map(|p| shadowcopy_engine::retention::decide(&copies, p, None, &chrono::Utc))
        .unwrap_or_default();
    Ok(Prune {
        policy,
        source,
        field_error,
        decisions,
    })
}

/// The copies that go, as `ID:CREATED_MS` joined by commas: what the deletion form
/// carries and must match again (an id reused since would not).
pub fn going_key(decisions: &[shadowcopy_engine::Decision]) -> String {
    decisions
        .iter()
        .filter(|d| !d.keep)
        .map(|d| format!("{}:{}", d.id, d.created_ms))
        .collect::<Vec<_>>()
        .join(",")
}

/// What a retention policy would delete of a set, and why each copy stays: the set's
/// policy on the server, or "keep the newest N" asked for here. Then one button deletes
/// exactly the copies listed as going.
pub async fn prune_preview(
    State(state): State<Arc<AppState>>,
    signed: Signed,
    Path((host, set)): Path<(String, String)>,
    axum::extract::Query(query): axum::extract::Query<PruneQuery>,
) -> Response {
    if !signed.can(Role::Operator) {
        return error_page(
            StatusCode::FORBIDDEN,
            Some(&signed),
            "Deleting copies needs the operator role.",
        );
    }
    let asked = query
        .keep_last
        .as_deref()
        .map(str::trim)
        .filter(|s| !s.is_empty());
    let Prune {
        policy,
        source,
        field_error,
        decisions,
    } = match prune_decisions(&state, &host, &set, asked).await {
        Ok(p) => p,
        Err(r) => return r,
    };
    let going: Vec<i64> = decisions.iter().filter(|d| !d.keep).map(|d| d.id).collect();
    let going_key = going_key(&decisions);
    let status = if field_error.is_some() {
        StatusCode::BAD_REQUEST
    } else {
        StatusCode::OK
    };
    let body = html! {
        form.inline method="get" action={"/console/hosts/" (seg(&host)) "/sets/" (seg(&set)) "/prune"} {
            label { "Keep the newest " input type="text" name="keep_last" size="4" value=(asked.unwrap_or("")) inputmode="numeric"; " copies" }
            " " button type="submit" { "Preview" }
            @if let Some(e) = field_error { p.field-error role="alert" { (e) } }
        }
        @if policy.is_none() && field_error.is_none() {
            p.hint { "The set has no retention policy on the server (its agent's config may have one, applied after each scheduled copy). Say how many copies to keep to see what would go." }
        }
        @if policy.is_some() {
            p { "By " (source) " (hourly and daily buckets in UTC here; the agent prunes in its own time zone):" }
            table.dense {
                thead { tr { th.num { "ID" } th { "Created" } th { "" } th { "Why" } } }
                tbody {
                    @for d in decisions.iter().rev() {
                        tr.decision data-keep=(d.keep) {
                            td.num { (d.id) }
                            td { (when(Some(d.created_ms))) }
                            td { @if d.keep { (badge("keep")) } @else { (badge("goes")) } }
                            td { (d.reasons.join("; ")) }
                        }
                    }
                }
            }
            @if going.is_empty() {
                p { "Nothing would go." }
            } @else {
                form.inline method="post" action={"/console/hosts/" (seg(&host)) "/sets/" (seg(&set)) "/prune"} data-confirm="Delete these copies on the host? This cannot be undone." {
                    input type="hidden" name="csrf" value=(signed.csrf);
                    input type="hidden" name="copies" value=(going_key);
                    input type="hidden" name="keep_last" value=(asked.unwrap_or(""));
                    button.danger type="submit" {
                        @if going.len() == 1 { "Delete the copy that goes" }
                        @else { "Delete the " (going.len()) " copies that go" }
                    }
                }
            }
        }
    };
    (
        status,
        page(
            &format!("Delete old copies of {set} on {host}"),
            Some(&signed),
            body,
        ),
    )
        .into_response()
}
