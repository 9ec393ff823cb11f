//! The `mariadb` writer: consistent copies of a running MariaDB (or MySQL) server.
//!
//! - identify: connects, discovers the data directory and the separate redo, undo,
//!   system tablespace and binlog directories (one component each), checks they are
//!   still where the set recorded them, and warns about non-transactional tables.
//! - prepare / freeze / thaw: the backup lock of `lock.rs` (BACKUP STAGE on MariaDB),
//!   on a connection held from prepare to thaw; the freeze reads the binlog position.
//! - after the thaw, the copy gets the position file (`position.rs`).
//! - verify: a sandbox started from a clone of the copy (`sandbox.rs`).
//! - backup-complete (after a passed verify): binary logs no kept copy needs are purged
//!   (`retention.rs`).
//! - restore: refused while the server runs (even with --force); point-in-time or
//!   roll-forward (`restore.rs`, `replay.rs`).

use std::path::PathBuf;
use std::sync::Mutex;
use std::time::Instant;

use shadowcopy_core::error::IoError;
use shadowcopy_core::extract::ExtractRequest;
use shadowcopy_core::model::{Component, ComponentRole, CopyView, VerifyReport};
use shadowcopy_core::writer::{ExposeOptions, Exposed, KeptCopies, RestoreMode, RestorePlan};
use shadowcopy_core::{BoxError, Writer};

use crate::lock::{BackupLock, Frozen, InnoDbState};
use crate::position::POSITION_FILE;
use crate::restore::{self, Until};
use crate::retention::{self, RetentionError};
use crate::server::{self, MariaDbOptions, ServerLayout};

#[derive(Debug, thiserror::Error)]
pub enum MariaDbError {
    #[error("the server at {url} now has its data directory at {}, but this set was made for {}; make a new set for the new server", .now.display(), .recorded.display())]
    Moved {
        url: String,
        now: PathBuf,
        recorded: PathBuf,
    },
    #[error("this set was recorded without its server layout; cannot restore or verify it")]
    NoLayout,
    #[error("no backup connection: prepare did not run or the set was aborted")]
    NotPrepared,
    #[error("the server's binary log is off, so there is nothing to roll forward with; restore with --mode point-in-time")]
    NoBinlog,
    #[error(transparent)]
    Io(#[from] IoError),
}

pub struct MariaDbWriter {
    options: MariaDbOptions,
    layout: Option<ServerLayout>,
    lock: Option<BackupLock>,
    frozen: Option<Frozen>,
    /// The position file, written for the provider to add to the copy.
    extra: Option<tempfile::TempDir>,
    /// Live database directories a restore emptied (removed after the swap).
    emptied: Mutex<Vec<PathBuf>>,
}

/// Warns of the server's tables in non-transactional engines, once per process: `create`
/// discovers the server when it resolves the set and identifies it again in the
/// coordinator, `writers` discovers and identifies.
pub fn warn_non_transactional(options: &MariaDbOptions, layout: &ServerLayout) {
    if let Some(w) = layout.non_transactional_warning() {
        static WARNED: std::sync::Once = std::sync::Once::new();
        WARNED.call_once(|| tracing::warn!("mariadb:{}: {w}", options.url));
    }
}

impl MariaDbWriter {
    pub fn new(options: MariaDbOptions) -> Self {
        let layout = options.layout.clone();
        MariaDbWriter {
            options,
            layout,
            lock: None,
            frozen: None,
            extra: None,
            emptied: Mutex::new(Vec::new()),
        }
    }

    fn layout(&self) -> Result<&ServerLayout, MariaDbError> {
        self.layout.as_ref().ok_or(MariaDbError::NoLayout)
    }

    /// The backup connection's id on the server (for tests that kill it).
    pub fn connection_id(&self) -> Option<u32> {
        self.lock.as_ref().map(BackupLock::connection_id)
    }

    fn release(&mut self) -> Result<(), BoxError> {
        match self.lock.take() {
            Some(lock) => Ok(lock.release()?),
            None => Ok(()),
        }
    }
}

impl Writer for MariaDbWriter {
    fn kind(&self) -> &'static str {
        "mariadb"
    }

    fn name(&self) -> String {
        format!("mariadb:{}", self.options.url)
    }

    fn identify(&mut self) -> Result<Vec<Component>, BoxError> {
        let now = server::discover_server(&self.options)?;
        if let Some(recorded) = &self.layout {
            if recorded.datadir != now.datadir {
                return Err(MariaDbError::Moved {
                    url: self.options.url.to_string(),
                    now: now.datadir,
                    recorded: recorded.datadir.clone(),
                }
                .into());
            }
        }
        let name = self.name();
        let component = |label: &str, role, path: &std::path::Path| Component {
            writer: name.clone(),
            name: label.to_string(),
            role,
            path: path.to_path_buf(),
            required: true,
            pinned: false,
        };
        let mut components = vec![component("data", ComponentRole::Data, &now.datadir)];
        for (label, path) in now.separate_dirs() {
            let role = if matches!(label, "redo" | "binlog") {
                ComponentRole::Log
            } else {
                ComponentRole::Data
            };
            components.push(component(label, role, path));
        }
        warn_non_transactional(&self.options, &now);
        self.layout = Some(now);
        Ok(components)
    }

    fn prepare(&mut self) -> Result<(), BoxError> {
        if self.layout.is_none() {
            self.identify()?;
        }
        let flavour = self.layout()?.flavour;
        self.lock = Some(BackupLock::prepare(&self.options, flavour)?);
        Ok(())
    }

    fn freeze(&mut self, deadline: Instant) -> Result<(), BoxError> {
        let lock = self.lock.as_mut().ok_or(MariaDbError::NotPrepared)?;
        let len = deadline.saturating_duration_since(Instant::now());
        // The coordinator's deadline is a span from the freeze's start; give the lock the
        // same span (rounded up) as its idle limit.
        let frozen = lock.freeze(deadline, len)?;
        self.frozen = Some(frozen);
        Ok(())
    }

    fn thaw(&mut self) -> Result<(), BoxError> {
        let Some(mut lock) = self.lock.take() else {
            return Ok(());
        };
        // Still frozen: how far InnoDB moved while the provider copied.
        let later: Option<Result<InnoDbState, _>> =
            self.frozen.as_ref().map(|_| lock.innodb_state());
        lock.release()?;
        if let (Some(frozen), Some(later)) = (&self.frozen, later) {
            let later = later?;
            tracing::info!(
                "InnoDB while frozen: {} page(s) flushed, {} written, redo log end {} -> {}, checkpoint {} -> {}",
                later.pages_flushed.saturating_sub(frozen.innodb.pages_flushed),
                later.pages_written.saturating_sub(frozen.innodb.pages_written),
                frozen.innodb.lsn,
                later.lsn,
                frozen.innodb.checkpoint,
                later.checkpoint
            );
            if !self.options.atomic_snapshot {
                // A busy moment, not a broken server: the engine tries the set again.
                frozen
                    .innodb
                    .copy_is_consistent(&later)
                    .map_err(shadowcopy_core::error::Transient::boxed)?;
            }
        }
        Ok(())
    }

    fn after_thaw_files(&mut self) -> Result<Vec<(PathBuf, PathBuf)>, BoxError> {
        let frozen = self.frozen.as_ref().ok_or(MariaDbError::NotPrepared)?;
        let layout = self.layout()?;
        let owner = crate::files::owner_of(layout);
        let dir = tempfile::Builder::new()
            .prefix("shadowcopy-mariadb-position-")
            .tempdir()
            .map_err(|source| {
                MariaDbError::Io(IoError {
                    action: "create a temp dir in",
                    path: std::env::temp_dir(),
                    source,
                })
            })?;
        let path = dir.path().join(POSITION_FILE);
        std::fs::write(&path, frozen.position.to_text()).map_err(|source| {
            MariaDbError::Io(IoError {
                action: "write",
                path: path.clone(),
                source,
            })
        })?;
        std::fs::set_permissions(&path, std::os::unix::fs::PermissionsExt::from_mode(0o640))
            .map_err(|source| {
                MariaDbError::Io(IoError {
                    action: "set the mode of",
                    path: path.clone(),
                    source,
                })
            })?;
        owner.chown(&path)?;
        let target = layout.datadir.join(POSITION_FILE);
        self.extra = Some(dir);
        Ok(vec![(target, path)])
    }

    fn post_snapshot(&mut self, _copy: &CopyView) -> Result<(), BoxError> {
        self.extra = None;
        Ok(())
    }

    fn abort(&mut self) -> Result<(), BoxError> {
        self.frozen = None;
        self.extra = None;
        self.release()
    }

    fn verify(&self, copy: &CopyView) -> Result<VerifyReport, BoxError> {
        crate::sandbox::verify_copy(self.layout()?, copy)
    }

    fn expose(
        &self,
        copy: &CopyView,
        options: &ExposeOptions,
    ) -> Result<Option<Exposed>, BoxError> {
        crate::expose::expose_copy(self.layout()?, copy, options).map(Some)
    }

    fn extract(
        &self,
        exposed: &Exposed,
        request: &ExtractRequest,
        out: &mut dyn std::io::Write,
    ) -> Result<bool, BoxError> {
        crate::extract::extract(exposed, request, out)?;
        Ok(true)
    }

    fn backup_complete(
        &mut self,
        copy: &CopyView,
        kept: &dyn KeptCopies,
    ) -> Result<Option<String>, BoxError> {
        let layout = self.layout()?;
        if !self.options.purge_binlogs || layout.binlog.is_none() {
            return Ok(None);
        }
        let kept_copies = kept
            .kept()
            .map_err(|e| RetentionError::KeptUnknown(e.to_string()))?;
        Ok(retention::purge_unneeded(
            &self.options,
            layout,
            copy,
            &kept_copies,
            &kept.logs_off_host(),
        )?)
    }

    fn pre_restore(&self, targets: &[PathBuf]) -> Result<(), BoxError> {
        let layout = self.layout()?;
        // A restore elsewhere (--to) does not touch the server's files.
        let live = layout.paths();
        if !targets
            .iter()
            .any(|t| live.iter().any(|r| t.starts_with(r)))
        {
            return Ok(());
        }
        Ok(restore::check_not_running(layout)?)
    }

    fn post_restore(&self, _targets: &[PathBuf]) -> Result<(), BoxError> {
        let emptied = std::mem::take(&mut *self.emptied.lock().unwrap_or_else(|p| p.into_inner()));
        for d in emptied {
            // Only what the swap emptied: a failed restore left the files there.
            let _ = std::fs::remove_dir(&d);
        }
        Ok(())
    }

    fn can_roll_forward(&self) -> bool {
        self.layout.as_ref().is_some_and(|l| l.binlog.is_some())
    }

    fn until_forms(&self) -> &'static str {
        r#"a time such as "2026-12-08 10:00:00Z", a binlog position such as mariadb-bin.000042:1234, or a GTID position such as 0-1-100"#
    }

    fn check_restore_mode(&self, mode: &RestoreMode) -> Result<(), BoxError> {
        if let RestoreMode::RollForward { until } = mode {
            if self.layout()?.binlog.is_none() {
                return Err(MariaDbError::NoBinlog.into());
            }
            if let Some(u) = until {
                Until::parse(u)?;
            }
        }
        Ok(())
    }

    fn finish_restore(
        &self,
        staged: &[(PathBuf, PathBuf)],
        mode: &RestoreMode,
    ) -> Result<RestorePlan, BoxError> {
        let (plan, emptied) = restore::plan(self.layout()?, staged, mode)?;
        *self.emptied.lock().unwrap_or_else(|p| p.into_inner()) = emptied;
        Ok(plan)
    }
}
