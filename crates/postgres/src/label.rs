//! Where a copy's WAL begins and ends, read from what PostgreSQL itself writes: the
//! `backup_label` a copy carries (START WAL LOCATION, CHECKPOINT LOCATION, START TIME)
//! and the backup history file `pg_backup_stop` leaves in `pg_wal`
//! (`<start segment>.<offset>.backup`, which adds STOP WAL LOCATION and STOP TIME).
//! A copy without a backup label (a `pre-restore` copy of a stopped cluster) starts at
//! its control file's REDO point, which `pg_controldata` reports.

use std::path::Path;
use std::process::Command;

use serde::Serialize;

use crate::wal::{Lsn, SegmentName, WalSegSize};

/// What a backup label (or backup history file) says.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct BackupLabel {
    /// Where replay must begin (the REDO point of the backup's checkpoint).
    pub start_lsn: Option<Lsn>,
    /// The WAL file holding `start_lsn`.
    pub start_file: Option<String>,
    pub checkpoint_lsn: Option<Lsn>,
    pub start_time: Option<String>,
    pub timeline: Option<u32>,
    /// Only in a backup history file: where the copy becomes consistent.
    pub stop_lsn: Option<Lsn>,
    pub stop_time: Option<String>,
}

impl BackupLabel {
    /// Parses `KEY: value` lines; unknown keys are ignored, missing ones stay `None`.
    pub fn parse(text: &str) -> BackupLabel {
        let mut label = BackupLabel::default();
        for line in text.lines() {
            let Some((key, value)) = line.split_once(": ") else {
                continue;
            };
            let value = value.trim();
            // "0/5000028 (file 000000010000000000000005)"
            let lsn = || value.split_whitespace().next()?.parse::<Lsn>().ok();
            match key {
                "START WAL LOCATION" => {
                    label.start_lsn = lsn();
                    label.start_file = value
                        .split_once("(file ")
                        .and_then(|(_, rest)| rest.strip_suffix(')'))
                        .map(str::to_string);
                }
                "CHECKPOINT LOCATION" => label.checkpoint_lsn = lsn(),
                "STOP WAL LOCATION" => label.stop_lsn = lsn(),
                "START TIME" => label.start_time = Some(value.to_string()),
                "STOP TIME" => label.stop_time = Some(value.to_string()),
                "START TIMELINE" => label.timeline = value.parse().ok(),
                _ => {}
            }
        }
        label
    }

    /// The first segment replay from this copy needs.
    pub fn start_segment(&self, seg_size: WalSegSize) -> Option<SegmentName> {
        if let Some(file) = &self.start_file {
            if let Ok(s) = SegmentName::parse(file, seg_size) {
                return Some(s);
            }
        }
        Some(SegmentName::from_lsn(
            self.timeline?,
            self.start_lsn?,
            seg_size,
        ))
    }
}

/// The name of the backup history file `pg_backup_stop` writes for a backup that
/// started at `start` on `timeline`.
pub fn history_file_name(timeline: u32, start: Lsn, seg_size: WalSegSize) -> String {
    format!(
        "{}.{:08X}.backup",
        SegmentName::from_lsn(timeline, start, seg_size).file_name(seg_size),
        start.0 % seg_size.bytes()
    )
}

/// The REDO WAL file of the latest checkpoint in `data_dir`'s control file, as
/// `pg_controldata` reports it.
pub fn redo_file(pg_controldata: &Path, data_dir: &Path) -> Result<String, String> {
    let out = Command::new(pg_controldata)
        .arg(data_dir)
        .env("LC_ALL", "C")
        .output()
        .map_err(|e| format!("cannot run {}: {e}", pg_controldata.display()))?;
    if !out.status.success() {
        return Err(format!(
            "{} {} failed: {}",
            pg_controldata.display(),
            data_dir.display(),
            String::from_utf8_lossy(&out.stderr).trim()
        ));
    }
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .find_map(|l| l.strip_prefix("Latest checkpoint's REDO WAL file:"))
        .map(|v| v.trim().to_string())
        .ok_or_else(|| {
            format!(
                "pg_controldata on {} names no REDO WAL file",
                data_dir.display()
            )
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    const HISTORY: &str = "START WAL LOCATION: 0/5000028 (file 000000010000000000000005)
STOP WAL LOCATION: 0/5000138 (file 000000010000000000000005)
CHECKPOINT LOCATION: 0/5000060
BACKUP METHOD: streamed
BACKUP FROM: primary
START TIME: 2026-11-22 10:00:01 UTC
LABEL: shadowcopy
START TIMELINE: 1
STOP TIME: 2026-11-22 10:00:02 UTC
STOP TIMELINE: 1
";

    #[test]
    fn a_history_file_gives_start_and_stop() {
        let l = BackupLabel::parse(HISTORY);
        assert_eq!(l.start_lsn, Some(Lsn(0x5000028)));
        assert_eq!(l.start_file.as_deref(), Some("000000010000000000000005"));
        assert_eq!(l.checkpoint_lsn, Some(Lsn(0x5000060)));
        assert_eq!(l.stop_lsn, Some(Lsn(0x5000138)));
        assert_eq!(l.stop_time.as_deref(), Some("2026-11-22 10:00:02 UTC"));
        assert_eq!(l.timeline, Some(1));
        assert_eq!(
            l.start_segment(WalSegSize::DEFAULT),
            Some(SegmentName {
                timeline: 1,
                segno: 5
            })
        );
    }

    #[test]
    fn a_label_without_a_file_name_falls_back_to_the_lsn() {
        let l = BackupLabel::parse("START WAL LOCATION: 0/3000028\nSTART TIMELINE: 2\n");
        assert_eq!(
            l.start_segment(WalSegSize::DEFAULT),
            Some(SegmentName {
                timeline: 2,
                segno: 3
            })
        );
        assert_eq!(
            BackupLabel::parse("nonsense").start_segment(WalSegSize::DEFAULT),
            None
        );
    }

    #[test]
    fn history_file_names_carry_the_offset() {
        assert_eq!(
            history_file_name(1, Lsn(0x5000028), WalSegSize::DEFAULT),
            "000000010000000000000005.00000028.backup"
        );
    }
}
