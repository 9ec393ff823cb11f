//! Where a copy stands in the server's binary log. The position is read at the freeze
//! (the binlog cannot move while commits are blocked) and stored in the copy itself, as
//! the file [`POSITION_FILE`] in the data directory's root: mariadbd ignores files there
//! (a directory would look like a database), so the copy still starts as it is. Roll-
//! forward restores and binlog truncation read it back from the copy.
//!
//! The file holds `key: value` lines (`#` starts a comment):
//! ```text
//! flavour: MariaDB
//! version: 10.11.6-MariaDB-0+deb12u1-log
//! server_id: 1
//! binlog_file: mariadb-bin.000003
//! binlog_position: 1234
//! gtid_binlog_pos: 0-1-42
//! captured_at: 2026-11-22T10:00:00.123456Z
//! ```
//! Also here: binlog names and their numbers, and the binlog index file.

use std::path::{Path, PathBuf};

/// The name of the position file in the data directory of every copy.
pub const POSITION_FILE: &str = "shadowcopy-binlog-position";

/// Where a copy stands in the binary log (`binlog_*` absent: the binary log was off).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct BinlogPosition {
    pub flavour: String,
    pub version: String,
    pub server_id: u32,
    pub binlog_file: Option<String>,
    pub binlog_position: Option<u64>,
    /// MariaDB's `gtid_binlog_pos` (MySQL: `Executed_Gtid_Set`).
    pub gtid: Option<String>,
    pub captured_at: String,
}

/// Why a copy's position file cannot be had.
#[derive(Debug)]
pub enum CopyPositionError {
    /// The copy holds none.
    Missing,
    /// It is there but cannot be read or parsed.
    Unreadable { path: PathBuf, why: String },
}

/// The binlog position the copy holds (its [`POSITION_FILE`]).
pub fn in_copy(
    layout: &crate::server::ServerLayout,
    copy: &shadowcopy_core::model::CopyView,
) -> Result<BinlogPosition, CopyPositionError> {
    let path = copy
        .path_of(&layout.datadir.join(POSITION_FILE))
        .ok_or(CopyPositionError::Missing)?;
    let bad = |why: String| CopyPositionError::Unreadable {
        path: path.to_path_buf(),
        why,
    };
    let text = std::fs::read_to_string(path).map_err(|e| bad(e.to_string()))?;
    BinlogPosition::parse(&text).map_err(|e| bad(e.to_string()))
}

/// Whether `s` has the shape of one MariaDB GTID, `domain-server-sequence` in digits.
pub fn is_gtid(s: &str) -> bool {
    let parts: Vec<&str> = s.split('-').collect();
    parts.len() == 3
        && parts
            .iter()
            .all(|p| !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()))
}

#[derive(Debug, thiserror::Error)]
pub enum PositionError {
    #[error("line {line} of the binlog position file is not `key: value`: {text:?}")]
    BadLine { line: usize, text: String },
    #[error("the binlog position file gives {key} = {value:?}, which is not a number")]
    BadNumber { key: &'static str, value: String },
}

impl BinlogPosition {
    pub fn to_text(&self) -> String {
        let mut out = String::from(
            "# shadowcopy: where this copy stands in the server's binary log (read at the freeze)\n",
        );
        let mut line = |k: &str, v: &str| out.push_str(&format!("{k}: {v}\n"));
        line("flavour", &self.flavour);
        line("version", &self.version);
        line("server_id", &self.server_id.to_string());
        if let (Some(f), Some(p)) = (&self.binlog_file, self.binlog_position) {
            line("binlog_file", f);
            line("binlog_position", &p.to_string());
        }
        if let Some(g) = &self.gtid {
            line("gtid_binlog_pos", g);
        }
        line("captured_at", &self.captured_at);
        out
    }

    pub fn parse(text: &str) -> Result<BinlogPosition, PositionError> {
        let mut p = BinlogPosition::default();
        for (i, raw) in text.lines().enumerate() {
            let l = raw.trim();
            if l.is_empty() || l.starts_with('#') {
                continue;
            }
            let (k, v) = l.split_once(':').ok_or_else(|| PositionError::BadLine {
                line: i + 1,
                text: raw.to_string(),
            })?;
            let v = v.trim().to_string();
            match k.trim() {
                "flavour" => p.flavour = v,
                "version" => p.version = v,
                "server_id" => p.server_id = number("server_id", &v)? as u32,
                "binlog_file" => p.binlog_file = Some(v),
                "binlog_position" => p.binlog_position = Some(number("binlog_position", &v)?),
                "gtid_binlog_pos" => p.gtid = (!v.is_empty()).then_some(v),
                "captured_at" => p.captured_at = v,
                _ => {} // written by a newer shadowcopy
            }
        }
        Ok(p)
    }

    /// The binlog file and position, when the binary log was on.
    pub fn start(&self) -> Option<(&str, u64)> {
        Some((self.binlog_file.as_deref()?, self.binlog_position?))
    }
}

fn number(key: &'static str, v: &str) -> Result<u64, PositionError> {
    v.parse().map_err(|_| PositionError::BadNumber {
        key,
        value: v.to_string(),
    })
}

/// `mariadb-bin.000042` → (`mariadb-bin`, 42); `None` for other names.
pub fn binlog_number(name: &str) -> Option<(&str, u64)> {
    let (base, digits) = name.rsplit_once('.')?;
    if digits.len() < 6 || !digits.bytes().all(|b| b.is_ascii_digit()) || base.is_empty() {
        return None;
    }
    Some((base, digits.parse().ok()?))
}

/// The binary logs an index file lists, in order, as paths: an entry is absolute, or
/// relative to the data directory (`./mariadb-bin.000001`).
pub fn read_index(index: &Path, datadir: &Path) -> std::io::Result<Vec<PathBuf>> {
    let text = std::fs::read_to_string(index)?;
    Ok(parse_index(&text, datadir))
}

pub fn parse_index(text: &str, datadir: &Path) -> Vec<PathBuf> {
    text.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .map(|l| {
            let p = Path::new(l);
            if p.is_absolute() {
                p.to_path_buf()
            } else {
                datadir.join(p.strip_prefix("./").unwrap_or(p))
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_position_file_round_trips_and_tolerates_new_keys() {
        let p = BinlogPosition {
            flavour: "MariaDB".into(),
            version: "10.11.6-MariaDB".into(),
            server_id: 7,
            binlog_file: Some("mariadb-bin.000003".into()),
            binlog_position: Some(1234),
            gtid: Some("0-7-42,1-7-3".into()),
            captured_at: "2026-11-22T10:00:00Z".into(),
        };
        let text = p.to_text();
        assert_eq!(BinlogPosition::parse(&text).unwrap(), p);
        let later = format!("{text}future_key: something: with colons\n");
        assert_eq!(BinlogPosition::parse(&later).unwrap(), p);
        assert_eq!(p.start(), Some(("mariadb-bin.000003", 1234)));
        let off = BinlogPosition {
            binlog_file: None,
            binlog_position: None,
            gtid: None,
            ..p
        };
        assert_eq!(BinlogPosition::parse(&off.to_text()).unwrap(), off);
        assert_eq!(off.start(), None);
        assert!(BinlogPosition::parse("binlog_position: x\n").is_err());
        assert!(BinlogPosition::parse("no colon here\n").is_err());
    }

    #[test]
    fn binlog_names_and_index_entries() {
        assert_eq!(
            binlog_number("mariadb-bin.000042"),
            Some(("mariadb-bin", 42))
        );
        assert_eq!(binlog_number("a.b.1000000"), Some(("a.b", 1_000_000)));
        assert_eq!(binlog_number("mariadb-bin.index"), None);
        assert_eq!(binlog_number("x.00001"), None);
        assert_eq!(binlog_number(".000001"), None);
        let d = Path::new("/var/lib/mysql");
        assert_eq!(
            parse_index("./b.000001\n/srv/binlog/b.000002\n\n", d),
            vec![
                PathBuf::from("/var/lib/mysql/b.000001"),
                PathBuf::from("/srv/binlog/b.000002")
            ]
        );
    }
}
