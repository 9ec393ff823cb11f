//! `expose --until`, `--port`, `--socket-dir` and `extract --until` while production
//! runs: a PostgreSQL copy brought forward with the WAL after it (archived and still
//! live) to a moment after the copy, on a loopback port where the copy's own password is
//! asked for; a target past the WAL there is refused naming the newest commit; a port
//! in use and a socket directory every user can enter are refused before anything is
//! built; a copy holding recycled WAL files under the names the live server has written
//! since is brought forward with the live segments, and a link the cluster's owner
//! planted among them is not followed.

use std::path::Path;
use std::time::{Duration, Instant};

use shadowcopy_testing::postgres::Ledger;

use crate::support::{describe, stderr, Cli};

/// A loopback port nothing listens on right now.
fn free_port() -> u16 {
    std::net::TcpListener::bind(("127.0.0.1", 0))
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// `expose ID --until TARGET --port P --json` on a free port: the port.
fn expose_on_a_port(cli: &Cli, id: &str, target: &str) -> u16 {
    let port = free_port();
    let record = cli.json(&[
        "expose",
        id,
        "--until",
        target,
        "--port",
        &port.to_string(),
        "--json",
    ]);
    assert_eq!(record["exposed"][0]["port"], port, "{record:#}");
    port
}

fn assert_nothing_exposed(cli: &Cli) {
    let listed = cli.json(&["exposed", "--json"]);
    assert!(listed.as_array().unwrap().is_empty(), "{listed:#}");
}

#[test]
fn a_postgres_copy_is_exposed_at_a_moment_after_it_on_a_port_with_its_own_passwords() {
    let test = "a_postgres_copy_is_exposed_at_a_moment_after_it_on_a_port_with_its_own_passwords";
    let cli = Cli::new();
    let Some((cluster, wal_archive)) = crate::postgres::archiving_cluster(test, &cli) else {
        return;
    };
    Ledger::setup(&mut cluster.connect()).unwrap();
    // An account with a password, which a port exposure asks for.
    cluster.psql("CREATE ROLE reader LOGIN PASSWORD 'copy-secret'; GRANT SELECT, INSERT ON ALL TABLES IN SCHEMA public TO reader; GRANT USAGE ON ALL SEQUENCES IN SCHEMA public TO reader");
    // Recovery settings left in the cluster's postgresql.auto.conf (as an earlier
    // restore or a hand-made standby leaves them) go with every copy: the exposure must
    // not follow them.
    cluster.psql("ALTER SYSTEM SET recovery_target_time = '2000-01-01 00:00:00+00'");
    cluster.psql("ALTER SYSTEM SET restore_command = '/bin/false'");
    let ledger = Ledger::start(&cluster.config(), 2, Duration::ZERO);
    assert!(ledger.wait_for_commits(50, Duration::from_secs(30)));
    let created = crate::postgres::create(&cli, &cluster, &wal_archive);
    let id = created["id"].as_i64().unwrap().to_string();

    // The moment to go back to, well after the copy: some WAL since is archived (a
    // switch), the newest only in the live WAL directory.
    assert!(ledger.wait_for_commits(ledger.committed() + 100, Duration::from_secs(30)));
    cluster.psql("SELECT pg_switch_wal()");
    assert!(ledger.wait_for_commits(ledger.committed() + 100, Duration::from_secs(30)));
    let before_target = Instant::now();
    let target = cluster.psql(
        "SELECT to_char(clock_timestamp() AT TIME ZONE 'UTC', 'YYYY-MM-DD HH24:MI:SS.US') || '+00'",
    );
    std::thread::sleep(Duration::from_secs(2));
    let after_target = Instant::now();
    assert!(ledger.wait_for_commits(ledger.committed() + 100, Duration::from_secs(30)));
    let acked_before_target = ledger.acknowledged_before(before_target);
    let acked_after_target: Vec<i64> = {
        let later = ledger.acknowledged_before(Instant::now());
        let early = ledger.acknowledged_before(after_target);
        later.into_iter().filter(|id| !early.contains(id)).collect()
    };
    assert!(!acked_after_target.is_empty());

    // Bad input first, refused before anything is built.
    let taken = std::net::TcpListener::bind(("127.0.0.1", 0)).unwrap();
    let busy = taken.local_addr().unwrap().port().to_string();
    let out = cli.run(&["expose", &id, "--port", &busy]);
    assert_eq!(out.status.code(), Some(2), "{}", describe(&out));
    assert!(
        stderr(&out).contains(&format!("--port {busy} cannot be used")),
        "{}",
        describe(&out)
    );
    drop(taken);
    let open_dir = cli.path("sockets-for-everyone");
    std::fs::create_dir(&open_dir).unwrap();
    std::fs::set_permissions(
        &open_dir,
        std::os::unix::fs::PermissionsExt::from_mode(0o1777),
    )
    .unwrap();
    let out = cli.run(&["expose", &id, "--socket-dir", open_dir.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(2), "{}", describe(&out));
    assert!(
        stderr(&out).contains("can be entered by every user"),
        "{}",
        describe(&out)
    );
    let out = cli.run(&["expose", &id, "--until", "2026-01-01 00:00:00"]);
    assert!(!out.status.success(), "{}", describe(&out));
    assert!(
        stderr(&out).contains("names no time zone"),
        "{}",
        describe(&out)
    );
    let out = cli.run(&["expose", &id, "--until", "2999-01-01 00:00:00+00"]);
    assert!(!out.status.success(), "{}", describe(&out));
    assert!(
        stderr(&out).contains("ends before that target") && stderr(&out).contains("newest commit"),
        "{}",
        describe(&out)
    );
    assert_nothing_exposed(&cli);

    // At the target, on a port: the copy's own password is asked for there.
    let port = expose_on_a_port(&cli, &id, &target);
    let tcp = |password: Option<&str>| {
        let mut config = postgres::Config::new();
        config
            .host("127.0.0.1")
            .port(port)
            .user("reader")
            .dbname("postgres");
        if let Some(p) = password {
            config.password(p);
        }
        config.connect(postgres::NoTls)
    };
    assert!(tcp(None).is_err(), "no password, no entry");
    assert!(tcp(Some("guess")).is_err(), "a wrong password, no entry");
    let mut client = tcp(Some("copy-secret")).unwrap();
    let state = Ledger::check(&mut client).unwrap();
    state.verify(&acked_before_target).unwrap();
    assert!(state.balanced(), "{state:?}");
    assert_eq!(
        state.missing(&acked_after_target).len(),
        acked_after_target.len(),
        "nothing committed after the target is there"
    );
    let paused: String = client
        .query_one("SELECT pg_get_wal_replay_pause_state()", &[])
        .unwrap()
        .get(0);
    assert_eq!(paused, "paused");
    // Read-only, even for an account that may write in production.
    let refused = client
        .batch_execute("INSERT INTO ledger (writer, seq, amount) VALUES (0, 0, 0)")
        .unwrap_err();
    let why = refused
        .as_db_error()
        .map(|d| d.message().to_string())
        .unwrap_or_default();
    assert!(why.contains("read-only"), "{refused:?}");
    drop(client);
    cli.ok(&["unexpose", "--all"]);

    // extract --until: the same moment's rows, in CSV, exposed and closed around it.
    let csv = cli.ok(&[
        "extract", &id, "--until", &target, "--table", "ledger", "--format", "csv",
    ]);
    let rows = csv.lines().count() - 1;
    assert_eq!(rows, state.ids.len(), "{}", &csv[..csv.len().min(300)]);
    assert_nothing_exposed(&cli);
    assert!(cluster.is_running());
    let stats = ledger.stop();
    assert!(stats.errors.is_empty(), "{:?}", stats.errors);

    // A moment after the last commit (the load has stopped): nothing was committed
    // between, so the copy opens right after that commit, holding every row.
    std::thread::sleep(Duration::from_millis(500));
    let quiet = cluster.psql(
        "SELECT to_char(clock_timestamp() AT TIME ZONE 'UTC', 'YYYY-MM-DD HH24:MI:SS.US') || '+00'",
    );
    let csv = cli.ok(&[
        "extract", &id, "--until", &quiet, "--table", "ledger", "--format", "csv",
    ]);
    let production = Ledger::check(&mut cluster.connect()).unwrap();
    assert_eq!(csv.lines().count() - 1, production.ids.len());
    assert!(production.missing(&stats.acknowledged).is_empty());
}

#[test]
fn a_socket_directory_of_the_user_s_choosing_holds_the_exposed_copy_s_socket() {
    let test = "a_socket_directory_of_the_user_s_choosing_holds_the_exposed_copy_s_socket";
    let cli = Cli::new();
    let Some((cluster, wal_archive)) = crate::postgres::archiving_cluster(test, &cli) else {
        return;
    };
    Ledger::setup(&mut cluster.connect()).unwrap();
    let created = crate::postgres::create(&cli, &cluster, &wal_archive);
    let id = created["id"].as_i64().unwrap().to_string();
    // A directory the cluster's owner can write in, closed to others.
    let dir = cli.path("expose-sockets");
    shadowcopy_testing::postgres::make_postgres_dir(&dir).unwrap();
    std::fs::set_permissions(&dir, std::os::unix::fs::PermissionsExt::from_mode(0o750)).unwrap();
    let record = cli.json(&[
        "expose",
        &id,
        "--socket-dir",
        dir.to_str().unwrap(),
        "--json",
    ]);
    let exposed = &record["exposed"][0];
    assert_eq!(exposed["address"], dir.to_str().unwrap(), "{record:#}");
    let port = exposed["port"].as_u64().unwrap() as u16;
    assert_ne!(port, cluster.port());
    let socket = dir.join(format!(".s.PGSQL.{port}"));
    assert!(socket.exists(), "{record:#}");
    let pid = exposed["pid"].as_u64().unwrap() as i32;
    // Killed: the socket and its lock it could not remove are removed by the next
    // command that closes it.
    rustix::process::kill_process(
        rustix::process::Pid::from_raw(pid).unwrap(),
        rustix::process::Signal::KILL,
    )
    .unwrap();
    let began = Instant::now();
    while Path::new(&format!("/proc/{pid}")).exists() && began.elapsed() < Duration::from_secs(10) {
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_nothing_exposed(&cli);
    assert!(!socket.exists(), "the socket was left in {}", dir.display());
    assert!(!dir.join(format!(".s.PGSQL.{port}.lock")).exists());
    assert!(dir.exists());
}

#[test]
fn a_mariadb_copy_is_brought_forward_with_the_binary_logs_and_exposed_on_a_port() {
    use mysql::prelude::Queryable;
    use shadowcopy_testing::mariadb::Ledger;
    let test = "a_mariadb_copy_is_brought_forward_with_the_binary_logs_and_exposed_on_a_port";
    let cli = Cli::new();
    let places = tempfile::tempdir().unwrap();
    let Some(db) = crate::mariadb::server(test, places.path()) else {
        return;
    };
    Ledger::setup(&mut db.connect()).unwrap();
    db.sql("CREATE USER reader@'%' IDENTIFIED BY 'copy-secret'; GRANT SELECT, INSERT ON shadowcopy.* TO reader@'%'");
    let ledger = Ledger::start(&db.opts(), 2, Duration::ZERO);
    assert!(ledger.wait_for_commits(100, Duration::from_secs(30)));
    let created = crate::mariadb::create(&cli, &db, &[]);
    let id = created["id"].as_i64().unwrap().to_string();
    assert!(ledger.wait_for_commits(ledger.committed() + 100, Duration::from_secs(30)));
    db.sql("FLUSH BINARY LOGS");
    assert!(ledger.wait_for_commits(ledger.committed() + 100, Duration::from_secs(30)));
    // The target: a whole second of the server's clock (binlog events carry seconds);
    // what was acknowledged before that second began is in, what came a second after
    // it is not.
    let asked = Instant::now();
    let now = db.sql("SELECT DATE_FORMAT(UTC_TIMESTAMP(6), '%Y-%m-%d %H:%i:%s.%f')");
    let (whole, fraction) = now.trim().split_once('.').unwrap();
    let fraction = Duration::from_micros(fraction.parse().unwrap());
    let target = format!("{whole}Z");
    let second_began = asked - fraction - Duration::from_millis(100);
    std::thread::sleep(Duration::from_millis(2500));
    let late_from = Instant::now();
    assert!(ledger.wait_for_commits(ledger.committed() + 100, Duration::from_secs(30)));
    let acked_before = ledger.acknowledged_before(second_began);
    let late: Vec<i64> = {
        let early = ledger.acknowledged_before(late_from);
        ledger
            .acknowledged_before(Instant::now())
            .into_iter()
            .filter(|id| !early.contains(id))
            .collect()
    };
    assert!(!late.is_empty());

    // Targets past the binary logs: refused before anything is built, naming the newest
    // transaction.
    // Before the copy: refused too (a copy only goes forward).
    for before in ["0-1-1", "2000-01-01 00:00:00Z"] {
        let out = cli.run(&["expose", &id, "--until", before]);
        assert!(!out.status.success(), "{}", describe(&out));
        assert!(
            stderr(&out).contains("is before the copy"),
            "{}",
            describe(&out)
        );
    }
    for beyond in ["0-1-999999999", "2999-01-01 00:00:00Z"] {
        let out = cli.run(&["expose", &id, "--until", beyond]);
        assert!(!out.status.success(), "{}", describe(&out));
        assert!(
            stderr(&out).contains("past the binary logs there are")
                && stderr(&out).contains("the newest transaction is GTID"),
            "{}",
            describe(&out)
        );
    }
    assert_nothing_exposed(&cli);

    let port = expose_on_a_port(&cli, &id, &target);
    let tcp = |password: Option<&str>| {
        mysql::Conn::new(
            mysql::OptsBuilder::new()
                .ip_or_hostname(Some("127.0.0.1"))
                .tcp_port(port)
                .user(Some("reader"))
                .pass(password),
        )
    };
    assert!(tcp(None).is_err(), "no password, no entry");
    assert!(tcp(Some("guess")).is_err(), "a wrong password, no entry");
    let mut conn = tcp(Some("copy-secret")).unwrap();
    let state = Ledger::check(&mut conn).unwrap();
    state.verify(&acked_before).unwrap();
    assert!(state.balanced(), "{state:?}");
    assert_eq!(
        state.missing(&late).len(),
        late.len(),
        "nothing after the target"
    );
    let refused = conn
        .query_drop("INSERT INTO shadowcopy.ledger (writer, seq, amount) VALUES (0, 0, 0)")
        .unwrap_err()
        .to_string();
    assert!(refused.to_lowercase().contains("read"), "{refused}");
    drop(conn);
    // extract works over its socket as root while it is open.
    let csv = cli.ok(&[
        "extract",
        &id,
        "--table",
        "shadowcopy.ledger",
        "--format",
        "csv",
    ]);
    assert_eq!(csv.lines().count() - 1, state.ids.len());
    cli.ok(&["unexpose", "--all"]);
    let stats = ledger.stop();
    assert!(stats.errors.is_empty(), "{:?}", stats.errors);
}

/// The copy's `pg_wal` holds recycled files (old segments renamed to future names, stale
/// inside); the live server has since written real WAL under one of those names, the
/// current one, not archived yet. `--until` just after the newest commit must read the
/// live segment, not the copy's stale file of that name.
#[test]
fn expose_until_reads_the_live_segment_where_the_copy_holds_a_recycled_file_of_that_name() {
    let test =
        "expose_until_reads_the_live_segment_where_the_copy_holds_a_recycled_file_of_that_name";
    let cli = Cli::new();
    let Some((cluster, wal_archive)) = crate::postgres::archiving_cluster(test, &cli) else {
        return;
    };
    cluster.psql("CREATE TABLE filler (x text); CREATE TABLE marker (n int)");
    // About `mb` MiB of WAL: rows of 1 KiB, below the size PostgreSQL compresses.
    let fill = |mb: u32| {
        cluster.psql(&format!(
            "INSERT INTO filler SELECT repeat(md5(g::text), 32) FROM generate_series(1, {}) g",
            mb * 900
        ));
    };
    let current = || cluster.psql("SELECT pg_walfile_name(pg_current_wal_lsn())");
    let future = || -> Vec<String> {
        let now = current();
        let mut names: Vec<String> = std::fs::read_dir(cluster.wal_dir())
            .unwrap()
            .filter_map(|e| e.ok())
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .filter(|n| n.len() == 24 && n.as_str() > now.as_str())
            .collect();
        names.sort();
        names
    };
    for _ in 0..4 {
        fill(40);
        cluster.psql("CHECKPOINT");
    }
    let recycled = future();
    assert!(
        recycled.len() >= 2,
        "no recycled segments to test with: {recycled:?}"
    );
    let created = crate::postgres::create(&cli, &cluster, &wal_archive);
    let id = created["id"].as_i64().unwrap().to_string();
    // Real WAL into the first recycled names; the last of them is the current segment,
    // partly written and not archived.
    fill(20);
    let now = current();
    assert!(
        recycled.contains(&now),
        "the current segment {now} was not a recycled file at the copy: {recycled:?}"
    );
    cluster.psql("INSERT INTO marker VALUES (42)");
    let target = cluster.psql(
        "SELECT to_char(clock_timestamp() AT TIME ZONE 'UTC', 'YYYY-MM-DD HH24:MI:SS.US') || '+00'",
    );
    std::thread::sleep(Duration::from_millis(300));
    // The attacker: the cluster's owner plants a link named like a timeline history file
    // in the live WAL directory, to a file only root may read. Root copies the live WAL
    // into the sandbox, which the owner then gets: the link must not be followed.
    let secret = cli.path("root-only-secret");
    std::fs::write(&secret, "TOP SECRET\n").unwrap();
    std::fs::set_permissions(&secret, std::os::unix::fs::PermissionsExt::from_mode(0o600)).unwrap();
    let planted = cluster.wal_dir().join("00000099.history");
    std::os::unix::fs::symlink(&secret, &planted).unwrap();
    let record = cli.json(&["expose", &id, "--until", &target, "--json"]);
    std::fs::remove_file(&planted).unwrap();
    let scratch = Path::new(record["scratch"].as_str().unwrap());
    let sandbox_wal = std::fs::read_dir(scratch)
        .unwrap()
        .filter_map(|e| e.ok())
        .map(|e| e.path().join("data/pg_wal"))
        .find(|p| p.is_dir())
        .expect("the sandbox's pg_wal");
    assert!(
        std::fs::symlink_metadata(sandbox_wal.join("00000099.history")).is_err(),
        "the planted link was copied into {}",
        sandbox_wal.display()
    );
    let out = cli.run(&["extract", &id, "--table", "marker", "--format", "csv"]);
    assert!(out.status.success(), "{}", describe(&out));
    assert_eq!(String::from_utf8_lossy(&out.stdout), "n\n42\n");
    cli.ok(&["unexpose", "--all"]);
    assert_nothing_exposed(&cli);
}
