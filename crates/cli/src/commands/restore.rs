//! `shadowcopy restore ID [--to DIR]`: point-in-time or roll-forward restore, in place
//! (keeping what it replaces as a `pre-restore` copy) or into another directory.

use std::sync::Arc;

use clap::Args;
use shadowcopy_core::error::humanize;
use shadowcopy_engine::{RestoreOptions, WaitOptions};

use crate::commands::remote;
use crate::output::{Output, PhasePrinter};
use crate::GlobalArgs;

#[derive(Args, Debug)]
pub struct RestoreArgs {
    #[command(flatten)]
    pub options: RestoreOptions,
    #[command(flatten)]
    pub wait: WaitOptions,
    /// With --server: restore on this host, in place, through its agent
    #[arg(long, value_name = "HOST")]
    pub host: Option<String>,
    /// Print the result as JSON
    #[arg(long)]
    pub json: bool,
}

pub fn run(g: &GlobalArgs, args: RestoreArgs) -> anyhow::Result<()> {
    let out = g.output(args.json);
    if let Some((server, host)) = remote::target(g, &args.host, "restore")? {
        return on_host(&server, &host, &args, out);
    }
    let engine = g.engine()?;
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

/// `restore --server URL --host H ID`: an in-place restore on H, queued on the server
/// and followed to its end.
fn on_host(
    server: &shadowcopy_agent::link::https::ServerClient,
    host: &str,
    args: &RestoreArgs,
    out: Output,
) -> anyhow::Result<()> {
    let o = &args.options;
    let job = remote::run_job(
        server,
        host,
        shadowcopy_agent::job::JobRequest::Restore {
            copy: o.id,
            force: o.force,
            accept_failed_verification: o.accept_failed_verification,
            discard_current: o.discard_current,
            mode: o.mode,
            until: o.until.clone(),
            to: o.to.clone(),
        },
        &args.wait,
        out,
    )?;
    if out.json {
        return out.print_json(&job);
    }
    if out.human() {
        println!(
            "restored copy {} on {host}: {}",
            o.id,
            job.result.as_deref().unwrap_or("done")
        );
    }
    Ok(())
}
