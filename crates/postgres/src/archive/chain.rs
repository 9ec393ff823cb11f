//! The WAL chain a roll-forward can replay from the archive: which segments follow a
//! start without a hole, where the holes are, following timeline switches recorded in
//! history files the way `recovery_target_timeline = 'latest'` does.

use std::collections::HashSet;

use crate::wal::{history_file_name, Lsn, SegmentName, WalFileKind, WalFileName, WalSegSize};

use super::{decode_body, open_stored, ArchiveError, Result, WalArchive};

/// A range of missing segments, `first..=last`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct Gap {
    pub first: SegmentName,
    pub last: SegmentName,
}

/// The WAL a roll-forward from a segment can find in the archive ([`WalArchive::chain_from`]).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Chain {
    pub start: SegmentName,
    /// The timeline whose history was followed: the newest timeline in the archive whose
    /// history includes the start (as `recovery_target_timeline = 'latest'`), or the start's.
    pub timeline: u32,
    /// Segments present from `start` on without a hole, each on the timeline that owns it.
    pub contiguous: Vec<SegmentName>,
    /// The first segment after the contiguous run that the archive lacks: replay stops here.
    pub first_missing: SegmentName,
    /// Missing ranges followed by segments that are present (holes in the chain), in order.
    /// Empty when the archive simply ends at `first_missing`.
    pub gaps: Vec<Gap>,
    /// The newest segment on the followed timelines that the archive holds, if any.
    pub last_present: Option<SegmentName>,
}

impl WalArchive {
    /// The segments a roll-forward starting at `start` can replay from the archive, and
    /// where the chain has holes. Follows timeline switches recorded in history files.
    pub fn chain_from(&self, start: &SegmentName, seg_size: WalSegSize) -> Result<Chain> {
        self.chain_from_with(start, seg_size, &[])
    }

    /// [`WalArchive::chain_from`] counting `elsewhere` (segments a restore also finds: in
    /// the copy, in the live WAL directory) as present too.
    pub fn chain_from_with(
        &self,
        start: &SegmentName,
        seg_size: WalSegSize,
        elsewhere: &[SegmentName],
    ) -> Result<Chain> {
        let files = self.list()?;
        let mut present: HashSet<(u32, u64)> =
            elsewhere.iter().map(|s| (s.timeline, s.segno)).collect();
        let mut history_timelines = Vec::new();
        for f in &files {
            match f.kind {
                WalFileKind::Segment => match SegmentName::parse(&f.name, seg_size) {
                    Ok(s) => {
                        present.insert((s.timeline, s.segno));
                    }
                    Err(e) => tracing::debug!(name = %f.name, error = %e, "segment ignored"),
                },
                WalFileKind::TimelineHistory => {
                    if let Some(p) = WalFileName::parse(&f.name) {
                        history_timelines.push(p.timeline);
                    }
                }
                _ => {}
            }
        }
        // The newest timeline whose history includes the start before its switch point.
        history_timelines.sort_unstable_by(|a, b| b.cmp(a));
        let mut target = start.timeline;
        let mut path = vec![TimelineEntry {
            timeline: start.timeline,
            begin_segno: 0,
        }];
        for tli in history_timelines {
            if tli < start.timeline {
                break;
            }
            let history = self.read_history(tli)?;
            if tli == start.timeline {
                path = timeline_path(tli, &history, seg_size);
                break;
            }
            let reaches = history.iter().any(|(parent, end)| {
                *parent == start.timeline && start.segno <= end.0 / seg_size.bytes()
            });
            if reaches {
                target = tli;
                path = timeline_path(tli, &history, seg_size);
                break;
            }
        }
        // Which timeline owns a segment: the newest whose begin is at or before it (what
        // PostgreSQL's XLogFileReadAnyTLI tries first).
        let owner = |segno: u64| -> u32 {
            path.iter()
                .rev()
                .find(|e| e.begin_segno <= segno)
                .map_or(target, |e| e.timeline)
        };
        let on_path: Vec<u64> = present
            .iter()
            .filter(|(tli, segno)| *segno >= start.segno && owner(*segno) == *tli)
            .map(|(_, segno)| *segno)
            .collect();
        Ok(walk_chain(start, target, on_path, owner))
    }

    /// Reads timeline `tli`'s history file: (ancestor timeline, LSN where it ended), oldest
    /// first.
    fn read_history(&self, tli: u32) -> Result<Vec<(u32, Lsn)>> {
        let name = history_file_name(tli);
        let path = self.stored_path(&name);
        let Some((reader, record)) = open_stored(&path, &name)? else {
            return Ok(Vec::new());
        };
        let mut text = Vec::new();
        decode_body(reader, &record, &name, &path, |chunk| {
            text.extend_from_slice(chunk);
            Ok(())
        })?;
        let corrupt = |detail: String| ArchiveError::Corrupt {
            name: name.clone(),
            path: path.clone(),
            detail,
        };
        let text = String::from_utf8(text)
            .map_err(|_| corrupt("the timeline history is not text".into()))?;
        let mut entries = Vec::new();
        for (i, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let mut fields = line.split_whitespace();
            let parsed = match (fields.next(), fields.next()) {
                (Some(t), Some(l)) => t.parse::<u32>().ok().zip(l.parse::<Lsn>().ok()),
                _ => None,
            };
            let entry = parsed.ok_or_else(|| {
                corrupt(format!(
                    "line {} of the timeline history is not `parentTLI switchpoint reason`",
                    i + 1
                ))
            })?;
            entries.push(entry);
        }
        Ok(entries)
    }
}

/// The chain from `start` over the segment numbers present on the followed path,
/// `owner` naming the timeline of each.
fn walk_chain(
    start: &SegmentName,
    timeline: u32,
    mut on_path: Vec<u64>,
    owner: impl Fn(u64) -> u32,
) -> Chain {
    on_path.sort_unstable();
    on_path.dedup();
    let seg = |segno: u64| SegmentName {
        timeline: owner(segno),
        segno,
    };
    let mut contiguous = Vec::new();
    let mut gaps = Vec::new();
    let mut expected = start.segno;
    for segno in &on_path {
        if *segno > expected {
            gaps.push(Gap {
                first: seg(expected),
                last: seg(segno - 1),
            });
        } else if gaps.is_empty() {
            contiguous.push(seg(*segno));
        }
        expected = segno + 1;
    }
    let first_missing = match gaps.first() {
        Some(g) => g.first,
        None => seg(expected),
    };
    Chain {
        start: *start,
        timeline,
        contiguous,
        first_missing,
        gaps,
        last_present: on_path.last().map(|s| seg(*s)),
    }
}

/// The chain from `start` over `present` alone (no archive): segments of the start's
/// timeline only, since no history file says where another one branched.
pub fn chain_without_archive(start: &SegmentName, present: &[SegmentName]) -> Chain {
    let on_path = present
        .iter()
        .filter(|s| s.timeline == start.timeline && s.segno >= start.segno)
        .map(|s| s.segno)
        .collect();
    walk_chain(start, start.timeline, on_path, |_| start.timeline)
}

/// A timeline on the path to the followed timeline, and the segment where it begins.
struct TimelineEntry {
    timeline: u32,
    begin_segno: u64,
}

/// The timelines leading to `tli` (oldest first) from its history file's entries.
fn timeline_path(tli: u32, history: &[(u32, Lsn)], seg_size: WalSegSize) -> Vec<TimelineEntry> {
    let mut path = Vec::with_capacity(history.len() + 1);
    let mut begin = 0;
    for (parent, end) in history {
        path.push(TimelineEntry {
            timeline: *parent,
            begin_segno: begin,
        });
        begin = end.0 / seg_size.bytes();
    }
    path.push(TimelineEntry {
        timeline: tli,
        begin_segno: begin,
    });
    path
}
