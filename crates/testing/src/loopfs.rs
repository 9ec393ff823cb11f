//! Real file systems on loop devices for tests (root only): an image file in a temp dir,
//! `mkfs`, `mount -o loop`; dropping the [`LoopFs`] unmounts it and removes the image,
//! also when the test panics.
//!
//! Tests that need one start with [`require_root`] (and [`require_tool`] for the mkfs
//! tool), or simply call [`loopfs_or_skip`]. Without root a test prints why it skips and
//! passes — unless `SHADOWCOPY_TEST_REQUIRE_ROOT=1`, under which a skip is a failure.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

/// The environment variable that turns skips into failures.
pub const REQUIRE_ROOT_ENV: &str = "SHADOWCOPY_TEST_REQUIRE_ROOT";

/// The file systems a test can make.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FsKind {
    Xfs,
    Btrfs,
    Ext4,
}

impl FsKind {
    pub fn name(self) -> &'static str {
        match self {
            FsKind::Xfs => "xfs",
            FsKind::Btrfs => "btrfs",
            FsKind::Ext4 => "ext4",
        }
    }

    /// The mkfs tool and its arguments before the image path.
    fn mkfs(self) -> (&'static str, &'static [&'static str]) {
        match self {
            FsKind::Xfs => ("mkfs.xfs", &["-q"]),
            FsKind::Btrfs => ("mkfs.btrfs", &["-q"]),
            FsKind::Ext4 => ("mkfs.ext4", &["-q", "-F"]),
        }
    }

    /// The smallest size its mkfs accepts (XFS wants 300 MiB, btrfs about 114 MiB).
    pub fn min_size(self) -> u64 {
        match self {
            FsKind::Xfs => 300 << 20,
            FsKind::Btrfs => 128 << 20,
            FsKind::Ext4 => 8 << 20,
        }
    }
}

fn skips_fail() -> bool {
    std::env::var(REQUIRE_ROOT_ENV).is_ok_and(|v| v == "1")
}

/// Says why `test` skips (returns false), or panics under
/// `SHADOWCOPY_TEST_REQUIRE_ROOT=1`, where a skip is a failure.
pub fn skip_or_fail(test: &str, why: &str) -> bool {
    skip(test, why)
}

pub(crate) fn skip(test: &str, why: &str) -> bool {
    if skips_fail() {
        panic!("{test} cannot run: {why}; a skip is a failure under {REQUIRE_ROOT_ENV}=1");
    }
    eprintln!("skipping {test}: {why}");
    false
}

/// True when running as root (euid 0). Otherwise prints why `test` skips and returns
/// false, or panics under `SHADOWCOPY_TEST_REQUIRE_ROOT=1`.
pub fn require_root(test: &str) -> bool {
    if rustix::process::geteuid().is_root() {
        return true;
    }
    skip(test, "needs root to mount loop-device file systems")
}

/// Whether `tool` is on the PATH (or in /sbin, /usr/sbin).
pub fn has_tool(tool: &str) -> bool {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain([PathBuf::from("/usr/sbin"), PathBuf::from("/sbin")])
        .any(|d| d.join(tool).is_file())
}

/// True when `tool` is installed; otherwise skips like [`require_root`].
pub fn require_tool(test: &str, tool: &str) -> bool {
    if has_tool(tool) {
        return true;
    }
    skip(
        test,
        &format!("{tool} is not installed (apt-get install xfsprogs btrfs-progs)"),
    )
}

/// A mounted loop-device file system, unmounted and removed on drop.
#[derive(Debug)]
pub struct LoopFs {
    /// Where the file system is mounted.
    pub mount: PathBuf,
    pub kind: FsKind,
    image: PathBuf,
    mounted: bool,
    dir: Option<tempfile::TempDir>,
}

fn run(cmd: &mut Command) -> Result<(), String> {
    let out = cmd
        .output()
        .map_err(|e| format!("cannot run {cmd:?}: {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "{cmd:?} failed ({}): {}{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ))
    }
}

impl LoopFs {
    /// Makes and mounts a file system of `kind` in an image of `size_bytes` (raised to
    /// the kind's minimum). Needs root and the mkfs tool.
    pub fn new(kind: FsKind, size_bytes: u64) -> Result<LoopFs, String> {
        LoopFs::new_in(kind, size_bytes, &std::env::temp_dir())
    }

    /// [`LoopFs::new`] with the image and mount point in a new directory under `parent`
    /// (another loop file system, say, so that a stalled one stalls this one too).
    pub fn new_in(kind: FsKind, size_bytes: u64, parent: &Path) -> Result<LoopFs, String> {
        let dir = tempfile::Builder::new()
            .prefix(&format!("shadowcopy-{}-", kind.name()))
            .tempdir_in(parent)
            .map_err(|e| format!("cannot create a temp dir: {e}"))?;
        let image = dir.path().join("fs.img");
        let mount = dir.path().join("mnt");
        std::fs::create_dir(&mount)
            .map_err(|e| format!("cannot create {}: {e}", mount.display()))?;
        let file = std::fs::File::create(&image)
            .map_err(|e| format!("cannot create {}: {e}", image.display()))?;
        file.set_len(size_bytes.max(kind.min_size()))
            .map_err(|e| format!("cannot size {}: {e}", image.display()))?;
        drop(file);
        let (tool, args) = kind.mkfs();
        run(Command::new(tool).args(args).arg(&image))?;
        let mut fs = LoopFs {
            mount,
            kind,
            image,
            mounted: false,
            dir: Some(dir),
        };
        run(Command::new("mount")
            .arg("-o")
            .arg("loop")
            .arg(&fs.image)
            .arg(&fs.mount))?;
        fs.mounted = true;
        Ok(fs)
    }

    pub fn path(&self) -> &Path {
        &self.mount
    }

    /// Bytes free for an unprivileged writer.
    pub fn free_bytes(&self) -> u64 {
        rustix::fs::statvfs(&self.mount)
            .map(|s| s.f_bavail * s.f_frsize)
            .unwrap_or(0)
    }
}

impl Drop for LoopFs {
    fn drop(&mut self) {
        if self.mounted {
            // A test that failed while the file system was frozen must not leave it so:
            // thaw first (harmless when not frozen), or unmounting would detach a frozen
            // file system that nothing could thaw any more.
            let _ = Command::new("fsfreeze").arg("-u").arg(&self.mount).output();
            let mut ok = false;
            for attempt in 0..5 {
                if Command::new("umount")
                    .arg(&self.mount)
                    .output()
                    .is_ok_and(|o| o.status.success())
                {
                    ok = true;
                    break;
                }
                std::thread::sleep(Duration::from_millis(100 * (attempt + 1)));
            }
            if !ok {
                eprintln!(
                    "umount {} keeps failing; detaching it lazily",
                    self.mount.display()
                );
                let _ = Command::new("umount").arg("-l").arg(&self.mount).output();
            }
            self.mounted = false;
        }
        // Removes the image and the (now empty) mount point.
        drop(self.dir.take());
    }
}

/// [`require_root`], [`require_tool`] and [`LoopFs::new`] in one call: `None` means
/// skip. A failure to make the file system panics (it is not a reason to skip).
pub fn loopfs_or_skip(test: &str, kind: FsKind, size_bytes: u64) -> Option<LoopFs> {
    if !require_root(test) || !require_tool(test, kind.mkfs().0) {
        return None;
    }
    match LoopFs::new(kind, size_bytes) {
        Ok(fs) => Some(fs),
        Err(e) => panic!(
            "{test}: cannot make a {} loop file system: {e}",
            kind.name()
        ),
    }
}
