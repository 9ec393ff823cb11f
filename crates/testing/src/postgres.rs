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
//! The user, directory and process handling is [`crate::server_process`]'s, shared with the
//! MariaDB starter.
//!
//! Without the PostgreSQL binaries, [`postgres_or_skip`] prints why a test skips and
//! returns `None` — unless `SHADOWCOPY_TEST_REQUIRE_ROOT=1` ([`REQUIRE_ROOT_ENV`]), under
//! which a skip is a failure.

use std::fs;
use std::io::Write;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::OnceLock;
use std::time::Duration;

use postgres::{Client, NoTls};
use rustix::process::Signal;

pub use crate::bank::Ack;
pub use crate::ledger::{
    error_chain, LedgerRun, LedgerState, LedgerStats, LEDGER_ACCOUNTS, LEDGER_INITIAL_BALANCE,
};
use crate::ledger::{LedgerConn, Transfer};
pub use crate::loopfs::REQUIRE_ROOT_ENV;
pub use crate::server_process::processes_in;
use crate::server_process::{
    canonical, chmod, chown_tree, free_port, make_traversable, open_log, output_of, read_log,
    remove_env_prefixed, server_dir, server_user, skip, ServerChild, ServerUser,
};

/// The user and group PostgreSQL runs as (see [`ServerUser`]).
pub type PgUser = ServerUser;

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

/// `Ok(Some(postgres))` as root, `Ok(None)` otherwise; an error when root has no
/// `postgres` user to run the server as.
pub fn pg_user() -> Result<Option<PgUser>, String> {
    server_user("postgres", "PostgreSQL", "PostgreSQL")
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
// Directories and commands

/// Makes `path` (created if missing) a directory the PostgreSQL server can write, e.g. a WAL
/// archive for `archive_command`: owned by `postgres` when we are root, ancestors traversable.
pub fn make_postgres_dir(path: &Path) -> Result<(), String> {
    server_dir(path, pg_user()?, 0o700, false)
}

/// Removes `PG*` variables (PGHOST, PGPORT, PGDATA, …) so they cannot redirect a command.
pub(crate) fn clean_env(cmd: &mut Command) {
    remove_env_prefixed(cmd, &["PG"]);
}

fn quote_literal(s: &str) -> String {
    format!("'{}'", s.replace('\'', "''"))
}

fn quote_ident(s: &str) -> String {
    format!("\"{}\"", s.replace('"', "\"\""))
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
        self.child.live_pid(&self.data_dir, || {
            let text = fs::read_to_string(self.data_dir.join("postmaster.pid")).ok()?;
            text.lines().next()?.trim().parse().ok()
        })
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
        self.child
            .signal_and_wait(self.postmaster_pid(), sig, timeout, "postgres")
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
        self.child
            .crash(self.postmaster_pid(), Some(&self.data_dir), "PgCluster");
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
