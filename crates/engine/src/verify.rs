//! `verify`: hash a copy's files against its manifest and run each writer's integrity
//! check on the copy (never the live data); record the result. Between the full
//! verifications a set asks for (`full_verify_every`), a verification builds on the
//! set's newest verified copy ([`verify_base`]) and reads only what changed since.

use std::path::Path;
use std::time::{Duration, Instant};

use serde::Serialize;
use shadowcopy_catalog::Catalog;
use shadowcopy_core::verify::{verify_copy, Verification, VerifyBase};
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
    /// The verified copy this verification built on (`None`: it read everything).
    pub base: Option<i64>,
    /// Bytes read and hashed, of `bytes` in the copy.
    pub bytes_read: u64,
    pub bytes: u64,
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
    /// `progress`. `full` reads everything; otherwise the verification builds on the
    /// set's newest other verified copy when its set's `full_verify_every` allows. A
    /// copy whose files were removed fails verification (recorded); a check that could
    /// not run is an error.
    pub fn verify(
        &self,
        id: i64,
        full: bool,
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
        let base = match full {
            true => None,
            false => verify_base(
                &catalog,
                &copy.summary.set,
                Some(id),
                copy.spec.full_verify_every(),
            ),
        };
        let verification = match copy.provider.expose(&copy.location, &files) {
            Ok(view) => {
                let writers = copy.spec.build_writers();
                let verification =
                    verify_copy(&view, &mut files, &writers, progress, base.as_ref())?;
                catalog
                    .record_files(id, &files)
                    .map_err(|e| anyhow::anyhow!(e))?;
                verification
            }
            // A copy whose files were removed is a failed verification (exit 4, recorded),
            // not a check that could not run.
            Err(source) => match files_missing(&*copy.provider, &copy.location, &*source) {
                Some(why) => Verification::without_hashes(VerifyReport {
                    ok: false,
                    detail: format!(
                        "the copy's files are missing: {why}; was it removed by hand? \
                         `shadowcopy delete {id}` removes its entry"
                    ),
                }),
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
            .record_verification(id, &verification, took)
            .map_err(|e| anyhow::anyhow!(e))?;
        Ok(VerifyOutcome {
            id,
            ok: verification.report.ok,
            took,
            base: verification.base,
            bytes_read: verification.bytes_read,
            bytes: verification.bytes,
            detail: verification.report.detail,
        })
    }
}

/// What a verification of a copy of `set` (other than `exclude`) builds on: the set's
/// newest verified copy whose chain goes back to a full verification within
/// `full_every`, with where its files are. `None` (verify in full) when there is none,
/// `full_every` is zero, or that copy cannot be read: a base is only ever a saving.
pub(crate) fn verify_base(
    catalog: &Catalog,
    set: &str,
    exclude: Option<i64>,
    full_every: Duration,
) -> Option<VerifyBase> {
    if full_every.is_zero() {
        return None;
    }
    let since = shadowcopy_catalog::now_ms().saturating_sub(full_every.as_millis() as i64);
    let found = match catalog.verify_base(set, exclude, since) {
        Ok(found) => found?,
        Err(e) => {
            tracing::warn!("cannot look for a verified copy to build on: {e}; verifying in full");
            return None;
        }
    };
    let view = UsableCopy::load(catalog, found.copy, "built on")
        .and_then(|base| {
            let files = catalog.manifest(found.copy)?;
            base.provider
                .expose(&base.location, &files)
                .map_err(|e| anyhow::anyhow!(e))
        })
        .map_err(|e| {
            tracing::warn!(
                "cannot read copy {} to build on: {e:#}; verifying in full",
                found.copy
            )
        })
        .ok()?;
    Some(VerifyBase {
        copy: found.copy,
        view,
        leaves: found.leaves,
    })
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
