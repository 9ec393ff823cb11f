//! Self-tests of `shadowcopy_testing::postgres`: real clusters (as root the server runs as
//! the `postgres` user). They skip without PostgreSQL, and fail instead under
//! `SHADOWCOPY_TEST_REQUIRE_ROOT=1`.

use std::path::Path;
use std::time::{Duration, Instant};

use shadowcopy_testing::postgres::{
    pg_bin, postgres_or_skip, processes_in, AdoptOptions, Ledger, PgCluster, PgOptions, TABLESPACE,
};
use shadowcopy_testing::wait;

/// Processes whose command line names `dir` (the postmaster's `-D <dir>`).
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

#[test]
fn init_start_query_stop() {
    let t = Instant::now();
    let Some(pg) = postgres_or_skip("init_start_query_stop", PgOptions::new()) else {
        return;
    };
    eprintln!("init + start took {:?}", t.elapsed());
    assert!(pg.is_running());
    assert_eq!(pg.psql("SELECT 1"), "1");
    assert_eq!(pg.psql("SHOW fsync"), "on");
    assert_eq!(pg.psql("SHOW listen_addresses"), "");
    assert_eq!(pg.psql("SHOW wal_level"), "replica");
    assert_eq!(pg.psql("SHOW port"), pg.port().to_string());
    assert!(pg
        .socket_dir()
        .join(format!(".s.PGSQL.{}", pg.port()))
        .exists());
    assert!(pg.url().starts_with("postgresql:///postgres?host=/"));
    let mut c = pg.connect();
    let v: i32 = c.query_one("SELECT 40 + 2", &[]).unwrap().get(0);
    assert_eq!(v, 42);
    assert!(pg.try_psql("SELECT * FROM no_such_table").is_err());
    drop(c);

    pg.stop();
    assert!(!pg.is_running());
    assert!(processes_in(pg.data_dir()).is_empty());
    assert!(pg.try_psql("SELECT 1").is_err());

    let t = Instant::now();
    pg.start();
    eprintln!("restart took {:?}", t.elapsed());
    assert_eq!(pg.psql("SELECT 2"), "2");
    assert!(pg.try_start().is_err(), "a second start must be refused");
    pg.stop_immediate();
    assert!(!pg.is_running());
    pg.start();
    assert_eq!(pg.psql("SELECT 3"), "3");
    assert!(pg
        .log()
        .contains("database system is ready to accept connections"));
    pg.stop();
}

#[test]
fn separate_wal_checksums_settings_and_tablespace() {
    let places = tempfile::tempdir().unwrap();
    let ts = places.path().join("ts");
    let opts = PgOptions::new()
        .wal_dir(places.path().join("wal"))
        .data_checksums(true)
        .setting("archive_mode", "on")
        .setting("archive_command", "/bin/true")
        .tablespace_dir(&ts);
    let Some(pg) = postgres_or_skip("separate_wal_checksums_settings_and_tablespace", opts) else {
        return;
    };
    assert_eq!(pg.psql("SHOW data_checksums"), "on");
    assert_eq!(pg.psql("SHOW archive_mode"), "on");
    assert_eq!(pg.psql("SHOW archive_command"), "/bin/true");
    let wal_file = pg.psql("SELECT pg_walfile_name(pg_current_wal_lsn())");
    assert_eq!(wal_file.len(), 24, "{wal_file}");
    assert!(wal_file.chars().all(|c| c.is_ascii_hexdigit()));
    assert_eq!(
        pg.wal_dir(),
        std::fs::canonicalize(places.path().join("wal")).unwrap()
    );
    assert!(pg.wal_dir().join(&wal_file).is_file());
    let link = std::fs::read_link(pg.data_dir().join("pg_wal")).unwrap();
    assert_eq!(link, pg.wal_dir());

    assert_eq!(
        pg.tablespace_dir(),
        Some(std::fs::canonicalize(&ts).unwrap().as_path())
    );
    assert_eq!(
        pg.psql(&format!(
            "SELECT count(*) FROM pg_tablespace WHERE spcname = '{TABLESPACE}'"
        )),
        "1"
    );
    let mut c = pg.connect();
    Ledger::setup_with(&mut c, 10, Some(TABLESPACE)).unwrap();
    let rel = pg.psql("SELECT pg_relation_filepath('ledger')");
    assert!(rel.starts_with("pg_tblspc/"), "{rel}");
    assert!(pg.data_dir().join(&rel).is_file());
    let state = Ledger::check(&mut c).unwrap();
    assert!(state.balanced(), "{state:?}");
    drop(c);

    // The other programs are at hand: pg_checksums wants the server stopped.
    pg.stop();
    let out = pg
        .command("pg_checksums")
        .arg("--check")
        .arg("-D")
        .arg(pg.data_dir())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(pg_bin("pg_amcheck").is_file());
}

#[test]
fn ledger_keeps_every_acknowledged_id_and_its_balance() {
    let Some(pg) = postgres_or_skip(
        "ledger_keeps_every_acknowledged_id_and_its_balance",
        PgOptions::new(),
    ) else {
        return;
    };
    let mut c = pg.connect();
    Ledger::setup(&mut c).unwrap();
    let ledger = Ledger::start(&pg.config(), 3, Duration::ZERO);
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
}

#[test]
fn a_crash_loses_no_acknowledged_commit_and_writers_ride_it_out() {
    let Some(pg) = postgres_or_skip(
        "a_crash_loses_no_acknowledged_commit_and_writers_ride_it_out",
        PgOptions::new(),
    ) else {
        return;
    };
    Ledger::setup(&mut pg.connect()).unwrap();
    let ledger = Ledger::start(&pg.config(), 3, Duration::ZERO);
    assert!(ledger.wait_for_commits(50, Duration::from_secs(30)));
    let pm = pg.postmaster_pid().unwrap();
    pg.kill9();
    let crashed = Instant::now();
    assert!(!pg.is_running());
    assert!(processes_in(pg.data_dir()).is_empty());
    assert!(
        !Path::new(&format!("/proc/{pm}")).exists(),
        "postmaster not reaped"
    );
    let before = ledger.committed();
    wait::until(
        Duration::from_secs(30),
        || ledger.error_count() > 0,
        || "no writer saw the server go".to_string(),
    );
    let t = Instant::now();
    pg.start(); // crash recovery
    eprintln!("start with crash recovery took {:?}", t.elapsed());
    assert!(ledger.wait_for_commits(before + 50, Duration::from_secs(30)));
    let acked = ledger.acknowledged_before(crashed);
    let stats = ledger.stop();
    assert!(stats.error_count > 0, "the writers saw no crash?");
    let state = Ledger::check(&mut pg.connect()).unwrap();
    state.verify(&acked).unwrap();
    state.verify(&stats.acknowledged).unwrap();
}

#[test]
fn a_stopped_clusters_copy_can_be_adopted_and_started() {
    let Some(pg) = postgres_or_skip(
        "a_stopped_clusters_copy_can_be_adopted_and_started",
        PgOptions::new(),
    ) else {
        return;
    };
    let mut c = pg.connect();
    Ledger::setup(&mut c).unwrap();
    let ledger = Ledger::start(&pg.config(), 2, Duration::ZERO);
    assert!(ledger.wait_for_commits(20, Duration::from_secs(30)));
    let stats = ledger.stop();
    let original = Ledger::check(&mut c).unwrap();
    drop(c);
    pg.stop();

    let place = tempfile::tempdir().unwrap();
    let copy = place.path().join("data");
    let st = std::process::Command::new("cp")
        .arg("-a")
        .arg(pg.data_dir())
        .arg(&copy)
        .status()
        .unwrap();
    assert!(st.success());
    // The original runs again, on its own socket: the copy must not collide with it.
    pg.start();

    let restored = PgCluster::adopt(&copy, AdoptOptions::new().setting("archive_mode", "off"));
    assert!(!restored.is_running());
    restored.start();
    assert_ne!(restored.socket_dir(), pg.socket_dir());
    let state = Ledger::check(&mut restored.connect()).unwrap();
    state.verify(&stats.acknowledged).unwrap();
    assert_eq!(state, original);
    let data = restored.data_dir().to_path_buf();
    drop(restored);
    assert!(processes_in(&data).is_empty());
    assert!(
        data.join("PG_VERSION").is_file(),
        "adopt must not remove the data dir"
    );
    assert_eq!(pg.psql("SELECT 1"), "1");
}

#[test]
fn drop_leaves_no_server_behind_even_on_panic() {
    let Some(pg) = postgres_or_skip(
        "drop_leaves_no_server_behind_even_on_panic",
        PgOptions::new(),
    ) else {
        return;
    };
    let data = pg.data_dir().to_path_buf();
    let run = pg.run_dir().to_path_buf();
    let pm = pg.postmaster_pid().unwrap();
    let procs = processes_in(&data);
    assert!(procs.contains(&pm) && procs.len() > 1, "{procs:?}");
    let _busy = pg.connect(); // a backend too
    let t = Instant::now();
    drop(pg);
    eprintln!("drop took {:?}", t.elapsed());
    assert!(processes_in(&data).is_empty());
    assert!(
        cmdlines_naming(&data).is_empty(),
        "{:?}",
        cmdlines_naming(&data)
    );
    assert!(!run.exists(), "temp dir left behind");

    // A test that panics while its server runs.
    let data = std::sync::Mutex::new(None);
    let r = std::panic::catch_unwind(|| {
        let pg = PgCluster::init(PgOptions::new());
        *data.lock().unwrap() = Some(pg.data_dir().to_path_buf());
        let _c = pg.connect();
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
}

#[test]
fn data_and_wal_on_loop_file_systems() {
    use shadowcopy_testing::loopfs::{loopfs_or_skip, FsKind};
    let test = "data_and_wal_on_loop_file_systems";
    // Declared before the cluster: dropped after it.
    let Some(data_fs) = loopfs_or_skip(test, FsKind::Xfs, 0) else {
        return;
    };
    let Some(wal_fs) = loopfs_or_skip(test, FsKind::Ext4, 256 << 20) else {
        return;
    };
    let opts = PgOptions::new()
        .data_dir(data_fs.path().join("pgdata"))
        .wal_dir(wal_fs.path().join("pgwal"));
    let Some(pg) = postgres_or_skip(test, opts) else {
        return;
    };
    assert!(pg.data_dir().starts_with(data_fs.path()));
    assert!(pg.wal_dir().starts_with(wal_fs.path()));
    let wal_file = pg.psql("SELECT pg_walfile_name(pg_current_wal_lsn())");
    assert!(pg.wal_dir().join(wal_file).is_file());
    Ledger::setup(&mut pg.connect()).unwrap();
    let ledger = Ledger::start(&pg.config(), 2, Duration::ZERO);
    assert!(ledger.wait_for_commits(20, Duration::from_secs(30)));
    let stats = ledger.stop();
    assert!(stats.errors.is_empty(), "{:?}", stats.errors);
    Ledger::check(&mut pg.connect())
        .unwrap()
        .verify(&stats.acknowledged)
        .unwrap();
}
