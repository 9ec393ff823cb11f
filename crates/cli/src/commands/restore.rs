//! `shadowcopy restore ID [--to DIR]`: point-in-time or roll-forward restore, in place
//! (keeping what it replaces as a `pre-restore` copy) or into another directory.

use std::sync::Arc;

use clap::Args;
use shadowcopy_core::error::humanize;
use shadowcopy_engine::{RestoreOptions, WaitOptions};

use crate::output::PhasePrinter;
use crate::GlobalArgs;

#[derive(Args, Debug)]
pub struct RestoreArgs {
    #[command(flatten)]
    pub options: RestoreOptions,
    #[command(flatten)]
    pub wait: WaitOptions,
    /// Print the result as JSON
    #[arg(long)]
    pub json: bool,
}

pub fn run(g: &GlobalArgs, args: RestoreArgs) -> anyhow::Result<()> {
    let engine = g.engine()?;
    let out = g.output(args.json);
    let report = engine.restore(
        &args.options,
        &args.wait,
        Arc::new(PhasePrinter::new(out, "  ")),
    )?;
    if out.json {
        return out.print_json(&report);
    }
    if out.human() {
        for step in &report.steps {
            println!("  {:<40} {:>10}", step.phase, humanize(step.took));
        }
        let place = if report.elsewhere {
            "into"
        } else {
            "in place at"
        };
        for t in &report.targets {
            println!("restored copy {} {place} {}", report.id, t.0.display());
        }
        println!("  took {}", humanize(report.took));
        if let Some(pre) = report.pre_restore {
            println!("  the state it replaced is kept as copy {pre} (pre-restore); undo with `shadowcopy restore {pre}`");
        }
        for note in &report.notes {
            println!("  {note}");
        }
    }
    Ok(())
}
