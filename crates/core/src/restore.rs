//! Safe restore: refuse over data in use, keep the current state as a `pre-restore` copy,
//! stage the copy's files beside their targets, let each writer finish them (a SQLite
//! checkpoint), then swap them in by rename. Until the swap, the live data is untouched;
//! a failed swap puts back what it moved. A copy holding a whole volume (a btrfs
//! subvolume) whose provider can swap volumes is restored by replacing the volume in one
//! step instead (`Provider::swap_volume`), after keeping the replaced one.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::coordinator::{chain, Coordinator, ShadowSetRequest};
use crate::error::{BoxError, Error};
use crate::events::EventSink;
use crate::journal::Journal;
use crate::model::{Component, ComponentRole, CopyId, FileEntry, Origin, Phase};
use crate::provider::Provider;
use crate::writer::{staged_path, KeptCopiesUnknown, RestoreMode, RestorePlan, Writer};

/// A raw copy of data nobody holds open needs no freeze; its commit may take as long as
/// the data needs.
const PRE_RESTORE_DEADLINE: Duration = Duration::from_secs(24 * 3600);

pub struct RestoreRequest {
    pub copy_id: CopyId,
    pub set_name: String,
    pub spec_json: String,
    pub location: String,
    pub files: Vec<FileEntry>,
    pub components: Vec<Component>,
    pub writers: Vec<Box<dyn Writer>>,
    pub provider: Arc<dyn Provider>,
    /// Restore into this directory instead of in place.
    pub to: Option<PathBuf>,
    /// Restore even while the data is held open.
    pub force: bool,
    /// Keep the state being replaced as a `pre-restore` copy (in-place restores only).
    pub keep_current: bool,
    pub mode: RestoreMode,
}

#[derive(Clone, Debug)]
pub struct RestoreOutcome {
    pub targets: Vec<PathBuf>,
    pub pre_restore: Option<CopyId>,
    pub steps: Vec<(String, Duration)>,
    pub took: Duration,
}

pub struct Restorer<'a> {
    journal: &'a dyn Journal,
    events: Arc<dyn EventSink>,
}

impl<'a> Restorer<'a> {
    pub fn new(journal: &'a dyn Journal, events: Arc<dyn EventSink>) -> Self {
        Restorer { journal, events }
    }

    /// Runs the writers' `pre_restore` hooks, the restore, then `post_restore` for every
    /// writer whose `pre_restore` was called, whatever happened in between.
    pub fn restore(&self, request: RestoreRequest) -> Result<RestoreOutcome, Error> {
        if request.mode != RestoreMode::PointInTime
            && !request.writers.iter().any(|w| w.can_roll_forward())
        {
            return Err(Error::usage(format!(
                "{} restore replays an application's logs kept since the copy, and none of this set's writers keeps any ({}); use --mode point-in-time",
                request.mode.as_str(),
                request
                    .writers
                    .iter()
                    .map(|w| w.kind())
                    .collect::<Vec<_>>()
                    .join(", ")
            )));
        }
        for w in &request.writers {
            w.check_restore_mode(&request.mode)
                .map_err(|e| Error::usage(chain(&*e)))?;
        }
        let targets = map_targets(&request.files, request.to.as_deref())?;
        let live: Vec<PathBuf> = targets.iter().map(|(_, t)| t.clone()).collect();
        let mut called = 0;
        let mut result = Ok(());
        for w in &request.writers {
            called += 1;
            if let Err(source) = w.pre_restore(&live) {
                result = Err(Error::Writer {
                    writer: w.name(),
                    phase: Phase::Restore,
                    source,
                });
                break;
            }
        }
        let result = result.and_then(|()| self.restore_data(&request, &targets));
        let mut after = None;
        for w in &request.writers[..called] {
            if let Err(source) = w.post_restore(&live) {
                let message = format!("{} failed after the restore: {}", w.name(), chain(&*source));
                self.events.warning(&message);
                after.get_or_insert(Error::AfterRestore {
                    writer: w.name(),
                    source,
                });
            }
        }
        match (result, after) {
            (Ok(_), Some(e)) => Err(e),
            (result, _) => result,
        }
    }

    fn restore_data(
        &self,
        request: &RestoreRequest,
        targets: &[(PathBuf, PathBuf)],
    ) -> Result<RestoreOutcome, Error> {
        let started = Instant::now();
        let mut steps = Vec::new();
        let in_place = request.to.is_none();
        if in_place {
            if !request.force {
                let live: Vec<PathBuf> = targets.iter().map(|(_, t)| t.clone()).collect();
                for w in &request.writers {
                    w.check_restore_target(&live).map_err(|e| Error::InUse {
                        message: format!(
                            "{}. Stop the application first, or pass --force to restore anyway \
                             (it will see its files replaced underneath it)",
                            chain(&*e)
                        ),
                    })?;
                }
            }
        } else {
            for (_, target) in targets {
                if target.exists() {
                    return Err(Error::usage(format!(
                        "{} already exists; restore --to needs a directory without the set's files \
                         (choose another directory or remove it)",
                        target.display()
                    )));
                }
            }
        }

        // A writer that owns files may turn the staged copy into something else (fold a
        // log, leave out a lock file): only unowned data is swapped as a whole volume.
        let owned = request
            .components
            .iter()
            .any(|c| request.writers.iter().any(|w| w.name() == c.writer));
        if in_place && !owned {
            let roots: Vec<PathBuf> = request.components.iter().map(|c| c.path.clone()).collect();
            match request.provider.volume_swap(&request.location, &roots) {
                Some(Ok(volume)) => {
                    return self.swap_whole_volume(request, targets, &volume, started);
                }
                Some(Err(reason)) => self
                    .events
                    .note(&format!("restoring file by file: {reason}")),
                None => {}
            }
        }

        // Stage every file beside its target; the live data is not touched until the swap.
        self.events.phase_started(Phase::Restore);
        let result = self.stage_keep_and_swap(request, targets, in_place, &mut steps);
        self.events
            .phase_finished(Phase::Restore, started.elapsed(), result.is_ok());
        let (plan, pre_restore) = result?;
        Ok(RestoreOutcome {
            targets: plan.install.iter().map(|(_, t)| t.clone()).collect(),
            pre_restore,
            steps,
            took: started.elapsed(),
        })
    }

    /// Replaces the whole live volume by a clone of the copy in one step (keeping the
    /// volume it replaces as a `pre-restore` copy first): files created since the copy
    /// disappear with it, and the time does not depend on the data's size.
    fn swap_whole_volume(
        &self,
        request: &RestoreRequest,
        targets: &[(PathBuf, PathBuf)],
        volume: &Path,
        started: Instant,
    ) -> Result<RestoreOutcome, Error> {
        let mut steps = Vec::new();
        self.events.phase_started(Phase::Restore);
        let result = (|| -> Result<Option<CopyId>, Error> {
            let mut pre_restore = None;
            if request.keep_current && volume.exists() {
                let t = Instant::now();
                pre_restore = self.keep(request, vec![unmanaged_component(volume, None)])?;
                steps.push((
                    "keep current volume as pre-restore copy".to_string(),
                    t.elapsed(),
                ));
            }
            let t = Instant::now();
            let notes = request
                .provider
                .swap_volume(&request.location, volume)
                .map_err(|source| Error::Restore {
                    step: format!("swapping {} for a clone of the copy", volume.display()),
                    source,
                })?;
            steps.push((
                "swap the volume for a clone of the copy".to_string(),
                t.elapsed(),
            ));
            for n in notes {
                self.events.warning(&n);
            }
            Ok(pre_restore)
        })();
        self.events
            .phase_finished(Phase::Restore, started.elapsed(), result.is_ok());
        Ok(RestoreOutcome {
            targets: targets.iter().map(|(_, t)| t.clone()).collect(),
            pre_restore: result?,
            steps,
            took: started.elapsed(),
        })
    }

    /// Stages the copy's files, lets the writers finish them, keeps what the swap will
    /// replace as a `pre-restore` copy, then swaps. Staged files are removed on any error.
    fn stage_keep_and_swap(
        &self,
        request: &RestoreRequest,
        targets: &[(PathBuf, PathBuf)],
        in_place: bool,
        steps: &mut Vec<(String, Duration)>,
    ) -> Result<(RestorePlan, Option<CopyId>), Error> {
        let t = Instant::now();
        let mut staged: Vec<(PathBuf, PathBuf)> = Vec::new();
        let staging = (|| -> Result<(), BoxError> {
            for (original, target) in targets {
                if let Some(dir) = target.parent() {
                    std::fs::create_dir_all(dir)?;
                }
                let s = staged_path(target);
                remove_staged_leftovers(&s);
                staged.push((target.clone(), s.clone()));
                request
                    .provider
                    .restore_file(&request.location, original, &s)?;
            }
            Ok(())
        })();
        let result = staging
            .map_err(|source| Error::Restore {
                step: "staging the copy's files".into(),
                source,
            })
            .and_then(|()| {
                steps.push(("stage files beside their targets".to_string(), t.elapsed()));
                let t = Instant::now();
                let (plan, owners) = self.plan(request, targets, &staged)?;
                steps.push(("writers finish the staged files".to_string(), t.elapsed()));
                let mut pre_restore = None;
                if in_place && request.keep_current {
                    let t = Instant::now();
                    pre_restore = self.keep_current(request, &plan, &owners)?;
                    steps.push((
                        "keep current state as pre-restore copy".to_string(),
                        t.elapsed(),
                    ));
                }
                let t = Instant::now();
                swap(&plan, &*self.events)?;
                steps.push(("swap in by rename".to_string(), t.elapsed()));
                Ok((plan, pre_restore))
            });
        if result.is_err() {
            for (_, s) in &staged {
                remove_staged_leftovers(s);
            }
        }
        result
    }

    /// A raw copy of every live file the swap will replace or remove (nobody holds them
    /// open, or --force was given), so that restoring it undoes this restore exactly.
    /// Each file is recorded under the writer whose plan touches it, so that restoring the
    /// pre-restore copy hands it to that writer again (a hot journal gets rolled back).
    fn keep_current(
        &self,
        request: &RestoreRequest,
        plan: &RestorePlan,
        owners: &Owners,
    ) -> Result<Option<CopyId>, Error> {
        let mut seen = BTreeSet::new();
        let components: Vec<Component> = plan
            .install
            .iter()
            .map(|(_, target)| target)
            .chain(&plan.remove)
            .filter(|p| p.exists() && seen.insert((*p).clone()))
            .map(|p| unmanaged_component(p, owners.get(p).cloned()))
            .collect();
        self.keep(request, components)
    }

    /// Copies `components` (live data nobody holds open) as a `pre-restore` copy.
    fn keep(
        &self,
        request: &RestoreRequest,
        components: Vec<Component>,
    ) -> Result<Option<CopyId>, Error> {
        if components.is_empty() {
            return Ok(None);
        }
        if request.force {
            self.events.warning(
                "--force: the data may be in use, so the pre-restore copy is only crash-consistent",
            );
        }
        let created = Coordinator::new(self.journal, self.events.clone())
            .create(ShadowSetRequest {
                set_name: request.set_name.clone(),
                spec_json: request.spec_json.clone(),
                origin: Origin::PreRestore,
                writers: Vec::new(),
                unmanaged_components: components,
                provider: request.provider.clone(),
                freeze_deadline: PRE_RESTORE_DEADLINE,
                verify: false,
                kept_copies: Box::new(KeptCopiesUnknown),
            })
            .map_err(|e| Error::Restore {
                step: "keeping the current state as a pre-restore copy (pass --discard-current to skip it)".into(),
                source: Box::new(e),
            })?;
        Ok(Some(created.id))
    }

    /// Hands each writer the staged files of its components; unclaimed files install as
    /// they are.
    fn plan(
        &self,
        request: &RestoreRequest,
        targets: &[(PathBuf, PathBuf)],
        staged: &[(PathBuf, PathBuf)],
    ) -> Result<(RestorePlan, Owners), Error> {
        let mut plan = RestorePlan::default();
        let mut owners = Owners::new();
        let mut claimed = BTreeSet::new();
        for w in &request.writers {
            let name = w.name();
            let roots: Vec<&Path> = request
                .components
                .iter()
                .filter(|c| c.writer == name)
                .map(|c| c.path.as_path())
                .collect();
            let mine: Vec<(PathBuf, PathBuf)> = targets
                .iter()
                .zip(staged)
                .filter(|((original, _), _)| roots.iter().any(|r| original.starts_with(r)))
                .map(|(_, pair)| pair.clone())
                .collect();
            if mine.is_empty() {
                continue;
            }
            claimed.extend(mine.iter().map(|(t, _)| t.clone()));
            let part = w
                .finish_restore(&mine, &request.mode)
                .map_err(|source| Error::Restore {
                    step: format!("{} finished the staged files", w.name()),
                    source,
                })?;
            for path in part.install.iter().map(|(_, t)| t).chain(&part.remove) {
                owners.insert(path.clone(), name.clone());
            }
            plan.install.extend(part.install);
            plan.remove.extend(part.remove);
            plan.discard.extend(part.discard);
        }
        for (target, s) in staged {
            if !claimed.contains(target) {
                plan.install.push((s.clone(), target.clone()));
            }
        }
        Ok((plan, owners))
    }
}

/// A live path kept by a pre-restore copy, under the writer that owns it (if any).
fn unmanaged_component(path: &Path, writer: Option<String>) -> Component {
    Component {
        writer: writer.unwrap_or_else(|| "pre-restore".into()),
        name: path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default(),
        role: ComponentRole::Data,
        path: path.to_path_buf(),
        required: false,
        pinned: false,
    }
}

/// Which writer's restore plan names a file (target or removed path).
type Owners = std::collections::BTreeMap<PathBuf, String>;

/// Original path → target path. In place the two are equal; with `to`, files keep their
/// paths relative to the deepest directory that holds them all.
fn map_targets(files: &[FileEntry], to: Option<&Path>) -> Result<Vec<(PathBuf, PathBuf)>, Error> {
    if files.is_empty() {
        return Err(Error::usage("the copy holds no files; nothing to restore"));
    }
    let Some(to) = to else {
        return Ok(files
            .iter()
            .map(|f| (f.path.clone(), f.path.clone()))
            .collect());
    };
    let mut root = files[0]
        .path
        .parent()
        .unwrap_or(Path::new("/"))
        .to_path_buf();
    for f in files {
        while !f.path.starts_with(&root) {
            if !root.pop() {
                break;
            }
        }
    }
    let to = if to.is_absolute() {
        to.to_path_buf()
    } else {
        std::env::current_dir()
            .map_err(|e| Error::usage(format!("cannot resolve {}: {e}", to.display())))?
            .join(to)
    };
    Ok(files
        .iter()
        .map(|f| {
            let rel = f.path.strip_prefix(&root).unwrap_or(&f.path);
            (f.path.clone(), to.join(rel))
        })
        .collect())
}

/// Removes a staged file and anything a writer derived from it (`<staged>-wal`, …),
/// from this restore or an interrupted earlier one.
fn remove_staged_leftovers(staged: &Path) {
    let (Some(dir), Some(name)) = (staged.parent(), staged.file_name()) else {
        return;
    };
    let name = name.to_string_lossy();
    if let Ok(entries) = std::fs::read_dir(dir) {
        for e in entries.flatten() {
            if e.file_name().to_string_lossy().starts_with(name.as_ref()) {
                let _ = std::fs::remove_file(e.path());
            }
        }
    }
}

/// Why a swap did not complete.
#[derive(Debug, thiserror::Error)]
enum SwapError {
    #[error("renaming {} failed", .path.display())]
    Rename {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("renaming {} failed, and putting back what was moved aside failed too: {}", .path.display(), .stranded.join("; "))]
    UndoFailed {
        path: PathBuf,
        stranded: Vec<String>,
        #[source]
        source: std::io::Error,
    },
}

/// Moves the files to remove and the current targets aside, renames staged files onto
/// their targets, then syncs the directories and deletes what was moved aside. A failed
/// rename undoes the renames done so far (and says which files it could not put back).
/// After the last rename the restore has happened: a failed directory fsync is a warning.
fn swap(plan: &RestorePlan, events: &dyn EventSink) -> Result<(), Error> {
    let mut stashed: Vec<(PathBuf, PathBuf)> = Vec::new();
    let mut installed: Vec<PathBuf> = Vec::new();
    let stash = |path: &Path, stashed: &mut Vec<(PathBuf, PathBuf)>| -> std::io::Result<()> {
        if path.symlink_metadata().is_ok() {
            let mut name = path.file_name().unwrap_or_default().to_os_string();
            name.push(".shadowcopy-replaced");
            let aside = path.with_file_name(name);
            std::fs::rename(path, &aside)?;
            stashed.push((path.to_path_buf(), aside));
        }
        Ok(())
    };
    let result = (|| -> Result<(), (PathBuf, std::io::Error)> {
        for r in plan.remove.iter().chain(&plan.discard) {
            stash(r, &mut stashed).map_err(|e| (r.clone(), e))?;
        }
        for (staged, target) in &plan.install {
            stash(target, &mut stashed).map_err(|e| (target.clone(), e))?;
            std::fs::rename(staged, target).map_err(|e| (staged.clone(), e))?;
            installed.push(target.clone());
        }
        Ok(())
    })();
    if let Err((path, source)) = result {
        let mut stranded = Vec::new();
        for t in installed.iter().rev() {
            if let Err(e) = std::fs::remove_file(t) {
                stranded.push(format!("{} ({e})", t.display()));
            }
        }
        for (orig, aside) in stashed.iter().rev() {
            if let Err(e) = std::fs::rename(aside, orig) {
                stranded.push(format!(
                    "{} is at {} ({e})",
                    orig.display(),
                    aside.display()
                ));
            }
        }
        let source: BoxError = if stranded.is_empty() {
            Box::new(SwapError::Rename { path, source })
        } else {
            Box::new(SwapError::UndoFailed {
                path,
                stranded,
                source,
            })
        };
        return Err(Error::Restore {
            step: "swapping the restored files in".into(),
            source,
        });
    }
    let dirs: BTreeSet<&Path> = plan
        .install
        .iter()
        .filter_map(|(_, t)| t.parent())
        .collect();
    for d in dirs {
        if let Err(e) = std::fs::File::open(d).and_then(|f| f.sync_all()) {
            events.warning(&format!(
                "the restore is in place, but syncing {} failed ({e}); a power loss now could undo it",
                d.display()
            ));
        }
    }
    for (_, aside) in stashed {
        let _ = std::fs::remove_file(aside);
    }
    Ok(())
}
