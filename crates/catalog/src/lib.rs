//! `shadowcopy-catalog`: the embedded SQLite catalog, the single source of truth for
//! sets, copies, phases and their timings, components, file manifests and verification
//! results, plus the per-catalog queue that lets one shadow set run at a time.
//!
//! The catalog runs in WAL mode with `synchronous=FULL`: every journal call is durable
//! when it returns, which is what makes cleanup after a crash possible.

mod journal;
mod migrations;
mod queries;
mod queue;
mod recovery;

use std::path::{Path, PathBuf};
use std::time::Duration;

use rusqlite::Connection;

pub use queries::{CopyDetail, CopySummary, PhaseRecord, VerificationRecord};
pub use queue::{QueueError, QueueGuard, QueueHolder, Wait};
pub use recovery::{ProviderFor, Recovered};

pub const CATALOG_FILE: &str = "catalog.db";

#[derive(Debug, thiserror::Error)]
pub enum CatalogError {
    #[error(
        "cannot create the catalog directory {dir}; choose a writable place with --catalog DIR \
         or SHADOWCOPY_CATALOG"
    )]
    CreateDir {
        dir: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "cannot open the catalog {path}; check that the directory is writable, or choose another \
         with --catalog DIR or SHADOWCOPY_CATALOG"
    )]
    Open {
        path: PathBuf,
        #[source]
        source: rusqlite::Error,
    },
    #[error(
        "the catalog {path} has schema version {found}, newer than this shadowcopy understands \
         ({known}); upgrade shadowcopy"
    )]
    TooNew {
        path: PathBuf,
        found: i64,
        known: i64,
    },
    #[error("catalog query failed")]
    Sql(#[from] rusqlite::Error),
    #[error("copy {0} does not exist in this catalog; `shadowcopy list` shows the copies")]
    NoSuchCopy(i64),
}

/// An open catalog. Not `Sync`: each thread opens its own.
pub struct Catalog {
    dir: PathBuf,
    conn: Connection,
}

impl Catalog {
    /// Opens (creating if needed) the catalog in `dir` and brings its schema up to date.
    pub fn open(dir: &Path) -> Result<Catalog, CatalogError> {
        std::fs::create_dir_all(dir).map_err(|source| CatalogError::CreateDir {
            dir: dir.to_path_buf(),
            source,
        })?;
        let path = dir.join(CATALOG_FILE);
        let open_err = |source| CatalogError::Open {
            path: path.clone(),
            source,
        };
        let conn = Connection::open(&path).map_err(open_err)?;
        conn.busy_timeout(Duration::from_secs(10))
            .map_err(open_err)?;
        conn.pragma_update(None, "journal_mode", "WAL")
            .map_err(open_err)?;
        conn.pragma_update(None, "synchronous", "FULL")
            .map_err(open_err)?;
        conn.pragma_update(None, "foreign_keys", "ON")
            .map_err(open_err)?;
        migrations::migrate(&conn, &path)?;
        Ok(Catalog {
            dir: dir.to_path_buf(),
            conn,
        })
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Where the `copy` provider keeps copies unless told otherwise.
    pub fn default_copies_dir(&self) -> PathBuf {
        self.dir.join("copies")
    }
}

pub(crate) fn now_ms() -> i64 {
    chrono::Utc::now().timestamp_millis()
}
