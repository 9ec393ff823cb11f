//! The roll-forward replay, done before anything live is touched: the copy's staged data
//! files are moved (renamed: same file system) into scratch directories beside the live
//! ones, a temporary server is started on them (crash recovery of the copy first), the
//! live binary logs from the copy's position on are piped through `mariadb-binlog` into
//! `mariadb` (up to `--until`), and the server is shut down cleanly. What it left is
//! staged again beside the live files, for the restore to swap in. A failure leaves the
//! live data as it was.
//!
//! The temporary server writes no binary log of its own (`--skip-log-bin`): the replayed
//! transactions are already in the live binary logs, which stay as they are, so after a
//! full roll-forward the restarted server's binlog and GTID position are those of the
//! last transaction replayed. After `--until`, the live binary logs still hold the
//! events past the target (a warning says so).

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use shadowcopy_core::writer::staged_path;
use shadowcopy_core::BoxError;

use crate::files::{self, Owner};
use crate::instance::{last_lines, ServerDirs, TempServer};
use crate::position::read_index;
use crate::server::{BinlogLayout, ServerLayout};
use crate::until::Until;

const START_LIMIT: Duration = Duration::from_secs(1800);
const STOP_LIMIT: Duration = Duration::from_secs(600);
const REPLAY_LIMIT: Duration = Duration::from_secs(7 * 24 * 3600);

#[derive(Debug, thiserror::Error)]
pub enum ReplayError {
    #[error("the binary log {file} the copy starts at is not in the live binlog index {} ({why}); the logs since the copy are gone, so it cannot be rolled forward: restore with --mode point-in-time", .index.display())]
    StartGone {
        file: String,
        index: PathBuf,
        why: String,
    },
    #[error("--until names {0}, which is not a live binary log at or after the copy's")]
    UntilNotFound(String),
    #[error("the binary log {missing} is {why}, and the logs after it cannot be replayed without it (their transactions build on its); replay up to the end of {last} with `--until {last}:<its size>` (`shadowcopy mariadb log-analysis ID` prints it), or find {missing}")]
    Break {
        missing: String,
        why: &'static str,
        last: String,
    },
    #[error("the copy holds {}, a link to a table file outside the data directory; roll-forward cannot replay into it", .0.display())]
    LinkedTable(PathBuf),
    #[error("the copy's file {} is outside the server's data directories; it cannot be replayed into", .0.display())]
    OutsideDataDirs(PathBuf),
    #[error("replaying the binary logs failed ({stage}): {said}")]
    Failed { stage: &'static str, said: String },
}

/// Replays the live binary logs from the copy's position (`start`: file and offset) into
/// the copy's staged data files (target → staged); returns what to install (staged →
/// target).
pub fn roll_forward(
    layout: &ServerLayout,
    binlog: &BinlogLayout,
    data: &[(PathBuf, PathBuf)],
    (start_file, start_pos): (&str, u64),
    until: Option<&Until>,
) -> Result<Vec<(PathBuf, PathBuf)>, BoxError> {
    let logs = logs_from(layout, binlog, start_file, until)?;
    let owner = crate::files::owner_of(layout);
    let roots = layout.data_roots();
    let scratch = Scratch::new(&roots, &owner)?;
    for (target, staged) in data {
        let (root, dir) = scratch
            .dir_for(target)
            .ok_or_else(|| ReplayError::OutsideDataDirs(target.to_path_buf()))?;
        let dest = dir.join(target.strip_prefix(root).unwrap_or(target));
        if dest.extension().is_some_and(|e| e == "isl") {
            return Err(ReplayError::LinkedTable(target.clone()).into());
        }
        move_file(staged, &dest, &owner)?;
    }
    for (_, dir) in &scratch.dirs {
        owner.chown_tree(dir)?;
    }
    let dir_of = |live: &Path| {
        (live != layout.datadir)
            .then(|| {
                scratch
                    .dirs
                    .iter()
                    .find(|(r, _)| r == live)
                    .map(|(_, d)| d.clone())
            })
            .flatten()
    };
    let dirs = ServerDirs {
        datadir: scratch.dirs[0].1.clone(),
        redo: dir_of(&layout.innodb_log_dir),
        undo: dir_of(&layout.undo_dir),
        system: dir_of(&layout.innodb_data_home_dir),
    };
    let mut server = TempServer::start(layout, &dirs, START_LIMIT)
        .map_err(|e| format!("starting the copy for the replay: {e}"))?;
    replay(&server, &logs, start_pos, until)?;
    server.stop(STOP_LIMIT)?;
    drop(server);
    if let Some(u) = until {
        tracing::warn!(
            "roll-forward {}; the live binary logs in {} still hold the events after it, which the restarted server's binlog position includes",
            u.describe(),
            binlog.dir.display()
        );
    }
    scratch.stage_back(&owner)
}

/// The live binary logs from `start` on (up to `until`'s file), in index order.
pub(crate) fn logs_from(
    layout: &ServerLayout,
    binlog: &BinlogLayout,
    start: &str,
    until: Option<&Until>,
) -> Result<Vec<PathBuf>, ReplayError> {
    let gone = |why: String| ReplayError::StartGone {
        file: start.to_string(),
        index: binlog.index.clone(),
        why,
    };
    let all = read_index(&binlog.index, &layout.datadir).map_err(|e| gone(e.to_string()))?;
    let at = all
        .iter()
        .position(|p| p.file_name().is_some_and(|n| n == start))
        .ok_or_else(|| gone("not listed".into()))?;
    let mut logs: Vec<PathBuf> = all[at..].to_vec();
    if let Some(Until::Position { file, .. }) = until {
        let end = logs
            .iter()
            .position(|p| p.file_name().is_some_and(|n| n == file.as_str()))
            .ok_or_else(|| ReplayError::UntilNotFound(file.clone()))?;
        logs.truncate(end + 1);
    }
    let name = |p: &Path| p.file_name().map(|n| n.to_string_lossy().into_owned());
    for (i, l) in logs.iter().enumerate() {
        if i > 0 {
            // The index may skip a number (a file removed from it and from the disk):
            // replaying the later logs without it would apply transactions whose
            // predecessors are lost.
            let prev = name(&logs[i - 1]).unwrap_or_default();
            let expected = crate::position::binlog_number(&prev)
                .map(|(base, n)| format!("{base}.{:06}", n + 1));
            if let Some(expected) = expected {
                if name(l).as_deref() != Some(expected.as_str()) {
                    return Err(ReplayError::Break {
                        missing: expected,
                        why: "not in the binlog index",
                        last: prev,
                    });
                }
            }
        }
        if !l.is_file() {
            if i == 0 {
                return Err(gone(format!("{} is missing", l.display())));
            }
            return Err(ReplayError::Break {
                missing: name(l).unwrap_or_default(),
                why: "missing from its directory",
                last: name(&logs[i - 1]).unwrap_or_default(),
            });
        }
    }
    Ok(logs)
}

/// `mariadb-binlog … | mariadb`, into the temporary server.
pub(crate) fn replay(
    server: &TempServer,
    logs: &[PathBuf],
    start_pos: u64,
    until: Option<&Until>,
) -> Result<(), BoxError> {
    let mut reader = std::process::Command::new(crate::bin::program("mariadb-binlog")?);
    crate::instance::clean_env(&mut reader);
    reader
        .arg("--no-defaults")
        .arg(format!("--start-position={start_pos}"));
    match until {
        Some(Until::Time { datetime, tz }) => {
            reader.arg(format!("--stop-datetime={datetime}"));
            if let Some(tz) = tz {
                reader.env("TZ", tz);
            }
        }
        Some(Until::Position { position, .. }) => {
            reader.arg(format!("--stop-position={position}"));
        }
        Some(Until::Gtid(g)) => {
            reader.arg(format!("--stop-position={g}"));
        }
        None => {}
    }
    reader.args(logs);
    let reader_err = tempfile::tempfile()?;
    let client_err = tempfile::tempfile()?;
    let client_out = tempfile::tempfile()?;
    reader
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(reader_err.try_clone()?);
    let mut reader = reader.spawn()?;
    let events = reader.stdout.take().expect("piped stdout");
    let mut client = server.client("mariadb")?;
    // The temporary server runs without privilege checks; loading the grant tables
    // lets replayed GRANT and CREATE USER statements run.
    client
        .args(["--binary-mode", "--init-command=FLUSH PRIVILEGES"])
        .stdin(Stdio::from(events))
        .stdout(client_out)
        .stderr(client_err.try_clone()?);
    let mut client = match client.spawn() {
        Ok(c) => c,
        Err(e) => {
            let _ = reader.kill();
            let _ = reader.wait();
            return Err(e.into());
        }
    };
    let began = std::time::Instant::now();
    let client_status = loop {
        if let Some(s) = client.try_wait()? {
            break s;
        }
        if began.elapsed() > REPLAY_LIMIT {
            let _ = client.kill();
            let _ = reader.kill();
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    if !client_status.success() {
        let _ = reader.kill();
    }
    let reader_status = reader.wait()?;
    let read = |mut f: std::fs::File| {
        use std::io::{Read, Seek};
        let mut s = String::new();
        let _ = f.rewind().and_then(|_| f.read_to_string(&mut s));
        last_lines(&s, 10)
    };
    if !client_status.success() {
        return Err(ReplayError::Failed {
            stage: "mariadb applying the events",
            said: format!("{client_status}: {}", read(client_err)),
        }
        .into());
    }
    if !reader_status.success() {
        return Err(ReplayError::Failed {
            stage: "mariadb-binlog reading the binary logs",
            said: format!("{reader_status}: {}", read(reader_err)),
        }
        .into());
    }
    Ok(())
}

/// Scratch directories, one per data root (`<root>/.shadowcopy-replay-<pid>`), removed
/// when dropped.
struct Scratch {
    /// (live root, scratch dir), the data directory first.
    dirs: Vec<(PathBuf, PathBuf)>,
}

impl Scratch {
    fn new(roots: &[PathBuf], owner: &Owner) -> Result<Scratch, BoxError> {
        let mut dirs = Vec::new();
        for root in roots {
            std::fs::create_dir_all(root).map_err(files::io_err("create", root))?;
            let dir = root.join(format!(".shadowcopy-replay-{}", std::process::id()));
            if dir.exists() {
                std::fs::remove_dir_all(&dir).map_err(files::io_err("remove", &dir))?;
            }
            std::fs::create_dir(&dir).map_err(files::io_err("create", &dir))?;
            std::fs::set_permissions(&dir, std::os::unix::fs::PermissionsExt::from_mode(0o700))
                .map_err(files::io_err("set the mode of", &dir))?;
            owner.chown(&dir)?;
            files::make_traversable(root, owner)?;
            dirs.push((root.clone(), dir));
        }
        Ok(Scratch { dirs })
    }

    /// The root holding `target` (the deepest) and its scratch dir.
    fn dir_for(&self, target: &Path) -> Option<(&Path, &Path)> {
        self.dirs
            .iter()
            .filter(|(r, _)| target.starts_with(r))
            .max_by_key(|(r, _)| r.components().count())
            .map(|(r, d)| (r.as_path(), d.as_path()))
    }

    /// Moves every file the server left to its staged path beside its live target.
    fn stage_back(&self, owner: &Owner) -> Result<Vec<(PathBuf, PathBuf)>, BoxError> {
        let mut out = Vec::new();
        for (root, dir) in &self.dirs {
            for e in walkdir::WalkDir::new(dir).follow_links(false) {
                let e = e?;
                if !e.file_type().is_file() {
                    continue;
                }
                let rel = e.path().strip_prefix(dir)?;
                let target = root.join(rel);
                if let Some(parent) = target.parent() {
                    if !parent.exists() {
                        std::fs::create_dir_all(parent).map_err(files::io_err("create", parent))?;
                        owner.chown(parent)?;
                    }
                }
                let staged = staged_path(&target);
                move_file(e.path(), &staged, owner)?;
                out.push((staged, target));
            }
        }
        Ok(out)
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        for (_, d) in &self.dirs {
            let _ = std::fs::remove_dir_all(d);
        }
    }
}

/// Renames `from` to `to` (creating `to`'s directory), copying across file systems.
fn move_file(from: &Path, to: &Path, owner: &Owner) -> Result<(), BoxError> {
    if let Some(parent) = to.parent() {
        if !parent.exists() {
            std::fs::create_dir_all(parent).map_err(files::io_err("create", parent))?;
            owner.chown(parent)?;
        }
    }
    match std::fs::rename(from, to) {
        Ok(()) => Ok(()),
        Err(e) if e.raw_os_error() == Some(rustix::io::Errno::XDEV.raw_os_error()) => {
            // Beside the live data: a symlink planted at `to` is replaced, never written
            // through.
            match std::fs::remove_file(to) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(files::io_err("replace", to)(e).into()),
            }
            let mut src = std::fs::File::open(from).map_err(files::io_err("open", from))?;
            let mut dst = std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .open(to)
                .map_err(files::io_err("create", to))?;
            std::io::copy(&mut src, &mut dst).map_err(files::io_err("copy", from))?;
            dst.set_permissions(
                src.metadata()
                    .map_err(files::io_err("inspect", from))?
                    .permissions(),
            )
            .map_err(files::io_err("set the mode of", to))?;
            owner.lchown(to)?;
            std::fs::remove_file(from).map_err(files::io_err("remove", from))?;
            Ok(())
        }
        Err(e) => Err(files::io_err("move", from)(e).into()),
    }
}
