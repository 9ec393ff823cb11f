//! `delete`: remove copies and their data, by id, age or count; `prune`: remove what
//! each set's retention policy does not keep. Each deletion is recorded before the
//! provider removes anything, so an interrupted delete is finished by the next run.

use std::collections::BTreeMap;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use shadowcopy_catalog::{Catalog, CatalogError, CopySummary};
use shadowcopy_core::{CopyState, Origin, VerifyState};

use crate::config::HumanDuration;
use crate::copies::provider_for;
use crate::engine::{Engine, WaitOptions};
use crate::error::UsageError;
use crate::progress::{Progress, Silent};
use crate::retention::{self, Decision, RetentionPolicy};

/// Which copies to delete: the flags of `delete` and an API request's JSON alike.
#[derive(clap::Args, Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DeleteOptions {
    /// Ids of the copies to delete
    pub ids: Vec<i64>,
    /// Delete copies created longer ago than this (e.g. 7d)
    #[arg(long, value_name = "AGE", value_parser = parse_age, conflicts_with = "ids", help_heading = "Selection")]
    pub older_than: Option<HumanDuration>,
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
}

/// One copy deleted (or, in a dry run, that would be).
#[derive(Clone, Debug, Serialize)]
pub struct Deleted {
    pub id: i64,
    pub set: String,
    pub deleted: bool,
}

/// Which sets `prune` applies its policies to.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PruneOptions {
    /// Only this set (else every set in the catalog that has a policy).
    pub set: Option<String>,
    /// Decide and report, delete nothing.
    pub dry_run: bool,
}

/// One set's decisions.
#[derive(Clone, Debug, Serialize)]
pub struct SetDecisions {
    pub set: String,
    /// The policy applied to copies made by `create`, in words.
    pub policy: String,
    /// The policy applied to `pre-restore` copies (none: they are all kept).
    pub pre_restore_policy: Option<String>,
    /// One per copy of the set, oldest first.
    pub decisions: Vec<Decision>,
}

/// What `prune` decided and did (`delete --policy --json` prints this).
#[derive(Clone, Debug, Default, Serialize)]
pub struct PruneReport {
    pub sets: Vec<SetDecisions>,
    pub deleted: Vec<Deleted>,
    /// Sets in the catalog without a policy: left alone.
    pub sets_without_policy: Vec<String>,
}

/// What `delete` did: the copies, in order (`delete --json` prints this list).
#[derive(Clone, Debug, Serialize)]
#[serde(transparent)]
pub struct DeleteReport {
    pub copies: Vec<Deleted>,
}

impl Engine {
    /// Deletes the copies `options` select; a dry run reads only. Each copy is marked
    /// `deleting` before its data goes, so a failure halfway is retried by the next run.
    pub fn delete(
        &self,
        options: &DeleteOptions,
        wait: &WaitOptions,
        progress: &dyn Progress,
    ) -> anyhow::Result<DeleteReport> {
        if options.ids.is_empty() && options.older_than.is_none() && options.keep_last.is_none() {
            return Err(UsageError::new(
                "say what to delete: copy ids, --older-than AGE, --keep-last N, or --policy (each set's retention policy)",
            )
            .into());
        }
        if let Some(age) = options.older_than {
            check_age(age.0)?;
        }
        let dry_run = options.dry_run;
        // A dry run only reads; a deletion also runs on a full file system (it is what frees
        // space), with the room the catalog keeps for it.
        let catalog = if dry_run {
            self.open_catalog_read_only()?
        } else {
            self.open_catalog_to_free_space()?
        };
        // Checked once before waiting for the queue (bad ids fail at once), and again under
        // it, after recovery has settled copies a dead process left in progress. A dry run
        // neither waits nor recovers: it writes nothing.
        for id in &options.ids {
            // Says why a copy the catalog cannot read is not deleted.
            if let Err(e @ CatalogError::Unknown { .. }) = catalog.summary(*id) {
                return Err(e.into());
            }
        }
        select(&catalog.list(options.set.as_deref())?, options, Settled::No)?;
        let _queue = if dry_run {
            None
        } else {
            let scope = options.set.as_deref().unwrap_or("*");
            Some(self.take_queue(&catalog, "delete", scope, wait.policy(), progress)?)
        };
        let settled = if dry_run { Settled::No } else { Settled::Yes };
        let chosen = select(&catalog.list(options.set.as_deref())?, options, settled)?;
        let copies = delete_copies(&catalog, chosen, dry_run, progress)?;
        Ok(DeleteReport { copies })
    }

    /// Deletes what each set's retention policy does not keep (`delete --policy`; the
    /// agent's prune job): the decisions, with why each copy stays or goes, and the
    /// copies deleted. A dry run reads only. Sets without a policy are left alone.
    pub fn prune(
        &self,
        options: &PruneOptions,
        wait: &WaitOptions,
        progress: &dyn Progress,
    ) -> anyhow::Result<PruneReport> {
        let config = &self.config;
        let any_policy = |(p, pre): (Option<&RetentionPolicy>, Option<&RetentionPolicy>)| {
            p.is_some() || pre.is_some()
        };
        match &options.set {
            Some(set) if !any_policy(config.retention(set)) => {
                return Err(UsageError::new(format!(
                    "set `{set}` has no retention policy; give it one in the config file ([sets.{set}.retention] with keep_last, keep_daily, … or keep_within), or one for all sets ([defaults.retention])"
                ))
                .into())
            }
            None if !any_policy((
                config.defaults.retention.as_ref(),
                config.defaults.pre_restore_retention.as_ref(),
            )) && !config.sets.keys().any(|s| any_policy(config.retention(s))) =>
            {
                return Err(UsageError::new(
                    "no retention policy is configured; add one to the config file ([sets.NAME.retention] or [defaults.retention], with keep_last, keep_daily, … or keep_within)",
                )
                .into())
            }
            _ => {}
        }
        let dry_run = options.dry_run;
        let catalog = if dry_run {
            self.open_catalog_read_only()?
        } else {
            self.open_catalog_to_free_space()?
        };
        // Decided under the queue, after recovery settled what a dead process left.
        let _queue = if dry_run {
            None
        } else {
            let scope = options.set.as_deref().unwrap_or("*");
            Some(self.take_queue(&catalog, "prune", scope, wait.policy(), progress)?)
        };
        let mut by_set: BTreeMap<String, Vec<CopySummary>> = BTreeMap::new();
        for c in catalog.list(options.set.as_deref())? {
            by_set.entry(c.set.clone()).or_default().push(c);
        }
        let mut report = PruneReport::default();
        let mut chosen = Vec::new();
        for (set, copies) in by_set {
            let (policy, pre_restore) = config.retention(&set);
            if policy.is_none() && pre_restore.is_none() {
                report.sets_without_policy.push(set);
                continue;
            }
            let keep_all = RetentionPolicy::default();
            let policy = policy.unwrap_or(&keep_all);
            let decisions = retention::decide(&copies, policy, pre_restore, &chrono::Local);
            for (copy, decision) in copies.iter().zip(&decisions) {
                if !decision.keep {
                    chosen.push(copy.clone());
                }
            }
            report.sets.push(SetDecisions {
                set,
                policy: policy.to_string(),
                pre_restore_policy: pre_restore.map(ToString::to_string),
                decisions,
            });
        }
        let announce: &dyn Progress = if dry_run { &Silent } else { progress };
        report.deleted = delete_copies(&catalog, chosen, dry_run, announce)?;
        Ok(report)
    }
}

/// Deletes `chosen` (a dry run only reports them): each copy marked `deleting` before
/// its provider removes anything, so a failure halfway is retried by the next run.
fn delete_copies(
    catalog: &Catalog,
    chosen: Vec<CopySummary>,
    dry_run: bool,
    progress: &dyn Progress,
) -> anyhow::Result<Vec<Deleted>> {
    if let Some(copy) = chosen
        .iter()
        .find(|c| !dry_run && Catalog::location_is_ambiguous(c))
    {
        return Err(anyhow::anyhow!(
            "copy {} has the location {} recorded relative to the directory an older shadowcopy ran in; \
             nothing was deleted, as deleting it could remove files under the current directory. Remove \
             the copy's directory by hand",
            copy.id,
            copy.location.as_deref().unwrap_or_default()
        ));
    }
    let mut copies = Vec::new();
    for copy in chosen {
        if !dry_run {
            catalog.mark_deleting(copy.id)?;
            if let Some(location) = &copy.location {
                let provider = provider_for(catalog, &copy).map_err(|e| anyhow::anyhow!(e))?;
                provider
                    .delete(location)
                    .map_err(|e| anyhow::anyhow!("deleting copy {} at {location} failed: {e}; it stays listed as deleting and the next run retries", copy.id))?;
            }
            catalog.remove(copy.id)?;
        }
        progress.deleted(copy.id, &copy.set, copy.state, dry_run);
        copies.push(Deleted {
            id: copy.id,
            set: copy.set.clone(),
            deleted: !dry_run,
        });
    }
    if !dry_run && !copies.is_empty() && !catalog.restore_reserve() {
        progress.warning(&format!(
            "the file system holding the catalog {} is still nearly full; free space there",
            catalog.dir().display()
        ));
    }
    Ok(copies)
}

/// The longest `--older-than` accepted: older than anything a catalog can hold, and
/// still a number of milliseconds the age comparison can hold without wrapping.
const MAX_AGE: Duration = Duration::from_secs(1_000_000 * 365 * 24 * 3600);

/// `--older-than AGE`: a duration that fits the comparison with creation times (a
/// wrapped conversion once turned `300000000y` into "older than nothing" and deleted
/// every copy).
fn parse_age(s: &str) -> Result<HumanDuration, String> {
    let age = humantime::parse_duration(s)
        .map_err(|e| format!("{e}; write the age like 7d, 12h or 30m"))?;
    if age > MAX_AGE {
        return Err(out_of_range(s));
    }
    Ok(HumanDuration(age))
}

/// The same limit for an age that did not come through [`parse_age`] (JSON).
fn check_age(age: Duration) -> Result<(), UsageError> {
    if age > MAX_AGE {
        return Err(UsageError::new(out_of_range(
            &humantime::format_duration(age).to_string(),
        )));
    }
    Ok(())
}

fn out_of_range(age: &str) -> String {
    format!(
        "{age} is out of range: the longest age accepted is 1000000y (a million years); a shorter age that is still older than every copy selects the same copies"
    )
}

/// Whether recovery has run (we hold the queue): only then does `in-progress` surely
/// mean a live shadow set.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Settled {
    Yes,
    No,
}

/// The copies the options name. Copies in progress are never selected. `keep_last` N
/// keeps every copy down to the N-th newest verified one of its set, so a damaged or
/// unverified copy never pushes out the last good one; pre-restore copies are left to
/// `older_than`. With both, a copy goes only if both say so.
fn select(
    copies: &[CopySummary],
    options: &DeleteOptions,
    settled: Settled,
) -> anyhow::Result<Vec<CopySummary>> {
    if !options.ids.is_empty() {
        return options
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
    // Newest first, so `keep_last` keeps the newest usable copies.
    for c in copies.iter().rev() {
        if c.state == CopyState::InProgress {
            continue;
        }
        if let Some(n) = options.keep_last {
            // Everything down to the set's N-th newest verified copy stays.
            let verified = kept_per_set.entry(&c.set).or_default();
            if *verified < n {
                if c.state == CopyState::Usable && c.verify_state == VerifyState::Passed {
                    *verified += 1;
                }
                continue;
            }
            if c.origin == Origin::PreRestore && options.older_than.is_none() {
                continue;
            }
        }
        if let Some(age) = options.older_than {
            // `check_age` made sure the age fits in milliseconds since the epoch.
            let age_ms = i64::try_from(age.0.as_millis()).unwrap_or(i64::MAX);
            if now.saturating_sub(c.created_ms) < age_ms {
                continue;
            }
        }
        chosen.push(c.clone());
    }
    chosen.reverse();
    Ok(chosen)
}
