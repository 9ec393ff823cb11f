//! `shadowcopy-agent`: the daemon that runs the config file's sets on their schedules, a
//! front end on the engine like the CLI. Each set with a `schedule` is copied when it
//! falls due (a slot missed while the agent was down runs once at start), then pruned by
//! its retention policy; a `verify_schedule` verifies its newest copy again. Jobs are
//! recorded in the catalog (`shadowcopy jobs`) and run one at a time, behind the same
//! queue the CLI takes, so the two never race. An HTTP/JSON API on a unix socket shows
//! state, takes jobs, streams events and serves Prometheus metrics. SIGTERM (or SIGINT)
//! stops it after the running job (never with anything frozen), SIGHUP reloads the
//! config (a bad one is refused and the old one kept). Under systemd it says READY,
//! STATUS, STOPPING and pings the watchdog.
//!
//! Modules: [`scheduler`] (the loop), [`job`] (what a job asks and running it),
//! [`api`] (the HTTP routes), [`events`], [`metrics`], [`state`] (what the loop and the
//! API share), [`socket`], [`tls`] (the API on TCP, mutual TLS), [`client`] (calling
//! the API), [`schedule`] (cron slots).

pub mod api;
pub mod client;
pub mod events;
pub mod job;
pub mod link;
pub mod log_push;
pub mod metrics;
pub mod schedule;
pub mod scheduler;
pub mod socket;
pub mod state;
pub mod tls;

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::sync::{mpsc, Arc};

use sd_notify::NotifyState;
use shadowcopy_catalog::Wait;
use shadowcopy_engine::{Engine, EngineOptions};

use crate::events::LogProgress;
use crate::scheduler::{notify, Scheduler, Wake};
use crate::state::Shared;

/// How the agent is started.
#[derive(Clone, Debug, Default)]
pub struct AgentOptions {
    pub engine: EngineOptions,
    /// The API's socket (else `[agent] socket`, else the default for the catalog).
    pub socket: Option<PathBuf>,
    /// The operators' group owning the socket (else `[agent] socket_group`).
    pub socket_group: Option<String>,
    /// The backup server to enrol with (with `enroll_token`) or the one enrolled with.
    pub server: Option<String>,
    /// A one-time token from `shadowcopy server enroll HOST`.
    pub enroll_token: Option<String>,
    /// The name to enrol as (default: this machine's name).
    pub host_name: Option<String>,
}

/// Runs the agent until SIGTERM or SIGINT. Returns an error (before anything runs)
/// when the config is bad, the catalog cannot be opened or the socket not bound.
pub fn run(options: &AgentOptions) -> anyhow::Result<()> {
    use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM};

    // Everything that can be refused is checked before anything is written.
    let engine = Arc::new(link::policies::engine(&options.engine)?);
    let tcp = tls::TlsListen::from_config(&engine.config.agent)?;
    let socket = socket::socket_path(&engine, options.socket.as_deref());
    socket::check(&socket)?;
    let catalog = engine.open_catalog()?;
    let identity = server_identity(&engine, options)?;
    let group = options
        .socket_group
        .clone()
        .or_else(|| engine.config.agent.socket_group.clone());
    let (wake, wakes) = mpsc::channel::<Wake>();
    let shared = Arc::new(Shared::new(engine.clone(), wake.clone(), socket.clone()));
    let scheduler = Scheduler::new(
        shared.clone(),
        options.engine.clone(),
        catalog,
        wake.clone(),
    )?;
    let listener = socket::bind(&socket, group.as_deref())?;
    let tcp = match tcp {
        Some(settings) => {
            let bound = settings.bind()?;
            Some((settings, bound))
        }
        None => None,
    };

    let mut signals = signal_hook::iterator::Signals::new([SIGTERM, SIGINT, SIGHUP])?;
    {
        let wake = wake.clone();
        std::thread::Builder::new()
            .name("signals".into())
            .spawn(move || {
                for signal in signals.forever() {
                    if wake.send(Wake::Signal(signal)).is_err() {
                        break;
                    }
                }
            })?;
    }
    // Interrupted work first: copies and restores a dead process left, and its jobs. When
    // another command holds the queue, its own recovery ran; the first job recovers the rest.
    {
        let catalog = engine.open_catalog()?;
        match engine.take_queue(&catalog, "agent start", "*", Wait::No, &LogProgress) {
            Ok(queue) => drop(queue),
            Err(e) if shadowcopy_engine::error::exit_code(&e) == 3 => {
                tracing::info!(
                    "the queue is busy at start ({e:#}); the first job recovers what is left"
                )
            }
            Err(e) => return Err(e),
        }
        // The last result of each kind of job per set, for the metrics.
        let mut seen = BTreeSet::new();
        for job in catalog.jobs(10_000)? {
            if job.finished_ms.is_some() && seen.insert((job.set.clone(), job.kind.clone())) {
                shared.metrics.job_finished(&job);
            }
        }
    }
    shared.update_status(|s| {
        s.pid = std::process::id();
        s.version = env!("CARGO_PKG_VERSION").to_string();
        s.started_ms = chrono::Utc::now().timestamp_millis();
        s.catalog = engine.catalog_dir.display().to_string();
        s.socket = socket.display().to_string();
        s.listen = tcp
            .as_ref()
            .and_then(|(_, l)| l.local_addr().ok())
            .map(|a| a.to_string());
    });
    serve(listener, tcp, shared.clone())?;
    log_push::spawn(shared.clone())?;
    if let Some(identity) = identity {
        tracing::info!(server = %identity.url, host = %identity.host, "linked to the backup server");
        link::spawn(shared.clone(), identity)?;
    }
    tracing::info!(
        catalog = %engine.catalog_dir.display(),
        socket = %socket.display(),
        schedules = scheduler.schedules(),
        "agent started"
    );
    notify(&[NotifyState::Ready, NotifyState::Status("idle")]);
    let result = scheduler.run(wakes);
    let _ = std::fs::remove_file(&socket);
    tracing::info!("agent stopped");
    result
}

/// The backup server this agent answers to, if any: enrolled now (`--enroll-token`),
/// or before. Refused before anything runs when `--server` names another server than
/// the one enrolled with, or a server this agent has no identity for.
fn server_identity(
    engine: &Engine,
    options: &AgentOptions,
) -> anyhow::Result<Option<link::identity::Identity>> {
    use link::identity::{enroll, this_host, Identity};
    use shadowcopy_engine::UsageError;
    let identity = Identity::load(&engine.catalog_dir)?;
    if let Some(token) = &options.enroll_token {
        let Some(url) = &options.server else {
            return Err(UsageError::new(
                "--enroll-token needs --server URL: the server that made the token",
            )
            .into());
        };
        let host = options.host_name.clone().unwrap_or_else(this_host);
        let (given, _, _) = link::https::parse_url(url)?;
        match &identity {
            // A start command that keeps its token (a unit file, a script) starts again.
            Some(known) if known.url == given && known.host == host => {
                tracing::warn!(
                    server = %known.url,
                    host = %known.host,
                    "enrolled already; the enrolment token is not used (remove it from the start command)"
                );
                return Ok(identity);
            }
            _ => {}
        }
        let identity = enroll(&engine.catalog_dir, url, token, &host)?;
        // The server starts this host's copies afresh: every copy goes to it again.
        let catalog = engine.open_catalog()?;
        catalog.outbox_link()?;
        catalog.outbox_refill()?;
        tracing::info!(server = %identity.url, host = %identity.host, "enrolled");
        return Ok(Some(identity));
    }
    match (&options.server, identity) {
        (None, identity) => Ok(identity),
        (Some(url), None) => Err(UsageError::new(format!(
            "this agent has not enrolled with {url}: have its administrator run `shadowcopy server enroll {}` and start the agent with --enroll-token TOKEN",
            options.host_name.clone().unwrap_or_else(this_host)
        ))
        .into()),
        (Some(url), Some(identity)) => {
            let (given, _, _) = link::https::parse_url(url)?;
            if given != identity.url {
                return Err(UsageError::new(format!(
                    "this agent is enrolled with {}, not {given}; remove {} to enrol with another server",
                    identity.url,
                    identity.dir.display()
                ))
                .into());
            }
            Ok(Some(identity))
        }
    }
}

/// Serves the API on its own thread (a one-thread runtime: the API is small), on the
/// unix socket and, when configured, on TCP with TLS.
fn serve(
    listener: std::os::unix::net::UnixListener,
    tcp: Option<(tls::TlsListen, std::net::TcpListener)>,
    shared: Arc<Shared>,
) -> anyhow::Result<()> {
    listener.set_nonblocking(true)?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .max_blocking_threads(4)
        .build()?;
    std::thread::Builder::new()
        .name("api".into())
        .spawn(move || {
            runtime.block_on(async move {
                let listener = match tokio::net::UnixListener::from_std(listener) {
                    Ok(l) => l,
                    Err(e) => {
                        tracing::error!("the API cannot listen: {e}");
                        return;
                    }
                };
                let app = api::router(shared);
                if let Some((settings, bound)) = tcp {
                    let app = app.clone();
                    tokio::spawn(async move {
                        if let Err(e) = settings.serve(bound, app).await {
                            tracing::error!("the TCP API stopped: {e}");
                        }
                    });
                }
                if let Err(e) = axum::serve(listener, app).await {
                    tracing::error!("the API stopped: {e}");
                }
            })
        })?;
    Ok(())
}
