//! Read-only bind mounts of a copy's directories, for exposing a copy of plain files
//! (a set whose writers open nothing): the copy's tree appears below the exposure's
//! scratch directory, readable as it is, unwritable (the mount is read-only, whatever the
//! files' modes say), and the copy's own directory is never touched.
//!
//! Closing unmounts everything below the scratch directory, found in the kernel's mount
//! table (`/proc/self/mountinfo`) rather than in the catalog, so a mount made by a
//! command killed before it recorded it is found as well; nothing below a mount point is
//! ever removed while it is mounted.

use std::path::{Path, PathBuf};

use rustix::mount::{mount_bind, mount_remount, unmount, MountFlags, UnmountFlags};

/// Mounts `src` at `dest` (an empty directory) read-only: a bind mount, then a remount
/// of that bind read-only (the kernel takes `ro` only on the second call). Undone when
/// the second call fails.
pub fn mount_read_only(src: &Path, dest: &Path) -> anyhow::Result<()> {
    mount_bind(src, dest).map_err(|e| {
        anyhow::anyhow!(
            "cannot bind-mount {} at {}: {e}{}",
            src.display(),
            dest.display(),
            if e == rustix::io::Errno::PERM {
                " (a bind mount needs root)"
            } else {
                ""
            }
        )
    })?;
    if let Err(e) = mount_remount(
        dest,
        MountFlags::BIND | MountFlags::RDONLY | MountFlags::NOSUID | MountFlags::NODEV,
        "",
    ) {
        let _ = unmount(dest, UnmountFlags::DETACH);
        return Err(anyhow::anyhow!(
            "cannot make the bind mount at {} read-only: {e}; it was undone",
            dest.display()
        ));
    }
    Ok(())
}

/// Unmounts every mount at or below `dir`, deepest first. An error names the mount
/// left, so that nothing below it is removed.
pub fn unmount_below(dir: &Path) -> anyhow::Result<()> {
    let mut points = mounts_below(dir);
    points.sort_by_key(|p| std::cmp::Reverse(p.components().count()));
    for p in points {
        // Never through a link: a directory below the scratch that its owner swapped for
        // a link must not take root's unmount elsewhere.
        unmount(&p, UnmountFlags::NOFOLLOW)
            .or_else(|_| unmount(&p, UnmountFlags::NOFOLLOW | UnmountFlags::DETACH))
            .map_err(|e| anyhow::anyhow!("cannot unmount {}: {e}", p.display()))?;
    }
    Ok(())
}

/// Mount points at or below `dir`, from `/proc/self/mountinfo` (field 5, with the
/// kernel's octal escapes of spaces and the like undone).
fn mounts_below(dir: &Path) -> Vec<PathBuf> {
    let Ok(info) = std::fs::read_to_string("/proc/self/mountinfo") else {
        return Vec::new();
    };
    info.lines()
        .filter_map(|line| line.split(' ').nth(4))
        .map(|field| PathBuf::from(unescape(field)))
        .filter(|p| p.starts_with(dir))
        .collect()
}

/// `\040` and the other octal escapes of mountinfo, as bytes.
fn unescape(field: &str) -> std::ffi::OsString {
    use std::os::unix::ffi::OsStringExt;
    let bytes = field.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let escape = bytes
            .get(i + 1..i + 4)
            .filter(|d| bytes[i] == b'\\' && d.iter().all(|b| (b'0'..=b'7').contains(b)));
        match escape {
            Some(d) => {
                out.push(d.iter().fold(0u8, |v, b| v.wrapping_mul(8) + (b - b'0')));
                i += 4;
            }
            None => {
                out.push(bytes[i]);
                i += 1;
            }
        }
    }
    std::ffi::OsString::from_vec(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mountinfo_escapes_are_undone() {
        assert_eq!(unescape("/srv/a\\040b"), "/srv/a b");
        assert_eq!(unescape("/plain"), "/plain");
        assert_eq!(unescape("/tail\\"), "/tail\\");
    }
}
