//! The errors every front end sorts the same way: bad input ([`UsageError`], nothing was
//! written), and the class of any error as the exit code README.md documents (the API
//! and the console report the same number).

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

/// A wait the user bounded ran out while the work goes on elsewhere (a job a backup
/// server runs, followed with `--wait`): exit code 3, as for a busy queue.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct WaitExceeded(pub String);

/// The exit code for an error, from the first cause in its chain that decides one:
/// 2 bad input, 3 the queue is busy, 4 a copy failed verification, 1 anything else.
pub fn exit_code(err: &anyhow::Error) -> i32 {
    for cause in err.chain() {
        if cause.downcast_ref::<UsageError>().is_some() {
            return 2;
        }
        if cause.downcast_ref::<WaitExceeded>().is_some() {
            return 3;
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
        if let Some(e) = cause.downcast_ref::<shadowcopy_archive::ArchiveError>() {
            return e.kind().exit_code();
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

/// The copy whose verification failed, when that is what `err` is (exit 4).
pub fn failed_copy(err: &anyhow::Error) -> Option<i64> {
    err.chain().find_map(
        |cause| match cause.downcast_ref::<shadowcopy_core::Error>() {
            Some(shadowcopy_core::Error::VerifyFailed { id, .. }) => Some(*id),
            _ => None,
        },
    )
}
