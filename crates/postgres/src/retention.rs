//! Log truncation after a verified copy (the "backup complete" step of the original
//! workflow): archived WAL older than what the oldest kept copy needs is expired, as
//! `pg_archivecleanup` would, and never past the start of any copy still kept.
//!
//! A copy needs the WAL from its backup's start on (the REDO point in its
//! `backup_label`); a copy without a label (a `pre-restore` copy of a stopped cluster)
//! needs it from its control file's REDO point. A kept copy whose start cannot be read
//! stops the truncation: nothing is expired on a guess.

use std::path::Path;

use serde::Serialize;
use shadowcopy_core::error::human_bytes;
use shadowcopy_core::model::{CopyId, CopyView};
use shadowcopy_core::writer::{KeptCopy, LogsOffHost};

use crate::archive::{ArchiveError, Expired, WalArchive};
use crate::bin::pg_bin;
use crate::cluster::ClusterLayout;
use crate::files::copy_root;
use crate::label::{redo_file, BackupLabel};
use crate::wal::{SegmentName, WalSegSize};

#[derive(Debug, thiserror::Error)]
pub enum RetentionError {
    #[error("no WAL was expired: the set's other copies could not be listed ({0})")]
    KeptUnknown(String),
    #[error("no WAL was expired: cannot tell where {} starts: {reason}", which(*.id))]
    StartUnknown { id: Option<CopyId>, reason: String },
    #[error(
        "no WAL was expired: the set's archive holds none of its WAL yet \
         (`shadowcopy archive push-logs --set SET` sends it; the agent does after each push)"
    )]
    NotOffHost,
    #[error("expiring WAL from the archive failed")]
    Archive(#[from] ArchiveError),
    #[error(transparent)]
    Wal(#[from] crate::wal::WalError),
}

fn which(id: Option<CopyId>) -> String {
    match id {
        Some(id) => format!("copy {id}"),
        None => "the new copy".into(),
    }
}

/// Where the WAL still needed begins: one copy's start, or the end of what the set's
/// archive off the host holds.
#[derive(Clone, Debug, Serialize)]
pub struct CopyStart {
    /// `None` for the copy being completed (it has no usable id yet in this context) and
    /// for the archive.
    pub id: Option<CopyId>,
    pub segment: String,
    /// `backup_label` or `pg_control` (a copy's start), or `archive`.
    pub from: &'static str,
}

/// What a truncation did.
#[derive(Clone, Debug, Serialize)]
pub struct Truncation {
    /// Files before this segment were expired.
    pub boundary: CopyStart,
    pub expired: Expired,
}

impl Truncation {
    /// One line for the user.
    pub fn summary(&self, archive: &Path) -> String {
        let holder = match (self.boundary.id, self.boundary.from) {
            (_, "archive") => {
                "the newest WAL in the set's archive; what follows is only on this host".into()
            }
            (Some(id), _) => format!("the start of copy {id}, the oldest kept"),
            (None, _) => "the start of this copy; no kept copy needs older WAL".into(),
        };
        match self.expired.removed.len() {
            0 => format!(
                "WAL archive {}: nothing to expire before {} ({holder})",
                archive.display(),
                self.boundary.segment
            ),
            n => format!(
                "WAL archive {}: expired {n} file{} ({}) before {} ({holder})",
                archive.display(),
                if n == 1 { "" } else { "s" },
                human_bytes(self.expired.bytes),
                self.boundary.segment
            ),
        }
    }
}

/// The first WAL segment a roll-forward from `copy` needs.
pub fn copy_start(
    layout: &ClusterLayout,
    copy: &CopyView,
) -> Result<(SegmentName, &'static str), String> {
    let seg_size = WalSegSize::new(layout.wal_segment_size).map_err(|e| e.to_string())?;
    let root = copy_root(copy, &layout.data_dir)
        .ok_or_else(|| format!("it holds nothing of {}", layout.data_dir.display()))?;
    let label_path = copy
        .path_of(&layout.data_dir.join("backup_label"))
        .map(Path::to_path_buf)
        .unwrap_or_else(|| root.join("backup_label"));
    match std::fs::read_to_string(&label_path) {
        Ok(text) => BackupLabel::parse(&text)
            .start_segment(seg_size)
            .map(|s| (s, "backup_label"))
            .ok_or_else(|| format!("{} names no start", label_path.display())),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let tool = pg_bin(layout.version_num, "pg_controldata").map_err(|e| e.to_string())?;
            let file = redo_file(&tool, &root)?;
            SegmentName::parse(&file, seg_size)
                .map(|s| (s, "pg_control"))
                .map_err(|e| e.to_string())
        }
        Err(e) => Err(format!("cannot read {}: {e}", label_path.display())),
    }
}

/// Expires from `archive_dir` what neither `this` copy nor any `kept` copy needs, and,
/// when the set has an archive off the host, only what that archive holds.
pub fn expire_unneeded(
    archive_dir: &Path,
    layout: &ClusterLayout,
    this: &CopyView,
    kept: &[KeptCopy],
    off_host: &LogsOffHost,
) -> Result<Truncation, RetentionError> {
    let seg_size = WalSegSize::new(layout.wal_segment_size)?;
    let start_of = |id: Option<CopyId>, view: &CopyView| {
        copy_start(layout, view)
            .map(|(segment, from)| (id, segment, from))
            .map_err(|reason| RetentionError::StartUnknown { id, reason })
    };
    let mut oldest = start_of(None, this)?;
    for k in kept {
        let candidate = start_of(Some(k.id), &k.view)?;
        // pg_archivecleanup's order: by position, ignoring the timeline.
        if candidate.1.position(seg_size) < oldest.1.position(seg_size) {
            oldest = candidate;
        }
    }
    match off_host {
        LogsOffHost::NoArchive => {}
        LogsOffHost::Through(None) => return Err(RetentionError::NotOffHost),
        LogsOffHost::Through(Some(newest)) => {
            let held = SegmentName::parse(newest, seg_size)?;
            if held.position(seg_size) < oldest.1.position(seg_size) {
                oldest = (None, held, "archive");
            }
        }
    }
    let archive = WalArchive::open(archive_dir)?;
    let expired = archive.expire_before(&oldest.1, seg_size, false)?;
    Ok(Truncation {
        boundary: CopyStart {
            id: oldest.0,
            segment: oldest.1.file_name(seg_size),
            from: oldest.2,
        },
        expired,
    })
}
