//! Every writer kind passes the writer conformance suite against a live instance of its
//! application: SQLite in both journal modes, an exec hook guarding a small application,
//! fsfreeze on a loop-device file system, a PostgreSQL cluster and a MariaDB server
//! (from the testing starters; they skip without the server, and fail instead under
//! `SHADOWCOPY_TEST_REQUIRE_ROOT=1`). A kind in the registry without a suite run here
//! fails [`every_registered_kind_runs_the_suite`].

use std::any::Any;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use shadowcopy_core::model::CopyView;
use shadowcopy_core::Writer;
use shadowcopy_testing::loopfs::{loopfs_or_skip, FsKind, LoopFs};
use shadowcopy_testing::mariadb::{mariadb_bin, mariadb_or_skip, MariaDbInstance};
use shadowcopy_testing::postgres::{postgres_or_skip, PgCluster, PgOptions};
use shadowcopy_testing::writer_suite::{self, Application};
use shadowcopy_writers::exec::{ExecOptions, ExecWriter};
use shadowcopy_writers::fsfreeze::{FsfreezeOptions, FsfreezeWriter};
use shadowcopy_writers::sqlite::{SqliteOptions, SqliteWriter};
use shadowcopy_writers::{SetContext, KINDS};

use crate::support::Env;

/// The kinds whose suite runs in this module: one entry per test below.
const SUITE_RUNS_FOR: &[&str] = &["sqlite", "exec", "fsfreeze", "postgres", "mariadb"];

#[test]
fn every_registered_kind_runs_the_suite() {
    let mut registered: Vec<&str> = KINDS.iter().map(|k| k.name).collect();
    let mut tested = SUITE_RUNS_FOR.to_vec();
    registered.sort_unstable();
    tested.sort_unstable();
    assert_eq!(
        registered, tested,
        "every writer kind in the registry runs the writer conformance suite here: add a \
         test calling writer_suite::run_all for the new kind, and its name to SUITE_RUNS_FOR"
    );
}

/// Overwrites the start of `path` (a file header, a control block) with garbage.
fn overwrite_start(path: &Path) {
    use std::os::unix::fs::FileExt;
    let f = std::fs::OpenOptions::new().write(true).open(path).unwrap();
    f.write_all_at(&[0xEE; 512], 0).unwrap();
}

/// The copy of `original` in `copy`; panics when the copy lacks it.
fn in_copy<'a>(copy: &'a CopyView, original: &Path) -> &'a Path {
    copy.path_of(original)
        .unwrap_or_else(|| panic!("the copy holds no {}", original.display()))
}

struct SqliteApp {
    db: PathBuf,
}

impl SqliteApp {
    fn connect(&self) -> rusqlite::Connection {
        let conn = rusqlite::Connection::open(&self.db).unwrap();
        conn.busy_timeout(Duration::from_secs(30)).unwrap();
        conn
    }
}

impl Application for SqliteApp {
    fn writer(&self) -> Box<dyn Writer> {
        Box::new(SqliteWriter::new(SqliteOptions {
            path: self.db.clone(),
        }))
    }

    fn write(&self) -> Result<(), String> {
        self.connect()
            .execute_batch(
                "BEGIN IMMEDIATE; UPDATE accounts SET balance = balance + 0 WHERE id = 1; COMMIT;",
            )
            .map_err(|e| e.to_string())
    }

    fn damage(&self, copy: &CopyView) {
        overwrite_start(in_copy(copy, &self.db));
    }

    /// Another connection holds the write lock (a long write transaction).
    fn block_freeze(&self) -> Option<Box<dyn Any>> {
        let conn = self.connect();
        conn.execute_batch("BEGIN IMMEDIATE").unwrap();
        Some(Box::new(conn))
    }
}

#[test]
fn sqlite_wal_passes_the_writer_suite() {
    let env = Env::new(true, None);
    writer_suite::run_all(&SqliteApp { db: env.db.clone() });
}

#[test]
fn sqlite_rollback_journal_passes_the_writer_suite() {
    let env = Env::new(false, None);
    writer_suite::run_all(&SqliteApp { db: env.db.clone() });
}

/// Removes a file when dropped.
struct FileFlag(PathBuf);

impl FileFlag {
    fn raise(path: PathBuf) -> FileFlag {
        std::fs::write(&path, b"").unwrap();
        FileFlag(path)
    }
}

impl Drop for FileFlag {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// A small application that honours its hook: its writes wait while the hook's
/// `frozen` flag exists. The hook's freeze waits while a `block` flag exists.
struct HookedApp {
    dir: tempfile::TempDir,
}

const HOOK: &str = r#"#!/bin/bash
dir=$(dirname "$0")
case "$1" in
  freeze)
    while [ -e "$dir/block" ]; do sleep 0.02; done
    : > "$dir/frozen" ;;
  thaw) rm -f "$dir/frozen" ;;
esac
exit 0
"#;

impl HookedApp {
    fn new() -> HookedApp {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let hook = dir.path().join("hook");
        std::fs::write(&hook, HOOK).unwrap();
        std::fs::set_permissions(&hook, std::fs::Permissions::from_mode(0o755)).unwrap();
        HookedApp { dir }
    }
}

impl Application for HookedApp {
    fn writer(&self) -> Box<dyn Writer> {
        Box::new(ExecWriter::new(
            ExecOptions {
                script: self.dir.path().join("hook"),
                timeout: None,
                events: None,
            },
            SetContext {
                set_name: "hooked".into(),
                data_paths: vec![self.dir.path().join("data")],
            },
        ))
    }

    fn write(&self) -> Result<(), String> {
        use std::io::Write;
        let began = Instant::now();
        while self.dir.path().join("frozen").exists() {
            if began.elapsed() > Duration::from_secs(30) {
                return Err("still frozen after 30 s".into());
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        let mut f = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.path().join("data"))
            .map_err(|e| e.to_string())?;
        f.write_all(b"x\n").map_err(|e| e.to_string())
    }

    fn damage(&self, _copy: &CopyView) {
        unreachable!("a hook has no check of its own")
    }

    fn checks_copies(&self) -> bool {
        false
    }

    /// The hook's `freeze` does not return.
    fn block_freeze(&self) -> Option<Box<dyn Any>> {
        Some(Box::new(FileFlag::raise(self.dir.path().join("block"))))
    }
}

#[test]
fn exec_passes_the_writer_suite() {
    writer_suite::run_all(&HookedApp::new());
}

/// Files on a loop-device file system that `fsfreeze` freezes.
struct FrozenFsApp {
    data: PathBuf,
}

impl Application for FrozenFsApp {
    fn writer(&self) -> Box<dyn Writer> {
        Box::new(FsfreezeWriter::new(FsfreezeOptions {
            paths: vec![self.data.clone()],
        }))
    }

    fn write(&self) -> Result<(), String> {
        use std::io::Write;
        let mut f = std::fs::OpenOptions::new()
            .append(true)
            .open(self.data.join("file"))
            .map_err(|e| e.to_string())?;
        f.write_all(b"x\n").map_err(|e| e.to_string())
    }

    fn damage(&self, _copy: &CopyView) {
        unreachable!("a crash-consistent copy has no application check")
    }

    fn checks_copies(&self) -> bool {
        false
    }

    /// Not in the suite: a FIFREEZE that waits (for writeback to a stalled device) sleeps
    /// uninterruptibly, so `fsfreeze -f` cannot be killed at the deadline and the writer
    /// waits until the device moves again; see
    /// `fsfreeze_a_freeze_stuck_in_the_kernel_fails_and_the_thaw_still_thaws`.
    fn block_freeze(&self) -> Option<Box<dyn Any>> {
        None
    }
}

#[test]
fn fsfreeze_passes_the_writer_suite() {
    let Some(fs) = loopfs_or_skip("fsfreeze_passes_the_writer_suite", FsKind::Ext4, 16 << 20)
    else {
        return;
    };
    let data = fs.mount.join("data");
    std::fs::create_dir(&data).unwrap();
    std::fs::write(data.join("file"), b"start\n").unwrap();
    writer_suite::run_all(&FrozenFsApp { data });
}

/// The deadline rule for fsfreeze, as far as the kernel allows: the file system's
/// device sits on another file system that is frozen, so FIFREEZE waits for writeback
/// that cannot happen, in an uninterruptible sleep. `fsfreeze -f` is killed at the
/// deadline but only dies when its ioctl returns, with the file system frozen; the
/// watchdog's `fsfreeze -u` (after deadline + grace + its wait for the freeze command)
/// waits in the kernel for that freeze and undoes it. The freeze fails, and the file
/// system is writable after the thaw.
///
/// Known contract violation, not asserted here (so not in the suite's deadline rule):
/// the freeze returns only when the device moves again ([`STALL`] here), long past its
/// deadline, because `process::run` waits for the killed command to exit.
#[test]
fn fsfreeze_a_freeze_stuck_in_the_kernel_fails_and_the_thaw_still_thaws() {
    const TEST: &str = "fsfreeze_a_freeze_stuck_in_the_kernel_fails_and_the_thaw_still_thaws";
    const STALL: Duration = Duration::from_secs(8);
    let Some(outer) = loopfs_or_skip(TEST, FsKind::Ext4, 96 << 20) else {
        return;
    };
    let inner = LoopFs::new_in(FsKind::Ext4, 32 << 20, &outer.mount).unwrap();
    let app = FrozenFsApp {
        data: inner.mount.join("data"),
    };
    std::fs::create_dir(&app.data).unwrap();
    // Dirty pages the freeze must write back through the stalled device.
    std::fs::write(app.data.join("file"), vec![7u8; 4 << 20]).unwrap();

    let mut w = app.writer();
    w.identify().unwrap();
    w.prepare().unwrap();
    let stall = Command::new("fsfreeze")
        .arg("-f")
        .arg(&outer.mount)
        .status()
        .unwrap();
    assert!(stall.success());
    let thaw_outer = {
        let mount = outer.mount.clone();
        std::thread::spawn(move || {
            std::thread::sleep(STALL);
            Command::new("fsfreeze").arg("-u").arg(&mount).status()
        })
    };
    let began = Instant::now();
    let result = w.freeze(began + Duration::from_millis(500));
    eprintln!("the stuck freeze returned after {:?}", began.elapsed());
    assert!(thaw_outer.join().unwrap().unwrap().success());
    assert!(result.is_err(), "a freeze past its deadline fails");
    w.thaw().expect("thaw");
    std::thread::scope(|scope| {
        let (tx, rx) = std::sync::mpsc::channel();
        let app = &app;
        scope.spawn(move || {
            let _ = tx.send(app.write());
        });
        rx.recv_timeout(Duration::from_secs(10))
            .expect("the file system is writable after the thaw")
            .unwrap();
    });
    drop(w);
    drop(inner);
}

/// A PostgreSQL cluster with one table. Backup mode does not pause writes.
struct PostgresApp {
    pg: PgCluster,
}

impl Application for PostgresApp {
    fn writer(&self) -> Box<dyn Writer> {
        Box::new(shadowcopy_postgres::PostgresWriter::new(
            shadowcopy_postgres::PostgresOptions::new(&self.pg.url()),
        ))
    }

    fn write(&self) -> Result<(), String> {
        self.pg.try_psql("INSERT INTO t DEFAULT VALUES").map(|_| ())
    }

    fn damage(&self, copy: &CopyView) {
        overwrite_start(in_copy(copy, &self.pg.data_dir().join("global/pg_control")));
    }

    fn holds_writes(&self) -> bool {
        false
    }

    /// The backend serving the writer's connection stops answering (SIGSTOP, as a
    /// server stalled on its disk would); it is continued when the blocker is dropped.
    fn block_freeze(&self) -> Option<Box<dyn Any>> {
        let pid: i32 = self
            .pg
            .psql(
                "SELECT active_pid FROM pg_replication_slots \
                 WHERE slot_name LIKE 'shadowcopy%' AND active",
            )
            .parse()
            .expect("the writer's backend holds its temporary slot");
        Some(Box::new(Stopped::new(pid)))
    }
}

/// A process stopped with SIGSTOP until dropped (or, so that a writer which never gives
/// up cannot hang the test, for at most [`STOPPED_AT_MOST`]).
struct Stopped {
    done: Option<std::sync::mpsc::Sender<()>>,
    timer: Option<std::thread::JoinHandle<()>>,
}

const STOPPED_AT_MOST: Duration = Duration::from_secs(8);

fn signal(pid: i32, signal: rustix::process::Signal) {
    let pid = rustix::process::Pid::from_raw(pid).unwrap();
    rustix::process::kill_process(pid, signal).unwrap();
}

impl Stopped {
    fn new(pid: i32) -> Stopped {
        signal(pid, rustix::process::Signal::STOP);
        let (tx, rx) = std::sync::mpsc::channel::<()>();
        let timer = std::thread::spawn(move || {
            let _ = rx.recv_timeout(STOPPED_AT_MOST);
            signal(pid, rustix::process::Signal::CONT);
        });
        Stopped {
            done: Some(tx),
            timer: Some(timer),
        }
    }
}

impl Drop for Stopped {
    fn drop(&mut self) {
        drop(self.done.take());
        if let Some(t) = self.timer.take() {
            let _ = t.join();
        }
    }
}

#[test]
fn postgres_passes_the_writer_suite() {
    let Some(pg) = postgres_or_skip("postgres_passes_the_writer_suite", PgOptions::new()) else {
        return;
    };
    pg.psql("CREATE TABLE t (id serial PRIMARY KEY)");
    writer_suite::run_all(&PostgresApp { pg });
}

/// A MariaDB server with one InnoDB table.
struct MariaDbApp {
    db: MariaDbInstance,
    _places: tempfile::TempDir,
}

impl Application for MariaDbApp {
    fn writer(&self) -> Box<dyn Writer> {
        Box::new(shadowcopy_mariadb::MariaDbWriter::new(
            shadowcopy_mariadb::MariaDbOptions::new(self.db.url()),
        ))
    }

    fn write(&self) -> Result<(), String> {
        self.db
            .try_sql("INSERT INTO shop.t VALUES (NULL)")
            .map(|_| ())
    }

    fn damage(&self, copy: &CopyView) {
        let ibdata = self.db.data_dir().join("ibdata1");
        let f = std::fs::OpenOptions::new()
            .write(true)
            .open(in_copy(copy, &ibdata))
            .unwrap();
        // Every page of the system tablespace's first megabyte: its header pages.
        use std::os::unix::fs::FileExt;
        f.write_all_at(&vec![0xEE; 1 << 20], 0).unwrap();
    }

    /// A long DDL statement is running: the freeze's BLOCK_DDL waits for it.
    fn block_freeze(&self) -> Option<Box<dyn Any>> {
        let child = Command::new(mariadb_bin("mariadb"))
            .arg("--no-defaults")
            .arg("-S")
            .arg(self.db.socket())
            .args([
                "-u",
                "root",
                "-e",
                "CREATE TABLE shop.slow ENGINE=InnoDB AS SELECT SLEEP(5) AS s",
            ])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .spawn()
            .unwrap();
        let began = Instant::now();
        while self.db.sql(
            "SELECT COUNT(*) FROM information_schema.processlist WHERE info LIKE 'CREATE TABLE shop.slow%'",
        ) != "1"
        {
            assert!(
                began.elapsed() < Duration::from_secs(10),
                "the blocking DDL did not start"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        Some(Box::new(Reaped(child)))
    }
}

/// A child process waited for when dropped.
struct Reaped(Child);

impl Drop for Reaped {
    fn drop(&mut self) {
        let _ = self.0.wait();
    }
}

#[test]
fn mariadb_passes_the_writer_suite() {
    let places = tempfile::tempdir().unwrap();
    let Some(db) = mariadb_or_skip(
        "mariadb_passes_the_writer_suite",
        shadowcopy_testing::mariadb::MariaDbOptions::new().data_dir(places.path().join("data")),
    ) else {
        return;
    };
    db.sql("CREATE DATABASE shop; CREATE TABLE shop.t (id INT PRIMARY KEY AUTO_INCREMENT) ENGINE=InnoDB");
    writer_suite::run_all(&MariaDbApp {
        db,
        _places: places,
    });
}
