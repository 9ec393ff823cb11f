//! `shadowcopy create SET | --sqlite PATH | …`: one shadow set, start to end.

use std::sync::Arc;

use clap::Args;
use shadowcopy_core::error::{human_bytes, humanize};
use shadowcopy_engine::{CreateOptions, CreateReport, WaitOptions};

use crate::output::{Output, PhasePrinter};
use crate::GlobalArgs;

#[derive(Args, Debug)]
pub struct CreateArgs {
    #[command(flatten)]
    pub options: CreateOptions,
    #[command(flatten)]
    pub wait: WaitOptions,
    /// Print the result as JSON
    #[arg(long)]
    pub json: bool,
}

pub fn run(g: &GlobalArgs, args: CreateArgs) -> anyhow::Result<()> {
    let engine = g.engine()?;
    let out = g.output(args.json);
    let report = engine.create(
        &args.options,
        &args.wait,
        Arc::new(PhasePrinter::new(out, "")),
    )?;
    print(out, &report)
}

fn print(out: Output, c: &CreateReport) -> anyhow::Result<()> {
    if out.json {
        return out.print_json(c);
    }
    if out.quiet {
        println!("{}", c.id);
        return Ok(());
    }
    println!(
        "copy {} of `{}` is usable: {} files, {}, provider {}",
        c.id,
        c.set,
        c.files,
        human_bytes(c.bytes),
        c.provider
    );
    println!(
        "  freeze window {} (deadline {}): the longest the application's writes waited",
        humanize(c.freeze_window),
        humanize(c.freeze_deadline())
    );
    match &c.verification {
        Some(v) => println!("  verified: {}", v.detail.replace('\n', "; ")),
        None => println!(
            "  not verified (--no-verify); run `shadowcopy verify {}`",
            c.id
        ),
    }
    Ok(())
}
