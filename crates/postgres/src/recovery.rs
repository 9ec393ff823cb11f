//! What a restore of a PostgreSQL copy installs: the restore plan for point-in-time and
//! roll-forward, the recovery settings written into the restored cluster, and the check
//! that the server is not running.
//!
//! Recovery settings go into `postgresql.auto.conf` between marker lines (replacing an
//! earlier block of ours), as pgBackRest does; `recovery.signal` starts archive recovery.

use std::collections::BTreeSet;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use shadowcopy_core::error::IoError;
use shadowcopy_core::writer::{staged_path, RestoreMode, RestorePlan};

use crate::cluster::ClusterLayout;
use crate::files::Owner;
use crate::wal::WalFileName;

const BLOCK_START: &str =
    "# --- recovery settings written by shadowcopy restore (roll-forward) ---";
const BLOCK_END: &str = "# --- end of shadowcopy recovery settings ---";

/// Directories initdb makes and a server needs, even empty; a restore into a destroyed
/// data directory gets them back.
const DATA_DIRS: &[&str] = &[
    "base",
    "global",
    "pg_commit_ts",
    "pg_dynshmem",
    "pg_logical",
    "pg_logical/mappings",
    "pg_logical/snapshots",
    "pg_multixact",
    "pg_multixact/members",
    "pg_multixact/offsets",
    "pg_notify",
    "pg_replslot",
    "pg_serial",
    "pg_snapshots",
    "pg_stat",
    "pg_stat_tmp",
    "pg_subtrans",
    "pg_tblspc",
    "pg_twophase",
    "pg_xact",
];

#[derive(Debug, thiserror::Error)]
pub enum RecoveryError {
    #[error("--until {0:?} is neither a time (2026-11-22 10:00:00+00), an LSN (0/3000060) nor a transaction (xid:1234)")]
    BadTarget(String),
    #[error("the copy holds no global/pg_control; it is not a copy of a PostgreSQL cluster")]
    NoControlFile,
    #[error("roll-forward restores in place (it replays the live WAL and archive into the cluster's own directories); leave out --to")]
    RollForwardElsewhere,
    #[error("cannot tell where below {} the cluster's WAL directory and tablespaces were restored, so its links would still name the live ones; restore the copy in place, or with --to into a directory of its own", .0.display())]
    ElsewhereUnknown(PathBuf),
    #[error(transparent)]
    Io(#[from] IoError),
}

fn io<'a>(
    action: &'static str,
    path: &'a Path,
) -> impl FnOnce(std::io::Error) -> RecoveryError + 'a {
    move |source| {
        RecoveryError::Io(IoError {
            action,
            path: path.to_path_buf(),
            source,
        })
    }
}

/// The files a running server keeps in its data directory that name that server: a
/// copy holds them (it is made while the server runs), no restore puts them back (a
/// `postmaster.pid` naming a live process stops PostgreSQL from starting), and an
/// archive push leaves them out.
pub fn lock_files(data_dir: &Path) -> [PathBuf; 2] {
    [
        data_dir.join("postmaster.pid"),
        data_dir.join("postmaster.opts"),
    ]
}

/// The pid of a live postmaster on `data_dir`, from its `postmaster.pid`.
pub fn running_postmaster(data_dir: &Path) -> Option<i32> {
    let text = std::fs::read_to_string(data_dir.join("postmaster.pid")).ok()?;
    let pid: i32 = text.lines().next()?.trim().parse().ok()?;
    let comm = std::fs::read_to_string(format!("/proc/{pid}/comm")).ok()?;
    let status = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // A zombie left by a killed server holds nothing.
    let state = status.rsplit(')').next()?.split_whitespace().next()?;
    (comm.trim().starts_with("postgres") && state != "Z").then_some(pid)
}

/// A recovery target as PostgreSQL settings.
pub fn target_settings(until: &str) -> Result<Vec<(&'static str, String)>, RecoveryError> {
    let until = until.trim();
    if let Some(xid) = until.strip_prefix("xid:") {
        if xid.parse::<u64>().is_ok() {
            return Ok(vec![("recovery_target_xid", xid.to_string())]);
        }
        return Err(RecoveryError::BadTarget(until.to_string()));
    }
    if until.parse::<crate::wal::Lsn>().is_ok() {
        return Ok(vec![("recovery_target_lsn", until.to_string())]);
    }
    let looks_like_time = until.len() >= 10
        && until.as_bytes()[..4].iter().all(u8::is_ascii_digit)
        && until.as_bytes()[4] == b'-';
    if looks_like_time {
        return Ok(vec![("recovery_target_time", until.to_string())]);
    }
    Err(RecoveryError::BadTarget(until.to_string()))
}

fn quote(value: &str) -> String {
    format!("'{}'", value.replace('\'', "''"))
}

/// Where a cluster restored elsewhere looks for a port of its own.
const SIDE_PORTS: std::ops::Range<u16> = 5433..6433;

/// How to start a cluster restored into `data_dir` beside the live one.
fn start_note(layout: &ClusterLayout, data_dir: &Path, port: u16) -> String {
    use shadowcopy_core::writer::shell_quote;
    let pg_ctl = crate::bin::pg_bin(layout.version_num, "pg_ctl")
        .map(|p| p.display().to_string())
        .unwrap_or_else(|_| "pg_ctl".into());
    let user = shadowcopy_core::dbfiles::user_name(layout.owner_uid)
        .unwrap_or_else(|| layout.owner_uid.to_string());
    format!(
        "start it beside the live cluster (port {port}, archiving off): runuser -u {} -- {} \
         start -D {} -l {}",
        shell_quote(&user),
        shell_quote(&pg_ctl),
        shell_quote(data_dir),
        shell_quote(data_dir.join("restored.log"))
    )
}

/// The restore plan; see the module documentation of `writer.rs`.
pub fn plan(
    layout: &ClusterLayout,
    archive: Option<&Path>,
    staged: &[(PathBuf, PathBuf)],
    mode: &RestoreMode,
) -> Result<RestorePlan, RecoveryError> {
    let data_dir = staged
        .iter()
        .find(|(t, _)| t.ends_with("global/pg_control"))
        .and_then(|(t, _)| t.parent()?.parent())
        .ok_or(RecoveryError::NoControlFile)?
        .to_path_buf();
    let in_place = data_dir == layout.data_dir;
    if !in_place && matches!(mode, RestoreMode::RollForward { .. }) {
        return Err(RecoveryError::RollForwardElsewhere);
    }
    if let RestoreMode::RollForward { until: Some(u) } = mode {
        target_settings(u)?;
    }
    let owner = crate::files::owner_of(layout);
    // A restore elsewhere keeps the tree's shape below a root: its WAL directory and
    // tablespaces are there too, and the restored cluster must use those, never the
    // live ones.
    let moved = (!in_place).then(|| Moved::new(&data_dir, layout)).flatten();
    let has_links = layout.separate_wal() || !layout.tablespaces.is_empty();
    if !in_place && moved.is_none() && has_links {
        return Err(RecoveryError::ElsewhereUnknown(data_dir));
    }
    let wal_dir = match &moved {
        _ if in_place => layout.wal_dir.clone(),
        Some(moved) if layout.separate_wal() => moved.path(&layout.wal_dir),
        _ => data_dir.join("pg_wal"),
    };
    prepare_directories(&data_dir, &owner, staged, layout)?;

    let mut plan = RestorePlan::default();
    let relinked = match &moved {
        Some(moved) => relink_moved(&mut plan, &data_dir, moved, layout, &owner, staged)?,
        None => Vec::new(),
    };
    let lock_files = lock_files(&data_dir);
    let targets: BTreeSet<&Path> = staged.iter().map(|(t, _)| t.as_path()).collect();
    for (target, s) in staged {
        if lock_files.contains(target) || relinked.contains(target) {
            // The copied lock file names the server that ran when the copy was made;
            // the copy's links name the live cluster's directories.
            plan.discard.push(s.clone());
            continue;
        }
        let in_wal_dir = target.parent() == Some(wal_dir.as_path());
        if in_wal_dir && matches!(mode, RestoreMode::RollForward { .. }) && target.exists() {
            // The live segment holds at least as much as the copy's.
            plan.discard.push(s.clone());
            continue;
        }
        plan.install.push((s.clone(), target.clone()));
    }
    for l in &lock_files {
        if l.exists() {
            plan.discard.push(l.clone());
        }
    }
    match mode {
        RestoreMode::PointInTime => {
            // Live WAL beyond the copy would be replayed past it: it goes (into the
            // pre-restore copy), and so do stale recovery signals.
            for entry in read_dir(&wal_dir)? {
                let name = entry.file_name().to_string_lossy().into_owned();
                let path = entry.path();
                if WalFileName::parse(&name).is_some() && !targets.contains(path.as_path()) {
                    plan.remove.push(path);
                }
            }
            let staged_files: BTreeSet<&Path> = staged.iter().map(|(_, s)| s.as_path()).collect();
            for entry in read_dir(&wal_dir.join("archive_status"))? {
                let path = entry.path();
                if !targets.contains(path.as_path()) && !staged_files.contains(path.as_path()) {
                    plan.remove.push(path);
                }
            }
            for signal in ["recovery.signal", "standby.signal"] {
                let p = data_dir.join(signal);
                if p.exists() && !targets.contains(p.as_path()) {
                    plan.remove.push(p);
                }
            }
            // Recovery ends as soon as the copy is consistent (its backup's stop, not
            // whatever later WAL its last segment holds) and the server promotes to a
            // new timeline: WAL it writes from then on never reuses a name the archive
            // holds from the old timeline. restore_command lets it see the archive's
            // timeline history files, so the new timeline is a new number.
            let mut settings = vec![
                ("restore_command", restore_command(archive)?),
                ("recovery_target", "immediate".to_string()),
                ("recovery_target_timeline", "current".to_string()),
            ];
            if !in_place {
                // A second cluster started from the same copy must not push its WAL into
                // the original's archive, nor want the live one's port.
                settings.push(("archive_mode", "off".to_string()));
                let port = shadowcopy_core::dbfiles::free_port(SIDE_PORTS);
                settings.push(("port", port.to_string()));
                plan.notes.push(start_note(layout, &data_dir, port));
            }
            add_recovery(&mut plan, &data_dir, staged, &owner, settings)?;
        }
        RestoreMode::RollForward { until } => {
            let mut settings = vec![("restore_command", restore_command(archive)?)];
            if let Some(u) = until {
                settings.extend(target_settings(u)?);
            }
            add_recovery(&mut plan, &data_dir, staged, &owner, settings)?;
        }
    }
    Ok(plan)
}

/// Where a restore elsewhere (`--to DIR`) put the cluster's directories: it keeps their
/// shape below DIR from their deepest common directory on, as it does for every set.
struct Moved {
    /// The cluster's directories' deepest common directory.
    common: PathBuf,
    /// Where it went.
    to: PathBuf,
}

impl Moved {
    /// From the restored data directory `restored` and the live layout.
    fn new(restored: &Path, layout: &ClusterLayout) -> Option<Moved> {
        let paths = layout.paths();
        let mut common = layout.data_dir.clone();
        for p in &paths {
            while !p.starts_with(&common) {
                if !common.pop() {
                    return None;
                }
            }
        }
        let rel = layout.data_dir.strip_prefix(&common).ok()?;
        if !restored.ends_with(rel) {
            return None;
        }
        let to = restored.ancestors().nth(rel.components().count())?;
        Some(Moved {
            common,
            to: to.to_path_buf(),
        })
    }

    /// Where the cluster's directory `live` went.
    fn path(&self, live: &Path) -> PathBuf {
        match live.strip_prefix(&self.common) {
            Ok(rel) => self.to.join(rel),
            Err(_) => self.to.join(live.strip_prefix("/").unwrap_or(live)),
        }
    }
}

/// Points a cluster restored elsewhere at its own WAL directory and tablespaces,
/// restored beside its data directory: the `pg_wal` link (with `initdb --waldir`), the
/// `pg_tblspc/<oid>` links, and the copy's `tablespace_map`, which the server follows
/// at start and which names the live tablespaces: a second cluster writing into them
/// would corrupt the first.
///
/// The links go into `plan`; returns their paths (the copy's own links there are not
/// installed).
fn relink_moved(
    plan: &mut RestorePlan,
    data_dir: &Path,
    moved: &Moved,
    layout: &ClusterLayout,
    owner: &Owner,
    staged: &[(PathBuf, PathBuf)],
) -> Result<Vec<PathBuf>, RecoveryError> {
    let mut links = Vec::new();
    if layout.separate_wal() {
        links.push((data_dir.join("pg_wal"), moved.path(&layout.wal_dir)));
    }
    for ts in &layout.tablespaces {
        let link = data_dir.join("pg_tblspc").join(ts.oid.to_string());
        links.push((link, moved.path(&ts.location)));
    }
    for (link, target) in &links {
        if !target.exists() {
            std::fs::create_dir_all(target).map_err(io("create", target))?;
            std::fs::set_permissions(target, std::fs::Permissions::from_mode(0o700))
                .map_err(io("set the mode of", target))?;
            owner.chown(target)?;
        }
        // Staged beside it and installed with the rest (over the copy's own link).
        let staged_link = staged_path(link);
        match std::fs::symlink_metadata(&staged_link) {
            Ok(_) => std::fs::remove_file(&staged_link).map_err(io("replace", &staged_link))?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(io("look at", &staged_link)(e)),
        }
        std::os::unix::fs::symlink(target, &staged_link).map_err(io("link", &staged_link))?;
        owner.lchown(&staged_link)?;
        plan.install.push((staged_link, link.clone()));
    }
    let map = data_dir.join("tablespace_map");
    if let Some((_, staged_map)) = staged.iter().find(|(t, _)| *t == map) {
        let text = std::fs::read_to_string(staged_map).map_err(io("read", staged_map))?;
        let mut rewritten = String::new();
        for line in text.lines() {
            match line.split_once(' ') {
                Some((oid, location)) => {
                    let location = moved.path(Path::new(location));
                    rewritten.push_str(&format!("{oid} {}\n", location.display()));
                }
                None => rewritten.push_str(&format!("{line}\n")),
            }
        }
        write_owned(staged_map, &rewritten, owner)?;
    }
    Ok(links.into_iter().map(|(link, _)| link).collect())
}

/// `restore_command` reading `archive` through `shadowcopy pg archive-get`, or
/// `/bin/false` (nothing archived) when the set has no archive.
pub(crate) fn restore_command(archive: Option<&Path>) -> Result<String, RecoveryError> {
    Ok(match archive {
        Some(dir) => format!(
            "{} pg archive-get --archive {} %f %p",
            shell_word(&current_exe()?),
            shell_word(dir)
        ),
        None => "/bin/false".to_string(),
    })
}

/// Adds `recovery.signal` and our block of recovery settings (plus promotion at the end
/// of recovery) to the restored `postgresql.auto.conf`: the copy's own, staged, or a
/// new one.
fn add_recovery(
    plan: &mut RestorePlan,
    data_dir: &Path,
    staged: &[(PathBuf, PathBuf)],
    owner: &Owner,
    mut settings: Vec<(&'static str, String)>,
) -> Result<(), RecoveryError> {
    settings.push(("recovery_target_action", "promote".to_string()));
    let auto_conf = data_dir.join("postgresql.auto.conf");
    let conf_path = match staged.iter().find(|(t, _)| *t == auto_conf) {
        Some((_, s)) => s.clone(),
        None => {
            let s = staged_path(&auto_conf);
            plan.install.push((s.clone(), auto_conf.clone()));
            s
        }
    };
    let old = std::fs::read_to_string(&conf_path).unwrap_or_default();
    write_owned(&conf_path, &with_recovery_block(&old, &settings), owner)?;
    let signal = data_dir.join("recovery.signal");
    let staged_signal = staged_path(&signal);
    write_owned(&staged_signal, "", owner)?;
    plan.install.push((staged_signal, signal));
    Ok(())
}

/// Gives the data directory (and the directories the restore created under the
/// cluster's roots) to the cluster's owner with mode 0700, and makes the empty
/// directories a server needs.
fn prepare_directories(
    data_dir: &Path,
    owner: &Owner,
    staged: &[(PathBuf, PathBuf)],
    layout: &ClusterLayout,
) -> Result<(), RecoveryError> {
    for d in DATA_DIRS {
        let p = data_dir.join(d);
        if !p.exists() {
            std::fs::create_dir_all(&p).map_err(io("create", &p))?;
            std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o700))
                .map_err(io("set the mode of", &p))?;
            owner.chown(&p)?;
        }
    }
    let mut roots: Vec<&Path> = vec![data_dir];
    roots.push(&layout.wal_dir);
    roots.extend(layout.tablespaces.iter().map(|t| t.location.as_path()));
    let mut dirs = BTreeSet::new();
    for (target, _) in staged {
        if let Some(root) = roots.iter().find(|r| target.starts_with(r)) {
            let mut d = target.parent();
            while let Some(dir) = d {
                dirs.insert(dir.to_path_buf());
                if dir == *root {
                    break;
                }
                d = dir.parent();
            }
        }
    }
    dirs.insert(data_dir.to_path_buf());
    for d in dirs {
        owner.chown(&d)?;
    }
    std::fs::set_permissions(data_dir, std::fs::Permissions::from_mode(0o700))
        .map_err(io("set the mode of", data_dir))?;
    Ok(())
}

fn read_dir(dir: &Path) -> Result<Vec<std::fs::DirEntry>, RecoveryError> {
    match std::fs::read_dir(dir) {
        Ok(rd) => Ok(rd.filter_map(Result::ok).collect()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Vec::new()),
        Err(e) => Err(io("read", dir)(e)),
    }
}

/// Writes a staged file of ours, mode 0600, given to the cluster's owner. The name may be
/// beside the live data, in a directory the server's user can write, so whatever is
/// there (a symlink someone planted, say) is removed and the file created exclusively,
/// never opened through a link; the owner is set on the file itself.
fn write_owned(path: &Path, content: &str, owner: &Owner) -> Result<(), RecoveryError> {
    crate::files::replace_file(path, content)?;
    owner.lchown(path)?;
    Ok(())
}

/// `conf` with our block of `settings` at its end (an earlier block of ours removed).
pub fn with_recovery_block(conf: &str, settings: &[(&str, String)]) -> String {
    let mut out = String::new();
    let mut inside = false;
    for line in conf.lines() {
        if line == BLOCK_START {
            inside = true;
            continue;
        }
        if line == BLOCK_END {
            inside = false;
            continue;
        }
        if !inside {
            out.push_str(line);
            out.push('\n');
        }
    }
    out.push_str(BLOCK_START);
    out.push('\n');
    for (k, v) in settings {
        out.push_str(&format!("{k} = {}\n", quote(v)));
    }
    out.push_str(BLOCK_END);
    out.push('\n');
    out
}

fn current_exe() -> Result<PathBuf, RecoveryError> {
    std::env::current_exe().map_err(io("find", Path::new("the shadowcopy program")))
}

/// A path as one word for the shell PostgreSQL runs restore_command with.
fn shell_word(p: &Path) -> String {
    let s = p.display().to_string();
    if s.bytes()
        .all(|b| b.is_ascii_alphanumeric() || b"/._-+:@%".contains(&b))
    {
        s
    } else {
        format!(
            "\"{}\"",
            s.replace('\\', "\\\\")
                .replace('"', "\\\"")
                .replace('$', "\\$")
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn targets_are_told_apart_and_nonsense_is_refused() {
        assert_eq!(
            target_settings("xid:1234").unwrap(),
            vec![("recovery_target_xid", "1234".to_string())]
        );
        assert_eq!(
            target_settings("0/3000060").unwrap(),
            vec![("recovery_target_lsn", "0/3000060".to_string())]
        );
        assert_eq!(
            target_settings("2026-11-22 10:00:00+00").unwrap()[0].0,
            "recovery_target_time"
        );
        for bad in ["yesterday", "xid:abc", ""] {
            assert!(target_settings(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn the_recovery_block_replaces_an_earlier_one() {
        let conf = "work_mem = '4MB'\n";
        let once = with_recovery_block(conf, &[("restore_command", "a 'b'".into())]);
        assert!(once.contains("restore_command = 'a ''b'''"), "{once}");
        let twice = with_recovery_block(&once, &[("recovery_target_lsn", "0/1".into())]);
        assert!(!twice.contains("restore_command"), "{twice}");
        assert!(twice.starts_with("work_mem = '4MB'\n"), "{twice}");
        assert_eq!(twice.matches(BLOCK_START).count(), 1);
    }
}
