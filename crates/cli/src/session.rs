//! What every command shares: the config, where the catalog is, opening it, taking the
//! queue (and cleaning up interrupted sets once we hold it).

use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::Context;
use shadowcopy_catalog::{Catalog, CopySummary, QueueGuard, QueueHolder, Wait};
use shadowcopy_core::Provider;

use crate::config::Config;
use crate::errors::UsageError;
use crate::output::Output;
use crate::spec::SetSpec;
use crate::GlobalArgs;

pub struct Session {
    pub config: Config,
    pub catalog_dir: PathBuf,
    pub out: Output,
}

impl Session {
    /// Reads the config and resolves the catalog directory (`--catalog`, then
    /// `SHADOWCOPY_CATALOG`, then the config file, then the default), made absolute
    /// against the current directory once, here: every location recorded under it is then
    /// absolute. An empty directory name is an error. Writes nothing.
    pub fn new(global: &GlobalArgs, json: bool) -> anyhow::Result<Session> {
        let config = Config::load(global.config.as_deref())?;
        let (given, source) = match (&global.catalog, &config.catalog) {
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
        Ok(Session {
            config,
            catalog_dir,
            out: Output {
                json,
                quiet: global.quiet,
                verbose: global.verbose,
            },
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
    /// on a full file system (`list`, `show`, `pg log-analysis`, `delete --dry-run`).
    pub fn open_catalog_read_only(&self) -> anyhow::Result<Catalog> {
        Ok(Catalog::open_read_only(&self.catalog_dir)?)
    }

    /// Opens the catalog, which must exist, to delete copies, also on a full file system.
    pub fn open_catalog_to_free_space(&self) -> anyhow::Result<Catalog> {
        Ok(Catalog::open_to_free_space(&self.catalog_dir)?)
    }

    /// Takes the queue for `command` on `set`, telling the user (on stderr) whom they wait
    /// behind, then cleans up sets a crashed run left behind.
    pub fn take_queue(
        &self,
        catalog: &Catalog,
        command: &str,
        set: &str,
        wait: Wait,
    ) -> anyhow::Result<QueueGuard> {
        let me = QueueHolder {
            pid: std::process::id(),
            set: set.to_string(),
            command: command.to_string(),
            since_ms: chrono::Utc::now().timestamp_millis(),
        };
        let quiet = self.out.quiet;
        let guard = catalog.acquire_queue(&me, wait, |holder| {
            if quiet {
                return;
            }
            let limit = match wait {
                Wait::Upto(d) => format!("up to {}", humantime::format_duration(d)),
                Wait::No => "not at all".into(),
            };
            match holder {
                Some(h) => eprintln!(
                    "queued behind `{}` for set `{}` (pid {}, running for {}); waiting {limit}",
                    h.command,
                    h.set,
                    h.pid,
                    crate::output::age(h.since_ms)
                ),
                None => {
                    eprintln!("queued behind another shadow set in this catalog; waiting {limit}")
                }
            }
        })?;
        let events = crate::output::PhasePrinter::new(self.out, "");
        for line in catalog
            .recover_interrupted_restores(&guard, &events)
            .context("finishing interrupted restores")?
        {
            if !self.out.quiet {
                eprintln!("{line}");
            }
        }
        let recovered = catalog
            .recover_interrupted(&guard, &|copy| provider_for(catalog, copy))
            .context("cleaning up interrupted shadow sets")?;
        for r in recovered {
            if !self.out.quiet {
                eprintln!("recovered copy {} of set `{}`: {}", r.id, r.set, r.what);
            }
        }
        Ok(guard)
    }
}

/// The provider that made `copy`, configured as it was then.
pub fn provider_for(catalog: &Catalog, copy: &CopySummary) -> Result<Arc<dyn Provider>, String> {
    let spec =
        SetSpec::from_json(&copy.spec_json).map_err(|e| format!("unreadable set spec: {e}"))?;
    let opts = spec.provider_options(catalog.default_copies_dir());
    // A multi-volume copy's volumes are in its location: an in-place restore makes its
    // pre-restore copy of the same volumes with this provider.
    if copy.provider == shadowcopy_providers::multi::MULTI {
        if let Some(Ok(multi)) = copy
            .location
            .as_deref()
            .map(|l| shadowcopy_providers::multi::MultiVolumeProvider::for_location(l, &opts))
        {
            return Ok(Arc::new(multi));
        }
    }
    shadowcopy_providers::build(&copy.provider, &opts).map_err(|e| e.to_string())
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
