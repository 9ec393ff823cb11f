//! `create`: one shadow set, start to end, for a set named in the config file or one
//! given by zero-config options (`--sqlite PATH`, `--postgres URL`, …).

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use shadowcopy_catalog::Catalog;
use shadowcopy_core::{
    Coordinator, CopyState, CreatedCopy, EventSink, KeptCopies, Origin, Provider, ShadowSetRequest,
    VerifyReport,
};

use crate::config::HumanDuration;
use crate::copies::CatalogKeptCopies;
use crate::engine::{Engine, WaitOptions};
use crate::error::UsageError;
use crate::progress::Progress;
use crate::set::SetSpec;

/// What to copy and how: the command line's flags and an API request's JSON alike
/// (unknown fields are errors). Either `set` (configured) or the zero-config fields.
#[derive(clap::Args, Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct CreateOptions {
    /// A set named in the config file
    #[arg(conflicts_with_all = ["sqlite", "postgres", "mariadb", "path", "fsfreeze", "name", "exec_writer"])]
    pub set: Option<String>,
    /// Zero-config: copy this SQLite database (WAL or rollback journal)
    #[arg(long, value_name = "PATH", help_heading = "Zero-config set")]
    pub sqlite: Option<PathBuf>,
    /// Zero-config: copy this PostgreSQL cluster, given by a libpq URL of a superuser
    /// connection (postgresql:///postgres?host=/run/postgresql&port=5432)
    #[arg(long, value_name = "URL", help_heading = "Zero-config set")]
    pub postgres: Option<String>,
    /// With --postgres: the cluster's WAL archive (for roll-forward restores; see `pg setup`)
    #[arg(
        long,
        value_name = "DIR",
        requires = "postgres",
        help_heading = "Zero-config set"
    )]
    pub pg_archive: Option<PathBuf>,
    /// With --postgres: a file whose first line is the password (instead of one in the
    /// URL; PGPASSWORD and ~/.pgpass or PGPASSFILE are read too). Passwords are never
    /// recorded or shown
    #[arg(
        long,
        value_name = "FILE",
        requires = "postgres",
        help_heading = "Zero-config set"
    )]
    pub pg_password_file: Option<PathBuf>,
    /// Zero-config: copy this MariaDB (or MySQL) server, given by a URL of a connection
    /// with the RELOAD privilege (mysql://root@localhost/?socket=/run/mysqld/mysqld.sock)
    /// or its unix socket's path
    #[arg(long, value_name = "URL", help_heading = "Zero-config set")]
    pub mariadb: Option<String>,
    /// With --mariadb: keep every binary log (by default a verified copy purges the ones
    /// no kept copy needs for a roll-forward)
    #[arg(long, requires = "mariadb", help_heading = "Zero-config set")]
    pub mariadb_keep_binlogs: bool,
    /// With --mariadb: a file whose first line is the password (instead of one in the
    /// URL; MYSQL_PWD and the [client] password of ~/.my.cnf are read too). Passwords are
    /// never recorded or shown
    #[arg(
        long,
        value_name = "FILE",
        requires = "mariadb",
        help_heading = "Zero-config set"
    )]
    pub mariadb_password_file: Option<PathBuf>,
    /// Zero-config: copy this file or directory as it is (repeat for more)
    #[arg(long = "path", value_name = "DIR", help_heading = "Zero-config set")]
    #[serde(rename = "paths")]
    pub path: Vec<PathBuf>,
    /// Zero-config: a hook script called with each event (freeze, thaw, …); repeat for more
    #[arg(
        long = "exec-writer",
        value_name = "SCRIPT",
        help_heading = "Zero-config set"
    )]
    #[serde(rename = "exec_writers")]
    pub exec_writer: Vec<PathBuf>,
    /// Freeze the file systems of the data (FIFREEZE) for a crash-consistent copy; a
    /// watchdog process thaws them if shadowcopy dies or hangs
    #[arg(long, help_heading = "Zero-config set")]
    pub fsfreeze: bool,
    /// Name of the zero-config set [default: the database's or first path's file name]
    #[arg(long, help_heading = "Zero-config set")]
    pub name: Option<String>,
    /// Storage provider: auto picks the fastest that can serve the data
    #[arg(long, value_name = "auto|btrfs|reflink|copy", help_heading = "Copy")]
    pub provider: Option<String>,
    /// Longest time from the first freeze to the end of the commit [default: 10s]
    #[arg(long, value_name = "DURATION", value_parser = crate::parse_duration, help_heading = "Copy")]
    pub freeze_deadline: Option<HumanDuration>,
    /// Where the copy provider keeps copies [default: beside the catalog]
    #[arg(long, value_name = "DIR", help_heading = "Copy")]
    pub copies_dir: Option<PathBuf>,
    /// Skip the integrity check after the copy (the copy is recorded as not verified)
    #[arg(long, help_heading = "Copy")]
    pub no_verify: bool,
}

/// A copy made and recorded usable: what `create --json` prints.
#[derive(Clone, Debug, Serialize)]
pub struct CreateReport {
    pub id: i64,
    pub set: String,
    pub provider: String,
    pub location: String,
    #[serde(rename = "freeze_window_us", serialize_with = "crate::micros")]
    pub freeze_window: Duration,
    pub freeze_deadline_ms: u64,
    pub files: usize,
    pub bytes: u64,
    pub phases: Vec<PhaseTime>,
    pub verification: Option<VerifyReport>,
    /// What writers did after the verified copy (WAL expired from the archive).
    pub notes: Vec<String>,
    /// Problems that left the copy usable (a log truncation that failed).
    pub warnings: Vec<String>,
}

/// How long one phase (or restore step) took.
#[derive(Clone, Debug, Serialize)]
pub struct PhaseTime {
    pub phase: String,
    #[serde(rename = "took_us", serialize_with = "crate::micros")]
    pub took: Duration,
}

/// A set resolved and checked, with its provider chosen: everything `create` decides
/// before the catalog is touched.
pub struct PlannedSet {
    pub spec: SetSpec,
    pub provider: Arc<dyn Provider>,
    /// Named in the config file (not zero-config).
    configured: bool,
}

impl Engine {
    /// Resolves the set (once: each database server is discovered once), checks all
    /// that can be checked and chooses the provider. Writes nothing.
    pub fn plan(&self, options: &CreateOptions) -> anyhow::Result<PlannedSet> {
        let spec = SetSpec::for_create(&self.config, options)?;
        spec.validate()?;
        let provider_options = spec.provider_options(self.catalog_dir.join("copies"));
        let provider = spec.choose_provider(&provider_options)?;
        spec.check_frozen_file_systems(&self.catalog_dir, &provider_options)?;
        Ok(PlannedSet {
            spec,
            provider,
            configured: options.set.is_some(),
        })
    }

    /// [`Engine::plan`], then [`Engine::create_planned`].
    pub fn create(
        &self,
        options: &CreateOptions,
        wait: &WaitOptions,
        progress: Arc<dyn Progress>,
    ) -> anyhow::Result<CreateReport> {
        let planned = self.plan(options)?;
        self.create_planned(&planned, wait, progress)
    }

    /// Takes the queue and runs the coordinator for a planned set. On error nothing is
    /// left frozen and no partial copy is usable.
    pub fn create_planned(
        &self,
        planned: &PlannedSet,
        wait: &WaitOptions,
        progress: Arc<dyn Progress>,
    ) -> anyhow::Result<CreateReport> {
        let PlannedSet {
            spec,
            provider,
            configured,
        } = planned;
        let catalog = self.open_catalog()?;
        if !configured {
            refuse_renamed_zero_config(&catalog, spec)?;
        }
        let _queue = self.take_queue(&catalog, "create", &spec.name, wait.policy(), &*progress)?;
        let kept = Box::new(CatalogKeptCopies {
            catalog_dir: self.catalog_dir.clone(),
            set: spec.name.clone(),
        });
        let created = create_copy(&catalog, spec, provider.clone(), progress, kept)?;
        Ok(CreateReport::new(spec, &**provider, created))
    }
}

impl CreateReport {
    fn new(spec: &SetSpec, provider: &dyn Provider, c: CreatedCopy) -> CreateReport {
        CreateReport {
            id: c.id,
            set: spec.name.clone(),
            provider: provider.kind().to_string(),
            location: c.location,
            freeze_window: c.freeze_window,
            freeze_deadline_ms: spec.freeze_deadline_ms,
            files: c.files.len(),
            bytes: c.files.iter().map(|f| f.size).sum(),
            phases: c
                .phases
                .iter()
                .map(|(p, d)| PhaseTime {
                    phase: p.to_string(),
                    took: *d,
                })
                .collect(),
            verification: c.verification,
            notes: c.notes,
            warnings: c.warnings,
        }
    }

    pub fn freeze_deadline(&self) -> Duration {
        Duration::from_millis(self.freeze_deadline_ms)
    }
}

/// Runs the coordinator for `spec` (the caller holds the queue). One btrfs snapshot, or
/// a copy of frozen file systems, holds every file at one instant: MariaDB then needs no
/// check of InnoDB's background writes.
fn create_copy(
    catalog: &Catalog,
    spec: &SetSpec,
    provider: Arc<dyn Provider>,
    events: Arc<dyn EventSink>,
    kept_copies: Box<dyn KeptCopies>,
) -> anyhow::Result<CreatedCopy> {
    let spec_json = spec.to_json()?;
    let run_spec = spec.with_atomic_snapshot(
        provider.capabilities().atomic_snapshot || spec.freezes_file_systems(),
    );
    Ok(Coordinator::new(catalog, events).create(ShadowSetRequest {
        set_name: spec.name.clone(),
        spec_json,
        origin: Origin::Create,
        writers: run_spec.build_writers(),
        unmanaged_components: spec.unmanaged_components(),
        provider,
        freeze_deadline: spec.freeze_deadline(),
        verify: spec.verify,
        kept_copies,
    })?)
}

/// A zero-config set is named after its file; a second database (or directory) with the
/// same file name must not silently join the first one's history. A set whose copies
/// all failed has no history to join (a failed attempt must not block the next one).
fn refuse_renamed_zero_config(catalog: &Catalog, spec: &SetSpec) -> anyhow::Result<()> {
    let holds_copies = catalog
        .list(Some(&spec.name))?
        .iter()
        .any(|c| c.state != CopyState::Failed);
    if !holds_copies {
        return Ok(());
    }
    if let Some(old) = catalog.set_spec(&spec.name)? {
        if let Ok(old) = SetSpec::from_json(&old) {
            if old.identity() != spec.identity() {
                return Err(UsageError::new(format!(
                    "set `{}` already holds copies of {}; pass --name to give this database its own set",
                    spec.name,
                    old.data_paths().iter().map(|p| p.display().to_string()).collect::<Vec<_>>().join(", ")
                ))
                .into());
            }
        }
    }
    Ok(())
}
