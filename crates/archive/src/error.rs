//! What goes wrong with an archive, in words that say what to do; the kinds map to the
//! CLI's exit codes (bad input 2, damaged data 4, else 1).

use shadowcopy_core::ErrorKind;

#[derive(Debug, thiserror::Error)]
pub enum ArchiveError {
    #[error("{0}")]
    Usage(String),
    #[error(
        "the passphrase opens none of the repository's keys; give the right one \
         (SHADOWCOPY_ARCHIVE_PASSWORD or --password-file)"
    )]
    WrongPassphrase,
    #[error(
        "there is no archive at {url}: {why}; create one with `shadowcopy archive init {url}`"
    )]
    NoRepository { url: String, why: String },
    #[error("{what} is not in the format this version reads: {why}")]
    Format { what: String, why: String },
    #[error("{what} is damaged: {why}")]
    Damaged { what: String, why: String },
    #[error("copy {copy} is already in the archive (manifest {manifest})")]
    AlreadyArchived { copy: i64, manifest: String },
    #[error("the object store: {0}")]
    Store(#[from] object_store::Error),
    #[error("{0}")]
    Io(#[from] std::io::Error),
}

impl ArchiveError {
    pub fn kind(&self) -> ErrorKind {
        match self {
            ArchiveError::Usage(_)
            | ArchiveError::WrongPassphrase
            | ArchiveError::NoRepository { .. }
            | ArchiveError::AlreadyArchived { .. } => ErrorKind::Usage,
            ArchiveError::Damaged { .. } => ErrorKind::VerifyFailed,
            _ => ErrorKind::Failed,
        }
    }
}
