//! `verify`: hash a copy's files against its manifest and run each writer's integrity
//! check on the copy (never the live data); record the result.

use std::path::Path;
use std::time::{Duration, Instant};

use serde::Serialize;
use shadowcopy_core::verify::verify_copy;
use shadowcopy_core::{Error, Journal, VerifyReport};
use shadowcopy_providers::LayoutError;

use crate::copies::UsableCopy;
use crate::engine::{Engine, WaitOptions};
use crate::progress::Progress;

/// A recorded verification: passed or failed (a failed one is also an error for
/// front ends that exit with a code: [`VerifyOutcome::into_result`]).
#[derive(Clone, Debug, Serialize)]
pub struct VerifyOutcome {
    pub id: i64,
    pub ok: bool,
    #[serde(rename = "took_us", serialize_with = "crate::micros")]
    pub took: Duration,
    pub detail: String,
}

impl VerifyOutcome {
    /// `Err(VerifyFailed)` (exit 4) when the copy failed.
    pub fn into_result(self) -> Result<VerifyOutcome, Error> {
        if self.ok {
            return Ok(self);
        }
        Err(Error::VerifyFailed {
            id: self.id,
            detail: self.detail.replace('\n', "; "),
        })
    }
}

impl Engine {
    /// Whether copy `id` can be verified (it exists and is usable): what the agent checks
    /// when a verification is submitted. The copy's set.
    pub fn check_verify(&self, id: i64) -> anyhow::Result<String> {
        let catalog = self.open_existing_catalog()?;
        Ok(UsableCopy::load(&catalog, id, "verified")?.summary.set)
    }

    /// Verifies copy `id` and records the result; the bytes hashed so far go to
    /// `progress`. A copy whose files were removed fails verification (recorded); a check
    /// that could not run is an error.
    pub fn verify(
        &self,
        id: i64,
        wait: &WaitOptions,
        progress: &dyn Progress,
    ) -> anyhow::Result<VerifyOutcome> {
        let catalog = self.open_existing_catalog()?;
        UsableCopy::load(&catalog, id, "verified")?;
        let _queue = self.take_queue(
            &catalog,
            "verify",
            &format!("copy {id}"),
            wait.policy(),
            progress,
        )?;
        // Loaded again under the queue: a delete may have run while we waited.
        let copy = UsableCopy::load(&catalog, id, "verified")?;
        let mut files = catalog.manifest(id)?;
        let started = Instant::now();
        let report = match copy.provider.expose(&copy.location, &files) {
            Ok(view) => {
                let report = verify_copy(&view, &mut files, &copy.spec.build_writers(), progress)?;
                catalog
                    .record_files(id, &files)
                    .map_err(|e| anyhow::anyhow!(e))?;
                report
            }
            // A copy whose files were removed is a failed verification (exit 4, recorded),
            // not a check that could not run.
            Err(source) => match files_missing(&*copy.provider, &copy.location, &*source) {
                Some(why) => VerifyReport {
                    ok: false,
                    detail: format!(
                        "the copy's files are missing: {why}; was it removed by hand? \
                         `shadowcopy delete {id}` removes its entry"
                    ),
                },
                None => {
                    return Err(Error::Provider {
                        provider: copy.provider.kind().into(),
                        phase: shadowcopy_core::Phase::Verify,
                        source,
                    }
                    .into())
                }
            },
        };
        let took = started.elapsed();
        catalog
            .record_verification(id, &report, took)
            .map_err(|e| anyhow::anyhow!(e))?;
        Ok(VerifyOutcome {
            id,
            ok: report.ok,
            took,
            detail: report.detail,
        })
    }
}

/// Why the copy's files are gone, when the provider could not expose the copy because
/// they are: its location (a local directory, for providers that say so) no longer
/// exists, or a part of a multi-volume copy is missing. `None` for any other failure
/// (an `exec` provider's location means nothing on this machine).
fn files_missing(
    provider: &dyn shadowcopy_core::Provider,
    location: &str,
    err: &(dyn std::error::Error + 'static),
) -> Option<String> {
    let path = Path::new(location);
    if provider.capabilities().location_is_a_local_directory
        && path.is_absolute()
        && matches!(path.symlink_metadata(), Err(e) if e.kind() == std::io::ErrorKind::NotFound)
    {
        return Some(format!("{location} does not exist"));
    }
    let mut cur = Some(err);
    while let Some(e) = cur {
        if let Some(LayoutError::NotInCopy { location, original }) = e.downcast_ref() {
            return Some(if original == Path::new("/") {
                format!("{location} does not exist")
            } else {
                e.to_string()
            });
        }
        cur = e.source();
    }
    None
}
