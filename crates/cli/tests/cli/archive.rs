//! The archive as a user runs it, against a real S3-compatible server (moto on
//! loopback): a repository made, copies of a busy bank pushed (the second sends only
//! what changed), the host lost with its catalog and every local copy, and the bank
//! brought back from the archive alone, its balances holding. Bad input: a wrong
//! passphrase, a bucket that does not exist, a URL with a typo, the same copy pushed
//! twice: clear errors, nothing written.

use std::process::Output;
use std::time::Duration;

use serde_json::Value;
use shadowcopy_testing::bank;
use shadowcopy_testing::s3::Moto;

use crate::support::{describe, Cli};

const PASSPHRASE: &str = "tr0ub4dor&3 is not a good one";

fn archive(cli: &Cli, moto: &Moto, args: &[&str]) -> Output {
    let mut all = vec!["archive"];
    all.extend_from_slice(args);
    cli.cmd(&all)
        .envs(moto.env())
        .env("SHADOWCOPY_ARCHIVE_PASSWORD", PASSPHRASE)
        .output()
        .unwrap()
}

/// `shadowcopy archive --archive URL ARGS...` with the passphrase.
fn archive_at(cli: &Cli, url: &str, args: &[&str]) -> Output {
    let mut all = vec!["archive", "--archive", url];
    all.extend_from_slice(args);
    cli.cmd(&all)
        .env("SHADOWCOPY_ARCHIVE_PASSWORD", PASSPHRASE)
        .output()
        .unwrap()
}

/// `shadowcopy --config CONFIG ARGS...` with the passphrase: the JSON it prints, which
/// it must (it must succeed).
pub(crate) fn json_with_config(cli: &Cli, config: &str, args: &[&str]) -> Value {
    let out = cli
        .cmd(&[&["--config", config], args].concat())
        .env("SHADOWCOPY_ARCHIVE_PASSWORD", PASSPHRASE)
        .output()
        .unwrap();
    json(&out)
}

/// A config file whose `[defaults]` give every set the archive in directory `repo`.
pub(crate) fn config_with_archive(cli: &Cli, repo: &std::path::Path) -> String {
    let config = cli.path("shadowcopy.toml");
    std::fs::write(
        &config,
        format!("[defaults]\narchive = \"file://{}\"\n", repo.display()),
    )
    .unwrap();
    config.display().to_string()
}

fn json(out: &Output) -> Value {
    assert!(out.status.success(), "{}", describe(out));
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("{e}: {}", describe(out)))
}

/// A copy of the bank at `db` (the `copy` provider): its id.
fn copy_of(cli: &Cli, db: &std::path::Path) -> String {
    cli.json(&[
        "create",
        "--sqlite",
        db.to_str().unwrap(),
        "--provider",
        "copy",
        "--json",
    ])["id"]
        .as_i64()
        .unwrap()
        .to_string()
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[test]
fn a_host_lost_with_every_local_copy_comes_back_from_the_s3_archive() {
    let Some(moto) =
        Moto::start_or_skip("a_host_lost_with_every_local_copy_comes_back_from_the_s3_archive")
    else {
        return;
    };
    moto.create_bucket("backups");
    let cli = Cli::new();
    let db = cli.bank("bank.db", 8 << 20);
    let url = "s3://backups/host1";

    // Bad places first: nothing is made.
    let out = archive(&cli, &moto, &["init", "s3://no-such-bucket/x"]);
    assert_eq!(out.status.code(), Some(1), "{}", describe(&out));
    assert!(
        stderr(&out).contains("no-such-bucket") || stderr(&out).contains("NoSuchBucket"),
        "{}",
        describe(&out)
    );
    let out = archive(&cli, &moto, &["init", "s4://backups/host1"]);
    assert_eq!(out.status.code(), Some(2), "{}", describe(&out));
    assert!(
        stderr(&out).contains("is not an archive URL"),
        "{}",
        describe(&out)
    );
    let out = archive(&cli, &moto, &["--archive", url, "list"]);
    assert_eq!(out.status.code(), Some(2), "{}", describe(&out));
    assert!(
        stderr(&out).contains("there is no archive at s3://backups/host1"),
        "{}",
        describe(&out)
    );

    let out = cli
        .cmd(&["archive", "init", url])
        .envs(moto.env())
        .env("SHADOWCOPY_ARCHIVE_PASSWORD", PASSPHRASE)
        .env("AWS_CA_BUNDLE", cli.path("no-such-ca.pem"))
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2), "{}", describe(&out));
    assert!(
        stderr(&out).contains("cannot read AWS_CA_BUNDLE"),
        "{}",
        describe(&out)
    );

    let made = json(&archive(&cli, &moto, &["init", url, "--json"]));
    assert_eq!(made["url"], url);

    let first = copy_of(&cli, &db);
    let pushed = json(&archive(
        &cli,
        &moto,
        &["--archive", url, "push", &first, "--json"],
    ));
    let first_sent = pushed["bytes_uploaded"].as_u64().unwrap();
    assert!(first_sent > 1 << 20, "{pushed:#}");

    // A second of transfers, then a second copy: only the changed blocks go.
    let transfers = bank::start_transfers(&db, 2, Duration::from_millis(1));
    std::thread::sleep(Duration::from_secs(1));
    let stats = transfers.stop();
    assert!(stats.committed > 0);
    let second = copy_of(&cli, &db);
    let pushed = json(&archive(
        &cli,
        &moto,
        &["--archive", url, "push", &second, "--json"],
    ));
    let second_sent = pushed["bytes_uploaded"].as_u64().unwrap();
    assert!(
        second_sent * 4 < first_sent,
        "the second push sends what changed: {second_sent} of {first_sent} bytes: {pushed:#}"
    );
    let before = bank::summarize(&db).unwrap();

    let out = archive(&cli, &moto, &["--archive", url, "push", &second]);
    assert_eq!(out.status.code(), Some(2), "{}", describe(&out));
    assert!(
        stderr(&out).contains("is already in the archive"),
        "{}",
        describe(&out)
    );
    let out = cli
        .cmd(&["archive", "--archive", url, "list"])
        .envs(moto.env())
        .env("SHADOWCOPY_ARCHIVE_PASSWORD", "guess")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2), "{}", describe(&out));
    assert!(
        stderr(&out).contains("the passphrase opens none of the repository's keys"),
        "{}",
        describe(&out)
    );
    assert!(!stderr(&out).contains("guess") && !stderr(&out).contains(PASSPHRASE));

    // The host is lost: the database, its catalog and every local copy.
    for suffix in ["", "-wal", "-shm"] {
        let _ = std::fs::remove_file(format!("{}{suffix}", db.display()));
    }
    std::fs::remove_dir_all(&cli.catalog).unwrap();

    let listed = json(&archive(&cli, &moto, &["--archive", url, "list", "--json"]));
    let listed = listed.as_array().unwrap();
    assert_eq!(listed.len(), 2, "{listed:#?}");
    assert_eq!(listed[1]["copy_id"].to_string(), second);
    let id = listed[1]["id"].as_str().unwrap();
    let to = cli.path("recovered");
    let restored = json(&archive(
        &cli,
        &moto,
        &[
            "--archive",
            url,
            "restore",
            &id[..12],
            "--to",
            to.to_str().unwrap(),
            "--json",
        ],
    ));
    assert!(restored["requests"].as_u64().unwrap() >= 1, "{restored:#}");
    let back = to.join(db.strip_prefix("/").unwrap());
    let summary = bank::summarize(&back).unwrap();
    assert!(summary.balanced(), "{summary:?}");
    assert_eq!(summary.integrity, "ok");
    assert_eq!(
        summary.transfers, before.transfers,
        "the second copy's state, all of it"
    );

    let verified = json(&archive(
        &cli,
        &moto,
        &["--archive", url, "verify", "--read-data", "--json"],
    ));
    assert_eq!(verified["ok"], true, "{verified:#}");
    assert_eq!(verified["copies"], 2);
}

#[test]
fn the_agent_pushes_each_new_copy_to_its_set_s_archive() {
    use crate::agent::{done, jobs, start, stop, write_config};
    let cli = Cli::new();
    let db = cli.bank("bank.db", 2 << 20);
    let repo = cli.path("archive");
    let url = format!("file://{}", repo.display());
    let out = cli
        .cmd(&["archive", "init", &url])
        .env("SHADOWCOPY_ARCHIVE_PASSWORD", PASSPHRASE)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", describe(&out));
    let pass_file = cli.path("archive.pass");
    std::fs::write(&pass_file, format!("{PASSPHRASE}\n")).unwrap();
    let config = write_config(
        &cli,
        &format!(
            "[defaults]\narchive_password_file = \"{}\"\n\
             [sets.bank]\nprovider = \"copy\"\nschedule = \"*/2 * * * * *\"\narchive = \"{url}\"\n\
             [sets.bank.retention]\nkeep_last = 1\n\
             [[sets.bank.writers]]\nkind = \"sqlite\"\npath = \"{}\"\n",
            pass_file.display(),
            db.display()
        ),
    );
    let agent = start(&cli, &config, "agent.log");
    shadowcopy_testing::wait::until(
        Duration::from_secs(90),
        || done(&jobs(&cli), "push", "bank") >= 2 && done(&jobs(&cli), "prune", "bank") >= 2,
        || format!("two copies pushed and pruned: {:#?}", jobs(&cli)),
    );
    stop(&cli, agent, "agent.log");
    let all = jobs(&cli);
    for (_, kind, _, state, result) in &all {
        if kind == "push" {
            assert!(
                state == "cancelled"
                    || result
                        .as_deref()
                        .unwrap_or_default()
                        .contains("archived as"),
                "{all:#?}"
            );
        }
    }
    // The archive keeps what the local policy deleted. (A create running at the stop
    // finishes, and its prune waits for the next start: one more copy may be usable.)
    let local = cli.json(&["--config", &config, "list", "--json"]);
    let usable: Vec<i64> = local
        .as_array()
        .unwrap()
        .iter()
        .filter(|c| c["state"] == "usable")
        .map(|c| c["id"].as_i64().unwrap())
        .collect();
    assert!((1..=2).contains(&usable.len()), "{local:#}");
    let out = cli
        .cmd(&[
            "--config",
            &config,
            "archive",
            "--archive",
            &url,
            "list",
            "--json",
        ])
        .env_remove("SHADOWCOPY_ARCHIVE_PASSWORD")
        .output()
        .unwrap();
    let archived = json(&out);
    let archived = archived.as_array().unwrap();
    assert!(archived.len() >= 2, "{archived:#?}");
    assert!(
        archived
            .iter()
            .any(|a| !usable.contains(&a["copy_id"].as_i64().unwrap())),
        "an archived copy the local policy deleted: {archived:#?}, local {usable:?}"
    );
}

#[test]
fn kill_9_in_the_middle_of_a_push_leaves_nothing_listed_and_prune_collects_it() {
    let cli = Cli::new();
    let db = cli.bank("big.db", 120 << 20);
    let repo = cli.path("archive");
    let url = format!("file://{}", repo.display());
    let run = |args: &[&str]| archive_at(&cli, &url, args);
    assert!(run(&["init"]).status.success());
    let id = copy_of(&cli, &db);
    let mut push = cli
        .cmd(&["archive", "--archive", &url, "push", &id])
        .env("SHADOWCOPY_ARCHIVE_PASSWORD", PASSPHRASE)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    // Packs stored (`complete`), or being uploaded (the store's staging files, `#N`).
    let packs = repo.join("packs");
    let stored = |complete: bool| -> usize {
        let Ok(dirs) = std::fs::read_dir(&packs) else {
            return 0;
        };
        dirs.flatten()
            .filter_map(|sub| std::fs::read_dir(sub.path()).ok())
            .flat_map(|files| files.flatten())
            .filter(|f| !complete || !f.file_name().to_string_lossy().contains('#'))
            .count()
    };
    // Killed while it uploads, before its manifest.
    shadowcopy_testing::wait::until(
        Duration::from_secs(120),
        || stored(false) > 0,
        || "the push uploads a pack".into(),
    );
    crate::support::kill9(&mut push);
    let listed = json(&run(&["list", "--json"]));
    assert_eq!(
        listed,
        serde_json::json!([]),
        "nothing half-pushed is listed"
    );

    let pushed = json(&run(&["push", &id, "--json"]));
    assert_eq!(pushed["files_unchanged"], 0);
    let listed = json(&run(&["list", "--json"]));
    assert_eq!(listed.as_array().unwrap().len(), 1);
    json(&run(&["prune", "--policy", "--grace", "0s", "--json"]));
    let verified = json(&run(&["verify", "--read-data", "--json"]));
    assert_eq!(verified["ok"], true, "{verified:#}");
    assert_eq!(
        verified["packs"].as_u64().unwrap() as usize,
        stored(true),
        "every stored pack is one a kept copy uses: the dead push's are collected"
    );
    let to = cli.path("out");
    json(&run(&[
        "restore",
        listed[0]["id"].as_str().unwrap(),
        "--to",
        to.to_str().unwrap(),
        "--json",
    ]));
    let summary = bank::summarize(&to.join(db.strip_prefix("/").unwrap())).unwrap();
    assert!(summary.balanced(), "{summary:?}");
}

#[test]
fn a_push_through_an_s3_front_end_answering_500s_is_retried_and_completes() {
    let Some(moto) = Moto::start_or_skip(
        "a_push_through_an_s3_front_end_answering_500s_is_retried_and_completes",
    ) else {
        return;
    };
    moto.create_bucket("flaky");
    // Every third connection is answered 500 and closed.
    let proxy = shadowcopy_testing::s3::FaultProxy::start(&moto.endpoint, |n| n % 3 == 2);
    let cli = Cli::new();
    let db = cli.bank("bank.db", 40 << 20);
    let url = "s3://flaky/repo";
    let run = |args: &[&str]| {
        let mut all = vec!["archive", "--archive", url];
        all.extend_from_slice(args);
        cli.cmd(&all)
            .envs(moto.env())
            .env("AWS_ENDPOINT_URL", &proxy.endpoint)
            .env("SHADOWCOPY_ARCHIVE_PASSWORD", PASSPHRASE)
            .output()
            .unwrap()
    };
    json(&run(&["init", "--json"]));
    let id = copy_of(&cli, &db);
    let pushed = json(&run(&["push", &id, "--json"]));
    assert!(pushed["packs"].as_u64().unwrap() >= 2, "{pushed:#}");
    let verified = json(&run(&["verify", "--read-data", "--json"]));
    assert_eq!(verified["ok"], true, "{verified:#}");
    let to = cli.path("out");
    let listed = json(&run(&["list", "--json"]));
    json(&run(&[
        "restore",
        listed[0]["id"].as_str().unwrap(),
        "--to",
        to.to_str().unwrap(),
        "--json",
    ]));
    assert!(bank::summarize(&to.join(db.strip_prefix("/").unwrap()))
        .unwrap()
        .balanced());
    assert!(
        proxy.injected() >= 2,
        "the front end failed requests: {}",
        proxy.injected()
    );
}

#[test]
fn a_directory_comes_back_from_the_archive_with_its_modes_and_links() {
    use std::os::unix::fs::PermissionsExt;
    let cli = Cli::new();
    let data = cli.path("site");
    std::fs::create_dir_all(data.join("conf/private")).unwrap();
    std::fs::write(data.join("conf/app.ini"), "x = 1\n").unwrap();
    std::fs::write(data.join("conf/private/key"), "secret\n").unwrap();
    std::fs::create_dir(data.join("empty")).unwrap();
    std::os::unix::fs::symlink("conf/app.ini", data.join("current")).unwrap();
    let mode = |p: &std::path::Path, m: u32| {
        std::fs::set_permissions(p, std::fs::Permissions::from_mode(m)).unwrap()
    };
    mode(&data.join("conf/private"), 0o700);
    mode(&data.join("conf"), 0o750);
    mode(&data.join("empty"), 0o1777);
    let repo = cli.path("archive");
    let url = format!("file://{}", repo.display());
    let run = |args: &[&str]| archive_at(&cli, &url, args);
    assert!(run(&["init"]).status.success());
    let id = cli.json(&[
        "create",
        "--path",
        data.to_str().unwrap(),
        "--provider",
        "copy",
        "--json",
    ])["id"]
        .as_i64()
        .unwrap()
        .to_string();
    json(&run(&["push", &id, "--json"]));
    // Into a directory inside the live data: refused, nothing written.
    let listed = json(&run(&["list", "--json"]));
    let inside = data.join("conf/restored");
    let out = run(&[
        "restore",
        listed[0]["id"].as_str().unwrap(),
        "--to",
        inside.to_str().unwrap(),
    ]);
    assert_eq!(
        out.status.code(),
        Some(2),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("restore into a directory outside it"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(!inside.exists());
    std::fs::remove_dir_all(&data).unwrap();
    std::fs::remove_dir_all(&cli.catalog).unwrap();

    let listed = json(&run(&["list", "--json"]));
    json(&run(&[
        "restore",
        listed[0]["id"].as_str().unwrap(),
        "--json",
    ]));
    let got = |p: &str| {
        std::fs::symlink_metadata(data.join(p))
            .unwrap()
            .permissions()
            .mode()
            & 0o7777
    };
    assert_eq!(got("conf"), 0o750);
    assert_eq!(got("conf/private"), 0o700);
    assert_eq!(got("empty"), 0o1777, "an empty directory comes back too");
    assert_eq!(
        std::fs::read_link(data.join("current")).unwrap(),
        std::path::PathBuf::from("conf/app.ini")
    );
    assert_eq!(
        std::fs::read_to_string(data.join("conf/private/key")).unwrap(),
        "secret\n"
    );
}

#[test]
fn a_postgres_cluster_whose_data_and_copies_are_lost_starts_again_from_the_archive() {
    use shadowcopy_testing::postgres::Ledger;
    let test = "a_postgres_cluster_whose_data_and_copies_are_lost_starts_again_from_the_archive";
    let cli = Cli::new();
    let Some((cluster, wal_archive)) = crate::postgres::archiving_cluster(test, &cli) else {
        return;
    };
    Ledger::setup(&mut cluster.connect()).unwrap();
    let ledger = Ledger::start(&cluster.config(), 2, Duration::ZERO);
    assert!(ledger.wait_for_commits(50, Duration::from_secs(30)));
    // Checkpoints after switches: pg_wal keeps old segments renamed to future names.
    for _ in 0..4 {
        assert!(ledger.wait_for_commits(ledger.committed() + 20, Duration::from_secs(30)));
        cluster.psql("SELECT pg_switch_wal()");
        cluster.psql("CHECKPOINT");
    }
    let began = std::time::Instant::now();
    let created = crate::postgres::create(&cli, &cluster, &wal_archive);
    let acked = ledger.acknowledged_before(began);
    ledger.stop();
    let id = created["id"].as_i64().unwrap().to_string();

    let repo = cli.path("archive");
    let url = format!("file://{}", repo.display());
    let run = |args: &[&str]| archive_at(&cli, &url, args);
    assert!(run(&["init"]).status.success());
    let pushed = json(&run(&["push", &id, "--json"]));
    assert!(pushed["blocks"].as_u64().unwrap() > 0, "{pushed:#}");
    // The recycled segments (and any before the backup's start) stay behind: no
    // recovery reads them.
    let local = cli.json(&["show", &id, "--json"])["manifest"]
        .as_array()
        .unwrap()
        .len();
    let archived = json(&run(&["list", "--json"]))[0]["files"]
        .as_u64()
        .unwrap() as usize;
    assert!(archived < local, "{archived} archived of {local} files");

    // Beside the running production, `restore --to` lays out a data directory without
    // the lock file that names the live postmaster (PostgreSQL would refuse to start
    // over it), and a second server starts there with every commit the copy holds.
    let listed = json(&run(&["list", "--json"]));
    let beside = tempfile::tempdir().unwrap();
    let to = beside.path().join("restored");
    let out = run(&[
        "restore",
        listed[0]["id"].as_str().unwrap(),
        "--to",
        to.to_str().unwrap(),
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let data = to.join(cluster.data_dir().strip_prefix("/").unwrap());
    assert!(data.join("PG_VERSION").exists());
    for lock in ["postmaster.pid", "postmaster.opts"] {
        assert!(!data.join(lock).exists(), "{lock} was restored");
    }
    let second = shadowcopy_testing::postgres::PgCluster::adopt(
        &data,
        shadowcopy_testing::postgres::AdoptOptions::new().setting("archive_mode", "off"),
    );
    second.start();
    let state = crate::postgres::wait_for_promotion(&second);
    state.verify(&acked).unwrap();
    assert!(state.balanced(), "{state:?}");
    second.stop();
    assert!(cluster.is_running());

    // The data files and every local copy (the catalog with them) are lost.
    cluster.stop();
    crate::postgres::destroy_data_files(&cluster);
    std::fs::remove_dir_all(&cli.catalog).unwrap();

    let listed = json(&run(&["list", "--json"]));
    let out = run(&[
        "restore",
        listed[0]["id"].as_str().unwrap(),
        "--discard-current",
        "--json",
    ]);
    let restored = json(&out);
    assert!(restored["copy_id"].as_i64().is_some(), "{restored:#}");
    cluster.start();
    let state = crate::postgres::wait_for_promotion(&cluster);
    let lost = state.missing(&acked);
    assert!(
        lost.is_empty(),
        "{} acknowledged commits lost: {:?}",
        lost.len(),
        &lost[..lost.len().min(5)]
    );
    assert!(state.balanced(), "{state:?}");
    cluster.psql("CREATE TABLE after_restore AS SELECT 1 AS x");
    cluster.stop();
}

#[test]
fn a_mariadb_server_whose_data_and_copies_are_lost_starts_again_from_the_archive() {
    use shadowcopy_testing::mariadb::Ledger;
    let cli = Cli::new();
    let places = tempfile::tempdir().unwrap();
    let Some(db) = crate::mariadb::server(
        "a_mariadb_server_whose_data_and_copies_are_lost_starts_again_from_the_archive",
        places.path(),
    ) else {
        return;
    };
    Ledger::setup(&mut db.connect()).unwrap();
    let ledger = Ledger::start(&db.opts(), 2, Duration::ZERO);
    assert!(ledger.wait_for_commits(100, Duration::from_secs(30)));
    let began = std::time::Instant::now();
    let created = crate::mariadb::create(&cli, &db, &[]);
    let acked = ledger.acknowledged_before(began);
    ledger.stop();
    let id = created["id"].as_i64().unwrap().to_string();

    let repo = cli.path("archive");
    let url = format!("file://{}", repo.display());
    let run = |args: &[&str]| archive_at(&cli, &url, args);
    assert!(run(&["init"]).status.success());
    json(&run(&["push", &id, "--json"]));

    // The data directory and every local copy (the catalog with them) are lost.
    db.stop();
    std::fs::remove_dir_all(db.data_dir()).unwrap();
    std::fs::remove_dir_all(&cli.catalog).unwrap();

    let listed = json(&run(&["list", "--json"]));
    json(&run(&[
        "restore",
        listed[0]["id"].as_str().unwrap(),
        "--discard-current",
        "--json",
    ]));
    db.start();
    let state = Ledger::check(&mut db.connect()).unwrap();
    state.verify(&acked).unwrap();
    assert!(state.balanced(), "{state:?}");
    db.sql("CREATE TABLE IF NOT EXISTS shadowcopy.probe (id INT PRIMARY KEY AUTO_INCREMENT) ENGINE=InnoDB");
    db.sql("INSERT INTO shadowcopy.probe VALUES (NULL)");
    db.stop();
}

#[test]
fn a_postgres_host_lost_with_its_wal_rolls_forward_from_the_archive_to_the_last_archived_commit() {
    use shadowcopy_testing::postgres::{make_postgres_dir, Ledger};
    let test = "a_postgres_host_lost_with_its_wal_rolls_forward_from_the_archive";
    let cli = Cli::new();
    let Some((cluster, wal_archive)) = crate::postgres::archiving_cluster(test, &cli) else {
        return;
    };
    Ledger::setup(&mut cluster.connect()).unwrap();
    let ledger = Ledger::start(&cluster.config(), 2, Duration::ZERO);
    assert!(ledger.wait_for_commits(50, Duration::from_secs(30)));
    let created = crate::postgres::create(&cli, &cluster, &wal_archive);
    let id = created["id"].as_i64().unwrap().to_string();
    let set = created["set"].as_str().unwrap().to_string();
    // Commits after the copy, all archived: the WAL switched and archived after the load.
    assert!(ledger.wait_for_commits(ledger.committed() + 200, Duration::from_secs(30)));
    let acked_all = ledger.stop().acknowledged;
    let last = cluster.psql("SELECT pg_walfile_name(pg_switch_wal())");
    shadowcopy_testing::wait::until(
        Duration::from_secs(60),
        || cluster.psql("SELECT coalesce(last_archived_wal, '') FROM pg_stat_archiver") >= last,
        || "the last WAL segment is archived".into(),
    );

    let repo = cli.path("archive");
    let url = format!("file://{}", repo.display());
    let run = |args: &[&str]| archive_at(&cli, &url, args);
    assert!(run(&["init"]).status.success());
    json(&run(&["push", &id, "--json"]));
    let logs = json(&run(&["push-logs", "--set", &set, "--json"]));
    assert!(logs["copied"].as_u64().unwrap() >= 2, "{logs:#}");
    let again = json(&run(&["push-logs", "--set", &set, "--json"]));
    assert_eq!(
        again["copied"], 0,
        "only what the archive lacks is sent: {again:#}"
    );

    // The host is lost: data files, live WAL, the WAL archive, and the catalog with every
    // local copy. An empty archive directory is made again for the database's user.
    cluster.stop();
    crate::postgres::destroy_data_files(&cluster);
    for entry in std::fs::read_dir(cluster.wal_dir()).unwrap() {
        let path = entry.unwrap().path();
        if path.is_file() {
            std::fs::remove_file(path).unwrap();
        }
    }
    std::fs::remove_dir_all(&wal_archive).unwrap();
    make_postgres_dir(&wal_archive).unwrap();
    std::fs::remove_dir_all(&cli.catalog).unwrap();

    let back = json(&run(&[
        "get-logs",
        "--set",
        &set,
        "--dir",
        wal_archive.to_str().unwrap(),
        "--json",
    ]));
    assert_eq!(back["copied"], logs["copied"], "{back:#}");
    let listed = json(&run(&["list", "--json"]));
    let out = run(&[
        "restore",
        listed[0]["id"].as_str().unwrap(),
        "--mode",
        "roll-forward",
        "--discard-current",
        "--json",
    ]);
    json(&out);
    cluster.start();
    let state = crate::postgres::wait_for_promotion(&cluster);
    let lost = state.missing(&acked_all);
    assert!(
        lost.is_empty(),
        "roll-forward from the archive lost {} acknowledged commits, e.g. {:?}\n{}",
        lost.len(),
        &lost[..lost.len().min(5)],
        cluster.log()
    );
    assert!(state.balanced(), "{state:?}");
    cluster.stop();
}

#[test]
fn a_mariadb_host_lost_with_its_binary_logs_rolls_forward_from_the_archive() {
    use shadowcopy_testing::mariadb::Ledger;
    let cli = Cli::new();
    let places = tempfile::tempdir().unwrap();
    let Some(db) = crate::mariadb::server(
        "a_mariadb_host_lost_with_its_binary_logs_rolls_forward_from_the_archive",
        places.path(),
    ) else {
        return;
    };
    // Every set of this config has an archive off the host.
    let repo = cli.path("archive");
    let config = config_with_archive(&cli, &repo);
    let run = |args: &[&str]| json_with_config(&cli, &config, args);
    let url = db.url();
    let create = || run(&["create", "--mariadb", &url, "--provider", "copy", "--json"]);
    let binlogs = || -> Vec<String> {
        db.sql("SHOW BINARY LOGS")
            .lines()
            .filter_map(|l| Some(l.split_whitespace().next()?.to_string()))
            .collect()
    };
    run(&["archive", "init", "--json"]);
    Ledger::setup(&mut db.connect()).unwrap();
    let ledger = Ledger::start(&db.opts(), 2, Duration::ZERO);
    assert!(ledger.wait_for_commits(100, Duration::from_secs(30)));

    // Nothing of the binary logs is in the archive yet: nothing is purged, with a warning.
    let a = create();
    let a_id = a["id"].as_i64().unwrap().to_string();
    let set = a["set"].as_str().unwrap().to_string();
    assert!(
        a["warnings"]
            .to_string()
            .contains("the set's archive holds none of its binary logs yet"),
        "{a:#}"
    );
    db.sql("FLUSH BINARY LOGS");
    run(&["archive", "push", &a_id, "--json"]);
    let logs = run(&["archive", "push-logs", "--set", &set, "--json"]);
    assert!(logs["copied"].as_u64().unwrap() >= 1, "{logs:#}");
    let again = run(&["archive", "push-logs", "--set", &set, "--json"]);
    assert_eq!(
        again["copied"], 0,
        "the log being written is not sent: {again:#}"
    );
    let archived = binlogs();
    let through = archived[archived.len() - 2].clone();

    // More logs, only on this host; with A gone from it, the next copy would purge up
    // to its own start, and stops at the newest log the archive holds.
    for _ in 0..2 {
        assert!(ledger.wait_for_commits(ledger.committed() + 50, Duration::from_secs(30)));
        db.sql("FLUSH BINARY LOGS");
    }
    run(&["delete", &a_id, "--json"]);
    let b = create();
    let b_id = b["id"].as_i64().unwrap().to_string();
    let notes = b["notes"].to_string();
    assert!(
        notes.contains(&format!("before {through}"))
            && notes.contains("the newest binary log in the set's archive"),
        "{b:#}"
    );
    assert_eq!(binlogs()[0], through, "nothing the archive lacks is purged");

    // Commits after B, all in closed logs that go to the archive.
    assert!(ledger.wait_for_commits(ledger.committed() + 200, Duration::from_secs(30)));
    let acked_all = ledger.stop().acknowledged;
    db.sql("FLUSH BINARY LOGS");
    run(&["archive", "push", &b_id, "--json"]);
    run(&["archive", "push-logs", "--set", &set, "--json"]);
    // Log analysis tells how far the archive holds them (the catalog's record).
    let analysis = run(&["mariadb", "log-analysis", &b_id, "--json"]);
    let now = binlogs();
    assert_eq!(
        analysis["archive"],
        serde_json::json!({"url": format!("file://{}", repo.display()),
            "through": now[now.len() - 2], "error": null}),
        "{analysis:#}"
    );
    assert_eq!(analysis["roll_forward"]["ends"]["kind"], "end-of-log");

    // The host is lost: the data directory, the binary logs with their index, and the
    // catalog with every local copy. The empty binlog directory is there again.
    db.stop();
    std::fs::remove_dir_all(db.data_dir()).unwrap();
    let binlog_dir = db.binlog_dir().unwrap().to_path_buf();
    for entry in std::fs::read_dir(&binlog_dir).unwrap() {
        std::fs::remove_file(entry.unwrap().path()).unwrap();
    }
    std::fs::remove_dir_all(&cli.catalog).unwrap();

    let back = run(&["archive", "get-logs", "--set", &set, "--json"]);
    assert!(back["copied"].as_u64().unwrap() >= 3, "{back:#}");
    let listed = run(&["archive", "list", "--json"]);
    let newest = listed
        .as_array()
        .unwrap()
        .iter()
        .max_by_key(|c| c["created_ms"].as_i64())
        .unwrap();
    run(&[
        "archive",
        "restore",
        newest["id"].as_str().unwrap(),
        "--mode",
        "roll-forward",
        "--discard-current",
        "--json",
    ]);
    db.start();
    let state = Ledger::check(&mut db.connect()).unwrap();
    let lost = state.missing(&acked_all);
    assert!(
        lost.is_empty(),
        "roll-forward from the archive lost {} acknowledged commits, e.g. {:?}",
        lost.len(),
        &lost[..lost.len().min(5)]
    );
    assert!(state.balanced(), "{state:?}");
    db.stop();
}

#[test]
fn the_agent_sends_new_wal_to_the_archive_between_copies() {
    use crate::agent::{start, stop, write_config};
    use shadowcopy_testing::wait::until;
    let test = "the_agent_sends_new_wal_to_the_archive_between_copies";
    let cli = Cli::new();
    let Some((cluster, wal_archive)) = crate::postgres::archiving_cluster(test, &cli) else {
        return;
    };
    let repo = cli.path("archive");
    let url = format!("file://{}", repo.display());
    json(&archive_at(&cli, &url, &["init", "--json"]));
    let pass_file = cli.path("archive.pass");
    std::fs::write(&pass_file, format!("{PASSPHRASE}\n")).unwrap();
    // No schedule: only the logs go, every second.
    let config = write_config(
        &cli,
        &format!(
            "[defaults]\narchive_password_file = \"{}\"\n\
             [sets.pg]\nprovider = \"copy\"\narchive = \"{url}\"\nlogs_push_every = \"1s\"\n\
             [[sets.pg.writers]]\nkind = \"postgres\"\nurl = \"{}\"\narchive = \"{}\"\n",
            pass_file.display(),
            cluster.url(),
            wal_archive.display()
        ),
    );
    let agent = start(&cli, &config, "agent.log");
    // The segment names in the repository's logs (one stream: set pg's).
    let in_repo = || -> Vec<String> {
        let Ok(streams) = std::fs::read_dir(repo.join("logs")) else {
            return Vec::new();
        };
        streams
            .flat_map(|s| std::fs::read_dir(s.unwrap().path()).unwrap())
            .filter_map(|f| {
                let name = f.unwrap().file_name().to_string_lossy().into_owned();
                Some(name.strip_suffix(".zst")?.to_string())
            })
            .collect()
    };
    for round in 0..2 {
        cluster.psql(&format!("CREATE TABLE t{round} AS SELECT 1 AS x"));
        let last = cluster.psql("SELECT pg_walfile_name(pg_switch_wal())");
        until(
            Duration::from_secs(30),
            || in_repo().contains(&last),
            || format!("{last} reached the archive: {:?}", in_repo()),
        );
    }

    // The repository unreachable: the pushes fail, the agent goes on.
    std::fs::rename(&repo, cli.path("archive.away")).unwrap();
    cluster.psql("CREATE TABLE t2 AS SELECT 1 AS x");
    let missed = cluster.psql("SELECT pg_walfile_name(pg_switch_wal())");
    until(
        Duration::from_secs(30),
        || {
            std::fs::read_to_string(cli.path("agent.log"))
                .unwrap()
                .contains("sending the set's logs to its archive failed")
        },
        || "a failed push is logged".into(),
    );
    let status = cli.json(&["--config", &config, "agent", "status", "--json"]);
    assert_eq!(status["pid"], agent.id(), "{status:#}");
    assert!(!in_repo().contains(&missed));
    // Back: what was missed goes with the next push.
    std::fs::rename(cli.path("archive.away"), &repo).unwrap();
    until(
        Duration::from_secs(30),
        || in_repo().contains(&missed),
        || {
            format!(
                "{missed}, archived while the repository was away, reached it: {:?}",
                in_repo()
            )
        },
    );
    stop(&cli, agent, "agent.log");
}

#[test]
fn blocks_a_local_file_holds_are_cloned_on_restore_not_written_again() {
    use shadowcopy_testing::loopfs::{loopfs_or_skip, FsKind};
    let test = "blocks_a_local_file_holds_are_cloned_on_restore_not_written_again";
    let Some(xfs) = loopfs_or_skip(test, FsKind::Xfs, 400 << 20) else {
        return;
    };
    let cli = Cli::new();
    let db = xfs.path().join("bank.db");
    bank::create(&db, 20, true).unwrap();
    bank::pad_to(&db, 48 << 20).unwrap();
    let repo = cli.path("archive");
    let url = format!("file://{}", repo.display());
    let config = cli.path("shadowcopy.toml");
    std::fs::write(
        &config,
        format!(
            "[sets.bank]\nprovider = \"reflink\"\ncopies_dir = \"{}\"\narchive = \"{url}\"\n\
             [[sets.bank.writers]]\nkind = \"sqlite\"\npath = \"{}\"\n",
            xfs.path().join("copies").display(),
            db.display()
        ),
    )
    .unwrap();
    let config = config.to_str().unwrap();
    let run = |args: &[&str]| json_with_config(&cli, config, args);
    run(&["archive", "init", &url, "--json"]);
    let created = run(&["create", "bank", "--json"]);
    let id = created["id"].as_i64().unwrap().to_string();
    run(&["archive", "push", &id, "--json"]);
    let archived = run(&["archive", "--archive", &url, "list", "--json"]);

    // In place: the archived copy comes back as a local copy in the set's copies
    // directory on the XFS, its blocks cloned from the live file (all the same), then
    // restored by the usual swap.
    let restored = run(&[
        "archive",
        "--archive",
        &url,
        "restore",
        archived[0]["id"].as_str().unwrap(),
        "--json",
    ]);
    assert_eq!(
        restored["downloaded"]["bytes_downloaded"], 0,
        "{restored:#}"
    );
    let imported = run(&["show", &restored["copy_id"].to_string(), "--json"]);
    let location = std::path::PathBuf::from(imported["location"].as_str().unwrap());
    assert!(location.starts_with(xfs.path()), "{imported:#}");
    let file = location.join("files").join(db.strip_prefix("/").unwrap());
    // Every extent of the imported file shares its blocks (with the live file's).
    let out = std::process::Command::new("filefrag")
        .arg("-v")
        .arg(&file)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    let extents: Vec<&str> = text
        .lines()
        .filter(|l| {
            l.trim_start()
                .chars()
                .next()
                .is_some_and(|c| c.is_ascii_digit())
        })
        .collect();
    assert!(!extents.is_empty(), "{text}");
    assert!(
        extents.iter().all(|l| l.contains("shared")),
        "blocks written again, not cloned:\n{text}"
    );
    assert!(bank::summarize(&db).unwrap().balanced());
}
