//! `shadowcopy-agent`: the daemon that runs the config file's sets on their schedules, a
//! front end on the engine like the CLI. Each set with a `schedule` is copied when it
//! falls due (a slot missed while the agent was down runs once at start), then pruned by
//! its retention policy; a `verify_schedule` verifies its newest copy again. Jobs are
//! recorded in the catalog (`shadowcopy jobs`) and run one at a time, behind the same
//! queue the CLI takes, so the two never race. SIGTERM (or SIGINT) stops it after the
//! running job (never with anything frozen), SIGHUP reloads the config (a bad one is
//! refused and the old one kept). Under systemd it says READY, STATUS, STOPPING and
//! pings the watchdog.

pub mod schedule;

use std::collections::{BTreeMap, VecDeque};
use std::sync::mpsc::{self, RecvTimeoutError};
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Local, TimeZone};
use sd_notify::NotifyState;
use shadowcopy_catalog::{Catalog, QueueHolder, Wait};
use shadowcopy_core::{CopyId, CopyState, EventSink, Phase};
use shadowcopy_engine::config::parse_schedule;
use shadowcopy_engine::{
    CreateOptions, Engine, EngineOptions, Progress, PruneOptions, WaitOptions,
};

use crate::schedule::{due, next_slot};

/// What the agent runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum JobKind {
    Create,
    Verify,
    Prune,
}

impl JobKind {
    pub fn as_str(self) -> &'static str {
        match self {
            JobKind::Create => "create",
            JobKind::Verify => "verify",
            JobKind::Prune => "prune",
        }
    }
}

/// One set's schedules, parsed.
struct Scheduled {
    set: String,
    kind: JobKind,
    cron: croner::Cron,
}

/// The schedules of every configured set.
fn schedules(engine: &Engine) -> anyhow::Result<Vec<Scheduled>> {
    let mut all = Vec::new();
    for (set, config) in &engine.config.sets {
        for (kind, expression) in [
            (JobKind::Create, &config.schedule),
            (JobKind::Verify, &config.verify_schedule),
        ] {
            if let Some(expression) = expression {
                // Checked when the config was read; parsed again here for its value.
                let cron = parse_schedule(expression.get_ref())
                    .map_err(|e| anyhow::anyhow!("set `{set}`: {e}"))?;
                all.push(Scheduled {
                    set: set.clone(),
                    kind,
                    cron,
                });
            }
        }
    }
    Ok(all)
}

/// A job waiting for its turn.
struct Queued {
    id: i64,
    kind: JobKind,
    set: String,
}

/// How a job ended: ok or not, the copy it made or verified, a line on what it did.
struct Finished {
    id: i64,
    kind: JobKind,
    set: String,
    ok: bool,
    copy: Option<CopyId>,
    result: String,
}

enum Event {
    Signal(i32),
    Finished(Finished),
}

/// Runs the agent until SIGTERM or SIGINT. Returns an error (before anything runs)
/// when the config is bad or the catalog cannot be opened.
pub fn run(options: &EngineOptions) -> anyhow::Result<()> {
    use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM};

    let mut engine = Arc::new(Engine::new(options)?);
    let mut scheduled = schedules(&engine)?;
    let catalog = engine.open_catalog()?;
    let (tx, rx) = mpsc::channel::<Event>();
    let mut signals = signal_hook::iterator::Signals::new([SIGTERM, SIGINT, SIGHUP])?;
    {
        let tx = tx.clone();
        std::thread::Builder::new()
            .name("signals".into())
            .spawn(move || {
                for signal in signals.forever() {
                    if tx.send(Event::Signal(signal)).is_err() {
                        break;
                    }
                }
            })?;
    }
    // Interrupted work first: copies and restores a dead process left, and its jobs.
    drop(engine.take_queue(
        &catalog,
        "agent start",
        "*",
        Wait::Upto(Duration::from_secs(600)),
        &LogProgress,
    )?);
    let started = Local::now();
    let mut last: BTreeMap<(String, JobKind), DateTime<Local>> = BTreeMap::new();
    for s in &scheduled {
        if let Some(job) = catalog.last_job(&s.set, s.kind.as_str())? {
            if let Some(t) = Local.timestamp_millis_opt(job.created_ms).single() {
                last.insert((s.set.clone(), s.kind), t);
            }
        }
    }
    tracing::info!(
        catalog = %engine.catalog_dir.display(),
        schedules = scheduled.len(),
        "agent started"
    );
    notify(&[NotifyState::Ready, NotifyState::Status("idle")]);
    let watchdog = sd_notify::watchdog_enabled();

    let mut queue: VecDeque<Queued> = VecDeque::new();
    let mut running: Option<(i64, JobKind, String)> = None;
    let mut stopping = false;
    loop {
        let now = Local::now();
        if !stopping {
            for s in &scheduled {
                let key = (s.set.clone(), s.kind);
                let entry = last.get_mut(&key);
                // A clock set back: the earlier time counts as the last one.
                if let Some(l) = entry {
                    if *l > now {
                        *l = now;
                    }
                }
                let Some(trigger) = due(&s.cron, last.get(&key), &started, &now) else {
                    continue;
                };
                last.insert(key, now);
                if queue.iter().any(|q| q.set == s.set && q.kind == s.kind)
                    || running
                        .as_ref()
                        .is_some_and(|(_, k, set)| *k == s.kind && *set == s.set)
                {
                    tracing::warn!(set = %s.set, job = s.kind.as_str(), "the previous job is still waiting or running; this slot is skipped");
                    continue;
                }
                queue.push_back(record(&catalog, s.kind, &s.set, trigger.as_str())?);
            }
        }
        if running.is_none() && !stopping {
            if let Some(job) = queue.pop_front() {
                catalog.start_job(job.id)?;
                tracing::info!(job = job.id, kind = job.kind.as_str(), set = %job.set, "job started");
                notify(&[NotifyState::Status(&format!(
                    "{} of {}",
                    job.kind.as_str(),
                    job.set
                ))]);
                running = Some((job.id, job.kind, job.set.clone()));
                let tx = tx.clone();
                let engine = engine.clone();
                std::thread::Builder::new()
                    .name(format!("job-{}", job.id))
                    .spawn(move || {
                        let finished = run_job(&engine, job);
                        let _ = tx.send(Event::Finished(finished));
                    })?;
            }
        }
        if stopping && running.is_none() {
            break;
        }
        if watchdog.is_some() {
            notify(&[NotifyState::Watchdog]);
        }
        // Wake for the next slot, an event, or at least every second (the clock may jump).
        let wait = scheduled
            .iter()
            .filter_map(|s| next_slot(&s.cron, &now))
            .map(|t| (t - Local::now()).to_std().unwrap_or_default())
            .min()
            .unwrap_or(Duration::from_secs(1))
            .min(Duration::from_secs(1));
        match rx.recv_timeout(wait) {
            Ok(Event::Signal(SIGHUP)) => match Engine::new(options).and_then(|e| {
                let s = schedules(&e)?;
                Ok((e, s))
            }) {
                Ok((e, s)) => {
                    engine = Arc::new(e);
                    scheduled = s;
                    tracing::info!(schedules = scheduled.len(), "config reloaded");
                }
                Err(e) => tracing::error!("the config was not reloaded, the old one stays: {e:#}"),
            },
            Ok(Event::Signal(signal)) => {
                tracing::info!(signal, "stopping after the running job");
                notify(&[NotifyState::Stopping]);
                stopping = true;
                for job in queue.drain(..) {
                    catalog.finish_job(
                        job.id,
                        false,
                        None,
                        "not run: the agent stopped before its turn",
                    )?;
                }
            }
            Ok(Event::Finished(f)) => {
                running = None;
                finish(&catalog, &f)?;
                notify(&[NotifyState::Status("idle")]);
                // A copy made: the set's policy decides which copies stay.
                let (policy, pre) = engine.config.retention(&f.set);
                if f.ok && f.kind == JobKind::Create && (policy.is_some() || pre.is_some()) {
                    queue.push_front(record(&catalog, JobKind::Prune, &f.set, "after-create")?);
                }
            }
            Err(RecvTimeoutError::Timeout) => {}
            Err(RecvTimeoutError::Disconnected) => break,
        }
    }
    tracing::info!("agent stopped");
    Ok(())
}

fn record(catalog: &Catalog, kind: JobKind, set: &str, trigger: &str) -> anyhow::Result<Queued> {
    let id = catalog.queue_job(kind.as_str(), set, trigger)?;
    tracing::info!(job = id, kind = kind.as_str(), set, trigger, "job queued");
    Ok(Queued {
        id,
        kind,
        set: set.to_string(),
    })
}

fn finish(catalog: &Catalog, f: &Finished) -> anyhow::Result<()> {
    catalog.finish_job(f.id, f.ok, f.copy, &f.result)?;
    if f.ok {
        tracing::info!(job = f.id, kind = f.kind.as_str(), set = %f.set, result = %f.result, "job done");
    } else {
        tracing::error!(job = f.id, kind = f.kind.as_str(), set = %f.set, result = %f.result, "job failed");
    }
    Ok(())
}

/// Runs one job through the engine (the caller records it).
fn run_job(engine: &Engine, job: Queued) -> Finished {
    let wait = WaitOptions::default();
    let outcome: anyhow::Result<(Option<CopyId>, String)> = match job.kind {
        JobKind::Create => engine
            .create(
                &CreateOptions {
                    set: Some(job.set.clone()),
                    ..CreateOptions::default()
                },
                &wait,
                Arc::new(LogProgress),
            )
            .map(|r| {
                (
                    Some(r.id),
                    format!(
                        "copy {}: {} files, {} bytes, freeze window {}",
                        r.id,
                        r.files,
                        r.bytes,
                        humantime::format_duration(Duration::from_micros(
                            r.freeze_window.as_micros() as u64
                        ))
                    ),
                )
            }),
        JobKind::Verify => newest_usable(engine, &job.set).and_then(|id| {
            let outcome = engine.verify(id, &wait, &LogProgress)?;
            let line = format!(
                "copy {id} {}: {}",
                if outcome.ok { "passed" } else { "FAILED" },
                outcome.detail.replace('\n', "; ")
            );
            outcome.into_result()?;
            Ok((Some(id), line))
        }),
        JobKind::Prune => engine
            .prune(
                &PruneOptions {
                    set: Some(job.set.clone()),
                    dry_run: false,
                },
                &wait,
                &LogProgress,
            )
            .map(|r| {
                let deleted: Vec<String> = r.deleted.iter().map(|d| d.id.to_string()).collect();
                (
                    None,
                    if deleted.is_empty() {
                        "nothing to delete".to_string()
                    } else {
                        format!("deleted copies {}", deleted.join(", "))
                    },
                )
            }),
    };
    let (ok, copy, result) = match outcome {
        Ok((copy, line)) => (true, copy, line),
        Err(e) => (
            false,
            shadowcopy_engine::error::failed_copy(&e),
            format!("{e:#}"),
        ),
    };
    Finished {
        id: job.id,
        kind: job.kind,
        set: job.set,
        ok,
        copy,
        result,
    }
}

/// The set's newest usable copy (what a scheduled verification checks).
fn newest_usable(engine: &Engine, set: &str) -> anyhow::Result<CopyId> {
    engine
        .list(Some(set))?
        .iter()
        .rev()
        .find(|c| c.state == CopyState::Usable)
        .map(|c| c.id)
        .ok_or_else(|| anyhow::anyhow!("set `{set}` has no usable copy to verify yet"))
}

/// Tells systemd (when it started us with a notify socket); elsewhere does nothing.
fn notify(state: &[NotifyState]) {
    if let Err(e) = sd_notify::notify(state) {
        tracing::warn!("cannot notify systemd: {e}");
    }
}

/// The engine's progress as log lines: one per phase and job, warnings as warnings.
struct LogProgress;

impl EventSink for LogProgress {
    fn copy_started(&self, id: CopyId, set: &str) {
        tracing::info!(copy = id, set, "copy started");
    }
    fn phase_finished(&self, phase: Phase, took: Duration, ok: bool) {
        tracing::info!(
            phase = phase.as_str(),
            took_us = took.as_micros() as u64,
            ok,
            "phase"
        );
    }
    fn warning(&self, message: &str) {
        tracing::warn!("{message}");
    }
    fn note(&self, message: &str) {
        tracing::info!("{message}");
    }
}

impl Progress for LogProgress {
    fn queued_behind(&self, holder: Option<&QueueHolder>, _wait: Wait) {
        match holder {
            Some(h) => tracing::info!(
                command = %h.command, set = %h.set, pid = h.pid,
                "waiting for the queue"
            ),
            None => tracing::info!("waiting for the queue"),
        }
    }
    fn recovered(&self, line: &str) {
        tracing::warn!("{line}");
    }
    fn deleted(&self, id: i64, set: &str, state: CopyState, dry_run: bool) {
        if !dry_run {
            tracing::info!(copy = id, set, state = state.as_str(), "copy deleted");
        }
    }
}
