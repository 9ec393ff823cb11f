//! `shadowcopy create SET | --sqlite PATH`: one shadow set, start to end.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use clap::Args;
use serde::Serialize;
use shadowcopy_catalog::Catalog;
use shadowcopy_core::error::{human_bytes, humanize};
use shadowcopy_core::{
    Coordinator, CopyState, CreatedCopy, EventSink, KeptCopies, Origin, Provider, ShadowSetRequest,
};

use super::{CatalogKeptCopies, WaitArgs};
use crate::errors::UsageError;
use crate::output::{Output, PhasePrinter};
use crate::session::Session;
use crate::spec::{Overrides, SetSpec, ZeroConfig};
use crate::GlobalArgs;

#[derive(Args, Debug)]
pub struct CreateArgs {
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
    pub path: Vec<PathBuf>,
    /// Zero-config: a hook script called with each event (freeze, thaw, …); repeat for more
    #[arg(
        long = "exec-writer",
        value_name = "SCRIPT",
        help_heading = "Zero-config set"
    )]
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
    #[arg(long, value_name = "DURATION", value_parser = humantime::parse_duration, help_heading = "Copy")]
    pub freeze_deadline: Option<Duration>,
    /// Where the copy provider keeps copies [default: beside the catalog]
    #[arg(long, value_name = "DIR", help_heading = "Copy")]
    pub copies_dir: Option<PathBuf>,
    /// Skip the integrity check after the copy (the copy is recorded as not verified)
    #[arg(long, help_heading = "Copy")]
    pub no_verify: bool,
    #[command(flatten)]
    pub wait: WaitArgs,
    /// Print the result as JSON
    #[arg(long)]
    pub json: bool,
}

pub fn run(g: &GlobalArgs, args: CreateArgs) -> anyhow::Result<()> {
    let session = Session::new(g, args.json)?;
    let overrides = Overrides {
        provider: args.provider.clone(),
        freeze_deadline: args.freeze_deadline,
        copies_dir: args.copies_dir.clone(),
        no_verify: args.no_verify,
    };
    let spec = match &args.set {
        Some(set) => SetSpec::from_config(&session.config, set, &overrides)?,
        None if args.sqlite.is_none()
            && args.postgres.is_none()
            && args.mariadb.is_none()
            && args.path.is_empty() =>
        {
            return Err(UsageError::new(
                "say what to copy: a set named in the config file (`create SET`), one SQLite database (`create --sqlite PATH`), a PostgreSQL cluster (`create --postgres URL`), a MariaDB server (`create --mariadb URL`), or files and directories (`create --path DIR`)",
            )
            .into())
        }
        None => SetSpec::zero_config(
            &session.config,
            &ZeroConfig {
                sqlite: args.sqlite.as_deref(),
                postgres: args.postgres.as_deref(),
                pg_archive: args.pg_archive.as_deref(),
                pg_password_file: args.pg_password_file.as_deref(),
                mariadb: args.mariadb.as_deref(),
                mariadb_keep_binlogs: args.mariadb_keep_binlogs,
                mariadb_password_file: args.mariadb_password_file.as_deref(),
                exec_writers: &args.exec_writer,
                paths: &args.path,
                fsfreeze: args.fsfreeze,
                name: args.name.as_deref(),
            },
            &overrides,
        )?,
    };
    // Everything that can be checked without writing is checked before the catalog exists.
    spec.validate()?;
    let provider_options = spec.provider_options(session.catalog_dir.join("copies"));
    let provider = spec.choose_provider(&provider_options)?;
    spec.check_frozen_file_systems(&session.catalog_dir, &provider_options)?;
    let catalog = session.open_catalog()?;
    if args.set.is_none() {
        refuse_renamed_zero_config(&catalog, &spec)?;
    }
    let _queue = session.take_queue(&catalog, "create", &spec.name, args.wait.policy())?;
    let events: Arc<dyn EventSink> = Arc::new(PhasePrinter::new(session.out, ""));
    let kept = Box::new(CatalogKeptCopies {
        catalog_dir: session.catalog_dir.clone(),
        set: spec.name.clone(),
    });
    // One btrfs snapshot, or a copy of frozen file systems, holds every file at one
    // instant (MariaDB then needs no check of InnoDB's background writes).
    let run_spec = spec.with_atomic_snapshot(
        provider.capabilities().atomic_snapshot || spec.freezes_file_systems(),
    );
    let created = create_copy(&catalog, &run_spec, provider.clone(), events, kept)?;
    report(session.out, &spec, &*provider, &created)
}

/// Runs the coordinator for `spec` (the caller holds the queue).
pub fn create_copy(
    catalog: &Catalog,
    spec: &SetSpec,
    provider: Arc<dyn Provider>,
    events: Arc<dyn EventSink>,
    kept_copies: Box<dyn KeptCopies>,
) -> anyhow::Result<CreatedCopy> {
    let spec_json = spec.to_json()?;
    Ok(Coordinator::new(catalog, events).create(ShadowSetRequest {
        set_name: spec.name.clone(),
        spec_json,
        origin: Origin::Create,
        writers: spec.build_writers(),
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

#[derive(Serialize)]
struct CreateReport<'a> {
    id: i64,
    set: &'a str,
    provider: &'a str,
    location: &'a str,
    freeze_window_us: u128,
    freeze_deadline_ms: u64,
    files: usize,
    bytes: u64,
    phases: Vec<PhaseTime>,
    verification: Option<&'a shadowcopy_core::VerifyReport>,
    /// What writers did after the verified copy (WAL expired from the archive).
    notes: &'a [String],
    /// Problems that left the copy usable (a log truncation that failed).
    warnings: &'a [String],
}

#[derive(Serialize)]
pub struct PhaseTime {
    pub phase: String,
    pub took_us: u128,
}

fn report(
    out: Output,
    spec: &SetSpec,
    provider: &dyn Provider,
    c: &CreatedCopy,
) -> anyhow::Result<()> {
    let bytes: u64 = c.files.iter().map(|f| f.size).sum();
    if out.json {
        return out.print_json(&CreateReport {
            id: c.id,
            set: &spec.name,
            provider: provider.kind(),
            location: &c.location,
            freeze_window_us: c.freeze_window.as_micros(),
            freeze_deadline_ms: spec.freeze_deadline_ms,
            files: c.files.len(),
            bytes,
            phases: c
                .phases
                .iter()
                .map(|(p, d)| PhaseTime {
                    phase: p.to_string(),
                    took_us: d.as_micros(),
                })
                .collect(),
            verification: c.verification.as_ref(),
            notes: &c.notes,
            warnings: &c.warnings,
        });
    }
    if out.quiet {
        println!("{}", c.id);
        return Ok(());
    }
    println!(
        "copy {} of `{}` is usable: {} files, {}, provider {}",
        c.id,
        spec.name,
        c.files.len(),
        human_bytes(bytes),
        provider.kind()
    );
    println!(
        "  freeze window {} (deadline {}): the longest the application's writes waited",
        humanize(c.freeze_window),
        humanize(spec.freeze_deadline())
    );
    match &c.verification {
        Some(v) => println!("  verified: {}", v.detail.replace('\n', "; ")),
        None => println!(
            "  not verified (--no-verify); run `shadowcopy verify {}`",
            c.id
        ),
    }
    Ok(())
}
