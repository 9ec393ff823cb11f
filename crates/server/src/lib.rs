//! `shadowcopy-server`: the backup server (`shadowcopy server`). It keeps the central
//! catalog in PostgreSQL (schema migrations run at start): the hosts and how each
//! enrolled, the copies each agent holds (sent from the agent's outbox), a job queue,
//! operators' API tokens and an audit log. Agents connect out to it over HTTPS with
//! mutual TLS (a certificate its own CA signed at enrolment, bound to the host name)
//! and long-poll for their jobs; the server never connects to an agent. Operators call
//! it with bearer tokens (the CLI's `--server`).
//!
//! Modules: [`db`] (pool, migrations), [`ca`] (the CA, certificates), [`listen`]
//! (TLS, the caller's certificate), [`auth`] (agents and operators, roles), [`agents`]
//! and [`operators`] (the routes), [`queue`] (jobs, leases, the reaper), [`policies`]
//! (schedules and retention per host and set), [`admin`] (enrolment, revocation,
//! tokens, audit), [`console`] (the web console), [`state`].

pub mod admin;
pub mod agents;
pub mod auth;
pub mod ca;
pub mod console;
pub mod db;
pub mod listen;
pub mod operators;
pub mod policies;
pub mod queue;
pub mod state;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::DefaultBodyLimit;
use axum::http::StatusCode;
use axum::routing::{get, post};
use axum::Router;
use shadowcopy_agent::api::ApiError;
use shadowcopy_engine::UsageError;

use crate::auth::Role;
use crate::ca::Authority;
use crate::state::AppState;

/// Where the server keeps its CA when run as root.
pub const SYSTEM_STATE_DIR: &str = "/var/lib/shadowcopy-server";

/// How the server is started (and where the administrator's commands find it).
#[derive(Clone, Debug)]
pub struct ServerOptions {
    /// The central catalog: a PostgreSQL URL.
    pub database: String,
    /// The CA's directory.
    pub state_dir: PathBuf,
    pub listen: SocketAddr,
    /// The names (DNS names or addresses) agents and operators reach the server by;
    /// its certificate carries them.
    pub names: Vec<String>,
    /// How long a claimed job stays its agent's without a heartbeat.
    pub job_lease: Duration,
    /// How long an agent's certificate is valid (`ca::AGENT_CERT_LIFETIME`; shorter in
    /// tests of renewal).
    pub agent_cert_lifetime: Duration,
}

/// Request bodies over this are refused (413); a sync may carry more.
const BODY_LIMIT: usize = 64 * 1024;
const SYNC_BODY_LIMIT: usize = 8 * 1024 * 1024;
/// The largest report of a host's sets.
const REPORT_BODY_LIMIT: usize = 4 * 1024 * 1024;

/// The database cannot be used: logged in full, answered briefly (503).
pub(crate) fn database(e: impl std::fmt::Display) -> ApiError {
    tracing::error!("the central catalog failed: {e}");
    ApiError::new(
        StatusCode::SERVICE_UNAVAILABLE,
        1,
        "the central catalog cannot be reached; try again",
    )
}

/// An error of an operation for its caller: the database's own in the log only (503),
/// the rest (bad input, refusals) as they are.
pub(crate) fn api_error(e: anyhow::Error) -> ApiError {
    if e.chain()
        .any(|c| c.is::<tokio_postgres::Error>() || c.is::<deadpool_postgres::PoolError>())
    {
        database(format!("{e:#}"))
    } else {
        ApiError::from(e)
    }
}

/// `https://NAME:PORT` by the first name the server's certificate carries (an IPv6
/// address in brackets).
fn public_url(names: &[String], port: u16) -> String {
    let name = names.first().map(String::as_str).unwrap_or("localhost");
    if name.contains(':') {
        format!("https://[{name}]:{port}")
    } else {
        format!("https://{name}:{port}")
    }
}

/// The routes.
pub fn router(state: Arc<AppState>) -> Router {
    Router::new()
        .route("/v1/enroll", post(agents::enroll))
        .route(
            "/v1/agent/sync",
            post(agents::sync).layer(DefaultBodyLimit::max(SYNC_BODY_LIMIT)),
        )
        .route(
            "/v1/agent/report",
            post(agents::report).layer(DefaultBodyLimit::max(REPORT_BODY_LIMIT)),
        )
        .route("/v1/agent/policies", get(agents::policies))
        .route("/v1/agent/renew", post(agents::renew))
        .route("/v1/agent/jobs/open", get(agents::open))
        .route("/v1/agent/jobs/next", post(agents::next))
        .route("/v1/agent/jobs/{id}/heartbeat", post(agents::heartbeat))
        .route("/v1/agent/jobs/{id}/finish", post(agents::finish))
        .route("/v1/hosts", get(operators::hosts))
        .route("/v1/hosts/{host}/copies", get(operators::copies))
        .route("/v1/hosts/{host}/jobs", post(operators::submit))
        .route(
            "/v1/hosts/{host}/enroll-token",
            post(operators::enroll_token),
        )
        .route("/v1/hosts/{host}/revoke", post(operators::revoke))
        .route(
            "/v1/hosts/{host}/policies",
            axum::routing::put(policies::put),
        )
        .route(
            "/v1/hosts/{host}/policies/{set}",
            axum::routing::delete(policies::remove),
        )
        .route("/v1/policies", get(policies::list))
        .route("/v1/jobs", get(operators::jobs))
        .route(
            "/v1/jobs/{id}",
            get(operators::job).delete(operators::cancel),
        )
        .route("/v1/audit", get(operators::audit))
        .merge(console::router())
        .fallback(|| async {
            ApiError::bad_input(StatusCode::NOT_FOUND, "no such route; the API is under /v1")
        })
        .layer(DefaultBodyLimit::max(BODY_LIMIT))
        .with_state(state)
}

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?)
}

/// The CA and the migrated database, as every command needs them. Only the server
/// (`create_ca`) makes a CA; an administrator's command on a state directory without
/// one is refused (its tokens would name a CA no server has).
async fn open(
    options: &ServerOptions,
    pool_size: usize,
    create_ca: bool,
) -> anyhow::Result<(deadpool_postgres::Pool, Authority)> {
    let dir = ca::state_dir(&options.state_dir)?;
    let authority = if create_ca {
        Authority::load_or_create(&dir)?
    } else {
        Authority::load(&dir)?.ok_or_else(|| {
            UsageError::new(format!(
                "{} holds no CA: the server has not started with this state directory; give the server's --state (or start `shadowcopy server` once)",
                dir.display()
            ))
        })?
    };
    let pool = db::pool(&options.database, pool_size)?;
    db::migrate(&pool).await?;
    Ok((pool, authority))
}

/// Runs the server until SIGTERM or SIGINT.
pub fn run(options: &ServerOptions) -> anyhow::Result<()> {
    use signal_hook::consts::{SIGINT, SIGTERM};
    if options.agent_cert_lifetime < Duration::from_secs(30) {
        return Err(UsageError::new("--agent-cert-lifetime must be at least 30 s").into());
    }
    if options.job_lease < Duration::from_secs(3) {
        return Err(UsageError::new(
            "--job-lease must be at least 3 s (agents renew it every third of it, at most every 5 s; 60 s is the default)",
        )
        .into());
    }
    let runtime = runtime()?;
    let mut signals = signal_hook::iterator::Signals::new([SIGTERM, SIGINT])?;
    runtime.block_on(async {
        let (pool, authority) = open(options, 16, true).await?;
        let tls = authority.server_config(&options.names)?;
        let listener = tokio::net::TcpListener::bind(options.listen)
            .await
            .map_err(|e| anyhow::anyhow!("cannot listen on {}: {e}", options.listen))?;
        let state = Arc::new(AppState {
            db: pool,
            ca: authority,
            lease: options.job_lease,
            agent_cert_lifetime: options.agent_cert_lifetime,
            url: public_url(&options.names, listener.local_addr()?.port()),
            queued: Default::default(),
            enrol_refusals: Default::default(),
        });
        tokio::spawn(reaper(state.clone()));
        let app = router(state.clone());
        tokio::spawn(listen::serve(listener, tls, app));
        tracing::info!(
            listen = %options.listen,
            names = ?options.names,
            ca = %options.state_dir.join(ca::CA_DIR).join("ca.pem").display(),
            "server started"
        );
        let (stop_tx, stop_rx) = tokio::sync::oneshot::channel();
        std::thread::spawn(move || {
            if let Some(signal) = signals.forever().next() {
                let _ = stop_tx.send(signal);
            }
        });
        let signal = stop_rx.await.unwrap_or(SIGTERM);
        tracing::info!(signal, "server stopping");
        anyhow::Ok(())
    })?;
    // In-flight calls end with the runtime; agents retry what did not finish.
    runtime.shutdown_timeout(Duration::from_secs(2));
    Ok(())
}

/// Marks lost the jobs whose agents stopped renewing their lease.
async fn reaper(state: Arc<AppState>) {
    loop {
        tokio::time::sleep(Duration::from_secs(1)).await;
        let Ok(db) = state.db.get().await else {
            continue;
        };
        match queue::reap(&db).await {
            Ok(lost) => {
                for job in lost {
                    tracing::warn!(job = job.id, host = %job.host, kind = %job.kind, "job lost: its agent stopped renewing the lease");
                }
            }
            Err(e) => tracing::warn!("the reaper could not look for lost jobs: {e}"),
        }
    }
}

/// Who runs an administrator's command on the server's machine, for the audit log.
fn local_actor() -> String {
    let uid = rustix::process::getuid().as_raw();
    let name = std::env::var("SUDO_USER")
        .or_else(|_| std::env::var("USER"))
        .unwrap_or_else(|_| format!("uid {uid}"));
    format!("local {name}")
}

/// `shadowcopy server enroll HOST`: a one-time token for HOST, valid for `ttl`.
pub fn enroll_token(options: &ServerOptions, host: &str, ttl: Duration) -> anyhow::Result<String> {
    runtime()?.block_on(async {
        let (pool, authority) = open(options, 1, false).await?;
        let mut db = pool.get().await?;
        admin::enroll_token(&mut db, &authority, host, ttl, &local_actor()).await
    })
}

/// `shadowcopy server revoke HOST`.
pub fn revoke(options: &ServerOptions, host: &str) -> anyhow::Result<()> {
    runtime()?.block_on(async {
        let (pool, _) = open(options, 1, false).await?;
        let mut db = pool.get().await?;
        admin::revoke(&mut db, host, &local_actor()).await
    })
}

/// `shadowcopy server token create NAME --role ROLE`.
pub fn create_token(options: &ServerOptions, name: &str, role: Role) -> anyhow::Result<String> {
    runtime()?.block_on(async {
        let (pool, authority) = open(options, 1, false).await?;
        let mut db = pool.get().await?;
        admin::create_token(&mut db, &authority, name, role, &local_actor()).await
    })
}

/// `shadowcopy server token revoke NAME`.
pub fn revoke_token(options: &ServerOptions, name: &str) -> anyhow::Result<()> {
    runtime()?.block_on(async {
        let (pool, _) = open(options, 1, false).await?;
        let mut db = pool.get().await?;
        admin::revoke_token(&mut db, name, &local_actor()).await
    })
}

/// `shadowcopy server user create NAME --role ROLE` (the password from stdin).
pub fn create_user(
    options: &ServerOptions,
    name: &str,
    password: &str,
    role: Role,
) -> anyhow::Result<()> {
    runtime()?.block_on(async {
        let (pool, _) = open(options, 1, false).await?;
        let mut db = pool.get().await?;
        console::session::create_user(&mut db, name, password, role, &local_actor()).await
    })
}

/// `shadowcopy server user disable NAME`.
pub fn disable_user(options: &ServerOptions, name: &str) -> anyhow::Result<()> {
    runtime()?.block_on(async {
        let (pool, _) = open(options, 1, false).await?;
        let mut db = pool.get().await?;
        console::session::disable_user(&mut db, name, &local_actor()).await
    })
}
