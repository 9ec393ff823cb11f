//! Self-tests of `shadowcopy_testing::mariadb`: real servers (as root `mariadbd` runs as the
//! `mysql` user). They skip without MariaDB, and fail instead under
//! `SHADOWCOPY_TEST_REQUIRE_ROOT=1`.

use std::path::Path;
use std::time::{Duration, Instant};

use mysql::prelude::Queryable;
use shadowcopy_testing::mariadb::{
    make_mariadb_dir, mariadb_bin, mariadb_or_skip, processes_in, AdoptOptions, Ledger,
    MariaDbInstance, MariaDbOptions, BINLOG_BASENAME, LEDGER_DATABASE,
};
use shadowcopy_testing::wait;

/// Processes whose command line names `dir` (mariadbd's `--datadir=<dir>`).
fn cmdlines_naming(dir: &Path) -> Vec<String> {
    let needle = dir.to_string_lossy().into_owned();
    let mut found = Vec::new();
    for e in std::fs::read_dir("/proc").unwrap().flatten() {
        if e.file_name().to_string_lossy().parse::<u32>().is_err() {
            continue;
        }
        if let Ok(cmd) = std::fs::read(e.path().join("cmdline")) {
            let cmd = String::from_utf8_lossy(&cmd).replace('\0', " ");
            if cmd.contains(&needle) {
                found.push(format!("{}: {cmd}", e.file_name().to_string_lossy()));
            }
        }
    }
    found
}

fn files_in(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

fn cp_a(from: &Path, to: &Path) {
    let st = std::process::Command::new("cp")
        .arg("-a")
        .arg(from)
        .arg(to)
        .status()
        .unwrap();
    assert!(st.success(), "cp -a {} {}", from.display(), to.display());
}

#[test]
fn init_start_query_stop() {
    let t = Instant::now();
    let Some(db) = mariadb_or_skip("init_start_query_stop", MariaDbOptions::new()) else {
        return;
    };
    eprintln!("install + start took {:?}", t.elapsed());
    assert!(db.is_running());
    assert_eq!(db.sql("SELECT 1"), "1");
    assert_eq!(db.sql("SELECT @@log_bin"), "1");
    assert_eq!(db.sql("SELECT @@binlog_format"), "ROW");
    assert_eq!(db.sql("SELECT @@server_id"), "1");
    assert_eq!(db.sql("SELECT @@skip_networking"), "1");
    assert_eq!(db.sql("SELECT @@sync_binlog"), "1");
    assert_eq!(db.sql("SELECT @@innodb_flush_log_at_trx_commit"), "1");
    assert_eq!(db.sql("SELECT @@socket"), db.socket().to_string_lossy());
    assert_eq!(
        db.sql("SELECT @@datadir"),
        format!("{}/", db.data_dir().display())
    );
    assert_eq!(db.binlog_dir(), Some(db.data_dir()));
    assert_eq!(db.innodb_log_dir(), db.data_dir());
    assert!(db.data_dir().join("ib_logfile0").is_file());
    assert!(db
        .data_dir()
        .join(format!("{BINLOG_BASENAME}.000001"))
        .is_file());
    // In the data dir the index names the logs relatively: a copy is relocatable.
    let index = std::fs::read_to_string(db.binlog_index().unwrap()).unwrap();
    assert!(
        index.starts_with(&format!("./{BINLOG_BASENAME}.0000")),
        "{index}"
    );
    assert_eq!(processes_in(db.data_dir()), vec![db.server_pid().unwrap()]);

    // The mysql crate, by options and by URL.
    let mut c = db.connect();
    let v: Option<i64> = c.query_first("SELECT 40 + 2").unwrap();
    assert_eq!(v, Some(42));
    assert!(db.url().starts_with("mysql://root@localhost/?socket=/"));
    let mut by_url = mysql::Conn::new(mysql::Opts::from_url(&db.url()).unwrap()).unwrap();
    let user: Option<String> = by_url.query_first("SELECT CURRENT_USER()").unwrap();
    assert_eq!(user.as_deref(), Some("root@localhost"));
    assert!(db.try_sql("SELECT * FROM no_such_table").is_err());
    drop((c, by_url));

    let t = Instant::now();
    db.stop();
    eprintln!("clean stop took {:?}", t.elapsed());
    assert!(!db.is_running());
    assert!(processes_in(db.data_dir()).is_empty());
    assert!(db.try_sql("SELECT 1").is_err());

    let t = Instant::now();
    db.start();
    eprintln!("restart took {:?}", t.elapsed());
    assert_eq!(db.sql("SELECT 2"), "2");
    assert!(db.try_start().is_err(), "a second start must be refused");
    db.kill9();
    assert!(!db.is_running());
    db.start();
    assert_eq!(db.sql("SELECT 3"), "3");
    assert!(db.log().contains("ready for connections"));
    // Each start opened a new binary log.
    let logs = db.sql("SHOW BINARY LOGS");
    assert!(logs.lines().count() >= 3, "{logs}");
    db.stop();
}

#[test]
fn tcp_port_and_settings() {
    let opts = MariaDbOptions::new()
        .tcp()
        .server_id(7)
        .setting("max_connections", "42");
    let Some(db) = mariadb_or_skip("tcp_port_and_settings", opts) else {
        return;
    };
    let port = db.port().unwrap();
    assert_eq!(db.sql("SELECT @@port"), port.to_string());
    assert_eq!(db.sql("SELECT @@skip_networking"), "0");
    assert_eq!(db.sql("SELECT @@server_id"), "7");
    assert_eq!(db.sql("SELECT @@max_connections"), "42");
    // Over TCP root@127.0.0.1 exists without a password (mariadb-install-db's "normal" auth).
    let opts = mysql::OptsBuilder::new()
        .ip_or_hostname(Some("127.0.0.1"))
        .tcp_port(port)
        .user(Some("root"))
        .prefer_socket(false);
    let mut c = mysql::Conn::new(opts).unwrap();
    let v: Option<i64> = c.query_first("SELECT 1").unwrap();
    assert_eq!(v, Some(1));
    // The other programs are at hand.
    assert!(mariadb_bin("mariadb-backup").is_file());
    assert!(mariadb_bin("mariadb-admin").is_file());
    let out = db
        .command("mariadb-admin")
        .arg("--no-defaults")
        .arg("-S")
        .arg(db.socket())
        .args(["-u", "root", "ping"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
}

#[test]
fn ledger_keeps_every_acknowledged_id_and_its_balance() {
    let Some(db) = mariadb_or_skip(
        "ledger_keeps_every_acknowledged_id_and_its_balance",
        MariaDbOptions::new(),
    ) else {
        return;
    };
    let mut c = db.connect();
    Ledger::setup(&mut c).unwrap();
    assert_eq!(
        db.sql(&format!(
            "SELECT engine FROM information_schema.tables WHERE table_schema = \
             '{LEDGER_DATABASE}' AND table_name = 'ledger'"
        )),
        "InnoDB"
    );
    let ledger = Ledger::start(&db.opts(), 3, Duration::ZERO);
    assert!(
        ledger.wait_for_commits(20, Duration::from_secs(30)),
        "the writers committed only {}",
        ledger.committed()
    );
    // A consistent read while the writers run.
    let mid = Instant::now();
    let live = Ledger::check(&mut c).unwrap();
    live.verify(&ledger.acknowledged_before(mid)).unwrap();
    let after_mid = ledger.committed() + 20;
    assert!(
        ledger.wait_for_commits(after_mid, Duration::from_secs(30)),
        "the writers committed only {} of {after_mid}",
        ledger.committed()
    );
    let stats = ledger.stop();
    eprintln!(
        "ledger: {} commits in {:?}, longest stall {:?}, {} errors",
        stats.committed, stats.ran_for, stats.longest_stall, stats.error_count
    );
    assert!(stats.errors.is_empty(), "{:?}", stats.errors);
    assert!(stats.committed > 10, "only {} commits", stats.committed);
    let state = Ledger::check(&mut c).unwrap();
    state.verify(&stats.acknowledged).unwrap();
    // With a clean stop every transaction was acknowledged.
    assert_eq!(state.ids, stats.acknowledged);
    // Row-based binary logging saw them.
    let events = db.sql(&format!(
        "SHOW BINLOG EVENTS IN '{BINLOG_BASENAME}.000001' LIMIT 10000"
    ));
    assert!(events.contains("Write_rows"), "{events}");
}

#[test]
fn a_crash_loses_no_acknowledged_commit_and_writers_ride_it_out() {
    let Some(db) = mariadb_or_skip(
        "a_crash_loses_no_acknowledged_commit_and_writers_ride_it_out",
        MariaDbOptions::new(),
    ) else {
        return;
    };
    Ledger::setup(&mut db.connect()).unwrap();
    let ledger = Ledger::start(&db.opts(), 3, Duration::ZERO);
    assert!(ledger.wait_for_commits(50, Duration::from_secs(30)));
    let pid = db.server_pid().unwrap();
    db.kill9();
    let crashed = Instant::now();
    assert!(!db.is_running());
    assert!(processes_in(db.data_dir()).is_empty());
    assert!(
        !Path::new(&format!("/proc/{pid}")).exists(),
        "mariadbd not reaped"
    );
    let before = ledger.committed();
    wait::until(
        Duration::from_secs(30),
        || ledger.error_count() > 0,
        || "no writer saw the server go".to_string(),
    );
    let t = Instant::now();
    db.start(); // crash recovery
    eprintln!("start with crash recovery took {:?}", t.elapsed());
    assert!(ledger.wait_for_commits(before + 50, Duration::from_secs(30)));
    let acked = ledger.acknowledged_before(crashed);
    let stats = ledger.stop();
    assert!(stats.error_count > 0, "the writers saw no crash?");
    let state = Ledger::check(&mut db.connect()).unwrap();
    state.verify(&acked).unwrap();
    state.verify(&stats.acknowledged).unwrap();
}

#[test]
fn kill9_then_adopt_recovers_every_acknowledged_commit() {
    let Some(db) = mariadb_or_skip(
        "kill9_then_adopt_recovers_every_acknowledged_commit",
        MariaDbOptions::new(),
    ) else {
        return;
    };
    Ledger::setup(&mut db.connect()).unwrap();
    let ledger = Ledger::start(&db.opts(), 3, Duration::ZERO);
    assert!(ledger.wait_for_commits(200, Duration::from_secs(30)));
    // A second server on a data dir in use is refused at once.
    let twin = MariaDbInstance::adopt(db.data_dir(), AdoptOptions::new());
    let t = Instant::now();
    assert!(twin.try_start().is_err());
    assert!(t.elapsed() < Duration::from_secs(5), "{:?}", t.elapsed());
    drop(twin);
    // Dropping the refused twin leaves the original server alone.
    assert!(db.is_running());
    assert_eq!(db.sql("SELECT 1"), "1");
    db.kill9();
    // Writers fail from here on: every acknowledged commit came before the crash.
    let stats = ledger.stop();
    assert!(stats.committed >= 200);

    let adopted = MariaDbInstance::adopt(db.data_dir(), AdoptOptions::new());
    assert!(!adopted.is_running());
    assert_ne!(adopted.socket(), db.socket());
    let t = Instant::now();
    adopted.start();
    eprintln!("adopt + start with crash recovery took {:?}", t.elapsed());
    let log = adopted.log();
    assert!(
        log.contains("crash recovery") || log.contains("Recovering after a crash"),
        "no crash recovery in the log:\n{log}"
    );
    let state = Ledger::check(&mut adopted.connect()).unwrap();
    state.verify(&stats.acknowledged).unwrap();
    assert!(state.balanced(), "{state:?}");
    eprintln!(
        "{} acknowledged, {} rows after recovery",
        stats.acknowledged.len(),
        state.ids.len()
    );
    let data = adopted.data_dir().to_path_buf();
    drop(adopted);
    assert!(processes_in(&data).is_empty());
    assert!(
        data.join("mysql").is_dir(),
        "adopt must not remove the data dir"
    );
}

#[test]
fn binlog_redo_and_undo_outside_the_data_dir_and_a_relocated_copy() {
    let places = tempfile::tempdir().unwrap();
    let p = places.path();
    let opts = MariaDbOptions::new()
        .data_dir(p.join("data"))
        .binlog_dir(p.join("binlog"))
        .innodb_log_dir(p.join("redo"))
        .undo_dir(p.join("undo"));
    let Some(db) = mariadb_or_skip(
        "binlog_redo_and_undo_outside_the_data_dir_and_a_relocated_copy",
        opts,
    ) else {
        return;
    };
    let binlog = std::fs::canonicalize(p.join("binlog")).unwrap();
    assert_eq!(db.binlog_dir(), Some(binlog.as_path()));
    assert_eq!(
        db.sql("SELECT @@log_bin_basename"),
        binlog.join(BINLOG_BASENAME).to_string_lossy()
    );
    assert!(binlog.join(format!("{BINLOG_BASENAME}.000001")).is_file());
    assert!(binlog.join(format!("{BINLOG_BASENAME}.index")).is_file());
    assert!(
        !files_in(db.data_dir())
            .iter()
            .any(|f| f.starts_with(BINLOG_BASENAME)),
        "{:?}",
        files_in(db.data_dir())
    );
    assert!(db.innodb_log_dir().join("ib_logfile0").is_file());
    assert!(!db.data_dir().join("ib_logfile0").exists());
    assert_eq!(
        files_in(db.undo_dir().unwrap()),
        ["undo001", "undo002", "undo003"]
    );
    assert_eq!(db.sql("SELECT @@innodb_undo_tablespaces"), "3");

    Ledger::setup(&mut db.connect()).unwrap();
    let ledger = Ledger::start(&db.opts(), 2, Duration::ZERO);
    assert!(ledger.wait_for_commits(50, Duration::from_secs(30)));
    let stats = ledger.stop();
    assert!(stats.errors.is_empty(), "{:?}", stats.errors);
    let original = Ledger::check(&mut db.connect()).unwrap();
    original.verify(&stats.acknowledged).unwrap();
    db.stop();

    // A copy of all four places; its binlog index names the original's files.
    let copy = tempfile::tempdir().unwrap();
    let c = copy.path();
    for d in ["data", "binlog", "redo", "undo"] {
        cp_a(&p.join(d), &c.join(d));
    }
    let index_name = format!("{BINLOG_BASENAME}.index");
    let before = std::fs::read_to_string(c.join("binlog").join(&index_name)).unwrap();
    assert!(
        before.contains(&binlog.to_string_lossy().into_owned()),
        "{before}"
    );
    let restored = MariaDbInstance::adopt(
        c.join("data"),
        AdoptOptions::new()
            .binlog_dir(c.join("binlog"))
            .innodb_log_dir(c.join("redo"))
            .undo_dir(c.join("undo"))
            .relocate_binlog_index(),
    );
    let copy_binlog = std::fs::canonicalize(c.join("binlog")).unwrap();
    let after = std::fs::read_to_string(copy_binlog.join(&index_name)).unwrap();
    assert!(
        !after.contains(&binlog.to_string_lossy().into_owned()),
        "{after}"
    );
    assert!(
        after.contains(&copy_binlog.to_string_lossy().into_owned()),
        "{after}"
    );
    restored.start();
    assert_eq!(restored.sql("SELECT @@innodb_undo_tablespaces"), "3");
    let state = Ledger::check(&mut restored.connect()).unwrap();
    assert_eq!(state, original);
    // The copy writes its own binary logs, in its own directory.
    let logs = restored.sql("SHOW BINARY LOGS");
    assert_eq!(logs.lines().count(), 2, "{logs}");
    let newest = logs.lines().last().unwrap().split('\t').next().unwrap();
    assert_eq!(newest, format!("{BINLOG_BASENAME}.000002"));
    assert!(copy_binlog.join(newest).is_file());
    assert!(
        !binlog.join(newest).exists(),
        "the copy wrote into the original's binlog dir"
    );
    // Both run side by side.
    db.start();
    assert_eq!(db.sql("SELECT 1"), "1");
    assert_eq!(restored.sql("SELECT 1"), "1");
}

#[test]
fn ledger_table_in_a_data_directory_elsewhere() {
    let Some(db) = mariadb_or_skip(
        "ledger_table_in_a_data_directory_elsewhere",
        MariaDbOptions::new(),
    ) else {
        return;
    };
    let elsewhere = tempfile::tempdir().unwrap();
    let dd = elsewhere.path().join("tables");
    make_mariadb_dir(&dd).unwrap();
    let mut c = db.connect();
    Ledger::setup_with(&mut c, 10, Some(&dd)).unwrap();
    assert!(dd.join(LEDGER_DATABASE).join("ledger.ibd").is_file());
    assert!(db
        .data_dir()
        .join(LEDGER_DATABASE)
        .join("ledger.isl")
        .is_file());
    assert!(db
        .data_dir()
        .join(LEDGER_DATABASE)
        .join("accounts.ibd")
        .is_file());
    let ledger = Ledger::start(&db.opts(), 2, Duration::ZERO);
    assert!(ledger.wait_for_commits(20, Duration::from_secs(30)));
    let stats = ledger.stop();
    assert!(stats.errors.is_empty(), "{:?}", stats.errors);
    let state = Ledger::check(&mut c).unwrap();
    state.verify(&stats.acknowledged).unwrap();
    assert_eq!(state.accounts, 10);
}

#[test]
fn drop_leaves_no_server_behind_even_on_panic() {
    let Some(db) = mariadb_or_skip(
        "drop_leaves_no_server_behind_even_on_panic",
        MariaDbOptions::new(),
    ) else {
        return;
    };
    let data = db.data_dir().to_path_buf();
    let run = db.run_dir().to_path_buf();
    let pid = db.server_pid().unwrap();
    assert_eq!(processes_in(&data), vec![pid]);
    let _busy = db.connect(); // a client connection too
    let t = Instant::now();
    drop(db);
    eprintln!("drop took {:?}", t.elapsed());
    assert!(processes_in(&data).is_empty());
    assert!(
        cmdlines_naming(&data).is_empty(),
        "{:?}",
        cmdlines_naming(&data)
    );
    assert!(!Path::new(&format!("/proc/{pid}")).exists(), "not reaped");
    assert!(!run.exists(), "temp dir left behind");

    // A test that panics while its server runs.
    let data = std::sync::Mutex::new(None);
    let r = std::panic::catch_unwind(|| {
        let db = MariaDbInstance::init(MariaDbOptions::new());
        *data.lock().unwrap() = Some(db.data_dir().to_path_buf());
        let _c = db.connect();
        panic!("test failure with a running server");
    });
    assert!(r.is_err());
    let data = data.into_inner().unwrap().unwrap();
    assert!(processes_in(&data).is_empty());
    assert!(
        cmdlines_naming(&data).is_empty(),
        "{:?}",
        cmdlines_naming(&data)
    );
    assert!(!data.exists());
}
