//! A recorded copy made readable again: its set spec and the provider that made it
//! (configured as it was then), for verify, restore, delete and log truncation.

use std::sync::Arc;

use shadowcopy_catalog::{Catalog, CopySummary};
use shadowcopy_core::{BoxError, CopyState, KeptCopies, KeptCopy, LogsOffHost, Provider};

use crate::error::UsageError;
use crate::set::SetSpec;

/// A usable copy with what it takes to read it: its set spec and its provider.
pub struct UsableCopy {
    pub summary: CopySummary,
    pub spec: SetSpec,
    pub provider: Arc<dyn Provider>,
    pub location: String,
}

impl UsableCopy {
    /// Copy `id`, which must be usable; `purpose` ("restored") words the refusal.
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

/// The provider that made `copy`, configured as it was then.
pub fn provider_for(catalog: &Catalog, copy: &CopySummary) -> Result<Arc<dyn Provider>, String> {
    let spec =
        SetSpec::from_json(&copy.spec_json).map_err(|e| format!("unreadable set spec: {e}"))?;
    let opts = spec.provider_options(catalog.default_copies_dir());
    // A multi-volume copy's volumes are in its location: an in-place restore makes its
    // pre-restore copy of the same volumes with this provider.
    shadowcopy_providers::build_for_copy(&copy.provider, copy.location.as_deref(), &opts)
        .map_err(|e| e.to_string())
}

/// The usable copies of a set, read from the catalog only when a writer asks: a writer
/// truncating logs after a verified copy must keep what each of them still needs.
pub struct CatalogKeptCopies {
    pub catalog_dir: std::path::PathBuf,
    pub set: String,
    /// The set's archive off the host, if it has one: its logs are kept on this host
    /// until they are there.
    pub archive: Option<String>,
}

impl KeptCopies for CatalogKeptCopies {
    fn logs_off_host(&self) -> LogsOffHost {
        let Some(archive) = &self.archive else {
            return LogsOffHost::NoArchive;
        };
        let through = Catalog::open_existing(&self.catalog_dir)
            .and_then(|c| c.logs_archived_through(&self.set, archive));
        match through {
            Ok(through) => LogsOffHost::Through(through),
            Err(e) => {
                tracing::warn!(
                    "how far set `{}`'s logs are in its archive is not known: {e}",
                    self.set
                );
                LogsOffHost::Through(None)
            }
        }
    }

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
