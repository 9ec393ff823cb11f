//! The console's pages, rendered on the server (maud: HTML checked when compiled), each
//! readable with JavaScript off: the layout and the small renderings every page shares,
//! hosts, a host's sets, jobs, a job, sign-in (a set, its copies and the restore form
//! are in [`super::copies`]). With JavaScript, a running job's phases stream in
//! (Server-Sent Events), htmx refreshes the job list, and times are shown in the
//! browser's zone (UTC on hover); without it, a running job's page reloads itself.

use std::sync::Arc;

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{Html, IntoResponse, Response};
use maud::{html, Markup, DOCTYPE};
use shadowcopy_agent::link::protocol::{path_segment as seg, HostInfo, ServerJob};

use super::copies::{host_report, schedule_of, set_status, set_totals};
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

pub(super) fn micros(us: Option<i64>) -> String {
    match us {
        None => "—".into(),
        Some(us) if us >= 1_000_000 => format!("{:.2} s", us as f64 / 1e6),
        Some(us) if us >= 1_000 => format!("{:.1} ms", us as f64 / 1e3),
        Some(us) => format!("{us} µs"),
    }
}

/// How old `ms` is, in words.
pub(super) fn age(ms: i64) -> String {
    let secs = (chrono::Utc::now().timestamp_millis() - ms).max(0) / 1000;
    match secs {
        s if s < 120 => format!("{s} s"),
        s if s < 7200 => format!("{} min", s / 60),
        s if s < 172_800 => format!("{} h", s / 3600),
        s => format!("{} d", s / 86_400),
    }
}

/// A state as a word with its colour (never the colour alone).
pub(super) fn badge(word: &str) -> Markup {
    let class = match word {
        "usable" | "passed" | "done" | "enrolled" | "fresh" | "keep" | "stable" | "ready"
        | "archived" | "complete" => "ok",
        "queued" | "claimed" | "running" | "in-progress" | "not-verified" | "late" | "waiting"
        | "not archived" => "busy",
        "failed" | "lost" | "revoked" | "stale" | "cancelled" | "goes" | "holes" => "bad",
        _ => "plain",
    };
    html! { span class={"badge " (class)} { (word) } }
}

/// How the newest usable copy's age stands against the set's schedule.
pub(super) fn freshness(newest_ms: Option<i64>, schedule: Option<&str>) -> Markup {
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

pub(super) async fn host_info(
    state: &AppState,
    signed: &Signed,
    host: &str,
) -> Result<HostInfo, Response> {
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
    // A set's schedule: the server's policy, else the agent's config as it last reported.
    let policies = match db
        .query(
            "SELECT host, set_name, schedule FROM set_policies WHERE schedule IS NOT NULL
             UNION ALL
             SELECT h.name, s->>'set', s->>'schedule'
               FROM hosts h, jsonb_array_elements(h.report->'sets') s
              WHERE s->>'schedule' IS NOT NULL
                AND NOT EXISTS (SELECT 1 FROM set_policies p
                                 WHERE p.host = h.name AND p.set_name = s->>'set'
                                   AND p.schedule IS NOT NULL)",
            &[],
        )
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
    let totals = match set_totals(&state, &host).await {
        Ok(t) => t,
        Err(r) => return r,
    };
    let report = match host_report(&state, &host).await {
        Ok(r) => r,
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
    sets.extend(totals.iter().map(|(set, _, _)| set.clone()));
    sets.extend(policies.iter().map(|p| p.set.clone()));
    sets.sort();
    sets.dedup();
    let can_act = signed.can(Role::Operator) && info.state == "enrolled";
    page(
        &format!("Host {host}"),
        Some(&signed),
        html! {
            p { (badge(&info.state)) " · last seen " (when(info.last_seen_ms)) " · agent " (info.agent_version.as_deref().unwrap_or("—")) " · " (info.open_jobs) " open jobs" }
            @if sets.is_empty() { p { "This host's agent has reported no sets or copies yet." } }
            @else {
                table.dense.sets {
                    thead { tr { th { "Set" } th { "Writers" } th { "Provider" } th { "Schedule" } th { "Newest usable copy" } th.num { "Copies" } @if can_act { th {} } } }
                    tbody {
                        @for set in &sets {
                            @let status = set_status(report.as_ref(), set);
                            @let policy = policies.iter().find(|p| &p.set == set);
                            @let (count, newest) = totals.iter().find(|(s, _, _)| s == set).map_or((0, None), |(_, n, newest)| (*n, *newest));
                            @let schedule = schedule_of(policy, status);
                            tr {
                                td { a href={"/console/hosts/" (seg(&host)) "/sets/" (seg(set))} { (set) } }
                                td {
                                    @match status {
                                        Some(s) => { @for w in &s.writers { div { (w.writer) " " (badge(&w.state)) } } }
                                        None => { span.hint { "not reported yet" } }
                                    }
                                }
                                td {
                                    @if let Some(s) = status {
                                        @if s.provider_state.ok { (s.provider_state.detail) } @else { (badge("failed")) }
                                    }
                                }
                                td { code { (schedule.as_deref().unwrap_or("—")) } }
                                td { (freshness(newest, schedule.as_deref())) }
                                td.num { (count) }
                                @if can_act {
                                    td {
                                        form.inline method="post" action={"/console/hosts/" (seg(&host)) "/sets/" (seg(set)) "/create"} {
                                            input type="hidden" name="csrf" value=(signed.csrf);
                                            button.primary type="submit" { "Create a copy" }
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
                @match j.request.get("to").and_then(|t| t.as_str()) {
                    Some(to) => { p.hint { "The copy's files are in " code { (to) } " on " (j.host) "; nothing live was changed." } }
                    None => { p.hint { "To undo it, restore the pre-restore copy it kept (the newest " em { "pre-restore" } " copy of the set)." } }
                }
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
