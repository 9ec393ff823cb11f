//! `shadowcopy-catalog`: the embedded SQLite catalog, the single source of truth for
//! sets, copies, phases and their timings, components, file manifests and verification
//! results, plus the per-catalog queue that lets one shadow set run at a time.
//!
//! The catalog runs in WAL mode with `synchronous=FULL`: every journal call is durable
//! when it returns, which is what makes cleanup after a crash possible.
//!
//! Where it lives and who may read it ([`Catalog::open`] and its siblings):
//! - the directory is always absolute (a relative one is resolved once, at open), so every
//!   location recorded under it is absolute too;
//! - the directory is private (0700) and `catalog.db` with its `-wal`/`-shm` 0600: they
//!   describe, and the copies under `copies/` hold, data that other users may not read.
//!   An existing directory open to group or others is tightened (with a warning) by a
//!   command that writes, and warned about by one that only reads;
//! - only `create` (and `quickstart`) create a catalog; the other commands need one,
//!   and read-only commands open it read-only: they change nothing in it (SQLite may
//!   leave an empty `-wal` and the `-shm` index beside it, 0600 like the database) and
//!   work on a full file system;
//! - a missing or empty `catalog.db` beside existing copies is refused: starting a new
//!   catalog there would orphan them and reuse their ids;
//! - a small preallocated file (`space.reserve`) keeps room for `delete` on a full file
//!   system: [`Catalog::open_to_free_space`] gives it back before writing.

mod archived_logs;
mod exposures;
mod jobs;
mod journal;
mod leaf_hashes;
mod migrations;
mod outbox;
mod paths;
mod queries;
mod queue;
mod recovery;
mod space;

use std::fs::OpenOptions;
use std::io;
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::Duration;

use rusqlite::{Connection, OpenFlags};

pub use exposures::{ExposureRecord, ExposureState};
pub use jobs::JobRecord;
pub use leaf_hashes::LeafBase;
pub use outbox::CopyChange;
pub use queries::{
    CopyDetail, CopyFacts, CopySummary, NewestCopy, PhaseRecord, SetTotals, VerificationRecord,
};
pub use queue::{QueueError, QueueGuard, QueueHolder, Wait};
pub use recovery::{ProviderFor, Recovered};

pub const CATALOG_FILE: &str = "catalog.db";

/// Mode of the catalog directory and of the copies directories: owner only.
pub const PRIVATE_DIR_MODE: u32 = 0o700;
/// Mode of `catalog.db` and the other files of the catalog.
pub const PRIVATE_FILE_MODE: u32 = 0o600;

#[derive(Debug, thiserror::Error)]
pub enum CatalogError {
    #[error(
        "cannot create the catalog directory {dir}; choose a writable place with --catalog DIR \
         or SHADOWCOPY_CATALOG"
    )]
    CreateDir {
        dir: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error(
        "the catalog directory {} belongs to user {owner}, who could plant links in it for a \
         root-run shadowcopy to write through; keep root's catalog in a directory root owns \
         (choose another with --catalog DIR, or `chown root` this one)",
        dir.display()
    )]
    ForeignDir { dir: PathBuf, owner: u32 },
    #[error("cannot secure the catalog {path} (make it private to its owner)")]
    Secure {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error(
        "there is no catalog at {dir} (no {CATALOG_FILE} there); check --catalog, \
         SHADOWCOPY_CATALOG or the config's `catalog`. A catalog is created by the first \
         `shadowcopy create`"
    )]
    NoCatalog { dir: PathBuf },
    #[error(
        "the catalog {path} is {state}, but {evidence}: the catalog was lost or truncated and \
         starting a new one here would orphan those copies. Put back {CATALOG_FILE} from a \
         backup, or move {dir}'s contents elsewhere to start a new catalog",
        dir = .path.parent().unwrap_or(Path::new("/")).display()
    )]
    Lost {
        path: PathBuf,
        state: &'static str,
        evidence: String,
    },
    #[error(
        "the file system holding the catalog {} is full; free space there, or delete copies \
         with `shadowcopy delete ID...` (which works on a full file system)",
        .dir.display()
    )]
    Full {
        dir: PathBuf,
        #[source]
        source: rusqlite::Error,
    },
    #[error(
        "the file system holding the catalog {} is full, and the room the catalog keeps for \
         deleting is used up (or was never made: an older shadowcopy made this catalog); free a \
         few MiB there by hand, then `shadowcopy delete` can free the rest",
        .dir.display()
    )]
    FullWithoutReserve {
        dir: PathBuf,
        #[source]
        source: rusqlite::Error,
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
    Sql(#[source] rusqlite::Error),
    #[error("copy {0} does not exist in this catalog; `shadowcopy list` shows the copies")]
    NoSuchCopy(i64),
    #[error(
        "copy {id} has {what} `{value}` in the catalog, which this shadowcopy does not know \
         (written by a newer version?); it is left alone. Use the shadowcopy that made it"
    )]
    Unknown {
        id: i64,
        what: &'static str,
        value: String,
    },
}

impl From<rusqlite::Error> for CatalogError {
    fn from(e: rusqlite::Error) -> Self {
        CatalogError::Sql(e)
    }
}

/// How a command needs the catalog.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Access {
    /// Read and write, creating the catalog if there is none (`create`).
    Create,
    /// Read and write an existing catalog (`verify`, `restore`, `delete`).
    Existing,
    /// Like `Existing`, without making the space reserve (`delete`, which may have just
    /// released it to make room).
    FreeSpace,
    /// Read only: writes nothing, creates nothing (`list`, `show`).
    ReadOnly,
}

/// An open catalog. Not `Sync`: each thread opens its own.
pub struct Catalog {
    dir: PathBuf,
    conn: Connection,
}

impl Catalog {
    /// Opens (creating if needed) the catalog in `dir` and brings its schema up to date.
    pub fn open(dir: &Path) -> Result<Catalog, CatalogError> {
        Catalog::open_as(dir, Access::Create)
    }

    /// Opens the catalog in `dir` for reading and writing; it must exist.
    pub fn open_existing(dir: &Path) -> Result<Catalog, CatalogError> {
        Catalog::open_as(dir, Access::Existing)
    }

    /// Opens the catalog in `dir` read-only: nothing in it is changed (see the crate
    /// documentation), and it works on a full file system. It must exist.
    pub fn open_read_only(dir: &Path) -> Result<Catalog, CatalogError> {
        Catalog::open_as(dir, Access::ReadOnly)
    }

    fn open_as(dir: &Path, access: Access) -> Result<Catalog, CatalogError> {
        let dir = absolute(dir)?;
        let path = dir.join(CATALOG_FILE);
        let db_len = match std::fs::metadata(&path) {
            Ok(m) => Some(m.len()),
            Err(e) if e.kind() == io::ErrorKind::NotFound => None,
            Err(source) => return Err(CatalogError::Secure { path, source }),
        };
        if db_len.unwrap_or(0) == 0 {
            refuse_lost(&dir, &path, db_len.is_some())?;
        }
        if db_len.is_none() && access != Access::Create {
            return Err(CatalogError::NoCatalog { dir });
        }
        if access == Access::ReadOnly {
            warn_if_open_to_others(&dir);
            if db_len == Some(0) {
                // An empty catalog.db is an empty catalog: read it as one, writing nothing.
                let conn = Connection::open_in_memory()?;
                migrations::migrate(&conn, &path)?;
                return Ok(Catalog { dir, conn });
            }
            return Catalog::open_read_only_file(dir, &path);
        }
        if access == Access::Create {
            create_private_dir(&dir)?;
        }
        secure(&dir, &path)?;
        let conn = Catalog::connect(&dir, &path)?;
        migrations::migrate(&conn, &path).map_err(|e| match e {
            CatalogError::Sql(e) => open_error(&dir, &path, e),
            e => e,
        })?;
        if access != Access::FreeSpace {
            space::ensure_reserve(&dir);
        }
        Ok(Catalog { dir, conn })
    }

    /// A read-write connection in WAL mode, `catalog.db` created 0600 if missing.
    fn connect(dir: &Path, path: &Path) -> Result<Connection, CatalogError> {
        match OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(PRIVATE_FILE_MODE)
            .open(path)
        {
            Ok(_) => {}
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
            Err(source) if space::is_enospc(&source) => {
                return Err(CatalogError::Full {
                    dir: dir.to_path_buf(),
                    source: rusqlite::Error::SqliteFailure(
                        rusqlite::ffi::Error::new(rusqlite::ffi::SQLITE_FULL),
                        Some(source.to_string()),
                    ),
                })
            }
            Err(source) => {
                return Err(CatalogError::Secure {
                    path: path.to_path_buf(),
                    source,
                })
            }
        }
        let open_err = |source| open_error(dir, path, source);
        let conn = Connection::open(path).map_err(open_err)?;
        conn.busy_timeout(Duration::from_secs(10))
            .map_err(open_err)?;
        conn.pragma_update(None, "journal_mode", "WAL")
            .map_err(open_err)?;
        conn.pragma_update(None, "synchronous", "FULL")
            .map_err(open_err)?;
        conn.pragma_update(None, "foreign_keys", "ON")
            .map_err(open_err)?;
        // Opening a WAL database creates its -wal and -shm with the database's mode;
        // make sure of it for files left by an older shadowcopy.
        secure_files(path)?;
        Ok(conn)
    }

    /// Opens `path` read-only. SQLite needs the `-shm` index of a WAL database, which it
    /// cannot create on a full file system: then, if no write-ahead log holds anything
    /// the database file lacks, the database file is read as it is (`immutable`).
    fn open_read_only_file(dir: PathBuf, path: &Path) -> Result<Catalog, CatalogError> {
        let flags = OpenFlags::SQLITE_OPEN_READ_ONLY
            | OpenFlags::SQLITE_OPEN_URI
            | OpenFlags::SQLITE_OPEN_NO_MUTEX;
        let try_open = |immutable: bool| -> rusqlite::Result<Connection> {
            let conn = if immutable {
                Connection::open_with_flags(
                    shadowcopy_core::dbfiles::sqlite_uri(path, "mode=ro&immutable=1"),
                    flags,
                )?
            } else {
                Connection::open_with_flags(path, flags)?
            };
            conn.busy_timeout(Duration::from_secs(10))?;
            conn.query_row("SELECT COUNT(*) FROM sqlite_master", [], |r| {
                r.get::<_, i64>(0)
            })?;
            Ok(conn)
        };
        let conn = match try_open(false) {
            Ok(conn) => conn,
            Err(first) => {
                let mut wal = path.as_os_str().to_os_string();
                wal.push("-wal");
                let wal_empty = std::fs::metadata(&wal).map_or(true, |m| m.len() == 0);
                match try_open(true) {
                    Ok(conn) if wal_empty => {
                        tracing::debug!(error = %first, "catalog read as an immutable file");
                        conn
                    }
                    _ => return Err(open_error(&dir, path, first)),
                }
            }
        };
        let found: i64 = conn.pragma_query_value(None, "user_version", |r| r.get(0))?;
        match migrations::pending(found) {
            Ok(0) => Ok(Catalog { dir, conn }),
            // An older schema is brought up to date once, the only write a read-only
            // command makes (the queries need the current schema).
            Ok(_) => {
                drop(conn);
                Catalog::open_as(&dir, Access::Existing)
            }
            Err(known) => Err(CatalogError::TooNew {
                path: path.to_path_buf(),
                found,
                known,
            }),
        }
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Where the `copy` provider keeps copies unless told otherwise.
    pub fn default_copies_dir(&self) -> PathBuf {
        self.dir.join("copies")
    }

    /// A SQL error, said to be a full file system when it is one.
    pub(crate) fn sql(&self, e: rusqlite::Error) -> CatalogError {
        if space::is_full(&e, &self.dir) {
            CatalogError::Full {
                dir: self.dir.clone(),
                source: e,
            }
        } else {
            CatalogError::Sql(e)
        }
    }
}

fn open_error(dir: &Path, path: &Path, source: rusqlite::Error) -> CatalogError {
    if space::is_full(&source, dir) {
        CatalogError::Full {
            dir: dir.to_path_buf(),
            source,
        }
    } else {
        CatalogError::Open {
            path: path.to_path_buf(),
            source,
        }
    }
}

/// `dir` made absolute against the current directory, once: everything recorded under
/// the catalog is then absolute and means the same from any directory.
fn absolute(dir: &Path) -> Result<PathBuf, CatalogError> {
    std::path::absolute(dir).map_err(|source| CatalogError::CreateDir {
        dir: dir.to_path_buf(),
        source,
    })
}

/// Refuses to start a catalog where copies exist: `catalog.db` is missing or empty
/// (`exists` says which) but the directory holds copies or a write-ahead log.
fn refuse_lost(dir: &Path, path: &Path, exists: bool) -> Result<(), CatalogError> {
    let mut evidence = Vec::new();
    let copies = dir.join("copies");
    if let Ok(entries) = std::fs::read_dir(&copies) {
        let n = entries
            .filter_map(Result::ok)
            .filter(|e| e.file_name().to_string_lossy().starts_with("copy-"))
            .count();
        if n > 0 {
            evidence.push(format!(
                "{} holds {n} cop{}",
                copies.display(),
                if n == 1 { "y" } else { "ies" }
            ));
        }
    }
    let mut wal = path.as_os_str().to_os_string();
    wal.push("-wal");
    if std::fs::metadata(&wal).is_ok_and(|m| m.len() > 0) {
        evidence.push(format!(
            "its write-ahead log {} holds data",
            Path::new(&wal).display()
        ));
    }
    if evidence.is_empty() {
        return Ok(());
    }
    Err(CatalogError::Lost {
        path: path.to_path_buf(),
        state: if exists { "empty" } else { "missing" },
        evidence: evidence.join(" and "),
    })
}

/// Creates `dir` (and its missing parents) with the leaf private to its owner.
fn create_private_dir(dir: &Path) -> Result<(), CatalogError> {
    let err = |source| CatalogError::CreateDir {
        dir: dir.to_path_buf(),
        source,
    };
    if dir.is_dir() {
        return Ok(());
    }
    if let Some(parent) = dir.parent() {
        std::fs::create_dir_all(parent).map_err(err)?;
    }
    match std::fs::DirBuilder::new()
        .mode(PRIVATE_DIR_MODE)
        .create(dir)
    {
        Ok(()) => {
            // The umask may have taken bits away, never added them: set the exact mode.
            std::fs::set_permissions(dir, std::fs::Permissions::from_mode(PRIVATE_DIR_MODE))
                .map_err(err)
        }
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists && dir.is_dir() => Ok(()),
        Err(e) => Err(err(e)),
    }
}

/// The directory and the database files made private to their owner. A directory that
/// was open to others is tightened rather than only warned about: the catalog holds
/// every copy's paths and settings and, under `copies/`, copies of data whose own
/// directories may have kept others out; leaving it readable would hand that data to
/// every local user. The warning says what was changed, so an administrator who opened
/// it on purpose (to a backup group, say) learns why it closed.
fn secure(dir: &Path, path: &Path) -> Result<(), CatalogError> {
    let meta = std::fs::metadata(dir).map_err(|source| CatalogError::Secure {
        path: dir.to_path_buf(),
        source,
    })?;
    if rustix::process::geteuid().is_root() && meta.uid() != 0 {
        return Err(CatalogError::ForeignDir {
            dir: dir.to_path_buf(),
            owner: meta.uid(),
        });
    }
    let mode = meta.mode() & 0o7777;
    if mode & 0o077 != 0 {
        let tight = mode & !0o077;
        match std::fs::set_permissions(dir, std::fs::Permissions::from_mode(tight)) {
            Ok(()) => tracing::warn!(
                "the catalog directory {} was open to other users (mode {mode:o}); made it private (mode {tight:o}): it holds copies of their data",
                dir.display()
            ),
            // Not ours to change (a shared catalog of another user): say so, go on.
            Err(e) if e.kind() == io::ErrorKind::PermissionDenied => tracing::warn!(
                "the catalog directory {} is open to other users (mode {mode:o}) and only its owner can make it private; ask them to (chmod go= {})",
                dir.display(),
                dir.display()
            ),
            Err(source) => {
                return Err(CatalogError::Secure {
                    path: dir.to_path_buf(),
                    source,
                })
            }
        }
    }
    secure_files(path)
}

/// `catalog.db` and its `-wal`/`-shm` (those that exist) made 0600 or tighter.
fn secure_files(path: &Path) -> Result<(), CatalogError> {
    for suffix in ["", "-wal", "-shm"] {
        let mut p = path.as_os_str().to_os_string();
        p.push(suffix);
        let p = PathBuf::from(p);
        let Ok(meta) = std::fs::symlink_metadata(&p) else {
            continue;
        };
        let mode = meta.mode() & 0o7777;
        if meta.is_file() && mode & 0o077 != 0 {
            match std::fs::set_permissions(&p, std::fs::Permissions::from_mode(mode & 0o700)) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::PermissionDenied => tracing::warn!(
                    "{} is open to other users (mode {mode:o}) and only its owner can make it private",
                    p.display()
                ),
                Err(source) => return Err(CatalogError::Secure { path: p, source }),
            }
        }
    }
    Ok(())
}

/// A read-only command changes nothing, but says when the catalog is open to others.
fn warn_if_open_to_others(dir: &Path) {
    if let Ok(meta) = std::fs::metadata(dir) {
        let mode = meta.mode() & 0o7777;
        if mode & 0o077 != 0 {
            tracing::warn!(
                "the catalog directory {} is open to other users (mode {mode:o}); the next command that writes to it makes it private",
                dir.display()
            );
        }
    }
}

pub fn now_ms() -> i64 {
    chrono::Utc::now().timestamp_millis()
}
