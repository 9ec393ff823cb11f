//! The `Provider` contract: a provider knows one kind of storage and makes the
//! point-in-time copy of a set of components.
//!
//! # Required methods and what they MUST do
//! - [`Provider::check`] says whether the provider can serve these paths, and if not, why
//!   in words a user can act on. It MUST NOT change any data; it MAY create and remove
//!   a small probe file (reflink does, to prove the file system can share blocks).
//! - [`Provider::location`] names where the copy will live, before anything is written
//!   there; the coordinator records it first so an interrupted commit can be discarded.
//! - [`Provider::commit`] copies every existing component into `location` while the
//!   writers are frozen and returns the manifest. It SHOULD take well under a second for
//!   copy-on-write kinds; it MUST check `control.cancelled()` between units of work and
//!   stop with an error once it is set (the freeze deadline passed). A failed commit
//!   MAY leave partial data at `location`; the coordinator deletes it.
//! - [`Provider::persist`] (optional) makes a committed copy durable. It runs after
//!   thaw, outside the freeze window, and before the copy can be recorded usable, so a
//!   commit need not fsync while the application waits.
//! - [`Provider::add_files`] (optional) adds files a writer produced after the thaw.
//! - [`Provider::delete`] removes a copy. It MUST be idempotent (a missing location is
//!   success) so that cleanup after a crash can repeat it.
//! - [`Provider::expose`] makes the copy readable (read-only use by the caller).
//! - [`Provider::restore_file`] writes the copy of one original file to `dest`, which
//!   is on the target's file system; copy-on-write kinds clone instead of copying.
//!   `dest` is always a new name in a private directory of shadowcopy's own.
//! - [`Provider::tree`] (optional) lists the directories (with modes and owners) and
//!   symlinks the copy holds below the set's directory components, so a restore puts
//!   back the tree it copied, empty directories and links included. A provider that
//!   keeps regular files only returns none, and its restores bring back files only.
//!
//! # Capability flags
//! - [`Provider::capabilities`]: what the storage can promise ([`Capabilities`]); every
//!   decision that depends on the kind of storage reads these, never the provider's name.
//!   The default promises nothing.
//! - [`Provider::rank`]: lower is faster; `auto` picks the lowest rank whose `check` passes.
//! - [`Provider::volume_swap`] / [`Provider::swap_volume`]: an in-place restore of a
//!   copy that holds a whole volume (a btrfs subvolume) replaces the volume in one step
//!   instead of staging and renaming file by file.
//! - [`Provider::copies_pinned_early`]: the coordinator commits the pinned components
//!   (see [`Component::pinned`]) before the freeze, in a first `commit` call, and only the
//!   rest inside the freeze window, in a second call with `continues` set. Worth it for
//!   providers whose commit time grows with the data.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use crate::error::BoxError;
use crate::events::EventSink;
use crate::model::{Component, CopyId, CopyView, FileEntry, TreeEntry};

/// Why a provider cannot serve some paths.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Unsupported {
    pub reason: String,
}

impl std::fmt::Display for Unsupported {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.reason)
    }
}

/// What a provider promises about its copies ([`Provider::capabilities`]). Each flag is a
/// promise: `false` means "not promised", and callers then take the careful path.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Capabilities {
    /// One commit holds every file at one instant, whatever the application writes
    /// meanwhile (a snapshot of a whole volume): writers need not check for writes that
    /// landed between two files (MariaDB's InnoDB background writes).
    pub atomic_snapshot: bool,
    /// The commit writes onto the data's own file system (clones, snapshots), so it
    /// cannot run while that file system is frozen.
    pub writes_to_the_data_file_system: bool,
    /// The location is a directory on this machine: when it is gone, so are the copy's
    /// files.
    pub location_is_a_local_directory: bool,
}

/// What to copy.
#[derive(Clone, Debug)]
pub struct CommitRequest {
    pub copy_id: CopyId,
    pub set_name: String,
    pub components: Vec<Component>,
    /// `false`: the location must not exist yet. `true`: it holds this copy's earlier
    /// stage (the pinned components) and these components are added to it.
    pub continues: bool,
}

impl CommitRequest {
    pub fn paths(&self) -> Vec<PathBuf> {
        self.components.iter().map(|c| c.path.clone()).collect()
    }
}

/// Cancellation and progress for a running commit.
#[derive(Clone)]
pub struct CommitControl {
    cancelled: Arc<AtomicBool>,
    events: Arc<dyn EventSink>,
}

impl CommitControl {
    pub fn new(events: Arc<dyn EventSink>) -> Self {
        CommitControl {
            cancelled: Arc::new(AtomicBool::new(false)),
            events,
        }
    }
    pub fn cancel(&self) {
        self.cancelled.store(true, Ordering::SeqCst);
    }
    pub fn cancelled(&self) -> bool {
        self.cancelled.load(Ordering::SeqCst)
    }
    pub fn bytes(&self, done: u64, total: u64) {
        self.events.bytes(done, total);
    }
}

pub trait Provider: Send + Sync {
    /// The kind, as in the registry and `--provider`: `copy`, `reflink`.
    fn kind(&self) -> &'static str;
    fn rank(&self) -> u32;
    /// What this provider promises (see [`Capabilities`]); the default promises nothing.
    fn capabilities(&self) -> Capabilities {
        Capabilities::default()
    }
    fn copies_pinned_early(&self) -> bool {
        false
    }
    fn check(&self, paths: &[PathBuf]) -> Result<(), Unsupported>;
    fn location(&self, request: &CommitRequest) -> Result<String, BoxError>;
    fn commit(
        &self,
        request: &CommitRequest,
        location: &str,
        control: &CommitControl,
    ) -> Result<Vec<FileEntry>, BoxError>;
    /// Makes the committed copy durable (fsync); the default does nothing, for providers
    /// whose commit is durable by itself.
    fn persist(&self, _location: &str) -> Result<(), BoxError> {
        Ok(())
    }
    fn delete(&self, location: &str) -> Result<(), BoxError>;
    /// Adds files to a committed copy after the thaw, before [`Provider::persist`]:
    /// `(original, source)` pairs, the copy holding `source`'s content (and owner and
    /// mode) under `original`, replacing what it held there. For what exists only once
    /// the writers are thawed (PostgreSQL's `backup_label`, the WAL up to the end of the
    /// backup). Returns their manifest entries. The default refuses.
    fn add_files(
        &self,
        _location: &str,
        _files: &[(PathBuf, PathBuf)],
    ) -> Result<Vec<FileEntry>, BoxError> {
        Err(format!(
            "the {} provider cannot add files to a copy after the thaw, which this set's writers need; use copy, reflink or btrfs",
            self.kind()
        )
        .into())
    }
    fn expose(&self, location: &str, files: &[FileEntry]) -> Result<CopyView, BoxError>;
    fn restore_file(&self, location: &str, original: &Path, dest: &Path) -> Result<(), BoxError>;
    /// Stages several files as [`Provider::restore_file`] does, `(original, dest)` each,
    /// calling `staged(i)` once file `i` is in place; on an error, the index of the file
    /// that failed. A provider may stage them concurrently and make them durable together
    /// (a thousand clones are faster two at a time, and one `syncfs` is cheaper than a
    /// thousand `fsync`s); the default stages them one after the other.
    fn restore_files(
        &self,
        location: &str,
        files: &[(PathBuf, PathBuf)],
        staged: &(dyn Fn(usize) + Sync),
    ) -> Result<(), (usize, BoxError)> {
        for (i, (original, dest)) in files.iter().enumerate() {
            self.restore_file(location, original, dest)
                .map_err(|e| (i, e))?;
            staged(i);
        }
        Ok(())
    }
    /// The directories and symlinks the copy holds at or below `roots` (the set's
    /// directory components; the roots themselves included), by original path, parents
    /// before children. The default: none, for a provider that keeps regular files only.
    fn tree(&self, _location: &str, _roots: &[PathBuf]) -> Result<Vec<TreeEntry>, BoxError> {
        Ok(Vec::new())
    }
    /// Bytes the copy occupies on its storage, when the provider can tell.
    fn bytes_used(&self, _location: &str) -> Option<u64> {
        None
    }
    /// Whether restoring this copy in place can replace a whole volume in one step
    /// instead of file by file. `None`: this provider always restores file by file.
    /// `Some(Err(reason))`: it swaps volumes, but not for this copy, and why (the set
    /// holds part of the volume, …). `Some(Ok(volume))`: the live volume a
    /// [`Provider::swap_volume`] replaces. `roots` are the set's component paths.
    fn volume_swap(&self, _location: &str, _roots: &[PathBuf]) -> Option<Result<PathBuf, String>> {
        None
    }
    /// Replaces the live `volume` by a writable clone of the copy in one atomic step and
    /// removes the volume it replaced (the caller keeps it first, as a pre-restore copy).
    /// Returns notes for the user (a leftover it could not remove). Only called after
    /// [`Provider::volume_swap`] returned that volume.
    fn swap_volume(&self, _location: &str, volume: &Path) -> Result<Vec<String>, BoxError> {
        Err(format!(
            "the {} provider cannot swap {} as a whole",
            self.kind(),
            volume.display()
        )
        .into())
    }
}
