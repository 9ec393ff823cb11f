//! Safe restore: refuse over data in use, keep the current state as a `pre-restore` copy,
//! stage the copy's files (and symlinks) in private directories on the targets' file
//! systems, let each writer finish them (a SQLite checkpoint), then swap them in by
//! rename, as a journal of renames the next command finishes if this one is killed
//! (`crate::swap`). Until the swap, the live data is untouched; a failed swap puts back
//! what it moved. Directories are reached without following symlinks another user could
//! have planted (`crate::safe_fs`), and the copy's tree comes back as it was copied:
//! directories with their modes and owners (empty ones too) and symlinks as symlinks.
//! A copy holding a whole volume (a btrfs subvolume) whose provider can swap volumes is
//! restored by replacing the volume in one step instead (`Provider::swap_volume`), after
//! keeping the replaced one.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::coordinator::{chain, Coordinator, ShadowSetRequest};
use crate::error::Error;
use crate::events::EventSink;
use crate::journal::Journal;
use crate::model::{
    Component, ComponentRole, CopyId, FileEntry, Origin, Phase, TreeEntry, TreeKind,
};
use crate::provider::Provider;
use crate::safe_fs::{self, NewDir};
use crate::swap::Staging;
use crate::writer::{KeptCopiesUnknown, RestoreMode, RestorePlan, Writer};

#[cfg(test)]
mod tests;

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
    /// What the writers had to say once it was done (how to start it, for `--to`).
    pub notes: Vec<String>,
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
        let map = TargetMap::new(&request.files, &request.components, request.to.as_deref())?;
        let targets: Vec<(PathBuf, PathBuf)> = request
            .files
            .iter()
            .map(|f| (f.path.clone(), map.target(&f.path)))
            .collect();
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
        let result = result.and_then(|()| self.restore_data(&request, &map, &targets));
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
        map: &TargetMap,
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
            let to = map.to.as_deref().unwrap_or(Path::new("/"));
            // Inside the live data, a restore would write among the files a running
            // application owns (and the copy's tree would nest in what it copies).
            let resolved = crate::safe_fs::resolve_existing_prefix(to);
            if let Some(root) = request
                .components
                .iter()
                .map(|c| c.path.as_path())
                .find(|root| {
                    resolved.starts_with(root) && root.symlink_metadata().is_ok_and(|m| m.is_dir())
                })
            {
                return Err(Error::usage(format!(
                    "{} is inside {}, which the set's live data is in; restore --to needs a \
                     directory outside the set's data",
                    to.display(),
                    root.display()
                )));
            }
            if to.symlink_metadata().is_ok_and(|m| !m.is_dir()) {
                return Err(Error::usage(format!(
                    "{} exists and is not a directory; restore --to needs a directory (a new one, or one \
                     without the set's files)",
                    to.display()
                )));
            }
            for (_, target) in targets {
                if target.symlink_metadata().is_ok() {
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

        // Stage every file on its target's file system; the live data is not touched until
        // the swap.
        self.events.phase_started(Phase::Restore);
        let result = self.stage_keep_and_swap(request, map, targets, in_place, &mut steps);
        self.events
            .phase_finished(Phase::Restore, started.elapsed(), result.is_ok());
        let (plan, pre_restore) = result?;
        Ok(RestoreOutcome {
            targets: plan.install.iter().map(|(_, t)| t.clone()).collect(),
            pre_restore,
            notes: plan.notes,
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
            notes: Vec::new(),
            steps,
            took: started.elapsed(),
        })
    }

    /// Stages the copy's files and symlinks, lets the writers finish them, keeps what the
    /// swap will replace as a `pre-restore` copy, swaps, then gives the copy's directories
    /// their modes and owners (creating empty ones). Everything staged is removed on any
    /// error, and directories the staging created too.
    fn stage_keep_and_swap(
        &self,
        request: &RestoreRequest,
        map: &TargetMap,
        targets: &[(PathBuf, PathBuf)],
        in_place: bool,
        steps: &mut Vec<(String, Duration)>,
    ) -> Result<(RestorePlan, Option<CopyId>), Error> {
        let t = Instant::now();
        let roots: Vec<PathBuf> = request.components.iter().map(|c| c.path.clone()).collect();
        let tree: Vec<TreeEntry> = request
            .provider
            .tree(&request.location, &roots)
            .map_err(|source| Error::Restore {
                step: "listing the copy's directories and symlinks".into(),
                source,
            })?
            .into_iter()
            .map(|mut e| {
                e.path = map.target(&e.path);
                e
            })
            .collect();
        let dirs: BTreeMap<PathBuf, NewDir> = tree
            .iter()
            .filter(|e| e.kind == TreeKind::Dir)
            .map(|e| {
                (
                    e.path.clone(),
                    NewDir {
                        mode: e.mode,
                        owner: Some((e.uid, e.gid)),
                    },
                )
            })
            .collect();
        let new_dir = |p: &Path| dirs.get(p).copied().unwrap_or_default();
        let mut staging = Staging::begin(self.journal, request.copy_id)?;
        let mut staged: Vec<(PathBuf, PathBuf)> = Vec::new();
        // Progress in bytes of the manifest (a front end draws a bar on large restores).
        let sizes: BTreeMap<&Path, u64> = request
            .files
            .iter()
            .map(|f| (f.path.as_path(), f.size))
            .collect();
        let size_of = |original: &PathBuf| sizes.get(original.as_path()).copied().unwrap_or(0);
        let total: u64 = targets.iter().map(|(original, _)| size_of(original)).sum();
        let result = (|| -> Result<(RestorePlan, Option<CopyId>), Error> {
            let mut files = Vec::with_capacity(targets.len());
            for (original, target) in targets {
                let (s, pinned) = staging.staged_path(target, &new_dir)?;
                staged.push((target.clone(), s));
                files.push((original.clone(), pinned));
            }
            let done = AtomicU64::new(0);
            let events = &self.events;
            let staged_one = |i: usize| {
                let size = size_of(&files[i].0);
                events.bytes(done.fetch_add(size, Ordering::SeqCst) + size, total);
            };
            request
                .provider
                .restore_files(&request.location, &files, &staged_one)
                .map_err(|(i, source)| Error::Restore {
                    step: format!("staging the copy's file {}", files[i].0.display()),
                    source,
                })?;
            let mut links = Vec::new();
            for e in &tree {
                let TreeKind::Symlink { target: link } = &e.kind else {
                    continue;
                };
                if std::fs::read_link(&e.path).is_ok_and(|now| &now == link) {
                    continue;
                }
                let s = staging.stage_symlink(&e.path, link, Some((e.uid, e.gid)), &new_dir)?;
                links.push((s, e.path.clone()));
            }
            steps.push(("stage the copy's files".to_string(), t.elapsed()));
            let t = Instant::now();
            let (mut plan, owners) = self.plan(request, targets, &staged)?;
            // What a writer put at a link's path wins over the copy's link (a cluster
            // restored elsewhere points at its own directories, not the live ones).
            let planned: BTreeSet<PathBuf> = plan.install.iter().map(|(_, t)| t.clone()).collect();
            for (s, target) in links {
                if planned.contains(&target) {
                    plan.discard.push(s);
                } else {
                    plan.install.push((s, target));
                }
            }
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
            let remove: Vec<PathBuf> = plan.remove.iter().chain(&plan.discard).cloned().collect();
            staging.swap(&plan.install, &remove, &*self.events)?;
            steps.push(("swap in by rename".to_string(), t.elapsed()));
            let t = Instant::now();
            staging.finish(&*self.events);
            steps.push(("remove what was replaced".to_string(), t.elapsed()));
            self.restore_directories(&tree, &new_dir);
            Ok((plan, pre_restore))
        })();
        if result.is_err() {
            staging.abandon(&*self.events);
        }
        result
    }

    /// After the swap: every directory of the copy's tree exists with its mode and owner
    /// (parents first). The restore has happened by then, so a failure is a warning.
    fn restore_directories(&self, tree: &[TreeEntry], new_dir: &dyn Fn(&Path) -> NewDir) {
        for e in tree.iter().filter(|e| e.kind == TreeKind::Dir) {
            let result = safe_fs::open_dir(&e.path, Some(new_dir))
                .map_err(|e| e.to_string())
                .and_then(|d| d.set_meta(new_dir(&e.path)).map_err(|e| e.to_string()));
            if let Err(why) = result {
                self.events.warning(&format!(
                    "the restore is in place, but the directory {} could not be given the copy's mode and owner: {why}",
                    e.path.display()
                ));
            }
        }
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
            // Files and directories are kept; a symlink is put back from the copy's tree.
            .filter(|p| {
                p.symlink_metadata()
                    .is_ok_and(|m| !m.file_type().is_symlink())
                    && seen.insert((*p).clone())
            })
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
                verify_base: None,
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
            plan.notes.extend(part.notes);
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

/// Original path → target path. In place the two are equal; with `to`, paths keep their
/// place relative to the deepest directory holding every component (a directory
/// component itself, a file component's directory), so the tree under `to` is the
/// set's tree.
struct TargetMap {
    root: PathBuf,
    to: Option<PathBuf>,
}

impl TargetMap {
    fn new(
        files: &[FileEntry],
        components: &[Component],
        to: Option<&Path>,
    ) -> Result<Self, Error> {
        if files.is_empty() {
            return Err(Error::usage("the copy holds no files; nothing to restore"));
        }
        let Some(to) = to else {
            return Ok(TargetMap {
                root: PathBuf::from("/"),
                to: None,
            });
        };
        // A component is a directory when the copy holds files below it.
        let holders: Vec<&Path> = components
            .iter()
            .map(|c| {
                let is_dir = files
                    .iter()
                    .any(|f| f.path != c.path && f.path.starts_with(&c.path));
                if is_dir {
                    c.path.as_path()
                } else {
                    c.path.parent().unwrap_or(Path::new("/"))
                }
            })
            .chain(
                files
                    .iter()
                    .map(|f| f.path.parent().unwrap_or(Path::new("/"))),
            )
            .collect();
        let mut root = holders[0].to_path_buf();
        for h in &holders {
            while !h.starts_with(&root) {
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
        Ok(TargetMap { root, to: Some(to) })
    }

    fn target(&self, original: &Path) -> PathBuf {
        match &self.to {
            None => original.to_path_buf(),
            Some(to) => match original.strip_prefix(&self.root) {
                Ok(rel) if rel.as_os_str().is_empty() => to.clone(),
                Ok(rel) => to.join(rel),
                Err(_) => to.join(original.strip_prefix("/").unwrap_or(original)),
            },
        }
    }
}
