//! `shadowcopy verify ID`: hash the copy's files against the manifest and run each
//! writer's integrity check on the copy; the result is recorded.

use clap::Args;
use shadowcopy_core::error::humanize;
use shadowcopy_engine::WaitOptions;

use crate::output::PhasePrinter;
use crate::GlobalArgs;

#[derive(Args, Debug)]
pub struct VerifyArgs {
    /// The copy's id
    pub id: i64,
    /// Read every byte and check every page, even between the set's full verifications
    /// (`full_verify_every`); without it, blocks the copy shares with the set's newest
    /// other verified copy are not read again
    #[arg(long)]
    pub full: bool,
    #[command(flatten)]
    pub wait: WaitOptions,
    /// Print the result as JSON
    #[arg(long)]
    pub json: bool,
}

pub fn run(g: &GlobalArgs, args: VerifyArgs) -> anyhow::Result<()> {
    let engine = g.engine()?;
    let out = g.output(args.json);
    let printer = PhasePrinter::new(out, "");
    let outcome = engine.verify(args.id, args.full, &args.wait, &printer);
    printer.finish();
    let outcome = outcome?;
    if out.json {
        // A failed verification is the error object `main` prints (code 4, the copy id):
        // stdout holds one JSON document either way.
        if outcome.ok {
            out.print_json(&outcome)?;
        }
    } else if out.human() {
        println!(
            "copy {} {} verification in {}:",
            outcome.id,
            if outcome.ok { "passed" } else { "FAILED" },
            humanize(outcome.took)
        );
        for line in outcome.detail.lines() {
            println!("  {line}");
        }
    }
    outcome.into_result()?;
    Ok(())
}
