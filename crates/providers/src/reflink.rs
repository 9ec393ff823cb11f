//! The `reflink` provider: every file of the copy is a clone (`FICLONE`) of the original,
//! sharing its blocks until either side is written. A commit costs one ioctl per file,
//! independent of the data size (rank 20).
//!
//! Clones only work within one file system that can share blocks: XFS made with
//! `reflink=1` (the mkfs default) and btrfs. The copies therefore live on the data's file
//! system: in `copies_dir` when it is set (it must be on that file system), otherwise in
//! `<parent of the first component>/.shadowcopy/copies` — or, when the first component is
//! itself the root of a mounted file system, in `<component>/.shadowcopy/copies`, which
//! the commit then leaves out of the copy.

use std::fs::OpenOptions;
use std::io::{self, Write};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use rustix::io::Errno;
use shadowcopy_core::error::BoxError;
use shadowcopy_core::error::IoError;
use shadowcopy_core::model::{CopyView, FileEntry, TreeEntry};
use shadowcopy_core::provider::{
    Capabilities, CommitControl, CommitRequest, Provider, Unsupported,
};

use crate::copy::{self, CopyError};
use crate::layout::{self, LayoutError};
use crate::pool::{self, Stop};
use crate::ProviderOptions;

const XFS_MAGIC: u64 = 0x5846_5342;
pub(crate) const BTRFS_MAGIC: u64 = 0x9123_683E;

/// Errors of the `reflink` provider.
#[derive(Debug, thiserror::Error)]
pub enum ReflinkError {
    #[error(transparent)]
    Layout(#[from] LayoutError),
    #[error(transparent)]
    Copy(#[from] CopyError),
    #[error(
        "cannot clone {} to {} with FICLONE; both must be on one XFS (reflink=1) or btrfs file system, \
         otherwise use --provider copy",
        src.display(),
        dest.display()
    )]
    Clone {
        src: PathBuf,
        dest: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("the request has no components, so there is no file system to put the copy on; check the set's configuration")]
    NoComponents,
    #[error(transparent)]
    Io(#[from] IoError),
    #[error(
        "the copy was cancelled after {done} of {total} files (the freeze deadline passed); the partial \
         copy is discarded. Raise the freeze deadline for this set"
    )]
    Cancelled { done: u64, total: u64 },
    #[error(
        "a clone thread panicked; this is a bug in shadowcopy, please report it (a retry may work)"
    )]
    Panicked,
}

fn io_err<'a>(action: &'static str, path: &'a Path) -> impl FnOnce(io::Error) -> ReflinkError + 'a {
    move |source| {
        ReflinkError::Io(IoError {
            action,
            path: path.to_path_buf(),
            source,
        })
    }
}

/// Copies by cloning each file; see the module documentation.
#[derive(Debug)]
pub struct ReflinkProvider {
    copies_dir: Option<PathBuf>,
    parallelism: usize,
}

impl ReflinkProvider {
    pub fn new(opts: &ProviderOptions) -> Self {
        ReflinkProvider {
            copies_dir: opts.copies_dir.clone(),
            parallelism: opts.threads(),
        }
    }

    /// Where the copies of these paths go (see the module documentation).
    pub fn base_for(&self, paths: &[PathBuf]) -> Option<PathBuf> {
        if let Some(dir) = &self.copies_dir {
            return Some(dir.clone());
        }
        let first = paths.first()?;
        let parent = first.parent().unwrap_or(Path::new("/"));
        let is_mount_root = match (std::fs::metadata(first), std::fs::metadata(parent)) {
            (Ok(f), Ok(p)) => f.is_dir() && f.dev() != p.dev(),
            _ => false,
        };
        let root = if is_mount_root {
            first.as_path()
        } else {
            parent
        };
        Some(root.join(".shadowcopy").join("copies"))
    }

    fn base_for_request(&self, request: &CommitRequest) -> Result<PathBuf, ReflinkError> {
        self.base_for(&request.paths())
            .ok_or(ReflinkError::NoComponents)
    }
}

fn unsupported(reason: String) -> Unsupported {
    Unsupported { reason }
}

/// The name of a file system type, from `statfs`'s `f_type`.
pub(crate) fn fs_name(magic: u64) -> String {
    match magic {
        XFS_MAGIC => "XFS".into(),
        BTRFS_MAGIC => "btrfs".into(),
        0xEF53 => "ext4 (or ext2/ext3)".into(),
        0x0102_1994 => "tmpfs".into(),
        0x794C_7630 => "overlayfs".into(),
        0x6969 => "NFS".into(),
        0x2FC1_2FC1 => "ZFS".into(),
        0xF2F5_2010 => "F2FS".into(),
        0x4d44 => "FAT".into(),
        0x5346_544E => "NTFS".into(),
        0x6573_5546 => "a FUSE file system".into(),
        other => format!("a file system of type {other:#x}"),
    }
}

pub(crate) fn fs_magic(path: &Path) -> io::Result<u64> {
    let st = rustix::fs::statfs(path)?;
    Ok((st.f_type as u64) & 0xFFFF_FFFF)
}

/// Clones a small temporary file in `dir` and removes both files again.
fn probe(dir: &Path) -> Result<(), (String, Option<Errno>)> {
    let stamp = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    let a = dir.join(format!(
        ".shadowcopy-reflink-probe-{}-{stamp}",
        std::process::id()
    ));
    let b = dir.join(format!(
        ".shadowcopy-reflink-probe-{}-{stamp}.clone",
        std::process::id()
    ));
    let result = (|| {
        let mut src = OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&a)
            .map_err(|e| {
                (
                    format!("cannot create the probe file {}: {e}", a.display()),
                    None,
                )
            })?;
        src.write_all(&[0x5a; 4096])
            .and_then(|()| src.sync_all())
            .map_err(|e| {
                (
                    format!("cannot write the probe file {}: {e}", a.display()),
                    None,
                )
            })?;
        let dst = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&b)
            .map_err(|e| {
                (
                    format!("cannot create the probe file {}: {e}", b.display()),
                    None,
                )
            })?;
        rustix::fs::ioctl_ficlone(&dst, &src).map_err(|e| (format!("FICLONE failed: {e}"), Some(e)))
    })();
    let _ = std::fs::remove_file(&a);
    let _ = std::fs::remove_file(&b);
    result
}

impl Provider for ReflinkProvider {
    fn kind(&self) -> &'static str {
        "reflink"
    }

    fn rank(&self) -> u32 {
        20
    }

    fn capabilities(&self) -> Capabilities {
        Capabilities {
            atomic_snapshot: false,
            writes_to_the_data_file_system: true,
            location_is_a_local_directory: true,
        }
    }

    /// Passes when every path (or, for a missing one, its nearest existing ancestor) and
    /// the copies directory are on one XFS or btrfs file system that clones files.
    ///
    /// Unlike other checks, this one writes: on XFS and btrfs it confirms support with a
    /// real `FICLONE` of a 4 KiB probe file, `.shadowcopy-reflink-probe-*`, created in the
    /// data's directory and removed again (a file system can be XFS without reflink).
    /// Nothing else is written.
    fn check(&self, paths: &[PathBuf]) -> Result<(), Unsupported> {
        let Some(base) = self.base_for(paths) else {
            return Err(unsupported("no paths to copy".into()));
        };
        let mut first: Option<(PathBuf, PathBuf, u64)> = None;
        for p in paths {
            let Some(existing) = layout::nearest_existing(p) else {
                return Err(unsupported(format!(
                    "neither {} nor any of its parents exists",
                    p.display()
                )));
            };
            let dev = std::fs::metadata(&existing)
                .map_err(|e| unsupported(format!("cannot inspect {}: {e}", existing.display())))?
                .dev();
            match &first {
                None => first = Some((p.clone(), existing, dev)),
                Some((q, _, qdev)) if *qdev != dev => {
                    return Err(unsupported(format!(
                    "{} and {} are on different file systems; reflink clones only within one file \
                         system. Use --provider copy, or split the set by file system",
                    q.display(),
                    p.display()
                )))
                }
                Some(_) => {}
            }
        }
        let Some((p, existing, dev)) = first else {
            return Err(unsupported("no paths to copy".into()));
        };
        let magic = fs_magic(&existing).map_err(|e| {
            unsupported(format!(
                "cannot inspect the file system of {}: {e}",
                existing.display()
            ))
        })?;
        if magic != XFS_MAGIC && magic != BTRFS_MAGIC {
            return Err(unsupported(format!(
                "{} is on {}, which cannot share blocks between files; reflink needs XFS (reflink=1, the \
                 mkfs default) or btrfs. Use --provider copy",
                p.display(),
                fs_name(magic)
            )));
        }
        if let Some(b) = layout::nearest_existing(&base) {
            let bdev = std::fs::metadata(&b)
                .map_err(|e| unsupported(format!("cannot inspect {}: {e}", b.display())))?
                .dev();
            if bdev != dev {
                return Err(unsupported(format!(
                    "the copies directory {} is not on the file system of {}; reflink clones only within \
                     one file system. Set copies_dir on that file system (or leave it unset), or use \
                     --provider copy",
                    base.display(),
                    p.display()
                )));
            }
        }
        let dir = if existing.is_dir() {
            existing.clone()
        } else {
            existing.parent().unwrap_or(Path::new("/")).to_path_buf()
        };
        probe(&dir).map_err(|(why, errno)| match errno {
            Some(Errno::OPNOTSUPP | Errno::INVAL | Errno::NOTTY | Errno::XDEV) => unsupported(format!(
                "{} is on {} without block sharing (for XFS: made with `mkfs.xfs -m reflink=0`), so a \
                 probe clone in {} failed ({why}); reflink needs XFS with reflink=1 or btrfs. Use \
                 --provider copy",
                p.display(),
                fs_name(magic),
                dir.display()
            )),
            _ => unsupported(format!(
                "cannot test reflink support in {}: {why}. Check permissions and free space there, or use \
                 --provider copy",
                dir.display()
            )),
        })
    }

    fn location(&self, request: &CommitRequest) -> Result<String, BoxError> {
        Ok(layout::location_string(
            &self.base_for_request(request)?,
            request.copy_id,
        )?)
    }

    fn commit(
        &self,
        request: &CommitRequest,
        location: &str,
        control: &CommitControl,
    ) -> Result<Vec<FileEntry>, BoxError> {
        let base = self.base_for_request(request)?;
        Ok(commit(
            request,
            Path::new(location),
            &base,
            control,
            self.parallelism,
        )?)
    }

    fn persist(&self, location: &str) -> Result<(), BoxError> {
        Ok(layout::persist(Path::new(location))?)
    }

    fn delete(&self, location: &str) -> Result<(), BoxError> {
        Ok(layout::delete(location)?)
    }

    fn add_files(
        &self,
        location: &str,
        files: &[(PathBuf, PathBuf)],
    ) -> Result<Vec<FileEntry>, BoxError> {
        Ok(layout::add_files_in_copy(location, files)?)
    }

    fn expose(&self, location: &str, files: &[FileEntry]) -> Result<CopyView, BoxError> {
        Ok(CopyView {
            files: layout::expose(location, files)?,
        })
    }

    /// Clones the copy's file to `dest`; across file systems (or where cloning is not
    /// supported) falls back to the full copy of the `copy` provider.
    fn restore_file(&self, location: &str, original: &Path, dest: &Path) -> Result<(), BoxError> {
        let src = layout::existing_in_copy(location, original)?;
        Ok(restore(&src, dest, self.parallelism, Durable::Now)?)
    }

    fn restore_files(
        &self,
        location: &str,
        files: &[(PathBuf, PathBuf)],
        staged: &(dyn Fn(usize) + Sync),
    ) -> Result<(), (usize, BoxError)> {
        restore_many(
            files,
            &|original| Ok(layout::existing_in_copy(location, original)?),
            self.parallelism,
            staged,
        )
    }

    fn tree(&self, location: &str, roots: &[PathBuf]) -> Result<Vec<TreeEntry>, BoxError> {
        let loc = Path::new(location);
        Ok(layout::tree(roots, |original| {
            layout::in_copy(loc, original)
        })?)
    }
}

fn commit(
    request: &CommitRequest,
    location: &Path,
    base: &Path,
    control: &CommitControl,
    parallelism: usize,
) -> Result<Vec<FileEntry>, ReflinkError> {
    let entries = layout::plan(&request.components, Some(base))?;
    let total_bytes: u64 = entries
        .iter()
        .filter(|e| e.kind == layout::Kind::File)
        .map(|e| e.meta.len())
        .sum();
    let count = entries
        .iter()
        .filter(|e| e.kind == layout::Kind::File)
        .count() as u64;
    if control.cancelled() {
        return Err(ReflinkError::Cancelled {
            done: 0,
            total: count,
        });
    }
    // Below the location's pinned path: nothing on the way to it can redirect the commit.
    let pinned = layout::open_location(location, request.continues)?;
    let here = pinned.pinned_path();
    let files = layout::build_tree(&here, &entries)?;
    let done_bytes = AtomicU64::new(0);
    let done_files = AtomicU64::new(0);
    // What each clone holds: a file the application writes during the commit (PostgreSQL
    // in backup mode is not frozen) may have grown or shrunk since the plan's stat, and a
    // clone takes the whole file as it is at the clone.
    let cloned_sizes: Vec<AtomicU64> = files.iter().map(|_| AtomicU64::new(0)).collect();
    let gone: Vec<AtomicBool> = files.iter().map(|_| AtomicBool::new(false)).collect();
    let cancelled = || control.cancelled();
    let work = |j: usize| -> Result<(), ReflinkError> {
        let (i, dest) = &files[j];
        let e = &entries[*i];
        let src = match layout::open_source(&e.original, &e.meta) {
            Ok(src) => src,
            Err(err) if layout::vanished(e, &err) => {
                gone[j].store(true, Ordering::SeqCst);
                done_bytes.fetch_add(e.meta.len(), Ordering::SeqCst);
                return Ok(());
            }
            Err(err) => return Err(io_err("open", &e.original)(err)),
        };
        let out = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(dest)
            .map_err(io_err("create", dest))?;
        rustix::fs::ioctl_ficlone(&out, &src).map_err(|source| ReflinkError::Clone {
            src: e.original.clone(),
            dest: dest.clone(),
            source: source.into(),
        })?;
        layout::set_metadata(&out, dest, &e.meta)?;
        let cloned = out.metadata().map_err(io_err("inspect", dest))?;
        cloned_sizes[j].store(cloned.len(), Ordering::SeqCst);
        done_files.fetch_add(1, Ordering::SeqCst);
        let now = done_bytes.fetch_add(e.meta.len(), Ordering::SeqCst) + e.meta.len();
        control.bytes(now, total_bytes);
        Ok(())
    };
    match pool::run(files.len(), parallelism, &cancelled, &work) {
        Ok(()) => {}
        Err(Stop::Failed(e)) => return Err(e),
        Err(Stop::Cancelled) => {
            return Err(ReflinkError::Cancelled {
                done: done_files.load(Ordering::SeqCst),
                total: count,
            })
        }
        Err(Stop::Panicked) => return Err(ReflinkError::Panicked),
    }
    layout::finish_tree(&here, &entries)?;
    if control.cancelled() {
        return Err(ReflinkError::Cancelled {
            done: count,
            total: count,
        });
    }
    Ok(files
        .iter()
        .zip(&cloned_sizes)
        .zip(&gone)
        .filter(|(_, gone)| !gone.load(Ordering::SeqCst))
        .map(|(((i, _), size), _)| FileEntry {
            size: size.load(Ordering::SeqCst),
            ..layout::file_entry(&entries[*i].original, &entries[*i].meta)
        })
        .collect())
}

/// Whether [`restore`] makes its file durable itself.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) enum Durable {
    /// `fsync` the clone.
    Now,
    /// The caller syncs the file system afterwards ([`restore_many`]).
    Later,
}

/// From this many files on, [`restore_many`] syncs each file system once instead of each
/// file: `syncfs` also flushes whatever else is dirty there, worth it only against many
/// `fsync`s.
const SYNCFS_FROM: usize = 32;

/// Clones the copy's file of each `(original, dest)` of `files` (found by `source`) to
/// its destination on `parallelism` threads, then (for many files) makes them all
/// durable with one `syncfs` per file system: a clone costs per extent of its source, so
/// the files of a fragmented cluster clone faster two at a time, and one sync forces
/// XFS's log once instead of once per file.
pub(crate) fn restore_many(
    files: &[(PathBuf, PathBuf)],
    source: &(dyn Fn(&Path) -> Result<PathBuf, BoxError> + Sync),
    parallelism: usize,
    staged: &(dyn Fn(usize) + Sync),
) -> Result<(), (usize, BoxError)> {
    // Every file is found before any is cloned: a file the copy lacks fails the restore
    // before it has written anything.
    let sources = files
        .iter()
        .enumerate()
        .map(|(i, (original, _))| source(original).map_err(|e| (i, e)))
        .collect::<Result<Vec<_>, _>>()?;
    let durable = if files.len() < SYNCFS_FROM {
        Durable::Now
    } else {
        Durable::Later
    };
    let work = |i: usize| -> Result<(), (usize, ReflinkError)> {
        // One file per thread: a full copy (across file systems) gets no threads of its own.
        restore(&sources[i], &files[i].1, 1, durable).map_err(|e| (i, e))?;
        staged(i);
        Ok(())
    };
    match pool::run(files.len(), parallelism, &|| false, &work) {
        Ok(()) => {}
        Err(Stop::Failed((i, e))) => return Err((i, e.into())),
        Err(Stop::Cancelled) => unreachable!("nothing cancels a restore's staging"),
        Err(Stop::Panicked) => return Err((0, ReflinkError::Panicked.into())),
    }
    if durable == Durable::Now {
        return Ok(());
    }
    let mut dirs = std::collections::BTreeSet::new();
    let mut devices = std::collections::BTreeSet::new();
    for (i, (_, dest)) in files.iter().enumerate() {
        let dir = dest.parent().unwrap_or(Path::new("/"));
        if dirs.insert(dir) {
            sync_file_system(dir, &mut devices).map_err(|e| (i, e.into()))?;
        }
    }
    Ok(())
}

/// `syncfs` of the file system holding `dir`, unless `devices` says it was synced.
fn sync_file_system(
    dir: &Path,
    devices: &mut std::collections::BTreeSet<u64>,
) -> Result<(), ReflinkError> {
    let d = std::fs::File::open(dir).map_err(io_err("open", dir))?;
    let dev = d.metadata().map_err(io_err("inspect", dir))?.dev();
    if devices.insert(dev) {
        rustix::fs::syncfs(&d).map_err(|e| io_err("sync the file system of", dir)(e.into()))?;
    }
    Ok(())
}

/// Clones `src` to `dest` (falling back to a full copy across file systems).
pub(crate) fn restore(
    src: &Path,
    dest: &Path,
    parallelism: usize,
    durable: Durable,
) -> Result<(), ReflinkError> {
    let meta = std::fs::symlink_metadata(src).map_err(io_err("inspect", src))?;
    let input = layout::open_source(src, &meta).map_err(io_err("open", src))?;
    // A new file in the restore's private staging directory: never one that exists.
    let out = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(dest)
        .map_err(io_err("create", dest))?;
    match rustix::fs::ioctl_ficlone(&out, &input) {
        Ok(()) => {
            layout::set_metadata(&out, dest, &meta)?;
            if durable == Durable::Now {
                out.sync_all().map_err(io_err("fsync", dest))?;
            }
            Ok(())
        }
        Err(Errno::XDEV | Errno::OPNOTSUPP | Errno::INVAL | Errno::NOTTY) => {
            drop(out);
            std::fs::remove_file(dest).map_err(io_err("remove", dest))?;
            tracing::debug!(src = %src.display(), dest = %dest.display(), "cannot clone, copying instead");
            Ok(copy::copy_file(src, dest, parallelism)?)
        }
        Err(source) => Err(ReflinkError::Clone {
            src: src.to_path_buf(),
            dest: dest.to_path_buf(),
            source: source.into(),
        }),
    }
}
