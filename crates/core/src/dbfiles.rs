//! Files of a database server, as the database writers (PostgreSQL, MariaDB) handle them:
//! finding a directory inside a copy, cloning a tree to scratch (a reflink where the file
//! system can) and giving files to the user the server runs as.

use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};

use crate::model::CopyView;

use crate::error::{io_err, IoError};

/// A `file:` URI naming `path` for SQLite byte for byte (every byte outside the
/// unreserved characters percent-encoded, so any Linux name survives), with `query`
/// (`mode=ro&immutable=1`).
pub fn sqlite_uri(path: &Path, query: &str) -> String {
    use std::os::unix::ffi::OsStrExt;
    let mut uri = String::from("file:");
    for &b in path.as_os_str().as_bytes() {
        if b.is_ascii_alphanumeric() || b"/-_.~".contains(&b) {
            uri.push(b as char);
        } else {
            uri.push_str(&format!("%{b:02X}"));
        }
    }
    uri.push('?');
    uri.push_str(query);
    uri
}

/// A scratch directory as close to `near` (a file or directory of a copy) as possible,
/// so that a clone of the copy's files shares their blocks: a new directory named
/// `.PREFIX*` in the nearest writable ancestor of `near` for which `usable` says yes
/// (a btrfs snapshot is read-only; the directory holding it is not), else `PREFIX*` in
/// the temp dir.
pub fn scratch_near(
    near: &Path,
    prefix: &str,
    usable: impl Fn(&Path) -> bool,
) -> std::io::Result<tempfile::TempDir> {
    for dir in near.ancestors().skip(1) {
        if let Ok(t) = tempfile::Builder::new()
            .prefix(&format!(".{prefix}"))
            .tempdir_in(dir)
        {
            if usable(t.path()) {
                return Ok(t);
            }
        }
    }
    tempfile::Builder::new().prefix(prefix).tempdir()
}

/// Where the copy holds the directory `original` (found through any file under it).
pub fn copy_root(copy: &CopyView, original: &Path) -> Option<PathBuf> {
    copy.files.iter().find_map(|(o, c)| {
        let rel = o.strip_prefix(original).ok()?;
        let mut root = c.clone();
        for _ in rel.components() {
            root.pop();
        }
        Some(root)
    })
}

/// The user files are given to: the server's owner (`uid`, `gid` of its data directory)
/// when we run as root, else nobody (files stay ours, which is the owner's).
#[derive(Clone, Copy, Debug)]
pub struct Owner {
    pub ids: Option<(u32, u32)>,
}

impl Owner {
    pub fn new(uid: u32, gid: u32) -> Owner {
        Owner {
            ids: rustix::process::geteuid().is_root().then_some((uid, gid)),
        }
    }

    pub fn chown(&self, path: &Path) -> Result<(), IoError> {
        if let Some((uid, gid)) = self.ids {
            std::os::unix::fs::chown(path, Some(uid), Some(gid))
                .map_err(io_err("give to the server's owner", path))?;
        }
        Ok(())
    }

    pub fn lchown(&self, path: &Path) -> Result<(), IoError> {
        if let Some((uid, gid)) = self.ids {
            std::os::unix::fs::lchown(path, Some(uid), Some(gid))
                .map_err(io_err("give to the server's owner", path))?;
        }
        Ok(())
    }

    /// Whether the owner could use `dir` (a new directory of ours) once given it: it is
    /// tried by giving it to the owner and taken back at once, so that it stays closed
    /// to the owner until it is handed over.
    pub fn reachable_yet_ours(&self, dir: &Path) -> bool {
        if self.chown(dir).is_err() || !self.can_enter(dir) {
            return false;
        }
        let me = (rustix::process::geteuid(), rustix::process::getegid());
        std::os::unix::fs::chown(dir, Some(me.0.as_raw()), Some(me.1.as_raw())).is_ok()
    }

    /// Whether the owner can reach and write `dir` (every ancestor traversable).
    pub fn can_enter(&self, dir: &Path) -> bool {
        let Some((uid, gid)) = self.ids else {
            return true;
        };
        std::process::Command::new("test")
            .arg("-w")
            .arg(dir)
            .uid(uid)
            .gid(gid)
            .status()
            .is_ok_and(|s| s.success())
    }

    /// Chowns `path` and everything below it (symlinks themselves, not their targets).
    pub fn chown_tree(&self, path: &Path) -> Result<(), IoError> {
        if self.ids.is_none() {
            return Ok(());
        }
        for e in walkdir::WalkDir::new(path).follow_links(false) {
            let e = e.map_err(walk_error(path))?;
            self.lchown(e.path())?;
        }
        Ok(())
    }
}

/// Makes `dir` and every ancestor traversable by others (`o+x`) where the owner could
/// not pass (a scratch directory under /root, say).
pub fn make_traversable(dir: &Path, owner: &Owner) -> Result<(), IoError> {
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    let Some((uid, _)) = owner.ids else {
        return Ok(());
    };
    for a in dir.ancestors() {
        let Ok(md) = std::fs::metadata(a) else {
            continue;
        };
        if md.uid() != uid && md.mode() & 0o001 == 0 {
            std::fs::set_permissions(
                a,
                std::fs::Permissions::from_mode((md.mode() & 0o7777) | 0o001),
            )
            .map_err(io_err("make traversable", a))?;
        }
    }
    Ok(())
}

fn walk_error(root: &Path) -> impl Fn(walkdir::Error) -> IoError + '_ {
    move |e| IoError {
        action: "read",
        path: e.path().unwrap_or(root).to_path_buf(),
        source: e
            .into_io_error()
            .unwrap_or_else(|| std::io::Error::other("loop")),
    }
}

/// Copies the tree at `src` to `dest` (which must not exist): directories with their
/// modes, symlinks as symlinks, regular files by `std::fs::copy` (copy_file_range: a
/// clone on XFS and btrfs when both are on one file system). Everything created is
/// given to `owner`. `skip` gets paths relative to `src` and leaves those out.
pub fn clone_tree(
    src: &Path,
    dest: &Path,
    owner: &Owner,
    skip: &dyn Fn(&Path) -> bool,
) -> Result<(), IoError> {
    use std::os::unix::fs::PermissionsExt;
    let mut walk = walkdir::WalkDir::new(src).follow_links(false).into_iter();
    while let Some(entry) = walk.next() {
        let entry = entry.map_err(walk_error(src))?;
        let rel = entry.path().strip_prefix(src).unwrap_or(entry.path());
        if !rel.as_os_str().is_empty() && skip(rel) {
            if entry.file_type().is_dir() {
                walk.skip_current_dir();
            }
            continue;
        }
        let target = dest.join(rel);
        let ft = entry.file_type();
        if ft.is_dir() {
            std::fs::create_dir_all(&target).map_err(io_err("create", &target))?;
            let mode = entry
                .metadata()
                .map(|m| m.permissions().mode() & 0o7777)
                .unwrap_or(0o700);
            std::fs::set_permissions(&target, std::fs::Permissions::from_mode(mode | 0o700))
                .map_err(io_err("set the mode of", &target))?;
            owner.chown(&target)?;
        } else if ft.is_symlink() {
            let to = std::fs::read_link(entry.path()).map_err(io_err("read", entry.path()))?;
            std::os::unix::fs::symlink(&to, &target).map_err(io_err("create", &target))?;
            owner.lchown(&target)?;
        } else if ft.is_file() {
            std::fs::copy(entry.path(), &target).map_err(io_err("clone", entry.path()))?;
            owner.chown(&target)?;
        }
    }
    Ok(())
}

/// The name of user `uid` in `/etc/passwd`.
pub fn user_name(uid: u32) -> Option<String> {
    std::fs::read_to_string("/etc/passwd")
        .ok()?
        .lines()
        .find_map(|line| {
            let mut fields = line.split(':');
            let name = fields.next()?;
            (fields.nth(1)? == uid.to_string()).then(|| name.to_string())
        })
}

/// The first port of `range` nothing listens on (TCP, any address), else its start:
/// for a second server started beside the live one.
pub fn free_port(range: std::ops::Range<u16>) -> u16 {
    let start = range.start;
    range
        .into_iter()
        .find(|&p| std::net::TcpListener::bind(("0.0.0.0", p)).is_ok())
        .unwrap_or(start)
}
