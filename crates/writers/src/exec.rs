//! The `exec` writer: a hook script, for applications shadowcopy has no writer for. The
//! script is called with the event as its first argument (`prepare`, `freeze`, `thaw`,
//! `post-snapshot`, `backup-complete`, `abort`, `pre-restore`, `post-restore`), the
//! qemu-guest-agent fsfreeze-hook convention: exit 0 means done, anything else fails the
//! step, and a hook should exit 0 for events it does not handle (or list the events it
//! wants in `events`). A hook that exits 75 (`EX_TEMPFAIL`) from `prepare` or `freeze`
//! says the application is busy right now: it is thawed, the set discarded and run again
//! (up to three times in all); from `thaw` that is a failure like any other (the
//! application may still be frozen). The set's facts are in the environment: `SHADOWCOPY_EVENT`,
//! `SHADOWCOPY_SET`, `SHADOWCOPY_PATHS` (colon-separated), `SHADOWCOPY_DEADLINE_MS`
//! (time left for `freeze`).
//!
//! Every call has a timeout (`freeze`: the time left before the freeze deadline; others:
//! `timeout`, default 60 s); a hook that overruns is killed with its whole process
//! group. Its output (stdout and stderr, the last 4 KiB) goes into the error, and so into
//! the catalog's record of the failed phase. While frozen, a [`Watchdog`] runs
//! `SCRIPT thaw` if shadowcopy dies or hangs.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use shadowcopy_core::model::{Component, CopyView, VerifyReport};
use shadowcopy_core::{process, BoxError, KeptCopies, Writer};

use crate::kind::{KindInfo, KindRole, Normalize, WriterKind};
use crate::watchdog::Watchdog;
use crate::{HumanDuration, SetContext};

/// `[[sets.NAME.writers]] kind = "exec"`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExecOptions {
    #[serde(with = "shadowcopy_core::pathjson")]
    pub script: PathBuf,
    /// Limit for every event but `freeze` (which has the freeze deadline).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout: Option<HumanDuration>,
    /// The events the script is called for [default: all].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub events: Option<Vec<String>>,
}

/// The shortest `timeout` of a hook.
pub const MIN_HOOK_TIMEOUT: Duration = Duration::from_millis(1);
/// The longest a hook may run for one event.
pub const MAX_HOOK_TIMEOUT: Duration = Duration::from_secs(24 * 3600);

impl WriterKind for ExecOptions {
    fn normalize_paths(&mut self, normalize: Normalize<'_>) -> Result<(), String> {
        self.script = normalize(&self.script, "exec script")?;
        Ok(())
    }

    fn check(&self) -> Result<(), String> {
        match self.timeout {
            Some(t) if !(MIN_HOOK_TIMEOUT..=MAX_HOOK_TIMEOUT).contains(&t.0) => Err(format!(
                "the timeout {} of the hook {} is out of range: give between 1ms and 24h (timeout in the config file)",
                humantime::format_duration(t.0),
                self.script.display()
            )),
            _ => Ok(()),
        }
    }

    /// A hook copies nothing of its own.
    fn data_paths(&self) -> Vec<PathBuf> {
        Vec::new()
    }

    fn build(&self, context: &SetContext) -> Box<dyn Writer> {
        Box::new(ExecWriter::new(self.clone(), context.clone()))
    }
}

impl KindInfo for ExecOptions {
    const DESCRIPTION: &'static str = "a hook script called with each event (qemu fsfreeze-hook convention: freeze/thaw as $1, exit 0 = ok)";
    const ROLE: KindRole = KindRole::Hook;
    const ZERO_CONFIG_FLAG: Option<&'static str> = Some("--exec-writer");
}

pub const EVENTS: [&str; 8] = [
    "prepare",
    "freeze",
    "thaw",
    "post-snapshot",
    "backup-complete",
    "abort",
    "pre-restore",
    "post-restore",
];

/// The exit code by which a hook says "busy, try again" (`EX_TEMPFAIL`, sysexits.h).
const EXIT_BUSY: i32 = 75;

const DEFAULT_TIMEOUT: Duration = Duration::from_secs(60);
const OUTPUT_KEPT: usize = 4096;

#[derive(Debug, thiserror::Error)]
pub enum ExecError {
    #[error("the hook {} does not exist", .0.display())]
    Missing(PathBuf),
    #[error("the hook {} is not executable; `chmod +x` it", .0.display())]
    NotExecutable(PathBuf),
    #[error("the hook {} handles `freeze` but not `thaw`; a freeze must be undoable, add `thaw` to its events", .0.display())]
    FreezeWithoutThaw(PathBuf),
    #[error("unknown hook event `{}`; the events are {}", .0, EVENTS.join(", "))]
    UnknownEvent(String),
    #[error("the hook `{} {event}` exited with 75 (busy, try again); its output: {output}", .script.display())]
    Busy {
        script: PathBuf,
        event: &'static str,
        output: String,
    },
    #[error("the hook `{} {event}` exited with {status}; its output: {output}", .script.display())]
    Failed {
        script: PathBuf,
        event: &'static str,
        status: String,
        output: String,
    },
    #[error("the hook `{} {event}` did not finish within {} and was killed; its output: {output}", .script.display(), shadowcopy_core::error::humanize(*.limit))]
    TimedOut {
        script: PathBuf,
        event: &'static str,
        limit: Duration,
        output: String,
    },
    #[error("cannot run the hook {}", .script.display())]
    Spawn {
        script: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

pub struct ExecWriter {
    options: ExecOptions,
    context: SetContext,
    frozen: bool,
    watchdog: Option<Watchdog>,
}

impl ExecWriter {
    pub fn new(options: ExecOptions, context: SetContext) -> Self {
        ExecWriter {
            options,
            context,
            frozen: false,
            watchdog: None,
        }
    }

    fn timeout(&self) -> Duration {
        self.options.timeout.map_or(DEFAULT_TIMEOUT, |t| t.0)
    }

    fn wants(&self, event: &str) -> bool {
        self.options
            .events
            .as_ref()
            .is_none_or(|e| e.iter().any(|x| x == event))
    }

    /// The environment every call (and the watchdog's `thaw`) gets.
    fn env(&self, event: &str, limit: Duration) -> Vec<(String, String)> {
        let paths: Vec<String> = self
            .context
            .data_paths
            .iter()
            .map(|p| p.display().to_string())
            .collect();
        vec![
            ("SHADOWCOPY_EVENT".into(), event.into()),
            ("SHADOWCOPY_SET".into(), self.context.set_name.clone()),
            ("SHADOWCOPY_PATHS".into(), paths.join(":")),
            (
                "SHADOWCOPY_DEADLINE_MS".into(),
                limit.as_millis().to_string(),
            ),
        ]
    }

    /// Runs `SCRIPT EVENT`, killing its process group at `limit`; `started` gets the
    /// group (the watchdog guards a running freeze).
    fn run_guarded(
        &self,
        event: &'static str,
        limit: Duration,
        started: &mut dyn FnMut(u32),
    ) -> Result<(), ExecError> {
        if !self.wants(event) {
            return Ok(());
        }
        let script = &self.options.script;
        let mut command = Command::new(script);
        command.arg(event).envs(self.env(event, limit));
        let out = process::run(&mut command, b"", started, &|began| {
            began.elapsed() >= limit
        });
        let (status, output) = match out {
            Ok(f) => (Some(f.status), tail(&format!("{}{}", f.stdout, f.stderr))),
            Err(process::ProcessError::Killed { .. }) => (None, "(killed)".into()),
            Err(process::ProcessError::Spawn { source, .. }) => {
                return Err(ExecError::Spawn {
                    script: script.clone(),
                    source,
                })
            }
        };
        match status {
            Some(s) if s.success() => {
                if output != "(none)" {
                    tracing::info!(hook = %script.display(), event, "{output}");
                }
                Ok(())
            }
            // "Busy" means something only where the set is run again for it.
            Some(s) if s.code() == Some(EXIT_BUSY) && matches!(event, "prepare" | "freeze") => {
                Err(ExecError::Busy {
                    script: script.clone(),
                    event,
                    output,
                })
            }
            Some(s) => Err(ExecError::Failed {
                script: script.clone(),
                event,
                status: s.to_string(),
                output,
            }),
            None => Err(ExecError::TimedOut {
                script: script.clone(),
                event,
                limit,
                output,
            }),
        }
    }

    fn run(&self, event: &'static str, limit: Duration) -> Result<(), ExecError> {
        self.run_guarded(event, limit, &mut |_| {})
    }
}

/// The last [`OUTPUT_KEPT`] bytes of what the hook printed, on one line.
fn tail(output: &str) -> String {
    let start = output.len().saturating_sub(OUTPUT_KEPT);
    let start = (start..=output.len())
        .find(|i| output.is_char_boundary(*i))
        .unwrap_or(output.len());
    let text = output[start..].trim().replace('\n', " | ");
    if text.is_empty() {
        "(none)".into()
    } else {
        text
    }
}

/// A hook's "busy" as a failure the engine retries; anything else as it is.
fn busy_is_transient(e: ExecError) -> BoxError {
    match e {
        ExecError::Busy { .. } => shadowcopy_core::error::Transient::boxed(e),
        e => e.into(),
    }
}

fn check_script(script: &Path) -> Result<(), ExecError> {
    use std::os::unix::fs::PermissionsExt;
    let meta = std::fs::metadata(script).map_err(|_| ExecError::Missing(script.to_path_buf()))?;
    if !meta.is_file() || meta.permissions().mode() & 0o111 == 0 {
        return Err(ExecError::NotExecutable(script.to_path_buf()));
    }
    Ok(())
}

impl Writer for ExecWriter {
    fn kind(&self) -> &'static str {
        "exec"
    }

    fn name(&self) -> String {
        format!("exec:{}", self.options.script.display())
    }

    /// Checks the script; a hook reports no components (the set's paths are the data).
    fn identify(&mut self) -> Result<Vec<Component>, BoxError> {
        check_script(&self.options.script)?;
        if let Some(events) = &self.options.events {
            if let Some(bad) = events.iter().find(|e| !EVENTS.contains(&e.as_str())) {
                return Err(ExecError::UnknownEvent(bad.clone()).into());
            }
            if self.wants("freeze") && !self.wants("thaw") {
                return Err(ExecError::FreezeWithoutThaw(self.options.script.clone()).into());
            }
        }
        Ok(Vec::new())
    }

    fn prepare(&mut self) -> Result<(), BoxError> {
        self.run("prepare", self.timeout())
            .map_err(busy_is_transient)
    }

    fn freeze(&mut self, deadline: Instant) -> Result<(), BoxError> {
        if !self.wants("freeze") {
            return Ok(());
        }
        let left = deadline.saturating_duration_since(Instant::now());
        let release = vec![vec![
            self.options.script.clone().into_os_string(),
            "thaw".into(),
        ]];
        let mut watchdog = Watchdog::start(deadline, &release, &self.env("thaw", self.timeout()))
            .map_err(|source| ExecError::Spawn {
            script: "bash (the watchdog)".into(),
            source,
        })?;
        // Thawed on every path from here, even if the freeze hook fails halfway; while
        // it runs, the watchdog would kill it before running `thaw`.
        self.frozen = true;
        let result = self.run_guarded("freeze", left, &mut |group| watchdog.guard(group));
        watchdog.unguard();
        self.watchdog = Some(watchdog);
        result.map_err(busy_is_transient)
    }

    /// Runs `thaw`; if it fails, the watchdog runs it once more right away instead of
    /// being disarmed.
    fn thaw(&mut self) -> Result<(), BoxError> {
        let result = if self.frozen {
            self.run("thaw", self.timeout())
        } else {
            Ok(())
        };
        self.frozen = false;
        if let Some(w) = self.watchdog.take() {
            if result.is_err() {
                w.release_now();
            } else {
                w.disarm();
            }
        }
        Ok(result?)
    }

    fn abort(&mut self) -> Result<(), BoxError> {
        Ok(self.run("abort", self.timeout())?)
    }

    fn post_snapshot(&mut self, _copy: &CopyView) -> Result<(), BoxError> {
        Ok(self.run("post-snapshot", self.timeout())?)
    }

    fn verify(&self, _copy: &CopyView) -> Result<VerifyReport, BoxError> {
        Ok(VerifyReport {
            ok: true,
            detail: "a hook has no check of its own".into(),
        })
    }

    fn backup_complete(
        &mut self,
        _copy: &CopyView,
        _kept: &dyn KeptCopies,
    ) -> Result<Option<String>, BoxError> {
        self.run("backup-complete", self.timeout())?;
        Ok(None)
    }

    /// `pre-restore`: a hook that exits non-zero refuses the restore (it may stop the
    /// application first).
    fn pre_restore(&self, _targets: &[PathBuf]) -> Result<(), BoxError> {
        Ok(self.run("pre-restore", self.timeout())?)
    }

    fn post_restore(&self, _targets: &[PathBuf]) -> Result<(), BoxError> {
        Ok(self.run("post-restore", self.timeout())?)
    }
}

impl Drop for ExecWriter {
    fn drop(&mut self) {
        let _ = self.thaw();
    }
}
