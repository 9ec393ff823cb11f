//! What the PostgreSQL and MariaDB starters ([`crate::postgres`], [`crate::mariadb`])
//! share about running a server for a test: the system user it runs as when we are root
//! and the directories made its own, the server process itself (a child of the test
//! process, which we signal and reap: on machines whose PID 1 does not reap orphans a
//! zombie server would keep its pid file "running"), the processes that run in a data
//! directory, and the server's log.

use std::fs;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

use rand::RngExt;
use rustix::process::Signal;

use crate::loopfs::REQUIRE_ROOT_ENV;

/// The system user and group a server runs as when we are root: `postgres`
/// ([`crate::postgres::PgUser`]) or `mysql` ([`crate::mariadb::MariaDbUser`]); not as
/// root (`None`), the server runs as ourselves.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ServerUser {
    pub uid: u32,
    pub gid: u32,
}

/// As root, system user `name` (from `/etc/passwd`) to run `server` as, `Ok(None)` when
/// not root; an error when root has no such user (`program` refuses to run as root).
pub(crate) fn server_user(
    name: &str,
    server: &str,
    program: &str,
) -> Result<Option<ServerUser>, String> {
    if !rustix::process::geteuid().is_root() {
        return Ok(None);
    }
    let passwd =
        fs::read_to_string("/etc/passwd").map_err(|e| format!("cannot read /etc/passwd: {e}"))?;
    for line in passwd.lines() {
        let f: Vec<&str> = line.split(':').collect();
        if f.len() >= 4 && f[0] == name {
            let uid = f[2]
                .parse()
                .map_err(|_| format!("bad passwd line {line:?}"))?;
            let gid = f[3]
                .parse()
                .map_err(|_| format!("bad passwd line {line:?}"))?;
            return Ok(Some(ServerUser { uid, gid }));
        }
    }
    Err(format!(
        "running as root, but there is no `{name}` user to run {server} as \
         ({program} refuses to run as root)"
    ))
}

// The same convention as `loopfs` (whose `skip` is private): print and pass, or fail under
// SHADOWCOPY_TEST_REQUIRE_ROOT=1.
pub(crate) fn skip(test: &str, why: &str) -> bool {
    if std::env::var(REQUIRE_ROOT_ENV).is_ok_and(|v| v == "1") {
        panic!("{test} cannot run: {why}; a skip is a failure under {REQUIRE_ROOT_ENV}=1");
    }
    eprintln!("skipping {test}: {why}");
    false
}

pub(crate) fn chown(path: &Path, user: ServerUser) -> Result<(), String> {
    std::os::unix::fs::lchown(path, Some(user.uid), Some(user.gid))
        .map_err(|e| format!("cannot chown {}: {e}", path.display()))
}

pub(crate) fn chmod(path: &Path, mode: u32) -> Result<(), String> {
    fs::set_permissions(path, fs::Permissions::from_mode(mode))
        .map_err(|e| format!("cannot chmod {}: {e}", path.display()))
}

/// Gives `o+x` to every ancestor of `path` the server user could not traverse (only when
/// the server runs as another user, i.e. as root).
pub(crate) fn make_traversable(path: &Path, user: Option<ServerUser>) -> Result<(), String> {
    let Some(user) = user else { return Ok(()) };
    for a in path.ancestors().skip(1) {
        let Ok(md) = fs::metadata(a) else { continue };
        if md.uid() != user.uid && md.mode() & 0o001 == 0 {
            chmod(a, (md.mode() & 0o7777) | 0o001)?;
        }
    }
    Ok(())
}

/// Creates `path` (and its parents) if missing, requires it to be an empty directory when
/// `empty`, and makes it the server user's with `mode`, its ancestors traversable.
pub(crate) fn server_dir(
    path: &Path,
    user: Option<ServerUser>,
    mode: u32,
    empty: bool,
) -> Result<(), String> {
    if path.exists() {
        let mut entries =
            fs::read_dir(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
        if empty && entries.next().is_some() {
            return Err(format!("{} exists and is not empty", path.display()));
        }
    } else {
        fs::create_dir_all(path).map_err(|e| format!("cannot create {}: {e}", path.display()))?;
    }
    chmod(path, mode)?;
    if let Some(u) = user {
        chown(path, u)?;
    }
    make_traversable(path, user)
}

/// Chowns `path` and everything below it (symlinks themselves, not followed).
pub(crate) fn chown_tree(path: &Path, user: ServerUser) -> Result<(), String> {
    chown(path, user)?;
    let md = fs::symlink_metadata(path).map_err(|e| format!("{}: {e}", path.display()))?;
    if md.is_dir() {
        for e in fs::read_dir(path).map_err(|e| format!("{}: {e}", path.display()))? {
            let e = e.map_err(|e| format!("{}: {e}", path.display()))?;
            chown_tree(&e.path(), user)?;
        }
    }
    Ok(())
}

pub(crate) fn canonical(path: &Path) -> PathBuf {
    fs::canonicalize(path).unwrap_or_else(|_| path.to_path_buf())
}

/// Whether process `pid` exists and is not a zombie.
fn pid_alive(pid: u32) -> bool {
    match fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => match stat.rfind(')') {
            Some(i) => !matches!(stat[i + 1..].trim_start().chars().next(), Some('Z' | 'X')),
            None => true,
        },
        Err(_) => false,
    }
}

/// The live processes whose working directory is `dir` or below it. PostgreSQL's
/// postmaster and every backend and auxiliary process run in their data directory, and
/// so does `mariadbd`: `processes_in(data_dir)` lists a server's processes.
pub fn processes_in(dir: &Path) -> Vec<u32> {
    let dir = canonical(dir);
    let me = std::process::id();
    let Ok(entries) = fs::read_dir("/proc") else {
        return Vec::new();
    };
    let mut pids: Vec<u32> = entries
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter(|&pid| pid != me)
        .filter(|&pid| {
            fs::read_link(format!("/proc/{pid}/cwd")).is_ok_and(|cwd| {
                // A removed directory reads as "/path (deleted)".
                let s = cwd.to_string_lossy();
                let cwd = Path::new(s.strip_suffix(" (deleted)").unwrap_or(&s));
                cwd.starts_with(&dir)
            })
        })
        .filter(|&pid| pid_alive(pid))
        .collect();
    pids.sort_unstable();
    pids
}

fn signal(pid: u32, sig: Signal) {
    if let Some(pid) = i32::try_from(pid)
        .ok()
        .and_then(rustix::process::Pid::from_raw)
    {
        let _ = rustix::process::kill_process(pid, sig);
    }
}

/// Removes from `cmd`'s environment every variable whose name starts with one of `prefixes`.
pub(crate) fn remove_env_prefixed(cmd: &mut Command, prefixes: &[&str]) {
    for (k, _) in std::env::vars_os() {
        let name = k.to_string_lossy();
        if prefixes.iter().any(|p| name.starts_with(p)) {
            cmd.env_remove(k);
        }
    }
}

pub(crate) fn output_of(cmd: &mut Command) -> Result<String, String> {
    let out = cmd
        .output()
        .map_err(|e| format!("cannot run {cmd:?}: {e}"))?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(format!(
            "{cmd:?} failed ({}): {}{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ))
    }
}

pub(crate) fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .unwrap_or_else(|_| rand::rng().random_range(20_000..60_000))
}

/// A server log: `path` opened for appending, twice (the server's stdout and stderr).
pub(crate) fn open_log(path: &Path) -> Result<(fs::File, fs::File), String> {
    let log = fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .map_err(|e| format!("cannot open {}: {e}", path.display()))?;
    let log2 = log
        .try_clone()
        .map_err(|e| format!("cannot dup the log: {e}"))?;
    Ok((log, log2))
}

/// The text of a server log (empty when unreadable).
pub(crate) fn read_log(path: &Path) -> String {
    fs::read(path)
        .map(|b| String::from_utf8_lossy(&b).into_owned())
        .unwrap_or_default()
}

/// The server process a test started: a child of the test process, which we signal and
/// reap (see the module docs).
#[derive(Debug, Default)]
pub(crate) struct ServerChild(Mutex<Option<Child>>);

impl ServerChild {
    fn lock(&self) -> MutexGuard<'_, Option<Child>> {
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Takes `child` as the server.
    pub(crate) fn set(&self, child: Child) {
        *self.lock() = Some(child);
    }

    /// Our server's pid while it runs (reaped once it exited).
    fn pid(&self) -> Option<u32> {
        let mut slot = self.lock();
        if let Some(c) = slot.as_mut() {
            if !matches!(c.try_wait(), Ok(None)) {
                *slot = None;
            }
        }
        slot.as_ref().map(|c| c.id())
    }

    /// `None` while our server runs; else how it ended (reaped), "gone" when there is none.
    fn exited(&self) -> Option<String> {
        let mut slot = self.lock();
        match slot.as_mut().map(|c| c.try_wait()) {
            Some(Ok(None)) => None,
            other => {
                *slot = None;
                Some(match other {
                    Some(Ok(Some(s))) => s.to_string(),
                    _ => "gone".into(),
                })
            }
        }
    }

    /// Waits up to `timeout` until `ready()` while our server, `program`, runs. An error
    /// when it exited, or when time ran out (after `on_timeout`, e.g. a kill).
    pub(crate) fn wait_ready(
        &self,
        program: &str,
        timeout: Duration,
        ready: impl Fn() -> bool,
        on_timeout: impl FnOnce(),
    ) -> Result<(), String> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.exited() {
                return Err(format!("{program} exited while starting ({status})"));
            }
            if ready() {
                return Ok(());
            }
            if Instant::now() > deadline {
                on_timeout();
                return Err(format!("{program} did not become ready within {timeout:?}"));
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// SIGKILL to our server, and reap it.
    fn kill(&self) {
        if let Some(mut c) = self.lock().take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// A crash: SIGKILL to the live server `pid` (ours or not) and to ours, then to every
    /// process left in `data_dir` when given (a machine crash stops them all); returns when
    /// none is left, or after 10 s, reported as `who`'s.
    pub(crate) fn crash(&self, pid: Option<u32>, data_dir: Option<&Path>, who: &str) {
        if let Some(pid) = pid {
            signal(pid, Signal::KILL);
        }
        self.kill();
        if let Some(dir) = data_dir {
            kill_processes_in(dir, Duration::from_secs(10), who);
        }
    }

    /// The live server's pid: ours, or the one its pid file records (`recorded`, read only
    /// when we have none) if that process runs in `data_dir` (a server someone else started
    /// on it).
    pub(crate) fn live_pid(
        &self,
        data_dir: &Path,
        recorded: impl FnOnce() -> Option<u32>,
    ) -> Option<u32> {
        if let Some(pid) = self.pid() {
            return Some(pid);
        }
        let pid = recorded()?;
        processes_in(data_dir).contains(&pid).then_some(pid)
    }

    /// Sends `sig` to the live server `pid` (ours or not) and waits up to `timeout` for it
    /// to exit (reaped when ours); `program` names it in the error. Ok when no server runs
    /// (`None`).
    pub(crate) fn signal_and_wait(
        &self,
        pid: Option<u32>,
        sig: Signal,
        timeout: Duration,
        program: &str,
    ) -> Result<(), String> {
        let Some(pid) = pid else { return Ok(()) };
        signal(pid, sig);
        let deadline = Instant::now() + timeout;
        loop {
            let gone = {
                let mut slot = self.lock();
                match slot.as_mut() {
                    Some(c) if c.id() == pid => match c.try_wait() {
                        Ok(None) => false,
                        _ => {
                            *slot = None;
                            true
                        }
                    },
                    _ => !pid_alive(pid),
                }
            };
            if gone {
                return Ok(());
            }
            if Instant::now() > deadline {
                return Err(format!(
                    "{program} (pid {pid}) did not stop within {timeout:?} after {sig:?}"
                ));
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

/// SIGKILL to every process in `dir` until none is left (true) or `timeout` passed (false,
/// reported as `who`'s).
fn kill_processes_in(dir: &Path, timeout: Duration, who: &str) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        let pids = processes_in(dir);
        if pids.is_empty() {
            return true;
        }
        if Instant::now() > deadline {
            eprintln!(
                "{who}: processes {pids:?} in {} survive SIGKILL",
                dir.display()
            );
            return false;
        }
        for pid in pids {
            signal(pid, Signal::KILL);
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}
