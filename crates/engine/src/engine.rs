//! What every use case shares: the config, where the catalog is, opening it, taking the
//! queue (and, once held, finishing what interrupted commands left behind).

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Context;
use serde::Deserialize;
use shadowcopy_catalog::{Catalog, QueueGuard, QueueHolder, Wait};

use crate::config::{Config, HumanDuration};
use crate::copies::provider_for;
use crate::error::UsageError;
use crate::progress::Progress;

/// Where the engine finds its config and catalog; every front end passes these.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EngineOptions {
    /// The catalog directory (else the config file's `catalog`, else the default).
    pub catalog: Option<PathBuf>,
    /// The config file (else /etc/shadowcopy/config.toml when it exists).
    pub config: Option<PathBuf>,
}

/// The use cases on one catalog with one config: `create`, `verify`, `restore`,
/// `delete`, `list`, `show`, `writers`, `providers` (one module each).
pub struct Engine {
    pub config: Config,
    pub catalog_dir: PathBuf,
}

impl Engine {
    /// Reads the config and resolves the catalog directory (`--catalog`, then
    /// `SHADOWCOPY_CATALOG`, then the config file, then the default), made absolute
    /// against the current directory once, here: every location recorded under it is then
    /// absolute. An empty directory name is an error. Writes nothing.
    pub fn new(options: &EngineOptions) -> anyhow::Result<Engine> {
        let config = Config::load(options.config.as_deref())?;
        let (given, source) = match (&options.catalog, &config.catalog) {
            (Some(dir), _) => (dir.clone(), "--catalog (or SHADOWCOPY_CATALOG)".to_string()),
            (None, Some(dir)) => (
                dir.clone(),
                format!(
                    "`catalog` in {}",
                    config
                        .source
                        .as_deref()
                        .map_or("the config file".into(), |p| p.display().to_string())
                ),
            ),
            (None, None) => (default_catalog_dir(), "the default".to_string()),
        };
        let catalog_dir = absolute_catalog_dir(&given, &source)?;
        Ok(Engine {
            config,
            catalog_dir,
        })
    }

    /// Opens the catalog, creating it if there is none (for `create`).
    pub fn open_catalog(&self) -> anyhow::Result<Catalog> {
        Ok(Catalog::open(&self.catalog_dir)?)
    }

    /// Opens the catalog, which must exist, to read and write (`verify`, `restore`).
    pub fn open_existing_catalog(&self) -> anyhow::Result<Catalog> {
        Ok(Catalog::open_existing(&self.catalog_dir)?)
    }

    /// Opens the catalog, which must exist, read-only: nothing is written, and it works
    /// on a full file system (`list`, `show`, `pg log-analysis`, `mariadb log-analysis`,
    /// `delete --dry-run`).
    pub fn open_catalog_read_only(&self) -> anyhow::Result<Catalog> {
        Ok(Catalog::open_read_only(&self.catalog_dir)?)
    }

    /// Opens the catalog, which must exist, to delete copies, also on a full file system.
    pub fn open_catalog_to_free_space(&self) -> anyhow::Result<Catalog> {
        Ok(Catalog::open_to_free_space(&self.catalog_dir)?)
    }

    /// Takes the queue for `command` on `set`, telling `progress` whom it waits behind,
    /// then finishes interrupted restores, cleans up sets a crashed run left behind and
    /// marks the jobs of a dead agent interrupted.
    pub fn take_queue(
        &self,
        catalog: &Catalog,
        command: &str,
        set: &str,
        wait: Wait,
        progress: &dyn Progress,
    ) -> anyhow::Result<QueueGuard> {
        let me = QueueHolder {
            pid: std::process::id(),
            set: set.to_string(),
            command: command.to_string(),
            since_ms: chrono::Utc::now().timestamp_millis(),
        };
        let guard = catalog.acquire_queue(&me, wait, |holder| {
            progress.queued_behind(holder, wait);
        })?;
        for line in catalog
            .recover_interrupted_restores(&guard, progress)
            .context("finishing interrupted restores")?
        {
            progress.recovered(&line);
        }
        let recovered = catalog
            .recover_interrupted(&guard, &|copy| provider_for(catalog, copy))
            .context("cleaning up interrupted shadow sets")?;
        for r in recovered {
            progress.recovered(&format!(
                "recovered copy {} of set `{}`: {}",
                r.id, r.set, r.what
            ));
        }
        for job in catalog
            .interrupt_dead_jobs(JOB_LEASE)
            .context("marking the jobs of a dead agent interrupted")?
        {
            progress.recovered(&format!(
                "job {} ({} of set `{}`) {}",
                job.id,
                job.kind,
                job.set,
                job.result.as_deref().unwrap_or("was interrupted")
            ));
        }
        Ok(guard)
    }
}

/// `dir` (named by `source`) made absolute; an empty name is bad input.
fn absolute_catalog_dir(dir: &Path, source: &str) -> Result<PathBuf, UsageError> {
    if dir.as_os_str().is_empty() {
        return Err(UsageError::new(format!(
            "the catalog directory given by {source} is empty; name a directory, or leave it out \
             to use the default ({})",
            default_catalog_dir().display()
        )));
    }
    std::path::absolute(dir).map_err(|e| {
        UsageError::new(format!(
            "cannot make the catalog directory {} (from {source}) absolute: {e}; give an absolute path",
            dir.display()
        ))
    })
}

/// `/var/lib/shadowcopy` for root, `$XDG_DATA_HOME/shadowcopy` (or
/// `~/.local/share/shadowcopy`) otherwise.
/// How long an agent's open job stays its own without a heartbeat (it writes one every
/// 5 s): past that, the job is taken for interrupted even when its pid is alive.
pub const JOB_LEASE: Duration = Duration::from_secs(120);

pub fn default_catalog_dir() -> PathBuf {
    if rustix::process::geteuid().is_root() {
        return PathBuf::from("/var/lib/shadowcopy");
    }
    if let Some(x) = std::env::var_os("XDG_DATA_HOME").filter(|x| !x.is_empty()) {
        return PathBuf::from(x).join("shadowcopy");
    }
    let home = std::env::var_os("HOME")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("."));
    home.join(".local/share/shadowcopy")
}

/// How long a command waits for the queue when another shadow set is running.
#[derive(clap::Args, Clone, Copy, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct WaitOptions {
    /// Wait up to this long for a running shadow set to finish (exit 3 when exceeded)
    #[arg(long, value_name = "DURATION", value_parser = crate::parse_duration, default_value = "10m", help_heading = "Queue")]
    pub wait: HumanDuration,
    /// Do not wait: exit 3 at once if another shadow set is running
    #[arg(long, conflicts_with = "wait", help_heading = "Queue")]
    pub no_wait: bool,
}

impl Default for WaitOptions {
    fn default() -> Self {
        WaitOptions {
            wait: HumanDuration(std::time::Duration::from_secs(600)),
            no_wait: false,
        }
    }
}

impl WaitOptions {
    pub fn policy(&self) -> Wait {
        if self.no_wait {
            Wait::No
        } else {
            Wait::Upto(self.wait.0)
        }
    }
}
