//! The `postgres` writer: consistent copies of a running cluster in backup mode.
//!
//! - identify: connects, discovers the data directory, WAL directory and tablespaces
//!   (one component each) and checks they are still where the set recorded them.
//! - prepare (outside the freeze): on a connection held for the whole set, a temporary
//!   physical replication slot reserves the WAL from here on (dropped with the
//!   connection), then `pg_backup_start(label, fast => true)` checkpoints.
//! - freeze: the server keeps running (backup mode needs no pause); the freeze checks
//!   the connection is alive, so a server lost since prepare aborts the set.
//! - thaw: `pg_backup_stop(false)` returns the stop LSN, `backup_label` and
//!   `tablespace_map`. A killed shadowcopy leaves nothing behind: the server ends a
//!   non-exclusive backup and drops the temporary slot when the connection goes.
//! - after the thaw, the copy gets `backup_label`, `tablespace_map` and every WAL segment
//!   from the backup's start to its stop, so it starts without any archive.
//! - verify: a sandbox started from a clone of the copy (see `sandbox.rs`).
//! - backup-complete (after a passed verify): archived WAL that neither this copy nor
//!   any kept copy of the set needs is expired (see `retention.rs`).
//! - restore: refused while the server runs (even with --force). Point-in-time installs
//!   the copy and removes live WAL the copy does not hold, so recovery stops exactly at
//!   the copy's end of backup. Roll-forward installs the copy's data files but keeps the
//!   live WAL directory, adds `recovery.signal` and recovery settings (restore_command
//!   reading the archive, an optional target), so replay reaches the newest commit.

use std::path::{Path, PathBuf};
use std::time::Instant;

use postgres::Client;
use shadowcopy_core::error::IoError;
use shadowcopy_core::extract::ExtractRequest;
use shadowcopy_core::model::{Changes, Component, ComponentRole, CopyView, VerifyReport};
use shadowcopy_core::writer::{ExposeOptions, Exposed, KeptCopies, RestoreMode, RestorePlan};
use shadowcopy_core::{BoxError, Writer};

use crate::cluster::{self, ClusterLayout, PostgresOptions};
use crate::label;
use crate::recovery;
use crate::retention::{self, RetentionError};
use crate::wal::{Lsn, SegmentName, WalSegSize};

#[derive(Debug, thiserror::Error)]
pub enum PostgresError {
    #[error("the server at {url} now has its data directory at {}, but this set was made for {}; make a new set for the new cluster", .now.display(), .recorded.display())]
    Moved {
        url: String,
        now: PathBuf,
        recorded: PathBuf,
    },
    /// The server's message is in the text (`postgres::Error` itself only says "db
    /// error"), so the error is not also given as a source to be printed again.
    #[error("{what} failed: {}", chain(.error))]
    Query {
        what: &'static str,
        error: postgres::Error,
    },
    #[error("no connection: prepare did not run or the set was aborted")]
    NotPrepared,
    #[error(
        "the server did not answer the backup connection's check within the {} left before \
         the freeze deadline; the backup was abandoned (the server ends it when the connection goes); check \
         that the server is responsive, or raise the freeze deadline",
        shadowcopy_core::error::humanize(*.0)
    )]
    FreezeDeadline(std::time::Duration),
    #[error("the WAL segment {} the copy needs is gone from {} (it was removed before it could be copied)", .name, .dir.display())]
    WalGone { name: String, dir: PathBuf },
    #[error("PostgreSQL is running on {} (postmaster pid {pid}); stop it first (pg_ctl stop -D {}), then restore", .data_dir.display(), .data_dir.display())]
    Running { data_dir: PathBuf, pid: i32 },
    #[error("this set was recorded without its cluster layout; cannot restore or verify it")]
    NoLayout,
    #[error(transparent)]
    Io(#[from] IoError),
}

/// `postgres::Error`'s own message is only "db error"; the server's message is below.
fn chain(e: &postgres::Error) -> String {
    match e.as_db_error() {
        Some(db) => format!("{}: {}", db.severity(), db.message()),
        None => {
            let mut s = e.to_string();
            let mut source = std::error::Error::source(e);
            while let Some(inner) = source {
                s.push_str(": ");
                s.push_str(&inner.to_string());
                source = inner.source();
            }
            s
        }
    }
}

fn query(what: &'static str) -> impl Fn(postgres::Error) -> PostgresError {
    move |error| PostgresError::Query { what, error }
}

/// What `pg_backup_start` and `pg_backup_stop` said.
#[derive(Clone, Debug)]
struct Backup {
    start: Lsn,
    timeline: u32,
    stop: Option<Stopped>,
}

#[derive(Clone, Debug)]
struct Stopped {
    lsn: Lsn,
    label: String,
    tablespace_map: String,
}

pub struct PostgresWriter {
    options: PostgresOptions,
    layout: Option<ClusterLayout>,
    client: Option<Client>,
    backup: Option<Backup>,
    /// backup_label and tablespace_map, written for the provider to add to the copy.
    extra: Option<tempfile::TempDir>,
}

impl PostgresWriter {
    pub fn new(options: PostgresOptions) -> Self {
        let layout = options.layout.clone();
        PostgresWriter {
            options,
            layout,
            client: None,
            backup: None,
            extra: None,
        }
    }

    fn layout(&self) -> Result<&ClusterLayout, PostgresError> {
        self.layout.as_ref().ok_or(PostgresError::NoLayout)
    }

    fn client(&mut self) -> Result<&mut Client, PostgresError> {
        self.client.as_mut().ok_or(PostgresError::NotPrepared)
    }

    /// Ends a backup still running on our connection and drops the connection (which
    /// drops the temporary slot).
    fn release(&mut self) {
        if let (Some(client), Some(b)) = (self.client.as_mut(), self.backup.as_ref()) {
            if b.stop.is_none() {
                let _ = client.simple_query("SELECT pg_backup_stop(false)");
            }
        }
        self.client = None;
    }

    fn write_extra(&mut self, stopped: &Stopped) -> Result<Vec<(PathBuf, PathBuf)>, BoxError> {
        let layout = self.layout()?.clone();
        let owner = crate::files::owner_of(&layout);
        let dir = tempfile::Builder::new()
            .prefix("shadowcopy-pg-label-")
            .tempdir()
            .map_err(|source| {
                PostgresError::Io(IoError {
                    action: "create a temp dir in",
                    path: std::env::temp_dir(),
                    source,
                })
            })?;
        let mut out = Vec::new();
        for (name, content) in [
            ("backup_label", &stopped.label),
            ("tablespace_map", &stopped.tablespace_map),
        ] {
            if content.is_empty() {
                continue;
            }
            let path = dir.path().join(name);
            std::fs::write(&path, content).map_err(|source| {
                PostgresError::Io(IoError {
                    action: "write",
                    path: path.clone(),
                    source,
                })
            })?;
            std::fs::set_permissions(&path, std::os::unix::fs::PermissionsExt::from_mode(0o600))
                .map_err(|source| {
                    PostgresError::Io(IoError {
                        action: "set the mode of",
                        path: path.clone(),
                        source,
                    })
                })?;
            owner.chown(&path)?;
            out.push((layout.data_dir.join(name), path));
        }
        self.extra = Some(dir);
        Ok(out)
    }
}

impl Writer for PostgresWriter {
    fn kind(&self) -> &'static str {
        "postgres"
    }

    fn name(&self) -> String {
        format!("postgres:{}", self.options.url)
    }

    fn identify(&mut self) -> Result<Vec<Component>, BoxError> {
        let mut client = cluster::connect_with(&self.options)?;
        let now = cluster::discover(&mut client, self.options.url.as_str())?;
        if let Some(recorded) = &self.layout {
            if recorded.data_dir != now.data_dir {
                return Err(PostgresError::Moved {
                    url: self.options.url.to_string(),
                    now: now.data_dir,
                    recorded: recorded.data_dir.clone(),
                }
                .into());
            }
        }
        let name = self.name();
        let component = |label: String, role, path: &Path| Component {
            writer: name.clone(),
            name: label,
            role,
            path: path.to_path_buf(),
            required: true,
            pinned: false,
        };
        let mut components = vec![component("data".into(), ComponentRole::Data, &now.data_dir)];
        if now.separate_wal() {
            components.push(component("wal".into(), ComponentRole::Log, &now.wal_dir));
        }
        for t in &now.tablespaces {
            components.push(component(
                format!("tablespace {}", t.name),
                ComponentRole::Data,
                &t.location,
            ));
        }
        self.layout = Some(now);
        self.client = Some(client);
        Ok(components)
    }

    fn prepare(&mut self) -> Result<(), BoxError> {
        if self.client.is_none() {
            self.identify()?;
        }
        let slot = format!(
            "shadowcopy_{}_{}",
            std::process::id(),
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_micros())
                .unwrap_or_default()
        );
        let client = self.client()?;
        client
            .execute(
                "SELECT pg_create_physical_replication_slot($1, true, true)",
                &[&slot],
            )
            .map_err(query("reserving WAL with a temporary replication slot"))?;
        let row = client
            .query_one(
                "SELECT pg_backup_start($1, true)::text,
                        (SELECT timeline_id FROM pg_control_checkpoint())",
                &[&"shadowcopy"],
            )
            .map_err(query("pg_backup_start"))?;
        let start: Lsn = row.get::<_, String>(0).parse()?;
        let timeline: i32 = row.get(1);
        self.backup = Some(Backup {
            start,
            timeline: timeline as u32,
            stop: None,
        });
        Ok(())
    }

    /// Checks the backup connection, giving up at `deadline`: the check runs on a thread
    /// that owns the connection meanwhile. If the server does not answer in time, the
    /// connection stays with that thread and closes when the answer comes (or never, for
    /// a server that never answers); either way the server ends the backup and drops the
    /// slot with the connection, so nothing is left behind.
    fn freeze(&mut self, deadline: Instant) -> Result<(), BoxError> {
        let mut client = self.client.take().ok_or(PostgresError::NotPrepared)?;
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let checked = client.simple_query("SELECT 1").map(|_| ());
            let _ = tx.send((client, checked));
        });
        let left = deadline.saturating_duration_since(Instant::now());
        match rx.recv_timeout(left) {
            Ok((client, checked)) => {
                self.client = Some(client);
                checked.map_err(query("checking the backup connection"))?;
                Ok(())
            }
            Err(_) => {
                self.backup = None;
                Err(PostgresError::FreezeDeadline(left).into())
            }
        }
    }

    fn thaw(&mut self) -> Result<(), BoxError> {
        let Some(backup) = self.backup.as_mut() else {
            return Ok(());
        };
        if backup.stop.is_some() {
            return Ok(());
        }
        let Some(client) = self.client.as_mut() else {
            return Ok(());
        };
        let row = client
            .query_one(
                "SELECT lsn::text, labelfile, spcmapfile FROM pg_backup_stop(false)",
                &[],
            )
            .map_err(query("pg_backup_stop"));
        let row = match row {
            Ok(r) => r,
            Err(e) => {
                // The server ends the backup when the connection goes.
                self.client = None;
                self.backup = None;
                return Err(e.into());
            }
        };
        backup.stop = Some(Stopped {
            lsn: row.get::<_, String>(0).parse()?,
            label: row.get(1),
            tablespace_map: row.get::<_, Option<String>>(2).unwrap_or_default(),
        });
        Ok(())
    }

    fn after_thaw_files(&mut self) -> Result<Vec<(PathBuf, PathBuf)>, BoxError> {
        let Some(Backup {
            start,
            timeline,
            stop: Some(stopped),
        }) = self.backup.clone()
        else {
            return Err(PostgresError::NotPrepared.into());
        };
        let mut files = self.write_extra(&stopped)?;
        let layout = self.layout()?;
        let seg_size = WalSegSize::new(layout.wal_segment_size)?;
        let last = SegmentName::from_lsn(timeline, stopped.lsn, seg_size);
        let mut seg = SegmentName::from_lsn(timeline, start, seg_size);
        loop {
            let name = seg.file_name(seg_size);
            let path = layout.wal_dir.join(&name);
            if !path.is_file() {
                return Err(PostgresError::WalGone {
                    name,
                    dir: layout.wal_dir.clone(),
                }
                .into());
            }
            files.push((path.clone(), path));
            if seg.segno >= last.segno {
                break;
            }
            seg = seg.next();
        }
        // The backup history file says where the copy ends (STOP WAL LOCATION, STOP
        // TIME); `pg log-analysis` reads it. The server may already have removed it.
        let history = layout
            .wal_dir
            .join(label::history_file_name(timeline, start, seg_size));
        if history.is_file() {
            files.push((history.clone(), history));
        }
        Ok(files)
    }

    fn post_snapshot(&mut self, _copy: &CopyView) -> Result<(), BoxError> {
        // The WAL is in the copy: the slot (and the connection) can go.
        self.release();
        self.extra = None;
        Ok(())
    }

    fn abort(&mut self) -> Result<(), BoxError> {
        self.release();
        self.backup = None;
        self.extra = None;
        Ok(())
    }

    fn verify(&self, copy: &CopyView) -> Result<VerifyReport, BoxError> {
        crate::sandbox::verify_copy(self.layout()?, copy)
    }

    fn verify_changed(&self, copy: &CopyView, changes: &Changes) -> Result<VerifyReport, BoxError> {
        crate::sandbox::verify_changed(self.layout()?, copy, changes)
    }

    fn expose(
        &self,
        copy: &CopyView,
        options: &ExposeOptions,
    ) -> Result<Option<Exposed>, BoxError> {
        crate::expose::expose_copy(
            self.layout()?,
            copy,
            options,
            self.options.archive.as_deref(),
        )
        .map(Some)
    }

    fn extract(
        &self,
        exposed: &Exposed,
        request: &ExtractRequest,
        out: &mut dyn std::io::Write,
    ) -> Result<bool, BoxError> {
        let user = crate::expose::superuser(self.layout()?);
        crate::extract::extract(exposed, &user, request, out)?;
        Ok(true)
    }

    fn backup_complete(
        &mut self,
        copy: &CopyView,
        kept_copies: &dyn KeptCopies,
    ) -> Result<Option<String>, BoxError> {
        let Some(archive) = self.options.archive.clone() else {
            return Ok(None);
        };
        let kept = kept_copies
            .kept()
            .map_err(|e| RetentionError::KeptUnknown(e.to_string()))?;
        let truncation = retention::expire_unneeded(
            &archive,
            self.layout()?,
            copy,
            &kept,
            &kept_copies.logs_off_host(),
        )?;
        Ok(Some(truncation.summary(&archive)))
    }

    fn pre_restore(&self, targets: &[PathBuf]) -> Result<(), BoxError> {
        let layout = self.layout()?;
        // A restore elsewhere (--to) writes nothing the running cluster uses.
        let live = layout.paths();
        if !targets
            .iter()
            .any(|t| live.iter().any(|r| t.starts_with(r)))
        {
            return Ok(());
        }
        if let Some(pid) = recovery::running_postmaster(&layout.data_dir) {
            return Err(PostgresError::Running {
                data_dir: layout.data_dir.clone(),
                pid,
            }
            .into());
        }
        Ok(())
    }

    fn can_roll_forward(&self) -> bool {
        true
    }

    fn until_forms(&self) -> &'static str {
        r#"a time such as "2026-12-08 10:00:00+00", an LSN such as 0/3000060, or xid:NNN"#
    }

    fn check_restore_mode(&self, mode: &RestoreMode) -> Result<(), BoxError> {
        if let RestoreMode::RollForward { until: Some(u) } = mode {
            recovery::target_settings(u)?;
        }
        Ok(())
    }

    fn finish_restore(
        &self,
        staged: &[(PathBuf, PathBuf)],
        mode: &RestoreMode,
    ) -> Result<RestorePlan, BoxError> {
        let layout = self.layout()?;
        Ok(recovery::plan(
            layout,
            self.options.archive.as_deref(),
            staged,
            mode,
        )?)
    }
}
