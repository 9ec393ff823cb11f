//! `shadowcopy pg log-analysis ID`: for one copy, which WAL exists after it (in the copy,
//! the archive, the live WAL directory), where the chain has holes, and what each restore
//! mode would reach — the "recovery log analysis" of the original tool.
//!
//! A live WAL directory holds recycled segments: old files renamed to future names,
//! still carrying old content. A live segment counts only when its first page header
//! names its own position and this cluster's system identifier. The newest commit
//! roll-forward reaches is read with `pg_waldump` from the last segment of the chain.

use std::path::{Path, PathBuf};
use std::process::Command;

use serde::Serialize;
use shadowcopy_core::model::CopyView;

use crate::archive::{chain_without_archive, ArchiveError, Chain, Got, WalArchive};
use crate::bin::pg_bin;
use crate::cluster::ClusterLayout;
use crate::files::copy_root;
use crate::label::{self, BackupLabel};
use crate::retention::copy_start;
use crate::wal::{SegmentName, WalFileKind, WalFileName, WalSegSize};

#[derive(Debug, thiserror::Error)]
pub enum AnalysisError {
    #[error("cannot tell where the copy's WAL starts: {0}")]
    NoStart(String),
    #[error("reading the WAL archive failed")]
    Archive(#[from] ArchiveError),
    #[error(transparent)]
    Wal(#[from] crate::wal::WalError),
}

/// Segments found in one place, from the copy's start on.
#[derive(Clone, Debug, Serialize)]
pub struct Found {
    pub dir: PathBuf,
    pub count: usize,
    pub first: Option<String>,
    pub last: Option<String>,
}

/// A hole: segments `first..=last` are nowhere to be found.
#[derive(Clone, Debug, Serialize)]
pub struct Hole {
    pub first: String,
    pub last: String,
    pub segments: u64,
}

/// Where a roll-forward of this copy ends.
#[derive(Clone, Debug, Serialize)]
pub struct RollForwardReach {
    /// The timeline replay follows (the newest whose history includes the copy).
    pub timeline: u32,
    /// The last segment replay can read without a hole.
    pub last_segment: Option<String>,
    /// The first segment it would ask for and not find: replay ends there.
    pub first_missing: String,
    /// Holes followed by WAL that exists but cannot be replayed.
    pub holes: Vec<Hole>,
    /// Segments present after the first hole (lost to a roll-forward).
    pub unreachable_segments: usize,
    /// The newest commit in the last reachable segment (pg_waldump), when one is there.
    pub newest_commit: Option<Commit>,
}

#[derive(Clone, Debug, Serialize)]
pub struct Commit {
    pub xid: u64,
    pub lsn: String,
    pub time: String,
}

#[derive(Clone, Debug, Serialize)]
pub struct PointInTimeReach {
    /// Where the copy becomes consistent (the backup's stop), if the copy says.
    pub stop_lsn: Option<String>,
    pub stop_time: Option<String>,
    /// The copy's last WAL segment.
    pub last_segment: Option<String>,
}

#[derive(Clone, Debug, Serialize)]
pub struct LogAnalysis {
    pub data_dir: PathBuf,
    pub start_segment: String,
    /// `backup_label`, or `pg_control` for a copy made with the server stopped.
    pub start_from: &'static str,
    pub backup: BackupLabel,
    pub in_copy: Found,
    pub archive: Option<Found>,
    /// `None` when the live WAL directory is gone.
    pub live: Option<Found>,
    pub point_in_time: PointInTimeReach,
    pub roll_forward: RollForwardReach,
}

/// Analyses the WAL available to restores of `copy` of the cluster `layout`.
pub fn analyze(
    layout: &ClusterLayout,
    archive_dir: Option<&Path>,
    copy: &CopyView,
) -> Result<LogAnalysis, AnalysisError> {
    let seg_size = WalSegSize::new(layout.wal_segment_size)?;
    let (start, start_from) = copy_start(layout, copy).map_err(AnalysisError::NoStart)?;
    let root = copy_root(copy, &layout.data_dir)
        .ok_or_else(|| AnalysisError::NoStart("the copy holds no data directory".into()))?;

    // The copy's own WAL (and its backup history file, which says where it ends).
    let mut copy_segments = Vec::new();
    let mut backup = BackupLabel::default();
    if let Ok(text) = std::fs::read_to_string(root.join("backup_label")) {
        backup = BackupLabel::parse(&text);
    }
    let mut copy_wal_dir = None;
    for (original, in_copy) in &copy.files {
        if original.parent() != Some(layout.wal_dir.as_path()) {
            continue;
        }
        copy_wal_dir.get_or_insert_with(|| in_copy.parent().map(Path::to_path_buf));
        let name = original.file_name().unwrap_or_default().to_string_lossy();
        if let (Some(timeline), Some(start_lsn)) = (backup.timeline, backup.start_lsn) {
            if name == label::history_file_name(timeline, start_lsn, seg_size) {
                if let Ok(text) = std::fs::read_to_string(in_copy) {
                    backup = BackupLabel::parse(&text);
                }
                continue;
            }
        }
        if let Ok(s) = SegmentName::parse(&name, seg_size) {
            if s.segno >= start.segno {
                copy_segments.push((s, in_copy.clone()));
            }
        }
    }
    copy_segments.sort();
    let in_copy = found(
        copy_wal_dir
            .flatten()
            .unwrap_or_else(|| root.join("pg_wal")),
        copy_segments.iter().map(|(s, _)| *s),
        seg_size,
    );

    let live_segments = live_segments(layout, &start, seg_size);
    let live = live_segments
        .as_ref()
        .map(|segs| found(layout.wal_dir.clone(), segs.iter().copied(), seg_size));

    let archive = archive_dir.map(WalArchive::open).transpose()?;
    let mut archived = Vec::new();
    if let Some(a) = &archive {
        for f in a.list()? {
            if f.kind == WalFileKind::Segment {
                if let Ok(s) = SegmentName::parse(&f.name, seg_size) {
                    if s.segno >= start.segno {
                        archived.push(s);
                    }
                }
            }
        }
        archived.sort();
    }

    let mut elsewhere: Vec<SegmentName> = copy_segments.iter().map(|(s, _)| *s).collect();
    elsewhere.extend(live_segments.iter().flatten().copied());
    let chain = match &archive {
        Some(a) => a.chain_from_with(&start, seg_size, &elsewhere)?,
        None => chain_without_archive(&start, &elsewhere),
    };
    let newest_commit = chain.contiguous.last().and_then(|last| {
        newest_commit(
            layout,
            last,
            seg_size,
            &copy_segments,
            live_segments.as_deref(),
            archive.as_ref(),
        )
    });
    let roll_forward = reach(&chain, newest_commit, seg_size);

    Ok(LogAnalysis {
        data_dir: layout.data_dir.clone(),
        start_segment: start.file_name(seg_size),
        start_from,
        point_in_time: PointInTimeReach {
            stop_lsn: backup.stop_lsn.map(|l| l.to_string()),
            stop_time: backup.stop_time.clone(),
            last_segment: copy_segments.last().map(|(s, _)| s.file_name(seg_size)),
        },
        backup,
        in_copy,
        archive: archive
            .as_ref()
            .map(|a| found(a.dir().to_path_buf(), archived.iter().copied(), seg_size)),
        live,
        roll_forward,
    })
}

fn found(dir: PathBuf, segments: impl Iterator<Item = SegmentName>, seg_size: WalSegSize) -> Found {
    let segments: Vec<SegmentName> = segments.collect();
    Found {
        dir,
        count: segments.len(),
        first: segments.first().map(|s| s.file_name(seg_size)),
        last: segments.last().map(|s| s.file_name(seg_size)),
    }
}

fn reach(chain: &Chain, newest_commit: Option<Commit>, seg_size: WalSegSize) -> RollForwardReach {
    let holes: Vec<Hole> = chain
        .gaps
        .iter()
        .map(|g| Hole {
            first: g.first.file_name(seg_size),
            last: g.last.file_name(seg_size),
            segments: g.last.segno - g.first.segno + 1,
        })
        .collect();
    let unreachable_segments = match (chain.gaps.first(), chain.last_present) {
        (Some(g), Some(last)) => {
            let span = last.segno.saturating_sub(g.first.segno) + 1;
            let missing: u64 = holes.iter().map(|h| h.segments).sum();
            (span - missing) as usize
        }
        _ => 0,
    };
    RollForwardReach {
        timeline: chain.timeline,
        last_segment: chain.contiguous.last().map(|s| s.file_name(seg_size)),
        first_missing: chain.first_missing.file_name(seg_size),
        holes,
        unreachable_segments,
        newest_commit,
    }
}

/// Segments of the live WAL directory from `start` on that hold this cluster's WAL for
/// their own position (recycled files carry an older page address). `None` when the
/// directory cannot be read.
fn live_segments(
    layout: &ClusterLayout,
    start: &SegmentName,
    seg_size: WalSegSize,
) -> Option<Vec<SegmentName>> {
    let entries = std::fs::read_dir(&layout.wal_dir).ok()?;
    let sysid: Option<u64> = layout.system_identifier.parse().ok();
    let mut out = Vec::new();
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        let Some(parsed) = WalFileName::parse(&name) else {
            continue;
        };
        if parsed.kind != WalFileKind::Segment {
            continue;
        }
        let Ok(s) = SegmentName::parse(&name, seg_size) else {
            continue;
        };
        if s.segno >= start.segno && holds_own_wal(&entry.path(), &s, seg_size, sysid) {
            out.push(s);
        }
    }
    out.sort();
    Some(out)
}

/// The WAL segments in a copy that no recovery from it reads: those before its backup's
/// start, and recycled ones (old files renamed to future names, whose pages carry an
/// older address: recovery stops at the first of them, as it would at a missing file).
/// As the copy's original paths. Empty when the copy's start cannot be read: then
/// nothing is left out.
pub fn wal_not_needed(layout: &ClusterLayout, copy: &CopyView) -> Vec<PathBuf> {
    let Ok(seg_size) = WalSegSize::new(layout.wal_segment_size) else {
        return Vec::new();
    };
    let Ok((start, _)) = crate::retention::copy_start(layout, copy) else {
        return Vec::new();
    };
    let sysid: Option<u64> = layout.system_identifier.parse().ok();
    let mut out = Vec::new();
    for (original, in_copy) in &copy.files {
        if original.parent() != Some(layout.wal_dir.as_path()) {
            continue;
        }
        let Some(name) = original.file_name().and_then(|n| n.to_str()) else {
            continue;
        };
        if WalFileName::parse(name).is_none_or(|p| p.kind != WalFileKind::Segment) {
            continue;
        }
        let Ok(s) = SegmentName::parse(name, seg_size) else {
            continue;
        };
        if s.segno < start.segno || !holds_own_wal(in_copy, &s, seg_size, sysid) {
            out.push(original.clone());
        }
    }
    out
}

/// Whether the segment's first page was written for this position of this cluster. Its
/// long page header (`XLogLongPageHeaderData`): magic u16, info u16, timeline u32, page
/// address u64 at 8, rem_len u32 at 16, padding, system identifier u64 at 24.
fn holds_own_wal(path: &Path, s: &SegmentName, seg_size: WalSegSize, sysid: Option<u64>) -> bool {
    use std::io::Read;
    let mut header = [0u8; 32];
    let read = std::fs::File::open(path).and_then(|mut f| f.read_exact(&mut header));
    read.is_ok() && header_is_own(&header, s, seg_size, sysid)
}

/// [`holds_own_wal`] of a segment's first 32 bytes.
pub(crate) fn header_is_own(
    header: &[u8; 32],
    s: &SegmentName,
    seg_size: WalSegSize,
    sysid: Option<u64>,
) -> bool {
    let u64_at = |o: usize| u64::from_le_bytes(header[o..o + 8].try_into().unwrap_or_default());
    let page_address = u64_at(8);
    let file_sysid = u64_at(24);
    page_address == s.start_lsn(seg_size).0 && sysid.is_none_or(|id| id == file_sysid)
}

/// The newest commit in `last` (read where the segment is: the live directory, the
/// copy, or the archive through a temp file), or in the two segments before it.
fn newest_commit(
    layout: &ClusterLayout,
    last: &SegmentName,
    seg_size: WalSegSize,
    copy_segments: &[(SegmentName, PathBuf)],
    live: Option<&[SegmentName]>,
    archive: Option<&WalArchive>,
) -> Option<Commit> {
    let waldump = pg_bin(layout.version_num, "pg_waldump").ok()?;
    let scratch = tempfile::tempdir().ok()?;
    let mut seg = *last;
    for _ in 0..3 {
        let name = seg.file_name(seg_size);
        let path = if live.is_some_and(|l| l.contains(&seg)) {
            Some(layout.wal_dir.join(&name))
        } else if let Some((_, p)) = copy_segments.iter().find(|(s, _)| *s == seg) {
            Some(p.clone())
        } else if let Some(a) = archive {
            let dest = scratch.path().join(&name);
            matches!(a.get(&name, &dest), Ok(Got::Restored { .. })).then_some(dest)
        } else {
            None
        };
        if let Some(commit) = path.and_then(|p| last_commit_in(&waldump, &p)) {
            return Some(commit);
        }
        if seg.segno == 0 {
            break;
        }
        seg.segno -= 1;
    }
    None
}

/// The last `COMMIT` record `pg_waldump --rmgr=Transaction` prints for one segment. It
/// exits non-zero at the end of the WAL, which is expected; what it printed counts.
fn last_commit_in(waldump: &Path, segment: &Path) -> Option<Commit> {
    let out = Command::new(waldump)
        .arg("--rmgr=Transaction")
        .arg(segment)
        .env("LC_ALL", "C")
        // Commit times in UTC, whatever this host's zone (`expose --until` compares them).
        .env("TZ", "UTC")
        .output()
        .ok()?;
    parse_last_commit(&String::from_utf8_lossy(&out.stdout))
}

fn parse_last_commit(dump: &str) -> Option<Commit> {
    dump.lines().rev().find_map(|line| {
        let (_, desc) = line.split_once("desc: COMMIT ")?;
        let xid = line
            .split_once("tx:")?
            .1
            .split(',')
            .next()?
            .trim()
            .parse()
            .ok()?;
        let lsn = line
            .split_once("lsn:")?
            .1
            .split(',')
            .next()?
            .trim()
            .to_string();
        // "2026-11-22 10:00:02.123456 UTC; ..." (subtransactions, invalidations follow)
        let time = desc.split(';').next()?.trim().to_string();
        Some(Commit { xid, lsn, time })
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn recycled_segments_do_not_count_as_wal() {
        let dir = tempfile::tempdir().unwrap();
        let seg = SegmentName {
            timeline: 1,
            segno: 8,
        };
        let size = WalSegSize::DEFAULT;
        let write = |page_address: u64, sysid: u64| {
            let mut header = vec![0u8; 64];
            header[0..2].copy_from_slice(&0xD110u16.to_le_bytes());
            header[8..16].copy_from_slice(&page_address.to_le_bytes());
            header[24..32].copy_from_slice(&sysid.to_le_bytes());
            let path = dir.path().join(seg.file_name(size));
            std::fs::write(&path, header).unwrap();
            path
        };
        let own = write(8 * size.bytes(), 42);
        assert!(holds_own_wal(&own, &seg, size, Some(42)));
        assert!(holds_own_wal(&own, &seg, size, None));
        assert!(
            !holds_own_wal(&own, &seg, size, Some(43)),
            "another cluster's WAL"
        );
        let recycled = write(3 * size.bytes(), 42);
        assert!(
            !holds_own_wal(&recycled, &seg, size, Some(42)),
            "an old segment renamed"
        );
        std::fs::write(&recycled, [0u8; 8]).unwrap();
        assert!(!holds_own_wal(&recycled, &seg, size, Some(42)), "too short");
    }

    #[test]
    fn the_last_commit_line_wins() {
        let dump = "\
rmgr: Transaction len (rec/tot):     34/    34, tx:        735, lsn: 0/03000F28, prev 0/03000EE8, desc: COMMIT 2026-11-22 10:00:01.100000 UTC
rmgr: Transaction len (rec/tot):     46/    46, tx:        736, lsn: 0/03001028, prev 0/03000FE8, desc: COMMIT 2026-11-22 10:00:02.123456 UTC; inval msgs: catcache 7
rmgr: Transaction len (rec/tot):     34/    34, tx:        737, lsn: 0/03001128, prev 0/030010E8, desc: ABORT 2026-11-22 10:00:03.000000 UTC
";
        let c = parse_last_commit(dump).unwrap();
        assert_eq!(c.xid, 736);
        assert_eq!(c.lsn, "0/03001028");
        assert_eq!(c.time, "2026-11-22 10:00:02.123456 UTC");
        assert!(parse_last_commit("pg_waldump: error: no valid record").is_none());
    }
}
