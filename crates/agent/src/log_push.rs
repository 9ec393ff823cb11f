//! Logs off the host between copies: every `logs_push_every` (default a minute) the agent
//! sends what each set's archive lacks of its logs (PostgreSQL's WAL archive, the binary
//! logs MariaDB has closed), on a thread of its own beside the job queue: a push of logs
//! holds no shadow set and changes no copy (objects are written only if absent, so one
//! racing a copy's push loses nothing). A lost host then loses at most that long of
//! committed work, plus what the database had not yet closed into a log file.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use shadowcopy_archive::Repository;
use shadowcopy_engine::{Engine, UsageError};

use crate::events::AgentEvent;
use crate::state::Shared;

/// How often a set's logs go to its archive when its config does not say.
pub const DEFAULT_EVERY: Duration = Duration::from_secs(60);

/// Starts the thread; it ends when the agent is stopping.
pub fn spawn(shared: Arc<Shared>) -> std::io::Result<()> {
    std::thread::Builder::new()
        .name("log-push".into())
        .spawn(move || {
            // Reading, sealing and sending logs is work the application should not feel;
            // the repositories' threads, started from here, inherit it.
            let _background = shadowcopy_core::priority::background();
            let mut pusher = LogPusher::default();
            while !shared.status().stopping {
                pusher.push_due(&shared);
                std::thread::sleep(Duration::from_secs(1));
            }
        })?;
    Ok(())
}

#[derive(Default)]
struct LogPusher {
    /// When each set's logs were last tried.
    tried: BTreeMap<String, Instant>,
    /// The repositories opened, by URL: kept open, since opening one derives its key (a
    /// quarter second of CPU and 64 MiB each time); dropped after a failure, so a
    /// changed passphrase or repository is opened anew.
    open: BTreeMap<String, Repository>,
    /// Sets told once that they have no logs to push (a server without a binary log).
    told: BTreeSet<String>,
}

impl LogPusher {
    fn push_due(&mut self, shared: &Shared) {
        let engine = shared.engine();
        for name in engine.config.sets.keys() {
            let Some(url) = self.due(&engine, name) else {
                continue;
            };
            self.tried.insert(name.clone(), Instant::now());
            let pushed = self
                .repository(&engine, &url)
                .and_then(|repo| engine.push_logs_to(repo, name, None));
            if pushed.is_err() {
                self.open.remove(&url);
            }
            match pushed {
                Ok(report) => {
                    shared
                        .metrics
                        .logs_pushed(name, chrono::Utc::now().timestamp_millis());
                    if report.copied > 0 {
                        tracing::info!(set = %name, files = report.copied, bytes = report.bytes, "logs sent to the archive");
                        shared.events.send(AgentEvent::LogsPushed {
                            set: name.clone(),
                            files: report.copied,
                            bytes: report.bytes,
                        });
                    }
                }
                Err(e) if e.downcast_ref::<UsageError>().is_some() => {
                    if self.told.insert(name.clone()) {
                        tracing::info!(set = %name, "no logs are sent to the archive: {e:#}");
                    }
                }
                Err(e) => {
                    shared.metrics.log_push_failed(name);
                    tracing::warn!(set = %name, "sending the set's logs to its archive failed: {e:#}");
                    shared.events.send(AgentEvent::LogsPushFailed {
                        set: name.clone(),
                        message: format!("{e:#}"),
                    });
                }
            }
        }
    }

    /// The repository at `url`, opened once (and opened again if it is no longer there,
    /// which then fails with the reason).
    fn repository(&mut self, engine: &Engine, url: &str) -> anyhow::Result<&Repository> {
        if self.open.get(url).is_some_and(|r| r.still_there().is_err()) {
            self.open.remove(url);
        }
        if !self.open.contains_key(url) {
            let passphrase = engine.archive_passphrase(None)?;
            let repo = Repository::open(url, passphrase.expose().as_bytes())?;
            self.open.insert(url.to_string(), repo);
        }
        Ok(&self.open[url])
    }

    /// The archive set `name`'s logs go to, when they are due now.
    fn due(&self, engine: &Engine, name: &str) -> Option<String> {
        let every = engine.config.sets[name]
            .logs_push_every
            .map_or(DEFAULT_EVERY, |d| d.0);
        if every.is_zero() || self.tried.get(name).is_some_and(|t| t.elapsed() < every) {
            return None;
        }
        let url = engine.archive_url(None, Some(name)).ok()?;
        engine.logs_of(name, None).ok()?;
        Some(url)
    }
}
