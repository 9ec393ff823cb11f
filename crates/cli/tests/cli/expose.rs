//! `expose`, `exposed`, `unexpose` while production runs: a PostgreSQL copy opened as a
//! paused hot standby on a private socket (it holds every commit acknowledged before the
//! copy, refuses writes, and production keeps committing), a SQLite copy as a read-only
//! checkpointed file; a second exposure of the same copy, a copy that failed
//! verification, an unknown exposure refused; a server killed with kill -9, a TTL that
//! passed and a command that died while opening are all cleaned by the next command.

use std::path::Path;
use std::time::{Duration, Instant};

use serde_json::Value;
use shadowcopy_testing::postgres::Ledger;

use crate::support::{describe, stderr, Cli};

fn gone(pid: u32, within: Duration) -> bool {
    let began = Instant::now();
    while began.elapsed() < within {
        if !Path::new(&format!("/proc/{pid}")).exists() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    false
}

/// Feeds `rows` (what `extract` wrote) to a database client, which must succeed.
fn load(client: &mut std::process::Command, rows: &str) {
    let mut child = client
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    std::io::Write::write_all(&mut child.stdin.take().unwrap(), rows.as_bytes()).unwrap();
    let loaded = child.wait_with_output().unwrap();
    assert!(loaded.status.success(), "{}", describe(&loaded));
}

/// The one thing exposure `record` opened: (address, pid).
fn opened(record: &Value) -> (String, Option<u32>) {
    let exposed = record["exposed"].as_array().unwrap();
    assert_eq!(exposed.len(), 1, "{record:#}");
    (
        exposed[0]["address"].as_str().unwrap().to_string(),
        exposed[0]["pid"].as_u64().map(|p| p as u32),
    )
}

#[test]
fn a_postgres_copy_is_exposed_as_a_paused_standby_beside_production() {
    let test = "a_postgres_copy_is_exposed_as_a_paused_standby_beside_production";
    let cli = Cli::new();
    let Some((cluster, wal_archive)) = crate::postgres::archiving_cluster(test, &cli) else {
        return;
    };
    Ledger::setup(&mut cluster.connect()).unwrap();
    let ledger = Ledger::start(&cluster.config(), 2, Duration::ZERO);
    assert!(ledger.wait_for_commits(50, Duration::from_secs(30)));
    let began = Instant::now();
    let created = crate::postgres::create(&cli, &cluster, &wal_archive);
    let acked = ledger.acknowledged_before(began);
    let id = created["id"].as_i64().unwrap().to_string();

    let record = cli.json(&["expose", &id, "--json"]);
    let (socket, pid) = opened(&record);
    let pid = pid.expect("a server serves it");
    let scratch = record["scratch"].as_str().unwrap().to_string();
    let connect = record["exposed"][0]["connect"].as_str().unwrap();
    let user = connect
        .split_whitespace()
        .find_map(|w| w.trim_matches('\'').strip_prefix("user="))
        .unwrap()
        .to_string();
    let mut client = postgres::Config::new()
        .host_path(&socket)
        .port(5432)
        .user(&user)
        .dbname("postgres")
        .connect(postgres::NoTls)
        .unwrap();
    // The copy's state: every commit acknowledged before it, balanced; read-only and
    // paused in recovery, never promoted.
    let state = Ledger::check(&mut client).unwrap();
    state.verify(&acked).unwrap();
    assert!(state.balanced(), "{state:?}");
    let row = client
        .query_one(
            "SELECT pg_is_in_recovery(), pg_get_wal_replay_pause_state()",
            &[],
        )
        .unwrap();
    assert!(row.get::<_, bool>(0));
    assert_eq!(row.get::<_, String>(1), "paused");
    assert!(client.batch_execute("CREATE TABLE probe (x int)").is_err());
    drop(client);
    // Production never stopped and kept committing.
    assert!(ledger.wait_for_commits(ledger.committed() + 20, Duration::from_secs(30)));

    // A row deleted by mistake in production, found in the copy and put back while the
    // load runs: `extract` piped into psql.
    let lost = acked[acked.len() / 2];
    cluster.psql(&format!("DELETE FROM ledger WHERE id = {lost}"));
    let state = Ledger::check(&mut cluster.connect()).unwrap();
    assert_eq!(state.missing(&acked), vec![lost]);
    let rows = cli.ok(&[
        "extract",
        &id,
        "--table",
        "ledger",
        "--where",
        &format!("id = {lost}"),
    ]);
    assert!(rows.contains("COPY ledger"), "{rows}");
    load(
        std::process::Command::new("psql").args([
            &cluster.url(),
            "-v",
            "ON_ERROR_STOP=1",
            "-q",
            "-f",
            "-",
        ]),
        &rows,
    );
    let state = Ledger::check(&mut cluster.connect()).unwrap();
    state.verify(&acked).unwrap();
    assert!(state.balanced(), "{state:?}");
    // A table that is not there: refused, with the closest names; nothing stays open.
    let out = cli.run(&["extract", &id, "--table", "legder"]);
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("there is no table \"legder\"") && stderr(&out).contains("ledger"),
        "{}",
        describe(&out)
    );

    // Listed; the same copy twice is refused, naming the open exposure.
    let listed = cli.json(&["exposed", "--json"]);
    assert_eq!(listed.as_array().unwrap().len(), 1);
    let out = cli.run(&["expose", &id]);
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("already exposed"),
        "{}",
        describe(&out)
    );

    // The server killed with kill -9: the next command closes what is left.
    rustix::process::kill_process(
        rustix::process::Pid::from_raw(pid as i32).unwrap(),
        rustix::process::Signal::KILL,
    )
    .unwrap();
    assert!(gone(pid, Duration::from_secs(10)));
    let listed = cli.json(&["exposed", "--json"]);
    assert!(listed.as_array().unwrap().is_empty(), "{listed:#}");
    assert!(!Path::new(&scratch).exists(), "{scratch} left behind");

    // Opened again and closed on request: server stopped, scratch and socket removed.
    let record = cli.json(&["expose", &id, "--json"]);
    let (socket, pid) = opened(&record);
    let pid = pid.unwrap();
    let scratch = record["scratch"].as_str().unwrap().to_string();
    let closed = cli.json(&["unexpose", &record["id"].to_string(), "--json"]);
    assert_eq!(closed.as_array().unwrap().len(), 1, "{closed:#}");
    assert!(gone(pid, Duration::from_secs(5)));
    assert!(!Path::new(&scratch).exists());
    assert!(!Path::new(&socket).exists());
    assert!(cluster.is_running());
    let stats = ledger.stop();
    assert!(stats.committed > 0);
}

#[test]
fn a_sqlite_copy_is_exposed_as_a_read_only_file_and_cleaned_after_its_ttl() {
    let cli = Cli::new();
    let db = cli.bank("bank.db", 0);
    // Transfers run the whole time; a copy, then one of the transfers it holds is
    // deleted by mistake in production.
    let load = shadowcopy_sample::start_transfers(&db, 2, Duration::from_millis(2));
    let began = Instant::now();
    while load.committed() < 50 && began.elapsed() < Duration::from_secs(30) {
        std::thread::sleep(Duration::from_millis(20));
    }
    let began = Instant::now();
    let created = cli.json(&[
        "create",
        "--sqlite",
        "bank.db",
        "--provider",
        "copy",
        "--json",
    ]);
    let acked = load.acknowledged_before(began);
    let id = created["id"].as_i64().unwrap().to_string();
    let lost = acked[acked.len() / 2];
    let conn = rusqlite::Connection::open(&db).unwrap();
    conn.busy_timeout(Duration::from_secs(10)).unwrap();
    conn.execute("DELETE FROM transfers WHERE id = ?1", [lost])
        .unwrap();
    drop(conn);
    assert!(!shadowcopy_sample::transfer_ids(&db)
        .unwrap()
        .contains(&lost));

    let exposed_at = Instant::now();
    let record = cli.json(&["expose", &id, "--ttl", "5s", "--json"]);
    let (file, pid) = opened(&record);
    assert_eq!(pid, None);
    // The copy's rows: every transfer acknowledged before it, balanced; read-only,
    // checkpointed (no WAL beside it).
    let in_copy = shadowcopy_sample::transfer_ids(Path::new(&file)).unwrap();
    assert!(acked.iter().all(|t| in_copy.contains(t)));
    assert!(shadowcopy_sample::summarize(Path::new(&file))
        .unwrap()
        .balanced());
    let exposed =
        rusqlite::Connection::open_with_flags(&file, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY)
            .unwrap();
    assert!(exposed.execute("DELETE FROM transfers", []).is_err());
    drop(exposed);
    let mode = std::fs::metadata(&file).unwrap().permissions();
    assert!(mode.readonly());
    {
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(
            mode.mode() & 0o777,
            0o400,
            "private to the database's owner"
        );
    }
    assert!(
        !Path::new(&format!("{file}-wal")).exists(),
        "checkpointed: no WAL beside it"
    );

    // The lost transfer, as statements for sqlite3 in a new file, loaded into production
    // while the transfers go on.
    let out_file = cli.path("lost.sql");
    cli.ok(&[
        "extract",
        &id,
        "--table",
        "TRANSFERS",
        "--where",
        &format!("id = {lost}"),
        "-o",
        out_file.to_str().unwrap(),
    ]);
    let sql = std::fs::read_to_string(&out_file).unwrap();
    assert_eq!(sql.matches("INSERT INTO").count(), 1, "{sql}");
    let loaded = std::process::Command::new("sqlite3")
        .arg("-cmd")
        .arg(".timeout 10000")
        .arg(&db)
        .stdin(std::fs::File::open(&out_file).unwrap())
        .output()
        .unwrap();
    assert!(loaded.status.success(), "{}", describe(&loaded));
    assert!(shadowcopy_sample::transfer_ids(&db)
        .unwrap()
        .contains(&lost));
    // CSV with a header.
    let csv = cli.ok(&[
        "extract", &id, "--table", "accounts", "--where", "id <= 2", "--format", "csv",
    ]);
    assert_eq!(csv.lines().next(), Some("id,balance"), "{csv}");
    assert_eq!(csv.lines().count(), 3, "{csv}");
    let stats = load.stop();
    assert!(stats.errors.is_empty(), "{:?}", stats.errors);
    assert!(shadowcopy_sample::summarize(&db).unwrap().balanced());
    // An existing output file is refused before anything runs; a missing table names
    // the ones there are.
    let out = cli.run(&[
        "extract",
        &id,
        "--table",
        "accounts",
        "-o",
        out_file.to_str().unwrap(),
    ]);
    assert_eq!(out.status.code(), Some(2), "{}", describe(&out));
    let out = cli.run(&["extract", &id, "--table", "acounts"]);
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("the closest: accounts"),
        "{}",
        describe(&out)
    );

    // Past its TTL, the next command closes it.
    std::thread::sleep(Duration::from_millis(5500).saturating_sub(exposed_at.elapsed()));
    let listed = cli.json(&["exposed", "--json"]);
    assert!(listed.as_array().unwrap().is_empty(), "{listed:#}");
    assert!(!Path::new(&file).exists());

    // With nothing exposed, extract opens the copy for the time it takes and closes it.
    let csv = cli.ok(&["extract", &id, "--table", "accounts", "--format", "csv"]);
    assert!(csv.starts_with("id,balance\n"), "{csv}");
    let listed = cli.json(&["exposed", "--json"]);
    assert!(listed.as_array().unwrap().is_empty(), "{listed:#}");

    // Bad input: an unknown exposure, a copy that does not exist; nothing is left.
    let out = cli.run(&["unexpose", "99"]);
    assert_eq!(out.status.code(), Some(2), "{}", describe(&out));
    assert!(
        stderr(&out).contains("no exposure 99"),
        "{}",
        describe(&out)
    );
    let out = cli.run(&["expose", "99"]);
    assert!(!out.status.success());
    assert!(stderr(&out).contains("99"), "{}", describe(&out));
    let out = cli.run(&["unexpose"]);
    assert_eq!(out.status.code(), Some(2), "{}", describe(&out));
    for ttl in ["0s", "100000y"] {
        let out = cli.run(&["expose", &id, "--ttl", ttl]);
        assert_eq!(out.status.code(), Some(2), "{}", describe(&out));
        assert!(stderr(&out).contains("out of range"), "{}", describe(&out));
    }

    // A copy that failed verification: refused, unless forced (and then its damage
    // stops the open, which leaves nothing behind).
    let location = cli.json(&["show", &id, "--json"])["location"]
        .as_str()
        .unwrap()
        .to_string();
    let in_copy = Path::new(&location)
        .join("files")
        .join(db.strip_prefix("/").unwrap());
    std::fs::write(&in_copy, b"not a database").unwrap();
    assert_eq!(cli.run(&["verify", &id]).status.code(), Some(4));
    let out = cli.run(&["expose", &id]);
    assert_eq!(out.status.code(), Some(2), "{}", describe(&out));
    assert!(
        stderr(&out).contains("failed verification"),
        "{}",
        describe(&out)
    );
    let out = cli.run(&["expose", &id, "--force"]);
    assert!(!out.status.success(), "{}", describe(&out));
    let listed = cli.json(&["exposed", "--json"]);
    assert!(listed.as_array().unwrap().is_empty(), "{listed:#}");
    let copies = Path::new(&location).parent().unwrap();
    let leftovers: Vec<_> = std::fs::read_dir(copies)
        .unwrap()
        .chain(std::fs::read_dir(copies.parent().unwrap()).unwrap())
        .filter_map(|e| e.ok())
        .filter(|e| e.file_name().to_string_lossy().contains("exposed"))
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");

    // --until and --port do not apply to a file; a deleted copy is gone.
    let fresh = cli.json(&[
        "create",
        "--sqlite",
        db.to_str().unwrap(),
        "--provider",
        "copy",
        "--json",
    ]);
    let fresh = fresh["id"].as_i64().unwrap().to_string();
    let out = cli.run(&["expose", &fresh, "--until", "2026-01-01 00:00:00+00"]);
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("SQLite keeps no log past a copy"),
        "{}",
        describe(&out)
    );
    let port = std::net::TcpListener::bind(("127.0.0.1", 0))
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
        .to_string();
    let out = cli.run(&["expose", &fresh, "--port", &port]);
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("a SQLite copy is a file"),
        "{}",
        describe(&out)
    );
    cli.ok(&["delete", &fresh]);
    let out = cli.run(&["expose", &fresh]);
    assert_eq!(out.status.code(), Some(2), "{}", describe(&out));
    assert!(stderr(&out).contains(&fresh), "{}", describe(&out));
    assert!(cli
        .json(&["exposed", "--json"])
        .as_array()
        .unwrap()
        .is_empty());
}

#[test]
fn a_mariadb_copy_is_exposed_read_only_and_a_row_deleted_by_mistake_comes_back() {
    use shadowcopy_testing::mariadb::Ledger;
    let test = "a_mariadb_copy_is_exposed_read_only_and_a_row_deleted_by_mistake_comes_back";
    let cli = Cli::new();
    let places = tempfile::tempdir().unwrap();
    let Some(db) = crate::mariadb::server(test, places.path()) else {
        return;
    };
    Ledger::setup(&mut db.connect()).unwrap();
    let ledger = Ledger::start(&db.opts(), 2, Duration::ZERO);
    assert!(ledger.wait_for_commits(100, Duration::from_secs(30)));
    let began = Instant::now();
    let created = crate::mariadb::create(&cli, &db, &[]);
    let acked = ledger.acknowledged_before(began);
    let id = created["id"].as_i64().unwrap().to_string();

    let record = cli.json(&["expose", &id, "--json"]);
    let (socket, pid) = opened(&record);
    let pid = pid.expect("a server serves it");
    let scratch = record["scratch"].as_str().unwrap().to_string();
    let mut conn = mysql::Conn::new(
        mysql::OptsBuilder::new()
            .user(Some("root"))
            .socket(Some(socket.clone())),
    )
    .unwrap();
    let state = Ledger::check(&mut conn).unwrap();
    state.verify(&acked).unwrap();
    assert!(state.balanced(), "{state:?}");
    use mysql::prelude::Queryable;
    assert!(conn
        .query_drop("INSERT INTO shadowcopy.ledger (writer, seq, amount) VALUES (0, 0, 0)")
        .is_err());
    drop(conn);

    // A row deleted by mistake in production comes back through `extract` piped into
    // the mariadb client, while the load runs.
    let lost = acked[acked.len() / 2];
    db.sql(&format!("DELETE FROM shadowcopy.ledger WHERE id = {lost}"));
    let rows = cli.ok(&[
        "extract",
        &id,
        "--table",
        "shadowcopy.ledger",
        "--where",
        &format!("id = {lost}"),
    ]);
    assert!(rows.contains("INSERT INTO"), "{rows}");
    load(
        std::process::Command::new(shadowcopy_testing::mariadb::mariadb_bin("mariadb"))
            .arg("--no-defaults")
            .arg(format!("--socket={}", db.socket().display()))
            .args(["--user=root", "shadowcopy"]),
        &rows,
    );
    let state = Ledger::check(&mut db.connect()).unwrap();
    state.verify(&acked).unwrap();
    assert!(state.balanced(), "{state:?}");
    // CSV, the database named apart; a table that is not there.
    let csv = cli.ok(&[
        "extract",
        &id,
        "--table",
        "ledger",
        "--database",
        "shadowcopy",
        "--format",
        "csv",
        "--where",
        "id <= 3",
    ]);
    assert!(csv.starts_with("id,writer,seq,amount,at\n"), "{csv}");
    assert_eq!(csv.lines().count(), 4, "{csv}");
    let out = cli.run(&["extract", &id, "--table", "shadowcopy.legder"]);
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("the closest: shadowcopy.ledger"),
        "{}",
        describe(&out)
    );

    let closed = cli.json(&["unexpose", "--all", "--json"]);
    assert_eq!(closed.as_array().unwrap().len(), 1, "{closed:#}");
    assert!(gone(pid, Duration::from_secs(10)));
    assert!(!Path::new(&scratch).exists());
    assert!(!Path::new(&socket).exists());
    assert!(ledger.wait_for_commits(ledger.committed() + 20, Duration::from_secs(30)));
    ledger.stop();
}

#[test]
fn the_agent_closes_an_exposure_past_its_ttl_without_any_command() {
    let cli = Cli::new();
    let db = cli.bank("bank.db", 0);
    let created = cli.json(&[
        "create",
        "--sqlite",
        "bank.db",
        "--provider",
        "copy",
        "--json",
    ]);
    let id = created["id"].as_i64().unwrap().to_string();
    let record = cli.json(&["expose", &id, "--ttl", "1s", "--json"]);
    let (file, _) = opened(&record);
    std::thread::sleep(Duration::from_millis(1200));
    assert!(Path::new(&file).exists(), "nothing closed it yet");
    let config = crate::agent::write_config(&cli, &crate::agent::set("bank", &db, ""));
    let agent = crate::agent::start(&cli, &config, "agent.log");
    let began = Instant::now();
    while Path::new(&file).exists() && began.elapsed() < Duration::from_secs(20) {
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(!Path::new(&file).exists(), "the agent did not close it");
    let catalog = rusqlite::Connection::open(cli.catalog.join("catalog.db")).unwrap();
    let open: i64 = catalog
        .query_row("SELECT count(*) FROM exposures", [], |r| r.get(0))
        .unwrap();
    assert_eq!(open, 0);
    crate::agent::stop(&cli, agent, "agent.log");
    let log = std::fs::read_to_string(cli.path("agent.log")).unwrap();
    assert!(log.contains("exposure closed"), "{log}");
}

/// A copy of plain files is exposed as a read-only bind mount of the copy's directory:
/// readable as it was, unwritable, the copy untouched; closed (also after the command
/// that opened it was killed) it is unmounted before anything below it is removed.
#[test]
fn a_copy_of_plain_files_is_mounted_read_only_and_unmounted_when_closed() {
    let test = "a_copy_of_plain_files_is_mounted_read_only_and_unmounted_when_closed";
    if !shadowcopy_testing::loopfs::require_root(test) {
        return;
    }
    let cli = Cli::new();
    let data = cli.path("site");
    std::fs::create_dir_all(data.join("conf")).unwrap();
    std::fs::write(data.join("conf/app.toml"), "port = 8080\n").unwrap();
    std::fs::write(data.join("index.html"), "<h1>v1</h1>\n").unwrap();
    let created = cli.json(&[
        "create",
        "--path",
        data.to_str().unwrap(),
        "--provider",
        "copy",
        "--json",
    ]);
    let id = created["id"].as_i64().unwrap().to_string();
    // Production changes after the copy.
    std::fs::write(data.join("index.html"), "<h1>v2</h1>\n").unwrap();

    let record = cli.json(&["expose", &id, "--json"]);
    let (at, pid) = opened(&record);
    assert_eq!(pid, None);
    let at = Path::new(&at);
    assert_eq!(
        std::fs::read_to_string(at.join("index.html")).unwrap(),
        "<h1>v1</h1>\n"
    );
    assert_eq!(
        std::fs::read_to_string(at.join("conf/app.toml")).unwrap(),
        "port = 8080\n"
    );
    // Read-only even for root.
    let err = std::fs::write(at.join("index.html"), "x").unwrap_err();
    assert_eq!(err.raw_os_error(), Some(libc_erofs()), "{err}");
    assert!(std::fs::remove_file(at.join("conf/app.toml")).is_err());
    let scratch = record["scratch"].as_str().unwrap().to_string();
    let closed = cli.json(&["unexpose", "--all", "--json"]);
    assert_eq!(closed.as_array().unwrap().len(), 1, "{closed:#}");
    assert!(!Path::new(&scratch).exists());
    assert!(!mounted_below(&scratch));
    // The copy is whole: restored elsewhere it holds v1.
    let to = cli.path("restored");
    cli.ok(&["restore", &id, "--to", to.to_str().unwrap()]);
    let restored: Vec<_> = walkdir(&to)
        .into_iter()
        .filter(|p| p.ends_with("index.html"))
        .collect();
    assert_eq!(restored.len(), 1, "{restored:?}");
    assert_eq!(
        std::fs::read_to_string(&restored[0]).unwrap(),
        "<h1>v1</h1>\n"
    );

    // The command that mounted it killed before it finished: the next command unmounts
    // (found in the mount table) before it removes the scratch.
    let record = cli.json(&["expose", &id, "--json"]);
    let scratch = record["scratch"].as_str().unwrap().to_string();
    let catalog = rusqlite::Connection::open(cli.catalog.join("catalog.db")).unwrap();
    catalog
        .execute(
            "UPDATE exposures SET state = 'opening', builder_pid = 999999999, exposed = '[]'",
            [],
        )
        .unwrap();
    drop(catalog);
    assert!(mounted_below(&scratch));
    assert!(cli
        .json(&["exposed", "--json"])
        .as_array()
        .unwrap()
        .is_empty());
    assert!(!mounted_below(&scratch), "left mounted");
    assert!(!Path::new(&scratch).exists());
    assert_eq!(
        std::fs::read_to_string(data.join("index.html")).unwrap(),
        "<h1>v2</h1>\n"
    );
}

fn libc_erofs() -> i32 {
    rustix::io::Errno::ROFS.raw_os_error()
}

fn mounted_below(dir: &str) -> bool {
    std::fs::read_to_string("/proc/self/mountinfo")
        .unwrap()
        .lines()
        .any(|l| l.split(' ').nth(4).is_some_and(|p| p.starts_with(dir)))
}

fn walkdir(dir: &Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                stack.push(p);
            } else {
                out.push(p);
            }
        }
    }
    out
}
