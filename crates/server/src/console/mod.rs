//! The web console, served by the backup server on its own HTTPS listener under
//! `/console/`: hosts with their agents' state and the age of each set's newest usable
//! copy against its schedule, a host's sets, a set (writers, provider, policy, copies
//! with their log reach), a copy, a guided restore, deleting old copies, jobs;
//! enrolment and revocation for admins. Server-rendered ([`pages`], [`copies`]: maud), forms that
//! work without JavaScript ([`forms`]), a vendored htmx (`assets/htmx.min.js`, 2.0.11,
//! 0BSD) for the parts that refresh. Sign-in with local accounts ([`session`]); every
//! page sends a Content-Security-Policy that allows only the console's own scripts.

pub mod copies;
pub mod forms;
pub mod pages;
pub mod session;

use std::sync::Arc;

use axum::http::{header, HeaderValue};
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use axum::Router;

use crate::state::AppState;

const HTMX: &str = include_str!("../../assets/htmx.min.js");
const CSS: &str = include_str!("../../assets/console.css");
const JS: &str = include_str!("../../assets/console.js");

fn asset(kind: &'static str, body: &'static str) -> Response {
    (
        [
            (header::CONTENT_TYPE, kind),
            (header::CACHE_CONTROL, "public, max-age=3600"),
        ],
        body,
    )
        .into_response()
}

/// The console's routes (merged into the server's).
pub fn router() -> Router<Arc<AppState>> {
    Router::new()
        .route("/", get(|| async { Redirect::to("/console/hosts") }))
        .route("/console", get(|| async { Redirect::to("/console/hosts") }))
        .route(
            "/console/",
            get(|| async { Redirect::to("/console/hosts") }),
        )
        .route(
            "/console/signin",
            get(|| async { pages::sign_in_page(None, "") }).post(forms::sign_in),
        )
        .route("/console/signout", post(forms::sign_out))
        .route("/console/hosts", get(pages::hosts))
        .route("/console/hosts/enroll", post(forms::enroll))
        .route("/console/hosts/{host}", get(pages::host))
        .route("/console/hosts/{host}/revoke", post(forms::revoke))
        .route(
            "/console/hosts/{host}/sets/{set}/create",
            post(forms::create),
        )
        .route("/console/hosts/{host}/sets/{set}", get(copies::set))
        .route(
            "/console/hosts/{host}/sets/{set}/prune",
            get(copies::prune_preview).post(forms::prune),
        )
        .route("/console/hosts/{host}/copies/{id}", get(copies::copy))
        .route(
            "/console/hosts/{host}/copies/{id}/restore",
            get(copies::restore_form).post(forms::restore),
        )
        .route("/console/jobs", get(pages::jobs))
        .route("/console/jobs/rows", get(pages::job_list_rows))
        .route("/console/jobs/{id}", get(pages::job))
        .route("/console/jobs/{id}/events", get(pages::job_events))
        .route("/console/jobs/{id}/cancel", post(forms::cancel))
        .route(
            "/console/assets/htmx.min.js",
            get(|| async { asset("text/javascript; charset=utf-8", HTMX) }),
        )
        .route(
            "/console/assets/console.js",
            get(|| async { asset("text/javascript; charset=utf-8", JS) }),
        )
        .route(
            "/console/assets/console.css",
            get(|| async { asset("text/css; charset=utf-8", CSS) }),
        )
        .layer(axum::middleware::map_response(security_headers))
}

/// What every console answer carries: only the console's own scripts and styles, no
/// framing, no referrer, no sniffing.
async fn security_headers(mut response: Response) -> Response {
    let h = response.headers_mut();
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(
            "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self'; frame-ancestors 'none'; form-action 'self'; base-uri 'none'",
        ),
    );
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    // Pages hold data and the session's form token: not kept once the user has left.
    if !h.contains_key(header::CACHE_CONTROL) {
        h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    }
    response
}
