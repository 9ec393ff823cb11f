//! What the agent tells its watchers while it works: jobs queued, started and finished,
//! the phases and byte progress of the running job. Each event is logged (one line per
//! job and phase) and broadcast to the API's Server-Sent Events stream (`/v1/events`).

use std::sync::Mutex;
use std::time::{Duration, Instant};

use serde::Serialize;
use shadowcopy_catalog::{JobRecord, QueueHolder, Wait};
use shadowcopy_core::{CopyState, EventSink, Phase};
use shadowcopy_engine::Progress;
use tokio::sync::broadcast;

/// One event, as `/v1/events` sends it: the SSE event name is `type`, the data the JSON.
#[derive(Clone, Debug, Serialize, utoipa::ToSchema)]
#[serde(tag = "type", rename_all = "kebab-case")]
pub enum AgentEvent {
    /// A job fell due or was submitted.
    JobQueued { job: JobRecord },
    /// A job began.
    JobStarted { job: JobRecord },
    /// A job ended (`done`, `failed` or `cancelled`).
    JobFinished { job: JobRecord },
    /// The running job's copy got its id.
    CopyStarted { job: i64, copy: i64, set: String },
    /// A phase of the running job ended.
    Phase {
        job: i64,
        phase: String,
        took_us: u64,
        ok: bool,
    },
    /// Bytes of the running job copied, hashed or restored so far (at most 4 a second).
    Progress { job: i64, done: u64, total: u64 },
    /// A warning from the running job.
    Warning { job: i64, message: String },
    /// New logs of the set reached its archive (between copies: `logs_push_every`).
    LogsPushed {
        set: String,
        files: usize,
        bytes: u64,
    },
    /// Sending the set's logs to its archive failed; the next try is a period later.
    LogsPushFailed { set: String, message: String },
}

impl AgentEvent {
    /// The SSE event name.
    pub fn name(&self) -> &'static str {
        match self {
            AgentEvent::JobQueued { .. } => "job-queued",
            AgentEvent::JobStarted { .. } => "job-started",
            AgentEvent::JobFinished { .. } => "job-finished",
            AgentEvent::CopyStarted { .. } => "copy-started",
            AgentEvent::Phase { .. } => "phase",
            AgentEvent::Progress { .. } => "progress",
            AgentEvent::Warning { .. } => "warning",
            AgentEvent::LogsPushed { .. } => "logs-pushed",
            AgentEvent::LogsPushFailed { .. } => "logs-push-failed",
        }
    }
}

/// The broadcast end: events sent with nobody listening are dropped, and a listener too
/// slow to keep up loses the oldest (the stream says so).
#[derive(Clone)]
pub struct Events {
    sender: broadcast::Sender<AgentEvent>,
}

impl Events {
    pub fn new() -> Events {
        Events {
            sender: broadcast::channel(1024).0,
        }
    }

    pub fn send(&self, event: AgentEvent) {
        let _ = self.sender.send(event);
    }

    pub fn subscribe(&self) -> broadcast::Receiver<AgentEvent> {
        self.sender.subscribe()
    }
}

impl Default for Events {
    fn default() -> Self {
        Events::new()
    }
}

/// The running job's progress, from the engine: logged and broadcast.
pub struct JobProgress {
    job: i64,
    events: Events,
    last_bytes: Mutex<Option<Instant>>,
}

/// How often byte progress is broadcast.
const PROGRESS_EVERY: Duration = Duration::from_millis(250);

impl JobProgress {
    pub fn new(job: i64, events: Events) -> JobProgress {
        JobProgress {
            job,
            events,
            last_bytes: Mutex::new(None),
        }
    }
}

impl EventSink for JobProgress {
    fn copy_started(&self, id: i64, set: &str) {
        tracing::info!(job = self.job, copy = id, set, "copy started");
        self.events.send(AgentEvent::CopyStarted {
            job: self.job,
            copy: id,
            set: set.to_string(),
        });
    }
    fn phase_finished(&self, phase: Phase, took: Duration, ok: bool) {
        let took_us = took.as_micros() as u64;
        tracing::info!(job = self.job, phase = phase.as_str(), took_us, ok, "phase");
        self.events.send(AgentEvent::Phase {
            job: self.job,
            phase: phase.as_str().to_string(),
            took_us,
            ok,
        });
    }
    fn bytes(&self, done: u64, total: u64) {
        let mut last = self.last_bytes.lock().unwrap_or_else(|e| e.into_inner());
        let now = Instant::now();
        if done < total && last.is_some_and(|t| now - t < PROGRESS_EVERY) {
            return;
        }
        *last = Some(now);
        self.events.send(AgentEvent::Progress {
            job: self.job,
            done,
            total,
        });
    }
    fn warning(&self, message: &str) {
        tracing::warn!(job = self.job, "{message}");
        self.events.send(AgentEvent::Warning {
            job: self.job,
            message: message.to_string(),
        });
    }
    fn note(&self, message: &str) {
        tracing::info!(job = self.job, "{message}");
    }
}

impl Progress for JobProgress {
    fn queued_behind(&self, holder: Option<&QueueHolder>, _wait: Wait) {
        log_queued_behind(holder);
    }
    fn recovered(&self, line: &str) {
        tracing::warn!("{line}");
    }
    fn deleted(&self, id: i64, set: &str, state: CopyState, dry_run: bool) {
        if !dry_run {
            tracing::info!(
                job = self.job,
                copy = id,
                set,
                state = state.as_str(),
                "copy deleted"
            );
        }
    }
}

/// The agent's own work outside any job (recovery at start): log lines only.
pub struct LogProgress;

impl EventSink for LogProgress {
    fn warning(&self, message: &str) {
        tracing::warn!("{message}");
    }
    fn note(&self, message: &str) {
        tracing::info!("{message}");
    }
}

impl Progress for LogProgress {
    fn queued_behind(&self, holder: Option<&QueueHolder>, _wait: Wait) {
        log_queued_behind(holder);
    }
    fn recovered(&self, line: &str) {
        tracing::warn!("{line}");
    }
}

fn log_queued_behind(holder: Option<&QueueHolder>) {
    match holder {
        Some(h) => tracing::info!(
            command = %h.command, set = %h.set, pid = h.pid,
            "waiting for the queue"
        ),
        None => tracing::info!("waiting for the queue"),
    }
}
