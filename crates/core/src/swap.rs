//! Where a restore stages its files and how it swaps them in, so that the live data is
//! old or new at every instant that matters, even if the process is killed.
//!
//! - **Staging areas.** Staged files are written into private directories (mode 0700,
//!   unpredictable names, created exclusively) on the target's file system: in the
//!   deepest directory above the target that nobody else can change, or beside the
//!   target where there is none (see [`crate::safe_fs`]). Nobody else can plant a
//!   symlink where shadowcopy writes, and every target directory is reached by handle,
//!   never through a path a user could redirect.
//! - **The swap is a journal of renames.** Before the first rename, the ordered list of
//!   renames is recorded in the catalog ([`Journal::record_restore`]): each live file the
//!   restore replaces or removes is first moved into the staging area (`Aside`), then the
//!   staged file is renamed onto its target (`Install`). Every step can be repeated: an
//!   `Aside` runs only while its source exists and its destination does not, an
//!   `Install` only while its staged file exists. A restore killed at any rename is
//!   therefore finished by the next command ([`finish_interrupted`]), which replays the
//!   list and removes the staging areas; a restore that fails with an error undoes its
//!   renames in reverse before it returns.
//! - Cleaning up: staging areas are recorded before anything is written in them, so an
//!   interrupted staging leaves nothing behind that the next command does not remove.

use std::collections::{BTreeMap, BTreeSet};
use std::ffi::OsStr;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::error::{BoxError, Error};
use crate::events::EventSink;
use crate::journal::Journal;
use crate::model::CopyId;
use crate::safe_fs::{self, NewDir, SafeDir, SafeFsError};

/// The name every staging area starts with.
pub const AREA_PREFIX: &str = ".shadowcopy-restore-";

/// A test hook, in debug builds only: with `SHADOWCOPY_TEST_KILL_AT_SWAP_STEP=N` the
/// process kills itself with SIGKILL just before the N-th rename of a swap (1-based), so
/// tests can prove that a restore interrupted at every rename is finished by the next
/// command.
const KILL_AT_STEP_ENV: &str = "SHADOWCOPY_TEST_KILL_AT_SWAP_STEP";

/// What the catalog holds of a running restore (as JSON; paths through
/// [`crate::pathjson`], since Linux file names need not be UTF-8).
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct SwapRecord {
    pub copy_id: CopyId,
    /// The private staging directories, removed when the restore ends.
    #[serde(with = "crate::pathjson::vec")]
    pub areas: Vec<PathBuf>,
    /// The renames, in order; empty while the restore is still staging, and again once
    /// they ended (`cleanup_only`).
    pub ops: Vec<SwapOp>,
    /// The renames ended (done, or put back after an error): only the staging areas are
    /// left to remove.
    #[serde(default)]
    pub cleanup_only: bool,
}

/// One rename of a swap.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "kebab-case")]
pub enum SwapOp {
    /// A live file moved into the staging area (kept until the restore ends, so a failed
    /// swap can put it back).
    Aside {
        #[serde(with = "crate::pathjson")]
        from: PathBuf,
        #[serde(with = "crate::pathjson")]
        to: PathBuf,
    },
    /// A staged file renamed onto its target.
    Install {
        #[serde(with = "crate::pathjson")]
        from: PathBuf,
        #[serde(with = "crate::pathjson")]
        to: PathBuf,
    },
}

impl SwapOp {
    fn paths(&self) -> (&Path, &Path) {
        match self {
            SwapOp::Aside { from, to } | SwapOp::Install { from, to } => (from, to),
        }
    }
}

/// The staging of one target directory: the live directory and, in the staging area, a
/// directory for its staged files and one for what the swap moves aside.
struct Slot {
    live: SafeDir,
    staged: SafeDir,
    replaced: SafeDir,
    /// Names in the slot are numbers (a target's own name may be up to 255 bytes, with
    /// no room for a suffix).
    next_name: usize,
}

/// A restore's staging areas and its journal entry.
pub(crate) struct Staging<'a> {
    journal: &'a dyn Journal,
    journal_id: i64,
    record: SwapRecord,
    /// Staging area per staging base directory.
    areas: BTreeMap<PathBuf, SafeDir>,
    slots: BTreeMap<PathBuf, Slot>,
    /// Directories the staging created in the live tree, outermost first, removed again
    /// (when still empty) if the restore fails.
    created: Vec<PathBuf>,
    /// The journal entry is closed (the restore is over), or must stay open for the next
    /// command to finish the restore.
    ended: bool,
}

fn restore_err(step: impl Into<String>) -> impl FnOnce(BoxError) -> Error {
    let step = step.into();
    move |source| Error::Restore { step, source }
}

fn journal_err(e: crate::journal::JournalError) -> Error {
    Error::Journal {
        what: "restore's progress",
        source: e,
    }
}

impl<'a> Staging<'a> {
    /// Records the restore in the journal before anything is written.
    pub(crate) fn begin(journal: &'a dyn Journal, copy_id: CopyId) -> Result<Self, Error> {
        let record = SwapRecord {
            copy_id,
            ..SwapRecord::default()
        };
        let journal_id = journal
            .begin_restore(copy_id, &to_json(&record))
            .map_err(journal_err)?;
        Ok(Staging {
            journal,
            journal_id,
            record,
            areas: BTreeMap::new(),
            slots: BTreeMap::new(),
            created: Vec::new(),
            ended: false,
        })
    }

    fn save(&self) -> Result<(), Error> {
        self.journal
            .record_restore(self.journal_id, &to_json(&self.record))
            .map_err(journal_err)
    }

    /// The slot of the live directory `dir`, opened safely (and created, with the mode and
    /// owner `new_dir` gives, when `create`).
    fn slot(
        &mut self,
        dir: &Path,
        new_dir: Option<&dyn Fn(&Path) -> NewDir>,
    ) -> Result<&mut Slot, Error> {
        if !self.slots.contains_key(dir) {
            let live = safe_fs::open_dir(dir, new_dir)
                .map_err(|e| restore_err(format!("opening {}", dir.display()))(Box::new(e)))?;
            self.created.extend(live.created().iter().cloned());
            let base = live.staging_base().to_path_buf();
            if !self.areas.contains_key(&base) {
                // Recorded before it is created, so that a kill right after never leaves
                // an area nobody knows of; a name that turns out taken is forgotten again
                // (it is someone else's, never to be removed).
                let mut area = None;
                for _ in 0..16 {
                    let name = safe_fs::random_name(AREA_PREFIX);
                    self.record.areas.push(live.private_dir_path(&name));
                    self.save()?;
                    match live.private_dir_named(&name) {
                        Ok(Some(made)) => {
                            area = Some(made);
                            break;
                        }
                        Ok(None) => {
                            self.record.areas.pop();
                            self.save()?;
                        }
                        Err(e) => {
                            self.record.areas.pop();
                            self.save()?;
                            return Err(restore_err("creating a private staging directory")(
                                Box::new(e),
                            ));
                        }
                    }
                }
                let area = area.ok_or_else(|| {
                    restore_err("creating a private staging directory")(
                        "no free name after 16 tries".into(),
                    )
                })?;
                self.areas.insert(base.clone(), area);
            }
            let area = &self.areas[&base];
            let n = self.slots.len();
            let mk = |name: String| {
                area.create_child_dir(OsStr::new(&name))
                    .map_err(|e| restore_err("creating a private staging directory")(Box::new(e)))
            };
            let staged = mk(format!("{n}"))?;
            let replaced = mk(format!("{n}-replaced"))?;
            self.slots.insert(
                dir.to_path_buf(),
                Slot {
                    live,
                    staged,
                    replaced,
                    next_name: 0,
                },
            );
        }
        Ok(self.slots.get_mut(dir).expect("the slot was just made"))
    }

    /// Where `target`'s staged file goes: the path writers get (in a directory only
    /// shadowcopy can change, as long as a staging base nobody else can change exists),
    /// and the same file's pinned path (`SafeDir::pinned_path`) that providers write,
    /// which no rename of a directory on the way can redirect. The target's live
    /// directory is created (with `new_dir`'s modes) when missing.
    pub(crate) fn staged_path(
        &mut self,
        target: &Path,
        new_dir: &dyn Fn(&Path) -> NewDir,
    ) -> Result<(PathBuf, PathBuf), Error> {
        let (dir, _) = split(target)?;
        let slot = self.slot(dir, Some(new_dir))?;
        let name = format!("{}", slot.next_name);
        slot.next_name += 1;
        Ok((
            slot.staged.path().join(&name),
            slot.staged.pinned_path().join(&name),
        ))
    }

    /// Stages a symlink to `link` for `target`; returns the staged path.
    pub(crate) fn stage_symlink(
        &mut self,
        target: &Path,
        link: &Path,
        owner: Option<(u32, u32)>,
        new_dir: &dyn Fn(&Path) -> NewDir,
    ) -> Result<PathBuf, Error> {
        let (staged, _) = self.staged_path(target, new_dir)?;
        let (dir, _) = split(target)?;
        let slot = &self.slots[dir];
        let name = staged.file_name().expect("a staged path has a file name");
        slot.staged.symlink(link, name, owner).map_err(|e| {
            restore_err(format!("staging the symlink {}", target.display()))(Box::new(e))
        })?;
        Ok(staged)
    }

    /// The swap: moves every existing live path of `remove` and every existing target of
    /// `install` aside, and installs each staged file, recording the list first; then
    /// [`Staging::finish`] is due. On an error the renames done so far are undone (in
    /// reverse) and the staging removed.
    pub(crate) fn swap(
        &mut self,
        install: &[(PathBuf, PathBuf)],
        remove: &[PathBuf],
        events: &dyn EventSink,
    ) -> Result<(), Error> {
        let mut ops = Vec::new();
        let aside = |this: &mut Self, path: &Path, ops: &mut Vec<SwapOp>| -> Result<(), Error> {
            let (dir, name) = split(path)?;
            let slot = this.slot(dir, None)?;
            let exists = slot
                .live
                .lstat(name)
                .map_err(|e| restore_err(format!("inspecting {}", path.display()))(Box::new(e)))?;
            if exists.is_some() {
                let to = slot.replaced.path().join(format!("{}", ops.len()));
                ops.push(SwapOp::Aside {
                    from: path.to_path_buf(),
                    to,
                });
            }
            Ok(())
        };
        for r in remove {
            // A writer that lists every entry of a directory it empties sees the staging
            // area, when the area had to go into that very directory (nothing above it on
            // its file system is closed to other users): the area is ours, not the
            // application's, and goes when the restore ends.
            if self.record.areas.iter().any(|a| r.starts_with(a)) {
                continue;
            }
            aside(self, r, &mut ops)?;
        }
        for (staged, target) in install {
            aside(self, target, &mut ops)?;
            ops.push(SwapOp::Install {
                from: staged.clone(),
                to: target.clone(),
            });
        }
        self.record.ops = ops.clone();
        self.save()?;
        let mut dirs = DirCache::default();
        let kill_at: Option<usize> = if cfg!(debug_assertions) {
            std::env::var(KILL_AT_STEP_ENV)
                .ok()
                .and_then(|v| v.parse().ok())
        } else {
            None
        };
        let mut done = 0;
        let mut failure = None;
        for (i, op) in ops.iter().enumerate() {
            if kill_at == Some(i + 1) {
                let _ = rustix::process::kill_process(
                    rustix::process::getpid(),
                    rustix::process::Signal::KILL,
                );
            }
            let (from, to) = op.paths();
            if let Err(e) = dirs.rename(from, to) {
                failure = Some((from.to_path_buf(), e));
                break;
            }
            done += 1;
        }
        if let Some((path, source)) = failure {
            // Undone in reverse, stopping at the first undo that fails: what is done is
            // then still a prefix of the recorded renames, which the next command finishes
            // by replaying them forward. Undoing past a failure could put an old file over
            // a new one that the replay then no longer has.
            let mut stranded = None;
            for op in ops[..done].iter().rev() {
                let (from, to) = op.paths();
                if let Err(e) = dirs.rename(to, from) {
                    stranded = Some(format!("{} is at {} ({e})", from.display(), to.display()));
                    break;
                }
            }
            let Some(stranded) = stranded else {
                self.abandon(events);
                return Err(Error::Restore {
                    step: format!(
                        "swapping the restored files in (renaming {})",
                        path.display()
                    ),
                    source,
                });
            };
            // Left recorded: the next command finishes the restore instead.
            self.ended = true;
            return Err(Error::Restore {
                step: "swapping the restored files in".into(),
                source: format!(
                    "renaming {} failed ({source}), and putting back what was moved aside failed too: {}; \
                     the next shadowcopy command finishes the restore",
                    path.display(),
                    stranded
                )
                .into(),
            });
        }
        dirs.sync_installed(&ops, events);
        Ok(())
    }

    /// Removes the staging areas, with them what the swap moved aside, and ends the
    /// journal entry (the restore is complete, or failed with everything put back). After
    /// a swap the caller calls it, so that the removal is timed as its own step: freeing a
    /// fragmented file's blocks costs per extent.
    pub(crate) fn finish(&mut self, events: &dyn EventSink) {
        self.ended = true;
        // First the record says there is nothing left to rename, so that a kill while the
        // areas are being removed never has the next command replay renames against a
        // half-removed area (it only removes the areas).
        self.record.ops.clear();
        self.record.cleanup_only = true;
        if let Err(e) = self.save() {
            events.warning(&format!(
                "the catalog could not record the end of the restore's renames ({e}); its staging \
                 directories are left for the next command: {}",
                self.record
                    .areas
                    .iter()
                    .map(|a| a.display().to_string())
                    .collect::<Vec<_>>()
                    .join(", ")
            ));
            self.areas.clear();
            self.slots.clear();
            return;
        }
        for area in &self.record.areas {
            if let Err(e) = std::fs::remove_dir_all(area) {
                events.warning(&format!(
                    "the restore is done, but its staging directory {} could not be removed ({e}); remove it by hand",
                    area.display()
                ));
            }
        }
        self.areas.clear();
        self.slots.clear();
        if let Err(e) = self.journal.end_restore(self.journal_id) {
            events.warning(&format!(
                "the catalog could not record the end of the restore ({e}); the next command finds nothing left to rename and closes it"
            ));
        }
    }

    /// The restore failed before or during the swap, with the live data as it was:
    /// removes the staging areas and the directories the staging created.
    pub(crate) fn abandon(&mut self, events: &dyn EventSink) {
        if self.ended {
            return;
        }
        self.finish(events);
        for d in self.created.iter().rev() {
            let _ = std::fs::remove_dir(d);
        }
    }
}

fn split(path: &Path) -> Result<(&Path, &OsStr), Error> {
    match (path.parent(), path.file_name()) {
        (Some(dir), Some(name)) => Ok((dir, name)),
        _ => Err(Error::Restore {
            step: format!("staging {}", path.display()),
            source: "not a file path".into(),
        }),
    }
}

fn to_json(record: &SwapRecord) -> String {
    serde_json::to_string(record).expect("a swap record always serializes")
}

/// Parent directories opened safely, by path.
#[derive(Default)]
struct DirCache {
    dirs: BTreeMap<PathBuf, SafeDir>,
}

impl DirCache {
    fn open(&mut self, dir: &Path) -> Result<&SafeDir, SafeFsError> {
        if !self.dirs.contains_key(dir) {
            let d = safe_fs::open_dir(dir, None)?;
            self.dirs.insert(dir.to_path_buf(), d);
        }
        Ok(&self.dirs[dir])
    }

    fn rename(&mut self, from: &Path, to: &Path) -> Result<(), BoxError> {
        let (fd, fname) = split(from).map_err(Box::new)?;
        let (td, tname) = split(to).map_err(Box::new)?;
        let (fname, tname) = (fname.to_os_string(), tname.to_os_string());
        self.open(fd)?;
        self.open(td)?;
        self.dirs[fd].rename(&fname, &self.dirs[td], &tname)?;
        Ok(())
    }

    fn exists(&mut self, path: &Path) -> Result<bool, BoxError> {
        let (d, name) = split(path).map_err(Box::new)?;
        let name = name.to_os_string();
        match self.open(d) {
            Ok(dir) => Ok(dir.lstat(&name)?.is_some()),
            Err(SafeFsError::Io(crate::error::IoError { source, .. }))
                if source.kind() == std::io::ErrorKind::NotFound =>
            {
                Ok(false)
            }
            Err(e) => Err(Box::new(e)),
        }
    }

    /// Makes the installs of `ops` durable: syncs each directory a file was installed
    /// into, once (a restore of a thousand files into one directory would otherwise force
    /// the file system's log a thousand times).
    fn sync_installed(&mut self, ops: &[SwapOp], events: &dyn EventSink) {
        let dirs: BTreeSet<&Path> = ops
            .iter()
            .filter_map(|op| match op {
                SwapOp::Install { to, .. } => to.parent(),
                SwapOp::Aside { .. } => None,
            })
            .collect();
        for dir in dirs {
            self.sync_dir(dir, events);
        }
    }

    fn sync_dir(&mut self, dir: &Path, events: &dyn EventSink) {
        let result = self
            .open(dir)
            .map_err(|e| std::io::Error::other(e.to_string()))
            .and_then(|d| d.sync());
        if let Err(e) = result {
            events.warning(&format!(
                "the restore is in place, but syncing {} failed ({e}); a power loss now could undo it",
                dir.display()
            ));
        }
    }
}

/// Finishes a restore that was interrupted (the process killed): replays its renames
/// (each one only if it has not happened yet) and removes its staging areas. Returns what
/// it did, for the user. A restore interrupted while still staging had touched no live
/// file: only its staging areas are removed.
///
/// `renames_done` is called after the renames and before the areas are removed: it must
/// durably record `record` with no renames left, so that a kill during the removal is
/// followed by a removal only, never by a second replay.
pub fn finish_interrupted(
    record: &SwapRecord,
    events: &dyn EventSink,
    renames_done: &dyn Fn(&SwapRecord) -> Result<(), BoxError>,
) -> Result<String, Error> {
    let mut dirs = DirCache::default();
    let step = |what: &str, e: BoxError| Error::Restore {
        step: format!(
            "finishing the interrupted restore of copy {} ({what})",
            record.copy_id
        ),
        source: e,
    };
    // The areas exist until the record says no rename is left (`Staging::finish`): one
    // that is gone was removed by someone else, with the staged files in it. Nothing can
    // be finished then; replaying would only move live files into a missing directory.
    if !record.ops.is_empty() {
        if let Some(gone) = record.areas.iter().find(|a| a.symlink_metadata().is_err()) {
            return Ok(format!(
                "a restore of copy {} was interrupted during its swap, and its staging directory {} \
                 has been removed since, with the files it was to put in place: it cannot be \
                 finished. Check {} by hand (restore the copy again, or the pre-restore copy)",
                record.copy_id,
                gone.display(),
                record
                    .ops
                    .iter()
                    .filter_map(|op| match op {
                        SwapOp::Install { to, .. } => Some(to.display().to_string()),
                        SwapOp::Aside { .. } => None,
                    })
                    .collect::<Vec<_>>()
                    .join(", ")
            ));
        }
    }
    let mut renamed = 0;
    for op in &record.ops {
        let due = match op {
            SwapOp::Aside { from, to } => {
                dirs.exists(from).map_err(|e| step("inspecting", e))?
                    && !dirs.exists(to).map_err(|e| step("inspecting", e))?
            }
            SwapOp::Install { from, .. } => dirs.exists(from).map_err(|e| step("inspecting", e))?,
        };
        if due {
            let (from, to) = op.paths();
            dirs.rename(from, to)
                .map_err(|e| step(&format!("renaming {}", from.display()), e))?;
            renamed += 1;
        }
    }
    dirs.sync_installed(&record.ops, events);
    if !record.ops.is_empty() {
        let done = SwapRecord {
            ops: Vec::new(),
            cleanup_only: true,
            ..record.clone()
        };
        renames_done(&done).map_err(|e| step("recording that the renames are done", e))?;
    }
    for area in &record.areas {
        match std::fs::remove_dir_all(area) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(step(&format!("removing {}", area.display()), Box::new(e))),
        }
    }
    Ok(if record.cleanup_only {
        format!(
            "a restore of copy {} was interrupted while removing its staging files, after its renames had ended; they were removed",
            record.copy_id
        )
    } else if record.ops.is_empty() {
        format!(
            "a restore of copy {} was interrupted while staging, before it changed any live file; its staging files were removed",
            record.copy_id
        )
    } else {
        format!(
            "a restore of copy {} was interrupted during its swap; it has been finished ({renamed} of {} renames were still to do), so the live data is the restored copy",
            record.copy_id,
            record.ops.len()
        )
    })
}

#[cfg(test)]
mod tests {
    use std::os::unix::ffi::OsStrExt;

    use super::*;

    #[test]
    fn records_keep_every_path_exactly() {
        let odd = PathBuf::from(std::ffi::OsStr::from_bytes(b"/srv/bad\xffname"));
        let record = SwapRecord {
            cleanup_only: false,
            copy_id: 3,
            areas: vec![PathBuf::from("/srv/.shadowcopy-restore-1"), odd.clone()],
            ops: vec![
                SwapOp::Aside {
                    from: odd.clone(),
                    to: PathBuf::from("/srv/.shadowcopy-restore-1/0-replaced/0-x"),
                },
                SwapOp::Install {
                    from: PathBuf::from("/srv/.shadowcopy-restore-1/0/x.shadowcopy-restore"),
                    to: odd.clone(),
                },
            ],
        };
        let json = to_json(&record);
        assert!(
            json.contains("\"/srv/.shadowcopy-restore-1\""),
            "UTF-8 paths stay readable: {json}"
        );
        let back: SwapRecord = serde_json::from_str(&json).unwrap();
        assert_eq!(back.areas, record.areas);
        assert_eq!(back.ops, record.ops);
    }
}
