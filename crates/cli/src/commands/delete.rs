//! `shadowcopy delete ID... | --older-than AGE | --keep-last N`: remove copies and their
//! data. Each deletion is recorded before the provider removes anything, so an
//! interrupted delete is finished by the next run.

use std::collections::BTreeMap;
use std::time::Duration;

use clap::Args;
use serde::Serialize;
use shadowcopy_catalog::{Catalog, CatalogError, CopySummary};
use shadowcopy_core::{CopyState, Origin, VerifyState};

use super::WaitArgs;
use crate::errors::UsageError;
use crate::session::{provider_for, Session};
use crate::GlobalArgs;

#[derive(Args, Debug)]
pub struct DeleteArgs {
    /// Ids of the copies to delete
    pub ids: Vec<i64>,
    /// Delete copies created longer ago than this (e.g. 7d)
    #[arg(long, value_name = "AGE", value_parser = parse_age, conflicts_with = "ids", help_heading = "Selection")]
    pub older_than: Option<Duration>,
    /// Keep each set's copies down to its N-th newest verified copy; delete older ones
    /// (pre-restore copies only go by id or --older-than)
    #[arg(long, value_name = "N", conflicts_with = "ids", value_parser = clap::value_parser!(u64).range(1..), help_heading = "Selection")]
    pub keep_last: Option<u64>,
    /// Only consider this set's copies
    #[arg(
        long,
        value_name = "SET",
        conflicts_with = "ids",
        help_heading = "Selection"
    )]
    pub set: Option<String>,
    /// Show what would be deleted, delete nothing
    #[arg(long)]
    pub dry_run: bool,
    #[command(flatten)]
    pub wait: WaitArgs,
    /// Print the result as JSON
    #[arg(long)]
    pub json: bool,
}

#[derive(Serialize)]
struct Deleted {
    id: i64,
    set: String,
    deleted: bool,
}

pub fn run(g: &GlobalArgs, args: DeleteArgs) -> anyhow::Result<()> {
    let session = Session::new(g, args.json)?;
    if args.ids.is_empty() && args.older_than.is_none() && args.keep_last.is_none() {
        return Err(UsageError::new(
            "say what to delete: copy ids, --older-than AGE or --keep-last N",
        )
        .into());
    }
    // A dry run only reads; a deletion also runs on a full file system (it is what frees
    // space), with the room the catalog keeps for it.
    let catalog = if args.dry_run {
        session.open_catalog_read_only()?
    } else {
        session.open_catalog_to_free_space()?
    };
    // Checked once before waiting for the queue (bad ids fail at once), and again under
    // it, after recovery has settled copies a dead process left in progress. A dry run
    // neither waits nor recovers: it writes nothing.
    for id in &args.ids {
        // Says why a copy the catalog cannot read is not deleted.
        if let Err(e @ CatalogError::Unknown { .. }) = catalog.summary(*id) {
            return Err(e.into());
        }
    }
    select(&catalog.list(args.set.as_deref())?, &args, Settled::No)?;
    let _queue = if args.dry_run {
        None
    } else {
        let scope = args.set.as_deref().unwrap_or("*");
        Some(session.take_queue(&catalog, "delete", scope, args.wait.policy())?)
    };
    let settled = if args.dry_run {
        Settled::No
    } else {
        Settled::Yes
    };
    let chosen = select(&catalog.list(args.set.as_deref())?, &args, settled)?;
    if let Some(copy) = chosen
        .iter()
        .find(|c| !args.dry_run && Catalog::location_is_ambiguous(c))
    {
        return Err(anyhow::anyhow!(
            "copy {} has the location {} recorded relative to the directory an older shadowcopy ran in; \
             nothing was deleted, as deleting it could remove files under the current directory. Remove \
             the copy's directory by hand",
            copy.id,
            copy.location.as_deref().unwrap_or_default()
        ));
    }
    let mut report = Vec::new();
    for copy in chosen {
        if !args.dry_run {
            catalog.mark_deleting(copy.id)?;
            if let Some(location) = &copy.location {
                let provider = provider_for(&catalog, &copy).map_err(|e| anyhow::anyhow!(e))?;
                provider
                    .delete(location)
                    .map_err(|e| anyhow::anyhow!("deleting copy {} at {location} failed: {e}; it stays listed as deleting and the next run retries", copy.id))?;
            }
            catalog.remove(copy.id)?;
        }
        if session.out.human() {
            println!(
                "{} copy {} of `{}` ({})",
                if args.dry_run {
                    "would delete"
                } else {
                    "deleted"
                },
                copy.id,
                copy.set,
                copy.state
            );
        }
        report.push(Deleted {
            id: copy.id,
            set: copy.set.clone(),
            deleted: !args.dry_run,
        });
    }
    if !args.dry_run && !report.is_empty() && !catalog.restore_reserve() && !session.out.quiet {
        eprintln!(
            "warning: the file system holding the catalog {} is still nearly full; free space there",
            catalog.dir().display()
        );
    }
    if session.out.json {
        session.out.print_json(&report)?;
    } else if report.is_empty() && session.out.human() {
        println!("nothing to delete");
    }
    Ok(())
}

/// The longest `--older-than` accepted: older than anything a catalog can hold, and
/// still a number of milliseconds the age comparison can hold without wrapping.
const MAX_AGE: Duration = Duration::from_secs(1_000_000 * 365 * 24 * 3600);

/// `--older-than AGE`: a duration that fits the comparison with creation times (a
/// wrapped conversion once turned `300000000y` into "older than nothing" and deleted
/// every copy).
fn parse_age(s: &str) -> Result<Duration, String> {
    let age = humantime::parse_duration(s)
        .map_err(|e| format!("{e}; write the age like 7d, 12h or 30m"))?;
    if age > MAX_AGE {
        return Err(format!(
            "{s} is out of range: the longest age accepted is 1000000y (a million years); a shorter age that is still older than every copy selects the same copies"
        ));
    }
    Ok(age)
}

/// Whether recovery has run (we hold the queue): only then does `in-progress` surely
/// mean a live shadow set.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Settled {
    Yes,
    No,
}

/// The copies the arguments name. Copies in progress are never selected. --keep-last N
/// keeps every copy down to the N-th newest verified one of its set, so a damaged or
/// unverified copy never pushes out the last good one; pre-restore copies are left to
/// --older-than. With both, a copy goes only if both say so.
fn select(
    copies: &[CopySummary],
    args: &DeleteArgs,
    settled: Settled,
) -> anyhow::Result<Vec<CopySummary>> {
    if !args.ids.is_empty() {
        return args
            .ids
            .iter()
            .map(|id| {
                let copy = copies.iter().find(|c| c.id == *id).ok_or_else(|| {
                    UsageError::new(format!(
                        "copy {id} does not exist; `shadowcopy list` shows the copies"
                    ))
                })?;
                if copy.state == CopyState::InProgress && settled == Settled::Yes {
                    return Err(UsageError::new(format!(
                        "copy {id} is still being made (pid {}); wait for it to finish",
                        copy.pid
                    ))
                    .into());
                }
                Ok(copy.clone())
            })
            .collect();
    }
    let now = chrono::Utc::now().timestamp_millis();
    let mut kept_per_set: BTreeMap<&str, u64> = BTreeMap::new();
    let mut chosen = Vec::new();
    // Newest first, so --keep-last keeps the newest usable copies.
    for c in copies.iter().rev() {
        if c.state == CopyState::InProgress {
            continue;
        }
        if let Some(n) = args.keep_last {
            // Everything down to the set's N-th newest verified copy stays.
            let verified = kept_per_set.entry(&c.set).or_default();
            if *verified < n {
                if c.state == CopyState::Usable && c.verify_state == VerifyState::Passed {
                    *verified += 1;
                }
                continue;
            }
            if c.origin == Origin::PreRestore && args.older_than.is_none() {
                continue;
            }
        }
        if let Some(age) = args.older_than {
            // `parse_age` made sure the age fits in milliseconds since the epoch.
            let age_ms = i64::try_from(age.as_millis()).unwrap_or(i64::MAX);
            if now.saturating_sub(c.created_ms) < age_ms {
                continue;
            }
        }
        chosen.push(c.clone());
    }
    chosen.reverse();
    Ok(chosen)
}
