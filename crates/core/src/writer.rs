//! The `Writer` contract: a writer knows one application instance.
//!
//! # Required methods
//! - [`Writer::identify`] reports the components (data and log files). It MUST NOT change
//!   the application's state.
//! - [`Writer::freeze`] brings the application to a state in which the files of every
//!   component, copied as they are on disk, open without repair. It MUST hold that state
//!   until [`Writer::thaw`] and MUST give up with an error at `deadline` rather than wait
//!   past it. The freeze MUST be released by something that does not depend on this
//!   process staying alive (a lock owned by a connection that dies with the process, a
//!   watchdog): the coordinator can be killed at any time.
//! - [`Writer::thaw`] releases the freeze, and whatever `prepare` holds. It MUST be
//!   idempotent and MUST succeed when nothing is frozen: the coordinator calls it on
//!   every error path once `prepare` was called (again after the window's thaw).
//! - [`Writer::verify`] checks a copy (never the live data) and reports what it found.
//!
//! # Optional methods (defaults do nothing)
//! - `prepare`: slow work before the freeze (a checkpoint), so the freeze stays short.
//! - `after_thaw_files`: what the copy needs that only exists after the thaw.
//! - `post_snapshot`, `backup_complete`: after the copy exists / after it was verified.
//!   Truncating logs belongs in `backup_complete`, which only runs after a passed verify
//!   and is told which other copies of the set are kept: it MUST NOT drop a log one of
//!   them needs. Its failure is a warning: the verified copy stays usable.
//! - `abort`: the set failed (after the thaw), so the application can drop what it
//!   prepared for it. Called once `prepare` was called, whether or not it succeeded.
//! - `check_restore_target` and `finish_restore`: refuse a restore over data in use, and
//!   turn staged files into what is swapped in; `pre_restore` / `post_restore` around
//!   the whole restore (stop and start the application, say).

use std::path::{Path, PathBuf};
use std::time::Instant;

use crate::error::BoxError;
use crate::extract::ExtractRequest;
use crate::model::{Changes, Component, CopyId, CopyView, VerifyReport};

/// What the restore swaps in: each staged file renamed onto its target, and files that
/// must not survive beside the restored data. The state being replaced is kept as a
/// `pre-restore` copy of every existing target and `remove` path (so restoring it undoes
/// the restore, a stale SQLite `-wal` or hot `-journal` included); `discard` paths hold
/// nothing worth keeping (a `-shm` index) and are simply removed.
#[derive(Clone, Debug, Default)]
pub struct RestorePlan {
    pub install: Vec<(PathBuf, PathBuf)>,
    pub remove: Vec<PathBuf>,
    pub discard: Vec<PathBuf>,
    /// Lines for the user once the restore is done (how to start what was restored
    /// elsewhere).
    pub notes: Vec<String>,
}

/// What a restore brings back.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub enum RestoreMode {
    /// The data exactly as it was in the copy.
    #[default]
    PointInTime,
    /// The copy, then the application's logs kept since (an archive, the live log
    /// directory) replayed to their end, or to `until` (a time, log position or
    /// transaction, in the writer's terms).
    RollForward { until: Option<String> },
}

impl RestoreMode {
    pub fn as_str(&self) -> &'static str {
        match self {
            RestoreMode::PointInTime => "point-in-time",
            RestoreMode::RollForward { .. } => "roll-forward",
        }
    }
}

pub trait Writer: Send {
    /// The kind, as in the registry and the config file: `sqlite`.
    fn kind(&self) -> &'static str;
    /// This instance, for messages: `sqlite:/srv/app.db`.
    fn name(&self) -> String;

    fn identify(&mut self) -> Result<Vec<Component>, BoxError>;

    fn prepare(&mut self) -> Result<(), BoxError> {
        Ok(())
    }

    fn freeze(&mut self, deadline: Instant) -> Result<(), BoxError>;

    fn thaw(&mut self) -> Result<(), BoxError>;

    /// Files the copy must also hold that exist only after the thaw (PostgreSQL's
    /// `backup_label`, the WAL up to the end of the backup): `(path in the copy, file to
    /// read)`. Called once after a successful thaw; the provider adds them before the
    /// copy is made durable, and the set fails if it cannot.
    fn after_thaw_files(&mut self) -> Result<Vec<(PathBuf, PathBuf)>, BoxError> {
        Ok(Vec::new())
    }

    fn post_snapshot(&mut self, _copy: &CopyView) -> Result<(), BoxError> {
        Ok(())
    }

    fn abort(&mut self) -> Result<(), BoxError> {
        Ok(())
    }

    fn verify(&self, copy: &CopyView) -> Result<VerifyReport, BoxError>;

    /// Checks the copy knowing what changed since a verified copy of the same set
    /// (`changes`): a writer whose check can be limited to that does less than
    /// [`Writer::verify`]; the default checks everything. It must still find damage in
    /// anything that changed.
    fn verify_changed(
        &self,
        copy: &CopyView,
        _changes: &Changes,
    ) -> Result<VerifyReport, BoxError> {
        self.verify(copy)
    }

    /// Opens the copy read-only beside production, built below `options.scratch` (an
    /// empty private directory on the copy's file system if it can be, owned by this
    /// exposure alone and removed when it closes), and says how to reach it. `None`: this
    /// writer has nothing to open (its data is plain files to read in the copy). The copy
    /// itself is never written. An option the writer cannot honour is an error naming it.
    fn expose(
        &self,
        _copy: &CopyView,
        _options: &ExposeOptions,
    ) -> Result<Option<Exposed>, BoxError> {
        Ok(None)
    }

    /// Writes the rows `request` names from what [`Writer::expose`] opened into `out`;
    /// `false` when this writer extracts nothing (the default).
    fn extract(
        &self,
        _exposed: &Exposed,
        _request: &ExtractRequest,
        _out: &mut dyn std::io::Write,
    ) -> Result<bool, BoxError> {
        Ok(false)
    }

    /// The copy passed verification. Returns a line for the user when it did something
    /// (logs truncated); an error is reported as a warning and the copy stays usable.
    fn backup_complete(
        &mut self,
        _copy: &CopyView,
        _kept: &dyn KeptCopies,
    ) -> Result<Option<String>, BoxError> {
        Ok(None)
    }

    /// Refuses (with an error that names who holds the data) when `targets` are in use
    /// and a restore over them would corrupt a running application.
    fn check_restore_target(&self, _targets: &[PathBuf]) -> Result<(), BoxError> {
        Ok(())
    }

    /// Before a restore touches anything (stop the application, say); an error refuses
    /// the restore. Once it ran, `post_restore` runs too, whether the restore worked or not.
    fn pre_restore(&self, _targets: &[PathBuf]) -> Result<(), BoxError> {
        Ok(())
    }

    /// After the restore, whether it worked or not (start the application again, say).
    fn post_restore(&self, _targets: &[PathBuf]) -> Result<(), BoxError> {
        Ok(())
    }

    /// Whether [`RestoreMode::RollForward`] means something for this writer (it keeps
    /// logs beyond the copy).
    fn can_roll_forward(&self) -> bool {
        false
    }

    /// What a roll-forward's stop point (`until`) may be, in words with examples, for
    /// forms and help (empty when it cannot roll forward).
    fn until_forms(&self) -> &'static str {
        ""
    }

    /// Refuses a restore mode this writer cannot carry out as asked (an `until` it cannot
    /// parse), before anything is written; the error is a usage error.
    fn check_restore_mode(&self, _mode: &RestoreMode) -> Result<(), BoxError> {
        Ok(())
    }

    /// Given the staged files (target → staged path, all beside their targets), returns
    /// what to swap in for `mode`. The default installs every staged file as it is.
    fn finish_restore(
        &self,
        staged: &[(PathBuf, PathBuf)],
        _mode: &RestoreMode,
    ) -> Result<RestorePlan, BoxError> {
        Ok(RestorePlan {
            install: staged.iter().map(|(t, s)| (s.clone(), t.clone())).collect(),
            remove: Vec::new(),
            discard: Vec::new(),
            notes: Vec::new(),
        })
    }
}

/// How [`Writer::expose`] opens a copy.
#[derive(Clone, Debug, Default)]
pub struct ExposeOptions {
    /// The writer's own directory for what it builds.
    pub scratch: PathBuf,
    /// Also listen on this TCP port on the loopback address, where the copy's own
    /// accounts and passwords are asked for.
    pub port: Option<u16>,
    /// Put the server's socket in this directory instead of a private one (the engine
    /// checked that not every user can reach it: the socket lets its users in).
    pub socket_dir: Option<PathBuf>,
    /// Replay the logs after the copy up to this target (as `restore --until`) before
    /// opening it read-only there.
    pub until: Option<String>,
}

/// A copy opened read-only by its writer ([`Writer::expose`]).
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Exposed {
    /// What to give a client: a socket directory, a file.
    pub address: String,
    /// The command that connects to it.
    pub connect: String,
    /// The server process serving it, which closing the exposure stops; `None` when
    /// there is none (a file).
    pub pid: Option<u32>,
    /// The port it listens on (on loopback with `--port`, else only its socket's name).
    #[serde(default)]
    pub port: Option<u16>,
    /// A private directory of its own (socket, logs) outside the scratch, removed when
    /// the exposure closes; never a directory the user chose.
    #[serde(default)]
    pub private_dir: Option<PathBuf>,
    /// The writer that opened it (its `name()`), which extracts from it.
    #[serde(default)]
    pub writer: String,
}

/// `value` as one word for a POSIX shell, for commands printed for the user to run:
/// as it is when it holds only characters no shell treats specially, else in single
/// quotes.
pub fn shell_quote(value: impl AsRef<std::ffi::OsStr>) -> String {
    let value = value.as_ref().to_string_lossy();
    let plain = !value.is_empty()
        && value
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "_./-=:,@%+".contains(c));
    if plain {
        value.into_owned()
    } else {
        format!("'{}'", value.replace('\'', "'\\''"))
    }
}

/// One usable copy of the set, as a writer's `backup_complete` sees it.
#[derive(Clone, Debug)]
pub struct KeptCopy {
    pub id: CopyId,
    pub view: CopyView,
}

/// The set's other usable copies (the one being completed is not among them). Read only
/// when a writer asks, since exposing a copy can cost something.
pub trait KeptCopies {
    /// Every other usable copy of the set, oldest first. An error means "not known":
    /// a writer then truncates nothing.
    fn kept(&self) -> Result<Vec<KeptCopy>, BoxError>;

    /// Whether the set's logs go to an archive off the host, and how far they are there:
    /// a log that is only on this host is still needed, whatever the copies need.
    fn logs_off_host(&self) -> LogsOffHost {
        LogsOffHost::NoArchive
    }
}

/// How far a set's logs are in its archive off the host ([`KeptCopies::logs_off_host`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum LogsOffHost {
    /// The set has no archive: a truncation follows the kept copies alone.
    NoArchive,
    /// The set has an archive, which holds its logs up to and including this file (the
    /// newest one a push of the logs sent or found there); `None`: none yet, or not known.
    Through(Option<String>),
}

/// For sets whose writers never look (the raw `pre-restore` copy): asking is an error,
/// so nothing is ever truncated on the strength of it.
pub struct KeptCopiesUnknown;

impl KeptCopies for KeptCopiesUnknown {
    fn kept(&self) -> Result<Vec<KeptCopy>, BoxError> {
        Err("the set's other copies are not known here".into())
    }
}

impl KeptCopies for Vec<KeptCopy> {
    fn kept(&self) -> Result<Vec<KeptCopy>, BoxError> {
        Ok(self.clone())
    }
}

/// The path a restore stages `target` at: beside it, so the final rename is atomic.
pub fn staged_path(target: &Path) -> PathBuf {
    let mut name = target.file_name().unwrap_or_default().to_os_string();
    name.push(".shadowcopy-restore");
    target.with_file_name(name)
}

#[cfg(test)]
mod shell_quote_tests {
    use super::shell_quote;

    #[test]
    fn words_are_quoted_only_when_a_shell_would_split_or_expand_them() {
        assert_eq!(shell_quote("/srv/app.db"), "/srv/app.db");
        assert_eq!(shell_quote("a b"), "'a b'");
        assert_eq!(shell_quote("it's"), "'it'\\''s'");
        assert_eq!(shell_quote("$(rm -rf /)"), "'$(rm -rf /)'");
        assert_eq!(shell_quote(""), "''");
    }
}
