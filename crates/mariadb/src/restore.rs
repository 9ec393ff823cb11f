//! What a restore of a MariaDB copy installs, for each mode, and the check that the
//! server is not running.
//!
//! - point-in-time: the copy's files as they are, binary logs included: live binary logs
//!   the copy does not hold (written after it) are removed, so the binlog history and
//!   the GTID position end where the data does (they are kept in the pre-restore copy).
//! - roll-forward: the copy's data files, then every transaction of the live binary logs
//!   from the copy's position on (or up to `--until`), replayed into them by a temporary
//!   server (see `replay.rs`) before anything live is touched; the live binary logs and
//!   their index stay as they are (they already hold what was replayed).
//!
//! Both: table and InnoDB files the live server has but the result does not (a table
//! created after the copy) are removed, or the restored server would find files its
//! dictionary does not know; the copy's pid file, its error log and its binlog position
//! file are not installed.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use shadowcopy_core::writer::{RestoreMode, RestorePlan};
use shadowcopy_core::BoxError;

use crate::files::Owner;
use crate::position::{BinlogPosition, POSITION_FILE};
use crate::server::ServerLayout;
pub use crate::until::{Until, UntilError};

#[derive(Debug, thiserror::Error)]
pub enum RestoreError {
    #[error(transparent)]
    BadTarget(#[from] UntilError),
    #[error("the server is running on {} ({how}); stop it first (systemctl stop mariadb, or mariadb-admin shutdown), then restore", .datadir.display())]
    Running { datadir: PathBuf, how: String },
    #[error("the copy holds nothing of the data directory {}; it is not a copy of this server", .0.display())]
    NoData(PathBuf),
    #[error("roll-forward restores in place (it replays the server's own binary logs into its own directories); leave out --to")]
    RollForwardElsewhere,
    #[error("roll-forward needs the server's binary log, which was off when the set was made; restore with --mode point-in-time")]
    NoBinlog,
    #[error("the copy holds no binlog position ({POSITION_FILE}): it cannot be rolled forward (a pre-restore copy, or one made with the binary log off); restore it with --mode point-in-time")]
    NoPosition,
    #[error("the copy's binlog position file is unreadable: {0}")]
    BadPosition(String),
}

/// Refuses when a server runs on the layout's data directory: its socket answers, its
/// pid file names a live mariadbd/mysqld, or a process holds InnoDB's or Aria's lock
/// on a file there.
pub fn check_not_running(layout: &ServerLayout) -> Result<(), RestoreError> {
    let running = |how: String| RestoreError::Running {
        datadir: layout.datadir.clone(),
        how,
    };
    if let Some(sock) = &layout.socket {
        if crate::instance::greets(sock) {
            return Err(running(format!("it answers on {}", sock.display())));
        }
    }
    if let Some(pid_file) = &layout.pid_file {
        if let Some(pid) = std::fs::read_to_string(pid_file)
            .ok()
            .and_then(|t| t.trim().parse::<u32>().ok())
        {
            if server_process(pid) {
                return Err(running(format!("pid {pid}, from {}", pid_file.display())));
            }
        }
    }
    let locked: Vec<PathBuf> = ["ibdata1", "aria_log_control"]
        .iter()
        .map(|f| layout.datadir.join(f))
        .chain(std::iter::once(layout.innodb_data_home_dir.join("ibdata1")))
        .collect();
    if let Some((path, pid)) = lock_holder(&locked) {
        return Err(running(format!(
            "pid {pid} holds the lock on {}",
            path.display()
        )));
    }
    Ok(())
}

/// Whether `pid` is a live (not zombie) mariadbd or mysqld.
fn server_process(pid: u32) -> bool {
    let comm = std::fs::read_to_string(format!("/proc/{pid}/comm")).unwrap_or_default();
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let state = stat
        .rsplit(')')
        .next()
        .and_then(|r| r.split_whitespace().next())
        .unwrap_or("Z");
    matches!(comm.trim(), "mariadbd" | "mysqld") && state != "Z"
}

/// A process holding a POSIX lock on one of `paths` (from /proc/locks).
fn lock_holder(paths: &[PathBuf]) -> Option<(PathBuf, u32)> {
    use std::os::unix::fs::MetadataExt;
    let locks = std::fs::read_to_string("/proc/locks").ok()?;
    for p in paths {
        let Ok(md) = std::fs::metadata(p) else {
            continue;
        };
        let (major, minor) = (rustix::fs::major(md.dev()), rustix::fs::minor(md.dev()));
        let id = format!("{major:02x}:{minor:02x}:{}", md.ino());
        for line in locks.lines() {
            let f: Vec<&str> = line.split_whitespace().collect();
            // "1: POSIX  ADVISORY  WRITE 1234 08:01:5678 0 EOF"
            if let Some(i) = f.iter().position(|w| *w == id) {
                if let Some(pid) = i.checked_sub(1).and_then(|j| f[j].parse::<u32>().ok()) {
                    if server_process(pid) || std::path::Path::new(&format!("/proc/{pid}")).exists()
                    {
                        return Some((p.clone(), pid));
                    }
                }
            }
        }
    }
    None
}

/// Which part of a restore a target belongs to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// Table, InnoDB and Aria files: installed (point-in-time) or replayed into.
    Data,
    /// A binary log or the binlog index.
    Binlog,
    /// Not installed: the position file, the copy's pid file and error log.
    Skip,
}

pub fn kind_of(layout: &ServerLayout, target: &Path) -> Kind {
    if target == layout.datadir.join(POSITION_FILE)
        || Some(target) == layout.pid_file.as_deref()
        || Some(target) == layout.log_error.as_deref()
    {
        return Kind::Skip;
    }
    if let Some(b) = &layout.binlog {
        let name = target
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        if target == b.index || (target.parent() == Some(b.dir.as_path()) && b.is_log_name(&name)) {
            return Kind::Binlog;
        }
    }
    Kind::Data
}

/// The data directory of a restore (in place: the live one; `--to`: where the copy's
/// data directory goes), found through the staged `mysql/` files.
pub fn restored_datadir(layout: &ServerLayout, staged: &[(PathBuf, PathBuf)]) -> Option<PathBuf> {
    if staged.iter().any(|(t, _)| t.starts_with(&layout.datadir)) {
        return Some(layout.datadir.clone());
    }
    staged
        .iter()
        .find(|(t, _)| t.parent().and_then(Path::file_name) == Some("mysql".as_ref()))
        .and_then(|(t, _)| t.parent()?.parent().map(Path::to_path_buf))
}

/// Reads the copy's binlog position from its staged position file.
pub fn staged_position(
    layout: &ServerLayout,
    staged: &[(PathBuf, PathBuf)],
) -> Result<BinlogPosition, RestoreError> {
    let target = layout.datadir.join(POSITION_FILE);
    let (_, s) = staged
        .iter()
        .find(|(t, _)| *t == target)
        .ok_or(RestoreError::NoPosition)?;
    let text = std::fs::read_to_string(s).map_err(|e| RestoreError::BadPosition(e.to_string()))?;
    BinlogPosition::parse(&text).map_err(|e| RestoreError::BadPosition(e.to_string()))
}

/// The restore plan for `mode`; roll-forward replays first (see `replay.rs`). Returns
/// the plan and the live database directories it empties (removed after the swap).
pub fn plan(
    layout: &ServerLayout,
    staged: &[(PathBuf, PathBuf)],
    mode: &RestoreMode,
) -> Result<(RestorePlan, Vec<PathBuf>), BoxError> {
    let datadir =
        restored_datadir(layout, staged).ok_or(RestoreError::NoData(layout.datadir.clone()))?;
    let in_place = datadir == layout.datadir;
    let owner = crate::files::owner_of(layout);
    let mut plan = RestorePlan::default();
    let mut data: Vec<(PathBuf, PathBuf)> = Vec::new();
    let mut copy_has_index = false;
    for (target, s) in staged {
        if !in_place {
            plan.install.push((s.clone(), target.clone()));
            continue;
        }
        match kind_of(layout, target) {
            Kind::Skip => plan.discard.push(s.clone()),
            Kind::Binlog => {
                if layout.binlog.as_ref().is_some_and(|b| *target == b.index) {
                    copy_has_index = true;
                }
                match mode {
                    RestoreMode::PointInTime => plan.install.push((s.clone(), target.clone())),
                    RestoreMode::RollForward { .. } => plan.discard.push(s.clone()),
                }
            }
            Kind::Data => data.push((target.clone(), s.clone())),
        }
    }
    if !in_place {
        if matches!(mode, RestoreMode::RollForward { .. }) {
            return Err(RestoreError::RollForwardElsewhere.into());
        }
        chown_parents(&owner, &datadir, staged)?;
        let moved = crate::elsewhere::Moved::new(layout, &datadir);
        if let Some(moved) = &moved {
            crate::elsewhere::relocate_index(layout, moved, staged)?;
        }
        plan.notes.push(crate::elsewhere::start_note(
            layout,
            &datadir,
            moved.as_ref(),
        ));
        return Ok((plan, Vec::new()));
    }
    match mode {
        RestoreMode::PointInTime => {
            plan.install
                .extend(data.iter().map(|(t, s)| (s.clone(), t.clone())));
        }
        RestoreMode::RollForward { until } => {
            let binlog = layout.binlog.as_ref().ok_or(RestoreError::NoBinlog)?;
            let position = staged_position(layout, staged)?;
            let until = until.as_deref().map(Until::parse).transpose()?;
            // Files beside the binary logs (a log directory's other logs) are not the
            // server's data: installed as they are.
            let roots = layout.data_roots();
            let (data, other): (Vec<_>, Vec<_>) = data
                .into_iter()
                .partition(|(t, _)| roots.iter().any(|r| t.starts_with(r)));
            plan.install.extend(other.into_iter().map(|(t, s)| (s, t)));
            let start = position.start().ok_or(RestoreError::NoPosition)?;
            let replayed =
                crate::replay::roll_forward(layout, binlog, &data, start, until.as_ref())?;
            plan.install.extend(replayed);
        }
    }
    let installed: BTreeSet<&Path> = plan.install.iter().map(|(_, t)| t.as_path()).collect();
    let (stale, emptied) = stale_files(layout, &installed);
    plan.remove.extend(stale);
    if let (RestoreMode::PointInTime, Some(b), true) = (mode, &layout.binlog, copy_has_index) {
        // The binlog history ends where the copy does.
        for e in read_dir(&b.dir) {
            let name = e.file_name().to_string_lossy().into_owned();
            if b.is_log_name(&name) && !installed.contains(e.path().as_path()) {
                plan.remove.push(e.path());
            }
        }
    }
    let live_position = layout.datadir.join(POSITION_FILE);
    if live_position.exists() {
        plan.remove.push(live_position);
    }
    let targets: Vec<(PathBuf, PathBuf)> = plan
        .install
        .iter()
        .map(|(s, t)| (t.clone(), s.clone()))
        .collect();
    for root in layout.paths() {
        let under: Vec<(PathBuf, PathBuf)> = targets
            .iter()
            .filter(|(t, _)| t.starts_with(&root))
            .cloned()
            .collect();
        if !under.is_empty() {
            chown_parents(&owner, &root, &under)?;
        }
    }
    Ok((plan, emptied))
}

/// Gives the directories holding the restored files (up to their root) to the owner:
/// the restore may have created them as root.
fn chown_parents(
    owner: &Owner,
    datadir: &Path,
    targets: &[(PathBuf, PathBuf)],
) -> Result<(), BoxError> {
    let mut dirs = BTreeSet::new();
    for (t, _) in targets {
        let mut d = t.parent();
        while let Some(dir) = d {
            if !dirs.insert(dir.to_path_buf()) || dir == datadir || dir.parent().is_none() {
                break;
            }
            d = dir.parent();
            if !d.is_some_and(|p| p.starts_with(datadir)) {
                break;
            }
        }
    }
    dirs.insert(datadir.to_path_buf());
    for d in dirs {
        if d.exists() {
            owner.chown(&d)?;
        }
    }
    Ok(())
}

/// Live table and InnoDB files the restored state does not have, and the database
/// directories left empty by removing them.
fn stale_files(layout: &ServerLayout, installed: &BTreeSet<&Path>) -> (Vec<PathBuf>, Vec<PathBuf>) {
    let mut stale = Vec::new();
    let mut emptied = Vec::new();
    let keep = |p: &Path| {
        installed.contains(p)
            || kind_of(layout, p) != Kind::Data
            || p.file_name()
                .is_some_and(|n| n.to_string_lossy().contains(".shadowcopy-"))
    };
    for root in layout.data_roots() {
        for e in read_dir(&root) {
            let name = e.file_name().to_string_lossy().into_owned();
            let path = e.path();
            let Ok(ft) = e.file_type() else { continue };
            if ft.is_dir() && root == layout.datadir {
                if name.starts_with('.') || name == "lost+found" {
                    continue;
                }
                let files: Vec<PathBuf> = walkdir::WalkDir::new(&path)
                    .into_iter()
                    .filter_map(Result::ok)
                    .filter(|f| f.file_type().is_file())
                    .map(|f| f.into_path())
                    .collect();
                let gone: Vec<PathBuf> = files.iter().filter(|f| !keep(f)).cloned().collect();
                if !gone.is_empty() && gone.len() == files.len() {
                    emptied.push(path.clone());
                }
                stale.extend(gone);
            } else if ft.is_file() && server_file(&name) && !keep(&path) {
                stale.push(path);
            }
        }
    }
    (stale, emptied)
}

/// Files at the top of a data, redo or undo directory that belong to the storage
/// engines (others there, a config file or a log, are left alone).
fn server_file(name: &str) -> bool {
    let undo =
        name.len() > 4 && name.starts_with("undo") && name[4..].bytes().all(|b| b.is_ascii_digit());
    undo || [
        "ibdata",
        "ib_logfile",
        "ibtmp",
        "aria_log",
        "ddl_recovery",
        "#ib_",
    ]
    .iter()
    .any(|p| name.starts_with(p))
        || matches!(name, "ib_buffer_pool" | "tc.log" | "ddl_recovery.log")
}

fn read_dir(dir: &Path) -> Vec<std::fs::DirEntry> {
    std::fs::read_dir(dir)
        .map(|rd| rd.filter_map(Result::ok).collect())
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn engine_files_are_told_from_others() {
        for f in [
            "ibdata1",
            "ib_logfile0",
            "undo001",
            "aria_log.00000001",
            "aria_log_control",
            "ib_buffer_pool",
            "ibtmp1",
            "ddl_recovery.log",
        ] {
            assert!(server_file(f), "{f}");
        }
        for f in [
            "my.cnf",
            "host.err",
            "undo",
            "mysql_upgrade_info",
            "multi-master.info",
        ] {
            assert!(!server_file(f), "{f}");
        }
    }
}
