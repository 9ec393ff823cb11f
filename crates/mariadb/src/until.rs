//! Where a MariaDB roll-forward stops: `--until` as a time, a binlog position or a GTID
//! position, and how each is told apart. Shared by the restore plan (which checks it
//! before anything is written) and the replay (which passes it to `mariadb-binlog`).

/// `--until` that is none of the three.
#[derive(Debug, thiserror::Error)]
#[error("--until {0:?} is neither a time (2026-11-22 10:00:00, optionally with Z or +02:00), a binlog position (mariadb-bin.000042:1234) nor a GTID position (0-1-100)")]
pub struct UntilError(pub String);

/// Where `--until` stops a roll-forward.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Until {
    /// `mariadb-binlog --stop-datetime` (events at or after it are not replayed), with
    /// the time zone to read it in (`TZ`), when one was given.
    Time {
        datetime: String,
        tz: Option<String>,
    },
    /// A binlog file and position: events at or after it are not replayed.
    Position { file: String, position: u64 },
    /// A GTID position: replay up to and including it.
    Gtid(String),
}

impl Until {
    pub fn parse(s: &str) -> Result<Until, UntilError> {
        let s = s.trim();
        let bad = || UntilError(s.to_string());
        if let Some((file, pos)) = s.rsplit_once(':') {
            if crate::position::binlog_number(file).is_some() {
                let position = pos.parse().map_err(|_| bad())?;
                return Ok(Until::Position {
                    file: file.to_string(),
                    position,
                });
            }
        }
        // A date alone (2026-11-22) looks like a GTID, but means a time without one.
        let date_only = s.len() == 10 && s.as_bytes()[4] == b'-' && s.as_bytes()[7] == b'-';
        if !s.is_empty() && !date_only && s.split(',').map(str::trim).all(crate::position::is_gtid)
        {
            return Ok(Until::Gtid(s.replace(' ', "")));
        }
        parse_time(s).ok_or_else(bad)
    }

    /// A line for a warning: what is not replayed.
    pub fn describe(&self) -> String {
        match self {
            Until::Time { datetime, tz } => format!(
                "stops before the first event at or after {datetime}{}",
                tz.as_deref().map(|t| format!(" ({t})")).unwrap_or_default()
            ),
            Until::Position { file, position } => format!("stops at {file}:{position}"),
            Until::Gtid(g) => format!("stops after GTID {g}"),
        }
    }
}

/// `2026-11-22 10:00:00[.ffffff][Z|UTC| +HH[:MM]|-HH[:MM]]` (or a `T` for the space).
fn parse_time(s: &str) -> Option<Until> {
    let b = s.as_bytes();
    if b.len() < 19 {
        return None;
    }
    let digits = |r: std::ops::Range<usize>| b[r].iter().all(u8::is_ascii_digit);
    let shape = digits(0..4)
        && b[4] == b'-'
        && digits(5..7)
        && b[7] == b'-'
        && digits(8..10)
        && (b[10] == b' ' || b[10] == b'T')
        && digits(11..13)
        && b[13] == b':'
        && digits(14..16)
        && b[16] == b':'
        && digits(17..19);
    if !shape {
        return None;
    }
    let mut end = 19;
    if b.get(19) == Some(&b'.') {
        end = 20;
        while b.get(end).is_some_and(u8::is_ascii_digit) {
            end += 1;
        }
        if end == 20 {
            return None;
        }
    }
    let datetime = format!("{} {}", &s[..10], &s[11..end]);
    let zone = s[end..].trim();
    let tz = match zone {
        "" => None,
        "Z" | "UTC" | "z" => Some("UTC0".to_string()),
        z => {
            let (sign, rest) = match z.as_bytes()[0] {
                b'+' => ('-', &z[1..]), // POSIX TZ counts west of UTC as positive
                b'-' => ('+', &z[1..]),
                _ => return None,
            };
            let (h, m) = match rest.split_once(':') {
                Some((h, m)) => (h, m),
                None if rest.len() == 4 => (&rest[..2], &rest[2..]),
                None => (rest, "00"),
            };
            let (h, m): (u32, u32) = (h.parse().ok()?, m.parse().ok()?);
            if h > 14 || m > 59 {
                return None;
            }
            Some(format!("UTC{sign}{h:02}:{m:02}"))
        }
    };
    Some(Until::Time { datetime, tz })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn until_targets_are_told_apart_and_nonsense_is_refused() {
        assert_eq!(
            Until::parse("mariadb-bin.000042:1234").unwrap(),
            Until::Position {
                file: "mariadb-bin.000042".into(),
                position: 1234
            }
        );
        assert_eq!(
            Until::parse("0-1-100").unwrap(),
            Until::Gtid("0-1-100".into())
        );
        assert_eq!(
            Until::parse("0-1-100, 1-2-3").unwrap(),
            Until::Gtid("0-1-100,1-2-3".into())
        );
        assert_eq!(
            Until::parse("2026-11-22 10:00:00").unwrap(),
            Until::Time {
                datetime: "2026-11-22 10:00:00".into(),
                tz: None
            }
        );
        assert_eq!(
            Until::parse("2026-11-22T10:00:00.25Z").unwrap(),
            Until::Time {
                datetime: "2026-11-22 10:00:00.25".into(),
                tz: Some("UTC0".into())
            }
        );
        assert_eq!(
            Until::parse("2026-11-22 10:00:00+02:00").unwrap(),
            Until::Time {
                datetime: "2026-11-22 10:00:00".into(),
                tz: Some("UTC-02:00".into())
            }
        );
        assert_eq!(
            Until::parse("2026-11-22 10:00:00 -0530").unwrap(),
            Until::Time {
                datetime: "2026-11-22 10:00:00".into(),
                tz: Some("UTC+05:30".into())
            }
        );
        for bad in [
            "",
            "yesterday",
            "0/3000060",
            "mariadb-bin.000042:x",
            "2026-11-22",
            "2026-11-22 10:00:00 CEST",
            "0-1",
        ] {
            assert!(Until::parse(bad).is_err(), "{bad}");
        }
    }
}
