//! `Writer::expose` for PostgreSQL: a copy opened read-only beside production, as a hot
//! standby of a sandbox clone of it (sandbox.rs) that is never promoted and never
//! archives.
//!
//! - Without a target it replays the copy's own WAL to the copy's consistent point
//!   (standby mode, `recovery_target = 'immediate'`) and pauses there.
//! - With `--until` (a time, an LSN or `xid:N`, as `restore --until`) it runs archive
//!   recovery with that target and `recovery_target_action = 'pause'`: the WAL after the
//!   copy comes from the set's WAL archive (`restore_command`) and from the live WAL
//!   directory (its segments after the copy, copied into the sandbox first: the newest
//!   WAL is rarely archived yet, and it is what holds the minutes before a mistake). A
//!   target the WAL does not reach stops the server ("recovery ended before configured
//!   recovery target was reached"), and the error names the newest commit the WAL holds.
//!   A time after that newest commit but not after the moment of asking is reached all
//!   the same: nothing was committed in between, so the copy opens right after that
//!   commit (`recovery_target_xid`; PostgreSQL alone cannot tell it reached such a time,
//!   as it stops only at the first commit past it).
//! - It listens on a private socket directory, or on the one the user chose, and with
//!   `--port` also on the loopback address, where the copy's own accounts and password
//!   hashes are asked for (`md5`, which also takes SCRAM). On the socket each OS user is
//!   the role of its own name (`peer`), root and the cluster's owner the superuser.
//! - The sandbox stays root's until root has written all it writes there (its settings,
//!   the signal file, the live WAL), then goes to the cluster's owner: nothing root
//!   writes can be swapped for a link meanwhile.

use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use shadowcopy_core::error::IoError;
use shadowcopy_core::model::CopyView;
use shadowcopy_core::writer::{shell_quote, ExposeOptions, Exposed};
use shadowcopy_core::BoxError;

use crate::cluster::ClusterLayout;
use crate::log_analysis;
use crate::recovery;
use crate::retention::copy_start;
use crate::sandbox::{last_lines, Sandbox, SANDBOX_PORT, START_LIMIT};
use crate::wal::{SegmentName, WalFileKind, WalFileName, WalSegSize};

/// Where a socket directory the user chose gets a port (the socket file's name) of its
/// own, so that it never takes the name of a live server's socket there.
const SOCKET_DIR_PORTS: std::ops::Range<u16> = 5433..6433;
/// How often the replay's progress is looked at while it runs to the target.
const POLL: Duration = Duration::from_millis(100);

#[derive(Debug, thiserror::Error)]
pub enum ExposeError {
    #[error("--until replays WAL after the copy from the set's WAL archive, and this PostgreSQL writer has none; give the set an `archive` (`shadowcopy pg setup URL --archive DIR`), or expose the copy at its own point (leave out --until)")]
    NoArchive,
    #[error("--until {until}: the WAL after the copy (in the copy, the set's archive and the live WAL directory) ends before that target, so the copy cannot be brought there; {newest}. Choose a target up to there (`shadowcopy pg log-analysis ID` shows the WAL chain)")]
    Unreachable {
        until: String,
        newest: String,
        newest_commit: Option<log_analysis::Commit>,
    },
    #[error("--until {0:?} names no time zone, and the exposed copy would read it in UTC, not in the cluster's zone; add one (2026-11-22 10:00:00+01, …Z, … UTC)")]
    NoZone(String),
    #[error("--until {until} is before the copy's consistent point; expose an older copy (`shadowcopy list`) for a target that early")]
    BeforeCopy { until: String },
    #[error("no port in {}..{} is free for a socket in {}; leave out --socket-dir, or give --port", SOCKET_DIR_PORTS.start, SOCKET_DIR_PORTS.end, .0.display())]
    NoSocketName(PathBuf),
    #[error("the copy did not start as a standby: {said}; server log: {log}")]
    Start { said: String, log: String },
    #[error("the copy stopped while replaying to --until {until}; server log: {log}")]
    Stopped { until: String, log: String },
    #[error(
        "the replay to --until {until} did not reach it within {}; server log: {log}",
        shadowcopy_core::error::humanize(START_LIMIT)
    )]
    Slow { until: String, log: String },
    #[error(transparent)]
    Io(#[from] IoError),
}

fn io<'a>(action: &'static str, path: &'a Path) -> impl FnOnce(std::io::Error) -> IoError + 'a {
    move |source| IoError {
        action,
        path: path.to_path_buf(),
        source,
    }
}

/// Opens the copy as described in the module documentation. The server keeps running
/// when this returns; closing the exposure stops it and removes `options.scratch`.
pub fn expose_copy(
    layout: &ClusterLayout,
    copy: &CopyView,
    options: &ExposeOptions,
    archive: Option<&Path>,
) -> Result<Exposed, BoxError> {
    let Some(until) = &options.until else {
        return open(layout, copy, options, archive, None);
    };
    let settings = recovery::target_settings(until)?;
    if archive.is_none() {
        return Err(ExposeError::NoArchive.into());
    }
    if settings.iter().any(|(k, _)| *k == "recovery_target_time") && parse_time(until).is_none() {
        return Err(ExposeError::NoZone(until.clone()).into());
    }
    let asked_at = chrono::Utc::now();
    let opened = open(layout, copy, options, archive, Some((until, settings)));
    // A time between the newest commit and now: PostgreSQL cannot tell it reached it (it
    // stops at the first commit after the target, and there is none yet), but the state
    // then is the state after that newest commit, which every WAL copied since holds.
    let newest = match &opened {
        Err(e) => match e.downcast_ref::<ExposeError>() {
            Some(ExposeError::Unreachable {
                newest_commit: Some(c),
                ..
            }) => settled_before(until, c, asked_at).then(|| c.clone()),
            _ => None,
        },
        Ok(_) => None,
    };
    let Some(commit) = newest else {
        return opened;
    };
    tracing::info!(
        "--until {until}: no commit after transaction {} ({}); opening the copy right after it",
        commit.xid,
        commit.time
    );
    let at_commit = vec![
        ("recovery_target_xid", commit.xid.to_string()),
        ("recovery_target_inclusive", "on".to_string()),
    ];
    open(layout, copy, options, archive, Some((until, at_commit)))
}

/// Whether `until` (a time with a zone) lies after `commit` and no later than `now`:
/// nothing was committed between them.
fn settled_before(
    until: &str,
    commit: &log_analysis::Commit,
    now: chrono::DateTime<chrono::Utc>,
) -> bool {
    let (Some(target), Some(committed)) = (parse_time(until), parse_time(&commit.time)) else {
        return false;
    };
    committed <= target && target <= now
}

/// A time as `--until` and pg_waldump give it, when it names its zone:
/// `2026-12-07 13:33:04.369778+00`, `…+02:00`, `…Z`, `… UTC`.
fn parse_time(s: &str) -> Option<chrono::DateTime<chrono::Utc>> {
    let s = s.trim();
    let s = s
        .strip_suffix(" UTC")
        .or_else(|| s.strip_suffix('Z'))
        .map(|t| format!("{t}+00"))
        .unwrap_or_else(|| s.to_string());
    ["%Y-%m-%d %H:%M:%S%.f%#z", "%Y-%m-%dT%H:%M:%S%.f%#z"]
        .iter()
        .find_map(|f| chrono::DateTime::parse_from_str(&s, f).ok())
        .map(|t| t.with_timezone(&chrono::Utc))
}

/// Builds the sandbox and starts it, paused at the copy's point or at `target` (the
/// `--until` as given, and its settings).
fn open(
    layout: &ClusterLayout,
    copy: &CopyView,
    options: &ExposeOptions,
    archive: Option<&Path>,
    target: Option<(&String, Vec<(&'static str, String)>)>,
) -> Result<Exposed, BoxError> {
    let mut sandbox = Sandbox::build_in(layout, copy, Some(&options.scratch))?;
    let socket_dir = match &options.socket_dir {
        Some(dir) => dir.clone(),
        None => sandbox.socket.path().to_path_buf(),
    };
    let port = match (options.port, &options.socket_dir) {
        (Some(port), _) => port,
        (None, Some(dir)) => free_socket_name(dir)?,
        (None, None) => SANDBOX_PORT,
    };
    // Root writes all it writes here before the sandbox is handed over.
    strip_recovery_settings(&sandbox.data)?;
    let user = superuser(layout);
    // On the socket, each OS user is the role of its own name (peer), but root and the
    // cluster's owner are the superuser (what extract connects as); on the port, the
    // copy's own passwords.
    let owner_name = shadowcopy_core::dbfiles::user_name(layout.owner_uid)
        .unwrap_or_else(|| layout.owner_uid.to_string());
    write_new(
        &sandbox.dir.path().join("sandbox_ident.conf"),
        &format!("expose root {user}\nexpose {owner_name} {user}\nexpose /^(.*)$ \\1\n"),
    )?;
    let mut hba = String::from("local all all peer map=expose\n");
    if options.port.is_some() {
        hba.push_str("host all all 127.0.0.1/32 md5\n");
    }
    write_new(&sandbox.dir.path().join("sandbox_hba.conf"), &hba)?;
    let mut settings = sandbox.settings();
    settings.retain(|(k, _)| {
        !matches!(
            *k,
            "max_wal_senders" | "port" | "unix_socket_directories" | "listen_addresses"
        )
    });
    settings.extend([
        ("port", port.to_string()),
        ("unix_socket_directories", socket_dir.display().to_string()),
        ("hot_standby", "on".to_string()),
        ("recovery_target_action", "pause".to_string()),
        ("default_transaction_read_only", "on".to_string()),
        (
            "listen_addresses",
            if options.port.is_some() {
                "127.0.0.1"
            } else {
                "''"
            }
            .to_string(),
        ),
    ]);
    let signal = match &target {
        None => {
            settings.push(("recovery_target", "immediate".to_string()));
            "standby.signal"
        }
        Some((_, target_settings)) => {
            // Values with spaces (the command, a time) go into the sandbox's own config
            // file: `pg_ctl -o` splits on spaces.
            settings.retain(|(k, _)| *k != "restore_command");
            let mut conf = String::from(
                "# A copy exposed read-only by shadowcopy, brought forward to --until.\n",
            );
            let restore_command = recovery::restore_command(archive)?;
            for (k, v) in
                std::iter::once(&("restore_command", restore_command)).chain(target_settings.iter())
            {
                conf.push_str(&format!("{k} = '{}'\n", v.replace('\'', "''")));
            }
            write_new(&sandbox.dir.path().join("sandbox.conf"), &conf)?;
            copy_live_wal(layout, copy, &sandbox.data.join("pg_wal"))?;
            "recovery.signal"
        }
    };
    write_new(&sandbox.data.join(signal), "")?;
    sandbox.hand_over()?;
    settings.extend(sandbox.hot_standby_limits()?);

    let (ok, said) = sandbox.run("pg_ctl", &sandbox.start_args_with(&settings), START_LIMIT)?;
    sandbox.started = true;
    if let Some((until, _)) = &target {
        if !ok {
            return Err(stopped(layout, archive, copy, until, &sandbox).into());
        }
        wait_for_pause(&sandbox, &socket_dir, port, &user, until).map_err(|e| match e {
            ExposeError::Stopped { .. } => stopped(layout, archive, copy, until, &sandbox),
            e => e,
        })?;
    } else if !ok {
        return Err(ExposeError::Start {
            said,
            log: sandbox.log_tail(),
        }
        .into());
    }
    let pid = std::fs::read_to_string(sandbox.data.join("postmaster.pid"))
        .ok()
        .and_then(|s| s.lines().next().and_then(|l| l.trim().parse::<u32>().ok()));
    // The server and its directories outlive this call: the exposure owns them now (the
    // private socket directory too, unused with --socket-dir, removed at the close).
    let private_dir = sandbox.socket.path().to_path_buf();
    sandbox.keep();
    let connect = match options.port {
        Some(port) => format!(
            "psql {}  (the copy's own accounts and passwords)",
            shell_quote(format!("host=127.0.0.1 port={port} dbname=postgres"))
        ),
        None => format!(
            "psql {}",
            shell_quote(format!(
                "host={} port={port} dbname=postgres user={user}",
                socket_dir.display()
            ))
        ),
    };
    Ok(Exposed {
        address: socket_dir.display().to_string(),
        connect,
        pid,
        port: Some(port),
        private_dir: Some(private_dir),
        writer: String::new(),
    })
}

/// The role to connect to an exposed copy as: the cluster's bootstrap superuser.
pub(crate) fn superuser(layout: &ClusterLayout) -> String {
    if layout.superuser.is_empty() {
        shadowcopy_core::dbfiles::user_name(layout.owner_uid).unwrap_or_else(|| "postgres".into())
    } else {
        layout.superuser.clone()
    }
}

/// The first port in [`SOCKET_DIR_PORTS`] whose socket file is not in `dir`.
fn free_socket_name(dir: &Path) -> Result<u16, ExposeError> {
    SOCKET_DIR_PORTS
        .clone()
        .find(|p| {
            let sock = dir.join(format!(".s.PGSQL.{p}"));
            std::fs::symlink_metadata(&sock).is_err()
                && std::fs::symlink_metadata(dir.join(format!(".s.PGSQL.{p}.lock"))).is_err()
        })
        .ok_or_else(|| ExposeError::NoSocketName(dir.to_path_buf()))
}

/// Copies the live WAL directory's segments from the copy's start on (and its timeline
/// history files) into the sandbox's `pg_wal`. A live segment that holds this cluster's
/// WAL for its own position replaces the copy's file of that name (the same segment,
/// written further, where the copy may hold a recycled file under that name); a
/// recycled live file is left out. Only regular files of the right size, opened without
/// following links and without blocking (the directory is the database owner's, and so
/// could hold a link or a FIFO), read up to that size. Called before the sandbox is
/// handed over, so nothing below it can be swapped meanwhile.
fn copy_live_wal(
    layout: &ClusterLayout,
    copy: &CopyView,
    sandbox_wal: &Path,
) -> Result<(), BoxError> {
    use std::io::Read;
    let seg_size = WalSegSize::new(layout.wal_segment_size)?;
    let sysid: Option<u64> = layout.system_identifier.parse().ok();
    let (start, _) = copy_start(layout, copy)?;
    let entries = match std::fs::read_dir(&layout.wal_dir) {
        Ok(e) => e,
        // A host that lost its WAL directory still has the archive.
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(io("read", &layout.wal_dir)(e).into()),
    };
    for entry in entries {
        let entry = entry.map_err(io("read", &layout.wal_dir))?;
        let name = entry.file_name().to_string_lossy().into_owned();
        let (segment, limit) = match WalFileName::parse(&name) {
            Some(f) if f.kind == WalFileKind::Segment => {
                match SegmentName::parse(&name, seg_size) {
                    Ok(s) if s.timeline >= start.timeline && s.segno >= start.segno => {
                        (Some(s), seg_size.bytes())
                    }
                    _ => continue,
                }
            }
            Some(f) if f.kind == WalFileKind::TimelineHistory => (None, 1 << 20),
            _ => continue,
        };
        let from = entry.path();
        let mut src = match std::fs::OpenOptions::new()
            .read(true)
            .custom_flags(
                (rustix::fs::OFlags::NOFOLLOW | rustix::fs::OFlags::NONBLOCK).bits() as i32,
            )
            .open(&from)
        {
            Ok(f) => f,
            // Removed or recycled by the live server meanwhile, or a link.
            Err(_) => continue,
        };
        let meta = src.metadata().map_err(io("inspect", &from))?;
        if !meta.is_file() || meta.len() > limit {
            continue;
        }
        let dest = sandbox_wal.join(&name);
        let mut head = [0u8; 32];
        match segment {
            Some(s) => {
                if meta.len() != limit
                    || src.read_exact(&mut head).is_err()
                    || !crate::log_analysis::header_is_own(&head, &s, seg_size, sysid)
                {
                    continue;
                }
                match std::fs::remove_file(&dest) {
                    Ok(()) => {}
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                    Err(e) => return Err(io("replace", &dest)(e).into()),
                }
            }
            None if std::fs::symlink_metadata(&dest).is_ok() => continue,
            None => {}
        }
        let mut dst = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .custom_flags(rustix::fs::OFlags::NOFOLLOW.bits() as i32)
            .open(&dest)
            .map_err(io("create", &dest))?;
        let written = if segment.is_some() {
            std::io::Write::write_all(&mut dst, &head).map_err(io("copy", &from))?;
            32
        } else {
            0
        };
        std::io::copy(&mut (&mut src).take(limit - written), &mut dst)
            .map_err(io("copy", &from))?;
    }
    Ok(())
}

/// A file only root writes in the sandbox before it is handed over: created anew (an
/// earlier one removed), never through a link.
fn write_new(path: &Path, contents: &str) -> Result<(), ExposeError> {
    Ok(crate::files::replace_file(path, contents)?)
}

/// Leaves out of the clone's `postgresql.auto.conf` what would steer its recovery
/// elsewhere: a copy of a cluster once restored by shadowcopy (or set up by hand) may
/// carry `restore_command`, `recovery_target*` or a primary to follow, which the file
/// (read after the sandbox's own) would put over the exposure's.
fn strip_recovery_settings(data: &Path) -> Result<(), ExposeError> {
    let auto = data.join("postgresql.auto.conf");
    let text = match std::fs::read_to_string(&auto) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(io("read", &auto)(e).into()),
    };
    let steering = |line: &str| {
        let key = line
            .split('=')
            .next()
            .unwrap_or("")
            .trim()
            .to_ascii_lowercase();
        key == "restore_command"
            || key.starts_with("recovery_target")
            || key == "recovery_end_command"
            || key == "archive_cleanup_command"
            || key == "primary_conninfo"
            || key == "primary_slot_name"
    };
    let kept: String = text
        .lines()
        .filter(|l| !steering(l))
        .map(|l| format!("{l}\n"))
        .collect();
    if kept != text {
        write_new(&auto, &kept)?;
    }
    Ok(())
}

/// Waits until the replay pauses at its target, or the server stops (target not
/// reached, or before the copy's consistent point).
fn wait_for_pause(
    sandbox: &Sandbox,
    socket_dir: &Path,
    port: u16,
    user: &str,
    until: &str,
) -> Result<(), ExposeError> {
    let began = Instant::now();
    let pid_file = sandbox.data.join("postmaster.pid");
    loop {
        let state = postgres::Config::new()
            .host_path(socket_dir)
            .port(port)
            .user(user)
            .dbname("postgres")
            .connect_timeout(Duration::from_secs(5))
            .connect(postgres::NoTls)
            .and_then(|mut c| {
                c.query_one("SELECT pg_get_wal_replay_pause_state()", &[])
                    .map(|r| r.get::<_, String>(0))
            });
        if state.is_ok_and(|s| s == "paused") {
            return Ok(());
        }
        if !pid_file.exists() {
            return Err(ExposeError::Stopped {
                until: until.to_string(),
                log: sandbox.log_tail(),
            });
        }
        if began.elapsed() > START_LIMIT {
            return Err(ExposeError::Slow {
                until: until.to_string(),
                log: sandbox.log_tail(),
            });
        }
        std::thread::sleep(POLL);
    }
}

/// Why the server stopped on its way to `until`, in the user's words: the target is past
/// the WAL there is (with the newest commit it holds), or before the copy.
fn stopped(
    layout: &ClusterLayout,
    archive: Option<&Path>,
    copy: &CopyView,
    until: &str,
    sandbox: &Sandbox,
) -> ExposeError {
    let log = std::fs::read_to_string(sandbox.log_path()).unwrap_or_default();
    if log.contains("before consistent recovery point") {
        return ExposeError::BeforeCopy {
            until: until.to_string(),
        };
    }
    if log.contains("recovery ended before configured recovery target was reached") {
        let (newest, newest_commit) = match log_analysis::analyze(layout, archive, copy) {
            Ok(a) => match a.roll_forward.newest_commit {
                Some(c) => (
                    format!(
                        "the newest commit it holds is transaction {} at {} (LSN {})",
                        c.xid, c.time, c.lsn
                    ),
                    Some(c),
                ),
                None => (
                    format!(
                        "it holds no commit after the copy (its last segment is {})",
                        a.roll_forward
                            .last_segment
                            .as_deref()
                            .unwrap_or("the copy's own")
                    ),
                    None,
                ),
            },
            Err(e) => (
                format!("the WAL chain could not be read to say where it ends: {e}"),
                None,
            ),
        };
        return ExposeError::Unreachable {
            until: until.to_string(),
            newest,
            newest_commit,
        };
    }
    ExposeError::Stopped {
        until: until.to_string(),
        log: last_lines(&log, 20),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn commit(time: &str) -> log_analysis::Commit {
        log_analysis::Commit {
            xid: 7,
            lsn: "0/1000000".into(),
            time: time.into(),
        }
    }

    #[test]
    fn times_with_a_zone_are_read_and_without_one_are_not() {
        let utc = |s| parse_time(s).map(|t| t.to_rfc3339());
        assert_eq!(
            utc("2026-12-07 13:33:04.369778+00").as_deref(),
            Some("2026-12-07T13:33:04.369778+00:00")
        );
        assert_eq!(
            utc("2026-12-07 15:33:04+02:00").as_deref(),
            Some("2026-12-07T13:33:04+00:00")
        );
        assert_eq!(
            utc("2026-12-07 13:33:03.972494 UTC").as_deref(),
            Some("2026-12-07T13:33:03.972494+00:00")
        );
        assert!(utc("2026-12-07T13:33:04Z").is_some());
        // The server's own zone would decide: not guessed.
        assert!(utc("2026-12-07 13:33:04").is_none());
        assert!(utc("0/3000060").is_none());
    }

    #[test]
    fn a_time_after_the_newest_commit_and_not_after_now_is_settled() {
        let now = parse_time("2026-12-07 13:40:00+00").unwrap();
        let c = commit("2026-12-07 13:33:03.972494 UTC");
        assert!(settled_before("2026-12-07 13:35:00+00", &c, now));
        // In the future: commits may still come.
        assert!(!settled_before("2026-12-07 13:45:00+00", &c, now));
        // Before the newest commit: PostgreSQL itself must find it.
        assert!(!settled_before("2026-12-07 13:30:00+00", &c, now));
        assert!(!settled_before("2026-12-07 13:35:00", &c, now));
    }
}
