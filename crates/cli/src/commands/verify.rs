//! `shadowcopy verify ID`: hash the copy's files against the manifest and run each
//! writer's integrity check on the copy; record the result.

use std::path::Path;
use std::time::Instant;

use clap::Args;
use serde::Serialize;
use shadowcopy_core::error::humanize;
use shadowcopy_core::verify::verify_copy;
use shadowcopy_core::{Error, Journal, NoEvents, VerifyReport};
use shadowcopy_providers::LayoutError;

use super::{UsableCopy, WaitArgs};
use crate::session::Session;
use crate::GlobalArgs;

#[derive(Args, Debug)]
pub struct VerifyArgs {
    /// The copy's id
    pub id: i64,
    #[command(flatten)]
    pub wait: WaitArgs,
    /// Print the result as JSON
    #[arg(long)]
    pub json: bool,
}

#[derive(Serialize)]
struct VerifyOutput<'a> {
    id: i64,
    /// Always true: a failed verification prints the JSON error object instead.
    ok: bool,
    took_us: u128,
    detail: &'a str,
}

pub fn run(g: &GlobalArgs, args: VerifyArgs) -> anyhow::Result<()> {
    let session = Session::new(g, args.json)?;
    let catalog = session.open_existing_catalog()?;
    UsableCopy::load(&catalog, args.id, "verified")?;
    let _queue = session.take_queue(
        &catalog,
        "verify",
        &format!("copy {}", args.id),
        args.wait.policy(),
    )?;
    // Loaded again under the queue: a delete may have run while we waited.
    let copy = UsableCopy::load(&catalog, args.id, "verified")?;
    let mut files = catalog.manifest(args.id)?;
    let started = Instant::now();
    let report = match copy.provider.expose(&copy.location, &files) {
        Ok(view) => {
            let report = verify_copy(&view, &mut files, &copy.spec.build_writers(), &NoEvents)?;
            catalog
                .record_files(args.id, &files)
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
                     `shadowcopy delete {}` removes its entry",
                    args.id
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
        .record_verification(args.id, &report, took)
        .map_err(|e| anyhow::anyhow!(e))?;
    if session.out.json {
        // A failed verification is the error object `main` prints (code 4, the copy id):
        // stdout holds one JSON document either way.
        if report.ok {
            session.out.print_json(&VerifyOutput {
                id: args.id,
                ok: report.ok,
                took_us: took.as_micros(),
                detail: &report.detail,
            })?;
        }
    } else if session.out.human() {
        println!(
            "copy {} {} verification in {}:",
            args.id,
            if report.ok { "passed" } else { "FAILED" },
            humanize(took)
        );
        for line in report.detail.lines() {
            println!("  {line}");
        }
    }
    if !report.ok {
        return Err(Error::VerifyFailed {
            id: args.id,
            detail: report.detail.replace('\n', "; "),
        }
        .into());
    }
    Ok(())
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
