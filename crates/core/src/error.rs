//! The public error of the core: what failed, what to do, and which exit code it maps to.

use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::model::{CopyId, Phase};

/// Errors that writers and providers return through the trait boundary. Concrete crates
/// use their own `thiserror` enums and box them here.
pub type BoxError = Box<dyn std::error::Error + Send + Sync + 'static>;

/// An I/O step that failed: what was being done, to which path. The one I/O error of
/// every crate: their error enums wrap it (`#[error(transparent)] Io(#[from] IoError)`).
#[derive(Debug, thiserror::Error)]
#[error("cannot {action} {}", .path.display())]
pub struct IoError {
    pub action: &'static str,
    pub path: PathBuf,
    #[source]
    pub source: std::io::Error,
}

/// `.map_err(io_err("open", path))`: the [`IoError`] of an I/O error.
pub fn io_err<'a>(
    action: &'static str,
    path: &'a Path,
) -> impl FnOnce(std::io::Error) -> IoError + 'a {
    move |source| IoError {
        action,
        path: path.to_path_buf(),
        source,
    }
}

/// The class of an error, which decides the process exit code (see README).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ErrorKind {
    /// The operation was attempted and failed (exit 1).
    Failed,
    /// Bad input: unknown set, missing file, wrong kind of file (exit 2).
    Usage,
    /// The copy exists but failed its integrity check (exit 4).
    VerifyFailed,
    /// Refused because the live data is in use (exit 5).
    InUse,
}

impl ErrorKind {
    pub fn exit_code(self) -> i32 {
        match self {
            ErrorKind::Failed => 1,
            ErrorKind::Usage => 2,
            ErrorKind::VerifyFailed => 4,
            ErrorKind::InUse => 5,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("writer {writer} failed during {phase}")]
    Writer {
        writer: String,
        phase: Phase,
        #[source]
        source: BoxError,
    },
    #[error("provider {provider} failed during {phase}")]
    Provider {
        provider: String,
        phase: Phase,
        #[source]
        source: BoxError,
    },
    #[error(
        "the freeze deadline of {} was exceeded during {phase}; every writer was thawed and the \
         partial copy discarded. Raise `freeze_deadline` for this set (or --freeze-deadline) or \
         use a faster provider such as reflink",
        humanize(*deadline)
    )]
    DeadlineExceeded { deadline: Duration, phase: Phase },
    #[error("the catalog could not record the {what}")]
    Journal {
        what: &'static str,
        #[source]
        source: crate::journal::JournalError,
    },
    #[error("{message}")]
    Usage { message: String },
    #[error("copy {id} failed verification: {detail}. The copy is kept for inspection but will not be restored without --force")]
    VerifyFailed { id: CopyId, detail: String },
    #[error("{message}")]
    InUse { message: String },
    #[error("the data was restored, but {writer} failed after it; check the application (start it by hand if needed)")]
    AfterRestore {
        writer: String,
        #[source]
        source: BoxError,
    },
    #[error("restore failed while {step}; the live data was left as it was")]
    Restore {
        step: String,
        #[source]
        source: BoxError,
    },
}

impl Error {
    pub fn kind(&self) -> ErrorKind {
        match self {
            Error::Usage { .. } => ErrorKind::Usage,
            Error::VerifyFailed { .. } => ErrorKind::VerifyFailed,
            Error::InUse { .. } => ErrorKind::InUse,
            _ => ErrorKind::Failed,
        }
    }

    pub fn usage(message: impl Into<String>) -> Self {
        Error::Usage {
            message: message.into(),
        }
    }

    pub(crate) fn journal(
        what: &'static str,
    ) -> impl FnOnce(crate::journal::JournalError) -> Error {
        move |source| Error::Journal { what, source }
    }
}

/// A failure a new attempt may well not meet: the application was busy at the instant
/// of the copy (InnoDB wrote pages during a file-by-file copy). A writer wraps such an
/// error in it; the engine then runs the whole set again, a few times, before it
/// reports the error. Shows as the error it wraps.
#[derive(Debug, thiserror::Error)]
#[error(transparent)]
pub struct Transient(pub BoxError);

impl Transient {
    pub fn boxed(e: impl Into<BoxError>) -> BoxError {
        Box::new(Transient(e.into()))
    }

    /// Whether `e` or any of its sources is a [`Transient`] failure.
    pub fn in_chain(e: &(dyn std::error::Error + 'static)) -> bool {
        std::iter::successors(Some(e), |cur| cur.source())
            .any(|cause| cause.downcast_ref::<Transient>().is_some())
    }
}

/// Formats a duration the way people read it: `850ms`, `2.4s`, `3m12s`.
pub fn humanize(d: Duration) -> String {
    let ms = d.as_secs_f64() * 1000.0;
    if ms < 1.0 {
        format!("{}µs", d.as_micros())
    } else if ms < 1000.0 {
        format!("{ms:.1}ms")
    } else if ms < 60_000.0 {
        format!("{:.2}s", ms / 1000.0)
    } else {
        let s = d.as_secs();
        format!("{}m{:02}s", s / 60, s % 60)
    }
}

/// Formats a byte count with binary units: `512 B`, `4.0 KiB`, `1.25 GiB`.
pub fn human_bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = n as f64;
    let mut u = 0;
    while v >= 1024.0 && u < UNITS.len() - 1 {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 {
        format!("{n} B")
    } else {
        format!("{v:.2} {}", UNITS[u])
    }
}

/// An error and all its sources on one line: `a: b: c`.
pub fn error_chain(e: &Error) -> String {
    chain(e)
}

/// Any error and its sources on one line; a source whose text the line already holds
/// (an error that prints its source itself) is not repeated.
pub fn chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(inner) = cur {
        let text = inner.to_string();
        if !s.contains(&text) {
            s.push_str(": ");
            s.push_str(&text);
        }
        cur = inner.source();
    }
    s
}
