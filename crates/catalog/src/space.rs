//! Room to delete on a full file system. SQLite needs space to write anything (its
//! `-shm` index and write-ahead log), so a catalog on a full file system could not even
//! record the deletion that would free space. Each catalog therefore keeps a small
//! preallocated file, `space.reserve`: [`Catalog::open_to_free_space`] (used by
//! `delete`) removes it when the file system is full, and the next command that opens
//! the catalog read-write makes it again once there is room.
//!
//! Also here: telling a full file system from other failures, so the message says so.

use std::fs::OpenOptions;
use std::io;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use rusqlite::ErrorCode;
use rustix::fs::FallocateFlags;

use crate::{Access, Catalog, CatalogError, PRIVATE_FILE_MODE};

/// The reserve's file name in the catalog directory.
pub const RESERVE_FILE: &str = "space.reserve";

/// Its size: a deletion writes little (the rows go in small transactions and the
/// write-ahead log is checkpointed often, see [`Catalog::open_to_free_space`]), so a few
/// hundred KiB hold the `-shm` index, the log and the queue files: 1 MiB leaves room.
pub const RESERVE_BYTES: u64 = 1 << 20;

/// Below this much free space (for the current user) a file system counts as full
/// when SQLite reports an I/O error.
const NEARLY_FULL_BYTES: u64 = 1 << 20;

fn reserve_path(dir: &Path) -> PathBuf {
    dir.join(RESERVE_FILE)
}

/// Makes the reserve if it is missing or short, best effort: on a file system without
/// room for it, nothing is left behind and the catalog goes on without one.
pub(crate) fn ensure_reserve(dir: &Path) {
    let path = reserve_path(dir);
    if std::fs::metadata(&path).is_ok_and(|m| m.len() >= RESERVE_BYTES) {
        return;
    }
    let mut tmp = path.clone().into_os_string();
    tmp.push(".tmp");
    let tmp = PathBuf::from(tmp);
    let made = (|| -> io::Result<()> {
        // A leftover of an earlier attempt is removed (never followed), the file created
        // exclusively.
        match std::fs::remove_file(&tmp) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(e),
            _ => {}
        }
        let file = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(PRIVATE_FILE_MODE)
            .open(&tmp)?;
        rustix::fs::fallocate(&file, FallocateFlags::empty(), 0, RESERVE_BYTES)?;
        file.sync_all()?;
        std::fs::rename(&tmp, &path)
    })();
    if let Err(e) = made {
        let _ = std::fs::remove_file(&tmp);
        tracing::debug!(error = %e, "no room for the catalog's space reserve");
    }
}

/// Removes the reserve; true when there was one.
fn release_reserve(dir: &Path) -> bool {
    let released = std::fs::remove_file(reserve_path(dir)).is_ok();
    if released {
        tracing::info!("the file system is full: released the catalog's space reserve");
    }
    released
}

/// Whether the file system holding `dir` has (nearly) no room left for us, in blocks
/// or in inodes. Root may use the blocks reserved for it.
pub(crate) fn fs_full(dir: &Path) -> bool {
    let Ok(s) = rustix::fs::statvfs(dir) else {
        return false;
    };
    let root = rustix::process::geteuid().is_root();
    let (blocks, inodes) = if root {
        (s.f_bfree, s.f_ffree)
    } else {
        (s.f_bavail, s.f_favail)
    };
    blocks.saturating_mul(s.f_frsize) < NEARLY_FULL_BYTES || (s.f_files > 0 && inodes == 0)
}

pub(crate) fn is_enospc(e: &io::Error) -> bool {
    e.raw_os_error() == Some(rustix::io::Errno::NOSPC.raw_os_error())
}

/// Whether SQLite failed because the file system is full: it says so (`SQLITE_FULL`),
/// or it reports an I/O error (growing the `-shm` index, say) on a file system that is
/// full.
pub(crate) fn is_full(e: &rusqlite::Error, dir: &Path) -> bool {
    match e.sqlite_error_code() {
        Some(ErrorCode::DiskFull) => true,
        Some(ErrorCode::SystemIoFailure | ErrorCode::CannotOpen) => fs_full(dir),
        _ => false,
    }
}

/// A full file system where the reserve is gone too: only freeing space by hand helps.
fn no_room_left(e: CatalogError) -> CatalogError {
    match e {
        CatalogError::Full { dir, source } => CatalogError::FullWithoutReserve { dir, source },
        e => e,
    }
}

impl Catalog {
    /// Opens an existing catalog to delete copies, also on a full file system: when the
    /// file system is full, the space reserve is given back first. The connection then
    /// checkpoints its write-ahead log often, so a large deletion needs little room.
    pub fn open_to_free_space(dir: &Path) -> Result<Catalog, CatalogError> {
        let dir = std::path::absolute(dir).unwrap_or_else(|_| dir.to_path_buf());
        if fs_full(&dir) {
            release_reserve(&dir);
        }
        let open = || Catalog::open_as(&dir, Access::FreeSpace);
        let catalog = match open() {
            Err(CatalogError::Full { .. }) if release_reserve(&dir) => open(),
            other => other,
        }
        .map_err(no_room_left)?;
        catalog
            .conn
            .pragma_update(None, "wal_autocheckpoint", 32)
            .map_err(|e| catalog.sql(e))?;
        Ok(catalog)
    }

    /// Runs a write; when it fails on a full file system, gives back the space reserve
    /// (if there is one) and tries once more.
    pub(crate) fn with_room<T>(
        &self,
        write: impl Fn() -> rusqlite::Result<T>,
    ) -> Result<T, CatalogError> {
        match write() {
            Err(e) if is_full(&e, &self.dir) && release_reserve(&self.dir) => {
                write().map_err(|e| no_room_left(self.sql(e)))
            }
            other => other.map_err(|e| no_room_left(self.sql(e))),
        }
    }

    /// Makes the space reserve again after a deletion freed room (best effort); false
    /// when there is still no room for it.
    pub fn restore_reserve(&self) -> bool {
        ensure_reserve(&self.dir);
        std::fs::metadata(reserve_path(&self.dir)).is_ok_and(|m| m.len() >= RESERVE_BYTES)
    }
}
