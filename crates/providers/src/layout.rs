//! The on-disk layout shared by the `copy` and `reflink` providers, and the steps of a
//! commit that do not depend on how file data is copied.
//!
//! A copy's location is the directory `<base>/copy-<copy_id>`; it holds
//! `files/<original absolute path without the leading '/'>`. A commit:
//! 1. [`open_location`] makes the location directory and refuses an existing one (or,
//!    for the second stage of a copy whose pinned components went first, requires it);
//! 2. [`plan`] walks the components (directories recursively, without following symlinks
//!    below a component's root) into a list of directories, regular files and symlinks;
//! 3. [`build_tree`] creates the directories and symlinks and returns the regular files
//!    for the provider to fill;
//! 4. [`finish_tree`] sets the directories' metadata (deepest first, after their files);
//! 5. after the thaw, [`persist`] fsyncs every file and directory of the copy.
//!
//! The manifest lists regular files only: it is what verification hashes and what a
//! restore writes back. Symlinks are kept as symlinks in the copy's tree, directories
//! keep their mode, owner and times, other file types (sockets, FIFOs, devices) are
//! skipped. Directories named `.shadowcopy` (where copies beside the data live) and the
//! provider's own copies directory are left out of directory components.

use std::collections::BTreeSet;
use std::fs::{File, Metadata};
use std::io;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Component as PathComponent, Path, PathBuf};

use rustix::fs::{AtFlags, Timestamps, CWD};
use shadowcopy_core::error::IoError;
use shadowcopy_core::model::{Component, CopyId, FileEntry, TreeEntry, TreeKind};
use shadowcopy_core::safe_fs::{self, NewDir, SafeDir, SafeFsError};

/// Errors of the layout steps.
#[derive(Debug, thiserror::Error)]
pub enum LayoutError {
    #[error(
        "component path {} is not a plain absolute path (it must start with '/' and contain no '..'); \
         fix the writer's component list",
        path.display()
    )]
    NotAbsolute { path: PathBuf },
    #[error(
        "required component {} does not exist; check the set's configuration or start the application \
         so that it creates its files (retrying will fail the same way)",
        path.display()
    )]
    MissingRequired { path: PathBuf },
    #[error(
        "copy location {} already exists and is never overwritten; delete it if it is left over from an \
         interrupted copy (`shadowcopy delete`, or remove the directory)",
        location.display()
    )]
    Exists { location: PathBuf },
    #[error(
        "copy location {} does not hold the first stage of this copy; this is a bug in shadowcopy, please report it",
        location.display()
    )]
    NotStarted { location: PathBuf },
    #[error("the copy location {} is not valid UTF-8; choose a copies directory with a UTF-8 path", path.display())]
    NotUtf8 { path: PathBuf },
    #[error("the copy at {location} holds no file for {}", original.display())]
    NotInCopy { location: String, original: PathBuf },
    #[error(transparent)]
    Io(#[from] IoError),
    #[error("cannot reach {} without following a path someone else controls", path.display())]
    Unsafe {
        path: PathBuf,
        #[source]
        source: shadowcopy_core::safe_fs::SafeFsError,
    },
    #[error("cannot walk the directory component {}", path.display())]
    Walk {
        path: PathBuf,
        #[source]
        source: walkdir::Error,
    },
}

pub(crate) fn io_err<'a>(
    action: &'static str,
    path: &'a Path,
) -> impl FnOnce(io::Error) -> LayoutError + 'a {
    move |source| {
        LayoutError::Io(IoError {
            action,
            path: path.to_path_buf(),
            source,
        })
    }
}

/// `<base>/copy-<id>-<nonce>`: the nonce keeps two catalogs that share a copies
/// directory (root's and a user's, say) from ever naming the same location.
pub(crate) fn location_dir(base: &Path, id: CopyId) -> PathBuf {
    let clock = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64);
    let nonce = (clock ^ (u64::from(std::process::id()) << 32)) & 0xffff_ffff;
    base.join(format!("copy-{id}-{nonce:08x}"))
}

/// The location as the string the coordinator records; refuses an existing location.
pub(crate) fn location_string(base: &Path, id: CopyId) -> Result<String, LayoutError> {
    let dir = location_dir(base, id);
    if dir.symlink_metadata().is_ok() {
        return Err(LayoutError::Exists { location: dir });
    }
    dir.to_str()
        .map(str::to_string)
        .ok_or(LayoutError::NotUtf8 { path: dir.clone() })
}

/// The relative form of an absolute original path (`/a/b` → `a/b`), refusing `..`.
fn relative(original: &Path) -> Result<PathBuf, LayoutError> {
    let mut rel = PathBuf::new();
    let mut comps = original.components();
    if comps.next() != Some(PathComponent::RootDir) {
        return Err(LayoutError::NotAbsolute {
            path: original.to_path_buf(),
        });
    }
    for c in comps {
        match c {
            PathComponent::Normal(s) => rel.push(s),
            PathComponent::CurDir => {}
            _ => {
                return Err(LayoutError::NotAbsolute {
                    path: original.to_path_buf(),
                })
            }
        }
    }
    Ok(rel)
}

/// Where the copy of `original` lives inside `location`.
pub(crate) fn in_copy(location: &Path, original: &Path) -> Result<PathBuf, LayoutError> {
    Ok(location.join("files").join(relative(original)?))
}

/// The copy's file for `original`, which must exist.
pub(crate) fn existing_in_copy(location: &str, original: &Path) -> Result<PathBuf, LayoutError> {
    let p = in_copy(Path::new(location), original)?;
    match p.symlink_metadata() {
        Ok(_) => Ok(p),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Err(LayoutError::NotInCopy {
            location: location.to_string(),
            original: original.to_path_buf(),
        }),
        Err(source) => Err(LayoutError::Io(IoError {
            action: "inspect",
            path: p,
            source,
        })),
    }
}

/// Maps every manifest entry to its place in the copy (the `expose` of both providers).
pub(crate) fn expose(
    location: &str,
    files: &[FileEntry],
) -> Result<Vec<(PathBuf, PathBuf)>, LayoutError> {
    let loc = Path::new(location);
    if !loc.is_dir() {
        return Err(LayoutError::NotInCopy {
            location: location.to_string(),
            original: PathBuf::from("/"),
        });
    }
    files
        .iter()
        .map(|f| Ok((f.path.clone(), in_copy(loc, &f.path)?)))
        .collect()
}

/// For a first commit, creates the location (see [`create_location`]); for a commit that
/// `continues` one whose pinned components were copied first, requires it to exist.
/// Returns the location's directory, opened by handle: the commit works below its
/// pinned path (`SafeDir::pinned_path`), which no rename or symlink on the way to the
/// location (a copies directory beside a user's data, in a directory the user owns) can
/// redirect, and below which only shadowcopy can change anything (mode 0700).
pub(crate) fn open_location(location: &Path, continues: bool) -> Result<SafeDir, LayoutError> {
    if !continues {
        return create_location(location);
    }
    let dir = open_existing(location)?;
    if dir
        .lstat("files".as_ref())
        .ok()
        .flatten()
        .is_some_and(|st| {
            rustix::fs::FileType::from_raw_mode(st.st_mode) == rustix::fs::FileType::Directory
        })
    {
        Ok(dir)
    } else {
        Err(LayoutError::NotStarted {
            location: location.to_path_buf(),
        })
    }
}

/// An existing copy location, opened by handle (see [`open_location`]).
pub(crate) fn open_existing(location: &Path) -> Result<SafeDir, LayoutError> {
    safe_fs::open_dir(location, None).map_err(walk_err(location))
}

/// A walk's error as a layout error: I/O stays I/O (a missing directory stays
/// `NotFound`), anything the walk refused is `Unsafe` at `path`.
fn walk_err(path: &Path) -> impl FnOnce(SafeFsError) -> LayoutError + '_ {
    move |e| match e {
        SafeFsError::Io(e) => LayoutError::Io(e),
        e => LayoutError::Unsafe {
            path: path.to_path_buf(),
            source: e,
        },
    }
}

/// Creates `<location>` (its parents as needed) and `<location>/files`; an existing
/// location is an error. The copies directory, when created here, and the location are
/// private to their owner (0700): a copy holds data whose own directories may have kept
/// other users out, and its tree below `files/` keeps the originals' modes, so these two
/// levels are what keeps the copy as private as its original.
pub(crate) fn create_location(location: &Path) -> Result<SafeDir, LayoutError> {
    const PRIVATE: u32 = 0o700;
    let base = location.parent().unwrap_or(Path::new("/"));
    // The copies directory may be beside a user's data (`.shadowcopy/copies`): it is
    // reached by handle, so a symlink planted in its place is refused, not followed.
    let new_dir = |dir: &Path| NewDir {
        mode: if dir == base { PRIVATE } else { 0o755 },
        owner: None,
    };
    let (parent, name) = safe_fs::open_parent(location, Some(&new_dir)).map_err(walk_err(base))?;
    let dir = match parent.create_child_dir(&name) {
        Ok(dir) => dir,
        Err(SafeFsError::Io(IoError { source, .. }))
            if source.kind() == io::ErrorKind::AlreadyExists =>
        {
            return Err(LayoutError::Exists {
                location: location.to_path_buf(),
            })
        }
        Err(e) => {
            return Err(LayoutError::Unsafe {
                path: location.to_path_buf(),
                source: e,
            })
        }
    };
    dir.set_meta(NewDir {
        mode: PRIVATE,
        owner: None,
    })
    .map_err(io_err("make private", location))?;
    let files = location.join("files");
    dir.create_child_dir("files".as_ref())
        .map_err(|e| LayoutError::Unsafe {
            path: files,
            source: e,
        })?;
    Ok(dir)
}

/// The directory name shadowcopy keeps its own files under (copies beside the data);
/// a directory of this name inside a directory component is never copied.
pub(crate) const RESERVED: &str = ".shadowcopy";

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Kind {
    Dir,
    File,
    Symlink,
}

/// One thing to copy: its original path, what it is, and its metadata (lstat, except
/// that a component's own path is followed if it is a symlink).
#[derive(Debug)]
pub(crate) struct Entry {
    pub original: PathBuf,
    pub kind: Kind,
    pub meta: Metadata,
    /// Found inside a directory component, so the application may remove it while the
    /// commit runs (PostgreSQL in backup mode is not paused: the archiver renames
    /// `archive_status` files, checkpoints remove old WAL). A file that is gone when the
    /// provider opens it is left out of the copy, as it would be had the walk come a
    /// moment later; a component named by the writer must be there.
    pub may_vanish: bool,
}

/// Whether `e` is a file the application removed after the plan saw it (see
/// [`Entry::may_vanish`]); the provider leaves it out.
pub(crate) fn vanished(e: &Entry, err: &io::Error) -> bool {
    let gone = e.may_vanish && err.kind() == io::ErrorKind::NotFound;
    if gone {
        tracing::debug!(path = %e.original.display(), "removed by the application during the commit; left out of the copy");
    }
    gone
}

/// Everything a commit copies, parents before children, without duplicates, leaving
/// out `exclude` (the copies directory) if it exists inside a directory component.
pub(crate) fn plan(
    components: &[Component],
    exclude: Option<&Path>,
) -> Result<Vec<Entry>, LayoutError> {
    let excluded = exclude
        .and_then(|p| std::fs::metadata(p).ok())
        .map(|m| (m.dev(), m.ino()));
    let mut seen = BTreeSet::new();
    let mut entries = Vec::new();
    for c in components {
        relative(&c.path)?;
        let meta = match std::fs::metadata(&c.path) {
            Ok(m) => m,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                if c.required {
                    return Err(LayoutError::MissingRequired {
                        path: c.path.clone(),
                    });
                }
                tracing::debug!(path = %c.path.display(), "optional component is missing, skipped");
                continue;
            }
            Err(source) => {
                return Err(LayoutError::Io(IoError {
                    action: "inspect",
                    path: c.path.clone(),
                    source,
                }))
            }
        };
        if !meta.is_dir() {
            if meta.is_file() && seen.insert(c.path.clone()) {
                entries.push(Entry {
                    original: c.path.clone(),
                    kind: Kind::File,
                    meta,
                    may_vanish: false,
                });
            }
            continue;
        }
        let walk = walkdir::WalkDir::new(&c.path)
            .follow_links(false)
            .into_iter()
            .filter_entry(|e| {
                let skip = e.depth() > 0
                    && e.file_type().is_dir()
                    && (e.file_name() == RESERVED
                        || (excluded.is_some()
                            && e.metadata().ok().map(|m| (m.dev(), m.ino())) == excluded));
                !skip
            });
        for item in walk {
            let item = match item {
                Ok(item) => item,
                // A file or directory the application removed between the listing of
                // its directory and its lstat.
                Err(e) if e.depth() > 0 && is_not_found(&e) => continue,
                Err(source) => {
                    return Err(LayoutError::Walk {
                        path: c.path.clone(),
                        source,
                    })
                }
            };
            let kind = if item.depth() == 0 || item.file_type().is_dir() {
                Kind::Dir
            } else if item.file_type().is_file() {
                Kind::File
            } else if item.file_type().is_symlink() {
                Kind::Symlink
            } else {
                tracing::warn!(path = %item.path().display(), "not a file, directory or symlink; skipped");
                continue;
            };
            let meta = if item.depth() == 0 {
                meta.clone()
            } else {
                match item.metadata() {
                    Ok(m) => m,
                    Err(e) if is_not_found(&e) => continue,
                    Err(source) => {
                        return Err(LayoutError::Walk {
                            path: c.path.clone(),
                            source,
                        })
                    }
                }
            };
            if seen.insert(item.path().to_path_buf()) {
                entries.push(Entry {
                    original: item.path().to_path_buf(),
                    kind,
                    meta,
                    may_vanish: item.depth() > 0,
                });
            }
        }
    }
    Ok(entries)
}

fn is_not_found(e: &walkdir::Error) -> bool {
    e.io_error()
        .is_some_and(|io| io.kind() == io::ErrorKind::NotFound)
}

/// Creates the directories and symlinks of the plan under `location` and returns, for
/// each regular file, its index in `entries` and its destination.
pub(crate) fn build_tree(
    location: &Path,
    entries: &[Entry],
) -> Result<Vec<(usize, PathBuf)>, LayoutError> {
    let mut files = Vec::new();
    for (i, e) in entries.iter().enumerate() {
        let dest = in_copy(location, &e.original)?;
        match e.kind {
            Kind::Dir => std::fs::create_dir_all(&dest).map_err(io_err("create", &dest))?,
            Kind::File | Kind::Symlink => {
                if let Some(parent) = dest.parent() {
                    std::fs::create_dir_all(parent).map_err(io_err("create", parent))?;
                }
                if e.kind == Kind::File {
                    files.push((i, dest));
                } else {
                    let target = match std::fs::read_link(&e.original) {
                        Ok(target) => target,
                        Err(err) if vanished(e, &err) => continue,
                        Err(err) => return Err(io_err("read the symlink", &e.original)(err)),
                    };
                    std::os::unix::fs::symlink(&target, &dest)
                        .map_err(io_err("create the symlink", &dest))?;
                    set_link_metadata(&dest, &e.meta)?;
                }
            }
        }
    }
    Ok(files)
}

/// Opens a file to copy from, which the plan saw as `expected` (lstat): never through a
/// symlink at its own name, and never another file than the plan's. A root-run copy of
/// a directory another user owns must not be redirected by a symlink planted between
/// the plan and the open (say `sub/` swapped for a link to a root-only directory): when
/// the file opened is not the one the plan saw, it is opened again by a walk that
/// follows no symlink another user could have made (`safe_fs`), which fails on such a
/// link, and otherwise gives the file now at that path (the application replaced it).
pub(crate) fn open_source(path: &Path, expected: &Metadata) -> io::Result<File> {
    use std::os::unix::fs::OpenOptionsExt;
    let nofollow = rustix::fs::OFlags::NOFOLLOW.bits() as i32;
    let file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(nofollow)
        .open(path)?;
    let meta = file.metadata()?;
    if (meta.dev(), meta.ino()) == (expected.dev(), expected.ino()) {
        return Ok(file);
    }
    let (dir, name) = shadowcopy_core::safe_fs::open_parent(path, None).map_err(|e| match e {
        shadowcopy_core::safe_fs::SafeFsError::Io(IoError { source, .. }) => source,
        e => io::Error::other(e),
    })?;
    let fd = rustix::fs::openat(
        dir.fd(),
        name.as_os_str(),
        rustix::fs::OFlags::RDONLY | rustix::fs::OFlags::NOFOLLOW | rustix::fs::OFlags::CLOEXEC,
        rustix::fs::Mode::empty(),
    )?;
    Ok(File::from(fd))
}

/// Sets the metadata of the plan's directories (children first, so that setting a
/// parent's times is the last change to it).
pub(crate) fn finish_tree(location: &Path, entries: &[Entry]) -> Result<(), LayoutError> {
    for e in entries.iter().rev().filter(|e| e.kind == Kind::Dir) {
        let dest = in_copy(location, &e.original)?;
        let dir = File::open(&dest).map_err(io_err("open", &dest))?;
        set_metadata(&dir, &dest, &e.meta)?;
    }
    Ok(())
}

/// Makes a committed copy durable: fsyncs every regular file under `location`, then every
/// directory deepest first (so each entry is durable before its parent's), then the
/// location's parent. Runs after thaw, outside the freeze window.
pub(crate) fn persist(location: &Path) -> Result<(), LayoutError> {
    let dir = open_existing(location)?;
    let here = dir.pinned_path();
    let mut dirs: BTreeSet<PathBuf> = BTreeSet::new();
    for entry in walkdir::WalkDir::new(&here) {
        let entry = entry.map_err(|e| {
            let path = e.path().unwrap_or(location).to_path_buf();
            io_err("walk", &path)(e.into())
        })?;
        let path = entry.path();
        if entry.file_type().is_dir() {
            dirs.insert(path.to_path_buf());
        } else if entry.file_type().is_file() {
            File::open(path)
                .and_then(|f| f.sync_all())
                .map_err(io_err("fsync", path))?;
        }
    }
    for d in dirs.iter().rev() {
        sync_dir(d)?;
    }
    if let Some(base) = location.parent() {
        sync_dir(base)?;
    }
    Ok(())
}

pub(crate) fn sync_dir(dir: &Path) -> Result<(), LayoutError> {
    File::open(dir)
        .and_then(|f| f.sync_all())
        .map_err(io_err("fsync the directory", dir))
}

fn is_root() -> bool {
    rustix::process::geteuid().is_root()
}

fn timestamps(meta: &Metadata) -> Timestamps {
    Timestamps {
        last_access: rustix::fs::Timespec {
            tv_sec: meta.atime(),
            tv_nsec: meta.atime_nsec() as _,
        },
        last_modification: rustix::fs::Timespec {
            tv_sec: meta.mtime(),
            tv_nsec: meta.mtime_nsec() as _,
        },
    }
}

/// Gives an open file or directory the owner (when running as root), mode and
/// access/modification times of `meta`. The owner goes first because chown clears the
/// set-user-ID bits; the times go last because every other change touches them.
pub(crate) fn set_metadata(file: &File, path: &Path, meta: &Metadata) -> Result<(), LayoutError> {
    if is_root() {
        std::os::unix::fs::fchown(file, Some(meta.uid()), Some(meta.gid()))
            .map_err(io_err("set the owner of", path))?;
    }
    file.set_permissions(std::fs::Permissions::from_mode(meta.mode() & 0o7777))
        .map_err(io_err("set the mode of", path))?;
    rustix::fs::futimens(file, &timestamps(meta)).map_err(|e| {
        LayoutError::Io(IoError {
            action: "set the times of",
            path: path.to_path_buf(),
            source: e.into(),
        })
    })
}

fn set_link_metadata(path: &Path, meta: &Metadata) -> Result<(), LayoutError> {
    if is_root() {
        std::os::unix::fs::lchown(path, Some(meta.uid()), Some(meta.gid()))
            .map_err(io_err("set the owner of", path))?;
    }
    rustix::fs::utimensat(CWD, path, &timestamps(meta), AtFlags::SYMLINK_NOFOLLOW).map_err(|e| {
        LayoutError::Io(IoError {
            action: "set the times of",
            path: path.to_path_buf(),
            source: e.into(),
        })
    })
}

/// Writes `(original, source)` files into a copy after its commit: each `source` is
/// copied (a clone where the file system shares blocks) to a temporary name beside its
/// place `dest(original)`, given the source's owner, mode and times, then renamed over
/// whatever was there. Durability comes with the copy's `persist`.
pub(crate) fn add_files(
    files: &[(PathBuf, PathBuf)],
    dest: impl Fn(&Path) -> Result<PathBuf, LayoutError>,
) -> Result<Vec<FileEntry>, LayoutError> {
    let mut entries = Vec::with_capacity(files.len());
    for (original, source) in files {
        let target = dest(original)?;
        let meta = std::fs::metadata(source).map_err(io_err("inspect", source))?;
        if let Some(dir) = target.parent() {
            std::fs::create_dir_all(dir).map_err(io_err("create", dir))?;
        }
        let mut name = target.file_name().unwrap_or_default().to_os_string();
        name.push(".shadowcopy-adding");
        let temp = target.with_file_name(name);
        let _ = std::fs::remove_file(&temp);
        // std::fs::copy uses copy_file_range: a clone where the file system can.
        std::fs::copy(source, &temp).map_err(io_err("copy into the copy", source))?;
        let file = File::open(&temp).map_err(io_err("open", &temp))?;
        set_metadata(&file, &temp, &meta)?;
        drop(file);
        std::fs::rename(&temp, &target).map_err(io_err("rename into place", &target))?;
        entries.push(file_entry(original, &meta));
    }
    Ok(entries)
}

/// [`add_files`] into a `copy`/`reflink` location, each file at its [`in_copy`] place.
pub(crate) fn add_files_in_copy(
    location: &str,
    files: &[(PathBuf, PathBuf)],
) -> Result<Vec<FileEntry>, LayoutError> {
    let dir = open_existing(Path::new(location))?;
    let here = dir.pinned_path();
    add_files(files, |original| in_copy(&here, original))
}

/// The manifest entry of a regular file.
pub(crate) fn file_entry(original: &Path, meta: &Metadata) -> FileEntry {
    FileEntry {
        path: original.to_path_buf(),
        size: meta.len(),
        mode: meta.mode() & 0o7777,
        mtime_ns: meta.mtime() * 1_000_000_000 + meta.mtime_nsec(),
        blake3: None,
    }
}

/// Removes a copy; a missing location is success. Directories the copy keeps read-only
/// (as their originals were) are made writable first when that stops the removal.
///
/// The location's directory is reached by handle (`safe_fs`): a symlink someone planted on
/// the way (in place of the `.shadowcopy` directory beside their data, say) is refused,
/// never followed, and a location that is not an absolute path (recorded by an old
/// catalog opened from a relative path) is refused rather than taken relative to
/// wherever the command runs.
pub(crate) fn delete(location: &str) -> Result<(), LayoutError> {
    use shadowcopy_core::safe_fs::{self, SafeFsError};
    let (parent, name) = match safe_fs::open_parent(Path::new(location), None) {
        Ok(found) => found,
        Err(SafeFsError::Io(IoError { source, .. }))
            if source.kind() == io::ErrorKind::NotFound =>
        {
            return Ok(())
        }
        Err(source) => {
            return Err(LayoutError::Unsafe {
                path: PathBuf::from(location),
                source,
            })
        }
    };
    // The kernel resolves the pinned path to the directory opened, not to a path again;
    // remove_dir_all never follows a symlink inside what it removes.
    let target = parent.pinned_path().join(name);
    let mut result = std::fs::remove_dir_all(&target);
    if matches!(&result, Err(e) if e.kind() == io::ErrorKind::PermissionDenied) {
        for d in walkdir::WalkDir::new(&target)
            .into_iter()
            .filter_map(Result::ok)
        {
            if d.file_type().is_dir() {
                let _ = std::fs::set_permissions(d.path(), std::fs::Permissions::from_mode(0o700));
            }
        }
        result = std::fs::remove_dir_all(&target);
    }
    match result {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(source) => Err(LayoutError::Io(IoError {
            action: "delete the copy",
            path: PathBuf::from(location),
            source,
        })),
    }
}

/// The directories and symlinks a copy holds at or below each of `roots` (see
/// `Provider::tree`); `place` maps an original path to where the copy holds it. A root
/// the copy does not hold as a directory adds nothing.
pub(crate) fn tree(
    roots: &[PathBuf],
    place: impl Fn(&Path) -> Result<PathBuf, LayoutError>,
) -> Result<Vec<TreeEntry>, LayoutError> {
    let mut seen = BTreeSet::new();
    let mut out = Vec::new();
    for root in roots {
        let src = place(root)?;
        if !src.symlink_metadata().is_ok_and(|m| m.is_dir()) {
            continue;
        }
        for item in walkdir::WalkDir::new(&src).follow_links(false) {
            let item = item.map_err(|source| LayoutError::Walk {
                path: src.clone(),
                source,
            })?;
            let rel = item.path().strip_prefix(&src).unwrap_or(Path::new(""));
            let original = if rel.as_os_str().is_empty() {
                root.clone()
            } else {
                root.join(rel)
            };
            let meta = item
                .path()
                .symlink_metadata()
                .map_err(io_err("inspect", item.path()))?;
            let kind = if meta.is_dir() {
                TreeKind::Dir
            } else if meta.file_type().is_symlink() {
                TreeKind::Symlink {
                    target: std::fs::read_link(item.path())
                        .map_err(io_err("read the symlink", item.path()))?,
                }
            } else {
                continue;
            };
            if seen.insert(original.clone()) {
                out.push(TreeEntry {
                    path: original,
                    kind,
                    mode: meta.mode() & 0o7777,
                    uid: meta.uid(),
                    gid: meta.gid(),
                });
            }
        }
    }
    Ok(out)
}

/// The nearest ancestor of `path` (itself included) that exists.
pub(crate) fn nearest_existing(path: &Path) -> Option<PathBuf> {
    let mut p = Some(path);
    while let Some(q) = p {
        if q.symlink_metadata().is_ok() {
            return Some(q.to_path_buf());
        }
        p = q.parent();
    }
    None
}

/// `path` with its nearest existing ancestor canonicalized and the rest appended, so
/// that not-yet-created directories can be compared with existing ones.
pub(crate) fn resolve(path: &Path) -> PathBuf {
    let Some(existing) = nearest_existing(path) else {
        return path.to_path_buf();
    };
    let canon = std::fs::canonicalize(&existing).unwrap_or_else(|_| existing.clone());
    match path.strip_prefix(&existing) {
        Ok(rest) if !rest.as_os_str().is_empty() => canon.join(rest),
        _ => canon,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn in_copy_strips_the_root_and_refuses_dotdot() {
        let loc = Path::new("/c/copy-1");
        assert_eq!(
            in_copy(loc, Path::new("/var/lib/x.db")).unwrap(),
            Path::new("/c/copy-1/files/var/lib/x.db")
        );
        assert!(in_copy(loc, Path::new("var/x")).is_err());
        assert!(in_copy(loc, Path::new("/var/../etc/passwd")).is_err());
    }
}
