//! `shadowcopy verify ID`: hash the copy's files against the manifest and run each
//! writer's integrity check on the copy; record the result.

use std::time::Instant;

use clap::Args;
use serde::Serialize;
use shadowcopy_core::error::humanize;
use shadowcopy_core::verify::verify_copy;
use shadowcopy_core::{Error, Journal, NoEvents};

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
    let view = copy
        .provider
        .expose(&copy.location, &files)
        .map_err(|source| Error::Provider {
            provider: copy.provider.kind().into(),
            phase: shadowcopy_core::Phase::Verify,
            source,
        })?;
    let started = Instant::now();
    let report = verify_copy(&view, &mut files, &copy.spec.build_writers(), &NoEvents)?;
    let took = started.elapsed();
    catalog
        .record_files(args.id, &files)
        .map_err(|e| anyhow::anyhow!(e))?;
    catalog
        .record_verification(args.id, &report, took)
        .map_err(|e| anyhow::anyhow!(e))?;
    if session.out.json {
        session.out.print_json(&VerifyOutput {
            id: args.id,
            ok: report.ok,
            took_us: took.as_micros(),
            detail: &report.detail,
        })?;
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
