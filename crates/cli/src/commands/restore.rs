//! `shadowcopy restore ID [--to DIR]`: point-in-time restore, in place (keeping what it
//! replaces as a `pre-restore` copy) or into another directory.

use std::path::PathBuf;
use std::sync::Arc;

use clap::Args;
use serde::Serialize;
use shadowcopy_core::error::humanize;
use shadowcopy_core::{EventSink, RestoreMode, RestoreRequest, Restorer, VerifyState};

use super::{UsableCopy, WaitArgs};
use crate::errors::UsageError;
use crate::output::PhasePrinter;
use crate::session::Session;
use crate::GlobalArgs;

#[derive(Args, Debug)]
pub struct RestoreArgs {
    /// The copy's id
    pub id: i64,
    /// Restore into this directory instead of in place
    #[arg(long, value_name = "DIR")]
    pub to: Option<PathBuf>,
    /// Restore even while the data is held open, or from a copy that failed verification
    #[arg(long)]
    pub force: bool,
    /// Do not keep the state being replaced as a pre-restore copy
    #[arg(long)]
    pub discard_current: bool,
    /// point-in-time: the data exactly as in the copy. roll-forward: the copy, then the
    /// database's logs kept since (WAL archive, live WAL directory, MariaDB's binary
    /// logs) replayed to their end
    #[arg(long, value_name = "MODE", default_value = "point-in-time", value_parser = ["point-in-time", "roll-forward"])]
    pub mode: String,
    /// With --mode roll-forward: stop replaying at this point (PostgreSQL: a time such as
    /// "2026-11-22 10:00:00+00", an LSN such as 0/3000060, or xid:NNN; MariaDB: a time
    /// such as "2026-11-22 10:00:00Z", a binlog position such as mariadb-bin.000042:1234,
    /// or a GTID position such as 0-1-100)
    #[arg(long, value_name = "TARGET", requires = "mode")]
    pub until: Option<String>,
    #[command(flatten)]
    pub wait: WaitArgs,
    /// Print the result as JSON
    #[arg(long)]
    pub json: bool,
}

/// A restored path: a JSON string, or for a name that is not UTF-8 a lossless object
/// (see `shadowcopy_core::model::JsonPath`).
#[derive(Serialize)]
struct Target(#[serde(with = "shadowcopy_core::pathjson")] PathBuf);

#[derive(Serialize)]
struct RestoreOutput {
    id: i64,
    targets: Vec<Target>,
    pre_restore: Option<i64>,
    took_us: u128,
    steps: Vec<super::create::PhaseTime>,
}

pub fn run(g: &GlobalArgs, args: RestoreArgs) -> anyhow::Result<()> {
    let session = Session::new(g, args.json)?;
    let catalog = session.open_existing_catalog()?;
    check(&UsableCopy::load(&catalog, args.id, "restored")?, &args)?;
    let _queue = session.take_queue(
        &catalog,
        "restore",
        &format!("copy {}", args.id),
        args.wait.policy(),
    )?;
    let unfinished = catalog.unfinished_restores()?;
    if let Some(earlier) = unfinished.first() {
        anyhow::bail!(
            "an earlier restore of copy {earlier} was interrupted and could not be finished (the message \
             above says why); fix that and run any shadowcopy command to finish it before restoring again"
        );
    }
    let copy = UsableCopy::load(&catalog, args.id, "restored")?;
    check(&copy, &args)?;
    let events: Arc<dyn EventSink> = Arc::new(PhasePrinter::new(session.out, "  "));
    let outcome = Restorer::new(&catalog, events).restore(RestoreRequest {
        copy_id: args.id,
        set_name: copy.summary.set.clone(),
        spec_json: copy.summary.spec_json.clone(),
        location: copy.location.clone(),
        files: catalog.manifest(args.id)?,
        components: catalog.components(args.id)?,
        writers: copy.spec.build_writers(),
        provider: copy.provider.clone(),
        to: args.to.clone(),
        force: args.force,
        keep_current: !args.discard_current,
        mode: restore_mode(&args)?,
    })?;
    if session.out.json {
        return session.out.print_json(&RestoreOutput {
            id: args.id,
            targets: outcome.targets.iter().cloned().map(Target).collect(),
            pre_restore: outcome.pre_restore,
            took_us: outcome.took.as_micros(),
            steps: outcome
                .steps
                .iter()
                .map(|(s, d)| super::create::PhaseTime {
                    phase: s.clone(),
                    took_us: d.as_micros(),
                })
                .collect(),
        });
    }
    if session.out.human() {
        for (step, took) in &outcome.steps {
            println!("  {step:<40} {:>10}", humanize(*took));
        }
        let place = if args.to.is_some() {
            "into"
        } else {
            "in place at"
        };
        for t in &outcome.targets {
            println!("restored copy {} {place} {}", args.id, t.display());
        }
        println!("  took {}", humanize(outcome.took));
        if let Some(pre) = outcome.pre_restore {
            println!("  the state it replaced is kept as copy {pre} (pre-restore); undo with `shadowcopy restore {pre}`");
        }
    }
    Ok(())
}

fn restore_mode(args: &RestoreArgs) -> anyhow::Result<RestoreMode> {
    match (args.mode.as_str(), &args.until) {
        ("roll-forward", until) => Ok(RestoreMode::RollForward {
            until: until.clone(),
        }),
        (_, Some(_)) => Err(UsageError::new(
            "--until stops a roll-forward; use it with --mode roll-forward",
        )
        .into()),
        _ => Ok(RestoreMode::PointInTime),
    }
}

fn check(copy: &UsableCopy, args: &RestoreArgs) -> anyhow::Result<()> {
    if copy.summary.verify_state == VerifyState::Failed && !args.force {
        return Err(UsageError::new(format!(
            "copy {} failed verification (`shadowcopy show {}` says why); pass --force to restore it anyway",
            args.id, args.id
        ))
        .into());
    }
    Ok(())
}
