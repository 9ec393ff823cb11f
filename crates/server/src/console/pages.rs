//! The console's pages, rendered on the server (maud: HTML checked when compiled), each
//! readable with JavaScript off: hosts, a host's sets and copies, a copy, the restore
//! form, jobs, a job. With JavaScript, a running job's phases stream in (Server-Sent
//! Events), htmx refreshes the job list, and times are shown in the browser's zone (UTC
//! on hover); without it, a running job's page reloads itself.

use std::sync::Arc;

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{Html, IntoResponse, Response};
use maud::{html, Markup, DOCTYPE};
use shadowcopy_agent::link::protocol::{path_segment as seg, HostInfo, ServerJob, SetPolicy};
use shadowcopy_catalog::CopySummary;

use super::session::Signed;
use crate::auth::Role;
use crate::state::AppState;
use crate::{admin, database, policies, queue};

/// A page: the layout around `body`.
pub fn page(title: &str, signed: Option<&Signed>, body: Markup) -> Html<String> {
    Html(
        html! {
            (DOCTYPE)
            html lang="en" {
                head {
                    meta charset="utf-8";
                    meta name="viewport" content="width=device-width, initial-scale=1";
                    title { (title) " · shadowcopy" }
                    // htmx's own indicator styles would be inline, which the CSP refuses.
                    meta name="htmx-config" content=r#"{"includeIndicatorStyles":false}"#;
                    link rel="stylesheet" href="/console/assets/console.css";
                    script src="/console/assets/htmx.min.js" defer {}
                    script src="/console/assets/console.js" defer {}
                }
                body {
                    header {
                        a.brand href="/console/hosts" { "shadowcopy" }
                        @if let Some(s) = signed {
                            nav {
                                a href="/console/hosts" { "Hosts" }
                                a href="/console/jobs" { "Jobs" }
                            }
                            form.signout method="post" action="/console/signout" {
                                input type="hidden" name="csrf" value=(s.csrf);
                                span.who { (s.user) " (" (s.role.as_str()) ")" }
                                button type="submit" { "Sign out" }
                            }
                        }
                    }
                    main { h1 { (title) } (body) }
                }
            }
        }
        .into_string(),
    )
}

/// An error as a page, with what to do.
pub fn error_page(status: StatusCode, signed: Option<&Signed>, message: &str) -> Response {
    let title = match status {
        StatusCode::NOT_FOUND => "Not found",
        StatusCode::FORBIDDEN => "Not allowed",
        StatusCode::BAD_REQUEST | StatusCode::CONFLICT => "Cannot do that",
        _ => "Something failed",
    };
    (
        status,
        page(
            title,
            signed,
            html! {
                p.error role="alert" { (message) }
                p { a href="/console/hosts" { "Back to the hosts" } }
            },
        ),
    )
        .into_response()
}

/// A time: UTC in the page, the browser's zone once the script has run.
pub fn when(ms: Option<i64>) -> Markup {
    match ms.and_then(chrono::DateTime::from_timestamp_millis) {
        Some(t) => {
            let utc = t.format("%Y-%m-%d %H:%M:%S UTC").to_string();
            html! { time datetime=(t.to_rfc3339()) title=(utc) { (utc) } }
        }
        None => html! { "—" },
    }
}

pub fn bytes(n: i64) -> String {
    let n = n as f64;
    match n {
        n if n >= 1024.0 * 1024.0 * 1024.0 => format!("{:.1} GiB", n / (1024.0 * 1024.0 * 1024.0)),
        n if n >= 1024.0 * 1024.0 => format!("{:.1} MiB", n / (1024.0 * 1024.0)),
        n if n >= 1024.0 => format!("{:.1} KiB", n / 1024.0),
        n => format!("{n} B"),
    }
}

fn micros(us: Option<i64>) -> String {
    match us {
        None => "—".into(),
        Some(us) if us >= 1_000_000 => format!("{:.2} s", us as f64 / 1e6),
        Some(us) if us >= 1_000 => format!("{:.1} ms", us as f64 / 1e3),
        Some(us) => format!("{us} µs"),
    }
}

/// How old `ms` is, in words.
fn age(ms: i64) -> String {
    let secs = (chrono::Utc::now().timestamp_millis() - ms).max(0) / 1000;
    match secs {
        s if s < 120 => format!("{s} s"),
        s if s < 7200 => format!("{} min", s / 60),
        s if s < 172_800 => format!("{} h", s / 3600),
        s => format!("{} d", s / 86_400),
    }
}

/// A state as a word with its colour (never the colour alone).
fn badge(word: &str) -> Markup {
    let class = match word {
        "usable" | "passed" | "done" | "enrolled" | "fresh" | "keep" => "ok",
        "queued" | "claimed" | "running" | "in-progress" | "not-verified" | "late" | "waiting" => {
            "busy"
        }
        "failed" | "lost" | "revoked" | "stale" | "cancelled" | "goes" => "bad",
        _ => "plain",
    };
    html! { span class={"badge " (class)} { (word) } }
}

/// How the newest usable copy's age stands against the set's schedule.
fn freshness(newest_ms: Option<i64>, schedule: Option<&str>) -> Markup {
    let Some(newest) = newest_ms else {
        return html! { (badge("none")) " no usable copy" };
    };
    let interval = schedule.and_then(|s| {
        let cron = shadowcopy_engine::config::parse_schedule(s).ok()?;
        let now = chrono::Utc::now();
        let first = cron.find_next_occurrence(&now, false).ok()?;
        let second = cron.find_next_occurrence(&first, false).ok()?;
        Some((second - first).num_milliseconds().max(1))
    });
    let old = chrono::Utc::now().timestamp_millis() - newest;
    let word = match interval {
        None => "plain",
        Some(i) if old <= 2 * i => "fresh",
        Some(i) if old <= 4 * i => "late",
        Some(_) => "stale",
    };
    html! {
        @if word == "plain" { (age(newest)) " old (no schedule)" }
        @else { (badge(word)) " " (age(newest)) " old" }
    }
}

async fn host_copies(state: &AppState, host: &str) -> Result<Vec<CopySummary>, Response> {
    let db = state
        .db
        .get()
        .await
        .map_err(|e| database(e).into_response())?;
    let rows = db
        .query(
            "SELECT record FROM copies WHERE host = $1 ORDER BY copy_id",
            &[&host],
        )
        .await
        .map_err(|e| database(e).into_response())?;
    Ok(rows
        .iter()
        .filter_map(|r| serde_json::from_value(r.get(0)).ok())
        .collect())
}

async fn host_info(state: &AppState, signed: &Signed, host: &str) -> Result<HostInfo, Response> {
    let db = state
        .db
        .get()
        .await
        .map_err(|e| database(e).into_response())?;
    let hosts = admin::hosts(&db, Some(host))
        .await
        .map_err(|e| database(e).into_response())?;
    hosts.into_iter().find(|h| h.name == host).ok_or_else(|| {
        error_page(
            StatusCode::NOT_FOUND,
            Some(signed),
            &format!(
                "There is no host `{host}`: it may have been removed, or the address is wrong."
            ),
        )
    })
}

/// A host's sets: those of its agent's config and those it has copies of.
fn sets_of(h: &HostInfo, newest: &[tokio_postgres::Row]) -> Vec<String> {
    let mut sets = h.sets.clone();
    sets.extend(
        newest
            .iter()
            .filter(|r| r.get::<_, String>(0) == h.name)
            .map(|r| r.get::<_, String>(1)),
    );
    sets.sort();
    sets.dedup();
    sets
}

/// The newest usable copy's time of a host's set.
fn newest_of(newest: &[tokio_postgres::Row], host: &str, set: &str) -> Option<i64> {
    newest
        .iter()
        .find(|r| r.get::<_, String>(0) == host && r.get::<_, String>(1) == set)
        .and_then(|r| r.get::<_, Option<i64>>(2))
}

pub async fn hosts(State(state): State<Arc<AppState>>, signed: Signed) -> Response {
    let db = match state.db.get().await {
        Ok(db) => db,
        Err(e) => return database(e).into_response(),
    };
    let hosts = match admin::hosts(&db, None).await {
        Ok(h) => h,
        Err(e) => return database(e).into_response(),
    };
    let policies = match db
        .query("SELECT host, set_name, schedule FROM set_policies", &[])
        .await
    {
        Ok(rows) => rows,
        Err(e) => return database(e).into_response(),
    };
    let newest = match db
        .query(
            "SELECT host, set_name, MAX(created_ms) FILTER (WHERE state = 'usable')
               FROM copies GROUP BY host, set_name ORDER BY host, set_name",
            &[],
        )
        .await
    {
        Ok(rows) => rows,
        Err(e) => return database(e).into_response(),
    };
    let schedule = |host: &str, set: &str| -> Option<String> {
        policies
            .iter()
            .find(|r| r.get::<_, String>(0) == host && r.get::<_, String>(1) == set)
            .and_then(|r| r.get::<_, Option<String>>(2))
    };
    page(
        "Hosts",
        Some(&signed),
        html! {
            @if hosts.is_empty() {
                p { "No hosts yet." }
            } @else {
                table.dense {
                    thead { tr { th { "Host" } th { "State" } th { "Last seen" } th { "Agent" } th { "Sets: newest usable copy" } th.num { "Copies" } th.num { "Open jobs" } @if signed.can(Role::Admin) { th {} } } }
                    tbody {
                        @for h in &hosts {
                            tr {
                                td { a href={"/console/hosts/" (h.name)} { (h.name) } }
                                td { (badge(&h.state)) }
                                td { (when(h.last_seen_ms)) }
                                td { (h.agent_version.as_deref().unwrap_or("—")) }
                                td {
                                    @for set in sets_of(h, &newest) {
                                        div { strong { (set) } ": " (freshness(newest_of(&newest, &h.name, &set), schedule(&h.name, &set).as_deref())) }
                                    }
                                }
                                td.num { (h.copies) }
                                td.num { (h.open_jobs) }
                                @if signed.can(Role::Admin) {
                                    td {
                                        @if h.state != "revoked" {
                                            form method="post" action={"/console/hosts/" (h.name) "/revoke"} data-confirm="Revoke this host? Its agent is cut off at once." {
                                                input type="hidden" name="csrf" value=(signed.csrf);
                                                button.danger type="submit" { "Revoke" }
                                            }
                                        }
                                    }
                                }
                            }
                        }
                    }
                }
            }
            @if signed.can(Role::Admin) {
                h2 { "Enrol a host" }
                form.inline method="post" action="/console/hosts/enroll" {
                    input type="hidden" name="csrf" value=(signed.csrf);
                    label { "Host name " input type="text" name="host" required pattern="[A-Za-z0-9.-]+" placeholder="db1.example.com"; }
                    button type="submit" { "Make a one-time token" }
                }
            }
        },
    )
    .into_response()
}

pub async fn host(
    State(state): State<Arc<AppState>>,
    signed: Signed,
    Path(host): Path<String>,
) -> Response {
    let info = match host_info(&state, &signed, &host).await {
        Ok(i) => i,
        Err(r) => return r,
    };
    let copies = match host_copies(&state, &host).await {
        Ok(c) => c,
        Err(r) => return r,
    };
    let policies = match state.db.get().await {
        Ok(db) => policies::for_host(&db, &host)
            .await
            .map(|p| p.sets)
            .unwrap_or_default(),
        Err(e) => return database(e).into_response(),
    };
    let mut sets: Vec<String> = info.sets.clone();
    sets.extend(copies.iter().map(|c| c.set.clone()));
    sets.extend(policies.iter().map(|p| p.set.clone()));
    sets.sort();
    sets.dedup();
    let policy = |set: &str| {
        policies
            .iter()
            .find(|p| p.set == set)
            .cloned()
            .unwrap_or_else(|| SetPolicy {
                set: set.to_string(),
                ..Default::default()
            })
    };
    page(
        &format!("Host {host}"),
        Some(&signed),
        html! {
            p { (badge(&info.state)) " · last seen " (when(info.last_seen_ms)) " · agent " (info.agent_version.as_deref().unwrap_or("—")) " · " (info.open_jobs) " open jobs" }
            @if sets.is_empty() { p { "This host's agent has reported no copies yet." } }
            @for set in &sets {
                @let p = policy(set);
                section.set {
                    h2 { "Set " (set) }
                    p.policy {
                        "Schedule: " (p.schedule.as_deref().unwrap_or("the agent's config"))
                        " · verify: " (p.verify_schedule.as_deref().unwrap_or("the agent's config"))
                        " · retention: " (p.retention.as_ref().map(|r| r.to_string()).unwrap_or_else(|| "the agent's config".into()))
                    }
                    @if signed.can(Role::Operator) && info.state == "enrolled" {
                        form.inline method="post" action={"/console/hosts/" (seg(&host)) "/sets/" (seg(set)) "/create"} {
                            input type="hidden" name="csrf" value=(signed.csrf);
                            button.primary type="submit" { "Create a copy" }
                        }
                        " "
                        a.restore.prune href={"/console/hosts/" (seg(&host)) "/sets/" (seg(set)) "/prune"} { "Delete old copies…" }
                    }
                    table.dense {
                        thead { tr { th.num { "ID" } th { "Created" } th { "Origin" } th { "State" } th { "Verified" } th.num { "Freeze window" } th.num { "Size" } th {} } }
                        tbody {
                            @for c in copies.iter().filter(|c| &c.set == set).rev() {
                                tr {
                                    td.num { a href={"/console/hosts/" (host) "/copies/" (c.id)} { (c.id) } }
                                    td { (when(Some(c.created_ms))) }
                                    td { (c.origin.as_str()) }
                                    td { (badge(c.state.as_str())) }
                                    td { (badge(c.verify_state.as_str())) }
                                    td.num { (micros(c.freeze_window_us)) }
                                    td.num { (bytes(c.bytes)) }
                                    td {
                                        @if signed.can(Role::Operator) && c.state.as_str() == "usable" && info.state == "enrolled" {
                                            a.restore href={"/console/hosts/" (host) "/copies/" (c.id) "/restore"} { "Restore…" }
                                        }
                                    }
                                }
                            }
                        }
                    }
                }
            }
        },
    )
    .into_response()
}

pub async fn copy(
    State(state): State<Arc<AppState>>,
    signed: Signed,
    Path((host, id)): Path<(String, i64)>,
) -> Response {
    let copies = match host_copies(&state, &host).await {
        Ok(c) => c,
        Err(r) => return r,
    };
    let Some(c) = copies.into_iter().find(|c| c.id == id) else {
        return gone(&signed, &host, id);
    };
    page(
        &format!("Copy {id} of {} on {host}", c.set),
        Some(&signed),
        html! {
            dl.facts {
                dt { "State" } dd { (badge(c.state.as_str())) " (phase " (c.phase) ")" }
                dt { "Verified" } dd { (badge(c.verify_state.as_str())) }
                dt { "Created" } dd { (when(Some(c.created_ms))) }
                dt { "Finished" } dd { (when(c.finished_ms)) }
                dt { "Origin" } dd { (c.origin.as_str()) }
                dt { "Provider" } dd { (c.provider) }
                dt { "Location" } dd { code { (c.location.as_deref().unwrap_or("—")) } }
                dt { "Freeze window" } dd { (micros(c.freeze_window_us)) }
                dt { "Files" } dd { (c.files) ", " (bytes(c.bytes)) }
                @if let Some(e) = &c.error { dt { "Error" } dd.error { (e) } }
            }
            p.hint { "Phase timings and the file manifest are in the host's own catalog: " code { "shadowcopy show " (id) } " on " (host) "." }
            @if signed.can(Role::Operator) && c.state.as_str() == "usable" {
                p { a.restore href={"/console/hosts/" (host) "/copies/" (id) "/restore"} { "Restore this copy…" } }
            }
        },
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

/// The restore form (also shown again, with messages, when what was sent is refused).
pub struct RestoreForm<'a> {
    pub mode: &'a str,
    pub until: &'a str,
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
    let copies = match host_copies(state, host).await {
        Ok(c) => c,
        Err(r) => return r,
    };
    let Some(c) = copies.into_iter().find(|c| c.id == id) else {
        return gone(signed, host, id);
    };
    let failed = c.verify_state.as_str() == "failed";
    let err = |field: &str| {
        form.errors
            .iter()
            .find(|(f, _)| *f == field)
            .map(|(_, m)| m.clone())
    };
    let body = html! {
        p { "Copy " strong { (id) } " of set " strong { (c.set) } ", made " (when(Some(c.created_ms))) ", " (badge(c.verify_state.as_str())) "." }
        form.restore method="post" action={"/console/hosts/" (host) "/copies/" (id) "/restore"} {
            input type="hidden" name="csrf" value=(signed.csrf);
            fieldset {
                legend { "How far" }
                label { input type="radio" name="mode" value="point-in-time" checked[form.mode == "point-in-time"]; " Point in time: the data as it was when the copy was made" }
                label { input type="radio" name="mode" value="roll-forward" checked[form.mode == "roll-forward"]; " Roll forward: the copy, then the database's logs replayed (for writers that keep them: PostgreSQL's WAL archive, MariaDB's binlogs)" }
                label { "Stop replay at (optional, roll-forward): " input type="text" name="until" value=(form.until) placeholder="2026-12-07 10:15:00+00 or an LSN or a GTID"; }
                @if let Some(m) = err("mode") { p.field-error role="alert" { (m) } }
            }
            h2 { "What will happen" }
            ul.summary {
                li { "The agent on " strong { (host) } " replaces the set's files in place with the copy's." }
                li { "What is there now is kept first as a " em { "pre-restore" } " copy: restoring that copy undoes this." }
                li { "The database must be stopped first: a SQLite file held open, or a PostgreSQL or MariaDB server that is up, is refused (start it again after)." }
            }
            @if failed {
                p.warning { "This copy FAILED its verification. Restoring it may bring back damaged data." }
                label { input type="checkbox" name="force" value="yes"; " I restore it anyway" }
                @if let Some(m) = err("force") { p.field-error role="alert" { (m) } }
            }
            label { input type="checkbox" name="confirm" value="yes"; " I understand the data on " (host) " will be replaced" }
            @if let Some(m) = err("confirm") { p.field-error role="alert" { (m) } }
            @if let Some(m) = err("server") { p.field-error role="alert" { (m) } }
            p { button.danger type="submit" { "Restore" } " " a href={"/console/hosts/" (host)} { "Cancel" } }
        }
    };
    (
        status,
        page(&format!("Restore copy {id} on {host}"), Some(signed), body),
    )
        .into_response()
}

fn job_rows(jobs: &[ServerJob], signed: &Signed) -> Markup {
    html! {
        @for j in jobs {
            tr {
                td.num { a href={"/console/jobs/" (j.id)} { (j.id) } }
                td { a href={"/console/hosts/" (j.host)} { (j.host) } }
                td { (j.kind) }
                td { (j.set) }
                td { (when(Some(j.created_ms))) }
                td { (badge(&j.state)) }
                td { (j.result.as_deref().unwrap_or("")) }
                td {
                    @if j.state == "queued" && signed.can(Role::Operator) {
                        form.inline method="post" action={"/console/jobs/" (j.id) "/cancel"} {
                            input type="hidden" name="csrf" value=(signed.csrf);
                            button type="submit" { "Cancel" }
                        }
                    }
                }
            }
        }
    }
}

pub async fn jobs(State(state): State<Arc<AppState>>, signed: Signed) -> Response {
    let db = match state.db.get().await {
        Ok(db) => db,
        Err(e) => return database(e).into_response(),
    };
    let jobs = match queue::list(&db, None, 200).await {
        Ok(j) => j,
        Err(e) => return database(e).into_response(),
    };
    page(
        "Jobs",
        Some(&signed),
        html! {
            p.hint { "Running and waiting first; each host runs one job at a time, the rest wait." }
            table.dense {
                thead { tr { th.num { "ID" } th { "Host" } th { "Kind" } th { "Set" } th { "Queued" } th { "State" } th { "Result" } th {} } }
                tbody hx-get="/console/jobs/rows" hx-trigger="every 2s" hx-swap="innerHTML" {
                    (job_rows(&jobs, &signed))
                }
            }
        },
    )
    .into_response()
}

/// The job list's rows (what htmx refreshes).
pub async fn job_list_rows(State(state): State<Arc<AppState>>, signed: Signed) -> Response {
    let db = match state.db.get().await {
        Ok(db) => db,
        Err(e) => return database(e).into_response(),
    };
    match queue::list(&db, None, 200).await {
        Ok(jobs) => Html(job_rows(&jobs, &signed).into_string()).into_response(),
        Err(e) => database(e).into_response(),
    }
}

/// Whether a job has ended.
pub fn ended(j: &ServerJob) -> bool {
    matches!(j.state.as_str(), "done" | "failed" | "cancelled")
}

/// A job's state, its phases as its agent reports them, and its bytes: the block the
/// job page's event stream replaces.
pub fn job_state(j: &ServerJob) -> Markup {
    let progress = j.progress.clone().unwrap_or_default();
    html! {
        div #job-state data-state=(j.state) data-events=[(!ended(j)).then(|| format!("/console/jobs/{}/events", j.id))] {
            dl.facts {
                dt { "State" } dd { (badge(&j.state)) }
                dt { "Queued" } dd { (when(Some(j.created_ms))) " by " (j.created_by) }
                dt { "Claimed by the agent" } dd { (when(j.claimed_ms)) }
                dt { "Ended" } dd { (when(j.finished_ms)) }
                @if let Some(r) = &j.result { dt { "Result" } dd.result { (r) } }
                @if let Some(c) = j.copy_id { dt { "Copy" } dd { a href={"/console/hosts/" (j.host) "/copies/" (c)} { "copy " (c) } } }
            }
            @if !progress.phases.is_empty() || progress.bytes.is_some() {
                h2 { "Progress" }
                @if let Some((done, total)) = progress.bytes {
                    p { progress value=(done) max=(total.max(1)) {} " " (bytes(done as i64)) " of " (bytes(total as i64)) }
                }
                table.dense.phases {
                    thead { tr { th { "Phase" } th.num { "Took" } th { "" } } }
                    tbody {
                        @for p in &progress.phases {
                            tr.phase {
                                td { (p.phase) }
                                td.num { (micros(Some(p.took_us as i64))) }
                                td { @if p.ok { (badge("done")) } @else { (badge("failed")) } }
                            }
                        }
                    }
                }
            }
            @if j.kind == "restore" && j.state == "done" {
                p.hint { "To undo it, restore the pre-restore copy it kept (the newest " em { "pre-restore" } " copy of the set)." }
            }
        }
    }
}

async fn load_job(state: &AppState, signed: &Signed, id: i64) -> Result<ServerJob, Response> {
    let db = state
        .db
        .get()
        .await
        .map_err(|e| database(e).into_response())?;
    queue::get(&db, id)
        .await
        .map_err(|e| database(e).into_response())?
        .ok_or_else(|| {
            error_page(
                StatusCode::NOT_FOUND,
                Some(signed),
                &format!("There is no job {id}."),
            )
        })
}

pub async fn job(
    State(state): State<Arc<AppState>>,
    signed: Signed,
    Path(id): Path<i64>,
) -> Response {
    let j = match load_job(&state, &signed, id).await {
        Ok(j) => j,
        Err(r) => return r,
    };
    let running = !matches!(j.state.as_str(), "done" | "failed" | "cancelled");
    let mut body = html! {
        p { (j.kind) " of " (j.set) " on " a href={"/console/hosts/" (j.host)} { (j.host) } }
        (job_state(&j))
    };
    if running {
        // Without JavaScript the page reloads itself until the job has ended.
        body = html! { noscript { meta http-equiv="refresh" content="2"; } (body) };
    }
    page(&format!("Job {id}"), Some(&signed), body).into_response()
}

/// The job page's event stream: the state block again each time it changes (phases
/// arriving, the job ending), then the stream ends.
pub async fn job_events(
    State(state): State<Arc<AppState>>,
    signed: Signed,
    Path(id): Path<i64>,
) -> Response {
    if let Err(r) = load_job(&state, &signed, id).await {
        return r;
    }
    // At most two minutes per stream: the browser then asks again, and its session is
    // checked again.
    let until = tokio::time::Instant::now() + std::time::Duration::from_secs(120);
    let stream = futures_util::stream::unfold(
        (state, None::<String>, false),
        move |(state, last, finished)| async move {
            if finished {
                return None;
            }
            loop {
                if tokio::time::Instant::now() >= until {
                    return None;
                }
                let job = match state.db.get().await {
                    Ok(db) => match queue::get(&db, id).await {
                        Ok(None) => return None,
                        Ok(job) => job,
                        Err(_) => None,
                    },
                    Err(_) => None,
                };
                if let Some(job) = job {
                    let html = job_state(&job).into_string();
                    if last.as_deref() != Some(html.as_str()) {
                        let event = Event::default()
                            .event("state")
                            .data(html.replace('\n', " "));
                        return Some((
                            Ok::<_, std::convert::Infallible>(event),
                            (state, Some(html), ended(&job)),
                        ));
                    }
                }
                tokio::time::sleep(std::time::Duration::from_millis(300)).await;
            }
        },
    );
    Sse::new(stream)
        .keep_alive(KeepAlive::default())
        .into_response()
}

pub fn sign_in_page(error: Option<&str>, name: &str) -> Html<String> {
    page(
        "Sign in",
        None,
        html! {
            form.signin method="post" action="/console/signin" {
                label { "Name " input type="text" name="name" value=(name) required autocomplete="username"; }
                label { "Password " input type="password" name="password" required autocomplete="current-password"; }
                @if let Some(e) = error { p.field-error role="alert" { (e) } }
                button.primary type="submit" { "Sign in" }
            }
        },
    )
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
    let copies: Vec<CopySummary> = host_copies(state, host)
        .await?
        .into_iter()
        .filter(|c| c.set == set)
        .collect();
    let db = state
        .db
        .get()
        .await
        .map_err(|e| database(e).into_response())?;
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
