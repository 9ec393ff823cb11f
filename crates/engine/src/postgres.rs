//! PostgreSQL's own use cases: `pg_log_analysis`, what WAL a copy's restores would find
//! (in the copy, the archive, the live `pg_wal`) and where the chain has holes; and
//! `archive_setup`, the settings that make a cluster archive its WAL into a directory.

use std::path::{Path, PathBuf};

use anyhow::Context;
use serde::Serialize;
use shadowcopy_postgres::archive::WalArchive;
use shadowcopy_postgres::cluster;
use shadowcopy_postgres::log_analysis::{self, LogAnalysis};
use shadowcopy_writers::WriterSpec;

use crate::copies::UsableCopy;
use crate::engine::Engine;
use crate::error::UsageError;

impl Engine {
    /// The WAL analysis of copy `id`, which must hold a PostgreSQL cluster. Reads only.
    pub fn pg_log_analysis(&self, id: i64) -> anyhow::Result<LogAnalysis> {
        let catalog = self.open_catalog_read_only()?;
        let copy = UsableCopy::load(&catalog, id, "analysed")?;
        let Some(options) = copy.spec.writers.iter().find_map(|w| match w {
            WriterSpec::Postgres(o) => Some(o),
            _ => None,
        }) else {
            return Err(UsageError::new(format!(
                "copy {id} (set `{}`) holds no PostgreSQL cluster; log-analysis is for copies made with --postgres or a set of kind postgres",
                copy.summary.set
            ))
            .into());
        };
        let layout = options.layout.as_ref().ok_or_else(|| {
            anyhow::anyhow!(
                "copy {id} was recorded without its cluster layout; it cannot be analysed"
            )
        })?;
        let files = catalog.manifest(id)?;
        let view = copy
            .provider
            .expose(&copy.location, &files)
            .map_err(|e| anyhow::anyhow!(e).context(format!("cannot read copy {id}")))?;
        Ok(log_analysis::analyze(
            layout,
            options.archive.as_deref(),
            &view,
        )?)
    }
}

/// The archive settings of a cluster: printed, or applied.
#[derive(Clone, Debug, Serialize)]
pub struct ArchiveSetup {
    /// The cluster's data directory.
    pub data_dir: PathBuf,
    /// The archive directory (absolute).
    pub archive: PathBuf,
    /// `archive_mode` and `archive_command`, as postgresql.conf spells them.
    pub settings: Vec<(&'static str, String)>,
    /// The archive was created and the settings set with ALTER SYSTEM.
    pub applied: bool,
    /// `archive_mode` takes effect at the next server restart.
    pub restart_needed: bool,
}

/// The settings that make the cluster at `url` archive its WAL into `archive` through
/// `program pg archive-push`; with `apply`, the archive is created (owned by the
/// cluster's owner) and the settings are set with ALTER SYSTEM and reloaded.
pub fn archive_setup(
    url: &str,
    archive: &Path,
    program: &Path,
    apply: bool,
) -> anyhow::Result<ArchiveSetup> {
    let archive = std::path::absolute(archive).context("resolving the archive directory")?;
    let mut client = cluster::connect(url)?;
    let layout = cluster::discover(&mut client, cluster::PgUrl::new(url).as_str())?;
    let command = format!(
        "{} pg archive-push --archive {} %p",
        program.display(),
        archive.display()
    );
    let settings = vec![
        ("archive_mode", "on".to_string()),
        ("archive_command", command),
    ];
    let mut setup = ArchiveSetup {
        data_dir: layout.data_dir.clone(),
        archive,
        settings,
        applied: false,
        restart_needed: false,
    };
    if !apply {
        return Ok(setup);
    }
    WalArchive::create(&setup.archive)?;
    if rustix::process::geteuid().is_root() {
        for entry in walkdir::WalkDir::new(&setup.archive) {
            let entry = entry?;
            std::os::unix::fs::chown(entry.path(), Some(layout.owner_uid), Some(layout.owner_gid))
                .with_context(|| {
                    format!("giving {} to the cluster's owner", entry.path().display())
                })?;
        }
    }
    for (k, v) in &setup.settings {
        client
            .simple_query(&format!(
                "ALTER SYSTEM SET {k} = '{}'",
                v.replace('\'', "''")
            ))
            .with_context(|| format!("ALTER SYSTEM SET {k}"))?;
    }
    client.simple_query("SELECT pg_reload_conf()")?;
    let mode: String = client.query_one("SHOW archive_mode", &[])?.get(0);
    setup.applied = true;
    setup.restart_needed = mode != "on";
    Ok(setup)
}
