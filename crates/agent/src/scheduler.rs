//! The agent's one loop: it queues each set's jobs when their schedules fall due and
//! the jobs the API submits, runs them one at a time (each on its own thread, through
//! the engine, behind the queue the CLI takes too), records them in the catalog, renews
//! the running job's heartbeat, and handles signals: SIGTERM stops after the running
//! job, SIGHUP reloads the config. A catalog that cannot be written (a full disk) fails
//! the job at hand, logged; the agent keeps running.

use std::collections::{BTreeMap, VecDeque};
use std::sync::mpsc::{self, RecvTimeoutError};
use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::{DateTime, Local, TimeZone};
use sd_notify::NotifyState;
use shadowcopy_catalog::{Catalog, JobRecord};
use shadowcopy_engine::config::parse_schedule;
use shadowcopy_engine::{Engine, EngineOptions, UsageError};

use crate::events::{AgentEvent, JobProgress};
use crate::job::{self, JobRequest, Outcome};
use crate::schedule::{due, next_slot};
use crate::state::{Command, ScheduleStatus, Shared};

/// What wakes the loop.
pub enum Wake {
    Signal(i32),
    Finished(Box<Finished>),
    Command(Command),
}

/// A job that ended on its thread.
pub struct Finished {
    record: JobRecord,
    outcome: Outcome,
    took: Duration,
}

/// What a schedule queues.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum ScheduledKind {
    Create,
    Verify,
}

impl ScheduledKind {
    fn as_str(self) -> &'static str {
        match self {
            ScheduledKind::Create => "create",
            ScheduledKind::Verify => "verify",
        }
    }

    fn request(self, set: &str) -> JobRequest {
        match self {
            ScheduledKind::Create => JobRequest::Create {
                set: set.to_string(),
            },
            ScheduledKind::Verify => JobRequest::Verify {
                copy: None,
                set: Some(set.to_string()),
                full: false,
            },
        }
    }
}

/// One set's schedule, parsed.
struct Scheduled {
    set: String,
    kind: ScheduledKind,
    expression: String,
    cron: croner::Cron,
}

/// The schedules of every configured set.
fn schedules(engine: &Engine) -> anyhow::Result<Vec<Scheduled>> {
    let mut all = Vec::new();
    for (set, config) in &engine.config.sets {
        for (kind, expression) in [
            (ScheduledKind::Create, &config.schedule),
            (ScheduledKind::Verify, &config.verify_schedule),
        ] {
            if let Some(expression) = expression {
                // Checked when the config was read; parsed again here for its value.
                let cron = parse_schedule(expression.get_ref())
                    .map_err(|e| anyhow::anyhow!("set `{set}`: {e}"))?;
                all.push(Scheduled {
                    set: set.clone(),
                    kind,
                    expression: expression.get_ref().clone(),
                    cron,
                });
            }
        }
    }
    Ok(all)
}

struct Queued {
    record: JobRecord,
    request: JobRequest,
}

struct Running {
    record: JobRecord,
}

/// How often the agent closes the exposures past their TTL.
const EXPOSURE_SWEEP: Duration = Duration::from_secs(30);

/// How often the open jobs' heartbeat is written (the lease, in the engine, is much
/// longer).
const HEARTBEAT_EVERY: Duration = Duration::from_secs(5);

pub struct Scheduler {
    shared: Arc<Shared>,
    options: EngineOptions,
    catalog: Catalog,
    wake: mpsc::Sender<Wake>,
    scheduled: Vec<Scheduled>,
    started: DateTime<Local>,
    last: BTreeMap<(String, ScheduledKind), DateTime<Local>>,
    queue: VecDeque<Queued>,
    running: Option<Running>,
    heartbeat: Instant,
    stopping: bool,
    /// The last sweep of exposures past their TTL (or whose server died), and whether
    /// one is running on its thread.
    swept: Instant,
    sweeping: Arc<std::sync::atomic::AtomicBool>,
}

impl Scheduler {
    /// Reads the schedules and when each last fell due (from the catalog's jobs).
    pub fn new(
        shared: Arc<Shared>,
        options: EngineOptions,
        catalog: Catalog,
        wake: mpsc::Sender<Wake>,
    ) -> anyhow::Result<Scheduler> {
        let scheduled = schedules(&shared.engine())?;
        let mut last = BTreeMap::new();
        for s in &scheduled {
            if let Some(job) = catalog.last_job(&s.set, s.kind.as_str())? {
                if let Some(t) = Local.timestamp_millis_opt(job.created_ms).single() {
                    last.insert((s.set.clone(), s.kind), t);
                }
            }
        }
        Ok(Scheduler {
            shared,
            options,
            catalog,
            wake,
            scheduled,
            started: Local::now(),
            last,
            queue: VecDeque::new(),
            running: None,
            heartbeat: Instant::now(),
            stopping: false,
            swept: Instant::now() - EXPOSURE_SWEEP,
            sweeping: Arc::new(std::sync::atomic::AtomicBool::new(false)),
        })
    }

    pub fn schedules(&self) -> usize {
        self.scheduled.len()
    }

    /// Runs until SIGTERM or SIGINT, and the running job has ended.
    pub fn run(mut self, wakes: mpsc::Receiver<Wake>) -> anyhow::Result<()> {
        let watchdog = sd_notify::watchdog_enabled();
        self.publish();
        loop {
            let now = Local::now();
            if !self.stopping {
                self.queue_due(&now);
                self.start_next();
            }
            if self.stopping && self.running.is_none() {
                break;
            }
            self.heartbeat();
            self.sweep_exposures();
            if watchdog.is_some() {
                notify(&[NotifyState::Watchdog]);
            }
            // Wake for the next slot, an event, or at least every second (the clock may jump).
            let wait = self
                .scheduled
                .iter()
                .filter_map(|s| next_slot(&s.cron, &now))
                .map(|t| (t - Local::now()).to_std().unwrap_or_default())
                .min()
                .unwrap_or(Duration::from_secs(1))
                .min(Duration::from_secs(1));
            match wakes.recv_timeout(wait) {
                Ok(wake) => self.handle(wake),
                Err(RecvTimeoutError::Timeout) => {}
                Err(RecvTimeoutError::Disconnected) => break,
            }
        }
        Ok(())
    }

    /// Every [`EXPOSURE_SWEEP`], on a thread of its own (stopping a server takes a
    /// moment): closes the exposures (`shadowcopy expose`) past their TTL, whose server
    /// died, or whose `expose` died halfway.
    fn sweep_exposures(&mut self) {
        use std::sync::atomic::Ordering;
        if self.swept.elapsed() < EXPOSURE_SWEEP || self.sweeping.swap(true, Ordering::AcqRel) {
            return;
        }
        self.swept = Instant::now();
        let engine = self.shared.engine();
        let sweeping = self.sweeping.clone();
        let catalog_dir = self.catalog.dir().to_path_buf();
        std::thread::spawn(move || {
            let swept = shadowcopy_catalog::Catalog::open_existing(&catalog_dir)
                .map_err(anyhow::Error::from)
                .and_then(|catalog| engine.close_stale_exposures(&catalog));
            match swept {
                Ok(closed) => {
                    for c in closed {
                        tracing::info!(
                            exposure = c.id,
                            copy = c.copy_id,
                            why = c.why,
                            "exposure closed"
                        );
                    }
                }
                Err(e) => tracing::warn!("the sweep of exposures failed: {e:#}"),
            }
            sweeping.store(false, Ordering::Release);
        });
    }

    /// Queues the jobs whose schedules fell due.
    fn queue_due(&mut self, now: &DateTime<Local>) {
        let mut fell_due = Vec::new();
        for s in &self.scheduled {
            let key = (s.set.clone(), s.kind);
            // A clock set back: the earlier time counts as the last one.
            if let Some(l) = self.last.get_mut(&key) {
                if *l > *now {
                    *l = *now;
                }
            }
            let Some(trigger) = due(&s.cron, self.last.get(&key), &self.started, now) else {
                continue;
            };
            self.last.insert(key, *now);
            fell_due.push((s.kind, s.set.clone(), trigger));
        }
        for (kind, set, trigger) in fell_due {
            let waiting = self
                .queue
                .iter()
                .map(|q| &q.record)
                .chain(self.running.as_ref().map(|r| &r.record))
                .any(|r| r.set == set && r.kind == kind.as_str());
            if waiting {
                tracing::warn!(set = %set, job = kind.as_str(), "the previous job is still waiting or running; this slot is skipped");
                continue;
            }
            if let Err(e) = self.enqueue(kind.request(&set), &set, trigger.as_str(), false) {
                tracing::error!(set = %set, job = kind.as_str(), "the job could not be queued: {e:#}");
            }
        }
    }

    /// Records a job as queued and queues it (`front`: before the others).
    fn enqueue(
        &mut self,
        request: JobRequest,
        set: &str,
        trigger: &str,
        front: bool,
    ) -> anyhow::Result<JobRecord> {
        let id = self.catalog.queue_job(request.kind(), set, trigger)?;
        let record = self
            .catalog
            .job(id)?
            .ok_or_else(|| anyhow::anyhow!("job {id} vanished from the catalog"))?;
        tracing::info!(job = id, kind = request.kind(), set, trigger, "job queued");
        self.shared.events.send(AgentEvent::JobQueued {
            job: record.clone(),
        });
        let queued = Queued {
            record: record.clone(),
            request,
        };
        if front {
            self.queue.push_front(queued);
        } else {
            self.queue.push_back(queued);
        }
        self.publish();
        Ok(record)
    }

    /// Starts the first queued job when none runs.
    fn start_next(&mut self) {
        if self.running.is_some() {
            return;
        }
        let Some(job) = self.queue.pop_front() else {
            return;
        };
        let id = job.record.id;
        let record = match self
            .catalog
            .start_job(id)
            .and_then(|()| self.catalog.job(id))
        {
            Ok(Some(record)) => record,
            Ok(None) => {
                tracing::error!(job = id, "job vanished from the catalog; not run");
                return;
            }
            Err(e) => {
                tracing::error!(
                    job = id,
                    "job not run: the catalog could not record its start: {e}"
                );
                self.finish(
                    job.record,
                    Outcome::failed(format!(
                        "not run: the catalog could not record its start: {e}"
                    )),
                    Duration::ZERO,
                );
                return;
            }
        };
        tracing::info!(job = id, kind = %record.kind, set = %record.set, "job started");
        notify(&[NotifyState::Status(&format!(
            "{} of {}",
            record.kind, record.set
        ))]);
        self.shared.events.send(AgentEvent::JobStarted {
            job: record.clone(),
        });
        self.running = Some(Running {
            record: record.clone(),
        });
        self.publish();
        let engine = self.shared.engine();
        let progress = Arc::new(JobProgress::new(id, self.shared.events.clone()));
        let wake = self.wake.clone();
        let spawned = std::thread::Builder::new()
            .name(format!("job-{id}"))
            .spawn(move || {
                let started = Instant::now();
                let outcome = job::run(&engine, &job.request, progress);
                let _ = wake.send(Wake::Finished(Box::new(Finished {
                    record,
                    outcome,
                    took: started.elapsed(),
                })));
            });
        if let Err(e) = spawned {
            let record = self.running.take().map(|r| r.record).expect("just set");
            self.finish(
                record,
                Outcome::failed(format!("not run: no thread for it: {e}")),
                Duration::ZERO,
            );
        }
    }

    /// Renews the leases of this agent's open jobs every few seconds.
    fn heartbeat(&mut self) {
        if self.heartbeat.elapsed() < HEARTBEAT_EVERY {
            return;
        }
        self.heartbeat = Instant::now();
        if let Err(e) = self.catalog.heartbeat_jobs() {
            tracing::warn!("the jobs' heartbeat could not be recorded: {e}");
        }
    }

    fn handle(&mut self, wake: Wake) {
        use signal_hook::consts::SIGHUP;
        match wake {
            Wake::Signal(SIGHUP) => self.reload(),
            Wake::Signal(signal) => {
                tracing::info!(signal, "stopping after the running job");
                notify(&[NotifyState::Stopping]);
                self.stopping = true;
                for job in std::mem::take(&mut self.queue) {
                    self.cancel(job.record, "not run: the agent stopped before its turn");
                }
                self.publish();
            }
            Wake::Finished(f) => {
                let Finished {
                    record,
                    outcome,
                    took,
                } = *f;
                self.running = None;
                let after_create = record.kind == "create" && outcome.ok;
                let created = outcome.copy;
                let set = record.set.clone();
                self.finish(record, outcome, took);
                notify(&[NotifyState::Status("idle")]);
                // A copy made: pushed to the set's archive when it has one, then the
                // set's policy decides which copies stay.
                let engine = self.shared.engine();
                let (policy, pre) = engine.config.retention(&set);
                if after_create && !self.stopping && (policy.is_some() || pre.is_some()) {
                    let prune = JobRequest::Prune {
                        set: Some(set.clone()),
                    };
                    if let Err(e) = self.enqueue(prune, &set, "after-create", true) {
                        tracing::error!(set = %set, "the prune could not be queued: {e:#}");
                    }
                }
                if let (true, false, Some(copy)) = (after_create, self.stopping, created) {
                    if engine.archive_url(None, Some(&set)).is_ok() {
                        let push = JobRequest::Push { copy };
                        if let Err(e) = self.enqueue(push, &set, "after-create", true) {
                            tracing::error!(set = %set, "the push could not be queued: {e:#}");
                        }
                    }
                }
            }
            Wake::Command(Command::Submit(request, trigger, reply)) => {
                let _ = reply.send(self.submit(request, &trigger));
            }
            Wake::Command(Command::Cancel(id, reply)) => {
                let _ = reply.send(self.cancel_queued(id));
            }
        }
    }

    /// A job from the API or the backup server: checked, then queued.
    fn submit(&mut self, request: JobRequest, trigger: &str) -> anyhow::Result<JobRecord> {
        if self.stopping {
            return Err(Stopping.into());
        }
        let set = request.check(&self.shared.engine())?;
        self.enqueue(request, &set, trigger, false)
    }

    fn cancel_queued(&mut self, id: i64) -> anyhow::Result<JobRecord> {
        let Some(at) = self.queue.iter().position(|q| q.record.id == id) else {
            let why = match self.catalog.job(id)? {
                None => format!("there is no job {id}"),
                Some(job) => format!(
                    "job {id} is {}; only a queued job can be cancelled",
                    job.state
                ),
            };
            return Err(UsageError::new(why).into());
        };
        let job = self.queue.remove(at).expect("found above");
        let record = self.cancel(job.record, "cancelled before its turn (by an API call)");
        self.publish();
        Ok(record)
    }

    /// Records a queued job cancelled, and says so.
    fn cancel(&self, mut record: JobRecord, why: &str) -> JobRecord {
        if let Err(e) = self.catalog.cancel_job(record.id, why) {
            tracing::error!(
                job = record.id,
                "the cancellation could not be recorded: {e}"
            );
        }
        tracing::info!(job = record.id, kind = %record.kind, set = %record.set, "{why}");
        record = self.catalog.job(record.id).ok().flatten().unwrap_or(record);
        self.shared.events.send(AgentEvent::JobFinished {
            job: record.clone(),
        });
        record
    }

    /// Records how a job ended, logs it, counts it and says so.
    fn finish(&mut self, record: JobRecord, outcome: Outcome, took: Duration) {
        let id = record.id;
        if let Err(e) = self
            .catalog
            .finish_job(id, outcome.ok, outcome.copy, &outcome.result)
        {
            tracing::error!(job = id, "how the job ended could not be recorded: {e}");
        }
        if outcome.ok {
            tracing::info!(job = id, kind = %record.kind, set = %record.set, result = %outcome.result, "job done");
        } else {
            tracing::error!(job = id, kind = %record.kind, set = %record.set, result = %outcome.result, "job failed");
        }
        let metrics = &self.shared.metrics;
        metrics.job_ran(
            &record.kind,
            &record.set,
            took,
            outcome.created.map(|(window, _)| window),
        );
        if outcome.verify_failed {
            metrics.verification_failed(&record.set);
        }
        let record = match self.catalog.job(id) {
            Ok(Some(r)) => r,
            _ => JobRecord {
                state: if outcome.ok { "done" } else { "failed" }.to_string(),
                result: Some(outcome.result),
                copy_id: outcome.copy,
                ..record
            },
        };
        metrics.job_finished(&record);
        self.shared
            .events
            .send(AgentEvent::JobFinished { job: record });
        self.publish();
    }

    /// SIGHUP: the config read again; a bad one is refused and the old one kept.
    fn reload(&mut self) {
        let reloaded = crate::link::policies::engine(&self.options).and_then(|e| {
            let s = schedules(&e)?;
            Ok((e, s))
        });
        match reloaded {
            Ok((engine, scheduled)) => {
                if engine.catalog_dir != self.shared.engine().catalog_dir {
                    tracing::error!(
                        "the config was not reloaded: it names another catalog ({}); restart the agent to change catalogs",
                        engine.catalog_dir.display()
                    );
                    return;
                }
                self.shared.set_engine(Arc::new(engine));
                self.scheduled = scheduled;
                tracing::info!(schedules = self.scheduled.len(), "config reloaded");
                self.publish();
            }
            Err(e) => tracing::error!("the config was not reloaded, the old one stays: {e:#}"),
        }
    }

    /// The status the API reports, and the queue's depth.
    fn publish(&self) {
        let now = Local::now();
        let schedules = self
            .scheduled
            .iter()
            .map(|s| ScheduleStatus {
                set: s.set.clone(),
                kind: s.kind.as_str().to_string(),
                schedule: s.expression.clone(),
                next_ms: next_slot(&s.cron, &now).map(|t| t.timestamp_millis()),
                last_ms: self
                    .last
                    .get(&(s.set.clone(), s.kind))
                    .map(|t| t.timestamp_millis()),
            })
            .collect();
        self.shared.update_status(|status| {
            status.stopping = self.stopping;
            status.running = self.running.as_ref().map(|r| r.record.clone());
            status.queued = self.queue.iter().map(|q| q.record.clone()).collect();
            status.schedules = schedules;
        });
        self.shared.metrics.set_queue_depth(self.queue.len());
    }
}

impl Outcome {
    fn failed(result: String) -> Outcome {
        Outcome {
            ok: false,
            copy: None,
            result,
            created: None,
            verify_failed: false,
        }
    }
}

/// Tells systemd (when it started us with a notify socket); elsewhere does nothing.
pub fn notify(state: &[NotifyState]) {
    if let Err(e) = sd_notify::notify(state) {
        tracing::warn!("cannot notify systemd: {e}");
    }
}

/// A job submitted while the agent stops (the API answers 503).
#[derive(Debug)]
pub struct Stopping;

impl std::fmt::Display for Stopping {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(
            "the agent is stopping and starts no new jobs; submit it again once the agent is back",
        )
    }
}

impl std::error::Error for Stopping {}
