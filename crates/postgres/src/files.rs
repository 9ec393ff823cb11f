//! File helpers of the PostgreSQL writer: finding a directory inside a copy, cloning a
//! tree (reflink where the file system can) and giving files to the cluster's owner.

use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};

use shadowcopy_core::model::CopyView;

use crate::cluster::ClusterLayout;

#[derive(Debug, thiserror::Error)]
#[error("cannot {action} {}", .path.display())]
pub struct FileError {
    pub action: &'static str,
    pub path: PathBuf,
    #[source]
    pub source: std::io::Error,
}

fn err<'a>(action: &'static str, path: &'a Path) -> impl FnOnce(std::io::Error) -> FileError + 'a {
    move |source| FileError {
        action,
        path: path.to_path_buf(),
        source,
    }
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

/// The user files are given to: the cluster's owner when we run as root, else nobody
/// (files stay ours, which is the owner's).
#[derive(Clone, Copy, Debug)]
pub struct Owner {
    ids: Option<(u32, u32)>,
}

impl Owner {
    pub fn of(layout: &ClusterLayout) -> Owner {
        Owner {
            ids: rustix::process::geteuid()
                .is_root()
                .then_some((layout.owner_uid, layout.owner_gid)),
        }
    }

    pub fn chown(&self, path: &Path) -> Result<(), FileError> {
        if let Some((uid, gid)) = self.ids {
            std::os::unix::fs::chown(path, Some(uid), Some(gid))
                .map_err(err("give to the cluster's owner", path))?;
        }
        Ok(())
    }

    pub fn lchown(&self, path: &Path) -> Result<(), FileError> {
        if let Some((uid, gid)) = self.ids {
            std::os::unix::fs::lchown(path, Some(uid), Some(gid))
                .map_err(err("give to the cluster's owner", path))?;
        }
        Ok(())
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
) -> Result<(), FileError> {
    use std::os::unix::fs::PermissionsExt;
    let mut walk = walkdir::WalkDir::new(src).follow_links(false).into_iter();
    while let Some(entry) = walk.next() {
        let entry = entry.map_err(|e| FileError {
            action: "read",
            path: e.path().unwrap_or(src).to_path_buf(),
            source: e
                .into_io_error()
                .unwrap_or_else(|| std::io::Error::other("loop")),
        })?;
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
            std::fs::create_dir_all(&target).map_err(err("create", &target))?;
            let mode = entry
                .metadata()
                .map(|m| m.permissions().mode() & 0o7777)
                .unwrap_or(0o700);
            std::fs::set_permissions(&target, std::fs::Permissions::from_mode(mode | 0o700))
                .map_err(err("set the mode of", &target))?;
            owner.chown(&target)?;
        } else if ft.is_symlink() {
            let to = std::fs::read_link(entry.path()).map_err(err("read", entry.path()))?;
            std::os::unix::fs::symlink(&to, &target).map_err(err("create", &target))?;
            owner.lchown(&target)?;
        } else if ft.is_file() {
            std::fs::copy(entry.path(), &target).map_err(err("clone", entry.path()))?;
            owner.chown(&target)?;
        }
    }
    Ok(())
}
