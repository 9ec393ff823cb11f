//! Expiry: archived WAL that no kept copy needs is removed the way `pg_archivecleanup`
//! does, oldest first, so an interrupted expiry never leaves a hole in the chain.

use std::fs;
use std::io;

use crate::wal::{SegmentName, WalFileKind, WalFileName, WalSegSize};

use super::{sync_dir, ArchiveError, ArchivedFile, Result, WalArchive};

/// What [`WalArchive::expire_before`] removed (or would remove, with `dry_run`).
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct Expired {
    /// WAL file names, oldest first.
    pub removed: Vec<String>,
    /// Stored bytes of those files.
    pub bytes: u64,
    pub dry_run: bool,
}

impl WalArchive {
    /// Removes the segments, `.partial` and `.backup` files whose log/seg position is
    /// before `oldest_needed` (compared like `pg_archivecleanup`, ignoring the timeline),
    /// oldest first. Timeline history files are never removed. With `dry_run`, only
    /// reports what it would remove.
    pub fn expire_before(
        &self,
        oldest_needed: &SegmentName,
        seg_size: WalSegSize,
        dry_run: bool,
    ) -> Result<Expired> {
        let boundary = oldest_needed.position(seg_size);
        let mut doomed: Vec<(crate::wal::WalPosition, ArchivedFile)> = self
            .list()?
            .into_iter()
            .filter_map(|f| {
                let parsed = WalFileName::parse(&f.name)?;
                match parsed.kind {
                    WalFileKind::TimelineHistory => None,
                    _ => parsed.position.filter(|p| *p < boundary).map(|p| (p, f)),
                }
            })
            .collect();
        doomed.sort_by(|a, b| a.0.cmp(&b.0).then_with(|| a.1.name.cmp(&b.1.name)));
        let mut expired = Expired {
            dry_run,
            ..Expired::default()
        };
        for (_, file) in doomed {
            if !dry_run {
                let path = self.stored_path(&file.name);
                match fs::remove_file(&path) {
                    Ok(()) => {}
                    Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
                    Err(source) => {
                        // keep what was removed so far durable before reporting
                        let _ = sync_dir(&self.dir);
                        return Err(ArchiveError::Remove { path, source });
                    }
                }
            }
            expired.bytes += file.stored_bytes;
            expired.removed.push(file.name);
        }
        if !dry_run && !expired.removed.is_empty() {
            sync_dir(&self.dir).map_err(|source| ArchiveError::Remove {
                path: self.dir.clone(),
                source,
            })?;
        }
        Ok(expired)
    }
}
