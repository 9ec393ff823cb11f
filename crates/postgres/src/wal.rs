//! PostgreSQL WAL file names and LSN arithmetic, without any I/O.
//!
//! PostgreSQL names a WAL segment `TTTTTTTTXXXXXXXXYYYYYYYY` (24 upper-case hex digits):
//! the timeline, then the segment number split into a "log" and a "seg" part, where
//! `segno = log * segments_per_xlogid + seg` and `segments_per_xlogid = 2^32 / seg_size`.
//! The split depends on the cluster's `wal_segment_size`, so everything that turns a
//! name into a segment number takes a [`WalSegSize`]. The 16 hex digits after the
//! timeline, read as the pair `(log, seg)` ([`WalPosition`]), order segments the same way
//! for every segment size; `pg_archivecleanup` compares names on exactly that part.
//!
//! Besides segments, an archive holds `.partial` segments (the last, incomplete segment of
//! a timeline that ended at a promotion), timeline history files (`0000000N.history`) and
//! backup history files (`<segment>.<offset>.backup`); [`WalFileName::parse`] tells them
//! apart and rejects every other name.

use std::fmt;
use std::str::FromStr;

/// Errors of parsing WAL names, LSNs and segment sizes.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WalError {
    #[error(
        "{input:?} is not a PostgreSQL LSN; an LSN is written as two hex numbers X/Y, \
         e.g. 0/3000028 (as shown by pg_current_wal_lsn())"
    )]
    InvalidLsn { input: String },
    #[error(
        "{input:?} is not a WAL segment file name; a segment name is 24 upper-case hex digits \
         (timeline, log, seg), e.g. 000000010000000000000003"
    )]
    InvalidSegmentName { input: String },
    #[error(
        "WAL segment name {name} does not fit a segment size of {seg_size} bytes (its seg part \
         must be below {per_xlogid:#X}); pass the cluster's wal_segment_size (SHOW wal_segment_size)"
    )]
    SegmentOutOfRange {
        name: String,
        seg_size: u64,
        per_xlogid: u64,
    },
    #[error(
        "{bytes} bytes is not a valid wal_segment_size; PostgreSQL allows a power of two from \
         1 MiB to 1 GiB (default 16 MiB)"
    )]
    InvalidSegSize { bytes: u64 },
}

/// A position in the WAL, PostgreSQL's `XLogRecPtr`. Displayed and parsed as `X/Y` (hex).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Lsn(pub u64);

impl Lsn {
    pub const ZERO: Lsn = Lsn(0);
}

impl fmt::Display for Lsn {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:X}/{:X}", self.0 >> 32, self.0 & 0xFFFF_FFFF)
    }
}

impl FromStr for Lsn {
    type Err = WalError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let err = || WalError::InvalidLsn {
            input: s.to_string(),
        };
        let (hi, lo) = s.split_once('/').ok_or_else(err)?;
        let part = |p: &str| -> Result<u64, WalError> {
            if p.is_empty() || p.len() > 8 || !p.bytes().all(|b| b.is_ascii_hexdigit()) {
                return Err(err());
            }
            u64::from_str_radix(p, 16).map_err(|_| err())
        };
        Ok(Lsn((part(hi)? << 32) | part(lo)?))
    }
}

impl serde::Serialize for Lsn {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> serde::Deserialize<'de> for Lsn {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

/// A cluster's `wal_segment_size`: a power of two from 1 MiB to 1 GiB.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct WalSegSize(u64);

impl WalSegSize {
    /// PostgreSQL's default, 16 MiB.
    pub const DEFAULT: WalSegSize = WalSegSize(16 * 1024 * 1024);
    const MIN: u64 = 1024 * 1024;
    const MAX: u64 = 1024 * 1024 * 1024;

    pub fn new(bytes: u64) -> Result<Self, WalError> {
        if bytes.is_power_of_two() && (Self::MIN..=Self::MAX).contains(&bytes) {
            Ok(WalSegSize(bytes))
        } else {
            Err(WalError::InvalidSegSize { bytes })
        }
    }

    pub fn bytes(self) -> u64 {
        self.0
    }

    /// How many segments share one "log" value (the middle 8 hex digits of a name).
    pub fn segments_per_xlogid(self) -> u64 {
        0x1_0000_0000 / self.0
    }
}

impl Default for WalSegSize {
    fn default() -> Self {
        Self::DEFAULT
    }
}

/// The `(log, seg)` part of a WAL file name, the 16 hex digits after the timeline.
/// Ordering it orders names the way `pg_archivecleanup` does (ignoring the timeline).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize)]
pub struct WalPosition {
    pub log: u32,
    pub seg: u32,
}

/// One WAL segment: a timeline and a segment number (`lsn / seg_size`).
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize, serde::Deserialize,
)]
pub struct SegmentName {
    pub timeline: u32,
    pub segno: u64,
}

impl SegmentName {
    /// Parses a 24-hex-digit segment name for a cluster with segments of `seg_size`.
    pub fn parse(name: &str, seg_size: WalSegSize) -> Result<Self, WalError> {
        if !is_segment_name(name) {
            return Err(WalError::InvalidSegmentName {
                input: name.to_string(),
            });
        }
        let timeline = hex_u32(&name[0..8]);
        let log = u64::from(hex_u32(&name[8..16]));
        let seg = u64::from(hex_u32(&name[16..24]));
        let per = seg_size.segments_per_xlogid();
        if seg >= per {
            return Err(WalError::SegmentOutOfRange {
                name: name.to_string(),
                seg_size: seg_size.bytes(),
                per_xlogid: per,
            });
        }
        Ok(SegmentName {
            timeline,
            segno: log * per + seg,
        })
    }

    /// The segment on `timeline` that contains `lsn`.
    pub fn from_lsn(timeline: u32, lsn: Lsn, seg_size: WalSegSize) -> Self {
        SegmentName {
            timeline,
            segno: lsn.0 / seg_size.bytes(),
        }
    }

    /// The following segment on the same timeline.
    pub fn next(&self) -> Self {
        SegmentName {
            timeline: self.timeline,
            segno: self.segno + 1,
        }
    }

    /// The LSN of the segment's first byte.
    pub fn start_lsn(&self, seg_size: WalSegSize) -> Lsn {
        Lsn(self.segno * seg_size.bytes())
    }

    /// The `(log, seg)` part of the name.
    pub fn position(&self, seg_size: WalSegSize) -> WalPosition {
        let per = seg_size.segments_per_xlogid();
        // segno < 2^64 / seg_size, so segno / per < 2^32 and the casts cannot truncate.
        WalPosition {
            log: (self.segno / per) as u32,
            seg: (self.segno % per) as u32,
        }
    }

    /// The file name, `TTTTTTTTXXXXXXXXYYYYYYYY`.
    pub fn file_name(&self, seg_size: WalSegSize) -> String {
        let p = self.position(seg_size);
        format!("{:08X}{:08X}{:08X}", self.timeline, p.log, p.seg)
    }
}

/// What a file in a WAL archive is, by its name.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum WalFileKind {
    /// A complete segment, `000000010000000000000003`.
    Segment,
    /// The last segment of a timeline that ended at a promotion, `….partial`.
    Partial,
    /// A timeline history file, `00000002.history`.
    TimelineHistory,
    /// A backup history file, `000000010000000000000003.00000028.backup`.
    BackupHistory,
}

/// A parsed WAL archive file name.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct WalFileName {
    pub kind: WalFileKind,
    pub timeline: u32,
    /// The `(log, seg)` part; `None` for timeline history files.
    pub position: Option<WalPosition>,
}

impl WalFileName {
    /// Classifies a file name the way PostgreSQL's `IsXLogFileName` and friends do
    /// (upper-case hex only). `None` means "not a WAL archive file".
    pub fn parse(name: &str) -> Option<Self> {
        let segment = |kind| {
            Some(WalFileName {
                kind,
                timeline: hex_u32(&name[0..8]),
                position: Some(WalPosition {
                    log: hex_u32(&name[8..16]),
                    seg: hex_u32(&name[16..24]),
                }),
            })
        };
        if is_segment_name(name) {
            return segment(WalFileKind::Segment);
        }
        if let Some(stem) = name.strip_suffix(".partial") {
            if is_segment_name(stem) {
                return segment(WalFileKind::Partial);
            }
        }
        if let Some(stem) = name.strip_suffix(".history") {
            if stem.len() == 8 && is_upper_hex(stem) {
                return Some(WalFileName {
                    kind: WalFileKind::TimelineHistory,
                    timeline: hex_u32(stem),
                    position: None,
                });
            }
        }
        if let Some(stem) = name.strip_suffix(".backup") {
            // <24 hex segment>.<8 hex offset>
            if stem.len() == 33
                && is_segment_name(&stem[..24])
                && stem.as_bytes()[24] == b'.'
                && is_upper_hex(&stem[25..])
            {
                return segment(WalFileKind::BackupHistory);
            }
        }
        None
    }
}

/// The kind of a WAL archive file name, or `None` if it is not one.
pub fn classify(name: &str) -> Option<WalFileKind> {
    WalFileName::parse(name).map(|f| f.kind)
}

/// The name of timeline `timeline`'s history file, `0000000N.history`.
pub fn history_file_name(timeline: u32) -> String {
    format!("{timeline:08X}.history")
}

fn is_upper_hex(s: &str) -> bool {
    s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'A'..=b'F'))
}

fn is_segment_name(s: &str) -> bool {
    s.len() == 24 && is_upper_hex(s)
}

/// Callers have checked that `s` is 8 upper-case hex digits.
fn hex_u32(s: &str) -> u32 {
    u32::from_str_radix(s, 16).unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIB: u64 = 1024 * 1024;

    #[test]
    fn lsn_parse_and_display() {
        let lsn: Lsn = "0/3000028".parse().unwrap();
        assert_eq!(lsn, Lsn(0x300_0028));
        assert_eq!(lsn.to_string(), "0/3000028");
        let lsn: Lsn = "1A/ff".parse().unwrap();
        assert_eq!(lsn, Lsn((0x1A << 32) | 0xFF));
        assert_eq!(lsn.to_string(), "1A/FF");
        assert_eq!("FFFFFFFF/FFFFFFFF".parse::<Lsn>().unwrap(), Lsn(u64::MAX));
        for bad in [
            "",
            "0",
            "/1",
            "1/",
            "0/123456789",
            "x/1",
            "0/3000028/1",
            " 0/1",
        ] {
            assert!(bad.parse::<Lsn>().is_err(), "{bad:?} should not parse");
        }
        assert!(Lsn(1) < Lsn(2));
        assert!("1/0".parse::<Lsn>().unwrap() > "0/FFFFFFFF".parse::<Lsn>().unwrap());
    }

    #[test]
    fn lsn_serde_is_a_string() {
        let json = serde_json::to_string(&Lsn(0x1_0000_0010)).unwrap();
        assert_eq!(json, "\"1/10\"");
        let back: Lsn = serde_json::from_str(&json).unwrap();
        assert_eq!(back, Lsn(0x1_0000_0010));
    }

    #[test]
    fn seg_size_validation() {
        assert_eq!(WalSegSize::DEFAULT.bytes(), 16 * MIB);
        assert_eq!(WalSegSize::DEFAULT.segments_per_xlogid(), 256);
        assert_eq!(WalSegSize::new(64 * MIB).unwrap().segments_per_xlogid(), 64);
        assert_eq!(WalSegSize::new(MIB).unwrap().segments_per_xlogid(), 4096);
        assert_eq!(
            WalSegSize::new(1024 * MIB).unwrap().segments_per_xlogid(),
            4
        );
        for bad in [0, MIB / 2, 3 * MIB, 2048 * MIB] {
            assert!(WalSegSize::new(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn segment_from_lsn_known_values() {
        let s16 = WalSegSize::DEFAULT;
        let seg = SegmentName::from_lsn(1, "0/3000028".parse().unwrap(), s16);
        assert_eq!(seg.file_name(s16), "000000010000000000000003");
        let seg = SegmentName::from_lsn(1, "1/0".parse().unwrap(), s16);
        assert_eq!(seg.file_name(s16), "000000010000000100000000");
        assert_eq!(seg.segno, 256);
        let seg = SegmentName::from_lsn(2, "0/FFFFFFFF".parse().unwrap(), s16);
        assert_eq!(seg.file_name(s16), "0000000200000000000000FF");

        let s64 = WalSegSize::new(64 * MIB).unwrap();
        let seg = SegmentName::from_lsn(1, "1/4000000".parse().unwrap(), s64);
        assert_eq!(seg.segno, 65);
        assert_eq!(seg.file_name(s64), "000000010000000100000001");
        assert_eq!(seg.start_lsn(s64).to_string(), "1/4000000");
    }

    #[test]
    fn segment_parse_roundtrip_and_next() {
        let s16 = WalSegSize::DEFAULT;
        let seg = SegmentName::parse("0000000300000002000000FF", s16).unwrap();
        assert_eq!(
            seg,
            SegmentName {
                timeline: 3,
                segno: 2 * 256 + 255
            }
        );
        let next = seg.next();
        assert_eq!(next.file_name(s16), "000000030000000300000000");
        assert_eq!(SegmentName::parse(&next.file_name(s16), s16).unwrap(), next);
        assert_eq!(next.position(s16), WalPosition { log: 3, seg: 0 });

        // seg part 0x40 is fine for 16 MiB, out of range for 64 MiB (only 0..0x3F exist)
        let s64 = WalSegSize::new(64 * MIB).unwrap();
        assert!(SegmentName::parse("000000010000000000000040", s16).is_ok());
        assert!(matches!(
            SegmentName::parse("000000010000000000000040", s64),
            Err(WalError::SegmentOutOfRange { per_xlogid: 64, .. })
        ));
        for bad in [
            "00000001000000000000000",
            "0000000100000000000000003",
            "00000001000000000000000g",
            "00000001000000000000000a",
        ] {
            assert!(SegmentName::parse(bad, s16).is_err(), "{bad}");
        }
    }

    #[test]
    fn classify_names() {
        use WalFileKind::*;
        assert_eq!(classify("000000010000000000000003"), Some(Segment));
        assert_eq!(classify("000000010000000000000003.partial"), Some(Partial));
        assert_eq!(classify("00000002.history"), Some(TimelineHistory));
        assert_eq!(
            classify("000000010000000000000003.00000028.backup"),
            Some(BackupHistory)
        );
        for other in [
            "",
            "RECOVERYXLOG",
            "00000001000000000000000a",
            "000000010000000000000003.zst",
            "000000010000000000000003.partial.zst",
            "0000002.history",
            "000000010000000000000003.backup",
            "000000010000000000000003.0000028.backup",
            ".shadowcopy-tmp-abc",
            "archive_status",
        ] {
            assert_eq!(classify(other), None, "{other:?}");
        }
        let f = WalFileName::parse("0000000200000001000000A0.00000028.backup").unwrap();
        assert_eq!(f.timeline, 2);
        assert_eq!(f.position, Some(WalPosition { log: 1, seg: 0xA0 }));
        let h = WalFileName::parse("0000000A.history").unwrap();
        assert_eq!((h.timeline, h.position), (10, None));
        assert_eq!(history_file_name(10), "0000000A.history");
    }
}
