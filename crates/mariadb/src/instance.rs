//! A throw-away `mariadbd` on a private unix socket, for the sandbox that verifies a copy
//! and for the server a roll-forward restore replays binary logs into: no networking, no
//! binary log of its own, no replication, no event scheduler, no privilege checks (only
//! root can reach its socket's directory), run as the data directory's owner. Its
//! socket, pid file, error log and tmpdir live in a temp dir of their own; dropping it
//! kills the server (its whole process group) and removes that dir.

use std::io::Read;
use std::os::unix::net::UnixStream;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use shadowcopy_core::BoxError;

use crate::bin;
use crate::files;
use crate::server::{Flavour, ServerLayout};

/// Where a temporary server's files are (each `None`: in its data directory).
#[derive(Clone, Debug)]
pub struct ServerDirs {
    pub datadir: PathBuf,
    pub redo: Option<PathBuf>,
    pub undo: Option<PathBuf>,
    pub system: Option<PathBuf>,
}

#[derive(Debug, thiserror::Error)]
pub enum InstanceError {
    #[error("the server did not start: {why}; its log: {log}")]
    DidNotStart { why: String, log: String },
    #[error("the server did not stop cleanly: {why}; its log: {log}")]
    DidNotStop { why: String, log: String },
}

/// How a [`TempServer`] is started beyond the defaults (a socket in its private run
/// directory, no networking, no privilege checks: only the server's owner and root
/// reach that directory).
#[derive(Clone, Debug, Default)]
pub struct StartOptions<'a> {
    /// Options after the others.
    pub extra: &'a [&'a str],
    /// The socket here instead; privilege checks then stay on (the copy's own accounts:
    /// root on this host gets in by `unix_socket` where the copy lets it).
    pub socket: Option<PathBuf>,
    /// Also listen on this port on the loopback address; privilege checks then stay on
    /// (the copy's own accounts and passwords).
    pub port: Option<u16>,
}

pub struct TempServer {
    child: Option<Child>,
    run: tempfile::TempDir,
    pub socket: PathBuf,
    flavour: Flavour,
}

impl TempServer {
    /// Starts a server on `dirs` with `layout`'s InnoDB settings and waits until it
    /// accepts connections (after crash recovery), at most `limit`.
    pub fn start(
        layout: &ServerLayout,
        dirs: &ServerDirs,
        limit: Duration,
    ) -> Result<TempServer, BoxError> {
        TempServer::start_with(layout, dirs, limit, &StartOptions::default())
    }

    /// As [`TempServer::start`], reached as `options` say.
    pub fn start_with(
        layout: &ServerLayout,
        dirs: &ServerDirs,
        limit: Duration,
        options: &StartOptions,
    ) -> Result<TempServer, BoxError> {
        let owner = crate::files::owner_of(layout);
        let run = tempfile::Builder::new()
            .prefix("shadowcopy-mariadb-")
            .tempdir()
            .map_err(files::io_err("create a temp dir in", &std::env::temp_dir()))?;
        let tmp = run.path().join("tmp");
        std::fs::create_dir(&tmp).map_err(files::io_err("create", &tmp))?;
        owner.chown(run.path())?;
        owner.chown(&tmp)?;
        files::make_traversable(run.path(), &owner)?;
        let socket = options
            .socket
            .clone()
            .unwrap_or_else(|| run.path().join("sock"));
        let mut args = vec![
            "--no-defaults".to_string(),
            format!("--datadir={}", dirs.datadir.display()),
            format!("--socket={}", socket.display()),
            format!("--pid-file={}", run.path().join("pid").display()),
            format!("--log-error={}", run.path().join("error.log").display()),
            format!("--tmpdir={}", tmp.display()),
            "--skip-log-bin".into(),
            "--skip-slave-start".into(),
            "--event-scheduler=OFF".into(),
            "--performance-schema=OFF".into(),
            "--max-connections=20".into(),
            "--innodb-buffer-pool-size=128M".into(),
            format!("--server-id={}", layout.server_id.max(1)),
            format!("--lower-case-table-names={}", layout.lower_case_table_names),
        ];
        if layout.innodb_page_size > 0 {
            args.push(format!("--innodb-page-size={}", layout.innodb_page_size));
        }
        if layout.innodb_log_file_size > 0 {
            args.push(format!(
                "--innodb-log-file-size={}",
                layout.innodb_log_file_size
            ));
        }
        if !layout.innodb_data_file_path.is_empty() {
            args.push(format!(
                "--innodb-data-file-path={}",
                layout.innodb_data_file_path
            ));
        }
        if layout.flavour == Flavour::MariaDb {
            args.push(format!(
                "--innodb-undo-tablespaces={}",
                layout.innodb_undo_tablespaces
            ));
        }
        for (flag, dir) in [
            ("--innodb-log-group-home-dir", &dirs.redo),
            ("--innodb-undo-directory", &dirs.undo),
            ("--innodb-data-home-dir", &dirs.system),
        ] {
            if let Some(d) = dir {
                args.push(format!("{flag}={}", d.display()));
            }
        }
        match options.port {
            None => args.push("--skip-networking".into()),
            Some(port) => {
                args.extend([format!("--port={port}"), "--bind-address=127.0.0.1".into()])
            }
        }
        // Without privilege checks only where nobody but root and the server's owner
        // reach the socket: its private run directory, and no port.
        if options.port.is_none() && options.socket.is_none() {
            args.push("--skip-grant-tables".into());
        }
        args.extend(options.extra.iter().map(|a| a.to_string()));
        let mut cmd = Command::new(bin::program("mariadbd")?);
        cmd.args(&args)
            .current_dir(run.path())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .process_group(0);
        clean_env(&mut cmd);
        if let Some((uid, gid)) = owner.ids {
            cmd.uid(uid).gid(gid);
        }
        let child = cmd
            .spawn()
            .map_err(files::io_err("start", Path::new("mariadbd")))?;
        let mut server = TempServer {
            child: Some(child),
            run,
            socket,
            flavour: layout.flavour,
        };
        let began = Instant::now();
        loop {
            if let Some(c) = server.child.as_mut() {
                if let Ok(Some(status)) = c.try_wait() {
                    server.child = None;
                    return Err(InstanceError::DidNotStart {
                        why: format!("mariadbd exited ({status})"),
                        log: server.log_tail(),
                    }
                    .into());
                }
            }
            if greets(&server.socket) {
                return Ok(server);
            }
            if began.elapsed() > limit {
                return Err(InstanceError::DidNotStart {
                    why: format!(
                        "not ready within {}",
                        shadowcopy_core::error::humanize(limit)
                    ),
                    log: server.log_tail(),
                }
                .into());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// A client program (`mariadb`, `mariadb-check`) connected to this server as root.
    pub fn client(&self, program: &str) -> Result<Command, BoxError> {
        let mut cmd = Command::new(bin::program(program)?);
        clean_env(&mut cmd);
        cmd.arg("--no-defaults")
            .arg(format!("--socket={}", self.socket.display()))
            .arg("--user=root");
        if self.flavour == Flavour::MySql {
            cmd.arg("--protocol=socket");
        }
        Ok(cmd)
    }

    /// The private directory of its pid file, error log and (by default) socket.
    pub fn run_dir(&self) -> &Path {
        self.run.path()
    }

    /// The server's process id, while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(|c| c.id())
    }

    /// Leaves the server running and its run directory (socket, log) in place: an
    /// exposure owns them now, and stops the server by its pid.
    pub fn keep(mut self) {
        self.child = None;
        self.run.disable_cleanup(true);
    }

    /// The last lines of the server's error log, on one line.
    pub fn log_tail(&self) -> String {
        std::fs::read(self.run.path().join("error.log"))
            .map(|b| last_lines(&String::from_utf8_lossy(&b), 15))
            .unwrap_or_else(|e| format!("(no error log: {e})"))
    }

    /// A clean shutdown (SIGTERM: InnoDB flushes and checkpoints), at most `limit`.
    pub fn stop(&mut self, limit: Duration) -> Result<(), BoxError> {
        let Some(mut child) = self.child.take() else {
            return Ok(());
        };
        if let Some(pid) = rustix::process::Pid::from_raw(child.id() as i32) {
            let _ = rustix::process::kill_process(pid, rustix::process::Signal::TERM);
        }
        let began = Instant::now();
        loop {
            match child.try_wait() {
                Ok(Some(status)) if status.success() => return Ok(()),
                Ok(Some(status)) => {
                    return Err(InstanceError::DidNotStop {
                        why: format!("mariadbd exited with {status}"),
                        log: self.log_tail(),
                    }
                    .into())
                }
                Ok(None) if began.elapsed() > limit => {
                    shadowcopy_core::process::kill_group(child.id());
                    let _ = child.wait();
                    return Err(InstanceError::DidNotStop {
                        why: format!(
                            "still running {} after SIGTERM (killed)",
                            shadowcopy_core::error::humanize(limit)
                        ),
                        log: self.log_tail(),
                    }
                    .into());
                }
                Ok(None) => std::thread::sleep(Duration::from_millis(20)),
                Err(e) => return Err(e.into()),
            }
        }
    }
}

impl Drop for TempServer {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            shadowcopy_core::process::kill_group(child.id());
            let _ = child.wait();
        }
    }
}

/// Whether a server greets on `socket` (protocol 10 handshake).
pub fn greets(socket: &Path) -> bool {
    let Ok(mut s) = UnixStream::connect(socket) else {
        return false;
    };
    let _ = s.set_read_timeout(Some(Duration::from_secs(2)));
    let mut buf = [0u8; 5];
    s.read_exact(&mut buf).is_ok() && buf[4] == 10
}

/// Removes `MYSQL*` and `MARIADB*` variables (MYSQL_PWD, MYSQL_UNIX_PORT, …).
pub fn clean_env(cmd: &mut Command) {
    for (k, _) in std::env::vars_os() {
        let s = k.to_string_lossy();
        if s.starts_with("MYSQL") || s.starts_with("MARIADB") {
            cmd.env_remove(k);
        }
    }
}

pub fn last_lines(s: &str, n: usize) -> String {
    let lines: Vec<&str> = s.lines().filter(|l| !l.trim().is_empty()).collect();
    lines[lines.len().saturating_sub(n)..].join(" | ")
}
