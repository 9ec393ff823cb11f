//! What the scheduler and the API share: the engine (replaced on reload), the status the
//! API reports, the event stream, the metrics, and the way in for submitted work.

use std::path::PathBuf;
use std::sync::mpsc;
use std::sync::{Arc, Mutex, RwLock};

use serde::{Deserialize, Serialize};
use shadowcopy_catalog::JobRecord;
use shadowcopy_engine::Engine;
use tokio::sync::oneshot;

use crate::events::Events;
use crate::job::JobRequest;
use crate::metrics::Metrics;

/// What the API answers for `/v1/status` and `shadowcopy agent status` prints.
#[derive(Clone, Debug, Default, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Status {
    pub pid: u32,
    pub version: String,
    pub started_ms: i64,
    pub catalog: String,
    pub socket: String,
    /// The TCP address the API also listens on (TLS), if configured.
    pub listen: Option<String>,
    /// SIGTERM received: no new jobs start; the running one finishes.
    pub stopping: bool,
    pub running: Option<JobRecord>,
    /// Waiting for their turn, first to run first.
    pub queued: Vec<JobRecord>,
    pub schedules: Vec<ScheduleStatus>,
}

/// One schedule of one set.
#[derive(Clone, Debug, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ScheduleStatus {
    pub set: String,
    /// `create` or `verify`.
    pub kind: String,
    /// The cron expression.
    pub schedule: String,
    /// When it next falls due (Unix milliseconds).
    pub next_ms: Option<i64>,
    /// When it last fell due.
    pub last_ms: Option<i64>,
}

/// What the API asks of the scheduler.
pub enum Command {
    /// Queue a job (`trigger`: who asked, `api` or `server:ID`); the reply is its
    /// record, or why it was refused.
    Submit(
        JobRequest,
        String,
        oneshot::Sender<anyhow::Result<JobRecord>>,
    ),
    /// Take a queued job out of the queue; the reply is its record, or why not.
    Cancel(i64, oneshot::Sender<anyhow::Result<JobRecord>>),
}

/// Everything the API needs; one per agent.
pub struct Shared {
    engine: RwLock<Arc<Engine>>,
    pub status: Mutex<Status>,
    pub events: Events,
    pub metrics: Metrics,
    pub commands: mpsc::Sender<crate::scheduler::Wake>,
    pub socket: PathBuf,
}

impl Shared {
    pub fn new(
        engine: Arc<Engine>,
        commands: mpsc::Sender<crate::scheduler::Wake>,
        socket: PathBuf,
    ) -> Shared {
        Shared {
            engine: RwLock::new(engine),
            status: Mutex::new(Status::default()),
            events: Events::new(),
            metrics: Metrics::new(),
            commands,
            socket,
        }
    }

    /// The engine as the config now is.
    pub fn engine(&self) -> Arc<Engine> {
        self.engine
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    pub fn set_engine(&self, engine: Arc<Engine>) {
        *self.engine.write().unwrap_or_else(|e| e.into_inner()) = engine;
    }

    pub fn status(&self) -> Status {
        self.status
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    pub fn update_status(&self, f: impl FnOnce(&mut Status)) {
        f(&mut self.status.lock().unwrap_or_else(|e| e.into_inner()));
    }
}
