//! Real MariaDB servers for tests, and [`Ledger`], a load with an invariant: the MariaDB
//! counterpart of [`crate::postgres`], the ground the MariaDB writer's tests stand on.
//!
//! [`MariaDbInstance::init`] makes a throw-away server in a temp dir (`mariadb-install-db`,
//! root reachable over the socket without a password) and starts `mariadbd` on a private
//! unix socket with TCP off (`--skip-networking`, or a free loopback port on request), the
//! binary log on (`--log-bin`, `--binlog-format=ROW`, `--server-id`, `--sync-binlog=1`) and
//! InnoDB's durable commit (`--innodb-flush-log-at-trx-commit=1`). The binary log, the
//! InnoDB redo log and the undo tablespaces can each live outside the data directory
//! (e.g. on [`crate::loopfs`] file systems). [`MariaDbInstance::adopt`] starts a server over
//! an existing data directory (a restored copy) with the same options. Dropping a
//! [`MariaDbInstance`] stops its server (SIGTERM, then SIGKILL) and removes its temp dir,
//! also when the test panics: no server outlives a test.
//!
//! `mariadbd` refuses to run as root. As root, the server-side programs (`mariadb-install-db`,
//! `mariadbd`, [`MariaDbInstance::command`]) run as the `mysql` system user, the directories
//! they need are chowned to it and their ancestors made traversable (`o+x`). Not as root,
//! everything runs as the current user. The server is a child of the test process (we signal
//! it and reap it), is a single process, and runs in its data directory, so
//! [`processes_in`]`(data_dir)` finds it.
//!
//! Every program is called with `--no-defaults`: the machine's `/etc/mysql` and `~/.my.cnf`
//! play no part, and the system's own MariaDB service (which the Debian package does not
//! start where `policy-rc.d` forbids it) is neither needed nor touched.
//!
//! Without the MariaDB binaries, [`mariadb_or_skip`] prints why a test skips and returns
//! `None` — unless `SHADOWCOPY_TEST_REQUIRE_ROOT=1` ([`REQUIRE_ROOT_ENV`]), under which a
//! skip is a failure.
//!
//! The ledger's writer threads, state and statistics are [`crate::ledger`]'s, shared with
//! the PostgreSQL ledger ([`LedgerRun`], [`LedgerState`], [`LedgerStats`], re-exported
//! here): the invariants are the same. The user, directory and process handling is
//! [`crate::server_process`]'s, shared with the PostgreSQL starter.

use std::fs;
use std::io::Read;
use std::os::unix::net::UnixStream;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::{Mutex, OnceLock};
use std::time::Duration;

use mysql::prelude::Queryable;
use mysql::{Conn, Opts, OptsBuilder, TxOpts};
use rustix::process::Signal;

pub use crate::bank::Ack;
pub use crate::ledger::{
    error_chain, LedgerRun, LedgerState, LedgerStats, LEDGER_ACCOUNTS, LEDGER_INITIAL_BALANCE,
};
use crate::ledger::{LedgerConn, Transfer};
pub use crate::loopfs::REQUIRE_ROOT_ENV;
pub use crate::server_process::processes_in;
use crate::server_process::{
    canonical, chmod, chown, chown_tree, free_port, make_traversable, open_log, output_of,
    read_log, remove_env_prefixed, server_dir, server_user, skip, ServerChild, ServerUser,
};

/// The binary logs' base name: files `mariadb-bin.000001`, … and the index
/// `mariadb-bin.index`, in [`MariaDbInstance::binlog_dir`].
pub const BINLOG_BASENAME: &str = "mariadb-bin";
/// The database [`Ledger::setup`] creates its tables in.
pub const LEDGER_DATABASE: &str = "shadowcopy";
/// Undo tablespaces made when [`MariaDbOptions::undo_dir`] is set (`undo001` …).
pub const UNDO_TABLESPACES: u32 = 3;

/// Server settings of every instance (before [`MariaDbOptions::settings`], which win): a
/// small buffer pool and redo log, so that tests and their copies stay small.
const DEFAULT_SETTINGS: &[(&str, &str)] = &[
    ("innodb_buffer_pool_size", "64M"),
    ("innodb_log_file_size", "32M"),
];

/// How long a start may take (crash recovery of a copy included).
const START_TIMEOUT: Duration = Duration::from_secs(120);
/// How long a clean shutdown may take.
const STOP_TIMEOUT: Duration = Duration::from_secs(60);
/// How long [`Drop`] waits for a clean shutdown before SIGKILL.
const DROP_GRACE: Duration = Duration::from_secs(5);

// ---------------------------------------------------------------------------------------
// Binaries, the user the server runs as, skipping

/// Where MariaDB program `name` is: the PATH, then `/usr/sbin` and `/usr/bin` (`mariadbd`
/// is in `/usr/sbin`, which a non-root PATH may lack).
fn find_bin(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain([
            "/usr/sbin".into(),
            "/usr/bin".into(),
            "/usr/local/bin".into(),
        ])
        .map(|d| d.join(name))
        .find(|p| p.is_file())
}

/// The path of MariaDB program `name` (`mariadbd`, `mariadb`, `mariadb-admin`,
/// `mariadb-backup`, `mariadb-binlog`, `aria_chk`, …); just `name` when none is found.
pub fn mariadb_bin(name: &str) -> PathBuf {
    static FOUND: OnceLock<Mutex<Vec<(String, PathBuf)>>> = OnceLock::new();
    let cache = FOUND.get_or_init(|| Mutex::new(Vec::new()));
    let mut cache = cache.lock().unwrap_or_else(|p| p.into_inner());
    if let Some((_, p)) = cache.iter().find(|(n, _)| n == name) {
        return p.clone();
    }
    let p = find_bin(name).unwrap_or_else(|| PathBuf::from(name));
    cache.push((name.to_string(), p.clone()));
    p
}

/// The user and group the server runs as: `mysql` when we are root, `None` (ourselves)
/// otherwise (see [`ServerUser`]).
pub type MariaDbUser = ServerUser;

/// `Ok(Some(mysql))` as root, `Ok(None)` otherwise; an error when root has no `mysql` user
/// to run the server as.
pub fn mariadb_user() -> Result<Option<MariaDbUser>, String> {
    server_user("mysql", "MariaDB", "mariadbd")
}

/// Why MariaDB cannot run here, if it cannot.
pub fn mariadb_unavailable() -> Option<String> {
    let missing: Vec<&str> = ["mariadbd", "mariadb-install-db", "mariadb"]
        .into_iter()
        .filter(|t| find_bin(t).is_none())
        .collect();
    if !missing.is_empty() {
        return Some(format!(
            "MariaDB is not installed ({} not found on the PATH or in /usr/sbin; \
             apt-get install mariadb-server mariadb-client mariadb-backup)",
            missing.join(", ")
        ));
    }
    mariadb_user().err()
}

/// True when MariaDB can run here; otherwise prints why `test` skips and returns false, or
/// panics under `SHADOWCOPY_TEST_REQUIRE_ROOT=1`.
pub fn require_mariadb(test: &str) -> bool {
    match mariadb_unavailable() {
        None => true,
        Some(why) => skip(test, &why),
    }
}

/// [`require_mariadb`] and [`MariaDbInstance::init`] in one call: `None` means skip. A
/// failure to make the instance panics (it is not a reason to skip).
pub fn mariadb_or_skip(test: &str, opts: MariaDbOptions) -> Option<MariaDbInstance> {
    if !require_mariadb(test) {
        return None;
    }
    match MariaDbInstance::try_init(opts) {
        Ok(m) => Some(m),
        Err(e) => panic!("{test}: cannot make a MariaDB instance: {e}"),
    }
}

// ---------------------------------------------------------------------------------------
// Directories and processes (the rest is in `crate::server_process`)

/// Makes `path` (created if missing) a directory the MariaDB server can write, e.g. for
/// [`Ledger::setup_with`]'s `DATA DIRECTORY`: owned by `mysql` when we are root, ancestors
/// traversable.
pub fn make_mariadb_dir(path: &Path) -> Result<(), String> {
    server_dir(path, mariadb_user()?, 0o750, false)
}

/// Removes `MYSQL*` and `MARIADB*` variables (MYSQL_HOST, MYSQL_UNIX_PORT, MYSQL_PWD, …)
/// so they cannot redirect a command.
fn clean_env(cmd: &mut Command) {
    remove_env_prefixed(cmd, &["MYSQL", "MARIADB"]);
}

fn quote_literal(s: &str) -> String {
    format!("'{}'", s.replace('\\', "\\\\").replace('\'', "''"))
}

/// How many undo tablespaces (`undo001`, `undo002`, …) `dir` holds.
fn count_undo_tablespaces(dir: &Path) -> u32 {
    fs::read_dir(dir)
        .map(|it| {
            it.flatten()
                .filter(|e| {
                    let n = e.file_name();
                    let n = n.to_string_lossy();
                    n.len() == 7
                        && n.starts_with("undo")
                        && n[4..].chars().all(|c| c.is_ascii_digit())
                })
                .count() as u32
        })
        .unwrap_or(0)
}

/// Whether a server greets on unix socket `sock` (protocol 10 handshake): it is up.
fn socket_greets(sock: &Path) -> bool {
    let Ok(mut s) = UnixStream::connect(sock) else {
        return false;
    };
    let _ = s.set_read_timeout(Some(Duration::from_secs(2)));
    let mut buf = [0u8; 5];
    // 3 bytes length, 1 byte sequence, then the protocol version (10) or 0xff (an error).
    s.read_exact(&mut buf).is_ok() && buf[4] == 10
}

// ---------------------------------------------------------------------------------------
// MariaDbInstance

/// How [`MariaDbInstance::init`] makes a server. All paths default to the instance's temp
/// dir; directories placed outside it are not removed on drop.
#[derive(Clone, Debug, Default)]
pub struct MariaDbOptions {
    /// The data directory (created; must be absent or empty). Default `<tempdir>/data`.
    pub data_dir: Option<PathBuf>,
    /// Where the binary logs and their index go (created; must be absent or empty).
    /// Default: the data directory, under the relative name [`BINLOG_BASENAME`] (so the
    /// index names `./mariadb-bin.000001` and a copy of the data directory is relocatable).
    /// Elsewhere, the index names the logs by absolute path.
    pub binlog_dir: Option<PathBuf>,
    /// `--skip-log-bin`: no binary log at all.
    pub skip_log_bin: bool,
    /// `--innodb-log-group-home-dir`: where the redo log `ib_logfile0` goes (created; must be
    /// absent or empty). Default: the data directory.
    pub innodb_log_dir: Option<PathBuf>,
    /// `--innodb-undo-directory` with [`UNDO_TABLESPACES`] undo tablespaces (created; must
    /// be absent or empty). Default: undo logs in the system tablespace `ibdata1`.
    pub undo_dir: Option<PathBuf>,
    /// Listen on a free 127.0.0.1 port as well ([`MariaDbInstance::port`]); default
    /// `--skip-networking` (the unix socket only).
    pub tcp: bool,
    /// `--server-id` (default 1).
    pub server_id: Option<u32>,
    /// Extra server settings, passed as `--name=value` to `mariadb-install-db` (for those
    /// fixed at creation, e.g. `innodb_page_size`) and to every start.
    pub settings: Vec<(String, String)>,
}

impl MariaDbOptions {
    pub fn new() -> MariaDbOptions {
        MariaDbOptions::default()
    }
    pub fn data_dir(mut self, path: impl Into<PathBuf>) -> MariaDbOptions {
        self.data_dir = Some(path.into());
        self
    }
    pub fn binlog_dir(mut self, path: impl Into<PathBuf>) -> MariaDbOptions {
        self.binlog_dir = Some(path.into());
        self
    }
    pub fn skip_log_bin(mut self) -> MariaDbOptions {
        self.skip_log_bin = true;
        self
    }
    pub fn innodb_log_dir(mut self, path: impl Into<PathBuf>) -> MariaDbOptions {
        self.innodb_log_dir = Some(path.into());
        self
    }
    pub fn undo_dir(mut self, path: impl Into<PathBuf>) -> MariaDbOptions {
        self.undo_dir = Some(path.into());
        self
    }
    pub fn tcp(mut self) -> MariaDbOptions {
        self.tcp = true;
        self
    }
    pub fn server_id(mut self, id: u32) -> MariaDbOptions {
        self.server_id = Some(id);
        self
    }
    pub fn setting(mut self, name: &str, value: &str) -> MariaDbOptions {
        self.settings.push((name.into(), value.into()));
        self
    }
}

/// How [`MariaDbInstance::adopt`] runs an existing data directory: the same options as
/// [`MariaDbOptions`], pointing at where the copy's pieces are.
#[derive(Clone, Debug, Default)]
pub struct AdoptOptions {
    /// Where the binary logs and their index are. Default: the data directory (relative
    /// names, as [`MariaDbOptions::binlog_dir`]'s default).
    pub binlog_dir: Option<PathBuf>,
    /// `--skip-log-bin`.
    pub skip_log_bin: bool,
    /// Rewrite the binlog index before the first start so that every entry names its file
    /// in the binlog dir. A copy of a server whose binary logs lived outside its data
    /// directory has an index naming the ORIGINAL's files by absolute path: started as is,
    /// the copy would read (binlog crash recovery) and could purge the original's logs.
    /// Off by default: the files of a copy are not changed unless asked.
    pub relocate_binlog_index: bool,
    /// Where the redo log is (`--innodb-log-group-home-dir`). Default: the data directory.
    pub innodb_log_dir: Option<PathBuf>,
    /// Where the undo tablespaces are (`--innodb-undo-directory`; their number is counted
    /// there). Default: the data directory.
    pub undo_dir: Option<PathBuf>,
    /// Listen on a free 127.0.0.1 port as well.
    pub tcp: bool,
    /// `--server-id` (default 1).
    pub server_id: Option<u32>,
    /// Extra settings of every start (`--name=value`).
    pub settings: Vec<(String, String)>,
    /// As root: chown the data, binlog, redo and undo directories to `mysql` first (and
    /// chmod the data dir 0700). Off by default: a restore that loses ownership should fail
    /// its test.
    pub fix_ownership: bool,
}

impl AdoptOptions {
    pub fn new() -> AdoptOptions {
        AdoptOptions::default()
    }
    pub fn binlog_dir(mut self, path: impl Into<PathBuf>) -> AdoptOptions {
        self.binlog_dir = Some(path.into());
        self
    }
    pub fn skip_log_bin(mut self) -> AdoptOptions {
        self.skip_log_bin = true;
        self
    }
    pub fn relocate_binlog_index(mut self) -> AdoptOptions {
        self.relocate_binlog_index = true;
        self
    }
    pub fn innodb_log_dir(mut self, path: impl Into<PathBuf>) -> AdoptOptions {
        self.innodb_log_dir = Some(path.into());
        self
    }
    pub fn undo_dir(mut self, path: impl Into<PathBuf>) -> AdoptOptions {
        self.undo_dir = Some(path.into());
        self
    }
    pub fn tcp(mut self) -> AdoptOptions {
        self.tcp = true;
        self
    }
    pub fn server_id(mut self, id: u32) -> AdoptOptions {
        self.server_id = Some(id);
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

/// A MariaDB server for a test; see the module docs.
#[derive(Debug)]
pub struct MariaDbInstance {
    run: tempfile::TempDir,
    data_dir: PathBuf,
    /// `None`: `--skip-log-bin`.
    binlog_dir: Option<PathBuf>,
    /// Whether the binlog dir is the data dir (relative `--log-bin`).
    binlog_in_data_dir: bool,
    innodb_log_dir: PathBuf,
    undo_dir: Option<PathBuf>,
    undo_tablespaces: u32,
    socket: PathBuf,
    pid_file: PathBuf,
    log_path: PathBuf,
    tmp_dir: PathBuf,
    port: Option<u16>,
    server_id: u32,
    user: Option<MariaDbUser>,
    settings: Vec<(String, String)>,
    /// The `mariadbd` we started, reaped by us.
    child: ServerChild,
    /// Whether this instance ever started a server: one that never did (an adoption
    /// refused because another server runs in the data directory) must not kill that
    /// server when it is killed or dropped.
    started: std::sync::atomic::AtomicBool,
}

impl MariaDbInstance {
    /// Makes a server (`mariadb-install-db`) and starts it; panics on failure. See
    /// [`MariaDbOptions`].
    pub fn init(opts: MariaDbOptions) -> MariaDbInstance {
        MariaDbInstance::try_init(opts)
            .unwrap_or_else(|e| panic!("cannot make a MariaDB instance: {e}"))
    }

    /// [`MariaDbInstance::init`] returning errors.
    pub fn try_init(opts: MariaDbOptions) -> Result<MariaDbInstance, String> {
        if let Some(why) = mariadb_unavailable() {
            return Err(why);
        }
        let user = mariadb_user()?;
        let mut m = MariaDbInstance::with_run_dir(user, opts.tcp, opts.server_id)?;
        let run = m.run.path().to_path_buf();

        let data_dir = opts.data_dir.clone().unwrap_or_else(|| run.join("data"));
        server_dir(&data_dir, user, 0o700, true)?;
        m.data_dir = canonical(&data_dir);
        m.innodb_log_dir = m.data_dir.clone();
        if let Some(d) = &opts.innodb_log_dir {
            server_dir(d, user, 0o750, true)?;
            m.innodb_log_dir = canonical(d);
        }
        if let Some(d) = &opts.undo_dir {
            server_dir(d, user, 0o750, true)?;
            m.undo_dir = Some(canonical(d));
            m.undo_tablespaces = UNDO_TABLESPACES;
        }
        if !opts.skip_log_bin {
            match &opts.binlog_dir {
                Some(d) => {
                    server_dir(d, user, 0o750, true)?;
                    m.binlog_dir = Some(canonical(d));
                    m.binlog_in_data_dir = false;
                }
                None => {
                    m.binlog_dir = Some(m.data_dir.clone());
                    m.binlog_in_data_dir = true;
                }
            }
        }
        m.settings = opts.settings;

        let mut install = m.command("mariadb-install-db");
        // --no-defaults must come first.
        install
            .arg("--no-defaults")
            .arg(format!("--datadir={}", m.data_dir.display()))
            .arg(format!("--tmpdir={}", m.tmp_dir.display()))
            .args(["--auth-root-authentication-method=normal", "--skip-test-db"])
            .args(m.innodb_args())
            .args(m.settings_args())
            .stdin(Stdio::null());
        output_of(&mut install)?;

        m.try_start()?;
        Ok(m)
    }

    /// A server over an existing data directory (e.g. a restored copy), with its own socket,
    /// pid file and log in a new temp dir. It is NOT started: call
    /// [`MariaDbInstance::start`] or [`MariaDbInstance::try_start`]. Drop stops it and
    /// removes the temp dir, not the data directory. Panics on failure.
    pub fn adopt(data_dir: impl AsRef<Path>, opts: AdoptOptions) -> MariaDbInstance {
        MariaDbInstance::try_adopt(data_dir.as_ref(), opts)
            .unwrap_or_else(|e| panic!("cannot adopt a MariaDB data directory: {e}"))
    }

    /// [`MariaDbInstance::adopt`] returning errors.
    pub fn try_adopt(data_dir: &Path, opts: AdoptOptions) -> Result<MariaDbInstance, String> {
        if let Some(why) = mariadb_unavailable() {
            return Err(why);
        }
        let user = mariadb_user()?;
        if !data_dir.join("mysql").is_dir() {
            return Err(format!(
                "{} is not a MariaDB data directory (no mysql/)",
                data_dir.display()
            ));
        }
        let mut m = MariaDbInstance::with_run_dir(user, opts.tcp, opts.server_id)?;
        m.data_dir = canonical(data_dir);
        m.innodb_log_dir = opts
            .innodb_log_dir
            .as_deref()
            .map(canonical)
            .unwrap_or_else(|| m.data_dir.clone());
        m.undo_dir = opts.undo_dir.as_deref().map(canonical);
        m.undo_tablespaces = count_undo_tablespaces(m.undo_dir.as_deref().unwrap_or(&m.data_dir));
        if !opts.skip_log_bin {
            match &opts.binlog_dir {
                Some(d) => {
                    m.binlog_dir = Some(canonical(d));
                    m.binlog_in_data_dir = false;
                }
                None => {
                    m.binlog_dir = Some(m.data_dir.clone());
                    m.binlog_in_data_dir = true;
                }
            }
        }
        m.settings = opts.settings;

        let mut dirs = vec![m.data_dir.clone(), m.innodb_log_dir.clone()];
        dirs.extend(m.undo_dir.clone());
        dirs.extend(m.binlog_dir.clone());
        if let (true, Some(u)) = (opts.fix_ownership, user) {
            for d in &dirs {
                chown_tree(d, u)?;
            }
        }
        if opts.fix_ownership {
            chmod(&m.data_dir, 0o700)?;
        }
        for d in &dirs {
            make_traversable(d, user)?;
        }
        if opts.relocate_binlog_index {
            m.relocate_binlog_index()?;
        }
        Ok(m)
    }

    /// Rewrites the binlog index so that each entry names its file in the binlog dir
    /// (relative `./name` when that is the data dir). See
    /// [`AdoptOptions::relocate_binlog_index`].
    fn relocate_binlog_index(&self) -> Result<(), String> {
        let Some(index) = self.binlog_index() else {
            return Ok(());
        };
        let Some(dir) = &self.binlog_dir else {
            return Ok(());
        };
        let text = match fs::read_to_string(&index) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
            Err(e) => return Err(format!("cannot read {}: {e}", index.display())),
        };
        let mut out = String::new();
        for line in text.lines().filter(|l| !l.trim().is_empty()) {
            let name = Path::new(line)
                .file_name()
                .ok_or_else(|| format!("bad binlog index line {line:?} in {}", index.display()))?;
            if self.binlog_in_data_dir {
                out.push_str(&format!("./{}\n", name.to_string_lossy()));
            } else {
                out.push_str(&format!("{}\n", dir.join(name).display()));
            }
        }
        if out != text {
            // Written in place: keeps the file's owner and mode.
            fs::write(&index, out).map_err(|e| format!("cannot write {}: {e}", index.display()))?;
        }
        Ok(())
    }

    /// The temp dir (socket, pid file, log) and an instance around it, not yet pointing at a
    /// data directory.
    fn with_run_dir(
        user: Option<MariaDbUser>,
        tcp: bool,
        server_id: Option<u32>,
    ) -> Result<MariaDbInstance, String> {
        let run = tempfile::Builder::new()
            .prefix("shadowcopy-mariadb-")
            .tempdir()
            .map_err(|e| format!("cannot create a temp dir: {e}"))?;
        let root = canonical(run.path());
        server_dir(&root, user, 0o700, false)?;
        // The server (as `mysql`) reopens its --log-error file: it must be able to.
        let log_path = root.join("error.log");
        fs::File::create(&log_path)
            .map_err(|e| format!("cannot create {}: {e}", log_path.display()))?;
        if let Some(u) = user {
            chown(&log_path, u)?;
        }
        // A private --tmpdir: servers (and bootstraps) running side by side in one /tmp
        // were seen to trip over each other's Aria temp tables.
        let tmp_dir = root.join("tmp");
        server_dir(&tmp_dir, user, 0o700, true)?;
        Ok(MariaDbInstance {
            run,
            data_dir: root.join("data"),
            binlog_dir: None,
            binlog_in_data_dir: true,
            innodb_log_dir: root.join("data"),
            undo_dir: None,
            undo_tablespaces: 0,
            socket: root.join("mariadbd.sock"),
            tmp_dir,
            pid_file: root.join("mariadbd.pid"),
            log_path,
            port: tcp.then(free_port),
            server_id: server_id.unwrap_or(1),
            user,
            settings: Vec::new(),
            child: ServerChild::default(),
            started: std::sync::atomic::AtomicBool::new(false),
        })
    }

    /// A command running MariaDB program `name` as the server user (`mysql` when we are
    /// root), in the instance's temp dir, without `MYSQL*`/`MARIADB*` environment variables.
    /// Remember `--no-defaults` (first) for programs that read option files.
    pub fn command(&self, name: &str) -> Command {
        let mut cmd = Command::new(mariadb_bin(name));
        if let Some(u) = self.user {
            cmd.uid(u.uid).gid(u.gid);
        }
        cmd.current_dir(self.run.path());
        clean_env(&mut cmd);
        cmd
    }

    fn innodb_args(&self) -> Vec<String> {
        let mut args = Vec::new();
        if self.innodb_log_dir != self.data_dir {
            args.push(format!(
                "--innodb-log-group-home-dir={}",
                self.innodb_log_dir.display()
            ));
        }
        if let Some(d) = &self.undo_dir {
            args.push(format!("--innodb-undo-directory={}", d.display()));
        }
        if self.undo_tablespaces > 0 {
            args.push(format!(
                "--innodb-undo-tablespaces={}",
                self.undo_tablespaces
            ));
        }
        args
    }

    fn settings_args(&self) -> Vec<String> {
        DEFAULT_SETTINGS
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .chain(self.settings.iter().cloned())
            .map(|(k, v)| format!("--{k}={v}"))
            .collect()
    }

    /// The arguments `mariadbd` is started with (`--no-defaults` first).
    pub fn server_args(&self) -> Vec<String> {
        let mut args = vec![
            "--no-defaults".to_string(),
            format!("--datadir={}", self.data_dir.display()),
            format!("--socket={}", self.socket.display()),
            format!("--pid-file={}", self.pid_file.display()),
            format!("--log-error={}", self.log_path.display()),
            format!("--tmpdir={}", self.tmp_dir.display()),
            format!("--server-id={}", self.server_id),
        ];
        match self.port {
            None => args.push("--skip-networking".into()),
            Some(p) => {
                args.push(format!("--port={p}"));
                args.push("--bind-address=127.0.0.1".into());
            }
        }
        match (&self.binlog_dir, self.binlog_in_data_dir) {
            (None, _) => args.push("--skip-log-bin".into()),
            (Some(d), in_data) => {
                let base = if in_data {
                    PathBuf::from(BINLOG_BASENAME)
                } else {
                    d.join(BINLOG_BASENAME)
                };
                args.push(format!("--log-bin={}", base.display()));
                args.push(format!("--log-bin-index={}.index", base.display()));
                args.push("--binlog-format=ROW".into());
                args.push("--sync-binlog=1".into());
            }
        }
        args.push("--innodb-flush-log-at-trx-commit=1".into());
        args.extend(self.innodb_args());
        args.extend(self.settings_args());
        args
    }

    pub fn data_dir(&self) -> &Path {
        &self.data_dir
    }

    /// Where the binary logs and their index are (`None`: `--skip-log-bin`).
    pub fn binlog_dir(&self) -> Option<&Path> {
        self.binlog_dir.as_deref()
    }

    /// The binlog index file (`<binlog dir>/mariadb-bin.index`).
    pub fn binlog_index(&self) -> Option<PathBuf> {
        self.binlog_dir
            .as_ref()
            .map(|d| d.join(format!("{BINLOG_BASENAME}.index")))
    }

    /// Where the redo log `ib_logfile0` is (the data dir unless moved).
    pub fn innodb_log_dir(&self) -> &Path {
        &self.innodb_log_dir
    }

    /// Where the undo tablespaces are, when moved out of the data dir.
    pub fn undo_dir(&self) -> Option<&Path> {
        self.undo_dir.as_deref()
    }

    /// The server's unix socket.
    pub fn socket(&self) -> &Path {
        &self.socket
    }

    /// The TCP port on 127.0.0.1, when [`MariaDbOptions::tcp`] asked for one.
    pub fn port(&self) -> Option<u16> {
        self.port
    }

    pub fn server_id(&self) -> u32 {
        self.server_id
    }

    /// The instance's temp dir (socket, pid file, log; data by default). Removed on drop.
    pub fn run_dir(&self) -> &Path {
        self.run.path()
    }

    /// The user the server runs as (`None`: ourselves).
    pub fn user(&self) -> Option<MariaDbUser> {
        self.user
    }

    /// `mysql://root@localhost/?socket=<socket>` (the `mysql` crate's URL form).
    pub fn url(&self) -> String {
        format!("mysql://root@localhost/?socket={}", self.socket.display())
    }

    /// Connection settings for the `mysql` crate: root over the unix socket, no database.
    pub fn opts(&self) -> Opts {
        OptsBuilder::new()
            .user(Some("root"))
            .socket(Some(self.socket.to_string_lossy()))
            .into()
    }

    /// A new connection; panics (with the server log) on failure.
    pub fn connect(&self) -> Conn {
        Conn::new(self.opts()).unwrap_or_else(|e| {
            panic!(
                "cannot connect to {}: {e}\nserver log:\n{}",
                self.url(),
                self.log()
            )
        })
    }

    /// Runs `sql` with `mariadb --no-defaults -N -B` as root over the socket; returns
    /// trimmed stdout (rows on lines, columns separated by tabs).
    pub fn try_sql(&self, sql: &str) -> Result<String, String> {
        let mut cmd = Command::new(mariadb_bin("mariadb"));
        clean_env(&mut cmd);
        cmd.arg("--no-defaults")
            .arg("-S")
            .arg(&self.socket)
            .args(["-u", "root", "-N", "-B", "-e", sql])
            .stdin(Stdio::null());
        let out = cmd
            .output()
            .map_err(|e| format!("cannot run mariadb: {e}"))?;
        if out.status.success() {
            Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
        } else {
            Err(format!(
                "mariadb {sql:?} failed ({}): {}",
                out.status,
                String::from_utf8_lossy(&out.stderr).trim()
            ))
        }
    }

    /// [`MariaDbInstance::try_sql`], panicking with the client's stderr on failure.
    pub fn sql(&self, sql: &str) -> String {
        self.try_sql(sql).unwrap_or_else(|e| panic!("{e}"))
    }

    /// The server's error log (every start appends to it).
    pub fn log(&self) -> String {
        read_log(&self.log_path)
    }

    /// The live server's pid: ours, or the one our pid file names if it runs in our data
    /// directory.
    pub fn server_pid(&self) -> Option<u32> {
        self.child.live_pid(&self.data_dir, || {
            fs::read_to_string(&self.pid_file).ok()?.trim().parse().ok()
        })
    }

    pub fn is_running(&self) -> bool {
        self.server_pid().is_some()
    }

    /// Starts `mariadbd` with [`MariaDbInstance::server_args`] and waits until its socket
    /// greets (after InnoDB and binlog crash recovery).
    pub fn try_start(&self) -> Result<(), String> {
        if let Some(pid) = self.server_pid() {
            return Err(format!("the server is already running (pid {pid})"));
        }
        // Another server on this data directory (the original of an adopted copy started in
        // place): InnoDB would retry its ibdata1 lock for 100 s before giving up.
        let others = processes_in(&self.data_dir);
        if !others.is_empty() {
            return Err(format!(
                "processes {others:?} already run in {}",
                self.data_dir.display()
            ));
        }
        // A socket left by a killed server: mariadbd replaces it, but we must not take it
        // for the new server's.
        let _ = fs::remove_file(&self.socket);
        let (log, log2) = open_log(&self.log_path)?;
        let mut cmd = self.command("mariadbd");
        cmd.args(self.server_args())
            .stdin(Stdio::null())
            .stdout(log2)
            .stderr(log);
        let child = cmd
            .spawn()
            .map_err(|e| format!("cannot start {cmd:?}: {e}"))?;
        self.child.set(child);
        self.started
            .store(true, std::sync::atomic::Ordering::Relaxed);
        self.child
            .wait_ready(
                "mariadbd",
                START_TIMEOUT,
                || socket_greets(&self.socket),
                || self.kill9(),
            )
            .map_err(|e| format!("{e}; server log:\n{}", self.log()))
    }

    /// [`MariaDbInstance::try_start`], panicking on failure.
    pub fn start(&self) {
        self.try_start()
            .unwrap_or_else(|e| panic!("cannot start MariaDB: {e}"));
    }

    /// Sends `sig` to the server and waits up to `timeout` for it to exit. Ok when no server
    /// runs (any more).
    fn signal_and_wait(&self, sig: Signal, timeout: Duration) -> Result<(), String> {
        self.child
            .signal_and_wait(self.server_pid(), sig, timeout, "mariadbd")
    }

    /// Clean shutdown (SIGTERM, as `mariadb-admin shutdown`: connections are ended, InnoDB
    /// flushes, the binlog is closed); waits for it.
    pub fn stop(&self) {
        if let Err(e) = self.signal_and_wait(Signal::TERM, STOP_TIMEOUT) {
            panic!("{e}; server log:\n{}", self.log());
        }
    }

    /// A crash: SIGKILL to the server, then to any process left in the data directory.
    /// InnoDB and binlog crash recovery run at the next start. Returns when none is left.
    pub fn kill9(&self) {
        // Before the first start, processes in the data directory are not ours to kill.
        let started = self.started.load(std::sync::atomic::Ordering::Relaxed);
        self.child.crash(
            self.server_pid(),
            started.then_some(self.data_dir.as_path()),
            "MariaDbInstance",
        );
    }
}

impl Drop for MariaDbInstance {
    fn drop(&mut self) {
        if self.is_running() {
            if let Err(e) = self.signal_and_wait(Signal::TERM, DROP_GRACE) {
                eprintln!("MariaDbInstance drop: {e}; killing it");
            }
        }
        self.kill9();
        // The temp dir (socket, log, default data dir) goes with `self.run`.
    }
}

// ---------------------------------------------------------------------------------------
// Ledger

/// A load with an invariant on MariaDB, the same as the PostgreSQL one
/// ([`crate::postgres::Ledger`]): the [`crate::ledger`] load (what its writers do, the
/// invariants any consistent state keeps) on InnoDB tables `accounts`, `ledger` (an
/// AUTO_INCREMENT id) and `ledger_meta` in database [`LEDGER_DATABASE`]. With
/// [`Ledger::setup_with`]'s `DATA DIRECTORY` the fee invariant spans two directories. What
/// the writers acknowledged is read through [`LedgerRun`] (`Deref`); [`Ledger::stop`]
/// stops them and reports.
pub struct Ledger(LedgerRun);

impl std::ops::Deref for Ledger {
    type Target = LedgerRun;
    fn deref(&self) -> &LedgerRun {
        &self.0
    }
}

struct WriterConn {
    conn: Conn,
    accounts: i32,
}

fn writer_connect(opts: &Opts) -> Result<WriterConn, mysql::Error> {
    let mut conn = Conn::new(OptsBuilder::from_opts(opts.clone()).db_name(Some(LEDGER_DATABASE)))?;
    let accounts: Option<i64> = conn.query_first("SELECT accounts FROM ledger_meta")?;
    Ok(WriterConn {
        conn,
        accounts: accounts.unwrap_or(0) as i32,
    })
}

impl LedgerConn for WriterConn {
    type Error = mysql::Error;

    fn accounts(&self) -> i32 {
        self.accounts
    }

    fn transfer(&mut self, t: &Transfer) -> Result<i64, mysql::Error> {
        let mut tx = self.conn.start_transaction(TxOpts::default())?;
        let debit_credit = "UPDATE accounts SET balance = balance + ? WHERE id = ?";
        tx.exec_drop(debit_credit, (t.lo_delta, t.lo))?;
        tx.exec_drop(debit_credit, (t.hi_delta, t.hi))?;
        tx.exec_drop(
            "INSERT INTO accounts (id, balance) VALUES (?, 1) \
             ON DUPLICATE KEY UPDATE balance = balance + 1",
            (t.fee_account,),
        )?;
        tx.exec_drop(
            "INSERT INTO ledger (writer, seq, amount) VALUES (?, ?, ?)",
            (t.writer, t.seq, t.amount),
        )?;
        let id = tx.last_insert_id().unwrap_or(0) as i64;
        tx.commit()?;
        Ok(id)
    }
}

impl Ledger {
    /// Creates database [`LEDGER_DATABASE`] with `accounts`, `ledger` and `ledger_meta`
    /// (InnoDB) and [`LEDGER_ACCOUNTS`] accounts.
    pub fn setup(conn: &mut Conn) -> Result<(), mysql::Error> {
        Ledger::setup_with(conn, LEDGER_ACCOUNTS, None)
    }

    /// [`Ledger::setup`] with `accounts` accounts, and the `ledger` table (not `accounts`)
    /// in `data_directory` if given (`DATA DIRECTORY`: its `.ibd` file goes to
    /// `<data_directory>/shadowcopy/ledger.ibd`, an `.isl` link in the data dir names it):
    /// the fee invariant then spans two directories. The directory must exist and be
    /// writable by the server ([`make_mariadb_dir`]).
    pub fn setup_with(
        conn: &mut Conn,
        accounts: i64,
        data_directory: Option<&Path>,
    ) -> Result<(), mysql::Error> {
        assert!(accounts >= 2, "a ledger needs at least two accounts");
        let db = LEDGER_DATABASE;
        let dd = data_directory
            .map(|d| format!(" DATA DIRECTORY = {}", quote_literal(&d.to_string_lossy())))
            .unwrap_or_default();
        // DDL commits implicitly in MariaDB: the tables first, the rows in one transaction.
        conn.query_drop(format!("CREATE DATABASE {db}"))?;
        conn.query_drop(format!(
            "CREATE TABLE {db}.accounts (id INT PRIMARY KEY, balance BIGINT NOT NULL) \
             ENGINE=InnoDB"
        ))?;
        conn.query_drop(format!(
            "CREATE TABLE {db}.ledger (id BIGINT NOT NULL AUTO_INCREMENT PRIMARY KEY, \
             writer INT NOT NULL, seq BIGINT NOT NULL, amount BIGINT NOT NULL, \
             at TIMESTAMP(6) NOT NULL DEFAULT CURRENT_TIMESTAMP(6)) ENGINE=InnoDB{dd}"
        ))?;
        conn.query_drop(format!(
            "CREATE TABLE {db}.ledger_meta (accounts BIGINT NOT NULL, \
             expected_total BIGINT NOT NULL) ENGINE=InnoDB"
        ))?;
        let mut tx = conn.start_transaction(TxOpts::default())?;
        for chunk in (1..=accounts).collect::<Vec<_>>().chunks(1_000) {
            let values: Vec<String> = chunk
                .iter()
                .map(|id| format!("({id}, {LEDGER_INITIAL_BALANCE})"))
                .collect();
            tx.query_drop(format!(
                "INSERT INTO {db}.accounts (id, balance) VALUES {}",
                values.join(", ")
            ))?;
        }
        tx.query_drop(format!(
            "INSERT INTO {db}.ledger_meta VALUES ({accounts}, {})",
            accounts * LEDGER_INITIAL_BALANCE
        ))?;
        tx.commit()
    }

    /// Starts `writers` writer threads against `opts` (e.g. [`MariaDbInstance::opts`]; the
    /// database is set to [`LEDGER_DATABASE`]), each pausing `pause` between transactions
    /// (zero: as fast as possible).
    pub fn start(opts: &Opts, writers: usize, pause: Duration) -> Ledger {
        let opts = opts.clone();
        Ledger(LedgerRun::start(
            "mariadb-ledger",
            writers,
            pause,
            move || writer_connect(&opts),
        ))
    }

    /// Stops the writers and reports: [`LedgerRun::stop`].
    pub fn stop(self) -> LedgerStats {
        self.0.stop()
    }

    /// Reads the ledger's state in one REPEATABLE READ, read-only transaction WITH
    /// CONSISTENT SNAPSHOT (consistent while writers run). `conn` may have any default
    /// database.
    pub fn check(conn: &mut Conn) -> Result<LedgerState, mysql::Error> {
        let db = LEDGER_DATABASE;
        let mut tx = conn.start_transaction(
            TxOpts::default()
                .set_isolation_level(Some(mysql::IsolationLevel::RepeatableRead))
                .set_access_mode(Some(mysql::AccessMode::ReadOnly))
                .set_with_consistent_snapshot(true),
        )?;
        let ids: Vec<i64> = tx.query(format!("SELECT id FROM {db}.ledger ORDER BY id"))?;
        let (accounts, total_balance, fees): (i64, i64, i64) = tx
            .query_first(format!(
                "SELECT COUNT(CASE WHEN id > 0 THEN 1 END), \
                        CAST(COALESCE(SUM(balance), 0) AS SIGNED), \
                        CAST(COALESCE(SUM(CASE WHEN id < 0 THEN balance END), 0) AS SIGNED) \
                   FROM {db}.accounts"
            ))?
            .unwrap_or_default();
        let (expected_accounts, expected_total): (i64, i64) = tx
            .query_first(format!(
                "SELECT accounts, expected_total FROM {db}.ledger_meta"
            ))?
            .unwrap_or_default();
        tx.commit()?;
        Ok(LedgerState {
            ids,
            accounts,
            expected_accounts,
            total_balance,
            expected_total,
            fees,
        })
    }
}
