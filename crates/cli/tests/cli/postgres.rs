//! A real PostgreSQL cluster under a ledger load and pgbench: copies in backup mode verify on a
//! sandbox and hold every commit acknowledged before them; after the data files are
//! destroyed, a roll-forward restore loses no acknowledged commit; a point-in-time
//! restore brings back the copy's state and nothing later; abort paths leave no backup
//! running on the server.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use shadowcopy_testing::loopfs::{loopfs_or_skip, FsKind};
use shadowcopy_testing::pgbench;
use shadowcopy_testing::postgres::{
    make_postgres_dir, postgres_or_skip, Ledger, PgCluster, PgOptions,
};

use crate::support::{describe, Cli};

const BIN: &str = env!("CARGO_BIN_EXE_shadowcopy");

/// A cluster archiving into `archive` through `shadowcopy pg archive-push`.
pub(crate) fn archiving_cluster(test: &str, cli: &Cli) -> Option<(PgCluster, PathBuf)> {
    archiving_cluster_with(test, cli, PgOptions::new())
}

/// [`archiving_cluster`] made with `options` (data checksums on).
pub(crate) fn archiving_cluster_with(
    test: &str,
    cli: &Cli,
    options: PgOptions,
) -> Option<(PgCluster, PathBuf)> {
    let archive = cli.path("wal-archive");
    make_postgres_dir(&archive).unwrap();
    let command = format!("{BIN} pg archive-push --archive {} %p", archive.display());
    let cluster = postgres_or_skip(
        test,
        options
            .data_checksums(true)
            .setting("archive_mode", "on")
            .setting("archive_command", &command),
    )?;
    // `pg setup --apply` creates the archive (owned by the server's user) and sets the
    // same archive_command.
    cli.ok(&[
        "pg",
        "setup",
        &cluster.url(),
        "--archive",
        archive.to_str().unwrap(),
        "--apply",
    ]);
    Some((cluster, archive))
}

/// `create --postgres URL --pg-archive DIR --provider copy --json`.
pub(crate) fn run_create(cli: &Cli, cluster: &PgCluster, archive: &Path) -> std::process::Output {
    run_create_with(cli, cluster, archive, "copy")
}

/// [`run_create`] with `provider`.
fn run_create_with(
    cli: &Cli,
    cluster: &PgCluster,
    archive: &Path,
    provider: &str,
) -> std::process::Output {
    cli.run(&[
        "create",
        "--postgres",
        &cluster.url(),
        "--pg-archive",
        archive.to_str().unwrap(),
        "--provider",
        provider,
        "--json",
    ])
}

pub(crate) fn create(cli: &Cli, cluster: &PgCluster, archive: &Path) -> serde_json::Value {
    let out = run_create(cli, cluster, archive);
    assert!(
        out.status.success(),
        "{}\nserver log:\n{}",
        describe(&out),
        cluster.log()
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

/// No backup left running and no slot of ours left behind.
pub(crate) fn assert_server_clean(cluster: &PgCluster) {
    assert_eq!(
        cluster
            .psql("SELECT count(*) FROM pg_replication_slots WHERE slot_name LIKE 'shadowcopy%'"),
        "0"
    );
    assert_eq!(
        cluster.psql("SELECT count(*) FROM pg_stat_activity WHERE application_name = 'shadowcopy'"),
        "0",
        "the backup connection is gone"
    );
}

#[test]
fn copies_under_load_verify_and_restores_lose_no_acknowledged_commit() {
    let cli = Cli::new();
    let Some((cluster, archive)) = archiving_cluster("copies_under_load_verify_and_restores", &cli)
    else {
        return;
    };
    Ledger::setup(&mut cluster.connect()).unwrap();
    pgbench::init(&cluster, 1).unwrap();
    let bench = pgbench::start(&cluster, 2, Duration::from_secs(600));
    let ledger = Ledger::start(&cluster.config(), 3, Duration::ZERO);
    assert!(ledger.wait_for_commits(50, Duration::from_secs(20)));

    let began = Instant::now();
    let created = create(&cli, &cluster, &archive);
    let acked_before_copy = ledger.acknowledged_before(began);
    assert!(!acked_before_copy.is_empty());
    let verification = &created["verification"];
    assert_eq!(verification["ok"], true, "{verification}");
    let detail = verification["detail"].as_str().unwrap();
    assert!(
        detail.contains("pg_amcheck") && detail.contains("pg_checksums"),
        "{detail}"
    );
    let id = created["id"].as_i64().unwrap().to_string();
    let components = cli.json(&["show", &id, "--json"]).to_string();
    assert!(
        components.contains("backup_label"),
        "the copy carries its backup_label"
    );
    assert_server_clean(&cluster);

    // The load goes on after the copy; then the server stops and its data files are
    // destroyed (the WAL directory survives).
    let more = ledger.committed() + 200;
    assert!(ledger.wait_for_commits(more, Duration::from_secs(30)));
    let stats = ledger.stop();
    bench.stop();
    let bench_history = pgbench::check(&cluster).unwrap();
    assert!(bench_history > 0, "pgbench committed transactions");
    let acked_all = stats.acknowledged.clone();
    assert!(acked_all.len() > acked_before_copy.len());
    cluster.stop();

    // Restores are refused while the server runs.
    cluster.start();
    let out = cli.run(&["restore", &id, "--force"]);
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("PostgreSQL is running"),
        "{}",
        describe(&out)
    );
    cluster.stop();

    destroy_data_files(&cluster);
    let out = cli.run(&[
        "restore",
        &id,
        "--mode",
        "roll-forward",
        "--discard-current",
    ]);
    assert!(out.status.success(), "{}", describe(&out));
    cluster.start();
    let state = wait_for_promotion(&cluster);
    let lost = state.missing(&acked_all);
    assert!(
        lost.is_empty(),
        "roll-forward lost {} acknowledged commits, e.g. {:?}\n{}",
        lost.len(),
        &lost[..lost.len().min(5)],
        cluster.log()
    );
    assert!(state.balanced(), "{state:?}");
    assert_eq!(
        pgbench::check(&cluster),
        Ok(bench_history),
        "roll-forward brings back every pgbench transaction"
    );
    cluster.stop();

    // Point in time: the copy's state, nothing acknowledged after the create returned.
    let out = cli.run(&["restore", &id, "--discard-current"]);
    assert!(out.status.success(), "{}", describe(&out));
    cluster.start();
    let state = wait_for_promotion(&cluster);
    assert!(state.missing(&acked_before_copy).is_empty(), "{state:?}");
    assert!(state.balanced());
    let at_copy = pgbench::check(&cluster).unwrap();
    assert!(
        at_copy < bench_history,
        "pgbench's state at the copy is consistent and earlier"
    );
    assert!(
        state.ids.len() < acked_all.len(),
        "point in time stops at the copy ({} rows, {} acknowledged in all)",
        state.ids.len(),
        acked_all.len()
    );
    // The restored cluster went on on a new timeline (after the roll-forward's): the WAL
    // it writes now never collides with what the archive holds from before the restore.
    cluster.psql("CHECKPOINT");
    let timeline: u32 = cluster
        .psql("SELECT timeline_id FROM pg_control_checkpoint()")
        .parse()
        .unwrap();
    assert!(timeline >= 3, "timeline {timeline}");
    cluster.psql("CREATE TABLE after_restore AS SELECT 1 AS x");
    let ended = cluster.psql("SELECT pg_walfile_name(pg_switch_wal())");
    let waited = Instant::now();
    while cluster.psql("SELECT coalesce(last_archived_wal, '') FROM pg_stat_archiver") < ended {
        assert!(
            waited.elapsed() < Duration::from_secs(60),
            "archiving after the restore is stuck: {}\n{}",
            cluster.psql("SELECT row(a.*)::text FROM pg_stat_archiver a"),
            cluster.log()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(
        cluster.psql("SELECT failed_count FROM pg_stat_archiver"),
        "0",
        "{}",
        cluster.log()
    );
}

/// The disaster the roll-forward tests recover from: the data files are destroyed (the
/// WAL directory survives).
pub(crate) fn destroy_data_files(cluster: &PgCluster) {
    for d in ["base", "global"] {
        std::fs::remove_dir_all(cluster.data_dir().join(d)).unwrap();
    }
}

/// Waits for archive recovery to end (the server promotes) and reads the ledger.
pub(crate) fn wait_for_promotion(cluster: &PgCluster) -> shadowcopy_testing::postgres::LedgerState {
    let waited = Instant::now();
    loop {
        if cluster.try_psql("SELECT pg_is_in_recovery()").as_deref() == Ok("f") {
            return Ledger::check(&mut cluster.connect()).unwrap();
        }
        assert!(
            waited.elapsed() < Duration::from_secs(120),
            "recovery did not end:\n{}",
            cluster.log()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn a_server_lost_mid_set_aborts_cleanly_and_the_next_create_succeeds() {
    let cli = Cli::new();
    let Some((cluster, archive)) = archiving_cluster("a_server_lost_mid_set_aborts", &cli) else {
        return;
    };
    Ledger::setup(&mut cluster.connect()).unwrap();
    // The backup connection is killed from another session as soon as it appears.
    let killer = {
        let config = cluster.config();
        std::thread::spawn(move || {
            let mut c = config.connect(postgres::NoTls).unwrap();
            let waited = Instant::now();
            while waited.elapsed() < Duration::from_secs(30) {
                let killed: i64 = c
                    .query_one(
                        "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity
                          WHERE application_name = 'shadowcopy' AND query ILIKE '%backup_start%'",
                        &[],
                    )
                    .unwrap()
                    .get(0);
                if killed > 0 {
                    return true;
                }
                std::thread::sleep(Duration::from_millis(1));
            }
            false
        })
    };
    let mut failed = None;
    for _ in 0..20 {
        let out = run_create(&cli, &cluster, &archive);
        if !out.status.success() {
            failed = Some(out);
            break;
        }
        if killer.is_finished() {
            break;
        }
    }
    assert!(killer.join().unwrap(), "the backup connection was seen");
    let out = failed.expect("a create whose connection was killed fails");
    assert_eq!(out.status.code(), Some(1), "{}", describe(&out));
    assert_server_clean(&cluster);
    let listed = cli.json(&["list", "--json"]);
    assert!(
        listed
            .as_array()
            .unwrap()
            .iter()
            .all(|c| c["state"] != "in-progress"),
        "{listed}"
    );
    let created = create(&cli, &cluster, &archive);
    assert_eq!(created["verification"]["ok"], true);
    assert_server_clean(&cluster);
}

/// A cluster whose data directory is a btrfs subvolume of its own, owned by the server's
/// user (as a packager or an operator makes one): no directory above it on its file
/// system is closed to other users, so a restore stages inside the cluster's own
/// directories, and a point-in-time restore, which empties `pg_wal/archive_status` of
/// whatever the copy does not hold, must not take its own staging area for the server's.
#[test]
fn point_in_time_restore_of_a_cluster_that_is_a_btrfs_subvolume_owned_by_the_server() {
    let test = "point_in_time_restore_of_a_cluster_that_is_a_btrfs_subvolume";
    let Some(fs) = loopfs_or_skip(test, FsKind::Btrfs, 1 << 30) else {
        return;
    };
    let data = fs.path().join("pgdata");
    let made = std::process::Command::new("btrfs")
        .args(["subvolume", "create"])
        .arg(&data)
        .output()
        .unwrap();
    assert!(made.status.success(), "{}", describe(&made));
    let cli = Cli::new();
    let Some((cluster, archive)) =
        archiving_cluster_with(test, &cli, PgOptions::new().data_dir(&data))
    else {
        return;
    };
    Ledger::setup(&mut cluster.connect()).unwrap();
    let ledger = Ledger::start(&cluster.config(), 2, Duration::ZERO);
    assert!(ledger.wait_for_commits(50, Duration::from_secs(20)));
    let began = Instant::now();
    let out = run_create_with(&cli, &cluster, &archive, "btrfs");
    assert!(
        out.status.success(),
        "{}\n{}",
        describe(&out),
        cluster.log()
    );
    let created: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let acked_before_copy = ledger.acknowledged_before(began);
    let more = ledger.committed() + 100;
    assert!(ledger.wait_for_commits(more, Duration::from_secs(30)));
    let acked_all = ledger.stop().acknowledged;
    cluster.stop();

    let id = created["id"].as_i64().unwrap().to_string();
    let out = cli.run(&["restore", &id, "--discard-current", "--json"]);
    assert!(out.status.success(), "{}", describe(&out));
    assert!(
        !String::from_utf8_lossy(&out.stderr).contains("warning"),
        "{}",
        describe(&out)
    );
    let leftovers: Vec<PathBuf> = walkdir::WalkDir::new(&data)
        .into_iter()
        .map(Result::unwrap)
        .filter(|e| {
            e.file_name()
                .to_string_lossy()
                .contains(".shadowcopy-restore")
        })
        .map(|e| e.into_path())
        .collect();
    assert!(leftovers.is_empty(), "staging left behind: {leftovers:?}");
    cluster.start();
    let state = wait_for_promotion(&cluster);
    assert!(state.missing(&acked_before_copy).is_empty(), "{state:?}");
    assert!(state.balanced(), "{state:?}");
    assert!(
        state.ids.len() < acked_all.len(),
        "point in time stops at the copy ({} rows, {} acknowledged in all)",
        state.ids.len(),
        acked_all.len()
    );
    cluster.stop();
    drop(cluster);
    drop(fs);
}
