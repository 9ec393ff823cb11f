//! The `btrfs` provider: a copy is a read-only snapshot of the btrfs subvolume that holds
//! the set's data (`btrfs subvolume snapshot -r`), made in O(1) whatever the data's size
//! (rank 10, ahead of reflink).
//!
//! The snapshot is taken with the `btrfs` tool rather than the `BTRFS_IOC_SNAP_CREATE_V2`
//! ioctl: the tool is what operators use and inspect, its one process spawn costs a few
//! milliseconds inside the freeze window, and the workspace keeps `unsafe` out of ioctl
//! argument structs.
//!
//! - The data must live in a subvolume of its own (not the file system's top level): a
//!   snapshot holds the whole subvolume, so this keeps it to the application's data.
//! - Snapshots go to `copies_dir` when set (on the same file system), else beside the
//!   subvolume in `<parent>/.shadowcopy-snapshots/<subvolume name>/`, else (the
//!   subvolume is mounted on its own, or its parent is not writable) inside it, in
//!   `<subvolume>/.shadowcopy/snapshots/`. A snapshot never contains other snapshots:
//!   nested subvolumes are left out of a snapshot, and `.shadowcopy` out of manifests.
//! - Beside each snapshot, `<snapshot>.subvolume` records the subvolume it was taken of,
//!   so the copy can be read and restored even when the live data is gone.
//! - Restore of a set that holds the whole subvolume swaps subvolumes: a writable
//!   snapshot of the copy is made beside the live subvolume and exchanged with it in one
//!   `renameat2(RENAME_EXCHANGE)`, then the replaced subvolume is deleted (the core keeps
//!   it first as a `pre-restore` snapshot). O(1) in data size, and files created after
//!   the copy are gone with the old subvolume. It needs the subvolume not to be a mount
//!   point and the copy not to live inside it.
//! - Any other restore stages each file as a clone of the snapshot's file (FICLONE,
//!   instant), then the core swaps it in; `delete` deletes the snapshot subvolume.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use shadowcopy_core::error::BoxError;
use shadowcopy_core::error::IoError;
use shadowcopy_core::model::{Component, CopyView, FileEntry, TreeEntry};
use shadowcopy_core::process;
use shadowcopy_core::provider::{
    Capabilities, CommitControl, CommitRequest, Provider, Unsupported,
};

use crate::layout::{self, LayoutError};
use crate::reflink::{self, BTRFS_MAGIC};
use crate::ProviderOptions;

/// Inode number of every subvolume's root directory (`BTRFS_FIRST_FREE_OBJECTID`).
const SUBVOLUME_ROOT_INODE: u64 = 256;
/// Inode of the placeholder a snapshot holds for a nested subvolume
/// (`BTRFS_EMPTY_SUBVOL_DIR_OBJECTID`).
const EMPTY_SUBVOLUME_INODE: u64 = 2;
/// The id of a btrfs file system's top-level subvolume.
const TOP_LEVEL_ID: u64 = 5;

#[derive(Debug, thiserror::Error)]
pub enum BtrfsError {
    #[error(transparent)]
    Layout(#[from] LayoutError),
    #[error("`{command}` failed: {stderr}")]
    Tool { command: String, stderr: String },
    #[error("`{command}` could not run to its end (is btrfs-progs installed?)")]
    Process {
        command: String,
        #[source]
        source: process::ProcessError,
    },
    #[error(
        "{} is a btrfs subvolume inside the snapshotted one, and a snapshot leaves nested subvolumes out; keep the set's data in one subvolume, or use --provider reflink",
        .0.display()
    )]
    NestedSubvolume(PathBuf),
    #[error("{}", .0)]
    Unsupported(String),
    #[error("the copy at {} does not say which subvolume it was taken of ({}.subvolume is missing)", .0.display(), .0.display())]
    NoSource(PathBuf),
    #[error("a btrfs snapshot is taken in one step; a continuing commit is not supported")]
    TwoStage,
    #[error("the snapshot was cancelled (the freeze deadline passed)")]
    Cancelled,
    #[error(transparent)]
    Io(#[from] IoError),
}

/// Snapshots the subvolume holding the data; see the module documentation.
#[derive(Debug)]
pub struct BtrfsProvider {
    copies_dir: Option<PathBuf>,
    parallelism: usize,
}

impl BtrfsProvider {
    pub fn new(opts: &ProviderOptions) -> Self {
        BtrfsProvider {
            copies_dir: opts.copies_dir.clone(),
            parallelism: opts.threads(),
        }
    }

    /// The one subvolume (not the top level) that holds every path, or why there is none.
    pub fn subvolume_of(paths: &[PathBuf]) -> Result<PathBuf, BtrfsError> {
        let mut found: Option<PathBuf> = None;
        for p in paths {
            let existing = layout::nearest_existing(p).ok_or_else(|| {
                BtrfsError::Unsupported(format!("neither {} nor any parent exists", p.display()))
            })?;
            let canonical = std::fs::canonicalize(&existing).map_err(|source| {
                BtrfsError::Io(IoError {
                    action: "resolve",
                    path: existing.clone(),
                    source,
                })
            })?;
            let magic = reflink::fs_magic(&canonical).map_err(|source| {
                BtrfsError::Io(IoError {
                    action: "inspect the file system of",
                    path: canonical.clone(),
                    source,
                })
            })?;
            if magic != BTRFS_MAGIC {
                return Err(BtrfsError::Unsupported(format!(
                    "{} is on {}, not btrfs; snapshots need the data in a btrfs subvolume. Use --provider reflink or copy",
                    p.display(),
                    reflink::fs_name(magic)
                )));
            }
            let subvolume = subvolume_root(&canonical)?;
            match &found {
                None => found = Some(subvolume),
                Some(f) if *f != subvolume => {
                    return Err(BtrfsError::Unsupported(format!(
                        "the data spans the subvolumes {} and {}; one snapshot covers one subvolume. Keep the set's data in one subvolume, or use --provider reflink",
                        f.display(),
                        subvolume.display()
                    )))
                }
                Some(_) => {}
            }
        }
        let subvolume = found.ok_or_else(|| BtrfsError::Unsupported("no paths to copy".into()))?;
        if subvolume_id(&subvolume)? == TOP_LEVEL_ID {
            return Err(BtrfsError::Unsupported(format!(
                "{} is the file system's top-level subvolume, and a snapshot of it would hold everything on the file system; put the data in a subvolume of its own (`btrfs subvolume create DIR`), or use --provider reflink",
                subvolume.display()
            )));
        }
        Ok(subvolume)
    }

    /// Where the snapshots of `subvolume` go (see the module documentation).
    fn base(&self, subvolume: &Path) -> Result<PathBuf, BtrfsError> {
        if let Some(dir) = &self.copies_dir {
            return Ok(dir.clone());
        }
        let inside = subvolume.join(".shadowcopy").join("snapshots");
        let (Some(parent), Some(name)) = (subvolume.parent(), subvolume.file_name()) else {
            return Ok(inside);
        };
        let writable = rustix::fs::access(
            parent,
            rustix::fs::Access::WRITE_OK | rustix::fs::Access::EXEC_OK,
        )
        .is_ok();
        if !writable || is_mount_point(subvolume)? {
            return Ok(inside);
        }
        Ok(parent.join(".shadowcopy-snapshots").join(name))
    }
}

/// Whether a file system (or a subvolume mounted with `subvol=`) is mounted at `path`.
fn is_mount_point(path: &Path) -> Result<bool, BtrfsError> {
    let out = tool("findmnt", &["-n", "-o", "TARGET", "-T"], &[path])?;
    Ok(Path::new(out.trim()) == path)
}

/// Whether `path` is the root directory of a btrfs subvolume.
fn is_subvolume(path: &Path) -> bool {
    use std::os::unix::fs::MetadataExt;
    std::fs::symlink_metadata(path).is_ok_and(|m| m.is_dir() && m.ino() == SUBVOLUME_ROOT_INODE)
}

/// The root of the subvolume holding `dir` (its nearest ancestor with inode 256 on the
/// same device).
fn subvolume_root(path: &Path) -> Result<PathBuf, BtrfsError> {
    use std::os::unix::fs::MetadataExt;
    let dev = std::fs::metadata(path)
        .map_err(|source| {
            BtrfsError::Io(IoError {
                action: "inspect",
                path: path.to_path_buf(),
                source,
            })
        })?
        .dev();
    for a in path.ancestors() {
        let Ok(m) = std::fs::metadata(a) else { break };
        if m.dev() != dev {
            break;
        }
        if m.is_dir() && m.ino() == SUBVOLUME_ROOT_INODE {
            return Ok(a.to_path_buf());
        }
    }
    Err(BtrfsError::Unsupported(format!(
        "cannot find the btrfs subvolume holding {}",
        path.display()
    )))
}

fn subvolume_id(subvolume: &Path) -> Result<u64, BtrfsError> {
    let out = btrfs(&["inspect-internal", "rootid"], &[subvolume])?;
    out.trim().parse().map_err(|_| BtrfsError::Tool {
        command: format!("btrfs inspect-internal rootid {}", subvolume.display()),
        stderr: format!("unexpected output {out:?}"),
    })
}

/// How long one `btrfs`, `findmnt` or `sync` call may take.
const TOOL_LIMIT: Duration = Duration::from_secs(120);

fn btrfs(args: &[&str], paths: &[&Path]) -> Result<String, BtrfsError> {
    tool("btrfs", args, paths)
}

fn tool(program: &str, args: &[&str], paths: &[&Path]) -> Result<String, BtrfsError> {
    let command = format!(
        "{program} {} {}",
        args.join(" "),
        paths
            .iter()
            .map(|p| p.display().to_string())
            .collect::<Vec<_>>()
            .join(" ")
    );
    let out = process::run_within(Command::new(program).args(args).args(paths), TOOL_LIMIT)
        .map_err(|source| BtrfsError::Process {
            command: command.clone(),
            source,
        })?;
    if !out.status.success() {
        return Err(BtrfsError::Tool {
            command,
            stderr: out.stderr.trim().to_string(),
        });
    }
    Ok(out.stdout)
}

/// The device a path's file system lives on (`findmnt` SOURCE without its `[/subvol]`).
fn source_device(path: &Path) -> Result<String, BtrfsError> {
    let out = tool("findmnt", &["-n", "-o", "SOURCE", "-T"], &[path])?;
    Ok(out.trim().split('[').next().unwrap_or_default().to_string())
}

fn source_file(location: &Path) -> PathBuf {
    let mut s = location.as_os_str().to_os_string();
    s.push(".subvolume");
    PathBuf::from(s)
}

/// The subvolume a snapshot was taken of.
fn source_of(location: &Path) -> Result<PathBuf, BtrfsError> {
    std::fs::read_to_string(source_file(location))
        .map(|s| PathBuf::from(s.trim_end_matches('\n')))
        .map_err(|_| BtrfsError::NoSource(location.to_path_buf()))
}

/// The regular file of the snapshot at `location` (taken of `subvolume`) that holds
/// `original`.
fn snapshot_file(location: &str, subvolume: &Path, original: &Path) -> Result<PathBuf, BoxError> {
    let src = in_snapshot(Path::new(location), subvolume, original)?;
    if !src.is_file() {
        return Err(LayoutError::NotInCopy {
            location: location.to_string(),
            original: original.to_path_buf(),
        }
        .into());
    }
    Ok(src)
}

/// `original` (under `subvolume`) as a path inside the snapshot.
fn in_snapshot(location: &Path, subvolume: &Path, original: &Path) -> Result<PathBuf, BtrfsError> {
    let rel = original.strip_prefix(subvolume).map_err(|_| {
        BtrfsError::Unsupported(format!(
            "{} is not inside the snapshotted subvolume {}",
            original.display(),
            subvolume.display()
        ))
    })?;
    Ok(location.join(rel))
}

impl Provider for BtrfsProvider {
    fn kind(&self) -> &'static str {
        "btrfs"
    }

    fn rank(&self) -> u32 {
        10
    }

    fn capabilities(&self) -> Capabilities {
        Capabilities {
            atomic_snapshot: true,
            writes_to_the_data_file_system: true,
            location_is_a_local_directory: true,
        }
    }

    fn check(&self, paths: &[PathBuf]) -> Result<(), Unsupported> {
        let subvolume = BtrfsProvider::subvolume_of(paths).map_err(|e| Unsupported {
            reason: e.to_string(),
        })?;
        let base = self.base(&subvolume).map_err(|e| Unsupported {
            reason: e.to_string(),
        })?;
        let existing = layout::nearest_existing(&base).unwrap_or_else(|| subvolume.clone());
        let same_fs = match (source_device(&existing), source_device(&subvolume)) {
            (Ok(a), Ok(b)) => a == b,
            _ => false,
        };
        if !same_fs {
            return Err(Unsupported {
                reason: format!(
                    "the snapshots directory {} is not on the btrfs file system of {}; set copies_dir inside it",
                    base.display(),
                    subvolume.display()
                ),
            });
        }
        Ok(())
    }

    fn location(&self, request: &CommitRequest) -> Result<String, BoxError> {
        let subvolume = BtrfsProvider::subvolume_of(&request.paths())?;
        Ok(layout::location_string(
            &self.base(&subvolume)?,
            request.copy_id,
        )?)
    }

    /// One snapshot of the subvolume; the manifest is read from the snapshot (the state
    /// it froze), for the components the request names.
    fn commit(
        &self,
        request: &CommitRequest,
        location: &str,
        control: &CommitControl,
    ) -> Result<Vec<FileEntry>, BoxError> {
        if request.continues {
            return Err(BtrfsError::TwoStage.into());
        }
        if control.cancelled() {
            return Err(BtrfsError::Cancelled.into());
        }
        let location = Path::new(location);
        let subvolume = BtrfsProvider::subvolume_of(&request.paths())?;
        if let Some(base) = location.parent() {
            std::fs::create_dir_all(base).map_err(|source| {
                BtrfsError::Io(IoError {
                    action: "create",
                    path: base.to_path_buf(),
                    source,
                })
            })?;
        }
        let source = source_file(location);
        std::fs::write(&source, format!("{}\n", subvolume.display())).map_err(|source_err| {
            BtrfsError::Io(IoError {
                action: "write",
                path: source.clone(),
                source: source_err,
            })
        })?;
        btrfs(&["subvolume", "snapshot", "-r"], &[&subvolume, location])?;
        let in_snap: Vec<Component> = request
            .components
            .iter()
            .map(|c| {
                Ok(Component {
                    path: in_snapshot(location, &subvolume, &c.path)?,
                    ..c.clone()
                })
            })
            .collect::<Result<_, BtrfsError>>()?;
        let entries = layout::plan(&in_snap, None).map_err(|e| match e {
            // Name the path the user knows, not its place in the snapshot.
            LayoutError::MissingRequired { path } => LayoutError::MissingRequired {
                path: path
                    .strip_prefix(location)
                    .map_or(path.clone(), |rel| subvolume.join(rel)),
            },
            other => other,
        })?;
        // A nested subvolume is an empty placeholder directory in the snapshot (inode
        // 2): its data is not in the copy, so the copy must not pass for complete.
        use std::os::unix::fs::MetadataExt;
        if let Some(nested) = entries
            .iter()
            .find(|e| e.kind == layout::Kind::Dir && e.meta.ino() == EMPTY_SUBVOLUME_INODE)
        {
            let rel = nested
                .original
                .strip_prefix(location)
                .unwrap_or(&nested.original);
            return Err(BtrfsError::NestedSubvolume(subvolume.join(rel)).into());
        }
        let total: u64 = entries
            .iter()
            .filter(|e| e.kind == layout::Kind::File)
            .map(|e| e.meta.len())
            .sum();
        control.bytes(total, total);
        // The deadline may have passed while the snapshot was being made.
        if control.cancelled() {
            return Err(BtrfsError::Cancelled.into());
        }
        Ok(entries
            .iter()
            .filter(|e| e.kind == layout::Kind::File)
            .map(|e| {
                let rel = e
                    .original
                    .strip_prefix(location)
                    .expect("walked inside the snapshot");
                layout::file_entry(&subvolume.join(rel), &e.meta)
            })
            .collect())
    }

    /// Makes the snapshot durable (`sync -f`: one syncfs of its file system).
    fn persist(&self, location: &str) -> Result<(), BoxError> {
        tool("sync", &["-f"], &[Path::new(location)])?;
        Ok(())
    }

    fn delete(&self, location: &str) -> Result<(), BoxError> {
        let loc = Path::new(location);
        if loc.symlink_metadata().is_ok() {
            if is_subvolume(loc) {
                btrfs(&["subvolume", "delete"], &[loc])?;
            } else {
                layout::delete(location)?;
            }
        }
        match std::fs::remove_file(source_file(loc)) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(source) => Err(BtrfsError::Io(IoError {
                action: "remove",
                path: source_file(loc),
                source,
            })
            .into()),
        }
    }

    /// Makes the snapshot writable for the time it takes to write the files, then
    /// read-only again (also when writing failed).
    fn add_files(
        &self,
        location: &str,
        files: &[(PathBuf, PathBuf)],
    ) -> Result<Vec<FileEntry>, BoxError> {
        let loc = Path::new(location);
        let subvolume = source_of(loc)?;
        btrfs(
            &["property", "set", "-ts"],
            &[loc, Path::new("ro"), Path::new("false")],
        )?;
        let added = layout::add_files(files, |original| {
            in_snapshot(loc, &subvolume, original).map_err(|e| {
                LayoutError::Io(IoError {
                    action: "place in the snapshot",
                    path: original.to_path_buf(),
                    source: std::io::Error::other(e.to_string()),
                })
            })
        });
        btrfs(
            &["property", "set", "-ts"],
            &[loc, Path::new("ro"), Path::new("true")],
        )?;
        Ok(added?)
    }

    fn expose(&self, location: &str, files: &[FileEntry]) -> Result<CopyView, BoxError> {
        let loc = Path::new(location);
        let subvolume = source_of(loc)?;
        let files = files
            .iter()
            .map(|f| Ok((f.path.clone(), in_snapshot(loc, &subvolume, &f.path)?)))
            .collect::<Result<_, BtrfsError>>()?;
        Ok(CopyView { files })
    }

    fn volume_swap(&self, location: &str, roots: &[PathBuf]) -> Option<Result<PathBuf, String>> {
        Some(swappable(Path::new(location), roots))
    }

    /// Exchanges the live subvolume with a writable snapshot of the copy, then deletes
    /// the replaced subvolume. Until the exchange the live subvolume is untouched; after
    /// it the restore has happened, and a replaced subvolume that cannot be deleted is
    /// left (and named) rather than failing the restore.
    fn swap_volume(&self, location: &str, volume: &Path) -> Result<Vec<String>, BoxError> {
        let loc = Path::new(location);
        let (Some(parent), Some(name)) = (volume.parent(), volume.file_name()) else {
            return Err(BtrfsError::Unsupported(format!(
                "{} has no parent directory to swap it in",
                volume.display()
            ))
            .into());
        };
        let mut side_name = std::ffi::OsString::from(".");
        side_name.push(name);
        side_name.push(".shadowcopy-restore");
        let side = parent.join(side_name);
        if side.symlink_metadata().is_ok() {
            // Left by an interrupted restore: either the clone it was making or the
            // subvolume it replaced (the restore had happened by then).
            delete_subvolume_or_tree(&side)?;
        }
        btrfs(&["subvolume", "snapshot"], &[loc, &side])?;
        let swapped = if volume.symlink_metadata().is_ok() {
            rustix::fs::renameat_with(
                rustix::fs::CWD,
                &side,
                rustix::fs::CWD,
                volume,
                rustix::fs::RenameFlags::EXCHANGE,
            )
        } else {
            rustix::fs::rename(&side, volume)
        };
        if let Err(e) = swapped {
            let _ = btrfs(&["subvolume", "delete"], &[&side]);
            return Err(BtrfsError::Io(IoError {
                action: "swap in the clone of the copy at",
                path: volume.to_path_buf(),
                source: e.into(),
            })
            .into());
        }
        let mut notes = Vec::new();
        if let Err(e) = std::fs::File::open(parent).and_then(|d| d.sync_all()) {
            notes.push(format!(
                "the restore is in place, but syncing {} failed ({e}); a power loss now could undo it",
                parent.display()
            ));
        }
        if side.symlink_metadata().is_ok() {
            if let Err(e) = delete_subvolume_or_tree(&side) {
                notes.push(format!(
                    "the replaced subvolume is left at {} ({e}); delete it with `btrfs subvolume delete {}`",
                    side.display(),
                    side.display()
                ));
            }
        }
        Ok(notes)
    }

    fn restore_file(&self, location: &str, original: &Path, dest: &Path) -> Result<(), BoxError> {
        let src = snapshot_file(location, &source_of(Path::new(location))?, original)?;
        Ok(reflink::restore(
            &src,
            dest,
            self.parallelism,
            reflink::Durable::Now,
        )?)
    }

    fn restore_files(
        &self,
        location: &str,
        files: &[(PathBuf, PathBuf)],
        staged: &(dyn Fn(usize) + Sync),
    ) -> Result<(), (usize, BoxError)> {
        // The subvolume the snapshot was taken of is read once, not once per file.
        let subvolume = source_of(Path::new(location)).map_err(|e| (0, e.into()))?;
        reflink::restore_many(
            files,
            &|original| snapshot_file(location, &subvolume, original),
            self.parallelism,
            staged,
        )
    }

    fn tree(&self, location: &str, roots: &[PathBuf]) -> Result<Vec<TreeEntry>, BoxError> {
        let loc = Path::new(location);
        let subvolume = source_of(loc)?;
        let mut inside = Vec::new();
        for r in roots {
            if r.starts_with(&subvolume) {
                inside.push(r.clone());
            }
        }
        Ok(layout::tree(&inside, |original| {
            in_snapshot(loc, &subvolume, original).map_err(|e| LayoutError::NotInCopy {
                location: format!("{} ({e})", location),
                original: original.to_path_buf(),
            })
        })?)
    }
}

/// The live subvolume a restore of the copy at `location` can swap, or why it must go
/// file by file.
fn swappable(location: &Path, roots: &[PathBuf]) -> Result<PathBuf, String> {
    let subvolume = source_of(location).map_err(|e| e.to_string())?;
    let covers = roots
        .iter()
        .any(|r| r == &subvolume || std::fs::canonicalize(r).is_ok_and(|c| c == subvolume));
    if !covers {
        return Err(format!(
            "the set holds part of the subvolume {}, and swapping it would also roll back the rest",
            subvolume.display()
        ));
    }
    if location.starts_with(&subvolume) {
        return Err(format!(
            "the copy is stored inside the subvolume {} it would replace; set copies_dir outside it (on the same file system) for an instant subvolume swap",
            subvolume.display()
        ));
    }
    if subvolume.symlink_metadata().is_ok() {
        if !is_subvolume(&subvolume) {
            return Err(format!(
                "{} is no longer a btrfs subvolume",
                subvolume.display()
            ));
        }
        if is_mount_point(&subvolume).map_err(|e| e.to_string())? {
            return Err(format!(
                "{} is mounted on its own (subvol=), and a mount point cannot be swapped",
                subvolume.display()
            ));
        }
    }
    Ok(subvolume)
}

/// Deletes a subvolume, or a plain directory tree left where one was expected.
fn delete_subvolume_or_tree(path: &Path) -> Result<(), BtrfsError> {
    if is_subvolume(path) {
        btrfs(&["subvolume", "delete"], &[path])?;
        return Ok(());
    }
    std::fs::remove_dir_all(path).map_err(|source| {
        BtrfsError::Io(IoError {
            action: "remove",
            path: path.to_path_buf(),
            source,
        })
    })
}
