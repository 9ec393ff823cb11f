//! Real PostgreSQL clusters for tests, and [`Ledger`], a load with an invariant.
//!
//! [`PgCluster::init`] makes a throw-away cluster in a temp dir (optionally with its data
//! directory, a separate WAL directory and a tablespace placed elsewhere, e.g. on
//! [`crate::loopfs`] file systems) and starts it on a private unix socket directory, with
//! TCP off (`listen_addresses=''`) and `fsync=on`. [`PgCluster::adopt`] starts a server
//! over an existing data directory (a restored copy). Dropping a [`PgCluster`] stops its
//! server (immediate shutdown, then SIGKILL) and removes its temp dir, also when the test
//! panics: no server outlives a test.
//!
//! PostgreSQL refuses to run as root. As root, every server-side program (initdb,
//! postgres, pg_ctl via [`PgCluster::command`]) runs as the `postgres` system user, the
//! directories it needs are chowned to it and their ancestors made traversable (`o+x`).
//! Not as root, everything runs as the current user.
//!
//! The postmaster is started directly (not through `pg_ctl`) and is a child of the test
//! process: we can signal it, and we reap it. That matters on machines whose PID 1 does not
//! reap orphans: a zombie postmaster left behind by `pg_ctl` keeps `kill(pid, 0)` true, and
//! PostgreSQL then refuses to start over its `postmaster.pid` ("lock file already exists").
//!
//! Without the PostgreSQL binaries, [`postgres_or_skip`] prints why a test skips and
//! returns `None` — unless `SHADOWCOPY_TEST_REQUIRE_ROOT=1` ([`REQUIRE_ROOT_ENV`]), under
//! which a skip is a failure.

use std::fs;
use std::io::Write;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Mutex, MutexGuard, OnceLock};
use std::time::{Duration, Instant};

use postgres::{Client, NoTls};
use rand::RngExt;
use rustix::process::Signal;

pub use crate::bank::Ack;
pub use crate::ledger::{
    error_chain, LedgerRun, LedgerState, LedgerStats, LEDGER_ACCOUNTS, LEDGER_INITIAL_BALANCE,
};
use crate::ledger::{LedgerConn, Transfer};
pub use crate::loopfs::REQUIRE_ROOT_ENV;

/// The tablespace [`PgOptions::tablespace_dir`] creates.
pub const TABLESPACE: &str = "shadowcopy_ts";

/// How long a start may take (crash recovery of a copy included).
const START_TIMEOUT: Duration = Duration::from_secs(120);
/// How long a fast or immediate shutdown may take.
const STOP_TIMEOUT: Duration = Duration::from_secs(60);
/// How long [`Drop`] waits for an immediate shutdown before SIGKILL.
const DROP_GRACE: Duration = Duration::from_secs(5);

// ---------------------------------------------------------------------------------------
// Binaries, the user the server runs as, skipping

/// The directory of the newest installed PostgreSQL's programs: the highest
/// `/usr/lib/postgresql/<major>/bin` (Debian), else the PATH directory holding `postgres`
/// and `initdb`.
pub fn pg_bin_dir() -> Option<PathBuf> {
    static DIR: OnceLock<Option<PathBuf>> = OnceLock::new();
    DIR.get_or_init(|| {
        let mut best: Option<(u32, PathBuf)> = None;
        if let Ok(entries) = fs::read_dir("/usr/lib/postgresql") {
            for e in entries.flatten() {
                let Some(major) = e.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else {
                    continue;
                };
                let bin = e.path().join("bin");
                if bin.join("postgres").is_file()
                    && bin.join("initdb").is_file()
                    && !matches!(&best, Some((m, _)) if *m >= major)
                {
                    best = Some((major, bin));
                }
            }
        }
        if let Some((_, bin)) = best {
            return Some(bin);
        }
        let path = std::env::var_os("PATH").unwrap_or_default();
        std::env::split_paths(&path)
            .find(|d| d.join("postgres").is_file() && d.join("initdb").is_file())
    })
    .clone()
}

/// The path of PostgreSQL program `name` (`psql`, `pg_amcheck`, `pg_checksums`,
/// `pg_waldump`, …) in [`pg_bin_dir`]; just `name` (found on the PATH) when none is found.
pub fn pg_bin(name: &str) -> PathBuf {
    pg_bin_dir()
        .map(|d| d.join(name))
        .unwrap_or_else(|| PathBuf::from(name))
}

/// The user and group the server runs as: `postgres` when we are root, `None` (ourselves)
/// otherwise. (The MariaDB module's `MariaDbUser`, `mysql`, is this type too.)
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PgUser {
    pub uid: u32,
    pub gid: u32,
}

/// `Ok(Some(postgres))` as root, `Ok(None)` otherwise; an error when root has no
/// `postgres` user to run the server as.
pub fn pg_user() -> Result<Option<PgUser>, String> {
    server_user("postgres", "PostgreSQL", "PostgreSQL")
}

/// As root, system user `name` (from `/etc/passwd`) to run `server` as, `Ok(None)` when
/// not root; an error when root has no such user (`program` refuses to run as root).
pub(crate) fn server_user(
    name: &str,
    server: &str,
    program: &str,
) -> Result<Option<PgUser>, String> {
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
            return Ok(Some(PgUser { uid, gid }));
        }
    }
    Err(format!(
        "running as root, but there is no `{name}` user to run {server} as \
         ({program} refuses to run as root)"
    ))
}

/// Why PostgreSQL cannot run here, if it cannot.
pub fn postgres_unavailable() -> Option<String> {
    let Some(dir) = pg_bin_dir() else {
        return Some(
            "PostgreSQL is not installed (no /usr/lib/postgresql/*/bin and no postgres/initdb \
             on the PATH; apt-get install postgresql postgresql-contrib)"
                .into(),
        );
    };
    for tool in ["postgres", "initdb", "psql"] {
        if !dir.join(tool).is_file() {
            return Some(format!("{} is missing", dir.join(tool).display()));
        }
    }
    pg_user().err()
}

// The same convention as `loopfs` (whose `skip` is private): print and pass, or fail under
// SHADOWCOPY_TEST_REQUIRE_ROOT=1. The mariadb module's too.
pub(crate) fn skip(test: &str, why: &str) -> bool {
    if std::env::var(REQUIRE_ROOT_ENV).is_ok_and(|v| v == "1") {
        panic!("{test} cannot run: {why}; a skip is a failure under {REQUIRE_ROOT_ENV}=1");
    }
    eprintln!("skipping {test}: {why}");
    false
}

/// True when PostgreSQL can run here; otherwise prints why `test` skips and returns false,
/// or panics under `SHADOWCOPY_TEST_REQUIRE_ROOT=1`.
pub fn require_postgres(test: &str) -> bool {
    match postgres_unavailable() {
        None => true,
        Some(why) => skip(test, &why),
    }
}

/// [`require_postgres`] and [`PgCluster::init`] in one call: `None` means skip. A failure
/// to make the cluster panics (it is not a reason to skip).
pub fn postgres_or_skip(test: &str, opts: PgOptions) -> Option<PgCluster> {
    if !require_postgres(test) {
        return None;
    }
    match PgCluster::try_init(opts) {
        Ok(c) => Some(c),
        Err(e) => panic!("{test}: cannot make a PostgreSQL cluster: {e}"),
    }
}

// ---------------------------------------------------------------------------------------
// Directories and processes (the mariadb module's too, for the `mysql` user)

pub(crate) fn chown(path: &Path, user: PgUser) -> Result<(), String> {
    std::os::unix::fs::lchown(path, Some(user.uid), Some(user.gid))
        .map_err(|e| format!("cannot chown {}: {e}", path.display()))
}

pub(crate) fn chmod(path: &Path, mode: u32) -> Result<(), String> {
    fs::set_permissions(path, fs::Permissions::from_mode(mode))
        .map_err(|e| format!("cannot chmod {}: {e}", path.display()))
}

/// Gives `o+x` to every ancestor of `path` the server user could not traverse (only when
/// the server runs as another user, i.e. as root).
pub(crate) fn make_traversable(path: &Path, user: Option<PgUser>) -> Result<(), String> {
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
    user: Option<PgUser>,
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

/// Makes `path` (created if missing) a directory the PostgreSQL server can write, e.g. a WAL
/// archive for `archive_command`: owned by `postgres` when we are root, ancestors traversable.
pub fn make_postgres_dir(path: &Path) -> Result<(), String> {
    server_dir(path, pg_user()?, 0o700, false)
}

/// Chowns `path` and everything below it (symlinks themselves, not followed).
pub(crate) fn chown_tree(path: &Path, user: PgUser) -> Result<(), String> {
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
/// postmaster and every backend and auxiliary process run in their data directory, so
/// `processes_in(data_dir)` lists a cluster's processes.
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

pub(crate) fn signal(pid: u32, sig: Signal) {
    if let Some(pid) = i32::try_from(pid)
        .ok()
        .and_then(rustix::process::Pid::from_raw)
    {
        let _ = rustix::process::kill_process(pid, sig);
    }
}

/// Removes `PG*` variables (PGHOST, PGPORT, PGDATA, …) so they cannot redirect a command.
pub(crate) fn clean_env(cmd: &mut Command) {
    remove_env_prefixed(cmd, &["PG"]);
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

fn quote_literal(s: &str) -> String {
    format!("'{}'", s.replace('\'', "''"))
}

fn quote_ident(s: &str) -> String {
    format!("\"{}\"", s.replace('"', "\"\""))
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
    pub(crate) fn pid(&self) -> Option<u32> {
        let mut slot = self.lock();
        if let Some(c) = slot.as_mut() {
            if !matches!(c.try_wait(), Ok(None)) {
                *slot = None;
            }
        }
        slot.as_ref().map(|c| c.id())
    }

    /// `None` while our server runs; else how it ended (reaped), "gone" when there is none.
    pub(crate) fn exited(&self) -> Option<String> {
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
    pub(crate) fn kill(&self) {
        if let Some(mut c) = self.lock().take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Sends `sig` to server `pid` (ours or not) and waits up to `timeout` for it to exit
    /// (reaped when ours); `program` names it in the error.
    pub(crate) fn signal_and_wait(
        &self,
        pid: u32,
        sig: Signal,
        timeout: Duration,
        program: &str,
    ) -> Result<(), String> {
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
pub(crate) fn kill_processes_in(dir: &Path, timeout: Duration, who: &str) -> bool {
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

// ---------------------------------------------------------------------------------------
// PgCluster

/// How [`PgCluster::init`] makes a cluster. All paths default to the cluster's own temp dir.
#[derive(Clone, Debug, Default)]
pub struct PgOptions {
    /// The data directory (created; must be absent or empty). Default `<tempdir>/data`.
    /// Directories placed outside the temp dir are not removed on drop.
    pub data_dir: Option<PathBuf>,
    /// A separate WAL directory (`initdb --waldir`; created, must be absent or empty).
    /// Setting it implies [`PgOptions::separate_wal`].
    pub wal_dir: Option<PathBuf>,
    /// Put the WAL in a separate directory (default `<tempdir>/wal`).
    pub separate_wal: bool,
    /// `initdb --data-checksums`.
    pub data_checksums: bool,
    /// Extra `postgresql.conf` settings, appended as `name = 'value'`.
    pub settings: Vec<(String, String)>,
    /// Create this directory and the tablespace [`TABLESPACE`] in it.
    pub tablespace_dir: Option<PathBuf>,
    /// Let initdb fsync what it wrote (slower by about 0.5 s; the server always runs with
    /// `fsync=on`).
    pub initdb_sync: bool,
}

impl PgOptions {
    pub fn new() -> PgOptions {
        PgOptions::default()
    }
    pub fn data_dir(mut self, path: impl Into<PathBuf>) -> PgOptions {
        self.data_dir = Some(path.into());
        self
    }
    pub fn wal_dir(mut self, path: impl Into<PathBuf>) -> PgOptions {
        self.wal_dir = Some(path.into());
        self.separate_wal = true;
        self
    }
    pub fn separate_wal(mut self) -> PgOptions {
        self.separate_wal = true;
        self
    }
    pub fn data_checksums(mut self, on: bool) -> PgOptions {
        self.data_checksums = on;
        self
    }
    pub fn setting(mut self, name: &str, value: &str) -> PgOptions {
        self.settings.push((name.into(), value.into()));
        self
    }
    pub fn tablespace_dir(mut self, path: impl Into<PathBuf>) -> PgOptions {
        self.tablespace_dir = Some(path.into());
        self
    }
}

/// How [`PgCluster::adopt`] runs an existing data directory.
#[derive(Clone, Debug, Default)]
pub struct AdoptOptions {
    /// Where its WAL is (reported by [`PgCluster::wal_dir`], chowned with
    /// `fix_ownership`). Default: where `pg_wal` points.
    pub wal_dir: Option<PathBuf>,
    /// Settings passed as `-c name=value` at every start (the copy's files are not
    /// changed), e.g. `archive_mode=off` so a sandbox does not archive into the original's
    /// archive, or `restore_command`.
    pub settings: Vec<(String, String)>,
    /// As root: chown the data dir, WAL dir and tablespaces to `postgres` and chmod the data
    /// dir 0700 first. Off by default: a restore that loses ownership should fail its test.
    pub fix_ownership: bool,
}

impl AdoptOptions {
    pub fn new() -> AdoptOptions {
        AdoptOptions::default()
    }
    pub fn wal_dir(mut self, path: impl Into<PathBuf>) -> AdoptOptions {
        self.wal_dir = Some(path.into());
        self
    }
    pub fn setting(mut self, name: &str, value: &str) -> AdoptOptions {
        self.settings.push((name.into(), value.into()));
        self
    }
    pub fn fix_ownership(mut self) -> AdoptOptions {
        self.fix_ownership = true;
        self
    }
}

/// A PostgreSQL cluster for a test; see the module docs.
#[derive(Debug)]
pub struct PgCluster {
    run: tempfile::TempDir,
    data_dir: PathBuf,
    wal_dir: PathBuf,
    tablespace_dir: Option<PathBuf>,
    socket_dir: PathBuf,
    log_path: PathBuf,
    port: u16,
    user: Option<PgUser>,
    /// `-c` settings of every start (adopted clusters).
    start_settings: Vec<(String, String)>,
    /// The postmaster we started, reaped by us.
    child: ServerChild,
}

impl PgCluster {
    /// Makes a cluster (`initdb`) and starts it; panics on failure. See [`PgOptions`].
    pub fn init(opts: PgOptions) -> PgCluster {
        PgCluster::try_init(opts)
            .unwrap_or_else(|e| panic!("cannot make a PostgreSQL cluster: {e}"))
    }

    /// [`PgCluster::init`] returning errors.
    pub fn try_init(opts: PgOptions) -> Result<PgCluster, String> {
        if let Some(why) = postgres_unavailable() {
            return Err(why);
        }
        let user = pg_user()?;
        let mut cluster = PgCluster::with_run_dir(user)?;
        let run = cluster.run.path().to_path_buf();

        let data_dir = opts.data_dir.clone().unwrap_or_else(|| run.join("data"));
        server_dir(&data_dir, user, 0o700, true)?;
        cluster.data_dir = canonical(&data_dir);
        cluster.wal_dir = cluster.data_dir.join("pg_wal");

        let mut initdb = cluster.command("initdb");
        initdb.arg("-D").arg(&cluster.data_dir).args([
            "-U",
            "postgres",
            "--auth=trust",
            "--no-locale",
            "-E",
            "UTF8",
        ]);
        if opts.separate_wal || opts.wal_dir.is_some() {
            let wal = opts.wal_dir.clone().unwrap_or_else(|| run.join("wal"));
            server_dir(&wal, user, 0o700, true)?;
            cluster.wal_dir = canonical(&wal);
            initdb.arg("--waldir").arg(&cluster.wal_dir);
        }
        if opts.data_checksums {
            initdb.arg("--data-checksums");
        }
        if !opts.initdb_sync {
            initdb.arg("--no-sync");
        }
        output_of(&mut initdb)?;

        if !opts.settings.is_empty() {
            let conf = cluster.data_dir.join("postgresql.conf");
            let mut f = fs::OpenOptions::new()
                .append(true)
                .open(&conf)
                .map_err(|e| format!("cannot open {}: {e}", conf.display()))?;
            let mut text = String::from("\n# shadowcopy-testing\n");
            for (k, v) in &opts.settings {
                text.push_str(&format!("{k} = {}\n", quote_literal(v)));
            }
            f.write_all(text.as_bytes())
                .map_err(|e| format!("cannot write {}: {e}", conf.display()))?;
        }

        cluster.try_start()?;

        if let Some(ts) = &opts.tablespace_dir {
            server_dir(ts, user, 0o700, true)?;
            let ts = canonical(ts);
            cluster.try_psql(&format!(
                "CREATE TABLESPACE {} LOCATION {}",
                quote_ident(TABLESPACE),
                quote_literal(&ts.to_string_lossy())
            ))?;
            cluster.tablespace_dir = Some(ts);
        }
        Ok(cluster)
    }

    /// A cluster over an existing data directory (e.g. a restored copy), with its own
    /// socket dir, port and log in a new temp dir. It is NOT started: call
    /// [`PgCluster::start`] or [`PgCluster::try_start`]. Drop stops it and removes the temp
    /// dir, not the data directory. A `postmaster.pid` in the copy naming a live process (the
    /// original server) makes the start fail, as it would in production. Panics on failure.
    pub fn adopt(data_dir: impl AsRef<Path>, opts: AdoptOptions) -> PgCluster {
        PgCluster::try_adopt(data_dir.as_ref(), opts)
            .unwrap_or_else(|e| panic!("cannot adopt a PostgreSQL data directory: {e}"))
    }

    /// [`PgCluster::adopt`] returning errors.
    pub fn try_adopt(data_dir: &Path, opts: AdoptOptions) -> Result<PgCluster, String> {
        if let Some(why) = postgres_unavailable() {
            return Err(why);
        }
        let user = pg_user()?;
        let mut cluster = PgCluster::with_run_dir(user)?;
        if !data_dir.join("PG_VERSION").is_file() {
            return Err(format!(
                "{} is not a PostgreSQL data directory (no PG_VERSION)",
                data_dir.display()
            ));
        }
        cluster.data_dir = canonical(data_dir);
        cluster.wal_dir = match &opts.wal_dir {
            Some(w) => canonical(w),
            None => canonical(&cluster.data_dir.join("pg_wal")),
        };
        let tablespaces: Vec<PathBuf> = fs::read_dir(cluster.data_dir.join("pg_tblspc"))
            .map(|it| it.flatten().map(|e| canonical(&e.path())).collect())
            .unwrap_or_default();
        cluster.tablespace_dir = tablespaces.first().cloned();
        if let (true, Some(u)) = (opts.fix_ownership, user) {
            chown_tree(&cluster.data_dir, u)?;
            if !cluster.wal_dir.starts_with(&cluster.data_dir) {
                chown_tree(&cluster.wal_dir, u)?;
            }
            for ts in &tablespaces {
                chown_tree(ts, u)?;
            }
        }
        if opts.fix_ownership {
            chmod(&cluster.data_dir, 0o700)?;
        }
        make_traversable(&cluster.data_dir, user)?;
        make_traversable(&cluster.wal_dir, user)?;
        for ts in &tablespaces {
            make_traversable(ts, user)?;
        }
        cluster.start_settings = opts.settings;
        Ok(cluster)
    }

    /// The temp dir (socket dir, log) and a cluster value around it, not yet pointing at a
    /// data directory.
    fn with_run_dir(user: Option<PgUser>) -> Result<PgCluster, String> {
        let run = tempfile::Builder::new()
            .prefix("shadowcopy-pg-")
            .tempdir()
            .map_err(|e| format!("cannot create a temp dir: {e}"))?;
        let root = canonical(run.path());
        server_dir(&root, user, 0o700, false)?;
        let socket_dir = root.join("sock");
        server_dir(&socket_dir, user, 0o700, true)?;
        let log_path = root.join("server.log");
        Ok(PgCluster {
            run,
            data_dir: root.join("data"),
            wal_dir: root.join("data/pg_wal"),
            tablespace_dir: None,
            socket_dir,
            log_path,
            port: free_port(),
            user,
            start_settings: Vec::new(),
            child: ServerChild::default(),
        })
    }

    /// A command running PostgreSQL program `name` as the server user (`postgres` when we
    /// are root), in the cluster's temp dir, without `PG*` environment variables. For
    /// `pg_ctl`, `pg_checksums`, `pg_resetwal`, … on this cluster's files.
    pub fn command(&self, name: &str) -> Command {
        let mut cmd = Command::new(pg_bin(name));
        if let Some(u) = self.user {
            cmd.uid(u.uid).gid(u.gid);
        }
        cmd.current_dir(self.run.path());
        clean_env(&mut cmd);
        cmd
    }

    pub fn data_dir(&self) -> &Path {
        &self.data_dir
    }

    /// The WAL directory: the separate one, or `<data_dir>/pg_wal`.
    pub fn wal_dir(&self) -> &Path {
        &self.wal_dir
    }

    /// The directory of tablespace [`TABLESPACE`] (adopted clusters: the first one found in
    /// `pg_tblspc`).
    pub fn tablespace_dir(&self) -> Option<&Path> {
        self.tablespace_dir.as_deref()
    }

    pub fn socket_dir(&self) -> &Path {
        &self.socket_dir
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// The cluster's temp dir (socket dir, server log; data and WAL by default). Removed on
    /// drop.
    pub fn run_dir(&self) -> &Path {
        self.run.path()
    }

    /// The user the server runs as (`None`: ourselves).
    pub fn user(&self) -> Option<PgUser> {
        self.user
    }

    /// `postgresql:///postgres?host=<socket dir>&port=<port>&user=postgres` (libpq URL).
    pub fn url(&self) -> String {
        format!(
            "postgresql:///postgres?host={}&port={}&user=postgres",
            self.socket_dir.display(),
            self.port
        )
    }

    /// Connection settings for the `postgres` crate (10 s connect timeout).
    pub fn config(&self) -> postgres::Config {
        let mut c = postgres::Config::new();
        c.host_path(&self.socket_dir)
            .port(self.port)
            .user("postgres")
            .dbname("postgres")
            .connect_timeout(Duration::from_secs(10));
        c
    }

    /// A new connection; panics (with the server log) on failure.
    pub fn connect(&self) -> Client {
        self.config().connect(NoTls).unwrap_or_else(|e| {
            panic!(
                "cannot connect to {}: {}\nserver log:\n{}",
                self.url(),
                error_chain(&e),
                self.log()
            )
        })
    }

    /// Runs `sql` with `psql -X -A -t -v ON_ERROR_STOP=1 -c`; returns trimmed stdout.
    pub fn try_psql(&self, sql: &str) -> Result<String, String> {
        let mut cmd = Command::new(pg_bin("psql"));
        clean_env(&mut cmd);
        cmd.args(["-X", "-A", "-t", "-v", "ON_ERROR_STOP=1", "-h"])
            .arg(&self.socket_dir)
            .arg("-p")
            .arg(self.port.to_string())
            .args(["-U", "postgres", "-d", "postgres", "-c", sql])
            .stdin(Stdio::null());
        let out = cmd.output().map_err(|e| format!("cannot run psql: {e}"))?;
        if out.status.success() {
            Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
        } else {
            Err(format!(
                "psql {sql:?} failed ({}): {}",
                out.status,
                String::from_utf8_lossy(&out.stderr).trim()
            ))
        }
    }

    /// [`PgCluster::try_psql`], panicking with psql's stderr on failure.
    pub fn psql(&self, sql: &str) -> String {
        self.try_psql(sql).unwrap_or_else(|e| panic!("{e}"))
    }

    /// The server log (every start appends to it).
    pub fn log(&self) -> String {
        read_log(&self.log_path)
    }

    /// The live postmaster's pid: ours, or one `postmaster.pid` names that runs in our data
    /// directory (a server someone else started on it).
    pub fn postmaster_pid(&self) -> Option<u32> {
        if let Some(pid) = self.child.pid() {
            return Some(pid);
        }
        let text = fs::read_to_string(self.data_dir.join("postmaster.pid")).ok()?;
        let pid: u32 = text.lines().next()?.trim().parse().ok()?;
        processes_in(&self.data_dir).contains(&pid).then_some(pid)
    }

    pub fn is_running(&self) -> bool {
        self.postmaster_pid().is_some()
    }

    /// Starts the server (`postgres -D … -p PORT -k SOCKDIR -c listen_addresses=`) and
    /// waits until it accepts connections, like `pg_ctl -w start`.
    pub fn try_start(&self) -> Result<(), String> {
        if let Some(pid) = self.postmaster_pid() {
            return Err(format!("the server is already running (pid {pid})"));
        }
        let (log, log2) = open_log(&self.log_path)?;
        let mut cmd = self.command("postgres");
        cmd.arg("-D")
            .arg(&self.data_dir)
            .arg("-p")
            .arg(self.port.to_string())
            .arg("-k")
            .arg(&self.socket_dir)
            .args(["-c", "listen_addresses="]);
        for (k, v) in &self.start_settings {
            cmd.arg("-c").arg(format!("{k}={v}"));
        }
        cmd.stdin(Stdio::null()).stdout(log2).stderr(log);
        let child = cmd
            .spawn()
            .map_err(|e| format!("cannot start {cmd:?}: {e}"))?;
        let pid = child.id();
        self.child.set(child);

        // pg_ctl's test: line 1 is our pid, line 8 "ready" (or "standby": a hot standby
        // accepting read-only connections).
        let ready = || {
            fs::read_to_string(self.data_dir.join("postmaster.pid")).is_ok_and(|text| {
                let lines: Vec<&str> = text.lines().collect();
                lines.len() >= 8
                    && lines[0].trim() == pid.to_string()
                    && matches!(lines[7].trim(), "ready" | "standby")
            })
        };
        self.child
            .wait_ready("postgres", START_TIMEOUT, ready, || self.kill9())
            .map_err(|e| format!("{e}; server log:\n{}", self.log()))
    }

    /// [`PgCluster::try_start`], panicking on failure.
    pub fn start(&self) {
        self.try_start()
            .unwrap_or_else(|e| panic!("cannot start PostgreSQL: {e}"));
    }

    /// Sends `sig` to the postmaster and waits up to `timeout` for it to exit. Ok when no
    /// server runs (any more).
    fn signal_and_wait(&self, sig: Signal, timeout: Duration) -> Result<(), String> {
        match self.postmaster_pid() {
            Some(pid) => self.child.signal_and_wait(pid, sig, timeout, "postgres"),
            None => Ok(()),
        }
    }

    /// Fast shutdown (SIGINT: sessions are ended, a shutdown checkpoint written); waits for it.
    pub fn stop(&self) {
        if let Err(e) = self.signal_and_wait(Signal::INT, STOP_TIMEOUT) {
            panic!("{e}; server log:\n{}", self.log());
        }
    }

    /// Immediate shutdown (SIGQUIT: no checkpoint, crash recovery at the next start).
    pub fn stop_immediate(&self) {
        if let Err(e) = self.signal_and_wait(Signal::QUIT, STOP_TIMEOUT) {
            panic!("{e}; server log:\n{}", self.log());
        }
    }

    /// A crash: SIGKILL to the postmaster, then to every process left in the data directory
    /// (backends, checkpointer, …: a machine crash stops them all, and lingering backends
    /// would keep the next start from taking the shared memory). Returns when none is left.
    pub fn kill9(&self) {
        if let Some(pid) = self.postmaster_pid() {
            signal(pid, Signal::KILL);
        }
        self.child.kill();
        kill_processes_in(&self.data_dir, Duration::from_secs(10), "PgCluster");
    }
}

impl Drop for PgCluster {
    fn drop(&mut self) {
        if self.is_running() {
            if let Err(e) = self.signal_and_wait(Signal::QUIT, DROP_GRACE) {
                eprintln!("PgCluster drop: {e}; killing it");
            }
        }
        self.kill9();
        // The temp dir (socket, log, default data/WAL) goes with `self.run`.
    }
}

// ---------------------------------------------------------------------------------------
// Ledger

/// A load with an invariant on PostgreSQL, the counterpart of the SQLite bank
/// ([`crate::bank`]): the [`crate::ledger`] load (what its writers do, the invariants any
/// consistent state keeps) on tables `accounts`, `ledger` (a `bigserial` id) and
/// `ledger_meta`. With [`Ledger::setup_with`]'s tablespace the fee invariant spans two
/// directories. What the writers acknowledged is read through [`LedgerRun`] (`Deref`);
/// [`Ledger::stop`] stops them and reports.
pub struct Ledger(LedgerRun);

impl std::ops::Deref for Ledger {
    type Target = LedgerRun;
    fn deref(&self) -> &LedgerRun {
        &self.0
    }
}

struct WriterConn {
    client: Client,
    debit_credit: postgres::Statement,
    fee: postgres::Statement,
    insert: postgres::Statement,
    accounts: i32,
}

fn writer_connect(config: &postgres::Config) -> Result<WriterConn, postgres::Error> {
    let mut client = config.connect(NoTls)?;
    let debit_credit =
        client.prepare("UPDATE accounts SET balance = balance + $2 WHERE id = $1")?;
    let fee = client.prepare(
        "INSERT INTO accounts (id, balance) VALUES ($1, 1) \
         ON CONFLICT (id) DO UPDATE SET balance = accounts.balance + 1",
    )?;
    let insert = client
        .prepare("INSERT INTO ledger (writer, seq, amount) VALUES ($1, $2, $3) RETURNING id")?;
    let accounts: i64 = client
        .query_one("SELECT accounts FROM ledger_meta", &[])?
        .get(0);
    Ok(WriterConn {
        client,
        debit_credit,
        fee,
        insert,
        accounts: accounts as i32,
    })
}

impl LedgerConn for WriterConn {
    type Error = postgres::Error;

    fn accounts(&self) -> i32 {
        self.accounts
    }

    fn is_closed(&self) -> bool {
        self.client.is_closed()
    }

    fn transfer(&mut self, t: &Transfer) -> Result<i64, postgres::Error> {
        let mut tx = self.client.transaction()?;
        tx.execute(&self.debit_credit, &[&t.lo, &t.lo_delta])?;
        tx.execute(&self.debit_credit, &[&t.hi, &t.hi_delta])?;
        tx.execute(&self.fee, &[&t.fee_account])?;
        let id: i64 = tx
            .query_one(&self.insert, &[&t.writer, &t.seq, &t.amount])?
            .get(0);
        tx.commit()?;
        Ok(id)
    }
}

impl Ledger {
    /// Creates `accounts`, `ledger` and `ledger_meta` with [`LEDGER_ACCOUNTS`] accounts.
    pub fn setup(client: &mut Client) -> Result<(), postgres::Error> {
        Ledger::setup_with(client, LEDGER_ACCOUNTS, None)
    }

    /// [`Ledger::setup`] with `accounts` accounts, and the `ledger` table (not `accounts`)
    /// in `tablespace` if given: the fee invariant then spans two directories.
    pub fn setup_with(
        client: &mut Client,
        accounts: i64,
        tablespace: Option<&str>,
    ) -> Result<(), postgres::Error> {
        assert!(accounts >= 2, "a ledger needs at least two accounts");
        let ts = tablespace
            .map(|t| format!(" TABLESPACE {}", quote_ident(t)))
            .unwrap_or_default();
        let mut tx = client.transaction()?;
        tx.batch_execute(&format!(
            "CREATE TABLE accounts (id int PRIMARY KEY, balance bigint NOT NULL);
             CREATE TABLE ledger (id bigserial PRIMARY KEY, writer int NOT NULL,
                                  seq bigint NOT NULL, amount bigint NOT NULL,
                                  at timestamptz NOT NULL DEFAULT now()){ts};
             CREATE TABLE ledger_meta (accounts bigint NOT NULL, expected_total bigint NOT NULL);
             INSERT INTO accounts SELECT g, {LEDGER_INITIAL_BALANCE} FROM generate_series(1, {accounts}) g;
             INSERT INTO ledger_meta VALUES ({accounts}, {});",
            accounts * LEDGER_INITIAL_BALANCE
        ))?;
        tx.commit()
    }

    /// Starts `writers` writer threads against `config` (e.g. [`PgCluster::config`]), each
    /// pausing `pause` between transactions (zero: as fast as possible).
    pub fn start(config: &postgres::Config, writers: usize, pause: Duration) -> Ledger {
        let config = config.clone();
        Ledger(LedgerRun::start("ledger", writers, pause, move || {
            writer_connect(&config)
        }))
    }

    /// Stops the writers and reports: [`LedgerRun::stop`].
    pub fn stop(self) -> LedgerStats {
        self.0.stop()
    }

    /// Reads the ledger's state in one REPEATABLE READ, read-only transaction (consistent
    /// while writers run).
    pub fn check(client: &mut Client) -> Result<LedgerState, postgres::Error> {
        let mut tx = client
            .build_transaction()
            .isolation_level(postgres::IsolationLevel::RepeatableRead)
            .read_only(true)
            .start()?;
        let ids: Vec<i64> = tx
            .query("SELECT id FROM ledger ORDER BY id", &[])?
            .iter()
            .map(|r| r.get(0))
            .collect();
        let row = tx.query_one(
            "SELECT count(*) FILTER (WHERE id > 0),
                    COALESCE(sum(balance), 0)::bigint,
                    COALESCE(sum(balance) FILTER (WHERE id < 0), 0)::bigint
               FROM accounts",
            &[],
        )?;
        let meta = tx.query_one("SELECT accounts, expected_total FROM ledger_meta", &[])?;
        tx.commit()?;
        Ok(LedgerState {
            ids,
            accounts: row.get(0),
            expected_accounts: meta.get(0),
            total_balance: row.get(1),
            expected_total: meta.get(1),
            fees: row.get(2),
        })
    }
}
