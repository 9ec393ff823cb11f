//! The SQLite writer.
//!
//! - freeze: `BEGIN IMMEDIATE` on a connection of our own takes SQLite's write lock
//!   (RESERVED in rollback-journal mode, the WAL write lock in WAL mode): other writers
//!   wait (their busy timeout), readers keep running, and no commit can change the
//!   database or its WAL until thaw. The lock belongs to our connection, so it is released
//!   by the kernel if this process dies: nothing can be left frozen.
//! - components: the database file and, in WAL mode, its `-wal` (the copy of both opens
//!   to the last transaction committed before the freeze). A checkpoint by another
//!   connection while we are frozen only rewrites pages that the WAL also holds.
//! - pin (WAL mode): at the end of prepare a read transaction of our own is opened and
//!   held until thaw, and the database file is reported `pinned`, so a provider may copy
//!   it before the freeze. While that read transaction lives on a read mark above 0, no
//!   writer can restart the WAL (frames are never overwritten) and a checkpoint can only
//!   write pages into the database file that WAL frames still hold; on read mark 0 (the
//!   WAL was empty) the WAL may restart, but no checkpoint can write to the file at all.
//!   So the database file copied at any time in the span, plus the WAL copied while
//!   frozen, opens as the state at the freeze: every page a checkpoint changed under the
//!   copy is superseded by a frame in the copied WAL.
//! - verify: a scratch clone of the copy's files is opened and `PRAGMA integrity_check`
//!   runs on it, so the copy itself is never written (not even a `-shm`).
//! - restore: refuses while a process holds the live database open; the staged copy is
//!   checkpointed into a single file, and the live `-wal`, `-shm` and `-journal` are
//!   removed in the swap so no stale log is replayed onto restored data.

use std::io::Read;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use rusqlite::{Connection, OpenFlags};
use serde::{Deserialize, Serialize};
use shadowcopy_core::extract::{no_such_table, ExtractFormat, ExtractRequest};
use shadowcopy_core::model::{Changes, Component, ComponentRole, CopyView, VerifyReport};
use shadowcopy_core::writer::{shell_quote, ExposeOptions, Exposed, RestoreMode, RestorePlan};
use shadowcopy_core::{BoxError, Writer};

mod changed_pages;
mod page_check;

use crate::kind::{KindInfo, KindRole, Normalize, WriterKind};
use crate::{proc_scan, SetContext};

/// `[[sets.NAME.writers]] kind = "sqlite"`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SqliteOptions {
    /// The database file.
    #[serde(with = "shadowcopy_core::pathjson")]
    pub path: PathBuf,
}

impl WriterKind for SqliteOptions {
    fn normalize_paths(&mut self, normalize: Normalize<'_>) -> Result<(), String> {
        self.path = normalize(&self.path, "sqlite path")?;
        Ok(())
    }

    fn regular_files(&self) -> Vec<&Path> {
        vec![&self.path]
    }

    fn data_paths(&self) -> Vec<PathBuf> {
        vec![self.path.clone()]
    }

    fn build(&self, _context: &SetContext) -> Box<dyn Writer> {
        Box::new(SqliteWriter::new(self.clone()))
    }
}

impl KindInfo for SqliteOptions {
    const DESCRIPTION: &'static str = "a SQLite database (WAL or rollback journal): holds the write lock while frozen, readers keep running";
    const ROLE: KindRole = KindRole::Database;
    const ZERO_CONFIG_FLAG: Option<&'static str> = Some("--sqlite");
}

#[derive(Debug, thiserror::Error)]
pub enum SqliteError {
    #[error("{0}")]
    ExposeOption(&'static str),
    #[error("{} does not exist; give the path of an existing SQLite database", .0.display())]
    Missing(PathBuf),
    #[error("{} is not a SQLite database (its first bytes are not \"SQLite format 3\"); give the path of the database file itself", .0.display())]
    NotSqlite(PathBuf),
    #[error("cannot read {}", .path.display())]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("SQLite reported an error on {}", .path.display())]
    Sql {
        path: PathBuf,
        #[source]
        source: rusqlite::Error,
    },
    #[error(
        "could not take the write lock of {} before the freeze deadline: another connection held \
         it the whole time (a long write transaction?)",
        .path.display()
    )]
    LockTimeout { path: PathBuf },
    #[error(
        "the journal mode of {} changed while the shadow set ran (WAL on or off); try again",
        .path.display()
    )]
    JournalModeChanged { path: PathBuf },
    #[error("cannot prepare the staged file {}", .path.display())]
    Stage {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("the checkpoint of the staged database {} reported busy; is another process using it?", .path.display())]
    CheckpointBusy { path: PathBuf },
    #[error("{} still holds data after the staged database was finished; the restore stops here", .path.display())]
    NotFolded { path: PathBuf },
    #[error("the copy holds no {}", .0.display())]
    NotInCopy(PathBuf),
    #[error("{} is in use by {}", .path.display(), .holders)]
    InUse { path: PathBuf, holders: String },
    #[error("scratch space for verification")]
    Scratch(#[source] std::io::Error),
}

pub struct SqliteWriter {
    options: SqliteOptions,
    path: PathBuf,
    frozen: Option<Connection>,
    /// The read transaction that pins the database file (WAL mode), prepare to thaw.
    pin: Option<Connection>,
    /// identify reported the database file as pinned: prepare must pin it.
    reports_pinned: bool,
}

const HEADER: &[u8; 16] = b"SQLite format 3\0";

/// The files SQLite keeps beside a database.
const SIDECARS: [&str; 3] = ["-wal", "-journal", "-shm"];

/// Which sidecar `path` is, if it is one.
fn sidecar_of(path: &Path) -> Option<&'static str> {
    let name = path.file_name()?.to_string_lossy();
    SIDECARS.into_iter().find(|s| name.ends_with(s))
}

/// How long identify, prepare and restore checks wait for the application's locks.
const OUTSIDE_FREEZE_BUSY_TIMEOUT: Duration = Duration::from_secs(30);

/// How often freeze retries the write lock while another connection holds it.
const LOCK_POLL: Duration = Duration::from_micros(200);

impl SqliteWriter {
    pub fn new(options: SqliteOptions) -> Self {
        let path = std::path::absolute(&options.path).unwrap_or_else(|_| options.path.clone());
        SqliteWriter {
            options,
            path,
            frozen: None,
            pin: None,
            reports_pinned: false,
        }
    }

    pub fn options(&self) -> &SqliteOptions {
        &self.options
    }

    fn sql(&self) -> impl FnOnce(rusqlite::Error) -> SqliteError + '_ {
        |source| SqliteError::Sql {
            path: self.path.clone(),
            source,
        }
    }

    fn wal_path(db: &Path) -> PathBuf {
        suffixed(db, "-wal")
    }

    /// Opens the live database for the writer's own use; never creates one. Outside the
    /// freeze, waiting for the application's locks is fine (in rollback-journal mode even
    /// a read waits while a transaction commits).
    fn open_live(&self) -> Result<Connection, SqliteError> {
        check_header(&self.path)?;
        let conn = Connection::open_with_flags(
            &self.path,
            OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX,
        )
        .map_err(self.sql())?;
        conn.busy_timeout(OUTSIDE_FREEZE_BUSY_TIMEOUT)
            .map_err(self.sql())?;
        Ok(conn)
    }

    /// A scratch clone of the copy's database and WAL (a reflink where the file system
    /// can), to open without writing the copy: the copy's database, the scratch
    /// directory (removed when dropped) and the clone's path.
    fn scratch_clone<'c>(
        &self,
        copy: &'c CopyView,
    ) -> Result<(&'c Path, tempfile::TempDir, PathBuf), SqliteError> {
        let db = copy
            .path_of(&self.path)
            .ok_or_else(|| SqliteError::NotInCopy(self.path.clone()))?;
        let wal = copy.path_of(&Self::wal_path(&self.path));
        // On the copy's file system where it can be (a btrfs snapshot is read-only; the
        // directory holding it is not), so the clone is a reflink, not a copy.
        let scratch = shadowcopy_core::dbfiles::scratch_near(db, "shadowcopy-verify-", |_| true)
            .map_err(SqliteError::Scratch)?;
        let scratch_db = scratch.path().join("db");
        // std::fs::copy uses copy_file_range: a reflink where the file system can.
        std::fs::copy(db, &scratch_db).map_err(SqliteError::Scratch)?;
        if let Some(wal) = wal {
            std::fs::copy(wal, Self::wal_path(&scratch_db)).map_err(SqliteError::Scratch)?;
        }
        Ok((db, scratch, scratch_db))
    }
}

fn suffixed(p: &Path, suffix: &str) -> PathBuf {
    let mut s = p.as_os_str().to_os_string();
    s.push(suffix);
    PathBuf::from(s)
}

/// How a database keeps its log, from header bytes 18 and 19 (1 = rollback journal,
/// 2 = WAL): read without any lock, so it works while writers starve readers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum JournalKind {
    Rollback,
    Wal,
}

fn read_journal_kind(path: &Path) -> Result<JournalKind, SqliteError> {
    let head = read_header(path)?;
    Ok(if head[18] == 2 && head[19] == 2 {
        JournalKind::Wal
    } else {
        JournalKind::Rollback
    })
}

fn check_header(path: &Path) -> Result<(), SqliteError> {
    read_header(path).map(|_| ())
}

/// The first 100 bytes (the database header), after checking the magic string.
fn read_header(path: &Path) -> Result<[u8; 100], SqliteError> {
    let mut f = match std::fs::File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Err(SqliteError::Missing(path.to_path_buf()))
        }
        Err(source) => {
            return Err(SqliteError::Read {
                path: path.to_path_buf(),
                source,
            })
        }
    };
    let mut head = [0u8; 100];
    match f.read_exact(&mut head) {
        Ok(()) if &head[..16] == HEADER => Ok(head),
        Ok(()) => Err(SqliteError::NotSqlite(path.to_path_buf())),
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => {
            Err(SqliteError::NotSqlite(path.to_path_buf()))
        }
        Err(source) => Err(SqliteError::Read {
            path: path.to_path_buf(),
            source,
        }),
    }
}

impl Writer for SqliteWriter {
    fn kind(&self) -> &'static str {
        "sqlite"
    }

    fn name(&self) -> String {
        format!("sqlite:{}", self.path.display())
    }

    fn identify(&mut self) -> Result<Vec<Component>, BoxError> {
        let journal = read_journal_kind(&self.path)?;
        self.reports_pinned = journal == JournalKind::Wal;
        let mut components = vec![Component {
            writer: self.name(),
            name: "db".into(),
            role: ComponentRole::Data,
            path: self.path.clone(),
            required: true,
            pinned: self.reports_pinned,
        }];
        if journal == JournalKind::Wal {
            components.push(Component {
                writer: self.name(),
                name: "wal".into(),
                role: ComponentRole::Log,
                path: Self::wal_path(&self.path),
                required: false,
                pinned: false,
            });
        }
        Ok(components)
    }

    /// In WAL mode: a passive checkpoint moves committed pages from the WAL into the
    /// database, so the WAL copied while frozen is short; then the pin (see the module
    /// documentation). Rollback-journal databases need nothing here.
    fn prepare(&mut self) -> Result<(), BoxError> {
        let wal = read_journal_kind(&self.path)? == JournalKind::Wal;
        if self.reports_pinned && !wal {
            return Err(SqliteError::JournalModeChanged {
                path: self.path.clone(),
            }
            .into());
        }
        if wal {
            let conn = self.open_live()?;
            conn.query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |_| Ok(()))
                .map_err(self.sql())?;
        }
        if self.reports_pinned {
            let pin = self.open_live()?;
            pin.execute_batch("BEGIN")
                .and_then(|()| pin.query_row("SELECT COUNT(*) FROM sqlite_schema", [], |_| Ok(())))
                .map_err(self.sql())?;
            if read_journal_kind(&self.path)? != JournalKind::Wal {
                return Err(SqliteError::JournalModeChanged {
                    path: self.path.clone(),
                }
                .into());
            }
            self.pin = Some(pin);
        }
        Ok(())
    }

    fn freeze(&mut self, deadline: Instant) -> Result<(), BoxError> {
        let conn = self.open_live()?;
        // SQLite's own busy handler sleeps in growing steps (up to 100ms); polling the lock
        // every LOCK_POLL takes it as soon as the running transaction commits, which is
        // what keeps the application's stall short.
        conn.busy_timeout(Duration::ZERO).map_err(self.sql())?;
        loop {
            match conn.execute_batch("BEGIN IMMEDIATE") {
                Ok(()) => {
                    self.frozen = Some(conn);
                    return Ok(());
                }
                Err(rusqlite::Error::SqliteFailure(e, _))
                    if e.code == rusqlite::ErrorCode::DatabaseBusy =>
                {
                    if Instant::now() + LOCK_POLL >= deadline {
                        return Err(SqliteError::LockTimeout {
                            path: self.path.clone(),
                        }
                        .into());
                    }
                    std::thread::sleep(LOCK_POLL);
                }
                Err(e) => return Err(self.sql()(e).into()),
            }
        }
    }

    /// Releases the write lock, then the pin. Dropping a connection releases its locks
    /// too; ROLLBACK says so explicitly and reports a failure we can record.
    fn thaw(&mut self) -> Result<(), BoxError> {
        let mut first = Ok(());
        for conn in [self.frozen.take(), self.pin.take()].into_iter().flatten() {
            let result = conn.execute_batch("ROLLBACK");
            drop(conn);
            if first.is_ok() {
                first = result;
            }
        }
        first.map_err(self.sql())?;
        Ok(())
    }

    /// A checkpointed clone of the copy (its WAL folded in, so that a read-only open
    /// sees every committed transaction; a WAL file opened read-only with `immutable=1`
    /// would be ignored), in rollback-journal mode, its file made read-only and private:
    /// mode 0400, owned as the database is (its owner and root read it; the scratch
    /// directory lets others pass, not list, and this keeps them out all the same).
    fn expose(
        &self,
        copy: &CopyView,
        options: &ExposeOptions,
    ) -> Result<Option<Exposed>, BoxError> {
        if options.until.is_some() {
            return Err(SqliteError::ExposeOption(
                "--until: SQLite keeps no log past a copy; expose the copy nearest the moment \
                 you want (`shadowcopy list`)",
            )
            .into());
        }
        if options.port.is_some() || options.socket_dir.is_some() {
            return Err(SqliteError::ExposeOption(
                "--port and --socket-dir: a SQLite copy is a file, read with `sqlite3 -readonly`; \
                 leave them out",
            )
            .into());
        }
        let scratch = options.scratch.as_path();
        let db = copy
            .path_of(&self.path)
            .ok_or_else(|| SqliteError::NotInCopy(self.path.clone()))?;
        let name = self.path.file_name().unwrap_or(std::ffi::OsStr::new("db"));
        let exposed = scratch.join(name);
        std::fs::copy(db, &exposed).map_err(SqliteError::Scratch)?;
        if let Some(wal) = copy.path_of(&Self::wal_path(&self.path)) {
            std::fs::copy(wal, Self::wal_path(&exposed)).map_err(SqliteError::Scratch)?;
        }
        check_header(&exposed)?;
        let sql = |source| SqliteError::Sql {
            path: db.to_path_buf(),
            source,
        };
        let conn = Connection::open_with_flags(&exposed, OpenFlags::SQLITE_OPEN_READ_WRITE)
            .map_err(sql)?;
        conn.query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |_| Ok(()))
            .map_err(sql)?;
        conn.query_row("PRAGMA journal_mode = DELETE", [], |_| Ok(()))
            .map_err(sql)?;
        conn.close().map_err(|(_, e)| sql(e))?;
        std::fs::set_permissions(&exposed, std::fs::Permissions::from_mode(0o400))
            .map_err(SqliteError::Scratch)?;
        if rustix::process::geteuid().is_root() {
            use std::os::unix::fs::MetadataExt;
            let original = std::fs::metadata(db).map_err(SqliteError::Scratch)?;
            rustix::fs::chown(
                &exposed,
                Some(rustix::fs::Uid::from_raw(original.uid())),
                Some(rustix::fs::Gid::from_raw(original.gid())),
            )
            .map_err(|e| SqliteError::Scratch(e.into()))?;
        }
        Ok(Some(Exposed {
            address: exposed.display().to_string(),
            connect: format!("sqlite3 -readonly {}", shell_quote(&exposed)),
            pid: None,
            port: None,
            private_dir: None,
            writer: String::new(),
        }))
    }

    /// With the SQLite shell (`sqlite3`, read-only): `.mode insert` statements in a
    /// transaction, or CSV with a header.
    fn extract(
        &self,
        exposed: &Exposed,
        request: &ExtractRequest,
        out: &mut dyn std::io::Write,
    ) -> Result<bool, BoxError> {
        let file = Path::new(&exposed.address);
        let conn = Connection::open_with_flags(file, OpenFlags::SQLITE_OPEN_READ_ONLY).map_err(
            |source| SqliteError::Sql {
                path: file.to_path_buf(),
                source,
            },
        )?;
        let names: Vec<String> = conn
            .prepare(
                "SELECT name FROM sqlite_schema WHERE type = 'table' AND name NOT LIKE 'sqlite_%'",
            )
            .and_then(|mut s| s.query_map([], |r| r.get(0))?.collect())
            .map_err(|source| SqliteError::Sql {
                path: file.to_path_buf(),
                source,
            })?;
        drop(conn);
        // SQLite's names are case-insensitive.
        let Some(table) = names
            .iter()
            .find(|n| n.eq_ignore_ascii_case(&request.table))
        else {
            return Err(no_such_table(
                &request.table,
                &format!("the copy of {}", self.path.display()),
                &names,
            )
            .into());
        };
        let quoted = format!("\"{}\"", table.replace('"', "\"\""));
        let filter = request
            .filter
            .as_deref()
            .map(|f| format!(" WHERE {f}"))
            .unwrap_or_default();
        let select = format!("SELECT * FROM {quoted}{filter};");
        let mut shell = std::process::Command::new("sqlite3");
        shell.arg("-readonly").arg("-batch").arg("-bail");
        match request.format {
            ExtractFormat::Csv => {
                shell.arg("-csv").arg("-header");
            }
            ExtractFormat::Sql => {
                shell.arg("-cmd").arg(format!(".mode insert {quoted}"));
            }
        }
        shell
            .arg(file)
            .arg(&select)
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped());
        let mut child = shell.spawn().map_err(|e| {
            format!(
                "cannot run sqlite3, the SQLite shell extract uses ({e}); install it \
                 (Debian: apt-get install sqlite3)"
            )
        })?;
        if request.format == ExtractFormat::Sql {
            writeln!(out, "BEGIN;")?;
        }
        let mut stdout = child.stdout.take().expect("piped");
        let copied = std::io::copy(&mut stdout, out);
        let done = child.wait_with_output()?;
        copied?;
        if !done.status.success() {
            return Err(format!(
                "sqlite3 refused `{select}`: {}",
                String::from_utf8_lossy(&done.stderr).trim()
            )
            .into());
        }
        if request.format == ExtractFormat::Sql {
            writeln!(out, "COMMIT;")?;
        }
        out.flush()?;
        Ok(true)
    }

    fn verify(&self, copy: &CopyView) -> Result<VerifyReport, BoxError> {
        let (db, _scratch, scratch_db) = self.scratch_clone(copy)?;
        if let Err(e) = check_header(&scratch_db) {
            return Ok(VerifyReport {
                ok: false,
                detail: e.to_string(),
            });
        }
        let sql = |source| SqliteError::Sql {
            path: db.to_path_buf(),
            source,
        };
        let conn = Connection::open_with_flags(&scratch_db, OpenFlags::SQLITE_OPEN_READ_WRITE)
            .map_err(sql)?;
        let mut problems = Vec::new();
        let result = (|| -> rusqlite::Result<(i64, i64, String)> {
            let mut stmt = conn.prepare("PRAGMA integrity_check")?;
            let rows = stmt.query_map([], |r| r.get::<_, String>(0))?;
            for row in rows {
                let row = row?;
                if row != "ok" {
                    problems.push(row);
                }
            }
            let pages: i64 = conn.query_row("PRAGMA page_count", [], |r| r.get(0))?;
            let tables: i64 = conn.query_row(
                "SELECT COUNT(*) FROM sqlite_schema WHERE type = 'table'",
                [],
                |r| r.get(0),
            )?;
            let mode: String = conn.query_row("PRAGMA journal_mode", [], |r| r.get(0))?;
            Ok((pages, tables, mode))
        })();
        Ok(match result {
            Ok((pages, tables, mode)) if problems.is_empty() => VerifyReport {
                ok: true,
                detail: format!(
                    "integrity_check ok ({pages} pages, {tables} tables, journal_mode {mode})"
                ),
            },
            Ok(_) => VerifyReport {
                ok: false,
                detail: format!("integrity_check found: {}", problems.join("; ")),
            },
            Err(e) => VerifyReport {
                ok: false,
                detail: format!("the copy does not open: {e}"),
            },
        })
    }

    /// Only the pages that changed since the base copy (those in changed blocks of the
    /// database file, and every page the copy's WAL holds) get a structural check
    /// ([`page_check`]); `PRAGMA integrity_check` waits for the next full verification.
    /// A database mostly changed, or not compared, is checked in full. The copy is never
    /// written: with an empty WAL it is read as it is, else a scratch clone takes the WAL.
    fn verify_changed(&self, copy: &CopyView, changes: &Changes) -> Result<VerifyReport, BoxError> {
        let Some(ranges) = changes.of(&self.path) else {
            return self.verify(copy);
        };
        let db = copy
            .path_of(&self.path)
            .ok_or_else(|| SqliteError::NotInCopy(self.path.clone()))?;
        let size = std::fs::metadata(db)
            .map_err(|source| SqliteError::Read {
                path: db.to_path_buf(),
                source,
            })?
            .len();
        let changed: u64 = ranges.iter().map(|r| r.end - r.start).sum();
        if changed.saturating_mul(4) > size {
            return self.verify(copy);
        }
        let head = match read_header(db) {
            Ok(head) => head,
            Err(e) => {
                return Ok(VerifyReport {
                    ok: false,
                    detail: e.to_string(),
                })
            }
        };
        let page_size = match u16::from_be_bytes([head[16], head[17]]) {
            1 => 65536,
            n => u32::from(n),
        };
        let wal = copy.path_of(&Self::wal_path(&self.path));
        let pages =
            changed_pages::changed_pages(ranges, page_size, wal).map_err(SqliteError::Scratch)?;
        // With frames in the copy's WAL, they are folded into a scratch clone, as a reader
        // would see them; without, the copy itself is read (the pages just hashed are in
        // the cache).
        let wal_empty = wal.is_none_or(|w| std::fs::metadata(w).is_ok_and(|m| m.len() == 0));
        let found = if wal_empty {
            page_check::check_changed_pages(db, &pages)
        } else {
            let (_, _scratch, scratch_db) = self.scratch_clone(copy)?;
            Connection::open_with_flags(&scratch_db, OpenFlags::SQLITE_OPEN_READ_WRITE)
                .and_then(|conn| conn.query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |_| Ok(())))
                .map_err(|source| SqliteError::Sql {
                    path: db.to_path_buf(),
                    source,
                })?;
            page_check::check_changed_pages(&scratch_db, &pages)
        }
        .map_err(SqliteError::Scratch)?;
        let counts = format!(
            "{} changed pages: {} b-tree pages checked, {} free, {} overflow or not reached; {} pages read",
            pages.len(),
            found.checked,
            found.free,
            found.unchecked,
            found.pages_read
        );
        Ok(if found.problems.is_empty() {
            VerifyReport {
                ok: true,
                detail: format!(
                    "page structure ok ({counts}; integrity_check at the next full verification)"
                ),
            }
        } else {
            VerifyReport {
                ok: false,
                detail: format!("page check found: {} ({counts})", found.problems.join("; ")),
            }
        })
    }

    fn check_restore_target(&self, targets: &[PathBuf]) -> Result<(), BoxError> {
        let mut watched = Vec::new();
        for t in targets {
            watched.push(t.clone());
            if sidecar_of(t).is_none() {
                watched.extend(SIDECARS.iter().map(|s| suffixed(t, s)));
            }
        }
        let holders = proc_scan::holders(&watched);
        if holders.is_empty() {
            return Ok(());
        }
        let mut list: Vec<String> = holders
            .iter()
            .map(|h| format!("pid {} ({})", h.pid, h.command))
            .collect();
        list.dedup();
        Err(SqliteError::InUse {
            path: self.path.clone(),
            holders: list.join(", "),
        }
        .into())
    }

    /// Folds the staged sidecars into the staged database: a `-wal` is checkpointed
    /// (TRUNCATE), a hot `-journal` (in a pre-restore copy of a crashed rollback-journal
    /// application) is rolled back by SQLite on the first read. Both happen on files
    /// nobody else sees, so one rename installs the whole restored state. The live
    /// `-wal` and `-journal` are replaced (and kept in the pre-restore copy), the `-shm`
    /// index is discarded.
    fn finish_restore(
        &self,
        staged: &[(PathBuf, PathBuf)],
        _mode: &RestoreMode,
    ) -> Result<RestorePlan, BoxError> {
        let (db_target, db_staged) = staged
            .iter()
            .find(|(t, _)| sidecar_of(t).is_none())
            .cloned()
            .ok_or_else(|| SqliteError::NotInCopy(self.path.clone()))?;
        let stage_err = |path: &Path| {
            let path = path.to_path_buf();
            move |source| SqliteError::Stage { path, source }
        };
        for suffix in SIDECARS {
            let derived = suffixed(&db_staged, suffix);
            match std::fs::remove_file(&derived) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(stage_err(&derived)(e).into()),
            }
        }
        for (target, file) in staged {
            match sidecar_of(target) {
                Some(suffix @ ("-wal" | "-journal")) => {
                    std::fs::rename(file, suffixed(&db_staged, suffix)).map_err(stage_err(file))?
                }
                Some(_) => std::fs::remove_file(file).map_err(stage_err(file))?,
                None => {}
            }
        }
        let sql = |source| SqliteError::Sql {
            path: db_staged.clone(),
            source,
        };
        {
            let conn = Connection::open_with_flags(&db_staged, OpenFlags::SQLITE_OPEN_READ_WRITE)
                .map_err(sql)?;
            // The first read rolls back a hot journal.
            let mode: String = conn
                .query_row("PRAGMA journal_mode", [], |r| r.get(0))
                .map_err(sql)?;
            if mode.eq_ignore_ascii_case("wal") {
                let busy: i64 = conn
                    .query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |r| r.get(0))
                    .map_err(sql)?;
                if busy != 0 {
                    return Err(SqliteError::CheckpointBusy {
                        path: db_staged.clone(),
                    }
                    .into());
                }
            }
        }
        for suffix in SIDECARS {
            let derived = suffixed(&db_staged, suffix);
            if std::fs::metadata(&derived).is_ok_and(|m| m.len() > 0) && suffix != "-shm" {
                return Err(SqliteError::NotFolded { path: derived }.into());
            }
            let _ = std::fs::remove_file(derived);
        }
        std::fs::File::open(&db_staged)
            .and_then(|f| f.sync_all())
            .map_err(stage_err(&db_staged))?;
        Ok(RestorePlan {
            install: vec![(db_staged, db_target.clone())],
            remove: vec![
                suffixed(&db_target, "-wal"),
                suffixed(&db_target, "-journal"),
            ],
            discard: vec![suffixed(&db_target, "-shm")],
            notes: Vec::new(),
        })
    }
}
