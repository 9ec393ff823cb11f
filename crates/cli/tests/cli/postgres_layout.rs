//! A PostgreSQL cluster spread over three file systems (as root, on loop devices): the
//! data directory on XFS, the WAL directory (`initdb --waldir`) on another XFS, and a
//! tablespace holding the ledger table in a btrfs subvolume. The writer reports the three
//! components, the copy is one multi-volume set (one provider per file system, one
//! instant), it verifies under load, and after the data directory's `base/` and the
//! tablespace's contents are destroyed (the WAL directory survives) a roll-forward
//! restore loses no acknowledged commit and a point-in-time restore brings back the copy.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde_json::Value;
use shadowcopy_testing::loopfs::{loopfs_or_skip, FsKind, LoopFs};
use shadowcopy_testing::postgres::{
    make_postgres_dir, postgres_or_skip, AdoptOptions, Ledger, PgCluster, PgOptions,
    LEDGER_ACCOUNTS, TABLESPACE,
};

use crate::postgres::{destroy_data_files, wait_for_promotion};
use crate::support::{describe, Cli};

const BIN: &str = env!("CARGO_BIN_EXE_shadowcopy");

/// The cluster and the file systems under it. Fields drop in order: the server stops
/// before its file systems are unmounted.
struct Spread {
    cluster: PgCluster,
    config: PathBuf,
    _data_fs: LoopFs,
    _wal_fs: LoopFs,
    _ts_fs: LoopFs,
}

fn spread(test: &str, cli: &Cli) -> Option<Spread> {
    let data_fs = loopfs_or_skip(test, FsKind::Xfs, 1 << 30)?;
    let wal_fs = loopfs_or_skip(test, FsKind::Xfs, 1 << 30)?;
    let ts_fs = loopfs_or_skip(test, FsKind::Btrfs, 1 << 30)?;
    let ts = ts_fs.path().join("ts");
    let made = std::process::Command::new("btrfs")
        .args(["subvolume", "create"])
        .arg(&ts)
        .stdout(std::process::Stdio::null())
        .status()
        .unwrap();
    assert!(made.success(), "btrfs subvolume create {}", ts.display());

    let archive = cli.path("wal-archive");
    make_postgres_dir(&archive).unwrap();
    let command = format!("{BIN} pg archive-push --archive {} %p", archive.display());
    let cluster = postgres_or_skip(
        test,
        PgOptions::new()
            .data_dir(data_fs.path().join("pgdata"))
            .wal_dir(wal_fs.path().join("pgwal"))
            .tablespace_dir(&ts)
            .data_checksums(true)
            .setting("archive_mode", "on")
            .setting("archive_command", &command)
            // The WAL file system is 1 GiB.
            .setting("max_wal_size", "256MB"),
    )?;
    cli.ok(&[
        "pg",
        "setup",
        &cluster.url(),
        "--archive",
        archive.to_str().unwrap(),
        "--apply",
    ]);
    let config = cli.path("config.toml");
    std::fs::write(
        &config,
        format!(
            "[sets.pg]\n\
             [[sets.pg.writers]]\n\
             kind = \"postgres\"\n\
             url = \"{}\"\n\
             archive = \"{}\"\n",
            cluster.url(),
            archive.display()
        ),
    )
    .unwrap();
    Some(Spread {
        cluster,
        config,
        _data_fs: data_fs,
        _wal_fs: wal_fs,
        _ts_fs: ts_fs,
    })
}

impl Spread {
    /// `shadowcopy --config CONFIG ARGS...`.
    fn args<'a>(&'a self, args: &[&'a str]) -> Vec<&'a str> {
        let mut all = vec!["--config", self.config.to_str().unwrap()];
        all.extend_from_slice(args);
        all
    }

    fn tablespace(&self) -> &Path {
        self.cluster.tablespace_dir().unwrap()
    }
}

/// Whether some manifest entry lies under `dir`.
fn has_file_under(manifest: &[Value], dir: &Path, name_ends: &str) -> bool {
    manifest.iter().any(|f| {
        let p = Path::new(f["path"].as_str().unwrap_or_default());
        p.starts_with(dir) && p.to_string_lossy().ends_with(name_ends)
    })
}

/// The restore reported a pre-restore copy, listed usable as a multi-volume copy.
fn assert_pre_restore_kept(cli: &Cli, out: &std::process::Output) {
    let restored: Value = serde_json::from_slice(&out.stdout).unwrap();
    let pre = restored["pre_restore"]
        .as_i64()
        .unwrap_or_else(|| panic!("no pre-restore copy: {restored}"));
    let listed = cli.json(&["list", "--json"]);
    let copy = listed
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["id"] == pre)
        .unwrap_or_else(|| panic!("pre-restore copy {pre} is not listed: {listed}"));
    assert_eq!(copy["origin"], "pre-restore", "{copy}");
    assert_eq!(copy["state"], "usable", "{copy}");
    assert_eq!(copy["provider"], "multi", "{copy}");
}

#[test]
fn postgres_data_wal_and_tablespace_on_three_file_systems_copy_verify_and_restore() {
    let test = "postgres_data_wal_and_tablespace_on_three_file_systems";
    let cli = Cli::new();
    let Some(s) = spread(test, &cli) else {
        return;
    };
    let cluster = &s.cluster;
    let (data, wal, ts) = (
        cluster.data_dir().to_path_buf(),
        cluster.wal_dir().to_path_buf(),
        s.tablespace().to_path_buf(),
    );
    Ledger::setup_with(&mut cluster.connect(), LEDGER_ACCOUNTS, Some(TABLESPACE)).unwrap();
    let rel = cluster.psql("SELECT pg_relation_filepath('ledger')");
    assert!(
        rel.starts_with("pg_tblspc/"),
        "the ledger table is in the tablespace: {rel}"
    );

    // `writers` reports the configured set's writer with its three components.
    let writers = cli.json(&s.args(&["writers", "--json"]));
    let configured = writers["configured"].as_array().unwrap();
    assert_eq!(configured.len(), 1, "{writers}");
    let w = &configured[0];
    assert_eq!(w["set"], "pg");
    assert_eq!(w["writer"], format!("postgres:{}", cluster.url()));
    assert_eq!(w["state"], "stable", "{w}");
    let detail = w["detail"].as_str().unwrap();
    for expected in [
        format!("data {}", data.display()),
        format!("wal {}", wal.display()),
        format!("tablespace {TABLESPACE} {}", ts.display()),
    ] {
        assert!(detail.contains(&expected), "{expected:?} in {detail:?}");
    }
    // The running server holds the cluster's directories (its processes work in the data
    // directory and hold files in all three).
    let postmaster = cluster.postmaster_pid().unwrap();
    assert!(
        w["in_use_by"]
            .as_array()
            .unwrap()
            .iter()
            .any(|p| p.as_u64() == Some(postmaster.into())),
        "the postmaster (pid {postmaster}) is listed: {w}"
    );

    // A copy under load.
    let ledger = Ledger::start(&cluster.config(), 3, Duration::ZERO);
    assert!(ledger.wait_for_commits(100, Duration::from_secs(30)));
    let began = Instant::now();
    let out = cli.run(&s.args(&["create", "pg", "--json"]));
    assert!(
        out.status.success(),
        "{}\nserver log:\n{}",
        describe(&out),
        cluster.log()
    );
    let created: Value = serde_json::from_slice(&out.stdout).unwrap();
    let acked_before_copy = ledger.acknowledged_before(began);
    assert!(!acked_before_copy.is_empty());
    let verification = &created["verification"];
    assert_eq!(verification["ok"], true, "{verification}");
    let detail = verification["detail"].as_str().unwrap();
    assert!(
        detail.contains("pg_amcheck") && detail.contains("pg_checksums"),
        "{detail}"
    );
    // One provider per file system, all committed in one freeze window.
    assert_eq!(created["provider"], "multi", "{created}");
    let location: Value = serde_json::from_str(created["location"].as_str().unwrap()).unwrap();
    let volumes = location["volumes"].as_array().unwrap();
    let kinds: Vec<&str> = volumes
        .iter()
        .map(|v| v["provider"].as_str().unwrap())
        .collect();
    eprintln!("providers per volume: {kinds:?}");
    assert_eq!(volumes.len(), 3, "{location}");
    assert_eq!(
        kinds,
        ["reflink", "reflink", "btrfs"],
        "auto: reflink on XFS, btrfs for the subvolume"
    );
    let id = created["id"].as_i64().unwrap().to_string();

    // `show` reports the components and a manifest spanning the three places.
    let shown = cli.json(&["show", &id, "--json"]);
    let components: Vec<(String, String, PathBuf)> = shown["components"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| {
            (
                c["name"].as_str().unwrap().to_string(),
                c["role"].as_str().unwrap().to_string(),
                PathBuf::from(c["path"].as_str().unwrap()),
            )
        })
        .collect();
    assert_eq!(
        components,
        [
            ("data".to_string(), "data".to_string(), data.clone()),
            ("wal".to_string(), "log".to_string(), wal.clone()),
            (
                format!("tablespace {TABLESPACE}"),
                "data".to_string(),
                ts.clone()
            ),
        ],
        "{}",
        shown["components"]
    );
    let manifest = shown["manifest"].as_array().unwrap();
    assert!(has_file_under(manifest, &data, "/backup_label"));
    assert!(has_file_under(manifest, &data, "/tablespace_map"));
    assert!(has_file_under(manifest, &data, "/global/pg_control"));
    let ledger_file = std::fs::canonicalize(data.join(&rel)).unwrap();
    assert!(
        ledger_file.starts_with(&ts),
        "{} is in the tablespace",
        ledger_file.display()
    );
    assert!(
        has_file_under(manifest, &ts, &rel[rel.rfind('/').unwrap()..]),
        "the ledger table's file is in the copy"
    );

    // Side by side while production runs under its load: the copy restored below a new
    // directory starts there with its own WAL directory and tablespace (the links and
    // the copy's tablespace_map point below it, never at production's) and holds every
    // commit acknowledged before the copy.
    let side = cli.path("side");
    let out = cli.run(&s.args(&["restore", &id, "--to", side.to_str().unwrap(), "--json"]));
    assert!(out.status.success(), "{}", describe(&out));
    // It says how to start it, on a port of its own.
    let restored: Value = serde_json::from_slice(&out.stdout).unwrap();
    let note = restored["notes"][0].as_str().unwrap().to_string();
    assert!(
        note.contains("pg_ctl") && note.contains(" start -D "),
        "{note}"
    );
    // The tree keeps its shape below DIR from the three places' common directory on.
    let mut common = data.clone();
    while !(wal.starts_with(&common) && ts.starts_with(&common)) {
        assert!(common.pop());
    }
    let below = |p: &Path| side.join(p.strip_prefix(&common).unwrap());
    let side_data = below(&data);
    assert_eq!(
        std::fs::read_link(side_data.join("pg_wal")).unwrap(),
        below(&wal)
    );
    let map = std::fs::read_to_string(side_data.join("tablespace_map")).unwrap();
    assert!(
        map.contains(&below(&ts).display().to_string())
            && !map.contains(&format!(" {}", ts.display())),
        "{map}"
    );
    let second = PgCluster::adopt(&side_data, AdoptOptions::new().wal_dir(below(&wal)));
    second.start();
    let state = wait_for_promotion(&second);
    state.verify(&acked_before_copy).unwrap();
    assert!(state.balanced(), "{state:?}");
    let ledger_there = std::fs::canonicalize(side_data.join(&rel)).unwrap();
    assert!(
        ledger_there.starts_with(side.join("")),
        "{}",
        ledger_there.display()
    );
    // A cluster of its own: what it writes, production never sees.
    second.psql("CREATE TABLE side_probe AS SELECT 1 AS x");
    second.stop();
    // The command the restore printed starts it too (pg_ctl waits until it answers).
    let command = note.split_once(": ").unwrap().1;
    let started = std::process::Command::new("sh")
        .args(["-c", command])
        .output()
        .unwrap();
    assert!(
        started.status.success(),
        "{command}: {}",
        describe(&started)
    );
    let stop = command.replace(" start -D ", " stop -m fast -D ");
    let stop = stop.split(" -l ").next().unwrap();
    let stopped = std::process::Command::new("sh")
        .args(["-c", stop])
        .output()
        .unwrap();
    assert!(stopped.status.success(), "{}", describe(&stopped));
    assert_eq!(
        cluster.psql("SELECT count(*) FROM pg_class WHERE relname = 'side_probe'"),
        "0"
    );
    assert!(ledger.wait_for_commits(ledger.committed() + 50, Duration::from_secs(30)));

    // The load goes on; then the server stops and the data files of the main directory
    // and of the tablespace are destroyed. The WAL directory survives.
    let more = ledger.committed() + 300;
    assert!(ledger.wait_for_commits(more, Duration::from_secs(60)));
    let stats = ledger.stop();
    let acked_all = stats.acknowledged;
    assert!(acked_all.len() > acked_before_copy.len());
    cluster.stop();
    destroy_data_files(cluster);
    for e in std::fs::read_dir(&ts).unwrap() {
        std::fs::remove_dir_all(e.unwrap().path()).unwrap();
    }

    // Roll-forward: the copy's data files, then the WAL kept since (archive, live WAL).
    // What it replaces (the damaged state) is kept first as a pre-restore copy, made on
    // the same three volumes.
    let out = cli.run(&s.args(&["restore", &id, "--mode", "roll-forward", "--json"]));
    assert!(out.status.success(), "{}", describe(&out));
    assert_pre_restore_kept(&cli, &out);
    cluster.start();
    let state = wait_for_promotion(cluster);
    let lost = state.missing(&acked_all);
    assert!(
        lost.is_empty(),
        "roll-forward lost {} of {} acknowledged commits, e.g. {:?}\n{}",
        lost.len(),
        acked_all.len(),
        &lost[..lost.len().min(5)],
        cluster.log()
    );
    assert!(state.balanced(), "{state:?}");
    assert_eq!(
        std::fs::canonicalize(data.join(&rel)).unwrap(),
        ledger_file,
        "the ledger is back in the tablespace"
    );
    cluster.stop();

    // Point in time: the copy's state, nothing acknowledged after the create returned.
    let out = cli.run(&s.args(&["restore", &id, "--json"]));
    assert!(out.status.success(), "{}", describe(&out));
    assert_pre_restore_kept(&cli, &out);
    cluster.start();
    // Recovery stops where the copy is consistent, then the server promotes.
    let state = wait_for_promotion(cluster);
    if let Err(e) = state.verify(&acked_before_copy) {
        panic!("point in time: {e}\n{}", cluster.log());
    }
    assert!(
        state.ids.len() < acked_all.len(),
        "point in time stops at the copy ({} rows, {} acknowledged in all)",
        state.ids.len(),
        acked_all.len()
    );
    // The server is writable again on all three file systems.
    cluster.psql("INSERT INTO ledger (writer, seq, amount) VALUES (99, 1, 0)");
    cluster.psql("CHECKPOINT");
}
