//! `create`: one shadow set, start to end, for a set named in the config file or one
//! given by zero-config options (`--sqlite PATH`, `--postgres URL`, …).

use std::sync::Arc;
use std::time::Duration;

use serde::Serialize;
use shadowcopy_catalog::Catalog;
use shadowcopy_core::error::Transient;
use shadowcopy_core::verify::VerifySummary;
use shadowcopy_core::{
    Coordinator, CopyState, CreatedCopy, EventSink, KeptCopies, Origin, Provider, ShadowSetRequest,
};

use crate::copies::CatalogKeptCopies;
use crate::engine::{Engine, WaitOptions};
use crate::error::UsageError;
use crate::progress::Progress;
use crate::set::{CreateOptions, SetSpec};
use crate::verify::verify_base;

/// A copy made and recorded usable: what `create --json` prints.
#[derive(Clone, Debug, Serialize)]
pub struct CreateReport {
    pub id: i64,
    pub set: String,
    pub provider: String,
    pub location: String,
    #[serde(rename = "freeze_window_us", serialize_with = "crate::micros")]
    pub freeze_window: Duration,
    pub freeze_deadline_ms: u64,
    pub files: usize,
    pub bytes: u64,
    pub phases: Vec<PhaseTime>,
    pub verification: Option<VerifySummary>,
    /// What writers did after the verified copy (WAL expired from the archive).
    pub notes: Vec<String>,
    /// Problems that left the copy usable (a log truncation that failed).
    pub warnings: Vec<String>,
}

/// How long one phase (or restore step) took.
#[derive(Clone, Debug, Serialize)]
pub struct PhaseTime {
    pub phase: String,
    #[serde(rename = "took_us", serialize_with = "crate::micros")]
    pub took: Duration,
}

/// A set resolved and checked, with its provider chosen: everything `create` decides
/// before the catalog is touched.
pub struct PlannedSet {
    pub spec: SetSpec,
    pub provider: Arc<dyn Provider>,
    /// Named in the config file (not zero-config).
    configured: bool,
}

impl Engine {
    /// Resolves the set (once: each database server is discovered once), checks all
    /// that can be checked and chooses the provider. Writes nothing.
    pub fn plan(&self, options: &CreateOptions) -> anyhow::Result<PlannedSet> {
        let spec = SetSpec::for_create(&self.config, options)?;
        spec.validate()?;
        let provider_options = spec.provider_options(self.catalog_dir.join("copies"));
        let provider = spec.choose_provider(&provider_options)?;
        spec.check_frozen_file_systems(&self.catalog_dir, &provider_options)?;
        Ok(PlannedSet {
            spec,
            provider,
            configured: options.set.is_some(),
        })
    }

    /// [`Engine::plan`], then [`Engine::create_planned`].
    pub fn create(
        &self,
        options: &CreateOptions,
        wait: &WaitOptions,
        progress: Arc<dyn Progress>,
    ) -> anyhow::Result<CreateReport> {
        let planned = self.plan(options)?;
        self.create_planned(&planned, wait, progress)
    }

    /// Takes the queue and runs the coordinator for a planned set. On error nothing is
    /// left frozen and no partial copy is usable.
    pub fn create_planned(
        &self,
        planned: &PlannedSet,
        wait: &WaitOptions,
        progress: Arc<dyn Progress>,
    ) -> anyhow::Result<CreateReport> {
        let PlannedSet {
            spec,
            provider,
            configured,
        } = planned;
        let catalog = self.open_catalog()?;
        if !configured {
            refuse_renamed_zero_config(&catalog, spec)?;
        }
        let _queue = self.take_queue(&catalog, "create", &spec.name, wait.policy(), &*progress)?;
        let archive = self.archive_url(None, Some(&spec.name)).ok();
        let kept = || -> Box<dyn KeptCopies> {
            Box::new(CatalogKeptCopies {
                catalog_dir: self.catalog_dir.clone(),
                set: spec.name.clone(),
                archive: archive.clone(),
            })
        };
        let atomic = at_one_instant(spec, &**provider);
        let mut created = create_copy(&catalog, spec, provider.clone(), progress, kept)?;
        if !spec.verify && !atomic && spec.writers.iter().any(|w| w.kind() == "mariadb") {
            // The InnoDB check cannot see a page write issued just before the freeze and
            // landing during the copy; the verification would.
            created.warnings.push(format!(
                "copy {} of MariaDB was made file by file ({}) and not verified: a page \
                 InnoDB was writing as the copy began may be torn in it; verify it before \
                 relying on it (`shadowcopy verify {}`)",
                created.id,
                provider.kind(),
                created.id
            ));
        }
        Ok(CreateReport::new(spec, &**provider, created))
    }
}

impl CreateReport {
    fn new(spec: &SetSpec, provider: &dyn Provider, c: CreatedCopy) -> CreateReport {
        CreateReport {
            id: c.id,
            set: spec.name.clone(),
            provider: provider.kind().to_string(),
            location: c.location,
            freeze_window: c.freeze_window,
            freeze_deadline_ms: spec.freeze_deadline_ms,
            files: c.files.len(),
            bytes: c.files.iter().map(|f| f.size).sum(),
            phases: c
                .phases
                .iter()
                .map(|(p, d)| PhaseTime {
                    phase: p.to_string(),
                    took: *d,
                })
                .collect(),
            verification: c.verification,
            notes: c.notes,
            warnings: c.warnings,
        }
    }

    pub fn freeze_deadline(&self) -> Duration {
        Duration::from_millis(self.freeze_deadline_ms)
    }
}

/// How many times a set is run when it fails only because the application was busy at
/// the instant of the copy ([`Transient`]: InnoDB wrote pages during a file-by-file
/// copy). Each failed attempt is recorded as a failed copy, never usable.
const CREATE_ATTEMPTS: usize = 3;

/// Runs the coordinator for `spec` (the caller holds the queue), again after a
/// [`Transient`] failure, up to [`CREATE_ATTEMPTS`] times in all. One btrfs snapshot, or
/// a copy of frozen file systems, holds every file at one instant: MariaDB then needs no
/// check of InnoDB's background writes.
fn create_copy(
    catalog: &Catalog,
    spec: &SetSpec,
    provider: Arc<dyn Provider>,
    events: Arc<dyn EventSink>,
    kept_copies: impl Fn() -> Box<dyn KeptCopies>,
) -> anyhow::Result<CreatedCopy> {
    let spec_json = spec.to_json()?;
    let run_spec = spec.with_atomic_snapshot(at_one_instant(spec, &*provider));
    let mut refused = Vec::new();
    loop {
        let attempt = refused.len() + 1;
        let result = Coordinator::new(catalog, events.clone()).create(ShadowSetRequest {
            set_name: spec.name.clone(),
            spec_json: spec_json.clone(),
            origin: Origin::Create,
            writers: run_spec.build_writers(),
            unmanaged_components: spec.unmanaged_components(),
            provider: provider.clone(),
            freeze_deadline: spec.freeze_deadline(),
            verify: spec.verify,
            verify_base: match spec.verify && !spec.full_verify_now {
                true => verify_base(catalog, &spec.name, None, spec.full_verify_every()),
                false => None,
            },
            kept_copies: kept_copies(),
        });
        match result {
            Ok(mut created) => {
                created.notes.extend(refused);
                return Ok(created);
            }
            Err(e) if attempt < CREATE_ATTEMPTS && Transient::in_chain(&e) => {
                let line = format!(
                    "attempt {attempt} of {CREATE_ATTEMPTS} was discarded and the set run again: {}",
                    shadowcopy_core::error::error_chain(&e)
                );
                events.warning(&line);
                refused.push(line);
            }
            Err(e) if Transient::in_chain(&e) => {
                return Err(anyhow::Error::from(e).context(format!(
                    "each of {CREATE_ATTEMPTS} attempts was discarded as busy; try again later"
                )))
            }
            Err(e) => return Err(e.into()),
        }
    }
}

/// Whether one commit holds every file of the set at one instant: a snapshot of one
/// volume, or a copy of frozen file systems.
fn at_one_instant(spec: &SetSpec, provider: &dyn Provider) -> bool {
    provider.capabilities().atomic_snapshot || spec.freezes_file_systems()
}

/// A zero-config set is named after its file; a second database (or directory) with the
/// same file name must not silently join the first one's history. A set whose copies
/// all failed has no history to join (a failed attempt must not block the next one).
fn refuse_renamed_zero_config(catalog: &Catalog, spec: &SetSpec) -> anyhow::Result<()> {
    let holds_copies = catalog
        .list(Some(&spec.name))?
        .iter()
        .any(|c| c.state != CopyState::Failed);
    if !holds_copies {
        return Ok(());
    }
    if let Some(old) = catalog.set_spec(&spec.name)? {
        if let Ok(old) = SetSpec::from_json(&old) {
            if old.identity() != spec.identity() {
                return Err(UsageError::new(format!(
                    "set `{}` already holds copies of {}; pass --name to give this database its own set",
                    spec.name,
                    old.data_paths().iter().map(|p| p.display().to_string()).collect::<Vec<_>>().join(", ")
                ))
                .into());
            }
        }
    }
    Ok(())
}
