//! The writer against a real MariaDB server, without a coordinator: the freeze blocks
//! commits and the thaw releases them; a killed lock connection or a deadline passed
//! while waiting for the backup lock leaves the server writable; discovery finds the
//! separate directories.

use std::time::{Duration, Instant};

use mysql::prelude::Queryable;
use shadowcopy_core::Writer;
use shadowcopy_mariadb::{MariaDbOptions, MariaDbWriter};
use shadowcopy_testing::mariadb::{mariadb_or_skip, MariaDbInstance, MariaDbOptions as Opts};
use shadowcopy_testing::wait;

fn writable_within(db: &MariaDbInstance, limit: Duration) -> bool {
    let (tx, rx) = std::sync::mpsc::channel();
    let opts = db.opts();
    std::thread::spawn(move || {
        let r = mysql::Conn::new(opts).and_then(|mut c| {
            c.query_drop("INSERT INTO shop.t VALUES (NULL)")?;
            Ok(())
        });
        let _ = tx.send(r.is_ok());
    });
    rx.recv_timeout(limit).unwrap_or(false)
}

fn setup(test: &str) -> Option<(tempfile::TempDir, MariaDbInstance)> {
    let places = tempfile::tempdir().unwrap();
    let p = places.path();
    let db = mariadb_or_skip(
        test,
        Opts::new()
            .data_dir(p.join("data"))
            .binlog_dir(p.join("binlog"))
            .innodb_log_dir(p.join("redo")),
    )?;
    db.sql("CREATE DATABASE shop; CREATE TABLE shop.t (id INT PRIMARY KEY AUTO_INCREMENT) ENGINE=InnoDB");
    Some((places, db))
}

#[test]
fn mariadb_freeze_blocks_commits_until_the_thaw_and_a_killed_lock_connection_frees_them() {
    let Some((_places, db)) = setup("mariadb_freeze_blocks_commits") else {
        return;
    };
    let mut w = MariaDbWriter::new(MariaDbOptions::new(db.url()));
    let components = w.identify().unwrap();
    let names: Vec<&str> = components.iter().map(|c| c.name.as_str()).collect();
    assert_eq!(names, ["data", "redo", "binlog"]);
    w.prepare().unwrap();
    assert!(
        writable_within(&db, Duration::from_secs(2)),
        "prepare must not block commits"
    );
    w.freeze(Instant::now() + Duration::from_secs(10)).unwrap();
    assert!(
        !writable_within(&db, Duration::from_millis(300)),
        "frozen: commits wait"
    );
    w.thaw().unwrap();
    assert!(writable_within(&db, Duration::from_secs(2)));
    let files = w.after_thaw_files().unwrap();
    let text = std::fs::read_to_string(&files[0].1).unwrap();
    assert!(text.contains("binlog_file: mariadb-bin.0000"), "{text}");
    assert!(files[0].0.ends_with("data/shadowcopy-binlog-position"));
    w.abort().unwrap();

    // The lock connection dies while frozen (a killed coordinator, or the DBA): the
    // server releases the lock with it, and the thaw reports the lost connection.
    let mut w = MariaDbWriter::new(MariaDbOptions::new(db.url()));
    w.identify().unwrap();
    w.prepare().unwrap();
    w.freeze(Instant::now() + Duration::from_secs(10)).unwrap();
    let id = w.connection_id().unwrap();
    db.sql(&format!("KILL {id}"));
    assert!(writable_within(&db, Duration::from_secs(2)));
    assert!(w.thaw().is_err());
    w.thaw().unwrap(); // idempotent
    w.abort().unwrap();
}

#[test]
fn mariadb_freeze_gives_up_at_the_deadline_when_ddl_holds_the_lock() {
    let Some((_places, db)) = setup("mariadb_freeze_gives_up_at_the_deadline") else {
        return;
    };
    let mut w = MariaDbWriter::new(MariaDbOptions::new(db.url()));
    w.identify().unwrap();
    w.prepare().unwrap();
    // A long DDL statement starts after prepare: BLOCK_DDL waits for it.
    let opts = db.opts();
    let ddl = std::thread::spawn(move || {
        let mut c = mysql::Conn::new(opts).unwrap();
        c.query_drop("CREATE TABLE shop.slow ENGINE=InnoDB AS SELECT SLEEP(6) AS s")
    });
    // It is inside the DDL once its SELECT sleeps.
    wait::until(
        Duration::from_secs(30),
        || {
            db.sql(
                "SELECT count(*) FROM information_schema.processlist \
                 WHERE info LIKE 'CREATE TABLE shop.slow%' AND state = 'User sleep'",
            ) == "1"
        },
        || {
            format!(
                "the DDL statement is not running; processlist: {}",
                db.sql("SELECT group_concat(concat_ws(' ', id, command, state, info)) FROM information_schema.processlist")
            )
        },
    );
    let t = Instant::now();
    let e = w
        .freeze(Instant::now() + Duration::from_millis(1500))
        .unwrap_err()
        .to_string();
    let took = t.elapsed();
    assert!(e.contains("freeze deadline"), "{e}");
    assert!(
        took < Duration::from_millis(1600),
        "the freeze waited {took:?}, past its deadline"
    );
    w.thaw().unwrap();
    w.abort().unwrap();
    assert!(writable_within(&db, Duration::from_secs(2)));
    ddl.join().unwrap().unwrap();
}
