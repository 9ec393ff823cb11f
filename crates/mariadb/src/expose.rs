//! `Writer::expose` for MariaDB: a copy opened read-only beside production. A clone of
//! the copy below the exposure's scratch directory (as for a verification, sandbox.rs)
//! is started once for InnoDB's crash recovery; with `--until` the binary logs after
//! the copy's position are replayed into it up to the target (replay.rs, as a
//! roll-forward does); it stops cleanly, then starts again with `--innodb-read-only
//! --read-only` and no binary log, and keeps running; closing the exposure stops it.
//!
//! It listens on a socket in a private directory (no networking, no privilege checks:
//! only the server's owner and root reach it), or in a directory the user chose, and
//! with `--port` on the loopback address too; in both of those the copy's own accounts
//! and passwords are asked for (privilege checks on, on the socket as well). The clone
//! stays root's until it is built, then goes to the server's owner.

use std::path::Path;

use shadowcopy_core::model::CopyView;
use shadowcopy_core::writer::{shell_quote, ExposeOptions, Exposed};
use shadowcopy_core::BoxError;

use crate::files;
use crate::instance::{StartOptions, TempServer};
use crate::position::{BinlogPosition, CopyPositionError, POSITION_FILE};
use crate::replay;
use crate::sandbox::{build, copy_data_dir, START_LIMIT, STOP_LIMIT};
use crate::server::ServerLayout;
use crate::until::Until;

#[derive(Debug, thiserror::Error)]
pub enum ExposeError {
    #[error("--until replays the binary logs after the copy, and this server writes none (log_bin is off); expose the copy at its own point (leave out --until)")]
    NoBinlog,
    #[error("--until replays the binary logs from the copy's position, and the copy holds no readable {POSITION_FILE} ({0}); expose it at its own point (leave out --until)")]
    NoPosition(String),
    #[error("--until {until} is before the copy ({copy}): a copy only goes forward; expose an older copy (`shadowcopy list`) for a target that early")]
    BeforeCopy { until: String, copy: String },
    #[error("--until {until} is past the binary logs there are: {newest}. Choose a target up to there (`shadowcopy mariadb log-analysis ID` shows the chain)")]
    Unreachable { until: String, newest: String },
}

/// Opens the copy as described in the module documentation.
pub fn expose_copy(
    layout: &ServerLayout,
    copy: &CopyView,
    options: &ExposeOptions,
) -> Result<Exposed, BoxError> {
    let until = options.until.as_deref().map(Until::parse).transpose()?;
    let owner = crate::files::owner_of(layout);
    let copy_data = copy_data_dir(layout, copy)?;
    // What the replay needs is checked before anything is built.
    let replay_plan = match &until {
        Some(until) => {
            let binlog = layout.binlog.as_ref().ok_or(ExposeError::NoBinlog)?;
            let position = copy_position(copy, layout)?;
            let (file, pos) = position
                .start()
                .ok_or_else(|| ExposeError::NoPosition("it names no binlog file".into()))?;
            let given = options.until.as_deref().unwrap_or("");
            check_after_copy(&position, until, given)?;
            let logs = replay::logs_from(layout, binlog, file, Some(until))?;
            check_reachable(layout, copy, &logs, until, given)?;
            Some((logs, pos, until))
        }
        None => None,
    };
    let dir = options.scratch.join("mariadb");
    std::fs::create_dir(&dir).map_err(files::io_err("create", &dir))?;
    std::fs::set_permissions(&dir, std::os::unix::fs::PermissionsExt::from_mode(0o700))
        .map_err(files::io_err("set the mode of", &dir))?;
    // Root's while root builds it (nothing written below can be swapped for a link),
    // then the server's owner's.
    let dirs = build(layout, copy, &copy_data, &dir, &owner)?;
    owner.chown_tree(&dir)?;
    let mut recovery = TempServer::start(layout, &dirs, START_LIMIT)?;
    if let Some((logs, pos, until)) = replay_plan {
        replay::replay(&recovery, &logs, pos, Some(until))?;
    }
    recovery.stop(STOP_LIMIT)?;
    // Named after the exposure's scratch directory, unique among exposures.
    let unique = options
        .scratch
        .file_name()
        .map(|n| n.to_string_lossy().trim_start_matches('.').to_string())
        .unwrap_or_else(|| std::process::id().to_string());
    let socket = options
        .socket_dir
        .as_ref()
        .map(|d| d.join(format!("shadowcopy-expose-{unique}.sock")));
    let checked = options.port.is_some() || options.socket_dir.is_some();
    let server = TempServer::start_with(
        layout,
        &dirs,
        START_LIMIT,
        &StartOptions {
            extra: &["--innodb-read-only", "--read-only"],
            socket,
            port: options.port,
        },
    )?;
    let pid = server.pid();
    let socket = server.socket.clone();
    let private_dir = server.run_dir().to_path_buf();
    server.keep();
    let connect = match options.port {
        Some(port) => format!(
            "mariadb --no-defaults --host=127.0.0.1 --port={port} --user=USER -p  (the copy's own accounts and passwords; as root on this host: mariadb --no-defaults --socket={})",
            shell_quote(&socket)
        ),
        None if checked => format!(
            "mariadb --no-defaults --socket={} --user=root  (the copy's own accounts: root by unix_socket where the copy allows it)",
            shell_quote(&socket)
        ),
        None => format!(
            "mariadb --no-defaults --socket={} --user=root",
            shell_quote(&socket)
        ),
    };
    Ok(Exposed {
        address: socket.display().to_string(),
        connect,
        pid,
        port: options.port,
        private_dir: Some(private_dir),
        writer: String::new(),
    })
}

/// The binlog position the copy holds (its position file).
fn copy_position(copy: &CopyView, layout: &ServerLayout) -> Result<BinlogPosition, ExposeError> {
    crate::position::in_copy(layout, copy).map_err(|e| match e {
        CopyPositionError::Missing => ExposeError::NoPosition("it is not in the copy".into()),
        CopyPositionError::Unreadable { why, .. } => ExposeError::NoPosition(why),
    })
}

/// A target past the binary logs there are is refused before anything is built: a
/// binlog position past the end of its file, a time still to come, a GTID beyond the
/// newest of its domain (the newest transaction, from `log_analysis`, is named). A time
/// between the newest transaction and now is reached: nothing happened in between.
fn check_reachable(
    layout: &ServerLayout,
    copy: &CopyView,
    logs: &[std::path::PathBuf],
    until: &Until,
    given: &str,
) -> Result<(), BoxError> {
    let unreachable = |newest: String| ExposeError::Unreachable {
        until: given.to_string(),
        newest,
    };
    // The newest transaction after the copy: what an error names, read once (log
    // analysis reads every binary log after the copy).
    let newest = |last: Option<&crate::log_analysis::Transaction>| -> String {
        match last {
            Some(t) => format!(
                "the newest transaction is GTID {} at {}, ending at {}:{}",
                t.gtid.as_deref().unwrap_or("?"),
                t.time.as_deref().unwrap_or("?"),
                t.file,
                t.end_position.map_or("?".into(), |p| p.to_string())
            ),
            None => "no transaction follows the copy".into(),
        }
    };
    let analyze = || crate::log_analysis::analyze(layout, copy, None);
    match until {
        Until::Position { file, position } => {
            let last = logs.last().map(Path::new);
            let size = last
                .and_then(|l| std::fs::metadata(l).ok())
                .map(|m| m.len());
            if let (Some(last), Some(size)) = (last, size) {
                if *position > size {
                    return Err(unreachable(format!(
                        "{} ends at position {size} ({file})",
                        last.display()
                    ))
                    .into());
                }
            }
        }
        Until::Time { datetime, tz } => {
            if let Some(at) = utc_of(datetime, tz.as_deref()) {
                if at > chrono::Utc::now() {
                    let said = match analyze() {
                        Ok(a) => newest(a.roll_forward.last_transaction.as_ref()),
                        Err(e) => {
                            format!("the binary logs could not be read to say where they end: {e}")
                        }
                    };
                    return Err(unreachable(format!("that time is still to come; {said}")).into());
                }
            }
        }
        Until::Gtid(g) => {
            let a = analyze()?;
            let last = a.roll_forward.last_transaction.as_ref();
            let last_gtid = last.and_then(|t| t.gtid.as_deref()).and_then(gtid);
            if let (Some(target), Some(last_gtid)) = (gtid(g), last_gtid) {
                if target.0 == last_gtid.0 && target.2 > last_gtid.2 {
                    return Err(unreachable(newest(last)).into());
                }
            }
        }
    }
    Ok(())
}

/// A target before the copy's own position is refused: replaying from the copy would
/// reach nothing, and the copy would open at its own point as if it were the target.
fn check_after_copy(
    position: &BinlogPosition,
    until: &Until,
    given: &str,
) -> Result<(), ExposeError> {
    let before = |copy: String| ExposeError::BeforeCopy {
        until: given.to_string(),
        copy,
    };
    match until {
        Until::Position {
            file,
            position: pos,
        } => {
            if let Some((copy_file, copy_pos)) = position.start() {
                if file == copy_file && *pos < copy_pos {
                    return Err(before(format!("{copy_file}:{copy_pos}")));
                }
            }
        }
        Until::Time { datetime, tz } => {
            let captured = chrono::DateTime::parse_from_rfc3339(&position.captured_at).ok();
            if let (Some(at), Some(captured)) = (utc_of(datetime, tz.as_deref()), captured) {
                if at < captured {
                    return Err(before(format!("captured at {}", position.captured_at)));
                }
            }
        }
        Until::Gtid(g) => {
            let copy_gtids: Vec<(u64, u64, u64)> = position
                .gtid
                .as_deref()
                .unwrap_or("")
                .split(',')
                .filter_map(gtid)
                .collect();
            for target in g.split(',').filter_map(gtid) {
                if let Some(c) = copy_gtids.iter().find(|c| c.0 == target.0) {
                    if target.2 < c.2 {
                        return Err(before(format!(
                            "GTID {}",
                            position.gtid.as_deref().unwrap_or("")
                        )));
                    }
                }
            }
        }
    }
    Ok(())
}

/// `domain-server-sequence` of a single GTID.
fn gtid(g: &str) -> Option<(u64, u64, u64)> {
    let mut parts = g.trim().split('-').map(|p| p.parse::<u64>().ok());
    Some((parts.next()??, parts.next()??, parts.next()??))
}

/// The instant `datetime` names in `tz` (the POSIX zone `Until` keeps: `UTC0`,
/// `UTC-02:00` for two hours east), or in this host's zone without one.
fn utc_of(datetime: &str, tz: Option<&str>) -> Option<chrono::DateTime<chrono::Utc>> {
    use chrono::TimeZone;
    let naive = chrono::NaiveDateTime::parse_from_str(datetime, "%Y-%m-%d %H:%M:%S%.f").ok()?;
    match tz {
        None => chrono::Local
            .from_local_datetime(&naive)
            .earliest()
            .map(|t| t.with_timezone(&chrono::Utc)),
        Some(tz) => {
            let rest = tz.strip_prefix("UTC")?;
            let west = match rest.as_bytes().first() {
                None | Some(b'0') => 0,
                Some(b'+') | Some(b'-') => {
                    let (h, m) = rest[1..].split_once(':')?;
                    let secs = h.parse::<i64>().ok()? * 3600 + m.parse::<i64>().ok()? * 60;
                    if rest.starts_with('+') {
                        secs
                    } else {
                        -secs
                    }
                }
                _ => return None,
            };
            // POSIX counts west of UTC as positive: local + west = UTC.
            Some(naive.and_utc() + chrono::Duration::seconds(west))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn until_times_are_read_in_their_zone() {
        let at = |d, tz| utc_of(d, tz).map(|t| t.to_rfc3339());
        assert_eq!(
            at("2026-12-07 13:00:00", Some("UTC0")).as_deref(),
            Some("2026-12-07T13:00:00+00:00")
        );
        assert_eq!(
            at("2026-12-07 15:00:00.5", Some("UTC-02:00")).as_deref(),
            Some("2026-12-07T13:00:00.500+00:00")
        );
        assert_eq!(
            at("2026-12-07 07:30:00", Some("UTC+05:30")).as_deref(),
            Some("2026-12-07T13:00:00+00:00")
        );
        assert!(at("2026-12-07 13:00:00", None).is_some());
        assert_eq!(gtid("0-1-42"), Some((0, 1, 42)));
        assert_eq!(gtid("0-1"), None);
    }
}
