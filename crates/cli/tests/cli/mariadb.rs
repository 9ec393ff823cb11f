//! A real MariaDB server under a ledger load: copies verify on a sandbox, start, and hold
//! every commit acknowledged before their freeze; after the data directory is destroyed,
//! a roll-forward restore loses no acknowledged commit; a point-in-time restore brings
//! back the copy's state and nothing later; `--until` stops the replay where it is told;
//! binlog truncation keeps what kept copies need; abort paths (server killed mid-set,
//! coordinator killed while frozen, deadline) leave the server writable and nothing
//! half-listed; `mariadb log-analysis` follows the binary logs after a copy and stops
//! its roll-forward reach at a hole.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use shadowcopy_testing::mariadb::{
    mariadb_or_skip, AdoptOptions, Ledger, MariaDbInstance, MariaDbOptions, BINLOG_BASENAME,
};

use crate::support::{describe, kill9, stderr, Cli};

/// A server whose binary logs, redo log and undo tablespaces live outside its data
/// directory (so destroying the data directory leaves the binary logs), all under
/// `places`.
pub(crate) fn server(test: &str, places: &Path) -> Option<MariaDbInstance> {
    mariadb_or_skip(
        test,
        MariaDbOptions::new()
            .data_dir(places.join("data"))
            .binlog_dir(places.join("binlog"))
            .innodb_log_dir(places.join("redo"))
            .undo_dir(places.join("undo")),
    )
}

fn create_args<'a>(db: &'a str, extra: &[&'a str]) -> Vec<&'a str> {
    let mut args = vec!["create", "--mariadb", db, "--provider", "copy", "--json"];
    args.extend_from_slice(extra);
    args
}

pub(crate) fn create(cli: &Cli, db: &MariaDbInstance, extra: &[&str]) -> serde_json::Value {
    let url = db.url();
    let out = cli.run(&create_args(&url, extra));
    assert!(
        out.status.success(),
        "{}\nserver log:\n{}",
        describe(&out),
        db.log()
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

/// Restores copy `id` point-in-time into a new directory and starts a server on it.
/// The restore rewrote the binlog index to name the restored logs, and printed the
/// command that starts the server beside the live one: that command starts it.
fn start_copy(cli: &Cli, id: &str) -> (tempfile::TempDir, MariaDbInstance) {
    let dir = tempfile::tempdir().unwrap();
    let to = dir.path().join("copy");
    let out = cli.run(&["restore", id, "--to", to.to_str().unwrap(), "--json"]);
    assert!(out.status.success(), "{}", describe(&out));
    let restored: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let index = std::fs::read_to_string(to.join("binlog").join(format!("{BINLOG_BASENAME}.index")))
        .unwrap();
    assert!(
        index
            .lines()
            .all(|l| l.starts_with(to.join("binlog").to_str().unwrap())),
        "{index}"
    );
    let note = restored["notes"][0].as_str().unwrap();
    let command = note.split_once("): ").unwrap().1;
    let mut printed = std::process::Command::new("sh")
        .args(["-c", &format!("exec {command}")])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let socket = to.join("data").join("restored.sock");
    let began = Instant::now();
    while !socket.exists() && began.elapsed() < Duration::from_secs(60) {
        assert!(printed.try_wait().unwrap().is_none(), "{command} exited");
        std::thread::sleep(Duration::from_millis(50));
    }
    let mut conn = mysql::Conn::new(
        mysql::OptsBuilder::new()
            .user(Some("root"))
            .socket(Some(socket.to_string_lossy())),
    );
    let began = Instant::now();
    while conn.is_err() && began.elapsed() < Duration::from_secs(60) {
        std::thread::sleep(Duration::from_millis(100));
        conn = mysql::Conn::new(
            mysql::OptsBuilder::new()
                .user(Some("root"))
                .socket(Some(socket.to_string_lossy())),
        );
    }
    // A clean shutdown from a client; the server exits 0.
    mysql::prelude::Queryable::query_drop(
        &mut conn.unwrap_or_else(|e| panic!("{command}: {e}")),
        "SHUTDOWN",
    )
    .unwrap();
    let done = printed.wait_with_output().unwrap();
    assert!(done.status.success(), "{command}: {}", describe(&done));
    let copy = MariaDbInstance::adopt(
        to.join("data"),
        AdoptOptions::new()
            .binlog_dir(to.join("binlog"))
            .innodb_log_dir(to.join("redo"))
            .undo_dir(to.join("undo"))
            .fix_ownership(),
    );
    copy.start();
    (dir, copy)
}

/// Writes wait at most this long on a healthy server.
fn assert_writable(db: &MariaDbInstance) {
    let t = Instant::now();
    db.sql("CREATE TABLE IF NOT EXISTS shadowcopy.probe (id INT PRIMARY KEY AUTO_INCREMENT) ENGINE=InnoDB");
    db.sql("INSERT INTO shadowcopy.probe VALUES (NULL)");
    assert!(
        t.elapsed() < Duration::from_secs(2),
        "a write took {:?}: is the server still frozen?",
        t.elapsed()
    );
}

/// No copy is left in progress, and none but the `usable` ones listed are usable.
fn assert_nothing_half_listed(cli: &Cli, usable: usize) {
    let listed = cli.json(&["list", "--json"]);
    let copies = listed.as_array().unwrap();
    assert!(
        copies.iter().all(|c| c["state"] != "in-progress"),
        "{listed}"
    );
    assert_eq!(
        copies.iter().filter(|c| c["state"] == "usable").count(),
        usable,
        "{listed}"
    );
}

#[test]
fn mariadb_copies_under_load_verify_and_restores_lose_no_acknowledged_commit() {
    let cli = Cli::new();
    let places = tempfile::tempdir().unwrap();
    let Some(db) = server("mariadb_copies_under_load", places.path()) else {
        return;
    };
    Ledger::setup(&mut db.connect()).unwrap();
    let ledger = Ledger::start(&db.opts(), 3, Duration::ZERO);
    assert!(ledger.wait_for_commits(100, Duration::from_secs(20)));

    // Two copies under load; each is verified, and started it holds every commit
    // acknowledged before create began.
    let mut copies = Vec::new();
    for _ in 0..2 {
        ledger.reset_longest_stall();
        let began = Instant::now();
        let created = create(&cli, &db, &[]);
        let took = began.elapsed();
        let stall = ledger.longest_stall();
        let acked = ledger.acknowledged_before(began);
        assert!(!acked.is_empty());
        let verification = &created["verification"];
        assert_eq!(verification["ok"], true, "{verification}");
        let detail = verification["detail"].as_str().unwrap();
        assert!(
            detail.contains("mariadb-check") && detail.contains("InnoDB recovered"),
            "{detail}"
        );
        let window = Duration::from_micros(created["freeze_window_us"].as_u64().unwrap());
        eprintln!(
            "create took {took:?}: freeze window {window:?}, longest commit stall of the load {stall:?}, phases {}",
            created["phases"]
        );
        assert!(
            stall < window + Duration::from_secs(1),
            "the load stalled {stall:?}, longer than the freeze window {window:?}"
        );
        copies.push((created["id"].as_i64().unwrap().to_string(), acked));
    }
    assert!(ledger.wait_for_commits(ledger.committed() + 200, Duration::from_secs(30)));
    for (id, acked) in &copies {
        let t = Instant::now();
        let (_dir, copy) = start_copy(&cli, id);
        let state = Ledger::check(&mut copy.connect()).unwrap();
        eprintln!(
            "copy {id} restored elsewhere and started in {:?}",
            t.elapsed()
        );
        state.verify(acked).unwrap();
        assert!(state.balanced(), "{state:?}");
        let position =
            std::fs::read_to_string(copy.data_dir().join("shadowcopy-binlog-position")).unwrap();
        assert!(
            position.contains(&format!("binlog_file: {BINLOG_BASENAME}.")),
            "{position}"
        );
    }

    let stats = ledger.stop();
    let acked_all = stats.acknowledged.clone();
    let (id, acked_first) = copies[0].clone();
    assert!(acked_all.len() > acked_first.len());

    // Restores are refused while the server runs, even with --force.
    let out = cli.run(&["restore", &id, "--force", "--mode", "roll-forward"]);
    assert_eq!(out.status.code(), Some(1), "{}", describe(&out));
    assert!(
        stderr(&out).contains("server is running"),
        "{}",
        describe(&out)
    );
    db.stop();

    // The disaster: the data directory is gone (binary logs, redo and undo survive).
    std::fs::remove_dir_all(db.data_dir()).unwrap();
    let t = Instant::now();
    let out = cli.run(&["restore", &id, "--mode", "roll-forward"]);
    assert!(out.status.success(), "{}", describe(&out));
    eprintln!("roll-forward restore took {:?}", t.elapsed());
    db.start();
    let state = Ledger::check(&mut db.connect()).unwrap();
    let lost = state.missing(&acked_all);
    assert!(
        lost.is_empty(),
        "roll-forward lost {} acknowledged commits, e.g. {:?}",
        lost.len(),
        &lost[..lost.len().min(5)]
    );
    assert!(state.balanced(), "{state:?}");
    // The binary log goes on where it was: the restarted server writes after it.
    assert_writable(&db);
    db.stop();

    // Point in time: the first copy's state, nothing acknowledged after it.
    let t = Instant::now();
    let out = cli.run(&["restore", &id, "--json"]);
    assert!(out.status.success(), "{}", describe(&out));
    eprintln!("point-in-time restore took {:?}", t.elapsed());
    let restored: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(restored["pre_restore"].is_i64(), "{restored}");
    db.start();
    let state = Ledger::check(&mut db.connect()).unwrap();
    state.verify(&acked_first).unwrap();
    assert!(state.balanced(), "{state:?}");
    assert!(
        state.ids.len() < acked_all.len(),
        "point in time stops at the copy ({} rows, {} acknowledged in all)",
        state.ids.len(),
        acked_all.len()
    );
    // The binlog history ends where the copy does: no log written after it is left.
    let position = copies_position(&cli, &id);
    let logs = db.sql("SHOW BINARY LOGS");
    let names: Vec<&str> = logs.lines().filter_map(|l| l.split('\t').next()).collect();
    let later: Vec<&&str> = names.iter().filter(|n| **n > position.as_str()).collect();
    assert_eq!(
        later.len(),
        1,
        "only the log the restarted server opened follows the copy's ({position}): {names:?}"
    );
    // The probe table written after the roll-forward is gone too.
    assert!(db.try_sql("SELECT COUNT(*) FROM shadowcopy.probe").is_err());
}

/// The binlog file a copy starts at, from `show --json`'s copy of the position file.
fn copies_position(cli: &Cli, id: &str) -> String {
    let dir = tempfile::tempdir().unwrap();
    let to = dir.path().join("c");
    cli.ok(&["restore", id, "--to", to.to_str().unwrap()]);
    let text = std::fs::read_to_string(to.join("data").join("shadowcopy-binlog-position")).unwrap();
    text.lines()
        .find_map(|l| l.strip_prefix("binlog_file: "))
        .unwrap()
        .to_string()
}

#[test]
fn mariadb_roll_forward_until_a_gtid_or_a_position_stops_there() {
    let cli = Cli::new();
    let places = tempfile::tempdir().unwrap();
    let Some(db) = server("mariadb_roll_forward_until", places.path()) else {
        return;
    };
    db.sql("CREATE DATABASE shop; CREATE TABLE shop.t (id INT PRIMARY KEY) ENGINE=InnoDB");
    db.sql("INSERT INTO shop.t VALUES (1), (2)");
    let created = create(&cli, &db, &[]);
    let id = created["id"].as_i64().unwrap().to_string();
    // Three more transactions, a user with a grant, and a mistake.
    db.sql("INSERT INTO shop.t VALUES (3)");
    db.sql("CREATE USER clerk@localhost; GRANT SELECT ON shop.* TO clerk@localhost");
    db.sql("INSERT INTO shop.t VALUES (4)");
    let before_mistake = db.sql("SELECT @@gtid_binlog_pos");
    let status = db.sql("SHOW MASTER STATUS");
    let mut cols = status.split('\t');
    let (file, pos) = (
        cols.next().unwrap().to_string(),
        cols.next().unwrap().to_string(),
    );
    db.sql("DROP TABLE shop.t");
    db.stop();

    for until in [before_mistake.clone(), format!("{file}:{pos}")] {
        std::fs::remove_dir_all(db.data_dir().join("shop")).ok();
        let out = cli.run(&[
            "restore",
            &id,
            "--mode",
            "roll-forward",
            "--until",
            &until,
            "--discard-current",
        ]);
        assert!(out.status.success(), "--until {until}: {}", describe(&out));
        db.start();
        assert_eq!(
            db.sql("SELECT GROUP_CONCAT(id ORDER BY id) FROM shop.t"),
            "1,2,3,4"
        );
        assert!(
            db.sql("SHOW GRANTS FOR clerk@localhost")
                .contains("SELECT ON `shop`"),
            "replayed grants are in place"
        );
        db.stop();
    }

    // A target that is nonsense is refused before anything is touched.
    let out = cli.run(&[
        "restore",
        &id,
        "--mode",
        "roll-forward",
        "--until",
        "yesterday",
    ]);
    assert_eq!(out.status.code(), Some(2), "{}", describe(&out));
    assert!(stderr(&out).contains("GTID position"), "{}", describe(&out));
    // Without --until everything is replayed, the mistake included.
    let out = cli.run(&[
        "restore",
        &id,
        "--mode",
        "roll-forward",
        "--discard-current",
    ]);
    assert!(out.status.success(), "{}", describe(&out));
    db.start();
    assert!(
        db.try_sql("SELECT * FROM shop.t").is_err(),
        "the DROP was replayed"
    );
}

#[test]
fn mariadb_binlog_truncation_keeps_what_kept_copies_need() {
    let cli = Cli::new();
    let places = tempfile::tempdir().unwrap();
    let Some(db) = server("mariadb_binlog_truncation", places.path()) else {
        return;
    };
    db.sql("CREATE DATABASE shop; CREATE TABLE shop.t (id INT PRIMARY KEY AUTO_INCREMENT) ENGINE=InnoDB");
    let rotate = |n: usize| {
        for _ in 0..n {
            db.sql("INSERT INTO shop.t VALUES (NULL)");
            db.sql("FLUSH BINARY LOGS");
        }
    };
    let first_log = || {
        db.sql("SHOW BINARY LOGS")
            .lines()
            .next()
            .unwrap()
            .split('\t')
            .next()
            .unwrap()
            .to_string()
    };
    rotate(2);
    let a = create(&cli, &db, &[]);
    let a_id = a["id"].as_i64().unwrap().to_string();
    let a_start = copies_position(&cli, &a_id);
    let note = a["notes"][0].as_str().unwrap();
    assert!(
        note.starts_with("binary logs: purged 2 files")
            && note.contains(&format!("before {a_start} (the start of this copy")),
        "{note}"
    );
    assert_eq!(first_log(), a_start);
    rotate(3);
    // Copy A is kept: a new copy purges nothing before A's start.
    let b = create(&cli, &db, &[]);
    let b_id = b["id"].as_i64().unwrap().to_string();
    let note = b["notes"][0].as_str().unwrap();
    assert!(
        note.contains(&format!("copy {a_id}, the oldest kept")),
        "{note}"
    );
    assert_eq!(first_log(), a_start);
    rotate(2);
    // A copy that is not verified purges nothing.
    let unverified = create(&cli, &db, &["--no-verify"]);
    assert_eq!(unverified["notes"].as_array().unwrap().len(), 0);
    assert_eq!(first_log(), a_start);
    // Deleting A frees its logs at the next verified copy: up to B's start.
    cli.ok(&["delete", &a_id]);
    let c = create(&cli, &db, &[]);
    let b_start = copies_position(&cli, &b_id);
    assert_eq!(first_log(), b_start, "{}", c["notes"]);
    // B still rolls forward over what is left.
    let rows = db.sql("SELECT COUNT(*) FROM shop.t");
    db.stop();
    std::fs::remove_dir_all(db.data_dir()).unwrap();
    let out = cli.run(&["restore", &b_id, "--mode", "roll-forward"]);
    assert!(out.status.success(), "{}", describe(&out));
    db.start();
    assert_eq!(db.sql("SELECT COUNT(*) FROM shop.t"), rows);
    // --mariadb-keep-binlogs: nothing purged.
    let kept = create(&cli, &db, &["--mariadb-keep-binlogs", "--name", "keep"]);
    assert_eq!(kept["notes"].as_array().unwrap().len(), 0, "{kept}");
}

#[test]
fn mariadb_aborts_leave_the_server_writable_and_nothing_half_listed() {
    let cli = Cli::new();
    let places = tempfile::tempdir().unwrap();
    let Some(db) = server("mariadb_aborts", places.path()) else {
        return;
    };
    Ledger::setup(&mut db.connect()).unwrap();
    let ledger = Ledger::start(&db.opts(), 2, Duration::ZERO);
    assert!(ledger.wait_for_commits(50, Duration::from_secs(20)));
    let url = db.url();

    // The deadline passes during the commit: everything is thawed, nothing kept.
    let out = cli.run(&create_args(&url, &["--freeze-deadline", "5ms"]));
    assert_eq!(out.status.code(), Some(1), "{}", describe(&out));
    assert!(stderr(&out).contains("deadline"), "{}", describe(&out));
    assert_writable(&db);
    assert_nothing_half_listed(&cli, 0);

    // shadowcopy is killed while the server is frozen: the server drops the backup lock
    // with the connection, and the next run discards the partial copy.
    let mut child = cli.spawn(&create_args(&url, &["--freeze-deadline", "60s"]));
    wait_for_freeze(&cli, &mut child);
    kill9(&mut child);
    assert_writable(&db);
    let before = ledger.committed();
    assert!(ledger.wait_for_commits(before + 20, Duration::from_secs(10)));
    let created = create(&cli, &db, &[]);
    assert_eq!(created["verification"]["ok"], true);
    assert_nothing_half_listed(&cli, 1);

    // The server dies during the set.
    let mut child = cli.spawn(&create_args(&url, &["--freeze-deadline", "60s"]));
    wait_for_freeze(&cli, &mut child);
    db.kill9();
    let out = child.wait_with_output().unwrap();
    assert_eq!(out.status.code(), Some(1), "{}", describe(&out));
    db.start();
    assert_writable(&db);
    assert_nothing_half_listed(&cli, 1);
    let created = create(&cli, &db, &[]);
    assert_eq!(created["verification"]["ok"], true);
    let stats = ledger.stop();
    assert!(stats.committed > 50);
    // Not verified, file by file: said so, with the command that checks it.
    let created = create(&cli, &db, &["--no-verify"]);
    let warnings = created["warnings"].to_string();
    assert!(
        warnings.contains("not verified") && warnings.contains("shadowcopy verify"),
        "{created}"
    );
}

/// Waits until the newest copy is frozen; panics with the create's output if it ended.
fn wait_for_freeze(cli: &Cli, child: &mut std::process::Child) {
    let began = Instant::now();
    while began.elapsed() < Duration::from_secs(30) {
        if let Some((_, state, phase)) = cli.newest_copy() {
            if state == "in-progress" && phase == "freeze" {
                return;
            }
        }
        if child.try_wait().unwrap().is_some() {
            let out = std::mem::replace(child, cli.spawn(&["--version"]))
                .wait_with_output()
                .unwrap();
            panic!("the create ended before its freeze: {}", describe(&out));
        }
        std::thread::sleep(Duration::from_millis(1));
    }
    panic!("no freeze within 30 s; newest copy {:?}", cli.newest_copy());
}

#[test]
fn mariadb_config_set_and_writers_report_the_server() {
    let cli = Cli::new();
    let places = tempfile::tempdir().unwrap();
    let Some(db) = server("mariadb_config_set", places.path()) else {
        return;
    };
    db.sql("CREATE DATABASE shop; CREATE TABLE shop.items (id INT) ENGINE=MyISAM; CREATE TABLE shop.orders (id INT) ENGINE=InnoDB");
    db.sql("INSERT INTO shop.items VALUES (1); INSERT INTO shop.orders VALUES (1)");
    let config = cli.path("config.toml");
    std::fs::write(
        &config,
        format!(
            "[sets.shop]\nprovider = \"copy\"\n\n[[sets.shop.writers]]\nkind = \"mariadb\"\nurl = \"{}\"\n",
            db.socket().display()
        ),
    )
    .unwrap();
    let config = config.to_str().unwrap();
    let writers = cli.json(&["--config", config, "writers", "--json"]);
    let w = &writers["configured"][0];
    assert_eq!(w["state"], "stable", "{writers}");
    let found = &w["discovered"];
    assert_eq!(found["flavour"], "mariadb", "{found}");
    assert!(found["version"].as_str().unwrap().contains("MariaDB"));
    assert_eq!(found["binlog"]["format"], "ROW");
    assert_eq!(
        PathBuf::from(found["binlog"]["dir"].as_str().unwrap()),
        db.binlog_dir().unwrap()
    );
    assert_eq!(
        PathBuf::from(found["innodb_log_dir"].as_str().unwrap()),
        db.innodb_log_dir()
    );
    assert_eq!(
        found["non_transactional"][0], "shop.items (MyISAM)",
        "{found}"
    );
    let detail = w["detail"].as_str().unwrap();
    for c in ["data ", "redo ", "undo ", "binlog "] {
        assert!(detail.contains(c), "{detail}");
    }
    assert!(writers["kinds"].to_string().contains("mariadb"));

    let out = cli.run(&["--config", config, "create", "shop"]);
    assert!(out.status.success(), "{}", describe(&out));
    assert!(
        stderr(&out).contains("non-transactional engine (shop.items (MyISAM))"),
        "{}",
        describe(&out)
    );
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("mariadb-check"), "{text}");
}

/// Waits for `commits` more commits of the load, then closes the binary log, `n` times.
fn rotate_under_load(db: &MariaDbInstance, ledger: &Ledger, n: usize, commits: usize) {
    for _ in 0..n {
        let target = ledger.committed() + commits;
        assert!(ledger.wait_for_commits(target, Duration::from_secs(20)));
        db.sql("FLUSH BINARY LOGS");
    }
}

/// The binary logs and the index, as bytes: what log-analysis must not change.
fn binlog_state(db: &MariaDbInstance) -> Vec<(PathBuf, Vec<u8>)> {
    let mut state: Vec<(PathBuf, Vec<u8>)> = std::fs::read_dir(db.binlog_dir().unwrap())
        .unwrap()
        .map(|e| {
            let p = e.unwrap().path();
            let bytes = std::fs::read(&p).unwrap();
            (p, bytes)
        })
        .collect();
    state.sort();
    state
}

#[test]
fn mariadb_log_analysis_follows_the_binlogs_after_a_copy_and_stops_at_a_hole() {
    let cli = Cli::new();
    let places = tempfile::tempdir().unwrap();
    let Some(db) = server("mariadb_log_analysis", places.path()) else {
        return;
    };
    Ledger::setup(&mut db.connect()).unwrap();
    let ledger = Ledger::start(&db.opts(), 2, Duration::ZERO);
    rotate_under_load(&db, &ledger, 2, 20);
    let created = create(&cli, &db, &[]);
    let id = created["id"].as_i64().unwrap().to_string();
    rotate_under_load(&db, &ledger, 3, 20);
    assert!(ledger.wait_for_commits(ledger.committed() + 20, Duration::from_secs(20)));
    let stats = ledger.stop();
    assert!(stats.error_count == 0, "{:?}", stats.errors);
    let newest = db
        .sql("SHOW MASTER STATUS")
        .split('\t')
        .next()
        .unwrap()
        .to_string();
    let newest_gtid = db.sql("SELECT @@gtid_binlog_pos");
    let seq = |gtid: &str| gtid.rsplit('-').next().unwrap().parse::<u64>().unwrap();
    let number = |name: &str| name.rsplit_once('.').unwrap().1.parse::<u64>().unwrap();

    let before = binlog_state(&db);
    let a = cli.json(&["mariadb", "log-analysis", &id, "--json"]);
    let human = cli.ok(&["mariadb", "log-analysis", &id]);
    assert!(binlog_state(&db) == before, "log-analysis wrote nothing");
    eprintln!("{a:#}\n{human}");

    // The copy's file and the three after it, every one in the index, no hole.
    let start = a["copy"]["file"].as_str().unwrap().to_string();
    let files: Vec<&str> = a["live"]["files"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f["name"].as_str().unwrap())
        .collect();
    let expected: Vec<String> = (number(&start)..=number(&newest))
        .map(|n| format!("{BINLOG_BASENAME}.{n:06}"))
        .collect();
    assert_eq!(files, expected, "{a:#}");
    assert_eq!(files.len(), 4, "{a:#}");
    assert_eq!(a["live"]["files"][0]["from"], a["copy"]["position"]);
    assert_eq!(a["in_copy"][0]["name"], start.as_str(), "{a:#}");
    assert_eq!(a["holes"], serde_json::json!([]), "{a:#}");
    assert_eq!(a["purged"], serde_json::json!([]), "{a:#}");
    assert_eq!(a["archive"], serde_json::Value::Null);
    // Point in time: the copy's own position; roll-forward: the newest transaction.
    let copy_gtid = a["point_in_time"]["gtid"].as_str().unwrap();
    assert_eq!(a["point_in_time"]["file"], start.as_str());
    let rf = &a["roll_forward"];
    assert_eq!(rf["ends"]["kind"], "end-of-log", "{a:#}");
    assert_eq!(rf["files"], 4);
    assert_eq!(rf["last_file"], newest.as_str());
    assert_eq!(rf["without_until"], "reaches");
    assert_eq!(rf["until"], serde_json::Value::Null);
    assert_eq!(
        rf["last_transaction"]["gtid"],
        newest_gtid.as_str(),
        "{a:#}"
    );
    assert!(rf["last_transaction"]["time"]
        .as_str()
        .unwrap()
        .ends_with(" UTC"));
    assert_eq!(
        rf["transactions"].as_u64().unwrap(),
        seq(&newest_gtid) - seq(copy_gtid),
        "every transaction after the copy is in the chain: {a:#}"
    );
    assert!(
        human.contains("no holes") && human.contains(&newest_gtid),
        "{human}"
    );

    // A binary log removed from the middle: a hole, purged from the index's view, and
    // roll-forward stops before it.
    let victim = expected[1].clone();
    std::fs::remove_file(db.binlog_dir().unwrap().join(&victim)).unwrap();
    let a = cli.json(&["mariadb", "log-analysis", &id, "--json"]);
    let human = cli.ok(&["mariadb", "log-analysis", &id]);
    eprintln!("{a:#}\n{human}");
    assert_eq!(
        a["holes"],
        serde_json::json!([{"first": victim, "last": victim, "files": 1,
            "named_in_index": 1, "maybe_in_archive": false}]),
        "{a:#}"
    );
    assert_eq!(a["purged"], serde_json::json!([victim]));
    let rf = &a["roll_forward"];
    assert_eq!(
        rf["ends"],
        serde_json::json!({"kind": "missing", "file": victim})
    );
    assert_eq!(rf["files"], 1);
    assert_eq!(rf["last_file"], start.as_str());
    assert_eq!(rf["unreachable_files"], 2);
    assert_eq!(rf["without_until"], "refused");
    let first = &a["live"]["files"][0];
    assert_eq!(rf["last_transaction"]["gtid"], first["last_gtid"]);
    assert!(
        seq(rf["last_transaction"]["gtid"].as_str().unwrap()) > seq(copy_gtid),
        "roll-forward still reaches past the copy: {a:#}"
    );
    assert_eq!(
        rf["until"],
        format!("{start}:{}", first["end_position"]).as_str()
    );
    assert!(
        human.contains("HOLE") && human.contains(&victim) && human.contains("--until"),
        "{human}"
    );

    // What the report says of a restore holds: refused as it is, done with the --until.
    db.stop();
    let out = cli.run(&["restore", &id, "--mode", "roll-forward"]);
    assert!(!out.status.success(), "{}", describe(&out));
    assert!(stderr(&out).contains(&victim), "{}", describe(&out));
    // The index rewritten without it (removed from both): still refused, never replayed
    // past the missing log.
    let index = db.binlog_index().unwrap();
    let listed = std::fs::read_to_string(&index).unwrap();
    let without: String = listed
        .lines()
        .filter(|l| !l.ends_with(victim.as_str()))
        .map(|l| format!("{l}\n"))
        .collect();
    std::fs::write(&index, &without).unwrap();
    let out = cli.run(&["restore", &id, "--mode", "roll-forward"]);
    assert!(!out.status.success(), "{}", describe(&out));
    assert!(
        stderr(&out).contains(&format!("{victim} is not in the binlog index")),
        "{}",
        describe(&out)
    );
    let a = cli.json(&["mariadb", "log-analysis", &id, "--json"]);
    assert_eq!(a["roll_forward"]["without_until"], "refused", "{a:#}");
    std::fs::write(&index, &listed).unwrap();
    let until = rf["until"].as_str().unwrap();
    let out = cli.run(&[
        "restore",
        &id,
        "--mode",
        "roll-forward",
        "--until",
        until,
        "--json",
    ]);
    assert!(out.status.success(), "--until {until}: {}", describe(&out));
    let restored: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    db.start();
    let state = Ledger::check(&mut db.connect()).unwrap();
    assert!(state.balanced(), "{state:?}");

    // Clear refusals, exit 2: an unknown copy, a copy of no MariaDB server, a copy
    // without a binlog position.
    let refused = |id: &str, says: &str| {
        let out = cli.run(&["mariadb", "log-analysis", id]);
        assert_eq!(out.status.code(), Some(2), "{}", describe(&out));
        assert!(stderr(&out).contains(says), "{}", describe(&out));
        assert!(out.stdout.is_empty(), "{}", describe(&out));
    };
    refused("999", "999");
    cli.bank("bank.db", 0);
    let sqlite = cli.json(&[
        "create",
        "--sqlite",
        "bank.db",
        "--provider",
        "copy",
        "--json",
    ]);
    refused(
        &sqlite["id"].as_i64().unwrap().to_string(),
        "holds no MariaDB server",
    );
    // The pre-restore copy (the state the restore replaced) has no binlog position.
    let pre_restore = restored["pre_restore"].as_i64().unwrap().to_string();
    refused(&pre_restore, "holds no binlog position");
}
