//! Verification of a copy on a sandbox: a writable clone of the copy (a reflink where
//! the file system can, a full copy otherwise) is started as a throw-away `mariadbd`
//! (see `instance.rs`: private socket, no networking, no binary log, no replication),
//! InnoDB's crash recovery runs as the server starts, then `mariadb-check
//! --all-databases` runs CHECK TABLE on every table, and the server is stopped cleanly.
//! The copy itself is never written; the sandbox is removed afterwards. An exposure
//! (expose.rs) builds the same sandbox and keeps it running.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use shadowcopy_core::model::{CopyView, VerifyReport};
use shadowcopy_core::{process, BoxError};

use crate::files::{self, Owner};
use crate::instance::{last_lines, ServerDirs, TempServer};
use crate::server::ServerLayout;

/// How long crash recovery of the copy may take before the check counts as failed.
pub(crate) const START_LIMIT: Duration = Duration::from_secs(1800);
/// How long CHECK TABLE of everything may take.
const CHECK_LIMIT: Duration = Duration::from_secs(6 * 3600);
pub(crate) const STOP_LIMIT: Duration = Duration::from_secs(300);

#[derive(Debug, thiserror::Error)]
pub enum SandboxError {
    #[error("the copy holds no {what} ({}); it is not a copy of this server", .path.display())]
    NotInCopy { what: &'static str, path: PathBuf },
    #[error("the copy holds {}, a link to a table file outside the data directory: a sandbox started on it would open the live file, so it is not started", .0.display())]
    LinkedTable(PathBuf),
}

/// Clones the copy into a sandbox, starts it, checks it; see the module documentation.
pub fn verify_copy(layout: &ServerLayout, copy: &CopyView) -> Result<VerifyReport, BoxError> {
    let began = Instant::now();
    let owner = crate::files::owner_of(layout);
    let copy_data = copy_data_dir(layout, copy)?;
    let scratch = scratch_near(&copy_data, &owner)?;
    let dirs = build(layout, copy, &copy_data, scratch.path(), &owner)?;
    // Root's until here (nothing root wrote below it could be swapped for a link); the
    // server runs as the owner from now on.
    owner.chown_tree(scratch.path())?;
    let mut detail = String::new();
    let _ = write!(
        detail,
        "sandbox clone {}",
        shadowcopy_core::error::humanize(began.elapsed())
    );
    let t = Instant::now();
    let mut server = match TempServer::start(layout, &dirs, START_LIMIT) {
        Ok(s) => s,
        Err(e) => {
            let _ = write!(detail, "; the copy did not start: {e}");
            return Ok(VerifyReport { ok: false, detail });
        }
    };
    let _ = write!(
        detail,
        "; InnoDB recovered and the server started in {}",
        shadowcopy_core::error::humanize(t.elapsed())
    );
    let t = Instant::now();
    let mut check = server.client("mariadb-check")?;
    check.args(["--all-databases", "--check"]);
    let out = process::run_within(&mut check, CHECK_LIMIT)?;
    let (ok_tables, problems) = read_check(&out.stdout);
    let mut ok = out.status.success() && problems.iter().all(|p| !p.is_error);
    if ok {
        let _ = write!(
            detail,
            "; mariadb-check (CHECK TABLE, all databases): {ok_tables} tables OK ({})",
            shadowcopy_core::error::humanize(t.elapsed())
        );
    } else {
        let _ = write!(
            detail,
            "; mariadb-check FAILED: {}{}",
            problems
                .iter()
                .map(|p| p.text.as_str())
                .collect::<Vec<_>>()
                .join("; "),
            last_lines(&out.stderr, 10)
        );
    }
    let warnings: Vec<&str> = problems
        .iter()
        .filter(|p| !p.is_error)
        .map(|p| p.text.as_str())
        .collect();
    if !warnings.is_empty() {
        let _ = write!(detail, "; warnings: {}", warnings.join("; "));
    }
    if let Err(e) = server.stop(STOP_LIMIT) {
        ok = false;
        let _ = write!(detail, "; {e}");
    }
    Ok(VerifyReport { ok, detail })
}

/// Where the copy holds the server's data directory.
pub(crate) fn copy_data_dir(
    layout: &ServerLayout,
    copy: &CopyView,
) -> Result<PathBuf, SandboxError> {
    files::copy_root(copy, &layout.datadir).ok_or_else(|| SandboxError::NotInCopy {
        what: "data directory",
        path: layout.datadir.clone(),
    })
}

/// The sandbox's directories: the copy's data directory, and its separate redo, undo and
/// system tablespace directories, cloned under `scratch`. Binary logs stay out (the
/// sandbox writes none and needs none).
pub(crate) fn build(
    layout: &ServerLayout,
    copy: &CopyView,
    copy_data: &Path,
    scratch: &Path,
    owner: &Owner,
) -> Result<ServerDirs, BoxError> {
    let data = scratch.join("data");
    let binlog = layout.binlog.clone();
    let in_datadir_binlog = binlog.as_ref().filter(|b| b.dir == layout.datadir).cloned();
    let pid = layout
        .pid_file
        .as_ref()
        .and_then(|p| p.strip_prefix(&layout.datadir).ok())
        .map(Path::to_path_buf);
    let linked = std::cell::RefCell::new(None);
    files::clone_tree(copy_data, &data, owner, &|rel: &Path| {
        let name = rel.to_string_lossy();
        if name.ends_with(".isl") {
            linked.borrow_mut().get_or_insert_with(|| rel.to_path_buf());
        }
        Some(rel) == pid.as_deref()
            || in_datadir_binlog.as_ref().is_some_and(|b| {
                rel.parent() == Some(Path::new(""))
                    && (b.is_log_name(&name) || Some(rel.as_os_str()) == b.index.file_name())
            })
    })?;
    if let Some(l) = linked.into_inner() {
        return Err(SandboxError::LinkedTable(layout.datadir.join(l)).into());
    }
    std::fs::set_permissions(&data, std::os::unix::fs::PermissionsExt::from_mode(0o700))
        .map_err(files::io_err("set the mode of", &data))?;
    let mut dirs = ServerDirs {
        datadir: data,
        redo: None,
        undo: None,
        system: None,
    };
    for (name, live) in layout.separate_dirs() {
        if binlog.as_ref().is_some_and(|b| b.dir == live) {
            continue;
        }
        let src = files::copy_root(copy, live).ok_or_else(|| SandboxError::NotInCopy {
            what: "separate InnoDB directory",
            path: live.to_path_buf(),
        })?;
        let dest = scratch.join(name.replace(' ', "-"));
        files::clone_tree(&src, &dest, owner, &|_| false)?;
        let dest = Some(dest);
        if live == layout.innodb_log_dir {
            dirs.redo = dest.clone();
        }
        if live == layout.undo_dir {
            dirs.undo = dest.clone();
        }
        if live == layout.innodb_data_home_dir {
            dirs.system = dest;
        }
    }
    Ok(dirs)
}

/// One line of `mariadb-check` that is not `OK`.
#[derive(Debug, PartialEq, Eq)]
pub struct Problem {
    pub text: String,
    pub is_error: bool,
}

/// Reads `mariadb-check` output: the tables reported OK, and every error or warning
/// (with the table it is about).
pub fn read_check(out: &str) -> (usize, Vec<Problem>) {
    let mut ok = 0;
    let mut table = String::new();
    let mut problems = Vec::new();
    for line in out.lines() {
        let l = line.trim_end();
        if l.is_empty() {
            continue;
        }
        if let Some((kind, msg)) = l.split_once(':') {
            let kind = kind.trim().to_ascii_lowercase();
            if matches!(
                kind.as_str(),
                "error" | "warning" | "note" | "status" | "info"
            ) {
                if kind == "error" || kind == "warning" {
                    problems.push(Problem {
                        text: format!("{table}: {kind}: {}", msg.trim()),
                        is_error: kind == "error",
                    });
                }
                continue;
            }
        }
        let mut words = l.split_whitespace();
        let name = words.next().unwrap_or("");
        table = name.to_string();
        if words.last() == Some("OK") {
            ok += 1;
        }
    }
    (ok, problems)
}

/// A scratch directory as close to the copy as possible (same file system, so the clone
/// shares blocks): the nearest writable ancestor of `copy_data` that the server's owner
/// can reach, else the temp dir.
fn scratch_near(copy_data: &Path, owner: &Owner) -> Result<tempfile::TempDir, BoxError> {
    // Root's again until the sandbox is built (see `verify_copy`).
    let t =
        shadowcopy_core::dbfiles::scratch_near(copy_data, "shadowcopy-mariadb-sandbox-", |dir| {
            owner.reachable_yet_ours(dir)
        })
        .map_err(files::io_err("create a sandbox in", &std::env::temp_dir()))?;
    // Its ancestors, not itself: it stays closed (root's, 0700) until it is handed over.
    if let Some(parent) = t.path().parent() {
        files::make_traversable(parent, owner)?;
    }
    Ok(t)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn check_output_counts_tables_and_keeps_errors() {
        let out = "mysql.column_stats                                 OK\n\
                   shadowcopy.ledger                                  OK\n\
                   shop.items\n\
                   warning  : 1 client is using or hasn't closed the table properly\n\
                   status   : OK\n\
                   shop.orders\n\
                   error    : Corrupt\n\
                   shop.mem\n\
                   note     : The storage engine for the table doesn't support check\n";
        let (ok, problems) = read_check(out);
        assert_eq!(ok, 2);
        assert_eq!(
            problems,
            vec![
                Problem {
                    text:
                        "shop.items: warning: 1 client is using or hasn't closed the table properly"
                            .into(),
                    is_error: false
                },
                Problem {
                    text: "shop.orders: error: Corrupt".into(),
                    is_error: true
                },
            ]
        );
    }
}
