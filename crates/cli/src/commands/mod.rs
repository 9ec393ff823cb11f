//! One module per subcommand: its arguments (clap derive) and its `run`.

pub mod create;
pub mod delete;
pub mod list;
pub mod pg;
pub mod providers;
pub mod quickstart;
pub mod restore;
pub mod show;
pub mod verify;
pub mod writers;

use std::time::Duration;

use clap::Args;
use shadowcopy_catalog::Wait;

/// How long to wait for the queue when another shadow set is running.
#[derive(Args, Clone, Copy, Debug)]
pub struct WaitArgs {
    /// Wait up to this long for a running shadow set to finish (exit 3 when exceeded)
    #[arg(long, value_name = "DURATION", value_parser = humantime::parse_duration, default_value = "10m", help_heading = "Queue")]
    pub wait: Duration,
    /// Do not wait: exit 3 at once if another shadow set is running
    #[arg(long, conflicts_with = "wait", help_heading = "Queue")]
    pub no_wait: bool,
}

impl WaitArgs {
    pub fn policy(&self) -> Wait {
        if self.no_wait {
            Wait::No
        } else {
            Wait::Upto(self.wait)
        }
    }
}

use std::sync::Arc;

use shadowcopy_catalog::{Catalog, CopySummary};
use shadowcopy_core::{BoxError, CopyState, KeptCopies, KeptCopy, Provider};

use crate::errors::UsageError;
use crate::session::provider_for;
use crate::spec::SetSpec;

/// A usable copy with what it takes to read it: its set spec and its provider.
pub struct UsableCopy {
    pub summary: CopySummary,
    pub spec: SetSpec,
    pub provider: Arc<dyn Provider>,
    pub location: String,
}

impl UsableCopy {
    pub fn load(catalog: &Catalog, id: i64, purpose: &str) -> anyhow::Result<UsableCopy> {
        let summary = catalog.summary(id)?;
        if summary.state != CopyState::Usable {
            return Err(UsageError::new(format!(
                "copy {id} is {} ({}); only usable copies can be {purpose}. `shadowcopy list` shows which are",
                summary.state,
                summary.error.as_deref().unwrap_or("no error recorded")
            ))
            .into());
        }
        let spec = SetSpec::from_json(&summary.spec_json).map_err(|e| {
            anyhow::anyhow!("copy {id} has an unreadable set spec in the catalog: {e}")
        })?;
        let provider = provider_for(catalog, &summary).map_err(|e| anyhow::anyhow!(e))?;
        let location = summary
            .location
            .clone()
            .ok_or_else(|| anyhow::anyhow!("copy {id} has no location recorded"))?;
        Ok(UsableCopy {
            summary,
            spec,
            provider,
            location,
        })
    }
}

/// The usable copies of a set, read from the catalog only when a writer asks: a writer
/// truncating logs after a verified copy must keep what each of them still needs.
pub struct CatalogKeptCopies {
    pub catalog_dir: std::path::PathBuf,
    pub set: String,
}

impl KeptCopies for CatalogKeptCopies {
    fn kept(&self) -> Result<Vec<KeptCopy>, BoxError> {
        let catalog = Catalog::open_existing(&self.catalog_dir)?;
        let mut kept = Vec::new();
        for summary in catalog.list(Some(&self.set))? {
            if summary.state != CopyState::Usable {
                continue;
            }
            let copy = UsableCopy::load(&catalog, summary.id, "read")?;
            let files = catalog.manifest(summary.id)?;
            let view = copy.provider.expose(&copy.location, &files)?;
            kept.push(KeptCopy {
                id: summary.id,
                view,
            });
        }
        Ok(kept)
    }
}
