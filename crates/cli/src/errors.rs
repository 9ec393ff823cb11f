//! CLI-level errors, how every error maps to the documented exit codes, and the JSON
//! error object a failing command prints on stdout when `--json` was given.

use serde::Serialize;
use shadowcopy_catalog::{CatalogError, QueueError};

/// Bad input from the user: exit code 2, and nothing was written.
#[derive(Debug, thiserror::Error)]
#[error("{message}")]
pub struct UsageError {
    message: String,
}

impl UsageError {
    pub fn new(message: impl Into<String>) -> Self {
        UsageError {
            message: message.into(),
        }
    }
}

/// The exit code for an error, from the first cause in its chain that decides one.
pub fn exit_code(err: &anyhow::Error) -> i32 {
    for cause in err.chain() {
        if cause.downcast_ref::<UsageError>().is_some() {
            return 2;
        }
        if let Some(e) = cause.downcast_ref::<shadowcopy_core::Error>() {
            return e.kind().exit_code();
        }
        if let Some(e) = cause.downcast_ref::<QueueError>() {
            return match e {
                QueueError::Busy { .. } | QueueError::TimedOut { .. } => 3,
                QueueError::Io { .. } => 1,
            };
        }
        if let Some(e) = cause.downcast_ref::<shadowcopy_postgres::archive::ArchiveError>() {
            return e.kind().exit_code();
        }
        if let Some(
            CatalogError::NoSuchCopy(_)
            | CatalogError::NoCatalog { .. }
            | CatalogError::ForeignDir { .. },
        ) = cause.downcast_ref::<CatalogError>()
        {
            return 2;
        }
    }
    1
}

/// What a failing command prints on stdout with `--json` (the human error still goes to
/// stderr): `{"error": {"code": 4, "message": "...", "causes": [...], "copy_id": 7}}`.
#[derive(Debug, Serialize)]
pub struct JsonError {
    error: JsonErrorBody,
}

#[derive(Debug, Serialize)]
struct JsonErrorBody {
    /// The process exit code (see README).
    code: i32,
    /// The error itself, as the first line on stderr.
    message: String,
    /// Its sources, outermost first (the `because:` lines on stderr).
    causes: Vec<String>,
    /// The copy that failed verification (exit 4).
    #[serde(skip_serializing_if = "Option::is_none")]
    copy_id: Option<i64>,
}

impl JsonError {
    /// The object for an error a subcommand returned.
    pub fn from_error(err: &anyhow::Error) -> JsonError {
        let mut chain = err.chain().map(ToString::to_string);
        let message = chain.next().unwrap_or_default();
        let copy_id =
            err.chain().find_map(
                |cause| match cause.downcast_ref::<shadowcopy_core::Error>() {
                    Some(shadowcopy_core::Error::VerifyFailed { id, .. }) => Some(*id),
                    _ => None,
                },
            );
        JsonError {
            error: JsonErrorBody {
                code: exit_code(err),
                message,
                causes: chain.collect(),
                copy_id,
            },
        }
    }

    /// The object for a command line that could not be parsed (clap's error, rendered
    /// as text): its first paragraph on one line, without the `error: ` prefix.
    pub fn from_usage(code: i32, rendered: &str) -> JsonError {
        let text = rendered.trim_start();
        let text = text.strip_prefix("error:").unwrap_or(text);
        let first = text.split("\n\n").next().unwrap_or_default();
        JsonError {
            error: JsonErrorBody {
                code,
                message: first
                    .lines()
                    .map(str::trim)
                    .filter(|l| !l.is_empty())
                    .collect::<Vec<_>>()
                    .join(" "),
                causes: Vec::new(),
                copy_id: None,
            },
        }
    }
}
