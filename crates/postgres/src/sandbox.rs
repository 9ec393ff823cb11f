//! Verification of a copy on a sandbox: a writable clone of the copy (a reflink where
//! the file system can, a full copy otherwise) is started as a throw-away postmaster on
//! a private unix socket with networking off and archiving off, recovers to consistency
//! from the copy's own WAL, then `pg_amcheck` checks every database (heap and btree) and,
//! after a clean stop, `pg_checksums --check` reads every page when the cluster has
//! checksums. Between full verifications only the blocks that changed since the base
//! copy are read and checked (`changed_blocks`). The copy itself is never written; the
//! sandbox is removed afterwards, and
//! its server stopped even when a check fails. An exposure (expose.rs) starts the same
//! sandbox and keeps it.

use std::fmt::Write as _;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use shadowcopy_core::error::IoError;
use shadowcopy_core::model::{Changes, CopyView, VerifyReport};
use shadowcopy_core::{process, BoxError};

use crate::bin::pg_bin;
use crate::changed_blocks;
use crate::cluster::ClusterLayout;
use crate::files;

/// How long recovery to consistency may take before the check counts as failed.
pub(crate) const START_LIMIT: Duration = Duration::from_secs(1800);
/// How long the integrity checks may take.
const CHECK_LIMIT: Duration = Duration::from_secs(6 * 3600);
/// The port the sandbox listens on: only its socket file's name, in a private directory.
pub(crate) const SANDBOX_PORT: u16 = 5432;

#[derive(Debug, thiserror::Error)]
pub enum SandboxError {
    #[error("the copy holds no {what} ({}); it is not a copy of this cluster", .path.display())]
    NotInCopy { what: &'static str, path: PathBuf },
    #[error("cannot build the sandbox")]
    Io(#[from] IoError),
    #[error("`{command}` could not run")]
    Process {
        command: String,
        #[source]
        source: process::ProcessError,
    },
}

fn io<'a>(
    action: &'static str,
    path: &'a Path,
) -> impl FnOnce(std::io::Error) -> SandboxError + 'a {
    move |source| {
        SandboxError::Io(IoError {
            action,
            path: path.to_path_buf(),
            source,
        })
    }
}

/// A started (or startable) throw-away cluster made from a copy.
pub(crate) struct Sandbox<'a> {
    layout: &'a ClusterLayout,
    pub(crate) dir: tempfile::TempDir,
    pub(crate) socket: tempfile::TempDir,
    pub(crate) data: PathBuf,
    pub(crate) started: bool,
    /// Handed over to an exposure: dropping it stops nothing.
    kept: bool,
    /// Given to the cluster's owner ([`Sandbox::hand_over`]).
    handed_over: bool,
}

/// Clones the copy into a sandbox, starts it, checks it; see the module documentation.
pub fn verify_copy(layout: &ClusterLayout, copy: &CopyView) -> Result<VerifyReport, BoxError> {
    verify_in_sandbox(layout, copy, None)
}

/// As [`verify_copy`], checking only the relation blocks that changed since the base
/// copy of `changes` ([`crate::changed_blocks`]) instead of `pg_amcheck` over
/// everything and `pg_checksums`.
pub fn verify_changed(
    layout: &ClusterLayout,
    copy: &CopyView,
    changes: &Changes,
) -> Result<VerifyReport, BoxError> {
    verify_in_sandbox(layout, copy, Some(changes))
}

fn verify_in_sandbox(
    layout: &ClusterLayout,
    copy: &CopyView,
    changes: Option<&Changes>,
) -> Result<VerifyReport, BoxError> {
    let began = Instant::now();
    let mut sandbox = Sandbox::build(layout, copy)?;
    sandbox.hand_over()?;
    let built = began.elapsed();
    let mut detail = String::new();
    let _ = write!(detail, "sandbox clone {}", humanize(built));
    let t = Instant::now();
    let started = sandbox.run("pg_ctl", &sandbox.start_args(), START_LIMIT)?;
    if !started.0 {
        let _ = write!(
            detail,
            "; the copy did not start: {}; server log: {}",
            started.1,
            sandbox.log_tail()
        );
        return Ok(VerifyReport { ok: false, detail });
    }
    sandbox.started = true;
    let _ = write!(
        detail,
        "; recovered to consistency and started in {}",
        humanize(t.elapsed())
    );

    if let Some(changes) = changes {
        let t = Instant::now();
        let segments = changed_blocks::changed_segments(layout, copy, changes);
        let found = changed_blocks::check(
            &segments,
            sandbox.socket.path(),
            SANDBOX_PORT,
            &layout.superuser,
        )?;
        let ok = found.problems.is_empty();
        let _ = write!(
            detail,
            "; {} changed blocks of {} relations read{} ({}{}){}",
            found.blocks,
            found.relations,
            if layout.data_checksums {
                ", each page's checksum checked"
            } else {
                ""
            },
            humanize(t.elapsed()),
            if found.unknown > 0 {
                format!(
                    "; {} changed files of relations the copy no longer has",
                    found.unknown
                )
            } else {
                String::new()
            },
            if ok {
                ", tables' tuples by verify_heapam: no corruption; pg_amcheck and pg_checksums at the next full verification".to_string()
            } else {
                format!(": FAILED: {}", found.problems.join("; "))
            }
        );
        let stop = sandbox.stop("fast")?;
        if !stop.0 {
            let _ = write!(detail, "; the sandbox did not stop cleanly: {}", stop.1);
            return Ok(VerifyReport { ok: false, detail });
        }
        return Ok(VerifyReport { ok, detail });
    }

    let t = Instant::now();
    let socket = sandbox.socket.path().display().to_string();
    let port = SANDBOX_PORT.to_string();
    let amcheck = sandbox.run(
        "pg_amcheck",
        &[
            "-h",
            &socket,
            "-p",
            &port,
            "-U",
            &layout.superuser,
            "--no-password",
            "--all",
            "--install-missing",
        ],
        CHECK_LIMIT,
    )?;
    let mut ok = amcheck.0;
    if amcheck.0 {
        let _ = write!(
            detail,
            "; pg_amcheck (heap, btree, all databases): no corruption ({})",
            humanize(t.elapsed())
        );
    } else {
        let _ = write!(detail, "; pg_amcheck FAILED: {}", amcheck.1);
    }

    let stop = sandbox.stop("fast")?;
    if !stop.0 {
        ok = false;
        let _ = write!(detail, "; the sandbox did not stop cleanly: {}", stop.1);
    } else if layout.data_checksums {
        let t = Instant::now();
        let data = sandbox.data.display().to_string();
        let checksums = sandbox.run("pg_checksums", &["--check", "-D", &data], CHECK_LIMIT)?;
        if checksums.0 {
            let _ = write!(
                detail,
                "; pg_checksums: every page's checksum matches ({})",
                humanize(t.elapsed())
            );
        } else {
            ok = false;
            let _ = write!(detail, "; pg_checksums FAILED: {}", checksums.1);
        }
    }
    Ok(VerifyReport { ok, detail })
}

impl<'a> Sandbox<'a> {
    fn build(layout: &'a ClusterLayout, copy: &CopyView) -> Result<Sandbox<'a>, BoxError> {
        Sandbox::build_in(layout, copy, None)
    }

    /// As [`Sandbox::build`], below `parent` when given (else near the copy).
    pub(crate) fn build_in(
        layout: &'a ClusterLayout,
        copy: &CopyView,
        parent: Option<&Path>,
    ) -> Result<Sandbox<'a>, BoxError> {
        let copy_data =
            files::copy_root(copy, &layout.data_dir).ok_or_else(|| SandboxError::NotInCopy {
                what: "data directory",
                path: layout.data_dir.clone(),
            })?;
        let owner = files::owner_of(layout);
        let dir = match parent {
            Some(parent) => tempfile::Builder::new()
                .prefix("pg-")
                .tempdir_in(parent)
                .map_err(io("create a sandbox in", parent))?,
            None => scratch_near(&copy_data, &owner)?,
        };
        // `dir` stays root's (mode 0700) until `hand_over`: nothing root writes below it
        // can be swapped for a link by the cluster's owner meanwhile.
        let data = dir.path().join("data");
        files::clone_tree(&copy_data, &data, &owner, &|rel: &Path| {
            // Not the live server's lock file, and not the symlinks into live storage.
            rel == Path::new("postmaster.pid")
                || rel == Path::new("postmaster.opts")
                || rel == Path::new("pg_wal")
                || rel.starts_with("pg_tblspc")
        })?;
        std::fs::set_permissions(&data, std::os::unix::fs::PermissionsExt::from_mode(0o700))
            .map_err(io("set the mode of", &data))?;
        // WAL: a real directory in the sandbox, from the copy's WAL directory.
        let copy_wal = if layout.separate_wal() {
            files::copy_root(copy, &layout.wal_dir).ok_or_else(|| SandboxError::NotInCopy {
                what: "WAL directory",
                path: layout.wal_dir.clone(),
            })?
        } else {
            copy_data.join("pg_wal")
        };
        files::clone_tree(&copy_wal, &data.join("pg_wal"), &owner, &|_| false)?;
        // Tablespaces: cloned beside the data, linked from pg_tblspc and the map.
        let tblspc = data.join("pg_tblspc");
        std::fs::create_dir_all(&tblspc).map_err(io("create", &tblspc))?;
        owner.chown(&tblspc)?;
        let mut map = String::new();
        for ts in &layout.tablespaces {
            let src =
                files::copy_root(copy, &ts.location).ok_or_else(|| SandboxError::NotInCopy {
                    what: "tablespace",
                    path: ts.location.clone(),
                })?;
            let dest = dir.path().join(format!("tablespace-{}", ts.oid));
            files::clone_tree(&src, &dest, &owner, &|_| false)?;
            let link = tblspc.join(ts.oid.to_string());
            std::os::unix::fs::symlink(&dest, &link).map_err(io("link", &link))?;
            owner.lchown(&link)?;
            let _ = writeln!(map, "{} {}", ts.oid, dest.display());
        }
        let map_file = data.join("tablespace_map");
        if map_file.exists() {
            std::fs::write(&map_file, map).map_err(io("write", &map_file))?;
        }
        let socket = tempfile::Builder::new()
            .prefix("shadowcopy-pg-")
            .tempdir()
            .map_err(io("create a socket directory in", &std::env::temp_dir()))?;
        owner.chown(socket.path())?;
        let hba = dir.path().join("sandbox_hba.conf");
        std::fs::write(&hba, "local all all trust\n").map_err(io("write", &hba))?;
        let ident = dir.path().join("sandbox_ident.conf");
        std::fs::write(&ident, "").map_err(io("write", &ident))?;
        // The sandbox's own settings go on the command line, which overrides the copy's
        // postgresql.auto.conf (ALTER SYSTEM): a sandbox must never archive into the
        // live cluster's archive, fetch from it, or listen where the live server does.
        let conf = dir.path().join("sandbox.conf");
        std::fs::write(
            &conf,
            "# A throw-away server checking a shadowcopy copy (settings on its command line).\n",
        )
        .map_err(io("write", &conf))?;
        Ok(Sandbox {
            layout,
            dir,
            socket,
            data,
            started: false,
            kept: false,
            handed_over: false,
        })
    }

    /// Gives the sandbox to the cluster's owner (everything below it, links themselves),
    /// once root has written all it writes there: the server and its tools run as that
    /// owner from here on.
    pub(crate) fn hand_over(&mut self) -> Result<(), BoxError> {
        if !self.handed_over {
            files::owner_of(self.layout).chown_tree(self.dir.path())?;
            self.handed_over = true;
        }
        Ok(())
    }

    pub(crate) fn log_path(&self) -> PathBuf {
        self.dir.path().join("server.log")
    }

    fn start_args(&self) -> Vec<String> {
        self.start_args_with(&self.settings())
    }

    pub(crate) fn start_args_with(&self, settings: &[(&'static str, String)]) -> Vec<String> {
        vec![
            "start".into(),
            "-w".into(),
            "-t".into(),
            START_LIMIT.as_secs().to_string(),
            "-D".into(),
            self.data.display().to_string(),
            "-l".into(),
            self.log_path().display().to_string(),
            "-o".into(),
            settings
                .iter()
                .map(|(k, v)| format!("-c {k}={v}"))
                .collect::<Vec<_>>()
                .join(" "),
        ]
    }

    /// The sandbox's settings: private socket, no network, no archiving, no restore
    /// command, no durability (it is thrown away). Values hold no spaces or quotes
    /// (temp dir names), as `pg_ctl -o` splits on spaces.
    pub(crate) fn settings(&self) -> Vec<(&'static str, String)> {
        let d = self.dir.path();
        vec![
            ("config_file", d.join("sandbox.conf").display().to_string()),
            ("hba_file", d.join("sandbox_hba.conf").display().to_string()),
            (
                "ident_file",
                d.join("sandbox_ident.conf").display().to_string(),
            ),
            ("listen_addresses", "''".into()),
            ("port", SANDBOX_PORT.to_string()),
            (
                "unix_socket_directories",
                self.socket.path().display().to_string(),
            ),
            ("archive_mode", "off".into()),
            ("archive_command", "''".into()),
            ("restore_command", "''".into()),
            ("primary_conninfo", "''".into()),
            ("fsync", "off".into()),
            ("synchronous_commit", "off".into()),
            ("shared_buffers", "64MB".into()),
            ("max_wal_senders", "0".into()),
            ("logging_collector", "off".into()),
        ]
    }

    fn stop(&mut self, mode: &str) -> Result<(bool, String), BoxError> {
        let data = self.data.display().to_string();
        let out = self.run(
            "pg_ctl",
            &["stop", "-w", "-m", mode, "-D", &data],
            START_LIMIT,
        )?;
        if out.0 {
            self.started = false;
        }
        Ok(out)
    }

    /// Runs a PostgreSQL program as the cluster's owner: (success, the last lines of
    /// what it said).
    pub(crate) fn run<S: AsRef<str>>(
        &self,
        program: &str,
        args: &[S],
        limit: Duration,
    ) -> Result<(bool, String), BoxError> {
        let (ok, said) = self.run_whole(program, args, limit)?;
        Ok((ok, last_lines(&said, 20)))
    }

    /// As [`Sandbox::run`], with all it said.
    fn run_whole<S: AsRef<str>>(
        &self,
        program: &str,
        args: &[S],
        limit: Duration,
    ) -> Result<(bool, String), BoxError> {
        let path = pg_bin(self.layout.version_num, program)?;
        let mut cmd = Command::new(&path);
        cmd.args(args.iter().map(|a| a.as_ref()))
            .current_dir(self.dir.path());
        for (k, _) in std::env::vars_os() {
            if k.to_string_lossy().starts_with("PG") {
                cmd.env_remove(k);
            }
        }
        if rustix::process::geteuid().is_root() {
            cmd.uid(self.layout.owner_uid).gid(self.layout.owner_gid);
        }
        let command = format!(
            "{program} {}",
            args.iter()
                .map(|a| a.as_ref())
                .collect::<Vec<_>>()
                .join(" ")
        );
        let out = process::run_within(&mut cmd, limit).map_err(|source| SandboxError::Process {
            command: command.clone(),
            source,
        })?;
        let said = format!("{}{}", out.stdout.trim(), out.stderr.trim());
        Ok((out.status.success(), said))
    }

    /// The settings a hot standby of the copy needs at least as high as its primary
    /// had them, from `pg_controldata`.
    pub(crate) fn hot_standby_limits(&self) -> Result<Vec<(&'static str, String)>, BoxError> {
        let data = self.data.display().to_string();
        let (ok, said) = self.run_whole("pg_controldata", &["-D", &data], START_LIMIT)?;
        if !ok {
            return Err(format!(
                "pg_controldata could not read the copy: {}",
                last_lines(&said, 5)
            )
            .into());
        }
        let control: Vec<&str> = said.lines().collect();
        let value = |label: &str| {
            control.iter().find_map(|line| {
                line.strip_prefix(label)
                    .map(|v| v.trim_start_matches(':').trim().to_string())
            })
        };
        Ok([
            ("max_connections", "max_connections setting"),
            ("max_worker_processes", "max_worker_processes setting"),
            ("max_wal_senders", "max_wal_senders setting"),
            ("max_prepared_transactions", "max_prepared_xacts setting"),
            ("max_locks_per_transaction", "max_locks_per_xact setting"),
        ]
        .into_iter()
        .filter_map(|(setting, label)| value(label).map(|v| (setting, v)))
        .collect())
    }

    /// Leaves the server running and its directories in place (an exposure owns them).
    pub(crate) fn keep(mut self) {
        self.started = false;
        self.kept = true;
        self.dir.disable_cleanup(true);
        self.socket.disable_cleanup(true);
    }

    pub(crate) fn log_tail(&self) -> String {
        std::fs::read_to_string(self.log_path())
            .map(|s| last_lines(&s, 20))
            .unwrap_or_else(|e| format!("(no server log: {e})"))
    }
}

impl Drop for Sandbox<'_> {
    fn drop(&mut self) {
        if self.kept {
            return;
        }
        if self.started || self.data.join("postmaster.pid").exists() {
            let _ = self.stop("immediate");
        }
        if let Some(pid) = std::fs::read_to_string(self.data.join("postmaster.pid"))
            .ok()
            .and_then(|s| s.lines().next().and_then(|l| l.trim().parse::<i32>().ok()))
        {
            if let Some(pid) = rustix::process::Pid::from_raw(pid) {
                let _ = rustix::process::kill_process(pid, rustix::process::Signal::KILL);
            }
        }
    }
}

/// A scratch directory as close to the copy as possible (same file system, so the clone
/// shares blocks): the nearest writable ancestor of `copy_data` that the cluster's owner
/// can reach, else the temp dir.
fn scratch_near(copy_data: &Path, owner: &files::Owner) -> Result<tempfile::TempDir, SandboxError> {
    shadowcopy_core::dbfiles::scratch_near(copy_data, "shadowcopy-pg-sandbox-", |dir| {
        owner.reachable_yet_ours(dir)
    })
    .map_err(io("create a sandbox in", &std::env::temp_dir()))
}

pub(crate) fn last_lines(s: &str, n: usize) -> String {
    let lines: Vec<&str> = s.lines().collect();
    lines[lines.len().saturating_sub(n)..].join(" | ")
}

fn humanize(d: Duration) -> String {
    shadowcopy_core::error::humanize(d)
}
