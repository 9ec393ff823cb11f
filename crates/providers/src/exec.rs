//! The `exec` provider: a storage system driven by a command, so that a storage array's
//! snapshot, a cloud volume snapshot or an in-house tool can serve shadow copies without
//! Rust. Configured as `[providers.NAME] command = "/path/to/cmd"`, chosen with
//! `--provider exec:NAME`.
//!
//! # The contract (see `examples/exec-provider.py` for a worked example)
//! The command is run as `COMMAND OPERATION` with one JSON object on stdin, and answers
//! with one JSON object on stdout and exit status 0; any other status fails the step,
//! with stderr as the reason. Operations, request → answer:
//! - `check` `{"paths": [...]}` → `{"ok": true}` or `{"ok": false, "reason": "..."}`
//! - `location` `{"copy_id": 7, "set": "mail", "paths": [...]}` → `{"location": "..."}`:
//!   names where the copy will be; recorded before `commit` runs
//! - `commit` `{"copy_id", "set", "location", "components": [{"path", "required"}]}` →
//!   `{"files": [{"path", "size", "mode", "mtime_ns"}]}`: runs while the applications are
//!   frozen and must take well under the freeze deadline; it is killed at the deadline
//! - `persist` `{"location"}` → `{}` (make the copy durable; after the thaw)
//! - `delete` `{"location"}` → `{}`: idempotent, a missing copy is success
//! - `expose` `{"location", "paths": [...]}` → `{"files": [{"original", "path"}]}`: where
//!   each original file's copy can be read
//! - `restore` `{"location", "original", "dest"}` → `{}`: write the copy of `original` to
//!   `dest` (a path beside the live file)

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use shadowcopy_core::error::BoxError;
use shadowcopy_core::model::{CopyView, FileEntry};
use shadowcopy_core::process;
use shadowcopy_core::provider::{CommitControl, CommitRequest, Provider, Unsupported};

/// `[providers.NAME]` in the config file.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExecProviderOptions {
    #[serde(default)]
    pub name: String,
    pub command: PathBuf,
    /// Limit for every operation but `commit` (which has the freeze deadline) [default 10m].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout_secs: Option<u64>,
}

/// The prefix of exec provider kinds: `exec:NAME`.
pub const PREFIX: &str = "exec:";
const DEFAULT_TIMEOUT: Duration = Duration::from_secs(600);

#[derive(Debug, thiserror::Error)]
pub enum ExecProviderError {
    #[error("no exec provider named `{name}`; define it as [providers.{name}] with a `command` in the config file")]
    Unknown { name: String },
    #[error("cannot run the provider command {}", .command.display())]
    Spawn {
        command: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("`{} {operation}` exited with {status}: {stderr}", .command.display())]
    Failed {
        command: PathBuf,
        operation: &'static str,
        status: String,
        stderr: String,
    },
    #[error("`{} {operation}` did not finish in time and was killed", .command.display())]
    Killed {
        command: PathBuf,
        operation: &'static str,
    },
    #[error("`{} {operation}` answered {problem}; a copy is never trusted beyond what the set asked for", .command.display())]
    Untrusted {
        command: PathBuf,
        operation: &'static str,
        problem: String,
    },
    #[error(
        "the path {} is not UTF-8, and an exec provider's command gets paths as JSON text; \
         rename it, or use the copy, reflink or btrfs provider",
        .path.display()
    )]
    NotUtf8 { path: PathBuf },
    #[error("`{} {operation}` answered something that is not the expected JSON ({answer:?})", .command.display())]
    BadAnswer {
        command: PathBuf,
        operation: &'static str,
        answer: String,
        #[source]
        source: serde_json::Error,
    },
}

pub struct ExecProvider {
    options: ExecProviderOptions,
    kind: &'static str,
}

#[derive(Deserialize)]
struct CheckAnswer {
    ok: bool,
    #[serde(default)]
    reason: Option<String>,
}

#[derive(Deserialize)]
struct LocationAnswer {
    location: String,
}

#[derive(Deserialize)]
struct FilesAnswer {
    files: Vec<FileEntryAnswer>,
}

#[derive(Deserialize)]
struct FileEntryAnswer {
    path: PathBuf,
    size: u64,
    #[serde(default)]
    mode: u32,
    #[serde(default)]
    mtime_ns: i64,
}

#[derive(Deserialize)]
struct ExposeAnswer {
    files: Vec<ExposedFile>,
}

#[derive(Deserialize)]
struct ExposedFile {
    original: PathBuf,
    path: PathBuf,
}

impl ExecProvider {
    pub fn new(options: ExecProviderOptions) -> Self {
        let kind = intern(&format!("{PREFIX}{}", options.name));
        ExecProvider { options, kind }
    }

    fn timeout(&self) -> Duration {
        self.options
            .timeout_secs
            .map_or(DEFAULT_TIMEOUT, Duration::from_secs)
    }

    /// Runs `COMMAND OPERATION` with `request` on stdin; stops it when `stop` says so.
    fn call<T: for<'de> Deserialize<'de>>(
        &self,
        operation: &'static str,
        request: Value,
        stop: &dyn Fn(Instant) -> bool,
    ) -> Result<T, ExecProviderError> {
        let command = &self.options.command;
        let out = process::run(
            Command::new(command).arg(operation),
            request.to_string().as_bytes(),
            &mut |_| {},
            stop,
        )
        .map_err(|e| match e {
            process::ProcessError::Killed { .. } => ExecProviderError::Killed {
                command: command.clone(),
                operation,
            },
            process::ProcessError::Spawn { source, .. } => ExecProviderError::Spawn {
                command: command.clone(),
                source,
            },
        })?;
        if !out.status.success() {
            return Err(ExecProviderError::Failed {
                command: command.clone(),
                operation,
                status: out.status.to_string(),
                stderr: out.stderr.trim().to_string(),
            });
        }
        serde_json::from_str(&out.stdout).map_err(|source| ExecProviderError::BadAnswer {
            command: command.clone(),
            operation,
            answer: out.stdout.chars().take(500).collect(),
            source,
        })
    }

    fn untrusted(&self, operation: &'static str, problem: String) -> ExecProviderError {
        ExecProviderError::Untrusted {
            command: self.options.command.clone(),
            operation,
            problem,
        }
    }

    fn within(&self, operation: &'static str, request: Value) -> Result<Value, ExecProviderError> {
        let limit = self.timeout();
        self.call(operation, request, &|started| started.elapsed() >= limit)
    }
}

/// A path as the command's JSON carries it: text. A path that is not UTF-8 is refused
/// with its name, never sent mangled (nor a panic in the JSON encoder).
fn text(p: &Path) -> Result<&str, ExecProviderError> {
    p.to_str().ok_or_else(|| ExecProviderError::NotUtf8 {
        path: p.to_path_buf(),
    })
}

fn texts<'a>(paths: impl IntoIterator<Item = &'a Path>) -> Result<Vec<&'a str>, ExecProviderError> {
    paths.into_iter().map(text).collect()
}

impl Provider for ExecProvider {
    fn kind(&self) -> &'static str {
        self.kind
    }

    fn rank(&self) -> u32 {
        50
    }

    // capabilities: the default, nothing promised. What a command's storage does (an
    // array's snapshot, a cloud volume) is not known here.

    fn check(&self, paths: &[PathBuf]) -> Result<(), Unsupported> {
        let limit = self.timeout();
        let paths = texts(paths.iter().map(PathBuf::as_path)).map_err(|e| Unsupported {
            reason: e.to_string(),
        })?;
        let answer: Result<CheckAnswer, _> = self.call("check", json!({ "paths": paths }), &|s| {
            s.elapsed() >= limit
        });
        match answer {
            Ok(CheckAnswer { ok: true, .. }) => Ok(()),
            Ok(CheckAnswer { reason, .. }) => Err(Unsupported {
                reason: reason.unwrap_or_else(|| "the provider command said no".into()),
            }),
            Err(e) => Err(Unsupported {
                reason: e.to_string(),
            }),
        }
    }

    fn location(&self, request: &CommitRequest) -> Result<String, BoxError> {
        let limit = self.timeout();
        let paths = texts(request.components.iter().map(|c| c.path.as_path()))?;
        let answer: LocationAnswer = self.call(
            "location",
            json!({ "copy_id": request.copy_id, "set": request.set_name, "paths": paths }),
            &|s| s.elapsed() >= limit,
        )?;
        if answer.location.trim().is_empty() {
            return Err(self
                .untrusted("location", "an empty location".into())
                .into());
        }
        Ok(answer.location)
    }

    /// Killed when the coordinator cancels (the freeze deadline passed).
    fn commit(
        &self,
        request: &CommitRequest,
        location: &str,
        control: &CommitControl,
    ) -> Result<Vec<FileEntry>, BoxError> {
        let components: Vec<Value> = request
            .components
            .iter()
            .map(|c| Ok(json!({ "path": text(&c.path)?, "required": c.required })))
            .collect::<Result<_, ExecProviderError>>()?;
        let answer: FilesAnswer = self.call(
            "commit",
            json!({ "copy_id": request.copy_id, "set": request.set_name, "location": location, "components": components, "continues": request.continues }),
            &|_| control.cancelled(),
        )?;
        // Only files of the request's components, and every required component present.
        for f in &answer.files {
            if !request
                .components
                .iter()
                .any(|c| f.path.starts_with(&c.path))
            {
                return Err(self
                    .untrusted(
                        "commit",
                        format!("{}, which is not in the set", f.path.display()),
                    )
                    .into());
            }
        }
        for c in request.components.iter().filter(|c| c.required) {
            if !answer.files.iter().any(|f| f.path.starts_with(&c.path)) {
                return Err(self
                    .untrusted(
                        "commit",
                        format!("no file for the required component {}", c.path.display()),
                    )
                    .into());
            }
        }
        Ok(answer
            .files
            .into_iter()
            .map(|f| FileEntry {
                path: f.path,
                size: f.size,
                mode: f.mode,
                mtime_ns: f.mtime_ns,
                blake3: None,
            })
            .collect())
    }

    fn persist(&self, location: &str) -> Result<(), BoxError> {
        self.within("persist", json!({ "location": location }))?;
        Ok(())
    }

    fn delete(&self, location: &str) -> Result<(), BoxError> {
        self.within("delete", json!({ "location": location }))?;
        Ok(())
    }

    fn expose(&self, location: &str, files: &[FileEntry]) -> Result<CopyView, BoxError> {
        let paths: Vec<&Path> = files.iter().map(|f| f.path.as_path()).collect();
        let limit = self.timeout();
        let answer: ExposeAnswer = self.call(
            "expose",
            json!({ "location": location, "paths": texts(paths.iter().copied())? }),
            &|s| s.elapsed() >= limit,
        )?;
        // Exactly the files asked for: a copy is never read from somewhere else.
        let mut asked: Vec<&Path> = paths.clone();
        let mut got: Vec<&Path> = answer.files.iter().map(|f| f.original.as_path()).collect();
        asked.sort();
        got.sort();
        if asked != got {
            return Err(self
                .untrusted("expose", "other files than the ones asked for".into())
                .into());
        }
        Ok(CopyView {
            files: answer
                .files
                .into_iter()
                .map(|f| (f.original, f.path))
                .collect(),
        })
    }

    fn restore_file(&self, location: &str, original: &Path, dest: &Path) -> Result<(), BoxError> {
        self.within(
            "restore",
            json!({ "location": location, "original": text(original)?, "dest": text(dest)? }),
        )?;
        Ok(())
    }
}

/// Kinds are `&'static str` throughout: each distinct exec provider name is leaked once.
fn intern(kind: &str) -> &'static str {
    use std::collections::BTreeSet;
    use std::sync::Mutex;
    static NAMES: Mutex<BTreeSet<&'static str>> = Mutex::new(BTreeSet::new());
    let mut names = NAMES.lock().unwrap_or_else(|e| e.into_inner());
    if let Some(known) = names.get(kind) {
        return known;
    }
    let leaked: &'static str = Box::leak(kind.to_string().into_boxed_str());
    names.insert(leaked);
    leaked
}

/// Finds `exec:NAME` among the configured exec providers.
pub fn build(
    kind: &str,
    configured: &[ExecProviderOptions],
) -> Option<Result<ExecProvider, ExecProviderError>> {
    let name = kind.strip_prefix(PREFIX)?;
    Some(
        configured
            .iter()
            .find(|o| o.name == name)
            .map(|o| ExecProvider::new(o.clone()))
            .ok_or_else(|| ExecProviderError::Unknown {
                name: name.to_string(),
            }),
    )
}

#[cfg(test)]
mod tests {
    use std::ffi::OsStr;
    use std::os::unix::ffi::OsStrExt;

    use super::*;

    #[test]
    fn a_path_that_is_not_utf8_is_refused_by_name_not_sent_or_panicked_on() {
        let p = ExecProvider::new(ExecProviderOptions {
            name: "t".into(),
            // Never run: the refusal comes before the command is called.
            command: PathBuf::from("/nonexistent/command"),
            timeout_secs: None,
        });
        let odd = PathBuf::from(OsStr::from_bytes(b"/srv/bad\xffname"));
        let why = p.check(std::slice::from_ref(&odd)).unwrap_err();
        assert!(why.reason.contains("not UTF-8"), "{why}");
        let err = p
            .restore_file("/loc", &odd, Path::new("/dest"))
            .unwrap_err()
            .to_string();
        assert!(err.contains("not UTF-8") && err.contains("bad"), "{err}");
    }
}
