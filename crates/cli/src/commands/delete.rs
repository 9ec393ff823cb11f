//! `shadowcopy delete ID... | --older-than AGE | --keep-last N`: remove copies and their
//! data (each copy is printed as it goes).

use clap::Args;
use shadowcopy_engine::{DeleteOptions, WaitOptions};

use crate::output::PhasePrinter;
use crate::GlobalArgs;

#[derive(Args, Debug)]
pub struct DeleteArgs {
    #[command(flatten)]
    pub options: DeleteOptions,
    #[command(flatten)]
    pub wait: WaitOptions,
    /// Print the result as JSON
    #[arg(long)]
    pub json: bool,
}

pub fn run(g: &GlobalArgs, args: DeleteArgs) -> anyhow::Result<()> {
    let engine = g.engine()?;
    let out = g.output(args.json);
    let report = engine.delete(&args.options, &args.wait, &PhasePrinter::new(out, ""))?;
    if out.json {
        out.print_json(&report)?;
    } else if report.copies.is_empty() && out.human() {
        println!("nothing to delete");
    }
    Ok(())
}
