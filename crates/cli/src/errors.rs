//! CLI-level errors and how every error maps to the documented exit codes.

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
        if let Some(CatalogError::NoSuchCopy(_) | CatalogError::NoCatalog { .. }) =
            cause.downcast_ref::<CatalogError>()
        {
            return 2;
        }
    }
    1
}
