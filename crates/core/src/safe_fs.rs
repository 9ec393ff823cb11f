//! Directories opened the way a root-run tool must open them below other users' data:
//! component by component from `/`, on directory handles, never following a symlink that
//! someone other than root (or us) could have planted.
//!
//! shadowcopy runs as root over directories that unprivileged users own. A path such as
//! `/srv/app/sub/file`, resolved by the kernel in one call, follows whatever `sub` is at
//! that instant: the user who owns `/srv/app` can replace `sub` by a symlink to a
//! root-only directory and have root write there. [`open_dir`] walks a path itself:
//! - a symlink is followed only where nobody else can have made it: in a directory that
//!   only root (or the user shadowcopy runs as) can write, or in a sticky directory (such
//!   as `/tmp`) when the link belongs to root (or us). Elsewhere a symlink is an error
//!   that names it ([`SafeFsError::Symlink`]);
//! - each directory is opened relative to its parent's handle with `O_NOFOLLOW`, so a
//!   swap between the check and the open fails instead of being followed;
//! - missing directories are created on the way when asked, with the mode and owner the
//!   caller gives.
//!
//! What it returns is a [`SafeDir`]: the handle, the path it was reached by (for
//! messages), and a [`SafeDir::private_dir`] place for staging: the deepest directory
//! of the walk that nobody else can change, on the same file system, so the plain path
//! of anything created inside it can be handed to other code without risk.

use std::collections::hash_map::RandomState;
use std::ffi::{OsStr, OsString};
use std::hash::{BuildHasher, Hasher};
use std::io;
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Component, Path, PathBuf};

use crate::error::IoError;
use rustix::fs::{AtFlags, FileType, Mode, OFlags, Stat, CWD};

/// At most this many symlinks are followed in one walk (as the kernel's ELOOP limit).
const MAX_LINKS: usize = 40;

/// Why a path could not be opened safely.
#[derive(Debug, thiserror::Error)]
pub enum SafeFsError {
    #[error(
        "refusing to follow the symlink {} (to {}): it is in a directory that another user can change \
         (owner uid {dir_owner}), so it may have been planted to redirect a root-run shadowcopy; \
         replace it by a real directory, or restore with --to DIR",
        path.display(), target.display()
    )]
    Symlink {
        path: PathBuf,
        target: PathBuf,
        dir_owner: u32,
    },
    #[error(
        "{} became a symlink while shadowcopy opened it; someone is changing the directory \
         under a root-run shadowcopy, which refuses to follow it",
        path.display()
    )]
    Swapped { path: PathBuf },
    #[error("{} is not a directory; move it away or restore with --to DIR", path.display())]
    NotDir { path: PathBuf },
    #[error("{} is not a plain absolute path (it must start with '/')", path.display())]
    NotAbsolute { path: PathBuf },
    #[error("{} has more than {MAX_LINKS} symlinks on its way", path.display())]
    TooManyLinks { path: PathBuf },
    #[error(transparent)]
    Io(#[from] IoError),
}

fn io_err<'a>(
    action: &'static str,
    path: &'a Path,
) -> impl FnOnce(rustix::io::Errno) -> SafeFsError + 'a {
    move |e| {
        SafeFsError::Io(IoError {
            action,
            path: path.to_path_buf(),
            source: e.into(),
        })
    }
}

/// Mode and owner for a directory [`open_dir`] creates.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct NewDir {
    pub mode: u32,
    /// `(uid, gid)` to give it; applied only when running as root.
    pub owner: Option<(u32, u32)>,
}

impl Default for NewDir {
    fn default() -> Self {
        NewDir {
            mode: 0o755,
            owner: None,
        }
    }
}

/// An open directory reached without following an untrusted symlink.
#[derive(Debug)]
pub struct SafeDir {
    fd: OwnedFd,
    path: PathBuf,
    /// The deepest directory of the walk nobody else can change, on this file system
    /// (this directory itself when it is one, or when no such directory exists).
    staging_base: Option<Box<SafeDir>>,
    /// Directories the walk created, outermost first.
    created: Vec<PathBuf>,
}

impl SafeDir {
    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn fd(&self) -> std::os::fd::BorrowedFd<'_> {
        self.fd.as_fd()
    }

    /// The directories the walk that opened this one created, outermost first.
    pub fn created(&self) -> &[PathBuf] {
        &self.created
    }

    /// The child `name` of this directory, as it is (never followed).
    pub fn lstat(&self, name: &OsStr) -> io::Result<Option<Stat>> {
        match rustix::fs::statat(&self.fd, name, AtFlags::SYMLINK_NOFOLLOW) {
            Ok(s) => Ok(Some(s)),
            Err(rustix::io::Errno::NOENT) => Ok(None),
            Err(e) => Err(e.into()),
        }
    }

    /// Opens the child directory `name` (never following a symlink).
    pub fn child(&self, name: &OsStr) -> Result<SafeDir, SafeFsError> {
        let path = self.path.join(name);
        let fd = open_nofollow_dir(&self.fd, name, &path)?;
        Ok(SafeDir {
            fd,
            path,
            staging_base: None,
            created: Vec::new(),
        })
    }

    /// Renames the child `from` of this directory to `to_name` in `to` (both by handle:
    /// neither name is resolved through a path anyone could change). Replaces what is at
    /// the destination, as rename(2) does.
    pub fn rename(&self, from: &OsStr, to: &SafeDir, to_name: &OsStr) -> io::Result<()> {
        rustix::fs::renameat(&self.fd, from, &to.fd, to_name).map_err(Into::into)
    }

    /// fsync of the directory: its entries are durable.
    pub fn sync(&self) -> io::Result<()> {
        rustix::fs::fsync(&self.fd).map_err(Into::into)
    }

    /// Creates a new directory of our own, mode 0700, with an unpredictable name starting
    /// with `prefix`, in the deepest directory of the walk that nobody else can change on
    /// this directory's file system (this directory when there is none): everything in
    /// it may be reached by its plain path. Never reuses an existing name.
    pub fn private_dir(&self, prefix: &str) -> Result<SafeDir, SafeFsError> {
        for _ in 0..16 {
            match self.private_dir_named(&random_name(prefix))? {
                Some(dir) => return Ok(dir),
                None => continue,
            }
        }
        Err(SafeFsError::Io(IoError {
            action: "find a free name for a private directory in",
            path: self.staging_base().to_path_buf(),
            source: io::Error::from(io::ErrorKind::AlreadyExists),
        }))
    }

    /// Where [`SafeDir::private_dir_named`] would create `name`.
    pub fn private_dir_path(&self, name: &OsStr) -> PathBuf {
        self.staging_base().join(name)
    }

    /// Creates the private directory `name` where [`SafeDir::private_dir`] would (mode
    /// 0700, checked to be ours); `None` when the name is taken, so that a caller who
    /// recorded the name first (to clean up after a crash) can forget it and try another.
    pub fn private_dir_named(&self, name: &OsStr) -> Result<Option<SafeDir>, SafeFsError> {
        let base = self.staging_base.as_deref().unwrap_or(self);
        match rustix::fs::mkdirat(&base.fd, name, Mode::from_raw_mode(0o700)) {
            Ok(()) => {}
            Err(rustix::io::Errno::EXIST) => return Ok(None),
            Err(e) => return Err(io_err("create a private directory in", &base.path)(e)),
        }
        let dir = base.child(name)?;
        let st = rustix::fs::fstat(&dir.fd).map_err(io_err("inspect", &dir.path))?;
        if st.st_uid != rustix::process::geteuid().as_raw() {
            return Err(SafeFsError::Io(IoError {
                action: "own",
                path: dir.path,
                source: io::Error::from(io::ErrorKind::PermissionDenied),
            }));
        }
        Ok(Some(dir))
    }

    /// Gives this directory `mode` and, when running as root, `owner`.
    pub fn set_meta(&self, meta: NewDir) -> io::Result<()> {
        apply_meta(&self.fd, meta)
    }
}

fn apply_meta(fd: &OwnedFd, meta: NewDir) -> io::Result<()> {
    if let Some((uid, gid)) = meta.owner {
        if rustix::process::geteuid().is_root() {
            std::os::unix::fs::fchown(fd, Some(uid), Some(gid))?;
        }
    }
    rustix::fs::fchmod(fd, Mode::from_raw_mode(meta.mode & 0o7777))?;
    Ok(())
}

/// `prefix` followed by 16 random hex digits.
pub fn random_name(prefix: &str) -> OsString {
    let mut name = OsString::from(prefix);
    name.push(format!("{:016x}", random_u64()));
    name
}

fn random_u64() -> u64 {
    // RandomState is seeded from the operating system's random source.
    let mut h = RandomState::new().build_hasher();
    h.write_u64(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as u64),
    );
    h.write_u32(std::process::id());
    h.finish()
}

fn open_nofollow_dir(parent: &OwnedFd, name: &OsStr, path: &Path) -> Result<OwnedFd, SafeFsError> {
    rustix::fs::openat(
        parent,
        name,
        OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
        Mode::empty(),
    )
    .map_err(|e| match e {
        rustix::io::Errno::NOTDIR => SafeFsError::NotDir {
            path: path.to_path_buf(),
        },
        rustix::io::Errno::LOOP => SafeFsError::Swapped {
            path: path.to_path_buf(),
        },
        e => io_err("open the directory", path)(e),
    })
}

/// Whether only root or we could have changed `st`'s directory entries.
fn guarded(st: &Stat) -> bool {
    trusted_owner(st.st_uid) && st.st_mode & 0o022 == 0
}

fn trusted_owner(uid: u32) -> bool {
    uid == 0 || uid == rustix::process::geteuid().as_raw()
}

/// Opens the directory `path` (absolute), walking it from `/` as the module explains;
/// with `create`, missing directories are made on the way with the mode and owner it
/// returns for each.
pub fn open_dir(
    path: &Path,
    create: Option<&dyn Fn(&Path) -> NewDir>,
) -> Result<SafeDir, SafeFsError> {
    if !path.is_absolute() {
        return Err(SafeFsError::NotAbsolute {
            path: path.to_path_buf(),
        });
    }
    let root_fd = rustix::fs::openat(
        CWD,
        "/",
        OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC,
        Mode::empty(),
    )
    .map_err(io_err("open", Path::new("/")))?;
    // The walk's stack: (handle, path, stat, nobody else can have changed the way here).
    struct Step {
        fd: OwnedFd,
        path: PathBuf,
        st: Stat,
        safe_way: bool,
    }
    let root_st = rustix::fs::fstat(&root_fd).map_err(io_err("inspect", Path::new("/")))?;
    let mut stack = vec![Step {
        fd: root_fd,
        path: PathBuf::from("/"),
        st: root_st,
        safe_way: true,
    }];
    let mut created = Vec::new();
    // Components still to walk, last first.
    let mut todo: Vec<OsString> = Vec::new();
    push_components(&mut todo, path);
    let mut links = 0;
    while let Some(name) = todo.pop() {
        if name == "." || name.is_empty() {
            continue;
        }
        if name == ".." {
            if stack.len() > 1 {
                stack.pop();
            }
            continue;
        }
        let cur = stack.last().expect("the walk's stack always holds /");
        let child_path = cur.path.join(&name);
        let here_safe = cur.safe_way && guarded(&cur.st);
        let sticky_safe =
            cur.safe_way && trusted_owner(cur.st.st_uid) && cur.st.st_mode & 0o1000 != 0;
        let st = match rustix::fs::statat(&cur.fd, name.as_os_str(), AtFlags::SYMLINK_NOFOLLOW) {
            Ok(st) => Some(st),
            Err(rustix::io::Errno::NOENT) => None,
            Err(e) => return Err(io_err("inspect", &child_path)(e)),
        };
        let st = match st {
            Some(st) => st,
            None => {
                let Some(create) = create else {
                    return Err(SafeFsError::Io(IoError {
                        action: "open the directory",
                        path: child_path,
                        source: io::Error::from(io::ErrorKind::NotFound),
                    }));
                };
                let meta = create(&child_path);
                let made = match rustix::fs::mkdirat(
                    &cur.fd,
                    name.as_os_str(),
                    Mode::from_raw_mode(0o700),
                ) {
                    Ok(()) => true,
                    Err(rustix::io::Errno::EXIST) => false,
                    Err(e) => return Err(io_err("create the directory", &child_path)(e)),
                };
                let fd = open_nofollow_dir(&cur.fd, &name, &child_path)?;
                if made {
                    apply_meta(&fd, meta).map_err(|source| {
                        SafeFsError::Io(IoError {
                            action: "set the mode and owner of",
                            path: child_path.clone(),
                            source,
                        })
                    })?;
                    created.push(child_path.clone());
                }
                let st = rustix::fs::fstat(&fd).map_err(io_err("inspect", &child_path))?;
                stack.push(Step {
                    fd,
                    path: child_path,
                    st,
                    safe_way: here_safe,
                });
                continue;
            }
        };
        let file_type = FileType::from_raw_mode(st.st_mode);
        if file_type == FileType::Symlink {
            let target = rustix::fs::readlinkat(&cur.fd, name.as_os_str(), Vec::new())
                .map_err(io_err("read the symlink", &child_path))?;
            let target = PathBuf::from(OsStr::from_bytes(target.as_bytes()));
            if !(here_safe || (sticky_safe && trusted_owner(st.st_uid))) {
                return Err(SafeFsError::Symlink {
                    path: child_path,
                    target,
                    dir_owner: cur.st.st_uid,
                });
            }
            links += 1;
            if links > MAX_LINKS {
                return Err(SafeFsError::TooManyLinks {
                    path: path.to_path_buf(),
                });
            }
            if target.is_absolute() {
                stack.truncate(1);
            }
            push_components(&mut todo, &target);
            continue;
        }
        if file_type != FileType::Directory {
            return Err(SafeFsError::NotDir { path: child_path });
        }
        let fd = open_nofollow_dir(&cur.fd, &name, &child_path)?;
        let st = rustix::fs::fstat(&fd).map_err(io_err("inspect", &child_path))?;
        let safe_way = here_safe || (sticky_safe && trusted_owner(st.st_uid));
        stack.push(Step {
            fd,
            path: child_path,
            st,
            safe_way,
        });
    }
    let last = stack.pop().expect("the walk's stack always holds /");
    // The deepest directory nobody else can change, on the same mount (a bind mount of the
    // same file system has the same st_dev, and a rename across it fails with EXDEV).
    let last_mount = mount_id(&last.fd);
    let base = stack.into_iter().rev().find(|s| {
        s.safe_way
            && guarded(&s.st)
            && s.st.st_dev == last.st.st_dev
            && mount_id(&s.fd) == last_mount
    });
    let staging_base = if last.safe_way && guarded(&last.st) {
        None
    } else {
        base.map(|s| {
            Box::new(SafeDir {
                fd: s.fd,
                path: s.path,
                staging_base: None,
                created: Vec::new(),
            })
        })
    };
    Ok(SafeDir {
        fd: last.fd,
        path: last.path,
        staging_base,
        created,
    })
}

/// The mount a directory is on (`statx` `STATX_MNT_ID`, Linux 5.8); `None` where the
/// kernel does not tell, and then only `st_dev` is compared.
fn mount_id(fd: &OwnedFd) -> Option<u64> {
    rustix::fs::statx(fd, "", AtFlags::EMPTY_PATH, rustix::fs::StatxFlags::MNT_ID)
        .ok()
        .filter(|s| s.stx_mask & rustix::fs::StatxFlags::MNT_ID.bits() != 0)
        .map(|s| s.stx_mnt_id)
}

/// Pushes `path`'s components onto `todo` so that the first is popped first.
fn push_components(todo: &mut Vec<OsString>, path: &Path) {
    let names: Vec<OsString> = path
        .components()
        .filter_map(|c| match c {
            Component::Normal(n) => Some(n.to_os_string()),
            Component::ParentDir => Some(OsString::from("..")),
            _ => None,
        })
        .collect();
    todo.extend(names.into_iter().rev());
}

impl SafeDir {
    /// A path to this very directory, whatever happens to the path it was reached by:
    /// `/proc/<pid>/fd/<fd>`, which the kernel resolves to the open directory itself (also
    /// for a child process of ours, such as an exec provider's command).
    pub fn pinned_path(&self) -> PathBuf {
        use std::os::fd::AsRawFd;
        PathBuf::from(format!(
            "/proc/{}/fd/{}",
            std::process::id(),
            self.fd.as_raw_fd()
        ))
    }

    /// Where [`SafeDir::private_dir`] creates its directories.
    pub fn staging_base(&self) -> &Path {
        self.staging_base.as_deref().map_or(&self.path, |b| &b.path)
    }

    /// Creates the directory `name` (mode 0700) in this one and opens it; an existing
    /// entry of that name is an error.
    pub fn create_child_dir(&self, name: &OsStr) -> Result<SafeDir, SafeFsError> {
        let path = self.path.join(name);
        rustix::fs::mkdirat(&self.fd, name, Mode::from_raw_mode(0o700))
            .map_err(io_err("create the directory", &path))?;
        self.child(name)
    }

    /// Creates the symlink `name` → `target` in this directory, owned by `owner` when
    /// running as root (the link itself, never what it points to).
    pub fn symlink(
        &self,
        target: &Path,
        name: &OsStr,
        owner: Option<(u32, u32)>,
    ) -> io::Result<()> {
        rustix::fs::symlinkat(target, &self.fd, name)?;
        if let Some((uid, gid)) = owner {
            if rustix::process::geteuid().is_root() {
                // Through this directory's handle (its pinned path), never the link's
                // target: lchown does not follow the last component.
                std::os::unix::fs::lchown(self.pinned_path().join(name), Some(uid), Some(gid))?;
            }
        }
        Ok(())
    }
}

/// Opens the parent directory of `path` safely (see [`open_dir`]) and returns it with
/// `path`'s file name.
pub fn open_parent(
    path: &Path,
    create: Option<&dyn Fn(&Path) -> NewDir>,
) -> Result<(SafeDir, OsString), SafeFsError> {
    let (Some(parent), Some(name)) = (path.parent(), path.file_name()) else {
        return Err(SafeFsError::NotAbsolute {
            path: path.to_path_buf(),
        });
    };
    Ok((open_dir(parent, create)?, name.to_os_string()))
}

/// `path` with its longest existing prefix resolved (symlinks followed), the rest as
/// written: where a directory not made yet would be.
pub fn resolve_existing_prefix(path: &Path) -> PathBuf {
    let mut existing = path.to_path_buf();
    let mut rest = Vec::new();
    loop {
        if let Ok(real) = std::fs::canonicalize(&existing) {
            return rest.iter().rev().fold(real, |p, c| p.join(c));
        }
        match (
            existing.file_name().map(|n| n.to_os_string()),
            existing.parent(),
        ) {
            (Some(name), Some(parent)) => {
                rest.push(name);
                existing = parent.to_path_buf();
            }
            _ => return path.to_path_buf(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn walks_plain_directories_and_creates_missing_ones() {
        let t = tempfile::tempdir().unwrap();
        let d = t.path().join("a/b/c");
        let dir = open_dir(
            &d,
            Some(&|_| NewDir {
                mode: 0o750,
                owner: None,
            }),
        )
        .unwrap();
        assert_eq!(dir.path(), d);
        assert_eq!(dir.created().len(), 3);
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&d).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o750);
        assert!(open_dir(&t.path().join("missing"), None).is_err());
    }

    #[test]
    fn follows_our_own_symlinks_in_our_own_directories() {
        let t = tempfile::tempdir().unwrap();
        std::fs::create_dir(t.path().join("real")).unwrap();
        std::os::unix::fs::symlink("real", t.path().join("link")).unwrap();
        let dir = open_dir(&t.path().join("link"), None).unwrap();
        assert_eq!(dir.path(), t.path().join("real"));
    }

    #[test]
    fn a_file_on_the_way_is_not_a_directory() {
        let t = tempfile::tempdir().unwrap();
        std::fs::write(t.path().join("f"), "x").unwrap();
        assert!(matches!(
            open_dir(&t.path().join("f/g"), None),
            Err(SafeFsError::NotDir { .. })
        ));
    }

    #[test]
    fn private_dirs_are_new_and_0700() {
        let t = tempfile::tempdir().unwrap();
        let dir = open_dir(t.path(), None).unwrap();
        let a = dir.private_dir(".x-").unwrap();
        let b = dir.private_dir(".x-").unwrap();
        assert_ne!(a.path(), b.path());
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(a.path()).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o700);
    }
}
