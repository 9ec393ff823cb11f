//! `restore`: a copy put back in place (keeping what it replaces as a `pre-restore`
//! copy) or into another directory, point-in-time or rolled forward.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use shadowcopy_core::{RestoreMode, RestoreRequest, Restorer, VerifyState};

use crate::copies::UsableCopy;
use crate::create::PhaseTime;
use crate::engine::{Engine, WaitOptions};
use crate::error::UsageError;
use crate::progress::Progress;

/// Which restore: the flags of `restore` and an API request's JSON alike.
#[derive(clap::Args, Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RestoreOptions {
    /// The copy's id
    pub id: i64,
    /// Restore into this directory instead of in place
    #[arg(long, value_name = "DIR")]
    #[serde(default)]
    pub to: Option<PathBuf>,
    /// Restore even while the data is held open, or from a copy that failed verification
    #[arg(long)]
    #[serde(default)]
    pub force: bool,
    /// Restore a copy that failed verification (and only that: data in use is still
    /// refused)
    #[arg(long)]
    #[serde(default)]
    pub accept_failed_verification: bool,
    /// Do not keep the state being replaced as a pre-restore copy
    #[arg(long)]
    #[serde(default)]
    pub discard_current: bool,
    /// point-in-time: the data exactly as in the copy. roll-forward: the copy, then the
    /// database's logs kept since (WAL archive, live WAL directory, MariaDB's binary
    /// logs) replayed to their end
    #[arg(long, value_name = "MODE", value_enum, default_value_t = Mode::PointInTime)]
    #[serde(default)]
    pub mode: Mode,
    /// With --mode roll-forward: stop replaying at this point (PostgreSQL: a time such as
    /// "2026-11-22 10:00:00+00", an LSN such as 0/3000060, or xid:NNN; MariaDB: a time
    /// such as "2026-11-22 10:00:00Z", a binlog position such as mariadb-bin.000042:1234,
    /// or a GTID position such as 0-1-100)
    #[arg(long, value_name = "TARGET", requires = "mode")]
    #[serde(default)]
    pub until: Option<String>,
}

/// `--mode`.
#[derive(
    clap::ValueEnum,
    Clone,
    Copy,
    Debug,
    Default,
    Serialize,
    Deserialize,
    PartialEq,
    Eq,
    utoipa::ToSchema,
)]
#[serde(rename_all = "kebab-case")]
pub enum Mode {
    #[default]
    PointInTime,
    RollForward,
}

/// A restored path: a JSON string, or for a name that is not UTF-8 a lossless object
/// (see `shadowcopy_core::model::JsonPath`).
#[derive(Clone, Debug, Serialize)]
pub struct Target(#[serde(with = "shadowcopy_core::pathjson")] pub PathBuf);

/// A restore that ended: what `restore --json` prints.
#[derive(Clone, Debug, Serialize)]
pub struct RestoreReport {
    pub id: i64,
    pub targets: Vec<Target>,
    /// The copy keeping the state the restore replaced.
    pub pre_restore: Option<i64>,
    #[serde(rename = "took_us", serialize_with = "crate::micros")]
    pub took: Duration,
    pub steps: Vec<PhaseTime>,
    /// What the writers had to say (for `--to`: how to start what was restored).
    pub notes: Vec<String>,
    /// What the restore did not stop for but you should know (the copy was never
    /// verified); also printed as warnings as the restore starts.
    pub warnings: Vec<String>,
    /// Restored into a directory (`--to`), not in place.
    #[serde(skip)]
    pub elsewhere: bool,
}

impl RestoreOptions {
    /// Copy `id` restored in place, point-in-time, the current state kept as a
    /// pre-restore copy: what `restore ID` does.
    pub fn new(id: i64) -> RestoreOptions {
        RestoreOptions {
            id,
            to: None,
            force: false,
            accept_failed_verification: false,
            discard_current: false,
            mode: Mode::PointInTime,
            until: None,
        }
    }

    /// The mode as the restorer takes it; `--until` without roll-forward is bad input.
    fn restore_mode(&self) -> Result<RestoreMode, UsageError> {
        match (self.mode, &self.until) {
            (Mode::RollForward, until) => Ok(RestoreMode::RollForward {
                until: until.clone(),
            }),
            (_, Some(_)) => Err(UsageError::new(
                "--until stops a roll-forward; use it with --mode roll-forward",
            )),
            _ => Ok(RestoreMode::PointInTime),
        }
    }

    /// A copy that failed verification is restored only with `force` or
    /// `accept_failed_verification`.
    fn check(&self, copy: &UsableCopy) -> Result<(), UsageError> {
        if copy.summary.verify_state == VerifyState::Failed
            && !self.force
            && !self.accept_failed_verification
        {
            return Err(UsageError::new(format!(
                "copy {} failed verification (`shadowcopy show {}` says why); pass --accept-failed-verification to restore it anyway",
                self.id, self.id
            )));
        }
        Ok(())
    }
}

impl Engine {
    /// Whether `options` would be refused before anything is written (the copy is not
    /// usable, failed verification without `force`, `until` without roll-forward): what
    /// the agent checks when a restore is submitted, before queueing it. The copy's set.
    pub fn check_restore(&self, options: &RestoreOptions) -> anyhow::Result<String> {
        let catalog = self.open_existing_catalog()?;
        let copy = UsableCopy::load(&catalog, options.id, "restored")?;
        options.check(&copy)?;
        options.restore_mode()?;
        Ok(copy.summary.set)
    }

    /// Restores a copy. Refused before anything is written when the copy is not usable,
    /// failed verification (without `force`) or an earlier restore is unfinished; on any
    /// failure the live data is as it was.
    pub fn restore(
        &self,
        options: &RestoreOptions,
        wait: &WaitOptions,
        progress: Arc<dyn Progress>,
    ) -> anyhow::Result<RestoreReport> {
        let id = options.id;
        let catalog = self.open_existing_catalog()?;
        // Checked before waiting for the queue (a bad id fails at once), and again under
        // it: a delete may have run while we waited.
        options.check(&UsableCopy::load(&catalog, id, "restored")?)?;
        let mode = options.restore_mode()?;
        let _queue = self.take_queue(
            &catalog,
            "restore",
            &format!("copy {id}"),
            wait.policy(),
            &*progress,
        )?;
        if let Some(earlier) = catalog.unfinished_restores()?.first() {
            anyhow::bail!(
                "an earlier restore of copy {earlier} was interrupted and could not be finished (the message \
                 above says why); fix that and run any shadowcopy command to finish it before restoring again"
            );
        }
        let copy = UsableCopy::load(&catalog, id, "restored")?;
        options.check(&copy)?;
        let mut warnings = Vec::new();
        if copy.summary.verify_state == VerifyState::NotVerified {
            let warning = format!(
                "copy {id} was never verified (made with --no-verify, or its verification is \
                 still to come): nothing has checked that its files are whole and that it \
                 opens; `shadowcopy verify {id}` checks it"
            );
            progress.warning(&warning);
            warnings.push(warning);
        }
        let outcome = Restorer::new(&catalog, progress).restore(RestoreRequest {
            copy_id: id,
            set_name: copy.summary.set.clone(),
            spec_json: copy.summary.spec_json.clone(),
            location: copy.location.clone(),
            files: catalog.manifest(id)?,
            components: catalog.components(id)?,
            writers: copy.spec.build_writers(),
            provider: copy.provider.clone(),
            to: options.to.clone(),
            force: options.force,
            keep_current: !options.discard_current,
            mode,
        })?;
        Ok(RestoreReport {
            id,
            targets: outcome.targets.into_iter().map(Target).collect(),
            pre_restore: outcome.pre_restore,
            took: outcome.took,
            steps: outcome
                .steps
                .into_iter()
                .map(|(phase, took)| PhaseTime { phase, took })
                .collect(),
            notes: outcome.notes,
            warnings,
            elsewhere: options.to.is_some(),
        })
    }
}
