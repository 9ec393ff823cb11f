//! `shadowcopy delete ID... | --older-than AGE | --keep-last N | --policy`: remove copies
//! and their data (each copy is printed as it goes); with `--policy`, what each set's
//! retention policy does not keep, with why each copy stays or goes.

use clap::Args;
use shadowcopy_engine::{DeleteOptions, PruneOptions, PruneReport, WaitOptions};

use crate::output::{local_time, Output, PhasePrinter};
use crate::GlobalArgs;

#[derive(Args, Debug)]
pub struct DeleteArgs {
    #[command(flatten)]
    pub options: DeleteOptions,
    /// Delete what each set's retention policy (config: [sets.NAME.retention] or
    /// [defaults.retention]) does not keep; with --dry-run, show each copy's decision and why
    #[arg(long, conflicts_with_all = ["ids", "older_than", "keep_last"], help_heading = "Selection")]
    pub policy: bool,
    #[command(flatten)]
    pub wait: WaitOptions,
    /// Print the result as JSON
    #[arg(long)]
    pub json: bool,
}

pub fn run(g: &GlobalArgs, args: DeleteArgs) -> anyhow::Result<()> {
    let engine = g.engine()?;
    let out = g.output(args.json);
    if args.policy {
        let options = PruneOptions {
            set: args.options.set.clone(),
            dry_run: args.options.dry_run,
        };
        let report = engine.prune(&options, &args.wait, &PhasePrinter::new(out, ""))?;
        return print_decisions(out, &report, options.dry_run);
    }
    let report = engine.delete(&args.options, &args.wait, &PhasePrinter::new(out, ""))?;
    if out.json {
        out.print_json(&report)?;
    } else if report.copies.is_empty() && out.human() {
        println!("nothing to delete");
    }
    Ok(())
}

/// Each set's policy and one line per copy: kept or deleted, and why.
fn print_decisions(out: Output, report: &PruneReport, dry_run: bool) -> anyhow::Result<()> {
    if out.json {
        return out.print_json(report);
    }
    if !out.human() {
        return Ok(());
    }
    for set in &report.sets {
        println!(
            "set `{}`: {}{}",
            set.set,
            set.policy,
            set.pre_restore_policy
                .as_ref()
                .map(|p| format!("; pre-restore copies: {p}"))
                .unwrap_or_default()
        );
        for d in &set.decisions {
            let verdict = match (d.keep, dry_run) {
                (true, _) => "keep",
                (false, true) => "would delete",
                (false, false) => "deleted",
            };
            println!(
                "  {verdict:<12} copy {:<5} {}  {}",
                d.id,
                local_time(d.created_ms),
                d.reasons.join("; ")
            );
        }
    }
    if !report.sets_without_policy.is_empty() {
        println!(
            "no retention policy, left alone: {}",
            report
                .sets_without_policy
                .iter()
                .map(|s| format!("`{s}`"))
                .collect::<Vec<_>>()
                .join(", ")
        );
    }
    Ok(())
}
