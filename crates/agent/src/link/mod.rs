//! The agent's link to its backup server (`shadowcopy agent --server URL`): it sends
//! the catalog's outbox (every change to a copy) and runs the jobs the server queues
//! for this host, one at a time, through the agent's own queue. The agent never waits
//! on the server: schedules, copies and the local catalog go on while the server is
//! unreachable, and the link catches up when it returns (nothing is lost: a change
//! leaves the outbox only once the server has applied it; a job's end is reported
//! until the server takes it, even after the server gave the job up as lost).
//!
//! The server's schedules and retention for this host's sets ([`policies`]) are fetched
//! when their version changes, kept on disk, and put in force by a reload. The sets'
//! state now (engine `status`: writers, provider, log reach, the archive's copies) goes
//! to the server as a report, for its console.
//!
//! Modules: [`identity`] (enrolment, the key and certificates), [`https`] (calling the
//! server), [`protocol`] (what both ends say), [`policies`].

pub mod https;
pub mod identity;
pub mod policies;
pub mod protocol;

use std::sync::Arc;
use std::time::Duration;

use shadowcopy_catalog::{Catalog, JobRecord};
use tokio::sync::oneshot;

use crate::events::AgentEvent;
use crate::link::https::ServerClient;
use crate::link::identity::Identity;
use crate::link::protocol::{
    HostReport, JobFinish, JobHeartbeat, JobProgress, PhaseDone, Policies, ServerJob, SyncRequest,
    SyncResponse, LONG_POLL_MAX_SECS,
};
use crate::scheduler::Wake;
use crate::state::{Command, Shared};

/// How many outbox changes go in one call.
const SYNC_BATCH: usize = 200;
/// How often the outbox is looked at, and the server told the agent is alive.
const SYNC_EVERY: Duration = Duration::from_secs(1);
const ALIVE_EVERY: Duration = Duration::from_secs(10);
/// How often a running job's lease is renewed.
const HEARTBEAT_EVERY: Duration = Duration::from_secs(5);
/// How long one call may take (a job poll: its wait plus this).
const CALL_TIMEOUT: Duration = Duration::from_secs(15);
/// The longest pause between attempts while the server cannot be reached.
const MAX_BACKOFF: Duration = Duration::from_secs(15);
/// How often the sets' report is built and sent when nothing prompts it, how long after
/// a prompt (copies changed, policies taken) it waits for more to settle, and the least
/// time between two builds.
const REPORT_EVERY: Duration = Duration::from_secs(300);
const REPORT_SETTLE: Duration = Duration::from_secs(2);
const REPORT_GAP: Duration = Duration::from_secs(20);

/// Starts the link on a thread of its own.
pub fn spawn(shared: Arc<Shared>, identity: Identity) -> anyhow::Result<()> {
    let client = identity.client()?;
    let tag = identity.server_tag()?;
    // From now on every change to a copy goes to the outbox; a catalog linked for the
    // first time puts every copy it holds in it.
    let catalog = shared.engine().open_catalog()?;
    if catalog.outbox_link()? {
        catalog.outbox_refill()?;
    }
    drop(catalog);
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    std::thread::Builder::new()
        .name("server-link".into())
        .spawn(move || {
            runtime.block_on(async move {
                let link = Link {
                    shared,
                    client: std::sync::Mutex::new(client),
                    host: identity.host.clone(),
                    identity: std::sync::Mutex::new(identity),
                    tag,
                    reset: std::sync::atomic::AtomicBool::new(false),
                    report_due: tokio::sync::Notify::new(),
                };
                tokio::join!(link.sync_loop(), link.job_loop(), link.report_loop());
            })
        })?;
    Ok(())
}

struct Link {
    shared: Arc<Shared>,
    /// The client with the current certificate (replaced when it is renewed).
    client: std::sync::Mutex<ServerClient>,
    identity: std::sync::Mutex<Identity>,
    host: String,
    /// The server's short name, in the triggers of the agent's jobs for its jobs.
    tag: String,
    /// The next sync asks the server to forget this host's copies first (every copy is
    /// in the outbox again).
    reset: std::sync::atomic::AtomicBool,
    /// Something the sets' report shows changed: build and send it again soon.
    report_due: tokio::sync::Notify,
}

/// Pauses that grow while the server stays away, and logs an outage once.
struct Backoff {
    what: &'static str,
    pause: Duration,
    down: bool,
}

impl Backoff {
    fn new(what: &'static str) -> Backoff {
        Backoff {
            what,
            pause: Duration::from_millis(500),
            down: false,
        }
    }

    fn ok(&mut self) {
        if self.down {
            tracing::info!("the backup server answers again ({})", self.what);
        }
        self.down = false;
        self.pause = Duration::from_millis(500);
    }

    async fn failed(&mut self, e: &anyhow::Error) {
        if !self.down {
            tracing::warn!(
                "the backup server cannot be reached ({}): {e:#}; retrying",
                self.what
            );
        } else {
            tracing::debug!("the backup server is still away ({}): {e:#}", self.what);
        }
        self.down = true;
        tokio::time::sleep(self.pause).await;
        self.pause = (self.pause * 2).min(MAX_BACKOFF);
    }
}

impl Link {
    fn client(&self) -> ServerClient {
        self.client
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Renews the agent's certificate once it is two thirds of the way through its life
    /// (logged, and tried again at the next sync if the server refuses or is away).
    async fn renew_if_due(&self) {
        let identity = self
            .identity
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        if !identity.needs_renewal(chrono::Utc::now().timestamp_millis()) {
            return;
        }
        let renewed = match identity.renew(&self.client()).await {
            Ok(renewed) => renewed,
            Err(e) => {
                tracing::warn!(
                    "the agent's certificate could not be renewed: {e:#}; trying again later"
                );
                return;
            }
        };
        match renewed.client() {
            Ok(client) => {
                *self.client.lock().unwrap_or_else(|e| e.into_inner()) = client;
                tracing::info!(
                    until = %chrono::DateTime::from_timestamp_millis(renewed.not_after_ms)
                        .map(|t| t.to_rfc3339())
                        .unwrap_or_default(),
                    "the agent's certificate renewed"
                );
                *self.identity.lock().unwrap_or_else(|e| e.into_inner()) = renewed;
            }
            Err(e) => {
                // Kept on disk and proven in a call: only this process's copy failed.
                tracing::error!("the renewed certificate cannot be loaded: {e:#}");
                *self.identity.lock().unwrap_or_else(|e| e.into_inner()) = renewed;
            }
        }
    }

    fn catalog(&self) -> anyhow::Result<Catalog> {
        self.shared.engine().open_catalog()
    }

    /// Sends the outbox until it is empty; returns how many changes the server took,
    /// and the version of this host's policies. When the server has applied numbers
    /// this catalog never gave (it was restored from a backup, or made anew), every copy
    /// goes in the outbox again and the next call asks the server to start over.
    async fn sync_once(&self, catalog: &Catalog) -> anyhow::Result<(usize, i64)> {
        use std::sync::atomic::Ordering;
        let mut sent = 0;
        // Halved when the server finds a batch too large (copies with huge facts), so
        // the outbox never sticks on one batch.
        let mut batch = SYNC_BATCH;
        loop {
            let reset = self.reset.load(Ordering::SeqCst);
            // Read on a blocking thread (a copy of many files takes a while to sum up):
            // heartbeats and polls on this thread go on meanwhile.
            let engine = self.shared.engine();
            let changes = tokio::task::spawn_blocking(move || {
                anyhow::Ok(engine.open_catalog()?.outbox_after(0, batch)?)
            })
            .await??;
            let n = changes.len();
            let last = changes.last().map(|c| c.seq);
            let answer: SyncResponse = match self
                .client()
                .json(
                    "POST",
                    "/v1/agent/sync",
                    Some(&SyncRequest {
                        version: env!("CARGO_PKG_VERSION").to_string(),
                        sets: self.shared.engine().config.sets.keys().cloned().collect(),
                        reset,
                        changes,
                    }),
                    CALL_TIMEOUT,
                )
                .await
            {
                Ok(answer) => answer,
                Err(e)
                    if batch > 1
                        && e.downcast_ref::<https::Refused>()
                            .is_some_and(|r| r.status == 413) =>
                {
                    batch = (batch / 2).max(1);
                    tracing::warn!(
                        batch,
                        "the server found the copies sent too large at once; sending fewer"
                    );
                    continue;
                }
                Err(e) => return Err(e),
            };
            if reset {
                self.reset.store(false, Ordering::SeqCst);
            }
            if answer.applied_seq > catalog.outbox_high_water()? {
                tracing::warn!(
                    server = answer.applied_seq,
                    "the backup server has applied changes this catalog never made (a catalog restored or made anew?); sending every copy again"
                );
                catalog.outbox_refill()?;
                self.reset.store(true, Ordering::SeqCst);
                continue;
            }
            if let Some(last) = last {
                catalog.outbox_acknowledged(answer.applied_seq.min(last))?;
            }
            sent += n;
            if n < batch {
                return Ok((sent, answer.policy_version));
            }
        }
    }

    async fn sync_loop(&self) {
        let mut backoff = Backoff::new("sending copies");
        let catalog = loop {
            match self.catalog() {
                Ok(c) => break c,
                Err(e) => backoff.failed(&e).await,
            }
        };
        let mut alive = tokio::time::Instant::now() - ALIVE_EVERY;
        let catalog_dir = self.shared.engine().catalog_dir.clone();
        let mut policy_version = match policies::load(&catalog_dir) {
            Ok(p) => p.map(|p| p.version).unwrap_or(0),
            Err(e) => {
                tracing::warn!("{e:#}");
                -1
            }
        };
        loop {
            let pending = catalog.outbox_len().unwrap_or(1);
            if pending > 0 || alive.elapsed() >= ALIVE_EVERY {
                match self.sync_once(&catalog).await {
                    Ok((n, version)) => {
                        backoff.ok();
                        alive = tokio::time::Instant::now();
                        self.renew_if_due().await;
                        if n > 0 {
                            tracing::debug!(changes = n, "copies sent to the backup server");
                            self.report_due.notify_one();
                        }
                        if version != policy_version {
                            match self.fetch_policies(&catalog_dir).await {
                                Ok(v) => {
                                    policy_version = v;
                                    self.report_due.notify_one();
                                }
                                Err(e) => tracing::warn!(
                                    "the server's policies could not be taken: {e:#}"
                                ),
                            }
                        }
                    }
                    Err(e) => {
                        backoff.failed(&e).await;
                        continue;
                    }
                }
            }
            tokio::time::sleep(SYNC_EVERY).await;
        }
    }

    /// Builds the sets' report (writers identified, log reach, the archive's copies: on
    /// a blocking thread) and sends it: at the start, soon after copies change or new
    /// policies are taken, and every [`REPORT_EVERY`] otherwise. A report that cannot be
    /// sent waits for the next occasion; nothing depends on it but the console.
    async fn report_loop(&self) {
        let mut last: Option<tokio::time::Instant> = None;
        loop {
            // The engine after any reload the policies caused; and never more often
            // than every REPORT_GAP (each build identifies every writer and reads logs).
            tokio::time::sleep(REPORT_SETTLE).await;
            if let Some(last) = last {
                tokio::time::sleep_until(last + REPORT_GAP).await;
            }
            last = Some(tokio::time::Instant::now());
            let engine = self.shared.engine();
            let started = std::time::Instant::now();
            let built = tokio::task::spawn_blocking(move || HostReport {
                built_ms: chrono::Utc::now().timestamp_millis(),
                restore_area: crate::job::restore_area(&engine).display().to_string(),
                sets: engine.sets_status(),
            })
            .await;
            match built {
                Ok(report) => {
                    if let Err(e) = self
                        .client()
                        .json::<serde::de::IgnoredAny>(
                            "POST",
                            "/v1/agent/report",
                            Some(&report),
                            CALL_TIMEOUT,
                        )
                        .await
                    {
                        // An outage is logged once by the sync; a refusal is news.
                        if e.downcast_ref::<https::Unreachable>().is_some() {
                            tracing::debug!("the sets' report was not sent: {e:#}");
                        } else {
                            tracing::warn!("the sets' report was not taken: {e:#}");
                        }
                    } else {
                        tracing::debug!(
                            sets = report.sets.len(),
                            took_ms = started.elapsed().as_millis() as u64,
                            "the sets' report sent to the backup server"
                        );
                    }
                }
                Err(e) => tracing::warn!("the sets' report could not be built: {e}"),
            }
            let _ = tokio::time::timeout(REPORT_EVERY, self.report_due.notified()).await;
        }
    }

    /// Fetches this host's policies, keeps them and has the agent reload; their version.
    async fn fetch_policies(&self, catalog_dir: &std::path::Path) -> anyhow::Result<i64> {
        let policies: Policies = self
            .client()
            .json("GET", "/v1/agent/policies", None::<&()>, CALL_TIMEOUT)
            .await?;
        policies::store(catalog_dir, &policies)?;
        tracing::info!(
            version = policies.version,
            sets = policies.sets.len(),
            "the backup server's schedules and retention taken"
        );
        let _ = self
            .shared
            .commands
            .send(Wake::Signal(signal_hook::consts::SIGHUP));
        Ok(policies.version)
    }

    /// The host's jobs handed out and not ended, each seen to its end and reported
    /// (never run twice); false when the server could not be asked.
    async fn see_open_jobs(&self) -> bool {
        match self
            .client()
            .json::<Vec<ServerJob>>("GET", "/v1/agent/jobs/open", None::<&()>, CALL_TIMEOUT)
            .await
        {
            Ok(open) => {
                for job in open {
                    self.see_through(job).await;
                }
                true
            }
            Err(e) => {
                tracing::debug!("the open jobs could not be read: {e:#}");
                false
            }
        }
    }

    async fn job_loop(&self) {
        let mut backoff = Backoff::new("taking jobs");
        // Jobs this host had when the agent (or its link) last stopped.
        while !self.see_open_jobs().await {
            backoff
                .failed(&anyhow::anyhow!("the open jobs could not be read"))
                .await;
        }
        backoff.ok();
        let mut unsure = false;
        loop {
            // A poll that failed may have claimed a job whose answer was lost: the open
            // jobs are looked at again before the next poll.
            if unsure && !self.see_open_jobs().await {
                backoff
                    .failed(&anyhow::anyhow!("the open jobs could not be read"))
                    .await;
                continue;
            }
            unsure = false;
            let next = self
                .client()
                .json::<Option<ServerJob>>(
                    "POST",
                    &format!("/v1/agent/jobs/next?wait={LONG_POLL_MAX_SECS}"),
                    None::<&()>,
                    CALL_TIMEOUT + Duration::from_secs(LONG_POLL_MAX_SECS),
                )
                .await;
            match next {
                Ok(Some(job)) => {
                    backoff.ok();
                    self.see_through(job).await;
                }
                Ok(None) => backoff.ok(),
                Err(e) => {
                    unsure = true;
                    backoff.failed(&e).await
                }
            }
        }
    }

    /// Runs a server job through the agent's queue (unless the agent queued it before),
    /// waits for its end, renewing its lease, and reports the end.
    async fn see_through(&self, job: ServerJob) {
        let trigger = Identity::trigger(&self.tag, job.id);
        tracing::info!(job = job.id, kind = %job.kind, set = %job.set, "a job from the backup server");
        // Listening before the job is queued, so that none of its phases is missed.
        let events = self.shared.events.subscribe();
        let known = self
            .catalog()
            .and_then(|c| Ok(c.job_with_trigger(&trigger)?));
        let local = match known {
            Ok(Some(local)) => Ok(local),
            Ok(None) if job.state != "claimed" => Err(format!(
                "not run: the agent stopped before it queued the job (it was {})",
                job.state
            )),
            Ok(None) => self.submit(&job, &trigger).await,
            Err(e) => Err(format!(
                "not run: the agent's catalog cannot be read: {e:#}"
            )),
        };
        let finish = match local {
            Ok(local) => self.wait_for(&job, local, events).await,
            Err(result) => JobFinish {
                ok: false,
                result,
                copy_id: None,
                agent_job: None,
                progress: None,
            },
        };
        self.report(&job, finish).await;
    }

    /// Queues the job as the agent's own.
    async fn submit(&self, job: &ServerJob, trigger: &str) -> Result<JobRecord, String> {
        let request = job.job_request().map_err(|e| format!("{e:#}"))?;
        let (reply, answer) = oneshot::channel();
        self.shared
            .commands
            .send(Wake::Command(Command::Submit(
                request,
                trigger.to_string(),
                reply,
            )))
            .map_err(|_| "not run: the agent is stopping".to_string())?;
        match answer.await {
            Ok(Ok(record)) => Ok(record),
            Ok(Err(e)) => Err(format!("refused by the agent: {e:#}")),
            Err(_) => Err("not run: the agent is stopping".to_string()),
        }
    }

    /// Waits for the agent's job to end, renewing the server's lease meanwhile and
    /// telling it the phases and bytes as they come (at most four times a second); not
    /// once the job has ended (a job given up as lost stays so until its end is
    /// reported).
    async fn wait_for(
        &self,
        job: &ServerJob,
        local: JobRecord,
        mut events: tokio::sync::broadcast::Receiver<AgentEvent>,
    ) -> JobFinish {
        // A third of the lease the server gives, at most HEARTBEAT_EVERY.
        let every = match (job.claimed_ms, job.lease_until_ms) {
            (Some(from), Some(until)) if until > from => {
                Duration::from_millis(((until - from) / 3) as u64)
                    .clamp(Duration::from_millis(500), HEARTBEAT_EVERY)
            }
            _ => HEARTBEAT_EVERY,
        };
        let mut progress = JobProgress::default();
        let mut told = progress.clone();
        let mut last_beat = tokio::time::Instant::now() - every;
        let mut failed = false;
        let mut catalog = None;
        loop {
            while let Ok(event) = events.try_recv() {
                match event {
                    AgentEvent::CopyStarted { job, copy, .. } if job == local.id => {
                        progress.copy = Some(copy)
                    }
                    AgentEvent::Phase {
                        job,
                        phase,
                        took_us,
                        ok,
                    } if job == local.id => progress.phases.push(PhaseDone { phase, took_us, ok }),
                    AgentEvent::Progress { job, done, total } if job == local.id => {
                        progress.bytes = Some((done, total))
                    }
                    _ => {}
                }
            }
            if catalog.is_none() {
                catalog = self.catalog().ok();
            }
            let now = match &catalog {
                Some(c) => c.job(local.id).map_err(anyhow::Error::from),
                None => Err(anyhow::anyhow!("the catalog cannot be opened")),
            };
            if now.is_err() {
                catalog = None;
            }
            match now {
                Ok(Some(record)) if record.finished_ms.is_some() => {
                    return JobFinish {
                        ok: record.state == "done",
                        result: record
                            .result
                            .clone()
                            .unwrap_or_else(|| record.state.clone()),
                        copy_id: record.copy_id,
                        agent_job: Some(record.id),
                        progress: (progress != JobProgress::default()).then_some(progress),
                    }
                }
                Ok(Some(_)) => {}
                Ok(None) => {
                    return JobFinish {
                        ok: false,
                        result: format!("the agent's job {} vanished from its catalog", local.id),
                        copy_id: None,
                        agent_job: Some(local.id),
                        progress: None,
                    }
                }
                Err(e) => tracing::warn!(job = job.id, "the agent's catalog cannot be read: {e:#}"),
            }
            // A phase goes at once; bytes alone at most once a second; after a failed
            // call, nothing before the next regular beat.
            let phases_new =
                progress.phases.len() != told.phases.len() || progress.copy != told.copy;
            let bytes_new = progress.bytes != told.bytes;
            let news = !failed
                && ((phases_new && last_beat.elapsed() >= Duration::from_millis(250))
                    || (bytes_new && last_beat.elapsed() >= Duration::from_secs(1)));
            if news || last_beat.elapsed() >= every {
                last_beat = tokio::time::Instant::now();
                let beat = JobHeartbeat {
                    agent_job: Some(local.id),
                    progress: Some(progress.clone()),
                };
                let path = format!("/v1/agent/jobs/{}/heartbeat", job.id);
                match self
                    .client()
                    .json::<serde_json::Value>("POST", &path, Some(&beat), CALL_TIMEOUT)
                    .await
                {
                    Ok(_) => {
                        told = progress.clone();
                        failed = false;
                    }
                    Err(e) => {
                        failed = true;
                        tracing::debug!(job = job.id, "the lease could not be renewed: {e:#}")
                    }
                }
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Tells the server how the job ended, until it takes it; the copies first when it
    /// can (so the server knows the copy a finished job names), but a sync that fails
    /// does not hold the report back.
    async fn report(&self, job: &ServerJob, finish: JobFinish) {
        let mut backoff = Backoff::new("reporting a job");
        let path = format!("/v1/agent/jobs/{}/finish", job.id);
        loop {
            if let Ok(catalog) = self.catalog() {
                if let Err(e) = self.sync_once(&catalog).await {
                    tracing::debug!(job = job.id, "the copies could not be sent first: {e:#}");
                }
            }
            match self
                .client()
                .json::<ServerJob>("POST", &path, Some(&finish), CALL_TIMEOUT)
                .await
            {
                Ok(recorded) => {
                    tracing::info!(job = job.id, host = %self.host, state = %recorded.state, "the backup server has the job's end");
                    return;
                }
                Err(e)
                    if e.downcast_ref::<https::Unreachable>().is_some()
                        || e.downcast_ref::<https::Refused>()
                            .is_some_and(|r| r.status >= 500) =>
                {
                    backoff.failed(&e).await
                }
                Err(e) => {
                    tracing::error!(
                        job = job.id,
                        "the backup server refused the job's end: {e:#}"
                    );
                    return;
                }
            }
        }
    }
}
